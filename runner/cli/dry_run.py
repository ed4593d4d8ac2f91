"""``recipe-run --dry-run``: what a run would do, as text (the plan of each recipe, nothing loaded)."""

from __future__ import annotations

import dataclasses
import json

from ..axes.registry import value_label
from ..base.errors import Problem, RecipeError
from ..pipelines import build, preflight
from ..pipelines.cache import load_order
from ..plan.batches import initial_batch_size, plan
from ..plan.labels import scheduler_label
from ..plan.prepared import Prepared
from ..plan.variants import Variant, relabel
from ..plugin_api.manager import Plugins
from ..recipe.aliases import IdProblem, resolve
from ..recipe.loading import display_path
from ..recipe.optimizations import Enabled
from ..records.formats import extension
from ..records.resume import peek
from ..running.prepare import Options


def check_optimizations(items: list[Prepared], options: Options) -> list[list[str]]:
    """Every optimization ``check`` a run makes before loading, on each variant of each recipe, as
    the run makes it (:func:`recipe_runner.pipelines.build.check_context`): a refusal is the run's
    error (exit 2, all of them at once), ``required = false`` the run's warning. Returns, per
    recipe, the lines saying what was checked and which checks wait for the run (they import torch)."""
    problems: list[Problem] = []
    notes: list[list[str]] = []
    for item in items:
        lines: list[str] = []
        for variant in item.variants or [Variant("{}", {}, item.recipe, item.loaded, item.enabled, item.jobs, {})]:
            enabled = [dataclasses.replace(e) for e in variant.enabled]  # the run settles its own
            if not any(e.optimization.check for e in enabled):
                continue
            where = f" ({variant.label()})" if len(item.variants) > 1 else ""

            waited: list[tuple[Enabled, str]] = []
            try:
                ctx = build.check_context(variant.recipe, variant.loaded, enabled, allow_pickle=options.allow_pickle,
                                          trust_remote_code=options.trust_remote_code, warn=options.warn,
                                          waits=lambda e, module: waited.append((e, module)))  # noqa: B023
            except RecipeError as exc:
                problems += relabel(exc.problems, variant)
                continue
            ran = [e.key or e.name for e in enabled
                   if e.optimization.check and not any(e is w for w, _ in waited)]
            if ran:
                lines.append(f"optimization checks ran (device {ctx.device}){where}: {', '.join(ran)}")
            lines += [f"optimizations.{e.key or e.name}{where}: its check imports {module}: the run makes it before loading"
                      for e, module in waited]
        notes.append(lines)
    if problems:
        raise RecipeError(problems)
    return notes


def resolved_ids(prepared: Prepared) -> list[str]:
    """What the model and component ids that are not what they say name on this machine:
    ``team/sd15 -> /data/models/sd15 (alias from ~/.config/recipe-runner/models.toml)``,
    ``$TEAM_MODELS/sd15 -> /data/models/sd15`` (each id once, axis values included)."""
    recipes = [v.recipe for v in prepared.variants] or [prepared.recipe]
    ids = [r.model.id for r in recipes] + [c.id for r in recipes for c in r.components.values()]
    shown: list[str] = []
    for written in dict.fromkeys(ids):
        try:
            text = resolve(written).describe()
        except IdProblem:  # prepare reported it
            continue
        if text is not None:
            shown.append(text)
    return shown


