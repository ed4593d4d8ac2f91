"""recipe-run --compare of two output roots (runs paired by folder name), the --min-psnr / --max-diff
quality gate, and the likely causes named when pixels differ (#22 items 6 and 1)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import chromium, needs_chromium, pixels, tiny_recipe

BASE = 'name = "cmp"\n' + tiny_recipe("a red cube", seeds=[0, 1], params="guidance_scale = 7.0\nheight = 64\nwidth = 64",
                                      tables="[run]\nbatch_size = 2")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, recipe_runner_cache) -> dict[str, Path]:
    """One tiny run, and the same recipe with guidance_scale changed: every root below is copies of them."""
    from recipe_runner.cli.main import main

    folder = tmp_path_factory.mktemp("roots")
    out = {}
    for name, text in {"base": BASE, "guidance": BASE.replace("guidance_scale = 7.0", "guidance_scale = 9.0")}.items():
        recipe = folder / name / "cmp.toml"
        recipe.parent.mkdir()
        recipe.write_text(text)
        assert main([str(recipe), "--out", str(folder / name / "out"), "--no-progress"]) == 0
        out[name] = folder / name / "out" / "cmp"
    return out


def make_root(root: Path, **runs: Path) -> Path:
    """An output root holding a copy of each run under its name, and what a root holds besides runs."""
    root.mkdir(parents=True)
    for name, run in runs.items():
        shutil.copytree(run, root / name)
    (root / ".gitignore").write_text("*\n")
    (root / "notes.txt").write_text("not a run\n")
    (root / "scratch").mkdir()  # a folder without manifest.json
    return root


def nudge_one_pixel(run: Path, *, environment: dict | None = None) -> str:
    """Change one channel of one pixel of the run's first image by one level, re-encode the PNG and
    update the manifest's sha256 (and ``environment`` keys); returns the file's name."""
    from PIL import Image

    manifest = json.loads((run / "manifest.json").read_text())
    record = manifest["images"][0]
    path = run / record["file"]
    with Image.open(path) as image:
        data = np.asarray(image.convert("RGB")).copy()
    data[3, 5, 1] = data[3, 5, 1] + 1 if data[3, 5, 1] < 255 else 254
    Image.fromarray(data).save(path)
    record["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest["environment"].update(environment or {})
    (run / "manifest.json").write_text(json.dumps(manifest))
    return record["file"]


def test_identical_roots_exit_0_with_a_line_per_run(runs, recipe_runner_cli, tmp_path):
    a = make_root(tmp_path / "a", hero=runs["base"], villain=runs["base"])
    b = make_root(tmp_path / "b", hero=runs["base"], villain=runs["base"])
    previous = a / "hero" / "history" / "2026-12-01T14-03-24Z"  # a run's previous results: not a run of the root
    previous.mkdir(parents=True)
    shutil.copy(a / "hero" / "manifest.json", previous / "manifest.json")
    result = recipe_runner_cli("--compare", a, b, "--out", tmp_path / "report")
    assert result.code == 0, result.out + result.err
    assert "history" not in result.out
    assert re.search(r"^  hero +identical$", result.out, re.M) and re.search(r"^  villain +identical$", result.out, re.M)
    assert "runs: 2 compared (2 identical, 0 differ); only in A: 0; only in B: 0" in result.out
    assert "result: identical" in result.out
    report = json.loads((tmp_path / "report" / "compare.json").read_text())
    assert report["exit"] == 0 and [r["name"] for r in report["runs"]] == ["hero", "villain"]
    assert all(r["status"] == "identical" and r["compare"]["pairs"] for r in report["runs"])
    page = (tmp_path / "report" / "runs" / "hero" / "index.html").read_text()
    assert '<a href="../../index.html#run-0">← all runs</a>' in page  # back to its section of the index
    # the report root this compare created ignores itself in git; the run pages inside it need nothing
    assert (tmp_path / "report" / ".gitignore").read_text().splitlines()[-1] == "*"
    assert not list((tmp_path / "report" / "runs").rglob(".gitignore"))


def test_a_param_changed_in_one_run_exits_1_naming_the_run_and_the_key(runs, recipe_runner_cli, tmp_path):
    a = make_root(tmp_path / "a", hero=runs["base"], villain=runs["base"])
    b = make_root(tmp_path / "b", hero=runs["base"], villain=runs["guidance"])
    result = recipe_runner_cli("--compare", a, b, "--out", tmp_path / "report")
    assert result.code == 1, result.out + result.err
    assert re.search(r"^  hero +identical$", result.out, re.M)
    assert re.search(r"^  villain +2 differ$", result.out, re.M)
    assert "runs: 2 compared (1 identical, 1 differ)" in result.out
    detail = result.out[result.out.index("  villain:\n"):]
    assert "params.guidance_scale: 7.0 -> 9.0" in detail
    assert "recipe params.guidance_scale: 7.0 -> 9.0" in detail  # the likely cause
    report = json.loads((tmp_path / "report" / "compare.json").read_text())
    villain = next(r for r in report["runs"] if r["name"] == "villain")
    assert villain["status"] == "different" and villain["exit"] == 1
    assert [d["key"] for d in villain["compare"]["recipe"]] == ["params.guidance_scale"]


def test_a_run_only_in_b_is_a_difference(runs, recipe_runner_cli, tmp_path):
    a = make_root(tmp_path / "a", hero=runs["base"])
    b = make_root(tmp_path / "b", hero=runs["base"], villain=runs["base"])
    result = recipe_runner_cli("--compare", a, b, "--out", tmp_path / "report")
    assert result.code == 1, result.out + result.err
    assert re.search(r"^  villain +only in B$", result.out, re.M)
    assert "runs: 1 compared (1 identical, 0 differ); only in A: 0; only in B: 1 (villain)" in result.out
    report = json.loads((tmp_path / "report" / "compare.json").read_text())
    assert {r["name"]: r["status"] for r in report["runs"]} == {"hero": "identical", "villain": "only-b"}


def test_a_linked_run_folder_is_not_followed(runs, recipe_runner_cli, tmp_path):
    a = make_root(tmp_path / "a", hero=runs["base"], villain=runs["base"])
    b = make_root(tmp_path / "b", hero=runs["base"])
    (b / "villain").symlink_to(a / "villain", target_is_directory=True)
    result = recipe_runner_cli("--compare", a, b, "--out", tmp_path / "report")
    assert result.code == 1, result.out + result.err
    assert re.search(r"^  villain +only in A$", result.out, re.M)


@pytest.mark.parametrize("order", ["root-run", "run-root"])
def test_a_root_against_a_run_folder_is_bad_input_naming_which_is_which(runs, recipe_runner_cli, tmp_path, order):
    root = make_root(tmp_path / "root", hero=runs["base"])
    sides = (root, runs["base"]) if order == "root-run" else (runs["base"], root)
    result = recipe_runner_cli("--compare", *sides, "--out", tmp_path / "report")
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0] == (f"error: {root} is an output root (a folder of run folders) but {runs['base']} "
                                            "is a run: give two runs (folders or manifest.json) or two output roots")
    assert not (tmp_path / "report").exists()


def test_a_root_of_too_many_entries_is_refused_not_read_on(runs, recipe_runner_cli, tmp_path, monkeypatch):
    from recipe_runner.views import compare

    monkeypatch.setattr(compare, "MAX_ROOT_ENTRIES", 8)
    a = make_root(tmp_path / "a", hero=runs["base"])
    for i in range(10):
        (a / f"extra-{i}").mkdir()
    result = recipe_runner_cli("--compare", a, a, "--out", tmp_path / "report")
    assert result.code == 2
    assert "more than 8 entries" in result.err


@pytest.mark.parametrize("link", ["runs", "runs/hero"])
def test_the_report_of_two_roots_is_never_written_through_a_link(runs, recipe_runner_cli, tmp_path, link):
    a = make_root(tmp_path / "a", hero=runs["base"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    report = tmp_path / "report"
    (report / link).parent.mkdir(parents=True, exist_ok=True)
    (report / link).symlink_to(elsewhere, target_is_directory=True)
    result = recipe_runner_cli("--compare", a, a, "--out", report)
    assert result.code == 2 and "is a symbolic link: the report is never written through one" in result.err
    assert list(elsewhere.iterdir()) == []


# --- thresholds ------------------------------------------------------------------------------------


@pytest.fixture
def nudged(runs, tmp_path) -> Path:
    """A copy of the base run with one pixel one level off in its first image."""
    copy = tmp_path / "nudged" / "cmp"
    shutil.copytree(runs["base"], copy)
    nudge_one_pixel(copy)
    return copy


@pytest.mark.parametrize(("options", "code"), [((), 1), (("--min-psnr", "60", "--max-diff", "1"), 0),
                                                (("--max-diff", "0"), 1), (("--min-psnr", "100"), 1),
                                                (("--max-diff", "1"), 0)])
def test_a_one_level_difference_is_close_within_the_thresholds(runs, nudged, recipe_runner_cli, tmp_path, options, code):
    result = recipe_runner_cli("--compare", runs["base"], nudged, "--out", tmp_path / "report", *options)
    assert result.code == code, result.out + result.err
    report = json.loads((tmp_path / "report" / "compare.json").read_text())
    statuses = sorted(p["status"] for p in report["pairs"])
    changed = next(p for p in report["pairs"] if p["status"] != "identical")
    assert changed["max_diff"] == 1 and 80 < changed["psnr"] < 95
    assert report["thresholds"] == {"min_psnr": float(options[options.index("--min-psnr") + 1]) if "--min-psnr" in options
                                    else None,
                                    "max_diff": int(options[options.index("--max-diff") + 1]) if "--max-diff" in options
                                    else None}
    if code == 0:
        assert statuses == ["close", "identical"]
        assert re.search(r"pairs: 2 \(1 identical, 0 differ, 1 close \((PSNR >= 60 dB, )?max diff <= 1\)\)", result.out)
        assert "result: within the thresholds" in result.out
        assert re.search(r"close pairs \(.*max diff <= 1\):\n +PSNR +[\d.]+ dB +max +1 ", result.out)
    else:
        assert statuses == ["different", "identical"]
        assert "result: different" in result.out


def test_thresholds_apply_to_each_run_of_two_roots(runs, nudged, recipe_runner_cli, tmp_path):
    a = make_root(tmp_path / "a", hero=runs["base"], villain=runs["base"])
    b = make_root(tmp_path / "b", hero=runs["base"], villain=nudged)
    assert recipe_runner_cli("--compare", a, b, "--out", tmp_path / "r1").code == 1
    result = recipe_runner_cli("--compare", a, b, "--out", tmp_path / "r2", "--min-psnr", "40", "--max-diff", "2")
    assert result.code == 0, result.out + result.err
    assert re.search(r"^  villain +1 close$", result.out, re.M)
    assert "runs: 2 compared (1 identical, 0 differ, 1 close)" in result.out
    assert "pairs close (PSNR >= 40 dB, max diff <= 2): 1" in result.out
    report = json.loads((tmp_path / "r2" / "compare.json").read_text())
    assert report["thresholds"] == {"min_psnr": 40.0, "max_diff": 2}
    assert {r["name"]: r["status"] for r in report["runs"]} == {"hero": "identical", "villain": "close"}


@pytest.mark.parametrize("options", [("--min-psnr", "abc"), ("--min-psnr", "-1"), ("--min-psnr", "nan"),
                                     ("--max-diff", "256"), ("--max-diff", "1.5"), ("--max-diff", "-1")])
def test_bad_threshold_values_are_exit_2(runs, recipe_runner_cli, tmp_path, options, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage error: exit 2, one error line
        recipe_runner_cli("--compare", runs["base"], runs["base"], "--out", tmp_path / "report", *options)
    assert exit_info.value.code == 2
    assert f"error: argument {options[0]}: expected " in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("options", [("--max-diff", "0"), ("--min-psnr", "40")])
def test_thresholds_without_compare_are_exit_2(recipe_runner_cli, tmp_path, options):
    recipe = tmp_path / "r.toml"
    recipe.write_text(BASE)
    result = recipe_runner_cli("--dry-run", recipe, *options)
    assert result.code == 2 and f"{options[0]} has no effect with --dry-run" in result.err


# --- likely causes ---------------------------------------------------------------------------------


def test_a_thread_count_difference_is_named_as_the_likely_cause(runs, recipe_runner_cli, tmp_path):
    a, b = tmp_path / "a" / "cmp", tmp_path / "b" / "cmp"
    shutil.copytree(runs["base"], a)
    shutil.copytree(runs["base"], b)
    for side, threads in ((a, 1), (b, 2)):
        manifest = json.loads((side / "manifest.json").read_text())
        manifest["environment"]["threads"] = threads
        (side / "manifest.json").write_text(json.dumps(manifest))
    nudge_one_pixel(b)
    result = recipe_runner_cli("--compare", a, b, "--out", tmp_path / "report")
    assert result.code == 1, result.out + result.err
    causes = result.out[result.out.index("likely causes, most likely first:"):].splitlines()
    assert causes[1].strip() == "threads 1 -> 2: CPU kernels round differently per thread count; pin [run] threads"
    report = json.loads((tmp_path / "report" / "compare.json").read_text())
    assert report["causes"] == [causes[1].strip()]
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.index("Likely causes") < page.index("Differing pairs")
    assert "threads 1 -&gt; 2: CPU kernels round differently per thread count" in page


def test_threads_alone_with_the_same_pixels_name_no_cause(runs, recipe_runner_cli, tmp_path):
    b = tmp_path / "b" / "cmp"
    shutil.copytree(runs["base"], b)
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["environment"]["threads"] = manifest["environment"]["threads"] + 1
    (b / "manifest.json").write_text(json.dumps(manifest))
    result = recipe_runner_cli("--compare", runs["base"], b, "--out", tmp_path / "report")
    assert result.code == 0 and "likely causes" not in result.out


def test_causes_are_ordered_model_files_recipe_threads_versions(runs, recipe_runner_cli, tmp_path):
    a = tmp_path / "a" / "cmp"
    shutil.copytree(runs["guidance"], a)
    def local(unet: str) -> dict:  # environment.models as a run records it
        return {"model": {"kind": "local", "sha256": unet * 2,
                          "files": {"unet/diffusion_pytorch_model.safetensors": unet, "vae/config.json": "same"}}}

    env_a = {"threads": 1, "torch": "2.12.0", "dtype": "float16", "models": local("aaa")}
    manifest = json.loads((a / "manifest.json").read_text())
    manifest["environment"].update(env_a)
    (a / "manifest.json").write_text(json.dumps(manifest))
    b = tmp_path / "b" / "cmp"
    shutil.copytree(runs["base"], b)
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["environment"].update({"threads": 2, "models": local("bbb")})
    (b / "manifest.json").write_text(json.dumps(manifest))
    result = recipe_runner_cli("--compare", a, b, "--out", tmp_path / "report")
    assert result.code == 1
    causes = json.loads((tmp_path / "report" / "compare.json").read_text())["causes"]
    assert [c.split(" ")[0] for c in causes] == ["model", "recipe", "threads", "torch", "dtype"]
    assert causes[0] == "model files: model: unet/diffusion_pytorch_model.safetensors differs between the runs"
    assert causes[1] == "recipe params.guidance_scale: 9.0 -> 7.0"


def test_a_moved_model_with_the_same_files_is_no_cause():
    from recipe_runner.views.compare import likely_causes

    files = {"unet/diffusion_pytorch_model.safetensors": "aaa"}
    recipe = [("model.id", "~/models/sd15", "/data/models/sd15"), ("params.guidance_scale", 7.0, 9.0)]
    assert likely_causes(recipe, {"models": files, "threads": 1}, {"models": dict(files), "threads": 2}) == [
        "recipe params.guidance_scale: 7.0 -> 9.0",
        "threads 1 -> 2: CPU kernels round differently per thread count; pin [run] threads"]
    assert likely_causes(recipe[:1], {}, {}) == ["recipe model.id: ~/models/sd15 -> /data/models/sd15"]  # not recorded


# --- the report ------------------------------------------------------------------------------------


@pytest.mark.slow
@needs_chromium
def test_the_roots_index_renders_in_headless_chromium_linking_each_run(runs, recipe_runner_cli, tmp_path):
    a = make_root(tmp_path / "a", hero=runs["base"], villain=runs["base"], extra=runs["base"])
    b = make_root(tmp_path / "b", hero=runs["base"], villain=runs["guidance"], newcomer=runs["base"])
    report = tmp_path / "report"
    assert recipe_runner_cli("--compare", a, b, "--out", report).code == 1

    dom = chromium(tmp_path / "profile", "--virtual-time-budget=3000", "--dump-dom", (report / "index.html").as_uri())
    names = ["extra", "hero", "newcomer", "villain"]
    links = re.findall(r'<a href="#(run-\d+)">([^<]+)</a>', dom)
    assert [name for _, name in links] == names
    for anchor, name in links:  # each link leads to that run's section
        section = re.search(rf'<section class="pair run" id="{anchor}"><h3>([^<]+)</h3>', dom)
        assert section and section.group(1).startswith(f"{name}: ")
    pages = re.findall(r'<a class="open" href="([^"]+)">', dom)
    assert pages == ["runs/hero/index.html", "runs/villain/index.html"]  # the runs on both sides
    for page in pages:
        assert "Differing pairs" in (report / page).read_text() or "identical pairs" in (report / page).read_text()
    shot = tmp_path / "shot.png"
    chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1000,800", (report / "index.html").as_uri())
    rendered = pixels(shot)
    assert rendered.std() > 10, "the screenshot is blank"
    red = (rendered[..., 0] > 120) & (rendered[..., 1] < 60) & (rendered[..., 2] < 60)
    assert red.sum() > 50, "the differing runs are not marked in red"
