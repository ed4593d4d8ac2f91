"""The plugin contract, strict by construction (issue 21, items 1, 2, 4, 6, 8, 9): settings models
that cannot lose strictness, TOML arrays in tuple fields, load errors that say what failed and why,
two plugins providing one name, ``--dry-run`` running the checks a run runs, typing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types
from importlib import metadata
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from recipe_runner import hookimpl
from recipe_runner.api import Optimization, OptimizationSettings, Unsupported
from tests.conftest import REPO

ONE_IMAGE = '''
[model]
id = "tiny:sd15"
device = "cpu"
[params]
num_inference_steps = 2
[matrix]
prompts = ["a cat"]
seeds = [0]
'''


def _apply(pipe, settings, context):
    return None


def providing(*optimizations: Optimization) -> object:
    """A plugin object whose register_optimizations returns ``optimizations``."""

    class Plugin:
        @hookimpl
        def register_optimizations(self):
            return list(optimizations)

    return Plugin()


def listing(result_out: str, plugin: str) -> list[str]:
    """The --list-plugins lines of one plugin (its header and what follows it)."""
    lines = result_out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(f"{plugin}  ["))
    end = next((i for i in range(at + 1, len(lines)) if not lines[i].startswith(" ")), len(lines))
    return lines[at:end]


# --- 1. settings strict by construction ----------------------------------------------------------

class Loose(BaseModel):  # not an OptimizationSettings: no strictness, no `required`
    x: int = 1


class Loosened(OptimizationSettings):
    model_config = ConfigDict(extra="allow")
    x: int = 1


class Table(BaseModel):  # a nested table that keeps unknown keys
    n: int = 1


class WithLooseTable(OptimizationSettings):
    table: Table = Table()


class StrictTable(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = 1


class WithStrictTable(OptimizationSettings):
    table: StrictTable = StrictTable()


@pytest.mark.parametrize(("settings", "says"), [
    (Loose, "settings must be a subclass of recipe_runner.api.OptimizationSettings (strict, no unknown keys, "
            "brings required), got Loose(BaseModel)"),
    (Loosened, "settings Loosened loosens OptimizationSettings' model_config (extra='allow'): remove it"),
    (WithLooseTable, "settings WithLooseTable: its table Table must refuse unknown keys"),
])
def test_a_settings_model_that_is_not_strict_is_refused_at_load(settings, says, recipe_runner_register_plugin,
                                                                 recipe_runner_cli, recipe_runner_write_recipe):
    recipe_runner_register_plugin(providing(Optimization("o", settings, "layout", _apply)), "rr_loose")
    lines = listing(recipe_runner_cli("--list-plugins").out, "rr_loose")
    assert lines[1].startswith(f"    failed to load: TypeError: optimization 'o': {says}"), lines
    # the recipe that used to run with its key dropped, its string taken for a number, stops with exit 2
    recipe = recipe_runner_write_recipe(ONE_IMAGE + '[optimizations]\no = { y = 2, x = "3" }\n')
    result = recipe_runner_cli(recipe, "--dry-run")
    assert result.code == 2
    assert "optimizations.o: the plugin 'rr_loose' failed to load: TypeError: optimization 'o': " in result.err


def test_nested_tables_are_validated_strictly_too(recipe_runner_register_plugin, recipe_runner_cli,
                                                  recipe_runner_write_recipe):
    recipe_runner_register_plugin(providing(Optimization("o", WithStrictTable, "layout", _apply)), "rr_nested")
    recipe = recipe_runner_write_recipe(ONE_IMAGE + '[optimizations]\no = { table = { n = "3" } }\n')
    result = recipe_runner_cli(recipe, "--dry-run")
    assert result.code == 2 and "optimizations.o.table.n: expected an integer" in result.err, result.err
    recipe = recipe_runner_write_recipe(ONE_IMAGE + '[optimizations]\no = { table = { n = 3 } }\n')
    assert recipe_runner_cli(recipe, "--dry-run").code == 0


# --- 2. TOML arrays fill tuple fields -------------------------------------------------------------

class Shaped(OptimizationSettings):
    size: tuple[int, int, int] = (1, 2, 3)
    pair: tuple[float, float] | None = None
    tables: list[StrictTable] = []


def test_a_toml_array_fills_a_tuple_field_as_the_schema_says(recipe_runner_register_plugin, recipe_runner_cli,
                                                              recipe_runner_write_recipe):
    recipe_runner_register_plugin(providing(Optimization("shaped", Shaped, "layout", _apply)), "rr_shaped")
    schema = json.loads(recipe_runner_cli("--schema").out)
    size = schema["properties"]["optimizations"]["properties"]["shaped"]["anyOf"][1]["properties"]["size"]
    assert size["type"] == "array" and size["minItems"] == size["maxItems"] == 3
    good = recipe_runner_write_recipe(ONE_IMAGE + "[optimizations]\nshaped = { size = [4, 5, 6], pair = [0.5, 1] }\n")
    result = recipe_runner_cli(good, "--dry-run")
    assert result.code == 0, result.err
    assert '"size": [4, 5, 6]' in result.out and '"pair": [0.5, 1.0]' in result.out
    # still strict inside: a string is not a number, the length is checked
    for table, says in (('size = ["4", 5, 6]', "optimizations.shaped.size.0: expected an integer"),
                        ("size = [4, 5]", "optimizations.shaped.size"),
                        ("tables = [{ n = 1, m = 2 }]", "optimizations.shaped.tables.0.m: unknown key")):
        bad = recipe_runner_write_recipe(ONE_IMAGE + f"[optimizations]\nshaped = {{ {table} }}\n")
        result = recipe_runner_cli(bad, "--dry-run")
        assert result.code == 2 and says in result.err, (table, result.err)
        assert "valid tuple" not in result.err


# --- 4. load errors, complete and correctly worded ------------------------------------------------

class WrongArgument:
    @hookimpl
    def after_batch(self, pipe, batch, imgs):  # sic: the hook passes `images`
        pass


class UnknownHook:
    @hookimpl
    def befor_batch(self, pipe, batch, call_kwargs):  # sic
        pass


def test_a_wrong_hook_argument_says_which_argument_and_what_the_hook_passes(recipe_runner_register_plugin,
                                                                            recipe_runner_cli):
    recipe_runner_register_plugin(WrongArgument(), "rr_broken")
    recipe_runner_register_plugin(UnknownHook(), "rr_unknown")
    out = recipe_runner_cli("--list-plugins").out
    assert listing(out, "rr_broken")[1] == (
        "    failed to load: hook 'after_batch': after_batch(pipe, batch, imgs) takes argument(s) {'imgs'} "
        "that the hook does not pass (it passes pipe, batch, images, recipe, settings, facts)")
    assert listing(out, "rr_unknown")[1] == "    failed to load: unknown hook 'befor_batch' (did you mean 'before_batch'?)"


PLUGIN_MODULES = {
    "rr_p_raises": '''
from recipe_runner.api import hookimpl

@hookimpl
def register_optimizations():
    raise RuntimeError("no optimizations today")
''',
    "rr_p_unknown_hook": '''
from recipe_runner.api import hookimpl

@hookimpl
def befor_batch(pipe, batch, call_kwargs):
    pass
''',
    "rr_p_import_fails": '''
raise ImportError("a dependency is missing")
''',
}


@pytest.mark.parametrize(("module", "says"), [
    ("rr_p_raises", "error: -p: plugin module 'rr_p_raises' failed to load: RuntimeError: no optimizations today"),
    ("rr_p_unknown_hook", "error: -p: plugin module 'rr_p_unknown_hook' failed to load: unknown hook 'befor_batch'"),
    ("rr_p_import_fails", "error: -p: cannot import plugin module 'rr_p_import_fails': ImportError: a dependency is missing"),
])
def test_a_p_plugin_that_imports_but_fails_to_load_is_not_called_unimportable(
        module, says, recipe_runner_cli, recipe_runner_write_recipe, tmp_path, monkeypatch):
    (tmp_path / f"{module}.py").write_text(PLUGIN_MODULES[module])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, module, raising=False)
    recipe = recipe_runner_write_recipe(ONE_IMAGE)
    result = recipe_runner_cli("-p", module, recipe, "--dry-run")
    assert result.code == 2
    assert says in result.err, result.err
    sys.modules.pop(module, None)


def test_every_optimization_of_a_plugin_that_failed_names_its_error(recipe_runner_register_plugin, recipe_runner_cli,
                                                                    recipe_runner_write_recipe):
    # "alpha" is fine, "beta"'s settings are not: the plugin fails whole, and both keys say why
    recipe_runner_register_plugin(providing(Optimization("alpha", OptimizationSettings, "layout", _apply),
                                            Optimization("beta", Loose, "layout", _apply)), "rr_two")
    for key in ("alpha", "beta"):
        recipe = recipe_runner_write_recipe(ONE_IMAGE + f"[optimizations]\n{key} = true\n")
        result = recipe_runner_cli(recipe, "--dry-run")
        assert result.code == 2
        assert f"optimizations.{key}: the plugin 'rr_two' failed to load: TypeError: optimization 'beta'" in result.err
        assert "unknown optimization" not in result.err


class FailsLate:
    """Its optimization is fine, its axis kind is not: it fails whole, hooks included."""

    calls: list[str] = []

    @hookimpl
    def register_optimizations(self):
        return [Optimization("late", OptimizationSettings, "layout", _apply)]

    @hookimpl
    def register_axis_kinds(self, register):
        register(object())

    @hookimpl
    def before_batch(self, pipe, batch, call_kwargs):
        FailsLate.calls.append("before_batch")


def test_a_plugin_that_fails_late_is_not_half_loaded(recipe_runner_register_plugin):
    from recipe_runner.plugin_api import manager

    recipe_runner_register_plugin(FailsLate(), "rr_late")
    loaded = manager.load_plugins()
    assert "register_axis_kinds registered object" in loaded.registry.broken["rr_late"]
    assert loaded.registry.lookup("late") is None and loaded.registry.declared["late"] == "rr_late"
    assert loaded.pm.get_plugin("rr_late") is None  # its hooks are never called


def test_a_registered_module_plugin_is_named_by_its_module_not_builtins(recipe_runner_register_plugin, recipe_runner_cli,
                                                                        recipe_runner_write_recipe):
    module = types.ModuleType("rr_module_plugin")
    module.befor_batch = hookimpl(lambda pipe, batch, call_kwargs: None)  # type: ignore[attr-defined]
    recipe_runner_register_plugin(module)
    result = recipe_runner_cli(recipe_runner_write_recipe(ONE_IMAGE), "--dry-run")
    assert "plugin 'rr_module_plugin' (registered rr_module_plugin) failed to load" in result.err, result.err
    assert "builtins" not in result.err


# --- 6. two plugins providing one name ------------------------------------------------------------

class Glow(OptimizationSettings):
    level: int = 1


def glowing(by: str) -> object:
    def apply(pipe, settings, context):
        return {"by": by}

    class Plugin:
        @hookimpl
        def register_optimizations(self):
            return [Optimization("glow", Glow, "layout", apply, description=f"glow by {by}"),
                    Optimization(f"{by}_only", OptimizationSettings, "layout", apply)]

    return Plugin()


def test_two_plugins_with_one_name_both_load_and_a_recipe_picks_one(recipe_runner_register_plugin, recipe_runner_cli,
                                                                    recipe_runner_write_recipe):
    recipe_runner_register_plugin(glowing("a"), "rr_a")
    recipe_runner_register_plugin(glowing("b"), "rr_b")
    listed = recipe_runner_cli("--list-plugins").out
    assert not any("failed" in line for line in listing(listed, "rr_a") + listing(listed, "rr_b"))
    assert '    [optimizations] glow as "rr_b:glow" (glow alone: refused: also provided by \'rr_a\') (stage layout): glow by b' \
        in listing(listed, "rr_b")
    # the bare name: refused, naming both and how to pick one; each plugin's other key is there
    bare = recipe_runner_write_recipe(ONE_IMAGE + "[optimizations]\nglow = true\nb_only = true\n")
    result = recipe_runner_cli(bare, "--dry-run")
    assert result.code == 2
    here = type(glowing("a")).__module__
    assert (f"optimizations.glow: 'glow' is provided by 'rr_a' (registered {here}) and 'rr_b' "
            f"(registered {here}) (pick one with its qualified key: \"rr_a:glow\" or \"rr_b:glow\")"
            ) in result.err, result.err
    assert "b_only" not in result.err
    # the qualified key: validated with that plugin's settings, applied by it, recorded under the name
    wrong = recipe_runner_write_recipe(ONE_IMAGE + '[optimizations]\n"rr_b:glow" = { levle = 2 }\n', "wrong.toml")
    assert "optimizations.rr_b:glow.levle: unknown key (did you mean 'level'?)" in recipe_runner_cli(wrong, "--dry-run").err
    picked = recipe_runner_write_recipe(ONE_IMAGE + '[optimizations]\n"rr_b:glow" = { level = 2 }\n')
    assert recipe_runner_cli(picked, "--dry-run").code == 0
    typo = recipe_runner_write_recipe(ONE_IMAGE + '[optimizations]\n"rr_b:glwo" = true\n', "typo.toml")
    assert "optimizations.rr_b:glwo: unknown optimization (did you mean 'rr_b:glow'?)" in recipe_runner_cli(typo, "--dry-run").err
    both = recipe_runner_write_recipe(ONE_IMAGE + '[optimizations]\n"rr_a:glow" = true\n"rr_b:glow" = true\n', "both.toml")
    result = recipe_runner_cli(both, "--dry-run")
    assert result.code == 2 and "'glow' is enabled twice" in result.err


@pytest.mark.slow
def test_the_qualified_key_runs_that_plugin_s_optimization(recipe_runner_register_plugin, recipe_runner_cli,
                                                          recipe_runner_write_recipe, tmp_path):
    recipe_runner_register_plugin(glowing("a"), "rr_a")
    recipe_runner_register_plugin(glowing("b"), "rr_b")
    picked = recipe_runner_write_recipe(ONE_IMAGE + '[optimizations]\n"rr_b:glow" = { level = 2 }\n')
    result = recipe_runner_cli(picked, "--out", tmp_path)
    assert result.code == 0, result.err
    manifest = json.loads((tmp_path / "recipe" / "manifest.json").read_text())
    assert manifest["optimizations"]["glow"]["by"] == "b" and manifest["optimizations"]["glow"]["settings"]["level"] == 2


def test_the_schema_offers_the_qualified_keys_of_a_shared_name(recipe_runner_register_plugin, recipe_runner_cli):
    recipe_runner_register_plugin(glowing("a"), "rr_a")
    recipe_runner_register_plugin(glowing("b"), "rr_b")
    properties = json.loads(recipe_runner_cli("--schema").out)["properties"]["optimizations"]["properties"]
    assert {"rr_a:glow", "rr_b:glow", "a_only", "b_only"} <= set(properties) and "glow" not in properties


def example_installed() -> bool:
    try:
        metadata.distribution("recipe-runner-example")
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not example_installed(), reason="pip install -e examples/recipe-runner-example")
def test_another_freeu_beside_the_installed_example_names_both(recipe_runner_register_plugin, recipe_runner_cli,
                                                               recipe_runner_write_recipe):
    recipe_runner_register_plugin(providing(Optimization("freeu", OptimizationSettings, "layout", _apply),
                                            Optimization("other_key", OptimizationSettings, "layout", _apply)),
                                  "rr_other")
    recipe = recipe_runner_write_recipe(ONE_IMAGE + "[optimizations]\nfreeu = true\nother_key = true\n")
    result = recipe_runner_cli(recipe, "--dry-run")
    assert result.code == 2
    assert "optimizations.freeu: 'freeu' is provided by 'freeu' (recipe-runner-example 0.1.0) and 'rr_other'" in result.err
    assert "other_key" not in result.err and "(registered builtins)" not in result.err


@pytest.mark.skipif(not example_installed(), reason="pip install -e examples/recipe-runner-example")
def test_the_isolation_fixture_loads_no_installed_plugin(recipe_runner_isolated_plugins, recipe_runner_register_plugin,
                                                         recipe_runner_cli, recipe_runner_write_recipe):
    assert "freeu  [entry point" not in recipe_runner_cli("--list-plugins").out
    recipe_runner_register_plugin(providing(Optimization("freeu", OptimizationSettings, "layout", _apply)), "rr_mine")
    recipe = recipe_runner_write_recipe(ONE_IMAGE + "[optimizations]\nfreeu = true\n")
    result = recipe_runner_cli(recipe, "--dry-run")
    assert result.code == 0, result.err


@pytest.mark.skipif(not example_installed(), reason="pip install -e examples/recipe-runner-example")
def test_without_the_isolation_fixture_the_installed_plugin_is_there(recipe_runner_cli):
    assert "freeu  [entry point" in recipe_runner_cli("--list-plugins").out  # the fixture undid itself


# --- 8. --dry-run makes every check a run makes before loading ------------------------------------

def test_dry_run_refuses_what_the_run_refuses_before_loading(recipe_runner_cli, recipe_runner_write_recipe):
    recipe = recipe_runner_write_recipe(ONE_IMAGE + "[optimizations]\noffload = true\n")
    result = recipe_runner_cli(recipe, "--dry-run")
    assert result.code == 2
    assert ("recipe.toml:10: optimizations.offload: cannot run here: offloading moves weights between CPU memory and an "
            "accelerator, but this run's device is 'cpu'") in result.err, result.err
    skipped = recipe_runner_write_recipe(ONE_IMAGE + "[optimizations]\noffload = { required = false }\n", "skip.toml")
    result = recipe_runner_cli(skipped, "--dry-run")
    assert result.code == 0
    assert "warning: optimizations.offload: skipped: offloading moves weights" in result.err
    assert "optimization checks ran (device cpu): offload" in result.out


def test_dry_run_names_the_variant_of_an_axis_a_check_refuses(recipe_runner_cli, recipe_runner_write_recipe):
    recipe = recipe_runner_write_recipe(ONE_IMAGE + "[matrix.axes]\n\"optimizations.offload\" = [false, true]\n")
    result = recipe_runner_cli(recipe, "--dry-run")
    assert result.code == 2
    assert "matrix.axes.optimizations.offload.1: cannot run here" in result.err, result.err


HEAVY_CHECK = '''
from recipe_runner.api import Optimization, OptimizationSettings, Unsupported, hookimpl


def check(settings, context):
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise Unsupported("torch is not installed") from exc
    raise Unsupported("refused by a check that needs torch")


def light_check(settings, context):
    raise Unsupported("refused without torch")


@hookimpl
def register_optimizations():
    return [Optimization("heavy", OptimizationSettings, "layout", lambda pipe, settings, context: None, check=check),
            Optimization("light", OptimizationSettings, "layout", lambda pipe, settings, context: None, check=light_check)]
'''


def test_dry_run_never_imports_torch_for_a_check_and_says_which_check_waits(tmp_path):
    (tmp_path / "rr_heavy.py").write_text(HEAVY_CHECK)
    (tmp_path / "recipe.toml").write_text(ONE_IMAGE + "[optimizations]\nheavy = true\nlight = { required = false }\n")
    code = ("import sys\nfrom recipe_runner.cli.main import main\nc = main(['-p', 'rr_heavy', 'recipe.toml', '--dry-run'])\n"
            "print('HEAVY', sorted({'torch', 'diffusers', 'transformers'} & set(sys.modules)), c)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert "HEAVY [] 0" in proc.stdout, proc.stdout + proc.stderr
    assert "optimizations.heavy: its check imports torch: the run makes it before loading" in proc.stdout
    assert "warning: optimizations.light: skipped: refused without torch" in proc.stderr
    assert "torch is not installed" not in proc.stdout + proc.stderr


# --- 9. typing ------------------------------------------------------------------------------------

def test_the_package_is_marked_typed():
    assert (REPO / "runner" / "py.typed").is_file()
    assert "py.typed" in (REPO / "pyproject.toml").read_text()


@pytest.mark.slow
def test_mypy_strict_passes_on_the_example_plugin_after_the_documented_editable_install(tmp_path):
    """docs/plugins.md: ``pip install -e <checkout> --config-settings editable_mode=strict``, then
    ``mypy --strict`` on a plugin resolves ``recipe_runner.api`` (py.typed) and finds no error."""
    pytest.importorskip("mypy")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                          capture_output=True, text=True).stdout.strip()
    here = [p for p in sys.path if p.endswith("site-packages")]  # pydantic, pluggy: from this environment
    Path(site, "deps.pth").write_text("\n".join(here) + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                              "--no-build-isolation", "--config-settings", "editable_mode=strict", "-e", str(REPO)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    check = subprocess.run([sys.executable, "-m", "mypy", "--python-executable", str(python), "--strict",
                            "--cache-dir", str(tmp_path / "mypy-cache"), "--no-incremental",
                            str(REPO / "examples" / "recipe-runner-example" / "recipe_runner_example")],
                           cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert check.returncode == 0, check.stdout[-3000:]
    assert "Success: no issues found" in check.stdout


def test_unsupported_is_still_exported():  # the names the examples above use are the public API
    assert Unsupported.__module__ == "recipe_runner.recipe.optimizations"
    assert textwrap and Path
