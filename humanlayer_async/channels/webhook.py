"""WebhookChannel: each request as a signed JSON POST to a URL; decisions from signed, single-use links.

Out: a POST of the request (``approval.requested``), of its count while it waits for more
approvals (``approval.voted``), of each reminder (``approval.reminded``) and of its outcome
(``approval.decided``), signed with ``X-HumanLayer-Timestamp`` and ``X-HumanLayer-Signature:
sha256=<hex HMAC-SHA256 of "{timestamp}.{body}">``, retried on 5xx, 429 and network errors
(after ``Retry-After`` when the receiver sends one). The body is our JSON, or, with
``payload_format``, a Microsoft Teams Adaptive Card or a Discord message built from it.

In: the links in a private receiver's payloads. Routes, under ``base_path`` (``/webhook``):

- ``GET /webhook/links?token=…``  the confirmation page: the whole call, and a button.
  Opening a link decides nothing (mail and chat scanners open links).
- ``POST /webhook/links``  the button (the token in the form): decides once, as the link's
  approver, through the ``Decider``.

The token is in the query, not the path: the listener logs a refused request's path.

A token names the request, the approver, the answer (approve, deny or answer), the call's
fingerprint and the request's expiry, under an HMAC keyed by ``token_secret`` (never the
webhook's ``secret``, which receivers hold). Its single use is claimed in the store, so it
holds across a fleet. A forged, altered, expired or used link gets a 4xx page and a
``listener.refused`` line; tokens never appear in logs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import math
import os
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any, Literal, get_args
from urllib.parse import parse_qs

import anyio
import httpx
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from .. import _threads
from .._audit import logger
from .._exceptions import (
    ArgumentsEdited,
    ChannelError,
    ConfigurationError,
    HumanLayerError,
    NotAnApprover,
    StoreError,
    UnknownRequest,
)
from .._models import ApprovalRequest, Decision, Status, Vote, same_name
from .._refused import Refused
from .._render import describe_decision, describe_votes, full_call, shorten, summarize, visible
from .._retry import Backoff, retry_after
from ._web_page import message_page, spaces
from .base import Answered, BaseChannel, Decider, check_label

__all__ = ["PayloadFormat", "WebhookChannel", "WebhookEvent"]

PayloadFormat = Literal["json", "teams", "discord"]
"""What a delivery's body is: our JSON, a Teams Adaptive Card message, or a Discord message."""

WebhookEvent = Literal["approval.requested", "approval.voted", "approval.reminded", "approval.decided"]
"""A delivery's ``event``: a new request, a vote counted, a reminder, the outcome."""

Action = Literal["approve", "deny", "answer"]

MIN_SECRET = 16
"""Characters (or bytes) of a webhook secret at least."""
MAX_COMMENT = 2000
MAX_ANSWER = 10000
CLOCK_SKEW = 300.0
"""Seconds a used link's claim is kept past the request's expiry: a fleet's clocks may disagree."""

_IN_FLIGHT = 8  # deliveries at once; the others wait (a receiver that throttles holds the queue)
_UPDATE_WINDOW = 300.0  # seconds an outcome, a count or a reminder may keep retrying
_SHOWN = 1000  # characters of a value in the JSON payload, as the web console's cards show it
_CARD_VALUE = 300  # characters of a value on a Teams card or in a Discord message
_CARD_ITEMS = 20  # arguments (and context values) a card or message lists
_CARD_TEXT = 1500  # characters of a question on a Teams card or in a Discord message
_DISCORD_TEXT = 4096  # characters of a Discord embed's description
_MAX_TOKEN = 2048  # characters: anything longer is no token of ours
_DOMAIN = b"humanlayer-async/webhook-link\x00"
_MAC_BYTES = 16
_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)+")
_FINGERPRINT = re.compile(r"[0-9a-f]{16}")
_ACTIONS: tuple[Action, ...] = get_args(Action)
_VERBS = {"approve": "Approve", "deny": "Deny", "answer": "Answer"}
_OUTCOMES = {
    Status.APPROVED: "Approved",
    Status.DENIED: "Denied",
    Status.TIMED_OUT: "Timed out",
    Status.CANCELLED: "Cancelled",
    Status.FAILED: "Failed",
}
_STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;max-width:50rem;margin:2rem auto;padding:0 1rem}"
    "pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f3f3f3;padding:1rem}"
    ".spaces{background:#ffe9a8}textarea{width:100%;box-sizing:border-box}"
    "button{font-size:1.1rem;padding:.5rem 1.5rem;margin-top:1rem}"
)
_SECURITY_HEADERS = {
    # The web console's, with the page's one inline style allowed by its hash.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'sha256-"
        + base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
        + "'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # the token is in the page's URL
    "Cache-Control": "no-store",
}


