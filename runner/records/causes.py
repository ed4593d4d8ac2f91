"""What differs between the facts an image recorded (its ``environment`` chunk) and today's, named
one line each, the most likely cause of different pixels first: the model files, the CPU thread
count, the library versions, the device, dtype and determinism, the plugins, then the rest.

``--reproduce`` (:mod:`recipe_runner.running.reproduce`) says these when the pixels differ, and as
a note when they match though facts differ; ``--compare`` (:mod:`recipe_runner.views.compare`) names
the same facts between two runs as the likely causes of their differing pixels. Light module: plain
dictionaries, no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# The recorded environment facts that decide pixels, the likelier cause first, each with why. The
# one list both --reproduce (against today's) and --compare (between two runs) name causes from.
THREADS_WHY = "CPU kernels round differently per thread count; pin [run] threads"
FACTS: tuple[tuple[str, str], ...] = (
    ("threads", THREADS_WHY),
    ("torch", "kernels change between torch versions"),
    ("diffusers", "pipelines and schedulers change between diffusers versions"),
    ("transformers", "text encoders change between transformers versions"),
    ("accelerate", "model loading changes between accelerate versions"),
    ("device", "each device computes with its own kernels"),
    ("device_name", "each device computes with its own kernels"),
    ("dtype", "a different precision"),
    ("deterministic", "non-deterministic kernels vary between runs"),
    ("generator_device", "each generator device draws different noise"),
)
# What may only matter, after the plugins.
LATER: tuple[tuple[str, str], ...] = (
    ("platform", "another platform's math libraries"),
    ("python", "another Python"),
    ("recipe_runner", "another recipe-runner"),
)
SHOWN_FILES = 10  # file names listed per model and kind of change; the rest counted
@dataclass(frozen=True)
class Since:
    """How a line says what the model files are compared with."""

    differs: str  # one file
    differ: str  # several
    added: str
    gone: str


SINCE_IMAGE = Since("differs from when this image was made", "differ from when this image was made",
                    "was added since", "is gone since")
BETWEEN_RUNS = Since("differs between the runs", "differ between the runs", "is only in B's", "is only in A's")
NOT_RECORDED = ("model files: not recorded in this image (made before recipe-run recorded them): whether they "
                "changed cannot be told")
CHECKED = "the model files, threads, torch, diffusers, transformers, accelerate, device, dtype, determinism and plugins"


@dataclass
class Facts:
    """What differs (``differences``, most likely cause first) and what is worth knowing but did not
    change this re-generation (``notes``: a thread count pinned to the recorded one)."""

    differences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    models_recorded: bool = True

    def lines(self, identical: bool) -> list[str]:
        """The report's lines under its first one."""
        out = [] if self.models_recorded else [NOT_RECORDED]
        if self.differences:
            out.append("recorded facts that differ now (these pixels did not change):" if identical else
                       "what differs from when the image was made, most likely cause first:")
            out += [f"  {line}" for line in self.differences]
        elif not identical:
            checked = CHECKED if self.models_recorded else CHECKED.replace("the model files, ", "")
            out.append(f"no {'' if self.models_recorded else 'other '}recorded fact differs: {checked} are as recorded: "
                       "the cause is something not recorded (the CPU's or GPU's kernels, a BLAS library, ...)")
        return out + [f"note: {note}" for note in self.notes]


def compare(recorded: dict[str, Any], now: dict[str, Any], default_threads: int | None = None,
            plugins: Sequence[str] = (), used: Callable[[Iterable[str]], set[str]] | None = None) -> Facts:
    """``recorded``: the image's environment; ``now``: the re-generation's (its thread count the
    one actually used); ``default_threads``: this process's count before pinning; ``plugins``: the
    recorded plugins not loaded now, or in another version
    (:func:`recipe_runner.plugin_api.failures.missing`); ``used``: of the model references
    recorded, those the image's job loads (:func:`job_references`; default: all of them)."""
    facts = Facts()
    models = recorded.get("models")
    if isinstance(models, dict):
        current = now.get("models")
        current = current if isinstance(current, dict) else {}
        if used is not None:
            keep = used(models.keys() | current.keys())
            models, current = ({k: v for k, v in side.items() if k in keep} for side in (models, current))
        facts.differences += model_differences(models, current)
    else:
        facts.models_recorded = False
    threads, used = recorded.get("threads"), now.get("threads")
    if threads is not None and threads != used:
        facts.differences.append(f"threads {threads} -> {used} (the recorded thread count could not be pinned)")
    elif threads is not None and default_threads is not None and default_threads != threads:
        facts.notes.append(f"threads {threads} -> {default_threads} on this machine: pinned to the recorded "
                           f"{threads} for this re-generation (a plain run here uses {default_threads}; "
                           "[run] threads pins it)")
    for name, _ in FACTS[1:]:  # threads: above
        facts.differences += _changed(name, recorded, now)
    facts.differences += [f"plugin {line}" for line in plugins]
    for name, _ in LATER:
        facts.differences += _changed(name, recorded, now)
    return facts


