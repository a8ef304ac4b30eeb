"""Edit, then approve: an approver changes editable arguments as they approve, the tool runs
with what they approved, and nothing else can be edited."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
import pytest

from humanlayer_async import (
    ArgumentsEdited,
    ConfigurationError,
    Decision,
    HumanLayer,
    HumanLayerError,
    InvalidEdit,
    Status,
    current_decision,
)
from humanlayer_async._render import describe_decision
from humanlayer_async.testing import wait_for_pending

from . import test_stores
from .conftest import ALICE, Inbox, make_channel, text_of
from .durable_helpers import run_cli

any_store_url = test_stores.any_store_url

pytestmark = pytest.mark.anyio


async def test_the_tool_runs_with_the_approved_edits_and_the_trail_has_both_values() -> None:
    async with HumanLayer([], listen=None) as hl:
        ran: list[tuple[str, float, str | None]] = []
        seen: list[Decision | None] = []

        @hl.require_approval(editable=["amount", "memo"])
        async def transfer(recipient: str, amount: float, memo: str | None = None) -> str:
            ran.append((recipient, amount, memo))
            seen.append(current_decision())
            return f"sent {amount} to {recipient}"

        async with anyio.create_task_group() as tg:
            results: list[str] = []

            async def call() -> None:
                results.append(await transfer("acme", 12000.0))

            tg.start_soon(call)
            [request] = await wait_for_pending(hl)
            assert request.editable == {
                "amount": {"type": "number"},
                "memo": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            }
            decision = await hl.decide(request.id, True, by="cfo", edits={"amount": 5000, "memo": "split"})
        assert ran == [("acme", 5000, "split")] and results == ["sent 5000 to acme"]
        assert decision is not None and decision.edits == {"amount": 5000, "memo": "split"}
        assert seen == [decision]
        stored = await hl.get(request.id)
        assert stored.kwargs == {"recipient": "acme", "amount": 5000, "memo": "split"}
        trail = {e.event: e.fields for e in await hl.store.history(request_id=request.id)}
        assert trail["approval.requested"]["kwargs"] == {"recipient": "acme", "amount": 12000.0, "memo": None}
        assert trail["approval.decided"]["edits"] == {"amount": 5000, "memo": "split"}
        assert "approved by cfo with amount=5000, memo='split' via api" in describe_decision(decision)


@pytest.mark.parametrize(
    ("edits", "argument", "problem"),
    [
        ({"recipient": "mallory"}, "recipient", "not an editable argument"),
        ({"nonexistent": 1}, "nonexistent", "not an editable argument"),
        ({"amount": "5000"}, "amount", "must be a number"),
        ({"amount": True}, "amount", "must be a number"),
        ({"currency": "BTC"}, "currency", "must be one of ['EUR', 'USD']"),
        ({"tags": ["a", 2]}, "tags", "item 1 must be a string"),
        ({"api_key": "sk-live-mine"}, "api_key", "masked"),
        ({"headers": {"Accept": "json"}}, "headers", "holds a masked value"),
        ({}, "", "at least one argument"),
    ],
)
async def test_an_invalid_edit_names_the_argument_and_decides_nothing(
    edits: dict[str, Any], argument: str, problem: str
) -> None:
    async with HumanLayer([], listen=None) as hl:

        @hl.require_approval(editable=True, on_reject="return")
        async def pay(
            amount: float,
            currency: Literal["EUR", "USD"] = "EUR",
            tags: list[str] | None = None,
            api_key: str = "",
            headers: dict[str, str] | None = None,
        ) -> str:
            return "paid"

        async with anyio.create_task_group() as tg:
            tg.start_soon(
                pay, 10.0, "EUR", None, "sk-live-secret", {"Authorization": "Bearer x", "Accept": "xml"}
            )
            [request] = await wait_for_pending(hl)
            with pytest.raises(InvalidEdit) as info:
                await hl.decide(request.id, True, by="cfo", edits=edits)
            assert info.value.argument == argument and problem in str(info.value)
            assert isinstance(info.value, ValueError) and isinstance(info.value, HumanLayerError)
            assert (await hl.get(request.id)).status is Status.PENDING
            with pytest.raises(InvalidEdit, match="not a denial"):
                await hl.decide(request.id, False, by="cfo", edits={"amount": 1.0})
            await hl.decide(request.id, False, by="cfo")


@dataclass
class Invoice:
    number: str


def test_editable_arguments_need_a_json_type_checked_at_decoration() -> None:
    hl = HumanLayer([], listen=None)

    def unhinted(amount):  # type: ignore[no-untyped-def]
        return amount

    def invoice(invoice: Invoice) -> None: ...

    def positional(amount: int, /) -> None: ...

    def spread(*amounts: int) -> None: ...

    def fine(amount: int, **extra: str) -> None: ...

    for tool, match in (
        (unhinted, "'amount' \\(no type hint\\)"),
        (invoice, "'invoice'"),
        (positional, "positional-only"),
        (spread, "\\*args"),
    ):
        with pytest.raises(ConfigurationError, match=match):
            hl.require_approval(editable=True)(tool)
    with pytest.raises(ConfigurationError, match="no parameter"):
        hl.require_approval(editable=["amonut"])(fine)
    with pytest.raises(ConfigurationError, match="list of argument names"):
        hl.require_approval(editable="amount")(fine)
    hl.require_approval(editable=True)(fine)  # **extra is not offered for editing, and is no obstacle


async def test_a_sync_tool_and_its_spread_keywords_run_edited() -> None:
    async with HumanLayer([], listen=None) as hl:
        ran: list[tuple[int, dict[str, Any]]] = []

        @hl.require_approval(editable=["count"])
        def scale(service: str, count: int, **labels: str) -> int:
            ran.append((count, labels))
            return count

        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, lambda: scale("api", 40, team="core"))
            [request] = await wait_for_pending(hl)
            assert request.kwargs == {"service": "api", "count": 40, "team": "core"}
            await hl.decide(request.id, True, by="ops", edits={"count": 12})
        assert ran == [(12, {"team": "core"})]


async def test_an_edit_on_a_quorum_starts_the_count_again_and_stale_answers_do_not_count(
    any_store_url: str | None,
) -> None:
    # Alice approved 9000; Bob edits to 4000: Alice's approval was for another call, so the
    # count starts again, and an answer given on the 9000 version (its fingerprint) is refused.
    async with HumanLayer([], store=any_store_url, listen=None) as hl:

        @hl.require_approval(approvals=2, approvers=["alice", "bob", "carol"], editable=["amount"])
        async def wire(amount: int) -> int:
            return amount

        async with anyio.create_task_group() as tg:
            results: list[int] = []

            async def call() -> None:
                results.append(await wire(9000))

            tg.start_soon(call)
            [request] = await wait_for_pending(hl)
            assert request.takes_edits
            shown = request.fingerprint
            assert await hl.decide(request.id, True, by="alice", seen=shown) is None
            assert await hl.decide(request.id, True, by="bob", edits={"amount": 4000}, seen=shown) is None
            edited = await hl.get(request.id)
            assert edited.kwargs["amount"] == 4000 and edited.fingerprint != shown
            assert [(v.by, v.edits) for v in edited.votes] == [("bob", {"amount": 4000})]
            for stale in (True, False):  # neither an approval nor a veto of the 9000 call counts
                with pytest.raises(ArgumentsEdited, match="edited after you saw them"):
                    await hl.decide(request.id, stale, by="carol", seen=shown)
            assert [v.by for v in (await hl.get(request.id)).votes] == ["bob"]
            decision = await hl.decide(request.id, True, by="alice", seen=edited.fingerprint)
            assert decision is not None and decision.edits == {"amount": 4000}
            assert [v.by for v in decision.votes] == ["bob", "alice"]
        assert results == [4000]
        entries = await hl.store.history(request_id=request.id)
        assert [e.fields.get("edits") for e in entries if e.event == "approval.voted"] == [
            None,
            {"amount": 4000},
            None,
        ]


async def test_the_cli_approves_with_edits_typed_as_the_argument_wants(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hl.db'}"
    async with HumanLayer([], store=url, listen=None) as hl:

        @hl.require_approval(editable=True)
        async def refund(order: str, amount: float) -> str:
            return f"refunded {amount} on {order}"

        async with anyio.create_task_group() as tg:
            results: list[str] = []

            async def call() -> None:
                results.append(await refund("A-17", 250.0))

            tg.start_soon(call)
            [request] = await wait_for_pending(hl)
            code, _, err = await run_cli(
                "approve", request.id, "--by", "ann", "--set", "amount=lots", "--store", url
            )
            assert code == 1 and "'amount'" in err and "must be a number" in err
            code, out, _ = await run_cli(
                "approve",
                request.id,
                "--by",
                "ann",
                "--set",
                "order=1234",
                "--set",
                "amount=99.5",
                "--json",
                "--store",
                url,
            )
            assert code == 0 and json.loads(out)["edits"] == {"order": "1234", "amount": 99.5}
        assert results == ["refunded 99.5 on 1234"]  # "1234" stayed text: the argument is a str


async def test_an_email_request_says_where_its_editable_arguments_can_be_changed(inbox: Inbox) -> None:
    async with HumanLayer([make_channel(inbox, to=[ALICE])], listen="127.0.0.1:0") as hl:

        @hl.require_approval(editable=["amount"])
        async def transfer(recipient: str, amount: float) -> None: ...

        async with anyio.create_task_group() as tg:
            tg.start_soon(transfer, "acme", 10.0)
            [request] = await wait_for_pending(hl)
            [mail] = await inbox.wait(1)
            assert "To change amount before approving, approve in the web console or with" in text_of(mail)
            assert f"humanlayer-async approve {request.id} --set <name>=<value>." in text_of(mail)
            await hl.decide(request.id, True, by=ALICE)
