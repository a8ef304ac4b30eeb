"""The listener: one ASGI app with every channel's callback routes, and the server task.

The app is what ``HumanLayer.asgi_app`` returns, so it can be served by the embedded
uvicorn server (``listen="host:port"``) or mounted in your own Starlette/FastAPI app.
Bodies over ``max_body`` bytes are refused with 413 before any route reads them, and a
route that fails answers 500 for that request alone, with a log line; the server goes on.
A route declines a request by raising ``Refused``: one handler answers it with the
refusal's status and body, and every refusal, a route's or the listener's own, is logged
as one event, ``listener.refused``, with the path, status and reason.
A client gets ``read_timeout`` seconds to send a request's headers (else the connection is
closed) and as long again for its body (else 408), so slow clients cannot hold the listener.

The embedded server also closes a connection whose answer the client does not read within
``read_timeout``, and one that pipelines more than ``MAX_PIPELINED`` requests ahead of its
answers; it holds at most ``max_connections`` at once (below the process's descriptor
limit), closing the others as they come, and logs refusals and accept errors it sees in a
flood as one line per ``LOG_INTERVAL`` seconds with their count.

Who the client is (``client_is_local``) comes from the peer's address, and from
``Forwarded``/``X-Forwarded-For`` only when the peer is a trusted proxy
(``HumanLayer(trusted_proxies=...)``); the environment (uvicorn's ``FORWARDED_ALLOW_IPS``)
has no say.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import anyio
import h11
import uvicorn
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus
from anyio.lowlevel import checkpoint
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from ._audit import logger
from ._exceptions import ConfigurationError
from ._refused import EVENT, Refused

__all__ = [
    "LOG_INTERVAL",
    "MAX_BODY",
    "MAX_PIPELINED",
    "READ_TIMEOUT",
    "BodyLimit",
    "Listener",
    "Refused",
    "build_app",
    "client_is_local",
    "trusted_networks",
]

MAX_BODY = 1024 * 1024
"""The largest request body the listener reads: 1 MiB."""

READ_TIMEOUT = 10.0
"""Seconds a client may take to send a request's headers, and again its body; and to read an answer."""

MAX_PIPELINED = 1
"""Requests a client may send ahead of the answers (HTTP pipelining) before it is cut off."""

LOG_INTERVAL = 10.0
"""Seconds between two log lines about the same flood (refused connections, accept errors)."""

_ACCEPT_RETRY = 0.1  # seconds between accepts while the process is out of descriptors

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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
        # A slow client's connection is not kept for another request.
        headers = {"Connection": "close"} if status == 408 else None
        refused = Refused(status, reason, body=text, headers=headers)
        await _answer_refusal(refused, scope)(scope, _no_receive, send)


_REFUSALS = {
    400: ("body size", "bad Content-Length"),
    408: ("slow body", "request body too slow"),
    413: ("body size", "request body too large"),
}


async def _no_receive() -> Message:  # pragma: no cover - the refusal never reads the body
    return {"type": "http.disconnect"}


async def _healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


def _answer_refusal(refused: Refused, scope: Scope) -> Response:
    """The answer to a refused request, logged as ``listener.refused`` and told to the app's
    ``on_refused`` (metrics) with its route's template: the one place all of it happens, for
    the routes' refusals and the listener's own (which no route matched yet: ``other``)."""
    client = scope.get("client")
    refused.log(
        path=scope.get("path"), method=scope.get("method"), client=None if client is None else client[0]
    )
    on_refused = getattr(getattr(scope.get("app"), "state", None), "on_refused", None)
    if on_refused is not None:
        on_refused(getattr(scope.get("route"), "path", "other"), refused.status)
    return Response(
        refused.body, status_code=refused.status, media_type=refused.media_type, headers=refused.headers
    )


async def _refused(request: Request, exc: Exception) -> Response:
    """The handler of ``Refused``, raised by any route of the app."""
    assert isinstance(exc, Refused)
    return _answer_refusal(exc, request.scope)


