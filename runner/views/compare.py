"""``recipe-run --compare A B [--out DIR]``: what changed between two runs, parameters and pixels.

A and B are run folders, or their ``manifest.json``: any folder that holds a manifest.json whose
image records name their files relative to it (the previous results an edited re-run keeps are
one). Images are paired by *job identity*, computed from the image records as resolved: the
prompt text (after the vars: a prompt written through ``{who}`` pairs with the same text written
out), seed, input image and mask, and every other field that varies within either run (call
parameters whether fixed or an axis value, the scheduler with its options, build-axis values,
...); never by var names, index or file name, so an added seed or reordered prompts still pair. A parameter that is constant on each side (``guidance_scale = 7`` in A, ``8``
in B) is not part of the identity: its jobs pair, and their pixels differ.

A pair is identical when both files have the same bytes or the same pixels; a record whose image
file is absent (not done, or not kept) counts as identical only when both records carry the same
sha256. Printed: a short table (pairs identical and differing with PSNR and the largest pixel
difference, jobs only in A, only in B, recipe differences by dotted key, environment
differences). Written to DIR (default ``compare-report``): ``index.html`` (recipe diff, environment
diff, each differing pair side by side with a difference heatmap, worst first; identical pairs
folded; only-in-A / only-in-B), ``compare.json`` (the same, for scripts) and ``pairs/`` (copies of
the images it shows, never links). A record's ``file`` is read only when it is a plain image file
name in its side's folder and a regular file there (not a link, FIFO or device: such a record counts
as an image that is not there, with a warning); a copy stops at :data:`MAX_COPY_BYTES`.

Exit status like ``diff``: 0 every pair identical and the same jobs on both sides, 1 any difference
in pixels or jobs, 2 bad input (a missing or unreadable manifest: one ``error:`` line). Recipe and
environment differences are reported; alone they do not make the status 1. Thresholds
(``--min-psnr``, ``--max-diff``: :class:`Thresholds`) make a differing pair within them "close":
reported, exit 0. When pixels differ, :func:`likely_causes` names what differs that changes pixels
(model files, recipe keys, threads, versions, device, dtype), most likely first.

A and B may also be two output roots (folders of run folders): :func:`compare_roots` pairs their
runs by folder name (a run on one side only is a difference), one exit status and one table, an
index page linking each run's report (:func:`write_roots_report`); a root is read up to
:data:`MAX_ROOT_ENTRIES` entries, never through a link.

Light module: numpy and Pillow, files only; no torch, no diffusers, no network.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base import report as reporter
from ..base.paths import ignore_created_root, regular_file, sha256_file
from ..base.safe_read import FileTooLarge, NotRegularFile, is_regular, open_image, read_text
from ..records.causes import BETWEEN_RUNS, environment_causes, model_differences
from ..records.names import record_file
from .jobfields import BOOKKEEPING, Described, canonical, describe, job_label, short_name, shorten
from .metrics import METRICS

if TYPE_CHECKING:
    import numpy as np

EXIT_SAME, EXIT_DIFFERENT, EXIT_BAD = 0, 1, 2
DEFAULT_OUT = Path("compare-report")
PRINTED = 20  # rows per section of the printed table
MAX_COPY_BYTES = 256 * 2**20  # an image copied into the report: larger ones are left out
IDENTITY = ("prompt", "seed", "image", "mask_image")  # always part of a job's identity
ENVIRONMENT_FIRST = ("torch", "diffusers", "transformers", "device", "device_name", "dtype", "threads",
                     "generator_device", "deterministic", "platform", "python", "recipe_runner")
MAX_ROOT_ENTRIES = 20_000  # entries of an output root looked at (files and folders alike)
MAX_ROOT_RUNS = 1_000  # run folders of an output root compared
# Recipe keys that never change an image's pixels (what is written around it, or which jobs exist:
# jobs that differ do not pair, and are reported as only in A / only in B).
PIXEL_NEUTRAL = ("name", "description", "abstract", "output.grid", "output.metadata", "matrix.prompts", "matrix.seeds",
                 "matrix.mode", "matrix.vars", "matrix.images", "matrix.mask_images", "matrix.max_jobs")
class BadInput(Exception):
    """A side that is not a readable run: exit 2 with this message."""


@dataclass
class Side:
    given: str
    folder: Path
    manifest: dict[str, Any]
    described: Described

    @property
    def name(self) -> str:
        return str((self.manifest.get("recipe") or {}).get("name") or self.folder.name)


def load_side(given: str | Path, *, follow: bool = True) -> Side:
    """A run folder or its manifest.json, checked to be a manifest (BadInput otherwise).
    ``follow=False``: a manifest.json that is a symbolic link is refused (a run inside an output root)."""
    path = Path(given)
    if path.is_dir():
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise BadInput(f"{given}: no manifest.json in this folder (give a run folder or its manifest.json, "
                           "or two output roots of run folders)")
    elif path.is_file():
        manifest_path = path
    else:
        raise BadInput(f"{given}: no such file or folder")
    try:
        data = json.loads(read_text(manifest_path, follow=follow, what="manifest"))
    except NotRegularFile as exc:
        raise BadInput(f"{manifest_path}: {exc.kind}: refused (a manifest is read only from a regular file)") from None
    except FileTooLarge as exc:
        raise BadInput(f"{manifest_path}: {exc}") from None
    except OSError as exc:
        raise BadInput(f"{manifest_path}: cannot read it ({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"{manifest_path}: not valid JSON ({exc})") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise BadInput(f"{manifest_path}: not a recipe-run manifest (no \"images\" list)")
    for i, record in enumerate(images):
        if not (isinstance(record, dict) and isinstance(record.get("file"), str) and "prompt" in record
                and "seed" in record):
            raise BadInput(f"{manifest_path}: images[{i}] is not an image record (file, prompt, seed)")
    if not isinstance(data.get("recipe", {}), dict) or not isinstance(data.get("environment", {}), dict):
        raise BadInput(f"{manifest_path}: not a recipe-run manifest (recipe and environment must be tables)")
    malformed = _malformed(data)
    if malformed:
        raise BadInput(f"{manifest_path}: a malformed manifest: {malformed}")
    try:
        described = describe(data)
    except (AttributeError, TypeError, ValueError, KeyError, IndexError) as exc:  # a shape no check above foresaw
        raise BadInput(f"{manifest_path}: a malformed manifest ({type(exc).__name__}: {exc})") from None
    return Side(str(given), manifest_path.parent, data, described)


def _malformed(data: dict[str, Any]) -> str | None:
    """What is not of its type in a manifest that --compare reads (None when nothing is)."""
    recipe = data.get("recipe") or {}
    tables = {"recipe.matrix": recipe.get("matrix"), "recipe.params": recipe.get("params"),
              "recipe.output": recipe.get("output")}
    matrix = recipe.get("matrix")
    if isinstance(matrix, dict):
        tables.update({"recipe.matrix.axes": matrix.get("axes"), "recipe.matrix.vars": matrix.get("vars")})
    scheduler = recipe.get("scheduler")
    if scheduler is not None and not isinstance(scheduler, (dict, str)):
        return "recipe.scheduler must be a table"
    if isinstance(scheduler, dict):
        tables["recipe.scheduler.options"] = scheduler.get("options")
    for key, value in tables.items():
        if value is not None and not isinstance(value, dict):
            return f"{key} must be a table, not {type(value).__name__}"
    for i, record in enumerate(data["images"]):
        for name in ("vars", "params", "axes", "scheduler_options"):
            if record.get(name) is not None and not isinstance(record[name], dict):
                return f"images[{i}].{name} must be a table, not {type(record[name]).__name__}"
        if record.get("scheduler") is not None and not isinstance(record["scheduler"], (str, dict)):
            return f"images[{i}].scheduler must be a class name or a table"
        for name in ("status", "sha256"):
            if record.get(name) is not None and not isinstance(record[name], str):
                return f"images[{i}].{name} must be a string, not {type(record[name]).__name__}"
        if not isinstance(record["prompt"], str):
            return f"images[{i}].prompt must be a string, not {type(record['prompt']).__name__}"
        if not isinstance(record["seed"], int) or isinstance(record["seed"], bool):
            return f"images[{i}].seed must be an integer, not {type(record['seed']).__name__}"
        if record.get("index") is not None and (not isinstance(record["index"], int) or isinstance(record["index"], bool)):
            return f"images[{i}].index must be an integer"
    return None


# --- pairing -----------------------------------------------------------------------------------


def identity_fields(a: Described, b: Described) -> list[str]:
    """The fields that tell jobs apart: the fixed ones, and whatever varies within either run
    (except what the vars render: the vars say it)."""
    names = list(dict.fromkeys(k for d in (a, b) for f in d.fields for k in f))
    fixed = [n for n in names if n in IDENTITY]
    # the vars are how a prompt was written: the texts they render (prompt, negative_prompt) say the job
    varying = [n for n in names if n not in fixed and not n.startswith("vars.") and (n in a.varying or n in b.varying)
               and n.split(".")[0] not in BOOKKEEPING]
    return fixed + varying


def keyed(side: Described, names: Sequence[str]) -> dict[str, int]:
    """identity key -> record position; a repeated identity gets ``#2``, ``#3``... in order."""
    out: dict[str, int] = {}
    for i, f in enumerate(side.fields):
        key = canonical({n: f.get(n) for n in names})
        n = 1
        unique = key
        while unique in out:
            n += 1
            unique = f"{key}#{n}"
        out[unique] = i
    return out


