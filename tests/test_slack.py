"""SlackChannel against a local fake of Slack, with callbacks signed as Slack signs them,
sent over real HTTP to the running listener (or relayed over Socket Mode)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from structlog.testing import capture_logs

from humanlayer_async import (
    ApprovalDenied,
    ApprovalTimeout,
    ChannelError,
    ConfigurationError,
    Decision,
    HumanLayer,
    Status,
)
from humanlayer_async.channels import SlackChannel
from humanlayer_async.channels import slack as slack_module
from humanlayer_async.listener import MAX_BODY
from humanlayer_async.stores import MemoryStore
from humanlayer_async.testing import (
    sign_slack_body,
    slack_block_actions,
    slack_form_body,
    slack_view_submission,
    wait_for_pending,
)

from .conftest import LateDecider, make_request, serving
from .fake_slack import APP_TOKEN, BOT_TOKEN, Call, FakeSlack

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_slack_environment")]

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
CHANNEL = "C0APPROVALS"
ALICE, BOB, MALLORY = "U0ALICE", "U0BOB", "U0MALLORY"
NOT_AN_APPROVER = "you are not an approver for this request"


def web_api(slack: FakeSlack, **options: Any) -> SlackChannel:
    return SlackChannel(
        bot_token=BOT_TOKEN, signing_secret=SECRET, channel=CHANNEL, base_url=slack.api_url, **options
    )


async def click(
    client: httpx.AsyncClient, payload: dict[str, Any], *, secret: str = SECRET, timestamp: int | None = None
) -> httpx.Response:
    body = slack_form_body(payload)
    return await client.post(
        "/slack/events", content=body, headers=sign_slack_body(body, secret, timestamp=timestamp)
    )


def blocks_of(call: Call) -> list[dict[str, Any]]:
    blocks = call.data["blocks"]
    return json.loads(blocks) if isinstance(blocks, str) else list(blocks)


def buttons(call: Call) -> list[dict[str, Any]]:
    return [
        element for block in blocks_of(call) if block["type"] == "actions" for element in block["elements"]
    ]


def updates_of(slack: FakeSlack, ts: str) -> list[Call]:
    return [call for call in slack.received("chat.update") if call.data["ts"] == ts]


async def test_approve_posts_the_request_and_a_click_runs_the_tool(slack: FakeSlack) -> None:
    ran: list[str] = []
    async with (
        HumanLayer([web_api(slack)], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):

        @hl.require_approval(approvers=[ALICE, BOB], context={"ticket": "OPS-42"})
        async def send_email(to: str, subject: str, api_key: str) -> str:
            """Send an email to a customer."""
            ran.append(to)
            return f"sent to {to}"

        results: list[str] = []

        async def call() -> None:
            results.append(await send_email("bob@example.com", "hi <!channel>", api_key="sk-live-123"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            [post] = await slack.wait_calls("chat.postMessage")
            [request] = await hl.pending()
            assert post.data["channel"] == CHANNEL
            assert "send_email" in post.data["text"]
            shown = json.dumps(post.data["blocks"])
            for expected in ("send_email", "bob@example.com", "Send an email to a customer.", "OPS-42"):
                assert expected in shown
            assert "***" in shown and "sk-live-123" not in shown
            assert "<@U0ALICE>, <@U0BOB>" in shown and "<!date^" in shown
            fields = [field for block in blocks_of(post) for field in block.get("fields", [])]
            [subject] = [field for field in fields if field["text"] == "hi <!channel>"]
            assert subject["type"] == "plain_text"  # an argument cannot ping the channel
            approve, grant, deny = buttons(post)
            shown = f"{request.id} {request.fingerprint}"  # the id, and the call as this message shows it
            assert (grant["action_id"], grant["value"]) == (
                "hl_grant.1",
                f"{request.id} 3600.0 {request.fingerprint}",
            )
            assert (approve["text"]["text"], approve["style"], approve["value"]) == (
                "Approve",
                "primary",
                shown,
            )
            assert (deny["text"]["text"], deny["style"], deny["value"]) == ("Deny", "danger", shown)
            ts = (await slack.wait_for(lambda: list(slack.messages)))[0][1]

            response = await click(client, slack_block_actions(request.id, user=ALICE, message_ts=ts))
            assert response.status_code == 200

        assert results == ["sent to bob@example.com"]
        assert ran == ["bob@example.com"]
        decision = (await hl.get(request.id)).decision
        assert decision is not None and (decision.by, decision.via, decision.status) == (
            ALICE,
            "slack",
            Status.APPROVED,
        )
        [update] = await slack.wait_for(lambda: updates_of(slack, ts))
        assert update.data["channel"] == CHANNEL
        assert buttons(update) == []
        assert "approved by U0ALICE via slack" in update.data["text"]
        assert "approved by <@U0ALICE> via slack" in json.dumps(update.data["blocks"])


async def test_deny_opens_a_modal_whose_reason_is_the_refusal(slack: FakeSlack) -> None:
    async with (
        HumanLayer([web_api(slack)], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):

        @hl.require_approval()
        async def drop_table(name: str) -> str:
            return "dropped"

        async def call() -> None:
            with pytest.raises(
                ApprovalDenied, match="denied drop_table by U0BOB via slack: too risky"
            ) as info:
                await drop_table("users")
            assert info.value.decision.comment == "too risky"

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await slack.wait_calls("chat.postMessage")
            [request] = await hl.pending()
            payload = slack_block_actions(
                request.id, "deny", user=BOB, trigger_id="13345224609.738474920.8088"
            )
            response = await click(client, payload)
            assert (response.status_code, response.text) == (200, "")
            [opened] = await slack.wait_calls("views.open")
            assert opened.data["trigger_id"] == "13345224609.738474920.8088"
            view = opened.data["view"]
            assert (
                view["private_metadata"] == f"{request.id} {request.fingerprint}" and view["type"] == "modal"
            )
            assert (await hl.get(request.id)).status is Status.PENDING  # the modal decides, not the click

            response = await click(client, slack_view_submission(request.id, "too risky", user=BOB))
            assert (response.status_code, response.text) == (200, "")

        [update] = await slack.wait_calls("chat.update")
        assert "denied by U0BOB via slack" in update.data["text"] and "too risky" in update.data["text"]
        assert buttons(update) == []


async def test_a_question_is_answered_through_the_answer_modal(slack: FakeSlack) -> None:
    async with (
        HumanLayer([web_api(slack)], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):
        ask = hl.human_as_tool()
        answers: list[str] = []

        async def call() -> None:
            answers.append(await ask("Which region should I deploy to?"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            [post] = await slack.wait_calls("chat.postMessage")
            [request] = await hl.pending()
            assert "Which region should I deploy to?" in json.dumps(post.data["blocks"])
            [answer] = buttons(post)
            assert (answer["text"]["text"], answer["value"]) == (
                "Answer",
                f"{request.id} {request.fingerprint}",
            )
            assert (
                await click(client, slack_block_actions(request.id, "answer", user=ALICE))
            ).status_code == 200
            [opened] = await slack.wait_calls("views.open")
            assert opened.data["view"]["private_metadata"] == f"{request.id} {request.fingerprint}"
            submission = slack_view_submission(request.id, "eu-west-1", modal="answer", user=ALICE)
            assert (await click(client, submission)).status_code == 200
        assert answers == ["eu-west-1"]
        [update] = await slack.wait_calls("chat.update")
        assert "answered by U0ALICE via slack" in update.data["text"] and "eu-west-1" in update.data["text"]


async def test_webhook_mode_denies_without_a_modal_and_updates_through_response_url(slack: FakeSlack) -> None:
    channel = SlackChannel(webhook_url=slack.webhook_url, signing_secret=SECRET)
    async with (
        HumanLayer([channel], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):

        @hl.require_approval()
        async def restart(service: str) -> str:
            return "restarted"

        ask = hl.human_as_tool()
        answers: list[str] = []

        async def gated() -> None:
            with pytest.raises(ApprovalDenied, match="denied restart by U0BOB via slack"):
                await restart("api")

        async def question() -> None:
            answers.append(await ask("Which node?"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(gated)
            [post] = await slack.wait_calls("webhook")
            [request] = await hl.pending()
            shown = f"{request.id} {request.fingerprint}"
            assert [b["value"] for b in buttons(post)] == [
                shown,
                f"{request.id} 3600.0 {request.fingerprint}",
                shown,
            ]
            response_url = slack.response_url("deny-1")
            response = await click(
                client, slack_block_actions(request.id, "deny", user=BOB, response_url=response_url)
            )
            assert response.status_code == 200
            [replaced] = await slack.wait_calls("response_url")
            assert replaced.path.endswith("/deny-1") and replaced.data["replace_original"] is True
            assert "denied by U0BOB via slack" in replaced.data["text"] and buttons(replaced) == []

            tg.start_soon(question)
            await slack.wait_calls("webhook", 2)
            [asked] = await hl.pending()
            [box] = [block for block in blocks_of(slack.received("webhook")[1]) if block["type"] == "input"]
            assert box["block_id"] == asked.id and box["dispatch_action"] is True
            typed = slack_block_actions(
                asked.id, "answer", text="node-7", user=ALICE, response_url=slack.response_url("q")
            )
            assert (await click(client, typed)).status_code == 200
        assert answers == ["node-7"]
        assert slack.received("views.open", status=None) == []
        replaced_question = await slack.wait_calls("response_url", 2)
        assert "answered by U0ALICE via slack" in replaced_question[1].data["text"]

        with capture_logs() as logs:
            task_group_result: list[str] = []

            async def third() -> None:
                task_group_result.append(await restart("db"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(third)
                [request] = await wait_for_pending(hl, within=5)
                await hl.decide(request.id, True, by="ops@example.com")
            assert task_group_result == ["restarted"]
            with anyio.fail_after(5):
                while "slack.update_skipped" not in [entry["event"] for entry in logs]:
                    await anyio.sleep(0.01)  # nobody clicked: an incoming webhook's message stays as sent


async def test_socket_mode_decides_over_the_websocket_and_leaves_no_task_behind(slack: FakeSlack) -> None:
    channel = SlackChannel(bot_token=BOT_TOKEN, app_token=APP_TOKEN, channel=CHANNEL, base_url=slack.api_url)
    assert channel.routes() == ()
    async with HumanLayer([channel], listen="127.0.0.1:0") as hl:
        assert hl.url is None  # Socket Mode needs no listener
        await slack.wait_for(lambda: slack.sockets == 1)
        assert len(slack.received("apps.connections.open")) == 1

        @hl.require_approval()
        async def deploy(version: str) -> str:
            return f"deployed {version}"

        results: list[str] = []

        async def denied() -> None:
            with pytest.raises(ApprovalDenied, match="not now"):
                await deploy("1.0")

        async def approved() -> None:
            results.append(await deploy("2.0"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(denied)
            [first] = await wait_for_pending(hl, within=5)
            ack = await slack.send_envelope(slack_block_actions(first.id, "deny", user=ALICE))
            assert "payload" not in ack or ack["payload"] is None
            await slack.wait_calls("views.open")
            ack = await slack.send_envelope(slack_view_submission(first.id, "not now", user=ALICE))
            assert (await hl.get(first.id)).status is Status.DENIED  # stored before the ack
            again = await slack.send_envelope(slack_view_submission(first.id, "changed my mind", user=BOB))
            assert again["payload"]["response_action"] == "errors"
            assert "already denied by <@U0ALICE>" in json.dumps(again["payload"])

            tg.start_soon(approved)
            [second] = await wait_for_pending(hl, within=5)
            await slack.send_envelope(slack_block_actions(second.id, "approve", user=BOB))
        assert results == ["deployed 2.0"]
        await slack.wait_calls("chat.update", 2)
    await slack.wait_for(lambda: slack.sockets == 0)
    leftovers = [task for task in asyncio.all_tasks() if "slack_sdk" in repr(task)]
    assert leftovers == []


async def test_socket_mode_refusals_are_acknowledged_and_logged_as_every_refusal_is(slack: FakeSlack) -> None:
    request = make_request("b" * 32, approvers=())
    standing = Decision(request.id, True, Status.APPROVED, BOB, "slack", None, datetime.now(UTC))
    decider = LateDecider(request, standing)
    channel = SlackChannel(bot_token=BOT_TOKEN, app_token=APP_TOKEN, channel=CHANNEL, base_url=slack.api_url)
    async with anyio.create_task_group() as tg:
        await tg.start(channel.run, decider)
        with capture_logs() as logs:
            unknown = await slack.send_envelope(slack_block_actions("0" * 32, user=ALICE))
            shortcut = await slack.send_envelope({"type": "shortcut"})
        tg.cancel_scope.cancel()
    # Acknowledged all the same (with nothing to show), so Slack does not send them again.
    assert unknown.get("payload") is None and shortcut.get("payload") is None
    assert [(e["status"], e["reason"], e["via"]) for e in logs if e["event"] == "listener.refused"] == [
        (404, "unknown request", "socket mode"),
        (400, "payload type 'shortcut'", "socket mode"),
    ]
    assert not [e for e in logs if e["event"] in ("slack.refused", "slack.envelope_failed")]
    assert decider.answers == []


async def test_socket_mode_with_a_bad_app_token_fails_at_start(slack: FakeSlack) -> None:
    channel = SlackChannel(
        bot_token=BOT_TOKEN, app_token="xapp-1-wrong", channel=CHANNEL, base_url=slack.api_url
    )
    hl = HumanLayer([channel], listen=None)
    with pytest.raises(ChannelError, match="Socket Mode could not connect: invalid_auth"):
        await hl.__aenter__()
    await hl.aclose()
    assert [task for task in asyncio.all_tasks() if "slack_sdk" in repr(task)] == []


async def test_forged_stale_malformed_and_oversized_callbacks_get_4xx_and_decide_nothing(
    slack: FakeSlack,
) -> None:
    async with (
        HumanLayer([web_api(slack)], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):

        @hl.require_approval()
        async def wire(amount: int) -> str:
            return f"wired {amount}"

        results: list[str] = []

        async def call() -> None:
            results.append(await wire(5000))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            [request] = await wait_for_pending(hl, within=5)
            good = slack_form_body(slack_block_actions(request.id, user=ALICE))
            other = slack_form_body(slack_block_actions(request.id, user=MALLORY))

            async def post(body: bytes, headers: dict[str, str]) -> int:
                return (await client.post("/slack/events", content=body, headers=headers)).status_code

            with capture_logs() as logs:
                statuses = {
                    "forged": await post(good, sign_slack_body(good, "not-the-signing-secret")),
                    "stale": await post(
                        good, sign_slack_body(good, SECRET, timestamp=int(time.time()) - 301)
                    ),
                    "future": await post(
                        good, sign_slack_body(good, SECRET, timestamp=int(time.time()) + 301)
                    ),
                    "missing": await post(good, {"Content-Type": "application/x-www-form-urlencoded"}),
                    "tampered": await post(other, sign_slack_body(good, SECRET)),
                    "bad timestamp": await post(
                        good, {**sign_slack_body(good, SECRET), "X-Slack-Request-Timestamp": "9" * 5000}
                    ),
                }
                malformed = [
                    b"payload=not-json",
                    b"hello=world",
                    b"\xff\xfe\x00",
                    slack_form_body({"type": "shortcut"}),
                    slack_form_body(["a", "list"]),  # type: ignore[arg-type]
                    slack_form_body(
                        {**slack_block_actions(request.id), "actions": [{"action_id": "x", "value": "y"}]}
                    ),
                    slack_form_body({**slack_block_actions(request.id), "user": "not-an-object"}),
                    slack_form_body(
                        slack_view_submission(request.id, modal="answer")
                    ),  # an answer to an approval
                ]
                for index, body in enumerate(malformed):
                    statuses[f"malformed {index}"] = await post(body, sign_slack_body(body, SECRET))
                huge = b"payload=" + b"x" * MAX_BODY
                statuses["oversized"] = await post(huge, sign_slack_body(huge, SECRET))
                unknown = slack_form_body(slack_block_actions("0" * 32, user=ALICE))
                statuses["unknown"] = await post(unknown, sign_slack_body(unknown, SECRET))
                assert (await client.get("/healthz")).text == "ok"

            assert statuses == {
                "forged": 401,
                "stale": 401,
                "future": 401,
                "missing": 401,
                "tampered": 401,
                "bad timestamp": 401,
                **{f"malformed {index}": 400 for index in range(len(malformed))},
                "oversized": 413,
                "unknown": 404,
            }
            assert (await hl.get(request.id)).status is Status.PENDING
            # One log event for every refusal, the channel's and the listener's own (oversized).
            refused = [entry for entry in logs if entry["event"] == "listener.refused"]
            assert [(entry["status"], entry["reason"]) for entry in refused[:6]] == [
                (401, "bad signature"),
                (401, "stale timestamp"),
                (401, "stale timestamp"),
                (401, "missing signature"),
                (401, "bad signature"),
                (401, "bad timestamp"),
            ]
            assert [entry["status"] for entry in refused[6:]] == [400] * len(malformed) + [413, 404]
            assert refused[-1]["reason"] == "unknown request" and refused[-1]["request_id"] == "0" * 32
            assert {(entry["path"], entry["method"]) for entry in refused} == {("/slack/events", "POST")}
            assert not [entry for entry in logs if entry["event"] == "slack.refused"]
            assert SECRET not in repr(logs)

            assert (await click(client, slack_block_actions(request.id, user=ALICE))).status_code == 200
        assert results == ["wired 5000"]


async def test_non_approvers_get_an_ephemeral_and_decide_nothing(slack: FakeSlack) -> None:
    async with (
        HumanLayer([web_api(slack, approvers=[BOB])], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):

        @hl.require_approval(approvers=[ALICE, BOB])
        async def named() -> str:
            return "named ran"

        @hl.require_approval()
        async def unnamed() -> str:
            return "unnamed ran"

        results: list[str] = []

        async def call(tool: Any) -> None:
            results.append(await tool())

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, named)
            [first] = await wait_for_pending(hl, within=5)
            for action in ("approve", "deny"):
                response = await click(client, slack_block_actions(first.id, action, user=MALLORY))
                assert (response.status_code, response.text) == (200, NOT_AN_APPROVER)
            response = await click(
                client, slack_block_actions(first.id, user=ALICE)
            )  # the request's approver
            assert response.text == NOT_AN_APPROVER  # ... but the channel's list narrows it to BOB
            modal = await click(client, slack_view_submission(first.id, "no", user=MALLORY))
            assert modal.json() == {"response_action": "errors", "errors": {"hl_text": NOT_AN_APPROVER}}
            ephemerals = await slack.wait_calls("chat.postEphemeral", 3)
            assert [(e.data["user"], e.data["channel"], e.data["text"]) for e in ephemerals] == [
                (MALLORY, "C0TEST", NOT_AN_APPROVER),
                (MALLORY, "C0TEST", NOT_AN_APPROVER),
                (ALICE, "C0TEST", NOT_AN_APPROVER),
            ]
            assert slack.received("views.open", status=None) == []
            assert (await hl.get(first.id)).status is Status.PENDING

            tg.start_soon(call, unnamed)
            second = (await wait_for_pending(hl, 2, within=5))[1]
            assert (await click(client, slack_block_actions(second.id, user=ALICE))).text == NOT_AN_APPROVER
            assert (await hl.get(second.id)).status is Status.PENDING
            assert (await click(client, slack_block_actions(second.id, user=BOB))).status_code == 200
            assert (await click(client, slack_block_actions(first.id, user=BOB))).status_code == 200
        assert sorted(results) == ["named ran", "unnamed ran"]


async def test_double_clicks_first_wins_and_the_tool_runs_once(slack: FakeSlack) -> None:
    runs: list[int] = []
    async with (
        HumanLayer([web_api(slack)], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):

        @hl.require_approval()
        async def pay(amount: int) -> str:
            runs.append(amount)
            return "paid"

        async with anyio.create_task_group() as tg:
            tg.start_soon(pay, 10)
            [request] = await wait_for_pending(hl, within=5)
            texts: dict[str, str] = {}

            async def approve(user: str) -> None:
                response = await click(client, slack_block_actions(request.id, user=user))
                assert response.status_code == 200
                texts[user] = response.text

            async with anyio.create_task_group() as clicks:
                clicks.start_soon(approve, ALICE)
                clicks.start_soon(approve, BOB)
            decision = (await hl.get(request.id)).decision
            assert decision is not None and decision.by in (ALICE, BOB)
            loser = BOB if decision.by == ALICE else ALICE
            assert texts[decision.by] == ""
            assert texts[loser].startswith(f"This request was already approved by <@{decision.by}> via slack")

            late = await click(client, slack_block_actions(request.id, "deny", user=loser))
            assert late.status_code == 200 and f"already approved by <@{decision.by}>" in late.text
            same = await click(client, slack_block_actions(request.id, user=decision.by))
            assert same.status_code == 200
        assert runs == [10]
        notices = await slack.wait_calls("chat.postEphemeral", 3)
        assert {e.data["user"] for e in notices} == {ALICE, BOB}
        assert all("already approved by" in e.data["text"] for e in notices)
        assert slack.received("views.open", status=None) == []
        assert len(slack.received("chat.update")) == 1


async def test_429_is_retried_after_retry_after_and_every_request_is_delivered() -> None:
    async with FakeSlack(min_interval=1.0) as slack:
        with capture_logs() as logs:
            async with HumanLayer([web_api(slack)], listen="127.0.0.1:0") as hl:

                @hl.require_approval()
                async def step(n: int) -> int:
                    return n

                results: list[int] = []

                async def call(n: int) -> None:
                    results.append(await step(n))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(call, 1)
                    tg.start_soon(call, 2)
                    await slack.wait_calls("chat.postMessage", 2)
                    for request in await wait_for_pending(hl, 2, within=5):
                        await hl.decide(request.id, True, by=ALICE)
                assert sorted(results) == [1, 2]
        limited = slack.received("chat.postMessage", status=429)
        assert len(limited) == 1  # the retry waited as long as Retry-After said
        assert [(e["call"], e["error"]) for e in logs if e["event"] == "slack.retry"] == [
            ("chat.postMessage", "ratelimited")
        ]


async def test_5xx_is_retried_and_a_refusal_fails_the_call_closed(
    slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slack_module, "_BACKOFF", 0.05)  # the first wait; the policy is the same
    channel = web_api(slack)
    async with HumanLayer([channel], listen="127.0.0.1:0") as hl:

        @hl.require_approval()
        async def tool() -> str:
            return "ran"

        slack.fail("chat.postMessage", 503, times=2)
        async with anyio.create_task_group() as tg:
            tg.start_soon(tool)
            await slack.wait_calls("chat.postMessage")
            [request] = await wait_for_pending(hl, within=5)
            await hl.decide(request.id, True, by=ALICE)
        assert len(slack.received("chat.postMessage", status=503)) == 2

        slack.fail("chat.postMessage", 200, error="channel_not_found")
        with (
            capture_logs() as logs,
            pytest.raises(ChannelError, match="postMessage failed: channel_not_found"),
        ):
            await tool()
        [failed] = [entry for entry in logs if entry["event"] == "approval.failed"]
        assert (await hl.get(failed["request_id"])).status is Status.FAILED
        assert await hl.pending() == []

        slack.fail("chat.postMessage", 502, times=5)  # the channel gives up after five tries
        with (
            capture_logs() as logs,
            pytest.raises(ChannelError, match="failed 5 times: internal_error") as info,
        ):
            await channel.send(await hl.get(failed["request_id"]))
        assert isinstance(info.value.__cause__, SlackApiError)
        assert BOT_TOKEN not in str(info.value)
        # Four waits between five tries: from the first, doubling, each within 20%.
        waits = [entry["wait"] for entry in logs if entry["event"] == "slack.retry"]
        assert len(waits) == 4
        for index, wait in enumerate(waits):
            assert 0.79 * 0.05 * 2**index <= wait <= 1.21 * 0.05 * 2**index, waits


async def test_decisions_made_elsewhere_timeouts_and_cancellations_update_the_message(
    slack: FakeSlack,
) -> None:
    store = MemoryStore()
    async with HumanLayer([web_api(slack)], listen="127.0.0.1:0", store=store) as hl:

        @hl.require_approval()
        async def elsewhere() -> str:
            return "ran"

        @hl.require_approval(timeout=0.2)
        async def expires() -> str:
            return "never"

        async with anyio.create_task_group() as tg:
            tg.start_soon(elsewhere)
            [request] = await wait_for_pending(hl, within=5)
            await hl.decide(request.id, True, by="ops@example.com", comment="via the CLI")
        with pytest.raises(ApprovalTimeout):
            await expires()
        async with anyio.create_task_group() as tg:
            tg.start_soon(elsewhere)
            [request] = await wait_for_pending(hl, within=5)
            with anyio.fail_after(5):  # cancel once delivered: the message then exists to update
                while not any(
                    e.event == "approval.delivered" and e.request_id == request.id for e in store.audit_log
                ):
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
        texts = [call.data["text"] for call in await slack.wait_calls("chat.update", 3)]
        assert any("approved by ops@example.com via api" in text and "via the CLI" in text for text in texts)
        assert any("timed out via timeout" in text for text in texts)
        assert any("cancelled via caller" in text for text in texts)


async def test_a_burst_of_300_clicks_resolves_300_pending_approvals(slack: FakeSlack) -> None:
    async with (
        HumanLayer([web_api(slack)], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):

        @hl.require_approval(on_reject="return")
        async def job(n: int) -> str:
            return f"ran {n}"

        results: dict[int, str] = {}

        async def call(n: int) -> None:
            results[n] = await job(n)

        async with anyio.create_task_group() as tg:
            for n in range(300):
                tg.start_soon(call, n)
            await slack.wait_calls("chat.postMessage", 300)
            pending = await wait_for_pending(hl, 300, within=5)
            by_n = {request.kwargs["n"]: request for request in pending}

            in_flight = anyio.CapacityLimiter(20)  # httpx's pool slows down with hundreds queued

            async def answer(n: int) -> None:
                request = by_n[n]
                if n % 2:
                    payload = slack_view_submission(request.id, f"no {n}", user=BOB)
                else:
                    payload = slack_block_actions(request.id, user=ALICE)
                async with in_flight:
                    assert (await click(client, payload)).status_code == 200

            async with anyio.create_task_group() as clicks:
                for n in range(300):
                    clicks.start_soon(answer, n)
        assert len(results) == 300
        for n, result in results.items():
            assert result == (
                f"ran {n}"
                if n % 2 == 0
                else f"A human denied job by U0BOB via slack: no {n}. It did not run."
            )
        updates = await slack.wait_calls("chat.update", 300)
        assert sum("approved by U0ALICE" in call.data["text"] for call in updates) == 150
        assert sum("denied by U0BOB" in call.data["text"] for call in updates) == 150


def test_configuration_errors_name_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="SLACK_BOT_TOKEN"):
        SlackChannel(channel=CHANNEL, signing_secret=SECRET)
    with pytest.raises(ConfigurationError, match=r"SLACK_SIGNING_SECRET.*SLACK_APP_TOKEN"):
        SlackChannel(webhook_url="https://hooks.slack.com/x")  # a webhook channel cannot attach() to Bolt
    with pytest.raises(ConfigurationError, match=r"channel=.*webhook_url="):
        SlackChannel(bot_token=BOT_TOKEN, signing_secret=SECRET)
    with pytest.raises(ConfigurationError, match="not both"):
        SlackChannel(channel=CHANNEL, webhook_url="https://hooks.slack.com/x", signing_secret=SECRET)
    with pytest.raises(ConfigurationError, match="xapp-") as info:
        SlackChannel(channel=CHANNEL, bot_token=BOT_TOKEN, app_token="xoxb-oops-a-bot-token")
    assert "oops" not in str(info.value)

    monkeypatch.setenv("SLACK_BOT_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SECRET)
    channel = SlackChannel(channel=CHANNEL, approvers="U0ALICE", base_url="http://proxy.internal/api")
    assert channel.approvers == ("U0ALICE",)
    assert channel.base_url == "http://proxy.internal/api/"
    assert [route.path for route in channel.routes()] == ["/slack/events"]  # type: ignore[attr-defined]
    text = repr(channel)
    assert text == "SlackChannel(channel='C0APPROVALS', inbound='http', approvers=['U0ALICE'])"
    monkeypatch.setenv("SLACK_APP_TOKEN", APP_TOKEN)
    webhook = SlackChannel(webhook_url="https://hooks.slack.com/services/T/B/secret-part")
    assert repr(webhook) == "SlackChannel(webhook, inbound='http+socket mode', approvers=[])"
    for secret in (BOT_TOKEN, SECRET, APP_TOKEN, "secret-part"):
        assert secret not in repr(channel) + repr(webhook)


def test_sign_slack_body_signs_as_slack_does() -> None:
    body = slack_form_body(slack_block_actions("abc", user=ALICE))
    headers = sign_slack_body(body, SECRET)
    verifier = SignatureVerifier(SECRET)
    assert verifier.is_valid_request(body, headers)
    assert not verifier.is_valid_request(body + b"x", headers)
    old = sign_slack_body(body, SECRET, timestamp=1_531_420_618)
    assert old["X-Slack-Request-Timestamp"] == "1531420618"
    assert old["X-Slack-Signature"] == verifier.generate_signature(timestamp="1531420618", body=body)
    assert not verifier.is_valid_request(body, old)  # too old


# -- what reaches Slack is inert, and nothing is shortened without saying so -------------------------

PINGS = "<!channel> <!here> <@U123>"
LINK = "<https://evil/|Click to approve> *bold*"
INERT_PINGS = "&lt;!channel&gt; &lt;!here&gt; &lt;@U123&gt;"
INERT_LINK = "&lt;https://evil/|Click to approve&gt; *bold*"
NOTIFY_TEXT = f"notify(pings='{INERT_PINGS}', link='{INERT_LINK}')"


def text_objects(data: Any) -> list[dict[str, Any]]:
    """Every Block Kit text object in ``data`` (a message, a view, a list of blocks)."""
    if isinstance(data, list):
        return [found for item in data for found in text_objects(item)]
    if not isinstance(data, dict):
        return []
    own = [data] if data.get("type") in ("plain_text", "mrkdwn") and "text" in data else []
    return own + [found for value in data.values() for found in text_objects(value)]


def assert_inert(data: Any, *, mentions: tuple[str, ...] = ()) -> None:
    """No ``mrkdwn`` text in ``data`` holds a control sequence (``<...>``) but ours: the
    expiry's ``<!date^...>`` and mentions of ``mentions``; caller text is in plain text."""
    for text in text_objects(data):
        if text["type"] == "mrkdwn":
            for sequence in re.findall(r"<[^>]*>", text["text"]):
                assert sequence.startswith("<!date^") or sequence[2:-1] in mentions, (sequence, text)


