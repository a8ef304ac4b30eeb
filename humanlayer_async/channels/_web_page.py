"""The web console's HTML: the page, a pending request's card, a line of history, the
full view of one request, a batch decision's outcomes, the live grants, the per-tool stats,
the sign-in form.

Everything is rendered on the server and escaped here; the page's script only inserts
these fragments as they arrive over server-sent events. Caller text goes through
``visible`` (control and bidi characters spelled out), then HTML escaping, then
``spaces``: a long run of spaces becomes a marker saying how many, so that it cannot
push what follows out of sight.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote

from .._edits import describe_type, edit_text
from .._models import ApprovalRequest, Grant
from .._render import (
    MASK,
    describe_decision,
    describe_votes,
    full_call,
    masked,
    shorten,
    summarize,
    visible,
)
from .._stats import HEADERS, ToolStats, cells
from ._grant_offer import describe_duration

__all__ = [
    "GRANT_QUORUM",
    "BatchResult",
    "batch_page",
    "card",
    "detail_page",
    "duration",
    "grant_outcome",
    "grant_value",
    "grants_page",
    "history_item",
    "history_list",
    "message_page",
    "page",
    "pages",
    "pending_list",
    "selectors",
    "sign_in_page",
    "spaces",
    "stats_page",
]


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


def grant_value(seconds: float) -> str:
    """The ``grant`` field's value for a duration: its seconds (``3600``), as the form posts it."""
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


LONG_SPACES = 8
"""Spaces in a row, after a line's indentation, shown as one marker (``⟨1,000 spaces⟩``)."""
LONG_INDENT = 40
"""Spaces of indentation at the start of a line shown as they are; more become a marker."""

_BLANK = "[ \u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]"
_LONG_RUN = re.compile(rf"(?m)^{_BLANK}{{{LONG_INDENT + 1},}}|(?<=\S){_BLANK}{{{LONG_SPACES},}}")


def _marker(match: re.Match[str]) -> str:
    count = f"{len(match.group()):,} spaces"
    return f'<span class="spaces" title="{count}">⟨{count}⟩</span>'


def spaces(html: str) -> str:
    """Escaped ``html`` with each long run of spaces (or other blanks) shown as a marker."""
    return _LONG_RUN.sub(_marker, html)


def _text(text: str) -> str:
    """Caller text as HTML: visible, escaped, long runs of spaces marked."""
    return spaces(escape(visible(text)))


def _paragraph(text: str) -> str:
    """Like ``_text``, keeping line breaks (shown in a ``pre-wrap`` element)."""
    return "\n".join(_text(line) for line in text.split("\n"))


def _fields(values: Mapping[str, Any], css: str, label: str) -> tuple[str, bool]:
    """A ``<dl>`` of the values, shortened as ``format_value`` shortens; and whether it did."""
    if not values:
        return "", False
    rows, cut = [], False
    for name, value in values.items():
        text, shortened = shorten(value, 1000)
        cut = cut or shortened
        rows.append(f"<div><dt>{_text(name)}</dt><dd>{spaces(escape(text))}</dd></div>")
    return f'<dl class="{css}" aria-label="{label}">{"".join(rows)}</dl>', cut


def _grantable(request: ApprovalRequest) -> bool:
    """Whether approving ``request`` may also allow the same call: a pending tool call."""
    return request.kind == "approval" and request.tool is not None and request.decision is None


def _grant_buttons(request: ApprovalRequest, grants: Sequence[float]) -> tuple[str, str]:
    """The buttons that approve ``request`` and allow the same call for a while (one per
    duration in ``grants``), and the hint saying what "the same" is; empty when not offered."""
    if not grants or not _grantable(request):
        return "", ""
    buttons = "".join(
        f'<button type="submit" name="grant" value="{grant_value(seconds)}" class="approve grant"'
        f' aria-describedby="gh-{escape(request.id)}">'
        f"Approve, and allow the same for {describe_duration(seconds)}</button>"
        for seconds in grants
    )
    same = "every argument equal"
    if masked(request.kwargs):
        same += " (masked ones, ***, are not compared)"
    quorum = (
        f" It needs {request.approvals} approvals: the grant is given only when every approver asks for it."
        if request.approvals > 1
        else ""
    )
    hint = (
        f'<p class="hint" id="gh-{escape(request.id)}">"Allow the same": calls of this tool with {same}'
        " then run without asking anyone, until the grant expires or is revoked (on the Grants"
        f" page).{quorum}</p>"
    )
    return buttons, hint


