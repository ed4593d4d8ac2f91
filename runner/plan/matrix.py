"""What to generate: the recipe's ``[matrix]`` expanded into jobs, one image each. Pure and
deterministic: the same recipe always gives the same jobs in the same order.

Matrix order (product mode), outermost first, by what changing the value costs: the axes that
change what is loaded (``model``, then ``optimizations.<key>``, ``components.<name>``, ``lora``,
``lora_scale``: see :mod:`recipe_runner.plan.variants`), the scheduler axis, the call-parameter axes in
the order written, the prompts (each with every combination of the ``[matrix.vars]`` it uses), the
input images, the seeds. Each model is therefore loaded once, and jobs that share their call
parameters are consecutive, so batches stay full.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..axes.call import SCHEDULER_AXIS
from ..axes.registry import KINDS, axis_kind, is_build_axis
from ..base.errors import Problem, RecipeError, suggest
from ..recipe.loading import LoadedRecipe, problem_at
from ..recipe.model import RESERVED_PARAMS, Recipe

TEMPLATED_PARAMS = ("negative_prompt", "negative_prompt_2")  # {var} placeholders render here too
_FORMATTER = string.Formatter()


@dataclass(frozen=True, slots=True)
class Job:
    """One image: everything that varies from one image of the recipe to the next."""

    index: int
    prompt: str
    seed: int
    image: str | None = None  # as written in the recipe
    mask_image: str | None = None
    vars: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # every call parameter of this image
    scheduler: dict[str, Any] | None = None  # {"name", "options"}; None: the pipeline's own
    axes: dict[str, Any] = field(default_factory=dict)  # this job's value of each [matrix.axes] axis
    input_size: Any = None  # the sizes of its input image (and mask), once read: jobs of one batch share it
    build: str = "{}"  # its pipeline, resolved, as canonical JSON: see plan.variants.resolved_build

    def identity(self) -> dict[str, Any]:
        """What the job *is*, resolved: the pipeline that makes it (model, components,
        optimizations, LoRA, generator device: :attr:`build`), the scheduler, every call parameter
        (fixed or an axis value), the prompt text after the vars, the seed, the input image and
        mask. However the recipe spells it (a [params] value or an axis value, a literal prompt or
        one built from vars), equal jobs have equal identities; never its position in the matrix,
        so adding a seed or a prompt leaves the others' alone."""
        return {"build": self.build, "scheduler": self.scheduler, "params": self.params, "prompt": self.prompt,
                "seed": self.seed, "image": self.image, "mask_image": self.mask_image}

    def cell(self) -> dict[str, Any]:
        """Where the job stands in the recipe as written: prompt, seed, input, var and axis values
        (the identity file names had before they came from :meth:`identity`). An edited
        parameter keeps a job's cell: the image it makes then replaces the cell's old one."""
        return {"prompt": self.prompt, "seed": self.seed, "image": self.image, "mask_image": self.mask_image,
                "vars": dict(sorted(self.vars.items())), "axes": dict(sorted(self.axes.items()))}

    def build_axes(self) -> dict[str, Any]:
        """This job's values of the axes that change the pipeline (model, components, LoRA,
        optimizations): jobs with equal values share one pipeline (see recipe_runner.plan.variants)."""
        return {k: v for k, v in self.axes.items() if is_build_axis(k)}

    @property
    def variant(self) -> str:
        """The canonical text of :meth:`build_axes` ("{}" when the recipe has no such axis)."""
        build = self.build_axes()
        return json.dumps(build, sort_keys=True, ensure_ascii=False, default=repr) if build else "{}"

    def identity_digest(self) -> str:
        return _digest(self.identity())

    def filename(self, ext: str) -> str:
        """``<prompt-slug>-s<seed>-<8 hex digits of the identity>.<ext>``: the same job always gets
        the same name, whatever else the matrix holds and however the recipe spells it."""
        return f"{slug(self.prompt)}-s{self.seed}-{self.identity_digest()[:8]}.{ext}"

    def cell_name(self) -> str:
        """``<prompt-slug>-s<seed>-<8 hex digits of the cell>``, without extension: the name the
        job's file had before names came from the resolved job (an older folder's files are named
        so), and what pairs an edited job with the image it replaces."""
        return f"{slug(self.prompt)}-s{self.seed}-{_digest(self.cell())[:8]}"

    def same_job_key(self) -> tuple[Any, ...]:
        """A cheap stand-in for :meth:`identity` (equal exactly when the identities are): no JSON
        of the whole job, so 100,000 jobs are grouped in a fraction of a second."""
        return (self.build, self.prompt, self.seed, self.image, self.mask_image, repr(sorted(self.params.items())),
                _canonical(self.scheduler) if self.scheduler else None)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr)


