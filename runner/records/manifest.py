"""``manifest.json`` as a typed record: the resolved recipe, the environment, the optimizations'
outcomes, the timings, one record per job and where this run moved the images it replaced.

Built whole at the start of a run (:meth:`Manifest.for_jobs`); changed only through its methods
(a job placed in its batch, written, kept from an earlier run, the images it replaced, timings);
written by :meth:`Manifest.save` (atomically). The JSON on disk is a user-facing contract: its
keys and their order are those of :meth:`Manifest.to_json` and :meth:`ImageRecord.to_json`.

``manifest.json`` is a function of the recipe and the pixels (it can be committed: a baseline):
what only describes this machine or this run's speed (``timings``, each image's ``seconds``, the
absolute paths of the model and the recipe) is written apart, into the run folder's machine-local
``.recipe-runner/run.json`` (:func:`split`), which a ``.gitignore`` of that folder keeps out of git.
:meth:`Manifest.load` puts them back together.
Light module: no torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pydantic import StrictInt, StrictStr, TypeAdapter, ValidationError
from typing_extensions import Required, TypedDict

from ..base.paths import atomic_write, regular_file
from ..base.safe_read import read_text
from ..plan.batches import Batch
from ..plan.labels import scheduler_label
from ..plan.matrix import Job
from .provenance import portable_folder, portable_location

MANIFEST_NAME = "manifest.json"
LOCAL_FOLDER = ".recipe-runner"  # a run folder's machine-local records, ignored by git
LOCAL_NAME = "run.json"  # in it: this machine's paths, the timings and each image's seconds
LOCAL_IGNORE = "# machine-local records of recipe-run (timings, this machine's paths): never committed\n*\n"
MACHINE_KEYS = ("model_location", "recipe_file")  # environment keys whose absolute form is this machine's


# --- records as read back: checked before anything trusts them ---------------------------------------
# TypedDicts validated by pydantic (a TypeAdapter: about a fifth of json.loads' time on a 100,000-image
# manifest, so a re-run with nothing to do stays cheap). The fields a run relies on are typed and
# strict; other keys are allowed (later versions may add fields) and left as they are.


class StoredImage(TypedDict, total=False):
    """One entry of ``images`` (or one journal line): ``file`` is checked to be a plain file name
    of the run folder where it is used (:func:`recipe_runner.paths.record_file`)."""

    file: Required[StrictStr]
    status: StrictStr | None
    key: StrictStr | None
    sha256: StrictStr | None
    index: StrictInt | None
    batch: StrictInt | None
    batch_size: StrictInt | None
    batch_jobs: list[StrictInt | None] | None
    rank: StrictInt | None
    seconds: float | None
    facts: dict[str, Any] | None


class StoredEnvironment(TypedDict, total=False):
    device: StrictStr | None
    dtype: StrictStr | None
    world_size: StrictInt | None
    model_revision: StrictStr | None
    model_revisions: dict[str, StrictStr | None] | None


class StoredRecipe(TypedDict, total=False):
    run: dict[str, Any] | None
    output: dict[str, Any] | None


class StoredHistory(TypedDict, total=False):
    folder: StrictStr | None
    replaced: list[dict[str, Any]] | None


class StoredManifest(TypedDict, total=False):
    """``manifest.json`` (or a rank's partial manifest) as a run reads it back."""

    recipe: StoredRecipe | None
    environment: StoredEnvironment | None
    optimizations: dict[str, dict[str, Any] | None] | None
    timings: dict[str, Any] | None
    images: Required[list[StoredImage]]
    history: StoredHistory | None
    views: dict[str, Any] | None
    recipe_path: StrictStr | None


_MANIFEST = TypeAdapter(StoredManifest)
_LINE = TypeAdapter(StoredImage)


def check_manifest(data: Any) -> str | None:
    """None when ``data`` (parsed JSON) is a manifest a run can rely on; else what is wrong with
    it, in one line (the first few problems, by dotted key)."""
    try:
        _MANIFEST.validate_python(data)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()[:3]]
        more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
        return "; ".join(problems) + more
    return None


def check_line(data: Any) -> bool:
    """Whether one journal line is a record a run can rely on."""
    try:
        _LINE.validate_python(data)
    except ValidationError:
        return False
    return True


