"""End to end on the tiny SD-1.5-layout pipeline: reproducibility promises, manifest, outputs."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from recipe_runner import hookimpl
from recipe_runner.plugin_api import manager as plugins
from tests.conftest import REPO, image_files, pixels, run_subprocess, tiny_recipe

MATRIX = tiny_recipe("portrait photo of a old warrior chief", "a cat on a roof", "pixel-art coffee shop", seeds=[0, 1],
                     steps=3, params="guidance_scale = 7.5", tables="[run]\nbatch_size = {batch_size}")


class LatentCapture:
    """A test plugin: records the starting latents of every image, by job index."""

    def __init__(self):
        self.latents: dict[int, np.ndarray] = {}
        self._batch = None

    @hookimpl
    def before_batch(self, pipe, batch, call_kwargs):
        self._batch = batch

    @hookimpl
    def pipeline_ready(self, pipe, recipe, context):
        original = pipe.prepare_latents

        def prepare_latents(*args, **kwargs):
            latents = original(*args, **kwargs)
            for job, latent in zip(self._batch.jobs, latents):
                self.latents[job.index] = latent.detach().cpu().numpy().copy()
            return latents

        pipe.prepare_latents = prepare_latents


@pytest.fixture
def capture():
    plugin = LatentCapture()
    plugins.register(plugin, "latent-capture")
    yield plugin
    plugins.unregister(plugin)


def run_matrix(cli, write_recipe, tmp_path, batch_size, name):
    recipe = write_recipe(MATRIX.format(batch_size=batch_size), f"{name}.toml")
    result = cli(recipe, "--out", tmp_path / "out")
    assert result.code == 0, result.err
    return tmp_path / "out" / name


@pytest.mark.slow
def test_same_recipe_twice_gives_pixel_identical_images(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    first = run_matrix(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, 2, "first")
    second = run_matrix(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, 2, "second")
    files = image_files(first)
    assert len(files) == 6
    for a in files:
        assert np.array_equal(pixels(a), pixels(second / a.name)), a.name


@pytest.mark.slow
def test_starting_noise_is_bitwise_independent_of_batch_position_and_matrix(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, capture):
    run_matrix(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, 1, "b1")
    by_one = dict(capture.latents)
    capture.latents.clear()
    run_matrix(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, 4, "b4")  # batches [0..3], [4, 5]: other positions
    by_four = dict(capture.latents)
    capture.latents.clear()
    alone = recipe_runner_write_recipe(MATRIX.format(batch_size=1).replace("seeds = [0, 1]", "seeds = [1]")
                         .replace('"portrait photo of a old warrior chief", "a cat on a roof", ', ""), "alone.toml")
    assert recipe_runner_cli(alone, "--out", tmp_path / "out").code == 0
    assert len(by_one) == len(by_four) == 6
    for index in by_one:
        assert np.array_equal(by_one[index], by_four[index]), index
    # job 5 (third prompt, seed 1) of the matrix is job 0 of the one-job recipe
    assert np.array_equal(by_one[5], capture.latents[0])
    # ... and depends on the seed only: the same seed gives the same noise for another prompt
    assert np.array_equal(by_one[1], by_one[3]) and not np.array_equal(by_one[0], by_one[1])


@pytest.mark.slow
def test_across_batch_sizes_images_agree_to_float_rounding(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    one = run_matrix(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, 1, "one")
    four = run_matrix(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, 4, "four")
    worst_level, worst_fraction = 0, 0.0
    for a in image_files(one):
        diff = np.abs(pixels(a).astype(int) - pixels(four / a.name).astype(int))
        worst_level = max(worst_level, int(diff.max()))
        worst_fraction = max(worst_fraction, float((diff > 0).mean()))
    assert worst_level <= 2, worst_level  # documented bound: at most 2 levels ...
    assert worst_fraction < 0.005, worst_fraction  # ... on fewer than 0.5% of pixels


@pytest.mark.slow
def test_manifest_lists_every_job_in_matrix_order_with_hash_batch_and_environment(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    folder = run_matrix(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, 4, "manifested")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["recipe"]["model"]["id"] == "tiny:sd15"
    assert manifest["recipe"]["params"] == {"num_inference_steps": 3, "guidance_scale": 7.5}
    assert manifest["recipe"]["run"]["batch_size"] == 4
    env = manifest["environment"]
    for key in ("torch", "diffusers", "device", "dtype", "threads", "device_name"):
        assert env[key] not in (None, ""), key
    assert env["device"] == "cpu" and env["dtype"] == "float32"
    images = manifest["images"]
    assert [r["index"] for r in images] == list(range(6))
    assert re.fullmatch(r"portrait-photo-of-a-old-warrior-chief-s0-[0-9a-f]{8}\.png", images[0]["file"])
    assert [(r["prompt"][:5], r["seed"]) for r in images] == [
        ("portr", 0), ("portr", 1), ("a cat", 0), ("a cat", 1), ("pixel", 0), ("pixel", 1)]
    assert [r["batch"] for r in images] == [0, 0, 0, 0, 1, 1]
    assert [r["batch_size"] for r in images] == [4, 4, 4, 4, 2, 2]
    for record in images:
        data = (folder / record["file"]).read_bytes()
        assert record["sha256"] == hashlib.sha256(data).hexdigest()
        assert record["status"] == "done" and record["params"]["num_inference_steps"] == 3
        assert record["vars"] == {} and record["image"] is None
    assert not list(folder.glob(".*tmp*")), "no temporary file is left behind"
    assert (folder / "grid.png").is_file()


def test_images_carry_the_recipe_and_job(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    from recipe_runner.records.outputs import read_embedded

    folder = run_matrix(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, 2, "carried")
    fourth = json.loads((folder / "manifest.json").read_text())["images"][3]["file"]
    text = read_embedded(folder / fourth)
    assert json.loads(text["recipe"])["matrix"]["seeds"] == [0, 1]
    job = json.loads(text["job"])
    assert job["seed"] == 1 and job["prompt"] == "a cat on a roof" and job["batch"] == 1
    assert "Seed: 1" in text["parameters"] and "Steps: 3" in text["parameters"]


@pytest.mark.slow
def test_float16_on_cpu_falls_back_with_one_warning(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    recipe = recipe_runner_write_recipe(MATRIX.format(batch_size=6).replace('device = "cpu"', 'device = "cpu"\ndtype = "float16"'),
                          "half.toml")
    result = recipe_runner_cli(recipe, "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert result.err.count("warning:") == 1 and "float32 instead" in result.err
    manifest = json.loads((tmp_path / "out" / "half" / "manifest.json").read_text())
    assert manifest["environment"]["dtype"] == "float32"
    assert manifest["recipe"]["model"]["dtype"] == "float16"


@pytest.mark.slow
def test_attention_slicing_is_applied_and_recorded(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    recipe = recipe_runner_write_recipe(MATRIX.format(batch_size=2) + '[optimizations]\nattention_slicing = { slice_size = "max" }\n',
                          "sliced.toml")
    assert recipe_runner_cli(recipe, "--out", tmp_path / "out").code == 0
    manifest = json.loads((tmp_path / "out" / "sliced" / "manifest.json").read_text())
    assert manifest["optimizations"]["attention_slicing"] == {
        "status": "applied", "settings": {"required": True, "slice_size": "max"}}


@pytest.mark.slow
def test_pipeline_ready_receives_the_built_pipe(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    seen = {}

    class Probe:
        @hookimpl
        def pipeline_ready(self, pipe, recipe, context):
            seen["processors"] = {type(p).__name__ for p in pipe.unet.attn_processors.values()}
            seen["device"], seen["dtype"] = context.device, context.dtype

        @hookimpl
        def run_finished(self, recipe, output_dir, manifest):
            seen["finished"] = (output_dir.name, len(manifest["images"]))

    probe = Probe()
    plugins.register(probe)
    try:
        recipe = recipe_runner_write_recipe(MATRIX.format(batch_size=6) + "[optimizations]\nattention_slicing = true\n", "probe.toml")
        assert recipe_runner_cli(recipe, "--out", tmp_path / "out").code == 0
    finally:
        plugins.unregister(probe)
    assert seen["processors"] == {"SlicedAttnProcessor"}
    assert (seen["device"], seen["dtype"]) == ("cpu", "float32")
    assert seen["finished"] == ("probe", 6)


@pytest.mark.slow
def test_dry_run_of_every_recipe_imports_neither_torch_nor_diffusers():
    recipes = sorted(str(p) for p in (REPO / "recipes").glob("*.toml"))
    assert len(recipes) >= 4
    code = (
        "import sys\n"
        "from recipe_runner.cli.main import main\n"
        f"rc = main(['--dry-run', *{recipes!r}])\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "sys.exit(rc)\n"
    )
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          # online, as on a user's machine (a dry run reads no URL and fetches nothing)
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "0"})
    assert proc.returncode == 0, proc.stderr
    for name in ("warrior", "sdxl-batch", "sdxl-img2img", "tiny"):
        assert f"\n{name}  (" in "\n" + proc.stdout
    assert "batch 0" in proc.stdout


HEAVY = ("torch", "diffusers", "transformers", "accelerate")


def test_help_is_light_and_lists_the_options():
    """`recipe-run --help` (through python -m recipe_runner, the console entry) imports none of the
    heavy libraries: measured in the process that printed the help."""
    code = (
        "import json, runpy, sys\n"
        "sys.argv = ['recipe-run', '--help']\n"
        "try:\n"
        "    runpy.run_module('recipe_runner', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exc:\n"
        "    rc = exc.code\n"
        f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "sys.stderr.write(json.dumps({'rc': rc, 'heavy': heavy}))\n"
    )
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report == {"rc": 0, "heavy": []}
    for option in ("--out", "--set", "--plugin", "--dry-run", "--list-plugins", "--allow-pickle"):
        assert option in proc.stdout


def test_the_command_skips_the_final_collection_only_after_main_returned(monkeypatch):
    """recipe-run (and python -m recipe_runner) end with gc.freeze(), saving the interpreter's last full
    collection over torch's and diffusers' objects: after main() has returned (main is what tests
    and programs embedding the runner call), and with main's exit status."""
    import runpy
    from importlib import metadata

    from recipe_runner.cli import main as cli

    calls = []
    monkeypatch.setattr(cli, "main", lambda argv=None: calls.append("main") or 2)
    monkeypatch.setattr(cli.gc, "freeze", lambda: calls.append("freeze"))
    with pytest.raises(SystemExit) as exited:
        cli.console()
    assert exited.value.code == 2
    assert calls == ["main", "freeze"]

    calls.clear()  # python -m recipe_runner takes the same path
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("recipe_runner", run_name="__main__")
    assert exited.value.code == 2
    assert calls == ["main", "freeze"]

    scripts = metadata.distribution("recipe-runner").entry_points.select(group="console_scripts")
    assert scripts["recipe-run"].load() is cli.console  # the installed command


@pytest.mark.slow
def test_tiny_demo_runs_from_the_command_line(tmp_path):
    """What the README's first command ends with: `recipe-run recipes/tiny.toml`."""
    script = Path(sys.executable).with_name("recipe-run")
    args = ["recipes/tiny.toml", "--out", str(tmp_path)]
    if script.exists():
        import subprocess

        proc = subprocess.run([str(script), *args], cwd=REPO, capture_output=True, text=True)
        code, err = proc.returncode, proc.stderr
    else:
        result = run_subprocess(*args)
        code, err = result.code, result.err
    assert code == 0, err
    assert len(image_files(tmp_path / "tiny")) == 4
    # quiet: no library chatter, no progress bar when not a terminal; one line before the load
    assert err.strip() == "tiny: loading tiny:sd15 (text-to-image, cpu, float32) ...", err
