"""Resume: what an output folder already holds from earlier runs, merged with what a recipe asks
for. One call, :func:`resume`, reads the folder and returns a :class:`ResumeState`: which jobs
are unchanged (their files kept, bytes and mtime untouched), which are new, which are
regenerated because their result changed, and the batches that make them.

- A job is **unchanged** when its file exists with the key (:mod:`recipe_runner.records.keys`) and
  sha256 that the folder's manifest (or journal) recorded. File names and keys come from what a
  job *is* (the resolved job), never from its position or how the recipe spells it, so adding a
  seed, a prompt or an axis value leaves every other job unchanged. A file the folder recorded
  with the job's key under another name (an older recipe-runner's name, or a respelled recipe's)
  is the job's too: kept as it is, under its name (:func:`match`).
- Jobs equal to an earlier job (:attr:`recipe_runner.plan.prepared.Prepared.same_as`) are never
  generated: their records show that job's image.
- A job whose key changed (an edited parameter, scheduler, model...) or whose file was edited on
  disk is **regenerated**; the file it replaces is never deleted: :meth:`ResumeState.retire`
  moves it, with the files no job makes any more, into ``history/<time>/`` beside a
  ``manifest.json`` that describes them as they were, so the previous results stay reachable (and
  are a valid side of ``recipe-run --compare``).
- An interrupted run resumes in the batches it recorded (when ``run.batch_size`` is unchanged
  and every member is still the same job), so resumed pixels equal an uninterrupted run's; new
  and regenerated jobs are planned among themselves.

:func:`peek` decides the same without loading anything, importing torch or reading more than
file metadata: a re-run with nothing to do costs about a dry run, and ``--dry-run`` says what a
run would do. Light module: no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base import paths
from ..base.errors import RecipeError
from ..base.filehashes import FileHashes
from ..base.paths import atomic_write, regular_file
from ..base.safe_read import read_text
from ..pipelines.build import choose_dtype
from ..pipelines.sources import SOURCES
from ..plan.batches import Batch, plan
from ..plan.inputs import is_url, read_bytes
from ..plan.matrix import Job
from .formats import extension
from .journal import JOURNAL_GLOB, JOURNAL_NAME, RANK_JOURNAL, read_journal
from .keys import Keys, job_keys
from .manifest import LOCAL_FOLDER, MANIFEST_NAME, PARTIAL_GLOB, Manifest, check_line, check_manifest, read_local
from .names import plain_file_name, record_file
from .outputs import read_embedded

if TYPE_CHECKING:
    from ..plan.prepared import Prepared
    from ..recipe.model import Recipe

NOT_MADE = "no job of this recipe makes it any more"  # why a file moved to history/ that no job replaced
HISTORY = "history"  # replaced images, one folder per run that replaced any
EDITED = "changed on disk since it was written"  # a file not as recorded: regenerated, never kept in place
REPLACED = "replaced"  # under .recipe-runner/: what an --update-baseline run replaces, until it ends


def shared_text(count: int) -> str:
    """``, 8 shown from an equal job`` (nothing when none is)."""
    return f", {count} shown from an equal job" if count else ""


@dataclass
class Previous:
    """What a folder holds from earlier runs: its manifest as read (None when there is none or it
    is unreadable), the ``run.batch_size`` setting it was made with, and its image records by file
    name, with the partial manifests and journals folded in (journal lines win)."""

    manifest: dict[str, Any] | None = None
    batch_setting: Any = None
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    bad: str | None = None  # what is wrong with its manifest.json, when it is not a valid manifest


@dataclass
class Replaced:
    """An existing file that this run moves into the history folder, and why."""

    file: str
    reason: str
    record: dict[str, Any]  # how it was made, as the folder recorded it ({} when unknown)


@dataclass
class ResumeState:
    """The merge of a folder's earlier state with a recipe's jobs.

    ``batches`` are the batches to run (each holds a pending job; re-computed whole, only the
    pending images written); ``pending`` the jobs to generate, of which ``regenerated`` replace a
    file; ``done`` the unchanged jobs (index -> sha256) with ``made``, the batch fields their
    files were made with; ``replaced`` the files :meth:`retire` moves into the history folder."""

    jobs: Sequence[Job]
    batches: list[Batch]
    keys: Keys
    pending: set[int] = field(default_factory=set)
    regenerated: set[int] = field(default_factory=set)
    done: dict[int, str] = field(default_factory=dict)
    made: dict[int, dict[str, Any]] = field(default_factory=dict)
    replaced: list[Replaced] = field(default_factory=list)
    previous: Previous = field(default_factory=Previous)
    files: dict[int, str] = field(default_factory=dict)  # done jobs kept under another name than the plan's
    shared: dict[int, int] = field(default_factory=dict)  # jobs that show an equal job's image -> that job
    replacing: dict[int, Replaced] = field(default_factory=dict)  # regenerated job -> the file its image replaces
    retired: list[Replaced] = field(default_factory=list)  # what retire() moved aside

    @property
    def new(self) -> int:
        return len(self.pending) - len(self.regenerated)

    def todo(self) -> list[Batch]:
        """The batches to run, in order."""
        return self.batches

    def summary(self, identical: int = 0) -> str:
        """``2 new, 4 regenerated, 6 unchanged`` (``, 8 shown from an equal job`` when some are);
        ``identical``: regenerated images pixel-identical to the file they replace, which was kept
        (``4 regenerated (3 pixel-identical: files kept)``)."""
        same = f" ({identical} pixel-identical: files kept)" if identical else ""
        text = f"{self.new} new, {len(self.regenerated)} regenerated{same}, {len(self.done)} unchanged"
        return text + shared_text(len(self.shared))

    def apply(self, manifest: Manifest) -> None:
        """Write the state into a new run's manifest: every job's key, the planned batch of each
        pending job, and the unchanged jobs' records carried over as their files were made."""
        for job_index, sha256 in self.done.items():
            job = self.jobs[job_index]
            manifest.kept(job, sha256, self.keys.of(job), self.made.get(job_index, {}), self.files.get(job_index))
        for batch in self.batches:
            for job in batch.jobs:
                if job.index not in self.done:
                    manifest.place(job, batch, key=self.keys.of(job))
        for job_index, maker in self.shared.items():
            manifest.follow(self.jobs[job_index], self.jobs[maker])

    def retire(self, folder: Path, *, baseline: bool = False) -> Path | None:
        """Move every replaced file into ``history/<UTC time>/`` (same bytes, same mtime) beside a
        ``manifest.json`` that describes them as the folder recorded them; returns that folder.
        ``baseline`` (``--update-baseline``): into the machine-local ``.recipe-runner/replaced/``
        instead, removed by :meth:`settle` (a baseline keeps no history). A file whose job's new
        image turns out pixel-identical is moved back (:class:`recipe_runner.records.outputs.Writer`)."""
        present = [r for r in self.replaced if (folder / r.file).is_file() and not (folder / r.file).is_symlink()]
        if not present:
            return None
        history = folder / (f"{LOCAL_FOLDER}/{REPLACED}" if baseline else HISTORY)
        if history.is_symlink() or (baseline and (folder / LOCAL_FOLDER).is_symlink()):  # checked before the run too (runlock.check_links)
            raise RecipeError.one(f"the history folder {history} is a symbolic link: refusing to move "
                                  "images through it", file=str(history))
        stamp = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())
        target = history / stamp
        suffix = 1
        while target.exists():
            suffix += 1
            target = history / f"{stamp}-{suffix}"
        target.mkdir(parents=True)
        self.retired = present
        old = self.previous.manifest or {}
        described = {
            "recipe": old.get("recipe") or {},
            "environment": old.get("environment") or {},
            "optimizations": old.get("optimizations") or {},
            "timings": {},
            "images": [{**r.record, "file": r.file, "status": "done", "replaced_because": r.reason} for r in present],
        }
        atomic_write(target / MANIFEST_NAME, json.dumps(described, indent=2, ensure_ascii=False, default=repr).encode())
        for r in present:
            os.replace(folder / r.file, target / r.file)
        return target

    def restorable(self, target: Path | None) -> dict[int, Path]:
        """Regenerated job -> where :meth:`retire` put the file its image replaces (in ``target``);
        not a file edited on disk since it was written (the run re-makes it as recorded)."""
        if target is None:
            return {}
        moved = {r.file for r in self.retired}
        return {i: target / r.file for i, r in self.replacing.items() if r.file in moved and r.reason != EDITED}

    def settle(self, folder: Path, target: Path | None, *, baseline: bool = False,
               names: Sequence[str] = ()) -> list[Replaced]:
        """After the run: what is left in ``target`` (files whose new image was pixel-identical
        were moved back). A baseline's ``target`` is removed with what is left in it, except the
        files of jobs an interrupted run did not get to (``names``: the jobs' file names; such a
        file goes back where it was, so the folder stays as committed until the next run); a
        history folder left empty is removed, else its manifest is rewritten to list what it
        holds. Returns the files the run replaced for good."""
        if baseline and target is None:
            shutil.rmtree(folder / LOCAL_FOLDER / REPLACED, ignore_errors=True)
        if target is None:
            return []
        left = [r for r in self.retired if regular_file(target / r.file)]
        if baseline:
            planned = set(names)
            for r in list(left):
                if r.file in planned and not (folder / r.file).exists() and not (folder / r.file).is_symlink():
                    os.replace(target / r.file, folder / r.file)  # its job did not run: as committed
                    left.remove(r)
        if baseline:  # with what an interrupted baseline run left there
            shutil.rmtree(folder / LOCAL_FOLDER / REPLACED, ignore_errors=True)
            return left
        if not left:
            shutil.rmtree(target, ignore_errors=True)
            try:
                target.parent.rmdir()  # only when empty: an earlier history stays
            except OSError:
                pass
            return left
        if len(left) != len(self.retired):
            path = target / MANIFEST_NAME
            try:
                described = json.loads(read_text(path, follow=False, what="manifest"))
                kept = {r.file for r in left}
                described["images"] = [r for r in described.get("images") or [] if r.get("file") in kept]
                atomic_write(path, json.dumps(described, indent=2, ensure_ascii=False, default=repr).encode())
            except (ValueError, OSError, AttributeError):
                pass
        return left


