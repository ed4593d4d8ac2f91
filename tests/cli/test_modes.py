"""One mode per invocation, and one prepare path that every mode takes (the safety policy and the
torch-free checks included)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY_RECIPE

TINY = TINY_RECIPE

# (arguments, the two flags the message must name), RECIPE standing for a valid recipe file
INCOMPATIBLE = [
    (["--lock", "--dry-run", "RECIPE"], ("--dry-run", "--lock")),
    (["--dry-run", "--reproduce", "x.png"], ("--dry-run", "--reproduce")),
    (["--schema", "--list-plugins"], ("--list-plugins", "--schema")),
    (["--schema", "--reproduce", "x.png"], ("--schema", "--reproduce")),
    (["--lock", "--locked", "RECIPE"], ("--locked", "--lock")),
    (["--schema", "--set", "params.x=1"], ("--set", "--schema")),
    (["--list-plugins", "--out", "somewhere"], ("--out", "--list-plugins")),
    (["--reproduce", "x.png", "--set", "params.x=1"], ("--set", "--reproduce")),
    (["--compare", "a", "b", "--locked"], ("--locked", "--compare")),  # --reproduce --locked: allowed (#22)
    (["--lock", "--out", "somewhere", "RECIPE"], ("--out", "--lock")),
    (["--list-plugins", "--no-progress"], ("--no-progress", "--list-plugins")),
    (["--dry-run", "--force", "RECIPE"], ("--force", "--dry-run")),
    (["--schema", "--allow-pickle"], ("--allow-pickle", "--schema")),
]


@pytest.mark.parametrize(("args", "flags"), INCOMPATIBLE, ids=[" ".join(a) for a, _ in INCOMPATIBLE])
def test_a_combination_that_makes_no_sense_is_refused_naming_both_flags(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, args, flags):
    recipe = recipe_runner_write_recipe(TINY)
    result = recipe_runner_cli(*[recipe if a == "RECIPE" else a for a in args])
    assert result.code == 2, result
    assert "Traceback" not in result.err and result.out == ""
    first, second = flags
    assert first in result.err and second in result.err, result.err
    assert not (tmp_path / "somewhere").exists() and not list(tmp_path.glob("*.lock"))


def test_modes_that_take_no_recipe_refuse_one(recipe_runner_cli, recipe_runner_write_recipe):
    recipe = recipe_runner_write_recipe(TINY)
    for mode in ("--list-plugins", "--schema"):
        result = recipe_runner_cli(mode, recipe)
        assert result.code == 2 and f"{mode} takes no recipes" in result.err, result.err
    result = recipe_runner_cli("--reproduce", "x.png", recipe)
    assert result.code == 2 and "--reproduce takes no recipes" in result.err


def test_a_recipe_mode_without_a_recipe_says_how_to_call_it(recipe_runner_cli):
    assert "no recipe given: recipe-run --lock RECIPE" in recipe_runner_cli("--lock").err
    assert "no recipe given: recipe-run RECIPE" in recipe_runner_cli().err


def _image_with_recipe(path, recipe: dict, job: dict) -> None:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt("recipe", json.dumps(recipe))
    info.add_itxt("job", json.dumps(job))
    Image.new("RGB", (64, 64)).save(path, pnginfo=info)


@pytest.mark.parametrize(("revision", "flags", "expected"), [
    (None, [], "model.custom_pipeline: runs code from the model's repository: refused"),
    ("main", ["--trust-remote-code"], "model.revision: remote code needs model.revision pinned to a commit"),
])
def test_reproduce_applies_the_remote_code_policy_to_an_embedded_recipe(recipe_runner_cli, tmp_path, revision, flags, expected):
    """The image's own recipe goes through the same prepare path as a recipe file: an embedded
    custom pipeline needs --trust-remote-code and a pinned commit, and nothing is loaded."""
    model = {"id": "tiny:sd15", "custom_pipeline": "lpw_stable_diffusion"}
    if revision:
        model["revision"] = revision
    image = tmp_path / "planted.png"
    _image_with_recipe(image, {"name": "planted", "model": model, "matrix": {"prompts": ["a cat"]}},
                       {"index": 0, "prompt": "a cat", "seed": 0})
    result = recipe_runner_cli("--reproduce", image, "--out", tmp_path / "scratch", *flags)
    assert result.code == 2, result
    assert expected in result.err, result.err
    assert not (tmp_path / "scratch" / "planted").exists()


@pytest.mark.parametrize(("model", "expected"), [
    ('"tiny:sd99"', "model.id: unknown tiny pipeline 'tiny:sd99'"),
    ('"./models/nothing-here"', "model.id: no such folder"),
    ('"./pickled"', "holds pickled weights only (diffusion_pytorch_model.bin)"),
])
def test_dry_run_refuses_what_a_run_would_refuse_before_loading(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, model, expected):
    pickled = tmp_path / "pickled"
    (pickled / "unet").mkdir(parents=True)
    (pickled / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                          "unet": ["diffusers", "UNet2DConditionModel"]}))
    (pickled / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not really a pickle")
    recipe = recipe_runner_write_recipe(TINY.replace('"tiny:sd15"', model))
    for mode in (["--dry-run"], []):
        result = recipe_runner_cli(*mode, recipe, "--out", tmp_path / "out")
        assert result.code == 2, result
        assert expected in result.err, result.err
        assert "recipe.toml:2: model.id" in result.err
    assert not (tmp_path / "out").exists()


def test_two_recipes_writing_to_one_folder_are_refused(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    first = recipe_runner_write_recipe('name = "same"\n' + TINY, "a.toml")
    second = recipe_runner_write_recipe('name = "same"\n' + TINY, "b.toml")
    for mode in (["--dry-run"], []):
        result = recipe_runner_cli(*mode, first, second, "--out", tmp_path / "out")
        assert result.code == 2 and "several recipes write to the same output folder 'same'" in result.err
    assert not (tmp_path / "out").exists()
