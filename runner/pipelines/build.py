"""From a validated recipe to a ready pipeline: device and dtype, model location, component
overrides, ``from_pretrained``, scheduler, optimizations in stage order, plugin hooks.

Everything a loaded pipeline alone can reveal (an unknown call parameter, an incompatible
scheduler, a component the pipeline does not have) is checked here, before the first image.
torch and diffusers are imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.abc
import inspect
import json
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..axes.registry import axis_kind
from ..base import environment, report
from ..base.errors import RecipeError, RunError, suggest
from ..base.quiet import quiet_libraries
from ..plan.matrix import SCHEDULER_AXIS, Job
from ..recipe.context import BuildContext  # a light module (recipe_runner.api exposes it)
from ..recipe.loading import LoadedRecipe, problem_at
from ..recipe.model import Recipe
from ..recipe.optimizations import Enabled, Unsupported, settle
from .sources import SOURCES, locate

TASK_PIPELINES = {
    "text-to-image": ("diffusers", "DiffusionPipeline"),
    "image-to-image": ("diffusers.pipelines.auto_pipeline", "AutoPipelineForImage2Image"),
    "inpainting": ("diffusers.pipelines.auto_pipeline", "AutoPipelineForInpainting"),
}


@dataclass
class Built:
    """A ready pipeline, the context it was built in, and the schedulers its jobs use."""

    pipe: Any
    context: BuildContext
    optimizations: list[Enabled]
    schedulers: dict[str, Any]  # scheduler key -> scheduler instance
    base_scheduler: Any = None  # the scheduler the model came with: from_config reads its config
    load_seconds: float = 0.0  # from_pretrained, components included
    setup_seconds: float = 0.0  # device placement, optimizations, pipeline_ready hooks
    swapped: dict[str, str] = field(default_factory=dict)  # component name -> what is in it (pipelines.py)

    def rebind(self, recipe: Recipe, loaded: LoadedRecipe | None, jobs: list[Job]) -> None:
        """Use this loaded pipeline for another recipe: check its parameters, make its schedulers."""
        check_parameters(self.pipe, recipe, loaded)
        self.pipe.scheduler = self.base_scheduler
        self.schedulers = build_schedulers(self.pipe, self.base_scheduler, jobs, recipe, loaded)
        self.context.recipe = recipe

    def use_scheduler(self, job: Job) -> None:
        scheduler = self.schedulers[scheduler_key(job.scheduler)]
        if self.pipe.scheduler is not scheduler:
            self.pipe.scheduler = scheduler


def use_safetensors(allow_pickle: bool) -> bool | None:
    """``from_pretrained``'s ``use_safetensors``: True (safetensors only) unless ``--allow-pickle``,
    then None (safetensors where present, pickled weights otherwise), never False (which refuses
    safetensors and so fails on a safetensors-only model)."""
    return None if allow_pickle else True


def scheduler_key(spec: dict[str, Any] | None) -> str:
    return json.dumps(spec, sort_keys=True, default=repr)


# --- device, dtype, location ----------------------------------------------------------------------

def detect_device(spec: str) -> str:
    """``auto``: cuda, then mps, then cpu. An explicit device that is absent is a RunError."""
    import torch

    if spec == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RunError(f"model.device = {spec!r}, but CUDA is not available on this machine")
        index = int(spec.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise RunError(f"model.device = {spec!r}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if spec == "mps" and not torch.backends.mps.is_available():
        raise RunError("model.device = 'mps', but MPS is not available on this machine")
    return spec


def choose_dtype(spec: str | None, device: str, warn: Callable[[str], None], key: str = "model.dtype") -> str:
    """The dtype to load in. ``auto``: float16 on CUDA and MPS, float32 on a CPU. float16 on a CPU
    falls back to float32 (CPU float16 kernels are slow or missing) with a one-line warning."""
    if spec in (None, "auto"):
        return "float32" if device == "cpu" else "float16"
    if spec == "float16" and device == "cpu":
        warn(f"{key} = \"float16\" on a CPU: using float32 instead")
        return "float32"
    return spec


def _holds_pickles(location: str) -> bool:
    """Whether a local model folder holds pickled weights (a missing safetensors file is then
    blamed on the pickle policy; otherwise the error says what is missing)."""
    from .safety import PICKLE_SUFFIXES

    root = Path(location)
    if not root.is_dir():
        return True  # a Hub id: diffusers' "no safetensors" means the repository has pickles only
    try:
        return any(p.suffix.lower() in PICKLE_SUFFIXES for p in root.glob("*/*") if p.is_file())
    except OSError:
        return False


def _error(loaded: LoadedRecipe | None, key: str, message: str, hint: str | None = None) -> RecipeError:
    return RecipeError([problem_at(loaded, key, message, hint)])


# --- loading ---------------------------------------------------------------------------------------

def read_model_index(location: str, revision: str | None) -> dict[str, Any]:
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(location, revision=revision))
    except Exception as exc:
        raise RunError(f"cannot read the pipeline config (model_index.json) of {location!r}: {exc}") from exc


def load_components(recipe: Recipe, loaded: LoadedRecipe | None, index: dict[str, Any], ctx: BuildContext) -> dict[str, Any]:
    """Each ``[components.<name>]``, loaded with the class the pipeline declares for that name."""
    components: dict[str, Any] = {}
    for name, spec in recipe.components.items():
        key = f"components.{name}"
        folder = loaded.origin(f"{key}.id").folder if loaded else Path.cwd()
        location = locate(spec.id, folder, f"{key}.id", loaded)
        components[name] = load_component(name, spec, location, index, ctx, loaded)
    return components


def load_component(name: str, spec: Any, location: str, index: dict[str, Any], ctx: BuildContext,
                   loaded: LoadedRecipe | None = None) -> Any:
    """One component (a ``ComponentSpec`` found at ``location``), loaded with the class the
    pipeline's ``model_index.json`` declares for ``name``, in its dtype (default: the pipeline's)."""
    key = f"components.{name}"
    known = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, (list, tuple))]
    entry = index.get(name)
    if name not in known or not entry or entry[0] is None:
        raise _error(loaded, key, f"the pipeline has no component {name!r}", None if not known else _hint(name, known))
    library, class_name = entry[0], entry[1]
    module = importlib.import_module(library if library in ("diffusers", "transformers") else f"diffusers.pipelines.{library}")
    cls = getattr(module, class_name)
    dtype = choose_dtype(spec.dtype or ctx.dtype, ctx.device, ctx.warn, f"{key}.dtype")
    kwargs: dict[str, Any] = {"dtype": _torch_dtype(dtype), "use_safetensors": use_safetensors(ctx.allow_pickle)}
    for option in ("subfolder", "revision", "variant"):
        if getattr(spec, option) is not None:
            kwargs[option] = getattr(spec, option)
    try:
        return cls.from_pretrained(location, **kwargs)
    except Exception as exc:
        raise RunError(f"{key}: cannot load {spec.id!r} as {class_name}: {_first_line(exc)}") from exc


def _hint(name: str, choices: list[str]) -> str:
    return suggest(name, choices, "the pipeline's components: " + ", ".join(choices)) or ""


def _torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:400]


def load_pipeline(recipe: Recipe, loaded: LoadedRecipe | None, ctx: BuildContext, extra: dict[str, Any]) -> Any:
    module_name, class_name = TASK_PIPELINES[recipe.model.task]
    cls = getattr(importlib.import_module(module_name), class_name)
    index = read_model_index(ctx.location, recipe.model.revision)
    components = load_components(recipe, loaded, index, ctx)
    kwargs: dict[str, Any] = {"dtype": ctx.torch_dtype, "use_safetensors": use_safetensors(ctx.allow_pickle)}
    if recipe.model.revision is not None:
        kwargs["revision"] = recipe.model.revision
    if recipe.model.variant is not None:
        kwargs["variant"] = recipe.model.variant
    if ctx.trust_remote_code and recipe.model.trust_remote_code:  # diffusers' default: no remote code
        kwargs["trust_remote_code"] = True
    if ctx.trust_remote_code and recipe.model.custom_pipeline:
        kwargs["custom_pipeline"] = recipe.model.custom_pipeline
    kwargs.update(extra)
    kwargs.update(components)
    try:
        pipe = cls.from_pretrained(ctx.location, **kwargs)
    except Exception as exc:
        if "safetensors" in str(exc).lower() and not ctx.allow_pickle and _holds_pickles(ctx.location):
            raise _error(loaded, "model.id", f"cannot load {recipe.model.id!r}: only safetensors weights load "
                         f"({_first_line(exc)})", "pickled .bin/.ckpt weights need --allow-pickle") from exc
        raise RunError(f"cannot load model {recipe.model.id!r}: {_first_line(exc)}") from exc
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe


# --- checks that need the pipeline -----------------------------------------------------------------

def call_parameters(pipe: Any) -> list[str]:
    """Named parameters of ``pipe.__call__`` (what would only land in ``**kwargs`` is excluded)."""
    sig = inspect.signature(pipe.__call__)
    return [n for n, p in sig.parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


def check_parameters(pipe: Any, recipe: Recipe, loaded: LoadedRecipe | None) -> None:
    accepted = call_parameters(pipe)
    names = [(f"params.{k}", k) for k in recipe.params]
    names += [(f"matrix.axes.{k}", k) for k in recipe.matrix.axes if axis_kind(k) == "params"]
    problems = []
    for key, name in names:
        if name not in accepted:
            hint = _hint(name, accepted)
            if name in ("strength",) and recipe.model.task == "text-to-image":
                hint = 'strength is for image-to-image and inpainting: set model.task'
            err = _error(loaded, key, f"not a parameter of {type(pipe).__name__}", hint)
            problems.extend(err.problems)
    if problems:
        raise RecipeError(problems)


def make_scheduler(pipe: Any, base: Any, spec: dict[str, Any], key: str, loaded: LoadedRecipe | None) -> Any:
    """``<name>.from_config(<the pipeline's scheduler config>, **options)``, after checking that
    the class exists, is compatible with the pipeline and takes those options."""
    import diffusers

    name, options = spec["name"], dict(spec.get("options") or {})
    compatible = sorted({c.__name__ for c in getattr(base, "compatibles", [])} | {type(base).__name__})
    found = getattr(diffusers, name, None)
    if not (isinstance(found, type) and name.endswith("Scheduler")):
        raise _error(loaded, key, f"unknown scheduler {name!r}", _hint(name, compatible) + f"; compatible: {', '.join(compatible)}")
    cls: Any = found
    if name not in compatible:
        raise _error(loaded, key, f"{name} is not compatible with {type(pipe).__name__}",
                     "compatible: " + ", ".join(compatible))
    accepted = [n for n in inspect.signature(cls).parameters if n != "self"]
    for option in options:
        if option not in accepted:
            raise _error(loaded, f"scheduler.options.{option}" if key == "scheduler.name" else key,
                         f"{name} has no option {option!r}", _hint(option, accepted))
    try:
        return cls.from_config(base.config, **options)
    except Exception as exc:
        raise _error(loaded, key, f"cannot build {name}: {_first_line(exc)}") from exc


def build_schedulers(pipe: Any, base: Any, jobs: list[Job], recipe: Recipe, loaded: LoadedRecipe | None) -> dict[str, Any]:
    """One scheduler instance per distinct scheduler of the jobs (the scheduler axis)."""
    schedulers: dict[str, Any] = {}
    key = f"matrix.axes.{SCHEDULER_AXIS}" if SCHEDULER_AXIS in recipe.matrix.axes else "scheduler.name"
    for job in jobs:
        k = scheduler_key(job.scheduler)
        if k not in schedulers:
            schedulers[k] = base if job.scheduler is None else make_scheduler(pipe, base, job.scheduler, key, loaded)
    return schedulers


# --- the whole build -------------------------------------------------------------------------------

def make_context(recipe: Recipe, loaded: LoadedRecipe | None, enabled: list[Enabled], *, allow_pickle: bool = False,
            trust_remote_code: bool = False, warn: Callable[[str], None] = report.warn) -> BuildContext:
    """Everything decided before loading: device, dtype, location, and each optimization's check."""
    quiet_libraries()
    try:
        device = detect_device(recipe.model.device)
    except RunError as exc:  # located: the key that asked for the device, with its file and line
        raise RecipeError([problem_at(loaded, "model.device", str(exc), 'use "auto" or "cpu"')]) from exc
    dtype = choose_dtype(recipe.model.dtype, device, warn)
    folder = loaded.origin("model.id").folder if loaded else Path.cwd()
    location = locate(recipe.model.id, folder, "model.id", loaded)
    ctx = BuildContext(recipe, device, dtype, recipe.model.task, location,
                       enabled=[e.name for e in enabled], allow_pickle=allow_pickle,
                       trust_remote_code=trust_remote_code, warn=warn, loaded=loaded)
    run_checks(enabled, ctx, loaded)
    return ctx


def run_checks(enabled: list[Enabled], ctx: BuildContext, loaded: LoadedRecipe | None,
               waits: Callable[[Enabled, str], None] | None = None) -> None:
    """Each enabled optimization's ``check``, in stage order: one that raises :class:`Unsupported`
    stops the recipe (RecipeError) or, ``required = false``, is skipped with a warning.

    ``waits`` (``--dry-run``): the checks run with torch, diffusers and transformers out of reach; a
    check that would import one is not decided now: ``waits(item, module)`` is told instead."""
    problem = functools.partial(problem_at, loaded)
    for item in enabled:
        if item.optimization.check is None:
            continue
        guard = HeavyImports() if waits is not None else None
        try:
            with guard or contextlib.nullcontext():
                item.call("check", item.settings, ctx)
        except Exception as exc:  # Unsupported, or what a check that needs torch raised without it
            if guard is not None and guard.refused and waits is not None:
                waits(item, guard.refused[0])
                continue
            if not isinstance(exc, Unsupported):
                raise
            settle(item, exc, problem, ctx.warn)
    ctx.enabled = [e.name for e in enabled if e.status != "skipped"]


HEAVY = ("torch", "diffusers", "transformers")  # what --dry-run never imports


class NeedsLibraries(ImportError):
    """A check run by ``--dry-run`` would import torch, diffusers or transformers."""


class HeavyImports(importlib.abc.MetaPathFinder):
    """While active (a context manager), importing torch, diffusers or transformers raises
    :class:`NeedsLibraries` (nothing of them is loaded); ``refused`` lists what was asked for."""

    def __init__(self) -> None:
        self.refused: list[str] = []

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        top = fullname.partition(".")[0]
        if top in HEAVY and top not in sys.modules:
            self.refused.append(top)
            raise NeedsLibraries(f"{top} is not imported by --dry-run", name=top)
        return None

    def __enter__(self) -> HeavyImports:
        sys.meta_path.insert(0, self)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.meta_path.remove(self)


def light_device(spec: str) -> str:
    """The device a run would pick, told without importing torch (``--dry-run``): an explicit
    device as written (whether it is there is decided by :func:`recipe_runner.base.environment.device_unavailable`
    while preparing, or by the run); ``auto``: cpu when neither CUDA nor MPS can be here, else cuda
    when a GPU driver is present, mps on Apple silicon."""
    probable = environment.probable_device(spec)
    if probable is not None:
        return probable
    if any(Path(p).exists() for p in ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd")):
        return "cuda"
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "mps"
    return "cpu"


def check_context(recipe: Recipe, loaded: LoadedRecipe | None, enabled: list[Enabled], *, allow_pickle: bool = False,
                  trust_remote_code: bool = False, warn: Callable[[str], None] = report.warn,
                  waits: Callable[[Enabled, str], None] | None = None) -> BuildContext:
    """:func:`make_context` for ``--dry-run``: the same checks on the same context, with nothing
    loaded, built or downloaded and torch not imported (see :func:`light_device`, :func:`run_checks`);
    a model its source has not made yet is given to the checks as its id."""
    device = light_device(recipe.model.device)
    dtype = choose_dtype(recipe.model.dtype, device, lambda _: None)  # the run says it
    source = SOURCES.of(recipe.model.id)
    folder = loaded.origin("model.id").folder if loaded else Path.cwd()
    location = locate(recipe.model.id, folder, "model.id", loaded) if source.ready(recipe.model.id) else recipe.model.id
    ctx = BuildContext(recipe, device, dtype, recipe.model.task, location,
                       enabled=[e.name for e in enabled], allow_pickle=allow_pickle,
                       trust_remote_code=trust_remote_code, warn=warn, loaded=loaded)
    run_checks(enabled, ctx, loaded, waits=waits if waits is not None else lambda item, module: None)
    return ctx


def build(recipe: Recipe, loaded: LoadedRecipe | None, jobs: list[Job], enabled: list[Enabled], hook: Any,
          ctx: BuildContext) -> Built:
    """Load the pipeline and make it ready: the one place where stage order is carried out."""
    import time

    start = time.perf_counter()
    active = [e for e in enabled if e.status != "skipped"]
    problem = functools.partial(problem_at, loaded)
    extra: dict[str, Any] = {}
    for item in active:
        if item.optimization.load_kwargs is not None:
            try:
                extra.update(item.call("load_kwargs", item.settings, ctx))
            except Unsupported as exc:
                settle(item, exc, problem, ctx.warn)
    active = [e for e in active if e.status != "skipped"]
    pipe = load_pipeline(recipe, loaded, ctx, extra)
    loaded_at = time.perf_counter()
    check_parameters(pipe, recipe, loaded)
    base_scheduler = pipe.scheduler
    schedulers = build_schedulers(pipe, base_scheduler, jobs, recipe, loaded)

    def apply(item: Enabled) -> None:
        try:
            details = item.call("apply", pipe, item.settings, ctx)
            item.status = "applied"
            if isinstance(details, dict):
                item.details.update(details)
        except Unsupported as exc:
            settle(item, exc, problem, ctx.warn)

    before_placement = [e for e in active if e.optimization.stage in ("load", "components")]
    after_placement = [e for e in active if e not in before_placement]
    for item in before_placement:
        apply(item)
    if not any(e.optimization.places_model for e in active):
        pipe.to(ctx.device)
    for item in after_placement:
        apply(item)
    hook.pipeline_ready(pipe=pipe, recipe=recipe, context=ctx)
    return Built(pipe, ctx, enabled, schedulers, base_scheduler, loaded_at - start, time.perf_counter() - loaded_at)


def derive(built: Built, recipe: Recipe, loaded: LoadedRecipe | None, jobs: list[Job], hook: Any,
           ctx: BuildContext) -> Built:
    """A pipeline for another task on the same loaded components (``AutoPipelineFor*.from_pipe``):
    image-to-image and inpainting reuse a text-to-image pipeline's weights without reloading."""
    import time

    start = time.perf_counter()
    cls: Any
    if recipe.model.task == "text-to-image":
        from diffusers import AutoPipelineForText2Image

        cls = AutoPipelineForText2Image
    else:
        module_name, class_name = TASK_PIPELINES[recipe.model.task]
        cls = getattr(importlib.import_module(module_name), class_name)
    built.pipe.scheduler = built.base_scheduler  # not the scheduler a previous recipe swapped in
    try:
        pipe = cls.from_pipe(built.pipe)
    except Exception as exc:
        raise RunError(f"cannot make a {recipe.model.task} pipeline from the loaded {type(built.pipe).__name__}: "
                       f"{_first_line(exc)}") from exc
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    check_parameters(pipe, recipe, loaded)
    base = pipe.scheduler
    schedulers = build_schedulers(pipe, base, jobs, recipe, loaded)
    hook.pipeline_ready(pipe=pipe, recipe=recipe, context=ctx)
    return Built(pipe, ctx, built.optimizations, schedulers, base, 0.0, time.perf_counter() - start)
