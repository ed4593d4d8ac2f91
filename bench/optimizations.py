"""Time and peak memory of each optimization next to the plain run.

    python bench/optimizations.py            # CPU: the tiny pipelines (no download, no GPU)
    python bench/optimizations.py --gpu      # CUDA: real models (weights from the Hub cache)
    python bench/optimizations.py --only compile,cache --images 4 --steps 8

Each case runs ``recipe-run`` on one recipe in its own process, so peak memory is that case's
alone: the process's peak resident memory (``ru_maxrss``) on the CPU, ``torch.cuda.max_memory_allocated`` with
``--gpu``. Columns: load (model load plus every optimization's apply; compile's warm-up shown apart),
s/image (steady-state generation time per image, from the run's batch timings in .recipe-runner/run.json), peak memory,
and the largest pixel difference from the plain run (0 = identical images).

CPU mode runs the techniques this machine can run, on the tiny SD 1.5-layout pipeline (the cache
hooks on the tiny CogView4 one). ``--gpu`` needs a CUDA GPU and the models' weights (downloaded
on first use, or already in the Hugging Face cache) and adds the GPU-only techniques (xformers,
offload, bitsandbytes quantization); override the models with ``--unet-model`` and
``--transformer-model``. Numbers depend on the machine: rerun on yours.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# name -> (pipeline family, [optimizations] lines)
CPU_CASES = {
    "plain": ("unet", ""),
    "attention_slicing": ("unet", 'attention_slicing = { slice_size = "max" }'),
    "vae_slicing": ("unet", "vae_slicing = true"),
    "vae_tiling": ("unet", "vae_tiling = true"),
    "channels_last": ("unet", "channels_last = true"),
    "fuse_qkv": ("unet", "fuse_qkv = true"),
    "compile (regional)": ("unet", "compile = { regional = true }"),
    "compile": ("unet", "compile = true"),
    "lora": ("unet", None),  # filled in with a generated LoRA
    "plain (transformer)": ("transformer", ""),
    "cache first_block": ("transformer", 'cache = { type = "first_block", threshold = 0.2 }'),
    "cache taylorseer": ("transformer", 'cache = { type = "taylorseer", cache_interval = 2, disable_cache_before_step = 1, '
                                        'cache_identifiers = ["^transformer_blocks\\\\.\\\\d+\\\\.attn1$"] }'),
    "cache pyramid_attention_broadcast": ("transformer", 'cache = { type = "pyramid_attention_broadcast" }'),
    "cache faster": ("transformer", 'cache = { type = "faster" }'),
}
GPU_CASES = {
    **{k: v for k, v in CPU_CASES.items() if k != "lora" and not k.startswith("cache taylorseer")},
    "cache taylorseer": ("transformer", 'cache = { type = "taylorseer" }'),
    "xformers": ("unet", "xformers = true"),
    "offload model": ("unet", 'offload = { strategy = "model" }'),
    "offload sequential": ("unet", 'offload = { strategy = "sequential" }'),
    "offload group": ("unet", 'offload = { strategy = "group", offload_type = "leaf_level", use_stream = true }'),
    "quantization bnb 4-bit": ("transformer", 'quantization = { backend = "bitsandbytes_4bit" }'),
    "quantization torchao int8wo": ("transformer", 'quantization = { backend = "torchao", quant_type = "int8wo" }'),
}

RECIPE = """
name = "{name}"
[model]
id = "{model}"
device = "{device}"
[params]
num_inference_steps = {steps}
guidance_scale = {guidance}
height = {size}
width = {size}
[matrix]
prompts = ["portrait photo of a old warrior chief", "a cat on a roof", "pixel-art coffee shop", "a lighthouse at dusk"]
seeds = {images}
mode = "product"
[run]
batch_size = {batch}
[output]
grid = false
"""


def one(recipe: Path, out: Path, gpu: bool) -> dict:
    """In the child: run one recipe, report timings (and CUDA peak memory) as JSON."""
    from diffusers import CogView4Pipeline, StableDiffusionPipeline  # noqa: F401

    from recipe_runner.cli.main import main

    code = main([str(recipe), "--out", str(out), "--no-progress"])
    result = {"code": code}
    if code == 0:
        manifest = json.loads(next(out.glob("*/manifest.json")).read_text())
        local = json.loads((out / manifest["recipe"]["name"] / ".recipe-runner" / "run.json").read_text())
        timings = local["timings"]
        batches = timings["batches"]
        images = sum(b["size"] for b in batches)
        result.update(load=timings["load_seconds"], per_image=sum(b["seconds"] for b in batches) / images,
                      warmup=local.get("optimizations", {}).get("compile", {}).get("warmup_seconds"),
                      files=[str(out / manifest["recipe"]["name"] / i["file"]) for i in manifest["images"]])
    if gpu:
        import torch

        result["cuda_peak"] = torch.cuda.max_memory_allocated()
    import resource

    result["rss_peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return result


def run_case(name: str, recipe: Path, out: Path, gpu: bool) -> dict:
    """Run one case in a child process of its own: its peak memory is that case's alone."""
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    child = subprocess.Popen([sys.executable, __file__, "--child", str(recipe), str(out)] + (["--gpu"] if gpu else []),
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = child.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"code": child.returncode, "error": stderr.strip()[-300:]}
    if result.get("code"):
        result["error"] = next((line for line in stderr.splitlines() if line.startswith("error:")), stderr.strip()[-300:])
    return result


