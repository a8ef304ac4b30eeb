"""Benchmark 1: N gated calls pending at once in one process, then all decided.

For N = 1,000, 20,000 and 100,000: the time to suspend N calls (from creating their tasks
to every one waiting), the time to decide them all and see every tool run, and the memory
each pending call holds. Ours: an async tool behind ``require_approval()``, a
``MemoryStore``, no outbound channel, no listener, decided by ``hl.decide()``. Baseline: N
tasks awaiting bare asyncio Futures kept in a dict, resolved by ``set_result``.

Memory is measured twice: with tracemalloc (the bytes Python allocated while the calls
were pending, the figure the target is checked on), and as the growth of the resident set
in a fresh process (which includes the allocator's slack).

    python -m benchmarks.pending_scale [--smoke] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from humanlayer_async import HumanLayer
from humanlayer_async.stores import MemoryStore

from ._common import ROOT, Report, Row, Target, arguments, median, profile, quiet_logging, rss_bytes, run

NAME = "pending_scale"
SIZES = (1_000, 20_000, 100_000)
REPEATS = {1_000: 11, 20_000: 5, 100_000: 3}
TARGET_SIZE = 20_000
"""The N the targets are checked at (the largest size in a smoke run)."""
SMOKE_SIZES = (50, 200)
SMOKE_REPEATS = 2
KIB = 1024
MEMORY_TARGET = 2.5 * KIB
TIME_TARGET = 3.0
PROFILE_SIZE = 10_000


@dataclass
class Phases:
    """One run at one N: seconds to suspend all, to resolve all and resume, and bytes held."""

    suspend: float
    resume: float
    held: int


async def _until(condition: Callable[[], bool]) -> None:
    # The measurement ends when every task is suspended: each pass of the loop runs every
    # task once more, so yielding once per pass is how to see it without touching them.
    while not condition():  # noqa: ASYNC110 - a benchmark's clock, not library code
        await asyncio.sleep(0)


Meter = Callable[[], int]
"""What ``Phases.held`` is measured with: tracemalloc's traced bytes, or the RSS."""
Clock = Callable[[], float]
"""What the phases are timed with: ``time.perf_counter`` (wall) or ``time.process_time`` (CPU)."""


def _traced() -> int:
    return tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0


async def baseline(n: int, meter: Meter = _traced, clock: Clock = time.perf_counter) -> Phases:
    """N tasks awaiting bare Futures in a dict; every future resolved, every task finished."""
    loop = asyncio.get_running_loop()
    futures: dict[str, asyncio.Future[bool]] = {}

    async def call(i: int) -> int:
        future: asyncio.Future[bool] = loop.create_future()
        futures[str(i)] = future
        await future
        return i

    gc.collect()
    before = meter()
    start = clock()
    tasks = [asyncio.create_task(call(i)) for i in range(n)]
    await _until(lambda: len(futures) == n)
    suspended = clock()
    held = meter() - before
    for future in futures.values():
        future.set_result(True)
    results = await asyncio.gather(*tasks)
    done = clock()
    assert results == list(range(n))
    return Phases(suspended - start, done - suspended, held)


async def ours(n: int, meter: Meter = _traced, clock: Clock = time.perf_counter) -> Phases:
    """N gated calls pending in one HumanLayer; every one approved by ``decide()`` and run."""
    store = MemoryStore()
    async with HumanLayer([], store=store, listen=None) as hl:

        @hl.require_approval()
        async def tool(i: int) -> int:
            return i

        gc.collect()
        before = meter()
        start = clock()
        tasks = [asyncio.create_task(tool(i)) for i in range(n)]
        await _until(lambda: len(store) == n)
        suspended = clock()
        held = meter() - before
        ids = [request.id for request in await hl.pending()]
        resolving = clock()
        for request_id in ids:
            await hl.decide(request_id, True, by="bench")
        results = await asyncio.gather(*tasks)
        done = clock()
    assert results == list(range(n))
    return Phases(suspended - start, done - resolving, held)


IMPLEMENTATIONS = {"baseline": baseline, "ours": ours}


def _rss() -> int:
    return rss_bytes() or 0


def measure_rss(kind: str, n: int) -> int | None:
    """Resident-set growth while ``n`` calls are pending, measured in a fresh interpreter."""
    completed = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{NAME}", "--rss-probe", kind, str(n)],
        check=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    value = json.loads(completed.stdout.strip().splitlines()[-1])["rss_growth"]
    return None if value is None else int(value)


