"""Value checks of call parameters, before anything loads: exit 2 with the dotted key, line and
what was expected, never a TypeError halfway through a run.

Three layers, all light (no torch, no diffusers):

- :func:`value_problems`: what needs no model. Every float in the recipe is finite (no NaN, no
  inf, anywhere); the common call parameters have the types and ranges diffusers assumes without
  checking (``num_inference_steps`` an integer >= 1, ``strength`` in (0, 1], ``height``/``width``
  positive integers and multiples of 8, ``guidance_scale`` a finite number, ...); a boolean is
  never an integer and a list never a scalar. ``--dry-run`` does all of it.
- :func:`signature_problems`: each value against what the pipeline's ``__call__`` declares: its
  annotations (int, float, bool, str, lists, unions, Optional) or, without one, its default's type.
  Unknown parameter names are refused with "did you mean ...?".
- :func:`size_problems`: sizes bounded before anything is allocated: an image larger than
  Pillow's ``Image.MAX_IMAGE_PIXELS`` cannot even be saved, and a batch whose decoded images alone
  exceed the machine's memory cannot run. The memory estimate is a documented lower bound: every
  pipeline that returns PIL images holds the decoded batch as float32 (``h * w * 3 * 4`` bytes per
  image) and as 8-bit PIL images (``h * w * 3``) in host memory at once, whatever the device,
  tiling or offloading; latents and activations only add to it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..axes.registry import is_build_axis
from ..base.errors import Problem, suggest

ProblemAt = Callable[..., Problem]  # (key, message, hint=None) -> Problem, e.g. LoadedRecipe.problem

DEFAULT_MULTIPLE = 8  # diffusers' default vae_scale_factor: latents are 1/8 of the image

# --- types -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class T:
    """A type a parameter declares, as far as TOML values go: "int", "float", "bool", "str", "none",
    "list" (args: the item type), "tuple" (args: item types), "dict", "union" (args), "any" (no
    declaration, or a type no TOML value is: torch.Tensor, PIL images, callables)."""

    kind: str
    args: tuple[T, ...] = ()
    name: str = ""  # the declared name of an "any" (torch.Tensor, ...)


ANY = T("any")
INT, FLOAT, BOOL, STR, NONE = T("int"), T("float"), T("bool"), T("str"), T("none")


def union(*members: T) -> T:
    flat: list[T] = []
    for m in members:
        for item in (m.args if m.kind == "union" else (m,)):
            if item not in flat:
                flat.append(item)
    return flat[0] if len(flat) == 1 else T("union", tuple(flat))


def matches(value: Any, t: T) -> bool:
    kind = t.kind
    if kind == "any":
        return True
    if kind == "union":
        return any(matches(value, m) for m in t.args)
    if isinstance(value, bool):
        return kind == "bool"
    if kind == "int":
        return isinstance(value, int)
    if kind == "float":
        return isinstance(value, (int, float))
    if kind == "str":
        return isinstance(value, str)
    if kind == "dict":
        return isinstance(value, dict)
    if kind == "list":
        return isinstance(value, list) and all(matches(v, t.args[0] if t.args else ANY) for v in value)
    if kind == "tuple":
        if not isinstance(value, list):
            return False
        if len(t.args) == 2 and t.args[1].kind == "ellipsis":
            return all(matches(v, t.args[0]) for v in value)
        return len(value) == len(t.args) and all(matches(v, a) for v, a in zip(value, t.args))
    return False  # "none": TOML has no null


def describe(t: T) -> str:
    names = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
             "dict": "a table", "any": "anything"}
    if t.kind in names:
        return names[t.kind]
    if t.kind == "list":
        inner = describe(t.args[0]) if t.args and t.args[0].kind != "any" else ""
        plural = {"an integer": "integers", "a number": "numbers", "a string": "strings",
                  "true or false": "booleans", "a table": "tables"}.get(inner, inner)
        return f"a list of {plural}" if plural else "a list"
    if t.kind == "tuple":
        return "a list of " + str(len(t.args)) + " values" if t.args else "a list"
    if t.kind == "union":
        shown = [describe(m) for m in t.args if m.kind not in ("none", "any")]
        return " or ".join(dict.fromkeys(shown)) or "anything"
    return t.name or t.kind


def from_default(default: Any) -> T:
    """A parameter without an annotation: the type of its default (ints also take floats)."""
    if isinstance(default, bool):
        return BOOL
    if isinstance(default, (int, float)):
        return FLOAT
    if isinstance(default, str):
        return STR
    return ANY


def from_typing(annotation: Any) -> T:
    """A real annotation (``inspect.signature`` of an imported class) as a :class:`T`."""
    import inspect
    import types
    import typing

    if annotation is inspect.Parameter.empty or annotation is typing.Any:
        return ANY
    if annotation is type(None) or annotation is None:
        return NONE
    simple = {int: INT, float: FLOAT, bool: BOOL, str: STR, dict: T("dict"), list: T("list", (ANY,)),
              tuple: T("list", (ANY,))}
    if annotation in simple:
        return simple[annotation]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return union(*(from_typing(a) for a in args))
    if origin is list:
        return T("list", (from_typing(args[0]) if args else ANY,))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return T("list", (from_typing(args[0]),))
        return T("tuple", tuple(from_typing(a) for a in args))
    if origin is dict:
        return T("dict")
    return T("any", name=getattr(annotation, "__name__", str(annotation)))


# --- walking the recipe's parameters ---------------------------------------------------------------


def parameter_values(data: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """(dotted key, parameter name, value) of every call parameter value the recipe sets: each of
    ``[params]`` and each value of each ``[matrix.axes]`` (the scheduler axis aside)."""
    params = data.get("params")
    if isinstance(params, dict):
        for name, value in params.items():
            yield f"params.{name}", name, value
    matrix = data.get("matrix")
    axes = matrix.get("axes") if isinstance(matrix, dict) else None
    if isinstance(axes, dict):
        for name, values in axes.items():
            if name == "scheduler" or is_build_axis(name) or not isinstance(values, list):
                continue
            for i, value in enumerate(values):
                yield f"matrix.axes.{name}.{i}", name, value


def _non_finite(value: Any, key: str) -> Iterator[tuple[str, float]]:
    if isinstance(value, float) and not math.isfinite(value):
        yield key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _non_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _non_finite(v, f"{key}.{i}")


@dataclass(frozen=True)
class Rule:
    """A well-known parameter: its type and the range diffusers assumes without checking it."""

    type: T
    check: Callable[[Any, int], str | None] | None = None  # (value, size multiple) -> what is wrong


def _at_least(low: int) -> Callable[[Any, int], str | None]:
    return lambda v, _m: None if v >= low else f"must be at least {low}"


def _unit_interval(value: Any, _multiple: int) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]: more than 0, at most 1"


def _size(value: Any, multiple: int) -> str | None:
    if value < 1:
        return "must be a positive number of pixels"
    if value % multiple:
        low, high = value // multiple * multiple, (value // multiple + 1) * multiple
        nearest = f"{low} or {high}" if low else str(high)
        return f"must be a multiple of {multiple} (the pipeline's latents are 1/{multiple} of the image): {nearest}"
    return None


COMMON: dict[str, Rule] = {
    "num_inference_steps": Rule(INT, _at_least(1)),
    "strength": Rule(FLOAT, _unit_interval),
    "height": Rule(INT, _size),
    "width": Rule(INT, _size),
    "num_images_per_prompt": Rule(INT, _at_least(1)),
    "guidance_scale": Rule(FLOAT),
    "guidance_rescale": Rule(FLOAT),
    "true_cfg_scale": Rule(FLOAT),
    "eta": Rule(FLOAT),
    "clip_skip": Rule(INT, _at_least(0)),
    "negative_prompt": Rule(union(STR, T("list", (STR,)))),
    "negative_prompt_2": Rule(union(STR, T("list", (STR,)))),
}


def _shown(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "table"}
    text = "true" if value is True else "false" if value is False else repr(value)
    return f"{kind.get(type(value), type(value).__name__)} {text}"[:80]


def value_problems(data: dict[str, Any], problem: ProblemAt, multiple: int = DEFAULT_MULTIPLE) -> list[Problem]:
    """Checks that need no model (see the module doc); ``data`` is the recipe as loaded (plain
    TOML data, so this works even where the recipe's tables failed validation)."""
    problems = [problem(key, f"{value} is not a number: every number must be finite")
                for key, value in _non_finite(data, "")]
    bad = {p.key for p in problems}
    for key, name, value in parameter_values(data):
        rule = COMMON.get(name)
        if rule is None or key in bad or any(k.startswith(key + ".") for k in bad if k):
            continue
        message = type_message(value, rule.type)
        if message is None and rule.check is not None:
            message = rule.check(value, multiple)
            if message is not None:
                message = f"{message}, got {_shown(value)}"
        if message is not None:
            problems.append(problem(key, message))
    return problems


def type_message(value: Any, t: T, declared_by: str = "") -> str | None:
    """None when ``value`` is of type ``t``; else "expected ..., got ..."."""
    if matches(value, t):
        return None
    by = f" ({declared_by})" if declared_by else ""
    if isinstance(value, list) and not _admits_list(t):
        return f"expected {describe(t)}{by}, got a list: one value here; to try several, use [matrix.axes]"
    return f"expected {describe(t)}{by}, got {_shown(value)}"


def _admits_list(t: T) -> bool:
    return t.kind in ("list", "tuple", "any") or (t.kind == "union" and any(_admits_list(m) for m in t.args))


# --- against the pipeline's __call__ ---------------------------------------------------------------


@dataclass(frozen=True)
class Parameter:
    name: str
    type: T
    has_default: bool = True


def signature_problems(data: dict[str, Any], problem: ProblemAt, class_name: str,
                       parameters: dict[str, Parameter], task: str = "", skip: set[str] | None = None) -> list[Problem]:
    """Every parameter name and value against ``class_name.__call__``'s declarations."""
    problems: list[Problem] = []
    skip = skip or set()
    reported_names: set[str] = set()
    for key, name, value in parameter_values(data):
        if key in skip:
            continue
        declared = parameters.get(name)
        if declared is None:
            name_key = f"matrix.axes.{name}" if key.startswith("matrix.") else key
            if name_key in reported_names:
                continue
            reported_names.add(name_key)
            hint = suggest(name, parameters)
            if name == "strength" and task == "text-to-image":
                hint = "strength is for image-to-image and inpainting: set model.task"
            problems.append(problem(name_key, f"not a parameter of {class_name}", hint))
            continue
        message = type_message(value, declared.type, f"as {class_name} declares")
        if message is not None:
            problems.append(problem(key, message))
    return problems


# --- sizes -------------------------------------------------------------------------------------


def pil_pixel_limit() -> int:
    from PIL import Image

    return int(Image.MAX_IMAGE_PIXELS or 0)


def host_memory_bytes() -> int | None:
    """Physical memory of this machine, or None when unknown."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


BYTES_PER_PIXEL = 3 * 4 + 3  # the decoded batch as float32 RGB, plus the 8-bit PIL image


def size_problems(jobs: list[Any], problem: ProblemAt, batch_size: int, default_size: tuple[int, int] | None,
                  keys: dict[str, str], memory: int | None = None, limit: int | None = None) -> list[Problem]:
    """The largest image and the largest batch of ``jobs`` against Pillow's pixel limit and the
    machine's memory. ``default_size`` is (height, width) when the job does not set them (the
    pipeline's default; None: unknown, then the smallest size, 8 pixels, stands in); ``keys`` maps
    "height"/"width" to the dotted key that sets them (for the message)."""
    if not keys:  # the model's own default size (or, image-to-image, the input's): not the recipe's doing
        return []
    limit = pil_pixel_limit() if limit is None else limit
    memory = host_memory_bytes() if memory is None else memory
    fallback_h, fallback_w = default_size or (DEFAULT_MULTIPLE, DEFAULT_MULTIPLE)
    largest, where = 0, (0, 0)
    for job in jobs:
        h, w = job.params.get("height", fallback_h), job.params.get("width", fallback_w)
        if not (isinstance(h, int) and isinstance(w, int)) or isinstance(h, bool) or isinstance(w, bool):
            continue
        if h * w > largest:
            largest, where = h * w, (h, w)
    if not largest:
        return []
    h, w = where
    key = keys.get("height") if "height" in keys and (h >= w or "width" not in keys) else keys.get("width")
    key = key or keys.get("height") or keys.get("width") or "params"
    if limit and largest > limit:
        return [problem(key, f"height {h} x width {w} = {largest:,} pixels is more than Pillow's limit of "
                        f"{limit:,} (PIL.Image.MAX_IMAGE_PIXELS): the image could not even be saved",
                        "lower height/width")]
    batch = max(1, min(batch_size, len(jobs)))
    need = largest * BYTES_PER_PIXEL * batch
    if memory and need > memory:
        return [problem(key, f"a batch of {batch} images of height {h} x width {w} needs at least {need / 2**30:,.1f} GiB "
                        f"(the decoded images alone); this machine has {memory / 2**30:,.1f} GiB",
                        "lower height/width or run.batch_size")]
    return []