def hostile_tool(hl: HumanLayer, ran: list[str]) -> Any:
    @hl.require_approval(context={"note": PINGS})
    async def notify(pings: str, link: str) -> str:
        ran.append(pings)
        return "notified"

    return notify


async def test_caller_text_reaches_slack_escaped_in_notifications_blocks_and_replies(
    slack: FakeSlack,
) -> None:
    ran: list[str] = []
    async with (
        HumanLayer([web_api(slack)], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):
        notify, ask = hostile_tool(hl, ran), hl.human_as_tool()

        async def denied() -> None:
            with pytest.raises(ApprovalDenied):
                await notify(PINGS, LINK)

        async with anyio.create_task_group() as tg:
            tg.start_soon(denied)
            [post] = await slack.wait_calls("chat.postMessage")
            [request] = await hl.pending()
            assert post.data["text"] == NOTIFY_TEXT
            assert_inert(post.data["blocks"])
            plain = [text for text in text_objects(post.data["blocks"]) if text["type"] == "plain_text"]
            assert [text["text"] for text in plain].count(PINGS) == 2  # the argument and the context
            assert {"type": "plain_text", "text": LINK, "emoji": False} in plain

            reason = f"{LINK} {PINGS}"
            await click(client, slack_block_actions(request.id, "deny", user=BOB))
            [opened] = await slack.wait_calls("views.open")
            assert_inert(opened.data["view"])
            assert (await click(client, slack_view_submission(request.id, reason, user=BOB))).text == ""

        decision = (await hl.get(request.id)).decision
        assert decision is not None
        said = (
            f"denied by <@U0BOB> via slack at {decision.decided_at:%H:%M:%S} UTC ({INERT_LINK} {INERT_PINGS})"
        )
        [update] = await slack.wait_calls("chat.update")
        assert update.data["text"] == f"{NOTIFY_TEXT}: {said.replace('<@U0BOB>', 'U0BOB')}"
        assert {"type": "mrkdwn", "text": f":x: {said}"} in text_objects(update.data["blocks"])
        assert_inert(update.data["blocks"], mentions=(BOB,))

        late = await click(client, slack_block_actions(request.id, user=ALICE))
        [ephemeral] = await slack.wait_calls("chat.postEphemeral")
        assert ephemeral.data["text"] == late.text == f"This request was already {said}."

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, f"{PINGS} {LINK}")
            [_, asked] = await slack.wait_calls("chat.postMessage", 2)
            assert asked.data["text"] == f"question: {INERT_PINGS} {INERT_LINK}"
            assert_inert(asked.data["blocks"])
            [question] = await hl.pending()
            await click(client, slack_block_actions(question.id, "answer", user=ALICE))
            [_, answer_modal] = await slack.wait_calls("views.open", 2)
            assert_inert(answer_modal.data["view"])
            assert f"{PINGS} {LINK}" in json.dumps(answer_modal.data["view"])  # as plain text
            tg.cancel_scope.cancel()
    assert ran == []


