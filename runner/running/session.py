"""Running prepared recipes (see :mod:`recipe_runner.running.prepare`): a :class:`Session` runs every
recipe of an invocation: a recipe with nothing to do is said so without importing torch; the
others are resumed (:mod:`recipe_runner.records.resume`), built (one pipeline per variant of a build
axis, loaded, shared and switched in place by :mod:`recipe_runner.pipelines.cache`), generated,
written, and summarised.

Light at import (every module it imports keeps torch and diffusers inside its functions).
"""

from __future__ import annotations

import copy
import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base import environment, report
from ..base.errors import RecipeError, RunError
from ..base.filehashes import FileHashes
from ..base.interrupts import begin_writing, critical, graceful
from ..base.paths import TMP_NAME, atomic_write, ignore_created_root
from ..pipelines import build
from ..pipelines.cache import ModelCache, Pipelines
from ..pipelines.lock import COMMIT, cached_commit, model_records
from ..pipelines.preflight import before_loading
from ..plan import inputs as inputs_mod
from ..plan.batches import initial_batch_size, plan
from ..plan.variants import Variant, relabel
from ..plugin_api.manager import Plugins
from ..recipe.context import BuildContext
from ..recipe.loading import display_path
from ..records.formats import extension
from ..records.journal import Journal
from ..records.keys import job_keys
from ..records.manifest import MANIFEST_NAME, Manifest, save_local, split
from ..records.outputs import Writer
from ..records.ownership import check_owners
from ..records.provenance import environment_extras, machine_facts, owner_of
from ..records.resume import NOT_MADE, Peek, Replaced, ResumeState, peek, remove_leftovers, resume, shared_text
from ..records.runlock import LOCK_NAME, hold
from ..views import drawn
from ..views.gallery import write_gallery
from ..views.grid import make_grid
from . import distributed
from .distributed import Dist, launched_world_size
from .execute import Execution
from .prepare import Options, Prepared
from .progress import Progress

# --- running ---------------------------------------------------------------------------------------

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
    """A recipe ready for its first batch: where it runs, its pipelines (the first one built), and
    what writes its images."""

    ctx: BuildContext
    dist: Dist
    pipelines: Pipelines
    images: inputs_mod.InputImages | None
    manifest: Manifest
    writer: Writer
    revisions: dict[str, str | None]  # model id -> the revision (Hub commit) its images are keyed with
    hashes: FileHashes  # the model files hashed for this run (its job keys read them again, not the files)


def start(prepared: Prepared, plugins: Plugins, options: Options, cache: ModelCache,
          first: Variant | None = None, pending: set[str] | None = None) -> Started:
    """Everything before the first batch, shared by runs and --reproduce: device and dtype, the
    weight and input checks, the (possibly shared) pipeline of ``first`` (default: the recipe's
    first variant), the output folder, manifest and writer."""

    recipe, loaded = prepared.recipe, prepared.loaded
    contexts: dict[str, BuildContext] = {}

    def context_for(variant: Variant) -> BuildContext:
        if variant.id not in contexts:
            made = variant_context(variant, options)
            made.device = dist.device(made.device)
            contexts[variant.id] = made
        return contexts[variant.id]

    # Every variant runs on one device ([model] device is not an axis): the first context says which.
    probe = first or prepared.variants[0]
    ctx = variant_context(probe, options)
    dist = distributed.detect(ctx.device)
    ctx.device = dist.device(ctx.device)
    contexts[probe.id] = ctx
    first = first or first_variant(prepared, dist, options.force, pending)
    for variant in prepared.variants:  # every variant's optimization checks, before the first load
        context_for(variant)
    ctx = context_for(first)

    environment.set_deterministic(recipe.run.deterministic)
    images = None
    if prepared.inputs:
        images = inputs_mod.InputImages(prepared.inputs, loaded, prepared.input_keys)
        images.preflight()
        too_small = images.size_problems(size_multiple(prepared.variants))
        if too_small:
            raise RecipeError(too_small)
        prepared.jobs[:] = images.with_sizes(prepared.jobs)
    schedulers: dict[str, str] = {}  # variant -> its pipeline's own scheduler class (the images' Sampler)
    pipelines = Pipelines(prepared, plugins, cache, options.allow_pickle, context_for,
                          lambda variant, built: schedulers.__setitem__(variant.id, type(built.base_scheduler).__name__))
    built = pipelines.switch_to(first)

    out_dir = prepared.out_dir
    if out_dir.is_symlink():
        raise RecipeError.one(f"the output folder {out_dir} is a symbolic link: refusing to write through it",
                              key="name", file=display_path(loaded.path))
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = ctx.dtype if first.recipe is recipe else build.choose_dtype(recipe.model.dtype, ctx.device, lambda _: None)
    env = environment.describe(ctx.device, dtype, recipe.run.generator_device, recipe.run.deterministic)  # [model]'s
    env["world_size"] = dist.world_size
    env.update(environment_extras(built.pipe, first.loaded, ctx.location, plugins, folder=out_dir))
    revisions = {first.recipe.model.id: env.get("model_revision")}
    for variant in prepared.variants:
        revisions.setdefault(variant.recipe.model.id, revision_before_loading(variant.recipe.model))
    if len(revisions) > 1:
        env["model_revisions"] = revisions
    hashes = FileHashes()
    env["models"] = model_records(recipe, loaded, hashes, revisions)  # what --reproduce compares with later
    resolved = recipe.model_dump(mode="json")
    manifest_path = distributed.partial_path(out_dir, dist.rank) if dist.world_size > 1 else None
    manifest = Manifest.for_jobs(out_dir, resolved, env, prepared.jobs, extension(recipe.output.format),
                                 path=manifest_path, optimizations=optimization_records(prepared))
    manifest.machine = machine_facts(first.loaded, ctx.location)
    manifest.recipe_path = owner_of(loaded.path, out_dir.parent)
    writer = Writer(manifest, recipe.output.format, recipe.output.quality, recipe.output.metadata,
                    recipe.model.id, json.dumps(resolved, ensure_ascii=False, sort_keys=True),
                    default_scheduler=schedulers[first.id], rank=dist.rank,
                    models={v.id: v.recipe.model.id for v in prepared.variants}, schedulers=schedulers)
    return Started(ctx, dist, pipelines, images, manifest, writer, revisions, hashes)


