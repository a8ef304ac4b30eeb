"""Group commit under concurrency and failure: no decision lost or doubled when a batch fails
midway, and a statement the database refuses fails only its own callers.

First ``Batcher`` alone (pure asyncio), then ``PostgresStore`` on the real server (a fresh
schema per test, connections killed with ``pg_terminate_backend``), then what every store
(memory, SQLite, PostgreSQL) does alike when many calls arrive at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import asyncpg
import pytest

from humanlayer_async import ApprovalRequest, Decision, Status, StoreError, UnknownRequest
from humanlayer_async._audit import make_entry
from humanlayer_async._models import Execution
from humanlayer_async.stores import MemoryStore, PostgresStore, Store, StoreEvent, store_from_url
from humanlayer_async.stores._batch import Batcher
from humanlayer_async.stores._chain import verify_store

from .conftest import decision, make_request
from .durable_helpers import wait_until

pytestmark = pytest.mark.anyio

T = TypeVar("T")

DEADLINE = 60
"""Seconds any one test may take: a caller left waiting forever fails it instead of hanging."""


async def outcomes(*calls: Callable[[], Awaitable[T]]) -> list[T | Exception]:
    """Each call's result or error, in order, the calls started together (in one loop turn)."""
    results: dict[int, T | Exception] = {}

    async def run(index: int, call: Callable[[], Awaitable[T]]) -> None:
        try:
            results[index] = await call()
        except Exception as exc:
            results[index] = exc

    async with anyio.create_task_group() as tg:
        for index, call in enumerate(calls):
            tg.start_soon(run, index, call)
    return [results[index] for index in range(len(calls))]


def flush_sizes(batcher: Batcher[Any, Any]) -> list[int]:
    """The number of items of each flush ``batcher`` runs from now on (first attempts and retries)."""
    sizes: list[int] = []
    flush = batcher._flush

    async def counted(items: Sequence[Any]) -> Sequence[Any]:
        sizes.append(len(items))
        return await flush(items)

    batcher._flush = counted
    return sizes


# -- Batcher alone ------------------------------------------------------------------------


async def test_items_submitted_in_one_loop_turn_reach_one_flush_and_each_caller_gets_its_answer() -> None:
    batches: list[list[int]] = []

    async def flush(items: Sequence[int]) -> list[str]:
        batches.append(list(items))
        await anyio.lowlevel.checkpoint()  # (a round trip's worth of waiting)
        return [f"answer {item}" for item in items]

    batcher: Batcher[int, str] = Batcher(flush)
    with anyio.fail_after(DEADLINE):
        answers = await outcomes(*(functools.partial(batcher.submit, item) for item in range(40)))
    assert answers == [f"answer {item}" for item in range(40)]
    assert batches == [list(range(40))]


async def test_at_most_concurrency_flushes_run_at_once_each_of_at_most_max_size() -> None:
    release = anyio.Event()
    running = most = 0
    batches: list[list[int]] = []

    async def flush(items: Sequence[int]) -> list[int]:
        nonlocal running, most
        running += 1
        most = max(most, running)
        batches.append(list(items))
        try:
            await release.wait()
        finally:
            running -= 1
        return [-item for item in items]

    batcher: Batcher[int, int] = Batcher(flush, max_size=4, concurrency=3)
    answers: dict[int, int] = {}

    async def submit(item: int) -> None:
        answers[item] = await batcher.submit(item)

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            for item in range(30):
                tg.start_soon(submit, item)
            await anyio.wait_all_tasks_blocked()
            # Three flushes of four wait; the other 18 items wait for one of them to end.
            assert (running, [len(batch) for batch in batches]) == (3, [4, 4, 4])
            release.set()
    assert most == 3
    assert max(len(batch) for batch in batches) == 4
    assert sorted(item for batch in batches for item in batch) == list(range(30))  # each flushed once
    assert answers == {item: -item for item in range(30)}


