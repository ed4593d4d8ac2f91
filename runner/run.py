"""Running prepared recipes (see :mod:`recipe_runner.prepare`): a :class:`Session` runs every
recipe of an invocation: a recipe with nothing to do is said so without importing torch; the
others are resumed (:mod:`recipe_runner.resume`), built (sharing loaded pipelines through a
:class:`ModelCache`), generated, written, and summarised.

Light at import (every module it imports keeps torch and diffusers inside its functions).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import build, distributed, environment
from . import inputs as inputs_mod
from .build import Built
from .context import BuildContext
from .distributed import Dist
from .errors import RecipeError
from .execute import Execution
from .gallery import write_gallery
from .grid import make_grid
from .interrupts import critical, graceful
from .journal import Journal
from .keys import Keys, common_identity
from .loading import display_path
from .lock import loaded_models
from .manifest import Manifest
from .optimizations import Enabled
from .outputs import EXTENSIONS, Writer
from .plan import initial_batch_size
from .plugin_manager import Plugins
from .preflight import before_loading
from .prepare import Options, Prepared
from .progress import Progress
from .provenance import environment_extras
from .recipe import Recipe
from .resume import peek, remove_leftovers, resume

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

    def get(self, prepared: Prepared, plugins: Plugins, ctx: BuildContext, key: str) -> Built:

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
            print(f"{recipe.name}: loading {recipe.model.id} ({task}, {ctx.device}, {ctx.dtype}) ...",
                  file=sys.stderr, flush=True)
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

    ctx: BuildContext
    dist: Dist
    built: Built
    images: inputs_mod.InputImages | None
    manifest: Manifest
    writer: Writer


def start(prepared: Prepared, plugins: Plugins, options: Options, cache: ModelCache) -> Started:
    """Everything before the first batch, shared by runs and --reproduce: device and dtype, the
    weight and input checks, the (possibly shared) pipeline, the output folder, manifest and writer."""

    recipe, loaded = prepared.recipe, prepared.loaded
    ctx = build.make_context(recipe, loaded, prepared.enabled, allow_pickle=options.allow_pickle,
                        trust_remote_code=options.trust_remote_code, warn=options.warn)
    dist = distributed.detect(ctx.device)
    ctx.device = dist.device(ctx.device)
    environment.set_deterministic(recipe.run.deterministic)
    images = None
    if prepared.inputs:
        images = inputs_mod.InputImages(prepared.inputs, loaded, prepared.input_keys)
        images.preflight()
        prepared.jobs[:] = images.with_sizes(prepared.jobs)
    built = cache.get(prepared, plugins, ctx, model_key(recipe, prepared.enabled, options.allow_pickle))

    out_dir = prepared.out_dir
    if out_dir.is_symlink():
        raise RecipeError.one(f"the output folder {out_dir} is a symbolic link: refusing to write through it",
                              key="name", file=display_path(loaded.path))
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment.describe(ctx.device, ctx.dtype, recipe.run.generator_device, recipe.run.deterministic)
    env["world_size"] = dist.world_size
    env.update(environment_extras(built.pipe, loaded, ctx.location, plugins))
    resolved = recipe.model_dump(mode="json")
    manifest_path = distributed.partial_path(out_dir, dist.rank) if dist.world_size > 1 else None
    manifest = Manifest.for_jobs(out_dir, resolved, env, prepared.jobs, EXTENSIONS[recipe.output.format],
                                 path=manifest_path, optimizations={e.name: e.record() for e in prepared.enabled})
    writer = Writer(manifest, recipe.output.format, recipe.output.quality, recipe.output.metadata,
                    recipe.model.id, json.dumps(resolved, ensure_ascii=False, sort_keys=True),
                    default_scheduler=type(built.base_scheduler).__name__, rank=dist.rank)
    return Started(ctx, dist, built, images, manifest, writer)


def run_recipe(prepared: Prepared, plugins: Plugins, options: Options, cache: ModelCache | None = None) -> dict[str, Any]:
    """Build (or reuse) the pipeline, resume from what the output folder holds, generate this
    process's share of the pending batches, write images, manifest, grid and gallery. Under a
    launcher, rank 0 merges the ranks' manifests. Returns the manifest (the merged one on rank 0)."""

    recipe = prepared.recipe
    started = start(prepared, plugins, options, cache if cache is not None else ModelCache())
    ctx, dist, built, images, manifest, writer = (started.ctx, started.dist, started.built, started.images,
                                                  started.manifest, started.writer)
    out_dir = prepared.out_dir
    size = initial_batch_size(recipe.run.batch_size, prepared.jobs, ctx.device)

    # Resume: what the folder already holds (manifests, journals) decides what still runs, and how.
    # Every rank reads the same folder and so reaches the same plan before anyone writes.
    revision = manifest.environment.get("model_revision")
    keys = Keys(common_identity(recipe, ctx.dtype, prepared.enabled, loaded_models(prepared.recipe, prepared.loaded, revision)),
                prepared.jobs, images.digests if images else {})
    state = resume(manifest, prepared.jobs, keys, size, recipe.run.batch_size, force=options.force)
    state.apply(manifest)
    if dist.is_main:  # the images this run replaces stay reachable: moved, never deleted
        history = state.retire(out_dir)
        if history is not None:
            manifest.set_history(history.relative_to(out_dir).as_posix(), [(r.file, r.reason) for r in state.replaced])
    dist.barrier()
    journal = Journal(manifest, keys, rank=dist.rank if dist.world_size > 1 else None)
    writer = writer.journaled(journal)
    with critical():
        journal.fold()  # the manifest now describes the folder and every job's planned batch
    mine = distributed.shard(state.todo(), dist.world_size)[dist.rank]
    progress = Progress(sum(1 for b in mine for j in b.jobs if j.index in state.pending), recipe.name,
                        enabled=options.progress if dist.is_main else False)
    execution = Execution(built, writer, plugins.hook, images, progress, options.warn)
    began = time.perf_counter()
    try:
        execution.run(mine, pending=state.pending)
    finally:
        progress.close()
        generate_seconds = time.perf_counter() - began
        manifest.record_timings(built.load_seconds, built.setup_seconds, generate_seconds, execution.batch_times)
        with critical():
            journal.close()
    dist.barrier()
    if not dist.is_main:
        return manifest.to_json()
    if dist.world_size > 1:
        manifest = distributed.merge(out_dir, dist.world_size)
        with critical():
            manifest.save()
    data = manifest.to_json()
    remove_leftovers(out_dir)  # partial manifests and journals of earlier (distributed) runs
    if recipe.output.grid:
        make_grid(out_dir, data)
    if recipe.output.gallery:
        write_gallery(out_dir, data)
    plugins.hook.run_finished(recipe=recipe, output_dir=out_dir, manifest=data)
    done = sum(1 for b in mine for j in b.jobs if j.index in state.pending)
    rate = done / generate_seconds if generate_seconds > 0 else 0.0
    ranks = f" ({done} by rank 0 of {dist.world_size})" if dist.world_size > 1 else ""
    print(f"{recipe.name}: {len(prepared.jobs)} images: {state.summary()}; made {done}{ranks} in "
          f"{generate_seconds:.1f} s ({rate:.2f} images/s), load {built.load_seconds:.1f} s, "
          f"{peak_memory(ctx.device)} -> {display_path(out_dir)}/")
    print(where_to_look(out_dir, recipe.output.gallery, manifest.history))
    return data


