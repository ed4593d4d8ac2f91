"""Run-time decisions: device and dtype choice, the progress bar, images streamed to disk."""

from __future__ import annotations

import io

import pytest

from recipe_runner import build, hookimpl
from recipe_runner import plugin_manager as plugins
from recipe_runner.errors import RunError
from recipe_runner.progress import Progress


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


def test_images_are_on_disk_before_the_next_batch_starts(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    """Memory grows with the batch, not the matrix: each batch's images are written before the
    next batch is generated."""
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
            prompts = ["a", "b", "c"]
            seeds = 2
            [run]
            batch_size = 2
        ''')
        assert recipe_runner_cli(recipe, "--out", tmp_path / "out").code == 0
    finally:
        plugins.unregister(watch)
    assert [(index, len(files)) for index, files in seen] == [(0, 0), (1, 2), (2, 4)]
