"""Tiny, randomly initialised diffusers pipelines for tests and offline demos.

Each kind mirrors the component layout and scheduler config of a real model
family, with layer sizes shrunk so the folder is a few MB and a 4-step 64x64
generation takes a fraction of a second on CPU:

- "sd15": StableDiffusionPipeline (UNet, CLIP, PNDM), also img2img/inpainting.
- "sdxl": StableDiffusionXLPipeline (two CLIPs, text_time conditioning, Euler).
- "sd3": StableDiffusion3Pipeline (MMDiT transformer, two CLIPs and a T5).
- "cogview4": CogView4Pipeline (GLM text encoder). The transformer kind to use
  for diffusers' cache hooks: unlike SD3's, its transformer has
  ``enable_cache`` and its pipeline sets ``cache_context``/``current_timestep``.

Nothing is downloaded: weights come from a fixed seed per component, and the
tokenizers' vocabularies are generated here. Images are 64x64 by default and
the VAEs downsample 8x like the real ones, so any multiple of 16 also works.

Beside the pipelines, the ``tiny:`` source serves what the other axes need, offline:

- "sd15-b": the SD-1.5 layout again with other weights (a second model for a ``model`` axis).
- "vae": a standalone AutoencoderKL with sd15's config and other weights, for ``[components.vae]``
  or a ``components.vae`` axis (``id = "tiny:vae"``).
- "lora-<name>": a rank-4 LoRA file for the SD-1.5-layout UNet (``tiny:sd15`` and ``tiny:sd15-b``),
  its random weights seeded by ``<name>``, for ``[optimizations.lora]`` or a ``lora`` axis
  (``{ id = "tiny:lora-fox" }``). Building it needs ``peft``, as loading any LoRA does.

Use ``resolve_model_id("tiny:sd15")`` (or ``ensure("sd15")``) to get a cached
folder that ``DiffusionPipeline.from_pretrained`` can load. torch and diffusers
are imported lazily so that importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recipe_runner.api import ModelInfo, ModelSource, cache_dir, did_you_mean, hookimpl, model_info_from_folder

KINDS: tuple[str, ...] = ("sd15", "sdxl", "sd3", "cogview4")
OTHER_WEIGHTS: dict[str, tuple[str, int]] = {"sd15-b": ("sd15", 100)}  # kind -> (layout, seed offset)
VAE_KIND = "vae"
LORA_PREFIX = "lora-"
LORA_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
LORA_FILE = "pytorch_lora_weights.safetensors"

# Bump when any config, seed or vocabulary below changes, so that stale cached
# folders are not reused.
FORMAT_VERSION = "v1"
MODEL_ID_PREFIX = "tiny:"

# One seed per component, so each component's weights do not depend on the
# order in which the others are built.
SEED_UNET = 0
SEED_TRANSFORMER = 1
SEED_VAE = 2
SEED_TEXT_ENCODER = 3
SEED_TEXT_ENCODER_2 = 4
SEED_TEXT_ENCODER_3 = 5
SEED_STANDALONE_VAE = 6

CLIP_MAX_TOKENS = 77
TEXT_HIDDEN_SIZE = 32  # CLIP and GLM text encoders
T5_HIDDEN_SIZE = 64  # SD3 pads the two CLIPs' concatenated states to T5's width
VAE_BLOCKS = (16, 32, 32, 32)  # four blocks: 8x spatial downsampling, like SD
LATENT_SIZE = 8  # 8x8 latents -> 64x64 images by default

# A handful of merges so that common English words become single tokens, as in
# a real CLIP vocabulary (every byte is also a token, so any text tokenizes).
CLIP_MERGES = (
    ("t", "h"),
    ("th", "e</w>"),
    ("a", "n"),
    ("an", "d</w>"),
    ("o", "f</w>"),
    ("i", "n"),
    ("in", "g</w>"),
    ("o", "n</w>"),
    ("e", "r</w>"),
    ("p", "h"),
    ("ph", "o"),
    ("pho", "t"),
    ("phot", "o</w>"),
)
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"

# SD3's T5 tokenizer (a SentencePiece-style unigram model): printable ASCII
# characters, alone and with the word-start marker; anything else is <unk>.
T5_SPECIAL_PIECES = (("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0))
T5_MAX_TOKENS = 512

# CogView4's GLM tokenizer: byte-level BPE (GPT style, "\u0120" = "Ġ" marks a
# leading space) that prefixes every prompt with "[gMASK]<sop>" and pads on the left.
GLM_MERGES = (
    ("\u0120", "t"),
    ("h", "e"),
    ("\u0120t", "he"),
    ("\u0120", "a"),
    ("\u0120a", "n"),
    ("\u0120an", "d"),
    ("\u0120", "o"),
    ("\u0120o", "f"),
    ("i", "n"),
    ("in", "g"),
)
GLM_PAD_TOKEN = "<|endoftext|>"
GLM_PREFIX_TOKENS = ("[gMASK]", "<sop>")
GLM_MAX_TOKENS = 1024

# Scheduler settings from the real models' scheduler_config.json (keys the
# scheduler class does not take, such as PNDM's clip_sample, left out).
SD_BETAS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
}
SD15_SCHEDULER = {
    **SD_BETAS,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
}
SDXL_SCHEDULER = {
    **SD_BETAS,
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}
SD3_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}
COGVIEW4_SCHEDULER = {
    "num_train_timesteps": 1000,
    "use_dynamic_shifting": True,
    "time_shift_type": "linear",
    "base_shift": 0.25,
    "max_shift": 0.75,
    "base_image_seq_len": 256,
}

# Per-family VAE settings from the real vae/config.json; the (tiny) layout is shared.
SD15_VAE = {"latent_channels": 4, "scaling_factor": 0.18215}
SDXL_VAE = {"latent_channels": 4, "scaling_factor": 0.13025, "force_upcast": True}
SD3_VAE = {
    "latent_channels": 16,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
COGVIEW4_VAE = {
    "latent_channels": 16,
    "scaling_factor": 1.0,
    "shift_factor": 0.0,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def _check_kind(kind: str) -> None:
    if kind not in KINDS and kind not in OTHER_WEIGHTS:
        raise ValueError(f"unknown tiny pipeline kind {kind!r}; known kinds: {', '.join([*KINDS, *OTHER_WEIGHTS])}")


def cached_path(kind: str) -> Path:
    """Where ``ensure(kind)`` keeps the tiny pipeline of this kind."""
    _check_kind(kind)
    return cache_dir() / "tiny" / f"{kind}-{FORMAT_VERSION}"


def ensure(kind: str) -> Path:
    """Return the cached tiny pipeline folder of ``kind``, building it on first use.

    Safe against concurrent callers: each builds into its own temporary folder
    and the first rename wins; the others discard theirs and use the winner's.
    """
    dest = cached_path(kind)
    if dest.is_dir():
        return dest
    layout, seed = OTHER_WEIGHTS.get(kind, (kind, 0))
    try:
        return build(layout, dest, seed)
    except FileExistsError:
        return dest


def ensure_vae() -> Path:
    """The cached standalone tiny VAE folder (``tiny:vae``), built on first use."""
    dest = cache_dir() / "tiny" / f"{VAE_KIND}-{FORMAT_VERSION}"
    if dest.is_dir():
        return dest
    try:
        return build_tiny_vae(dest)
    except FileExistsError:
        return dest


def lora_folder(name: str) -> Path:
    return cache_dir() / "tiny" / f"{LORA_PREFIX}{name}-{FORMAT_VERSION}"


def ensure_lora(name: str) -> Path:
    """The cached tiny LoRA file ``tiny:lora-<name>``, built on first use (needs ``peft``)."""
    if not LORA_NAME.fullmatch(name):
        raise ValueError(f"a tiny LoRA name is lowercase letters, digits, '-' and '_' (at most 40), got {name!r}")
    dest = lora_folder(name)
    if not dest.is_dir():
        try:
            build_tiny_lora(dest, name)
        except FileExistsError:
            pass
    return dest / LORA_FILE


def lora_seed(name: str) -> int:
    """The seed of a tiny LoRA's weights: from its name, the same on every machine."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")


