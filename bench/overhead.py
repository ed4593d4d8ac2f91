"""Does recipe-run add anything to diffusers' own time? Prints a table.

    python bench/overhead.py              # tiny pipeline on this machine (CPU is fine)
    python bench/overhead.py --runs 9     # more alternated runs
    python bench/overhead.py --gpu        # also the seed docs' real models, when a GPU and weights are present

1. Whole-process time of `recipe-run` on a recipe against a hand-written diffusers script that does
   the same jobs (same model, scheduler, steps, batches, one generator per image, PNGs written),
   alternated run by run, medians and the ratio (target: <= 1.05). recipe-run ends with
   gc.freeze(), which skips the interpreter's final garbage collection over torch's and diffusers'
   objects (about 1 s); so the table also times the hand-written script with that same last line,
   and that second ratio is what recipe-run's own work costs.
2. `--dry-run` latency for every recipe in recipes/ and for a 100,000-job matrix (targets: 0.5 s, 2 s).
3. With --gpu: s/image, images/s and peak memory of each optimization set on the seed docs' models.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["portrait photo of a old warrior chief", "a cat basking in the sun on a roof in Turkey"]
STEPS = 20
BATCH = 4
WORKLOADS = (4, 16)  # seeds per prompt: 8 and 32 images


def recipe_text(seeds: int) -> str:
    return f"""
name = "overhead"
[model]
id = "tiny:sd15"
device = "cpu"
[scheduler]
name = "DPMSolverMultistepScheduler"
[params]
num_inference_steps = {STEPS}
[matrix]
prompts = {PROMPTS!r}
seeds = {seeds}
[run]
batch_size = {BATCH}
""".replace("'", '"')


def hand_text(seeds: int, freeze_at_exit: bool = False) -> str:
    """The same jobs as diffusers' docs write them: one generator per image, batches of BATCH."""
    ending = "import gc\ngc.freeze()\n" if freeze_at_exit else ""
    return f"""
import sys, torch
from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler
from recipe_runner.plugins import tiny
out = sys.argv[1]
pipeline = DiffusionPipeline.from_pretrained(tiny.ensure("sd15"), dtype=torch.float32, use_safetensors=True)
pipeline.scheduler = DPMSolverMultistepScheduler.from_config(pipeline.scheduler.config)
pipeline.set_progress_bar_config(disable=True)
pipeline = pipeline.to("cpu")
for prompt in {PROMPTS!r}:
    for start in range(0, {seeds}, {BATCH}):
        seeds = range(start, min(start + {BATCH}, {seeds}))
        generator = [torch.Generator("cpu").manual_seed(i) for i in seeds]
        images = pipeline(prompt=len(generator) * [prompt], generator=generator, num_inference_steps={STEPS}).images
        for i, image in zip(seeds, images):
            image.save(f"{{out}}/{{prompt[:20]}}-{{i}}.png")
""" + ending


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return seconds


def overhead(runs: int, seeds: int, env: dict[str, str], work: Path) -> list[tuple[str, str]]:
    work = work / f"seeds-{seeds}"
    (work / "hand-out").mkdir(parents=True)
    recipe = work / "overhead.toml"
    recipe.write_text(recipe_text(seeds))
    hand, frozen = work / "hand.py", work / "hand_freeze.py"
    hand.write_text(hand_text(seeds))
    frozen.write_text(hand_text(seeds, freeze_at_exit=True))
    hand_cmd = [sys.executable, str(hand), str(work / "hand-out")]
    frozen_cmd = [sys.executable, str(frozen), str(work / "hand-out")]

    def runner_cmd(run: int) -> list[str]:  # a fresh folder each time: a re-run would resume, not redo
        return [sys.executable, "-m", "recipe_runner", str(recipe), "--out", str(work / f"runner-out-{run}")]

    timed(runner_cmd(-1), env)  # warm the tiny-pipeline cache and the OS file cache
    timed(hand_cmd, env)
    ours, theirs, theirs_frozen = [], [], []
    for run in range(runs):  # alternated, so drift in machine load hits all alike
        ours.append(timed(runner_cmd(run), env))
        theirs.append(timed(hand_cmd, env))
        theirs_frozen.append(timed(frozen_cmd, env))
    m_ours, m_theirs, m_frozen = (statistics.median(t) for t in (ours, theirs, theirs_frozen))
    images = len(PROMPTS) * seeds

    def runs_text(times: list[float]) -> str:
        return f"{statistics.median(times):.2f} s median  (runs: {', '.join(f'{t:.2f}' for t in times)})"

    return [
        (f"{images} images: jobs", f"{STEPS} steps, batch {BATCH}, tiny SD-1.5 layout, CPU, threads {env.get('OMP_NUM_THREADS', 'default')}"),
        (f"{images} images: hand-written diffusers", runs_text(theirs)),
        (f"{images} images: hand-written + gc.freeze() at exit", runs_text(theirs_frozen)),
        (f"{images} images: recipe-run", runs_text(ours)),
        (f"{images} images: ratio recipe-run / hand-written", f"{m_ours / m_theirs:.3f}  (target <= 1.05); difference {m_ours - m_theirs:+.2f} s"),
        (f"{images} images: ratio, both ending with gc.freeze()", f"{m_ours / m_frozen:.3f}  (recipe-run's own work); difference {m_ours - m_frozen:+.2f} s"),
    ]


