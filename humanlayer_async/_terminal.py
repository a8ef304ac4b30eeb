"""Writing to a terminal: the one place the console channel, the CLI and the demo print through.

Every line passes through ``visible`` on its way out, so nothing a caller, an LLM or a
typist wrote can move the cursor, clear the screen, reorder text or start a line of its
own: a newline inside a line is printed as ``\\n``. Layout is the list of lines, never
newlines inside them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, MutableMapping, Sequence
from typing import Any, TextIO

import structlog

from ._render import visible

__all__ = ["MIN_PREFIX", "log_to_terminal", "table", "write_lines"]

MIN_PREFIX = 4
"""The fewest characters of an id that name a request when typed: a one-letter slip names none."""


def write_lines(lines: Iterable[str], file: TextIO | None = None) -> None:
    """Write each of ``lines`` on a line of its own, every control and bidi character spelled out.

    ``file`` defaults to standard output at the time of writing.
    """
    out = sys.stdout if file is None else file
    out.write("".join(f"{visible(line)}\n" for line in lines))
    out.flush()


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """``rows`` under ``headers`` in columns, cells made visible before they are measured."""
    cells = [[visible(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]


def _visible_values(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: every string value of the event made visible."""
    return {key: visible(value) if isinstance(value, str) else value for key, value in event.items()}


def log_to_terminal(level: int, file: TextIO | None = None) -> None:
    """Set structlog up for a command run in a terminal: its console output, from ``level`` up.

    For the ``humanlayer-async`` command only (the library never sets logging up).
    structlog prints a string value without spaces as it is; here every string value
    passes through ``visible`` first, so a comment from a Slack click or an email logged by
    ``serve`` cannot redraw the operator's screen. ``file`` defaults to standard output.
    """
    structlog.reset_defaults()
    *processors, render = structlog.get_config()["processors"]
    structlog.configure(
        processors=[*processors, _visible_values, render],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file),
    )
