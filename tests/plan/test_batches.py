"""Batch boundaries: inputs of different sizes never share a batch, negative prompts do, and a full
batch of templated negative prompts runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import tiny_recipe

BASE = tiny_recipe("a photo of a cat", seeds=1)


@pytest.mark.slow
def test_inputs_of_different_sizes_never_share_a_batch(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    for name, (w, h) in (("wide.png", (96, 64)), ("square.png", (64, 64)), ("square2.png", (64, 64))):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / name)
    text = BASE.replace('device = "cpu"', 'device = "cpu"\ntask = "image-to-image"').replace(
        "seeds = 1", 'seeds = 1\nimages = ["square.png", "wide.png", "square2.png"]')
    sizes = {}
    for batch in (1, 4):
        out = tmp_path / f"out{batch}"
        result = recipe_runner_cli(recipe_runner_write_recipe(text + f"[run]\nbatch_size = {batch}\n"), "--out", out)
        assert result.code == 0, result.err
        manifest = json.loads((out / "recipe" / "manifest.json").read_text())
        assert [r["batch_jobs"] for r in manifest["images"]][1] == [1]  # the wide one alone
        sizes[batch] = [Image.open(out / "recipe" / r["file"]).size for r in manifest["images"]]
    assert sizes[1] == sizes[4] == [(64, 64), (96, 64), (64, 64)]


def test_jobs_that_differ_only_in_negative_prompt_share_a_batch():
    from recipe_runner.plan.batches import plan
    from recipe_runner.plan.matrix import Job

    jobs = [Job(i, f"a {w}", s, vars={"w": w}, params={"negative_prompt": f"no {w}", "num_inference_steps": 2})
            for i, (w, s) in enumerate((w, s) for w in ("cat", "dog") for s in range(4))]
    assert [b.size for b in plan(jobs, 4)] == [4, 4]
    assert [b.size for b in plan(jobs, 8)] == [8]


def test_negative_prompt_templates_in_a_full_batch_give_the_same_pixels(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    text = BASE.replace("num_inference_steps = 2", 'num_inference_steps = 2\nnegative_prompt = "blurry {who}"').replace(
        'prompts = ["a photo of a cat"]', 'prompts = ["a photo of {who}"]').replace("seeds = 1", "seeds = 2") + \
        '[matrix.vars]\nwho = ["a cat", "a dog"]\n'
    out = tmp_path / "out"
    assert recipe_runner_cli(recipe_runner_write_recipe(text + "[run]\nbatch_size = 4\n"), "--out", out).code == 0
    manifest = json.loads((out / "recipe" / "manifest.json").read_text())
    assert {r["batch_size"] for r in manifest["images"]} == {4}
