"""docs/plugins.md runs (issue 21, item 10): its complete plugin is the example package's module,
its test snippet is the example's tests, and each mistake it shows gives the error it shows."""

from __future__ import annotations

import re
import sys

import pytest

from tests.conftest import REPO, tiny_recipe

DOC = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
EXAMPLE = REPO / "examples" / "recipe-runner-example"

RECIPE = tiny_recipe(seeds=[0])


def section(title: str) -> str:
    start = DOC.index(f"\n## {title}\n")
    end = DOC.find("\n## ", start + 1)
    return DOC[start:end if end != -1 else None]


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```\n", text, flags=re.S)


def test_the_complete_plugin_is_the_example_package_module_verbatim():
    (shown,) = blocks(section("A complete plugin"), "python")
    assert shown == (EXAMPLE / "recipe_runner_example" / "__init__.py").read_text(encoding="utf-8")


def test_the_test_snippet_is_the_example_s_tests_verbatim():
    (shown,) = blocks(section("Testing a plugin"), "python")
    tests = (EXAMPLE / "tests" / "test_freeu.py").read_text(encoding="utf-8")
    for part in shown.split("\n\n\n"):
        assert part.strip() in tests


def test_the_fixture_signatures_shown_are_the_real_ones():
    import inspect

    from recipe_runner import testing

    text = section("Testing a plugin")
    assert "`recipe_runner_register_plugin(plugin, name=None)`" in text
    assert '`recipe_runner_write_recipe(text, name="recipe.toml")`' in text
    source = inspect.getsource(testing)
    assert "def register(plugin: Any, name: str | None = None) -> Any:" in source
    assert 'def write(text: str, name: str = "recipe.toml") -> Path:' in source


MISTAKES = list(zip(blocks(section("Mistakes and what they say"), "python"),
                    blocks(section("Mistakes and what they say"), "text")))


def test_every_mistake_has_its_error():
    assert len(MISTAKES) == 7
    assert len(blocks(section("Mistakes and what they say"), "python")) == len(MISTAKES)


@pytest.mark.parametrize("plugin, error", MISTAKES, ids=[e.split(":")[-2][-30:] for _, e in MISTAKES])
def test_each_mistake_gives_the_error_the_doc_shows(plugin, error, recipe_runner_cli, tmp_path, monkeypatch):
    (tmp_path / "my_plugin.py").write_text(plugin, encoding="utf-8")
    (tmp_path / "recipe.toml").write_text(RECIPE + ("[optimizations]\nsharpen = true\n" if "sharpen" in plugin else ""))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_plugin", raising=False)
    try:
        result = recipe_runner_cli("-p", "my_plugin", "recipe.toml", "--out", "out", "--no-progress")
    finally:
        sys.modules.pop("my_plugin", None)
    assert result.code in (1, 2)
    assert error.strip() in result.err, result.err
    assert not list((tmp_path / "out").glob("*/*.png"))
