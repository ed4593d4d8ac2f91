"""``attention_slicing``: compute attention in slices to save memory (diffusers'
``enable_attention_slicing``), the docs' way to fit a batch of 8 on a T4.

    [optimizations]
    attention_slicing = true                      # slice_size "auto": two steps
    attention_slicing = { slice_size = "max" }    # one slice at a time: least memory
    attention_slicing = { slice_size = 2 }        # an int: heads per slice
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from recipe_runner.api import BuildContext, Optimization, OptimizationSettings, Unsupported, hookimpl

from .common import conflict


class Settings(OptimizationSettings):
    slice_size: Literal["auto", "max"] | Annotated[int, Field(ge=1)] = "auto"


def check(settings: Settings, context: BuildContext) -> None:
    conflict(context, ("xformers", "attention_backend", "fuse_qkv"),
             "slicing replaces the attention processors, so the fused attention would be silently undone")


def apply(pipe: Any, settings: Settings, context: BuildContext) -> None:
    if not hasattr(pipe, "enable_attention_slicing"):
        raise Unsupported(f"{type(pipe).__name__} has no enable_attention_slicing")
    pipe.enable_attention_slicing(settings.slice_size)


def switch(pipe: Any, old: Settings | None, new: Settings | None, context: BuildContext) -> None:
    """On, off, or another slice size on a loaded pipeline: off restores diffusers' default
    attention processors, as on a pipeline never sliced."""
    if new is not None:
        return apply(pipe, new, context)
    if hasattr(pipe, "disable_attention_slicing"):
        pipe.disable_attention_slicing()
    return None


@hookimpl
def register_optimizations() -> list[Optimization]:
    return [
        Optimization(
            name="attention_slicing",
            settings=Settings,
            stage="memory",
            apply=apply,
            check=check, light_check=True,
            switch=switch,
            description="compute attention in slices: less memory, slightly slower",
        )
    ]
