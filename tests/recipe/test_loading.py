"""TOML loading: source lines, extends chains, --set."""

from __future__ import annotations

import pytest

from recipe_runner.base.errors import RecipeError
from recipe_runner.recipe.lines import key_lines, line_of
from recipe_runner.recipe.loading import load, parse_set
from recipe_runner.recipe.model import validate


def test_key_lines_follow_tables_inline_tables_and_multiline_values():
    text = '''name = "x"
[model]
id = "a"   # comment with = sign
[matrix]
prompts = [
  "one = two",
  "three",
]
seeds = 3
[optimizations]
compile = { mode = "max", fullgraph = true }
[scheduler.options]
"use_karras_sigmas" = true
desc = """
not_a_key = 1
"""
after = 2
'''
    lines = key_lines(text)
    assert lines["name"] == 1
    assert lines["model"] == 2 and lines["model.id"] == 3
    assert lines["matrix.prompts"] == 5
    assert lines["matrix.seeds"] == 9
    assert lines["optimizations.compile"] == 11
    assert lines["scheduler.options.use_karras_sigmas"] == 13
    assert "scheduler.options.not_a_key" not in lines
    assert lines["scheduler.options.after"] == 17
    assert line_of(lines, "matrix.seeds.2") == 9
    assert line_of(lines, "optimizations.compile.mode") == 11


def test_extends_chain_merges_tables_and_replaces_lists(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "root.toml").write_text(
        '[model]\nid = "tiny:sd15"\ndtype = "float16"\n[params]\nnum_inference_steps = 20\nguidance_scale = 7.5\n'
        '[matrix]\nprompts = ["a", "b"]\nseeds = [1, 2]\n'
    )
    (tmp_path / "mid.toml").write_text('extends = "base/root.toml"\n[params]\nnum_inference_steps = 4\n')
    (tmp_path / "top.toml").write_text('extends = "mid.toml"\n[matrix]\nprompts = ["c"]\n')
    loaded = load(tmp_path / "top.toml", ["params.guidance_scale=9", "model.device=cpu"])
    data = loaded.data
    assert data["name"] == "top"
    assert data["model"] == {"id": "tiny:sd15", "dtype": "float16", "device": "cpu"}
    assert data["params"] == {"num_inference_steps": 4, "guidance_scale": 9}
    assert data["matrix"] == {"prompts": ["c"], "seeds": [1, 2]}
    assert loaded.origin("params.num_inference_steps").file.endswith("mid.toml")
    assert loaded.origin("model.dtype").file.endswith("root.toml")
    assert loaded.origin("model.dtype").line == 3
    assert loaded.origin("model.device").file == "--set"
    assert loaded.origin("model.id").folder == (tmp_path / "base").resolve()
    assert [p.name for p in loaded.chain] == ["top.toml", "mid.toml", "root.toml"]
    validate(loaded)


def test_extends_cycle_is_refused_with_the_chain(tmp_path):
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(RecipeError) as info:
        load(tmp_path / "a.toml")
    message = str(info.value)
    assert "extends cycle" in message and "a.toml -> " in message and "b.toml -> " in message


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("params.num_inference_steps=4", (["params", "num_inference_steps"], 4)),
        ("model.device=cpu", (["model", "device"], "cpu")),
        ("model.id=tiny:sd15", (["model", "id"], "tiny:sd15")),
        ('matrix.prompts=["a", "b"]', (["matrix", "prompts"], ["a", "b"])),
        ("run.deterministic=true", (["run", "deterministic"], True)),
        ('params.negative_prompt="x = y"', (["params", "negative_prompt"], "x = y")),
    ],
)
def test_parse_set_values_are_toml_else_strings(item, expected):
    assert parse_set(item) == expected


def test_set_replaces_a_list_and_needs_a_table_path(tmp_path):
    (tmp_path / "r.toml").write_text('[model]\nid = "tiny:sd15"\n[matrix]\nprompts = ["a"]\n')
    loaded = load(tmp_path / "r.toml", ["matrix.seeds=3"])
    assert loaded.data["matrix"]["seeds"] == 3
    with pytest.raises(RecipeError, match="model.id is a str, not a table"):
        load(tmp_path / "r.toml", ["model.id.x=1"])
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        load(tmp_path / "r.toml", ["novalue"])
