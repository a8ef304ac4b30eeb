"""The OpenAI Agents SDK adapter: function tools and MCP tools gated by a policy, run by the SDK's Runner.

The SDK's own ``ScriptedModel`` stands in for the LLM: it asks for the tool calls each test
names, and records what the model read back.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from .conftest import needs_integration

needs_integration("agents")

from agents import Agent, FunctionTool, RunConfig, Runner, UserError, WebSearchTool, function_tool
from agents.mcp import MCPServerStdio, MCPServerStdioParams
from agents.testing import ScriptedModel, assistant_message, function_call

from humanlayer_async import ConfigurationError, HumanLayer
from humanlayer_async.integrations.openai_agents import GatedMCPServer, gate_agent, gate_tool
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
            {"tool": "delete_record", "approvers": ["alice"], "editable": ["reason"]},
        ],
    }
)

NO_TRACES = RunConfig(tracing_disabled=True)


async def run(agent: Agent[Any], text: str) -> None:
    await Runner.run(agent, text, run_config=NO_TRACES)


class Refunds:
    """The tools of a support agent, recording the calls that ran."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, float]] = []
        self._ran_one = anyio.Event()

        @function_tool
        async def refund(order_id: str, amount: float) -> str:
            """Refund a customer's order.

            Args:
                order_id: The order to refund.
                amount: The amount to refund, in dollars.
            """
            self._record(order_id, amount)
            return f"refunded ${amount:.2f} on {order_id}"

        @function_tool
        async def lookup_order(order_id: str) -> str:
            """Look an order up."""
            self._record(order_id, 0.0)
            return f"{order_id}: shipped"

        self.tools: list[FunctionTool] = [refund, lookup_order]

    def _record(self, order_id: str, amount: float) -> None:
        self.ran.append((order_id, amount))
        self._ran_one.set()
        self._ran_one = anyio.Event()

    async def wait_until_ran(self, count: int) -> None:
        with anyio.fail_after(5):
            while len(self.ran) < count:
                await self._ran_one.wait()


def tool_outputs(model: ScriptedModel) -> dict[str, str]:
    """What the model read back from each tool call, by call id (an MCP result's text parts, a line each)."""
    call = model.last_call
    assert call is not None and isinstance(call.input, list)
    return {
        str(item["call_id"]): _text(item["output"])
        for item in call.input
        if isinstance(item, dict) and item.get("type") == "function_call_output"
    }


def _text(output: object) -> str:
    if isinstance(output, list):
        return "\n".join(part["text"] for part in output if part["type"] == "input_text")
    return str(output)


def scripted(*calls: tuple[str, str, dict[str, Any]]) -> ScriptedModel:
    """A model that makes ``calls`` (name, call id, arguments) at once, then answers "done"."""
    return ScriptedModel(
        [
            [function_call(name, arguments, call_id=call_id) for name, call_id, arguments in calls],
            [assistant_message("done")],
        ]
    )


@pytest.fixture
async def hl() -> AsyncIterator[HumanLayer]:
    async with HumanLayer([], listen=None) as hl:
        yield hl


async def test_a_harmless_tool_runs_without_asking() -> None:
    tools = Refunds()
    channel = AutoChannel()
    model = scripted(("lookup_order", "c1", {"order_id": "A-1"}))
    async with HumanLayer([channel], listen=None) as hl:
        agent = gate_agent(Agent(name="support", tools=list(tools.tools), model=model), hl, POLICY)
        result = await Runner.run(agent, "Where is A-1?", run_config=NO_TRACES)

    assert result.final_output == "done"
    assert tools.ran == [("A-1", 0.0)]
    assert tool_outputs(model) == {"c1": "A-1: shipped"}
    assert channel.sent == []
    # The model was offered the tools as the SDK built them: same names and schemas.
    first = model.first_call
    assert first is not None
    offered = {tool.name: tool for tool in first.tools if isinstance(tool, FunctionTool)}
    assert offered["refund"].params_json_schema == tools.tools[0].params_json_schema
    assert offered["refund"].description == "Refund a customer's order."


async def test_a_gated_call_waits_for_approval_then_runs(hl: HumanLayer) -> None:
    tools = Refunds()
    model = scripted(("refund", "c1", {"order_id": "A-1", "amount": 250.0}))
    agent = gate_agent(Agent(name="support", tools=list(tools.tools), model=model), hl, POLICY)
    async with anyio.create_task_group() as tg:
        tg.start_soon(run, agent, "Refund A-1.")
        [request] = await wait_for_pending(hl)
        assert (request.function, dict(request.kwargs)) == ("refund", {"order_id": "A-1", "amount": 250.0})
        assert request.approvers == ("alice",)
        assert (
            request.tool == "openai_agents/refund"
        )  # made in a function: keyed by its name, not a shared qualname
        assert tools.ran == []  # it waits for the human
        await hl.decide(request.id, True, by="alice")
    assert tools.ran == [("A-1", 250.0)]
    assert tool_outputs(model) == {"c1": "refunded $250.00 on A-1"}