def _decide_form(request: ApprovalRequest, *, action: str, csrf: str, grants: Sequence[float] = ()) -> str:
    """The form that approves, denies or answers ``request`` (posted to ``action``); with
    ``grants`` (seconds), a button per duration that also allows the same call that long."""
    rid = escape(request.id)
    if request.kind == "question":
        fields = (
            f'<label for="a-{rid}">Your answer</label>'
            f'<textarea id="a-{rid}" name="answer" rows="3" maxlength="10000" required></textarea>'
            '<div class="buttons">'
            '<button type="submit" name="action" value="answer" class="approve">Send answer</button>'
            '<button type="submit" name="action" value="deny" class="deny" formnovalidate>Decline</button>'
            "</div>"
        )
    else:
        grant_buttons, hint = _grant_buttons(request, grants)
        fields = (
            f'<label for="c-{rid}">Comment (the reason, when denying)</label>'
            # A textarea: Enter adds a line instead of submitting with the first button (Approve).
            f'<textarea id="c-{rid}" name="comment" rows="2" maxlength="2000"></textarea>'
            '<div class="buttons">'
            '<button type="submit" name="action" value="approve" class="approve">Approve</button>'
            f"{grant_buttons}"
            '<button type="submit" name="action" value="deny" class="deny">Deny</button>'
            f"</div>{hint}"
        )
    return (
        f'<form class="decide" method="post" action="{escape(action)}">'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">{_seen(request)}{fields}'
        '<p class="result" role="status"></p></form>'
    )


def _seen(request: ApprovalRequest) -> str:
    """The call's fingerprint as this page shows it: the answer is to that call only."""
    return f'<input type="hidden" name="seen" value="{escape(request.fingerprint)}">'


def _editable(request: ApprovalRequest) -> bool:
    return request.takes_edits and request.decision is None


def _choices(schema: Mapping[str, Any]) -> list[Any] | None:
    """The values a select offers for ``schema``: its enum, or true and false; else ``None``."""
    if isinstance(schema.get("enum"), list):
        return list(schema["enum"])
    return [True, False] if schema.get("type") == "boolean" else None


def _edit_field(request: ApprovalRequest, index: int, name: str, schema: dict[str, Any] | None) -> str:
    """One editable argument: its label and a select, a text box, or its masked value."""
    rid = escape(request.id)
    field_id, hint_id = f"e-{rid}-{index}", f"eh-{rid}-{index}"
    value = request.kwargs.get(name)
    label = f'<label for="{field_id}">{_text(name)}</label>'
    if name in request.kwargs and value == MASK:
        return (
            f'<div class="edit-field">{label}<input id="{field_id}" type="text" value="{MASK}" disabled'
            f' aria-describedby="{hint_id}">'
            f'<p class="hint" id="{hint_id}">masked: it cannot be edited</p></div>'
        )
    current = edit_text(value, schema) if name in request.kwargs else ""
    if current is None:
        return (
            f'<div class="edit-field">{label}<p class="hint" id="{hint_id}">'
            "it has no JSON form, so it cannot be edited here</p></div>"
        )
    attributes = f'id="{field_id}" name="edit.{escape(name)}" aria-describedby="{hint_id}"'
    choices = _choices(schema or {})
    if choices is not None and current in (texts := [edit_text(choice, schema) or "" for choice in choices]):
        options = "".join(
            f'<option value="{escape(text)}"{" selected" if text == current else ""}>{_text(text)}</option>'
            for text in texts
        )
        control = f"<select {attributes}>{options}</select>"
    else:
        rows = min(8, current.count("\n") + 1)
        # A text box, also for one line: Enter in it adds a line instead of approving.
        # (The newline after the tag is the one a textarea drops: the value keeps its own.)
        control = f'<textarea {attributes} rows="{rows}" spellcheck="false">\n{escape(current)}</textarea>'
    hint = f'<p class="hint" id="{hint_id}">{_text(describe_type(schema or {}))}</p>'
    return f'<div class="edit-field">{label}{control}{hint}</div>'