def describe_plan(prepared: Prepared, plugins: Plugins, show: int = 20, checked: list[str] | None = None) -> str:
    """The --dry-run text: model, optimizations, plugins, jobs, the pipelines a build axis asks for
    (loads and in-place switches, in plan order) and batches."""
    r = prepared.recipe
    batch_setting = r.run.batch_size
    size = batch_setting if batch_setting != "auto" else initial_batch_size("auto", prepared.jobs, "cpu")
    shared = prepared.same_as  # equal jobs: generated once, shown in each cell
    batches = plan([job for job in prepared.jobs if job.index not in shared], size)
    lines = [f"{r.name}  ({display_path(prepared.loaded.path)} -> {display_path(prepared.out_dir)}/)"]
    if r.description:
        lines.append(f"  {r.description}")
    m = r.model
    extras = ", ".join(f"{k} {getattr(m, k)}" for k in ("revision", "variant") if getattr(m, k))
    lines.append(f"  model          {m.id}  [{m.task}, dtype {m.dtype}, device {m.device}{', ' + extras if extras else ''}]")
    for name, comp in r.components.items():
        if f"components.{name}" in r.matrix.axes:
            continue  # an axis replaces it: the pipelines below say with what
        lines.append(f"  component      {name} <- {comp.id}" + (f" ({comp.subfolder})" if comp.subfolder else ""))
    lines += [f"  model path     {shown}" for shown in resolved_ids(prepared)]
    if "scheduler" in r.matrix.axes:  # the axis replaces [scheduler] in every job: name what they use
        used = dict.fromkeys(str(scheduler_label(job.scheduler)) for job in prepared.jobs if job.scheduler)
        lines.append(f"  scheduler      by axis: {', '.join(used)}")
    elif r.scheduler:
        lines.append(f"  scheduler      {scheduler_label(r.scheduler.model_dump())}")
    opts = ", ".join(f"{e.name} {json.dumps(e.settings.model_dump(mode='json'))}" for e in prepared.enabled) or "none"
    lines.append(f"  optimizations  {opts}")
    loaded_plugins = ", ".join(f"{i.name} ({i.source}{', failed' if i.error else ''})" for i in plugins.infos)
    lines.append(f"  plugins        {loaded_plugins}")
    auto = " (auto: halves on out of memory)" if batch_setting == "auto" else ""
    checks_now = preflight.notes(r, prepared.loaded) + (checked or [])
    lines += [f"  {'checks' if i == 0 else '':<15}{note}" for i, note in enumerate(checks_now)]
    lines.append(f"  jobs           {len(prepared.jobs)} in {len(batches)} batch{'es' * (len(batches) != 1)}, "
                 f"batch_size {size}{auto}, generator on {r.run.generator_device}"
                 + (f", {r.run.threads} CPU thread{'s' * (r.run.threads != 1)}" if r.run.threads is not None else "")
                 + (f"; {len(shared)} equal to another job, shown from its image" if shared else ""))
    if len(prepared.variants) > 1:
        making = [v for v in prepared.variants if any(job.index not in shared for job in v.jobs)]
        steps = load_order(making, False, r.run.keep_models)  # --allow-pickle is the same for all
        counts = {how: sum(1 for h, _ in steps if h == how) for how in ("load", "derive", "switch", "reuse")}
        summary = ", ".join(f"{n} {how}{'es' if how == 'switch' and n != 1 else 's' if n != 1 else ''}"
                            for how, n in counts.items() if n)
        lines.append(f"  pipelines      {summary}, in plan order:")
        for i, (how, variant) in enumerate(steps, 1):
            lines.append(f"    {i}. {how:<7} {variant.label()}  ({len(variant.jobs)} image{'s' * (len(variant.jobs) != 1)})")
    now = peek(prepared)
    lines.append(f"  a run now      {now.summary()}" if now is not None else
                 "  a run now      decides after loading what is unchanged (the folder's last run was elsewhere "
                 "or its inputs are not local)")
    fixed = {k: v for k, v in r.params.items()}
    if fixed:
        lines.append(f"  params         {', '.join(f'{k}={v!r}' for k, v in fixed.items())}")
    ext = extension(r.output.format)
    shown = 0
    for batch in batches:
        if shown >= show:
            break
        lines.append(f"  batch {batch.index}")
        for job in batch.jobs:
            if shown >= show:
                break
            extra = {k: v for k, v in job.params.items() if k not in r.params or r.params[k] != v}
            bits = [f"seed {job.seed}"] + [f"{k}={v}" for k, v in extra.items()]
            if job.image:
                bits.append(f"image {job.image}")
            if job.mask_image:
                bits.append(f"mask {job.mask_image}")
            if job.scheduler and "scheduler" in r.matrix.axes:
                bits.append(str(scheduler_label(job.scheduler)))
            bits += [f"{name} {value_label(name, value)}" for name, value in job.build_axes().items()]
            lines.append(f"    {job.filename(ext)}  {', '.join(bits)}")
            shown += 1
    if shown < len(prepared.jobs):
        lines.append(f"    ... {len(prepared.jobs) - shown} more")
    return "\n".join(lines)
