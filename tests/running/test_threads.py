"""``[run] threads``: the CPU thread count a recipe generates with (issue 22, item 1).

Validated (exit 2 at ``run.threads``), shown by ``--dry-run`` and ``--schema``, applied with
``torch.set_num_threads`` for the time a recipe generates and restored after, recorded as
``environment.threads``, and part of the job key only when set: keys of recipes without it are the
recorded ones (tests/golden), and a change of the count regenerates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipe_runner import hookimpl
from recipe_runner.plugin_api import manager as plugins
from tests.conftest import REPO, manifest_of, pixels, tiny_recipe

GOLDEN = json.loads((REPO / "tests" / "golden" / "shipped-recipes.json").read_text())

# Two prompts by two seeds: on this tiny pipeline, one thread and two round differently.
THREADED = tiny_recipe("a cat", "a dog", seeds=[0, 1], tables="[run]\nthreads = {threads}")


@pytest.mark.parametrize(("value", "expected"), [
    ("0", "expected a positive integer (CPU threads, as torch.set_num_threads takes), got integer 0"),
    ("-2", "got integer -2"),
    ("1.5", "got number 1.5"),
    ("true", "got boolean True"),
    ('"2"', "got string '2'"),
])
def test_threads_that_are_not_a_positive_integer_are_refused_at_their_line(recipe_runner_cli, recipe_runner_write_recipe,
                                                                          value, expected):
    recipe = recipe_runner_write_recipe(THREADED.replace("{threads}", value))
    result = recipe_runner_cli("--dry-run", recipe)
    assert result.code == 2
    assert f"{recipe}:10: run.threads: " in result.err and expected in result.err, result.err
    assert "Traceback" not in result.err


def test_threads_through_set_are_validated_and_shown_by_dry_run(recipe_runner_cli, recipe_runner_write_recipe):
    recipe = recipe_runner_write_recipe(tiny_recipe())
    bad = recipe_runner_cli("--dry-run", recipe, "--set", "run.threads=0")
    assert bad.code == 2 and "--set: run.threads: expected a positive integer" in bad.err, bad.err
    shown = recipe_runner_cli("--dry-run", recipe, "--set", "run.threads=1")
    assert shown.code == 0 and "generator on cpu, 1 CPU thread\n" in shown.out, shown.out
    assert "CPU thread" not in recipe_runner_cli("--dry-run", recipe).out  # unset: nothing said
    assert "3 CPU threads" in recipe_runner_cli("--dry-run", recipe, "--set", "run.threads=3").out


def test_the_schema_documents_threads_as_an_integer_of_at_least_one(recipe_runner_cli):
    result = recipe_runner_cli("--schema")
    threads = json.loads(result.out)["$defs"]["RunSpec"]["properties"]["threads"]
    assert threads["type"] == "integer" and threads["minimum"] == 1
    assert "torch.set_num_threads" in threads["description"] and "baselines" in threads["description"]


def test_the_resolved_recipe_names_threads_only_when_set():
    from recipe_runner.recipe.model import Recipe

    base = {"name": "r", "model": {"id": "tiny:sd15"}, "matrix": {"prompts": ["a cat"]}}
    assert "threads" not in Recipe.model_validate(base).model_dump(mode="json")["run"]  # manifests as before
    assert Recipe.model_validate({**base, "run": {"threads": 2}}).model_dump(mode="json")["run"]["threads"] == 2


def shipped_keys(sets: list[str]) -> list[str]:
    """The job keys of recipes/tiny.toml (with ``sets``), computed as a re-run computes them."""
    from recipe_runner.plugin_api.manager import load_plugins
    from recipe_runner.records.keys import job_keys
    from recipe_runner.running.prepare import Options, prepare_all

    (prepared,) = prepare_all([REPO / "recipes" / "tiny.toml"], sets, load_plugins([]), Options(out=Path("unused")))
    return job_keys(prepared.variants, prepared.jobs, lambda v: "float32", {}, {}).keys


def test_keys_of_a_recipe_without_threads_are_the_recorded_ones_and_threads_changes_them(recipe_runner_tiny_sd15):
    recorded = {key for name, (key, _) in GOLDEN.items() if name.startswith("tiny/")}
    assert set(shipped_keys([])) == recorded  # the key is new: keys of recipes without it never change
    one, two = shipped_keys(["run.threads=1"]), shipped_keys(["run.threads=2"])
    assert not set(one) & recorded and not set(one) & set(two)


class ThreadProbe:
    """The CPU thread count each pipeline call runs with, by recipe."""

    def __init__(self) -> None:
        self.threads: list[tuple[str, int]] = []

    @hookimpl
    def before_batch(self, pipe, batch, call_kwargs):
        import torch

        self.threads.append((batch.jobs[0].prompt, torch.get_num_threads()))


@pytest.fixture
def probe():
    found = ThreadProbe()
    plugins.register(found, "thread-probe")
    yield found
    plugins.unregister(found)


@pytest.fixture
def two_threads():
    """The process's torch thread count is 2 for the test (the suite runs with 1), restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(before)