def build_tiny_lora(dest: Path, name: str) -> Path:
    """Save a rank-4 LoRA on the tiny SD-1.5 UNet's attention (random, non-zero weights seeded by
    ``name``), the way diffusers' training scripts save one: ``dest/pytorch_lora_weights.safetensors``."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(ensure("sd15"), subfolder="unet", use_safetensors=True)
    state = torch.random.get_rng_state()
    torch.manual_seed(lora_seed(name))
    try:
        unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    finally:
        torch.random.set_rng_state(state)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    return _build_atomically(Path(dest), lambda tmp: StableDiffusionPipeline.save_lora_weights(
        tmp, unet_lora_layers=layers, safe_serialization=True))


def resolve_model_id(model_id: str) -> str | None:
    """Map ``"tiny:<kind>"`` to a local folder path; return None for any other id."""
    if not model_id.startswith(MODEL_ID_PREFIX):
        return None
    return str(ensure(model_id[len(MODEL_ID_PREFIX):]))


def build(kind: str, dest: Path, seed: int = 0) -> Path:
    """Build the tiny pipeline ``kind`` into ``dest`` (which must not exist yet).

    ``seed`` moves every component's initialisation seed: another seed gives another model of the
    same layout, with the same tokenizer (two models for a ``model`` axis). The pipeline is
    written to a temporary sibling folder and renamed to ``dest`` at the end, so ``dest`` is either
    absent or complete. Raises FileExistsError if ``dest`` already exists.
    """
    _check_kind(kind)
    builder = _PIPELINE_BUILDERS[kind]
    _SEED_OFFSET[0] = seed
    try:
        return _build_atomically(Path(dest), lambda tmp: builder().save_pretrained(tmp, safe_serialization=True))
    finally:
        _SEED_OFFSET[0] = 0


def build_tiny_vae(dest: Path) -> Path:
    """Save a standalone AutoencoderKL with the sd15 vae's config but other weights.

    Stands in for a separately published VAE (like sd-vae-ft-mse) when a test
    swaps the pipeline's vae component.
    """
    vae = _make_vae(seed=SEED_STANDALONE_VAE, **SD15_VAE)
    return _build_atomically(Path(dest), lambda tmp: vae.save_pretrained(tmp, safe_serialization=True))


# --------------------------------------------------------------------------
# Atomic folder creation
# --------------------------------------------------------------------------


def _build_atomically(dest: Path, write: Callable[[Path], object]) -> Path:
    """Run ``write(tmp)`` on a fresh temporary sibling of ``dest``, then rename it to ``dest``."""
    if dest.exists():
        raise FileExistsError(f"{dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        write(tmp)
        try:
            os.rename(tmp, dest)  # atomic; fails if another process got there first
        except OSError as exc:
            if dest.exists():
                raise FileExistsError(f"{dest} already exists") from exc
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping  # printable bytes first: CLIP's vocabulary order


def _clip_vocab_tokens() -> list[str]:
    """CLIP's vocabulary order: bytes, bytes + '</w>', merged tokens, then the special tokens."""
    chars = list(_bytes_to_unicode().values())
    merged = [left + right for left, right in CLIP_MERGES]
    return [*chars, *(c + "</w>" for c in chars), *merged, BOS_TOKEN, EOS_TOKEN]


