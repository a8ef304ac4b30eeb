"""The LangChain adapter: a ``create_agent`` agent whose tool calls a ``Policy`` gates, each
waiting in its own tool call for a human (offline, with LangChain's fake chat model)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import anyio
import pytest

from .conftest import needs_integration

needs_integration("langchain.agents")

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolCall, ToolMessage
from langchain_core.tools import BaseTool, tool

from humanlayer_async import ApprovalRequest, ConfigurationError, HumanLayer
from humanlayer_async.integrations.langchain import HumanLayerMiddleware
from humanlayer_async.policy import Policy
from humanlayer_async.testing import AutoChannel, wait_for_pending

POLICY = Policy.from_dict(
    {
        "default": "always",
        "rules": [
            {"tool": "get_balance", "approve": "never"},
            {
                "tool": "transfer_money",
                "approve": "when",
                "when": [{"arg": "amount", "gt": 1000}],
                "editable": ["amount"],
            },
            {"tool": "close_account", "timeout": 0.05},
        ],
    }
)


class ToolCallingFakeModel(GenericFakeChatModel):
    """LangChain's scripted chat model, able to take tools (the script already names them)."""

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ToolCallingFakeModel:
        return self


class Bank:
    """The agent's tools, recording each call that ran."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, dict[str, Any]]] = []

    def tools(self) -> list[BaseTool]:
        @tool
        def get_balance(account: str) -> str:
            """The balance of an account."""
            self.ran.append(("get_balance", {"account": account}))
            return f"{account}: $12,000"

        @tool(parse_docstring=True)
        async def transfer_money(amount: int, recipient: str) -> str:
            """Transfer money from the company account.

            Args:
                amount: The amount in dollars.
                recipient: Who gets it.
            """
            self.ran.append(("transfer_money", {"amount": amount, "recipient": recipient}))
            return f"sent ${amount} to {recipient}"

        @tool
        def close_account(account: str) -> str:
            """Close an account for good."""
            self.ran.append(("close_account", {"account": account}))
            return f"closed {account}"

        return [get_balance, transfer_money, close_account]


def calls(*tool_calls: tuple[str, dict[str, Any]]) -> AIMessage:
    """One model turn asking for these tool calls, with ids call_0, call_1, ..."""
    return AIMessage(
        content="",
        tool_calls=[
            ToolCall(name=name, args=args, id=f"call_{i}") for i, (name, args) in enumerate(tool_calls)
        ],
    )


def agent(hl: HumanLayer, bank: Bank, *tool_calls: tuple[str, dict[str, Any]]) -> Any:
    """An agent whose model makes ``tool_calls`` in one turn, then answers "done"."""
    model = ToolCallingFakeModel(messages=iter([calls(*tool_calls), AIMessage(content="done")]))
    return create_agent(model, bank.tools(), middleware=[HumanLayerMiddleware(hl, POLICY)])


def tool_messages(state: dict[str, Any]) -> dict[str, ToolMessage]:
    return {m.tool_call_id: m for m in state["messages"] if isinstance(m, ToolMessage)}


async def run_until_pending(
    hl: HumanLayer, graph: Any, decide: Callable[[list[ApprovalRequest]], Any], count: int = 1
) -> dict[str, Any]:
    """Run the agent; once ``count`` requests are pending, ``await decide(them)``; the final state."""
    result: dict[str, Any] = {}

    async def run() -> None:
        result.update(await graph.ainvoke({"messages": [HumanMessage("pay the supplier")]}))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await decide(await wait_for_pending(hl, count))
    return result


@pytest.mark.anyio
async def test_a_gated_call_waits_for_approval_then_runs() -> None:
    bank = Bank()
    hl = HumanLayer([], listen=None)
    graph = agent(
        hl,
        bank,
        ("get_balance", {"account": "ops"}),
        ("transfer_money", {"amount": 5000, "recipient": "Globex"}),
    )

    async def approve(pending: list[ApprovalRequest]) -> None:
        [request] = pending
        assert (request.function, request.tool) == ("transfer_money", "langchain/transfer_money")
        assert request.kwargs == {"amount": 5000, "recipient": "Globex"}
        assert request.editable == {"amount": {"description": "The amount in dollars.", "type": "integer"}}
        assert ("transfer_money", {"amount": 5000, "recipient": "Globex"}) not in bank.ran  # it waits
        await hl.decide(request.id, True, by="cfo@company.com")

    async with hl:
        state = await run_until_pending(hl, graph, approve)
        assert await hl.pending() == []
    assert sorted(bank.ran) == [
        ("get_balance", {"account": "ops"}),  # never asked about
        ("transfer_money", {"amount": 5000, "recipient": "Globex"}),
    ]
    messages = tool_messages(state)
    assert (messages["call_0"].content, messages["call_1"].content) == (
        "ops: $12,000",
        "sent $5000 to Globex",
    )
    assert messages["call_1"].status == "success"
    assert state["messages"][-1].content == "done"


@pytest.mark.anyio
async def test_a_denial_gives_the_model_the_refusal_and_the_tool_does_not_run() -> None:
    bank = Bank()
    hl = HumanLayer([], listen=None)
    graph = agent(hl, bank, ("transfer_money", {"amount": 5000, "recipient": "ACME"}))

    async def deny(pending: list[ApprovalRequest]) -> None:
        await hl.decide(pending[0].id, False, by="cfo@company.com", comment="no contract with this payee")

    async with hl:
        state = await run_until_pending(hl, graph, deny)
    assert bank.ran == []
    refused = tool_messages(state)["call_0"]
    assert refused.content == (
        "A human denied transfer_money by cfo@company.com via api: no contract with this payee. "
        "It did not run."
    )
    assert (refused.status, refused.name) == ("error", "transfer_money")
    # The model's next turn reads it: the refusal sits right after its call.
    assert [type(m).__name__ for m in state["messages"]] == [
        "HumanMessage",
        "AIMessage",
        "ToolMessage",
        "AIMessage",
    ]


@pytest.mark.anyio
async def test_an_edit_changes_the_arguments_the_tool_runs_with_and_the_model_is_told() -> None:
    bank = Bank()
    hl = HumanLayer([], listen=None)
    graph = agent(hl, bank, ("transfer_money", {"amount": 5000, "recipient": "ACME"}))

    async def edit(pending: list[ApprovalRequest]) -> None:
        await hl.decide(pending[0].id, True, by="cfo@company.com", edits={"amount": 1500})

    async with hl:
        state = await run_until_pending(hl, graph, edit)
    assert bank.ran == [("transfer_money", {"amount": 1500, "recipient": "ACME"})]
    assert tool_messages(state)["call_0"].content == (
        "A human approved transfer_money with changed arguments (amount=1500); its result:\n"
        "sent $1500 to ACME"
    )
    assert state["messages"][1].tool_calls[0]["args"]["amount"] == 5000  # what the model asked, kept


@pytest.mark.anyio
async def test_a_when_rule_lets_small_calls_through_unasked() -> None:
    bank = Bank()
    hl = HumanLayer([], listen=None)
    graph = agent(hl, bank, ("transfer_money", {"amount": 200, "recipient": "ACME"}))
    async with hl:
        with anyio.fail_after(10):  # nobody decides: a request would wait out the hour
            state = await graph.ainvoke({"messages": [HumanMessage("pay the supplier")]})
        assert await hl.store.history() == []  # no request, no event
    assert bank.ran == [("transfer_money", {"amount": 200, "recipient": "ACME"})]
    assert tool_messages(state)["call_0"].content == "sent $200 to ACME"


@pytest.mark.anyio
async def test_calls_of_one_turn_wait_and_resolve_independently() -> None:
    bank = Bank()
    hl = HumanLayer([], listen=None)
    graph = agent(
        hl,
        bank,
        ("transfer_money", {"amount": 5000, "recipient": "Globex"}),
        ("transfer_money", {"amount": 9000, "recipient": "Initech"}),
    )

    async def decide_each(pending: list[ApprovalRequest]) -> None:
        by_recipient = {request.kwargs["recipient"]: request for request in pending}
        await hl.decide(by_recipient["Initech"].id, False, by="cfo@company.com", comment="unknown payee")
        assert [r.kwargs["recipient"] for r in await hl.pending()] == ["Globex"]  # still waiting
        assert bank.ran == []
        await hl.decide(by_recipient["Globex"].id, True, by="cfo@company.com")

    async with hl:
        state = await run_until_pending(hl, graph, decide_each, count=2)
    assert bank.ran == [("transfer_money", {"amount": 5000, "recipient": "Globex"})]
    messages = tool_messages(state)
    assert messages["call_0"].content == "sent $5000 to Globex"
    assert messages["call_1"].content == (
        "A human denied transfer_money by cfo@company.com via api: unknown payee. It did not run."
    )


@pytest.mark.anyio
async def test_a_request_nobody_answers_times_out_into_a_refusal() -> None:
    bank = Bank()
    hl = HumanLayer([], listen=None)
    graph = agent(hl, bank, ("close_account", {"account": "ops"}))
    async with hl:
        with anyio.fail_after(10):
            state = await graph.ainvoke({"messages": [HumanMessage("close ops")]})
    assert bank.ran == []
    assert tool_messages(state)["call_0"].content == (
        "The request to run close_account expired without an answer from a human, so it did not run. "
        "Do not retry it unasked; tell the user nobody approved it in time."
    )


@pytest.mark.anyio
async def test_a_sync_agent_blocks_its_worker_thread_on_the_loop_the_humanlayer_runs_in() -> None:
    bank = Bank()
    hl = HumanLayer([], listen=None)
    graph = agent(hl, bank, ("close_account", {"account": "ops"}), ("get_balance", {"account": "ops"}))
    result: dict[str, Any] = {}

    def invoke() -> None:
        result.update(graph.invoke({"messages": [HumanMessage("close ops")]}))

    async with hl:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, invoke)
                [request] = await wait_for_pending(hl)
                assert request.function == "close_account"
                await hl.decide(request.id, True, by="ops-lead")
    assert sorted(bank.ran) == [("close_account", {"account": "ops"}), ("get_balance", {"account": "ops"})]
    assert tool_messages(result)["call_0"].content == "closed ops"


def test_a_sync_agent_with_no_event_loop_asks_on_the_humanlayers_own() -> None:
    bank = Bank()
    refusing = AutoChannel(lambda request: "not today", by="ops-lead")
    hl = HumanLayer([refusing], listen=None)
    graph = agent(
        hl,
        bank,
        ("close_account", {"account": "ops"}),
        ("transfer_money", {"amount": 2000, "recipient": "ACME"}),
    )
    try:
        state = graph.invoke({"messages": [HumanMessage("close ops")]})
    finally:
        hl.close()
    assert bank.ran == []
    assert sorted(request.function for request in refusing.sent) == ["close_account", "transfer_money"]
    messages = tool_messages(state)
    assert (
        messages["call_0"].content
        == "A human denied close_account by ops-lead via auto: not today. It did not run."
    )
    assert str(messages["call_1"].content).startswith("A human denied transfer_money by ops-lead")


@pytest.mark.anyio
async def test_a_call_that_cannot_be_asked_about_fails_the_run() -> None:
    policy = Policy.from_dict(
        {"default": "always", "rules": [{"tool": "close_account", "channels": ["finance"]}]}
    )
    bank = Bank()
    hl = HumanLayer([], listen=None)
    model = ToolCallingFakeModel(messages=iter([calls(("close_account", {"account": "ops"}))]))
    graph = create_agent(model, bank.tools(), middleware=[HumanLayerMiddleware(hl, policy)])
    async with hl:
        with pytest.raises(ConfigurationError, match="labelled finance"):
            await graph.ainvoke({"messages": [HumanMessage("close ops")]})
    assert bank.ran == []
