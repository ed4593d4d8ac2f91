"""From jobs to batches: the plan fixes batch boundaries, and with them the pixels.

Up to ``batch_size`` consecutive jobs (in matrix order) that share their pipeline (the build
axes: model, components, LoRA, optimizations), call parameters, scheduler and input image size
form a batch (inputs of different sizes never share a batch:
diffusers would squash them all to the first one's size). Negative prompts are not part of what
must be shared: a batch passes one per prompt, so ``{var}`` in ``negative_prompt`` keeps batches full. Batched kernels round differently per batch size, so every path that
re-creates an image (resume, distributed ranks, --reproduce) re-creates its planned batch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .matrix import TEMPLATED_PARAMS, Job

AUTO_START_CPU = 8  # "auto" on a CPU: no out-of-memory error warns before the system swaps


@dataclass(frozen=True, slots=True)
class Batch:
    index: int
    jobs: tuple[Job, ...]

    @property
    def size(self) -> int:
        return len(self.jobs)


def signature(job: Job) -> str:
    """What must be equal for two jobs to share one pipeline call."""
    params = {k: v for k, v in job.params.items() if not (k in TEMPLATED_PARAMS and isinstance(v, str))}
    signed = [params, job.scheduler, job.input_size]
    build = job.build_axes()
    if build:  # jobs of different pipelines (model, components, LoRA, optimizations) never share a call
        signed.append(build)
    return json.dumps(signed, sort_keys=True, default=repr)


def plan(jobs: Sequence[Job], batch_size: int) -> list[Batch]:
    """Consecutive jobs with equal signatures, up to ``batch_size`` per batch."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    batches: list[Batch] = []
    current: list[Job] = []
    current_sig: str | None = None
    for job in jobs:
        sig = signature(job)
        if current and (sig != current_sig or len(current) == batch_size):
            batches.append(Batch(len(batches), tuple(current)))
            current = []
        current.append(job)
        current_sig = sig
    if current:
        batches.append(Batch(len(batches), tuple(current)))
    return batches


def initial_batch_size(setting: Any, jobs: Sequence[Job], device: str) -> int:
    """The batch size to plan with: the recipe's integer, or for "auto" a batch that covers the
    largest group of jobs sharing call parameters (capped on a CPU, where memory runs out by
    swapping rather than by an error). Out-of-memory backoff halves it from there."""
    if setting != "auto":
        return int(setting)
    largest, run, previous = 1, 0, None
    for job in jobs:
        sig = signature(job)
        run = run + 1 if sig == previous else 1
        previous = sig
        largest = max(largest, run)
    return min(largest, AUTO_START_CPU) if device == "cpu" else largest
