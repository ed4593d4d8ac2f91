"""Paths and files, shared by the light modules (safety, lock, filehashes, outputs) and by build:
where a model reference points, recipe-runner's cache folder, atomic writes and file hashes.

No half-written file ever exists under a final name: :func:`atomic_write` writes to a hidden
temporary file in the same folder, flushes and fsyncs it, then ``os.replace``s it into place.
Light module: no torch (a ``tiny:`` id is resolved through :mod:`recipe_runner.tiny`, which imports
torch only when it has to build a pipeline that is not cached yet).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from . import tiny
from .errors import RecipeError
from .loading import problem_at
from .safe_read import sha256_regular

if TYPE_CHECKING:
    from .loading import LoadedRecipe

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


def locate(model_id: str, folder: Path, key: str, loaded: LoadedRecipe | None) -> str:
    """A model or component ``id`` as from_pretrained takes it: a built-in tiny pipeline
    (``tiny:sd15``), a local folder (relative to the recipe file that wrote it), or a Hub id.
    RecipeError (exit 2, located at ``key``) for an unknown tiny kind or a missing local folder."""
    if model_id.startswith(tiny.MODEL_ID_PREFIX):
        try:
            return str(tiny.ensure(model_id[len(tiny.MODEL_ID_PREFIX):]))
        except ValueError as exc:
            raise RecipeError([problem_at(loaded, key, str(exc))]) from exc
    candidate = (folder / Path(model_id).expanduser()).resolve()
    if candidate.is_dir():
        return str(candidate)
    if is_local_reference(model_id):
        raise RecipeError([problem_at(loaded, key, f"no such folder: {candidate}")])
    return model_id


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


def sha256_file(path: Path, limit: int | None = None) -> str:
    """The SHA-256 of a regular file's bytes (read in 1 MiB chunks, up to the size it had when
    opened). A FIFO, device or ``/proc`` file is refused (:class:`safe_read.NotRegularFile`, an
    OSError), never read: hashing one would hang or read without end."""
    return sha256_regular(path, limit)
