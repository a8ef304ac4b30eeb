"""The library's own I/O never waits for the application's worker threads.

Agent frameworks run sync tools in worker threads (``asyncio.to_thread``,
``anyio.to_thread.run_sync``), and a gated sync tool holds its thread until a human
decides. With every thread of those pools taken by waiting tools, the deliveries they
wait for still go out: to Slack and to an SMTP server reached by host name (so each
connection needs a DNS lookup), and through an SQLite store.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import re
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any, TypeVar, cast

import aiohttp
import anyio
import anyio.to_thread
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from humanlayer_async import ApprovalRequest, ChannelError, HumanLayer, Status, _threads
from humanlayer_async.channels import BaseChannel, EmailChannel, SlackChannel
from humanlayer_async.channels._dns import ThreadsResolver
from humanlayer_async.stores import SQLiteStore
from humanlayer_async.testing import slack_block_actions

from .fake_slack import APP_TOKEN, BOT_TOKEN, Call, FakeSlack

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_slack_environment")]

T = TypeVar("T")

THREADS = 4  # the application's pool: asyncio's default executor, or anyio's default limiter
CALLS = 8  # sync tool calls: twice as many as the pool has threads
PATIENCE = 20.0  # seconds before a deadlock fails the test (under fake_slack's own 30)
CHANNEL = "C0APPROVALS"
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


class Workers:
    """The application's worker pool, as agent frameworks use it to run sync tools."""

    def __init__(self, pool: str) -> None:
        self.pool = pool

    async def run(self, func: Callable[[], T]) -> T:
        if self.pool == "asyncio":
            return await asyncio.to_thread(func)
        return await anyio.to_thread.run_sync(func, abandon_on_cancel=True)


@pytest.fixture(params=["asyncio", "anyio"])
async def workers(request: pytest.FixtureRequest) -> AsyncIterator[Workers]:
    """asyncio's default executor or anyio's default thread limiter, cut to ``THREADS``."""
    if request.param == "asyncio":
        executor = ThreadPoolExecutor(THREADS, thread_name_prefix="application")
        asyncio.get_running_loop().set_default_executor(executor)  # shut down with the loop
        yield Workers("asyncio")
    else:
        limiter = anyio.to_thread.current_default_thread_limiter()
        tokens, limiter.total_tokens = limiter.total_tokens, THREADS
        try:
            yield Workers("anyio")
        finally:
            limiter.total_tokens = tokens


async def approve_waiting_calls(
    hl: HumanLayer,
    workers: Workers,
    tool: Callable[[int], str],
    delivered: Callable[[], Awaitable[str]],
) -> list[str]:
    """Call the gated sync ``tool`` ``CALLS`` times, each in a thread of ``workers`` (blocked
    there until decided); approve each request once ``delivered()`` returns its id.
    """
    returned: list[str] = []

    def call(n: int) -> str:
        result = tool(n)
        returned.append(result)
        return result

    async def approve() -> None:
        for _ in range(CALLS):
            await hl.decide(await delivered(), True, by="ops")

    results: list[str] = []
    with anyio.move_on_after(PATIENCE) as patience:
        async with anyio.create_task_group() as tg:
            tg.start_soon(approve)
            results = await asyncio.gather(*(workers.run(functools.partial(call, n)) for n in range(CALLS)))
    if patience.cancelled_caught:  # closing the HumanLayer then fails the calls still waiting
        pytest.fail(
            f"deadlock: {len(returned)} of {CALLS} sync calls returned; the library's own I/O "
            f"waited for the {THREADS} {workers.pool} worker threads its waiting calls hold"
        )
    return results


def by_host_name(slack: FakeSlack) -> FakeSlack:
    """``slack``, reached as ``localhost``: each new connection needs a DNS lookup."""
    assert slack.url.startswith("http://127.0.0.1:")
    slack.url = slack.url.replace("127.0.0.1", "localhost")
    return slack