def dry_runs(env: dict[str, str], work: Path) -> list[tuple[str, str]]:
    rows = []
    for recipe in sorted((REPO / "recipes").glob("*.toml")):
        seconds = min(timed([sys.executable, "-m", "recipe_runner", "--dry-run", str(recipe)], env) for _ in range(3))
        rows.append((f"--dry-run {recipe.relative_to(REPO)}", f"{seconds:.3f} s  (target < 0.5 s)"))
    big = work / "big.toml"
    who = ", ".join(f'"w{i}"' for i in range(100))
    where = ", ".join(f'"p{i}"' for i in range(10))
    big.write_text(textwrap.dedent(f"""
        [model]
        id = "tiny:sd15"
        [matrix]
        prompts = ["a photo of {{who}} in {{where}}"]
        seeds = 100
        [matrix.vars]
        who = [{who}]
        where = [{where}]
    """))
    seconds = min(timed([sys.executable, "-m", "recipe_runner", "--dry-run", str(big)], env) for _ in range(3))
    rows.append(("--dry-run of a 100,000-job matrix", f"{seconds:.3f} s  (target < 2 s)"))
    return rows


GPU_SETS = {
    "plain fp16": {},
    "attention_slicing": {"attention_slicing": True},
    "vae_tiling": {"vae_tiling": True},
    "compile": {"compile": True},
    "offload model": {"offload": {"strategy": "model"}},
}
GPU_MODELS = {
    "SD 1.5 (warrior)": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "portrait photo of a old warrior chief", 512),
    "SDXL (batch guide)": ("stabilityai/stable-diffusion-xl-base-1.0", "cinematic photo of a sunset over mountains", 1024),
}


def gpu(env: dict[str, str], work: Path) -> list[tuple[str, str]]:
    """Each optimization set on real models; needs a GPU and the weights (cached or downloadable)."""
    import json

    import torch

    if not torch.cuda.is_available():
        return [("GPU section", "skipped: no CUDA device on this machine")]
    rows = []
    for label, (model_id, prompt, size) in GPU_MODELS.items():
        for set_name, optimizations in GPU_SETS.items():
            name = f"gpu-{len(rows)}"
            opts = "\n".join(f"{k} = {json.dumps(v) if isinstance(v, bool) else '{ ' + ', '.join(f'{a} = {json.dumps(b)}' for a, b in v.items()) + ' }'}"
                             for k, v in optimizations.items())
            recipe = work / f"{name}.toml"
            recipe.write_text(f'name = "{name}"\n[model]\nid = "{model_id}"\ndtype = "float16"\n'
                              f'[optimizations]\n{opts}\n[params]\nnum_inference_steps = 20\nheight = {size}\nwidth = {size}\n'
                              f'[matrix]\nprompts = ["{prompt}"]\nseeds = 8\n[run]\nbatch_size = 4\n'.replace("true", "true"))
            proc = subprocess.run([sys.executable, "-m", "recipe_runner", str(recipe), "--out", str(work / "gpu")],
                                  cwd=REPO, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                rows.append((f"{label}, {set_name}", f"failed: {proc.stderr.strip().splitlines()[-1][:120]}"))
                continue
            manifest = json.loads((work / "gpu" / name / "manifest.json").read_text())
            seconds = manifest["timings"]["generate_seconds"]
            summary = proc.stdout.strip().splitlines()[-1]
            peak = summary.split(", ")[-1].split(" -> ")[0]
            rows.append((f"{label}, {set_name}", f"{seconds / 8:.2f} s/image, {8 / seconds:.2f} images/s, {peak}"))
    return rows


def table(title: str, rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    lines = [title, "-" * len(title)] + [f"{k.ljust(width)}  {v}" for k, v in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="alternated runs of each (default 7)")
    parser.add_argument("--gpu", action="store_true", help="also run the GPU section (real models)")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # recipe-run keeps diffusers / transformers quiet (no load-time progress bars or notes); give the
    # hand-written script the same, so that the comparison is of the work, not of terminal chatter.
    env.update(DIFFUSERS_VERBOSITY="error", TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1")
    # Installed packages come with compiled bytecode (pip compiles them); an editable checkout gets it on
    # its first run, unless PYTHONDONTWRITEBYTECODE is set (as on some CI machines): then every start
    # would recompile runner/ and plugins/ (about 50 ms). Compile them, so that both sides load alike.
    subprocess.run([sys.executable, "-m", "compileall", "-q", "runner", "plugins"], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env.setdefault("RECIPE_RUNNER_CACHE", str(Path.home() / ".cache" / "recipe-runner"))
        rows = [row for seeds in WORKLOADS for row in overhead(args.runs, seeds, env, work)]
        print(table("recipe-run against hand-written diffusers (whole process, alternated runs)", rows))
        print()
        print(table("dry-run latency (best of 3, whole process)", dry_runs(env, work)))
        if args.gpu:
            print()
            print(table("GPU: the seed docs' models, each optimization set", gpu(env, work)))


if __name__ == "__main__":
    main()
