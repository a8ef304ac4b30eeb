"""MemoryStore: the default store, one process, nothing survives a restart."""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import anyio

from .._audit import AuditEntry
from .._exceptions import UnknownRequest
from .._models import ApprovalRequest, Decision, Kind
from ._rows import retention_seconds
from .base import StoreEvent

__all__ = ["MemoryStore"]


class MemoryStore:
    """Requests and decisions in a dict, for one process.

    Decided requests are kept for ``retention`` (so late clicks still get "already
    approved by ...") and then dropped. The audit trail keeps the last ``audit_size``
    entries in ``audit_log``. Nothing survives the process: use ``SQLiteStore`` or
    ``PostgresStore`` for that.
    """

    def __init__(self, *, retention: float | timedelta = 3600.0, audit_size: int = 10_000) -> None:
        self._retention = retention_seconds(retention)
        self._requests: dict[str, ApprovalRequest] = {}
        self._decided: deque[tuple[float, str]] = deque()
        self._claims: dict[str, datetime] = {}
        self._claim_expiries: list[tuple[datetime, str]] = []  # a heap, soonest first
        self._closed = anyio.Event()
        self.audit_log: deque[AuditEntry] = deque(maxlen=audit_size)

    def __len__(self) -> int:
        return len(self._requests)

    def __repr__(self) -> str:
        return f"MemoryStore(requests={len(self._requests)})"

    async def create(self, request: ApprovalRequest) -> None:
        self._requests[request.id] = request

    async def get(self, request_id: str) -> ApprovalRequest:
        try:
            return self._requests[request_id]
        except KeyError:
            raise UnknownRequest(request_id) from None

    async def decide(self, decision: Decision) -> Decision:
        request = await self.get(decision.request_id)
        if request.decision is not None:
            return request.decision
        self._requests[request.id] = replace(request, decision=decision)
        now = time.monotonic()
        self._decided.append((now, request.id))
        self._prune(now)
        return decision

    def _prune(self, now: float) -> None:
        horizon = now - self._retention
        while self._decided and self._decided[0][0] <= horizon:
            self._requests.pop(self._decided.popleft()[1], None)

    async def list_pending(
        self, *, run_id: str | None = None, kind: Kind | None = None
    ) -> list[ApprovalRequest]:
        return [
            request
            for request in self._requests.values()
            if request.decision is None
            and (run_id is None or request.run_id == run_id)
            and (kind is None or request.kind == kind)
        ]

    async def record(self, entry: AuditEntry) -> None:
        self.audit_log.append(entry)

    async def claim(self, key: str, expires_at: datetime) -> bool:
        now = datetime.now(UTC)
        while self._claim_expiries and self._claim_expiries[0][0] <= now:
            del self._claims[heapq.heappop(self._claim_expiries)[1]]
        if key in self._claims:
            return False
        self._claims[key] = expires_at
        heapq.heappush(self._claim_expiries, (expires_at, key))
        return True

    async def watch(self) -> AsyncIterator[StoreEvent]:
        # One process: every change was made here and was seen when it was made.
        await self._closed.wait()
        return
        yield  # pragma: no cover - makes this an async generator

    async def aclose(self) -> None:
        self._closed.set()
