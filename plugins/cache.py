"""``cache``: diffusers' cache hooks for transformer denoisers (``transformer.enable_cache``):
reuse what a block computed at an earlier step instead of recomputing it. Faster, approximate.

    [optimizations]
    cache = true                                               # first_block, threshold 0.05
    cache = { type = "first_block", threshold = 0.1 }          # FirstBlockCache
    cache = { type = "taylorseer", cache_interval = 4 }        # TaylorSeer
    cache = { type = "mag", mag_ratios = [1.0, 0.98, ...] }    # MagCache (or calibrate = true)
    cache = { type = "pyramid_attention_broadcast", spatial_attention_block_skip_range = 2 }
    cache = { type = "faster", spatial_attention_block_skip_range = 2 }   # FasterCache

Each type takes the settings of its diffusers config class, by the same names; a setting of
another type is an error. Unset settings keep diffusers' defaults. A UNet pipeline (SD 1.5, SDXL)
is refused: the hooks need a transformer with ``enable_cache``. PyramidAttentionBroadcast and
FasterCache read the pipeline's current timestep, which the plugin wires up; FasterCache also
skips the unconditional batch of classifier-free guidance, so with ``guidance_scale <= 1`` (no
such batch) ``is_guidance_distilled`` defaults to true.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from recipe_runner.api import BuildContext, Optimization, OptimizationSettings, Unsupported, hookimpl

from .common import declared_denoiser, denoiser

Range = Annotated[list[int], Field(min_length=2, max_length=2)]

CONFIGS = {
    "first_block": "FirstBlockCacheConfig",
    "faster": "FasterCacheConfig",
    "pyramid_attention_broadcast": "PyramidAttentionBroadcastConfig",
    "taylorseer": "TaylorSeerCacheConfig",
    "mag": "MagCacheConfig",
}
SETTINGS_OF = {
    "first_block": {"threshold"},
    "mag": {"threshold", "max_skip_steps", "retention_ratio", "num_inference_steps", "mag_ratios", "calibrate"},
    "taylorseer": {"cache_interval", "disable_cache_before_step", "disable_cache_after_step", "max_order",
                   "taylor_factors_dtype", "use_lite_mode", "cache_identifiers", "skip_predict_identifiers"},
    "pyramid_attention_broadcast": {
        "spatial_attention_block_skip_range", "spatial_attention_timestep_skip_range",
        "cross_attention_block_skip_range", "cross_attention_timestep_skip_range",
        "temporal_attention_block_skip_range", "temporal_attention_timestep_skip_range"},
    "faster": {
        "spatial_attention_block_skip_range", "spatial_attention_timestep_skip_range",
        "temporal_attention_block_skip_range", "temporal_attention_timestep_skip_range",
        "low_frequency_weight_update_timestep_range", "high_frequency_weight_update_timestep_range",
        "alpha_low_frequency", "alpha_high_frequency", "unconditional_batch_skip_range",
        "unconditional_batch_timestep_skip_range", "is_guidance_distilled", "tensor_format"},
}
NEEDS_TIMESTEP = ("faster", "pyramid_attention_broadcast")


class Settings(OptimizationSettings):
    type: Literal["first_block", "faster", "pyramid_attention_broadcast", "taylorseer", "mag"] = "first_block"
    threshold: Annotated[float, Field(gt=0)] | None = None
    max_skip_steps: Annotated[int, Field(ge=1)] | None = None
    retention_ratio: Annotated[float, Field(ge=0, le=1)] | None = None
    num_inference_steps: Annotated[int, Field(ge=1)] | None = None
    """mag: default: the recipe's params.num_inference_steps"""
    mag_ratios: list[float] | None = None
    calibrate: bool | None = None
    cache_interval: Annotated[int, Field(ge=1)] | None = None
    disable_cache_before_step: Annotated[int, Field(ge=0)] | None = None
    disable_cache_after_step: Annotated[int, Field(ge=0)] | None = None
    max_order: Annotated[int, Field(ge=0)] | None = None
    taylor_factors_dtype: Literal["float32", "float16", "bfloat16"] | None = None
    use_lite_mode: bool | None = None
    cache_identifiers: list[str] | None = None
    """taylorseer: regexes (full match) of the module names to cache; diffusers' default matches
    names ending in "attn" under transformer_blocks (CogView4's are "attn1": name them here)"""
    skip_predict_identifiers: list[str] | None = None
    spatial_attention_block_skip_range: Annotated[int, Field(ge=1)] | None = None
    spatial_attention_timestep_skip_range: Range | None = None
    cross_attention_block_skip_range: Annotated[int, Field(ge=1)] | None = None
    cross_attention_timestep_skip_range: Range | None = None
    temporal_attention_block_skip_range: Annotated[int, Field(ge=1)] | None = None
    temporal_attention_timestep_skip_range: Range | None = None
    low_frequency_weight_update_timestep_range: Range | None = None
    high_frequency_weight_update_timestep_range: Range | None = None
    alpha_low_frequency: float | None = None
    alpha_high_frequency: float | None = None
    unconditional_batch_skip_range: Annotated[int, Field(ge=1)] | None = None
    unconditional_batch_timestep_skip_range: Range | None = None
    is_guidance_distilled: bool | None = None
    tensor_format: Literal["BCHW", "BCFHW", "BFCHW"] | None = None
    """faster: layout of the attention outputs; default BCHW (images)"""

    @model_validator(mode="after")
    def _settings_of_this_type(self) -> Settings:
        own = SETTINGS_OF[self.type] | {"type", "required"}
        foreign = sorted(k for k in self.model_fields_set if k not in own)
        if foreign:
            raise ValueError(f"{foreign[0]} is not a setting of type {self.type!r} "
                             f"(its settings: {', '.join(sorted(SETTINGS_OF[self.type]))})")
        return self


