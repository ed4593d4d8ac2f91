"""The one PluginManager: built-in plugins, the ``recipe_runner`` entry-point group, and
``-p MODULE``. A plugin that fails to import or register is reported by name and never takes the
tool down; a recipe that uses it then stops with exit 2.

Two plugins may provide one optimization name: both load, and the registry says who provides
what (a recipe picks one with ``"<plugin>:<name>"``, see :class:`~recipe_runner.recipe.optimizations.Registry`).
A plugin that fails at any step (import, a hook's signature, its optimizations, its kinds) is not
used at all. :func:`isolate` loads no entry-point plugin (the pytest helpers' isolation fixture).

Environment: ``RECIPE_RUNNER_PLUGINS`` (comma-separated entry-point names) restricts which
third-party plugins load; set it to an empty string to load none.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import types
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from recipe_runner import __version__

from ..axes.kind import AxisKind
from ..axes.registry import KINDS
from ..base.errors import PluginError
from ..base.memory import is_out_of_memory
from ..base.registry import Registry as KindRegistry
from ..pipelines.sources import SOURCES, ModelSource
from ..recipe.optimizations import QUALIFIER, Optimization, Registry, settings_problem
from ..records.formats import FORMATS, OutputFormat
from ..views.metrics import METRICS, Metric
from . import hookspecs

# The registries plugins add kinds to: hook, registry, the class each kind must be, how --list-plugins names it.
EXTENSION_POINTS: tuple[tuple[str, KindRegistry[Any], type[Any], str], ...] = (
    ("register_axis_kinds", KINDS, AxisKind, "axis"),
    ("register_model_sources", SOURCES, ModelSource, "source"),
    ("register_output_formats", FORMATS, OutputFormat, "format"),
    ("register_metrics", METRICS, Metric, "metric"),
)

PROJECT = "recipe_runner"
ENTRY_POINT_GROUP = "recipe_runner"
ALLOW_ENV = "RECIPE_RUNNER_PLUGINS"

BUILTIN = (
    "recipe_runner.plugins.quantization",
    "recipe_runner.plugins.lora",
    "recipe_runner.plugins.offload",
    "recipe_runner.plugins.attention_slicing",
    "recipe_runner.plugins.vae_slicing",
    "recipe_runner.plugins.vae_tiling",
    "recipe_runner.plugins.xformers",
    "recipe_runner.plugins.attention_backend",
    "recipe_runner.plugins.fuse_qkv",
    "recipe_runner.plugins.channels_last",
    "recipe_runner.plugins.cache",
    "recipe_runner.plugins.compile",
    "recipe_runner.plugins.tiny",
)

_REGISTERED: list[tuple[Any, str]] = []  # plugins registered in-process (tests, embedding)


def register(plugin: Any, name: str | None = None) -> None:
    """Register a plugin object (a module, a class instance) for every later ``load_plugins`` in
    this process, e.g. for one test; undo with :func:`unregister`."""
    _REGISTERED.append((plugin, name or getattr(plugin, "__name__", None) or type(plugin).__name__))


def unregister(plugin: Any) -> None:
    _REGISTERED[:] = [(p, n) for p, n in _REGISTERED if p is not plugin]


@dataclass
class PluginInfo:
    """What --list-plugins shows about one plugin."""

    name: str
    source: str  # "built-in" | "entry point" | "-p"
    module: str
    distribution: str | None = None
    version: str | None = None
    error: str | None = None
    provides: list[str] = field(default_factory=list)
    imported: bool = True  # False: its module could not be imported (else it failed to register)
    traceback: str | None = None  # the failure's traceback, shown by --debug

    def short_label(self) -> str:
        """``'name' (distribution version)``, or its source when it has no distribution."""
        where = " ".join(x for x in (self.distribution, self.version) if x) or f"{self.source} {self.module}"
        return f"{self.name!r} ({where})"

    def label(self) -> str:
        """How an error names this plugin: its name, and where it came from (the distribution
        and version of an entry point or an installed module, else how it was loaded)."""
        origin = " ".join(x for x in (self.distribution, self.version) if x) or self.source
        return f"plugin {self.name!r} ({origin}; {self.module})"


@dataclass
class Plugins:
    pm: pluggy.PluginManager
    infos: list[PluginInfo]
    registry: Registry

    @property
    def hook(self) -> Any:
        """The hooks, called through pluggy; an exception a hook raises comes out as a
        :class:`PluginError` naming the plugin (out-of-memory errors and Ctrl-C pass unchanged:
        the runner backs off or stops)."""
        return NamingHooks(self)

    def info(self, name: str) -> PluginInfo | None:
        return next((i for i in self.infos if i.name == name), None)


@dataclass
class NamingHooks:
    """``plugins.hook.NAME(**kwargs)``, with failures named by their plugin."""

    plugins: Plugins

    def implementers(self, name: str) -> str:
        """The plugins implementing hook ``name``, as errors name them."""
        impls = getattr(self.plugins.pm.hook, name).get_hookimpls()
        return ", ".join(_describe(self.plugins, impl.plugin_name) for impl in impls) or "no plugin"

    def __getattr__(self, name: str) -> Any:
        caller = getattr(self.plugins.pm.hook, name)

        def call(**kwargs: Any) -> Any:
            if name in RETURN_NOTHING:
                return self._one_by_one(name, caller, kwargs)
            try:
                results = caller(**kwargs)
            except (KeyboardInterrupt, GeneratorExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - SystemExit too: a plugin never ends the run silently
                if _passes_through(exc):
                    raise
                raise _hook_failure(_culprit(self.plugins, caller, exc), name, exc) from exc
            return results

        return call

    def _one_by_one(self, name: str, caller: Any, kwargs: dict[str, Any]) -> None:
        """A hook that returns nothing, each implementation called in pluggy's order with the
        arguments it takes (as pluggy calls them), so that an error or a value returned names the
        very plugin. With a wrapper among them, through pluggy (a value returned then names every
        implementer)."""
        impls = caller.get_hookimpls()
        if any(impl.hookwrapper or impl.wrapper for impl in impls):
            self._refuse_values(name, self.implementers(name), caller(**kwargs))
            return
        for impl in reversed(impls):
            try:
                result = impl.function(*[kwargs[arg] for arg in impl.argnames])
            except (KeyboardInterrupt, GeneratorExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - SystemExit too: a plugin never ends the run silently
                if _passes_through(exc):
                    raise
                raise _hook_failure(_describe(self.plugins, impl.plugin_name), name, exc) from exc
            if result is not None:
                self._refuse_values(name, _describe(self.plugins, impl.plugin_name), [result])

    @staticmethod
    def _refuse_values(name: str, who: str, results: list[Any]) -> None:
        if results:
            what = ", ".join(sorted({type(r).__name__ for r in results}))
            raise PluginError(f"{who}: its {name} hook returned a value ({what}); {name} returns nothing: "
                              f"{RETURN_NOTHING[name]}")


# The hooks whose return value the runner would ignore: a value returned is refused, saying what to do instead.
RETURN_NOTHING = {
    "pipeline_ready": "patch or wrap the pipe it receives",
    "run_started": "it is told about the run, it changes nothing",
    "before_batch": "change the call by mutating call_kwargs",
    "after_batch": "change images[i] in place or replace it (images[i] = new); never add or remove one",
    "run_finished": "write your own files into output_dir",
}


def identities(plugins: Plugins, recipe: Any) -> dict[str, Any]:
    """What each plugin implementing ``job_identity`` says decides ``recipe``'s pixels, by plugin
    name: ``{"version": ..., "identity": ...}`` (plugins returning None are left out). Goes into
    every job key of the recipe (:func:`recipe_runner.records.keys.common_identity`)."""
    import json

    out: dict[str, Any] = {}
    for impl in plugins.pm.hook.job_identity.get_hookimpls():
        others = [p for p in plugins.pm.get_plugins() if p is not impl.plugin]
        caller = plugins.pm.subset_hook_caller("job_identity", remove_plugins=others)
        label = _describe(plugins, impl.plugin_name)
        try:
            results = caller(recipe=recipe)
        except (KeyboardInterrupt, GeneratorExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - a plugin never ends the run silently
            raise PluginError(f"{label} failed in its job_identity hook: {type(exc).__name__}: {exc}") from exc
        if not results:
            continue
        identity = results[0]
        try:
            json.dumps(identity, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise PluginError(f"{label}: its job_identity hook must return JSON values (dict, list, str, "
                              f"number, bool) or None, got {type(identity).__name__}: {exc}") from exc
        info = plugins.info(impl.plugin_name)
        out[impl.plugin_name] = {"version": info.version if info is not None else None, "identity": identity}
    return out


def _hook_failure(who: str, hook: str, exc: BaseException) -> PluginError:
    """The error a plugin's hook raised, naming the plugin (``who``) and the hook."""
    return PluginError(f"{who} failed in its {hook} hook: {type(exc).__name__}: {exc}")


