"""The names of ``[matrix.axes]``: what each one varies, and the short labels of the values of the
axes that change the pipeline (model, components, LoRA, optimizations: see
:mod:`recipe_runner.plan.variants`), shared by the dry run, the log, the grid, the gallery and
``--compare``. Light module: the standard library only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

NO_LORA = "none"  # a lora axis value: no adapter
DEFAULT_COMPONENT = "default"  # a components.<name> axis value: the model's own component

# [matrix.axes] that change the pipeline rather than its call, outermost first in the plan (the
# order of their switching cost): see recipe_runner.plan.variants. Everything else is a call parameter
# (or the scheduler axis).
BUILD_AXIS_KINDS = ("model", "optimizations", "components", "lora", "lora_scale")
NESTED_AXES = ("components", "optimizations")  # written `components.vae = [...]`: a table of axes


def axis_kind(name: str) -> str:
    """``model``, ``optimizations``, ``components``, ``lora``, ``lora_scale``, ``scheduler`` or
    ``params`` (a call parameter): what a ``[matrix.axes]`` key varies."""
    head, dot, _ = name.partition(".")
    if dot and head in NESTED_AXES:
        return head
    if name in ("model", "lora", "lora_scale", "scheduler"):
        return name
    return "params"


def is_build_axis(name: str) -> bool:
    """True for the axes that vary what is loaded or applied (model, components, LoRA, optimizations)."""
    return axis_kind(name) in BUILD_AXIS_KINDS


def short_id(model_id: str) -> str:
    """The last part of a model or file reference: ``org/model`` -> ``model``; a path -> its name."""
    text = model_id.rstrip("/\\")
    name = text.replace("\\", "/").rsplit("/", 1)[-1] or text
    return Path(name).stem if name.endswith((".safetensors", ".bin", ".ckpt", ".pt", ".pth")) else name


def value_label(name: str, value: Any) -> str:
    """A build-axis value by a short name: a model or component by the last part of its id (and
    revision or variant), a LoRA set by its adapters' names and scales, an optimization on/off."""
    kind = axis_kind(name)
    if kind in ("model", "components"):
        if isinstance(value, str):
            return value if value == DEFAULT_COMPONENT and kind == "components" else short_id(value)
        if isinstance(value, dict) and isinstance(value.get("id"), str):
            extra = [str(value[k]) for k in ("revision", "variant", "subfolder", "dtype") if value.get(k)]
            return short_id(value["id"]) + (f" ({', '.join(extra)})" if extra else "")
    if kind == "lora":
        if value == NO_LORA:
            return NO_LORA
        adapters = value if isinstance(value, list) else [value]
        parts = []
        for adapter in adapters:
            if isinstance(adapter, dict) and isinstance(adapter.get("id"), str):
                label = adapter.get("name") or short_id(adapter.get("weight_name") or adapter["id"])
                scale = adapter.get("scale")
                parts.append(f"{label}" + (f" x{scale:g}" if isinstance(scale, (int, float)) and scale != 1 else ""))
        return " + ".join(parts) or json.dumps(value)
    if kind == "optimizations":
        if value is True:
            return "on"
        if value is False:
            return "off"
        if isinstance(value, dict):
            return ", ".join(f"{k}={json.dumps(v)}" for k, v in value.items()) or "on"
    if isinstance(value, float):
        return f"{value:g}"
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=repr)
