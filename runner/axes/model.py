"""The ``model`` axis: several models in one run, each loaded once (outermost in the plan)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from ..recipe.model import DType, Strict
from .kind import AxisContext, AxisKind, ModelReference, check_references, reference_label

if TYPE_CHECKING:
    from ..base.errors import Problem
    from ..recipe.optimizations import Registry


class ModelValue(Strict):
    """A ``model`` axis value written as a table: the ``[model]`` keys that may vary. The others
    (task, device, custom_pipeline, trust_remote_code) are the ``[model]`` table's."""

    id: Annotated[str, Field(min_length=1)]
    revision: str | None = None
    variant: str | None = None
    dtype: DType | None = None  # None: the [model] table's


class ModelAxis(AxisKind):
    name = "model"
    rank = 10
    description = 'model ids or { id, revision, variant, dtype }: each model loaded once'

    def target(self, axis: str) -> str:
        return "model"

    def label(self, axis: str, value: Any) -> str:
        return reference_label(value) or super().label(axis, value)

    def check(self, axis: str, values: list[Any], ctx: AxisContext) -> list[Problem]:
        return check_references(axis, values, ctx, ModelValue, "expected a model id, got an empty string",
                                "expected a model id or a table {{ id, revision, variant, dtype }}, got {value!r}")

    def place(self, axis: str, value: Any, data: dict[str, Any]) -> list[tuple[str, Any]]:
        spec = {"id": value} if isinstance(value, str) else dict(value)
        # the [model] table keeps what the value does not say, except which weights: id, revision, variant
        model = {k: v for k, v in data["model"].items() if k not in ("id", "revision", "variant")}
        model.update({k: v for k, v in spec.items() if v is not None})
        return [("model", model)]

    def schema(self, optimizations: Registry) -> dict[str, Any]:
        model = ModelValue.model_json_schema()
        model.pop("title", None)
        return {"anyOf": [{"type": "string", "minLength": 1}, model]}

    def references(self, axis: str, value: Any) -> ModelReference:
        table = {"id": value} if isinstance(value, str) else value
        return ModelReference(table["id"], table.get("revision"), None)
