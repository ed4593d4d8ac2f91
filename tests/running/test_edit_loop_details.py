"""The small things a user iterating on a recipe reads (issue 20, item 9): the dry run's header
names the schedulers a scheduler axis uses, counts read as English ("1 load"), the history line
tells replaced images from images no job makes any more, and ``--compare``'s recipe diff shows
no noise such as ``matrix.vars: {} -> (absent)``. (A repeated seed at the ``seeds`` line:
tests/test_matrix.py; a grid name written as a string: tests/test_bad_recipes.py.)"""

from __future__ import annotations

import pytest

from recipe_runner.records.resume import NOT_MADE
from recipe_runner.running.session import where_to_look
from recipe_runner.views.compare import differences
from tests.conftest import REPO  # noqa: E402

RECIPE = """
name = "details"
[model]
id = "tiny:sd15"
device = "cpu"
[scheduler]
name = "DDIMScheduler"
[params]
num_inference_steps = 2
[matrix]
prompts = ["a red fox"]
seeds = 1
"""


def test_the_dry_run_header_names_the_schedulers_of_a_scheduler_axis(recipe_runner_cli, recipe_runner_write_recipe):
    axis = RECIPE + '[matrix.axes]\nscheduler = ["EulerDiscreteScheduler", { name = "DPMSolverMultistepScheduler", ' \
                    'options = { use_karras_sigmas = true } }]\n'
    result = recipe_runner_cli(recipe_runner_write_recipe(axis), "--dry-run")
    assert result.code == 0, result.err
    header = [line for line in result.out.splitlines() if line.startswith("  scheduler ")]
    assert header == ["  scheduler      by axis: EulerDiscreteScheduler, DPMSolverMultistepScheduler (use_karras_sigmas=true)"]
    assert "DDIMScheduler" not in result.out  # overridden in every job: not what the run uses
    plain = recipe_runner_cli(recipe_runner_write_recipe(RECIPE), "--dry-run")
    assert "  scheduler      DDIMScheduler" in plain.out


def test_the_history_line_tells_replaced_from_no_longer_made(tmp_path):
    out = tmp_path / "o"
    gone = [{"file": "a.png", "reason": NOT_MADE}, {"file": "b.png", "reason": NOT_MADE}]
    line = where_to_look(out, False, "history/T", gone)
    assert "2 images no job makes any more kept in" in line and "replaced" not in line
    one = where_to_look(out, False, "history/T", [{"file": "c.png", "reason": "its job changed since it was made"}])
    assert "1 replaced image kept in" in one
    both = where_to_look(out, True, "history/T", gone[:1] + [{"file": "c.png", "reason": "--force"}])
    assert "1 replaced image and 1 image no job makes any more kept in" in both and both.startswith("  gallery ")
    assert where_to_look(out, True, None) == f"  gallery {out / 'index.html'}"


def test_the_recipe_diff_has_no_default_against_absent_noise():
    a = {"matrix": {"prompts": ["x"], "vars": {}, "axes": {}, "images": []}, "scheduler": None, "params": {"steps": 2}}
    b = {"matrix": {"prompts": ["x"]}, "params": {"steps": 2}}
    assert differences(a, b) == []
    changed = differences(a, {"matrix": {"prompts": ["x"], "vars": {"who": ["a"]}}, "params": {"steps": 3}})
    assert sorted(changed) == [("matrix.vars.who", None, ["a"]), ("params.steps", 2, 3)]


@pytest.mark.slow
def test_a_run_that_loads_one_pipeline_says_1_load(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    recipe = recipe_runner_write_recipe(RECIPE + "[matrix.axes]\noptimizations.attention_slicing = [false, true]\n")
    result = recipe_runner_cli(recipe, "--out", tmp_path / "out", "--no-progress")
    assert result.code == 0, result.err
    assert ", 1 load, " in result.out and "1 loads" not in result.out


def test_the_docs_say_a_lora_axis_needs_peft():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    lora = readme.index("LoRA sets and scales")
    assert "peft" in readme[lora:lora + 60]
    assert [line for line in readme.splitlines() if "recipes/tiny-sweep.toml" in line and "peft" in line]
    axes = (REPO / "docs" / "axes.md").read_text(encoding="utf-8")
    example = axes.index("lora = [")
    assert "needs the `peft` package" in axes[example:example + 1200]
