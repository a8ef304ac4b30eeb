"""The soak test: thousands of approvals pending, and Slack-signed callbacks as fast as the
machine allows: every genuine decision, each replayed, mixed with forged, spoofed and
malformed ones. Slack (its Web API and the clicking) runs in a process of its own
(``tests/soak_slack.py``); everything goes over loopback.

``HUMANLAYER_SOAK_SIZE`` sets the approvals pending at once in the first cycle (default 1,000,
so that the suite stays short; the issue's full run is 10,000), which is measured for
throughput. Two more cycles of half that size run under ``tracemalloc``, to check that what
one cycle leaves behind does not grow the next. The numbers are printed (``pytest -s``), not
asserted.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from humanlayer_async import HumanLayer, current_decision
from humanlayer_async.channels import SlackChannel
from humanlayer_async.stores import MemoryStore
from humanlayer_async.testing import wait_for_pending

from .durable_helpers import ROOT, _env
from .fake_slack import BOT_TOKEN
from .hostile import SLACK_APPROVER, SLACK_SECRET
from .soak_slack import approves

pytestmark = pytest.mark.anyio

SIZE = int(os.environ.get("HUMANLAYER_SOAK_SIZE", "1000"))
# The first cycle warms up, the second settles the containers that never shrink (dicts of
# tasks, requests, decisions grown to the peak); the growth over the last one is measured.
SIZES = (SIZE, SIZE // 2, SIZE // 2, SIZE // 2)
RETENTION = 1.0  # seconds the memory store keeps decided requests
GROWTH_PER_REQUEST = 64  # bytes a cycle may leave behind per request (noise, caches); a leak is far more
DEADLINE = 240.0  # seconds for the whole soak; it stops by itself


@pytest.fixture
def anyio_backend() -> str:
    # Without asyncio's debug mode: the soak measures throughput, which its bookkeeping of
    # every task and callback would dominate. (The other tests keep it on.)
    return "asyncio"


class SlackProcess:
    """The soak's Slack: started, told to answer a cycle, read back."""

    def __init__(self, process: Process) -> None:
        assert process.stdout is not None and process.stdin is not None
        self.process = process
        self.lines = BufferedByteReceiveStream(process.stdout)

    async def read(self) -> dict[str, Any]:
        line = await self.lines.receive_until(b"\n", 1 << 20)
        return dict(json.loads(line))

    async def answer(self, listener: str, expect: int) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(json.dumps({"listener": listener, "expect": expect}).encode() + b"\n")


@pytest.fixture
async def slack_process() -> AsyncIterator[SlackProcess]:
    process = await anyio.open_process(
        [sys.executable, "-m", "tests.soak_slack", SLACK_SECRET, SLACK_APPROVER], env=_env(), cwd=ROOT
    )
    try:
        yield SlackProcess(process)
    finally:
        process.kill()
        with anyio.CancelScope(shield=True):
            await process.wait()
            await process.aclose()


async def test_soak(slack_process: SlackProcess) -> None:
    api = (await slack_process.read())["api"]
    channel = SlackChannel(
        bot_token=BOT_TOKEN,
        signing_secret=SLACK_SECRET,
        channel="C0APPROVALS",
        base_url=api,
        approvers=[SLACK_APPROVER],
    )
    store = MemoryStore(retention=RETENTION, audit_size=1000)  # both bounded: what a cycle may keep
    runs: Counter[int] = Counter()
    outcomes: dict[int, list[str]] = {}
    reports: list[dict[str, Any]] = []
    memory: list[int] = []
    snapshots: list[tracemalloc.Snapshot] = []
    with anyio.fail_after(DEADLINE):
        async with HumanLayer([channel], store=store, listen="127.0.0.1:0", timeout=DEADLINE * 2) as hl:
            assert hl.url is not None

            @hl.require_approval(on_reject="return")
            async def pay(n: int) -> str:
                runs[n] += 1
                decision = current_decision()
                assert decision is not None
                return f"paid {n} ({decision.by} via {decision.via})"

            async def call(n: int) -> None:
                outcomes.setdefault(n, []).append(await pay(n))

            first = 0
            for cycle, size in enumerate(SIZES):
                started = time.perf_counter()
                async with anyio.create_task_group() as tg:
                    for n in range(first, first + size):
                        tg.start_soon(call, n)
                        if n % 500 == 0:
                            await anyio.lowlevel.checkpoint()  # let the first ones get going
                    await slack_process.answer(hl.url, size)
                    report = await slack_process.read()
                report["cycle_seconds"] = round(time.perf_counter() - started, 3)
                reports.append(report)
                _check_cycle(report, outcomes, runs, first, size)
                first += size
                outcomes.clear()
                runs.clear()
                # Past the retention, one more decision prunes what the store may drop.
                await anyio.sleep(RETENTION * 1.1)
                await _one_more(hl)
                assert len(store) <= 1
                assert await hl.pending() == []
                gc.collect()
                if cycle == 0:
                    tracemalloc.start()
                else:
                    memory.append(tracemalloc.get_traced_memory()[0])
                    snapshots.append(tracemalloc.take_snapshot())
            snapshot_growth = memory[-1] - memory[-2]
            tracemalloc.stop()
    top = snapshots[-1].compare_to(snapshots[-2], "lineno")[:8]
    for report in reports:
        print(f"\nsoak cycle: {json.dumps(report)}")
    print(f"traced memory after each cycle from the second: {memory} (growth {snapshot_growth} bytes)")
    print("\n".join(map(str, top[:5])))
    assert snapshot_growth < GROWTH_PER_REQUEST * SIZES[-1], "\n".join(map(str, top))


def _check_cycle(
    report: dict[str, Any], outcomes: dict[int, list[str]], runs: Counter[int], first: int, size: int
) -> None:
    """Every genuine decision resolved its call once; nothing forged, spoofed or replayed decided."""
    statuses = report["statuses"]
    assert report["messages"] == size and report["updates"] == size  # one message, one update each
    # The second of two identical callbacks gets "already decided" (200), or, once the store's
    # retention has dropped the decided request, 404; the spoofed ones "not an approver" or 404.
    pairs = Counter(statuses["genuine"]) + Counter(statuses["replay"])
    assert set(pairs) <= {"200", "404"} and pairs["200"] >= size and pairs.total() == 2 * size
    assert statuses["forged"] == {"401": size // 2}
    assert set(statuses["spoofed"]) <= {"200", "404"} and sum(statuses["spoofed"].values()) == -(-size // 10)
    assert set(statuses["malformed"]) <= {"400", "401"} and sum(statuses["malformed"].values()) == size
    for n in range(first, first + size):
        if approves(n):
            assert outcomes[n] == [f"paid {n} ({SLACK_APPROVER} via slack)"] and runs[n] == 1, n
        else:
            assert outcomes[n] == [
                f"A human denied pay by {SLACK_APPROVER} via slack: no to {n}. It did not run."
            ]
            assert runs[n] == 0


async def _one_more(hl: HumanLayer) -> None:
    """One request decided through the API, so the memory store prunes what it may."""

    @hl.require_approval(channels=[])
    async def probe() -> None:
        return None

    async with anyio.create_task_group() as tg:
        tg.start_soon(probe)
        [request] = await wait_for_pending(hl)
        await hl.decide(request.id, True, by="soak")