def request_id_of(post: Call) -> str:
    """The request a posted message shows: the value of its Approve button."""
    blocks = post.data["blocks"]
    for block in json.loads(blocks) if isinstance(blocks, str) else blocks:
        for element in block.get("elements", []):
            if "value" in element:
                return str(element["value"]).split()[0]  # the id, then the call's fingerprint
    raise AssertionError(f"no button in {blocks!r}")


async def test_slack_by_host_name_delivers_while_waiting_calls_hold_every_worker_thread(
    workers: Workers,
) -> None:
    async with FakeSlack() as slack:
        by_host_name(slack)
        channel = SlackChannel(
            bot_token=BOT_TOKEN, signing_secret=SECRET, channel=CHANNEL, base_url=slack.api_url
        )
        async with HumanLayer([channel], listen="127.0.0.1:0") as hl:

            @hl.require_approval()
            def deploy(n: int) -> str:
                return f"deployed {n}"

            posts = itertools.count(1)

            async def delivered() -> str:
                count = next(posts)
                return request_id_of((await slack.wait_calls("chat.postMessage", count))[count - 1])

            results = await approve_waiting_calls(hl, workers, deploy, delivered)

    assert results == [f"deployed {n}" for n in range(CALLS)]
    assert len(slack.received("chat.postMessage")) == CALLS
    decided = [request_id_of(post) for post in slack.received("chat.postMessage")]
    assert len(set(decided)) == CALLS


async def test_slack_socket_mode_connects_by_host_name_while_every_worker_thread_is_taken(
    workers: Workers,
) -> None:
    release = threading.Event()
    async with FakeSlack() as slack, anyio.create_task_group() as holders:
        by_host_name(slack)
        for _ in range(THREADS):  # other sync tools, waiting: every worker thread is taken
            holders.start_soon(workers.run, release.wait)
        try:
            with anyio.fail_after(PATIENCE):
                channel = SlackChannel(
                    bot_token=BOT_TOKEN, app_token=APP_TOKEN, channel=CHANNEL, base_url=slack.api_url
                )
                async with HumanLayer([channel], listen=None) as hl:
                    await slack.wait_for(lambda: slack.sockets == 1)

                    @hl.require_approval()
                    async def deploy(version: str) -> str:
                        return f"deployed {version}"

                    async with anyio.create_task_group() as tg:
                        results: list[str] = []

                        async def call() -> None:
                            results.append(await deploy("2.0"))

                        tg.start_soon(call)
                        [post] = await slack.wait_calls("chat.postMessage")
                        ack = await slack.send_envelope(
                            slack_block_actions(request_id_of(post), "approve", user="U0ALICE")
                        )
                        assert ack["envelope_id"]
                    assert results == ["deployed 2.0"]
        finally:
            release.set()
    assert len(slack.received("apps.connections.open")) == 1


class Inbox:
    """An aiosmtpd handler: each request's mail, its request id handed to the test on arrival."""

    def __init__(
        self, arrived: MemoryObjectSendStream[str], arrivals: MemoryObjectReceiveStream[str]
    ) -> None:
        self.port = 0
        self.requests: list[str] = []
        self._arrived = arrived
        self.arrivals = arrivals

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        message = message_from_bytes(cast(bytes, envelope.content), policy=policy.default)
        # The request's own mail; its follow-ups are <hl.ID.0.approved@...>.
        if match := re.fullmatch(r"<hl\.(.+)\.0@[^>]+>", str(message["Message-ID"])):
            self.requests.append(match[1])
            await self._arrived.send(match[1])
        return "250 OK"


@pytest.fixture
async def inbox() -> AsyncIterator[Inbox]:
    loop = asyncio.get_running_loop()
    arrived, arrivals = anyio.create_memory_object_stream[str](CALLS)
    with arrived, arrivals:
        box = Inbox(arrived, arrivals)
        server = await loop.create_server(lambda: SMTP(box, loop=loop), "127.0.0.1", 0)
        box.port = server.sockets[0].getsockname()[1]
        yield box
        server.close()
        await server.wait_closed()


