"""Benchmark 5: outbound under Slack's rate limits.

N gated calls at once, each posted by ``SlackChannel`` (the Web API, ``chat.postMessage``)
to a local Slack stand-in that allows ``rate`` messages per second per channel and answers
the rest with ``429`` and ``Retry-After``. Every request must be delivered exactly once
(none lost, none doubled), and the time it took is set against the limit's lower bound: the
first ``rate`` messages at once, then ``rate`` more each second, ``(ceil(N / rate) - 1)`` seconds.

    python -m benchmarks.slack_rate_limit [--smoke] [--out FILE]
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import anyio

from humanlayer_async import HumanLayer
from humanlayer_async.channels import SlackChannel

from ._common import Report, Row, Target, arguments, quiet_logging, run, serving
from ._slack_stand_in import TOKEN, WINDOW, StandIn

NAME = "slack_rate_limit"
FULL = (500, 20.0)
SMOKE = (12, 5.0)


async def deliver(n: int, rate: float) -> dict[str, float | int | None]:
    """Post ``n`` requests through ``SlackChannel``; decide them once all are delivered."""
    stand_in = StandIn(rate)
    async with serving(stand_in.app()) as url:
        channel = SlackChannel(
            bot_token=TOKEN, signing_secret="bench-signing-secret", channel="C0BENCH", base_url=url
        )
        async with HumanLayer([channel], listen=None) as hl:
            ran: list[int] = []

            @hl.require_approval()
            async def tool(i: int) -> int:
                ran.append(i)
                return i

            async with anyio.create_task_group() as task_group:
                start = time.monotonic()
                for i in range(n):
                    task_group.start_soon(tool, i)
                with anyio.fail_after(max(60.0, 3 * n / rate)):
                    await stand_in.delivered(n)
                delivered = time.monotonic()
                for request in await hl.pending():
                    await hl.decide(request.id, True, by="bench")
    stats = stand_in.stats_dict()
    return {
        **stats,
        "requests": n,
        "ran": len(set(ran)),
        "seconds": delivered - start,
        "lower_bound_seconds": (math.ceil(n / rate) - 1) * WINDOW,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(NAME, __doc__ or "", argv)
    logging_setup = quiet_logging()
    n, rate = SMOKE if args.smoke else FULL
    report = Report(
        NAME,
        f"Outbound under Slack's rate limit: {n} requests, {rate:g} messages/s per channel",
        args.smoke,
        settings={
            "requests": n,
            "rate_per_channel": rate,
            "limit": "sliding one-second window per channel; 429 with Retry-After in whole seconds",
            "channel": "SlackChannel(channel=...) over the Web API to a local stand-in, one channel",
            "logging": logging_setup,
        },
    )
    figures = anyio.run(deliver, n, rate)
    seconds, bound = float(figures["seconds"] or 0), float(figures["lower_bound_seconds"] or 0)
    report.rows += [
        Row("time to deliver every request", "s", bound, seconds, "the limit's lower bound"),
        Row("messages delivered", "count", n, figures["posted"], "requests made"),
        Row("distinct requests delivered", "count", n, figures["distinct_requests"], "requests made"),
        Row("tools run after approval", "count", n, figures["ran"], "requests made"),
    ]
    lost = n - int(figures["distinct_requests"] or 0)
    doubled = int(figures["posted"] or 0) - int(figures["distinct_requests"] or 0)
    report.targets.append(
        Target(
            "all_delivered",
            "every request delivered exactly once (none lost, none doubled) under 429 + Retry-After",
            f"{figures['distinct_requests']} of {n} delivered, {lost} lost, {doubled} doubled, "
            f"{figures['refused_429']} answers 429 along the way",
            lost == 0 and doubled == 0 and figures["ran"] == n,
        )
    )
    report.notes.append(
        f"took {seconds / bound:.2f}x the lower bound" if bound else "the limit was never reached"
    )
    report.extra["figures"] = figures
    report.finish(args.out)
    return 0


if __name__ == "__main__":
    run(main)
