"""Model ids as written and what they name on this machine: ``~``, ``$VAR`` and ``${VAR}`` expanded,
and the per-machine alias map.

The alias map is a user file, never read from a recipe: ``$RECIPE_RUNNER_MODELS`` when set, else
``${XDG_CONFIG_HOME:-~/.config}/recipe-runner/models.toml``, with one table::

    [models]
    "team/sd15" = "/data/models/sd15"          # a path: ~ and ${VAR} expanded, relative to this file
    "team/base" = "stable-diffusion-v1-5/stable-diffusion-v1-5"   # or a Hub id

A recipe that writes ``id = "team/sd15"`` loads, on each machine, what that machine's alias names.
An id that is not an alias has ``~`` and ``$VAR``/``${VAR}`` expanded (an unset variable is an
error at the key that wrote it). What a recipe wrote is what its records keep; job keys and locks
identify a local folder by its files' content, so the same bytes at another path are the same model.

Light module: the standard library only (the file is read through :mod:`recipe_runner.base.safe_read`).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..base.errors import suggest
from ..base.paths import is_local_reference
from ..base.safe_read import read_text
from .lines import key_lines

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ALIAS_ENV = "RECIPE_RUNNER_MODELS"
MAX_ALIAS_BYTES = 1 << 20  # a list of names and paths written by hand
_VARIABLE = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_TOML_LINE = re.compile(r"\(at line (\d+)")


class IdProblem(ValueError):
    """What is wrong with an id or with the alias file, for the user (exit 2). ``file``/``line``/
    ``key``: where in the alias file, when the problem is there (else the recipe key that wrote
    the id is the place)."""

    def __init__(self, message: str, *, hint: str | None = None, file: str | None = None,
                 line: int | None = None, key: str | None = None):
        super().__init__(message)
        self.message, self.hint, self.file, self.line, self.key = message, hint, file, line, key


def alias_file() -> Path:
    """Where this machine's alias map is (it may not exist)."""
    env = os.environ.get(ALIAS_ENV)
    if env:
        return Path(env).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
    return Path(config).expanduser() / "recipe-runner" / "models.toml"


def expand(value: str) -> str:
    """``value`` with a leading ``~`` and every ``$VAR``/``${VAR}`` expanded; IdProblem naming an
    unset (or empty, or malformed) variable."""
    def variable(m: re.Match[str]) -> str:
        name = m.group(1) if m.group(1) is not None else m.group(2)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name or ""):
            raise IdProblem(f"{m.group(0)!r} is not a variable name", hint="write ${NAME} or $NAME")
        found = os.environ.get(name)
        if not found:
            raise IdProblem(f"{name} is not set (in {value!r})",
                            hint=f"set it on this machine (export {name}=/path/to/models), or write the path")
        return found

    out = _VARIABLE.sub(variable, value)
    return os.path.expanduser(out) if out.startswith("~") else out


@dataclass(frozen=True)
class Alias:
    target: str  # an absolute folder path or a Hub id
    file: Path
    line: int | None
    local: bool  # target is a folder on this machine


@dataclass
class AliasMap:
    file: Path
    aliases: dict[str, Alias] = field(default_factory=dict)


_cache: dict[tuple[str, int, int], AliasMap] = {}


def _where(path: Path) -> str:
    """The alias file as the user knows it: relative to the current folder when below it, else
    ``~/...`` when below the home folder, else absolute."""
    for base, prefix in ((Path.cwd(), ""), (Path.home(), "~/")):
        try:
            return prefix + path.absolute().relative_to(base).as_posix()
        except ValueError:
            continue
    return str(path)


def aliases() -> AliasMap:
    """This machine's alias map, read once per version of the file (none: an empty map).
    IdProblem (naming the file, line and key) for a file that is not a valid alias map."""
    path = alias_file()
    try:
        st = path.stat()
    except OSError:
        return AliasMap(path)
    stamp = (str(path), st.st_mtime_ns, st.st_size)
    if stamp in _cache:
        return _cache[stamp]
    shown = _where(path)
    try:
        text = read_text(path, MAX_ALIAS_BYTES, what="model alias file")
    except (OSError, ValueError) as exc:
        raise IdProblem(f"unreadable model alias file: {exc}", file=shown) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = _TOML_LINE.search(str(exc))
        raise IdProblem(f"not valid TOML: {exc}", file=shown, line=int(m.group(1)) if m else None) from None
    lines = key_lines(text)
    unknown = sorted(set(data) - {"models"})
    if unknown:
        raise IdProblem(f"unknown table or key {unknown[0]!r}: the alias file has one table, [models]",
                        hint=suggest(unknown[0], ["models"]), file=shown, line=lines.get(unknown[0]), key=unknown[0])
    table = data.get("models", {})
    if not isinstance(table, dict):
        raise IdProblem("expected a table [models] of name = path or Hub id", file=shown, line=lines.get("models"),
                        key="models")
    found = AliasMap(path)
    for name, value in table.items():
        key = f"models.{name}"
        line = lines.get(key)
        if not isinstance(value, str) or not value.strip():
            raise IdProblem(f"expected a folder path or a Hub id (a string), got {value!r}", file=shown, line=line,
                            key=key)
        try:
            target = expand(value)
        except IdProblem as exc:
            raise IdProblem(exc.message, hint=exc.hint, file=shown, line=line, key=key) from None
        beside = path.parent / target
        local = is_local_reference(target) or beside.is_dir()
        found.aliases[name] = Alias(str(beside.resolve()) if local else target, path, line, local)
    _cache.clear()
    _cache[stamp] = found
    return found


@dataclass(frozen=True)
class Resolved:
    """An id as written, and what it names on this machine."""

    written: str
    id: str  # what the sources see: the alias's target, or the written id expanded
    alias: Alias | None = None

    def describe(self) -> str | None:
        """``team/sd15 -> /data/models/sd15 (alias from ~/.config/recipe-runner/models.toml)``;
        ``$TEAM/sd15 -> /data/sd15``; None when the id names itself."""
        if self.alias is not None:
            return f"{self.written} -> {self.id} (alias from {_where(self.alias.file)})"
        return f"{self.written} -> {self.id}" if self.id != self.written else None


def resolve(written: str) -> Resolved:
    """What the id ``written`` names on this machine: an alias of the alias map (exactly as
    written), else the id with ``~`` and variables expanded. IdProblem for an unset variable, an
    alias file that is not valid, or an alias that names a missing folder."""
    if not is_local_reference(written) and "$" not in written and ":" not in written:
        found = aliases().aliases.get(written)
        if found is not None:
            if found.local and not Path(found.target).is_dir():
                where = f"{_where(found.file)}:{found.line}" if found.line else _where(found.file)
                raise IdProblem(f"the alias {written!r} ({where}) names {found.target}: no such folder",
                                hint=f"edit {_where(found.file)} on this machine, or copy the model there")
            return Resolved(written, found.target, found)
    return Resolved(written, expand(written))
