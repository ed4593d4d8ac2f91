"""Axes over what is loaded or applied: ``[matrix.axes]`` keys ``model``, ``components.<name>``,
``lora``, ``lora_scale`` and ``optimizations.<key>``.

Each distinct combination of their values is a *variant*: the recipe with those values written
into ``[model]``, ``[components]`` and ``[optimizations]`` (and the build axes taken out of the
matrix). A variant is a whole :class:`~recipe_runner.recipe.model.Recipe` with its own
:class:`~recipe_runner.recipe.loading.LoadedRecipe` (whose key origins point at the axis that gave each
value), so everything that works on a recipe works on it unchanged: the safety policy and the
checks, building, job keys, provenance. A recipe without build axes has exactly one variant: itself.

Values, as a recipe writes them::

    [matrix.axes]
    model = ["runwayml/stable-diffusion-v1-5", { id = "models/mine", variant = "fp16" }]
    components.vae = ["default", "stabilityai/sd-vae-ft-mse"]     # "default": the model's own
    lora = ["none", { id = "loras/pixel.safetensors" }, [{ id = "a.safetensors" }, { id = "b.safetensors", scale = 0.5 }]]
    lora_scale = [0.5, 1.0]                                       # multiplies each adapter's scale
    optimizations.attention_slicing = [false, true]               # off, on (or a settings table)

Light module: no torch, no diffusers.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from ..axes.kind import AxisContext
from ..axes.registry import KINDS, is_build_axis, value_label
from ..base.errors import Problem, RecipeError
from ..recipe.loading import LoadedRecipe
from ..recipe.model import Recipe, problem_from_pydantic
from ..recipe.optimizations import REQUIRED_HINT, Enabled, Registry
from .matrix import Job, axis_order


@dataclass
class Variant:
    """One pipeline a recipe needs: its build-axis values, the recipe they make, and its jobs."""

    id: str  # Job.variant of its jobs: the canonical JSON of ``axes``
    axes: dict[str, Any]  # build axis -> value, as written
    recipe: Recipe
    loaded: LoadedRecipe
    enabled: list[Enabled]
    jobs: list[Job]
    positions: dict[str, int]  # build axis -> index of this variant's value in the axis's list
    identity: dict[str, Any] = field(default_factory=dict)  # plugin -> what of it decides pixels (job_identity hook)

    def label(self) -> str:
        """``model tiny-a, components.vae default, lora none``: for the plan and the log."""
        return ", ".join(f"{name} {value_label(name, value)}" for name, value in self.axes.items()) or "the recipe"


# --- checking the values ---------------------------------------------------------------------------


def check(recipe: Recipe, loaded: LoadedRecipe, registry: Registry) -> list[Problem]:
    """Every problem with the build axes' values, each kind checking its own (each value checked
    as the table it stands for), then each kind's checks of the combination."""
    ctx = AxisContext(recipe, loaded, registry, KINDS.kinds())
    problems: list[Problem] = []
    by_kind: dict[str, list[str]] = {}
    for name, values in recipe.matrix.axes.items():
        kind = KINDS.of(name)
        if kind.build:
            problems += kind.check(name, values, ctx)
            by_kind.setdefault(kind.name, []).append(name)
    for kind in KINDS.kinds():
        if kind.name in by_kind:
            problems += kind.check_axes(by_kind[kind.name], ctx)
    return problems


# --- making the variants ---------------------------------------------------------------------------


def make(recipe: Recipe, loaded: LoadedRecipe, jobs: Sequence[Job], enabled: list[Enabled],
         registry: Registry) -> list[Variant]:
    """The variants of ``recipe``, in the order their first jobs come (one, the recipe itself,
    when it has no build axis). RecipeError lists every problem of the axis values."""
    build_axes = [name for name in axis_order(list(recipe.matrix.axes)) if is_build_axis(name)]
    if not build_axes:
        return resolve([Variant("{}", {}, recipe, loaded, enabled, list(jobs), {})])
    problems = check(recipe, loaded, registry)
    if problems:
        raise RecipeError(problems)
    by_id: dict[str, Variant] = {}
    for job in jobs:
        found = by_id.get(job.variant)
        if found is None:
            axes = {name: job.axes[name] for name in build_axes}
            positions = {name: _position(recipe.matrix.axes[name], axes[name]) for name in build_axes}
            found = by_id[job.variant] = _variant(recipe, loaded, axes, positions, registry)
        found.jobs.append(job)
    return resolve(list(by_id.values()))


