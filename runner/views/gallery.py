"""``index.html``: a static gallery of a run, written beside the images and the manifest.

One self-contained file (inline CSS and one small inline script, no external asset, no network):
it opens from a file:// URL, from a served folder and from a downloaded artifact alike. Images
are linked by their relative file names and lazy-loaded (``loading="lazy"``, sized in advance, so
no image is fetched or decoded until it is scrolled to), which keeps a run of thousands of images
fast.

- What is constant across the run (model, prompt when there is one, parameters, scheduler with
  its options) is said once at the top; on each card, what varies is highlighted, and the full job
  (prompt, seed, vars, every parameter, scheduler with options, input image and mask, batch, file,
  hash) is one click away beside it.
- A filter narrows the cards: free text (prompt, file) and one menu per field that varies (seed,
  vars, axis values, scheduler, input image). The filter lives in the URL fragment, so a view can
  be linked and is applied on load: ``index.html#seed=3&who=an+old+chief&q=chief``.
- The contact sheets are shown with a link over every cell to its image.
- Input and mask images are shown as small thumbnails (embedded once, as CSS backgrounds).

A job with no image yet (a run still going, or interrupted) is listed as pending. Written
atomically, so a browser never sees half a page. Under ``--watch`` the page also refreshes itself when
new images land (:mod:`recipe_runner.views.refresh`).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base.paths import regular_file, write_if_changed
from ..base.safe_read import open_image
from ..records.names import record_file
from ..records.provenance import recipe_folder_of
from . import refresh
from .grid import grid_config, sheets_for
from .jobfields import CommonPrompt, Described, common_prompt, describe, scheduler_label, short_name, value_text

if TYPE_CHECKING:
    from .grid import Sheet

THUMB = 96  # input and mask thumbnails, px
NO_COMMON = CommonPrompt()

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 1.2em 0 .4em; }
.meta { color: #555; margin: 0 0 .8em; }
.constant { display: grid; grid-template-columns: auto 1fr; gap: 0 10px; font-size: 13px; margin: 0 0 1em; }
.constant dt { color: #666; } .constant dd { margin: 0; font-family: ui-monospace, monospace; word-break: break-word; }
.sheets { margin: 0 0 1em; } .sheet { margin: 0 0 1em; overflow-x: auto; }
.sheet-wrap { position: relative; }  /* at its pixel size: its labels are readable at 100% zoom */
.sheet-wrap img { width: 100%; height: auto; display: block; border: 1px solid #ddd; }
.sheet-wrap a { position: absolute; display: block; }
.sheet-wrap a:hover { outline: 3px solid #1a73e8; }
.filters { position: sticky; top: 0; background: #fafafa; padding: 8px 0; z-index: 2; display: flex;
           flex-wrap: wrap; gap: 8px 14px; align-items: center; border-bottom: 1px solid #ddd; margin-bottom: 12px; }
.filters label { font-size: 13px; color: #444; } .filters select, .filters input { font: inherit; }
.cards { display: flex; flex-wrap: wrap; gap: 14px; }
figure { margin: 0; width: 272px; background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px; }
figure[hidden] { display: none; }
figure > a img { width: 256px; height: auto; image-rendering: pixelated; display: block; background: #eee; }
figure .pending { width: 256px; height: 256px; display: flex; align-items: center; justify-content: center;
                  background: #eee; color: #777; }
figcaption { margin-top: 6px; word-wrap: break-word; }
.prompt { font-weight: 600; }
.vary { display: flex; flex-wrap: wrap; gap: 4px; margin: 4px 0; }
.vary span { background: #fff3bf; border: 1px solid #f0d264; border-radius: 4px; padding: 0 5px; font-size: 12px; }
.inputs { display: flex; gap: 6px; margin: 4px 0; }
.thumb { width: 48px; height: 48px; background: #eee center / contain no-repeat; border: 1px solid #ccc; display: block; }
details summary { cursor: pointer; color: #555; font-size: 12px; }
dl { display: grid; grid-template-columns: auto 1fr; gap: 0 8px; margin: 4px 0 0; font-size: 12px; }
dt { color: #666; } dd { margin: 0; font-family: ui-monospace, monospace; word-break: break-all; }
dt.v, dd.v { background: #fff3bf; }
.common { font-style: italic; }
body.dense .cards { gap: 6px; }
body.dense figure { width: 136px; padding: 4px; border-radius: 4px; }
body.dense figure > a img { width: 128px; }
body.dense figure .pending { width: 128px; height: 128px; }
body.dense figcaption { margin-top: 3px; font-size: 12px; line-height: 1.25; }
body.dense figcaption details, body.dense .inputs { display: none; }
body.dense .prompt { font-weight: normal; }
body.dense .vary { gap: 2px; margin: 2px 0 0; } body.dense .vary span { font-size: 11px; padding: 0 3px; }
"""

