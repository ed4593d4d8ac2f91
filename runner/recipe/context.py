"""What plugins know about the pipeline being built: :class:`BuildContext`, the ``context`` every
optimization function and the ``pipeline_ready`` hook receive.

Light module (no torch; of the runner only its reporter, which `warn` prints through): the public plugin module
(:mod:`recipe_runner.api`) exposes it without importing the build machinery.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..base import report

if TYPE_CHECKING:
    from ..recipe.loading import LoadedRecipe
    from ..recipe.model import Recipe


@dataclass
class BuildContext:
    """What plugins know about the pipeline being built (the ``context`` of every hook)."""

    recipe: Recipe
    device: str
    dtype: str  # "float32" | "float16" | "bfloat16": the dtype actually used
    task: str
    location: str  # the resolved model: a local folder or a Hub id
    enabled: list[str] = field(default_factory=list)  # optimization names switched on
    allow_pickle: bool = False
    trust_remote_code: bool = False  # --trust-remote-code: model.custom_pipeline / trust_remote_code may run
    warn: Callable[[str], None] = report.warn
    loaded: LoadedRecipe | None = None  # key origins: plugins resolve paths against the recipe's folder

    @property
    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype)


class HasHooks(Protocol):
    """What the pipeline stage needs of the loaded plugins: their hooks (``pipeline_ready`` and the
    optimizations' callbacks are called through it). The plugin manager's ``Plugins`` is one."""

    @property
    def hook(self) -> Any: ...
