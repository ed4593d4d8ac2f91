"""The pipelines in memory: loaded once, shared, switched in place, released.

A :class:`ModelCache` lives for an invocation (and across ``--watch`` rounds). Its entries are
keyed by what a load decides (:func:`model_key`): the model, the optimizations that cannot be
switched on a loaded pipeline, and the components unless every enabled optimization can be
switched. Within an entry, a variant (:mod:`recipe_runner.plan.variants`) that differs only in
components or in switchable optimizations is reached *in place*: components are swapped with
``register_modules`` (each loaded once per entry, and kept while the entry lives), optimizations
are switched with their plugin's ``switch``. Another task on the same weights is derived with
``from_pipe``. A :class:`Pipelines` walks one recipe's variants in plan order and releases a model
before loading the next, unless ``run.keep_models`` asks to keep them.

torch and diffusers are imported inside the functions (through :mod:`recipe_runner.pipelines.build`).
"""

from __future__ import annotations

import gc
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..base import report
from ..base.errors import RecipeError, RunError
from ..plan.variants import relabel
from ..recipe.context import BuildContext, HasHooks
from ..recipe.loading import problem_at
from ..recipe.optimizations import Enabled, Unsupported, settle
from . import build
from .build import Built

if TYPE_CHECKING:
    from ..plan.matrix import Job
    from ..plan.prepared import Prepared
    from ..plan.variants import Variant
    from ..recipe.model import ComponentSpec, Recipe


def switchable(enabled: Iterable[Enabled]) -> bool:
    """Every optimization of ``enabled`` can be switched on a loaded pipeline."""
    return all(e.optimization.switch is not None for e in enabled)


def model_key(recipe: Recipe, enabled: list[Enabled], allow_pickle: bool) -> str:
    """Recipes (and variants) with equal keys share one loaded pipeline: the task aside (see
    from_pipe), and the optimizations that switch in place aside (with the components too, when
    every enabled optimization switches)."""
    fixed = [e for e in enabled if e.optimization.switch is None]
    return json.dumps({
        "model": recipe.model.model_dump(mode="json", exclude={"task"}),
        "components": None if not fixed else {k: v.model_dump(mode="json") for k, v in recipe.components.items()},
        "optimizations": [[e.key or e.name, e.settings.model_dump(mode="json")] for e in fixed],  # key: which plugin's
        "allow_pickle": allow_pickle,
    }, sort_keys=True)


def _spec_text(spec: ComponentSpec | None) -> str:
    return "default" if spec is None else json.dumps(spec.model_dump(mode="json"), sort_keys=True)


def _settings_text(item: Enabled | None) -> str | None:
    return None if item is None else json.dumps(item.settings.model_dump(mode="json"), sort_keys=True)


def build_variant(variant: Variant, plugins: HasHooks, ctx: BuildContext) -> Built:
    """:func:`recipe_runner.build.build` for ``variant``: a failure is named by the axis value that
    chose the model (``matrix.axes.model.1``), not by the recipe's ``model.id``."""
    try:
        return build.build(variant.recipe, variant.loaded, variant.jobs, variant.enabled, plugins.hook, ctx)
    except RecipeError as exc:
        raise RecipeError(relabel(exc.problems, variant)) from exc.__cause__
    except RunError as exc:
        if not variant.axes:
            raise
        raise RunError(f"{exc} ({variant.label()})") from exc.__cause__


@dataclass
class Entry:
    """One loaded set of weights: a pipeline per task, what is swapped in and switched on."""

    by_task: dict[str, Built] = field(default_factory=dict)
    pool: dict[tuple[str, str], Any] = field(default_factory=dict)  # (name, spec text) -> loaded module
    switched: dict[str, Enabled] = field(default_factory=dict)  # switchable optimizations that are on


