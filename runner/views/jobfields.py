"""What a manifest's image records say each job *is*: its fields as dotted names (``prompt``,
``seed``, ``image``, ``mask_image``, ``vars.<name>``, ``params.<name>``, ``scheduler``), which of
them vary across a run and which are constant. Shared by the contact sheet (:mod:`.grid`), the
gallery (:mod:`.gallery`) and ``--compare`` (:mod:`.compare`).

Light module: the standard library only (no numpy, Pillow, torch or diffusers).

A record names its scheduler class only; its options come from the resolved recipe the manifest
holds (``scheduler.options``, or the ``[matrix.axes] scheduler`` entry the job's index falls in),
so a scheduler axis over one class with different options tells its values apart.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..axes.registry import build_kind_names, is_build_axis, value_label

# Fields of a record about the file and its making, not about the job.
BOOKKEEPING = frozenset({"file", "index", "status", "sha256", "batch", "batch_size", "batch_jobs", "key", "rank",
                         "seconds"})
# Record fields of the axes that change the pipeline: ``axes`` holds them by axis name (model,
# components.<name>, optimizations.<key>, a plugin's kinds); older records held them by kind.
TEMPLATED = ("prompt", "params.negative_prompt", "params.negative_prompt_2")  # rendered from vars


def canonical(value: Any) -> str:
    """A stable text for any JSON value (dict order does not matter): equality and hashing."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr)


def scheduler_label(value: Any) -> str:
    """``{"name": "X", "options": {"a": 1}}`` -> ``X (a=1)``; None -> ``default``."""
    if value is None:
        return "default"
    if isinstance(value, dict):
        options = value.get("options") or {}
        extra = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(options.items()))
        return f"{value.get('name')} ({extra})" if extra else str(value.get("name"))
    return str(value)


