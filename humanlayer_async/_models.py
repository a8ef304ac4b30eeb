"""The records that flow through the SDK: requests, decisions, statuses."""

from __future__ import annotations

import contextlib
import enum
import hashlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from ._codec import digest, dumps
from ._exceptions import ConfigurationError, StoreError

__all__ = [
    "ApprovalRequest",
    "Decision",
    "Execution",
    "Grant",
    "Kind",
    "Principal",
    "Status",
    "Vote",
    "acting_for",
    "current_requester",
    "same_name",
]

Kind = Literal["approval", "question"]

current_requester: ContextVar[str | None] = ContextVar("humanlayer_requester", default=None)
"""Who caused the calls made in this context, recorded as their requests' ``requested_by``."""


@contextlib.contextmanager
def acting_for(person: str | None) -> Iterator[None]:
    """Record ``person`` as who the calls made inside act for (nothing, for ``None``).

    A context variable: it holds for the current task and the tasks it starts inside.
    """
    if person is None:
        yield
        return
    if not isinstance(person, str) or not person.strip():
        raise ConfigurationError(f"who a call acts for must be a non-empty string, not {person!r}")
    token = current_requester.set(person)
    try:
        yield
    finally:
        current_requester.reset(token)


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
class Vote:
    """One approver's answer to a request that needs several (``approvals=`` above one).

    ``by`` and ``user`` name the approver as ``Decision`` does; the same person counts once.
    """

    by: str
    approved: bool
    via: str
    comment: str | None
    at: datetime
    user: str | None = None
    edits: Mapping[str, Any] | None = None
    """The arguments this approval changed; the votes cast before it were for another call."""
    grant: float | None = None
    """Seconds for which this approver also allows the same call (a grant: every counted
    approval must ask for one)."""
    seen: str | None = field(default=None, compare=False)
    """The ``fingerprint`` of the call the voter saw: the vote counts only while it is the
    request's (an edit in between changed the call). Not stored."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer that stands for a request: the first one stored wins.

    ``by`` is who decided, as a principal: their email address when the channel knows
    it, otherwise the channel's own name for them (a Slack user id, a web console user,
    an OS user...). ``user`` is then that channel's own id for them when it differs from
    ``by`` (the Slack user id of an approver whose email Slack shared). ``via`` is the
    channel it came through (``"slack"``, ``"email"``, ``"web"``, ``"console"``,
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
    user: str | None = None
    votes: tuple[Vote, ...] = ()
    """Every vote that made this decision, for a request that needed several approvals."""
    edits: Mapping[str, Any] | None = None
    """The arguments the approver changed before approving: the call ran with them."""
    grant: str | None = None
    """The id of the grant that approved this call without asking (``via == "grant"``);
    ``by`` is then who gave it."""


@dataclass(frozen=True, slots=True)
class Principal:
    """One person, whatever the channel they answer through.

    ``id`` is what decisions record as ``by``: their email address when the channel
    knows it, otherwise the channel's own name for them. ``user`` is the channel's own
    id for them (a Slack user id) when it differs from ``id``; ``groups`` the
    approver-list entries the channel found them to belong to (Slack user groups,
    ``S...``). An approver list names a principal by any of these.
    """

    id: str
    user: str | None = None
    groups: frozenset[str] = frozenset()

    @property
    def names(self) -> frozenset[str]:
        """Every name an approver list may know this person by (emails lower-cased)."""
        return frozenset(
            map(same_name, (self.id, *(() if self.user is None else (self.user,)), *self.groups))
        )

    def matches(self, approvers: tuple[str, ...]) -> bool:
        """Whether ``approvers`` names this person (any of their names)."""
        names = self.names
        return any(same_name(approver) in names for approver in approvers)


def same_name(name: str) -> str:
    """``name`` as approver lists compare it: an email address in any case is one person."""
    return name.lower() if "@" in name else name


@dataclass(frozen=True, slots=True)
class Execution:
    """How far an approved call got, as a durable store recorded it.

    ``state`` is ``"executing"`` once the tool started and ``"executed"`` once it
    returned or raised; ``outcome`` is then ``"ok"`` or the type name of what it raised.
    ``result`` is the JSON text of what it returned, kept for calls made in a run
    (``run_id``) so that a replay gets it back instead of running the tool again.
    """

    state: Literal["executing", "executed"]
    outcome: str | None = None
    result: str | None = None


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
    key: str | None = None
    """The re-attach key (run, function, argument digest, occurrence), for calls made in a run."""
    digest: str | None = None
    """The digest of the arguments as stored; an approval applies to these arguments only."""
    execution: Execution | None = field(default=None, compare=False)
    """How far the approved call got, when a durable store holds the request."""
    requested_by: str | None = None
    """Who caused the call (whoever prompted the agent), when known: they may never decide it."""
    approvals: int = 1
    """How many distinct approvers must approve; one denial denies."""
    votes: tuple[Vote, ...] = field(default=(), compare=False)
    """The votes cast so far, while a request that needs several approvals is pending."""
    editable: Mapping[str, Any] | None = None
    """The JSON Schema of each argument an approver may change before approving."""
    tool: str | None = None
    """The gated function's ``module.qualname``: what a grant given from this request covers."""

    @property
    def status(self) -> Status:
        """``PENDING`` until a decision stands, then the decision's status."""
        return Status.PENDING if self.decision is None else self.decision.status

    @property
    def takes_edits(self) -> bool:
        """Whether an approver may change arguments as they approve: the tool made some
        editable. With several approvals, an edit starts the count again, and an answer
        given on an earlier version of the call (``fingerprint``) no longer counts."""
        return bool(self.editable) and self.kind == "approval"

    @property
    def fingerprint(self) -> str:
        """A short digest of the arguments as they stand now. A channel shows it with its
        buttons and sends it back with the answer (``seen=``), so that an answer applies only
        to the version of the call its approver saw: an edit changes it."""
        if self.digest is not None:
            return self.digest[:16]
        try:
            return digest(self.kwargs)[:16]
        except StoreError:  # arguments without a JSON form (a MemoryStore keeps them as rendered)
            return hashlib.sha256(repr(sorted(self.kwargs.items())).encode()).hexdigest()[:16]

    @property
    def short_id(self) -> str:
        """The first eight characters of the id: enough to tell pending requests apart."""
        return self.id[:8]

    def may_decide(self, by: str | Principal) -> bool:
        """Whether ``by`` may decide this request: anyone when no approvers are set, never
        whoever requested it."""
        if self.is_requester(by):
            return False  # nobody approves what they asked for
        if not self.approvers:
            return True
        return (by if isinstance(by, Principal) else Principal(by)).matches(self.approvers)

    def is_requester(self, by: str | Principal) -> bool:
        """Whether ``by`` is who requested this call (and so may not decide it)."""
        if self.requested_by is None:
            return False
        return same_name(self.requested_by) in (by if isinstance(by, Principal) else Principal(by)).names


