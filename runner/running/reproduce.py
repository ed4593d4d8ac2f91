"""``recipe-run --reproduce IMAGE``: re-generate one image from the recipe and job embedded in it,
and say whether the pixels match.

An exact match needs the image's planned batch (batched kernels round differently per batch
size and composition) and the CPU thread count it was made with (it changes CPU kernel rounding):
the job chunk records ``batch`` and ``batch_jobs``, the environment chunk ``threads``. The whole
batch is re-computed and only the image asked for is written, to a scratch folder (a new temporary
folder, or ``--out``), never over the original: ``--out`` naming the image's own folder, or a run
folder (one with a ``manifest.json`` that ``--reproduce`` did not make) is refused (exit 2). The
pixels compared are those of the file given, read before anything is generated. Without ``--out`` the temporary folder is removed
before returning when the pixels match (the report then names no file); when they differ, only the
re-generated image is kept there, and the report names it, for inspection.

Why pixels differ: the report compares what the image recorded (``environment``: the hash of
every model file, ``models``; threads; library versions; device, dtype, determinism; the
third-party plugins) with the re-generation's, and names each difference, the most likely cause
first (:mod:`recipe_runner.records.causes`); when the pixels match, differing facts are a note.
With ``--locked`` the models are first verified against the lock file beside the recipe the image
came from (exit 2 before anything loads on drift, or without a lock file).

Exit status: 0 pixel-identical, 1 the pixels differ (the report gives the PSNR), 2 the image
carries no recipe (written with ``[output] metadata = false``, or not by recipe-run).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base import environment, report
from ..base.errors import RecipeError, RunError
from ..base.safe_read import ImageTooLarge, open_image
from ..pipelines.cache import ModelCache
from ..plan.batches import Batch
from ..plan.prepared import Prepared
from ..plugin_api.failures import missing
from ..plugin_api.manager import Plugins
from ..recipe.loading import LoadedRecipe, load_data
from ..records import causes
from ..records.causes import Facts
from ..records.outputs import read_embedded
from ..records.provenance import recipe_folder_of
from ..records.runlock import hold
from .execute import Execution
from .prepare import Options, prepare_loaded
from .progress import Progress
from .session import start

RECORDED_LIBRARIES = ("torch", "diffusers", "transformers")
SCRATCH_MARK = ".recipe-run-reproduce"  # in a folder --reproduce writes to: it may write there again


@dataclass
class Embedded:
    """What an image written by recipe-run carries."""

    recipe: dict[str, Any]
    job: dict[str, Any]
    environment: dict[str, Any]


def read(image: Path) -> Embedded:
    """The recipe, job and environment embedded in ``image``; RecipeError (exit 2) without them."""
    from PIL import UnidentifiedImageError


    shown = str(image)
    if not image.is_file():
        raise RecipeError.one("no such image file", file=shown)
    try:
        text = read_embedded(image)
    except (UnidentifiedImageError, OSError, ImageTooLarge) as exc:
        raise RecipeError.one(f"not an image: {exc}", file=shown) from None
    if "recipe" not in text or "job" not in text:
        raise RecipeError.one("the image carries no recipe (written with [output] metadata = false, "
                              "or not by recipe-run): nothing to reproduce", file=shown)
    try:
        return Embedded(json.loads(text["recipe"]), json.loads(text["job"]), json.loads(text.get("environment") or "{}"))
    except ValueError as exc:
        raise RecipeError.one(f"the embedded recipe is not valid JSON: {exc}", file=shown) from None


def recipe_path(embedded: Embedded, image: Path) -> Path:
    """Where the recipe is taken to live: its recorded folder when it still exists (relative model
    and input paths resolve against it; recorded relative to the image's folder, or absolute by
    older versions), else the image's folder."""
    env = embedded.environment
    name = Path(str(env.get("recipe_file") or f"{embedded.recipe.get('name', 'recipe')}.toml")).name
    folder = recipe_folder_of(env, image.resolve().parent)
    if folder is not None and folder.is_dir():
        return folder / name
    return image.resolve().parent / name


