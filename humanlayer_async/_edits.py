"""Editable arguments: their JSON Schema, made from the tool's type hints, and edits checked
against it.

The schema is stored with each request, so that any process (the CLI, another worker, the
web console of another process) can check an edit without the function. The types an
editable argument may have are the ones JSON holds exactly: ``str``, ``int``, ``float``,
``bool``, ``None``, ``Literal`` of those, ``list[...]``, ``dict[str, ...]`` and unions of
them (``X | None``). Anything else is refused when the tool is decorated.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, Union

from ._exceptions import ConfigurationError, InvalidEdit
from ._render import masked, visible

__all__ = ["check_edits", "describe_type", "edit_text", "editable_schemas", "parse_edit"]

Schema = dict[str, Any]

_SCALARS: dict[Any, Schema] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    None: {"type": "null"},
}


class _NotJSON(Exception):
    """A type hint with no exact JSON form."""


def _schema(hint: Any) -> Schema:
    if hint in _SCALARS:
        return dict(_SCALARS[hint])
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal and all(isinstance(a, str | int | float | bool) or a is None for a in args):
        return {"enum": list(args)}
    if origin in (Union, types.UnionType):
        return {"anyOf": [_schema(arg) for arg in args]}
    if origin is list and len(args) == 1:
        return {"type": "array", "items": _schema(args[0])}
    if origin is dict and len(args) == 2 and args[0] is str:
        return {"type": "object", "additionalProperties": _schema(args[1])}
    raise _NotJSON


def editable_schemas(func: Callable[..., Any], editable: bool | Iterable[str]) -> dict[str, Schema]:
    """The JSON Schema of each editable parameter of ``func`` (``True``: every parameter).

    Raises ``ConfigurationError`` naming a parameter that does not exist, cannot be passed by
    keyword, or has no type hint with an exact JSON form.
    """
    if editable is False:
        return {}
    name = getattr(func, "__name__", repr(func))
    signature = inspect.signature(func)
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:  # an unresolvable annotation: say which tool
        raise ConfigurationError(f"editable= on {name}: its type hints cannot be read ({exc})") from exc
    if isinstance(editable, str):
        raise ConfigurationError(
            f"editable= on {name} takes a list of argument names, not the string {editable!r}"
        )
    fixed = [p.name for p in signature.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL)]
    if fixed:
        raise ConfigurationError(
            f"editable= on {name}: a tool with positional-only or *args parameters ({', '.join(fixed)}) "
            "cannot be called with edited arguments"
        )
    names = (
        [p.name for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        if editable is True
        else list(editable)
    )
    schemas: dict[str, Schema] = {}
    for parameter_name in names:
        parameter = signature.parameters.get(parameter_name)
        if parameter is None:
            raise ConfigurationError(
                f"editable= on {name} names {parameter_name!r}, which it has no parameter of"
            )
        if parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
            raise ConfigurationError(
                f"{name}'s argument {parameter_name!r} cannot be edited: pass it by keyword"
            )
        try:
            schemas[parameter_name] = _schema(hints[parameter_name])
        except (KeyError, _NotJSON):
            hint = hints.get(parameter_name, "no type hint")
            raise ConfigurationError(
                f"{name}'s argument {parameter_name!r} ({hint}) cannot be edited: editable arguments "
                "need a type hint with an exact JSON form "
                "(str, int, float, bool, None, Literal, list[...], dict[str, ...])"
            ) from None
    return schemas


def check_edits(
    request_id: str, edits: Mapping[str, Any], schemas: Mapping[str, Schema], shown: Mapping[str, Any]
) -> None:
    """Raise ``InvalidEdit`` naming the first argument ``edits`` may not set as it does.

    ``shown`` are the request's arguments as stored: one a ``render`` hook masked cannot be
    edited (nobody saw its value).
    """
    if not edits:
        raise InvalidEdit(request_id, "", "an edit names at least one argument")
    for name, value in edits.items():
        if name not in schemas:
            raise InvalidEdit(request_id, name, "it is not an editable argument of this call")
        if masked(shown.get(name)):
            raise InvalidEdit(
                request_id, name, "it is masked (or holds a masked value), so nobody saw all it would replace"
            )
        problem = _invalid(value, schemas[name])
        if problem is not None:
            raise InvalidEdit(request_id, name, problem)


def edit_text(value: Any, schema: Schema | None) -> str | None:
    """An argument's value as an edit box holds it, such that ``parse_edit`` reads it back
    (``None``: it has no JSON form, so it cannot be offered for editing).

    A string as it is when it reads back as itself and holds no invisible character but
    line breaks; anything else as JSON, control and bidi characters (then every non-ASCII
    one) as ``\\u`` escapes, lists and objects indented.
    """
    plain = isinstance(value, str) and all(visible(line) == line for line in value.split("\n"))
    if plain and parse_edit(value, schema) == value:
        return str(value)
    indent = 2 if isinstance(value, list | dict) and value else None
    try:
        text = json.dumps(value, ensure_ascii=False, indent=indent, allow_nan=False)
    except (TypeError, ValueError):
        return None
    if visible(text.replace("\n", "")) == text.replace("\n", ""):
        return text
    return json.dumps(value, indent=indent)


_TYPES = {
    "string": "text",
    "integer": "whole number",
    "number": "number",
    "boolean": "true or false",
    "null": "null",
    "array": "JSON list",
    "object": "JSON object",
}


def describe_type(schema: Mapping[str, Any]) -> str:
    """What an argument takes, in a few words: ``number``, ``text or null``, ``one of "EUR", "USD"``."""
    if isinstance(schema.get("anyOf"), list):
        return " or ".join(describe_type(option) for option in schema["anyOf"] if isinstance(option, Mapping))
    if isinstance(schema.get("enum"), list):
        return "one of " + ", ".join(json.dumps(option, ensure_ascii=False) for option in schema["enum"])
    return _TYPES.get(str(schema.get("type")), "JSON")


def parse_edit(text: str, schema: Schema | None) -> Any:
    """A value typed on a command line (``--set amount=5000``) as the argument's type wants it:
    its JSON reading when that fits the schema, else the text itself when a string fits,
    else the JSON reading (``InvalidEdit`` then names what is wrong)."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    if schema is None or _invalid(parsed, schema) is None or _invalid(text, schema) is not None:
        return parsed
    return text


def _invalid(value: Any, schema: Schema) -> str | None:
    """Why ``value`` does not fit ``schema`` (``None``: it does)."""
    if "anyOf" in schema:
        problems = [_invalid(value, option) for option in schema["anyOf"]]
        return None if None in problems else " or ".join(p for p in problems if p)
    if "enum" in schema:
        allowed = schema["enum"]
        ok = any(value == a and type(value) is type(a) for a in allowed)
        return None if ok else f"must be one of {allowed!r}"
    kind = schema["type"]
    if kind == "null":
        return None if value is None else "must be null"
    if kind == "string":
        return None if isinstance(value, str) else "must be a string"
    if kind == "boolean":
        return None if isinstance(value, bool) else "must be true or false"
    if kind == "integer":
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
    if kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value == value
        return None if ok and value not in (float("inf"), float("-inf")) else "must be a number"
    if kind == "array":
        if not isinstance(value, list):
            return "must be a list"
        for index, item in enumerate(value):
            problem = _invalid(item, schema["items"])
            if problem is not None:
                return f"item {index} {problem}"
        return None
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        return "must be an object with string keys"
    for key, item in value.items():
        problem = _invalid(item, schema["additionalProperties"])
        if problem is not None:
            return f"key {key!r} {problem}"
    return None
