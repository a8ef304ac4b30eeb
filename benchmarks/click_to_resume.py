"""Benchmark 2: click to resume, over loopback HTTP, from another process.

N approvals pending behind ``SlackChannel`` (its Web API answered by a local Slack
stand-in in a third process). A load generator in another process sends Slack-signed
``block_actions`` callbacks (an Approve click per request) to the embedded listener's
``/slack/events``. Each callback is timed from the moment it is sent to the first line of
the tool it approved; both processes read ``CLOCK_MONOTONIC``, which they share.

Runs:

- latency: the callbacks sent at a fixed rate (500/s), open loop: p50 / p99 / max from
  sending to the tool resuming, and the acknowledgement latency;
- throughput: the callbacks sent as fast as ``concurrency`` connections allow, closed
  loop; the same for the baselines, on the same server (uvicorn on our listener's socket):
  the bare slack-bolt ASGI app acknowledging the same signed payloads (signature checked,
  ``ack()`` only), and a bare Starlette endpoint that parses the form and answers 200.

    python -m benchmarks.click_to_resume [--smoke] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import anyio
from slack_sdk.web.async_client import AsyncWebClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from humanlayer_async import HumanLayer
from humanlayer_async.channels import SlackChannel
from humanlayer_async.testing import sign_slack_body, slack_block_actions, slack_form_body

from ._common import ROOT, Report, Row, Target, arguments, median, percentile, quiet_logging, run, serving
from ._slack_stand_in import TOKEN

NAME = "click_to_resume"
SECRET = "bench-signing-secret"
USER = "U0BENCH"
P99_TARGET_MS = 25.0
THROUGHPUT_TARGET = 0.8


@dataclass
class Sizes:
    pending: int
    rate: float
    concurrency: int
    repeats: int


FULL = Sizes(pending=1_000, rate=500.0, concurrency=32, repeats=3)
SMOKE = Sizes(pending=30, rate=200.0, concurrency=4, repeats=1)


def now() -> float:
    """CLOCK_MONOTONIC: one clock for every process on this machine."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


# -- the load generator (its own process) -------------------------------------------------


async def generate(url: str, bodies: list[dict[str, Any]], rate: float | None, concurrency: int) -> list[Any]:
    """Send every body to ``url``: at ``rate`` per second (open loop), or back to back."""
    signed = [(body["id"], body["body"].encode(), sign_slack_body(body["body"], SECRET)) for body in bodies]
    records: list[list[Any]] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(request_id: str, body: bytes, headers: dict[str, str]) -> None:
            sent = now()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                records.append([request_id, sent, now(), response.status])

        async with anyio.create_task_group() as task_group:
            if rate is not None:
                start = now()
                for index, item in enumerate(signed):
                    delay = start + index / rate - now()
                    if delay > 0:
                        await anyio.sleep(delay)
                    task_group.start_soon(send, *item)
            else:
                queue = iter(signed)

                async def worker() -> None:
                    for item in queue:
                        await send(*item)

                for _ in range(concurrency):
                    task_group.start_soon(worker)
    return records


def generator_main(args: argparse.Namespace) -> int:
    bodies = json.loads(Path(args.generate[1]).read_text(encoding="utf-8"))
    rate = None if args.rate == 0 else args.rate
    records = asyncio.run(generate(args.generate[0], bodies, rate, args.concurrency))
    Path(args.generate[2]).write_text(json.dumps(records), encoding="utf-8")
    return 0


async def load(
    url: str, request_ids: Sequence[str], rate: float | None, concurrency: int, scratch: Path
) -> list[Any]:
    """Run the load generator in another process against ``url``; its records (id, sent, acked, status)."""
    bodies = [
        {"id": request_id, "body": slack_form_body(slack_block_actions(request_id, user=USER)).decode()}
        for request_id in request_ids
    ]
    source, sink = scratch / "bodies.json", scratch / "records.json"
    await anyio.Path(source).write_text(json.dumps(bodies), encoding="utf-8")
    command = [
        sys.executable,
        "-m",
        f"benchmarks.{NAME}",
        "--generate",
        url,
        str(source),
        str(sink),
        "--rate",
        str(rate or 0),
        "--concurrency",
        str(concurrency),
    ]
    await anyio.run_process(command, cwd=ROOT, stdout=None, stderr=None)
    records: list[Any] = json.loads(await anyio.Path(sink).read_text(encoding="utf-8"))
    return records


# -- the server side ------------------------------------------------------------------


