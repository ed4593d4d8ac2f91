"""Every check a recipe can get before any weights load, in one pass (every problem reported at
once): parameter values (:mod:`recipe_runner.plan.checks`), sizes, and, from the model's
``model_index.json``, call parameters and scheduler names against the pipeline class.

- :func:`problems` is light (no torch, no diffusers import, no network): ``prepare`` runs it, so
  ``--dry-run`` does all of it for tiny models, local folders and Hub models already in the local
  Hub cache. :func:`notes` says what waits for the model.
- :func:`before_loading` runs after every recipe on the command line validated and before the first
  image of the first one: it fetches ``model_index.json`` (and the small config files) of Hub models
  not in the cache, with a fast, clear message when the Hub cannot be reached, and checks
  scheduler compatibility with the scheduler class the model declares.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base.errors import Problem, RecipeError, suggest
from ..plan import checks, inputs
from ..plan.variants import relabel
from ..recipe.loading import LoadedRecipe, problem_at
from . import info as pipeline_info
from .info import ModelInfo
from .sources import SOURCES, resolve_id

if TYPE_CHECKING:
    from ..plan.matrix import Job
    from ..plan.prepared import Prepared
    from ..recipe.model import Recipe

LOCAL_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")
AFTER_LOADING = "scheduler compatibility, component classes, what each optimization does to the pipeline, what only torch can tell of the device, input image decoding"


@dataclass
class Found:
    """What the model is known to be before loading (None: not known without the network)."""

    info: ModelInfo | None
    problems: list[Problem] = field(default_factory=list)
    waits: str | None = None  # why the model-dependent checks wait, when they do


def _is_local(value: str) -> bool:
    return value.startswith(LOCAL_PREFIXES) or (len(value) > 1 and value[1] == ":")


HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9_.-]+)?")


def looks_like_a_path(model_id: str, folder: Path) -> bool:
    """An id not written as a path that is nonetheless meant as one: it cannot be a Hub id (more
    than two segments, a character the Hub refuses), or its first segment is a folder beside the
    recipe (``models/sd15`` where ``models/`` exists)."""
    if not HUB_ID.fullmatch(model_id) or "--" in model_id or ".." in model_id:
        return True
    return "/" in model_id and (folder / model_id.split("/")[0]).is_dir()


def _shown(path: Path) -> str:
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative


def find_model(recipe: Recipe, loaded: LoadedRecipe | None) -> Found:
    """The model's :class:`ModelInfo` from its plugin source (``tiny:``), a local folder or the local
    Hub cache (the id resolved first: an alias, ``~``, ``${VAR}``)."""
    written, key = recipe.model.id, "model.id"
    try:
        model_id = resolve_id(written, key, loaded).id
    except RecipeError as exc:
        return Found(None, exc.problems)
    source = SOURCES.plugin_source(model_id)
    if source is not None:
        problem = source.problem(model_id)
        if problem is not None:
            return Found(None, [problem_at(loaded, key, *problem)])
        return Found(source.info(model_id))
    folder = loaded.origin(key).folder if loaded else Path.cwd()
    candidate = (folder / Path(model_id).expanduser()).resolve()
    if candidate.is_dir():
        info = pipeline_info.from_folder(candidate)
        return Found(info, waits=None if info else f"{candidate} has no readable model_index.json")
    if _is_local(model_id):
        return Found(None, [problem_at(loaded, key, f"no such folder: {candidate}")])
    if looks_like_a_path(model_id, folder) and (
            not HUB_ID.fullmatch(model_id) or pipeline_info.hub_cached(model_id, recipe.model.revision) is None):
        hint = None if not HUB_ID.fullmatch(model_id) else f"or, if {model_id!r} is a Hub id, it is not in the local Hub cache"
        return Found(None, [problem_at(loaded, key, f"no such folder: {_shown(candidate)}", hint)])
    if recipe.model.custom_pipeline:
        return Found(None, waits="model.custom_pipeline: its class is known once its code loads")
    info = pipeline_info.hub_cached(model_id, recipe.model.revision)
    return Found(info, waits=None if info else f"{model_id} is not in the local Hub cache yet")


def _scheduler_specs(jobs: Sequence[Job], recipe: Recipe) -> list[tuple[str, dict[str, Any]]]:
    """(dotted key, {"name", "options"}) of each distinct scheduler the jobs use."""
    axis = recipe.matrix.axes.get("scheduler")
    seen: list[tuple[str, dict[str, Any]]] = []
    for job in jobs:
        spec = job.scheduler
        if spec is None or any(spec == s for _, s in seen):
            continue
        if axis is not None:
            index = next((i for i, v in enumerate(axis) if (v if isinstance(v, str) else v.get("name")) == spec["name"]), 0)
            seen.append((f"matrix.axes.scheduler.{index}", spec))
        else:
            seen.append(("scheduler.name", spec))
    return seen


def scheduler_problems(jobs: Sequence[Job], recipe: Recipe, loaded: LoadedRecipe | None) -> list[Problem]:
    """Scheduler class names and options against the installed diffusers' schedulers."""
    specs = _scheduler_specs(jobs, recipe)
    known = pipeline_info.scheduler_names() if specs else []
    if not known:
        return []
    problems: list[Problem] = []
    for key, spec in specs:
        name = spec["name"]
        if name not in known:
            problems.append(problem_at(loaded, key, f"unknown scheduler {name!r}",
                                       suggest(name, known, "see diffusers' schedulers")))
            continue
        accepted = pipeline_info.parameters(name, "__init__")
        if accepted is None:
            continue
        for option, value in (spec.get("options") or {}).items():
            okey = f"scheduler.options.{option}" if key == "scheduler.name" else key
            declared = accepted.get(option)
            if declared is None:
                problems.append(problem_at(loaded, okey, f"{name} has no option {option!r}", suggest(option, accepted)))
                continue
            message = checks.type_message(value, declared.type, f"as {name} declares")
            if message is not None:
                problems.append(problem_at(loaded, okey, message))
    return problems


