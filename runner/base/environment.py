"""The environment that decides the pixels, as the manifest records it: library versions, the
device and its name, the dtype actually used, and the CPU thread count (it changes CPU kernel
rounding, so re-creating an image needs it)."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import Any

from recipe_runner import __version__


def _version(dist: str) -> str | None:
    version = getattr(sys.modules.get(dist), "__version__", None)  # already imported: no metadata scan
    if isinstance(version, str):
        return version
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    if device == "mps":
        return "Apple MPS"
    return platform.processor() or platform.machine()


def describe(device: str, dtype: str, generator_device: str, deterministic: bool) -> dict[str, Any]:
    import torch


    return {
        "recipe_runner": __version__,
        "torch": torch.__version__,
        "diffusers": _version("diffusers"),
        "transformers": _version("transformers"),
        "accelerate": _version("accelerate"),
        "python": platform.python_version(),
        "platform": f"{sys.platform}-{platform.machine()}",
        "device": device,
        "device_name": device_name(device),
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "generator_device": generator_device,
        "deterministic": deterministic,
        "world_size": 1,
    }


def set_deterministic(enabled: bool) -> None:
    """``[run] deterministic = true``: torch's deterministic algorithms, no cuDNN autotuning."""
    import os

    import torch

    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=False)
    torch.backends.cudnn.benchmark = False