def _write_clip_vocab_files(folder: Path) -> tuple[Path, Path]:
    """Write vocab.json and merges.txt for a tiny CLIP BPE tokenizer into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.json"
    merges_file = folder / "merges.txt"
    vocab = {token: index for index, token in enumerate(_clip_vocab_tokens())}
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{left} {right}" for left, right in CLIP_MERGES)]
    merges_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return vocab_file, merges_file


def _make_clip_tokenizer() -> Any:
    """A CLIPTokenizer over the generated vocabulary, limited to CLIP's 77 tokens."""
    import tempfile

    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = _write_clip_vocab_files(Path(tmp))
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=CLIP_MAX_TOKENS)


def _make_t5_tokenizer() -> Any:
    """A T5Tokenizer over a generated unigram vocabulary (no sentencepiece needed)."""
    from transformers import T5Tokenizer

    chars = [chr(code) for code in range(ord("!"), ord("~") + 1)]
    pieces = [*T5_SPECIAL_PIECES, *(("\u2581" + c, -3.0) for c in chars), *((c, -4.0) for c in chars)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=T5_MAX_TOKENS)


def _make_glm_tokenizer() -> Any:
    """A byte-level BPE tokenizer shaped like GLM-4's (prefix tokens, left padding)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokens = [
        *_bytes_to_unicode().values(),
        *(left + right for left, right in GLM_MERGES),
        GLM_PAD_TOKEN,
        *GLM_PREFIX_TOKENS,
    ]
    vocab = {token: index for index, token in enumerate(tokens)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=list(GLM_MERGES)))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(
        single=" ".join([*GLM_PREFIX_TOKENS, "$A"]),
        special_tokens=[(token, vocab[token]) for token in GLM_PREFIX_TOKENS],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=GLM_PAD_TOKEN,
        eos_token=GLM_PAD_TOKEN,
        additional_special_tokens=list(GLM_PREFIX_TOKENS),
        padding_side="left",
        model_max_length=GLM_MAX_TOKENS,
    )


# --------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------


_SEED_OFFSET = [0]  # build(kind, dest, seed): added to every component's seed while it builds


def _seeded(seed: int, factory: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``factory`` right after seeding torch, so its random init is reproducible."""
    import torch

    torch.manual_seed(seed + _SEED_OFFSET[0])
    return factory(*args, **kwargs).eval()


