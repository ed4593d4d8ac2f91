"""Hook specifications: every hook a recipe-runner plugin can implement.

A plugin is a module (or any object) with functions decorated by ``recipe_runner.hookimpl`` and named
after one of the hooks below. Plugins come from three places: the built-ins, the ``recipe_runner``
entry-point group of installed distributions, and ``recipe-run -p MODULE``. A plugin implements
only the hooks it needs; pluggy checks the names, so a misspelled hook is reported at load time.

All hooks run in the one process that runs the recipe (under torchrun, in every rank).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from collections.abc import Callable

    from PIL.Image import Image

    from ..axes.kind import AxisKind
    from ..pipelines.sources import ModelSource
    from ..plan.batches import Batch
    from ..recipe.context import BuildContext
    from ..recipe.model import Recipe
    from ..recipe.optimizations import Optimization, OptimizationSettings
    from ..records.formats import OutputFormat
    from ..views.metrics import Metric

hookspec = pluggy.HookspecMarker("recipe_runner")


@hookspec
def register_optimizations() -> list[Optimization]:  # type: ignore[empty-body]  # a specification: never called
    """Declare the optimizations this plugin provides.

    Called once, when the plugins are loaded: before any recipe is validated, for ``--dry-run``,
    ``--list-plugins`` and ``--schema`` too, so it must stay cheap (no torch import here).

    Receives nothing. Returns a list of :class:`recipe_runner.api.Optimization`: each has the key it
    owns under ``[optimizations]``, a pydantic settings model (subclass of
    :class:`recipe_runner.api.OptimizationSettings`) that validates that key's table, the stage
    that orders it, and the functions that check, configure loading and apply it.
    """


@hookspec
def register_axis_kinds(register: Callable[[AxisKind], None]) -> None:
    """Add kinds of ``[matrix.axes]`` keys.

    Called once, when the plugins are loaded (cheap: no torch). Receives ``register``: call it with
    an instance of a :class:`recipe_runner.api.AxisKind` subclass for each kind. The kind's ``name``
    is the axis key (or, with ``nested = True``, the table of ``<name>.<key>`` axes); its methods
    check values, label them, give their JSON Schema, and (for a ``build`` kind) write a value into
    the variant's recipe tables. The built-in ``lora`` plugin registers ``lora`` and ``lora_scale``.
    Two plugins registering one name: the second fails to load, naming both. Returns nothing.
    """


@hookspec
def register_model_sources(register: Callable[[ModelSource], None]) -> None:
    """Add kinds of model references (``[model] id``, ``[components.<name>] id``, axis values).

    Called once, when the plugins are loaded (cheap: no torch). Receives ``register``: call it with
    an instance of a :class:`recipe_runner.api.ModelSource` subclass; its ``claims(id)`` says which
    ids it serves (asked before the built-in local-folder and Hub sources), ``locate(id, folder)``
    gives what ``from_pretrained`` loads. The built-in ``tiny`` plugin serves ``tiny:<kind>``.
    Returns nothing.
    """


@hookspec
def register_output_formats(register: Callable[[OutputFormat], None]) -> None:
    """Add image formats for ``[output] format``.

    Called once, when the plugins are loaded. Receives ``register``: call it with an instance of a
    :class:`recipe_runner.api.OutputFormat` subclass (``name``, ``extension``, ``encode(image,
    quality, text)`` returning the file's bytes with ``text`` embedded, ``read_text(image)`` giving
    it back, so that resume, ``--reproduce`` and ``--compare`` read its images). Returns nothing.
    """


@hookspec
def register_metrics(register: Callable[[Metric], None]) -> None:
    """Add image comparison metrics to ``--compare``.

    Called once, when the plugins are loaded. Receives ``register``: call it with an instance of a
    :class:`recipe_runner.api.Metric` subclass (``name``, ``better``: "higher" or "lower",
    ``compute(a, b)``: a float from two uint8 pixel arrays of one shape). ``--compare`` prints it for
    each differing pair and writes it to ``compare.json``. Returns nothing.
    """


@hookspec
def pipeline_ready(pipe: Any, recipe: Recipe, context: BuildContext) -> None:
    """The pipeline is built: weights loaded, components swapped, scheduler set, moved to its
    device and every optimization applied. Called once per loaded pipeline, before the first batch:
    once per ``from_pretrained`` (and per ``from_pipe`` for another task), never when a build axis
    switches the loaded pipeline in place (another component, LoRA set or switchable optimization).

    Receives ``pipe`` (the diffusers pipeline; a plugin may wrap or patch it, for example to record
    latents), ``recipe`` (the validated :class:`recipe_runner.api.Recipe`) and ``context`` (a
    :class:`recipe_runner.api.BuildContext`: device, dtype, task, the resolved model location).
    Returns nothing.
    """


@hookspec
def job_identity(recipe: Recipe) -> Any:
    """What of this plugin decides the pixels of ``recipe``'s images, for their job keys.

    Implement it when the plugin changes pixels outside an optimization's ``apply`` (an
    ``after_batch`` that edits images, a ``before_batch`` that changes the call). Called once per
    pipeline variant of a recipe (``recipe`` is the variant's, axes applied), before anything
    loads, ``--dry-run`` included (cheap: no torch). Return None when the plugin leaves this
    recipe's pixels alone, else JSON values (typically the settings it reads): the plugin's name,
    its version and the value join every job key of the variant, so that a run after the plugin
    is added, removed, upgraded or its settings changed regenerates the images instead of calling
    them unchanged. Recipes no plugin returns a value for keep the keys they always had.
    """


@hookspec
def run_started(recipe: Recipe, output_dir: Path, todo: int) -> None:
    """A recipe's run starts making images: the output folder is looked at (what is unchanged, what
    to make) and the first pipeline is loaded, before the first batch (and its ``before_batch``).

    Receives ``recipe``, ``output_dir`` and ``todo``: how many images this run (this rank) will make.
    0: nothing to make; when the folder is seen up to date before loading, nothing is loaded and
    ``run_finished`` follows at once. Called on every rank, once per recipe (and per ``--watch``
    round), paired with ``run_finished`` when the run completes. Returns nothing.
    """


@hookspec
def before_batch(pipe: Any, batch: Batch, call_kwargs: dict[str, Any], recipe: Recipe,
                 settings: dict[str, OptimizationSettings]) -> None:
    """A planned batch is about to be generated.

    Receives ``pipe``, ``batch`` (a :class:`recipe_runner.api.Batch`: its index and jobs),
    ``call_kwargs``, the exact keyword arguments of the pipeline call (prompt list, one generator
    per image, every parameter), ``recipe`` (the batch's variant's recipe, axes applied) and
    ``settings`` (the validated settings of each optimization on for the batch, by name: a hook
    reads its own plugin's settings there). Mutating ``call_kwargs`` changes the call; a key the
    pipeline does not take is refused (exit 1) like a ``[params]`` typo, naming the hook's plugins
    and the closest parameter. Raising stops the run, except that an out-of-memory error makes the
    runner retry the same jobs in smaller batches. Returns nothing (a value returned is an error).
    """


@hookspec
def after_batch(pipe: Any, batch: Batch, images: list[Image], recipe: Recipe,
                settings: dict[str, OptimizationSettings], facts: list[dict[str, Any]]) -> None:
    """A batch has been generated and its images are about to be written.

    Receives ``pipe``, ``batch``, ``images`` (one PIL image per job of the batch, in job order),
    ``recipe`` and ``settings`` (as ``before_batch``). Change an image in place or replace it
    (``images[i] = new``); the images are written after every implementation has run, with the
    runner's own metadata (an image's ``info`` is not written). ``facts``: one dict per image, empty;
    what a hook sets there (``facts[i]["watermark"] = "bottom"``: JSON values) is kept in that
    image's record of the manifest under ``facts``. Returns
    nothing: a value returned (a new list) is an error, as is adding or removing an image. A hook
    that changes pixels declares it with ``job_identity``.
    """


@hookspec
def run_finished(recipe: Recipe, output_dir: Path, manifest: dict[str, Any]) -> None:
    """A recipe has finished: every image is written and the manifest is complete.

    Receives ``recipe``, ``output_dir`` (a pathlib.Path: the recipe's output folder; a plugin may
    write its own files there) and ``manifest`` (a copy of the manifest as written: changing it
    changes nothing on disk). Called after every complete run, a run with nothing to do included
    (``run_started`` said ``todo=0``), so a report stays up to date. Returns nothing. Not called
    when the run failed or was interrupted.
    """
