"""The sync bridge: gated calls from plain sync code, on one event loop in a daemon thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import anyio

if TYPE_CHECKING:  # imported when the bridge first starts: most programs never use it
    from anyio.from_thread import BlockingPortal

__all__ = ["Bridge"]

T = TypeVar("T")


class Bridge:
    """Starts an event loop thread on first use and runs coroutines there for sync callers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._portal: BlockingPortal | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def call(self, func: Callable[[], Awaitable[T]]) -> T:
        """Run ``func()`` on the bridge's loop and wait for its result in this thread."""
        return self._ensure().call(func)

    def close(self) -> None:
        """Stop the loop thread (a no-op when it never started)."""
        with self._lock:
            portal, thread, self._portal, self._thread = self._portal, self._thread, None, None
            self._loop = None
        if portal is not None and thread is not None:
            portal.call(portal.stop)
            thread.join()

    @property
    def running(self) -> bool:
        return self._portal is not None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The bridge's event loop while it runs."""
        return self._loop

    def _ensure(self) -> BlockingPortal:
        with self._lock:
            if self._portal is None:
                ready = threading.Event()
                self._thread = threading.Thread(
                    target=anyio.run, args=(self._serve, ready), name="humanlayer-bridge", daemon=True
                )
                self._thread.start()
                ready.wait()
            assert self._portal is not None
            return self._portal

    async def _serve(self, ready: threading.Event) -> None:
        from anyio.from_thread import BlockingPortal

        async with BlockingPortal() as portal:
            self._portal, self._loop = portal, asyncio.get_running_loop()
            ready.set()
            await portal.sleep_until_stopped()
