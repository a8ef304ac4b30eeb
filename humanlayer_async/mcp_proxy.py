"""The MCP approval proxy (``humanlayer-async mcp-proxy``): gate the tools of an MCP server
you did not write, with no code of yours changed.

An MCP client starts the proxy where it started the server; the proxy starts the server
(or connects to its URL) and serves its tools, resources and prompts as they are: same
names, descriptions and schemas. A call of a tool the policy gates is put to a human first
(``HumanLayer.check_call``), then forwarded, with the approver's edits, once approved; any
other decision answers the call with the refusal as a tool error (``isError``). What the
server answers, its errors included, goes back unchanged.

Most clients give up on a request after a minute or so and cancel it. The human's wait does
not end with it: each request is waited for in the proxy's own task group (``_Ask``), and
the identical call retried later takes it over, or its decision when one came meanwhile
(for ``RETRY_WINDOW``). See docs/mcp-proxy.md.
"""

from __future__ import annotations

import contextlib
import hmac
import math
import os
import shlex
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
import mcp_types as types
from anyio.abc import TaskGroup
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.session import ClientSession
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.stdio import stdio_server
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ._audit import logger
from ._client import HumanLayer
from ._codec import digest
from ._exceptions import ConfigurationError, HumanLayerError
from ._gate import refusal
from ._hosts import is_loopback
from ._models import Decision, Status
from ._terminal import write_lines
from .channels.base import channel_label
from .channels.console import ConsoleChannel
from .channels.web import WebChannel
from .listener import Listener
from .policy import Policy
from .stores.url import redacted

__all__ = [
    "PROGRESS_EVERY",
    "RETRY_WINDOW",
    "TOKEN_ENV",
    "McpProxy",
    "check_setup",
    "default_store_url",
    "first_error",
    "proxy_humanlayer",
    "run_proxy",
    "serve_http_address",
    "upstream_command",
]

RETRY_WINDOW = 900.0
"""Seconds an approval or denial given after its client stopped waiting is kept for the
identical call retried: past it, the retry asks again."""

PROGRESS_EVERY = 10.0
"""Seconds between the progress notifications of a call waiting for a human."""

TOKEN_ENV = "HUMANLAYER_MCP_TOKEN"
"""The environment variable read for ``--token`` (the key MCP clients send over HTTP)."""

_OWN_ENV = "HUMANLAYER_"
"""The upstream server inherits the proxy's environment but for these variables: the web
console's key and the store's URL are not the gated server's to read."""

Upstream = StdioServerParameters | str
"""The server behind the proxy: a command to start (stdio), or a streamable-HTTP URL."""


def default_store_url() -> str:
    """The per-user SQLite store every proxy of this user shares (and ``serve`` and the CLI
    can open): ``$XDG_STATE_HOME/humanlayer-async/approvals.db``, ``~/.local/state/...``
    when that is unset."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return "sqlite:///" + os.path.join(os.path.abspath(state), "humanlayer-async", "approvals.db")


def upstream_command(argv: Sequence[str]) -> StdioServerParameters:
    """The command that starts the upstream server, with the proxy's environment minus ours."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(_OWN_ENV)}
    return StdioServerParameters(command=argv[0], args=list(argv[1:]), env=env)


def proxy_humanlayer(*, store: str, listen: str | None) -> HumanLayer:
    """The proxy's ``HumanLayer`` without ``--config``: the shared store, and the web console
    only with ``listen`` (otherwise no channel: decisions come from another process)."""
    return HumanLayer([WebChannel()] if listen else [], store=store, listen=listen)


def check_setup(hl: HumanLayer, policy: Policy, *, stdio: bool) -> None:
    """Refuse, before anything starts, what would fail later: the terminal channel where the
    MCP client owns stdin and stdout, and a rule naming a channel label ``hl`` lacks."""
    if stdio and any(isinstance(channel, ConsoleChannel) for channel in hl.channels):
        raise ConfigurationError(
            "the terminal channel (ConsoleChannel) cannot ask over stdio: the MCP client owns this"
            " process's stdin and stdout. Use the web console (--listen), Slack or email, or serve"
            " MCP over HTTP (--serve-http)"
        )
    labels = {channel_label(channel) for channel in hl.channels}
    for rule in policy.rules:
        missing = sorted(set(rule.channels or ()) - labels)
        if missing:
            raise ConfigurationError(
                f"the rule for {rule.tool!r} names channels labelled {', '.join(missing)};"
                f" the proxy has: {', '.join(sorted(labels)) or 'none'}"
            )