async def test_a_flush_that_fails_as_a_whole_is_run_again_item_by_item_and_only_the_bad_item_fails() -> None:
    calls: list[list[int]] = []

    async def flush(items: Sequence[int]) -> list[str]:
        calls.append(list(items))
        if 13 in items:  # as one refused row rolls back a whole transaction
            raise ValueError(f"refused {list(items)}")
        return [f"stored {item}" for item in items]

    batcher: Batcher[int, str] = Batcher(flush)
    with anyio.fail_after(DEADLINE):
        answers = await outcomes(*(functools.partial(batcher.submit, item) for item in range(10, 16)))
    bad = answers[3]
    assert isinstance(bad, ValueError) and str(bad) == "refused [13]"  # its own error, not the batch's
    assert answers[:3] + answers[4:] == [f"stored {item}" for item in (10, 11, 12, 14, 15)]
    assert calls == [[10, 11, 12, 13, 14, 15], [10], [11], [12], [13], [14], [15]]


async def test_an_error_a_flush_answers_for_one_item_fails_that_caller_alone_and_nothing_runs_twice() -> None:
    calls: list[list[str]] = []

    async def flush(items: Sequence[str]) -> list[str | BaseException]:
        calls.append(list(items))
        return [KeyError(item) if item == "gone" else item.upper() for item in items]

    batcher: Batcher[str, str] = Batcher(flush)
    with anyio.fail_after(DEADLINE):
        answers = await outcomes(*(functools.partial(batcher.submit, item) for item in ("a", "gone", "b")))
        alone = await outcomes(lambda: batcher.submit("gone"))
    assert answers[0::2] == ["A", "B"]
    assert isinstance(answers[1], KeyError) and isinstance(alone[0], KeyError)
    assert calls == [["a", "gone", "b"], ["gone"]]


class Held:
    """A one-at-a-time batcher whose flushes wait for ``release``, and callers that can be cancelled."""

    def __init__(self) -> None:
        self.release = anyio.Event()
        self.batches: list[list[str]] = []
        self.answers: dict[str, str] = {}
        self.scopes: dict[str, anyio.CancelScope] = {}
        self.batcher: Batcher[str, str] = Batcher(self._flush, concurrency=1)

    async def _flush(self, items: Sequence[str]) -> list[str]:
        self.batches.append(list(items))
        await self.release.wait()
        return [item.upper() for item in items]

    async def submit(self, item: str) -> None:
        with anyio.CancelScope() as self.scopes[item]:
            self.answers[item] = await self.batcher.submit(item)


async def test_a_caller_cancelled_before_its_flush_began_takes_its_item_back() -> None:
    held = Held()
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(held.submit, "a")
            await anyio.wait_all_tasks_blocked()  # "a" is being flushed; the one flush allowed
            tg.start_soon(held.submit, "b")
            tg.start_soon(held.submit, "c")
            await anyio.wait_all_tasks_blocked()  # "b" and "c" queued behind it
            held.scopes["b"].cancel()
            await anyio.wait_all_tasks_blocked()
            held.release.set()
    assert held.batches == [["a"], ["c"]]  # "b" never reached a flush
    assert held.answers == {"a": "A", "c": "C"}
    assert held.scopes["b"].cancelled_caught


async def test_a_caller_cancelled_during_its_flush_leaves_the_others_answered_and_nothing_hangs() -> None:
    held = Held()
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            for item in ("a", "b", "c"):
                tg.start_soon(held.submit, item)
            await anyio.wait_all_tasks_blocked()
            assert held.batches == [["a", "b", "c"]]  # one flush, under way
            held.scopes["b"].cancel()
            await anyio.wait_all_tasks_blocked()
            held.release.set()
        assert await held.batcher.submit("d") == "D"  # the batcher still flushes
    assert held.answers == {"a": "A", "c": "C"}
    assert held.scopes["b"].cancelled_caught
    assert held.batches == [["a", "b", "c"], ["d"]]


async def test_a_caller_submitting_again_once_answered_is_flushed_with_one_flush_allowed() -> None:
    async def flush(items: Sequence[int]) -> list[int]:
        await anyio.lowlevel.checkpoint()
        return [item + 1 for item in items]

    batcher: Batcher[int, int] = Batcher(flush, concurrency=1)
    with anyio.fail_after(5):  # (a flush that had ended, still counted as running, left it waiting)
        assert [await batcher.submit(item) for item in range(20)] == list(range(1, 21))


