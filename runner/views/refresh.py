"""The gallery page refreshing itself while ``recipe-run --watch`` runs.

A browser tab left open on ``index.html`` (from ``file://``, with no server and no network) shows
each edit's result: in watch mode the page carries a small inline script that re-inserts
``<script src="gallery-stamp.js?t=...">`` every 2 s and reloads the page when the stamp that file
sets differs from the one the page was rendered with. ``fetch()`` of ``file://`` URLs is blocked
by browsers; script elements are not. ``gallery-stamp.js`` is written beside ``index.html``, after
it, with the stamp of the page just written (a hash of the page without the script), so a tab
reloads only when what it shows changed.

Outside watch mode nothing changes: the page has no refresh script (only its filter) and no
stamp file is written. Light module: nothing but the standard library.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..base.paths import atomic_write

STAMP_FILE = "gallery-stamp.js"
INTERVAL_MS = 2000
MARK = '<script id="recipe-runner-refresh">'

_live = 0  # nesting of live() sections: > 0 while a --watch session runs


@contextmanager
def live() -> Iterator[None]:
    """Galleries written inside this section refresh themselves (``--watch``)."""
    global _live
    _live += 1
    try:
        yield
    finally:
        _live -= 1


def is_live() -> bool:
    return _live > 0


def stamp_of(body: str) -> str:
    """The stamp of a page: a short hash of its text without the refresh script."""
    return hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]


def script(stamp: str) -> str:
    """The inline script: polls ``gallery-stamp.js`` through a script element, reloads on a new stamp."""
    return f"""{MARK}
(function () {{
  var rendered = {json.dumps(stamp)};
  function check() {{
    var probe = document.createElement("script");
    probe.src = "{STAMP_FILE}?t=" + Date.now();
    probe.onload = function () {{
      probe.remove();
      if (window.recipeRunnerStamp && window.recipeRunnerStamp !== rendered) {{ location.reload(); }}
    }};
    probe.onerror = function () {{ probe.remove(); }};
    document.head.appendChild(probe);
  }}
  setInterval(check, {INTERVAL_MS});
}})();
</script>"""


def with_script(body: str) -> str:
    """``body`` (a page up to, not including, ``</body></html>``) with the refresh script when live."""
    return body + "\n" + script(stamp_of(body)) if is_live() else body


def stamp_of_page(page: str) -> str:
    """The stamp a page was rendered with (the hash of its text before the script)."""
    body, _, _ = page.partition("\n" + MARK)
    return stamp_of(body)


def write_stamp(folder: Path, page: str) -> Path | None:
    """Write ``folder/gallery-stamp.js`` for the page just written there (when live); its path."""
    if not is_live():
        return None

    path = folder / STAMP_FILE
    atomic_write(path, f"window.recipeRunnerStamp = {json.dumps(stamp_of_page(page))};\n".encode())
    return path
