"""Long runs never lose work: resume by job key, the journal, SIGINT, crashes, out-of-memory backoff."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from recipe_runner import hookimpl
from recipe_runner.base.paths import sha256_file
from recipe_runner.plugin_api import manager as plugins
from recipe_runner.records.journal import JOURNAL_NAME, read_journal
from tests.conftest import (
    LONG_RUN,
    REPO,
    default_sigint,
    image_files,
    images_in_matrix_order,
    manifest_of,
    pixels,
    run_subprocess,
)

RECIPE = LONG_RUN


def run(cli, recipe, out, *args):
    result = cli(recipe, "--out", out, *args)
    assert result.code == 0, result.err
    return result


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in image_files(folder)}


def assert_same_pixels(a: Path, b: Path) -> None:
    files = image_files(a)
    assert [p.name for p in files] == [p.name for p in image_files(b)]
    for path in files:
        assert np.array_equal(pixels(path), pixels(b / path.name)), path.name


def uninterrupted(tmp_path_factory, text: str, name: str):
    """The output folder of an uninterrupted run of ``text`` (written as ``name``.toml)."""
    from recipe_runner.cli.main import main

    folder = tmp_path_factory.mktemp(f"reference-{name}")
    recipe = folder / f"{name}.toml"
    recipe.write_text(text)
    assert main([str(recipe), "--out", str(folder / "out"), "--no-progress"]) == 0
    return folder / "out" / name


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run at batch_size 2 (3 batches of 2)."""
    return uninterrupted(tmp_path_factory, RECIPE.format(batch_size=2), "longrun")


def test_rerun_skips_every_finished_job_and_touches_nothing(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, counter):
    recipe = recipe_runner_write_recipe(RECIPE.format(batch_size=2), "longrun.toml")
    run(recipe_runner_cli, recipe, tmp_path / "out")
    folder = tmp_path / "out" / "longrun"
    before = snapshot(folder)
    counter.calls.clear()
    run(recipe_runner_cli, recipe, tmp_path / "out")
    assert counter.calls == []
    assert snapshot(folder) == before
    records = manifest_of(folder)["images"]
    assert all(r["status"] == "done" and len(r["key"]) == 64 for r in records)
    assert [r["batch_jobs"] for r in records] == [[0, 1], [0, 1], [2, 3], [2, 3], [4, 5], [4, 5]]
    assert not (folder / JOURNAL_NAME).exists()


@pytest.mark.slow
def test_a_missing_image_recomputes_its_whole_batch_and_writes_only_it(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, counter, reference):
    recipe = recipe_runner_write_recipe(RECIPE.format(batch_size=2), "longrun.toml")
    run(recipe_runner_cli, recipe, tmp_path / "out")
    folder = tmp_path / "out" / "longrun"
    missing = images_in_matrix_order(folder)[3]
    missing.unlink()
    before = snapshot(folder)
    counter.calls.clear()
    run(recipe_runner_cli, recipe, tmp_path / "out")
    assert counter.calls == [[2, 3]]
    after = snapshot(folder)
    assert {k: v for k, v in after.items() if k != missing.name} == before
    assert_same_pixels(reference, folder)


def hashes_in(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in image_files(folder)}


def history_hashes(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in (folder / "history").glob("*/*.png")}


@pytest.mark.slow
def test_adding_a_seed_makes_only_the_new_images(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, counter):
    """2 prompts x 3 seeds, then a fourth seed: exactly 2 images are made, no duplicate files, the
    6 others keep their bytes and mtime."""
    text = RECIPE.format(batch_size=2).replace('"a red fox", "a blue house", "a green tree"', '"a red fox", "a blue house"')
    recipe = recipe_runner_write_recipe(text.replace("seeds = [0, 1]", "seeds = [0, 1, 2]"), "grow.toml")
    run(recipe_runner_cli, recipe, tmp_path / "out")
    folder = tmp_path / "out" / "grow"
    before = snapshot(folder)
    old_hashes = hashes_in(folder)
    counter.calls.clear()
    result = run(recipe_runner_cli, recipe, tmp_path / "out", "--set", "matrix.seeds=4")
    assert counter.calls == [[3, 7]]
    after = snapshot(folder)
    assert len(after) == 8 and {k: after[k] for k in before} == before
    assert {k: v for k, v in hashes_in(folder).items() if k in old_hashes} == old_hashes
    assert "2 new, 0 regenerated, 6 unchanged" in result.out
    assert not (folder / "history").exists()
    assert [r["status"] for r in manifest_of(folder)["images"]] == ["done"] * 8