# The filter: each card's values for the filtered fields are in data-f (a JSON list, same order
# as the menus); the URL fragment holds the filter (menu names and q for the text).
SCRIPT = """
(function () {
  var cards = Array.prototype.slice.call(document.querySelectorAll("figure.card"));
  var menus = Array.prototype.slice.call(document.querySelectorAll("select[data-i]"));
  var text = document.getElementById("q"), shown = document.getElementById("shown");
  var dense = document.getElementById("dense");
  var rows = cards.map(function (c) { return JSON.parse(c.getAttribute("data-f")); });
  var hay = cards.map(function (c) { return c.getAttribute("data-q"); });
  function apply() {
    var want = menus.map(function (m) { return m.value; }), q = text.value.trim().toLowerCase(), n = 0;
    for (var i = 0; i < cards.length; i++) {
      var ok = !q || hay[i].indexOf(q) >= 0;
      for (var j = 0; ok && j < want.length; j++) { if (want[j] !== "" && rows[i][j] !== want[j]) ok = false; }
      if (ok) { n++; if (cards[i].hidden) cards[i].hidden = false; } else if (!cards[i].hidden) cards[i].hidden = true;
    }
    shown.textContent = n + " of " + cards.length + " shown";
    document.body.setAttribute("data-shown", n);
  }
  function save() {
    var p = new URLSearchParams();
    menus.forEach(function (m) { if (m.value !== "") p.set(m.name, m.value); });
    if (text.value) p.set("q", text.value);
    if (dense.checked) p.set("dense", "1");
    document.body.classList.toggle("dense", dense.checked);
    history.replaceState(null, "", p.toString() ? "#" + p.toString() : location.pathname + location.search);
    apply();
  }
  function load() {
    var p = new URLSearchParams(location.hash.slice(1));
    menus.forEach(function (m) {
      var v = p.get(m.name);
      m.value = v !== null && Array.prototype.some.call(m.options, function (o) { return o.value === v; }) ? v : "";
    });
    text.value = p.get("q") || "";
    dense.checked = p.get("dense") === "1";
    document.body.classList.toggle("dense", dense.checked);
    apply();
  }
  menus.forEach(function (m) { m.addEventListener("change", save); });
  text.addEventListener("input", save);
  dense.addEventListener("change", save);
  document.getElementById("clear").addEventListener("click", function () {
    menus.forEach(function (m) { m.value = ""; }); text.value = ""; save();
  });
  window.addEventListener("hashchange", load);
  load();
})();
"""


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _filter_name(name: str) -> str:
    return short_name(name)


def _filter_value(name: str, value: Any) -> str:
    return value_text(name, value)


def _input_thumbs(manifest: Mapping[str, Any], folder: Path | None) -> dict[str, str]:
    """Input/mask image as written -> a CSS class whose background is its thumbnail."""
    if folder is None:
        return {}
    env = manifest.get("environment") or {}
    base = recipe_folder_of(env, folder)  # relative to the run folder (older records: absolute)
    names = list(dict.fromkeys(v for r in manifest.get("images") or [] for v in (r.get("image"), r.get("mask_image"))
                               if isinstance(v, str) and "://" not in v))
    out: dict[str, str] = {}
    if not names or base is None:
        return out

    for i, name in enumerate(names):
        path = base / Path(name).expanduser()
        try:
            with open_image(path) as image:
                image.thumbnail((THUMB, THUMB))
                buffer = io.BytesIO()
                image.convert("RGB").save(buffer, format="JPEG", quality=80)
        except Exception:  # a moved or unreadable input: its name is still listed
            continue
        out[name] = f"in{i}:" + base64.b64encode(buffer.getvalue()).decode("ascii")
    return out


