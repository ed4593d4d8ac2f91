"""``vae_tiling``: encode and decode in overlapping tiles (the VAE's ``enable_tiling``), so large
images decode in bounded memory.

    [optimizations]
    vae_tiling = true
    vae_tiling = { tile_sample_min_size = 512, tile_overlap_factor = 0.25 }

Not exact: tiles are blended where they overlap, which shifts pixels slightly along the seams.
The tile size defaults to the VAE's own (its config's ``sample_size``).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from recipe_runner.api import BuildContext, Optimization, OptimizationSettings, Unsupported, hookimpl


class Settings(OptimizationSettings):
    tile_sample_min_size: Annotated[int, Field(ge=16)] | None = None
    """image-space tile size in pixels (default: the VAE's sample_size)"""
    tile_overlap_factor: Annotated[float, Field(gt=0, lt=1)] | None = None
    """fraction of a tile shared with its neighbour (diffusers' default 0.25)"""


def apply(pipe: Any, settings: Settings, context: BuildContext) -> None:
    vae = getattr(pipe, "vae", None)
    if vae is None or not hasattr(vae, "enable_tiling"):
        raise Unsupported(f"{type(pipe).__name__} has no VAE that supports tiling")
    try:
        vae.enable_tiling()
    except NotImplementedError as exc:
        raise Unsupported(str(exc)) from exc
    if settings.tile_sample_min_size is not None:
        if not hasattr(vae, "tile_latent_min_size"):
            raise Unsupported(f"{type(vae).__name__} has no tile size setting")
        downsampling = 2 ** (len(vae.config.block_out_channels) - 1)
        vae.tile_sample_min_size = settings.tile_sample_min_size
        vae.tile_latent_min_size = settings.tile_sample_min_size // downsampling
    if settings.tile_overlap_factor is not None:
        vae.tile_overlap_factor = settings.tile_overlap_factor

@hookimpl
def register_optimizations() -> list[Optimization]:
    return [Optimization(name="vae_tiling", settings=Settings, stage="memory", apply=apply,
                         description="decode in overlapping tiles: large images in bounded memory")]
