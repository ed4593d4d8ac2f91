"""Kill tests: a run killed at several moments (SIGKILL: no cleanup at all; SIGTERM: handled like a
first Ctrl-C), then a plain re-run of the same command, ends in a folder equal to an uninterrupted
run's, file for file and pixel for pixel, with no temporary file, journal or history left.

A small plugin (``killpoint``, written beside the recipe) makes each kill land deterministically: at
the chosen moment it writes a mark file (after waiting until the batches before it are journaled,
so the moment does not depend on the background writer's speed) and sleeps until killed.
"""

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

from tests.conftest import LONG_RUN, REPO, pixels

RECIPE = LONG_RUN.format(batch_size=2)  # three prompts by two seeds, three batches of two

KILLPOINT = '''
import os, pathlib, time
from recipe_runner import hookimpl
from recipe_runner.records import outputs

POINT = os.environ.get("KILL_AT", "")
FOLDER = pathlib.Path(os.environ.get("KILL_FOLDER", "."))


def stop_here(what):
    """Tell the test where the run is, then wait to be killed."""
    pathlib.Path(os.environ["KILL_MARK"]).write_text(what)
    time.sleep(120)


def journaled(images):
    """Wait until ``images`` journal lines are on disk (the background writer finished them)."""
    journal = FOLDER / ".manifest.journal.jsonl"
    for _ in range(2400 if images else 0):
        if journal.exists() and journal.read_bytes().count(b"\\n") >= images:
            return
        time.sleep(0.05)


@hookimpl
def pipeline_ready(pipe, recipe, context):
    if POINT == "loaded":
        stop_here("the model is loaded, nothing written")


@hookimpl
def before_batch(pipe, batch, call_kwargs):
    if POINT == f"batch:{batch.index}":
        journaled(2 * batch.index)
        stop_here(f"at batch {batch.index}")


@hookimpl
def run_finished(recipe, output_dir, manifest):
    if POINT == "finished":
        stop_here("everything written, the process not ended")


if POINT.startswith("write:"):  # inside the atomic write of image N: its temporary file is on disk
    target, count, real = int(POINT.split(":")[1]), [0], outputs.atomic_write

    def atomic_write(path, data):
        count[0] += 1
        if count[0] == target + 1:
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_bytes(data[: len(data) // 2])
            stop_here(f"writing {path.name}")
        real(path, data)

    outputs.atomic_write = atomic_write
'''


@pytest.fixture(scope="module")
def reference(tmp_path_factory, recipe_runner_cache):
    """The folder of an uninterrupted run (in a process of its own, as the killed runs)."""
    folder = tmp_path_factory.mktemp("reference")
    recipe = folder / "longrun.toml"
    recipe.write_text(RECIPE)
    (folder / "killpoint.py").write_text(KILLPOINT)
    proc = subprocess.run([sys.executable, "-m", "recipe_runner", str(recipe), "--out", str(folder / "out"), "-p", "killpoint"],
                          cwd=folder, env=dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{folder}"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return folder / "out" / "longrun"


def run_until(tmp_path: Path, point: str, signum: int) -> subprocess.CompletedProcess:
    """Start the run, wait for the plugin's mark at ``point``, send ``signum``; the ended process."""
    recipe = tmp_path / "longrun.toml"
    recipe.write_text(RECIPE)
    (tmp_path / "killpoint.py").write_text(KILLPOINT)
    mark = tmp_path / "mark"
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{tmp_path}", KILL_AT=point, KILL_MARK=str(mark),
               KILL_FOLDER=str(tmp_path / "out" / "longrun"))
    proc = subprocess.Popen([sys.executable, "-m", "recipe_runner", str(recipe), "--out", str(tmp_path / "out"), "-p", "killpoint"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not mark.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"the run never reached {point}"
            time.sleep(0.02)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    mark.unlink()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def rerun(tmp_path: Path) -> subprocess.CompletedProcess:
    """The same command again, plainly (no kill point)."""
    proc = subprocess.run([sys.executable, "-m", "recipe_runner", str(tmp_path / "longrun.toml"), "--out", str(tmp_path / "out"),
                           "-p", "killpoint"], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{tmp_path}"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def embedded(path: Path) -> dict:
    """What an image carries, but the folder its recipe was read from (each test has its own)."""
    from recipe_runner.records.outputs import read_embedded

    text = read_embedded(path)
    environment = json.loads(text.pop("environment"))
    environment.pop("recipe_folder")
    return {**text, "environment": environment}


def assert_same_folder(reference: Path, folder: Path) -> None:
    """File for file (the same names, nothing else: no temporary file, journal or history), image
    for image (the same pixels, the same embedded recipe, job and environment), and records that
    agree (job keys, batches, status)."""
    assert tree(folder) == tree(reference)
    for path in reference.iterdir():
        if path.suffix == ".png":
            assert np.array_equal(pixels(path), pixels(folder / path.name)), path.name
            if path.name != "grid.png":
                assert embedded(path) == embedded(folder / path.name), path.name
    ours, theirs = (json.loads((f / "manifest.json").read_text())["images"] for f in (folder, reference))
    fields = ("file", "status", "key", "batch", "batch_size", "batch_jobs")
    assert [{k: r[k] for k in fields} for r in ours] == [{k: r[k] for k in fields} for r in theirs]


@pytest.mark.slow
@pytest.mark.parametrize("point", ["batch:0", "batch:1", "batch:2", "finished"])
def test_sigkill_then_a_plain_rerun_equals_an_uninterrupted_run(tmp_path, reference, point):
    killed = run_until(tmp_path, point, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    rerun(tmp_path)
    assert_same_folder(reference, tmp_path / "out" / "longrun")


@pytest.mark.slow
@pytest.mark.parametrize("point", ["loaded", "batch:1"])
def test_sigterm_then_a_plain_rerun_equals_an_uninterrupted_run(tmp_path, reference, point):
    terminated = run_until(tmp_path, point, signal.SIGTERM)
    assert terminated.returncode == 143, terminated.stderr
    assert "Traceback" not in terminated.stderr
    folder = tmp_path / "out" / "longrun"
    if point == "batch:1":  # the images written are listed: the journal is folded into the manifest
        statuses = [r["status"] for r in json.loads((folder / "manifest.json").read_text())["images"]]
        assert statuses == ["done"] * 2 + ["pending"] * 4
        assert not (folder / ".manifest.journal.jsonl").exists()
    rerun(tmp_path)
    assert_same_folder(reference, folder)


@pytest.mark.slow
def test_sigkill_in_the_middle_of_writing_an_image_leaves_nothing_behind_after_a_rerun(tmp_path, reference):
    killed = run_until(tmp_path, "write:2", signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    folder = tmp_path / "out" / "longrun"
    assert [p.name for p in folder.iterdir() if ".tmp-" in p.name]  # the kill did land mid-write
    rerun(tmp_path)
    assert_same_folder(reference, folder)
