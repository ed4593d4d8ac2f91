"""The project's own test helpers. The shared fixtures (``recipe_runner_cli``,
``recipe_runner_write_recipe``, ``recipe_runner_register_plugin``, the tiny pipelines) live in
:mod:`recipe_runner.testing`, the pytest plugin recipe-runner installs for plugin authors too; loaded
here by name for an uninstalled checkout. When recipe-runner is installed, its ``pytest11`` entry
point is named ``recipe_runner.testing`` as well, so pytest sees the plugin already registered and
does not load it twice.

What this repository's own suite sets for itself (the installed plugin changes nothing on its own):
one CPU thread per test process and every subprocess it starts (tests stay fast when several run
side by side on a small machine, and pixels do not depend on the machine's core count), and one
temporary recipe-runner cache for the whole session (``recipe_runner_cache``), subprocesses included.

The suite is laid out by stage, as runner/ is: recipe/ (loading, the bad-recipe corpus), plan/,
pipelines/, records/, running/, views/, plugins/, cli/; hostile/ is the hostile-folder corpus
(planted records, FIFOs, links, oversized files, signals and kills: nothing outside a run's folder
changes, nothing hangs); at the top, the tests of the whole (architecture, docs, golden pixels).
This file holds what several share (the tiny recipe text, the long-run recipe, the shared matrix
run, subprocess and Chromium helpers, ``tree_digest``).
Tests that take more than a few seconds are marked ``slow``: ``python -m pytest -m "not slow"`` is
the fast tier, ``python -m pytest`` (CI) runs everything.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recipe_runner import hookimpl
from recipe_runner.plugin_api import manager as plugins

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before any test imports torch
# Nothing in this suite may reach the Hugging Face Hub: a test that means to exercise the Hub path
# points HF_ENDPOINT at a closed local port itself (and sets HF_HUB_OFFLINE=0 for that call).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# No model alias map of the machine running the suite (~/.config/recipe-runner/models.toml): the
# tests that use one write their own.
os.environ["RECIPE_RUNNER_MODELS"] = str(Path(__file__).resolve().parent / "no-model-aliases.toml")

pytest_plugins = ["recipe_runner.testing"]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _session_cache(recipe_runner_cache: Path) -> Path:
    """Every test of this suite, and every subprocess it starts, uses the session's tiny cache."""
    return recipe_runner_cache


def tiny_recipe(*prompts: str, seeds: int | list[int] | str | None = None, steps: int = 2, model_id: str = "tiny:sd15",
                model: str = "", params: str = "", matrix: str = "", tables: str = "") -> str:
    """The suite's recipe text: the tiny SD-1.5-layout pipeline on the CPU, ``steps`` inference
    steps, ``prompts`` (default one, "a cat"), ``seeds`` (a count, a list, or TOML text such as a
    ``"{seeds}"`` placeholder; left out by default: one image per prompt, seed 0). ``model``,
    ``params`` and ``matrix`` are more lines for those tables; ``tables`` is TOML after them
    (``[run]``, ``[output]``, ``[optimizations]``, ...). Nothing else: what a test varies is in its call.
    The text starts at line 1 with ``[model]``, ``id`` is on line 2."""
    lines = ["[model]", f'id = "{model_id}"', 'device = "cpu"', model, "[params]", f"num_inference_steps = {steps}", params,
             "[matrix]", f"prompts = {json.dumps(list(prompts or ['a cat']))}"]
    if seeds is not None:
        lines.append(f"seeds = {seeds if isinstance(seeds, str) else json.dumps(seeds)}")
    lines += [matrix, tables]
    return "".join(line.strip("\n") + "\n" for line in lines if line.strip())


TINY_RECIPE = tiny_recipe()

# Three prompts by two seeds: with {batch_size} 2, three batches of two (the resume and writing tests).
LONG_RUN = tiny_recipe("a red fox", "a blue house", "a green tree", seeds=[0, 1], params="guidance_scale = 7.5",
                       tables="[run]\nbatch_size = {batch_size}")


def manifest_of(folder: Path) -> dict:
    """A run folder's manifest.json, parsed."""
    return json.loads((folder / "manifest.json").read_text())


def local_of(folder: Path) -> dict:
    """A run folder's machine-local record (.recipe-runner/run.json: timings, seconds, this machine's paths)."""
    return json.loads((folder / ".recipe-runner" / "run.json").read_text())


def run_record(folder: Path) -> dict:
    """manifest.json with its machine-local record folded back in (timings, each image's seconds)."""
    from recipe_runner.records.manifest import joined

    return joined(manifest_of(folder), local_of(folder))


VARS_AXES = '''
[model]
id = "tiny:sd15"
device = "cpu"
[params]
num_inference_steps = 2
negative_prompt = "blurry {who}"
height = 64
width = 64
[matrix]
prompts = ["portrait photo of {who}"]
seeds = [0, 1]
[matrix.vars]
who = ["an old chief", "a young chief"]
[matrix.axes]
guidance_scale = [6.0, 8.0]
[run]
batch_size = 4
'''