@dataclass(frozen=True, slots=True)
class _Link:
    """What a link's token says: who may give which answer to which version of which call,
    until when (epoch seconds)."""

    request_id: str
    approver: str
    action: Action
    fingerprint: str
    expires: int

    @property
    def claim(self) -> str:
        """Its store key: an approver's links to one version of a call work once, together."""
        who = hashlib.sha256(self.approver.encode()).hexdigest()[:32]
        return f"webhook-link:{self.request_id}:{who}:{self.fingerprint}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class _Tokens:
    """Signs and reads link tokens: ``<fields>.<mac>`` in base64url, nothing read before the
    MAC verifies. ``scope`` (the channel's path) keys them apart from another channel's."""

    def __init__(self, secret: bytes, scope: str) -> None:
        self._key = hmac.new(secret, _DOMAIN + scope.encode(), hashlib.sha256).digest()

    def __repr__(self) -> str:
        return "_Tokens(secret=***)"

    def _mac(self, signed: str) -> bytes:
        return hmac.new(self._key, signed.encode(), hashlib.sha256).digest()[:_MAC_BYTES]

    def make(self, link: _Link) -> str:
        fields = [link.request_id, link.approver, link.action, link.fingerprint, link.expires]
        signed = _b64(json.dumps(fields, separators=(",", ":")).encode())
        return f"{signed}.{_b64(self._mac(signed))}"

    def read(self, token: str) -> _Link | None:
        """The link when ``token`` is one signed with this key (expired or not), else ``None``."""
        signed, dot, mac = token.partition(".")
        if not dot or len(token) > _MAX_TOKEN:
            return None
        try:
            valid = hmac.compare_digest(_unb64(mac), self._mac(signed))
        except (binascii.Error, ValueError):  # not base64, not ASCII
            return None
        if not valid:
            return None
        request_id, approver, action, fingerprint, expires = json.loads(_unb64(signed))
        return _Link(request_id, approver, action, fingerprint, expires)


