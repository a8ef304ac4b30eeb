"""PostgresStore behind PgBouncer in transaction mode, as a fleet runs it behind a pooler.

The pooler is one this test starts itself (``pgbouncer`` on a free port, in a temporary
directory, ``pool_mode = transaction``, in front of the test PostgreSQL), dropping root for
the ``postgres`` user when the tests run as root. Without the program the test is skipped,
except under ``CI=true``. Every store goes through the pooler with asyncpg's statement
cache off; its ``LISTEN`` connection goes straight to the server (``listen_dsn``), since a
pooler in transaction mode never delivers notifications.
"""

from __future__ import annotations

import os
import pwd
import select
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import anyio
import asyncpg
import pytest

from humanlayer_async import StoreError
from humanlayer_async.stores import PostgresStore, StoreEvent

from .conftest import decision, make_request

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Bouncer:
    """A PgBouncer of the test's own: its DSN, and what it logged once stopped."""

    def __init__(self, process: subprocess.Popen[bytes], dsn: str, started: bytes) -> None:
        self.process, self.dsn, self._output = process, dsn, started

    def stop(self) -> str:
        """Stop it (SIGTERM) and return everything it logged."""
        if self.process.returncode is None:
            self.process.terminate()
            try:
                _, rest = self.process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                _, rest = self.process.communicate()
            self._output += rest
        return self._output.decode(errors="replace")


def _read_until(process: subprocess.Popen[bytes], marker: bytes, seconds: float) -> bytes:
    """What ``process`` wrote to stderr up to ``marker``, waiting on the pipe (not polling)."""
    assert process.stderr is not None
    output, deadline = b"", time.monotonic() + seconds
    while marker not in output:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([process.stderr], [], [], remaining)[0]:
            pytest.fail(f"pgbouncer did not start within {seconds} s: {output.decode(errors='replace')}")
        chunk = os.read(process.stderr.fileno(), 65536)
        if not chunk:
            pytest.fail(f"pgbouncer exited ({process.wait()}): {output.decode(errors='replace')}")
        output += chunk
    return output