async def test_webhook_mode_escapes_caller_text_in_the_message_and_its_replacement(slack: FakeSlack) -> None:
    ran: list[str] = []
    channel = SlackChannel(webhook_url=slack.webhook_url, signing_secret=SECRET)
    async with (
        HumanLayer([channel], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):
        notify = hostile_tool(hl, ran)

        async def denied() -> None:
            with pytest.raises(ApprovalDenied):
                await notify(PINGS, LINK)

        async with anyio.create_task_group() as tg:
            tg.start_soon(denied)
            [post] = await slack.wait_calls("webhook")
            [request] = await hl.pending()
            assert post.data["text"] == NOTIFY_TEXT
            assert_inert(post.data["blocks"])
            deny = slack_block_actions(request.id, "deny", user=BOB, response_url=slack.response_url("deny"))
            assert (await click(client, deny)).status_code == 200

        decision = (await hl.get(request.id)).decision
        assert decision is not None
        said = f"denied by <@U0BOB> via slack at {decision.decided_at:%H:%M:%S} UTC"
        [replaced] = await slack.wait_calls("response_url")
        assert replaced.data["text"] == f"{NOTIFY_TEXT}: {said.replace('<@U0BOB>', 'U0BOB')}"
        assert_inert(replaced.data["blocks"], mentions=(BOB,))
        late = slack_block_actions(request.id, user=ALICE, response_url=slack.response_url("late"))
        await click(client, late)
        [_, ephemeral] = await slack.wait_calls("response_url", 2)
        assert ephemeral.data["text"] == f"This request was already {said}."
    assert ran == []


ELEVEN = [f"item-{n}" for n in range(1, 12)]
NESTED = {"a": {"b": {"c": {"d": "fourth-level"}}}}
SQL = " " * 1000 + "DROP TABLE users"


def shortened_tool(hl: HumanLayer, ran: list[str], approvers: list[str] | None = None) -> Any:
    @hl.require_approval(approvers=approvers)
    async def migrate(items: list[str], nested: dict[str, Any], sql: str) -> str:
        ran.append(sql)
        return "migrated"

    return migrate


def button_ids(call: Call) -> list[tuple[str, str]]:
    return [(button["text"]["text"], button["action_id"]) for button in buttons(call)]


def assert_says_it_shortened(post: Call) -> None:
    shown = json.dumps(post.data)
    for hidden in ("item-11", "fourth-level", "DROP TABLE"):
        assert hidden not in shown
    values = [field["text"] for block in blocks_of(post) for field in block.get("fields", [])][1::2]
    assert values == [
        "['item-1', 'item-2', 'item-3', 'item-4', 'item-5', 'item-6', 'item-7', 'item-8', 'item-9', "
        "'item-10', … 1 more item]",
        "{'a': {'b': {'c': {… 1 item nested deeper}}}}",
        " " * 980 + "… 36 more characters",  # the count keeps the field within 1,000 characters
    ]


async def test_a_shortened_call_offers_the_full_call_in_a_modal_that_approves_it(slack: FakeSlack) -> None:
    ran: list[str] = []
    async with (
        HumanLayer([web_api(slack)], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):
        migrate = shortened_tool(hl, ran, approvers=[ALICE])
        async with anyio.create_task_group() as tg:
            tg.start_soon(migrate, ELEVEN, NESTED, SQL)
            [post] = await slack.wait_calls("chat.postMessage")
            [request] = await hl.pending()
            assert_says_it_shortened(post)
            assert button_ids(post) == [("Show the full call", "hl_full"), ("Deny", "hl_deny")]
            assert (
                "Parts of this call are shortened above (see the … marks). "
                "Show the full call to see all of it and approve it."
                in json.dumps(post.data, ensure_ascii=False)
            )

            show = slack_form_body(slack_block_actions(request.id, "full", user=MALLORY, trigger_id="7.8.9"))
            forged = await client.post("/slack/events", content=show, headers=sign_slack_body(show, "guess"))
            unsigned = await client.post(
                "/slack/events", content=show, headers={"Content-Type": "application/x-www-form-urlencoded"}
            )
            assert (forged.status_code, unsigned.status_code) == (401, 401)
            assert slack.received("views.open", status=None) == []

            # Anyone in the channel may look: it decides nothing.
            response = await client.post("/slack/events", content=show, headers=sign_slack_body(show, SECRET))
            assert (response.status_code, response.text) == (200, "")
            [opened] = await slack.wait_calls("views.open")
            assert opened.answer is not None and opened.answer["ok"] is True  # within Block Kit's limits
            assert opened.data["trigger_id"] == "7.8.9"
            view = opened.data["view"]
            assert (view["callback_id"], view["private_metadata"], view["submit"]["text"]) == (
                "hl_full_call",
                f"{request.id} {request.fingerprint}",
                "Approve",
            )
            shown = "".join(
                text["text"] for text in text_objects(view["blocks"]) if text["type"] == "plain_text"
            )
            for whole in ('"item-11"', '"d": "fourth-level"', '"' + SQL + '"'):
                assert whole in shown
            assert (await hl.get(request.id)).status is Status.PENDING

            # Approve from the message is refused for a call it shortened (an old message's button).
            approve = await click(client, slack_block_actions(request.id, user=ALICE))
            assert approve.text.startswith("This call is shortened in its message")
            [told] = await slack.wait_calls("chat.postEphemeral")
            assert told.data["text"] == approve.text
            mallory = await click(client, slack_view_submission(request.id, "ok", modal="full", user=MALLORY))
            assert mallory.json() == {"response_action": "errors", "errors": {"hl_text": NOT_AN_APPROVER}}
            assert (await hl.get(request.id)).status is Status.PENDING

            alice = await click(
                client, slack_view_submission(request.id, "read it all", modal="full", user=ALICE)
            )
            assert (alice.status_code, alice.text) == (200, "")
        assert ran == [SQL]
        decision = (await hl.get(request.id)).decision
        assert decision is not None and (decision.by, decision.approved, decision.comment) == (
            ALICE,
            True,
            "read it all",
        )


async def test_a_call_too_large_for_a_modal_can_only_be_denied_in_slack(slack: FakeSlack) -> None:
    ran: list[str] = []
    async with (
        HumanLayer([web_api(slack)], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):

        @hl.require_approval()
        async def upload(blob: str) -> str:
            ran.append(blob)
            return "uploaded"

        async def denied() -> None:
            with pytest.raises(ApprovalDenied):
                await upload("x" * 400_000)

        async with anyio.create_task_group() as tg:
            tg.start_soon(denied)
            [post] = await slack.wait_calls("chat.postMessage")
            [request] = await hl.pending()
            assert button_ids(post) == [("Deny", "hl_deny")]
            assert (
                "Parts of this call are shortened above (see the … marks), and the whole call is too large "
                "for Slack: see it and approve it (Deny works here) in another approval channel"
                in json.dumps(post.data, ensure_ascii=False)
            )
            with capture_logs() as logs:
                response = await click(client, slack_block_actions(request.id, "full", user=ALICE))
            assert response.text.startswith("This request is too large to show in Slack")
            assert [entry["event"] for entry in logs].count("slack.too_large") == 1
            await click(client, slack_block_actions(request.id, "deny", user=ALICE))
            [opened] = await slack.wait_calls("views.open")  # the deny modal, not the full call
            assert opened.data["view"]["callback_id"] == "hl_deny_reason"
            await click(client, slack_view_submission(request.id, "too big to read", user=ALICE))
        assert ran == []


async def test_webhook_mode_offers_approve_only_for_a_call_its_message_shows_whole(slack: FakeSlack) -> None:
    ran: list[str] = []
    channel = SlackChannel(webhook_url=slack.webhook_url, signing_secret=SECRET)
    async with (
        HumanLayer([channel], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):
        migrate = shortened_tool(hl, ran)

        async def denied() -> None:
            with pytest.raises(ApprovalDenied):
                await migrate(ELEVEN, NESTED, SQL)

        async with anyio.create_task_group() as tg:
            tg.start_soon(denied)
            [post] = await slack.wait_calls("webhook")
            [request] = await wait_for_pending(hl, within=5)
            assert_says_it_shortened(post)
            assert button_ids(post) == [("Deny", "hl_deny")]
            assert "cannot be shown through an incoming webhook: see it and approve it" in json.dumps(
                post.data
            )
            url = slack.response_url("approve")
            approve = await click(client, slack_block_actions(request.id, user=ALICE, response_url=url))
            assert approve.text.startswith("This call is shortened in its message")
            assert (
                await click(client, slack_block_actions(request.id, "full", user=ALICE))
            ).status_code == 400
            assert (await hl.get(request.id)).status is Status.PENDING
            await click(client, slack_block_actions(request.id, "deny", user=ALICE, response_url=url))

            tg.start_soon(migrate, ELEVEN[:2], {"a": 1}, "SELECT 1")
            [_, whole] = await slack.wait_calls("webhook", 2)
            [request] = await wait_for_pending(hl, within=5)
            assert button_ids(whole) == [
                ("Approve", "hl_approve"),
                ("Approve, and allow the same for 1 hour", "hl_grant.1"),
                ("Deny", "hl_deny"),
            ]
            assert "shortened" not in json.dumps(whole.data)
            assert (await click(client, slack_block_actions(request.id, user=ALICE))).status_code == 200
        assert ran == ["SELECT 1"]


async def test_hostile_clicks_on_show_the_full_call_get_4xx_and_a_log_line(slack: FakeSlack) -> None:
    async with (
        HumanLayer([web_api(slack)], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):
        migrate = shortened_tool(hl, [])

        async def denied() -> None:
            with pytest.raises(ApprovalDenied):
                await migrate(ELEVEN, NESTED, SQL)

        async with anyio.create_task_group() as tg:
            tg.start_soon(denied)
            [request] = await wait_for_pending(hl, within=5)

            def full(value: Any, **changes: Any) -> dict[str, Any]:
                payload = slack_block_actions(request.id, "full", user=ALICE)
                payload["actions"][0]["value"] = value
                return {**payload, **changes}

            cases = {
                "unknown": (full("0" * 32), 404, "unknown request"),
                "a number": (full(5), 400, "no value"),
                "an object": (full({"id": request.id}), 400, "no value"),
                "empty": (full(""), 400, "no value"),
                "a path": (full("../" + request.id), 400, "malformed request id"),
                "a NUL": (full(request.id + "\x00"), 400, "malformed request id"),
                "long": (full("a" * 5000), 400, "malformed request id"),
                "no trigger": (full(request.id, trigger_id=None), 400, "a click without trigger_id"),
                "a bad view": (
                    {
                        **slack_view_submission(request.id, modal="full"),
                        "view": {"callback_id": "hl_full_call"},
                    },
                    400,
                    "no private_metadata",
                ),
            }
            for name, (payload, status, reason) in cases.items():
                with capture_logs() as logs:
                    response = await click(client, payload)
                assert response.status_code == status, name
                refused = [
                    (e["event"], e.get("status"), e.get("reason"))
                    for e in logs
                    if e["event"].startswith(("slack.", "listener."))
                ]
                assert refused == [("listener.refused", status, reason)], name
            huge = b"payload=" + b"x" * MAX_BODY
            with capture_logs() as logs:
                oversized = await client.post(
                    "/slack/events", content=huge, headers=sign_slack_body(huge, SECRET)
                )
            assert oversized.status_code == 413
            assert [entry["event"] for entry in logs] == ["listener.refused"]
            assert slack.received("views.open", status=None) == []
            assert (await hl.get(request.id)).status is Status.PENDING

            await hl.decide(request.id, False, by=BOB)
            late = await click(client, slack_block_actions(request.id, "full", user=ALICE))
            assert (late.status_code, late.text[:37]) == (200, "This request was already denied by <@")
        assert slack.received("views.open", status=None) == []


async def test_messages_keep_to_slacks_limits_and_say_where_they_shorten(slack: FakeSlack) -> None:
    async with HumanLayer([web_api(slack)], listen="127.0.0.1:0") as hl:

        @hl.require_approval(context={f"key{n}": n for n in range(25)})
        async def rewrite(flipped: str, escaped: str) -> str:
            return "rewritten"

        async with anyio.create_task_group() as tg:
            tg.start_soon(rewrite, "\u202e" * 1000, "<&>" * 700)
            [post] = await slack.wait_calls("chat.postMessage")
            assert post.answer is not None and post.answer["ok"] is True, post.answer
            [flipped, escaped] = [field["text"] for field in blocks_of(post)[2]["fields"]][1::2]
            assert flipped.startswith("\\u202e\\u202e") and flipped.endswith(" more characters")
            assert len(flipped) <= 2000 and "\u202e" not in flipped
            assert escaped == "<&>" * 325 + "<&… 1,123 more characters"  # plain text: not escaped
            assert {"type": "plain_text", "text": "… 5 more not shown", "emoji": False} in text_objects(
                post.data
            )
            [request] = await hl.pending()
            await hl.decide(request.id, True, by="x" * 5000, comment="<&>" * 2000)
        [update] = await slack.wait_calls("chat.update")
        assert update.answer is not None and update.answer["ok"] is True, update.answer
        [outcome] = [
            text for text in text_objects(update.data["blocks"]) if text["text"].startswith(":white")
        ]
        assert outcome["text"].endswith(" more characters)") and len(outcome["text"]) <= 3000


@pytest.mark.parametrize(
    ("first", "told"),
    [
        # Bob's deny was stored between the click's read of the request and its decision.
        ((BOB, False, "not now"), f"This request was already denied by <@{BOB}> via slack"),
        # Alice's own earlier approval (a click Slack delivered twice): by, via and the
        # answer all match hers, yet this click is not the one that stands.
        ((ALICE, True, None), f"This request was already approved by <@{ALICE}> via slack"),
    ],
)
async def test_a_click_that_did_not_stand_is_told_who_decided_first(
    slack: FakeSlack, first: tuple[str, bool, str | None], told: str
) -> None:
    request = make_request("e" * 32, approvers=())
    by, approved, comment = first
    status = Status.APPROVED if approved else Status.DENIED
    decider = LateDecider(
        request, Decision(request.id, approved, status, by, "slack", comment, datetime.now(UTC))
    )
    channel = web_api(slack)
    async with anyio.create_task_group() as tg:
        await tg.start(channel.run, decider)
        async with serving(channel.routes()) as client:
            with capture_logs() as logs:
                response = await click(client, slack_block_actions(request.id, user=ALICE))
            [notice] = await slack.wait_calls("chat.postEphemeral")
        tg.cancel_scope.cancel()
    assert decider.answers == [(request.id, ALICE, "slack")]
    assert response.status_code == 200 and response.text.startswith(told)
    assert (notice.data["user"], notice.data["text"]) == (ALICE, response.text)
    assert "slack.already_decided" in [entry["event"] for entry in logs]
