"""Resume: what an output folder already holds from earlier runs, merged with what a recipe asks
for. One call, :func:`resume`, reads the folder and returns a :class:`ResumeState` (the batches to
run, which jobs are pending, done or stale); :meth:`ResumeState.apply` writes it into the new
manifest.

A re-run skips a job whose file exists with the key (:mod:`recipe_runner.keys`) and sha256 the
manifest recorded; the rest run in the batches the manifest recorded (which differ from a fresh
plan after an out-of-memory backoff), so resumed pixels equal an uninterrupted run's. An existing
file whose job changed is *stale*: left untouched and reported.

What a folder holds: ``manifest.json``, the partial manifests of a distributed run that did not
finish, and the journals (:mod:`recipe_runner.journal`) of images written since the manifest was
last saved; journal lines win. Batch membership is explicit in every record (``batch``,
``batch_size``, ``batch_jobs``) so that a process holding only the manifest can re-create any
planned batch (resume, distributed ranks).
Light module: no torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .distributed import PARTIAL_GLOB
from .journal import JOURNAL_GLOB, JOURNAL_NAME, RANK_JOURNAL, RECORD_FIELDS, read_journal
from .keys import Keys
from .manifest import MANIFEST_NAME, Manifest, Stale
from .matrix import Job
from .outputs import read_embedded
from .paths import sha256_file
from .plan import Batch, plan


@dataclass
class Previous:
    """What a folder holds from earlier runs: the ``run.batch_size`` setting its manifest was made
    with (None when there is no readable manifest) and its image records by file name."""

    batch_setting: Any = None
    records: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class ResumeState:
    """Which jobs still need to run, in which batches, and which existing files are stale.

    ``batches`` covers every job (in job order); ``pending`` are the jobs to generate, ``done``
    those whose file is kept as it is (by job index, with its sha256), ``stale`` the files no job
    makes as they are."""

    batches: list[Batch]
    keys: Keys
    pending: set[int] = field(default_factory=set)
    done: dict[int, str] = field(default_factory=dict)
    stale: list[Stale] = field(default_factory=list)

    def todo(self) -> list[Batch]:
        """The batches holding a pending job (re-computed whole; only the pending images written)."""
        return [b for b in self.batches if any(j.index in self.pending for j in b.jobs)]

    def apply(self, manifest: Manifest) -> None:
        """Write the state into a new run's manifest: every job's planned batch and key, the done
        records carried over, the stale files listed and their records marked."""
        for batch in self.batches:
            for job in batch.jobs:
                manifest.place(job, batch, key=self.keys.for_batch(batch, job))
                if job.index in self.done:
                    manifest.kept(job, self.done[job.index])
        manifest.set_stale(self.stale)


def read_previous(folder: Path) -> Previous:
    """What ``folder`` holds from earlier runs, with the journals folded in (journal lines win)."""
    manifest = None
    path = folder / MANIFEST_NAME
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
        for record in manifest.get("stale") or []:  # files no job made last time, remembered as they were
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
    old_run = ((manifest.get("recipe") or {}).get("run") or {}) if isinstance(manifest, dict) else {}
    return Previous(old_run.get("batch_size"), records)


def resume(manifest: Manifest, jobs: Sequence[Job], keys: Keys, batch_size: int, batch_setting: int | str) -> ResumeState:
    """Merge what ``manifest.folder`` holds with the jobs of a new run whose manifest is ``manifest``
    (its records name each job's file): which jobs still run, in which batches, which files are stale.

    Recorded batches are honoured when the recipe's ``run.batch_size`` setting (``batch_setting``)
    is unchanged (an out-of-memory backoff leaves them different from a fresh plan); other jobs
    are planned fresh at ``batch_size``.
    """
    folder, files = manifest.folder, manifest.files()
    previous = read_previous(folder)
    records = previous.records
    batches = _batches(jobs, files, keys, batch_size, records if previous.batch_setting == batch_setting else {})
    state = ResumeState(batches, keys)
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
                sha256 = sha256_file(path)
                if record.get("sha256") == sha256:
                    state.done[job.index] = sha256
                else:
                    state.stale.append(_stale(name, "changed on disk since it was written", record))
            elif not record and _embedded_key(path) == key:
                state.done[job.index] = sha256_file(path)  # written just before a crash, before its journal line
            else:
                state.stale.append(_stale(name, "its job changed since it was made", record))
    wanted = set(files)
    for name, record in records.items():
        if name not in wanted and record.get("status") in ("done", "stale") and (folder / name).is_file():
            state.stale.append(_stale(name, "no job of this recipe makes it any more", record))
    return state


def _batches(jobs: Sequence[Job], files: Sequence[str], keys: Keys, batch_size: int,
             records: dict[str, dict[str, Any]]) -> list[Batch]:
    """Every job in a batch: the batches ``records`` recorded where they still apply, the other
    jobs planned fresh at ``batch_size``."""
    batches: list[Batch] = []
    loose: list[Job] = []

    def flush() -> None:
        for b in plan(loose, batch_size):
            batches.append(Batch(len(batches), b.jobs))
        loose.clear()

    i = 0
    while i < len(jobs):
        recorded = _recorded_batch(records.get(files[i]), i, jobs, keys)
        if recorded is None:
            loose.append(jobs[i])
            i += 1
            continue
        flush()
        batches.append(Batch(len(batches), tuple(jobs[m] for m in recorded)))
        i = recorded[-1] + 1
    flush()
    return batches


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
    """The key an image carries in its embedded job (None when it carries none or is unreadable)."""
    try:
        return json.loads(read_embedded(path).get("job", "{}")).get("key")
    except Exception:  # any file at all may sit under an image's name
        return None


def _stale(name: str, reason: str, record: dict[str, Any]) -> Stale:
    """A stale file's entry: why, and how it was made (so a later run can still recognise it)."""
    made = {k: record.get(k) for k in RECORD_FIELDS if k not in ("file", "status") and record.get(k) is not None}
    return Stale(name, reason, made)


def stale_message(name: str, stale: Sequence[Stale], show: int = 3) -> str:
    """The warning for the stale files of recipe ``name``."""
    files = ", ".join(s.file for s in stale[:show]) + (f" and {len(stale) - show} more" if len(stale) > show else "")
    return (f"{name}: {len(stale)} existing image{'s' * (len(stale) != 1)} no longer match{'es' * (len(stale) == 1)} "
            f"the recipe (stale, kept untouched; listed in manifest.json): {files}; delete them to regenerate")


def remove_leftovers(folder: Path) -> None:
    """Once manifest.json holds everything: the partial manifests and journals of earlier runs."""
    for path in [*folder.glob(PARTIAL_GLOB), *folder.glob(JOURNAL_GLOB)]:
        path.unlink(missing_ok=True)