def where_to_look(out_dir: Path, gallery: bool, history: str | None) -> str:
    """The summary's second line: the gallery, and where replaced images went."""
    parts = [f"gallery {display_path(out_dir / 'index.html')}"] if gallery else []
    if history is not None:
        parts.append(f"replaced images kept in {display_path(out_dir / history)}/")
    return "  " + "; ".join(parts) if parts else ""


def up_to_date(prepared: Prepared, plugins: Plugins, options: Options) -> dict[str, Any] | None:
    """When every job of ``prepared`` is unchanged on disk (decided without torch, see
    :func:`recipe_runner.resume.peek`): say so and return the folder's manifest; else None."""
    if options.force or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return None
    found = peek(prepared)
    if found is None or not found.nothing_to_do:
        return None
    out_dir = prepared.out_dir
    data: dict[str, Any] = found.manifest or {}
    plugins.hook.run_finished(recipe=prepared.recipe, output_dir=out_dir, manifest=data)
    print(f"{prepared.recipe.name}: {len(prepared.jobs)} images: {found.summary()}; nothing to do, "
          f"nothing loaded -> {display_path(out_dir)}/")
    return data


@dataclass
class Session:
    """The runs of one invocation: the plugins and options they share, and the pipelines they load
    (shared by recipes on the same model, and kept warm between ``--watch`` rounds)."""

    plugins: Plugins
    options: Options
    cache: ModelCache = field(default_factory=ModelCache)

    def run(self, prepared: Sequence[Prepared]) -> list[dict[str, Any]]:
        """Run every recipe: those with nothing to do are said so without importing torch; the
        others are checked against their pipeline classes, all of them before the first image of
        the first one, then generated. A first Ctrl-C finishes writing and flushes the manifest."""

        manifests: list[dict[str, Any]] = []
        todo = []
        for item in prepared:
            unchanged = up_to_date(item, self.plugins, self.options)
            if unchanged is None:
                todo.append(item)
            else:
                manifests.append(unchanged)
        before_loading(todo)
        with graceful():  # first Ctrl-C: finish writing, flush the manifest, exit 130; second: at once
            for item in todo:
                manifests.append(run_recipe(item, self.plugins, self.options, self.cache))
        return manifests
