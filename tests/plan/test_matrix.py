"""The matrix (pure, deterministic jobs) and the plan (batch boundaries)."""

from __future__ import annotations

import re
import textwrap

import pytest

from recipe_runner.base.errors import RecipeError
from recipe_runner.plan.batches import initial_batch_size, plan
from recipe_runner.plan.matrix import expand, slug
from recipe_runner.recipe.loading import load
from recipe_runner.recipe.model import validate


def jobs_of(tmp_path, text):
    path = tmp_path / "r.toml"
    path.write_text(textwrap.dedent(text))
    loaded = load(path)
    return expand(validate(loaded), loaded)


def test_product_order_is_axes_then_prompts_then_images_then_seeds(tmp_path):
    jobs = jobs_of(tmp_path, """
        [model]
        id = "tiny:sd15"
        [matrix]
        prompts = ["photo of {who}", "plain"]
        seeds = 2
        [matrix.vars]
        who = ["an old chief", "a young chief"]
        [matrix.axes]
        guidance_scale = [6.0, 8.0]
    """)
    got = [(j.params.get("guidance_scale"), j.prompt, j.seed) for j in jobs]
    expected = [(g, p, s) for g in (6.0, 8.0)
                for p in ("photo of an old chief", "photo of a young chief", "plain") for s in (0, 1)]
    assert got == expected
    assert [j.index for j in jobs] == list(range(12))
    assert jobs[2].vars == {"who": "a young chief"}
    assert jobs[4].vars == {}
    assert re.fullmatch(r"photo-of-an-old-chief-s0-[0-9a-f]{8}\.png", jobs[0].filename("png"))
    assert len({job.filename("png") for job in jobs}) == len(jobs)


def test_zip_pairs_the_ith_entries(tmp_path):
    jobs = jobs_of(tmp_path, """
        [model]
        id = "tiny:sd15"
        task = "image-to-image"
        [matrix]
        mode = "zip"
        prompts = ["a", "b", "c"]
        seeds = [5, 6, 7]
        images = ["x.png", "y.png", "z.png"]
        [matrix.axes]
        strength = [0.3, 0.5, 0.7]
    """)
    assert [(j.prompt, j.seed, j.image, j.params["strength"]) for j in jobs] == [
        ("a", 5, "x.png", 0.3), ("b", 6, "y.png", 0.5), ("c", 7, "z.png", 0.7)]


def test_warrior_variations_are_one_template_with_a_var(tmp_path):
    jobs = jobs_of(tmp_path, """
        [model]
        id = "tiny:sd15"
        [matrix]
        prompts = ["portrait photo of {who}, tribal panther make up"]
        seeds = [1]
        [matrix.vars]
        who = ["the oldest warrior chief", "a old warrior chief", "a warrior chief", "a young warrior chief"]
    """)
    assert [j.prompt.split(",")[0] for j in jobs] == [
        "portrait photo of the oldest warrior chief", "portrait photo of a old warrior chief",
        "portrait photo of a warrior chief", "portrait photo of a young warrior chief"]
    assert {j.seed for j in jobs} == {1}
    assert [len(b.jobs) for b in plan(jobs, 4)] == [4]


def test_scheduler_axis_is_outermost(tmp_path):
    jobs = jobs_of(tmp_path, """
        [model]
        id = "tiny:sd15"
        [matrix]
        prompts = ["a"]
        seeds = 2
        [matrix.axes]
        num_inference_steps = [2, 4]
        scheduler = ["EulerDiscreteScheduler", { name = "DPMSolverMultistepScheduler", options = { use_karras_sigmas = true } }]
    """)
    assert [(j.scheduler["name"][:5], j.params["num_inference_steps"], j.seed) for j in jobs] == [
        ("Euler", 2, 0), ("Euler", 2, 1), ("Euler", 4, 0), ("Euler", 4, 1),
        ("DPMSo", 2, 0), ("DPMSo", 2, 1), ("DPMSo", 4, 0), ("DPMSo", 4, 1)]
    assert jobs[-1].scheduler["options"] == {"use_karras_sigmas": True}


def test_batches_hold_consecutive_jobs_with_equal_parameters(tmp_path):
    jobs = jobs_of(tmp_path, """
        [model]
        id = "tiny:sd15"
        [matrix]
        prompts = ["a", "b"]
        seeds = 3
        [matrix.axes]
        guidance_scale = [6.0, 8.0]
    """)
    batches = plan(jobs, 4)
    assert [[j.index for j in b.jobs] for b in batches] == [[0, 1, 2, 3], [4, 5], [6, 7, 8, 9], [10, 11]]
    assert [b.index for b in batches] == [0, 1, 2, 3]
    assert initial_batch_size("auto", jobs, "cuda") == 6
    assert initial_batch_size("auto", jobs, "cpu") == 6
    assert initial_batch_size(3, jobs, "cpu") == 3


