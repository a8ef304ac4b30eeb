"""Slack's side of the soak test, in a process of its own: the fake Web API, and the clicks.

    python -m tests.soak_slack SIGNING_SECRET APPROVER

Prints ``{"api": "<base url>"}`` once the fake Slack serves. Then, for each line
``{"listener": URL, "expect": N}`` read from stdin, it waits until N more approval messages
were posted, and answers them as fast as the machine allows, over loopback HTTP to the
listener, all mixed up:

- each approver's decision (approve, or deny through the deny modal), and the same callback
  again (a replay: Slack retries, users double-click);
- for half the messages a forged callback deciding the other way (signed with a wrong secret);
- for a tenth a callback signed by Slack from someone who is not an approver;
- for half a malformed one (signed garbage or unsigned bytes).

It prints one JSON line per cycle: statuses by kind, how long the callbacks took, and how
many message updates (``chat.update``) arrived for the cycle's requests.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import sys
import time
from collections import Counter
from typing import Any

import aiohttp

from humanlayer_async.testing import (
    sign_slack_body,
    slack_block_actions,
    slack_form_body,
    slack_view_submission,
)

from .fake_slack import FakeSlack

WORKERS = 32  # connections in flight to the listener
PATIENCE = 300.0  # seconds to wait for a cycle's messages or updates


def approves(n: int) -> bool:
    """The approver's decision on ``pay(n)``: yes for even ``n``, no (with a reason) for odd."""
    return n % 2 == 0


def _genuine(request_id: str, n: int, approver: str) -> dict[str, Any]:
    if approves(n):
        return slack_block_actions(request_id, "approve", user=approver)
    return slack_view_submission(request_id, f"no to {n}", user=approver)


def _opposite(request_id: str, n: int, user: str) -> dict[str, Any]:
    if approves(n):
        return slack_view_submission(request_id, "forged denial", user=user)
    return slack_block_actions(request_id, "approve", user=user)


def callbacks(
    messages: list[tuple[str, int]], secret: str, approver: str, rng: random.Random
) -> list[tuple[str, bytes, dict[str, str]]]:
    """Every callback of one cycle, as ``(kind, body, headers)``, shuffled."""
    out: list[tuple[str, bytes, dict[str, str]]] = []
    for index, (request_id, n) in enumerate(messages):
        body = slack_form_body(_genuine(request_id, n, approver))
        headers = sign_slack_body(body, secret)
        out += [("genuine", body, headers), ("replay", body, headers)]
        if index % 2 == 0:
            forged = slack_form_body(_opposite(request_id, n, approver))
            out.append(("forged", forged, sign_slack_body(forged, secret + "-guess")))
            junk = b"payload=%7B%22type%22%3A" + rng.randbytes(20).hex().encode()
            out.append(("malformed", junk, sign_slack_body(junk, secret)))
        else:
            out.append(
                ("malformed", rng.randbytes(64), {"Content-Type": "application/x-www-form-urlencoded"})
            )
        if index % 10 == 0:
            spoofed = slack_form_body(_opposite(request_id, n, "U0MALLORY"))
            out.append(("spoofed", spoofed, sign_slack_body(spoofed, secret)))
    rng.shuffle(out)
    return out


_CALL = re.compile(r"pay\(n=(\d+)\)")


def _request_id(message: dict[str, Any]) -> str:
    """The request id in a posted message's Approve button."""
    return next(
        str(element["value"]).split()[0]  # the request id, then the call's fingerprint
        for block in message["blocks"]
        if block["type"] == "actions"
        for element in block["elements"]
        if element["action_id"] == "hl_approve"
    )


async def _until(condition: Any) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the soak cycle stalled")
        await asyncio.sleep(0.05)


async def _cycle(slack: FakeSlack, command: dict[str, Any], secret: str, approver: str, seen: int) -> int:
    expect = int(command["expect"])
    updates_before = len(slack.received("chat.update"))
    await _until(lambda: len(slack.received("chat.postMessage")) >= seen + expect)
    posted = slack.received("chat.postMessage")[seen : seen + expect]
    messages = [(_request_id(call.data), int(_CALL.fullmatch(call.data["text"]).group(1))) for call in posted]  # type: ignore[union-attr]
    todo = callbacks(messages, secret, approver, random.Random(seen))
    statuses: dict[str, Counter[int]] = {}
    url = command["listener"] + "/slack/events"
    queue = iter(todo)

    async def worker(session: aiohttp.ClientSession) -> None:
        for kind, body, headers in queue:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                statuses.setdefault(kind, Counter())[response.status] += 1

    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=WORKERS)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(WORKERS)))
    elapsed = time.perf_counter() - started
    await _until(lambda: len(slack.received("chat.update")) >= updates_before + expect)
    await asyncio.sleep(0.5)  # a second update for any message would arrive by now
    report = {
        "messages": len(messages),
        "callbacks": len(todo),
        "seconds": round(elapsed, 3),
        "per_second": round(len(todo) / elapsed, 1),
        "statuses": {
            kind: {str(code): n for code, n in counter.items()} for kind, counter in statuses.items()
        },
        "updates": len(slack.received("chat.update")) - updates_before,
    }
    print(json.dumps(report), flush=True)
    return seen + expect


async def main() -> None:
    secret, approver = sys.argv[1:3]
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with FakeSlack() as slack:
        print(json.dumps({"api": slack.api_url}), flush=True)
        seen = 0
        while line := await reader.readline():
            seen = await _cycle(slack, json.loads(line), secret, approver, seen)


if __name__ == "__main__":
    asyncio.run(main())
