"""HumanLayer's API: decide, respond, cancel, pending, lifecycle, configuration, channels failing."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from structlog.testing import capture_logs

from humanlayer_async import (
    ApprovalDenied,
    ApprovalRequest,
    ApprovalTimeout,
    ChannelError,
    ConfigurationError,
    Decision,
    HumanLayer,
    HumanLayerError,
    NotAnApprover,
    Status,
    StoreError,
    UnknownRequest,
)
from humanlayer_async.channels import BaseChannel
from humanlayer_async.stores import MemoryStore, PostgresStore, SQLiteStore, StoreEvent
from humanlayer_async.testing import AutoChannel, wait_for_pending

pytestmark = pytest.mark.anyio


class BrokenChannel(BaseChannel):
    name = "broken"

    def __init__(self) -> None:
        self.attempts = 0

    async def send(self, request: ApprovalRequest) -> str | None:
        self.attempts += 1
        raise ChannelError("smtp.example.com refused the connection")


async def test_first_decision_wins_and_later_ones_get_it_back() -> None:
    async with HumanLayer([], listen=None) as hl:

        @hl.require_approval()
        async def tool() -> str:
            return "ran"

        async with anyio.create_task_group() as tg:
            results: list[str] = []

            async def call() -> None:
                results.append(await tool())

            tg.start_soon(call)
            [request] = await wait_for_pending(hl, within=5)
            first = await hl.decide(request.id, True, by="alice", via="slack")
            second = await hl.decide(request.id, False, by="bob", comment="no!", via="email")
        assert second == first
        assert second is not None and second.by == "alice" and second.via == "slack" and second.approved
        assert results == ["ran"]


async def test_decide_unknown_id_names_it() -> None:
    async with HumanLayer([], listen=None) as hl:
        with pytest.raises(UnknownRequest, match="nope"):
            await hl.decide("nope", True, by="alice")
        with pytest.raises(UnknownRequest):
            await hl.get("nope")


async def test_non_approver_decides_nothing() -> None:
    async with HumanLayer([], listen=None) as hl:

        @hl.require_approval(approvers=["U_CFO"])
        async def pay() -> str:
            return "paid"

        async with anyio.create_task_group() as tg:
            results: list[str] = []

            async def call() -> None:
                results.append(await pay())

            tg.start_soon(call)
            [request] = await wait_for_pending(hl, within=5)
            assert request.approvers == ("U_CFO",)
            with pytest.raises(NotAnApprover, match="U_INTERN"):
                await hl.decide(request.id, True, by="U_INTERN")
            assert (await hl.get(request.id)).status is Status.PENDING
            await hl.decide(request.id, True, by="U_CFO")
        assert results == ["paid"]


async def test_non_approver_cannot_cancel_but_the_waiting_program_can_withdraw() -> None:
    async with HumanLayer([], listen=None) as hl:

        @hl.require_approval(approvers=["U_CFO"])
        async def pay() -> str:
            return "paid"

        async with anyio.create_task_group() as tg:
            refused: list[ApprovalDenied] = []

            async def call() -> None:
                try:
                    await pay()
                except ApprovalDenied as exc:
                    refused.append(exc)

            tg.start_soon(call)
            [request] = await wait_for_pending(hl, within=5)
            with pytest.raises(NotAnApprover, match="U_INTERN"):
                await hl.cancel(request.id, by="U_INTERN", reason="I say so")
            assert (await hl.get(request.id)).status is Status.PENDING
            await hl.cancel(request.id, by="U_CFO", reason="obsolete")
        [denied] = refused
        assert denied.decision.status is Status.CANCELLED and denied.decision.by == "U_CFO"

        # The program withdrawing its own call is no human decision: no approver needed.
        async with anyio.create_task_group() as tg:
            tg.start_soon(pay)
            [request] = await wait_for_pending(hl, within=5)
            tg.cancel_scope.cancel()
        withdrawn = await hl.get(request.id)
        assert withdrawn.status is Status.CANCELLED and withdrawn.decision is not None
        assert withdrawn.decision.via == "caller"


async def test_human_as_tool_returns_the_answer() -> None:
    async with HumanLayer([], listen=None) as hl:
        contact_human = hl.human_as_tool()
        assert contact_human.__name__ == "contact_human"
        assert contact_human.__doc__ and "human" in contact_human.__doc__
        async with anyio.create_task_group() as tg:
            answers: list[str] = []

            async def ask() -> None:
                answers.append(await contact_human("Which vendor should I pay?"))

            tg.start_soon(ask)
            [question] = await wait_for_pending(hl, within=5)
            assert question.kind == "question"
            assert question.message == "Which vendor should I pay?"
            assert await hl.pending(kind="approval") == []
            decision = await hl.respond(question.id, "ACME, not Globex", by="alice")
        assert answers == ["ACME, not Globex"]
        assert decision.answer == "ACME, not Globex" and decision.status is Status.APPROVED


async def test_respond_to_an_approval_is_refused() -> None:
    async with HumanLayer([], listen=None) as hl:

        @hl.require_approval(timeout=5)
        async def tool() -> None: ...

        async with anyio.create_task_group() as tg:
            tg.start_soon(tool)
            [request] = await wait_for_pending(hl, within=5)
            with pytest.raises(HumanLayerError, match="use decide"):
                await hl.respond(request.id, "sure", by="alice")
            await hl.decide(request.id, True, by="alice")


async def test_unanswered_question_times_out_and_declined_one_is_denied() -> None:
    async with HumanLayer([AutoChannel(lambda r: False)], listen=None) as hl:
        with pytest.raises(ApprovalDenied) as denied:
            await hl.human_as_tool()("ok?")
        assert denied.value.decision.status is Status.DENIED
        with pytest.raises(ApprovalTimeout):
            await hl.human_as_tool(channels=[], timeout=0.05)("anyone?")


async def test_every_channel_failing_fails_closed_with_channel_error() -> None:
    broken = BrokenChannel()
    ran = False
    async with HumanLayer([broken], listen=None) as hl:

        @hl.require_approval()
        async def transfer() -> None:
            nonlocal ran
            ran = True

        with pytest.raises(ChannelError, match="refused the connection"):
            await transfer()
        assert not ran
        assert broken.attempts == 1
        [request] = [entry for entry in hl.store.audit_log if entry.event == "approval.failed"]  # type: ignore[attr-defined]
        assert (await hl.get(request.request_id)).status is Status.FAILED
        assert await hl.pending() == []


async def test_channel_error_is_raised_even_with_on_reject_return() -> None:
    async with HumanLayer([BrokenChannel()], listen=None, on_reject="return") as hl:

        @hl.require_approval()
        async def tool() -> str:
            return "ran"

        with pytest.raises(ChannelError):
            await tool()


async def test_one_channel_failing_is_enough_to_survive() -> None:
    auto = AutoChannel(lambda r: True)
    async with HumanLayer([BrokenChannel(), auto], listen=None) as hl:

        @hl.require_approval()
        async def tool() -> str:
            return "ran"

        assert await tool() == "ran"
    assert len(auto.sent) == 1


async def test_per_tool_channels_and_approvers_are_used() -> None:
    default = AutoChannel(lambda r: False, by="default")
    special = AutoChannel(lambda r: True, by="cfo")
    async with HumanLayer([default], listen=None) as hl:

        @hl.require_approval(channels=[special], approvers="cfo")
        async def pay() -> str:
            return "paid"

        assert await pay() == "paid"
    assert default.sent == [] and len(special.sent) == 1
    assert special.updated[0].status is Status.APPROVED


async def test_gated_calls_work_without_async_with_and_aclose_ends_them() -> None:
    hl = HumanLayer([AutoChannel()], listen=None)

    @hl.require_approval()
    async def tool() -> str:
        return "ran"

    assert await tool() == "ran"
    assert "running" in repr(hl)
    assert [t for t in asyncio.all_tasks() if t.get_name() == "humanlayer-runtime"]
    await hl.aclose()
    assert "closed" in repr(hl)
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "humanlayer-runtime"]
    with pytest.raises(HumanLayerError, match="closed"):
        await tool()


async def test_aclose_fails_calls_still_waiting() -> None:
    hl = HumanLayer([], listen=None)

    @hl.require_approval()
    async def tool() -> None: ...

    errors: list[BaseException] = []

    async def call() -> None:
        try:
            await tool()
        except HumanLayerError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        [request] = await wait_for_pending(hl, within=5)
        await hl.aclose()
    assert len(errors) == 1 and "closed" in str(errors[0])
    assert (await hl.store.get(request.id)).status is Status.CANCELLED


class _SlowToDeliver(BaseChannel):
    """A channel still delivering (retrying, say) when it is told to stop."""

    name = "slow"

    def __init__(self) -> None:
        self.sending = anyio.Event()

    async def send(self, request: ApprovalRequest) -> str | None:
        self.sending.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


async def test_closing_while_a_call_is_still_being_delivered_leaves_no_unretrieved_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = _SlowToDeliver()
    hl = HumanLayer([channel], listen=None)

    @hl.require_approval()
    async def tool() -> None: ...

    async with anyio.create_task_group() as tg:
        tg.start_soon(tool)
        await channel.sending.wait()
        await hl.aclose()  # the call is still in its channel's send(): it never awaited its future
        tg.cancel_scope.cancel()  # and then its caller gives up
    gc.collect()
    await anyio.lowlevel.checkpoint()  # the loop reports what the collector found
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_one_humanlayer_in_two_event_loops_is_a_clear_error() -> None:
    hl = HumanLayer([AutoChannel()], listen=None)

    @hl.require_approval()
    async def tool() -> str:
        return "ran"

    async def first() -> None:
        assert await tool() == "ran"

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(first())
        with pytest.raises(ConfigurationError, match="event loop"):
            asyncio.run(tool())
        loop.run_until_complete(hl.aclose())
    finally:
        loop.close()


def test_blocking_bridge_runs_gated_calls_from_sync_code() -> None:
    hl = HumanLayer([AutoChannel(lambda r: r.kwargs["amount"] < 5000)], listen=None)
    caller = threading.get_ident()
    loop_threads: list[int] = []

    @hl.require_approval()
    async def pay(amount: int) -> str:
        loop_threads.append(threading.get_ident())
        return f"paid {amount}"

    pay_sync = hl.blocking(pay)
    try:
        assert pay_sync(100) == "paid 100"
        with pytest.raises(ApprovalDenied):
            pay_sync(9000)
    finally:
        hl.close()
    assert loop_threads and loop_threads[0] != caller


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"timeout": timedelta(seconds=-1)}, "timeout"),
        ({"listen": "8787"}, "listen"),
        ({"listen": "127.0.0.1:99999"}, "listen"),
        ({"on_reject": "ignore"}, "on_reject"),
        ({"store": object()}, "Store"),
        ({"listen": 8787}, "listen"),  # an int, not "host:port"
        ({"timeout": "1h"}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"render": "mask"}, "render"),
    ],
)
def test_bad_configuration_is_refused_at_construction(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        HumanLayer([], **kwargs)  # type: ignore[arg-type]


def test_a_channel_that_is_not_one_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="not a Channel"):
        HumanLayer([object()])  # type: ignore[list-item]
    hl = HumanLayer([], listen=None)
    with pytest.raises(ConfigurationError, match="timeout"):
        hl.require_approval(timeout=-5)


def test_default_channels_without_a_terminal_are_none(monkeypatch: pytest.MonkeyPatch) -> None:
    class NotATty:
        def isatty(self) -> bool:
            return False

    monkeypatch.setattr("sys.stdin", NotATty())
    assert HumanLayer(listen=None).channels == ()


async def test_pending_filters_by_kind_and_run() -> None:
    async with HumanLayer([], listen=None, run_id="invoice-42") as hl:

        @hl.require_approval()
        async def tool() -> None: ...

        async with anyio.create_task_group() as tg:
            tg.start_soon(tool)
            tg.start_soon(hl.human_as_tool(), "hello?")
            requests = await wait_for_pending(hl, 2, within=5)
            assert {r.kind for r in requests} == {"approval", "question"}
            assert len(await hl.pending(run_id="invoice-42")) == 2
            assert await hl.pending(run_id="other") == []
            [question] = await hl.pending(kind="question")
            assert question.run_id == "invoice-42"
            tg.cancel_scope.cancel()


async def test_memory_store_drops_decided_requests_after_retention() -> None:
    store = MemoryStore(retention=0.0)
    async with HumanLayer([AutoChannel()], store=store, listen=None) as hl:

        @hl.require_approval()
        async def tool() -> str:
            return "ran"

        for _ in range(3):
            assert await tool() == "ran"
        assert len(store) <= 1  # each decision prunes the ones before it


def test_repr_shows_no_secrets() -> None:
    hl = HumanLayer([AutoChannel(by="alice")], listen=None)
    assert repr(hl) == "HumanLayer(channels=[auto], store=MemoryStore(requests=0), timeout=3600.0, created)"


class SlowUpdateChannel(BaseChannel):
    """Delivers at once; takes a while to update what it delivered."""

    name = "slow"

    def __init__(self) -> None:
        self.updated: list[Status] = []

    async def send(self, request: ApprovalRequest) -> str | None:
        return request.id

    async def update(self, request: ApprovalRequest, ref: str | None) -> None:
        await anyio.sleep(0.2)
        self.updated.append(request.status)


async def test_aclose_lets_channel_updates_in_flight_finish() -> None:
    channel = SlowUpdateChannel()
    hl = HumanLayer([channel], listen=None)

    @hl.require_approval()
    async def tool() -> str:
        return "ran"

    async def waiter() -> None:
        with pytest.raises(HumanLayerError, match="closed"):
            await tool()

    async with anyio.create_task_group() as tg:
        tg.start_soon(tool)
        tg.start_soon(waiter)
        first, _still_waiting = await wait_for_pending(hl, 2, within=5)
        await hl.decide(first.id, True, by="alice")
        await anyio.sleep(0.01)  # the approved call resumes and schedules its update
        await hl.aclose()  # the second is still waiting: it is cancelled, and told
    assert sorted(channel.updated) == sorted([Status.APPROVED, Status.CANCELLED])


class FlakyWatchStore(MemoryStore):
    """A memory store whose event stream fails once, then reports decisions written "elsewhere"."""

    def __init__(self) -> None:
        super().__init__()
        self.watches = 0
        self.outside: anyio.abc.ObjectReceiveStream[str] | None = None

    async def watch(self) -> AsyncIterator[StoreEvent]:
        self.watches += 1
        if self.watches == 1:
            raise StoreError("connection to the database lost")
        assert self.outside is not None
        async for request_id in self.outside:
            yield StoreEvent("decided", request_id)


async def decided_elsewhere(store: FlakyWatchStore, failing_reads: int = 0) -> list[str]:
    """A gated call waits; another process decides it (the store changes behind our back and
    says so); what the call returned. ``failing_reads``: the store's reads fail that often first."""
    send, receive = anyio.create_memory_object_stream[str](10)
    store.outside = receive
    async with send, receive, HumanLayer([], store=store, listen=None) as hl:

        @hl.require_approval()
        async def tool() -> str:
            return "ran"

        async with anyio.create_task_group() as tg:
            results: list[str] = []

            async def call() -> None:
                results.append(await tool())

            tg.start_soon(call)
            [request] = await wait_for_pending(hl, within=5)
            decision = Decision(request.id, True, Status.APPROVED, "bob", "cli", None, datetime.now(UTC))
            await MemoryStore.decide(store, decision)
            if isinstance(store, FailingReadStore):
                store.failing = failing_reads
            with anyio.fail_after(10):
                await send.send(request.id)
                while not results:
                    await anyio.sleep(0.01)
    return results


