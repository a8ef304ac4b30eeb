"""Faults injected for real, each checked for the two failures an approval gate must not have:
a human's answer lost, or a tool run without a yes.

Slack's API and the SMTP server sit behind a loopback proxy that refuses, goes silent, loses
answers or cuts connections mid-stream; a second process holds the SQLite file's write lock;
an agent process is killed right after its decision is stored; a channel has bugs. Retry
delays are scaled down so "Slack is down for a minute" takes a second.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, MutableMapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import httpx
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from structlog.testing import capture_logs

from humanlayer_async import ApprovalRequest, ChannelError, HumanLayer, Status, StoreError
from humanlayer_async.channels import BaseChannel, EmailChannel, SlackChannel, WebChannel
from humanlayer_async.channels import slack as slack_module
from humanlayer_async.stores import DurableStore, SQLiteStore, store_from_url
from humanlayer_async.testing import slack_block_actions, wait_for_pending

from .conftest import ALICE, Inbox, Outcomes, make_channel, post_mailgun
from .durable_helpers import finish, spawn_agent, starts
from .fake_slack import BOT_TOKEN, FakeSlack
from .flaky_proxy import FlakyProxy
from .hostile import SLACK_APPROVER, SLACK_SECRET, WEB_TOKEN, signed_slack, web_session

pytestmark = pytest.mark.anyio

CRASH_AGENT = Path(__file__).with_name("crash_agent.py")


@pytest.fixture
def quick_slack_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slack's retry schedule scaled down: backoff 0.15 s (doubling), 0.3 s per HTTP call."""
    monkeypatch.setattr(slack_module, "_BACKOFF", 0.15)
    monkeypatch.setattr(slack_module, "_HTTP_TIMEOUT", 0.3)


@contextlib.asynccontextmanager
async def slack_behind(proxy: FlakyProxy, slack: FakeSlack, **options: Any) -> AsyncIterator[SlackChannel]:
    yield SlackChannel(
        bot_token=options.pop("bot_token", BOT_TOKEN),
        signing_secret=SLACK_SECRET,
        channel="C0APPROVALS",
        base_url=f"http://127.0.0.1:{proxy.port}/api/",
        approvers=[SLACK_APPROVER],
        **options,
    )


class SlackRig(NamedTuple):
    """A running HumanLayer whose Slack channel reaches the fake Slack through a flaky proxy."""

    proxy: FlakyProxy
    hl: HumanLayer
    client: httpx.AsyncClient  # to the HumanLayer's listener
    outcomes: Outcomes
    runs: list[int]  # the amounts the gated ``wire`` tool actually ran with
    wire: Callable[[int], Coroutine[Any, Any, int]]