async def test_a_denial_gives_the_model_the_refusal_and_the_tool_does_not_run(hl: HumanLayer) -> None:
    tools = Refunds()
    model = scripted(("refund", "c1", {"order_id": "A-1", "amount": 2400.0}))
    agent = gate_agent(Agent(name="support", tools=list(tools.tools), model=model), hl, POLICY)
    async with anyio.create_task_group() as tg:
        tg.start_soon(run, agent, "Refund A-1.")
        [request] = await wait_for_pending(hl)
        await hl.decide(request.id, False, by="alice", comment="over the limit")
    assert tools.ran == []
    assert tool_outputs(model) == {
        "c1": "A human denied refund by alice via api: over the limit. It did not run."
    }


async def test_an_edit_changes_the_arguments_the_tool_runs_with(hl: HumanLayer) -> None:
    tools = Refunds()
    model = scripted(("refund", "c1", {"order_id": "A-1", "amount": 2400.0}))
    agent = gate_agent(Agent(name="support", tools=list(tools.tools), model=model), hl, POLICY)
    async with anyio.create_task_group() as tg:
        tg.start_soon(run, agent, "Refund A-1.")
        [request] = await wait_for_pending(hl)
        # The editable argument's schema is the one the SDK built for the tool.
        assert request.editable == {
            "amount": {
                "description": "The amount to refund, in dollars.",
                "title": "Amount",
                "type": "number",
            }
        }
        await hl.decide(request.id, True, by="alice", edits={"amount": 240.0})
    assert tools.ran == [("A-1", 240.0)]
    assert tool_outputs(model) == {
        "c1": "A human approved refund with changed arguments (amount=240.0); its result:\n"
        "refunded $240.00 on A-1"
    }


async def test_a_when_rule_lets_small_calls_through_while_a_large_one_waits(hl: HumanLayer) -> None:
    tools = Refunds()
    model = scripted(
        ("refund", "small", {"order_id": "A-1", "amount": 40.0}),
        ("refund", "large", {"order_id": "A-2", "amount": 900.0}),
    )
    agent = gate_agent(Agent(name="support", tools=list(tools.tools), model=model), hl, POLICY)
    async with anyio.create_task_group() as tg:
        tg.start_soon(run, agent, "Refund both.")
        [request] = await wait_for_pending(hl)
        assert request.kwargs["order_id"] == "A-2"
        await tools.wait_until_ran(1)  # the small one runs while the large one waits
        assert tools.ran == [("A-1", 40.0)]
        await hl.decide(request.id, True, by="alice")
    assert tools.ran == [("A-1", 40.0), ("A-2", 900.0)]
    assert tool_outputs(model) == {"small": "refunded $40.00 on A-1", "large": "refunded $900.00 on A-2"}


async def test_arguments_that_are_not_an_object_never_reach_the_tool(hl: HumanLayer) -> None:
    tools = Refunds()
    model = ScriptedModel([[function_call("refund", "[1, 2]", call_id="c1")], [assistant_message("done")]])
    agent = gate_agent(Agent(name="support", tools=list(tools.tools), model=model), hl, POLICY)
    await Runner.run(agent, "Refund.", run_config=NO_TRACES)
    assert tools.ran == []
    assert await hl.pending() == []
    assert tool_outputs(model) == {"c1": "The arguments for refund are not a JSON object, so it did not run."}


async def test_a_call_that_cannot_be_asked_about_fails_the_run(hl: HumanLayer) -> None:
    tools = Refunds()
    unknown = Policy.from_dict({"default": "always", "rules": [{"tool": "refund", "channels": ["finance"]}]})
    model = scripted(("refund", "c1", {"order_id": "A-1", "amount": 250.0}))
    agent = gate_agent(Agent(name="support", tools=list(tools.tools), model=model), hl, unknown)
    with pytest.raises(UserError, match="the policy names channels labelled finance"):
        await run(agent, "Refund A-1.")
    assert tools.ran == []


