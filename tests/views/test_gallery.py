"""The views of a run: grid.png's labelled tiles and index.html (every image with its job), rendered
in headless Chromium."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import LOAD_CHECK, chromium, needs_chromium, pixels


def test_grid_has_one_labelled_tile_per_image(matrix_run):
    from PIL import Image

    from recipe_runner.views import grid

    manifest = json.loads((matrix_run / "manifest.json").read_text())
    [(sheet, image)] = grid.compose(matrix_run, manifest)
    assert sheet.file == "grid.png"
    with Image.open(matrix_run / "grid.png") as on_disk_image:
        on_disk = np.asarray(on_disk_image.convert("RGB"))
    assert np.array_equal(on_disk, np.asarray(image))
    assert on_disk.shape[1::-1] == sheet.size
    assert (len(sheet.columns), len(sheet.rows)) == (2, 4)  # columns: seeds; rows: guidance x who
    assert sheet.tile[0] >= grid.MIN_TILE and sheet.tile[1] >= grid.MIN_TILE  # 64x64 images are upscaled
    assert sheet.left > 0 and sheet.header > 0
    assert sheet.columns == ["seed 0", "seed 1"]
    assert sheet.rows[0] == "guidance_scale = 6.0\nwho = an old chief"  # matrix order: the axis, then the var
    assert sorted(c.record["file"] for c in sheet.cells) == sorted(r["file"] for r in manifest["images"])
    for cell in sheet.cells:
        tile = on_disk[cell.y:cell.y + cell.h, cell.x:cell.x + cell.w]
        with Image.open(matrix_run / cell.record["file"]) as source:
            expected = np.asarray(source.convert("RGB").resize((cell.w, cell.h), Image.Resampling.NEAREST))
        assert np.array_equal(tile, expected), cell.record["file"]
        label = on_disk[cell.y + 2: cell.y + cell.h, : sheet.left]
        assert (label < 128).any(), f"row label of {cell.record['file']} is blank"
        header = on_disk[cell.y - sheet.header: cell.y, cell.x: cell.x + cell.w]
        assert (header < 128).any(), f"column label of {cell.record['file']} is blank"


def test_tile_size_keeps_tiles_legible():
    from recipe_runner.views import grid

    assert grid.tile_size(64, 64) == (grid.MIN_TILE, grid.MIN_TILE)
    assert grid.tile_size(1024, 512) == (grid.MAX_TILE, grid.MAX_TILE // 2)
    assert grid.tile_size(200, 220) == (200, 220)


def test_index_html_lists_every_image_with_its_prompt_seed_vars_and_params(matrix_run):
    from html.parser import HTMLParser

    page = (matrix_run / "index.html").read_text()
    manifest = json.loads((matrix_run / "manifest.json").read_text())

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.srcs, self.external = [], []

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "img":
                self.srcs.append(attrs["src"])
            for key in ("src", "href"):
                if attrs.get(key, "").startswith(("http:", "https:", "//")):
                    self.external.append(attrs[key])
            if tag == "script":  # one inline script (the filter), nothing loaded
                assert "src" not in attrs

    parser = Collect()
    parser.feed(page)
    assert parser.srcs == ["grid.png"] + [r["file"] for r in manifest["images"]]
    assert page.count("<script") == 1 and 'loading="lazy"' in page
    assert parser.external == []
    for record in manifest["images"]:
        assert f'id="job-{record["index"]}"' in page
    assert page.count(">portrait photo of an old chief<") == 4  # the caption of each
    assert page.count('alt="portrait photo of an old chief"') == 4
    # the full job beside each image, what varies across the run marked
    assert "<dt class=v>{who}</dt><dd class=v>a young chief</dd>" in page
    assert "<dt class=v>guidance_scale</dt><dd class=v>8.0</dd>" in page and "<dt class=v>seed</dt><dd class=v>1</dd>" in page
    assert page.count("<dt>num_inference_steps</dt><dd>2</dd>") == 8 + 1  # each job, and the constants said once


@pytest.mark.slow
@needs_chromium
def test_headless_chromium_renders_the_gallery_with_every_image_loaded(matrix_run, tmp_path):
    import re

    # a copy beside the page adds a script that counts loaded images; images are lazy-loaded, so
    # the window is tall enough for all of them to be in view
    check = matrix_run / "index-check.html"
    check.write_text((matrix_run / "index.html").read_text().replace("</body>", LOAD_CHECK))
    try:
        dom = chromium(tmp_path / "profile", "--virtual-time-budget=10000", "--window-size=1200,8000", "--dump-dom", check.as_uri())
    finally:
        check.unlink()
    counts = re.search(r'data-images="(\d+)" data-loaded="(\d+)"', dom)
    assert counts, dom[:500]
    assert counts.group(1) == counts.group(2) == "9"  # grid.png and 8 images

    shot = tmp_path / "shot.png"
    chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,1600", (matrix_run / "index.html").as_uri())
    rendered = pixels(shot)
    assert rendered.std() > 20, "the screenshot is blank"
    colourful = (rendered.max(axis=-1).astype(int) - rendered.min(axis=-1)) > 60
    assert colourful.mean() > 0.05, "no image is visible in the screenshot"
