"""A local stand-in for Slack's Web API, with Slack's per-channel rate limit on posting.

It speaks the wire format ``SlackChannel`` uses (``chat.postMessage``, ``chat.update``,
``views.open``, ``chat.postEphemeral``: JSON or form bodies, a bearer token, ``{"ok": ...}``
answers) and, when ``rate`` is set, answers a ``chat.postMessage`` beyond ``rate`` messages
per channel in the last second with ``429`` and ``Retry-After`` (whole seconds, as Slack
does). ``GET /stats`` tells what it accepted and refused.

Run it as its own process (``python -m benchmarks._slack_stand_in [--rate R]``: it prints
its URL, then serves until stdin closes) or mount ``StandIn().app()`` in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._common import quiet_logging, serving

TOKEN = "xoxb-bench-token"
"""The bot token the stand-in accepts."""
WINDOW = 1.0


def request_ids(blocks: Any) -> Iterator[str]:
    """The request ids a message's buttons carry (the first word of their ``value``s)."""
    if isinstance(blocks, dict):
        if isinstance(blocks.get("value"), str):
            yield blocks["value"].split(" ")[0]
        for value in blocks.values():
            yield from request_ids(value)
    elif isinstance(blocks, list):
        for value in blocks:
            yield from request_ids(value)


@dataclass
class StandIn:
    """The stand-in's state: messages posted per channel, refusals, updates."""

    rate: float | None = None
    posted: list[dict[str, Any]] = field(default_factory=list)
    updated: int = 0
    refused: int = 0
    unauthorized: int = 0
    first_post: float | None = None
    last_post: float | None = None
    _recent: dict[str, collections.deque[float]] = field(default_factory=dict)
    _waiters: list[tuple[int, anyio.Event]] = field(default_factory=list)

    async def delivered(self, count: int) -> None:
        """Wait until ``count`` messages have been posted."""
        if len(self.posted) < count:
            event = anyio.Event()
            self._waiters.append((count, event))
            await event.wait()

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/chat.postMessage", self.post_message, methods=["POST"]),
                Route("/chat.update", self.update, methods=["POST"]),
                Route("/chat.postEphemeral", self.ok, methods=["POST"]),
                Route("/views.open", self.ok, methods=["POST"]),
                Route("/auth.test", self.auth_test, methods=["POST"]),
                Route("/users.info", self.users_info, methods=["GET"]),
                Route("/stats", self.stats, methods=["GET"]),
            ]
        )

    def stats_dict(self) -> dict[str, Any]:
        ids = [request_id for message in self.posted for request_id in request_ids(message.get("blocks"))]
        return {
            "posted": len(self.posted),
            "distinct_requests": len(set(ids)),
            "refused_429": self.refused,
            "updated": self.updated,
            "unauthorized": self.unauthorized,
            "first_post": self.first_post,
            "last_post": self.last_post,
        }

    async def _body(self, request: Request) -> dict[str, Any] | None:
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            self.unauthorized += 1
            return None
        if request.headers.get("content-type", "").startswith("application/json"):
            data: dict[str, Any] = await request.json()
            return data
        form = await request.form()
        return {key: value for key, value in form.items() if isinstance(value, str)}

    def _retry_after(self, channel: str, now: float) -> int | None:
        """Seconds to wait (``None``: within the limit, and counted) for a post to ``channel``."""
        if self.rate is None:
            return None
        recent = self._recent.setdefault(channel, collections.deque())
        while recent and recent[0] <= now - WINDOW:
            recent.popleft()
        if len(recent) < self.rate:
            recent.append(now)
            return None
        return max(1, math.ceil(recent[0] + WINDOW - now))

    async def post_message(self, request: Request) -> Response:
        body = await self._body(request)
        if body is None:
            return JSONResponse({"ok": False, "error": "invalid_auth"})
        channel = str(body.get("channel", ""))
        now = time.monotonic()
        wait = self._retry_after(channel, now)
        if wait is not None:
            self.refused += 1
            return JSONResponse(
                {"ok": False, "error": "ratelimited"}, status_code=429, headers={"Retry-After": str(wait)}
            )
        blocks = body.get("blocks")
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        self.posted.append({"channel": channel, "blocks": blocks})
        self.first_post = self.first_post or now
        self.last_post = now
        for count, event in self._waiters:
            if len(self.posted) >= count:
                event.set()
        ts = f"1700000000.{len(self.posted):06d}"
        return JSONResponse({"ok": True, "channel": channel, "ts": ts, "message": {"ts": ts}})

    async def update(self, request: Request) -> Response:
        body = await self._body(request)
        if body is None:
            return JSONResponse({"ok": False, "error": "invalid_auth"})
        self.updated += 1
        return JSONResponse({"ok": True, "channel": body.get("channel"), "ts": body.get("ts")})

    async def ok(self, request: Request) -> Response:
        body = await self._body(request)
        return JSONResponse({"ok": body is not None})

    async def auth_test(self, request: Request) -> Response:
        if await self._body(request) is None:
            return JSONResponse({"ok": False, "error": "invalid_auth"})
        return JSONResponse(
            {
                "ok": True,
                "team_id": "T0TEST",
                "user_id": "U0BOT",
                "bot_id": "B0BOT",
                "team": "test",
                "user": "bot",
            }
        )

    async def users_info(self, request: Request) -> Response:
        """Whoever clicked, with an email (the channel asks once per user and caches it)."""
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            self.unauthorized += 1
            return JSONResponse({"ok": False, "error": "invalid_auth"})
        user = request.query_params.get("user", "")
        return JSONResponse(
            {"ok": True, "user": {"id": user, "profile": {"email": f"{user.lower()}@example.com"}}}
        )

    async def stats(self, request: Request) -> Response:
        return JSONResponse(self.stats_dict())


async def _serve(rate: float | None) -> None:
    async with serving(StandIn(rate).app()) as url:
        print(url, flush=True)
        # Serve until the parent closes our stdin.
        await anyio.to_thread.run_sync(sys.stdin.read)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._slack_stand_in")
    parser.add_argument("--rate", type=float, default=None, help="messages per second per channel")
    args = parser.parse_args(argv)
    quiet_logging()
    asyncio.run(_serve(args.rate))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
