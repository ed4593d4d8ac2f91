"""The promise that outlives refactors: the shipped offline recipes make the same files, job keys and
pixels as the recipe-runner that first made them, so an output folder made then is "nothing to do" now.

``tests/golden/shipped-recipes.json`` was recorded from recipes/tiny.toml and recipes/tiny-axes.toml
before the stage-folder restructure, with one CPU thread as the suite runs (file name -> [job key,
SHA-256 of the decoded pixels]). Pixels, not file bytes: the embedded metadata names the machine's
folders. Since file names come from the resolved job (issue 20), a fresh run names its files
anew; a folder holding the recorded names and keys must stay "nothing to do", untouched.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO

GOLDEN = json.loads((REPO / "tests" / "golden" / "shipped-recipes.json").read_text())


@pytest.mark.slow
def test_the_shipped_offline_recipes_make_the_recorded_keys_and_pixels(recipe_runner_cli, tmp_path):
    """Keys and pixels as recorded. File names now come from the resolved job (issue 20): a fresh
    run names its files anew; each record's ``cell`` is the name the recorded file had."""
    out = tmp_path / "out"
    result = recipe_runner_cli(REPO / "recipes" / "tiny.toml", REPO / "recipes" / "tiny-axes.toml", "--out", out,
                               "--no-progress")
    assert result.code == 0, result.err
    made, cells = {}, {}
    for name in ("tiny", "tiny-axes"):
        manifest = json.loads((out / name / "manifest.json").read_text())
        for record in manifest["images"]:
            made[record["key"]] = pixels(out / name / record["file"])
            cells[record["key"]] = f"{name}/{record['cell']}.png"
    assert made == {key: digest for key, digest in GOLDEN.values()}
    assert {cells[key]: [key, digest] for key, digest in made.items()} == GOLDEN


@pytest.mark.slow
def test_a_folder_made_with_the_recorded_names_and_keys_stays_nothing_to_do(recipe_runner_cli, tmp_path):
    """An output folder as the first recipe-runner made it (the recorded file names, keys and
    pixels): recognised as unchanged by this one, not regenerated, renamed or rewritten."""
    out = tmp_path / "out"
    recipes = (REPO / "recipes" / "tiny.toml", REPO / "recipes" / "tiny-axes.toml")
    assert recipe_runner_cli(*recipes, "--out", out, "--no-progress").code == 0
    by_key = {key: name for name, (key, _) in GOLDEN.items()}
    for name in ("tiny", "tiny-axes"):  # the folder as it was: the recorded names
        path = out / name / "manifest.json"
        manifest = json.loads(path.read_text())
        for record in manifest["images"]:
            recorded = by_key[record["key"]]
            assert recorded.startswith(f"{name}/")
            (out / name / record["file"]).rename(out / recorded)
            record["file"] = recorded.split("/", 1)[1]
            del record["cell"]
        path.write_text(json.dumps(manifest, indent=2))
    before = {p.relative_to(out).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
              for p in out.rglob("*") if p.is_file()}
    assert set(GOLDEN) <= set(before)
    result = recipe_runner_cli(*recipes, "--out", out, "--no-progress")
    assert result.code == 0, result.err
    assert "tiny: 4 images: 0 new, 0 to regenerate, 4 unchanged; nothing to do, nothing loaded" in result.out
    assert "tiny-axes: 8 images: 0 new, 0 to regenerate, 8 unchanged; nothing to do, nothing loaded" in result.out
    after = {p.relative_to(out).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
             for p in out.rglob("*") if p.is_file()}
    assert after == before  # not regenerated, not renamed, manifests not rewritten
    for name in ("tiny", "tiny-axes"):
        records = json.loads((out / name / "manifest.json").read_text())["images"]
        assert {f"{name}/{r['file']}": r["key"] for r in records} == {
            file: key for file, (key, _) in GOLDEN.items() if file.startswith(f"{name}/")}


def pixels(path) -> str:
    with Image.open(path) as image:
        return hashlib.sha256(np.asarray(image).tobytes()).hexdigest()
