"""An example recipe-runner plugin: two optimizations, hooks and an axis kind.

- ``[optimizations] freeu``: diffusers' FreeU (``enable_freeu``), which re-weights the UNet
  decoder's backbone and skip features.
- ``[optimizations] watermark``: a corner band drawn on every image by the ``after_batch`` hook,
  declared in the job keys by ``job_identity`` (pixels change: a run without it regenerates).
- ``run_finished``: writes ``watermark-report.json`` next to the images of a watermarked run.
- the axis kind ``freeu_preset``: ``freeu_preset = ["sd15", "sdxl"]`` compares FreeU's published values.

    [optimizations]
    freeu = true                                     # the SD 1.5 values
    freeu = { s1 = 0.6, s2 = 0.4, b1 = 1.1, b2 = 1.2 }   # SDXL's
    watermark = { shade = 255, height = 4 }
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from recipe_runner.api import (
    AxisContext,
    AxisKind,
    Batch,
    BuildContext,
    Optimization,
    OptimizationSettings,
    Problem,
    Recipe,
    Unsupported,
    atomic_write,
    hookimpl,
)


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


class Watermark(OptimizationSettings):
    shade: int = Field(255, ge=0, le=255)
    """the band's grey level"""
    height: int = Field(4, ge=1, le=64)
    """the band's height in pixels, at the bottom of the image"""


def watermark_apply(pipe: Any, settings: Watermark, context: BuildContext) -> dict[str, Any]:
    return {"drawn_by": "after_batch"}  # the pipeline is unchanged: the hook draws; a fact for the manifest


@hookimpl
def register_optimizations() -> list[Optimization[Any]]:
    return [Optimization(name="freeu", settings=Settings, stage="layout", apply=apply,
                         description="FreeU: re-weight the UNet decoder's features"),
            Optimization(name="watermark", settings=Watermark, stage="layout", apply=watermark_apply,
                         description="a band drawn at the bottom of every image")]


@hookimpl
def after_batch(batch: Batch, images: list[Any], settings: dict[str, OptimizationSettings],
                facts: list[dict[str, Any]]) -> None:
    mark = settings.get("watermark")
    if not isinstance(mark, Watermark):  # not enabled for this batch's variant
        return
    for i, image in enumerate(images):
        marked = image.copy()
        width, height = marked.size
        marked.paste((mark.shade,) * len(marked.getbands()), (0, height - mark.height, width, height))
        images[i] = marked  # replace an item (or change it in place); never return a new list
        facts[i]["watermark_rows"] = [height - mark.height, height]  # kept in the image's manifest record


@hookimpl
def job_identity(recipe: Recipe) -> Any:
    """The watermark changes pixels outside ``apply``: its drawing joins the job keys (the plugin's
    version too, added by the runner), so upgrading this plugin regenerates watermarked images."""
    return {"watermark": "bottom band"} if recipe.optimizations.get("watermark") not in (None, False) else None


@hookimpl
def run_finished(recipe: Recipe, output_dir: Path, manifest: dict[str, Any]) -> None:
    record = (manifest.get("optimizations") or {}).get("watermark")
    if not record:
        return
    report = {"watermarked": [image["file"] for image in manifest["images"]], "settings": record["settings"]}
    atomic_write(output_dir / "watermark-report.json", json.dumps(report, indent=2).encode())


PRESETS = {"sd15": {"s1": 0.9, "s2": 0.2, "b1": 1.5, "b2": 1.6}, "sdxl": {"s1": 0.6, "s2": 0.4, "b1": 1.1, "b2": 1.2}}


class FreeuPreset(AxisKind):
    """``freeu_preset = ["sd15", "sdxl"]``: FreeU with each model family's published values."""

    name = "freeu_preset"
    description = "sd15 or sdxl: FreeU with that family's values"

    def check(self, axis: str, values: list[Any], ctx: AxisContext) -> list[Problem]:
        return [ctx.problem(f"matrix.axes.{axis}.{i}", f"expected one of {', '.join(PRESETS)}, got {v!r}")
                for i, v in enumerate(values) if v not in PRESETS]

    def place(self, axis: str, value: Any, data: dict[str, Any]) -> list[tuple[str, Any]]:
        return [("optimizations.freeu", dict(PRESETS[value]))]

    def schema(self, optimizations: Any) -> dict[str, Any]:
        return {"enum": list(PRESETS)}


@hookimpl
def register_axis_kinds(register: Callable[[AxisKind], None]) -> None:
    register(FreeuPreset())
