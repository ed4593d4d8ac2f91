"""``abstract = true``: a base recipe used only through ``extends`` (#22 item 6). Skipped with a
note by runs, --dry-run, --lock and --watch; not inherited; validated for what it has; accepted by
the JSON Schema without [matrix]."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

BASE = '''abstract = true
description = "the team's SD 1.5 settings"
[model]
id = "tiny:sd15"
device = "cpu"
[params]
num_inference_steps = 2
height = 64
width = 64
'''
CHILD = '''extends = "base.toml"
[matrix]
prompts = ["a red cube"]
'''


@pytest.fixture
def recipes(tmp_path) -> Path:
    """recipes/base.toml (abstract) and recipes/child.toml extending it."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "base.toml").write_text(BASE)
    (folder / "child.toml").write_text(CHILD)
    return folder


def test_a_glob_with_an_abstract_base_skips_it_with_a_note_and_runs_the_child(recipes, recipe_runner_cli, tmp_path,
                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = recipe_runner_cli(*sorted(Path("recipes").glob("*.toml")), "--out", "out", "--no-progress")
    assert result.code == 0, result.out + result.err
    assert "skipped recipes/base.toml: abstract = true (a base for extends)" in result.err.splitlines()
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == ["child"]
    manifest = json.loads((tmp_path / "out" / "child" / "manifest.json").read_text())
    assert [r["status"] for r in manifest["images"]] == ["done"]
    assert "abstract" not in manifest["recipe"]  # never recorded: a concrete recipe's records are unchanged


@pytest.mark.parametrize("mode", ["--dry-run", "--lock"])
def test_dry_run_and_lock_skip_it_the_same_way(recipes, recipe_runner_cli, tmp_path, monkeypatch, mode):
    monkeypatch.chdir(tmp_path)
    result = recipe_runner_cli(mode, "recipes/base.toml", "recipes/child.toml")
    assert result.code == 0, result.out + result.err
    assert "skipped recipes/base.toml: abstract = true (a base for extends)" in result.err
    assert "child" in result.out and "base" not in result.out.replace("recipes/child.toml", "")
    if mode == "--lock":
        assert (recipes / "child.lock").is_file() and not (recipes / "base.lock").exists()


def test_it_is_not_inherited(recipes, recipe_runner_cli, tmp_path, monkeypatch):
    from recipe_runner.recipe.loading import load

    assert load(recipes / "base.toml").data["abstract"] is True
    child = load(recipes / "child.toml")
    assert "abstract" not in child.data and "abstract" not in child.origins
    (recipes / "middle.toml").write_text('extends = "base.toml"\nabstract = true\n[params]\nguidance_scale = 3.0\n')
    (recipes / "leaf.toml").write_text('extends = "middle.toml"\n[matrix]\nprompts = ["a cat"]\n')
    assert load(recipes / "middle.toml").data["abstract"] is True  # an abstract recipe extending an abstract one
    monkeypatch.chdir(tmp_path)
    result = recipe_runner_cli("--dry-run", *sorted(Path("recipes").glob("*.toml")))
    assert result.code == 0, result.out + result.err
    assert [line.split()[0] for line in result.out.splitlines() if line and not line.startswith(" ")] == ["child", "leaf"]
    assert result.err.count("abstract = true (a base for extends)") == 2


def test_a_misspelled_key_in_an_abstract_base_is_exit_2_at_its_line_with_did_you_mean(recipes, recipe_runner_cli,
                                                                                        tmp_path, monkeypatch):
    (recipes / "base.toml").write_text(BASE.replace("[params]", "[parms]"))
    monkeypatch.chdir(tmp_path)
    result = recipe_runner_cli("--dry-run", "recipes/base.toml", "recipes/child.toml")
    assert result.code == 2
    expected = "error: recipes/base.toml:6: parms: unknown key (did you mean 'params'?)"
    assert result.err.splitlines().count(expected) == 1, result.err  # once, though the child merges it too
    assert "Traceback" not in result.err and result.out == ""


@pytest.mark.parametrize(("text", "expected"), [
    ('abstract = true\n[model]\nid = "tiny:sd15"\ndevic = "cpu"\n', "model.devic: unknown key (did you mean 'device'?)"),
    ('abstract = true\n[run]\nbatch_size = "lots"\n', 'run.batch_size: expected a positive integer or "auto"'),
    ('abstract = true\n[optimizations]\nattention_slicing = 3\n', "optimizations.attention_slicing: expected true, false"),
    ('abstract = "yes"\n[model]\nid = "tiny:sd15"\n', "abstract: expected true or false, got string 'yes'"),
])
def test_an_abstract_base_alone_is_checked_for_what_it_has(recipe_runner_cli, tmp_path, text, expected):
    base = tmp_path / "base.toml"
    base.write_text(text)
    result = recipe_runner_cli("--dry-run", base)
    assert result.code == 2
    assert expected in result.err, result.err


def test_missing_model_and_matrix_are_no_problem_in_an_abstract_base(recipe_runner_cli, tmp_path):
    (tmp_path / "base.toml").write_text('abstract = true\n[model]\ndevice = "cpu"\n[matrix]\nseeds = 2\n')
    (tmp_path / "child.toml").write_text('extends = "base.toml"\n[model]\nid = "tiny:sd15"\n[matrix]\nprompts = ["a"]\n')
    result = recipe_runner_cli("--dry-run", tmp_path / "base.toml", tmp_path / "child.toml")
    assert result.code == 0, result.err


def test_when_every_recipe_given_is_abstract_there_is_nothing_to_run(recipes, recipe_runner_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = recipe_runner_cli("recipes/base.toml", "--out", "out")
    assert result.code == 2
    assert result.err.strip() == ("error: recipe-run: nothing to run: recipes/base.toml is abstract (abstract = true: "
                                  "a base for extends); give the recipes that extend it")
    (recipes / "other.toml").write_text(BASE)
    result = recipe_runner_cli("--dry-run", "recipes/base.toml", "recipes/other.toml")
    assert result.code == 2 and "nothing to run: the 2 recipes given are abstract" in result.err
    assert not (tmp_path / "out").exists()


def test_abstract_false_is_an_ordinary_recipe(recipe_runner_cli, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(BASE.replace("abstract = true", "abstract = false"))
    result = recipe_runner_cli("--dry-run", recipe)
    assert result.code == 2 and "matrix: required key is missing" in result.err


def test_watch_prepares_the_child_and_still_watches_the_base_through_it(recipes):
    from recipe_runner.plugin_api.manager import load_plugins
    from recipe_runner.running.prepare import Options
    from recipe_runner.running.watch import WatchSession

    (recipes / "base.toml").write_text(BASE.replace("height = 64\nwidth = 64\n", ""))  # not image-to-image's
    (recipes / "cat.png").write_bytes(b"")  # an input of the child: recorded as the child's, not the base's
    (recipes / "child.toml").write_text(CHILD.replace('[matrix]', '[model]\ntask = "image-to-image"\n[matrix]')
                                        + 'images = ["cat.png"]\n')
    session = WatchSession([recipes / "base.toml", recipes / "child.toml"], [], load_plugins([]),
                           Options(out=recipes.parent / "out"))
    prepared = session.prepare()
    assert [p.recipe.name for p in prepared] == ["child"]
    assert set(session.inputs) == {recipes / "child.toml"}
    assert (recipes / "base.toml").resolve() in session.files()
    assert session.chains[recipes / "child.toml"] == {(recipes / n).resolve() for n in ("child.toml", "base.toml")}


# --- the schema ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def validator():
    import jsonschema

    from recipe_runner.cli.schema import recipe_schema
    from recipe_runner.plugin_api.manager import load_plugins

    return jsonschema.Draft202012Validator(recipe_schema(load_plugins([])))


def test_the_schema_accepts_an_abstract_base_without_matrix(validator):
    assert [e.message for e in validator.iter_errors({"abstract": True, "model": {"id": "x"}})] == []
    assert [e.message for e in validator.iter_errors({"abstract": True, "model": {"device": "cpu"}})] == []
    assert [e.message for e in validator.iter_errors({"model": {"id": "x"}})] == ["'matrix' is a required property"]
    assert [e.message for e in validator.iter_errors({"abstract": False, "model": {"id": "x"}})] == [
        "'matrix' is a required property"]


def test_the_schema_still_checks_what_an_abstract_base_has(validator):
    errors = [e.message for e in validator.iter_errors({"abstract": True, "modle": {"id": "x"}})]
    assert errors == ["Additional properties are not allowed ('modle' was unexpected)"]
    assert [e.message for e in validator.iter_errors({"abstract": "yes", "model": {"id": "x"}, "matrix": {"prompts": ["a"]}})] \
        == ["'yes' is not of type 'boolean'"]
