"""Block Kit for ``SlackChannel``: the request message, its outcome, and the two modals.

Everything a caller or an LLM controls (arguments, context, questions, reasons) is shown
as ``plain_text`` or escaped ``mrkdwn``, so it cannot mention ``@channel`` or forge links.
The identifiers below are what Slack sends back in its callbacks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from .._models import ApprovalRequest, Decision, Status
from .._render import describe_decision, format_value, summarize

__all__ = [
    "ANSWER",
    "ANSWER_INLINE",
    "ANSWER_VIEW",
    "APPROVE",
    "DENY",
    "DENY_VIEW",
    "TEXT_ACTION",
    "TEXT_BLOCK",
    "answer_view",
    "deny_view",
    "escape",
    "outcome_message",
    "request_message",
    "slack_describe",
]

APPROVE = "hl_approve"
"""``action_id`` of the Approve button; its ``value`` is the request id."""
DENY = "hl_deny"
"""``action_id`` of the Deny button; its ``value`` is the request id."""
ANSWER = "hl_answer"
"""``action_id`` of a question's Answer button (opens the answer modal)."""
ANSWER_INLINE = "hl_answer_inline"
"""``action_id`` of the answer box in webhook messages (no modals there); its
``block_id`` is the request id and its ``value`` the answer."""
DENY_VIEW = "hl_deny_reason"
"""``callback_id`` of the modal that asks why; ``private_metadata`` is the request id."""
ANSWER_VIEW = "hl_answer_text"
"""``callback_id`` of the modal that takes an answer; ``private_metadata`` is the request id."""
TEXT_BLOCK = "hl_text"
"""``block_id`` of the text input in both modals."""
TEXT_ACTION = "hl_text_input"
"""``action_id`` of the text input in both modals."""

_SLACK_USER = re.compile(r"^[UW][A-Z0-9]{2,}$")
_FIELD_LIMIT = 1000  # a field may hold 2000 characters
_TEXT_LIMIT = 2900  # a section 3000
_MAX_ARGUMENTS = 20  # four sections of five name/value pairs; a message holds 50 blocks
_ICONS = {
    Status.APPROVED: ":white_check_mark:",
    Status.DENIED: ":x:",
    Status.TIMED_OUT: ":hourglass:",
    Status.CANCELLED: ":no_entry_sign:",
    Status.FAILED: ":warning:",
}

Block = dict[str, Any]


