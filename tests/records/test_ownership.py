"""A run folder belongs to one recipe file (#22 item 8): its manifest records which (``recipe_path``,
relative to the recipe's git repository, else to the output root); another recipe file of the same
``name`` is refused before anything loads (exit 2), naming both files and the folder, unless
``--force`` takes the folder over. The same file however reached (another relative path, working
folder, a symbolic link to the checkout, a second clone) is the same owner."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import manifest_of, tiny_recipe

RECIPE = 'name = "hero"\n' + tiny_recipe("a red fox")


def digest(folder: Path) -> str:
    """The tree: every path, its bytes and mtime."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes() + str(p.stat().st_mtime_ns).encode())
    return h.hexdigest()


@pytest.mark.slow
def test_another_recipe_file_of_the_same_name_is_refused_unless_forced(recipe_runner_cli, recipe_runner_write_recipe,
                                                                       recipe_runner_tiny_sd15, tmp_path, monkeypatch):
    recipe_runner_write_recipe(RECIPE, "alice/hero.toml")
    recipe_runner_write_recipe(RECIPE.replace("a red fox", "a blue fox"), "bob/hero.toml")
    monkeypatch.chdir(tmp_path)
    assert recipe_runner_cli("alice/hero.toml", "--out", "out", "--no-progress").code == 0
    folder = tmp_path / "out" / "hero"
    assert manifest_of(folder)["recipe_path"] == "../alice/hero.toml"  # no repository: from the output root
    before = digest(folder)
    result = recipe_runner_cli("bob/hero.toml", "--out", "out", "--no-progress")
    assert result.code == 2, result.out + result.err
    assert "alice/hero.toml" in result.err and "bob/hero.toml" in result.err and "out/hero" in result.err
    assert "--force" in result.err and "another name" in result.err and "another --out" in result.err
    assert result.err.startswith("error: bob/hero.toml:1: name: the output folder out/hero was made by "
                                 "../alice/hero.toml, not by this recipe file (../bob/hero.toml)")
    assert "loading" not in result.err  # refused before anything loads
    assert digest(folder) == before  # alice's images and manifest untouched
    # the same recipe file again is not refused
    assert recipe_runner_cli("alice/hero.toml", "--out", "out", "--no-progress").code == 0
    taken = recipe_runner_cli("bob/hero.toml", "--out", "out", "--force", "--no-progress")
    assert taken.code == 0, taken.err
    assert manifest_of(folder)["recipe_path"] == "../bob/hero.toml"
    assert recipe_runner_cli("alice/hero.toml", "--out", "out", "--no-progress").code == 2  # bob's now


def test_two_recipes_of_one_name_in_one_invocation_are_named(recipe_runner_cli, recipe_runner_write_recipe, tmp_path,
                                                             monkeypatch):
    recipe_runner_write_recipe(RECIPE, "alice/hero.toml")
    recipe_runner_write_recipe(RECIPE, "bob/hero.toml")
    monkeypatch.chdir(tmp_path)
    result = recipe_runner_cli("alice/hero.toml", "bob/hero.toml", "--out", "out")
    assert result.code == 2
    assert "alice/hero.toml and bob/hero.toml both have name = 'hero'" in result.err
    assert "several recipes write to the same output folder 'hero' (out/hero)" in result.err
    assert not (tmp_path / "out").exists()


def test_the_same_file_however_reached_is_the_same_owner(tmp_path, monkeypatch):
    from recipe_runner.records.provenance import owner_of

    repo = tmp_path / "repo"
    (repo / "recipes").mkdir(parents=True)
    (repo / ".git").mkdir()
    recipe = repo / "recipes" / "hero.toml"
    recipe.write_text(RECIPE)
    root = tmp_path / "renders"
    owner = owner_of(recipe, root)
    assert owner == "recipes/hero.toml"
    monkeypatch.chdir(repo / "recipes")
    assert owner_of(Path("hero.toml"), Path("../../renders")) == owner
    assert owner_of(Path("../recipes/./hero.toml"), root) == owner
    (tmp_path / "link").symlink_to(repo)
    assert owner_of(tmp_path / "link" / "recipes" / "hero.toml", root) == owner
    # a second clone, anywhere: the same path in its repository
    clone = tmp_path / "elsewhere" / "b" / "checkout"
    shutil.copytree(repo, clone)
    assert owner_of(clone / "recipes" / "hero.toml", clone / "baseline") == owner
    # a worktree or submodule: .git is a file
    (clone / ".git").rmdir()
    (clone / ".git").write_text("gitdir: ../x\n")
    assert owner_of(clone / "recipes" / "hero.toml", root) == owner


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_teammates_clone_runs_against_the_committed_folder(recipe_runner_cli, recipe_runner_tiny_sd15, tmp_path,
                                                             monkeypatch):
    repo = tmp_path / "a" / "repo"
    (repo / "recipes").mkdir(parents=True)
    (repo / "recipes" / "hero.toml").write_text(RECIPE)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e"}
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    assert recipe_runner_cli("--update-baseline", repo / "recipes" / "hero.toml", "--out", repo / "baseline",
                             "--no-progress").code == 0
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "b"], cwd=repo, check=True, env=env)
    clone = tmp_path / "b" / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    monkeypatch.chdir(clone / "recipes")
    result = recipe_runner_cli("--update-baseline", "hero.toml", "--out", "../baseline", "--no-progress")
    assert result.code == 0, result.err
    assert "nothing to do" in result.out
    assert json.loads((clone / "baseline" / "hero" / "manifest.json").read_text())["recipe_path"] == "recipes/hero.toml"


def test_a_folder_whose_recorded_recipe_is_gone_is_taken_over(tmp_path):
    from recipe_runner.records.ownership import owner_exists

    (tmp_path / "alice").mkdir()
    (tmp_path / "bob").mkdir()
    alice, bob = tmp_path / "alice" / "hero.toml", tmp_path / "bob" / "hero.toml"
    alice.write_text(RECIPE)
    bob.write_text(RECIPE)
    root = tmp_path / "out"
    assert owner_exists("../alice/hero.toml", bob, root)
    assert not owner_exists("../bob/hero.toml", bob, root)  # itself
    alice.unlink()
    assert not owner_exists("../alice/hero.toml", bob, root)  # moved, renamed or deleted
