"""Values as JSON, for durable stores: arguments, context, results, audit fields.

The encoding is one way: what a store keeps is for people, digests and replays, not
for rebuilding the caller's objects. Dataclasses and pydantic models become objects,
enums their values, datetimes/dates/times ISO 8601 text, bytes base64 text, tuples
and sets lists, UUIDs, decimals and paths text. Anything else is refused with a
``StoreError`` that names where the value sits (``argument 'invoice' ...``).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import hashlib
import json
import uuid
from collections.abc import Mapping
from decimal import Decimal
from pathlib import PurePath
from typing import Any

from ._exceptions import StoreError

__all__ = ["digest", "dumps", "dumps_mapping", "loads", "to_json"]

JSON = None | bool | int | float | str | list["JSON"] | dict[str, "JSON"]


class _Unencodable(Exception):
    def __init__(self, path: str, value: object) -> None:
        super().__init__(path)
        self.path = path
        self.value = value


def _convert(value: Any, path: str) -> JSON:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise _Unencodable(path, value)
        return value
    if isinstance(value, enum.Enum):
        return _convert(value.value, path)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, uuid.UUID | Decimal | PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _convert(getattr(value, f.name), f"{path}.{f.name}") for f in dataclasses.fields(value)
        }
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump) and not isinstance(value, type):  # a pydantic v2 model
        return _convert(model_dump(mode="json"), path)
    if isinstance(value, Mapping):
        converted: dict[str, JSON] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Unencodable(f"{path}[{key!r}]", key)
            converted[key] = _convert(item, f"{path}[{key!r}]")
        return converted
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [_convert(item, f"{path}[{index}]") for index, item in enumerate(items)]
    raise _Unencodable(path, value)


def to_json(value: Any, where: str) -> JSON:
    """``value`` as plain JSON data; ``StoreError`` naming ``where`` when it has no JSON form."""
    try:
        return _convert(value, where)
    except _Unencodable as exc:
        raise StoreError(
            f"{exc.path} cannot be stored as JSON: {type(exc.value).__name__} is not supported "
            "(use str, numbers, bool, None, lists, dicts, dataclasses, pydantic models, enums, "
            "datetimes or bytes; or pass render= to show it differently)"
        ) from None


def dumps(value: Any, where: str) -> str:
    """Canonical JSON text: sorted keys, no spaces, so equal values give equal text."""
    return _encodable(_canonical(to_json(value, where)), where)


def dumps_mapping(values: Mapping[str, Any], what: str) -> str:
    """A mapping as canonical JSON, an error naming the entry (``what 'name'``) that has no JSON form."""
    converted = {name: to_json(value, f"{what} {name!r}") for name, value in values.items()}
    text = _canonical(converted)
    if not text.isascii():  # (the common case skips the check)
        for name, value in converted.items():
            _encodable(_canonical(value), f"{what} {name!r}")
    return text


def _canonical(value: JSON) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _encodable(text: str, where: str) -> str:
    """``text``, unless it holds what UTF-8 cannot encode (a lone surrogate, ``"\\ud800"``),
    which no store can hold: then ``StoreError`` naming ``where``."""
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError as exc:
            raise StoreError(
                f"{where} holds text that is not valid Unicode ({exc.reason}): it cannot be stored"
            ) from None
    return text


def loads(text: str) -> Any:
    """Parse JSON text written by ``dumps``."""
    return json.loads(text)


def digest(kwargs: Mapping[str, Any]) -> str:
    """The SHA-256 of the arguments' canonical JSON: equal arguments, equal digest."""
    return hashlib.sha256(dumps_mapping(kwargs, "argument").encode()).hexdigest()