def size_multiple(variants: Sequence[Variant]) -> int:
    """The largest VAE scale factor of the variants' models, as their folders declare it (8, the
    diffusers default, when not known before loading)."""
    from ..pipelines.preflight import find_model
    from ..plan.checks import DEFAULT_MULTIPLE

    found = [find_model(v.recipe, v.loaded).info for v in variants]
    return max([info.vae_scale_factor for info in found if info is not None and info.vae_scale_factor] or [DEFAULT_MULTIPLE])


def variant_context(variant: Variant, options: Options) -> BuildContext:
    """The build context of a variant (device, dtype, location, its optimizations' checks); a
    problem is named by the axis value that caused it."""
    try:
        return build.make_context(variant.recipe, variant.loaded, variant.enabled, allow_pickle=options.allow_pickle,
                                  trust_remote_code=options.trust_remote_code, warn=options.warn)
    except RecipeError as exc:
        raise RecipeError(relabel(exc.problems, variant)) from None


def optimization_records(prepared: Prepared) -> dict[str, dict[str, Any]]:
    """The manifest's ``optimizations``: each optimization's record (of the last variant using it);
    with several variants (build axes), also ``variants``: its record in each variant using it, by
    variant label, so that an axis over its settings keeps every value's settings and facts."""
    out: dict[str, dict[str, Any]] = {}
    several = len(prepared.variants) > 1
    for variant in prepared.variants:
        for e in variant.enabled:
            record = e.record()
            if several:
                record["variants"] = {**out.get(e.name, {}).get("variants", {}), variant.label(): e.record()}
            out[e.name] = record
    return out


def revision_before_loading(model: Any) -> str | None:
    """The commit a Hub model's images are keyed with before it is loaded: the local Hub cache's
    ref for its revision, else the revision asked for (a local folder is keyed by its content)."""
    if model.revision and COMMIT.fullmatch(model.revision):
        return str(model.revision)
    return cached_commit(model.id, model.revision or "main") or model.revision


def first_variant(prepared: Prepared, dist: Dist, force: bool, pending: set[str] | None = None) -> Variant:
    """The variant to build first: the first, in this process's share of the plan, with an image
    to make (``pending``, the variants with one; default: as far as a light look at the output
    folder tells), so that a re-run after adding a model loads only it, and a rank loads only the
    models it is given."""
    variants = prepared.variants
    if len(variants) == 1:
        return variants[0]
    if pending is None:
        found = peek(prepared) if dist.world_size == 1 and not force else None
        pending = found.pending_variants if found is not None else {v.id for v in variants}
    order = variants
    if dist.world_size > 1:  # the models a rank gets do not depend on the batch size
        mine = distributed.shard(plan(prepared.jobs, 1), dist.world_size)[dist.rank]
        order = [prepared.variant_of(b.jobs[0]) for b in mine]
    return next((v for v in order if v.id in pending), variants[0])


