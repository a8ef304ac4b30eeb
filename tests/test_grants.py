"""Time-boxed grants: calls of one tool that run without asking, for a while, as an approver
allowed; never beyond their tool, their uses, their expiry, or for their own granter."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import anyio
import pytest

from humanlayer_async import (
    ApprovalDenied,
    ConfigurationError,
    Decision,
    Grant,
    HumanLayer,
    HumanLayerError,
    NotAnApprover,
    Status,
    UnknownGrant,
    current_decision,
)
from humanlayer_async.testing import wait_for_pending

pytestmark = pytest.mark.anyio

HOUR = timedelta(hours=1)
PATIENCE = 10.0


async def runs_at_once(call: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """The call's result, when it runs without anyone asked (fails the test if it waits)."""
    with anyio.fail_after(PATIENCE):
        return await call()


async def waits(hl: HumanLayer, call: Callable[[], Coroutine[Any, Any, Any]]) -> None:
    """Check the call asks a human: it waits for a decision, then is denied (cleaning up)."""
    async with anyio.create_task_group() as tg:
        outcome: list[Any] = []

        async def run() -> None:
            outcome.append(await call())

        tg.start_soon(run)
        [request] = await wait_for_pending(hl)
        await hl.decide(request.id, False, by="alice", comment="test")
    assert "denied" in str(outcome[0])


def payments(hl: HumanLayer, **options: Any) -> Any:
    options.setdefault("approvers", ["alice", "bob", "carol"])

    @hl.require_approval(on_reject="return", **options)
    async def pay(amount: int, recipient: str, api_key: str = "sk-live") -> dict[str, Any]:
        decision = current_decision()
        assert decision is not None
        return {
            "paid": amount,
            "to": recipient,
            "via": decision.via,
            "grant": decision.grant,
            "by": decision.by,
        }

    return pay


async def test_a_grant_lets_matching_calls_run_until_it_is_used_up() -> None:
    async with HumanLayer([], listen=None) as hl:
        pay = payments(hl)
        grant = await hl.grant(pay, by="alice", where={"recipient": "acme"}, expires_in=HOUR, max_uses=2)
        assert isinstance(grant, Grant)
        assert grant.function == f"{__name__}.payments.<locals>.pay"
        assert (grant.by, grant.max_uses, grant.uses, grant.where) == (
            ("alice",),
            2,
            0,
            {"recipient": "acme"},
        )

        for amount in (10, 20):
            result = await runs_at_once(functools.partial(pay, amount, "acme"))
            assert result == {"paid": amount, "to": "acme", "via": "grant", "grant": grant.id, "by": "alice"}
        await waits(hl, lambda: pay(30, "acme"))  # used up
        await waits(hl, lambda: pay(10, "evil"))  # not covered
        [used] = await hl.grants(active=False)
        assert used.uses == 2 and not used.active(used.created_at)
        assert await hl.grants() == []

        granted = [e for e in hl.store.audit_log if e.fields.get("via") == "grant"]  # type: ignore[attr-defined]
        assert len(granted) == 2
        assert all(e.fields["grant"] == grant.id and e.fields["by"] == "alice" for e in granted)
        assert [e.event for e in await hl.store.history(request_id=grant.id)] == ["grant.given"]


async def test_values_match_by_their_json_form_and_only_their_tool() -> None:
    async with HumanLayer([], listen=None) as hl:
        pay = payments(hl)
        refund = payments(hl)  # the same code, another tool: same qualname though
        await hl.grant(pay, by="alice", where={"amount": 1}, expires_in=HOUR)
        assert (await runs_at_once(lambda: pay(1, "x")))["via"] == "grant"
        await waits(hl, lambda: pay(True, "x"))  # True is not 1
        await waits(hl, lambda: pay(1.0, "x"))  # nor is 1.0  # type: ignore[arg-type]

        @hl.require_approval(approvers=["alice"], on_reject="return")
        async def other(amount: int) -> int:
            return amount

        await waits(hl, lambda: other(1))  # a grant never widens beyond its tool
        assert refund is not pay


