"""Bad values never run (issue 12): values checked against what the pipeline declares before the
first image of the first recipe, sizes bounded, broken plugins named and recorded, inherited
params replaceable by axes, and the small ones (labels, closed pipes, offline Hub, batching)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, image_files, run_subprocess, tiny_recipe

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
    from recipe_runner.plan.matrix import Job
    from recipe_runner.recipe.checks import size_problems

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


def _broken_entry_point(monkeypatch) -> None:
    """The plugin manager (only) sees one more entry point, whose module does not exist."""
    import types

    from recipe_runner.plugin_api import manager as plugin_manager

    def entry_points(**kwargs):
        found = list(metadata.entry_points(**kwargs))
        if kwargs.get("group") == "recipe_runner":
            found.append(metadata.EntryPoint("broken_watermark", "no_such_module_for_tests:plugin", "recipe_runner"))
        return found

    fake = types.SimpleNamespace(**{k: getattr(metadata, k) for k in dir(metadata) if not k.startswith("__")})
    fake.entry_points = entry_points
    monkeypatch.setattr(plugin_manager, "metadata", fake)


@pytest.mark.slow
def test_a_failed_entry_point_plugin_is_named_in_stderr_and_the_manifest(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, monkeypatch):
    _broken_entry_point(monkeypatch)
    out = tmp_path / "out"
    result = recipe_runner_cli(recipe_runner_write_recipe(BASE), "--out", out)
    assert result.code == 0, result.err
    warnings = [line for line in result.err.splitlines() if "broken_watermark" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: plugin 'broken_watermark'")
    manifest = json.loads((out / "recipe" / "manifest.json").read_text())
    record = next(p for p in manifest["environment"]["plugins"] if p["name"] == "broken_watermark")
    assert record["source"] == "entry point" and "ModuleNotFoundError" in record["error"]
    strict = recipe_runner_cli(recipe_runner_write_recipe(BASE), "--out", tmp_path / "strict", "--strict-plugins")
    assert strict.code == 2 and "broken_watermark" in strict.err and not (tmp_path / "strict").exists()


@pytest.mark.slow
def test_p_finds_a_plugin_in_the_current_folder_records_it_and_reproduce_names_it_missing(
        recipe_runner_cli, recipe_runner_write_recipe, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.chdir(tmp_path)
    (tmp_path / "myplug.py").write_text('__version__ = "1.2"\n')
    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_root))
    out = tmp_path / "out"
    result = recipe_runner_cli(recipe_runner_write_recipe(BASE), "--out", out, "-p", "myplug")
    assert result.code == 0, result.err
    manifest = json.loads((out / "recipe" / "manifest.json").read_text())
    assert {"name": "myplug", "version": "1.2", "source": "-p"}.items() <= next(
        p for p in manifest["environment"]["plugins"] if p["name"] == "myplug").items()
    image = image_files(out / "recipe")[0]
    from recipe_runner.records.outputs import read_embedded

    assert any(p["name"] == "myplug" for p in json.loads(read_embedded(image)["environment"])["plugins"])
    sys.modules.pop("myplug", None)
    again = recipe_runner_cli("--reproduce", image)
    assert again.code == 0, again.err
    assert "pixel-identical" in again.out and "myplug 1.2 (-p): not loaded now" in again.out
    assert list(scratch_root.iterdir()) == []  # no recipe-run-reproduce-* folder left behind


def test_a_broken_p_plugin_is_listed_as_failed_and_refused_by_a_run(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "badplug.py").write_text("raise RuntimeError('half-written plugin')\n")
    listed = recipe_runner_cli("--list-plugins", "-p", "badplug")
    assert listed.code == 0 and "badplug  [-p" in listed.out and "failed to load: RuntimeError: half-written plugin" in listed.out
    run = recipe_runner_cli(recipe_runner_write_recipe(BASE), "--out", tmp_path / "out", "-p", "badplug")
    assert run.code == 2 and "cannot import plugin module 'badplug'" in run.err and "Traceback" not in run.err


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


@pytest.mark.slow
def test_a_closed_pipe_ends_quietly(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(BASE)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "recipe_runner", "--dry-run", *[str(recipe)] * 1] +
                            [str(tmp_path / f"r{i}.toml") for i in range(400)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    for i in range(400):
        (tmp_path / f"r{i}.toml").write_text(BASE)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert first and proc.returncode in (0, 1)
    assert "BrokenPipe" not in err and "Traceback" not in err and "error" not in err


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


def test_help_names_the_lock_file_as_written(recipe_runner_cli, capsys):
    from recipe_runner.cli.main import parser
    from recipe_runner.pipelines.lock import lock_path

    text = parser().format_help()
    assert "recipes/warrior.lock" in text and lock_path(Path("recipes/warrior.toml")) == Path("recipes/warrior.lock")


def test_readme_install_claim_is_honest():
    readme = (REPO / "README.md").read_text()
    assert "https://download.pytorch.org/whl/cpu" in readme
    assert "pip install torch==2.13.0 && pip install -e ." in readme  # the two commands still work here


def test_the_diffusers_class_index_is_remembered_per_installed_diffusers(tmp_path, monkeypatch):
    """Reading call parameters without importing diffusers scans its source once (about 0.3 s);
    later dry runs read the remembered index from the cache folder instead."""
    from pathlib import Path

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
