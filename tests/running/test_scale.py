"""Scale: distributed runs under torchrun, models loaded once per invocation, timings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recipe_runner import hookimpl
from recipe_runner.pipelines import build
from recipe_runner.plan.batches import Batch
from recipe_runner.plan.matrix import Job
from recipe_runner.plugin_api import manager as plugins
from recipe_runner.running import distributed
from tests.conftest import REPO, image_files, pixels, tiny_recipe

RECIPE = 'name = "{name}"\n' + tiny_recipe("portrait photo of a old warrior chief", "a cat on a roof", "a lighthouse",
                                             seeds=[0, 1], steps=3, model="{extra}", tables="[run]\nbatch_size = 2")


def test_shard_gives_whole_batches_balanced_and_deterministic():
    batches = [Batch(i, tuple(Job(i * 10 + j, "p", j) for j in range(size))) for i, size in enumerate([4, 4, 2, 4, 1, 3])]
    shares = distributed.shard(batches, 2)
    assert [[b.index for b in share] for share in shares] == [[0, 2, 4, 5], [1, 3]]
    assert [sum(b.size for b in share) for share in shares] == [10, 8]
    assert distributed.shard(batches, 2) == shares
    assert sorted(b.index for share in distributed.shard(batches, 4) for b in share) == list(range(6))


def torchrun() -> str | None:
    found = Path(sys.executable).with_name("torchrun")
    return str(found) if found.exists() else shutil.which("torchrun")


def run_torchrun(*args) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("recipe-run")
    launcher = [torchrun(), "--nproc_per_node=2", "--no-python", str(script)] if script.exists() else \
        [torchrun(), "--nproc_per_node=2", "-m", "recipe_runner"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launcher, *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.skipif(torchrun() is None, reason="torchrun is not installed")
def test_torchrun_two_ranks_equal_one_process(recipe_runner_cli, recipe_runner_write_recipe, tiny_sd15_other, tmp_path):
    # A model axis over two models: each rank takes one whole model (and loads only it).
    axis = f'[matrix.axes]\nmodel = ["tiny:sd15", {json.dumps(str(tiny_sd15_other))}]\n[run]'
    recipe = recipe_runner_write_recipe(RECIPE.format(name="spread", extra="").replace("[run]", axis))
    single = recipe_runner_cli(recipe, "--out", tmp_path / "one")  # one process, one thread (OMP_NUM_THREADS=1)
    assert single.code == 0, single.err
    proc = run_torchrun(recipe, "--out", tmp_path / "two")
    folder = tmp_path / "two" / "spread"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["environment"]["world_size"] == 2
    records = manifest["images"]
    assert [r["index"] for r in records] == list(range(12))
    assert all(r["status"] == "done" for r in records)
    assert {r["rank"] for r in records} == {0, 1}, "both ranks did work"
    by_batch, models = {}, {}
    for r in records:
        by_batch.setdefault(r["batch"], set()).add(r["rank"])
        models.setdefault(r["rank"], set()).add(r["axes"]["model"])
    assert all(len(ranks) == 1 for ranks in by_batch.values()), "a batch is done whole by one rank"
    assert sorted(map(len, models.values())) == [1, 1] and models[0] != models[1], "a whole model per rank"
    assert proc.stderr.count("spread: loading ") == 2, "each rank loads only its model"
    files = image_files(folder)
    assert len(files) == 12
    for path in files:
        assert np.array_equal(pixels(path), pixels(tmp_path / "one" / "spread" / path.name)), path.name
    assert not list(folder.glob(".manifest.rank-*")), "partial manifests are merged and removed"
    assert proc.stdout.count("spread: 12 images") == 1, "one summary, from rank 0"


class ReadyCounter:
    def __init__(self):
        self.pipelines: list[str] = []

    @hookimpl
    def pipeline_ready(self, pipe, recipe, context):
        self.pipelines.append(type(pipe).__name__)


@pytest.mark.slow
def test_recipes_on_one_model_load_it_once_and_give_the_same_pixels(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, monkeypatch):
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    loads = []
    original = build.load_pipeline
    monkeypatch.setattr(build, "load_pipeline", lambda *a, **k: loads.append(1) or original(*a, **k))
    counter = ReadyCounter()
    plugins.register(counter)
    try:
        a = recipe_runner_write_recipe(RECIPE.format(name="a", extra=""), "a.toml")
        b = recipe_runner_write_recipe(RECIPE.format(name="b", extra="[scheduler]\nname = \"EulerDiscreteScheduler\""), "b.toml")
        c = recipe_runner_write_recipe(RECIPE.format(name="c", extra="").replace('device = "cpu"', 'device = "cpu"\ntask = "image-to-image"')
                         .replace("seeds = [0, 1]", 'seeds = [0, 1]\nimages = ["in.png"]'), "c.toml")
        together = recipe_runner_cli(a, b, c, "--out", tmp_path / "together")
        assert together.code == 0, together.err
        assert len(loads) == 1, "one from_pretrained for three recipes on one model"
        assert counter.pipelines == ["StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"]
        for name, path in (("b", b), ("c", c)):
            assert recipe_runner_cli(path, "--out", tmp_path / "alone").code == 0
            for file in image_files(tmp_path / "alone" / name):
                assert np.array_equal(pixels(file), pixels(tmp_path / "together" / name / file.name)), file.name
        assert len(loads) == 3
    finally:
        plugins.unregister(counter)


def test_manifest_records_timings_and_the_run_prints_a_summary(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    result = recipe_runner_cli(recipe_runner_write_recipe(RECIPE.format(name="timed", extra="")), "--out", tmp_path)
    assert result.code == 0
    assert "timings" not in json.loads((tmp_path / "timed" / "manifest.json").read_text())  # machine-local
    timings = json.loads((tmp_path / "timed" / ".recipe-runner" / "run.json").read_text())["timings"]
    for key in ("load_seconds", "setup_seconds", "generate_seconds", "write_seconds"):
        assert timings[key] >= 0, key
    assert [b["size"] for b in timings["batches"]] == [2, 2, 2]
    assert all(b["seconds"] > 0 for b in timings["batches"])
    summary, where = result.out.strip().splitlines()[-2:]
    assert summary.startswith("timed: 6 images: 6 new, 0 regenerated, 0 unchanged; made 6 in ")
    assert "images/s" in summary and "MiB peak RSS" in summary
    assert where == f"  gallery {tmp_path / 'timed' / 'index.html'}"


@pytest.mark.slow
@pytest.mark.skipif(torchrun() is None, reason="torchrun is not installed")
def test_a_distributed_run_resumes_only_the_missing_batches(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    recipe = recipe_runner_write_recipe(RECIPE.format(name="resumed", extra=""))
    assert recipe_runner_cli(recipe, "--out", tmp_path).code == 0
    folder = tmp_path / "resumed"
    reference = {p.name: pixels(p) for p in image_files(folder)}
    kept = {p.name: p.stat().st_mtime_ns for p in image_files(folder)}
    lost = sorted(kept)[3]  # second image of batch 1: the batch is re-made whole, only this is written
    (folder / lost).unlink()
    del kept[lost]
    proc = run_torchrun(recipe, "--out", tmp_path)
    assert "resumed: 6 images: 1 new, 0 regenerated, 5 unchanged; made 1" in proc.stdout
    for path in image_files(folder):
        assert np.array_equal(pixels(path), reference[path.name]), path.name
        if path.name in kept:
            assert path.stat().st_mtime_ns == kept[path.name], f"{path.name} was rewritten"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert all(r["status"] == "done" for r in manifest["images"])
    assert manifest["environment"]["world_size"] == 2
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == [".recipe-runner"], \
        "no partial manifest or journal left (only the machine-local record)"
    local = json.loads((folder / ".recipe-runner" / "run.json").read_text())
    assert len(local["timings"]["ranks"]) == 2 and local["environment"]["recipe_file"] == str(recipe.resolve())