async def test_who_may_grant_and_what_a_grant_may_name() -> None:
    async with HumanLayer([], listen=None) as hl:
        pay = payments(hl)
        with pytest.raises(NotAnApprover, match="not an approver for grant"):
            await hl.grant(pay, by="mallory", expires_in=HOUR)

        async def plain(amount: int) -> int:
            return amount

        with pytest.raises(ConfigurationError, match="gated by require_approval"):
            await hl.grant(plain, by="alice", expires_in=HOUR)
        with pytest.raises(ConfigurationError, match="'amont', which is not an argument of pay"):
            await hl.grant(pay, by="alice", where={"amont": 1}, expires_in=HOUR)
        with pytest.raises(ConfigurationError, match="where value 'amount'"):
            await hl.grant(pay, by="alice", where={"amount": object()}, expires_in=HOUR)
        for wrong in (0, -1, True, 1.5):
            with pytest.raises(ConfigurationError, match="max_uses"):
                await hl.grant(pay, by="alice", expires_in=HOUR, max_uses=wrong)  # type: ignore[arg-type]
        for bad in (0, -HOUR, "1h"):
            with pytest.raises(ConfigurationError, match="expires_in"):
                await hl.grant(pay, by="alice", expires_in=bad)  # type: ignore[arg-type]
        assert await hl.grants(active=False) == []


async def test_a_grant_never_covers_a_call_made_for_its_granter() -> None:
    async with HumanLayer([], listen=None) as hl:
        pay = payments(hl, approvers=["alice@example.com", "bob"])
        await hl.grant(pay, by="Alice@Example.com", expires_in=HOUR)
        with hl.on_behalf_of("alice@example.com"):
            await waits_for(hl, lambda: pay(5, "alice"), by="bob")
        with hl.on_behalf_of("dave"):
            assert (await runs_at_once(lambda: pay(5, "dave")))["via"] == "grant"


async def waits_for(hl: HumanLayer, call: Callable[[], Coroutine[Any, Any, Any]], *, by: str) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        [request] = await wait_for_pending(hl)
        await hl.decide(request.id, False, by=by)


async def test_a_grant_expires_and_can_be_revoked() -> None:
    async with HumanLayer([], listen=None) as hl:
        pay = payments(hl)
        short = await hl.grant(pay, by="alice", expires_in=0.2)
        await anyio.sleep(0.3)
        await waits(hl, lambda: pay(1, "x"))
        assert short not in await hl.grants()

        grant = await hl.grant(pay, by="alice", expires_in=HOUR)
        with pytest.raises(NotAnApprover):
            await hl.revoke_grant(grant.id, by="mallory")
        with pytest.raises(UnknownGrant):
            await hl.revoke_grant("nope", by="alice")
        revoked = await hl.revoke_grant(grant.id, by="bob")
        assert revoked.revoked_by == "bob" and revoked.revoked_at is not None
        assert (await hl.revoke_grant(grant.id, by="carol")).revoked_by == "bob"  # the first stands
        await waits(hl, lambda: pay(1, "x"))
        with pytest.raises(HumanLayerError, match="cannot be confirmed"):
            await hl.confirm_grant(grant.id, by="carol")


async def test_a_grant_on_a_quorum_tool_needs_as_many_approvers() -> None:
    async with HumanLayer([], listen=None) as hl:
        pay = payments(hl, approvals=2)
        grant = await hl.grant(pay, by="alice", expires_in=HOUR)
        assert not grant.confirmed and grant.approvals == 2
        assert [g.id for g in await hl.grants()] == [grant.id]  # listed, waiting for a second
        await waits_two(hl, lambda: pay(1, "x"))
        assert not (await hl.confirm_grant(grant.id, by="alice")).confirmed  # the same person
        with pytest.raises(NotAnApprover):
            await hl.confirm_grant(grant.id, by="mallory")
        confirmed = await hl.confirm_grant(grant.id, by="bob")
        assert confirmed.confirmed and confirmed.by == ("alice", "bob")
        assert (await runs_at_once(lambda: pay(1, "x")))["via"] == "grant"
        events = [e.event for e in await hl.store.history(request_id=grant.id)]
        assert events == ["grant.given", "grant.confirmed"]


async def waits_two(hl: HumanLayer, call: Callable[[], Coroutine[Any, Any, Any]]) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        [request] = await wait_for_pending(hl)
        await hl.decide(request.id, False, by="carol")


