"""Image comparison metrics: what ``--compare`` says about two images of one job whose pixels differ.

Where to add a metric: subclass :class:`Metric` (one class) and register it, from a plugin, through
the ``register_metrics`` hook; ``--compare`` then prints it for each differing pair and writes it to
``compare.json``. The built-ins: ``psnr`` (dB, higher is closer), ``max_diff`` (the largest channel
difference, 0-255) and ``changed`` (the fraction of pixels that differ).

Light module: numpy, given the decoded pixels (H x W x C, uint8) of both images.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar, Literal

from ..base.registry import Registry

if TYPE_CHECKING:
    import numpy as np


class Metric:
    """One figure computed from two images of the same size."""

    name: ClassVar[str]
    better: ClassVar[Literal["higher", "lower"]]
    description: ClassVar[str] = ""

    def compute(self, a: np.ndarray, b: np.ndarray) -> float:
        """The figure for pixels ``a`` and ``b`` (same shape, uint8); called only when they differ."""
        raise NotImplementedError


class Psnr(Metric):
    name = "psnr"
    better = "higher"
    description = "peak signal-to-noise ratio, dB"

    def compute(self, a: np.ndarray, b: np.ndarray) -> float:
        import numpy as np

        mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
        return 10 * math.log10(255 ** 2 / mse) if mse else math.inf


class MaxDiff(Metric):
    name = "max_diff"
    better = "lower"
    description = "the largest channel difference, of 255"

    def compute(self, a: np.ndarray, b: np.ndarray) -> float:
        import numpy as np

        return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


class Changed(Metric):
    name = "changed"
    better = "lower"
    description = "the fraction of pixels that differ"

    def compute(self, a: np.ndarray, b: np.ndarray) -> float:
        import numpy as np

        diff = a != b
        return float(np.mean(diff.any(axis=-1) if diff.ndim == 3 else diff))


class Metrics(Registry[Metric]):
    BUILTIN: ClassVar[tuple[Metric, ...]] = (Psnr(), MaxDiff(), Changed())

    def __init__(self) -> None:
        super().__init__("metric")
        self.reset()

    def reset(self) -> None:
        self.clear()
        for metric in self.BUILTIN:
            self.register(metric.name, metric, "recipe-runner")

    def plugin_metrics(self) -> list[Metric]:
        """The metrics plugins added (the built-ins are shown in their own columns)."""
        return [m for m in self.values() if m not in self.BUILTIN]


METRICS = Metrics()
