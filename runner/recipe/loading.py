"""From a TOML file to one merged dict: ``extends`` chains, ``--set`` overrides, and where each
key came from (file and line), so that later errors can point at the right place.

A ``[matrix.axes]`` key declared in a later layer (the extending recipe, then ``--set``) replaces
the same key of an earlier layer's ``[params]``, as tables merge everywhere else; within one layer
both stays an error ("a parameter is either fixed or an axis").

No validation of meaning happens here (that is :mod:`recipe_runner.recipe.model`); this module only knows TOML.
"""

from __future__ import annotations

import copy
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base.errors import Problem, RecipeError
from ..base.paths import boundary, is_within, warn_once
from ..base.safe_read import FileTooLarge, NotRegularFile, read_regular
from .lines import key_lines, line_of

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MAX_RECIPE_BYTES = 1 << 20  # a recipe is text written by people; 1 MiB is far beyond any real one
MAX_DEPTH = 32  # tables and arrays inside each other; a real recipe nests 6 deep at most
MAX_EXTENDS = 32  # files in one extends chain
SET_ORIGIN = "--set"


@dataclass(frozen=True)
class Origin:
    """The file that wrote a key (or "--set") and the line where known."""

    file: str
    line: int | None = None

    @property
    def folder(self) -> Path:
        """Relative paths written in this file resolve against this folder."""
        return Path.cwd() if self.file == SET_ORIGIN else Path(self.file).resolve().parent


@dataclass
class LoadedRecipe:
    """A recipe file after extends and --set: plain data plus the origin of every key."""

    path: Path
    data: dict[str, Any]
    origins: dict[str, Origin] = field(default_factory=dict)
    chain: list[Path] = field(default_factory=list)

    def origin(self, key: str) -> Origin:
        """Where ``key`` (or its closest written parent) was written; the top file if nowhere."""
        parts = key.split(".") if key else []
        while parts:
            found = self.origins.get(".".join(parts))
            if found is not None:
                return found
            parts.pop()
        return Origin(display_path(self.path))

    def problem(self, key: str, message: str, hint: str | None = None) -> Problem:
        origin = self.origin(key)
        return Problem(message, key=key or None, file=origin.file, line=origin.line, hint=hint)

    def error(self, key: str, message: str, hint: str | None = None) -> RecipeError:
        return RecipeError([self.problem(key, message, hint)])


def problem_at(loaded: LoadedRecipe | None, key: str, message: str, hint: str | None = None) -> Problem:
    """A Problem at the dotted ``key``: with its file and line when the recipe came from a file."""
    if loaded is None:
        return Problem(message, key=key or None, hint=hint)
    return loaded.problem(key, message, hint)


def display_path(path: Path) -> str:
    """A path as the user would write it: relative to the current folder when below it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)
    return str(path) if relative.startswith("..") else relative


def read_toml(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Parse one file; returns (data, key -> line). Any failure is a RecipeError naming the file.
    Only a regular file is read (a FIFO or ``/dev/zero`` at a recipe's name is refused, never
    read), of at most MAX_RECIPE_BYTES, nested at most MAX_DEPTH tables and arrays deep."""
    shown = display_path(path)
    try:
        raw = read_regular(path, MAX_RECIPE_BYTES, what="recipe file")
    except FileTooLarge as exc:
        raise RecipeError.one(
            f"recipe is {exc.size:,} bytes; recipes are limited to {MAX_RECIPE_BYTES:,}", file=shown
        ) from None
    except NotRegularFile as exc:
        raise RecipeError.one(f"not a file: {exc.kind}, never read", file=shown) from None
    except OSError as exc:
        raise RecipeError.one(f"cannot read recipe: {exc.strerror or exc}", file=shown) from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raise RecipeError.one("the file starts with a UTF-8 byte order mark (BOM): TOML files are UTF-8 without "
                              "one; save it again as plain UTF-8", file=shown, line=1)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RecipeError.one("not UTF-8 text: a recipe is a TOML file", file=shown) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\(at line (\d+), column \d+\)", message)
        line = int(match.group(1)) if match else None
        message = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", message)
        raise RecipeError.one(f"invalid TOML: {message}", file=shown, line=line) from None
    except RecursionError:
        raise RecipeError.one(f"arrays or tables nested too deeply: a recipe nests at most {MAX_DEPTH} levels",
                              file=shown) from None
    too_deep = _too_deep(data)
    if too_deep is not None:
        raise RecipeError.one(f"nested more than {MAX_DEPTH} levels deep (a dotted key of too many parts, or arrays or "
                              f"tables inside each other): a recipe nests at most {MAX_DEPTH} levels",
                              key=too_deep, file=shown)
    try:
        lines = key_lines(text)
    except Exception:  # positions are a courtesy; never let them hide the real error
        lines = {}
    return data, lines


