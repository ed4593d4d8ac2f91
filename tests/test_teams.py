"""docs/teams.md, run as written: two teammates share one recipes repository in git.

Teammate A and teammate B each have their own home folder, model alias file and clone; the model
is the same bytes at two different paths (A: ``~/models/sd15``; B and CI: a ``data/models/sd15``
folder). A locks, makes the baseline and commits; B's run against A's committed baseline is
"nothing to do" and leaves ``git status`` clean, on a plain re-run and on a forced baseline update;
the CI job of the page passes on the clone, fails on a visible change with the key named, and
passes again once the author updates the baseline as the page says. Every shell command of the
page, and every command of its CI job but the installs, is run here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_docs import Block, fenced_blocks, shell_blocks

pytestmark = pytest.mark.slow

TEAMS = REPO / "docs" / "teams.md"
ALIAS = Path(".config") / "recipe-runner" / "models.toml"


@dataclass
class Page:
    files: dict[str, str]  # recipes/... -> TOML text, from the blocks headed "# recipes/..."
    alias_a: str
    alias_b: str
    shell: list[Block]  # A's block, then B's
    ci: list[str]  # the CI job's run: lines, installs left out


def read_page() -> Page:
    blocks = fenced_blocks(TEAMS.read_text())
    files, aliases = {}, []
    for block in blocks:
        if block.lang != "toml":
            continue
        first = block.lines[0].lstrip("# ").split()[0]
        text = "\n".join(block.lines) + "\n"
        if first.startswith("recipes/"):
            files[first] = text
        elif first.endswith("models.toml"):
            aliases.append(text)
    (yaml,) = [b for b in blocks if b.lang == "yaml"]
    runs = [re.sub(r"^\s*- run:\s*", "", line) for line in yaml.lines if re.match(r"^\s*- run:", line)]
    ci = [line for line in runs if "pip install" not in line]
    alias_a, alias_b = aliases
    return Page(files, alias_a, alias_b, shell_blocks(TEAMS.read_text()), ci)


class Machine:
    """One teammate: a home folder (alias file, recipe-runner cache) and a clone."""

    def __init__(self, home: Path, clone: Path):
        self.home, self.clone = home, clone

    def env(self) -> dict[str, str]:
        drop = ("RECIPE_RUNNER_CACHE", "RECIPE_RUNNER_MODELS", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "GIT_DIR")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env.update(HOME=str(self.home), PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
                   GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org", GIT_COMMITTER_NAME="t",
                   GIT_COMMITTER_EMAIL="t@example.org", GIT_CONFIG_NOSYSTEM="1")
        return env

    def sh(self, script: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", script], cwd=self.clone, env=self.env(), capture_output=True, text=True,
                              timeout=timeout)

    def ok(self, script: str) -> subprocess.CompletedProcess[str]:
        done = self.sh(script)
        assert done.returncode == 0, f"{script}\n{done.stdout}\n{done.stderr}"
        return done

    def status(self) -> str:
        return self.ok("git status --porcelain --untracked-files=all").stdout


@pytest.fixture(scope="module")
def team(tmp_path_factory, recipe_runner_tiny_sd15):
    page = read_page()
    root = tmp_path_factory.mktemp("team")
    a = Machine(root / "homeA", root / "teamA" / "recipes-repo")
    b = Machine(root / "homeB", root / "teamB" / "recipes-repo")
    ci = Machine(root / "homeCI", root / "ci" / "recipes-repo")
    data = root / "data"
    shutil.copytree(recipe_runner_tiny_sd15, a.home / "models" / "sd15")
    shutil.copytree(recipe_runner_tiny_sd15, data / "models" / "sd15")  # the same bytes, elsewhere
    for machine, alias in ((a, page.alias_a), (b, page.alias_b)):
        (machine.home / ALIAS).parent.mkdir(parents=True)
        (machine.home / ALIAS).write_text(alias.replace("/data/", f"{data}/"))
    a.clone.mkdir(parents=True)
    for name, text in page.files.items():
        (a.clone / name).parent.mkdir(parents=True, exist_ok=True)
        (a.clone / name).write_text(text)
    (a.clone / "ci").mkdir()
    (a.clone / "ci" / "models.toml").write_text(page.alias_b.replace("/data/", f"{data}/"))
    a.ok("git init -q && git add -A && git commit -q -m recipes")
    return page, a, b, ci


def test_teammate_b_gets_a_s_baseline_with_nothing_to_do_and_a_clean_git_status(team):
    page, a, b, _ = team
    first, second = page.shell
    made = a.ok("\n".join(line for line in first.lines))
    assert "skipped recipes/sd15.toml: abstract = true" in made.stderr  # the base, by the glob
    assert a.status() == ""
    committed = a.ok("git ls-files baseline").stdout.split()
    images = [f for f in committed if f.endswith(".png") and not f.endswith("grid.png")]
    assert "baseline/hero/manifest.json" in committed and len(images) == 4, committed
    assert not (a.clone / "baseline" / ".gitignore").exists()  # a baseline is meant to be committed
    assert not [f for f in committed if "/.recipe-runner/" in f[len("baseline/hero/.recipe-runner"):] or "run.json" in f]
    for text in [(a.clone / f).read_bytes() for f in committed]:
        assert str(a.home).encode() not in text and str(a.clone).encode() not in text  # no machine path

    b.clone.parent.mkdir(parents=True)
    a.ok(f"git clone -q {a.clone} {b.clone}")  # B clones (from A's folder: the path is all it needs)
    shown = b.ok("\n".join(second.lines))
    assert "nothing to do, nothing loaded" in shown.stdout + shown.stderr
    assert b.status() == ""

    forced = b.ok("recipe-run --update-baseline --force --locked recipes/*.toml --out baseline")
    assert "4 images: 0 updated, 4 unchanged" in forced.stdout
    assert b.status() == ""  # regenerated, pixel-identical: every file untouched
    assert not list((b.clone / "baseline").rglob("history"))


def test_the_ci_job_passes_fails_on_a_visible_change_and_passes_once_the_baseline_is_updated(team):
    page, a, _, ci = team
    if not (a.clone / "baseline").is_dir():
        pytest.skip("needs the baseline of the test above")
    ci.clone.parent.mkdir(parents=True, exist_ok=True)
    if not ci.clone.exists():
        a.ok(f"git clone -q {a.clone} {ci.clone}")
    job = " && ".join(page.ci)
    ci.ok(job)
    assert (ci.clone / "renders" / ".gitignore").read_text().splitlines()[-1] == "*"
    assert ci.status() == ""  # renders/ and compare-report/ ignore themselves

    hero = ci.clone / "recipes" / "hero.toml"
    hero.write_text(hero.read_text() + "\n[params]\nguidance_scale = 12.0\n")
    failed = ci.sh(job)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "params.guidance_scale: 7.5 -> 12.0" in failed.stdout and re.search(r"^  hero +4 differ$", failed.stdout, re.M)

    first, _ = page.shell
    ci.ok("\n".join(first.lines))  # the author updates the baseline as the page says
    ci.ok(job)
    changed = ci.ok("git show --stat --format= HEAD").stdout
    assert "recipes/hero.toml" in changed and "baseline/hero/manifest.json" in changed
    assert "history" not in changed and ci.status() == ""