def _card(record: dict[str, Any], fields: dict[str, Any], described: Described, filters: Sequence[str],
          size: tuple[int, int] | None, thumbs: dict[str, str], common: CommonPrompt = NO_COMMON) -> str:
    file = escape(record["file"], quote=True)
    prompt = str(record.get("prompt", ""))
    if record.get("status") == "done":
        dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
        picture = (f'<a href="{file}"><img src="{file}" loading="lazy" decoding="async" '
                   f'alt="{escape(prompt, quote=True)}"{dims}></a>')
    else:
        picture = f'<div class="pending">{escape(record.get("status") or "pending")}</div>'
    varying = [n for n in described.varying if n != "mask_image" and n not in described.derived]
    chips = "".join(f"<span>{escape(_chip(n, fields.get(n)))}</span>" for n in varying if n != "prompt")
    inputs = ""
    for key in ("image", "mask_image"):
        value = record.get(key)
        if isinstance(value, str) and value in thumbs:
            inputs += f'<span class="thumb {thumbs[value].split(":")[0]}" title="{escape(key)}: {escape(value, quote=True)}"></span>'
    rows: list[tuple[str, Any, bool]] = [("file", record["file"], False), ("prompt", prompt, "prompt" in varying),
                                         ("seed", record.get("seed"), "seed" in varying)]
    rows += [(f"{{{k}}}", v, f"vars.{k}" in varying) for k, v in (record.get("vars") or {}).items()]
    rows += [(k, v, f"params.{k}" in varying) for k, v in (record.get("params") or {}).items()]
    rows.append(("scheduler", scheduler_label(fields.get("scheduler")), "scheduler" in varying))
    for key in ("image", "mask_image", "batch", "sha256"):
        if record.get(key) is not None:
            rows.append((key, record[key], key in varying))
    details = "".join(f'<dt{" class=v" if v else ""}>{escape(k)}</dt><dd{" class=v" if v else ""}>{escape(_value(val))}</dd>'
                      for k, val, v in rows)
    data = escape(json.dumps([_filter_value(n, fields.get(n)) for n in filters], ensure_ascii=False), quote=True)
    q = escape(f"{prompt} {record['file']}".lower(), quote=True)
    return (f'<figure class="card" id="job-{record.get("index")}" data-f="{data}" data-q="{q}">{picture}<figcaption>'
            + (f'<div class="prompt" title="{escape(prompt, quote=True)}">{escape(common.core(prompt))}</div>'
               if "prompt" in varying else "")  # a prompt the same for all is said once, at the top
            + f'<div class="vary">{chips}</div>'
            + (f'<div class="inputs">{inputs}</div>' if inputs else "")
            + f"<details><summary>full job</summary><dl>{details}</dl></details></figcaption></figure>")


def _chip(name: str, value: Any) -> str:
    if name == "seed":
        return f"seed {value}"
    if name == "scheduler":
        return scheduler_label(value)
    return f"{short_name(name)} = {value_text(name, value)}"


def _sheets(sheets: Sequence[Sheet]) -> str:
    if not sheets:
        return ""
    parts = [f'<details class="sheets"{" open" if len(sheets) == 1 else ""}><summary>Contact sheet{"s" if len(sheets) > 1 else ""} ({len(sheets)})</summary>']
    for sheet in sheets:
        w, h = sheet.size
        caption = " · ".join(t for t in (sheet.z, f"page {sheet.page} of {sheet.pages}" if sheet.pages > 1 else "") if t)
        links = "".join(
            f'<a href="{escape(c.record["file"], quote=True)}" title="{escape(c.record["file"], quote=True)}" '
            f'style="left:{100 * c.x / w:.4f}%;top:{100 * c.y / h:.4f}%;width:{100 * c.w / w:.4f}%;height:{100 * c.h / h:.4f}%"></a>'
            for c in sheet.cells)
        parts.append(f'<div class="sheet">{escape(caption)}<div class="sheet-wrap" style="width:{w}px">'
                     f'<img src="{escape(sheet.file, quote=True)}" alt="contact sheet {escape(caption, quote=True)}" '
                     f'width="{w}" height="{h}" loading="lazy" decoding="async">{links}</div></div>')
    parts.append("</details>")
    return "\n".join(parts)


