"""Contact sheets of a run (``grid.png``, or ``grid-*.png`` when there are several), built from the
manifest and the written files.

Layout, like an X/Y/Z plot: the X fields' values are the columns (labelled along the top), the Y
fields' values the rows (labelled on the left), and each value of the Z fields gets sheets of its
own. The default: seeds across (else the innermost field that varies), every other field that
varies down the side (the axes, the vars, the prompts, the input images, the scheduler with its
options), no Z. ``[output.grid]`` chooses: ``x``, ``y``, ``z`` (a field name or a list: ``seed``,
``prompt``, ``image``, ``scheduler``, a var or an axis name) and ``layout = "list"``. Zip mode, or
a layout whose cells would collide, is laid out as a list: one captioned tile per image, in matrix
order, wrapped into rows.

A table too wide is wrapped into bands (each with its column labels), a table too tall is cut into
blocks set side by side, and what does not fit one sheet goes onto pages: every sheet stays within
MAX_ASPECT (4:1 either way), MAX_SIDE pixels a side and PAGE_TILES tiles. Labels are drawn at
FONT_SIZE pixels, legible at 100% zoom; long prompts are shortened (the gallery has the full text).

File names: ``grid.png`` when the run makes one sheet; otherwise ``grid-<z>-<page>.png`` pieces,
``grid-<NN>-<slug of the Z value>`` with ``-p<page>`` when a sheet has several pages (for
example ``grid-p1.png``, ``grid-02-euler-a-p3.png``). Sheets of earlier runs that the current
layout does not make are removed, so the gallery and the sheets always show the same images.

Tiles are between MIN_TILE and MAX_TILE pixels on their long side: 64x64 images from a tiny test
pipeline are upscaled (nearest neighbour: crisp pixels, no invented detail), large images are
thumbnailed. Light module: Pillow only.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..axes.registry import is_build_axis
from ..base.paths import regular_file, write_if_changed
from ..base.safe_read import open_image
from ..records.names import record_file
from .jobfields import CommonPrompt, Described, canonical, common_prompt, describe, job_label, short_name, shorten

if TYPE_CHECKING:
    from PIL.Image import Image

MIN_TILE = 192
MAX_TILE = 256
MAX_SIDE = 16384
MAX_ASPECT = 4.0
PAGE_TILES = 256
SHEET_TILES = 100  # the default layout splits a bigger table into sheets (one per value of a field)
TARGET_ASPECT = 4 / 3
TARGET_WIDTH = 4096
LABEL_WIDTH = 320
FONT_SIZE = 16
LINE = FONT_SIZE + 5
PAD = 8
GAP = 24
PROMPT_CHARS = 90  # a prompt in a label: shortened beyond this
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (90, 90, 90)
RULE = (200, 200, 200)
SHEET_NAME = re.compile(r"grid(-[a-z0-9-]+)?\.png")


# --- which field goes where --------------------------------------------------------------------


def field_names(recipe: Mapping[str, Any]) -> dict[str, str]:
    """The names a recipe's ``[output.grid]`` may use -> dotted field names."""
    matrix = recipe.get("matrix") or {}
    names = {"seed": "seed", "prompt": "prompt", "image": "image", "mask_image": "mask_image",
             "scheduler": "scheduler"}
    for name in matrix.get("vars") or {}:
        names[name] = names[f"vars.{name}"] = f"vars.{name}"
    for name in matrix.get("axes") or {}:
        if is_build_axis(name):
            names[name] = name
            names.setdefault(short_name(name), name)  # "vae" for components.vae
        elif name != "scheduler":
            names[name] = names[f"params.{name}"] = f"params.{name}"
    return names