# --- pixels ------------------------------------------------------------------------------------


@dataclass
class Pair:
    a: int | None  # record positions
    b: int | None
    label: str
    status: str = "identical"  # identical, different, only-a, only-b
    psnr: float | None = None
    max_diff: int | None = None
    changed: float | None = None  # fraction of pixels that differ
    metrics: dict[str, float] = field(default_factory=dict)  # the plugins' metrics (views.metrics), by name
    note: str = ""
    files: dict[str, str] = field(default_factory=dict)  # a, b, diff: paths in the report folder
    heat: Any = None  # the heatmap, until written

    @property
    def worst(self) -> tuple[float, float]:
        return (self.psnr if self.psnr is not None else -1.0, -(self.max_diff or 0))


def image_file(side: Side, record: Mapping[str, Any]) -> Path | None:
    """The image file a record of ``side`` names: a regular file with a plain name in the side's
    folder, else None (a warning says why a record names something else)."""
    path = record_file(side.folder, record.get("file"), f"a record of {side.given}")
    return path if path is not None and regular_file(path) else None


def _pixels(path: Path, mode: str) -> np.ndarray:
    import numpy as np

    with open_image(path) as image:  # a regular file, its size and pixel count bounded before decoding
        return np.asarray(image.convert(mode))


def _has_alpha(path: Path) -> bool:
    with open_image(path) as image:
        return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info




