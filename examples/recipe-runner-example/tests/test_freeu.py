"""The example plugin's own tests: they use recipe-runner's pytest plugin (recipe_runner.testing), which
provides the tiny pipelines, ``recipe_runner_register_plugin``, ``recipe_runner_cli`` and
``recipe_runner_write_recipe``; no GPU, no download."""

import json

import recipe_runner_example

RECIPE = """
[model]
id = "tiny:sd15"
device = "cpu"
[params]
num_inference_steps = 2
[matrix]
prompts = ["a cat on a roof"]
seeds = [0]
"""


def run(cli, write_recipe, tmp_path, name, optimizations=""):
    recipe = write_recipe(RECIPE + optimizations, f"{name}.toml")
    result = cli(recipe, "--out", tmp_path)
    assert result.code == 0, result.err
    folder = tmp_path / name
    return folder, json.loads((folder / "manifest.json").read_text())


def test_freeu_changes_the_image_and_is_recorded(recipe_runner_register_plugin, recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    recipe_runner_register_plugin(recipe_runner_example, "freeu-under-test")
    plain, _ = run(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, "plain")
    folder, manifest = run(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, "freeu", "[optimizations]\nfreeu = { b1 = 1.2 }\n")
    assert manifest["optimizations"]["freeu"]["status"] == "applied"
    assert manifest["optimizations"]["freeu"]["settings"]["b1"] == 1.2
    image = manifest["images"][0]["file"]
    assert (folder / image).read_bytes() != (plain / image).read_bytes()


def test_a_bad_setting_is_exit_2_with_the_key(recipe_runner_register_plugin, recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    recipe_runner_register_plugin(recipe_runner_example, "freeu-under-test")
    recipe = recipe_runner_write_recipe(RECIPE + "[optimizations]\nfreeu = { b3 = 1.0 }\n")
    result = recipe_runner_cli(recipe, "--out", tmp_path, "--dry-run")
    assert result.code == 2
    assert "optimizations.freeu.b3: unknown key" in result.err
