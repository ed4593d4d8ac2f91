"""Property: whatever text a recipe file holds, and whatever --set overrides mutate a valid one,
loading, validating, expanding the matrix and enabling optimizations raise only RecipeError."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recipe_runner.base.errors import RecipeError
from recipe_runner.plan.matrix import expand
from recipe_runner.plugin_api.manager import load_plugins
from recipe_runner.recipe.loading import load
from recipe_runner.recipe.model import validate
from tests.conftest import REPO

VALID = REPO / "recipes" / "tiny.toml"
PLUGINS = load_plugins([])
KEYS = ["name", "extends", "model", "model.id", "model.dtype", "model.task", "model.device", "model.revision",
        "model.custom_pipeline", "components.vae.id", "components.vae", "scheduler", "scheduler.name",
        "scheduler.options.x", "optimizations", "optimizations.attention_slicing",
        "optimizations.attention_slicing.slice_size", "params", "params.num_inference_steps", "params.prompt",
        "matrix", "matrix.prompts", "matrix.seeds", "matrix.images", "matrix.mask_images", "matrix.mode",
        "matrix.vars", "matrix.vars.who", "matrix.axes", "matrix.axes.guidance_scale", "matrix.axes.scheduler",
        "run", "run.batch_size", "run.max_jobs", "run.generator_device", "output.format", "output.quality", "x.y.z"]
VALUES = ["1", "0", "-1", "true", "1.5e308", "nan", '"auto"', '""', '"{who}"', '"{"', '"}{"', "[]", "[1, 2]",
          '["a {who}"]', '["{x}", "{y}"]', "{}", '{ name = "DDIMScheduler" }', '{ a = 1 }', "[[1]]", '"../x"',
          '"/abs"', "99999999999999999999", '"zip"', '"product"', "2024-01-01", '"tiny:sd15"', "[{}]", "bare word"]


def check(path: Path, sets: list[str]) -> None:
    try:
        loaded = load(path, sets)
        recipe = validate(loaded)
        expand(recipe, loaded)
        PLUGINS.registry.enable(recipe.optimizations, loaded.problem)
    except RecipeError as exc:
        assert exc.problems and all(str(p) for p in exc.problems)


FOLDER = Path(tempfile.mkdtemp(prefix="recipe-fuzz-"))


def write(text: str) -> Path:
    path = FOLDER / "fuzz.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from(list('[]{}="., \n#abcdeimnoprstuxyz0123456789-_{}\'')) | st.characters(),
               max_size=300))
def test_random_text_only_ever_raises_recipe_error(text):
    check(write(text), [])


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(VALUES) | st.text(max_size=12)), max_size=4))
def test_set_mutations_of_a_valid_recipe_only_ever_raise_recipe_error(mutations):
    check(VALID, [f"{key}={value}" for key, value in mutations])


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_text_mutations_of_a_valid_recipe_only_ever_raise_recipe_error(data):
    text = VALID.read_text()
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 8))
        insert = data.draw(st.sampled_from(VALUES + ["[", "]", "=", "\n", '"', "{", "}", "\n[matrix.vars]\n", ""]))
        text = text[:at] + insert + text[at + cut:]
    check(write(text), [])