def _digest(value: Any) -> str:
    return hashlib.sha256(_canonical(value).encode()).hexdigest()


def same_as(jobs: list[Job]) -> dict[int, int]:
    """The jobs that another job of the list already makes: index -> the index of the first job
    with the same identity (``lora = ["none", ...]`` x ``lora_scale``: each scale's "none" job is
    one image). Each is generated once, and shown in every cell that asks for it."""
    first: dict[tuple[Any, ...], int] = {}
    out: dict[int, int] = {}
    for job in jobs:
        maker = first.setdefault(job.same_job_key(), job.index)
        if maker != job.index:
            out[job.index] = maker
    return out


def slug(text: str, limit: int = 48) -> str:
    """A file-name-safe, lowercase rendering of a prompt: 'Old chief, 50mm' -> 'old-chief-50mm'."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return cleaned[:limit].rstrip("-") or "image"


def placeholders(template: str) -> list[str]:
    """The ``{name}`` fields of a template, in order; ValueError when the braces are unbalanced."""
    names = []
    for _, name, spec, conversion in _FORMATTER.parse(template):
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"{{{name}}} is not a placeholder: use {{name}}, or {{{{ }}}} for a brace")
        names.append(name)
    return names


def render(template: str, values: dict[str, str]) -> str:
    return template.format_map(values) if "{" in template or "}" in template else template


def _scheduler_values(recipe: Recipe) -> list[dict[str, Any] | None]:
    values = recipe.matrix.axes.get(SCHEDULER_AXIS)
    if values is None:
        if recipe.scheduler is None:
            return [None]
        return [{"name": recipe.scheduler.name, "options": dict(recipe.scheduler.options)}]
    options = dict(recipe.scheduler.options) if recipe.scheduler else {}
    out: list[dict[str, Any] | None] = []
    for value in values:
        if isinstance(value, str):
            out.append({"name": value, "options": options})
        else:  # a table, checked in _check
            out.append({"name": value["name"], "options": dict(value.get("options", {}))})
    return out


def _check(recipe: Recipe, loaded: LoadedRecipe | None) -> list[Problem]:
    """Cross-key rules of [matrix] that the per-key models cannot see."""
    problems: list[Problem] = []

    def fail(key: str, message: str, hint: str | None = None) -> None:
        problems.append(problem_at(loaded, key, message, hint))

    m = recipe.matrix
    declared = set(m.vars)
    used: set[str] = set()
    templates = [(f"matrix.prompts.{i}", p) for i, p in enumerate(m.prompts)]
    templates += [(f"params.{k}", recipe.params[k]) for k in TEMPLATED_PARAMS if isinstance(recipe.params.get(k), str)]
    for key, template in templates:
        try:
            names = placeholders(template)
        except ValueError as exc:
            fail(key, str(exc))
            continue
        for name in names:
            if name not in declared:
                fail(key, f"placeholder {{{name}}} is not declared in [matrix.vars]",
                     suggest(name, declared, f"add matrix.vars.{name} = [...]", shown="{{{}}}"))
            used.add(name)
    for name in sorted(declared - used):
        fail(f"matrix.vars.{name}", "declared but no prompt uses it: write {" + name + "} in a prompt")
    for name, values in m.axes.items():
        key = f"matrix.axes.{name}"
        if is_build_axis(name):
            continue  # checked with the plugins at hand: recipe_runner.plan.variants
        if name == SCHEDULER_AXIS:
            for i, value in enumerate(values):
                ok_table = isinstance(value, dict) and isinstance(value.get("name"), str) and set(value) <= {"name", "options"} and isinstance(value.get("options", {}), dict)
                if not (isinstance(value, str) and value) and not ok_table:
                    fail(f"{key}.{i}", 'expected a scheduler class name, or a table { name = "...", options = {...} }')
        elif name in RESERVED_PARAMS:
            fail(key, f"{name} is set by the runner: {RESERVED_PARAMS[name]}")
        elif name in recipe.params:
            fail(key, "also set in [params]: a parameter is either fixed or an axis")
    task = recipe.model.task
    if task == "text-to-image" and (m.images or m.mask_images):
        fail("matrix.images" if m.images else "matrix.mask_images",
             "text-to-image takes no input images", 'set model.task = "image-to-image" or "inpainting"')
    if task != "text-to-image" and not m.images:
        fail("matrix.images", f"{task} needs input images: a list of paths or https URLs")
    if task == "inpainting" and len(m.mask_images) != len(m.images):
        fail("matrix.mask_images", f"inpainting needs one mask per input image: {len(m.images)} images, {len(m.mask_images)} masks")
    if task == "image-to-image" and m.mask_images:
        fail("matrix.mask_images", "masks are for inpainting", 'set model.task = "inpainting"')
    if m.mode == "zip":
        lengths = {"matrix.prompts": len(m.prompts), "matrix.seeds": len(m.seeds)}
        if m.images:
            lengths["matrix.images"] = len(m.images)
        lengths.update({f"matrix.vars.{k}": len(v) for k, v in m.vars.items()})
        lengths.update({f"matrix.axes.{k}": len(v) for k, v in m.axes.items()})
        if len(set(lengths.values())) > 1:
            listed = ", ".join(f"{k} has {n}" for k, n in lengths.items())
            fail("matrix.mode", f'"zip" pairs the i-th entries, so the lists must have equal length: {listed}')
    if not problems:
        total = count(recipe)
        if total > recipe.run.max_jobs:
            fail("matrix", f"{total:,} jobs is more than run.max_jobs ({recipe.run.max_jobs:,})",
                 "set run.max_jobs to allow a matrix this large")
    return problems


def _prompt_combos(recipe: Recipe, template: str) -> list[dict[str, str]]:
    names = _prompt_names(recipe, template)
    return [dict(zip(names, values)) for values in itertools.product(*(recipe.matrix.vars[n] for n in names))]


def _prompt_names(recipe: Recipe, template: str) -> list[str]:
    return list(dict.fromkeys(placeholders(template) + [
        n for k in TEMPLATED_PARAMS if isinstance(recipe.params.get(k), str) for n in placeholders(recipe.params[k])
    ]))


def count(recipe: Recipe) -> int:
    """How many jobs the matrix makes, by multiplication: nothing is built (a 100^5 matrix of
    vars is counted, and refused by run.max_jobs, in microseconds)."""
    m = recipe.matrix
    if m.mode == "zip":
        return len(m.prompts)
    prompts = sum(math.prod(len(m.vars[n]) for n in _prompt_names(recipe, p)) for p in m.prompts)
    axes = math.prod(len(v) for v in m.axes.values())
    return axes * prompts * max(1, len(m.images)) * len(m.seeds)


def _params_for(recipe: Recipe, axis_values: dict[str, Any], var_values: dict[str, str]) -> dict[str, Any]:
    params = dict(recipe.params)
    params.update(axis_values)
    for name in TEMPLATED_PARAMS:
        if isinstance(params.get(name), str):
            params[name] = render(params[name], var_values)
    return params


def expand(recipe: Recipe, loaded: LoadedRecipe | None = None) -> list[Job]:
    """Every job of the recipe in matrix order; RecipeError when the matrix is inconsistent or
    names the same job twice (two jobs with one identity would write one file)."""
    problems = _check(recipe, loaded)
    if problems:
        raise RecipeError(problems)
    jobs = list(_iter_jobs(recipe))
    seen: dict[tuple[Any, ...], Job] = {}
    for job in jobs:  # a cheap key: digests of 100,000 jobs would cost --dry-run a second
        key = (job.prompt, job.seed, job.image, job.mask_image, tuple(sorted(job.vars.items())), repr(job.axes))
        first = seen.setdefault(key, job)
        if first is not job:
            listed_twice = _listed_twice(recipe, loaded)
            if listed_twice:
                raise RecipeError(listed_twice)
            what = f"prompt {job.prompt!r}, seed {job.seed}" + (f", image {job.image!r}" if job.image else "")
            raise RecipeError([problem_at(loaded, "matrix", f"jobs {first.index} and {job.index} are the same job "
                                          f"({what}): a value is listed twice", "list each prompt, seed, image "
                                          "and axis value once")])
    return jobs


def _listed_twice(recipe: Recipe, loaded: LoadedRecipe | None) -> list[Problem]:
    """Each value a ``[matrix]`` list repeats, at the repeat's own key and line (``matrix.seeds.2``)."""
    m = recipe.matrix
    if m.mode == "zip":
        return []  # zipped lists pair up: a value repeated in one list is not by itself a repeated job
    lists: list[tuple[str, list[Any]]] = [("matrix.prompts", m.prompts), ("matrix.seeds", m.seeds),
                                          ("matrix.images", m.images)]
    lists += [(f"matrix.vars.{name}", values) for name, values in m.vars.items()]
    lists += [(f"matrix.axes.{name}", values) for name, values in m.axes.items()]
    problems: list[Problem] = []
    for key, values in lists:
        if key == "matrix.seeds" and isinstance(loaded_value(loaded, key), int):
            continue  # seeds = N: 0..N-1, never repeated
        first: dict[str, int] = {}
        for i, value in enumerate(values):
            text = json.dumps(value, sort_keys=True, default=str)
            if text in first:
                problems.append(problem_at(loaded, f"{key}.{i}", f"{value!r} is listed twice (also {key}.{first[text]}): "
                                           "the same job would be made twice", "list each value once"))
            else:
                first[text] = i
    return problems


