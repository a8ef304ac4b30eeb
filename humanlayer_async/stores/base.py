"""The Store protocol: where requests, decisions and the audit trail live."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol, runtime_checkable

from .._audit import AuditEntry, AuditEvent, make_entry
from .._models import ApprovalRequest, Decision, Execution, Kind, Status

__all__ = ["DurableStore", "Store", "StoreEvent", "decision_entry", "requested_entry"]

_FINAL_EVENTS: dict[Status, AuditEvent] = {
    Status.APPROVED: "approval.decided",
    Status.DENIED: "approval.decided",
    Status.TIMED_OUT: "approval.timed_out",
    Status.CANCELLED: "approval.cancelled",
    Status.FAILED: "approval.failed",
}


@dataclass(frozen=True, slots=True)
class StoreEvent:
    """A change written to the store: a new request, or a decision that now stands."""

    kind: Literal["requested", "decided"]
    request_id: str


@runtime_checkable
class Store(Protocol):
    """Persists requests and decisions; the first decision stored for a request wins.

    Implementations must make ``decide`` atomic: of two concurrent decisions for one
    request, from one process or many, exactly one is stored and both callers get it back.
    """

    async def create(self, request: ApprovalRequest) -> None:
        """Store a new pending request (its id is new)."""
        ...

    async def get(self, request_id: str) -> ApprovalRequest:
        """The request with its decision, if any. Raises ``UnknownRequest``."""
        ...

    async def decide(self, decision: Decision) -> Decision:
        """Store ``decision`` unless one already stands; return the one that stands.

        Raises ``UnknownRequest`` for an id the store does not hold.
        """
        ...

    async def list_pending(
        self, *, run_id: str | None = None, kind: Kind | None = None
    ) -> list[ApprovalRequest]:
        """Pending requests, oldest first, optionally of one run or one kind."""
        ...

    async def record(self, entry: AuditEntry) -> None:
        """Append one entry to the audit trail."""
        ...

    async def claim(self, key: str, expires_at: datetime) -> bool:
        """Claim ``key`` until ``expires_at``: ``True`` the first time, ``False`` after.

        Atomic across every handle on the store, so of a fleet's processes exactly one
        wins (what makes a web console sign-in code single-use behind a load balancer).
        Claims past their expiry may be forgotten, and then ``key`` may be claimed again.
        """
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


@runtime_checkable
class DurableStore(Store, Protocol):
    """A store that outlives the process: what re-attach, the CLI and ``prune`` need.

    Requests carry their arguments as JSON, a ``key`` for re-attach and the arguments'
    ``digest``; an expired pending request is marked timed out by whichever process
    reads it first. A durable store writes the audit entry of each request it creates
    (``requested_entry``) and each decision it stores (``decision_entry``) in the same
    transaction, so a process killed in between cannot leave one without the other.
    """

    async def create_or_attach(self, request: ApprovalRequest) -> ApprovalRequest:
        """Store ``request``, unless one with its ``key`` exists: return the one that stands.

        The returned request has ``request.id`` when it was created here.
        """
        ...

    async def begin_execution(self, request_id: str, digest: str | None) -> Execution | None:
        """Claim the approved request's one run: ``None`` when this caller may run it now.

        Otherwise returns how far an earlier run got. Raises ``ArgumentsChanged`` when
        ``digest`` differs from the stored one.
        """
        ...

    async def finish_execution(self, request_id: str, outcome: str, result: str | None) -> None:
        """Record that the run ended (``outcome``: ``"ok"`` or an exception's type name)."""
        ...

    async def history(
        self, *, request_id: str | None = None, since: datetime | None = None
    ) -> list[AuditEntry]:
        """The audit trail, oldest first, optionally of one request or from ``since`` on."""
        ...

    async def prune(self, older_than: float | timedelta | None = None) -> int:
        """Delete requests decided longer ago than ``older_than`` (default: the store's
        retention); returns how many. The audit trail is kept."""
        ...


def requested_entry(request: ApprovalRequest) -> AuditEntry:
    """The audit entry (and log line) of a newly stored request."""
    return make_entry(
        "approval.requested",
        request.id,
        function=request.function,
        kind=request.kind,
        kwargs=request.kwargs,
        expires_at=request.expires_at.isoformat(),
    )


def decision_entry(decision: Decision) -> AuditEntry:
    """The audit entry (and log line) of a decision that now stands."""
    return make_entry(
        _FINAL_EVENTS[decision.status],
        decision.request_id,
        status=decision.status.value,
        by=decision.by,
        via=decision.via,
        comment=decision.comment,
    )
