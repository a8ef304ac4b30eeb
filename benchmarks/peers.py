"""Benchmark 4: the peers, side by side on the same workload.

1. LangGraph: N gated calls paused, then approved, no LLM. LangGraph's way is a node that
   calls ``interrupt()`` and a second ``ainvoke(Command(resume=True))`` per thread, with
   its in-memory checkpointer (``InMemorySaver``); ours is ``pending_scale``'s workload (N
   tasks waiting on ``require_approval()``, a ``MemoryStore``, decided by ``hl.decide()``).
   Compared: CPU time per approval (``time.process_time``, pause + resume) and memory per
   paused call (tracemalloc: bytes allocated while the N calls were paused, divided by N).
2. HumanLayer 0.7.9 (the ``humanlayer`` package from PyPI): the time from a human's
   decision to the tool running. Its ``AsyncHumanLayer`` creates the call over HTTP and
   then polls ``GET /function_calls/{id}`` every 3 seconds (its sync client has the same
   loop). Here it talks to a local stand-in for its API, which records the decision at a
   random moment of the wait. Ours: the decision arrives as an HTTP POST at the embedded
   listener (a channel route that calls the ``Decider``), timed from just before the POST
   is sent to the first line of the tool; and, without HTTP, from ``hl.decide()``.

A peer that is not installed (``pip install -e '.[bench]'``) is skipped, and the table says so.

    python -m benchmarks.peers [--smoke] [--out FILE]
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import random
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypedDict

import anyio
import httpx
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from humanlayer_async import ApprovalRequest, HumanLayer
from humanlayer_async.channels import BaseChannel, Decider

from . import pending_scale
from ._common import Report, Row, Target, arguments, median, percentile, profile, quiet_logging, run, serving

NAME = "peers"
KIB = 1024
CPU_TARGET = 100.0
MEMORY_TARGET = 15.0
LATENCY_TARGET = 1000.0
POLL_INTERVAL = 3.0
"""HumanLayer 0.7.9's wait loop: ``await self.sleep(3)`` between two polls."""


@dataclass
class Sizes:
    graph_calls: int
    graph_repeats: int
    polling_calls: int
    poll_scale: float
    listener_calls: int


FULL = Sizes(graph_calls=1_000, graph_repeats=5, polling_calls=30, poll_scale=1.0, listener_calls=500)
SMOKE = Sizes(graph_calls=20, graph_repeats=1, polling_calls=4, poll_scale=0.01, listener_calls=20)


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# -- 1. LangGraph ----------------------------------------------------------------------


@dataclass
class Sample:
    """One run: CPU seconds to pause N calls, CPU seconds to resume them, bytes held while paused."""

    pause: float
    resume: float
    held: int


class _State(TypedDict):
    i: int
    result: int | None


async def langgraph_run(n: int) -> Sample:
    """N threads each paused by ``interrupt()`` in a node, then resumed with ``Command``."""
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Command, interrupt

    async def tool(state: _State) -> dict[str, Any]:
        # An async node under ainvoke: LangGraph's cheapest way here (a sync node costs more).
        approved = interrupt({"function": "tool", "kwargs": {"i": state["i"]}})
        return {"result": state["i"] if approved else None}

    builder = StateGraph(_State)
    builder.add_node("tool", tool)
    builder.add_edge(START, "tool")
    builder.add_edge("tool", END)
    graph = builder.compile(checkpointer=InMemorySaver())

    def config(i: int) -> Any:
        return {"configurable": {"thread_id": str(i)}}

    gc.collect()
    before = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
    start = time.process_time()
    for i in range(n):
        paused = await graph.ainvoke({"i": i, "result": None}, config(i))
        assert "__interrupt__" in paused
    suspended = time.process_time()
    held = (tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0) - before
    for i in range(n):
        resumed = await graph.ainvoke(Command(resume=True), config(i))
        assert resumed["result"] == i
    done = time.process_time()
    return Sample(suspended - start, done - suspended, held)