def environment_causes(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Of two recorded environments, the facts that differ and decide pixels (both recorded), the
    likelier cause first: ``threads 1 -> 2: CPU kernels round differently per thread count; ...``."""
    out = []
    for name, why in FACTS + LATER:
        old, new = a.get(name), b.get(name)
        if old is not None and new is not None and old != new:
            out.append(f"{name.replace('_', ' ')} {_shown(old)} -> {_shown(new)}: {why}")
    return out


def job_references(keys: Iterable[str], axes: Mapping[str, Sequence[Any]], job_axes: Mapping[str, Any]) -> set[str]:
    """Of the model references ``keys`` (``model``, ``components.<name>``, ``matrix.axes.<axis>.<i>``),
    those a job loads: its own value of each axis (``job_axes``, of the recipe's ``axes``), and
    ``model`` and ``components.<name>`` unless an axis of that name replaces them. A model another
    job of the recipe loads is no cause of this image's pixels."""
    used = set()
    for key in keys:
        if key.startswith("matrix.axes."):
            axis, _, index = key[len("matrix.axes."):].rpartition(".")
            values = axes.get(axis) or []
            if axis in job_axes and index.isdigit() and int(index) < len(values) and values[int(index)] == job_axes[axis]:
                used.add(key)
        elif key not in axes:
            used.add(key)
    return used


def _changed(name: str, recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    if name not in recorded:  # not recorded then: nothing to compare
        return []
    old, new = recorded.get(name), now.get(name)
    if old == new:
        return []
    return [f"{name.replace('_', ' ')} {_shown(old)} -> {_shown(new)}"]


def _shown(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return {True: "true", False: "false", None: "(none)"}[value]
    return str(value)[:60]


def model_differences(recorded: Mapping[str, Any], now: Mapping[str, Any], since: Since = SINCE_IMAGE) -> list[str]:
    """Per model reference (``model``, ``components.vae``, an axis value): the files that differ,
    were added or are gone, or the Hub commit that moved. ``since``: what the files are compared
    with, as the lines say it (:data:`SINCE_IMAGE`, :data:`BETWEEN_RUNS`)."""
    out: list[str] = []
    for key in sorted(recorded.keys() | now.keys(), key=lambda k: (k != "model", k)):
        old, new = recorded.get(key), now.get(key)
        if not isinstance(old, dict):
            out.append(f"{key}: not recorded in this image")
            continue
        if not isinstance(new, dict):
            out.append(f"{key}: recorded in this image, but the recipe loads no such model now")
            continue
        if old.get("kind") != new.get("kind"):
            out.append(f"{key}: was a {old.get('kind')} model, now a {new.get('kind')} one")
        elif new.get("kind") == "hub":
            if old.get("commit") != new.get("commit"):
                out.append(f"{key}: Hub commit {old.get('commit')} -> {new.get('commit')}")
        elif old.get("sha256") != new.get("sha256"):
            out += _file_differences(key, old, new, since)
    return out


def _file_differences(key: str, old: dict[str, Any], new: dict[str, Any], since: Since) -> list[str]:
    before, after = old.get("files"), new.get("files")
    if not isinstance(before, dict) or not isinstance(after, dict):
        count = old.get("file_count")
        held = f"their combined hash only, of {count} files" if count else "their combined hash only"
        return [f"{key}: its files {since.differ} (the image records {held}; the run's manifest.json lists each)"]
    changed = sorted(n for n in before.keys() & after.keys() if before[n] != after[n])
    added, removed = sorted(after.keys() - before.keys()), sorted(before.keys() - after.keys())
    out = []
    for names, one, several in ((changed, since.differs, "differ"), (added, since.added, "were added"),
                                (removed, since.gone, "are gone")):
        out += [f"{key}: {name} {one}" for name in names[:SHOWN_FILES]]
        if len(names) > SHOWN_FILES:
            out.append(f"{key}: {len(names) - SHOWN_FILES} more files {several}")
    return out