async def test_email_by_host_name_delivers_while_waiting_calls_hold_every_worker_thread(
    workers: Workers, inbox: Inbox
) -> None:
    channel = EmailChannel(
        "alice@company.com",
        sender="approvals@company.com",
        smtp_host="localhost",
        smtp_port=inbox.port,
        token_secret="reply-token-key-4567",
    )
    async with HumanLayer([channel], listen="127.0.0.1:0") as hl:

        @hl.require_approval()
        def refund(n: int) -> str:
            return f"refunded {n}"

        results = await approve_waiting_calls(hl, workers, refund, inbox.arrivals.receive)

    assert results == [f"refunded {n}" for n in range(CALLS)]
    assert len(set(inbox.requests)) == CALLS


async def test_an_smtp_server_by_host_name_that_refuses_fails_naming_each_address_tried() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    channel = EmailChannel(
        "alice@company.com", sender="approvals@company.com", smtp_host="localhost", smtp_port=port
    )
    channel.retry_delays = ()
    async with HumanLayer([channel], listen="127.0.0.1:0") as hl:

        @hl.require_approval()
        async def refund() -> str:
            return "refunded"

        with pytest.raises(
            ChannelError, match=rf"could not connect to localhost port {port}: 127\.0\.0\.1: "
        ):
            await refund()


class Delivered(BaseChannel):
    """Hands each request's id to the test as it is sent."""

    name = "delivered"

    def __init__(self, sent: MemoryObjectSendStream[str]) -> None:
        self.ids: list[str] = []
        self._sent = sent

    async def send(self, request: ApprovalRequest) -> str | None:
        self.ids.append(request.id)
        await self._sent.send(request.id)
        return None


async def test_sqlite_store_works_while_waiting_calls_hold_every_worker_thread(
    workers: Workers, tmp_path: Path
) -> None:
    # A guard more than a regression test: the store ran on anyio worker threads under a
    # limiter of its own before, which the application's pools could not starve either.
    sent, delivered = anyio.create_memory_object_stream[str](CALLS)
    channel = Delivered(sent)
    with sent, delivered:
        async with HumanLayer([channel], store=SQLiteStore(tmp_path / "approvals.db"), listen=None) as hl:

            @hl.require_approval()
            def pay(n: int) -> str:
                return f"paid {n}"

            results = await approve_waiting_calls(hl, workers, pay, delivered.receive)

    assert results == [f"paid {n}" for n in range(CALLS)]
    reopened = SQLiteStore(tmp_path / "approvals.db", create=False)
    try:
        statuses = {(await reopened.get(request_id)).status for request_id in channel.ids}
    finally:
        await reopened.aclose()
    assert (len(channel.ids), statuses) == (CALLS, {Status.APPROVED})


# -- the library's own threads and its aiohttp resolver, as units ----------------------------


async def test_more_jobs_than_threads_all_run_on_at_most_max_threads_of_the_library() -> None:
    extra = 4
    together = threading.Barrier(_threads.MAX_THREADS, timeout=PATIENCE)  # all at once, or it breaks
    ran_on: list[threading.Thread] = []

    def job(meet: bool) -> int:
        ran_on.append(threading.current_thread())
        if meet:
            together.wait()
        return len(ran_on)

    async with anyio.create_task_group() as tg:
        for n in range(_threads.MAX_THREADS + extra):
            tg.start_soon(_threads.run_sync, functools.partial(job, n < _threads.MAX_THREADS))
    assert len(ran_on) == _threads.MAX_THREADS + extra
    threads = set(ran_on)
    assert len(threads) == _threads.MAX_THREADS
    assert all(thread.daemon and thread.name.startswith("humanlayer-io-") for thread in threads)


