"""What a run writes: images (atomically, with the recipe and job embedded) and, batch by batch,
the manifest (:mod:`recipe_runner.manifest`) or its journal (:mod:`recipe_runner.journal`), so that
``manifest.json`` always describes what is on disk.

No half-written file ever exists under a final name (:func:`recipe_runner.paths.atomic_write`).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .interrupts import critical
from .journal import Journal
from .labels import a1111_sampler
from .manifest import ImageRecord, Manifest
from .matrix import Job
from .paths import atomic_write
from .plan import Batch

if TYPE_CHECKING:
    from .writing import Gate

EXTENSIONS = {"png": "png", "webp": "webp", "jpeg": "jpg"}
PIL_FORMATS = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}
_written = [0]  # images written by this process (what an interrupted run reports)


def images_written() -> int:
    """How many images this process has written (and recorded) so far."""
    return _written[0]


JPEG_EXIF_MAX = 65_000  # a JPEG's EXIF is one APP1 segment: at most 65,533 bytes with its header
COMPRESSED = "zlib+base64"  # UserComment holding {COMPRESSED: ...}: the chunks' JSON, compressed to fit
EMBEDDED_MAX = 64 << 20  # decompressed metadata larger than this is not read (a zip bomb)


def compress(text: str) -> str:
    import base64
    import zlib

    return base64.b64encode(zlib.compress(text.encode(), 9)).decode("ascii")


def decompress(data: str) -> str:
    """The text :func:`compress` made; ValueError when it is not (or inflates beyond EMBEDDED_MAX)."""
    import base64
    import binascii
    import zlib

    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(base64.b64decode(data, validate=True), EMBEDDED_MAX)
        if inflater.unconsumed_tail:
            raise ValueError("embedded metadata too large")
        return raw.decode()
    except (binascii.Error, zlib.error, UnicodeDecodeError) as exc:
        raise ValueError(str(exc)) from exc


def exif_problem(recipe_json: str) -> str | None:
    """Why a JPEG run cannot embed a recipe this large (its EXIF holds 64 KB, the runner compresses
    what does not fit; 8 KB are kept for the job, environment and parameters), or None."""
    size = len(compress(json.dumps({"recipe": recipe_json})))
    if size <= JPEG_EXIF_MAX - 8192:
        return None
    return (f"the recipe embedded in each JPEG is {size:,} bytes even compressed: more than a JPEG's EXIF holds "
            "(64 KB)")


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
    """Image bytes in ``fmt``; ``text`` goes into PNG iTXt chunks, or EXIF for webp/jpeg."""
    buffer = io.BytesIO()
    if fmt == "png":
        from PIL.PngImagePlugin import PngInfo

        info = None
        if text:
            info = PngInfo()
            for key, value in text.items():
                info.add_itxt(key, value)
        image.save(buffer, format="PNG", pnginfo=info)
    else:
        from PIL import Image

        kwargs: dict[str, Any] = {"quality": quality}
        if text:
            exif = Image.Exif()
            exif[0x010E] = text.get("parameters", "")  # ImageDescription
            exif[0x9286] = json.dumps(text)  # UserComment: every chunk, ASCII-safe JSON
            kwargs["exif"] = exif.tobytes()
            if fmt == "jpeg" and len(kwargs["exif"]) > JPEG_EXIF_MAX:  # one JPEG segment: 64 KB
                exif[0x010E] = text.get("parameters", "")[:1000]
                exif[0x9286] = json.dumps({COMPRESSED: compress(json.dumps(text))})
                kwargs["exif"] = exif.tobytes()
                if len(kwargs["exif"]) > JPEG_EXIF_MAX:  # refused up front (exif_problem): never reached
                    raise ValueError(f"the metadata is {len(kwargs['exif'])} bytes even compressed: more than a "
                                     "JPEG's EXIF holds (64 KB)")
        image.convert("RGB").save(buffer, format=PIL_FORMATS[fmt], **kwargs)
    return buffer.getvalue()


def read_embedded(path: Path) -> dict[str, str]:
    """The text an image carries (PNG text chunks, or the EXIF that :func:`encode` writes for
    webp/jpeg), e.g. {"recipe": ..., "job": ...}; {} when it carries none."""
    from PIL import Image

    with Image.open(path) as image:
        text = dict(getattr(image, "text", {}) or {})
        if not text and image.format in ("WEBP", "JPEG"):
            try:
                found = json.loads(image.getexif().get(0x9286) or "{}")
            except (TypeError, ValueError):
                found = {}
            if isinstance(found, dict) and isinstance(found.get(COMPRESSED), str):
                try:
                    found = json.loads(decompress(found[COMPRESSED]))
                except ValueError:
                    found = {}
            if isinstance(found, dict):
                text = {k: v for k, v in found.items() if isinstance(v, str)}
        return text


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
    environment_json: str = field(init=False)

    def __post_init__(self) -> None:
        self.environment_json = json.dumps(self.manifest.environment, sort_keys=True)

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
                    gate: Gate | None = None, seconds: float | None = None) -> None:
        """Write the images of ``batch`` (those in ``only`` when given), then the manifest (or its
        journal); ``seconds``: how long the batch took to generate. A first Ctrl-C waits until the whole batch is written. On the background writer
        (:mod:`recipe_runner.writing`), every record change goes through ``gate``, which the main
        thread closes to stop the writer at once (a second Ctrl-C)."""
        records: Callable[[], AbstractContextManager[None]] = gate.records if gate is not None else nullcontext
        with critical():
            for job, image in zip(batch.jobs, images):
                if only is not None and job.index not in only:
                    continue  # its record keeps describing how its file was made
                with records():
                    key = self.journal.keys.of(job) if self.journal is not None else None
                    record = self.manifest.place(job, batch, key)
                    text = self.embedded_text(job, batch, record) if self.metadata else None
                data = encode(image, self.fmt, self.quality, text)
                if gate is not None:
                    gate.check()  # no new file once abandoned
                atomic_write(self.manifest.file_for(job), data)
                sha256 = hashlib.sha256(data).hexdigest()
                with records():
                    self.manifest.written(job, sha256, self.rank, seconds / batch.size if seconds is not None else None)
                    _written[0] += 1
                    if self.journal is not None:
                        self.journal.append(record)
            with records():
                if self.journal is not None:
                    self.journal.commit()
                else:
                    self.manifest.save()
