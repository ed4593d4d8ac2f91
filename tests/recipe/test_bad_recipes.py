"""Bad command lines, and a recipe with several problems: exit 2, every problem listed at once,
never a traceback. One problem per recipe file is the corpus's job (tests/recipe/bad_recipes/, run by
test_bad_recipe_corpus.py)."""

from __future__ import annotations

import pytest

from tests.conftest import tiny_recipe

BASE = tiny_recipe("a photo of {who}", seeds=1, matrix='[matrix.vars]\nwho = ["a cat"]')


def test_bad_command_lines_exit_2(recipe_runner_cli, tmp_path):
    assert recipe_runner_cli().code == 2
    with pytest.raises(SystemExit) as info:
        recipe_runner_cli("--no-such-flag")
    assert info.value.code == 2
    missing = recipe_runner_cli(tmp_path / "missing.toml")
    assert missing.code == 2 and "missing.toml" in missing.err and "cannot read recipe" in missing.err


def test_every_problem_of_a_recipe_is_listed_at_once(recipe_runner_cli, recipe_runner_write_recipe):
    text = BASE.replace('device = "cpu"', 'devise = "cpu"').replace("seeds = 1", 'seeds = "x"')
    result = recipe_runner_cli(recipe_runner_write_recipe(text), "--dry-run")
    assert result.code == 2
    assert "model.devise" in result.err and "matrix.seeds" in result.err
