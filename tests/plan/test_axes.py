"""Build axes: models, components, LoRA adapter sets and scales, optimizations as ``[matrix.axes]``.

Each image of an axis run equals the image of a plain run of that one model / VAE / adapter set
(pixel for pixel, where the contract promises it), each model is loaded once (counted with the
``pipeline_ready`` hook), and every provenance path (the dry run's load order, ``--reproduce``,
resume) works per image.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from recipe_runner.api import hookimpl
from tests.conftest import pixels, run_record

RECIPE = """
name = "{name}"
[model]
id = {model}
device = "cpu"
[params]
num_inference_steps = 2
[matrix]
prompts = ["a red fox in the snow"]
seeds = {seeds}
{axes}
[run]
batch_size = 2
{extra}
"""


def toml(value: Any) -> str:
    """A path or string as a TOML string."""
    return json.dumps(str(value))


class Loads:
    """Counts the pipelines built (``pipeline_ready``: once per load, never for a switch)."""

    def __init__(self) -> None:
        self.models: list[str] = []

    @hookimpl
    def pipeline_ready(self, pipe, recipe, context):
        self.models.append(recipe.model.id)


@pytest.fixture
def loads(recipe_runner_register_plugin):
    return recipe_runner_register_plugin(Loads(), "load-counter")


@pytest.fixture
def run(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    """Write and run a recipe; returns code, output, the manifest and each image's pixels by file."""

    def go(name: str, model: Any, seeds: str = "[0, 1]", axes: str = "", extra: str = "", *args: Any):
        text = RECIPE.format(name=name, model=toml(model), seeds=seeds, axes=axes, extra=extra)
        path = recipe_runner_write_recipe(text, f"{name}.toml")
        result = recipe_runner_cli(path, "--out", tmp_path / "out", "--no-progress", *args)
        folder = tmp_path / "out" / name
        manifest = run_record(folder) if (folder / "manifest.json").is_file() else None  # with its timings
        images = {r["file"]: pixels(folder / r["file"]) for r in (manifest or {}).get("images", [])
                  if (folder / r["file"]).is_file()}
        return SimpleNamespace(code=result.code, out=result.out, err=result.err, manifest=manifest, images=images,
                               folder=folder, path=path)

    return go


def by_axes(result: Any, **wanted: Any) -> list[np.ndarray]:
    """The images whose records hold the ``wanted`` axis values, in job order."""
    out = []
    for record in result.manifest["images"]:
        axes = record.get("axes") or {}
        if all(axes.get(k.replace("__", ".")) == v for k, v in wanted.items()):
            out.append(result.images[record["file"]])
    return out