@pytest.mark.slow
def test_an_edited_param_regenerates_every_job_and_keeps_what_it_replaces(recipe_runner_cli, recipe_runner_write_recipe,
                                                                          tmp_path, counter):
    recipe = recipe_runner_write_recipe(RECIPE.format(batch_size=2), "longrun.toml")
    run(recipe_runner_cli, recipe, tmp_path / "out")
    folder = tmp_path / "out" / "longrun"
    first = hashes_in(folder)
    counter.calls.clear()
    result = run(recipe_runner_cli, recipe, tmp_path / "out", "--set", "params.guidance_scale=5.0")
    assert counter.calls == [[0, 1], [2, 3], [4, 5]]
    assert "0 new, 6 regenerated, 0 unchanged" in result.out and "replaced images kept in" in result.out
    assert history_hashes(folder) == first  # every replaced image, byte for byte
    manifest = manifest_of(folder)
    assert [r["status"] for r in manifest["images"]] == ["done"] * 6
    assert manifest["history"]["folder"].startswith("history/") and len(manifest["history"]["replaced"]) == 6
    assert set(hashes_in(folder).values()).isdisjoint(first.values())
    # a changed prompt: its jobs are generated, the other prompts' images keep bytes and mtime,
    # and the images no job makes any more join the history
    second = snapshot(folder)
    counter.calls.clear()
    result = run(recipe_runner_cli, recipe, tmp_path / "out", "--set", "params.guidance_scale=5.0",
                 "--set", 'matrix.prompts=["a red fox", "a blue house", "a pink tree"]')
    assert counter.calls == [[4, 5]] and "2 new, 0 regenerated, 4 unchanged" in result.out
    kept = {k: v for k, v in snapshot(folder).items() if k in second}
    assert kept == {k: v for k, v in second.items() if "green-tree" not in k}
    latest = folder / manifest_of(folder)["history"]["folder"]
    assert sorted(p.name for p in latest.glob("*.png")) == sorted(k for k in second if "green-tree" in k)
    # --force regenerates everything; pixel-identical images leave their files as they were, and no
    # history entry (#22: a regeneration that changes nothing changes no file)
    third = snapshot(folder)
    counter.calls.clear()
    result = run(recipe_runner_cli, recipe, tmp_path / "out", "--set", "params.guidance_scale=5.0",
                 "--set", 'matrix.prompts=["a red fox", "a blue house", "a pink tree"]', "--force")
    assert counter.calls == [[0, 1], [2, 3], [4, 5]]
    assert "0 new, 6 regenerated (6 pixel-identical: files kept), 0 unchanged" in result.out
    assert len(list((folder / "history").iterdir())) == 2 and "history" not in manifest_of(folder)
    assert {k: v for k, v in snapshot(folder).items() if k in third} == third


