"""SlackChannel's "Approve, and allow the same for 1 hour": the buttons, the grant a click
gives, and every click that must give none; against the fake Slack, signed as Slack signs."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx
import pytest
from slack_bolt.async_app import AsyncApp
from structlog.testing import capture_logs

from humanlayer_async import (
    ApprovalRequest,
    ConfigurationError,
    Decision,
    Grant,
    HumanLayer,
    Status,
    Vote,
    current_decision,
)
from humanlayer_async.channels import SlackChannel
from humanlayer_async.channels import _slack_blocks as slack_blocks
from humanlayer_async.channels._grant_offer import describe_duration
from humanlayer_async.testing import sign_slack_body, slack_block_actions, slack_form_body, wait_for_pending

from .conftest import make_request
from .fake_slack import BOT_TOKEN, Call, FakeSlack
from .test_slack import (
    ALICE,
    BOB,
    CHANNEL,
    MALLORY,
    NOT_AN_APPROVER,
    SECRET,
    blocks_of,
    buttons,
    click,
    web_api,
)
from .test_slack_bolt import attached, bolt_app, served
from .test_slack_bolt import post as post_to_bolt

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_slack_environment")]

HOUR = timedelta(hours=1)
YOUR_OWN = "you requested this call, so someone else must decide it"
NOT_OFFERED = (
    "That is not one of the durations this channel offers, so nothing was decided: "
    "approve, or approve and allow the same with a button of the current message."
)
ALLOWING = re.compile(r"allowing the same for 1 hour \(until ((?:\d{4}-\d\d-\d\d )?\d\d:\d\d) UTC\)")


def labels(call: Call) -> list[str]:
    return [button["text"]["text"] for button in buttons(call)]


def grant_buttons(call: Call) -> list[dict[str, Any]]:
    return [button for button in buttons(call) if button["action_id"] in slack_blocks.GRANTS]


def pressed(button: dict[str, Any], *, user: str, value: str | None = None, **options: Any) -> dict[str, Any]:
    """Slack's ``block_actions`` payload for ``user``'s click on ``button`` as it was posted
    (``value``: what a tampered payload says instead of its value)."""
    payload = slack_block_actions(button["value"].split(" ")[0], user=user, **options)
    payload["actions"][0].update(action_id=button["action_id"], value=value or button["value"])
    return payload


def assert_until(text: str, grant: Grant) -> None:
    """``text`` says the grant's expiry, to the minute (the decision is a moment before it)."""
    match = ALLOWING.search(text)
    assert match is not None, text
    moments = (grant.expires_at, grant.expires_at - timedelta(seconds=1))
    assert any(match[1] in (f"{m:%H:%M}", f"{m:%Y-%m-%d %H:%M}") for m in moments), (match[1], grant)


async def runs_at_once(call: Callable[[], Awaitable[Any]]) -> Any:
    with anyio.fail_after(10):
        return await call()


def payments(hl: HumanLayer, approvers: list[str] | None = None, approvals: int = 1) -> Any:
    """A gated ``pay`` that returns how it was approved (a sentence when it is not)."""

    @hl.require_approval(approvers=approvers, approvals=approvals, on_reject="return")
    async def pay(amount: int, to: str) -> dict[str, Any]:
        decision = current_decision()
        assert decision is not None
        return {"paid": amount, "to": to, "via": decision.via, "grant": decision.grant, "by": decision.by}

    return pay


# -- the buttons ------------------------------------------------------------------------------


