"""Benchmark 7: a fleet on one PostgreSQL, and one process on SQLite, at the database's pace.

PostgreSQL: P agent processes each hold N gated calls pending on one ``PostgresStore``
schema (a fresh one, dropped afterwards); this process decides every one of them with C
concurrent ``hl.decide()`` calls, in random order. Measured:

- requests created per second: P x N over the time from "go" (said to every agent at once)
  until the last agent has every request stored;
- decisions stored per second: P x N over the time the C deciders took;
- resume latency: from ``hl.decide()`` returning here (the decision is stored) to the first
  line of the tool in the agent process (``CLOCK_MONOTONIC``, one clock for every process),
  p50 / p99 / max across processes;
- RSS per pending call in an agent process: its resident set growth from before the calls
  to when all N are pending, over N.

Baseline, in the same run on the same server: plain asyncpg transactions of the same shape,
C at once from one process (a pool of C connections): ``INSERT`` of a request row and
``pg_notify``, then a conditional ``UPDATE ... WHERE status = 'pending'`` and ``pg_notify``.

SQLite: the same shape in one process (N gated calls on a ``SQLiteStore`` file, decided by C
concurrent ``hl.decide()`` calls), against plain ``sqlite3`` transactions on a file in WAL
mode (one ``INSERT`` transaction per request, then one conditional ``UPDATE`` per decision).

Every run checks that every call was decided and its tool ran exactly once.

    python -m benchmarks.fleet [--smoke] [--processes P] [--calls N] [--deciders C] [--out FILE]
    python -m benchmarks.fleet --processes 8 --calls 125000 --out benchmarks/results/fleet_large.json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import secrets
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from humanlayer_async import ApprovalRequest, HumanLayer
from humanlayer_async.stores import Store

from ._common import ROOT, Report, Row, Target, arguments, percentile, quiet_logging, rss_bytes, run

NAME = "fleet"
DSN = os.environ.get("HUMANLAYER_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")
FULL = {"processes": 4, "calls": 5_000, "deciders": 32}
SMOKE = {"processes": 2, "calls": 50, "deciders": 8}
BASELINE_MAX = 20_000
"""At most this many rows for the plain baselines (a rate needs no more)."""
RATE_TARGET = 0.5
P99_TARGET_MS = 50.0
RSS_TARGET_KIB = 4.0
T = TypeVar("T")
TIMEOUT = 6 * 3600.0
"""The gated calls' timeout: none may time out, however large the run."""


