"""Resume: job keys, the append-only journal that records images as they land, and the merge of
what a folder already holds with what a recipe asks for.

Why a journal: rewriting ``manifest.json`` after every batch costs O(images) per batch. Instead
each written image appends one JSON line to ``.manifest.journal.jsonl`` (fsynced at the end of its
batch); the journal is folded into ``manifest.json`` (atomically) every few batches and when the
run ends or is interrupted, then emptied. A crash loses at most the batch in flight; a torn last
line is ignored when the journal is read back.

Why keys: a job's key hashes everything that decides its pixels (model and component ids,
revisions and variants, the content of local model folders and the Hub commit loaded, the dtype
used, optimizations, scheduler, call parameters, prompt, the *content* of its input images, seed,
task, generator device) and the identities of the jobs in its batch, since batch membership changes kernel rounding. A re-run skips a job whose file exists with
the key and sha256 the manifest recorded; the rest run in the batches the manifest recorded (which
differ from a fresh plan after an out-of-memory backoff), so resumed pixels equal an uninterrupted
run's. An existing file whose job changed is *stale*: left untouched and reported.

Batch membership is explicit in every record (``batch``, ``batch_size``, ``batch_jobs``) so that a
process holding only the manifest can re-create any planned batch (resume, distributed ranks).
Light module: no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .distributed import PARTIAL_GLOB
from .matrix import Job
from .plan import Batch, plan

JOURNAL_NAME = ".manifest.journal.jsonl"
RANK_JOURNAL = ".manifest.journal.rank-{rank}.jsonl"  # one per process under a launcher
FOLD_EVERY_SECONDS = 30.0  # fold the journal into manifest.json at most this often during a run
RECORD_FIELDS = ("file", "index", "key", "sha256", "status", "batch", "batch_size", "batch_jobs")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr).encode()).hexdigest()


class Keys:
    """Job keys for one recipe run. ``identity`` is what decides a job's pixels alone; ``key``
    adds the identities of its batch's jobs, in order."""

    def __init__(self, common: dict[str, Any], jobs: Sequence[Job], input_hashes: dict[str, str]):
        self.common = common
        self.inputs = input_hashes
        self.identities = [self._identity(job) for job in jobs]

    def _identity(self, job: Job) -> str:
        return _digest({
            **self.common,
            "scheduler": job.scheduler,
            "params": job.params,
            "prompt": job.prompt,
            "seed": job.seed,
            "image": self.inputs.get(job.image) if job.image is not None else None,
            "mask_image": self.inputs.get(job.mask_image) if job.mask_image is not None else None,
        })

    def key(self, index: int, members: Sequence[int]) -> str:
        return _digest({"job": self.identities[index], "batch": [self.identities[m] for m in members]})

    def for_batch(self, batch: Batch, job: Job) -> str:
        return self.key(job.index, [j.index for j in batch.jobs])


def common_identity(recipe: Any, dtype: str, enabled: Sequence[Any], loaded_models: dict[str, Any]) -> dict[str, Any]:
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


# --- the journal ----------------------------------------------------------------------------------

def read_journal(path: Path) -> list[dict[str, Any]]:
    """The records of a journal; a torn or garbled line (a crash mid-append) is skipped."""
    try:
        raw = path.read_bytes() if not path.is_symlink() else b""
    except OSError:
        return []
    records = []
    for line in raw.split(b"\n"):
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and isinstance(item.get("file"), str):
            records.append(item)
    return records