@dataclass
class ImageRecord:
    """One job's entry in ``images``: what it is, its planned batch and key, and its file's state
    (``status``: pending or done)."""

    file: str
    index: int
    prompt: str
    seed: int
    image: str | None
    mask_image: str | None
    vars: dict[str, Any]
    params: dict[str, Any]
    scheduler: str | None
    axes: dict[str, Any] | None = None  # the values of the axes that changed the pipeline (model, components, LoRA, ...)
    batch: int | None = None
    batch_size: int | None = None
    batch_jobs: list[int] | None = None
    key: str | None = None
    status: str = "pending"
    sha256: str | None = None
    rank: int | None = None
    seconds: float | None = None  # generating its batch, per image of the batch
    cell: str | None = None  # where the job stands in the recipe as written (Job.cell_name): an edit's pairing
    same_as: int | None = None  # the job whose image this cell shows (an equal job, generated once)
    facts: dict[str, Any] | None = None  # what plugins recorded about the image (after_batch's facts); absent: none

    @classmethod
    def for_job(cls, job: Job, file: str) -> ImageRecord:
        return cls(file, job.index, job.prompt, job.seed, job.image, job.mask_image, dict(job.vars),
                   dict(job.params), scheduler_label(job.scheduler), job.build_axes() or None, cell=job.cell_name())

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageRecord:
        return cls(**{f.name: data.get(f.name, f.default) for f in fields(cls)})

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "facts" or self.facts}


PARTIAL = ".manifest.rank-{rank}.json"  # a rank's part of a distributed run, merged when every rank is done
PARTIAL_GLOB = ".manifest.rank-*.json"


