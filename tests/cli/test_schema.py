"""--schema (printed without torch, validating the shipped recipes) and the provenance options in --help."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, run_subprocess


def _validate(instance, schema, root=None, path="$"):
    """A small JSON Schema validator for the keywords --schema uses (jsonschema is not a dependency)."""
    root = root or schema
    errors = []
    if "$ref" in schema:
        node = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        errors += _validate(instance, node, root, path)
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    kind = schema.get("type")
    if kind == "integer" and (not isinstance(instance, int) or isinstance(instance, bool)):
        return errors + [f"{path}: not an integer"]
    if kind == "number" and (not isinstance(instance, (int, float)) or isinstance(instance, bool)):
        return errors + [f"{path}: not a number"]
    if kind in types and not isinstance(instance, types[kind]):
        return errors + [f"{path}: not {kind}"]
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{path}: {instance!r} not in {schema['enum']}")
    if "const" in schema and instance != schema["const"]:
        errors.append(f"{path}: {instance!r} != {schema['const']!r}")
    for keyword, test in (("minimum", lambda v, m: v >= m), ("maximum", lambda v, m: v <= m)):
        if keyword in schema and isinstance(instance, (int, float)) and not test(instance, schema[keyword]):
            errors.append(f"{path}: {keyword} {schema[keyword]}")
    if "minItems" in schema and isinstance(instance, list) and len(instance) < schema["minItems"]:
        errors.append(f"{path}: too few items")
    if "minLength" in schema and isinstance(instance, str) and len(instance) < schema["minLength"]:
        errors.append(f"{path}: too short")
    if "anyOf" in schema and all(_validate(instance, s, root, path) for s in schema["anyOf"]):
        errors.append(f"{path}: matches none of anyOf")
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in instance:
                errors.append(f"{path}.{key}: required")
        for key, value in instance.items():
            if key in props:
                errors += _validate(value, props[key], root, f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}.{key}: unknown key")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += _validate(value, schema["additionalProperties"], root, f"{path}.{key}")
    if isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(instance):
            errors += _validate(value, schema["items"], root, f"{path}[{i}]")
    if "if" in schema and not _validate(instance, schema["if"], root, path):
        errors += _validate(instance, schema.get("then", {}), root, path)
    if "not" in schema and not _validate(instance, schema["not"], root, path):
        errors.append(f"{path}: matches not")
    return errors


def check_against_schema(instance, schema):
    try:
        import jsonschema
    except ImportError:
        return _validate(instance, schema)
    return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(instance)]


@pytest.mark.slow
def test_schema_is_printed_without_torch_and_validates_the_shipped_recipes():
    import tomllib

    code = ("import sys, runpy\nsys.argv = ['recipe-run', '--schema']\n"
            "from recipe_runner.cli.main import main\nrc = main(['--schema'])\n"
            "assert not [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\nsys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(proc.stdout)
    slicing = schema["properties"]["optimizations"]["properties"]["attention_slicing"]
    assert {"type": "boolean"} in slicing["anyOf"]
    settings = next(s for s in slicing["anyOf"] if s.get("type") == "object")
    assert {"slice_size", "required"} <= set(settings["properties"])
    assert settings["properties"]["required"]["description"].startswith("false: skip it with a warning")
    offload = schema["properties"]["optimizations"]["properties"]["offload"]["anyOf"][1]["properties"]
    assert offload["num_blocks_per_group"]["description"] == "group, block_level: how many blocks move together"
    recipes = sorted((REPO / "recipes").glob("*.toml"))
    assert len(recipes) >= 4
    for path in recipes:
        assert check_against_schema(tomllib.loads(path.read_text()), schema) == [], path.name
    good = tomllib.loads((REPO / "recipes" / "tiny.toml").read_text())
    assert check_against_schema({**good, "paramz": {}}, schema)  # misspelled table
    assert check_against_schema({**good, "optimizations": {"attention_slicing": {"slice_sise": 2}}}, schema)
    assert check_against_schema({**good, "optimizations": {"no_such_plugin": True}}, schema)
    assert check_against_schema({**good, "matrix": {"prompts": ["a"], "seeds": "three"}}, schema)
    assert check_against_schema({k: v for k, v in good.items() if k != "model"}, schema)  # model is required ...
    assert check_against_schema({"extends": "tiny.toml", "params": {"num_inference_steps": 2}}, schema) == []  # ... unless extended


def test_help_lists_the_provenance_options():
    result = run_subprocess("--help")
    for option in ("--reproduce", "--schema", "--lock", "--locked"):
        assert option in result.out
