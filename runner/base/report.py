"""The one way recipe-runner speaks to its user: results on stdout (summaries, plans, where the
reports are), everything else on stderr (warnings, errors, what a session is doing).

Every module prints through these functions, so a test, an embedding program or a future
``--quiet`` changes what is shown in one place. Light module.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable


def result(text: str) -> None:
    """A result: a summary line, a plan, a listing (stdout)."""
    print(text, flush=True)


def note(text: str) -> None:
    """What the tool is doing (stderr): ``watching 3 files``, ``loading tiny:sd15 ...``."""
    print(text, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """Something the user should know that does not stop the run (stderr)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def error(message: str) -> None:
    """Something that failed (stderr)."""
    print(f"error: {message}", file=sys.stderr, flush=True)


def problems(items: Iterable[object]) -> None:
    """Every problem of a recipe, one ``error: file:line: key: ...`` line each (stderr)."""
    for item in items:
        error(str(item))