def in_order(result: Any) -> list[np.ndarray]:
    return [result.images[r["file"]] for r in result.manifest["images"]]


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) > 0 and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.slow
def test_a_model_axis_loads_each_model_once_and_equals_each_model_alone(run, loads, recipe_runner_cli,
                                                                        recipe_runner_tiny_sd15, tiny_sd15_other):
    a, b = recipe_runner_tiny_sd15, tiny_sd15_other
    axis = run("models", a, axes=f"[matrix.axes]\nmodel = [{toml(a)}, {toml(b)}]")
    assert axis.code == 0, axis.err
    assert len(axis.images) == 4
    assert loads.models == [str(a), str(b)]  # exactly 2 loads, in plan order
    assert [r["axes"] for r in axis.manifest["images"]] == [{"model": str(a)}] * 2 + [{"model": str(b)}] * 2
    assert "2 loads" in axis.out
    alone_a, alone_b = run("alone-a", a), run("alone-b", b)
    assert same(by_axes(axis, model=str(a)), in_order(alone_a))
    assert same(by_axes(axis, model=str(b)), in_order(alone_b))
    assert not np.array_equal(in_order(alone_a)[0], in_order(alone_b)[0])  # the models differ

    # Each image says which model made it, and --reproduce of one from the middle rebuilds only it.
    middle = next(r for r in axis.manifest["images"] if r["axes"]["model"] == str(b) and r["seed"] == 0)
    embedded = json.loads(_text_chunk(axis.folder / middle["file"], "job"))
    assert embedded["axes"] == {"model": str(b)}
    assert f"Model: {b}" in _text_chunk(axis.folder / middle["file"], "parameters")
    loads.models.clear()
    reproduced = recipe_runner_cli("--reproduce", axis.folder / middle["file"])
    assert reproduced.code == 0, reproduced.err
    assert "pixel-identical" in reproduced.out
    assert loads.models == [str(b)]

    # Adding a model to the axis makes only its images and loads only it; then nothing is loaded.
    loads.models.clear()
    before = {f: (axis.folder / f).stat().st_mtime_ns for f in axis.images}
    third = run("models", a, axes=f"[matrix.axes]\nmodel = [{toml(a)}, {toml(b)}, {toml(a)}]")
    assert third.code == 2 and "listed twice" in third.err  # the same model twice is the same job twice
    grown = run("models", a, axes=f'[matrix.axes]\nmodel = [{toml(a)}, {toml(b)}, {{ id = {toml(a)}, dtype = "bfloat16" }}]')
    assert grown.code == 0, grown.err
    assert "2 new, 0 regenerated, 4 unchanged" in grown.out
    assert loads.models == [str(a)]
    assert {f: (axis.folder / f).stat().st_mtime_ns for f in axis.images} == before
    loads.models.clear()
    again = run("models", a, axes=f'[matrix.axes]\nmodel = [{toml(a)}, {toml(b)}, {{ id = {toml(a)}, dtype = "bfloat16" }}]')
    assert again.code == 0, again.err
    assert "nothing to do, nothing loaded" in again.out
    assert loads.models == []


def _text_chunk(path: Path, key: str) -> str:
    from PIL import Image

    with Image.open(path) as image:
        return image.text[key]


@pytest.mark.slow
def test_a_vae_axis_loads_the_model_once_and_equals_single_vae_runs(run, loads, recipe_runner_cli, recipe_runner_tiny_sd15,
                                                                    recipe_runner_tiny_vae):
    model, vae = recipe_runner_tiny_sd15, recipe_runner_tiny_vae
    # The other VAE first: going back to "default" loads the model's own VAE by itself.
    axis = run("vaes", model, axes=f'[matrix.axes]\ncomponents.vae = [{toml(vae)}, "default"]')
    assert axis.code == 0, axis.err
    assert loads.models == [str(model)]  # one base load
    assert [e["how"] for e in axis.manifest["timings"]["pipelines"]] == ["loaded", "switched"]
    plain = run("plain", model)
    swapped = run("with-vae", model, extra=f"[components.vae]\nid = {toml(vae)}")
    assert same(by_axes(axis, components__vae="default"), in_order(plain))
    assert same(by_axes(axis, components__vae=str(vae)), in_order(swapped))
    assert not same(in_order(plain), in_order(swapped))

    # The grid labels the axis by short names; --compare pairs the images by the axis values
    # (here against the same axis written the other way round: every pair identical).
    from recipe_runner.views import grid

    [sheet] = grid.sheets_for(axis.folder, axis.manifest)
    assert sheet.columns == ["seed 0", "seed 1"] and sheet.rows == [f"vae = {vae.name}", "vae = default"]
    reversed_axis = run("vaes-reversed", model, axes=f'[matrix.axes]\ncomponents.vae = ["default", {toml(vae)}]')
    assert reversed_axis.code == 0, reversed_axis.err
    compared = recipe_runner_cli("--compare", axis.folder, reversed_axis.folder, "--out", axis.folder.parent / "report")
    assert compared.code == 0, compared.out + compared.err
    report = json.loads((axis.folder.parent / "report" / "compare.json").read_text())
    assert sorted(p["label"] for p in report["pairs"]) == sorted(
        f"{prompt} · seed {seed} · vae = {v}" for prompt in ["a red fox in the snow"] for seed in (0, 1)
        for v in (vae.name, "default"))
    assert {p["status"] for p in report["pairs"]} == {"identical"}


