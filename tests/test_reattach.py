"""Durable stores across processes: decisions made elsewhere, restarts, re-attach, at most once.

Every test runs on a real SQLite file and on the real PostgreSQL server, with agents
in processes of their own (``tests/durable_agent.py``) killed with SIGKILL.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from humanlayer_async import (
    AlreadyExecuted,
    ApprovalDenied,
    ApprovalRequest,
    ApprovalTimeout,
    ArgumentsChanged,
    HumanLayer,
    HumanLayerError,
    Status,
)
from humanlayer_async.stores import DurableStore, PostgresStore, SQLiteStore, store_from_url
from humanlayer_async.testing import AutoChannel

from .durable_helpers import finish, kill, run_cli, spawn_agent, starts, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[DurableStore]:
    """The parent's own handle on the store the agents use."""
    handle = store_from_url(store_url)
    yield handle
    await handle.aclose()


async def one_pending(store: DurableStore) -> ApprovalRequest:
    [request] = await wait_until(store.list_pending)
    return request


async def test_a_decision_in_another_process_wakes_the_waiting_tool(
    store_url: str, store: DurableStore, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    agent = await spawn_agent(store_url, "invoice-1", log)
    request = await one_pending(store)
    assert request.run_id == "invoice-1" and request.kwargs == {"amount": 5, "to": "acme"}
    decided_at = time.time()
    async with HumanLayer([], store=store_from_url(store_url), listen=None) as hl:
        await hl.decide(request.id, True, by="cfo", via="api")
    code, out = await finish(agent)
    assert (code, out) == (0, {"result": {"sent": 5, "to": "acme"}})
    [started] = starts(log)
    # The agent waits up to 600 s: only the decision (its notification, or SQLite's data_version
    # check) can have woken it. How fast is reported, not asserted (shared CI machines).
    print(
        f"\n{type(store).__name__}: decision → tool running in the other process: {started - decided_at:.3f}s"
    )


async def test_killed_while_waiting_reattaches_and_runs_once(
    store_url: str, store: DurableStore, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    first = await spawn_agent(store_url, "invoice-2", log)
    request = await one_pending(store)
    await kill(first)

    second = await spawn_agent(store_url, "invoice-2", log)

    async def reattached() -> bool:
        return any(e.event == "approval.reattached" for e in await store.history(request_id=request.id))

    await wait_until(reattached)
    assert [r.id for r in await store.list_pending()] == [request.id]  # no second request
    code, out, err = await run_cli("approve", request.id[:10], "--by", "cfo", "--store", store_url)
    assert code == 0, err
    assert "approved by cfo via cli" in out
    assert await finish(second) == (0, {"result": {"sent": 5, "to": "acme"}})
    assert len(starts(log)) == 1

    # The same step replayed once more: the recorded result, and still one run.
    third = await spawn_agent(store_url, "invoice-2", log)
    assert await finish(third) == (0, {"result": {"sent": 5, "to": "acme"}})
    assert len(starts(log)) == 1
    events = [e.event for e in await store.history(request_id=request.id)]
    assert events.count("approval.requested") == 1 and events.count("approval.executed") == 1


async def test_killed_inside_the_tool_is_outcome_unknown_never_a_second_run(
    store_url: str, store: DurableStore, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    first = await spawn_agent(store_url, "invoice-3", log, "--hang")
    request = await one_pending(store)
    async with HumanLayer([], store=store_from_url(store_url), listen=None) as hl:
        await hl.decide(request.id, True, by="cfo")
    await wait_until(lambda: anyio.to_thread.run_sync(starts, log))
    await kill(first)

    code, out = await finish(await spawn_agent(store_url, "invoice-3", log))
    assert code == 3 and out["error"] == "OutcomeUnknown"
    assert len(starts(log)) == 1
    events = [e.event for e in await store.history(request_id=request.id)]
    assert "approval.outcome_unknown" in events and "approval.executed" not in events
    stored = await store.get(request.id)
    assert stored.execution is not None and stored.execution.state == "executing"


async def test_two_processes_racing_to_decide_leave_exactly_one_decision(
    store_url: str, store: DurableStore, tmp_path: Path
) -> None:
    agent = await spawn_agent(store_url, "invoice-4", tmp_path / "runs.log")
    request = await one_pending(store)
    results: dict[str, tuple[int, str, str]] = {}

    async def decide(verb: str, *extra: str) -> None:
        results[verb] = await run_cli(verb, request.id, *extra, "--store", store_url)

    async with anyio.create_task_group() as tg:
        tg.start_soon(decide, "approve", "--by", "alice")
        tg.start_soon(decide, "deny", "--by", "bob", "--reason", "not this one")
    codes = sorted(code for code, _, _ in results.values())
    assert codes == [0, 1], results
    stored = await store.get(request.id)
    assert stored.decision is not None
    winner = "approve" if stored.decision.approved else "deny"
    assert results[winner][0] == 0
    loser = "deny" if winner == "approve" else "approve"
    assert "was already" in results[loser][2]
    decided = [e for e in await store.history(request_id=request.id) if e.event == "approval.decided"]
    assert len(decided) == 1 and decided[0].fields["by"] == stored.decision.by
    code, _ = await finish(agent)
    assert (code == 0) is stored.decision.approved


async def test_a_timeout_holds_across_a_restart(store_url: str, store: DurableStore, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    first = await spawn_agent(store_url, "invoice-5", log, "--timeout", "1")
    request = await one_pending(store)
    await kill(first)
    await anyio.sleep(max(0.0, (request.expires_at - request.created_at).total_seconds() - 0.5))
    await wait_until(lambda: _no_pending(store))  # whoever reads first marks it timed out
    stored = await store.get(request.id)
    assert stored.status is Status.TIMED_OUT and stored.decision is not None
    assert stored.decision.via == "timeout"
    code, out = await finish(await spawn_agent(store_url, "invoice-5", log, "--timeout", "1"))
    assert code == 3 and out["error"] == "ApprovalTimeout"
    assert starts(log) == []
    timed_out = [e for e in await store.history(request_id=request.id) if e.event == "approval.timed_out"]
    assert len(timed_out) == 1


async def _no_pending(store: DurableStore) -> bool:
    return not await store.list_pending()


# -- in one process: what a replay finds -------------------------------------------------------


async def test_replay_returns_the_recorded_result_without_running_again(store_url: str) -> None:
    runs: list[int] = []

    def make(hl: HumanLayer):  # type: ignore[no-untyped-def]
        @hl.require_approval()
        async def refund(order: int) -> dict[str, int]:
            runs.append(order)
            return {"refunded": order}

        return refund

    async with HumanLayer([AutoChannel()], store=store_from_url(store_url), listen=None, run_id="r") as hl:
        assert await make(hl)(7) == {"refunded": 7}
        assert await make(hl)(7) == {"refunded": 7}  # a deliberate second call: a new request
    assert runs == [7, 7]
    async with HumanLayer([], store=store_from_url(store_url), listen=None, run_id="r") as hl:
        refund = make(hl)
        assert await refund(7) == {"refunded": 7}
        assert await refund(7) == {"refunded": 7}
        assert await hl.pending() == []
    assert runs == [7, 7]  # both replayed from their records


async def test_a_result_without_json_form_raises_already_executed_on_replay(store_url: str) -> None:
    runs: list[str] = []

    def make(hl: HumanLayer):  # type: ignore[no-untyped-def]
        @hl.require_approval()
        async def open_session(user: str) -> object:
            runs.append(user)
            return object()

        return open_session

    async with HumanLayer([AutoChannel()], store=store_from_url(store_url), listen=None, run_id="s") as hl:
        await make(hl)("ann")
    async with HumanLayer([], store=store_from_url(store_url), listen=None, run_id="s") as hl:
        with pytest.raises(AlreadyExecuted, match="already ran") as caught:
            await make(hl)("ann")
    assert caught.value.outcome == "ok"
    assert runs == ["ann"]


async def test_runs_are_per_task_with_hl_run(store_url: str) -> None:
    async with HumanLayer([], store=store_from_url(store_url), listen=None) as hl:

        @hl.require_approval()
        async def ship(order: int) -> int:
            return order

        async def step(run_id: str) -> None:
            with hl.run(run_id):
                assert hl.run_id == run_id
                await ship(1)

        async with anyio.create_task_group() as tg:
            tg.start_soon(step, "run-a")
            tg.start_soon(step, "run-b")
            pending = await wait_until(lambda: _count(hl, 2))
            assert sorted(r.run_id or "" for r in pending) == ["run-a", "run-b"]
            assert len({r.key for r in pending}) == 2
            assert [r.run_id for r in await hl.pending(run_id="run-a")] == ["run-a"]
            for request in pending:
                await hl.decide(request.id, True, by="ops")
        assert hl.run_id is None


async def test_two_callers_of_one_run_in_one_process_both_get_the_decision(
    store_url: str, store: DurableStore
) -> None:
    """A queue message delivered twice: two tasks make the same call in the same run. They
    share one request; the decision wakes both (the second used to replace the first's
    waiter, and the first hung until its timeout), and the tool runs once."""
    runs: list[int] = []
    async with HumanLayer([], store=store_from_url(store_url), listen=None) as hl:

        @hl.require_approval()
        async def ship(order: int) -> int:
            runs.append(order)
            return order

        ended: list[object] = []

        async def deliver() -> None:
            with hl.run("message-42"):
                try:
                    ended.append(await ship(7))
                except HumanLayerError as exc:
                    ended.append(type(exc).__name__)

        async with anyio.create_task_group() as tg:
            tg.start_soon(deliver)
            [request] = await wait_until(lambda: _count(hl, 1))
            tg.start_soon(deliver)
            with anyio.fail_after(5):
                while not any(
                    e.event == "approval.reattached" for e in await store.history(request_id=request.id)
                ):
                    await anyio.sleep(0.01)  # the second caller found the first's request
            async with anyio.create_task_group() as impatient:  # a third one gives up: the others wait on
                impatient.start_soon(deliver)
                with anyio.fail_after(5):
                    while (
                        sum(
                            e.event == "approval.reattached"
                            for e in await store.history(request_id=request.id)
                        )
                        < 2
                    ):
                        await anyio.sleep(0.01)
                impatient.cancel_scope.cancel()
            await hl.decide(request.id, True, by="ops")
            with anyio.fail_after(5):
                while len(ended) < 2:
                    await anyio.sleep(0.01)
        assert runs == [7]  # once, never twice
        assert 7 in ended and len(ended) == 2  # the other got the recorded result or was told why not


async def _count(hl: HumanLayer, count: int) -> list[ApprovalRequest] | None:
    pending = await hl.pending()
    return pending if len(pending) == count else None


async def test_shutdown_leaves_a_runs_request_pending_but_cancels_one_without_a_run(store_url: str) -> None:
    for run_id, expected in (("keep", Status.PENDING), (None, Status.CANCELLED)):
        store = store_from_url(store_url)
        hl = HumanLayer([], store=store_from_url(store_url), listen=None, run_id=run_id)

        @hl.require_approval()
        async def wire(amount: int) -> int:
            return amount

        errors: list[HumanLayerError] = []

        async def call() -> None:
            try:
                await wire(10)
            except HumanLayerError as exc:
                errors.append(exc)  # noqa: B023

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            [request] = await wait_until(lambda: _of_run(hl, run_id))  # noqa: B023
            await hl.aclose()  # the process shuts down while the call waits
        assert len(errors) == 1 and "closed" in str(errors[0])
        stored = await store.get(request.id)
        assert stored.status is expected, run_id
        if run_id is None:
            assert stored.decision is not None and stored.decision.via == "shutdown"
        await store.aclose()


async def _of_run(hl: HumanLayer, run_id: str | None) -> list[ApprovalRequest]:
    return [request for request in await hl.pending() if request.run_id == run_id]


async def test_the_approval_is_bound_to_the_arguments_digest(store_url: str) -> None:
    store = store_from_url(store_url)
    runs: list[int] = []
    async with HumanLayer([], store=store, listen=None, run_id="d") as hl:

        @hl.require_approval()
        async def pay(amount: int) -> int:
            runs.append(amount)
            return amount

        async with anyio.create_task_group() as tg:

            async def call() -> None:
                with pytest.raises(ArgumentsChanged, match="other arguments"):
                    await pay(100)

            tg.start_soon(call)
            [request] = await wait_until(lambda: _count(hl, 1))
            await _tamper_digest(store, request.id)
            await hl.decide(request.id, True, by="cfo")
    assert runs == []


async def _tamper_digest(store: DurableStore, request_id: str) -> None:
    """Change the stored digest behind the SDK's back, as a row edited by hand would."""
    if isinstance(store, SQLiteStore):

        def edit(conn):  # type: ignore[no-untyped-def]
            conn.execute("UPDATE hl_requests SET digest = 'forged' WHERE id = ?", (request_id,))

        await store._run(edit)
    else:
        assert isinstance(store, PostgresStore)

        async def edit_pg(conn):  # type: ignore[no-untyped-def]
            await conn.execute(
                f"UPDATE {store.schema}.requests SET digest = 'forged' WHERE id = $1", request_id
            )

        await store._transact(edit_pg)


async def test_without_a_run_every_call_is_a_new_request(store_url: str) -> None:
    async with HumanLayer([AutoChannel()], store=store_from_url(store_url), listen=None) as hl:

        @hl.require_approval()
        async def ping(host: str) -> str:
            return host

        assert [await ping("a"), await ping("a")] == ["a", "a"]
        history = await hl.store.history()
        assert len({e.request_id for e in history if e.event == "approval.requested"}) == 2


async def test_a_denied_request_is_denied_on_replay_without_asking_again(store_url: str) -> None:
    async with HumanLayer(
        [AutoChannel(lambda r: "no")], store=store_from_url(store_url), listen=None, run_id="x"
    ) as hl:

        @hl.require_approval()
        async def drop(table: str) -> None: ...

        with pytest.raises(ApprovalDenied):
            await drop("users")
    channel = AutoChannel()
    async with HumanLayer([channel], store=store_from_url(store_url), listen=None, run_id="x") as hl:

        @hl.require_approval()
        async def drop(table: str) -> None: ...

        with pytest.raises(ApprovalDenied) as caught:
            await drop("users")
        assert not isinstance(caught.value, ApprovalTimeout)
    assert channel.sent == []  # re-attached: nothing sent a second time
