"""Slack: a bot in your own slack-bolt app asks for approval in the conversation's thread.

Mention the bot (``@refunds refund order 1234 $250``) and its agent answers in the thread
of the mention. A refund over $100 needs a human: the request, with Approve and Deny
buttons, is posted as a reply in that same thread, and whoever mentioned the bot may not
approve it. The outcome follows in the thread, then the agent's answer: the tool's result,
or the refusal as a sentence (``on_reject="return"``), as an LLM would read it.

- ``slack.attach(app)``: the clicks come in through the Bolt app's own Request URL,
  verified by Bolt, next to the app's own handlers.
- ``with slack.thread(channel=..., thread_ts=..., requested_by=...)`` around each agent
  turn: its requests go to that thread; concurrent conversations keep their own.
- The mention handler only starts the turn in a task group and returns, so Slack gets
  its answer at once (it resends an event after 3 seconds), an approval may take hours,
  and no conversation waits for another.

The agent is scripted (a regular expression, no LLM): swap ``agent_turn`` for your
model, with ``issue_refund`` as one of its tools.

Run it::

    export SLACK_BOT_TOKEN=xoxb-... SLACK_SIGNING_SECRET=... SLACK_APPROVAL_CHANNEL=C0123456789
    python examples/slack_bolt_agent.py

and set the Slack app's Event Subscriptions and Interactivity Request URLs to
``https://<public host>/slack/events`` (a tunnel such as ngrok while developing), with
the bot event ``app_mention`` and the scopes ``app_mentions:read``, ``chat:write``,
``users:read`` and ``users:read.email``. Optional: ``SLACK_APPROVERS`` (who may approve
refunds: user ids, emails or user groups, comma-separated; default anyone but the
requester), ``SLACK_API_URL`` (the Web API's base URL: a proxy or a test server), ``HOST``
(default 127.0.0.1) and ``PORT`` (default 3000; 0 picks a free port); it prints
``listening on http://HOST:PORT/slack/events``. ``EXAMPLE_CONVERSATIONS=N`` stops it after
N conversations (tests use it). Without ``SLACK_BOT_TOKEN`` it says what to set, and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import anyio
import structlog
import uvicorn
from anyio.abc import TaskGroup
from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from humanlayer_async import HumanLayer
from humanlayer_async.channels import SlackChannel

# The SDK's event log: warnings only, on stderr, to keep the output readable.
structlog.configure(
    wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    logger_factory=structlog.PrintLoggerFactory(sys.stderr),
)
log = structlog.get_logger()

SETUP = """\
examples/slack_bolt_agent.py runs a Slack bot, so it needs a Slack app. Set:
  SLACK_BOT_TOKEN         the bot token (xoxb-...)
  SLACK_SIGNING_SECRET    the app's signing secret
  SLACK_APPROVAL_CHANNEL  where requests made outside a conversation go (C0123456789 or #name)
and optionally SLACK_APPROVERS, SLACK_API_URL, HOST, PORT (default 3000), EXAMPLE_CONVERSATIONS.
Setting up the Slack app: docs/channels/slack.md"""

# "refund order 1234 $250", "please refund #A-17 $1,200.50"
REFUND = re.compile(
    r"\brefund\s+(?:order\s+)?#?(?P<order>[A-Za-z0-9-]{1,32})\s+\$?(?P<amount>\d[\d,]*(?:\.\d{1,2})?)\b",
    re.IGNORECASE,
)
HELP = "I can refund orders: mention me with `refund order 1234 $250`."
REMEMBERED_EVENTS = 1000  # event ids kept to recognise Slack's retries


@dataclass(frozen=True)
class Settings:
    bot_token: str
    signing_secret: str
    approval_channel: str
    approvers: tuple[str, ...]
    api_url: str
    host: str
    port: int
    conversations: int | None  # stop after this many; None: serve until stopped

    @classmethod
    def from_environment(cls) -> Settings | None:
        """The settings, or ``None`` when nothing is configured (no ``SLACK_BOT_TOKEN``)."""
        env = os.environ
        if not env.get("SLACK_BOT_TOKEN"):
            return None
        missing = [name for name in ("SLACK_SIGNING_SECRET", "SLACK_APPROVAL_CHANNEL") if not env.get(name)]
        if missing:
            sys.exit(f"set {' and '.join(missing)} too\n\n{SETUP}")
        return cls(
            bot_token=env["SLACK_BOT_TOKEN"],
            signing_secret=env["SLACK_SIGNING_SECRET"],
            approval_channel=env["SLACK_APPROVAL_CHANNEL"],
            approvers=tuple(a.strip() for a in env.get("SLACK_APPROVERS", "").split(",") if a.strip()),
            api_url=env.get("SLACK_API_URL") or "https://slack.com/api/",
            host=env.get("HOST") or "127.0.0.1",
            port=int(env.get("PORT") or 3000),
            conversations=int(env["EXAMPLE_CONVERSATIONS"]) if env.get("EXAMPLE_CONVERSATIONS") else None,
        )


async def issue_refund(order_id: str, amount: float) -> str:
    """Refund an order (your payment provider's API goes here)."""
    return f"Refunded ${amount:,.2f} on order {order_id}."


def inert(text: str) -> str:
    """``text`` as Slack shows it literally: no ``<!channel>``, mention or link can hide in it."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class RefundBot:
    """The team's bot: each mention starts one agent turn, answered in the mention's thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # process_before_response: Bolt runs the handler before it answers Slack, instead of
        # in a task of its own. The handler only starts the turn, so the answer is immediate.
        self.app = AsyncApp(
            token=settings.bot_token, signing_secret=settings.signing_secret, process_before_response=True
        )
        self.app.client.base_url = settings.api_url  # the clients Bolt makes per request copy it
        self.slack = SlackChannel(
            bot_token=settings.bot_token, channel=settings.approval_channel, base_url=settings.api_url
        )
        self.slack.attach(self.app)  # the Approve and Deny clicks come through the app
        # listen=None: the app serves, nothing of our own. The requests live in memory here:
        # docs/deployment.md has stores that outlive the process (store=).
        self.hl = HumanLayer([self.slack], listen=None, timeout=timedelta(hours=8))
        self.refund = self.hl.require_approval(
            condition=lambda order_id, amount: amount > 100,
            approvers=settings.approvers or None,
            on_reject="return",
        )(issue_refund)
        self.app.event("app_mention")(self.on_mention)
        self.server = uvicorn.Server(
            uvicorn.Config(self.web(), log_level="warning", lifespan="off", access_log=False)
        )
        self._turns: TaskGroup | None = None
        self._seen: dict[str, None] = {}  # recent event ids, oldest first
        self._finished = 0

    def web(self) -> Starlette:
        """The Bolt app behind its Starlette adapter, at ``/slack/events``."""
        handler = AsyncSlackRequestHandler(self.app)

        async def events(request: Request) -> Response:
            return await handler.handle(request)

        return Starlette(routes=[Route("/slack/events", events, methods=["POST"])])

    async def on_mention(self, body: dict[str, Any]) -> None:
        """An ``app_mention`` event: start the agent's turn and return (Bolt then acknowledges)."""
        event_id = str(body.get("event_id", ""))
        if event_id in self._seen:  # Slack sent it again, thinking it lost: one turn is enough
            return
        self._seen[event_id] = None
        if len(self._seen) > REMEMBERED_EVENTS:
            del self._seen[next(iter(self._seen))]
        assert self._turns is not None  # set before the server starts
        self._turns.start_soon(self.converse, body["event"])

    async def converse(self, event: dict[str, Any]) -> None:
        """One conversation turn, answered in the thread; its failure ends no other."""
        channel, user, text = event["channel"], event["user"], event["text"]
        thread_ts = event.get("thread_ts") or event["ts"]  # mentioned in a thread: answer there
        print(f"<@{user}> in {channel}/{thread_ts}: {text}", flush=True)
        try:
            with self.slack.thread(channel=channel, thread_ts=thread_ts, requested_by=user):
                answer = await self.agent_turn(text)
            await self.app.client.chat_postMessage(channel=channel, thread_ts=thread_ts, text=inert(answer))
            print(f"answered in {channel}/{thread_ts}: {answer}", flush=True)
        except Exception as exc:
            log.error("conversation_failed", channel=channel, thread_ts=thread_ts, error=repr(exc))
        self._finished += 1
        if self.settings.conversations is not None and self._finished >= self.settings.conversations:
            self.server.should_exit = True

    async def agent_turn(self, text: str) -> str:
        """Plays the LLM: reads what was asked, calls the tool, answers with its result."""
        asked = REFUND.search(text)
        if asked is None:
            return HELP
        return await self.refund(asked["order"], float(asked["amount"].replace(",", "")))

    async def serve(self) -> None:
        """Run the HumanLayer and the conversations, and serve the app until stopped."""
        # Bound now, so that with PORT=0 the address is known (and printed) before serving.
        with socket.create_server((self.settings.host, self.settings.port)) as listening:
            url = f"http://{self.settings.host}:{listening.getsockname()[1]}/slack/events"
            async with self.hl, anyio.create_task_group() as turns:
                self._turns = turns
                print(f"listening on {url}", flush=True)
                await self.server.serve(sockets=[listening])
                turns.cancel_scope.cancel()  # stopped: turns still waiting for a human end here


def main() -> None:
    settings = Settings.from_environment()
    if settings is None:
        print(SETUP)
        return
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: uvicorn stops serving, then we end
        asyncio.run(RefundBot(settings).serve())


if __name__ == "__main__":
    main()