async def test_two_flushes_ending_in_one_loop_turn_leave_a_caller_submitting_again_flushed() -> None:
    """Both flushes end, then one caller submits again before anything else runs."""
    gate = anyio.Event()

    async def flush(items: Sequence[int]) -> list[int]:
        await gate.wait()
        return [item * 2 for item in items]

    batcher: Batcher[int, int] = Batcher(flush, concurrency=2)
    answers: list[int] = []

    async def twice() -> None:
        answers.append(await batcher.submit(1))
        answers.append(await batcher.submit(3))  # at once, in the step that got the first answer

    async def once() -> None:
        answers.append(await batcher.submit(2))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(twice)
            await anyio.wait_all_tasks_blocked()  # 1 in the first flush
            tg.start_soon(once)
            await anyio.wait_all_tasks_blocked()  # 2 in the second
            gate.set()  # both flushes resume in the same loop turn
    assert sorted(answers) == [2, 4, 6]


# -- PostgresStore on the real server ------------------------------------------------------


@contextlib.asynccontextmanager
async def pg_stores(dsn: str, schema: str, count: int) -> AsyncIterator[list[PostgresStore]]:
    """``count`` handles on one schema, each with its own pool, as ``count`` processes have."""
    stores = [PostgresStore(dsn, schema=schema) for _ in range(count)]
    try:
        for store in stores:
            await store.open()
        yield stores
    finally:
        for store in stores:
            await store.aclose()


