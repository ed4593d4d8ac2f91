"""``recipe-run --watch RECIPE [RECIPE ...]``: run the recipes, then keep the process and its
loaded pipelines warm and run them again on every save of a recipe, of a file in its ``extends``
chain, or of an input image or mask it uses.

A *round* re-prepares every recipe (the usual checks; an invalid edit prints the usual
``error: file:line: key: ...`` lines and the session keeps watching), releases the pipelines no
recipe uses any more, then executes each recipe with one :class:`~recipe_runner.pipelines.cache.ModelCache`
for the whole session: an edit of the scheduler, params, prompts, seeds or axes reuses the loaded
pipeline (the model key leaves them out), an edit of the model, components or optimizations loads
only what changed. Which jobs run is the resume's decision, as in a plain re-run: only new (or
changed) jobs are generated.

Files are watched with ``watchfiles`` (OS notifications, no polling loop): the folders holding
them, not recursively, filtered to the files the last round read (editors often save by writing a
temporary file and renaming it over the old one, which a watch on the file itself would miss).
A burst of saves is one round: changes are grouped until :data:`STEP_MS` pass without another
(at most :data:`DEBOUNCE_MS`). A file counts as changed when its bytes differ from what the last
round read, so a save without edits, or the tail of a burst that the round already saw, starts
nothing, and a save made while a round runs starts the next round as soon as it ends.

Ctrl-C during a round is the usual two-stage interrupt (written images stay valid, exit 130);
between rounds it ends the session at once with 130.

Light module at import (no torch, no diffusers): running a round imports them, as a run does.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base import report
from ..base.errors import RecipeError
from ..base.safe_read import MAX_IMAGE_BYTES, sha256_regular
from ..pipelines.cache import model_key
from ..plan import inputs as inputs_mod
from ..plugin_api.manager import Plugins
from ..recipe.loading import LoadedRecipe, display_path
from ..views import refresh
from .prepare import Options, Prepared, prepare_all
from .session import Session

STEP_MS = 150  # a burst of saves ends after this long without another
DEBOUNCE_MS = 1600  # and is cut after this long at most
WAKE_MS = 1000  # the watcher wakes up this often even without events (then only checks Ctrl-C)

Snapshot = dict[Path, str | None]  # file -> sha256 of its bytes when a round read it (None: absent)


def digest(path: Path) -> str | None:
    """sha256 of a file's bytes; None when it cannot be read (absent, mid-rename, or not a regular
    file: a FIFO put at a recipe's name is never opened for reading, so it cannot block the watcher)."""
    try:
        return sha256_regular(path, MAX_IMAGE_BYTES)
    except OSError:
        return None


def snapshot(files: Iterable[Path]) -> Snapshot:
    return {path: digest(path) for path in files}


def differing(snap: Snapshot, candidates: Iterable[Path] | None = None) -> list[Path]:
    """The files of ``snap`` (or of ``candidates`` among them) whose bytes are not what the snapshot saw."""
    paths = snap if candidates is None else [p for p in dict.fromkeys(candidates) if p in snap]
    return sorted(p for p in paths if digest(p) != snap[p])


class Relevant:
    """A ``watchfiles`` filter: only changes to the watched files (by path, or by their real path)."""

    def __init__(self, files: Iterable[Path] = ()) -> None:
        self.files: dict[str, Path] = {}
        self.set(files)

    def set(self, files: Iterable[Path]) -> None:
        self.files = {}
        for path in files:
            self.files[str(path)] = path
            self.files.setdefault(os.path.realpath(path), path)

    def path_of(self, changed: str) -> Path | None:
        """The watched file an event's path stands for, or None."""
        return self.files.get(changed) or self.files.get(os.path.realpath(changed))

    def __call__(self, change: Any, changed: str) -> bool:
        return self.path_of(changed) is not None


