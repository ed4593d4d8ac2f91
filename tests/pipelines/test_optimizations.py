"""Built-in optimizations on the tiny pipelines, on the CPU: each runs, is recorded in the
manifest, and its images stay within a stated tolerance of the plain run (exact where the
technique is exact); the ones this machine cannot run are refused with exit 2 naming the plugin,
or skipped with ``required = false``."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

from recipe_runner.api import Unsupported
from tests.conftest import image_files, manifest_of, pixels, run_record

RECIPE = '''
[model]
id = "tiny:{kind}"
device = "cpu"
[params]
num_inference_steps = {steps}
guidance_scale = {guidance}
[matrix]
prompts = ["a cat on a roof", "pixel-art coffee shop"]
seeds = [0]
[run]
batch_size = 2
'''


@pytest.fixture
def run(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    """Run a recipe with extra ``[optimizations]`` lines; returns (code, err, images, manifest)."""

    def go(name: str, optimizations: str = "", kind: str = "sd15", steps: int = 3, guidance: float = 7.5,
           extra: str = ""):
        text = RECIPE.format(kind=kind, steps=steps, guidance=guidance) + extra
        if optimizations:
            text += "[optimizations]\n" + optimizations + "\n"
        result = recipe_runner_cli(recipe_runner_write_recipe(text, f"{name}.toml"), "--out", tmp_path / "out", "--no-progress")
        folder = tmp_path / "out" / name
        if result.code != 0:
            return SimpleNamespace(code=result.code, err=result.err, images=[], manifest=None)
        images = [pixels(p).astype(int) for p in image_files(folder)]
        manifest = run_record(folder)  # with its timings (.recipe-runner/run.json)
        return SimpleNamespace(code=0, err=result.err, images=images, manifest=manifest)

    return go


def differences(a, b) -> tuple[int, float]:
    """Worst pixel level difference and the worst fraction of differing pixels, over the images."""
    assert len(a) == len(b) == 2
    diffs = [np.abs(x - y) for x, y in zip(a, b)]
    return max(int(d.max()) for d in diffs), max(float((d > 0).mean()) for d in diffs)


# Exact: the same arithmetic in the same order.  Rounding: the same arithmetic, other kernels or
# order, measured at most 1 level on fewer than 0.1% of pixels on the tiny SD pipeline.
ROUNDING = (1, 0.001)


@pytest.mark.parametrize("name, table, bound", [
    ("attention_slicing", 'attention_slicing = { slice_size = "max" }', ROUNDING),
    pytest.param("vae_slicing", "vae_slicing = true", ROUNDING, marks=pytest.mark.slow),  # one image per decode, not 2
    pytest.param("channels_last", "channels_last = true", ROUNDING, marks=pytest.mark.slow),
    pytest.param("fuse_qkv", "fuse_qkv = true", ROUNDING, marks=pytest.mark.slow),
    # dynamo's graph capture (aot_eager) of the repeated blocks: inductor's C++ compilation takes
    # minutes on a CPU; the benchmark measures it (bench/optimizations.py)
    pytest.param("compile", 'compile = { backend = "aot_eager", regional = true }', ROUNDING, marks=pytest.mark.slow),
])
def test_optimization_runs_within_tolerance_of_the_plain_run(run, name, table, bound):
    plain = run("plain")
    optimized = run(name, table)
    assert optimized.code == 0, optimized.err
    assert optimized.manifest["optimizations"][name]["status"] == "applied"
    level, fraction = differences(plain.images, optimized.images)
    assert level <= bound[0] and fraction <= bound[1], (level, fraction)


@pytest.mark.slow
def test_compile_reports_its_warm_up_apart_from_batch_times(run, tmp_path):
    result = run("compiled", 'compile = { backend = "aot_eager", regional = true }')
    assert result.code == 0, result.err
    record = result.manifest["optimizations"]["compile"]
    assert record["compiled"] == ["unet"] and record["warmup_seconds"] > 0
    committed = manifest_of(tmp_path / "out" / "compiled")["optimizations"]["compile"]  # a timing: this machine's
    assert "warmup_seconds" not in committed and committed["compiled"] == ["unet"]
    assert [b["size"] for b in result.manifest["timings"]["batches"]] == [2]


@pytest.mark.slow
def test_vae_tiling_gives_the_pixels_of_the_diffusers_code(run, recipe_runner_tiny_sd15):
    """Tiling blends overlapping tiles, so it is not close to the plain run on a random VAE
    (whose decoder depends on all its context): the promise is the diffusers code's pixels."""
    import torch
    from diffusers import StableDiffusionPipeline

    tiled = run("tiled", "vae_tiling = true")
    assert tiled.code == 0, tiled.err
    pipe = StableDiffusionPipeline.from_pretrained(recipe_runner_tiny_sd15, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.vae.enable_tiling()
    out = pipe(["a cat on a roof", "pixel-art coffee shop"], num_inference_steps=3, guidance_scale=7.5,
               generator=[torch.Generator("cpu").manual_seed(0) for _ in range(2)])
    expected = [np.asarray(im.convert("RGB")).astype(int) for im in out.images]
    assert differences(expected, tiled.images) == (0, 0.0)
    plain = run("plain")
    assert differences(plain.images, tiled.images)[0] > 0  # tiling really happened (32-pixel tiles)


@pytest.mark.slow
def test_vae_tiling_with_a_tile_as_large_as_the_image_changes_nothing(run):
    plain = run("plain")
    tiled = run("tiled", "vae_tiling = { tile_sample_min_size = 64 }")
    assert differences(plain.images, tiled.images) == (0, 0.0)


@pytest.mark.parametrize("table, bound", [
    ('{ type = "first_block", threshold = 1.0 }', (6, 0.6)),
    pytest.param('{ type = "taylorseer", cache_interval = 2, disable_cache_before_step = 1, '
                 'cache_identifiers = ["^transformer_blocks\\\\.\\\\d+\\\\.attn1$"] }', (6, 0.6), marks=pytest.mark.slow),
    pytest.param('{ type = "mag", mag_ratios = [1.0, 1.0, 1.0, 1.0] }', (6, 0.6), marks=pytest.mark.slow),
    pytest.param('{ type = "pyramid_attention_broadcast", spatial_attention_block_skip_range = 2 }', (6, 0.6),
                 marks=pytest.mark.slow),
    ('{ type = "faster" }', (6, 0.6)),
])
def test_cache_hooks_on_a_transformer_pipeline_stay_close_to_the_plain_run(run, table, bound):
    """Caching reuses earlier steps' results: approximate by design. Measured on the tiny CogView4
    pipeline, 4 steps: at most 5 levels off, on up to 46% of the pixels; the bound is 6 levels on
    60%. Each type must really skip work: the images differ from the plain run."""
    plain = run("plain", kind="cogview4", steps=4, guidance=1.0)
    cached = run("cached", "cache = " + table, kind="cogview4", steps=4, guidance=1.0)
    assert cached.code == 0, cached.err
    assert cached.manifest["optimizations"]["cache"]["status"] == "applied"
    level, fraction = differences(plain.images, cached.images)
    assert 0 < level <= bound[0] and fraction <= bound[1], (level, fraction)


def test_cache_on_a_unet_pipeline_is_refused_before_loading(run):
    result = run("unet-cache", "cache = true")
    assert result.code == 2
    assert "optimizations.cache: cannot run here: diffusers' cache hooks need a transformer" in result.err


def test_cache_settings_of_another_type_are_an_error(run):
    result = run("bad-cache", 'cache = { type = "first_block", cache_interval = 2 }', kind="cogview4")
    assert result.code == 2
    assert "optimizations.cache" in result.err and "cache_interval is not a setting of type 'first_block'" in result.err


# --- what this CPU machine cannot run ------------------------------------------------------------

@pytest.mark.parametrize("table, reason", [
    ("xformers = true", "xformers"),
    ('offload = { strategy = "model" }', "this run's device is 'cpu'"),
    ('quantization = { backend = "bitsandbytes_4bit" }', "needs a CUDA GPU"),
    ('attention_backend = { backend = "flash" }', "attention_backend"),
])
def test_what_cannot_run_here_stops_with_exit_2_naming_the_plugin(run, table, reason):
    result = run("refused", table)
    name = table.split(" ")[0]
    assert result.code == 2, result.err
    assert f"optimizations.{name}: cannot run here" in result.err and reason in result.err
    assert "required = false" in result.err


def test_required_false_skips_with_a_warning_and_records_why(run):
    plain = run("plain")
    result = run("skipped", 'offload = { strategy = "group", required = false }\nxformers = { required = false }')
    assert result.code == 0, result.err
    assert "optimizations.offload: skipped:" in result.err and "optimizations.xformers: skipped:" in result.err
    record = result.manifest["optimizations"]
    assert record["offload"]["status"] == "skipped" and "device is 'cpu'" in record["offload"]["reason"]
    assert record["offload"]["settings"]["strategy"] == "group"
    assert differences(plain.images, result.images) == (0, 0.0)


@pytest.mark.parametrize("tables, message", [
    ('compile = true\noffload = { strategy = "sequential" }', "optimizations.offload: cannot run here: cannot be combined with compile"),
    ('xformers = true\nattention_backend = { backend = "native" }', "optimizations.xformers: cannot run here: cannot be combined with attention_backend"),
    ("attention_slicing = true\nxformers = true", "optimizations.attention_slicing: cannot run here: cannot be combined with xformers"),
    ("attention_slicing = true\nfuse_qkv = true", "optimizations.attention_slicing: cannot run here: cannot be combined with fuse_qkv"),
])
def test_known_bad_combinations_are_refused_before_loading(run, tables, message, monkeypatch):
    from recipe_runner.pipelines import build

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(build, "load_pipeline", no_loading)
    result = run("combination", tables, kind="cogview4")
    assert result.code == 2 and message in result.err, result.err


def context(device="cpu", enabled=(), location="/nowhere"):
    return SimpleNamespace(device=device, enabled=list(enabled), location=location)


def test_offload_decision_on_a_cuda_machine(monkeypatch):
    """The decision logic where this machine cannot run it: the same settings pass on CUDA."""
    from recipe_runner.plugins import offload

    settings = offload.Settings(strategy="sequential")
    offload.check(settings, context("cuda"))
    with pytest.raises(Unsupported, match="device is 'cpu'"):
        offload.check(settings, context("cpu"))
    with pytest.raises(Unsupported, match="compile"):
        offload.check(settings, context("cuda", ["compile"]))
    offload.check(offload.Settings(strategy="model"), context("cuda", ["compile"]))


def test_device_auto_takes_cuda_when_torch_sees_it_and_offload_then_passes(monkeypatch):
    import torch

    from recipe_runner.pipelines.build import detect_device
    from recipe_runner.plugins import offload

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    device = detect_device("auto")
    assert device == "cuda"
    offload.check(offload.Settings(), context(device))


@pytest.mark.parametrize("backend, device, installed, refusal", [
    ("bitsandbytes_4bit", "cpu", {"bitsandbytes"}, "needs a CUDA GPU"),
    ("bitsandbytes_8bit", "cuda", set(), "needs the 'bitsandbytes' package"),
    ("bitsandbytes_8bit", "cuda", {"bitsandbytes"}, None),
    ("torchao", "cpu", set(), "needs the 'torchao' package"),
    ("torchao", "cpu", {"torchao"}, None),
])
def test_quantization_decision(monkeypatch, backend, device, installed, refusal):
    from recipe_runner.plugins import common, quantization

    monkeypatch.setattr(common, "has_package", lambda name: name in installed)
    settings = quantization.Settings(backend=backend)
    if refusal is None:
        quantization.check(settings, context(device))
    else:
        with pytest.raises(Unsupported, match=refusal):
            quantization.check(settings, context(device))


def test_xformers_decision(monkeypatch):
    from recipe_runner.plugins import common, xformers

    monkeypatch.setattr(common, "has_package", lambda name: True)
    xformers.check(xformers.Settings(), context("cuda"))
    with pytest.raises(Unsupported, match="CUDA"):
        xformers.check(xformers.Settings(), context("cpu"))
    monkeypatch.setattr(common, "has_package", lambda name: False)
    with pytest.raises(Unsupported, match="not installed"):
        xformers.check(xformers.Settings(), context("cuda"))


def test_quantization_settings_of_another_backend_are_an_error(run):
    result = run("bad-quant", 'quantization = { backend = "torchao", bnb_4bit_quant_type = "nf4" }')
    assert result.code == 2
    assert "bnb_4bit_quant_type is not a setting of backend 'torchao'" in result.err


# --- LoRA ----------------------------------------------------------------------------------------

def lora_table(path, scale, fuse=False):
    return (f"lora = {{ fuse = {str(fuse).lower()}, adapters = [{{ id = {json.dumps(str(path))}, scale = {scale} }}] }}")


@pytest.mark.slow
def test_lora_changes_the_images_and_scale_zero_is_exactly_the_plain_run(run, tiny_lora):
    plain = run("plain")
    loaded = run("lora", lora_table(tiny_lora, 1.0))
    assert loaded.code == 0, loaded.err
    assert loaded.manifest["optimizations"]["lora"]["adapters"] == ["pytorch_lora_weights"]
    assert differences(plain.images, loaded.images)[0] > 8  # the adapter does something
    zero = run("lora-zero", lora_table(tiny_lora, 0.0))
    assert differences(plain.images, zero.images) == (0, 0.0)  # x + 0 * delta == x


@pytest.mark.slow
def test_fused_lora_matches_the_unfused_one_to_float_rounding(run, tiny_lora):
    unfused = run("unfused", lora_table(tiny_lora, 0.7))
    fused = run("fused", lora_table(tiny_lora, 0.7, fuse=True))
    assert fused.code == 0, fused.err
    level, fraction = differences(unfused.images, fused.images)
    assert level <= 1 and fraction <= 0.001, (level, fraction)


def test_lora_path_relative_to_the_recipe_and_a_missing_file(run, tiny_lora, tmp_path):
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "mine.safetensors").write_bytes(tiny_lora.read_bytes())
    ok = run("relative", 'lora = { adapters = [{ id = "loras/mine.safetensors" }] }')
    assert ok.code == 0, ok.err
    assert ok.manifest["optimizations"]["lora"]["adapters"] == ["mine"]
    missing = run("missing", 'lora = { adapters = [{ id = "loras/absent.safetensors" }] }')
    assert missing.code == 2 and "optimizations.lora: cannot run here: adapters[0].id: no such file" in missing.err