def _edit_form(request: ApprovalRequest, *, action: str, csrf: str) -> str:
    """The form that approves ``request`` with changed arguments (the changed fields only
    become edits, ``edit.<argument>``)."""
    fields = "".join(
        _edit_field(request, index, name, schema if isinstance(schema, dict) else None)
        for index, (name, schema) in enumerate((request.editable or {}).items())
    )
    rid = escape(request.id)
    return (
        f'<form class="edit" id="edit" method="post" action="{escape(action)}" aria-labelledby="edit-{rid}">'
        f'<h2 id="edit-{rid}">Edit, then approve</h2>'
        '<p class="meta">Change what should be different: the call runs with your values. What'
        " you type is read as JSON when that fits the argument (<code>5000</code>,"
        ' <code>["a", "b"]</code>, <code>null</code>), else as text. Fields left as they are stay'
        " unchanged.</p>"
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">{_seen(request)}{fields}'
        f'<label for="ec-{rid}">Comment</label>'
        f'<textarea id="ec-{rid}" name="comment" rows="2" maxlength="2000"></textarea>'
        '<div class="buttons">'
        '<button type="submit" name="action" value="approve" class="approve">'
        "Approve with these changes</button>"
        "</div></form>"
    )


def _select_box(request: ApprovalRequest) -> str:
    """The checkbox that puts ``request`` in the batch form (``form="batch"``: the card's own
    form cannot hold it, and without JavaScript the batch form still posts it)."""
    return (
        # The id, and the call as this card shows it: an edited call is not decided unseen.
        f'<label class="select"><input type="checkbox" name="id"'
        f' value="{escape(request.id)} {escape(request.fingerprint)}"'
        ' form="batch"> Select<span class="visually-hidden"> '
        f"{_text(request.function)} {escape(request.short_id)}</span></label>"
    )


def card(
    request: ApprovalRequest,
    *,
    action: str,
    csrf: str,
    now: datetime,
    selectable: bool = False,
    grants: Sequence[float] = (),
) -> str:
    """One pending request: what it is, for how long it waits, and the form to decide it.

    Arguments and context are shortened as ``format_value`` shortens, saying so where it
    does; "Show the full call" links to the request's full view, at ``action`` too. A
    ``selectable`` approval (one the signed-in user may decide) has a checkbox for the
    batch form, never ticked: what arrives after the user chose is not chosen. ``grants``:
    the durations (seconds) offered as "Approve, and allow the same for …".
    """
    rid = escape(request.id)
    created = request.created_at.isoformat()
    expires = request.expires_at.isoformat()
    age = duration((now - request.created_at).total_seconds())
    left = duration((request.expires_at - now).total_seconds())
    approvers = f" · approvers: {_text(', '.join(request.approvers))}" if request.approvers else ""
    if request.approvals > 1:
        approvers += f" · {_text(describe_votes(request.votes, request.approvals))}"
    meta = (
        f'<p class="meta">run <span class="run">{_text(request.run_id or "—")}</span>'
        f' · asked <time class="age" datetime="{created}">{age} ago</time>'
        f' · <time class="left" datetime="{expires}">{left} left</time>{approvers}'
        f" · id <code>{escape(request.short_id)}</code></p>"
    )
    if request.kind == "question":
        title, cut = "Question", False
        body = f'<p class="message">{_paragraph(request.message or "")}</p>'
    else:
        title = "Approval needed"
        doc = f'<p class="doc">{_text(request.doc.splitlines()[0])}</p>' if request.doc else ""
        arguments, cut_arguments = _fields(request.kwargs, "args", "arguments")
        context, cut_context = _fields(request.context, "context", "context")
        body, cut = f"{doc}{arguments}{context}", cut_arguments or cut_context
    shortened = " (some values above are shortened)" if cut else ""
    edit = f' · <a href="{escape(action)}#edit">Edit, then approve</a>' if _editable(request) else ""
    full = f'<p class="full-link"><a href="{escape(action)}">Show the full call</a>{shortened}{edit}</p>'
    select, data = "", ""
    if selectable and request.kind == "approval":
        select = _select_box(request)
        data = f' data-function="{escape(request.function)}"'
        if request.run_id is not None:
            data += f' data-run="{escape(request.run_id)}"'
    return (
        f'<li class="card {request.kind}" id="req-{rid}" data-id="{rid}"{data}>'
        f'<article aria-labelledby="t-{rid}">{select}'
        f'<h3 id="t-{rid}"><span class="kind">{title}</span> <code>{_text(request.function)}</code></h3>'
        f"{body}{full}{meta}{_decide_form(request, action=action, csrf=csrf, grants=grants)}"
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
    selectable: Callable[[ApprovalRequest], bool] = lambda request: False,
    grants: Sequence[float] = (),
) -> str:
    """The cards of every pending request (``action_for(request)`` is each form's URL;
    ``selectable(request)``, whether its card has a batch checkbox; ``grants``, the
    durations offered with an approval)."""
    return "".join(
        card(r, action=action_for(r), csrf=csrf, now=now, selectable=selectable(r), grants=grants)
        for r in requests
    )