def grid_config(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """``output.grid`` of a resolved recipe as a table (``true``/``false`` -> enabled only)."""
    value = (recipe.get("output") or {}).get("grid", True)
    if isinstance(value, dict):
        return dict(value)
    return {"enabled": bool(value)}


@dataclass
class Axes:
    x: list[str]
    y: list[str]
    z: list[str]
    list_mode: bool


def choose_axes(described: Described, recipe: Mapping[str, Any]) -> Axes:
    config = grid_config(recipe)
    names = field_names(recipe)

    def resolve(key: str) -> list[str]:
        value = config.get(key) or []
        value = [value] if isinstance(value, str) else list(value)
        return [names.get(v, v) for v in value]

    dims = [n for n in described.varying if n not in described.derived]
    if "image" in dims and "mask_image" in dims:
        dims.remove("mask_image")  # each input image has its mask
    x, y, z = resolve("x"), resolve("y"), resolve("z")
    chosen = bool(x or y or z)
    zip_mode = (recipe.get("matrix") or {}).get("mode") == "zip"
    if config.get("layout") == "list" or (zip_mode and not (x or y or z)):
        return Axes(dims, [], z, True)
    placed = set(x) | set(y) | set(z)
    if not x:
        free = [d for d in dims if d not in placed]
        x = ["seed"] if "seed" in free else free[-1:]
        placed |= set(x)
    y += [d for d in dims if d not in placed]  # every varying field has a place: no image is hidden
    if not chosen:  # the default: a table too big to read at 100% zoom is split into sheets
        counts = {d: len(described.values(d)) for d in dims}
        while math.prod(counts[d] for d in x + y) > SHEET_TILES and len(y) > 1:
            pick = "prompt" if "prompt" in y else y[0]  # a prompt is long: said once, in its sheet's title
            y.remove(pick)
            z.append(pick)
    return Axes(x, y, z, False)


# --- geometry ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One piece of the table: columns [c0, c1) by rows [r0, r1), drawn at (x, y) on its page."""

    c0: int
    c1: int
    r0: int
    r1: int
    x: int
    y: int


@dataclass
class Cell:
    """Where a record's tile is on a sheet."""

    record: dict[str, Any]
    x: int
    y: int
    w: int
    h: int


@dataclass
class Sheet:
    """One image file of the contact sheet and everything drawn on it."""

    file: str
    size: tuple[int, int]
    title: list[str]
    tile: tuple[int, int]
    left: int  # width of the row labels of each block
    header: int  # height of the column labels of each block
    blocks: list[Block]
    columns: list[str]  # labels of the table's columns
    rows: list[str]  # labels of the table's rows
    cells: list[Cell] = field(default_factory=list)
    z: str = ""
    page: int = 1
    pages: int = 1


def tile_size(w: int, h: int) -> tuple[int, int]:
    """Scale (w, h) so that the long side is in [MIN_TILE, MAX_TILE]."""
    long_side = max(w, h, 1)
    target = min(max(long_side, MIN_TILE), MAX_TILE)
    return max(1, round(w * target / long_side)), max(1, round(h * target / long_side))


def _balanced(n: int) -> list[int]:
    """Every chunk size that cuts n items into nearly equal chunks."""
    return sorted({math.ceil(n / b) for b in range(1, n + 1)}, reverse=True)


@dataclass(frozen=True)
class Plan:
    cols: int  # columns per block
    rows: int  # rows per block
    across: int  # blocks side by side
    lines: int  # lines of blocks per page
    pages: int
    cost: float


def plan_pages(nx: int, ny: int, tw: int, th: int, left: int, header: int, title: int) -> Plan:
    """The cut of an nx x ny table into blocks and pages that keeps every page within the limits
    and closest to TARGET_ASPECT, with as few pages and cuts as possible."""
    best: Plan | None = None
    for c in _balanced(nx):
        bw = left + c * tw
        if bw > MAX_SIDE:
            continue
        nbx = math.ceil(nx / c)
        for r in _balanced(ny):
            bh = header + r * th
            if title + bh > MAX_SIDE or c * r > PAGE_TILES:
                continue
            nblocks = nbx * math.ceil(ny / r)
            for k in range(1, min(8, nblocks) + 1):
                width = k * bw + (k - 1) * GAP
                if width > MAX_SIDE or k * c * r > PAGE_TILES:
                    break
                limit = min(MAX_SIDE, MAX_ASPECT * width)
                most = min(int((limit - title + GAP) // (bh + GAP)), PAGE_TILES // (k * c * r))
                if most < 1:
                    continue
                total_lines = math.ceil(nblocks / k)
                pages = math.ceil(total_lines / most)
                lines = math.ceil(total_lines / pages)
                height = title + lines * bh + (lines - 1) * GAP
                last_lines = total_lines - (pages - 1) * lines
                last_blocks = nblocks - (pages - 1) * lines * k
                last_w = min(k, last_blocks) * bw + (min(k, last_blocks) - 1) * GAP
                last_h = title + last_lines * bh + (last_lines - 1) * GAP
                if width > MAX_ASPECT * height or last_w > MAX_ASPECT * last_h or last_h > MAX_ASPECT * last_w:
                    continue
                # any shape within [2:3, 8:3] reads well; beyond, each cut and page must pay for itself
                cost = (max(0.0, abs(math.log(width / height / TARGET_ASPECT)) - math.log(2)) + (pages - 1)
                        + 0.3 * (nbx > 1) + 0.3 * (r < ny) + 0.1 * (k - 1) + 0.01 * (nblocks - 1)
                        + 2 * max(0.0, math.log(width / TARGET_WIDTH)))
                if best is None or cost < best.cost - 1e-9:
                    best = Plan(c, r, k, lines, pages, cost)
    if best is None:  # pragma: no cover - one tile per page always fits
        raise ValueError(f"no layout for a {nx} x {ny} table")
    return best


# --- text --------------------------------------------------------------------------------------


def _wrap(text: str, width_px: int, limit: int) -> list[str]:
    chars = max(6, int(width_px / (FONT_SIZE * 0.56)))
    lines: list[str] = []
    for part in text.split("\n"):
        lines += textwrap.wrap(part, width=chars) or [""]
    if len(lines) > limit:
        lines = lines[:limit]
        lines[-1] = lines[-1][: max(0, chars - 1)].rstrip() + "…"
    return lines


def label(names: Sequence[str], fields: Mapping[str, Any], sep: str = "\n") -> str:
    """``who = an old chief`` / ``seed 3`` / the shortened prompt, one per field."""
    return job_label(names, fields, sep, PROMPT_CHARS, PROMPT_CHARS)


def _font() -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=FONT_SIZE)


def _label_width(rows: Sequence[str]) -> int:
    """Wide enough for the longest row label line (wrapped at LABEL_WIDTH), no wider."""
    font = _font()
    longest = max((font.getlength(line) for row in rows for line in _wrap(row, LABEL_WIDTH - 2 * PAD, 99)), default=0)
    return int(min(LABEL_WIDTH, max(96, math.ceil(longest) + 3 * PAD)))


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].rstrip("-") or "z"


# --- the sheets --------------------------------------------------------------------------------


def plan(manifest: Mapping[str, Any], image_size: tuple[int, int], done: Sequence[dict[str, Any]]) -> list[Sheet]:
    """Every sheet for the ``done`` records of ``manifest`` whose images are ``image_size``."""
    if not done:
        return []
    recipe = manifest.get("recipe") or {}
    described = describe(manifest, done)
    axes = choose_axes(described, recipe)
    tw, th = tile_size(*image_size)
    name = str(recipe.get("name") or "")
    shared = [n for n in ("prompt",) if n not in described.varying and described.constant.get("prompt")]
    common = common_prompt(described.values("prompt")) if "prompt" in described.varying else CommonPrompt()
    labelled = [{**f, "prompt": common.core(f.get("prompt"))} for f in described.fields] if common else described.fields
    groups: dict[str, list[int]] = {}
    for i, f in enumerate(labelled):
        groups.setdefault(label(axes.z, f, " · ") if "prompt" not in axes.z else _z_label(axes.z, f), []).append(i)
    sheets: list[Sheet] = []
    for zi, (zlabel, members) in enumerate(groups.items()):
        fields = [labelled[i] for i in members]
        records = [described.records[i] for i in members]
        # only what varies on this sheet labels its rows and columns; the rest is said in its title
        ax_x, ax_y = _varying(axes.x, fields), _varying(axes.y, fields)
        fixed = [n for n in axes.x + axes.y if n not in ax_x and n not in ax_y]
        if axes.list_mode:
            columns = [label(ax_x, f) for f in fields]
            rows = [""]
            position = [(0, c) for c in range(len(fields))]
        else:
            xs = [canonical([f.get(n) for n in ax_x]) for f in fields]
            ys = [canonical([f.get(n) for n in ax_y]) for f in fields]
            col_ids, row_ids = list(dict.fromkeys(xs)), list(dict.fromkeys(ys))
            position = [(row_ids.index(y), col_ids.index(x)) for x, y in zip(xs, ys)]
            if len(set(position)) < len(position):  # cells would collide: a list shows every image
                return plan(_as_list(manifest), image_size, done)
            first_x = {x: f for x, f in reversed(list(zip(xs, fields)))}
            first_y = {y: f for y, f in reversed(list(zip(ys, fields)))}
            columns = [label(ax_x, first_x[x]) for x in col_ids]
            rows = [label(ax_y, first_y[y]) for y in row_ids]
        left = _label_width(rows) if ax_y and not axes.list_mode else 0
        header_lines = max((len(_wrap(c, tw - 2 * PAD, 5 if axes.list_mode else 3)) for c in columns), default=0)
        header = header_lines * LINE + 2 * PAD if any(columns) else 0
        title_text = [t for t in (name, zlabel, label(fixed, fields[0], " · ")) if t]
        if shared:
            title_text.append(shorten(str(described.constant["prompt"]), 200))
        elif common:
            title_text.append("prompt: " + shorten(common.text(), 200))
        width = min(TARGET_WIDTH, left + len(columns) * tw)
        for _ in range(3):  # the title wraps to the narrowest page, whose width depends on the title's height
            title_lines = _wrap("\n".join(title_text), width - 2 * PAD, 6) if title_text else []
            title_h = (len(title_lines) + 1) * LINE + PAD if title_lines else 0  # room for a page number
            p = plan_pages(len(columns), len(rows), tw, th, left, header, title_h)
            narrowest = _narrowest(p, len(columns), len(rows), left + p.cols * tw)
            if narrowest >= width:
                break
            width = narrowest
        blocks_all = [(c0, min(c0 + p.cols, len(columns)), r0, min(r0 + p.rows, len(rows)))
                      for r0 in range(0, len(rows), p.rows) for c0 in range(0, len(columns), p.cols)]
        per_page = p.across * p.lines
        bw, bh = left + p.cols * tw, header + p.rows * th
        for page in range(p.pages):
            chunk = blocks_all[page * per_page:(page + 1) * per_page]
            blocks = [Block(c0, c1, r0, r1, (j % p.across) * (bw + GAP), title_h + (j // p.across) * (bh + GAP))
                      for j, (c0, c1, r0, r1) in enumerate(chunk)]
            across = min(p.across, len(chunk))
            lines = math.ceil(len(chunk) / p.across)
            size = (across * bw + (across - 1) * GAP, title_h + lines * bh + (lines - 1) * GAP)
            sheet = Sheet("", size, title_lines, (tw, th), left, header, blocks, columns, rows,
                          z=zlabel, page=page + 1, pages=p.pages)
            for record, (r, c) in zip(records, position):
                for b in blocks:
                    if b.c0 <= c < b.c1 and b.r0 <= r < b.r1:
                        sheet.cells.append(Cell(record, b.x + left + (c - b.c0) * tw, b.y + header + (r - b.r0) * th, tw, th))
            sheets.append(sheet)
        for sheet in sheets[-p.pages:]:
            parts = ["grid"]
            if axes.z:
                parts += [f"{zi + 1:02d}", _slug(zlabel)]
            if p.pages > 1:
                parts.append(f"p{sheet.page}")
            sheet.file = "-".join(parts) + ".png"
    if len(sheets) == 1:
        sheets[0].file = "grid.png"
    return sheets


def _varying(names: Sequence[str], fields: Sequence[Mapping[str, Any]]) -> list[str]:
    return [n for n in names if len({canonical(f.get(n)) for f in fields}) > 1]


def _z_label(names: Sequence[str], fields: Mapping[str, Any]) -> str:
    """A sheet's own values in its title: the prompt as a whole (its title wraps), the others as labels."""
    return " · ".join(shorten(str(fields.get(n)), 200) if n == "prompt" else label([n], fields) for n in names)


def _once(labels: Sequence[str], i: int, first: int) -> str:
    """Label ``i`` of a block starting at ``first``, its leading fields left blank where the label
    before says them already (a field that changes slower than the next is labelled once)."""
    parts = labels[i].split("\n")
    if i == first or len(parts) < 2:
        return labels[i]
    before = labels[i - 1].split("\n")
    same = 0
    while same < len(parts) - 1 and same < len(before) and parts[same] == before[same]:
        same += 1
    return "\n".join([""] * same + parts[same:])


def _narrowest(p: Plan, nx: int, ny: int, bw: int) -> int:
    blocks = math.ceil(nx / p.cols) * math.ceil(ny / p.rows)
    last = blocks - (p.pages - 1) * p.across * p.lines
    across = min(p.across, blocks if p.pages == 1 else p.across, last if last < p.across else p.across)
    return across * bw + (across - 1) * GAP


def _as_list(manifest: Mapping[str, Any]) -> dict[str, Any]:
    recipe = dict(manifest.get("recipe") or {})
    output = dict(recipe.get("output") or {})
    config = grid_config(recipe)
    output["grid"] = {**{k: v for k, v in config.items() if k == "z"}, "layout": "list"}
    recipe["output"] = output
    return {**manifest, "recipe": recipe}


def done_records(folder: Path, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of images on disk: a plain file name of ``folder`` (:func:`record_file`), a
    regular file there."""
    return [r for r in records if r.get("status") == "done"
            and (path := record_file(folder, r.get("file"), "a manifest record")) is not None and regular_file(path)]


def sheets_for(folder: Path, manifest: Mapping[str, Any]) -> list[Sheet]:
    """The sheets :func:`make_grid` makes for ``manifest`` (reads one image's size, no more)."""

    done = done_records(folder, manifest.get("images") or [])
    if not done:
        return []
    with open_image(folder / done[0]["file"]) as first:
        size = first.size
    return plan(manifest, size, done)


def draw(folder: Path, sheet: Sheet) -> Image:
    """The sheet as a PIL image."""
    from PIL import Image, ImageDraw

    font = _font()
    canvas = Image.new("RGB", sheet.size, BACKGROUND)
    pen = ImageDraw.Draw(canvas)
    tw, th = sheet.tile
    if sheet.title:
        pen.multiline_text((PAD, PAD), "\n".join(sheet.title), fill=INK, font=font, spacing=5)
        if sheet.pages > 1:
            pen.text((PAD, PAD + len(sheet.title) * LINE), f"page {sheet.page} of {sheet.pages}", fill=MUTED, font=font)
    elif sheet.pages > 1:  # pragma: no cover - a run has a name
        pen.text((PAD, PAD), f"page {sheet.page} of {sheet.pages}", fill=MUTED, font=font)
    list_mode = sheet.rows == [""]
    for b in sheet.blocks:
        if sheet.header:
            for c in range(b.c0, b.c1):
                text = "\n".join(_wrap(_once(sheet.columns, c, b.c0), tw - 2 * PAD, 5 if list_mode else 3))
                pen.multiline_text((b.x + sheet.left + (c - b.c0) * tw + PAD, b.y + PAD), text, fill=INK, font=font,
                                   spacing=5)
        if sheet.left:
            for r in range(b.r0, b.r1):
                y = b.y + sheet.header + (r - b.r0) * th
                lines = _wrap(_once(sheet.rows, r, b.r0), LABEL_WIDTH - 2 * PAD, max(1, (th - PAD) // LINE))  # as measured
                pen.multiline_text((b.x + PAD, y + PAD), "\n".join(lines), fill=INK, font=font, spacing=5)
                pen.line([(b.x, y), (b.x + sheet.left - 1, y)], fill=RULE)
    for cell in sheet.cells:
        with open_image(folder / cell.record["file"]) as image:
            resample = Image.Resampling.NEAREST if cell.w >= image.width else Image.Resampling.LANCZOS
            canvas.paste(image.convert("RGB").resize((cell.w, cell.h), resample), (cell.x, cell.y))
    return canvas


def compose(folder: Path, manifest: Mapping[str, Any] | Sequence[dict[str, Any]]) -> list[tuple[Sheet, Image]]:
    """Every sheet with its image."""
    data = _manifest(manifest)
    return [(sheet, draw(folder, sheet)) for sheet in sheets_for(folder, data)]


def _manifest(manifest: Mapping[str, Any] | Sequence[dict[str, Any]]) -> Mapping[str, Any]:
    return manifest if isinstance(manifest, Mapping) else {"images": list(manifest)}


def remove_stale(folder: Path, keep: set[str]) -> None:
    for path in folder.glob("grid*.png"):
        if SHEET_NAME.fullmatch(path.name) and path.name not in keep:
            path.unlink(missing_ok=True)


def make_grid(folder: Path, manifest: Mapping[str, Any] | Sequence[dict[str, Any]]) -> list[Path]:
    """Write the sheets of ``manifest`` (a manifest, or just its image records) into ``folder``,
    remove the sheets of earlier layouts; returns the paths written (none without images)."""
    import io


    written: list[Path] = []
    for sheet in sheets_for(folder, _manifest(manifest)):
        buffer = io.BytesIO()
        draw(folder, sheet).save(buffer, format="PNG", compress_level=1)  # a preview, rewritten each run
        path = folder / sheet.file
        write_if_changed(path, buffer.getvalue())  # the same sheet leaves the file untouched
        written.append(path)
    remove_stale(folder, {p.name for p in written})
    return written
