"""The ``optimizations.<key>`` axes: an optimization off, on, or with other settings, per value
(switched in place when its plugin can, else one load per value)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .kind import AxisContext, AxisKind, enable, moved

if TYPE_CHECKING:
    from ..base.errors import Problem
    from ..recipe.optimizations import Registry


class OptimizationsAxis(AxisKind):
    name = "optimizations"
    nested = True
    rank = 20
    description = "optimizations.<key>: off (false), on (true) or a table of its settings, per value"

    def target(self, axis: str) -> str:
        return axis

    def label(self, axis: str, value: Any) -> str:
        if value is True:
            return "on"
        if value is False:
            return "off"
        if isinstance(value, dict):
            return ", ".join(f"{k}={json.dumps(v)}" for k, v in value.items()) or "on"
        return super().label(axis, value)

    def check(self, axis: str, values: list[Any], ctx: AxisContext) -> list[Problem]:
        problems: list[Problem] = []
        key = f"matrix.axes.{axis}"
        option = axis.partition(".")[2]
        owner = next((k for k in ctx.kinds if k.replaces == f"optimizations.{option}"), None)
        if owner is not None:
            return [ctx.problem(key, f"write {option} settings as a {owner.name} axis",
                                f"use matrix.axes.{owner.name} = [...] (see docs/axes.md)")]
        if ctx.optimizations.lookup(option) is None:  # said once for the axis, with "did you mean"
            enable({option: True}, ctx.optimizations, moved(ctx.problem, f"optimizations.{option}", key), problems)
            return problems
        for i, value in enumerate(values):
            at = f"{key}.{i}"
            if not isinstance(value, (bool, dict)):
                problems.append(ctx.problem(at, f"expected true, false or a table of {option}'s settings, got {value!r}"))
                continue
            enable({option: value}, ctx.optimizations, moved(ctx.problem, f"optimizations.{option}", at), problems)
        return problems

    def place(self, axis: str, value: Any, data: dict[str, Any]) -> list[tuple[str, Any]]:
        return [(axis, None if value is False else value)]

    def schema(self, optimizations: Registry) -> dict[str, Any] | None:
        return None  # per key: see the schema of [optimizations] (recipe_runner.cli.schema)
