"""The ``[optimizations]`` table: what a plugin declares, and how a recipe's table is validated,
checked against the machine and ordered.

Light module: torch and diffusers are imported only by the plugins' own functions, when they run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ..base.errors import Problem, RecipeError, suggest
from .model import problem_from_pydantic

if TYPE_CHECKING:
    from .context import BuildContext

# The order optimizations are applied in: declared, not accidental.
STAGES = ("load", "components", "memory", "attention", "layout", "compile")


class OptimizationSettings(BaseModel):
    """Base of every plugin's settings model: a table under ``[optimizations.<name>]``."""

    # No use_attribute_docstrings: pydantic would read and parse every plugin's source at each
    # start (about 30 ms); settings_docs.attribute_docs() reads them only for --list-plugins and --schema.
    model_config = ConfigDict(extra="forbid", strict=True)

    required: bool = True
    """false: skip it with a warning when it cannot run here (instead of stopping)"""


class Unsupported(Exception):
    """Raised by an optimization's ``check`` or ``apply`` when it cannot run here; the message
    says why. A required optimization then stops the recipe (exit 2); ``required = false`` skips."""


class Conflict(Unsupported):
    """An :class:`Unsupported` that no machine cures: the optimization cannot be combined with
    another one the recipe enables. ``required = false`` would only hide the mistake, so the
    error does not suggest it."""


# The hint of an optimization that cannot run on this machine (not given for a Conflict, nor
# where the value comes from an axis: see recipe_runner.plan.variants.relabel).
REQUIRED_HINT = "set required = false in its table to skip it when unavailable"


S = TypeVar("S", bound=OptimizationSettings)
S_contra = TypeVar("S_contra", bound=OptimizationSettings, contravariant=True)
Facts = dict[str, Any] | None  # what an optimization reports, recorded in the manifest


class Apply(Protocol[S_contra]):
    """``apply(pipe, settings, context)``: switch the optimization on for a built pipeline."""

    def __call__(self, pipe: Any, settings: S_contra, context: BuildContext, /) -> Facts: ...


class Check(Protocol[S_contra]):
    """``check(settings, context)``: before loading; raise :class:`Unsupported` when it cannot run."""

    def __call__(self, settings: S_contra, context: BuildContext, /) -> None: ...


class LoadKwargs(Protocol[S_contra]):
    """``load_kwargs(settings, context)``: extra ``from_pretrained`` keyword arguments."""

    def __call__(self, settings: S_contra, context: BuildContext, /) -> dict[str, Any]: ...


class Switch(Protocol[S_contra]):
    """``switch(pipe, old, new, context)``: from settings ``old`` to ``new`` in place (None: off)."""

    def __call__(self, pipe: Any, old: S_contra | None, new: S_contra | None, context: BuildContext, /) -> Facts: ...


@dataclass(frozen=True)
class Optimization(Generic[S]):
    """One key of ``[optimizations]``, as a plugin declares it.

    - ``apply(pipe, settings, context)``: switch it on for a built pipeline; it may return a dict
      of facts worth recording (e.g. ``{"warmup_seconds": 12.5}``), kept in the manifest's record.
    - ``check(settings, context)``: before the model loads, raise :class:`Unsupported` when it
      cannot run on this machine or with the other enabled optimizations (``context.enabled``).
    - ``load_kwargs(settings, context)``: extra ``from_pretrained`` keyword arguments (load stage).
    - ``light_check``: ``check`` imports neither torch nor diffusers and reads no weights (it may
      look at ``context.device``, which is then the device as far as it can be told without torch:
      "auto" when only torch can tell): every mode's prepare runs it too, so ``--dry-run`` refuses
      what a run would refuse, before anything loads.
    - ``places_model``: it moves the model to its device itself (offloading); the runner then
      does not call ``pipe.to(device)``.
    - ``switch(pipe, old, new, context)``: change a built pipeline in place from settings ``old``
      to ``new`` (either None: off), giving the pipeline the same pixels a fresh build with ``new``
      would give. With it, an ``optimizations.<name>`` axis switches the loaded pipeline instead of
      loading another, and components and LoRA axes keep swapping in place while it is on. Like
      ``apply`` it may return facts to record, and raise :class:`Unsupported`.
    """

    name: str
    settings: type[S]
    stage: str
    apply: Apply[S]
    description: str = ""
    check: Check[S] | None = None
    load_kwargs: LoadKwargs[S] | None = None
    places_model: bool = False
    switch: Switch[S] | None = None
    light_check: bool = False

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"optimization {self.name!r}: stage must be one of {STAGES}, got {self.stage!r}")


