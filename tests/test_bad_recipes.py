"""Bad recipes and command lines: exit 2, one clear message naming file, key, line where known,
what was expected and "did you mean ...?"; never a traceback, and nothing written."""

from __future__ import annotations

import pytest

BASE = '''
[model]
id = "tiny:sd15"
device = "cpu"
[params]
num_inference_steps = 2
[matrix]
prompts = ["a photo of {who}"]
seeds = 1
[matrix.vars]
who = ["a cat"]
'''

# (id, recipe text, extra CLI args, fragments the message must contain)
CASES = [
    ("invalid-toml", '[model]\nid = "tiny:sd15\n', [], ["recipe.toml:2:", "invalid TOML"]),
    ("missing-model", '[matrix]\nprompts = ["a"]\n', [], ["model: required key is missing"]),
    ("unknown-top-key", BASE + '[modle]\nid = "x"\n', [], ["recipe.toml:11: modle: unknown key", "did you mean 'model'?"]),
    ("unknown-model-key", BASE.replace('device = "cpu"', 'devise = "cpu"'), [],
     ["recipe.toml:3: model.devise: unknown key", "did you mean 'device'?"]),
    ("bad-dtype", BASE.replace('device = "cpu"', 'dtype = "float61"'), [],
     ["model.dtype: expected 'auto', 'float32', 'float16' or 'bfloat16'", "did you mean 'float16'?"]),
    ("bad-device", BASE.replace('device = "cpu"', 'device = "gpu"'), [], ["model.device", '"cuda:N"']),
    ("bad-task", BASE.replace('device = "cpu"', 'task = "img2img"'), [], ["model.task: expected", "'image-to-image'"]),
    ("seeds-string", BASE.replace("seeds = 1", 'seeds = "3"'), [], ["recipe.toml:8: matrix.seeds", "list of integers"]),
    ("negative-seed", BASE.replace("seeds = 1", "seeds = [-1]"), [], ["matrix.seeds", "between 0 and 2**64-1"]),
    ("batch-size-zero", BASE + "[run]\nbatch_size = 0\n", [], ["run.batch_size", 'positive integer or "auto"']),
    ("empty-prompts", BASE.replace('prompts = ["a photo of {who}"]', "prompts = []").replace('who = ["a cat"]', ""), [],
     ["matrix.prompts", "at least 1"]),
    ("unknown-optimization", BASE + "[optimizations]\nattention_slicin = true\n", [],
     ["optimizations.attention_slicin: unknown optimization", "did you mean 'attention_slicing'?"]),
    ("bad-plugin-setting", BASE + "[optimizations]\nattention_slicing = { slice = 2 }\n", [],
     ["optimizations.attention_slicing.slice: unknown key", "did you mean 'slice_size'?"]),
    ("bad-plugin-value", BASE + '[optimizations]\nattention_slicing = { slice_size = "most" }\n', [],
     ["optimizations.attention_slicing.slice_size"]),
    ("optimization-not-bool", BASE + "[optimizations]\nattention_slicing = 3\n", [],
     ["optimizations.attention_slicing: expected true, false or a table"]),
    ("undeclared-placeholder", BASE.replace("{who}", "{whoo}"), [],
     ["matrix.prompts.0: placeholder {whoo} is not declared", "did you mean {who}?"]),
    ("unused-var", BASE + 'where = ["x"]\n', [], ["matrix.vars.where: declared but no prompt uses it"]),
    ("zip-unequal", BASE.replace("seeds = 1", 'seeds = [1, 2]\nmode = "zip"'), [],
     ['"zip" pairs the i-th entries', "matrix.seeds has 2"]),
    ("t2i-with-images", BASE.replace("seeds = 1", 'seeds = 1\nimages = ["cat.png"]'), [],
     ["matrix.images: text-to-image takes no input images", 'model.task = "image-to-image"']),
    ("i2i-missing-image", BASE.replace('device = "cpu"', 'task = "image-to-image"').replace("seeds = 1", 'seeds = 1\nimages = ["nope.png"]'), [],
     ["matrix.images.0: no such image file"]),
    ("i2i-no-images", BASE.replace('device = "cpu"', 'task = "image-to-image"'), [],
     ["matrix.images: image-to-image needs input images"]),
    ("http-url", BASE.replace('device = "cpu"', 'task = "image-to-image"').replace("seeds = 1", 'seeds = 1\nimages = ["http://example.org/a.png"]'), [],
     ["only https URLs are fetched"]),
    ("reserved-param", BASE.replace("num_inference_steps = 2", 'prompt = "x"'), [],
     ["params.prompt: set by the runner", "[matrix] prompts"]),
    ("axis-and-param", BASE + "[matrix.axes]\nnum_inference_steps = [2, 3]\n", [],
     ["matrix.axes.num_inference_steps: also set in [params]"]),
    ("name-with-slash", 'name = "../escape"\n' + BASE, [], ["name: a recipe name names its output folder"]),
    ("bad-set", BASE, ["--set", "params.steps"], ["--set expects KEY=VALUE"]),
    ("set-type-error", BASE, ["--set", "run.batch_size=many"], ["--set: run.batch_size", 'positive integer or "auto"']),
    ("missing-extends", 'extends = "base.toml"\n' + BASE, [], ["extends 'base.toml', but", "does not exist"]),
    ("bad-plugin-module", BASE, ["-p", "no_such_plugin_module"], ["cannot import plugin module 'no_such_plugin_module'"]),
    # Found only with the loaded pipeline, still before the first image:
    ("unknown-param", BASE.replace("num_inference_steps = 2", "num_inference_steps = 2\nguidance_scael = 7.0"), [],
     ["recipe.toml:6: params.guidance_scael: not a parameter of StableDiffusionPipeline", "did you mean 'guidance_scale'?"]),
    ("strength-on-t2i", BASE.replace("num_inference_steps = 2", "num_inference_steps = 2\nstrength = 0.5"), [],
     ["params.strength: not a parameter", "strength is for image-to-image"]),
    ("unknown-scheduler", BASE + '[scheduler]\nname = "DPMSolverMultistepSchedular"\n', [],
     ["scheduler.name: unknown scheduler 'DPMSolverMultistepSchedular'", "did you mean 'DPMSolverMultistepScheduler'?"]),
    ("incompatible-scheduler", BASE + '[scheduler]\nname = "FlowMatchEulerDiscreteScheduler"\n', [],
     ["FlowMatchEulerDiscreteScheduler is not compatible with StableDiffusionPipeline", "compatible: ", "EulerDiscreteScheduler"]),
    ("scheduler-option", BASE + '[scheduler]\nname = "DPMSolverMultistepScheduler"\n[scheduler.options]\nuse_karas_sigmas = true\n', [],
     ["scheduler.options.use_karas_sigmas: DPMSolverMultistepScheduler has no option", "did you mean 'use_karras_sigmas'?"]),
    ("unknown-component", BASE + '[components.vea]\nid = "stabilityai/sd-vae-ft-mse"\n', [],
     ["components.vea: StableDiffusionPipeline has no component 'vea'", "did you mean 'vae'?"]),
    ("missing-local-model", BASE.replace('id = "tiny:sd15"', 'id = "./models/nothing-here"'), [], ["model.id: no such folder"]),
    ("unknown-tiny-kind", BASE.replace('id = "tiny:sd15"', 'id = "tiny:sd99"'), [], ["model.id", "sd15"]),
]


@pytest.mark.parametrize(("text", "args", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_recipe_exits_2_with_a_clear_message(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, text, args, fragments):
    recipe = recipe_runner_write_recipe(text)
    out = tmp_path / "out"
    result = recipe_runner_cli(recipe, "--out", out, *args)
    assert result.code == 2, result.err
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in result.err, f"{fragment!r} not in {result.err!r}"
    assert not out.exists() or not any(out.rglob("*.png")), "nothing may be written for an invalid recipe"


def test_there_are_at_least_15_distinct_bad_recipes():
    assert len({c[0] for c in CASES}) >= 15


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
