"""How a call is shown to people: secrets masked, every character visible, shortening said aloud.

``render`` hooks run once per request, before the request is stored, sent or logged,
so a masked value never leaves the process that made the call. Everything a surface
shows comes from here: ``format_value`` and ``summarize`` for short views, which say
where they shorten (``… 1,204 more characters``), and ``full_call`` for the whole call,
untruncated, in the JSON form its arguments' digest is taken over. Control and bidi
characters never reach a person raw: ``visible`` spells them out (``\\x1b``, ``\\u202e``),
and each medium (HTML, Slack mrkdwn) adds only its own escaping on top.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pprint
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._codec import to_json
from ._exceptions import StoreError

if TYPE_CHECKING:
    from ._models import ApprovalRequest, Decision, Vote

__all__ = [
    "MASK",
    "Render",
    "describe_decision",
    "describe_votes",
    "format_kwargs",
    "format_value",
    "full_call",
    "is_secret_name",
    "mask_secrets",
    "masked",
    "shorten",
    "shorten_kwargs",
    "summarize",
    "visible",
]

Render = Callable[[Mapping[str, Any]], Mapping[str, Any]]
"""A hook that turns a call's bound arguments into what approvers, stores and logs see."""

MASK = "***"

# -- secrets -------------------------------------------------------------------------

_SECRET_WORDS = frozenset(
    {
        "apikey",
        "auth",
        "authorization",
        "bearer",
        "cookie",
        "credential",
        "passphrase",
        "passwd",
        "password",
        "privatekey",
        "pwd",
        "secret",
        "token",
    }
)
_KEY_OWNERS = frozenset(
    {"access", "api", "client", "encryption", "master", "private", "secret", "signing", "ssh"}
)
"""Words that make a following ``key`` a secret (``api_key``); a bare ``key`` is a name, not a secret."""

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[^A-Za-z0-9]+")


def _words(name: str) -> list[str]:
    """``accessToken``, ``x-api-key``, ``DB_PASSWORDS`` as lowercase singular words."""
    words = [w.lower() for w in _SEPARATORS.split(_CAMEL.sub("_", name)) if w]
    return [w[:-1] if w.endswith("s") and w[:-1] in _SECRET_WORDS | {"key"} else w for w in words]


@functools.lru_cache(maxsize=4096)  # names repeat from call to call: each is split once
def is_secret_name(name: str) -> bool:
    """Whether an argument or field named ``name`` holds a secret.

    A name is split into words (``_``, ``-``, spaces and camelCase), plurals made singular;
    it is a secret when a word is one of password, passwd, passphrase, pwd, secret, token,
    credential, auth, authorization, bearer, cookie, apikey, or when ``key`` follows api,
    access, client, private, secret, signing, encryption, master or ssh. So ``api_key``,
    ``accessToken``, ``x-api-key``, ``db_password`` and ``Cookie`` are secrets, and ``key``,
    ``monkey``, ``tokenizer`` and ``author`` are not.
    """
    words = _words(name)
    for index, word in enumerate(words):
        if word in _SECRET_WORDS:
            return True
        if word == "key" and index and words[index - 1] in _KEY_OWNERS:
            return True
        if index and words[index - 1] + word in _SECRET_WORDS:  # "pass word", "api key" run together
            return True
    return False


