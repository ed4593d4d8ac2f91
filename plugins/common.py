"""Helpers shared by the built-in optimization plugins (not a plugin itself: not in BUILTIN).

Light at import: torch and diffusers are imported inside the functions that need them.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from recipe_runner.api import BuildContext, Conflict, Unsupported


def denoiser(pipe: Any) -> tuple[str, Any]:
    """The pipeline's denoising model and its component name: ``transformer`` or ``unet``."""
    for name in ("transformer", "unet"):
        model = getattr(pipe, name, None)
        if model is not None:
            return name, model
    raise Unsupported(f"{type(pipe).__name__} has neither a transformer nor a unet")


def has_package(name: str) -> bool:
    """Whether ``name`` is importable, without importing it (a missing package is a refusal)."""
    return importlib.util.find_spec(name) is not None


def require_package(name: str, purpose: str, install: str | None = None) -> None:
    if not has_package(name):
        raise Unsupported(f"{purpose} needs the {name!r} package, which is not installed "
                          f"(pip install {install or name})")


def require_cuda(context: BuildContext, purpose: str) -> None:
    """Refuse unless the run's device is a CUDA device ("auto" before loading: only torch can tell)."""
    if str(context.device) == "auto":
        return
    if not str(context.device).startswith("cuda"):
        raise Unsupported(f"{purpose} needs a CUDA GPU; this run's device is {context.device!r}")


def local_model_index(context: BuildContext) -> dict[str, Any] | None:
    """The pipeline's model_index.json when the model is a local folder (None for a Hub id):
    lets a check see the pipeline's layout before any weights load."""
    path = Path(context.location) / "model_index.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def declared_denoiser(context: BuildContext) -> str | None:
    """``"transformer"`` or ``"unet"`` as model_index.json declares it, or None when unknown."""
    index = local_model_index(context)
    if index is None:
        return None
    for name in ("transformer", "unet"):
        entry = index.get(name)
        if isinstance(entry, (list, tuple)) and entry and entry[0] is not None:
            return name
    return None


def conflict(context: BuildContext, others: tuple[str, ...], reason: str) -> None:
    """Refuse when any of ``others`` is enabled too (``context.enabled``): a known-bad combination."""
    clash = [name for name in others if name in context.enabled]
    if clash:
        raise Conflict(f"cannot be combined with {clash[0]}: {reason}")