def test_lora_ids_expand_variables_and_name_an_unset_one(run, tiny_lora, tmp_path, monkeypatch):
    """A team's recipe names its adapters as its models: ``${TEAM_LORAS}/...`` on every machine."""
    monkeypatch.setenv("TEAM_LORAS", str(tiny_lora.parent))
    ok = run("from-var", 'lora = { adapters = [{ id = "${TEAM_LORAS}/pytorch_lora_weights.safetensors" }] }')
    assert ok.code == 0, ok.err
    assert ok.manifest["optimizations"]["lora"]["adapters"] == ["pytorch_lora_weights"]
    monkeypatch.delenv("TEAM_LORAS")
    unset = run("unset-var", 'lora = { adapters = [{ id = "${TEAM_LORAS}/pytorch_lora_weights.safetensors" }] }')
    assert unset.code == 2 and "adapters[0].id: TEAM_LORAS is not set" in unset.err, unset.err


def test_quantization_that_cannot_configure_loading_is_refused_or_skipped(run, monkeypatch):
    """torchao present according to the check, but diffusers cannot build the config (here: the
    package is not really there): exit 2 naming the plugin, or a skip with required = false."""
    from recipe_runner.plugins import common

    monkeypatch.setattr(common, "has_package", lambda name: True)
    refused = run("quant", 'quantization = { backend = "torchao" }')
    assert refused.code == 2 and "optimizations.quantization: cannot run here:" in refused.err, refused.err
    skipped = run("quant-skip", 'quantization = { backend = "torchao", required = false }')
    assert skipped.code == 0, skipped.err
    assert skipped.manifest["optimizations"]["quantization"]["status"] == "skipped"


