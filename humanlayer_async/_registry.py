"""Request id → Future, and one timer for every deadline.

Suspending and resolving are O(1) dict operations. Deadlines live in one heap served
by a single ``loop.call_at`` timer, so a hundred thousand pending requests cost a
hundred thousand futures and heap entries, not a hundred thousand timers or tasks.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import math

from ._models import Decision

__all__ = ["CLOSED", "EXPIRED", "Outcome", "Registry"]

EXPIRED = None
"""The result a waiter's future gets when its deadline passes before any decision."""


class _Closed(enum.Enum):
    CLOSED = "closed"


CLOSED = _Closed.CLOSED
"""The result a waiter's future gets when the ``HumanLayer`` closes first: a result, not an
exception, so a future whose caller never awaited it (still delivering, then cancelled)
leaves no "exception was never retrieved" behind."""

Outcome = Decision | None | _Closed
"""What a waiter's future holds: the decision, ``EXPIRED`` or ``CLOSED``."""

_COMPACT_SLACK = 1024


class Registry:
    """The futures of the requests this process waits for, keyed by request id."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the first waiter
        self._waiting: dict[str, asyncio.Future[Outcome]] = {}
        # More waiters of one request (two callers re-attached to it): rare, so kept apart
        # and costing the usual single waiter nothing.
        self._also: dict[str, list[asyncio.Future[Outcome]]] = {}
        self._deadlines: list[tuple[float, str]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._waiting

    def waiting(self) -> list[str]:
        """The ids of the requests waited for."""
        return list(self._waiting)

    def wait(self, request_id: str, deadline: float) -> asyncio.Future[Outcome]:
        """A future for ``request_id`` that gets its decision, or ``EXPIRED`` at ``deadline``.

        ``deadline`` is in the loop's clock (``loop.time()``).
        """
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        if request_id in self._waiting:  # another caller waits for it too: both get the decision
            self._also.setdefault(request_id, []).append(future)
        else:
            self._waiting[request_id] = future
        heapq.heappush(self._deadlines, (deadline, request_id))
        if deadline < self._timer_at:
            self._arm(deadline)
        return future

    def resolve(self, decision: Decision) -> bool:
        """Wake the waiters of ``decision.request_id``; False when this process has none."""
        return self._settle(decision.request_id, decision)

    def _settle(self, request_id: str, result: Outcome) -> bool:
        futures = [self._waiting.pop(request_id, None), *self._also.pop(request_id, ())]
        woken = False
        for future in futures:
            if future is not None and not future.done():
                future.set_result(result)
                woken = True
        self._forgotten()
        return woken

    def discard(self, request_id: str, future: asyncio.Future[Outcome] | None = None) -> None:
        """Forget ``future`` (by default: every waiter) of ``request_id``."""
        others = self._also.get(request_id)
        if future is not None and others:
            if future in others:
                others.remove(future)
            elif self._waiting.get(request_id) is future:
                self._waiting[request_id] = others.pop()
            if not others:
                del self._also[request_id]
            return
        self._waiting.pop(request_id, None)
        self._also.pop(request_id, None)
        self._forgotten()

    def _forgotten(self) -> None:
        """Keep the deadlines' heap in step with the waiters once some are gone."""
        if not self._waiting:
            self._deadlines.clear()  # nobody waits: no deadline matters any more
        elif len(self._deadlines) > 2 * len(self._waiting) + _COMPACT_SLACK:
            # Entries of answered requests stay in the heap until their deadline; drop
            # them once they outnumber the live ones, so memory follows the pending count.
            self._deadlines = [entry for entry in self._deadlines if entry[1] in self._waiting]
            heapq.heapify(self._deadlines)

    def close(self) -> int:
        """Wake every waiter with ``CLOSED`` (what would have woken them is gone); how many.

        The registry stays usable: a later waiter waits as usual.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf
        waiting, self._waiting = self._waiting, {}
        also, self._also = self._also, {}
        self._deadlines.clear()
        for future in [*waiting.values(), *(f for futures in also.values() for f in futures)]:
            if not future.done():
                future.set_result(CLOSED)
        return len(waiting)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer = self._loop.call_at(when, self._expire)
        self._timer_at = when

    def _expire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        assert self._loop is not None
        now = self._loop.time()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, request_id = heapq.heappop(deadlines)
            for future in [self._waiting.pop(request_id, None), *self._also.pop(request_id, ())]:
                if future is not None and not future.done():
                    future.set_result(EXPIRED)
        if deadlines:
            self._arm(deadlines[0][0])
