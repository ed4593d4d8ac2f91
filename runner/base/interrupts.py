"""Ctrl-C and SIGTERM during a run: the first one stops generating (the batch in flight is
abandoned) but lets the images being written finish and the manifest be flushed; a second one
stops at once. SIGTERM (what a scheduler, ``timeout`` or ``docker stop`` sends) is handled like a
first Ctrl-C and raises :class:`Terminated` (a KeyboardInterrupt: exit 143 instead of 130).

Writes that must not be cut short run inside :func:`critical`: a first signal that arrives there
is held until the section ends. Even a second, immediate interrupt never leaves a half-written
file under a final name (writes are atomic) nor a temporary file (``atomic_write`` removes it).

Start-up (the command line, :func:`startup`): until a run first changes its output folder
(:func:`begin_writing`), there is nothing to keep, and an interrupt raised inside an import
(torch and diffusers take seconds to import) leaves half-initialised modules behind that fail
later in confusing ways. So there the process ends at once, with one line, exit 130 (143 for
SIGTERM). Code that calls :func:`recipe_runner.cli.main` in-process (tests) keeps Python's own
KeyboardInterrupt.

Signals reach the main thread only. A critical section entered on another thread (the background
writer, :mod:`recipe_runner.records.writing`) neither holds nor raises anything: the main thread protects
that thread's work by waiting for it after a first Ctrl-C (and abandons it after a second one).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_CODES: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal's number, as shells report it


class Terminated(KeyboardInterrupt):
    """SIGTERM: handled like a first Ctrl-C, exit 143."""


def interrupt_for(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def exit_code(exc: BaseException) -> int:
    """The exit status of an interrupted process: 143 after SIGTERM, 130 after Ctrl-C."""
    return EXIT_CODES[signal.SIGTERM] if isinstance(exc, Terminated) else EXIT_CODES[signal.SIGINT]


class _State:
    def __init__(self) -> None:
        self.count = 0  # SIGINTs and SIGTERMs received
        self.first: int = signal.SIGINT  # which one came first (decides the exception and the exit status)
        self.depth = 0  # nesting of critical sections
        self.held = False  # a first signal arrived inside a critical section
        self.writing = False  # the run has begun changing its output folder (:func:`begin_writing`)

    def handler(self, signum: int, frame: object) -> None:
        self.count += 1
        if self.count == 1:
            self.first = signum
        if not self.writing and _at_once:
            _exit_now(signum)
        if self.count == 1 and self.depth:
            self.held = True
            return
        self.held = False
        raise interrupt_for(self.first)


_state: _State | None = None
_at_once = False  # set by :func:`startup`: before a run writes, a signal ends the process at once


def _exit_now(signum: int, frame: Any = None) -> None:
    """End the process now: nothing is being written that needs finishing. One line on stderr."""
    what = "terminated" if signum == signal.SIGTERM else "interrupted"
    outputs = sys.modules.get("recipe_runner.outputs")  # loaded only once a run wrote an image
    written = outputs.images_written() if outputs is not None else 0
    line = (f"{what}: {written} image(s) written by this run, every one complete and listed in its manifest"
            if written else f"{what} before any image was written: nothing to finish")
    try:  # what is already printed (an earlier recipe's summary) is not lost
        sys.stdout.flush()
    except BaseException:  # noqa: BLE001 - a reentrant flush, a closed pipe: exiting anyway
        pass
    try:
        os.write(2, (line + "\n").encode())
    except OSError:
        pass
    os._exit(EXIT_CODES.get(signum, 128 + signum))


_original: dict[int, Any] = {}  # the handlers before :func:`startup`, put back by :func:`restore`


def startup() -> None:
    """The command line's first act: SIGINT and SIGTERM end the process at once (one line, exit
    130 or 143) until a run begins writing; :func:`graceful` takes over during runs."""
    global _at_once
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in SIGNALS:
        previous = signal.signal(signum, _exit_now)
        _original.setdefault(signum, previous)
    _at_once = True


def restore() -> None:
    """The handlers from before :func:`startup` (the command line's last act, for a program that
    called it in-process, such as a test)."""
    global _at_once
    if threading.current_thread() is not threading.main_thread() or not _original:
        return
    for signum, handler in _original.items():
        signal.signal(signum, handler)
    _original.clear()
    _at_once = False


def ordinary() -> None:
    """Back to Python's own handling: Ctrl-C raises KeyboardInterrupt (modes that clean up after
    themselves on it, such as --watch and --compare); SIGTERM raises :class:`Terminated`."""
    global _at_once
    if not _at_once or threading.current_thread() is not threading.main_thread():
        return  # in-process callers (tests) keep whatever they had
    _at_once = False  # restore() puts back what there was before startup()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_terminated)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


@contextmanager
def graceful() -> Iterator[None]:
    """Install the two-stage SIGINT/SIGTERM handler for the duration of a run (main thread only)."""
    global _state
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous_state = _state
    _state = _State()
    if previous_state is not None:
        _state.writing = previous_state.writing
    previous = {signum: signal.signal(signum, _state.handler) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _state = previous_state


def begin_writing() -> None:
    """The run is about to change its output folder: from now on an interrupt lets the writes in
    progress finish and the manifest be flushed (before, under :func:`startup`, it ends the process
    at once)."""
    if _state is not None:
        _state.writing = True


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
        raise interrupt_for(state.first)
