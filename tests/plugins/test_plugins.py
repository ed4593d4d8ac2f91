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

from recipe_runner import hookimpl
from recipe_runner.plugin_api import hookspecs
from tests.conftest import REPO, run_subprocess, tiny_recipe

EXAMPLE = REPO / "examples" / "recipe-runner-example"

ONE_IMAGE = tiny_recipe("a cat on a roof", seeds=[0])


# --- third-party plugins -------------------------------------------------------------------------

@pytest.fixture
def fake_distribution(tmp_path) -> Path:
    """A folder that, on PYTHONPATH, is an installed distribution declaring two plugins in the
    ``recipe_runner`` group: ``broken`` (raises at import) and ``fine`` (provides ``sharpen``)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "broken_plugin.py").write_text('raise RuntimeError("this plugin is broken on purpose")\n')
    (site / "fine_plugin.py").write_text(textwrap.dedent('''
        from recipe_runner.api import Optimization, OptimizationSettings, hookimpl

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


@pytest.mark.slow
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
    assert ("uses.toml:10: optimizations.broken: the plugin 'broken' failed to load: "
            "RuntimeError: this plugin is broken on purpose") in result.err


@pytest.mark.slow
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
    def register_axis_kinds(self, register):
        self._seen("register_axis_kinds")

    @hookimpl
    def register_model_sources(self, register):
        self._seen("register_model_sources")

    @hookimpl
    def register_output_formats(self, register):
        self._seen("register_output_formats")

    @hookimpl
    def register_metrics(self, register):
        self._seen("register_metrics")

    @hookimpl
    def pipeline_ready(self, pipe, recipe, context):
        self._seen("pipeline_ready", pipe=pipe, recipe=recipe, context=context)

    @hookimpl
    def job_identity(self, recipe):
        self._seen("job_identity", recipe=recipe)

    @hookimpl
    def run_started(self, recipe, output_dir, todo):
        self._seen("run_started", output_dir=output_dir, todo=todo)

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
    assert recorder.calls["run_started"] == [{"output_dir": tmp_path / "out" / "recipe", "todo": 3}]
    assert len(recorder.calls["job_identity"]) == 1  # one variant


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


@pytest.mark.slow
def test_the_example_plugin_passes_its_own_tests_with_the_shipped_pytest_plugin(tmp_path):
    """The example's tests have no conftest: their fixtures come from recipe_runner.testing (loaded by
    -p here; an installed recipe-runner loads it through its pytest11 entry point)."""
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{EXAMPLE}")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "recipe_runner.testing", "-p", "no:cacheprovider",
                           str(EXAMPLE / "tests")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "6 passed" in proc.stdout


@pytest.mark.slow
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
                           "--trace-config", "tests/recipe/test_loading.py"], cwd=REPO, env=env, capture_output=True,
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


# --- register_optimizations: one plugin at a time, through pluggy ----------------------------------

class Raising:
    @hookimpl
    def register_optimizations(self):
        raise RuntimeError("cannot declare anything today")


class Duplicate:
    @hookimpl
    def register_optimizations(self):
        from recipe_runner.api import Optimization, OptimizationSettings

        return [Optimization(name="vae_tiling", settings=OptimizationSettings, stage="memory",
                             apply=lambda pipe, settings, context: None)]


def test_a_plugin_whose_register_optimizations_raises_is_named_and_the_rest_works(
        recipe_runner_register_plugin, recipe_runner_cli, recipe_runner_write_recipe):
    recipe_runner_register_plugin(Raising(), "raising")
    recipe_runner_register_plugin(Duplicate(), "duplicate")
    listed = recipe_runner_cli("--list-plugins")
    assert listed.code == 0
    lines = listed.out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("raising  "))
    assert lines[at + 1] == "    failed to load: RuntimeError: cannot declare anything today"
    at = next(i for i, line in enumerate(lines) if line.startswith("duplicate  "))
    # a built-in keeps its name: the plugin's own is there under its qualified key
    assert lines[at + 1].startswith("""    [optimizations] vae_tiling as "duplicate:vae_tiling" (vae_tiling alone: 'vae_tiling''s) (stage memory)""")
    at = next(i for i, line in enumerate(lines) if line.startswith("vae_tiling  [built-in"))
    assert lines[at + 1].startswith("    [optimizations] vae_tiling (stage memory)")

    from recipe_runner.plugin_api import manager as plugin_manager

    loaded = plugin_manager.load_plugins()
    assert loaded.registry.providers["vae_tiling"] == "vae_tiling"
    assert "raising" in loaded.registry.broken and "duplicate" not in loaded.registry.broken
    assert loaded.registry.lookup("duplicate:vae_tiling") is not None
    recipe = recipe_runner_write_recipe(ONE_IMAGE + "[optimizations]\nvae_tiling = true\nattention_slicing = true\n")
    result = recipe_runner_cli(recipe, "--dry-run")
    assert result.code == 0, result.err


def test_register_optimizations_goes_through_the_pluggy_hook(recipe_runner_register_plugin, monkeypatch):
    """Called by pluggy (its hook-call monitoring sees each call), one plugin per call."""
    import pluggy

    from recipe_runner.plugin_api import manager as plugin_manager

    seen: list[list[str]] = []
    real_init = pluggy.PluginManager.__init__

    def monitored(pm, *args, **kwargs):
        real_init(pm, *args, **kwargs)
        pm.add_hookcall_monitoring(
            lambda name, impls, kwargs: seen.append([i.plugin_name for i in impls]) if name == "register_optimizations" else None,
            lambda outcome, name, impls, kwargs: None)

    monkeypatch.setattr(pluggy.PluginManager, "__init__", monitored)
    recipe_runner_register_plugin(Raising(), "raising")
    loaded = plugin_manager.load_plugins()
    assert sorted(name for names in seen for name in names) == sorted(
        [impl.plugin_name for impl in loaded.pm.hook.register_optimizations.get_hookimpls()] + ["raising"])
    assert loaded.pm.get_plugin("raising") is None  # failed: unregistered, none of its hooks is called
    assert all(len(names) == 1 for names in seen)
    assert "attention_slicing" in [names[0] for names in seen]


# --- what an installed recipe-runner does to other projects ---------------------------------------

UNRELATED_TEST = '''
import os

def test_nothing_of_recipe_runner(request):
    print("OMP_NUM_THREADS=" + repr(os.environ.get("OMP_NUM_THREADS")))
    print("RECIPE_RUNNER_CACHE=" + repr(os.environ.get("RECIPE_RUNNER_CACHE")))
    print("FIXTURES=" + ",".join(sorted(request.fixturenames)))
'''


@pytest.mark.slow
def test_an_unrelated_pytest_session_sees_no_environment_change_and_no_generic_fixture(tmp_path):
    """Another project's tests, in the same venv: recipe-runner's pytest plugin is loaded (the
    pytest11 entry point of an installed recipe-runner; named with -p here for a checkout) and
    changes nothing a test did not ask for."""
    project = tmp_path / "other-project"
    project.mkdir()
    (project / "test_other.py").write_text(UNRELATED_TEST)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "RECIPE_RUNNER_CACHE", "PYTHONPATH")}
    base = [sys.executable, "-m", "pytest", "-p", "recipe_runner.testing", "-p", "no:cacheprovider",
            "--rootdir", str(project)]
    proc = subprocess.run([*base, "-q", "-s", "test_other.py"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OMP_NUM_THREADS=None" in proc.stdout
    assert "RECIPE_RUNNER_CACHE=None" in proc.stdout
    assert "FIXTURES=request\n" in proc.stdout

    fixtures = subprocess.run([*base, "--fixtures", "test_other.py"], cwd=project, env=env, capture_output=True,
                              text=True, timeout=300)
    assert fixtures.returncode == 0, fixtures.stdout + fixtures.stderr
    section = fixtures.stdout.split("fixtures defined from recipe_runner.testing", 1)[1].split("\n\n=", 1)[0]
    names = [line.split()[0] for line in section.splitlines() if " -- " in line and not line.startswith(" ")]
    assert "recipe_runner_cli" in names and "recipe_runner_tiny_sd15" in names
    assert all(name.startswith("recipe_runner_") for name in names), names


# --- a folder with its own plugins/ and runner/ packages ------------------------------------------

@pytest.mark.slow
def test_a_folder_with_its_own_plugins_and_runner_packages_gets_the_built_ins(tmp_path):
    """A team's recipe repository often has its own `plugins/` (and `runner/`) packages; run from
    there, recipe-run still loads its built-ins (its import names are recipe_runner.*)."""
    team = tmp_path / "team-recipes"
    for package in ("plugins", "runner"):
        (team / package).mkdir(parents=True)
        (team / package / "__init__.py").write_text(f"raise ImportError('the team\\'s own {package} package')\n")
        (team / package / "attention_slicing.py").write_text("junk = True\n")
        (team / package / "cli.py").write_text("junk = True\n")
    recipe = team / "sliced.toml"
    recipe.write_text(ONE_IMAGE + "[optimizations]\nattention_slicing = true\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def recipe_run(*args, command=(sys.executable, "-m", "recipe_runner"), **extra):
        proc = subprocess.run([*command, *map(str, args)], cwd=team, env={**env, **extra}, capture_output=True,
                              text=True, timeout=600)
        return proc.returncode, proc.stdout, proc.stderr

    # python -m puts the current folder first on sys.path: the team's packages are importable there
    code, out, err = recipe_run("--list-plugins")
    assert code == 0, err
    assert "failed to load" not in out
    for module in plugin_manager_builtins():
        assert f"; {module}]" in out
    code, out, err = recipe_run(recipe, "--dry-run")
    assert code == 0, err
    assert "attention_slicing" in out
    code, out, err = recipe_run(recipe, "--out", team / "out", "--no-progress")
    assert code == 0, err
    manifest = json.loads((team / "out" / "sliced" / "manifest.json").read_text())
    assert manifest["optimizations"]["attention_slicing"]["status"] == "applied"

    script = Path(sys.executable).with_name("recipe-run")
    if script.exists():  # the installed command, with the team's folder on the import path
        code, out, err = recipe_run("--list-plugins", command=(str(script),), PYTHONPATH=str(team))
        assert code == 0, err
        assert "failed to load" not in out and "attention_slicing  [built-in" in out
        code, out, err = recipe_run(recipe, "--dry-run", command=(str(script),), PYTHONPATH=str(team))
        assert code == 0, err


def plugin_manager_builtins() -> tuple[str, ...]:
    from recipe_runner.plugin_api.manager import BUILTIN

    return BUILTIN
