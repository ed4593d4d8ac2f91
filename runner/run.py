"""One recipe, end to end: ``prepare`` (light: load, validate, expand, check inputs and plugin
tables; this is all --dry-run does) and ``execute`` (heavy: build, generate, write).

Several recipes in one invocation share loaded pipelines through a :class:`ModelCache`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import inputs as inputs_mod
from .errors import RecipeError
from .loading import LoadedRecipe, display_path, load
from .matrix import Job, expand
from .optimizations import Enabled
from .plan import initial_batch_size, plan
from .plugins import Plugins
from .recipe import Recipe, validate


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


@dataclass
class Options:
    out: Path = Path("outputs")
    allow_pickle: bool = False
    trust_remote_code: bool = False
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


def prepare(path: str | Path, sets: list[str], plugins: Plugins, out_root: Path) -> Prepared:
    """Everything that can be checked without torch: RecipeError (exit 2) on any problem."""
    loaded = load(path, sets)
    recipe = validate(loaded)
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
    keys = inputs_mod.inputs_of(recipe.matrix)
    try:
        resolved = inputs_mod.resolve(keys, loaded)
    except RecipeError as exc:
        problems += exc.problems
        resolved = {}
    if problems:
        raise RecipeError(problems)
    return Prepared(loaded, recipe, jobs, enabled, resolved, keys, out_root / recipe.name)


def describe_plan(prepared: Prepared, plugins: Plugins, show: int = 20) -> str:
    """The --dry-run text: model, optimizations, plugins, jobs and batches."""
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
        lines.append(f"  component      {name} <- {comp.id}" + (f" ({comp.subfolder})" if comp.subfolder else ""))
    if r.scheduler:
        lines.append(f"  scheduler      {r.scheduler.name} {json.dumps(r.scheduler.options) if r.scheduler.options else ''}".rstrip())
    opts = ", ".join(f"{e.name} {json.dumps(e.settings.model_dump(mode='json'))}" for e in prepared.enabled) or "none"
    lines.append(f"  optimizations  {opts}")
    loaded_plugins = ", ".join(f"{i.name} ({i.source}{', failed' if i.error else ''})" for i in plugins.infos)
    lines.append(f"  plugins        {loaded_plugins}")
    auto = " (auto: halves on out of memory)" if batch_setting == "auto" else ""
    lines.append(f"  jobs           {len(prepared.jobs)} in {len(batches)} batch{'es' * (len(batches) != 1)}, "
                 f"batch_size {size}{auto}, generator on {r.run.generator_device}")
    width = max(4, len(str(max(len(prepared.jobs) - 1, 0))))
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
            if job.scheduler and "scheduler" in r.matrix.axes:
                bits.append(job.scheduler["name"])
            lines.append(f"    {job.filename(width, ext)}  {', '.join(bits)}")
            shown += 1
    if shown < len(prepared.jobs):
        lines.append(f"    ... {len(prepared.jobs) - shown} more")
    return "\n".join(lines)


# --- running ---------------------------------------------------------------------------------------

def model_key(recipe: Recipe, enabled: list[Enabled], allow_pickle: bool) -> str:
    """Recipes with equal keys can share one loaded pipeline."""
    return json.dumps({
        "model": recipe.model.model_dump(mode="json"),
        "components": {k: v.model_dump(mode="json") for k, v in recipe.components.items()},
        "optimizations": [[e.name, e.settings.model_dump(mode="json")] for e in enabled],
        "allow_pickle": allow_pickle,
    }, sort_keys=True)


@dataclass
class ModelCache:
    """Pipelines loaded in this invocation, by :func:`model_key`; ``loads`` counts real loads."""

    entries: dict[str, Any] = field(default_factory=dict)
    loads: int = 0


def execute(prepared: Prepared, plugins: Plugins, options: Options, cache: ModelCache | None = None) -> dict[str, Any]:
    """Build (or reuse) the pipeline, generate every batch, write images, manifest and grid."""
    from . import build, environment, safety
    from .execute import Execution
    from .interrupts import critical
    from .journal import Journal, Keys, adopt, common_identity, merge, read_previous, stale_message
    from .grid import make_grid
    from .outputs import EXTENSIONS, Manifest, Writer
    from .progress import Progress

    recipe, loaded = prepared.recipe, prepared.loaded
    cache = cache if cache is not None else ModelCache()
    ctx = build.prepare(recipe, loaded, prepared.enabled, allow_pickle=options.allow_pickle,
                        trust_remote_code=options.trust_remote_code, warn=options.warn)
    safety.check_weights(recipe, loaded, ctx.location, options.allow_pickle)
    environment.set_deterministic(recipe.run.deterministic)
    images = None
    if prepared.inputs:
        images = inputs_mod.InputImages(prepared.inputs, loaded, prepared.input_keys)
        images.preflight()
    key = model_key(recipe, prepared.enabled, options.allow_pickle)
    built = cache.entries.get(key)
    if built is None:
        built = build.build(recipe, loaded, prepared.jobs, prepared.enabled, plugins.hook, ctx)
        cache.entries[key] = built
        cache.loads += 1
        load_seconds = built.seconds
    else:
        built.rebind(recipe, loaded, prepared.jobs)
        load_seconds = 0.0

    out_dir = prepared.out_dir
    if out_dir.is_symlink():
        raise RecipeError.one(f"the output folder {out_dir} is a symbolic link: refusing to write through it",
                              key="name", file=display_path(loaded.path))
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment.describe(ctx.device, ctx.dtype, recipe.run.generator_device, recipe.run.deterministic)
    resolved = recipe.model_dump(mode="json")
    manifest = Manifest(out_dir, resolved, env, prepared.jobs, EXTENSIONS[recipe.output.format])
    manifest.data["optimizations"] = {e.name: e.record() for e in prepared.enabled}
    writer = Writer(manifest, recipe.output.format, recipe.output.quality, recipe.output.metadata,
                    recipe.model.id, json.dumps(resolved, ensure_ascii=False, sort_keys=True))
    size = initial_batch_size(recipe.run.batch_size, prepared.jobs, ctx.device)
    # Resume: what the folder already holds (manifest + journal) decides what still runs, and how.
    keys = Keys(common_identity(recipe, ctx.dtype, prepared.enabled), prepared.jobs, images.digests if images else {})
    previous, records = read_previous(out_dir)
    files = [r["file"] for r in manifest.data["images"]]
    state = merge(out_dir, prepared.jobs, files, keys, size, recipe.run.batch_size, previous, records)
    adopt(manifest, state, records, keys)
    if state.stale:
        options.warn(stale_message(recipe.name, state.stale))
    writer.journal = journal = Journal(manifest, keys)
    with critical():
        journal.fold()  # manifest.json now describes the folder and every job's planned batch
    progress = Progress(len(state.pending), recipe.name, enabled=options.progress)
    execution = Execution(built, writer, plugins.hook, images, progress, options.warn)
    start = time.perf_counter()
    try:
        execution.run(state.batches, pending=state.pending)
    finally:
        progress.close()
        manifest.data["timings"] = {
            "load_seconds": round(load_seconds, 4),
            "generate_seconds": round(time.perf_counter() - start, 4),
            "batches": execution.batch_times,
        }
        with critical():
            journal.close()
    if recipe.output.grid:
        make_grid(out_dir, manifest.data["images"])
    plugins.hook.run_finished(recipe=recipe, output_dir=out_dir, manifest=manifest.data)
    return manifest.data
