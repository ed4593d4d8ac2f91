"""What a run writes: images (atomically, with the recipe and job embedded) and, batch by batch,
the manifest (:mod:`recipe_runner.records.manifest`) or its journal (:mod:`recipe_runner.records.journal`), so that
``manifest.json`` always describes what is on disk.

No half-written file ever exists under a final name (:func:`recipe_runner.base.paths.atomic_write`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base import paths
from ..base.interrupts import critical
from ..base.paths import atomic_write
from ..base.safe_read import open_image
from ..plan.batches import Batch
from ..plan.labels import a1111_sampler
from ..plan.matrix import Job
from .formats import FORMATS, read_text
from .journal import Journal
from .manifest import ImageRecord, Manifest
from .provenance import embedded_environment

if TYPE_CHECKING:
    from .gate import Gate

_written = [0]  # images written by this process (what an interrupted run reports)


def images_written() -> int:
    """How many images this process has written (and recorded) so far."""
    return _written[0]


def a1111_parameters(job: Job, scheduler: str | None, model: str) -> str:
    """The "parameters" text other tools' PNG-info readers show (A1111 style)."""
    params = job.params
    lines = [job.prompt]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    fields = [
        ("Steps", params.get("num_inference_steps")),
        ("Sampler", scheduler),
        ("CFG scale", params.get("guidance_scale")),
        ("Seed", job.seed),
        ("Size", f"{params['width']}x{params['height']}" if "width" in params and "height" in params else None),
        ("Denoising strength", params.get("strength")),
        ("Model", model),
    ]
    lines.append(", ".join(f"{k}: {v}" for k, v in fields if v is not None))
    return "\n".join(lines)


def encode(image: Any, fmt: str, quality: int, text: dict[str, str] | None) -> bytes:
    """Image bytes in the output format ``fmt`` (see :mod:`.formats`), ``text`` embedded."""
    return FORMATS.require(fmt).encode(image, quality, text)


def same_pixels(path: Path, data: bytes) -> bool:
    """Whether the image file ``path`` decodes to the same pixels (size, mode, values) as the image
    bytes ``data`` (False when either cannot be read)."""
    import io

    from PIL import Image

    try:
        with open_image(path) as old, Image.open(io.BytesIO(data)) as new:
            return bool(old.size == new.size and old.mode == new.mode and old.tobytes() == new.tobytes())
    except Exception:  # any file at all may sit under an image's name
        return False


def read_embedded(path: Path) -> dict[str, str]:
    """The text an image carries, e.g. {"recipe": ..., "job": ...}; {} when it carries none."""
    return read_text(path)


@dataclass
class Writer:
    """Writes each finished batch's images and then the manifest, in that order; with a ``journal``,
    each image's key is recorded and the images are journaled instead of the manifest re-saved."""

    manifest: Manifest
    fmt: str
    quality: int
    metadata: bool  # embed the recipe, job and environment in each image
    model: str
    recipe_json: str
    default_scheduler: str | None = None  # the pipeline's own, named in "parameters" as its Sampler
    rank: int = 0
    models: dict[str, str] = field(default_factory=dict)  # variant -> its model id ("Model" in "parameters")
    schedulers: dict[str, str] = field(default_factory=dict)  # variant -> its pipeline's own scheduler
    journal: Journal | None = None
    restorable: dict[int, Path] = field(default_factory=dict)  # regenerated job -> the file its image replaces, moved aside
    restored: set[str] = field(default_factory=set)  # files moved back: the new image was pixel-identical
    _named: set[str] | None = field(default=None, init=False, repr=False)  # the records' file names (restore)
    environment_json: str = field(init=False)

    def __post_init__(self) -> None:
        self.environment_json = json.dumps(embedded_environment(self.manifest.environment), sort_keys=True)

    def journaled(self, journal: Journal) -> Writer:
        """This writer, writing through ``journal``."""
        return replace(self, journal=journal)

    def embedded_text(self, job: Job, batch: Batch, record: ImageRecord) -> dict[str, str]:
        job_info: dict[str, Any] = {k: getattr(record, k) for k in
                                    ("index", "file", "prompt", "seed", "image", "mask_image", "vars", "params", "scheduler")}
        if record.axes:
            job_info["axes"] = record.axes
        job_info.update(batch=batch.index, batch_size=batch.size, batch_jobs=[j.index for j in batch.jobs],
                        key=record.key)
        return {
            "recipe": self.recipe_json,
            "job": json.dumps(job_info, ensure_ascii=False, default=repr),
            "environment": self.environment_json,
            "parameters": a1111_parameters(job, a1111_sampler(job.scheduler, self.schedulers.get(job.variant, self.default_scheduler)),
                                           self.models.get(job.variant, self.model)),
        }

    def write_batch(self, batch: Batch, images: Sequence[Any], only: set[int] | None = None,
                    gate: Gate | None = None, seconds: float | None = None,
                    facts: Sequence[dict[str, Any]] | None = None) -> None:
        """Write the images of ``batch`` (those in ``only`` when given), then the manifest (or its
        journal); ``seconds``: how long the batch took to generate. A first Ctrl-C waits until the whole batch is written. On the background writer
        (:mod:`recipe_runner.records.writing`), every record change goes through ``gate``, which the main
        thread closes to stop the writer at once (a second Ctrl-C). ``facts``: per image, what the
        plugins' ``after_batch`` hooks recorded, kept in its manifest record."""
        records: Callable[[], AbstractContextManager[None]] = gate.records if gate is not None else nullcontext
        with critical():
            for position, (job, image) in enumerate(zip(batch.jobs, images)):
                if only is not None and job.index not in only:
                    continue  # its record keeps describing how its file was made
                with records():
                    key = self.journal.keys.of(job) if self.journal is not None else None
                    record = self.manifest.place(job, batch, key)
                    text = self.embedded_text(job, batch, record) if self.metadata else None
                data = encode(image, self.fmt, self.quality, text)
                if gate is not None:
                    gate.check()  # no new file once abandoned
                sha256 = self.restore(job, data)
                if sha256 is None:
                    atomic_write(self.manifest.file_for(job), data)
                    sha256 = hashlib.sha256(data).hexdigest()
                with records():
                    self.manifest.written(job, sha256, self.rank, seconds / batch.size if seconds is not None else None,
                                          facts=facts[position] if facts else None)
                    _written[0] += 1
                    if self.journal is not None:
                        self.journal.append(record)
            with records():
                if self.journal is not None:
                    self.journal.commit()
                else:
                    self.manifest.save()

    def restore(self, job: Job, data: bytes) -> str | None:
        """When the file ``job``'s new image replaces (moved aside by ``ResumeState.retire``) has the
        same decoded pixels as ``data``: move it back where it was (its bytes, name and mtime
        untouched; the job's record then names it, with the job's new key) and return its sha256.
        None when there is none, or its pixels differ: the new image is written."""
        old = self.restorable.pop(job.index, None)
        if old is None or not same_pixels(old, data):
            return None
        folder = self.manifest.folder
        target = folder / old.name
        record = self.manifest.record(job)
        if self._named is None:
            self._named = {r.file for r in self.manifest.images}
        if old.name != record.file and (target.exists() or old.name in self._named):
            return None  # its old name is taken by now: the new image goes under its own
        sha256 = paths.sha256_file(old)
        os.replace(old, target)
        paths.fsync_dir(folder)
        record.file = old.name
        self._named.add(old.name)
        self.restored.add(old.name)
        return sha256
