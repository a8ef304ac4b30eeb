"""Group commit: concurrent writes of one kind combined into one transaction.

A durable store pays for a transaction mostly once, whatever it holds (a commit, a round
trip or a thread hop, a lock taken in commit order), so a thousand concurrent calls are
served far faster by a few transactions of many rows than by a thousand of one. A
``Batcher`` gives each caller its own awaitable answer and runs their items together:

- No waiting for a batch to fill: the first item starts a flush at the event loop's next
  turn, so an item alone costs what it cost before; items that arrive while ``concurrency``
  flushes are running (one, by default) wait for the next one (at most ``max_size`` each).
  One flush at a time makes the batches larger, and the fewer statements cost less than
  the wait: measured with 4 agent processes on PostgreSQL (``benchmarks/fleet.py``), one
  flush at a time of each kind stored decisions about 15% faster than two, and took the
  99th percentile from a decision to its tool running from 51-65 ms to 34-35 ms.
- A flush that fails as a whole (one item the database refuses rolls back the batch's
  transaction) is run again item by item, each in its own transaction: the failure reaches
  only the callers whose items fail alone, and every other item is written once. A
  stored decision is never written twice: a store's flush writes a decision only where
  none stands, and each item's answer says which stands.
- A caller cancelled before its item's flush began takes the item back (nothing is
  written); once it began, the item is written or not with the rest, as a transaction
  cancelled mid-commit may or may not have been.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["Batcher"]

I = TypeVar("I")  # noqa: E741 (an item)
R = TypeVar("R")

Flush = Callable[[Sequence[I]], Awaitable[Sequence[R | BaseException]]]
"""Writes items together; returns each item's answer (or the error that is its alone), in order."""


class Batcher(Generic[I, R]):
    """Runs the items submitted by concurrent callers through ``flush``, many at a time."""

    def __init__(self, flush: Flush[I, R], *, max_size: int = 256, concurrency: int = 1) -> None:
        self._flush = flush
        self._max_size = max_size
        self._concurrency = concurrency
        self._queue: deque[tuple[I, asyncio.Future[R]]] = deque()
        self._draining = 0  # tasks that flush until the queue is empty
        self._tasks: set[asyncio.Task[None]] = set()  # (the loop keeps only weak references)

    async def submit(self, item: I) -> R:
        """``item``'s answer, once the flush that wrote it committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        entry = (item, future)
        self._queue.append(entry)
        if self._draining < self._concurrency:
            self._draining += 1
            task = loop.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            return await future
        except asyncio.CancelledError:
            # Not flushed yet: taken back, nothing written. (In a flush already: written or not
            # with the rest; its future is cancelled, so its answer is dropped.)
            with contextlib.suppress(ValueError):
                self._queue.remove(entry)
            raise

    async def _drain(self) -> None:
        try:
            while self._queue:
                taken = [self._queue.popleft() for _ in range(min(self._max_size, len(self._queue)))]
                try:
                    await self._settle(taken)
                except BaseException as exc:  # (the loop closing): nobody waits for an answer forever
                    for _, future in taken:
                        if not future.done():
                            future.set_exception(
                                exc if isinstance(exc, Exception) else asyncio.CancelledError()
                            )
                    raise
        finally:
            # In the step that found the queue empty: an item queued after it starts another drain.
            self._draining -= 1

    async def _settle(self, taken: list[tuple[I, asyncio.Future[R]]]) -> None:
        try:
            answers = await self._flush([item for item, _ in taken])
        except Exception as exc:
            if len(taken) == 1:
                answers = [exc]
            else:  # one bad item fails the batch's transaction: each alone, in a transaction of its own
                answers = []
                for item, _ in taken:
                    try:
                        answers.extend(await self._flush([item]))
                    except Exception as alone:
                        answers.append(alone)
        for (_, future), answer in zip(taken, answers, strict=True):
            if future.done():
                continue
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)
