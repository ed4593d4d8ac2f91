"""Generating the planned batches: one torch.Generator per image, images streamed to disk as each
batch finishes, out-of-memory backoff that halves the batch and retries the same jobs.

A finished batch is handed to the background writer (:mod:`recipe_runner.records.writing`), which writes
it while the next batch generates. Memory grows with the batch, never with the matrix: at most one
batch waits for the writer while another is written.
"""

from __future__ import annotations

import gc
import inspect
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..base.errors import PluginError, RunError, suggest
from ..base.memory import is_out_of_memory
from ..pipelines.build import Built, call_parameters
from ..plan.batches import Batch, plan
from ..plan.inputs import InputImages
from ..plan.matrix import TEMPLATED_PARAMS, Job
from ..records.outputs import Writer
from ..records.writing import Handed, Writes, background_writes, batch_times, writes_for
from .progress import Progress

if TYPE_CHECKING:
    from ..pipelines.cache import Pipelines


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.empty_cache()


def generators(jobs: tuple[Job, ...], device: str) -> list[Any]:
    """One generator per image, seeded with its job's seed: its starting noise is the same
    whatever the batch, the position in it, or the rest of the matrix."""
    import torch

    return [torch.Generator(device=device).manual_seed(job.seed) for job in jobs]


def denoising_steps(pipe: Any, kwargs: dict[str, Any]) -> int:
    """How many denoising steps a call with ``kwargs`` takes (for the progress bar): the pipeline's
    default ``num_inference_steps`` when not given, scaled by ``strength`` for image-to-image."""
    steps = kwargs.get("num_inference_steps")
    if steps is None:
        parameter = inspect.signature(pipe.__call__).parameters.get("num_inference_steps")
        steps = parameter.default if parameter is not None else 0
    if not isinstance(steps, int):
        return 0
    strength = kwargs.get("strength")
    return max(1, int(steps * strength)) if isinstance(strength, (int, float)) and steps else steps


