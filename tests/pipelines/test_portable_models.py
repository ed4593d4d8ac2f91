"""Model paths that travel (#22 item 3): a local model folder is identified by its files, not its
path; ``~``, ``$VAR`` and ``${VAR}`` are expanded in ids; the per-machine alias map names a model
the same way on every machine; an id meant as a path that names no folder says so.

Runs that load a model are ``slow``; the rest are ``--dry-run``s and runs with nothing to do.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import manifest_of, tiny_recipe

PORTABLE = Path(__file__).parent / "portable"


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def images(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.glob("*.png") if p.name != "grid.png"}


@pytest.mark.slow
def test_same_bytes_at_another_path_is_the_same_model(recipe_runner_cli, recipe_runner_write_recipe,
                                                        recipe_runner_tiny_sd15, tmp_path, counter, monkeypatch):
    copy_model(recipe_runner_tiny_sd15, tmp_path / "home-a" / "models" / "sd15")
    second = copy_model(recipe_runner_tiny_sd15, tmp_path / "data" / "models" / "sd15")
    monkeypatch.setenv("HOME_A", str(tmp_path / "home-a"))
    recipe = recipe_runner_write_recipe(tiny_recipe(model_id="${HOME_A}/models/sd15"))
    out = tmp_path / "out"
    assert recipe_runner_cli(recipe, "--out", out).code == 0
    assert manifest_of(out / "recipe")["recipe"]["model"]["id"] == "${HOME_A}/models/sd15"  # as written
    assert recipe_runner_cli("--lock", recipe).code == 0
    made = images(out / "recipe")
    counter.calls.clear()

    moved = recipe_runner_cli(recipe, "--out", out, "--set", f"model.id={second}")
    assert moved.code == 0, moved.err
    assert "nothing to do" in moved.out + moved.err
    assert counter.calls == []  # no pipeline loaded, nothing generated
    assert images(out / "recipe") == made

    locked = recipe_runner_cli(recipe, "--out", out, "--locked", "--set", f"model.id={second}")
    assert locked.code == 0, locked.err
    assert "the same files" in locked.err and str(second) in locked.err

    # other bytes at the new path: drift under --locked (the file named), regenerated without it
    config = second / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()), indent=4))
    drift = recipe_runner_cli(recipe, "--out", out, "--locked", "--set", f"model.id={second}")
    assert drift.code == 2
    assert "files differ from the lock (changed: scheduler/scheduler_config.json)" in drift.err
    assert "Traceback" not in drift.err
    regenerated = recipe_runner_cli(recipe, "--out", out, "--set", f"model.id={second}")
    assert regenerated.code == 0, regenerated.err
    assert "1 regenerated" in regenerated.out + regenerated.err
    assert counter.calls == [[0]]


def test_legacy_key_folder_is_nothing_to_do(recipe_runner_cli, recipe_runner_tiny_sd15, tmp_path, counter):
    """A folder made before content identity (its manifest holds the keys of then, with the id as
    written): unchanged, its image untouched, nothing loaded."""
    root = tmp_path / "legacy"
    shutil.copytree(PORTABLE / "legacy", root)
    copy_model(recipe_runner_tiny_sd15, root / "model")
    folder = root / "out" / "legacy-local"
    before = images(folder)
    old_keys = [r["key"] for r in manifest_of(folder)["images"]]
    dry = recipe_runner_cli(root / "recipe.toml", "--out", root / "out", "--dry-run")
    assert dry.code == 0, dry.err
    assert "a run now      0 new, 0 to regenerate, 1 unchanged" in dry.out
    result = recipe_runner_cli(root / "recipe.toml", "--out", root / "out")
    assert result.code == 0, result.err
    assert "nothing to do" in result.out + result.err
    assert counter.calls == []
    assert images(folder) == before
    assert [r["key"] for r in manifest_of(folder)["images"]] == old_keys


def test_the_key_holds_a_local_folder_by_content(recipe_runner_tiny_sd15, tmp_path):
    """Two paths with the same bytes give one key; other bytes another; tiny: keys are unchanged
    (no legacy key for them)."""
    from recipe_runner.plugin_api.manager import load_plugins
    from recipe_runner.records.keys import job_keys
    from recipe_runner.running.prepare import Options, prepare

    plugins = load_plugins()
    a = copy_model(recipe_runner_tiny_sd15, tmp_path / "a")
    b = copy_model(recipe_runner_tiny_sd15, tmp_path / "b")
    c = copy_model(recipe_runner_tiny_sd15, tmp_path / "c")
    (c / "model_index.json").write_text((c / "model_index.json").read_text() + "\n")
    recipe = tmp_path / "r.toml"
    recipe.write_text(tiny_recipe())

    def keys(model_id: str):
        p = prepare(recipe, [f"model.id={model_id}"], plugins, Options(out=tmp_path / "out"))
        found = job_keys(p.variants, p.jobs, lambda v: "float32", {}, {})
        return found.of(p.jobs[0]), found.legacy(p.jobs[0])

    (key_a, legacy_a), (key_b, legacy_b), (key_c, _) = keys(str(a)), keys(str(b)), keys(str(c))
    assert key_a == key_b != key_c
    assert legacy_a != legacy_b  # the formula before: the path as written
    assert keys("tiny:sd15")[1] is None


# --- ~, $VAR, ${VAR} -----------------------------------------------------------------------------


@pytest.mark.parametrize("written", ["$TEAM_MODELS/sd15", "${TEAM_MODELS}/sd15", "~/sd15"])
def test_variables_and_home_are_expanded(recipe_runner_cli, recipe_runner_write_recipe, recipe_runner_tiny_sd15,
                                         tmp_path, monkeypatch, written):
    copy_model(recipe_runner_tiny_sd15, tmp_path / "team" / "sd15")
    monkeypatch.setenv("TEAM_MODELS", str(tmp_path / "team"))
    monkeypatch.setenv("HOME", str(tmp_path / "team"))
    recipe = recipe_runner_write_recipe(tiny_recipe(model_id=written))
    result = recipe_runner_cli(recipe, "--dry-run", "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert f"model path     {written} -> {tmp_path / 'team' / 'sd15'}" in result.out
    assert "StableDiffusionPipeline call parameters" in result.out  # the folder's model_index.json was read
    assert "waits for the model" not in result.out


def test_an_unset_variable_is_exit_2_at_its_key(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, monkeypatch):
    monkeypatch.delenv("TEAM_MODELS", raising=False)
    recipe = recipe_runner_write_recipe(tiny_recipe(model_id="${TEAM_MODELS}/sd15"))
    result = recipe_runner_cli(recipe, "--dry-run", "--out", tmp_path / "out")
    assert result.code == 2
    assert "recipe.toml:2: model.id: TEAM_MODELS is not set" in result.err
    assert "Traceback" not in result.err


def test_an_unset_variable_in_an_axis_value_and_a_component(recipe_runner_cli, recipe_runner_write_recipe,
                                                           tmp_path, monkeypatch):
    monkeypatch.delenv("OTHER_MODELS", raising=False)
    recipe = recipe_runner_write_recipe(tiny_recipe(
        matrix='[matrix.axes]\nmodel = ["tiny:sd15", "$OTHER_MODELS/sd15"]',
        tables='[components.vae]\nid = "${VAE_HOME}/vae"'))
    result = recipe_runner_cli(recipe, "--dry-run", "--out", tmp_path / "out")
    assert result.code == 2
    assert "matrix.axes.model.1: OTHER_MODELS is not set" in result.err
    assert "components.vae.id: VAE_HOME is not set" in result.err


# --- the alias map ---------------------------------------------------------------------------------


def write_aliases(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_alias_from_the_environment_variable(recipe_runner_cli, recipe_runner_write_recipe, recipe_runner_tiny_sd15,
                                             tmp_path, monkeypatch):
    copy_model(recipe_runner_tiny_sd15, tmp_path / "machine" / "models" / "sd15")
    aliases = write_aliases(tmp_path / "machine" / "models.toml", '[models]\n"team/sd15" = "./models/sd15"\n')
    monkeypatch.setenv("RECIPE_RUNNER_MODELS", str(aliases))
    recipe = recipe_runner_write_recipe(tiny_recipe(model_id="team/sd15"))
    result = recipe_runner_cli(recipe, "--dry-run", "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert f"team/sd15 -> {tmp_path / 'machine' / 'models' / 'sd15'} (alias from " in result.out
    assert "models.toml)" in result.out
    assert "waits for the model" not in result.out


def test_alias_from_the_xdg_config_folder(recipe_runner_cli, recipe_runner_write_recipe, recipe_runner_tiny_sd15,
                                          tmp_path, monkeypatch):
    model = copy_model(recipe_runner_tiny_sd15, tmp_path / "data" / "sd15")
    monkeypatch.delenv("RECIPE_RUNNER_MODELS", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("DATA", str(tmp_path / "data"))
    write_aliases(tmp_path / "config" / "recipe-runner" / "models.toml", '[models]\n"team/sd15" = "${DATA}/sd15"\n')
    recipe = recipe_runner_write_recipe(tiny_recipe(model_id="team/sd15"))
    result = recipe_runner_cli(recipe, "--dry-run", "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert f"team/sd15 -> {model} (alias from " in result.out


def test_two_machines_with_the_same_bytes_agree(recipe_runner_tiny_sd15, tmp_path, monkeypatch):
    """One recipe, ``team/sd15``: each machine's alias names its own path; the keys are equal."""
    from recipe_runner.plugin_api.manager import load_plugins
    from recipe_runner.records.keys import job_keys
    from recipe_runner.running.prepare import Options, prepare

    recipe = tmp_path / "r.toml"
    recipe.write_text(tiny_recipe(model_id="team/sd15"))
    found = []
    for machine in ("a", "b"):
        model = copy_model(recipe_runner_tiny_sd15, tmp_path / machine / "weights")
        aliases = write_aliases(tmp_path / machine / "models.toml", f'[models]\n"team/sd15" = "{model}"\n')
        monkeypatch.setenv("RECIPE_RUNNER_MODELS", str(aliases))
        p = prepare(recipe, [], load_plugins(), Options(out=tmp_path / "out"))
        found.append(job_keys(p.variants, p.jobs, lambda v: "float32", {}, {}).of(p.jobs[0]))
    assert found[0] == found[1]