@dataclass(frozen=True, slots=True)
class Grant:
    """Calls of one gated tool that may run without asking, for a while (``hl.grant``).

    ``function`` is the tool's ``module.qualname``. A call is covered while the grant is
    ``active``: given by ``approvals`` distinct approvers (``by``, in order; ``users`` their
    channel ids, when they have one), not expired, used fewer than ``max_uses`` times (no
    limit when ``None``), not revoked, and its arguments equal every value in ``where``
    (``None``: any call). It never covers a call made on behalf of one of its granters.
    """

    id: str
    function: str
    where: Mapping[str, Any] | None
    by: tuple[str, ...]
    created_at: datetime
    expires_at: datetime
    max_uses: int | None = None
    uses: int = 0
    approvals: int = 1
    approvers: tuple[str, ...] = ()
    """Who may give, confirm and revoke it: the tool's approvers (anyone when empty)."""
    users: tuple[str | None, ...] = ()
    """Each granter's channel id (a Slack user id), in the order of ``by``; ``None`` where none."""
    revoked_by: str | None = None
    revoked_at: datetime | None = None

    @property
    def confirmed(self) -> bool:
        """Whether enough distinct approvers gave it."""
        return len(self.by) >= self.approvals

    def live(self, now: datetime) -> bool:
        """Whether, at ``now``, it is not expired, used up, or revoked (confirmed or not)."""
        return (
            self.revoked_at is None
            and now < self.expires_at
            and (self.max_uses is None or self.uses < self.max_uses)
        )

    def active(self, now: datetime) -> bool:
        """Whether it covers calls at ``now`` (their arguments and requester aside)."""
        return self.confirmed and self.live(now)

    def covers(self, kwargs: Mapping[str, Any], requested_by: str | None, now: datetime) -> bool:
        """Whether this grant lets a call with ``kwargs`` (as shown to people), made for
        ``requested_by``, run at ``now`` without asking. Values compare by their JSON text:
        ``1``, ``1.0`` and ``True`` are three values, and a value without one matches nothing."""
        if not self.active(now) or (requested_by is not None and self.granted_by(requested_by)):
            return False
        for name, value in (self.where or {}).items():
            if name not in kwargs:
                return False
            try:
                if dumps(kwargs[name], name) != dumps(value, name):
                    return False
            except StoreError:
                return False
        return True

    def granted_by(self, person: str) -> bool:
        """Whether ``person`` (any of their names) is one of the granters."""
        name = same_name(person)
        return any(name == same_name(n) for n in (*self.by, *(u for u in self.users if u is not None)))
