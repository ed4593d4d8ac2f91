"""The ``components.<name>`` axes: a component (a VAE, a text encoder) swapped in place, the model
loaded once. ``"default"`` is the model's own component."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..recipe.model import ComponentSpec
from .kind import AxisContext, AxisKind, ModelReference, check_references, reference_label

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
        return check_references(axis, values, ctx, ComponentSpec,
                                f"expected a component id or {DEFAULT_COMPONENT!r}, got an empty string",
                                f"expected a component id, {DEFAULT_COMPONENT!r} (the model's own) or a table like "
                                "[components.<name>], got {value!r}")

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