async def test_a_failing_store_stream_is_followed_again_and_still_wakes_waiters() -> None:
    store = FlakyWatchStore()
    with capture_logs() as logs:
        assert await decided_elsewhere(store) == ["ran"]
    assert store.watches == 2
    assert [e["event"] for e in logs].count("humanlayer.store_follow_failed") == 1


class FailingReadStore(FlakyWatchStore):
    """Its event stream works; its reads fail ``failing`` times first (a database gone for a while)."""

    def __init__(self) -> None:
        super().__init__()
        self.watches = 1  # (no failing stream: straight to the decisions from "elsewhere")
        self.failing = 0

    async def get(self, request_id: str) -> ApprovalRequest:
        if self.failing:
            self.failing -= 1
            raise StoreError("connection to the database lost")
        return await super().get(request_id)


async def test_a_decision_whose_read_fails_is_read_again_and_still_wakes_its_waiter() -> None:
    store = FailingReadStore()
    with capture_logs() as logs:
        # The follower's read fails, and its first retry too.
        assert await decided_elsewhere(store, failing_reads=2) == ["ran"]
    assert store.failing == 0
    assert [e["event"] for e in logs].count("humanlayer.read_failed") == 2


async def test_a_store_url_names_the_store_as_the_cli_does(
    tmp_path: Path, pg_dsn: str, pg_schema: str
) -> None:
    sqlite_hl = HumanLayer([], store=f"sqlite:///{tmp_path / 'approvals.db'}", listen=None)
    assert isinstance(sqlite_hl.store, SQLiteStore)
    postgres_hl = HumanLayer([], store=f"{pg_dsn}?schema={pg_schema}", listen=None)
    assert isinstance(postgres_hl.store, PostgresStore) and postgres_hl.store.schema == pg_schema
    for hl in (sqlite_hl, postgres_hl):
        async with hl:

            @hl.require_approval()
            async def tool() -> str:
                return "ran"

            async with anyio.create_task_group() as tg:
                tg.start_soon(tool)
                [request] = await wait_for_pending(hl, within=5)
                await hl.decide(request.id, True, by="alice")
            assert (await hl.get(request.id)).status is Status.APPROVED
    with pytest.raises(ConfigurationError, match="unsupported store URL"):
        HumanLayer([], store="redis://127.0.0.1:6379", listen=None)