@pytest.mark.slow
def test_each_recipe_generates_with_its_own_count_recorded_and_restored_after(recipe_runner_cli, recipe_runner_write_recipe,
                                                                            tmp_path, probe, two_threads):
    import torch

    from recipe_runner.records.outputs import read_embedded

    one = recipe_runner_write_recipe(tiny_recipe("one thread", tables="[run]\nthreads = 1"), "one.toml")
    three = recipe_runner_write_recipe(tiny_recipe("three threads", tables="[run]\nthreads = 3"), "three.toml")
    unset = recipe_runner_write_recipe(tiny_recipe("unset"), "unset.toml")
    result = recipe_runner_cli(one, three, unset, "--out", tmp_path / "out", "--no-progress")
    assert result.code == 0, result.err
    assert probe.threads == [("one thread", 1), ("three threads", 3), ("unset", 2)]
    assert torch.get_num_threads() == two_threads  # the process's count is back
    for name, count in (("one", 1), ("three", 3), ("unset", 2)):
        manifest = manifest_of(tmp_path / "out" / name)
        assert manifest["environment"]["threads"] == count
        image = tmp_path / "out" / name / manifest["images"][0]["file"]
        assert json.loads(read_embedded(image)["environment"])["threads"] == count
    assert "threads" not in manifest_of(tmp_path / "out" / "unset")["recipe"]["run"]
    assert manifest_of(tmp_path / "out" / "one")["recipe"]["run"]["threads"] == 1


def test_a_failing_recipe_restores_the_count_too(recipe_runner_cli, recipe_runner_write_recipe, tmp_path, two_threads):
    import torch

    class FailsWhileGenerating:
        @hookimpl
        def before_batch(self, pipe, batch, call_kwargs):
            raise RuntimeError(f"failed on purpose with {torch.get_num_threads()} thread(s)")

    recipe = recipe_runner_write_recipe(tiny_recipe(tables="[run]\nthreads = 1"))
    plugin = FailsWhileGenerating()
    plugins.register(plugin, "fails-while-generating")
    try:
        result = recipe_runner_cli(recipe, "--out", tmp_path / "out", "--no-progress")
    finally:
        plugins.unregister(plugin)
    assert result.code == 1 and "failed on purpose with 1 thread(s)" in result.err, result.err
    assert torch.get_num_threads() == two_threads


@pytest.mark.slow
def test_changing_threads_regenerates_and_the_same_recipe_twice_is_nothing_to_do(recipe_runner_cli, recipe_runner_write_recipe,
                                                                                tmp_path):
    out = tmp_path / "out"
    recipe = recipe_runner_write_recipe(THREADED.replace("{threads}", "1"), "threaded.toml")
    folder = out / "threaded"
    assert recipe_runner_cli(recipe, "--out", out, "--no-progress").code == 0
    first = manifest_of(folder)
    made_with_one = {r["prompt"] + str(r["seed"]): pixels(folder / r["file"]) for r in first["images"]}
    before = (folder / "manifest.json").read_bytes()
    again = recipe_runner_cli(recipe, "--out", out, "--no-progress")
    assert again.code == 0 and "nothing to do" in again.out, again.out
    assert (folder / "manifest.json").read_bytes() == before

    two = recipe_runner_cli(recipe, "--out", out, "--no-progress", "--set", "run.threads=2")
    assert two.code == 0 and "0 new, 4 regenerated" in two.out and "0 unchanged" in two.out, two.out
    second = manifest_of(folder)
    assert second["environment"]["threads"] == 2
    assert not {r["key"] for r in first["images"]} & {r["key"] for r in second["images"]}
    made_with_two = {r["prompt"] + str(r["seed"]): pixels(folder / r["file"]) for r in second["images"]}
    # Measured on this pipeline: one and two threads round differently (PSNR 86 dB, max 1 level).
    differ = sum(bool((made_with_one[k] != made_with_two[k]).any()) for k in made_with_one)
    assert differ >= 1
    # the images that came out pixel-identical keep their files (#22: no churn), and the summary says so
    if differ < 4:
        assert f"4 regenerated ({4 - differ} pixel-identical: files kept)" in two.out, two.out
    assert "nothing to do" in recipe_runner_cli(recipe, "--out", out, "--no-progress", "--set", "run.threads=2").out


@pytest.mark.slow
def test_a_watch_round_generates_with_the_recipes_count_and_restores_it(recipe_runner_write_recipe, tmp_path, probe,
                                                                       two_threads, capsys):
    import torch

    from recipe_runner.plugin_api.manager import load_plugins
    from recipe_runner.running.prepare import Options
    from recipe_runner.running.watch import watch

    recipe = recipe_runner_write_recipe(tiny_recipe("watched", tables="[run]\nthreads = 1"), "watched.toml")
    assert watch([recipe], [], load_plugins(), Options(out=tmp_path / "out", progress=False), rounds=1) == 0
    assert probe.threads == [("watched", 1)] and torch.get_num_threads() == two_threads
    assert manifest_of(tmp_path / "out" / "watched")["environment"]["threads"] == 1


@pytest.mark.slow
def test_distributed_ranks_generate_with_the_recipes_count(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    """Under torchrun each rank pins the recipe's count (the launcher's OMP_NUM_THREADS=2 is not
    used), and the images equal a one-process run's."""
    import os
    import subprocess

    from tests.running.test_scale import torchrun

    if torchrun() is None:
        pytest.skip("torchrun is not installed")
    recipe = recipe_runner_write_recipe(THREADED.replace("{threads}", "1"), "ranks.toml")
    assert recipe_runner_cli(recipe, "--out", tmp_path / "one", "--no-progress").code == 0
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([torchrun(), "--nproc_per_node=2", "-m", "recipe_runner", str(recipe), "--out",
                           str(tmp_path / "two"), "--no-progress"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = manifest_of(tmp_path / "two" / "ranks")
    assert manifest["environment"]["world_size"] == 2 and manifest["environment"]["threads"] == 1
    assert {r["rank"] for r in manifest["images"]} == {0, 1}
    for record in manifest["images"]:
        assert (pixels(tmp_path / "two" / "ranks" / record["file"]) == pixels(tmp_path / "one" / "ranks" / record["file"])).all()
