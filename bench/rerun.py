"""What a re-run costs when there is nothing to do, against `--dry-run` of the same recipe.

    python bench/rerun.py             # tiny pipeline, 9 alternated runs of each
    python bench/rerun.py --runs 15

A re-run whose every image is unchanged decides so from files alone (no torch import, no model
load): the target is at most about twice a `--dry-run`. The table also times the first run (import,
load, generate) and an edited re-run that regenerates every image, for scale. Whole processes,
alternated run by run, medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = """
name = "rerun"
[model]
id = "tiny:sd15"
device = "cpu"
[params]
num_inference_steps = 8
[matrix]
prompts = ["portrait photo of a old warrior chief", "a cat basking in the sun on a roof in Turkey"]
seeds = 8
[run]
batch_size = 4
"""


def timed(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "recipe_runner", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"recipe-run {' '.join(args)} failed:\n{proc.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        recipe = work / "rerun.toml"
        recipe.write_text(RECIPE)
        env = dict(os.environ, RECIPE_RUNNER_CACHE=str(work / "cache"), PYTHONDONTWRITEBYTECODE="")
        out = ["--out", str(work / "out"), "--no-progress"]
        first = timed([str(recipe), *out], env)
        idle, dry = [], []
        for _ in range(runs):
            idle.append(timed([str(recipe), *out], env))
            dry.append(timed(["--dry-run", str(recipe), *out], env))
        edited = timed([str(recipe), *out, "--set", "params.guidance_scale=6.0"], env)
    rows = [
        ("first run (16 images)", first),
        ("edited re-run (16 regenerated)", edited),
        ("--dry-run", statistics.median(dry)),
        ("re-run, nothing to do", statistics.median(idle)),
    ]
    print(f"{'':34} {'seconds':>8}")
    for name, seconds in rows:
        print(f"{name:34} {seconds:8.2f}")
    print(f"{'nothing to do / --dry-run':34} {statistics.median(idle) / statistics.median(dry):8.2f}  (target <= 2)")


if __name__ == "__main__":
    main()
