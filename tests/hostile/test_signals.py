"""Issue 19, records and signals, plugins and errors: SIGTERM, Ctrl-C at start-up, hooks that lie
or raise, CPU out-of-memory, failures refused up front instead of after the model loaded, pickled
LoRA weights. Each test is bounded in time and checks nothing outside its output root changed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recipe_runner import hookimpl
from recipe_runner.records.journal import JOURNAL_NAME
from tests.conftest import LONG_RUN, REPO, image_files, tree_digest

RECIPE = LONG_RUN.format(batch_size=2)  # three prompts by two seeds, three batches of two


def child_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{tmp_path}", **extra)


def interrupt_lines(err: str) -> list[str]:
    """stderr without the run's own status lines ("NAME: loading MODEL ..."), which may come first."""
    return [line for line in err.strip().splitlines() if ": loading " not in line]


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


# --- 11: SIGTERM is a first Ctrl-C -------------------------------------------------------------------

PAUSE_AT_BATCH_1 = '''
import os, pathlib, time
from recipe_runner import hookimpl

@hookimpl
def before_batch(pipe, batch, call_kwargs):
    """Batch 0 goes through; at batch 1 tell the test, then wait to be signalled."""
    if batch.index == 1:
        pathlib.Path(os.environ["PAUSE_MARK"]).write_text("at batch 1")
        time.sleep(60)
'''


