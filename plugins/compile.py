"""``compile``: ``torch.compile`` the denoiser (and optionally the VAE's decoder).

    [optimizations]
    compile = true
    compile = { mode = "max-autotune", fullgraph = true }
    compile = { regional = true }        # compile_repeated_blocks: only the repeated blocks
    compile = { vae = true, dynamic = false }

Compilation happens on the first call, so the plugin makes one warm-up call right after
building (same parameters and batch size as the recipe's first batch, fewer steps) and records
its duration as ``warmup_seconds`` with the run's timings (``.recipe-runner/run.json``): the
per-batch times in ``timings`` are then steady-state times. Batches keep one shape (the plan's
batch size), so nothing recompiles mid-run, except a smaller last batch when the job count is
not a multiple of ``batch_size`` (one more compilation, or none with ``dynamic = true``).

Compilation is paid once per machine, not once per run (``cache = true``, the default): inductor's
and triton's caches live in the recipe-runner cache folder (``compile/``, unless
``TORCHINDUCTOR_CACHE_DIR`` / ``TRITON_CACHE_DIR`` say otherwise), and after the warm-up the
compiled artifacts (``torch.compiler.save_cache_artifacts``, the "mega-cache") are saved under a
key of the torch version, device, dtype, model, denoiser, settings and batch size; the next run
with the same key loads them before compiling. The manifest records ``cache`` as ``saved``,
``loaded``, ``not saved`` (no warm-up, or a backend that leaves no artifacts) or ``off``.

Compiled kernels fuse and reorder operations: images agree with the plain run to float rounding,
not bit for bit. Cannot be combined with sequential offload.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from recipe_runner.api import (
    BuildContext,
    Optimization,
    OptimizationSettings,
    Unsupported,
    atomic_write,
    cache_dir,
    hookimpl,
    planned_batches,
)

from .common import denoiser

WARMUP_STEPS = 2
CACHE_VARIABLES = {"TORCHINDUCTOR_CACHE_DIR": "inductor", "TRITON_CACHE_DIR": "triton"}


def _torch_default(value: str) -> bool:
    """Whether ``value`` is the folder torch writes into the variable itself once it has looked
    (``<tmp>/torchinductor_<user>``, triton's below it): torch's choice, not the user's."""
    import getpass
    import re
    import tempfile

    try:
        user = re.sub(r'[\\/:*?"<>|]', "_", getpass.getuser())
    except (KeyError, ModuleNotFoundError, OSError):
        return False
    default = os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")
    return value == default or value.startswith(default + os.sep)


# Set by the user (at start-up, or before this plugin loaded, unless torch's own default): kept as they are.
USER_SET = {name for name in CACHE_VARIABLES if name in os.environ and not _torch_default(os.environ[name])}


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
    cache: bool = True
    """keep compiled artifacts in the recipe-runner cache folder: later runs skip most of the compile
    (saved after the warm-up, so it needs warmup = true)"""


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


def cache_folder() -> Path:
    return cache_dir() / "compile"


def artifacts_path(settings: Settings, context: BuildContext, name: str) -> Path:
    """Where the compiled artifacts of this model, denoiser, settings and batch size are kept."""
    import torch

    key = json.dumps({"torch": torch.__version__, "device": str(context.device), "dtype": context.dtype,
                      "model": context.location, "denoiser": name, "task": context.task,
                      "settings": settings.model_dump(mode="json", exclude={"required", "warmup", "cache"}),
                      "batch_size": context.recipe.run.batch_size}, sort_keys=True)
    return cache_folder() / f"artifacts-{hashlib.sha256(key.encode()).hexdigest()[:24]}.bin"


def load_artifacts(path: Path, context: BuildContext) -> bool:
    """Load earlier compiled artifacts into torch's caches; a broken file is only a slower start."""
    import torch

    folder = cache_folder()
    for name, sub in CACHE_VARIABLES.items():
        if name not in USER_SET:  # torch itself fills in its default once it has looked
            os.environ[name] = str(folder / sub)
    if not path.is_file():
        return False
    try:
        torch.compiler.load_cache_artifacts(path.read_bytes())
    except Exception as exc:
        context.warn(f"optimizations.compile: cannot load the compile cache {path}: {exc}")
        return False
    return True


def save_artifacts(path: Path) -> bool:
    import torch

    saved = torch.compiler.save_cache_artifacts()
    if not saved or not saved[0]:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, saved[0])
    return True


def apply(pipe: Any, settings: Settings, context: BuildContext) -> dict:
    name, model = denoiser(pipe)
    options = _options(settings)
    artifacts = artifacts_path(settings, context, name) if settings.cache else None
    loaded = load_artifacts(artifacts, context) if artifacts is not None else False
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
    details["cache"] = "off" if artifacts is None else "loaded" if loaded else "not saved"
    if artifacts is not None and not loaded and settings.warmup and save_artifacts(artifacts):
        details["cache"] = "saved"
    return details


@hookimpl
def register_optimizations() -> list[Optimization]:
    return [Optimization(name="compile", settings=Settings, stage="compile", apply=apply, check=check,
                         description="torch.compile the denoiser (optionally the VAE); warm-up reported apart")]