async def ours_run(n: int) -> Sample:
    """``pending_scale``'s workload, timed in CPU seconds."""
    phases = await pending_scale.ours(n, clock=time.process_time)
    return Sample(phases.suspend, phases.resume, phases.held)


def _traced(runner: Callable[[int], Any], n: int) -> int:
    tracemalloc.start()
    try:
        sample: Sample = asyncio.run(runner(n))
    finally:
        tracemalloc.stop()
    return sample.held


def compare_langgraph(report: Report, sizes: Sizes) -> None:
    if not installed("langgraph"):
        report.notes.append("LangGraph skipped: not installed (pip install -e '.[bench]')")
        report.extra["langgraph"] = {"skipped": "not installed"}
        return
    from importlib.metadata import version

    n = sizes.graph_calls
    samples: dict[str, list[Sample]] = {"langgraph": [], "ours": []}
    for _ in range(sizes.graph_repeats):
        samples["langgraph"].append(asyncio.run(langgraph_run(n)))
        samples["ours"].append(asyncio.run(ours_run(n)))
    held = {"langgraph": _traced(langgraph_run, n), "ours": _traced(ours_run, n)}
    figures = {
        kind: {
            "cpu_pause_us": median([s.pause for s in runs]) / n * 1e6,
            "cpu_resume_us": median([s.resume for s in runs]) / n * 1e6,
            "cpu_total_us": median([s.pause + s.resume for s in runs]) / n * 1e6,
            "memory_bytes": held[kind] / n,
        }
        for kind, runs in samples.items()
    }
    lg, us = figures["langgraph"], figures["ours"]
    name = f"LangGraph {version('langgraph')}"
    report.rows += [
        Row(f"N={n:,} CPU to pause, per call", "µs", lg["cpu_pause_us"], us["cpu_pause_us"], name),
        Row(f"N={n:,} CPU to resume, per call", "µs", lg["cpu_resume_us"], us["cpu_resume_us"], name),
        Row(f"N={n:,} CPU pause + resume, per call", "µs", lg["cpu_total_us"], us["cpu_total_us"], name),
        Row(f"N={n:,} memory per paused call", "bytes", lg["memory_bytes"], us["memory_bytes"], name),
    ]
    cpu_factor = lg["cpu_total_us"] / us["cpu_total_us"]
    memory_factor = lg["memory_bytes"] / us["memory_bytes"]
    report.targets += [
        Target(
            "cpu_vs_langgraph",
            f"{CPU_TARGET:g}x less CPU time per approval (pause + resume) than LangGraph",
            f"{cpu_factor:.1f}x less",
            cpu_factor >= CPU_TARGET,
        ),
        Target(
            "memory_vs_langgraph",
            f"{MEMORY_TARGET:g}x less memory per paused call than LangGraph",
            f"{memory_factor:.1f}x less",
            memory_factor >= MEMORY_TARGET,
        ),
    ]
    report.extra["langgraph"] = {"version": version("langgraph"), "n": n, "figures": figures}
    if cpu_factor < CPU_TARGET:
        # A missed target: where our CPU time goes on this workload, for the record.
        report.extra["profile"] = {"n": n, **profile(lambda: asyncio.run(ours_run(n)))}


# -- 2. HumanLayer 0.7.9's polling, and our listener --------------------------------------


@dataclass
class StandIn:
    """A local stand-in for HumanLayer's API: function calls created, polled, decided here."""

    calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: dict[str, anyio.Event] = field(default_factory=dict)
    decided_at: dict[str, float] = field(default_factory=dict)
    polls: int = 0

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/function_calls", self.create, methods=["POST"]),
            Route("/function_calls/{call_id}", self.fetch, methods=["GET"]),
        ]

    def arrival(self, call_id: str) -> anyio.Event:
        return self.created.setdefault(call_id, anyio.Event())

    async def create(self, request: Request) -> Response:
        call = await request.json()
        self.calls[call["call_id"]] = call
        self.arrival(call["call_id"]).set()
        return JSONResponse(call)

    async def fetch(self, request: Request) -> Response:
        self.polls += 1
        call = self.calls.get(request.path_params["call_id"])
        return PlainTextResponse("not found", 404) if call is None else JSONResponse(call)

    def decide(self, call_id: str) -> None:
        """What the service does when a human clicks approve: the call's status is set."""
        now = datetime.now(UTC).isoformat()
        self.calls[call_id]["status"] = {"requested_at": now, "responded_at": now, "approved": True}
        self.decided_at[call_id] = time.perf_counter()


