"""The public plugin API: everything a recipe-runner plugin (built-in or third-party) may import.

    from recipe_runner.api import Optimization, OptimizationSettings, Unsupported, hookimpl

Anything else under ``recipe_runner`` is internal and may change between releases. The hooks a
plugin can implement, with what each receives and returns, are in :mod:`recipe_runner.plugin_api.hookspecs`.

Also re-exported, for plugins that keep files: ``cache_dir()`` (recipe-runner's cache folder:
``$RECIPE_RUNNER_CACHE`` or ``~/.cache/recipe-runner``) and ``atomic_write(path, data)`` (a file
written whole or not at all).

Light module: importing it imports neither torch nor diffusers (plugins are loaded for
``--dry-run``, ``--list-plugins`` and ``--schema`` too); :func:`model_index` imports diffusers
when it is called.
"""

from __future__ import annotations

from typing import Any

from . import hookimpl
from .axes.kind import AxisContext, AxisKind, ModelReference, enable, listed, moved, short_id
from .base.errors import Problem, did_you_mean
from .base.paths import atomic_write, cache_dir, is_local_reference
from .pipelines.build import read_model_index
from .pipelines.info import ModelInfo
from .pipelines.info import from_folder as model_info_from_folder
from .pipelines.sources import SOURCES, ModelSource
from .plan.batches import Batch, plan
from .plan.matrix import Job, expand
from .recipe.aliases import expand as expand_id
from .recipe.context import BuildContext
from .recipe.model import Recipe
from .recipe.optimizations import STAGES, Conflict, Optimization, OptimizationSettings, Unsupported, WeightFile
from .records.formats import OutputFormat
from .views.metrics import Metric

__all__ = [
    "STAGES",
    "AxisContext",
    "AxisKind",
    "Metric",
    "ModelInfo",
    "ModelReference",
    "ModelSource",
    "OutputFormat",
    "Problem",
    "enable",
    "listed",
    "model_info_from_folder",
    "moved",
    "short_id",
    "Batch",
    "BuildContext",
    "Job",
    "Optimization",
    "OptimizationSettings",
    "Recipe",
    "Unsupported",
    "WeightFile",
    "Conflict",
    "atomic_write",
    "cache_dir",
    "did_you_mean",
    "hookimpl",
    "expand_id",
    "is_local_reference",
    "model_index",
    "model_source",
    "planned_batches",
]


def model_index(location: str, revision: str | None = None) -> dict[str, Any]:
    """The pipeline's ``model_index.json`` as a dict (which class each component has), for a local
    folder or a Hub id (``context.location``, ``context.recipe.model.revision``), read the way the
    runner reads it. Imports diffusers; a config that cannot be read is a ``RunError``."""

    return read_model_index(location, revision)


def model_source(model_id: str) -> ModelSource | None:
    """The plugin model source that serves ``model_id`` (``tiny:lora-fox``), or None for a local
    path or a Hub id: a plugin that takes ids of its own (LoRA adapters) resolves them through it."""
    return SOURCES.plugin_source(model_id)


def planned_batches(context: BuildContext) -> list[Batch]:
    """The batches the recipe being built will run, in order (its matrix expanded and cut into
    ``run.batch_size`` batches). Empty when the batch size is decided at run time (``"auto"``)
    or the recipe did not come from a file (``context.loaded`` is None)."""
    size = context.recipe.run.batch_size
    if not isinstance(size, int) or context.loaded is None:
        return []
    return plan(expand(context.recipe, context.loaded), size)
