"""A job is what it makes (issue 20, items 2 and 3).

A job's key and file name come from the resolved job: the pipeline (model, components,
optimizations, LoRA), the scheduler, every call parameter whether fixed or an axis value, the prompt
text after the vars, the seed and the inputs; however the recipe spells it. ``--compare`` pairs by
the same resolved fields. A folder made when names came from the job as written (an older
recipe-runner) is still "nothing to do". Jobs with one identity are generated once and shown in
every cell that asks for them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipe_runner.plugin_api import manager as plugins
from recipe_runner.records.keys import job_keys
from recipe_runner.running.prepare import Options, prepare
from tests.conftest import image_files

BASE = '''
name = "{name}"
[model]
id = "tiny:sd15"
device = "cpu"
[params]
num_inference_steps = 2
{params}
[matrix]
prompts = {prompts}
seeds = [0, 1]
{matrix}
[run]
batch_size = 2
'''

LITERAL = dict(params="guidance_scale = 7.5", prompts='["a red fox", "a blue house"]', matrix="")
AS_AXIS = dict(params="", prompts='["a red fox", "a blue house"]',
               matrix="[matrix.axes]\nguidance_scale = [7.5, 12.0]")
AS_VARS = dict(params="", prompts='["a {what}"]',
               matrix='[matrix.vars]\nwhat = ["red fox", "blue house"]\n[matrix.axes]\nguidance_scale = [7.5, 12.0]')


def text(name: str, spelling: dict[str, str]) -> str:
    return BASE.format(name=name, **spelling)


def planned(path: Path, out: Path, *sets: str):
    return prepare(path, list(sets), plugins.load_plugins([]), Options(out=out))


def names_and_keys(prepared) -> dict[tuple, tuple[str, str]]:
    """(prompt, seed, guidance_scale) -> (file name, job key), keys computed as a CPU run would."""
    keys = job_keys(prepared.variants, prepared.jobs, lambda v: "float32", {}, {})
    return {(j.prompt, j.seed, j.params.get("guidance_scale")): (j.filename("png"), keys.of(j)) for j in prepared.jobs}


def snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in image_files(folder)}


def test_a_job_s_name_and_key_do_not_depend_on_how_the_recipe_spells_it(recipe_runner_write_recipe, tmp_path):
    literal = names_and_keys(planned(recipe_runner_write_recipe(text("r", LITERAL), "a.toml"), tmp_path))
    axis = names_and_keys(planned(recipe_runner_write_recipe(text("r", AS_AXIS), "b.toml"), tmp_path))
    through_vars = names_and_keys(planned(recipe_runner_write_recipe(text("r", AS_VARS), "c.toml"), tmp_path))
    assert len(literal) == 4 and len(axis) == len(through_vars) == 8
    assert {k: axis[k] for k in literal} == literal  # the fixed 7.5 is the axis's 7.5
    assert through_vars == axis  # "a {what}" with what = "red fox" is "a red fox"
    # a scheduler, model or optimization written as a one-value axis is the same job too
    fixed = BASE.format(name="r", params="guidance_scale = 7.5", prompts='["a red fox"]',
                        matrix="") + '[scheduler]\nname = "EulerDiscreteScheduler"\n[optimizations]\nattention_slicing = true\n'
    as_axes = BASE.format(name="r", params="guidance_scale = 7.5", prompts='["a red fox"]',
                          matrix='[matrix.axes]\nscheduler = ["EulerDiscreteScheduler"]\nmodel = ["tiny:sd15"]\n'
                                 'optimizations.attention_slicing = [true]')
    one = names_and_keys(planned(recipe_runner_write_recipe(fixed, "d.toml"), tmp_path))
    other = names_and_keys(planned(recipe_runner_write_recipe(as_axes, "e.toml"), tmp_path))
    assert one == other
    # ... while what changes the pixels changes both
    steps = names_and_keys(planned(recipe_runner_write_recipe(text("r", LITERAL), "a.toml"), tmp_path,
                                   "params.num_inference_steps=3"))
    assert all(steps[k][0] != literal[k][0] and steps[k][1] != literal[k][1] for k in literal)


def run(cli, path: Path, out: Path, *args: str):
    result = cli(path, "--out", out, "--no-progress", *args)
    assert result.code == 0, result.err
    return result


@pytest.mark.slow
def test_respelling_a_recipe_keeps_every_image_and_compare_pairs_them(recipe_runner_cli, recipe_runner_write_recipe,
                                                                      tmp_path, counter):
    """[params] guidance_scale = 7.5 moved into an axis [7.5, 12.0]: only the 12.0 images are made,
    the 7.5 ones keep bytes, inode and mtime (no history); the same prompts written through vars:
    nothing to do, nothing loaded; --compare pairs the literal run with the vars one."""
    out = tmp_path / "out"
    path = recipe_runner_write_recipe(text("sweep", LITERAL), "sweep.toml")
    run(recipe_runner_cli, path, out)
    folder = out / "sweep"
    before = snapshot(folder)
    first_manifest = json.loads((folder / "manifest.json").read_text())
    assert len(before) == 4

    path.write_text(text("sweep", AS_AXIS))
    counter.calls.clear()
    result = run(recipe_runner_cli, path, out)
    assert "4 new, 0 regenerated, 4 unchanged" in result.out
    made = [i for call in counter.calls for i in call]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert sorted(manifest["images"][i]["params"]["guidance_scale"] for i in made) == [12.0] * 4
    after = snapshot(folder)
    assert {k: after[k] for k in before} == before and len(after) == 8
    assert not (folder / "history").exists()

    path.write_text(text("sweep", AS_VARS))
    counter.calls.clear()
    result = run(recipe_runner_cli, path, out)
    assert "0 new, 0 to regenerate, 8 unchanged; nothing to do, nothing loaded" in result.out
    assert counter.calls == [] and snapshot(folder) == after

    # --compare pairs the literal prompts (the first run's manifest) with the vars' by resolved fields
    old = tmp_path / "first"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps(first_manifest))
    compared = recipe_runner_cli("--compare", old / "manifest.json", folder, "--out", tmp_path / "report")
    report = json.loads((tmp_path / "report" / "compare.json").read_text())
    statuses = sorted(p["status"] for p in report["pairs"])
    assert statuses == ["identical"] * 4 + ["only-b"] * 4, compared.out


def to_older_layout(folder: Path) -> dict[str, str]:
    """Rewrite a folder as recipe-runner wrote it before names came from the resolved job: each
    file named by its cell (the job as written), the manifest's records without the fields added
    since. Returns new name -> old name."""
    manifest = json.loads((folder / "manifest.json").read_text())
    renamed = {}
    for record in manifest["images"]:
        old = f"{record.pop('cell')}.png"
        record.pop("same_as", None)
        if record["file"] not in renamed:
            (folder / record["file"]).rename(folder / old)
            renamed[record["file"]] = old
        record["file"] = renamed[record["file"]]
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return renamed


@pytest.mark.slow
def test_a_folder_named_the_older_way_stays_nothing_to_do(recipe_runner_cli, recipe_runner_write_recipe, tmp_path,
                                                          counter):
    out = tmp_path / "out"
    path = recipe_runner_write_recipe(text("older", AS_AXIS), "older.toml")
    run(recipe_runner_cli, path, out)
    folder = out / "older"
    renamed = to_older_layout(folder)
    assert all(new != old for new, old in renamed.items())
    before, manifest_bytes = snapshot(folder), (folder / "manifest.json").read_bytes()
    counter.calls.clear()
    result = run(recipe_runner_cli, path, out)
    assert "0 new, 0 to regenerate, 8 unchanged; nothing to do, nothing loaded" in result.out
    assert snapshot(folder) == before and (folder / "manifest.json").read_bytes() == manifest_bytes
    dry = recipe_runner_cli("--dry-run", path, "--out", out)
    assert "a run now      0 new, 0 to regenerate, 8 unchanged" in dry.out
    # a run that makes something keeps the older files as they are, under their names
    result = run(recipe_runner_cli, path, out, "--set", "matrix.seeds=[0, 1, 2]")
    assert "4 new, 0 regenerated, 8 unchanged" in result.out and len(counter.calls) == 2
    after = snapshot(folder)
    assert {k: after[k] for k in before} == before and not (folder / "history").exists()
    files = {r["file"] for r in json.loads((folder / "manifest.json").read_text())["images"]}
    assert set(renamed.values()) <= files and len(files) == 12
    # and an edit still replaces the older files, kept in the history
    result = run(recipe_runner_cli, path, out, "--set", "matrix.seeds=[0, 1, 2]", "--set", "params.num_inference_steps=3")
    assert "0 new, 12 regenerated, 0 unchanged" in result.out
    history = json.loads((folder / "manifest.json").read_text())["history"]
    assert set(renamed.values()) <= {r["file"] for r in history["replaced"]}


@pytest.mark.slow
def test_equal_jobs_are_generated_once_and_shown_in_every_cell(recipe_runner_cli, recipe_runner_write_recipe,
                                                                tmp_path, counter):
    """"a {what}" with what = "cat" and a literal "a cat": one job, two cells."""
    recipe = BASE.format(name="twice", params="", prompts='["a {what}", "a cat"]',
                         matrix='[matrix.vars]\nwhat = ["cat", "dog"]')
    path = recipe_runner_write_recipe(recipe, "twice.toml")
    dry = recipe_runner_cli("--dry-run", path, "--out", tmp_path / "out")
    assert "jobs           6 in 2 batches" in dry.out and "2 equal to another job" in dry.out
    result = run(recipe_runner_cli, path, tmp_path / "out")
    assert "4 new, 0 regenerated, 0 unchanged, 2 shown from an equal job; made 4" in result.out
    assert sorted(len(call) for call in counter.calls) == [2, 2]
    folder = tmp_path / "out" / "twice"
    records = json.loads((folder / "manifest.json").read_text())["images"]
    assert len(records) == 6 and len(image_files(folder)) == 4
    assert [r["file"] for r in records[:2]] == [r["file"] for r in records[4:]]
    assert all(r["status"] == "done" and r["sha256"] for r in records)
    assert [r.get("same_as") for r in records] == [None, None, None, None, 0, 1]
    counter.calls.clear()
    again = run(recipe_runner_cli, path, tmp_path / "out")
    assert "0 new, 0 to regenerate, 4 unchanged, 2 shown from an equal job; nothing to do" in again.out