def make_lora(folder: Path) -> Path:
    """A rank-4 random LoRA for the tiny sd15 UNet (as the test suite makes one)."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    from recipe_runner.plugins import tiny

    unet = UNet2DConditionModel.from_pretrained(tiny.ensure("sd15"), subfolder="unet", use_safetensors=True)
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True)
    return folder / "pytorch_lora_weights.safetensors"


def max_pixel_difference(a: list[str], b: list[str]) -> int | None:
    import numpy as np
    from PIL import Image

    if len(a) != len(b):
        return None
    worst = 0
    for x, y in zip(a, b):
        px = np.asarray(Image.open(x).convert("RGB")).astype(int)
        py = np.asarray(Image.open(y).convert("RGB")).astype(int)
        worst = max(worst, int(np.abs(px - py).max()))
    return worst


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="real models on CUDA, GPU-only techniques included")
    p.add_argument("--only", help="comma-separated case names (substring match)")
    p.add_argument("--images", type=int, default=2, help="seeds per prompt (default 2: 8 images)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=None, help="default: 4 on CPU, 20 with --gpu")
    p.add_argument("--unet-model", default="stable-diffusion-v1-5/stable-diffusion-v1-5")
    p.add_argument("--transformer-model", default="THUDM/CogView4-6B")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(one(Path(args.child[0]), Path(args.child[1]), args.gpu)))
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            print("--gpu needs a CUDA GPU; none is available here", file=sys.stderr)
            return 2
    cases = GPU_CASES if args.gpu else CPU_CASES
    if args.only:
        wanted = [w.strip() for w in args.only.split(",")]
        cases = {k: v for k, v in cases.items() if k.startswith("plain") or any(w in k for w in wanted)}
    steps = args.steps or (20 if args.gpu else 4)
    work = Path(tempfile.mkdtemp(prefix="bench-optimizations-"))
    rows, plain_files = [], {}
    print(f"{'optimization':36} {'load s':>8} {'warm-up s':>9} {'s/image':>8} {'peak MiB':>9} {'max px diff':>11}")
    for name, (family, table) in cases.items():
        if table is None:
            table = f'lora = {{ adapters = [{{ id = "{make_lora(work / "lora")}" }}] }}'
        model = (args.unet_model if family == "unet" else args.transformer_model) if args.gpu else \
            ("tiny:sd15" if family == "unet" else "tiny:cogview4")
        slug = "".join(c if c.isalnum() else "-" for c in name)
        recipe = work / f"{slug}.toml"
        recipe.write_text(RECIPE.format(name=slug, model=model, device="cuda" if args.gpu else "cpu", steps=steps,
                                        guidance=1.0 if family == "transformer" else 7.5,
                                        size=(512 if family == "unet" else 1024) if args.gpu else 64,
                                        images=args.images, batch=args.batch)
                          + (f"[optimizations]\n{table}\n" if table else ""))
        result = run_case(name, recipe, work / "out" / slug, args.gpu)
        if result.get("code"):
            print(f"{name:36} {result.get('error', 'failed')}")
            continue
        if name.startswith("plain"):
            plain_files[family] = result["files"]
        peak = result["cuda_peak"] / 2**20 if args.gpu else (result["rss_peak"] or 0) / 1024
        diff = max_pixel_difference(plain_files.get(family, []), result["files"])
        warm = f"{result['warmup']:.2f}" if result.get("warmup") is not None else "-"
        print(f"{name:36} {result['load']:8.2f} {warm:>9} {result['per_image']:8.4f} {peak:9.0f} {diff!s:>11}",
              flush=True)
        rows.append({"name": name, **result})
    (work / "results.json").write_text(json.dumps(rows, indent=1))
    print(f"\n{'cuda.max_memory_allocated' if args.gpu else 'peak RSS of the run process'}; details: {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