def _too_deep(data: dict[str, Any]) -> str | None:
    """The dotted key (its first MAX_DEPTH parts) where ``data`` nests deeper than MAX_DEPTH, else
    None. Iterative: it must not be what overflows the stack."""
    stack: list[tuple[Any, list[str]]] = [(data, [])]
    while stack:
        value, where = stack.pop()
        if len(where) > MAX_DEPTH:
            return ".".join(where[:MAX_DEPTH]) + ". ..."
        if isinstance(value, dict):
            stack.extend((v, [*where, str(k)]) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, [*where, str(i)]) for i, v in enumerate(value))
    return None


def _origins_for(data: Any, prefix: str, file: str, lines: dict[str, int]) -> dict[str, Origin]:
    """Origins of every key in ``data`` (recursively) written in ``file``."""
    found: dict[str, Origin] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            found[key] = Origin(file, line_of(lines, key))
            found.update(_origins_for(v, key, file, lines))
    return found


def deep_merge(
    base: dict[str, Any], over: dict[str, Any], origins: dict[str, Origin], prefix: str = ""
) -> dict[str, Any]:
    """Tables merge key by key; lists and scalars in ``over`` replace. Drops replaced origins."""
    merged = dict(base)
    for k, v in over.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = deep_merge(merged[k], v, origins, key)
        else:
            for stale in [o for o in origins if o.startswith(key + ".")]:
                del origins[stale]
            merged[k] = copy.deepcopy(v)
    return merged


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LoadedRecipe:
    """Read ``path`` and its extends chain, apply ``--set`` overrides, record key origins."""
    top = Path(path)
    data, origins, chain = _load_chain(top, [])
    data.pop("extends", None)
    origins.pop("extends", None)
    loaded = LoadedRecipe(path=top, data=data, origins=origins, chain=chain)
    for item in overrides:
        apply_set(loaded, item)
    data.setdefault("name", top.stem)
    return loaded


def load_data(data: dict[str, Any], path: Path, overrides: list[str] | tuple[str, ...] = ()) -> LoadedRecipe:
    """A recipe that is already data (e.g. the resolved recipe embedded in an image), as if it
    had been read from ``path``: relative paths in it resolve against ``path``'s folder."""
    data = copy.deepcopy(data)
    data.pop("extends", None)
    shown = display_path(path)
    loaded = LoadedRecipe(path=path, data=data, origins=_origins_for(data, "", shown, {}), chain=[path])
    for item in overrides:
        apply_set(loaded, item)
    data.setdefault("name", path.stem)
    return loaded


def _load_chain(path: Path, seen: list[Path]) -> tuple[dict[str, Any], dict[str, Origin], list[Path]]:
    resolved = path.resolve()
    if resolved in seen:
        cycle = " -> ".join(display_path(p) for p in [*seen, resolved])
        raise RecipeError.one(f"extends cycle: {cycle}", key="extends", file=display_path(seen[-1]))
    if len(seen) >= MAX_EXTENDS:
        raise RecipeError.one(f"the extends chain is longer than {MAX_EXTENDS} files (from {display_path(seen[0])}): "
                              "shorten it", key="extends", file=display_path(seen[-1]))
    data, lines = read_toml(path)
    shown = display_path(path)
    origins = _origins_for(data, "", shown, lines)
    parent = data.get("extends")
    if parent is None:
        return data, origins, [resolved]
    if not isinstance(parent, str) or not parent:
        raise RecipeError.one(
            "expected a path to another recipe (a string, relative to this file)",
            key="extends",
            file=shown,
            line=lines.get("extends"),
        )
    parent_path = resolved.parent / parent
    if not parent_path.exists():
        raise RecipeError.one(
            f"extends {parent!r}, but {display_path(parent_path)} does not exist",
            key="extends",
            file=shown,
            line=lines.get("extends"),
        )
    top = seen[0] if seen else resolved
    inside, named = boundary(top)
    if not is_within(parent_path, inside):
        where = f"{shown}:{lines['extends']}" if lines.get("extends") else shown
        warn_once(f"{where}: extends {parent_path.resolve()}, outside {named} ({inside}): a teammate's checkout "
                  "will not have it")
    base, base_origins, chain = _load_chain(parent_path, [*seen, resolved])
    base.pop("extends", None)
    base_origins.pop("extends", None)
    own = {k: v for k, v in data.items() if k != "extends"}
    merged_origins = dict(base_origins)
    merged = deep_merge(base, own, merged_origins)
    for name in _axis_names(own):
        if name not in (own.get("params") or {}):
            _drop_param(merged, merged_origins, name)
    merged_origins.update(origins)
    merged["extends"] = parent
    if "name" not in own:
        merged.pop("name", None)  # the name defaults to the file being run, not its base
        merged_origins.pop("name", None)
    if "abstract" not in own:  # a base's abstract = true makes it a base, not the recipes that extend it
        merged.pop("abstract", None)
        merged_origins.pop("abstract", None)
    return merged, merged_origins, [resolved, *chain]


