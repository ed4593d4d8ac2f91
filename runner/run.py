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
from .plugin_manager import Plugins
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
    return prepare_loaded(load(path, sets), plugins, out_root)


def prepare_loaded(loaded: LoadedRecipe, plugins: Plugins, out_root: Path) -> Prepared:
    """:func:`prepare` for a recipe already loaded (from a file, or from an image's metadata)."""
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
    """Recipes with equal keys can share one loaded pipeline (the task aside: see from_pipe)."""
    return json.dumps({
        "model": recipe.model.model_dump(mode="json", exclude={"task"}),
        "components": {k: v.model_dump(mode="json") for k, v in recipe.components.items()},
        "optimizations": [[e.name, e.settings.model_dump(mode="json")] for e in enabled],
        "allow_pickle": allow_pickle,
    }, sort_keys=True)


@dataclass
class ModelCache:
    """Pipelines loaded in this invocation: model key -> task -> Built. ``loads`` counts the
    from_pretrained loads, ``derived`` the pipelines made from a loaded one with from_pipe."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    loads: int = 0
    derived: int = 0

    def get(self, prepared: Prepared, plugins: Plugins, ctx: Any, key: str) -> Any:
        from . import build

        recipe, loaded, task = prepared.recipe, prepared.loaded, prepared.recipe.model.task
        by_task = self.entries.setdefault(key, {})
        if task in by_task:
            built = by_task[task]
            built.rebind(recipe, loaded, prepared.jobs)
            built.load_seconds = built.setup_seconds = 0.0
        elif by_task and not any(e.optimization.places_model for e in prepared.enabled):
            built = build.derive(next(iter(by_task.values())), recipe, loaded, prepared.jobs, plugins.hook, ctx)
            by_task[task] = built
            self.derived += 1
        else:
            built = build.build(recipe, loaded, prepared.jobs, prepared.enabled, plugins.hook, ctx)
            by_task[task] = built
            self.loads += 1
        for mine, theirs in zip(prepared.enabled, built.optimizations):
            mine.status, mine.reason = theirs.status, theirs.reason
        return built


def peak_memory(device: str) -> str:
    """CUDA max allocated on a GPU, the process's peak RSS otherwise."""
    if device.startswith("cuda"):
        import torch

        return f"{torch.cuda.max_memory_allocated(torch.device(device)) / 2**20:,.0f} MiB CUDA max allocated"
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_mib = peak / 2**20 if sys.platform == "darwin" else peak / 2**10
        return f"{peak_mib:,.0f} MiB peak RSS"
    except ImportError:  # pragma: no cover - Windows
        return "peak memory unknown"


@dataclass
class Started:
    """A recipe ready for its first batch: the pipeline, where it runs, and what writes its images."""

    ctx: Any  # build.BuildContext
    dist: Any  # distributed.Dist
    built: Any  # build.Built
    images: inputs_mod.InputImages | None
    manifest: Any  # outputs.Manifest
    writer: Any  # outputs.Writer


def start(prepared: Prepared, plugins: Plugins, options: Options, cache: ModelCache) -> Started:
    """Everything before the first batch, shared by runs and --reproduce: device and dtype, the
    weight and input checks, the (possibly shared) pipeline, the output folder, manifest and writer."""
    from . import build, distributed, environment, safety
    from .outputs import EXTENSIONS, Manifest, Writer
    from .provenance import environment_extras

    recipe, loaded = prepared.recipe, prepared.loaded
    ctx = build.prepare(recipe, loaded, prepared.enabled, allow_pickle=options.allow_pickle,
                        trust_remote_code=options.trust_remote_code, warn=options.warn)
    safety.check_weights(recipe, loaded, ctx.location, options.allow_pickle)
    dist = distributed.detect(ctx.device)
    ctx.device = dist.device(ctx.device)
    environment.set_deterministic(recipe.run.deterministic)
    images = None
    if prepared.inputs:
        images = inputs_mod.InputImages(prepared.inputs, loaded, prepared.input_keys)
        images.preflight()
    built = cache.get(prepared, plugins, ctx, model_key(recipe, prepared.enabled, options.allow_pickle))

    out_dir = prepared.out_dir
    if out_dir.is_symlink():
        raise RecipeError.one(f"the output folder {out_dir} is a symbolic link: refusing to write through it",
                              key="name", file=display_path(loaded.path))
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment.describe(ctx.device, ctx.dtype, recipe.run.generator_device, recipe.run.deterministic)
    env["world_size"] = dist.world_size
    env.update(environment_extras(built.pipe, loaded, ctx.location))
    resolved = recipe.model_dump(mode="json")
    manifest_path = distributed.partial_path(out_dir, dist.rank) if dist.world_size > 1 else None
    manifest = Manifest(out_dir, resolved, env, prepared.jobs, EXTENSIONS[recipe.output.format], manifest_path)
    manifest.data["optimizations"] = {e.name: e.record() for e in prepared.enabled}
    writer = Writer(manifest, recipe.output.format, recipe.output.quality, recipe.output.metadata,
                    recipe.model.id, json.dumps(resolved, ensure_ascii=False, sort_keys=True), rank=dist.rank)
    writer.default_scheduler = type(built.base_scheduler).__name__
    return Started(ctx, dist, built, images, manifest, writer)