def wait_for(path: Path, proc: subprocess.Popen, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never reached batch 1"
        time.sleep(0.02)


@pytest.mark.slow
def test_sigterm_finishes_the_writes_folds_the_journal_and_exits_143(recipe_runner_tiny_sd15, tmp_path):
    recipe = tmp_path / "longrun.toml"
    recipe.write_text(RECIPE)
    (tmp_path / "pause.py").write_text(PAUSE_AT_BATCH_1)
    before = tree_digest(tmp_path, skip=tmp_path / "out")
    proc = subprocess.Popen([sys.executable, "-m", "recipe_runner", str(recipe), "--out", str(tmp_path / "out"), "-p", "pause"],
                            cwd=tmp_path, env=child_env(tmp_path, PAUSE_MARK=str(tmp_path / "mark")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(tmp_path / "mark", proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "terminated: 2 image(s) written by this run" in err and "Traceback" not in err
    assert [line for line in err.splitlines() if not line.startswith("longrun: loading ")] == [
        "terminated: 2 image(s) written by this run, every one complete and listed in its manifest; "
        "run the same command again to finish"]
    folder = tmp_path / "out" / "longrun"
    manifest = manifest_of(folder)  # the journal is folded: the manifest says what is on disk
    assert [r["status"] for r in manifest["images"]] == ["done"] * 2 + ["pending"] * 4
    assert sorted(p.name for p in image_files(folder)) == sorted(r["file"] for r in manifest["images"][:2])
    assert not (folder / JOURNAL_NAME).exists()
    assert not [p.name for p in folder.iterdir() if ".tmp-" in p.name]
    (tmp_path / "mark").unlink()
    assert tree_digest(tmp_path, skip=tmp_path / "out") == before


def test_sigterm_is_handled_like_a_first_ctrl_c_in_process():
    from recipe_runner.base.interrupts import Terminated, critical, exit_code, graceful

    with graceful():
        reached = []
        with pytest.raises(Terminated) as caught:
            with critical():
                signal.raise_signal(signal.SIGTERM)
                reached.append("after SIGTERM")  # held like a first Ctrl-C: the section finishes
        assert reached == ["after SIGTERM"] and exit_code(caught.value) == 143
        with pytest.raises(Terminated):  # a second signal (even a Ctrl-C) stops at once, still "terminated"
            with critical():
                signal.raise_signal(signal.SIGINT)
                reached.append("never")
        assert reached == ["after SIGTERM"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert exit_code(KeyboardInterrupt()) == 130


# --- 18: Ctrl-C at any moment of start-up ------------------------------------------------------------

# The child says "ready" once the interpreter itself has started and found the package (site, the
# editable-install finder, runpy's module search: 30-60 ms on a loaded machine, before any line of
# recipe-runner can run; a Ctrl-C there gets Python's own traceback), then runs
# ``python -m recipe_runner`` exactly as the command line does.
LAUNCH = ("import os, runpy, sys, importlib.util; importlib.util.find_spec('recipe_runner.__main__'); "
          "os.write(1, b'ready\\n'); runpy.run_module('recipe_runner', run_name='__main__', alter_sys=True)")

SLOW_RECIPE = RECIPE.replace("num_inference_steps = 2", "num_inference_steps = 10")


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.01, 0.02, 0.03, 0.06, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5])
def test_ctrl_c_at_any_moment_of_start_up_exits_130_with_one_line(recipe_runner_tiny_sd15, tmp_path, delay):
    recipe = tmp_path / "startup.toml"
    recipe.write_text(SLOW_RECIPE)
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, str(recipe), "--out", str(tmp_path / "out")],
                            cwd=tmp_path, env=child_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    text = err.decode()
    assert proc.returncode == 130, text
    lines = interrupt_lines(text)
    assert len(lines) == 1 and lines[0].startswith("interrupted") and "Traceback" not in text, text
    folder = tmp_path / "out" / "startup"
    assert not folder.exists() or not [p.name for p in folder.iterdir() if ".tmp-" in p.name]


@pytest.mark.slow
def test_plain_command_interrupted_while_importing_diffusers_exits_130(recipe_runner_tiny_sd15, tmp_path):
    """``python -m recipe_runner`` as typed; the signal lands while torch/diffusers are importing."""
    recipe = tmp_path / "startup.toml"
    recipe.write_text(SLOW_RECIPE)
    for delay in (0.3, 0.6, 0.9):
        proc = subprocess.Popen([sys.executable, "-m", "recipe_runner", str(recipe), "--out", str(tmp_path / "out")],
                                cwd=tmp_path, env=child_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            time.sleep(delay)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 130, err
        lines = interrupt_lines(err)
        assert len(lines) == 1 and lines[0].startswith("interrupted") and "Traceback" not in err, err


INTERRUPT_ON_IMPORT = '''
import os, signal, sys

class InterruptOnImport:
    """Ctrl-C to this process the moment the module named by INTERRUPT_ON_IMPORT starts importing."""

    def find_spec(self, name, path=None, target=None):
        if name == os.environ["INTERRUPT_ON_IMPORT"]:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, InterruptOnImport())
'''


@pytest.mark.slow
@pytest.mark.parametrize("module", ["numpy.dtypes", "torch", "diffusers", "diffusers.pipelines"])
def test_ctrl_c_inside_an_import_exits_130_with_one_line(recipe_runner_tiny_sd15, tmp_path, module):
    """Deterministically inside the import (numpy.dtypes used to give "ImportError: cannot load
    module more than once per process", exit 1)."""
    recipe = tmp_path / "startup.toml"
    recipe.write_text(RECIPE)
    (tmp_path / "interrupt_on_import.py").write_text(INTERRUPT_ON_IMPORT)
    proc = subprocess.run([sys.executable, "-m", "recipe_runner", str(recipe), "--out", str(tmp_path / "out"),
                           "-p", "interrupt_on_import"], cwd=tmp_path, env=child_env(tmp_path, INTERRUPT_ON_IMPORT=module),
                          capture_output=True, text=True, timeout=120)
    lines = interrupt_lines(proc.stderr)
    assert proc.returncode == 130, proc.stderr
    assert lines == ["interrupted before any image was written: nothing to finish"], proc.stderr
    assert not (tmp_path / "out" / "startup").exists() or not image_files(tmp_path / "out" / "startup")


# --- 14: plugins that lie or raise -------------------------------------------------------------------

FOUR = RECIPE.replace('"a red fox", "a blue house", "a green tree"', '"a red fox", "a blue house"')  # 4 jobs, 2 batches


class EmptiesImages:
    @hookimpl
    def after_batch(self, pipe, batch, images):
        images.clear()


class Raises:
    def __init__(self, error: BaseException, hook: str = "before_batch"):
        self.error, self.hook = error, hook

    @hookimpl
    def before_batch(self, pipe, batch, call_kwargs):
        if self.hook == "before_batch":
            raise self.error

    @hookimpl
    def run_finished(self, recipe, output_dir, manifest):
        if self.hook == "run_finished":
            raise self.error


def test_an_after_batch_hook_that_empties_the_images_fails_naming_it(recipe_runner_cli, recipe_runner_write_recipe,
                                                                       recipe_runner_register_plugin, tmp_path):
    recipe_runner_register_plugin(EmptiesImages(), "emptier")
    recipe = recipe_runner_write_recipe(FOUR, "four.toml")
    before = tree_digest(tmp_path, skip=tmp_path / "out")
    result = recipe_runner_cli(recipe, "--out", tmp_path / "out")
    assert result.code == 1, result.err
    assert "after_batch left 0 image(s) for a batch of 2" in result.err
    assert "plugin 'emptier'" in result.err and "made" not in result.out
    folder = tmp_path / "out" / "four"
    assert image_files(folder) == []
    assert all(r["status"] == "pending" for r in manifest_of(folder)["images"])
    assert tree_digest(tmp_path, skip=tmp_path / "out") == before


@pytest.mark.parametrize("error, shown", [
    (SystemExit(0), "SystemExit: 0"),
    (SystemExit("bye"), "SystemExit: bye"),
    (KeyError("width"), "KeyError: 'width'"),
])
@pytest.mark.slow
@pytest.mark.parametrize("hook", ["before_batch", "run_finished"])
def test_an_exception_in_a_hook_exits_1_naming_the_plugin(recipe_runner_cli, recipe_runner_write_recipe,
                                                           recipe_runner_register_plugin, tmp_path, error, shown, hook):
    recipe_runner_register_plugin(Raises(error, hook), "raiser")
    result = recipe_runner_cli(recipe_runner_write_recipe(FOUR, "four.toml"), "--out", tmp_path / "out")
    assert result.code == 1, (result.out, result.err)
    assert f"error: plugin 'raiser' (registered; {__name__}) failed in its {hook} hook: {shown}" in result.err


@pytest.mark.slow
def test_an_entry_point_plugin_is_named_with_its_distribution_and_version(recipe_runner_tiny_sd15, tmp_path):
    site = tmp_path / "site"
    (site / "crashy-1.2.3.dist-info").mkdir(parents=True)
    (site / "crashy-1.2.3.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: crashy\nVersion: 1.2.3\n")
    (site / "crashy-1.2.3.dist-info" / "entry_points.txt").write_text("[recipe_runner]\ncrashy = crashy_plugin\n")
    (site / "crashy_plugin.py").write_text(
        "from recipe_runner import hookimpl\n\n"
        "@hookimpl\n"
        "def after_batch(pipe, batch, images):\n"
        "    raise KeyError('missing')\n")
    recipe = tmp_path / "four.toml"
    recipe.write_text(FOUR)
    proc = subprocess.run([sys.executable, "-m", "recipe_runner", str(recipe), "--out", str(tmp_path / "out")],
                          cwd=tmp_path, env=dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{site}"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert ("error: plugin 'crashy' (crashy 1.2.3; crashy_plugin) failed in its after_batch hook: KeyError: 'missing'"
            in proc.stderr)
    assert "Traceback" not in proc.stderr


class DeletesAnImage:
    """Removes batch 0's first image from disk when batch 1 starts (writes are synchronous here)."""

    @hookimpl
    def before_batch(self, pipe, batch, call_kwargs):
        if batch.index == 1:
            folder = Path(self.folder)
            first = json.loads((folder / "manifest.json").read_text())["images"][0]["file"]
            (folder / first).unlink()


def test_the_summary_counts_the_files_on_disk(recipe_runner_cli, recipe_runner_write_recipe, recipe_runner_register_plugin,
                                              tmp_path, monkeypatch):
    monkeypatch.setenv("RECIPE_RUNNER_SYNC_WRITES", "1")
    plugin = DeletesAnImage()
    plugin.folder = str(tmp_path / "out" / "four")
    recipe_runner_register_plugin(plugin, "deleter")
    result = recipe_runner_cli(recipe_runner_write_recipe(FOUR, "four.toml"), "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert "made 3 in" in result.out  # not the 4 the plan had
    assert len(image_files(tmp_path / "out" / "four")) == 3


# --- 15: the CPU allocator running out is out of memory ----------------------------------------------

CPU_OOM = ("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
           "allocate 4294967296 bytes. Error code 12 (Cannot allocate memory)")


class OutOfMemoryAbove2:
    def __init__(self, error: BaseException):
        self.error = error
        self.tried: list[int] = []

    @hookimpl
    def before_batch(self, pipe, batch, call_kwargs):
        self.tried.append(batch.size)
        if batch.size > 2:
            raise self.error


@pytest.mark.slow
@pytest.mark.parametrize("error", [RuntimeError(CPU_OOM), RuntimeError("DefaultCPUAllocator: not enough memory"),
                                   MemoryError()])
def test_a_cpu_allocator_failure_halves_the_batch(recipe_runner_cli, recipe_runner_write_recipe, recipe_runner_register_plugin,
                                                   tmp_path, error):
    plugin = recipe_runner_register_plugin(OutOfMemoryAbove2(error), "cpu-oom")
    result = recipe_runner_cli(recipe_runner_write_recipe(FOUR.replace("batch_size = 2", "batch_size = 4"), "four.toml"),
                               "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert plugin.tried == [4, 2, 2]
    assert "out of memory at batch size 4: retrying at 2" in result.err
    assert [r["batch_size"] for r in manifest_of(tmp_path / "out" / "four")["images"]] == [2, 2, 2, 2]


# --- 19: the pickle policy covers every weight file a recipe names -------------------------------------

LORA = RECIPE.replace("[run]", '''[optimizations.lora]
adapters = [{{ {adapter} }}]
[run]''').replace('"a red fox", "a blue house", "a green tree"', '"a red fox"').replace("seeds = [0, 1]", "seeds = 1")


@pytest.fixture(scope="module")
def pickled_loras(tiny_lora, tmp_path_factory):
    """The tiny LoRA as torch.save pickles: lora/x.bin, and lying/x.safetensors (a pickle by another name);
    evil/x.bin is a pickle that, loaded, would create the file PWNED beside it."""
    import pickle

    import torch
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("pickled-loras")
    for folder, name in (("lora", "x.bin"), ("lying", "x.safetensors")):
        (root / folder).mkdir()
        torch.save(load_file(tiny_lora), root / folder / name)

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {root / 'evil' / 'PWNED'}",))

    (root / "evil").mkdir()
    (root / "evil" / "x.bin").write_bytes(pickle.dumps({"weights": Evil()}))
    return root


@pytest.mark.parametrize("adapter, key", [
    ('id = "{root}/evil", weight_name = "x.bin"', "optimizations.lora.adapters.0.weight_name"),
    ('id = "{root}/evil/x.bin"', "optimizations.lora.adapters.0.id"),
    ('id = "{root}/lora", weight_name = "x.bin"', "optimizations.lora.adapters.0.weight_name"),
    ('id = "${{LORA_ROOT}}/evil/x.bin"', "optimizations.lora.adapters.0.id"),  # an id through a variable too
    ('id = "${{LORA_ROOT}}/evil"', "optimizations.lora.adapters.0.id"),  # a folder of pickles, checked by content
])
def test_a_pickled_lora_is_refused_before_anything_loads(recipe_runner_cli, recipe_runner_write_recipe, tmp_path,
                                                         pickled_loras, adapter, key, monkeypatch):
    monkeypatch.setenv("LORA_ROOT", str(pickled_loras))
    recipe = recipe_runner_write_recipe(LORA.format(adapter=adapter.format(root=pickled_loras)), "lora.toml")
    before = tree_digest(tmp_path, skip=tmp_path / "out")
    for mode in ("--dry-run", "--no-progress"):
        result = recipe_runner_cli(recipe, "--out", tmp_path / "out", mode)
        assert result.code == 2, result.err
        assert f"lora.toml:11: {key}: " in result.err and "only safetensors weights load" in result.err
        assert "is a pickled weights file" in result.err or "holds pickled weights only" in result.err
        assert "--allow-pickle" in result.err and "loading" not in result.err
    assert not (pickled_loras / "evil" / "PWNED").exists()
    assert not (tmp_path / "out").exists()
    assert tree_digest(tmp_path, skip=tmp_path / "out") == before


def test_a_pickle_by_another_name_is_refused_by_its_bytes(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, pickled_loras):
    import shutil

    shutil.copy(pickled_loras / "evil" / "x.bin", tmp_path / "innocent.weights")
    recipe = recipe_runner_write_recipe(LORA.format(adapter='id = "innocent.weights"'), "lora.toml")
    result = recipe_runner_cli(recipe, "--dry-run")
    assert result.code == 2, result.err
    assert (f"lora.toml:11: optimizations.lora.adapters.0.id: {tmp_path / 'innocent.weights'} holds pickled weights: "
            "only safetensors weights load") in result.err
    assert not (pickled_loras / "evil" / "PWNED").exists()


def test_a_pickle_named_safetensors_gets_a_clear_message_even_with_allow_pickle(recipe_runner_cli, recipe_runner_write_recipe,
                                                                                tmp_path, pickled_loras):
    recipe = recipe_runner_write_recipe(LORA.format(adapter=f'id = "{pickled_loras}/lying/x.safetensors"'), "lora.toml")
    for extra in ([], ["--allow-pickle"]):
        result = recipe_runner_cli(recipe, "--dry-run", *extra)
        assert result.code == 2, result.err
        assert "x.safetensors is named .safetensors but holds pickled weights" in result.err
        assert "SafetensorError" not in result.err and "header too large" not in result.err


@pytest.mark.slow
def test_allow_pickle_lets_a_trusted_pickled_lora_load(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, pickled_loras):
    for adapter in (f'id = "{pickled_loras}/lora", weight_name = "x.bin"', f'id = "{pickled_loras}/lora/x.bin"'):
        recipe = recipe_runner_write_recipe(LORA.format(adapter=adapter), "lora.toml")
        result = recipe_runner_cli(recipe, "--out", tmp_path / "out", "--allow-pickle", "--force")
        assert result.code == 0, result.err
        assert len(image_files(tmp_path / "out" / "lora")) == 1


# --- 16: refused up front (exit 2, before the model loads), not after it ---------------------------------

I2I = '''
[model]
id = "tiny:sd15"
device = "cpu"
task = "image-to-image"
[params]
num_inference_steps = 2
strength = 0.5
[matrix]
prompts = ["a cat"]
images = [{images}]
'''


def assert_refused_before_loading(result, *texts: str) -> None:
    assert result.code == 2, (result.out, result.err)
    for text in texts:
        assert text in result.err, result.err
    assert "loading" not in result.err and "Traceback" not in result.err


@pytest.mark.parametrize("size", [(1, 1), (7, 9), (64, 4)])
def test_a_tiny_input_image_is_refused_before_loading(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, size):
    from PIL import Image

    Image.new("RGB", size, "red").save(tmp_path / "tiny.png")
    Image.new("RGB", (16, 16), "red").save(tmp_path / "fine.png")
    recipe = recipe_runner_write_recipe(I2I.format(images='"fine.png", "tiny.png"'), "i2i.toml")
    before = tree_digest(tmp_path, skip=tmp_path / "out")
    result = recipe_runner_cli(recipe, "--out", tmp_path / "out")
    w, h = size
    assert_refused_before_loading(result, f"i2i.toml:10: matrix.images.1: 'tiny.png' is {w}x{h} px: the pipeline needs "
                                          "at least 8 px on each side")
    assert "fine.png" not in result.err
    assert not (tmp_path / "out").exists()
    assert tree_digest(tmp_path, skip=tmp_path / "out") == before


def test_a_recipe_name_too_long_in_bytes_is_refused(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    name = "\N{GRINNING FACE}" * 100  # 100 characters, 400 bytes
    recipe = recipe_runner_write_recipe(f'name = "{name}"\n' + FOUR, "emoji.toml")
    for mode in ("--dry-run", "--no-progress"):
        result = recipe_runner_cli(recipe, "--out", tmp_path / "out", mode)
        assert_refused_before_loading(result, "emoji.toml:1: name: a recipe name names its output folder: at most 255 "
                                              "bytes in UTF-8 (a file name's limit), got 400 bytes")
    assert not (tmp_path / "out").exists()
    ok = recipe_runner_write_recipe(f'name = "{name[:63]}"\n' + FOUR, "ok.toml")  # 252 bytes
    assert recipe_runner_cli(ok, "--dry-run").code == 0


@pytest.mark.parametrize("out, which", [("a-file", "--out a-file"), ("a-file/sub", "a folder of --out a-file"),
                                        ("root", "the run folder root/four")])
def test_out_naming_a_regular_file_is_refused(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, monkeypatch, out, which):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("precious")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "four").write_text("precious too")
    recipe = recipe_runner_write_recipe(FOUR, "four.toml")
    before = tree_digest(tmp_path)
    for mode in ("--dry-run", "--no-progress"):
        result = recipe_runner_cli(recipe, "--out", out, mode)
        assert_refused_before_loading(result, f"recipe-run: {which} is a file: it must be a folder")
    assert tree_digest(tmp_path) == before


def test_a_jpeg_run_with_a_large_recipe_embeds_it_compressed(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    from recipe_runner.records.outputs import read_embedded

    description = " ".join(f"note {i} about the lighting of scene {i % 97}" for i in range(2500))  # ~110 KB
    recipe = recipe_runner_write_recipe(f'description = "{description}"\n'
                                        + FOUR.replace("[run]", '[output]\nformat = "jpeg"\n[run]'), "big.toml")
    result = recipe_runner_cli(recipe, "--out", tmp_path / "out")
    assert result.code == 0, result.err
    (first, *_) = image_files(tmp_path / "out" / "big")
    assert first.suffix == ".jpg"
    embedded = read_embedded(first)
    assert json.loads(embedded["recipe"])["description"] == description
    assert json.loads(embedded["job"])["file"] == first.name
    again = recipe_runner_cli(recipe, "--out", tmp_path / "out")  # recognised by its embedded key
    assert again.code == 0 and "nothing to do" in again.out, again.out


def test_a_jpeg_run_whose_recipe_cannot_fit_is_refused_up_front(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    import secrets

    description = secrets.token_hex(60_000)  # 120 KB that does not compress below 64 KB
    recipe = recipe_runner_write_recipe(f'description = "{description}"\n'
                                        + FOUR.replace("[run]", '[output]\nformat = "jpeg"\n[run]'), "huge.toml")
    result = recipe_runner_cli(recipe, "--out", tmp_path / "out")
    assert_refused_before_loading(result, "huge.toml:", "output.format: the recipe embedded in each JPEG is",
                                  "more than a JPEG's EXIF holds (64 KB)", 'use format = "png"')
    assert not (tmp_path / "out").exists()
    png = recipe.read_text().replace('format = "jpeg"', 'format = "png"')
    assert recipe_runner_cli(recipe_runner_write_recipe(png, "huge.toml"), "--dry-run").code == 0


def test_a_broken_second_model_of_a_model_axis_is_named_by_its_axis_value(recipe_runner_cli, recipe_runner_write_recipe,
                                                                          recipe_runner_tiny_sd15, tmp_path):
    import shutil

    shutil.copytree(recipe_runner_tiny_sd15, tmp_path / "broken")
    for weights in (tmp_path / "broken" / "unet").glob("*.safetensors"):
        weights.unlink()
    recipe = recipe_runner_write_recipe(FOUR.replace("[run]", '[matrix.axes]\nmodel = ["tiny:sd15", "./broken"]\n[run]'),
                                        "axis.toml")
    before = tree_digest(tmp_path, skip=tmp_path / "out")
    for mode in ("--dry-run", "--no-progress"):
        result = recipe_runner_cli(recipe, "--out", tmp_path / "out", mode)
        assert_refused_before_loading(result, f"axis.toml:11: matrix.axes.model.1: {tmp_path / 'broken' / 'unet'} holds no "
                                              "weights (no .safetensors file): the model './broken' is incomplete")
        assert "model.id" not in result.err and "pickle" not in result.err
    assert not (tmp_path / "out").exists()
    assert tree_digest(tmp_path, skip=tmp_path / "out") == before


def test_the_command_line_entry_called_in_process_leaves_the_signal_handlers_as_it_found_them(monkeypatch):
    """console() (and python -m recipe_runner) install the start-up handlers; a program (a test)
    calling them in-process gets its own handlers back, so a later Ctrl-C is not an os._exit."""
    import runpy

    from recipe_runner.base import interrupts
    from recipe_runner.cli import main as cli

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(cli, "main", lambda argv=None: 0)
    for call in (cli.console, lambda: runpy.run_module("recipe_runner", run_name="__main__")):
        with pytest.raises(SystemExit):
            call()
        assert {s: signal.getsignal(s) for s in before} == before
        assert not interrupts._at_once
