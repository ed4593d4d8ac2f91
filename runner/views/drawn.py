"""What a folder's views (contact sheets and gallery) were drawn with, recorded in its manifest as
``views``, so that a re-run whose jobs are all unchanged still redraws them when the recipe's
``[output]`` (grid layout, gallery, sheet options) or description changed, or when this version of
recipe-runner draws them differently (:data:`VERSION`), from the images on disk and without loading
a model (:func:`recipe_runner.running.session.repair`).

Light module: the standard library only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

VERSION = 2  # the views' drawing: raised when the sheets or the gallery of a folder would look different


def drawn_with(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's ``views`` record for views drawn from the resolved ``recipe`` (JSON form)."""
    return {"version": VERSION, "output": recipe.get("output"), "description": recipe.get("description")}


def stale(manifest: Mapping[str, Any], recipe: Mapping[str, Any]) -> bool:
    """Whether the views of the folder of ``manifest`` (as read) were drawn otherwise than ``recipe`` asks."""
    recorded = manifest.get("views")
    return _text(recorded) != _text(drawn_with(recipe))


def redrawn(manifest: Mapping[str, Any], recipe: Mapping[str, Any]) -> dict[str, Any]:
    """``manifest`` with the view-only parts of its recipe (``output``, ``description``) as
    ``recipe`` has them, and its ``views`` record saying so."""
    old = dict(manifest.get("recipe") or {})
    for key in ("output", "description"):
        if recipe.get(key) is None:
            old.pop(key, None)
        else:
            old[key] = recipe[key]
    return {**manifest, "recipe": old, "views": drawn_with(recipe)}


def _text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr)
