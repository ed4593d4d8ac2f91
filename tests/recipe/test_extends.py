"""extends chains and --set, resolved into the manifest of a run; a cycle refused; an axis replaces
an inherited param."""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.conftest import image_files, tiny_recipe

BASE = tiny_recipe("a photo of a cat", seeds=1)


def test_extends_chain_of_three_plus_set_resolves_into_the_manifest_and_a_cycle_is_refused(recipe_runner_cli, tmp_path):
    (tmp_path / "bases").mkdir()
    (tmp_path / "bases" / "root.toml").write_text(textwrap.dedent('''
        description = "root"
        [model]
        id = "tiny:sd15"
        device = "cpu"
        [params]
        num_inference_steps = 3
        guidance_scale = 7.5
        [matrix]
        prompts = ["a", "b"]
        seeds = [1, 2]
    '''))
    (tmp_path / "mid.toml").write_text('extends = "bases/root.toml"\n[params]\nnum_inference_steps = 2\n'
                                       '[output]\ngrid = false\n')
    (tmp_path / "top.toml").write_text('extends = "mid.toml"\nname = "chained"\n[matrix]\nprompts = ["c"]\n')
    result = recipe_runner_cli(tmp_path / "top.toml", "--set", "params.guidance_scale=5", "--set", "matrix.seeds=1",
                 "--out", tmp_path / "out")
    assert result.code == 0, result.err
    manifest = json.loads((tmp_path / "out" / "chained" / "manifest.json").read_text())
    resolved = manifest["recipe"]
    assert resolved["name"] == "chained" and resolved["description"] == "root"
    assert resolved["params"] == {"num_inference_steps": 2, "guidance_scale": 5}
    assert resolved["matrix"]["prompts"] == ["c"] and resolved["matrix"]["seeds"] == [0]
    assert resolved["output"]["grid"] is False and not (tmp_path / "out" / "chained" / "grid.png").exists()
    assert [r["prompt"] for r in manifest["images"]] == ["c"]

    (tmp_path / "bases" / "root.toml").write_text('extends = "../top.toml"\n')
    result = recipe_runner_cli(tmp_path / "top.toml", "--out", tmp_path / "out")
    assert result.code == 2
    assert "extends cycle" in result.err and "top.toml -> " in result.err and "root.toml -> " in result.err


@pytest.mark.slow
def test_an_axis_replaces_an_inherited_param_through_extends_and_through_set(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    recipe_runner_write_recipe(BASE.replace("num_inference_steps = 2", "num_inference_steps = 2\nguidance_scale = 7.5"), "base.toml")
    sweep = recipe_runner_write_recipe('extends = "base.toml"\n[matrix.axes]\nguidance_scale = [6.0, 8.0]\n', "sweep.toml")
    for recipe, sets, expected in ((sweep, [], [6.0, 8.0]),
                                   (tmp_path / "base.toml", ["--set", "matrix.axes.guidance_scale=[5.0,7.0]"], [5.0, 7.0])):
        out = tmp_path / f"out-{recipe.stem}"
        result = recipe_runner_cli(recipe, "--out", out, *sets)
        assert result.code == 0, result.err
        folder = out / recipe.stem
        manifest = json.loads((folder / "manifest.json").read_text())
        assert "guidance_scale" not in manifest["recipe"]["params"]
        assert manifest["recipe"]["matrix"]["axes"]["guidance_scale"] == expected
        assert [r["params"]["guidance_scale"] for r in manifest["images"]] == expected
        from recipe_runner.records.outputs import read_embedded

        embedded = [json.loads(read_embedded(p)["job"])["params"]["guidance_scale"] for p in image_files(folder)]
        assert sorted(embedded) == expected  # files are named by job, not listed in matrix order
    both = recipe_runner_write_recipe(BASE.replace("num_inference_steps = 2", "num_inference_steps = 2\nguidance_scale = 7.5")
                        + "[matrix.axes]\nguidance_scale = [6.0]\n", "both.toml")
    assert "a parameter is either fixed or an axis" in recipe_runner_cli(both, "--dry-run").err
