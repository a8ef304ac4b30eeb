"""PostgreSQL connections dropped mid-wait: the LISTEN connection comes back, resyncs and catches up."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import cast

import anyio
import asyncpg
import pytest
from structlog.testing import capture_logs

from humanlayer_async import ConfigurationError, HumanLayer, StoreError
from humanlayer_async.stores import PostgresStore, StoreEvent
from humanlayer_async.stores import postgres as postgres_module

from .conftest import decision, make_request
from .durable_helpers import finish, spawn_agent, starts, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture
async def admin(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


async def terminate(admin: asyncpg.Connection, store: PostgresStore) -> int:
    """``pg_terminate_backend`` on every connection of the store's schema, in every process."""
    rows = await admin.fetch(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        store.application_name,
    )
    return len(rows)


async def test_an_agent_whose_connections_are_dropped_mid_wait_still_resumes(
    pg_dsn: str,
    pg_schema: str,
    admin: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    url = f"{pg_dsn}?schema={pg_schema}"
    log = tmp_path / "runs.log"
    agent = await spawn_agent(url, "invoice-pg", log)
    store = PostgresStore(pg_dsn, schema=pg_schema)
    try:
        [request] = await wait_until(store.list_pending)
        assert await terminate(admin, store) >= 2  # the agent's pool and LISTEN connections, and ours
        # Decided at once, while the agent is still finding out and reconnecting: it learns of
        # the decision by catching up on the event log, or from the NOTIFY once it listens again.
        async with HumanLayer([], store=store, listen=None) as hl:
            decision = await hl.decide(request.id, True, by="cfo")
        assert decision is not None and decision.approved
        assert await finish(agent) == (0, {"result": {"sent": 5, "to": "acme"}})
        assert len(starts(log)) == 1
    finally:
        await store.aclose()


async def test_a_decision_made_while_disconnected_is_caught_up_by_sequence(
    pg_dsn: str,
    pg_schema: str,
    admin: asyncpg.Connection,
) -> None:
    watcher = PostgresStore(pg_dsn, schema=pg_schema)
    writer = PostgresStore(pg_dsn, schema=pg_schema)
    seen: list[StoreEvent] = []
    try:
        await watcher.list_pending()

        async def follow() -> None:
            async for event in watcher.watch():
                seen.append(event)
                if len(seen) == 4:
                    return

        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                await writer.create(make_request("c1"))
                await wait_until(lambda: _has(seen, 1))
                listen_pid = _listen_pid(watcher)
                await admin.execute("SELECT pg_terminate_backend($1)", listen_pid)
                await writer.decide(decision("c1", True, "alice"))  # while the watcher is cut off
                await writer.create(make_request("c2"))
        # The resync comes once the watcher listens again, before the events it caught up on
        # (or, had it listened again before the decision, before that notification).
        assert seen == [
            StoreEvent("requested", "c1"),
            StoreEvent("resync", ""),
            StoreEvent("decided", "c1"),
            StoreEvent("requested", "c2"),
        ]
        assert _listen_pid(watcher) != listen_pid  # a new LISTEN connection
    finally:
        await watcher.aclose()
        await writer.aclose()


async def test_an_event_whose_notification_never_came_is_read_after_a_quiet_interval(
    pg_dsn: str, pg_schema: str, admin: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A half-open LISTEN connection delivers nothing and never drops: the log is read anyway."""
    monkeypatch.setattr(postgres_module, "CATCH_UP_INTERVAL", 0.2)
    watcher = PostgresStore(pg_dsn, schema=pg_schema)
    seen: list[StoreEvent] = []
    try:
        await watcher.list_pending()

        async def follow() -> None:
            async for event in watcher.watch():
                seen.append(event)
                return

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow)
                await anyio.wait_all_tasks_blocked()
                # Written without its NOTIFY, as a lost notification leaves it.
                await admin.execute(
                    f"INSERT INTO {pg_schema}.events (kind, request_id) VALUES ('decided', 'lost')"
                )
        assert seen == [StoreEvent("decided", "lost")]
    finally:
        await watcher.aclose()


def _watch(store: PostgresStore) -> AsyncGenerator[StoreEvent, None]:
    """``store.watch()``, iterated by hand and closed by the test (an async generator)."""
    return cast("AsyncGenerator[StoreEvent, None]", store.watch())


def _listen_pid(store: PostgresStore) -> int:
    assert store._listen_conn is not None
    return store._listen_conn.get_server_pid()


async def _has(seen: list[StoreEvent], count: int) -> bool:
    return len(seen) >= count


async def test_every_watch_iterator_resyncs_and_catches_up_even_one_not_iterated_during_the_reconnect(
    pg_dsn: str,
    pg_schema: str,
    admin: asyncpg.Connection,
) -> None:
    # Regression: the iterator that reconnected caught up, but a second one on the same store,
    # busy elsewhere while the first reconnected, found the store listening again and waited
    # for a notification that had been sent to the dead connection: its waiter hung.
    watcher = PostgresStore(pg_dsn, schema=pg_schema)
    writer = PostgresStore(pg_dsn, schema=pg_schema)
    try:
        await watcher.list_pending()
        first, second = _watch(watcher), _watch(watcher)
        with anyio.fail_after(15):
            await writer.create(make_request("r1"))
            assert await anext(first) == StoreEvent("requested", "r1")
            assert await anext(second) == StoreEvent("requested", "r1")
            await admin.execute("SELECT pg_terminate_backend($1, 5000)", _listen_pid(watcher))
            await writer.decide(decision("r1", True, "alice"))  # its NOTIFY reaches no one
            assert [await anext(first), await anext(first)] == [
                StoreEvent("resync", ""),
                StoreEvent("decided", "r1"),
            ]
            assert [await anext(second), await anext(second)] == [
                StoreEvent("resync", ""),
                StoreEvent("decided", "r1"),
            ]
        await first.aclose()
        await second.aclose()
    finally:
        await watcher.aclose()
        await writer.aclose()


async def test_the_listen_connection_goes_to_listen_dsn_whose_password_stays_out_of_the_logs(
    pg_dsn: str,
    pg_schema: str,
    admin: asyncpg.Connection,
) -> None:
    user, _, host = pg_dsn.removeprefix("postgresql://").partition("@")
    listen_dsn = f"postgresql://{user}:listen-secret@{host}"  # trust auth: any password does
    store = PostgresStore(pg_dsn, schema=pg_schema, listen_dsn=listen_dsn)
    try:
        with capture_logs() as logs:
            await store.list_pending()
            events = _watch(store)
            await admin.execute("SELECT pg_terminate_backend($1, 5000)", _listen_pid(store))
            with anyio.fail_after(15):
                assert await anext(events) == StoreEvent("resync", "")
            await events.aclose()
        lost = [log for log in logs if log["event"] in ("store.listen_lost", "store.listen_restored")]
        assert [log["event"] for log in lost] == ["store.listen_lost", "store.listen_restored"]
        assert {log["at"] for log in lost} == {f"postgresql://{user}@{host}"}
        assert "listen-secret" not in repr(logs) + repr(store)
    finally:
        await store.aclose()


async def test_a_listen_dsn_that_cannot_connect_fails_the_first_use_without_its_password(
    pg_dsn: str, pg_schema: str
) -> None:
    store = PostgresStore(
        pg_dsn,
        schema=pg_schema,
        listen_dsn="postgresql://u:listen-secret@127.0.0.1:1/test",
        connect_timeout=2,
    )
    with pytest.raises(StoreError) as caught:
        await store.list_pending()
    await store.aclose()
    assert caught.value.__cause__ is not None and "listen-secret" not in str(caught.value)


def test_listen_dsn_and_statement_cache_size_are_checked_like_the_dsn() -> None:
    with pytest.raises(
        ConfigurationError, match="listen_dsn 'mysql://u@db/app' is not a PostgreSQL DSN"
    ) as caught:
        PostgresStore("postgresql://db/app", listen_dsn="mysql://u:listen-secret@db/app")
    assert "listen-secret" not in str(caught.value)
    with pytest.raises(ConfigurationError, match="listen_dsn is not a URL"):
        PostgresStore("postgresql://db/app", listen_dsn="postgresql://db:port/app")
    with pytest.raises(ConfigurationError, match="listen_dsn names schema 'other', the store's is 'fleet'"):
        PostgresStore("postgresql://db/app?schema=fleet", listen_dsn="postgresql://db:5432/app?schema=other")
    assert PostgresStore("postgresql://db/app", schema="fleet", listen_dsn="postgresql://db/app?schema=fleet")
    with pytest.raises(ConfigurationError, match="statement_cache_size must be a whole number"):
        PostgresStore("postgresql://db/app?statement_cache_size=off")
    with pytest.raises(ConfigurationError, match="statement_cache_size must be a whole number >= 0, not -1"):
        PostgresStore("postgresql://db/app", statement_cache_size=-1)
    with pytest.raises(ConfigurationError, match="0 in the DSN and 100 as statement_cache_size="):
        PostgresStore("postgresql://db/app?statement_cache_size=0", statement_cache_size=100)
    with pytest.raises(ConfigurationError, match="names statement_cache_size= 2 times"):
        PostgresStore("postgresql://db/app?statement_cache_size=0&statement_cache_size=0")
