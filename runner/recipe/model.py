"""The recipe format as pydantic models (``extra="forbid"`` everywhere: a misspelled key is an
error, never silently ignored), and the translation of validation errors into ruff-like messages.

Plugin settings tables (``[optimizations.<name>]``) are validated by the plugin that owns them,
see :mod:`recipe_runner.recipe.optimizations`. Light module: no torch, no diffusers.
"""

from __future__ import annotations

import re
import types
import typing
import unicodedata
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_serializer,
)

from ..base.errors import Problem, RecipeError, did_you_mean, suggest
from .loading import LoadedRecipe

# Characters that reorder or isolate text invisibly (Unicode's bidirectional formatting characters).
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

DType = Literal["auto", "float32", "float16", "bfloat16"]
Task = Literal["text-to-image", "image-to-image", "inpainting"]
MAX_SEED = 2**64 - 1
DEFAULT_MAX_JOBS = 100_000

# Call parameters the runner sets itself, per image or per call: a recipe sets them elsewhere.
RESERVED_PARAMS = {
    "prompt": "write prompts in [matrix] prompts",
    "prompt_2": "write prompts in [matrix] prompts",
    "generator": "the runner makes one torch.Generator per image from [matrix] seeds",
    "image": "list input images in [matrix] images",
    "mask_image": "list masks in [matrix] mask_images",
    "num_images_per_prompt": "one image per job: add seeds to [matrix] seeds instead",
    "output_type": "the runner needs PIL images to write them",
    "return_dict": "the runner reads the pipeline's output object",
    "latents": "starting noise comes from each job's seed",
    "callback_on_step_end": "callbacks are code: use a plugin",
    "callback": "callbacks are code: use a plugin",
}


NAME_MAX_BYTES = 255  # the longest file name most file systems take (ext4, APFS, NTFS count up to it)

class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ModelSpec(Strict):
    id: Annotated[str, Field(min_length=1)]
    revision: str | None = None
    variant: str | None = None
    dtype: DType = "auto"
    task: Task = "text-to-image"
    device: str = "auto"
    custom_pipeline: Annotated[str, Field(min_length=1)] | None = None  # code: needs --trust-remote-code
    trust_remote_code: bool = False  # needs --trust-remote-code and a pinned commit revision

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError(f'expected "auto", "cpu", "cuda", "cuda:N" or "mps", got {value!r}')
        return value


class ComponentSpec(Strict):
    id: Annotated[str, Field(min_length=1)]
    subfolder: str | None = None
    revision: str | None = None
    variant: str | None = None
    dtype: DType | None = None  # None: the pipeline's dtype


class SchedulerSpec(Strict):
    name: Annotated[str, Field(min_length=1)]
    options: dict[str, Any] = {}


class MatrixSpec(Strict):
    prompts: Annotated[list[str], Field(min_length=1)]
    seeds: Any = [0]
    images: list[str] = []
    mask_images: list[str] = []
    mode: Literal["product", "zip"] = "product"
    vars: dict[str, Annotated[list[str], Field(min_length=1)]] = {}
    axes: dict[str, Annotated[list[Any], Field(min_length=1)]] = {}

    @field_validator("axes", mode="before")
    @classmethod
    def _flatten_axes(cls, value: Any) -> Any:
        """``components.vae = [...]`` is TOML for ``components = { vae = [...] }``: both name the
        axis ``components.vae`` (and ``optimizations.<key>`` likewise: any table of axes)."""
        if not isinstance(value, dict):
            return value
        flat: dict[str, Any] = {}
        for name, values in value.items():
            if isinstance(values, dict):
                for inner, inner_values in values.items():
                    flat[f"{name}.{inner}"] = inner_values
            else:
                flat[name] = values
        return flat

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, value: Any) -> list[int]:
        expected = "expected a list of integers, or an integer N meaning seeds 0..N-1"
        if isinstance(value, bool):
            raise ValueError(expected)
        if isinstance(value, int):
            if not 1 <= value <= DEFAULT_MAX_JOBS:
                raise ValueError(f"seed count must be between 1 and {DEFAULT_MAX_JOBS:,}, got {value}")
            return list(range(value))
        if not isinstance(value, list) or not value:
            raise ValueError(expected)
        wrong = seed_problems(value)
        if wrong:  # validate() reports every item of wrong, each at its own key
            raise ValueError(f"matrix.seeds.{wrong[0][0]}: {wrong[0][1]}")
        return value