def test_expansion_is_deterministic(tmp_path):
    text = """
        [model]
        id = "tiny:sd15"
        [params]
        negative_prompt = "blurry {who}"
        [matrix]
        prompts = ["{who} in {where}"]
        seeds = [3, 1, 2]
        [matrix.vars]
        who = ["a", "b"]
        where = ["x", "y"]
    """
    assert jobs_of(tmp_path, text) == jobs_of(tmp_path, text)
    jobs = jobs_of(tmp_path, text)
    assert len(jobs) == 12
    assert jobs[0].params["negative_prompt"] == "blurry a"
    assert jobs[-1].prompt == "b in y" and jobs[-1].params["negative_prompt"] == "blurry b"


@pytest.mark.slow
def test_max_jobs_guards_against_an_accidental_giant_matrix(tmp_path):
    text = """
        [model]
        id = "tiny:sd15"
        [matrix]
        prompts = ["{a}{b}"]
        seeds = 1000
        [matrix.vars]
        a = [{a}]
        b = [{b}]
    """.replace("{a}]", ", ".join(f'"{i}"' for i in range(20)) + "]").replace(
        "{b}]", ", ".join(f'"{i}"' for i in range(10)) + "]")
    with pytest.raises(RecipeError, match=r"200,000 jobs is more than run.max_jobs \(100,000\)"):
        jobs_of(tmp_path, text)
    assert len(jobs_of(tmp_path, text + "[run]\nmax_jobs = 200000\n")) == 200_000


def test_slug():
    assert slug("Portrait photo of a old warrior chief, 50mm!") == "portrait-photo-of-a-old-warrior-chief-50mm"
    assert slug("!!!") == "image"
    assert len(slug("x" * 500)) == 48


GROWING = """
[model]
id = "tiny:sd15"
[matrix]
prompts = {prompts}
seeds = {seeds}
[matrix.vars]
who = {who}
[matrix.axes]
guidance_scale = {guidance}
"""


def test_a_job_s_file_name_is_what_it_is_not_where_it_stands(tmp_path):
    """Adding a seed, a prompt, a var value or an axis value leaves every other job's name alone."""

    def names(**changes):
        values = dict(prompts='["a {who} in a city", "a dog"]', seeds="[0, 1]", who='["cat"]', guidance="[6.0]")
        values.update(changes)
        return {(j.prompt, j.seed, j.params["guidance_scale"]): j.filename("png")
                for j in jobs_of(tmp_path, GROWING.format(**values))}

    base = names()
    for grown in (names(seeds="[0, 1, 2]"), names(prompts='["a {who} in a city", "a bird", "a dog"]'),
                  names(who='["cat", "fox"]'), names(guidance="[6.0, 8.0]"), names(seeds="[1, 0]")):
        assert {k: grown[k] for k in base} == base
        assert len(set(grown.values())) == len(grown)


def test_the_same_job_listed_twice_is_refused(tmp_path):
    with pytest.raises(RecipeError) as exc:
        jobs_of(tmp_path, GROWING.format(prompts='["a dog", "a dog"]', seeds="[0]", who='["cat"]', guidance="[6.0]")
                .replace('who = ["cat"]', "").replace("[matrix.vars]", ""))
    assert "r.toml:5: matrix.prompts.1: 'a dog' is listed twice (also matrix.prompts.0)" in str(exc.value)
    # at the list that repeats the value (its line), not at the [matrix] table (issue 20, item 9)
    with pytest.raises(RecipeError) as exc:
        jobs_of(tmp_path, GROWING.format(prompts='["a {who}"]', seeds="[3, 4, 3]", who='["cat", "cat"]',
                                         guidance="[6.0, 7.0, 6.0]"))
    assert [(p.key, p.line) for p in exc.value.problems] == [
        ("matrix.seeds.2", 6), ("matrix.vars.who.1", 8), ("matrix.axes.guidance_scale.2", 10)]
    # zipped lists pair up: the repeat is told as the two jobs it makes
    with pytest.raises(RecipeError, match="jobs 0 and 1 are the same job"):
        jobs_of(tmp_path, GROWING.format(prompts='["a dog", "a dog"]', seeds="[0, 0]", who="", guidance="[6.0, 6.0]")
                .replace("[matrix.vars]\nwho = \n", 'mode = "zip"\n'))
