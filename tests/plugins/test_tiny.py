"""Tests for recipe_runner.plugins.tiny: tiny random diffusers pipelines built offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recipe_runner.base import paths
from recipe_runner.plugins import tiny
from tests.conftest import REPO

PROMPTS = ["portrait photo of a old warrior chief, tribal panther make up", "a cat"]
WEIGHT_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".safetensors", ".msgpack", ".h5"}


def kinds(of: tuple[str, ...] = tiny.KINDS, slow: tuple[str, ...] = ()) -> list:
    """The tiny kinds ``of`` (all by default) as test parameters, those in ``slow`` marked slow."""
    return [pytest.param(kind, marks=pytest.mark.slow) if kind in slow else kind for kind in of]


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> dict[str, Path]:
    """Every kind, built once into a session-wide temporary folder."""
    root = tmp_path_factory.mktemp("tiny")
    return {kind: tiny.build(kind, root / kind) for kind in tiny.KINDS}


@pytest.fixture(scope="session")
def torch():
    return pytest.importorskip("torch")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def _load(path: Path, pipeline_class=None, **kwargs):
    import diffusers

    pipeline_class = pipeline_class or diffusers.DiffusionPipeline
    pipe = pipeline_class.from_pretrained(path, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generators(torch, count: int):
    return [torch.Generator("cpu").manual_seed(index) for index in range(count)]


def _init_images(count: int):
    from PIL import Image

    return [Image.new("RGB", (64, 64), (40 * index, 120, 200)) for index in range(count)]


# ---------------------------------------------------------------- building


def test_import_does_not_import_torch_or_diffusers():
    code = "import recipe_runner.plugins.tiny, sys; assert not {'torch', 'diffusers', 'transformers'} & set(sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True)


@pytest.mark.parametrize("kind", tiny.KINDS)
def test_layout_is_diffusers_with_safetensors_only(built, kind):
    folder = built[kind]
    files = _files(folder)
    assert "model_index.json" in files
    weights = [name for name in files if Path(name).suffix in WEIGHT_SUFFIXES]
    assert weights and all(name.endswith(".safetensors") for name in weights)
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(f".{kind}.tmp")]


@pytest.mark.parametrize("kind", kinds(slow=("sdxl", "sd3")))
def test_building_twice_gives_identical_files(built, kind, tmp_path):
    again = tiny.build(kind, tmp_path / kind)
    assert _files(again) == _files(built[kind])


def test_build_refuses_an_existing_destination(tmp_path):
    (tmp_path / "sd15").mkdir()
    with pytest.raises(FileExistsError):
        tiny.build("sd15", tmp_path / "sd15")


def test_unknown_kind_lists_known_kinds(tmp_path):
    with pytest.raises(ValueError) as excinfo:
        tiny.build("sd9", tmp_path / "x")
    for kind in tiny.KINDS:
        assert kind in str(excinfo.value)
    with pytest.raises(ValueError, match="sd15"):
        tiny.resolve_model_id("tiny:nope")


# ---------------------------------------------------------------- cache


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RECIPE_RUNNER_CACHE", str(tmp_path / "cache"))
    assert paths.cache_dir() == tmp_path / "cache"


def test_cache_dir_default(monkeypatch, tmp_path):
    monkeypatch.delenv("RECIPE_RUNNER_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert paths.cache_dir() == tmp_path / ".cache" / "recipe-runner"


def test_resolve_model_id_builds_once_into_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("RECIPE_RUNNER_CACHE", str(tmp_path))
    assert tiny.resolve_model_id("runwayml/stable-diffusion-v1-5") is None
    assert tiny.resolve_model_id("./models/local") is None

    path = tiny.resolve_model_id("tiny:sd15")
    assert path == str(tmp_path / "tiny" / "sd15-v1")
    index = Path(path) / "model_index.json"
    stamp = index.stat().st_mtime_ns
    assert tiny.resolve_model_id("tiny:sd15") == path
    assert index.stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_ensure_uses_the_winner_when_another_process_renames_first(monkeypatch, tmp_path):
    """Simulates a concurrent builder that finishes while this one is still writing."""
    monkeypatch.setenv("RECIPE_RUNNER_CACHE", str(tmp_path))
    dest = tiny.cached_path("sd15")

    class RacingPipeline:
        def save_pretrained(self, folder, safe_serialization):
            dest.mkdir(parents=True)
            (dest / "winner").write_text("other process")
            Path(folder).mkdir()
            (Path(folder) / "loser").write_text("this process")

    monkeypatch.setitem(tiny._PIPELINE_BUILDERS, "sd15", RacingPipeline)
    assert tiny.ensure("sd15") == dest
    assert (dest / "winner").exists() and not (dest / "loser").exists()
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # temporary folder removed


# ---------------------------------------------------------------- pipelines


@pytest.mark.parametrize("kind", tiny.KINDS)
def test_tokenizers_match_text_encoders(built, kind):
    pipe = _load(built[kind])
    pairs = [
        (getattr(pipe, f"tokenizer{suffix}", None), getattr(pipe, f"text_encoder{suffix}", None))
        for suffix in ("", "_2", "_3")
    ]
    pairs = [(tok, enc) for tok, enc in pairs if tok is not None]
    assert pairs
    for tokenizer, encoder in pairs:
        assert len(tokenizer) == encoder.config.vocab_size
        content = tokenizer(PROMPTS[0], add_special_tokens=False).input_ids
        assert content and tokenizer.unk_token_id not in content
        if type(tokenizer).__name__ == "CLIPTokenizer":
            assert tokenizer.model_max_length == 77 == encoder.config.max_position_embeddings


@pytest.mark.parametrize("kind", kinds(slow=("sdxl", "sd3")))
def test_text_to_image_defaults_to_64x64(built, kind, torch):
    pipe = _load(built[kind], dtype=torch.float32)
    images = pipe(PROMPTS, num_inference_steps=4, generator=_generators(torch, 2)).images
    assert [image.size for image in images] == [(64, 64), (64, 64)]

    again = pipe(PROMPTS, num_inference_steps=4, generator=_generators(torch, 2)).images
    assert [image.tobytes() for image in again] == [image.tobytes() for image in images]


@pytest.mark.parametrize("kind", kinds(("sd15", "sdxl", "sd3"), slow=("sdxl", "sd3")))
def test_scheduler_swap_slicing_and_tiling(built, kind, torch):
    from diffusers import DPMSolverMultistepScheduler

    pipe = _load(built[kind])
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.enable_attention_slicing()
    pipe.vae.enable_tiling()  # the tiny VAEs tile anything larger than 32x32
    images = pipe(PROMPTS[0], num_inference_steps=4, height=96, width=64, generator=_generators(torch, 1)).images
    assert images[0].size == (64, 96)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("sd15", "StableDiffusionImg2ImgPipeline"),
     pytest.param("sdxl", "StableDiffusionXLImg2ImgPipeline", marks=pytest.mark.slow)],
)
def test_image_to_image_via_auto_pipeline(built, kind, expected, torch):
    from diffusers import AutoPipelineForImage2Image

    pipe = _load(built[kind], AutoPipelineForImage2Image)
    assert type(pipe).__name__ == expected
    images = pipe(
        [PROMPTS[0]] * 3,
        image=_init_images(3),
        strength=0.5,
        num_inference_steps=4,
        generator=_generators(torch, 3),
    ).images
    assert [image.size for image in images] == [(64, 64)] * 3


def test_inpainting_via_auto_pipeline_with_4_channel_unet(built, torch):
    from diffusers import AutoPipelineForInpainting
    from PIL import Image

    pipe = _load(built["sd15"], AutoPipelineForInpainting)
    assert type(pipe).__name__ == "StableDiffusionInpaintPipeline"
    assert pipe.unet.config.in_channels == 4
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    images = pipe(
        PROMPTS[0], image=_init_images(1)[0], mask_image=mask, num_inference_steps=4, generator=_generators(torch, 1)
    ).images
    assert images[0].size == (64, 64)


def test_cogview4_transformer_supports_cache_hooks(built, torch):
    from diffusers import FirstBlockCacheConfig

    pipe = _load(built["cogview4"])
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))
    images = pipe(PROMPTS[0], num_inference_steps=4, generator=_generators(torch, 1)).images
    pipe.transformer.disable_cache()
    assert images[0].size == (64, 64)


def test_standalone_vae_swaps_into_sd15(built, tmp_path, torch):
    from diffusers import AutoencoderKL

    vae_path = tiny.build_tiny_vae(tmp_path / "vae")
    assert sorted(_files(vae_path)) == ["config.json", "diffusion_pytorch_model.safetensors"]
    vae = AutoencoderKL.from_pretrained(vae_path)
    pipe = _load(built["sd15"], vae=vae)
    original = AutoencoderKL.from_pretrained(built["sd15"] / "vae")

    def architecture(model):
        return {key: value for key, value in model.config.items() if key != "_name_or_path"}

    assert architecture(vae) == architecture(original)
    assert not torch.equal(vae.decoder.conv_out.weight, original.decoder.conv_out.weight)
    images = pipe(PROMPTS[0], num_inference_steps=4, generator=_generators(torch, 1)).images
    assert images[0].size == (64, 64)