@pytest.mark.parametrize("abandon", [False, True], ids=["waits", "abandons"])
async def test_a_cancelled_call_waits_for_its_running_function_unless_abandoned(abandon: bool) -> None:
    started, release, returned = threading.Event(), threading.Event(), threading.Event()
    order: list[str] = []

    def function() -> str:
        started.set()
        release.wait(PATIENCE)
        order.append("function returned")
        returned.set()
        return "its result"

    async def caller(scope: anyio.CancelScope) -> None:
        with scope:
            order.append(await _threads.run_sync(function, abandon_on_cancel=abandon))
        order.append("caller left")

    scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(caller, scope)
        await anyio.to_thread.run_sync(started.wait)
        scope.cancel()
        await anyio.wait_all_tasks_blocked()  # the caller has left, or waits for the function
        release.set()
    await anyio.to_thread.run_sync(returned.wait)
    if abandon:
        assert order == ["caller left", "function returned"]
    else:  # as anyio.to_thread.run_sync: the result, and the cancellation at the next checkpoint
        assert order == ["function returned", "its result", "caller left"]
    assert scope.cancelled_caught is abandon


async def test_an_abandoned_call_that_has_not_started_never_runs() -> None:
    busy = threading.Barrier(_threads.MAX_THREADS + 1, timeout=PATIENCE)
    release = threading.Event()
    ran: list[str] = []

    def hold() -> None:
        busy.wait()
        release.wait(PATIENCE)

    async with anyio.create_task_group() as tg:
        for _ in range(_threads.MAX_THREADS):  # every thread of the library, busy
            tg.start_soon(_threads.run_sync, hold)
        await anyio.to_thread.run_sync(busy.wait)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await _threads.run_sync(functools.partial(ran.append, "abandoned"), abandon_on_cancel=True)
        release.set()
    await _threads.run_sync(functools.partial(ran.append, "next"))  # queued after the abandoned one
    assert scope.cancelled_caught
    assert ran == ["next"]


FOUND: list[tuple[Any, ...]] = [
    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.7", 443)),
    (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2001:db8::7", 443, 0, 0)),
    (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::7", 443, 0, 1)),  # link-local, scope 1
    (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (socket.AF_INET6, b"\0" * 16)),  # Python without IPv6
]


async def test_the_resolver_answers_as_aiohttps_own_but_looks_up_on_the_librarys_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    looked_up_on: list[str] = []

    def getaddrinfo(host: str, port: int, family: int, kind: int, proto: int, flags: int) -> Any:
        looked_up_on.append(threading.current_thread().name)
        assert (host, port, kind) == ("slack.example", 443, socket.SOCK_STREAM)
        return FOUND

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    ours = await ThreadsResolver().resolve("slack.example", 443, socket.AF_UNSPEC)
    theirs = await aiohttp.ThreadedResolver().resolve("slack.example", 443, socket.AF_UNSPEC)

    assert ours == theirs
    assert [(found["host"], found["port"]) for found in ours][:2] == [
        ("192.0.2.7", 443),
        ("2001:db8::7", 443),
    ]
    assert len(ours) == 3 and ours[2]["host"].startswith("fe80::7%")
    assert looked_up_on[0].startswith("humanlayer-io-")
    assert not looked_up_on[1].startswith("humanlayer-io-")  # aiohttp's: the default executor


async def test_the_resolver_finds_localhost_when_addrconfig_hides_loopback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def getaddrinfo(host: str, port: int, family: int, kind: int, proto: int, flags: int) -> Any:
        if flags & socket.AI_ADDRCONFIG or host != "localhost":  # a machine without a network
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    [found] = await ThreadsResolver().resolve("localhost", 8080)
    assert (found["hostname"], found["host"], found["port"]) == ("localhost", "127.0.0.1", 8080)
    with pytest.raises(socket.gaierror):
        await ThreadsResolver().resolve("db.internal", 5432)