def loaded_models(prepared: Prepared, model_revision: str | None) -> dict[str, Any]:
    """What the recipe's model ids stood for in this run: each local folder's content hash (hashed
    once per version of its files) and, for a Hub model, ``model_revision``: the commit it was
    loaded from (the manifest's ``environment.model_revision``)."""
    from .filehashes import FileHashes
    from .lock import local_weights

    hashes = FileHashes()
    found: dict[str, Any] = local_weights(prepared.recipe, prepared.loaded, hashes)
    hashes.save()
    if "model" not in found:
        found["model_commit"] = model_revision
    return found


def execute(prepared: Prepared, plugins: Plugins, options: Options, cache: ModelCache | None = None) -> dict[str, Any]:
    """Build (or reuse) the pipeline, resume from what the output folder holds, generate this
    process's share of the pending batches, write images, manifest, grid and gallery. Under a
    launcher, rank 0 merges the ranks' manifests. Returns the manifest (the merged one on rank 0)."""
    from . import distributed
    from .execute import Execution
    from .gallery import write_gallery
    from .grid import make_grid
    from .interrupts import critical
    from .journal import Journal, Keys, adopt, common_identity, merge, read_previous, remove_leftovers, stale_message
    from .progress import Progress

    recipe = prepared.recipe
    started = start(prepared, plugins, options, cache if cache is not None else ModelCache())
    ctx, dist, built, images, manifest, writer = (started.ctx, started.dist, started.built, started.images,
                                                  started.manifest, started.writer)
    out_dir = prepared.out_dir
    size = initial_batch_size(recipe.run.batch_size, prepared.jobs, ctx.device)

    # Resume: what the folder already holds (manifests, journals) decides what still runs, and how.
    # Every rank reads the same folder and so reaches the same plan before anyone writes.
    revision = manifest.data["environment"].get("model_revision")
    keys = Keys(common_identity(recipe, ctx.dtype, prepared.enabled, loaded_models(prepared, revision)),
                prepared.jobs, images.digests if images else {})
    previous, records = read_previous(out_dir)
    files = [r["file"] for r in manifest.data["images"]]
    state = merge(out_dir, prepared.jobs, files, keys, size, recipe.run.batch_size, previous, records)
    adopt(manifest, state, records, keys)
    if state.stale and dist.is_main:
        options.warn(stale_message(recipe.name, state.stale))
    dist.barrier()
    writer.journal = journal = Journal(manifest, keys, rank=dist.rank if dist.world_size > 1 else None)
    with critical():
        journal.fold()  # the manifest now describes the folder and every job's planned batch
    todo = [b for b in state.batches if any(j.index in state.pending for j in b.jobs)]
    mine = distributed.shard(todo, dist.world_size)[dist.rank]
    progress = Progress(sum(1 for b in mine for j in b.jobs if j.index in state.pending), recipe.name,
                        enabled=options.progress if dist.is_main else False)
    execution = Execution(built, writer, plugins.hook, images, progress, options.warn)
    began = time.perf_counter()
    try:
        execution.run(mine, pending=state.pending)
    finally:
        progress.close()
        generate_seconds = time.perf_counter() - began
        manifest.data["timings"] = {
            "load_seconds": round(built.load_seconds, 4),
            "setup_seconds": round(built.setup_seconds, 4),
            "generate_seconds": round(generate_seconds, 4),
            "write_seconds": round(sum(b["write_seconds"] for b in execution.batch_times), 4),
            "batches": execution.batch_times,
        }
        with critical():
            journal.close()
    dist.barrier()
    if not dist.is_main:
        return manifest.data
    data = manifest.data
    if dist.world_size > 1:
        data = distributed.merge(out_dir, dist.world_size)
        manifest.path, manifest.data = out_dir / "manifest.json", data
        with critical():
            manifest.save()
    remove_leftovers(out_dir)  # partial manifests and journals of earlier (distributed) runs
    if recipe.output.grid:
        make_grid(out_dir, data)
    if recipe.output.gallery:
        write_gallery(out_dir, data)
    plugins.hook.run_finished(recipe=recipe, output_dir=out_dir, manifest=data)
    done = sum(1 for b in mine for j in b.jobs if j.index in state.pending)
    rate = done / generate_seconds if generate_seconds > 0 else 0.0
    ranks = f" ({done} by rank 0 of {dist.world_size})" if dist.world_size > 1 else ""
    kept = f", {len(state.done)} already done" if state.done else ""
    stale = f", {len(state.stale)} stale" if state.stale else ""
    print(f"{recipe.name}: {len(prepared.jobs)} images{kept}{stale}; made {done}{ranks} in {generate_seconds:.1f} s "
          f"({rate:.2f} images/s), load {built.load_seconds:.1f} s, {peak_memory(ctx.device)} "
          f"-> {display_path(out_dir)}/")
    return data