def selectors(requests: Iterable[ApprovalRequest]) -> str:
    """The batch form's shortcuts: a button per tool, then per run, of the selectable
    ``requests``, each selecting all of its cards (the page's script makes them work, and
    rebuilds them from the cards as the list changes)."""
    functions: dict[str, None] = {}
    runs: dict[str, None] = {}
    for request in requests:
        functions[request.function] = None
        if request.run_id is not None:
            runs[request.run_id] = None
    buttons = [
        f'<button type="button" data-select="function" data-value="{escape(function)}">'
        f"Select all of <code>{_text(function)}</code></button>"
        for function in functions
    ] + [
        f'<button type="button" data-select="run" data-value="{escape(run)}">'
        f"Select all of run <code>{_text(run)}</code></button>"
        for run in runs
    ]
    return "".join(buttons)


def _batch_form(*, base: str, csrf: str, selectors: str) -> str:
    """The form that approves or denies the ticked cards at once (``POST {base}/batch``).

    Hidden while no card has a checkbox (``selectors`` is empty); its shortcuts are
    hidden until the page's script, which works them, shows them.
    """
    hidden = "" if selectors else " hidden"
    return (
        f'<form id="batch" class="batch" method="post" action="{escape(base)}/batch"'
        f' aria-labelledby="batch-heading"{hidden}>'
        '<h3 id="batch-heading">Decide several at once</h3>'
        '<p class="meta">Tick the requests to decide: each is then approved or denied on its own,'
        " as from its card (approved as it is: no edits), and nothing else is.</p>"
        f'<div class="select-by" role="group" aria-label="Select by tool or run" hidden>{selectors}'
        '<button type="button" data-select="none">Clear selection</button>'
        '<span class="selected-count" aria-live="polite"></span></div>'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        '<label for="batch-comment">Comment (the reason: required to deny)</label>'
        '<textarea id="batch-comment" name="comment" rows="2" maxlength="2000"></textarea>'
        '<div class="buttons">'
        '<button type="submit" name="action" value="approve" class="approve">Approve selected</button>'
        '<button type="submit" name="action" value="deny" class="deny">Deny selected</button>'
        "</div>"
        '<div class="result" id="batch-result" role="status"></div></form>'
    )


def history_list(requests: Iterable[ApprovalRequest]) -> str:
    """The recent decisions, newest first."""
    return "".join(history_item(r) for r in requests)


def _head(title: str, base: str, extra: str = "") -> str:
    """A console page's start: its title (our own text), the stylesheet, and ``extra`` markup."""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{extra}<title>{escape(title)}</title>
<link rel="stylesheet" href="{escape(base)}/static/console.css">
</head>"""


def pages(*, shown: int, total: int, base: str, following: str | None, after: str | None) -> str:
    """Where the page's cards are among every pending request: ``Showing 50 of 12,345 pending``,
    a link to the next page (``following``: the id it starts after) and one back to the first
    (when this is not it). Hidden when every pending request is on the page; the page's script
    keeps the counts as requests come and go (``data-total``; ``data-more``: new requests
    belong to a later page, not to this one)."""
    links = []
    if following is not None:
        links.append(f'<a rel="next" href="{escape(base)}?after={quote(following)}">Next page</a>')
    if after is not None:
        links.append(f'<a href="{escape(base)}">First page</a>')
    more = ' data-more="true"' if following is not None else ""
    hidden = "" if links else " hidden"
    return (
        f'<p id="pending-pages" class="pages meta" data-total="{total}"{more}{hidden}>'
        f'<span class="count">Showing {shown:,} of {total:,} pending</span>'
        + "".join(f" · {link}" for link in links)
        + "</p>"
    )


def page(
    *,
    user: str,
    csrf: str,
    base: str,
    pending: str,
    history: str,
    selectors: str = "",
    pages: str = "",
    events: str | None = None,
) -> str:
    """The whole console (``selectors``: the batch form's shortcuts, from ``selectors()``;
    ``pages``: where the cards are among all, from ``pages()``; ``events``: the live updates'
    URL, by default ``{base}/events``)."""
    extra = (
        f'<meta name="csrf-token" content="{escape(csrf)}">\n'
        f'<script src="{escape(base)}/static/console.js" defer></script>\n'
    )
    events = f"{base}/events" if events is None else events
    return f"""{_head("Approvals · humanlayer-async", base, extra)}