@asynccontextmanager
async def slack_stand_in() -> AsyncIterator[str]:
    """The Slack Web API stand-in in a third process; yields its URL."""
    process = await anyio.open_process(
        [sys.executable, "-m", "benchmarks._slack_stand_in"], cwd=ROOT, stderr=subprocess.DEVNULL
    )
    async with process:
        assert process.stdout is not None and process.stdin is not None
        line = b""
        while not line.endswith(b"\n"):
            line += await process.stdout.receive(1)
        try:
            yield line.decode().strip()
        finally:
            await process.stdin.aclose()
            with anyio.move_on_after(5):
                await process.wait()


@dataclass
class Run:
    """One run against our listener: per request, when sent / acknowledged / resumed, and the status."""

    sent: dict[str, float]
    acked: dict[str, float]
    resumed: dict[str, float]
    statuses: list[int]

    def latencies(self) -> list[float]:
        return [self.resumed[request_id] - sent for request_id, sent in self.sent.items()]

    def ack_latencies(self) -> list[float]:
        return [self.acked[request_id] - sent for request_id, sent in self.sent.items()]

    def throughput(self) -> float:
        return len(self.sent) / (max(self.resumed.values()) - min(self.sent.values()))


async def ours(sizes: Sizes, stand_in: str, rate: float | None, scratch: Path) -> Run:
    """N approvals pending behind SlackChannel; the generator clicks Approve on each."""
    channel = SlackChannel(bot_token=TOKEN, signing_secret=SECRET, channel="C0BENCH", base_url=stand_in)
    resumed: dict[int, float] = {}
    done = anyio.Event()
    async with HumanLayer([channel], listen="127.0.0.1:0") as hl, aiohttp.ClientSession() as client:

        @hl.require_approval()
        async def tool(i: int) -> int:
            resumed[i] = now()
            if len(resumed) == sizes.pending:
                done.set()
            return i

        async def posted() -> int:
            async with client.get(f"{stand_in}/stats") as response:
                count: int = (await response.json())["posted"]
                return count

        async with anyio.create_task_group() as task_group:
            target = await posted() + sizes.pending  # the stand-in outlives a run: count this one's
            for i in range(sizes.pending):
                task_group.start_soon(tool, i)
            while True:  # the stand-in is another process: ask it what it has received
                if await posted() >= target:
                    break
                await anyio.sleep(0.05)
            index = {request.id: request.kwargs["i"] for request in await hl.pending()}
            assert hl.url is not None
            records = await load(f"{hl.url}/slack/events", list(index), rate, sizes.concurrency, scratch)
            with anyio.fail_after(30):
                await done.wait()
    return Run(
        sent={record[0]: record[1] for record in records},
        acked={record[0]: record[2] for record in records},
        resumed={request_id: resumed[i] for request_id, i in index.items()},
        statuses=[record[3] for record in records],
    )


def bolt_app(stand_in: str) -> ASGIApp:
    """The bare slack-bolt ASGI app: verifies the signature, acknowledges every click.

    Its one ``auth.test`` (bolt checks its token once) goes to the Slack stand-in.
    """
    from slack_bolt.adapter.asgi.async_handler import AsyncSlackRequestHandler
    from slack_bolt.async_app import AsyncApp

    client = AsyncWebClient(token=TOKEN, base_url=f"{stand_in}/")
    app = AsyncApp(signing_secret=SECRET, client=client)

    @app.action(re.compile(".*"))
    async def acknowledge(ack: Any) -> None:
        await ack()

    handler: Any = AsyncSlackRequestHandler(app)
    return cast(ASGIApp, handler)


def starlette_app() -> ASGIApp:
    """A bare Starlette endpoint: parse the form and its JSON payload, answer 200."""

    async def events(request: Request) -> Response:
        form = await request.form()
        payload = form.get("payload")
        json.loads(payload if isinstance(payload, str) else "{}")
        return Response(status_code=200)

    return Starlette(routes=[Route("/slack/events", events, methods=["POST"])])


async def baseline(app: ASGIApp, sizes: Sizes, rate: float | None, scratch: Path) -> list[Any]:
    ids = [secrets.token_hex(16) for _ in range(sizes.pending)]
    async with serving(app) as url:
        return await load(f"{url}/slack/events", ids, rate, sizes.concurrency, scratch)


def _throughput(records: list[Any]) -> float:
    first: float = min(record[1] for record in records)
    last: float = max(record[2] for record in records)
    return len(records) / (last - first)