def heatmap(diff: np.ndarray) -> np.ndarray:
    """Per-pixel largest channel difference, stretched to the largest, as black-red-yellow-white."""
    import numpy as np

    d = diff.max(axis=-1).astype(np.float32) if diff.ndim == 3 else diff.astype(np.float32)
    peak = float(d.max()) or 1.0
    t = d / peak
    rgb = np.stack([np.clip(t * 3, 0, 1), np.clip(t * 3 - 1, 0, 1), np.clip(t * 3 - 2, 0, 1)], axis=-1)
    return (rgb * 255).round().astype(np.uint8)


def compare_pair(a: Side, b: Side, pair: Pair) -> None:
    """Fill in ``pair``: identical or different, with PSNR, largest difference and a heatmap."""
    import numpy as np

    assert pair.a is not None and pair.b is not None
    ra, rb = a.described.records[pair.a], b.described.records[pair.b]
    fa, fb = image_file(a, ra), image_file(b, rb)
    has_a, has_b = ra.get("status") == "done" and fa is not None, rb.get("status") == "done" and fb is not None
    if fa is None or fb is None or not (has_a and has_b):
        if ra.get("status") == rb.get("status") == "done" and ra.get("sha256") and ra.get("sha256") == rb.get("sha256"):
            pair.note = "same sha256 in both manifests"
            return
        missing = [s for s, has, r in (("A", has_a, ra), ("B", has_b, rb)) if not has]
        status = {s: (r.get("status") if r.get("status") != "done" else "file missing") for s, _, r in
                  (("A", has_a, ra), ("B", has_b, rb))}
        pair.status = "different"
        pair.note = "; ".join(f"no image in {s} ({status[s]})" for s in missing)
        return
    if fa.stat().st_size == fb.stat().st_size and sha256_file(fa) == sha256_file(fb):
        return
    try:
        mode = "RGBA" if _has_alpha(fa) or _has_alpha(fb) else "RGB"
        pa, pb = _pixels(fa, mode), _pixels(fb, mode)
    except Exception as exc:  # an unreadable image is a difference, not bad input
        pair.status, pair.note = "different", f"cannot read an image: {type(exc).__name__}: {exc}"
        return
    if pa.shape != pb.shape:
        pair.status = "different"
        pair.note = f"size {pa.shape[1]}x{pa.shape[0]} -> {pb.shape[1]}x{pb.shape[0]}"
        return
    diff = np.abs(pa.astype(np.int16) - pb.astype(np.int16)).astype(np.uint8)
    peak = int(diff.max())
    if peak == 0:
        pair.note = "same pixels (metadata differs)"
        return
    pair.status, pair.max_diff = "different", peak
    pair.psnr = METRICS.require("psnr").compute(pa, pb)
    pair.changed = METRICS.require("changed").compute(pa, pb)
    for metric in METRICS.plugin_metrics():
        pair.metrics[metric.name] = metric.compute(pa, pb)
    pair.heat = heatmap(diff)


# --- recipe and environment ----------------------------------------------------------------------


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested tables -> ``{dotted key: value}`` (lists stay values)."""
    if isinstance(value, Mapping) and (value or not prefix):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def differences(a: Mapping[str, Any], b: Mapping[str, Any], first: Sequence[str] = ()) -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every key whose value differs; ``first`` keys lead. An empty
    table or list, or none, says the same as an absent key (``matrix.vars: {} -> (absent)`` is
    no difference: one recipe wrote the default, the other left it out)."""
    fa, fb = ({k: v for k, v in flatten(side).items() if v not in ({}, [], None)} for side in (a, b))
    keys = list(dict.fromkeys([*fa, *fb]))
    keys.sort(key=lambda k: (k not in first, first.index(k) if k in first else 0))
    missing = object()
    out = []
    for key in keys:
        va, vb = fa.get(key, missing), fb.get(key, missing)
        if va is missing or vb is missing or canonical(va) != canonical(vb):
            out.append((key, None if va is missing else va, None if vb is missing else vb))
    return out


def _show(value: Any, limit: int = 80) -> str:
    text = "(absent)" if value is None else value if isinstance(value, str) else json.dumps(value, default=repr)
    return shorten(text, limit)


