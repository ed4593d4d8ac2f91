"""The plugin system from a plugin author's side: third-party loading (broken plugins, the
allow-list variable, misspelled hooks), --list-plugins, the hook specifications, the example
plugin package and the pytest plugin that ships the test helpers."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from recipe_runner import hookimpl, hookspecs
from tests.conftest import REPO, run_subprocess

EXAMPLE = REPO / "examples" / "recipe-runner-example"

ONE_IMAGE = '''
[model]
id = "tiny:sd15"
device = "cpu"
[params]
num_inference_steps = 2
[matrix]
prompts = ["a cat on a roof"]
seeds = [0]
'''


# --- third-party plugins -------------------------------------------------------------------------

@pytest.fixture
def fake_distribution(tmp_path) -> Path:
    """A folder that, on PYTHONPATH, is an installed distribution declaring two plugins in the
    ``recipe_runner`` group: ``broken`` (raises at import) and ``fine`` (provides ``sharpen``)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "broken_plugin.py").write_text('raise RuntimeError("this plugin is broken on purpose")\n')
    (site / "fine_plugin.py").write_text(textwrap.dedent('''
        from recipe_runner import hookimpl
        from recipe_runner.optimizations import Optimization, OptimizationSettings

        class Settings(OptimizationSettings):
            amount: float = 1.0

        @hookimpl
        def register_optimizations():
            return [Optimization(name="sharpen", settings=Settings, stage="layout",
                                 apply=lambda pipe, settings, context: None, description="does nothing")]
    '''))
    info = site / "broken_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[recipe_runner]\nbroken = broken_plugin\nfine = fine_plugin\n")
    return site


def with_site(site: Path, **env: str) -> dict:
    return {"PYTHONPATH": f"{REPO}{os.pathsep}{site}", **env}


def test_a_broken_entry_point_plugin_is_listed_with_its_error(fake_distribution):
    result = run_subprocess("--list-plugins", env=with_site(fake_distribution))
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("broken  "))
    assert lines[at] == "broken  [entry point; broken-plugin 0.1; broken_plugin]"
    assert lines[at + 1] == "    failed to load: RuntimeError: this plugin is broken on purpose"
    assert "fine  [entry point; broken-plugin 0.1; fine_plugin]" in result.out
    assert "        amount: float = 1.0" in result.out


def test_a_broken_plugin_does_not_stop_a_recipe_that_does_not_use_it(fake_distribution, tmp_path):
    recipe = tmp_path / "plain.toml"
    recipe.write_text(ONE_IMAGE)
    result = run_subprocess(recipe, "--out", tmp_path / "out", "--no-progress", env=with_site(fake_distribution))
    assert result.code == 0, result.err
    assert (tmp_path / "out" / "plain" / "manifest.json").is_file()


def test_a_recipe_that_uses_a_broken_plugin_stops_with_exit_2(fake_distribution, tmp_path):
    recipe = tmp_path / "uses.toml"
    recipe.write_text(ONE_IMAGE + "[optimizations]\nbroken = true\n")
    result = run_subprocess(recipe, "--dry-run", env=with_site(fake_distribution))
    assert result.code == 2
    assert ("uses.toml:11: optimizations.broken: the plugin 'broken' failed to load: "
            "RuntimeError: this plugin is broken on purpose") in result.err


def test_the_allow_list_variable_restricts_third_party_plugins(fake_distribution):
    only_fine = run_subprocess("--list-plugins", env=with_site(fake_distribution, RECIPE_RUNNER_PLUGINS="fine"))
    assert "\nfine  [entry point" in only_fine.out and "\nbroken  [" not in only_fine.out
    assert "attention_slicing  [built-in" in only_fine.out  # built-ins always load
    none = run_subprocess("--list-plugins", env=with_site(fake_distribution, RECIPE_RUNNER_PLUGINS=""))
    assert "[entry point" not in none.out and "vae_tiling  [built-in" in none.out


class Misspelled:
    @hookimpl
    def before_bach(self, pipe, batch, call_kwargs):  # sic: not a hook
        pass


def test_a_misspelled_hook_is_reported_by_name(recipe_runner_register_plugin, recipe_runner_cli):
    recipe_runner_register_plugin(Misspelled(), "misspelled")
    result = recipe_runner_cli("--list-plugins")
    assert result.code == 0
    lines = result.out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("misspelled  "))
    assert "failed to load" in lines[at + 1] and "before_bach" in lines[at + 1]


def test_list_plugins_shows_source_version_and_typed_settings(recipe_runner_cli):
    from recipe_runner import __version__

    result = recipe_runner_cli("--list-plugins")
    assert f"compile  [built-in; recipe-runner {__version__}; recipe_runner.plugins.compile]" in result.out
    assert "    [optimizations] offload (stage memory):" in result.out
    assert "        strategy: 'model' | 'sequential' | 'group' = 'model'" in result.out
    # attribute docstrings, of the plugin's model and of the base model, read from the source
    assert "        num_blocks_per_group: int = 1  # group, block_level: how many blocks move together" in result.out
    assert "        required: bool = True  # false: skip it with a warning" in result.out
    assert "        slice_size: 'auto' | 'max' | int = 'auto'" in result.out
    assert "        adapters: list[{id: str, weight_name: str | none, scale: float, name: str | none}] required" in result.out


