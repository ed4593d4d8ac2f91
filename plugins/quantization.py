"""``quantization``: load weights quantized, with diffusers' ``PipelineQuantizationConfig``
passed to ``from_pretrained`` (the load stage: before anything else touches the model).

    [optimizations]
    quantization = { backend = "torchao", quant_type = "int8wo" }              # the denoiser
    quantization = { backend = "bitsandbytes_4bit", bnb_4bit_quant_type = "nf4",
                     bnb_4bit_compute_dtype = "bfloat16", components = ["transformer", "text_encoder_2"] }
    quantization = { backend = "bitsandbytes_8bit", components = ["unet"] }

``components`` names the pipeline components to quantize (default: the denoiser, ``transformer``
or ``unet``). Each backend takes its own settings; a setting of another backend is an error.
bitsandbytes needs a CUDA GPU; torchao runs on a CPU too. A missing package (``torchao``,
``bitsandbytes``) is refused before the model loads.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from recipe_runner.api import BuildContext, Optimization, OptimizationSettings, Unsupported, hookimpl, model_index

from .common import declared_denoiser, require_cuda, require_package

PACKAGE = {"torchao": "torchao", "bitsandbytes_4bit": "bitsandbytes", "bitsandbytes_8bit": "bitsandbytes"}
GPU_ONLY = ("bitsandbytes_4bit", "bitsandbytes_8bit")
SETTINGS_OF = {
    "torchao": {"quant_type"},
    "bitsandbytes_4bit": {"bnb_4bit_quant_type", "bnb_4bit_compute_dtype", "bnb_4bit_use_double_quant"},
    "bitsandbytes_8bit": {"llm_int8_threshold", "llm_int8_skip_modules"},
}
Dtype = Literal["float32", "float16", "bfloat16"]


class Settings(OptimizationSettings):
    backend: Literal["torchao", "bitsandbytes_4bit", "bitsandbytes_8bit"]
    components: list[str] | None = None
    """the components to quantize (default: the denoiser)"""
    quant_type: str = "int8wo"
    """torchao: int8wo, int8dq, int4wo, float8wo, ... (torchao's names)"""
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_compute_dtype: Dtype | None = None
    bnb_4bit_use_double_quant: bool = False
    llm_int8_threshold: float = 6.0
    llm_int8_skip_modules: list[str] | None = None

    @model_validator(mode="after")
    def _settings_of_this_backend(self) -> Settings:
        own = SETTINGS_OF[self.backend] | {"backend", "components", "required"}
        foreign = sorted(k for k in self.model_fields_set if k not in own)
        if foreign:
            raise ValueError(f"{foreign[0]} is not a setting of backend {self.backend!r}")
        return self


def check(settings: Settings, context: BuildContext) -> None:
    if settings.backend in GPU_ONLY:
        require_cuda(context, f"quantization backend {settings.backend!r}")
    require_package(PACKAGE[settings.backend], f"quantization backend {settings.backend!r}")


def components(settings: Settings, context: BuildContext) -> list[str]:
    if settings.components:
        return list(settings.components)
    return [declared_denoiser(context) or "transformer"]


def quant_kwargs(settings: Settings) -> dict:
    import torch

    kwargs = {k: getattr(settings, k) for k in SETTINGS_OF[settings.backend]}
    if settings.backend == "bitsandbytes_4bit":
        kwargs["load_in_4bit"] = True
        if kwargs["bnb_4bit_compute_dtype"] is not None:
            kwargs["bnb_4bit_compute_dtype"] = getattr(torch, kwargs["bnb_4bit_compute_dtype"])
        else:
            del kwargs["bnb_4bit_compute_dtype"]
    if settings.backend == "bitsandbytes_8bit":
        kwargs["load_in_8bit"] = True
    return {k: v for k, v in kwargs.items() if v is not None}


CONFIG_CLASS = {"torchao": "TorchAoConfig", "bitsandbytes_4bit": "BitsAndBytesConfig",
                "bitsandbytes_8bit": "BitsAndBytesConfig"}


def load_kwargs(settings: Settings, context: BuildContext) -> dict:
    """A ``PipelineQuantizationConfig`` with one config per component (``quant_mapping``): the
    diffusers config class for diffusers models, the transformers one for text encoders. (With
    ``quant_backend`` instead, diffusers 0.42 refuses torchao: the two libraries' TorchAoConfig
    signatures differ.)"""
    import diffusers
    import transformers
    from diffusers import PipelineQuantizationConfig

    index = model_index(context.location, context.recipe.model.revision)
    mapping = {}
    for name in components(settings, context):
        entry = index.get(name)
        if not isinstance(entry, (list, tuple)) or entry[0] is None:
            raise Unsupported(f"the pipeline has no component {name!r} to quantize")
        library = transformers if entry[0] == "transformers" else diffusers
        try:
            mapping[name] = getattr(library, CONFIG_CLASS[settings.backend])(**quant_kwargs(settings))
        except (ValueError, ImportError, TypeError) as exc:
            raise Unsupported(f"{name}: {str(exc).strip().splitlines()[0]}") from exc
    return {"quantization_config": PipelineQuantizationConfig(quant_mapping=mapping)}


def apply(pipe: Any, settings: Settings, context: BuildContext) -> dict:
    """Loading did the work: confirm that each named component came out quantized."""
    done = []
    for name in components(settings, context):
        component = getattr(pipe, name, None)
        if component is None:
            raise Unsupported(f"the pipeline has no component {name!r} to quantize")
        if getattr(component, "hf_quantizer", None) is None and not getattr(component, "is_quantized", False):
            raise Unsupported(f"{name} was not quantized by {settings.backend}")
        done.append(name)
    return {"quantized": done}


@hookimpl
def register_optimizations() -> list[Optimization]:
    return [Optimization(name="quantization", settings=Settings, stage="load", apply=apply, check=check, light_check=True,
                         load_kwargs=load_kwargs,
                         description="quantized weights at load time (torchao, bitsandbytes), per component")]
