"""Matrices end to end, grid.png, index.html, image metadata, --reproduce, lock files, --schema."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from recipe_runner import hookimpl
from recipe_runner.plugin_api import manager as plugins
from tests.conftest import REPO, chromium, image_files, needs_chromium, pixels, run_subprocess, tiny_recipe

VARS_AXES = '''
[model]
id = "tiny:sd15"
device = "cpu"
[params]
num_inference_steps = 2
negative_prompt = "blurry {who}"
height = 64
width = 64
[matrix]
prompts = ["portrait photo of {who}"]
seeds = [0, 1]
[matrix.vars]
who = ["an old chief", "a young chief"]
[matrix.axes]
guidance_scale = [6.0, 8.0]
[run]
batch_size = 4
'''


@pytest.fixture(scope="module")
def matrix_run(tmp_path_factory, recipe_runner_cache):
    """One run of 2 vars x 2 guidance scales x 2 seeds, shared by the tests that read its outputs."""
    from recipe_runner.cli.main import main

    folder = tmp_path_factory.mktemp("matrix")
    recipe = folder / "va.toml"
    recipe.write_text(VARS_AXES)
    assert main([str(recipe), "--out", str(folder / "out"), "--no-progress"]) == 0
    return folder / "out" / "va"


def test_vars_times_axes_times_seeds_gives_eight_images_with_their_prompt_vars_and_params(matrix_run):
    manifest = json.loads((matrix_run / "manifest.json").read_text())
    images = manifest["images"]
    assert len(images) == 8 and len(image_files(matrix_run)) == 8
    expected = [(g, who, s) for g in (6.0, 8.0) for who in ("an old chief", "a young chief") for s in (0, 1)]
    got = [(r["params"]["guidance_scale"], r["vars"]["who"], r["seed"]) for r in images]
    assert got == expected
    for record in images:
        who = record["vars"]["who"]
        assert record["prompt"] == f"portrait photo of {who}"
        assert record["params"]["negative_prompt"] == f"blurry {who}"
        assert record["params"]["num_inference_steps"] == 2
        assert record["status"] == "done"
    assert [r["batch"] for r in images] == [0, 0, 0, 0, 1, 1, 1, 1]  # guidance splits batches; negative prompts do not
    # the manifest holds the resolved recipe, the template and not the renderings
    assert manifest["recipe"]["matrix"]["prompts"] == ["portrait photo of {who}"]


def test_grid_has_one_labelled_tile_per_image(matrix_run):
    from PIL import Image

    from recipe_runner.views import grid

    manifest = json.loads((matrix_run / "manifest.json").read_text())
    [(sheet, image)] = grid.compose(matrix_run, manifest)
    assert sheet.file == "grid.png"
    with Image.open(matrix_run / "grid.png") as on_disk_image:
        on_disk = np.asarray(on_disk_image.convert("RGB"))
    assert np.array_equal(on_disk, np.asarray(image))
    assert on_disk.shape[1::-1] == sheet.size
    assert (len(sheet.columns), len(sheet.rows)) == (2, 4)  # columns: seeds; rows: guidance x who
    assert sheet.tile[0] >= grid.MIN_TILE and sheet.tile[1] >= grid.MIN_TILE  # 64x64 images are upscaled
    assert sheet.left > 0 and sheet.header > 0
    assert sheet.columns == ["seed 0", "seed 1"]
    assert sheet.rows[0] == "guidance_scale = 6.0\nwho = an old chief"  # matrix order: the axis, then the var
    assert sorted(c.record["file"] for c in sheet.cells) == sorted(r["file"] for r in manifest["images"])
    for cell in sheet.cells:
        tile = on_disk[cell.y:cell.y + cell.h, cell.x:cell.x + cell.w]
        with Image.open(matrix_run / cell.record["file"]) as source:
            expected = np.asarray(source.convert("RGB").resize((cell.w, cell.h), Image.Resampling.NEAREST))
        assert np.array_equal(tile, expected), cell.record["file"]
        label = on_disk[cell.y + 2: cell.y + cell.h, : sheet.left]
        assert (label < 128).any(), f"row label of {cell.record['file']} is blank"
        header = on_disk[cell.y - sheet.header: cell.y, cell.x: cell.x + cell.w]
        assert (header < 128).any(), f"column label of {cell.record['file']} is blank"


def test_tile_size_keeps_tiles_legible():
    from recipe_runner.views import grid

    assert grid.tile_size(64, 64) == (grid.MIN_TILE, grid.MIN_TILE)
    assert grid.tile_size(1024, 512) == (grid.MAX_TILE, grid.MAX_TILE // 2)
    assert grid.tile_size(200, 220) == (200, 220)


def test_index_html_lists_every_image_with_its_prompt_seed_vars_and_params(matrix_run):
    from html.parser import HTMLParser

    page = (matrix_run / "index.html").read_text()
    manifest = json.loads((matrix_run / "manifest.json").read_text())

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.srcs, self.external = [], []

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "img":
                self.srcs.append(attrs["src"])
            for key in ("src", "href"):
                if attrs.get(key, "").startswith(("http:", "https:", "//")):
                    self.external.append(attrs[key])
            if tag == "script":  # one inline script (the filter), nothing loaded
                assert "src" not in attrs

    parser = Collect()
    parser.feed(page)
    assert parser.srcs == ["grid.png"] + [r["file"] for r in manifest["images"]]
    assert page.count("<script") == 1 and 'loading="lazy"' in page
    assert parser.external == []
    for record in manifest["images"]:
        assert f'id="job-{record["index"]}"' in page
    assert page.count(">portrait photo of an old chief<") == 4  # the caption of each
    assert page.count('alt="portrait photo of an old chief"') == 4
    # the full job beside each image, what varies across the run marked
    assert "<dt class=v>{who}</dt><dd class=v>a young chief</dd>" in page
    assert "<dt class=v>guidance_scale</dt><dd class=v>8.0</dd>" in page and "<dt class=v>seed</dt><dd class=v>1</dd>" in page
    assert page.count("<dt>num_inference_steps</dt><dd>2</dd>") == 8 + 1  # each job, and the constants said once


LOAD_CHECK = """<script>
window.addEventListener("load", function () {
  var imgs = Array.from(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute("data-images", imgs.length);
  document.body.setAttribute("data-loaded", ok.length);
});
</script></body>"""


@pytest.mark.slow
@needs_chromium
def test_headless_chromium_renders_the_gallery_with_every_image_loaded(matrix_run, tmp_path):
    import re

    # a copy beside the page adds a script that counts loaded images; images are lazy-loaded, so
    # the window is tall enough for all of them to be in view
    check = matrix_run / "index-check.html"
    check.write_text((matrix_run / "index.html").read_text().replace("</body>", LOAD_CHECK))
    try:
        dom = chromium(tmp_path / "profile", "--virtual-time-budget=10000", "--window-size=1200,8000", "--dump-dom", check.as_uri())
    finally:
        check.unlink()
    counts = re.search(r'data-images="(\d+)" data-loaded="(\d+)"', dom)
    assert counts, dom[:500]
    assert counts.group(1) == counts.group(2) == "9"  # grid.png and 8 images

    shot = tmp_path / "shot.png"
    chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,1600", (matrix_run / "index.html").as_uri())
    rendered = pixels(shot)
    assert rendered.std() > 20, "the screenshot is blank"
    colourful = (rendered.max(axis=-1).astype(int) - rendered.min(axis=-1)) > 60
    assert colourful.mean() > 0.05, "no image is visible in the screenshot"


def test_a1111_parameters_and_environment_in_each_image(matrix_run):
    from recipe_runner.records.outputs import read_embedded

    record = json.loads((matrix_run / "manifest.json").read_text())["images"][7]
    text = read_embedded(matrix_run / record["file"])
    assert text["parameters"] == (
        "portrait photo of a young chief\n"
        "Negative prompt: blurry a young chief\n"
        "Steps: 2, Sampler: PLMS, CFG scale: 8.0, Seed: 1, Size: 64x64, Model: tiny:sd15")
    env = json.loads(text["environment"])
    assert env["threads"] >= 1 and env["torch"] and env["diffusers"]
    assert "model_revision" in env and Path(env["model_location"]).is_dir()
    assert env["recipe_file"] == "va.toml" and Path(env["recipe_folder"]).is_dir()
    job = json.loads(text["job"])
    assert job["vars"] == {"who": "a young chief"} and job["batch_jobs"] == [4, 5, 6, 7]


def test_metadata_false_writes_bare_images_and_reproduce_refuses_them(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    from recipe_runner.records.outputs import read_embedded

    recipe = recipe_runner_write_recipe(VARS_AXES.replace("guidance_scale = [6.0, 8.0]", "guidance_scale = [6.0]")
                          .replace('who = ["an old chief", "a young chief"]', 'who = ["x"]')
                          .replace("seeds = [0, 1]", "seeds = [0]") + "[output]\nmetadata = false\ngallery = false\n", "bare.toml")
    assert recipe_runner_cli(recipe, "--out", tmp_path / "out").code == 0
    (image,) = image_files(tmp_path / "out" / "bare")
    assert read_embedded(image) == {}
    assert not (tmp_path / "out" / "bare" / "index.html").exists()
    result = recipe_runner_cli("--reproduce", image)
    assert result.code == 2 and "carries no recipe" in result.err


REPRO = tiny_recipe("a lighthouse", "a red barn", seeds=[3, 4], tables='[run]\nbatch_size = 3\n[output]\nformat = "{fmt}"')


class ThreadProbe:
    """Records the CPU thread count each pipeline call runs with."""

    def __init__(self):
        self.threads = []

    @hookimpl
    def before_batch(self, pipe, batch, call_kwargs):
        import torch

        self.threads.append(torch.get_num_threads())


@pytest.mark.slow
def test_reproduce_matches_an_untouched_image_and_catches_one_changed_pixel(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    import torch
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    recipe = recipe_runner_write_recipe(REPRO.format(fmt="png"), "repro.toml")
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the run records 2 threads; --reproduce must use them again
    try:
        assert recipe_runner_cli(recipe, "--out", tmp_path / "out").code == 0
    finally:
        torch.set_num_threads(before)
    folder = tmp_path / "out" / "repro"
    image = next(folder.glob("a-lighthouse-s4-*.png"))  # second in batch 0 of [0, 1, 2]
    probe = ThreadProbe()
    plugins.register(probe)
    try:
        result = recipe_runner_cli("--reproduce", image, "--out", tmp_path / "scratch")
    finally:
        plugins.unregister(probe)
    assert result.code == 0, result.err
    assert "pixel-identical" in result.out
    assert probe.threads == [2] and torch.get_num_threads() == before
    written = image_files(tmp_path / "scratch" / "repro")
    assert [p.name for p in written] == [image.name]  # the whole batch ran, only that image is written
    assert np.array_equal(pixels(written[0]), pixels(image))

    with Image.open(image) as original:
        changed = original.convert("RGB")
        info = PngInfo()
        for key, value in original.text.items():
            info.add_itxt(key, value)
    x, y = 10, 20
    r, g, b = changed.getpixel((x, y))
    changed.putpixel((x, y), ((r + 1) % 256, g, b))
    copy = tmp_path / "changed.png"
    changed.save(copy, pnginfo=info)
    result = recipe_runner_cli("--reproduce", copy)
    assert result.code == 1
    assert "differs: PSNR" in result.out and "1 of 4096 pixels" in result.out


def test_webp_images_carry_the_metadata_in_exif_and_reproduce(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    from recipe_runner.records.outputs import read_embedded

    recipe = recipe_runner_write_recipe(REPRO.format(fmt="webp").replace("seeds = [3, 4]", "seeds = [3]"), "repro-webp.toml")
    assert recipe_runner_cli(recipe, "--out", tmp_path / "out").code == 0
    image = next((tmp_path / "out" / "repro-webp").glob("a-red-barn-s3-*.webp"))
    text = read_embedded(image)
    assert json.loads(text["job"])["prompt"] == "a red barn"
    assert json.loads(text["recipe"])["output"]["format"] == "webp"
    assert text["parameters"].startswith("a red barn\nSteps: 2")
    result = recipe_runner_cli("--reproduce", image)
    assert result.code == 0 and "pixel-identical" in result.out, result.err


def test_zip_mode_and_a_scheduler_axis_end_to_end(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    seen = []

    class SchedulerProbe:
        @hookimpl
        def before_batch(self, pipe, batch, call_kwargs):
            seen.append((type(pipe.scheduler).__name__, call_kwargs["guidance_scale"], len(batch.jobs)))

    probe = SchedulerProbe()
    recipe = recipe_runner_write_recipe('''
        [model]
        id = "tiny:sd15"
        device = "cpu"
        [params]
        num_inference_steps = 2
        [matrix]
        mode = "zip"
        prompts = ["{what} at dawn", "{what} at dusk"]
        seeds = [7, 8]
        [matrix.vars]
        what = ["a fox", "a crow"]
        [matrix.axes]
        guidance_scale = [5.0, 9.0]
        scheduler = ["EulerDiscreteScheduler", { name = "DPMSolverMultistepScheduler", options = { use_karras_sigmas = true } }]
        [run]
        batch_size = 2
    ''', "zipped.toml")
    plugins.register(probe)
    try:
        result = recipe_runner_cli(recipe, "--out", tmp_path / "out")
    finally:
        plugins.unregister(probe)
    assert result.code == 0, result.err
    images = json.loads((tmp_path / "out" / "zipped" / "manifest.json").read_text())["images"]
    assert [(r["prompt"], r["seed"], r["vars"], r["params"]["guidance_scale"], r["scheduler"]) for r in images] == [
        ("a fox at dawn", 7, {"what": "a fox"}, 5.0, "EulerDiscreteScheduler"),
        ("a crow at dusk", 8, {"what": "a crow"}, 9.0, "DPMSolverMultistepScheduler (use_karras_sigmas=true)")]
    assert seen == [("EulerDiscreteScheduler", 5.0, 1), ("DPMSolverMultistepScheduler", 9.0, 1)]


def test_extends_chain_of_three_plus_set_resolves_into_the_manifest_and_a_cycle_is_refused(recipe_runner_cli, tmp_path):
    (tmp_path / "bases").mkdir()
    (tmp_path / "bases" / "root.toml").write_text(textwrap.dedent('''
        description = "root"
        [model]
        id = "tiny:sd15"
        device = "cpu"
        [params]
        num_inference_steps = 3
        guidance_scale = 7.5
        [matrix]
        prompts = ["a", "b"]
        seeds = [1, 2]
    '''))
    (tmp_path / "mid.toml").write_text('extends = "bases/root.toml"\n[params]\nnum_inference_steps = 2\n'
                                       '[output]\ngrid = false\n')
    (tmp_path / "top.toml").write_text('extends = "mid.toml"\nname = "chained"\n[matrix]\nprompts = ["c"]\n')
    result = recipe_runner_cli(tmp_path / "top.toml", "--set", "params.guidance_scale=5", "--set", "matrix.seeds=1",
                 "--out", tmp_path / "out")
    assert result.code == 0, result.err
    manifest = json.loads((tmp_path / "out" / "chained" / "manifest.json").read_text())
    resolved = manifest["recipe"]
    assert resolved["name"] == "chained" and resolved["description"] == "root"
    assert resolved["params"] == {"num_inference_steps": 2, "guidance_scale": 5}
    assert resolved["matrix"]["prompts"] == ["c"] and resolved["matrix"]["seeds"] == [0]
    assert resolved["output"]["grid"] is False and not (tmp_path / "out" / "chained" / "grid.png").exists()
    assert [r["prompt"] for r in manifest["images"]] == ["c"]

    (tmp_path / "bases" / "root.toml").write_text('extends = "../top.toml"\n')
    result = recipe_runner_cli(tmp_path / "top.toml", "--out", tmp_path / "out")
    assert result.code == 2
    assert "extends cycle" in result.err and "top.toml -> " in result.err and "root.toml -> " in result.err


# --- lock files ------------------------------------------------------------------------------------

def test_lock_then_locked_passes_and_a_changed_weight_file_is_refused(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, recipe_runner_tiny_sd15):
    shutil.copytree(recipe_runner_tiny_sd15, tmp_path / "models" / "sd15")
    recipe = recipe_runner_write_recipe('''
        [model]
        id = "./models/sd15"
        device = "cpu"
        [params]
        num_inference_steps = 2
        [matrix]
        prompts = ["a"]
        [output]
        grid = false
    ''', "pinned.toml")
    result = recipe_runner_cli("--lock", recipe)
    assert result.code == 0, result.err
    lock = json.loads((tmp_path / "pinned.lock").read_text())
    entry = lock["models"]["model"]
    assert entry["kind"] == "local" and len(entry["sha256"]) == 64
    assert "unet/diffusion_pytorch_model.safetensors" in entry["files"]
    assert not (tmp_path / "out").exists()  # --lock writes the lock, runs nothing

    result = recipe_runner_cli("--locked", recipe, "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert len(image_files(tmp_path / "out" / "pinned")) == 1

    weights = tmp_path / "models" / "sd15" / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = recipe_runner_cli("--locked", recipe, "--out", tmp_path / "out2")
    assert result.code == 2
    assert "pinned.toml:2: model.id: differs from " in result.err and "pinned.lock: files differ" in result.err
    assert "changed: unet/diffusion_pytorch_model.safetensors" in result.err
    assert not (tmp_path / "out2").exists()

    (tmp_path / "pinned.lock").unlink()
    result = recipe_runner_cli("--locked", recipe, "--dry-run")
    assert result.code == 2 and "no lock file" in result.err


def test_file_hashes_are_remembered_until_the_file_changes(monkeypatch, tmp_path):
    """--locked and resume keys hash whole model folders: each file once per version, not per run."""
    import hashlib
    import os

    from recipe_runner.base import filehashes
    from recipe_runner.base.filehashes import FileHashes

    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    weights = model / "unet" / "w.safetensors"
    weights.write_bytes(b"one")
    (model / ".cache").mkdir()
    (model / ".cache" / "x").write_bytes(b"hidden")
    memory = tmp_path / "hashes.json"
    hashed = []
    real = filehashes.sha256_file
    monkeypatch.setattr(filehashes, "sha256_file", lambda path: hashed.append(path.name) or real(path))

    fresh = FileHashes(memory)  # a file written just now is hashed but not remembered
    assert fresh.folder(model) == {"unet/w.safetensors": hashlib.sha256(b"one").hexdigest()}
    fresh.save()
    FileHashes(memory).folder(model)
    assert hashed == ["w.safetensors", "w.safetensors"]

    monkeypatch.setattr(filehashes, "SETTLED_NS", 0)
    hashed.clear()
    first = FileHashes(memory)
    first.folder(model)
    first.save()
    again = FileHashes(memory)
    assert again.folder(model) == {"unet/w.safetensors": hashlib.sha256(b"one").hexdigest()}
    assert hashed == ["w.safetensors"] and again.hashed == 0  # the second time: from memory

    # A rewrite in place changes the file's change time, which cannot be put back by hand. Whether
    # it moves depends on the clock ticking between the two writes; the memory is set one tick back
    # instead of waiting for one:
    remembered = json.loads(memory.read_text())
    remembered[str(weights.resolve())]["stat"][2] -= 1
    memory.write_text(json.dumps(remembered))
    mtime = weights.stat().st_mtime_ns
    weights.write_bytes(b"two")  # same size; even with the modification time put back ...
    os.utime(weights, ns=(mtime, mtime))
    changed = FileHashes(memory)
    assert changed.folder(model)["unet/w.safetensors"] == hashlib.sha256(b"two").hexdigest()  # ... it is re-read
    assert hashed == ["w.safetensors", "w.safetensors"]
    changed.save()

    memory.write_text("{not json")  # an unreadable memory: everything is hashed again, nothing fails
    assert FileHashes(memory).folder(model)["unet/w.safetensors"] == hashlib.sha256(b"two").hexdigest()
    weights.unlink()
    gone = FileHashes(memory)
    gone.known = {str(weights.resolve()): {"stat": [], "sha256": "x"}}
    gone.hashed = 1
    gone.save()
    assert json.loads(memory.read_text()) == {}  # entries of deleted files are dropped


def test_hub_references_lock_to_a_commit_online_or_from_the_cache(monkeypatch, tmp_path):
    from huggingface_hub import HfApi, constants

    from recipe_runner.pipelines import lock

    sha = "0123456789abcdef0123456789abcdef01234567"
    assert lock.hub_commit("org/model", sha) == sha  # a pinned commit needs no network

    class Info:
        sha = "f" * 40

    monkeypatch.setattr(HfApi, "model_info", lambda self, repo_id, revision=None: Info())
    assert lock.hub_commit("org/model", "main") == "f" * 40

    def offline(self, repo_id, revision=None):
        raise ConnectionError("offline")

    monkeypatch.setattr(HfApi, "model_info", offline)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    ref = tmp_path / "models--org--model" / "refs" / "main"
    ref.parent.mkdir(parents=True)
    ref.write_text(sha + "\n")
    assert lock.hub_commit("org/model", None) == sha
    from recipe_runner.base.errors import RunError

    with pytest.raises(RunError, match="cannot resolve org/other@v2"):
        lock.hub_commit("org/other", "v2")


# --- schema ----------------------------------------------------------------------------------------

def _validate(instance, schema, root=None, path="$"):
    """A small JSON Schema validator for the keywords --schema uses (jsonschema is not a dependency)."""
    root = root or schema
    errors = []
    if "$ref" in schema:
        node = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        errors += _validate(instance, node, root, path)
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    kind = schema.get("type")
    if kind == "integer" and (not isinstance(instance, int) or isinstance(instance, bool)):
        return errors + [f"{path}: not an integer"]
    if kind == "number" and (not isinstance(instance, (int, float)) or isinstance(instance, bool)):
        return errors + [f"{path}: not a number"]
    if kind in types and not isinstance(instance, types[kind]):
        return errors + [f"{path}: not {kind}"]
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{path}: {instance!r} not in {schema['enum']}")
    if "const" in schema and instance != schema["const"]:
        errors.append(f"{path}: {instance!r} != {schema['const']!r}")
    for keyword, test in (("minimum", lambda v, m: v >= m), ("maximum", lambda v, m: v <= m)):
        if keyword in schema and isinstance(instance, (int, float)) and not test(instance, schema[keyword]):
            errors.append(f"{path}: {keyword} {schema[keyword]}")
    if "minItems" in schema and isinstance(instance, list) and len(instance) < schema["minItems"]:
        errors.append(f"{path}: too few items")
    if "minLength" in schema and isinstance(instance, str) and len(instance) < schema["minLength"]:
        errors.append(f"{path}: too short")
    if "anyOf" in schema and all(_validate(instance, s, root, path) for s in schema["anyOf"]):
        errors.append(f"{path}: matches none of anyOf")
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in instance:
                errors.append(f"{path}.{key}: required")
        for key, value in instance.items():
            if key in props:
                errors += _validate(value, props[key], root, f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}.{key}: unknown key")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += _validate(value, schema["additionalProperties"], root, f"{path}.{key}")
    if isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(instance):
            errors += _validate(value, schema["items"], root, f"{path}[{i}]")
    if "if" in schema and not _validate(instance, schema["if"], root, path):
        errors += _validate(instance, schema.get("then", {}), root, path)
    if "not" in schema and not _validate(instance, schema["not"], root, path):
        errors.append(f"{path}: matches not")
    return errors


def check_against_schema(instance, schema):
    try:
        import jsonschema
    except ImportError:
        return _validate(instance, schema)
    return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(instance)]


@pytest.mark.slow
def test_schema_is_printed_without_torch_and_validates_the_shipped_recipes():
    import tomllib

    code = ("import sys, runpy\nsys.argv = ['recipe-run', '--schema']\n"
            "from recipe_runner.cli.main import main\nrc = main(['--schema'])\n"
            "assert not [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\nsys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(proc.stdout)
    slicing = schema["properties"]["optimizations"]["properties"]["attention_slicing"]
    assert {"type": "boolean"} in slicing["anyOf"]
    settings = next(s for s in slicing["anyOf"] if s.get("type") == "object")
    assert {"slice_size", "required"} <= set(settings["properties"])
    assert settings["properties"]["required"]["description"].startswith("false: skip it with a warning")
    offload = schema["properties"]["optimizations"]["properties"]["offload"]["anyOf"][1]["properties"]
    assert offload["num_blocks_per_group"]["description"] == "group, block_level: how many blocks move together"
    recipes = sorted((REPO / "recipes").glob("*.toml"))
    assert len(recipes) >= 4
    for path in recipes:
        assert check_against_schema(tomllib.loads(path.read_text()), schema) == [], path.name
    good = tomllib.loads((REPO / "recipes" / "tiny.toml").read_text())
    assert check_against_schema({**good, "paramz": {}}, schema)  # misspelled table
    assert check_against_schema({**good, "optimizations": {"attention_slicing": {"slice_sise": 2}}}, schema)
    assert check_against_schema({**good, "optimizations": {"no_such_plugin": True}}, schema)
    assert check_against_schema({**good, "matrix": {"prompts": ["a"], "seeds": "three"}}, schema)
    assert check_against_schema({k: v for k, v in good.items() if k != "model"}, schema)  # model is required ...
    assert check_against_schema({"extends": "tiny.toml", "params": {"num_inference_steps": 2}}, schema) == []  # ... unless extended


def test_help_lists_the_provenance_options():
    result = run_subprocess("--help")
    for option in ("--reproduce", "--schema", "--lock", "--locked"):
        assert option in result.out