<body data-events="{escape(events)}">
<a class="skip" href="#pending-heading">Skip to pending requests</a>
<header>
<h1>Approvals</h1>
<p>Signed in as <strong>{escape(user)}</strong> · <a href="{escape(base)}/grants">Grants</a> ·
<a href="{escape(base)}/stats">Stats</a> ·
<span id="connection" role="status">live updates: connecting…</span></p>
</header>
<main>
<section aria-labelledby="pending-heading">
<h2 id="pending-heading">Waiting for you</h2>
<p class="outcome-notice" id="outcome" hidden></p>
<p class="empty" id="pending-empty">Nothing is waiting for a decision.</p>
{pages}
{_batch_form(base=base, csrf=csrf, selectors=selectors)}
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


def detail_page(
    request: ApprovalRequest,
    *,
    user: str,
    csrf: str,
    base: str,
    action: str,
    may_decide: bool,
    grants: Sequence[float] = (),
) -> str:
    """One request in full (``full_call``, untruncated), with the form to decide it while
    pending (``grants``: the durations offered with an approval)."""
    if request.decision is not None:
        footer = f'<p class="outcome-full">{escape(describe_decision(request.decision))}</p>'
    elif may_decide:
        footer = _decide_form(request, action=action, csrf=csrf, grants=grants)
        if _editable(request):
            footer = (
                f"<h2>Approve or deny it as it is</h2>{footer}{_edit_form(request, action=action, csrf=csrf)}"
            )
    else:
        footer = f'<p class="notice">{_text(user)} is not an approver of this request.</p>'
    title = "Question" if request.kind == "question" else "Approval needed"
    return f"""{_head(f"{title} · Approvals · humanlayer-async", base)}
<body>
<header>
<h1>{title}</h1>
<p>Signed in as <strong>{_text(user)}</strong> · <a href="{escape(base)}">All requests</a> ·
<a href="{escape(base)}/grants">Grants</a></p>
</header>
<main>
<h2>The full call</h2>
<p class="meta">Untruncated; control and bidi characters are spelled out (<code>\\u202e</code>),
long runs of spaces are counted (<span class="spaces">⟨1,000 spaces⟩</span>).</p>
<pre class="full">{spaces(escape(full_call(request)))}</pre>
{footer}
</main>
</body>
</html>
"""


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one request of a batch decision came to.

    ``status``: ``decided``, ``counted`` (a vote, the request waits for more),
    ``already_decided`` (someone else decided first), ``not_an_approver``, ``unknown``, or
    ``not_decidable`` (a question, or an error); ``what``: the call, when the request is known.
    """

    id: str
    status: str
    message: str
    what: str = ""


_OUTCOMES = {
    "decided": "Decided",
    "counted": "Vote counted",
    "already_decided": "Already decided",
    "not_an_approver": "Not decided: not yours to decide",
    "unknown": "Unknown request",
    "not_decidable": "Not decided",
}


def batch_page(results: Sequence[BatchResult], *, user: str, base: str, approved: bool) -> str:
    """What a batch decision came to, request by request (the answer to a form posted
    without JavaScript)."""
    decided = sum(result.status == "decided" for result in results)
    verb = "Approved" if approved else "Denied"
    rows = []
    for result in results:
        what = f"<code>{escape(result.id)}</code>"
        if result.what:
            what = f'<a href="{escape(base)}/requests/{escape(result.id)}">{_text(result.what)}</a>'
        rows.append(
            f'<li class="result-{escape(result.status)}"><span class="badge">'
            f"{escape(_OUTCOMES.get(result.status, result.status))}</span> "
            f'<span class="what">{what}</span> <span class="outcome">{_text(result.message)}</span></li>'
        )
    return f"""{_head("Batch decision · Approvals · humanlayer-async", base)}
