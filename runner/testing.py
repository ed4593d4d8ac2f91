"""pytest helpers for recipe-runner and for plugin authors: tiny pipelines built once per test
session, a fixture that registers a plugin for one test, and an in-process ``recipe-run``.

Installed with recipe-runner as a pytest plugin (entry point ``pytest11``), so an external
plugin's test suite gets these fixtures with no conftest at all::

    def test_my_plugin(recipe_runner_register_plugin, recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
        recipe_runner_register_plugin(my_plugin)
        recipe = recipe_runner_write_recipe('''
            [model]
            id = "tiny:sd15"
            [params]
            num_inference_steps = 2
            [matrix]
            prompts = ["a cat"]
            [optimizations]
            my_optimization = true
        ''')
        assert recipe_runner_cli(recipe, "--out", tmp_path).code == 0

Every fixture's name starts with ``recipe_runner_``, and nothing happens to a test session that
uses none of them: no autouse fixture, no environment change at import. Fixtures:

- ``recipe_runner_cache`` (session): points ``RECIPE_RUNNER_CACHE`` at one temporary folder from
  its first use to the end of the session, so the tiny pipelines (of the tests and of the
  subprocesses they start) are built once, there; the fixtures below use it.
- ``recipe_runner_tiny_sd15``, ``recipe_runner_tiny_sdxl``, ``recipe_runner_tiny_sd3``,
  ``recipe_runner_tiny_cogview4`` (session): the folder of that tiny pipeline (recipes can also
  just say ``id = "tiny:sd15"``); ``recipe_runner_tiny_vae``: a standalone VAE folder.
- ``recipe_runner_register_plugin``: load a plugin object in every ``recipe-run`` of one test.
- ``recipe_runner_isolated_plugins``: load no installed (entry-point) plugin in one test's runs.
- ``recipe_runner_cli``: run ``recipe-run`` in this process (with the session's tiny cache).
- ``recipe_runner_write_recipe``: write a recipe file into ``tmp_path``.

The CPU thread count is left alone: a project that wants pixels independent of the machine's core
count sets ``OMP_NUM_THREADS=1`` itself (this repository's ``tests/conftest.py`` does).
torch and diffusers are imported only when a tiny pipeline is first built.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CACHE_ENV = "RECIPE_RUNNER_CACHE"


@pytest.fixture(scope="session")
def recipe_runner_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One temporary cache folder for the session: ``RECIPE_RUNNER_CACHE`` points at it from the
    first test that asks for it (directly or through another ``recipe_runner_`` fixture) to the end
    of the session, then is restored."""
    folder = tmp_path_factory.mktemp("recipe-runner-cache")
    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    yield folder
    if old is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = old


def _tiny(kind: str) -> Path:
    from recipe_runner.plugins import tiny

    return tiny.ensure(kind)


@pytest.fixture(scope="session")
def recipe_runner_tiny_sd15(recipe_runner_cache: Path) -> Path:
    """The tiny SD 1.5-layout pipeline (UNet, CLIP, PNDM) folder."""
    return _tiny("sd15")


@pytest.fixture(scope="session")
def recipe_runner_tiny_sdxl(recipe_runner_cache: Path) -> Path:
    """The tiny SDXL-layout pipeline folder."""
    return _tiny("sdxl")


@pytest.fixture(scope="session")
def recipe_runner_tiny_sd3(recipe_runner_cache: Path) -> Path:
    """The tiny SD3-layout pipeline (MMDiT transformer) folder."""
    return _tiny("sd3")


@pytest.fixture(scope="session")
def recipe_runner_tiny_cogview4(recipe_runner_cache: Path) -> Path:
    """The tiny CogView4 pipeline folder: a transformer that supports diffusers' cache hooks."""
    return _tiny("cogview4")


@pytest.fixture(scope="session")
def recipe_runner_tiny_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A standalone AutoencoderKL folder (sd15's config, other weights): a [components.vae]."""
    from recipe_runner.plugins import tiny

    return tiny.build_tiny_vae(tmp_path_factory.mktemp("vae") / "vae")


@pytest.fixture
def recipe_runner_register_plugin() -> Iterator[Callable[..., Any]]:
    """``recipe_runner_register_plugin(plugin, name=None)``: load a plugin object (module or instance) in every
    ``recipe-run`` of this test (through :func:`recipe_runner.plugin_api.manager.register`); unregistered after it."""
    from recipe_runner.plugin_api import manager as plugins

    registered: list[Any] = []

    def register(plugin: Any, name: str | None = None) -> Any:
        plugins.register(plugin, name)
        registered.append(plugin)
        return plugin

    yield register
    for plugin in registered:
        plugins.unregister(plugin)


@pytest.fixture
def recipe_runner_isolated_plugins() -> Iterator[None]:
    """Load no installed (entry-point) plugin in the ``recipe-run`` runs of this test: only the
    built-ins and what the test registers (``recipe_runner_register_plugin``) or passes with ``-p``,
    so another installed plugin (one providing the same optimization name, say) changes nothing."""
    from recipe_runner.plugin_api import manager as plugins

    before = plugins.isolate(True)
    yield
    plugins.isolate(before)


@dataclass
class Result:
    """What ``recipe_runner_cli(...)`` returns: the exit code, stdout and stderr."""

    code: int
    out: str
    err: str


@pytest.fixture
def recipe_runner_cli(capsys: pytest.CaptureFixture[str], recipe_runner_cache: Path) -> Callable[..., Result]:
    """Run recipe-run in this process: returns exit code, stdout, stderr (a :class:`Result`)."""
    from recipe_runner.cli.main import main

    def run(*args: Any) -> Result:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def recipe_runner_write_recipe(tmp_path: Path) -> Callable[..., Path]:
    """Write a recipe file (dedented TOML) into tmp_path; returns its path."""

    def write(text: str, name: str = "recipe.toml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
        return path

    return write
