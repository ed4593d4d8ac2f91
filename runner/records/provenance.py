"""What an image's ``environment`` chunk adds to :mod:`recipe_runner.base.environment` so that the image alone
can be re-created: the model revision actually loaded, the third-party plugins of the run, and the folder of the recipe file (relative
model and input paths in the embedded recipe resolve against it on ``--reproduce``).

Committed records hold no machine path (docs/outputs.md, "Portable records"): the recipe's folder is
written relative to the run folder (``../../recipes``), a model folder as :func:`portable_location`
says, and the recipe file that owns a run folder (:func:`owner_of`) relative to its git repository.
The absolute paths go to the run folder's machine-local ``.recipe-runner/run.json``
(:mod:`recipe_runner.records.manifest`). Old records (absolute paths) are still read.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..base.paths import cache_dir, relative_from, repository_root, under
from ..recipe.loading import LoadedRecipe

BUILT_IN = "built-in"  # PluginInfo.source of the built-in plugins, which are not recorded
# The per-file hashes of model folders embedded in each image, at most this many in all (a
# diffusers folder holds 10 to 40; 64 hashes compress to under 4 KB): a folder beyond them keeps its
# one hash and its file count in the image (the manifest keeps every file), so that an image's
# metadata stays within a JPEG's 64 KB of EXIF.
EMBEDDED_MODEL_FILES = 64

_SNAPSHOT = re.compile(r"snapshots[/\\]([0-9a-f]{40})(?:[/\\]|$)")


def model_revision(pipe: Any, requested: str | None) -> str | None:
    """The commit of a Hub model, read from the snapshot folder it was loaded from (the Hub
    cache keeps each commit in ``snapshots/<sha>``); else the revision the recipe asked for."""
    config = getattr(pipe, "config", None) or {}
    where = getattr(pipe, "name_or_path", None) or (config.get("_name_or_path") if hasattr(config, "get") else None)
    match = _SNAPSHOT.search(str(where or ""))
    return match.group(1) if match else requested


def environment_extras(pipe: Any, loaded: LoadedRecipe, location: str, plugins: Any = None,
                       folder: Path | None = None) -> dict[str, Any]:
    """``plugins`` (a plugin_manager.Plugins): its third-party plugins, loaded or failed, are recorded
    (name, version, source, module, error) so that an image says which plugins made it. ``folder``:
    the run folder the records are written into (paths are recorded as seen from it; without it, as
    they are on this machine)."""

    recipe_file = loaded.path.resolve()
    return {
        "plugins": plugin_records(plugins) if plugins is not None else [],
        "model_revision": model_revision(pipe, loaded.data.get("model", {}).get("revision")),
        "model_location": portable_location(location, folder) if folder is not None else location,
        "recipe_file": recipe_file.name,
        "recipe_folder": relative_from(recipe_file.parent, folder.resolve()) if folder is not None
        else str(recipe_file.parent),
    }


def machine_facts(loaded: LoadedRecipe, location: str) -> dict[str, Any]:
    """This machine's side of :func:`environment_extras`: the absolute paths, kept apart from the
    committed records (in the run folder's ``.recipe-runner/run.json``)."""
    return {"model_location": location, "recipe_file": str(loaded.path.resolve())}


CACHE_PREFIX = "<cache>/"  # a model folder in recipe-runner's cache, as model_location shows it


def portable_location(location: str, folder: Path) -> str | None:
    """``environment.model_location`` as committed: a Hub id as it is; a model folder in
    recipe-runner's cache as ``<cache>/tiny/sd15-v1``; one in the git repository of the run folder
    relative to the run folder (``../../models/sd15``); any other folder None: its path is this
    machine's (``~/models/sd15`` here, ``/data/models/sd15`` on a teammate's machine, both found
    through the same alias or recipe), kept in ``.recipe-runner/run.json`` only. The recipe's model
    id says which model, the job keys what its files hold."""
    if not os.path.isabs(location):
        return location
    path = Path(location).resolve()
    inside = under(path, cache_dir().expanduser().resolve())
    if inside is not None:
        return CACHE_PREFIX + inside
    repo = repository_root(folder.resolve())
    if repo is not None and under(path, repo) is not None:
        return relative_from(path, folder.resolve())
    return None


def recipe_folder_of(environment: dict[str, Any], folder: Path) -> Path | None:
    """The recipe folder an ``environment`` record names, for records in ``folder``: a path relative
    to that folder (this version), ``~/...``, or absolute (records made before it); None when not
    recorded."""
    value = environment.get("recipe_folder")
    if not isinstance(value, str) or not value:
        return None
    path = Path(value).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else folder / path))  # ../../recipes read as a path


def portable_folder(value: Any, folder: Path) -> Any:
    """An older record's absolute ``recipe_folder`` as seen from ``folder`` (others as they are)."""
    if isinstance(value, str) and os.path.isabs(value):
        return relative_from(Path(value), folder.resolve())
    return value


def owner_of(recipe_file: Path, root: Path) -> str:
    """How a run folder's manifest names the recipe file that made it (``recipe_path``): relative
    to the root of the git repository holding the recipe (equal in every clone and checkout), else
    relative to the output root ``root`` (``../recipes/hero.toml``). Resolved first: another
    spelling, working folder or symbolic link to the same file gives the same owner."""
    path = recipe_file.resolve()
    repo = repository_root(path.parent)
    if repo is not None:
        return path.relative_to(repo).as_posix()
    return relative_from(path, root.resolve())


def plugin_records(plugins: Any) -> list[dict[str, Any]]:
    """The non-built-in plugins of this process, loaded or failed."""
    return [{"name": i.name, "version": i.version, "source": i.source, "module": i.module, "error": i.error}
            for i in plugins.infos if i.source != BUILT_IN]


def embedded_environment(env: dict[str, Any]) -> dict[str, Any]:
    """The environment as each image embeds it: the manifest's, with per-file hashes for at most
    :data:`EMBEDDED_MODEL_FILES` files in all (the references in order, ``model`` first: a folder
    that does not fit keeps its ``sha256`` and ``file_count``)."""
    models = env.get("models")
    if not isinstance(models, dict):
        return env
    left = EMBEDDED_MODEL_FILES
    trimmed = {}
    for key in sorted(models, key=lambda k: (k != "model", k)):
        record = models[key]
        files = record.get("files") if isinstance(record, dict) else None
        if isinstance(files, dict) and len(files) > left:
            record = {**{k: v for k, v in record.items() if k != "files"}, "file_count": len(files)}
        elif isinstance(files, dict):
            left -= len(files)
        trimmed[key] = record
    return {**env, "models": {key: trimmed[key] for key in models}}
