"""Writes overlap the device: each batch is written on a background thread while the next one
generates, bounded, in order, with the atomic-write, journal and Ctrl-C guarantees of synchronous
writes (and the same bytes)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recipe_runner import hookimpl
from recipe_runner.records.writing import SYNC_WRITES_ENV
from tests.conftest import LONG_RUN, REPO, default_sigint, image_files, manifest_of, pixels, run_record

RECIPE = LONG_RUN.format(batch_size=2)  # 3 prompts x 2 seeds, 3 batches of 2

WAIT = 30.0  # seconds: a hand-shake that never comes fails the test instead of hanging it


def assert_listed_files_are_complete(folder: Path) -> dict[str, Any]:
    """Every image on disk is listed as done with its sha256, and no temporary file is left."""
    manifest = manifest_of(folder)
    done = {r["file"]: r["sha256"] for r in manifest["images"] if r["status"] == "done"}
    assert sorted(p.name for p in image_files(folder)) == sorted(done)
    for name, sha256 in done.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == sha256, name
    assert not [p.name for p in folder.iterdir() if ".tmp-" in p.name]
    return manifest


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of RECIPE."""
    from recipe_runner.cli.main import main

    folder = tmp_path_factory.mktemp("reference")
    recipe = folder / "writes.toml"
    recipe.write_text(RECIPE)
    assert main([str(recipe), "--out", str(folder / "out"), "--no-progress"]) == 0
    return folder / "out" / "writes"


class Counter:
    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    @hookimpl
    def after_batch(self, pipe: Any, batch: Any, images: list[Any]) -> None:
        self.calls.append([j.index for j in batch.jobs])


# --- the overlap is real ------------------------------------------------------------------------------

class Device:
    """A test plugin: each pipeline call also sleeps (a simulated device sync, which releases the
    GIL), and batch k+1's call waits until batch k is written; with the writer of batch k (wrapped
    below) waiting until batch k+1's call has started, both can only finish if they overlap."""

    def __init__(self, batches: int) -> None:
        self.events: list[tuple[str, int, str]] = []
        self.started = [threading.Event() for _ in range(batches)]
        self.written = [threading.Event() for _ in range(batches)]
        self.timeouts: list[str] = []

    def record(self, what: str, index: int) -> None:
        self.events.append((what, index, threading.current_thread().name))

    @hookimpl
    def before_batch(self, pipe: Any, batch: Any, call_kwargs: dict[str, Any]) -> None:
        self.record("generate", batch.index)
        self.started[batch.index].set()
        if batch.index and not self.written[batch.index - 1].wait(WAIT):
            self.timeouts.append(f"batch {batch.index - 1} was never written while batch {batch.index} generated")
        time.sleep(0.05 * batch.size)

    @hookimpl
    def after_batch(self, pipe: Any, batch: Any, images: list[Any]) -> None:
        self.record("generated", batch.index)

    def wrap(self, write_batch: Any) -> Any:
        def wrapped(writer: Any, batch: Any, images: Any, only: Any = None, gate: Any = None, seconds: Any = None,
                    facts: Any = None) -> None:
            self.record("write", batch.index)
            following = batch.index + 1
            if following < len(self.started) and not self.started[following].wait(WAIT):
                self.timeouts.append(f"batch {following} never started while batch {batch.index} was written")
            write_batch(writer, batch, images, only, gate, seconds, facts)
            self.record("written", batch.index)
            self.written[batch.index].set()

        return wrapped


