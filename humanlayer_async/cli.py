"""The ``humanlayer-async`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import anyio

from ._client import HumanLayer
from ._commands import COMMANDS, add_commands, run_command
from ._demo import run_demo
from ._exceptions import ConfigurationError
from ._terminal import log_to_terminal, write_lines
from .channels.console import HELP, ConsoleChannel
from .channels.web import WebChannel

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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``humanlayer-async`` command."""
    parser = argparse.ArgumentParser(prog="humanlayer-async", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run a scripted agent whose risky tools wait for you")
    demo.add_argument("--timeout", type=float, default=600.0, help="seconds each approval waits")
    demo.add_argument(
        "--listen",
        default="127.0.0.1:8787",
        help="host:port of the web console (port 0 picks a free one)",
    )
    add_commands(commands)
    args = parser.parse_args(argv)
    if args.command in COMMANDS:
        return run_command(args)
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
