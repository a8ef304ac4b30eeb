"""SlackChannel inside the user's own slack-bolt app: ``attach()``.

A real Bolt ``AsyncApp`` behind its Starlette adapter, served by uvicorn on loopback (or
connected over Socket Mode), talking to the fake Slack; callbacks signed as Slack signs them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.web.async_client import AsyncWebClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from humanlayer_async import ConfigurationError, Decision, HumanLayer, Status
from humanlayer_async.channels import SlackChannel
from humanlayer_async.stores import MemoryStore
from humanlayer_async.testing import (
    sign_slack_body,
    slack_block_actions,
    slack_form_body,
    slack_view_submission,
    wait_for_pending,
)

from .fake_slack import APP_TOKEN, BOT_TOKEN, FakeSlack

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_slack_environment")]

SECRET = "bolt-app-signing-secret-0123456789"
CHANNEL = "C0APPROVALS"
ALICE, MALLORY = "U0ALICE", "U0MALLORY"


def bolt_app(slack: FakeSlack, **options: Any) -> AsyncApp:
    """The user's app, as they would build it, pointed at the fake Slack."""
    client = AsyncWebClient(token=BOT_TOKEN, base_url=slack.api_url)
    return AsyncApp(token=BOT_TOKEN, signing_secret=SECRET, client=client, **options)


def attached(slack: FakeSlack, app: AsyncApp, **options: Any) -> SlackChannel:
    channel = SlackChannel(bot_token=BOT_TOKEN, channel=CHANNEL, base_url=slack.api_url, **options)
    channel.attach(app)
    return channel


