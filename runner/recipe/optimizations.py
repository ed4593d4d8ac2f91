"""The ``[optimizations]`` table: what a plugin declares, and how a recipe's table is validated,
checked against the machine and ordered.

Light module: torch and diffusers are imported only by the plugins' own functions, when they run.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ..base.errors import PluginError, Problem, RecipeError, suggest
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
class WeightFile:
    """A weight file (or folder, or Hub id) an optimization's settings name: ``key`` is where,
    under the optimization's table (``adapters.0``); the pickle policy applies to it before loading."""

    key: str
    id: str
    weight_name: str | None = None


class WeightFiles(Protocol[S_contra]):
    """``weight_files(settings)``: the weight files the settings name (the pickle policy checks them)."""

    def __call__(self, settings: S_contra, /) -> list[WeightFile]: ...


@dataclass(frozen=True)
class Optimization(Generic[S]):
    """One key of ``[optimizations]``, as a plugin declares it.

    - ``apply(pipe, settings, context)``: switch it on for a built pipeline; it may return a dict
      of facts worth recording (e.g. ``{"warmup_seconds": 12.5}``), kept in the manifest's record
      (a ``*_seconds`` fact is a timing: kept with the run's timings, in ``.recipe-runner/run.json``).
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
    - ``weight_files(settings)``: the weight files the settings name (:class:`WeightFile`): the
      pickle policy (``--allow-pickle``) applies to them before anything loads.
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
    weight_files: WeightFiles[S] | None = None
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
    key: str = ""  # the recipe's key for it: its name, or "plugin:name" (empty: its name)
    plugin: str = ""  # its plugin, as errors name it: "'name' (distribution version)"

    @property
    def name(self) -> str:
        return self.optimization.name

    def call(self, callback: str, *args: Any) -> Any:
        """The optimization's ``callback`` (apply, check, switch, load_kwargs, weight_files) with
        ``args``; an error it raises comes out as a :class:`PluginError` naming the plugin, the
        optimization and the callback (the original as its cause, shown by ``--debug``).
        :class:`Unsupported`, errors already naming a plugin or a recipe line, out-of-memory
        errors (the runner backs off) and Ctrl-C pass unchanged."""
        function = getattr(self.optimization, callback)
        try:
            return function(*args)
        except (KeyboardInterrupt, GeneratorExit, Unsupported, PluginError, RecipeError):
            raise
        except BaseException as exc:  # noqa: BLE001 - SystemExit too: a plugin never ends the run silently
            if isinstance(exc, Exception) and _out_of_memory(exc):
                raise
            who = f"plugin {self.plugin}" if self.plugin else "a plugin"
            raise PluginError(f"{who} failed in {callback} of its optimization {self.name!r}: "
                              f"{type(exc).__name__}: {exc}") from exc

    def record(self) -> dict[str, Any]:
        out = {"status": self.status, "settings": self.settings.model_dump(mode="json")}
        if self.reason:
            out["reason"] = self.reason
        out.update(self.details)
        return out


def _out_of_memory(exc: Exception) -> bool:
    import sys

    if "torch" not in sys.modules:  # no torch loaded: no tensor ran out
        return False
    from ..base.memory import is_out_of_memory

    return is_out_of_memory(exc)


QUALIFIER = ":"  # "plugin:name": one plugin's optimization, when two provide the name


def settings_problem(settings: Any) -> str | None:
    """Why ``settings`` cannot be an optimization's settings model (None: it can): it must subclass
    :class:`OptimizationSettings` and keep its strictness, or a recipe's typo would run silently."""
    if not (isinstance(settings, type) and issubclass(settings, OptimizationSettings)):
        what = settings.__name__ if isinstance(settings, type) else type(settings).__name__
        bases = ", ".join(b.__name__ for b in getattr(settings, "__bases__", ()))
        return (f"settings must be a subclass of recipe_runner.api.OptimizationSettings (strict, no unknown "
                f"keys, brings required), got {what}" + (f"({bases})" if bases else ""))
    config = settings.model_config
    loose = [f"{k}={config.get(k)!r}" for k, want in (("extra", "forbid"), ("strict", True)) if config.get(k) != want]
    if loose:
        return f"settings {settings.__name__} loosens OptimizationSettings' model_config ({', '.join(loose)}): remove it"
    for model in _nested_models(settings, set()):  # validated strictly anyway; unknown keys must be refused too
        if model.model_config.get("extra") != "forbid":
            return (f"settings {settings.__name__}: its table {model.__name__} must refuse unknown keys "
                    "(model_config = ConfigDict(extra=\"forbid\", strict=True))")
    return None


def _nested_models(model: type[BaseModel], seen: set[type[BaseModel]]) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    stack = [f.annotation for f in model.model_fields.values()]
    while stack:
        annotation = stack.pop()
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation not in seen:
                seen.add(annotation)
                found += [annotation, *_nested_models(annotation, seen)]
            continue
        stack += list(typing.get_args(annotation))
    return found


