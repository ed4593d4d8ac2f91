"""``--reproduce`` names what changed since an image was made, and ``--reproduce --locked`` (issue
22, item 5).

Every image (and the manifest) records what it was made from, ``environment.models``: the SHA-256
of each file of a local (or ``tiny:``) model folder, or a Hub commit. ``--reproduce`` compares that
and the rest of the recorded environment with today's and names each difference, the most likely
cause first; ``--locked`` first verifies the models against the lock file beside the recipe."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from recipe_runner.records import causes
from recipe_runner.records.provenance import EMBEDDED_MODEL_FILES, embedded_environment
from tests.conftest import REPO, manifest_of, tiny_recipe

UNET = "unet/diffusion_pytorch_model.safetensors"


# --- the comparison itself (records.causes): fast ---------------------------------------------------


def local(files: dict[str, str]) -> dict[str, object]:
    from recipe_runner.base.filehashes import combined

    return {"kind": "local", "sha256": combined(files), "files": files}


FILES = {"model_index.json": "a" * 64, UNET: "b" * 64, "vae/config.json": "c" * 64}
ENV = {"torch": "2.13.0", "diffusers": "0.36.0", "transformers": "4.57.0", "accelerate": "1.11.0",
       "device": "cpu", "device_name": "x86_64", "dtype": "float32", "threads": 1, "deterministic": False,
       "generator_device": "cpu", "platform": "linux-x86_64", "python": "3.12.3", "recipe_runner": "1.0",
       "models": {"model": local(FILES), "components.vae": {"kind": "hub", "commit": "1" * 40}}}


def test_nothing_differs_and_the_report_says_so():
    facts = causes.compare(ENV, json.loads(json.dumps(ENV)), default_threads=1)
    assert facts.differences == [] and facts.notes == []
    assert facts.lines(identical=True) == []
    (line,) = facts.lines(identical=False)
    assert line.startswith("no recorded fact differs: the model files, threads, torch, diffusers")
    assert "something not recorded" in line


def test_each_difference_is_named_most_likely_cause_first():
    now = json.loads(json.dumps(ENV))
    files = {**FILES, UNET: "d" * 64, "unet/extra.safetensors": "e" * 64}
    del files["vae/config.json"]
    now["models"] = {"model": local(files), "components.vae": {"kind": "hub", "commit": "2" * 40}}
    now.update(torch="2.14.0", threads=2, dtype="bfloat16", python="3.13.0")
    facts = causes.compare(ENV, now, default_threads=2, plugins=["my-plugin 1.0: not loaded now"])
    assert facts.differences == [
        f"model: {UNET} differs from when this image was made",
        "model: unet/extra.safetensors was added since",
        "model: vae/config.json is gone since",
        f"components.vae: Hub commit {'1' * 40} -> {'2' * 40}",
        "threads 1 -> 2 (the recorded thread count could not be pinned)",
        "torch 2.13.0 -> 2.14.0",
        "dtype float32 -> bfloat16",
        "plugin my-plugin 1.0: not loaded now",
        "python 3.12.3 -> 3.13.0",
    ]
    lines = facts.lines(identical=False)
    assert lines[0] == "what differs from when the image was made, most likely cause first:"
    assert facts.lines(identical=True)[0] == "recorded facts that differ now (these pixels did not change):"


def test_a_pinned_thread_count_is_a_note_not_a_cause():
    facts = causes.compare(ENV, ENV, default_threads=4)  # the re-generation ran with the recorded 1
    assert facts.differences == []
    assert facts.notes == ["threads 1 -> 4 on this machine: pinned to the recorded 1 for this re-generation "
                           "(a plain run here uses 4; [run] threads pins it)"]


def test_an_image_without_model_records_says_so_and_still_lists_the_rest():
    old = {k: v for k, v in ENV.items() if k != "models"}
    facts = causes.compare(old, {**ENV, "torch": "2.14.0"}, default_threads=1)
    assert facts.lines(identical=False) == [causes.NOT_RECORDED, "what differs from when the image was made, most likely "
                                            "cause first:", "  torch 2.13.0 -> 2.14.0"]
    (first, second) = causes.compare(old, ENV, default_threads=1).lines(identical=False)
    assert first == causes.NOT_RECORDED and second.startswith("no other recorded fact differs: threads, torch")


def test_many_changed_files_are_counted_and_a_trimmed_record_names_the_model():
    many = {f"unet/shard-{i:03d}.safetensors": "a" * 64 for i in range(EMBEDDED_MODEL_FILES + 6)}
    changed = {name: "b" * 64 for name in many}
    lines = causes.model_differences({"model": local(many)}, {"model": local(changed)})
    assert len(lines) == causes.SHOWN_FILES + 1
    assert lines[-1] == f"model: {len(many) - causes.SHOWN_FILES} more files differ"

    env = {"models": {"model": local(many), "components.vae": local(FILES)}}
    embedded = embedded_environment(env)
    assert embedded["models"]["model"] == {"kind": "local", "sha256": local(many)["sha256"], "file_count": len(many)}
    assert embedded["models"]["components.vae"] == local(FILES)  # a small folder keeps its files
    assert env["models"]["model"]["files"] == many  # the manifest keeps every file
    forty = {f"f{i}": "a" * 64 for i in range(40)}
    axis = embedded_environment({"models": {f"matrix.axes.model.{i}": local(forty) for i in range(3)} | {"model": local(FILES)}})
    assert [len(r.get("files", {})) for r in axis["models"].values()] == [40, 0, 0, 3]  # 64 hashes in all, model first
    (line,) = causes.model_differences(embedded["models"], {"model": local(changed), "components.vae": local(FILES)})
    assert line.startswith("model: its files differ from when this image was made (the image records their "
                           f"combined hash only, of {len(many)} files")


def test_only_the_models_the_images_job_loads_are_compared():
    keys = ["model", "components.vae", "matrix.axes.model.0", "matrix.axes.model.1", "matrix.axes.components.vae.0"]
    axes = {"model": ["a", {"id": "b"}], "components.vae": ["v"], "guidance_scale": [6.0]}
    assert causes.job_references(keys, axes, {"model": {"id": "b"}, "components.vae": "v", "guidance_scale": 6.0}) == {
        "matrix.axes.model.1", "matrix.axes.components.vae.0"}
    assert causes.job_references(keys[:2], {}, {}) == {"model", "components.vae"}

    other = {**FILES, UNET: "d" * 64}
    recorded = {**ENV, "models": {"matrix.axes.model.0": local(FILES), "matrix.axes.model.1": local(FILES)}}
    now = {**ENV, "models": {"matrix.axes.model.0": local(FILES), "matrix.axes.model.1": local(other)}}
    assert causes.compare(recorded, now, 1).differences == [f"matrix.axes.model.1: {UNET} differs from when this image "
                                                             "was made"]
    job_a = causes.compare(recorded, now, 1, used=lambda k: causes.job_references(k, {"model": ["a", "b"]}, {"model": "a"}))
    assert job_a.differences == []  # the image of model "a": model "b"'s files are no cause


# --- runs on a local copy of the tiny model ---------------------------------------------------------


@pytest.fixture
def model_copy(recipe_runner_tiny_sd15, tmp_path) -> Path:
    """A local model folder: a copy of the tiny sd15 pipeline beside the test's recipes."""
    folder = tmp_path / "models" / "sd15"
    shutil.copytree(recipe_runner_tiny_sd15, folder)
    return folder