def parse_set(item: str) -> tuple[list[str], Any]:
    """``a.b=VALUE`` -> (["a", "b"], value). VALUE is TOML; a bare word that is not, a string."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    parts = key.split(".") if key else []
    if not sep or not parts or any(not p.strip() for p in parts):
        raise RecipeError.one(
            f"--set expects KEY=VALUE with a dotted key, e.g. params.num_inference_steps=4; got {item!r}",
            file=SET_ORIGIN,
        )
    if parts[0].strip() == "extends":
        raise RecipeError.one(
            "--set cannot change extends: the chain is read before --set applies; write extends in the recipe, "
            "or --set the keys themselves", key="extends", file=SET_ORIGIN,
        )
    if len(parts) > MAX_DEPTH:
        raise RecipeError.one(f"--set {key[:60]}...: a key of more than {MAX_DEPTH} parts", file=SET_ORIGIN)
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    except RecursionError:
        raise RecipeError.one(f"--set {key}: the value nests too deeply", file=SET_ORIGIN) from None
    if _too_deep({"v": value}) is not None:
        raise RecipeError.one(f"--set {key}: the value nests more than {MAX_DEPTH} levels", file=SET_ORIGIN)
    return [p.strip() for p in parts], value


def apply_set(loaded: LoadedRecipe, item: str) -> None:
    """Apply one ``--set`` to the loaded recipe, recording "--set" as the key's origin."""
    parts, value = parse_set(item)
    node = loaded.data
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise RecipeError.one(
                f"--set {'.'.join(parts)}: {where} is a {type(child).__name__}, not a table",
                key=where,
                file=SET_ORIGIN,
            )
        node = child
    key = ".".join(parts)
    for stale in [o for o in loaded.origins if o == key or o.startswith(key + ".")]:
        del loaded.origins[stale]
    node[parts[-1]] = value
    loaded.origins[key] = Origin(SET_ORIGIN)
    for name in _axis_names(_nest(parts, value)):
        param = loaded.origins.get(f"params.{name}")
        if param is None or param.file != SET_ORIGIN:  # --set of both stays an error, like one file
            _drop_param(loaded.data, loaded.origins, name)


def _nest(parts: list[str], value: Any) -> dict[str, Any]:
    for part in reversed(parts):
        value = {part: value}
    return value


def _axis_names(layer: dict[str, Any]) -> list[str]:
    """The ``[matrix.axes]`` a layer (a file, or one --set) declares (the scheduler axis aside)."""
    matrix = layer.get("matrix")
    axes = matrix.get("axes") if isinstance(matrix, dict) else None
    return [k for k in axes if k != "scheduler"] if isinstance(axes, dict) else []


def _drop_param(data: dict[str, Any], origins: dict[str, Origin], name: str) -> None:
    """An axis declared in a later layer replaces the same key of an earlier layer's [params]."""
    params = data.get("params")
    if isinstance(params, dict) and name in params:
        del params[name]
        for stale in [o for o in origins if o == f"params.{name}" or o.startswith(f"params.{name}.")]:
            del origins[stale]
