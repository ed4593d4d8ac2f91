"""``grid.png``: a labelled contact sheet of a run, built from the manifest and the written files.

Columns are the seeds when they vary (else the innermost axis that varies), rows are every other
combination that varies (prompt, vars, parameters, scheduler, input image), labelled on the left;
column labels run along the top, and what all images share (the prompt, when only vars vary in it,
or the one prompt of the run) is a wrapped title above them.

Tiles are between MIN_TILE and MAX_TILE pixels on their long side: 64x64 images from a tiny test
pipeline are upscaled (nearest neighbour: crisp pixels, no invented detail) so that the labels
stay legible beside them, large images are thumbnailed. The whole sheet is capped at MAX_SIDE
pixels a side (tiles shrink, down to FLOOR_TILE) and MAX_TILES tiles.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIN_TILE = 192
MAX_TILE = 256
FLOOR_TILE = 64
MAX_SIDE = 8192
MAX_TILES = 2500
LABEL_WIDTH = 300
FONT_SIZE = 14
LINE = FONT_SIZE + 4
PAD = 6
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
RULE = (200, 200, 200)


def _fields(record: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {"prompt": record["prompt"], "image": record.get("image"),
                              "scheduler": record.get("scheduler"), "seed": record["seed"]}
    fields.update({f"{k}": v for k, v in record.get("vars", {}).items()})
    fields.update({f"{k}": v for k, v in record.get("params", {}).items() if k not in fields})
    return fields


def layout(records: Sequence[dict[str, Any]]) -> tuple[str | None, list[str], list[tuple[str, list[dict[str, Any] | None]]], list[str]]:
    """(column field, column labels, [(row label, records in column order)], row fields)."""
    rows_fields = [_fields(r) for r in records]
    names = list(dict.fromkeys(k for f in rows_fields for k in f))
    varying = [n for n in names if len({repr(f.get(n)) for f in rows_fields}) > 1]
    column = "seed" if "seed" in varying else (varying[-1] if varying else None)
    rendered = ("prompt", "negative_prompt", "negative_prompt_2")  # what the vars render into: the vars say it
    vars_vary = any(v in varying for v in records[0].get("vars", {}))
    row_fields = [n for n in varying if n != column and not (n in rendered and vars_vary)]
    columns: list[str] = []
    rows: dict[str, list[dict[str, Any]]] = {}
    for record, fields in zip(records, rows_fields):
        col = f"{column} {fields.get(column)}" if column else ""
        if col not in columns:
            columns.append(col)
        label = "\n".join(str(fields[n]) if n == "prompt" else f"{n} = {fields.get(n)}" for n in row_fields)
        rows.setdefault(label, []).append(record)
    ordered = [(label, [next((r for r in recs if (f"{column} {_fields(r).get(column)}" if column else "") == c), None) for c in columns])
               for label, recs in rows.items()]
    return column, columns, ordered, row_fields


def title_of(records: Sequence[dict[str, Any]], row_fields: list[str]) -> str:
    """The text every tile shares: the prompt when it is not a row label (one prompt, or one
    template whose vars are the rows), shown once above the sheet."""
    if "prompt" in row_fields:
        return ""
    prompts = list(dict.fromkeys(r["prompt"] for r in records))
    if len(prompts) == 1:
        return prompts[0]
    return "prompt: " + " | ".join(prompts)


@dataclass(frozen=True)
class Geometry:
    """Where everything is on the sheet: tile (x, y) = (left + c * tile_w, top + r * tile_h)."""

    tile_w: int
    tile_h: int
    left: int  # width of the row-label column
    top: int  # height of the title and column-label bands
    columns: int
    rows: int

    @property
    def size(self) -> tuple[int, int]:
        return self.left + self.columns * self.tile_w, self.top + self.rows * self.tile_h


def tile_size(w: int, h: int, columns: int, rows: int, left: int) -> tuple[int, int]:
    """Scale (w, h) so the long side is in [MIN_TILE, MAX_TILE], then shrink to fit MAX_SIDE."""
    long_side = max(w, h)
    target = min(max(long_side, MIN_TILE), MAX_TILE)
    fit_w = (MAX_SIDE - left) // max(1, columns)
    fit_h = (MAX_SIDE - 4 * LINE) // max(1, rows)
    target = max(FLOOR_TILE, min(target, fit_w * long_side // max(1, w), fit_h * long_side // max(1, h)))
    scale = target / long_side
    return max(1, round(w * scale)), max(1, round(h * scale))


def _wrap(text: str, width_px: int, limit: int) -> list[str]:
    chars = max(8, width_px // (FONT_SIZE * 6 // 10))
    lines: list[str] = []
    for part in text.split("\n"):
        lines += textwrap.wrap(part, width=chars) or [""]
    if len(lines) > limit:
        lines = lines[:limit]
        lines[-1] = lines[-1][: max(0, chars - 1)] + "…"
    return lines


def compose(folder: Path, records: Sequence[dict[str, Any]]) -> tuple[Any, Geometry] | None:
    """The sheet as a PIL image and its geometry, from the done records (None when none)."""
    from PIL import Image, ImageDraw, ImageFont

    done = [r for r in records if r.get("status") == "done" and (folder / r["file"]).is_file()]
    if not done:
        return None
    done = done[:MAX_TILES]
    column, columns, rows, row_fields = layout(done)
    with Image.open(folder / done[0]["file"]) as first:
        w, h = first.size
    left = LABEL_WIDTH if row_fields else 0
    tw, th = tile_size(w, h, len(columns), len(rows), left)
    title = _wrap(title_of(done, row_fields), left + tw * len(columns) - 2 * PAD, 4)
    column_lines = max(len(_wrap(c, tw - 2 * PAD, 3)) for c in columns) if column else 0
    title_h = (len(title) * LINE + PAD) if title and title != [""] else 0
    top = title_h + (column_lines * LINE + 2 * PAD if column else 0)
    geometry = Geometry(tw, th, left, top, len(columns), len(rows))
    font = ImageFont.load_default(size=FONT_SIZE)
    sheet = Image.new("RGB", geometry.size, BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title_h:
        draw.multiline_text((PAD, PAD // 2), "\n".join(title), fill=INK, font=font, spacing=4)
    for c, text in enumerate(columns):
        draw.multiline_text((left + c * tw + PAD, title_h + PAD), "\n".join(_wrap(text, tw - 2 * PAD, 3)),
                            fill=INK, font=font, spacing=4)
    resample = Image.Resampling.NEAREST if tw >= w else Image.Resampling.LANCZOS
    for r, (label, cells) in enumerate(rows):
        y = top + r * th
        if left:
            lines = _wrap(label, left - 2 * PAD, max(1, (th - PAD) // LINE))
            draw.multiline_text((PAD, y + PAD), "\n".join(lines), fill=INK, font=font, spacing=4)
            draw.line([(0, y), (left - 1, y)], fill=RULE)
        for c, record in enumerate(cells):
            if record is None:
                continue
            with Image.open(folder / record["file"]) as image:
                tile = image.convert("RGB").resize((tw, th), resample)
            sheet.paste(tile, (left + c * tw, y))
    return sheet, geometry


def make_grid(folder: Path, records: Sequence[dict[str, Any]]) -> Path | None:
    """Write ``folder/grid.png`` from the done records; returns its path (None when no image)."""
    import io

    from .paths import atomic_write

    composed = compose(folder, records)
    if composed is None:
        return None
    path = folder / "grid.png"
    buffer = io.BytesIO()
    composed[0].save(buffer, format="PNG", compress_level=1)  # a preview, rewritten each run: fast over small
    atomic_write(path, buffer.getvalue())
    return path
