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
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import checks, preflight, safety
from . import inputs as inputs_mod
from .axes import value_label
from .errors import Problem, RecipeError
from .labels import scheduler_label
from .loading import LoadedRecipe, display_path, load
from .matrix import Job, expand
from .optimizations import Enabled
from .pipelines import load_order
from .plan import initial_batch_size, plan
from .plugin_manager import Plugins
from .recipe import Recipe, validate
from .resume import peek
from .variants import Variant, relabel
from .variants import make as make_variants


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


@dataclass
class Options:
    """What the command line decides for every recipe of an invocation."""

    out: Path = Path("outputs")  # the output root: a recipe writes to out/<name>/
    allow_pickle: bool = False  # --allow-pickle
    trust_remote_code: bool = False  # --trust-remote-code
    force: bool = False  # --force: regenerate every job (what it replaces is kept in the history folder)
    progress: bool | None = None  # None: when stderr is a terminal
    warn: Callable[[str], None] = warn


@dataclass
class Prepared:
    """A recipe that validated: ready to print as a plan or to run."""

    loaded: LoadedRecipe
    recipe: Recipe
    jobs: list[Job]
    enabled: list[Enabled]
    inputs: dict[str, str]  # as written -> absolute path or URL
    input_keys: dict[str, str]  # as written -> dotted key
    out_dir: Path
    variants: list[Variant]  # the pipelines its jobs need (one: the recipe, without build axes)
    by_variant: dict[str, Variant] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.by_variant = {v.id: v for v in self.variants}

    def variant_of(self, job: Job) -> Variant:
        """The variant (pipeline) that makes ``job``."""
        return self.by_variant[job.variant]


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
    except RecipeError as exc:  # the value checks need no valid tables: report theirs in the same pass
        raise RecipeError(exc.problems + checks.value_problems(loaded.data, loaded.problem)) from exc
    problems = []
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
        except RecipeError as exc:
            problems += exc.problems
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
        from .outputs import exif_problem

        too_large = exif_problem(json.dumps(recipe.model_dump(mode="json"), ensure_ascii=False, sort_keys=True))
        if too_large:
            problems.append(loaded.problem("output.format", too_large,
                                           'use format = "png" or "webp" (no such limit), or metadata = false'))
    if problems:
        raise RecipeError(list({(p.key, p.message, p.file, p.line): p for p in problems}.values()))
    return Prepared(loaded, recipe, jobs, enabled, resolved, keys, options.out / recipe.name, found)


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
                  lambda: safety.check_adapters(recipe, loaded, allow_pickle=options.allow_pickle)):
        try:
            check()
        except RecipeError as exc:
            problems += exc.problems
    return problems + preflight.problems(recipe, loaded, variant.jobs)


def check_distinct_names(prepared: list[Prepared]) -> None:
    """Recipes of one invocation write to distinct output folders (RecipeError, exit 2)."""
    names = [p.recipe.name for p in prepared]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise RecipeError.one(f"several recipes write to the same output folder {duplicated[0]!r}: "
                              "give them distinct names", file="recipe-run")


def describe_plan(prepared: Prepared, plugins: Plugins, show: int = 20) -> str:
    """The --dry-run text: model, optimizations, plugins, jobs, the pipelines a build axis asks for
    (loads and in-place switches, in plan order) and batches."""
    r = prepared.recipe
    batch_setting = r.run.batch_size
    size = batch_setting if batch_setting != "auto" else initial_batch_size("auto", prepared.jobs, "cpu")
    batches = plan(prepared.jobs, size)
    lines = [f"{r.name}  ({display_path(prepared.loaded.path)} -> {display_path(prepared.out_dir)}/)"]
    if r.description:
        lines.append(f"  {r.description}")
    m = r.model
    extras = ", ".join(f"{k} {getattr(m, k)}" for k in ("revision", "variant") if getattr(m, k))
    lines.append(f"  model          {m.id}  [{m.task}, dtype {m.dtype}, device {m.device}{', ' + extras if extras else ''}]")
    for name, comp in r.components.items():
        if f"components.{name}" in r.matrix.axes:
            continue  # an axis replaces it: the pipelines below say with what
        lines.append(f"  component      {name} <- {comp.id}" + (f" ({comp.subfolder})" if comp.subfolder else ""))
    if r.scheduler:
        lines.append(f"  scheduler      {scheduler_label(r.scheduler.model_dump())}")
    opts = ", ".join(f"{e.name} {json.dumps(e.settings.model_dump(mode='json'))}" for e in prepared.enabled) or "none"
    lines.append(f"  optimizations  {opts}")
    loaded_plugins = ", ".join(f"{i.name} ({i.source}{', failed' if i.error else ''})" for i in plugins.infos)
    lines.append(f"  plugins        {loaded_plugins}")
    auto = " (auto: halves on out of memory)" if batch_setting == "auto" else ""
    lines += [f"  {'checks' if i == 0 else '':<15}{note}" for i, note in enumerate(preflight.notes(r, prepared.loaded))]
    lines.append(f"  jobs           {len(prepared.jobs)} in {len(batches)} batch{'es' * (len(batches) != 1)}, "
                 f"batch_size {size}{auto}, generator on {r.run.generator_device}")
    if len(prepared.variants) > 1:
        steps = load_order(prepared.variants, False, r.run.keep_models)  # --allow-pickle is the same for all
        counts = {how: sum(1 for h, _ in steps if h == how) for how in ("load", "switch", "reuse")}
        summary = ", ".join(f"{n} {how}{'es' if how == 'switch' and n != 1 else 's' if n != 1 else ''}"
                            for how, n in counts.items() if n)
        lines.append(f"  pipelines      {summary}, in plan order:")
        for i, (how, variant) in enumerate(steps, 1):
            lines.append(f"    {i}. {how:<7} {variant.label()}  ({len(variant.jobs)} image{'s' * (len(variant.jobs) != 1)})")
    now = peek(prepared)
    lines.append(f"  a run now      {now.summary()}" if now is not None else
                 "  a run now      decides after loading what is unchanged (the folder's last run was elsewhere "
                 "or its inputs are not local)")
    fixed = {k: v for k, v in r.params.items()}
    if fixed:
        lines.append(f"  params         {', '.join(f'{k}={v!r}' for k, v in fixed.items())}")
    ext = {"jpeg": "jpg"}.get(r.output.format, r.output.format)
    shown = 0
    for batch in batches:
        if shown >= show:
            break
        lines.append(f"  batch {batch.index}")
        for job in batch.jobs:
            if shown >= show:
                break
            extra = {k: v for k, v in job.params.items() if k not in r.params or r.params[k] != v}
            bits = [f"seed {job.seed}"] + [f"{k}={v}" for k, v in extra.items()]
            if job.image:
                bits.append(f"image {job.image}")
            if job.mask_image:
                bits.append(f"mask {job.mask_image}")
            if job.scheduler and "scheduler" in r.matrix.axes:
                bits.append(str(scheduler_label(job.scheduler)))
            bits += [f"{name} {value_label(name, value)}" for name, value in job.build_axes().items()]
            lines.append(f"    {job.filename(ext)}  {', '.join(bits)}")
            shown += 1
    if shown < len(prepared.jobs):
        lines.append(f"    ... {len(prepared.jobs) - shown} more")
    return "\n".join(lines)
