"""``lora``: load LoRA adapters into the pipeline (``load_lora_weights``), weight them with
``set_adapters`` and optionally fuse them into the base weights (``fuse_lora``).

    [optimizations.lora]
    fuse = false                               # true: merge into the weights (faster calls)
    [[optimizations.lora.adapters]]
    id = "loras/pixel-art.safetensors"         # a .safetensors file, a folder, or a Hub repo id
    scale = 0.8
    [[optimizations.lora.adapters]]
    id = "nerijs/pixel-art-xl"
    weight_name = "pixel-art-xl.safetensors"   # the file inside a folder or repo
    name = "pixel"                             # adapter name (default: from the id)

Paths resolve against the folder of the recipe that wrote them. Only safetensors load unless
``--allow-pickle``. Needs the ``peft`` package. Unfused and fused adapters give the same images
up to float rounding. A ``lora`` axis (and a ``lora_scale`` axis) switches adapter sets on the
loaded pipeline (``switch``): each adapter file loads once, ``set_adapters`` activates a set.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from recipe_runner.api import (
    AxisContext,
    AxisKind,
    BuildContext,
    Optimization,
    OptimizationSettings,
    Problem,
    Unsupported,
    WeightFile,
    enable,
    expand_id,
    hookimpl,
    is_local_reference,
    model_source,
    moved,
    short_id,
)

from .common import denoiser, require_package


class Adapter(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: Annotated[str, Field(min_length=1)]
    weight_name: str | None = None
    scale: float = 1.0
    name: str | None = None


class Settings(OptimizationSettings):
    adapters: Annotated[list[Adapter], Field(min_length=1)]
    fuse: bool = False

    @model_validator(mode="after")
    def _distinct_names(self) -> Settings:
        names = adapter_names(self)
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"two adapters are named {duplicated[0]!r}: give them distinct names")
        return self


def adapter_names(settings: Settings) -> list[str]:
    names = []
    for i, adapter in enumerate(settings.adapters):
        stem = Path(adapter.weight_name or adapter.id).stem
        names.append(adapter.name or re.sub(r"[^A-Za-z0-9_]+", "_", stem).strip("_") or f"adapter{i}")
    return names


def source(adapter: Adapter, index: int, context: BuildContext, fetch: bool = True) -> str:
    """An id a plugin model source serves (``tiny:lora-fox``: built now, unless ``fetch`` is false),
    a local file or folder (relative to the recipe that wrote it; ``~`` and ``$VAR``/``${VAR}``
    expanded, an unset variable refused), else a Hub repo id."""
    loaded = context.loaded
    folder = loaded.origin(f"optimizations.lora.adapters.{index}.id").folder if loaded else Path.cwd()
    try:
        written = expand_id(adapter.id)  # ~ and ${VAR}, as in model ids: a team's recipe names no home
    except ValueError as exc:
        raise Unsupported(f"adapters[{index}].id: {exc}") from None
    served = model_source(adapter.id)
    if served is not None:
        refused = served.problem(adapter.id)
        if refused is not None:
            raise Unsupported(f"adapters[{index}].id: {refused[0]}")
        try:
            return served.locate(adapter.id, folder) if fetch else adapter.id
        except ValueError as exc:
            raise Unsupported(f"adapters[{index}].id: {exc}") from exc
    candidate = (folder / Path(written)).resolve()
    if candidate.exists():
        return str(candidate)
    if is_local_reference(written) or written.endswith((".safetensors", ".bin", ".pt")):
        raise Unsupported(f"adapters[{index}].id: no such file or folder: {candidate}")
    return written


def check(settings: Settings, context: BuildContext) -> None:
    require_package("peft", "lora")
    for index, adapter in enumerate(settings.adapters):
        source(adapter, index, context, fetch=False)  # light: nothing is built or fetched here


LOADED = "_recipe_runner_adapters"  # adapter name -> (source, weight_name) loaded under it


def _loaded(pipe: Any) -> Any:
    """What holds the record of the loaded adapters: the denoiser, which the pipelines made from
    this one (``from_pipe``, another task) share with it; the pipeline when it has none."""
    try:
        return denoiser(pipe)[1]
    except Unsupported:
        return pipe


def load(pipe: Any, settings: Settings, context: BuildContext) -> list[str]:
    """Load the adapters of ``settings`` not loaded yet (an adapter name loaded from another file
    is replaced); returns their names."""
    if not hasattr(pipe, "load_lora_weights"):
        raise Unsupported(f"{type(pipe).__name__} cannot load LoRA adapters")
    loaded: dict[str, tuple[str, str | None]] = getattr(_loaded(pipe), LOADED, None) or {}
    names = adapter_names(settings)
    for index, (adapter, name) in enumerate(zip(settings.adapters, names)):
        where = (source(adapter, index, context), adapter.weight_name)
        if loaded.get(name) == where:
            continue
        if name in loaded:
            pipe.delete_adapters(name)
            del loaded[name]
        kwargs = {"adapter_name": name, "use_safetensors": None if context.allow_pickle else True}
        if adapter.weight_name:
            kwargs["weight_name"] = adapter.weight_name
        try:
            pipe.load_lora_weights(where[0], **kwargs)
        except (OSError, ValueError, KeyError) as exc:
            raise Unsupported(f"adapters[{index}] ({adapter.id}): {str(exc).strip().splitlines()[0]}") from exc
        loaded[name] = where
    setattr(_loaded(pipe), LOADED, loaded)
    return names


def apply(pipe: Any, settings: Settings, context: BuildContext) -> dict:
    names = load(pipe, settings, context)
    pipe.set_adapters(names, adapter_weights=[a.scale for a in settings.adapters])
    if settings.fuse:
        pipe.fuse_lora(adapter_names=names)
        pipe.unload_lora_weights()  # the LoRA layers are merged into the weights: drop them
        setattr(_loaded(pipe), LOADED, {})
    return {"adapters": names}


def switch(pipe: Any, old: Settings | None, new: Settings | None, context: BuildContext) -> dict | None:
    """Another adapter set or other scales on a loaded pipeline (``set_adapters``: adapters loaded
    once stay loaded, inactive, while the pipeline lives), or none (every adapter unloaded: the
    pipeline's own weights, exactly). Fused adapters cannot be switched."""
    if (old is not None and old.fuse) or (new is not None and new.fuse):
        raise Unsupported("fused adapters are merged into the weights: they cannot be switched")
    if new is None:
        if getattr(_loaded(pipe), LOADED, None):
            pipe.unload_lora_weights()
            setattr(_loaded(pipe), LOADED, {})
        return None
    return apply(pipe, new, context)


def weight_files(settings: Settings) -> list[WeightFile]:
    """Each adapter's file or folder (``adapters.<i>``), as it loads (``~`` and ``${VAR}`` expanded):
    the pickle policy applies to them before loading."""
    return [WeightFile(f"adapters.{i}", _expanded(adapter.id), adapter.weight_name)
            for i, adapter in enumerate(settings.adapters)]


def _expanded(adapter_id: str) -> str:
    try:
        return expand_id(adapter_id)
    except ValueError:  # an unset variable: check() refuses the adapter, naming it
        return adapter_id


@hookimpl
def register_optimizations() -> list[Optimization]:
    return [Optimization(name="lora", settings=Settings, stage="components", apply=apply, check=check, light_check=True,
                         switch=switch, weight_files=weight_files,
                         description="LoRA adapters: load, weight (set_adapters), optionally fuse")]


# --- the lora and lora_scale axes ------------------------------------------------------------------

NO_LORA = "none"  # a lora axis value: no adapter
TABLE = "optimizations.lora"  # the table a lora axis value stands for


def _adapters(value: Any) -> list[dict[str, Any]]:
    return [dict(a) for a in (value if isinstance(value, list) else [value])]


class LoraAxis(AxisKind):
    """``lora = ["none", { id = "pixel.safetensors" }, [{ id = "a" }, { id = "b", scale = 0.5 }]]``:
    adapter sets switched on one loaded model (``set_adapters``); ``"none"`` unloads them."""

    name = "lora"
    rank = 40
    replaces = TABLE
    description = '"none", an adapter table { id, weight_name, scale, name } or a list of them'

    def target(self, axis: str) -> str:
        return TABLE

    def label(self, axis: str, value: Any) -> str:
        if value == NO_LORA:
            return NO_LORA
        parts = []
        for adapter in value if isinstance(value, list) else [value]:
            if isinstance(adapter, dict) and isinstance(adapter.get("id"), str):
                label = adapter.get("name") or short_id(adapter.get("weight_name") or adapter["id"])
                scale = adapter.get("scale")
                parts.append(f"{label}" + (f" x{scale:g}" if isinstance(scale, (int, float)) and scale != 1 else ""))
        return " + ".join(parts) or json.dumps(value)

    def check(self, axis: str, values: list[Any], ctx: AxisContext) -> list[Problem]:
        problems: list[Problem] = []
        for i, value in enumerate(values):
            at = f"matrix.axes.{axis}.{i}"
            if value == NO_LORA:
                continue
            if isinstance(value, dict) or (isinstance(value, list) and value and all(isinstance(v, dict) for v in value)):
                # optimizations.lora.adapters.N... is written at <at>.N..., optimizations.lora.<setting> at <at>.<setting>
                located = moved(moved(ctx.problem, TABLE, at), f"{TABLE}.adapters", at)
                enable({"lora": {"adapters": _adapters(value)}}, ctx.optimizations, located, problems)
                continue
            problems.append(ctx.problem(at, f"expected {NO_LORA!r}, an adapter table {{ id = ..., scale = ... }} or a "
                                            f"list of them, got {value!r}"))
        return problems

    def check_axes(self, axes: list[str], ctx: AxisContext) -> list[Problem]:
        if ctx.recipe.optimizations.get("lora") is not None:
            return [ctx.problem(TABLE, "a lora axis lists the adapters itself",
                                "remove [optimizations.lora], or list its adapters as one value of matrix.axes.lora")]
        return []

    def place(self, axis: str, value: Any, data: dict[str, Any]) -> list[tuple[str, Any]]:
        return [(TABLE, None if value == NO_LORA else {"adapters": _adapters(value)})]

    def schema(self, optimizations: Any) -> dict[str, Any]:
        adapter: dict[str, Any] = {"type": "object"}
        lora = optimizations.optimizations.get("lora")
        if lora is not None:
            adapter = lora.settings.model_json_schema().get("$defs", {}).get("Adapter", adapter)
            adapter.pop("required", None)
        return {"anyOf": [{"const": NO_LORA}, adapter, {"type": "array", "minItems": 1, "items": adapter}]}


class LoraScaleAxis(AxisKind):
    """``lora_scale = [0.5, 1.0]``: multiplies every adapter's scale (of a lora axis or [optimizations.lora])."""

    name = "lora_scale"
    rank = 45
    description = "multiplies each adapter's scale"

    def label(self, axis: str, value: Any) -> str:
        return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else super().label(axis, value)

    def check(self, axis: str, values: list[Any], ctx: AxisContext) -> list[Problem]:
        return [ctx.problem(f"matrix.axes.{axis}.{i}", f"expected a number (the adapters' weight multiplier), got {value!r}")
                for i, value in enumerate(values)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)]

    def check_axes(self, axes: list[str], ctx: AxisContext) -> list[Problem]:
        table = ctx.recipe.optimizations.get("lora")
        if "lora" not in ctx.recipe.matrix.axes and not table:
            return [ctx.problem("matrix.axes.lora_scale", "weights LoRA adapters, but the recipe loads none",
                                "add a lora axis, or adapters in [optimizations.lora]")]
        if isinstance(table, dict) and table.get("fuse") is True:
            return [ctx.problem("optimizations.lora.fuse", "fused adapters cannot be re-weighted by a lora_scale axis",
                                "set fuse = false")]
        return []

    def adjust(self, value: Any, data: dict[str, Any]) -> None:
        table = data.get("optimizations", {}).get("lora")
        if isinstance(table, dict):
            table = copy.deepcopy(table)
            for adapter in table.get("adapters") or []:
                if isinstance(adapter, dict):
                    adapter["scale"] = float(adapter.get("scale", 1.0)) * float(value)
            data["optimizations"]["lora"] = table

    def schema(self, optimizations: Any) -> dict[str, Any]:
        return {"type": "number"}


@hookimpl
def register_axis_kinds(register: Callable[[AxisKind], None]) -> None:
    register(LoraAxis())
    register(LoraScaleAxis())