def _passes_through(exc: BaseException) -> bool:
    """Errors the runner handles itself: out of memory (it retries smaller batches) and a
    PluginError already naming its plugin."""
    if isinstance(exc, PluginError):
        return True
    if not isinstance(exc, Exception) or "torch" not in sys.modules:  # no torch loaded: no tensor ran out
        return False
    return is_out_of_memory(exc)


def _code_of(function: Any) -> Any:
    function = getattr(function, "__func__", function)  # a bound method
    function = getattr(function, "__wrapped__", function)  # functools.wraps
    return getattr(function, "__code__", None)


def _culprit(plugins: Plugins, caller: Any, exc: BaseException) -> str:
    """The plugin whose implementation ``exc`` came out of: the first frame of its traceback that
    runs one of the hook's implementations; else every plugin implementing the hook."""
    impls = caller.get_hookimpls()
    by_code = {_code_of(impl.function): impl for impl in impls}
    tb = exc.__traceback__
    while tb is not None:
        impl = by_code.get(tb.tb_frame.f_code)
        if impl is not None:
            return _describe(plugins, impl.plugin_name)
        tb = tb.tb_next
    names = ", ".join(_describe(plugins, impl.plugin_name) for impl in impls)
    return f"one of {names}" if len(impls) > 1 else names or "a plugin"


