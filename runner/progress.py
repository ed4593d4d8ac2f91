"""One progress bar over the whole run: images done / total, elapsed, ETA. Drawn only when
stderr is a terminal; silent in logs and CI."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    def __init__(self, total: int, label: str, stream: TextIO | None = None, enabled: bool | None = None):
        self.total = total
        self.label = label
        self.done = 0
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.start = time.monotonic()

    def text(self) -> str:
        elapsed = time.monotonic() - self.start
        width = 24
        filled = int(width * self.done / self.total) if self.total else width
        eta = ""
        if 0 < self.done < self.total:
            rate = elapsed / self.done
            eta = f"  ETA {_clock(rate * (self.total - self.done))}"
        bar = "#" * filled + "." * (width - filled)
        return f"{self.label} [{bar}] {self.done}/{self.total} images  {_clock(elapsed)}{eta}"

    def advance(self, n: int) -> None:
        self.done += n
        if self.enabled:
            self.stream.write("\r" + self.text())
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
