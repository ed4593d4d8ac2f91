"""``grid.png``: a labelled contact sheet of a run, built from the manifest and the written files.

Columns are the seeds when they vary (else the innermost axis that varies), rows are every other
combination that varies (prompt, vars, parameters, scheduler, input image), labelled on the left;
column labels run along the top. Tiles are thumbnails, and the sheet is size-capped.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MAX_TILE = 256
MAX_TILES = 2500
LABEL_WIDTH = 260
HEADER = 28
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)


def _fields(record: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {"prompt": record["prompt"], "image": record.get("image"),
                              "scheduler": record.get("scheduler"), "seed": record["seed"]}
    fields.update({f"{k}": v for k, v in record.get("vars", {}).items()})
    fields.update({f"{k}": v for k, v in record.get("params", {}).items() if k not in fields})
    return fields


def layout(records: Sequence[dict[str, Any]]) -> tuple[str | None, list[str], list[tuple[str, list[dict[str, Any]]]], list[str]]:
    """(column field, column labels, [(row label, records in column order)], row fields)."""
    rows_fields = [_fields(r) for r in records]
    names = list(dict.fromkeys(k for f in rows_fields for k in f))
    varying = [n for n in names if len({repr(f.get(n)) for f in rows_fields}) > 1]
    column = "seed" if "seed" in varying else (varying[-1] if varying else None)
    row_fields = [n for n in varying if n != column and not (n == "prompt" and any(v in varying for v in records[0].get("vars", {})))]
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


def make_grid(folder: Path, records: Sequence[dict[str, Any]]) -> Path | None:
    """Write ``folder/grid.png`` from the done records; returns its path (None when no image)."""
    from PIL import Image, ImageDraw, ImageFont

    from .outputs import atomic_write, encode

    done = [r for r in records if r.get("status") == "done" and (folder / r["file"]).is_file()]
    if not done:
        return None
    done = done[:MAX_TILES]
    column, columns, rows, row_fields = layout(done)
    with Image.open(folder / done[0]["file"]) as first:
        w, h = first.size
    scale = min(1.0, MAX_TILE / max(w, h))
    tw, th = max(1, int(w * scale)), max(1, int(h * scale))
    label_w = LABEL_WIDTH if row_fields else 0
    header = HEADER if column else 0
    font = ImageFont.load_default()
    sheet = Image.new("RGB", (label_w + tw * len(columns), header + th * len(rows)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for c, text in enumerate(columns):
        draw.text((label_w + c * tw + 4, 6), text, fill=INK, font=font)
    for r, (label, cells) in enumerate(rows):
        y = header + r * th
        if label_w:
            wrapped = "\n".join(textwrap.wrap(label.replace("\n", " | "), width=40)[: max(1, th // 12)])
            draw.multiline_text((4, y + 4), wrapped, fill=INK, font=font, spacing=2)
        for c, record in enumerate(cells):
            if record is None:
                continue
            with Image.open(folder / record["file"]) as image:
                tile = image.convert("RGB").resize((tw, th))
            sheet.paste(tile, (label_w + c * tw, y))
    path = folder / "grid.png"
    atomic_write(path, encode(sheet, "png", 95, None))
    return path