class Manifest:
    """``manifest.json`` (or a rank's partial manifest under a launcher, at ``path``)."""

    def __init__(self, folder: Path, recipe: dict[str, Any], environment: dict[str, Any], images: list[ImageRecord],
                 *, path: Path | None = None, optimizations: dict[str, dict[str, Any]] | None = None,
                 timings: dict[str, Any] | None = None):
        self.folder = folder
        self.path = path or folder / MANIFEST_NAME
        self.recipe = recipe
        self.environment = environment
        self.optimizations: dict[str, dict[str, Any]] = optimizations if optimizations is not None else {}
        self.timings: dict[str, Any] = timings if timings is not None else {}
        self.images = images
        self.history: str | None = None  # where this run moved the images it replaced
        self.replaced: list[dict[str, str]] = []
        self.views: dict[str, Any] | None = None  # what the sheets and gallery were drawn with (views.drawn)
        self.followers: dict[int, list[int]] = {}  # job index -> the jobs that show its image (same_as)
        self.recipe_path: str | None = None  # the recipe file that owns the folder (provenance.owner_of)
        self.machine: dict[str, Any] = {}  # this machine's side of the environment (absolute paths)

    @classmethod
    def for_jobs(cls, folder: Path, recipe: dict[str, Any], environment: dict[str, Any], jobs: Sequence[Job],
                 ext: str, *, path: Path | None = None,
                 optimizations: dict[str, dict[str, Any]] | None = None) -> Manifest:
        """A new run's manifest: every job pending, named by what it is (:meth:`Job.filename`)."""
        images = [ImageRecord.for_job(job, job.filename(ext)) for job in jobs]
        return cls(folder, recipe, environment, images, path=path, optimizations=optimizations)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        """A manifest written by :meth:`save` (ValueError or OSError when it is not readable)."""
        data = json.loads(read_text(path, follow=False, what="manifest"))
        if path.name == MANIFEST_NAME:
            data = joined(data, read_local(path.parent))
        manifest = cls(path.parent, data["recipe"], data["environment"],
                       [ImageRecord.from_json(r) for r in data["images"]], path=path,
                       optimizations=data.get("optimizations"), timings=data.get("timings"))
        history = data.get("history")
        if isinstance(history, dict):
            manifest.set_history(history.get("folder"), [(r["file"], r["reason"]) for r in history.get("replaced") or []])
        if isinstance(data.get("views"), dict):
            manifest.views = data["views"]
        if isinstance(data.get("recipe_path"), str):
            manifest.recipe_path = data["recipe_path"]
        if isinstance(data.get("machine"), dict):
            manifest.machine = data["machine"]
        return manifest

    # --- the jobs' records --------------------------------------------------------------------

    def record(self, job: Job) -> ImageRecord:
        return self.images[job.index]

    def file_for(self, job: Job) -> Path:
        return self.folder / self.record(job).file

    def files(self) -> list[str]:
        """Each job's file name, in job order."""
        return [record.file for record in self.images]

    def place(self, job: Job, batch: Batch, key: str | None = None) -> ImageRecord:
        """Record the batch ``job`` is planned in (and its key in that batch, when given)."""
        record = self.record(job)
        record.batch, record.batch_size, record.batch_jobs = batch.index, batch.size, [j.index for j in batch.jobs]
        if key is not None:
            record.key = key
        return record

    def written(self, job: Job, sha256: str, rank: int, seconds: float | None = None,
                facts: dict[str, Any] | None = None) -> None:
        """``job``'s image is on disk, with these bytes, written by process ``rank``; its batch
        took ``seconds`` per image to generate; ``facts``: what plugins recorded about it."""
        record = self.record(job)
        record.status, record.sha256, record.rank = "done", sha256, rank
        record.seconds = round(seconds, 4) if seconds is not None else None
        record.facts = dict(facts) if facts else None
        for index in self.followers.get(job.index, ()):
            self.show(self.images[index], record)

    @staticmethod
    def show(record: ImageRecord, maker: ImageRecord) -> None:
        """``record``'s cell shows the image of ``maker`` (an equal job): its file, key, status and batch."""
        record.file, record.same_as = maker.file, maker.index
        for name in ("status", "sha256", "key", "batch", "batch_size", "batch_jobs", "rank", "seconds", "facts"):
            setattr(record, name, getattr(maker, name))

    def follow(self, job: Job, maker: Job) -> None:
        """``job`` is made by ``maker`` (an equal job, generated once): its record mirrors ``maker``'s,
        now and when ``maker``'s image is written."""
        self.followers.setdefault(maker.index, []).append(job.index)
        self.show(self.record(job), self.record(maker))

    def kept(self, job: Job, sha256: str, key: str, made: dict[str, Any], file: str | None = None) -> None:
        """``job``'s image was made by an earlier run and is kept as it is (in ``file``, when the
        folder holds it under another name than the job's: an older folder's name, or an equal job's
        file): its record says how it was made (``made``: batch, batch_size, batch_jobs, rank as
        recorded then)."""
        record = self.record(job)
        if file is not None:
            record.file = file
        record.status, record.sha256, record.key = "done", sha256, key
        record.batch, record.batch_size = made.get("batch"), made.get("batch_size")
        record.batch_jobs, record.rank = made.get("batch_jobs"), made.get("rank")
        record.seconds = made.get("seconds")
        record.facts = made.get("facts")

    def set_history(self, folder: str | None, replaced: Iterable[tuple[str, str]]) -> None:
        """This run moved the files it replaced into ``folder`` (relative to the manifest's): their
        names and why."""
        self.history = folder
        self.replaced = [{"file": name, "reason": reason} for name, reason in replaced]

    def record_timings(self, load_seconds: float, setup_seconds: float, generate_seconds: float,
                       batches: list[dict[str, Any]], pipelines: list[dict[str, Any]] | None = None) -> None:
        """This process's timings: loading, optimizations' setup, generation, writing, how long the
        device waited for the writes (``write_wait_seconds``: below ``write_seconds`` when the
        writes overlapped the next batches), per batch, and (``pipelines``, with build axes) each
        variant's pipeline: loaded, switched in place, derived or reused, and how long it took."""
        self.timings = {
            "load_seconds": round(load_seconds, 4),
            "setup_seconds": round(setup_seconds, 4),
            "generate_seconds": round(generate_seconds, 4),
            "write_seconds": round(sum(b["write_seconds"] for b in batches), 4),
            "write_wait_seconds": round(sum(b.get("wait_seconds", b["write_seconds"]) for b in batches), 4),
            "batches": batches,
        }
        if pipelines is not None:
            self.timings["pipelines"] = pipelines

    # --- on disk ------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The manifest as written: recipe, environment, optimizations, timings, images (and the
        history folder of the images this run replaced, when it replaced any)."""
        data: dict[str, Any] = {
            "recipe": self.recipe,
            "environment": self.environment,
            "optimizations": self.optimizations,
            "timings": self.timings,
            "images": [record.to_json() for record in self.images],
        }
        if self.history is not None:
            data["history"] = {"folder": self.history, "replaced": self.replaced}
        if self.views is not None:
            data["views"] = self.views
        if self.recipe_path is not None:
            data["recipe_path"] = self.recipe_path
        return data

    def save(self) -> None:
        """``manifest.json`` (its committed part) and ``.recipe-runner/run.json`` (the rest); a
        rank's partial manifest whole."""
        data = self.to_json()
        if self.path.name == MANIFEST_NAME:
            data, local = split(data, self.folder, self.machine)
            save_local(self.folder, local)
        else:  # a rank's part, merged into manifest.json later: everything, this machine's paths too
            data["machine"] = self.machine
        atomic_write(self.path, json.dumps(data, indent=2, ensure_ascii=False, default=repr).encode("utf-8"))


# --- the committed manifest and the machine-local record ---------------------------------------------