class Watcher:
    """Waits for the watched files to change: ``watchfiles`` over the folders that hold them.

    The watch stays open between waits (events that arrive while a round runs are kept), and is
    reopened only when the set of folders changes.
    """

    def __init__(self, step_ms: int = STEP_MS, debounce_ms: int = DEBOUNCE_MS, wake_ms: int = WAKE_MS) -> None:
        self.step_ms, self.debounce_ms, self.wake_ms = step_ms, debounce_ms, wake_ms
        self.relevant = Relevant()
        self._folders: tuple[str, ...] = ()
        self._events: Iterator[set[tuple[Any, str]]] | None = None
        self._started = False  # the watch has answered once (it starts on the first request)

    def wait(self, snap: Snapshot) -> list[Path]:
        """Block until a file of ``snap`` differs from its digest there; returns those that do."""
        import watchfiles

        self.relevant.set(snap)
        folders = tuple(sorted({os.path.dirname(p) for p in self.relevant.files if os.path.isdir(os.path.dirname(p))}))
        if self._events is None or folders != self._folders:
            self.close()
            self._folders = folders
            self._events = watchfiles.watch(*folders, watch_filter=self.relevant, debounce=self.debounce_ms,
                                            step=self.step_ms, rust_timeout=self.wake_ms, yield_on_timeout=True,
                                            recursive=False, raise_interrupt=True)
            self._started = False
        changed = differing(snap)  # saved while the round ran (or before this watch started)
        if changed:
            return changed
        for events in self._events:
            if not self._started:  # the first answer of a new watch: it runs now; compare everything once more
                self._started = True
                changed = differing(snap)
            else:
                changed = differing(snap, (p for _, name in events if (p := self.relevant.path_of(name)) is not None))
            if changed:
                return changed
        return []  # pragma: no cover - watchfiles.watch ends only on a stop event, never given here

    def close(self) -> None:
        if self._events is not None:
            close = getattr(self._events, "close", None)
            if close is not None:
                close()
            self._events = None


# --- the pipelines of a session --------------------------------------------------------------------

def release_unused(cache: Any, keep: Iterable[str]) -> list[str]:
    """Drop from ``cache`` (a :class:`~recipe_runner.pipelines.cache.ModelCache`) every model no current
    recipe uses, collect the garbage and return CUDA's cached blocks, so memory holds what the
    recipes need. Returns the model ids released. Pipelines of a kept model for other tasks stay
    (they share its weights, and a later task change derives from them instead of loading)."""
    wanted = set(keep)
    released: list[str] = []
    for key in [k for k in cache.entries if k not in wanted]:
        for built in cache.entries[key].by_task.values():
            context = getattr(built, "context", None)
            recipe = getattr(context, "recipe", None)
            released.append(recipe.model.id if recipe is not None else key)
    cache.release(wanted)
    return sorted(set(released))


# --- the session ------------------------------------------------------------------------------------

@dataclass
class WatchSession:
    """One ``--watch`` invocation: the recipes, what each was last known to read, the warm pipelines."""

    paths: list[Path]
    sets: list[str]
    plugins: Plugins
    options: Options
    locked: bool = False
    debug: bool = False
    session: Session = field(init=False)  # the loop of a plain run; its pipelines stay warm between rounds
    chains: dict[Path, set[Path]] = field(default_factory=dict)  # recipe -> its extends chain (itself included)
    inputs: dict[Path, set[Path]] = field(default_factory=dict)  # recipe -> local input images and masks
    invalid: bool = False  # the last round's recipes did not validate

    def __post_init__(self) -> None:
        self.session = Session(self.plugins, self.options, debug=self.debug)

    def files(self) -> set[Path]:
        """Every file the recipes read, as last known (a recipe that failed to load keeps what it had)."""
        found = {p.resolve() for p in self.paths}
        for path in self.paths:
            found |= self.chains.get(path, set()) | self.inputs.get(path, set())
        return found

    def prepare(self) -> list[Prepared]:
        """Load and prepare every recipe as a run does (:func:`~.prepare.prepare_all`: RecipeError
        listing every problem), recording what each reads."""

        def seen(path: Path, loaded: LoadedRecipe) -> None:
            self.chains[path] = {p.resolve() for p in loaded.chain}

        prepared = prepare_all(self.paths, self.sets, self.plugins, self.options, locked=self.locked, seen=seen)
        for item in prepared:  # an abstract recipe is not prepared: watched through those that extend it
            self.inputs[item.loaded.path] = {Path(v) for v in item.inputs.values() if not inputs_mod.is_url(v)}
        return prepared

    def round(self, before: Snapshot | None = None) -> bool:
        """Prepare, check, release what no recipe uses, run every recipe through the session loop a
        plain run uses (a recipe with nothing to do loads nothing). An invalid edit or a failure is
        reported, never raised (the session goes on; a recipe that does not validate keeps every
        model loaded, nothing is released before it is reported); KeyboardInterrupt is raised.
        With ``before`` (the watched files as the round read them), a save during the round stops it
        at the next batch boundary (the finished batches' images kept, the models warm).
        Returns whether every job of every recipe is done."""

        self.invalid = False
        try:
            prepared = self.prepare()
        except RecipeError as exc:
            report.problems(exc.problems)
            self.invalid = True
            return False
        keep = [model_key(v.recipe, v.enabled, self.options.allow_pickle) for p in prepared for v in p.variants]

        def checked() -> None:  # every check before loading passed: only now release
            released = release_unused(self.session.cache, keep)
            if released:
                report.note(f"released {', '.join(released)}: no recipe uses it any more")

        stop = Saved(before) if before is not None else None
        manifests = self.session.run(prepared, keep_going=True, checked=checked, stop=stop)
        return len(manifests) == len(prepared) and all(
            isinstance(r, dict) and r.get("status") == "done" for m in manifests for r in m.get("images") or [])


