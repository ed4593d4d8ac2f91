"""Prepare: everything about a recipe that can be checked without torch, on the one path every
mode takes (runs, ``--dry-run``, ``--reproduce``, ``--lock``, ``--watch``), and the ``--dry-run`` text.

``prepare`` loads (extends, ``--set``), validates, expands the matrix, enables the optimizations,
resolves the input images, and applies the safety policy: remote code and pickled weights need the
command line's permission, local model folders must exist, tiny kinds must be known. Every problem
is collected and raised as one :class:`RecipeError` (exit 2). No model is loaded, torch and
diffusers are never imported.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..base import environment
from ..base.errors import Problem, RecipeError, suggest
from ..base.report import note, warn
from ..pipelines import lock, preflight, safety
from ..plan import checks
from ..plan import inputs as inputs_mod
from ..plan.matrix import expand
from ..plan.prepared import Prepared
from ..plan.variants import Variant, relabel, resolved_jobs
from ..plan.variants import check as axis_value_problems
from ..plan.variants import make as make_variants
from ..plugin_api.manager import Plugins, identities
from ..recipe.context import BuildContext
from ..recipe.loading import LoadedRecipe, display_path, load
from ..recipe.model import Recipe, check_abstract, validate
from ..recipe.optimizations import Unsupported, refusal
from ..records.formats import FORMATS, exif_problem


@dataclass
class Options:
    """What the command line decides for every recipe of an invocation."""

    out: Path = Path("outputs")  # the output root: a recipe writes to out/<name>/
    allow_pickle: bool = False  # --allow-pickle
    trust_remote_code: bool = False  # --trust-remote-code
    force: bool = False  # --force: regenerate every job (what it replaces is kept in the history folder)
    progress: bool | None = None  # None: when stderr is a terminal
    wait: bool = False  # --wait: wait for another run into the same folder to end, instead of refusing
    baseline: bool = False  # --update-baseline: no history, no .gitignore, the folder holds exactly the recipe's images
    new_root: bool = False  # the output root did not exist when the invocation began: a run that makes it ignores it in git
    warn: Callable[[str], None] = warn


def prepare(path: str | Path, sets: list[str], plugins: Plugins, options: Options) -> Prepared:
    """Load the recipe file ``path`` (with ``--set`` overrides) and prepare it: see :func:`prepare_loaded`."""
    return prepare_loaded(load(path, sets), plugins, options)


def prepare_loaded(loaded: LoadedRecipe, plugins: Plugins, options: Options) -> Prepared:
    """A loaded recipe (from a file, or from an image's metadata) made ready to describe or run.

    Every check that needs no torch runs here, so no mode can skip one and ``--dry-run`` refuses
    what a run would refuse before loading. RecipeError (exit 2) lists every problem found.
    """
    try:
        recipe = validate(loaded)
    except RecipeError as exc:  # the checks that need no valid recipe report theirs in the same pass
        raise RecipeError(exc.problems + written_problems(loaded, plugins, exc.problems)) from exc
    problems = format_problems(recipe, loaded) + device_problems(recipe, loaded)
    try:
        jobs = expand(recipe, loaded)
    except RecipeError as exc:
        problems += exc.problems
        jobs = []
    try:
        enabled = plugins.registry.enable(recipe.optimizations, loaded.problem)
    except RecipeError as exc:
        problems += exc.problems
        enabled = []
    found: list[Variant] = []
    if not problems:
        try:
            found = make_variants(recipe, loaded, jobs, enabled, plugins.registry)
            jobs = resolved_jobs(found)  # each job with the pipeline it runs on: its identity is whole
        except RecipeError as exc:
            problems += exc.problems
    else:  # no variants without valid jobs and settings, but the axes' values are checked all the same
        problems += axis_value_problems(recipe, loaded, plugins.registry)
    keys = inputs_mod.inputs_of(recipe.matrix)
    try:
        resolved = inputs_mod.resolve_sources(keys, loaded)
    except RecipeError as exc:
        problems += exc.problems
        resolved = {}
    for variant in found or [Variant("{}", {}, recipe, loaded, enabled, jobs, {})]:
        problems += relabel(variant_problems(variant, options), variant)
    problems += output_problems(options.out / recipe.name)
    if recipe.output.format == "jpeg" and recipe.output.metadata:
        too_large = exif_problem(json.dumps(recipe.model_dump(mode="json"), ensure_ascii=False, sort_keys=True))
        if too_large:
            problems.append(loaded.problem("output.format", too_large,
                                           'use format = "png" or "webp" (no such limit), or metadata = false'))
    if problems:
        raise RecipeError(list({(p.key, p.message, p.file, p.line): p for p in problems}.values()))
    for variant in found:
        variant.identity = identities(plugins, variant.recipe)
    return Prepared(loaded, recipe, jobs, enabled, resolved, keys, options.out / recipe.name, found)


def written_problems(loaded: LoadedRecipe, plugins: Plugins, found: list[Problem]) -> list[Problem]:
    """A recipe that did not validate, checked as written where its tables allow: parameter
    values, the optimizations' settings and the output format. One pass reports every problem it
    can find, not only the first table's (``found``: what validation reported)."""
    data = loaded.data
    problems = checks.value_problems(data, loaded.problem)
    reported = {p.key for p in found if p.key}
    table = data.get("optimizations")
    if isinstance(table, dict):
        written = {name: value for name, value in table.items()
                   if isinstance(value, (bool, dict)) and f"optimizations.{name}" not in reported}
        try:
            plugins.registry.enable(written, loaded.problem)
        except RecipeError as exc:
            problems += exc.problems
    output = data.get("output")
    if isinstance(output, dict) and isinstance(output.get("format"), str) and "output.format" not in reported:
        problems += format_problems(output["format"], loaded)
    return problems


def format_problems(name: str | Recipe, loaded: LoadedRecipe) -> list[Problem]:
    """``[output] format`` names a registered output format (built-in or a plugin's)."""
    name = name.output.format if isinstance(name, Recipe) else name
    if name in FORMATS:
        return []
    names = [repr(n) for n in FORMATS.names()]
    expected = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
    return [loaded.problem("output.format", f"expected {expected}, got {name!r}", suggest(name, FORMATS.names()))]


def output_problems(out_dir: Path) -> list[Problem]:
    """The run folder, ``--out``/NAME, must be (or become) a folder: refused up front when it, the
    output root or a folder above them is something else (a regular file), instead of failing
    after the model loaded."""
    for path in (out_dir, *out_dir.parents):
        if path.is_dir():
            return []
        if os.path.lexists(path):
            what = "the run folder" if path == out_dir else "--out" if path == out_dir.parent else "a folder of --out"
            kind = "a file" if path.is_file() else "not a folder"
            return [Problem(f"{what} {display_path(path)} is {kind}: it must be a folder (made if missing); choose another "
                            "--out", file="recipe-run")]
    return []


def variant_problems(variant: Variant, options: Options) -> list[Problem]:
    """The safety policy and the checks that need no torch, on one variant (the recipe itself
    when it has no build axis): its model, components and optimizations, and its jobs."""
    recipe, loaded = variant.recipe, variant.loaded
    problems: list[Problem] = []
    for check in (lambda: safety.check_recipe(recipe, loaded, trust_remote_code=options.trust_remote_code,
                                              allow_pickle=options.allow_pickle),
                  lambda: safety.check_sources(recipe, loaded, allow_pickle=options.allow_pickle),
                  lambda: safety.check_weight_files(variant.enabled, loaded, allow_pickle=options.allow_pickle)):
        try:
            check()
        except RecipeError as exc:
            problems += exc.problems
    return problems + optimization_problems(variant, options) + preflight.problems(recipe, loaded, variant.jobs)


def device_problems(recipe: Recipe, loaded: LoadedRecipe) -> list[Problem]:
    """``model.device`` names a device this machine certainly lacks (told without torch)."""
    why = environment.device_unavailable(recipe.model.device)
    if why is None:
        return []
    return [loaded.problem("model.device", f"{recipe.model.device!r}: {why}",
                           'use "auto" (CUDA, then MPS, then the CPU) or "cpu"')]


def optimization_problems(variant: Variant, options: Options) -> list[Problem]:
    """Each enabled optimization's ``check`` that needs no torch (``light_check``), against the
    other enabled optimizations, the installed packages and the device as far as it can be told
    without torch: what the run would refuse before loading, refused now (``--dry-run`` too)."""
    recipe, loaded = variant.recipe, variant.loaded
    spec = recipe.model.device
    device = "auto" if environment.device_unavailable(spec) else (environment.probable_device(spec) or "auto")
    dtype = recipe.model.dtype if recipe.model.dtype != "auto" or device == "auto" else (
        "float32" if device == "cpu" else "float16")
    context = BuildContext(recipe, device, dtype, recipe.model.task, recipe.model.id,
                           enabled=[e.name for e in variant.enabled], allow_pickle=options.allow_pickle,
                           trust_remote_code=options.trust_remote_code, warn=lambda _message: None, loaded=loaded)
    problems: list[Problem] = []
    for item in variant.enabled:
        if item.optimization.check is None or not item.optimization.light_check:
            continue
        try:
            item.optimization.check(item.settings, context)
        except Unsupported as exc:
            found = refusal(item, exc, loaded.problem)
            if found is not None:
                problems.append(found)
    return problems


def prepare_all(paths: Sequence[str | Path], sets: list[str], plugins: Plugins, options: Options, *,
                locked: bool = False, seen: Callable[[Path, LoadedRecipe], None] | None = None) -> list[Prepared]:
    """Every recipe of an invocation loaded and prepared, each checked before any runs: the
    problems of them all in one RecipeError (exit 2); their output folders distinct; with
    ``locked``, their models as their lock files say. ``seen(path, loaded)`` is told of each
    recipe that loaded (``--watch`` watches its extends chain even when it does not validate)."""
    problems: list[Problem] = []
    prepared: list[Prepared] = []
    abstract: list[str] = []
    for path in paths:
        try:
            loaded = load(path, sets)
            if seen is not None:
                seen(Path(path), loaded)
            if loaded.data.get("abstract") is True:
                abstract.append(display_path(Path(path)))
                problems += abstract_problems(loaded, plugins)
                continue
            prepared.append(prepare_loaded(loaded, plugins, options))
        except RecipeError as exc:
            problems += exc.problems
    if problems:  # a base's problem reported once, not again for each recipe that extends it
        raise RecipeError(list({(p.key, p.message, p.file, p.line): p for p in problems}.values()))
    if abstract and not prepared:
        what = f"{abstract[0]} is" if len(abstract) == 1 else f"the {len(abstract)} recipes given are"
        raise RecipeError.one(f"nothing to run: {what} abstract (abstract = true: a base for extends); give the "
                              "recipes that extend " + ("it" if len(abstract) == 1 else "them"), file="recipe-run")
    for shown in abstract:
        note(f"skipped {shown}: abstract = true (a base for extends)")
    check_distinct_names(prepared)
    if locked:
        for item in prepared:
            lock.verify(item.recipe, item.loaded)
    return prepared


def abstract_problems(loaded: LoadedRecipe, plugins: Plugins) -> list[Problem]:
    """An ``abstract = true`` recipe checked for what it has, never prepared: unknown keys, types,
    parameter values, the optimizations' settings and the output format (a key it leaves to the
    recipes that extend it is no problem)."""
    try:
        check_abstract(loaded)
        found: list[Problem] = []
    except RecipeError as exc:
        found = exc.problems
    return found + written_problems(loaded, plugins, found)


def check_distinct_names(prepared: list[Prepared]) -> None:
    """Recipes of one invocation write to distinct output folders (RecipeError, exit 2)."""
    names = [p.recipe.name for p in prepared]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        files = [display_path(p.loaded.path) for p in prepared if p.recipe.name == duplicated[0]]
        raise RecipeError.one(f"several recipes write to the same output folder {duplicated[0]!r} "
                              f"({display_path(prepared[names.index(duplicated[0])].out_dir)}): {' and '.join(files)} "
                              f"both have name = {duplicated[0]!r}: give them distinct names", file=files[-1], key="name")
