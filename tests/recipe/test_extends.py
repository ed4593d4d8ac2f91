"""extends chains and --set, resolved into the manifest of a run; a cycle refused."""

from __future__ import annotations

import json
import textwrap


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