def seed_problems(seeds: list[Any]) -> list[tuple[int, str]]:
    """(index, what is wrong) of every item of a ``seeds`` list that is not a seed."""
    wrong = []
    for i, seed in enumerate(seeds):
        if isinstance(seed, bool) or not isinstance(seed, int):
            wrong.append((i, f"expected an integer seed, got {seed!r}"))
        elif not 0 <= seed <= MAX_SEED:
            wrong.append((i, f"a seed must be between 0 and 2**64-1, got {seed}"))
    return wrong


def _positive_int(schema: dict[str, Any]) -> None:
    """An optional integer key as a TOML file writes it: an integer >= 1 (TOML has no null)."""
    schema.pop("anyOf", None)
    schema.pop("default", None)  # absent: torch's own count
    schema.update(type="integer", minimum=1)


class RunSpec(Strict):
    batch_size: Any = 1
    generator_device: str = "cpu"
    deterministic: bool = False
    max_jobs: Annotated[int, Field(ge=1)] = DEFAULT_MAX_JOBS
    keep_models: bool = False  # a model axis: keep every model loaded (more memory, no reload next time)
    threads: int | None = Field(default=None, json_schema_extra=_positive_int, description=(
        "CPU threads for generating this recipe (torch.set_num_threads), restored afterwards; default: torch's "
        "own count. The count changes CPU kernel rounding, so pixels depend on it: pin it for baselines shared "
        "across machines. Recorded as environment.threads and part of every job's key when set."))

    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, value: Any) -> int | None:
        if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError(f"expected a positive integer (CPU threads, as torch.set_num_threads takes), got {_describe(value)}")

    @model_serializer(mode="wrap")
    def _unset_threads_left_out(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """``threads`` is written only when set: the resolved recipe of a recipe without it (recorded
        in manifests and images) is what it was before the key existed."""
        data: dict[str, Any] = handler(self)
        if data.get("threads") is None:
            data.pop("threads", None)
        return data

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, value: Any) -> int | str:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError(f'expected a positive integer or "auto", got {value!r}')

    @field_validator("generator_device")
    @classmethod
    def _generator_device(cls, value: str) -> str:
        if not re.fullmatch(r"cpu|mps|cuda(:\d+)?|device", value):
            raise ValueError(
                f'expected "cpu" (default), "cuda", "cuda:N", "mps" or "device" (the model\'s), got {value!r}'
            )
        return value


GRID_FIELDS = ("seed", "prompt", "image", "mask_image", "scheduler")  # besides var and axis names


class GridSpec(Strict):
    """``[output.grid]``: the contact sheet's layout (see :mod:`recipe_runner.views.grid`); ``grid = true``
    / ``false`` is this table with only ``enabled`` set. Truthy when enabled."""

    enabled: bool = True
    x: list[str] = []  # fields across (columns)
    y: list[str] = []  # fields down (rows)
    z: list[str] = []  # one sheet per value
    layout: Literal["auto", "list"] = "auto"

    @field_validator("x", "y", "z", mode="before")
    @classmethod
    def _names(cls, value: Any) -> list[str]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ValueError(f'expected a field name ("seed", "prompt", a var or an axis) or a list of them, got {value!r}')
        return value

    def __bool__(self) -> bool:
        return self.enabled


def _bool_or_table(schema: dict[str, Any]) -> None:
    ref = schema.pop("$ref", None) or schema.pop("allOf", [{}])[0].get("$ref")
    schema.update(anyOf=[{"type": "boolean"}, {"$ref": ref}], default=True)


