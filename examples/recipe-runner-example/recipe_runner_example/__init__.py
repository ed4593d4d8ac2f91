"""An example recipe-runner plugin: diffusers' FreeU (``enable_freeu``), which re-weights the
UNet decoder's backbone and skip features, as ``[optimizations] freeu``.

    [optimizations]
    freeu = true                                     # the SD 1.5 values
    freeu = { s1 = 0.6, s2 = 0.4, b1 = 1.1, b2 = 1.2 }   # SDXL's
"""

from typing import Any

from pydantic import Field

from recipe_runner.api import BuildContext, Optimization, OptimizationSettings, Unsupported, hookimpl


class Settings(OptimizationSettings):
    s1: float = Field(0.9, gt=0)
    """skip-feature scale, first stage"""
    s2: float = Field(0.2, gt=0)
    b1: float = Field(1.5, gt=0)
    """backbone-feature scale, first stage"""
    b2: float = Field(1.6, gt=0)


def apply(pipe: Any, settings: Settings, context: BuildContext) -> None:
    if not hasattr(pipe, "enable_freeu"):
        raise Unsupported(f"{type(pipe).__name__} has no FreeU (it needs a UNet)")
    pipe.enable_freeu(s1=settings.s1, s2=settings.s2, b1=settings.b1, b2=settings.b2)


@hookimpl
def register_optimizations() -> list[Optimization[Any]]:
    return [Optimization(name="freeu", settings=Settings, stage="layout", apply=apply,
                         description="FreeU: re-weight the UNet decoder's features")]
