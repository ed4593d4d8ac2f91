"""Lock files: ``recipe-run --lock RECIPE`` pins every model a recipe loads, ``--locked`` refuses to
run when any of them differs from the pins.

The lock of ``recipes/warrior.toml`` is ``recipes/warrior.lock``, JSON, with one entry per model
reference (``model``, ``components.<name>``):

- a Hub repo id: the commit hash its revision resolves to (``HfApi().model_info(id, revision).sha``;
  offline, the ref recorded in the local Hub cache; a revision that already is a 40-hex commit
  is taken as it is);
- a local folder or a built-in ``tiny:`` model: a SHA-256 of each file in it (weights and
  configs; hidden files skipped), and one hash over them all. Files are hashed once per version
  (:mod:`recipe_runner.base.filehashes` remembers them by path, size, file times and inode), so
  ``--locked`` costs a few stat calls on an unchanged model.

No timestamps, sorted keys: the file only changes when a pin does, so it diffs well in review.
Light module: hashing and the Hub client need neither torch nor diffusers.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..axes.registry import KINDS
from ..base.errors import Problem, RecipeError, RunError
from ..base.filehashes import FileHashes, FolderTooLarge, combined
from ..base.paths import atomic_write, boundary, is_within, sha256_file
from ..base.report import note
from ..base.safe_read import read_text
from ..recipe.loading import LoadedRecipe, display_path
from ..recipe.model import Recipe
from .sources import SOURCES, local_folder, locate, resolve_id

LOCK_VERSION = 1
COMMIT = re.compile(r"[0-9a-f]{40}")


def lock_path(recipe_file: Path) -> Path:
    return recipe_file.with_suffix(".lock")


@dataclass(frozen=True)
class Reference:
    key: str  # "model" | "components.<name>"
    id: str
    revision: str | None
    subfolder: str | None
    folder: Path  # the folder of the file that wrote the id: relative paths resolve against it

    @property
    def id_key(self) -> str:
        """The dotted key that wrote the id (an axis value is the id itself, or a table with one)."""
        return self.key if self.key.startswith("matrix.") else f"{self.key}.id"


def references(recipe: Recipe, loaded: LoadedRecipe) -> list[Reference]:
    """Every model the recipe loads: ``model``, ``components.<name>``, and each value of a
    ``model`` or ``components.<name>`` axis (``matrix.axes.model.1``)."""
    refs = [Reference("model", recipe.model.id, recipe.model.revision, None, loaded.origin("model.id").folder)]
    for name, spec in sorted(recipe.components.items()):
        key = f"components.{name}"
        refs.append(Reference(key, spec.id, spec.revision, spec.subfolder, loaded.origin(f"{key}.id").folder))
    for axis, values in recipe.matrix.axes.items():
        kind = KINDS.of(axis)
        folder = loaded.origin(f"matrix.axes.{axis}").folder
        for i, value in enumerate(values):
            found = kind.references(axis, value)
            if found is not None:
                refs.append(Reference(f"matrix.axes.{axis}.{i}", found.id, found.revision, found.subfolder, folder))
    return refs


def hub_commit(repo_id: str, revision: str | None) -> str:
    """The commit ``revision`` (default "main") of a Hub model resolves to."""
    if revision and COMMIT.fullmatch(revision):
        return revision
    try:
        from huggingface_hub import HfApi

        sha = HfApi().model_info(repo_id, revision=revision).sha
        if sha is None:
            raise ValueError(f"the Hub gave no commit for {repo_id!r}")
        return sha
    except Exception as exc:  # offline, private, gone: try the local Hub cache's refs
        cached = cached_commit(repo_id, revision or "main")
        if cached:
            return cached
        raise RunError(f"cannot resolve {repo_id}@{revision or 'main'} to a commit: {type(exc).__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc


def cached_commit(repo_id: str, revision: str) -> str | None:
    try:
        from huggingface_hub import constants

        ref = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / revision
        text = read_text(ref, 4096).strip()
    except Exception:
        return None
    return text if COMMIT.fullmatch(text) else None


def local_root(ref: Reference, loaded: LoadedRecipe) -> Path | None:
    """The folder a local (or ``tiny:``) reference loads from; None for a Hub id."""
    location = Path(locate(ref.id, ref.folder, ref.id_key, loaded))
    if not location.is_dir():
        return None
    return location / ref.subfolder if ref.subfolder else location


def hash_folder(ref: Reference, root: Path, loaded: LoadedRecipe, hashes: FileHashes) -> dict[str, str]:
    """The file hashes of a local model folder; RecipeError (exit 2, at the key that names it) for a
    folder too large to be a model or a file in it that is not a regular file (nothing hangs)."""
    try:
        return hashes.folder(root)
    except FolderTooLarge as exc:
        raise loaded.error(ref.id_key, str(exc)) from None
    except OSError as exc:
        raise loaded.error(ref.id_key, f"cannot hash the model folder: {exc}") from None


def resolve_reference(ref: Reference, loaded: LoadedRecipe, hashes: FileHashes) -> dict[str, Any]:
    """The lock entry of one reference, as it is now."""
    entry: dict[str, Any] = {"id": ref.id, "revision": ref.revision}
    if ref.subfolder:
        entry["subfolder"] = ref.subfolder
    root = local_root(ref, loaded)
    if root is not None:
        files = hash_folder(ref, root, loaded, hashes)
        if not files:
            raise loaded.error(ref.id_key, f"no files to hash in {root}")
        entry.update(kind="local", sha256=combined(files), files=files)
    else:
        entry.update(kind="hub", commit=hub_commit(resolve_id(ref.id, ref.id_key, loaded).id, ref.revision))
    return entry


LOCAL_ID = "local folder"  # what a job key holds for a model id that names a folder: its files' hashes say which


def identity_ids(recipe: Recipe, loaded: LoadedRecipe) -> dict[str, str]:
    """The id a job key holds for the model and each component (by reference key): a local folder
    (written as a path, through ``${VAR}`` or an alias) is :data:`LOCAL_ID`, its content being in
    :func:`loaded_models`, so the same files at another path are the same model; a Hub id as it
    resolves (an alias's target); a plugin source's id (``tiny:sd15``) as written."""
    ids: dict[str, str] = {}
    for ref in references(recipe, loaded):
        if ref.key.startswith("matrix."):
            continue  # a variant's model: its [model] table says it
        if SOURCES.plugin_source(ref.id) is not None:
            ids[ref.key] = ref.id
        elif local_folder(ref.id, ref.folder, ref.id_key, loaded) is not None:
            ids[ref.key] = LOCAL_ID
        else:
            ids[ref.key] = resolve_id(ref.id, ref.id_key, loaded).id
    return ids


def local_weights(recipe: Recipe, loaded: LoadedRecipe, hashes: FileHashes) -> dict[str, str]:
    """One content hash per local model folder the recipe loads, by reference key (``model``,
    ``components.vae``): resume keys carry them, so that weights changed in place make the images
    made with the old ones stale instead of done."""
    found = {}
    for ref in references(recipe, loaded):
        root = local_root(ref, loaded)
        if root is not None and root.is_dir():
            found[ref.key] = combined(hash_folder(ref, root, loaded, hashes))
    return found


def loaded_models(recipe: Recipe, loaded: LoadedRecipe, model_revision: str | None,
                  hashes: FileHashes | None = None) -> dict[str, Any]:
    """What the recipe's model ids stood for in a run: each local folder's content hash (hashed
    once per version of its files) and, for a Hub model, ``model_revision``: the commit it was
    loaded from (the manifest's ``environment.model_revision``). Part of every job's key.
    ``hashes``: the run's (the files it hashed already are not read again)."""
    hashes = hashes if hashes is not None else FileHashes()
    found: dict[str, Any] = local_weights(recipe, loaded, hashes)
    hashes.save()
    if "model" not in found:
        found["model_commit"] = model_revision
    return found


def model_records(recipe: Recipe, loaded: LoadedRecipe, hashes: FileHashes,
                  commits: dict[str, str | None]) -> dict[str, dict[str, Any]]:
    """What each model reference of the recipe (``model``, ``components.<name>``, axis values) was
    made from, as the manifest and every image record it (``environment.models``): a local folder
    or a ``tiny:`` model as ``{kind: local, sha256, files: {name relative to the folder: sha256}}``,
    a Hub model as ``{kind: hub, commit}`` (``commits[id]``, the commit loaded; else the local Hub
    cache's ref for its revision; else the revision asked for). No paths: ``--reproduce`` compares
    these with today's to name what changed. ``hashes``: the run's (files are hashed once a run)."""
    found: dict[str, dict[str, Any]] = {}
    for ref in references(recipe, loaded):
        root = local_root(ref, loaded)
        if root is not None:
            files = hash_folder(ref, root, loaded, hashes)
            found[ref.key] = {"kind": "local", "sha256": combined(files), "files": files}
            continue
        commit = commits.get(ref.id)
        if commit is None and ref.revision and COMMIT.fullmatch(ref.revision):
            commit = ref.revision
        found[ref.key] = {"kind": "hub", "commit": commit or cached_commit(ref.id, ref.revision or "main") or ref.revision}
    return found


def make_lock(recipe: Recipe, loaded: LoadedRecipe) -> dict[str, Any]:
    hashes = FileHashes()
    models = {ref.key: resolve_reference(ref, loaded, hashes) for ref in references(recipe, loaded)}
    hashes.save()
    lock: dict[str, Any] = {
        "lock_version": LOCK_VERSION,
        "recipe": loaded.path.name,
        "written_by": f"recipe-run {__version__}",
        "models": models,
    }
    chain = extends_chain(loaded)
    if chain:
        lock["extends"] = chain
    return lock


def chain_name(path: Path, recipe_file: Path) -> str:
    """How the lock names a file of the extends chain: relative to the recipe's folder (``/``
    separated, the same in every clone) when it is inside the recipe's repository (or folder),
    else by its absolute path."""
    inside, _ = boundary(recipe_file)
    if is_within(path, inside):
        return Path(os.path.relpath(path.resolve(), recipe_file.resolve().parent)).as_posix()
    return str(path.resolve())


def extends_chain(loaded: LoadedRecipe) -> dict[str, str]:
    """The files a recipe extends (its extends chain, the recipe itself left out), by
    :func:`chain_name`: each one's SHA-256."""
    found: dict[str, str] = {}
    for path in loaded.chain[1:]:
        try:
            found[chain_name(path, loaded.path)] = sha256_file(path)
        except OSError as exc:
            raise RecipeError.one(f"cannot hash the extended file: {exc}", key="extends",
                                  file=display_path(path)) from None
    return found


def chain_problems(loaded: LoadedRecipe, lock: dict[str, Any], path: Path) -> list[Problem]:
    """``--locked``: the extends chain against the one the lock recorded (each file's hash). A lock
    written before locks covered it (no ``extends``) is accepted, with a note."""
    now = extends_chain(loaded)
    recorded = lock.get("extends")
    shown = display_path(path)
    if recorded is None:
        if now:
            note(f"{shown}: the lock does not cover the extends chain yet ({len(now)} file{'s' * (len(now) != 1)}): "
                 f"re-lock with recipe-run --lock {display_path(loaded.path)} to pin it")
        return []
    if not isinstance(recorded, dict):
        return [Problem("not a lock file: 'extends' is not a table: re-lock with recipe-run --lock", file=shown)]
    relock = f"re-lock with recipe-run --lock {display_path(loaded.path)}"
    by_name = {chain_name(p, loaded.path): p for p in loaded.chain[1:]}
    problems = []
    for name, sha256 in now.items():
        if name not in recorded:
            problems.append(Problem(f"extended, but not in the lock's extends chain {shown}: the chain changed: {relock}",
                                    file=display_path(by_name[name])))
        elif recorded[name] != sha256:
            problems.append(Problem(f"differs from the lock {shown}: {relock}", file=display_path(by_name[name])))
    for name in sorted(set(recorded) - set(now)):
        problems.append(Problem(f"the lock's extends chain has {name}, which the recipe no longer extends: the chain "
                                f"changed: {relock}", key="extends", file=display_path(loaded.path)))
    return problems


def write_lock(recipe: Recipe, loaded: LoadedRecipe) -> Path:
    """Write the lock file beside the recipe; returns its path."""
    path = lock_path(loaded.path)
    text = json.dumps(make_lock(recipe, loaded), indent=2, sort_keys=True) + "\n"
    atomic_write(path, text.encode("utf-8"))
    return path


CONFLICT_MARKERS = ("<<<<<<< ", "=======", ">>>>>>> ", "||||||| ")  # git's, at a line's start


def conflict_line(text: str) -> int | None:
    """The first line (1-based) of a git merge conflict marker in ``text``; None when there is none.
    A lock file is JSON: no line of it starts with ``<``, ``=``, ``>`` or ``|``."""
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith(CONFLICT_MARKERS) and (line.rstrip() == "=======" or not line.startswith("=")):
            return number
    return None


def read_lock(path: Path, recipe_file: Path | None = None) -> dict[str, Any]:
    shown = display_path(path)
    if not path.is_file():
        raise RecipeError.one("no lock file: write one with recipe-run --lock RECIPE (and commit it)", file=shown)
    try:
        text = read_text(path, what="lock file")
    except (OSError, ValueError) as exc:
        raise RecipeError.one(f"unreadable lock file: {exc}", file=shown) from exc
    conflict = conflict_line(text)
    if conflict is not None:
        recipe = display_path(recipe_file or path.with_suffix(".toml"))
        raise RecipeError.one(f"the lock file has merge conflict markers: re-run recipe-run --lock {recipe} "
                              "(and commit it)", file=shown, line=conflict)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise RecipeError.one(f"unreadable lock file: {exc}", file=shown) from exc
    if not isinstance(data, dict) or data.get("lock_version") != LOCK_VERSION or not isinstance(data.get("models"), dict):
        raise RecipeError.one(f"not a lock file of version {LOCK_VERSION}: re-lock with recipe-run --lock", file=shown)
    return data


def _describe_drift(key: str, locked: dict[str, Any], now: dict[str, Any]) -> str | None:
    """How a reference differs from its lock entry (None: it does not). A local folder is compared
    by its files, not by its path: the same bytes elsewhere (another clone, another machine's
    alias) are the model the lock pins."""
    fields = ("revision", "subfolder", "kind") if now["kind"] == "local" else ("id", "revision", "subfolder", "kind")
    for field in fields:
        if locked.get(field) != now.get(field):
            return f"{field} is {now.get(field)!r}, the lock has {locked.get(field)!r}"
    if now["kind"] == "hub":
        if locked.get("commit") != now["commit"]:
            return f"{now['id']}@{now['revision'] or 'main'} is now commit {now['commit']}, the lock pins {locked.get('commit')}"
        return None
    if locked.get("sha256") == now["sha256"]:
        return None
    old, new = locked.get("files") or {}, now["files"]
    changed = sorted(n for n in old.keys() & new.keys() if old[n] != new[n])
    added, removed = sorted(new.keys() - old.keys()), sorted(old.keys() - new.keys())
    parts = [f"{label}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
             for label, names in (("changed", changed), ("added", added), ("removed", removed)) if names]
    moved = f" (the lock has id {locked.get('id')!r}, now {now['id']!r})" if locked.get("id") != now["id"] else ""
    return "files differ from the lock (" + ("; ".join(parts) or "content hash") + ")" + moved


def verify(recipe: Recipe, loaded: LoadedRecipe) -> None:
    """``--locked``: RecipeError (exit 2) naming every model that differs from the lock file."""
    path = lock_path(loaded.path)
    lock = read_lock(path, loaded.path)
    locked = lock["models"]
    problems: list[Problem] = chain_problems(loaded, lock, path)
    current = references(recipe, loaded)
    hashes = FileHashes()
    for ref in current:
        if ref.key not in locked:
            problems.append(loaded.problem(ref.id_key, f"not in the lock file {display_path(path)}: re-lock with recipe-run --lock"))
            continue
        now = resolve_reference(ref, loaded, hashes)
        drift = _describe_drift(ref.key, locked[ref.key], now)
        if drift:
            problems.append(loaded.problem(ref.id_key, f"differs from {display_path(path)}: {drift}"))
        elif locked[ref.key].get("id") != now["id"]:
            note(f"{display_path(loaded.path)}: {ref.id_key} is {now['id']!r}, the lock has {locked[ref.key].get('id')!r}: "
                 "the same files, so the lock holds")
    hashes.save()
    for key in sorted(set(locked) - {r.key for r in current}):
        problems.append(Problem("locked but no longer in the recipe: re-lock with recipe-run --lock", key=key,
                                file=display_path(path)))
    if problems:
        raise RecipeError(problems)