@pytest.mark.slow
def test_a_rerun_with_nothing_to_do_imports_neither_torch_nor_diffusers(recipe_runner_write_recipe, tmp_path):
    recipe = recipe_runner_write_recipe(RECIPE.format(batch_size=2).replace("seeds = [0, 1]", "seeds = [0]"), "idle.toml")
    out = tmp_path / "out"
    assert run_subprocess(recipe, "--out", out, "--no-progress").code == 0
    probe = ("import runpy, sys\n"
             f"sys.argv = ['recipe-run', {str(recipe)!r}, '--out', {str(out)!r}]\n"
             "code = None\n"
             "try:\n    runpy.run_module('recipe_runner', run_name='__main__')\n"
             "except SystemExit as exc:\n    code = exc.code\n"
             "print('HEAVY', sorted({'torch', 'diffusers', 'transformers'} & set(sys.modules)), code)\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert "HEAVY [] 0" in proc.stdout, proc.stdout + proc.stderr
    assert "0 new, 0 to regenerate, 3 unchanged; nothing to do, nothing loaded" in proc.stdout
    dry = run_subprocess("--dry-run", recipe, "--out", out)
    assert "a run now      0 new, 0 to regenerate, 3 unchanged" in dry.out
    edited = run_subprocess("--dry-run", recipe, "--out", out, "--set", "params.guidance_scale=6.0")
    assert "a run now      0 new, 3 to regenerate, 0 unchanged" in edited.out


@pytest.mark.slow
def test_weights_changed_in_place_regenerate_the_old_images(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, counter):
    """A local model retrained into the same folder: the images of the old weights are not taken
    for the new weights' work (the model's files are part of every job's key); they are kept in the history."""
    import shutil

    from safetensors.torch import load_file, save_file

    from recipe_runner.plugins import tiny

    shutil.copytree(tiny.ensure("sd15"), tmp_path / "my-model")
    recipe = recipe_runner_write_recipe(RECIPE.format(batch_size=2).replace('"tiny:sd15"', '"./my-model"'), "local.toml")
    run(recipe_runner_cli, recipe, tmp_path / "out")
    folder = tmp_path / "out" / "local"
    before = snapshot(folder)
    counter.calls.clear()
    run(recipe_runner_cli, recipe, tmp_path / "out")
    assert counter.calls == []  # the same weights: every image is done
    first = set(hashes_in(folder).values())

    weights = tmp_path / "my-model" / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, weights, metadata={"format": "pt"})
    result = run(recipe_runner_cli, recipe, tmp_path / "out")
    assert counter.calls == [[0, 1], [2, 3], [4, 5]]  # the new weights make every image again
    assert "0 new, 6 regenerated, 0 unchanged" in result.out
    assert set(history_hashes(folder).values()) == first and set(before) == set(snapshot(folder))


def test_a_hub_model_s_jobs_carry_the_commit_it_was_loaded_from(recipe_runner_write_recipe, tmp_path):
    """A Hub model's "main" moves: images made from another commit are regenerated, not done."""
    from recipe_runner.pipelines.lock import loaded_models
    from recipe_runner.records.keys import common_identity
    from recipe_runner.running.prepare import Options, prepare

    recipe = recipe_runner_write_recipe('[model]\nid = "some-org/some-model"\n[matrix]\nprompts = ["a"]\n', "hub.toml")
    prepared = prepare(recipe, [], plugins.load_plugins([]), Options(out=tmp_path / "out"))

    def identity(commit: str) -> dict:
        return common_identity(prepared.recipe, "float32", [], loaded_models(prepared.recipe, prepared.loaded, commit))

    assert identity("a" * 40)["loaded_models"] == {"model_commit": "a" * 40}
    assert identity("a" * 40) != identity("b" * 40)


@pytest.mark.slow
def test_a_file_changed_on_disk_is_remade_and_the_edited_one_kept(recipe_runner_cli, recipe_runner_write_recipe, tmp_path,
                                                                  counter, reference):
    recipe = recipe_runner_write_recipe(RECIPE.format(batch_size=2), "longrun.toml")
    run(recipe_runner_cli, recipe, tmp_path / "out")
    folder = tmp_path / "out" / "longrun"
    edited = images_in_matrix_order(folder)[0]
    edited.write_bytes(edited.read_bytes() + b"edited")
    counter.calls.clear()
    result = run(recipe_runner_cli, recipe, tmp_path / "out")
    assert counter.calls == [[0, 1]] and "0 new, 1 regenerated, 5 unchanged" in result.out
    (kept,) = (folder / "history").glob("*/*.png")
    assert kept.name == edited.name and kept.read_bytes().endswith(b"edited")
    assert manifest_of(folder)["history"]["replaced"] == [{"file": edited.name, "reason": "changed on disk since it was written"}]
    assert_same_pixels(reference, folder)


def test_torn_journal_line_is_ignored(tmp_path):
    path = tmp_path / JOURNAL_NAME
    good = {"file": "0000-s0-a.png", "index": 0, "status": "done", "sha256": "x", "key": "k"}
    path.write_bytes((json.dumps(good) + "\n" + '{"file": "0001-s1-a.png", "ind').encode())
    assert read_journal(path) == [good]


# --- crashes and interrupts in a real process --------------------------------------------------------

