"""Plugins that failed to load are never silent, and the plugins of a run are on record.

- :func:`check` (every run and dry run): a ``-p`` module that cannot be imported or fails to load is an error
  (exit 2: the command line asked for it); an entry-point plugin that failed to import or register
  is a one-line warning on stderr, or an error with ``--strict-plugins``.
- :func:`records`: the third-party plugins of the run (entry points, ``-p`` modules, plugins
  registered in-process) as ``{name, version, source, module, error}``, kept in the manifest's
  ``environment.plugins`` and so in every image's ``environment`` chunk.
- :func:`missing`: the recorded plugins this process does not have loaded (``--reproduce``).

Light module: no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..base.errors import Problem, RecipeError

BUILT_IN = "built-in"


def check(plugins: Any, strict: bool, warn: Callable[[str], None]) -> None:
    problems: list[Problem] = []
    for info in plugins.infos:
        if not info.error:
            continue
        if info.source == "-p" and not info.imported:
            problems.append(Problem(f"cannot import plugin module {info.name!r}: {info.error}", file="-p"))
        elif info.source == "-p":  # imported, then refused: a hook, its optimizations, a name it takes
            problems.append(Problem(f"plugin module {info.name!r} failed to load: {info.error}", file="-p"))
        elif strict:
            problems.append(Problem(f"plugin {info.name!r} ({info.source} {info.module}) failed to load: {info.error}",
                                    file="--strict-plugins"))
        else:
            warn(f"plugin {info.name!r} ({info.source} {info.module}) failed to load and is not used: {info.error}")
    if problems:
        raise RecipeError(problems)


def missing(recorded: Any, plugins: Any) -> list[str]:
    """``name version`` of each plugin recorded (loaded then) that is not loaded now, or another version."""
    if not isinstance(recorded, list):
        return []
    now = {i.name: i for i in plugins.infos if not i.error}
    out = []
    for item in recorded:
        if not isinstance(item, dict) or item.get("error") or not isinstance(item.get("name"), str):
            continue
        name, version = item["name"], item.get("version")
        have = now.get(name)
        if have is None:
            source = " (-p)" if item.get("source") == "-p" else ""
            out.append(f"{name} {version or ''}".strip() + f"{source}: not loaded now")
        elif version and have.version and have.version != version:
            out.append(f"{name} {version}: {have.version} is loaded now")
    return out
