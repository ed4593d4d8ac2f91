"""SHA-256 of model files, remembered between runs: a file is hashed once per version, not on every
run. Lock files (``--lock`` / ``--locked``) and resume keys (a local model's files are part of every
job's identity) both need the hashes of whole model folders, which can hold gigabytes.

A file's hash is remembered under its resolved path with its size, modification and change times
and inode; when any of them changes, the file is hashed again (the change time cannot be set back
by hand, unlike the modification time). A file changed in the last two seconds is not remembered:
file times are coarser than that on some file systems, so a write right after hashing could keep
them. The memory is one JSON file, ``file-hashes.json`` in recipe-runner's cache folder
($RECIPE_RUNNER_CACHE or ~/.cache/recipe-runner); when it is unreadable or cannot be written,
files are simply hashed again.
Light module: no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .paths import atomic_write, cache_dir, sha256_file
from .safe_read import NotRegularFile, read_text, size_text

FILE_NAME = "file-hashes.json"
SETTLED_NS = 2_000_000_000  # a file is remembered once it has not changed for this long
# A model folder is a handful of configs and weight files (a Hub snapshot with every variant, a few
# hundred); a folder beyond these bounds is not a model (``model.id = "/"``) and is refused before
# any file in it is read.
MAX_FOLDER_FILES = 10_000
MAX_FOLDER_ENTRIES = 20_000  # files and folders looked at while listing, hidden ones included
MAX_FOLDER_BYTES = 4 << 40


class FolderTooLarge(ValueError):
    """A model folder with more files or bytes than a model has: nothing in it is hashed."""


class FileHashes:
    """The remembered hashes, loaded once; :meth:`save` writes back what this instance hashed.
    What an instance hashed it also keeps for its own life (one run), settled or not: a run that
    needs a folder's hashes twice (its job keys, the models it records) reads each file once."""

    def __init__(self, path: Path | None = None):
        self.path = path if path is not None else cache_dir() / FILE_NAME
        try:
            known = json.loads(read_text(self.path))
        except (OSError, ValueError):
            known = {}
        self.known: dict[str, dict[str, Any]] = known if isinstance(known, dict) else {}
        self.hashed = 0  # files read and hashed by this instance (the rest came from memory)
        self.this_run: dict[str, tuple[list[int], str]] = {}  # resolved path -> (stamp, sha256) hashed here

    def sha256(self, file: Path) -> str:
        resolved = file.resolve()
        st = resolved.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        entry = self.known.get(str(resolved))
        if isinstance(entry, dict) and entry.get("stat") == stamp and isinstance(entry.get("sha256"), str):
            return entry["sha256"]
        seen = self.this_run.get(str(resolved))
        if seen is not None and seen[0] == stamp:
            return seen[1]
        digest = sha256_file(resolved)
        self.hashed += 1
        self.this_run[str(resolved)] = (stamp, digest)
        if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > SETTLED_NS:
            self.known[str(resolved)] = {"stat": stamp, "sha256": digest}
        else:
            self.known.pop(str(resolved), None)
        return digest

    def folder(self, folder: Path) -> dict[str, str]:
        """SHA-256 of every regular file below ``folder`` by relative POSIX path (hidden ones skipped;
        links to files followed, links to folders not). The files are listed first, and a folder
        with more than ``MAX_FOLDER_FILES`` files or ``MAX_FOLDER_BYTES`` bytes raises
        :class:`FolderTooLarge` before any is read; a file that is not a regular file in the end
        (a link to a FIFO, a device or a ``/proc`` file) raises OSError, never hangs."""
        found: dict[str, str] = {}
        for rel, path in list_folder(folder):
            try:
                found[rel] = self.sha256(path)
            except NotRegularFile as exc:  # named as the folder holds it, not only where its link points
                raise NotRegularFile(f"{rel}: {exc}", exc.kind) from None
        return found

    def save(self) -> None:
        """Remember what was hashed (entries of files that no longer exist are dropped)."""
        if not self.hashed:
            return
        kept = {name: entry for name, entry in self.known.items() if os.path.isfile(name)}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps(kept, sort_keys=True).encode("utf-8"))
        except OSError:
            pass  # a read-only cache only costs hashing again next time
        self.hashed = 0


def list_folder(folder: Path) -> list[tuple[str, Path]]:
    """The regular files below ``folder`` that :meth:`FileHashes.folder` hashes, in order, by
    relative POSIX path; FolderTooLarge beyond the bounds (counted while listing: a walk of ``/``
    stops after ``MAX_FOLDER_ENTRIES`` entries)."""
    found: list[tuple[str, Path]] = []
    total = 0
    failed: OSError | None = None  # raised once the walk is done: the bounds speak first
    for path in _walk(folder):
        try:
            if not path.is_file():
                continue
            total += path.stat().st_size
        except OSError as exc:
            failed = failed or exc
            continue
        found.append((path.relative_to(folder).as_posix(), path))
        if len(found) > MAX_FOLDER_FILES:
            raise FolderTooLarge(f"{folder} holds more than {MAX_FOLDER_FILES:,} files: not a model folder")
        if total > MAX_FOLDER_BYTES:
            raise FolderTooLarge(f"{folder} holds more than {size_text(MAX_FOLDER_BYTES)}: not a model folder")
    if failed is not None:
        raise failed
    return found


def _walk(folder: Path) -> Iterator[Path]:
    """The files below ``folder`` that are not hidden (nor in hidden folders), in name order;
    FolderTooLarge once more than MAX_FOLDER_ENTRIES names were seen (a stat per name at most)."""
    seen = 0
    for root, dirs, files in os.walk(folder):
        seen += len(dirs) + len(files)
        if seen > MAX_FOLDER_ENTRIES:
            raise FolderTooLarge(f"{folder} holds more than {MAX_FOLDER_ENTRIES:,} files and folders: not a model folder")
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield from (Path(root) / name for name in sorted(files) if not name.startswith("."))


def special_files(folder: Path) -> list[str]:
    """The names below ``folder`` (relative POSIX paths, hidden ones skipped, links followed) that
    are FIFOs, devices or sockets: loading a model that holds one would block or read without end.
    FolderTooLarge beyond MAX_FOLDER_ENTRIES (nothing opened: a stat per name)."""
    found: list[str] = []
    for path in _walk(folder):
        try:
            mode = path.stat().st_mode
        except OSError:  # a dangling link: nothing to read
            continue
        if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
            found.append(path.relative_to(folder).as_posix())
    return found


def combined(files: dict[str, str]) -> str:
    """One hash over a folder's file hashes (names included)."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{files[name]}\n".encode())
    return digest.hexdigest()