class OutputSpec(Strict):
    format: str = "png"  # a registered output format (recipe_runner.records.formats): checked by prepare
    grid: GridSpec = Field(default=GridSpec(), json_schema_extra=_bool_or_table)  # written as true, false or a table
    gallery: bool = True  # index.html beside the images
    metadata: bool = True
    quality: Annotated[int, Field(ge=1, le=100)] = 95  # webp / jpeg only

    @field_validator("grid", mode="before")
    @classmethod
    def _grid(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return {"enabled": value}
        if not isinstance(value, dict):
            raise ValueError(f'expected true, false or a table such as {{ x = "seed", y = "prompt" }}, got {value!r}')
        return value

    @field_serializer("grid")
    def _grid_out(self, grid: GridSpec) -> bool | dict[str, Any]:
        table = grid.model_dump(exclude_defaults=True)
        return grid.enabled if set(table) <= {"enabled"} else grid.model_dump()


class Recipe(Strict):
    name: str
    description: str = ""
    extends: str | None = None
    # A base used only through extends: never run, never inherited (recipe.loading), never recorded.
    abstract: bool = Field(default=False, exclude=True,
                           description="true: a base for extends, never run itself (not inherited)")
    model: ModelSpec
    components: dict[str, ComponentSpec] = {}
    scheduler: SchedulerSpec | None = None
    optimizations: dict[str, Any] = {}
    params: dict[str, Any] = {}
    matrix: MatrixSpec
    run: RunSpec = RunSpec()
    output: OutputSpec = OutputSpec()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value or value in (".", "..") or re.search(r"[/\\\x00-\x1f]", value) or len(value) > 120:
            raise ValueError(
                "a recipe name names its output folder: 1-120 characters, no slashes, not '.' or '..'"
            )
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > NAME_MAX_BYTES:  # file systems count bytes: 100 emoji are 400
            raise ValueError(f"a recipe name names its output folder: at most {NAME_MAX_BYTES} bytes in UTF-8 "
                             f"(a file name's limit), got {size} bytes")
        return value

    @field_validator("name")
    @classmethod
    def _name_characters(cls, value: str) -> str:
        """Control characters and the invisible ones that reorder text (U+202E turns
        ``x\u202egnp.exe`` into what reads as ``xexe.png``) never name a folder."""
        for i, ch in enumerate(value):
            if ch in BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cs"):
                what = unicodedata.name(ch, "a control character")
                raise ValueError(f"a recipe name names its output folder: no control or bidirectional-text characters "
                                 f"(U+{ord(ch):04X} {what} at position {i + 1})")
        return value

    @field_validator("optimizations")
    @classmethod
    def _optimizations(cls, value: dict[str, Any]) -> dict[str, Any]:
        several([f"optimizations.{name}: expected true, false or a table of settings, got {setting!r}"
                 for name, setting in value.items() if not isinstance(setting, (bool, dict))])
        return value

    @field_validator("output")
    @classmethod
    def _grid_fields(cls, value: OutputSpec, info: ValidationInfo) -> OutputSpec:
        matrix = info.data.get("matrix")
        if matrix is None:
            return value  # the matrix did not validate: validate() checks the names against it as written
        several(grid_field_problems(value.grid, list(matrix.vars), list(matrix.axes)))
        return value

    @field_validator("params")
    @classmethod
    def _params(cls, value: dict[str, Any]) -> dict[str, Any]:
        several([f"params.{name}: set by the runner: {RESERVED_PARAMS[name]}" for name in value if name in RESERVED_PARAMS])
        return value


SEVERAL = "\n"  # between the "dotted.key: message" lines of a validator that found several problems


def several(found: list[str]) -> None:
    """Raise every "dotted.key: message" a validator found at once (validate() splits them into
    one problem each): one pass reports every problem, not the first of each table."""
    if found:
        raise ValueError(SEVERAL.join(found))


def grid_field_problems(grid: GridSpec, var_names: list[str], axis_names: list[str]) -> list[str]:
    """Each ``[output.grid]`` x/y/z name that is neither a field of the matrix nor an axis, or
    that is placed twice, as "output.grid.<x|y|z>.<i>: message"."""
    known = list(GRID_FIELDS) + var_names + [a for a in axis_names if a != "scheduler"]
    # an axis written <table>.<key> (components.vae) is also named by its key alone; the others as params.<name>
    known += [f"vars.{v}" for v in var_names] + [f"params.{a}" for a in axis_names if "." not in a and a != "scheduler"]
    known += [a.partition(".")[2] for a in axis_names if "." in a]
    placed: dict[str, str] = {}
    found = []
    for key in ("x", "y", "z"):
        for i, name in enumerate(getattr(grid, key)):
            if name not in known:
                hint = suggest(name, known, "expected seed, prompt, image, scheduler, a var or an axis")
                found.append(f"output.grid.{key}.{i}: {name!r} is neither a field of the matrix nor an axis ({hint})")
                continue
            short = name.split(".", 1)[-1]
            if short in placed:
                found.append(f"output.grid.{key}.{i}: {name!r} is already in output.grid.{placed[short]}")
                continue
            placed[short] = key
    return found


# --- validation errors, ruff style -------------------------------------------------------------

_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "an integer",
    "bool_type": "true or false",
    "float_type": "a number",
    "list_type": "a list",
    "dict_type": "a table",
    "model_type": "a table",
    "int_from_float": "an integer",
}


