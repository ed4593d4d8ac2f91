"""A sweep over models x VAEs x LoRA adapter sets, as one recipe against hand-written diffusers scripts.

    python bench/axes.py               # tiny pipelines on the CPU, 3 alternated runs of each
    python bench/axes.py --runs 5

The sweep: 2 models x 2 VAEs ("default", another) x 3 adapter sets (none, A, B) x 2 seeds = 24
images, 8 denoising steps, batch 2. Three ways to run it, each a whole process, medians:

- recipe-run with `[matrix.axes] model / components.vae / lora`: each model loaded once, the VAE
  swapped and the adapters switched in place;
- a hand-written script that loads a pipeline per combination (what a loop over `from_pretrained`
  does): 12 loads;
- a careful hand-written script doing what recipe-run does: each model loaded once, `pipe.vae`
  assigned, adapters loaded once and activated with `set_adapters` / `disable_lora`.

The table shows wall time and loads: the point is that the recipe costs what the careful script
costs, not what the naive one does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from overhead import table  # noqa: E402

STEPS, SEEDS, BATCH = 8, [0, 1], 2
PROMPT = "portrait photo of a old warrior chief"

HAND_WRITTEN = r'''
import sys, torch
from diffusers import AutoencoderKL, StableDiffusionPipeline
models, vaes, loras, careful = sys.argv[1].split(","), sys.argv[2].split(","), sys.argv[3].split(","), sys.argv[4] == "1"
steps, seeds, batch, prompt = int(sys.argv[5]), [0, 1], 2, sys.argv[6]
loads = 0

def generate(pipe):
    for i in range(0, len(seeds), batch):
        chunk = seeds[i:i + batch]
        gens = [torch.Generator("cpu").manual_seed(s) for s in chunk]
        pipe([prompt] * len(chunk), num_inference_steps=steps, generator=gens).images

for model in models:
    if careful:
        pipe = StableDiffusionPipeline.from_pretrained(model, dtype=torch.float32, use_safetensors=True)
        pipe.set_progress_bar_config(disable=True)
        loads += 1
        vae_modules, loaded = {"default": pipe.vae}, set()
    for vae in vaes:
        for lora in loras:
            if not careful:
                kwargs = {} if vae == "default" else {"vae": AutoencoderKL.from_pretrained(vae, dtype=torch.float32)}
                pipe = StableDiffusionPipeline.from_pretrained(model, dtype=torch.float32, use_safetensors=True, **kwargs)
                pipe.set_progress_bar_config(disable=True)
                loads += 1
                if lora != "none":
                    pipe.load_lora_weights(lora, adapter_name="a")
            else:
                if vae not in vae_modules:
                    vae_modules[vae] = AutoencoderKL.from_pretrained(vae, dtype=torch.float32)
                pipe.vae = vae_modules[vae]
                if lora == "none":
                    if loaded:
                        pipe.disable_lora()
                else:
                    name = "a" if lora == loras[1] else "b"
                    if name not in loaded:
                        pipe.load_lora_weights(lora, adapter_name=name)
                        loaded.add(name)
                    pipe.enable_lora()
                    pipe.set_adapters([name])
            generate(pipe)
print("loads", loads)
'''


def make_inputs(work: Path) -> tuple[list[str], list[str], list[str]]:
    """Two tiny SD-1.5 models (built from different seeds), another VAE, two random LoRAs."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    from recipe_runner.plugins import tiny

    first = tiny.ensure("sd15")
    second = tiny.build("sd15", work / "model-b", seed=100)
    vae = tiny.build_tiny_vae(work / "vae-b")
    loras = []
    for seed in (0, 1):
        unet = UNet2DConditionModel.from_pretrained(first, subfolder="unet", use_safetensors=True)
        torch.manual_seed(seed)
        unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        folder = work / f"lora-{seed}"
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True)
        loras.append(str(folder / "pytorch_lora_weights.safetensors"))
    return [str(first), str(second)], ["default", str(vae)], ["none", *loras]


def timed(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} failed:\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout + proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = dict(os.environ, RECIPE_RUNNER_CACHE=str(work / "cache"), PYTHONPATH=str(REPO),
                   DIFFUSERS_VERBOSITY="error", TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1")
        os.environ["RECIPE_RUNNER_CACHE"] = env["RECIPE_RUNNER_CACHE"]
        models, vaes, loras = make_inputs(work)
        lora_values = ", ".join('"none"' if v == "none" else f"{{ id = {json.dumps(v)} }}" for v in loras)
        recipe = work / "sweep.toml"
        recipe.write_text(f"""
name = "sweep"
[model]
id = {json.dumps(models[0])}
device = "cpu"
[params]
num_inference_steps = {STEPS}
[matrix]
prompts = [{json.dumps(PROMPT)}]
seeds = {SEEDS}
[matrix.axes]
model = [{", ".join(json.dumps(m) for m in models)}]
components.vae = [{", ".join(json.dumps(v) for v in vaes)}]
lora = [{lora_values}]
[run]
batch_size = {BATCH}
""")
        script = work / "hand_written.py"
        script.write_text(HAND_WRITTEN)
        hand = [str(script), ",".join(models), ",".join(vaes), ",".join(loras)]
        ways = {
            "recipe-run (axes)": lambda: ["-m", "recipe_runner", str(recipe), "--out", str(work / "out"), "--force",
                                          "--no-progress"],
            "hand-written, a load per combination": lambda: [*hand, "0", str(STEPS), PROMPT],
            "hand-written, careful (load once, swap)": lambda: [*hand, "1", str(STEPS), PROMPT],
        }
        times: dict[str, list[float]] = {name: [] for name in ways}
        loads: dict[str, str] = {}
        for _ in range(runs):
            for name, args in ways.items():
                seconds, output = timed(args(), env)
                times[name].append(seconds)
                if name.startswith("recipe-run"):
                    loads[name] = str(output.count("sweep: loading "))
                else:
                    loads[name] = output.split("loads", 1)[1].split()[0]
    rows = [(name, f"{statistics.median(t):6.2f} s   {loads[name]:>2} loads") for name, t in times.items()]
    print(table(f"24 images: 2 models x 2 VAEs x 3 LoRA sets x 2 seeds, {STEPS} steps, batch {BATCH} "
                f"(medians of {runs}, whole processes)", rows))


if __name__ == "__main__":
    main()
