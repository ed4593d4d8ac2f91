"""``channels_last``: store the denoiser's (and optionally the VAE's) convolution weights in
channels-last memory format, which suits many GPU convolution kernels.

    [optimizations]
    channels_last = true
    channels_last = { vae = false }   # the denoiser only

Same arithmetic, different memory layout: images agree with the plain run to float rounding.
"""

from __future__ import annotations

from typing import Any

from recipe_runner.api import BuildContext, Optimization, OptimizationSettings, hookimpl

from .common import denoiser


class Settings(OptimizationSettings):
    vae: bool = True
    """also convert the VAE"""


def apply(pipe: Any, settings: Settings, context: BuildContext) -> None:
    import torch

    _, model = denoiser(pipe)
    model.to(memory_format=torch.channels_last)
    if settings.vae and getattr(pipe, "vae", None) is not None:
        pipe.vae.to(memory_format=torch.channels_last)


@hookimpl
def register_optimizations() -> list[Optimization]:
    return [Optimization(name="channels_last", settings=Settings, stage="layout", apply=apply,
                         description="channels-last memory format for the denoiser (and VAE)")]