@pytest.mark.slow
def test_batch_k_is_written_while_batch_k_plus_1_generates(recipe_runner_cli, recipe_runner_write_recipe,
                                                          recipe_runner_register_plugin, tmp_path, monkeypatch,
                                                          reference):
    from recipe_runner.records.outputs import Writer

    device = recipe_runner_register_plugin(Device(batches=3), "device")
    monkeypatch.setattr(Writer, "write_batch", device.wrap(Writer.write_batch))
    result = recipe_runner_cli(recipe_runner_write_recipe(RECIPE, "writes.toml"), "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert device.timeouts == []
    order = [(what, index) for what, index, _ in device.events]
    for k in (0, 1):  # batch k's write starts after batch k+1's call began and ends before it returns
        assert order.index(("generate", k + 1)) < order.index(("write", k)) < order.index(("written", k)) \
            < order.index(("generated", k + 1)), order
    assert order.index(("written", 0)) < order.index(("write", 1)) < order.index(("written", 1)) \
        < order.index(("write", 2))  # in order, one at a time
    threads = {what: {t for w, _, t in device.events if w == what} for what in ("generate", "write")}
    assert threads == {"generate": {"MainThread"}, "write": {"recipe-runner-writer"}}
    folder = tmp_path / "out" / "writes"
    assert_listed_files_are_complete(folder)
    manifest = run_record(folder)  # the timings are machine-local (.recipe-runner/run.json)
    batches = manifest["timings"]["batches"]
    assert [b["batch"] for b in batches] == [0, 1, 2]
    assert all(set(b) == {"batch", "size", "seconds", "write_seconds", "wait_seconds"} for b in batches)
    assert manifest["timings"]["write_wait_seconds"] >= 0
    for path in image_files(reference):  # (the bytes differ: the plugins are listed in the metadata)
        assert np.array_equal(pixels(path), pixels(folder / path.name)), path.name


# --- same bytes with the writer on or off -------------------------------------------------------------

@pytest.mark.slow
def test_background_and_synchronous_writes_give_the_same_bytes_and_records(recipe_runner_cli, recipe_runner_write_recipe,
                                                                          tmp_path, monkeypatch):
    recipe = recipe_runner_write_recipe(RECIPE.replace('batch_size = 2', 'batch_size = 4'), "writes.toml")
    folders = {}
    for mode, value in (("background", "0"), ("sync", "1")):
        monkeypatch.setenv(SYNC_WRITES_ENV, value)
        result = recipe_runner_cli(recipe, "--out", tmp_path / mode)
        assert result.code == 0, result.err
        folders[mode] = tmp_path / mode / "writes"
    files = {mode: {p.name: p.read_bytes() for p in image_files(folder)} for mode, folder in folders.items()}
    assert len(files["sync"]) == 6 and files["background"] == files["sync"]
    manifests = {mode: run_record(folder) for mode, folder in folders.items()}
    timed = {mode: [r.pop("seconds") for r in manifest["images"]] for mode, manifest in manifests.items()}
    assert all(isinstance(t, float) and t > 0 for times in timed.values() for t in times)  # each image's time
    assert manifests["background"]["images"] == manifests["sync"]["images"]
    for manifest in manifests.values():
        timings = manifest["timings"]
        assert [b["size"] for b in timings["batches"]] == [4, 2]
        assert set(timings) == {"load_seconds", "setup_seconds", "generate_seconds", "write_seconds",
                                "write_wait_seconds", "batches"}
    sync = manifests["sync"]["timings"]
    assert sync["write_wait_seconds"] == pytest.approx(sync["write_seconds"], abs=1e-3)  # nothing overlapped


# --- a failure on the writer ----------------------------------------------------------------------------

@pytest.mark.parametrize("sync", ["0", "1"])
def test_a_failed_write_fails_the_run_and_keeps_the_batches_written_before(recipe_runner_cli, recipe_runner_write_recipe,
                                                                           tmp_path, monkeypatch, sync):
    from recipe_runner.records import outputs

    monkeypatch.setenv(SYNC_WRITES_ENV, sync)
    real = outputs.atomic_write
    writes: list[str] = []

    def disk_full_at_the_third_image(path: Path, data: bytes) -> None:
        writes.append(path.name)
        if len(writes) == 3:  # the first image of batch 1
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(outputs, "atomic_write", disk_full_at_the_third_image)
    result = recipe_runner_cli(recipe_runner_write_recipe(RECIPE, "writes.toml"), "--out", tmp_path / "out")
    assert result.code == 1
    assert "No space left on device" in result.err and "Traceback" not in result.err
    folder = tmp_path / "out" / "writes"
    manifest = assert_listed_files_are_complete(folder)
    assert [r["status"] for r in manifest["images"]] == ["done"] * 2 + ["pending"] * 4
    assert not list(folder.glob(".manifest.journal*"))  # folded into manifest.json
    assert len(writes) == 3  # nothing written after the failure


@pytest.mark.slow
def test_a_failure_while_generating_still_writes_the_batches_generated_before(recipe_runner_cli, recipe_runner_write_recipe,
                                                                              recipe_runner_register_plugin, tmp_path):
    class Broken:
        @hookimpl
        def before_batch(self, pipe: Any, batch: Any, call_kwargs: dict[str, Any]) -> None:
            if batch.index == 1:
                raise ValueError("a real bug")

    recipe_runner_register_plugin(Broken(), "broken")
    result = recipe_runner_cli(recipe_runner_write_recipe(RECIPE, "writes.toml"), "--out", tmp_path / "out")
    assert result.code == 1 and "ValueError: a real bug" in result.err
    manifest = assert_listed_files_are_complete(tmp_path / "out" / "writes")
    assert [r["status"] for r in manifest["images"]] == ["done"] * 2 + ["pending"] * 4


# --- Ctrl-C ---------------------------------------------------------------------------------------------

SLOW_DISK = '''
import os, pathlib, time
from recipe_runner import hookimpl
from recipe_runner.records import outputs

_real = outputs.atomic_write


def _slow(path, data):
    """The first image waits until the test has sent its SIGINT: batch 0 is being written (and
    batch 1 waits for the writer) while batch 2 generates, when the interrupt arrives."""
    if not path.name.startswith("."):
        go = pathlib.Path(os.environ["SLOW_DISK_GO"])
        for _ in range(6000):
            if go.exists():
                break
            time.sleep(0.01)
    _real(path, data)


outputs.atomic_write = _slow


@hookimpl
def before_batch(pipe, batch, call_kwargs):
    if batch.index == 2:
        pathlib.Path(os.environ["SLOW_DISK_MARK"]).write_text("at batch 2")
        time.sleep(300)
'''


@pytest.mark.slow
def test_first_sigint_lets_the_batches_handed_to_the_writer_finish(recipe_runner_cli, tmp_path, reference,
                                                                 recipe_runner_register_plugin):
    (tmp_path / "slow_disk.py").write_text(SLOW_DISK)
    recipe = tmp_path / "writes.toml"
    recipe.write_text(RECIPE)
    mark, go = tmp_path / "mark", tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{tmp_path}", SLOW_DISK_MARK=str(mark), SLOW_DISK_GO=str(go))
    env.pop(SYNC_WRITES_ENV, None)
    proc = subprocess.Popen([sys.executable, "-m", "recipe_runner", str(recipe), "--out", str(tmp_path / "out"),
                             "-p", "slow_disk"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + 300
    while not mark.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never reached batch 2"
        time.sleep(0.05)
    folder = tmp_path / "out" / "writes"
    assert image_files(folder) == []  # batch 0 is still being written, batch 1 waits
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    go.write_text("go")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    manifest = assert_listed_files_are_complete(folder)
    assert [r["status"] for r in manifest["images"]] == ["done"] * 4 + ["pending"] * 2  # batch 2 abandoned
    assert not list(folder.glob(".manifest.journal*"))
    finished = {p.name: p.stat().st_mtime_ns for p in image_files(folder)}

    counter = recipe_runner_register_plugin(Counter(), "counter")
    result = recipe_runner_cli(recipe, "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert counter.calls == [[4, 5]]
    assert {p.name: p.stat().st_mtime_ns for p in image_files(folder) if p.name in finished} == finished
    assert [p.name for p in image_files(folder)] == [p.name for p in image_files(reference)]
    for path in image_files(reference):
        assert np.array_equal(pixels(path), pixels(folder / path.name)), path.name
    assert_listed_files_are_complete(folder)


class BlockedWriter:
    """A stand-in for :class:`recipe_runner.records.outputs.Writer` whose write blocks until released."""

    def __init__(self, folder: Path) -> None:
        self.manifest = type("M", (), {"folder": folder})()
        self.release = threading.Event()
        self.entered = threading.Event()
        self.recorded: list[int] = []

    def write_batch(self, batch: Any, images: Any, only: Any = None, gate: Any = None, seconds: Any = None,
                    facts: Any = None) -> None:
        self.entered.set()
        self.release.wait(WAIT)
        with gate.records():
            self.recorded.append(batch.index)


def test_a_second_sigint_abandons_the_writer_at_once(tmp_path):
    from recipe_runner.base.interrupts import graceful, repeated
    from recipe_runner.plan.batches import Batch
    from recipe_runner.records.writing import BackgroundWrites, Handed, batch_times

    writer = BlockedWriter(tmp_path)
    writes = BackgroundWrites(writer, [])  # type: ignore[arg-type]
    batch = Batch(0, ())
    with graceful():
        writes.hand(Handed(batch, [], None, batch_times(batch, 0.0)))
        assert writer.entered.wait(WAIT)
        for _ in range(2):
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)
        assert repeated()
        start = time.monotonic()
        writes.settle(KeyboardInterrupt())  # does not wait for the blocked write (beyond a short grace)
        assert time.monotonic() - start < 5
        writes.close()
    writer.release.set()
    writes._thread.join(WAIT)  # type: ignore[union-attr]
    assert writer.recorded == []  # the abandoned writer changed no record


def test_critical_sections_off_the_main_thread_neither_hold_nor_raise():
    from recipe_runner.base.interrupts import critical, graceful

    inside, leave, outcome = threading.Event(), threading.Event(), []

    def section() -> None:
        try:
            with critical():
                inside.set()
                leave.wait(WAIT)
            outcome.append("finished")
        except BaseException as exc:  # pragma: no cover - the failure this test looks for
            outcome.append(repr(exc))

    with graceful():
        thread = threading.Thread(target=section)
        thread.start()
        assert inside.wait(WAIT)
        with pytest.raises(KeyboardInterrupt):  # not held: the main thread is in no critical section
            signal.raise_signal(signal.SIGINT)
        leave.set()
        thread.join(WAIT)
    assert outcome == ["finished"]
