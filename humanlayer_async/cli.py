"""The ``humanlayer-async`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import anyio
import structlog

from ._client import HumanLayer
from ._commands import COMMANDS, add_commands, run_command
from ._demo import run_demo
from .channels.console import HELP, ConsoleChannel

__all__ = ["main"]


async def _demo(approval_timeout: float) -> None:
    console = ConsoleChannel()
    async with HumanLayer([console], timeout=approval_timeout, listen=None) as hl:
        print("humanlayer-async demo: a scripted agent (no LLM, no network) asks you before it acts.")
        print(HELP + "\n")
        await run_demo(hl, sys.stdout)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``humanlayer-async`` command."""
    parser = argparse.ArgumentParser(prog="humanlayer-async", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run a scripted agent whose risky tools wait for you")
    demo.add_argument("--timeout", type=float, default=600.0, help="seconds each approval waits")
    add_commands(commands)
    args = parser.parse_args(argv)
    if args.command in COMMANDS:
        return run_command(args)
    # The demo is an application: it may set logging up (the library never does).
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    try:
        anyio.run(_demo, args.timeout)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