def _size_keys(data: dict[str, Any]) -> dict[str, str]:
    keys: dict[str, str] = {}
    for key, name, _ in checks.parameter_values(data):
        if name in ("height", "width"):
            keys.setdefault(name, key.rsplit(".", 1)[0] if key.startswith("matrix.") else key)
    return keys


def problems(recipe: Recipe, loaded: LoadedRecipe, jobs: Sequence[Job]) -> list[Problem]:
    """Every light check of a validated recipe (see the module doc)."""
    problem = loaded.problem
    found = find_model(recipe, loaded)
    info = found.info
    multiple = info.vae_scale_factor if info and info.vae_scale_factor else checks.DEFAULT_MULTIPLE
    out = list(found.problems)
    out += component_problems(recipe, problem, info)
    out += checks.value_problems(loaded.data, problem, multiple)
    reported = {p.key for p in out if p.key}
    if not any(k.startswith(("params.height", "params.width", "matrix.axes.height", "matrix.axes.width"))
               for k in reported):
        batch = recipe.run.batch_size if isinstance(recipe.run.batch_size, int) else 1
        out += checks.size_problems(list(jobs), problem, batch, info.default_size if info else None,
                                    _size_keys(loaded.data))
    if info is not None:
        out += call_problems(recipe, loaded, info, skip={p.key for p in out if p.key})
    out += scheduler_problems(jobs, recipe, loaded)
    return _unique(out)


def component_problems(recipe: Recipe, problem: Callable[..., Problem], info: ModelInfo | None) -> list[Problem]:
    """``[components.<name>]`` names the pipeline's ``model_index.json`` does not declare."""
    if info is None or not info.index:
        return []
    known = [k for k, v in info.index.items() if not k.startswith("_") and isinstance(v, list)]
    return [problem(f"components.{name}", f"{info.class_name} has no component {name!r}",
                    suggest(name, known, "its components: " + ", ".join(known)))
            for name in recipe.components if name not in known]


