"""The promise that outlives refactors: the shipped offline recipes make the same files, job keys and
pixels as the recipe-runner that first made them, so an output folder made then is "nothing to do" now.

``tests/golden/shipped-recipes.json`` was recorded from recipes/tiny.toml and recipes/tiny-axes.toml
before the stage-folder restructure, with one CPU thread as the suite runs (file name -> [job key,
SHA-256 of the decoded pixels]). Pixels, not file bytes: the embedded metadata names the machine's
folders.
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
def test_the_shipped_offline_recipes_make_the_recorded_files_keys_and_pixels(recipe_runner_cli, tmp_path):
    out = tmp_path / "out"
    result = recipe_runner_cli(REPO / "recipes" / "tiny.toml", REPO / "recipes" / "tiny-axes.toml", "--out", out,
                               "--no-progress")
    assert result.code == 0, result.err
    made = {}
    for name in ("tiny", "tiny-axes"):
        manifest = json.loads((out / name / "manifest.json").read_text())
        for record in manifest["images"]:
            with Image.open(out / name / record["file"]) as image:
                pixels = hashlib.sha256(np.asarray(image).tobytes()).hexdigest()
            made[f"{name}/{record['file']}"] = [record["key"], pixels]
    assert made == GOLDEN
