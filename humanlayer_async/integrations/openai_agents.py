"""Gate an OpenAI Agents SDK agent's tools by a ``Policy``: its function tools and its MCP servers' tools.

::

    from humanlayer_async.integrations.openai_agents import gate_agent

    agent = gate_agent(Agent(name="support", tools=[refund], mcp_servers=[crm]), hl, policy)

Each call asks ``hl.check_call`` first: one the policy lets through runs at once, and so does
an approved one, with the approver's edits (a text result then starts with a note naming them:
the model's own call still shows the arguments it asked for). Any other call does not run: the
refusal sentence is the tool's output, for the model to act on.

The hook is the call itself: a function tool's invoker (``FunctionTool.on_invoke_tool``) and
an MCP server's ``call_tool``. A tool input guardrail could refuse a call but not change its
arguments, and the SDK's own ``needs_approval`` stops the whole run for a ``RunState`` round
trip; here one call waits while the agent's other calls go on. Both still apply, before the
gate, and the tool's ``failure_error_function`` to the tool's own errors. A call that cannot
be asked about (a policy naming an unknown channel label, ``TooManyPending``) fails the run.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any, TypeVar

from .._client import HumanLayer
from .._exceptions import ConfigurationError
from .._gate import edit_note, refusal
from .._models import Decision
from ..policy import Policy

try:
    from agents import Agent, FunctionTool, RunContextWrapper
    from agents.agent import AgentBase
    from agents.mcp import MCPServer
    from agents.tool_context import ToolContext
    from mcp import Tool as MCPTool
    from mcp.types import (
        CallToolResult,
        GetPromptResult,
        ListPromptsResult,
        ListResourcesResult,
        ListResourceTemplatesResult,
        ReadResourceResult,
        TextContent,
    )
except ImportError as exc:
    raise ImportError(
        "humanlayer_async.integrations.openai_agents needs the OpenAI Agents SDK: "
        "pip install 'humanlayer-async[integrations]'"
    ) from exc

__all__ = ["GatedMCPServer", "gate_agent", "gate_tool"]

TContext = TypeVar("TContext")


def gate_agent(agent: Agent[TContext], hl: HumanLayer, policy: Policy) -> Agent[TContext]:
    """A clone of ``agent`` whose function tools and MCP servers' tools ask first, as ``policy`` says.

    ``agent`` itself is left as it was. Tools that OpenAI or the SDK run without a Python call
    to wrap (web and file search, code interpreter, computer, shell, patch, hosted MCP tools)
    cannot be gated: one whose rule is not ``"never"`` raises ``ConfigurationError`` rather than
    run unasked. Agents it hands off to are agents of their own: gate each.
    """
    tools: list[Any] = []
    for tool in agent.tools:
        if isinstance(tool, FunctionTool):
            tools.append(gate_tool(tool, hl, policy))
        elif policy.rule_for(tool.name).approve == "never":
            tools.append(tool)
        else:
            raise ConfigurationError(
                f"{tool.name} ({type(tool).__name__}) runs where no call can be gated, and the policy "
                f'does not let it run unasked: give it a rule with approve = "never", or remove it'
            )
    servers: list[MCPServer] = [GatedMCPServer(server, hl, policy) for server in agent.mcp_servers]
    return agent.clone(tools=tools, mcp_servers=servers)


def gate_tool(tool: FunctionTool, hl: HumanLayer, policy: Policy) -> FunctionTool:
    """A copy of ``tool`` whose calls ask first, as ``policy`` says (``tool`` is unchanged).

    The rule is the one for the name the model calls it by (``tool.qualified_name``). Grants
    key on the wrapped function's ``module.qualname`` when the tool is that function under its
    own name (as for ``require_approval``, so one grant covers both); otherwise (a tool a
    factory made, whose functions share one qualname) on ``openai_agents/<name>``, so that a
    grant never covers a sibling. A call whose arguments are not a JSON object does not run.
    """
    gated = copy.copy(tool)  # the SDK's copy: its invoker reports failures as the copy's own
    invoke = gated.on_invoke_tool
    name = tool.qualified_name
    function = getattr(tool, "__wrapped__", None)  # what function_tool wrapped (None when nothing)
    qualname = f"openai_agents/{name}"
    if function is not None and function.__name__ == name and "<locals>" not in function.__qualname__:
        qualname = f"{function.__module__}.{function.__qualname__}"
    schemas = tool.params_json_schema.get("properties") or None

    async def ask_first(ctx: ToolContext[Any], input_json: str) -> Any:
        try:
            arguments = json.loads(input_json) if input_json else {}
        except json.JSONDecodeError:
            arguments = None
        if not isinstance(arguments, dict):
            return f"The arguments for {name} are not a JSON object, so it did not run."
        decision = await hl.check_call(name, arguments, policy=policy, qualname=qualname, schemas=schemas)
        sentence = _refused(name, decision)
        if sentence is not None:
            return sentence
        if decision is None or not decision.edits:
            return await invoke(ctx, input_json)
        output = await invoke(ctx, json.dumps({**arguments, **decision.edits}))
        if isinstance(output, str) and tool.output_json_schema is None:
            return _noted(name, decision.edits, output)
        return output

    gated.on_invoke_tool = ask_first
    return gated


class GatedMCPServer(MCPServer):
    """``server``, whose tool calls ask first, as ``policy`` says.

    Pass it to an ``Agent``'s ``mcp_servers`` in place of ``server``; connect and clean up
    ``server`` as usual. Everything but ``call_tool`` is the wrapped server's: its name, tools,
    prompts and resources, and its settings (structured content, the SDK's own approvals, the
    failure function, guardrails, meta resolver), read from it. The rule is the one for the
    tool's name on the server; grants key on ``server/tool``. A refusal comes back as an error
    result holding the sentence, the text the model reads.
    """

    def __init__(self, server: MCPServer, hl: HumanLayer, policy: Policy) -> None:
        # No MCPServer.__init__: the settings it would set here are read from ``server``.
        self.server = server
        self._hl = hl
        self._policy = policy
        self._schemas: dict[str, dict[str, Any]] = {}

    def __getattr__(self, name: str) -> Any:
        """What this class does not define: the wrapped server's settings and extras."""
        server = self.__dict__.get("server")
        if server is None:
            raise AttributeError(name)
        return getattr(server, name)

    def __repr__(self) -> str:
        return f"GatedMCPServer({self.server!r}, {self._policy!r})"

    @property
    def name(self) -> str:
        return self.server.name

    @property
    def cached_tools(self) -> list[MCPTool] | None:
        return self.server.cached_tools

    async def connect(self) -> None:
        await self.server.connect()  # type: ignore[no-untyped-call]  # the SDK leaves it unannotated

    async def cleanup(self) -> None:
        await self.server.cleanup()  # type: ignore[no-untyped-call]  # likewise

    async def list_tools(
        self, run_context: RunContextWrapper[Any] | None = None, agent: AgentBase[Any] | None = None
    ) -> list[MCPTool]:
        tools = await self.server.list_tools(run_context, agent)
        self._schemas = {tool.name: _properties(tool) for tool in tools}
        return tools

    async def call_tool(
        self, tool_name: str, arguments: dict[str, Any] | None, meta: dict[str, Any] | None = None
    ) -> CallToolResult:
        arguments = arguments or {}
        decision = await self._hl.check_call(
            tool_name,
            arguments,
            policy=self._policy,
            qualname=f"{self.server.name}/{tool_name}",
            schemas=self._schemas.get(tool_name) or None,
        )
        sentence = _refused(tool_name, decision)
        if sentence is not None:
            return CallToolResult.model_validate(
                {"content": [{"type": "text", "text": sentence}], "isError": True}
            )
        if decision is None or not decision.edits:
            return await self._call(tool_name, arguments, meta)
        result = await self._call(tool_name, {**arguments, **decision.edits}, meta)
        note = TextContent(type="text", text=_noted(tool_name, decision.edits, ""))
        return result.model_copy(update={"content": [note, *result.content]})

    async def _call(
        self, tool_name: str, arguments: dict[str, Any], meta: dict[str, Any] | None
    ) -> CallToolResult:
        if meta is None:  # as the SDK calls it: a server that takes no meta gets none
            return await self.server.call_tool(tool_name, arguments)
        return await self.server.call_tool(tool_name, arguments, meta=meta)

    async def list_prompts(self) -> ListPromptsResult:
        return await self.server.list_prompts()

    async def get_prompt(self, name: str, arguments: dict[str, Any] | None = None) -> GetPromptResult:
        return await self.server.get_prompt(name, arguments)

    async def list_resources(self, cursor: str | None = None) -> ListResourcesResult:
        return await self.server.list_resources(cursor)

    async def list_resource_templates(self, cursor: str | None = None) -> ListResourceTemplatesResult:
        return await self.server.list_resource_templates(cursor)

    async def read_resource(self, uri: str) -> ReadResourceResult:
        return await self.server.read_resource(uri)


def _refused(tool: str, decision: Decision | None) -> str | None:
    """The sentence for the model when ``decision`` does not let the call run, else ``None``."""
    if decision is None or decision.approved:
        return None
    return str(refusal(tool, decision))


def _noted(tool: str, edits: Mapping[str, Any], output: str) -> str:
    """``output`` led by a note of the approver's edits: the model's own call shows its arguments."""
    note = edit_note(tool, edits)
    return f"{note}\n{output}" if output else note


def _properties(tool: MCPTool) -> dict[str, Any]:
    """An MCP tool's argument schemas (``inputSchema`` in MCP 1, ``input_schema`` in MCP 2)."""
    schema = getattr(tool, "input_schema", None) or getattr(tool, "inputSchema", None) or {}
    properties = schema.get("properties")
    return dict(properties) if isinstance(properties, dict) else {}