@dataclass
class Execution:
    pipelines: Pipelines  # the pipeline each batch's jobs need
    writer: Writer
    hook: Any
    inputs: InputImages | None
    progress: Progress
    warn: Callable[[str], None]
    batch_times: list[dict[str, Any]] = field(default_factory=list)
    background_writes: bool = field(default_factory=background_writes)  # off: RECIPE_RUNNER_SYNC_WRITES=1
    stop: Callable[[], bool] | None = None  # asked before each batch: True ends the run there (--watch: a save)
    stopped: bool = False  # the run ended early at a batch boundary (``stop`` said so)

    def generator_device(self, built: Built) -> str:
        setting = built.context.recipe.run.generator_device
        return built.context.device if setting == "device" else setting

    def call_kwargs(self, batch: Batch, built: Built) -> dict[str, Any]:
        first = batch.jobs[0]
        kwargs = dict(first.params)
        kwargs["prompt"] = [job.prompt for job in batch.jobs]
        for name in TEMPLATED_PARAMS:  # a str beside a list of prompts is refused by diffusers
            if isinstance(kwargs.get(name), str):
                kwargs[name] = [job.params[name] for job in batch.jobs]
        kwargs["generator"] = generators(batch.jobs, self.generator_device(built))
        if self.inputs is not None:
            kwargs.update(self.inputs.for_batch(batch.jobs))
        return kwargs

    def step_callback(self, kwargs: dict[str, Any], built: Built) -> None:
        """Move the progress bar with the denoising steps, where the pipeline takes a step callback
        (only when the bar is drawn: the callback returns the tensors it was given, unchanged)."""
        if not self.progress.enabled or "callback_on_step_end" not in call_parameters(built.pipe):
            return
        progress = self.progress

        def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            progress.advance_step(step + 1)
            return tensors

        kwargs["callback_on_step_end"] = on_step_end

    def check_added(self, pipe: Any, added: list[str]) -> None:
        """The call arguments ``before_batch`` added: each one the pipeline takes, checked like
        ``[params]`` (named parameters only: what would land in the call's ``**kwargs`` is ignored
        by diffusers, or is a deprecated callback)."""
        if not added:
            return
        accepted = call_parameters(pipe)
        wrong = [k for k in added if k not in accepted]
        if wrong:
            hints = "; ".join(f"{k!r}: " + (suggest(k, accepted) or "not a parameter of the pipeline") for k in wrong)
            raise PluginError(f"{self.hook.implementers('before_batch')}: its before_batch hook added call argument(s) "
                              f"{type(pipe).__name__} does not take ({hints})")

    def checked_facts(self, facts: list[dict[str, Any]], batch: Batch) -> list[dict[str, Any]] | None:
        """What ``after_batch`` hooks recorded per image: JSON values, or a PluginError; None: nothing."""
        if len(facts) != batch.size or not all(isinstance(f, dict) for f in facts):
            raise PluginError(f"{self.hook.implementers('after_batch')}: facts must stay one dict per image "
                              "(set facts[i][name] = value)")
        if not any(facts):
            return None
        try:
            json.dumps(facts, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise PluginError(f"{self.hook.implementers('after_batch')}: facts must be JSON values "
                              f"(str, number, bool, list, dict): {exc}") from exc
        return facts

    def generate(self, batch: Batch, only: set[int] | None) -> Handed:
        """Run the pipeline of ``batch``'s jobs on it: its images, ready to hand to the writer."""
        built = self.pipelines.use(batch.jobs[0])
        built.use_scheduler(batch.jobs[0])
        kwargs = self.call_kwargs(batch, built)
        self.progress.begin_batch(batch.size if only is None else len([j for j in batch.jobs if j.index in only]),
                                  denoising_steps(built.pipe, kwargs))
        self.step_callback(kwargs, built)
        variant = self.pipelines.prepared.variant_of(batch.jobs[0])
        settings = {e.name: e.settings for e in variant.enabled if e.status != "skipped"}
        given = set(kwargs)
        self.hook.before_batch(pipe=built.pipe, batch=batch, call_kwargs=kwargs, recipe=variant.recipe,
                               settings=settings)
        self.check_added(built.pipe, [k for k in kwargs if k not in given])
        start = time.perf_counter()
        output = built.pipe(**kwargs)
        seconds = time.perf_counter() - start
        images = list(output.images)
        if len(images) != batch.size:
            raise RunError(f"the pipeline returned {len(images)} images for a batch of {batch.size}")
        facts: list[dict[str, Any]] = [{} for _ in images]
        self.hook.after_batch(pipe=built.pipe, batch=batch, images=images, recipe=variant.recipe, settings=settings,
                              facts=facts)
        if len(images) != batch.size or not all(hasattr(image, "save") for image in images):
            raise PluginError(f"after_batch left {len(images)} image(s) for a batch of {batch.size}"
                              f"{'' if len(images) != batch.size else ', not all of them images'}: a hook may change "
                              f"the images (in place, or replace an item), never remove or add one "
                              f"(after_batch implemented by {self.hook.implementers('after_batch')})")
        mine = None if only is None else {j.index for j in batch.jobs if j.index in only}
        return Handed(batch, images, mine, batch_times(batch, seconds), self.checked_facts(facts, batch))

    def run(self, batches: list[Batch], pending: set[int] | None = None) -> None:
        """Generate ``batches`` in order; with ``pending``, only the batches holding a pending job
        (re-computed whole, only the pending images written). On out of memory, the failed batch
        and everything after it are re-planned at half the size. Returns once every image is
        written; on Ctrl-C or a failure, once the batches already generated are written (a second
        Ctrl-C abandons them)."""
        writes = writes_for(self.writer, self.batch_times, self.background_writes)
        try:
            self._generate_all(batches, pending, writes)
            writes.finish()
        except BaseException as exc:
            writes.settle(exc)
            raise
        finally:
            writes.close()

    def _generate_all(self, batches: list[Batch], pending: set[int] | None, writes: Writes) -> None:
        queue = deque(batches)
        while queue:
            batch = queue.popleft()
            if pending is not None and not any(job.index in pending for job in batch.jobs):
                continue
            if self.stop is not None and self.stop():  # the batches before are generated and handed over
                self.stopped = True
                return
            try:
                handed = self.generate(batch, pending)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                if batch.size == 1:
                    raise RunError("out of memory at batch size 1: the model does not fit this device; "
                                   "try [optimizations] offload, attention_slicing or vae_tiling") from exc
                size = max(1, batch.size // 2)
                self.warn(f"out of memory at batch size {batch.size}: retrying at {size}")
                free_memory()
                rest = [job for b in [batch, *queue] for job in b.jobs]
                queue = deque(Batch(batch.index + b.index, b.jobs) for b in plan(rest, size))
                continue
            count = len(handed.images) if handed.only is None else len(handed.only)
            writes.hand(handed)
            del handed  # the writer holds the images now: memory stays bounded by the batch
            self.progress.advance(count)
