"""Gate any Pydantic AI toolset by a ``Policy``: function tools, MCP servers, toolsets you compose.

::

    from humanlayer_async.integrations.pydantic_ai import HumanLayerToolset

    agent = Agent(model, toolsets=[HumanLayerToolset(MCPToolset("http://crm/mcp"), hl, policy)])

Each call asks ``hl.check_call`` first: one the policy lets through runs at once, and so does
an approved one, with the approver's edits (a text result then starts with a note naming them:
the model's own call still shows the arguments it asked for). Any other call does not run: the
model gets the refusal sentence as the tool's result. A call that cannot be asked about (a
policy naming an unknown channel label, ``TooManyPending``) fails the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._client import HumanLayer
from .._gate import edit_note, refusal
from ..policy import Policy

try:
    from pydantic_ai import RunContext, ToolDenied
    from pydantic_ai.tools import AgentDepsT
    from pydantic_ai.toolsets import ToolsetTool, WrapperToolset
except ImportError as exc:
    raise ImportError(
        "humanlayer_async.integrations.pydantic_ai needs Pydantic AI: "
        "pip install 'humanlayer-async[integrations]'"
    ) from exc

__all__ = ["HumanLayerToolset"]


@dataclass
class HumanLayerToolset(WrapperToolset[AgentDepsT]):
    """``wrapped`` (any toolset), whose tool calls ask first, as ``policy`` says.

    ``HumanLayerToolset(wrapped, hl, policy)`` goes in an agent's ``toolsets``. The rule is the
    one for the name the model calls the tool by (after any prefix the toolsets inside add);
    grants key on ``toolset-id/tool`` when the tool's toolset has an ``id``, else on the name. An
    approver's edits are validated as the model's arguments were, so the tool gets its own
    types. The call waits inside the run, while the agent's other calls go on; for approvals
    answered after the run ends, Pydantic AI has its own deferred tools instead.

    A refusal is the tool's result, a ``ToolDenied`` holding the sentence: the model reads it
    as a call that was denied, not one that failed. Not ``ModelRetry``: that asks the model to
    fix its arguments and call again, the opposite of what a human's "no" means, and counts
    against the tool's retries, so a few refusals would end the run with an error.
    """

    hl: HumanLayer
    policy: Policy

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[AgentDepsT], tool: ToolsetTool[AgentDepsT]
    ) -> Any:
        toolset_id = tool.toolset.id
        decision = await self.hl.check_call(
            name,
            tool_args,
            policy=self.policy,
            qualname=None if toolset_id is None else f"{toolset_id}/{name}",
            schemas=tool.tool_def.parameters_json_schema.get("properties") or None,
        )
        if decision is not None and not decision.approved:
            return ToolDenied(str(refusal(name, decision)))
        if decision is None or not decision.edits:
            return await super().call_tool(name, tool_args, ctx, tool)
        edited = tool.args_validator.validate_python(
            {**tool_args, **decision.edits}, context=ctx.validation_context
        )
        result = await super().call_tool(name, edited, ctx, tool)
        return _noted(name, decision.edits, result) if isinstance(result, str) else result


def _noted(tool: str, edits: Mapping[str, Any], result: str) -> str:
    """``result`` led by a note of the approver's edits: the model's own call shows its arguments."""
    note = edit_note(tool, edits)
    return f"{note}\n{result}" if result else note