<body>
<header>
<h1>{verb} {decided} of {len(results)} selected</h1>
<p>Signed in as <strong>{_text(user)}</strong> · <a href="{escape(base)}">All requests</a></p>
</header>
<main>
<p class="meta">Each request was decided on its own; those listed as not decided are as they were.</p>
<ol class="history batch-results">{"".join(rows)}</ol>
</main>
</body>
</html>
"""


GRANT_QUORUM = "the grant is given only when every approver asks for it"
"""Why a grant asked for with one approval of several may not come (said with the vote)."""


def grant_outcome(grant: Grant | None, *, approvals: int) -> str:
    """What asking for a grant with an approval came to: the grant given and until when,
    or why none was (with several ``approvals``: not every approver asked for one)."""
    if grant is not None:
        seconds = (grant.expires_at - grant.created_at).total_seconds()
        return (
            f"allowed the same for {describe_duration(seconds)},"
            f" until {grant.expires_at:%Y-%m-%d %H:%M:%S} UTC (grant {grant.id})"
        )
    return f"no grant was given: {GRANT_QUORUM}" if approvals > 1 else "no grant was given"


def _grant_item(grant: Grant, *, base: str, csrf: str, now: datetime, may_change: bool, gave: bool) -> str:
    """One live grant: what it allows, who gave it, until when, how often it was used, and
    the forms that confirm it (while it waits for approvers) and revoke it."""
    gid = escape(grant.id)
    action = f"{escape(base)}/grants/{gid}"
    function = _text(grant.function)
    if grant.where:
        where, cut = _fields(grant.where, "where", "the arguments it allows")
        shortened = (
            '<p class="meta">Some values above are shortened, and say where: the grant compares them'
            " in full.</p>"
            if cut
            else ""
        )
        scope = (
            '<p class="meta">Calls whose arguments equal these (any other argument may be anything):</p>'
            f"{where}{shortened}"
        )
    else:
        scope = '<p class="meta">Every call of this tool, whatever its arguments.</p>'
    uses = (
        f"{grant.uses:,} of {grant.max_uses:,}"
        if grant.max_uses is not None
        else f"{grant.uses:,} (no limit)"
    )
    expires = (
        f'<time datetime="{grant.expires_at.isoformat()}">{grant.expires_at:%Y-%m-%d %H:%M:%S} UTC</time>'
        f" (in {duration((grant.expires_at - now).total_seconds())})"
    )
    facts = [
        ("Given by", ", ".join(_text(name) for name in grant.by)),
        ("Expires", expires),
        ("Uses", uses),
    ]
    if grant.approvers:
        facts.append(("Approvers", ", ".join(_text(name) for name in grant.approvers)))
    facts.append(("Id", f"<code>{gid}</code>"))
    rows = "".join(f"<div><dt>{name}</dt><dd>{value}</dd></div>" for name, value in facts)
    status, forms = "Allowed", ""
    if not grant.confirmed:
        status = "Waiting for approvers"
        more = grant.approvals - len(grant.by)
        forms += (
            f'<p class="notice">Not active yet: needs {more} more approver{"" if more == 1 else "s"}'
            f" ({len(grant.by)} of {grant.approvals} gave it).</p>"
        )
    hidden = f'<span class="visually-hidden"> the grant for {function}</span>'
    if not may_change:
        forms += '<p class="hint">Only the approvers of its tool may confirm or revoke it.</p>'
    else:
        if not grant.confirmed and gave:
            forms += '<p class="hint">You gave it: another approver confirms it.</p>'
        elif not grant.confirmed:
            forms += (
                f'<form class="grant-action" method="post" action="{action}/confirm">'
                f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
                f'<button type="submit" class="approve">Confirm{hidden}</button></form>'
            )
        forms += (
            f'<form class="grant-action" method="post" action="{action}/revoke">'
            f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
            f'<button type="submit" class="deny">Revoke{hidden}</button></form>'
        )
    return (
        f'<li class="card grant" id="grant-{gid}" data-id="{gid}"><article aria-labelledby="g-{gid}">'
        f'<h3 id="g-{gid}"><span class="kind">{status}</span> <code>{function}</code></h3>'
        f'{scope}<dl class="facts" aria-label="about the grant">{rows}</dl>'
        f'<div class="buttons">{forms}</div></article></li>'
    )


def grants_page(
    grants: Sequence[Grant],
    *,
    user: str,
    csrf: str,
    base: str,
    now: datetime,
    may_change: Callable[[Grant], bool],
    gave: Callable[[Grant], bool],
) -> str:
    """The live grants, each with its forms (``may_change(grant)``: whether the user may
    confirm or revoke it; ``gave(grant)``: whether they are one of its granters)."""
    items = "".join(
        _grant_item(grant, base=base, csrf=csrf, now=now, may_change=may_change(grant), gave=gave(grant))
        for grant in grants
    )
    listing = f'<ol class="cards grants">{items}</ol>' if items else '<p class="empty">No grant is live.</p>'
    return f"""{_head("Grants · Approvals · humanlayer-async", base)}
