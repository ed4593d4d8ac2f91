"""The bad-input corpus: every file in tests/recipe/bad_recipes/ is a recipe that must exit 2 with one
clear message. Its leading ``# expect: FRAGMENT`` lines name what the message must contain
(``# args: ...`` adds command-line arguments). Nothing is ever written for them."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

CORPUS = Path(__file__).parent / "bad_recipes"
FILES = sorted(CORPUS.glob("*.toml"))


def expectations(path: Path) -> tuple[list[str], list[str]]:
    expects, args = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        tag, _, value = line[1:].strip().partition(":")
        if tag == "expect":
            expects.append(value.strip())
        elif tag == "args":
            args += shlex.split(value)
    return expects, args


def test_the_corpus_has_at_least_30_recipes_each_with_an_expectation():
    assert len(FILES) >= 30
    for path in FILES:
        assert expectations(path)[0], f"{path.name} has no '# expect:' line"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_bad_recipe(recipe_runner_cli, tmp_path, monkeypatch, path):
    monkeypatch.chdir(CORPUS)  # messages name the file as the user would: relative to the current folder
    expects, args = expectations(path)
    out = tmp_path / "out"
    result = recipe_runner_cli(path.name, "--out", out, "--no-progress", *args)
    assert result.code == 2, result.err
    assert "Traceback" not in result.err
    for fragment in expects:
        assert fragment in result.err, f"{fragment!r} not in {result.err!r}"
    assert not out.exists() or not any(out.rglob("*.png")), "nothing may be written for an invalid recipe"
