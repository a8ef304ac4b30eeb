"""ConsoleChannel: ask in the terminal, answer with ``y <id>`` / ``n <id> <reason>``."""

from __future__ import annotations

import getpass
import os
import shlex
import stat
import sys
from typing import Any, TextIO

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from .._edits import parse_edit
from .._exceptions import HumanLayerError, UnknownRequest
from .._models import ApprovalRequest, Decision
from .._render import (
    describe_decision,
    describe_votes,
    full_call,
    shorten,
    shorten_kwargs,
    summarize,
    visible,
)
from .._terminal import MIN_PREFIX, write_lines
from .base import BaseChannel, Decider, check_label

__all__ = ["ConsoleChannel"]

_VERBS = {
    **dict.fromkeys(("y", "yes", "approve", "a"), "y"),
    **dict.fromkeys(("n", "no", "deny", "d"), "n"),
    **dict.fromkeys(("r", "reply", "answer"), "r"),
    **dict.fromkeys(("v", "view", "show"), "v"),
    **dict.fromkeys(("e", "edit"), "e"),
}
"""What may be typed first on a line, and the verb it stands for."""
_FORMS = {
    "y": "y <id> [comment]",
    "n": "n <id> <reason>",
    "r": "r <id> <answer>",
    "v": "v <id>",
    "e": "e <id> <name>=<value> ...",
}
_LIST = {"?", "help", "ls", "list", "h"}

_QUESTION = 2_000
"""Characters of a question shown in its block (all of it with ``v <id>``)."""
_REMEMBERED = 10_000
"""Decided requests whose short ids are still recognised (older ones by their full id)."""

HELP = (
    "answer with:  y <id> [comment]   approve\n"
    "              n <id> <reason>    deny (the agent is told the reason)\n"
    "              r <id> <answer>    answer a question\n"
    "              e <id> name=value  approve with editable arguments changed ('quote values' with spaces)\n"
    "              v <id>             show the full call, nothing shortened\n"
    "              ?                  list what is waiting\n"
    f"<id> is the id printed with the request, or its first {MIN_PREFIX} characters or more"
)


class ConsoleChannel(BaseChannel):
    """The terminal: prints each request and reads answers from standard input.

    Reading never blocks the event loop (the input is watched by the loop itself, so
    this needs a Unix-like OS), and any number of requests may wait at once. Every
    answer names its request (``y <id>``): a line applies to that request or to none.
    Everything printed is passed through ``visible``, so no argument can redraw the screen.

    Args:
        user: Who decisions typed here are recorded as. Default: the OS user.
        label: What a ``Policy`` names this channel by (its ``channels = [...]``). Default:
            ``"console"``, its kind.
        input: A readable file (or file descriptor) to read answers from. Default: stdin.
        output: Where requests are printed. Default: stdout at the time of printing.
    """

    name = "console"

    def __init__(
        self,
        *,
        label: str | None = None,
        user: str | None = None,
        input: TextIO | int | None = None,  # noqa: A002 - mirrors print()/open()
        output: TextIO | None = None,
    ) -> None:
        self.label = check_label(label, self.name)
        self.user = user or getpass.getuser()
        self._input = input
        self._output = output
        self._waiting: dict[str, ApprovalRequest] = {}
        self._settled: dict[str, str] = {}
        """Id → summary of the requests that waited here and were decided, the latest ``_REMEMBERED``."""
        self._decider: Decider | None = None

    def __repr__(self) -> str:
        return f"ConsoleChannel(user={self.user!r})"

    def _say(self, *lines: str) -> None:
        write_lines(lines, self._output)

    async def send(self, request: ApprovalRequest) -> str | None:
        self._waiting[request.id] = request
        self._say(*describe(request))
        return request.short_id

    async def update(self, request: ApprovalRequest, ref: str | None) -> None:
        if self._waiting.pop(request.id, None) is not None:
            self._settled[request.id] = summarize(request)
            if len(self._settled) > _REMEMBERED:
                del self._settled[next(iter(self._settled))]
        if request.decision is not None:
            self._say(_outcome(request, request.decision))

    async def remind(self, request: ApprovalRequest, ref: str | None) -> None:
        self._say(f"reminder: [{request.short_id}] still waits: {summarize(request)}")

    async def progress(self, request: ApprovalRequest, ref: str | None) -> None:
        shown = self._waiting.get(request.id)
        if shown is not None and shown.fingerprint != request.fingerprint:  # edited: show the new call
            self._waiting[request.id] = request
            self._say(
                f"[{request.short_id}] was edited: the votes start again on this call", *describe(request)
            )
        self._say(f"[{request.short_id}] {describe_votes(request.votes, request.approvals)}")

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
        """Act on one typed line: ``<verb> <id> [text]``, applied to the request ``<id>`` names or to none."""
        words = line.split(maxsplit=2)
        if not words:
            return
        verb = _VERBS.get(words[0].lower())
        if words[0].lower() in _LIST:
            self._say(*self._listing())
        elif verb is None:
            self._say(f"unknown command '{words[0]}'", *HELP.splitlines())
        elif len(words) < 2:
            self._say(f"name the request: {_FORMS[verb]}", *self._listing())
        else:
            try:
                request = await self._find(words[1])
                if request is not None:
                    await self._act(verb, request, words[2].strip() if len(words) > 2 else "")
            except HumanLayerError as exc:
                self._say(f"not decided: {exc}")

    async def _find(self, typed: str) -> ApprovalRequest | None:
        """The request ``typed`` names (its id or the start of it), fresh from the store.

        ``None`` after saying why not: too short, unknown, ambiguous, or decided elsewhere.
        """
        assert self._decider is not None
        prefix = typed.lower()
        if len(prefix) < MIN_PREFIX:
            self._say(f"'{typed}' is too short: type at least {MIN_PREFIX} characters of the id")
            return None
        ids = [known for known in (*self._waiting, *self._settled) if known.startswith(prefix)]
        if len(ids) > 1:
            self._say(
                f"'{typed}' is the start of {len(ids)} request ids: type more of it",
                *(f"  {known[:8]}  {self._summary(known)}" for known in ids),
            )
            return None
        if ids:
            return await self._decider.get(ids[0])
        # Never shown here (or long ago): a full id still says who decided it.
        try:
            request = await self._decider.get(prefix)
        except UnknownRequest:
            self._say(f"no request with id '{typed}' here: type ? to list what is waiting")
            return None
        if request.decision is None:
            self._say(f"[{request.short_id}] was not sent to this terminal: answer it where it was sent")
        else:
            self._say(_outcome(request, request.decision, already=True))
        return None

    async def _act(self, verb: str, request: ApprovalRequest, text: str) -> None:
        """Show, decide or answer ``request`` as ``verb`` says; a decided request says who decided it."""
        assert self._decider is not None
        if verb == "v":
            self._say(*full_call(request).splitlines())
            if request.id in self._waiting:  # seen now, as it stands
                self._waiting[request.id] = request
            return
        if request.decision is not None:
            self._say(_outcome(request, request.decision, already=True))
            return
        if verb in ("n", "r", "e") and not text:
            self._say(f"nothing decided: type {_FORMS[verb].replace('<id>', request.short_id)}")
            return
        # The answer is to the call as this terminal showed it: one edited since does not take it.
        seen = self._waiting.get(request.id, request).fingerprint
        if verb == "r":
            answered = await self._decider.respond(request.id, text, by=self.user, via=self.name)
        elif verb == "e":
            edits = _edits(text, request)
            if edits is None:
                self._say(f"nothing decided: type {_FORMS['e'].replace('<id>', request.short_id)}")
                return
            answered = await self._decider.decide(
                request.id, True, by=self.user, via=self.name, edits=edits, seen=seen
            )
        else:
            answered = await self._decider.decide(
                request.id, verb == "y", by=self.user, comment=text or None, via=self.name, seen=seen
            )
        if answered.decision is None:  # a vote: the request waits for more
            self._say(f"{request.short_id}: counted, {describe_votes(answered.votes, answered.needed)}")
        elif not answered.stands:  # someone else decided first: say who (ours is shown by update)
            self._say(_outcome(request, answered.decision, already=True))

    def _summary(self, request_id: str) -> str:
        waiting = self._waiting.get(request_id)
        return summarize(waiting) if waiting is not None else self._settled[request_id]

    def _listing(self) -> list[str]:
        if not self._waiting:
            return ["nothing is waiting for an answer", *HELP.splitlines()]
        return [*(f"  {r.short_id}  {summarize(r)}" for r in self._waiting.values()), *HELP.splitlines()]


