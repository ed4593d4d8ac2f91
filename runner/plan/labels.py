"""How a scheduler is named to people: the class name with its options, and the sampler name
AUTOMATIC1111's web UI uses for the same thing where one maps.

``scheduler_label({"name": "DPMSolverMultistepScheduler", "options": {"use_karras_sigmas": True}})``
is ``"DPMSolverMultistepScheduler (use_karras_sigmas=true)"``; :func:`a1111_sampler` of the same
spec is ``"DPM++ 2M Karras"``. Used by the dry run, the manifest's job records, the A1111
``parameters`` text, and meant for the grid's and gallery's labels. Light module: no torch.
"""

from __future__ import annotations

import json
from typing import Any

# (class name, the options that must hold) -> A1111 sampler name. The first entry that matches wins,
# so the entries with more options come first. Options not listed here (and not set) keep the name.
_KARRAS = {"use_karras_sigmas": True}
_A1111: list[tuple[str, dict[str, Any], str]] = [
    ("DPMSolverMultistepScheduler", {**_KARRAS, "algorithm_type": "sde-dpmsolver++"}, "DPM++ 2M SDE Karras"),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, "DPM++ 2M SDE"),
    ("DPMSolverMultistepScheduler", _KARRAS, "DPM++ 2M Karras"),
    ("DPMSolverMultistepScheduler", {}, "DPM++ 2M"),
    ("DPMSolverSinglestepScheduler", _KARRAS, "DPM++ SDE Karras"),
    ("DPMSolverSinglestepScheduler", {}, "DPM++ SDE"),
    ("KDPM2DiscreteScheduler", _KARRAS, "DPM2 Karras"),
    ("KDPM2DiscreteScheduler", {}, "DPM2"),
    ("KDPM2AncestralDiscreteScheduler", _KARRAS, "DPM2 a Karras"),
    ("KDPM2AncestralDiscreteScheduler", {}, "DPM2 a"),
    ("EulerDiscreteScheduler", {}, "Euler"),
    ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    ("HeunDiscreteScheduler", {}, "Heun"),
    ("LMSDiscreteScheduler", _KARRAS, "LMS Karras"),
    ("LMSDiscreteScheduler", {}, "LMS"),
    ("DDIMScheduler", {}, "DDIM"),
    ("PNDMScheduler", {}, "PLMS"),
    ("UniPCMultistepScheduler", {}, "UniPC"),
    ("LCMScheduler", {}, "LCM"),
]


def _spec(scheduler: dict[str, Any] | str | None) -> tuple[str | None, dict[str, Any]]:
    if scheduler is None:
        return None, {}
    if isinstance(scheduler, str):
        return scheduler, {}
    return scheduler.get("name"), dict(scheduler.get("options") or {})


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value


def scheduler_label(scheduler: dict[str, Any] | str | None, default: str | None = None) -> str | None:
    """``Name (option=value, ...)``: the class name and every option, in the order written;
    ``default`` (the pipeline's own scheduler) when the job sets none."""
    name, options = _spec(scheduler)
    if name is None:
        return default
    if not options:
        return name
    return f"{name} ({', '.join(f'{k}={_value(v)}' for k, v in options.items())})"


def a1111_sampler(scheduler: dict[str, Any] | str | None, default: str | None = None) -> str | None:
    """The A1111 sampler name of a scheduler spec where one maps (options beyond the mapped ones
    that change the schedule make it unmapped), else :func:`scheduler_label`."""
    name, options = _spec(scheduler)
    if name is None:
        name = default
    if name is None:
        return None
    for cls, needed, sampler in _A1111:
        if cls != name or any(options.get(k) != v for k, v in needed.items()):
            continue
        extra = {k: v for k, v in options.items() if k not in needed}
        if all(v in (False, None) for v in extra.values()):  # switched-off options change nothing
            return sampler
        break
    return scheduler_label({"name": name, "options": options})
