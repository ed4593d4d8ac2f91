"""Paths and files, shared by the light modules (safety, lock, filehashes, outputs) and by build:
where a model reference points, recipe-runner's cache folder, atomic writes and file hashes.

No half-written file ever exists under a final name: :func:`atomic_write` writes to a hidden
temporary file in the same folder, flushes and fsyncs it, then ``os.replace``s it into place.
Light module: no torch (a ``tiny:`` id is resolved through :mod:`recipe_runner.tiny`, which imports
torch only when it has to build a pipeline that is not cached yet).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import tiny
from .errors import RecipeError
from .loading import problem_at

if TYPE_CHECKING:
    from .loading import LoadedRecipe

TMP_MARK = ".tmp-"
TMP_NAME = re.compile(r"\..+" + re.escape(TMP_MARK) + r"\d+")  # what atomic_write leaves when killed mid-write
IMAGE_SUFFIXES = (".png", ".webp", ".jpg")  # what a record's ``file`` may name (outputs.EXTENSIONS)
_warned: set[tuple[int, str, str]] = set()


def warn(message: str) -> None:
    """A warning on stderr (the light modules' own: they cannot import prepare's)."""
    print(f"warning: {message}", file=sys.stderr)


_said: set[str] = set()


def warn_once(message: str) -> None:
    """:func:`warn`, once per message and process (a folder is read by the look before a run and by
    the run itself)."""
    if message not in _said:
        _said.add(message)
        warn(message)


def record_file(folder: Path, name: Any, what: str = "a record",
                warn: Callable[[str], None] | None = warn) -> Path | None:
    """The path a manifest or journal record's ``file`` names in the run folder ``folder``, only
    when it is a plain image file name there (no folder part, no ``..``, not hidden, an image
    suffix); else None, with one warning per folder and name (``warn=None``: silently). A record
    can never make a run read, write, move or link anything outside its folder."""
    if isinstance(name, str) and plain_file_name(name):
        return folder / name
    shown = repr(name)[:120]
    if warn is not None and (id(warn), str(folder), shown) not in _warned:
        _warned.add((id(warn), str(folder), shown))
        warn(f"{folder}: {what} names the file {shown}, which is not a plain image file name in the run "
             "folder: that record is ignored")
    return None


def plain_file_name(name: str) -> bool:
    """``name`` is a file name of its own (what a run names its images): no separator, not ``.``
    or ``..`` nor hidden, no control character, an image suffix, at most 255 bytes."""
    return (0 < len(name.encode("utf-8", "surrogatepass")) <= 255 and not name.startswith(".")
            and "/" not in name and "\\" not in name and not any(ord(c) < 32 or ord(c) == 127 for c in name)
            and name.lower().endswith(IMAGE_SUFFIXES) and Path(name).name == name)


def regular_file(path: Path) -> bool:
    """``path`` is a regular file itself (not a link to one, not a FIFO or device)."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def remove_temporary(folder: Path) -> list[str]:
    """Remove what :func:`atomic_write` left in ``folder`` (and its history folders) when a process
    was killed mid-write: ``.NAME.tmp-PID`` files and links. Only safe while the folder's run lock
    (:mod:`recipe_runner.runlock`) is held: then no other process writes there. Returns the names."""
    removed: list[str] = []
    folders = [folder]
    history = folder / "history"
    if history.is_dir() and not history.is_symlink():
        folders += [p for p in history.iterdir() if p.is_dir() and not p.is_symlink()]
    for where in folders:
        try:
            entries = list(os.scandir(where))
        except OSError:
            continue
        for entry in entries:
            if TMP_NAME.fullmatch(entry.name) and (entry.is_symlink() or entry.is_file(follow_symlinks=False)):
                try:
                    os.unlink(entry.path)
                except OSError:
                    continue
                removed.append(str(Path(entry.path).relative_to(folder)))
    return removed


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


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
