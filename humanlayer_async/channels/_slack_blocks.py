"""Block Kit for ``SlackChannel``: the request message, its outcome, and the modals.

Everything a caller or an LLM controls (arguments, context, questions, reasons) reaches
Slack as ``plain_text``, or as ``mrkdwn`` made inert by ``escape``: it cannot mention
``@channel`` or forge links. ``mrkdwn`` text is typed ``Mrkdwn``, which only ``escape``
and ``markup`` make, and every ``mrkdwn`` object, notification ``text`` and reply takes
only ``Mrkdwn``: unescaped text cannot reach Slack by accident.

Texts are shortened to Slack's limits where they must be, and say so where they are
(``… 1,204 more characters``). A message that shortened anything offers no Approve: it
offers the full call in a modal (which approves), or, where no modal can show it, says
where to see and approve it. A request with editable arguments gets an Edit button too,
whose modal holds one text box per argument it can show whole, and approves with what
changed. A request for a tool gets "Approve, and allow the same for 1 hour" next to
Approve, one button per duration offered, behind a confirmation dialog. The identifiers
below are what Slack sends back.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any, NewType, TypeVar

from .._edits import describe_type, edit_text
from .._models import ApprovalRequest, Decision, Status
from .._render import (
    MASK,
    describe_decision,
    describe_votes,
    format_kwargs,
    full_call,
    shorten,
    summarize,
    visible,
)
from ._grant_offer import MAX_GRANT_DURATIONS, describe_duration

__all__ = [
    "ANSWER",
    "ANSWER_INLINE",
    "ANSWER_VIEW",
    "APPROVE",
    "DENY",
    "DENY_VIEW",
    "EDIT",
    "EDIT_BLOCK",
    "EDIT_INPUT",
    "EDIT_VIEW",
    "FULL",
    "FULL_VIEW",
    "GRANTS",
    "TEXT_ACTION",
    "TEXT_BLOCK",
    "Mrkdwn",
    "approvable",
    "deny_view",
    "edit_view",
    "escape",
    "fitted",
    "full_view",
    "markup",
    "notice_view",
    "outcome_message",
    "reminder",
    "request_message",
    "slack_describe",
]

APPROVE = "hl_approve"
"""``action_id`` of the Approve button; its ``value`` is the request id, a space and the call's
``fingerprint`` as the message shows it (every button's value starts so)."""
DENY = "hl_deny"
"""``action_id`` of the Deny button; its ``value`` as Approve's."""
FULL = "hl_full"
"""``action_id`` of the "Show the full call" button (opens the full view); its ``value``
is the request id."""
ANSWER = "hl_answer"
"""``action_id`` of a question's Answer button (opens the answer modal)."""
ANSWER_INLINE = "hl_answer_inline"
"""``action_id`` of the answer box in webhook messages (no modals there); its
``block_id`` is the request id and its ``value`` the answer."""
DENY_VIEW = "hl_deny_reason"
"""``callback_id`` of the modal that asks why; ``private_metadata`` is the request id, a space
and the call's ``fingerprint`` as the modal shows it (every modal's is so)."""
ANSWER_VIEW = "hl_answer_text"
"""``callback_id`` of the modal that takes an answer; ``private_metadata`` as the others'."""
FULL_VIEW = "hl_full_call"
"""``callback_id`` of the modal that shows the full call and approves it; ``private_metadata``
as the others'."""
EDIT = "hl_edit"
"""``action_id`` of the Edit button (opens the edit modal); its ``value`` as Approve's."""
EDIT_VIEW = "hl_edit"
"""``callback_id`` of the modal that edits arguments and approves; ``private_metadata`` as the
others'."""
EDIT_BLOCK = "hl_edit."
"""``block_id`` prefix of the edit modal's text inputs: ``hl_edit.amount`` edits ``amount``."""
EDIT_INPUT = "hl_edit_value"
"""``action_id`` of each text input of the edit modal."""
GRANTS = tuple(f"hl_grant.{n}" for n in range(1, MAX_GRANT_DURATIONS + 1))
"""``action_id`` of each "Approve, and allow the same for ..." button, in the order of the
durations offered (Slack wants the ids of one block distinct); its ``value`` is the request
id, the seconds and the fingerprint, space-separated: ``<id> 3600.0 <fingerprint>``. As many
as a channel may offer."""
TEXT_BLOCK = "hl_text"
"""``block_id`` of the text input in every modal."""
TEXT_ACTION = "hl_text_input"
"""``action_id`` of the text input in every modal."""

Mrkdwn = NewType("Mrkdwn", str)
"""Text Slack may read as ``mrkdwn``: made only by ``escape`` and ``markup``."""

_SLACK_USER = re.compile(r"[UW][A-Z0-9]{2,}")
# Slack's limits (characters): a section's text 3000, a field 2000 (ten fields a section),
# a header 150, a button 75, a notification text 40,000; a message holds 50 blocks, a modal 100.
_TEXT_LIMIT = 3000
_FIELD_LIMIT = 1000  # of the 2000 a field may hold: two columns stay readable
_NOTIFICATION_LIMIT = 3000  # of the 40,000 Slack takes: a phone shows far less
_MAX_ARGUMENTS = 20  # four sections of five name/value pairs
_VIEW_BLOCKS = 100
_INITIAL_LIMIT = 3000  # characters a text input may hold, and so be prefilled with
_BLOCK_ID_LIMIT = 255
_ICONS = {
    Status.APPROVED: ":white_check_mark:",
    Status.DENIED: ":x:",
    Status.TIMED_OUT: ":hourglass:",
    Status.CANCELLED: ":no_entry_sign:",
    Status.FAILED: ":warning:",
}


Block = dict[str, Any]
S = TypeVar("S", bound=str)


def escape(text: str) -> Mrkdwn:
    """``text`` made inert for ``mrkdwn``: ``visible``, then Slack's ``&``, ``<``, ``>`` escaped."""
    return Mrkdwn(visible(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def markup(template: str, *parts: Mrkdwn) -> Mrkdwn:
    """Our own ``mrkdwn`` ``template`` (``str.format`` style) filled with escaped ``parts``."""
    return Mrkdwn(template.format(*parts))


def _fit(value: Any, most: int, form: Callable[[str], S]) -> tuple[S, bool]:
    """``form(shorten(value))`` in at most ``most`` characters, and whether anything was cut.

    ``shorten`` counts characters before ``visible`` spells control characters out (up to
    six characters each) and before ``escape`` (up to five): shorten further until it fits.
    """
    limit = most
    while True:
        shown, cut = shorten(value, limit)
        text = form(shown)
        if len(text) <= most or limit == 0:
            return text, cut
        limit = min(limit - 1, limit * most // len(text))  # in proportion, and always less


def fitted(text: str, most: int) -> Mrkdwn:
    """``text`` escaped in at most ``most`` characters, saying where it is shortened."""
    return _fit(text, most, escape)[0]


def mention(who: str) -> Mrkdwn:
    """A Slack user id as a mention (``<@U024BE7LH>``); anything else as escaped text."""
    if _SLACK_USER.fullmatch(who):
        return markup("<@{}>", escape(who))  # letters and digits: escaping leaves it as it is
    return _fit(who, 100, escape)[0]


def slack_describe(decision: Decision) -> Mrkdwn:
    """``describe_decision`` as ``mrkdwn``: the decider mentioned (by their Slack user id when
    the decision has one), every other part escaped."""
    who = decision.user or decision.by
    by = None if who is None else mention(who)
    if by is not None and decision.edits:  # shown after the name, escaped, instead of as they are
        by = markup("{} with {}", by, fitted(format_kwargs(decision.edits, 60), 1000))
    shown = replace(
        decision,
        by=by,
        edits=None,
        via=_fit(decision.via, 50, escape)[0],
        comment=None if decision.comment is None else _fit(decision.comment, 1000, escape)[0],
        answer=None if decision.answer is None else _fit(decision.answer, 120, escape)[0],
    )
    return Mrkdwn(describe_decision(shown))  # every part it shows is escaped above


class _Texts:
    """The text objects of one message or view, and whether any of them left something out."""

    def __init__(self) -> None:
        self.cut = False

    def plain(self, value: Any, most: int = _TEXT_LIMIT) -> Block:
        """``value`` as ``plain_text`` of at most ``most`` characters, saying where it shortens."""
        text, cut = _fit(value, most, visible)
        self.cut |= cut
        return {"type": "plain_text", "text": text or " ", "emoji": False}

    def name(self, name: str) -> Block:
        """An argument's name: bold when Python could have written it, else plain text."""
        if not name.isidentifier():
            return self.plain(name, 100)
        text, cut = _fit(name, 100, escape)
        self.cut |= cut
        return _mrkdwn(markup("*{}*", text))

    def pairs(self, title: Mrkdwn | None, values: Mapping[str, Any]) -> list[Block]:
        """Name/value rows in two columns, five rows a section, the values as plain text."""
        items = list(values.items())
        blocks: list[Block] = [] if title is None else [{"type": "section", "text": _mrkdwn(title)}]
        for start in range(0, min(len(items), _MAX_ARGUMENTS), 5):
            fields: list[Block] = []
            for name, value in items[start : start + 5]:
                shown = repr(value) if isinstance(value, str) and not value else value
                fields += [self.name(name), self.plain(shown, _FIELD_LIMIT)]
            blocks.append({"type": "section", "fields": fields})
        if len(items) > _MAX_ARGUMENTS:
            self.cut = True
            hidden = len(items) - _MAX_ARGUMENTS
            blocks.append({"type": "context", "elements": [self.plain(f"… {hidden:,} more not shown")]})
        return blocks

    def body(self, request: ApprovalRequest) -> list[Block]:
        """What is asked: the question, or the call with its arguments, docstring and context."""
        if request.kind == "question":
            return [
                {"type": "header", "text": self.plain("Question from your agent", 150)},
                {"type": "section", "text": self.plain(request.message or "")},
            ]
        function = _fit(request.function, 200, escape)[0]  # a Python name: never that long
        blocks: list[Block] = [
            {"type": "header", "text": self.plain(f"Approval needed: {request.function}", 150)},
            {"type": "section", "text": _mrkdwn(markup("The agent wants to run *{}*", function))},
        ]
        if request.kwargs:
            blocks += self.pairs(None, request.kwargs)
        if request.doc:  # the tool's own text, not the call: shortening it (said) hides nothing asked
            doc = {"type": "plain_text", "text": _fit(request.doc, 500, visible)[0], "emoji": False}
            blocks.append({"type": "context", "elements": [doc]})
        if request.context:
            blocks += self.pairs(markup("*Context*"), request.context)
        return blocks


def _mrkdwn(text: Mrkdwn) -> Block:
    """A ``mrkdwn`` text object: only escaped text may be one."""
    return {"type": "mrkdwn", "text": text}


def _message(text: Mrkdwn, blocks: list[Block]) -> dict[str, Any]:
    """A message: its notification ``text`` (what phones show) and its ``blocks``."""
    return {"text": text, "blocks": blocks}


def _notification(request: ApprovalRequest) -> Mrkdwn:
    """The request in one escaped line, kept well inside Slack's 40,000 characters."""
    return _fit(summarize(request), _NOTIFICATION_LIMIT, escape)[0]


def _who_may(approvers: Sequence[str]) -> Mrkdwn:
    if not approvers:
        return markup("Anyone in this channel may answer")
    return markup("Approvers: " + ", ".join("{}" for _ in approvers), *map(mention, approvers))


def _progress(request: ApprovalRequest) -> list[Block]:
    """How far a request that needs several approvals got: ``1 of 2 approvals: alice``."""
    if request.approvals == 1:
        return []
    return [_mrkdwn(_fit(describe_votes(request.votes, request.approvals), 500, escape)[0])]


def _expiry(request: ApprovalRequest) -> Mrkdwn:
    fallback = escape(f"{request.expires_at:%Y-%m-%d %H:%M} UTC")
    stamp = escape(str(int(request.expires_at.timestamp())))
    return markup("Expires <!date^{}^{{date_short_pretty}} at {{time}}|{}>", stamp, fallback)


def _button(
    texts: _Texts, text: str, action_id: str, request: ApprovalRequest, style: str | None = None
) -> Block:
    value = f"{request.id} {request.fingerprint}"  # the answer is to the call as shown here
    button = {"type": "button", "text": texts.plain(text, 75), "action_id": action_id, "value": value}
    return button if style is None else {**button, "style": style}


def _grant_button(texts: _Texts, request: ApprovalRequest, action_id: str, seconds: float) -> Block:
    """Approve, and allow the same call for ``seconds``: asked again in a confirmation dialog."""
    how_long = describe_duration(seconds)
    tool = _fit(request.function, 80, visible)[0]
    said = (
        f"Approve and allow the same calls of {tool} for {how_long}? "
        "Calls with these same arguments then run without asking until it ends."
    )
    if request.approvals > 1:
        said += (
            f" This call needs {request.approvals} approvals: the same calls are allowed only "
            "when every approver asks for it."
        )
    return {
        **_button(texts, f"Approve, and allow the same for {how_long}", action_id, request),
        "value": f"{request.id} {seconds!r} {request.fingerprint}",
        "confirm": {
            "title": texts.plain("Allow the same calls?", 100),
            "text": texts.plain(said, 300),
            "confirm": texts.plain("Approve and allow", 30),
            "deny": texts.plain("Cancel", 30),
        },
    }


def _answer_box(texts: _Texts, request: ApprovalRequest) -> Block:
    return {
        "type": "input",
        "block_id": request.id,
        "dispatch_action": True,
        "label": texts.plain("Your answer (press Enter to send)", 100),
        "element": {
            "type": "plain_text_input",
            "action_id": ANSWER_INLINE,
            "dispatch_action_config": {"trigger_actions_on": ["on_enter_pressed"]},
        },
    }


def approvable(request: ApprovalRequest) -> bool:
    """Whether the request's message shows all of it, so that it may be decided in the message."""
    texts = _Texts()
    texts.body(request)
    return not texts.cut


def request_message(
    request: ApprovalRequest,
    approvers: Sequence[str],
    *,
    modals: bool,
    mentions: Sequence[Mrkdwn] = (),
    grants: Sequence[float] = (),
) -> dict[str, Any]:
    """A new request as ``text`` (the notification) and ``blocks``.

    ``approvers`` are who may answer; ``modals`` says whether the buttons may open
    modals (the Web API) or not (an incoming webhook: questions get an answer box).
    ``mentions`` (``<@U...>``, ``<!subteam^S...>``) lead the message, so Slack notifies them.
    A request the message shows whole gets Approve (or an answer box), and, when it names
    its tool, "Approve, and allow the same for ..." for each of ``grants`` (seconds). One
    it shortened gets "Show the full call" when a modal can show all of it, which
    approves, and otherwise a note saying where to see and approve it; Deny is always
    there. A question's Answer modal shows the whole question, and is offered when it can.
    An approval with editable arguments gets Edit when ``edit_view`` has something to edit.
    """
    texts = _Texts()
    body = texts.body(request)
    footer = {
        "type": "context",
        "elements": [
            _mrkdwn(_who_may(approvers)),
            *_progress(request),
            _mrkdwn(_expiry(request)),
            _mrkdwn(markup("Request `{}`", escape(request.short_id))),
        ],
    }
    whole, viewable = not texts.cut, modals and full_view(request) is not None
    tail: list[Block] = []
    if not whole:
        tail.append({"type": "context", "elements": [texts.plain(_shortened(request, viewable, modals))]})
    if request.kind == "question":
        if viewable:
            tail.append(
                {"type": "actions", "elements": [_button(texts, "Answer", ANSWER, request, "primary")]}
            )
        elif whole and not modals:
            tail.append(_answer_box(texts, request))
    else:
        buttons: list[Block] = []
        if whole:
            buttons.append(_button(texts, "Approve", APPROVE, request, "primary"))
            if request.tool is not None:
                buttons += [
                    _grant_button(texts, request, *offer) for offer in zip(GRANTS, grants, strict=False)
                ]
        elif viewable:
            buttons.append(_button(texts, "Show the full call", FULL, request, "primary"))
        if modals and request.takes_edits and edit_view(request) is not None:
            buttons.append(_button(texts, "Edit", EDIT, request))
        buttons.append(_button(texts, "Deny", DENY, request, "danger"))
        tail.append({"type": "actions", "elements": buttons})
    if not mentions:
        return _message(_notification(request), [*body, footer, *tail])
    called = Mrkdwn(" ".join(mentions))
    head = {"type": "section", "text": _mrkdwn(markup("{}: your decision is needed", called))}
    return _message(markup("{} {}", called, _notification(request)), [head, *body, footer, *tail])


def _shortened(request: ApprovalRequest, viewable: bool, modals: bool) -> str:
    """What a message that shortened its request says: where to see and decide all of it."""
    what = "question" if request.kind == "question" else "call"
    said = f"Parts of this {what} are shortened above (see the … marks)"
    if viewable:
        how = (
            "Answer shows all of it"
            if what == "question"
            else "Show the full call to see all of it and approve it"
        )
        return f"{said}. {how}."
    why = "is too large for Slack" if modals else "cannot be shown through an incoming webhook"
    decide = "answer it" if what == "question" else "approve it (Deny works here)"
    return (
        f"{said}, and the whole {what} {why}: see it and {decide} in another approval channel "
        "(the web console, email or the terminal)."
    )


def reminder(request: ApprovalRequest, mentions: Sequence[Mrkdwn]) -> Mrkdwn:
    """A reminder that ``request`` still waits, mentioning ``mentions`` (its approvers)."""
    lead = markup("{} ", Mrkdwn(" ".join(mentions))) if mentions else markup("")
    return markup("{}Reminder: this still waits for a decision: {}", lead, _notification(request))


def outcome_message(request: ApprovalRequest, *, granted: float | None = None) -> dict[str, Any]:
    """A decided request: the same body, no buttons, and who decided, how and when, and
    whether the same call is allowed for a while (``granted``: the seconds its one approver
    asked for; a request that needed several approvals has them in its votes)."""
    decision = request.decision
    assert decision is not None, "outcome_message needs a decided request"
    icon = ":speech_balloon:" if decision.answer is not None else _ICONS[decision.status]
    grant = _grant_outcome(decision, granted)
    blocks = [
        *_Texts().body(request),
        {"type": "section", "text": _mrkdwn(markup(icon + " {}{}", slack_describe(decision), grant))},
        {"type": "context", "elements": [_mrkdwn(markup("Request `{}`", escape(request.short_id)))]},
    ]
    outcome = _fit(describe_decision(decision), 1000, escape)[0]
    return _message(markup("{}: {}{}", _notification(request), outcome, grant), blocks)


def _grant_outcome(decision: Decision, granted: float | None) -> Mrkdwn:
    """``, allowing the same for 1 hour (until 14:05 UTC)`` when the approval gave a grant
    (with several approvals: when every vote asked for one, for the shortest); why not,
    when some approvers asked and the others did not; else nothing."""
    if not decision.approved:
        return markup("")
    if decision.votes:
        asked = [vote.grant for vote in decision.votes]
        if not any(asked):
            return markup("")
        if not all(asked):
            return markup(", without allowing the same: that needs every approver to ask for it")
        granted = min(seconds for seconds in asked if seconds is not None)
    if granted is None:
        return markup("")
    until = decision.decided_at + timedelta(seconds=granted)
    form = "%H:%M UTC" if until.date() == decision.decided_at.date() else "%Y-%m-%d %H:%M UTC"
    return markup(
        ", allowing the same for {} (until {})",
        escape(describe_duration(granted)),
        escape(until.strftime(form)),
    )


def _chunks(text: str, size: int) -> list[str]:
    """``text`` in pieces of at most ``size`` characters, cut after a newline where one is near."""
    pieces: list[str] = []
    start = 0
    while start < len(text):
        end = start + size
        if end < len(text):
            newline = text.rfind("\n", start, end)
            end = newline + 1 if newline > start + size // 2 else end
        pieces.append(text[start:end])
        start = end
    return pieces


def _layout(texts: _Texts, chunk: str) -> Block:
    """A piece of ``full_call`` as ``plain_text``: each line ``visible`` (as ``full_call`` made
    it already), the newlines between them kept as the layout they are."""
    text = "\n".join(visible(line) for line in chunk.split("\n"))
    if len(text) > _TEXT_LIMIT:  # not text full_call wrote: shortened, saying so
        return texts.plain(chunk)
    return {"type": "plain_text", "text": text or " ", "emoji": False}


def _full_call(texts: _Texts, request: ApprovalRequest) -> list[Block]:
    """``full_call`` as the ``plain_text`` of one section each (Slack's 3000 characters)."""
    return [_layout(texts, chunk) for chunk in _chunks(full_call(request), _TEXT_LIMIT)]


def full_view(request: ApprovalRequest) -> Block | None:
    """The whole request (``full_call``) in a modal that decides it; ``None`` when too long.

    The text is split across plain-text sections of Slack's 3000 characters, within the
    100 blocks a modal holds. An approval's view approves it, with an optional comment;
    a question's takes the answer.
    """
    chunks = _chunks(full_call(request), _TEXT_LIMIT)
    if len(chunks) >= _VIEW_BLOCKS:  # one block is the text input
        return None
    texts = _Texts()
    shown = [{"type": "section", "text": _layout(texts, chunk)} for chunk in chunks]
    if request.kind == "question":
        labels = ("Answer question", "Answer", "Cancel", "Your answer")
        return _modal(texts, request, ANSWER_VIEW, labels, shown, optional=False)
    labels = ("Full call", "Approve", "Close", "Comment (optional)")
    return _modal(texts, request, FULL_VIEW, labels, shown, optional=True)


def deny_view(request: ApprovalRequest) -> Block:
    """The modal Deny opens: an optional reason, which becomes the decision's comment."""
    texts = _Texts()
    shown = [{"type": "section", "text": texts.plain(summarize(request))}]
    labels = ("Deny request", "Deny", "Cancel", "Reason (optional)")
    return _modal(texts, request, DENY_VIEW, labels, shown, optional=True)


def _not_editable(name: str, value: Any, text: str | None) -> str | None:
    """Why argument ``name`` gets no edit box (``None``: it gets one, prefilled with ``text``)."""
    if value == MASK:
        return "masked, so it cannot be edited"
    if text is None:
        return "its value has no JSON form"
    if len(text) > _INITIAL_LIMIT:
        return (
            f"longer than the {_INITIAL_LIMIT:,} characters a Slack text box holds "
            "(edit it in another approval channel)"
        )
    if len(EDIT_BLOCK + name) > _BLOCK_ID_LIMIT:
        return "its name is too long for Slack (edit it in another approval channel)"
    return None


def _edit_box(texts: _Texts, name: str, text: str, schema: Mapping[str, Any]) -> Block:
    """The text input that edits argument ``name``, prefilled with its value ``text``."""
    element: Block = {
        "type": "plain_text_input",
        "action_id": EDIT_INPUT,
        "multiline": "\n" in text or len(text) > 100,
        "max_length": _INITIAL_LIMIT,
    }
    if text:  # Slack refuses an empty initial_value
        element["initial_value"] = text
    return {
        "type": "input",
        "block_id": EDIT_BLOCK + name,
        "optional": True,  # an emptied box is the empty text
        "label": texts.plain(name, 2000),
        "hint": texts.plain(describe_type(schema), 300),
        "element": element,
    }


def edit_view(request: ApprovalRequest) -> Block | None:
    """The modal Edit opens: a text box per editable argument, prefilled with its value, and an
    optional comment; it approves with the arguments whose box changed.

    An argument no box can hold whole (masked, too long) gets none, and the modal says why.
    Above the boxes: the call in one line when its message showed all of it, else the whole
    call as ``full_view`` shows it. ``None`` when nothing can be edited here, or it all takes
    more than a modal holds.
    """
    if not request.takes_edits or request.editable is None:
        return None
    texts = _Texts()
    boxes: list[Block] = []
    left: list[str] = []
    for name, value in request.kwargs.items():
        schema = request.editable.get(name)
        if schema is None:
            continue
        text = edit_text(value, schema)
        why = _not_editable(name, value, text)
        if why is None and text is not None:
            boxes.append(_edit_box(texts, name, text, schema))
        else:
            left.append(f"{name}: {why}")
    if not boxes:
        return None
    # The message showed all of the call, or else it is seen whole here, before it is approved.
    chunks = [texts.plain(summarize(request))] if approvable(request) else _full_call(texts, request)
    shown: list[Block] = [{"type": "section", "text": chunk} for chunk in chunks]
    said = "Approve runs the call with the values below; whatever you leave as it is stays as asked."
    if left:
        said += " Not editable here: " + "; ".join(left) + "."
    shown.append({"type": "context", "elements": [texts.plain(said)]})
    if len(shown) + len(boxes) + 1 > _VIEW_BLOCKS:  # and the comment
        return None
    labels = ("Edit and approve", "Approve", "Cancel", "Comment (optional)")
    return _modal(texts, request, EDIT_VIEW, labels, [*shown, *boxes], optional=True)


def notice_view(text: Mrkdwn) -> Block:
    """A modal that only says ``text`` (a vote counted, the request waits for more): closed by its button."""
    texts = _Texts()
    return {
        "type": "modal",
        "title": texts.plain("Vote counted", 24),
        "close": texts.plain("Close", 24),
        "blocks": [{"type": "section", "text": _mrkdwn(text)}],
    }


def _modal(
    texts: _Texts,
    request: ApprovalRequest,
    callback_id: str,
    labels: tuple[str, str, str, str],
    shown: list[Block],
    *,
    optional: bool,
) -> Block:
    """A modal showing ``shown`` over a text input; ``labels``: title, submit, close, input."""
    title, submit, close, label = labels
    return {
        "type": "modal",
        "callback_id": callback_id,
        "private_metadata": f"{request.id} {request.fingerprint}",
        "title": texts.plain(title, 24),
        "submit": texts.plain(submit, 24),
        "close": texts.plain(close, 24),
        "blocks": [
            *shown,
            {
                "type": "input",
                "block_id": TEXT_BLOCK,
                "optional": optional,
                "label": texts.plain(label, 100),
                "element": {
                    "type": "plain_text_input",
                    "action_id": TEXT_ACTION,
                    "multiline": True,
                    "max_length": 2000,
                },
            },
        ],
    }