def read_previous(folder: Path, *, set_aside: bool = False, warn: Callable[[str], None] = paths.warn_once) -> Previous:
    """What ``folder`` holds from earlier runs, with the journals folded in (journal lines win).

    Every record is checked on read (:func:`recipe_runner.manifest.check_manifest`), and a record's
    ``file`` is used only when it is a plain file name of the folder (others are ignored with a
    warning). A ``manifest.json`` that is not valid JSON or not a valid manifest is reported in
    ``Previous.bad``; with ``set_aside`` (a run holding the folder's lock), it is renamed to
    ``manifest.json.bad-<UTC time>`` (kept, with a warning) and the folder is re-read from what its
    images carry (their embedded job: key, batch), so a damaged manifest never blocks a folder."""
    manifest = None
    bad = None
    path = folder / MANIFEST_NAME
    if regular_file(path):
        try:
            manifest = json.loads(read_text(path, follow=False, what="manifest"))
        except (ValueError, OSError) as exc:
            bad = f"not valid JSON ({exc})" if isinstance(exc, ValueError) else None
            manifest = None
        else:
            bad = check_manifest(manifest)
    if bad is not None or not isinstance(manifest, dict):
        manifest = None
    records: dict[str, dict[str, Any]] = {}
    batch_setting: Any = None
    if bad is not None and set_aside:
        aside = folder / f"{MANIFEST_NAME}.bad-{time.strftime('%Y-%m-%dT%H-%M-%SZ', time.gmtime())}"
        os.replace(path, aside)
        warn(f"{path}: not a valid manifest ({bad}): set aside as {aside.name}; the folder is re-read from "
             "what its images carry")
        records, batch_setting = embedded_records(folder)
    if manifest is not None:
        seconds = read_local(folder).get("seconds") if "timings" not in manifest else None
        seconds = seconds if isinstance(seconds, dict) else {}
        for record in manifest.get("images") or []:
            if isinstance(record.get("same_as"), int) and record["file"] in records:
                continue  # a cell showing an equal job's image: the record of the job that made it says how
            if "seconds" not in record and isinstance(seconds.get(record["file"]), (int, float)):
                record = {**record, "seconds": seconds[record["file"]]}  # kept in the machine-local record
            records[record["file"]] = record
    for partial in sorted(folder.glob(PARTIAL_GLOB)):  # a distributed run that did not finish
        try:
            part = json.loads(read_text(partial, follow=False, what="partial manifest"))
        except (ValueError, OSError):
            continue
        if part is None or check_manifest(part) is not None:
            if part is not None:
                warn(f"{partial}: not a valid partial manifest: ignored")
            continue
        for record in part["images"]:
            if record.get("status") == "done":
                records[record["file"]] = {**records.get(record["file"], {}), **record}
    for journal in [folder / JOURNAL_NAME, *sorted(folder.glob(RANK_JOURNAL.format(rank="*")))]:
        invalid = 0
        for line in read_journal(journal):
            if check_line(line):
                records[line["file"]] = {**records.get(line["file"], {}), **line}
            else:
                invalid += 1
        if invalid:
            warn(f"{journal}: {invalid} line(s) that are not image records: ignored")
    records = {name: record for name, record in records.items()
               if record_file(folder, name, "a manifest or journal record", warn) is not None}
    if manifest is not None:
        batch_setting = ((manifest.get("recipe") or {}).get("run") or {}).get("batch_size")
    return Previous(manifest, batch_setting, records, bad)


