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
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio
import anyio.to_thread
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from humanlayer_async import ApprovalRequest, HumanLayer, Status
from humanlayer_async.channels import BaseChannel, EmailChannel, SlackChannel
from humanlayer_async.stores import SQLiteStore
from humanlayer_async.testing import slack_block_actions

from .fake_slack import APP_TOKEN, BOT_TOKEN, Call, FakeSlack

pytestmark = pytest.mark.anyio

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


@pytest.fixture(autouse=True)
def _no_slack_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN"):
        monkeypatch.delenv(variable, raising=False)


class SyncCallers:
    """Sync callers, each blocking its worker thread until its gated call on the loop ends.

    ``stop()`` cancels the calls still waiting, so a test that fails leaves no thread
    blocked behind it.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._calls: list[Future[Any]] = []
        self._stopped = False

    def call(self, tool: Callable[[int], Awaitable[T]], n: int) -> T:
        with self._lock:
            if self._stopped:
                raise RuntimeError("the test is over")
            call = asyncio.run_coroutine_threadsafe(cast(Any, tool(n)), self._loop)
            self._calls.append(call)
        return cast(T, call.result())

    @property
    def returned(self) -> int:
        return sum(call.done() and not call.cancelled() for call in self._calls)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        for call in self._calls:
            call.cancel()


async def approve_waiting_calls(
    hl: HumanLayer,
    workers: Workers,
    tool: Callable[[int], Awaitable[str]],
    delivered: Callable[[], Awaitable[str]],
) -> list[str]:
    """Run ``CALLS`` sync calls of ``tool`` in ``workers``; approve each request once delivered.

    ``delivered()`` waits for the next request to reach its approvers and returns its id.
    """
    callers = SyncCallers()

    async def approve() -> None:
        for _ in range(CALLS):
            await hl.decide(await delivered(), True, by="ops")

    results: list[str] = []
    with anyio.move_on_after(PATIENCE) as patience:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(approve)
                runs = (workers.run(functools.partial(callers.call, tool, n)) for n in range(CALLS))
                results = await asyncio.gather(*runs)
        finally:
            callers.stop()
    if patience.cancelled_caught:
        pytest.fail(
            f"deadlock: {callers.returned} of {CALLS} sync calls returned; the library's own I/O "
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
                return str(element["value"])
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
            async def deploy(n: int) -> str:
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
        async def refund(n: int) -> str:
            return f"refunded {n}"

        results = await approve_waiting_calls(hl, workers, refund, inbox.arrivals.receive)

    assert results == [f"refunded {n}" for n in range(CALLS)]
    assert len(set(inbox.requests)) == CALLS


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
    sent, delivered = anyio.create_memory_object_stream[str](CALLS)
    channel = Delivered(sent)
    with sent, delivered:
        async with HumanLayer([channel], store=SQLiteStore(tmp_path / "approvals.db"), listen=None) as hl:

            @hl.require_approval()
            async def pay(n: int) -> str:
                return f"paid {n}"

            results = await approve_waiting_calls(hl, workers, pay, delivered.receive)

    assert results == [f"paid {n}" for n in range(CALLS)]
    reopened = SQLiteStore(tmp_path / "approvals.db", create=False)
    try:
        statuses = {(await reopened.get(request_id)).status for request_id in channel.ids}
    finally:
        await reopened.aclose()
    assert (len(channel.ids), statuses) == (CALLS, {Status.APPROVED})