def escape(text: str) -> str:
    """Text made inert for ``mrkdwn``: Slack's three control characters escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def mention(who: str) -> str:
    """A Slack user id as a mention (``<@U024BE7LH>``); anything else as escaped text."""
    return f"<@{who}>" if _SLACK_USER.match(who) else escape(who)


def slack_describe(decision: Decision) -> str:
    """``describe_decision`` as ``mrkdwn``: the decider mentioned, their words escaped."""
    shown = replace(
        decision,
        by=None if decision.by is None else mention(decision.by),
        comment=None if decision.comment is None else escape(decision.comment),
        answer=None if decision.answer is None else escape(decision.answer),
    )
    return describe_decision(shown)


def _plain(text: str, limit: int = _TEXT_LIMIT) -> dict[str, Any]:
    return {"type": "plain_text", "text": format_value(text, limit) or " ", "emoji": False}


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


def _pairs(title: str, values: Mapping[str, Any]) -> list[Block]:
    """Name/value rows in two columns, five rows a section, the values as plain text."""
    items = list(values.items())
    blocks: list[Block] = [{"type": "section", "text": _mrkdwn(f"*{title}*")}] if title else []
    for start in range(0, min(len(items), _MAX_ARGUMENTS), 5):
        fields: list[dict[str, Any]] = []
        for name, value in items[start : start + 5]:
            shown = format_value(value, _FIELD_LIMIT)
            fields += [_mrkdwn(f"*{escape(format_value(name, 100))}*"), _plain(shown or repr(shown))]
        blocks.append({"type": "section", "fields": fields})
    if len(items) > _MAX_ARGUMENTS:
        hidden = len(items) - _MAX_ARGUMENTS
        blocks.append({"type": "context", "elements": [_plain(f"… and {hidden} more not shown")]})
    return blocks


def _body(request: ApprovalRequest) -> list[Block]:
    """What is asked: the question, or the call with its arguments, docstring and context."""
    if request.kind == "question":
        return [
            {"type": "header", "text": _plain("Question from your agent", 150)},
            {"type": "section", "text": _plain(request.message or "")},
        ]
    blocks: list[Block] = [
        {"type": "header", "text": _plain(f"Approval needed: {request.function}", 150)},
        {"type": "section", "text": _mrkdwn(f"The agent wants to run *{escape(request.function)}*")},
    ]
    if request.kwargs:
        blocks += _pairs("", request.kwargs)
    if request.doc:
        blocks.append({"type": "context", "elements": [_plain(request.doc, 500)]})
    if request.context:
        blocks += _pairs("Context", request.context)
    return blocks


def _who_may(approvers: Sequence[str]) -> str:
    if not approvers:
        return "Anyone in this channel may answer"
    return "Approvers: " + ", ".join(mention(who) for who in approvers)


def _expiry(request: ApprovalRequest) -> str:
    fallback = f"{request.expires_at:%Y-%m-%d %H:%M} UTC"
    stamp = int(request.expires_at.timestamp())
    return f"Expires <!date^{stamp}^{{date_short_pretty}} at {{time}}|{fallback}>"


def _button(text: str, action_id: str, request: ApprovalRequest, style: str) -> Block:
    return {
        "type": "button",
        "text": _plain(text, 30),
        "action_id": action_id,
        "value": request.id,
        "style": style,
    }


def _answer_box(request: ApprovalRequest) -> Block:
    return {
        "type": "input",
        "block_id": request.id,
        "dispatch_action": True,
        "label": _plain("Your answer (press Enter to send)", 100),
        "element": {
            "type": "plain_text_input",
            "action_id": ANSWER_INLINE,
            "dispatch_action_config": {"trigger_actions_on": ["on_enter_pressed"]},
        },
    }


def request_message(request: ApprovalRequest, approvers: Sequence[str], *, modals: bool) -> dict[str, Any]:
    """A new request as ``text`` (the notification) and ``blocks``.

    ``approvers`` are who may answer; ``modals`` says whether the buttons may open
    modals (the Web API) or not (an incoming webhook: questions get an answer box).
    """
    footer = {
        "type": "context",
        "elements": [
            _mrkdwn(_who_may(approvers)),
            _mrkdwn(_expiry(request)),
            _mrkdwn(f"Request `{request.short_id}`"),
        ],
    }
    if request.kind == "question":
        answer: Block = (
            {"type": "actions", "elements": [_button("Answer", ANSWER, request, "primary")]}
            if modals
            else _answer_box(request)
        )
        tail = [answer]
    else:
        buttons = [_button("Approve", APPROVE, request, "primary"), _button("Deny", DENY, request, "danger")]
        tail = [{"type": "actions", "elements": buttons}]
    return {"text": summarize(request), "blocks": [*_body(request), footer, *tail]}


def outcome_message(request: ApprovalRequest) -> dict[str, Any]:
    """A decided request: the same body, no buttons, and who decided, how and when."""
    decision = request.decision
    assert decision is not None, "outcome_message needs a decided request"
    icon = ":speech_balloon:" if decision.answer is not None else _ICONS[decision.status]
    outcome = f"{icon} {slack_describe(decision)}"
    blocks = [
        *_body(request),
        {"type": "section", "text": _mrkdwn(outcome[:_TEXT_LIMIT])},
        {"type": "context", "elements": [_mrkdwn(f"Request `{request.short_id}`")]},
    ]
    return {"text": f"{summarize(request)}: {describe_decision(decision)}", "blocks": blocks}


def _modal(request: ApprovalRequest, callback_id: str, title: str, label: str, *, optional: bool) -> Block:
    return {
        "type": "modal",
        "callback_id": callback_id,
        "private_metadata": request.id,
        "title": _plain(title, 24),
        "submit": _plain(title.split()[0], 24),
        "close": _plain("Cancel", 24),
        "blocks": [
            {"type": "section", "text": _plain(summarize(request))},
            {
                "type": "input",
                "block_id": TEXT_BLOCK,
                "optional": optional,
                "label": _plain(label, 100),
                "element": {
                    "type": "plain_text_input",
                    "action_id": TEXT_ACTION,
                    "multiline": True,
                    "max_length": 2000,
                },
            },
        ],
    }


def deny_view(request: ApprovalRequest) -> Block:
    """The modal Deny opens: an optional reason, which becomes the decision's comment."""
    return _modal(request, DENY_VIEW, "Deny request", "Reason (optional)", optional=True)


def answer_view(request: ApprovalRequest) -> Block:
    """The modal Answer opens: the text becomes the question's answer."""
    return _modal(request, ANSWER_VIEW, "Answer question", "Your answer", optional=False)
