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
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any

from pydantic import Field, ValidationError

from ..axes.registry import DEFAULT_COMPONENT, NO_LORA, axis_kind, is_build_axis, value_label
from ..base.errors import Problem, RecipeError
from ..recipe.loading import LoadedRecipe
from ..recipe.model import ComponentSpec, DType, Recipe, Strict, problem_from_pydantic
from ..recipe.optimizations import Enabled, Registry
from .matrix import Job, axis_order

LORA = "lora"  # the optimization a lora / lora_scale axis sets


class ModelValue(Strict):
    """A ``model`` axis value written as a table: the ``[model]`` keys that may vary. The others
    (task, device, custom_pipeline, trust_remote_code) are the ``[model]`` table's."""

    id: Annotated[str, Field(min_length=1)]
    revision: str | None = None
    variant: str | None = None
    dtype: DType | None = None  # None: the [model] table's


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

    def label(self) -> str:
        """``model tiny-a, components.vae default, lora none``: for the plan and the log."""
        return ", ".join(f"{name} {value_label(name, value)}" for name, value in self.axes.items()) or "the recipe"


# --- checking the values ---------------------------------------------------------------------------


def check(recipe: Recipe, loaded: LoadedRecipe, registry: Registry) -> list[Problem]:
    """Every problem with the build axes' values (each value checked as the table it stands for)."""
    problems: list[Problem] = []
    axes = recipe.matrix.axes
    problem = loaded.problem

    def fail(key: str, message: str, hint: str | None = None) -> None:
        problems.append(problem(key, message, hint))

    lora_table = recipe.optimizations.get(LORA)
    for name, values in axes.items():
        if not is_build_axis(name):
            continue
        key = f"matrix.axes.{name}"
        kind = axis_kind(name)
        for i, value in enumerate(values):
            at = f"{key}.{i}"
            if kind == "model":
                _check_model(value, at, problem, problems)
            elif kind == "components":
                _check_component(value, at, problem, problems)
            elif kind == "lora":
                _check_lora(value, at, registry, problem, problems)
            elif kind == "lora_scale":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    fail(at, f"expected a number (the adapters' weight multiplier), got {value!r}")
            else:
                option = name.partition(".")[2]
                if option == LORA:
                    fail(key, "write adapter sets as a lora axis", f"use matrix.axes.lora = [{NO_LORA!r}, {{ id = ... }}]")
                    break
                if option not in registry.optimizations:  # said once for the axis, with "did you mean"
                    _enable({option: True}, registry, _moved(problem, f"optimizations.{option}", key), problems)
                    break
                if not isinstance(value, (bool, dict)):
                    fail(at, f"expected true, false or a table of {option}'s settings, got {value!r}")
                    continue
                _enable({option: value}, registry, _moved(problem, f"optimizations.{option}", at), problems)
    if LORA in axes and lora_table is not None:
        fail("optimizations.lora", "a lora axis lists the adapters itself",
             "remove [optimizations.lora], or list its adapters as one value of matrix.axes.lora")
    if "lora_scale" in axes:
        fused = isinstance(lora_table, dict) and lora_table.get("fuse") is True
        if LORA not in axes and not lora_table:
            fail("matrix.axes.lora_scale", "weights LoRA adapters, but the recipe loads none",
                 "add a lora axis, or adapters in [optimizations.lora]")
        elif fused:
            fail("optimizations.lora.fuse", "fused adapters cannot be re-weighted by a lora_scale axis",
                 "set fuse = false")
    return problems


def _moved(problem: Callable[..., Problem], prefix: str, to: str) -> Callable[..., Problem]:
    """A problem function that reports ``<prefix>.rest`` as ``<to>.rest`` (where it was written)."""

    def located(key: str, message: str, hint: str | None = None) -> Problem:
        if key == prefix or key.startswith(prefix + "."):
            key = to + key[len(prefix):]
        return problem(key, message, hint)

    return located


def _check_model(value: Any, at: str, problem: Callable[..., Problem], problems: list[Problem]) -> None:
    if isinstance(value, str):
        if not value:
            problems.append(problem(at, "expected a model id, got an empty string"))
        return
    if not isinstance(value, dict):
        problems.append(problem(at, f"expected a model id or a table {{ id, revision, variant, dtype }}, got {value!r}"))
        return
    try:
        ModelValue.model_validate(value)
    except ValidationError as exc:
        problems += [problem_from_pydantic(dict(e), problem, model=ModelValue, prefix=at) for e in exc.errors()]