def embedded_records(folder: Path) -> tuple[dict[str, dict[str, Any]], Any]:
    """The image records of ``folder`` as its images carry them (each one's embedded job: index,
    key, batch...; its status done, its sha256 that of the file as it is), and the ``run.batch_size``
    setting their embedded recipe was made with. Only regular files with a plain image name whose
    embedded job names that file are read."""
    records: dict[str, dict[str, Any]] = {}
    batch_setting: Any = None
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return records, None
    for entry in entries:
        if not plain_file_name(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        path = Path(entry.path)
        try:
            text = read_embedded(path)
            job = json.loads(text.get("job") or "null")
        except Exception:  # any file at all may sit under an image's name
            continue
        if not isinstance(job, dict) or job.get("file") != entry.name or not check_line(job):
            continue
        records[entry.name] = {**job, "status": "done", "sha256": paths.sha256_file(path)}
        if batch_setting is None:
            try:
                recipe = json.loads(text.get("recipe") or "{}")
                batch_setting = (recipe.get("run") or {}).get("batch_size")
            except (ValueError, AttributeError):
                pass
    return records, batch_setting


@dataclass
class Matched:
    """How a folder's files meet a plan's jobs (:func:`match`)."""

    done: dict[int, tuple[str, str, dict[str, Any]]] = field(default_factory=dict)  # index -> (file, sha256, record)
    pending: set[int] = field(default_factory=set)  # the jobs to generate (each makes its own image)
    replaced: dict[int, Replaced] = field(default_factory=dict)  # pending job -> the file its image replaces
    shared: dict[int, int] = field(default_factory=dict)  # a job -> the equal job whose image it shows
    gone: list[Replaced] = field(default_factory=list)  # files no job makes any more


def match(folder: Path, jobs: Sequence[Job], names: Sequence[str], key_of: Callable[[Job], str],
          records: dict[str, dict[str, Any]], same_as: dict[int, int], hashes: FileHashes, ext: str, *,
          force: bool = False, embedded: bool = True, legacy: Callable[[Job], str | None] | None = None) -> Matched:
    """Which jobs the folder holds already, which to generate and what each replaces.

    A job is done when a file of the folder is its image: the folder recorded it done, with the
    job's key and the file's sha256. Its own name (``names``) is looked at first; else any file the
    folder recorded with the job's key (keys come from the resolved job, so a job spelled
    another way, or named the way older versions named files, keeps its file: the name it had
    before first). A job to generate replaces the file of its name, or else the file made for its
    cell (:meth:`Job.cell_name`: the same place in the recipe as written, before an edit); what no
    job keeps or replaces any more is ``gone``. A job equal to an earlier one (``same_as``) is not
    generated: it shows that job's image (or a file of its own recorded with its key).
    ``embedded``: a file whose record is missing is recognised by the key it carries. ``legacy``:
    the key an older recipe-runner gave a job, when it differs (:meth:`Keys.legacy`): a file
    recorded with it is the job's too."""
    out = Matched()
    claimed: set[str] = set()

    def accepted(job: Job) -> tuple[str, ...]:
        old = legacy(job) if legacy is not None else None
        return (key_of(job), old) if old is not None else (key_of(job),)

    def intact(name: str, keys: tuple[str, ...]) -> str | None:
        path = folder / name
        if path.is_symlink() or not path.is_file():
            return None
        record = records.get(name) or {}
        if record.get("status") != "done" or record.get("key") not in keys:
            return None
        sha256 = hashes.sha256(path)
        return sha256 if record.get("sha256") == sha256 else None

    by_key: dict[str, list[str]] | None = None
    own = {names[job.index] for job in jobs if job.index not in same_as}  # where each job writes

    def adopt(job: Job) -> bool:
        """A file the folder recorded with ``job``'s key, under another name: the job keeps it."""
        nonlocal by_key
        if by_key is None:
            by_key = {}
            for name, record in records.items():
                if record.get("status") == "done" and isinstance(record.get("key"), str):
                    by_key.setdefault(record["key"], []).append(name)
        keys = accepted(job)
        cell_file = f"{job.cell_name()}.{ext}"
        found = [name for key in keys for name in by_key.get(key, ())]
        for name in sorted(found, key=lambda n: n != cell_file):
            if name in claimed or (name in own and name != names[job.index]):
                continue  # another job's own name: that job writes there
            sha256 = intact(name, keys)
            if sha256 is not None:
                out.done[job.index] = (name, sha256, records.get(name) or {})
                claimed.add(name)
                return True
        return False

    unresolved: list[Job] = []
    for job in jobs:
        if job.index in same_as:
            continue
        name = names[job.index]
        path = folder / name
        if not force and not path.is_symlink() and path.is_file():
            record = records.get(name) or {}
            keys = accepted(job)
            if record.get("status") == "done" and record.get("key") in keys:
                sha256 = intact(name, keys)
                if sha256 is not None:
                    out.done[job.index] = (name, sha256, record)
                    claimed.add(name)
                    continue
            elif embedded and _embedded_key(path) in keys:
                # written just before a crash, before its journal line (its record still says pending,
                # or how the job was made before): recognised by the key it carries
                out.done[job.index] = (name, hashes.sha256(path),
                                       {k: v for k, v in _embedded_job(path).items() if k in MADE_FIELDS})
                claimed.add(name)
                continue
        unresolved.append(job)
    if not force:
        unresolved = [job for job in unresolved if not adopt(job)]
    by_cell: dict[str, list[str]] = {}
    for name, record in records.items() if unresolved else ():
        if record.get("status") in ("done", "stale"):
            cell = record.get("cell")
            by_cell.setdefault(cell if isinstance(cell, str) else Path(name).stem, []).append(name)
    for job in unresolved:
        out.pending.add(job.index)
        name = names[job.index]
        candidates = [name] + by_cell.get(job.cell_name(), [])
        for old in candidates:
            if old in claimed or not regular_file(folder / old):
                continue
            record = records.get(old) or {}
            if force:
                reason = "--force"
            elif old == name and record.get("status") == "done" and record.get("key") in accepted(job):
                reason = EDITED
            else:
                reason = "its job changed since it was made"
            out.replaced[job.index] = Replaced(old, reason, record)
            claimed.add(old)
            break
    for job in jobs:
        maker = same_as.get(job.index)
        if maker is None:
            continue
        if maker in out.done and not force and adopt(job):
            continue  # an older folder made it in a file of its own: the cell keeps it
        out.shared[job.index] = maker
    kept = claimed | {names[i] for i in out.pending}
    for name, record in records.items():
        if name not in kept and record.get("status") in ("done", "stale") and regular_file(folder / name):
            out.gone.append(Replaced(name, NOT_MADE, record))
    return out


def resume(manifest: Manifest, jobs: Sequence[Job], keys: Keys, batch_size: int, batch_setting: int | str,
           *, force: bool = False, hashes: FileHashes | None = None, same_as: dict[int, int] | None = None,
           ext: str | None = None) -> ResumeState:
    """Merge what ``manifest.folder`` holds with the jobs of a new run whose manifest is ``manifest``
    (its records name each job's file). ``force``: every job is regenerated (its file replaced).
    ``same_as``: the jobs an equal job makes (:attr:`recipe_runner.plan.prepared.Prepared.same_as`):
    never generated, shown in their cells. Existing files are hashed through ``hashes``
    (remembered by size, times and inode), so a re-run does not read every finished image again."""
    hashes = hashes if hashes is not None else FileHashes()
    folder, files = manifest.folder, manifest.files()
    ext = ext if ext is not None else (files[0].rpartition(".")[2] if files else "png")
    previous = read_previous(folder, set_aside=True)
    records = previous.records
    state = ResumeState(jobs, [], keys, previous=previous)
    found = match(folder, jobs, files, keys.of, records, same_as or {}, hashes, ext, force=force, legacy=keys.legacy)
    for index, (name, sha256, record) in found.done.items():
        state.done[index] = sha256
        state.made[index] = record
        if name != files[index]:
            state.files[index] = name
    state.pending = set(found.pending)
    state.regenerated = set(found.replaced)
    state.shared = dict(found.shared)
    state.replaced = [found.replaced[i] for i in sorted(found.replaced)] + found.gone
    state.replacing = dict(found.replaced)
    honoured = previous.batch_setting == batch_setting and not force
    state.batches = _batches(jobs, files, keys, batch_size, records if honoured else {}, state.pending, state.shared)
    hashes.save()
    old_files = _old_files(records)
    now: dict[str, int] = {}
    for i, name in enumerate(files):
        if i not in state.shared:
            now.setdefault(state.files.get(i, name), i)
    state.made = {i: _made(state.made.get(i, {}), old_files, now) for i in state.done}
    return state




def _old_files(records: dict[str, dict[str, Any]]) -> dict[int, str]:
    """The earlier run's job index -> file name."""
    return {r["index"]: name for name, r in records.items() if isinstance(r.get("index"), int)}


def _batches(jobs: Sequence[Job], files: Sequence[str], keys: Keys, batch_size: int,
             records: dict[str, dict[str, Any]], pending: set[int], shared: dict[int, int] | None = None) -> list[Batch]:
    """The batches that make the ``pending`` jobs: those ``records`` recorded where every member is
    still the same job (an interrupted run goes on in its own batches), the rest planned afresh
    among themselves at ``batch_size``, in job order."""
    by_file: dict[str, Job] = {}
    for job, name in zip(jobs, files):
        if not shared or job.index not in shared:
            by_file.setdefault(name, job)
    old_files = _old_files(records)
    placed: dict[int, tuple[Job, ...]] = {}
    for job in jobs:
        if job.index not in pending or job.index in placed:
            continue
        members = _recorded_members(records.get(files[job.index]), old_files, by_file, records, keys)
        if members is not None and job in members and not any(m.index in placed for m in members):
            for member in members:
                placed[member.index] = members
    found: list[tuple[int | None, tuple[Job, ...]]] = []  # (the batch number recorded, if kept; its jobs)
    loose: list[Job] = []
    numbers: set[int] = set()

    def flush() -> None:
        found.extend((None, b.jobs) for b in plan(loose, batch_size))
        loose.clear()

    started: set[tuple[int, ...]] = set()
    for job in jobs:
        members = placed.get(job.index)
        if members is None:
            if job.index in pending:
                loose.append(job)
            continue
        indices = tuple(m.index for m in members)
        if indices in started:
            continue
        flush()
        started.add(indices)
        number = (records.get(files[members[0].index]) or {}).get("batch")
        kept = number if isinstance(number, int) and not isinstance(number, bool) and number not in numbers else None
        if kept is not None:
            numbers.add(kept)
        found.append((kept, members))
    flush()
    # A batch resumed as recorded keeps its number (its images' records and embedded jobs equal an
    # uninterrupted run's); batches planned afresh take the lowest numbers left.
    free = (n for n in range(len(found) + len(numbers) + 1) if n not in numbers)
    return [Batch(number if number is not None else next(free), members) for number, members in found]


def _recorded_members(record: dict[str, Any] | None, old_files: dict[int, str], by_file: dict[str, Job],
                      records: dict[str, dict[str, Any]], keys: Keys) -> tuple[Job, ...] | None:
    """The jobs of the batch ``record`` was planned in, when each of them is still a job of this
    recipe with the key it was planned with; else None."""
    if not record or not isinstance(record.get("batch_jobs"), list) or not record["batch_jobs"]:
        return None
    members = []
    for old_index in record["batch_jobs"]:
        name = old_files.get(old_index) if isinstance(old_index, int) else None
        job = by_file.get(name) if name is not None else None
        if name is None or job is None or (records.get(name) or {}).get("key") != keys.of(job):
            return None
        members.append(job)
    return tuple(members)


def _made(record: dict[str, Any], old_files: dict[int, str], now: dict[str, int]) -> dict[str, Any]:
    """The batch fields of an unchanged job's record, its batch's members renumbered to this run's
    jobs (``batch_jobs`` None when one of them is no longer a job)."""
    made: dict[str, Any] = {k: record.get(k) for k in ("batch", "batch_size", "rank", "seconds", "facts")
                            if record.get(k) is not None}
    members = record.get("batch_jobs")
    if isinstance(members, list):
        mapped = [now.get(old_files.get(m, "")) if isinstance(m, int) else None for m in members]
        made["batch_jobs"] = None if None in mapped else mapped
    return made


MADE_FIELDS = ("batch", "batch_size", "batch_jobs", "rank", "index")


def _embedded_job(path: Path) -> dict[str, Any]:
    """The job an image carries ({} when it carries none or is unreadable)."""
    try:
        job = json.loads(read_embedded(path).get("job", "{}"))
    except Exception:  # any file at all may sit under an image's name
        return {}
    return job if isinstance(job, dict) else {}


def _embedded_key(path: Path) -> str | None:
    """The key an image carries in its embedded job (None when it carries none or is unreadable)."""
    key = _embedded_job(path).get("key")
    return key if isinstance(key, str) else None


def remove_leftovers(folder: Path) -> None:
    """Once manifest.json holds everything: the partial manifests and journals of earlier runs."""
    for path in [*folder.glob(PARTIAL_GLOB), *folder.glob(JOURNAL_GLOB)]:
        path.unlink(missing_ok=True)


# --- deciding without loading ---------------------------------------------------------------------

@dataclass
class Peek:
    """What a run of a prepared recipe would do now, decided from files alone."""

    new: int
    regenerate: int
    unchanged: int
    manifest: dict[str, Any] | None = None  # the folder's manifest.json as read (None: there is none)
    pending_variants: set[str] = field(default_factory=set)  # variants with a job new or to regenerate
    shared: int = 0  # jobs that show an equal job's image

    @property
    def nothing_to_do(self) -> bool:
        return self.new == 0 and self.regenerate == 0

    def summary(self) -> str:
        return f"{self.new} new, {self.regenerate} to regenerate, {self.unchanged} unchanged" + shared_text(self.shared)


def peek(prepared: Prepared, hashes: FileHashes | None = None) -> Peek | None:
    """What a run would do, without importing torch or loading a model: the jobs' keys computed
    with what the folder's last run recorded about its environment (device, dtype, the Hub commit
    loaded, which optimizations applied), files checked by size and times through the remembered
    hashes. None when that cannot be decided cheaply (no earlier run, a device or dtype other than
    recorded, an input image behind a URL, a model its source has not built yet): the run then decides
    after loading, as always."""
    recipe = prepared.recipe
    folder = prepared.out_dir
    previous = read_previous(folder)
    if previous.bad is not None:
        return None  # the run sets the manifest aside and reads the images themselves
    old = previous.manifest
    if old is None or not previous.records:
        shared = prepared.same_as
        return None if old is not None else Peek(len(prepared.jobs) - len(shared), 0, 0, None,
                                                 {v.id for v in prepared.variants if any(j.index not in shared for j in v.jobs)},
                                                 len(shared))
    env = old.get("environment") or {}
    device, dtype = env.get("device"), env.get("dtype")
    if not isinstance(device, str) or not isinstance(dtype, str) or int(env.get("world_size") or 1) != 1:
        return None
    if recipe.model.device not in ("auto", device) or choose_dtype(recipe.model.dtype, device, _silent) != dtype:
        return None
    if not all(SOURCES.of(value).ready(value) for v in prepared.variants for value in _model_ids(v.recipe)):
        return None
    if any(is_url(source) for source in prepared.inputs.values()):
        return None
    recorded = {name: (record or {}).get("status") for name, record in (old.get("optimizations") or {}).items()}
    if any(recorded.get(e.name) is None for v in prepared.variants for e in v.enabled):
        return None
    try:
        digests = {value: _sha256_bytes(read_bytes(source)) for value, source in prepared.inputs.items()}
    except OSError:  # not a regular file, too large, unreadable: the inputs' preflight says so (exit 2)
        return None
    hashes = hashes or FileHashes()
    revisions = dict(env.get("model_revisions") or {})  # recorded when a model axis loads several
    for variant in prepared.variants:
        revisions.setdefault(variant.recipe.model.id, env.get("model_revision"))
    keys = job_keys(prepared.variants, prepared.jobs, lambda v: choose_dtype(v.recipe.model.dtype, device, _silent),
                    revisions, digests,
                    applied=lambda v: [e for e in v.enabled if recorded[e.name] != "skipped"])  # as the last run settled them
    ext = extension(recipe.output.format)
    names = [job.filename(ext) for job in prepared.jobs]
    found = match(folder, prepared.jobs, names, keys.of, previous.records, prepared.same_as, hashes, ext,
                  embedded=False, legacy=keys.legacy)
    hashes.save()
    regenerate = len(found.replaced)
    pending = {prepared.jobs[i].variant for i in found.pending}
    return Peek(len(found.pending) - regenerate, regenerate, len(found.done), old, pending, len(found.shared))


def _silent(message: str) -> None:
    """choose_dtype's warning is the run's to give, not a peek's."""


def _model_ids(recipe: Recipe) -> list[str]:
    return [recipe.model.id, *(c.id for c in recipe.components.values())]


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