class _Transport(httpx.AsyncBaseTransport):
    """httpx's transport, with host names looked up on the library's own threads.

    httpx resolves through ``loop.getaddrinfo``, in the application's default executor,
    which sync tools waiting for a human may hold whole (see ``humanlayer_async._threads``).
    So the host is resolved here and each address tried in turn; the request keeps its
    ``Host`` header, and TLS its server name (``sni_hostname``), so certificates are checked
    against the host name.
    """

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if _is_address(host):
            return await self._inner.handle_async_request(request)
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        try:
            found = await _threads.getaddrinfo(host, port)
        except OSError as exc:
            raise httpx.ConnectError(f"cannot resolve the host: {exc}", request=request) from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
        request.extensions = {**request.extensions, "sni_hostname": host}
        failure: httpx.ConnectError | None = None
        for address in addresses:
            request.url = request.url.copy_with(host=address)
            try:
                return await self._inner.handle_async_request(request)
            except httpx.ConnectError as exc:
                failure = exc
        raise failure or httpx.ConnectError("the host has no address", request=request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _secret(value: str | bytes | None, what: str) -> bytes | None:
    if value is None:
        return None
    raw = value.encode() if isinstance(value, str) else value
    if not isinstance(raw, bytes) or len(raw) < MIN_SECRET:
        raise ConfigurationError(f"{what} must be a string of at least {MIN_SECRET} characters")
    return raw


def _http_url(value: str, what: str) -> str:
    """``value`` if it is an absolute http(s) URL (without a trailing slash for a base)."""
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ConfigurationError(f"{what} must be an http:// or https:// URL") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigurationError(f"{what} must be an http:// or https:// URL")
    return value


def _base(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    _http_url(value, what)
    if "?" in value or "#" in value:
        raise ConfigurationError(f"{what} is a base URL: no query or fragment")
    return value.rstrip("/")


def _approvers(approvers: str | Sequence[str] | None) -> tuple[str, ...]:
    names = (approvers,) if isinstance(approvers, str) else tuple(approvers or ())
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(f"approvers must be non-empty strings, not {name!r}")
    return names


def _base_path(base_path: str | None, label: str) -> str:
    """The links' path: ``base_path``, else ``/webhook`` (``/webhook/<label>`` for a labelled
    channel, so that several channels serve their links side by side)."""
    if base_path is None:
        base_path = "/webhook" if label == WebhookChannel.name else f"/webhook/{label}"
        if not _PATH.fullmatch(base_path):
            raise ConfigurationError(
                f"the label {label!r} cannot name a path: pass base_path= (such as /webhook/ops)"
            )
    stripped = base_path.rstrip("/")
    if not _PATH.fullmatch(stripped):
        raise ConfigurationError(f'base_path must be a path such as "/webhook", not {base_path!r}')
    return stripped


def _lines(text: str) -> str:
    """Caller text with its line breaks kept, every other control character spelled out."""
    return "\n".join(visible(line) for line in text.split("\n"))


def _question(request: ApprovalRequest, limit: int) -> str:
    """A question's text for a card or message: its first ``limit`` characters, line breaks
    kept, saying how many more there are."""
    text = request.message or ""
    more = len(text) - limit
    return _lines(text[:limit]) + (f" … {more:,} more characters" if more > 0 else "")


def _shown(values: Mapping[str, Any], limit: int) -> tuple[dict[str, str], bool]:
    """Each value as the other channels show it (visible, shortened saying where); whether
    any was shortened."""
    shown, cut = {}, False
    for name, value in values.items():
        text, shortened = shorten(value, limit)
        shown[visible(name)] = text
        cut = cut or shortened
    return shown, cut


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat()


def _vote_json(vote: Vote) -> dict[str, Any]:
    return {
        "by": vote.by,
        "approved": vote.approved,
        "via": vote.via,
        "comment": None if vote.comment is None else _lines(vote.comment),
        "at": _iso(vote.at),
    }


def _decision_json(decision: Decision) -> dict[str, Any]:
    return {
        "status": decision.status.value,
        "approved": decision.approved,
        "by": decision.by,
        "user": decision.user,
        "via": decision.via,
        "comment": None if decision.comment is None else _lines(decision.comment),
        "answer": None if decision.answer is None else _lines(decision.answer),
        "edits": None if not decision.edits else _shown(decision.edits, _SHOWN)[0],
        "decided_at": _iso(decision.decided_at),
        "votes": [_vote_json(vote) for vote in decision.votes],  # with several approvals: who gave them
        "description": describe_decision(decision),
    }


def _request_json(request: ApprovalRequest) -> dict[str, Any]:
    """The request as receivers get it: its arguments and context as the other channels show
    them (secrets masked, every character visible, shortened saying where)."""
    arguments, cut_arguments = _shown(request.kwargs, _SHOWN)
    context, cut_context = _shown(request.context, _SHOWN)
    return {
        "id": request.id,
        "kind": request.kind,
        "function": visible(request.function),
        "tool": request.tool,
        "doc": visible(request.doc.splitlines()[0]) if request.doc else None,
        "message": None if request.message is None else _lines(request.message),
        "arguments": arguments,
        "context": context,
        "shortened": cut_arguments or cut_context,
        "summary": summarize(request),
        "run_id": request.run_id,
        "requested_by": request.requested_by,
        "approvers": list(request.approvers),
        "approvals": request.approvals,
        "votes": [_vote_json(vote) for vote in request.votes],
        "created_at": _iso(request.created_at),
        "expires_at": _iso(request.expires_at),
        "fingerprint": request.fingerprint,
        "status": request.status.value,
        "decision": None if request.decision is None else _decision_json(request.decision),
    }


@dataclass(frozen=True, slots=True)
class _Delivery:
    """One delivery before it takes its receiver's format."""

    id: str
    event: WebhookEvent
    request: ApprovalRequest
    links: tuple[tuple[str, Mapping[Action, str]], ...]  # (approver, action → URL)
    console: str | None

    def json(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "delivery": self.id,
            "sent_at": _iso(datetime.now(UTC)),
            "request": _request_json(self.request),
            "links": [{"approver": approver, **urls} for approver, urls in self.links],
            "console_url": self.console,
        }

    def heading(self) -> str:
        """What happened, in a few words of our own (no caller text)."""
        request = self.request
        if request.decision is not None:
            return _OUTCOMES.get(request.decision.status, "Decided")
        what = "Question" if request.kind == "question" else "Approval needed"
        if self.event == "approval.voted":
            return f"{what}: vote counted"
        return f"Reminder: {what.lower()}" if self.event == "approval.reminded" else what

    def facts(self) -> list[str]:
        """Where it stands, one line each: expiry, approvers, votes, outcome (visible)."""
        request = self.request
        lines = []
        if request.decision is not None:
            said = describe_decision(request.decision)
            lines.append(said[:1].upper() + said[1:])
        else:
            lines.append(f"Expires {request.expires_at:%Y-%m-%d %H:%M} UTC")
        if request.approvers:
            lines.append(f"Approvers: {', '.join(visible(a) for a in request.approvers)}")
        if request.approvals > 1 and request.decision is None:
            lines.append(f"Votes: {describe_votes(request.votes, request.approvals)}")
        return lines


def _listed(values: Mapping[str, Any]) -> tuple[list[tuple[str, str]], int]:
    """The first ``_CARD_ITEMS`` values as (name, short text), and how many are left out."""
    items = [
        (visible(name), shorten(value, _CARD_VALUE)[0]) for name, value in list(values.items())[:_CARD_ITEMS]
    ]
    return items, max(0, len(values) - _CARD_ITEMS)


# -- Microsoft Teams: an Adaptive Card for a Workflows webhook ------------------------------


def _run(text: str, **style: str | bool) -> dict[str, Any]:
    """A TextRun: plain text, never read as Markdown, so caller text cannot make links."""
    return {"type": "TextRun", "text": text, **style}


def _rich(*runs: dict[str, Any]) -> dict[str, Any]:
    return {"type": "RichTextBlock", "inlines": list(runs)}


def _card_values(title: str, values: Mapping[str, Any]) -> list[dict[str, Any]]:
    if not values:
        return []
    items, left_out = _listed(values)
    blocks: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": title, "weight": "Bolder", "spacing": "Medium"}
    ]
    blocks += [_rich(_run(f"{name} = ", weight="Bolder"), _run(text)) for name, text in items]
    if left_out:
        blocks.append(
            _rich(_run(f"… {left_out:,} more (the whole call is on the links' page)", isSubtle=True))
        )
    return blocks


def _teams(delivery: _Delivery) -> dict[str, Any]:
    """The delivery as the body a Teams Workflows webhook ("When a Teams webhook request is
    received") posts: a message with one Adaptive Card (version 1.4), its links as
    ``Action.OpenUrl`` buttons. Caller text is only ever in TextRuns."""
    request = delivery.request
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": delivery.heading(), "weight": "Bolder", "size": "Medium", "wrap": True}
    ]
    if request.kind == "question":
        body.append(_rich(_run(_question(request, _CARD_TEXT))))
    else:
        body.append(_rich(_run(visible(request.function), fontType="Monospace", weight="Bolder")))
        body += _card_values("Arguments", request.kwargs)
    body += _card_values("Context", request.context)
    body += [_rich(_run(fact, isSubtle=True)) for fact in delivery.facts()]
    several = len(delivery.links) > 1
    actions = [
        {
            "type": "Action.OpenUrl",
            "title": f"{_VERBS[action]} as {visible(approver)}" if several else _VERBS[action],
            "url": url,
        }
        for approver, urls in delivery.links
        for action, url in urls.items()
    ]
    if delivery.console is not None:
        actions.append(
            {"type": "Action.OpenUrl", "title": "Open in the approvals console", "url": delivery.console}
        )
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    }
    if actions:
        card["actions"] = actions
    attachment = {
        "contentType": "application/vnd.microsoft.card.adaptive",
        "contentUrl": None,
        "content": card,
    }
    return {"type": "message", "attachments": [attachment]}


