"""The listener over real loopback HTTP: routes, limits, failures, ports, mounting."""

from __future__ import annotations

import socket
from collections.abc import Sequence

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from structlog.testing import capture_logs

from humanlayer_async import ApprovalDenied, ApprovalRequest, ConfigurationError, HumanLayer
from humanlayer_async.channels import BaseChannel, Decider
from humanlayer_async.listener import Listener, build_app

from .test_gate import wait_pending

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
        decision = await self.decider.decide(
            request.path_params["request_id"], body == b"yes", by="tester", via=self.name
        )
        return JSONResponse({"status": decision.status.value})

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
            [request] = await wait_pending(hl)
            response = await client.post(f"/hook/{request.id}", content=b"yes")
            assert response.json() == {"status": "approved"}
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
            [request] = await wait_pending(hl)
            response = await client.post(f"/hl/hook/{request.id}", content=b"no")
            assert response.json() == {"status": "denied"}
            assert hl.url is None


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
