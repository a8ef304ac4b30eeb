"""How a call's arguments are shown to people: masking secrets, then short readable text.

``render`` hooks run once per request, before the request is stored, sent or logged,
so a masked value never leaves the process that made the call.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._models import ApprovalRequest, Decision

__all__ = [
    "MASK",
    "Render",
    "describe_decision",
    "format_kwargs",
    "format_value",
    "mask_secrets",
    "summarize",
]

Render = Callable[[Mapping[str, Any]], Mapping[str, Any]]
"""A hook that turns a call's bound arguments into what approvers, stores and logs see."""

MASK = "***"

_SECRET_NAME = re.compile(
    r"(?:^|_)(?:password|passwd|passphrase|pwd|secret|token|key|apikey|credentials?)(?:$|_)",
    re.IGNORECASE,
)

_repr = reprlib.Repr()
_repr.maxstring = 200
_repr.maxother = 200
_repr.maxlist = _repr.maxtuple = _repr.maxset = _repr.maxdict = 10
_repr.maxlevel = 3


def mask_secrets(kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
    """The default ``render``: arguments named like a password, token, secret or key become ``***``.

    A name matches when one of its ``_``-separated words is such a word, so ``api_key``
    and ``db_password`` are masked and ``monkey`` or ``tokenizer`` are not.
    """
    return {name: MASK if _SECRET_NAME.search(name) else value for name, value in kwargs.items()}


def format_value(value: Any, limit: int = 200) -> str:
    """One argument as short, readable text: strings as they are, the rest as a repr."""
    text = value if isinstance(value, str) else _repr.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_kwargs(kwargs: Mapping[str, Any], limit: int = 200) -> str:
    """A call's arguments as ``name=value, ...`` for one-line summaries."""
    return ", ".join(f"{name}={_repr.repr(value)[:limit]}" for name, value in kwargs.items())


def summarize(request: ApprovalRequest) -> str:
    """One line: the call, or the question."""
    if request.kind == "question":
        return f"question: {format_value(request.message or '', 120)}"
    return f"{request.function}({format_kwargs(request.kwargs, 60)})"


def describe_decision(decision: Decision) -> str:
    """``approved by alice via web at 12:03:11 UTC (comment)``."""
    who = f" by {decision.by}" if decision.by else ""
    note = f" ({decision.comment})" if decision.comment else ""
    answer = f": {format_value(decision.answer, 120)}" if decision.answer is not None else ""
    verb = "answered" if decision.answer is not None else decision.status.value.replace("_", " ")
    return f"{verb}{who} via {decision.via} at {decision.decided_at:%H:%M:%S} UTC{answer}{note}"