def _tuple_annotation(annotation: Any) -> bool:
    if typing.get_origin(annotation) is tuple or annotation is tuple:
        return True
    return any(_tuple_annotation(a) for a in typing.get_args(annotation) if typing.get_origin(annotation) is not tuple)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def toml_values(model: type[BaseModel], value: Any) -> Any:
    """A TOML table made ready for ``model``'s strict validation: an array (a list) where a field
    is a tuple becomes a tuple, in nested tables and arrays of tables too (TOML has no tuples;
    the schema says ``array``). Nothing else changes: ``"3"`` is still refused for an int."""
    if not isinstance(value, Mapping):
        return value
    out = dict(value)
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key not in out:
            continue
        item, annotation = out[key], info.annotation
        if isinstance(item, list) and _tuple_annotation(annotation):
            out[key] = tuple(item)
            continue
        nested = _model_of(annotation)
        if nested is None:
            continue
        if isinstance(item, Mapping):
            out[key] = toml_values(nested, item)
        elif isinstance(item, list) and typing.get_origin(annotation) is not tuple:
            out[key] = [toml_values(nested, v) for v in item]
    return out


@dataclass
class Registry:
    """Every optimization the loaded plugins provide, and the plugins that failed to load.

    A name two plugins provide: a built-in keeps it (a plugin installed later never changes what an
    existing recipe means); between plugins, the bare name is refused, naming both, and a recipe
    picks one with the qualified key ``"<plugin>:<name>"`` (valid for every optimization)."""

    optimizations: dict[str, Optimization] = field(default_factory=dict)  # bare name -> its one provider's
    providers: dict[str, str] = field(default_factory=dict)  # bare name -> plugin name
    broken: dict[str, str] = field(default_factory=dict)  # plugin name -> error
    qualified: dict[str, Optimization] = field(default_factory=dict)  # "plugin:name" -> every loaded one
    shared: dict[str, list[str]] = field(default_factory=dict)  # bare name -> the plugins providing it (2 or more)
    declared: dict[str, str] = field(default_factory=dict)  # name a broken plugin declared -> that plugin
    labels: dict[str, str] = field(default_factory=dict)  # plugin name -> "'name' (distribution version)"

    builtins: set[str] = field(default_factory=set)  # the built-in plugins' names

    def add(self, opt: Optimization, plugin: str) -> None:
        """Register ``plugin``'s ``opt`` (see the class doc for a name already provided)."""
        self.qualified[f"{plugin}{QUALIFIER}{opt.name}"] = opt
        name, owner = opt.name, self.providers.get(opt.name)
        if name in self.shared:
            self.shared[name].append(plugin)
        elif owner is None:
            self.optimizations[name], self.providers[name] = opt, plugin
        else:
            self.shared[name] = [owner, plugin]
            if not self.is_builtin(owner):
                del self.optimizations[name], self.providers[name]

    def is_builtin(self, plugin: str) -> bool:
        return plugin in self.builtins

    def lookup(self, name: str) -> Optimization | None:
        """The optimization a recipe's key names: a bare name, or ``"plugin:name"``."""
        return self.optimizations.get(name) or self.qualified.get(name)

    def provider(self, name: str) -> str | None:
        """The plugin serving the recipe key ``name``."""
        if name in self.qualified:
            return name.rpartition(QUALIFIER)[0]
        return self.providers.get(name)

    def label(self, plugin: str) -> str:
        return self.labels.get(plugin, repr(plugin))

    def ambiguity(self, name: str) -> tuple[str, str] | None:
        """(message, hint) for a bare name two plugins provide and none may take; None otherwise."""
        plugins = self.shared.get(name)
        if not plugins or name in self.optimizations:
            return None
        who = " and ".join(self.label(p) for p in plugins)
        picks = " or ".join(f'"{p}{QUALIFIER}{name}"' for p in plugins)
        return f"{name!r} is provided by {who}", f"pick one with its qualified key: {picks}"

    def _broken_for(self, name: str) -> str | None:
        """The failed plugin a recipe key belongs to: one that declared it, its qualifier, or (its
        declarations unknown) the plugin named like it."""
        if name in self.declared:
            return self.declared[name]
        plugin = name.rpartition(QUALIFIER)[0]
        if plugin in self.broken:
            return plugin
        return next((p for p in self.broken if name in (p, p.replace("-", "_"))), None)

    def enable(self, table: Mapping[str, Any], problem: Callable[..., Problem]) -> list[Enabled]:
        """Validate a recipe's ``[optimizations]`` table; returns the enabled ones in stage order.

        ``problem(key, message, hint)`` turns a dotted key into a located Problem.
        """

        problems: list[Problem] = []
        enabled: list[Enabled] = []
        for name, value in table.items():
            key = f"optimizations.{name}"
            opt = self.lookup(name)
            if opt is None:
                ambiguous = self.ambiguity(name)
                if ambiguous:
                    problems.append(problem(key, *ambiguous))
                    continue
                broken = self._broken_for(name)
                if broken:
                    problems.append(problem(key, f"the plugin {broken!r} failed to load: {self.broken[broken]}"))
                    continue
                candidates = [*self.qualified] if QUALIFIER in name else [*self.optimizations, *self.shared]
                problems.append(problem(key, "unknown optimization",
                                        suggest(name, candidates, "see recipe-run --list-plugins")))
                continue
            if value is False:
                continue
            same = next((e for e in enabled if e.name == opt.name), None)
            if same is not None:
                problems.append(problem(key, f"{opt.name!r} is enabled twice (as {same.key!r} too)", "keep one of them"))
                continue
            try:
                settings = opt.settings.model_validate(toml_values(opt.settings, {} if value is True else value), strict=True)
            except ValidationError as exc:
                for error in exc.errors():
                    problems.append(problem_from_pydantic(dict(error), problem, model=opt.settings, prefix=key))
                continue
            provider = self.provider(name)
            enabled.append(Enabled(opt, settings, key=name, plugin=self.label(provider) if provider else ""))
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
