"""One registry per extension point: a small plugin adds an axis kind, a model source, an output
format and a comparison metric, and a recipe uses them all (the core names none of them)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from recipe_runner.api import (
    AxisContext,
    AxisKind,
    Metric,
    ModelSource,
    OutputFormat,
    Problem,
    hookimpl,
)
from recipe_runner.axes.registry import KINDS
from recipe_runner.base.registry import Collision, Registry
from recipe_runner.pipelines.sources import SOURCES
from recipe_runner.records.formats import FORMATS
from recipe_runner.views.metrics import METRICS
from tests.conftest import image_files, pixels

DTYPES = {"full": "float32", "half": "bfloat16"}


class Precision(AxisKind):
    """``precision = ["full", "half"]``: a build axis that writes the model's dtype."""

    name = "precision"
    rank = 60
    description = "full or half: the model's dtype"

    def check(self, axis: str, values: list[Any], ctx: AxisContext) -> list[Problem]:
        return [ctx.problem(f"matrix.axes.{axis}.{i}", f"expected full or half, got {v!r}")
                for i, v in enumerate(values) if v not in DTYPES]

    def place(self, axis: str, value: Any, data: dict[str, Any]) -> list[tuple[str, Any]]:
        return [("model.dtype", DTYPES[value])]

    def schema(self, optimizations: Any) -> dict[str, Any]:
        return {"enum": list(DTYPES)}


class Fixture(ModelSource):
    """``fixture:<name>``: folders a test hands to the plugin."""

    name = "fixture"
    description = "fixture:<name>: a folder given by the test"
    safetensors_only = True
    folders: dict[str, Path] = {}

    def claims(self, model_id: str) -> bool:
        return model_id.startswith("fixture:")

    def problem(self, model_id: str) -> tuple[str, str | None] | None:
        return None if model_id[8:] in self.folders else (f"no fixture {model_id!r}", None)

    def locate(self, model_id: str, folder: Path) -> str:
        return str(self.folders[model_id[8:]])


class Tiff(OutputFormat):
    """TIFF with the recipe-runner text as JSON in the ImageDescription tag."""

    name = "tiff"
    extension = "tif"
    description = "lossless TIFF; metadata in ImageDescription"

    def encode(self, image: Any, quality: int, text: dict[str, str] | None) -> bytes:
        import io

        buffer = io.BytesIO()
        image.save(buffer, format="TIFF", tiffinfo={270: json.dumps(text or {})})
        return buffer.getvalue()

    def read_text(self, image: Any) -> dict[str, str]:
        try:
            return json.loads(image.tag_v2.get(270) or "{}")
        except (AttributeError, ValueError):
            return {}


class MeanDiff(Metric):
    name = "mean_diff"
    better = "lower"
    description = "the mean absolute channel difference"

    def compute(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))


class Extensions:
    @hookimpl
    def register_axis_kinds(self, register: Callable[[AxisKind], None]) -> None:
        register(Precision())

    @hookimpl
    def register_model_sources(self, register: Callable[[ModelSource], None]) -> None:
        register(Fixture())

    @hookimpl
    def register_output_formats(self, register: Callable[[OutputFormat], None]) -> None:
        register(Tiff())

    @hookimpl
    def register_metrics(self, register: Callable[[Metric], None]) -> None:
        register(MeanDiff())


RECIPE = '''
[model]
id = "{model}"
device = "cpu"
[params]
num_inference_steps = 2
[matrix]
prompts = ["a cat"]
seeds = [0, 1]
{axes}
[output]
format = "{fmt}"
'''


@pytest.fixture
def extensions(recipe_runner_register_plugin, recipe_runner_tiny_sd15):
    Fixture.folders = {"sd15": recipe_runner_tiny_sd15}
    yield recipe_runner_register_plugin(Extensions(), "extensions")
    for registry in (KINDS, SOURCES, FORMATS, METRICS):  # as the next load_plugins leaves them
        registry.reset()


