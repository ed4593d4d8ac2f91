"""Ctrl-C during a run: the first one stops generating (the batch in flight is abandoned) but lets
the images being written finish and the manifest be flushed; a second one stops at once.

Writes that must not be cut short run inside :func:`critical`: a first SIGINT that arrives there
is held until the section ends. Even a second, immediate interrupt never leaves a half-written
file under a final name (writes are atomic) nor a temporary file (``atomic_write`` removes it).

Signals reach the main thread only. A critical section entered on another thread (the background
writer, :mod:`recipe_runner.records.writing`) neither holds nor raises anything: the main thread protects
that thread's work by waiting for it after a first Ctrl-C (and abandons it after a second one).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class _State:
    def __init__(self) -> None:
        self.count = 0  # SIGINTs received
        self.depth = 0  # nesting of critical sections
        self.held = False  # a first SIGINT arrived inside a critical section

    def handler(self, signum: int, frame: object) -> None:
        self.count += 1
        if self.count == 1 and self.depth:
            self.held = True
            return
        self.held = False
        raise KeyboardInterrupt


_state: _State | None = None


@contextmanager
def graceful() -> Iterator[None]:
    """Install the two-stage SIGINT handler for the duration of a run (main thread only)."""
    global _state
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous_state = _state
    _state = _State()
    previous = signal.signal(signal.SIGINT, _state.handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _state = previous_state


def repeated() -> bool:
    """Whether a second Ctrl-C arrived (the run must stop at once, waiting for nothing)."""
    return _state is not None and _state.count >= 2


@contextmanager
def critical() -> Iterator[None]:
    """A section a first Ctrl-C waits for (writing a batch's images, flushing the manifest).
    Off the main thread, a plain section: signals are handled on the main thread only."""
    state = _state
    if state is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    state.depth += 1
    try:
        yield
    finally:
        state.depth -= 1
    if state.depth == 0 and state.held:
        state.held = False
        raise KeyboardInterrupt