async def _server_error(request: Request, exc: Exception) -> Response:
    logger.error("listener.error", path=request.url.path, error=repr(exc))
    return PlainTextResponse("internal error", status_code=500)


# -- who the client is -----------------------------------------------------------------------

_TRUSTED_PROXIES = "humanlayer_async.trusted_proxies"  # the scope key build_app's app sets


def trusted_networks(proxies: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``trusted_proxies`` checked: IP addresses (``"127.0.0.1"``) or networks (``"10.0.0.0/8"``)."""
    if isinstance(proxies, str):
        raise ConfigurationError(f"trusted_proxies must be a list, e.g. [{proxies!r}], not a string")
    networks = []
    for proxy in proxies:
        try:
            networks.append(ipaddress.ip_network(proxy, strict=False))
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"trusted_proxies: {proxy!r} is not an IP address or network (host names are not resolved)"
            ) from None
    return tuple(networks)


def client_is_local(scope: Scope) -> bool:
    """Whether a request comes from this machine.

    The peer must be a loopback address. When the request carries ``Forwarded`` or
    ``X-Forwarded-For``, the peer must moreover be a trusted proxy, and so must every hop it
    names down to the client (the rightmost hop not trusted), and all of them loopback
    addresses too: a proxy's own loopback is not this machine's. Otherwise the client is
    remote: a TLS proxy on this host, not configured as trusted, makes every client look
    local. The headers are read here, not only ``scope["client"]``, so this holds when a
    server has already rewritten the client from them (a plain uvicorn does, for peers in
    ``FORWARDED_ALLOW_IPS``).
    """
    path = _path(scope)
    return path is not None and all(address.is_loopback for address in path)


def _path(scope: Scope) -> list[IPAddress] | None:
    """The addresses a request came through: the peer, then each hop a trusted proxy names,
    up to the first one not trusted (the client). ``None`` when that cannot be told: a peer
    or hop that is not an address, forwarding headers from a peer not trusted, or the two
    forwarding headers telling different paths."""
    client = scope.get("client")
    peer = None if client is None else _address(str(client[0]))
    trusted: tuple[IPNetwork, ...] = scope.get(_TRUSTED_PROXIES, ())
    chains = _forwarded_chains(scope.get("headers", ()))
    if peer is None or (chains and not _trusted(peer, trusted)):
        return None
    paths = []
    for chain in chains:
        path = [peer]
        for hop in reversed(chain):
            if not _trusted(path[-1], trusted):
                break
            if hop is None:
                return None
            path.append(hop)
        paths.append(path)
    if any(path != paths[0] for path in paths):
        return None
    return paths[0] if paths else [peer]


def _trusted(address: IPAddress, trusted: tuple[IPNetwork, ...]) -> bool:
    return any(address in network for network in trusted)


def _forwarded_chains(headers: Iterable[tuple[bytes, bytes]]) -> list[list[IPAddress | None]]:
    """The hops each forwarding header lists, client first (``None``: not an address)."""
    found: dict[bytes, list[bytes]] = {b"x-forwarded-for": [], b"forwarded": []}
    for name, value in headers:
        found.get(name.lower(), []).append(value)
    chains = []
    if found[b"x-forwarded-for"]:
        hops = b",".join(found[b"x-forwarded-for"]).decode("latin-1").split(",")
        chains.append([_node(hop) for hop in hops])
    if found[b"forwarded"]:
        elements = b",".join(found[b"forwarded"]).decode("latin-1").split(",")
        chains.append([_forwarded_for(element) for element in elements])
    return chains


def _forwarded_for(element: str) -> IPAddress | None:
    """The ``for=`` node of one ``Forwarded`` element (RFC 7239), if it is an address."""
    for pair in element.split(";"):
        name, _, value = pair.partition("=")
        if name.strip().lower() == "for":
            return _node(value.strip().strip('"'))
    return None


def _node(text: str) -> IPAddress | None:
    """An address as proxies write it: ``192.0.2.1``, ``192.0.2.1:80``, ``::1``, ``[::1]:80``."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    return _address(text)


def _address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class _TrustedProxies:
    """ASGI middleware: tells ``client_is_local`` which proxies this app believes."""

    def __init__(self, app: ASGIApp, networks: tuple[IPNetwork, ...]) -> None:
        self.app = app
        self.networks = networks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            scope = {**scope, _TRUSTED_PROXIES: self.networks}
        await self.app(scope, receive, send)


def build_app(
    routes: Sequence[BaseRoute],
    *,
    max_body: int = MAX_BODY,
    read_timeout: float = READ_TIMEOUT,
    trusted_proxies: tuple[IPNetwork, ...] = (),
    on_refused: Callable[[str, int], None] | None = None,
) -> Starlette:
    """The listener's app: ``GET /healthz`` and the given channel routes, behind ``BodyLimit``;
    ``client_is_local`` believes the forwarding headers of ``trusted_proxies`` only. A route
    that raises ``Refused`` gets its answer, and its log line, from one handler, which tells
    ``on_refused`` the route's template and the status too."""
    app = Starlette(
        routes=[Route("/healthz", _healthz, methods=["GET"]), *routes],
        exception_handlers={Refused: _refused, Exception: _server_error},
    )
    app.state.on_refused = on_refused
    app.add_middleware(BodyLimit, max_body=max_body, read_timeout=read_timeout)
    app.add_middleware(_TrustedProxies, networks=trusted_proxies)
    return app


# -- the embedded server ------------------------------------------------------------------


class _Bounded(H11Protocol):
    """uvicorn's h11 protocol, with the bounds a listener facing strangers needs.

    uvicorn bounds only the idle time between requests (keep-alive). Besides, here:

    - a request whose headers take over ``read_timeout`` closes the connection: a client
      trickling them in byte by byte would otherwise hold it as long as it likes;
    - an answer still unwritten after ``read_timeout``, because the client reads nothing,
      aborts the connection (what it did not read is dropped): uvicorn would wait forever;
    - a client more than ``MAX_PIPELINED`` requests ahead of its answers is cut off once
      the answer before them is written.
    """

    read_timeout = READ_TIMEOUT
    gate: _Gate  # set by Listener.serve
    tally: _Tally  # likewise: a flood of cut-off clients logs a count, not a line each
    _header_timer: asyncio.TimerHandle | None = None
    _write_timer: asyncio.TimerHandle | None = None
    _queued = 0  # requests in a row that were already waiting when the one before was answered

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]  # uvicorn narrows it to Transport
        # Pause as soon as anything is left unwritten (not at asyncio's 64 KiB), so the write
        # deadline starts then: a client reading nothing never fills 64 KiB with small answers.
        self.transport.set_write_buffer_limits(high=0)
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        _cancel(self._header_timer)
        self._header_timer = None
        _cancel(self._write_timer)
        self._write_timer = None
        self.gate.release()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.read_timeout, self._slow_reader)

    def resume_writing(self) -> None:
        _cancel(self._write_timer)
        self._write_timer = None
        super().resume_writing()

    def on_response_complete(self) -> None:
        self._queued = self._queued + 1 if self.conn.trailing_data[0] else 0
        if self._queued > MAX_PIPELINED and not self.transport.is_closing():
            self.tally.note(EVENT, "too many pipelined requests")
            self.transport.close()
            return
        super().on_response_complete()

    def _watch_headers(self) -> None:
        """Time the headers of the request being received; stop once they are in."""
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            _cancel(self._header_timer)
            self._header_timer = None
        elif self._header_timer is None and self.timeout_keep_alive_task is None:
            self._header_timer = self.loop.call_later(self.read_timeout, self._slow_headers)

    def _slow_headers(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.tally.note(EVENT, "slow headers")
            self.transport.close()

    def _slow_reader(self) -> None:
        self._write_timer = None
        self.tally.note(EVENT, "slow reader")
        self.transport.abort()  # close() would wait for the client to read what is left


def _cancel(timer: asyncio.TimerHandle | None) -> None:
    if timer is not None:
        timer.cancel()


class _Gate:
    """The listener's connections, counted from accept to close: ``limit`` at most."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def admit(self) -> bool:
        if self.held >= self.limit:
            return False
        self.held += 1
        return True

    def release(self) -> None:
        self.held -= 1


class _Tally:
    """Counts events that come in floods and logs each kind at most once per ``LOG_INTERVAL``
    seconds, with how many there were (the first at once, the rest when the interval ends)."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()
        self._noted = anyio.Event()

    def note(self, event: str, reason: str) -> None:
        self._counts[event, reason] += 1
        self._noted.set()

    async def report(self) -> None:
        try:
            while True:
                await self._noted.wait()
                self._flush()
                await anyio.sleep(LOG_INTERVAL)
        finally:
            self._flush()

    def _flush(self) -> None:
        self._noted = anyio.Event()
        counts, self._counts = self._counts, Counter()
        for (event, reason), count in counts.items():
            logger.warning(event, reason=reason, count=count)


def _connection_limit() -> int:
    """A quarter of the process's file descriptors (64 at least) is left to the store, the
    channels and outbound HTTP; the listener's connections may have the rest."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows, where sockets are not descriptors
        return 8192
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return max(1, soft - max(64, soft // 4))


class _Server(uvicorn.Server):
    """uvicorn's connection bookkeeping, clock and graceful shutdown. Connections are
    accepted by ``Listener``, not by an asyncio server: asyncio logs each failed accept
    (out of descriptors) up to a hundred times a second, and accepts without a limit; and
    uvicorn's signal handlers are left out, so Ctrl-C stops the user's program, not just us."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.lifespan = config.lifespan_class(config)
        self.servers = []


class Listener:
    """Serves ``app`` on ``host:port`` with uvicorn, on a socket bound here.

    Port 0 picks a free port; ``url`` tells which once ``serve`` has started. At most
    ``max_connections`` are open at once (default: three quarters of the process's
    descriptor limit); others are closed as soon as they are accepted.
    """

    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        *,
        shutdown_timeout: float = 5.0,
        read_timeout: float = READ_TIMEOUT,
        max_connections: int | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.shutdown_timeout = shutdown_timeout
        self.read_timeout = read_timeout
        self.max_connections = _connection_limit() if max_connections is None else max_connections

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
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            ws="none",  # no route speaks WebSocket
            log_config=None,
            access_log=False,
            proxy_headers=False,  # who the client is: client_is_local decides, not the environment
            timeout_keep_alive=5,
            timeout_graceful_shutdown=max(1, round(self.shutdown_timeout)),
        )
        config.load()
        server = _Server(config)
        gate, tally = _Gate(self.max_connections), _Tally()
        protocol: type[_Bounded] = type(
            "Bounded", (_Bounded,), {"read_timeout": self.read_timeout, "gate": gate, "tally": tally}
        )

        def connection() -> asyncio.Protocol:
            return protocol(config=config, server_state=server.server_state, app_state=server.lifespan.state)

        try:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(tally.report)
                task_group.start_soon(self._accept, sock, connection, gate, tally)
                logger.info("listener.started", url=self.url)
                task_status.started()
                await server.main_loop()
        finally:
            with anyio.CancelScope(shield=True):
                await server.shutdown(sockets=[sock])

    async def _accept(
        self, sock: socket.socket, connection: Callable[[], asyncio.Protocol], gate: _Gate, tally: _Tally
    ) -> None:
        """Accept connections; close at once those the gate does not admit."""
        loop = asyncio.get_running_loop()
        async with anyio.create_task_group() as task_group:
            for accepted in itertools.count(1):
                if accepted % 100 == 0:  # a flood of clients does not hold the event loop
                    await checkpoint()
                try:
                    client, _ = await loop.sock_accept(sock)
                except ConnectionAbortedError:
                    continue  # gone before it was accepted
                except OSError as exc:  # out of descriptors or memory: the clients wait in the backlog
                    tally.note("listener.accept_failed", exc.strerror or repr(exc))
                    await anyio.sleep(_ACCEPT_RETRY)
                    continue
                if not gate.admit():
                    client.close()
                    tally.note(EVENT, "too many connections")
                    continue
                task_group.start_soon(loop.connect_accepted_socket, connection, client)