@pytest.mark.slow
def test_a_lora_axis_and_its_scales_equal_separate_runs(run, loads, recipe_runner_tiny_sd15, tiny_lora):
    model = recipe_runner_tiny_sd15
    axes = f'[matrix.axes]\nlora = ["none", {{ id = {toml(tiny_lora)} }}]\nlora_scale = [0.0, 0.5, 1.0]'
    axis = run("loras", model, "[0]", axes)
    assert axis.code == 0, axis.err
    # 6 cells; the three "none" cells are one job (no adapter: the scale changes nothing), made once
    assert len(axis.manifest["images"]) == 6 and len(axis.images) == 4 and loads.models == [str(model)]
    assert "4 new, 0 regenerated, 0 unchanged, 2 shown from an equal job; made 4" in axis.out
    none = [r for r in axis.manifest["images"] if r["axes"]["lora"] == "none"]
    assert len({r["file"] for r in none}) == 1 and {r["status"] for r in none} == {"done"}
    assert [r.get("same_as") for r in none] == [None, none[0]["index"], none[0]["index"]]
    plain_run_cards = (axis.folder / "index.html").read_text().count(f'src="{none[0]["file"]}"')
    assert plain_run_cards == 3  # the gallery shows it in each of its cells
    plain = in_order(run("plain", model, "[0]"))
    for scale in (0.5, 1.0):
        alone = run(f"lora-{scale}", model, "[0]",
                    extra=f"[optimizations.lora]\nadapters = [{{ id = {toml(tiny_lora)}, scale = {scale} }}]")
        assert same(by_axes(axis, lora={"id": str(tiny_lora)}, lora_scale=scale), in_order(alone))
        assert not same(in_order(alone), plain)
    for scale in (0.0, 0.5, 1.0):  # no adapter: the scale changes nothing
        assert same(by_axes(axis, lora="none", lora_scale=scale), plain)
    zero = by_axes(axis, lora={"id": str(tiny_lora)}, lora_scale=0.0)[0]
    assert np.abs(zero.astype(int) - plain[0].astype(int)).max() <= 1  # scale 0: no LoRA, to float rounding

    # lora_scale alone weights the adapters of [optimizations.lora].
    loads.models.clear()
    fixed = run("fixed-lora", model, "[0]", "[matrix.axes]\nlora_scale = [0.5, 1.0]",
                f"[optimizations.lora]\nadapters = [{{ id = {toml(tiny_lora)}, scale = 2.0 }}]")
    assert fixed.code == 0, fixed.err
    assert loads.models == [str(model)]
    assert same(by_axes(fixed, lora_scale=0.5), by_axes(axis, lora={"id": str(tiny_lora)}, lora_scale=1.0))


