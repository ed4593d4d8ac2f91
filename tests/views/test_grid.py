"""Contact sheets at any size (synthetic images and manifest records: no pipeline runs), and the
gallery of a 1,000-image run in headless Chromium, its filter driven through the URL fragment."""

from __future__ import annotations

import itertools
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import chromium, needs_chromium


def synthetic_run(folder: Path, prompts: list[str], seeds: list[int], axes: dict[str, list[Any]] | None = None,
                  mode: str = "product", grid: Any = True, size: tuple[int, int] = (64, 64)) -> dict[str, Any]:
    """A run folder as the runner writes it: one small flat-colour PNG per job and a manifest."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    axes = axes or {}
    params_axes = {k: v for k, v in axes.items() if k != "scheduler"}
    schedulers = [None] if "scheduler" not in axes else axes["scheduler"]
    if mode == "zip":
        jobs = [(s, {}, p, seed) for s, p, seed in zip(schedulers * len(prompts), prompts, seeds)]
    else:
        jobs = [(s, dict(zip(params_axes, combo)), p, seed) for s in schedulers
                for combo in itertools.product(*params_axes.values()) for p in prompts for seed in seeds]
    records = []
    for i, (sched, params, prompt, seed) in enumerate(jobs):
        file = f"{i:04d}-s{seed}.png"
        colour = ((i * 37) % 256, (seed * 91) % 256, (hash(prompt) % 200) + 20)
        Image.fromarray(np.full((size[1], size[0], 3), colour, np.uint8)).save(folder / file, compress_level=0)
        name = sched if isinstance(sched, str) or sched is None else sched["name"]
        records.append({"file": file, "index": i, "prompt": prompt, "seed": seed, "image": None, "mask_image": None,
                        "vars": {}, "params": {"num_inference_steps": 2, **params}, "scheduler": name,
                        "batch": i, "batch_size": 1, "status": "done", "sha256": None})
    manifest = {"recipe": {"name": folder.name, "model": {"id": "tiny:sd15"},
                           "matrix": {"prompts": prompts, "seeds": seeds, "mode": mode, "axes": axes},
                           "output": {"grid": grid}},
                "environment": {}, "images": records}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def sheet_sizes(paths: list[Path]) -> list[tuple[int, int]]:
    from PIL import Image

    sizes = []
    for path in paths:
        with Image.open(path) as image:
            sizes.append(image.size)
    return sizes


def assert_within_limits(paths: list[Path]) -> None:
    from recipe_runner.views import grid

    for path, (w, h) in zip(paths, sheet_sizes(paths)):
        assert max(w, h) <= grid.MAX_SIDE, (path.name, w, h)
        assert max(w, h) / min(w, h) <= grid.MAX_ASPECT, (path.name, w, h)


def test_two_prompts_by_sixty_seeds_wrap_into_one_sheet_within_limits(tmp_path):
    from recipe_runner.views import grid

    manifest = synthetic_run(tmp_path / "wide", ["a cat", "a dog"], list(range(60)))
    paths = grid.make_grid(tmp_path / "wide", manifest)
    assert [p.name for p in paths] == ["grid.png"]
    assert_within_limits(paths)
    [sheet] = grid.sheets_for(tmp_path / "wide", manifest)
    assert len(sheet.cells) == 120 and len(sheet.blocks) > 1  # wrapped into bands, each with its labels
    assert sheet.rows == ["a cat", "a dog"] and sheet.columns[:2] == ["seed 0", "seed 1"]


@pytest.mark.slow
def test_one_prompt_by_1024_seeds_gets_pages_not_a_strip(tmp_path):
    from recipe_runner.views import grid

    manifest = synthetic_run(tmp_path / "many", ["a cat"], list(range(1024)))
    (tmp_path / "many" / "grid.png").write_bytes(b"an old sheet")  # from an earlier, smaller run
    paths = grid.make_grid(tmp_path / "many", manifest)
    assert len(paths) > 1 and all(re.fullmatch(r"grid-p\d+\.png", p.name) for p in paths)
    assert not (tmp_path / "many" / "grid.png").exists()  # stale sheets go
    assert_within_limits(paths)
    sheets = grid.sheets_for(tmp_path / "many", manifest)
    assert sum(len(s.cells) for s in sheets) == 1024
    assert all(len(s.cells) <= grid.PAGE_TILES for s in sheets)


@pytest.mark.parametrize("nx,ny", [(1, 1), (3, 1), (1, 7), (2, 300), (17, 5), (40, 40), (5, 2000)])
def test_every_table_shape_fits_the_limits(nx, ny):
    from recipe_runner.views import grid

    for left in (0, grid.LABEL_WIDTH):
        p = grid.plan_pages(nx, ny, 192, 192, left, 41, 60)
        bw, bh = left + p.cols * 192, 41 + p.rows * 192
        w, h = p.across * bw + (p.across - 1) * grid.GAP, 60 + p.lines * bh + (p.lines - 1) * grid.GAP
        assert max(w, h) <= grid.MAX_SIDE and max(w, h) / min(w, h) <= grid.MAX_ASPECT, (nx, ny, left, p)


def test_zip_mode_is_a_list_without_empty_cells(tmp_path):
    from recipe_runner.views import grid

    manifest = synthetic_run(tmp_path / "zip", ["a cat", "a dog", "a bird"], [0, 1, 2], mode="zip")
    [sheet] = grid.sheets_for(tmp_path / "zip", manifest)
    assert len(sheet.cells) == 3 and sheet.rows == [""]
    assert sheet.columns == ["a cat\nseed 0", "a dog\nseed 1", "a bird\nseed 2"]
    w, h = sheet.size
    assert w * h < 3 * 2 * (sheet.tile[0] * sheet.tile[1])  # no diagonal of 6 empty cells


def test_a_scheduler_axis_over_one_class_shows_every_option_set(tmp_path):
    from recipe_runner.views import grid

    schedulers = [{"name": "DPMSolverMultistepScheduler"},
                  {"name": "DPMSolverMultistepScheduler", "options": {"use_karras_sigmas": True}},
                  {"name": "EulerAncestralDiscreteScheduler"}]
    manifest = synthetic_run(tmp_path / "sched", ["a cat"], [0, 1, 2], axes={"scheduler": schedulers})
    [sheet] = grid.sheets_for(tmp_path / "sched", manifest)
    assert len(sheet.cells) == 9
    assert sheet.rows == ["DPMSolverMultistepScheduler", "DPMSolverMultistepScheduler (use_karras_sigmas=true)",
                          "EulerAncestralDiscreteScheduler"]


def test_the_recipe_chooses_x_y_and_z(tmp_path):
    from recipe_runner.views import grid

    config = {"x": ["guidance_scale"], "y": ["prompt"], "z": ["seed"]}
    manifest = synthetic_run(tmp_path / "xyz", ["a cat", "a dog"], [0, 1], axes={"guidance_scale": [5.0, 7.0, 9.0]},
                             grid=config)
    paths = grid.make_grid(tmp_path / "xyz", manifest)
    assert [p.name for p in paths] == ["grid-01-seed-0.png", "grid-02-seed-1.png"]
    sheets = grid.sheets_for(tmp_path / "xyz", manifest)
    assert [s.columns for s in sheets] == [["guidance_scale = 5.0", "guidance_scale = 7.0", "guidance_scale = 9.0"]] * 2
    assert [s.rows for s in sheets] == [["a cat", "a dog"]] * 2
    assert all(r["seed"] == 0 for r in (c.record for c in sheets[0].cells))
    # back to one sheet: the per-seed sheets are stale
    manifest["recipe"]["output"]["grid"] = True
    assert [p.name for p in grid.make_grid(tmp_path / "xyz", manifest)] == ["grid.png"]
    assert sorted(p.name for p in (tmp_path / "xyz").glob("grid*.png")) == ["grid.png"]


def test_long_prompts_are_shortened_on_the_sheet_and_whole_in_the_gallery(tmp_path):
    from recipe_runner.views import grid
    from recipe_runner.views.gallery import write_gallery

    long = "a lighthouse on a cliff at dusk, " * 12
    manifest = synthetic_run(tmp_path / "long", [long.strip(), "a dog"], [0, 1])
    grid.make_grid(tmp_path / "long", manifest)
    [sheet] = grid.sheets_for(tmp_path / "long", manifest)
    assert sheet.rows[0].endswith("…") and len(sheet.rows[0]) <= grid.PROMPT_CHARS
    page = write_gallery(tmp_path / "long", manifest).read_text()
    assert long.strip() in page


# Applies filters one after the other through the URL fragment (as a link would), recording how
# many cards each leaves visible (not hidden) on the body: one browser start for all of them.
FILTER_CHECK = """<script>
window.addEventListener("load", function () {
  var fragments = %s, results = [], i = 0;
  function visible() { return document.querySelectorAll("figure.card:not([hidden])").length; }
  function next() {
    results.push(visible());
    if (i === fragments.length) { document.body.setAttribute("data-results", results.join(",")); return; }
    location.hash = fragments[i++];
  }
  window.addEventListener("hashchange", function () { setTimeout(next, 0); });
  next();
});
</script></body>"""


@pytest.mark.slow
@needs_chromium
def test_gallery_of_1000_images_renders_and_its_filter_narrows_the_cards(tmp_path):
    from recipe_runner.views.gallery import write_gallery
    from tests.conftest import pixels

    folder = tmp_path / "big"
    manifest = synthetic_run(folder, ["a cat", "a dog"], list(range(100)), axes={"guidance_scale": [5.0, 6.0, 7.0, 8.0, 9.0]})
    assert len(manifest["images"]) == 1000
    began = time.perf_counter()
    page = write_gallery(folder, manifest)
    write_seconds = time.perf_counter() - began
    text = page.read_text()
    assert text.count('loading="lazy"') == 1000 and not re.search(r'(src|href)="(https?:)?//', text)

    fragments = ["seed=3", "seed=3&guidance_scale=7.0", "q=dog&guidance_scale=9.0", "q=no+such+prompt", ""]
    check = folder / "index-check.html"
    check.write_text(text.replace("</body>", FILTER_CHECK % json.dumps(fragments)))
    began = time.perf_counter()
    dom = chromium(tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom", check.as_uri())
    render_seconds = time.perf_counter() - began
    results = re.search(r'data-results="([\d,]+)"', dom)
    assert results, dom[-500:]
    # all, seed 3 (2 prompts x 5 guidance scales), one of those, the dogs at 9.0, nothing, all again
    assert [int(n) for n in results.group(1).split(",")] == [1000, 10, 2, 100, 0, 1000]
    assert "10 of 1000 shown" not in dom  # the counter follows the last filter
    shot = tmp_path / "shot.png"
    chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,1400", page.as_uri() + "#seed=7&q=cat")
    rendered = pixels(shot)
    assert rendered.std() > 20, "the screenshot is blank"
    colourful = (rendered.max(axis=-1).astype(int) - rendered.min(axis=-1)) > 60
    assert colourful.mean() > 0.05, "no image is visible in the screenshot"
    print(f"gallery of 1000: written in {write_seconds:.2f} s, loaded and filtered 5 times in {render_seconds:.2f} s")


# --- views follow edits of [output] ------------------------------------------------------------------

EDITED = """
[model]
id = "tiny:sd15"
device = "cpu"
[params]
num_inference_steps = 2
[matrix]
prompts = ["a red fox", "a blue house"]
seeds = [0, 1]
[matrix.axes]
guidance_scale = [5.0, 7.0]
"""


def _files(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())
            if p.is_file()}


@pytest.mark.slow
def test_an_output_only_edit_redraws_grid_and_gallery_from_the_images_without_loading(
        recipe_runner_cli, recipe_runner_write_recipe, loads, tmp_path):
    """#20 item 1: a new [output.grid] layout (or gallery setting) on a folder whose jobs are all
    unchanged redraws the views from the images on disk, loads nothing, and touches no image."""
    recipe = recipe_runner_write_recipe(EDITED, "edited.toml")
    out = tmp_path / "out"
    assert recipe_runner_cli(recipe, "--out", out, "--no-progress").code == 0
    folder = out / "edited"
    assert loads.count == 1
    before = _files(folder)
    images = {k: v for k, v in before.items() if not k.startswith(("grid", "index", "manifest"))}
    assert len(images) == 8 and "grid.png" in before

    recipe.write_text(EDITED + '[output.grid]\nx = "guidance_scale"\ny = "seed"\nz = "prompt"\n')
    result = recipe_runner_cli(recipe, "--out", out, "--no-progress")
    assert result.code == 0, result.err
    assert "nothing to do, nothing loaded; grid and gallery redrawn" in result.out
    assert loads.count == 1  # nothing loaded
    after = _files(folder)
    assert {k: after[k] for k in images} == images  # every image: same bytes, inode and mtime
    sheets = sorted(k for k in after if k.startswith("grid"))
    assert sheets == ["grid-01-a-red-fox.png", "grid-02-a-blue-house.png"]  # the new layout, the old sheet gone
    assert after["index.html"][0] != before["index.html"][0] and b"grid-01-a-red-fox.png" in after["index.html"][0]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["recipe"]["output"]["grid"]["z"] == ["prompt"] and manifest["views"]["output"]["grid"]["z"] == ["prompt"]

    again = recipe_runner_cli(recipe, "--out", out, "--no-progress")  # the views are current now: a plain no-op
    assert again.code == 0 and "nothing loaded ->" in again.out and "redrawn" not in again.out
    assert _files(folder) == after

    recipe.write_text(EDITED + "[output]\ngallery = false\ngrid = true\n")  # back to the default sheet
    third = recipe_runner_cli(recipe, "--out", out, "--no-progress")
    assert "nothing to do, nothing loaded; grid redrawn" in third.out and loads.count == 1
    assert sorted(k for k in _files(folder) if k.startswith("grid")) == ["grid.png"]
    assert {k: v for k, v in _files(folder).items() if k in images} == images


# --- #20 item 7: a big sweep at a glance -------------------------------------------------------------

WARRIOR = ("portrait photo of {}, tribal panther make up, blue on red, side profile, looking away, serious eyes, "
           "50mm portrait photography, hard rim lighting photography")
SWEEP_PROMPTS = [WARRIOR.format(who) for who in ("an old warrior chief", "a young warrior chief", "a wise old queen")]

CARDS_CHECK = """<script>
window.addEventListener("load", function () {
  function perRow() {
    var cards = document.querySelectorAll("figure.card"), top = cards[0].getBoundingClientRect().top, n = 0;
    for (var i = 0; i < cards.length && cards[i].getBoundingClientRect().top === top; i++) n++;
    return n;
  }
  var normal = perRow();
  var box = document.getElementById("dense"); box.checked = true; box.dispatchEvent(new Event("change"));
  var prompts = Array.prototype.map.call(document.querySelectorAll("figure.card .prompt"), function (e) { return e.textContent; });
  document.body.setAttribute("data-cards", JSON.stringify({normal: normal, dense: perRow(), hash: location.hash,
    prompts: prompts.slice(0, 3).concat(prompts.slice(-1)), font: getComputedStyle(document.querySelector(".vary span")).fontSize}));
});
</script></body>"""


def _ink_rows(region: np.ndarray) -> int:
    """How many pixel rows of ``region`` (RGB) hold dark ink: the height of the text drawn in it."""
    dark = (region.max(axis=-1) < 120).any(axis=1)
    rows = np.flatnonzero(dark)
    return int(rows[-1] - rows[0] + 1) if len(rows) else 0


def _ink_at(text: str, size: int) -> int:
    from PIL import Image, ImageDraw, ImageFont

    canvas = Image.new("RGB", (800, 3 * size), (255, 255, 255))
    ImageDraw.Draw(canvas).text((4, size // 2), text, fill=(20, 20, 20), font=ImageFont.load_default(size=size))
    return _ink_rows(np.asarray(canvas))


@needs_chromium
@pytest.mark.slow
def test_a_3_by_20_by_3_sweep_reads_at_100_percent_in_chromium(tmp_path):
    """#20 item 7: 180 images (3 prompts x 20 seeds x 3 guidance scales): the default sheets split by
    prompt (said once, in each sheet's title; the words every prompt shares once more), rows and columns
    labelled once with only what varies, each sheet within 4:1, its labels at least 14 px tall on the
    screen at 100% zoom; the gallery's cards show what varies, and its dense layout fits more per row."""
    from recipe_runner.views import grid
    from recipe_runner.views.gallery import write_gallery
    from tests.conftest import pixels

    folder = tmp_path / "sweep"
    manifest = synthetic_run(folder, SWEEP_PROMPTS, list(range(20)), axes={"guidance_scale": [5.0, 7.5, 10.0]})
    paths = grid.make_grid(folder, manifest)
    sheets = grid.sheets_for(folder, manifest)
    assert [p.name for p in paths] == ["grid-01-an-old-warrior-chief.png", "grid-02-a-young-warrior-chief.png",
                                       "grid-03-a-wise-old-queen.png"]
    assert_within_limits(paths)
    common = "prompt: portrait photo of … tribal panther make up, blue on red"
    for sheet, who in zip(sheets, ("an old warrior chief", "a young warrior chief", "a wise old queen")):
        assert len(sheet.cells) == 60
        assert sheet.rows == ["guidance_scale = 5.0", "guidance_scale = 7.5", "guidance_scale = 10.0"]
        assert sheet.columns == [f"seed {s}" for s in range(20)]
        assert who in sheet.title[1] and " ".join(sheet.title).count(common) == 1, sheet.title

    for path, sheet in zip(paths, sheets):  # on screen at 100% zoom: the screenshot is the sheet, pixel for pixel
        w, h = sheet.size
        page = folder / f"{path.stem}.html"
        page.write_text(f'<html><body style="margin:0"><img src="{path.name}" style="display:block"></body></html>')
        shot = tmp_path / f"{path.stem}-shot.png"
        chromium(tmp_path / "profile", f"--screenshot={shot}", f"--window-size={w},{h}", "--force-device-scale-factor=1",
                 "--hide-scrollbars", page.as_uri())
        screen = pixels(shot)
        assert screen.shape[:2] == (h, w) and np.array_equal(screen, pixels(path))
        block = sheet.blocks[0]
        label_h = grid.LINE + grid.PAD
        row = screen[block.y + sheet.header: block.y + sheet.header + label_h, block.x: block.x + sheet.left]
        column = screen[block.y: block.y + sheet.header, block.x + sheet.left: block.x + sheet.left + sheet.tile[0]]
        assert _ink_rows(row) >= _ink_at(sheet.rows[0], 14), "row labels under 14 px"
        assert _ink_rows(column) >= _ink_at(sheet.columns[0], 14), "column labels under 14 px"

    gallery = write_gallery(folder, manifest)
    text = gallery.read_text()
    assert text.count('<dd class="common">portrait photo of … tribal panther make up') == 1  # the common part, once
    check = folder / "index-check.html"
    check.write_text(text.replace("</body>", CARDS_CHECK))
    dom = chromium(tmp_path / "profile", "--window-size=1280,900", "--virtual-time-budget=5000", "--dump-dom", check.as_uri())
    found = re.search(r"data-cards=\"([^\"]+)\"", dom)
    assert found, dom[-500:]
    cards = json.loads(found.group(1).replace("&quot;", '"'))
    assert cards["prompts"] == ["an old warrior chief", "an old warrior chief", "an old warrior chief", "a wise old queen"]
    assert cards["dense"] >= 2 * cards["normal"] >= 8, cards  # the dense layout: twice the cards a row, at least
    assert cards["hash"] == "#dense=1"  # a dense view can be linked
    shot = tmp_path / "gallery.png"
    chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,900", gallery.as_uri() + "#dense=1")
    assert pixels(shot).std() > 20


def test_a_field_that_changes_slower_than_the_next_is_labelled_once_per_block():
    from recipe_runner.views.grid import _once

    rows = ["guidance_scale = 5.0\nan old chief", "guidance_scale = 5.0\na young chief", "guidance_scale = 7.0\nan old chief"]
    assert [_once(rows, i, 0) for i in range(3)] == [rows[0], "\na young chief", rows[2]]
    assert _once(rows, 1, 1) == rows[1]  # the first row of a block says everything
