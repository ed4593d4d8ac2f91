"""A plugin that fails to load is named (stderr, --list-plugins, the manifest), refused where a
recipe needs it or under --strict-plugins; a -p plugin from the current folder is recorded and
--reproduce names it when it is missing."""

from __future__ import annotations

import json
import sys
from importlib import metadata

import pytest

from tests.conftest import image_files, tiny_recipe

BASE = tiny_recipe("a photo of a cat", seeds=1)


def _broken_entry_point(monkeypatch) -> None:
    """The plugin manager (only) sees one more entry point, whose module does not exist."""
    import types

    from recipe_runner.plugin_api import manager as plugin_manager

    def entry_points(**kwargs):
        found = list(metadata.entry_points(**kwargs))
        if kwargs.get("group") == "recipe_runner":
            found.append(metadata.EntryPoint("broken_watermark", "no_such_module_for_tests:plugin", "recipe_runner"))
        return found

    fake = types.SimpleNamespace(**{k: getattr(metadata, k) for k in dir(metadata) if not k.startswith("__")})
    fake.entry_points = entry_points
    monkeypatch.setattr(plugin_manager, "metadata", fake)


@pytest.mark.slow
def test_a_failed_entry_point_plugin_is_named_in_stderr_and_the_manifest(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, monkeypatch):
    _broken_entry_point(monkeypatch)
    out = tmp_path / "out"
    result = recipe_runner_cli(recipe_runner_write_recipe(BASE), "--out", out)
    assert result.code == 0, result.err
    warnings = [line for line in result.err.splitlines() if "broken_watermark" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: plugin 'broken_watermark'")
    manifest = json.loads((out / "recipe" / "manifest.json").read_text())
    record = next(p for p in manifest["environment"]["plugins"] if p["name"] == "broken_watermark")
    assert record["source"] == "entry point" and "ModuleNotFoundError" in record["error"]
    strict = recipe_runner_cli(recipe_runner_write_recipe(BASE), "--out", tmp_path / "strict", "--strict-plugins")
    assert strict.code == 2 and "broken_watermark" in strict.err and not (tmp_path / "strict").exists()


@pytest.mark.slow
def test_p_finds_a_plugin_in_the_current_folder_records_it_and_reproduce_names_it_missing(
        recipe_runner_cli, recipe_runner_write_recipe, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.chdir(tmp_path)
    (tmp_path / "myplug.py").write_text('__version__ = "1.2"\n')
    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_root))
    out = tmp_path / "out"
    result = recipe_runner_cli(recipe_runner_write_recipe(BASE), "--out", out, "-p", "myplug")
    assert result.code == 0, result.err
    manifest = json.loads((out / "recipe" / "manifest.json").read_text())
    assert {"name": "myplug", "version": "1.2", "source": "-p"}.items() <= next(
        p for p in manifest["environment"]["plugins"] if p["name"] == "myplug").items()
    image = image_files(out / "recipe")[0]
    from recipe_runner.records.outputs import read_embedded

    assert any(p["name"] == "myplug" for p in json.loads(read_embedded(image)["environment"])["plugins"])
    sys.modules.pop("myplug", None)
    again = recipe_runner_cli("--reproduce", image)
    assert again.code == 0, again.err
    assert "pixel-identical" in again.out and "myplug 1.2 (-p): not loaded now" in again.out
    assert list(scratch_root.iterdir()) == []  # no recipe-run-reproduce-* folder left behind


def test_a_broken_p_plugin_is_listed_as_failed_and_refused_by_a_run(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "badplug.py").write_text("raise RuntimeError('half-written plugin')\n")
    listed = recipe_runner_cli("--list-plugins", "-p", "badplug")
    assert listed.code == 0 and "badplug  [-p" in listed.out and "failed to load: RuntimeError: half-written plugin" in listed.out
    run = recipe_runner_cli(recipe_runner_write_recipe(BASE), "--out", tmp_path / "out", "-p", "badplug")
    assert run.code == 2 and "cannot import plugin module 'badplug'" in run.err and "Traceback" not in run.err
