"""The web console's HTML: the page, a pending request's card, a line of history.

Everything is rendered on the server and escaped here; the page's script only inserts
these fragments as they arrive over server-sent events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from html import escape
from typing import Any

from .._models import ApprovalRequest
from .._render import describe_decision, format_value, summarize

__all__ = ["card", "duration", "history_item", "history_list", "message_page", "page", "pending_list"]


def duration(seconds: float) -> str:
    """A rough, readable length of time: ``12 s``, ``4 min``, ``2 h 5 min``, ``3 d``."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        hours, minutes = divmod(seconds // 60, 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{seconds // 86400} d"


def _fields(values: Mapping[str, Any], css: str, label: str) -> str:
    if not values:
        return ""
    rows = "".join(
        f"<div><dt>{escape(name)}</dt><dd>{escape(format_value(value, 1000))}</dd></div>"
        for name, value in values.items()
    )
    return f'<dl class="{css}" aria-label="{label}">{rows}</dl>'


def card(request: ApprovalRequest, *, action: str, csrf: str, now: datetime) -> str:
    """One pending request: what it is, for how long it waits, and the form to decide it."""
    rid = escape(request.id)
    created = request.created_at.isoformat()
    expires = request.expires_at.isoformat()
    age = duration((now - request.created_at).total_seconds())
    left = duration((request.expires_at - now).total_seconds())
    approvers = f" · approvers: {escape(', '.join(request.approvers))}" if request.approvers else ""
    meta = (
        f'<p class="meta">run <span class="run">{escape(request.run_id or "—")}</span>'
        f' · asked <time class="age" datetime="{created}">{age} ago</time>'
        f' · <time class="left" datetime="{expires}">{left} left</time>{approvers}'
        f" · id <code>{escape(request.short_id)}</code></p>"
    )
    hidden = f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
    if request.kind == "question":
        title = "Question"
        body = f'<p class="message">{escape(request.message or "")}</p>'
        form = (
            f'<label for="a-{rid}">Your answer</label>'
            f'<textarea id="a-{rid}" name="answer" rows="3" maxlength="10000" required></textarea>'
            '<div class="buttons">'
            '<button type="submit" name="action" value="answer" class="approve">Send answer</button>'
            '<button type="submit" name="action" value="deny" class="deny" formnovalidate>Decline</button>'
            "</div>"
        )
    else:
        title = "Approval needed"
        doc = f'<p class="doc">{escape(request.doc.splitlines()[0])}</p>' if request.doc else ""
        body = (
            f"{doc}{_fields(request.kwargs, 'args', 'arguments')}"
            f"{_fields(request.context, 'context', 'context')}"
        )
        form = (
            f'<label for="c-{rid}">Comment (the reason, when denying)</label>'
            # A textarea: Enter adds a line instead of submitting with the first button (Approve).
            f'<textarea id="c-{rid}" name="comment" rows="2" maxlength="2000"></textarea>'
            '<div class="buttons">'
            '<button type="submit" name="action" value="approve" class="approve">Approve</button>'
            '<button type="submit" name="action" value="deny" class="deny">Deny</button>'
            "</div>"
        )
    return (
        f'<li class="card {request.kind}" id="req-{rid}" data-id="{rid}">'
        f'<article aria-labelledby="t-{rid}">'
        f'<h3 id="t-{rid}"><span class="kind">{title}</span> <code>{escape(request.function)}</code></h3>'
        f"{body}{meta}"
        f'<form class="decide" method="post" action="{escape(action)}">{hidden}{form}'
        '<p class="result" role="status"></p></form>'
        "</article></li>"
    )


def history_item(request: ApprovalRequest) -> str:
    """One decided request: what it was, and who decided it, via which channel, when, why."""
    decision = request.decision
    status = "pending" if decision is None else decision.status.value
    outcome = "" if decision is None else describe_decision(decision)
    when = "" if decision is None else decision.decided_at.isoformat()
    return (
        f'<li class="decided {status}" id="dec-{escape(request.id)}" data-id="{escape(request.id)}">'
        f'<span class="badge">{escape(status.replace("_", " "))}</span> '
        f'<span class="what">{escape(summarize(request))}</span> '
        f'<time class="outcome" datetime="{when}">{escape(outcome)}</time></li>'
    )


def pending_list(
    requests: Iterable[ApprovalRequest],
    *,
    action_for: Callable[[ApprovalRequest], str],
    csrf: str,
    now: datetime,
) -> str:
    """The cards of every pending request (``action_for(request)`` is each form's URL)."""
    return "".join(card(r, action=action_for(r), csrf=csrf, now=now) for r in requests)


def history_list(requests: Iterable[ApprovalRequest]) -> str:
    """The recent decisions, newest first."""
    return "".join(history_item(r) for r in requests)


def page(*, user: str, csrf: str, base: str, pending: str, history: str) -> str:
    """The whole console."""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{escape(csrf)}">
<title>Approvals · humanlayer-async</title>
<link rel="stylesheet" href="{escape(base)}/static/console.css">
<script src="{escape(base)}/static/console.js" defer></script>
</head>
<body data-events="{escape(base)}/events">
<a class="skip" href="#pending-heading">Skip to pending requests</a>
<header>
<h1>Approvals</h1>
<p>Signed in as <strong>{escape(user)}</strong> ·
<span id="connection" role="status">live updates: connecting…</span></p>
</header>
<main>
<section aria-labelledby="pending-heading">
<h2 id="pending-heading">Waiting for you</h2>
<p class="empty" id="pending-empty">Nothing is waiting for a decision.</p>
<ol id="pending" class="cards">{pending}</ol>
</section>
<section aria-labelledby="history-heading">
<h2 id="history-heading">Recent decisions</h2>
<ol id="history" class="history">{history}</ol>
</section>
<div id="announce" class="visually-hidden" aria-live="polite"></div>
</main>
</body>
</html>
"""


def message_page(title: str, text: str) -> str:
    """A small page for people who reach the console without signing in."""
    return f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title></head>
<body><h1>{escape(title)}</h1><p>{escape(text)}</p></body>
</html>
"""
