"""First use on a fresh machine: building the tiny models (``--lock`` builds them before anything
else) shows none of the libraries' chatter: no transformers "requires torchvision" warnings, no
"Writing model shards" progress bar. Only recipe-run's own lines reach the terminal."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO, TINY_RECIPE

CHATTER = ("torchvision", "Writing model shards", "it/s]", "Loading pipeline components")


@pytest.mark.slow
@pytest.mark.parametrize("mode", [["--lock"], ["--out", "out"]])
def test_first_use_on_a_fresh_cache_prints_only_recipe_runs_lines(tmp_path, mode):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    # this test process may have set these already (in-process runs): the child starts without them
    env = {k: v for k, v in os.environ.items()
           if k not in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")}
    env["RECIPE_RUNNER_CACHE"] = str(tmp_path / "fresh-cache")  # nothing built yet: this run builds tiny:sd15
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-m", "recipe_runner", str(recipe), *mode], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "fresh-cache").is_dir()
    shown = result.stdout + result.stderr
    assert not [word for word in CHATTER if word in shown], shown
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert all(line.startswith(("tiny:", "  ")) for line in lines), lines
