"""The append-only journal that records images as they land: ``.manifest.journal.jsonl`` beside
``manifest.json`` (one per process under a launcher, ``.manifest.journal.rank-N.jsonl``).

Why a journal: rewriting ``manifest.json`` after every batch costs O(images) per batch. Instead
each written image appends one JSON line to the journal (fsynced at the end of its batch); the
journal is folded into ``manifest.json`` (atomically) every few batches and when the run ends or
is interrupted, then emptied. A crash loses at most the batches in flight (the one generating and
those handed to the writer); a torn last line is
ignored when the journal is read back (:mod:`recipe_runner.records.resume` folds it into a folder's state).
Light module: no torch.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, BinaryIO

from ..base.safe_read import MAX_RECORD_BYTES, read_regular
from .keys import Keys
from .manifest import ImageRecord, Manifest

JOURNAL_NAME = ".manifest.journal.jsonl"
RANK_JOURNAL = ".manifest.journal.rank-{rank}.jsonl"  # one per process under a launcher
JOURNAL_GLOB = ".manifest.journal*.jsonl"  # every journal of a folder, whatever process wrote it
FOLD_EVERY_SECONDS = 30.0  # fold the journal into manifest.json at most this often during a run
RECORD_FIELDS = ("file", "index", "key", "sha256", "status", "batch", "batch_size", "batch_jobs")


def read_journal(path: Path) -> list[dict[str, Any]]:
    """The records of a journal; a torn or garbled line (a crash mid-append) is skipped. Only a
    regular file (not a link, FIFO or device) is read, up to MAX_RECORD_BYTES: anything else is no journal."""
    try:
        raw = read_regular(path, MAX_RECORD_BYTES, follow=False, what="journal")
    except OSError:
        return []
    records = []
    for line in raw.split(b"\n"):
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and isinstance(item.get("file"), str):
            records.append(item)
    return records


def journal_name(rank: int | None = None) -> str:
    """The journal's file name: one per folder, or one per process (``rank``) under a launcher."""
    return JOURNAL_NAME if rank is None else RANK_JOURNAL.format(rank=rank)


class Journal:
    """Appends one line per written image; ``commit`` fsyncs it at a batch's end and folds it into
    the manifest every ``FOLD_EVERY_SECONDS``; ``close`` folds and removes it."""

    def __init__(self, manifest: Manifest, keys: Keys, rank: int | None = None):
        self.manifest = manifest
        self.keys = keys  # the writer records each image's key in its batch
        self.path = manifest.folder / journal_name(rank)
        self._fh: BinaryIO | None = None
        self._folded_at = time.monotonic()

    def _open(self) -> BinaryIO:
        if self._fh is None:
            if self.path.is_symlink() or (self.path.exists() and not self.path.is_file()):
                self.path.unlink()  # a planted link or FIFO is replaced, never written through or waited on
            flags = (os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
                     | getattr(os, "O_NONBLOCK", 0))
            self._fh = os.fdopen(os.open(self.path, flags, 0o644), "ab")
        return self._fh

    def append(self, record: ImageRecord) -> None:
        line = json.dumps({k: getattr(record, k) for k in RECORD_FIELDS}, ensure_ascii=False)
        self._open().write(line.encode("utf-8") + b"\n")

    def commit(self) -> None:
        """A batch is written: make its lines durable, fold now and then."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        if time.monotonic() - self._folded_at >= FOLD_EVERY_SECONDS:
            self.fold()

    def fold(self) -> None:
        """manifest.json (atomically) describes every image written; then the journal empties."""
        self.manifest.save()
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        self._folded_at = time.monotonic()

    close = fold