def loaded_value(loaded: LoadedRecipe | None, key: str) -> Any:
    """The value at a dotted key of the recipe as written (None when absent or unknown)."""
    current: Any = loaded.data if loaded is not None else None
    for part in key.split("."):
        if not isinstance(current, dict):
            return None
        current = current.get(part)
    return current


def axis_order(names: list[str]) -> list[str]:
    """Axis names outermost first: the build axes by switching cost (model, optimizations,
    components, lora, lora_scale), then the scheduler, then call parameters; ties as written."""
    return sorted(names, key=lambda n: KINDS.of(n).rank)  # stable: ties keep the written order


def _iter_jobs(recipe: Recipe) -> Iterator[Job]:
    m = recipe.matrix
    schedulers = _scheduler_values(recipe)
    order = axis_order(list(m.axes))  # each job's axes, outermost first
    build_axes = {k: m.axes[k] for k in order if is_build_axis(k)}
    param_axes = {k: v for k, v in m.axes.items() if axis_kind(k) == "params"}
    masks: list[str | None] = list(m.mask_images) or [None] * len(m.images)
    inputs: list[tuple[str | None, str | None]] = list(zip(m.images, masks)) or [(None, None)]
    make = _counter()
    if m.mode == "zip":
        for i, (template, seed) in enumerate(zip(m.prompts, m.seeds)):
            var_values = {k: v[i] for k, v in m.vars.items()}
            axis_values = {k: v[i] for k, v in param_axes.items()}
            built = {k: v[i] for k, v in build_axes.items()}
            image, mask = inputs[i] if m.images else (None, None)
            sched = schedulers[i] if SCHEDULER_AXIS in m.axes else schedulers[0]
            yield make(template, seed, image, mask, var_values, _params_for(recipe, axis_values, var_values), sched,
                       _axes({**built, **axis_values}, sched, order))
        return
    combos = {p: _prompt_combos(recipe, p) for p in m.prompts}
    for built_tuple in itertools.product(*build_axes.values()):
        built = dict(zip(build_axes, built_tuple))
        for sched in schedulers:
            for axis_tuple in itertools.product(*param_axes.values()):
                axis_values = dict(zip(param_axes, axis_tuple))
                for template in m.prompts:
                    for var_values in combos[template]:
                        params = _params_for(recipe, axis_values, var_values)
                        for image, mask in inputs:
                            for seed in m.seeds:
                                yield make(template, seed, image, mask, var_values, params, sched,
                                           _axes({**built, **axis_values}, sched, order))


def _axes(axis_values: dict[str, Any], scheduler: dict[str, Any] | None, order: list[str]) -> dict[str, Any]:
    """A job's axis values, the scheduler axis's included, in ``order`` (:func:`axis_order`)."""
    values = {**axis_values, SCHEDULER_AXIS: scheduler}
    return {name: values[name] for name in order}


def _counter() -> Callable[..., Job]:
    index = itertools.count()

    def make(template: str, seed: int, image: str | None, mask: str | None, var_values: dict[str, str],
             params: dict[str, Any], sched: Any, axes: dict[str, Any]) -> Job:
        return Job(
            index=next(index),
            prompt=render(template, var_values),
            seed=seed,
            image=image,
            mask_image=mask,
            vars=dict(var_values),
            params=params,
            scheduler=sched,
            axes=axes,
        )

    return make