@dataclass
class Enabled:
    """An optimization switched on by a recipe, with its validated settings."""

    optimization: Optimization
    settings: OptimizationSettings
    status: str = "pending"  # pending -> applied | skipped
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # what apply reported

    @property
    def name(self) -> str:
        return self.optimization.name

    def record(self) -> dict[str, Any]:
        out = {"status": self.status, "settings": self.settings.model_dump(mode="json")}
        if self.reason:
            out["reason"] = self.reason
        out.update(self.details)
        return out


@dataclass
class Registry:
    """Every optimization the loaded plugins provide, and the plugins that failed to load."""

    optimizations: dict[str, Optimization] = field(default_factory=dict)
    providers: dict[str, str] = field(default_factory=dict)  # name -> plugin name
    broken: dict[str, str] = field(default_factory=dict)  # plugin name -> error

    def enable(self, table: Mapping[str, Any], problem: Callable[..., Problem]) -> list[Enabled]:
        """Validate a recipe's ``[optimizations]`` table; returns the enabled ones in stage order.

        ``problem(key, message, hint)`` turns a dotted key into a located Problem.
        """

        problems: list[Problem] = []
        enabled: list[Enabled] = []
        for name, value in table.items():
            key = f"optimizations.{name}"
            opt = self.optimizations.get(name)
            if opt is None:
                broken = [p for p in self.broken if name in (p, p.replace("-", "_"))]
                if broken:
                    problems.append(problem(key, f"the plugin {broken[0]!r} failed to load: {self.broken[broken[0]]}"))
                    continue
                problems.append(problem(key, "unknown optimization",
                                        suggest(name, self.optimizations, "see recipe-run --list-plugins")))
                continue
            if value is False:
                continue
            try:
                settings = opt.settings.model_validate({} if value is True else value)
            except ValidationError as exc:
                for error in exc.errors():
                    problems.append(problem_from_pydantic(dict(error), problem, model=opt.settings, prefix=key))
                continue
            enabled.append(Enabled(opt, settings))
        if problems:
            raise RecipeError(problems)
        return sorted(enabled, key=lambda e: (STAGES.index(e.optimization.stage), e.name))


def settle(enabled: Enabled, reason: str | Unsupported, problem: Callable[..., Problem], warn: Callable[[str], None]) -> None:
    """An optimization cannot run: stop the recipe, or skip it when ``required = false``."""
    found = refusal(enabled, reason, problem)
    if found is not None:
        raise RecipeError([found])
    enabled.status, enabled.reason = "skipped", str(reason)
    warn(f"optimizations.{enabled.name}: skipped: {reason}")


def refusal(enabled: Enabled, reason: str | Unsupported, problem: Callable[..., Problem]) -> Problem | None:
    """The problem of an optimization that cannot run (``reason``: the message, or the exception
    saying it), or None when ``required = false`` lets it be skipped. The hint "set required =
    false" is given only where it helps: not for a :class:`Conflict` between optimizations."""
    if not enabled.settings.required:
        return None
    if isinstance(reason, Conflict):
        return problem(f"optimizations.{enabled.name}", f"cannot run here: {reason}")
    return problem(f"optimizations.{enabled.name}", f"cannot run here: {reason}", REQUIRED_HINT)
