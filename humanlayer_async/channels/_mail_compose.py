"""The emails EmailChannel sends: the request, the help reply, and the follow-up once decided.

Every text shown passes through ``visible``: no control, bidi or line-breaking character
of an argument reaches the reader raw, so none can forge a header, a line or the order of
what is read; the HTML part escapes the same text on top. Where a value is shortened the
body says so next to it, and every request carries the full call (``full_call``) as a
UTF-8 text attachment.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate

from .._models import ApprovalRequest, Decision
from .._render import describe_decision, format_value, full_call, shorten, summarize, visible
from ._mail_reply import ANSWER_HELP, QUESTION_HELP, utf8_safe

__all__ = [
    "compose",
    "follow_up_text",
    "full_call_attachment",
    "help_text",
    "reminder_text",
    "request_bodies",
    "subject",
]

SHORTENED = "(shortened: the full call is attached)"
"""Said next to each value the body shows shortened."""

_Rows = list[tuple[str, str]]


def subject(request: ApprovalRequest) -> str:
    """``[Approval needed] send_email(to='bob@...')`` or ``[Question] <the question>``: one line."""
    if request.kind == "question":
        return visible(f"[Question] {format_value(request.message or '', 100)}")
    return visible(f"[Approval needed] {summarize(request)}")


def _attachment_name(request: ApprovalRequest) -> str:
    return f"request-{request.id[:8]}.txt"


def full_call_attachment(request: ApprovalRequest) -> tuple[str, str]:
    """The attachment every request carries: ``(request-<first 8 of the id>.txt, full_call)``."""
    return _attachment_name(request), full_call(request)


def _lines(text: str) -> str:
    """Multi-line ``text`` (a docstring, a question) with each line made visible."""
    return "\n".join(visible(line) for line in text.strip().split("\n"))


def _rows(values: dict[str, object]) -> _Rows:
    """One row per value, shortened as ``shorten`` says, with ``SHORTENED`` where it was."""
    rows = []
    for name, value in values.items():
        text, cut = shorten(value)
        rows.append((visible(name), f"{text}  {SHORTENED}" if cut else text))
    return rows


def _sections(request: ApprovalRequest) -> tuple[str, str, list[tuple[str, _Rows]], str]:
    """The intro, the call (or question), titled rows of facts, and how to answer."""
    expiry = ("Expires", f"{request.expires_at:%Y-%m-%d %H:%M:%S} UTC")
    if request.kind == "question":
        return "An agent asks you:", _lines(request.message or ""), [("", [expiry])], QUESTION_HELP
    sections: list[tuple[str, _Rows]] = []
    if request.doc:
        sections.append(("", [("What it does", _lines(request.doc))]))
    sections.append(("Arguments", _rows(dict(request.kwargs))))
    if request.context:
        sections.append(("Context", _rows(dict(request.context))))
    sections.append(("", [expiry, ("Request", request.id)]))
    how = ANSWER_HELP
    if request.takes_edits and request.editable:  # no grammar of its own here: where to change them
        names = ", ".join(visible(name) for name in request.editable)
        how += (
            f"\nTo change {names} before approving, approve in the web console or with\n"
            f"humanlayer-async approve {request.id} --set <name>=<value>.\n"
        )
    return (
        "An agent wants to make this call and needs your approval:",
        summarize(request),
        sections,
        how,
    )


def request_bodies(request: ApprovalRequest) -> tuple[str, str]:
    """The plain-text and HTML bodies of a request."""
    intro, call, sections, how = _sections(request)
    attached = f"The full call, untruncated, is attached: {_attachment_name(request)}"
    text = [intro, "", *(f"    {line}" for line in call.split("\n")), "", attached, ""]
    markup = [
        f"<p>{html.escape(intro)}</p>",
        f"<pre>{html.escape(call)}</pre>",
        f"<p>{html.escape(attached)}</p>",
    ]
    for title, rows in sections:
        if title:
            text.append(f"{title}:")
            markup.append(f"<h3>{html.escape(title)}</h3>")
        indent = "  " if title else ""
        text.extend(f"{indent}{name}: {value}".replace("\n", f"\n{indent}    ") for name, value in rows)
        text.append("")
        cells = "".join(
            f"<tr><th align='left' valign='top'>{html.escape(name)}</th>"
            f"<td style='white-space: pre-wrap'>{html.escape(value)}</td></tr>"
            for name, value in rows
        )
        markup.append(f"<table>{cells}</table>")
    text.append(how)
    markup.append(f"<pre>{html.escape(how)}</pre>")
    return "\n".join(text) + "\n", "<html><body>" + "\n".join(markup) + "</body></html>\n"


def help_text(request: ApprovalRequest) -> str:
    """The short reply to an approver whose reply was not a clear answer."""
    if request.kind == "question":
        return f"Your reply had no answer above the quoted message.\n\n{QUESTION_HELP}\n"
    return f"Your reply did not approve or deny {summarize(request)}.\n\n{ANSWER_HELP}\n"


def reminder_text(request: ApprovalRequest) -> str:
    """A reminder that the request still waits, answered as the request is."""
    how = QUESTION_HELP if request.kind == "question" else ANSWER_HELP
    return f"Reminder: this still waits for your decision.\n\n{summarize(request)}\n\n{how}\n"


def follow_up_text(request: ApprovalRequest, decision: Decision) -> str:
    """Who decided, how and when, once the request is decided, timed out or cancelled."""
    return f"{summarize(request)}\n\n{describe_decision(decision)}\n"


def compose(
    *,
    sender: str,
    to: str,
    subject: str,
    text: str,
    message_id: str,
    html_body: str | None = None,
    attachment: tuple[str, str] | None = None,
    reply_to: str | None = None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    auto_submitted: str = "auto-generated",
) -> EmailMessage:
    """One message, with ``Date``, ``Message-ID`` and threading headers.

    ``attachment`` is ``(filename, text)``, attached as UTF-8 ``text/plain``.
    ``Auto-Submitted`` (RFC 3834) keeps out-of-office responders from answering it.
    """
    message = EmailMessage()
    message["Subject"] = utf8_safe(subject)
    message["From"] = sender
    message["To"] = to
    if reply_to:
        message["Reply-To"] = reply_to
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = message_id
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to
    if references:
        message["References"] = " ".join(references)
    message["Auto-Submitted"] = auto_submitted
    message["X-Auto-Response-Suppress"] = "All"
    message.set_content(utf8_safe(text))
    if html_body is not None:
        message.add_alternative(utf8_safe(html_body), subtype="html")
    if attachment is not None:
        filename, content = attachment
        message.add_attachment(utf8_safe(content), subtype="plain", charset="utf-8", filename=filename)
    return message
