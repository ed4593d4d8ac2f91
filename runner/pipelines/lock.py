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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..axes.registry import KINDS
from ..base.errors import Problem, RecipeError, RunError
from ..base.filehashes import FileHashes, FolderTooLarge, combined
from ..base.paths import atomic_write
from ..base.safe_read import read_text
from ..recipe.loading import LoadedRecipe, display_path
from ..recipe.model import Recipe
from .sources import locate

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
        entry.update(kind="hub", commit=hub_commit(ref.id, ref.revision))
    return entry


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
    return {
        "lock_version": LOCK_VERSION,
        "recipe": loaded.path.name,
        "written_by": f"recipe-run {__version__}",
        "models": models,
    }


def write_lock(recipe: Recipe, loaded: LoadedRecipe) -> Path:
    """Write the lock file beside the recipe; returns its path."""
    path = lock_path(loaded.path)
    text = json.dumps(make_lock(recipe, loaded), indent=2, sort_keys=True) + "\n"
    atomic_write(path, text.encode("utf-8"))
    return path


def read_lock(path: Path) -> dict[str, Any]:
    shown = display_path(path)
    if not path.is_file():
        raise RecipeError.one("no lock file: write one with recipe-run --lock RECIPE (and commit it)", file=shown)
    try:
        data = json.loads(read_text(path, what="lock file"))
    except (OSError, ValueError) as exc:
        raise RecipeError.one(f"unreadable lock file: {exc}", file=shown) from exc
    if not isinstance(data, dict) or data.get("lock_version") != LOCK_VERSION or not isinstance(data.get("models"), dict):
        raise RecipeError.one(f"not a lock file of version {LOCK_VERSION}: re-lock with recipe-run --lock", file=shown)
    return data


def _describe_drift(key: str, locked: dict[str, Any], now: dict[str, Any]) -> str | None:
    for field in ("id", "revision", "subfolder", "kind"):
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
    return "files differ from the lock (" + ("; ".join(parts) or "content hash") + ")"


def verify(recipe: Recipe, loaded: LoadedRecipe) -> None:
    """``--locked``: RecipeError (exit 2) naming every model that differs from the lock file."""
    path = lock_path(loaded.path)
    locked = read_lock(path)["models"]
    problems: list[Problem] = []
    current = references(recipe, loaded)
    hashes = FileHashes()
    for ref in current:
        if ref.key not in locked:
            problems.append(loaded.problem(ref.id_key, f"not in the lock file {display_path(path)}: re-lock with recipe-run --lock"))
            continue
        drift = _describe_drift(ref.key, locked[ref.key], resolve_reference(ref, loaded, hashes))
        if drift:
            problems.append(loaded.problem(ref.id_key, f"differs from {display_path(path)}: {drift}"))
    hashes.save()
    for key in sorted(set(locked) - {r.key for r in current}):
        problems.append(Problem("locked but no longer in the recipe: re-lock with recipe-run --lock", key=key,
                                file=display_path(path)))
    if problems:
        raise RecipeError(problems)