def resolved_build(recipe: Recipe, enabled: Sequence[Enabled]) -> dict[str, Any]:
    """What a variant's recipe says of the pipeline its jobs run on, however it was written (a
    [model] table or a model axis value, [optimizations] or an optimization or LoRA axis):
    the model, components, optimizations (LoRA adapters with their scales) and generator device.
    Part of each job's identity (:meth:`Job.identity`)."""
    m = recipe.model
    return {
        "model": {k: getattr(m, k, None) for k in ("id", "revision", "variant", "dtype", "task", "custom_pipeline")},
        "components": {k: v.model_dump(mode="json") for k, v in sorted(recipe.components.items())},
        "optimizations": [[e.name, e.settings.model_dump(mode="json")] for e in enabled],
        "generator_device": recipe.run.generator_device,
    }


def resolve(variants: list[Variant]) -> list[Variant]:
    """Each variant's jobs completed with their resolved pipeline (:attr:`Job.build`, its canonical
    JSON). The jobs are those :func:`recipe_runner.plan.matrix.expand` just made for this plan,
    completed in place before anything reads them: copying 100,000 frozen jobs would cost the plan
    seconds (a frozen dataclass sets each field through ``object.__setattr__``)."""
    for variant in variants:
        build = json.dumps(resolved_build(variant.recipe, variant.enabled), sort_keys=True, ensure_ascii=False,
                           default=repr)
        for job in variant.jobs:
            object.__setattr__(job, "build", build)
    return variants


def resolved_jobs(variants: Sequence[Variant]) -> list[Job]:
    """The jobs of ``variants`` (made by :func:`make`), resolved, in matrix order."""
    return sorted((job for v in variants for job in v.jobs), key=lambda job: job.index)


def _position(values: list[Any], value: Any) -> int:
    text = _canonical(value)
    return next(i for i, v in enumerate(values) if _canonical(v) == text)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr)


def _variant(recipe: Recipe, loaded: LoadedRecipe, axes: dict[str, Any], positions: dict[str, int],
             registry: Registry) -> Variant:
    data = copy.deepcopy(loaded.data)
    data.pop("output", None)  # what is written, and how, is the recipe's (its grid may name the build axes)
    origins = dict(loaded.origins)
    matrix_axes = data["matrix"]["axes"]
    for name in axes:  # out of the matrix: written into the tables instead
        head, _, inner = name.partition(".")
        if name in matrix_axes:
            del matrix_axes[name]
        elif isinstance(matrix_axes.get(head), dict):
            matrix_axes[head].pop(inner, None)
            if not matrix_axes[head]:
                del matrix_axes[head]

    def place(key: str, value: Any, axis: str) -> None:
        """``data[key] = value`` (key dotted), its origin the axis that gave the value."""
        *parents, last = key.split(".")
        table = data
        for part in parents:
            table = table.setdefault(part, {})
        if value is None:
            table.pop(last, None)
        else:
            table[last] = value
        for stale in [o for o in origins if o == key or o.startswith(key + ".")]:
            del origins[stale]
        if value is not None:
            origins[key] = loaded.origin(f"matrix.axes.{axis}")

    for name, value in axes.items():
        for key, placed in KINDS.of(name).place(name, value, data):
            place(key, placed, name)
    for name, value in axes.items():
        KINDS.of(name).adjust(value, data)
    variant_loaded = replace(loaded, data=data, origins=origins)
    try:
        variant_recipe = Recipe.model_validate(data)
    except ValidationError as exc:  # a value valid alone that does not fit this recipe
        where = ", ".join(f"{k} {value_label(k, v)}" for k, v in axes.items())
        raise RecipeError([problem_from_pydantic(dict(e), variant_loaded.problem) for e in exc.errors()]
                          + [loaded.problem("matrix.axes", f"the values above come from the axes' combination {where}")]) from None
    enabled = registry.enable(variant_recipe.optimizations, variant_loaded.problem)
    return Variant(_canonical(axes), axes, variant_recipe, variant_loaded, enabled, [], positions)


def relabel(problems: Sequence[Problem], variant: Variant) -> list[Problem]:
    """Problems found on a variant's tables (``model.id``, ``components.vae.id``,
    ``optimizations.lora...``), named by the axis that wrote the value, once per distinct problem."""
    out: dict[tuple[Any, ...], Problem] = {}
    for p in problems:
        key = p.key or ""
        for name in variant.axes:
            table = KINDS.of(name).target(name)
            if table is not None and (key == table or key.startswith(table + ".")):
                key = f"matrix.axes.{name}.{variant.positions[name]}"
                break
        moved = replace(p, key=key or None)
        if key != (p.key or "") and p.hint == REQUIRED_HINT:
            moved = replace(moved, hint=None)  # an axis value has no table to set required = false in
        out.setdefault((moved.key, moved.message, moved.file, moved.line), moved)
    return list(out.values())
