"""pytest helpers for recipe-runner and for plugin authors: tiny pipelines built once per test
session, a fixture that registers a plugin for one test, and an in-process ``recipe-run``.

Installed with recipe-runner as a pytest plugin (entry point ``pytest11``), so an external
plugin's test suite gets these fixtures with no conftest at all::

    def test_my_plugin(register_plugin, cli, write_recipe, tmp_path):
        register_plugin(my_plugin)
        recipe = write_recipe('''
            [model]
            id = "tiny:sd15"
            [params]
            num_inference_steps = 2
            [matrix]
            prompts = ["a cat"]
            [optimizations]
            my_optimization = true
        ''')
        assert cli(recipe, "--out", tmp_path).code == 0

Fixtures: ``tiny_cache`` (session, autouse: every tiny pipeline of the session, and of the
subprocesses it starts, is built once into one temporary folder), ``tiny_sd15``, ``tiny_sdxl``,
``tiny_sd3``, ``tiny_cogview4`` (session: the folder of that tiny pipeline; recipes can also
just say ``id = "tiny:sd15"``), ``tiny_vae``, ``register_plugin``, ``cli``, ``write_recipe``.

torch and diffusers are imported only when a tiny pipeline is first built.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# One CPU thread per test process (and every subprocess it starts): tests stay fast when several
# run side by side on a small machine, and pixels do not depend on the machine's core count.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def tiny_cache(tmp_path_factory) -> Path:
    """Every test (and every subprocess it starts) builds tiny pipelines into one session folder."""
    folder = tmp_path_factory.mktemp("cache")
    old = os.environ.get("RECIPE_RUNNER_CACHE")
    os.environ["RECIPE_RUNNER_CACHE"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("RECIPE_RUNNER_CACHE", None)
    else:
        os.environ["RECIPE_RUNNER_CACHE"] = old


def _tiny(kind: str) -> Path:
    from recipe_runner import tiny

    return tiny.ensure(kind)


@pytest.fixture(scope="session")
def tiny_sd15(tiny_cache) -> Path:
    """The tiny SD 1.5-layout pipeline (UNet, CLIP, PNDM) folder."""
    return _tiny("sd15")


@pytest.fixture(scope="session")
def tiny_sdxl(tiny_cache) -> Path:
    """The tiny SDXL-layout pipeline folder."""
    return _tiny("sdxl")


@pytest.fixture(scope="session")
def tiny_sd3(tiny_cache) -> Path:
    """The tiny SD3-layout pipeline (MMDiT transformer) folder."""
    return _tiny("sd3")


@pytest.fixture(scope="session")
def tiny_cogview4(tiny_cache) -> Path:
    """The tiny CogView4 pipeline folder: a transformer that supports diffusers' cache hooks."""
    return _tiny("cogview4")


@pytest.fixture(scope="session")
def tiny_vae(tmp_path_factory) -> Path:
    """A standalone AutoencoderKL folder (sd15's config, other weights): a [components.vae]."""
    from recipe_runner import tiny

    return tiny.build_tiny_vae(tmp_path_factory.mktemp("vae") / "vae")


@pytest.fixture
def register_plugin():
    """``register_plugin(plugin, name=None)``: load a plugin object (module or instance) in every
    ``recipe-run`` of this test (through :func:`recipe_runner.plugin_manager.register`); unregistered after it."""
    from recipe_runner import plugin_manager as plugins

    registered: list[Any] = []

    def register(plugin: Any, name: str | None = None) -> Any:
        plugins.register(plugin, name)
        registered.append(plugin)
        return plugin

    yield register
    for plugin in registered:
        plugins.unregister(plugin)


@dataclass
class Result:
    """What ``cli(...)`` returns: the exit code, stdout and stderr."""

    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Run recipe-run in this process: returns exit code, stdout, stderr."""
    from recipe_runner.cli import main

    def run(*args: Any) -> Result:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def write_recipe(tmp_path):
    """Write a recipe file (dedented TOML) into tmp_path; returns its path."""

    def write(text: str, name: str = "recipe.toml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
        return path

    return write