# --- hooks ---------------------------------------------------------------------------------------

HOOKS = sorted(name for name, f in inspect.getmembers(hookspecs, inspect.isfunction)
               if hasattr(f, "recipe_runner_spec"))


def test_every_hookspec_has_a_docstring():
    assert HOOKS, "no hook specifications found"
    for name in HOOKS:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert len(doc) > 40, name


class Recorder:
    """A test plugin implementing every hook: records the calls and what they received."""

    def __init__(self):
        self.calls: dict[str, list[dict]] = {}

    def _seen(self, name, **kwargs):
        self.calls.setdefault(name, []).append(kwargs)

    @hookimpl
    def register_optimizations(self):
        self._seen("register_optimizations")
        return []

    @hookimpl
    def pipeline_ready(self, pipe, recipe, context):
        self._seen("pipeline_ready", pipe=pipe, recipe=recipe, context=context)

    @hookimpl
    def before_batch(self, pipe, batch, call_kwargs):
        self._seen("before_batch", batch=batch, prompts=list(call_kwargs["prompt"]))

    @hookimpl
    def after_batch(self, pipe, batch, images):
        self._seen("after_batch", batch=batch, images=len(images))

    @hookimpl
    def run_finished(self, recipe, output_dir, manifest):
        self._seen("run_finished", output_dir=output_dir, images=len(manifest["images"]))


def test_every_hook_is_implemented_by_a_test_plugin_and_called(recipe_runner_register_plugin, recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    recorder = recipe_runner_register_plugin(Recorder(), "recorder")
    implemented = sorted(n for n in dir(Recorder) if hasattr(getattr(Recorder, n), "recipe_runner_impl"))
    assert implemented == HOOKS  # a new hookspec needs a test that exercises it
    recipe = recipe_runner_write_recipe(ONE_IMAGE.replace('seeds = [0]', 'seeds = [0, 1, 2]') + "[run]\nbatch_size = 2\n")
    result = recipe_runner_cli(recipe, "--out", tmp_path / "out", "--no-progress")
    assert result.code == 0, result.err
    assert sorted(recorder.calls) == HOOKS
    assert len(recorder.calls["pipeline_ready"]) == 1
    assert type(recorder.calls["pipeline_ready"][0]["pipe"]).__name__ == "StableDiffusionPipeline"
    assert [c["batch"].index for c in recorder.calls["before_batch"]] == [0, 1]
    assert [c["images"] for c in recorder.calls["after_batch"]] == [2, 1]
    assert recorder.calls["run_finished"] == [{"output_dir": tmp_path / "out" / "recipe", "images": 3}]


# --- the example plugin package and the pytest plugin ---------------------------------------------

def example_installed() -> bool:
    try:
        metadata.distribution("recipe-runner-example")
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not example_installed(), reason="pip install -e examples/recipe-runner-example")
def test_the_installed_example_plugin_is_an_entry_point_a_recipe_can_use(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    listed = recipe_runner_cli("--list-plugins")
    assert "freeu  [entry point; recipe-runner-example 0.1.0; recipe_runner_example]" in listed.out
    recipe = recipe_runner_write_recipe(ONE_IMAGE + "[optimizations]\nfreeu = { b1 = 1.3 }\n")
    result = recipe_runner_cli(recipe, "--out", tmp_path / "out", "--no-progress")
    assert result.code == 0, result.err
    manifest = json.loads((tmp_path / "out" / "recipe" / "manifest.json").read_text())
    assert manifest["optimizations"]["freeu"]["status"] == "applied"


def test_the_example_plugin_passes_its_own_tests_with_the_shipped_pytest_plugin(tmp_path):
    """The example's tests have no conftest: their fixtures come from recipe_runner.testing (loaded by
    -p here; an installed recipe-runner loads it through its pytest11 entry point)."""
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{EXAMPLE}")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "recipe_runner.testing", "-p", "no:cacheprovider",
                           str(EXAMPLE / "tests")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


def test_the_pytest_plugin_is_not_registered_twice_when_installed(tmp_path):
    """An installed recipe-runner registers recipe_runner.testing through pytest11; the checkout's
    conftest names it too. Simulated with a dist-info on PYTHONPATH declaring the entry point."""
    info = tmp_path / "site" / "recipe_runner-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: recipe-runner\nVersion: 0.1.0\n")
    import tomllib

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["pytest11"]
    assert declared == {"recipe_runner.testing": "recipe_runner.testing"}  # the name must equal the module's
    (info / "entry_points.txt").write_text("[pytest11]\nrecipe_runner.testing = recipe_runner.testing\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path / 'site'}{os.pathsep}{REPO}")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error",
                           "--trace-config", "tests/test_loading.py"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("runner/testing.py") == 1, proc.stdout


@pytest.mark.skipif(not example_installed(), reason="pip install -e examples/recipe-runner-example")
def test_register_plugin_takes_the_place_of_the_same_installed_plugin(recipe_runner_register_plugin, recipe_runner_cli):
    import recipe_runner_example

    recipe_runner_register_plugin(recipe_runner_example, "freeu-under-test")
    listed = recipe_runner_cli("--list-plugins").out
    assert "freeu  [entry point" not in listed
    assert "freeu-under-test  [registered" in listed and "failed to load" not in listed
