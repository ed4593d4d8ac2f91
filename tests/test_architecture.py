"""The shape of the code: stage folders in one order, no import cycles, the architecture map in step.

The core (``runner/``, import name ``recipe_runner``) is one folder per stage, lowest first. A module
may import its own stage and the stages below it, never a higher one (type-only imports included),
so data flows one way: recipe -> plan -> pipelines -> records -> views, with the plugin API, the
session and the command line on top. ``api`` and ``testing`` (the public faces) may import anything.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

STAGES = ("base", "recipe", "axes", "plan", "pipelines", "records", "views", "plugin_api", "running", "cli")
TOP = ("api", "testing", "__main__")  # public faces: may import any stage
CORE = REPO / "runner"


def module_name(path: Path, root: Path = CORE, package: str = "recipe_runner") -> str:
    parts = [package, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = CORE, package: str = "recipe_runner") -> list[tuple[str, int]]:
    """The ``recipe_runner`` modules (or names) that ``path`` imports, with line numbers."""
    name = module_name(path, root, package)
    package_parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == package or target.count(".") == 1:  # from recipe_runner(.stage) import name
                found += [(f"{target}.{alias.name}", node.lineno) for alias in node.names]
            else:
                found.append((target, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
    return [(t, line) for t, line in found if t.startswith(package + ".")]


def stage_of(module: str) -> int | None:
    """The index of a ``recipe_runner`` module's stage; None for the package root and the top."""
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else None


def upward_imports(root: Path = CORE, package: str = "recipe_runner") -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        mine = stage_of(module_name(path, root, package))
        if mine is None:
            continue
        for target, line in imports(path, root, package):
            theirs = stage_of(target)
            if target.startswith(f"{package}.plugins") or (theirs is not None and theirs > mine):
                bad.append(f"{path.relative_to(root)}:{line} imports {target} "
                           f"({STAGES[mine]} may not import {target.split('.')[1]})")
    return bad


def test_every_core_module_lives_in_a_stage_folder():
    loose = sorted(p.stem for p in CORE.glob("*.py") if p.stem not in ("__init__", *TOP))
    assert loose == []
    assert sorted(p.name for p in CORE.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(STAGES)


def test_no_stage_imports_a_higher_one():
    assert upward_imports() == []


def test_the_stage_order_check_catches_an_upward_import(tmp_path):
    """The check itself: a records module that imports the session is named, with its line."""
    tree = tmp_path / "pkg"
    for stage in ("records", "running"):
        (tree / stage).mkdir(parents=True)
        (tree / stage / "__init__.py").write_text("")
    (tree / "__init__.py").write_text("")
    (tree / "running" / "session.py").write_text("from ..records import manifest\n")
    (tree / "records" / "manifest.py").write_text("from __future__ import annotations\n"
                                                   "from typing import TYPE_CHECKING\n"
                                                   "if TYPE_CHECKING:\n    from ..running.session import Session\n")
    assert upward_imports(tree, "recipe_runner") == [
        "records/manifest.py:4 imports recipe_runner.running.session (records may not import running)"]


def test_no_import_cycles():
    graph = {module_name(p): {t for t, _ in imports(p)} for p in CORE.rglob("*.py")}
    modules = set(graph)

    def resolve(target: str) -> str | None:
        return target if target in modules else (target.rsplit(".", 1)[0] if target.rsplit(".", 1)[0] in modules else None)

    edges = {m: {r for t in ts if (r := resolve(t)) and r != m and not r.endswith(("recipe_runner",))} for m, ts in graph.items()}
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(edges[node]):
            assert nxt not in path, "import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt])
            if nxt not in done:
                visit(nxt, path + [nxt])
        done.add(node)

    for module in sorted(edges):
        if module not in done:
            visit(module, [module])


def test_the_core_never_names_a_plugin_s_kind():
    """``tiny:`` models and the ``lora`` axes come from plugins (``plugins/``); the core knows them
    only through its registries. Docstrings and comments may name them."""
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        if path.name == "testing.py":  # the pytest helpers build the tiny pipelines for tests
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                      and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if node.value.startswith("tiny:") or node.value in ("lora", "lora_scale", "tiny"):
                    offenders.append(f"{path.relative_to(CORE)}:{node.lineno} {node.value!r}")
        for target, line in imports(path):
            if target.startswith("recipe_runner.plugins"):
                offenders.append(f"{path.relative_to(CORE)}:{line} imports {target}")
    assert offenders == []


def test_the_architecture_map_names_every_module_and_no_other():
    """docs/architecture.md gives each module of runner/ its job in one line: it matches the code."""
    text = (REPO / "docs" / "architecture.md").read_text()
    mapped = set(re.findall(r"^\| `([\w/]+)\.py` \|", text, flags=re.M))
    modules = {str(p.relative_to(CORE).with_suffix("")) for p in CORE.rglob("*.py") if p.name != "__init__.py"}
    modules -= {"__main__"}
    assert mapped == modules
    plugins = {p.stem for p in (REPO / "plugins").glob("*.py") if p.stem not in ("__init__", "common")}
    assert all(f"`{name}`" in text for name in plugins)


@pytest.mark.parametrize("package", ["recipe_runner", "recipe_runner.plugins"])
def test_every_package_folder_is_installed(package):
    """pyproject lists each stage folder as a package (setuptools' package-dir maps the folders)."""
    text = (REPO / "pyproject.toml").read_text()
    for stage in STAGES:
        assert f'"recipe_runner.{stage}"' in text
    assert f'"{package}"' in text