async def test_whoever_a_call_acts_for_never_decides_it_and_concurrent_turns_keep_their_own(
    tmp_path: Path,
) -> None:
    async with HumanLayer([], store=SQLiteStore(tmp_path / "hl.db"), listen=None) as hl:

        @hl.require_approval(approvers=["alice@company.com", "bob@company.com"])
        async def transfer(amount: int) -> int:
            return amount

        async def turn(person: str, amount: int) -> int:
            with hl.on_behalf_of(person):
                return await transfer(amount)

        async with anyio.create_task_group() as tg:
            results: dict[str, int] = {}

            async def call(person: str, amount: int) -> None:
                results[person] = await turn(person, amount)

            tg.start_soon(call, "Bob@Company.com", 1)
            tg.start_soon(call, "alice@company.com", 2)
            with hl.run("nightly", requested_by="carol@company.com"):
                tg.start_soon(transfer, 3)
            pending = {r.kwargs["amount"]: r for r in await wait_for_pending(hl, 3)}
            assert {a: r.requested_by for a, r in pending.items()} == {
                1: "Bob@Company.com",
                2: "alice@company.com",
                3: "carol@company.com",
            }
            with pytest.raises(NotAnApprover) as own:
                await hl.decide(pending[1].id, True, by="bob@company.com")  # any case: the same person
            assert own.value.requester and "requested" in str(own.value)
            with pytest.raises(NotAnApprover) as other:
                await hl.decide(pending[2].id, True, by="alice@company.com")
            assert other.value.requester
            assert (await hl.get(pending[1].id)).status is Status.PENDING
            await hl.decide(pending[1].id, True, by="alice@company.com")
            await hl.decide(pending[2].id, True, by="bob@company.com")
            await hl.decide(pending[3].id, True, by="bob@company.com")
        assert results == {"Bob@Company.com": 1, "alice@company.com": 2}
        with pytest.raises(ConfigurationError), hl.on_behalf_of(""):
            pass