@dataclass(eq=False)
class _Ask:
    """One gated call put to a human, and how many of the client's calls wait for it."""

    call: tuple[str, str]
    """The tool and its arguments' digest: what a retry must match."""
    done: anyio.Event = field(default_factory=anyio.Event)
    decision: Decision | None = None
    error: HumanLayerError | None = None
    waiting: int = 0
    kept_until: float = math.inf
    """When a decision nobody took is forgotten (event loop time)."""


class McpProxy:
    """Serves ``upstream``'s tools, resources and prompts; a tool call ``policy`` gates waits
    for a human (``hl``) first. Requests put to a human are waited for in ``task_group``."""

    def __init__(
        self,
        hl: HumanLayer,
        policy: Policy,
        upstream: ClientSession,
        *,
        name: str,
        task_group: TaskGroup,
    ) -> None:
        self.hl = hl
        self.policy = policy
        self.upstream = upstream
        self.name = name
        self._task_group = task_group
        self._schemas: dict[str, Mapping[str, Any] | None] = {}
        self._asks: dict[tuple[str, str], list[_Ask]] = {}

    def server(self, capabilities: types.ServerCapabilities, instructions: str | None = None) -> Server[Any]:
        """The MCP server clients talk to: what ``capabilities`` (the upstream's) offer, relayed."""
        info = self.upstream.server_info
        server: Server[Any] = Server(
            self.name,
            version=info.version if info else "",
            title=info.title if info else None,
            instructions=instructions,
        )
        relayed: list[tuple[str, type[BaseModel], type[types.Request[Any, Any]], type[BaseModel]]] = []
        if capabilities.tools is not None:
            server.add_request_handler("tools/list", types.PaginatedRequestParams, self._list_tools)
            server.add_request_handler("tools/call", types.CallToolRequestParams, self._call_tool)
        if capabilities.resources is not None:
            relayed += [
                (
                    "resources/list",
                    types.PaginatedRequestParams,
                    types.ListResourcesRequest,
                    types.ListResourcesResult,
                ),
                (
                    "resources/templates/list",
                    types.PaginatedRequestParams,
                    types.ListResourceTemplatesRequest,
                    types.ListResourceTemplatesResult,
                ),
                (
                    "resources/read",
                    types.ReadResourceRequestParams,
                    types.ReadResourceRequest,
                    types.ReadResourceResult,
                ),
            ]
        if capabilities.prompts is not None:
            relayed += [
                (
                    "prompts/list",
                    types.PaginatedRequestParams,
                    types.ListPromptsRequest,
                    types.ListPromptsResult,
                ),
                ("prompts/get", types.GetPromptRequestParams, types.GetPromptRequest, types.GetPromptResult),
            ]
        if capabilities.completions is not None:
            relayed.append(
                (
                    "completion/complete",
                    types.CompleteRequestParams,
                    types.CompleteRequest,
                    types.CompleteResult,
                )
            )
        for method, params_type, request, result in relayed:
            server.add_request_handler(method, params_type, self._relay(method, request, result))
        return server

    def _relay(self, method: str, request: type[types.Request[Any, Any]], result: type[BaseModel]) -> Any:
        """A handler that sends the client's request upstream and returns what comes back."""

        async def relay(ctx: ServerRequestContext[Any], params: types.RequestParams) -> BaseModel:
            return await self.upstream.send_request(request(method=method, params=_own_meta(params)), result)

        return relay

    # -- tools --------------------------------------------------------------------------

    async def _list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams
    ) -> types.ListToolsResult:
        listed = await self.upstream.send_request(
            types.ListToolsRequest(params=_own_meta(params)), types.ListToolsResult
        )
        self._remember(listed)
        return listed

    def _remember(self, listed: types.ListToolsResult) -> None:
        for tool in listed.tools:
            self._schemas[tool.name] = tool.input_schema.get("properties")

    async def _schema(self, name: str) -> Mapping[str, Any] | None:
        """The tool's arguments' JSON Schemas (for the rule's editable ones), listing the
        upstream's tools once more when the client called a tool it had not listed."""
        if name not in self._schemas:
            cursor: str | None = None
            while True:
                listed = await self.upstream.send_request(
                    types.ListToolsRequest(params=types.PaginatedRequestParams(cursor=cursor)),
                    types.ListToolsResult,
                )
                self._remember(listed)
                cursor = listed.next_cursor
                if cursor is None or name in self._schemas:
                    break
        return self._schemas.get(name)

    async def _call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        name, arguments = params.name, dict(params.arguments or {})
        if self.policy.requires(name, arguments) is not None:
            try:
                decision = await self._decision(ctx, name, arguments)
            except HumanLayerError as exc:
                return _tool_error(
                    f"{name} did not run: it needs a human's approval, which could not be asked: {exc}"
                )
            if decision is not None and not decision.approved:
                return _tool_error(str(refusal(name, decision)))
            if decision is not None and decision.edits:
                arguments.update(decision.edits)
        call = types.CallToolRequest(params=types.CallToolRequestParams(name=name, arguments=arguments))
        return await self.upstream.send_request(call, types.CallToolResult)

    async def _decision(
        self, ctx: ServerRequestContext[Any], name: str, arguments: dict[str, Any]
    ) -> Decision | None:
        """The decision on this call: of a request nobody waits for any more (the client gave
        up on an identical call), else of a new one."""
        schemas = await self._schema(name)
        self._forget(anyio.current_time())
        call = (name, digest(arguments))
        asks = self._asks.setdefault(call, [])
        ask = next((ask for ask in asks if not ask.waiting), None)
        if ask is None:
            ask = _Ask(call)
            asks.append(ask)
            self._task_group.start_soon(self._put, ask, name, arguments, schemas)
        else:
            logger.info("mcp_proxy.reattached", server=self.name, tool=name, decided=ask.done.is_set())
        ask.waiting += 1
        taken = False
        try:
            await self._wait(ctx, ask, name)
            taken = True
        finally:
            ask.waiting -= 1
            if taken:
                self._drop(ask)
            else:  # cancelled: the request stays for the identical call retried
                logger.info(
                    "mcp_proxy.client_gave_up", server=self.name, tool=name, decided=ask.done.is_set()
                )
                if ask.done.is_set() and not ask.waiting:
                    self._left(ask)
        if ask.error is not None:
            raise ask.error
        return ask.decision

    async def _put(
        self, ask: _Ask, name: str, arguments: dict[str, Any], schemas: Mapping[str, Any] | None
    ) -> None:
        """Ask a human, in the proxy's task group: a client that gives up does not end it."""
        try:
            ask.decision = await self.hl.check_call(
                name, arguments, policy=self.policy, qualname=f"{self.name}/{name}", schemas=schemas
            )
        except HumanLayerError as exc:
            ask.error = exc
        except anyio.get_cancelled_exc_class():  # the proxy stops: nothing runs unapproved
            ask.error = HumanLayerError("the proxy stopped while this call waited for a human")
            raise
        finally:
            ask.done.set()
        if not ask.waiting:
            self._left(ask)

    async def _wait(self, ctx: ServerRequestContext[Any], ask: _Ask, name: str) -> None:
        """Wait for the decision, telling a client that asked for progress every so often."""
        progress = 0
        while not ask.done.is_set():
            await ctx.session.report_progress(progress, None, f"waiting for a human to approve {name}")
            progress += 1
            with anyio.move_on_after(PROGRESS_EVERY):
                await ask.done.wait()

    def _left(self, ask: _Ask) -> None:
        """A decision nobody waited for: a human's (or a grant's) approval or denial waits
        ``RETRY_WINDOW`` for the retry; a timeout or cancellation is forgotten (a retry asks)."""
        decision = ask.decision
        if decision is not None and decision.status in (Status.APPROVED, Status.DENIED):
            ask.kept_until = anyio.current_time() + RETRY_WINDOW
            logger.info(
                "mcp_proxy.decision_kept", server=self.name, tool=ask.call[0], request_id=decision.request_id
            )
        else:
            self._drop(ask)

    def _forget(self, now: float) -> None:
        for asks in list(self._asks.values()):
            for ask in [ask for ask in asks if ask.kept_until < now and not ask.waiting]:
                self._drop(ask)

    def _drop(self, ask: _Ask) -> None:
        asks = self._asks.get(ask.call, [])
        if ask in asks:
            asks.remove(ask)
        if not asks:
            self._asks.pop(ask.call, None)


