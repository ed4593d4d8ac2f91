"""Do writes overlap the device? Prints a table.

    python bench/writer_overlap.py                          # 16 images of 1024x1024, batches of 4, 0.25 s/image
    python bench/writer_overlap.py --runs 5 --images 32     # more
    python bench/writer_overlap.py --seconds-per-image 1.0  # a slower device (SDXL on a mid-range GPU)

A simulated device (bench/simulated_device.py, a plugin): each pipeline call keeps the host
waiting a fixed time per image (``time.sleep``, which releases the GIL as a CUDA synchronisation
does) and returns 1024x1024 images that compress like photos (about 1.4 MB as PNG). No diffusion
runs. Three ways to make the same images, alternated run by run, medians:

1. a hand-written loop that saves each batch before starting the next: the same simulated calls,
   then per image the same PNG encoding (Pillow's default level, iTXt metadata), a temporary
   file, fsync, rename;
2. ``recipe-run`` with its background writer (the default): a batch is encoded, written, fsynced
   and journaled while the next one generates;
3. ``recipe-run`` with ``RECIPE_RUNNER_SYNC_WRITES=1``: each batch written before the next.

"loop s" is the time from the first call to the last image on disk: the hand loop's own clock,
and recipe-run's ``timings.generate_seconds`` (which includes waiting for the last writes);
"ratio" divides it by the hand loop's (target for the background writer: <= 0.9). "device s" is
the time the simulated device was busy (the floor), "write s" the time spent writing
(``timings.write_seconds``), "device waited s" how long the device sat idle waiting for writes
(``timings.write_wait_seconds``). "process s" is the whole command (recipe-run also imports torch
and loads the tiny pipeline; not part of the ratio).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
PROMPTS = ["portrait photo of a old warrior chief", "a cat basking in the sun on a roof in Turkey"]

HAND_LOOP = '''
import hashlib, io, json, os, sys, time
from PIL.PngImagePlugin import PngInfo
from simulated_device import simulated_call

out, batches = sys.argv[1], json.loads(sys.argv[2])
start = time.perf_counter()
for batch in batches:
    images = simulated_call([seed for _, seed in batch])
    for (prompt, seed), image in zip(batch, images):  # saved before the next batch starts
        info = PngInfo()
        info.add_itxt("parameters", f"{prompt}\\nSteps: 30, CFG scale: 7.5, Seed: {seed}, Size: 1024x1024")
        info.add_itxt("job", json.dumps({"prompt": prompt, "seed": seed, "params": {"num_inference_steps": 30}}))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", pnginfo=info)
        data = buffer.getvalue()
        path = os.path.join(out, f"{seed:04d}-{prompt[:20]}.png")
        with open(path + ".tmp", "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(path + ".tmp", path)
        hashlib.sha256(data).hexdigest()
print(json.dumps({"loop": time.perf_counter() - start}))
'''


def recipe_text(seeds: int, batch: int) -> str:
    return textwrap.dedent(f"""
        name = "overlap"
        [model]
        id = "tiny:sd15"
        device = "cpu"
        [params]
        num_inference_steps = 30
        guidance_scale = 7.5
        width = 1024
        height = 1024
        [matrix]
        prompts = {json.dumps(PROMPTS)}
        seeds = {list(range(seeds))}
        [run]
        batch_size = {batch}
    """)


def environment(seconds_per_image: float, **extra: str) -> dict[str, str]:
    env = dict(os.environ, SIMULATED_SECONDS_PER_IMAGE=str(seconds_per_image), **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(BENCH), env.get("PYTHONPATH", "")])
    env.pop("RECIPE_RUNNER_SYNC_WRITES", None)
    env.update(extra)
    return env


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr}")
    return seconds, proc.stdout


def hand_loop(work: Path, batches: list[list[tuple[str, int]]], env: dict[str, str]) -> dict[str, float]:
    out = Path(tempfile.mkdtemp(dir=work))
    process, stdout = run([sys.executable, "-c", HAND_LOOP, str(out), json.dumps(batches)], env)
    return {"loop": json.loads(stdout.strip().splitlines()[-1])["loop"], "process": process}


def recipe_run(work: Path, recipe: Path, env: dict[str, str]) -> dict[str, float]:
    out = Path(tempfile.mkdtemp(dir=work))
    process, _ = run([sys.executable, "-m", "recipe_runner", str(recipe), "--out", str(out), "-p", "simulated_device",
                      "--no-progress"], env)
    timings = json.loads((out / "overlap" / "manifest.json").read_text())["timings"]
    return {"loop": timings["generate_seconds"], "process": process, "write": timings["write_seconds"],
            "waited": timings["write_wait_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="alternated runs of each path (medians)")
    parser.add_argument("--images", type=int, default=16, help="images in all (two prompts)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds-per-image", type=float, default=0.25, help="the simulated device's time per image")
    args = parser.parse_args()

    seeds = max(1, args.images // len(PROMPTS))
    jobs = [(prompt, seed) for prompt in PROMPTS for seed in range(seeds)]
    batches = [jobs[i:i + args.batch] for i in range(0, len(jobs), args.batch)]
    device = args.seconds_per_image * len(jobs)
    results: dict[str, list[dict[str, float]]] = {"hand": [], "background": [], "sync": []}
    with tempfile.TemporaryDirectory(prefix="writer-overlap-") as tmp:
        work = Path(tmp)
        recipe = work / "overlap.toml"
        recipe.write_text(recipe_text(seeds, args.batch))
        env = environment(args.seconds_per_image, RECIPE_RUNNER_CACHE=str(work / "cache"))
        recipe_run(work, recipe, env)  # warm-up: builds the tiny pipeline into the cache
        for _ in range(args.runs):
            results["hand"].append(hand_loop(work, batches, env))
            results["background"].append(recipe_run(work, recipe, env))
            results["sync"].append(recipe_run(work, recipe, {**env, "RECIPE_RUNNER_SYNC_WRITES": "1"}))

    def median(path: str, key: str) -> float | None:
        values = [r[key] for r in results[path] if key in r]
        return statistics.median(values) if values else None

    hand = median("hand", "loop") or 1.0
    print(f"{len(jobs)} images of 1024x1024 in batches of {args.batch}, simulated device "
          f"{args.seconds_per_image} s/image ({device:.2f} s busy), {args.runs} alternated runs, medians\n")
    header = f"{'path':<42}{'loop s':>8}{'ratio':>7}{'device s':>10}{'write s':>9}{'device waited s':>17}{'process s':>11}"
    print(header)
    print("-" * len(header))
    rows: list[tuple[str, str]] = [("hand-written loop, saves before next batch", "hand"),
                                   ("recipe-run, background writer (default)", "background"),
                                   ("recipe-run, RECIPE_RUNNER_SYNC_WRITES=1", "sync")]
    for label, path in rows:
        loop = median(path, "loop") or 0.0
        write, waited = median(path, "write"), median(path, "waited")
        cells: list[Any] = [f"{loop:8.2f}", f"{loop / hand:7.2f}", f"{device:10.2f}",
                            f"{write:9.2f}" if write is not None else f"{'-':>9}",
                            f"{waited:17.2f}" if waited is not None else f"{'-':>17}",
                            f"{median(path, 'process') or 0.0:11.2f}"]
        print(f"{label:<42}" + "".join(cells))


if __name__ == "__main__":
    main()
