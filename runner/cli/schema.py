"""``recipe-run --schema``: the JSON Schema (draft 2020-12) of the recipe format, for editors.

Generated from the pydantic models of :mod:`recipe_runner.recipe.model`, with what they cannot say by
themselves filled in: each installed optimization's settings under ``optimizations.<name>`` as
``true | false | {settings}``; ``seeds`` and ``batch_size``, which accept two shapes; the value
shapes of each kind of ``[matrix.axes]`` key (models, components, LoRA, optimizations); and the rule
that a recipe with ``extends`` may leave out anything its base provides, and an ``abstract = true``
base anything the recipes extending it provide (only a recipe without ``extends`` that is not
abstract must have ``[model] id`` and ``[matrix] prompts``). ``name`` is never required: it
defaults to the file's stem. Light: no torch.
"""

from __future__ import annotations

import json
from typing import Any

from ..axes.kind import listed
from ..axes.registry import KINDS
from ..plugin_api.manager import Plugins
from ..recipe.model import DEFAULT_MAX_JOBS, MAX_SEED, Recipe
from ..recipe.settings_docs import attribute_docs

SCHEMA_ID = "https://recipe-runner.invalid/recipe.schema.json"


def _strip_required(node: Any) -> None:
    """Drop every ``required`` list: what is required depends on extends, decided at the top."""
    if isinstance(node, dict):
        if isinstance(node.get("required"), list):
            del node["required"]
        for value in node.values():
            _strip_required(value)
    elif isinstance(node, list):
        for value in node:
            _strip_required(value)


def _optimizations(plugins: Plugins) -> dict[str, Any]:
    properties = {}
    registry = plugins.registry
    keys = dict(registry.optimizations)  # the bare names, and the qualified key of a name two plugins provide
    keys.update({key: opt for key, opt in registry.qualified.items() if opt.name in registry.shared})
    for name, opt in sorted(keys.items()):
        settings = opt.settings.model_json_schema()
        fields = settings.get("properties", {})
        for field, text in attribute_docs(opt.settings).items():
            if field in fields:  # not when the schema lists it under an alias
                fields[field].setdefault("description", text)
        _strip_required(settings)
        settings.pop("title", None)
        description = opt.description or settings.pop("description", "")
        properties[name] = {
            "description": f"{description} (stage {opt.stage}; plugin {registry.provider(name) or '?'})".strip(),
            "anyOf": [{"type": "boolean"}, settings],
        }
    return {
        "type": "object",
        "description": "One key per optimization: true = on with defaults, false = off, a table = on with these settings.",
        "properties": properties,
        "additionalProperties": False,
    }


def _axes(plugins: Plugins, tables: dict[str, Any]) -> dict[str, Any]:
    """``[matrix.axes]``: each registered kind's values (docs/axes.md); any other key a call parameter."""
    properties: dict[str, Any] = {}
    for kind in KINDS.kinds()[:-1]:  # the call-parameter fallback: additionalProperties
        if kind.name == "optimizations":
            per_key = {name: listed({"anyOf": table["anyOf"]}, f"{name}: off, on, or settings, per value")
                       for name, table in tables["properties"].items()}
            properties[kind.name] = {"type": "object", "properties": per_key, "additionalProperties": False}
        elif kind.nested:
            properties[kind.name] = {"type": "object", "additionalProperties": listed(kind.schema(plugins.registry), kind.description)}
        else:
            properties[kind.name] = listed(kind.schema(plugins.registry), kind.description)
    names = ", ".join(k.name + (".<key>" if k.nested else "") for k in KINDS.kinds()[:-1])
    return {
        "type": "object",
        "description": f"One image per value of each axis: a call parameter, {names} (see docs/axes.md).",
        "properties": properties,
        "additionalProperties": listed({}, "a call parameter's values"),
        "default": {},
    }


def recipe_schema(plugins: Plugins) -> dict[str, Any]:
    schema = Recipe.model_json_schema(mode="validation")
    _strip_required(schema)
    defs = schema.get("$defs", {})
    props = schema["properties"]
    props["optimizations"] = _optimizations(plugins)
    matrix = defs["MatrixSpec"]["properties"]
    matrix["seeds"] = {
        "description": "A list of integers, or an integer N meaning seeds 0..N-1.",
        "anyOf": [
            {"type": "integer", "minimum": 1, "maximum": DEFAULT_MAX_JOBS},
            {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0, "maximum": MAX_SEED}},
        ],
        "default": [0],
    }
    matrix["axes"] = _axes(plugins, props["optimizations"])
    for key in ("x", "y", "z"):  # a field name, or a list of them
        field = defs["GridSpec"]["properties"][key]
        defs["GridSpec"]["properties"][key] = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                                               "default": field.get("default", [])}
    defs["RunSpec"]["properties"]["batch_size"] = {
        "description": 'Images per pipeline call, or "auto": the largest that fits.',
        "anyOf": [{"type": "integer", "minimum": 1}, {"const": "auto"}],
        "default": 1,
    }
    props["name"]["description"] = "Names the output folder; default: the recipe file's stem."
    props["extends"] = {"type": "string", "description": "A base recipe, relative to this file: tables merge, lists and scalars replace."}
    schema.update({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "recipe-runner recipe",
        "description": "A TOML recipe for recipe-run: model, components, scheduler, optimizations, params, matrix.",
        # A recipe that extends another may leave out what its base provides; an abstract base
        # (abstract = true, never run) may leave out what the recipes that extend it provide.
        "if": {"not": {"anyOf": [{"required": ["extends"]},
                                 {"required": ["abstract"], "properties": {"abstract": {"const": True}}}]}},
        "then": {
            "required": ["model", "matrix"],
            "properties": {"model": {"required": ["id"]}, "matrix": {"required": ["prompts"]},
                           "components": {"additionalProperties": {"required": ["id"]}},
                           "scheduler": {"required": ["name"]}},
        },
    })
    return schema


def dumps(plugins: Plugins) -> str:
    return json.dumps(recipe_schema(plugins), indent=2, sort_keys=False)
