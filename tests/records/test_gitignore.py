"""Output and report roots the tool creates ignore themselves in git (#22 item 7): ``<root>/.gitignore``
holding ``*``, as pytest and ruff do for their caches; never in a root that existed, never for a
baseline, never over a user's file."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import tiny_recipe

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")

RECIPE = 'name = "ign"\n' + tiny_recipe("a red fox")
FIRST_LINE = "# created by recipe-run; a committed baseline: recipe-run --update-baseline"


def staged_after_add(repo: Path) -> list[str]:
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, capture_output=True)
    done = subprocess.run(["git", "diff", "--cached", "--name-only"], cwd=repo, check=True, capture_output=True, text=True)
    return done.stdout.split()


@pytest.mark.slow  # three runs: about 3 s with the model warm
def test_a_created_output_root_stages_nothing_and_an_existing_one_gets_no_file(recipe_runner_cli,
                                                                                recipe_runner_write_recipe,
                                                                                recipe_runner_tiny_sd15, tmp_path):
    recipe = recipe_runner_write_recipe(RECIPE, "ign.toml")
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    assert recipe_runner_cli(recipe, "--out", repo / "renders", "--no-progress").code == 0
    text = (repo / "renders" / ".gitignore").read_text()
    assert text.splitlines() == [FIRST_LINE, "*"]
    assert staged_after_add(repo) == []
    assert (repo / "renders" / "ign" / "manifest.json").is_file()  # the run wrote there all the same

    existing = repo / "mine"
    existing.mkdir()
    assert recipe_runner_cli(recipe, "--out", existing, "--no-progress").code == 0
    assert not (existing / ".gitignore").exists()
    assert "mine/ign/manifest.json" in staged_after_add(repo)

    baseline = repo / "baseline"
    assert recipe_runner_cli("--update-baseline", recipe, "--out", baseline, "--no-progress").code == 0
    assert not (baseline / ".gitignore").exists()
    assert "baseline/ign/manifest.json" in staged_after_add(repo)


def test_a_dry_run_creates_no_root(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    recipe = recipe_runner_write_recipe(RECIPE, "ign.toml")
    assert recipe_runner_cli("--dry-run", recipe, "--out", tmp_path / "never").code == 0
    assert not (tmp_path / "never").exists()


def test_a_created_compare_report_root_gets_one_an_existing_one_none(recipe_runner_cli, recipe_runner_write_recipe,
                                                                      recipe_runner_tiny_sd15, tmp_path):
    recipe = recipe_runner_write_recipe(RECIPE, "ign.toml")
    assert recipe_runner_cli(recipe, "--out", tmp_path / "out", "--no-progress").code == 0
    run = tmp_path / "out" / "ign"
    result = recipe_runner_cli("--compare", run, run, "--out", tmp_path / "report")
    assert result.code == 0, result.err
    assert (tmp_path / "report" / ".gitignore").read_text().splitlines() == [FIRST_LINE, "*"]
    mine = tmp_path / "existing-report"
    mine.mkdir()
    assert recipe_runner_cli("--compare", run, run, "--out", mine).code == 0
    assert not (mine / ".gitignore").exists()


def test_the_helper_never_overwrites_a_users_file_and_writes_nothing_outside_the_root(tmp_path):
    from recipe_runner.base.paths import GITIGNORE_TEXT, ignore_created_root

    root = tmp_path / "root"
    root.mkdir()
    (root / ".gitignore").write_text("mine\n")
    assert ignore_created_root(root) is False
    assert (root / ".gitignore").read_text() == "mine\n"
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert ignore_created_root(fresh) is True
    assert (fresh / ".gitignore").read_text() == GITIGNORE_TEXT
    assert sorted(p.name for p in fresh.iterdir()) == [".gitignore"]  # no temporary file left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "root"]
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / ".gitignore").symlink_to(tmp_path / "target")
    assert ignore_created_root(linked) is False and not (tmp_path / "target").exists()