@contextlib.asynccontextmanager
async def served(app: AsyncApp) -> AsyncIterator[httpx.AsyncClient]:
    """``app`` behind bolt's Starlette adapter, served by uvicorn on a loopback port."""
    handler = AsyncSlackRequestHandler(app)

    async def events(request: Request) -> Response:
        return await handler.handle(request)

    web = Starlette(routes=[Route("/slack/events", events, methods=["POST"])])
    server = uvicorn.Server(
        uvicorn.Config(web, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            yield client
        server.should_exit = True


class SlowStore(MemoryStore):
    """Takes its time to store a decision: an early acknowledgement would show."""

    async def decide(self, decision: Decision) -> Decision:
        await anyio.sleep(0.3)
        return await super().decide(decision)


async def post(client: httpx.AsyncClient, payload: dict[str, Any], *, secret: str = SECRET) -> httpx.Response:
    body = slack_form_body(payload)
    return await client.post("/slack/events", content=body, headers=sign_slack_body(body, secret))


@pytest.mark.parametrize("before_response", [False, True])
async def test_a_click_through_the_users_bolt_app_is_stored_before_it_is_acknowledged(
    slack: FakeSlack, before_response: bool
) -> None:
    app = bolt_app(slack, process_before_response=before_response)
    theirs: list[str] = []

    @app.action("their_button")
    async def their_button(ack: AsyncAck, body: dict[str, Any]) -> None:
        theirs.append(body["user"]["id"])
        await ack()

    channel = attached(slack, app)
    assert "bolt" in repr(channel)
    assert channel.routes() == ()  # the app keeps its Request URL: we serve nothing of our own
    async with HumanLayer([channel], store=SlowStore(), listen=None) as hl, served(app) as client:

        @hl.require_approval()
        async def pay(amount: int) -> str:
            return f"paid {amount}"

        async with anyio.create_task_group() as tg:
            results: list[str] = []
            tg.start_soon(lambda: _append(results, pay(120)))
            [request] = await wait_for_pending(hl)
            [posted] = await slack.wait_calls("chat.postMessage")
            assert posted.data["channel"] == CHANNEL

            response = await post(client, slack_block_actions(request.id, user=ALICE))
            assert response.status_code == 200
            # Acknowledged only once stored: the decision stands when the answer arrives.
            decided = (await hl.get(request.id)).decision
            assert decided is not None and (decided.status, decided.by, decided.via) == (
                Status.APPROVED,
                ALICE,
                "slack",
            )
        assert results == ["paid 120"]
        await slack.wait_calls("chat.update")

        # The user's own handler still gets its own clicks.
        payload = slack_block_actions("x", user=MALLORY)
        payload["actions"][0]["action_id"] = "their_button"
        assert (await post(client, payload)).status_code == 200
        assert theirs == [MALLORY]


async def _append(results: list[str], call: Any) -> None:
    results.append(await call)


async def test_forged_refused_and_late_clicks_through_bolt_decide_nothing_and_get_no_5xx(
    slack: FakeSlack,
) -> None:
    app = bolt_app(slack)
    channel = attached(slack, app)
    async with HumanLayer([channel], listen=None) as hl, served(app) as client:

        @hl.require_approval(approvers=[ALICE])
        async def wipe() -> str:
            return "wiped"

        async with anyio.create_task_group() as tg:
            tg.start_soon(wipe)
            [request] = await wait_for_pending(hl)

            forged = await post(client, slack_block_actions(request.id, user=ALICE), secret="not-the-secret")
            assert forged.status_code == 401  # bolt's own verification
            outsider = await post(client, slack_block_actions(request.id, user=MALLORY))
            assert outsider.status_code == 200
            unknown = await post(client, slack_block_actions("f" * 32, user=ALICE))
            assert unknown.status_code == 200
            modal = await post(client, slack_view_submission(request.id, "no", user=MALLORY))
            assert modal.status_code == 200
            assert modal.json() == {
                "response_action": "errors",
                "errors": {"hl_text": "you are not an approver for this request"},
            }
            assert (await hl.get(request.id)).status is Status.PENDING

            assert (await post(client, slack_block_actions(request.id, user=ALICE))).status_code == 200
            late = await post(client, slack_block_actions(request.id, "deny", user=ALICE))
            assert late.status_code == 200
            assert (await hl.get(request.id)).status is Status.APPROVED

        told = await slack.wait_calls("chat.postEphemeral", 3)
        assert [(call.data["user"], call.data["text"]) for call in told[:2]] == [
            (MALLORY, "you are not an approver for this request"),
            (ALICE, "unknown request"),
        ]
        assert told[2].data["user"] == ALICE
        assert told[2].data["text"].startswith("This request was already approved by <@U0ALICE>")


async def test_attach_refuses_what_would_let_anyone_decide(
    slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    unverified = bolt_app(slack, request_verification_enabled=False)
    with pytest.raises(ConfigurationError, match="request_verification_enabled=False"):
        SlackChannel(bot_token=BOT_TOKEN, channel=CHANNEL).attach(unverified)
    with pytest.raises(ConfigurationError, match="without signing_secret"):
        SlackChannel(bot_token=BOT_TOKEN, channel=CHANNEL, signing_secret=SECRET).attach(bolt_app(slack))
    with pytest.raises(ConfigurationError, match="AsyncApp"):
        SlackChannel(bot_token=BOT_TOKEN, channel=CHANNEL).attach(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="webhook"):
        SlackChannel(webhook_url=slack.webhook_url, signing_secret=SECRET).attach(bolt_app(slack))
    twice = SlackChannel(bot_token=BOT_TOKEN, channel=CHANNEL)
    twice.attach(bolt_app(slack))
    with pytest.raises(ConfigurationError, match="already"):
        twice.attach(bolt_app(slack))

    # The app's secret in the environment is the app's: attach() takes it over, no route of ours.
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SECRET)
    from_environment = SlackChannel(bot_token=BOT_TOKEN, channel=CHANNEL)
    assert [route.path for route in from_environment.routes()] == ["/slack/events"]  # type: ignore[attr-defined]
    from_environment.attach(bolt_app(slack))
    assert from_environment.routes() == ()

    monkeypatch.delenv("SLACK_SIGNING_SECRET")
    deaf = SlackChannel(bot_token=BOT_TOKEN, channel=CHANNEL, base_url=slack.api_url)
    with pytest.raises(ConfigurationError, match=r"receives no clicks.*attach\(\)"):
        async with HumanLayer([deaf], listen=None):
            pass


async def test_a_bolt_app_in_socket_mode_decides_over_its_own_connection(slack: FakeSlack) -> None:
    app = AsyncApp(token=BOT_TOKEN, client=AsyncWebClient(token=BOT_TOKEN, base_url=slack.api_url))
    channel = attached(slack, app)
    handler = AsyncSocketModeHandler(app, APP_TOKEN)
    async with HumanLayer([channel], listen=None) as hl:
        await handler.connect_async()  # type: ignore[no-untyped-call]
        try:

            @hl.require_approval()
            async def deploy() -> str:
                return "deployed"

            async with anyio.create_task_group() as tg:
                tg.start_soon(deploy)
                [request] = await wait_for_pending(hl)
                ack = await slack.send_envelope(slack_block_actions(request.id, user=ALICE))
                assert "envelope_id" in ack
                assert (await hl.get(request.id)).status is Status.APPROVED  # stored before the ack
        finally:
            await handler.close_async()  # type: ignore[no-untyped-call]


async def test_fifty_conversations_each_ask_in_their_own_thread_and_each_click_resumes_its_call(
    slack: FakeSlack,
) -> None:
    app = bolt_app(slack)
    channel = attached(slack, app)
    conversations = 50
    async with HumanLayer([channel], listen=None) as hl, served(app) as client:

        @hl.require_approval()
        async def refund(conversation: int) -> int:
            return conversation

        answers: dict[int, int] = {}

        async def agent_turn(conversation: int) -> None:
            with channel.thread(channel="C0CONV", thread_ts=f"1712.{conversation:04d}"):
                answers[conversation] = await refund(conversation)

        async with anyio.create_task_group() as tg:
            for conversation in range(conversations):
                tg.start_soon(agent_turn, conversation)
            pending = await wait_for_pending(hl, conversations, within=30)
            await slack.wait_calls("chat.postMessage", conversations)
            for request in pending:
                messages = slack.thread("C0CONV", f"1712.{request.kwargs['conversation']:04d}")
                assert len(messages) == 1 and request.id in json.dumps(messages[0]["blocks"])

            async def approve(request_id: str) -> None:
                response = await post(client, slack_block_actions(request_id, user=ALICE, channel="C0CONV"))
                assert response.status_code == 200

            async with anyio.create_task_group() as clicks:
                for request in pending:
                    clicks.start_soon(approve, request.id)
        assert answers == {conversation: conversation for conversation in range(conversations)}
        # Each outcome is posted in its own thread too (after the message update).
        await slack.wait_calls("chat.postMessage", 2 * conversations)
        for conversation in range(conversations):
            assert len(slack.thread("C0CONV", f"1712.{conversation:04d}")) == 2
