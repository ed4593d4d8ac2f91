"""What each image carries (A1111 parameters, the environment, the recipe and its job, in PNG text
or WebP EXIF) and --reproduce from it, pixel for pixel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recipe_runner import hookimpl
from recipe_runner.plugin_api import manager as plugins
from tests.conftest import VARS_AXES, image_files, pixels, tiny_recipe


def test_a1111_parameters_and_environment_in_each_image(matrix_run):
    from recipe_runner.records.outputs import read_embedded

    record = json.loads((matrix_run / "manifest.json").read_text())["images"][7]
    text = read_embedded(matrix_run / record["file"])
    assert text["parameters"] == (
        "portrait photo of a young chief\n"
        "Negative prompt: blurry a young chief\n"
        "Steps: 2, Sampler: PLMS, CFG scale: 8.0, Seed: 1, Size: 64x64, Model: tiny:sd15")
    env = json.loads(text["environment"])
    assert env["threads"] >= 1 and env["torch"] and env["diffusers"]
    assert "model_revision" in env and env["model_location"] == "<cache>/tiny/sd15-v1"  # portable (docs/outputs.md)
    assert env["recipe_file"] == "va.toml" and (matrix_run / env["recipe_folder"]).is_dir()
    assert not Path(env["recipe_folder"]).is_absolute()
    job = json.loads(text["job"])
    assert job["vars"] == {"who": "a young chief"} and job["batch_jobs"] == [4, 5, 6, 7]


def test_metadata_false_writes_bare_images_and_reproduce_refuses_them(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    from recipe_runner.records.outputs import read_embedded

    recipe = recipe_runner_write_recipe(VARS_AXES.replace("guidance_scale = [6.0, 8.0]", "guidance_scale = [6.0]")
                          .replace('who = ["an old chief", "a young chief"]', 'who = ["x"]')
                          .replace("seeds = [0, 1]", "seeds = [0]") + "[output]\nmetadata = false\ngallery = false\n", "bare.toml")
    assert recipe_runner_cli(recipe, "--out", tmp_path / "out").code == 0
    (image,) = image_files(tmp_path / "out" / "bare")
    assert read_embedded(image) == {}
    assert not (tmp_path / "out" / "bare" / "index.html").exists()
    result = recipe_runner_cli("--reproduce", image)
    assert result.code == 2 and "carries no recipe" in result.err


REPRO = tiny_recipe("a lighthouse", "a red barn", seeds=[3, 4], tables='[run]\nbatch_size = 3\n[output]\nformat = "{fmt}"')


class ThreadProbe:
    """Records the CPU thread count each pipeline call runs with."""

    def __init__(self):
        self.threads = []

    @hookimpl
    def before_batch(self, pipe, batch, call_kwargs):
        import torch

        self.threads.append(torch.get_num_threads())


@pytest.mark.slow
def test_reproduce_matches_an_untouched_image_and_catches_one_changed_pixel(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    import torch
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    recipe = recipe_runner_write_recipe(REPRO.format(fmt="png"), "repro.toml")
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the run records 2 threads; --reproduce must use them again
    try:
        assert recipe_runner_cli(recipe, "--out", tmp_path / "out").code == 0
    finally:
        torch.set_num_threads(before)
    folder = tmp_path / "out" / "repro"
    image = next(folder.glob("a-lighthouse-s4-*.png"))  # second in batch 0 of [0, 1, 2]
    probe = ThreadProbe()
    plugins.register(probe)
    try:
        result = recipe_runner_cli("--reproduce", image, "--out", tmp_path / "scratch")
    finally:
        plugins.unregister(probe)
    assert result.code == 0, result.err
    assert "pixel-identical" in result.out
    assert probe.threads == [2] and torch.get_num_threads() == before
    written = image_files(tmp_path / "scratch" / "repro")
    assert [p.name for p in written] == [image.name]  # the whole batch ran, only that image is written
    assert np.array_equal(pixels(written[0]), pixels(image))

    with Image.open(image) as original:
        changed = original.convert("RGB")
        info = PngInfo()
        for key, value in original.text.items():
            info.add_itxt(key, value)
    x, y = 10, 20
    r, g, b = changed.getpixel((x, y))
    changed.putpixel((x, y), ((r + 1) % 256, g, b))
    copy = tmp_path / "changed.png"
    changed.save(copy, pnginfo=info)
    result = recipe_runner_cli("--reproduce", copy)
    assert result.code == 1
    assert "differs: PSNR" in result.out and "1 of 4096 pixels" in result.out


@pytest.mark.slow
def test_webp_images_carry_the_metadata_in_exif_and_reproduce(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    from recipe_runner.records.outputs import read_embedded

    recipe = recipe_runner_write_recipe(REPRO.format(fmt="webp").replace("seeds = [3, 4]", "seeds = [3]"), "repro-webp.toml")
    assert recipe_runner_cli(recipe, "--out", tmp_path / "out").code == 0
    image = next((tmp_path / "out" / "repro-webp").glob("a-red-barn-s3-*.webp"))
    text = read_embedded(image)
    assert json.loads(text["job"])["prompt"] == "a red barn"
    assert json.loads(text["recipe"])["output"]["format"] == "webp"
    assert text["parameters"].startswith("a red barn\nSteps: 2")
    result = recipe_runner_cli("--reproduce", image)
    assert result.code == 0 and "pixel-identical" in result.out, result.err
