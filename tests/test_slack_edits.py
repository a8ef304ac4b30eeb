"""Edit, then approve, in Slack: the Edit button's modal, against the fake Slack, with callbacks
signed as Slack signs them (over HTTP to the listener, or through an attach()ed Bolt app)."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest

from humanlayer_async import HumanLayer, Status
from humanlayer_async.channels import SlackChannel
from humanlayer_async.testing import slack_block_actions, slack_view_submission, wait_for_pending

from .fake_slack import Call, FakeSlack
from .test_slack import CHANNEL, SECRET, assert_inert, buttons, click, text_objects, web_api
from .test_slack_bolt import attached, bolt_app, post, served

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_slack_environment")]

ALICE, BOB, MALLORY = "U0ALICE", "U0BOB", "U0MALLORY"
NOT_AN_APPROVER = "you are not an approver for this request"
PINGS = "<!channel> <@U123> <https://evil/|Click to approve>"


def labels(call: Call) -> list[str]:
    return [button["text"]["text"] for button in buttons(call)]


def inputs(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The view's input blocks by block id."""
    return {block["block_id"]: block for block in view["blocks"] if block["type"] == "input"}


def prefilled(view: dict[str, Any]) -> dict[str, str | None]:
    """Each argument's box in the edit modal, and the text it opens with."""
    return {
        block_id.removeprefix("hl_edit."): block["element"].get("initial_value")
        for block_id, block in inputs(view).items()
        if block_id.startswith("hl_edit.")
    }


def said(view: dict[str, Any]) -> str:
    """Everything the view's sections and context blocks say."""
    return "\n".join(
        text["text"]
        for block in view["blocks"]
        if block["type"] in ("section", "context")
        for text in text_objects(block)
    )


async def opened_view(slack: FakeSlack, count: int = 1) -> dict[str, Any]:
    """The ``count``-th view opened, once Slack accepted it (within Block Kit's limits)."""
    opened = (await slack.wait_calls("views.open", count, status=None))[count - 1]
    assert opened.answer is not None and opened.answer["ok"] is True, opened.answer
    view: dict[str, Any] = opened.data["view"]
    return view


def transfer_tool(
    hl: HumanLayer, ran: list[tuple[Any, ...]], *, approvers: list[str] | None = None, approvals: int = 1
) -> Any:
    @hl.require_approval(
        editable=["amount", "tags", "memo", "api_key"], approvers=approvers, approvals=approvals
    )
    async def transfer(
        recipient: str, amount: float, tags: list[str], memo: str | None = None, api_key: str = ""
    ) -> str:
        ran.append((recipient, amount, tags, memo))
        return f"sent {amount} to {recipient}"

    return transfer


async def test_edit_is_offered_only_for_editable_requests_and_only_with_the_web_api(slack: FakeSlack) -> None:
    # Grants aside (tests/test_slack_grants.py): Approve, Edit, Deny.
    webhook = SlackChannel(webhook_url=slack.webhook_url, signing_secret=SECRET, grant_durations=())
    for channel in (web_api(slack, grant_durations=()), webhook):
        async with (
            HumanLayer([channel], listen="127.0.0.1:0") as hl,
            httpx.AsyncClient(base_url=str(hl.url)) as client,
        ):

            @hl.require_approval(editable=["amount"], on_reject="return")
            async def pay(amount: int) -> str:
                return "paid"

            @hl.require_approval(on_reject="return")
            async def fixed(amount: int) -> str:
                return "fixed"

            @hl.require_approval(editable=["token"], on_reject="return")
            async def rotate(token: str) -> str:  # masked by its name: nothing Slack can edit
                return "rotated"

            method = "chat.postMessage" if channel is not webhook else "webhook"
            async with anyio.create_task_group() as tg:
                tg.start_soon(pay, 10)
                [editable] = await wait_for_pending(hl)
                tg.start_soon(fixed, 10)
                [_, plain] = await wait_for_pending(hl, 2)
                tg.start_soon(rotate, "t0ps3cret")
                [_, _, masked] = await wait_for_pending(hl, 3)
                posts = await slack.wait_calls(method, 3)
                by_id = {
                    request.id: call
                    for request in (editable, plain, masked)
                    for call in posts
                    if request.id in json.dumps(call.data["blocks"])
                }
                if channel is webhook:
                    assert [labels(by_id[r.id]) for r in (editable, plain, masked)] == [
                        ["Approve", "Deny"]
                    ] * 3
                    response = await click(client, slack_block_actions(editable.id, "edit", user=ALICE))
                    assert response.status_code == 400  # an incoming webhook opens no modals
                else:
                    assert labels(by_id[editable.id]) == ["Approve", "Edit", "Deny"]
                    [edit] = [b for b in buttons(by_id[editable.id]) if b["text"]["text"] == "Edit"]
                    assert (edit["action_id"], edit["value"], "style" in edit) == (
                        "hl_edit",
                        f"{editable.id} {editable.fingerprint}",
                        False,
                    )
                    assert labels(by_id[plain.id]) == ["Approve", "Deny"]
                    assert labels(by_id[masked.id]) == ["Approve", "Deny"]
                    # An Edit click on a request with nothing to edit: a bad payload, or told why.
                    response = await click(client, slack_block_actions(plain.id, "edit", user=ALICE))
                    assert response.status_code == 400
                    response = await click(client, slack_block_actions(masked.id, "edit", user=ALICE))
                    assert response.status_code == 200 and response.text.startswith(
                        "Slack cannot edit this call"
                    )
                assert slack.received("views.open", status=None) == []
                assert [(await hl.get(r.id)).status for r in (editable, plain, masked)] == [
                    Status.PENDING
                ] * 3
                tg.cancel_scope.cancel()


