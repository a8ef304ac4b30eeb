"""The Store protocol: where requests, decisions and the audit trail live."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, runtime_checkable

from .._audit import AuditEntry, AuditEvent, make_entry
from .._models import ApprovalRequest, Decision, Execution, Grant, Kind, Principal, Status, Vote

__all__ = [
    "DurableStore",
    "Step",
    "Store",
    "StoreEvent",
    "Tally",
    "age_seconds",
    "decision_entry",
    "given_entry",
    "grant_entry",
    "page_limit",
    "requested_entry",
    "vote_entry",
]

_FINAL_EVENTS: dict[Status, AuditEvent] = {
    Status.APPROVED: "approval.decided",
    Status.DENIED: "approval.decided",
    Status.TIMED_OUT: "approval.timed_out",
    Status.CANCELLED: "approval.cancelled",
    Status.FAILED: "approval.failed",
}


@dataclass(frozen=True, slots=True)
class Tally:
    """What a vote came to: the decision that stands (``None``: the request still waits for
    more approvals), every vote so far, and whether this vote made the decision."""

    decision: Decision | None
    votes: tuple[Vote, ...]
    decided_now: bool


@dataclass(frozen=True, slots=True)
class Step:
    """One scheduled step of a pending request (a reminder series, an escalation).

    ``due_at`` is when it is next due (``None``: done); ``number`` counts the times it was
    carried out; ``lease_until`` is set while a process carries it out (``take``).
    """

    name: str
    due_at: datetime | None
    number: int = 0
    lease_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class StoreEvent:
    """A change written to the store: a new request, a vote counted, or a decision that now stands.

    ``"resync"`` (with an empty ``request_id``) says changes may have been missed (the store
    reconnected and could not replay them): a consumer re-reads every request it waits for.
    """

    kind: Literal["requested", "voted", "decided", "granted", "resync"]
    request_id: str
    """The request's id; for ``"granted"`` (a grant given, confirmed or revoked) the grant's."""


@runtime_checkable
class Store(Protocol):
    """Persists requests, decisions, the execution ledger and the audit trail.

    One contract for every store (``MemoryStore``, ``SQLiteStore``, ``PostgresStore``), held
    by the same conformance tests:

    - ``decide`` is atomic: of two concurrent decisions for one request, from one process
      or many, exactly one is stored and both callers get it back. Approvals and denials
      count only before the request's expiry; past it the store stores the timeout
      (``expired_decision``) and returns that.
    - A pending request read past its expiry is marked timed out first.
    - ``vote`` is atomic too: votes on one request from many processes at once are each
      counted once (``tally`` says what each comes to), and the vote that meets the quorum
      or denies stores the decision with it.
    - The store writes the audit entry of each request it creates (``requested_entry``),
      each vote it counts (``vote_entry``) and each decision it stores (``decision_entry``),
      with it (in one transaction where it has transactions), so a process killed in
      between cannot leave one without the other.
    """

    async def open(self) -> None:
        """Connect and check the store can be used; ``StoreError`` (or ``ConfigurationError``
        for a store that does not exist and may not be created) when it cannot."""
        ...

    async def create(self, request: ApprovalRequest) -> None:
        """Store a new pending request (its id is new)."""
        ...

    async def create_or_attach(self, request: ApprovalRequest) -> ApprovalRequest:
        """Store ``request``, unless one with its ``key`` exists: return the one that stands.

        The returned request has ``request.id`` when it was created here.
        """
        ...

    async def get(self, request_id: str) -> ApprovalRequest:
        """The request with its decision, if any. Raises ``UnknownRequest``."""
        ...

    async def decide(self, decision: Decision) -> Decision:
        """Store ``decision`` unless one already stands; return the one that stands.

        Raises ``UnknownRequest`` for an id the store does not hold.
        """
        ...

    async def vote(self, request_id: str, vote: Vote, needed: int) -> Tally:
        """Count ``vote`` on a request that needs ``needed`` approvals, as ``tally`` says.

        Raises ``UnknownRequest`` for an id the store does not hold.
        """
        ...

    async def list_pending(
        self,
        *,
        run_id: str | None = None,
        kind: Kind | None = None,
        function: str | None = None,
        older_than: float | timedelta | None = None,
        id_prefix: str | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[ApprovalRequest]:
        """Pending requests, oldest first by ``(created_at, id)``, marking those past their
        expiry timed out first.

        Filters: ``run_id``, ``kind``; ``function``, the gated function's name or its
        ``module.qualname`` (``tool``); ``older_than``, created at least that long ago (seconds
        or a ``timedelta``; by the database's clock where there is one); ``id_prefix``, ids
        that start with it. Pages by keyset: ``after``, the last request of the previous page
        (``UnknownRequest`` when the store does not hold it), and ``limit``, at most that many
        (``None``: every one; ``ValueError`` below 1). A page is read from an index, whatever
        the store holds: ``after=page[-1].id`` until a page is shorter than ``limit``.
        """
        ...

    async def count_pending(
        self,
        *,
        run_id: str | None = None,
        kind: Kind | None = None,
        function: str | None = None,
        older_than: float | timedelta | None = None,
        id_prefix: str | None = None,
    ) -> int:
        """How many pending requests ``list_pending`` with these filters lists, all pages."""
        ...

    async def record(self, entry: AuditEntry) -> None:
        """Append one entry to the audit trail."""
        ...

    async def history(
        self, *, request_id: str | None = None, since: datetime | None = None
    ) -> list[AuditEntry]:
        """The audit trail, oldest first, optionally of one request or from ``since`` on."""
        ...

    async def begin_execution(self, request_id: str, digest: str | None) -> Execution | None:
        """Claim the approved request's one run: ``None`` when this caller may run it now.

        Otherwise returns how far an earlier run got. Raises ``ArgumentsChanged`` when
        ``digest`` differs from the stored one; ``None`` (a call outside a run, which stored
        these very arguments itself) is not compared (the checks of ``execution_so_far``).
        """
        ...

    async def finish_execution(self, request_id: str, outcome: str, result: str | None) -> None:
        """Record that the run ended (``outcome``: ``"ok"`` or an exception's type name)."""
        ...

    async def claim(self, key: str, expires_at: datetime) -> bool:
        """Claim ``key`` until ``expires_at``: ``True`` the first time, ``False`` after.

        Atomic across every handle on the store, so of a fleet's processes exactly one
        wins (what makes a web console sign-in code single-use behind a load balancer).
        Claims past their expiry may be forgotten, and then ``key`` may be claimed again.
        """
        ...

    async def schedule(self, request_id: str, steps: Sequence[Step]) -> None:
        """Store ``request_id``'s steps, each unless a step of that name is stored already (a
        re-attaching process schedules the same steps again: the stored ones carry on).
        Raises ``UnknownRequest`` for an id the store does not hold."""
        ...

    async def steps(self, request_id: str) -> list[Step]:
        """The request's scheduled steps, by name."""
        ...

    async def take(self, request_id: str, step: str, lease: timedelta) -> int | None:
        """Lease a due step for ``lease``: its ``number`` when this caller may carry it out,
        ``None`` when it is not due, is done, or another caller's lease has not expired.

        Atomic across every handle on the store: of a fleet's processes one takes it. A
        caller that dies before ``done`` lets the lease expire, and the step is taken again.
        """
        ...

    async def done(self, request_id: str, step: str, number: int, next_due: datetime | None) -> None:
        """Mark taken step ``number`` carried out: due again at ``next_due`` (``None``: done)."""
        ...

    async def escalate(
        self, request_id: str, approvers: tuple[str, ...], entry: AuditEntry
    ) -> ApprovalRequest:
        """Widen a pending request's approvers by ``approvers`` (once each) and append
        ``entry``, together; returns the request (unchanged once decided, or when it had no
        approver list: then anyone may decide it already)."""
        ...

    async def add_grant(self, grant: Grant) -> None:
        """Store a new grant (its id is new) with its ``grant.given`` audit entry."""
        ...

    async def confirm_grant(self, grant_id: str, by: Principal) -> Grant:
        """Add ``by`` to the grant's granters (once: the same person counts once); returns it.

        Raises ``UnknownGrant``. The store does not check ``by`` may grant: callers do.
        """
        ...

    async def use_grant(
        self, function: str, kwargs: Mapping[str, Any], requested_by: str | None
    ) -> Grant | None:
        """Count one use of an active grant of ``function`` that covers a call with ``kwargs``
        (as shown to people) made for ``requested_by``; ``None`` when none does.

        Atomic across every handle on the store: concurrent uses never exceed ``max_uses``.
        A use is no ``"granted"`` event: the decision it makes is announced as any other.
        """
        ...

    async def revoke_grant(self, grant_id: str, by: str) -> Grant:
        """Revoke a grant (a revoked one stays revoked, by whoever did it first). Raises
        ``UnknownGrant``."""
        ...

    async def grants(self, *, function: str | None = None, active: bool = True) -> list[Grant]:
        """Grants, oldest first: the live ones (``Grant.live``: active, or waiting for more
        granters), or with ``active=False`` every one the store keeps.

        ``prune`` deletes grants expired longer ago than the retention."""
        ...

    async def prune(self, older_than: float | timedelta | None = None) -> int:
        """Delete requests decided longer ago than ``older_than`` (default: the store's
        retention); returns how many. The audit trail is kept."""
        ...

    def watch(self) -> AsyncIterator[StoreEvent]:
        """Changes written through other handles on the same store (other processes).

        A store may also yield the process's own changes: consumers are idempotent.
        The iterator ends when the store is closed.
        """
        ...

    async def aclose(self) -> None:
        """Release connections and files; ends every ``watch()`` iterator."""
        ...


DurableStore = Store
"""The name the durable extras had before every store met one contract (kept for imports)."""


def page_limit(limit: int | None) -> int | None:
    """``list_pending``'s ``limit``, checked: ``None`` (every one) or a whole number from 1."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be None or a whole number from 1, not {limit!r}")
    return limit


_MAX_AGE = 100 * 365 * 86400.0
"""Seconds no request is older than: a longer ``older_than`` selects none either, and is cut
to this so that no clock subtracts more than its dates can hold."""


def age_seconds(older_than: float | timedelta | None) -> float | None:
    """``list_pending``'s ``older_than`` in seconds, checked (``None``: any age)."""
    if older_than is None:
        return None
    seconds = older_than.total_seconds() if isinstance(older_than, timedelta) else older_than
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds < math.inf:
        raise ValueError(
            f"older_than must be a non-negative number of seconds or a timedelta, not {older_than!r}"
        )
    return min(float(seconds), _MAX_AGE)


def requested_entry(request: ApprovalRequest) -> AuditEntry:
    """The audit entry (and log line) of a newly stored request."""
    by = {} if request.requested_by is None else {"requested_by": request.requested_by}
    return make_entry(
        "approval.requested",
        request.id,
        function=request.function,
        kind=request.kind,
        kwargs=request.kwargs,
        expires_at=request.expires_at.isoformat(),
        **by,
    )


def decision_entry(decision: Decision) -> AuditEntry:
    """The audit entry (and log line) of a decision that now stands (with the edits it made:
    the request's entry has the values they replaced; and the grant that made it, if one did)."""
    more: dict[str, Any] = {} if decision.user is None else {"user": decision.user}
    if decision.edits:
        more["edits"] = dict(decision.edits)
    if decision.grant is not None:
        more["grant"] = decision.grant
    return make_entry(
        _FINAL_EVENTS[decision.status],
        decision.request_id,
        status=decision.status.value,
        by=decision.by,
        via=decision.via,
        comment=decision.comment,
        **more,
    )


def vote_entry(request_id: str, vote: Vote, count: int, needed: int) -> AuditEntry:
    """The audit entry (and log line) of a vote counted: ``count`` approvals of ``needed`` so far."""
    fields: dict[str, Any] = {
        "by": vote.by,
        "approved": vote.approved,
        "via": vote.via,
        "comment": vote.comment,
    }
    if vote.user is not None:
        fields["user"] = vote.user
    if vote.edits:
        fields["edits"] = dict(vote.edits)
    return make_entry("approval.voted", request_id, **fields, approvals=count, needed=needed)


def grant_entry(event: AuditEvent, grant: Grant, by: str, **fields: Any) -> AuditEntry:
    """The audit entry (and log line) of a grant given, confirmed or revoked (keyed by its id)."""
    return make_entry(event, grant.id, function=grant.function, by=by, **fields)


def given_entry(grant: Grant) -> AuditEntry:
    """The audit entry of a grant given (or proposed, when it needs more granters): its terms."""
    return grant_entry(
        "grant.given",
        grant,
        grant.by[0],
        where=None if grant.where is None else dict(grant.where),
        expires_at=grant.expires_at.isoformat(),
        max_uses=grant.max_uses,
        approvals=grant.approvals,
    )
