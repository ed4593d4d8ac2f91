"""What an image's ``environment`` chunk adds to :mod:`recipe_runner.environment` so that the image alone
can be re-created: the model revision actually loaded, and the folder of the recipe file (relative
model and input paths in the embedded recipe resolve against it on ``--reproduce``)."""

from __future__ import annotations

import re
from typing import Any

from .loading import LoadedRecipe

_SNAPSHOT = re.compile(r"snapshots[/\\]([0-9a-f]{40})(?:[/\\]|$)")


def model_revision(pipe: Any, requested: str | None) -> str | None:
    """The commit of a Hub model, read from the snapshot folder it was loaded from (the Hub
    cache keeps each commit in ``snapshots/<sha>``); else the revision the recipe asked for."""
    config = getattr(pipe, "config", None) or {}
    where = getattr(pipe, "name_or_path", None) or (config.get("_name_or_path") if hasattr(config, "get") else None)
    match = _SNAPSHOT.search(str(where or ""))
    return match.group(1) if match else requested


def environment_extras(pipe: Any, loaded: LoadedRecipe, location: str) -> dict[str, Any]:
    recipe_file = loaded.path.resolve()
    return {
        "model_revision": model_revision(pipe, loaded.data.get("model", {}).get("revision")),
        "model_location": location,
        "recipe_file": recipe_file.name,
        "recipe_folder": str(recipe_file.parent),
    }