STOPPER = '''
import os, pathlib, signal, time
from recipe_runner import hookimpl

@hookimpl
def before_batch(pipe, batch, call_kwargs):
    """Batch 0 goes through; at batch 1 signal the test, then wait to be interrupted (or crash)."""
    if batch.index == 1:
        if os.environ.get("STOPPER") == "crash":
            journal = pathlib.Path("out/longrun/.manifest.journal.jsonl")  # batch 0 is written in the
            for _ in range(600):  # background while batch 1 starts: crash once it is journaled
                if journal.exists() and journal.read_bytes().count(b"\\n") >= 2:
                    break
                time.sleep(0.05)
            os._exit(9)  # a hard crash: no cleanup at all
        pathlib.Path(os.environ["STOPPER_MARK"]).write_text("at batch 1")
        time.sleep(300)
'''


def start(tmp_path: Path, recipe: Path, mode: str) -> subprocess.Popen:
    (tmp_path / "stopper.py").write_text(STOPPER)
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{tmp_path}", STOPPER=mode,
               STOPPER_MARK=str(tmp_path / "mark"))
    return subprocess.Popen([sys.executable, "-m", "recipe_runner", str(recipe), "--out", str(tmp_path / "out"), "-p", "stopper"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)


def wait_for(path: Path, proc: subprocess.Popen, limit: float = 300) -> None:
    deadline = time.monotonic() + limit
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never reached batch 1"
        time.sleep(0.05)


def assert_folder_is_clean(folder: Path) -> None:
    from PIL import Image

    leftovers = [p.name for p in folder.iterdir() if ".tmp-" in p.name]
    assert not leftovers, leftovers
    for path in image_files(folder):
        with Image.open(path) as image:
            image.verify()


@pytest.mark.slow
def test_sigint_keeps_finished_images_and_the_rerun_completes_them(recipe_runner_cli, tmp_path, counter, reference):
    recipe = tmp_path / "longrun.toml"
    recipe.write_text(RECIPE.format(batch_size=2))
    proc = start(tmp_path, recipe, "interrupt")
    wait_for(tmp_path / "mark", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: 2 image(s) written by this run" in err and "Traceback" not in err
    folder = tmp_path / "out" / "longrun"
    assert_folder_is_clean(folder)
    assert {p.name for p in image_files(folder)} == {p.name for p in images_in_matrix_order(reference)[:2]}
    manifest = manifest_of(folder)  # flushed: the journal is folded in
    assert [r["status"] for r in manifest["images"]] == ["done"] * 2 + ["pending"] * 4
    assert not (folder / JOURNAL_NAME).exists()
    finished = snapshot(folder)
    counter.calls.clear()
    run(recipe_runner_cli, recipe, tmp_path / "out")
    assert counter.calls == [[2, 3], [4, 5]]
    assert {k: v for k, v in snapshot(folder).items() if k in finished} == finished
    assert_same_pixels(reference, folder)
    assert_folder_is_clean(folder)


@pytest.mark.slow
def test_a_hard_crash_loses_at_most_the_batch_in_flight(recipe_runner_cli, tmp_path, counter, reference):
    recipe = tmp_path / "longrun.toml"
    recipe.write_text(RECIPE.format(batch_size=2))
    proc = start(tmp_path, recipe, "crash")
    proc.communicate(timeout=300)
    assert proc.returncode == 9
    folder = tmp_path / "out" / "longrun"
    assert [r["status"] for r in manifest_of(folder)["images"]] == ["pending"] * 6  # not folded yet ...
    assert [r["index"] for r in read_journal(folder / JOURNAL_NAME)] == [0, 1]  # ... but journaled
    finished = snapshot(folder)
    counter.calls.clear()
    run(recipe_runner_cli, recipe, tmp_path / "out")
    assert counter.calls == [[2, 3], [4, 5]]
    assert {k: v for k, v in snapshot(folder).items() if k in finished} == finished
    assert_same_pixels(reference, folder)
    assert not (folder / JOURNAL_NAME).exists()


def test_first_sigint_waits_for_a_critical_write_and_a_second_stops_at_once(python_sigint_handler):
    from recipe_runner.base.interrupts import critical, graceful

    with graceful():
        reached = []
        with pytest.raises(KeyboardInterrupt):
            with critical():
                signal.raise_signal(signal.SIGINT)
                reached.append("after the first signal")  # held: the section finishes
        assert reached == ["after the first signal"]
        with pytest.raises(KeyboardInterrupt):
            with critical():
                signal.raise_signal(signal.SIGINT)  # the second: raised at once
                reached.append("never")
        assert reached == ["after the first signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# --- out of memory -----------------------------------------------------------------------------------

class OutOfMemoryAbove2:
    """A test plugin: batches larger than 2 run out of memory."""

    def __init__(self, error=None):
        self.error = error
        self.tried: list[int] = []

    @hookimpl
    def before_batch(self, pipe, batch, call_kwargs):
        import torch

        self.tried.append(batch.size)
        if batch.size > 2:
            raise self.error or torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


OOM_RECIPE = RECIPE.replace('"a blue house", "a green tree"', '"a blue house"')  # 4 jobs


@pytest.fixture(scope="module")
def reference_2(tmp_path_factory):
    return uninterrupted(tmp_path_factory, OOM_RECIPE.format(batch_size=2), "oom")


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["4", '"auto"'])
def test_out_of_memory_halves_the_batch_and_matches_a_run_at_the_size_that_fit(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, counter,
                                                                               reference_2, setting):
    plugin = OutOfMemoryAbove2()
    plugins.register(plugin, "oom")
    try:
        result = run(recipe_runner_cli, recipe_runner_write_recipe(OOM_RECIPE.format(batch_size=setting), "oom.toml"), tmp_path / "out")
    finally:
        plugins.unregister(plugin)
    assert plugin.tried == [4, 2, 2]  # halves once, then stays at the size that fit
    assert sorted(i for call in counter.calls for i in call) == [0, 1, 2, 3]  # every image once
    assert "out of memory at batch size 4: retrying at 2" in result.err
    folder = tmp_path / "out" / "oom"
    assert [r["batch_size"] for r in manifest_of(folder)["images"]] == [2, 2, 2, 2]
    assert_same_pixels(reference_2, folder)


@pytest.mark.slow
def test_resume_honours_the_batches_recorded_after_a_backoff(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, counter, reference_2):
    recipe = recipe_runner_write_recipe(OOM_RECIPE.format(batch_size=4), "oom.toml")
    plugin = OutOfMemoryAbove2()
    plugins.register(plugin, "oom")
    try:
        run(recipe_runner_cli, recipe, tmp_path / "out")
    finally:
        plugins.unregister(plugin)
    folder = tmp_path / "out" / "oom"
    images_in_matrix_order(folder)[1].unlink()
    counter.calls.clear()
    run(recipe_runner_cli, recipe, tmp_path / "out")  # no out-of-memory now: a fresh plan would be one batch of 4
    assert counter.calls == [[0, 1]]
    assert_same_pixels(reference_2, folder)


@pytest.mark.slow
def test_cuda_style_out_of_memory_runtime_errors_back_off_too(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    plugin = OutOfMemoryAbove2(RuntimeError("MPS backend out of memory (MPS allocated: 8 GB)"))
    plugins.register(plugin, "oom")
    try:
        run(recipe_runner_cli, recipe_runner_write_recipe(OOM_RECIPE.format(batch_size=4), "oom.toml"), tmp_path / "out")
    finally:
        plugins.unregister(plugin)
    assert plugin.tried == [4, 2, 2]


def test_other_errors_are_not_swallowed(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    plugin = OutOfMemoryAbove2(ValueError("a real bug"))
    plugins.register(plugin, "oom")
    try:
        result = recipe_runner_cli(recipe_runner_write_recipe(OOM_RECIPE.format(batch_size=4), "oom.toml"), "--out", tmp_path / "out")
    finally:
        plugins.unregister(plugin)
    assert result.code == 1 and "ValueError: a real bug" in result.err
    assert plugin.tried == [4]


@pytest.mark.slow
def test_out_of_memory_at_batch_size_1_fails_clearly(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    import torch

    class Always:
        @hookimpl
        def before_batch(self, pipe, batch, call_kwargs):
            raise torch.OutOfMemoryError("out of memory")

    plugin = Always()
    plugins.register(plugin, "always")
    try:
        result = recipe_runner_cli(recipe_runner_write_recipe(OOM_RECIPE.format(batch_size=2), "oom.toml"), "--out", tmp_path / "out")
    finally:
        plugins.unregister(plugin)
    assert result.code == 1 and "out of memory at batch size 1" in result.err
