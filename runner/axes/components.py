"""The ``components.<name>`` axes: a component (a VAE, a text encoder) swapped in place, the model
loaded once. ``"default"`` is the model's own component."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ..recipe.model import ComponentSpec, problem_from_pydantic
from .kind import AxisContext, AxisKind, ModelReference, reference_label

if TYPE_CHECKING:
    from ..base.errors import Problem
    from ..recipe.optimizations import Registry

DEFAULT_COMPONENT = "default"  # a components.<name> axis value: the model's own component


class ComponentsAxis(AxisKind):
    name = "components"
    nested = True
    rank = 30
    description = '"default" (the model\'s own), a component id or a [components.<name>] table'

    def target(self, axis: str) -> str:
        return axis

    def label(self, axis: str, value: Any) -> str:
        if value == DEFAULT_COMPONENT:
            return DEFAULT_COMPONENT
        return reference_label(value) or super().label(axis, value)

    def check(self, axis: str, values: list[Any], ctx: AxisContext) -> list[Problem]:
        problems: list[Problem] = []
        for i, value in enumerate(values):
            at = f"matrix.axes.{axis}.{i}"
            if isinstance(value, str):
                if not value:
                    problems.append(ctx.problem(at, f"expected a component id or {DEFAULT_COMPONENT!r}, got an empty string"))
                continue
            if not isinstance(value, dict):
                problems.append(ctx.problem(at, f"expected a component id, {DEFAULT_COMPONENT!r} (the model's own) or a "
                                                f"table like [components.<name>], got {value!r}"))
                continue
            try:
                ComponentSpec.model_validate(value)
            except ValidationError as exc:
                problems += [problem_from_pydantic(dict(e), ctx.problem, model=ComponentSpec, prefix=at) for e in exc.errors()]
        return problems

    def place(self, axis: str, value: Any, data: dict[str, Any]) -> list[tuple[str, Any]]:
        spec = None if value == DEFAULT_COMPONENT else ({"id": value} if isinstance(value, str) else dict(value))
        return [(axis, spec)]

    def schema(self, optimizations: Registry) -> dict[str, Any]:
        return {"anyOf": [{"type": "string", "minLength": 1}, {"$ref": "#/$defs/ComponentSpec"}]}

    def references(self, axis: str, value: Any) -> ModelReference | None:
        if value == DEFAULT_COMPONENT:
            return None
        table = {"id": value} if isinstance(value, str) else value
        return ModelReference(table["id"], table.get("revision"), table.get("subfolder"))
