"""Scheduler labels and A1111 sampler names, in the dry run, the manifest's jobs and each image's
parameters text."""

from __future__ import annotations

import json

import pytest

from tests.conftest import image_files, tiny_recipe

BASE = tiny_recipe("a photo of a cat", seeds=1)


def test_scheduler_labels_and_a1111_sampler_names(recipe_runner_cli, recipe_runner_write_recipe):
    from recipe_runner.plan.labels import a1111_sampler, scheduler_label

    karras = {"name": "DPMSolverMultistepScheduler", "options": {"use_karras_sigmas": True}}
    assert scheduler_label(karras) == "DPMSolverMultistepScheduler (use_karras_sigmas=true)"
    assert a1111_sampler(karras) == "DPM++ 2M Karras"
    assert a1111_sampler({"name": "EulerAncestralDiscreteScheduler", "options": {}}) == "Euler a"
    assert a1111_sampler(None, "PNDMScheduler") == "PLMS"
    assert a1111_sampler({"name": "EulerDiscreteScheduler", "options": {"timestep_spacing": "trailing"}}) == \
        "EulerDiscreteScheduler (timestep_spacing=trailing)"
    recipe = recipe_runner_write_recipe(BASE + '[scheduler]\nname = "DPMSolverMultistepScheduler"\noptions = { use_karras_sigmas = true }\n')
    assert "scheduler      DPMSolverMultistepScheduler (use_karras_sigmas=true)" in recipe_runner_cli(recipe, "--dry-run").out


@pytest.mark.slow
def test_a1111_text_and_manifest_job_carry_the_scheduler_options(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    from recipe_runner.records.outputs import read_embedded

    recipe = recipe_runner_write_recipe(BASE + '[scheduler]\nname = "DPMSolverMultistepScheduler"\noptions = { use_karras_sigmas = true }\n')
    out = tmp_path / "out"
    assert recipe_runner_cli(recipe, "--out", out).code == 0
    manifest = json.loads((out / "recipe" / "manifest.json").read_text())
    assert manifest["images"][0]["scheduler"] == "DPMSolverMultistepScheduler (use_karras_sigmas=true)"
    assert "Sampler: DPM++ 2M Karras" in read_embedded(image_files(out / "recipe")[0])["parameters"]