def _describe(plugins: Plugins, name: str) -> str:
    info = plugins.info(name)
    return info.label() if info is not None else f"plugin {name!r}"


def _error_text(exc: BaseException) -> str:
    """One line saying what is wrong: pluggy's validation errors in full (their reason is on their
    later lines), other errors as ``Type: first line``."""
    if isinstance(exc, pluggy.PluginValidationError):
        return _validation_text(exc)
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def _fail(info: PluginInfo, exc: BaseException, imported: bool = True) -> None:
    """Record on ``info`` that its plugin failed with ``exc``: the one line errors show, the
    traceback ``--debug`` shows."""
    import traceback

    info.error, info.imported = _error_text(exc), imported
    info.traceback = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _hookspec_args(name: str) -> list[str] | None:
    import inspect

    spec = getattr(hookspecs, name, None)
    if not callable(spec) or not hasattr(spec, f"{PROJECT}_spec"):
        return None
    return [p for p in inspect.signature(spec).parameters if p != "self"]


def _validation_text(exc: pluggy.PluginValidationError) -> str:
    """pluggy's PluginValidationError as one line naming the hook and the reason."""
    from ..base.errors import did_you_mean

    text = str(exc)
    unknown = re.match(r"unknown hook '([^']+)'", text)
    if unknown:
        hooks = [n for n in dir(hookspecs) if _hookspec_args(n) is not None]
        close = did_you_mean(unknown.group(1), hooks)
        hint = f" (did you mean {close!r}?)" if close else f" (the hooks: {', '.join(sorted(hooks))})"
        return f"unknown hook {unknown.group(1)!r}{hint}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    head = re.match(r"Plugin '[^']*' for hook '([^']+)'", lines[0]) if lines else None
    if head:
        hook = head.group(1)
        definition = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("hookimpl definition:")), "")
        extra = re.search(r"Argument\(s\) (\{.*\}) are declared in the hookimpl", text)
        spec = _hookspec_args(hook)
        if extra:
            passes = f" (it passes {', '.join(spec)})" if spec is not None else ""
            return (f"hook {hook!r}: {definition} takes argument(s) {extra.group(1)} that the hook does not "
                    f"pass{passes}")[:500]
        reason = "; ".join(ln for ln in lines[1:] if not ln.startswith("hookimpl definition:"))
        return f"hook {hook!r}: {definition}: {reason}"[:500]
    return "PluginValidationError: " + "; ".join(lines)[:500]


def _register(pm: pluggy.PluginManager, plugin: Any, info: PluginInfo) -> None:
    """Register one plugin, checking its hook names; a failure is recorded on ``info``."""
    try:
        pm.register(plugin, name=info.name)
        pm.check_pending()
    except Exception as exc:  # a misspelled hook, a duplicate name, ...
        if pm.is_registered(plugin):
            pm.unregister(plugin)
        _fail(info, exc)


