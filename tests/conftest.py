"""The project's own test helpers. The shared fixtures (tiny pipelines, ``cli``, ``write_recipe``,
``register_plugin``) live in :mod:`recipe_runner.testing`, the pytest plugin recipe-runner installs for
plugin authors too; loaded here by name for an uninstalled checkout. When recipe-runner is
installed, its ``pytest11`` entry point is named ``recipe_runner.testing`` as well, so pytest sees the
plugin already registered and does not load it twice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

pytest_plugins = ["recipe_runner.testing"]

REPO = Path(__file__).resolve().parent.parent


def run_subprocess(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600):
    """Run ``python -m recipe_runner ARGS`` in a fresh process; returns a :class:`recipe_runner.testing.Result`."""
    from recipe_runner.testing import Result  # not at import: pytest loads (and rewrites) it as a plugin
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "recipe_runner", *map(str, args)], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).copy()


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".png", ".webp", ".jpg") and p.name != "grid.png")
