"""Writes that overlap the device: a finished batch's images are encoded, written (atomically,
fsynced) and recorded (manifest or journal) on one background thread while the main thread starts
the next batch's pipeline call. Pillow's PNG encoder and the file writes release the GIL, so the
two really run side by side.

Bounded: at most one batch waits for the writer while another is being written (and a third
generates on the device), so memory stays bounded by the batch. Batches are written in the order
they were generated, and the manifest and journal only ever describe images fully on disk (the
writer records an image after its ``atomic_write`` returns).

Ctrl-C (signals reach the main thread only, see :mod:`recipe_runner.base.interrupts`):

- a first one stops generating; the main thread then waits for every batch already handed to the
  writer (:meth:`BackgroundWrites.settle`) before the interrupt goes on (and the journal is folded
  into ``manifest.json``): exit 130, every generated batch on disk;
- a second one stops at once: the writer is abandoned (:meth:`BackgroundWrites.abandon`): from
  that instant it changes no record, starts no file, and the temporary file of the image it may be
  writing is removed where possible. A file under a final name is still always complete.

A failure on the writer (disk full, permissions...) stops it and is raised on the main thread at
the next hand-off, or at the end: the run fails with that error (exit 1), the batches written
before it stay on disk and listed.

``RECIPE_RUNNER_SYNC_WRITES=1`` writes each batch on the main thread before the next one starts
(the former behaviour, for debugging); the bytes written are the same either way.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..base import interrupts
from ..base.paths import TMP_MARK
from ..plan.batches import Batch
from .gate import Abandoned, Gate

if TYPE_CHECKING:
    from .outputs import Writer

SYNC_WRITES_ENV = "RECIPE_RUNNER_SYNC_WRITES"
WAITING = 1  # batches handed over and not yet being written (the queue's bound)
ABANDON_GRACE_SECONDS = 0.5  # after a second Ctrl-C: how long the image being written may finish


def background_writes() -> bool:
    """Whether batches are written on the background writer (default), or on the main thread
    before the next batch starts (``RECIPE_RUNNER_SYNC_WRITES=1``)."""
    return os.environ.get(SYNC_WRITES_ENV, "").strip().lower() not in ("1", "true", "yes", "on")


@dataclass
class Handed:
    """A generated batch handed to the writer: its images (only those in ``only`` are written)
    and its line of the manifest's ``timings.batches``, completed by the writes."""

    batch: Batch
    images: list[Any]
    only: set[int] | None
    times: dict[str, Any]
    facts: list[dict[str, Any]] | None = None  # per image: what after_batch hooks recorded (empty: nothing)


def batch_times(batch: Batch, seconds: float) -> dict[str, Any]:
    """A batch's timings: ``seconds`` generating it, ``write_seconds`` writing it (on the writer),
    ``wait_seconds`` the main thread (the device) waited for writes after it: at the hand-off,
    and for the last batch until every write ended (equal to ``write_seconds`` without overlap)."""
    return {"batch": batch.index, "size": batch.size, "seconds": round(seconds, 4),
            "write_seconds": 0.0, "wait_seconds": 0.0}


@dataclass
class Writes:
    """Synchronous writes: each batch is written when handed over, on the main thread."""

    writer: Writer
    times: list[dict[str, Any]]  # the execution's batch_times, appended as each batch is written

    def hand(self, item: Handed) -> None:
        start = time.perf_counter()
        self.writer.write_batch(item.batch, item.images, item.only, seconds=item.times["seconds"], facts=item.facts)
        seconds = round(time.perf_counter() - start, 4)
        item.times.update(write_seconds=seconds, wait_seconds=seconds)
        self.times.append(item.times)

    def finish(self) -> None:
        """Every batch handed over is written (raises a failure of the writer)."""

    def settle(self, exc: BaseException) -> None:
        """The run is failing with ``exc`` (or interrupted): finish or abandon the writes."""

    def close(self) -> None:
        """Stop the writer's thread, if any."""