async def test_the_button_is_offered_next_to_approve_with_a_confirmation_and_for_tools_only(
    slack: FakeSlack,
) -> None:
    async with HumanLayer([web_api(slack)], listen="127.0.0.1:0") as hl:
        pay = payments(hl, approvers=[ALICE])
        ask = hl.human_as_tool()
        async with anyio.create_task_group() as tg:
            tg.start_soon(pay, 120, "acme")
            [post] = await slack.wait_calls("chat.postMessage")
            [request] = await hl.pending()
            assert labels(post) == ["Approve", "Approve, and allow the same for 1 hour", "Deny"]
            [button] = grant_buttons(post)
            assert (button["action_id"], button["value"]) == (
                "hl_grant.1",
                f"{request.id} 3600.0 {request.fingerprint}",
            )
            assert "style" not in button  # Approve stays the one primary button
            confirm = button["confirm"]
            assert confirm["title"]["text"] == "Allow the same calls?"
            assert confirm["text"]["type"] == "plain_text"
            assert confirm["text"]["text"].startswith("Approve and allow the same calls of pay for 1 hour?")
            assert (confirm["confirm"]["text"], confirm["deny"]["text"]) == ("Approve and allow", "Cancel")

            tg.start_soon(ask, "Which region?")
            [_, question] = await slack.wait_calls("chat.postMessage", 2)
            assert labels(question) == ["Answer"]
            assert "hl_grant" not in json.dumps(question.data["blocks"])
            tg.cancel_scope.cancel()

    durations = (timedelta(minutes=30), 8 * 3600, timedelta(days=1))
    async with HumanLayer([web_api(slack, grant_durations=durations)], listen="127.0.0.1:0") as hl:
        pay = payments(hl)
        async with anyio.create_task_group() as tg:
            tg.start_soon(pay, 1, "acme")
            [*_, post] = await slack.wait_calls("chat.postMessage", 3)
            assert labels(post) == [
                "Approve",
                "Approve, and allow the same for 30 minutes",
                "Approve, and allow the same for 8 hours",
                "Approve, and allow the same for 1 day",
                "Deny",
            ]
            ids = [b["action_id"] for b in grant_buttons(post)]
            assert ids == ["hl_grant.1", "hl_grant.2", "hl_grant.3"]  # Slack wants them distinct
            assert [b["value"].split(" ")[1] for b in grant_buttons(post)] == ["1800.0", "28800.0", "86400.0"]
            tg.cancel_scope.cancel()

    async with HumanLayer([web_api(slack, grant_durations=())], listen="127.0.0.1:0") as hl:
        pay = payments(hl)
        async with anyio.create_task_group() as tg:
            tg.start_soon(pay, 1, "acme")
            [*_, post] = await slack.wait_calls("chat.postMessage", 4)
            assert labels(post) == ["Approve", "Deny"]
            tg.cancel_scope.cancel()


def test_blocks_offer_it_only_where_approve_is_offered_and_the_request_names_its_tool() -> None:
    def shown(request: ApprovalRequest) -> list[dict[str, Any]]:
        message = slack_blocks.request_message(request, (), modals=True, grants=(3600.0,))
        return [e for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]]

    older = make_request("older")
    assert older.tool is None  # stored before requests named their tool: nothing to grant
    assert [b["text"]["text"] for b in shown(older)] == ["Approve", "Deny"]
    named = make_request("named", tool="billing.pay")
    assert [b["text"]["text"] for b in shown(named)] == [
        "Approve",
        "Approve, and allow the same for 1 hour",
        "Deny",
    ]
    shortened = make_request("shortened", tool="billing.pay", kwargs={"body": "x" * 5000})
    assert [b["text"]["text"] for b in shown(shortened)] == ["Show the full call", "Deny"]  # seen first
    [_, button, _] = shown(make_request("quorum", tool="billing.pay", approvals=2))
    assert "needs 2 approvals" in button["confirm"]["text"]["text"]
    assert "only when every approver asks for it" in button["confirm"]["text"]["text"]


def test_durations_are_said_in_words_and_checked_when_the_channel_is_made() -> None:
    def channel(durations: Any) -> SlackChannel:
        return SlackChannel(
            bot_token=BOT_TOKEN, signing_secret=SECRET, channel=CHANNEL, grant_durations=durations
        )

    words = [describe_duration(s) for s in (1800, 3600, 5400, 8 * 3600, 86400, 2 * 86400, 45, 1, 0.5)]
    assert words == [
        "30 minutes",
        "1 hour",
        "90 minutes",
        "8 hours",
        "1 day",
        "2 days",
        "45 seconds",
        "1 second",
        "0.5 seconds",
    ]
    assert channel([600, timedelta(hours=2)]).grant_durations == (600.0, 7200.0)
    for bad, named in [
        ((0,), "0"),
        ((timedelta(minutes=-5),), "timedelta(days=-1, seconds=86100)"),
        ((math.inf,), "inf"),
        ((math.nan,), "nan"),
        (("1h",), "'1h'"),
        ((True,), "True"),
        ((60, 60.0), "60.0"),
        ((60, 120, 180, 240), "not 4"),
    ]:
        with pytest.raises(ConfigurationError, match=re.escape(named)):
            channel(bad)


# -- a click that grants --------------------------------------------------------------------------