@pytest.fixture
async def admin(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


class Seen:
    """The events a store's ``watch()`` yields, and a wait until some have come."""

    def __init__(self) -> None:
        self.events: list[StoreEvent] = []
        self._arrived = anyio.Event()

    async def follow(self, store: Store) -> None:
        async for event in store.watch():
            self.events.append(event)
            self._arrived.set()

    def ids(self, kind: str) -> Counter[str]:
        return Counter(event.request_id for event in self.events if event.kind == kind)

    async def until(self, kind: str, ids: Collection[str]) -> None:
        with anyio.fail_after(30):
            while not set(ids) <= self.ids(kind).keys():
                self._arrived = anyio.Event()
                await self._arrived.wait()


class Notifications:
    """The store's ``NOTIFY`` payloads (``seq:kind:ids``), heard on a connection of our own."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str]]] = []
        self._arrived = anyio.Event()

    def heard(self, conn: object, pid: int, channel: str, payload: object) -> None:
        _, kind, ids = str(payload).split(":", 2)
        self.received.append((kind, ids.split(" ")))
        self._arrived.set()

    async def until(self, kind: str, count: int) -> None:
        with anyio.fail_after(30):
            while sum(len(ids) for heard, ids in self.received if heard == kind) < count:
                self._arrived = anyio.Event()
                await self._arrived.wait()


@contextlib.asynccontextmanager
async def listening(dsn: str, store: PostgresStore) -> AsyncIterator[Notifications]:
    notifications = Notifications()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.add_listener(f"{store.schema}_events", notifications.heard)  # the store's channel
        yield notifications
    finally:
        await conn.close()


async def audit_events(store: Store) -> Counter[tuple[str, str]]:
    """(request id, event) → how many entries of the trail."""
    return Counter((entry.request_id, entry.event) for entry in await store.history())


async def assert_chains_verify(store: Store, entries: int, chains: int) -> None:
    verdict = await verify_store(store, None)
    assert verdict.problem is None, verdict.problem
    assert (verdict.entries, verdict.chains, verdict.broken) == (entries, chains, 0)


async def logged_events(admin: asyncpg.Connection, schema: str, kind: str) -> Counter[str]:
    """Request id → its events of ``kind`` in the store's event log (what followers catch up on)."""
    rows = await admin.fetch(f"SELECT request_id FROM {schema}.events WHERE kind = $1", kind)
    return Counter(row["request_id"] for row in rows)


def refused_by_postgres(exc: object, sqlstate: str) -> bool:
    """``exc`` is the ``StoreError`` of an error the server itself raised (not asyncpg, not
    Python), with ``sqlstate``."""
    cause = getattr(exc, "__cause__", None)
    return (
        isinstance(exc, StoreError)
        and isinstance(cause, asyncpg.PostgresError)
        and cause.sqlstate == sqlstate
    )


@pytest.mark.postgres
async def test_300_concurrent_creations_are_stored_once_audited_and_announced_to_another_process(
    pg_dsn: str, pg_schema: str, admin: asyncpg.Connection
) -> None:
    ids = [f"req-{index:03}" for index in range(300)]
    seen = Seen()
    async with pg_stores(pg_dsn, pg_schema, 2) as (store, other), listening(pg_dsn, store) as heard:
        sizes = flush_sizes(store._creating)
        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as tg:
                tg.start_soon(seen.follow, other)  # caught up from when `other` opened, then live
                created = await outcomes(
                    *(functools.partial(store.create_or_attach, make_request(i)) for i in ids)
                )
                await seen.until("requested", ids)
                await heard.until("requested", len(ids))
                tg.cancel_scope.cancel()
        assert [request.id for request in created if not isinstance(request, Exception)] == ids
        assert max(sizes) > 200  # one batch held more ids than one notification may carry...
        assert max(len(announced) for _, announced in heard.received) == 200  # ...so it was split
        assert sorted(i for _, announced in heard.received for i in announced) == ids
        assert seen.ids("requested") == Counter(ids)  # each announced once, to the other process
        assert await other.count_pending() == 300
        assert await audit_events(store) == Counter({(i, "approval.requested"): 1 for i in ids})
        assert await logged_events(admin, pg_schema, "requested") == Counter(ids)
        await assert_chains_verify(other, entries=300, chains=300)


@pytest.mark.postgres
async def test_a_creation_the_database_refuses_fails_alone_and_every_other_one_is_stored_once(
    pg_dsn: str, pg_schema: str
) -> None:
    ids = [f"c{index:02}" for index in range(40)]
    # jsonb refuses \u0000 in a string; Python encodes it happily (as the escape "\\u0000").
    requests = [make_request(i, kwargs={"note": "a\u0000b" if i == "c17" else "ok"}) for i in ids]
    async with pg_stores(pg_dsn, pg_schema, 1) as [store]:
        sizes = flush_sizes(store._creating)
        with anyio.fail_after(DEADLINE):
            created = await outcomes(*(functools.partial(store.create_or_attach, r) for r in requests))
        assert sizes[0] == 40  # the refused one was in the batch with the others
        bad = created.pop(17)
        assert refused_by_postgres(bad, "22P05"), repr(bad)  # untranslatable_character
        assert created == requests[:17] + requests[18:]
        with pytest.raises(UnknownRequest):
            await store.get("c17")
        assert await store.count_pending() == 39
        good = [i for i in ids if i != "c17"]
        assert await audit_events(store) == Counter({(i, "approval.requested"): 1 for i in good})
        await assert_chains_verify(store, entries=39, chains=39)


@pytest.mark.postgres
async def test_a_decision_the_database_refuses_fails_alone_and_its_request_can_still_be_decided(
    pg_dsn: str, pg_schema: str
) -> None:
    ids = [f"d{index:02}" for index in range(30)]
    async with pg_stores(pg_dsn, pg_schema, 1) as [store]:
        for request_id in ids:
            await store.create(make_request(request_id))
        decisions = [
            dataclasses.replace(decision(i, True, "alice"), comment="no\x00pe" if i == "d05" else f"ok {i}")
            for i in ids
        ]
        sizes = flush_sizes(store._deciding)
        with anyio.fail_after(DEADLINE):
            decided = await outcomes(*(functools.partial(store.decide, d) for d in decisions))
        assert sizes[0] == 30
        bad = decided.pop(5)
        assert refused_by_postgres(bad, "22021"), repr(bad)  # character_not_in_repertoire: NUL in text
        assert decided == decisions[:5] + decisions[6:]
        assert (await store.get("d05")).status is Status.PENDING
        again = decision("d05", False, "bob")
        assert await store.decide(again) == again == (await store.get("d05")).decision
        for each in decisions[:5] + decisions[6:]:
            assert (await store.get(each.request_id)).decision == each
        counts = await audit_events(store)
        assert [counts[i, "approval.decided"] for i in ids] == [1] * 30
        await assert_chains_verify(store, entries=60, chains=30)


@pytest.mark.postgres
async def test_two_approvers_deciding_every_request_at_once_through_two_processes_leave_one_decision_each(
    pg_dsn: str, pg_schema: str, admin: asyncpg.Connection
) -> None:
    ids = [f"r{index:02}" for index in range(40)]
    seen = Seen()
    async with pg_stores(pg_dsn, pg_schema, 3) as (first, second, watcher):
        for request_id in ids:
            await first.create(make_request(request_id))
        calls: list[Callable[[], Awaitable[Decision]]] = []
        for request_id in ids:
            calls.append(functools.partial(first.decide, decision(request_id, True, "alice")))
            calls.append(functools.partial(second.decide, decision(request_id, False, "bob")))
        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as tg:
                tg.start_soon(seen.follow, watcher)
                answers = await outcomes(*calls)
                await seen.until("decided", ids)
                tg.cancel_scope.cancel()
        winners: Counter[str | None] = Counter()
        for index, request_id in enumerate(ids):
            alice, bob = answers[2 * index : 2 * index + 2]
            assert isinstance(alice, Decision) and alice == bob  # both callers get the one that stands
            assert alice == (await watcher.get(request_id)).decision
            winners[alice.by] += 1
        assert sum(winners.values()) == 40 and set(winners) <= {"alice", "bob"}
        counts = await audit_events(first)
        assert [counts[i, "approval.decided"] for i in ids] == [1] * 40
        assert seen.ids("decided") == Counter(ids)
        assert await logged_events(admin, pg_schema, "decided") == Counter(ids)
        await assert_chains_verify(first, entries=80, chains=40)


async def _blocked(admin: asyncpg.Connection, store: PostgresStore, killed: set[int]) -> list[int]:
    """The store's backends waiting for a lock, that were not terminated already."""
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
        store.application_name,
    )
    return [row["pid"] for row in rows if row["pid"] not in killed]