def split(data: dict[str, Any], folder: Path, machine: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A manifest (as :meth:`Manifest.to_json` makes it, or as an older version wrote it) as two
    records: what is committed (no timings, no per-image seconds, no optimization's ``*_seconds``,
    no absolute path) and what is this machine's (``.recipe-runner/run.json``: ``environment``,
    ``timings``, ``seconds`` by file, ``optimizations`` durations). ``machine``: this run's absolute paths (an older manifest's are taken from it)."""
    environment = dict(data.get("environment") or {})
    local_env = dict(machine or {})
    for key in MACHINE_KEYS:
        value = environment.get(key)
        if isinstance(value, str) and Path(value).is_absolute():  # an older manifest's
            local_env.setdefault(key, value)
            environment[key] = portable_location(value, folder) if key == "model_location" else Path(value).name
    if "recipe_folder" in environment:
        environment["recipe_folder"] = portable_folder(environment["recipe_folder"], folder)
    seconds: dict[str, Any] = {}
    images = []
    for record in data.get("images") or []:
        if isinstance(record, dict) and "seconds" in record:
            record = dict(record)
            value = record.pop("seconds")
            if value is not None and isinstance(record.get("file"), str):
                seconds[record["file"]] = value
        images.append(record)
    committed = {k: v for k, v in data.items() if k not in ("timings", "machine")}
    if "environment" in data:
        committed["environment"] = environment
    if "images" in data:
        committed["images"] = images
    local = {"environment": local_env, "timings": data.get("timings") or {}, "seconds": seconds}
    durations = _durations(data.get("optimizations"))
    if durations:  # an optimization's own timing (compile's warmup_seconds): this machine's too
        committed["optimizations"] = {name: {k: v for k, v in record.items() if not _is_duration(k)}
                                      if name in durations else record
                                      for name, record in data["optimizations"].items()}
        local["optimizations"] = durations
    return committed, local


def _is_duration(key: str) -> bool:
    return key.endswith("_seconds")


def _durations(optimizations: Any) -> dict[str, dict[str, Any]]:
    """The ``*_seconds`` facts of each optimization record, by optimization."""
    if not isinstance(optimizations, dict):
        return {}
    found = {name: {k: v for k, v in record.items() if _is_duration(k)}
             for name, record in optimizations.items() if isinstance(record, dict)}
    return {name: facts for name, facts in found.items() if facts}


def local_path(folder: Path) -> Path:
    return folder / LOCAL_FOLDER / LOCAL_NAME


def save_local(folder: Path, local: dict[str, Any]) -> None:
    """Write ``.recipe-runner/run.json`` (and the ``.gitignore`` that keeps the folder out of git)."""
    where = folder / LOCAL_FOLDER
    if where.is_symlink() or (where.exists() and not where.is_dir()):
        return  # never written through a link; the committed manifest is what matters
    where.mkdir(exist_ok=True)
    ignore = where / ".gitignore"
    if not regular_file(ignore):
        atomic_write(ignore, LOCAL_IGNORE.encode("utf-8"))
    atomic_write(where / LOCAL_NAME, json.dumps(local, indent=2, ensure_ascii=False, default=repr).encode("utf-8"))


def read_local(folder: Path) -> dict[str, Any]:
    """``.recipe-runner/run.json`` of ``folder`` ({} when there is none or it is unreadable)."""
    path = local_path(folder)
    if not regular_file(path):
        return {}
    try:
        data = json.loads(read_text(path, follow=False, what="machine-local record"))
    except (ValueError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


def joined(data: dict[str, Any], local: dict[str, Any]) -> dict[str, Any]:
    """A committed manifest with its machine-local record folded back in: ``timings``, each image's
    ``seconds`` (when the manifest has none of its own: an older one), each optimization's
    ``*_seconds`` facts, and ``machine``."""
    if not local:
        return data
    data = dict(data)
    if "timings" not in data and isinstance(local.get("timings"), dict):
        data["timings"] = local["timings"]
    seconds = local.get("seconds") if isinstance(local.get("seconds"), dict) else {}
    if seconds:
        data["images"] = [{**r, "seconds": seconds.get(r.get("file"))} if isinstance(r, dict) and "seconds" not in r
                          else r for r in data.get("images") or []]
    durations = local.get("optimizations")
    if isinstance(durations, dict) and isinstance(data.get("optimizations"), dict):
        data["optimizations"] = {name: {**durations[name], **record}
                                 if isinstance(record, dict) and isinstance(durations.get(name), dict) else record
                                 for name, record in data["optimizations"].items()}
    if isinstance(local.get("environment"), dict):
        data["machine"] = local["environment"]
    return data
