"""The axes that vary the pipeline's call, not the pipeline: ``scheduler`` and call parameters
(``guidance_scale``, ``num_inference_steps``, ...). They stay in the matrix: each job carries its value."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .kind import AxisKind

if TYPE_CHECKING:
    from ..recipe.optimizations import Registry

SCHEDULER_AXIS = "scheduler"


class SchedulerAxis(AxisKind):
    name = SCHEDULER_AXIS
    build = False
    rank = 80
    description = "scheduler classes (or { class, ...options })"

    def schema(self, optimizations: Registry) -> dict[str, Any]:
        return {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/SchedulerSpec"}]}


class CallParameterAxis(AxisKind):
    """Any other key: a parameter of the pipeline's call. Matches every name the other kinds leave."""

    name = "params"
    build = False
    rank = 90
    description = "a call parameter's values"

    def matches(self, axis: str) -> bool:
        return True
