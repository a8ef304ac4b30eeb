"""The listener: one ASGI app with every channel's callback routes, and the server task.

The app is what ``HumanLayer.asgi_app`` returns, so it can be served by the embedded
uvicorn server (``listen="host:port"``) or mounted in your own Starlette/FastAPI app.
Bodies over ``max_body`` bytes are refused with 413 before any route reads them, and a
route that fails answers 500 for that request alone, with a log line; the server goes on.
A client gets ``read_timeout`` seconds to send a request's headers (else the connection is
closed) and as long again for its body (else 408), so slow clients cannot hold the listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator, Sequence

import anyio
import h11
import uvicorn
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from ._audit import logger
from ._exceptions import ConfigurationError

__all__ = ["MAX_BODY", "READ_TIMEOUT", "BodyLimit", "Listener", "build_app"]

MAX_BODY = 1024 * 1024
"""The largest request body the listener reads: 1 MiB."""

READ_TIMEOUT = 10.0
"""Seconds a client may take to send a request's headers, and again its body."""


class _TooLarge(Exception):
    pass


class _TooSlow(Exception):
    pass


class BodyLimit:
    """ASGI middleware: 413 for a body over ``max_body``, by header or as it streams in;
    408 for a body still incomplete ``read_timeout`` seconds after the request began."""

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY, read_timeout: float = READ_TIMEOUT) -> None:
        self.app = app
        self.max_body = max_body
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_body:
            await self._refuse(scope, send, 400 if not declared.isdigit() else 413)
            return
        received = 0
        started = complete = False
        deadline = anyio.current_time() + self.read_timeout

        async def counting_receive() -> Message:
            nonlocal received, complete
            if complete:  # the body is in: waiting for a disconnect is not bounded
                return await receive()
            with anyio.move_on_after(deadline - anyio.current_time()):
                message = await receive()
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _TooLarge
                complete = message["type"] != "http.request" or not message.get("more_body", False)
                return message
            raise _TooSlow

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(scope, send, 413)
        except _TooSlow:
            if not started:
                await self._refuse(scope, send, 408)

    async def _refuse(self, scope: Scope, send: Send, status: int) -> None:
        reason, text = _REFUSALS[status]
        logger.warning("listener.refused", path=scope.get("path"), status=status, reason=reason)
        # A slow client's connection is not kept for another request.
        headers = {"Connection": "close"} if status == 408 else None
        await PlainTextResponse(text, status_code=status, headers=headers)(scope, _no_receive, send)


_REFUSALS = {
    400: ("body size", "bad Content-Length"),
    408: ("slow body", "request body too slow"),
    413: ("body size", "request body too large"),
}


async def _no_receive() -> Message:  # pragma: no cover - the refusal never reads the body
    return {"type": "http.disconnect"}


async def _healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def _server_error(request: Request, exc: Exception) -> Response:
    logger.error("listener.error", path=request.url.path, error=repr(exc))
    return PlainTextResponse("internal error", status_code=500)


def build_app(
    routes: Sequence[BaseRoute], *, max_body: int = MAX_BODY, read_timeout: float = READ_TIMEOUT
) -> Starlette:
    """The listener's app: ``GET /healthz`` and the given channel routes, behind ``BodyLimit``."""
    app = Starlette(
        routes=[Route("/healthz", _healthz, methods=["GET"]), *routes],
        exception_handlers={Exception: _server_error},
    )
    app.add_middleware(BodyLimit, max_body=max_body, read_timeout=read_timeout)
    return app


class _HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers take too long.

    uvicorn bounds the idle time between requests (keep-alive) but not a request whose
    headers trickle in, byte by byte: without this, each such client holds a connection
    (and a file descriptor) for as long as it likes.
    """

    read_timeout = READ_TIMEOUT
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]  # uvicorn narrows it to Transport
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_watching()
        super().connection_lost(exc)

    def _watch_headers(self) -> None:
        """Time the headers of the request being received; stop once they are in."""
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            self._stop_watching()
        elif self._header_timer is None and self.timeout_keep_alive_task is None:
            self._header_timer = self.loop.call_later(self.read_timeout, self._too_slow)

    def _stop_watching(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            logger.warning("listener.refused", client=self.client, reason="slow headers")
            self.transport.close()


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: Ctrl-C stops the user's program, not just us."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Listener:
    """Serves ``app`` on ``host:port`` with uvicorn, on a socket bound here.

    Port 0 picks a free port; ``url`` tells which once ``serve`` has started.
    """

    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        *,
        shutdown_timeout: float = 5.0,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.shutdown_timeout = shutdown_timeout
        self.read_timeout = read_timeout

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets that say so, and
        # without it Nagle and delayed ACKs add 40 ms to every response.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise ConfigurationError(
                f"the listener cannot bind {self.host}:{self.port}: {exc.strerror or exc} "
                "(is another process using that port? pass listen=... another port, or None)"
            ) from exc
        sock.listen(2048)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        return sock

    async def serve(self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        """Bind, serve until cancelled, then shut down within ``shutdown_timeout`` seconds."""
        sock = self._bind()
        protocol = type("HeaderDeadline", (_HeaderDeadline,), {"read_timeout": self.read_timeout})
        config = uvicorn.Config(
            self.app,
            http=protocol,
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=max(1, round(self.shutdown_timeout)),
        )
        config.load()
        server = _QuietServer(config)
        server.lifespan = config.lifespan_class(config)
        try:
            await server.startup(sockets=[sock])
            if server.should_exit:  # uvicorn logged why
                raise ConfigurationError(f"the listener could not start on {self.url}")
            logger.info("listener.started", url=self.url)
            task_status.started()
            await server.main_loop()
        finally:
            with anyio.CancelScope(shield=True):
                await server.shutdown(sockets=[sock])