@dataclass
class BackgroundWrites(Writes):
    """Writes on one background thread, in order, at most :data:`WAITING` batch waiting."""

    gate: Gate = field(default_factory=Gate)
    _queue: deque[Handed] = field(default_factory=deque)
    _busy: bool = False  # a batch is being written
    _closed: bool = False
    _error: BaseException | None = None
    _last: dict[str, Any] | None = None  # the timings of the last batch handed over
    _thread: threading.Thread | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def hand(self, item: Handed) -> None:
        """Queue ``item`` for the writer, waiting while another batch already waits. A first Ctrl-C
        during the wait is held until the batch is handed over (its images are generated)."""
        start = time.perf_counter()
        with interrupts.critical():
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="recipe-runner-writer", daemon=True)
                self._thread.start()
            with self._cond:
                while len(self._queue) >= WAITING and self._error is None:
                    self._cond.wait()
                self._raise_failure()
                self._queue.append(item)
                self._cond.notify_all()
        item.times["wait_seconds"] = round(time.perf_counter() - start, 4)
        self._last = item.times

    def finish(self) -> None:
        start = time.perf_counter()
        self._drain()
        if self._last is not None:
            self._last["wait_seconds"] = round(self._last["wait_seconds"] + time.perf_counter() - start, 4)

    def settle(self, exc: BaseException) -> None:
        """After a first Ctrl-C or a failure while generating: wait for the batches already handed
        over (they are generated: they are written). After a second Ctrl-C (now or during that
        wait): abandon them. A failure of the writer found now is raised (instead of a first
        Ctrl-C: the run failed) or noted on ``exc``."""
        if self._thread is None or exc is self._error or self.gate.closed:
            return
        if isinstance(exc, KeyboardInterrupt) and interrupts.repeated():
            self.abandon()
            return
        try:
            self._drain()
        except KeyboardInterrupt:
            self.abandon()
            raise
        except Exception as error:
            if isinstance(exc, KeyboardInterrupt):
                raise
            note = f"writing an earlier batch failed too: {type(error).__name__}: {error}"
            if hasattr(exc, "add_note"):  # Python 3.11+
                exc.add_note(note)

    def abandon(self) -> None:
        """Stop at once: no record changes from now on, no new file; the image being written may
        finish for :data:`ABANDON_GRACE_SECONDS`, then its temporary file is removed if left."""
        self.gate.close()
        with self._cond:
            self._queue.clear()
            self._closed = True
            self._cond.notify_all()
        if self._thread is None:
            return
        self._thread.join(ABANDON_GRACE_SECONDS)
        if self._thread.is_alive():
            for path in self.writer.manifest.folder.glob(f".*{TMP_MARK}{os.getpid()}"):
                path.unlink(missing_ok=True)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None and not self.gate.closed:
            self._thread.join()

    # --- internals ----------------------------------------------------------------------------

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _drain(self) -> None:
        """Wait until every batch handed over is written (interruptible by Ctrl-C)."""
        with self._cond:
            while (self._queue or self._busy) and self._error is None:
                self._cond.wait()
            self._raise_failure()

    def _work(self) -> None:
        """The writer thread: write the batches in the order handed over, until closed."""
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                item = self._queue.popleft()
                self._busy = True
                self._cond.notify_all()  # room for the next batch
            try:
                start = time.perf_counter()
                self.writer.write_batch(item.batch, item.images, item.only, gate=self.gate, seconds=item.times["seconds"],
                                        facts=item.facts)
                item.times["write_seconds"] = round(time.perf_counter() - start, 4)
                self.times.append(item.times)
            except Abandoned:
                return
            except BaseException as exc:  # surfaces on the main thread: the run's failure
                with self._cond:
                    self._error = exc
                    self._busy = False
                    self._queue.clear()
                    self._cond.notify_all()
                return
            finally:
                del item
            with self._cond:
                self._busy = False
                self._cond.notify_all()


def writes_for(writer: Writer, times: list[dict[str, Any]], background: bool | None = None) -> Writes:
    """The writes of one execution: in the background unless turned off (``background`` or
    ``RECIPE_RUNNER_SYNC_WRITES``)."""
    if background is None:
        background = background_writes()
    return BackgroundWrites(writer, times) if background else Writes(writer, times)