def check(settings: Settings, context: BuildContext) -> None:
    if declared_denoiser(context) == "unet":
        raise Unsupported("diffusers' cache hooks need a transformer denoiser; this pipeline's is a UNet")


def config(settings: Settings, pipe: Any, context: BuildContext) -> Any:
    """The diffusers config object for these settings."""
    import diffusers
    import torch

    options = {k: getattr(settings, k) for k in SETTINGS_OF[settings.type] if getattr(settings, k) is not None}
    options = {k: tuple(v) if k.endswith("_range") and isinstance(v, list) else v for k, v in options.items()}
    if settings.type == "taylorseer" and "taylor_factors_dtype" in options:
        options["taylor_factors_dtype"] = getattr(torch, options["taylor_factors_dtype"])
    if settings.type == "mag":
        steps = context.recipe.params.get("num_inference_steps")
        if "num_inference_steps" not in options and isinstance(steps, int):
            options["num_inference_steps"] = steps
        if "mag_ratios" not in options and not options.get("calibrate"):
            raise Unsupported("type 'mag' needs mag_ratios (the model's magnitude ratios), or calibrate = true "
                              "to print them from one run")
    if settings.type == "faster":
        options.setdefault("tensor_format", "BCHW")
        guidance = context.recipe.params.get("guidance_scale")
        if isinstance(guidance, (int, float)) and guidance <= 1:  # no unconditional batch to skip
            options.setdefault("is_guidance_distilled", True)
    if settings.type in NEEDS_TIMESTEP:
        if not any(k.endswith("_block_skip_range") for k in options):
            options["spatial_attention_block_skip_range"] = 2
        options["current_timestep_callback"] = lambda: pipe.current_timestep
    try:
        return getattr(diffusers, CONFIGS[settings.type])(**options)
    except (ValueError, TypeError) as exc:
        raise Unsupported(f"{CONFIGS[settings.type]}: {str(exc).strip().splitlines()[0]}") from exc


def apply(pipe: Any, settings: Settings, context: BuildContext) -> None:
    name, model = denoiser(pipe)
    if not hasattr(model, "enable_cache"):
        raise Unsupported(f"the {name} ({type(model).__name__}) has no cache hooks (enable_cache): "
                          "they need a transformer denoiser such as Flux's, CogView4's or Wan's")
    if settings.type in NEEDS_TIMESTEP and not hasattr(type(pipe), "current_timestep"):
        raise Unsupported(f"type {settings.type!r} needs the pipeline's current timestep, which "
                          f"{type(pipe).__name__} does not expose")
    try:
        model.enable_cache(config(settings, pipe, context))
    except (ValueError, TypeError) as exc:
        raise Unsupported(str(exc).strip().splitlines()[0]) from exc


@hookimpl
def register_optimizations() -> list[Optimization]:
    return [Optimization(name="cache", settings=Settings, stage="layout", apply=apply, check=check,
                         description="diffusers cache hooks (first_block, faster, pyramid_attention_broadcast, "
                                     "taylorseer, mag) for transformer denoisers")]
