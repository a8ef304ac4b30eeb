"""N-of-M approvals: ``approvals=2`` needs two distinct approvers, one denial denies, one
person is one vote whatever the channel; the votes are shown and recorded."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from humanlayer_async import (
    ApprovalDenied,
    ApprovalTimeout,
    ConfigurationError,
    Decision,
    HumanLayer,
    NotAnApprover,
    Principal,
    Status,
    current_decision,
)
from humanlayer_async.channels import SlackChannel, WebChannel
from humanlayer_async.stores import SQLiteStore
from humanlayer_async.testing import (
    sign_slack_body,
    slack_block_actions,
    slack_form_body,
    slack_view_submission,
    wait_for_pending,
)

from .conftest import Inbox, make_channel, post_mailgun, text_of
from .durable_helpers import run_cli
from .fake_slack import BOT_TOKEN, FakeSlack

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_slack_environment")]

ALICE, BOB, CAROL = "alice@company.com", "bob@company.com", "carol@company.com"
SECRET = "quorum-signing-secret-0123456789"


async def test_two_distinct_approvers_are_needed_and_the_same_person_counts_once() -> None:
    async with HumanLayer([], listen=None) as hl:
        seen: list[Decision | None] = []

        @hl.require_approval(approvals=2, approvers=[ALICE, BOB, CAROL])
        async def wire(amount: int) -> int:
            seen.append(current_decision())
            return amount

        async with anyio.create_task_group() as tg:
            tg.start_soon(wire, 5000)
            [request] = await wait_for_pending(hl)
            assert request.approvals == 2 and request.votes == ()
            assert await hl.decide(request.id, True, by=ALICE, comment="ok") is None
            assert await hl.decide(request.id, True, by="Alice@Company.com", via="web") is None  # her again
            with pytest.raises(NotAnApprover):
                await hl.decide(request.id, True, by="mallory@company.com")
            pending = await hl.get(request.id)
            assert pending.status is Status.PENDING
            assert [(v.by, v.approved, v.via, v.comment) for v in pending.votes] == [
                (ALICE, True, "api", "ok")
            ]
            decision = await hl.decide(request.id, True, by=Principal(BOB, "U0BOB"), via="slack")
        assert decision is not None and decision.status is Status.APPROVED
        assert (decision.by, decision.user, decision.via) == (BOB, "U0BOB", "slack")
        assert [(v.by, v.user) for v in decision.votes] == [(ALICE, None), (BOB, "U0BOB")]
        assert seen == [decision]
        # Late votes change nothing: the decision stands.
        late = await hl.decide(request.id, False, by=CAROL)
        assert late == decision
        history = [e for e in await hl.store.history(request_id=request.id) if e.event == "approval.voted"]
        assert [(e.fields["by"], e.fields["approvals"], e.fields["needed"]) for e in history] == [
            (ALICE, 1, 2),
            (BOB, 2, 2),
        ]


async def test_one_denial_denies_and_the_requester_never_votes() -> None:
    async with HumanLayer([], listen=None) as hl:

        @hl.require_approval(approvals=2)
        async def drop_table(name: str) -> str:
            return f"dropped {name}"

        async with anyio.create_task_group() as tg:
            outcome: list[BaseException] = []

            async def call() -> None:
                with hl.on_behalf_of(CAROL):
                    try:
                        await drop_table("users")
                    except ApprovalDenied as exc:
                        outcome.append(exc)

            tg.start_soon(call)
            [request] = await wait_for_pending(hl)
            with pytest.raises(NotAnApprover) as own:
                await hl.decide(request.id, True, by=CAROL)
            assert own.value.requester
            assert await hl.decide(request.id, True, by=ALICE) is None
            denied = await hl.decide(request.id, False, by=BOB, comment="no backups")
        assert denied is not None and denied.status is Status.DENIED and denied.comment == "no backups"
        assert [(v.by, v.approved) for v in denied.votes] == [(ALICE, True), (BOB, False)]
        assert len(outcome) == 1 and outcome[0].decision == denied  # type: ignore[attr-defined]


async def test_votes_short_of_the_quorum_time_out(tmp_path: Path) -> None:
    async with HumanLayer([], store=SQLiteStore(tmp_path / "hl.db"), listen=None) as hl:

        @hl.require_approval(approvals=3, timeout=timedelta(seconds=1))
        async def deploy() -> str:
            return "deployed"

        async with anyio.create_task_group() as tg:
            failures: list[BaseException] = []

            async def call() -> None:
                try:
                    await deploy()
                except ApprovalTimeout as exc:
                    failures.append(exc)

            tg.start_soon(call)
            [request] = await wait_for_pending(hl)
            assert await hl.decide(request.id, True, by=ALICE) is None
            assert await hl.decide(request.id, True, by=BOB) is None
        assert len(failures) == 1
        timed_out = await hl.get(request.id)
        assert timed_out.status is Status.TIMED_OUT and [v.by for v in timed_out.votes] == [ALICE, BOB]
        assert timed_out.decision is not None and timed_out.decision.votes == ()  # no vote made it


def test_approvals_must_be_a_count_of_people() -> None:
    hl = HumanLayer([], listen=None)
    wrong: Any
    for wrong in (0, -1, 1.5, True, "2"):
        with pytest.raises(ConfigurationError, match="approvals"):
            hl.require_approval(approvals=wrong)


# -- one person is one vote whatever the channel ------------------------------------------------


@pytest.fixture
def slack(slack: FakeSlack) -> FakeSlack:
    slack.users.update({"U0ALICE": ALICE, "U0BOB": BOB})
    return slack


async def click(client: httpx.AsyncClient, request_id: str, user: str) -> httpx.Response:
    body = slack_form_body(
        slack_block_actions(request_id, user=user, channel="C0APPROVALS", message_ts="1.000001")
    )
    return await client.post("/slack/events", content=body, headers=sign_slack_body(body, SECRET))


async def test_slack_and_the_web_console_count_one_person_once_and_show_the_count(slack: FakeSlack) -> None:
    channel = SlackChannel(
        bot_token=BOT_TOKEN, signing_secret=SECRET, channel="C0APPROVALS", base_url=slack.api_url
    )
    keys = {"alice": "alice-key-0123456789", "bob": "bob-key-0123456789ab"}
    web = WebChannel(users=keys, emails={"alice": ALICE, "bob": BOB})
    async with (
        HumanLayer([channel, web], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):

        @hl.require_approval(approvals=2, approvers=[ALICE, BOB])
        async def refund(amount: int) -> int:
            return amount

        results: list[int] = []

        async def call() -> None:
            results.append(await refund(700))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            [request] = await wait_for_pending(hl)
            await slack.wait_calls("chat.postMessage")

            assert (await click(client, request.id, "U0ALICE")).status_code == 200
            [told] = await slack.wait_calls("chat.postEphemeral")
            assert told.data["text"] == f"Your approval is counted: 1 of 2 approvals: {ALICE}"
            [shown] = await slack.wait_calls("chat.update")  # the message shows the count
            assert "1 of 2 approvals" in json.dumps(shown.data["blocks"])

            def decide_on_the_web(key: str) -> Any:
                return client.post(
                    f"{web.url}/requests/{request.id}",
                    data={"action": "approve"},
                    headers={"authorization": f"Bearer {key}", "accept": "application/json"},
                )

            again = await decide_on_the_web(keys["alice"])  # Alice again, through the console
            assert again.json() == {
                "status": "pending",
                "message": f"counted: 1 of 2 approvals: {ALICE}",
                "mine": True,
            }
            assert [v.by for v in (await hl.get(request.id)).votes] == [ALICE]
            page = await client.get(f"{web.url}", headers={"authorization": f"Bearer {keys['bob']}"})
            assert f"1 of 2 approvals: {ALICE}" in page.text
            approved = await decide_on_the_web(keys["bob"])
            assert approved.json()["status"] == "approved"
        assert results == [700]
        decision = (await hl.get(request.id)).decision
        assert decision is not None and [(v.by, v.via) for v in decision.votes] == [
            (ALICE, "slack"),
            (BOB, "web"),
        ]


async def test_the_cli_casts_a_vote_and_says_how_far_it_got(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hl.db'}"
    async with HumanLayer([], store=url, listen=None) as hl:

        @hl.require_approval(approvals=2)
        async def rotate_keys() -> str:
            return "rotated"

        async with anyio.create_task_group() as tg:
            tg.start_soon(rotate_keys)
            [request] = await wait_for_pending(hl)
            code, out, _ = await run_cli("approve", request.id[:8], "--by", "ann", "--store", url)
            assert code == 0 and out.strip() == "counted: 1 of 2 approvals: ann"
            code, out, _ = await run_cli("show", request.id[:8], "--store", url)
            assert code == 0 and "Needs 2 approvals; so far 1 of 2 approvals: ann" in out
            code, out, _ = await run_cli("approve", request.id[:8], "--by", "ben", "--json", "--store", url)
            assert code == 0 and json.loads(out)["status"] == "approved"


async def test_a_vote_from_a_slack_modal_says_it_counted_and_closes(slack: FakeSlack) -> None:
    channel = SlackChannel(
        bot_token=BOT_TOKEN, signing_secret=SECRET, channel="C0APPROVALS", base_url=slack.api_url
    )
    async with (
        HumanLayer([channel], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):

        @hl.require_approval(approvals=2)
        async def purge(bucket: str) -> str:
            return f"purged {bucket}"

        async with anyio.create_task_group() as tg:
            tg.start_soon(purge, "logs")
            [request] = await wait_for_pending(hl)
            body = slack_form_body(slack_view_submission(request.id, "checked", modal="full", user="U0ALICE"))
            response = await client.post("/slack/events", content=body, headers=sign_slack_body(body, SECRET))
            answer = response.json()
            assert answer["response_action"] == "update" and answer["view"]["title"]["text"] == "Vote counted"
            assert f"1 of 2 approvals: {ALICE}" in json.dumps(answer["view"]["blocks"])
            assert [(v.by, v.comment) for v in (await hl.get(request.id)).votes] == [(ALICE, "checked")]
            assert await hl.decide(request.id, True, by=BOB) is not None


async def test_two_email_replies_make_a_quorum_and_the_same_sender_twice_counts_once(inbox: Inbox) -> None:
    channel = make_channel(inbox)  # to alice@ and bob@company.com, replies through Mailgun
    async with (
        HumanLayer([channel], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):

        @hl.require_approval(approvals=2)
        async def close_account(account: str) -> str:
            return f"closed {account}"

        results: list[str] = []

        async def call() -> None:
            results.append(await close_account("acme"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            [request] = await wait_for_pending(hl)
            reply_to = {mail["To"]: mail["Reply-To"] for mail in await inbox.wait(2)}
            for _ in range(2):
                counted = await post_mailgun(client, to=reply_to[ALICE], sender=ALICE, text="approve")
                assert counted.json() == {"status": "voted"}
            assert [v.by for v in (await hl.get(request.id)).votes] == [ALICE]
            told = (await inbox.wait(3))[2]  # the voter is told, in the thread
            assert told["To"] == ALICE and f"Your approval is counted: 1 of 2 approvals: {ALICE}." in text_of(
                told
            )
            decided = await post_mailgun(client, to=reply_to[BOB], sender=BOB, text="approve")
            assert decided.json() == {"status": "approved"}
        assert results == ["closed acme"]


async def test_votes_from_several_processes_at_once_count_once_each(store_url: str) -> None:
    # Three approvers, each voting twice at the same instant from their own CLI process,
    # while the call waits here: one decision, made of exactly the three, and one run.
    async with HumanLayer([], store=store_url, listen=None) as hl:
        runs: list[str] = []

        @hl.require_approval(approvals=3)
        async def rotate_root_keys() -> str:
            runs.append("rotated")
            return "rotated"

        async with anyio.create_task_group() as tg:
            tg.start_soon(rotate_root_keys)
            [request] = await wait_for_pending(hl)
            codes: list[int] = []

            async def vote(voter: str) -> None:
                code, _, _ = await run_cli("approve", request.id, "--by", voter, "--store", store_url)
                codes.append(code)

            async with anyio.create_task_group() as voters:
                for voter in ("ann", "ben", "cat") * 2:
                    voters.start_soon(vote, voter)
        decision = (await hl.get(request.id)).decision
        assert decision is not None and decision.status is Status.APPROVED
        assert sorted(v.by for v in decision.votes) == ["ann", "ben", "cat"]
        assert runs == ["rotated"]
        assert set(codes) <= {0, 1}  # a vote after the third is told who decided (exit 1)
        voted = [e for e in await hl.store.history(request_id=request.id) if e.event == "approval.voted"]
        assert sorted(e.fields["approvals"] for e in voted) == [1, 2, 3]


async def test_a_vote_cast_anywhere_shows_its_count_where_the_request_was_sent(
    slack: FakeSlack, tmp_path: Path
) -> None:
    # Cast through Python here and from a CLI process: the waiting process updates its message.
    url = f"sqlite:///{tmp_path / 'hl.db'}"
    channel = SlackChannel(
        bot_token=BOT_TOKEN, signing_secret=SECRET, channel="C0APPROVALS", base_url=slack.api_url
    )
    async with HumanLayer([channel], store=url, listen=None) as hl:

        @hl.require_approval(approvals=3)
        async def failover(region: str) -> str:
            return f"failed over {region}"

        async with anyio.create_task_group() as tg:
            tg.start_soon(failover, "eu-west-1")
            [request] = await wait_for_pending(hl)
            await slack.wait_calls("chat.postMessage")
            assert await hl.decide(request.id, True, by="ann") is None
            await slack.wait_for(lambda: shown(slack, "1 of 3 approvals: ann"))
            code, _, _ = await run_cli("approve", request.id, "--by", "ben", "--store", url)
            assert code == 0
            await slack.wait_for(lambda: shown(slack, "2 of 3 approvals: ann, ben"))
            assert await hl.decide(request.id, True, by="cat") is not None
        await slack.wait_for(
            lambda: [c for c in slack.received("chat.update") if "approved by cat" in c.data["text"]]
        )
        counts = [c for c in slack.received("chat.update") if "approvals:" in json.dumps(c.data["blocks"])]
        assert (
            len(counts) == 2
        )  # each count shown once, though the store also tells this process its own vote


def shown(slack: FakeSlack, text: str) -> list[Any]:
    """The message updates that show ``text``."""
    return [call for call in slack.received("chat.update") if text in json.dumps(call.data["blocks"])]
