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

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from recipe_runner.api import (
    BuildContext,
    Optimization,
    OptimizationSettings,
    Unsupported,
    hookimpl,
    is_local_reference,
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
    def _distinct_names(self):
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


def source(adapter: Adapter, index: int, context: BuildContext) -> str:
    """A local file or folder (relative to the recipe that wrote it), else a Hub repo id."""
    loaded = context.loaded
    folder = loaded.origin(f"optimizations.lora.adapters.{index}.id").folder if loaded else Path.cwd()
    candidate = (folder / Path(adapter.id).expanduser()).resolve()
    if candidate.exists():
        return str(candidate)
    if is_local_reference(adapter.id) or adapter.id.endswith((".safetensors", ".bin", ".pt")):
        raise Unsupported(f"adapters[{index}].id: no such file or folder: {candidate}")
    return adapter.id


def check(settings: Settings, context: BuildContext) -> None:
    require_package("peft", "lora")
    for index, adapter in enumerate(settings.adapters):
        source(adapter, index, context)


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


@hookimpl
def register_optimizations():
    return [Optimization(name="lora", settings=Settings, stage="components", apply=apply, check=check, switch=switch,
                         description="LoRA adapters: load, weight (set_adapters), optionally fuse")]
