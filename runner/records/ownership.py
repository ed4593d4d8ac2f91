"""Which recipe file a run folder belongs to: the manifest records it (``recipe_path``, in the
portable form of :func:`recipe_runner.records.provenance.owner_of`), and a run of another recipe
file with the same ``name`` into that folder is refused before anything loads, naming both files.
Light module: reads the last bytes of a manifest, no torch.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from ..base.errors import RecipeError
from ..base.paths import regular_file, repository_root
from ..base.safe_read import read_text
from ..plan.prepared import Prepared
from ..recipe.loading import display_path
from .manifest import MANIFEST_NAME
from .provenance import owner_of


def check_owners(prepared: Sequence[Prepared], force: bool) -> None:
    """A run folder belongs to the recipe file that made it (the manifest's ``recipe_path``,
    :func:`recipe_runner.records.provenance.owner_of`): another recipe file of the same ``name``
    writing there is refused (RecipeError, exit 2), before anything loads, naming both files and
    the folder, unless ``force`` (--force takes the folder over). A folder without the record (made
    before it existed), or whose recorded recipe file is gone, is taken over silently."""
    problems = []
    for item in prepared:
        recorded = recorded_owner(item.out_dir)
        if recorded is None or force:
            continue
        mine = owner_of(item.loaded.path, item.out_dir.parent)
        if recorded != mine and owner_exists(recorded, item.loaded.path, item.out_dir.parent):
            problems.append(item.loaded.problem(
                "name", f"the output folder {display_path(item.out_dir)} was made by {recorded}, not by this recipe "
                f"file ({mine}); both have name = {item.recipe.name!r}: give this recipe another name, write to "
                "another --out, or pass --force to take the folder over (its images then move to its history folder)"))
    if problems:
        raise RecipeError(problems)


_OWNER_AT_END = re.compile(rb'"recipe_path":\s*("(?:[^"\\]|\\.)*")\s*\}\s*$')


def owner_exists(recorded: str, recipe_file: Path, root: Path) -> bool:
    """Whether the recipe file a folder records as its owner is still there, another file than
    ``recipe_file`` (a folder whose recipe file was moved, renamed or deleted, or that was copied
    elsewhere, is taken over)."""
    mine = recipe_file.resolve()
    repo = repository_root(mine.parent)
    for base in ([repo] if repo is not None else []) + [root.resolve()]:
        candidate = Path(os.path.normpath(base / recorded))  # as owner_of wrote it: relpath's lexical ".."
        try:
            if candidate.is_file() and candidate.resolve() != mine:
                return True
        except OSError:
            continue
    return False


def recorded_owner(folder: Path) -> str | None:
    """The recipe file the manifest of ``folder`` says made it (None: no manifest, or no record).
    ``recipe_path`` is the manifest's last key: read from its last bytes (a 100,000-image manifest
    is not parsed twice), the whole file only when it is not there."""
    path = folder / MANIFEST_NAME
    if not regular_file(path):
        return None
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - 4096))
            found = _OWNER_AT_END.search(fh.read())
        if found is not None:
            owner = json.loads(found.group(1))
        else:
            data = json.loads(read_text(path, follow=False, what="manifest"))
            owner = data.get("recipe_path") if isinstance(data, dict) else None
    except (ValueError, OSError):
        return None
    return owner if isinstance(owner, str) else None