# --- the comparison ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """``--min-psnr DB`` and ``--max-diff N``: a differing pair within every given bound is
    "close" (reported, exit 0). None given: no tolerance, any pixel difference differs."""

    min_psnr: float | None = None
    max_diff: int | None = None

    def __bool__(self) -> bool:
        return self.min_psnr is not None or self.max_diff is not None

    def admits(self, pair: Pair) -> bool:
        """Whether ``pair``'s figures are within every given bound (never without figures: a
        missing image or another size is a difference whatever the bounds)."""
        if not self or pair.psnr is None or pair.max_diff is None:
            return False
        return ((self.min_psnr is None or pair.psnr >= self.min_psnr)
                and (self.max_diff is None or pair.max_diff <= self.max_diff))

    def text(self) -> str:
        """``PSNR >= 40 dB, max diff <= 2`` (the bounds given)."""
        parts = ([f"PSNR >= {self.min_psnr:g} dB"] if self.min_psnr is not None else []) + (
            [f"max diff <= {self.max_diff}"] if self.max_diff is not None else [])
        return ", ".join(parts)

    def as_json(self) -> dict[str, Any]:
        return {"min_psnr": self.min_psnr, "max_diff": self.max_diff}


NO_TOLERANCE = Thresholds()


@dataclass
class Result:
    a: Side
    b: Side
    pairs: list[Pair]
    recipe: list[tuple[str, Any, Any]]
    environment: list[tuple[str, Any, Any]]
    identity: list[str]
    thresholds: Thresholds = NO_TOLERANCE
    causes: list[str] = field(default_factory=list)  # the likely causes of differing pixels, most likely first

    def of(self, status: str) -> list[Pair]:
        return [p for p in self.pairs if p.status == status]

    @property
    def code(self) -> int:
        return EXIT_SAME if all(p.status in ("identical", "close") for p in self.pairs) else EXIT_DIFFERENT

    @property
    def verdict(self) -> str:
        if self.code != EXIT_SAME:
            return "different"
        return "within the thresholds" if self.of("close") else "identical"


def compare(a: Side, b: Side, thresholds: Thresholds = NO_TOLERANCE) -> Result:
    names = identity_fields(a.described, b.described)
    ka, kb = keyed(a.described, names), keyed(b.described, names)
    label_names = [n for n in names if n in ("prompt", "seed") or n in a.described.varying or n in b.described.varying]
    label_names = [n for n in label_names if not (n == "mask_image")]
    label_names += [n for n in dict.fromkeys([*a.described.varying, *b.described.varying])
                    if n.startswith("vars.") and n not in label_names]  # shown, never paired on

    def label(side: Side, i: int) -> str:
        return job_label(label_names, side.described.fields[i], " · ", 60, 40)

    pairs: list[Pair] = []
    for key, i in ka.items():
        if key in kb:
            pair = Pair(i, kb[key], label(a, i))
            compare_pair(a, b, pair)
            if pair.status == "different" and thresholds.admits(pair):
                pair.status = "close"
        else:
            pair = Pair(i, None, label(a, i), status="only-a")
        pairs.append(pair)
    pairs += [Pair(None, j, label(b, j), status="only-b") for key, j in kb.items() if key not in ka]
    env_a, env_b = a.manifest.get("environment") or {}, b.manifest.get("environment") or {}
    result = Result(a, b, pairs, differences(a.manifest.get("recipe") or {}, b.manifest.get("recipe") or {}),
                    differences(env_a, env_b, ENVIRONMENT_FIRST), names, thresholds)
    if any(p.status in ("different", "close") and (p.psnr is not None or p.note.startswith("size")) for p in pairs):
        result.causes = likely_causes(result.recipe, env_a, env_b)  # pixels computed and differing: not a missing file
    return result


def likely_causes(recipe: list[tuple[str, Any, Any]], env_a: Mapping[str, Any], env_b: Mapping[str, Any]) -> list[str]:
    """What differs between two runs whose pixels differ, most likely first: the model (its files'
    hashes when recorded, its revision), the recipe keys that decide pixels, then the recorded
    environment facts in :data:`recipe_runner.records.causes.FACTS` order (the thread count, the
    library versions, the device, the dtype, ...). One line each, ``what old -> new: why``."""
    causes: list[str] = []
    models_a, models_b = env_a.get("models"), env_b.get("models")
    # the same model files on both sides (recorded by content): where they were, or which revision
    # named them, changed nothing
    same_files = models_a is not None and models_b is not None and canonical(models_a) == canonical(models_b)
    if models_a is not None and models_b is not None and not same_files:
        changed = (model_differences(models_a, models_b, BETWEEN_RUNS)
                   if isinstance(models_a, Mapping) and isinstance(models_b, Mapping) else [])
        shown = changed[:3] + ([f"and {len(changed) - 3} more"] if len(changed) > 3 else [])
        causes += [f"model files: {line}" for line in shown] or ["model files differ between the runs (environment.models)"]
    for key in ("model_revision", "model_revisions"):
        va, vb = env_a.get(key), env_b.get(key)
        if va is not None and vb is not None and canonical(va) != canonical(vb) and not same_files:
            causes.append(f"{key} {_show(va, 50)} -> {_show(vb, 50)}: another model revision")
    for key, va, vb in recipe:
        if same_files and re.fullmatch(r"(model|components\.[^.]+)\.(id|revision)", key):
            continue
        if not any(key == n or key.startswith(n + ".") for n in PIXEL_NEUTRAL):
            causes.append(f"recipe {key}: {_show(va)} -> {_show(vb)}")
    return causes + environment_causes(env_a, env_b)


def pairs_text(result: Result) -> str:
    """``4 (1 identical, 0 differ, 3 close (PSNR >= 40 dB, max diff <= 2))``: the pairs, counted."""
    identical, different, close = (len(result.of(s)) for s in ("identical", "different", "close"))
    within = f", {close} close ({result.thresholds.text()})" if result.thresholds else ""
    return f"{identical + different + close} ({identical} identical, {different} differ{within})"


def _figures(p: Pair) -> str:
    return (f"PSNR {p.psnr:6.2f} dB  max {p.max_diff:3d}" + _more(p) if p.psnr is not None and p.max_diff is not None
            else p.note)


def summary(result: Result, report: Path | None, *, indent: str = "  ", head: bool = True) -> str:
    """The printed table (``head``: with its first line, ``compare A -> B``, and its last, the result)."""
    different = sorted(result.of("different"), key=lambda p: p.worst)
    close = sorted(result.of("close"), key=lambda p: p.worst)
    only_a, only_b = result.of("only-a"), result.of("only-b")
    lines = [f"compare {result.a.given} -> {result.b.given}"] if head else []
    lines.append(f"{indent}pairs: {pairs_text(result)}; only in A: {len(only_a)}; only in B: {len(only_b)}")

    def section(title: str, rows: list[str]) -> None:
        if rows:
            lines.append(f"{indent}{title}:")
            lines.extend(f"{indent}  {r}" for r in rows[:PRINTED])
            if len(rows) > PRINTED:
                lines.append(f"{indent}  ... {len(rows) - PRINTED} more (see the report)")

    section("recipe (A -> B)", [f"{k}: {_show(va)} -> {_show(vb)}" for k, va, vb in result.recipe])
    section("environment (A -> B)", [f"{k}: {_show(va)} -> {_show(vb)}" for k, va, vb in result.environment])
    section("differing pairs, worst first", [f"{_figures(p)}  {p.label}" for p in different])
    section(f"close pairs ({result.thresholds.text()})", [f"{_figures(p)}  {p.label}" for p in close])
    section("likely causes, most likely first", result.causes)
    section("only in A", [p.label for p in only_a])
    section("only in B", [p.label for p in only_b])
    if head:
        lines.append(f"{indent}result: {result.verdict}" + (f"; report: {report / 'index.html'}" if report else ""))
    return "\n".join(lines)


# --- the report --------------------------------------------------------------------------------

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; margin: 0 0 .3em; } h2 { font-size: 1.15em; margin: 1.4em 0 .4em; }
.meta { color: #555; } .same { color: #176b2c; font-weight: 600; } .diff { color: #a4161a; font-weight: 600; }
table.kv { border-collapse: collapse; font-size: 13px; }
table.kv td, table.kv th { border-bottom: 1px solid #e3e3e3; padding: 3px 10px 3px 0; text-align: left; vertical-align: top; }
table.kv td.k { font-family: ui-monospace, monospace; } .old { color: #a4161a; } .new { color: #176b2c; }
td.old, td.new { font-family: ui-monospace, monospace; word-break: break-all; max-width: 40em; }
.pair { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 10px; margin: 0 0 14px; }
.pair h3 { font-size: 14px; margin: 0 0 6px; font-weight: 600; }
.pair .figs { color: #555; font-size: 13px; margin-bottom: 6px; }
.row { display: flex; gap: 10px; flex-wrap: wrap; }
.row figure { margin: 0; } .row figcaption { font-size: 12px; color: #555; }
.row img { width: 256px; height: auto; image-rendering: pixelated; background: #eee; display: block; }
details summary { cursor: pointer; font-weight: 600; margin: .6em 0; }
ul.jobs { font-size: 13px; columns: 2; }
"""


