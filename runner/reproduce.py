"""``recipe-run --reproduce IMAGE``: re-generate one image from the recipe and job embedded in it,
and say whether the pixels match.

An exact match needs the image's planned batch (batched kernels round differently per batch
size and composition) and the CPU thread count it was made with (it changes CPU kernel rounding):
the job chunk records ``batch`` and ``batch_jobs``, the environment chunk ``threads``. The whole
batch is re-computed and only the image asked for is written, to a scratch folder (a new temporary
folder, or ``--out``), never over the original. Without ``--out`` the temporary folder is removed
before returning when the pixels match (the report then names no file); when they differ, only the
re-generated image is kept there, and the report names it, for inspection.

Plugins change pixels too: the third-party plugins an image records (``environment.plugins``) that
are not loaded now (or are loaded in another version) are named in the report.

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

from . import environment
from .errors import RecipeError, RunError
from .execute import Execution
from .loading import load_data
from .outputs import read_embedded
from .pipelines import ModelCache
from .plan import Batch
from .plugin_checks import missing
from .plugin_manager import Plugins
from .prepare import Options, prepare_loaded
from .progress import Progress
from .run import start
from .safe_read import ImageTooLarge, open_image

RECORDED_LIBRARIES = ("torch", "diffusers", "transformers")


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
    and input paths resolve against it), else the image's folder."""
    env = embedded.environment
    name = env.get("recipe_file") or f"{embedded.recipe.get('name', 'recipe')}.toml"
    folder = env.get("recipe_folder")
    if folder and Path(folder).is_dir():
        return Path(folder) / name
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

    def report(self) -> str:
        where = f" (re-generated as {self.reproduced})" if self.reproduced is not None else ""
        if self.identical:
            text = f"{self.original}: pixel-identical{where}"
        else:
            text = f"{self.original}: differs: PSNR {self.psnr:.2f} dB, {self.differing} of {self.total} pixels{where}"
        if self.missing_plugins:
            text += "\n  plugins the image records that this run did not have: " + "; ".join(self.missing_plugins)
        return text


def reproduce(image: Path, plugins: Plugins, out: Path | None, *, allow_pickle: bool = False,
              trust_remote_code: bool = False, warn: Callable[[str], None] = print) -> Outcome:
    """Re-generate ``image`` in its planned batch with its recorded thread count; compare pixels."""
    embedded = read(image)
    loaded = load_data(embedded.recipe, recipe_path(embedded, image))
    if out is not None:
        return _reproduce(image, embedded, loaded, plugins, out, allow_pickle, trust_remote_code, warn)
    scratch = Path(tempfile.mkdtemp(prefix="recipe-run-reproduce-"))
    try:
        outcome = _reproduce(image, embedded, loaded, plugins, scratch, allow_pickle, trust_remote_code, warn)
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


def _reproduce(image: Path, embedded: Embedded, loaded: Any, plugins: Plugins, scratch: Path, allow_pickle: bool,
               trust_remote_code: bool, warn: Callable[[str], None]) -> Outcome:
    import torch


    options = Options(out=scratch, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                      progress=False, warn=warn)
    prepared = prepare_loaded(loaded, plugins, options)  # the safety policy applies to embedded recipes too
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
    threads_before = torch.get_num_threads()
    threads = env.get("threads")
    if isinstance(threads, int) and threads > 0:
        torch.set_num_threads(threads)
    try:
        started = start(prepared, plugins, options, ModelCache(), prepared.variant_of(job))  # only its pipeline
        execution = Execution(started.pipelines, started.writer, plugins.hook, started.images,
                              Progress(1, recipe.name, enabled=False), warn)
        execution.run([batch], pending={index})
    finally:
        torch.set_num_threads(threads_before)
    manifest = started.manifest
    produced = manifest.file_for(job)
    if not produced.is_file():
        raise RunError(f"the re-generated image was not written: {produced}")
    a, b = pixels(image), pixels(produced)
    gone = missing(env.get("plugins"), plugins)
    if a.shape != b.shape:
        return Outcome(image, produced, False, 0.0, a.shape[0] * a.shape[1], a.shape[0] * a.shape[1], gone)
    differing = int((a != b).any(axis=-1).sum())
    return Outcome(image, produced, differing == 0, psnr(a, b), differing, a.shape[0] * a.shape[1], gone)
