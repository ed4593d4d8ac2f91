"""Bad values never run: values checked against what the pipeline declares before the first image
of the first recipe (every problem listed at once), sizes bounded, the checks that wait for the model
named by the dry run, an offline Hub said fast, the diffusers class index remembered."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import run_subprocess, tiny_recipe

BASE = tiny_recipe("a photo of a cat", seeds=1)


def test_two_recipes_the_second_misspelled_nothing_written_for_the_first(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    first = recipe_runner_write_recipe(BASE, "first.toml")
    late = recipe_runner_write_recipe(BASE.replace("num_inference_steps = 2", "num_inference_steps = 2\nguidance_scael = 7.0"), "late.toml")
    out = tmp_path / "out"
    result = recipe_runner_cli(first, late, "--out", out)
    assert result.code == 2
    assert "late.toml:6: params.guidance_scael: not a parameter of StableDiffusionPipeline" in result.err
    assert "did you mean 'guidance_scale'?" in result.err and "Traceback" not in result.err
    assert not out.exists()


def test_a_recipe_with_five_problems_reports_five(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    recipe = recipe_runner_write_recipe(BASE.replace("num_inference_steps = 2", 'num_inference_steps = "many"\nguidance_scael = 7.0\n'
                                       "height = 70\nguidance_scale = nan")
                          + '[scheduler]\nname = "EulerDiscreteSchedular"\n')
    result = recipe_runner_cli(recipe, "--dry-run")
    assert result.code == 2
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 5, result.err
    for key in ("params.num_inference_steps", "params.guidance_scael", "params.height", "params.guidance_scale",
                "scheduler.name"):
        assert key in result.err


def test_height_ten_million_is_refused_in_well_under_a_second(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    recipe = recipe_runner_write_recipe(BASE.replace("num_inference_steps = 2", "num_inference_steps = 2\nheight = 10000000"))
    recipe_runner_cli(recipe_runner_write_recipe(BASE, "warm.toml"), "--dry-run")  # plugins and modules imported once
    start = time.perf_counter()
    result = recipe_runner_cli(recipe, "--out", tmp_path / "out")
    seconds = time.perf_counter() - start
    assert result.code == 2 and "params.height" in result.err and "MAX_IMAGE_PIXELS" in result.err
    assert seconds < 0.5, seconds
    assert not (tmp_path / "out").exists()


def test_a_batch_that_cannot_fit_in_memory_is_refused():
    from recipe_runner.base.errors import Problem
    from recipe_runner.plan.checks import size_problems
    from recipe_runner.plan.matrix import Job

    jobs = [Job(i, "x", i, params={"height": 4096, "width": 4096}) for i in range(64)]
    found = size_problems(jobs, lambda k, m, h=None: Problem(m, key=k, hint=h), 64, None,
                          {"height": "params.height", "width": "params.width"}, memory=8 << 30)
    assert len(found) == 1 and "a batch of 64 images of height 4096 x width 4096" in found[0].message
    assert "lower height/width or run.batch_size" in str(found[0])


def test_the_dry_run_says_which_checks_wait_for_the_model(recipe_runner_cli, recipe_runner_write_recipe):
    result = recipe_runner_cli(recipe_runner_write_recipe(BASE), "--dry-run")
    assert result.code == 0
    assert "checks         checked now:" in result.out and "StableDiffusionPipeline call parameters" in result.out
    assert "after loading: scheduler compatibility" in result.out
    hub = recipe_runner_cli(recipe_runner_write_recipe(BASE.replace("tiny:sd15", "someorg/not-cached-model"), "hub.toml"), "--dry-run")
    assert "waits for the model (someorg/not-cached-model is not in the local Hub cache yet)" in hub.out


@pytest.mark.slow
def test_offline_hub_says_so_fast(tmp_path):
    recipe = tmp_path / "hub.toml"
    recipe.write_text(BASE.replace("tiny:sd15", "someorg/not-cached-model"))
    for env in ({"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}):
        start = time.perf_counter()
        result = run_subprocess(recipe, "--out", tmp_path / "out", cwd=tmp_path,
                                env={"HF_HOME": str(tmp_path / "hf"), **env}, timeout=60)
        seconds = time.perf_counter() - start
        assert result.code == 2, result.err
        assert "not in the local Hub cache" in result.err and "hf download someorg/not-cached-model" in result.err
        assert seconds < 10, seconds
    assert "cannot be reached" in result.err and not (tmp_path / "out").exists()


def test_the_diffusers_class_index_is_remembered_per_installed_diffusers(tmp_path, monkeypatch):
    """Reading call parameters without importing diffusers scans its source once (about 0.3 s);
    later dry runs read the remembered index from the cache folder instead."""

    from recipe_runner.pipelines import info as pipeline_info

    monkeypatch.setenv("RECIPE_RUNNER_CACHE", str(tmp_path / "cache"))
    pipeline_info._classes_in.cache_clear()
    scanned = pipeline_info._classes_in("schedulers")
    assert scanned["DPMSolverMultistepScheduler"].name == "scheduling_dpmsolver_multistep.py"
    (remembered,) = (tmp_path / "cache" / "diffusers-source").glob("schedulers-*.json")
    pipeline_info._classes_in.cache_clear()

    def no_scan(self, pattern):
        raise AssertionError("scanned again")

    monkeypatch.setattr(Path, "rglob", no_scan)
    assert pipeline_info._classes_in("schedulers") == scanned
    remembered.write_text("not json")  # a broken index is scanned again, not trusted
    pipeline_info._classes_in.cache_clear()
    monkeypatch.undo()
    monkeypatch.setenv("RECIPE_RUNNER_CACHE", str(tmp_path / "cache"))
    assert pipeline_info._classes_in("schedulers") == scanned
    pipeline_info._classes_in.cache_clear()