def copy_bounded(source: Path, target: Path, limit: int | None = None) -> bool:
    """Copy the regular file ``source`` to ``target`` (never a link, never through a link), at most
    ``limit`` bytes (default :data:`MAX_COPY_BYTES`); False (and no ``target``) when it is not a
    regular file or is larger."""
    limit = MAX_COPY_BYTES if limit is None else limit
    target.unlink(missing_ok=True)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(source, flags)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as src:
        info = os.fstat(src.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return False
        copied = 0
        with open(target, "xb") as dst:
            while chunk := src.read(1 << 20):
                copied += len(chunk)
                if copied > limit:  # grew while copied
                    break
                dst.write(chunk)
        if copied > limit:
            target.unlink(missing_ok=True)
            return False
    return True


def write_report(result: Result, out: Path, back: str | None = None) -> Path:
    """``out/index.html``, ``out/compare.json`` and the images they show in ``out/pairs`` (``back``:
    a link to the page this one is part of, the index of two output roots; then ``out`` is inside
    that report's root, which keeps it out of git)."""
    from PIL import Image

    for folder in (out, out / "pairs"):
        if folder.is_symlink():
            raise BadInput(f"--out {out}: {folder} is a symbolic link: the report is never written through one")
    created = not out.exists() and back is None
    out.mkdir(parents=True, exist_ok=True)
    if created:  # a report root this run made: kept out of git
        ignore_created_root(out)
    pairs_dir = out / "pairs"
    pairs_dir.mkdir(exist_ok=True)
    for old in pairs_dir.iterdir():  # an earlier report's images
        if re.fullmatch(r"\d+-(a|b|diff)\.[a-z]+", old.name):
            old.unlink()
    shown = sorted(result.of("different"), key=lambda p: p.worst) + sorted(result.of("close"), key=lambda p: p.worst)
    for n, p in enumerate(shown + result.of("only-a") + result.of("only-b")):
        for side_name, side, i in (("a", result.a, p.a), ("b", result.b, p.b)):
            if i is None:
                continue
            source = image_file(side, side.described.records[i])
            if source is not None:
                target = pairs_dir / f"{n:05d}-{side_name}{source.suffix.lower()}"
                if copy_bounded(source, target):
                    p.files[side_name] = f"pairs/{target.name}"
        if p.heat is not None:
            Image.fromarray(p.heat).save(pairs_dir / f"{n:05d}-diff.png", compress_level=1)
            p.files["diff"] = f"pairs/{n:05d}-diff.png"
            p.heat = None
    (out / "index.html").write_text(render_report(result, back), encoding="utf-8")
    (out / "compare.json").write_text(json.dumps(as_json(result), indent=2, ensure_ascii=False, default=repr),
                                      encoding="utf-8")
    return out / "index.html"


def as_json(result: Result) -> dict[str, Any]:
    def pair(p: Pair) -> dict[str, Any]:
        return {"label": p.label, "status": p.status, "psnr": None if p.psnr in (None, math.inf) else round(p.psnr, 3),
                "max_diff": p.max_diff, "changed": p.changed, **p.metrics, "note": p.note,
                "a": result.a.described.records[p.a]["file"] if p.a is not None else None,
                "b": result.b.described.records[p.b]["file"] if p.b is not None else None}

    return {"a": result.a.given, "b": result.b.given, "exit": result.code, "identity": result.identity,
            "thresholds": result.thresholds.as_json(), "causes": result.causes,
            "recipe": [{"key": k, "a": va, "b": vb} for k, va, vb in result.recipe],
            "environment": [{"key": k, "a": va, "b": vb} for k, va, vb in result.environment],
            "pairs": [pair(p) for p in result.pairs]}


def _more(p: Pair) -> str:
    """The plugins' metrics of a pair, as `` · name value``."""
    return "".join(f" · {name} {value:.4g}" for name, value in p.metrics.items())


def _kv_table(rows: list[tuple[str, Any, Any]]) -> str:
    body = "".join(f'<tr><td class="k">{escape(k)}</td><td class="old">{escape(_show(va, 400))}</td>'
                   f'<td class="new">{escape(_show(vb, 400))}</td></tr>' for k, va, vb in rows)
    return f'<table class="kv"><tr><th>key</th><th>A</th><th>B</th></tr>{body}</table>'


def _figure(src: str | None, caption: str, title: str = "") -> str:
    if not src:
        return f'<figure><div style="width:256px;height:64px;background:#eee"></div><figcaption>{escape(caption)}</figcaption></figure>'
    s = escape(src, quote=True)
    return (f'<figure><a href="{s}"><img src="{s}" loading="lazy" decoding="async" alt="{escape(caption, quote=True)}"'
            f' title="{escape(title, quote=True)}"></a><figcaption>{escape(caption)}</figcaption></figure>')


def _pair_section(p: Pair, result: Result) -> str:
    ra = result.a.described.records[p.a] if p.a is not None else {}
    rb = result.b.described.records[p.b] if p.b is not None else {}
    figs = (f"PSNR {p.psnr:.2f} dB · largest difference {p.max_diff} of 255 · "
            f"{(p.changed or 0) * 100:.1f}% of pixels changed" + _more(p) if p.psnr is not None else p.note)
    return (f'<section class="pair"><h3>{escape(p.label)}</h3><div class="figs">{escape(figs)}</div>'
            f'<div class="row">{_figure(p.files.get("a"), "A: " + ra.get("file", ""))}'
            f'{_figure(p.files.get("b"), "B: " + rb.get("file", ""))}'
            + (_figure(p.files.get("diff"), "difference (stretched to the largest)") if "diff" in p.files else "")
            + "</div></section>")


def _page_head(a: str, b: str) -> list[str]:
    """The start of a report page comparing ``a`` with ``b``: doctype, title, the one stylesheet."""
    return ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>compare {escape(a)} / {escape(b)}</title><style>{CSS}</style></head><body>"]


def _verdict(text: str, code: int) -> str:
    return f'<span class="same">{escape(text)}</span>' if code == EXIT_SAME else '<span class="diff">different</span>'


def render_report(result: Result, back: str | None = None) -> str:
    a, b = result.a, result.b
    different = sorted(result.of("different"), key=lambda p: p.worst)
    close = sorted(result.of("close"), key=lambda p: p.worst)
    identical, only_a, only_b = result.of("identical"), result.of("only-a"), result.of("only-b")
    verdict = _verdict(result.verdict, result.code)
    parts = [*_page_head(a.name, b.name),
             *([f'<p class="meta"><a href="{escape(back, quote=True)}">← all runs</a></p>'] if back else []),
             f"<h1>{escape(a.name)} → {escape(b.name)}: {verdict}</h1>",
             f'<p class="meta">A: {escape(str(a.given))} · B: {escape(str(b.given))}<br>'
             f"{len(identical) + len(different) + len(close)} pairs: {len(identical)} identical, {len(different)} differ"
             + (f", {len(close)} close ({escape(result.thresholds.text())})" if result.thresholds else "") + " · "
             f"only in A: {len(only_a)} · only in B: {len(only_b)}<br>"
             f"paired by: {escape(', '.join(short_name(n) for n in result.identity))}</p>"]
    parts.append("<h2>Recipe</h2>")
    parts.append(_kv_table(result.recipe) if result.recipe else '<p class="meta">no difference</p>')
    parts.append("<h2>Environment</h2>")
    parts.append(_kv_table(result.environment) if result.environment else '<p class="meta">no difference</p>')
    if result.causes:
        parts.append('<h2>Likely causes, most likely first</h2><ul class="causes">')
        parts += [f"<li>{escape(cause)}</li>" for cause in result.causes]
        parts.append("</ul>")
    if different:
        parts.append(f"<h2>Differing pairs ({len(different)}), worst first</h2>")
        parts += [_pair_section(p, result) for p in different]
    if close:
        parts.append(f"<h2>Close pairs ({len(close)}), within {escape(result.thresholds.text())}</h2>")
        parts += [_pair_section(p, result) for p in close]
    for title, group, key in (("Only in A", only_a, "a"), ("Only in B", only_b, "b")):
        if group:
            parts.append(f"<h2>{title} ({len(group)})</h2><div class=\"row\">")
            parts += [_figure(p.files.get(key), p.label) for p in group]
            parts.append("</div>")
    if identical:
        parts.append(f"<details><summary>{len(identical)} identical pairs</summary><ul class=\"jobs\">")
        parts += [f"<li>{escape(p.label)}</li>" for p in identical]
        parts.append("</ul></details>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


# --- output roots ------------------------------------------------------------------------------


def run_folders(root: Path, given: str) -> dict[str, Path]:
    """The run folders of the output root ``root``, by folder name (the recipe's name): its
    sub-folders, not links, that hold a regular ``manifest.json``. Everything else in it (files,
    ``.gitignore``, a report folder, folders without a manifest) is not a run and is passed over.
    A root of more than :data:`MAX_ROOT_ENTRIES` entries or :data:`MAX_ROOT_RUNS` runs is refused
    (BadInput), never read on and on."""
    runs: dict[str, Path] = {}
    try:
        with os.scandir(root) as entries:
            for n, entry in enumerate(entries):
                if n >= MAX_ROOT_ENTRIES:
                    raise BadInput(f"{given}: more than {MAX_ROOT_ENTRIES:,} entries; an output root is read up to that "
                                   "many: compare its run folders in smaller roots, or one by one")
                try:
                    is_run = entry.is_dir(follow_symlinks=False) and is_regular(Path(entry.path) / "manifest.json")
                except OSError:
                    is_run = False
                if is_run:
                    runs[entry.name] = Path(entry.path)
                    if len(runs) > MAX_ROOT_RUNS:
                        raise BadInput(f"{given}: more than {MAX_ROOT_RUNS:,} run folders; --compare reads up to that "
                                       "many per output root: compare smaller roots")
    except OSError as exc:
        raise BadInput(f"{given}: cannot list this folder ({exc.strerror or exc})") from None
    return dict(sorted(runs.items()))


def kind_of(given: str | Path) -> str:
    """``"run"`` (a run folder or a manifest file) or ``"root"`` (a folder of run folders); BadInput
    for anything else."""
    path = Path(given)
    if path.is_file() or (path.is_dir() and (path / "manifest.json").is_file()):
        return "run"
    if not path.is_dir():
        raise BadInput(f"{given}: no such file or folder")
    if run_folders(path, str(given)):
        return "root"
    raise BadInput(f"{given}: no manifest.json in this folder, and no run folder in it (give a run folder or its "
                   "manifest.json, or an output root: a folder of run folders)")


@dataclass
class RunPair:
    """One run of two output roots: compared (``result``), or only in A / only in B."""

    name: str
    result: Result | None = None
    status: str = "compared"  # compared, only-a, only-b
    page: str = ""  # its report page, relative to the report folder

    @property
    def code(self) -> int:
        return self.result.code if self.result is not None else EXIT_DIFFERENT

    def line(self) -> str:
        """``identical``, ``4 differ``, ``2 close (...)``, ``only in A``: the run in a few words."""
        if self.result is None:
            return "only in A" if self.status == "only-a" else "only in B"
        r = self.result
        counts = [(len(r.of("different")), "differ"), (len(r.of("close")), "close"),
                  (len(r.of("only-a")), "jobs only in A"), (len(r.of("only-b")), "jobs only in B")]
        words = ", ".join(f"{n} {what}" for n, what in counts if n)
        return words or "identical"


@dataclass
class RootsResult:
    a: str
    b: str
    runs: list[RunPair]
    thresholds: Thresholds = NO_TOLERANCE

    @property
    def code(self) -> int:
        return EXIT_SAME if all(run.code == EXIT_SAME for run in self.runs) else EXIT_DIFFERENT

    @property
    def verdict(self) -> str:
        if self.code != EXIT_SAME:
            return "different"
        return "within the thresholds" if any(r.result and r.result.of("close") for r in self.runs) else "identical"

    def of(self, status: str) -> list[RunPair]:
        return [r for r in self.runs if r.status == status]

    def totals(self) -> str:
        compared = [r for r in self.runs if r.result is not None]
        identical = sum(1 for r in compared if r.line() == "identical")
        close = sum(1 for r in compared if r.code == EXIT_SAME and r.line() != "identical")
        within = f", {close} close" if self.thresholds else ""
        def only(status: str) -> str:
            names = [r.name for r in self.of(status)]
            listed = ", ".join(names[:5]) + (f", ... {len(names) - 5} more" if len(names) > 5 else "")
            return f"{len(names)} ({listed})" if names else "0"

        return (f"runs: {len(compared)} compared ({identical} identical, {len(compared) - identical - close} differ{within}); "
                f"only in A: {only('only-a')}; only in B: {only('only-b')}")


def compare_roots(a: str | Path, b: str | Path, thresholds: Thresholds = NO_TOLERANCE) -> RootsResult:
    """Two output roots, their runs paired by folder name; each pair compared like two run folders."""
    runs_a, runs_b = run_folders(Path(a), str(a)), run_folders(Path(b), str(b))
    runs: list[RunPair] = []
    for name in sorted({*runs_a, *runs_b}):
        if name not in runs_b:
            runs.append(RunPair(name, status="only-a"))
        elif name not in runs_a:
            runs.append(RunPair(name, status="only-b"))
        else:
            side_a = load_side(runs_a[name], follow=False)
            side_b = load_side(runs_b[name], follow=False)
            side_a.given, side_b.given = str(Path(a) / name), str(Path(b) / name)
            runs.append(RunPair(name, compare(side_a, side_b, thresholds)))
    return RootsResult(str(a), str(b), runs, thresholds)


def roots_summary(result: RootsResult, report: Path | None) -> str:
    """The printed table of two output roots: a line per run, the totals, then each run that is
    not identical in detail."""
    lines = [f"compare {result.a} -> {result.b} (output roots)"]
    width = max((len(r.name) for r in result.runs), default=0)
    lines += [f"  {r.name:<{width}}  {r.line()}" for r in result.runs]
    lines.append(f"  {result.totals()}")
    close = [r.result for r in result.runs if r.result is not None and r.result.of("close")]
    if close:
        lines.append(f"  pairs close ({result.thresholds.text()}): {sum(len(c.of('close')) for c in close)}")
    for run in result.runs:
        if run.result is not None and run.line() != "identical":
            lines.append(f"  {run.name}:")
            lines.append(summary(run.result, None, indent="    ", head=False))
    lines.append(f"  result: {result.verdict}" + (f"; report: {report / 'index.html'}" if report else ""))
    return "\n".join(lines)


def write_roots_report(result: RootsResult, out: Path) -> Path:
    """``out/index.html`` (a section per run, linking its page), ``out/compare.json`` (every run),
    and each compared run's report (the one-run report) in ``out/runs/<name>/``."""
    from urllib.parse import quote

    runs_dir = out / "runs"
    for folder in (out, runs_dir):
        if folder.is_symlink():
            raise BadInput(f"--out {out}: {folder} is a symbolic link: the report is never written through one")
    created = not out.exists()
    runs_dir.mkdir(parents=True, exist_ok=True)
    if created:  # a report root this run made: kept out of git
        ignore_created_root(out)
    for n, run in enumerate(result.runs):
        if run.result is not None:
            write_report(run.result, runs_dir / run.name, back=f"../../index.html#run-{n}")
            run.page = f"runs/{quote(run.name)}/index.html"
    (out / "index.html").write_text(render_roots_report(result), encoding="utf-8")
    data = {"a": result.a, "b": result.b, "kind": "output roots", "exit": result.code,
            "thresholds": result.thresholds.as_json(),
            "runs": [{"name": r.name, "status": r.status if r.result is None else
                      ("identical" if r.line() == "identical" else "close" if r.code == EXIT_SAME else "different"),
                      "exit": r.code, "summary": r.line(), "report": r.page or None,
                      **({"compare": as_json(r.result)} if r.result is not None else {})} for r in result.runs]}
    (out / "compare.json").write_text(json.dumps(data, indent=2, ensure_ascii=False, default=repr), encoding="utf-8")
    return out / "index.html"


def render_roots_report(result: RootsResult) -> str:
    verdict = _verdict(result.verdict, result.code)
    parts = [*_page_head(result.a, result.b),
             f"<h1>{escape(result.a)} → {escape(result.b)}: {verdict}</h1>",
             f'<p class="meta">output roots, runs paired by folder name · {escape(result.totals())}'
             + (f"<br>thresholds: {escape(result.thresholds.text())}" if result.thresholds else "") + "</p>",
             '<table class="kv"><tr><th>run</th><th>result</th></tr>']
    for n, run in enumerate(result.runs):
        css = "same" if run.code == EXIT_SAME else "diff"
        parts.append(f'<tr><td class="k"><a href="#run-{n}">{escape(run.name)}</a></td>'
                     f'<td class="{css}">{escape(run.line())}</td></tr>')
    parts.append("</table>")
    for n, run in enumerate(result.runs):
        parts.append(f'<section class="pair run" id="run-{n}"><h3>{escape(run.name)}: {escape(run.line())}</h3>')
        r = run.result
        if r is None:
            side = result.a if run.status == "only-a" else result.b
            parts.append(f'<div class="figs">only in {"A" if run.status == "only-a" else "B"}: '
                         f"{escape(str(Path(side) / run.name))}</div>")
        else:
            parts.append(f'<div class="figs">pairs: {escape(pairs_text(r))} · only in A: {len(r.of("only-a"))} · '
                         f'only in B: {len(r.of("only-b"))}</div>')
            if r.causes:
                parts.append('<ul class="causes">' + "".join(f"<li>{escape(c)}</li>" for c in r.causes) + "</ul>")
            parts.append(f'<a class="open" href="{escape(run.page, quote=True)}">the report of {escape(run.name)}</a>')
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


# --- entry point -------------------------------------------------------------------------------


def main(a: str | Path, b: str | Path, out: Path | None = None, thresholds: Thresholds = NO_TOLERANCE) -> int:
    """``recipe-run --compare A B [--out DIR] [--min-psnr DB] [--max-diff N]``: print the table,
    write the report; the exit status. A and B: two runs (folders or manifests), or two output roots."""
    result: Result | RootsResult
    try:
        kinds = kind_of(a), kind_of(b)
        if kinds[0] != kinds[1]:
            root, run = (a, b) if kinds[0] == "root" else (b, a)
            raise BadInput(f"{root} is an output root (a folder of run folders) but {run} is a run: give two runs "
                           "(folders or manifest.json) or two output roots")
        report = Path(out) if out is not None else DEFAULT_OUT
        if (report / "manifest.json").exists():
            raise BadInput(f"--out {report}: that folder holds a run (manifest.json); give the report a folder of its own")
        if kinds[0] == "root":
            result = compare_roots(a, b, thresholds)
            write_roots_report(result, report)
            text = roots_summary(result, report)
        else:
            result = compare(load_side(a), load_side(b), thresholds)
            write_report(result, report)
            text = summary(result, report)
    except BadInput as exc:
        reporter.error(str(exc))
        return EXIT_BAD
    except OSError as exc:
        reporter.error(f"cannot write the report: {exc}")
        return EXIT_BAD
    reporter.result(text)
    return result.code