@pytest.fixture(scope="session")
def matrix_run(tmp_path_factory, recipe_runner_cache):
    """One run of ``VARS_AXES`` (2 vars x 2 guidance scales x 2 seeds), shared by the tests that read
    its outputs: its records (plan, records), grid.png and index.html (views)."""
    from recipe_runner.cli.main import main

    folder = tmp_path_factory.mktemp("matrix")
    recipe = folder / "va.toml"
    recipe.write_text(VARS_AXES)
    assert main([str(recipe), "--out", str(folder / "out"), "--no-progress"]) == 0
    return folder / "out" / "va"


# Appended to a gallery page before </body>: counts its images and those that loaded (headless Chromium).
LOAD_CHECK = """<script>
window.addEventListener("load", function () {
  var imgs = Array.from(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute("data-images", imgs.length);
  document.body.setAttribute("data-loaded", ok.length);
});
</script></body>"""


def run_subprocess(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600):
    """Run ``python -m recipe_runner ARGS`` in a fresh process; returns a :class:`recipe_runner.testing.Result`."""
    from recipe_runner.testing import Result  # not at import: pytest loads (and rewrites) it as a plugin
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "recipe_runner", *map(str, args)], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def default_sigint() -> None:
    """``preexec_fn`` of every subprocess a test interrupts with SIGINT: the signal's default action
    again in the child. A non-interactive shell starts a background job (``python -m pytest ... &``)
    with SIGINT ignored, an ignored signal stays ignored across ``exec``, and a child that inherits
    it never sees the test's SIGINT (Python installs its KeyboardInterrupt handler only over the
    default action)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def python_sigint_handler():
    """Python's own SIGINT handler (raise KeyboardInterrupt) for one test, the one it finds restored
    after. A test of what a handler puts back needs a known one to start from: pytest started as a
    background job of a shell finds SIGINT ignored instead."""
    found = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield signal.default_int_handler
    signal.signal(signal.SIGINT, found)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--allow-file-access-from-files"]
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")


def chromium(profile: Path, *args: str) -> str:
    """Headless Chromium with a fresh profile folder and no background networking; its stdout."""
    assert CHROMIUM is not None
    proc = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).copy()


def images_in_matrix_order(folder: Path) -> list[Path]:
    """The images of a run folder in the order of its manifest's jobs (file names say what a job
    is, so sorting them gives no matrix order)."""
    import json

    manifest = json.loads((folder / "manifest.json").read_text())
    return [folder / record["file"] for record in manifest["images"]]


def tree_digest(root: Path, *, skip: Path | None = None) -> dict[str, str]:
    """Every entry below ``root`` (links not followed, FIFOs and devices never opened): regular files
    by SHA-256, links by their target, other kinds by their type. ``skip`` (a folder inside ``root``,
    usually the test's output root) is left out. Compare before and after a hostile run to show that
    nothing outside the run's folder was read into, written, moved or replaced."""
    import hashlib
    import stat as st

    digest: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        info = path.lstat()
        rel = str(path.relative_to(root))
        if st.S_ISLNK(info.st_mode):
            digest[rel] = "link:" + os.readlink(path)
        elif st.S_ISREG(info.st_mode):
            digest[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif st.S_ISDIR(info.st_mode):
            digest[rel] = "dir"
        else:
            digest[rel] = f"special:{st.S_IFMT(info.st_mode):o}"
    return digest


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".png", ".webp", ".jpg") and p.name != "grid.png")


@pytest.fixture(scope="session")
def tiny_lora(recipe_runner_tiny_sd15, tmp_path_factory):
    """A rank-4 LoRA on the tiny sd15 UNet's attention, random (non-zero) weights, made with peft
    and saved the way diffusers' training scripts save one."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(recipe_runner_tiny_sd15, subfolder="unet", use_safetensors=True)
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    folder = tmp_path_factory.mktemp("lora")
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True)
    return folder / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="session")
def tiny_sd15_other(recipe_runner_cache, tmp_path_factory):
    """A second tiny SD-1.5-layout model, built from other seeds (a model axis needs two models
    whose images differ)."""
    from recipe_runner.plugins import tiny

    return tiny.build("sd15", tmp_path_factory.mktemp("models") / "tiny-sd15-other", seed=100)


class BatchCounter:
    """A test plugin: which jobs each pipeline call generated (``calls``, one list of job indexes
    per batch)."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    @hookimpl
    def after_batch(self, pipe, batch, images):
        self.calls.append([j.index for j in batch.jobs])


@pytest.fixture
def counter():
    """A :class:`BatchCounter` registered for every run of the test."""
    plugin = BatchCounter()
    plugins.register(plugin, "counter")
    yield plugin
    plugins.unregister(plugin)


class LoadCounter:
    """A test plugin: how many pipelines were built (the ``pipeline_ready`` hook)."""

    def __init__(self) -> None:
        self.count = 0

    @hookimpl
    def pipeline_ready(self, pipe, recipe, context):
        self.count += 1


@pytest.fixture
def loads():
    """A :class:`LoadCounter` registered for every run of the test."""
    plugin = LoadCounter()
    plugins.register(plugin, "load-counter")
    yield plugin
    plugins.unregister(plugin)
