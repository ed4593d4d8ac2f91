"""``attention_backend``: choose the attention kernel of the denoiser with diffusers'
``set_attention_backend``, named as diffusers names them ("native", "flash", "sage",
"_native_flash", "flex", ...).

    [optimizations]
    attention_backend = { backend = "flash" }

Only models built on diffusers' attention dispatcher have backends (the transformers of Flux,
SD3, CogView4, ...); a UNet is refused. A backend whose package (flash-attn, sageattention, ...)
is missing is refused before the model loads.
"""

from __future__ import annotations

from typing import Any

from recipe_runner.api import BuildContext, Optimization, OptimizationSettings, Unsupported, did_you_mean, hookimpl

from .common import declared_denoiser, denoiser


class Settings(OptimizationSettings):
    backend: str = "native"


def _backend(name: str) -> Any:
    from diffusers.models.attention_dispatch import AttentionBackendName

    known = sorted(b.value for b in AttentionBackendName)
    if name.lower() not in known:
        close = did_you_mean(name, known)
        raise Unsupported(f"unknown attention backend {name!r}"
                          + (f" (did you mean {close!r}?)" if close else f"; known: {', '.join(known)}"))
    return AttentionBackendName(name.lower())


def check(settings: Settings, context: BuildContext) -> None:
    if declared_denoiser(context) == "unet":  # first: --dry-run tells it without diffusers
        raise Unsupported("the pipeline's denoiser is a UNet, whose attention processors do not use "
                          "diffusers' attention dispatcher: backends apply to transformer models")
    from diffusers.models.attention_dispatch import _check_attention_backend_requirements

    backend = _backend(settings.backend)
    try:
        _check_attention_backend_requirements(backend)
    except (RuntimeError, ImportError) as exc:
        raise Unsupported(str(exc).strip().splitlines()[0]) from exc


def apply(pipe: Any, settings: Settings, context: BuildContext) -> None:
    name, model = denoiser(pipe)
    processors = [m.processor for m in model.modules() if getattr(m, "processor", None) is not None]
    if not any(hasattr(p, "_attention_backend") for p in processors):
        raise Unsupported(f"the {name} ({type(model).__name__}) does not use diffusers' attention dispatcher")
    try:
        model.set_attention_backend(_backend(settings.backend).value)
    except (ValueError, RuntimeError, ImportError) as exc:
        raise Unsupported(str(exc).strip().splitlines()[0]) from exc


@hookimpl
def register_optimizations() -> list[Optimization]:
    return [Optimization(name="attention_backend", settings=Settings, stage="attention", apply=apply, check=check,
                         description="the denoiser's attention kernel (diffusers set_attention_backend)")]
