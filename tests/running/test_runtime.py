"""Run-time decisions: device and dtype choice, the progress bar, images streamed to disk."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest

from recipe_runner import hookimpl
from recipe_runner.base.errors import RunError
from recipe_runner.pipelines import build
from recipe_runner.plugin_api import manager as plugins
from recipe_runner.running.progress import Progress
from tests.conftest import image_files, pixels


def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert build.detect_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert build.detect_device("auto") == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert build.detect_device("auto") == "cpu"
    assert build.detect_device("cpu") == "cpu"
    with pytest.raises(RunError, match="CUDA is not available"):
        build.detect_device("cuda:1")


def test_dtype_auto_and_the_float16_fallback_on_cpu():
    warnings = []
    assert build.choose_dtype("auto", "cuda", warnings.append) == "float16"
    assert build.choose_dtype("auto", "cpu", warnings.append) == "float32"
    assert build.choose_dtype("bfloat16", "cpu", warnings.append) == "bfloat16"
    assert warnings == []
    assert build.choose_dtype("float16", "cpu", warnings.append) == "float32"
    assert warnings == ['model.dtype = "float16" on a CPU: using float32 instead']
    assert build.choose_dtype("float16", "cuda", warnings.append) == "float16"


def test_progress_bar_counts_images_with_an_eta_and_is_silent_off_a_terminal():
    stream = io.StringIO()
    bar = Progress(8, "warrior", stream=stream, enabled=True)
    bar.advance(2)
    text = stream.getvalue()
    assert text.startswith("\rwarrior [") and "2/8 images" in text and "ETA" in text
    bar.advance(6)
    last = stream.getvalue().split("\r")[-1]
    assert "8/8 images" in last and "ETA" not in last  # done: no estimate left
    quiet = io.StringIO()
    silent = Progress(8, "warrior", stream=quiet)  # a StringIO is not a terminal
    silent.advance(8)
    silent.close()
    assert quiet.getvalue() == ""


@pytest.mark.slow
@pytest.mark.parametrize("sync", ["1", "0"])
def test_images_are_on_disk_before_the_next_batch_starts(recipe_runner_cli, recipe_runner_write_recipe, tmp_path,
                                                         monkeypatch, sync):
    """Memory grows with the batch, not the matrix: with synchronous writes each batch's images are
    written before the next batch is generated; with the background writer (the default), at most
    one batch waits while another is written, so batch k starts with every batch up to k - 3 on disk."""
    monkeypatch.setenv("RECIPE_RUNNER_SYNC_WRITES", sync)
    seen = []

    class Watch:
        @hookimpl
        def before_batch(self, pipe, batch, call_kwargs):
            seen.append((batch.index, sorted(p.name for p in (tmp_path / "out" / "streamed").glob("*.png"))))

    watch = Watch()
    plugins.register(watch)
    try:
        recipe = recipe_runner_write_recipe('''
            name = "streamed"
            [model]
            id = "tiny:sd15"
            [params]
            num_inference_steps = 2
            [matrix]
            prompts = ["a", "b", "c", "d", "e"]
            seeds = 2
            [run]
            batch_size = 2
        ''')
        assert recipe_runner_cli(recipe, "--out", tmp_path / "out").code == 0
    finally:
        plugins.unregister(watch)
    counts = [(index, len(files)) for index, files in seen]
    if sync == "1":
        assert counts == [(0, 0), (1, 2), (2, 4), (3, 6), (4, 8)]
    else:
        assert [index for index, _ in counts] == [0, 1, 2, 3, 4]
        assert all(2 * max(0, index - 2) <= count <= 2 * index for index, count in counts), counts


def test_progress_bar_moves_with_the_denoising_steps_and_ends_on_the_final_state():
    stream = io.StringIO()
    bar = Progress(8, "warrior", stream=stream, enabled=True)
    bar.begin_batch(4, 20)
    bar.advance_step(10)  # half of a 4-image batch: 2 of 8 images' worth
    assert "0/8 images  step 10/20" in stream.getvalue() and "[######.................." in stream.getvalue()
    bar.advance(4)
    bar.close()
    last = stream.getvalue().split("\r")[-1]
    assert last.startswith("warrior [############............] 4/8 images") and last.endswith("\n")
    assert "step" not in last


def test_a_scheduler_taking_more_steps_than_asked_never_shows_a_step_past_the_total(monkeypatch):
    """PNDM (the tiny SD-1.5 default) takes 5 steps for num_inference_steps = 4: the bar said "step 5/4"."""
    import recipe_runner.running.progress as progress

    monkeypatch.setattr(progress, "REDRAW_SECONDS", 0.0)
    stream = io.StringIO()
    bar = Progress(8, "tiny-axes", stream=stream, enabled=True)
    bar.begin_batch(2, 4)
    for step in range(1, 6):
        bar.advance_step(step)
    assert "step 5/5" in stream.getvalue() and "step 5/4" not in stream.getvalue()
    assert "[######" in stream.getvalue().split("\r")[-1]  # never past the batch's share of the bar


@pytest.mark.slow
def test_a_run_drawn_on_a_terminal_shows_steps_and_makes_the_same_pixels(recipe_runner_write_recipe, tmp_path, capsys):
    """The step callback only reports: the images equal those of a run without a bar."""
    from recipe_runner.plugin_api.manager import load_plugins
    from recipe_runner.running.prepare import Options, prepare
    from recipe_runner.running.session import run_recipe

    recipe = recipe_runner_write_recipe('''
        [model]
        id = "tiny:sd15"
        [params]
        num_inference_steps = 3
        [matrix]
        prompts = ["a lighthouse"]
        seeds = 2
        [run]
        batch_size = 2
        [output]
        grid = false
        gallery = false
    ''', "steps.toml")
    plugins = load_plugins([])
    folders = {}
    for drawn in (True, False):
        options = Options(out=tmp_path / str(drawn), progress=drawn)
        run_recipe(prepare(recipe, [], plugins, options), plugins, options)
        folders[drawn] = tmp_path / str(drawn) / "steps"
    err = capsys.readouterr().err
    assert re.search(r"0/2 images  step [123]/3", err), err  # drawn mid-batch (redraws are throttled)
    assert "2/2 images" in err.split("\r")[-1]
    drawn_files, plain_files = image_files(folders[True]), image_files(folders[False])
    assert [p.name for p in drawn_files] == [p.name for p in plain_files]
    for a, b in zip(drawn_files, plain_files):
        assert np.array_equal(pixels(a), pixels(b))