async def measure(sizes: Sizes, scratch: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {"ours": {}, "bolt": {}, "starlette": {}}
    async with slack_stand_in() as stand_in:
        paced = await ours(sizes, stand_in, sizes.rate, scratch)
        latencies = [value * 1e3 for value in paced.latencies()]
        acks = [value * 1e3 for value in paced.ack_latencies()]
        figures["ours"]["paced"] = {
            "rate": sizes.rate,
            "resume_ms": {"p50": median(latencies), "p99": percentile(latencies, 99), "max": max(latencies)},
            "ack_ms": {"p50": median(acks), "p99": percentile(acks, 99)},
            "statuses": sorted(set(paced.statuses)),
            "resumed": len(paced.resumed),
        }
        rates: dict[str, list[float]] = {"ours": [], "bolt": [], "starlette": []}
        for _ in range(sizes.repeats):
            rates["ours"].append((await ours(sizes, stand_in, None, scratch)).throughput())
            rates["bolt"].append(_throughput(await baseline(bolt_app(stand_in), sizes, None, scratch)))
            rates["starlette"].append(_throughput(await baseline(starlette_app(), sizes, None, scratch)))
        for kind in ("bolt", "starlette"):
            records = await baseline(
                bolt_app(stand_in) if kind == "bolt" else starlette_app(), sizes, sizes.rate, scratch
            )
            acked = [(r[2] - r[1]) * 1e3 for r in records]
            figures[kind]["paced"] = {
                "rate": sizes.rate,
                "ack_ms": {"p50": median(acked), "p99": percentile(acked, 99)},
                "statuses": sorted({r[3] for r in records}),
            }
    for kind, values in rates.items():
        figures[kind]["throughput_per_s"] = median(values)
        figures[kind]["throughput_runs"] = values
    return figures


def _extend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generate", nargs=3, metavar=("URL", "BODIES", "RECORDS"), help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=32, help=argparse.SUPPRESS)


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(NAME, __doc__ or "", argv, _extend)
    logging_setup = quiet_logging()
    if args.generate:
        return generator_main(args)
    sizes = SMOKE if args.smoke else FULL
    report = Report(
        NAME,
        f"Click to resume: {sizes.pending:,} pending, Slack-signed clicks from another process",
        args.smoke,
        settings={
            "pending": sizes.pending,
            "paced_rate_per_s": sizes.rate,
            "concurrency": sizes.concurrency,
            "throughput_repeats": sizes.repeats,
            "clock": "CLOCK_MONOTONIC in both processes",
            "processes": "ours / the baselines; the load generator (aiohttp); the Slack Web API stand-in",
            "logging": logging_setup,
        },
    )
    with _scratch() as scratch:
        figures = anyio.run(measure, sizes, scratch)
    ours_f, bolt_f, plain_f = figures["ours"], figures["bolt"], figures["starlette"]
    paced = ours_f["paced"]
    report.rows += [
        Row(
            "throughput, closed loop",
            "callbacks/s",
            bolt_f["throughput_per_s"],
            ours_f["throughput_per_s"],
            "bare slack-bolt",
        ),
        Row(
            "throughput, closed loop",
            "callbacks/s",
            plain_f["throughput_per_s"],
            ours_f["throughput_per_s"],
            "bare Starlette form",
        ),
        Row(
            f"ack latency p50 at {sizes.rate:g}/s",
            "ms",
            bolt_f["paced"]["ack_ms"]["p50"],
            paced["ack_ms"]["p50"],
            "bare slack-bolt",
        ),
        Row(
            f"ack latency p99 at {sizes.rate:g}/s",
            "ms",
            bolt_f["paced"]["ack_ms"]["p99"],
            paced["ack_ms"]["p99"],
            "bare slack-bolt",
        ),
        Row(f"send → tool resumed p50 at {sizes.rate:g}/s", "ms", None, paced["resume_ms"]["p50"], "—"),
        Row(f"send → tool resumed p99 at {sizes.rate:g}/s", "ms", None, paced["resume_ms"]["p99"], "—"),
    ]
    factor = ours_f["throughput_per_s"] / bolt_f["throughput_per_s"]
    report.targets += [
        Target(
            "throughput_vs_bolt",
            f"at least {THROUGHPUT_TARGET:g}x the bare slack-bolt app's throughput",
            f"{factor:.2f}x",
            factor >= THROUGHPUT_TARGET,
        ),
        Target(
            "p99_click_to_resume",
            f"p99 from sending the click to the tool resuming under {P99_TARGET_MS:g} ms at {sizes.rate:g}/s",
            f"{paced['resume_ms']['p99']:.1f} ms",
            paced["resume_ms"]["p99"] < P99_TARGET_MS,
        ),
    ]
    report.extra["figures"] = figures
    report.finish(args.out)
    return 0


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bench-") as directory:
        yield Path(directory)


if __name__ == "__main__":
    run(main)
