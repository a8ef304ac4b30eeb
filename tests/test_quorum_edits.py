"""Edits on a request that needs several approvals: an edit starts the count again, every
channel shows the edited call, and an answer given on the call as it was before never counts."""

from __future__ import annotations

import anyio
import httpx
import pytest

from humanlayer_async import HumanLayer
from humanlayer_async.channels import WebChannel
from humanlayer_async.testing import wait_for_pending

from .conftest import ALICE, BOB, Inbox, make_channel, post_mailgun, text_of
from .test_console import Terminal

pytestmark = pytest.mark.anyio


async def test_the_terminal_shows_the_edit_and_refuses_an_answer_to_the_call_before_it() -> None:
    term = Terminal()
    terminal, output = term.channel, term.output
    async with HumanLayer([terminal], listen=None) as hl:

        @hl.require_approval(approvals=2, approvers=["alice", "bob", "carol"], editable=["amount"])
        async def wire(amount: int, iban: str) -> str:
            return f"wired {amount} to {iban}"

        results: list[str] = []

        async def call() -> None:
            results.append(await wire(9000, "DE00"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            [request] = await wait_for_pending(hl)
            await hl.decide(request.id, True, by="bob", edits={"amount": 4000})
            # Alice answers before the terminal has shown her the edit: her "y" was for 9000.
            await terminal.handle(f"y {request.short_id}")
            assert "not decided: the arguments of request" in output.getvalue()
            assert [v.by for v in (await hl.get(request.id)).votes] == ["bob"]
            with anyio.fail_after(5):
                while "was edited: the votes start again on this call" not in output.getvalue():
                    await anyio.sleep(0.01)
            shown = output.getvalue().split("was edited")[1]
            assert "amount=4000" in shown and "1 of 2 approvals: bob" in shown
            await terminal.handle(f"y {request.short_id}")  # now on the call she was shown
        assert results == ["wired 4000 to DE00"]
    term.close()


async def test_an_email_reply_to_the_call_before_an_edit_is_refused_and_told_why(inbox: Inbox) -> None:
    channel = make_channel(inbox)  # to alice@ and bob@company.com, replies through Mailgun
    async with (
        HumanLayer([channel], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):

        @hl.require_approval(approvals=2, editable=["amount"], on_reject="return")
        async def wire(amount: int) -> str:
            return f"wired {amount}"

        async with anyio.create_task_group() as tg:
            tg.start_soon(wire, 9000)
            [request] = await wait_for_pending(hl)
            reply_to = {mail["To"]: mail["Reply-To"] for mail in await inbox.wait(2)}
            await hl.decide(request.id, True, by=BOB, edits={"amount": 4000})
            refused = await post_mailgun(client, to=reply_to[ALICE], sender=ALICE, text="approve")
            assert refused.status_code == 409
            assert [v.by for v in (await hl.get(request.id)).votes] == [BOB]
            told = (await inbox.wait(3))[2]
            assert told["To"] == ALICE
            text = text_of(told)
            assert "edited after this mail was sent, so your answer was not counted" in text
            assert "amount=4000" in text
            await hl.decide(request.id, False, by=ALICE, comment="checked elsewhere")


async def test_the_web_console_decides_only_the_call_its_page_showed() -> None:
    keys = {"alice": "alice-key-0123456789", "bob": "bob-key-0123456789ab", "carol": "carol-key-0123456789"}
    web = WebChannel(users=keys)
    async with (
        HumanLayer([web], listen="127.0.0.1:0") as hl,
        httpx.AsyncClient(base_url=str(hl.url)) as client,
    ):

        @hl.require_approval(approvals=2, editable=["amount"], on_reject="return")
        async def wire(amount: int) -> str:
            return f"wired {amount}"

        def as_user(user: str) -> dict[str, str]:
            return {"authorization": f"Bearer {keys[user]}", "accept": "application/json"}

        results: list[str] = []

        async def call() -> None:
            results.append(await wire(9000))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            [request] = await wait_for_pending(hl)
            page = (await client.get(str(web.url), headers=as_user("carol"))).text
            shown = request.fingerprint
            assert f'name="seen" value="{shown}"' in page  # the form says which call it shows
            assert f'value="{request.id} {shown}"' in page  # and so does the batch checkbox

            edit = {"action": "approve", "edit.amount": "4000", "seen": shown}
            edited = await client.post(
                f"{web.url}/requests/{request.id}", data=edit, headers=as_user("alice")
            )
            assert edited.json()["status"] == "pending"  # counted, the count started again
            now = (await hl.get(request.id)).fingerprint

            stale = {"action": "approve", "seen": shown}
            refused = await client.post(
                f"{web.url}/requests/{request.id}", data=stale, headers=as_user("carol")
            )
            assert refused.status_code == 409 and "edited after this page showed it" in refused.text
            batch = {"action": "deny", "comment": "no", "id": [f"{request.id} {shown}"]}
            reported = await client.post(f"{web.url}/batch", data=batch, headers=as_user("carol"))
            [result] = reported.json()["results"]
            assert (
                result["status"] == "not_decidable"
                and "edited after this page showed it" in result["message"]
            )
            for forged in ("XYZ", shown.upper(), f"{shown}0"):
                bad = await client.post(
                    f"{web.url}/requests/{request.id}",
                    data={**stale, "seen": forged},
                    headers=as_user("carol"),
                )
                assert bad.status_code == 400
            assert [v.by for v in (await hl.get(request.id)).votes] == ["alice"]

            fresh = {"action": "approve", "seen": now}
            approved = await client.post(
                f"{web.url}/requests/{request.id}", data=fresh, headers=as_user("carol")
            )
            assert approved.json()["status"] == "approved"
        assert results == ["wired 4000"]