@pytest.mark.postgres
async def test_decisions_whose_connections_die_mid_batch_are_stored_once_or_fail_and_can_be_made_again(
    pg_dsn: str, pg_schema: str, admin: asyncpg.Connection
) -> None:
    """Each batch (and each item retried alone) waits for a row lock that another connection
    holds; its backend is then terminated, several times over, before the lock is let go."""
    ids = [f"k{index:02}" for index in range(60)]
    decisions = {request_id: decision(request_id, True, "alice") for request_id in ids}
    answers: dict[str, Decision | Exception] = {}
    locker = await asyncpg.connect(pg_dsn)
    try:
        async with pg_stores(pg_dsn, pg_schema, 1) as [store]:
            for request_id in ids:
                await store.create(make_request(request_id))

            async def decide(request_id: str) -> None:
                try:
                    answers[request_id] = await store.decide(decisions[request_id])
                except StoreError as exc:
                    answers[request_id] = exc

            locking = locker.transaction()
            await locking.start()
            await locker.execute(f"SELECT id FROM {pg_schema}.requests FOR UPDATE")
            killed: set[int] = set()
            with anyio.fail_after(DEADLINE):
                async with anyio.create_task_group() as tg:
                    for request_id in ids:
                        tg.start_soon(decide, request_id)
                    for _ in range(6):
                        blocked = await wait_until(functools.partial(_blocked, admin, store, killed))
                        rows = await admin.fetch(
                            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
                            " WHERE application_name = $1",
                            store.application_name,
                        )
                        killed |= {row["pid"] for row in rows} | set(blocked)
                    await locking.rollback()
            failed = sorted(i for i, answer in answers.items() if isinstance(answer, Exception))
            assert len(answers) == 60
            assert failed and len(failed) < 60, failed  # some failed midway, the others were stored
            for request_id, answer in answers.items():
                if request_id not in failed:
                    assert answer == decisions[request_id] == (await store.get(request_id)).decision
            for request_id in failed:  # made again: stored now (or the one stored before, returned)
                assert await store.decide(decisions[request_id]) == decisions[request_id]
            counts = await audit_events(store)
            assert [counts[i, "approval.decided"] for i in ids] == [1] * 60
            assert await logged_events(admin, pg_schema, "decided") == Counter(ids)
            await assert_chains_verify(store, entries=120, chains=60)
    finally:
        await locker.close()


@pytest.mark.postgres
async def test_one_approved_call_is_claimed_once_across_processes_and_within_one_batch(
    pg_dsn: str, pg_schema: str
) -> None:
    async with pg_stores(pg_dsn, pg_schema, 2) as (first, second):
        for request_id in ("across", "within"):
            await first.create(make_request(request_id))
            await first.decide(decision(request_id, True, "cfo"))
        with anyio.fail_after(DEADLINE):
            across = await outcomes(
                lambda: first.begin_execution("across", None), lambda: second.begin_execution("across", None)
            )
            sizes = flush_sizes(first._beginning)
            within = await outcomes(
                lambda: first.begin_execution("within", None), lambda: first.begin_execution("within", None)
            )
        assert sizes[0] == 2  # one batch, naming "within" twice
        for claims in (across, within):
            assert sorted(claims, key=repr) == [Execution("executing"), None]  # one claim, one sees it
        for request_id in ("across", "within"):
            assert (await second.get(request_id)).execution == Execution("executing")


