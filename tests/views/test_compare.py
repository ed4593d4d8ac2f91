"""recipe-run --compare A B: pairing by job identity, exit status, the report."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LOAD_CHECK, REPO, chromium, needs_chromium, pixels, tiny_recipe

BASE = 'name = "cmp"\n' + tiny_recipe("a red cube", "a blue ball", seeds=[0, 1],
                                          params="guidance_scale = 7.0\nheight = 64\nwidth = 64", tables="[run]\nbatch_size = 2")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, recipe_runner_cache) -> dict[str, Path]:
    """The same recipe twice, with guidance_scale changed, and with a seed added (seeds reordered)."""
    from recipe_runner.cli.main import main

    folder = tmp_path_factory.mktemp("compare")
    variants = {"a": BASE, "same": BASE, "guidance": BASE.replace("guidance_scale = 7.0", "guidance_scale = 9.0"),
                "seed": BASE.replace("seeds = [0, 1]", "seeds = [1, 2, 0]")}
    out = {}
    for name, text in variants.items():
        recipe = folder / name / "cmp.toml"
        recipe.parent.mkdir()
        recipe.write_text(text)
        assert main([str(recipe), "--out", str(folder / name / "out"), "--no-progress"]) == 0
        out[name] = folder / name / "out" / "cmp"
    return out


def test_identical_runs_exit_0(runs, recipe_runner_cli, tmp_path):
    result = recipe_runner_cli("--compare", runs["a"], runs["same"] / "manifest.json", "--out", tmp_path / "report")
    assert result.code == 0, result.out + result.err
    assert "pairs: 4 (4 identical, 0 differ); only in A: 0; only in B: 0" in result.out
    assert "result: identical" in result.out
    report = json.loads((tmp_path / "report" / "compare.json").read_text())
    assert report["exit"] == 0 and [p["status"] for p in report["pairs"]] == ["identical"] * 4


def test_changed_guidance_scale_exits_1_with_every_pair_differing(runs, recipe_runner_cli, tmp_path):
    result = recipe_runner_cli("--compare", runs["a"], runs["guidance"], "--out", tmp_path / "report")
    assert result.code == 1, result.out + result.err
    assert "pairs: 4 (0 identical, 4 differ); only in A: 0; only in B: 0" in result.out
    assert "params.guidance_scale: 7.0 -> 9.0" in result.out
    assert len(re.findall(r"PSNR +[\d.]+ dB +max +\d+", result.out)) == 4
    report = json.loads((tmp_path / "report" / "compare.json").read_text())
    assert [d["key"] for d in report["recipe"]] == ["params.guidance_scale"]
    assert all(p["status"] == "different" and p["psnr"] > 0 and p["max_diff"] > 0 for p in report["pairs"])
    # the same prompt and seed on both sides (the names differ: a name comes from the whole job, guidance included)
    assert all(p["a"].rsplit("-", 1)[0] == p["b"].rsplit("-", 1)[0] for p in report["pairs"])
    assert len({p["a"] for p in report["pairs"]}) == 4
    psnrs = [p["psnr"] for p in report["pairs"]]
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.index("params.guidance_scale") < page.index("Differing pairs")
    assert page.count('class="pair"') == 4 and len(re.findall(r'src="pairs/\d+-diff.png"', page)) == 4
    shown = [float(x) for x in re.findall(r"PSNR ([\d.]+) dB", page)]
    assert shown == sorted(shown) and len(shown) == len(psnrs)  # worst first


def test_an_added_seed_is_only_in_b_and_the_rest_still_pair(runs, recipe_runner_cli, tmp_path):
    result = recipe_runner_cli("--compare", runs["a"], runs["seed"], "--out", tmp_path / "report")
    assert result.code == 1, result.out + result.err
    assert "pairs: 4 (4 identical, 0 differ); only in A: 0; only in B: 2" in result.out
    report = json.loads((tmp_path / "report" / "compare.json").read_text())
    only_b = [p for p in report["pairs"] if p["status"] == "only-b"]
    assert sorted(p["label"] for p in only_b) == ["a blue ball · seed 2", "a red cube · seed 2"]
    pairs = [p for p in report["pairs"] if p["status"] == "identical"]
    assert all(p["a"] == p["b"] for p in pairs)  # seeds reordered: files are named by what the job is
    assert "matrix.seeds: [0, 1] -> [1, 2, 0]" in result.out


def test_previous_results_holding_only_some_files_compare_by_their_hashes(runs, recipe_runner_cli, tmp_path):
    """A folder of previous results (manifest.json and the images it kept) is a side too: a record
    whose file is not kept is identical when both manifests give it the same sha256."""
    previous = tmp_path / "previous"
    previous.mkdir()
    manifest = json.loads((runs["a"] / "manifest.json").read_text())
    (previous / "manifest.json").write_text(json.dumps(manifest))
    kept = manifest["images"][0]["file"]
    shutil.copy(runs["a"] / kept, previous / kept)
    result = recipe_runner_cli("--compare", previous, runs["a"], "--out", tmp_path / "report")
    assert result.code == 0, result.out + result.err


@pytest.mark.parametrize("damage", ["missing", "corrupt", "not-a-manifest", "no-folder"])
def test_bad_input_exits_2_with_one_clear_line(runs, recipe_runner_cli, tmp_path, damage):
    side = tmp_path / "side"
    side.mkdir()
    if damage == "corrupt":
        (side / "manifest.json").write_text('{"images": [')
    elif damage == "not-a-manifest":
        (side / "manifest.json").write_text('{"hello": 1}')
    elif damage == "no-folder":
        side = tmp_path / "nowhere"
    result = recipe_runner_cli("--compare", runs["a"], side, "--out", tmp_path / "report")
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.err
    expected = {"missing": "no manifest.json in this folder", "corrupt": "not valid JSON",
                "not-a-manifest": "not a recipe-run manifest", "no-folder": "no such file or folder"}[damage]
    assert expected in lines[0]
    assert not (tmp_path / "report").exists()


def test_compare_imports_neither_torch_nor_diffusers(runs, tmp_path):
    code = ("import sys; from recipe_runner.cli.main import main; "
            f"c = main(['--compare', {str(runs['a'])!r}, {str(runs['guidance'])!r}, '--out', {str(tmp_path / 'r')!r}]); "
            "print('exit', c, 'torch' in sys.modules, 'diffusers' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "exit 1 False False", proc.stdout + proc.stderr


@pytest.mark.slow
@needs_chromium
def test_report_renders_in_headless_chromium_with_its_images(runs, recipe_runner_cli, tmp_path):
    report = tmp_path / "report"
    assert recipe_runner_cli("--compare", runs["a"], runs["guidance"], "--out", report).code == 1

    check = report / "index-check.html"
    check.write_text((report / "index.html").read_text().replace("</body>", LOAD_CHECK))
    dom = chromium(tmp_path / "profile", "--virtual-time-budget=5000", "--window-size=1200,6000", "--dump-dom", check.as_uri())
    counts = re.search(r'data-images="(\d+)" data-loaded="(\d+)"', dom)
    assert counts and counts.group(1) == counts.group(2) == "12", dom[-500:]  # A, B, heatmap of 4 pairs
    shot = tmp_path / "shot.png"
    chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,1400", (report / "index.html").as_uri())
    rendered = pixels(shot)
    assert rendered.std() > 20, "the screenshot is blank"
    colourful = (rendered.max(axis=-1).astype(int) - rendered.min(axis=-1)) > 60
    assert colourful.mean() > 0.03, "no image is visible in the screenshot"
