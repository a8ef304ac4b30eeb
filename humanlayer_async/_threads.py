"""The library's own worker threads, for the blocking calls of its I/O: DNS lookups, SQLite.

A gated sync tool holds its worker thread until a human decides, and agent frameworks run
sync tools in the application's pools: asyncio's default executor (a handful of threads
on a small machine) or anyio's default thread limiter. Blocking calls of the library's own
that went through those pools (``loop.getaddrinfo``, which asyncio, aiohttp and aiosmtplib
resolve host names with, runs in the default executor) would queue behind the very tools
waiting for the deliveries they need. So they run here instead, on a few daemon threads
started on first use that never run application code; a forked child starts its own.
"""

from __future__ import annotations

import asyncio
import functools
import os
import queue
import socket
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

import anyio

__all__ = ["connect_tcp", "getaddrinfo", "getfqdn", "run_sync"]

T = TypeVar("T")

MAX_THREADS = 8
"""At most this many lookups and statements run at once; more wait for a thread."""

Address = tuple[str, int] | tuple[str, int, int, int] | tuple[int, bytes]
"""An IPv4 (host, port) or IPv6 (host, port, flowinfo, scope_id) socket address; the last
form is an IPv6 address of a Python built without IPv6 support."""
AddressInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, Address]
"""One entry of ``socket.getaddrinfo``: family, type, proto, canonical name, address."""


class _Pool:
    """Daemon threads, started as jobs need them (up to ``size``), taking jobs from one queue."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0  # threads waiting for a job that no queued job has claimed yet

    def submit(self, func: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            self._jobs.put((future, func))
            if self._idle:
                self._idle -= 1
            elif self._threads < self._size:
                self._threads += 1
                name = f"humanlayer-io-{self._threads}"
                threading.Thread(target=self._work, name=name, daemon=True).start()
        return future

    def _work(self) -> None:
        while True:
            _run_job(*self._jobs.get())  # the job's future and result are dropped on return
            with self._lock:
                self._idle += 1


def _run_job(future: Future[T], func: Callable[[], T]) -> None:
    if not future.set_running_or_notify_cancel():
        return  # cancelled before it started
    try:
        result = func()
    except BaseException as exc:  # handed to the caller, as concurrent.futures does
        future.set_exception(exc)
    else:
        future.set_result(result)


_pool: _Pool | None = None
_pool_lock = threading.Lock()


def _forget_pool() -> None:
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()  # the parent's threads do not exist in a child


os.register_at_fork(after_in_child=_forget_pool)


def _get_pool() -> _Pool:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = _Pool(MAX_THREADS)
        return _pool


async def run_sync(func: Callable[[], T], *, abandon_on_cancel: bool = False) -> T:
    """``func()`` on the library's threads.

    Cancelled, the caller still waits for ``func`` and gets its result, the cancellation
    landing at its next checkpoint (as with ``anyio.to_thread.run_sync``), so a store's
    statements never overlap. With ``abandon_on_cancel`` the caller leaves at once: ``func``
    never runs if it has not started, and its result is dropped if it has.
    """
    future = asyncio.wrap_future(_get_pool().submit(func))
    if abandon_on_cancel:
        return await future
    with anyio.CancelScope(shield=True):
        await asyncio.wait([future])
    return future.result()


async def getaddrinfo(host: str, port: int, *, family: int = 0, flags: int = 0) -> Sequence[AddressInfo]:
    """``socket.getaddrinfo`` for TCP (``SOCK_STREAM``), on the library's threads."""
    lookup = functools.partial(socket.getaddrinfo, host, port, family, socket.SOCK_STREAM, 0, flags)
    return await run_sync(lookup, abandon_on_cancel=True)


async def getfqdn() -> str:
    """This machine's fully qualified name, looked up on the library's threads."""
    return await run_sync(socket.getfqdn, abandon_on_cancel=True)


async def connect_tcp(host: str, port: int) -> socket.socket:
    """A connected, non-blocking TCP socket to ``host``, its name resolved on the library's threads.

    Each address is tried in turn, as ``socket.create_connection`` does; the event loop
    connects to numeric addresses only, so it never resolves a name itself. Raises
    ``OSError`` naming every address's failure.
    """
    loop = asyncio.get_running_loop()
    failures: list[str] = []
    for family, kind, proto, _, address in await getaddrinfo(host, port):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError):
                raise
            failures.append(f"{address[0]}: {exc}")
        else:
            return sock
    raise OSError(f"could not connect to {host} port {port}: {'; '.join(failures) or 'no address'}")
