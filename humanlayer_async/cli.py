"""The ``humanlayer-async`` command."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import anyio

from ._client import HumanLayer
from ._commands import COMMANDS, _load_app, add_commands, run_command
from ._demo import run_demo
from ._exceptions import ConfigurationError
from ._terminal import log_to_terminal, write_lines
from .channels.console import HELP, ConsoleChannel
from .channels.web import WebChannel
from .policy import Policy

__all__ = ["main"]


async def _demo(approval_timeout: float, listen: str) -> None:
    web = WebChannel()
    async with HumanLayer([ConsoleChannel(), web], timeout=approval_timeout, listen=listen) as hl:
        write_lines(
            [
                "humanlayer-async demo: a scripted agent (no LLM, no network) asks you before it acts.",
                f"Answer in the web console ({web.url}, sign in with the link printed above)",
                "or in this terminal; either one shows the decisions made in the other.",
                *HELP.splitlines(),
                "",
            ]
        )
        await run_demo(hl, sys.stdout)


def _add_mcp_proxy(commands: argparse._SubParsersAction[Any]) -> None:
    proxy = commands.add_parser(
        "mcp-proxy",
        help="serve an MCP server's tools, the calls a policy names waiting for a human's approval",
        description="Serve the tools, resources and prompts of the MCP server started by COMMAND"
        " (or at --upstream-url) as they are, over stdio (or --serve-http); a tool call the policy"
        " gates waits for a human, then runs with the approver's edits, or answers the client with"
        " the refusal as a tool error. Nothing is printed on stdout but MCP: logs go to stderr."
        " See docs/mcp-proxy.md.",
    )
    proxy.add_argument("--policy", required=True, help="the policy file (TOML): which tools ask, and whom")
    proxy.add_argument(
        "--store",
        help="where requests live, shared with the other proxies, serve and the CLI (default:"
        " $HUMANLAYER_STORE, else sqlite:///$XDG_STATE_HOME/humanlayer-async/approvals.db,"
        " ~/.local/state when XDG_STATE_HOME is unset)",
    )
    proxy.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="serve this proxy's own web console there (port 0 picks a free one; its key:"
        " $HUMANLAYER_WEB_TOKEN). Without it the proxy asks through no channel: decide in serve's"
        " console or with the CLI",
    )
    proxy.add_argument(
        "--name", help="the server's name in requests and grants, NAME/tool (default: the upstream's)"
    )
    proxy.add_argument(
        "--config",
        metavar="MODULE:ATTRIBUTE",
        help="a HumanLayer to ask through (its channels, store and listener), as serve takes;"
        " not with --store or --listen",
    )
    proxy.add_argument(
        "--upstream-url", metavar="URL", help="a streamable-HTTP MCP server, instead of COMMAND"
    )
    proxy.add_argument(
        "--serve-http",
        metavar="HOST:PORT",
        help="serve MCP over streamable HTTP at http://HOST:PORT/mcp instead of stdio"
        " (loopback only without --token)",
    )
    proxy.add_argument(
        "--token",
        help="with --serve-http: the key clients send as 'Authorization: Bearer <token>'"
        " (default: $HUMANLAYER_MCP_TOKEN)",
    )
    proxy.add_argument(
        "upstream_command", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="starts the MCP server"
    )


def _mcp_proxy(args: argparse.Namespace) -> int:
    """``mcp-proxy``: check everything that can be checked, then serve until the client leaves."""
    log_to_terminal(logging.INFO, sys.stderr)  # standard output is the MCP client's
    try:
        from . import mcp_proxy
    except ImportError as exc:
        write_lines(
            [f"humanlayer-async mcp-proxy: needs the MCP SDK: pip install 'humanlayer-async[mcp]' ({exc})"],
            sys.stderr,
        )
        return 2
    command = args.upstream_command
    command = command[1:] if command[:1] == ["--"] else command
    try:
        if bool(command) == bool(args.upstream_url):
            raise ConfigurationError(
                "give the command that starts the MCP server after --, or --upstream-url URL: one of them"
            )
        policy = Policy.from_toml(args.policy)
        token = args.token or os.environ.get(mcp_proxy.TOKEN_ENV) or None
        serve_http = None if args.serve_http is None else mcp_proxy.serve_http_address(args.serve_http, token)
        if args.config is not None:
            if args.store or args.listen:
                raise ConfigurationError(
                    f"{args.config} is a HumanLayer with its own store and listener: set them there,"
                    " not with --store or --listen"
                )
            hl = _load_app(args.config)
        else:
            store = args.store or os.environ.get("HUMANLAYER_STORE") or mcp_proxy.default_store_url()
            hl = mcp_proxy.proxy_humanlayer(store=store, listen=args.listen)
        mcp_proxy.check_setup(hl, policy, stdio=serve_http is None)
        upstream = args.upstream_url or mcp_proxy.upstream_command(command)
        run = functools.partial(
            mcp_proxy.run_proxy, upstream, hl, policy, name=args.name, serve_http=serve_http, token=token
        )
        anyio.run(run)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # what a task group wrapped is reported as itself
        error = mcp_proxy.first_error(exc)
        if not isinstance(error, ConfigurationError | OSError):
            raise
        write_lines([f"humanlayer-async mcp-proxy: {error}"], sys.stderr)
        return 2
    return 0


class _Parser(argparse.ArgumentParser):
    """A parser, and every subcommand's (they are made of its class), that takes options only
    spelled out: an abbreviation such as ``--tok=...`` would otherwise be an error that repeats
    a secret typed by mistake, or match an option nobody meant."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``humanlayer-async`` command."""
    parser = _Parser(prog="humanlayer-async", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run a scripted agent whose risky tools wait for you")
    demo.add_argument("--timeout", type=float, default=600.0, help="seconds each approval waits")
    demo.add_argument(
        "--listen",
        default="127.0.0.1:8787",
        help="host:port of the web console (port 0 picks a free one)",
    )
    add_commands(commands)
    _add_mcp_proxy(commands)
    args = parser.parse_args(argv)
    if args.command in COMMANDS:
        return run_command(args)
    if args.command == "mcp-proxy":
        return _mcp_proxy(args)
    # The demo is an application: it may set logging up (the library never does).
    log_to_terminal(logging.ERROR)
    try:
        anyio.run(_demo, args.timeout, args.listen)
    except KeyboardInterrupt:
        return 130
    except ConfigurationError as exc:
        if isinstance(exc.__cause__, OSError):  # the listener could not bind: say how on this command line
            exc = ConfigurationError(
                f"the web console cannot listen on {args.listen}: {exc.__cause__.strerror or exc.__cause__}."
                " Pick another port: --listen 127.0.0.1:8788, or --listen 127.0.0.1:0 for a free one"
                " (make demo LISTEN=127.0.0.1:0)"
            )
        write_lines([f"humanlayer-async demo: {exc}"], sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
