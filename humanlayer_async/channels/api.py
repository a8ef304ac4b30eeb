"""ApiChannel: a small versioned JSON API on the listener, to decide from any client.

Routes, under ``/api/v1``, each listed once in ``OPERATIONS`` (the routes and the OpenAPI
document are both made from it):

- ``GET  /api/v1/requests?function=&run_id=&kind=&older_than=&id_prefix=&limit=&after=``  a page
  of the pending requests, oldest first: ``{"requests": [...], "next": id | null, "total": n}``;
  the next page is ``after=<next>``
- ``GET  /api/v1/requests/{request_id}``              one request, with its decision, votes and run
- ``POST /api/v1/requests/{request_id}/decision``     ``{"approved": true, "comment": ..., "edits":
  {...}, "grant": seconds, "seen": fingerprint}``: approve or deny (a vote, with ``approvals=``)
- ``POST /api/v1/requests/{request_id}/answer``       ``{"text": ...}``: answer a question
- ``POST /api/v1/requests/{request_id}/cancel``       ``{"reason": ...}``: withdraw a request
- ``GET  /api/v1/grants?all=false``                   the live grants (``all=true``: every one kept)
- ``POST /api/v1/grants/{grant_id}/revoke``, ``…/confirm``  revoke a grant, or confirm one that
  waits for more approvers
- ``GET  /api/v1/audit?since=&request_id=``           the audit trail
- ``GET  /api/v1/stats?since=7d``                     per-tool stats, as ``humanlayer-async stats --json``
- ``GET  /api/v1/openapi.json``                       the OpenAPI 3.1 document of all of them

Every route but the document takes ``Authorization: Bearer <token>``, a token configured per
user: who decides (``by``) is the token's user, never a field of the body, and approver
lists, the first decision winning and the audit trail apply as through any channel. Tokens
are kept only as their SHA-256, compared in constant time, and appear in no log line, error
or ``repr``. Every refusal is a ``Refused`` (one ``listener.refused`` log line, the
listener's metrics) whose body is ``{"error": {"code": ..., "message": ...}}``, the code one
of ``ERRORS``; bad input of any kind is a 4xx that decides nothing.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import math
import os
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar, runtime_checkable

import anyio
import anyio.to_thread
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from .. import __version__
from .._audit import AuditEntry
from .._codec import to_json
from .._durations import parse_duration, parse_since
from .._exceptions import (
    ArgumentsEdited,
    ConfigurationError,
    HumanLayerError,
    InvalidEdit,
    NotAnApprover,
    StoreError,
    UnknownGrant,
    UnknownRequest,
)
from .._models import ApprovalRequest, Decision, Execution, Grant, Principal, Status, Vote
from .._pages import MAX_PAGE, read_page
from .._refused import Refused
from .._render import describe_decision
from .._stats import DEFAULT_SINCE, ApproverCount, ToolStats, tool_stats
from .base import Answered, BaseChannel, Decider, check_label
from .web import _REQUEST_ID, MAX_ANSWER, MAX_COMMENT, MAX_EDIT_NAME, MAX_EDITS, _check_emails

__all__ = [
    "ERRORS",
    "OPERATIONS",
    "PREFIX",
    "TOKENS_ENV",
    "ApiChannel",
    "Operation",
    "hash_token",
    "openapi_document",
]

PREFIX = "/api/v1"
"""Where the API's routes are, on the listener."""

TOKENS_ENV = "HUMANLAYER_API_TOKENS"
"""The environment variable read, when no tokens are given, for ``user sha256:<hex>`` lines."""

MIN_TOKEN_LENGTH = 16
MAX_BODY = 64 * 1024
"""The largest JSON body a route reads (the listener refuses over 1 MiB itself, with a 413)."""
MAX_DEPTH = 32
"""How deeply a body's arrays and objects may nest."""
MAX_GRANT = 30 * 86400.0
"""The longest grant a decision may give: 30 days, in seconds."""
MAX_PARAMETER = 500
"""Characters of one query parameter's value."""
DEFAULT_PAGE = 100
"""Pending requests a page holds when the query gives no ``limit`` (at most ``MAX_PAGE``)."""

_HASH = re.compile(r"sha256:([0-9a-fA-F]{64})")
_TOKEN = re.compile(r"[!-~]+")  # visible ASCII: what an Authorization header carries as it is
_USER = re.compile(r"\S+")
_FINGERPRINT = re.compile(r"[0-9a-f]{16}")  # ApprovalRequest.fingerprint
_ID_PREFIX = re.compile(r"[0-9A-Za-z_-]{1,128}")
_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="humanlayer-async"'}

Code = Literal[
    "malformed",
    "invalid_edit",
    "not_decidable",
    "unauthenticated",
    "not_an_approver",
    "unknown_request",
    "unknown_grant",
    "not_found",
    "method_not_allowed",
    "already_decided",
    "arguments_edited",
    "grant_not_live",
    "unavailable",
]

ERRORS: Mapping[Code, tuple[int, str]] = {
    "malformed": (
        400,
        "bad JSON, a field or parameter of the wrong type, unknown or too long, a body too large",
    ),
    "invalid_edit": (400, "an edit the request does not allow (`argument` names it); nothing was decided"),
    "not_decidable": (
        400,
        "an answer the request cannot take: an answer to an approval, an approval of a question,"
        " a grant with a denial",
    ),
    "unauthenticated": (401, "no bearer token, or one that is nobody's"),
    "not_an_approver": (
        403,
        "the token's user may not decide it (`requester`: true when they requested the call)",
    ),
    "unknown_request": (404, "no request has this id (or it was pruned)"),
    "unknown_grant": (404, "no grant has this id"),
    "not_found": (404, "no such route"),
    "method_not_allowed": (405, "the route does not take this method (`Allow` names those it takes)"),
    "already_decided": (409, "a decision stood before this answer (`decision` is that one)"),
    "arguments_edited": (
        409,
        "the call was edited after the fingerprint sent as `seen`: look at it again; nothing was decided",
    ),
    "grant_not_live": (409, "the grant is expired, used up or revoked"),
    "unavailable": (503, "the store is unavailable, or the HumanLayer is not running: try again"),
}
"""Every error code: its HTTP status, and what it means."""


