"""SlackChannel's people: approvers by email and user group, threads and their requesters,
direct messages, mentions, missing scopes and hostile profile text.

Against the local fake of Slack, through the real listener on loopback, with callbacks
signed as Slack signs them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import TaskGroup

from humanlayer_async import (
    ApprovalRequest,
    ChannelError,
    Decision,
    HumanLayer,
    NotAnApprover,
    Status,
    current_decision,
)
from humanlayer_async.channels import SlackChannel
from humanlayer_async.testing import sign_slack_body, slack_block_actions, slack_form_body, wait_for_pending

from .fake_slack import BOT_TOKEN, SCOPES, Call, FakeSlack

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_slack_environment")]

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
CHANNEL = "C0APPROVALS"
ALICE, BOB, CAROL, CFO, MALLORY, REQUESTER = "U0ALICE", "U0BOB", "U0CAROL", "U0CFO", "U0MALLORY", "U0REQ"
PEOPLE: dict[str, str | None] = {
    ALICE: "alice@company.com",
    BOB: "bob@company.com",
    CAROL: None,  # no email on her profile
    CFO: "CFO@Company.com",  # as typed into Slack: emails are matched lower-cased
    MALLORY: "mallory@company.com",
    REQUESTER: "req@company.com",
}
FINANCE = "S0FINANCE"
ALL_SCOPES = frozenset(SCOPES.values())
NOT_AN_APPROVER = "you are not an approver for this request"
YOUR_OWN = "you requested this call, so someone else must decide it"

Tool = Callable[..., Awaitable[str]]


@pytest.fixture
def slack(slack: FakeSlack) -> FakeSlack:
    slack.users.update(PEOPLE)
    slack.groups[FINANCE] = [ALICE, CAROL]
    return slack


def slack_channel(slack: FakeSlack, channel: str = CHANNEL, **options: Any) -> SlackChannel:
    return SlackChannel(
        bot_token=BOT_TOKEN, signing_secret=SECRET, channel=channel, base_url=slack.api_url, **options
    )


@contextlib.asynccontextmanager
async def running(channel: SlackChannel) -> AsyncIterator[tuple[HumanLayer, httpx.AsyncClient]]:
    """A HumanLayer with ``channel`` behind the real listener, and a client of the listener."""
    async with (
        HumanLayer([channel], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):
        yield hl, client


def start(tg: TaskGroup, results: list[str], tool: Tool, *args: Any) -> None:
    """Call ``tool`` in ``tg``; what it returns goes to ``results``."""

    async def call() -> None:
        results.append(await tool(*args))

    tg.start_soon(call)


async def click_as(client: httpx.AsyncClient, request_id: str, user: str, **where: Any) -> str:
    """``user`` clicks Approve (signed as Slack signs it); the reply they are told, if any."""
    body = slack_form_body(slack_block_actions(request_id, user=user, **where))
    response = await client.post("/slack/events", content=body, headers=sign_slack_body(body, SECRET))
    assert response.status_code == 200
    return response.text


async def told(slack: FakeSlack, user: str, count: int = 1) -> list[Call]:
    """The ephemeral messages shown to ``user``, once there are ``count`` of them."""

    def shown() -> list[Call] | None:
        calls = [call for call in slack.received("chat.postEphemeral") if call.data["user"] == user]
        return calls if len(calls) >= count else None

    return await slack.wait_for(shown)


async def decision_of(hl: HumanLayer, request_id: str) -> Decision:
    decision = (await hl.get(request_id)).decision
    assert decision is not None
    return decision


async def pending_one(hl: HumanLayer) -> ApprovalRequest:
    [request] = await wait_for_pending(hl, within=5)
    return request


async def replies(slack: FakeSlack, channel: str, thread_ts: str, count: int) -> list[dict[str, Any]]:
    """The messages in a thread, once there are ``count`` of them."""
    return await slack.wait_for(lambda: (found := slack.thread(channel, thread_ts))[count - 1 :] and found)


def posts(slack: FakeSlack) -> list[Call]:
    return slack.received("chat.postMessage")


# -- 0. whoever clicks is asked of Slack once -------------------------------------------------------


async def test_a_user_slack_does_not_know_is_asked_about_once_and_decides_by_their_id(
    slack: FakeSlack,
) -> None:
    # Slack's "no" (user_not_found) is an answer, cached like any other, not an error to retry.
    async with running(slack_channel(slack)) as (hl, client):

        @hl.require_approval()
        async def ship(order: int) -> str:
            return f"shipped {order}"

        results: list[str] = []
        async with anyio.create_task_group() as tg:
            for order in (1, 2):
                start(tg, results, ship, order)
            for request in await wait_for_pending(hl, 2, within=5):
                assert await click_as(client, request.id, "U0GHOST") == ""
                assert (await decision_of(hl, request.id)).by == "U0GHOST"
        assert sorted(results) == ["shipped 1", "shipped 2"]
        assert len(slack.received("users.info", status=None)) == 1


# -- 1. approvers by email -------------------------------------------------------------------------


async def test_an_approver_named_by_email_is_matched_to_the_clicking_users_profile(slack: FakeSlack) -> None:
    inside: list[Decision | None] = []
    async with running(slack_channel(slack)) as (hl, client):

        @hl.require_approval(approvers=["cfo@company.com"])
        async def wire(amount: int) -> str:
            inside.append(current_decision())
            return f"wired {amount}"

        results: list[str] = []
        async with anyio.create_task_group() as tg:
            start(tg, results, wire, 5000)
            request = await pending_one(hl)
            assert await click_as(client, request.id, BOB) == NOT_AN_APPROVER
            [refusal] = await told(slack, BOB)
            assert refusal.data["text"] == NOT_AN_APPROVER
            assert (await hl.get(request.id)).status is Status.PENDING
            assert await click_as(client, request.id, CFO) == ""
        assert results == ["wired 5000"]

        decision = await decision_of(hl, request.id)
        assert (decision.by, decision.user, decision.via) == ("cfo@company.com", CFO, "slack")
        [seen] = inside
        assert seen is not None and (seen.by, seen.user) == ("cfo@company.com", CFO)
        [decided] = [
            e for e in await hl.store.history(request_id=request.id) if e.event == "approval.decided"
        ]
        assert (decided.fields["by"], decided.fields["user"]) == ("cfo@company.com", CFO)
        [update] = await slack.wait_calls("chat.update")
        assert "approved by cfo@company.com via slack" in update.data["text"]
        assert slack.received("chat.postEphemeral", status=None) == [refusal]  # the CFO was told nothing


# -- 2. approvers by user group --------------------------------------------------------------------


async def test_a_user_group_approves_through_its_members_asked_of_slack_once(slack: FakeSlack) -> None:
    async with running(slack_channel(slack)) as (hl, client):

        @hl.require_approval(approvers=[FINANCE])
        async def refund(order: str) -> str:
            return f"refunded {order}"

        results: list[str] = []
        async with anyio.create_task_group() as tg:
            start(tg, results, refund, "A-1")
            first = await pending_one(hl)
            assert await click_as(client, first.id, MALLORY) == NOT_AN_APPROVER
            assert (await hl.get(first.id)).status is Status.PENDING
            assert await click_as(client, first.id, ALICE) == ""
        async with anyio.create_task_group() as tg:
            start(tg, results, refund, "A-2")
            second = await pending_one(hl)
            assert await click_as(client, second.id, CAROL) == ""
        assert results == ["refunded A-1", "refunded A-2"]

        alice = await decision_of(hl, first.id)
        assert (alice.by, alice.user) == ("alice@company.com", ALICE)
        carol = await decision_of(hl, second.id)
        assert (carol.by, carol.user) == (CAROL, None)  # no email on her profile: her user id
        # Three clicks within the TTL: the group's members were asked for once.
        assert [c.data["usergroup"] for c in slack.received("usergroups.users.list", None)] == [FINANCE]


# -- 3. a channel's approvers narrow the decorator's -----------------------------------------------


async def test_a_channels_approvers_narrow_the_decorators_and_never_widen_them(slack: FakeSlack) -> None:
    async with running(slack_channel(slack, approvers=[ALICE, BOB])) as (hl, client):

        @hl.require_approval(approvers=["bob@company.com"])
        async def deploy(version: str) -> str:
            return f"deployed {version}"

        results: list[str] = []
        async with anyio.create_task_group() as tg:
            start(tg, results, deploy, "1.0")
            request = await pending_one(hl)
            assert await click_as(client, request.id, ALICE) == NOT_AN_APPROVER  # the channel's list only
            assert (await hl.get(request.id)).status is Status.PENDING
            assert await click_as(client, request.id, BOB) == ""
        assert results == ["deployed 1.0"]
        decision = await decision_of(hl, request.id)
        assert (decision.by, decision.user) == ("bob@company.com", BOB)


async def test_with_no_approver_on_both_lists_nobody_decides_in_slack(slack: FakeSlack) -> None:
    async with running(slack_channel(slack, approvers=[BOB])) as (hl, client):

        @hl.require_approval(approvers=[ALICE])
        async def deploy(version: str) -> str:
            return f"deployed {version}"

        results: list[str] = []
        async with anyio.create_task_group() as tg:
            start(tg, results, deploy, "2.0")
            request = await pending_one(hl)
            assert await click_as(client, request.id, ALICE) == NOT_AN_APPROVER  # not on the channel's
            assert await click_as(client, request.id, BOB) == NOT_AN_APPROVER  # not on the request's
            await told(slack, ALICE)
            await told(slack, BOB)
            assert (await hl.get(request.id)).status is Status.PENDING
            decision = await hl.decide(request.id, True, by=ALICE)  # Python knows no channel's list
        assert results == ["deployed 2.0"]
        assert decision is not None and (decision.by, decision.via, decision.status) == (
            ALICE,
            "api",
            Status.APPROVED,
        )


# -- 4. thread(): a conversation's thread, and who may not decide ----------------------------------


async def test_a_thread_gets_the_request_and_its_outcome_and_its_requester_may_not_decide(
    slack: FakeSlack,
) -> None:
    channel = slack_channel(slack)
    in_thread = {"channel": "C0CONV", "thread_ts": "1712.0001"}
    async with running(channel) as (hl, client):

        @hl.require_approval()
        async def delete_branch(name: str) -> str:
            return f"deleted {name}"

        results: list[str] = []

        async def agent_turn() -> None:
            with channel.thread(**in_thread, requested_by=REQUESTER):
                results.append(await delete_branch("main"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(agent_turn)
            request = await pending_one(hl)
            assert request.requested_by == REQUESTER
            [post] = await slack.wait_calls("chat.postMessage")
            assert (post.data["channel"], post.data["thread_ts"]) == ("C0CONV", "1712.0001")
            assert post.answer is not None
            ts = post.answer["ts"]

            assert await click_as(client, request.id, REQUESTER, message_ts=ts, **in_thread) == YOUR_OWN
            [ephemeral] = await told(slack, REQUESTER)
            assert (ephemeral.data["text"], ephemeral.data["channel"], ephemeral.data["thread_ts"]) == (
                YOUR_OWN,
                "C0CONV",
                "1712.0001",
            )
            with pytest.raises(NotAnApprover) as refused:
                await hl.decide(request.id, True, by=REQUESTER)
            assert refused.value.requester is True
            assert (await hl.get(request.id)).status is Status.PENDING

            assert await click_as(client, request.id, BOB, message_ts=ts, **in_thread) == ""
        assert results == ["deleted main"]
        assert (await decision_of(hl, request.id)).by == "bob@company.com"

        [update] = await slack.wait_calls("chat.update")
        assert (update.data["channel"], update.data["ts"]) == ("C0CONV", ts)
        request_message, outcome = await replies(slack, "C0CONV", "1712.0001", 2)
        assert request.short_id in json.dumps(request_message["blocks"])
        assert "approved by bob@company.com via slack" in outcome["text"]


async def test_a_requester_named_by_email_may_not_decide_in_slack(slack: FakeSlack) -> None:
    channel = slack_channel(slack)
    async with running(channel) as (hl, client):

        @hl.require_approval()
        async def merge(branch: str) -> str:
            return f"merged {branch}"

        results: list[str] = []

        async def agent_turn() -> None:
            with channel.thread(requested_by="req@company.com"):
                results.append(await merge("feature"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(agent_turn)
            request = await pending_one(hl)
            assert await click_as(client, request.id, REQUESTER) == YOUR_OWN
            assert (await hl.get(request.id)).status is Status.PENDING
            assert await click_as(client, request.id, ALICE) == ""
        assert results == ["merged feature"]


async def test_concurrent_conversations_each_keep_their_own_thread(slack: FakeSlack) -> None:
    channel = slack_channel(slack)
    threads = {"first": ("C0ONE", "1712.0001"), "second": ("C0TWO", "1712.0002")}
    async with running(channel) as (hl, _):

        @hl.require_approval()
        async def reply(conversation: str) -> str:
            return f"replied in {conversation}"

        results: list[str] = []
        both_inside = anyio.Event()
        entered: list[str] = []

        async def agent_turn(conversation: str) -> None:
            where, thread_ts = threads[conversation]
            with channel.thread(channel=where, thread_ts=thread_ts):
                entered.append(conversation)
                if len(entered) == 2:
                    both_inside.set()
                await both_inside.wait()  # both contexts are set before either call is made
                results.append(await reply(conversation))

        async with anyio.create_task_group() as tg:
            for conversation in threads:
                tg.start_soon(agent_turn, conversation)
            start(tg, results, reply, "none")  # outside any thread()
            requests = await wait_for_pending(hl, 3, within=5)
            await slack.wait_calls("chat.postMessage", 3)
            by_conversation = {
                _argument(call): (call.data["channel"], call.data.get("thread_ts")) for call in posts(slack)
            }
            assert by_conversation == {**threads, "none": (CHANNEL, None)}
            for request in requests:
                await hl.decide(request.id, True, by="ops@company.com")
        assert sorted(results) == ["replied in first", "replied in none", "replied in second"]
        await slack.wait_calls("chat.update", 3)
        for where, thread_ts in threads.values():
            asked, outcome = await replies(slack, where, thread_ts, 2)
            assert "approved by ops@company.com" in outcome["text"] and asked["blocks"]
        # Outside a thread, the outcome updates the message and posts nothing more.
        assert len(posts(slack)) == 5


def _argument(call: Call) -> str:
    """The one argument value shown in a posted request (the conversation's name)."""
    fields = [field for block in call.data["blocks"] for field in block.get("fields", [])]
    return str(fields[1]["text"])


# -- 5. direct messages ----------------------------------------------------------------------------


async def test_a_user_id_channel_posts_to_the_dm_opened_once(slack: FakeSlack) -> None:
    async with running(slack_channel(slack, channel=ALICE)) as (hl, _):

        @hl.require_approval()
        async def rotate(key: str) -> str:
            return f"rotated {key}"

        results: list[str] = []
        for key in ("k1", "k2"):
            async with anyio.create_task_group() as tg:
                start(tg, results, rotate, key)
                await hl.decide((await pending_one(hl)).id, True, by=ALICE)
        assert results == ["rotated k1", "rotated k2"]
        [opened] = slack.received("conversations.open", None)
        assert opened.data["users"] == ALICE
        dm = slack.dms[ALICE]
        assert dm.startswith("D") and [p.data["channel"] for p in posts(slack)] == [dm, dm]


async def test_an_email_channel_is_looked_up_then_opened_as_a_dm(slack: FakeSlack) -> None:
    async with running(slack_channel(slack, channel="alice@company.com")) as (hl, _):

        @hl.require_approval()
        async def rotate(key: str) -> str:
            return f"rotated {key}"

        results: list[str] = []
        async with anyio.create_task_group() as tg:
            start(tg, results, rotate, "k1")
            await hl.decide((await pending_one(hl)).id, True, by=ALICE)
        assert results == ["rotated k1"]
        asked = [c.method for c in slack.calls if c.method != "chat.update"]
        assert asked == ["users.lookupByEmail", "conversations.open", "chat.postMessage"]
        assert slack.calls[0].data["email"] == "alice@company.com"
        assert slack.calls[1].data["users"] == ALICE
        assert posts(slack)[0].data["channel"] == slack.dms[ALICE]


# -- 6. mentions -----------------------------------------------------------------------------------


async def posted(slack: FakeSlack, channel: SlackChannel, approvers: list[str]) -> Call:
    """The message ``channel`` posts for a call gated by ``approvers`` (then approved by Alice)."""
    async with running(channel) as (hl, _):

        @hl.require_approval(approvers=approvers)
        async def scale(replicas: int) -> str:
            return f"scaled to {replicas}"

        results: list[str] = []
        async with anyio.create_task_group() as tg:
            start(tg, results, scale, 3)
            request = await pending_one(hl)
            [post] = await slack.wait_calls("chat.postMessage")
            await hl.decide(request.id, True, by=ALICE)
        assert results == ["scaled to 3"]
        slack.calls.clear()  # the next call's message is then the only one
        return post


async def test_mention_approvers_notifies_users_groups_and_emails(slack: FakeSlack) -> None:
    approvers = [ALICE, FINANCE, "bob@company.com"]
    mentions = ("<@U0ALICE>", "<!subteam^S0FINANCE>", "<@U0BOB>")

    post = await posted(slack, slack_channel(slack, mention_approvers=True), approvers)
    head = json.dumps(post.data["blocks"][0])
    for mention in mentions:
        assert mention in post.data["text"] and mention in head
    assert post.data["text"].startswith(" ".join(mentions))

    quiet = await posted(slack, slack_channel(slack), approvers)
    assert "<!subteam^" not in quiet.data["text"] and "<!subteam^" not in json.dumps(quiet.data["blocks"])
    assert not quiet.data["text"].startswith(("<@", "<!"))
    assert "your decision is needed" not in json.dumps(quiet.data["blocks"])


# -- 7. missing scopes -----------------------------------------------------------------------------


async def test_without_im_write_a_dm_request_fails_closed_naming_the_scope(slack: FakeSlack) -> None:
    slack.scopes = set(ALL_SCOPES - {"im:write"})
    async with running(slack_channel(slack, channel=ALICE)) as (hl, _):

        @hl.require_approval()
        async def rotate(key: str) -> str:
            return f"rotated {key}"

        with pytest.raises(ChannelError, match="im:write"):
            await rotate("k1")
        assert await hl.pending() == []
    [tried] = slack.received("conversations.open", None)  # no retry loop on a missing scope
    assert tried.answer == {
        "ok": False,
        "error": "missing_scope",
        "needed": "im:write",
        "provided": ",".join(sorted(slack.scopes)),
    }
    assert posts(slack) == []


async def test_without_usergroups_read_a_group_approver_is_told_why_and_nothing_is_decided(
    slack: FakeSlack,
) -> None:
    slack.scopes = set(ALL_SCOPES - {"usergroups:read"})
    async with running(slack_channel(slack)) as (hl, client):

        @hl.require_approval(approvers=[FINANCE])
        async def refund(order: str) -> str:
            return f"refunded {order}"

        async with anyio.create_task_group() as tg:
            start(tg, [], refund, "A-1")
            request = await pending_one(hl)
            text = await click_as(client, request.id, ALICE)
            assert "Slack could not say who you are" in text and "usergroups:read" in text
            [ephemeral] = await told(slack, ALICE)
            assert ephemeral.data["text"] == text
            assert (await hl.get(request.id)).status is Status.PENDING
            tg.cancel_scope.cancel()
    assert len(slack.received("usergroups.users.list", None)) == 1  # no retry loop


async def test_without_users_read_email_email_approvers_match_nobody_and_user_ids_still_work(
    slack: FakeSlack,
) -> None:
    slack.scopes = set(ALL_SCOPES - {"users:read.email"})
    async with running(slack_channel(slack)) as (hl, client):

        @hl.require_approval(approvers=["cfo@company.com"])
        async def wire(amount: int) -> str:
            return f"wired {amount}"

        @hl.require_approval(approvers=[ALICE])
        async def refund(order: str) -> str:
            return f"refunded {order}"

        results: list[str] = []
        async with anyio.create_task_group() as tg:
            start(tg, results, wire, 5000)
            by_email = await pending_one(hl)
            assert await click_as(client, by_email.id, CFO) == NOT_AN_APPROVER  # Slack hid the email
            assert (await hl.get(by_email.id)).status is Status.PENDING
            await hl.decide(by_email.id, True, by="cfo@company.com")  # elsewhere, they are known
        assert results == ["wired 5000"]
        async with anyio.create_task_group() as tg:
            start(tg, results, refund, "A-1")
            by_id = await pending_one(hl)
            assert await click_as(client, by_id.id, ALICE) == ""
        assert results == ["wired 5000", "refunded A-1"]
        decision = await decision_of(hl, by_id.id)
        assert (decision.by, decision.user) == (ALICE, None)


async def test_without_users_read_email_a_requester_named_by_email_decides_nothing(slack: FakeSlack) -> None:
    slack.scopes = set(ALL_SCOPES - {"users:read.email"})
    channel = slack_channel(slack)
    async with running(channel) as (hl, client):

        @hl.require_approval()
        async def merge(branch: str) -> str:
            return f"merged {branch}"

        results: list[str] = []

        async def agent_turn() -> None:
            with channel.thread(requested_by="req@company.com"):
                results.append(await merge("feature"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(agent_turn)
            request = await pending_one(hl)
            # Slack hides every email: whoever clicks may be the requester, so nobody decides here.
            for user in (REQUESTER, ALICE):
                text = await click_as(client, request.id, user)
                assert "Slack could not say who you are" in text and "users:read.email" in text
            assert (await hl.get(request.id)).status is Status.PENDING
            await hl.decide(request.id, True, by=ALICE)
        assert results == ["merged feature"]


# -- 8. hostile text from Slack profiles and requesters --------------------------------------------


async def test_hostile_emails_and_requesters_reach_slack_escaped(slack: FakeSlack) -> None:
    hostile, requester = "U0HOSTILE", "U0HERE"
    slack.users.update({hostile: "<!channel>@x.com", requester: "<!here>@x.com"})
    channel = slack_channel(slack, mention_approvers=True)
    where = {"channel": "C0CONV", "thread_ts": "1712.0001"}
    async with running(channel) as (hl, client):

        @hl.require_approval(approvers=["<!channel>@x.com", "<!here>@x.com", ALICE])
        async def publish(post: str) -> str:
            return f"published {post}"

        results: list[str] = []

        async def agent_turn() -> None:
            with channel.thread(**where, requested_by="<!here>@x.com"):
                results.append(await publish("news"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(agent_turn)
            request = await pending_one(hl)
            assert await click_as(client, request.id, requester, **where) == YOUR_OWN
            assert await click_as(client, request.id, hostile, **where) == ""
            already = await click_as(client, request.id, ALICE, **where)
            assert already.startswith("This request was already approved by <@U0HOSTILE> via slack")
        assert results == ["published news"]
        assert (await decision_of(hl, request.id)).by == "<!channel>@x.com"
        [update] = await slack.wait_calls("chat.update")
        asked, outcome = await slack.wait_calls("chat.postMessage", 2)
        await told(slack, ALICE)

    def shown(call: Call) -> str:
        return json.dumps([call.data.get("text"), call.data.get("blocks")])

    sent = [c for c in slack.calls if c.method in ("chat.postMessage", "chat.postEphemeral", "chat.update")]
    assert len(sent) == 5  # the request, its outcome in the thread, its update, two ephemerals
    assert [shown(c) for c in sent if "<!channel>" in shown(c) or "<!here>" in shown(c)] == []
    # ... and they did reach Slack, escaped (the mentions are of their user ids):
    assert "&lt;!here&gt;@x.com" in shown(asked) and "<@U0HERE>" in asked.data["text"]
    for call in (update, outcome):
        assert "approved by &lt;!channel&gt;@x.com via slack" in call.data["text"]


# -- an email in any case is one person (regressions) ---------------------------------------------


async def test_a_requester_named_by_a_mixed_case_email_may_not_decide(slack: FakeSlack) -> None:
    """``requested_by`` in another case than Slack's (lower-cased) profile email is still the
    requester: compared as typed, they approved their own call."""
    channel = slack_channel(slack)
    async with running(channel) as (hl, client):

        @hl.require_approval()
        async def merge(branch: str) -> str:
            return f"merged {branch}"

        async def agent_turn() -> None:
            with channel.thread(requested_by="Req@Company.com"):
                await merge("feature")

        async with anyio.create_task_group() as tg:
            tg.start_soon(agent_turn)
            request = await pending_one(hl)
            reply = await click_as(client, request.id, REQUESTER)
            status = (await hl.get(request.id)).status
            tg.cancel_scope.cancel()
        assert (reply, status) == (YOUR_OWN, Status.PENDING)


async def test_an_approver_named_by_a_mixed_case_email_may_decide(slack: FakeSlack) -> None:
    """An approver list's ``CFO@Company.com`` is Slack's ``cfo@company.com``, in the
    decorator's list and the channel's (compared as typed, nobody could approve)."""
    async with running(slack_channel(slack, approvers=["CFO@Company.com"])) as (hl, client):

        @hl.require_approval(approvers=["CFO@Company.com"])
        async def wire(amount: int) -> str:
            return f"wired {amount}"

        results: list[str] = []
        async with anyio.create_task_group() as tg:
            start(tg, results, wire, 5000)
            request = await pending_one(hl)
            reply = await click_as(client, request.id, CFO)
            if reply:
                tg.cancel_scope.cancel()
        assert (reply, results) == ("", ["wired 5000"])