async def test_clicking_it_approves_and_the_same_call_then_runs_without_asking(slack: FakeSlack) -> None:
    async with (
        HumanLayer([web_api(slack)], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):
        pay = payments(hl, approvers=[ALICE, BOB])
        results: list[dict[str, Any]] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _append(results, pay(120, "acme")))
            [post] = await slack.wait_calls("chat.postMessage")
            assert post.answer is not None
            [request] = await hl.pending()
            [button] = grant_buttons(post)
            response = await click(client, pressed(button, user=ALICE, message_ts=post.answer["ts"]))
            assert (response.status_code, response.text) == (200, "")
            # Acknowledged once stored: the decision and the grant are there when Slack hears back.
            decision = (await hl.get(request.id)).decision
            assert decision is not None
            assert (decision.status, decision.by, decision.via) == (Status.APPROVED, ALICE, "slack")
            [grant] = await hl.grants()
        assert results == [{"paid": 120, "to": "acme", "via": "slack", "grant": None, "by": ALICE}]
        assert (grant.function, grant.by, grant.where) == (
            request.tool,
            (ALICE,),
            {"amount": 120, "to": "acme"},
        )
        assert decision is not None and grant.active(datetime.now(UTC))
        assert grant.expires_at - decision.decided_at < HOUR + timedelta(seconds=5)

        [update] = await slack.wait_calls("chat.update")
        assert post.answer is not None and update.data["ts"] == post.answer["ts"] and buttons(update) == []
        assert "approved by U0ALICE via slack" in update.data["text"]
        assert_until(update.data["text"], grant)
        [outcome] = [b["text"]["text"] for b in blocks_of(update) if "allowing the same" in json.dumps(b)]
        assert outcome.startswith(":white_check_mark: approved by <@U0ALICE> via slack at ")
        assert_until(outcome, grant)
        assert slack.received("chat.postEphemeral") == []  # the message says it, to everyone

        # The same call again: approved by the grant, nobody asked.
        assert await runs_at_once(lambda: pay(120, "acme")) == {
            "paid": 120,
            "to": "acme",
            "via": "grant",
            "grant": grant.id,
            "by": ALICE,
        }
        assert len(slack.received("chat.postMessage")) == 1
        [used] = await hl.grants()
        assert used.uses == 1

        # Other arguments: asked again.
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _append(results, pay(121, "acme")))
            await slack.wait_calls("chat.postMessage", 2)
            [other] = await wait_for_pending(hl)
            await hl.decide(other.id, True, by=BOB)
        assert results[-1]["via"] == "api"