async def polling_latencies(calls: int, poll_scale: float, seed: int = 7) -> tuple[list[float], int]:
    """Decision → tool latencies of HumanLayer 0.7.9's ``AsyncHumanLayer``, and the polls it made."""
    from humanlayer import AsyncHumanLayer

    stand_in = StandIn()
    resumed: dict[str, float] = {}
    randomness = random.Random(seed)

    async def sleep(seconds: float) -> None:
        await asyncio.sleep(seconds * poll_scale)

    async with serving(Starlette(routes=stand_in.routes())) as url:
        ids = [f"call-{i}" for i in range(calls)]
        id_of = iter(ids)
        hl = AsyncHumanLayer(
            api_key="bench", api_base_url=url, run_id="bench", sleep=sleep, genid=lambda prefix: next(id_of)
        )

        @hl.require_approval()
        async def tool(call_id: str) -> str:
            resumed[call_id] = time.perf_counter()
            return call_id

        async def agent(call_id: str) -> None:
            assert await tool(call_id=call_id) == call_id

        async def human(call_id: str) -> None:
            await stand_in.arrival(call_id).wait()
            await asyncio.sleep(randomness.uniform(0, POLL_INTERVAL * poll_scale))
            stand_in.decide(call_id)

        async with anyio.create_task_group() as task_group:
            for call_id in ids:
                # One agent at a time creates its call, so the generated ids line up.
                task_group.start_soon(agent, call_id)
                await stand_in.arrival(call_id).wait()
                task_group.start_soon(human, call_id)
    return [resumed[call_id] - stand_in.decided_at[call_id] for call_id in ids], stand_in.polls