def schedulers(manifest: Mapping[str, Any]) -> list[dict[str, Any] | None]:
    """Each record's scheduler as ``{"name", "options"}`` (None: the pipeline's own)."""
    recipe = manifest.get("recipe") or {}
    records = manifest.get("images") or []
    matrix = recipe.get("matrix") or {}
    base = recipe.get("scheduler") if isinstance(recipe.get("scheduler"), dict) else None
    base_options = dict(base.get("options") or {}) if base else {}
    axis = (matrix.get("axes") or {}).get("scheduler")
    values: list[dict[str, Any]] = []
    if isinstance(axis, list):
        for value in axis:
            if isinstance(value, str):
                values.append({"name": value, "options": base_options})
            elif isinstance(value, dict):
                values.append({"name": value.get("name"), "options": dict(value.get("options") or {})})
    zip_mode = matrix.get("mode") == "zip"
    out: list[dict[str, Any] | None] = []
    for record in records:
        name = record.get("scheduler")
        if isinstance(name, dict):  # a record that carries its options itself
            out.append({"name": name.get("name"), "options": dict(name.get("options") or {})})
            continue
        if name is None:
            out.append(None)
            continue
        if isinstance(record.get("scheduler_options"), dict):
            out.append({"name": name, "options": dict(record["scheduler_options"])})
            continue
        found: dict[str, Any] | None = None
        index = record.get("index")
        if values and isinstance(index, int):
            per = 1 if zip_mode else max(1, len(records) // len(values))  # the outermost axis
            i = index // per
            if 0 <= i < len(values) and values[i]["name"] == name:
                found = values[i]
        if found is None:
            found = {"name": name, "options": base_options if base and base.get("name") == name else {}}
        out.append(found)
    return out


def fields_of(record: Mapping[str, Any], scheduler: dict[str, Any] | None) -> dict[str, Any]:
    """The job of one record as ``{dotted field: value}``, in matrix order (outermost first)."""
    fields: dict[str, Any] = {}
    for name in (*build_kind_names(), "axes"):
        if name == "axes" and isinstance(record.get("axes"), dict):
            fields.update(record["axes"])  # by axis name: model, components.<name>, optimizations.<key>, ...
        elif record.get(name) is not None:
            fields[name] = record[name]
    fields["scheduler"] = scheduler
    for name, value in (record.get("params") or {}).items():
        fields[f"params.{name}"] = value
    fields["prompt"] = record.get("prompt")
    for name, value in (record.get("vars") or {}).items():
        fields[f"vars.{name}"] = value
    fields["image"] = record.get("image")
    fields["mask_image"] = record.get("mask_image")
    fields["seed"] = record.get("seed")
    return fields


def short_name(name: str) -> str:
    """``params.guidance_scale`` -> ``guidance_scale``; ``vars.who`` -> ``who``;
    ``components.vae`` -> ``vae``; ``optimizations.attention_slicing`` -> ``attention_slicing``."""
    return name.split(".", 1)[1] if name.startswith(("params.", "vars.", "components.", "optimizations.")) else name


def value_text(name: str, value: Any) -> str:
    if name == "scheduler":
        return scheduler_label(value)
    if is_build_axis(name):
        return value_label(name, value)
    if isinstance(value, str):
        return value
    if value is None:
        return "none"
    return json.dumps(value, ensure_ascii=False, default=repr)


def shorten(text: str, limit: int = 80) -> str:
    """A label-sized rendering of a long text (a prompt): one line, cut at a word, with an ellipsis."""
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut[limit // 2:]:
        cut = cut[: cut.rfind(" ")]
    return cut.rstrip(" ,;.") + "…"


@dataclass
class Described:
    """A run's records with their fields, what varies (matrix order) and what is constant."""

    records: list[dict[str, Any]]
    fields: list[dict[str, Any]]
    varying: list[str]
    constant: dict[str, Any]
    derived: set[str] = field(default_factory=set)  # varying fields rendered from the vars

    def values(self, name: str) -> list[Any]:
        """The distinct values of a field, in order of first appearance."""
        seen: dict[str, Any] = {}
        for f in self.fields:
            seen.setdefault(canonical(f.get(name)), f.get(name))
        return list(seen.values())


def describe(manifest: Mapping[str, Any], records: Sequence[dict[str, Any]] | None = None) -> Described:
    """Describe ``records`` (default: every record of the manifest) of ``manifest``."""
    all_records = list(manifest.get("images") or [])
    scheds = schedulers(manifest)
    by_id = {id(r): s for r, s in zip(all_records, scheds)}
    chosen = list(records) if records is not None else all_records
    fields = [fields_of(r, by_id.get(id(r), schedulers({"recipe": manifest.get("recipe"), "images": [r]})[0]))
              for r in chosen]
    names = list(dict.fromkeys(k for f in fields for k in f))
    varying = [n for n in names if len({canonical(f.get(n)) for f in fields}) > 1]
    constant = {n: fields[0].get(n) for n in names if n not in varying} if fields else {}
    vars_varying = [n for n in varying if n.startswith("vars.")]
    derived: set[str] = set()
    if vars_varying:
        for name in TEMPLATED:
            if name in varying:
                pairs = {(canonical([f.get(v) for v in vars_varying]), canonical(f.get(name))) for f in fields}
                if len(pairs) == len({p[0] for p in pairs}):  # a function of the vars: the vars say it
                    derived.add(name)
    return Described(list(chosen), fields, varying, constant, derived)


def job_label(names: Sequence[str], fields: Mapping[str, Any], sep: str, prompt_chars: int, value_chars: int) -> str:
    """A job named by the fields ``names``: the shortened prompt, ``seed 3``, the scheduler with its
    options, ``who = an old chief``; joined by ``sep``."""
    parts = []
    for name in names:
        value = fields.get(name)
        if name == "prompt":
            parts.append(shorten(str(value), prompt_chars))
        elif name == "seed":
            parts.append(f"seed {value}")
        elif name == "scheduler":
            parts.append(value_text(name, value))
        else:
            parts.append(f"{short_name(name)} = {shorten(value_text(name, value), value_chars)}")
    return sep.join(parts)


COMMON_CHARS = 16  # a common start or end of the prompts shorter than this is not worth saying apart


@dataclass(frozen=True)
class CommonPrompt:
    """The words every varying prompt of a run starts and ends with, said once (a sheet's title, the
    top of the gallery), so that a label or a card shows only what differs (:meth:`core`)."""

    prefix: str = ""
    suffix: str = ""

    def __bool__(self) -> bool:
        return bool(self.prefix or self.suffix)

    def core(self, prompt: Any) -> str:
        """``prompt`` without the common start and end."""
        words = str(prompt).split()
        start = len(self.prefix.split())
        end = len(words) - len(self.suffix.split())
        return " ".join(words[start:end]).strip(" ,;:.") or str(prompt) if self else str(prompt)

    def text(self) -> str:
        """``portrait photo of … , 50mm``: the common part, with ``…`` where the prompts differ."""
        return " ".join(part for part in (self.prefix, "…", self.suffix) if part)


def common_prompt(prompts: Sequence[Any]) -> CommonPrompt:
    """The common start and end (whole words) of ``prompts``, each prompt keeping at least one word
    of its own; nothing when they share less than :data:`COMMON_CHARS` characters or do not vary."""
    lists = [str(p).split() for p in dict.fromkeys(str(p) for p in prompts)]
    if len(lists) < 2 or not all(lists):
        return CommonPrompt()
    shortest = min(len(words) for words in lists)
    start = 0
    while start < shortest - 1 and len({words[start] for words in lists}) == 1:
        start += 1
    end = 0
    while end < shortest - start - 1 and len({words[-1 - end] for words in lists}) == 1:
        end += 1
    prefix, suffix = " ".join(lists[0][:start]), " ".join(lists[0][len(lists[0]) - end:])
    if len(prefix) + len(suffix) < COMMON_CHARS:
        return CommonPrompt()
    return CommonPrompt(prefix, suffix)