@dataclass
class ModelCache:
    """Pipelines loaded in this invocation: model key -> :class:`Entry`. ``loads`` counts the
    from_pretrained loads, ``derived`` the pipelines made with from_pipe, ``switches`` the
    in-place changes (components swapped, optimizations switched)."""

    entries: dict[str, Entry] = field(default_factory=dict)
    loads: int = 0
    derived: int = 0
    switches: int = 0

    def get(self, variant: Variant, plugins: HasHooks, ctx: BuildContext, allow_pickle: bool,
            log: list[dict[str, Any]] | None = None) -> Built:
        """The pipeline of ``variant``: reused, switched in place, derived or loaded. ``log``
        gets one line per load, derivation or switch (what, how, seconds)."""
        recipe, loaded, task = variant.recipe, variant.loaded, variant.recipe.model.task
        key = model_key(recipe, variant.enabled, allow_pickle)
        entry = self.entries.get(key)
        began = time.perf_counter()
        how = "reused"
        step = next_step({k: set(e.by_task) for k, e in self.entries.items()}, key, variant)
        if entry is not None and step == "reuse":
            built = entry.by_task[task]
            built.rebind(recipe, loaded, variant.jobs)
            built.load_seconds = built.setup_seconds = 0.0
        elif entry is not None and step == "derive":
            source = next(iter(entry.by_task.values()))
            built = build.derive(source, recipe, loaded, variant.jobs, plugins.hook, ctx)
            built.swapped = dict(source.swapped)
            entry.by_task[task] = built
            self.derived += 1
            how = "derived"
        else:
            report.note(f"{recipe.name}: loading {recipe.model.id} ({task}, {ctx.device}, {ctx.dtype}"
                        f"{', ' + variant.label() if variant.axes else ''}) ...")
            built = build_variant(variant, plugins, ctx)
            entry = self.entries[key] = Entry({task: built})
            built.swapped = {name: _spec_text(spec) for name, spec in recipe.components.items()}
            entry.switched = {e.name: e for e in built.optimizations
                              if e.status == "applied" and e.optimization.switch is not None}
            self.loads += 1
            how = "loaded"
        if how != "loaded" and self._bring(entry, built, variant, ctx):
            how = "switched" if how == "reused" else how
            built.setup_seconds = time.perf_counter() - began
        for mine in variant.enabled:
            theirs = next((e for e in built.optimizations if e.name == mine.name), None)
            if mine.name in entry.switched:
                mine.status, mine.reason = "applied", None
                mine.details.update(entry.switched[mine.name].details)
            elif theirs is not None:
                mine.status, mine.reason = theirs.status, theirs.reason
        if log is not None:
            log.append({"variant": variant.label(), "how": how, "seconds": round(time.perf_counter() - began, 4)})
        return built

    def _bring(self, entry: Entry, built: Built, variant: Variant, ctx: BuildContext) -> bool:
        """Swap in the variant's components and switch its optimizations; True when anything changed."""
        recipe = variant.recipe
        wanted_components = {name: _spec_text(recipe.components.get(name))
                             for name in set(built.swapped) | set(recipe.components)}
        swaps = {n: t for n, t in wanted_components.items() if built.swapped.get(n, "default") != t}
        wanted = {e.name: e for e in variant.enabled if e.optimization.switch is not None and e.status != "skipped"}
        changed = False
        if swaps:  # every switched optimization off, the components in, then on again (they may act on them)
            for item in reversed(list(entry.switched.values())):
                self._switch(built, item, None, ctx, variant)
            entry.switched = {}
            for name, text in swaps.items():
                built.pipe.register_modules(**{name: self._component(entry, built, name, text, recipe, variant, ctx)})
                built.swapped[name] = text
            changed = True
        for name in [n for n in entry.switched if n not in wanted]:
            self._switch(built, entry.switched.pop(name), None, ctx, variant)
            changed = True
        for name, item in wanted.items():  # in stage order (variant.enabled is)
            current = entry.switched.get(name)
            if _settings_text(current) != _settings_text(item):
                entry.switched.pop(name, None)
                if self._switch(built, current, item, ctx, variant):
                    entry.switched[name] = item
                changed = True
        return changed

    def _switch(self, built: Built, old: Enabled | None, new: Enabled | None, ctx: BuildContext,
                variant: Variant) -> bool:
        """Switch one optimization from ``old`` to ``new`` (either None: off); False when ``new``
        could not be switched on and is skipped (``required = false``; else RecipeError)."""
        item = new or old
        assert item is not None and item.optimization.switch is not None
        try:
            details = item.call("switch", built.pipe, old.settings if old else None,
                                  new.settings if new else None, ctx)
        except Unsupported as exc:
            if new is None:  # the pipeline would keep it on: no image may be made with it by mistake
                raise RunError(f"optimizations.{item.name}: cannot switch it off on the loaded pipeline: {exc}") from exc
            settle(new, exc, lambda k, m, h=None: problem_at(variant.loaded, k, m, h), ctx.warn)
            return False
        self.switches += 1
        if new is not None:
            new.status = "applied"
            if isinstance(details, dict):
                new.details.update(details)
        return True

    def _component(self, entry: Entry, built: Built, name: str, text: str, recipe: Recipe, variant: Variant,
                   ctx: BuildContext) -> Any:
        """The module of component ``name`` for spec ``text``: from the entry's pool, or loaded
        (the model's own for "default"), in its dtype, on the device."""
        found = entry.pool.get((name, text))
        current = getattr(built.pipe, name, None)
        if current is not None:
            entry.pool.setdefault((name, built.swapped.get(name, "default")), current)
        if found is not None:
            return found
        from ..recipe.model import ComponentSpec
        from .sources import locate

        index = build.read_model_index(ctx.location, recipe.model.revision)
        if text == "default":
            spec = ComponentSpec(id=recipe.model.id, subfolder=name, revision=recipe.model.revision,
                                 variant=recipe.model.variant)
            location = ctx.location
        else:
            spec = recipe.components[name]
            key = f"components.{name}"
            location = locate(spec.id, variant.loaded.origin(f"{key}.id").folder, f"{key}.id", variant.loaded)
        module = build.load_component(name, spec, location, index, ctx, variant.loaded)
        if hasattr(module, "to"):
            module = module.to(ctx.device)
        entry.pool[(name, text)] = module
        return module

    def release(self, keep: Iterable[str]) -> list[str]:
        """Drop every entry whose key is not in ``keep``, collect the garbage and return CUDA's
        cached blocks; returns the dropped keys."""
        wanted = set(keep)
        return self.drop([k for k in self.entries if k not in wanted])

    def drop(self, keys: Iterable[str]) -> list[str]:
        """Drop the entries of ``keys`` (those present), as :meth:`release` does."""
        dropped = [k for k in keys if k in self.entries]
        for key in dropped:
            del self.entries[key]
        if dropped:
            gc.collect()
            torch = sys.modules.get("torch")  # only when something imported it: never import it here
            if torch is not None and torch.cuda.is_available():
                torch.cuda.empty_cache()
        return dropped


