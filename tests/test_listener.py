"""The listener over real loopback HTTP: routes, limits, failures, ports, mounting."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator, Sequence

import anyio
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Receive, Scope, Send
from structlog.testing import capture_logs

from humanlayer_async import (
    ApprovalDenied,
    ApprovalRequest,
    ConfigurationError,
    HumanLayer,
)
from humanlayer_async.channels import BaseChannel, Decider, WebChannel
from humanlayer_async.listener import Listener, Refused, build_app, client_is_local, trusted_networks
from humanlayer_async.testing import wait_for_pending

from .conftest import serving

pytestmark = pytest.mark.anyio


class HookChannel(BaseChannel):
    """A channel whose callback route decides the request named in the URL."""

    name = "hook"

    def __init__(self) -> None:
        self.decider: Decider | None = None

    async def run(
        self, decider: Decider, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        self.decider = decider
        task_status.started()

    async def send(self, request: ApprovalRequest) -> str | None:
        return None

    def routes(self) -> Sequence[BaseRoute]:
        return [Route("/hook/{request_id}", self.callback, methods=["POST"]), Route("/boom", self.boom)]

    async def callback(self, request: Request) -> Response:
        assert self.decider is not None
        body = await request.body()
        answered = await self.decider.decide(
            request.path_params["request_id"], body == b"yes", by="tester", via=self.name
        )
        assert answered.decision is not None  # one approval decides
        return JSONResponse({"status": answered.decision.status.value, "stands": answered.stands})

    async def boom(self, request: Request) -> Response:
        raise RuntimeError("a bug in one handler")


async def test_callback_over_http_resolves_the_waiting_call() -> None:
    async with HumanLayer([HookChannel()], listen="127.0.0.1:0") as hl:
        assert hl.url is not None and hl.url.startswith("http://127.0.0.1:")

        @hl.require_approval()
        async def tool() -> str:
            return "ran"

        async with anyio.create_task_group() as tg, httpx.AsyncClient(base_url=hl.url) as client:
            results: list[str] = []

            async def call() -> None:
                results.append(await tool())

            tg.start_soon(call)
            [request] = await wait_for_pending(hl, within=5)
            response = await client.post(f"/hook/{request.id}", content=b"yes")
            assert response.json() == {"status": "approved", "stands": True}
            # A second answer does not stand: the channel is told the first one, not its own.
            again = await client.post(f"/hook/{request.id}", content=b"no")
            assert again.json() == {"status": "approved", "stands": False}
            assert (await client.get("/healthz")).text == "ok"
        assert results == ["ran"]


async def test_oversized_body_is_413_and_a_bug_is_500_and_the_listener_goes_on() -> None:
    async with (
        HumanLayer([HookChannel()], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):
        with capture_logs() as logs:
            too_big = await client.post("/hook/x", content=b"y" * (1024 * 1024 + 1))
            assert too_big.status_code == 413

            async def chunks() -> object:
                for _ in range(20):
                    yield b"z" * 100_000

            streamed = await client.post("/hook/x", content=chunks())  # type: ignore[arg-type]
            assert streamed.status_code == 413
            boom = await client.get("/boom")
            assert boom.status_code == 500
            assert boom.text == "internal error"
        assert (await client.get("/healthz")).status_code == 200
    events = [entry["event"] for entry in logs]
    assert events.count("listener.refused") == 2
    assert "listener.error" in events


async def test_a_taken_port_is_a_configuration_error_naming_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        hl = HumanLayer([HookChannel()], listen=f"127.0.0.1:{port}")
        with pytest.raises(ConfigurationError, match=f"127.0.0.1:{port}"):
            await hl.__aenter__()
        await hl.aclose()


async def test_no_listener_without_channel_routes() -> None:
    async with HumanLayer([], listen="127.0.0.1:0") as hl:
        assert hl.url is None


async def test_asgi_app_mounts_in_a_users_app_with_its_lifespan() -> None:
    hl = HumanLayer([HookChannel()], listen=None)

    @hl.require_approval()
    async def tool() -> str:
        return "ran"

    async def home(request: Request) -> Response:
        return JSONResponse({"app": "mine"})

    app = Starlette(routes=[Route("/", home), Mount("/hl", hl.asgi_app)], lifespan=hl.lifespan)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with (
            anyio.create_task_group() as tg,
            httpx.AsyncClient(transport=transport, base_url="http://x") as client,
        ):
            assert (await client.get("/")).json() == {"app": "mine"}

            async def call() -> None:
                with pytest.raises(ApprovalDenied, match="denied tool by tester via hook"):
                    await tool()

            tg.start_soon(call)
            [request] = await wait_for_pending(hl, within=5)
            response = await client.post(f"/hl/hook/{request.id}", content=b"no")
            assert response.json() == {"status": "denied", "stands": True}
            assert hl.url is None


# -- refusals: one type, one handler, one log event ------------------------------------------


async def _refuse(request: Request) -> Response:
    if request.path_params["kind"] == "page":
        raise Refused(
            409,
            "already decided",
            body="<p>already decided</p>",
            media_type="text/html",
            headers={"X-Frame-Options": "DENY"},
            request_id="r-1",
        )
    raise Refused(403, "not an approver", sender="mallory@example.com")


async def test_a_route_refusal_is_answered_and_logged_once_by_the_listener_also_when_mounted() -> None:
    routes = [Route("/refuse/{kind}", _refuse, methods=["GET", "POST"])]
    with capture_logs() as logs:
        async with serving(routes) as client:
            text = await client.post("/refuse/text")
            page = await client.get("/refuse/page")
        mounted = Starlette(routes=[Mount("/hl", build_app(routes))])
        transport = httpx.ASGITransport(app=mounted, client=("127.0.0.1", 4711))
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            inside = await client.post("/hl/refuse/text")
    assert (text.status_code, text.text, text.headers["content-type"]) == (
        403,
        "not an approver",
        "text/plain; charset=utf-8",
    )
    assert (page.status_code, page.text, page.headers["content-type"]) == (
        409,
        "<p>already decided</p>",
        "text/html; charset=utf-8",
    )
    assert page.headers["x-frame-options"] == "DENY"
    assert (inside.status_code, inside.text) == (403, "not an approver")
    assert not [entry for entry in logs if entry["event"] == "listener.error"]
    refused = [entry for entry in logs if entry["event"] == "listener.refused"]
    assert [(entry.pop("log_level"), entry) for entry in refused] == [
        (
            "warning",
            {
                "event": "listener.refused",
                "path": "/refuse/text",
                "method": "POST",
                "client": "127.0.0.1",
                "sender": "mallory@example.com",
                "status": 403,
                "reason": "not an approver",
            },
        ),
        (
            "warning",
            {
                "event": "listener.refused",
                "path": "/refuse/page",
                "method": "GET",
                "client": "127.0.0.1",
                "request_id": "r-1",
                "status": 409,
                "reason": "already decided",
            },
        ),
        (
            "warning",
            {
                "event": "listener.refused",
                "path": "/hl/refuse/text",
                "method": "POST",
                "client": "127.0.0.1",
                "sender": "mallory@example.com",
                "status": 403,
                "reason": "not an approver",
            },
        ),
    ]


def test_accepted_connections_are_tcp_so_asyncio_turns_nagle_off() -> None:
    # asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP; without it,
    # Nagle's algorithm and delayed ACKs held every response back by 40 ms.
    listener = Listener(build_app([]), "127.0.0.1", 0)
    server = listener._bind()
    try:
        server.setblocking(True)
        with socket.create_connection(("127.0.0.1", listener.port)):
            connection, _ = server.accept()
            with connection:
                assert connection.proto == socket.IPPROTO_TCP
    finally:
        server.close()


# -- who the client is: forwarding headers and trusted proxies -------------------------------

CONSOLE_KEY = "console-key-for-proxy-tests-0123"
ASSET = "/approvals/static/console.css"  # served by the console to loopback clients only
REFUSED = (403, "the console only serves this machine")


async def _console(client: httpx.AsyncClient, headers: dict[str, str], base: str = "") -> tuple[int, str]:
    response = await client.get(f"{base}{ASSET}", headers=headers)
    return response.status_code, "css" if response.status_code == 200 else response.text


async def test_forwarding_headers_from_an_untrusted_loopback_peer_make_it_remote_whatever_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # uvicorn trusts every proxy with FORWARDED_ALLOW_IPS=*: the embedded listener ignores it.
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    async with (
        HumanLayer([WebChannel(token=CONSOLE_KEY)], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):
        assert await _console(client, {}) == (200, "css")
        for headers in (
            {"X-Forwarded-For": "127.0.0.1"},
            {"X-Forwarded-For": "::1"},
            {"Forwarded": "for=127.0.0.1"},
            {"Forwarded": 'for="[::1]:4711"'},
            {"X-Forwarded-For": "203.0.113.9"},
        ):
            # A TLS proxy on this host would make every client look local: a loopback peer
            # that forwards for someone, without being a trusted proxy, is not served.
            assert await _console(client, headers) == REFUSED, headers


async def test_a_trusted_proxy_names_the_client_by_its_rightmost_untrusted_hop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    cases = [
        ({}, (200, "css")),
        ({"X-Forwarded-For": "127.0.0.1"}, (200, "css")),
        ({"Forwarded": "for=127.0.0.1;proto=https"}, (200, "css")),
        ({"X-Forwarded-For": "127.0.0.1", "Forwarded": "for=127.0.0.1"}, (200, "css")),
        ({"X-Forwarded-For": "203.0.113.9"}, REFUSED),
        ({"Forwarded": 'for="[2001:db8::9]:4711"'}, REFUSED),
        # The client wrote the left part; the proxy appended the address it saw.
        ({"X-Forwarded-For": "127.0.0.1, 203.0.113.9"}, REFUSED),
        ({"X-Forwarded-For": "203.0.113.9, 127.0.0.1"}, REFUSED),
        ({"Forwarded": "for=unknown"}, REFUSED),
        ({"Forwarded": "proto=https"}, REFUSED),
        ({"X-Forwarded-For": "not-an-address"}, REFUSED),
        # Headers that disagree cannot both be the proxy's.
        ({"X-Forwarded-For": "127.0.0.1", "Forwarded": "for=203.0.113.9"}, REFUSED),
    ]
    async with (
        HumanLayer(
            [WebChannel(token=CONSOLE_KEY)], listen="127.0.0.1:0", trusted_proxies=["127.0.0.1"]
        ) as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):
        assert [await _console(client, headers) for headers, _ in cases] == [status for _, status in cases]


async def test_mounted_under_a_users_uvicorn_a_forwarded_request_is_remote(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A plain uvicorn trusts X-Forwarded-For from 127.0.0.1 and rewrites the client from it.
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    hl = HumanLayer([WebChannel(token=CONSOLE_KEY)], listen=None)
    app = Starlette(routes=[Mount("/hl", hl.asgi_app)], lifespan=hl.lifespan)
    sock = socket.create_server(("127.0.0.1", 0))
    server = _UsersUvicorn(uvicorn.Config(app, log_config=None))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.01)
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with httpx.AsyncClient(base_url=base) as client:
            assert await _console(client, {}, "/hl") == (200, "css")
            assert await _console(client, {"X-Forwarded-For": "127.0.0.1"}, "/hl") == REFUSED
            assert await _console(client, {"Forwarded": "for=127.0.0.1"}, "/hl") == REFUSED
        server.should_exit = True


class _UsersUvicorn(uvicorn.Server):
    """A user's own uvicorn, as configured by default (without its signal handlers)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@pytest.mark.parametrize(
    ("peer", "headers", "local"),
    [
        (("127.0.0.1", 50000), [], True),
        (("::1", 50000), [], True),
        (("::ffff:127.0.0.1", 50000), [], True),
        (("203.0.113.9", 50000), [], False),
        (("testclient", 50000), [], False),
        (None, [], False),
        # Remote peers: only a trusted one may name the client, and its loopback is its own.
        (("203.0.113.9", 50000), [("x-forwarded-for", "127.0.0.1")], False),
        (("10.0.0.5", 50000), [("x-forwarded-for", "127.0.0.1")], False),
        (("10.0.0.5", 50000), [("forwarded", "for=127.0.0.1")], False),
        (("10.0.0.5", 50000), [("x-forwarded-for", "198.51.100.7")], False),
        # A loopback proxy: the rightmost hop it does not trust is the client.
        (("127.0.0.1", 50000), [("x-forwarded-for", "127.0.0.1:61000")], True),
        (("127.0.0.1", 50000), [("x-forwarded-for", "[::1]:61000")], True),
        (("127.0.0.1", 50000), [("forwarded", 'For="[::1]:61000";proto=https')], True),
        (("127.0.0.1", 50000), [("x-forwarded-for", "127.0.0.1"), ("x-forwarded-for", "::1")], True),
        (("127.0.0.1", 50000), [("x-forwarded-for", "203.0.113.9, 127.0.0.1")], False),
        (("127.0.0.1", 50000), [("x-forwarded-for", "127.0.0.1, 203.0.113.9")], False),
        (("127.0.0.1", 50000), [("x-forwarded-for", "127.0.0.1, 10.0.0.7")], False),
        (("127.0.0.1", 50000), [("forwarded", "for=_hidden")], False),
        (("127.0.0.1", 50000), [("x-forwarded-for", "")], False),
    ],
)
async def test_the_client_address_behind_trusted_proxies(
    peer: tuple[str, int] | None, headers: list[tuple[str, str]], local: bool
) -> None:
    async def where(request: Request) -> Response:
        return JSONResponse({"local": client_is_local(request.scope)})

    app = build_app(
        [Route("/where", where)], trusted_proxies=trusted_networks(["10.0.0.0/8", "127.0.0.1", "::1"])
    )

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        await app({**scope, "client": peer}, receive, send)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://x") as client:
        response = await client.get("/where", headers=headers)
    assert response.json() == {"local": local}


@pytest.mark.parametrize("proxies", ["127.0.0.1", ["127.0.0.1", "proxy.internal"], [None]])
def test_trusted_proxies_must_be_addresses_or_networks(proxies: object) -> None:
    with pytest.raises(ConfigurationError, match="trusted_proxies"):
        HumanLayer([], listen=None, trusted_proxies=proxies)  # type: ignore[arg-type]