def call_problems(recipe: Recipe, loaded: LoadedRecipe, info: ModelInfo, skip: set[str],
                  importing: bool = False) -> list[Problem]:
    """Call parameter names and values against the task's pipeline class's ``__call__``."""
    class_name = pipeline_info.task_class(info.class_name, recipe.model.task)
    declared = pipeline_info.parameters(class_name) if class_name else None
    if declared is None and importing and class_name:
        declared = _imported_parameters(class_name)
    if declared is None or class_name is None:
        return []
    return checks.signature_problems(loaded.data, loaded.problem, class_name, declared, recipe.model.task, skip)


def _imported_parameters(class_name: str) -> dict[str, checks.Parameter] | None:
    """The real ``__call__`` signature of an importable diffusers class (runs only, never light)."""
    import inspect

    import diffusers

    cls = getattr(diffusers, class_name, None)
    if cls is None:
        return None
    found = {}
    for name, p in inspect.signature(cls.__call__).parameters.items():
        if name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        declared = checks.from_typing(p.annotation)
        if declared == checks.ANY and p.default is not p.empty:
            declared = checks.from_default(p.default)
        found[name] = checks.Parameter(name, declared, p.default is not p.empty)
    return found


def _unique(found: list[Problem]) -> list[Problem]:
    seen: set[tuple[str | None, str]] = set()
    out = []
    for p in found:
        if (p.key, p.message) not in seen:
            seen.add((p.key, p.message))
            out.append(p)
    return out


def notes(recipe: Recipe, loaded: LoadedRecipe | None) -> list[str]:
    """What --dry-run checked and what waits for the model, in plain words."""
    found = find_model(recipe, loaded)
    now = ("parameter types and ranges, finite numbers, sizes, plugin names and settings, optimizations' combinations, "
           "packages and device (told without torch), input files")
    if found.info is not None:
        cls = pipeline_info.task_class(found.info.class_name, recipe.model.task) or found.info.class_name
        now += f", {cls} call parameters (model_index.json), scheduler names and options"
        return [f"checked now: {now}", f"after loading: {AFTER_LOADING}"]
    now += ", scheduler names and options"
    return [f"checked now: {now}",
            f"waits for the model ({found.waits or 'unknown'}): call parameters against the pipeline class, "
            f"{AFTER_LOADING}"]


# --- runs: after every recipe validated, before the first image -------------------------------------


def _before_loading(recipe: Recipe, loaded: LoadedRecipe, jobs: Sequence[Job]) -> list[Problem]:
    found: list[Problem] = []
    found_model = find_model(recipe, loaded)
    if found_model.problems:
        return found_model.problems
    info = found_model.info
    if info is None and not recipe.model.custom_pipeline and SOURCES.plugin_source(recipe.model.id) is None:
        try:
            info = fetch_hub_info(resolve_id(recipe.model.id, "model.id", loaded).id, recipe.model.revision, loaded)
        except RecipeError as exc:
            return exc.problems
        if info is not None:
            found += call_problems(recipe, loaded, info, skip=set(), importing=True)
            found += checks.size_problems(list(jobs), loaded.problem,
                                          recipe.run.batch_size if isinstance(recipe.run.batch_size, int) else 1,
                                          info.default_size, _size_keys(loaded.data))
    elif info is not None and pipeline_info.parameters(
            pipeline_info.task_class(info.class_name, recipe.model.task) or info.class_name) is None:
        found += call_problems(recipe, loaded, info, skip=set(), importing=True)
    if info is not None:
        found += compatibility_problems(jobs, recipe, loaded, info)
    return found


def before_loading(items: Sequence[Prepared]) -> None:
    """Run-only checks of every prepared recipe (see the module doc), each variant's model on its
    own jobs (a ``model`` axis); RecipeError with them all."""
    found: list[Problem] = []
    for item in items:
        for variant in item.variants:
            found += relabel(_before_loading(variant.recipe, variant.loaded, variant.jobs), variant)
    if found:
        raise RecipeError(_unique(found))


