"""Matrices end to end: vars x axes x seeds, zip mode with a scheduler axis, each job's record."""

from __future__ import annotations

import json

from recipe_runner import hookimpl
from recipe_runner.plugin_api import manager as plugins
from tests.conftest import image_files


def test_vars_times_axes_times_seeds_gives_eight_images_with_their_prompt_vars_and_params(matrix_run):
    manifest = json.loads((matrix_run / "manifest.json").read_text())
    images = manifest["images"]
    assert len(images) == 8 and len(image_files(matrix_run)) == 8
    expected = [(g, who, s) for g in (6.0, 8.0) for who in ("an old chief", "a young chief") for s in (0, 1)]
    got = [(r["params"]["guidance_scale"], r["vars"]["who"], r["seed"]) for r in images]
    assert got == expected
    for record in images:
        who = record["vars"]["who"]
        assert record["prompt"] == f"portrait photo of {who}"
        assert record["params"]["negative_prompt"] == f"blurry {who}"
        assert record["params"]["num_inference_steps"] == 2
        assert record["status"] == "done"
    assert [r["batch"] for r in images] == [0, 0, 0, 0, 1, 1, 1, 1]  # guidance splits batches; negative prompts do not
    # the manifest holds the resolved recipe, the template and not the renderings
    assert manifest["recipe"]["matrix"]["prompts"] == ["portrait photo of {who}"]


def test_zip_mode_and_a_scheduler_axis_end_to_end(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    seen = []

    class SchedulerProbe:
        @hookimpl
        def before_batch(self, pipe, batch, call_kwargs):
            seen.append((type(pipe.scheduler).__name__, call_kwargs["guidance_scale"], len(batch.jobs)))

    probe = SchedulerProbe()
    recipe = recipe_runner_write_recipe('''
        [model]
        id = "tiny:sd15"
        device = "cpu"
        [params]
        num_inference_steps = 2
        [matrix]
        mode = "zip"
        prompts = ["{what} at dawn", "{what} at dusk"]
        seeds = [7, 8]
        [matrix.vars]
        what = ["a fox", "a crow"]
        [matrix.axes]
        guidance_scale = [5.0, 9.0]
        scheduler = ["EulerDiscreteScheduler", { name = "DPMSolverMultistepScheduler", options = { use_karras_sigmas = true } }]
        [run]
        batch_size = 2
    ''', "zipped.toml")
    plugins.register(probe)
    try:
        result = recipe_runner_cli(recipe, "--out", tmp_path / "out")
    finally:
        plugins.unregister(probe)
    assert result.code == 0, result.err
    images = json.loads((tmp_path / "out" / "zipped" / "manifest.json").read_text())["images"]
    assert [(r["prompt"], r["seed"], r["vars"], r["params"]["guidance_scale"], r["scheduler"]) for r in images] == [
        ("a fox at dawn", 7, {"what": "a fox"}, 5.0, "EulerDiscreteScheduler"),
        ("a crow at dusk", 8, {"what": "a crow"}, 9.0, "DPMSolverMultistepScheduler (use_karras_sigmas=true)")]
    assert seen == [("EulerDiscreteScheduler", 5.0, 1), ("DPMSolverMultistepScheduler", 9.0, 1)]