def render(manifest: Mapping[str, Any], image_size: tuple[int, int] | None = None, sheets: Sequence[Sheet] = (),
           folder: Path | None = None) -> str:
    """The page for a manifest; ``image_size`` sets width/height so that the layout never jumps."""
    recipe = manifest.get("recipe") or {}
    env = manifest.get("environment") or {}
    images = list(manifest.get("images") or [])
    described = describe(manifest)
    done = sum(1 for r in images if r.get("status") == "done")
    name = recipe.get("name", "run")
    model = (recipe.get("model") or {}).get("id", "?")
    facts = [f"model {model}", f"{done} of {len(images)} images"]
    facts += [f"{k} {env[k]}" for k in ("device", "dtype", "torch", "diffusers") if env.get(k)]
    thumbs = _input_thumbs(manifest, folder)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(name)}</title><style>{CSS}",
        "".join(f".{v.split(':')[0]} {{ background-image: url(data:image/jpeg;base64,{v.split(':', 1)[1]}); }}\n"
                for v in thumbs.values()),
        "</style></head><body>",
        f"<h1>{escape(name)}</h1>",
    ]
    if recipe.get("description"):
        parts.append(f'<p class="meta">{escape(recipe["description"])}</p>')
    parts.append(f'<p class="meta">{escape(" · ".join(facts))} · <a href="manifest.json">manifest.json</a></p>')
    constant = [(n, v) for n, v in described.constant.items() if v not in (None, {}, [])]
    varying = [n for n in described.varying if n not in described.derived]
    common = common_prompt(described.values("prompt")) if "prompt" in varying else CommonPrompt()
    if constant or common:
        parts.append('<h2>The same for every image</h2><dl class="constant">'
                     + (f'<dt>prompt</dt><dd class="common">{escape(common.text())}</dd>' if common else "")
                     + "".join(f"<dt>{escape(_chip_name(n))}</dt><dd>{escape(_filter_value(n, v))}</dd>" for n, v in constant)
                     + "</dl>")
    parts.append(_sheets(sheets))
    filters = [n for n in described.varying if n not in described.derived and n != "mask_image"]
    parts.append('<div class="filters"><label>search <input id="q" type="search" placeholder="prompt, file"></label>')
    for i, n in enumerate(filters):
        values = list(dict.fromkeys(_filter_value(n, v) for v in described.values(n)))
        options = "".join(f'<option value="{escape(v, quote=True)}">{escape((common.core(v) if n == "prompt" else v)[:80])}</option>'
                          for v in values)
        parts.append(f'<label>{escape(_filter_name(n))} <select name="{escape(_filter_name(n), quote=True)}" data-i="{i}">'
                     f'<option value="">all</option>{options}</select></label>')
    parts.append('<label title="smaller cards, more per row"><input id="dense" type="checkbox"> dense</label>')
    parts.append(f'<button id="clear" type="button">clear</button> <span id="shown">{len(images)} of {len(images)} shown</span></div>')
    parts.append('<div class="cards">')
    parts += [_card(r, f, described, filters, image_size, thumbs, common) for r, f in zip(described.records, described.fields)]
    parts.append("</div>")
    parts.append(f"<script>{SCRIPT}</script>")
    return refresh.with_script("\n".join(parts)) + "</body></html>\n"  # the refresh script: --watch only


def _chip_name(name: str) -> str:
    return f"{{{short_name(name)}}}" if name.startswith("vars.") else short_name(name)


def write_gallery(folder: Path, manifest: Mapping[str, Any]) -> Path:
    """Write ``folder/index.html`` for ``manifest`` (atomically); returns its path. The contact
    sheets it shows are those the recipe's grid makes, when they are on disk."""


    size = None
    images = [r for r in manifest.get("images") or [] if isinstance(r, dict)
              and record_file(folder, r.get("file"), "a manifest record") is not None]  # plain names of this folder
    manifest = {**manifest, "images": images}
    first = next((r for r in images if r.get("status") == "done" and regular_file(folder / r["file"])), None)
    if first is not None:
        with open_image(folder / first["file"]) as image:
            size = image.size
    sheets: list[Sheet] = []
    if grid_config(manifest.get("recipe") or {}).get("enabled", True):
        sheets = [s for s in sheets_for(folder, manifest) if (folder / s.file).is_file()]
    path = folder / "index.html"
    page = render(manifest, size, sheets, folder)
    write_if_changed(path, page.encode("utf-8"))  # the same page leaves the file untouched
    refresh.write_stamp(folder, page)  # --watch: after the page, so a reload finds it
    return path

