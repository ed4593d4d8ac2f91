"""A lock file left in a git merge conflict (#22 item 9): the markers are found before the JSON is
parsed, and the message says which line and how to fix it."""

from __future__ import annotations

import json

import pytest

from recipe_runner.pipelines.lock import conflict_line
from tests.conftest import tiny_recipe


def conflicted(lock: dict) -> str:
    """The lock as git leaves it when two branches re-locked the model differently."""
    text = json.dumps(lock, indent=2, sort_keys=True)
    ours = text.replace('"sha256": "', '"sha256": "a', 1)
    theirs = text.replace('"sha256": "', '"sha256": "b', 1)
    head, _, _ = ours.partition('"sha256": "a')
    tail_ours = ours[len(head):].splitlines()
    tail_theirs = theirs[len(head):].splitlines()
    return (head.rstrip(" ") + "\n<<<<<<< HEAD\n  " + tail_ours[0] + "\n=======\n  " + tail_theirs[0]
            + "\n>>>>>>> teammate/recipes\n" + "\n".join(tail_ours[1:]) + "\n")


def test_a_lock_with_conflict_markers_says_to_re_lock(recipe_runner_cli, recipe_runner_write_recipe, tmp_path):
    recipe = recipe_runner_write_recipe(tiny_recipe(), "hero.toml")
    assert recipe_runner_cli("--lock", recipe).code == 0
    lock = tmp_path / "hero.lock"
    text = conflicted(json.loads(lock.read_text()))
    lock.write_text(text)
    marker = text.splitlines().index("<<<<<<< HEAD") + 1
    result = recipe_runner_cli("--locked", recipe, "--dry-run")
    assert result.code == 2
    assert f"hero.lock:{marker}: the lock file has merge conflict markers: re-run recipe-run --lock " in result.err
    assert "hero.toml (and commit it)" in result.err
    assert "Expecting" not in result.err and "Traceback" not in result.err


@pytest.mark.parametrize(("text", "line"), [
    ('{\n  "a": 1\n}\n', None),
    ('{\n<<<<<<< HEAD\n  "a": 1\n=======\n  "a": 2\n>>>>>>> other\n}\n', 2),
    ('{\n  "a": 1\n=======\n}\n', 3),  # a marker whose partner lines were deleted by hand
    ('{\n  "a": "=======",\n  "b": "<<<<<<< x"\n}\n', None),  # inside a string, not at a line's start
])
def test_conflict_line(text, line):
    assert conflict_line(text) == line
