"""One progress bar over the whole run: images done / total, the denoising step of the batch in
flight, elapsed time, ETA. Drawn only when stderr is a terminal; silent in logs and CI.

The bar moves with the denoising steps (the pipeline's ``callback_on_step_end``), so a slow model
shows life before its first batch ends; redraws are limited to ``REDRAW_SECONDS`` apart.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

REDRAW_SECONDS = 0.1


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
        self.batch_images = 0  # images in the batch being generated
        self.step = 0  # its denoising step, of ``steps``
        self.steps = 0
        self._drawn_at = 0.0
        self._width = 0

    def text(self) -> str:
        elapsed = time.monotonic() - self.start
        width = 24
        fraction = self.step / self.steps if self.steps else 0.0
        done = min(self.total, self.done + self.batch_images * fraction)
        filled = int(width * done / self.total) if self.total else width
        eta = ""
        if 0 < done < self.total:
            eta = f"  ETA {_clock(elapsed / done * (self.total - done))}"
        bar = "#" * filled + "." * (width - filled)
        step = f"  step {self.step}/{self.steps}" if self.steps and self.done < self.total else ""
        return f"{self.label} [{bar}] {self.done}/{self.total} images{step}  {_clock(elapsed)}{eta}"

    def _draw(self) -> None:
        text = self.text()
        self.stream.write("\r" + text + " " * max(0, self._width - len(text)))  # no tail of a longer line
        self.stream.flush()
        self._width = len(text)
        self._drawn_at = time.monotonic()

    def begin_batch(self, images: int, steps: int) -> None:
        """A batch of ``images`` starts; it will take ``steps`` denoising steps."""
        self.batch_images, self.step, self.steps = images, 0, steps

    def advance_step(self, step: int) -> None:
        """The batch in flight finished denoising step ``step`` (1-based). A scheduler may take more
        steps than ``num_inference_steps`` asks (PNDM's warm-up: 5 for 4): the total follows."""
        self.step = step
        self.steps = max(self.steps, step)
        if self.enabled and time.monotonic() - self._drawn_at >= REDRAW_SECONDS:
            self._draw()

    def advance(self, n: int) -> None:
        """``n`` more images are written."""
        self.done += n
        self.batch_images = self.step = self.steps = 0
        if self.enabled:
            self._draw()

    def close(self) -> None:
        """End the bar's line (drawn once more, so the last line is the final state)."""
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