@dataclass
class Pipelines:
    """The pipelines of one recipe run, one variant at a time in plan order: ``use(job)`` gives the
    pipeline that makes ``job``. Leaving a model for another releases it from the cache unless
    ``run.keep_models``; the timings of every load and switch are kept for the manifest."""

    prepared: Prepared
    plugins: HasHooks
    cache: ModelCache
    allow_pickle: bool
    context_for: Callable[[Variant], BuildContext]
    on_built: Callable[[Variant, Built], None] = lambda variant, built: None
    log: list[dict[str, Any]] = field(default_factory=list)
    current: Variant | None = None
    built: Built | None = None
    load_seconds: float = 0.0
    setup_seconds: float = 0.0

    def use(self, job: Job) -> Built:
        variant = self.prepared.variant_of(job)
        if self.current is not None and self.current.id == variant.id and self.built is not None:
            return self.built
        return self.switch_to(variant)

    def switch_to(self, variant: Variant) -> Built:
        key = model_key(variant.recipe, variant.enabled, self.allow_pickle)
        if self.current is not None and not self.prepared.recipe.run.keep_models:
            previous = model_key(self.current.recipe, self.current.enabled, self.allow_pickle)
            if previous != key:  # one model in memory at a time: the plan never comes back to it
                self.cache.drop([previous])
                self.built = None
        built = self.cache.get(variant, self.plugins, self.context_for(variant), self.allow_pickle, self.log)
        self.load_seconds += built.load_seconds
        self.setup_seconds += built.setup_seconds
        self.current, self.built = variant, built
        self.on_built(variant, built)
        return built


def next_step(loaded: dict[str, set[str]], key: str, variant: Variant) -> str:
    """How the pipeline of ``variant`` (model key ``key``) is made, given the loaded model keys and
    the tasks each has a pipeline for: ``reuse`` (its task is there; components and switchable
    optimizations are then switched in place), ``derive`` (another task on the same weights:
    ``from_pipe``, unless an optimization places the model itself) or ``load`` (from_pretrained).
    The one rule :meth:`ModelCache.get` follows and ``--dry-run`` (:func:`load_order`) shows."""
    tasks = loaded.get(key)
    if tasks and variant.recipe.model.task in tasks:
        return "reuse"
    if tasks and not any(e.optimization.places_model for e in variant.enabled):
        return "derive"
    return "load"


def load_order(variants: list[Variant], allow_pickle: bool, keep_models: bool) -> list[tuple[str, Variant]]:
    """What a run will do for each variant, in plan order (--dry-run): ``load``, ``derive``,
    ``switch`` (in place, on the pipeline used just before) or ``reuse`` (a pipeline kept loaded),
    by :func:`next_step` on the models a run would hold (one at a time unless ``keep_models``)."""
    loaded: dict[str, set[str]] = {}
    current: str | None = None
    steps = []
    for variant in variants:
        key = model_key(variant.recipe, variant.enabled, allow_pickle)
        how = next_step(loaded, key, variant)
        if how == "load" and current is not None and current != key and not keep_models:
            loaded.pop(current, None)  # a run releases the model it leaves
        if how == "reuse" and key == current:
            how = "switch"
        loaded.setdefault(key, set()).add(variant.recipe.model.task)
        current = key
        steps.append((how, variant))
    return steps
