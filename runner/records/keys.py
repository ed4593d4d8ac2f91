"""Job keys: what decides an image's pixels, hashed.

A job's key hashes everything that decides its pixels: model and component ids, revisions and
variants, the content of local model folders and the Hub commit loaded, the dtype used,
optimizations, what plugins declare with ``job_identity``, scheduler, call parameters, prompt, the *content* of its input images, seed, task,
generator device and, when ``[run] threads`` sets it, the CPU thread count. Resume (:mod:`recipe_runner.records.resume`) keeps a job whose file exists with the
key and sha256 the manifest recorded; every written image carries its key.
Light module: no torch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..base.filehashes import FileHashes
from ..pipelines.lock import identity_ids, loaded_models
from ..plan.matrix import Job
from ..plan.variants import Variant
from ..recipe.model import Recipe
from ..recipe.optimizations import Enabled


def digest(value: Any) -> str:
    """SHA-256 of ``value`` as canonical JSON (sorted keys; what JSON cannot hold, by ``repr``)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr).encode()).hexdigest()


class Keys:
    """Job keys for one recipe run, by job index: everything that decides a job's pixels, hashed.

    ``commons`` holds the part its variant decides (model, components, optimizations, dtype: see
    :func:`common_identity`), by variant id (:attr:`Job.variant`). A key never depends on the
    job's position in the matrix or on the other jobs of its batch (batch membership changes
    kernel rounding only, and the manifest records each image's batch), so adding a seed, a prompt
    or a model leaves every other job's key alone."""

    def __init__(self, commons: Mapping[str, dict[str, Any]], jobs: Sequence[Job], input_hashes: dict[str, str],
                 legacy: Mapping[str, dict[str, Any]] | None = None):
        self.commons = commons
        self.inputs = input_hashes
        self.keys = [self._key(job, commons) for job in jobs]
        legacy = legacy or {}
        self.legacy_keys = {job.index: self._key(job, legacy) for job in jobs if job.variant in legacy}

    def _key(self, job: Job, commons: Mapping[str, dict[str, Any]]) -> str:
        return digest({
            **commons[job.variant],
            "scheduler": job.scheduler,
            "params": job.params,
            "prompt": job.prompt,
            "seed": job.seed,
            "image": self.inputs.get(job.image) if job.image is not None else None,
            "mask_image": self.inputs.get(job.mask_image) if job.mask_image is not None else None,
        })

    def of(self, job: Job) -> str:
        """The key of ``job``."""
        return self.keys[job.index]

    def legacy(self, job: Job) -> str | None:
        """The key recipe-runner 0.x before content identity gave ``job`` (its local model folders
        by the id as written), when it differs: a folder made then is still ``job``'s (resume
        accepts it and records the key of today)."""
        return self.legacy_keys.get(job.index)


def common_identity(recipe: Recipe, dtype: str, enabled: Sequence[Enabled],
                    loaded_models: dict[str, Any], plugins: Mapping[str, Any] | None = None,
                    ids: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The part of every job's identity that the recipe's model and run settings decide.

    ``loaded_models`` says what the model ids stood for in this run: the content hash of each local
    model folder and the Hub commit loaded (see :func:`recipe_runner.pipelines.lock.local_weights`).
    ``plugins``: what the plugins that declare they decide pixels (the ``job_identity`` hook) gave,
    by plugin (name, version, identity); absent when none did, so keys without them never change.
    ``ids``: the id each reference (``model``, ``components.vae``) stands as in the key
    (:func:`recipe_runner.pipelines.lock.identity_ids`: a local folder by its content, not its
    path); None: the ids as written (the keys before content identity).
    ``threads``: ``[run] threads`` when the recipe sets it (the thread count changes CPU rounding);
    absent otherwise, so keys of recipes without it are what they were.
    """
    m = recipe.model
    ids = ids or {}
    extra: dict[str, Any] = {"plugins": dict(plugins)} if plugins else {}
    if recipe.run.threads is not None:  # [run] threads: only when set, so keys of recipes without it never change
        extra["threads"] = recipe.run.threads
    model = {k: getattr(m, k, None) for k in ("id", "revision", "variant", "task", "custom_pipeline")}
    model["id"] = ids.get("model", m.id)
    return {
        **extra,
        "model": model,
        "loaded_models": loaded_models,
        "dtype": dtype,
        "components": {k: {**v.model_dump(mode="json"), "id": ids.get(f"components.{k}", v.id)}
                       for k, v in sorted(recipe.components.items())},
        "optimizations": [[e.name, e.settings.model_dump(mode="json")] for e in enabled if e.status != "skipped"],
        "generator_device": recipe.run.generator_device,
    }


def job_keys(variants: Sequence[Variant], jobs: Sequence[Job], dtype_of: Callable[[Variant], str],
             revisions: Mapping[str, str | None], digests: dict[str, str],
             applied: Callable[[Variant], Sequence[Enabled]] | None = None, hashes: FileHashes | None = None) -> Keys:
    """Every job's key: its variant's model (with ``revisions[model id]``, the Hub commit loaded),
    components, optimizations (those ``applied`` gives; default: not skipped), dtype
    (``dtype_of(variant)``) and plugin identities (``variant.identity``), and the job itself (input
    images by their ``digests``). ``hashes``: the run's file hashes (see :func:`loaded_models`)."""
    commons, legacy = {}, {}
    for v in variants:
        enabled = applied(v) if applied is not None else v.enabled
        loaded = loaded_models(v.recipe, v.loaded, revisions.get(v.recipe.model.id), hashes)
        ids = identity_ids(v.recipe, v.loaded)
        commons[v.id] = common_identity(v.recipe, dtype_of(v), enabled, loaded, v.identity, ids)
        before = common_identity(v.recipe, dtype_of(v), enabled, loaded, v.identity)
        if before != commons[v.id]:
            legacy[v.id] = before
    return Keys(commons, jobs, digests, legacy)