@pytest.mark.slow
def test_an_optimization_axis_measures_pixels_and_time_in_one_run(run, loads, recipe_runner_tiny_sd15):
    model = recipe_runner_tiny_sd15
    axes = '[matrix.axes]\noptimizations.attention_slicing = [false, { slice_size = "max" }]'
    axis = run("slicing", model, axes=axes)
    assert axis.code == 0, axis.err
    assert loads.models == [str(model)]  # switched on the loaded pipeline
    off = by_axes(axis, optimizations__attention_slicing=False)
    on = by_axes(axis, optimizations__attention_slicing={"slice_size": "max"})
    plain = in_order(run("plain", model))
    assert same(off, plain)
    for x, y in zip(on, plain):  # the plugin's documented tolerance: float rounding
        diff = np.abs(x.astype(int) - y.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() <= 0.001
    assert all(isinstance(r["seconds"], float) and r["seconds"] > 0 for r in axis.manifest["images"])
    assert axis.manifest["optimizations"]["attention_slicing"]["status"] == "applied"


@pytest.mark.slow
def test_the_dry_run_prints_the_load_order_without_torch(recipe_runner_write_recipe, recipe_runner_tiny_sd15,
                                                         tiny_sd15_other, recipe_runner_tiny_vae, tiny_lora):
    import subprocess
    import sys

    from tests.conftest import REPO

    text = RECIPE.format(name="plan", model=toml(recipe_runner_tiny_sd15), seeds="[0, 1]", extra="", axes=f"""
[matrix.axes]
lora = ["none", {{ id = {toml(tiny_lora)}, name = "fox" }}]
model = [{toml(recipe_runner_tiny_sd15)}, {toml(tiny_sd15_other)}]
components.vae = ["default", {toml(recipe_runner_tiny_vae)}]
guidance_scale = [5.0, 7.5]
""")
    path = recipe_runner_write_recipe(text)
    code = ("import sys; from recipe_runner.cli.main import main; code = main([sys.argv[1], '--dry-run']); "
            "print('heavy', sorted({'torch', 'diffusers'} & set(sys.modules)), code)")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    out = proc.stdout
    assert out.strip().splitlines()[-1] == "heavy [] 0", out + proc.stderr
    assert "jobs           32 in 16 batches" in out
    order = [line.split(None, 2) for line in out.splitlines() if line.lstrip()[:2] in {f"{i}." for i in range(1, 10)}]
    steps = [(step[1], step[2].split("  ")[0]) for step in order]
    a, b, vae = recipe_runner_tiny_sd15.name, tiny_sd15_other.name, recipe_runner_tiny_vae.name
    assert "2 loads, 6 switches, in plan order" in out
    assert steps == [  # model outermost, then components, then LoRA
        ("load", f"model {a}, components.vae default, lora none"),
        ("switch", f"model {a}, components.vae default, lora fox"),
        ("switch", f"model {a}, components.vae {vae}, lora none"),
        ("switch", f"model {a}, components.vae {vae}, lora fox"),
        ("load", f"model {b}, components.vae default, lora none"),
        ("switch", f"model {b}, components.vae default, lora fox"),
        ("switch", f"model {b}, components.vae {vae}, lora none"),
        ("switch", f"model {b}, components.vae {vae}, lora fox"),
    ], out


@pytest.mark.parametrize("axes, extra, where, message", [
    ("model = [3]", "", "matrix.axes.model.0", "expected a model id"),
    ('model = [{ id = "x", dtype = "float64" }]', "", "matrix.axes.model.0.dtype", "expected"),
    ('model = ["./no-such-model"]', "", "matrix.axes.model.0", "no such"),
    ('components.vea = ["."]', "", "matrix.axes.components.vea.0", "has no component 'vea' (did you mean 'vae'?)"),
    ('lora = [{ id = "a.safetensors" }]', '[optimizations.lora]\nadapters = [{ id = "b.safetensors" }]',
     "optimizations.lora", "a lora axis lists the adapters itself"),
    ("lora_scale = [0.5, 1.0]", "", "matrix.axes.lora_scale", "the recipe loads none"),
    ('lora = ["none", { id = "a.safetensors", scael = 1 }]', "", "matrix.axes.lora.1.0.scael", "did you mean 'scale'"),
    ("optimizations.atention_slicing = [true, false]", "", "matrix.axes.optimizations.atention_slicing",
     "did you mean 'attention_slicing'"),
    ('optimizations.attention_slicing = [{ slice_size = 0 }]', "", "matrix.axes.optimizations.attention_slicing.0.slice_size", ""),
])
def test_bad_axis_values_never_run(recipe_runner_cli, recipe_runner_write_recipe, recipe_runner_tiny_sd15, axes, extra,
                                   where, message):
    text = RECIPE.format(name="bad", model=toml(recipe_runner_tiny_sd15), seeds="[0]", axes="[matrix.axes]\n" + axes,
                         extra=extra)
    result = recipe_runner_cli(recipe_runner_write_recipe(text), "--dry-run")
    assert result.code == 2, result.out
    assert where in result.err and message in result.err, result.err


def test_distributed_ranks_take_whole_models_where_the_counts_allow():
    from recipe_runner.plan.batches import plan
    from recipe_runner.plan.matrix import Job
    from recipe_runner.running.distributed import shard

    def jobs(models: list[str], seeds: int) -> list[Job]:
        return [Job(i * seeds + s, "p", s, axes={"model": m}) for i, m in enumerate(models) for s in range(seeds)]

    def models_of(share: list[Any]) -> list[str]:
        return sorted({j.axes["model"] for b in share for j in b.jobs})

    batches = plan(jobs(["a", "b", "c", "d"], 4), 2)
    shares = shard(batches, 2)
    assert [models_of(s) for s in shares] == [["a", "c"], ["b", "d"]]
    assert sorted(b.index for s in shares for b in s) == list(range(len(batches)))  # each batch once
    assert [b.index for b in shares[0]] == sorted(b.index for b in shares[0])  # in plan order
    uneven = shard(plan(jobs(["a", "b", "c"], 4), 2), 2)
    assert [models_of(s) for s in uneven] == [["a", "c"], ["b"]]  # no model on two ranks
    few = shard(plan(jobs(["a", "b"], 8), 2), 4)  # more ranks than models: two ranks per model
    assert [models_of(s) for s in few] == [["a"], ["b"], ["a"], ["b"]]
    assert sorted(len(s) for s in few) == [2, 2, 2, 2]


def test_lock_pins_every_model_of_a_model_axis(recipe_runner_cli, recipe_runner_write_recipe, recipe_runner_tiny_sd15,
                                              tiny_sd15_other, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_sd15_other, other)
    text = RECIPE.format(name="locked", model=toml(recipe_runner_tiny_sd15), seeds="[0]", extra="",
                         axes=f"[matrix.axes]\nmodel = [{toml(recipe_runner_tiny_sd15)}, {toml(other)}]")
    path = recipe_runner_write_recipe(text)
    assert recipe_runner_cli(path, "--lock").code == 0
    pins = json.loads(path.with_suffix(".lock").read_text())["models"]
    assert sorted(pins) == ["matrix.axes.model.0", "matrix.axes.model.1", "model"]
    assert pins["matrix.axes.model.1"]["kind"] == "local"
    assert recipe_runner_cli(path, "--locked", "--dry-run").code == 0
    config = other / "unet" / "config.json"
    config.write_text(config.read_text().replace("{", '{"edited": 1,', 1))
    result = recipe_runner_cli(path, "--locked", "--dry-run")
    assert result.code == 2 and "matrix.axes.model.1: differs from" in result.err and "unet/config.json" in result.err, result.err


@pytest.mark.parametrize("name, steps", [("tiny-axes", "2 loads, 2 switches"), ("warrior-vaes", "1 load, 1 switch")])
def test_the_example_recipes_plan_their_loads(recipe_runner_cli, name, steps):
    from tests.conftest import REPO

    result = recipe_runner_cli(REPO / "recipes" / f"{name}.toml", "--dry-run")
    assert result.code == 0, result.err
    assert f"pipelines      {steps}, in plan order:" in result.out


def test_an_optimization_without_a_switch_makes_a_components_axis_load_per_value(recipe_runner_cli, recipe_runner_write_recipe,
                                                                                recipe_runner_tiny_sd15, recipe_runner_tiny_vae):
    axes = f'[matrix.axes]\ncomponents.vae = ["default", {toml(recipe_runner_tiny_vae)}]'
    plain = RECIPE.format(name="swap", model=toml(recipe_runner_tiny_sd15), seeds="[0]", axes=axes, extra="")
    swapped = recipe_runner_cli(recipe_runner_write_recipe(plain, "swap.toml"), "--dry-run")
    assert "pipelines      1 load, 1 switch, in plan order:" in swapped.out, swapped.out
    fixed = plain.replace('name = "swap"', 'name = "fixed"') + "[optimizations]\nchannels_last = true\n"
    loaded = recipe_runner_cli(recipe_runner_write_recipe(fixed, "fixed.toml"), "--dry-run")
    assert "pipelines      2 loads, in plan order:" in loaded.out, loaded.out  # channels_last has no switch


def test_zip_mode_pairs_the_i_th_model_with_the_i_th_prompt(recipe_runner_write_recipe, recipe_runner_tiny_sd15,
                                                            tiny_sd15_other):
    from recipe_runner.plugin_api.manager import load_plugins
    from recipe_runner.running.prepare import Options, prepare

    text = RECIPE.format(name="zipped", model=toml(recipe_runner_tiny_sd15), seeds="[0, 1, 2]", extra="",
                         axes=f'mode = "zip"\n[matrix.axes]\nmodel = [{toml(recipe_runner_tiny_sd15)}, '
                              f'{toml(tiny_sd15_other)}, {toml(recipe_runner_tiny_sd15)}]')
    text = text.replace('prompts = ["a red fox in the snow"]', 'prompts = ["a fox", "a cat", "a dog"]')
    prepared = prepare(recipe_runner_write_recipe(text), [], load_plugins([]), Options())
    assert [(j.prompt, j.axes["model"]) for j in prepared.jobs] == [
        ("a fox", str(recipe_runner_tiny_sd15)), ("a cat", str(tiny_sd15_other)), ("a dog", str(recipe_runner_tiny_sd15))]
    assert [len(v.jobs) for v in prepared.variants] == [2, 1]  # the first model's jobs share its pipeline


def test_a_hub_model_not_loaded_yet_is_keyed_with_the_commit_its_revision_points_at(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from recipe_runner.recipe.model import ModelSpec
    from recipe_runner.running.session import revision_before_loading

    commit = "0123456789abcdef0123456789abcdef01234567"
    refs = tmp_path / "models--org--model" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert revision_before_loading(ModelSpec(id="org/model")) == commit  # main, as the cache last saw it
    pinned = "f" * 40
    assert revision_before_loading(ModelSpec(id="org/model", revision=pinned)) == pinned
    assert revision_before_loading(ModelSpec(id="org/other", revision="v2")) == "v2"  # not cached: as asked


def test_a_missing_adapter_of_a_lora_axis_stops_the_run_before_anything_loads(run, loads, recipe_runner_tiny_sd15, tmp_path):
    result = run("missing", recipe_runner_tiny_sd15, "[0]", '[matrix.axes]\nlora = ["none", { id = "gone.safetensors" }]')
    assert result.code == 2, result.err
    assert "matrix.axes.lora.1" in result.err and "no such file" in result.err, result.err
    assert loads.models == [] and not result.images


class Alive:
    """At each load, which pipelines loaded before it are still in memory."""

    def __init__(self) -> None:
        self.refs: list[Any] = []
        self.alive_at_load: list[int] = []

    @hookimpl
    def pipeline_ready(self, pipe, recipe, context):
        import gc
        import weakref

        gc.collect()
        self.alive_at_load.append(sum(ref() is not None for ref in self.refs))
        self.refs.append(weakref.ref(pipe))


@pytest.mark.slow
@pytest.mark.parametrize("keep, alive", [("false", [0, 0]), ("true", [0, 1])])
def test_the_previous_model_is_released_before_the_next_loads_unless_kept(run, recipe_runner_register_plugin,
                                                                         recipe_runner_tiny_sd15, tiny_sd15_other,
                                                                         keep, alive):
    probe = recipe_runner_register_plugin(Alive(), "alive")
    axes = f"[matrix.axes]\nmodel = [{toml(recipe_runner_tiny_sd15)}, {toml(tiny_sd15_other)}]"
    result = run(f"keep-{keep}", recipe_runner_tiny_sd15, "[0]", axes, "keep_models = " + keep)
    assert result.code == 0, result.err
    assert probe.alive_at_load == alive
