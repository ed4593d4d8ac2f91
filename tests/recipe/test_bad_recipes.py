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


TWELVE = '''
name = "twelve"
[model]
id = "tiny:sd15"
devise = "cpu"
dtype = "float61"
[params]
num_inference_steps = 0
guidance_scale = "high"
prompt = "x"
generator = 1
[optimizations]
attention_slicing = { slice_size = 0 }
xformers = "yes"
[matrix]
prompts = ["a photo of {who}"]
seeds = [-1, 3.5]
[matrix.vars]
who = ["a cat"]
[run]
batch_size = 0
[output]
format = "gif"
quality = 500
[output.grid]
x = "sede"
'''


def test_one_run_reports_every_mistake_of_a_recipe_each_at_its_line(recipe_runner_cli, recipe_runner_write_recipe):
    """Issue 20, item 5: twelve mistakes in one recipe, in one pass: the other tables, values and list
    items are still checked after the first failure (the seeds' both items, both reserved params,
    the plugin settings and the output format even though the recipe itself did not validate)."""
    result = recipe_runner_cli(recipe_runner_write_recipe(TWELVE), "--dry-run")
    assert result.code == 2
    found = {}
    for line in result.err.splitlines():
        if line.startswith("error:"):
            where, key, _ = line[len("error: "):].split(": ", 2)
            found.setdefault(key, where.rsplit(":", 1)[1])
    assert found == {"model.devise": "4", "model.dtype": "5", "params.num_inference_steps": "7",
                     "params.guidance_scale": "8", "params.prompt": "9", "params.generator": "10",
                     "optimizations.attention_slicing.slice_size": "12", "optimizations.xformers": "13",
                     "matrix.seeds.0": "16", "matrix.seeds.1": "16", "run.batch_size": "20", "output.format": "22",
                     "output.quality": "23", "output.grid.x": "25"}, result.err
    assert "literal[" not in result.err and "constrained-int" not in result.err


def test_each_wrong_item_of_a_list_is_reported(recipe_runner_cli, recipe_runner_write_recipe):
    result = recipe_runner_cli(recipe_runner_write_recipe(BASE.replace("seeds = 1", "seeds = [-1, 3.5, 2, true]")), "--dry-run")
    assert result.code == 2
    assert "matrix.seeds.0: a seed must be between 0 and 2**64-1, got -1" in result.err
    assert "matrix.seeds.1: expected an integer seed, got 3.5" in result.err
    assert "matrix.seeds.3: expected an integer seed, got True" in result.err
    assert "matrix.seeds.2" not in result.err
    grid = BASE + '[output.grid]\nx = "sede"\ny = ["who", "prompt", "wo"]\n'
    result = recipe_runner_cli(recipe_runner_write_recipe(grid), "--dry-run")
    assert "output.grid.x: 'sede'" in result.err and "output.grid.x.0" not in result.err  # x written as a string
    assert "output.grid.y.2: 'wo'" in result.err and "did you mean 'who'?" in result.err


def test_the_axes_values_are_checked_when_another_table_failed(recipe_runner_cli, recipe_runner_write_recipe):
    text = BASE + ('[optimizations]\nattention_slicing = { slice_size = "most" }\n'
                   '[matrix.axes]\nlora = ["none", { id = "a.safetensors", scael = 1 }]\n')
    result = recipe_runner_cli(recipe_runner_write_recipe(text), "--dry-run")
    assert result.code == 2
    assert "optimizations.attention_slicing.slice_size" in result.err
    assert "matrix.axes.lora.1.0.scael: unknown key" in result.err, result.err