def psnr(a: Any, b: Any) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 arrays (inf when equal)."""
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def pixels(path: Path) -> Any:
    import numpy as np

    with open_image(path) as image:
        return np.asarray(image.convert("RGB")).copy()


@dataclass
class Outcome:
    original: Path
    reproduced: Path | None  # None: re-generated in a temporary folder, since removed
    identical: bool
    psnr: float
    differing: int  # pixels with any channel different
    total: int
    missing_plugins: list[str] = field(default_factory=list)
    facts: Facts = field(default_factory=Facts)  # what the image recorded that differs now (records.causes)

    def report(self) -> str:
        where = f" (re-generated as {self.reproduced})" if self.reproduced is not None else ""
        if self.identical:
            text = f"{self.original}: pixel-identical{where}"
        else:
            text = f"{self.original}: differs: PSNR {self.psnr:.2f} dB, {self.differing} of {self.total} pixels{where}"
        return "\n".join([text, *(f"  {line}" for line in self.facts.lines(self.identical))])


def reproduce(image: Path, plugins: Plugins, out: Path | None, *, allow_pickle: bool = False,
              trust_remote_code: bool = False, warn: Callable[[str], None] = report.warn, wait: bool = False,
              locked: bool = False) -> Outcome:
    """Re-generate ``image`` in its planned batch with its recorded thread count; compare pixels and
    the facts it recorded (model files, threads, versions, ...). ``locked``: first verify the
    models against the lock file of the recipe the image came from (RecipeError, exit 2, before
    anything loads)."""
    embedded = read(image)
    try:
        original = pixels(image)  # the file given, before anything is written anywhere
    except Exception as exc:  # noqa: BLE001 - a file that reads as text chunks but not as pixels
        raise RecipeError.one(f"cannot read the image's pixels: {type(exc).__name__}: {exc}", file=str(image)) from None
    loaded = load_data(embedded.recipe, recipe_path(embedded, image))
    if out is not None:
        return _reproduce(image, original, embedded, loaded, plugins, out, allow_pickle, trust_remote_code, warn, wait,
                          locked)
    scratch = Path(tempfile.mkdtemp(prefix="recipe-run-reproduce-"))
    try:
        outcome = _reproduce(image, original, embedded, loaded, plugins, scratch, allow_pickle, trust_remote_code, warn,
                             wait, locked)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if outcome.identical or outcome.reproduced is None:
        shutil.rmtree(scratch, ignore_errors=True)
        outcome.reproduced = None
    else:  # keep only the differing image, for inspection
        for path in scratch.rglob("*"):
            if path.is_file() and path != outcome.reproduced:
                path.unlink()
    return outcome


def check_scratch(image: Path, folder: Path) -> None:
    """RecipeError (exit 2) when ``folder``, where the re-generated image would be written, is the
    folder ``image`` is in, or a run's folder (its manifest and images would be rewritten)."""
    if folder.resolve() == image.resolve().parent:
        raise RecipeError.one(f"--out would write into {folder}, the folder the image is in: --reproduce never "
                              "writes over the original or its run; give another folder", file=str(image))
    if (folder / "manifest.json").exists() and not (folder / SCRATCH_MARK).is_file():
        raise RecipeError.one(f"--out would write into {folder}, which holds a run (manifest.json): --reproduce "
                              "never rewrites a run's folder; give another folder", file=str(image))


def _reproduce(image: Path, original: Any, embedded: Embedded, loaded: LoadedRecipe, plugins: Plugins, scratch: Path,
               allow_pickle: bool, trust_remote_code: bool, warn: Callable[[str], None], wait: bool,
               locked: bool = False) -> Outcome:
    options = Options(out=scratch, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                      progress=False, warn=warn, wait=wait)
    prepared = prepare_loaded(loaded, plugins, options)  # the safety policy applies to embedded recipes too
    if locked:
        verify_locked(image, prepared)
    check_scratch(image, prepared.out_dir)
    with hold(prepared.out_dir, wait=wait):  # one writer per folder, as for a run
        check_scratch(image, prepared.out_dir)
        return _regenerate(image, original, embedded, prepared, plugins, options, warn)