def _extend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rss-probe", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(NAME, __doc__ or "", argv, _extend)
    logging_setup = quiet_logging()
    if args.rss_probe:
        kind, n = args.rss_probe[0], int(args.rss_probe[1])
        growth = asyncio.run(IMPLEMENTATIONS[kind](n, _rss)).held if rss_bytes() else None
        print(json.dumps({"rss_growth": growth}))
        return 0
    sizes = SMOKE_SIZES if args.smoke else SIZES
    report = Report(
        NAME,
        "Pending scale: N gated calls pending in one process, then all decided",
        args.smoke,
        settings={
            "sizes": list(sizes),
            "repeats": {str(n): SMOKE_REPEATS if args.smoke else REPEATS[n] for n in sizes},
            "store": "MemoryStore",
            "channels": "none (no outbound channel, no listener); decided with hl.decide()",
            "logging": logging_setup,
            "gc": "enabled, gc.collect() before each run",
            "timing": "median over the repeats of time.perf_counter(); baseline and ours alternate",
            "memory": "tracemalloc: bytes allocated while the N calls were pending, divided by N "
            "(one extra run per N); rss: growth of the resident set in a fresh interpreter, "
            "divided by N",
        },
    )
    per_n: dict[str, Any] = {}
    for n in sizes:
        repeats = SMOKE_REPEATS if args.smoke else REPEATS[n]
        runs: dict[str, list[Phases]] = {"baseline": [], "ours": []}
        for _ in range(repeats):
            for kind, implementation in IMPLEMENTATIONS.items():
                runs[kind].append(asyncio.run(implementation(n)))
        memory: dict[str, int] = {}
        for kind, implementation in IMPLEMENTATIONS.items():
            tracemalloc.start()
            try:
                memory[kind] = asyncio.run(implementation(n)).held
            finally:
                tracemalloc.stop()
        rss = {kind: measure_rss(kind, n) for kind in IMPLEMENTATIONS}
        figures: dict[str, dict[str, float | None]] = {}
        for kind, phases in runs.items():
            suspend = median([p.suspend for p in phases]) / n * 1e6
            resume = median([p.resume for p in phases]) / n * 1e6
            total = median([p.suspend + p.resume for p in phases]) / n * 1e6
            growth = rss[kind]
            figures[kind] = {
                "suspend_us": suspend,
                "resume_us": resume,
                "total_us": total,
                "tracemalloc_bytes": memory[kind] / n,
                "rss_bytes": None if growth is None else growth / n,
            }
        per_n[str(n)] = figures
        base, us = figures["baseline"], figures["ours"]
        label = f"N={n:,}"
        report.rows += [
            Row(f"{label} suspend, per call", "µs", base["suspend_us"], us["suspend_us"], "bare Futures"),
            Row(
                f"{label} resolve+resume, per call", "µs", base["resume_us"], us["resume_us"], "bare Futures"
            ),
            Row(f"{label} total, per call", "µs", base["total_us"], us["total_us"], "bare Futures"),
            Row(
                f"{label} memory per pending (tracemalloc)",
                "bytes",
                base["tracemalloc_bytes"],
                us["tracemalloc_bytes"],
                "bare Futures",
            ),
            Row(
                f"{label} memory per pending (RSS)",
                "bytes",
                base["rss_bytes"],
                us["rss_bytes"],
                "bare Futures",
            ),
        ]
    checked = sizes[-1] if args.smoke else TARGET_SIZE
    figures_at = per_n[str(checked)]
    time_ratio = (figures_at["ours"]["total_us"] or 0) / (figures_at["baseline"]["total_us"] or 1)
    held = figures_at["ours"]["tracemalloc_bytes"] or 0
    report.targets += [
        Target(
            "time_vs_baseline",
            f"within {TIME_TARGET:g}x of bare Futures' time (suspend + decide + resume) at N={checked:,}",
            f"{time_ratio:.2f}x",
            time_ratio <= TIME_TARGET,
        ),
        Target(
            "memory_per_pending",
            f"at most {MEMORY_TARGET / KIB:g} KiB per pending approval at N={checked:,} (tracemalloc)",
            f"{held / KIB:.2f} KiB",
            held <= MEMORY_TARGET,
        ),
    ]
    report.extra["per_n"] = per_n
    if not all(target.met for target in report.targets):
        # A missed target: where our time goes, for the record (decided by hl.decide()).
        size = sizes[0] if args.smoke else PROFILE_SIZE
        report.extra["profile"] = {"n": size, **profile(lambda: asyncio.run(ours(size)))}
    report.finish(args.out)
    return 0


if __name__ == "__main__":
    run(main)