def _own_meta(params: Any) -> Any:
    """The client's params without its ``_meta`` (its progress token is not the upstream's)."""
    return None if params is None else params.model_copy(update={"meta": None})


def _tool_error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True)


# -- running -------------------------------------------------------------------------------


def serve_http_address(value: str, token: str | None) -> tuple[str, int]:
    """``--serve-http HOST:PORT``: a loopback host, or any with ``--token``."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigurationError(f"--serve-http takes HOST:PORT (e.g. 127.0.0.1:8788), not {value!r}")
    if token is None and not is_loopback(host):
        raise ConfigurationError(
            f"--serve-http {value} is reachable from other machines: give --token (or ${TOKEN_ENV}),"
            " the key clients send as 'Authorization: Bearer <token>', or serve on 127.0.0.1"
        )
    if token is not None and len(token) < 16:
        raise ConfigurationError("the MCP token must be at least 16 characters")
    return host, int(port)


def _local_only(host: str) -> TransportSecuritySettings:
    """Host and Origin headers naming this machine only: no web page elsewhere (DNS
    rebinding) reaches a loopback server through a visitor's browser."""
    hosts = {"127.0.0.1", "localhost", "[::1]", f"[{host}]" if ":" in host else host}
    return TransportSecuritySettings(
        allowed_hosts=[f"{name}:*" for name in sorted(hosts)],
        allowed_origins=[f"http://{name}:*" for name in sorted(hosts)],
    )


