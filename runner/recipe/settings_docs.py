"""A settings model as a recipe author reads it (``--list-plugins``, ``--schema``): each field's type,
default and description, the description read from the docstring written under the field."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def type_text(annotation: Any) -> str:
    """A settings field's type as a recipe author reads it: ``'auto' | 'max' | int``."""
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("none" if a is type(None) else type_text(a) for a in args)
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(type_text(a) for a in args)}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        inner = ", ".join(f"{n}: {type_text(f.annotation)}" for n, f in annotation.model_fields.items())
        return "{" + inner + "}"
    return getattr(annotation, "__name__", str(annotation))


def attribute_docs(model: type[BaseModel]) -> dict[str, str]:
    """Each field's description: ``Field(description=...)``, else the docstring written under the
    field in the class body (of the model or a base), read from the source."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not issubclass(cls, BaseModel) or cls is BaseModel:
            continue
        try:
            node = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
            if not isinstance(node, ast.ClassDef):
                continue
            body = node.body
        except (OSError, TypeError, SyntaxError, IndexError, AttributeError):
            continue  # no source (built on the fly, or frozen): no docstrings
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    docs.update({name: info.description for name, info in model.model_fields.items() if info.description})
    return {name: text for name, text in docs.items() if name in model.model_fields}


def settings_lines(model: type[BaseModel]) -> list[str]:
    """One line per setting: name, type, default (or "required") and its description."""
    lines = []
    docs = attribute_docs(model)
    for name, info in model.model_fields.items():
        default = "required" if info.is_required() else f"= {info.get_default(call_default_factory=True)!r}"
        text = f"{name}: {type_text(info.annotation)} {default}"
        if name in docs:
            text += f"  # {docs[name]}"
        lines.append(text)
    return lines
