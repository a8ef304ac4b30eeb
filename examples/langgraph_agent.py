"""LangGraph: gated tools in a ``ToolNode``.

LangChain builds each tool's schema from the gated function's signature and docstring
(the gate keeps both). A denial raises ``ApprovalDenied``; the ``ToolNode``'s
``handle_tool_errors`` hook, typed to catch only that exception, turns it into the
``ToolMessage`` the model reads next, and the model acts on it: here it retries with
less.

A scripted chat model stands in for the LLM, so this runs offline::

    pip install 'humanlayer-async[integrations]'
    python examples/langgraph_agent.py

With a real model, use e.g. ``ChatOpenAI(...).bind_tools(tools)`` in ``call_model``, and
replace the ``AutoChannel`` with real channels, e.g. ``HumanLayer([ConsoleChannel()])``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

import structlog
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolCall, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import BaseTool, tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from humanlayer_async import ApprovalDenied, ApprovalRequest, HumanLayer
from humanlayer_async.testing import AutoChannel

# The SDK's event log: warnings only, on stderr, to keep the output readable.
structlog.configure(
    wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    logger_factory=structlog.PrintLoggerFactory(sys.stderr),
)


def ops_lead(request: ApprovalRequest) -> bool | str:
    """The approver, as a rule: scaling is fine; the backups volume stays."""
    if "vol-backups" in request.kwargs.get("resource_ids", ()):
        return "vol-backups holds last night's backups; keep it"
    return True


hl = HumanLayer([AutoChannel(ops_lead, by="ops-lead")])


@hl.require_approval()
async def scale_service(service: str, replicas: int) -> str:
    """Set the number of replicas of a service.

    Args:
        service: The service's name, e.g. "checkout".
        replicas: How many replicas should run.
    """
    return f"{service} now runs {replicas} replicas"


@hl.require_approval()
async def delete_resources(resource_ids: list[str]) -> str:
    """Delete cloud resources. Destructive: they cannot be restored.

    Args:
        resource_ids: The ids of the resources to delete.
    """
    return f"deleted {', '.join(resource_ids)}"


tools: list[BaseTool] = [
    tool(scale_service, parse_docstring=True),
    tool(delete_resources, parse_docstring=True),
]


def on_denied(error: ApprovalDenied) -> str:
    """The ToolMessage for a refused call; any other error still propagates."""
    return str(error)


class ScriptedChatModel(BaseChatModel):
    """Scales and cleans up, then reacts to each tool result as an LLM would."""

    turns: int = 0

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.turns += 1
        results = [m for m in messages if isinstance(m, ToolMessage)]
        if self.turns == 1:
            reply = _calls(
                ("scale_service", {"service": "checkout", "replicas": 6}),
                ("delete_resources", {"resource_ids": ["vol-tmp-1", "vol-backups"]}),
            )
        elif self.turns == 2 and any("denied delete_resources" in str(m.content) for m in results):
            # The refusal said why: delete only what was not objected to.
            reply = _calls(("delete_resources", {"resource_ids": ["vol-tmp-1"]}))
        else:
            done = [str(m.content) for m in results if "did not run" not in str(m.content)]
            reply = AIMessage(content=f"Done: {'; '.join(done)}. I kept vol-backups, as ops-lead asked.")
        return ChatResult(generations=[ChatGeneration(message=reply)])


def _calls(*calls: tuple[str, dict[str, Any]]) -> AIMessage:
    tool_calls = [ToolCall(name=name, args=args, id=f"call_{i}") for i, (name, args) in enumerate(calls)]
    return AIMessage(content="", tool_calls=tool_calls)


def build_graph(model: BaseChatModel, tools: Sequence[BaseTool]) -> Any:
    """The usual agent graph: the model, then the tools it asked for, until it answers."""

    async def call_model(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", call_model)
    graph.add_node("tools", ToolNode(tools, handle_tool_errors=on_denied))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition, ["tools", END])
    graph.add_edge("tools", "agent")
    return graph.compile()


async def main() -> None:
    for schema in (convert_to_openai_tool(t)["function"] for t in tools):
        print(f"tool: {schema['name']}: {json.dumps(schema['parameters']['properties'], sort_keys=True)}")
    async with hl:
        state = await build_graph(ScriptedChatModel(), tools).ainvoke(
            {"messages": [("user", "Scale checkout to 6 and clean up the old volumes.")]}
        )
    for message in state["messages"]:
        if isinstance(message, ToolMessage):
            print(f"tool message: {message.content}")
    print(f"model: {state['messages'][-1].content}")


if __name__ == "__main__":
    asyncio.run(main())
