"""What a manifest or journal record may name: a plain image file of its own run folder, never a
path. A record can never make a run read, write, move or link anything outside its folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..base.report import warn
from .formats import FORMATS

_warned: set[tuple[int, str, str]] = set()


def record_file(folder: Path, name: Any, what: str = "a record",
                warn: Callable[[str], None] | None = warn) -> Path | None:
    """The path a manifest or journal record's ``file`` names in the run folder ``folder``, only
    when it is a plain image file name there (no folder part, no ``..``, not hidden, an image
    suffix); else None, with one warning per folder and name (``warn=None``: silently). A record
    can never make a run read, write, move or link anything outside its folder."""
    if isinstance(name, str) and plain_file_name(name):
        return folder / name
    shown = repr(name)[:120]
    if warn is not None and (id(warn), str(folder), shown) not in _warned:
        _warned.add((id(warn), str(folder), shown))
        warn(f"{folder}: {what} names the file {shown}, which is not a plain image file name in the run "
             "folder: that record is ignored")
    return None


def plain_file_name(name: str) -> bool:
    """``name`` is a file name of its own (what a run names its images): no separator, not ``.``
    or ``..`` nor hidden, no control character, the extension of a registered output format, at
    most 255 bytes."""
    return (0 < len(name.encode("utf-8", "surrogatepass")) <= 255 and not name.startswith(".")
            and "/" not in name and "\\" not in name and not any(ord(c) < 32 or ord(c) == 127 for c in name)
            and name.lower().endswith(FORMATS.extensions()) and Path(name).name == name)
