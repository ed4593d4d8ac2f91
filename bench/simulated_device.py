"""A simulated device, as a recipe-runner plugin (``-p simulated_device`` with bench/ on the path),
for bench/writer_overlap.py: the pipeline's call is replaced (in ``pipeline_ready``) by one that
keeps the host waiting a fixed time per image, as a GPU does while it denoises (``time.sleep``
releases the GIL, like a CUDA synchronisation), and returns 1024x1024 images that compress about
as a photo does (a smooth random field with fine noise: about 1.4 MB as a PNG).

No diffusion runs: the recipe's model (a tiny pipeline) is loaded only so that the runner has a
real pipeline to call. ``SIMULATED_SECONDS_PER_IMAGE`` (default 0.25) and ``SIMULATED_SIZE``
(default 1024) change the device.
"""

from __future__ import annotations

import functools
import os
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
from PIL import Image

from recipe_runner import hookimpl

SECONDS_PER_IMAGE = float(os.environ.get("SIMULATED_SECONDS_PER_IMAGE", "0.25"))
SIZE = int(os.environ.get("SIMULATED_SIZE", "1024"))


def image_for(seed: int, size: int = SIZE) -> Image.Image:
    """The image of ``seed``: the same pixels for the same seed, in any batch."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC))
    return Image.fromarray(base ^ rng.integers(0, 4, (size, size, 3), dtype=np.uint8))


def simulated_call(seeds: list[int]) -> list[Image.Image]:
    """One pipeline call on a batch: ``SECONDS_PER_IMAGE`` per image of host time, making the
    images included (they are made first, then the rest of the time is slept)."""
    deadline = time.perf_counter() + SECONDS_PER_IMAGE * len(seeds)
    images = [image_for(seed) for seed in seeds]
    time.sleep(max(0.0, deadline - time.perf_counter()))
    return images


@hookimpl
def pipeline_ready(pipe: Any, recipe: Any, context: Any) -> None:
    """Give ``pipe`` a class whose ``__call__`` is :func:`simulated_call` (an instance attribute
    would not do: ``pipe(...)`` looks ``__call__`` up on the class). The signature stays the
    pipeline's, so the runner's parameter checks see the real one."""
    cls = type(pipe)
    real = cls.__call__

    @functools.wraps(real)
    def __call__(self: Any, *args: Any, **kwargs: Any) -> SimpleNamespace:
        seeds = [generator.initial_seed() for generator in kwargs["generator"]]
        return SimpleNamespace(images=simulated_call(seeds))

    pipe.__class__ = type(f"Simulated{cls.__name__}", (cls,), {"__call__": __call__})