def now() -> float:
    """CLOCK_MONOTONIC: one clock for every process on this machine."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def say(*words: object) -> None:
    print(*words, flush=True)


def _summary(seconds: Sequence[float]) -> dict[str, float]:
    ms = [value * 1e3 for value in seconds]
    return {"p50": percentile(ms, 50), "p99": percentile(ms, 99), "max": max(ms)}


# -- an agent process -------------------------------------------------------------------


async def agent(schema: str, first: int, n: int, out: Path) -> None:
    """Hold ``n`` gated calls pending (``i`` from ``first`` on); once every tool ran, write
    when each started to ``out``."""
    from humanlayer_async.stores import PostgresStore

    store = PostgresStore(DSN, schema=schema)
    async with HumanLayer([], store=store, listen=None, timeout=TIMEOUT) as hl:
        resumed: dict[int, float] = {}
        runs = 0

        @hl.require_approval()
        async def tool(i: int) -> None:
            nonlocal runs
            resumed[i] = now()
            runs += 1

        all_stored = _counting(store, n)
        gc.collect()
        before = rss_bytes() or 0
        say("ready")
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        assert line.strip() == "go"
        started = now()
        # Plain tasks, as asyncio.gather() makes of an agent's concurrent tool calls (a task
        # group's would add its own bookkeeping per call to what is measured).
        calls = [asyncio.create_task(tool(i)) for i in range(first, first + n)]
        await all_stored.wait()
        created = now()
        gc.collect()
        after = rss_bytes() or 0
        say("created", repr(started), repr(created), (after - before) / n)
        await asyncio.gather(*calls)
        await anyio.Path(out).write_text(json.dumps({"resumed": resumed, "runs": runs}), encoding="utf-8")
    say("done")


def _extend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--processes", type=int, help="agent processes (default 4)")
    parser.add_argument("--calls", type=int, help="gated calls pending in each (default 5,000)")
    parser.add_argument("--deciders", type=int, help="concurrent hl.decide() calls (default 32)")
    parser.add_argument("--skip-sqlite", action="store_true", help="measure PostgreSQL only")
    parser.add_argument("--role", choices=("agent",), help=argparse.SUPPRESS)
    parser.add_argument("--schema", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--agent-out", type=Path, help=argparse.SUPPRESS)


# -- this process: PostgreSQL -----------------------------------------------------------


class Agent:
    """An agent process: reads what it says, line by line."""

    def __init__(self, process: Process, out: Path) -> None:
        assert process.stdout is not None
        self.process = process
        self.out = out
        self.lines = BufferedByteReceiveStream(process.stdout)

    async def hear(self) -> list[str]:
        line = await self.lines.receive_until(b"\n", 4096)
        return line.decode().split()

    async def tell(self, word: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(f"{word}\n".encode())


@asynccontextmanager
async def agents(schema: str, processes: int, n: int, folder: Path) -> AsyncIterator[list[Agent]]:
    started: list[Agent] = []
    try:
        for index in range(processes):
            out = folder / f"agent{index}.json"
            command = [sys.executable, "-m", f"benchmarks.{NAME}", "--role", "agent", "--schema", schema]
            command += ["--first", str(index * n), "--count", str(n), "--agent-out", str(out)]
            started.append(Agent(await anyio.open_process(command, cwd=ROOT, stderr=None), out))
        with anyio.fail_after(300):
            for each in started:
                assert await each.hear() == ["ready"]
        yield started
    finally:
        with anyio.CancelScope(shield=True):
            for each in started:
                with anyio.move_on_after(30):
                    await each.process.wait()
                if each.process.returncode is None:
                    each.process.kill()
                await each.process.aclose()


async def ours_postgres(processes: int, n: int, deciders: int, paced_rate: float) -> dict[str, Any]:
    import asyncpg

    from humanlayer_async.stores import PostgresStore

    schema = f"bench_{secrets.token_hex(4)}"
    total = processes * n
    try:
        with tempfile.TemporaryDirectory() as folder:
            async with (
                HumanLayer([], store=PostgresStore(DSN, schema=schema), listen=None) as hl,
                agents(schema, processes, n, Path(folder)) as fleet,
            ):
                wal = [await _wal()]
                for each in fleet:
                    await each.tell("go")
                starts, ends, rss = [], [], []
                for each in fleet:
                    with anyio.fail_after(max(300.0, n / 20)):
                        word, started, created, per_call = await each.hear()
                    assert word == "created"
                    starts.append(float(started))
                    ends.append(float(created))
                    rss.append(float(per_call))
                creation = total / (max(ends) - min(starts))
                wal.append(await _wal())
                connection = await asyncpg.connect(DSN)
                try:
                    rows = await connection.fetch(
                        f"SELECT id, (kwargs->>'i')::int AS i FROM {schema}.requests WHERE status = 'pending'"
                    )
                finally:
                    await connection.close()
                assert len(rows) == total, f"{len(rows)} pending, expected {total}"
                calls = [(row["id"], row["i"]) for row in rows]
                del rows
                random.Random(7).shuffle(calls)
                stored: dict[int, float] = {}
                half = len(calls) // 2

                async def decide(call: tuple[str, int]) -> None:
                    await hl.decide(call[0], True, by="bench")
                    stored[call[1]] = now()

                began = now()
                await _together(decide, calls[:half], deciders)
                decision = half / (now() - began)
                await _together(decide, calls[half:], deciders, paced_rate)
                first = {i for _, i in calls[:half]}
                unpaced: list[float] = []
                paced: list[float] = []
                runs = 0
                for each in fleet:
                    with anyio.fail_after(max(120.0, total / 200)):
                        assert await each.hear() == ["done"]
                    result = json.loads(each.out.read_text(encoding="utf-8"))
                    runs += result["runs"]
                    for i, at in result["resumed"].items():
                        (unpaced if int(i) in first else paced).append(at - stored[int(i)])
                wal.append(await _wal())
                sizes = await _sizes(schema)
    finally:
        await _drop(schema)
    return {
        "created_per_s": creation,
        "decided_per_s": decision,
        "paced_per_s": paced_rate,
        "resume_ms": _summary(paced),
        "resume_unpaced_ms": _summary(unpaced),
        "rss_per_pending_bytes": max(rss),
        "tool_runs": runs,
        "resumed": len(paced) + len(unpaced),
        "wal_bytes_per_call": {
            "created": (wal[1] - wal[0]) / total,
            "decided_and_run": (wal[2] - wal[1]) / total,
        },
        "table_bytes_per_call": {table: size / total for table, size in sizes.items()},
    }


async def _wal() -> int:
    """Where PostgreSQL's write-ahead log is (bytes since it began): its growth is what was written."""
    return int(await _query("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))


async def _sizes(schema: str) -> dict[str, int]:
    """Each table's size on disk, with its indexes (after the run: every request decided)."""
    return {
        table: int(await _query(f"SELECT pg_total_relation_size('{schema}.{table}')"))
        for table in ("requests", "audit", "events")
    }


async def _query(sql: str) -> Any:
    import asyncpg

    connection = await asyncpg.connect(DSN)
    try:
        return await connection.fetchval(sql)
    finally:
        await connection.close()


async def _drop(schema: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(DSN)
    try:
        await connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await connection.close()


async def _together(
    step: Callable[[T], Awaitable[None]], items: Iterable[T], concurrency: int, rate: float | None = None
) -> None:
    """``step`` for each of ``items``, ``concurrency`` at once; with ``rate`` (per second), the
    k-th not before ``k / rate`` seconds from the first."""
    began = now()
    numbered = enumerate(items)

    async def worker() -> None:
        for k, item in numbered:
            if rate is not None:
                await anyio.sleep(max(0.0, began + k / rate - now()))
            await step(item)

    async with anyio.create_task_group() as task_group:
        for _ in range(concurrency):
            task_group.start_soon(worker)


async def plain_postgres(total: int, concurrency: int) -> dict[str, float]:
    """The baseline: ``total`` requests created, then decided, ``concurrency`` transactions at once."""
    import asyncpg

    schema = f"bench_{secrets.token_hex(4)}"
    channel = f"{schema}_events"
    pool = await asyncpg.create_pool(DSN, min_size=concurrency, max_size=concurrency)
    try:
        await pool.execute(f"CREATE SCHEMA {schema}")
        await pool.execute(
            f"CREATE TABLE {schema}.requests (id text PRIMARY KEY, function text NOT NULL,"
            " kwargs jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),"
            " status text NOT NULL DEFAULT 'pending', decided_by text, decided_at timestamptz)"
        )
        ids = [secrets.token_hex(16) for _ in range(total)]

        async def create(request_id: str) -> None:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    f"INSERT INTO {schema}.requests (id, function, kwargs) VALUES ($1, 'tool', $2)",
                    request_id,
                    '{"i": 1}',
                )
                await conn.execute("SELECT pg_notify($1, $2)", channel, f"requested:{request_id}")

        async def decide(request_id: str) -> None:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    f"UPDATE {schema}.requests SET status = 'approved', decided_by = 'bench',"
                    " decided_at = now() WHERE id = $1 AND status = 'pending'",
                    request_id,
                )
                await conn.execute("SELECT pg_notify($1, $2)", channel, f"decided:{request_id}")

        rates = {}
        for name, step in (("created_per_s", create), ("decided_per_s", decide)):
            began = now()
            await _together(step, ids, concurrency)
            rates[name] = total / (now() - began)
        return rates
    finally:
        await pool.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await pool.close()


# -- this process: SQLite ---------------------------------------------------------------


def _counting(store: Store, n: int) -> anyio.Event:
    """An event set once ``store`` has stored ``n`` requests (counted as its calls return)."""
    stored = 0
    all_stored = anyio.Event()
    create = store.create_or_attach

    async def counted(request: ApprovalRequest) -> ApprovalRequest:
        nonlocal stored
        result = await create(request)
        stored += 1
        if stored == n:
            all_stored.set()
        return result

    store.create_or_attach = counted  # type: ignore[method-assign]
    return all_stored


async def one_process(store: Store, n: int, deciders: int) -> dict[str, Any]:
    """The fleet's shape in one process: ``n`` gated calls on ``store``, decided by ``deciders``."""
    async with HumanLayer([], store=store, listen=None, timeout=TIMEOUT) as hl:
        resumed: dict[int, float] = {}

        @hl.require_approval()
        async def tool(i: int) -> None:
            resumed[i] = now()

        all_stored = _counting(store, n)
        async with anyio.create_task_group() as task_group:
            began = now()
            for i in range(n):
                task_group.start_soon(tool, i)
            await all_stored.wait()
            creation = n / (now() - began)
            calls = [(request.id, request.kwargs["i"]) for request in await hl.pending()]
            random.Random(7).shuffle(calls)
            decided: dict[int, float] = {}
            queue = iter(calls)

            async def decider() -> None:
                for request_id, i in queue:
                    await hl.decide(request_id, True, by="bench")
                    decided[i] = now()

            began = now()
            async with anyio.create_task_group() as deciding:
                for _ in range(deciders):
                    deciding.start_soon(decider)
            decision = n / (now() - began)
    latencies = [resumed[i] - at for i, at in decided.items()]
    return {
        "created_per_s": creation,
        "decided_per_s": decision,
        "resume_ms": _summary(latencies),
        "tool_runs": len(resumed),
    }


def plain_sqlite(total: int, folder: Path) -> dict[str, float]:
    """The baseline: one ``INSERT`` transaction per request, then one conditional ``UPDATE``
    transaction per decision, on a WAL file with ``synchronous=NORMAL`` (as ``SQLiteStore``)."""
    conn = sqlite3.connect(folder / "plain.db", isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(
            "CREATE TABLE requests (id TEXT PRIMARY KEY, function TEXT NOT NULL, kwargs TEXT NOT NULL,"
            " created_at REAL NOT NULL, status TEXT NOT NULL DEFAULT 'pending', decided_by TEXT,"
            " decided_at REAL)"
        )
        ids = [secrets.token_hex(16) for _ in range(total)]
        began = now()
        for request_id in ids:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO requests (id, function, kwargs, created_at) VALUES (?, 'tool', ?, ?)",
                (request_id, '{"i": 1}', time.time()),
            )
            conn.execute("COMMIT")
        creation = total / (now() - began)
        began = now()
        for request_id in ids:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "UPDATE requests SET status = 'approved', decided_by = 'bench', decided_at = ?"
                " WHERE id = ? AND status = 'pending'",
                (time.time(), request_id),
            )
            conn.execute("COMMIT")
        return {"created_per_s": creation, "decided_per_s": total / (now() - began)}
    finally:
        conn.close()


