"""What a recipe from someone else may not do by itself: run code or read pickled weights.

- ``model.custom_pipeline`` and ``model.trust_remote_code`` run code from the model's repository:
  they need ``--trust-remote-code`` on the command line *and* ``model.revision`` pinned to a commit
  (40 hex digits), so the code that runs is the code that was reviewed.
- Weights load only from safetensors (``use_safetensors=True``). A local model or component folder
  whose weights are pickled only (.bin, .ckpt, .pt, .pth) is refused before anything loads, naming
  safetensors, unless the command line says ``--allow-pickle``.

Light module: no torch. Both checks raise RecipeError (exit 2).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..base.errors import Problem, RecipeError
from ..base.filehashes import FolderTooLarge, special_files
from ..base.safe_read import MAX_CONFIG_BYTES, read_text
from ..recipe.loading import LoadedRecipe, problem_at
from ..recipe.model import Recipe
from .sources import SOURCES, locate

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
COMMIT = re.compile(r"[0-9a-f]{40}")


def check_recipe(recipe: Recipe, loaded: LoadedRecipe | None, *, trust_remote_code: bool, allow_pickle: bool) -> None:
    """The command-line permissions a recipe needs and does not have (no file is opened)."""
    problems: list[Problem] = []
    m = recipe.model
    wants = [(key, value) for key, value in (("model.custom_pipeline", m.custom_pipeline),
                                             ("model.trust_remote_code", m.trust_remote_code)) if value]
    for key, _ in wants:
        if not trust_remote_code:
            problems.append(problem_at(loaded, key, "runs code from the model's repository: refused",
                                     "pass --trust-remote-code on the command line after reviewing that code; "
                                     "a recipe never switches it on by itself"))
        elif not (m.revision and COMMIT.fullmatch(m.revision)):
            problems.append(problem_at(loaded, "model.revision" if m.revision else key,
                                     f"remote code needs model.revision pinned to a commit (40 hex digits), got {m.revision!r}",
                                     "the code that runs must be the code you reviewed"))
    if not allow_pickle:
        ids = [("model.id", m.id)] + [(f"components.{n}.id", c.id) for n, c in recipe.components.items()]
        for key, value in ids:
            if value.lower().endswith(PICKLE_SUFFIXES):
                problems.append(problem_at(loaded, key, f"{value!r} is a pickled weights file: only safetensors weights load",
                                         "convert it to safetensors, or pass --allow-pickle if you trust it"))
    if problems:
        raise RecipeError(problems)


def pickled_only(folder: Path) -> list[Path]:
    """The pickled weight files of a folder that holds no safetensors file (else [])."""
    try:
        files = [p for p in folder.iterdir() if p.is_file()]
    except OSError:
        return []
    if any(p.suffix == ".safetensors" for p in files):
        return []
    return sorted(p for p in files if p.suffix.lower() in PICKLE_SUFFIXES)


def weight_folders(location: Path, subfolder: str | None = None) -> list[Path]:
    """The folders of a local diffusers model that hold weights: each component's folder named in
    model_index.json, or the folder itself (a single component)."""
    root = location / subfolder if subfolder else location
    index = root / "model_index.json"
    if not index.is_file():
        return [root]
    try:
        names = [k for k, v in json.loads(read_text(index, MAX_CONFIG_BYTES, what="model index")).items()
                 if not k.startswith("_") and isinstance(v, list)]
    except (ValueError, OSError, AttributeError):
        return [root]
    return [root / name for name in names if (root / name).is_dir()]


def check_sources(recipe: Recipe, loaded: LoadedRecipe, *, allow_pickle: bool) -> None:
    """What each model and component ``id`` names on this machine, checked without loading it: a
    plugin source's model it knows (``tiny:sd15``), a local folder that exists and (without ``--allow-pickle``)
    does not hold pickled weights only. Hub ids are checked when they load."""
    problems = []
    targets: list[tuple[str, str, str | None]] = [("model.id", recipe.model.id, None)]
    targets += [(f"components.{name}.id", spec.id, spec.subfolder) for name, spec in recipe.components.items()]
    for key, model_id, subfolder in targets:
        source = SOURCES.plugin_source(model_id)
        if source is not None:
            refused = source.problem(model_id)
            if refused is not None and key != "model.id":  # the model's: checked with its class (preflight)
                problems.append(problem_at(loaded, key, *refused))
            if source.safetensors_only or refused is not None:
                continue
        try:
            location = Path(locate(model_id, loaded.origin(key).folder, key, loaded))
        except RecipeError as exc:
            problems += exc.problems
            continue
        if not location.is_dir():
            continue  # a Hub id: diffusers is asked for safetensors only
        try:
            special = special_files(location)
        except FolderTooLarge as exc:
            problems.append(problem_at(loaded, key, str(exc)))
            continue
        if special:
            problems.append(problem_at(loaded, key, f"{location} holds {', '.join(special[:3])}"
                                       f"{' ...' if len(special) > 3 else ''}: not regular files (a FIFO, device or "
                                       "socket would block the load or read without end)"))
            continue
        if allow_pickle:
            continue
        for folder in weight_folders(location, subfolder):
            found = pickled_only(folder)
            if found:
                names = ", ".join(p.name for p in found[:3])
                problems.append(problem_at(loaded, key, f"{folder} holds pickled weights only ({names}): only safetensors weights load",
                                           "convert them to safetensors, or pass --allow-pickle if you trust them"))
    if problems:
        raise RecipeError(problems)