class DecisionRoute(BaseChannel):
    """A channel whose only job is a listener route: ``POST /bench/{id}`` approves that request."""

    name = "bench"

    def __init__(self, expected: int) -> None:
        self.decider: Decider | None = None
        self.expected = expected
        self.sent: list[ApprovalRequest] = []
        self.all_sent = anyio.Event()

    async def run(self, decider: Decider, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        self.decider = decider
        task_status.started()

    async def send(self, request: ApprovalRequest) -> str | None:
        self.sent.append(request)
        if len(self.sent) == self.expected:
            self.all_sent.set()
        return request.id

    def routes(self) -> Sequence[BaseRoute]:
        return [Route("/bench/{request_id}", self.approve, methods=["POST"])]

    async def approve(self, request: Request) -> Response:
        assert self.decider is not None
        answered = await self.decider.decide(
            request.path_params["request_id"], True, by="bench", via=self.name
        )
        return PlainTextResponse(answered.decision.status.value)


async def our_latencies(calls: int, *, over_http: bool) -> list[float]:
    """Decision → tool latencies of ours: ``calls`` pending, then decided one after the other."""
    channel = DecisionRoute(calls)
    resumed: dict[int, float] = {}
    woke: dict[int, anyio.Event] = {i: anyio.Event() for i in range(calls)}
    latencies: list[float] = []
    async with HumanLayer([channel], listen="127.0.0.1:0") as hl, httpx.AsyncClient() as client:

        @hl.require_approval()
        async def tool(i: int) -> int:
            resumed[i] = time.perf_counter()
            woke[i].set()
            return i

        async with anyio.create_task_group() as task_group:
            for i in range(calls):
                task_group.start_soon(tool, i)
            await channel.all_sent.wait()
            for request in channel.sent:
                i = request.kwargs["i"]
                sent = time.perf_counter()
                if over_http:
                    response = await client.post(f"{hl.url}/bench/{request.id}")
                    assert response.text == "approved"
                else:
                    await hl.decide(request.id, True, by="bench")
                await woke[i].wait()
                latencies.append(resumed[i] - sent)
    return latencies


def compare_polling(report: Report, sizes: Sizes) -> None:
    listener = asyncio.run(our_latencies(sizes.listener_calls, over_http=True))
    direct = asyncio.run(our_latencies(sizes.listener_calls, over_http=False))
    figures: dict[str, Any] = {
        "ours_listener_ms": {"p50": median(listener) * 1e3, "p99": percentile(listener, 99) * 1e3},
        "ours_decide_ms": {"p50": median(direct) * 1e3, "p99": percentile(direct, 99) * 1e3},
    }
    report.extra["polling"] = figures
    if not installed("humanlayer"):
        report.notes.append("HumanLayer 0.7.9 skipped: not installed (pip install -e '.[bench]')")
        figures["humanlayer"] = {"skipped": "not installed"}
        return
    from importlib.metadata import version

    polled, polls = asyncio.run(polling_latencies(sizes.polling_calls, sizes.poll_scale))
    name = f"HumanLayer {version('humanlayer')} polling"
    figures["humanlayer_ms"] = {"p50": median(polled) * 1e3, "p99": percentile(polled, 99) * 1e3}
    figures["humanlayer_polls"] = polls
    figures["poll_interval_s"] = POLL_INTERVAL * sizes.poll_scale
    interval = f"poll every {POLL_INTERVAL * sizes.poll_scale:g} s"
    report.rows += [
        Row(
            f"decision → tool, p50 ({interval}; ours via listener)",
            "ms",
            median(polled) * 1e3,
            median(listener) * 1e3,
            name,
        ),
        Row(
            f"decision → tool, p99 ({interval}; ours via listener)",
            "ms",
            percentile(polled, 99) * 1e3,
            percentile(listener, 99) * 1e3,
            name,
        ),
        Row(
            f"decision → tool, p50 ({interval}; ours via hl.decide)",
            "ms",
            median(polled) * 1e3,
            median(direct) * 1e3,
            name,
        ),
    ]
    factor = median(polled) / median(listener)
    report.targets.append(
        Target(
            "latency_vs_polling",
            f"{LATENCY_TARGET:g}x quicker from decision to resume than HumanLayer's polling "
            "(medians; ours through the listener, over loopback HTTP)",
            f"{factor:,.0f}x quicker",
            factor >= LATENCY_TARGET,
        )
    )
    report.notes.append(
        f"HumanLayer {version('humanlayer')}: {sizes.polling_calls} calls of the real AsyncHumanLayer "
        "against "
        "a local stand-in of its API (POST /function_calls, GET /function_calls/{id}); each decision is "
        f"made at a uniformly random moment within {interval} after the call was created"
        + ("" if sizes.poll_scale == 1 else " (smoke run: its sleep shortened)")
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(NAME, __doc__ or "", argv)
    logging_setup = quiet_logging()
    sizes = SMOKE if args.smoke else FULL
    report = Report(
        NAME,
        "Peers: LangGraph interrupt() and HumanLayer 0.7.9's polling, on the same workload",
        args.smoke,
        settings={
            "langgraph_calls": sizes.graph_calls,
            "langgraph_repeats": sizes.graph_repeats,
            "polling_calls": sizes.polling_calls,
            "listener_calls": sizes.listener_calls,
            "logging": logging_setup,
            "cpu_time": "time.process_time() (all threads), median over the repeats",
            "memory": "tracemalloc: bytes allocated while the N calls were paused, divided by N",
        },
    )
    compare_langgraph(report, sizes)
    compare_polling(report, sizes)
    report.finish(args.out)
    return 0


if __name__ == "__main__":
    run(main)