# -- the report -------------------------------------------------------------------------


async def measure(processes: int, n: int, deciders: int, sqlite: bool) -> dict[str, Any]:
    from humanlayer_async.stores import MemoryStore, SQLiteStore

    total = processes * n
    figures: dict[str, Any] = {"plain_postgres": await plain_postgres(min(total, BASELINE_MAX), deciders)}
    paced = RATE_TARGET * figures["plain_postgres"]["decided_per_s"]
    figures["postgres"] = await ours_postgres(processes, n, deciders, paced)
    if sqlite:
        with tempfile.TemporaryDirectory() as folder:
            size = min(n, BASELINE_MAX)
            figures["plain_sqlite"] = await anyio.to_thread.run_sync(plain_sqlite, size, Path(folder))
            figures["sqlite"] = await one_process(SQLiteStore(Path(folder) / "ours.db"), size, deciders)
            # The engine's own ceiling: the same shape with nothing written anywhere.
            figures["memory"] = await one_process(MemoryStore(), size, deciders)
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(NAME, __doc__ or "", argv, _extend)
    logging_setup = quiet_logging()
    if args.role == "agent":
        asyncio.run(agent(args.schema, args.first, args.count, args.agent_out))
        return 0
    size = SMOKE if args.smoke else FULL
    processes = args.processes or size["processes"]
    n = args.calls or size["calls"]
    deciders = args.deciders or size["deciders"]
    total = processes * n
    report = Report(
        NAME,
        f"Fleet: {processes} agent processes x {n:,} pending calls on one PostgreSQL, {deciders} deciders",
        args.smoke,
        settings={
            "agent_processes": processes,
            "pending_per_process": n,
            "deciders": deciders,
            "baseline_rows": min(total, BASELINE_MAX),
            "store": "PostgresStore (a fresh schema, dropped afterwards); SQLiteStore in a temporary folder",
            "clock": "CLOCK_MONOTONIC in every process",
            "logging": logging_setup,
        },
    )
    figures = anyio.run(measure, processes, n, deciders, not args.skip_sqlite)
    plain, ours = figures["plain_postgres"], figures["postgres"]
    for what, key in (("requests created", "created_per_s"), ("decisions stored", "decided_per_s")):
        report.rows.append(
            Row(f"PostgreSQL: {what} per second", "1/s", plain[key], ours[key], "plain asyncpg")
        )
        report.targets.append(
            Target(
                f"postgres_{key}",
                f"PostgreSQL: {what} at least {RATE_TARGET}x plain asyncpg",
                f"{ours[key] / plain[key]:.2f}x",
                ours[key] >= RATE_TARGET * plain[key],
            )
        )
    paced = f"{ours['paced_per_s']:,.0f}/s"
    for quantile in ("p50", "p99", "max"):
        for key, how in (("resume_ms", f"paced at {paced}"), ("resume_unpaced_ms", "at full speed")):
            report.rows.append(
                Row(
                    f"decision stored → tool running elsewhere, {how}, {quantile}",
                    "ms",
                    None,
                    ours[key][quantile],
                    "—",
                )
            )
    kib = ours["rss_per_pending_bytes"] / 1024
    report.rows.append(Row("RSS per pending call in an agent process", "KiB", None, kib, "—"))
    report.targets.append(
        Target(
            "resume_p99",
            f"resume p99 at most {P99_TARGET_MS:g} ms while decisions are stored at {RATE_TARGET}x"
            f" plain asyncpg's rate ({paced})",
            f"{ours['resume_ms']['p99']:.1f} ms",
            ours["resume_ms"]["p99"] <= P99_TARGET_MS,
        )
    )
    report.targets.append(
        Target(
            "rss_per_pending",
            f"at most {RSS_TARGET_KIB:g} KiB RSS per pending call",
            f"{kib:.2f} KiB",
            kib <= RSS_TARGET_KIB,
        )
    )
    report.targets.append(
        Target(
            "every_call_once",
            "every call decided and its tool run exactly once",
            f"{ours['tool_runs']:,} runs, {ours['resumed']:,} resumed, of {total:,}",
            ours["tool_runs"] == ours["resumed"] == total,
        )
    )
    if "sqlite" in figures:
        plain = figures["plain_sqlite"]
        for what, key in (("requests created", "created_per_s"), ("decisions stored", "decided_per_s")):
            for store, name in (("sqlite", "SQLiteStore"), ("memory", "MemoryStore (nothing written)")):
                report.rows.append(
                    Row(
                        f"one process, {name}: {what} per second",
                        "1/s",
                        plain[key],
                        figures[store][key],
                        "plain sqlite3 (WAL)",
                    )
                )
            ours = figures["sqlite"]
            report.targets.append(
                Target(
                    f"sqlite_{key}",
                    f"SQLite: {what} at least {RATE_TARGET}x plain sqlite3 in WAL mode",
                    f"{ours[key] / plain[key]:.2f}x"
                    f" (MemoryStore: {figures['memory'][key] / plain[key]:.2f}x)",
                    ours[key] >= RATE_TARGET * plain[key],
                )
            )
    if (
        "memory" in figures
        and figures["memory"]["decided_per_s"] < RATE_TARGET * figures["plain_sqlite"]["decided_per_s"]
    ):
        report.notes.append(
            "in one process, the engine with nothing written (MemoryStore) decides slower than half"
            " of plain sqlite3's one-statement transactions: each decision there also wakes its call,"
            " runs the tool and records the run, so the SQLite targets are above what any store"
            " reaches through the engine"
        )
    report.extra["figures"] = figures
    report.finish(args.out)
    return 0


if __name__ == "__main__":
    run(main)