@pytest.mark.parametrize("kind, table, message", [
    ("sd3", "cache = true", "the transformer (SD3Transformer2DModel) has no cache hooks (enable_cache)"),
    ("cogview4", 'attention_backend = { backend = "native" }',
     "the transformer (CogView4Transformer2DModel) does not use diffusers' attention dispatcher"),
    ("cogview4", "fuse_qkv = true", "the transformer (CogView4Transformer2DModel) has no fused QKV projections"),
])
def test_what_a_loaded_pipeline_cannot_do_stops_with_exit_2(run, kind, table, message):
    result = run("cannot", table, kind=kind, guidance=1.0)
    assert result.code == 2 and message in result.err, result.err


@pytest.mark.slow
def test_compile_warns_when_the_plan_has_batches_of_two_sizes(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    text = RECIPE.format(kind="sd15", steps=2, guidance=7.5).replace("seeds = [0]", "seeds = [0, 1]")
    table = '[optimizations]\ncompile = { backend = "aot_eager", regional = true, warmup = false }\n'
    even = recipe_runner_cli(recipe_runner_write_recipe(text + table, "even.toml"), "--out", tmp_path / "out", "--no-progress")
    assert even.code == 0 and "batches of" not in even.err, even.err  # 4 jobs in batches of 2
    uneven = recipe_runner_cli(recipe_runner_write_recipe(text.replace("batch_size = 2", "batch_size = 3") + table, "uneven.toml"),
                 "--out", tmp_path / "out", "--no-progress")
    assert uneven.code == 0, uneven.err
    assert "optimizations.compile: batches of 1 and 3 images: each new size compiles again" in uneven.err


@pytest.mark.slow
def test_compile_keeps_its_artifacts_in_the_cache_folder_for_the_next_run(run, monkeypatch, recipe_runner_cache):
    """The first run saves torch's compiled artifacts under the recipe-runner cache folder after the
    warm-up; the second run of the same model and settings loads them before compiling."""
    import torch

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    loaded: list[bytes] = []
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (b"compiled kernels", None))
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", lambda data: loaded.append(data))
    table = 'compile = { backend = "aot_eager", regional = true }'
    first = run("compile-cold", table)
    assert first.code == 0, first.err
    assert first.manifest["optimizations"]["compile"]["cache"] == "saved" and loaded == []
    saved = list((recipe_runner_cache / "compile").glob("artifacts-*.bin"))
    assert len(saved) == 1 and saved[0].read_bytes() == b"compiled kernels"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(recipe_runner_cache / "compile" / "inductor")
    second = run("compile-warm", table)
    assert second.manifest["optimizations"]["compile"]["cache"] == "loaded" and loaded == [b"compiled kernels"]
    off = run("compile-off", table.replace("regional = true", "regional = true, cache = false"))
    assert off.manifest["optimizations"]["compile"]["cache"] == "off" and len(loaded) == 1


def test_compile_artifacts_are_keyed_by_what_compiles_them():
    from recipe_runner.plugins import compile as plugin

    def path(settings=None, **context):
        defaults = dict(device="cpu", dtype="float32", location="/models/a", task="text-to-image",
                        recipe=SimpleNamespace(run=SimpleNamespace(batch_size=2)))
        return plugin.artifacts_path(settings or plugin.Settings(), SimpleNamespace(**{**defaults, **context}), "unet")

    assert path() == path(plugin.Settings(warmup=True, cache=True, required=False))  # no effect on kernels
    others = [path(plugin.Settings(mode="max-autotune")), path(location="/models/b"), path(dtype="float16"),
              path(recipe=SimpleNamespace(run=SimpleNamespace(batch_size=4))), path(device="cuda")]
    assert len({path(), *others}) == 1 + len(others)