async def test_gating_copies_the_agent_and_its_tools(hl: HumanLayer) -> None:
    tools = Refunds()
    agent = Agent(name="support", tools=list(tools.tools), model=scripted())
    gated = gate_agent(agent, hl, POLICY)
    assert agent.tools == tools.tools  # the original agent and tools are as they were
    assert [tool.name for tool in gated.tools] == ["refund", "lookup_order"]
    assert all(a is not b for a, b in zip(gated.tools, agent.tools, strict=True))
    alone = gate_tool(tools.tools[0], hl, POLICY)
    assert (alone.name, alone.params_json_schema) == ("refund", tools.tools[0].params_json_schema)


async def test_a_tool_that_cannot_be_gated_is_refused_unless_the_policy_lets_it_run(hl: HumanLayer) -> None:
    agent = Agent(name="research", tools=[WebSearchTool()], model=scripted())
    with pytest.raises(
        ConfigurationError, match=r"web_search \(WebSearchTool\) runs where no call can be gated"
    ):
        gate_agent(agent, hl, POLICY)
    allowed = Policy.from_dict({"default": "always", "rules": [{"tool": "web_search", "approve": "never"}]})
    assert [tool.name for tool in gate_agent(agent, hl, allowed).tools] == ["web_search"]


# -- MCP: a real MCP server, over stdio, as the SDK runs one ---------------------------------

MCP_SERVER = '''
import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer

log = Path(sys.argv[1])
server = MCPServer("crm")


@server.tool()
def lookup_record(record_id: str) -> str:
    """Look a customer record up."""
    with log.open("a") as f:
        f.write(f"lookup_record {record_id}\\n")
    return f"record {record_id}: ACME Corp"


@server.tool()
def delete_record(record_id: str, reason: str) -> str:
    """Delete a customer record."""
    with log.open("a") as f:
        f.write(f"delete_record {record_id} {reason}\\n")
    return f"deleted {record_id} ({reason})"


server.run("stdio")
'''


@pytest.fixture
async def crm(tmp_path: Path) -> AsyncIterator[tuple[MCPServerStdio, Path]]:
    """A connected MCP server, and the file where it writes each call it ran."""
    script, log = tmp_path / "crm.py", tmp_path / "calls.log"
    script.write_text(MCP_SERVER)
    log.touch()
    params: MCPServerStdioParams = {"command": sys.executable, "args": [str(script), str(log)]}
    async with MCPServerStdio(params, name="crm") as server:
        yield server, log


async def test_mcp_tools_are_gated_a_denial_reaches_the_model(
    hl: HumanLayer, crm: tuple[MCPServerStdio, Path]
) -> None:
    server, log = crm
    model = scripted(
        ("lookup_record", "c1", {"record_id": "7"}),
        ("delete_record", "c2", {"record_id": "7", "reason": "duplicate"}),
    )
    agent = gate_agent(Agent(name="crm", mcp_servers=[server], model=model), hl, POLICY)
    assert isinstance(agent.mcp_servers[0], GatedMCPServer) and agent.mcp_servers[0].name == "crm"
    async with anyio.create_task_group() as tg:
        tg.start_soon(run, agent, "Clean up record 7.")
        [request] = await wait_for_pending(hl)
        assert (request.function, request.tool) == ("delete_record", "crm/delete_record")
        assert dict(request.kwargs) == {"record_id": "7", "reason": "duplicate"}
        await hl.decide(request.id, False, by="alice", comment="keep it for the audit")
    assert log.read_text() == "lookup_record 7\n"  # the delete never reached the server
    assert tool_outputs(model) == {
        "c1": "record 7: ACME Corp",
        "c2": "A human denied delete_record by alice via api: keep it for the audit. It did not run.",
    }


async def test_an_edit_to_an_mcp_call_changes_what_the_server_runs(
    hl: HumanLayer, crm: tuple[MCPServerStdio, Path]
) -> None:
    server, log = crm
    model = scripted(("delete_record", "c1", {"record_id": "7", "reason": "dup"}))
    agent = Agent(name="crm", mcp_servers=[GatedMCPServer(server, hl, POLICY)], model=model)
    async with anyio.create_task_group() as tg:
        tg.start_soon(run, agent, "Delete record 7.")
        [request] = await wait_for_pending(hl)
        # The editable argument's schema is the server's inputSchema for it.
        assert request.editable == {"reason": {"title": "Reason", "type": "string"}}
        await hl.decide(request.id, True, by="alice", edits={"reason": "duplicate of record 3"})
    assert log.read_text() == "delete_record 7 duplicate of record 3\n"
    assert tool_outputs(model) == {
        "c1": 'A human approved delete_record with changed arguments (reason="duplicate of record 3"); '
        "its result:\ndeleted 7 (duplicate of record 3)"
    }
