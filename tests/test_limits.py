"""Denial-of-service limits: body size on every inbound route, the number of pending requests
(``max_pending``), and slow clients that trickle headers or bodies into the real listener."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import socket
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import pytest
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from structlog.testing import capture_logs

from humanlayer_async import ApprovalDenied, ConfigurationError, HumanLayer, Status, TooManyPending
from humanlayer_async.listener import MAX_BODY, MAX_PIPELINED, Listener, build_app
from humanlayer_async.testing import slack_block_actions, wait_for_pending

from .conftest import Inbox, Outcomes
from .durable_helpers import ROOT
from .fake_slack import BOT_TOKEN, FakeSlack
from .hostile import SLACK_APPROVER, SLACK_SECRET, serving, signed_slack, web_session

pytestmark = pytest.mark.anyio

# -- request body size, route by route -----------------------------------------------------


async def test_every_inbound_route_refuses_a_body_over_the_limit_before_reading_it(
    fake_slack: FakeSlack, inbox: Inbox
) -> None:
    async with (
        serving(fake_slack, inbox, listen="127.0.0.1:0") as site,
        httpx.AsyncClient(base_url=str(site.hl.url)) as client,
    ):
        csrf = await web_session(client)
        routes = [
            ("POST", "/slack/events"),
            *(("POST", f"/email/inbound/{provider}") for provider in site.emails),
            ("POST", f"/approvals/requests/{site.request.id}"),
            ("POST", "/approvals"),
            ("GET", "/healthz"),
        ]
        form = {"content-type": "application/x-www-form-urlencoded", "x-csrf-token": csrf}
        just_over = b"action=approve&comment=" + b"x" * (MAX_BODY - 22)
        at_limit = just_over[:MAX_BODY]

        async def streamed() -> AsyncIterator[bytes]:
            yield b"action=approve&comment="
            for _ in range(MAX_BODY // 65536 + 1):
                yield b"y" * 65536

        with capture_logs() as declared_logs:
            declared = [
                (await client.request(method, path, content=just_over, headers=form)).status_code
                for method, path in routes
            ]
        with capture_logs() as streamed_logs:
            chunked = [
                (await client.request(method, path, content=streamed(), headers=form)).status_code
                for method, path in routes
            ]
        # A body of exactly the limit reaches the routes, which refuse it on their own terms.
        at_limit_statuses = {
            path: (await client.request(method, path, content=at_limit, headers=form)).status_code
            for method, path in routes
        }
        # Declared too large: refused before any route runs.
        assert declared == [413] * len(routes)
        assert [(e["event"], e["status"]) for e in declared_logs] == [("listener.refused", 413)] * len(routes)
        # Streamed without a length: refused as it comes in, if the route reads it; routes that
        # check credentials first refuse without reading it at all.
        assert chunked == [413, 413, 401, 401, 401, 413, 405, 200]
        # Each refusal, the listener's (413) or a route's own, is one listener.refused line.
        refused = [(e["path"], e["status"]) for e in streamed_logs if e["event"] == "listener.refused"]
        assert refused == [
            (path, status) for (_, path), status in zip(routes, chunked, strict=True) if status != 200
        ]
        assert set(at_limit_statuses.values()) <= {200, 400, 401, 403, 405, 409}, at_limit_statuses
        assert at_limit_statuses["/healthz"] == 200
        assert await site.untouched()


# -- max_pending ---------------------------------------------------------------------------


async def test_max_pending_refuses_calls_beyond_it_without_asking_and_frees_up_on_decisions() -> None:
    ran: list[int] = []
    async with HumanLayer([], listen=None, max_pending=3) as hl, anyio.create_task_group() as tg:

        @hl.require_approval()
        async def refund(n: int) -> int:
            ran.append(n)
            return n

        ask = hl.human_as_tool()
        refused: list[TooManyPending] = []

        denied: list[int] = []

        async def call(n: int) -> None:
            try:
                await refund(n)
            except TooManyPending as exc:
                refused.append(exc)
            except ApprovalDenied:
                denied.append(n)

        outcomes = Outcomes(tg)
        with capture_logs() as logs:
            for n in range(10):  # all at once: the limit holds however they interleave
                tg.start_soon(call, n)
            await wait_for_pending(hl, 3, within=5)
            with anyio.fail_after(5):
                while len(refused) < 7:
                    await anyio.sleep(0.01)
            with pytest.raises(TooManyPending, match=r"contact_human was not asked.*waits for 3"):
                await ask("one more?")  # questions count too
        pending = await hl.pending()
        assert len(pending) == 3 and ran == []
        assert len(refused) == 7 and all(exc.limit == 3 for exc in refused)
        assert "it did not run" in str(refused[0])
        assert [e["event"] for e in logs].count("approval.too_many_pending") == 8
        assert [e["event"] for e in logs].count("approval.requested") == 3

        await hl.decide(pending[0].id, True, by="ops")
        with anyio.fail_after(5):
            while len(await hl.pending()) > 2:
                await anyio.sleep(0.01)
        outcomes.start(lambda: refund(99))  # a slot is free again
        with anyio.fail_after(5):
            while len(await hl.pending()) < 3:
                await anyio.sleep(0.01)
        for request in await hl.pending():
            await hl.decide(request.id, False, by="ops")
    assert ran == [pending[0].kwargs["n"]]
    assert sorted(denied) == sorted(request.kwargs["n"] for request in pending[1:])
    assert len(outcomes.ended) == 1 and isinstance(outcomes.ended[0], ApprovalDenied)


@pytest.mark.parametrize("value", [0, -1, True])
def test_max_pending_must_be_positive(value: int) -> None:
    with pytest.raises(ConfigurationError, match="max_pending"):
        HumanLayer([], listen=None, max_pending=value)


# -- slow clients --------------------------------------------------------------------------

READ_TIMEOUT = 0.5


async def _echo(request: Request) -> Response:
    return PlainTextResponse(f"read {len(await request.body())} bytes")


async def _closed(stream: SocketStream) -> bool:
    """Whether the server closed the connection (reads until it does, 10 s at most)."""
    with anyio.move_on_after(10):
        try:
            while await stream.receive():
                pass
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
            return True
    return False


async def _answer(stream: SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    with anyio.fail_after(10):
        try:
            while True:
                chunks.append(await stream.receive())
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass
    return b"".join(chunks)


async def test_slow_headers_and_bodies_are_cut_off_and_never_hold_the_listener() -> None:
    app = build_app([Route("/echo", _echo, methods=["POST"])], read_timeout=READ_TIMEOUT)
    listener = Listener(app, "127.0.0.1", 0, read_timeout=READ_TIMEOUT)
    with capture_logs() as logs:
        async with contextlib.AsyncExitStack() as streams, anyio.create_task_group() as tg:
            await tg.start(listener.serve)
            host, port = "127.0.0.1", listener.port
            dribbling = anyio.Event()

            async def connect() -> SocketStream:
                stream = await anyio.connect_tcp(host, port)
                streams.push_async_callback(stream.aclose)
                return stream

            async def dribble(stream: SocketStream, data: bytes) -> None:
                try:
                    for byte in data:
                        await stream.send(bytes([byte]))
                        dribbling.set()
                        await anyio.sleep(0.05)
                except (anyio.BrokenResourceError, OSError):
                    pass  # the server hung up, as it should

            # 1. Headers trickling in a byte at a time, forever.
            slow_headers = await connect()
            tg.start_soon(
                dribble, slow_headers, b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
            )
            # 2. A connection that never says anything.
            silent = await connect()
            # 3. Complete headers, then a few bytes of the body, and no more.
            slow_body = await connect()
            await slow_body.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
            tg.start_soon(dribble, slow_body, b"b" * 5)
            # 4. A keep-alive connection whose second request stalls mid-headers.
            kept = await connect()
            await kept.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"200 OK" in await kept.receive()
            await kept.send(b"GET /healthz HTTP/1.1\r\nHo")
            # 5. A crowd of silent connections.
            crowd = [await connect() for _ in range(100)]
            await dribbling.wait()

            # Meanwhile, everyone else is served at once.
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
                for _ in range(5):
                    assert (await client.post("/echo", content=b"z" * 1000)).text == "read 1000 bytes"

            assert await _closed(slow_headers)
            assert await _closed(silent)
            assert b"408 Request Timeout" in await _answer(slow_body)
            assert await _closed(kept)
            assert all([await _closed(stream) for stream in crowd])
            tg.cancel_scope.cancel()
    reasons: Counter[str] = Counter()
    for entry in logs:
        if entry["event"] == "listener.refused":  # a flood is one line with a count
            reasons[entry["reason"]] += entry.get("count", 1)
    assert reasons["slow body"] == 1
    assert reasons["slow headers"] == 103  # silent, trickling, stalled keep-alive, the crowd
    assert sum(1 for entry in logs if entry.get("reason") == "slow headers") <= 2  # not 103 lines


async def test_a_fast_client_is_never_cut_off_and_a_streaming_response_outlives_the_timeout() -> None:
    async def stream_for_a_while(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(4):  # 0.8 s: longer than READ_TIMEOUT, yet the client is not slow
                yield b"tick\n"
                await anyio.sleep(0.2)

        from starlette.responses import StreamingResponse

        return StreamingResponse(chunks())

    routes = [Route("/echo", _echo, methods=["POST"]), Route("/stream", stream_for_a_while)]
    listener = Listener(
        build_app(routes, read_timeout=READ_TIMEOUT), "127.0.0.1", 0, read_timeout=READ_TIMEOUT
    )
    async with anyio.create_task_group() as tg:
        await tg.start(listener.serve)
        async with httpx.AsyncClient(base_url=listener.url) as client:
            assert (await client.get("/stream")).text == "tick\n" * 4
            for _ in range(3):  # the same keep-alive connection, idle for a while between requests
                response = await client.post("/echo", content=b"q" * 100_000)
                assert response.text == "read 100000 bytes"
                await anyio.sleep(READ_TIMEOUT * 1.5)
        tg.cancel_scope.cancel()


async def test_the_embedded_listener_keeps_deciding_while_slow_clients_hang_on(
    fake_slack: FakeSlack, inbox: Inbox
) -> None:
    async with serving(fake_slack, inbox, listen="127.0.0.1:0") as site:
        assert site.hl.url is not None
        host, port = site.hl.url.removeprefix("http://").rsplit(":", 1)
        hangers = [await anyio.connect_tcp(host, int(port)) for _ in range(50)]
        for stream in hangers:
            await stream.send(b"POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npay")
        async with httpx.AsyncClient(base_url=site.hl.url) as client:
            csrf = await web_session(client)
            response = await client.post(
                f"/approvals/requests/{site.request.id}",
                data={"csrf": csrf, "action": "approve"},
                headers={"accept": "application/json"},
            )
        assert response.json()["status"] == "approved"
        with anyio.fail_after(5):
            while not site.outcomes.ended:
                await anyio.sleep(0.01)
        assert site.outcomes.ended == ["wired 5000"]
        assert (await site.hl.get(site.request.id)).status is Status.APPROVED
        for stream in hangers:
            await stream.aclose()


# -- clients that do not read, pipeline without end, or come in too many ------------------

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


async def _connect(port: int, *, receive_buffer: int | None = None) -> socket.socket:
    """A raw non-blocking client socket connected to the listener (it reads only when told)."""
    sock = socket.socket()
    try:
        if receive_buffer is not None:  # a small window: the server's writes back up sooner
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


async def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or resets) the connection, 10 s at most."""
    loop = asyncio.get_running_loop()
    chunks = []
    with anyio.fail_after(10):
        try:
            while chunk := await loop.sock_recv(sock, 65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


@contextlib.contextmanager
def _descriptor_limit(limit: int) -> Iterator[None]:
    """This process's soft RLIMIT_NOFILE set to ``limit`` for the block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < limit:
        pytest.skip(f"needs {limit} file descriptors; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_client_that_pipelines_without_reading_is_cut_off_after_max_pipelined() -> None:
    listener = Listener(build_app([]), "127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        await tg.start(listener.serve)
        sock = await _connect(listener.port)
        with sock, capture_logs() as logs:
            sock.send(HEALTHZ * 50)
            answered = await _read_all(sock)
        tg.cancel_scope.cancel()
    # The first request, then MAX_PIPELINED of those queued behind it; then the connection closes.
    assert answered.count(b"HTTP/1.1 200 OK") == MAX_PIPELINED + 1
    assert answered.endswith(b"\r\n\r\nok")
    assert [(e["event"], e["reason"]) for e in logs] == [("listener.refused", "too many pipelined requests")]


async def test_a_response_the_client_does_not_read_in_time_is_dropped_with_its_connection() -> None:
    size = 8 * 1024 * 1024

    async def big(request: Request) -> Response:
        return Response(b"x" * size, media_type="application/octet-stream")

    listener = Listener(
        build_app([Route("/big", big)], read_timeout=READ_TIMEOUT), "127.0.0.1", 0, read_timeout=READ_TIMEOUT
    )
    async with anyio.create_task_group() as tg:
        await tg.start(listener.serve)
        sock = await _connect(listener.port, receive_buffer=4096)
        with sock, capture_logs() as logs:
            sock.send(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            with anyio.fail_after(10):
                while not logs:  # the write deadline passes while this client reads nothing
                    await anyio.sleep(0.05)
            received = await _read_all(sock)
        tg.cancel_scope.cancel()
    assert received.startswith(b"HTTP/1.1 200 OK")
    assert len(received) < size  # the rest was dropped, not waited for
    assert [(e["event"], e["reason"]) for e in logs] == [("listener.refused", "slow reader")]


async def test_connections_beyond_the_cap_are_closed_at_once_and_logged_as_a_count() -> None:
    listener = Listener(build_app([]), "127.0.0.1", 0, max_connections=3)
    loop = asyncio.get_running_loop()

    async def healthz(sock: socket.socket) -> bytes:
        await loop.sock_sendall(sock, HEALTHZ)
        with anyio.fail_after(10):
            return await loop.sock_recv(sock, 65536)

    with capture_logs() as logs, contextlib.ExitStack() as sockets:
        async with anyio.create_task_group() as tg:
            await tg.start(listener.serve)
            held = [sockets.enter_context(await _connect(listener.port)) for _ in range(3)]
            for sock in held:  # answered, and kept alive: three connections open
                assert (await healthz(sock)).startswith(b"HTTP/1.1 200 OK")
            excess = [sockets.enter_context(await _connect(listener.port)) for _ in range(10)]
            assert [await _read_all(sock) for sock in excess] == [b""] * 10
            held[0].close()

            async def served() -> bool:
                sock = sockets.enter_context(await _connect(listener.port))
                try:
                    return (await healthz(sock)).startswith(b"HTTP/1.1 200 OK")
                except OSError:
                    return False

            with anyio.fail_after(10):  # a slot frees up once the server sees the close
                while not await served():
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    refusals = [e for e in logs if e["event"] == "listener.refused"]
    assert {e["reason"] for e in refusals} == {"too many connections"}
    # The first refusal at once, the others counted in one line at shutdown.
    assert len(refusals) == 2 and sum(e["count"] for e in refusals) >= 10


async def test_accept_errors_are_logged_once_per_interval_with_a_count() -> None:
    listener = Listener(build_app([]), "127.0.0.1", 0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    loop = asyncio.get_running_loop()
    with capture_logs() as logs, contextlib.ExitStack() as stack:
        clients = [stack.enter_context(socket.socket()) for _ in range(3)]  # their descriptors, now
        async with anyio.create_task_group() as tg:
            await tg.start(listener.serve)
            lowest_free = os.open(os.devnull, os.O_RDONLY)
            os.close(lowest_free)
            resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no descriptor left
            try:
                for sock in clients:  # queued in the backlog: every accept fails with EMFILE
                    sock.setblocking(False)
                    await loop.sock_connect(sock, ("127.0.0.1", listener.port))
                    await loop.sock_sendall(sock, HEALTHZ)
                with anyio.fail_after(10):
                    while not any(e["event"] == "listener.accept_failed" for e in logs):
                        await anyio.sleep(0.05)
                await anyio.sleep(1)  # the listener retries meanwhile, and logs no more lines
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            during = list(logs)
            for sock in clients:  # descriptors are back: the queued clients are served
                with anyio.fail_after(10):
                    assert (await loop.sock_recv(sock, 65536)).startswith(b"HTTP/1.1 200 OK")
            tg.cancel_scope.cancel()
    emfile = ("listener.accept_failed", os.strerror(errno.EMFILE))
    lines = [e for e in logs if e["event"] == "listener.accept_failed"]
    assert [(e["event"], e["reason"]) for e in during if e in lines] == [emfile]
    # The retries since are counted in one more line, at the interval's end or at shutdown.
    assert [(e["event"], e["reason"]) for e in lines] == [emfile, emfile]
    assert sum(e["count"] for e in lines) >= 5


SLOW_READERS = 1_000

# A process of its own: its sockets are not the listener's descriptors, and it never reads.
SLOW_READERS_SCRIPT = r"""
import resource, select, socket, sys, time

port, count = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft < count + 64:  # one descriptor per connection (a default of 1024 is short)
    resource.setrlimit(resource.RLIMIT_NOFILE, (count + 64, hard))
requests = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 200
sockets = []
try:
    for _ in range(count):  # each asks 200 times, and never reads an answer
        sock = socket.socket()
        sockets.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        try:
            sock.send(requests)
        except BlockingIOError:
            pass
    print("open", flush=True)
    # Still reading nothing: which connections has the server hung up on? (60 s at most)
    poller = select.poll()
    for sock in sockets:
        poller.register(sock, select.POLLRDHUP)
    open_ = {sock.fileno() for sock in sockets}
    deadline = time.monotonic() + 60
    while open_ and time.monotonic() < deadline:
        for fd, _ in poller.poll(1000):
            poller.unregister(fd)
            open_.discard(fd)
    print(f"cut off {count - len(open_)}", flush=True)
    sys.stdin.read()  # the sockets stay open on this side until the test ends
finally:
    for sock in sockets:
        sock.close()
"""


# The agent under attack, in a process of its own as in production: a plain event loop, and
# no coverage tracing (the test process has both, and they slow every request several times).
SLACK_AGENT_SCRIPT = r"""
import logging
import sys

import anyio
import structlog

from humanlayer_async import HumanLayer
from humanlayer_async.channels import SlackChannel

# Its standard output says where it listens and how the tool ended; warnings go to stderr.
structlog.configure(
    wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    logger_factory=structlog.PrintLoggerFactory(sys.stderr),
)


async def main() -> None:
    api_url, bot_token, secret, approver = sys.argv[1:5]
    slack = SlackChannel(
        bot_token=bot_token, signing_secret=secret, channel="C0APPROVALS", base_url=api_url,
        approvers=[approver],
    )
    async with HumanLayer([slack], listen="127.0.0.1:0") as hl:

        @hl.require_approval()
        async def deploy(version: str) -> str:
            return f"deployed {version}"

        print(hl.url, flush=True)
        print(await deploy("v2"), flush=True)


anyio.run(main)
"""


def _production_env() -> dict[str, str]:
    """This environment without coverage's hooks (pytest-cov measures child processes too)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("COV_CORE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


async def test_a_thousand_slow_readers_are_cut_off_and_a_signed_slack_click_is_answered(
    fake_slack: FakeSlack,
) -> None:
    """While 1,000 connections pipeline requests and read nothing, a genuine click is answered
    within 2 s and its tool resumes; then every one of them is cut off."""
    command = [sys.executable, "-c", SLACK_AGENT_SCRIPT, fake_slack.api_url, BOT_TOKEN, SLACK_SECRET]
    agent = await anyio.open_process([*command, SLACK_APPROVER], env=_production_env(), cwd=ROOT, stderr=None)
    readers: anyio.abc.Process | None = None
    try:
        assert agent.stdout is not None
        said = BufferedByteReceiveStream(agent.stdout)
        with anyio.fail_after(30):
            url = (await said.receive_until(b"\n", 200)).decode()
            [((_, ts), message)] = await fake_slack.wait_for(lambda: list(fake_slack.messages.items()))
        [request_id] = {  # every button's value starts with the request's id
            element["value"].split()[0]
            for block in message["blocks"]
            if block["type"] == "actions"
            for element in block["elements"]
        }
        readers = await anyio.open_process(
            [sys.executable, "-c", SLOW_READERS_SCRIPT, url.rsplit(":", 1)[1], str(SLOW_READERS)]
        )
        assert readers.stdout is not None
        lines = BufferedByteReceiveStream(readers.stdout)
        with anyio.fail_after(90):
            assert await lines.receive_until(b"\n", 100) == b"open"
        # All 1,000 are open and reading nothing: a genuine click is answered meanwhile.
        body, headers = signed_slack(slack_block_actions(request_id, user=SLACK_APPROVER, message_ts=ts))
        async with httpx.AsyncClient(base_url=url) as client:
            with anyio.fail_after(2):
                response = await client.post("/slack/events", content=body, headers=headers)
        assert response.status_code == 200
        with anyio.fail_after(10):
            assert await said.receive_until(b"\n", 200) == b"deployed v2"  # the tool resumed
        with anyio.fail_after(90):
            # Before, the listener answered until their buffers were full, then held every
            # connection forever, until the process ran out of descriptors.
            assert await lines.receive_until(b"\n", 100) == f"cut off {SLOW_READERS}".encode()
    finally:
        for process in (readers, agent):
            if process is not None:
                process.kill()  # and its sockets with it
                with anyio.CancelScope(shield=True):
                    await process.aclose()


def test_the_listener_leaves_a_quarter_of_the_descriptors_to_the_rest_of_the_process() -> None:
    with _descriptor_limit(1024):
        assert Listener(build_app([]), "127.0.0.1", 0).max_connections == 768
    with _descriptor_limit(200):
        assert Listener(build_app([]), "127.0.0.1", 0).max_connections == 136  # 64 at least