@pytest.mark.postgres
async def test_entries_recorded_at_once_on_one_chain_from_two_processes_and_a_decision_all_land_chained(
    pg_dsn: str, pg_schema: str
) -> None:
    async with pg_stores(pg_dsn, pg_schema, 2) as (first, second):
        await first.create(make_request("busy"))
        calls: list[Callable[[], Awaitable[object]]] = []
        for index in range(60):
            store = (first, second)[index % 2]
            calls.append(
                functools.partial(store.record, make_entry("approval.delivered", "busy", channel=index))
            )
            if index == 30:
                calls.append(functools.partial(second.decide, decision("busy", True, "cfo")))
        with anyio.fail_after(DEADLINE):
            results = await outcomes(*calls)
        assert not [result for result in results if isinstance(result, Exception)]
        trail = await first.history(request_id="busy")
        assert Counter(entry.event for entry in trail) == Counter(
            {"approval.requested": 1, "approval.delivered": 60, "approval.decided": 1}
        )
        delivered = [entry.fields["channel"] for entry in trail if entry.event == "approval.delivered"]
        assert sorted(delivered) == list(range(60))
        await assert_chains_verify(second, entries=62, chains=1)


@pytest.mark.postgres
async def test_an_unknown_id_in_a_batch_fails_only_its_own_caller(pg_dsn: str, pg_schema: str) -> None:
    async with pg_stores(pg_dsn, pg_schema, 1) as [store]:
        await store.create(make_request("known"))
        await store.create(make_request("run"))
        await store.decide(decision("run", True, "cfo"))
        batchers = (store._getting, store._deciding, store._beginning)
        sizes = [flush_sizes(batcher) for batcher in batchers]
        approved = decision("known", True, "cfo")
        with anyio.fail_after(DEADLINE):
            got = await outcomes(lambda: store.get("missing"), lambda: store.get("known"))
            decided = await outcomes(
                functools.partial(store.decide, approved),
                lambda: store.decide(decision("missing", True, "cfo")),
            )
            begun = await outcomes(
                lambda: store.begin_execution("missing", None), lambda: store.begin_execution("run", None)
            )
        assert [each[0] for each in sizes] == [2, 2, 2]  # each pair went in one batch
        assert isinstance(got[0], UnknownRequest)
        assert isinstance(got[1], ApprovalRequest) and got[1].id == "known"
        assert decided[0] == approved and isinstance(decided[1], UnknownRequest)
        assert isinstance(begun[0], UnknownRequest) and begun[1] is None
        assert (await store.get("run")).execution == Execution("executing")


# -- what every store does alike ------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def two(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Store, Store]]:
    """Two handles on one store, as two processes have (the one MemoryStore twice: it has no other)."""
    if kind == "memory":
        memory = MemoryStore()
        yield memory, memory
        await memory.aclose()
        return
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'batching.db'}"
    else:
        url = f"{request.getfixturevalue('pg_dsn')}?schema={request.getfixturevalue('pg_schema')}"
    first, second = store_from_url(url), store_from_url(url)
    yield first, second
    await first.aclose()
    await second.aclose()


async def test_concurrent_decisions_on_every_store_store_the_first_and_both_callers_agree(
    two: tuple[Store, Store],
) -> None:
    first, second = two
    ids = [f"r{index:02}" for index in range(30)]
    for request_id in ids:
        await first.create(make_request(request_id))
    calls: list[Callable[[], Awaitable[Decision]]] = []
    for request_id in ids:
        calls.append(functools.partial(first.decide, decision(request_id, True, "alice")))
        calls.append(functools.partial(second.decide, decision(request_id, False, "bob")))
    with anyio.fail_after(DEADLINE):
        answers = await outcomes(*calls)
    for index, request_id in enumerate(ids):
        alice, bob = answers[2 * index : 2 * index + 2]
        assert isinstance(alice, Decision) and alice == bob
        assert alice.by in ("alice", "bob") and alice == (await second.get(request_id)).decision
    counts = await audit_events(first)
    assert [counts[i, "approval.decided"] for i in ids] == [1] * 30


