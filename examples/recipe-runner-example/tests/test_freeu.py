"""The example plugin's own tests: they use recipe-runner's pytest plugin (recipe_runner.testing), which
provides the tiny pipelines, ``recipe_runner_register_plugin``, ``recipe_runner_cli`` and
``recipe_runner_write_recipe``; no GPU, no download."""

import json

import recipe_runner_example

RECIPE = """
[model]
id = "tiny:sd15"
device = "cpu"
[params]
num_inference_steps = 2
[matrix]
prompts = ["a cat on a roof"]
seeds = [0]
"""


def run(cli, write_recipe, tmp_path, name, optimizations=""):
    recipe = write_recipe(RECIPE + optimizations, f"{name}.toml")
    result = cli(recipe, "--out", tmp_path)
    assert result.code == 0, result.err
    folder = tmp_path / name
    return folder, json.loads((folder / "manifest.json").read_text())


def test_freeu_changes_the_image_and_is_recorded(recipe_runner_register_plugin, recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    recipe_runner_register_plugin(recipe_runner_example, "freeu-under-test")
    plain, original = run(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, "plain")
    folder, manifest = run(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, "freeu", "[optimizations]\nfreeu = { b1 = 1.2 }\n")
    assert manifest["optimizations"]["freeu"]["status"] == "applied"
    assert manifest["optimizations"]["freeu"]["settings"]["b1"] == 1.2
    image, before = manifest["images"][0]["file"], original["images"][0]["file"]  # the same job, named by its pipeline
    assert (folder / image).read_bytes() != (plain / before).read_bytes()


def test_a_bad_setting_is_exit_2_with_the_key(recipe_runner_register_plugin, recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    recipe_runner_register_plugin(recipe_runner_example, "freeu-under-test")
    recipe = recipe_runner_write_recipe(RECIPE + "[optimizations]\nfreeu = { b3 = 1.0 }\n")
    result = recipe_runner_cli(recipe, "--out", tmp_path, "--dry-run")
    assert result.code == 2
    assert "optimizations.freeu.b3: unknown key" in result.err


# --- the watermark: an after_batch hook, job_identity and a run_finished report ---------------

def test_the_watermark_is_drawn_by_after_batch_and_reported(recipe_runner_register_plugin, recipe_runner_cli,
                                                            recipe_runner_write_recipe, tmp_path):
    from PIL import Image

    recipe_runner_register_plugin(recipe_runner_example, "freeu-under-test")
    plain, unmarked = run(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, "plain")
    folder, manifest = run(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, "marked",
                           "[optimizations]\nwatermark = { shade = 0, height = 3 }\n")
    image, before = manifest["images"][0]["file"], unmarked["images"][0]["file"]  # the same job, named by its pipeline
    with Image.open(folder / image) as marked, Image.open(plain / before) as original:
        assert marked.getpixel((5, 63)) == (0, 0, 0)  # the band, replaced into the list by after_batch
        assert marked.getpixel((5, 10)) == original.getpixel((5, 10))  # the rest untouched
    assert manifest["optimizations"]["watermark"]["drawn_by"] == "after_batch"  # apply's facts
    assert manifest["images"][0]["facts"] == {"watermark_rows": [61, 64]}  # after_batch's facts, per image
    report = json.loads((folder / "watermark-report.json").read_text())
    assert report == {"watermarked": [image], "settings": {"required": True, "shade": 0, "height": 3}}
    assert not (plain / "watermark-report.json").exists()  # run_finished writes only for its own runs


def test_the_watermark_takes_part_in_the_job_key(recipe_runner_register_plugin, recipe_runner_cli,
                                                 recipe_runner_write_recipe, tmp_path):
    recipe_runner_register_plugin(recipe_runner_example, "freeu-under-test")
    marked = RECIPE + "[optimizations]\nwatermark = true\n"
    summaries = []
    for text in (marked, marked, RECIPE, marked):  # made, unchanged, removed, added back
        result = recipe_runner_cli(recipe_runner_write_recipe(text, "same.toml"), "--out", tmp_path)
        assert result.code == 0, result.err
        summaries.append(result.out.splitlines()[0].split("images: ", 1)[1].split(";")[0])
    assert summaries == ["1 new, 0 regenerated, 0 unchanged", "0 new, 0 to regenerate, 1 unchanged",
                         "0 new, 1 regenerated, 0 unchanged", "0 new, 1 regenerated, 0 unchanged"]


# --- the freeu_preset axis kind ----------------------------------------------------------------

def test_the_preset_axis_makes_one_variant_per_preset(recipe_runner_register_plugin, recipe_runner_cli,
                                                      recipe_runner_write_recipe, tmp_path):
    recipe_runner_register_plugin(recipe_runner_example, "freeu-under-test")
    folder, manifest = run(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, "presets",
                           '[matrix.axes]\nfreeu_preset = ["sd15", "sdxl"]\n')
    files = [folder / image["file"] for image in manifest["images"]]
    assert len(files) == 2 and files[0].read_bytes() != files[1].read_bytes()
    variants = manifest["optimizations"]["freeu"]["variants"]
    assert [v["settings"]["b1"] for v in variants.values()] == [1.5, 1.1]


def test_a_bad_preset_is_exit_2_naming_the_value(recipe_runner_register_plugin, recipe_runner_cli,
                                                 recipe_runner_write_recipe, tmp_path):
    recipe_runner_register_plugin(recipe_runner_example, "freeu-under-test")
    recipe = recipe_runner_write_recipe(RECIPE + '[matrix.axes]\nfreeu_preset = ["sd21"]\n')
    result = recipe_runner_cli(recipe, "--out", tmp_path, "--dry-run")
    assert result.code == 2
    assert "matrix.axes.freeu_preset.0: expected one of sd15, sdxl, got 'sd21'" in result.err
