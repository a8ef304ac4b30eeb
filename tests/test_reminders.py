"""Reminders: while a request waits, its approvers are reminded where it was delivered, each
reminder sent once (by one process of a fleet), until a decision stands."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from humanlayer_async import ConfigurationError, HumanLayer
from humanlayer_async.channels import SlackChannel, WebChannel
from humanlayer_async.stores import SQLiteStore
from humanlayer_async.testing import wait_for_pending

from .conftest import ALICE, Inbox, make_channel, text_of
from .fake_slack import BOT_TOKEN, FakeSlack
from .test_console import Terminal
from .test_web import KEY, signed_in, sse_events

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_slack_environment")]

SECRET = "reminders-signing-secret-0123456789"
EVERY = 0.3  # seconds between reminders in these tests


async def test_slack_and_the_terminal_remind_until_a_decision_stands(slack: FakeSlack) -> None:
    terminal = Terminal()
    channel = SlackChannel(
        bot_token=BOT_TOKEN, signing_secret=SECRET, channel="C0OPS", base_url=slack.api_url
    )
    try:
        async with HumanLayer([channel, terminal.channel], listen=None) as hl:

            @hl.require_approval(approvers=["U0ALICE", "S0ONCALL"], remind_every=timedelta(seconds=EVERY))
            async def restart(service: str) -> str:
                return f"restarted {service}"

            async with anyio.create_task_group() as tg:
                tg.start_soon(restart, "<!channel> api")
                [request] = await wait_for_pending(hl)
                [posted] = await slack.wait_calls("chat.postMessage")
                ts = posted.answer["ts"] if posted.answer else ""

                def reminders() -> list[dict[str, str]]:
                    return [
                        call.data
                        for call in slack.received("chat.postMessage")
                        if call.data.get("thread_ts") == ts
                    ]

                await slack.wait_for(lambda: len(reminders()) >= 2 or None)
                await terminal.wait_for(f"reminder: [{request.short_id}] still waits")
                first = reminders()[0]
                assert first["channel"] == "C0OPS"
                assert first["text"].startswith("<@U0ALICE> <!subteam^S0ONCALL> Reminder: this still waits")
                assert "<!channel> api" not in first["text"]  # the caller's text stays inert
                await hl.decide(request.id, True, by="U0ALICE")
            sent = len(reminders())
            await anyio.sleep(EVERY * 2)
            assert len(reminders()) == sent  # none after the decision
    finally:
        terminal.close()


async def test_each_reminder_is_sent_by_one_of_two_processes_waiting_for_it(
    slack: FakeSlack, tmp_path: Path
) -> None:
    # Two HumanLayers on one store wait for the same request of a run (a fleet, or a
    # restarted worker beside the old one): each reminder is claimed, so sent once.
    url = tmp_path / "hl.db"

    def channel() -> SlackChannel:
        return SlackChannel(
            bot_token=BOT_TOKEN, signing_secret=SECRET, channel="C0OPS", base_url=slack.api_url
        )

    async with (
        HumanLayer([channel()], store=SQLiteStore(url), listen=None) as first,
        HumanLayer([channel()], store=SQLiteStore(url), listen=None) as second,
    ):
        tools: list[tuple[HumanLayer, Any]] = []
        for hl in (first, second):

            @hl.require_approval(remind_every=EVERY)
            async def deploy(version: str) -> str:
                return f"deployed {version}"

            tools.append((hl, deploy))

        async def call(hl: HumanLayer, tool: Any) -> None:
            with hl.run("release-7"):
                await tool("7.0")

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, *tools[0])
            [request] = await wait_for_pending(first)
            tg.start_soon(call, *tools[1])  # re-attaches to the same request
            await anyio.sleep(EVERY * 4.5)
            threaded = [c for c in slack.received("chat.postMessage") if c.data.get("thread_ts")]
            numbers = len(threaded)
            assert 3 <= numbers <= 5
            assert len({json.dumps(c.data["text"]) for c in threaded}) == 1  # the same reminder text
            await first.decide(request.id, True, by="ops")


async def test_an_email_reminder_is_answered_like_the_request(inbox: Inbox) -> None:
    async with HumanLayer([make_channel(inbox, to=[ALICE])], listen="127.0.0.1:0") as hl:

        @hl.require_approval(remind_every=EVERY)
        async def rotate(key: str) -> str:
            return f"rotated {key}"

        async with anyio.create_task_group() as tg:
            tg.start_soon(rotate, "db")
            [request] = await wait_for_pending(hl)
            request_mail, reminder = await inbox.wait(2)
            assert reminder["In-Reply-To"] == request_mail["Message-ID"]
            assert reminder["Reply-To"] == request_mail["Reply-To"]  # replying to it decides
            assert "Reminder: this still waits for your decision." in text_of(reminder)
            await hl.decide(request.id, True, by=ALICE)


def test_remind_every_must_be_a_positive_duration() -> None:
    hl = HumanLayer([], listen=None)
    wrong: Any
    for wrong in (0, -1, float("inf"), "10m"):
        with pytest.raises(ConfigurationError, match="remind_every"):
            hl.require_approval(remind_every=wrong)


async def test_the_web_console_marks_a_reminded_request_live() -> None:
    web = WebChannel(token=KEY)
    async with (
        HumanLayer([web], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(timeout=30) as client,
        anyio.create_task_group() as tg,
    ):
        await signed_in(client, web)

        @hl.require_approval(remind_every=EVERY)
        async def purge(queue: str) -> str:
            return f"purged {queue}"

        seen: list[tuple[str, dict[str, str]]] = []

        async def follow() -> None:
            async with client.stream("GET", f"{web.url}/events") as response:
                async for event in sse_events(response):
                    seen.append(event)

        tg.start_soon(follow)
        tg.start_soon(purge, "<b>jobs</b>")
        [request] = await wait_for_pending(hl)
        with anyio.fail_after(10):
            while "reminded" not in [kind for kind, _ in seen]:
                await anyio.sleep(0.01)
        [(_, reminded), *_] = [(kind, data) for kind, data in seen if kind == "reminded"]
        assert reminded["id"] == request.id
        assert reminded["summary"].startswith("Reminder: purge(queue='<b>jobs</b>') still waits")
        assert "html" not in reminded  # the page marks the card itself; nothing to inject
        await hl.decide(request.id, True, by="ops")
        tg.cancel_scope.cancel()
