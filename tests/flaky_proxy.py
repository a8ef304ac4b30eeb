"""A TCP proxy on loopback in front of a real server (the fake Slack, aiosmtpd), with the
faults a network has: refused connections, silence, lost answers, connections cut mid-stream."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Literal, Self

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream, TaskGroup

Mode = Literal["pass", "refuse", "silent", "lose_answer", "cut_data"]
"""``pass``: forward both ways. ``refuse``: nothing listens (connection refused).
``silent``: accept and never answer. ``lose_answer``: forward the request, drop the answer.
``cut_data``: forward until the client has sent SMTP ``DATA`` and a little more, then hang up."""

_CUT_AFTER = 64  # bytes of message content forwarded before a cut_data connection drops


class FlakyProxy:
    """``async with FlakyProxy(port) as proxy``: serves on ``proxy.port`` and forwards to ``port``.

    Changing ``mode`` drops every open connection (pooled keep-alive ones too), as an
    outage does; each new connection then gets the new mode. ``connections`` counts them.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.connections = 0
        self._mode: Mode = "pass"
        self._listener: SocketListener | None = None
        self._tasks: TaskGroup | None = None
        self._open: set[anyio.CancelScope] = set()
        self._stack = contextlib.AsyncExitStack()

    @property
    def mode(self) -> Mode:
        return self._mode

    async def __aenter__(self) -> Self:
        self._tasks = await self._stack.enter_async_context(anyio.create_task_group())
        await self._listen()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._tasks is not None
        if self._listener is not None:
            await self._listener.aclose()
        self._tasks.cancel_scope.cancel()
        await self._stack.__aexit__(None, None, None)

    async def set_mode(self, mode: Mode) -> None:
        for scope in list(self._open):
            scope.cancel()
        if mode == "refuse" and self._listener is not None:
            listener, self._listener = self._listener, None
            await listener.aclose()
        elif mode != "refuse" and self._listener is None:
            await self._listen()
        self._mode = mode

    async def _listen(self) -> None:
        assert self._tasks is not None
        [listener] = (await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port)).listeners
        assert isinstance(listener, SocketListener)
        self.port = listener.extra(SocketAttribute.local_port)
        self._listener = listener
        self._tasks.start_soon(self._serve, listener)

    async def _serve(self, listener: SocketListener) -> None:
        assert self._tasks is not None
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            while True:
                self._tasks.start_soon(self._handle, await listener.accept())

    async def _handle(self, client: SocketStream) -> None:
        self.connections += 1
        mode = self._mode
        with anyio.CancelScope() as scope:
            self._open.add(scope)
            try:
                async with client:
                    if mode == "silent":
                        async for _ in client:
                            pass
                        return
                    async with (
                        await anyio.connect_tcp("127.0.0.1", self.target_port) as server,
                        anyio.create_task_group() as pipes,
                    ):
                        pipes.start_soon(self._pipe, client, server, mode == "cut_data", pipes)
                        pipes.start_soon(self._pipe, server, client, False, pipes, mode == "lose_answer")
            except (anyio.BrokenResourceError, anyio.EndOfStream, OSError):
                pass
            finally:
                self._open.discard(scope)

    @staticmethod
    async def _pipe(
        source: SocketStream,
        sink: SocketStream,
        cut_data: bool,
        pipes: TaskGroup,
        drop: bool = False,
    ) -> None:
        sent_after_data = -1
        try:
            async for chunk in _chunks(source):
                if cut_data and sent_after_data < 0 and b"DATA\r\n" in chunk.upper():
                    sent_after_data = 0
                elif sent_after_data >= 0:
                    chunk = chunk[: _CUT_AFTER - sent_after_data]
                    sent_after_data += len(chunk)
                if not drop:
                    await sink.send(chunk)
                if sent_after_data >= _CUT_AFTER:
                    break  # mid-DATA: the connection drops, both ways
        finally:
            pipes.cancel_scope.cancel()


async def _chunks(stream: SocketStream) -> AsyncIterator[bytes]:
    try:
        while True:
            yield await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return
