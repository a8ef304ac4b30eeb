"""The runtime: the one task group that owns every background task, with an explicit state.

The channels' inbound sides, the listener, the store follower and the channel updates
all run in it. It starts on the first use (``async with hl`` or the first gated call),
on the event loop of that use, in a supervisor task it owns and awaits when it closes.

A part that dies after it started (a channel's ``run`` raising, the listener failing)
moves the runtime to ``FAILED``: ``wake`` wakes every call waiting at once with an
error naming the part, and new calls are refused with it, instead of waiting out their
timeout in silence. Parts that can recover (the store follower) retry on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Awaitable, Callable, Hashable, Iterator
from typing import Any, Protocol

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from ._audit import logger
from ._exceptions import ConfigurationError, HumanLayerError

__all__ = ["Part", "Runtime", "State"]

_DRAIN_SECONDS = 10.0
"""How long ``aclose()`` lets counted work in flight (cancellations, channel updates) finish."""


class State(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    FAILED = "failed"
    """A part died after it started (or the start failed): calls are refused with ``error``."""
    CLOSING = "closing"
    CLOSED = "closed"


class Part(Protocol):
    """A background task started with ``task_group.start``: ``task_status.started()`` once ready."""

    def __call__(self, *, task_status: anyio.abc.TaskStatus[None]) -> Awaitable[None]: ...


class _Status:
    """Passes ``started()`` on, remembering that it was called."""

    __slots__ = ("_inner", "done")

    def __init__(self, inner: anyio.abc.TaskStatus[None]) -> None:
        self._inner, self.done = inner, False

    def started(self, value: None = None) -> None:
        self.done = True
        self._inner.started(value)


class Runtime:
    """Owns every background task of one ``HumanLayer``.

    ``start`` is called once, inside the task group, to start the initial parts (with
    ``start_part``). ``wake`` wakes every call still waiting (they then raise ``error``, or
    say the ``HumanLayer`` closed) and returns how many: called once a part died, and first
    thing when the runtime closes.
    """

    def __init__(self, start: Callable[[], Awaitable[None]], *, wake: Callable[[], int]) -> None:
        self._start = start
        self._wake = wake
        self.state = State.CREATED
        self.error: Exception | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._task_group: TaskGroup | None = None
        # Made on the event loop of the first use:
        self._ready: anyio.Event | None = None
        self._stop: anyio.Event | None = None
        self._idle: anyio.Event | None = None
        self._started: set[Hashable] = set()
        self._lock: anyio.Lock | None = None
        self._busy = 0

    @property
    def running(self) -> bool:
        return self.state is State.RUNNING

    async def ensure(self) -> None:
        """Start on this event loop if not yet started; raise when failed, closed or bound elsewhere."""
        if self.state is State.RUNNING and asyncio.get_running_loop() is self.loop:
            return
        loop = asyncio.get_running_loop()
        if self._supervisor is None and self.state is State.CREATED:
            self.loop = loop
            self._ready, self._stop, self._lock = anyio.Event(), anyio.Event(), anyio.Lock()
            self._supervisor = loop.create_task(self._supervise(), name="humanlayer-runtime")
        elif self.loop is not loop:
            raise ConfigurationError(
                "this HumanLayer is bound to the event loop it first ran in; "
                "create one HumanLayer per event loop (or use hl.blocking() from sync code)"
            )
        assert self._ready is not None
        await self._ready.wait()
        if self.state is not State.RUNNING:
            raise self.error or HumanLayerError("this HumanLayer is closed; create a new one")

    async def start_part(self, key: Hashable, name: str, part: Part) -> bool:
        """Start ``part`` (named ``name`` in errors) unless one with ``key`` started; True if now."""
        assert self._lock is not None
        async with self._lock:
            if key in self._started or self._task_group is None:
                return False
            await self._task_group.start(self._guard, name, part)
            self._started.add(key)
            return True

    def started(self, key: Hashable) -> bool:
        return key in self._started

    async def _guard(self, name: str, part: Part, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        status = _Status(task_status)
        try:
            await part(task_status=status)
        except Exception as exc:
            if not status.done:
                raise  # a failed start: start_part raises it to whoever started the part
            self.fail(name, exc)

    def fail(self, name: str, exc: BaseException) -> None:
        """``name`` died with ``exc``: wake every waiter with the error and refuse new calls."""
        if self.state is not State.RUNNING:
            return
        logger.error("humanlayer.crashed", part=name, error=repr(exc))
        self.state = State.FAILED
        error = HumanLayerError(
            f"{name} stopped ({exc!r}): this HumanLayer can no longer receive answers; "
            "close it and create a new one"
        )
        self.error = error
        self._wake()

    def spawn(self, func: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``func(*args)`` in the task group, logging what it raises; ``aclose`` waits for it."""
        if self._task_group is None:
            return

        async def guarded() -> None:
            try:
                await func(*args)
            except Exception as exc:
                logger.error("humanlayer.background_failed", task=func.__name__, error=repr(exc))
            finally:
                self._done_working()

        self._busy += 1  # counted from now, so aclose() waits for it even before it starts
        self._task_group.start_soon(guarded)

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        """Count the block as work ``aclose`` lets finish."""
        self._busy += 1
        try:
            yield
        finally:
            self._done_working()

    def _done_working(self) -> None:
        self._busy -= 1
        if not self._busy and self._idle is not None:
            self._idle.set()

    async def aclose(self) -> bool:
        """Wake the waiters, let work in flight finish, stop every part; False if already closed."""
        if self.state in (State.CLOSING, State.CLOSED):
            return False
        self.state = State.CLOSING
        with anyio.CancelScope(shield=True):
            if self._wake():
                await anyio.lowlevel.checkpoint()  # the woken waiters start storing their cancellation
            await self._drain()
            if self._supervisor is not None and self._stop is not None:
                self._stop.set()
                await self._supervisor
        self.state = State.CLOSED
        return True

    async def _drain(self) -> None:
        with anyio.move_on_after(_DRAIN_SECONDS, shield=True) as scope:
            while self._busy:
                self._idle = anyio.Event()
                await self._idle.wait()
        if scope.cancelled_caught:
            logger.warning("humanlayer.drain_timed_out", unfinished=self._busy, seconds=_DRAIN_SECONDS)

    async def _supervise(self) -> None:
        assert self._ready is not None and self._stop is not None
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                await self._start()
                if self.state is State.CREATED:
                    self.state = State.RUNNING
                self._ready.set()
                await self._stop.wait()
                task_group.cancel_scope.cancel()
        except Exception as exc:
            error = exc.exceptions[0] if isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1 else exc
            if self.state is State.CREATED:  # the start failed: ensure() raises it
                self.state = State.FAILED
                self.error = error if isinstance(error, Exception) else exc
            else:
                self.fail("the HumanLayer's background tasks", error)
        finally:
            self._task_group = None
            self._ready.set()