@pytest.mark.parametrize(("text", "line", "message"), [
    ('[models]\n"team/sd15" = "/x"\n"team/sdxl" = \n', 3, "not valid TOML"),
    ('[models]\n"team/sd15" = "/x"\n"team/sdxl" = 3\n', 3, "models.team/sdxl: expected a folder path or a Hub id"),
    ('[models]\n"team/sd15" = "$NOT_SET_HERE/sd15"\n', 2, "models.team/sd15: NOT_SET_HERE is not set"),
    ('[modles]\n"team/sd15" = "/x"\n', 1, "the alias file has one table, [models]"),
])
def test_a_bad_alias_file_is_exit_2_with_its_line(recipe_runner_cli, recipe_runner_write_recipe, tmp_path,
                                                  monkeypatch, text, line, message):
    monkeypatch.delenv("NOT_SET_HERE", raising=False)
    aliases = write_aliases(tmp_path / "aliases" / "models.toml", text)
    monkeypatch.setenv("RECIPE_RUNNER_MODELS", str(aliases))
    recipe = recipe_runner_write_recipe(tiny_recipe(model_id="team/sd15"))
    result = recipe_runner_cli(recipe, "--dry-run", "--out", tmp_path / "out")
    assert result.code == 2
    assert f"models.toml:{line}: " in result.err and message in result.err
    assert "(for model.id in " in result.err and "recipe.toml:2)" in result.err  # the recipe key that asked
    assert "Traceback" not in result.err
    if "[modles]" in text:
        assert result.err.rstrip().endswith("(did you mean 'models'?)")