def _refusal(
    code: Code,
    message: str,
    *,
    extra: Mapping[str, object] | None = None,
    headers: Mapping[str, str] | None = None,
    **fields: object,
) -> Refused:
    """A refusal answered as ``{"error": {"code", "message", **extra}}``; ``fields`` go in the
    log line only."""
    body = json.dumps({"error": {"code": code, "message": message, **(extra or {})}})
    return Refused(
        ERRORS[code][0],
        code,
        body=body,
        media_type="application/json",
        headers={**_HEADERS, **(headers or {})},
        **fields,
    )


# -- tokens ----------------------------------------------------------------------------------


def _check_token(token: object, owner: str) -> str:
    if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH or not _TOKEN.fullmatch(token):
        raise ConfigurationError(
            f"the token of {owner} must be at least {MIN_TOKEN_LENGTH} visible ASCII characters"
            " (no spaces), e.g. secrets.token_urlsafe(32)"
        )
    return token


def hash_token(token: str) -> str:
    """``sha256:<hex>``: what ``token_hashes=``, ``ApiChannel.from_file`` and
    ``$HUMANLAYER_API_TOKENS`` take for ``token``, so that the token itself is kept nowhere
    but with its user. Tokens are at least 16 visible ASCII characters; make them random::

        token = secrets.token_urlsafe(32)  # give it to the user
        line = f"alice {hash_token(token)}"  # keep this
    """
    return "sha256:" + _sha256(_check_token(token, "the token to hash")).hex()


def _sha256(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _read_hash(hashed: object, owner: str) -> bytes:
    match = _HASH.fullmatch(hashed) if isinstance(hashed, str) else None
    if match is None:  # never repeated: it may be a token pasted where its hash belongs
        raise ConfigurationError(f"the token hash of {owner} must be sha256:<64 hex digits> (see hash_token)")
    return bytes.fromhex(match[1])


def _hash_lines(text: str, source: str) -> dict[str, str]:
    """``user sha256:<hex>`` lines (blank lines and ``#`` comments skipped) as ``{user: hash}``."""
    hashes: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) != 2 or _HASH.fullmatch(words[1]) is None:  # the line is not repeated
            raise ConfigurationError(f"line {number} of {source} is not `user sha256:<64 hex digits>`")
        if words[0] in hashes:
            raise ConfigurationError(f"{source} names {words[0]!r} twice (line {number})")
        hashes[words[0]] = words[1]
    return hashes


# -- JSON: the API's objects, each from one list of fields (its schema and its values) -------

Schema = dict[str, Any]
T = TypeVar("T")

