"""Model sources: what a model or component ``id`` names and where its files are.

Where to add a model source: subclass :class:`ModelSource` (one class) and register it, from a
plugin, through the ``register_model_sources`` hook. The built-ins are a local folder (a path,
relative to the recipe file that wrote it) and a Hugging Face Hub repository (any other id); the
built-in ``tiny`` plugin adds ``tiny:<kind>`` (pipelines built on this machine, for tests and the
offline demo). A plugin's source is asked first, the local folder next, the Hub last.

Light module: no torch. A source builds or downloads only in :meth:`ModelSource.locate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ..base.errors import Problem, RecipeError
from ..base.paths import is_local_reference
from ..base.registry import Registry
from ..recipe.aliases import IdProblem, Resolved, resolve
from ..recipe.loading import problem_at

if TYPE_CHECKING:
    from ..recipe.loading import LoadedRecipe
    from .info import ModelInfo


class ModelSource:
    """One kind of model reference. Subclass and override what applies."""

    name: ClassVar[str]  # shown by --list-plugins
    description: ClassVar[str] = ""
    safetensors_only: ClassVar[bool] = False  # its files are safetensors by construction: no pickle scan

    def claims(self, model_id: str) -> bool:
        """Whether this source serves ``model_id`` (``tiny:sd15``)."""
        return False

    def problem(self, model_id: str) -> tuple[str, str | None] | None:
        """What is wrong with ``model_id`` (message, hint), decided without building or downloading."""
        return None

    def locate(self, model_id: str, folder: Path) -> str:
        """What ``from_pretrained`` takes for ``model_id``: a local folder (built or fetched now if it
        must be) or a Hub id. ``folder``: the folder of the recipe file that wrote the id.
        ValueError: a message for the user (exit 2)."""
        raise NotImplementedError

    def ready(self, model_id: str) -> bool:
        """Whether ``model_id`` is on this machine already (nothing to build or fetch)."""
        return True

    def info(self, model_id: str) -> ModelInfo | None:
        """What the model declares (pipeline class, default size), without loading or building it."""
        return None


class LocalFolder(ModelSource):
    """A path: ``./models/sd15``, ``/data/sd15``, ``~/models/sd15`` (relative to the recipe's folder)."""

    name = "local folder"
    description = "a model folder on this machine (a path, relative to the recipe file)"

    def claims(self, model_id: str) -> bool:
        return is_local_reference(model_id)

    def locate(self, model_id: str, folder: Path) -> str:
        candidate = (folder / Path(model_id).expanduser()).resolve()
        if not candidate.is_dir():
            raise ValueError(f"no such folder: {candidate}")
        return str(candidate)


class HubRepo(ModelSource):
    """Any other id: a Hugging Face Hub repository (``org/model``), or a folder of that name beside the recipe."""

    name = "hub"
    description = "a Hugging Face Hub repository id (org/model), fetched by diffusers"

    def claims(self, model_id: str) -> bool:
        return True

    def locate(self, model_id: str, folder: Path) -> str:
        candidate = (folder / Path(model_id).expanduser()).resolve()
        return str(candidate) if candidate.is_dir() else model_id


class ModelSources(Registry[ModelSource]):
    """Plugin sources first, then the local folder, then the Hub."""

    BUILTIN: ClassVar[tuple[ModelSource, ...]] = (LocalFolder(), HubRepo())

    def __init__(self) -> None:
        super().__init__("model source")
        self.reset()

    def reset(self) -> None:
        self.clear()
        for source in self.BUILTIN:
            self.register(source.name, source, "recipe-runner")

    def of(self, model_id: str) -> ModelSource:
        """The source of ``model_id`` as written (an alias or ``${VAR}`` resolved first: see
        :func:`resolve_id`; one that does not resolve is judged as written, :func:`locate` says why)."""
        try:
            model_id = resolve(model_id).id
        except IdProblem:
            pass
        builtin = {s.name for s in self.BUILTIN}
        ordered = [s for s in self.values() if s.name not in builtin] + list(self.BUILTIN)
        return next(s for s in ordered if s.claims(model_id))

    def plugin_source(self, model_id: str) -> ModelSource | None:
        """The plugin source that claims ``model_id``; None for a local folder or a Hub id."""
        source = self.of(model_id)
        return None if source in self.BUILTIN else source


SOURCES = ModelSources()


def id_problem(exc: IdProblem, loaded: LoadedRecipe | None, key: str) -> RecipeError:
    """An id that does not resolve, as exit 2: at the alias file's line when the problem is there
    (the recipe key named), else at the recipe ``key`` that wrote the id."""
    if exc.file is not None:
        at = problem_at(loaded, key, "")
        where = f" (for {at.key} in {at.file}{':' + str(at.line) if at.line else ''})" if loaded is not None else ""
        return RecipeError([Problem(exc.message + where, key=exc.key, file=exc.file, line=exc.line, hint=exc.hint)])
    return RecipeError([problem_at(loaded, key, exc.message, exc.hint)])


def resolve_id(model_id: str, key: str, loaded: LoadedRecipe | None) -> Resolved:
    """What the id ``model_id`` names on this machine (an alias, ``~`` and ``${VAR}`` resolved:
    :func:`recipe_runner.recipe.aliases.resolve`); RecipeError (exit 2) at ``key`` when it does not resolve."""
    try:
        return resolve(model_id)
    except IdProblem as exc:
        raise id_problem(exc, loaded, key) from None


def locate(model_id: str, folder: Path, key: str, loaded: LoadedRecipe | None) -> str:
    """A model or component ``id`` as from_pretrained takes it (see :class:`ModelSource.locate`):
    an alias or ``${VAR}`` resolved first. RecipeError (exit 2, located at ``key``) for what does
    not resolve and what its source refuses (a missing local folder)."""
    resolved = resolve_id(model_id, key, loaded).id
    try:
        return SOURCES.of(resolved).locate(resolved, folder)
    except ValueError as exc:
        raise RecipeError([problem_at(loaded, key, str(exc))]) from exc


def local_folder(model_id: str, folder: Path, key: str, loaded: LoadedRecipe | None) -> Path | None:
    """The folder on this machine a model id names when it names one by path (a local folder,
    written as a path, through ``${VAR}`` or an alias, or a folder beside the recipe); None for a
    Hub id and a plugin source's model (``tiny:``: its id says what it is)."""
    if SOURCES.plugin_source(model_id) is not None:
        return None
    location = Path(locate(model_id, folder, key, loaded))
    return location if location.is_absolute() and location.is_dir() else None
