"""ConsoleChannel: ask in the terminal, answer with ``y <id>`` / ``n <id> reason``."""

from __future__ import annotations

import getpass
import os
import stat
import sys
from typing import TextIO

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from .._exceptions import HumanLayerError
from .._models import ApprovalRequest
from .._render import describe_decision, format_kwargs, format_value, summarize
from .base import BaseChannel, Decider

__all__ = ["ConsoleChannel"]

_APPROVE = {"y", "yes", "approve", "a"}
_DENY = {"n", "no", "deny", "d"}
_ANSWER = {"r", "reply", "answer"}
_LIST = {"?", "help", "ls", "list", "h"}

HELP = (
    "answer with:  y <id>            approve\n"
    "              n <id> [reason]   deny\n"
    "              r <id> <text>     answer a question\n"
    "              ?                 list what is waiting\n"
    "(<id> may be left out when only one request is waiting)"
)


class ConsoleChannel(BaseChannel):
    """The terminal: prints each request and reads answers from standard input.

    Reading never blocks the event loop (the input is watched by the loop itself, so
    this needs a Unix-like OS), and any number of requests may wait at once: each is
    answered by the short id printed with it.

    Args:
        user: Who decisions typed here are recorded as. Default: the OS user.
        input: A readable file (or file descriptor) to read answers from. Default: stdin.
        output: Where requests are printed. Default: stdout at the time of printing.
    """

    name = "console"

    def __init__(
        self,
        *,
        user: str | None = None,
        input: TextIO | int | None = None,  # noqa: A002 - mirrors print()/open()
        output: TextIO | None = None,
    ) -> None:
        self.user = user or getpass.getuser()
        self._input = input
        self._output = output
        self._waiting: dict[str, ApprovalRequest] = {}
        self._decider: Decider | None = None

    def __repr__(self) -> str:
        return f"ConsoleChannel(user={self.user!r})"

    def _print(self, text: str) -> None:
        output = self._output or sys.stdout
        output.write(text + "\n")
        output.flush()

    async def send(self, request: ApprovalRequest) -> str | None:
        self._waiting[request.id] = request
        self._print(describe(request))
        return request.short_id

    async def update(self, request: ApprovalRequest, ref: str | None) -> None:
        self._waiting.pop(request.id, None)
        if request.decision is not None:
            self._print(f"[{request.short_id}] {request.function}: {describe_decision(request.decision)}")

    async def run(self, decider: Decider, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        self._decider = decider
        source = sys.stdin if self._input is None else self._input
        fd = source if isinstance(source, int) else (source.fileno() if source is not None else None)
        task_status.started()
        if fd is None:
            return
        # The loop can watch pipes, sockets and terminals; a file or /dev/null is always
        # readable (the OS refuses to watch it) and a read of it never blocks.
        mode = os.fstat(fd).st_mode
        watch = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)
        pending = b""
        while True:
            if watch:
                await anyio.wait_readable(fd)
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                return
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                await self.handle(line.decode(errors="replace"))

    async def handle(self, line: str) -> None:
        """Act on one typed line."""
        words = line.split(maxsplit=2)
        if not words:
            return
        verb = words[0].lower()
        if verb in _LIST:
            self._print(self._listing())
            return
        if verb not in _APPROVE | _DENY | _ANSWER:
            self._print(f"unknown command {words[0]!r}\n{HELP}")
            return
        request, rest = self._target(words[1:])
        if request is None:
            return
        assert self._decider is not None
        try:
            if verb in _ANSWER:
                if not rest:
                    self._print(f"type the answer after the id: r {request.short_id} <text>")
                    return
                decision = await self._decider.respond(request.id, rest, by=self.user, via=self.name)
            else:
                decision = await self._decider.decide(
                    request.id, verb in _APPROVE, by=self.user, comment=rest or None, via=self.name
                )
        except HumanLayerError as exc:
            self._print(f"[{request.short_id}] not decided: {exc}")
            return
        if decision.by != self.user or decision.via != self.name:
            self._print(f"[{request.short_id}] already {describe_decision(decision)}")

    def _target(self, words: list[str]) -> tuple[ApprovalRequest | None, str]:
        """The request a line names (by id prefix, or the only one waiting) and the rest."""
        if words:
            matches = [r for r in self._waiting.values() if r.id.startswith(words[0].lower())]
            if len(matches) == 1:
                return matches[0], " ".join(words[1:])
            if len(matches) > 1:
                self._print(f"{words[0]!r} matches {len(matches)} requests: type more of the id")
                return None, ""
        if len(self._waiting) == 1:
            return next(iter(self._waiting.values())), " ".join(words)
        if not self._waiting:
            self._print("nothing is waiting for an answer")
        else:
            self._print(f"which one? {len(self._waiting)} are waiting:\n{self._listing()}")
        return None, ""

    def _listing(self) -> str:
        if not self._waiting:
            return "nothing is waiting for an answer\n" + HELP
        lines = [f"  {r.short_id}  {summarize(r)}" for r in self._waiting.values()]
        return "\n".join([*lines, HELP])


def describe(request: ApprovalRequest) -> str:
    """The block printed when a request arrives."""
    title = "question" if request.kind == "question" else "approval needed"
    lines = [f"── {title} [{request.short_id}] " + "─" * 30]
    if request.kind == "question":
        lines.append(request.message or "")
        lines.append(f"  answer: r {request.short_id} <your answer>")
    else:
        lines.append(f"{request.function}({format_kwargs(request.kwargs)})")
        if request.doc:
            lines.append(f"  {request.doc.splitlines()[0]}")
        lines.extend(f"  {key}: {format_value(value)}" for key, value in request.context.items())
        if request.approvers:
            lines.append(f"  approvers: {', '.join(request.approvers)}")
        lines.append(f"  answer: y {request.short_id}  |  n {request.short_id} <reason>")
    lines.append(f"  expires {request.expires_at:%Y-%m-%d %H:%M:%S} UTC")
    return "\n".join(lines)