# -- Discord: a message with one embed ----------------------------------------------------

_DISCORD_MARKUP = re.compile(r"([\\*_~`|>#\-\[\]()<@:.!])")


def _discord_text(text: str) -> str:
    """Caller text for Discord Markdown: visible, every character that could format, link or
    mention backslash-escaped."""
    return _DISCORD_MARKUP.sub(r"\\\1", visible(text))


def _discord(delivery: _Delivery) -> dict[str, Any]:
    """The delivery as a Discord webhook message: one embed whose description has the links
    first, then the call; it mentions nobody (``allowed_mentions``)."""
    request = delivery.request
    several = len(delivery.links) > 1
    lines = [
        " · ".join(f"[{_VERBS[action]}]({url})" for action, url in urls.items())
        + (f" as {_discord_text(approver)}" if several else "")
        for approver, urls in delivery.links
    ]
    if delivery.console is not None:
        lines.append(f"[Open in the approvals console]({delivery.console})")
    if request.kind == "question":
        lines += [_discord_text(line) for line in _question(request, _CARD_TEXT).split("\n")]
    else:
        lines.append(f"**{_discord_text(request.function)}**")
    for title, values in (
        ("Arguments", request.kwargs if request.kind == "approval" else {}),
        ("Context", request.context),
    ):
        items, left_out = _listed(values)
        if items:
            lines.append(f"__{title}__")
            lines += [f"**{_discord_text(name)}**: {_discord_text(text)}" for name, text in items]
        if left_out:
            lines.append(f"… {left_out:,} more (the whole call is on the links' page)")
    lines += [_discord_text(fact) for fact in delivery.facts()]
    colour = {Status.PENDING: 0xF0B232, Status.APPROVED: 0x2ECC71, Status.DENIED: 0xE74C3C}
    embed = {
        "title": delivery.heading(),
        "description": _fitted(lines, _DISCORD_TEXT),
        "color": colour.get(request.status, 0x95A5A6),
        "timestamp": _iso(datetime.now(UTC)),
    }
    return {"allowed_mentions": {"parse": []}, "embeds": [embed]}


def _fitted(lines: Sequence[str], limit: int) -> str:
    """``lines``, or as many whole ones as fit in ``limit`` characters with a last line saying
    how many did not."""
    text = "\n".join(lines)
    if len(text) <= limit:
        return text
    kept: list[str] = []
    size = 0
    for index, line in enumerate(lines):
        note = f"… {len(lines) - index:,} more lines"
        if size + len(line) + 1 + len(note) > limit:
            return "\n".join([*kept, note])
        kept.append(line)
        size += len(line) + 1
    return text


_FORMATS = {"teams": _teams, "discord": _discord}


# -- the confirmation page ----------------------------------------------------------------


def _page(title: str, main: str) -> str:
    return f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{_STYLE}</style></head>
<body><main><h1>{escape(title)}</h1>
{main}
</main></body>
</html>
"""


def _confirm_page(request: ApprovalRequest, link: _Link, token: str, action_url: str) -> str:
    """The call in full and the one button that gives the link's answer (posted with its token)."""
    who = escape(visible(link.approver))
    if link.action == "answer":
        title, button = "Answer this question", "Send answer"
        field = (
            '<label for="answer">Your answer</label>'
            f'<textarea id="answer" name="answer" rows="5" maxlength="{MAX_ANSWER}" required></textarea>'
        )
    else:
        title = "Approve this call?" if link.action == "approve" else "Deny this call?"
        button = _VERBS[link.action]
        label = "Comment (optional)" if link.action == "approve" else "The reason (optional)"
        field = (
            f'<label for="comment">{label}</label>'
            f'<textarea id="comment" name="comment" rows="3" maxlength="{MAX_COMMENT}"></textarea>'
        )
    votes = ""
    if request.approvals > 1:
        votes = f"<p>So far: {escape(describe_votes(request.votes, request.approvals))}.</p>"
    main = (
        f"<p>You answer as <strong>{who}</strong>. The button decides; this link then no longer"
        " works (nor this approver's other link for the same call).</p>"
        "<p>Control and bidi characters are spelled out (<code>\\u202e</code>), long runs of"
        " spaces are counted.</p>"
        f"<pre>{spaces(escape(full_call(request)))}</pre>{votes}"
        f'<form method="post" action="{escape(action_url)}">'
        f'<input type="hidden" name="token" value="{escape(token)}">{field}'
        f'<p><button type="submit">{escape(button)}</button></p></form>'
    )
    return _page(title, main)


