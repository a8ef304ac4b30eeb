"""Pydantic AI: an agent's toolset gated by a policy, with ``HumanLayerToolset``.

``HumanLayerToolset(toolset, hl, policy)`` wraps any toolset (function tools, an MCP server's,
several combined): each call asks first, as the policy says. The tools stay plain functions;
Pydantic AI builds their schemas from the signatures and docstrings, and the scripted model
below reads them from ``AgentInfo``, as a real LLM would get them. A denial comes back as the
tool's result, a sentence the model acts on.

``FunctionModel`` stands in for the LLM, so this runs offline::

    pip install 'humanlayer-async[integrations]'
    python examples/pydantic_ai_agent.py

With a real model, pass e.g. ``"openai:gpt-4o"`` as the Agent's model, and replace the
``AutoChannel`` with real channels, e.g. ``HumanLayer([ConsoleChannel()])``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import structlog
from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.toolsets import FunctionToolset

from humanlayer_async import HumanLayer
from humanlayer_async.integrations.pydantic_ai import HumanLayerToolset
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
tool = "transfer_money"
approve = "when"                # transfers over $1,000
when = [{ arg = "amount", gt = 1000 }]
approvers = ["treasurer@company.com"]
""")

KNOWN_VENDORS = {"ACME Supplies", "Globex"}

# The approver: the treasurer, as a rule. Unknown payees are refused, with a reason.
treasurer = AutoChannel(
    lambda request: request.kwargs["recipient"] in KNOWN_VENDORS or "we have no contract with this payee",
    by="treasurer@company.com",
)
hl = HumanLayer([treasurer])


async def transfer_money(amount: float, recipient: str) -> str:
    """Transfer money from the company account.

    Args:
        amount: The amount in dollars.
        recipient: Who receives the money.
    """
    return f"sent ${amount:,.0f} to {recipient}"


seen_schemas: list[dict[str, object]] = []


def scripted_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Pays three vendors at once, then reports what the tool said, as an LLM would."""
    seen_schemas[:] = [
        {"name": tool.name, "description": tool.description, "parameters": tool.parameters_json_schema}
        for tool in info.function_tools
    ]
    returns = [
        part
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart)
    ]
    if not returns:
        payments = [(250, "Globex"), (4_800, "ACME Supplies"), (12_000, "Initech Offshore Ltd")]
        return ModelResponse(
            parts=[
                ToolCallPart("transfer_money", {"amount": amount, "recipient": to}, tool_call_id=f"pay_{i}")
                for i, (amount, to) in enumerate(payments)
            ]
        )
    done = [str(part.content) for part in returns if part.outcome == "success"]
    refused = [str(part.content) for part in returns if part.outcome == "denied"]
    text = f"Paid: {'; '.join(done)}."
    if refused:
        text += f" Not paid ({len(refused)}): the treasurer refused; I have not retried."
    return ModelResponse(parts=[TextPart(text)])


agent = Agent(
    FunctionModel(scripted_model), toolsets=[HumanLayerToolset(FunctionToolset([transfer_money]), hl, policy)]
)


async def main() -> None:
    async with hl:
        result = await agent.run("Pay this month's three invoices.")
    (schema,) = seen_schemas
    print(f"tool: {schema['name']}: {schema['description']}")
    print(f"parameters: {json.dumps(schema['parameters'], sort_keys=True)}")
    for message in result.all_messages():
        for part in getattr(message, "parts", ()):
            if isinstance(part, ToolReturnPart):
                print(f"tool return ({part.outcome}): {part.content}")
    print(f"approvals asked: {len(treasurer.sent)} (the $250 transfer ran without one)")
    print(f"model: {result.output}")


if __name__ == "__main__":
    asyncio.run(main())
