"""``index.html``: a static gallery of a run, written beside the images and the manifest.

One self-contained file: inline CSS, no script (except under ``--watch``, which adds the one of
:mod:`recipe_runner.refresh`), no external asset; images are linked by their relative file names,
so the folder can be copied, zipped or served as it is. Every job of the manifest is listed in
matrix order with its prompt, seed, vars, parameters, scheduler, batch and hash; a job that has
no image yet (a run still going, or interrupted) is listed as pending.
Written atomically, so a browser never sees half a page.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from . import refresh

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; margin: 0 0 .2em; }
.meta { color: #555; margin: 0 0 1em; }
.grid-link img { max-width: 100%; border: 1px solid #ddd; }
.cards { display: flex; flex-wrap: wrap; gap: 14px; }
figure { margin: 0; width: 272px; background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px; }
figure img { width: 256px; height: auto; image-rendering: pixelated; display: block; background: #eee; }
figure .pending { width: 256px; height: 256px; display: flex; align-items: center; justify-content: center;
                  background: #eee; color: #777; }
figcaption { margin-top: 6px; word-wrap: break-word; }
.prompt { font-weight: 600; }
dl { display: grid; grid-template-columns: auto 1fr; gap: 0 8px; margin: 4px 0 0; font-size: 12px; }
dt { color: #666; } dd { margin: 0; font-family: ui-monospace, monospace; word-break: break-all; }
"""


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _card(record: dict[str, Any], width: int | None, height: int | None) -> str:
    file = escape(record["file"], quote=True)
    if record.get("status") == "done":
        size = f' width="{width}" height="{height}"' if width and height else ""
        picture = f'<a href="{file}"><img src="{file}" alt="{escape(record["prompt"], quote=True)}"{size}></a>'
    else:
        picture = f'<div class="pending">{escape(record.get("status") or "pending")}</div>'
    rows: list[tuple[str, Any]] = [("file", record["file"]), ("seed", record["seed"])]
    rows += [(f"{{{k}}}", v) for k, v in (record.get("vars") or {}).items()]
    rows += [(k, v) for k, v in (record.get("params") or {}).items()]
    for key in ("scheduler", "image", "mask_image", "batch", "sha256"):
        if record.get(key) is not None:
            rows.append((key, record[key]))
    details = "".join(f"<dt>{escape(k)}</dt><dd>{escape(_value(v))}</dd>" for k, v in rows)
    return (f'<figure id="job-{record["index"]}">{picture}<figcaption>'
            f'<div class="prompt">{escape(record["prompt"])}</div><dl>{details}</dl></figcaption></figure>')


def render(manifest: dict[str, Any], image_size: tuple[int, int] | None = None, grid: bool = False) -> str:
    """The page for a manifest; ``image_size`` sets width/height so the layout never jumps."""
    recipe = manifest.get("recipe", {})
    env = manifest.get("environment", {})
    images = manifest.get("images", [])
    done = sum(1 for r in images if r.get("status") == "done")
    name = recipe.get("name", "run")
    model = (recipe.get("model") or {}).get("id", "?")
    facts = [f"model {model}", f"{done} of {len(images)} images"]
    facts += [f"{k} {env[k]}" for k in ("device", "dtype", "torch", "diffusers") if env.get(k)]
    width, height = image_size or (None, None)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(name)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(name)}</h1>",
    ]
    if recipe.get("description"):
        parts.append(f'<p class="meta">{escape(recipe["description"])}</p>')
    parts.append(f'<p class="meta">{escape(" · ".join(facts))} · <a href="manifest.json">manifest.json</a></p>')
    if grid:
        parts.append('<p class="grid-link"><a href="grid.png"><img src="grid.png" alt="contact sheet"></a></p>')
    parts.append('<div class="cards">')
    parts += [_card(r, width, height) for r in images]
    parts.append("</div>")
    return refresh.with_script("\n".join(parts)) + "</body></html>\n"  # the script: --watch only


def write_gallery(folder: Path, manifest: dict[str, Any]) -> Path:
    """Write ``folder/index.html`` for ``manifest`` (atomically); returns its path."""
    from PIL import Image

    from .paths import atomic_write

    size = None
    first = next((r for r in manifest.get("images", []) if r.get("status") == "done"), None)
    if first is not None and (folder / first["file"]).is_file():
        with Image.open(folder / first["file"]) as image:
            size = image.size
    path = folder / "index.html"
    page = render(manifest, size, grid=(folder / "grid.png").is_file())
    atomic_write(path, page.encode("utf-8"))
    refresh.write_stamp(folder, page)  # --watch: after the page, so a reload finds it
    return path