def _refusal(status: int, reason: str, title: str, text: str, **fields: object) -> Refused:
    """A refusal as the links' pages answer it: a small page with the security headers."""
    page = message_page(title, text)
    return Refused(status, reason, body=page, media_type="text/html", headers=_SECURITY_HEADERS, **fields)


def _form(body: bytes) -> dict[str, str]:
    """A posted form's fields, each sent once, as UTF-8."""
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, errors="strict", max_num_fields=8)
    except ValueError:
        raise _refusal(400, "malformed form", "Not a form", "The form could not be read.") from None
    if any(len(values) != 1 for values in fields.values()):
        raise _refusal(400, "repeated form field", "Not a form", "Each field may be sent once.")
    return {name: values[0] for name, values in fields.items()}


class WebhookChannel(BaseChannel):
    """A webhook: each request POSTed as signed JSON to ``url``; decided from signed links.

    Every delivery is signed: ``X-HumanLayer-Timestamp`` (unix seconds) and
    ``X-HumanLayer-Signature: sha256=<hex HMAC-SHA256 of "{timestamp}.{body}" keyed by
    secret>``. A 5xx, a 429 or a network error is retried (after ``Retry-After`` when the
    receiver sends one), another answer that is not 2xx is not; a delivery that still fails
    raises ``ChannelError`` (the request's other channels carry it, or it fails closed).
    Deliveries go out for a new request, each vote counted and reminder, and the outcome.

    A receiver marked ``private=True`` is one person's, or a system that shows each
    approver only their own links (an internal admin page behind its sign-in): its payloads
    carry, for each of the channel's ``approvers`` who may decide the request, an approve
    and a deny link (an answer link for a question) that decide as that approver. A group
    room is not private: anyone in it could decide as the approver, so its payloads carry
    no links (only ``console_url``, when given). One channel posts to one URL; for several
    receivers, give several channels, each its own ``label``.

    Opening a link shows a confirmation page (the whole call) and decides nothing; its
    button does, once. The links expire with the request, and a link for another version of
    the call (edited since) is refused. They are served by the listener under ``base_path``
    and start with ``public_url``, else the listener's own URL.

    Args:
        url: Where deliveries are POSTed (http or https). Never logged: webhook URLs often
            hold a secret.
        secret: The key of the deliveries' signatures (at least 16 characters), which the
            receiver checks. Required for ``payload_format="json"``; Teams and Discord check
            none (their URL is the secret), so there it is optional.
        private: The receiver is one approver's (see above): only then do its payloads carry
            links. Needs ``approvers``.
        approvers: Who this channel's links decide as, one pair of links each. With a
            tool's own list too, only those on both get links (and may decide).
        public_url: The URL the listener is reached at from where links are opened, with any
            path prefix (``https://approvals.example.com``): needed behind a proxy or a
            tunnel. Default: the listener's URL (loopback by default: then links work on
            this machine only).
        payload_format: ``"json"`` (ours, below), ``"teams"`` (a Microsoft Teams message
            with an Adaptive Card, for a Teams Workflows webhook) or ``"discord"`` (a
            Discord webhook message).
        console_url: The web console's URL (``https://approvals.example.com/approvals``):
            each payload then links to the request's page there, private or not.
        token_secret: The key of the links' tokens. Default: ``HUMANLAYER_SECRET``; when
            unset, a random key of this process (links then fail after a restart, or in
            another process of a fleet). Never the same as ``secret``: receivers hold that.
        label: What a ``Policy`` names this channel by. Default: ``"webhook"``, its kind.
        base_path: Where the links' pages are served on the listener. Default: ``/webhook``,
            or ``/webhook/<label>`` with a ``label``.

    The JSON payload::

        {"event": "approval.requested",  # .voted, .reminded, .decided
         "delivery": "<id>",             # the same in each retry of one delivery
         "sent_at": "<ISO 8601>",
         "request": {"id", "kind", "function", "arguments", "context", "summary",
                     "expires_at", "approvers", "approvals", "votes", "status",
                     "decision", ...},
         "links": [{"approver": "alice@company.com", "approve": "<url>", "deny": "<url>"}],
         "console_url": null}

    Attributes:
        timeout: Seconds one attempt may take: 10.
        retry_delays: Seconds to wait before each retry (longer when ``Retry-After`` asks):
            1, 4, 15.

    Raises:
        ConfigurationError: naming what is missing or contradictory.
    """

    name = "webhook"

    def __init__(
        self,
        url: str,
        *,
        secret: str | bytes | None = None,
        private: bool = False,
        approvers: str | Sequence[str] | None = None,
        public_url: str | None = None,
        payload_format: PayloadFormat = "json",
        console_url: str | None = None,
        token_secret: str | bytes | None = None,
        label: str | None = None,
        base_path: str | None = None,
    ) -> None:
        self.label = check_label(label, self.name)
        self.url = _http_url(url, "url")
        if payload_format not in get_args(PayloadFormat):
            raise ConfigurationError(f"payload_format must be json, teams or discord, not {payload_format!r}")
        self.payload_format: PayloadFormat = payload_format
        self._secret = _secret(secret, "secret")
        if self._secret is None and payload_format == "json":
            raise ConfigurationError(
                "WebhookChannel needs secret=: receivers check each delivery's signature with it"
            )
        self.approvers = _approvers(approvers)
        self.private = bool(private)
        if self.private and not self.approvers:
            raise ConfigurationError(
                "private=True sends links that decide as the channel's approvers: name them with approvers="
            )
        self.public_url = _base(public_url, "public_url")
        self.console_url = _base(console_url, "console_url")
        self.base_path = _base_path(base_path, self.label)
        key = _secret(token_secret, "token_secret")
        if key is None and self.private:
            key = _secret(os.environ.get("HUMANLAYER_SECRET") or None, "HUMANLAYER_SECRET")
            if key is None:
                logger.warning(
                    "webhook.ephemeral_token_key",
                    channel=self.label,
                    detail="HUMANLAYER_SECRET is not set: links are signed with a random key of this "
                    "process, so they fail after a restart or in another process",
                )
        if key is not None and self._secret is not None and hmac.compare_digest(key, self._secret):
            raise ConfigurationError(
                "token_secret must differ from secret: receivers hold secret, and could mint links with it"
            )
        self._tokens = _Tokens(key or secrets.token_bytes(32), self.base_path)
        self.timeout = 10.0
        self.retry_delays: tuple[float, ...] = (1.0, 4.0, 15.0)
        self._slots = anyio.Semaphore(_IN_FLIGHT)
        self._listener_url: str | None = None
        self._decider: Decider | None = None
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        target = httpx.URL(self.url)
        return (
            f"WebhookChannel(url='{target.scheme}://{target.netloc.decode()}/…', private={self.private}, "
            f"approvers={list(self.approvers)!r}, payload_format={self.payload_format!r})"
        )

    def listening(self, url: str) -> None:
        """Links start with the listener's URL when no ``public_url`` is given."""
        self._listener_url = url

    # -- lifecycle -------------------------------------------------------------------------

    def routes(self) -> Sequence[BaseRoute]:
        """The links' pages, for a private receiver's links (other channels send none)."""
        if not self.private:
            return ()
        return [Route(f"{self.base_path}/links", self._link, methods=["GET", "POST"])]

    async def run(self, decider: Decider, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        client = httpx.AsyncClient(transport=_Transport(), timeout=self.timeout, follow_redirects=False)
        self._client, self._decider = client, decider
        try:
            task_status.started()
            await anyio.sleep_forever()
        finally:
            self._client = self._decider = None
            with anyio.CancelScope(shield=True):
                await client.aclose()

    # -- out -------------------------------------------------------------------------------

    async def send(self, request: ApprovalRequest) -> str | None:
        """Deliver the request (``approval.requested``); its reference is the delivery's id."""
        deadline = time.monotonic() + (request.expires_at - datetime.now(UTC)).total_seconds()
        return await self._post("approval.requested", request, deadline)

    async def progress(self, request: ApprovalRequest, ref: str | None) -> None:
        """A vote counted (``approval.voted``), with links for the approvers yet to answer."""
        await self._post("approval.voted", request, time.monotonic() + _UPDATE_WINDOW)

    async def remind(self, request: ApprovalRequest, ref: str | None) -> None:
        """The request still waits (``approval.reminded``), with its links again."""
        await self._post("approval.reminded", request, time.monotonic() + _UPDATE_WINDOW)

    async def update(self, request: ApprovalRequest, ref: str | None) -> None:
        """The outcome (``approval.decided``: ``request.status`` says which), with no links."""
        await self._post("approval.decided", request, time.monotonic() + _UPDATE_WINDOW)

    async def _post(self, event: WebhookEvent, request: ApprovalRequest, deadline: float) -> str:
        client = self._client
        if client is None:
            raise ChannelError("WebhookChannel is not running: start the HumanLayer first (async with hl)")
        delivery = _Delivery(
            secrets.token_hex(16),
            event,
            request,
            self._links(request) if request.decision is None else (),
            None if self.console_url is None else f"{self.console_url}/requests/{request.id}",
        )
        payload = (
            delivery.json() if self.payload_format == "json" else _FORMATS[self.payload_format](delivery)
        )
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        async with self._slots:
            await self._deliver(client, body, deadline)
        logger.info(
            "webhook.delivered", channel=self.label, what=event, request_id=request.id, delivery=delivery.id
        )
        return delivery.id

    def _links(self, request: ApprovalRequest) -> tuple[tuple[str, Mapping[Action, str]], ...]:
        """Each approver's links, for a private receiver: those who may decide the request and
        have not voted on this version of it."""
        if not self.private:
            return ()
        voted = {same_name(vote.by) for vote in request.votes}
        actions: tuple[Action, ...] = ("answer",) if request.kind == "question" else ("approve", "deny")
        expires = math.floor(request.expires_at.timestamp())  # never after the request
        base = self._link_base()
        links = []
        for approver in self.approvers:
            if not request.may_decide(approver) or same_name(approver) in voted:
                continue  # a link for someone who may not decide never exists
            urls = {
                action: f"{base}{self.base_path}/links?token="
                + self._tokens.make(_Link(request.id, approver, action, request.fingerprint, expires))
                for action in actions
            }
            links.append((approver, urls))
        return tuple(links)

    def _link_base(self) -> str:
        base = self.public_url or self._listener_url
        if base is None:
            raise ChannelError(
                "WebhookChannel has no URL for its links: pass public_url=, or let the HumanLayer "
                "listen (listen=...) so that links start with the listener's URL"
            )
        host = httpx.URL(base).host
        if host in ("0.0.0.0", "::"):
            raise ChannelError(
                f"the listener serves every interface ({base}), which is no address to open a link at: "
                "pass public_url="
            )
        return base

    def _sign(self, body: bytes) -> dict[str, str]:
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "X-HumanLayer-Timestamp": timestamp}
        if self._secret is not None:
            mac = hmac.new(self._secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
            headers["X-HumanLayer-Signature"] = f"sha256={mac}"
        return headers

    async def _attempt(self, client: httpx.AsyncClient, body: bytes) -> tuple[int, float | None]:
        """One POST, signed now: the status, and the wait a ``Retry-After`` asks for (the
        answer's body is never read)."""
        with anyio.fail_after(self.timeout):
            async with client.stream("POST", self.url, content=body, headers=self._sign(body)) as response:
                return response.status_code, retry_after(response.headers.get("retry-after"))

    async def _deliver(self, client: httpx.AsyncClient, body: bytes, deadline: float) -> None:
        """POST ``body`` until a 2xx; retried on 5xx, 429 and network errors, waiting at least
        what ``Retry-After`` asks; ``ChannelError`` for another answer, when no retry is left,
        or when the next would come after ``deadline`` (a ``time.monotonic()`` value)."""
        backoff = Backoff.schedule(self.retry_delays)
        while True:
            asked: float | None = None
            cause: Exception | None = None
            try:
                status, asked = await self._attempt(client, body)
            except (httpx.TransportError, TimeoutError) as exc:
                failure, cause = type(exc).__name__, exc
            else:
                if 200 <= status < 300:
                    return
                failure = f"HTTP {status}"
                if status != 429 and status < 500:
                    raise ChannelError(f"webhook {self.label} refused the delivery: {failure}")
            wait = backoff.next()
            if wait is None:
                raise ChannelError(
                    f"webhook {self.label} failed {backoff.retries_made + 1} times: {failure}"
                ) from cause
            wait = max(wait, asked or 0.0)
            if time.monotonic() + wait > deadline:
                raise ChannelError(f"webhook {self.label} failed: {failure}, and time ran out") from cause
            logger.warning("webhook.retry", channel=self.label, error=failure, wait=round(wait, 3))
            await anyio.sleep(wait)

    # -- in: the links -----------------------------------------------------------------------

    def _running(self) -> Decider:
        if self._decider is None:
            raise _refusal(503, "channel not running", "Not running", "Try again in a moment.")
        return self._decider

    async def _link(self, request: Request) -> Response:
        return await (self._decide if request.method == "POST" else self._confirm)(request)

    async def _confirm(self, request: Request) -> Response:
        """``GET {base_path}/links?token=…``: the confirmation page; decides nothing."""
        token = request.query_params.get("token", "")
        link = self._verified(token)
        shown = await self._decidable(self._running(), link)
        action_url = str(request.scope.get("root_path", "")).rstrip("/") + f"{self.base_path}/links"
        return HTMLResponse(_confirm_page(shown, link, token, action_url), headers=_SECURITY_HEADERS)

    async def _decide(self, request: Request) -> Response:
        """``POST {base_path}/links``: the confirmation page's button. Decides once per link
        (the claim in the store), as its approver, through the ``Decider``."""
        content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise _refusal(415, "not a form", "Not a form", "Send the confirmation page's form.")
        form = _form(await request.body())
        link = self._verified(form.get("token", ""))
        comment = form.get("comment", "").strip() or None
        answer = form.get("answer", "").strip()
        if (comment is not None and len(comment) > MAX_COMMENT) or len(answer) > MAX_ANSWER:
            raise _refusal(400, "field too long", "Too long", "The comment or answer is too long.")
        if link.action == "answer" and not answer:
            raise _refusal(400, "empty answer", "No answer", "Type an answer first.")
        decider = self._running()
        shown = await self._decidable(decider, link)
        where = {"request_id": link.request_id, "approver": link.approver}
        expires_at = datetime.fromtimestamp(link.expires, UTC) + timedelta(seconds=CLOCK_SKEW)
        try:
            claimed = await decider.claim(link.claim, expires_at)
        except StoreError as exc:
            raise _refusal(
                503, "store unavailable", "Try again", "The store is unavailable: try again."
            ) from exc
        if not claimed:
            raise _refusal(
                409,
                "used link",
                "This link was used",
                "This approver's links for this call work once, and one was used. Nothing else was "
                "decided; to change an answer, use another approval channel.",
                **where,
            )
        try:
            if link.action == "answer":
                answered = await decider.respond(link.request_id, answer, by=link.approver, via=self.name)
            else:
                answered = await decider.decide(
                    link.request_id,
                    link.action == "approve",
                    by=link.approver,
                    comment=comment,
                    via=self.name,
                    seen=link.fingerprint,
                )
        except UnknownRequest:
            raise self._unknown(link) from None
        except NotAnApprover as exc:
            raise self._not_an_approver(link, requester=exc.requester) from None
        except ArgumentsEdited:
            raise self._edited(link) from None
        except StoreError as exc:
            raise _refusal(
                503,
                "store unavailable",
                "Not decided",
                "The store is unavailable, and this link is used up: decide in another approval channel.",
                **where,
            ) from exc
        except HumanLayerError as exc:
            raise _refusal(409, "not decidable", "Not decided", str(exc), **where) from exc
        return self._answered(shown, link, answered)

    def _answered(self, shown: ApprovalRequest, link: _Link, answered: Answered) -> Response:
        """What the answer came to: decided (200), a vote counted (200), or someone else's
        decision that stands (409, saying whose)."""
        decision = answered.decision
        if decision is None:
            progress = describe_votes(answered.votes, answered.needed)
            page = message_page("Vote counted", f"Your approval is counted: {progress}.")
            logger.info("webhook.voted", request_id=link.request_id, by=link.approver)
            return HTMLResponse(page, headers=_SECURITY_HEADERS)
        if not answered.stands:
            logger.info("webhook.already_decided", request_id=link.request_id, by=link.approver)
            page = message_page("Already decided", f"This request was already {describe_decision(decision)}.")
            return HTMLResponse(page, status_code=409, headers=_SECURITY_HEADERS)
        logger.info("webhook.decided", request_id=link.request_id, by=link.approver, action=link.action)
        title = "Answered" if decision.answer is not None else _OUTCOMES.get(decision.status, "Decided")
        page = message_page(title, f"{summarize(shown)}: {describe_decision(decision)}.")
        return HTMLResponse(page, headers=_SECURITY_HEADERS)

    def _verified(self, token: str) -> _Link:
        """The link ``token`` is, once it verifies, has not expired and its approver is still
        one of the channel's."""
        try:
            link = self._tokens.read(token)
            valid = link is not None and _well_formed(link)
        except (ValueError, TypeError):  # signed, yet not our fields: a token of another version
            link, valid = None, False
        if link is None or not valid:
            raise _refusal(
                403, "invalid link", "This link is not valid", "It was altered, or it is not one of ours."
            )
        where = {"request_id": link.request_id, "approver": link.approver}
        if link.expires <= time.time():
            raise _refusal(
                410, "expired link", "This link has expired", "Links expire with their request.", **where
            )
        if link.approver not in self.approvers:
            raise self._not_an_approver(link, requester=False)
        return link

    async def _decidable(self, decider: Decider, link: _Link) -> ApprovalRequest:
        """The link's request, while its answer may still count: pending, and the call the
        link was made for."""
        try:
            request = await decider.get(link.request_id)
        except UnknownRequest:
            raise self._unknown(link) from None
        except StoreError as exc:
            raise _refusal(
                503, "store unavailable", "Try again", "The store is unavailable: try again."
            ) from exc
        if request.decision is not None:
            raise _refusal(
                409,
                "already decided",
                "Already decided",
                f"This request was already {describe_decision(request.decision)}.",
                request_id=link.request_id,
                approver=link.approver,
            )
        if request.fingerprint != link.fingerprint:
            raise self._edited(link)
        if (link.action == "answer") != (request.kind == "question"):
            raise _refusal(403, "invalid link", "This link is not valid", "It does not fit this request.")
        if not request.may_decide(link.approver):
            raise self._not_an_approver(link, requester=request.is_requester(link.approver))
        return request

    def _unknown(self, link: _Link) -> Refused:
        return _refusal(
            404, "unknown request", "No such request", "It is no longer kept.", request_id=link.request_id
        )

    def _edited(self, link: _Link) -> Refused:
        return _refusal(
            409,
            "edited since sent",
            "The call has changed",
            "It was edited after this link was sent: use the links of the latest message, or another "
            "approval channel. Nothing was decided.",
            request_id=link.request_id,
            approver=link.approver,
        )

    def _not_an_approver(self, link: _Link, *, requester: bool) -> Refused:
        why = (
            "requested this call, so someone else must decide it" if requester else "is not an approver of it"
        )
        return _refusal(
            403,
            "not an approver",
            "Not yours to decide",
            f"{link.approver} {why}.",
            request_id=link.request_id,
            approver=link.approver,
        )


def _well_formed(link: _Link) -> bool:
    return (
        isinstance(link.request_id, str)
        and isinstance(link.approver, str)
        and link.action in _ACTIONS
        and isinstance(link.fingerprint, str)
        and _FINGERPRINT.fullmatch(link.fingerprint) is not None
        and isinstance(link.expires, int)
    )