def test_an_alias_file_that_is_not_a_regular_file_is_refused_unread(recipe_runner_cli, recipe_runner_write_recipe,
                                                                     tmp_path, monkeypatch):
    import os

    fifo = tmp_path / "models.toml"
    os.mkfifo(fifo)  # reading it would block for ever
    monkeypatch.setenv("RECIPE_RUNNER_MODELS", str(fifo))
    recipe = recipe_runner_write_recipe(tiny_recipe(model_id="team/sd15"))
    result = recipe_runner_cli(recipe, "--dry-run", "--out", tmp_path / "out")
    assert result.code == 2
    assert "models.toml: unreadable model alias file:" in result.err and "FIFO" in result.err


def test_an_alias_to_a_missing_folder_names_the_alias_file(recipe_runner_cli, recipe_runner_write_recipe, tmp_path,
                                                           monkeypatch):
    aliases = write_aliases(tmp_path / "aliases" / "models.toml", '[models]\n"team/sd15" = "/nowhere/models/sd15"\n')
    monkeypatch.setenv("RECIPE_RUNNER_MODELS", str(aliases))
    recipe = recipe_runner_write_recipe(tiny_recipe(model_id="team/sd15"))
    result = recipe_runner_cli(recipe, "--dry-run", "--out", tmp_path / "out")
    assert result.code == 2
    assert "recipe.toml:2: model.id: the alias 'team/sd15' (" in result.err
    assert "models.toml:2) names /nowhere/models/sd15: no such folder" in result.err


