"""The demo: a scripted agent (no LLM, no network) works through the seed article's operations.

Reads run at once; writes wait for a human; a $100 transfer runs under the $1,000
condition. Every gated call waits concurrently, so the rest of the agent never stalls.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TextIO

import anyio

from ._client import HumanLayer
from ._exceptions import ApprovalDenied
from ._gate import current_decision
from ._models import Decision
from ._render import describe_decision
from ._terminal import write_lines

__all__ = ["DemoStep", "build_agent", "run_demo"]


Outcome = tuple[str, Decision | None]
"""What a demo tool returns: its result, and the decision that let it run (if one did)."""


def done(text: str) -> Outcome:
    return text, current_decision()


@dataclass(slots=True)
class DemoStep:
    """One tool call of the scripted agent and how it ended."""

    label: str
    call: Callable[[], Awaitable[Outcome]]
    outcome: str = ""
    ran: bool = False
    decision: Decision | None = None
    waited: float = 0.0

    def verdict(self) -> str:
        if self.decision is None:
            return "no approval needed"
        return f"{describe_decision(self.decision)}, after {self.waited:.1f}s"


def build_agent(hl: HumanLayer) -> list[DemoStep]:
    """The operations table of the seed article, as tools and one scripted run through them."""

    async def fetch_weather(city: str) -> Outcome:
        """Read the weather forecast (read-only)."""
        return done(f"12°C and clear in {city}")

    async def search_knowledge_base(query: str) -> Outcome:
        """Search the internal knowledge base (read-only)."""
        return done(f"3 articles about {query!r}")

    async def draft_email(to: str, subject: str) -> Outcome:
        """Write a draft without sending it."""
        return done(f"draft to {to} saved")

    @hl.require_approval()
    async def send_email(to: str, subject: str, body: str) -> Outcome:
        """Send an email to a customer. This cannot be unsent."""
        return done(f"email to {to} sent")

    @hl.require_approval(condition=lambda amount, **kwargs: amount > 1000)
    async def transfer_money(amount: float, recipient: str) -> Outcome:
        """Move money out of the company account."""
        return done(f"${amount:,.0f} sent to {recipient}")

    @hl.require_approval(context={"environment": "production", "rows affected": 1280})
    async def delete_database_records(table: str, where: str) -> Outcome:
        """Delete rows from a production table. Destructive."""
        return done(f"deleted from {table} where {where}")

    return [
        DemoStep("fetch weather", lambda: fetch_weather("Berlin")),
        DemoStep("search knowledge base", lambda: search_knowledge_base("refund policy")),
        DemoStep("draft email", lambda: draft_email("jane@example.com", "Your refund")),
        DemoStep(
            "send email",
            lambda: send_email("all-customers@example.com", "Your refund", "We refunded your order."),
        ),
        DemoStep("transfer $100", lambda: transfer_money(100, "ACME Supplies")),
        DemoStep("transfer $10,000", lambda: transfer_money(10_000, "Unknown Vendor Ltd")),
        DemoStep("delete database records", lambda: delete_database_records("orders", "created < 2020")),
    ]


async def run_demo(hl: HumanLayer, out: TextIO) -> list[DemoStep]:
    """Run every step at once, print progress as each ends, then a summary."""

    def say(*lines: str) -> None:
        write_lines(lines, out)  # outcomes carry comments typed by people: spelled out

    steps = build_agent(hl)

    async def run(step: DemoStep) -> None:
        started = time.monotonic()
        try:
            step.outcome, step.decision = await step.call()
            step.ran = True
        except ApprovalDenied as exc:
            step.outcome, step.decision = str(exc), exc.decision
        step.waited = time.monotonic() - started
        say(f"agent: {step.label:<26} {'ran' if step.ran else 'REFUSED'}: {step.outcome}")

    say("agent: starting 7 tool calls; the risky ones wait for you, the rest run now", "")
    async with anyio.create_task_group() as task_group:
        for step in steps:
            task_group.start_soon(run, step)
    say("", "summary")
    for step in steps:
        say(f"  {'ran    ' if step.ran else 'refused'}  {step.label:<26} {step.verdict()}")
    return steps
