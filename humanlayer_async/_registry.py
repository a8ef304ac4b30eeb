"""Request id → Future, and one timer for every deadline.

Suspending and resolving are O(1) dict operations. Deadlines live in one heap served
by a single ``loop.call_at`` timer, so a hundred thousand pending requests cost a
hundred thousand futures and heap entries, not a hundred thousand timers or tasks.
"""

from __future__ import annotations

import asyncio
import heapq
import math

from ._exceptions import HumanLayerError
from ._models import Decision

__all__ = ["EXPIRED", "Registry"]

EXPIRED = None
"""The result a waiter's future gets when its deadline passes before any decision."""

_COMPACT_SLACK = 1024


class Registry:
    """The futures of the requests this process waits for, keyed by request id."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiting: dict[str, asyncio.Future[Decision | None]] = {}
        self._deadlines: list[tuple[float, str]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._waiting

    def wait(self, request_id: str, deadline: float) -> asyncio.Future[Decision | None]:
        """A future for ``request_id`` that gets its decision, or ``EXPIRED`` at ``deadline``.

        ``deadline`` is in the loop's clock (``loop.time()``).
        """
        future: asyncio.Future[Decision | None] = self._loop.create_future()
        self._waiting[request_id] = future
        heapq.heappush(self._deadlines, (deadline, request_id))
        if deadline < self._timer_at:
            self._arm(deadline)
        return future

    def resolve(self, decision: Decision) -> bool:
        """Wake the waiter of ``decision.request_id``; False when this process has none."""
        future = self.discard(request_id=decision.request_id)
        if future is None or future.done():
            return False
        future.set_result(decision)
        return True

    def discard(self, request_id: str) -> asyncio.Future[Decision | None] | None:
        """Forget the waiter of ``request_id`` and return its future, if there was one."""
        future = self._waiting.pop(request_id, None)
        if not self._waiting:
            self._deadlines.clear()  # nobody waits: no deadline matters any more
        elif len(self._deadlines) > 2 * len(self._waiting) + _COMPACT_SLACK:
            # Entries of answered requests stay in the heap until their deadline; drop
            # them once they outnumber the live ones, so memory follows the pending count.
            self._deadlines = [entry for entry in self._deadlines if entry[1] in self._waiting]
            heapq.heapify(self._deadlines)
        return future

    def close(self) -> int:
        """Fail every waiter (the ``HumanLayer`` that would have woken them is closing); how many."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf
        waiting, self._waiting = self._waiting, {}
        self._deadlines.clear()
        for future in waiting.values():
            if not future.done():
                future.set_exception(
                    HumanLayerError("the HumanLayer was closed while this call waited for a human")
                )
        return len(waiting)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._expire)
        self._timer_at = when

    def _expire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = self._loop.time()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, request_id = heapq.heappop(deadlines)
            future = self._waiting.pop(request_id, None)
            if future is not None and not future.done():
                future.set_result(EXPIRED)
        if deadlines:
            self._arm(deadlines[0][0])
