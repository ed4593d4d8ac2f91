"""Where the main thread stops the background writer: the gate every record change passes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Abandoned(Exception):
    """The run stopped at once (a second Ctrl-C): the writer stops where it is."""


class Gate:
    """Where the main thread can stop the writer: every change to the manifest or journal happens
    inside :meth:`records`, so once :meth:`close` returns the writer changes nothing any more and
    the main thread may fold the journal into ``manifest.json`` itself."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.closed = False

    def check(self) -> None:
        """Raise :class:`Abandoned` when closed (before starting the next file)."""
        if self.closed:
            raise Abandoned

    @contextmanager
    def records(self) -> Iterator[None]:
        with self._lock:
            self.check()
            yield

    def close(self) -> None:
        with self._lock:
            self.closed = True
