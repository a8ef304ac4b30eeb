"""The records that flow through the SDK: requests, decisions, statuses."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

__all__ = ["ApprovalRequest", "Decision", "Kind", "Status"]

Kind = Literal["approval", "question"]


class Status(enum.StrEnum):
    """Where a request stands. Every status but ``PENDING`` is final."""

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    FAILED = "failed"
    """No channel could deliver the request."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer that stands for a request: the first one stored wins.

    ``by`` is who decided (a Slack user id, an email address, an OS user...), ``via``
    the channel it came through (``"slack"``, ``"email"``, ``"web"``, ``"console"``,
    ``"api"``, or ``"timeout"``). ``answer`` holds the text of an answered question.
    """

    request_id: str
    approved: bool
    status: Status
    by: str | None
    via: str
    comment: str | None
    decided_at: datetime
    answer: str | None = None


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """One gated call (``kind="approval"``) or one question to a human (``"question"``).

    ``kwargs`` are the call's bound arguments, defaults applied, as rendered for people:
    secrets are masked by the ``render`` hook before a request is stored or sent.
    ``decision`` is ``None`` while the request is pending.
    """

    id: str
    kind: Kind
    function: str
    kwargs: Mapping[str, Any]
    context: Mapping[str, Any]
    approvers: tuple[str, ...]
    created_at: datetime
    expires_at: datetime
    run_id: str | None = None
    message: str | None = None
    """The question's text, for ``kind="question"``."""
    doc: str | None = None
    """The gated function's docstring, shown to approvers."""
    decision: Decision | None = field(default=None, compare=False)

    @property
    def status(self) -> Status:
        """``PENDING`` until a decision stands, then the decision's status."""
        return Status.PENDING if self.decision is None else self.decision.status

    @property
    def short_id(self) -> str:
        """The first eight characters of the id: enough to tell pending requests apart."""
        return self.id[:8]

    def may_decide(self, by: str) -> bool:
        """Whether ``by`` may decide this request (anyone, when no approvers are set)."""
        return not self.approvers or by in self.approvers