class Saved:
    """Asked between batches: whether a watched file was saved since the round read it (by size and
    time first, so that a long round pays one ``stat`` per file and batch; then by its bytes)."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        self.stats = {path: _stat(path) for path in snap}
        self.changed = False

    def __call__(self) -> bool:
        if not self.changed:
            moved = [p for p in self.snap if _stat(p) != self.stats[p]]
            self.changed = bool(moved) and bool(differing(self.snap, moved))
            if not self.changed:
                self.stats.update({p: _stat(p) for p in moved})
        return self.changed


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns, info.st_ino


def written_so_far() -> int:
    """Images written by this process (the outputs module is loaded once a run wrote one)."""
    import sys

    outputs = sys.modules.get("recipe_runner.records.outputs")
    return int(outputs.images_written()) if outputs is not None else 0


def watch(paths: list[Path], sets: list[str], plugins: Plugins, options: Options, *, locked: bool = False,
          debug: bool = False, watcher: Watcher | None = None, rounds: int | None = None) -> int:
    """Run the recipes, then again on every change, until Ctrl-C (KeyboardInterrupt: exit 130).
    ``rounds`` stops after that many rounds (tests); returns 0 then."""

    missing = [p for p in paths if not p.is_file()]
    if missing:  # a folder that does not exist cannot be watched; a file that does may later fail to parse
        raise RecipeError.one(f"no such recipe file: {', '.join(display_path(p) for p in missing)}", file="recipe-run")
    session = WatchSession(list(paths), list(sets), plugins, options, locked=locked, debug=debug)
    watcher = watcher or Watcher()
    done = 0
    changed: list[Path] = []
    made = written_so_far()
    complete = False
    idle = False
    try:
        with refresh.live():
            while rounds is None or done < rounds:
                if changed:
                    report.note(f"changed: {', '.join(display_path(p) for p in changed)}")
                else:
                    report.note(f"watch: running {len(paths)} recipe{'s' * (len(paths) != 1)}")
                before = snapshot(session.files())  # before reading: a save during the round starts the next
                idle = False
                complete = session.round(before)
                done += 1
                files = session.files()
                snap = {p: before[p] if p in before else digest(p) for p in files}
                if rounds is not None and done >= rounds:
                    break
                report.note(f"watching {len(files)} file{'s' * (len(files) != 1)} (Ctrl-C to stop)")
                idle = True
                changed = watcher.wait(snap)
    except KeyboardInterrupt:
        report.note("\n" + stopped(written_so_far() - made, done, idle and complete, session.invalid))
        return 130
    finally:
        watcher.close()
    return 0


def stopped(made: int, rounds: int, complete: bool, invalid: bool = False) -> str:
    """What Ctrl-C ending a session says: what the session made, and whether anything is left."""
    what = f"this session made {made} image(s) in {rounds} round{'s' * (rounds != 1)}"
    if complete:
        return f"interrupted while watching: {what}; every job is done, nothing is left to do"
    if invalid:
        return f"interrupted while watching: {what}; the recipes as last saved do not validate (see the errors above)"
    return (f"interrupted: {what}, every one complete and listed in its manifest; "
            "what is left is made by running the same command again")
