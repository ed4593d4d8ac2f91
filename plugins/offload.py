"""``offload``: keep weights in CPU memory and move them to the accelerator only while they
run: the way to fit a model larger than the GPU's memory.

    [optimizations]
    offload = { strategy = "model" }        # one whole model at a time: small slow-down
    offload = { strategy = "sequential" }   # layer by layer: least memory, much slower
    offload = { strategy = "group", offload_type = "block_level", num_blocks_per_group = 2 }
    offload = { strategy = "group", offload_type = "leaf_level", use_stream = true }

Needs an accelerator (CUDA, XPU, MPS): on a CPU-only run the weights already live in CPU memory
and diffusers itself refuses (``enable_model_cpu_offload requires accelerator``), so the plugin
refuses before the model loads. Sequential offload cannot be combined with ``compile``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from recipe_runner.api import BuildContext, Optimization, OptimizationSettings, Unsupported, hookimpl

from .common import conflict

GROUP_ONLY = ("offload_type", "num_blocks_per_group", "non_blocking", "use_stream", "record_stream", "low_cpu_mem_usage")


class Settings(OptimizationSettings):
    strategy: Literal["model", "sequential", "group"] = "model"
    offload_type: Literal["block_level", "leaf_level"] = "block_level"
    """group: offload groups of blocks, or every leaf module"""
    num_blocks_per_group: Annotated[int, Field(ge=1)] = 1
    """group, block_level: how many blocks move together"""
    non_blocking: bool = False
    use_stream: bool = False
    """group: overlap transfers with compute on a CUDA stream"""
    record_stream: bool = False
    low_cpu_mem_usage: bool = False

    @model_validator(mode="after")
    def _group_settings_need_group(self) -> Settings:
        misplaced = [k for k in GROUP_ONLY if k in self.model_fields_set and self.strategy != "group"]
        if misplaced:
            raise ValueError(f"{misplaced[0]} is a setting of strategy = \"group\"")
        return self


def check(settings: Settings, context: BuildContext) -> None:
    if settings.strategy == "sequential":
        conflict(context, ("compile",), "sequential offload moves weights inside every forward call, "
                                        "which torch.compile cannot trace")
    if str(context.device) == "cpu":
        raise Unsupported("offloading moves weights between CPU memory and an accelerator, but this run's "
                          "device is 'cpu': the weights already live in CPU memory")


def apply(pipe: Any, settings: Settings, context: BuildContext) -> None:
    device = context.device
    if settings.strategy == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif settings.strategy == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        if not hasattr(pipe, "enable_group_offload"):
            raise Unsupported(f"{type(pipe).__name__} has no enable_group_offload")
        options: dict[str, Any] = dict(offload_type=settings.offload_type, non_blocking=settings.non_blocking,
                       use_stream=settings.use_stream,
                       record_stream=settings.record_stream, low_cpu_mem_usage=settings.low_cpu_mem_usage)
        if settings.offload_type == "block_level":
            options["num_blocks_per_group"] = settings.num_blocks_per_group
        pipe.enable_group_offload(onload_device=device, offload_device="cpu", **options)


@hookimpl
def register_optimizations() -> list[Optimization]:
    return [Optimization(name="offload", settings=Settings, stage="memory", apply=apply, check=check, light_check=True,
                         places_model=True,
                         description="CPU offload: model, sequential or group (needs an accelerator)")]
