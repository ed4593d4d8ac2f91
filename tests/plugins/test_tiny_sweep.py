"""Every build axis offline (issue 20, item 8): the ``tiny:`` source serves a second SD-1.5
model (``tiny:sd15-b``), a VAE (``tiny:vae``) and LoRA files (``tiny:lora-<name>``), and
``recipes/tiny-sweep.toml`` sweeps model x VAE x LoRA x scheduler without the Hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from recipe_runner.api import model_source
from recipe_runner.plugin_api import manager
from recipe_runner.plugins import tiny
from tests.conftest import (
    REPO,  # noqa: E402
    pixels,
)

SWEEP = REPO / "recipes" / "tiny-sweep.toml"


def test_the_tiny_source_serves_a_vae_and_named_loras():
    source = tiny.TinySource()
    for ok in ("tiny:vae", "tiny:lora-fox", "tiny:lora-pixel_art-2", "tiny:sd15-b", "tiny:sd15"):
        assert source.problem(ok) is None, ok
    message, hint = source.problem("tiny:lora-Fox!") or ("", None)
    assert "tiny:lora-<name>" in message and hint == 'for example "tiny:lora-fox"'
    message, hint = source.problem("tiny:vea") or ("", None)
    assert "unknown tiny pipeline 'tiny:vea'" in message and "tiny:vae" in message and hint == "did you mean 'tiny:vae'?"
    assert source.info("tiny:vae") is None and source.info("tiny:lora-fox") is None  # not pipelines
    info = source.info("tiny:sd15-b")
    assert info is not None and info.class_name == "StableDiffusionPipeline"
    assert tiny.lora_seed("fox") == tiny.lora_seed("fox") != tiny.lora_seed("owl")
    manager.load_plugins()  # the registries filled as in a run: plugins resolve tiny ids through the api
    assert isinstance(model_source("tiny:lora-fox"), tiny.TinySource) and model_source("loras/a.safetensors") is None


@pytest.mark.slow
def test_the_sweep_s_dry_run_builds_nothing_and_imports_no_torch(tmp_path):
    code = ("import sys; from recipe_runner.cli.main import main; c = main([sys.argv[1], '--dry-run', '--out', sys.argv[2]]); "
            "print('heavy', sorted({'torch', 'diffusers', 'peft'} & set(sys.modules)), c)")
    env = {**os.environ, "RECIPE_RUNNER_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", code, str(SWEEP), str(tmp_path / "out")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "heavy [] 0", proc.stdout + proc.stderr
    assert "jobs           16 in 16 batches" in proc.stdout
    assert "pipelines      2 loads, 6 switches, in plan order:" in proc.stdout
    assert "switch  model tiny:sd15-b, components.vae tiny:vae, lora tiny:lora-fox" in proc.stdout
    assert "scheduler      by axis: DPMSolverMultistepScheduler, EulerDiscreteScheduler" in proc.stdout
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.safetensors"))


@pytest.mark.slow
def test_a_tiny_lora_is_the_same_file_wherever_it_is_built(tmp_path):
    a = tiny.build_tiny_lora(tmp_path / "a", "fox") / tiny.LORA_FILE
    b = tiny.build_tiny_lora(tmp_path / "b", "fox") / tiny.LORA_FILE
    owl = tiny.build_tiny_lora(tmp_path / "c", "owl") / tiny.LORA_FILE
    assert a.read_bytes() == b.read_bytes() != owl.read_bytes()
    assert a.stat().st_size < 1_000_000


@pytest.mark.slow
def test_the_tiny_sweep_runs_offline_every_axis_changing_the_image(recipe_runner_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = recipe_runner_cli(SWEEP, "--out", tmp_path / "out", "--no-progress")
    assert result.code == 0, result.err
    assert "16 images: 16 new" in result.out and ", 2 loads, " in result.out
    folder = tmp_path / "out" / "tiny-sweep"
    records = json.loads((folder / "manifest.json").read_text())["images"]
    assert len(records) == 16 and (folder / "grid.png").is_file() and (folder / "index.html").is_file()

    def image(**axes):
        found = [r for r in records if all(str(r["axes"].get(k)) == str(v) for k, v in axes.items())]
        return pixels(folder / found[0]["file"]).astype(np.int16)

    base = dict(model="tiny:sd15", **{"components.vae": "default"}, lora="none")
    plain = image(**base)
    for axis, value in (("model", "tiny:sd15-b"), ("components.vae", "tiny:vae"), ("lora", {"id": "tiny:lora-fox"})):
        other = image(**{**base, axis: value})
        assert np.abs(other - plain).max() > 0, axis