def _make_clip_encoder(tokenizer: Any, seed: int, with_projection: bool) -> Any:
    """A 2-layer CLIP text encoder whose vocabulary matches ``tokenizer``."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN_SIZE,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_TOKENS,
        projection_dim=TEXT_HIDDEN_SIZE,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return _seeded(seed, model_class, config)


def _make_t5_encoder(tokenizer: Any, seed: int) -> Any:
    """A 2-layer T5 (v1.1-style, gated-gelu) encoder whose vocabulary matches ``tokenizer``."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(  # type: ignore[call-arg]  # decoder_start_token_id goes to PretrainedConfig's **kwargs
        vocab_size=len(tokenizer),
        d_model=T5_HIDDEN_SIZE,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return _seeded(seed, T5EncoderModel, config)


def _make_glm_encoder(tokenizer: Any, seed: int) -> Any:
    """A 2-layer GLM text encoder (CogView4's) whose vocabulary matches ``tokenizer``."""
    from transformers import GlmConfig, GlmModel

    config = GlmConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN_SIZE,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=GLM_MAX_TOKENS,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return _seeded(seed, GlmModel, config)


def _make_vae(seed: int, **overrides: Any) -> Any:
    """A 4-block AutoencoderKL (8x downsampling like SD's) with few channels.

    sample_size=32 makes ``vae.enable_tiling()`` actually tile 64x64 images.
    """
    from diffusers import AutoencoderKL

    return _seeded(
        seed,
        AutoencoderKL,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_BLOCKS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_BLOCKS),
        block_out_channels=VAE_BLOCKS,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=32,
        **overrides,
    )


def _make_sd15_unet() -> Any:
    from diffusers import UNet2DConditionModel

    return _seeded(
        SEED_UNET,
        UNet2DConditionModel,
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=8,
        cross_attention_dim=TEXT_HIDDEN_SIZE,
    )


