"""What an image's ``environment`` chunk adds to :mod:`recipe_runner.base.environment` so that the image alone
can be re-created: the model revision actually loaded, the third-party plugins of the run, and the folder of the recipe file (relative
model and input paths in the embedded recipe resolve against it on ``--reproduce``)."""

from __future__ import annotations

import re
from typing import Any

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


def environment_extras(pipe: Any, loaded: LoadedRecipe, location: str, plugins: Any = None) -> dict[str, Any]:
    """``plugins`` (a plugin_manager.Plugins): its third-party plugins, loaded or failed, are recorded
    (name, version, source, module, error) so that an image says which plugins made it."""

    recipe_file = loaded.path.resolve()
    return {
        "plugins": plugin_records(plugins) if plugins is not None else [],
        "model_revision": model_revision(pipe, loaded.data.get("model", {}).get("revision")),
        "model_location": location,
        "recipe_file": recipe_file.name,
        "recipe_folder": str(recipe_file.parent),
    }


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