def mask_secrets(kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
    """The default ``render``: every value under a secret name becomes ``***``, at any depth.

    Top-level arguments, keys of nested mappings (``headers={"Authorization": ...}``) and
    fields of dataclasses and pydantic models inside lists, tuples and mappings are masked
    when ``is_secret_name`` says so. A container with nothing to mask is kept as it is; one
    with a masked field becomes a plain ``dict`` or ``list``.
    """
    return {
        name: MASK if is_secret_name(name) else value if type(value) in _SCALARS else _masked(value, set())
        for name, value in kwargs.items()
    }


_SCALARS = frozenset({str, bytes, int, float, bool, type(None)})
"""Types with nothing inside to mask: kept as they are without a walk."""


def _fields(value: Any) -> dict[str, Any] | None:
    """A dataclass instance's or pydantic model's fields, ``None`` for anything else."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    model_fields = getattr(type(value), "model_fields", None)
    if isinstance(model_fields, Mapping) and not isinstance(value, type):
        return {name: getattr(value, name, None) for name in model_fields}
    return None


def _masked(value: Any, path: set[int]) -> Any:
    """``value`` with secrets masked; the same object when there is nothing to mask."""
    if isinstance(value, str | bytes | int | float | None) or id(value) in path:
        return value
    fields = value if isinstance(value, Mapping) else _fields(value)
    path.add(id(value))
    try:
        if fields is not None:
            masked = {
                key: MASK if isinstance(key, str) and is_secret_name(key) else _masked(item, path)
                for key, item in fields.items()
            }
            changed = any(masked[key] is not item for key, item in fields.items())
            return masked if changed else value
        if isinstance(value, list | tuple):
            items = [_masked(item, path) for item in value]
            if any(new is not old for new, old in zip(items, value, strict=True)):
                return items if isinstance(value, list) else tuple(items)
        return value
    finally:
        path.discard(id(value))


# -- characters ---------------------------------------------------------------------

_INVISIBLE = re.compile(
    "[\x00-\x1f\x7f-\x9f"  # C0 controls (newline and tab too), DEL, C1 controls
    "\u00ad\u034f\u061c\u115f\u1160\u180e\u200b\u200c\u200e\u200f"  # soft hyphen, fillers, marks
    "\u2028-\u202e\u2060-\u2064\u2066-\u206f"  # separators, bidi embeddings and isolates
    "\u3164\ufeff\uffa0\ufff9-\ufffb"  # Hangul fillers, BOM, interlinear annotations
    "\U000e0000-\U000e007f]"  # tag characters: invisible text that models still read
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _spell(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def masked(value: Any) -> bool:
    """Whether ``value`` is, or holds at any depth, the ``render`` hook's mask."""
    if value == MASK:
        return True
    if isinstance(value, Mapping):
        return any(masked(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(masked(item) for item in value)
    return False


def visible(text: str) -> str:
    """``text`` with every control, bidi and invisible formatting character spelled out.

    C0 controls (newline and tab included), DEL, C1 controls, the bidi controls
    (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C), line and paragraph separators,
    zero-width and filler characters, the soft hyphen and the invisible tag characters
    (U+E0000-U+E007F) become ``\\x1b``, ``\\n``, ``\\u202e``, ``\\U000e0041``... Nothing can
    then move the cursor, redraw a terminal, reorder text or hide it. The zero-width joiner
    stays: it joins emoji and hides nothing.
    Idempotent: its output contains none of those characters.
    """
    return _INVISIBLE.sub(_spell, text)


# -- short views ----------------------------------------------------------------------

_ITEMS = 10
"""Items of a list, tuple, set or mapping shown before ``… N more items``."""
_DEPTH = 3
"""Levels of nesting shown before ``[… N items nested deeper]``."""
_INNER = 200
"""Characters of a string (or repr) inside a container shown before ``… N more characters``."""


_PLURALS = {"character": "characters", "item": "items", "entry": "entries"}


def _more(count: int, what: str) -> str:
    """``… 1,204 more characters``: what a short view left out, where it left it out."""
    return f"… {count:,} more {what if count == 1 else _PLURALS[what]}"


class _Shortener:
    """Builds one short text, remembering whether it left anything out."""

    def __init__(self) -> None:
        self.cut = False

    def string(self, value: str | bytes | bytearray, limit: int, *, quote: bool) -> str:
        shown = value[:limit]
        text = repr(shown) if quote or not isinstance(shown, str) else shown
        return visible(text) + self.note(len(value) - limit, "character")

    def clip(self, text: str, limit: int) -> str:
        return visible(text[:limit]) + self.note(len(text) - limit, "character")

    def note(self, count: int, what: str) -> str:
        if count <= 0:
            return ""
        self.cut = True
        return _more(count, what)

    def text(self, value: Any, level: int) -> str:
        if isinstance(value, str | bytes | bytearray):
            return self.string(value, _INNER, quote=True)
        fields = value if isinstance(value, Mapping) else _fields(value)
        if fields is not None:
            if level > _DEPTH:
                return self.deeper(len(fields), "{}")
            mapping = isinstance(value, Mapping)
            shown = [
                f"{self.text(key, level + 1)}: {self.text(item, level + 1)}"
                if mapping
                else f"{visible(key)}={self.text(item, level + 1)}"
                for key, item in list(fields.items())[:_ITEMS]
            ]
            if len(fields) > _ITEMS:
                shown.append(self.note(len(fields) - _ITEMS, "entry"))
            body = ", ".join(shown)
            return f"{{{body}}}" if mapping else f"{visible(type(value).__name__)}({body})"
        if isinstance(value, list | tuple | set | frozenset):
            brackets = {list: "[]", tuple: "()"}.get(type(value), "{}")
            if level > _DEPTH:
                return self.deeper(len(value), brackets)
            items = sorted(value, key=repr) if isinstance(value, set | frozenset) else list(value)
            shown = [self.text(item, level + 1) for item in items[:_ITEMS]]
            if len(items) > _ITEMS:
                shown.append(self.note(len(items) - _ITEMS, "item"))
            return f"{brackets[0]}{', '.join(shown)}{brackets[1]}"
        try:
            text = repr(value)
        except Exception:
            text = f"<{type(value).__name__} object>"
        return self.clip(text, _INNER)

    def deeper(self, count: int, brackets: str) -> str:
        self.cut = True
        return f"{brackets[0]}… {count:,} {'item' if count == 1 else 'items'} nested deeper{brackets[1]}"


def shorten(value: Any, limit: int = 200, *, quote: bool = False) -> tuple[str, bool]:
    """``format_value``'s text, and whether it left anything out.

    ``quote``: show a string as a quoted repr (as in ``name='value'``) rather than as it is.
    """
    shortener = _Shortener()
    if isinstance(value, str):
        return shortener.string(value, limit, quote=quote), shortener.cut
    return shortener.clip(shortener.text(value, 1), limit), shortener.cut


def format_value(value: Any, limit: int = 200) -> str:
    """One argument as short, one-line, visible text; says so where it shortens.

    Strings appear as they are, anything else repr-like. At most ``limit`` characters of
    the text are shown, then ``… N more characters``; lists, tuples, sets and mappings show
    10 items, then ``… N more items``; nesting deeper than 3 levels shows as
    ``[… N items nested deeper]``. The whole value is in ``full_call``.
    """
    return shorten(value, limit)[0]


def shorten_kwargs(kwargs: Mapping[str, Any], limit: int = 200) -> tuple[str, bool]:
    """``format_kwargs``'s text, and whether it left anything out."""
    shown = {name: shorten(value, limit, quote=True) for name, value in kwargs.items()}
    text = ", ".join(f"{visible(name)}={value}" for name, (value, _) in shown.items())
    return text, any(cut for _, cut in shown.values())


def format_kwargs(kwargs: Mapping[str, Any], limit: int = 200) -> str:
    """A call's arguments as ``name=value, ...`` in one line, each value as ``format_value`` shows it."""
    return shorten_kwargs(kwargs, limit)[0]


def summarize(request: ApprovalRequest) -> str:
    """One line: the call, or the question; says where it shortens."""
    if request.kind == "question":
        return f"question: {format_value(request.message or '', 120)}"
    return f"{visible(request.function)}({format_kwargs(request.kwargs, 60)})"


def describe_votes(votes: Sequence[Vote], needed: int) -> str:
    """``1 of 2 approvals: alice@company.com``, every name visible."""
    approvals = [visible(vote.by) for vote in votes if vote.approved]
    names = f": {', '.join(approvals)}" if approvals else ""
    return f"{len(approvals)} of {needed} approvals{names}"


def describe_decision(decision: Decision) -> str:
    """``approved by alice [with amount=5000] via web at 12:03:11 UTC (comment)``, every part visible."""
    who = f" by {visible(decision.by)}" if decision.by else ""
    note = f" ({visible(decision.comment)})" if decision.comment else ""
    answer = f": {format_value(decision.answer, 120)}" if decision.answer is not None else ""
    verb = "answered" if decision.answer is not None else decision.status.value.replace("_", " ")
    changed = f" with {format_kwargs(decision.edits, 60)}" if decision.edits else ""
    when = f"{decision.decided_at:%H:%M:%S} UTC"
    return f"{verb}{who}{changed} via {visible(decision.via)} at {when}{answer}{note}"


# -- the full view ------------------------------------------------------------------


def _full_value(value: Any, where: str) -> str:
    """``value`` untruncated: indented JSON (what the digest covers), or its repr without a JSON form."""
    try:
        text = json.dumps(to_json(value, where), indent=2, sort_keys=True, ensure_ascii=False)
    except StoreError:
        text = pprint.pformat(value, width=100, sort_dicts=True) + "  (no JSON form: shown as repr)"
    # JSON and repr escape newlines inside strings: the newlines left are layout only.
    return "\n".join(visible(line) for line in text.split("\n"))


def _section(title: str, values: Mapping[str, Any]) -> list[str]:
    lines = [title]
    for name, value in values.items():
        shown = _full_value(value, f"{title.split()[0].lower()} {name!r}").replace("\n", "\n    ")
        lines.append(f"  {visible(name)} = {shown}")
    return lines


def full_call(request: ApprovalRequest) -> str:
    """The whole request as plain text, untruncated: what every surface's full view shows.

    The function (or the question), the request id, the docstring, every argument and
    context value as indented JSON with sorted keys (the arguments' digest is the SHA-256
    of the same JSON, written compactly), the approvers, the expiry and the digest. Every
    control or bidi character inside a value is spelled out by ``visible``; the newlines
    left are layout only.
    """
    lines = [
        f"{'question' if request.kind == 'question' else visible(request.function)}  (request {request.id})"
    ]
    if request.kind == "question":
        lines += ["", "Question:", *(f"  {visible(line)}" for line in (request.message or "").split("\n"))]
    else:
        if request.doc:
            lines += ["", *(f"  {visible(line)}" for line in request.doc.split("\n"))]
        digest = f" (SHA-256 of their JSON: {request.digest})" if request.digest else ""
        lines += (
            ["", *_section(f"Arguments{digest}:", request.kwargs)]
            if request.kwargs
            else ["", "No arguments."]
        )
    if request.context:
        lines += ["", *_section("Context:", request.context)]
    lines.append("")
    if request.approvers:
        lines.append(f"Approvers: {', '.join(visible(a) for a in request.approvers)}")
    if request.approvals > 1:
        lines.append(
            f"Needs {request.approvals} approvals; so far {describe_votes(request.votes, request.approvals)}"
        )
    lines.append(f"Expires: {request.expires_at:%Y-%m-%d %H:%M:%S} UTC")
    return "\n".join(lines) + "\n"
