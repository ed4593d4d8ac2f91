"""Shared fixtures: tiny pipelines built once per session, a CLI runner, recipe writing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent

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


@pytest.fixture(scope="session")
def tiny_sd15(tiny_cache) -> Path:
    from runner import tiny

    return tiny.ensure("sd15")


@pytest.fixture(scope="session")
def tiny_sdxl(tiny_cache) -> Path:
    from runner import tiny

    return tiny.ensure("sdxl")


@pytest.fixture(scope="session")
def tiny_vae(tmp_path_factory) -> Path:
    from runner import tiny

    return tiny.build_tiny_vae(tmp_path_factory.mktemp("vae") / "vae")


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Run recipe-run in this process: returns exit code, stdout, stderr."""
    from runner.cli import main

    def run(*args: str) -> Result:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def run_subprocess(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600) -> Result:
    """Run ``python -m runner ARGS`` in a fresh process."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "runner", *map(str, args)], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def write_recipe(tmp_path):
    """Write a recipe file (dedented TOML) into tmp_path; returns its path."""

    def write(text: str, name: str = "recipe.toml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
        return path

    return write


def pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).copy()


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".png", ".webp", ".jpg") and p.name != "grid.png")
