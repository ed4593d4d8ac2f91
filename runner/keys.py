"""Job keys: what decides an image's pixels, hashed.

A job's identity hashes everything that decides its pixels alone: model and component ids,
revisions and variants, the content of local model folders and the Hub commit loaded, the dtype
used, optimizations, scheduler, call parameters, prompt, the *content* of its input images, seed,
task and generator device. Its key adds the identities of the jobs in its batch, in order, since
batch membership changes kernel rounding. Resume (:mod:`recipe_runner.resume`) skips a job whose
file exists with the key the manifest recorded; every written image carries its key.
Light module: no torch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from .matrix import Job
from .optimizations import Enabled
from .plan import Batch
from .recipe import Recipe


def digest(value: Any) -> str:
    """SHA-256 of ``value`` as canonical JSON (sorted keys; what JSON cannot hold, by ``repr``)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr).encode()).hexdigest()


class Keys:
    """Job keys for one recipe run. ``identity`` is what decides a job's pixels alone; ``key``
    adds the identities of its batch's jobs, in order."""

    def __init__(self, common: dict[str, Any], jobs: Sequence[Job], input_hashes: dict[str, str]):
        self.common = common
        self.inputs = input_hashes
        self.identities = [self._identity(job) for job in jobs]

    def _identity(self, job: Job) -> str:
        return digest({
            **self.common,
            "scheduler": job.scheduler,
            "params": job.params,
            "prompt": job.prompt,
            "seed": job.seed,
            "image": self.inputs.get(job.image) if job.image is not None else None,
            "mask_image": self.inputs.get(job.mask_image) if job.mask_image is not None else None,
        })

    def key(self, index: int, members: Sequence[int]) -> str:
        """The key of job ``index`` in a batch of the jobs ``members`` (indices, in order)."""
        return digest({"job": self.identities[index], "batch": [self.identities[m] for m in members]})

    def for_batch(self, batch: Batch, job: Job) -> str:
        return self.key(job.index, [j.index for j in batch.jobs])


def common_identity(recipe: Recipe, dtype: str, enabled: Sequence[Enabled],
                    loaded_models: dict[str, Any]) -> dict[str, Any]:
    """The part of every job's identity that the recipe's model and run settings decide.

    ``loaded_models`` says what the model ids stood for in this run: the content hash of each local
    model folder and the Hub commit loaded (see :func:`recipe_runner.lock.local_weights`).
    """
    m = recipe.model
    return {
        "model": {k: getattr(m, k, None) for k in ("id", "revision", "variant", "task", "custom_pipeline")},
        "loaded_models": loaded_models,
        "dtype": dtype,
        "components": {k: v.model_dump(mode="json") for k, v in sorted(recipe.components.items())},
        "optimizations": [[e.name, e.settings.model_dump(mode="json")] for e in enabled if e.status != "skipped"],
        "generator_device": recipe.run.generator_device,
    }