def _make_sdxl_unet() -> Any:
    from diffusers import UNet2DConditionModel

    time_embed_dim = 8
    return _seeded(
        SEED_UNET,
        UNet2DConditionModel,
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        # Both text encoders' hidden states are concatenated.
        cross_attention_dim=2 * TEXT_HIDDEN_SIZE,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        # 6 micro-conditioning numbers (sizes and crop) + text_encoder_2's pooled projection.
        projection_class_embeddings_input_dim=6 * time_embed_dim + TEXT_HIDDEN_SIZE,
    )


def _make_sd3_transformer() -> Any:
    from diffusers import SD3Transformer2DModel

    heads, head_dim = 4, 8
    return _seeded(
        SEED_TRANSFORMER,
        SD3Transformer2DModel,
        sample_size=LATENT_SIZE,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=T5_HIDDEN_SIZE,
        caption_projection_dim=heads * head_dim,
        pooled_projection_dim=2 * TEXT_HIDDEN_SIZE,
        pos_embed_max_size=64,  # enough for 1024x1024 images
    )


def _make_cogview4_transformer() -> Any:
    from diffusers import CogView4Transformer2DModel

    return _seeded(
        SEED_TRANSFORMER,
        CogView4Transformer2DModel,
        sample_size=LATENT_SIZE,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        text_embed_dim=TEXT_HIDDEN_SIZE,
        time_embed_dim=16,
        condition_dim=8,
    )


# --------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------


def _make_sd15_pipeline() -> Any:
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    tokenizer = _make_clip_tokenizer()
    return StableDiffusionPipeline(
        vae=_make_vae(SEED_VAE, **SD15_VAE),
        text_encoder=_make_clip_encoder(tokenizer, SEED_TEXT_ENCODER, with_projection=False),
        tokenizer=tokenizer,
        unet=_make_sd15_unet(),
        scheduler=PNDMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _make_sdxl_pipeline() -> Any:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    tokenizer = _make_clip_tokenizer()
    return StableDiffusionXLPipeline(
        vae=_make_vae(SEED_VAE, **SDXL_VAE),
        text_encoder=_make_clip_encoder(tokenizer, SEED_TEXT_ENCODER, with_projection=False),
        text_encoder_2=_make_clip_encoder(tokenizer, SEED_TEXT_ENCODER_2, with_projection=True),
        tokenizer=tokenizer,
        tokenizer_2=_make_clip_tokenizer(),
        unet=_make_sdxl_unet(),
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
    )


def _make_sd3_pipeline() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    tokenizer = _make_clip_tokenizer()
    t5_tokenizer = _make_t5_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=_make_sd3_transformer(),
        scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER),
        vae=_make_vae(SEED_VAE, **SD3_VAE),
        text_encoder=_make_clip_encoder(tokenizer, SEED_TEXT_ENCODER, with_projection=True),
        tokenizer=tokenizer,
        text_encoder_2=_make_clip_encoder(tokenizer, SEED_TEXT_ENCODER_2, with_projection=True),
        tokenizer_2=_make_clip_tokenizer(),
        # A real (tiny) T5 rather than None: SD3's from_pretrained refuses a
        # model_index.json with a null text_encoder_3 unless the caller passes
        # text_encoder_3=None, which would break plain DiffusionPipeline loading.
        text_encoder_3=_make_t5_encoder(t5_tokenizer, SEED_TEXT_ENCODER_3),
        tokenizer_3=t5_tokenizer,
    )


def _make_cogview4_pipeline() -> Any:
    from diffusers import CogView4Pipeline, FlowMatchEulerDiscreteScheduler

    tokenizer = _make_glm_tokenizer()
    return CogView4Pipeline(
        tokenizer=tokenizer,
        text_encoder=_make_glm_encoder(tokenizer, SEED_TEXT_ENCODER),
        vae=_make_vae(SEED_VAE, **COGVIEW4_VAE),
        transformer=_make_cogview4_transformer(),
        scheduler=FlowMatchEulerDiscreteScheduler(**COGVIEW4_SCHEDULER),
    )


