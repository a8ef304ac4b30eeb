"""Benchmark 3: a decision made in one process resumes a tool waiting in another.

Two processes share one ``PostgresStore`` (the real server; a fresh schema, dropped
afterwards). The waiter process holds N gated calls pending; this process decides them
one after another with ``hl.decide()``. Each decision is timed from just before
``decide()`` is called here to the first line of the tool there (``CLOCK_MONOTONIC``,
shared by both processes); the next decision is made once the waiter has said the last
one resumed, so no decision queues behind another.

Baseline, in the same run and the same two-process set-up: a raw ``NOTIFY`` sent here
(``SELECT pg_notify(...)``) to a connection that ``LISTEN``s there.

The DSN comes from ``HUMANLAYER_TEST_DSN`` (default ``postgresql://postgres@127.0.0.1:5432/test``).

    python -m benchmarks.across_processes [--smoke] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from humanlayer_async import HumanLayer

from ._common import ROOT, Report, Row, Target, arguments, median, percentile, quiet_logging, run

NAME = "across_processes"
DSN = os.environ.get("HUMANLAYER_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")
FULL = 1_000
SMOKE = 20
P99_TARGET_MS = 25.0


def now() -> float:
    """CLOCK_MONOTONIC: one clock for every process on this machine."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def say(*words: object) -> None:
    print(*words, flush=True)


# -- the other process ------------------------------------------------------------------


async def waiter(schema: str, n: int) -> None:
    """Hold ``n`` gated calls pending; say ``resumed <i> <time>`` as each tool starts."""
    from humanlayer_async.stores import PostgresStore

    async with HumanLayer([], store=PostgresStore(DSN, schema=schema), listen=None) as hl:

        @hl.require_approval()
        async def tool(i: int) -> int:
            say("resumed", i, repr(now()))
            return i

        async with anyio.create_task_group() as task_group:
            for i in range(n):
                task_group.start_soon(tool, i)
            while True:  # the requests are rows in another process's reach: count them
                if len(await hl.pending()) >= n:
                    break
                await anyio.sleep(0.05)
            say("ready")


async def listener(channel: str, n: int) -> None:
    """LISTEN on ``channel``; say ``notified <payload> <time>`` for each of ``n`` notifications."""
    import asyncpg

    connection = await asyncpg.connect(DSN)
    done = anyio.Event()
    seen = 0

    def notified(conn: Any, pid: int, channel: str, payload: object) -> None:
        nonlocal seen
        say("notified", payload, repr(now()))
        seen += 1
        if seen == n:
            done.set()

    try:
        await connection.add_listener(channel, notified)
        say("ready")
        await done.wait()
    finally:
        await connection.close()


def _extend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--role", choices=("waiter", "listener"), help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)


# -- this process -----------------------------------------------------------------------


class Peer:
    """The other process: reads what it says, line by line."""

    def __init__(self, process: Process) -> None:
        assert process.stdout is not None
        self.process = process
        self.lines = BufferedByteReceiveStream(process.stdout)

    async def hear(self) -> list[str]:
        line = await self.lines.receive_until(b"\n", 4096)
        return line.decode().split()


@asynccontextmanager
async def peer(role: str, name: str, count: int) -> AsyncIterator[Peer]:
    command = [
        sys.executable,
        "-m",
        f"benchmarks.{NAME}",
        "--role",
        role,
        "--name",
        name,
        "--count",
        str(count),
    ]
    async with await anyio.open_process(command, cwd=ROOT, stderr=None) as process:
        other = Peer(process)
        with anyio.fail_after(120):
            assert await other.hear() == ["ready"]
        yield other
        with anyio.fail_after(30):
            await process.wait()


async def notify_round_trips(n: int) -> list[float]:
    import asyncpg

    channel = f"bench_{secrets.token_hex(4)}"
    latencies: list[float] = []
    connection = await asyncpg.connect(DSN)
    try:
        async with peer("listener", channel, n) as other:
            for i in range(n):
                sent = now()
                await connection.execute("SELECT pg_notify($1, $2)", channel, str(i))
                word, payload, heard = await other.hear()
                assert word == "notified" and payload == str(i)
                latencies.append(float(heard) - sent)
    finally:
        await connection.close()
    return latencies


async def decisions(n: int, calls: list[float]) -> list[float]:
    """Decision → resume latencies; ``calls`` gets how long each ``hl.decide()`` took here."""
    import asyncpg

    from humanlayer_async.stores import PostgresStore

    schema = f"bench_{secrets.token_hex(4)}"
    latencies: list[float] = []
    try:
        async with (
            peer("waiter", schema, n) as other,
            HumanLayer([], store=PostgresStore(DSN, schema=schema), listen=None) as hl,
        ):
            pending = {request.kwargs["i"]: request.id for request in await hl.pending()}
            assert len(pending) == n
            for i, request_id in sorted(pending.items()):
                decided = now()
                await hl.decide(request_id, True, by="bench")
                calls.append(now() - decided)
                word, which, resumed = await other.hear()
                assert word == "resumed" and int(which) == i
                latencies.append(float(resumed) - decided)
    finally:
        connection = await asyncpg.connect(DSN)
        try:
            await connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await connection.close()
    return latencies


def _summary(latencies: list[float]) -> dict[str, float]:
    ms = [value * 1e3 for value in latencies]
    return {"p50": median(ms), "p99": percentile(ms, 99), "max": max(ms)}


async def measure(n: int) -> dict[str, Any]:
    calls: list[float] = []
    return {
        "notify_ms": _summary(await notify_round_trips(n)),
        "decision_ms": _summary(await decisions(n, calls)),
        "decide_call_ms": _summary(calls),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(NAME, __doc__ or "", argv, _extend)
    logging_setup = quiet_logging()
    if args.role == "waiter":
        asyncio.run(waiter(args.name, args.count))
        return 0
    if args.role == "listener":
        asyncio.run(listener(args.name, args.count))
        return 0
    n = SMOKE if args.smoke else FULL
    report = Report(
        NAME,
        f"Across processes: {n:,} decisions through PostgresStore, decided here, resumed in another process",
        args.smoke,
        settings={
            "decisions": n,
            "store": "PostgresStore (a fresh schema, dropped afterwards)",
            "clock": "CLOCK_MONOTONIC in both processes",
            "pacing": "one decision at a time: the next once the waiter said the last one resumed",
            "logging": logging_setup,
        },
    )
    figures = anyio.run(measure, n)
    notify, decision = figures["notify_ms"], figures["decision_ms"]
    for quantile in ("p50", "p99", "max"):
        report.rows.append(
            Row(
                f"decision → tool resumed, {quantile}",
                "ms",
                notify[quantile],
                decision[quantile],
                "raw NOTIFY→LISTEN",
            )
        )
    report.rows.append(
        Row(
            "hl.decide() call in the deciding process, p50", "ms", None, figures["decide_call_ms"]["p50"], "—"
        )
    )
    report.targets.append(
        Target(
            "p99_across_processes",
            f"p99 from decision to resume across processes under {P99_TARGET_MS:g} ms",
            f"{decision['p99']:.2f} ms",
            decision["p99"] < P99_TARGET_MS,
        )
    )
    report.extra["figures"] = figures
    report.finish(args.out)
    return 0


if __name__ == "__main__":
    run(main)