# --- ids meant as paths --------------------------------------------------------------------------


def test_a_missing_folder_beside_the_recipe_is_no_such_folder(recipe_runner_cli, recipe_runner_write_recipe,
                                                              tmp_path, monkeypatch):
    recipe = recipe_runner_write_recipe(tiny_recipe(model_id="models/sd15"))
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    result = recipe_runner_cli(recipe, "--dry-run", "--out", tmp_path / "out")
    assert result.code == 2
    assert "model.id: no such folder: models/sd15 (or, if 'models/sd15' is a Hub id" in result.err
    assert "hf download" not in result.err


@pytest.mark.parametrize("model_id", ["models/v1/sd15", "my models/sd15"])
def test_an_id_the_hub_cannot_hold_is_no_such_folder(recipe_runner_cli, recipe_runner_write_recipe, tmp_path,
                                                     monkeypatch, model_id):
    recipe = recipe_runner_write_recipe(tiny_recipe(model_id=model_id))
    monkeypatch.chdir(tmp_path)
    result = recipe_runner_cli(recipe, "--dry-run", "--out", tmp_path / "out")
    assert result.code == 2
    assert f"model.id: no such folder: {model_id}" in result.err


def test_an_id_that_only_looks_like_a_hub_id_still_waits_for_the_hub(recipe_runner_cli, recipe_runner_write_recipe,
                                                                     tmp_path):
    recipe = recipe_runner_write_recipe(tiny_recipe(model_id="some-org/some-model"))
    result = recipe_runner_cli(recipe, "--dry-run", "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert "some-org/some-model is not in the local Hub cache yet" in result.out


@pytest.mark.slow
def test_a_legacy_folder_grown_by_a_seed_keeps_its_image_under_todays_key(recipe_runner_cli, recipe_runner_tiny_sd15,
                                                                          tmp_path, counter):
    """A run into a folder of before (a seed added): the old image is unchanged, its record now
    holds today's key, so later runs need no legacy key for it."""
    root = tmp_path / "legacy"
    shutil.copytree(PORTABLE / "legacy", root)
    copy_model(recipe_runner_tiny_sd15, root / "model")
    folder = root / "out" / "legacy-local"
    before = images(folder)
    old_key = manifest_of(folder)["images"][0]["key"]
    result = recipe_runner_cli(root / "recipe.toml", "--out", root / "out", "--set", "matrix.seeds=[0, 1]")
    assert result.code == 0, result.err
    assert "1 new, 0 regenerated, 1 unchanged" in result.out + result.err
    assert counter.calls == [[1]]
    name = next(iter(before))
    assert images(folder)[name] == before[name]
    record = next(r for r in manifest_of(folder)["images"] if r["file"] == name)
    assert record["key"] != old_key and len(record["key"]) == 64


def test_a_model_axis_value_and_a_component_are_held_by_content(recipe_runner_tiny_sd15, tmp_path):
    """A local folder as a model axis value or a component: moved with the same bytes, the same keys."""
    from recipe_runner.plugin_api.manager import load_plugins
    from recipe_runner.records.keys import job_keys
    from recipe_runner.running.prepare import Options, prepare

    def keys(where: str) -> list[str]:
        model = copy_model(recipe_runner_tiny_sd15, tmp_path / where / "sd15")
        recipe = tmp_path / f"{where}.toml"
        recipe.write_text(tiny_recipe(matrix=f'[matrix.axes]\nmodel = ["tiny:sd15", "{model}"]',
                                      tables=f'[components.vae]\nid = "{model}"\nsubfolder = "vae"'))
        p = prepare(recipe, [], load_plugins(), Options(out=tmp_path / "out"))
        found = job_keys(p.variants, p.jobs, lambda v: "float32", {}, {})
        return [found.of(job) for job in p.jobs]

    one, two = keys("one"), keys("two")
    assert len(one) == 2 and one == two
