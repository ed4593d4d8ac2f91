"""How long from saving an edit to seeing its image? ``--watch`` against a cold ``recipe-run``. Prints a table.

    python bench/iterate.py             # tiny pipeline on this machine (CPU is fine)
    python bench/iterate.py --runs 9    # more alternated runs

The edit adds one seed to a recipe whose other images are already made, so either way exactly
one image is generated:

- cold: a fresh ``recipe-run`` process on the edited recipe, in a copy of the finished folder
  (imports, load, resume, one image, grid and gallery): the whole process's time;
- watch: a ``recipe-run --watch`` session already running on the recipe; the time from saving the
  edit (written beside it and renamed over it, as editors save) to the new image's file appearing.

Cold runs and edits alternate, so drift in machine load hits both alike. Target (issue 11): the
watch latency under a third of the cold run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from overhead import table  # bench/ is on sys.path when a bench script runs

REPO = Path(__file__).resolve().parent.parent
FIRST_SEEDS = 2
RECIPE = """
name = "iterate"
[model]
id = "tiny:sd15"
device = "cpu"
[scheduler]
name = "DPMSolverMultistepScheduler"
[params]
num_inference_steps = 4
[matrix]
prompts = ["portrait photo of a old warrior chief"]
seeds = {seeds}
"""


def save(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    os.replace(tmp, path)


def images(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.png") if p.name != "grid.png"} if folder.is_dir() else set()


def run(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return seconds


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, limit: float = 300.0) -> float:
    """Poll (5 ms) until ``condition()``; returns the perf_counter time it first held."""
    deadline = time.perf_counter() + limit
    while not condition():
        if proc.poll() is not None:
            sys.exit(f"the --watch session ended ({proc.returncode})")
        if time.perf_counter() > deadline:
            sys.exit("timed out")
        time.sleep(0.005)
    return time.perf_counter()


def measure(runs: int, env: dict[str, str], work: Path) -> list[tuple[str, str]]:
    recipe = work / "iterate.toml"
    recipe.write_text(RECIPE.format(seeds=FIRST_SEEDS))
    run([sys.executable, "-m", "recipe_runner", str(recipe), "--out", "base"], env, work)  # the finished folder
    watch_log = work / "watch.out"
    with open(watch_log, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "recipe_runner", "--watch", str(recipe), "--out", "watch",
                                 "--no-progress"], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        started = time.perf_counter()
        first = wait_for(lambda: watch_log.read_text().count("watching ") == 1, proc) - started
        cold: list[float] = []
        warm: list[float] = []
        cold_recipe = work / "cold.toml"
        for i in range(runs):
            seeds = FIRST_SEEDS + 1 + i
            # cold: the same one-seed edit, a fresh process, a copy of the folder with the others made
            cold_recipe.write_text(RECIPE.format(seeds=FIRST_SEEDS + 1).replace('"iterate"', '"cold"'))
            target = work / f"cold-{i}"
            shutil.copytree(work / "base" / "iterate", target / "cold")
            before = images(target / "cold")
            cold.append(run([sys.executable, "-m", "recipe_runner", str(cold_recipe), "--out", str(target),
                             "--no-progress"], env, work))
            assert len(images(target / "cold") - before) == 1
            # watch: save the edit, time until the new image's file is there
            have = images(work / "watch" / "iterate")
            rounds = watch_log.read_text().count("watching ")
            saved = time.perf_counter()
            save(recipe, RECIPE.format(seeds=seeds))
            landed = wait_for(lambda have=have: len(images(work / "watch" / "iterate") - have) >= 1, proc)
            warm.append(landed - saved)
            wait_for(lambda n=rounds + 1: watch_log.read_text().count("watching ") == n, proc)  # the round ends
            assert len(images(work / "watch" / "iterate") - have) == 1
        text = watch_log.read_text()
        assert text.count("load 0.0 s") >= runs, text  # every edit's round reused the loaded pipeline
    finally:
        proc.send_signal(2)
        proc.wait(timeout=60)

    def runs_text(times: list[float]) -> str:
        return f"{statistics.median(times):.2f} s median  (runs: {', '.join(f'{t:.2f}' for t in times)})"

    ratio = statistics.median(warm) / statistics.median(cold)
    return [
        ("edit", f"add one seed to a {FIRST_SEEDS}-image recipe: 1 new image, tiny SD-1.5 layout, 4 steps, CPU, "
                 f"threads {env.get('OMP_NUM_THREADS', 'default')}"),
        ("cold recipe-run (whole process)", runs_text(cold)),
        ("--watch: save -> new image file", runs_text(warm)),
        ("ratio watch / cold", f"{ratio:.3f}  (target < 0.333); {1 / ratio:.1f}x faster"),
        ("--watch first round (start -> watching)", f"{first:.2f} s"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="alternated cold runs and edits (default 5)")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.update(DIFFUSERS_VERBOSITY="error", TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1")
    env.setdefault("RECIPE_RUNNER_CACHE", str(Path.home() / ".cache" / "recipe-runner"))
    with tempfile.TemporaryDirectory() as tmp:
        print(table("edit-to-new-image latency: --watch against a cold recipe-run", measure(args.runs, env, Path(tmp))))


if __name__ == "__main__":
    main()
