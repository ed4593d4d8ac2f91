"""What a recipe from someone else may not do by itself: run code or read pickled weights.

- ``model.custom_pipeline`` and ``model.trust_remote_code`` run code from the model's repository:
  they need ``--trust-remote-code`` on the command line *and* ``model.revision`` pinned to a commit
  (40 hex digits), so the code that runs is the code that was reviewed.
- Weights load only from safetensors (``use_safetensors=True``). A local model or component folder
  whose weights are pickled only (.bin, .ckpt, .pt, .pth) is refused before anything loads, naming
  safetensors, unless the command line says ``--allow-pickle``. The same holds for every weight
  file a recipe names: a LoRA adapter's ``id`` and ``weight_name`` (a pickle by its name, or by its
  first bytes whatever its name), and a file named ``.safetensors`` whose bytes are a pickle is
  refused even with ``--allow-pickle`` (it cannot load as what it says it is).

Light module: no torch. Both checks raise RecipeError (exit 2).
"""

from __future__ import annotations

import json
import os
import re
import stat
import struct
from collections.abc import Sequence
from pathlib import Path

from ..base.errors import Problem, RecipeError
from ..base.filehashes import FolderTooLarge, special_files
from ..base.safe_read import MAX_CONFIG_BYTES, read_text
from ..recipe.loading import LoadedRecipe, problem_at
from ..recipe.model import Recipe
from ..recipe.optimizations import Enabled, WeightFile
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


WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES, ".gguf", ".msgpack", ".onnx")  # any weights at all


def missing_weights(folder: Path) -> bool:
    """Whether ``folder`` is a model component (it has a ``config.json``; schedulers, tokenizers and
    image processors do not) that holds no weight file at all: the model is incomplete."""
    try:
        if not (folder / "config.json").is_file():
            return False
        return not any(p.is_file() and p.name.lower().endswith(WEIGHT_SUFFIXES) for p in folder.iterdir())
    except OSError:
        return False


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


def weights_kind(path: Path) -> str | None:
    """What a weights file holds, from its first bytes: "safetensors" (an 8-byte little-endian
    header length, then a JSON object), "pickle" (torch.save's zip archive or a raw pickle), or
    None (not a regular file, unreadable, or neither)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # never open a FIFO or a device
            return None
        with open(path, "rb") as fh:
            head = fh.read(9)
        size = path.stat().st_size
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{" and 0 < struct.unpack("<Q", head[:8])[0] <= size - 8:
        return "safetensors"
    return None


def _named_files(folder: Path, named: WeightFile) -> tuple[list[Path], bool]:
    """The local files a weight reference names (none for a Hub id), and whether it names one
    file: the file ``id``, the file ``weight_name`` inside the folder ``id``; or the weight files of
    the folder ``id`` when it names none (diffusers picks one)."""
    candidate = folder / Path(named.id).expanduser()
    weight_name = named.weight_name
    if candidate.is_file():
        return [candidate], True
    if not candidate.is_dir():
        return [], True
    if isinstance(weight_name, str):
        inside = candidate / weight_name
        return ([inside] if inside.is_file() else []), True
    try:
        return sorted(p for p in candidate.iterdir() if p.is_file() and p.suffix.lower() in (".safetensors", *PICKLE_SUFFIXES)), False
    except OSError:
        return [], False


def check_weight_files(enabled: Sequence[Enabled], loaded: LoadedRecipe | None, *, allow_pickle: bool) -> None:
    """The pickle policy on every weight file an optimization's settings name (a plugin declares
    them: ``Optimization.weight_files``, the lora plugin's adapters), before anything loads: a name
    ending in a pickle suffix (id or weight_name), a local file whose bytes are a pickle, a folder
    holding pickled weights only; and a ``.safetensors`` file that is a pickle."""
    problems: list[Problem] = []
    refuse_hint = "convert it to safetensors, or pass --allow-pickle if you trust it"
    for item in enabled:
        files_of = item.optimization.weight_files
        for named in item.call("weight_files", item.settings) if files_of is not None else []:
            base = f"optimizations.{item.name}.{named.key}"
            given = [(f"{base}.{field}", value) for field, value in (("weight_name", named.weight_name), ("id", named.id))
                     if isinstance(value, str)]
            if not allow_pickle:
                pickled_name = next(((key, value) for key, value in given if value.lower().endswith(PICKLE_SUFFIXES)), None)
                if pickled_name is not None:
                    problems.append(problem_at(loaded, pickled_name[0], f"{pickled_name[1]!r} is a pickled weights file: "
                                               "only safetensors weights load", refuse_hint))
                    continue
            folder = loaded.origin(f"{base}.id").folder if loaded is not None else Path.cwd()
            files, one = _named_files(folder, named)
            key = given[0][0]  # weight_name when given, else id
            kinds = {path: weights_kind(path) for path in files}
            lying = [p for p, kind in kinds.items() if kind == "pickle" and p.suffix.lower() == ".safetensors"]
            if lying:
                problems.append(problem_at(loaded, key, f"{lying[0]} is named .safetensors but holds pickled weights "
                                           "(a torch.save file): it cannot load as safetensors",
                                           "convert it (safetensors.torch.save_file), or name it .bin and pass --allow-pickle "
                                           "if you trust it"))
                continue
            if allow_pickle or not files:
                continue
            pickled = [p for p, kind in kinds.items() if kind == "pickle" or p.suffix.lower() in PICKLE_SUFFIXES]
            if pickled and (one or len(pickled) == len(files)):  # the file named, or a folder with nothing else
                what = "holds pickled weights" if one else "holds pickled weights only"
                problems.append(problem_at(loaded, key, f"{pickled[0]} {what}: only safetensors weights load", refuse_hint))
    if problems:
        raise RecipeError(problems)


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
        replaced = set(recipe.components) if key == "model.id" else set()  # their weights come from elsewhere
        for folder in weight_folders(location, subfolder):
            if folder.name not in replaced and missing_weights(folder):
                problems.append(problem_at(loaded, key, f"{folder} holds no weights (no .safetensors file): the model "
                                           f"{model_id!r} is incomplete", "copy or download it again"))
                continue
            if allow_pickle:
                continue
            found = pickled_only(folder)
            if found:
                names = ", ".join(p.name for p in found[:3])
                problems.append(problem_at(loaded, key, f"{folder} holds pickled weights only ({names}): only safetensors weights load",
                                           "convert them to safetensors, or pass --allow-pickle if you trust them"))
    if problems:
        raise RecipeError(problems)
