"""The OpenAI Agents SDK: an agent's tools gated by a policy, with ``gate_agent``.

``gate_agent(agent, hl, policy)`` is a copy of the agent whose tool calls ask first, as the
policy says; the tools stay plain ``function_tool``s, their schemas as the SDK built them. A
denial reaches the model as the tool's output, a sentence it can act on.

The SDK's own ``ScriptedModel`` stands in for the LLM, so this runs offline, with no API key::

    pip install 'humanlayer-async[integrations]'
    python examples/openai_agents.py

With a real model, drop ``model=model`` (the agent then uses OpenAI's default model and your
``OPENAI_API_KEY``), and replace the ``AutoChannel`` with real channels, e.g.
``HumanLayer([ConsoleChannel()])`` to answer in the terminal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import structlog
from agents import Agent, FunctionTool, RunConfig, Runner, function_tool
from agents.items import TResponseOutputItem
from agents.testing import ModelCall, ModelStep, ScriptedModel, assistant_message, function_call

from humanlayer_async import HumanLayer
from humanlayer_async.integrations.openai_agents import gate_agent
from humanlayer_async.policy import Policy
from humanlayer_async.testing import AutoChannel

# The SDK's event log: warnings only, on stderr, to keep the output readable.
structlog.configure(
    wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    logger_factory=structlog.PrintLoggerFactory(sys.stderr),
)

policy = Policy.from_toml("""
default = "always"              # a tool no rule names: ask

[[rules]]
tool = "refund"
approve = "when"                # refunds of $100 or less run unasked
when = [{ arg = "amount", gt = 100 }]
approvers = ["support-lead"]
""")

# The approver: a rule instead of a person. Refunds up to $500 are approved.
approver = AutoChannel(
    lambda request: request.kwargs["amount"] <= 500 or "refunds over $500 go through the finance team",
    by="support-lead",
)
hl = HumanLayer([approver])


@function_tool
async def refund(order_id: str, amount: float, reason: str) -> str:
    """Refund a customer's order.

    Args:
        order_id: The order to refund, e.g. "A-1001".
        amount: The amount to refund, in dollars.
        reason: Why the customer gets the refund.
    """
    return f"refunded ${amount:,.2f} on order {order_id}"


def tool_outputs(call: ModelCall) -> dict[str, str]:
    """What the model read back from each tool call, by call id."""
    items = [item for item in call.input if isinstance(item, dict)]
    return {item["call_id"]: item["output"] for item in items if item.get("type") == "function_call_output"}


def answer(call: ModelCall) -> list[TResponseOutputItem]:
    """The model's second turn: it answers from what the tools returned."""
    results = tool_outputs(call)
    text = f"Order A-1001: {results['call_1']}."
    if "denied" in results["call_2"]:
        text += " Order A-1002 was not refunded: a human said no, so I will pass it to finance."
    return [assistant_message(text)]


# The model asks for two refunds at once, then answers.
model = ScriptedModel(
    [
        [
            function_call(
                "refund",
                {"order_id": "A-1001", "amount": 120.0, "reason": "damaged in transit"},
                call_id="call_1",
            ),
            function_call(
                "refund",
                {"order_id": "A-1002", "amount": 2400.0, "reason": "customer changed their mind"},
                call_id="call_2",
            ),
        ],
        ModelStep.respond(answer),
    ]
)


async def main() -> None:
    agent = Agent(
        name="support", instructions="You help customers with their orders.", tools=[refund], model=model
    )
    async with hl:
        result = await Runner.run(
            gate_agent(agent, hl, policy),
            "Please refund orders A-1001 and A-1002.",
            run_config=RunConfig(tracing_disabled=True),  # no trace upload: this never touches the network
        )

    first, last = model.first_call, model.last_call
    assert first is not None and last is not None
    (tool,) = first.tools
    assert isinstance(tool, FunctionTool)
    print(f"tool: {tool.name}: {tool.description}")
    schema = tool.params_json_schema
    print(f"parameters: {json.dumps(schema['properties'], sort_keys=True)}")
    print(f"required: {schema['required']}")
    print(f"sent for approval: {sorted(request.kwargs['order_id'] for request in approver.sent)}")
    print(f"tool output the model read for A-1002: {tool_outputs(last)['call_2']}")
    print(f"model: {result.final_output}")


if __name__ == "__main__":
    asyncio.run(main())
