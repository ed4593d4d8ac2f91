"""What counts as running out of memory: the runner halves the batch and retries on it, and a
plugin hook's out-of-memory error passes through unchanged (it is the device's, not the plugin's)."""

from __future__ import annotations

OUT_OF_MEMORY_MESSAGES = (
    "out of memory",  # CUDA, MPS: "CUDA out of memory", "MPS backend out of memory"
    "defaultcpuallocator",  # CPU: "[enforce fail at alloc_cpu.cpp] ... DefaultCPUAllocator: can't allocate memory"
    "can't allocate memory",
    "cannot allocate memory",  # ENOMEM spelled by the C library
)


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.OutOfMemoryError, MemoryError, and the CUDA / MPS / CPU allocator RuntimeErrors."""
    import torch

    oom_type = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(exc, (oom_type, MemoryError)):
        return True
    message = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(text in message for text in OUT_OF_MEMORY_MESSAGES)
