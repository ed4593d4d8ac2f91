"""One run at a time per output folder: an OS file lock held for the whole run.

A run (each ``--watch`` round, ``--reproduce`` in the folder it writes to) holds ``fcntl.flock``
on ``.recipe-run.lock`` inside its run folder, from before its model loads until its manifest,
grid and gallery are written. The file says who holds it (pid and command line). A second run
into the same folder refuses at once (:class:`~recipe_runner.errors.RecipeError`, exit 2, naming
the other process), or with ``--wait`` waits for it to finish. The kernel releases the lock of a
process that dies however it dies (SIGKILL included), so a lock left by a killed run never blocks:
the file may stay, the lock does not.

Before taking it, the output root, the run folder and its ``history`` folder are checked not to be
symbolic links (a run writes beside them, never through them: RecipeError naming the link). Once it
is held, no other process writes in the folder, so temporary files left by a killed run are removed
(:func:`recipe_runner.paths.remove_temporary`). The lock file is removed when the run ends.

Light module: no torch.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..base import report
from ..base.errors import RecipeError
from ..base.paths import remove_temporary

LOCK_NAME = ".recipe-run.lock"
_held: dict[str, int] = {}  # run folders this process holds -> how many holders nest


def check_links(folder: Path) -> None:
    """RecipeError (exit 2) when the output root, the run ``folder`` or its ``history`` folder is a
    symbolic link (or not a folder): a run never writes through a link."""
    for path, what in ((folder.parent, "output root"), (folder, "run folder"), (folder / "history", "history folder"),
                       (folder / ".recipe-runner", "machine-local folder (.recipe-runner)")):
        if path.is_symlink():
            raise RecipeError.one(f"the {what} is a symbolic link: refusing to write through it (it points to "
                                  f"{os.readlink(path)}; remove the link or choose another output folder)",
                                  file=str(path))
        if path.exists() and not path.is_dir():
            raise RecipeError.one(f"the {what} exists and is not a folder", file=str(path))


def holder(path: Path) -> str:
    """Who holds the lock at ``path``, as its file says (pid and command line)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return "another process"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "another process"
        text = os.read(fd, 4096).decode("utf-8", "replace")
    finally:
        os.close(fd)
    try:
        data = json.loads(text)
        return f"process {int(data['pid'])} ({str(data.get('command', ''))[:200]})"
    except (ValueError, KeyError, TypeError):
        return "another process"


def _open(path: Path) -> int:
    """The lock file's descriptor: a regular file of its own (a planted link, FIFO or folder at its
    name is removed or refused, never followed or opened for reading)."""
    for _ in range(5):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError:
            if path.is_symlink() or (path.exists() and not path.is_dir() and not path.is_file()):
                path.unlink()
                continue
            raise
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
        os.close(fd)
        path.unlink()
    raise RecipeError.one(f"cannot make the run lock {path}", file=str(path))


def _try_lock(fd: int, wait: bool) -> bool:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _same_file(fd: int, path: Path) -> bool:
    """The locked descriptor is still the file at ``path`` (the holder before removes it on release)."""
    try:
        here, there = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


@contextmanager
def hold(folder: Path, *, wait: bool = False, command: str | None = None) -> Iterator[Path]:
    """Hold the run lock of ``folder`` (made when missing) for the ``with`` block; nested holds in
    one process share it. RecipeError (exit 2) when another process holds it and ``wait`` is false;
    with ``wait``, blocks until it is free. Yields the lock file's path."""
    key = str(folder.absolute())
    path = folder / LOCK_NAME
    if _launched_rank() > 0:  # under torchrun/accelerate the ranks run as one: rank 0 holds the lock
        check_links(folder)
        yield path
        return
    if key in _held:
        _held[key] += 1
        try:
            yield path
        finally:
            _held[key] -= 1
        return
    check_links(folder)
    created = [p for p in [folder, *folder.parents] if not p.exists() and not p.is_symlink()]  # innermost first
    folder.mkdir(parents=True, exist_ok=True)
    check_links(folder)  # made just now: still no link on the way
    told = False
    while True:
        fd = _open(path)
        locked = _try_lock(fd, wait=False)
        if not locked and not wait:
            who = holder(path)
            os.close(fd)
            raise RecipeError.one(f"{who} is running into this folder now; wait until it ends, or run with --wait "
                                  "to wait for it (two runs into one folder would overwrite each other's images)",
                                  file=str(folder))
        if not locked:
            if not told:
                report.note(f"waiting: {holder(path)} is running into {folder}")
                told = True
            _try_lock(fd, wait=True)
        if _same_file(fd, path):
            break
        os.close(fd)  # the holder before removed the file as it released it: lock the new one
        time.sleep(0.01)
    try:
        record = {"pid": os.getpid(), "command": command if command is not None else _command(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode("utf-8") + b"\n", 0)
        remove_temporary(folder)
        _held[key] = 1
        yield path
    finally:
        _held.pop(key, None)
        try:
            if _same_file(fd, path):
                path.unlink()  # while locked: a waiter then sees a removed file and locks a new one
        finally:
            os.close(fd)  # releases the lock
        for made in created:  # a run that ended before writing anything leaves no empty folders
            try:
                made.rmdir()
            except OSError:
                break


def _command() -> str:
    """This process's command line, as the user typed it (``recipe-run ...`` for ``python -m``)."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("__main__.py", "recipe-run"):
        argv[0] = "recipe-run"
    return " ".join(argv)


def _launched_rank() -> int:
    """This process's rank under a launcher (0 without one): the ranks of one launch share the lock
    that rank 0 holds."""
    try:
        return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
    except ValueError:
        return 0


def held(folder: Path) -> bool:
    """Whether this process holds the run lock of ``folder``."""
    return str(folder.absolute()) in _held
