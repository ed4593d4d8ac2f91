"""``compile``: ``torch.compile`` the denoiser (and optionally the VAE's decoder).

    [optimizations]
    compile = true
    compile = { mode = "max-autotune", fullgraph = true }
    compile = { regional = true }        # compile_repeated_blocks: only the repeated blocks
    compile = { vae = true, dynamic = false }

Compilation happens on the first call, so the plugin makes one warm-up call right after
building (same parameters and batch size as the recipe's first batch, fewer steps) and records
its duration as ``warmup_seconds`` in the manifest's ``optimizations.compile`` record: the
per-batch times in ``timings`` are then steady-state times. Batches keep one shape (the plan's
batch size), so nothing recompiles mid-run, except a smaller last batch when the job count is
not a multiple of ``batch_size`` (one more compilation, or none with ``dynamic = true``).

Compiled kernels fuse and reorder operations: images agree with the plain run to float rounding,
not bit for bit. Cannot be combined with sequential offload.
"""

from __future__ import annotations

import shutil
import time
from typing import Any, Literal

from recipe_runner.api import BuildContext, Optimization, OptimizationSettings, Unsupported, hookimpl, planned_batches

from .common import denoiser

WARMUP_STEPS = 2


class Settings(OptimizationSettings):
    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    fullgraph: bool = False
    dynamic: bool | None = None
    """None: torch decides (static first, dynamic after a shape change)"""
    backend: str = "inductor"
    regional: bool = False
    """compile only the model's repeated blocks (compile_repeated_blocks): much faster to compile"""
    vae: bool = False
    """also compile the VAE's decode"""
    warmup: bool = True
    """run one warm-up call after building, reported as warmup_seconds"""


def check(settings: Settings, context: BuildContext) -> None:
    warn_about_batch_shapes(settings, context)
    if settings.backend == "inductor" and str(context.device) == "cpu":
        if not any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++")):
            raise Unsupported("torch.compile's inductor backend needs a C++ compiler on a CPU (none found)")


def warn_about_batch_shapes(settings: Settings, context: BuildContext) -> None:
    """The plan's batches should share one size: say so when one does not (it compiles again)."""
    if settings.dynamic:
        return
    sizes = sorted({batch.size for batch in planned_batches(context)})
    if len(sizes) > 1:
        context.warn(f"optimizations.compile: batches of {' and '.join(map(str, sizes))} images: each new size "
                     "compiles again (a job count that is a multiple of batch_size, or dynamic = true, avoids it)")


def _options(settings: Settings) -> dict:
    return {"mode": settings.mode, "fullgraph": settings.fullgraph, "dynamic": settings.dynamic,
            "backend": settings.backend}


def warm_up(pipe: Any, context: BuildContext) -> float:
    """One call shaped like the recipe's first batch; returns its seconds (compilation included)."""
    import torch

    recipe = context.recipe
    size = recipe.run.batch_size if isinstance(recipe.run.batch_size, int) else 1
    kwargs = dict(recipe.params)
    kwargs["num_inference_steps"] = min(WARMUP_STEPS, int(kwargs.get("num_inference_steps", WARMUP_STEPS)))
    kwargs["prompt"] = ["warm-up"] * size
    kwargs["generator"] = [torch.Generator("cpu").manual_seed(0) for _ in range(size)]
    start = time.perf_counter()
    pipe(**kwargs)
    return time.perf_counter() - start


def apply(pipe: Any, settings: Settings, context: BuildContext) -> dict:
    name, model = denoiser(pipe)
    options = _options(settings)
    if settings.regional:
        if not getattr(model, "_repeated_blocks", None):
            raise Unsupported(f"the {name} ({type(model).__name__}) declares no repeated blocks for "
                              "regional compilation: set regional = false")
        model.compile_repeated_blocks(**options)
    else:
        model.compile(**options)
    if settings.vae:
        import torch

        pipe.vae.decode = torch.compile(pipe.vae.decode, **options)
    details: dict[str, Any] = {"compiled": [name] + (["vae.decode"] if settings.vae else [])}
    if settings.warmup and context.task == "text-to-image":
        details["warmup_seconds"] = round(warm_up(pipe, context), 3)
    return details


@hookimpl
def register_optimizations():
    return [Optimization(name="compile", settings=Settings, stage="compile", apply=apply, check=check,
                         description="torch.compile the denoiser (optionally the VAE); warm-up reported apart")]