def _edits(text: str, request: ApprovalRequest) -> dict[str, Any] | None:
    """``name=value`` pairs typed after ``e <id>`` as edits (``None``: not in that form)."""
    try:
        words = shlex.split(text)
    except ValueError:  # an unclosed quote
        return None
    schemas = request.editable or {}
    edits: dict[str, Any] = {}
    for word in words:
        name, equals, value = word.partition("=")
        if not equals or not name:
            return None
        edits[name] = parse_edit(value, schemas.get(name))
    return edits


def _outcome(request: ApprovalRequest, decision: Decision, *, already: bool = False) -> str:
    """``[6f022d47] transfer_money: approved by alice via web at 19:44:52 UTC``."""
    outcome = f"already {describe_decision(decision)}" if already else describe_decision(decision)
    return f"[{request.short_id}] {visible(request.function)}: {outcome}"


def describe(request: ApprovalRequest) -> list[str]:
    """The lines printed when a request arrives; they say so where they shorten anything."""
    short = request.short_id
    expires = f"  expires {request.expires_at:%Y-%m-%d %H:%M:%S} UTC"
    if request.kind == "question":
        # One line: a newline in the question cannot draw a block of its own.
        text, cut = shorten(request.message or "", _QUESTION)
        hint = [f"  shortened above: v {short} shows the whole question"] if cut else []
        return [
            f"── question [{short}] " + "─" * 30,
            f"  {text}",
            *hint,
            f"  answer: r {short} <answer>",
            expires,
        ]
    doc = (request.doc or "").split("\n")
    context = [(visible(key), *shorten(value)) for key, value in request.context.items()]
    arguments, cut = shorten_kwargs(request.kwargs)
    cut = cut or len(doc) > 1
    lines = [
        f"── approval needed [{short}] " + "─" * 30,
        f"{visible(request.function)}({arguments})",
        *([f"  {visible(doc[0])}"] if doc[0] else []),
        *(f"  {key}: {text}" for key, text, _ in context),
    ]
    if request.approvers:
        lines.append(f"  approvers: {', '.join(visible(a) for a in request.approvers)}")
    if request.approvals > 1:
        lines.append(f"  needs {describe_votes(request.votes, request.approvals)}")
    if request.takes_edits and request.editable:
        names = ", ".join(visible(name) for name in request.editable)
        lines.append(f"  editable: {names}  (e {short} <name>=<value> approves with changes)")
    if cut or any(shortened for _, _, shortened in context):
        lines.append(f"  shortened above: v {short} shows the full call")
    lines.append(f"  answer: y {short} [comment]  |  n {short} <reason>  |  v {short}")
    lines.append(expires)
    return lines