def _allowed_third_party() -> set[str] | None:
    raw = os.environ.get(ALLOW_ENV)
    if raw is None:
        return None
    return {n.strip() for n in raw.split(",") if n.strip()}


def load_plugins(extra_modules: tuple[str, ...] | list[str] = ()) -> Plugins:
    """Build the PluginManager with every plugin. A plugin that fails to import or register (an
    entry point, a ``-p`` module) is recorded on its PluginInfo, never raised: runs name it in a
    warning and in the manifest; ``--strict-plugins`` refuses to run with it."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []


    for module_name in BUILTIN:
        info = PluginInfo(module_name.rsplit(".", 1)[-1], "built-in", module_name, "recipe-runner", __version__)
        infos.append(info)
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            _fail(info, exc, imported=False)
            continue
        _register(pm, module, info)

    allowed = set() if _ISOLATED else _allowed_third_party()
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if allowed is not None and ep.name not in allowed:
            continue
        dist = getattr(ep, "dist", None)
        info = PluginInfo(ep.name, "entry point", ep.value,
                          dist.metadata["Name"] if dist else None, dist.version if dist else None)
        infos.append(info)
        try:
            plugin = ep.load()
        except Exception as exc:  # one broken plugin never takes the tool down
            _fail(info, exc, imported=False)
            continue
        if any(plugin is p for p, _ in _REGISTERED):  # a test registered this very plugin: that one wins
            infos.remove(info)
            continue
        _register(pm, plugin, info)

    for plugin, name in _REGISTERED:
        where = plugin.__name__ if isinstance(plugin, types.ModuleType) else type(plugin).__module__
        info = PluginInfo(name, "registered", where)
        if isinstance(plugin, types.ModuleType):
            info.distribution, info.version = _distribution_of(plugin)
        infos.append(info)
        _register(pm, plugin, info)

    for module_name in extra_modules:
        info = PluginInfo(module_name, "-p", module_name)
        infos.append(info)
        try:
            module = import_plugin_module(module_name)
        except Exception as exc:  # listed as failed; a run names it, --strict-plugins refuses it
            _fail(info, exc, imported=False)
            continue
        info.distribution, info.version = _distribution_of(module)
        _register(pm, module, info)

    registry = _collect_optimizations(pm, infos)
    _collect_kinds(pm, infos, registry)
    _drop_failed(pm, infos, registry)
    return Plugins(pm, infos, registry)


_ISOLATED = False  # load no entry-point plugin (recipe_runner.testing's recipe_runner_isolated_plugins)


def isolate(on: bool = True) -> bool:
    """Load no installed (entry-point) plugin in this process's later ``load_plugins`` until
    ``isolate(False)``: only the built-ins, ``register``-ed and ``-p`` plugins. Returns the previous state."""
    global _ISOLATED
    before, _ISOLATED = _ISOLATED, on
    return before


def _drop_failed(pm: pluggy.PluginManager, infos: list[PluginInfo], registry: Registry) -> None:
    """A plugin that failed at any step is not used at all: its hooks are not called, and none of
    what it registered (optimizations, kinds) stays; the names it declared point at its error."""
    for info in infos:
        if not info.error:
            continue
        registry.broken.setdefault(info.name, info.error)
        plugin = pm.get_plugin(info.name)
        if plugin is not None:
            pm.unregister(plugin)
        for key in [k for k in registry.qualified if k.rpartition(QUALIFIER)[0] == info.name]:
            opt = registry.qualified.pop(key)
            registry.declared.setdefault(opt.name, info.name)
            if registry.providers.get(opt.name) == info.name:
                del registry.optimizations[opt.name], registry.providers[opt.name]
            shared = registry.shared.get(opt.name)
            if shared and info.name in shared:
                shared.remove(info.name)
                if len(shared) == 1:  # the one left provides it alone again
                    del registry.shared[opt.name]
                    if opt.name not in registry.optimizations:
                        registry.optimizations[opt.name] = registry.qualified[f"{shared[0]}{QUALIFIER}{opt.name}"]
                        registry.providers[opt.name] = shared[0]
        for _hook, kinds, _base, _label in EXTENSION_POINTS:
            kinds.drop_provider(info.name)


def import_plugin_module(name: str) -> Any:
    """``-p NAME``: the module, found as ``python -m`` would, the current folder first."""
    import sys

    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _distribution_of(module: Any) -> tuple[str | None, str | None]:
    """The installed distribution providing ``module`` and its version; else the module's own
    ``__version__`` (a plugin file in the current folder)."""
    top = getattr(module, "__name__", "").split(".")[0]
    try:
        names = metadata.packages_distributions().get(top) or []
    except Exception:  # pragma: no cover - broken metadata
        names = []
    for name in names:
        try:
            return name, metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    version = getattr(module, "__version__", None)
    return None, version if isinstance(version, str) else None


def failed(plugins: Plugins) -> list[PluginInfo]:
    """The plugins that failed to import or register."""
    return [i for i in plugins.infos if i.error]


def _provided_by(pm: pluggy.PluginManager, plugin: object) -> list[Any]:
    """One plugin's ``register_optimizations``, called through pluggy (a hook caller restricted to
    that plugin), so pluggy's own calling rules (arguments, wrappers) apply."""
    others = [p for p in pm.get_plugins() if p is not plugin]
    results = pm.subset_hook_caller("register_optimizations", remove_plugins=others)()
    return [opt for result in results for opt in (result or [])]