<body>
<header>
<h1>Grants</h1>
<p>Signed in as <strong>{_text(user)}</strong> · <a href="{escape(base)}">All requests</a></p>
</header>
<main>
<p class="meta">A grant lets the calls it covers run without asking anyone, until it expires, is used
up or is revoked: revoked, those calls ask a human again at once. One that needs several approvers
covers nothing until enough of them gave or confirmed it.</p>
{listing}
</main>
</body>
</html>
"""


def stats_page(stats: Sequence[ToolStats], *, user: str, base: str, since: datetime, typed: str) -> str:
    """Per-tool approval stats of the requests made since ``since``: the table
    ``humanlayer-async stats`` prints, every cell escaped (tools and approvers are named by
    callers), and a form to count from another time (``typed``: the window as asked)."""
    when = f"{since.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
    if stats:
        head = "".join(f'<th scope="col">{escape(header.capitalize())}</th>' for header in HEADERS)
        rows = "".join(
            f'<tr><th scope="row"><code>{_text(tool)}</code></th>'
            + "".join(f"<td>{_text(cell)}</td>" for cell in rest)
            + "</tr>"
            for tool, *rest in (cells(tool) for tool in stats)
        )
        listing = (
            '<div class="table-scroll" role="region" aria-labelledby="stats-heading" tabindex="0">'
            f'<table class="stats"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'
        )
    else:
        listing = f'<p class="empty">Nothing was asked since {when}.</p>'
    return f"""{_head("Stats · Approvals · humanlayer-async", base)}
<body>
<header>
<h1>Stats</h1>
<p>Signed in as <strong>{_text(user)}</strong> · <a href="{escape(base)}">All requests</a> ·
<a href="{escape(base)}/grants">Grants</a></p>
</header>
<main>
<form class="since" method="get" action="{escape(base)}/stats">
<label for="since">Count the requests made since: a duration back (24h, 7d) or an ISO 8601 time</label>
<input id="since" name="since" type="text" value="{escape(typed)}" required>
<div class="buttons"><button type="submit" class="approve">Show</button></div>
</form>
<h2 id="stats-heading">Since {when}</h2>
<p class="meta">From the audit trail. Approved and denied are people's decisions; granted ran under a
grant. The approval rate is approved of those people decided; waits run from the request to a
person's decision (P95: the nearest-rank 95th percentile; of fewer than 20 waits, the longest).
Would have asked: calls a tool gated in shadow mode let run. Questions count as
<code>contact_human</code>.</p>
{listing}
</main>
</body>
</html>
"""


def message_page(title: str, text: str, *, links: Sequence[tuple[str, str]] = ()) -> str:
    """A small page: for people who reach the console without signing in, a refused form,
    or an outcome to read (``links``: the URL and text of each way on)."""
    back = " · ".join(f'<a href="{escape(url)}">{escape(label)}</a>' for url, label in links)
    back = f"<p>{back}</p>" if back else ""
    return f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title></head>
<body><h1>{escape(title)}</h1><p>{_text(text)}</p>{back}</body>
</html>
"""


def sign_in_page(*, base: str, message: str | None = None) -> str:
    """The form that signs in with a key (posted, so the key never goes in a URL)."""
    note = f'<p class="notice" role="alert">{escape(message)}</p>' if message else ""
    return f"""{_head("Sign in · Approvals · humanlayer-async", base)}
<body>
<header><h1>Approvals</h1></header>
<main class="sign-in">
<h2>Sign in</h2>
{note}
<form method="post" action="{escape(base)}/sign-in">
<label for="token">Your key (the console's token, or your own key)</label>
<input id="token" name="token" type="password" autocomplete="current-password" minlength="16" required>
<div class="buttons"><button type="submit" class="approve">Sign in</button></div>
</form>
<p>Or open a sign-in link: the one printed when the console started, or a new one from
<code>humanlayer-async console-link</code>. A link works once, for a few minutes.</p>
</main>
</body>
</html>
"""
