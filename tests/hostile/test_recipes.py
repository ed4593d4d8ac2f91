"""A recipe from someone else's pull request cannot run code, read pickled weights, write outside
its output folder, or blow up on a hostile input image."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest

from tests.conftest import image_files, tiny_recipe

I2I = tiny_recipe("a cat", seeds=1, model='task = "image-to-image"', params="strength = 0.5", matrix='images = ["{image}"]')


def recipe(write_recipe, model="tiny:sd15", extra="", head="", name="recipe.toml"):
    return write_recipe(head + tiny_recipe("a cat", seeds=1, model_id=model, model=extra), name)


# --- pickled weights ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pickled_pipeline(recipe_runner_tiny_sd15, tmp_path_factory) -> Path:
    """The tiny pipeline re-saved with pickled (.bin) weights only."""
    from diffusers import DiffusionPipeline

    dest = tmp_path_factory.mktemp("pickled") / "sd15-pickled"
    DiffusionPipeline.from_pretrained(recipe_runner_tiny_sd15).save_pretrained(dest, safe_serialization=False)
    import torch
    from safetensors.torch import load_file

    for left in dest.rglob("*.safetensors"):  # transformers 5 saves safetensors regardless
        name = "pytorch_model.bin" if left.name == "model.safetensors" else left.name.replace(".safetensors", ".bin")
        torch.save(load_file(left), left.with_name(name))
        left.unlink()
    assert not list(dest.rglob("*.safetensors")) and list(dest.rglob("*.bin"))
    return dest


@pytest.mark.slow
def test_pickled_weights_are_refused_with_exit_2_naming_safetensors(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, pickled_pipeline):
    result = recipe_runner_cli(recipe(recipe_runner_write_recipe, model=str(pickled_pipeline)), "--out", tmp_path / "out")
    assert result.code == 2, result.err
    assert "model.id" in result.err and "only safetensors weights load" in result.err
    assert "--allow-pickle" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.png"))


@pytest.mark.slow
def test_allow_pickle_lets_a_trusted_pickled_model_run(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, pickled_pipeline):
    result = recipe_runner_cli(recipe(recipe_runner_write_recipe, model=str(pickled_pipeline)), "--out", tmp_path / "out", "--allow-pickle")
    assert result.code == 0, result.err
    assert len(image_files(tmp_path / "out" / "recipe")) == 1


def test_a_pickled_weights_file_as_model_id_is_refused(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    result = recipe_runner_cli(recipe(recipe_runner_write_recipe, model="someone/model.ckpt"), "--dry-run")
    assert result.code == 2 and "model.id: 'someone/model.ckpt' is a pickled weights file" in result.err


# --- remote code -------------------------------------------------------------------------------------

PINNED = 'revision = "' + "a" * 40 + '"'


@pytest.mark.parametrize("key", ['custom_pipeline = "lpw_stable_diffusion"', "trust_remote_code = true"])
def test_remote_code_needs_the_command_line_flag(recipe_runner_cli, recipe_runner_write_recipe, key):
    result = recipe_runner_cli(recipe(recipe_runner_write_recipe, extra=f"{key}\n{PINNED}"), "--dry-run")
    assert result.code == 2
    name = key.split(" ")[0]
    assert f"recipe.toml:4: model.{name}: runs code from the model's repository: refused" in result.err
    assert "--trust-remote-code" in result.err


@pytest.mark.parametrize("key", ['custom_pipeline = "lpw_stable_diffusion"', "trust_remote_code = true"])
def test_remote_code_needs_a_pinned_commit_revision(recipe_runner_cli, recipe_runner_write_recipe, key):
    result = recipe_runner_cli(recipe(recipe_runner_write_recipe, extra=f'{key}\nrevision = "main"'), "--dry-run", "--trust-remote-code")
    assert result.code == 2 and "model.revision: remote code needs model.revision pinned to a commit" in result.err
    assert recipe_runner_cli(recipe(recipe_runner_write_recipe, extra=key), "--dry-run", "--trust-remote-code").code == 2
    allowed = recipe_runner_cli(recipe(recipe_runner_write_recipe, extra=f"{key}\n{PINNED}"), "--dry-run", "--trust-remote-code")
    assert allowed.code == 0, allowed.err


@pytest.mark.slow
def test_remote_code_keys_reach_diffusers_only_with_the_flag():
    from recipe_runner.pipelines.build import BuildContext
    from recipe_runner.recipe.model import Recipe

    r = Recipe.model_validate({"name": "x", "model": {"id": "tiny:sd15", "custom_pipeline": "p", "trust_remote_code": True,
                                                      "revision": "a" * 40},
                               "matrix": {"prompts": ["a"]}})
    captured = {}

    class Fake:
        @classmethod
        def from_pretrained(cls, location, **kwargs):
            captured.update(kwargs)
            raise RuntimeError("stop")

    import recipe_runner.pipelines.build as build

    for allowed in (False, True):
        captured.clear()
        ctx = BuildContext(r, "cpu", "float32", "text-to-image", "loc", trust_remote_code=allowed)
        original = (build.read_model_index, build.TASK_PIPELINES)
        build.read_model_index = lambda location, revision: {}
        build.TASK_PIPELINES = {"text-to-image": (__name__, "Fake")}
        globals()["Fake"] = Fake
        try:
            with pytest.raises(build.RunError):
                build.load_pipeline(r, None, ctx, {})
        finally:
            build.read_model_index, build.TASK_PIPELINES = original
        if allowed:
            assert captured["custom_pipeline"] == "p" and captured["trust_remote_code"] is True
        else:
            assert "custom_pipeline" not in captured and "trust_remote_code" not in captured


# --- output confinement ------------------------------------------------------------------------------

@pytest.mark.parametrize(("head", "args"), [
    ('name = ".."\n', []),
    ('name = "/etc"\n', []),
    ('name = "../../escape"\n', []),
    ("", ["--set", "name=../escape"]),
    ("", ["--set", "name=/tmp/escape"]),
])
def test_output_names_cannot_leave_the_output_root(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, head, args):
    result = recipe_runner_cli(recipe(recipe_runner_write_recipe, head=head), "--out", tmp_path / "out", *args)
    assert result.code == 2 and "name: a recipe name names its output folder" in result.err


def test_a_symlink_planted_as_the_output_folder_is_refused(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "recipe").symlink_to(victim)
    result = recipe_runner_cli(recipe(recipe_runner_write_recipe), "--out", tmp_path / "out")
    assert result.code == 2 and "is a symbolic link: refusing to write through it" in result.err
    assert list(victim.iterdir()) == []


@pytest.mark.slow
def test_symlinks_planted_at_an_image_name_and_its_temporary_name_are_not_written_through(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    folder = tmp_path / "out" / "recipe"
    folder.mkdir(parents=True)
    victim_final, victim_tmp = tmp_path / "victim-final", tmp_path / "victim-tmp"
    victim_final.write_text("precious")
    victim_tmp.write_text("precious too")
    from recipe_runner.plugin_api import manager
    from recipe_runner.running.prepare import Options, prepare

    path = recipe(recipe_runner_write_recipe)
    name = prepare(path, [], manager.load_plugins([]), Options(out=tmp_path / "out")).jobs[0].filename("png")
    (folder / name).symlink_to(victim_final)
    (folder / f".{name}.tmp-{os.getpid()}").symlink_to(victim_tmp)  # the in-process run's temporary name
    (folder / ".manifest.journal.jsonl").symlink_to(victim_tmp)
    result = recipe_runner_cli(path, "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert victim_final.read_text() == "precious" and victim_tmp.read_text() == "precious too"
    assert not (folder / name).is_symlink() and (folder / name).stat().st_size > 0
    assert sorted(p.name for p in folder.iterdir()) == [".recipe-runner", name, "grid.png", "index.html", "manifest.json"]


# --- hostile input images ----------------------------------------------------------------------------

def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size (a decompression bomb's calling card)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def run_i2i(cli, write_recipe, tmp_path, image: str, *args):
    result = cli(write_recipe(I2I.format(image=image)), "--out", tmp_path / "out", *args)
    assert "Traceback" not in result.err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.png")), "nothing is generated"
    return result


def test_a_decompression_bomb_is_refused_with_exit_2(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_claiming(60_000, 60_000))
    result = run_i2i(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, "bomb.png")
    assert result.code == 2 and "matrix.images.0: refused:" in result.err and "decompression bomb" in result.err


def test_the_decompression_limit_applies_below_twice_the_limit_too(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, monkeypatch):
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 - 1)  # over the limit, under twice it: a warning in Pillow
    result = run_i2i(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, "big.png")
    assert result.code == 2 and "refused:" in result.err


@pytest.mark.parametrize(("content", "fragment"), [
    (b"this is not an image", "cannot identify image file"),
    (b"%PDF-1.4\n%%EOF\n", "cannot identify image file"),
    (png_claiming(64, 64)[:30], "cannot"),  # truncated
])
def test_an_unreadable_input_fails_the_recipe_before_generation(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, content, fragment):
    (tmp_path / "broken.png").write_bytes(content)
    result = run_i2i(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, "broken.png")
    assert result.code == 2 and "matrix.images.0: cannot read image 'broken.png'" in result.err
    assert fragment in result.err


def test_a_url_that_does_not_answer_fails_the_recipe_before_generation(recipe_runner_cli, recipe_runner_write_recipe, tmp_path,
                                                                       monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # online, and the URL is a closed local port
    result = run_i2i(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, "https://127.0.0.1:9/cat.png")
    assert result.code == 2 and "matrix.images.0: cannot read image 'https://127.0.0.1:9/cat.png'" in result.err


def test_urls_are_refused_offline(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run_i2i(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, "https://example.org/cat.png", "--dry-run")
    assert result.code == 2 and "is a URL, but the run is offline" in result.err


def test_url_downloads_are_size_capped(monkeypatch):
    import io

    from recipe_runner.plan import inputs

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    seen = {}

    def fake_urlopen(request, timeout):
        seen["timeout"] = timeout
        return Response(b"x" * 101)

    monkeypatch.setattr(inputs, "_open_url", fake_urlopen)
    monkeypatch.setattr(inputs, "URL_MAX_BYTES", 100)
    with pytest.raises(ValueError, match="larger than"):
        inputs.read_bytes("https://example.org/huge.png")
    assert seen["timeout"] == inputs.URL_DEADLINE


def test_recipe_files_beyond_the_size_cap_are_refused(recipe_runner_cli, tmp_path):
    from recipe_runner.recipe.loading import MAX_RECIPE_BYTES

    path = tmp_path / "huge.toml"
    path.write_text("# " + "x" * MAX_RECIPE_BYTES + "\n")
    result = recipe_runner_cli(path, "--dry-run")
    assert result.code == 2 and "huge.toml: recipe is" in result.err and "limited to" in result.err
