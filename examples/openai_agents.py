"""The OpenAI Agents SDK: a gated function as a ``function_tool``.

The SDK builds the tool's JSON schema from the gated function's signature and docstring
(the gate keeps both), and a denial reaches the model as the tool's output, a sentence it
can act on, through the SDK's own ``failure_error_function``.

A small scripted ``Model`` subclass stands in for the LLM, so this runs offline, with no
API key::

    pip install 'humanlayer-async[integrations]'
    python examples/openai_agents.py

With a real model, drop ``model=ScriptedModel()`` (the agent then uses OpenAI's default
model and your ``OPENAI_API_KEY``), and replace the ``AutoChannel`` with real channels,
e.g. ``HumanLayer([ConsoleChannel()])`` to answer in the terminal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

import structlog
from agents import (
    Agent,
    FunctionTool,
    ModelResponse,
    ModelSettings,
    RunContextWrapper,
    Runner,
    Tool,
    TResponseInputItem,
    Usage,
    function_tool,
    set_tracing_disabled,
)
from agents.models.interface import Model
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

from humanlayer_async import ApprovalDenied, HumanLayer, current_decision
from humanlayer_async.testing import AutoChannel

# The SDK's event log: warnings only, on stderr, to keep the output readable.
structlog.configure(
    wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    logger_factory=structlog.PrintLoggerFactory(sys.stderr),
)
set_tracing_disabled(True)  # no trace upload: this example never touches the network

# The approver: a rule instead of a person. Refunds up to $500 are approved.
approver = AutoChannel(
    lambda request: request.kwargs["amount"] <= 500 or "refunds over $500 go through the finance team",
    by="support-lead",
)
hl = HumanLayer([approver])


@hl.require_approval()
async def refund(order_id: str, amount: float, reason: str) -> str:
    """Refund a customer's order.

    Args:
        order_id: The order to refund, e.g. "A-1001".
        amount: The amount to refund, in dollars.
        reason: Why the customer gets the refund.
    """
    decision = current_decision()
    assert decision is not None
    return f"refunded ${amount:,.2f} on order {order_id} (approved by {decision.by})"


def tell_the_model(ctx: RunContextWrapper[Any], error: Exception) -> str:
    """What the model reads when the tool raises: a refusal is worded for it; the rest is not shown."""
    if isinstance(error, ApprovalDenied):
        return str(error)
    return "An error occurred while running the tool. Please try again."


refund_tool = function_tool(refund, failure_error_function=tell_the_model)


class ScriptedModel(Model):
    """Asks for two refunds at once, then answers from what the tools returned."""

    def __init__(self) -> None:
        self.seen_tools: list[Tool] = []
        self.tool_outputs: dict[str, str] = {}

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],  # noqa: A002 - the SDK's parameter name
        model_settings: ModelSettings,
        tools: list[Tool],
        *args: Any,
        **kwargs: Any,
    ) -> ModelResponse:
        self.seen_tools = tools
        items: list[dict[str, Any]] = [dict(item) for item in input if isinstance(item, dict)]
        outputs = [item for item in items if item.get("type") == "function_call_output"]
        if not outputs:
            calls = [
                ("call_1", {"order_id": "A-1001", "amount": 120.0, "reason": "damaged in transit"}),
                ("call_2", {"order_id": "A-1002", "amount": 2400.0, "reason": "customer changed their mind"}),
            ]
            return _response(
                [
                    ResponseFunctionToolCall(
                        type="function_call", call_id=call_id, name="refund", arguments=json.dumps(args)
                    )
                    for call_id, args in calls
                ]
            )
        results = self.tool_outputs = {str(item["call_id"]): str(item["output"]) for item in outputs}
        text = f"Order A-1001: {results['call_1']}."
        if "denied" in results["call_2"]:
            text += " Order A-1002 was not refunded: a human said no, so I will pass it to finance."
        return _response([_message(text)])

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("this scripted model does not stream")


def _message(text: str) -> ResponseOutputMessage:
    content = ResponseOutputText(type="output_text", text=text, annotations=[])
    return ResponseOutputMessage(
        id="msg_1", type="message", role="assistant", status="completed", content=[content]
    )


def _response(output: list[Any]) -> ModelResponse:
    return ModelResponse(output=output, usage=Usage(), response_id=None)


async def main() -> None:
    model = ScriptedModel()
    agent = Agent(
        name="support",
        instructions="You help customers with their orders.",
        tools=[refund_tool],
        model=model,
    )
    async with hl:
        result = await Runner.run(agent, "Please refund orders A-1001 and A-1002.")

    (tool,) = model.seen_tools
    assert isinstance(tool, FunctionTool)
    print(f"tool: {tool.name}: {tool.description}")
    schema = tool.params_json_schema
    print(f"parameters: {json.dumps(schema['properties'], sort_keys=True)}")
    print(f"required: {schema['required']}")
    print(f"sent for approval: {sorted(request.kwargs['order_id'] for request in approver.sent)}")
    print(f"tool output the model read for A-1002: {model.tool_outputs['call_2']}")
    print(f"model: {result.final_output}")


if __name__ == "__main__":
    asyncio.run(main())