def _describe(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "table"}
    return f"{kind.get(type(value), type(value).__name__)} {value!r}"[:80]


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at ``loc`` (a pydantic error location) inside ``model``."""
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return []
            current = field.annotation
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        elif typing.get_origin(current) is list and isinstance(part, int):
            current = typing.get_args(current)[0]
        else:
            return []
        current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _home_of(model: type[BaseModel], loc: tuple[Any, ...]) -> str | None:
    """``seeds`` at the top level -> ``matrix.seeds``: the dotted key of a table one level down that
    has this very key (a key written in the wrong table), when exactly one has it."""
    name = str(loc[-1])
    homes = []
    for table in _fields_at(model, loc[:-1]):
        inner = _fields_at(model, (*loc[:-1], table))
        if name in inner:
            homes.append(".".join([*map(str, loc[:-1]), table, name]))
    return homes[0] if len(homes) == 1 else None


def _unwrap(annotation: Any) -> Any:
    """Optional[X] / Annotated[X, ...] -> X."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


# The tags pydantic puts in an error's location for the member of a union that refused the value
# ("literal['auto','max']", "constrained-int", "list[str]"): not keys of the recipe (a TOML key
# could be "int", so bare type names stay).
UNION_TAG = re.compile(r"literal\[.*\]|constrained-\w+|(?:int|float|str|bool|list|dict)\[.*\]|function-\w+\[.*\]")


def problem_from_pydantic(
    error: Mapping[str, Any],
    problem: Callable[..., Problem],
    model: type[BaseModel] | None = None,
    prefix: str = "",
) -> Problem:
    """One pydantic error -> one Problem with file, line, dotted key and did-you-mean.

    ``problem(key, message, hint)`` locates a dotted key; ``model`` is the model validated (for
    the keys it allows) and ``prefix`` the dotted key of its table within the recipe.
    """
    model = model or Recipe
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and UNION_TAG.fullmatch(p)))
    key = ".".join([prefix] * bool(prefix) + [str(p) for p in loc])
    kind = error["type"]
    value = error.get("input")
    hint = None
    if kind == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1])
        close = did_you_mean(str(loc[-1]), allowed)
        home = _home_of(model, loc)
        message = "unknown key"
        if home:
            hint = f"did you mean {home!r}?"
        elif close:
            hint = f"did you mean {close!r}?"
        elif allowed:
            hint = "expected one of: " + ", ".join(allowed)
    elif kind == "missing":
        message = "required key is missing"
    elif kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        message = f"expected {expected}, got {_describe(value)}"
        choices = re.findall(r"'([^']*)'", expected)
        hint = suggest(value, choices) if isinstance(value, str) else None
    elif kind in _TYPE_NAMES:
        message = f"expected {_TYPE_NAMES[kind]}, got {_describe(value)}"
    elif kind == "value_error":
        message = str(error.get("ctx", {}).get("error", error["msg"]))
        inner = re.match(r"(\w+(?:\.[\w-]+)+): (.*)", message, re.S)
        if inner and inner.group(1).startswith(key + "."):
            key, message = inner.group(1), inner.group(2)
    else:
        message = error["msg"][0].lower() + error["msg"][1:]
        if value is not None and kind not in ("too_short", "too_long"):
            message += f", got {_describe(value)}"
    return problem(key, message, hint)


