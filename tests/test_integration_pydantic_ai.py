"""The Pydantic AI adapter: a toolset gated by a policy, run by an ``Agent`` on ``FunctionModel``.

``FunctionModel`` stands in for the LLM: it asks for the tool calls each test names, then
answers; what the model read back is in the run's messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from .conftest import needs_integration

needs_integration("pydantic_ai")

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
from pydantic_ai.toolsets import FunctionToolset, PrefixedToolset

from humanlayer_async import ConfigurationError, HumanLayer
from humanlayer_async.integrations.pydantic_ai import HumanLayerToolset
from humanlayer_async.policy import Policy
from humanlayer_async.testing import AutoChannel, wait_for_pending

pytestmark = pytest.mark.anyio

POLICY = Policy.from_dict(
    {
        "default": "always",
        "rules": [
            {"tool": "lookup*", "approve": "never"},
            {
                "tool": "refund",
                "approve": "when",
                "when": [{"arg": "amount", "gt": 100}],
                "approvers": ["alice"],
                "editable": ["amount"],
            },
            {"tool": "crm_lookup_record", "approve": "never"},
            {"tool": "crm_*", "approvers": ["alice"]},
        ],
    }
)


class Refunds:
    """The tools of a support agent, as a toolset, recording the calls that ran."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, float]] = []
        self._ran_one = anyio.Event()

        async def refund(order_id: str, amount: float) -> str:
            """Refund a customer's order.

            Args:
                order_id: The order to refund.
                amount: The amount to refund, in dollars.
            """
            self._record(order_id, amount)
            return f"refunded ${amount:.2f} on {order_id}"

        async def lookup_order(order_id: str) -> str:
            """Look an order up."""
            self._record(order_id, 0.0)
            return f"{order_id}: shipped"

        self.toolset = FunctionToolset([refund, lookup_order], id="support")

    def _record(self, order_id: str, amount: float) -> None:
        self.ran.append((order_id, amount))
        self._ran_one.set()
        self._ran_one = anyio.Event()

    async def wait_until_ran(self, count: int) -> None:
        with anyio.fail_after(5):
            while len(self.ran) < count:
                await self._ran_one.wait()


