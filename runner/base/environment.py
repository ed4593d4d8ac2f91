"""The environment that decides the pixels, as the manifest records it: library versions, the
device and its name, the dtype actually used, and the CPU thread count (it changes CPU kernel
rounding, so re-creating an image needs it)."""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def pinned_threads(count: int | None) -> Iterator[None]:
    """``[run] threads``: torch's CPU thread count is ``count`` inside the block, and what it was
    before after it (two recipes of one invocation each get theirs). ``None``: left alone."""
    if count is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def set_deterministic(enabled: bool) -> None:
    """``[run] deterministic = true``: torch's deterministic algorithms, no cuDNN autotuning."""
    import os

    import torch

    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=False)
    torch.backends.cudnn.benchmark = False


# --- the device, decided without importing torch ------------------------------------------------


def _torch_cuda_build() -> str | None | bool:
    """The CUDA version the installed torch was built for, read from ``torch/version.py`` without
    importing torch: a string, None for a build without CUDA or ROCm (torch.cuda is never
    available), False when torch is not installed, the file cannot be read, or the build is a ROCm
    one (``torch.cuda`` drives AMD GPUs there): undecided."""
    import importlib.util
    from pathlib import Path

    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    try:
        text = (Path(next(iter(spec.submodule_search_locations))) / "version.py").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, StopIteration):
        return False
    return cuda_of_version_file(text)


def cuda_of_version_file(text: str) -> str | None | bool:
    """``torch/version.py``'s ``cuda``, as :func:`_torch_cuda_build` returns it."""
    import re

    def field(name: str) -> str | None | bool:
        found = re.search(rf"^{name}\s*(?::[^=]*)?=\s*(None|'[^']*'|\"[^\"]*\")\s*$", text, re.M)
        if found is None:
            return False
        return None if found.group(1) == "None" else found.group(1).strip("'\"")

    cuda, hip = field("cuda"), field("hip")
    if cuda is None and hip is not None:  # a ROCm build (or a version.py this does not know): undecided
        return False
    return cuda


def _nvidia_driver() -> bool | None:
    """Whether an NVIDIA driver is loaded (Linux: ``/proc/driver/nvidia`` or ``/dev/nvidia*``);
    None where that cannot be told without CUDA itself (other systems)."""
    import glob
    import os

    if not sys.platform.startswith("linux"):
        return None
    if os.path.exists("/dev/dxg"):  # WSL 2: the Windows driver serves CUDA through /dev/dxg
        return None
    return os.path.exists("/proc/driver/nvidia/version") or bool(glob.glob("/dev/nvidia[0-9]*"))


def device_unavailable(spec: str) -> str | None:
    """Why the device ``spec`` ("cuda", "cuda:N", "mps") certainly cannot be used here, decided
    without importing torch (``--dry-run`` stays light), or None when it may be (the run then asks
    torch). Certain: a CPU-only torch build, no NVIDIA driver on Linux, MPS off macOS."""
    if spec.startswith("cuda"):
        build = _torch_cuda_build()
        if build is None:
            return "CUDA is not available on this machine (the installed torch is a CPU-only build)"
        if build is not False and _nvidia_driver() is False:
            return f"CUDA is not available on this machine (torch is built for CUDA {build}, but no NVIDIA driver is loaded)"
        return None
    if spec == "mps" and sys.platform != "darwin":
        return "MPS is not available on this machine (MPS is Apple silicon's GPU, on macOS only)"
    return None


def probable_device(spec: str) -> str | None:
    """The device ``spec`` resolves to, decided without torch, or None when only torch can tell:
    ``auto`` is "cpu" when neither CUDA nor MPS can be here."""
    if spec != "auto":
        return spec
    if device_unavailable("cuda") and device_unavailable("mps"):
        return "cpu"
    return None
