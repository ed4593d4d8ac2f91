"""What plugin code does is named and on record (issue 21, items 3, 5, 7): an error in an
optimization's callback names its plugin and the callback, ``--debug`` shows its traceback (a
plugin that fails to import too); a plugin that changes pixels takes part in the job keys
(``job_identity``), hooks read their settings, and the hook contracts are enforced (a value
returned, a call argument ``before_batch`` misspells, ``run_started`` and ``run_finished`` on a
run with nothing to do)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from recipe_runner import hookimpl
from recipe_runner.api import Optimization, OptimizationSettings
from recipe_runner.base.errors import PluginError
from tests.conftest import tiny_recipe

ONE_IMAGE = tiny_recipe("a cat on a roof", seeds=[0])
TWO_IMAGES = tiny_recipe("a cat on a roof", seeds=[0, 1])


class Boom(OptimizationSettings):
    where: str = "apply"


def _raises_in(name: str):  # a callback raising when the settings name it
    def callback(*args):
        settings = [a for a in args if isinstance(a, Boom)][-1]  # switch: the new settings
        if settings.where == name:
            raise ValueError(f"boom in {name}")
        return {"apply": None, "switch": None, "load_kwargs": {}, "weight_files": [], "check": None}[name]

    return callback


class Boomer:
    """One optimization whose every callback raises when ``where`` names it."""

    @hookimpl
    def register_optimizations(self):
        return [Optimization(name="boom", settings=Boom, stage="layout", apply=_raises_in("apply"),
                             check=_raises_in("check"), load_kwargs=_raises_in("load_kwargs"),
                             switch=_raises_in("switch"), weight_files=_raises_in("weight_files"))]


# --- 3. errors in plugin code name the plugin and the callback ----------------------------------

@pytest.mark.parametrize("callback", ["check", "load_kwargs", "weight_files", "apply"])
def test_an_error_in_an_optimization_callback_names_the_plugin_and_the_callback(
        callback, recipe_runner_register_plugin, recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    recipe_runner_register_plugin(Boomer(), "boomer")
    recipe = recipe_runner_write_recipe(ONE_IMAGE + f'[optimizations.boom]\nwhere = "{callback}"\n')
    result = recipe_runner_cli(recipe, "--out", tmp_path / "out", "--no-progress")
    assert result.code == 1, result.err
    assert (f"error: plugin 'boomer' (registered test_plugin_hooks) failed in {callback} of its optimization "
            f"'boom': ValueError: boom in {callback}") in result.err.replace("tests.plugins.", "")


def test_an_error_in_switch_names_the_plugin_and_the_callback(recipe_runner_register_plugin, recipe_runner_cli,
                                                              recipe_runner_write_recipe, tmp_path):
    recipe_runner_register_plugin(Boomer(), "boomer")
    recipe = recipe_runner_write_recipe(ONE_IMAGE + '[matrix.axes]\n"optimizations.boom" = '
                                        '[{ where = "none" }, { where = "switch" }]\n')
    result = recipe_runner_cli(recipe, "--out", tmp_path / "out", "--no-progress")
    assert result.code == 1, result.err
    assert "plugin 'boomer'" in result.err and "failed in switch of its optimization 'boom': ValueError: boom in switch" \
        in result.err


def test_debug_shows_the_traceback_of_a_callback_error(recipe_runner_register_plugin, recipe_runner_cli,
                                                       recipe_runner_write_recipe, tmp_path):
    recipe_runner_register_plugin(Boomer(), "boomer")
    recipe = recipe_runner_write_recipe(ONE_IMAGE + '[optimizations.boom]\nwhere = "check"\n')
    with pytest.raises(PluginError) as raised:  # --debug lets it through: Python prints the chain
        recipe_runner_cli(recipe, "--out", tmp_path / "out", "--no-progress", "--debug")
    assert isinstance(raised.value.__cause__, ValueError)
    assert "boomer" in str(raised.value)


def test_debug_shows_the_traceback_of_a_plugin_that_fails_to_import(recipe_runner_cli, recipe_runner_write_recipe,
                                                                    tmp_path, monkeypatch):
    (tmp_path / "rr_unimportable.py").write_text("import os\n\ndef helper():\n    raise RuntimeError('no')\n\nhelper()\n")
    monkeypatch.chdir(tmp_path)
    recipe = recipe_runner_write_recipe(ONE_IMAGE)
    plain = recipe_runner_cli("-p", "rr_unimportable", recipe, "--dry-run")
    assert plain.code == 2 and "Traceback" not in plain.err
    debug = recipe_runner_cli("-p", "rr_unimportable", recipe, "--dry-run", "--debug")
    assert debug.code == 2
    assert "Traceback (most recent call last)" in debug.err
    assert 'rr_unimportable.py", line 4, in helper' in debug.err and "RuntimeError: no" in debug.err
    sys.modules.pop("rr_unimportable", None)


# --- 5. effects on record: job_identity, settings for hooks -------------------------------------

class Tint(OptimizationSettings):
    amount: int = 40


def tint_plugin(version: str) -> types.ModuleType:
    """A plugin module changing pixels in ``after_batch`` by its ``tint`` settings, saying so with
    ``job_identity``."""
    module = types.ModuleType("rr_tint")
    module.__version__ = version

    @hookimpl
    def register_optimizations():
        return [Optimization(name="tint", settings=Tint, stage="layout", apply=lambda pipe, settings, context: None)]

    @hookimpl
    def after_batch(batch, images, settings):
        amount = settings["tint"].amount if "tint" in settings else 0
        for i, image in enumerate(images):
            images[i] = image.point(lambda v: min(255, v + amount))

    @hookimpl
    def job_identity(recipe):
        return {"tint": recipe.optimizations.get("tint")} if "tint" in recipe.optimizations else None

    module.register_optimizations = register_optimizations
    module.after_batch = after_batch
    module.job_identity = job_identity
    return module


def summary(result) -> str:
    return next(line for line in result.out.splitlines() if " images: " in line)


@pytest.mark.slow
def test_a_plugin_that_changes_pixels_takes_part_in_the_job_key(recipe_runner_register_plugin, recipe_runner_cli,
                                                                recipe_runner_write_recipe, tmp_path):
    from recipe_runner.plugin_api import manager

    out = tmp_path / "out"
    recipe = recipe_runner_write_recipe(TWO_IMAGES + "[optimizations.tint]\namount = 40\n")
    plain = recipe_runner_write_recipe(TWO_IMAGES, name="plain.toml")
    first = tint_plugin("1.0")
    recipe_runner_register_plugin(first, "rr-tint")
    assert recipe_runner_cli(recipe, "--out", out, "--no-progress").code == 0
    again = recipe_runner_cli(recipe, "--out", out, "--no-progress")
    assert "2 unchanged" in summary(again), again.out
    manager.unregister(first)
    bumped = tint_plugin("1.1")
    recipe_runner_register_plugin(bumped, "rr-tint")
    after_bump = recipe_runner_cli(recipe, "--out", out, "--no-progress")
    assert "2 regenerated" in summary(after_bump), after_bump.out
    manifest = json.loads((out / "recipe" / "manifest.json").read_text())
    assert manifest["optimizations"]["tint"]["settings"] == {"required": True, "amount": 40}
    # the plugin's settings changed: regenerated too; and a recipe it leaves alone keeps its keys
    changed = recipe_runner_cli(recipe, "--set", "optimizations.tint.amount=10", "--out", out, "--no-progress")
    assert "2 regenerated" in summary(changed), changed.out
    assert recipe_runner_cli(plain, "--out", tmp_path / "plain", "--no-progress").code == 0
    manager.unregister(bumped)
    without = recipe_runner_cli(plain, "--out", tmp_path / "plain", "--no-progress")
    assert "2 unchanged" in summary(without), without.out


def test_job_identity_joins_the_key_only_for_recipes_it_returns_a_value_for(recipe_runner_register_plugin):
    import tomllib

    from recipe_runner.plugin_api.manager import identities, load_plugins
    from recipe_runner.recipe.loading import load_data
    from recipe_runner.recipe.model import validate

    def load_text(text: str):
        return load_data(tomllib.loads(text), Path("recipe.toml"))

    recipe_runner_register_plugin(tint_plugin("1.0"), "rr-tint")
    plugins = load_plugins()
    with_tint = validate(load_text(ONE_IMAGE + "[optimizations.tint]\namount = 3\n"))
    assert identities(plugins, with_tint) == {"rr-tint": {"version": "1.0", "identity": {"tint": {"amount": 3}}}}
    assert identities(plugins, validate(load_text(ONE_IMAGE))) == {}


def test_job_identity_must_return_json_values(recipe_runner_register_plugin, recipe_runner_cli,
                                              recipe_runner_write_recipe):
    class Odd:
        @hookimpl
        def job_identity(self, recipe):
            return {"when": object()}

    recipe_runner_register_plugin(Odd(), "odd")
    result = recipe_runner_cli(recipe_runner_write_recipe(ONE_IMAGE), "--dry-run")
    assert result.code == 1
    assert "plugin 'odd'" in result.err and "job_identity hook must return JSON values" in result.err


# --- 7. the hook contracts -----------------------------------------------------------------------

@pytest.mark.parametrize("hook", ["after_batch", "before_batch"])
def test_a_batch_hook_returning_a_value_is_an_error_saying_what_to_do(hook, recipe_runner_register_plugin,
                                                                     recipe_runner_cli, recipe_runner_write_recipe,
                                                                     tmp_path):
    class Returns:
        @hookimpl
        def after_batch(self, images):
            return [image.rotate(90) for image in images] if hook == "after_batch" else None

        @hookimpl
        def before_batch(self, call_kwargs):
            return dict(call_kwargs) if hook == "before_batch" else None

    recipe_runner_register_plugin(Returns(), "returns")
    result = recipe_runner_cli(recipe_runner_write_recipe(ONE_IMAGE), "--out", tmp_path / "out", "--no-progress")
    assert result.code == 1
    assert "plugin 'returns'" in result.err and f"its {hook} hook returned a value" in result.err
    assert ("replace it (images[i] = new)" if hook == "after_batch" else "mutating call_kwargs") in result.err
    assert not list((tmp_path / "out" / "recipe").glob("*.png"))


def test_a_call_argument_before_batch_misspells_is_refused_like_a_params_typo(recipe_runner_register_plugin,
                                                                             recipe_runner_cli,
                                                                             recipe_runner_write_recipe, tmp_path):
    class Misspells:
        @hookimpl
        def before_batch(self, call_kwargs):
            call_kwargs["guidance_scael"] = 3.0

    recipe_runner_register_plugin(Misspells(), "misspells")
    result = recipe_runner_cli(recipe_runner_write_recipe(ONE_IMAGE), "--out", tmp_path / "out", "--no-progress")
    assert result.code == 1
    assert "plugin 'misspells'" in result.err
    assert "'guidance_scael': did you mean 'guidance_scale'?" in result.err


def test_run_started_and_run_finished_pair_up_a_run_with_nothing_to_do_included(
        recipe_runner_register_plugin, recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    seen: list[tuple[str, object]] = []

    class Reports:
        @hookimpl
        def run_started(self, todo):
            seen.append(("started", todo))

        @hookimpl
        def run_finished(self, manifest):
            seen.append(("finished", len(manifest["images"])))
            manifest["images"].clear()  # a copy: the folder's manifest keeps its images

    recipe_runner_register_plugin(Reports(), "reports")
    recipe = recipe_runner_write_recipe(ONE_IMAGE)
    assert recipe_runner_cli(recipe, "--out", tmp_path / "out", "--no-progress").code == 0
    assert recipe_runner_cli(recipe, "--out", tmp_path / "out", "--no-progress").code == 0
    assert seen == [("started", 1), ("finished", 1), ("started", 0), ("finished", 1)]


@pytest.mark.slow
def test_batch_hooks_read_their_settings_and_the_variant_s_recipe(recipe_runner_register_plugin, recipe_runner_cli,
                                                                  recipe_runner_write_recipe, tmp_path):
    seen: list[tuple[int, int]] = []
    plugin = tint_plugin("1.0")

    @hookimpl
    def before_batch(recipe, settings):
        seen.append((settings["tint"].amount, recipe.optimizations["tint"]["amount"]))

    plugin.before_batch = before_batch
    recipe_runner_register_plugin(plugin, "rr-tint")
    recipe = recipe_runner_write_recipe(ONE_IMAGE + '[matrix.axes]\n"optimizations.tint" = [{ amount = 1 }, { amount = 7 }]\n')
    result = recipe_runner_cli(recipe, "--out", tmp_path / "out", "--no-progress")
    assert result.code == 0, result.err
    assert seen == [(1, 1), (7, 7)]
    record = json.loads((tmp_path / "out" / "recipe" / "manifest.json").read_text())["optimizations"]["tint"]
    assert [v["settings"]["amount"] for v in record["variants"].values()] == [1, 7]  # each value of the axis
    assert record["settings"]["amount"] == 7 and record["status"] == "applied"



@pytest.mark.slow
def test_after_batch_facts_are_kept_per_image_and_while_the_image_is_unchanged(
        recipe_runner_register_plugin, recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    class Notes:
        @hookimpl
        def after_batch(self, batch, facts):
            for i, job in enumerate(batch.jobs):
                facts[i]["notes"] = {"seed": job.seed}

    recipe_runner_register_plugin(Notes(), "notes")
    recipe = recipe_runner_write_recipe(TWO_IMAGES)
    assert recipe_runner_cli(recipe, "--out", tmp_path / "out", "--no-progress").code == 0
    manifest = tmp_path / "out" / "recipe" / "manifest.json"
    assert [i["facts"] for i in json.loads(manifest.read_text())["images"]] == [{"notes": {"seed": 0}},
                                                                                {"notes": {"seed": 1}}]
    more = recipe_runner_write_recipe(tiny_recipe("a cat on a roof", seeds=[0, 1, 2]))
    assert recipe_runner_cli(more, "--out", tmp_path / "out", "--no-progress").code == 0  # 2 kept, 1 made
    assert [i.get("facts") for i in json.loads(manifest.read_text())["images"]] == [
        {"notes": {"seed": s}} for s in (0, 1, 2)]


def test_no_facts_no_facts_key(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    assert recipe_runner_cli(recipe_runner_write_recipe(ONE_IMAGE), "--out", tmp_path / "out", "--no-progress").code == 0
    assert "facts" not in json.loads((tmp_path / "out" / "recipe" / "manifest.json").read_text())["images"][0]


def test_facts_must_be_json(recipe_runner_register_plugin, recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    class Odd:
        @hookimpl
        def after_batch(self, facts):
            facts[0]["when"] = object()

    recipe_runner_register_plugin(Odd(), "odd")
    result = recipe_runner_cli(recipe_runner_write_recipe(ONE_IMAGE), "--out", tmp_path / "out", "--no-progress")
    assert result.code == 1 and "plugin 'odd'" in result.err and "facts must be JSON values" in result.err