def read_previous(folder: Path) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """What a folder holds from earlier runs: the old manifest (None when absent or unreadable)
    and its image records by file name, with the journal folded in (journal lines win)."""
    manifest = None
    path = folder / "manifest.json"
    if path.is_file() and not path.is_symlink():
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            manifest = None
    records: dict[str, dict[str, Any]] = {}
    if isinstance(manifest, dict):
        for record in manifest.get("images") or []:
            if isinstance(record, dict) and isinstance(record.get("file"), str):
                records[record["file"]] = record
    if isinstance(manifest, dict):  # files no job made last time, remembered as they were
        for record in manifest.get("stale") or []:
            if isinstance(record, dict) and isinstance(record.get("file"), str) and record.get("key"):
                records.setdefault(record["file"], {**record, "status": "done"})
    for partial in sorted(folder.glob(PARTIAL_GLOB)):  # a distributed run that did not finish
        try:
            part = json.loads(partial.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            continue
        for record in part.get("images") or [] if isinstance(part, dict) else []:
            if isinstance(record, dict) and isinstance(record.get("file"), str) and record.get("status") == "done":
                records[record["file"]] = {**records.get(record["file"], {}), **record}
    for journal in [folder / JOURNAL_NAME, *sorted(folder.glob(RANK_JOURNAL.format(rank="*")))]:
        for line in read_journal(journal):
            records[line["file"]] = {**records.get(line["file"], {}), **line}
    return manifest, records


def remove_leftovers(folder: Path) -> None:
    """Once manifest.json holds everything: the partial manifests and journals of earlier runs."""
    for path in [*folder.glob(PARTIAL_GLOB), *folder.glob(".manifest.journal*.jsonl")]:
        path.unlink(missing_ok=True)


class Journal:
    """Appends one line per written image; ``commit`` fsyncs it at a batch's end and folds it into
    the manifest every ``FOLD_EVERY_SECONDS``; ``close`` folds and removes it."""

    def __init__(self, manifest: Any, keys: Keys, rank: int | None = None):
        self.manifest = manifest
        self.keys = keys
        self.path = manifest.folder / (JOURNAL_NAME if rank is None else RANK_JOURNAL.format(rank=rank))
        self._fh = None
        self._folded_at = time.monotonic()

    def _open(self):
        if self._fh is None:
            if self.path.is_symlink():
                self.path.unlink()
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
            self._fh = os.fdopen(os.open(self.path, flags, 0o644), "ab")
        return self._fh

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps({k: record.get(k) for k in RECORD_FIELDS}, ensure_ascii=False)
        self._open().write(line.encode("utf-8") + b"\n")

    def commit(self) -> None:
        """A batch is written: make its lines durable, fold now and then."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        if time.monotonic() - self._folded_at >= FOLD_EVERY_SECONDS:
            self.fold()

    def fold(self) -> None:
        """manifest.json (atomically) describes every image written; then the journal empties."""
        self.manifest.save()
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        self._folded_at = time.monotonic()

    close = fold


# --- merging a folder's previous state with a recipe's jobs ---------------------------------------

@dataclass
class Resume:
    batches: list[Batch]
    pending: set[int]
    done: set[int] = field(default_factory=set)
    stale: list[dict[str, Any]] = field(default_factory=list)  # {"file", "reason"}


def _recorded_batch(record: dict[str, Any] | None, index: int, jobs: Sequence[Job], keys: Keys) -> tuple[int, ...] | None:
    """The batch a previous run recorded for the job at ``index`` when it still applies: it starts
    here, is consecutive, and its recorded key matches this recipe's job with those members."""
    if not record or record.get("index") != index or not isinstance(record.get("batch_jobs"), list):
        return None
    members = record["batch_jobs"]
    if not members or members != list(range(index, index + len(members))) or members[-1] >= len(jobs):
        return None
    if record.get("key") != keys.key(index, members):
        return None
    return tuple(members)


def _embedded_key(path: Path) -> str | None:
    try:
        from .outputs import read_embedded

        return json.loads(read_embedded(path).get("job", "{}")).get("key")
    except Exception:
        return None


def merge(folder: Path, jobs: Sequence[Job], files: Sequence[str], keys: Keys, batch_size: int, batch_setting: Any,
          previous: dict[str, Any] | None, records: dict[str, dict[str, Any]]) -> Resume:
    """Which jobs still need to run, in which batches, and which existing files are stale.

    Recorded batches are honoured when the recipe's ``run.batch_size`` setting is unchanged (an
    out-of-memory backoff leaves them different from a fresh plan); other jobs are planned fresh.
    """
    from .outputs import sha256_file

    old_run = ((previous or {}).get("recipe") or {}).get("run") or {}
    same_setting = old_run.get("batch_size") == batch_setting
    batches: list[Batch] = []
    loose: list[Job] = []

    def flush() -> None:
        for b in plan(loose, batch_size):
            batches.append(Batch(len(batches), b.jobs))
        loose.clear()

    i = 0
    while i < len(jobs):
        recorded = _recorded_batch(records.get(files[i]), i, jobs, keys) if same_setting else None
        if recorded is None:
            loose.append(jobs[i])
            i += 1
            continue
        flush()
        batches.append(Batch(len(batches), tuple(jobs[m] for m in recorded)))
        i = recorded[-1] + 1
    flush()

    state = Resume(batches, pending=set())
    wanted = set(files)
    for batch in batches:
        for job in batch.jobs:
            name = files[job.index]
            path = folder / name
            if path.is_symlink() or not path.exists():
                state.pending.add(job.index)  # a planted link is replaced, never written through
                continue
            record = records.get(name) or {}
            key = keys.for_batch(batch, job)
            if record.get("status") in ("done", "stale") and record.get("key") == key:
                if record.get("sha256") == sha256_file(path):
                    state.done.add(job.index)
                else:
                    state.stale.append(_stale(name, "changed on disk since it was written", record))
            elif not record and _embedded_key(path) == key:
                state.done.add(job.index)  # written just before a crash, before its journal line
            else:
                state.stale.append(_stale(name, "its job changed since it was made", record))
    for name, record in records.items():
        if name not in wanted and record.get("status") in ("done", "stale") and (folder / name).is_file():
            state.stale.append(_stale(name, "no job of this recipe makes it any more", record))
    return state


def _stale(name: str, reason: str, record: dict[str, Any]) -> dict[str, Any]:
    """A stale file's entry: why, and how it was made (so a later run can still recognise it)."""
    made = {k: record.get(k) for k in RECORD_FIELDS if k not in ("file", "status") and record.get(k) is not None}
    return {"file": name, "reason": reason, **made}


def adopt(manifest: Any, state: Resume, records: dict[str, dict[str, Any]], keys: Keys) -> None:
    """Write the merge into the new manifest: planned batches and keys for every job, the done
    records carried over, stale files listed and marked."""
    from .outputs import sha256_file

    images = manifest.data["images"]
    for batch in state.batches:
        members = [j.index for j in batch.jobs]
        for job in batch.jobs:
            record = images[job.index]
            record.update(batch=batch.index, batch_size=batch.size, batch_jobs=members,
                          key=keys.key(job.index, members))
            if job.index in state.done:
                old = records.get(record["file"]) or {}
                record.update(status="done", sha256=old.get("sha256") or sha256_file(manifest.folder / record["file"]))
    stale = {s["file"]: s for s in state.stale}
    for record in images:
        if record["file"] in stale:  # the record keeps describing the file on disk
            made = stale[record["file"]]
            record.update({k: made.get(k) for k in ("key", "sha256", "batch", "batch_size", "batch_jobs")}, status="stale")
    manifest.data["stale"] = state.stale


def stale_message(name: str, stale: list[dict[str, Any]], show: int = 3) -> str:
    files = ", ".join(s["file"] for s in stale[:show]) + (f" and {len(stale) - show} more" if len(stale) > show else "")
    return (f"{name}: {len(stale)} existing image{'s' * (len(stale) != 1)} no longer match{'es' * (len(stale) == 1)} "
            f"the recipe (stale, kept untouched; listed in manifest.json): {files}; delete them to regenerate")