def _check_component(value: Any, at: str, problem: Callable[..., Problem], problems: list[Problem]) -> None:
    if isinstance(value, str):
        if not value:
            problems.append(problem(at, f"expected a component id or {DEFAULT_COMPONENT!r}, got an empty string"))
        return
    if not isinstance(value, dict):
        problems.append(problem(at, f"expected a component id, {DEFAULT_COMPONENT!r} (the model's own) or a table "
                                    f"like [components.<name>], got {value!r}"))
        return
    try:
        ComponentSpec.model_validate(value)
    except ValidationError as exc:
        problems += [problem_from_pydantic(dict(e), problem, model=ComponentSpec, prefix=at) for e in exc.errors()]


def _check_lora(value: Any, at: str, registry: Registry, problem: Callable[..., Problem],
                problems: list[Problem]) -> None:
    if value == NO_LORA:
        return
    if isinstance(value, dict) or (isinstance(value, list) and value and all(isinstance(v, dict) for v in value)):
        # optimizations.lora.adapters.N... is written at <at>.N..., optimizations.lora.<setting> at <at>.<setting>
        located = _moved(_moved(problem, "optimizations.lora", at), "optimizations.lora.adapters", at)
        _enable({LORA: {"adapters": _adapters(value)}}, registry, located, problems)
        return
    problems.append(problem(at, f"expected {NO_LORA!r}, an adapter table {{ id = ..., scale = ... }} or a list of "
                                f"them, got {value!r}"))


def _enable(table: dict[str, Any], registry: Registry, problem: Callable[..., Problem],
            problems: list[Problem]) -> list[Enabled]:
    try:
        return registry.enable(table, problem)
    except RecipeError as exc:
        problems += exc.problems
        return []


def _adapters(value: Any) -> list[dict[str, Any]]:
    return [dict(a) for a in (value if isinstance(value, list) else [value])]


# --- making the variants ---------------------------------------------------------------------------


def make(recipe: Recipe, loaded: LoadedRecipe, jobs: Sequence[Job], enabled: list[Enabled],
         registry: Registry) -> list[Variant]:
    """The variants of ``recipe``, in the order their first jobs come (one, the recipe itself,
    when it has no build axis). RecipeError lists every problem of the axis values."""
    build_axes = [name for name in axis_order(list(recipe.matrix.axes)) if is_build_axis(name)]
    if not build_axes:
        return [Variant("{}", {}, recipe, loaded, enabled, list(jobs), {})]
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
    return list(by_id.values())


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

    scale = axes.get("lora_scale")
    for name, value in axes.items():
        kind = axis_kind(name)
        if kind == "model":
            spec = {"id": value} if isinstance(value, str) else dict(value)
            model = {k: v for k, v in data["model"].items() if k not in ("id", "revision", "variant")}
            model.update({k: v for k, v in spec.items() if v is not None})
            place("model", model, name)
        elif kind == "components":
            component = name.partition(".")[2]
            component_spec = None if value == DEFAULT_COMPONENT else ({"id": value} if isinstance(value, str) else dict(value))
            place(f"components.{component}", component_spec, name)
        elif kind == "lora":
            place("optimizations.lora", None if value == NO_LORA else {"adapters": _adapters(value)}, name)
        elif kind == "optimizations":
            option = name.partition(".")[2]
            place(f"optimizations.{option}", None if value is False else value, name)
    if scale is not None:
        table = data.get("optimizations", {}).get(LORA)
        if isinstance(table, dict):
            table = copy.deepcopy(table)
            for adapter in table.get("adapters") or []:
                if isinstance(adapter, dict):
                    adapter["scale"] = float(adapter.get("scale", 1.0)) * float(scale)
            data["optimizations"][LORA] = table
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
            kind = axis_kind(name)
            table = {"model": "model", "components": name, "lora": "optimizations.lora", "optimizations": name}.get(kind)
            if table is not None and (key == table or key.startswith(table + ".")):
                key = f"matrix.axes.{name}.{variant.positions[name]}"
                break
        moved = replace(p, key=key or None)
        out.setdefault((moved.key, moved.message, moved.file, moved.line), moved)
    return list(out.values())