@pytest.mark.slow
def test_a_plugin_adds_an_axis_kind_a_model_source_and_an_output_format_that_one_recipe_uses(
        extensions, recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    axes = '[matrix.axes]\nprecision = ["full", "half"]'
    recipe = recipe_runner_write_recipe(RECIPE.format(model="fixture:sd15", axes=axes, fmt="tiff"), "ext.toml")
    out = tmp_path / "out"
    dry = recipe_runner_cli(recipe, "--dry-run", "--out", out)
    assert dry.code == 0, dry.err
    assert "precision full" in dry.out and "precision half" in dry.out
    result = recipe_runner_cli(recipe, "--out", out, "--no-progress")
    assert result.code == 0, result.err
    made = sorted((out / "ext").glob("*.tif"))
    assert len(made) == 4
    manifest = json.loads((out / "ext" / "manifest.json").read_text())
    by_value: dict[str, list[np.ndarray]] = {}
    for record in sorted(manifest["images"], key=lambda r: (r["axes"]["precision"], r["seed"])):
        by_value.setdefault(record["axes"]["precision"], []).append(pixels(out / "ext" / record["file"]))
    assert sorted(by_value) == ["full", "half"]
    assert not np.array_equal(by_value["full"][0], by_value["half"][0])

    # the same jobs written the plain way (tiny:sd15, PNG, the dtype in [model]) give the same pixels
    for value, images in by_value.items():
        plain = recipe_runner_write_recipe(RECIPE.format(model="tiny:sd15", axes="", fmt="png")
                                           .replace('device = "cpu"', f'device = "cpu"\ndtype = "{DTYPES[value]}"'), f"plain-{value}.toml")
        assert recipe_runner_cli(plain, "--out", out, "--no-progress").code == 0
        expected = [pixels(p) for p in image_files(out / f"plain-{value}")]
        assert len(expected) == 2 and all(np.array_equal(a, b) for a, b in zip(images, expected))

    # the format's reader gives the embedded job back: a re-run finds every image done, loads nothing
    again = recipe_runner_cli(recipe, "--out", out, "--no-progress")
    assert again.code == 0 and "nothing to do" in again.out + again.err
    with Image.open(made[0]) as image:
        assert json.loads(Tiff().read_text(image)["job"])["seed"] in (0, 1)

    listing = recipe_runner_cli("--list-plugins")
    for line in ("[axis kind] precision", "[model source] fixture", "[output format] tiff", "[metric] mean_diff"):
        assert line in listing.out, listing.out


@pytest.mark.slow
def test_a_plugin_metric_is_reported_by_compare(extensions, recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    out = tmp_path / "out"
    a = recipe_runner_write_recipe(RECIPE.format(model="tiny:sd15", axes="", fmt="png"), "a.toml")
    b = recipe_runner_write_recipe(RECIPE.format(model="tiny:sd15", axes="", fmt="png")
                                   .replace("num_inference_steps = 2", "num_inference_steps = 3"), "b.toml")
    assert recipe_runner_cli(a, "--out", out, "--no-progress").code == 0
    assert recipe_runner_cli(b, "--out", out, "--no-progress").code == 0
    compared = recipe_runner_cli("--compare", out / "a", out / "b", "--out", tmp_path / "report")
    assert compared.code == 1
    assert "mean_diff" in compared.out
    report = json.loads((tmp_path / "report" / "compare.json").read_text())
    assert all(p["mean_diff"] > 0 for p in report["pairs"] if p["status"] == "different")


def test_the_recipe_s_use_of_unknown_kinds_is_refused_with_the_registered_names(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    recipe = recipe_runner_write_recipe(RECIPE.format(model="tiny:sd15", axes="", fmt="tif"))
    result = recipe_runner_cli(recipe, "--dry-run", "--out", tmp_path)
    assert result.code == 2
    assert "output.format: expected 'png', 'webp' or 'jpeg', got 'tif'" in result.err


def test_two_plugins_providing_one_name_collide_naming_both(recipe_runner_register_plugin, recipe_runner_cli,
                                                              recipe_runner_write_recipe, tmp_path):
    class Other:
        @hookimpl
        def register_output_formats(self, register: Callable[[OutputFormat], None]) -> None:
            register(Tiff())

    recipe_runner_register_plugin(Extensions(), "extensions")
    recipe_runner_register_plugin(Other(), "other")
    try:
        listing = recipe_runner_cli("--list-plugins")
        assert "output format 'tiff' is already provided by 'extensions'" in listing.out
        assert FORMATS.providers["tiff"] == "extensions"
    finally:
        for registry in (KINDS, SOURCES, FORMATS, METRICS):
            registry.reset()


def test_a_registry_refuses_a_second_provider_of_a_name():
    registry: Registry[int] = Registry("thing")
    registry.register("a", 1, "one")
    with pytest.raises(Collision, match="thing 'a' is provided by both 'one' and 'two'"):
        registry.register("a", 2, "two")
    assert registry.require("a") == 1
    with pytest.raises(KeyError, match="no thing 'b'; registered: a"):
        registry.require("b")


def test_the_built_in_lora_axes_come_from_the_lora_plugin():
    from recipe_runner.plugin_api.manager import load_plugins

    load_plugins()
    assert KINDS.providers["lora"] == "lora" and KINDS.providers["lora_scale"] == "lora"
    assert SOURCES.providers["tiny"] == "tiny"
    assert KINDS.providers["model"] == "recipe-runner"