async def test_a_grant_through_an_incoming_webhook_is_said_in_the_replaced_message(slack: FakeSlack) -> None:
    channel = SlackChannel(webhook_url=slack.webhook_url, signing_secret=SECRET)
    async with (
        HumanLayer([channel], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):
        pay = payments(hl)
        async with anyio.create_task_group() as tg:
            tg.start_soon(pay, 5, "acme")
            [post] = await slack.wait_calls("webhook")
            [button] = grant_buttons(post)
            payload = pressed(button, user=BOB, response_url=slack.response_url("grant-1"))
            assert (await click(client, payload)).status_code == 200
        [grant] = await hl.grants()
        [replaced] = await slack.wait_calls("response_url")
        assert replaced.data["replace_original"] is True and buttons(replaced) == []
        assert_until(replaced.data["text"], grant)


async def test_with_several_approvals_the_grant_comes_only_when_every_approver_asks(slack: FakeSlack) -> None:
    async with (
        HumanLayer([web_api(slack)], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):
        pay = payments(hl, approvers=[ALICE, BOB], approvals=2)
        counted = (
            "Your approval is counted: 1 of 2 approvals: U0ALICE. The same calls are allowed for 1 hour "
            "only when every approver asks for it."
        )

        # Alice asks for it, Bob only approves: approved, no grant, and the message says why.
        async with anyio.create_task_group() as tg:
            tg.start_soon(pay, 1, "acme")
            [post] = await slack.wait_calls("chat.postMessage")
            [request] = await wait_for_pending(hl)
            [button] = grant_buttons(post)
            assert (await click(client, pressed(button, user=ALICE))).text == counted
            [told] = await slack.wait_calls("chat.postEphemeral")
            assert (told.data["user"], told.data["text"]) == (ALICE, counted)
            assert await hl.grants() == []
            assert (await click(client, slack_block_actions(request.id, user=BOB))).text == ""
        assert await hl.grants() == []
        [update] = await slack.wait_for(lambda: [c for c in slack.received("chat.update") if not buttons(c)])
        assert "without allowing the same: that needs every approver to ask for it" in update.data["text"]

        # Both ask: one grant, from both of them.
        async with anyio.create_task_group() as tg:
            tg.start_soon(pay, 2, "acme")
            [_, post] = await slack.wait_calls("chat.postMessage", 2)
            [button] = grant_buttons(post)
            assert (await click(client, pressed(button, user=ALICE))).text == counted
            assert (await click(client, pressed(button, user=BOB))).text == ""
        [grant] = await hl.grants()
        assert (grant.by, grant.confirmed, grant.where) == ((ALICE, BOB), True, {"amount": 2, "to": "acme"})
        assert (await runs_at_once(lambda: pay(2, "acme")))["grant"] == grant.id
        [*_, update] = await slack.wait_for(
            lambda: [c for c in slack.received("chat.update") if not buttons(c)][1:]
        )
        assert_until(update.data["text"], grant)


# -- clicks that grant nothing ---------------------------------------------------------------------


async def test_forged_old_foreign_and_tampered_clicks_grant_nothing(slack: FakeSlack) -> None:
    async with (
        HumanLayer([web_api(slack)], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):
        pay = payments(hl, approvers=[ALICE, BOB])

        async def post(payload: dict[str, Any], **signing: Any) -> httpx.Response:
            return await click(client, payload, **signing)

        async with anyio.create_task_group() as tg:
            tg.start_soon(pay, 9000, "mallory")
            [message] = await slack.wait_calls("chat.postMessage")
            [request] = await wait_for_pending(hl)
            [button] = grant_buttons(message)
            good = pressed(button, user=ALICE)
            with capture_logs() as logs:
                assert (await post(good, secret="not-the-signing-secret")).status_code == 401
                assert (await post(good, timestamp=int(time.time()) - 301)).status_code == 401
                assert (await post(good, timestamp=int(time.time()) + 301)).status_code == 401
                assert (await post(pressed(button, user=MALLORY))).text == NOT_AN_APPROVER
                for value in (
                    f"{request.id} 7200.0",
                    f"{request.id} 1e999",
                    f"{request.id} nan",
                    f"{request.id} x",
                ):
                    assert (await post(pressed(button, user=ALICE, value=value))).text == NOT_OFFERED
                # A value without its seconds is not a payload Slack sends for our buttons.
                assert (await post(pressed(button, user=ALICE, value=request.id))).status_code == 400
            refused = [(e["status"], e["reason"]) for e in logs if e["event"] == "listener.refused"]
            assert refused == [
                (401, "bad signature"),
                (401, "stale timestamp"),
                (401, "stale timestamp"),
                (400, "malformed grant value"),
            ]
            assert [e["user"] for e in logs if e["event"] == "slack.not_an_approver"] == [MALLORY]
            offered = [e["seconds"] for e in logs if e["event"] == "slack.grant_not_offered"]
            assert offered == ["7200.0", "1e999", "nan", "x"]
            told = await slack.wait_calls("chat.postEphemeral", 5)
            assert [(e.data["user"], e.data["text"]) for e in told] == [(MALLORY, NOT_AN_APPROVER)] + [
                (ALICE, NOT_OFFERED)
            ] * 4
            assert (await hl.get(request.id)).status is Status.PENDING
            assert await hl.grants() == []

            # The good click decides once; the same signed body again grants nothing more.
            body = slack_form_body(good)
            headers = sign_slack_body(body, SECRET)
            assert (await client.post("/slack/events", content=body, headers=headers)).text == ""
            replayed = await client.post("/slack/events", content=body, headers=headers)
            assert replayed.text.startswith("This request was already approved by <@U0ALICE> via slack")
        assert len(await hl.grants()) == 1


@pytest.mark.parametrize("acting", ["thread", "on_behalf_of"])
async def test_whoever_the_agent_acts_for_may_not_grant_its_calls(slack: FakeSlack, acting: str) -> None:
    channel = web_api(slack)
    async with (
        HumanLayer([channel], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):
        pay = payments(hl, approvers=[ALICE, BOB])
        results: list[Any] = []

        async def agent_turn() -> None:
            with channel.thread(requested_by=BOB) if acting == "thread" else hl.on_behalf_of(BOB):
                results.append(await pay(1, "bob"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(agent_turn)
            [posted] = await slack.wait_calls("chat.postMessage")
            [request] = await wait_for_pending(hl)
            assert request.requested_by == BOB
            [button] = grant_buttons(posted)
            with capture_logs() as logs:
                assert (await click(client, pressed(button, user=BOB))).text == YOUR_OWN
            assert [(e["user"], e["requester"]) for e in logs if e["event"] == "slack.not_an_approver"] == [
                (BOB, True)
            ]
            [told] = await slack.wait_calls("chat.postEphemeral")
            assert (told.data["user"], told.data["text"]) == (BOB, YOUR_OWN)
            assert (await hl.get(request.id)).status is Status.PENDING
            assert await hl.grants() == []
            assert (await click(client, pressed(button, user=ALICE))).text == ""
        assert results == [{"paid": 1, "to": "bob", "via": "slack", "grant": None, "by": ALICE}]
        [grant] = await hl.grants()
        assert grant.by == (ALICE,)
        # Alice's grant covers the same call, but never one made for Alice herself.
        with channel.thread(requested_by=BOB) if acting == "thread" else hl.on_behalf_of(BOB):
            assert (await runs_at_once(lambda: pay(1, "bob")))["grant"] == grant.id


async def test_the_bolt_app_takes_the_grant_button_too(slack: FakeSlack) -> None:
    app: AsyncApp = bolt_app(slack)
    channel = attached(slack, app)
    async with HumanLayer([channel], listen=None) as hl, served(app) as client:
        pay = payments(hl, approvers=[ALICE])
        async with anyio.create_task_group() as tg:
            tg.start_soon(pay, 7, "acme")
            [post] = await slack.wait_calls("chat.postMessage")
            [request] = await wait_for_pending(hl)
            [button] = grant_buttons(post)
            assert (await post_to_bolt(client, pressed(button, user=MALLORY))).status_code == 200
            assert (
                await post_to_bolt(client, pressed(button, user=ALICE, value=f"{request.id} 60.0"))
            ).status_code == 200
            told = await slack.wait_calls("chat.postEphemeral", 2)
            assert [(e.data["user"], e.data["text"]) for e in told] == [
                (MALLORY, NOT_AN_APPROVER),
                (ALICE, NOT_OFFERED),
            ]
            assert await hl.grants() == []

            assert (await post_to_bolt(client, pressed(button, user=ALICE))).status_code == 200
            decided = (await hl.get(request.id)).decision  # stored before Bolt acknowledged
            assert decided is not None and (decided.by, decided.via) == (ALICE, "slack")
        [grant] = await hl.grants()
        assert grant.by == (ALICE,)
        assert (await runs_at_once(lambda: pay(7, "acme")))["grant"] == grant.id
        [update] = await slack.wait_calls("chat.update")
        assert_until(update.data["text"], grant)


# -- what the updated message says, escaped ---------------------------------------------------------


def test_the_outcome_says_until_when_with_the_date_when_it_is_another_day_and_escapes_names() -> None:
    request = make_request("decided", tool="billing.pay")
    late = datetime(2030, 5, 1, 23, 30, 5, tzinfo=UTC)
    decision = Decision(request.id, True, Status.APPROVED, "U0ALICE", "slack", None, late)
    decided = _decided(request, decision)
    for seconds, said in [
        (600.0, "allowing the same for 10 minutes (until 23:40 UTC)"),
        (3600.0, "allowing the same for 1 hour (until 2030-05-02 00:30 UTC)"),
        (86400.0, "allowing the same for 1 day (until 2030-05-02 23:30 UTC)"),
    ]:
        message = slack_blocks.outcome_message(decided, granted=seconds)
        assert message["text"].endswith(said)
        assert said in json.dumps(message["blocks"])
    assert "allowing" not in json.dumps(slack_blocks.outcome_message(decided))
    denied = _decided(request, Decision(request.id, False, Status.DENIED, "U0ALICE", "slack", None, late))
    assert "allowing" not in json.dumps(slack_blocks.outcome_message(denied, granted=600.0))

    hostile = "<!channel>@evil.com"
    votes = (
        Vote("U0BOB", True, "slack", None, late, grant=600.0),
        Vote(hostile, True, "slack", None, late, grant=60.0),
    )
    quorum = Decision(request.id, True, Status.APPROVED, hostile, "slack", None, late, votes=votes)
    message = slack_blocks.outcome_message(_decided(request, quorum))
    assert "allowing the same for 1 minute (until 23:31 UTC)" in message["text"]  # the shortest asked
    assert "<!channel>" not in json.dumps(message)
    assert "&lt;!channel&gt;@evil.com" in json.dumps(message["blocks"])
    partly = (votes[0], Vote("U0BOB", True, "slack", None, late))
    message = slack_blocks.outcome_message(_decided(request, replace(quorum, votes=partly)))
    assert "without allowing the same: that needs every approver to ask for it" in message["text"]


def _decided(request: ApprovalRequest, decision: Decision) -> ApprovalRequest:
    return replace(request, decision=decision)


async def _append(results: list[Any], call: Awaitable[Any]) -> None:
    results.append(await call)
