"""The contract of an axis kind: how ``[matrix.axes]`` values of one kind are checked, labelled,
described in the JSON Schema, ordered in the plan and written into a variant's tables.

A *build* kind changes what is loaded or applied (model, components, optimizations; the lora
plugin's ``lora`` and ``lora_scale``): each distinct combination of build-axis values is a variant,
the recipe with the values written into its tables (:mod:`recipe_runner.plan.variants`). A
non-build kind (the scheduler, call parameters) varies the call and stays in the matrix.

Light module: no torch, no diffusers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ValidationError

from ..base.errors import Problem, RecipeError
from ..recipe.model import problem_from_pydantic

if TYPE_CHECKING:
    from ..recipe.loading import LoadedRecipe
    from ..recipe.model import Recipe
    from ..recipe.optimizations import Enabled, Registry

ProblemAt = Callable[..., Problem]  # problem(key, message, hint=None) -> a located Problem


@dataclass
class AxisContext:
    """What a kind's checks may look at: the recipe, where its keys were written, the optimizations."""

    recipe: Recipe
    loaded: LoadedRecipe
    optimizations: Registry
    kinds: list[AxisKind]  # every registered kind (a kind may refuse what another one owns)

    def problem(self, key: str, message: str, hint: str | None = None) -> Problem:
        return self.loaded.problem(key, message, hint)


@dataclass(frozen=True)
class ModelReference:
    """A model or component an axis value loads (for ``--lock``)."""

    id: str
    revision: str | None
    subfolder: str | None


class AxisKind:
    """One kind of ``[matrix.axes]`` key. Subclass, set the class attributes, override what applies."""

    name: ClassVar[str]  # "model", "components", ...: how the plan, records and --list-plugins name it
    nested: ClassVar[bool] = False  # written <name>.<key> (``components.vae``): a table of axes
    build: ClassVar[bool] = True  # changes what is loaded or applied (a variant per value)
    rank: ClassVar[int] = 50  # the plan's order, outermost (costliest to switch) first
    replaces: ClassVar[str | None] = None  # a table its values stand for, refused as an optimizations.<key> axis
    description: ClassVar[str] = ""  # one line, for --list-plugins and the schema

    def matches(self, axis: str) -> bool:
        """Whether the ``[matrix.axes]`` key ``axis`` is of this kind."""
        head, dot, _ = axis.partition(".")
        return head == self.name and bool(dot) if self.nested else axis == self.name

    def target(self, axis: str) -> str | None:
        """The dotted recipe key a value is written into (problems found there are named by the axis)."""
        return None

    def label(self, axis: str, value: Any) -> str:
        """A value by a short name, for the plan, the log, the grid, the gallery and ``--compare``."""
        if isinstance(value, float):
            return f"{value:g}"
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=repr)

    def check(self, axis: str, values: list[Any], ctx: AxisContext) -> list[Problem]:
        """Every problem with the values of one axis of this kind (``matrix.axes.<axis>.<i>``)."""
        return []

    def check_axes(self, axes: list[str], ctx: AxisContext) -> list[Problem]:
        """Problems of the combination (this kind's axes ``axes`` with the rest of the recipe), once."""
        return []

    def place(self, axis: str, value: Any, data: dict[str, Any]) -> list[tuple[str, Any]]:
        """What a build value writes into the variant's recipe (``data``, the recipe's tables as
        written): ``(dotted key, value)`` pairs, a value of None removing the key."""
        return []

    def adjust(self, value: Any, data: dict[str, Any]) -> None:
        """After every build value was placed: change the variant's tables in place (``lora_scale``)."""

    def schema(self, optimizations: Registry) -> dict[str, Any] | None:
        """The JSON Schema of one value (an item of the axis's list); None: any value."""
        return None

    def references(self, axis: str, value: Any) -> ModelReference | None:
        """The model a value loads (locked by ``--lock``), if any."""
        return None


def listed(item: dict[str, Any] | None, description: str) -> dict[str, Any]:
    """The schema of an axis: a non-empty list of ``item``."""
    return {"type": "array", "minItems": 1, "items": item or {}, "description": description}


def moved(problem: ProblemAt, prefix: str, to: str) -> ProblemAt:
    """A problem function that reports ``<prefix>.rest`` as ``<to>.rest`` (where it was written)."""

    def located(key: str, message: str, hint: str | None = None) -> Problem:
        if key == prefix or key.startswith(prefix + "."):
            key = to + key[len(prefix):]
        return problem(key, message, hint)

    return located


def enable(table: dict[str, Any], optimizations: Registry, problem: ProblemAt, problems: list[Problem]) -> list[Enabled]:
    """``[optimizations]`` settings validated as the table they stand for; problems collected."""
    try:
        return optimizations.enable(table, problem)
    except RecipeError as exc:
        problems += exc.problems
        return []


def reference_label(value: Any) -> str | None:
    """A model or component value by a short name: the last part of its id (and revision, variant,
    subfolder or dtype when given); None when it is neither an id nor a table with one."""
    if isinstance(value, str):
        return short_id(value)
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        extra = [str(value[k]) for k in ("revision", "variant", "subfolder", "dtype") if value.get(k)]
        return short_id(value["id"]) + (f" ({', '.join(extra)})" if extra else "")
    return None


def check_references(axis: str, values: list[Any], ctx: AxisContext, table: type[BaseModel], empty: str,
                     otherwise: str) -> list[Problem]:
    """The values of an axis of models or components: each a non-empty id, or a table that
    ``table`` validates (its problems at ``matrix.axes.<axis>.<i>.<key>``). ``empty`` and
    ``otherwise`` (formatted with ``value``) say what was expected."""
    problems: list[Problem] = []
    for i, value in enumerate(values):
        at = f"matrix.axes.{axis}.{i}"
        if isinstance(value, str):
            if not value:
                problems.append(ctx.problem(at, empty))
            continue
        if not isinstance(value, dict):
            problems.append(ctx.problem(at, otherwise.format(value=value)))
            continue
        try:
            table.model_validate(value)
        except ValidationError as exc:
            problems += [problem_from_pydantic(dict(e), ctx.problem, model=table, prefix=at) for e in exc.errors()]
    return problems


def short_id(model_id: str) -> str:
    """The last part of a model or file reference: ``org/model`` -> ``model``; a path -> its name."""
    text = model_id.rstrip("/\\")
    name = text.replace("\\", "/").rsplit("/", 1)[-1] or text
    return Path(name).stem if name.endswith((".safetensors", ".bin", ".ckpt", ".pt", ".pth")) else name
