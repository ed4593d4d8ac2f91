"""The one error type a user sees for a bad recipe or command line, formatted like ruff's.

    recipes/warrior.toml:14: params.guidance_scael: not a parameter of StableDiffusionPipeline
      (did you mean 'guidance_scale'?)

The CLI prints it and exits 2; nothing else about the recipe ever reaches the user as a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate to a misspelled ``name``, or None."""
    matches = difflib.get_close_matches(str(name), sorted(set(candidates)), n=1, cutoff=0.6)
    return matches[0] if matches else None


def suggest(name: str, candidates: Iterable[str], otherwise: str | None = None, shown: str = "{!r}") -> str | None:
    """The hint for a misspelled ``name``: ``did you mean 'x'?`` (the candidate written as ``shown``
    formats it), else ``otherwise``."""
    close = did_you_mean(name, candidates)
    return f"did you mean {shown.format(close)}?" if close else otherwise


@dataclass
class Problem:
    """One thing wrong with a recipe: where (file, line, dotted key) and what."""

    message: str
    key: str | None = None
    file: str | None = None
    line: int | None = None
    hint: str | None = None

    def __str__(self) -> str:
        where = ":".join(str(p) for p in (self.file, self.line) if p is not None)
        parts = [p for p in (where, self.key) if p]
        text = ": ".join(parts + [self.message])
        if self.hint:
            text += f" ({self.hint})"
        return text


@dataclass
class RecipeError(Exception):
    """A recipe or command line that cannot run. Exit status 2."""

    problems: list[Problem] = field(default_factory=list)

    @classmethod
    def one(
        cls,
        message: str,
        *,
        key: str | None = None,
        file: str | None = None,
        line: int | None = None,
        hint: str | None = None,
        choices: Iterable[str] | None = None,
        given: str | None = None,
    ) -> RecipeError:
        """A single problem; with ``choices`` and ``given``, adds "did you mean ...?"."""
        if hint is None and choices is not None and given is not None:
            hint = suggest(given, choices)
        return cls([Problem(message, key=key, file=file, line=line, hint=hint)])

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


class RunError(Exception):
    """A failure while running (model load, generation, writing). Exit status 1."""


class PluginError(RunError):
    """A plugin's hook raised (SystemExit and KeyError included): the run stops, exit 1, naming
    the plugin."""
