"""``xformers``: memory-efficient attention from the xformers package
(``enable_xformers_memory_efficient_attention``). Needs the package and a CUDA GPU; with
PyTorch 2's scaled-dot-product attention (diffusers' default) it rarely helps any more.

    [optimizations]
    xformers = true
    xformers = { required = false }   # use it where available, skip elsewhere
"""

from __future__ import annotations

from typing import Any

from recipe_runner.api import BuildContext, Optimization, OptimizationSettings, Unsupported, hookimpl

from .common import conflict, require_cuda, require_package


class Settings(OptimizationSettings):
    pass


def check(settings: Settings, context: BuildContext) -> None:
    conflict(context, ("attention_backend",), "both choose the attention kernel; keep one")
    require_package("xformers", "xformers")
    require_cuda(context, "xformers")


def apply(pipe: Any, settings: Settings, context: BuildContext) -> None:
    if not hasattr(pipe, "enable_xformers_memory_efficient_attention"):
        raise Unsupported(f"{type(pipe).__name__} has no enable_xformers_memory_efficient_attention")
    pipe.enable_xformers_memory_efficient_attention()


@hookimpl
def register_optimizations() -> list[Optimization]:
    return [Optimization(name="xformers", settings=Settings, stage="attention", apply=apply, check=check, light_check=True,
                         description="xformers memory-efficient attention (needs xformers and CUDA)")]
