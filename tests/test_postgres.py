"""PostgreSQL connections dropped mid-wait: the LISTEN connection comes back and catches up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import asyncpg
import pytest

from humanlayer_async import HumanLayer
from humanlayer_async.stores import PostgresStore, StoreEvent

from .durable_helpers import finish, spawn_agent, starts, wait_until
from .test_stores import decision, make_request

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
        assert decision.approved
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
                if len(seen) == 3:
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
        assert seen == [
            StoreEvent("requested", "c1"),
            StoreEvent("decided", "c1"),
            StoreEvent("requested", "c2"),
        ]
        assert _listen_pid(watcher) != listen_pid  # a new LISTEN connection
    finally:
        await watcher.aclose()
        await writer.aclose()


def _listen_pid(store: PostgresStore) -> int:
    assert store._listen_conn is not None
    return store._listen_conn.get_server_pid()


async def _has(seen: list[StoreEvent], count: int) -> bool:
    return len(seen) >= count