@contextlib.asynccontextmanager
async def slack_rig(fake_slack: FakeSlack) -> AsyncIterator[SlackRig]:
    runs: list[int] = []
    async with (
        FlakyProxy(int(fake_slack.url.rsplit(":", 1)[1])) as proxy,
        slack_behind(proxy, fake_slack) as channel,
        HumanLayer([channel], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
        anyio.create_task_group() as tg,
    ):

        @hl.require_approval()
        async def wire(amount: int) -> int:
            runs.append(amount)
            return amount

        yield SlackRig(proxy, hl, client, Outcomes(tg), runs, wire)


async def click(client: httpx.AsyncClient, request_id: str, action: str = "approve") -> httpx.Response:
    body, headers = signed_slack(slack_block_actions(request_id, action, user=SLACK_APPROVER))  # type: ignore[arg-type]
    return await client.post("/slack/events", content=body, headers=headers)


async def logged(
    logs: Sequence[MutableMapping[str, Any]], event: str, count: int
) -> list[MutableMapping[str, Any]]:
    """The ``event`` entries of ``logs``, once there are ``count`` of them."""
    with anyio.fail_after(10):
        while len(found := [entry for entry in logs if entry["event"] == event]) < count:
            await anyio.sleep(0.005)
    return found


async def ended(outcomes: Outcomes, count: int) -> list[object]:
    with anyio.fail_after(10):
        while len(outcomes.ended) < count:
            await anyio.sleep(0.01)
    return outcomes.ended


# -- Slack's API failing ------------------------------------------------------------------------


@pytest.mark.usefixtures("quick_slack_retries")
async def test_refused_silent_and_5xx_slack_is_retried_and_the_request_delivered_once(
    fake_slack: FakeSlack,
) -> None:
    async with slack_rig(fake_slack) as rig:
        proxy, hl, client, outcomes, runs, wire = rig
        with capture_logs() as logs:
            await proxy.set_mode("refuse")
            outcomes.start(lambda: wire(100))
            await logged(logs, "slack.retry", 1)  # connection refused
            await proxy.set_mode("silent")
            await logged(logs, "slack.retry", 2)  # no answer within the HTTP timeout
            fake_slack.fail("chat.postMessage", 503)
            await proxy.set_mode("pass")
            await logged(logs, "slack.retry", 3)  # 503 from Slack
            await fake_slack.wait_calls("chat.postMessage")
            [request] = await wait_for_pending(hl, within=5)
            assert runs == []
            assert (await click(client, request.id)).status_code == 200
            assert await ended(outcomes, 1) == [100]
        errors = [entry["error"] for entry in logs if entry["event"] == "slack.retry"]
    assert "Connect" in errors[0] and "Timeout" in errors[1] and errors[2] == "internal_error", errors
    assert len(fake_slack.received("chat.postMessage")) == 1  # delivered once, nothing lost
    assert runs == [100]


@pytest.mark.usefixtures("quick_slack_retries")
async def test_a_lost_answer_may_post_twice_but_the_tool_runs_once(fake_slack: FakeSlack) -> None:
    async with slack_rig(fake_slack) as rig:
        proxy, hl, client, outcomes, runs, wire = rig
        with capture_logs() as logs:
            await proxy.set_mode("lose_answer")  # Slack posts, its answer never arrives
            outcomes.start(lambda: wire(7))
            await fake_slack.wait_calls("chat.postMessage")
            await logged(logs, "slack.retry", 1)
            await proxy.set_mode("pass")
            await fake_slack.wait_calls("chat.postMessage", 2)
            [request] = await wait_for_pending(hl, within=5)
            first, second = await click(client, request.id), await click(client, request.id)
            assert (first.status_code, second.status_code) == (200, 200)
            assert await ended(outcomes, 1) == [7]
        notices = await fake_slack.wait_calls("chat.postEphemeral")
    assert runs == [7]
    assert "already approved by <@U0ALICE> via slack" in notices[0].data["text"]


@pytest.mark.usefixtures("quick_slack_retries")
async def test_slack_down_for_a_while_fails_new_calls_closed_and_loses_no_decision(
    fake_slack: FakeSlack,
) -> None:
    runs: list[str] = []
    async with FlakyProxy(int(fake_slack.url.rsplit(":", 1)[1])) as proxy:
        web = WebChannel(token=WEB_TOKEN)
        async with (
            slack_behind(proxy, fake_slack) as slack_channel,
            HumanLayer([slack_channel, web], listen="127.0.0.1:0") as hl,
            httpx.AsyncClient(base_url=str(hl.url)) as client,
            anyio.create_task_group() as tg,
        ):

            @hl.require_approval(channels=[slack_channel])
            async def step(name: str) -> str:
                runs.append(name)
                return name

            outcomes = Outcomes(tg)
            with capture_logs() as logs:
                outcomes.start(lambda: step("before"))
                [before] = await wait_for_pending(hl, within=5)
                await logged(logs, "approval.delivered", 1)
                await proxy.set_mode("refuse")  # Slack is unreachable from here on
                with pytest.raises(ChannelError, match=r"slack: Slack chat\.postMessage failed 5 times"):
                    await step("during")
                [failed] = [e["request_id"] for e in logs if e["event"] == "approval.failed"]
                # Decided in the console while Slack is down: the decision stands, the tool runs.
                response = await client.post(
                    f"/approvals/requests/{before.id}",
                    data={"csrf": await web_session(client, str(hl.url)), "action": "approve"},
                    headers={"accept": "application/json"},
                )
                assert response.json()["status"] == "approved"
                assert await ended(outcomes, 1) == ["before"]
                await logged(logs, "approval.update_failed", 1)  # the message could not say so

                await proxy.set_mode("pass")  # Slack is back
                outcomes.start(lambda: step("after"))
                await fake_slack.wait_calls("chat.postMessage", 2)
                after = next(r for r in await wait_for_pending(hl, within=5) if r.kwargs["name"] == "after")
                assert (await click(client, after.id)).status_code == 200
                assert (await click(client, before.id)).status_code == 200  # the stale message
                assert await ended(outcomes, 2) == ["before", "after"]
                late = await hl.decide(failed, True, by=SLACK_APPROVER)
            notices = await fake_slack.wait_calls("chat.postEphemeral")
    assert runs == ["before", "after"]  # "during" never ran, not even after a late yes
    assert (
        late is not None and late.status is Status.FAILED and (await hl.get(failed)).status is Status.FAILED
    )
    assert "already approved by web-console via web" in notices[0].data["text"]
    attempts = [e for e in logs if e["event"] == "slack.retry" and e["call"] == "chat.postMessage"]
    assert len(attempts) >= 4


async def test_invalid_auth_fails_closed_at_once_without_retries_or_the_token(fake_slack: FakeSlack) -> None:
    revoked = "xoxb-revoked-token-SENTINEL-5150"
    channel = SlackChannel(
        bot_token=revoked, signing_secret=SLACK_SECRET, channel="C0APPROVALS", base_url=fake_slack.api_url
    )
    ran: list[bool] = []
    async with HumanLayer([channel], listen=None) as hl:

        @hl.require_approval()
        async def wire() -> None:
            ran.append(True)

        with capture_logs() as logs, pytest.raises(ChannelError, match="invalid_auth") as info:
            await wire()
        [failed] = [e["request_id"] for e in logs if e["event"] == "approval.failed"]
        assert (await hl.get(failed)).status is Status.FAILED
    assert ran == [] and len(fake_slack.received("chat.postMessage", status=None)) == 1
    assert not [e for e in logs if e["event"] == "slack.retry"]
    assert revoked not in str(info.value) and revoked not in repr(logs) and revoked not in repr(channel)


async def test_a_rate_limit_longer_than_the_request_lives_fails_it_closed() -> None:
    ran: list[int] = []
    async with FakeSlack(min_interval=60) as slack:
        channel = SlackChannel(
            bot_token=BOT_TOKEN, signing_secret=SLACK_SECRET, channel="C0APPROVALS", base_url=slack.api_url
        )
        async with HumanLayer([channel], listen=None) as hl, anyio.create_task_group() as tg:

            @hl.require_approval(timeout=5)
            async def wire(n: int) -> None:
                ran.append(n)

            Outcomes(tg).start(lambda: wire(1))
            await slack.wait_calls("chat.postMessage")
            with capture_logs() as logs, pytest.raises(ChannelError, match="ratelimited, and time ran out"):
                await wire(2)  # Slack says: retry in 60 s; the request expires in 5
            [failed] = [e["request_id"] for e in logs if e["event"] == "approval.failed"]
            assert (await hl.get(failed)).status is Status.FAILED
            tg.cancel_scope.cancel()
    assert ran == [] and len(slack.received("chat.postMessage", status=429)) == 1


# -- SMTP failing -----------------------------------------------------------------------------


def email_behind(proxy: FlakyProxy, inbox: Inbox) -> EmailChannel:
    channel = make_channel(inbox, to=ALICE)
    channel.smtp_port = proxy.port
    return channel


async def test_smtp_dropping_mid_data_is_retried_and_delivered_whole_once(inbox: Inbox) -> None:
    runs: list[str] = []
    async with FlakyProxy(inbox.port) as proxy:
        channel = email_behind(proxy, inbox)
        async with (
            HumanLayer([channel], listen="127.0.0.1:0") as hl,
            httpx.AsyncClient(base_url=str(hl.url)) as client,
            anyio.create_task_group() as tg,
        ):

            @hl.require_approval()
            async def deploy(version: str) -> str:
                runs.append(version)
                return version

            outcomes = Outcomes(tg)
            with capture_logs() as logs:
                await proxy.set_mode("cut_data")
                outcomes.start(lambda: deploy("v2"))
                await logged(logs, "email.smtp_retry", 1)
                await proxy.set_mode("pass")
                [mail] = await inbox.wait(1)
                await wait_for_pending(hl, within=5)
                assert runs == []
                response = await post_mailgun(client, to=mail["Reply-To"], sender=ALICE, text="approve")
                assert response.status_code == 200
                assert await ended(outcomes, 1) == ["v2"]
            [retry] = [e for e in logs if e["event"] == "email.smtp_retry"]
    assert any(word in retry["error"].lower() for word in ("eof", "disconnect", "closed")), retry
    assert inbox.messages[0]["Message-ID"] == mail["Message-ID"]
    assert "deploy" in mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert runs == ["v2"]


async def test_smtp_always_dropping_mid_data_fails_the_call_closed(inbox: Inbox) -> None:
    async with FlakyProxy(inbox.port) as proxy:
        await proxy.set_mode("cut_data")
        async with HumanLayer([email_behind(proxy, inbox)], listen=None) as hl:

            @hl.require_approval()
            async def deploy() -> None:
                raise AssertionError("ran without a yes")

            with capture_logs() as logs, pytest.raises(ChannelError, match="could not deliver"):
                await deploy()
            [failed] = [e["request_id"] for e in logs if e["event"] == "approval.failed"]
            assert (await hl.get(failed)).status is Status.FAILED
        assert proxy.connections == 3  # the first try and both retries
    assert inbox.messages == []


@pytest.mark.usefixtures("quick_slack_retries")
async def test_every_outbound_channel_down_fails_closed_and_records_the_request(
    fake_slack: FakeSlack, inbox: Inbox
) -> None:
    ran: list[bool] = []
    async with (
        FlakyProxy(int(fake_slack.url.rsplit(":", 1)[1])) as slack_proxy,
        FlakyProxy(inbox.port) as smtp_proxy,
    ):
        await slack_proxy.set_mode("refuse")
        await smtp_proxy.set_mode("silent")
        async with slack_behind(slack_proxy, fake_slack) as slack_channel:
            email = email_behind(smtp_proxy, inbox)
            email.smtp_timeout = 0.3
            async with HumanLayer([slack_channel, email], listen=None) as hl:

                @hl.require_approval()
                async def drop_table(name: str) -> None:
                    ran.append(True)

                with capture_logs() as logs, pytest.raises(ChannelError) as info:
                    await drop_table("users")
                [failed] = [e for e in logs if e["event"] == "approval.failed"]
                request = await hl.get(failed["request_id"])
                late = await hl.decide(request.id, True, by="ops")
                assert await hl.pending() == []
    assert "slack: " in str(info.value) and "email: " in str(info.value)
    assert request.status is Status.FAILED and request.decision is not None
    assert request.decision.via == "delivery" and "slack" in (request.decision.comment or "")
    assert late is not None and late.status is Status.FAILED and ran == []
    assert {e["channel"] for e in logs if e["event"] == "approval.delivery_failed"} == {"slack", "email"}


# -- the SQLite file locked by another process ------------------------------------------------

LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
print("released", flush=True)
"""


@contextlib.asynccontextmanager
async def locked(path: Path) -> AsyncIterator[anyio.abc.Process]:
    """Another process holding ``path``'s write lock until the block ends."""
    process = await anyio.open_process([sys.executable, "-c", LOCKER, str(path)])
    assert process.stdout is not None and process.stdin is not None
    try:
        with anyio.fail_after(10):
            assert (await process.stdout.receive()).startswith(b"locked")
        yield process
    finally:
        with anyio.fail_after(10), contextlib.suppress(anyio.BrokenResourceError):
            await process.stdin.send(b"go\n")  # unless the test released it already
        with anyio.fail_after(10):
            await process.wait()
        await process.aclose()


async def test_sqlite_locked_by_another_process_fails_closed_and_slack_retries_the_click(
    fake_slack: FakeSlack, tmp_path: Path
) -> None:
    path = tmp_path / "approvals.db"
    store = SQLiteStore(path, busy_timeout=0.3)
    channel = SlackChannel(
        bot_token=BOT_TOKEN,
        signing_secret=SLACK_SECRET,
        channel="C0APPROVALS",
        base_url=fake_slack.api_url,
        approvers=[SLACK_APPROVER],
    )
    runs: list[int] = []
    async with (
        HumanLayer([channel], store=store, listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
        anyio.create_task_group() as tg,
    ):

        @hl.require_approval()
        async def wire(amount: int) -> int:
            runs.append(amount)
            return amount

        outcomes = Outcomes(tg)
        outcomes.start(lambda: wire(1))
        [request] = await wait_for_pending(hl, within=5)
        await fake_slack.wait_calls("chat.postMessage")
        body, headers = signed_slack(slack_block_actions(request.id, user=SLACK_APPROVER))

        with capture_logs() as logs:
            async with locked(path):
                with pytest.raises(StoreError, match="locked"):
                    await wire(2)  # cannot be stored, so it is not sent and does not run
                refused = await client.post("/slack/events", content=body, headers=headers)
                assert refused.status_code == 500  # not acknowledged: Slack sends it again
            retried = await client.post("/slack/events", content=body, headers=headers)
        assert retried.status_code == 200
        assert await ended(outcomes, 1) == [1]
        assert [r.kwargs for r in await store.list_pending()] == []
        # A lock held for less than busy_timeout only delays the write.
        async with locked(path) as locker:
            assert locker.stdin is not None
            await locker.stdin.send(b"go\n")
            outcomes.start(lambda: wire(3))
            [third] = await wait_for_pending(hl, within=5)
        await hl.decide(third.id, True, by=SLACK_APPROVER)
        assert await ended(outcomes, 2) == [1, 3]
    assert runs == [1, 3]
    assert len(fake_slack.received("chat.postMessage")) == 2  # the refused call sent nothing
    assert [e["path"] for e in logs if e["event"] == "listener.error"] == ["/slack/events"]
    with sqlite3.connect(path) as conn:  # the file is intact and holds what happened
        statuses = sorted(row[0] for row in conn.execute("SELECT status FROM hl_requests"))
    assert statuses == ["approved", "approved"]


# -- killed between storing the decision and running the tool -----------------------------------


async def test_killed_right_after_its_own_decision_is_stored_runs_the_tool_once_on_restart(
    store_url: str, tmp_path: Path
) -> None:
    """The agent's own channel approves; the process is killed (SIGKILL) the moment the decision
    is written, before anything else of it runs. (Killed while waiting, or inside the tool: see
    test_reattach.)"""
    log = tmp_path / "runs.log"
    crashed = await anyio.open_process(
        [sys.executable, str(CRASH_AGENT), store_url, "payout-7", str(log)], env=_agent_env()
    )
    with anyio.fail_after(20):
        code = await crashed.wait()
    await crashed.aclose()
    assert code == -9 and starts(log) == []
    store: DurableStore = store_from_url(store_url)
    try:
        [request] = [r for r in await _all(store) if r.run_id == "payout-7"]
        assert request.status is Status.APPROVED and request.execution is None

        for _ in range(2):  # restarted, then replayed once more: one run in all
            assert await finish(await spawn_agent(store_url, "payout-7", log)) == (
                0,
                {"result": {"sent": 5, "to": "acme"}},
            )
        assert len(starts(log)) == 1
        events = [e.event for e in await store.history(request_id=request.id)]
        # The decision stands as stored, with its audit entry: the store wrote both in one transaction.
        assert events.count("approval.decided") == 1 and events.count("approval.executed") == 1
        stored = await store.get(request.id)
        assert stored.decision is not None and (stored.decision.by, stored.decision.via) == ("cfo", "auto")
    finally:
        await store.aclose()


def _agent_env() -> dict[str, str]:
    from .durable_helpers import _env

    return _env()


async def _all(store: DurableStore) -> list[ApprovalRequest]:
    ids = {entry.request_id for entry in await store.history()}
    return [await store.get(request_id) for request_id in ids]


# -- bugs inside the listener ------------------------------------------------------------------


class BuggyChannel(BaseChannel):
    """A channel with bugs: ``send`` raises, one route fails every other call, another hangs
    until ``release`` is set."""

    name = "buggy"

    def __init__(self) -> None:
        self.calls = 0
        self.release = anyio.Event()

    async def send(self, request: ApprovalRequest) -> str | None:
        raise KeyError("a bug in send")

    def routes(self) -> Sequence[BaseRoute]:
        return [Route("/buggy", self.flaky, methods=["POST"]), Route("/stuck", self.stuck)]

    async def flaky(self, request: Request) -> Response:
        self.calls += 1
        if self.calls % 2:
            raise RuntimeError("a bug in one handler")
        return PlainTextResponse("fine")

    async def stuck(self, request: Request) -> Response:
        await self.release.wait()
        return PlainTextResponse("released")


async def test_a_buggy_channel_costs_only_its_own_requests(fake_slack: FakeSlack) -> None:
    buggy = BuggyChannel()
    slack_channel = SlackChannel(
        bot_token=BOT_TOKEN,
        signing_secret=SLACK_SECRET,
        channel="C0APPROVALS",
        base_url=fake_slack.api_url,
        approvers=[SLACK_APPROVER],
    )
    runs: list[int] = []
    async with (
        HumanLayer([buggy, slack_channel], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
        anyio.create_task_group() as tg,
    ):

        @hl.require_approval()
        async def wire(amount: int) -> int:
            runs.append(amount)
            return amount

        outcomes = Outcomes(tg)
        with capture_logs() as logs:
            outcomes.start(lambda: wire(9))  # buggy's send fails; Slack delivers: enough
            [request] = await wait_for_pending(hl, within=5)
            stuck = anyio.Event()
            hung: list[str] = []

            async def hang() -> None:
                async with httpx.AsyncClient(base_url=str(hl.url), timeout=None) as other:
                    stuck.set()
                    hung.append((await other.get("/stuck")).text)

            tg.start_soon(hang)
            await stuck.wait()
            statuses = [(await client.post("/buggy")).status_code for _ in range(4)]
            assert (await click(client, request.id)).status_code == 200  # served while /stuck hangs
            assert await ended(outcomes, 1) == [9]
            assert hung == []  # still waiting, all along
            buggy.release.set()
        assert (await client.get("/healthz")).text == "ok"
    assert statuses == [500, 200, 500, 200] and hung == ["released"]
    assert runs == [9]
    assert [e["channel"] for e in logs if e["event"] == "approval.delivery_failed"] == ["buggy"]
    assert len([e for e in logs if e["event"] == "listener.error"]) == 2