def run_recipe(prepared: Prepared, plugins: Plugins, options: Options, cache: ModelCache | None = None,
               pending: set[str] | None = None, stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Build (or reuse) the pipelines, resume from what the output folder holds, generate this
    process's share of the pending batches, write images, manifest, grid and gallery. Under a
    launcher, rank 0 merges the ranks' manifests. ``pending``: the variants with an image to make,
    when the caller has looked already (see :func:`first_variant`). ``stop`` (``--watch``: a watched
    file was saved) is asked before each batch: True ends the generation there, the images of the
    batches before kept and listed. Returns the manifest (the merged one on rank 0)."""

    with hold(prepared.out_dir, wait=options.wait):  # one run per folder; held until grid and gallery are written
        with environment.pinned_threads(prepared.recipe.run.threads):  # [run] threads, for this recipe only
            return _run_recipe(prepared, plugins, options, cache, pending, stop)


def _run_recipe(prepared: Prepared, plugins: Plugins, options: Options, cache: ModelCache | None,
                pending: set[str] | None, stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    recipe = prepared.recipe
    started = start(prepared, plugins, options, cache if cache is not None else ModelCache(), pending=pending)
    ctx, dist, pipelines, images, manifest, writer = (started.ctx, started.dist, started.pipelines, started.images,
                                                      started.manifest, started.writer)
    out_dir = prepared.out_dir
    if options.new_root and not options.baseline and dist.is_main:  # a root this invocation made: kept out of git
        ignore_created_root(out_dir.parent)
    begin_writing()  # from here an interrupt lets the writes finish and folds the journal (exit 130/143)
    size = initial_batch_size(recipe.run.batch_size, prepared.jobs, ctx.device)

    # Resume: what the folder already holds (manifests, journals) decides what still runs, and how.
    # Every rank reads the same folder and so reaches the same plan before anyone writes.
    keys = job_keys(prepared.variants, prepared.jobs, lambda v: pipelines.context_for(v).dtype, started.revisions,
                    images.digests if images else {}, hashes=started.hashes)
    started.hashes.save()
    state = resume(manifest, prepared.jobs, keys, size, recipe.run.batch_size, force=options.force,
                   same_as=prepared.same_as, ext=extension(recipe.output.format))
    state.apply(manifest)
    baseline = options.baseline
    history = None
    if dist.is_main:  # the images this run replaces stay reachable: moved, never deleted (a baseline: until it ends)
        history = state.retire(out_dir, baseline=baseline)
        if history is not None and not baseline:
            manifest.set_history(history.relative_to(out_dir).as_posix(), [(r.file, r.reason) for r in state.replaced])
    # A pixel-identical image leaves the file it replaces as it was (on the first rank: it moved them aside).
    writer.restorable = state.restorable(history)
    left: list[Replaced] = []
    dist.barrier()
    journal = Journal(manifest, keys, rank=dist.rank if dist.world_size > 1 else None)
    writer = writer.journaled(journal)
    with critical():
        journal.fold()  # the manifest now describes the folder and every job's planned batch
    mine = distributed.shard(state.todo(), dist.world_size)[dist.rank]
    order = {v.id: i for i, v in enumerate(prepared.variants)}  # one variant after the other (zip mode too)
    mine.sort(key=lambda b: (order[b.jobs[0].variant], b.index))
    todo = sum(1 for b in mine for j in b.jobs if j.index in state.pending)
    plugins.hook.run_started(recipe=recipe, output_dir=out_dir, todo=todo)
    progress = Progress(todo, recipe.name, enabled=options.progress if dist.is_main else False)
    execution = Execution(pipelines, writer, plugins.hook, images, progress, options.warn, stop=stop)
    began = time.perf_counter()
    try:
        execution.run(mine, pending=state.pending)
    finally:
        progress.close()
        generate_seconds = time.perf_counter() - began
        manifest.optimizations = optimization_records(prepared)
        manifest.record_timings(pipelines.load_seconds, pipelines.setup_seconds, generate_seconds,
                                execution.batch_times, pipelines.log if len(prepared.variants) > 1 else None)
        with critical():
            if dist.world_size == 1:
                left = settle_history(state, manifest, out_dir, history, baseline)
            journal.close()
    dist.barrier()
    if not dist.is_main:
        return manifest.to_json()
    if dist.world_size > 1:
        manifest = distributed.merge(out_dir, dist.world_size)
        with critical():
            left = settle_history(state, manifest, out_dir, history, baseline)
            manifest.save()
    data = manifest.to_json()
    remove_leftovers(out_dir)  # partial manifests and journals of earlier (distributed) runs
    if recipe.output.grid:
        make_grid(out_dir, data)
    if recipe.output.gallery:
        write_gallery(out_dir, data)
    manifest.views = data["views"] = drawn.drawn_with(data["recipe"])  # a later run redraws them when [output] changes
    with critical():
        manifest.save()
    plugins.hook.run_finished(recipe=recipe, output_dir=out_dir, manifest=copy.deepcopy(data))
    done = made_on_disk(manifest, [j for b in mine for j in b.jobs if j.index in state.pending])
    if execution.stopped:  # a --watch round: one process, the manifest says which images were written
        report.note(f"{recipe.name}: stopped after {done} of {len(state.pending)} new image(s): a watched file changed")
    rate = done / generate_seconds if generate_seconds > 0 else 0.0
    ranks = f" ({done} by rank 0 of {dist.world_size})" if dist.world_size > 1 else ""
    count = sum(1 for e in pipelines.log if e['how'] == 'loaded')
    loads = "" if len(prepared.variants) == 1 else f", {count} load{'s' * (count != 1)}"
    kept = len({r.file for r in state.retired if r.reason != NOT_MADE} - {r.file for r in left})  # moved back
    summary = changes(state, kept, left) if baseline else state.summary(kept)
    report.result(f"{recipe.name}: {len(prepared.jobs)} images: {summary}; made {done}{ranks} in "
                  f"{generate_seconds:.1f} s ({rate:.2f} images/s), load {pipelines.load_seconds:.1f} s{loads}, "
                  f"{peak_memory(ctx.device)} -> {display_path(out_dir)}/")
    report.result(where_to_look(out_dir, recipe.output.gallery, manifest.history, manifest.replaced))
    return data


def settle_history(state: ResumeState, manifest: Manifest, out_dir: Path, history: Path | None,
                   baseline: bool) -> list[Replaced]:
    """After the writes: the files moved aside that a pixel-identical image did not move back are
    replaced for good: kept in the history folder (its records updated, the folder removed when
    nothing is left in it), or, for a baseline, removed. Returns them."""
    left = state.settle(out_dir, history, baseline=baseline, names=manifest.files())
    if history is not None and not baseline:
        if left:
            manifest.set_history(history.relative_to(out_dir).as_posix(), [(r.file, r.reason) for r in left])
        else:
            manifest.set_history(None, [])
    return left


def changes(state: ResumeState, kept: int, left: Sequence[Replaced]) -> str:
    """A baseline's summary: ``2 updated, 6 unchanged`` (``, 1 removed``: files no job makes any more)."""
    removed = sum(1 for r in left if r.reason == NOT_MADE)
    text = f"{len(state.pending) - kept} updated, {len(state.done) + kept} unchanged"
    return text + (f", {removed} removed" if removed else "") + shared_text(len(state.shared))


def made_on_disk(manifest: Manifest, jobs: Sequence[Any]) -> int:
    """How many of ``jobs`` (this run's) are done: recorded so and their file on disk (the summary
    counts files, never the plan)."""
    return sum(1 for job in jobs if manifest.record(job).status == "done" and manifest.file_for(job).is_file())


def where_to_look(out_dir: Path, gallery: bool, history: str | None, moved: Sequence[dict[str, str]] = ()) -> str:
    """The summary's second line: the gallery, and where the images this run moved aside went,
    told apart: those it regenerated, and those no job of the recipe makes any more (so that
    "0 regenerated" never stands beside "replaced images")."""
    parts = [f"gallery {display_path(out_dir / 'index.html')}"] if gallery else []
    if history is not None:
        gone = sum(1 for r in moved if r.get("reason") == NOT_MADE)
        replaced = len(moved) - gone
        what = [f"{replaced} replaced image{'s' * (replaced != 1)}"] * bool(replaced or not moved)
        what += [f"{gone} image{'s' * (gone != 1)} no job makes any more"] * bool(gone)
        parts.append(f"{' and '.join(what)} kept in {display_path(out_dir / history)}/")
    return "  " + "; ".join(parts) if parts else ""


def look(prepared: Prepared, options: Options) -> Peek | None:
    """What a run of ``prepared`` would do, decided without torch (:func:`recipe_runner.records.resume.peek`);
    None under --force or a launcher, or when files alone cannot tell."""
    if options.force or launched_world_size() > 1:
        return None
    return peek(prepared)


def upgrade(prepared: Prepared, data: dict[str, Any]) -> dict[str, Any]:
    """A folder made by a version before portable records (no ``recipe_path``), found with nothing
    to do: its manifest is rewritten once into today's form (the timings and this machine's paths
    into ``.recipe-runner/run.json``, the recipe file that owns it recorded); its images untouched."""
    out_dir = prepared.out_dir
    if not data or "recipe_path" in data:
        return data
    committed, local = split(data, out_dir)
    committed["recipe_path"] = owner_of(prepared.loaded.path, out_dir.parent)
    try:
        with hold(out_dir), critical():
            save_local(out_dir, local)
            atomic_write(out_dir / MANIFEST_NAME,
                         json.dumps(committed, indent=2, ensure_ascii=False, default=repr).encode("utf-8"))
    except (RecipeError, OSError):
        return data  # another run is writing into the folder (or it cannot be written): left as it is
    return committed


def up_to_date(prepared: Prepared, plugins: Plugins, found: Peek | None) -> dict[str, Any] | None:
    """When ``found`` (:func:`look`) says every job of ``prepared`` is unchanged on disk: say so
    (redrawing the views when only the recipe's ``[output]`` changed, see :func:`repair`) and
    return the folder's manifest; else None."""
    if found is None or not found.nothing_to_do:
        return None
    out_dir = prepared.out_dir
    data: dict[str, Any] = upgrade(prepared, found.manifest or {})
    data, redrew = repair(prepared, data)
    plugins.hook.run_started(recipe=prepared.recipe, output_dir=out_dir, todo=0)
    plugins.hook.run_finished(recipe=prepared.recipe, output_dir=out_dir, manifest=copy.deepcopy(data))
    views = f"; {redrew} redrawn" if redrew else ""
    report.result(f"{prepared.recipe.name}: {len(prepared.jobs)} images: {found.summary()}; nothing to do, "
                  f"nothing loaded{views} -> {display_path(out_dir)}/")
    return data


def repair(prepared: Prepared, data: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A folder with nothing to do still gets its views as the recipe asks, from the images on
    disk: redrawn when the recipe's ``[output]`` (or description) differs from what they were drawn
    with (the manifest's ``views``, :mod:`recipe_runner.views.drawn`), written when an earlier run
    failed to finish them (a full disk while writing ``grid.png``, a kill mid-write); temporary files
    (and a killed run's lock file) are removed. Under the folder's run lock; when another run holds it, that run writes them.
    Returns the manifest (updated when the views were redrawn) and what was redrawn ("" when nothing)."""
    out_dir, output = prepared.out_dir, prepared.recipe.output
    try:
        names = [entry.name for entry in out_dir.iterdir()]
    except OSError:
        return data, ""
    resolved = prepared.recipe.model_dump(mode="json")
    stale = bool(data) and drawn.stale(data, resolved)
    wanted = drawn.redrawn(data, resolved) if stale else data
    leftovers = LOCK_NAME in names or any(TMP_NAME.fullmatch(name) for name in names)  # a killed run's
    sheets = output.grid and (stale or any(not (out_dir / s.file).is_file() for s in _sheets(out_dir, wanted)))
    gallery = output.gallery and (stale or "index.html" not in names)
    if not (leftovers or sheets or gallery or stale):
        return data, ""
    try:
        with hold(out_dir):  # removes the temporary files
            if sheets:
                make_grid(out_dir, wanted)
            if sheets or gallery:
                write_gallery(out_dir, as_recipe_says(prepared, wanted))
            if stale:  # the manifest says what the views now show
                with critical():
                    atomic_write(out_dir / MANIFEST_NAME,
                                 json.dumps(wanted, indent=2, ensure_ascii=False, default=repr).encode("utf-8"))
    except RecipeError:
        return data, ""  # another run is writing into the folder: it writes them
    if not stale:
        return data, ""
    redrew = [w for w, on in (("grid", sheets), ("gallery", gallery)) if on]
    return wanted, " and ".join(redrew) if redrew else ""


def as_recipe_says(prepared: Prepared, data: dict[str, Any]) -> dict[str, Any]:
    """The folder's manifest, for a page drawn without a run: only the records of this recipe's
    jobs, with the input images and recipe folder the recipe names (a record never makes the
    gallery read a file the recipe does not)."""
    ext = extension(prepared.recipe.output.format)
    jobs = {job.filename(ext): job for job in prepared.jobs}
    cells = {job.cell_name(): job for job in prepared.jobs}  # a file kept under the name it had before
    images = []
    for record in data.get("images") or []:
        job = None
        if isinstance(record, dict):
            cell = record.get("cell")
            job = jobs.get(str(record.get("file"))) or cells.get(cell if isinstance(cell, str) else
                                                                 str(record.get("file")).rpartition(".")[0])
        if job is not None:
            images.append({**record, "image": job.image, "mask_image": job.mask_image})
    environment = {**(data.get("environment") or {}), "recipe_folder": str(prepared.loaded.path.resolve().parent)}
    return {**data, "environment": environment, "images": images}


def _sheets(out_dir: Path, data: dict[str, Any]) -> list[Any]:
    from ..views.grid import sheets_for

    try:
        return sheets_for(out_dir, data)
    except Exception:  # an unreadable image: the next run that writes one draws the sheets
        return []


@dataclass
class Session:
    """The runs of one invocation: the plugins and options they share, and the pipelines they load
    (shared by recipes on the same model, and kept warm between ``--watch`` rounds)."""

    plugins: Plugins
    options: Options
    cache: ModelCache = field(default_factory=ModelCache)
    debug: bool = False  # --debug: a reported failure shows its traceback

    def run(self, prepared: Sequence[Prepared], *, keep_going: bool = False, checked: Callable[[], None] | None = None,
            stop: Callable[[], bool] | None = None) -> list[dict[str, Any]]:
        """Run every recipe: those with nothing to do are said so without importing torch or
        loading a model; the others are checked against their pipeline classes, all of them before
        the first image of the first one, then generated. A first Ctrl-C finishes writing and
        flushes the manifest. The error policy: raise the first failure (a plain run), or with
        ``keep_going`` (a ``--watch`` round) report each failure and go on with the next recipe.

        ``checked`` is called once every check before loading passed, before the first load (a
        ``--watch`` round releases the models no recipe uses then: an invalid edit keeps them).
        ``stop`` is asked before each batch and each recipe: True ends the run there (a ``--watch``
        round superseded by a save), the images of finished batches kept."""

        manifests: list[dict[str, Any]] = []
        todo = []
        check_owners(prepared, self.options.force)
        for item in prepared:
            found = look(item, self.options)  # once: it also says which variants to load first
            unchanged = up_to_date(item, self.plugins, found)
            if unchanged is None:
                todo.append((item, found.pending_variants if found is not None else {v.id for v in item.variants}))
            else:
                manifests.append(unchanged)
        if not todo:
            if checked is not None:
                checked()
            return manifests
        with ExitStack() as locks:
            held = []
            for item, pending in todo:  # every folder this invocation writes is ours before anything loads
                try:
                    locks.enter_context(hold(item.out_dir, wait=self.options.wait))
                    held.append((item, pending))
                except RecipeError as exc:  # another run writes there
                    if not keep_going:
                        raise
                    report.problems(exc.problems)
            try:
                before_loading([item for item, _ in held])
            except RecipeError as exc:
                if not keep_going:
                    raise
                report.problems(exc.problems)
                return manifests
            if checked is not None:
                checked()
            with graceful():  # first Ctrl-C: finish writing, flush the manifest, exit 130; second: at once
                for item, pending in held:
                    if stop is not None and stop():
                        report.note(f"{item.recipe.name}: not started: a watched file changed")
                        continue
                    try:
                        manifests.append(run_recipe(item, self.plugins, self.options, self.cache, pending, stop))
                    except RecipeError as exc:
                        if not keep_going:
                            raise
                        report.problems(exc.problems)
                    except Exception as exc:  # a failure while running: reported, and the session goes on
                        if not keep_going:
                            raise
                        if self.debug:
                            traceback.print_exc()
                        report.error(f"{item.recipe.name}: {exc if isinstance(exc, RunError) else f'{type(exc).__name__}: {exc}'}")
                    sys.stdout.flush()
        return manifests