def compatibility_problems(jobs: Sequence[Job], recipe: Recipe, loaded: LoadedRecipe | None,
                           info: ModelInfo) -> list[Problem]:
    """Each scheduler of the jobs against the ``compatibles`` of the scheduler the model declares."""
    specs = _scheduler_specs(jobs, recipe)
    if not specs or not info.scheduler_class:
        return []
    import diffusers

    base = getattr(diffusers, info.scheduler_class, None)
    if base is None:
        return []
    get = getattr(base, "_get_compatibles", None)  # the classmethod behind the instances' ``compatibles``
    if get is None:
        return []
    compatible = sorted({c.__name__ for c in get()} | {base.__name__})
    found = []
    for key, spec in specs:
        name = spec["name"]
        if getattr(diffusers, name, None) is not None and name not in compatible:
            found.append(problem_at(loaded, key, f"{name} is not compatible with {info.class_name}",
                                    "compatible: " + ", ".join(compatible)))
    return found


HUB_ADVICE = ("pre-download it where the Hub is reachable with `hf download {repo}` (or "
              "`huggingface-cli download {repo}`), then run with HF_HUB_OFFLINE=1")


def fetch_hub_info(repo: str, revision: str | None, loaded: LoadedRecipe | None) -> ModelInfo | None:
    """Download a Hub model's model_index.json and small configs (into the Hub cache). A Hub that
    cannot be reached is a fast RecipeError saying so, and how to pre-download the model."""

    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:  # pragma: no cover
        return None
    key = "model.id"
    if inputs.offline():
        raise RecipeError([problem_at(loaded, key, f"{repo!r} is not in the local Hub cache and the run is offline "
                                      "(HF_HUB_OFFLINE / RECIPE_RUNNER_OFFLINE)", HUB_ADVICE.format(repo=repo))])

    def read(sub: str) -> dict[str, Any] | None:
        try:
            path = hf_hub_download(repo, sub, revision=revision, etag_timeout=HUB_TIMEOUT)
        except LocalEntryNotFoundError:
            raise
        except EntryNotFoundError:
            return None
        return pipeline_info.read_json(Path(path))

    unreachable = hub_unreachable()
    if unreachable:
        raise RecipeError([problem_at(loaded, key, f"the Hugging Face Hub cannot be reached ({unreachable}) and "
                                      f"{repo!r} is not in the local Hub cache", HUB_ADVICE.format(repo=repo))])
    try:
        info = pipeline_info.from_folder(Path(repo), read)
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise RecipeError([problem_at(loaded, key, f"no such model on the Hub: {_first_line(exc)}")]) from exc
    except Exception as exc:
        if _is_connection_error(exc):
            raise RecipeError([problem_at(
                loaded, key, f"the Hugging Face Hub cannot be reached ({_first_line(exc)}) and {repo!r} is not in the "
                "local Hub cache", HUB_ADVICE.format(repo=repo))]) from exc
        raise
    if info is None:
        raise RecipeError([problem_at(loaded, key, f"{repo!r} has no model_index.json: not a diffusers pipeline")])
    return info


HUB_TIMEOUT = 5.0


def hub_unreachable(timeout: float = HUB_TIMEOUT) -> str | None:
    """One request to the Hub endpoint (HF_ENDPOINT), no retries: why it cannot be reached, or
    None. huggingface_hub retries a refused connection five times with backoff (about 25 s)."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    url = constants.ENDPOINT.rstrip("/") + "/api/models"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):  # noqa: S310
            return None
    except urllib.error.HTTPError:  # an answer, even an error, means the Hub is there
        return None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{url}: {reason}"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:200]


def _is_connection_error(exc: BaseException) -> bool:
    names = {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "ConnectTimeout",
             "ConnectError", "ReadTimeout", "TimeoutException"}
    current: BaseException | None = exc
    while current is not None:
        if type(current).__name__ in names or isinstance(current, (ConnectionError, TimeoutError)):
            return True
        current = current.__cause__ or current.__context__
    return False