class _Bearer:
    """ASGI: only requests with ``Authorization: Bearer <token>`` reach ``app``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = Headers(scope=scope).get("authorization", "").encode()
            if not hmac.compare_digest(given, self._expected):
                response = PlainTextResponse("a Bearer token is needed", 401, {"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def run_proxy(
    upstream: Upstream,
    hl: HumanLayer,
    policy: Policy,
    *,
    name: str | None = None,
    serve_http: tuple[str, int] | None = None,
    token: str | None = None,
) -> None:
    """Run the proxy until its client goes away (stdio) or it is cancelled (HTTP)."""
    async with hl, _connected(upstream) as client, anyio.create_task_group() as asks:
        info = client.server_info
        proxy = McpProxy(
            hl, policy, client.session, name=name or (info.name if info else "mcp"), task_group=asks
        )
        server = proxy.server(client.server_capabilities, client.instructions)
        async with anyio.create_task_group() as serving:
            serving.start_soon(_stop_on_signal, serving.cancel_scope)
            if serve_http is None:
                async with stdio_server() as (read, write):
                    await server.run(read, write, server.create_initialization_options())
            else:
                await _serve_http(server, *serve_http, token)
            serving.cancel_scope.cancel()
        asks.cancel_scope.cancel()  # the requests nobody waits for any more are cancelled


def first_error(exc: BaseException) -> BaseException:
    """``exc``, or the first error of the exception group (of groups) it is: what task groups
    wrap (the transports', the listener's) is reported as itself."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


@contextlib.asynccontextmanager
async def _connected(upstream: Upstream) -> AsyncIterator[Client]:
    """The client of the upstream server; ``ConfigurationError`` when it cannot be reached
    (a command that does not start or is no MCP server, a URL nobody answers)."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            client = await stack.enter_async_context(Client(upstream, cache=None))
        except Exception as exc:
            cause = first_error(exc)
            if not isinstance(cause, OSError | MCPError | httpx2.HTTPError):
                raise
            where = (
                redacted(upstream)
                if isinstance(upstream, str)
                else shlex.join([upstream.command, *upstream.args])
            )
            raise ConfigurationError(
                f"the MCP server {where} did not answer: {cause} (its own messages, if any, are above)"
            ) from exc
        yield client


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    """SIGTERM or SIGINT: stop serving, and close what is open (the requests left waiting are
    cancelled, the upstream server stopped)."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            scope.cancel()
            return


async def _serve_http(server: Server[Any], host: str, port: int, token: str | None) -> None:
    """Serve MCP over streamable HTTP at ``/mcp`` (Host and Origin checked on loopback)."""
    app: ASGIApp = server.streamable_http_app(
        host=host, transport_security=_local_only(host) if is_loopback(host) else None
    )
    if token is not None:
        app = _Bearer(app, token)
    listener = Listener(app, host, port)
    async with server.session_manager.run(), anyio.create_task_group() as task_group:
        await task_group.start(listener.serve)
        write_lines([f"humanlayer-async mcp-proxy: serving MCP at {listener.url}/mcp"], sys.stderr)
