"""LangChain / LangGraph: a ``create_agent`` agent whose tool calls a policy gates.

The tools are plain LangChain tools; ``HumanLayerMiddleware`` checks each call against
the policy before it runs. Small scale-ups run unasked, the rest wait (inside the tool
call: no graph interrupt) for the ops lead. A denial reaches the model as the tool's
result, a sentence saying who refused and why, and the model acts on it: here it retries
with less.

A scripted chat model stands in for the LLM, so this runs offline::

    pip install 'humanlayer-async[integrations]'
    python examples/langgraph_agent.py

With a real model, pass e.g. ``"openai:gpt-4.1"`` to ``create_agent``, and replace the
``AutoChannel`` with real channels, e.g. ``HumanLayer([ConsoleChannel()])``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

import structlog
from langchain.agents import create_agent
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolCall, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import BaseTool, tool
from langchain_core.utils.function_calling import convert_to_openai_tool

from humanlayer_async import ApprovalRequest, HumanLayer
from humanlayer_async.integrations.langchain import HumanLayerMiddleware
from humanlayer_async.policy import Policy
from humanlayer_async.testing import AutoChannel

# The SDK's event log: warnings only, on stderr, to keep the output readable.
structlog.configure(
    wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    logger_factory=structlog.PrintLoggerFactory(sys.stderr),
)

POLICY = Policy.from_toml("""
default = "always"           # any tool not named below: ask

[[rules]]
tool = "scale_service"
approve = "when"             # only past four replicas
when = [{ arg = "replicas", gt = 4 }]

[[rules]]
tool = "delete_resources"
approvers = ["ops-lead"]
""")


def ops_lead(request: ApprovalRequest) -> bool | str:
    """The approver, as a rule: scaling is fine; the backups volume stays."""
    if "vol-backups" in request.kwargs.get("resource_ids", ()):
        return "vol-backups holds last night's backups; keep it"
    return True


channel = AutoChannel(ops_lead, by="ops-lead")
hl = HumanLayer([channel])


@tool(parse_docstring=True)
async def scale_service(service: str, replicas: int) -> str:
    """Set the number of replicas of a service.

    Args:
        service: The service's name, e.g. "checkout".
        replicas: How many replicas should run.
    """
    return f"{service} now runs {replicas} replicas"


@tool(parse_docstring=True)
async def delete_resources(resource_ids: list[str]) -> str:
    """Delete cloud resources. Destructive: they cannot be restored.

    Args:
        resource_ids: The ids of the resources to delete.
    """
    return f"deleted {', '.join(resource_ids)}"


tools: list[BaseTool] = [scale_service, delete_resources]


class ScriptedChatModel(BaseChatModel):
    """Scales and cleans up, then reacts to each tool result as an LLM would."""

    turns: int = 0

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:
        return self  # the script already knows the tools

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
                ("scale_service", {"service": "search", "replicas": 2}),
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


async def main() -> None:
    for schema in (convert_to_openai_tool(t)["function"] for t in tools):
        print(f"tool: {schema['name']}: {json.dumps(schema['parameters']['properties'], sort_keys=True)}")
    agent = create_agent(ScriptedChatModel(), tools, middleware=[HumanLayerMiddleware(hl, POLICY)])
    async with hl:
        state = await agent.ainvoke(
            {"messages": [HumanMessage("Scale checkout to 6, search to 2, and clean up the old volumes.")]}
        )
    for message in state["messages"]:
        if isinstance(message, ToolMessage):
            print(f"tool message: {message.content}")
    print(f"asked ops-lead about: {', '.join(sorted(request.function for request in channel.sent))}")
    print(f"model: {state['messages'][-1].content}")


if __name__ == "__main__":
    asyncio.run(main())