_STRING: Schema = {"type": "string"}
_INTEGER: Schema = {"type": "integer"}
_NUMBER: Schema = {"type": "number"}
_BOOLEAN: Schema = {"type": "boolean"}
_OBJECT: Schema = {"type": "object"}
_TIME: Schema = {"type": "string", "format": "date-time"}
_STATUS: Schema = {"enum": [status.value for status in Status]}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def _envelope(properties: Mapping[str, Schema], description: str = "") -> Schema:
    """An object with exactly ``properties``, every one present."""
    schema: Schema = {
        "type": "object",
        "properties": dict(properties),
        "required": list(properties),
        "additionalProperties": False,
    }
    return {"description": description, **schema} if description else schema


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _data(value: Any) -> Any:
    """``value`` as JSON data; one without a JSON form (a ``MemoryStore`` keeps arguments as
    rendered) as its ``repr``, each inside a mapping or list on its own."""
    try:
        return to_json(value, "value")
    except StoreError:
        if isinstance(value, Mapping):
            return {str(key): _data(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [_data(item) for item in value]
        return repr(value)


def _mapping(value: Mapping[str, Any] | None) -> Any:
    return None if value is None else _data(dict(value))


class _Shape(Generic[T]):
    """One object of the API: its JSON Schema (a component of the document) and how a value
    becomes it, both from the one list of ``(name, schema, value)`` fields."""

    def __init__(self, name: str, description: str, *fields: tuple[str, Schema, Callable[[T], Any]]) -> None:
        self.name = name
        self.description = description
        self.fields = fields

    @property
    def ref(self) -> Schema:
        return {"$ref": f"#/components/schemas/{self.name}"}

    def schema(self) -> Schema:
        return _envelope({name: schema for name, schema, _ in self.fields}, self.description)

    def dump(self, value: T) -> dict[str, Any]:
        return {name: get(value) for name, _, get in self.fields}


VOTE: _Shape[Vote] = _Shape(
    "Vote",
    "One approver's vote on a request that needs several approvals.",
    ("by", _STRING, lambda v: v.by),
    ("approved", _BOOLEAN, lambda v: v.approved),
    ("via", _STRING, lambda v: v.via),
    ("comment", _nullable(_STRING), lambda v: v.comment),
    ("at", _TIME, lambda v: _time(v.at)),
    ("user", _nullable(_STRING), lambda v: v.user),
    ("edits", _nullable(_OBJECT), lambda v: _mapping(v.edits)),
)
DECISION: _Shape[Decision] = _Shape(
    "Decision",
    "The answer that stands for a request (the first one stored wins).",
    ("request_id", _STRING, lambda d: d.request_id),
    ("approved", _BOOLEAN, lambda d: d.approved),
    ("status", _STATUS, lambda d: d.status.value),
    ("by", _nullable(_STRING), lambda d: d.by),
    ("via", _STRING, lambda d: d.via),
    ("comment", _nullable(_STRING), lambda d: d.comment),
    ("decided_at", _TIME, lambda d: _time(d.decided_at)),
    ("answer", _nullable(_STRING), lambda d: d.answer),
    ("user", _nullable(_STRING), lambda d: d.user),
    ("edits", _nullable(_OBJECT), lambda d: _mapping(d.edits)),
    ("grant", _nullable(_STRING), lambda d: d.grant),
    ("votes", _array(VOTE.ref), lambda d: [VOTE.dump(vote) for vote in d.votes]),
)
EXECUTION: _Shape[Execution] = _Shape(
    "Execution",
    "How far the approved call got: executing, then executed (outcome ok or what it raised).",
    ("state", {"enum": ["executing", "executed"]}, lambda e: e.state),
    ("outcome", _nullable(_STRING), lambda e: e.outcome),
)
REQUEST: _Shape[ApprovalRequest] = _Shape(
    "Request",
    "One gated call (kind approval) or question (kind question), arguments as rendered for people.",
    ("id", _STRING, lambda r: r.id),
    ("short_id", _STRING, lambda r: r.short_id),
    ("kind", {"enum": ["approval", "question"]}, lambda r: r.kind),
    ("function", _STRING, lambda r: r.function),
    ("tool", _nullable(_STRING), lambda r: r.tool),
    ("kwargs", _OBJECT, lambda r: _mapping(r.kwargs)),
    ("context", _OBJECT, lambda r: _mapping(r.context)),
    ("approvers", _array(_STRING), lambda r: list(r.approvers)),
    ("approvals", _INTEGER, lambda r: r.approvals),
    ("created_at", _TIME, lambda r: _time(r.created_at)),
    ("expires_at", _TIME, lambda r: _time(r.expires_at)),
    ("run_id", _nullable(_STRING), lambda r: r.run_id),
    ("message", _nullable(_STRING), lambda r: r.message),
    ("doc", _nullable(_STRING), lambda r: r.doc),
    ("requested_by", _nullable(_STRING), lambda r: r.requested_by),
    ("editable", _nullable(_OBJECT), lambda r: _mapping(r.editable)),
    ("fingerprint", _STRING, lambda r: r.fingerprint),
    ("status", _STATUS, lambda r: r.status.value),
    ("votes", _array(VOTE.ref), lambda r: [VOTE.dump(vote) for vote in r.votes]),
    (
        "decision",
        _nullable(DECISION.ref),
        lambda r: None if r.decision is None else DECISION.dump(r.decision),
    ),
    (
        "execution",
        _nullable(EXECUTION.ref),
        lambda r: None if r.execution is None else EXECUTION.dump(r.execution),
    ),
)
GRANT: _Shape[Grant] = _Shape(
    "Grant",
    "Calls of one tool allowed to run without asking, for a while; live: not expired, used up or revoked.",
    ("id", _STRING, lambda g: g.id),
    ("function", _STRING, lambda g: g.function),
    ("where", _nullable(_OBJECT), lambda g: _mapping(g.where)),
    ("by", _array(_STRING), lambda g: list(g.by)),
    ("users", _array(_nullable(_STRING)), lambda g: list(g.users)),
    ("created_at", _TIME, lambda g: _time(g.created_at)),
    ("expires_at", _TIME, lambda g: _time(g.expires_at)),
    ("max_uses", _nullable(_INTEGER), lambda g: g.max_uses),
    ("uses", _INTEGER, lambda g: g.uses),
    ("approvals", _INTEGER, lambda g: g.approvals),
    ("approvers", _array(_STRING), lambda g: list(g.approvers)),
    ("revoked_by", _nullable(_STRING), lambda g: g.revoked_by),
    ("revoked_at", _nullable(_TIME), lambda g: None if g.revoked_at is None else _time(g.revoked_at)),
    ("confirmed", _BOOLEAN, lambda g: g.confirmed),
    ("live", _BOOLEAN, lambda g: g.live(datetime.now(UTC))),
)
AUDIT_ENTRY: _Shape[AuditEntry] = _Shape(
    "AuditEntry",
    "One line of the audit trail.",
    ("event", _STRING, lambda e: e.event),
    ("request_id", _STRING, lambda e: e.request_id),
    ("at", _TIME, lambda e: _time(e.at)),
    ("fields", _OBJECT, lambda e: _mapping(e.fields)),
)
APPROVER_COUNT: _Shape[ApproverCount] = _Shape(
    "ApproverCount",
    "One of a tool's top approvers, and how many of its requests they answered.",
    ("by", _STRING, lambda a: a.by),
    ("count", _INTEGER, lambda a: a.count),
)
TOOL_STATS: _Shape[ToolStats] = _Shape(
    "ToolStats",
    "What came of one tool's requests since the time asked (humanlayer-async stats --json).",
    ("function", _STRING, lambda s: s.function),
    *(
        (name, _INTEGER, attrgetter(name))
        for name in (
            "requests",
            "approved",
            "denied",
            "timed_out",
            "cancelled",
            "failed",
            "granted",
            "pending",
        )
    ),
    ("approval_rate", _nullable(_NUMBER), lambda s: s.approval_rate),
    ("median_wait_seconds", _nullable(_NUMBER), lambda s: s.median_wait_seconds),
    ("p95_wait_seconds", _nullable(_NUMBER), lambda s: s.p95_wait_seconds),
    (
        "top_approvers",
        _array(APPROVER_COUNT.ref),
        lambda s: [APPROVER_COUNT.dump(a) for a in s.top_approvers],
    ),
    ("shadowed", _INTEGER, lambda s: s.shadowed),
)
SHAPES: tuple[_Shape[Any], ...] = (
    VOTE, DECISION, EXECUTION, REQUEST, GRANT, AUDIT_ENTRY, APPROVER_COUNT, TOOL_STATS
)  # fmt: skip

_ERROR: Schema = _envelope(
    {
        "error": {
            "type": "object",
            "properties": {
                "code": {"enum": list(ERRORS)},
                "message": _STRING,
                "requester": _BOOLEAN,
                "argument": _STRING,
                "decision": DECISION.ref,
            },
            "required": ["code", "message"],
            "additionalProperties": False,
        }
    },
    "A refusal: nothing was decided. code is stable; message is for people.",
)
_ANSWERED: Schema = _envelope(
    {
        "decision": _nullable(DECISION.ref),
        "stands": _BOOLEAN,
        "votes": _array(VOTE.ref),
        "needed": _INTEGER,
        "grant": _nullable(GRANT.ref),
    },
    "What an answer came to: decision null while a vote counted and the request waits for more"
    " (votes so far, of needed); grant, the one this approval gave.",
)


# -- input: query parameters and bodies, each checked by the function that documents it -------


def _malformed(message: str) -> Refused:
    return _refusal("malformed", message)


@dataclass(frozen=True, slots=True)
class _Parameter:
    """A query parameter: its schema, and ``read``, which turns the text sent into the value
    (or refuses it as malformed). An empty value is no value."""

    name: str
    description: str
    schema: Schema
    read: Callable[[str], Any]


def _kind(text: str) -> str:
    if text not in ("approval", "question"):
        raise _malformed("kind must be approval or question")
    return text


def _switch(text: str) -> bool:
    if text not in ("true", "false"):
        raise _malformed("all must be true or false")
    return text == "true"


def _since(text: str) -> datetime:
    try:
        return parse_since(text)
    except ValueError as exc:
        raise _malformed(f"since: {exc}") from None


def _age(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise _malformed(f"older_than: {exc}") from None


def _limit(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise _malformed(f"limit must be a whole number from 1 to {MAX_PAGE}")
    return int(text)


def _request_id(name: str) -> Callable[[str], str]:
    def read(text: str) -> str:
        if not _REQUEST_ID.fullmatch(text):
            raise _malformed(f"{name} must be a request's id, as the API gave it")
        return text

    return read


def _id_prefix(text: str) -> str:
    if not _ID_PREFIX.fullmatch(text):
        raise _malformed("id_prefix must be the start of a request's id (letters, digits, - and _)")
    return text


_SINCE_TEXT = "a duration back (15m, 2h, 7d) or an ISO 8601 time (UTC unless it says otherwise)"


@dataclass(frozen=True, slots=True)
class _Field:
    """A field of a JSON body: its schema, whether it must be there, and ``read``, which turns
    the value sent (never ``null``: that is no value) into the value used, or refuses it."""

    schema: Schema
    read: Callable[[str, Any], Any]
    required: bool = False


def _approved(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _malformed(f"{name} must be true or false")
    return value


def _words(limit: int, *, required: bool = False) -> Callable[[str, Any], str | None]:
    """A text field of at most ``limit`` characters, stripped; blank is no value, or (with
    ``required``) refused."""

    def read(name: str, value: Any) -> str | None:
        if not isinstance(value, str) or len(value) > limit:
            raise _malformed(f"{name} must be a string of at most {limit} characters")
        if required and not value.strip():
            raise _malformed(f"{name} must not be blank")
        return value.strip() or None

    return read


def _edits(name: str, value: Any) -> dict[str, Any] | None:
    if (
        not isinstance(value, dict)
        or len(value) > MAX_EDITS
        or any(len(argument) > MAX_EDIT_NAME for argument in value)
    ):
        raise _malformed(f"{name} must be an object of at most {MAX_EDITS} arguments and their new values")
    return value or None  # {} edits nothing


def _grant(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_GRANT:
        raise _malformed(f"{name} must be a number of seconds above 0, at most {MAX_GRANT:.0f} (30 days)")
    return float(value)


def _seen(name: str, value: Any) -> str:
    if not isinstance(value, str) or not _FINGERPRINT.fullmatch(value):
        raise _malformed(f"{name} must be a request's fingerprint, as the API gave it")
    return value


class _Body:
    """A JSON object body: exactly its ``fields`` (documented as the schema ``name``)."""

    def __init__(self, name: str, description: str, **fields: _Field) -> None:
        self.name = name
        self.description = description
        self.fields = fields

    def schema(self) -> Schema:
        """Optional fields may be ``null``: no value."""
        return {
            "description": self.description,
            "type": "object",
            "properties": {
                name: field.schema if field.required else _nullable(field.schema)
                for name, field in self.fields.items()
            },
            "required": [name for name, field in self.fields.items() if field.required],
            "additionalProperties": False,
        }

    def read(self, raw: bytes) -> dict[str, Any]:
        """The fields sent, read; ``Refused`` (malformed) for anything else."""
        if len(raw) > MAX_BODY:
            raise _malformed(f"the body is over {MAX_BODY} bytes")
        sent = _json_object(raw) if raw.strip() else {}
        unknown = sorted(set(sent) - set(self.fields))
        if unknown:
            raise _malformed(f"unknown field {unknown[0][:100]!r}: the fields are {', '.join(self.fields)}")
        values = {}
        for name, field in self.fields.items():
            value = sent.get(name)
            if value is None:
                if field.required:
                    raise _malformed(f"{name} is required")
                continue
            values[name] = field.read(name, value)
        return values


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object of the body; a name twice is refused (parsers disagree on which counts)."""
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("a name appears twice in an object")
    return found


def _constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError("a number out of range")
    return number


def _json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, nested at most ``MAX_DEPTH`` deep; finite numbers only."""
    try:
        text = raw.decode()  # UTF-8 only, as RFC 8259 wants (json.loads would guess UTF-16 too)
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_finite)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise _malformed("the body is not JSON (UTF-8, finite numbers, each name once)") from None
    if not isinstance(value, dict):
        raise _malformed("the body must be a JSON object")
    level: list[Any] = [value]
    for _ in range(MAX_DEPTH):
        level = [
            item
            for container in level
            for item in (container.values() if isinstance(container, dict) else container)
            if isinstance(item, dict | list)
        ]
        if not level:
            return value
    raise _malformed(f"the body nests deeper than {MAX_DEPTH} levels")


# -- the operations: the routes and the document are made from this one table ---------------

Handler = Callable[["ApiChannel", "_Call"], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Operation:
    """One route of the API: what the listener serves and the document describes."""

    method: Literal["GET", "POST"]
    path: str
    """Under ``PREFIX``; ``{request_id}`` and ``{grant_id}`` are path parameters."""
    operation_id: str
    summary: str
    handler: Handler
    answer: Schema
    """The schema of the 200 answer's body."""
    errors: tuple[Code, ...] = ()
    """The codes this operation may refuse with, besides those every one may (``common``)."""
    query: tuple[_Parameter, ...] = ()
    body: _Body | None = None
    authenticated: bool = True

    @property
    def codes(self) -> tuple[Code, ...]:
        """Every code it may refuse with."""
        common: tuple[Code, ...] = ("malformed", "method_not_allowed")
        if self.authenticated:
            common += ("unauthenticated", "unavailable")
        return (*common, *self.errors)


@dataclass(frozen=True, slots=True)
class _Call:
    """One request to an operation: who sent it, its query parameters and body, read."""

    request: Request
    user: str | None
    """The token's user (``None`` on the one route without a token)."""
    query: dict[str, Any]
    body: dict[str, Any]

    @property
    def path(self) -> Mapping[str, str]:
        return self.request.path_params


@runtime_checkable
class _Canceller(Protocol):
    """A ``Decider`` that can also withdraw a request (the engine's ``Decisions`` can)."""

    async def cancel(self, request_id: str, *, by: str | Principal, reason: str | None, via: str) -> Answered:
        """Withdraw a pending request as ``by``."""
        ...


class _Endpoint:
    """One path's operations as an ASGI app: every method reaches it (Starlette's own 405
    would be plain text), and a refusal raised here reaches the listener's one handler."""

    def __init__(self, handle: Callable[[Request], Awaitable[Response]]) -> None:
        self.handle = handle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handle(Request(scope, receive))
        await response(scope, receive, send)


def _json(content: Mapping[str, Any]) -> Response:
    return JSONResponse(content, headers=_HEADERS)


class ApiChannel(BaseChannel):
    """A small versioned JSON API on the listener (``/api/v1``): list, read and decide
    requests, and manage grants, from any HTTP client, with a bearer token per user.

    It delivers nothing (requests wait until a client asks for them); it only takes answers,
    through the same path as every channel: approver lists, the first decision winning and
    the audit trail apply, and ``by`` is always the token's user. ``GET
    /api/v1/openapi.json`` describes the routes (OpenAPI 3.1). Put TLS in front of the
    listener when clients are not on this machine.

    Args:
        tokens: ``{"alice": "<token>", ...}``: each user's token, at least 16 visible ASCII
            characters. Only their SHA-256 is kept.
        token_hashes: ``{"alice": "sha256:<hex>", ...}``: users by the hash of their token
            (``hash_token``), so the configuration holds no token. With ``tokens=``, for
            other users.
        emails: Each user's email, ``{"alice": "alice@company.com"}``: approver lists may then
            name them by it, and their decisions record it as ``by`` (with the user's name as
            ``Decision.user``), as in the web console.
        label: What a ``Policy`` names this channel by. Default: ``"api"``, its kind.

    With neither ``tokens`` nor ``token_hashes``, the users come from
    ``$HUMANLAYER_API_TOKENS``: ``user sha256:<hex>`` lines, as ``from_file`` reads them.
    """

    name = "api"

    def __init__(
        self,
        *,
        tokens: Mapping[str, str] | None = None,
        token_hashes: Mapping[str, str] | None = None,
        emails: Mapping[str, str] | None = None,
        label: str | None = None,
    ) -> None:
        self.label = check_label(label, self.name)
        if tokens is None and token_hashes is None:
            text = os.environ.get(TOKENS_ENV, "")
            if not text.strip():
                raise ConfigurationError(
                    f"ApiChannel needs users: tokens=, token_hashes=, ApiChannel.from_file(path), or"
                    f" ${TOKENS_ENV} holding `user sha256:<hex>` lines"
                )
            token_hashes = _hash_lines(text, f"${TOKENS_ENV}")
        digests: dict[str, bytes] = {}
        for user, token in (tokens or {}).items():
            digests[self._check_user(user, digests)] = _sha256(_check_token(token, repr(user)))
        for user, hashed in (token_hashes or {}).items():
            digests[self._check_user(user, digests)] = _read_hash(hashed, repr(user))
        owners: dict[bytes, str] = {}
        for user, digest in digests.items():
            if digest in owners:
                raise ConfigurationError(f"{user!r} has the same token as {owners[digest]!r}")
            owners[digest] = user
        if not digests:
            raise ConfigurationError("ApiChannel needs at least one user")
        self._digests = digests
        self._emails = _check_emails(emails or {}, set(digests))
        self._decider: Decider | None = None

    @staticmethod
    def _check_user(user: object, known: Mapping[str, bytes]) -> str:
        if not isinstance(user, str) or not _USER.fullmatch(user):
            raise ConfigurationError(f"user names must be non-empty strings without spaces, not {user!r}")
        if user in known:
            raise ConfigurationError(f"{user!r} is given a token twice")
        return user

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        emails: Mapping[str, str] | None = None,
        label: str | None = None,
    ) -> ApiChannel:
        """The users of a file of ``user sha256:<hex>`` lines (``hash_token``; blank lines and
        ``#`` comments are skipped)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read the API tokens file {os.fspath(path)!r}: {exc}") from exc
        return cls(token_hashes=_hash_lines(text, repr(os.fspath(path))), emails=emails, label=label)

    def __repr__(self) -> str:
        return f"ApiChannel(users={list(self.users)!r})"

    @property
    def users(self) -> tuple[str, ...]:
        """Who has a token."""
        return tuple(sorted(self._digests))

    # -- the Channel protocol ----------------------------------------------------------------

    async def run(self, decider: Decider, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        self._decider = decider
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            self._decider = None

    async def send(self, request: ApprovalRequest) -> str | None:
        """Nothing to deliver: a client lists what is pending."""
        return None

    def routes(self) -> Sequence[BaseRoute]:
        paths: dict[str, dict[str, Operation]] = {}
        for operation in OPERATIONS:
            paths.setdefault(operation.path, {})[operation.method] = operation
        rest = Route(PREFIX + "/{rest:path}", _Endpoint(self._not_found))
        # Every other path under the prefix, the prefix itself and paths with a newline (%0A,
        # where the path convertor's "." stops) included: each answered in JSON.
        rest.path_regex = re.compile(rf"{re.escape(PREFIX)}(/.*)?\Z", re.DOTALL)
        served = [Route(PREFIX + path, _Endpoint(self._endpoint(by))) for path, by in paths.items()]
        return [*served, rest]

    # -- serving -----------------------------------------------------------------------------

    def _endpoint(self, by_method: Mapping[str, Operation]) -> Callable[[Request], Awaitable[Response]]:
        allowed = ", ".join(sorted(by_method))

        async def endpoint(request: Request) -> Response:
            operation = by_method.get(request.method)
            if operation is None:
                raise _refusal(
                    "method_not_allowed",
                    f"use {allowed} here, not {request.method[:20]}",
                    headers={"Allow": allowed},
                )
            user = self._authenticate(request) if operation.authenticated else None
            query = _read_query(request, operation.query)
            body = operation.body.read(await request.body()) if operation.body is not None else {}
            try:
                return await operation.handler(self, _Call(request, user, query, body))
            except StoreError as exc:
                raise _refusal(
                    "unavailable", "the store is unavailable: try again", user=user, error=str(exc)
                ) from exc

        return endpoint

    async def _not_found(self, request: Request) -> Response:
        raise _refusal("not_found", f"no such route: the routes are listed at {PREFIX}/openapi.json")

    def _authenticate(self, request: Request) -> str:
        """The user whose token the request carries (every token compared, in constant time)."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        found = None
        if scheme.lower() == "bearer":
            digest = _sha256(token.strip())
            for user, expected in self._digests.items():
                if hmac.compare_digest(expected, digest):
                    found = user
        if found is None:
            raise _refusal("unauthenticated", "send Authorization: Bearer <your token>", headers=_CHALLENGE)
        return found

    def _running(self) -> Decider:
        if self._decider is None:
            raise _refusal("unavailable", "the HumanLayer is not running: try again")
        return self._decider

    def _who(self, user: str | None) -> str | Principal:
        """A token's user as approver lists know them: by email too, when given one."""
        assert user is not None  # every route that decides takes a token
        email = self._emails.get(user)
        return user if email is None else Principal(email, user)

    # -- requests --------------------------------------------------------------------------------

    async def _list(self, call: _Call) -> Response:
        """A page of the pending requests, filtered and counted by the store (never all of them)."""
        query = call.query
        after = query.get("after")
        try:
            page = await read_page(
                self._running(),
                limit=query.get("limit", DEFAULT_PAGE),
                after=after,
                run_id=query.get("run_id"),
                kind=query.get("kind"),
                function=query.get("function"),
                older_than=query.get("older_than"),
                id_prefix=query.get("id_prefix"),
            )
        except UnknownRequest as exc:  # after: a request the store no longer holds (pruned)
            raise _refusal(
                "unknown_request",
                "after names no request (it was pruned?): list from the first page again",
                request_id=exc.request_id[:200],
                user=call.user,
            ) from exc
        return _json(
            {
                "requests": [REQUEST.dump(request) for request in page.requests],
                "next": page.next,
                "total": page.total,
            }
        )

    async def _get(self, call: _Call) -> Response:
        return _json({"request": REQUEST.dump(await self._request(call))})

    async def _request(self, call: _Call) -> ApprovalRequest:
        request_id = call.path["request_id"]
        with _refusing(request_id, call.user):
            if not _REQUEST_ID.fullmatch(request_id):
                raise UnknownRequest(request_id[:200])
            return await self._running().get(request_id)

    async def _decision(self, call: _Call) -> Response:
        """Approve or deny as the token's user; with ``edits``, ``grant`` and ``seen`` as
        ``Decider.decide`` takes them (each passed only when sent)."""
        body = call.body
        shown = await self._request(call)
        approved: bool = body["approved"]
        if approved and shown.kind == "question" and shown.decision is None:
            raise _refusal(
                "not_decidable",
                f"request {shown.id} is a question: answer it ({PREFIX}/requests/{shown.id}/answer)",
                request_id=shown.id,
                user=call.user,
            )
        extra = {name: body[name] for name in ("edits", "grant", "seen") if name in body}
        with _refusing(shown.id, call.user):
            answered = await self._running().decide(
                shown.id,
                approved,
                by=self._who(call.user),
                comment=body.get("comment"),
                via=self.name,
                **extra,
            )
        return _answered(answered, call.user)

    async def _answer(self, call: _Call) -> Response:
        shown = await self._request(call)
        with _refusing(shown.id, call.user):
            answered = await self._running().respond(
                shown.id, call.body["text"], by=self._who(call.user), via=self.name
            )
        return _answered(answered, call.user)

    async def _cancel(self, call: _Call) -> Response:
        shown = await self._request(call)
        decider = self._running()
        if not isinstance(decider, _Canceller):
            raise _refusal("not_decidable", "this HumanLayer cannot cancel requests", request_id=shown.id)
        with _refusing(shown.id, call.user):
            answered = await decider.cancel(
                shown.id, by=self._who(call.user), reason=call.body.get("reason"), via=self.name
            )
        return _answered(answered, call.user)

    # -- grants ----------------------------------------------------------------------------------

    async def _grants(self, call: _Call) -> Response:
        grants = await self._running().grants(active=not call.query.get("all", False))
        return _json({"grants": [GRANT.dump(grant) for grant in grants]})

    async def _revoke(self, call: _Call) -> Response:
        return await self._change_grant(call, "revoke")

    async def _confirm(self, call: _Call) -> Response:
        return await self._change_grant(call, "confirm")

    async def _change_grant(self, call: _Call, change: Literal["revoke", "confirm"]) -> Response:
        grant_id = call.path["grant_id"]
        decider = self._running()
        act = decider.revoke_grant if change == "revoke" else decider.confirm_grant
        try:
            if not _REQUEST_ID.fullmatch(grant_id):
                raise UnknownGrant(grant_id[:200])
            grant = await act(grant_id, by=self._who(call.user))
        except UnknownGrant as exc:
            raise _refusal("unknown_grant", "no grant has this id", grant_id=exc.grant_id) from exc
        except NotAnApprover as exc:
            message = f"{call.user} is not an approver of this grant's tool"
            raise _refusal(
                "not_an_approver", message, extra={"requester": False}, grant_id=grant_id, user=call.user
            ) from exc
        except StoreError:
            raise
        except HumanLayerError as exc:
            raise _refusal("grant_not_live", str(exc), grant_id=grant_id, user=call.user) from exc
        return _json({"grant": GRANT.dump(grant)})

    # -- the audit trail -------------------------------------------------------------------------

    async def _audit(self, call: _Call) -> Response:
        entries = await self._running().history(
            since=call.query.get("since"), request_id=call.query.get("request_id")
        )
        return _json({"entries": [AUDIT_ENTRY.dump(entry) for entry in entries]})

    async def _stats(self, call: _Call) -> Response:
        since = call.query.get("since") or parse_since(DEFAULT_SINCE)
        entries = await self._running().history(since=since)
        # A busy week is a few hundred thousand entries: counted off the event loop.
        stats = await anyio.to_thread.run_sync(tool_stats, entries)
        return _json({"stats": [TOOL_STATS.dump(tool) for tool in stats]})

    async def _openapi(self, call: _Call) -> Response:
        return Response(_document(), media_type="application/json", headers=_HEADERS)


@contextlib.contextmanager
def _refusing(request_id: str, user: str | None) -> Iterator[None]:
    """The refusals of reading or deciding request ``request_id`` as ``user``: the
    exceptions of the ``Decider`` as the API's codes (a store failure passes: a 503)."""
    request_id = request_id[:200]
    try:
        yield
    except UnknownRequest as exc:
        raise _refusal(
            "unknown_request", "no request has this id (or it was pruned)", request_id=request_id, user=user
        ) from exc
    except NotAnApprover as exc:
        why = "requested this call and may not decide it" if exc.requester else "is not an approver of it"
        raise _refusal(
            "not_an_approver",
            f"{user} {why}",
            extra={"requester": exc.requester},
            request_id=request_id,
            user=user,
        ) from exc
    except InvalidEdit as exc:
        message = f"{exc}; nothing was decided"
        raise _refusal(
            "invalid_edit", message, extra={"argument": exc.argument}, request_id=request_id, user=user
        ) from exc
    except ArgumentsEdited as exc:
        raise _refusal(
            "arguments_edited", f"{exc}; nothing was decided", request_id=request_id, user=user
        ) from exc
    except StoreError:
        raise
    except HumanLayerError as exc:
        raise _refusal("not_decidable", str(exc), request_id=request_id, user=user) from exc


def _answered(answered: Answered, user: str | None) -> Response:
    """What an answer came to; 409 with the standing decision when it came after another."""
    decision = answered.decision
    if decision is not None and not answered.stands:
        raise _refusal(
            "already_decided",
            f"request {decision.request_id} was already {describe_decision(decision)}",
            extra={"decision": DECISION.dump(decision)},
            request_id=decision.request_id,
            user=user,
        )
    return _json(
        {
            "decision": None if decision is None else DECISION.dump(decision),
            "stands": answered.stands,
            "votes": [VOTE.dump(vote) for vote in answered.votes],
            "needed": answered.needed,
            "grant": None if answered.grant is None else GRANT.dump(answered.grant),
        }
    )


def _read_query(request: Request, parameters: Sequence[_Parameter]) -> dict[str, Any]:
    """The query parameters sent, read: each known, sent once; an empty one is no value."""
    known = {parameter.name: parameter for parameter in parameters}
    values: dict[str, Any] = {}
    seen: set[str] = set()
    for name, text in request.query_params.multi_items():
        parameter = known.get(name)
        if parameter is None:
            names = ", ".join(known) or "none"
            raise _malformed(f"unknown query parameter {name[:100]!r} (this route takes {names})")
        if name in seen:
            raise _malformed(f"the query parameter {name} is sent twice")
        seen.add(name)
        if len(text) > MAX_PARAMETER:
            raise _malformed(f"{name} is longer than {MAX_PARAMETER} characters")
        if text:
            values[name] = parameter.read(text)
    return values


_FUNCTION = _Parameter(
    "function", "only the requests of this tool (its name, or its module.qualname)", _STRING, str
)
_RUN_ID = _Parameter("run_id", "only the requests of this agent run", _STRING, str)
_KIND = _Parameter("kind", "only approvals, or only questions", {"enum": ["approval", "question"]}, _kind)
_PAGE_QUERY = (
    _FUNCTION,
    _RUN_ID,
    _KIND,
    _Parameter(
        "older_than",
        "only the requests made at least this long ago: a duration (90s, 15m, 2h, 7d)",
        {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?[smhd]$"},
        _age,
    ),
    _Parameter(
        "id_prefix",
        "only the requests whose id starts with this",
        {"type": "string", "pattern": "^[0-9A-Za-z_-]{1,128}$"},
        _id_prefix,
    ),
    _Parameter(
        "limit",
        f"how many requests at most (default {DEFAULT_PAGE})",
        {"type": "string", "pattern": "^[0-9]+$", "description": f"1 to {MAX_PAGE}"},
        _limit,
    ),
    _Parameter(
        "after",
        "the next page: the next of an earlier answer (the id of its last request); a request"
        " since pruned is unknown_request",
        {"type": "string", "pattern": "^[0-9A-Za-z_-]{8,128}$"},
        _request_id("after"),
    ),
)

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET",
        "/requests",
        "listRequests",
        "A page of the pending requests, oldest first, and how many there are in all",
        ApiChannel._list,
        _envelope(
            {"requests": _array(REQUEST.ref), "next": _nullable(_STRING), "total": _INTEGER},
            "requests: at most limit of them; next: the after of the next page (null: this is the"
            " last); total: how many pending requests the filters keep, on every page",
        ),
        ("unknown_request",),
        query=_PAGE_QUERY,
    ),
    Operation(
        "GET",
        "/requests/{request_id}",
        "getRequest",
        "One request, with its decision, votes and execution once there are some",
        ApiChannel._get,
        _envelope({"request": REQUEST.ref}),
        ("unknown_request",),
    ),
    Operation(
        "POST",
        "/requests/{request_id}/decision",
        "decide",
        "Approve or deny a request as the token's user (on a request that needs several approvals: a vote)",
        ApiChannel._decision,
        _ANSWERED,
        (
            "unknown_request",
            "not_an_approver",
            "already_decided",
            "arguments_edited",
            "invalid_edit",
            "not_decidable",
        ),
        body=_Body(
            "DecisionBody",
            "approved; a comment (the reason, for a denial); edits of editable arguments, with an"
            " approval; grant: seconds for which the same call may also run without asking; seen:"
            " the request's fingerprint as you looked at it (409 arguments_edited if it was edited since)",
            approved=_Field(_BOOLEAN, _approved, required=True),
            comment=_Field(_STRING, _words(MAX_COMMENT)),
            edits=_Field(_OBJECT, _edits),
            grant=_Field({"type": "number", "exclusiveMinimum": 0, "maximum": MAX_GRANT}, _grant),
            seen=_Field({"type": "string", "pattern": "^[0-9a-f]{16}$"}, _seen),
        ),
    ),
    Operation(
        "POST",
        "/requests/{request_id}/answer",
        "answer",
        "Answer a question as the token's user",
        ApiChannel._answer,
        _ANSWERED,
        ("unknown_request", "not_an_approver", "already_decided", "not_decidable"),
        body=_Body(
            "AnswerBody",
            "The answer's text.",
            text=_Field(_STRING, _words(MAX_ANSWER, required=True), required=True),
        ),
    ),
    Operation(
        "POST",
        "/requests/{request_id}/cancel",
        "cancel",
        "Withdraw a pending request as the token's user (one of its approvers)",
        ApiChannel._cancel,
        _ANSWERED,
        ("unknown_request", "not_an_approver", "already_decided", "not_decidable"),
        body=_Body(
            "CancelBody",
            "Why, for the waiting call and the audit trail.",
            reason=_Field(_STRING, _words(MAX_COMMENT)),
        ),
    ),
    Operation(
        "GET",
        "/grants",
        "listGrants",
        "The live grants, and those waiting for more approvers (all=true: also the ended ones)",
        ApiChannel._grants,
        _envelope({"grants": _array(GRANT.ref)}),
        query=(
            _Parameter(
                "all", "also the expired, used-up and revoked grants", {"enum": ["true", "false"]}, _switch
            ),
        ),
    ),
    Operation(
        "POST",
        "/grants/{grant_id}/revoke",
        "revokeGrant",
        "Revoke a grant as the token's user (one who may approve its tool): its calls ask again",
        ApiChannel._revoke,
        _envelope({"grant": GRANT.ref}),
        ("unknown_grant", "not_an_approver"),
        body=_Body("RevokeBody", "Nothing: an empty body or {}."),
    ),
    Operation(
        "POST",
        "/grants/{grant_id}/confirm",
        "confirmGrant",
        "Confirm a grant that needs several approvers, as one more of them",
        ApiChannel._confirm,
        _envelope({"grant": GRANT.ref}),
        ("unknown_grant", "not_an_approver", "grant_not_live"),
        body=_Body("ConfirmBody", "Nothing: an empty body or {}."),
    ),
    Operation(
        "GET",
        "/audit",
        "audit",
        "The audit trail, oldest first",
        ApiChannel._audit,
        _envelope({"entries": _array(AUDIT_ENTRY.ref)}),
        query=(
            _Parameter("since", f"only the entries since: {_SINCE_TEXT}; default: all", _STRING, _since),
            _Parameter("request_id", "only the entries of this request (or grant)", _STRING, str),
        ),
    ),
    Operation(
        "GET",
        "/stats",
        "stats",
        "Per-tool stats of the requests made since a time (as humanlayer-async stats --json)",
        ApiChannel._stats,
        _envelope({"stats": _array(TOOL_STATS.ref)}),
        query=(_Parameter("since", f"{_SINCE_TEXT}; default: {DEFAULT_SINCE}", _STRING, _since),),
    ),
    Operation(
        "GET",
        "/openapi.json",
        "openapi",
        "This document",
        ApiChannel._openapi,
        {"type": "object", "description": "An OpenAPI 3.1 document"},
        authenticated=False,
    ),
)
"""Every route of the API, once: ``ApiChannel.routes`` serves them and ``openapi_document``
describes them."""


# -- the OpenAPI document --------------------------------------------------------------------


def _error_response(codes: Sequence[Code]) -> dict[str, Any]:
    return {
        "description": "; ".join(f"{code}: {ERRORS[code][1]}" for code in codes),
        "content": {
            "application/json": {
                "schema": {
                    "allOf": [
                        {"$ref": "#/components/schemas/Error"},
                        {"properties": {"error": {"properties": {"code": {"enum": list(codes)}}}}},
                    ]
                }
            }
        },
    }


def _describe(operation: Operation) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": _STRING}
        for name in re.findall(r"{(\w+)}", operation.path)
    ]
    parameters += [
        {"name": p.name, "in": "query", "required": False, "description": p.description, "schema": p.schema}
        for p in operation.query
    ]
    described: dict[str, Any] = {"operationId": operation.operation_id, "summary": operation.summary}
    if parameters:
        described["parameters"] = parameters
    if operation.body is not None:
        described["requestBody"] = {
            "required": any(field.required for field in operation.body.fields.values()),
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{operation.body.name}"}}
            },
        }
    responses: dict[str, Any] = {
        "200": {"description": "OK", "content": {"application/json": {"schema": operation.answer}}}
    }
    by_status: dict[int, list[Code]] = {}
    for code in operation.codes:
        by_status.setdefault(ERRORS[code][0], []).append(code)
    for status, codes in sorted(by_status.items()):
        responses[str(status)] = _error_response(codes)
    described["responses"] = responses
    if not operation.authenticated:
        described["security"] = []
    return described


@functools.cache
def _document() -> bytes:
    paths: dict[str, dict[str, Any]] = {}
    for operation in OPERATIONS:
        paths.setdefault(PREFIX + operation.path, {})[operation.method.lower()] = _describe(operation)
    schemas: dict[str, Any] = {shape.name: shape.schema() for shape in SHAPES}
    schemas["Error"] = _ERROR
    for operation in OPERATIONS:
        if operation.body is not None:
            schemas[operation.body.name] = operation.body.schema()
    codes = "\n".join(f"| `{code}` | {status} | {what} |" for code, (status, what) in ERRORS.items())
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "humanlayer-async API",
            "version": __version__,
            "description": (
                "Decide the approval requests of a humanlayer-async HumanLayer from any client. Send"
                " `Authorization: Bearer <token>`: decisions are made as the token's user. Every"
                ' refusal is `{"error": {"code", "message"}}`:\n\n| code | status | meaning |\n'
                f"|---|---|---|\n{codes}"
            ),
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        },
    }
    return json.dumps(document, indent=2).encode()


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API (what ``GET /api/v1/openapi.json`` serves), made
    from ``OPERATIONS``: to generate a client, or to check one."""
    document: dict[str, Any] = json.loads(_document())
    return document