async def test_concurrent_creations_on_every_store_are_stored_once_and_one_keys_callers_attach_to_one(
    two: tuple[Store, Store],
) -> None:
    first, second = two
    plain = [make_request(f"p{index:02}") for index in range(60)]
    keyed = {key: [make_request(f"{key}-{n}", key=key) for n in range(3)] for key in ("k1", "k2", "k3")}
    asked = plain + [request for requests in keyed.values() for request in requests]
    with anyio.fail_after(DEADLINE):
        created = await outcomes(
            *(
                functools.partial((first, second)[index % 2].create_or_attach, r)
                for index, r in enumerate(asked)
            )
        )
    assert created[:60] == plain
    stored: list[str] = [request.id for request in plain]
    for key, requests in keyed.items():
        ids = {answer.id for answer in created[60:] if isinstance(answer, ApprovalRequest)} & {
            request.id for request in requests
        }
        assert len(ids) == 1, (key, created[60:])  # the three callers of a key get one request
        [kept] = ids
        stored.append(kept)
        for request in requests:
            if request.id != kept:
                with pytest.raises(UnknownRequest):
                    await second.get(request.id)
    assert [(await second.get(request_id)).id for request_id in stored] == stored
    assert await second.count_pending() == 63
    assert await audit_events(first) == Counter({(i, "approval.requested"): 1 for i in stored})


REFUSED = "\ud800"
"""A lone surrogate: a Python str, but no UTF-8 text, which SQLite (through ``sqlite3``) and
PostgreSQL (through asyncpg) both refuse at the statement; ``MemoryStore`` keeps anything."""


async def test_a_value_the_database_refuses_fails_only_its_own_callers_on_every_durable_store(
    kind: str, two: tuple[Store, Store]
) -> None:
    if kind == "memory":
        pytest.skip("a MemoryStore refuses no value: it keeps the Python objects as they are")
    first, second = two
    ids = [f"d{index:02}" for index in range(10)]
    for request_id in ids:
        await first.create(make_request(request_id))
    decisions = [
        dataclasses.replace(decision(i, True, "alice"), comment=f"ok{REFUSED}" if i == "d03" else "ok")
        for i in ids
    ]
    requests = [make_request(f"n{n}", message=f"hi{REFUSED}" if n == 2 else "hi") for n in range(5)]
    calls: list[Callable[[], Awaitable[object]]] = [functools.partial(first.decide, d) for d in decisions]
    calls += [functools.partial(second.create_or_attach, r) for r in requests]
    with anyio.fail_after(DEADLINE):
        answers = await outcomes(*calls)
    assert isinstance(answers.pop(3), Exception)  # the refused decision
    assert isinstance(answers.pop(9 + 2), Exception)  # the refused request
    assert answers == decisions[:3] + decisions[4:] + requests[:2] + requests[3:]
    assert (await second.get("d03")).status is Status.PENDING
    again = decision("d03", False, "bob")
    assert await second.decide(again) == again
    with pytest.raises(UnknownRequest):
        await first.get("n2")
    counts = await audit_events(second)
    assert [counts[i, "approval.decided"] for i in ids] == [1] * 10
    assert sorted(i for i, event in counts if event == "approval.requested") == sorted(
        [*ids, "n0", "n1", "n3", "n4"]
    )
    await assert_chains_verify(first, entries=24, chains=14)


DURABLE = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@contextlib.asynccontextmanager
async def durable(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh durable store of ``kind``, opened by its URL as the CLI opens one."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'refused.db'}"
    else:
        url = f"{request.getfixturevalue('pg_dsn')}?schema={request.getfixturevalue('pg_schema')}"
    store = store_from_url(url)
    try:
        yield store
    finally:
        await store.aclose()


@pytest.mark.parametrize("url_kind", DURABLE)
async def test_a_value_the_database_refuses_is_a_store_error(
    url_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with durable(url_kind, request, tmp_path) as store:
        await store.create(make_request("r1"))
        with pytest.raises(StoreError):
            await store.decide(dataclasses.replace(decision("r1", True, "alice"), comment=REFUSED))
        with pytest.raises(StoreError):
            await store.create(make_request("r2", message=REFUSED))


@pytest.mark.parametrize("url_kind", DURABLE)
async def test_an_argument_no_database_can_hold_is_refused_by_name_as_a_store_error(
    url_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with durable(url_kind, request, tmp_path) as store:
        with pytest.raises(StoreError, match="note"):
            await store.create(make_request("r1", kwargs={"note": REFUSED}))
