"""The registry of axis kinds: the built-in ones (model, components, optimizations, scheduler, call
parameters) and those plugins register (the lora plugin's ``lora`` and ``lora_scale``).

The plugin manager fills it when plugins load (``register_axis_kinds`` hook); every part of the
core asks it what an axis is: the matrix (plan order), the variants (checks, values written into
tables), the schema, ``--lock``, the labels of the grid, the gallery and ``--compare``.
Light module: the standard library only.
"""

from __future__ import annotations

from typing import Any

from ..base.registry import Registry
from .call import CallParameterAxis, SchedulerAxis
from .components import DEFAULT_COMPONENT, ComponentsAxis
from .kind import AxisKind
from .model import ModelAxis
from .optimizations import OptimizationsAxis

__all__ = ["DEFAULT_COMPONENT", "KINDS", "AxisKinds", "axis_kind", "build_kind_names", "is_build_axis", "value_label"]

BUILTIN: tuple[AxisKind, ...] = (ModelAxis(), OptimizationsAxis(), ComponentsAxis(), SchedulerAxis())
FALLBACK = CallParameterAxis()


class AxisKinds(Registry[AxisKind]):
    """Axis kinds by name; :meth:`of` finds the kind of a ``[matrix.axes]`` key."""

    def __init__(self) -> None:
        super().__init__("axis kind")
        self.reset()

    def reset(self) -> None:
        self.clear()
        for kind in BUILTIN:
            self.register(kind.name, kind, "recipe-runner")

    def kinds(self) -> list[AxisKind]:
        """Every kind, in plan order (outermost first), the call-parameter fallback last."""
        return sorted(self.values(), key=lambda k: k.rank) + [FALLBACK]

    def of(self, axis: str) -> AxisKind:
        for kind in self.kinds():
            if kind.matches(axis):
                return kind
        return FALLBACK  # pragma: no cover - the fallback matches every name


KINDS = AxisKinds()


def axis_kind(name: str) -> str:
    """The name of the kind of a ``[matrix.axes]`` key: ``model``, ``components``, ``optimizations``,
    ``scheduler``, a plugin's kind (``lora``), or ``params`` (a call parameter)."""
    return KINDS.of(name).name


def is_build_axis(name: str) -> bool:
    """True for the axes that vary what is loaded or applied (a variant per value)."""
    return KINDS.of(name).build


def build_kind_names() -> tuple[str, ...]:
    """The build kinds' names, outermost first."""
    return tuple(k.name for k in KINDS.kinds() if k.build)


def value_label(name: str, value: Any) -> str:
    """An axis value by a short name: a model by the last part of its id, an optimization on/off,
    a plugin kind's value as it says."""
    return KINDS.of(name).label(name, value)