async def test_approving_with_a_grant_allows_the_same_call_for_a_while() -> None:
    async with HumanLayer([], listen=None) as hl:
        pay = payments(hl, editable=["amount"])
        async with anyio.create_task_group() as tg:
            results: list[Any] = []

            async def call() -> None:
                results.append(await pay(100, "acme", api_key="sk-secret"))

            tg.start_soon(call)
            [request] = await wait_for_pending(hl)
            decision = await hl.decide(request.id, True, by="alice", edits={"amount": 90}, grant=HOUR)
            assert isinstance(decision, Decision) and decision.edits == {"amount": 90}
        assert results[0]["via"] == "api"
        [grant] = await hl.grants()
        # Every unmasked argument, as edited (what ran); the masked key is left out.
        assert grant.where == {"amount": 90, "recipient": "acme"}
        assert grant.by == ("alice",) and grant.function == request.tool
        assert (await runs_at_once(lambda: pay(90, "acme", api_key="another")))["via"] == "grant"
        await waits(hl, lambda: pay(100, "acme"))


async def test_a_grant_goes_with_an_approval_only() -> None:
    async with HumanLayer([], listen=None) as hl:
        pay = payments(hl)
        async with anyio.create_task_group() as tg:
            tg.start_soon(pay, 1, "x")
            [request] = await wait_for_pending(hl)
            with pytest.raises(HumanLayerError, match="not a denial"):
                await hl.decide(request.id, False, by="alice", grant=HOUR)
            with pytest.raises(ConfigurationError, match="grant"):
                await hl.decide(request.id, True, by="alice", grant=-HOUR)
            with pytest.raises(NotAnApprover):
                await hl.decide(request.id, True, by="mallory", grant=HOUR)
            assert (await hl.get(request.id)).status is Status.PENDING
            await hl.decide(request.id, False, by="alice")
        assert await hl.grants(active=False) == []

        ask = hl.human_as_tool()

        async def ask_one() -> None:
            with pytest.raises(ApprovalDenied):
                await ask("which region?")

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask_one)
            [question] = await wait_for_pending(hl)
            with pytest.raises(HumanLayerError):
                await hl.decide(question.id, True, by="alice", grant=HOUR)
            await hl.cancel(question.id, by="alice")


async def test_on_a_quorum_every_approval_must_ask_for_the_grant() -> None:
    async with HumanLayer([], listen=None) as hl:
        pay = payments(hl, approvals=2)
        for second_grant, expected in ((None, 0), (timedelta(minutes=30), 1)):
            async with anyio.create_task_group() as tg:
                tg.start_soon(pay, 7, "acme")
                [request] = await wait_for_pending(hl)
                assert await hl.decide(request.id, True, by="alice", grant=HOUR) is None
                decision = await hl.decide(request.id, True, by="bob", grant=second_grant)
                assert decision is not None and decision.status is Status.APPROVED
            assert len(await hl.grants()) == expected
        [grant] = await hl.grants()
        assert grant.by == ("alice", "bob") and grant.confirmed
        assert grant.expires_at - grant.created_at == timedelta(minutes=30)  # the shortest asked
        assert (await runs_at_once(lambda: pay(7, "acme")))["via"] == "grant"


async def test_grants_hold_across_processes_and_max_uses_is_never_exceeded(store_url: str) -> None:
    async with (
        HumanLayer([], store=store_url, listen=None) as first,
        HumanLayer([], store=store_url, listen=None) as second,
    ):
        tools = [payments(hl, timeout=1.0) for hl in (first, second)]
        grant = await first.grant(tools[0], by="alice", expires_in=HOUR, max_uses=3)
        with anyio.fail_after(PATIENCE):  # the second process hears of it
            while grant.function not in second._engine._granted:
                await anyio.sleep(0.02)
        results: list[Any] = []

        async def call(index: int) -> None:
            results.append(await tools[index % 2](index, "acme"))

        async with anyio.create_task_group() as tg:
            for index in range(10):
                tg.start_soon(call, index)
        granted = [r for r in results if isinstance(r, dict)]
        assert len(granted) == 3
        assert {r["via"] for r in granted} == {"grant"}
        assert all("expired without an answer" in r for r in results if not isinstance(r, dict))
        [used] = await second.grants(active=False)
        assert used.uses == 3

        revoked = await second.revoke_grant(grant.id, by="carol")
        assert revoked.revoked_by == "carol"
        assert await first.grants() == []
