"""The plan of one recipe: what ``prepare`` (every check without torch) makes of a recipe file,
and every later stage consumes: the dry run, the look at the output folder, the run, ``--watch``,
``--reproduce`` and ``--lock``. Computed once per recipe; light (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ..recipe.loading import LoadedRecipe
from ..recipe.model import Recipe
from ..recipe.optimizations import Enabled
from .matrix import Job, same_as
from .variants import Variant


@dataclass
class Prepared:
    """A recipe that validated: ready to print as a plan or to run."""

    loaded: LoadedRecipe
    recipe: Recipe
    jobs: list[Job]
    enabled: list[Enabled]
    inputs: dict[str, str]  # as written -> absolute path or URL
    input_keys: dict[str, str]  # as written -> dotted key
    out_dir: Path
    variants: list[Variant]  # the pipelines its jobs need (one: the recipe, without build axes)
    by_variant: dict[str, Variant] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.by_variant = {v.id: v for v in self.variants}

    def variant_of(self, job: Job) -> Variant:
        """The variant (pipeline) that makes ``job``."""
        return self.by_variant[job.variant]

    @cached_property
    def same_as(self) -> dict[int, int]:
        """The jobs another job makes (equal identities, :func:`recipe_runner.plan.matrix.same_as`):
        index -> the index of the job that makes its image. Generated once, shown in every cell."""
        return same_as(self.jobs)