_PIPELINE_BUILDERS: dict[str, Callable] = {
    "sd15": _make_sd15_pipeline,
    "sdxl": _make_sdxl_pipeline,
    "sd3": _make_sd3_pipeline,
    "cogview4": _make_cogview4_pipeline,
}


# --------------------------------------------------------------------------
# The model source: ``tiny:<kind>`` in a recipe (registered as a plugin)
# --------------------------------------------------------------------------

# Each kind's pipeline class, so a tiny model not built yet is checked too (its call parameters).
CLASSES = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
           "sd3": "StableDiffusion3Pipeline", "cogview4": "CogView4Pipeline"}
DEFAULT_SIZE = (64, 64)


class TinySource(ModelSource):
    """``tiny:sd15``, ``tiny:sd15-b``, ``tiny:sdxl``, ``tiny:sd3``, ``tiny:cogview4`` (pipelines),
    ``tiny:vae`` (a VAE) and ``tiny:lora-<name>`` (a LoRA file): built on first use into the cache."""

    name = "tiny"
    description = ("tiny:<kind>: a tiny random pipeline built on this machine (tests, the offline demo); "
                   "tiny:vae and tiny:lora-<name> for the VAE and LoRA axes")
    safetensors_only = True  # built here, in safetensors

    def claims(self, model_id: str) -> bool:
        return model_id.startswith(MODEL_ID_PREFIX)

    def problem(self, model_id: str) -> tuple[str, str | None] | None:
        kind = model_id[len(MODEL_ID_PREFIX):]
        if kind in KINDS or kind in OTHER_WEIGHTS or kind == VAE_KIND:
            return None
        if kind.startswith(LORA_PREFIX):
            if LORA_NAME.fullmatch(kind[len(LORA_PREFIX):]):
                return None
            return (f"a tiny LoRA is tiny:lora-<name>, the name lowercase letters, digits, '-' and '_', got {model_id!r}",
                    'for example "tiny:lora-fox"')
        known = [f"{MODEL_ID_PREFIX}{k}" for k in (*KINDS, *OTHER_WEIGHTS, VAE_KIND)]
        close = did_you_mean(model_id, known)
        return (f"unknown tiny pipeline {model_id!r}; known: {', '.join(known)}, tiny:lora-<name>",
                f"did you mean {close!r}?" if close else None)

    def locate(self, model_id: str, folder: Path) -> str:
        kind = model_id[len(MODEL_ID_PREFIX):]
        if kind == VAE_KIND:
            return str(ensure_vae())
        if kind.startswith(LORA_PREFIX):
            return str(ensure_lora(kind[len(LORA_PREFIX):]))
        return str(ensure(kind))  # ValueError for an unknown kind

    def ready(self, model_id: str) -> bool:
        kind = model_id[len(MODEL_ID_PREFIX):]
        if kind == VAE_KIND:
            return (cache_dir() / "tiny" / f"{VAE_KIND}-{FORMAT_VERSION}").is_dir()
        if kind.startswith(LORA_PREFIX):
            return lora_folder(kind[len(LORA_PREFIX):]).is_dir()
        try:
            return cached_path(kind).is_dir()
        except ValueError:
            return False

    def info(self, model_id: str) -> ModelInfo | None:
        kind = model_id[len(MODEL_ID_PREFIX):]
        if kind not in KINDS and kind not in OTHER_WEIGHTS:
            return None  # a VAE or a LoRA: not a pipeline
        folder = cached_path(kind)
        found = model_info_from_folder(folder) if folder.is_dir() else None
        return found or ModelInfo(CLASSES[OTHER_WEIGHTS.get(kind, (kind, 0))[0]], None, {}, 8, DEFAULT_SIZE)


@hookimpl
def register_model_sources(register: Callable[[ModelSource], None]) -> None:
    register(TinySource())
