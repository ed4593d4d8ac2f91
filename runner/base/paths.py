"""Paths and files, shared by the light modules (safety, lock, filehashes, outputs) and by build:
recipe-runner's cache folder, whether an id is written as a path, atomic writes and file hashes.

No half-written file ever exists under a final name: :func:`atomic_write` writes to a hidden
temporary file in the same folder, flushes and fsyncs it, then ``os.replace``s it into place.
Light module: the standard library only.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

TMP_MARK = ".tmp-"


def cache_dir() -> Path:
    """Root of recipe-runner's cache: $RECIPE_RUNNER_CACHE or ~/.cache/recipe-runner."""
    env = os.environ.get("RECIPE_RUNNER_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "recipe-runner"


def is_local_reference(value: str) -> bool:
    """Whether a model, component or adapter id is written as a path (not a Hub repo id)."""
    return value.startswith(("/", "./", "../", "~", ".\\", "..\\")) or (len(value) > 1 and value[1] == ":")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either absent, the old file, or complete."""
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    if tmp.is_symlink():
        tmp.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        with os.fdopen(os.open(tmp, flags, 0o644), "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
