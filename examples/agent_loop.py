"""A plain asyncio agent loop: many tool calls at once, some gated, no framework.

Each turn, the (scripted) model asks for a batch of tool calls; the loop runs them all
concurrently and hands every result back as a message. The gated calls wait for a
human while the others finish: here 40 order look-ups complete while 6 refunds wait
for their approver. Refusals come back as sentences (``on_reject="return"``), so the
model reads them like any other result and acts on them: it asks a human, with the
tool from ``human_as_tool()``, what to offer instead.

Runs offline and finishes by itself::

    python examples/agent_loop.py

Swap in a real LLM by replacing ``ScriptedModel.next_turn`` with a call to your
model's API (tools described from each function's signature and docstring), and the
``AutoChannel`` with real channels, e.g. ``HumanLayer([ConsoleChannel()])``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from humanlayer_async import ApprovalRequest, HumanLayer
from humanlayer_async.testing import AutoChannel

# The SDK's event log: warnings only, on stderr, to keep the output readable.
structlog.configure(
    wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    logger_factory=structlog.PrintLoggerFactory(sys.stderr),
)

LOOKUPS = 40
lookups_done = asyncio.Event()


async def support_lead(request: ApprovalRequest) -> bool | str:
    """The approver, as a rule. Answers only once the look-ups are done, to show they never waited."""
    await lookups_done.wait()
    if request.kind == "question":
        return "offer a 20% voucher instead"
    return request.kwargs["amount"] <= 200 or "refunds over $200 need a manager"


hl = HumanLayer([AutoChannel(support_lead, by="sam (support lead)")])
contact_human = hl.human_as_tool()


async def lookup_order(order_id: int) -> str:
    """Read an order (read-only: no approval)."""
    await asyncio.sleep(0.01)  # a database round trip
    return f"order {order_id}: delivered"


@hl.require_approval(on_reject="return")
async def refund(order_id: int, amount: float) -> str:
    """Refund an order."""
    return f"refunded ${amount:.0f} on order {order_id}"


TOOLS: dict[str, Callable[..., Awaitable[str]]] = {
    "lookup_order": lookup_order,
    "refund": refund,
    "contact_human": contact_human,
}


@dataclass
class ToolCall:
    name: str
    args: dict[str, Any]


@dataclass
class Message:
    role: str  # "user" or "tool"
    content: str
    tool: str | None = None  # which tool returned it


class ScriptedModel:
    """Plays the LLM: turn 1 looks up and refunds at once; turn 2 reacts to refusals."""

    def next_turn(self, messages: list[Message]) -> list[ToolCall] | str:
        results = [m.content for m in messages if m.role == "tool"]
        if not results:
            lookups = [ToolCall("lookup_order", {"order_id": n}) for n in range(1, LOOKUPS + 1)]
            amounts = [50, 120, 180, 300, 75, 900]
            refunds = [
                ToolCall("refund", {"order_id": n, "amount": a}) for n, a in enumerate(amounts, start=1)
            ]
            return lookups + refunds
        refused = [r for r in results if "denied refund" in r]
        answers = [m.content for m in messages if m.tool == "contact_human"]
        if refused and not answers:
            question = f"{len(refused)} refunds were refused ({refused[0]}). What should I offer instead?"
            return [ToolCall("contact_human", {"message": question})]
        refunded = sum(r.startswith("refunded") for r in results)
        return f"{refunded} refunds done; for the {len(refused)} refused, a human said: {answers[0]}"


async def run_tool(call: ToolCall) -> Message:
    return Message("tool", await TOOLS[call.name](**call.args), tool=call.name)


async def agent(model: ScriptedModel, task: str) -> str:
    """The loop: ask the model, run the calls it wants concurrently, repeat until it answers."""
    messages = [Message("user", task)]
    while True:
        turn = model.next_turn(messages)
        if isinstance(turn, str):
            return turn
        tasks = [asyncio.create_task(run_tool(call)) for call in turn]
        lookups = [t for t, call in zip(tasks, turn, strict=True) if call.name == "lookup_order"]
        if lookups:
            await asyncio.wait(lookups)
            waiting = sum(not t.done() for t, call in zip(tasks, turn, strict=True) if call.name == "refund")
            print(f"{len(lookups)} look-ups done while {waiting} refunds waited for a human")
            lookups_done.set()
        messages += await asyncio.gather(*tasks)


async def main() -> None:
    async with hl:
        answer = await agent(ScriptedModel(), "Process today's refund requests.")
    print(f"model: {answer}")


if __name__ == "__main__":
    asyncio.run(main())