def verify_locked(image: Path, prepared: Prepared) -> None:
    """``--reproduce IMAGE --locked``: the models the embedded recipe names, as the lock file beside
    the recipe the image came from pins them (:func:`recipe_path`); RecipeError (exit 2) when there
    is no lock file there, or naming each model and file that drifted."""
    from ..pipelines import lock
    from ..recipe.loading import display_path

    path = lock.lock_path(prepared.loaded.path)
    if not path.is_file():
        raise RecipeError.one(f"--locked: no lock file {display_path(path)} beside the recipe this image came from "
                              f"({display_path(prepared.loaded.path)}): write one with recipe-run --lock RECIPE, "
                              "or leave out --locked", file=str(image))
    lock.verify(prepared.recipe, prepared.loaded)


def _regenerate(image: Path, original: Any, embedded: Embedded, prepared: Prepared, plugins: Plugins, options: Options,
                warn: Callable[[str], None]) -> Outcome:
    import torch

    job_info, env = embedded.job, embedded.environment
    index = job_info.get("index")
    jobs = prepared.jobs
    if not isinstance(index, int) or not 0 <= index < len(jobs):
        raise RecipeError.one(f"the embedded job index {index!r} is not a job of the embedded recipe", file=str(image))
    job = jobs[index]
    if (job.prompt, job.seed) != (job_info.get("prompt"), job_info.get("seed")):
        raise RecipeError.one("the embedded job does not match the embedded recipe's job "
                              f"{index} (prompt or seed differ): the metadata was edited", file=str(image))
    members = job_info.get("batch_jobs") or [index]
    if index not in members or any(not isinstance(i, int) or not 0 <= i < len(jobs) for i in members):
        raise RecipeError.one(f"the embedded batch {members!r} is not a batch of the embedded recipe", file=str(image))
    batch = Batch(int(job_info.get("batch") or 0), tuple(jobs[i] for i in members))
    for name in RECORDED_LIBRARIES:
        recorded, current = env.get(name), (torch.__version__ if name == "torch" else environment._version(name))
        if recorded and recorded != current:
            warn(f"the image was made with {name} {recorded}, this is {current}: pixels may differ")

    recipe = prepared.recipe
    default_threads = recipe.run.threads or torch.get_num_threads()  # what a plain run of the recipe here uses
    threads = env.get("threads")
    pinned = threads if isinstance(threads, int) and not isinstance(threads, bool) and threads > 0 else recipe.run.threads
    (prepared.out_dir / SCRATCH_MARK).touch()  # a folder --reproduce writes to (it may again)
    with environment.pinned_threads(pinned):  # the recorded count (else the recipe's [run] threads)
        started = start(prepared, plugins, options, ModelCache(), prepared.variant_of(job))  # only its pipeline
        execution = Execution(started.pipelines, started.writer, plugins.hook, started.images,
                              Progress(1, recipe.name, enabled=False), warn)
        execution.run([batch], pending={index})
    started.hashes.save()
    manifest = started.manifest
    produced = manifest.file_for(job)
    if not produced.is_file():
        raise RunError(f"the re-generated image was not written: {produced}")
    a, b = original, pixels(produced)
    gone = missing(env.get("plugins"), plugins)
    facts = causes.compare(env, manifest.environment, default_threads, gone,
                           used=lambda keys: causes.job_references(keys, recipe.matrix.axes, job.axes))
    if a.shape != b.shape:
        return Outcome(image, produced, False, 0.0, a.shape[0] * a.shape[1], a.shape[0] * a.shape[1], gone, facts)
    differing = int((a != b).any(axis=-1).sum())
    return Outcome(image, produced, differing == 0, psnr(a, b), differing, a.shape[0] * a.shape[1], gone, facts)
