"""MemoryStore: the default store, one process, nothing survives a restart."""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio

from .._audit import AuditEntry
from .._exceptions import StoreError, UnknownGrant, UnknownRequest
from .._models import ApprovalRequest, Decision, Execution, Grant, Kind, Principal, Status, Vote
from ._rows import edited, execution_so_far, expired_decision, joined, retention_seconds, tally
from .base import (
    Step,
    StoreEvent,
    Tally,
    age_seconds,
    decision_entry,
    given_entry,
    grant_entry,
    page_limit,
    requested_entry,
    vote_entry,
)

__all__ = ["MemoryStore"]

_HUMAN = frozenset({Status.APPROVED, Status.DENIED})


def _order(request: ApprovalRequest) -> tuple[datetime, str]:
    """Where a request comes in ``list_pending``: by creation, ties by id."""
    return request.created_at, request.id


class MemoryStore:
    """Requests and decisions in a dict, for one process.

    It meets the same contract as the durable stores (re-attach by key within a run, the
    execution ledger, expiry checked when deciding, the audit trail and its history), so
    code and tests move between stores unchanged. Decided requests are kept for
    ``retention`` (so late clicks still get "already approved by ...") and then dropped.
    The audit trail keeps the last ``audit_size`` entries in ``audit_log``. Nothing
    survives the process: use ``SQLiteStore`` or ``PostgresStore`` for that.
    """

    def __init__(self, *, retention: float | timedelta = 3600.0, audit_size: int = 10_000) -> None:
        self._retention = retention_seconds(retention)
        # Requests as created; their decisions and runs apart, so that deciding and running
        # a call copies no request (the hot path of every approval).
        self._requests: dict[str, ApprovalRequest] = {}
        self._decisions: dict[str, Decision] = {}
        self._executions: dict[str, Execution] = {}
        self._votes: dict[str, tuple[Vote, ...]] = {}  # of requests that need several approvals
        self._keys: dict[str, str] = {}  # a run's re-attach key → its request's id
        self._decided: deque[tuple[float, str]] = deque()
        self._claims: dict[str, datetime] = {}
        self._claim_expiries: list[tuple[datetime, str]] = []  # a heap, soonest first
        self._steps: dict[str, dict[str, Step]] = {}  # of requests with reminders or escalations
        self._grants: dict[str, Grant] = {}
        self._closed = anyio.Event()
        self.audit_log: deque[AuditEntry] = deque(maxlen=audit_size)

    def __len__(self) -> int:
        return len(self._requests)

    def __repr__(self) -> str:
        return f"MemoryStore(requests={len(self._requests)})"

    async def open(self) -> None:
        if self._closed.is_set():
            raise StoreError(f"{self!r} is closed")

    async def create(self, request: ApprovalRequest) -> None:
        await self.create_or_attach(request)

    async def create_or_attach(self, request: ApprovalRequest) -> ApprovalRequest:
        if request.key is not None:
            earlier = self._keys.get(request.key)
            if earlier is not None and earlier in self._requests:
                return await self.get(earlier)
            self._keys[request.key] = request.id
        self._requests[request.id] = request
        self.audit_log.append(requested_entry(request))
        return request

    async def get(self, request_id: str) -> ApprovalRequest:
        request = self._request(request_id)
        decision = self._decision(request, expire=True)
        execution = self._executions.get(request_id)
        votes = self._votes.get(request_id, ())
        if decision is None and execution is None and not votes:
            return request
        return replace(request, decision=decision, execution=execution, votes=votes)

    def _request(self, request_id: str) -> ApprovalRequest:
        try:
            return self._requests[request_id]
        except KeyError:
            raise UnknownRequest(request_id) from None

    def _decision(self, request: ApprovalRequest, *, expire: bool) -> Decision | None:
        """The decision that stands; with ``expire``, a timeout stored first when past the expiry."""
        decision = self._decisions.get(request.id)
        if decision is None and expire:
            now = datetime.now(UTC)
            if request.expires_at <= now:
                decision = self._store(request.id, expired_decision(request.id, now))
        return decision

    async def decide(self, decision: Decision) -> Decision:
        # Approvals and denials only count before the expiry; timeouts and cancellations always.
        request = self._request(decision.request_id)
        standing = self._decision(request, expire=decision.status in _HUMAN)
        if standing is not None:
            return standing
        if decision.edits:
            self._requests[request.id] = edited(request, decision.edits)
        return self._store(request.id, decision)

    async def vote(self, request_id: str, vote: Vote, needed: int) -> Tally:
        request = self._request(request_id)
        votes = self._votes.get(request_id, ())
        standing = self._decision(request, expire=True)
        if standing is not None:
            return Tally(standing, votes, False)
        after, decision = tally(request, votes, vote, needed)
        if vote.edits:
            self._requests[request_id] = edited(request, vote.edits)
        if after is not votes:
            self._votes[request_id] = after
            self.audit_log.append(vote_entry(request_id, vote, sum(v.approved for v in after), needed))
        if decision is not None:
            self._store(request_id, decision)
        return Tally(decision, after, decision is not None)

    def _store(self, request_id: str, decision: Decision) -> Decision:
        now = time.monotonic()
        self._prune(now - self._retention)  # before this one: it stays at least until the next decision
        self._decisions[request_id] = decision
        self.audit_log.append(decision_entry(decision))
        self._decided.append((now, request_id))
        return decision

    def _prune(self, horizon: float) -> int:
        dropped = 0
        while self._decided and self._decided[0][0] <= horizon:
            request_id = self._decided.popleft()[1]
            request = self._requests.pop(request_id, None)
            self._decisions.pop(request_id, None)
            self._executions.pop(request_id, None)
            self._votes.pop(request_id, None)
            self._steps.pop(request_id, None)
            if request is not None and request.key is not None:
                self._keys.pop(request.key, None)
            dropped += request is not None
        return dropped

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
        # One pass over the requests (a dict has no index by creation): a page keeps only the
        # ``limit`` oldest as it goes, so it never sorts or copies every pending request.
        limit = page_limit(limit)
        start = None if after is None else self._request(after)
        found = self._matching(run_id, kind, function, age_seconds(older_than), id_prefix)
        if start is not None:
            found = (r for r in found if (r.created_at, r.id) > (start.created_at, start.id))
        page = sorted(found, key=_order) if limit is None else heapq.nsmallest(limit, found, key=_order)
        return [r if (votes := self._votes.get(r.id)) is None else replace(r, votes=votes) for r in page]

    async def count_pending(
        self,
        *,
        run_id: str | None = None,
        kind: Kind | None = None,
        function: str | None = None,
        older_than: float | timedelta | None = None,
        id_prefix: str | None = None,
    ) -> int:
        return sum(1 for _ in self._matching(run_id, kind, function, age_seconds(older_than), id_prefix))

    def _matching(
        self,
        run_id: str | None,
        kind: Kind | None,
        function: str | None,
        age: float | None,
        id_prefix: str | None,
    ) -> Iterator[ApprovalRequest]:
        """The pending requests the filters keep, unordered; each past its expiry (of any run
        or kind) is marked timed out as the pass meets it."""
        now = datetime.now(UTC)
        made_by = None if age is None else now - timedelta(seconds=age)
        for request in list(self._requests.values()):
            if request.id in self._decisions:
                continue
            if request.expires_at <= now:
                self._store(request.id, expired_decision(request.id, now))
            elif (
                (run_id is None or request.run_id == run_id)
                and (kind is None or request.kind == kind)
                and (function is None or function in (request.function, request.tool))
                and (made_by is None or request.created_at <= made_by)
                and (id_prefix is None or request.id.startswith(id_prefix))
            ):
                yield request

    async def record(self, entry: AuditEntry) -> None:
        self.audit_log.append(entry)

    async def history(
        self, *, request_id: str | None = None, since: datetime | None = None
    ) -> list[AuditEntry]:
        return [
            entry
            for entry in self.audit_log
            if (request_id is None or entry.request_id == request_id) and (since is None or entry.at >= since)
        ]

    async def begin_execution(self, request_id: str, digest: str | None) -> Execution | None:
        request = self._request(request_id)
        execution_so_far(request, digest)  # the checks; the run so far is kept apart
        earlier = self._executions.get(request_id)
        decision = self._decisions.get(request_id)
        if earlier is None and decision is not None and decision.status is Status.APPROVED:
            self._executions[request_id] = Execution("executing")
        return earlier

    async def finish_execution(self, request_id: str, outcome: str, result: str | None) -> None:
        if request_id in self._requests:
            self._executions[request_id] = Execution("executed", outcome, result)

    async def claim(self, key: str, expires_at: datetime) -> bool:
        now = datetime.now(UTC)
        while self._claim_expiries and self._claim_expiries[0][0] <= now:
            del self._claims[heapq.heappop(self._claim_expiries)[1]]
        if key in self._claims:
            return False
        self._claims[key] = expires_at
        heapq.heappush(self._claim_expiries, (expires_at, key))
        return True

    async def schedule(self, request_id: str, steps: Sequence[Step]) -> None:
        self._request(request_id)
        stored = self._steps.setdefault(request_id, {})
        for step in steps:
            stored.setdefault(step.name, step)

    async def steps(self, request_id: str) -> list[Step]:
        return sorted(self._steps.get(request_id, {}).values(), key=lambda step: step.name)

    async def take(self, request_id: str, step: str, lease: timedelta) -> int | None:
        now = datetime.now(UTC)
        stored = self._steps.get(request_id, {}).get(step)
        if stored is None or stored.due_at is None or stored.due_at > now:
            return None
        if stored.lease_until is not None and stored.lease_until > now:
            return None
        self._steps[request_id][step] = replace(stored, lease_until=now + lease)
        return stored.number

    async def done(self, request_id: str, step: str, number: int, next_due: datetime | None) -> None:
        stored = self._steps.get(request_id, {}).get(step)
        if stored is not None and stored.number == number:
            self._steps[request_id][step] = Step(step, next_due, number + 1)

    async def escalate(
        self, request_id: str, approvers: tuple[str, ...], entry: AuditEntry
    ) -> ApprovalRequest:
        request = await self.get(request_id)
        if request.decision is not None:
            return request
        if request.approvers:
            added = tuple(a for a in dict.fromkeys(approvers) if a not in request.approvers)
            self._requests[request_id] = replace(
                self._requests[request_id], approvers=request.approvers + added
            )
        self.audit_log.append(entry)
        return await self.get(request_id)

    async def add_grant(self, grant: Grant) -> None:
        self._grants[grant.id] = grant
        self.audit_log.append(given_entry(grant))

    async def confirm_grant(self, grant_id: str, by: Principal) -> Grant:
        grant = self._grant(grant_id)
        after = joined(grant, by)
        if after is not grant:
            self._grants[grant_id] = after
            self.audit_log.append(grant_entry("grant.confirmed", after, by.id, granters=len(after.by)))
        return after

    async def use_grant(
        self, function: str, kwargs: Mapping[str, Any], requested_by: str | None
    ) -> Grant | None:
        now = datetime.now(UTC)
        for grant in self._grants.values():
            if grant.function == function and grant.covers(kwargs, requested_by, now):
                used = self._grants[grant.id] = replace(grant, uses=grant.uses + 1)
                return used
        return None

    async def revoke_grant(self, grant_id: str, by: str) -> Grant:
        grant = self._grant(grant_id)
        if grant.revoked_at is None:
            grant = self._grants[grant_id] = replace(grant, revoked_by=by, revoked_at=datetime.now(UTC))
            self.audit_log.append(grant_entry("grant.revoked", grant, by))
        return grant

    async def grants(self, *, function: str | None = None, active: bool = True) -> list[Grant]:
        now = datetime.now(UTC)
        return [
            grant
            for grant in self._grants.values()
            if (function is None or grant.function == function) and (not active or grant.live(now))
        ]

    def _grant(self, grant_id: str) -> Grant:
        try:
            return self._grants[grant_id]
        except KeyError:
            raise UnknownGrant(grant_id) from None

    async def prune(self, older_than: float | timedelta | None = None) -> int:
        age = self._retention if older_than is None else retention_seconds(older_than)
        horizon = datetime.now(UTC) - timedelta(seconds=age)
        for grant in [g for g in self._grants.values() if g.expires_at <= horizon]:
            del self._grants[grant.id]
        return self._prune(time.monotonic() - age)

    async def watch(self) -> AsyncIterator[StoreEvent]:
        # One process: every change was made here and was seen when it was made.
        await self._closed.wait()
        return
        yield  # pragma: no cover - makes this an async generator

    async def aclose(self) -> None:
        self._closed.set()