def _collect_optimizations(pm: pluggy.PluginManager, infos: list[PluginInfo]) -> Registry:
    """Ask each plugin for its optimizations, one at a time so a failure names its plugin (and the
    registry records which plugin provides which key, and the names a plugin that failed declared)."""
    registry = Registry()
    by_name = {i.name: i for i in infos}
    for each in infos:
        registry.labels[each.name] = each.short_label()
        if each.source == "built-in":
            registry.builtins.add(each.name)
    for impl in pm.hook.register_optimizations.get_hookimpls():
        info = by_name.get(impl.plugin_name)
        provided: list[Any] = []
        try:
            provided = _provided_by(pm, impl.plugin)
            for opt in provided:
                if not isinstance(opt, Optimization):
                    raise TypeError(f"register_optimizations returned {type(opt).__name__}, not Optimization")
                refused = settings_problem(opt.settings)
                if refused:
                    raise TypeError(f"optimization {opt.name!r}: {refused}")
            names = [opt.name for opt in provided]
            twice = next((n for n in names if names.count(n) > 1), None)
            if twice:
                raise ValueError(f"optimization {twice!r} is declared twice")
        except Exception as exc:
            error = _error_text(exc)
            if info is not None:
                _fail(info, exc)
            registry.broken[impl.plugin_name] = error
            for opt in provided:
                if isinstance(opt, Optimization):
                    registry.declared.setdefault(opt.name, impl.plugin_name)
            continue
        for opt in provided:
            registry.add(opt, impl.plugin_name)
            if info is not None:
                info.provides.append(opt.name)
    for info in infos:
        if info.error:
            registry.broken.setdefault(info.name, info.error)
    return registry


def _collect_kinds(pm: pluggy.PluginManager, infos: list[PluginInfo], registry: Registry) -> None:
    """Fill each extension point's registry anew (its built-ins, then each plugin's kinds), one plugin
    at a time: a plugin whose hook fails, registers something that is not of the documented class,
    or takes a name another plugin has fails to load whole (named, with both providers)."""
    by_name = {i.name: i for i in infos}
    for hook_name, kinds, base, label in EXTENSION_POINTS:
        kinds.reset()  # its built-ins only
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            info = by_name.get(impl.plugin_name)
            found: list[Any] = []  # instances of ``base``: each has a ``name``
            others = [p for p in pm.get_plugins() if p is not impl.plugin]
            try:
                pm.subset_hook_caller(hook_name, remove_plugins=others)(register=found.append)
                for kind in found:
                    if not isinstance(kind, base):
                        raise TypeError(f"{hook_name} registered {type(kind).__name__}, not a {base.__name__}")
                    if kind.name in kinds and kinds.providers[kind.name] != impl.plugin_name:
                        raise ValueError(f"{kinds.what} {kind.name!r} is already provided by {kinds.providers[kind.name]!r}")
            except Exception as exc:
                if info is not None:
                    _fail(info, exc)
                registry.broken[impl.plugin_name] = _error_text(exc)
                continue
            for kind in found:
                kinds.register(kind.name, kind, impl.plugin_name)
                if info is not None:
                    info.provides.append(f"{label} {kind.name}")
