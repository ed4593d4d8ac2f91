"""``extends`` outside the recipe's repository (#22 item 4): a warning, since a teammate's clone will
not have the file; and the lock covers the extends chain, each file by its hash."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import tiny_recipe

BASE = tiny_recipe("a photo of a cat")


def repository(root: Path, git_file: bool = False) -> Path:
    root.mkdir(parents=True)
    if git_file:  # a worktree's checkout: .git is a file
        (root / ".git").write_text("gitdir: /elsewhere/.git/worktrees/x\n")
    else:
        (root / ".git").mkdir()
    return root


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_extends_outside_the_repository_warns(recipe_runner_cli, tmp_path, monkeypatch):
    team_a = write(tmp_path / "a" / "teamA" / "recipes" / "base" / "sd15.toml", BASE)
    repo = repository(tmp_path / "b" / "recipes")
    hero = write(repo / "hero.toml", f'name = "hero"\nextends = "{team_a}"\n[params]\nnum_inference_steps = 1\n')
    monkeypatch.chdir(repo.parent)
    result = recipe_runner_cli(hero, "--dry-run", "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert (f"warning: recipes/hero.toml:2: extends {team_a}, outside this repository ({repo}): a teammate's "
            "checkout will not have it") in result.err


def test_extends_inside_the_repository_is_quiet(recipe_runner_cli, tmp_path):
    repo = repository(tmp_path / "recipes", git_file=True)
    write(repo / "base" / "sd15.toml", BASE)
    hero = write(repo / "team" / "hero.toml", 'extends = "../base/sd15.toml"\n')
    result = recipe_runner_cli(hero, "--dry-run", "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert "outside" not in result.err


def test_without_a_repository_the_recipes_folder_is_the_boundary(recipe_runner_cli, tmp_path):
    write(tmp_path / "shared" / "base.toml", BASE)
    inside = write(tmp_path / "mine" / "base.toml", BASE)
    one = write(tmp_path / "mine" / "one.toml", 'extends = "../shared/base.toml"\n')
    two = write(tmp_path / "mine" / "two.toml", f'extends = "{inside.name}"\n')
    result = recipe_runner_cli(one, two, "--dry-run", "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert result.err.count("outside this recipe's folder") == 1
    assert f"one.toml:1: extends {tmp_path / 'shared' / 'base.toml'}, outside this recipe's folder" in result.err


def test_the_warning_is_given_once_per_file(recipe_runner_cli, tmp_path):
    outside = write(tmp_path / "elsewhere" / "root.toml", BASE)
    repo = repository(tmp_path / "recipes")
    write(repo / "base.toml", f'extends = "{outside}"\n')
    one = write(repo / "one.toml", 'extends = "base.toml"\n')
    two = write(repo / "two.toml", 'extends = "base.toml"\n')
    result = recipe_runner_cli(one, two, "--dry-run", "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert result.err.count(f"extends {outside}, outside this repository") == 1


def locked_chain(recipe_runner_cli, tmp_path: Path) -> tuple[Path, Path, Path]:
    repo = repository(tmp_path / "recipes")
    base = write(repo / "base" / "sd15.toml", BASE)
    hero = write(repo / "hero.toml", 'extends = "base/sd15.toml"\n[params]\nguidance_scale = 5.0\n')
    result = recipe_runner_cli("--lock", hero)
    assert result.code == 0, result.err
    return hero, base, repo / "hero.lock"


def test_the_lock_records_the_extends_chain(recipe_runner_cli, tmp_path):
    import hashlib

    hero, base, lock = locked_chain(recipe_runner_cli, tmp_path)
    text = lock.read_text()
    assert json.loads(text)["extends"] == {"base/sd15.toml": hashlib.sha256(base.read_bytes()).hexdigest()}
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"  # stable, sorted
    result = recipe_runner_cli("--locked", hero, "--dry-run", "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert "extends" not in result.err


def test_an_edited_base_is_refused_under_locked(recipe_runner_cli, tmp_path, monkeypatch):
    hero, base, lock = locked_chain(recipe_runner_cli, tmp_path)
    base.write_text(base.read_text().replace("num_inference_steps = 2", "num_inference_steps = 3"))
    monkeypatch.chdir(tmp_path)
    result = recipe_runner_cli("--locked", hero, "--dry-run", "--out", tmp_path / "out")
    assert result.code == 2
    assert ("recipes/base/sd15.toml: differs from the lock recipes/hero.lock: re-lock with recipe-run --lock "
            "recipes/hero.toml") in result.err
    assert "Traceback" not in result.err


def test_a_changed_chain_is_refused_under_locked(recipe_runner_cli, tmp_path):
    hero, base, lock = locked_chain(recipe_runner_cli, tmp_path)
    write(base.parent / "other.toml", BASE)
    hero.write_text('extends = "base/other.toml"\n')
    result = recipe_runner_cli("--locked", hero, "--dry-run", "--out", tmp_path / "out")
    assert result.code == 2
    assert "other.toml: extended, but not in the lock's extends chain" in result.err
    assert "the lock's extends chain has base/sd15.toml, which the recipe no longer extends" in result.err


def test_a_lock_from_before_the_chain_is_accepted_with_a_note(recipe_runner_cli, tmp_path):
    hero, base, lock = locked_chain(recipe_runner_cli, tmp_path)
    old = json.loads(lock.read_text())
    del old["extends"]
    lock.write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")
    base.write_text(base.read_text() + "\n# edited\n")
    result = recipe_runner_cli("--locked", hero, "--dry-run", "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert result.err.count("the lock does not cover the extends chain yet (1 file)") == 1


def test_a_lock_without_extends_writes_no_chain(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    recipe = recipe_runner_write_recipe(BASE, "plain.toml")
    assert recipe_runner_cli("--lock", recipe).code == 0
    assert "extends" not in json.loads((tmp_path / "plain.lock").read_text())
