"""Lock files: --lock pins each model (a local folder's file hashes, a Hub reference's commit),
--locked refuses what changed; file hashes remembered until the file changes."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import image_files


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
