"""Paths and files, shared by the light modules (safety, lock, filehashes, outputs) and by build:
recipe-runner's cache folder, whether an id is written as a path, atomic writes and file hashes.

No half-written file ever exists under a final name: :func:`atomic_write` writes to a hidden
temporary file in the same folder, flushes and fsyncs it, then ``os.replace``s it into place.
Light module: the standard library only.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from .report import warn
from .safe_read import sha256_regular

TMP_MARK = ".tmp-"
TMP_NAME = re.compile(r"\..+" + re.escape(TMP_MARK) + r"\d+")  # what atomic_write leaves when killed mid-write


_said: set[str] = set()


def warn_once(message: str) -> None:
    """:func:`warn`, once per message and process (a folder is read by the look before a run and by
    the run itself)."""
    if message not in _said:
        _said.add(message)
        warn(message)


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


def under(path: Path, folder: Path) -> str | None:
    """``path`` relative to ``folder`` (POSIX form) when it lies inside it, else None."""
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return None


def relative_from(path: Path, folder: Path) -> str:
    """``path`` as seen from ``folder`` (``../../recipes``), POSIX form; absolute when no relative
    path leads there (another drive on Windows)."""
    try:
        return Path(os.path.relpath(path, folder)).as_posix()
    except ValueError:
        return str(path)


GITIGNORE_TEXT = "# created by recipe-run; a committed baseline: recipe-run --update-baseline\n*\n"


def ignore_created_root(root: Path) -> bool:
    """Write ``root/.gitignore`` holding ``*`` (after a comment line saying who wrote it and how to
    commit a baseline instead), as pytest and ruff do for their caches: for an output or report root
    the tool has just created. Never overwrites a file (or link) of that name: the file appears
    whole or not at all (a temporary file, fsynced, then hard-linked into place, which fails when the
    name exists). Returns whether it was written."""
    target = root / ".gitignore"
    if target.exists() or target.is_symlink() or not root.is_dir():
        return False
    tmp = root / f".gitignore{TMP_MARK}{os.getpid()}"
    try:
        atomic_write(tmp, GITIGNORE_TEXT.encode("utf-8"))
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: the check above has to do
            if target.exists() or target.is_symlink():
                return False
            os.replace(tmp, target)
        _fsync_dir(root)
        return True
    except OSError:
        return False
    finally:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def is_local_reference(value: str) -> bool:
    """Whether a model, component or adapter id is written as a path (not a Hub repo id)."""
    return value.startswith(("/", "./", "../", "~", ".\\", "..\\")) or (len(value) > 1 and value[1] == ":")


def repository_root(path: Path) -> Path | None:
    """The git repository ``path`` (a file or folder) is in: the nearest folder above it holding a
    ``.git`` folder or file (a worktree's); None outside any. No git command is run."""
    start = path.resolve()
    for folder in (start, *start.parents) if start.is_dir() else start.parents:
        if os.path.lexists(folder / ".git"):
            return folder
    return None


def boundary(recipe_file: Path) -> tuple[Path, str]:
    """What a recipe's files should stay inside to travel with it: its git repository, else its
    folder; with how to name it (``this repository``, ``this recipe's folder``)."""
    root = repository_root(recipe_file)
    if root is not None:
        return root, "this repository"
    return recipe_file.resolve().parent, "this recipe's folder"


def is_within(path: Path, folder: Path) -> bool:
    """``path`` (resolved) is ``folder`` or below it."""
    try:
        path.resolve().relative_to(folder)
    except ValueError:
        return False
    return True


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


def write_if_changed(path: Path, data: bytes) -> bool:
    """:func:`atomic_write`, unless ``path`` is a regular file holding ``data`` already (then left
    untouched, its mtime too: a contact sheet or gallery drawn again the same). Returns whether it wrote."""
    try:
        if regular_file(path) and path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except OSError:
        pass
    atomic_write(path, data)
    return True


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the system allows it)."""
    _fsync_dir(folder)


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
