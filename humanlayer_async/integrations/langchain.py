"""LangChain v1 agents: every tool call checked against a ``Policy`` before it runs.

``HumanLayerMiddleware(hl, policy)`` is agent middleware for ``create_agent``::

    agent = create_agent(model, tools, middleware=[HumanLayerMiddleware(hl, policy)])

Each tool call the model makes goes through ``hl.check_call``; one the policy gates waits,
inside its own tool call, for a human's answer from your channels. Nothing interrupts the
graph: no checkpointer, no resume, and the other tool calls of the same turn go on while
one waits. What the model then sees:

- **No approval needed** (the rule says ``never``, or its ``when`` does not hold), and
  **approved**: the tool runs; its ``ToolMessage`` is the tool's own.
- **Approved with edits**: the tool runs with the approver's arguments, and its
  ``ToolMessage`` starts with a note naming them (the model's message still shows the
  arguments it asked for; without the note it would take the result for theirs).
- **Denied** (with the approver's reason), **timed out** or **cancelled**: the tool does not
  run. The ``ToolMessage`` (``status="error"``, the call's id) holds the refusal sentence,
  e.g. ``A human denied delete_file by alice via slack: not prod. It did not run.``, for
  the model to act on. The ``HumanLayer``'s ``on_reject`` does not apply here.

Grants and re-attachment key on ``langchain/<tool name>``. A call that cannot be asked
about (``TooManyPending``, a policy naming an unknown channel label) raises, failing the
run rather than the call.

Sync agents (``agent.invoke``, ``agent.stream``) work too: LangGraph runs their tool calls
in worker threads, and each blocks its thread until decided, as a gated sync tool does: on
the event loop the ``HumanLayer`` was started in, or else on one in a background thread it
owns (``hl.close()`` stops it).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from .._gate import edit_note, refusal
from .._models import Decision

try:
    from langchain.agents.middleware import AgentMiddleware, AgentState, ToolCallRequest
    from langchain_core.messages import ToolCall, ToolMessage
    from langchain_core.utils.function_calling import convert_to_openai_tool
    from langgraph.types import Command
except ImportError as exc:
    raise ImportError(
        "humanlayer_async.integrations.langchain needs LangChain 1.x (langchain, with create_agent "
        "and its middleware): pip install 'humanlayer-async[integrations]'"
    ) from exc

if TYPE_CHECKING:
    from .._client import HumanLayer
    from ..policy import Policy

__all__ = ["HumanLayerMiddleware"]

ToolResult = ToolMessage | Command[Any]


class HumanLayerMiddleware(AgentMiddleware[AgentState[Any], Any, Any]):
    """Agent middleware that runs each tool call only as ``policy`` and your approvers allow."""

    def __init__(self, hl: HumanLayer, policy: Policy) -> None:
        self.hl = hl
        self.policy = policy

    async def awrap_tool_call(
        self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], Awaitable[ToolResult]]
    ) -> ToolResult:
        decision = await self._check(request)
        permitted = _permitted(request, decision)
        if isinstance(permitted, ToolMessage):
            return permitted
        return _noted(await handler(permitted), request, decision)

    def wrap_tool_call(
        self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], ToolResult]
    ) -> ToolResult:
        # A worker thread of the sync ToolNode: wait as a gated sync tool does.
        decision = self.hl._asker.block(functools.partial(self._check, request))
        permitted = _permitted(request, decision)
        if isinstance(permitted, ToolMessage):
            return permitted
        return _noted(handler(permitted), request, decision)

    async def _check(self, request: ToolCallRequest) -> Decision | None:
        name = request.tool_call["name"]
        return await self.hl.check_call(
            name,
            request.tool_call["args"],
            policy=self.policy,
            qualname=f"langchain/{name}",
            schemas=_argument_schemas(request),
        )


def _argument_schemas(request: ToolCallRequest) -> Mapping[str, Any] | None:
    """The JSON Schema of each argument the model gives, as the model sees it (for edits)."""
    if request.tool is None:  # a tool another middleware supplies: gated all the same
        return None
    properties = convert_to_openai_tool(request.tool)["function"]["parameters"].get("properties")
    return properties if isinstance(properties, Mapping) else None


def _permitted(request: ToolCallRequest, decision: Decision | None) -> ToolCallRequest | ToolMessage:
    """The call to run (with the approver's edits), or the refusal the model gets instead."""
    call = request.tool_call
    if decision is None:
        return request
    if not decision.approved:
        return ToolMessage(
            content=str(refusal(call["name"], decision)),
            name=call["name"],
            tool_call_id=call["id"],
            status="error",
        )
    if not decision.edits:
        return request
    edited: ToolCall = {**call, "args": {**call["args"], **decision.edits}}
    return request.override(tool_call=edited)


def _noted(result: ToolResult, request: ToolCallRequest, decision: Decision | None) -> ToolResult:
    """The tool's message, led by a note of the approver's edits when there were any."""
    if decision is None or not decision.edits or not isinstance(result, ToolMessage):
        return result
    note = edit_note(request.tool_call["name"], decision.edits)
    content = result.content
    if isinstance(content, str):
        noted: str | list[str | dict[Any, Any]] = f"{note}\n{content}" if content else note
    else:  # content blocks: a block of the same shape
        block = (
            note if content and all(isinstance(b, str) for b in content) else {"type": "text", "text": note}
        )
        noted = [block, *content]
    return result.model_copy(update={"content": noted})
