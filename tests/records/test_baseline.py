"""Baselines without churn (#22 item 2): what a run commits is a function of the recipe and the
pixels. ``--update-baseline`` into a git repository, committed, then run again (forced, from another
working folder, with another home and another model cache holding the same bytes, or from a second
clone) leaves ``git status`` clean; a pixel-identical regeneration leaves the file untouched; the
manifest and the images' metadata hold no machine path; ``--reproduce`` reads the new and the old
form of the recipe folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import image_files, local_of, manifest_of, tiny_recipe

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")

RECIPE = 'name = "base"\n' + tiny_recipe("a red fox", "a blue house", seeds=[0, 1], params="guidance_scale = 7.5",
                                         tables="[run]\nbatch_size = 2")


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main",
                           *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout


def status(repo: Path) -> list[str]:
    return [line for line in git(repo, "status", "--porcelain", "--untracked-files=all").splitlines() if line]


def make_repo(root: Path, text: str = RECIPE) -> Path:
    repo = root / "recipes-repo"
    (repo / "recipes").mkdir(parents=True)
    (repo / "recipes" / "base.toml").write_text(text)
    git(repo, "init", "-q")
    return repo


def state(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under ``folder`` (machine-local records aside): inode, mtime and bytes."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file() and ".recipe-runner" not in p.parts}


def other_machine(monkeypatch: pytest.MonkeyPatch, root: Path, cache: Path) -> None:
    """Another home, another working folder, and a model cache elsewhere holding the same bytes."""
    home, moved = root / "home-b", root / "elsewhere" / "cache"
    home.mkdir(parents=True)
    shutil.copytree(cache / "tiny", moved / "tiny")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("RECIPE_RUNNER_CACHE", str(moved))
    monkeypatch.chdir(home)


@pytest.mark.slow
def test_a_committed_baseline_stays_clean_when_run_again_forced_elsewhere_and_from_a_clone(
        recipe_runner_cli, recipe_runner_tiny_sd15, recipe_runner_cache, tmp_path, monkeypatch):
    repo = make_repo(tmp_path)
    recipe, baseline = repo / "recipes" / "base.toml", repo / "baseline"
    first = recipe_runner_cli("--update-baseline", recipe, "--out", baseline, "--no-progress")
    assert first.code == 0, first.err
    assert "base: 4 images: 4 updated, 0 unchanged;" in first.out
    assert not (baseline / ".gitignore").exists()  # a baseline is meant to be committed
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "baseline")
    assert "baseline/base/manifest.json" in git(repo, "ls-files")
    assert not any(".recipe-runner" in f for f in git(repo, "ls-files").splitlines())  # machine-local: ignored
    before = state(baseline)

    again = recipe_runner_cli("--update-baseline", "--force", recipe, "--out", baseline, "--no-progress")
    assert again.code == 0, again.err
    assert "base: 4 images: 0 updated, 4 unchanged;" in again.out
    assert status(repo) == []
    images = {k: v for k, v in state(baseline).items() if k.endswith(".png") and "grid" not in k}
    assert images == {k: v for k, v in before.items() if k in images}  # untouched: inode, mtime, bytes
    assert not list(baseline.rglob("history"))

    # Teammate B: a clone at another path, another home and working folder, the model elsewhere
    clone = tmp_path / "b" / "checkout"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True, capture_output=True)
    other_machine(monkeypatch, tmp_path, recipe_runner_cache)
    same = recipe_runner_cli("--update-baseline", clone / "recipes" / "base.toml", "--out", clone / "baseline",
                             "--no-progress")
    assert same.code == 0, same.err
    assert "nothing to do" in same.out
    forced = recipe_runner_cli("--update-baseline", "--force", clone / "recipes" / "base.toml", "--out",
                               clone / "baseline", "--no-progress")
    assert forced.code == 0, forced.err
    assert status(clone) == []
    assert manifest_of(clone / "baseline" / "base") == manifest_of(baseline / "base")
    assert local_of(clone / "baseline" / "base")["environment"]["model_location"].startswith(str(tmp_path / "elsewhere"))


@pytest.mark.slow
def test_a_changed_parameter_updates_only_its_images_and_keeps_no_history(recipe_runner_cli, recipe_runner_tiny_sd15,
                                                                         tmp_path):
    text = RECIPE.replace("[matrix]", "[matrix]\nvars = { style = [\"oil\", \"ink\"] }").replace(
        '"a red fox", "a blue house"', '"a {style} fox"').replace("seeds = [0, 1]", "seeds = [0]")
    repo = make_repo(tmp_path, text)
    recipe, baseline = repo / "recipes" / "base.toml", repo / "baseline"
    assert recipe_runner_cli("--update-baseline", recipe, "--out", baseline, "--no-progress").code == 0
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "baseline")
    old = {r["prompt"]: r["file"] for r in manifest_of(baseline / "base")["images"]}
    recipe.write_text(text.replace('"a {style} fox"', '"a {style} fox", "a {style} owl"')
                      .replace('["oil", "ink"]', '["oil"]'))
    result = recipe_runner_cli("--update-baseline", recipe, "--out", baseline, "--no-progress")
    assert result.code == 0, result.err
    assert "base: 2 images: 1 updated, 1 unchanged, 1 removed;" in result.out
    new = {r["prompt"]: r["file"] for r in manifest_of(baseline / "base")["images"]}
    changed = {line[3:] for line in status(repo)}
    assert changed == {"recipes/base.toml", "baseline/base/manifest.json", "baseline/base/grid.png",
                       "baseline/base/index.html", f"baseline/base/{old['a ink fox']}",
                       f"baseline/base/{new['a oil owl']}"}
    assert new["a oil fox"] == old["a oil fox"]
    assert not list(baseline.rglob("history")) and not (baseline / "base" / ".recipe-runner" / "replaced").exists()

    # a changed parameter: the images whose pixels change are replaced in place, no history
    recipe.write_text(recipe.read_text().replace("guidance_scale = 7.5", "guidance_scale = 3.0"))
    result = recipe_runner_cli("--update-baseline", recipe, "--out", baseline, "--no-progress")
    assert result.code == 0, result.err
    assert "base: 2 images: 2 updated, 0 unchanged;" in result.out
    assert {p.name for p in image_files(baseline / "base")} == {r["file"] for r in
                                                                manifest_of(baseline / "base")["images"]}
    assert not list(baseline.rglob("history"))


@pytest.mark.slow
def test_a_pixel_identical_regeneration_leaves_the_file_untouched(recipe_runner_cli, recipe_runner_write_recipe,
                                                                 tmp_path):
    recipe = recipe_runner_write_recipe(RECIPE, "base.toml")
    out = tmp_path / "out"
    assert recipe_runner_cli(recipe, "--out", out, "--no-progress").code == 0
    folder = out / "base"
    files = [*image_files(folder), folder / "grid.png", folder / "index.html"]
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    result = recipe_runner_cli(recipe, "--out", out, "--force", "--no-progress")
    assert result.code == 0, result.err
    assert "0 new, 4 regenerated (4 pixel-identical: files kept), 0 unchanged" in result.out
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    assert after == before  # the images, and the contact sheet and gallery drawn again the same
    assert not (folder / "history").exists() and "history" not in manifest_of(folder)
    assert "replaced images" not in result.out
    records = manifest_of(folder)["images"]
    assert all(r["status"] == "done" for r in records)
    nothing = recipe_runner_cli(recipe, "--out", out, "--no-progress")
    assert "0 new, 0 to regenerate, 4 unchanged; nothing to do" in nothing.out


@pytest.mark.slow
def test_the_records_hold_no_machine_path_and_the_timings_are_machine_local(recipe_runner_cli, recipe_runner_write_recipe,
                                                                            tmp_path):
    from recipe_runner.records.outputs import read_embedded

    recipe = recipe_runner_write_recipe(RECIPE, "recipes/base.toml")
    out = tmp_path / "out"
    assert recipe_runner_cli(recipe, "--out", out, "--no-progress").code == 0
    folder = out / "base"
    machine = (str(tmp_path), os.environ["RECIPE_RUNNER_CACHE"], str(Path.home()))
    manifest_text = (folder / "manifest.json").read_text()
    for path in machine:
        assert path not in manifest_text
        assert path not in (folder / "index.html").read_text()
        for image in image_files(folder):
            assert path not in json.dumps(read_embedded(image)), image.name
    manifest = json.loads(manifest_text)
    env = manifest["environment"]
    assert env["recipe_folder"] == "../../recipes" and env["recipe_file"] == "base.toml"
    assert env["model_location"] == "<cache>/tiny/sd15-v1"
    assert "timings" not in manifest and all("seconds" not in r for r in manifest["images"])
    local = local_of(folder)
    assert local["timings"]["batches"] and set(local["seconds"]) == {r["file"] for r in manifest["images"]}
    assert local["environment"]["recipe_file"] == str(recipe.resolve())
    assert (folder / ".recipe-runner" / ".gitignore").read_text().splitlines()[-1] == "*"
    # --reproduce finds the recipe folder from the portable form, from any working folder
    result = recipe_runner_cli("--reproduce", image_files(folder)[0])
    assert result.code == 0 and "pixel-identical" in result.out, result.out + result.err


def test_the_recipe_folder_is_read_in_its_portable_form_and_in_the_old_absolute_one(tmp_path, monkeypatch):
    from recipe_runner.records.provenance import owner_of, portable_location, recipe_folder_of
    from recipe_runner.running.reproduce import Embedded, recipe_path

    recipes, run = tmp_path / "repo" / "recipes", tmp_path / "repo" / "out" / "name"
    recipes.mkdir(parents=True)
    run.mkdir(parents=True)
    image = run / "a.png"
    new = Embedded({"name": "x"}, {}, {"recipe_folder": "../../recipes", "recipe_file": "x.toml"})
    old = Embedded({"name": "x"}, {}, {"recipe_folder": str(recipes), "recipe_file": "x.toml"})
    assert recipe_path(new, image).resolve() == recipes / "x.toml"
    assert recipe_path(old, image) == recipes / "x.toml"
    gone = Embedded({"name": "x"}, {}, {"recipe_folder": "../../nowhere", "recipe_file": "x.toml"})
    assert recipe_path(gone, image) == run / "x.toml"  # the image's folder, as before
    assert recipe_folder_of({"recipe_folder": "~/r"}, run) == Path.home() / "r"
    assert recipe_folder_of({}, run) is None
    # model folders: the cache, the run folder's repository, the home, else only machine-local
    (tmp_path / "repo" / ".git").mkdir()
    (tmp_path / "repo" / "models" / "m").mkdir(parents=True)
    assert portable_location(str(tmp_path / "repo" / "models" / "m"), run) == "../../models/m"
    assert portable_location("org/model", run) == "org/model"
    monkeypatch.setenv("RECIPE_RUNNER_CACHE", str(tmp_path / "cache"))
    assert portable_location(str(tmp_path / "cache" / "tiny" / "x"), run) == "<cache>/tiny/x"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert portable_location(str(tmp_path / "home" / "models" / "m"), tmp_path) is None  # each home its own
    assert portable_location(str(tmp_path / "elsewhere" / "m"), tmp_path) is None  # in run.json only
    assert owner_of(recipes / "x.toml", run.parent) == "recipes/x.toml"


@pytest.mark.slow
def test_a_folder_made_before_portable_records_is_nothing_to_do_and_upgraded_once(recipe_runner_cli,
                                                                                 recipe_runner_write_recipe, tmp_path):
    recipe = recipe_runner_write_recipe(RECIPE, "base.toml")
    out = tmp_path / "out"
    assert recipe_runner_cli(recipe, "--out", out, "--no-progress").code == 0
    folder = out / "base"
    manifest = manifest_of(folder)  # as an older recipe-runner wrote it: timings, seconds, absolute paths
    del manifest["recipe_path"]
    manifest["environment"].update(recipe_folder=str(tmp_path), recipe_file="base.toml",
                                   model_location=str(tmp_path / "cache" / "tiny" / "sd15-v1"))
    manifest["timings"] = {"load_seconds": 1.0, "batches": []}
    for record in manifest["images"]:
        record["seconds"] = 0.5
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(folder / ".recipe-runner")
    images = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in image_files(folder)}
    result = recipe_runner_cli(recipe, "--out", out, "--no-progress")
    assert result.code == 0 and "nothing to do" in result.out, result.out + result.err
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in image_files(folder)} == images
    upgraded = manifest_of(folder)
    assert upgraded["recipe_path"] == "../base.toml"  # no repository: relative to the output root
    assert "timings" not in upgraded and all("seconds" not in r for r in upgraded["images"])
    assert upgraded["environment"]["recipe_folder"] == "../.."
    assert str(tmp_path) not in (folder / "manifest.json").read_text()
    assert local_of(folder)["timings"] == {"load_seconds": 1.0, "batches": []}
    text = (folder / "manifest.json").read_bytes()
    assert recipe_runner_cli(recipe, "--out", out, "--no-progress").code == 0
    assert (folder / "manifest.json").read_bytes() == text  # once


def test_update_baseline_takes_recipes_locked_and_force_and_needs_out(recipe_runner_cli, recipe_runner_write_recipe,
                                                                      tmp_path, monkeypatch):
    import argparse

    from recipe_runner.base.errors import RecipeError
    from recipe_runner.cli.main import mode_of, parser

    def mode(*args: str) -> str:
        return mode_of(parser().parse_args(list(args)))

    assert mode("--update-baseline", "r.toml", "--out", "b", "--locked", "--force", "--wait") == "update_baseline"
    for wrong in (("--update-baseline", "r.toml"), ("--update-baseline", "--dry-run", "r.toml", "--out", "b"),
                  ("--update-baseline", "--out", "b")):
        with pytest.raises(RecipeError):
            mode(*wrong)
    assert isinstance(parser().parse_args(["--update-baseline", "r.toml", "--out", "b"]), argparse.Namespace)
    recipe = recipe_runner_write_recipe(RECIPE, "base.toml")
    monkeypatch.chdir(tmp_path)
    result = recipe_runner_cli("--update-baseline", recipe)
    assert result.code == 2 and "--update-baseline needs --out DIR" in result.err
    assert not (tmp_path / "outputs").exists()


def test_an_interrupted_baseline_run_puts_back_the_files_of_jobs_it_did_not_get_to(tmp_path):
    from recipe_runner.records.resume import NOT_MADE, Replaced, ResumeState

    folder = tmp_path / "base"
    target = folder / ".recipe-runner" / "replaced" / "2026-01-01T00-00-00Z"
    target.mkdir(parents=True)
    for name in ("pending.png", "renamed-old.png", "gone.png"):
        (target / name).write_bytes(name.encode())
    (folder / "renamed-new.png").write_bytes(b"new")  # its job ran, under its new name
    state = ResumeState([], [], None)  # type: ignore[arg-type]
    state.retired = [Replaced("pending.png", "--force", {}), Replaced("renamed-old.png", "its job changed", {}),
                     Replaced("gone.png", NOT_MADE, {})]
    left = state.settle(folder, target, baseline=True, names=["pending.png", "renamed-new.png"])
    assert (folder / "pending.png").read_bytes() == b"pending.png"  # as committed, until the next run
    assert sorted(r.file for r in left) == ["gone.png", "renamed-old.png"]
    assert sorted(p.name for p in folder.iterdir()) == [".recipe-runner", "pending.png", "renamed-new.png"]
    assert not (folder / ".recipe-runner" / "replaced").exists()


def test_a_planted_link_at_the_machine_local_folder_is_refused(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    recipe = recipe_runner_write_recipe(RECIPE, "base.toml")
    victim = tmp_path / "victim"
    victim.mkdir()
    folder = tmp_path / "out" / "base"
    folder.mkdir(parents=True)
    (folder / ".recipe-runner").symlink_to(victim)
    result = recipe_runner_cli(recipe, "--out", tmp_path / "out", "--no-progress")
    assert result.code == 2 and "symbolic link" in result.err and ".recipe-runner" in result.err
    assert list(victim.iterdir()) == []


def test_timings_of_optimizations_are_this_machines_and_fold_back(tmp_path):
    """compile's ``warmup_seconds`` differs on every run: it goes to .recipe-runner/run.json with the
    other timings, never into the committed manifest, and readers get it back (``joined``)."""
    from recipe_runner.records.manifest import joined, split

    data = {"recipe": {}, "environment": {}, "images": [{"file": "a.png", "seconds": 0.5}],
            "optimizations": {"compile": {"status": "applied", "compiled": ["unet"], "warmup_seconds": 12.5},
                              "attention_slicing": {"status": "applied"}},
            "timings": {"load_seconds": 1.0}}
    committed, local = split(data, tmp_path)
    assert committed["optimizations"] == {"compile": {"status": "applied", "compiled": ["unet"]},
                                          "attention_slicing": {"status": "applied"}}
    assert "timings" not in committed and "seconds" not in committed["images"][0]
    assert local["optimizations"] == {"compile": {"warmup_seconds": 12.5}}
    back = joined(committed, local)
    assert back["optimizations"] == data["optimizations"] and back["timings"] == data["timings"]
    assert back["images"][0]["seconds"] == 0.5