def scripted(*calls: tuple[str, str, dict[str, Any]]) -> FunctionModel:
    """A model that makes ``calls`` (name, call id, arguments) at once, then answers "done"."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if len(messages) == 1:
            return ModelResponse(
                parts=[
                    ToolCallPart(name, arguments, tool_call_id=call_id) for name, call_id, arguments in calls
                ]
            )
        return ModelResponse(parts=[TextPart("done")])

    return FunctionModel(respond)


def tool_returns(messages: list[ModelMessage]) -> dict[str, tuple[str, object]]:
    """What the model read back from each tool call, by call id: the outcome and the content."""
    return {
        part.tool_call_id: (part.outcome, part.content)
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart)
    }


class Run:
    """An agent run started in a task group; its messages once it ends."""

    def __init__(self, agent: Agent[None, str], prompt: str) -> None:
        self.agent, self.prompt = agent, prompt
        self.messages: list[ModelMessage] = []

    async def __call__(self) -> None:
        result = await self.agent.run(self.prompt)
        assert result.output == "done"
        self.messages = result.all_messages()


@pytest.fixture
async def hl() -> AsyncIterator[HumanLayer]:
    async with HumanLayer([], listen=None) as hl:
        yield hl


async def test_a_harmless_tool_runs_without_asking() -> None:
    tools = Refunds()
    channel = AutoChannel()
    seen: list[str] = []

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        seen[:] = [tool.name for tool in info.function_tools]
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("lookup_order", {"order_id": "A-1"}, tool_call_id="c1")])
        return ModelResponse(parts=[TextPart("done")])

    async with HumanLayer([channel], listen=None) as hl:
        agent = Agent(FunctionModel(respond), toolsets=[HumanLayerToolset(tools.toolset, hl, POLICY)])
        result = await agent.run("Where is A-1?")
    assert seen == ["refund", "lookup_order"]  # the model is offered the wrapped toolset's tools
    assert tools.ran == [("A-1", 0.0)]
    assert tool_returns(result.all_messages()) == {"c1": ("success", "A-1: shipped")}
    assert channel.sent == []


async def test_a_gated_call_waits_for_approval_then_runs(hl: HumanLayer) -> None:
    tools = Refunds()
    model = scripted(("refund", "c1", {"order_id": "A-1", "amount": 250.0}))
    run = Run(Agent(model, toolsets=[HumanLayerToolset(tools.toolset, hl, POLICY)]), "Refund A-1.")
    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        [request] = await wait_for_pending(hl)
        assert (request.function, dict(request.kwargs)) == ("refund", {"order_id": "A-1", "amount": 250.0})
        assert (request.approvers, request.tool) == (("alice",), "support/refund")
        assert tools.ran == []  # it waits for the human
        await hl.decide(request.id, True, by="alice")
    assert tools.ran == [("A-1", 250.0)]
    assert tool_returns(run.messages) == {"c1": ("success", "refunded $250.00 on A-1")}


async def test_a_denial_gives_the_model_the_refusal_and_the_tool_does_not_run(hl: HumanLayer) -> None:
    tools = Refunds()
    model = scripted(("refund", "c1", {"order_id": "A-1", "amount": 2400.0}))
    run = Run(Agent(model, toolsets=[HumanLayerToolset(tools.toolset, hl, POLICY)]), "Refund A-1.")
    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        [request] = await wait_for_pending(hl)
        await hl.decide(request.id, False, by="alice", comment="over the limit")
    assert tools.ran == []
    assert tool_returns(run.messages) == {
        "c1": ("denied", "A human denied refund by alice via api: over the limit. It did not run.")
    }


async def test_an_edit_changes_the_arguments_the_tool_runs_with(hl: HumanLayer) -> None:
    tools = Refunds()
    model = scripted(("refund", "c1", {"order_id": "A-1", "amount": 2400.0}))
    run = Run(Agent(model, toolsets=[HumanLayerToolset(tools.toolset, hl, POLICY)]), "Refund A-1.")
    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        [request] = await wait_for_pending(hl)
        # The editable argument's schema is the tool's, as Pydantic AI built it.
        assert request.editable == {
            "amount": {"description": "The amount to refund, in dollars.", "type": "number"}
        }
        await hl.decide(request.id, True, by="alice", edits={"amount": 240})
    assert tools.ran == [("A-1", 240.0)]
    assert isinstance(tools.ran[0][1], float)  # validated as the model's arguments are: the tool's own type
    assert tool_returns(run.messages) == {
        "c1": (
            "success",
            "A human approved refund with changed arguments (amount=240); its result:\n"
            "refunded $240.00 on A-1",
        )
    }


async def test_a_when_rule_lets_small_calls_through_while_a_large_one_waits(hl: HumanLayer) -> None:
    tools = Refunds()
    model = scripted(
        ("refund", "small", {"order_id": "A-1", "amount": 40.0}),
        ("refund", "large", {"order_id": "A-2", "amount": 900.0}),
    )
    run = Run(Agent(model, toolsets=[HumanLayerToolset(tools.toolset, hl, POLICY)]), "Refund both.")
    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        [request] = await wait_for_pending(hl)
        assert request.kwargs["order_id"] == "A-2"
        await tools.wait_until_ran(1)  # the small one runs while the large one waits
        assert tools.ran == [("A-1", 40.0)]
        await hl.decide(request.id, True, by="alice")
    assert tools.ran == [("A-1", 40.0), ("A-2", 900.0)]
    assert tool_returns(run.messages) == {
        "small": ("success", "refunded $40.00 on A-1"),
        "large": ("success", "refunded $900.00 on A-2"),
    }


async def test_a_call_that_cannot_be_asked_about_fails_the_run(hl: HumanLayer) -> None:
    tools = Refunds()
    unknown = Policy.from_dict({"default": "always", "rules": [{"tool": "refund", "channels": ["finance"]}]})
    model = scripted(("refund", "c1", {"order_id": "A-1", "amount": 250.0}))
    agent = Agent(model, toolsets=[HumanLayerToolset(tools.toolset, hl, unknown)])
    with pytest.raises(ConfigurationError, match="the policy names channels labelled finance"):
        await agent.run("Refund A-1.")
    assert tools.ran == []


async def test_a_composed_toolset_is_gated_by_the_names_the_model_sees(hl: HumanLayer) -> None:
    # A stand-in for an MCP server's toolset (MCPToolset needs fastmcp), prefixed as one often is.
    deleted: list[str] = []

    def lookup_record(record_id: str) -> str:
        """Look a customer record up."""
        return f"record {record_id}: ACME Corp"

    def delete_record(record_id: str) -> str:
        """Delete a customer record."""
        deleted.append(record_id)
        return f"deleted {record_id}"

    crm = PrefixedToolset(FunctionToolset([lookup_record, delete_record], id="crm"), "crm")
    model = scripted(
        ("crm_lookup_record", "c1", {"record_id": "7"}),
        ("crm_delete_record", "c2", {"record_id": "7"}),
    )
    run = Run(Agent(model, toolsets=[HumanLayerToolset(crm, hl, POLICY)]), "Clean up record 7.")
    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        [request] = await wait_for_pending(hl)
        assert (request.function, dict(request.kwargs)) == ("crm_delete_record", {"record_id": "7"})
        await hl.decide(request.id, False, by="alice", comment="keep it for the audit")
    assert deleted == []
    assert tool_returns(run.messages) == {
        "c1": ("success", "record 7: ACME Corp"),
        "c2": (
            "denied",
            "A human denied crm_delete_record by alice via api: keep it for the audit. It did not run.",
        ),
    }
