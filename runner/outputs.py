"""What a run writes: images (atomically, with the recipe and job embedded), ``manifest.json``
(rewritten atomically after every batch, so it always describes what is on disk) and ``grid.png``.

No half-written file ever exists under a final name: bytes go to a hidden temporary file in the
same folder, are flushed and fsynced, then ``os.replace``d into place.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .labels import a1111_sampler, scheduler_label
from .matrix import Job
from .plan import Batch

TMP_MARK = ".tmp-"
EXTENSIONS = {"png": "png", "webp": "webp", "jpeg": "jpg"}
PIL_FORMATS = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either absent, the old file, or complete."""
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    if tmp.is_symlink():
        tmp.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        with os.fdopen(os.open(tmp, flags, 0o644), "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


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
            if isinstance(found, dict):
                text = {k: v for k, v in found.items() if isinstance(v, str)}
        return text


class Manifest:
    """``manifest.json``: the resolved recipe, the environment and one record per job."""

    def __init__(self, folder: Path, recipe: dict[str, Any], environment: dict[str, Any], jobs: Sequence[Job],
                 ext: str, path: Path | None = None):
        self.folder = folder
        self.path = path or folder / "manifest.json"
        self.data: dict[str, Any] = {
            "recipe": recipe,
            "environment": environment,
            "optimizations": {},
            "timings": {},
            "images": [self._record(job, job.filename(ext)) for job in jobs],
        }

    @staticmethod
    def _record(job: Job, file: str) -> dict[str, Any]:
        return {
            "file": file,
            "index": job.index,
            "prompt": job.prompt,
            "seed": job.seed,
            "image": job.image,
            "mask_image": job.mask_image,
            "vars": dict(job.vars),
            "params": dict(job.params),
            "scheduler": scheduler_label(job.scheduler),  # with its options: "X (use_karras_sigmas=true)"
            "batch": None,
            "batch_size": None,
            "batch_jobs": None,
            "key": None,
            "status": "pending",
            "sha256": None,
            "rank": None,
        }

    def record(self, job: Job) -> dict[str, Any]:
        return self.data["images"][job.index]

    def file_for(self, job: Job) -> Path:
        return self.folder / self.record(job)["file"]

    def save(self) -> None:
        text = json.dumps(self.data, indent=2, ensure_ascii=False, default=repr)
        atomic_write(self.path, text.encode("utf-8"))


class Writer:
    """Writes each finished batch's images and then the manifest, in that order."""

    def __init__(self, manifest: Manifest, fmt: str, quality: int, metadata: bool, model: str, recipe_json: str,
                 rank: int = 0):
        self.manifest = manifest
        self.rank = rank
        self.fmt = fmt
        self.quality = quality
        self.metadata = metadata
        self.model = model
        self.recipe_json = recipe_json
        self.environment_json = json.dumps(manifest.data["environment"], sort_keys=True)
        self.default_scheduler: str | None = None  # the pipeline's own, named in "parameters" as its Sampler
        self.journal: Any = None  # a recipe_runner.journal.Journal: images are journaled, not re-saved per batch

    def embedded_text(self, job: Job, batch: Batch, record: dict[str, Any]) -> dict[str, str]:
        job_info = {k: record[k] for k in ("index", "file", "prompt", "seed", "image", "mask_image", "vars", "params", "scheduler")}
        job_info.update(batch=batch.index, batch_size=batch.size, batch_jobs=[j.index for j in batch.jobs],
                        key=record.get("key"))
        return {
            "recipe": self.recipe_json,
            "job": json.dumps(job_info, ensure_ascii=False, default=repr),
            "environment": self.environment_json,
            "parameters": a1111_parameters(job, a1111_sampler(job.scheduler, self.default_scheduler), self.model),
        }

    def write_batch(self, batch: Batch, images: Sequence[Any], only: set[int] | None = None) -> None:
        """Write the images of ``batch`` (those in ``only`` when given), then the manifest (or its
        journal). A first Ctrl-C waits until the whole batch is written."""
        from .interrupts import critical

        with critical():
            for job, image in zip(batch.jobs, images):
                if only is not None and job.index not in only:
                    continue  # its record keeps describing how its file was made
                record = self.manifest.record(job)
                record.update(batch=batch.index, batch_size=batch.size, batch_jobs=[j.index for j in batch.jobs])
                if self.journal is not None:
                    record["key"] = self.journal.keys.for_batch(batch, job)
                text = self.embedded_text(job, batch, record) if self.metadata else None
                data = encode(image, self.fmt, self.quality, text)
                path = self.manifest.file_for(job)
                atomic_write(path, data)
                record.update(status="done", sha256=hashlib.sha256(data).hexdigest(), rank=self.rank)
                if self.journal is not None:
                    self.journal.append(record)
            if self.journal is not None:
                self.journal.commit()
            else:
                self.manifest.save()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