def validate(loaded: LoadedRecipe) -> Recipe:
    """The loaded data as a Recipe, or a RecipeError listing every problem found."""
    try:
        return Recipe.model_validate(loaded.data)
    except ValidationError as exc:
        raise RecipeError(_problems(exc, loaded)) from None


def check_abstract(loaded: LoadedRecipe) -> None:
    """An ``abstract = true`` recipe (a base for extends, never run): what it has is checked
    (unknown keys with did-you-mean, types, values), a required key it leaves to the recipes that
    extend it (``[model] id``, ``[matrix]``) is not a problem. RecipeError listing every problem."""
    try:
        Recipe.model_validate(loaded.data)
    except ValidationError as exc:
        problems = _problems(exc, loaded, partial=True)
        if problems:
            raise RecipeError(problems) from None


def _problems(exc: ValidationError, loaded: LoadedRecipe, partial: bool = False) -> list[Problem]:
    """A ValidationError of ``loaded`` as problems, each at its file, line and dotted key (``partial``:
    without the required keys that are missing)."""
    problems = []
    for error in exc.errors():
        if partial and error["type"] == "missing":
            continue
        if tuple(error["loc"]) == ("matrix", "seeds") and isinstance(error.get("input"), list):
            wrong = seed_problems(error["input"])  # every wrong item, not only the first
            if wrong:
                problems += [loaded.problem(f"matrix.seeds.{i}", message) for i, message in wrong]
                continue
        if error["type"] == "value_error" and SEVERAL in str(error.get("ctx", {}).get("error", "")):
            for line in str(error["ctx"]["error"]).split(SEVERAL):
                one = {**error, "ctx": {**error["ctx"], "error": line}}
                problems.append(relocated(problem_from_pydantic(one, loaded.problem), loaded))
            continue
        problems.append(relocated(problem_from_pydantic(dict(error), loaded.problem), loaded))
    if not any((p.key or "").startswith("output.grid") for p in problems):
        problems += [relocated(p, loaded) for p in written_grid_problems(loaded)]
    return problems


def written_grid_problems(loaded: LoadedRecipe) -> list[Problem]:
    """The ``[output.grid]`` names against the matrix as written, when the matrix itself did not
    validate (its vars and axes are still known by name)."""
    data = loaded.data
    output, matrix = data.get("output"), data.get("matrix")
    grid = output.get("grid") if isinstance(output, dict) else None
    if not isinstance(grid, dict) or not isinstance(matrix, dict):
        return []
    try:
        spec = GridSpec.model_validate(grid)
        axes = MatrixSpec._flatten_axes(matrix.get("axes") or {})
    except (ValidationError, ValueError):
        return []
    var_names = list(matrix["vars"]) if isinstance(matrix.get("vars"), dict) else []
    axis_names = list(axes) if isinstance(axes, dict) else []
    found = []
    for line in grid_field_problems(spec, var_names, axis_names):
        key, _, message = line.partition(": ")
        found.append(loaded.problem(key, message))
    return found


def relocated(problem: Problem, loaded: LoadedRecipe) -> Problem:
    """``output.grid.x.0`` where the recipe wrote ``x = "name"`` (a string, not a list) is
    reported at ``output.grid.x``, the key as written."""
    found = re.fullmatch(r"(output\.grid\.[xyz])\.0", problem.key or "")
    if found is None:
        return problem
    output = loaded.data.get("output")
    grid = output.get("grid") if isinstance(output, dict) else None
    if isinstance(grid, dict) and isinstance(grid.get(found.group(1).rsplit(".", 1)[1]), str):
        return loaded.problem(found.group(1), problem.message, problem.hint)
    return problem
