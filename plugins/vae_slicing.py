"""``vae_slicing``: decode a batch's latents one image at a time (the VAE's ``enable_slicing``):
peak memory of the decode no longer grows with the batch.

    [optimizations]
    vae_slicing = true

Exact up to float rounding: each image is decoded alone instead of in a batch, so batched
kernels round differently (at batch_size 1 it changes nothing).
"""

from __future__ import annotations

from typing import Any

from recipe_runner.api import BuildContext, Optimization, OptimizationSettings, Unsupported, hookimpl


class Settings(OptimizationSettings):
    pass


def apply(pipe: Any, settings: Settings, context: BuildContext) -> None:
    vae = getattr(pipe, "vae", None)
    if vae is None or not hasattr(vae, "enable_slicing"):
        raise Unsupported(f"{type(pipe).__name__} has no VAE that supports slicing")
    try:
        vae.enable_slicing()
    except NotImplementedError as exc:
        raise Unsupported(str(exc)) from exc


def switch(pipe: Any, old: Settings | None, new: Settings | None, context: BuildContext) -> None:
    if new is not None:
        return apply(pipe, new, context)
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "disable_slicing"):
        vae.disable_slicing()
    return None


@hookimpl
def register_optimizations() -> list[Optimization]:
    return [Optimization(name="vae_slicing", settings=Settings, stage="memory", apply=apply, switch=switch,
                         description="decode the batch one image at a time: less VAE memory")]
