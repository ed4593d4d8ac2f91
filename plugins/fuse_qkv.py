"""``fuse_qkv``: fuse the query, key and value projections of each attention layer into one
matrix multiplication (diffusers' ``fuse_qkv_projections``), a speed-up with torch.compile.

    [optimizations]
    fuse_qkv = true
    fuse_qkv = { vae = false }    # the denoiser only

Same weights, concatenated: images agree with the plain run to float rounding.
"""

from __future__ import annotations

from typing import Any

from recipe_runner.api import BuildContext, Optimization, OptimizationSettings, Unsupported, hookimpl

from .common import denoiser


class Settings(OptimizationSettings):
    vae: bool = True
    """also fuse the VAE's attention (AutoencoderKL only)"""


def apply(pipe: Any, settings: Settings, context: BuildContext) -> None:
    name, model = denoiser(pipe)
    if not hasattr(model, "fuse_qkv_projections"):
        raise Unsupported(f"the {name} ({type(model).__name__}) has no fused QKV projections")
    if name == "unet" and hasattr(pipe, "fuse_qkv_projections"):  # also installs the fused processors
        pipe.fuse_qkv_projections(unet=True, vae=False)
    else:
        model.fuse_qkv_projections()
    if settings.vae:
        vae = getattr(pipe, "vae", None)
        if vae is None or not hasattr(vae, "fuse_qkv_projections"):
            raise Unsupported(f"{type(pipe).__name__}'s VAE has no fused QKV projections: set vae = false")
        from diffusers.models.attention_processor import FusedAttnProcessor2_0

        vae.fuse_qkv_projections()
        vae.set_attn_processor(FusedAttnProcessor2_0())


@hookimpl
def register_optimizations() -> list[Optimization]:
    return [Optimization(name="fuse_qkv", settings=Settings, stage="attention", apply=apply,
                         description="fused query/key/value projections")]