@pytest.fixture
def bouncer(pg_dsn: str) -> Iterator[Bouncer]:
    program = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")  # Debian's
    user = "postgres" if os.geteuid() == 0 else None  # pgbouncer refuses to run as root
    missing = program is None
    if user is not None:
        try:
            pwd.getpwnam(user)
        except KeyError:
            missing = True
    if missing or program is None:
        reason = "pgbouncer (Debian package pgbouncer) and, as root, a postgres user are needed"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    server = urlsplit(pg_dsn)
    login = server.username or "postgres"
    database = server.path.lstrip("/") or login
    target = f"host={server.hostname or '127.0.0.1'} port={server.port or 5432} dbname={database}"
    directory = Path(tempfile.mkdtemp(prefix="hl-pgbouncer-"))
    try:
        port = _free_port()
        (directory / "users.txt").write_text(f'"{login}" ""\n')
        (directory / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"{database} = {target}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {directory / 'users.txt'}\n"
            "pool_mode = transaction\n"
            # Two server connections for every client: consecutive transactions of one
            # client land on different ones, so any session state would be lost or leak.
            "default_pool_size = 2\n"
            "log_stats = 0\n" + (f"user = {user}\n" if user is not None else "")
        )
        # pgbouncer itself drops root for ``user`` after binding its port, so the process
        # started here is pgbouncer's own and stops with it (runuser would stand in between).
        process = subprocess.Popen(
            [program, str(directory / "pgbouncer.ini")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        running = Bouncer(process, f"postgresql://{login}@127.0.0.1:{port}/{database}", b"")
        try:
            running._output = _read_until(process, b"process up", 30)
            yield running
        finally:
            running.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def admin(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the server, past the pooler."""
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


def _watch(store: PostgresStore) -> AsyncGenerator[StoreEvent, None]:
    """``store.watch()``, iterated by hand and closed by the test (an async generator)."""
    return cast("AsyncGenerator[StoreEvent, None]", store.watch())


async def _listening_pids(admin: asyncpg.Connection, store: PostgresStore) -> list[int]:
    """The server backends of ``store`` whose last statement was its ``LISTEN``."""
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN %'",
        store.application_name,
    )
    return [row["pid"] for row in rows]


@pytest.mark.parametrize("cache_off", ["argument", "dsn"])
async def test_two_processes_behind_pgbouncer_see_each_others_requests_and_decisions(
    bouncer: Bouncer, pg_dsn: str, pg_schema: str, cache_off: str
) -> None:
    def handle() -> PostgresStore:
        if cache_off == "argument":
            return PostgresStore(bouncer.dsn, schema=pg_schema, statement_cache_size=0, listen_dsn=pg_dsn)
        return PostgresStore(f"{bouncer.dsn}?schema={pg_schema}&statement_cache_size=0", listen_dsn=pg_dsn)

    agent, decider = handle(), handle()
    try:
        await agent.list_pending()
        await decider.list_pending()
        agent_events, decider_events = _watch(agent), _watch(decider)
        with anyio.fail_after(15):
            await agent.create(make_request("p1"))
            assert await anext(decider_events) == StoreEvent("requested", "p1")
            [pending] = await decider.list_pending()
            assert pending.id == "p1" and pending.kwargs == {"amount": 5}

            stands = await decider.decide(decision("p1", True, "cfo"))
            assert stands.by == "cfo"
            assert await anext(agent_events) == StoreEvent("requested", "p1")  # its own
            assert await anext(agent_events) == StoreEvent("decided", "p1")
            decided = await agent.get("p1")
            assert decided.decision is not None and decided.decision.by == "cfo"
            assert (await agent.decide(decision("p1", False, "late"))).by == "cfo"  # the first stands
        await agent_events.aclose()
        await decider_events.aclose()
    finally:
        await agent.aclose()
        await decider.aclose()
    logged = bouncer.stop()
    # Both handles' pools really went through the pooler (the LISTEN connections did not).
    assert logged.count(f"login attempt: db={urlsplit(bouncer.dsn).path[1:]}") >= 2, logged


async def test_every_store_operation_works_through_pgbouncer_in_transaction_mode(
    bouncer: Bouncer, pg_dsn: str, pg_schema: str
) -> None:
    # Eight client connections share the pooler's two server connections: a statement that
    # relied on the session (a prepared statement, SET, a session lock) would fail or leak.
    stores = [
        PostgresStore(bouncer.dsn, schema=pg_schema, statement_cache_size=0, listen_dsn=pg_dsn, max_size=4)
        for _ in range(2)
    ]
    done: list[int] = []

    async def one(index: int) -> None:
        store, other = stores[index % 2], stores[(index + 1) % 2]
        request_id, soon = f"op{index}", datetime.now(UTC) + timedelta(minutes=1)
        request = make_request(request_id, run_id="fleet", key=f"key-{index}", digest="d")
        assert (await store.create_or_attach(request)).id == request_id
        again = make_request(f"dup{index}", run_id="fleet", key=f"key-{index}", digest="d")
        assert (await other.create_or_attach(again)).id == request_id  # attached, not created
        assert [await other.claim(f"code-{index}", soon), await store.claim(f"code-{index}", soon)] == [
            True,
            False,
        ]
        assert (await other.decide(decision(request_id, True, f"by{index}"))).by == f"by{index}"
        assert await store.begin_execution(request_id, "d") is None  # this caller runs it
        await store.finish_execution(request_id, "ok", '"done"')
        earlier = await other.begin_execution(request_id, "d")
        assert earlier is not None and (earlier.state, earlier.outcome) == ("executed", "ok")
        events = [entry.event for entry in await other.history(request_id=request_id)]
        assert events == ["approval.requested", "approval.decided"]
        done.append(index)

    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for index in range(8):
                    tg.start_soon(one, index)
            assert await stores[0].list_pending(run_id="fleet") == []
            assert await stores[1].prune(0) == 8
    finally:
        for store in stores:
            await store.aclose()
    assert sorted(done) == list(range(8))


@pytest.mark.parametrize("statement_cache_size", [0, 100])
async def test_the_statement_cache_must_be_off_when_transactions_change_server_connections(
    bouncer: Bouncer, pg_dsn: str, pg_schema: str, admin: asyncpg.Connection, statement_cache_size: int
) -> None:
    # The control that shows the pooler's hazard is real here: with asyncpg's cache on, a
    # statement prepared on one server connection is gone when the next transaction gets another.
    store = PostgresStore(
        bouncer.dsn,
        schema=pg_schema,
        statement_cache_size=statement_cache_size,
        listen_dsn=pg_dsn,
        min_size=1,
        max_size=1,
    )
    holder = await asyncpg.connect(bouncer.dsn, statement_cache_size=0)
    try:
        await store.create(make_request("s1"))
        assert (await store.get("s1")).id == "s1"  # prepared on the one server connection there is
        await holder.execute("BEGIN; SELECT 1")  # that connection is now held by another client
        if statement_cache_size:
            with pytest.raises(StoreError, match="prepared statement"):
                await store.get("s1")
        else:
            assert (await store.get("s1")).id == "s1"
            assert [request.id for request in await store.list_pending()] == ["s1"]
        await holder.execute("COMMIT")
    finally:
        await holder.close()
        await store.aclose()


async def test_a_decision_made_while_the_listen_connection_was_down_is_found_after_it_reconnects(
    bouncer: Bouncer, pg_dsn: str, pg_schema: str, admin: asyncpg.Connection
) -> None:
    agent = PostgresStore(bouncer.dsn, schema=pg_schema, statement_cache_size=0, listen_dsn=pg_dsn)
    decider = PostgresStore(bouncer.dsn, schema=pg_schema, statement_cache_size=0, listen_dsn=pg_dsn)
    try:
        await decider.list_pending()
        await agent.create(make_request("w1"))
        events = _watch(agent)
        with anyio.fail_after(15):
            assert await anext(events) == StoreEvent("requested", "w1")
            # Both handles' LISTEN connections (one schema, one application_name), each waited
            # for until its backend is gone: the decision's NOTIFY cannot reach them.
            listening = await _listening_pids(admin, agent)
            assert len(listening) == 2
            for pid in listening:
                assert await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)
            await decider.decide(decision("w1", True, "cfo"))
            assert [await anext(events), await anext(events)] == [
                StoreEvent("resync", ""),
                StoreEvent("decided", "w1"),
            ]
            assert set(await _listening_pids(admin, agent)) - set(listening)  # the agent's new one
            await decider.create(make_request("w2"))  # and notifications flow again
            assert await anext(events) == StoreEvent("requested", "w2")
        await events.aclose()
        request = await agent.get("w1")
        assert request.decision is not None and request.decision.by == "cfo"
    finally:
        await agent.aclose()
        await decider.aclose()