def local_recipe(fmt: str = "png") -> str:
    return tiny_recipe("a lighthouse", seeds=[0, 1], model_id="models/sd15", tables=f'[output]\nformat = "{fmt}"')


def change_one_unet_tensor(model: Path) -> None:
    """One UNet tensor nudged, as a fine-tune or a bad download would (the file's other tensors kept)."""
    from safetensors.torch import load_file, save_file

    path = model / UNET
    tensors = load_file(path)
    name = sorted(n for n in tensors if n.endswith("conv_out.weight"))[0]
    tensors[name] = tensors[name] + 0.05
    save_file(tensors, path)


def with_environment(image: Path, copy: Path, change) -> Path:
    """``copy``: ``image`` with its embedded environment passed through ``change`` (pixels kept)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    with Image.open(image) as original:
        info = PngInfo()
        for key, value in original.text.items():
            if key == "environment":
                value = json.dumps(change(json.loads(value)))
            info.add_itxt(key, value)
        original.save(copy, pnginfo=info)
    return copy


@pytest.mark.slow
def test_a_changed_unet_file_is_named_when_the_pixels_differ(recipe_runner_cli, recipe_runner_write_recipe, model_copy,
                                                             tmp_path):
    from recipe_runner.records.outputs import read_embedded

    recipe = recipe_runner_write_recipe(local_recipe(), "lighthouse.toml")
    assert recipe_runner_cli(recipe, "--out", tmp_path / "out", "--no-progress").code == 0
    folder = tmp_path / "out" / "lighthouse"
    manifest = manifest_of(folder)
    recorded = manifest["environment"]["models"]["model"]
    assert recorded["kind"] == "local" and UNET in recorded["files"] and "model_index.json" in recorded["files"]
    assert not any("/" in name and name.startswith("/") for name in recorded["files"])  # names relative to the folder
    assert str(model_copy) not in json.dumps(manifest["environment"]["models"])
    image = folder / manifest["images"][0]["file"]
    embedded = json.loads(read_embedded(image)["environment"])
    assert embedded["models"] == manifest["environment"]["models"]

    same = recipe_runner_cli("--reproduce", image)
    assert same.code == 0 and same.out.splitlines() == [f"{image}: pixel-identical"], same.out

    change_one_unet_tensor(model_copy)
    result = recipe_runner_cli("--reproduce", image, "--out", tmp_path / "scratch")
    assert result.code == 1, result.err
    lines = result.out.splitlines()
    assert lines[0].startswith(f"{image}: differs: PSNR ")
    assert lines[1:] == ["  what differs from when the image was made, most likely cause first:",
                         f"    model: {UNET} differs from when this image was made"], result.out
    # docs/provenance.md shows this very case: its sample is what the tool prints
    doc = (REPO / "docs" / "provenance.md").read_text()
    sample = doc[doc.index("$ recipe-run --reproduce outputs/lighthouse/"):].split("```")[0].strip().splitlines()[1:]
    shape = r"^\S+: differs: PSNR \d+\.\d\d dB, \d+ of \d+ pixels \(re-generated as \S+\)$"
    assert re.match(shape, sample[0]) and re.match(shape, lines[0]), (sample[0], lines[0])
    assert sample[1:] == lines[1:]


@pytest.mark.slow
def test_a_recorded_thread_count_that_differs_is_named(recipe_runner_cli, recipe_runner_write_recipe, tmp_path,
                                                       monkeypatch):
    import torch

    recipe = recipe_runner_write_recipe(tiny_recipe("a lighthouse"), "threads.toml")
    assert recipe_runner_cli(recipe, "--out", tmp_path / "out", "--no-progress").code == 0
    folder = tmp_path / "out" / "threads"
    image = folder / manifest_of(folder)["images"][0]["file"]
    made_with = manifest_of(folder)["environment"]["threads"]
    claims_three = with_environment(image, tmp_path / "three.png", lambda env: {**env, "threads": 3})

    pinned = recipe_runner_cli("--reproduce", claims_three, "--out", tmp_path / "scratch")  # with 3 threads, as recorded
    assert pinned.code in (0, 1), pinned.err
    assert (f"  note: threads 3 -> {made_with} on this machine: pinned to the recorded 3 for this re-generation"
            in pinned.out), pinned.out
    assert "threads 3 -> 1 (" not in pinned.out

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # a count that cannot be pinned
    unpinned = recipe_runner_cli("--reproduce", claims_three)
    assert unpinned.code == 0, unpinned.err  # made with this count: the pixels match
    assert unpinned.out.splitlines()[1:] == [
        "  recorded facts that differ now (these pixels did not change):",
        f"    threads 3 -> {made_with} (the recorded thread count could not be pinned)"], unpinned.out


@pytest.mark.slow
def test_an_image_made_before_models_were_recorded_still_reproduces(recipe_runner_cli, recipe_runner_write_recipe,
                                                                   tmp_path):
    recipe = recipe_runner_write_recipe(tiny_recipe("a lighthouse"), "old.toml")
    assert recipe_runner_cli(recipe, "--out", tmp_path / "out", "--no-progress").code == 0
    folder = tmp_path / "out" / "old"
    image = folder / manifest_of(folder)["images"][0]["file"]
    old = with_environment(image, tmp_path / "old.png",
                           lambda env: {k: v for k, v in env.items() if k != "models"} | {"torch": "2.0.0"})
    result = recipe_runner_cli("--reproduce", old)
    assert result.code == 0, result.err
    assert result.out.splitlines()[1:] == [
        "  model files: not recorded in this image (made before recipe-run recorded them): whether they changed "
        "cannot be told",
        "  recorded facts that differ now (these pixels did not change):",
        f"    torch 2.0.0 -> {__import__('torch').__version__}"], result.out


@pytest.mark.slow
def test_reproduce_locked_verifies_the_lock_beside_the_recipe_before_loading(recipe_runner_cli, recipe_runner_write_recipe,
                                                                             model_copy, tmp_path, loads):
    from recipe_runner.records.outputs import read_embedded

    recipe = recipe_runner_write_recipe(local_recipe("jpeg"), "locked.toml")
    assert recipe_runner_cli(recipe, "--out", tmp_path / "out", "--no-progress").code == 0
    folder = tmp_path / "out" / "locked"
    image = folder / manifest_of(folder)["images"][1]["file"]
    assert image.suffix == ".jpg"  # the model's file hashes fit a JPEG's EXIF
    assert UNET in json.loads(read_embedded(image)["environment"])["models"]["model"]["files"]

    loads.count = 0
    missing = recipe_runner_cli("--reproduce", image, "--locked")
    assert missing.code == 2 and loads.count == 0
    assert f"--locked: no lock file {recipe.with_suffix('.lock')} beside the recipe this image came from" in missing.err

    assert recipe_runner_cli("--lock", recipe).code == 0
    matching = recipe_runner_cli("--reproduce", image, "--locked")
    assert matching.code == 0 and "pixel-identical" in matching.out, matching.err
    assert loads.count == 1

    loads.count = 0
    change_one_unet_tensor(model_copy)
    drifted = recipe_runner_cli("--reproduce", image, "--locked")
    assert drifted.code == 2, drifted.out + drifted.err
    assert loads.count == 0  # refused before any pipeline was built
    assert "model.id: differs from " in drifted.err and f"files differ from the lock (changed: {UNET})" in drifted.err
    assert drifted.out == ""


def test_locked_is_allowed_with_reproduce_only_among_the_image_modes(recipe_runner_cli, tmp_path):
    result = recipe_runner_cli("--reproduce", tmp_path / "nothing.png", "--locked")
    assert result.code == 2 and "no such image file" in result.err  # the mode table let it through
    refused = recipe_runner_cli("--compare", tmp_path, tmp_path, "--locked")
    assert refused.code == 2 and "--locked has no effect with --compare" in refused.err


@pytest.mark.slow
def test_a_run_reads_each_model_file_once_for_its_keys_and_its_records(recipe_runner_cli, recipe_runner_write_recipe,
                                                                       model_copy, tmp_path, monkeypatch):
    from collections import Counter

    from recipe_runner.base import filehashes

    read: Counter[str] = Counter()
    hash_file = filehashes.sha256_file

    def counted(path):
        read[Path(path).relative_to(model_copy.resolve()).as_posix()] += 1
        return hash_file(path)

    monkeypatch.setattr(filehashes, "sha256_file", counted)
    recipe = recipe_runner_write_recipe(local_recipe(), "once.toml")  # a fresh copy: no file is remembered yet
    assert recipe_runner_cli(recipe, "--out", tmp_path / "out", "--no-progress").code == 0
    files = manifest_of(tmp_path / "out" / "once")["environment"]["models"]["model"]["files"]
    assert UNET in read and set(read) == set(files) and set(read.values()) == {1}, read


@pytest.mark.slow
def test_with_a_model_axis_only_the_images_own_model_is_compared(recipe_runner_cli, recipe_runner_write_recipe,
                                                                 model_copy, tiny_sd15_other, tmp_path):
    shutil.copytree(tiny_sd15_other, tmp_path / "models" / "other")
    recipe = recipe_runner_write_recipe(tiny_recipe("a lighthouse", model_id="models/sd15",
                                                    tables='[matrix.axes]\nmodel = ["models/sd15", "models/other"]'),
                                        "axis.toml")
    assert recipe_runner_cli(recipe, "--out", tmp_path / "out", "--no-progress").code == 0
    folder = tmp_path / "out" / "axis"
    records = {r["axes"]["model"]: folder / r["file"] for r in manifest_of(folder)["images"]}
    assert set(manifest_of(folder)["environment"]["models"]) == {"model", "matrix.axes.model.0", "matrix.axes.model.1"}

    change_one_unet_tensor(tmp_path / "models" / "other")
    first = recipe_runner_cli("--reproduce", records["models/sd15"])
    assert first.code == 0 and first.out.splitlines() == [f"{records['models/sd15']}: pixel-identical"], first.out
    second = recipe_runner_cli("--reproduce", records["models/other"], "--out", tmp_path / "scratch")
    assert second.code == 1, second.err
    assert second.out.splitlines()[1:] == ["  what differs from when the image was made, most likely cause first:",
                                           f"    matrix.axes.model.1: {UNET} differs from when this image was made"]