async def test_the_edit_modal_approves_with_the_changed_values_and_the_tool_runs_with_them(
    slack: FakeSlack,
) -> None:
    ran: list[tuple[Any, ...]] = []
    async with (
        HumanLayer([web_api(slack)], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):
        transfer = transfer_tool(hl, ran, approvers=[ALICE])
        results: list[str] = []

        async def call() -> None:
            results.append(await transfer("acme", 12000.0, ["q3", "ops"], api_key="sk-live-123"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            [request] = await wait_for_pending(hl)
            [posted] = await slack.wait_calls("chat.postMessage")
            ts = posted.answer["ts"] if posted.answer else ""
            edit = slack_block_actions(request.id, "edit", user=ALICE, channel=CHANNEL, message_ts=ts)
            assert (await click(client, edit)).text == ""
            view = await opened_view(slack)
            assert (view["callback_id"], view["private_metadata"]) == (
                "hl_edit",
                f"{request.id} {request.fingerprint}",
            )
            assert (view["title"]["text"], view["submit"]["text"]) == ("Edit and approve", "Approve")
            tags = '[\n  "q3",\n  "ops"\n]'  # JSON, indented, as the web console's form shows it
            assert prefilled(view) == {"amount": "12000.0", "tags": tags, "memo": "null"}
            boxes = inputs(view)
            assert list(boxes) == ["hl_edit.amount", "hl_edit.tags", "hl_edit.memo", "hl_text"]
            assert boxes["hl_edit.amount"]["label"] == {
                "type": "plain_text",
                "text": "amount",
                "emoji": False,
            }
            assert boxes["hl_edit.memo"]["hint"]["text"] == "text or null"
            assert boxes["hl_text"]["optional"] is True  # the comment
            assert "api_key: masked, so it cannot be edited" in said(view)
            assert "sk-live-123" not in json.dumps(view)
            assert (await hl.get(request.id)).status is Status.PENDING  # opening decides nothing

            values = {"amount": "5000", "tags": tags, "memo": "null"}  # Slack sends every box
            submitted = slack_view_submission(
                request.id,
                "capped",
                modal="edit",
                user=ALICE,
                values=values,
            )
            response = await click(client, submitted)
            assert (response.status_code, response.text) == (200, "")
        assert ran == [("acme", 5000, ["q3", "ops"], None)]
        assert results == ["sent 5000 to acme"]
        decision = (await hl.get(request.id)).decision
        assert decision is not None
        assert (decision.by, decision.via, decision.comment, decision.edits) == (
            ALICE,
            "slack",
            "capped",
            {"amount": 5000},
        )
        [update] = await slack.wait_calls("chat.update")
        assert "approved by U0ALICE with amount=5000 via slack" in update.data["text"]
        assert buttons(update) == []


async def test_an_invalid_value_is_shown_under_its_box_and_decides_nothing(slack: FakeSlack) -> None:
    ran: list[tuple[Any, ...]] = []
    async with (
        HumanLayer([web_api(slack)], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):
        transfer = transfer_tool(hl, ran, approvers=[ALICE])
        async with anyio.create_task_group() as tg:
            tg.start_soon(transfer, "acme", 12000.0, ["q3"])
            [request] = await wait_for_pending(hl)

            # Someone who is not an approver gets no modal, and cannot submit one either.
            refused = await click(client, slack_block_actions(request.id, "edit", user=MALLORY))
            assert refused.text == NOT_AN_APPROVER
            mallory = slack_view_submission(request.id, modal="edit", user=MALLORY, values={"amount": "1"})
            assert (await click(client, mallory)).json() == {
                "response_action": "errors",
                "errors": {"hl_text": NOT_AN_APPROVER},
            }
            assert slack.received("views.open", status=None) == []

            cases = {
                "lots": ("amount", "must be a number"),
                "": ("amount", "must be a number"),  # an emptied box
                "1e999": ("amount", "must be a number"),
            }
            for typed, (argument, problem) in cases.items():
                values = {"amount": typed, "tags": '["q3"]', "memo": "null"}
                submitted = slack_view_submission(request.id, modal="edit", user=ALICE, values=values)
                response = await click(client, submitted)
                assert response.json() == {
                    "response_action": "errors",
                    "errors": {f"hl_edit.{argument}": problem},
                }, typed
            bad_tags = {"amount": "12000.0", "tags": '["q3", 7]', "memo": "null"}
            response = await click(
                client, slack_view_submission(request.id, modal="edit", user=ALICE, values=bad_tags)
            )
            assert response.json()["errors"] == {"hl_edit.tags": "item 1 must be a string"}
            forged = {"amount": "12000.0", "recipient": "mallory"}  # a box the modal never had
            response = await click(
                client, slack_view_submission(request.id, modal="edit", user=ALICE, values=forged)
            )
            assert response.json()["errors"] == {
                "hl_edit.recipient": "it is not an editable argument of this call"
            }
            assert (await hl.get(request.id)).status is Status.PENDING
            assert ran == []

            # Nothing changed: an approval of the call as asked.
            same = {"amount": "12000.0", "tags": '["q3"]', "memo": "null"}  # tags on one line: the same list
            response = await click(
                client, slack_view_submission(request.id, "as asked", modal="edit", user=ALICE, values=same)
            )
            assert (response.status_code, response.text) == (200, "")
        assert ran == [("acme", 12000.0, ["q3"], None)]
        decision = (await hl.get(request.id)).decision
        assert decision is not None and (decision.edits, decision.by, decision.comment) == (
            None,
            ALICE,
            "as asked",
        )


async def test_an_edit_on_a_quorum_restarts_the_count_and_a_click_on_the_old_message_does_not_count(
    slack: FakeSlack,
) -> None:
    # Alice edits the amount as she approves: her vote starts the count again, the message is
    # redrawn with the edited call, and Bob's click on the message as it was (12000) is
    # refused, while his click on the redrawn message (5000) approves.
    ran: list[tuple[Any, ...]] = []
    async with (
        HumanLayer([web_api(slack)], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):
        transfer = transfer_tool(hl, ran, approvals=2)
        async with anyio.create_task_group() as tg:
            tg.start_soon(transfer, "acme", 12000.0, ["q3"])
            [request] = await wait_for_pending(hl)
            [posted] = await slack.wait_calls("chat.postMessage")
            assert "Edit" in labels(posted)
            old = request.fingerprint
            edit = slack_block_actions(request.id, "edit", user=ALICE, channel=CHANNEL, seen=old)
            assert (await click(client, edit)).text == ""
            view = await opened_view(slack)
            values = {**prefilled(view), "amount": "5000"}
            submitted = slack_view_submission(
                request.id, modal="edit", user=ALICE, values=values, seen=view["private_metadata"].split()[1]
            )
            assert (await click(client, submitted)).json()["response_action"] == "update"  # counted
            edited = await hl.get(request.id)
            assert (edited.kwargs["amount"], [v.by for v in edited.votes]) == (5000, [ALICE])

            for forged in ("ZZZZ", old.upper(), old + "0", "<!channel>"):
                bad = slack_block_actions(request.id, user=BOB, channel=CHANNEL, seen=forged)
                assert (await click(client, bad)).status_code == 400
            stale = await click(client, slack_block_actions(request.id, user=BOB, channel=CHANNEL, seen=old))
            assert stale.status_code == 200
            [told] = await slack.wait_calls("chat.postEphemeral")
            assert "edited after the message you answered showed it" in told.data["text"]
            assert [v.by for v in (await hl.get(request.id)).votes] == [ALICE]

            redrawn = await slack.wait_for(
                lambda: (
                    [c for c in slack.received("chat.update") if edited.fingerprint in json.dumps(c.data)]
                    or None
                )
            )
            assert "5000" in json.dumps(redrawn[-1].data["blocks"])
            fresh = slack_block_actions(request.id, user=BOB, channel=CHANNEL, seen=edited.fingerprint)
            assert (await click(client, fresh)).status_code == 200
        assert ran == [("acme", 5000, ["q3"], None)]


async def test_hostile_and_long_values_reach_slack_inert_and_within_its_limits(slack: FakeSlack) -> None:
    ran: list[str] = []
    async with (
        HumanLayer([web_api(slack)], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):

        @hl.require_approval(editable=True)
        async def publish(title: str, body: str, most: str, flipped: str) -> str:
            ran.append(title)
            return "published"

        async with anyio.create_task_group() as tg:
            tg.start_soon(publish, PINGS, "x" * 3001, "y" * 3000, "abc\u202edef")
            [request] = await wait_for_pending(hl)
            [posted] = await slack.wait_calls("chat.postMessage")
            assert_inert(posted.data["blocks"])
            # The message shortened the body: no Approve there, but Edit, whose modal shows it all.
            assert labels(posted) == ["Show the full call", "Edit", "Deny"]
            await click(client, slack_block_actions(request.id, "edit", user=ALICE))
            view = await opened_view(slack)
            assert_inert(view)
            # A bidi character is shown escaped, as JSON (which reads back the same).
            assert prefilled(view) == {"title": PINGS, "most": "y" * 3000, "flipped": '"abc\\u202edef"'}
            for block in inputs(view).values():
                assert block["label"]["type"] == "plain_text"
                assert (
                    len(block["element"].get("initial_value", "")) <= block["element"]["max_length"] <= 3000
                )
            text = said(view)
            assert '"' + "x" * 3001 + '"' in text.replace("\n", "")  # the whole call, above the boxes
            assert "body: longer than the 3,000 characters a Slack text box holds" in text
            assert "\u202e" not in json.dumps(view, ensure_ascii=False)

            values = {"title": "<!here> fixed", "most": "y" * 3000, "flipped": '"abc\\u202edef"'}
            await click(client, slack_view_submission(request.id, modal="edit", user=ALICE, values=values))
        assert ran == ["<!here> fixed"]
        decision = (await hl.get(request.id)).decision
        assert decision is not None and decision.edits == {"title": "<!here> fixed"}
        [update] = await slack.wait_calls("chat.update")
        assert_inert(update.data["blocks"], mentions=(ALICE,))
        assert "approved by <@U0ALICE> with title='&lt;!here&gt; fixed' via slack" in json.dumps(
            update.data["blocks"]
        )
        assert "<!here>" not in update.data["text"]


async def test_an_edit_through_an_attached_bolt_app_is_routed_and_decides(slack: FakeSlack) -> None:
    app = bolt_app(slack)
    channel = attached(slack, app)
    ran: list[tuple[Any, ...]] = []
    async with HumanLayer([channel], listen=None) as hl, served(app) as client:
        transfer = transfer_tool(hl, ran, approvers=[ALICE])

        async with anyio.create_task_group() as tg:
            tg.start_soon(transfer, "acme", 12000.0, ["q3"])
            [request] = await wait_for_pending(hl)
            assert (
                await post(client, slack_block_actions(request.id, "edit", user=ALICE))
            ).status_code == 200
            view = await opened_view(slack)
            assert view["callback_id"] == "hl_edit"
            invalid = slack_view_submission(
                request.id, modal="edit", user=ALICE, values={**prefilled(view), "amount": "lots"}
            )
            assert (await post(client, invalid)).json() == {
                "response_action": "errors",
                "errors": {"hl_edit.amount": "must be a number"},
            }
            outsider = slack_view_submission(request.id, modal="edit", user=MALLORY, values={"amount": "1"})
            assert (await post(client, outsider)).json()["errors"] == {"hl_text": NOT_AN_APPROVER}
            assert (await hl.get(request.id)).status is Status.PENDING
            valid = slack_view_submission(
                request.id, modal="edit", user=ALICE, values={**prefilled(view), "amount": "750.5"}
            )
            response = await post(client, valid)
            assert (response.status_code, response.text) == (200, "")
            decision = (await hl.get(request.id)).decision  # stored before the acknowledgement
            assert decision is not None and decision.edits == {"amount": 750.5}
        assert ran == [("acme", 750.5, ["q3"], None)]
