"""The terminal channel, driven through a real pipe."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from humanlayer_async import ApprovalDenied, HumanLayer, Status
from humanlayer_async.channels import ConsoleChannel

from .test_gate import wait_pending

pytestmark = pytest.mark.anyio


class Terminal:
    """A ConsoleChannel whose stdin is the read end of a real pipe."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self.output = io.StringIO()
        self.channel = ConsoleChannel(user="alice", input=self.read_fd, output=self.output)

    def type(self, line: str) -> None:
        os.write(self.write_fd, line.encode() + b"\n")

    async def wait_for(self, text: str) -> None:
        with anyio.fail_after(5):
            while text not in self.output.getvalue():
                await anyio.sleep(0.005)

    def close(self) -> None:
        os.close(self.write_fd)
        os.close(self.read_fd)


@pytest.fixture
async def terminal() -> AsyncIterator[Terminal]:
    term = Terminal()
    yield term
    term.close()


async def test_several_pending_requests_answered_by_short_id(terminal: Terminal) -> None:
    outcomes: dict[str, str] = {}
    async with HumanLayer([terminal.channel], listen=None) as hl:

        @hl.require_approval()
        async def send_email(to: str, password: str = "hunter2") -> str:
            """Send an email."""
            return f"sent to {to}"

        async def call(to: str) -> None:
            try:
                outcomes[to] = await send_email(to)
            except ApprovalDenied as exc:
                outcomes[to] = f"denied: {exc.decision.comment}"

        async with anyio.create_task_group() as tg:
            for to in ("a@x.com", "b@x.com", "c@x.com"):
                tg.start_soon(call, to)
            pending = {r.kwargs["to"]: r for r in await wait_pending(hl, 3)}
            for request in pending.values():
                await terminal.wait_for(f"answer: y {request.short_id}")
            printed = terminal.output.getvalue()
            assert "Send an email." in printed and "hunter2" not in printed and "password='***'" in printed
            terminal.type(f"y {pending['b@x.com'].short_id}")
            terminal.type(f"n {pending['a@x.com'].short_id} not this customer")
            await terminal.wait_for("denied by alice via console")
            terminal.type("y")  # one left: the id may be left out
    assert outcomes == {
        "a@x.com": "denied: not this customer",
        "b@x.com": "sent to b@x.com",
        "c@x.com": "sent to c@x.com",
    }
    assert "approved by alice via console" in terminal.output.getvalue()


async def test_questions_are_answered_with_r(terminal: Terminal) -> None:
    async with HumanLayer([terminal.channel], listen=None) as hl, anyio.create_task_group() as tg:
        answers: list[str] = []

        async def ask() -> None:
            answers.append(await hl.human_as_tool()("Which region?"))

        tg.start_soon(ask)
        [question] = await wait_pending(hl)
        await terminal.wait_for("Which region?")
        terminal.type(f"r {question.short_id} eu-west-1, as always")
    assert answers == ["eu-west-1, as always"]


async def test_unclear_lines_decide_nothing_and_explain(terminal: Terminal) -> None:
    async with HumanLayer([terminal.channel], listen=None) as hl:

        @hl.require_approval(approvers=["bob"])
        async def tool() -> None: ...

        async with anyio.create_task_group() as tg:
            tg.start_soon(tool)
            tg.start_soon(tool)
            [first, second] = await wait_pending(hl, 2)
            await terminal.wait_for(second.short_id)
            terminal.type("maybe later")
            await terminal.wait_for("unknown command 'maybe'")
            terminal.type("y")
            await terminal.wait_for("which one? 2 are waiting")
            terminal.type(f"y {first.short_id}")
            await terminal.wait_for("'alice' is not an approver")
            terminal.type("?")
            await terminal.wait_for("list what is waiting")
            assert {r.status for r in await hl.pending()} == {Status.PENDING}
            tg.cancel_scope.cancel()


async def test_end_of_input_stops_reading_but_not_the_humanlayer(terminal: Terminal) -> None:
    os.close(terminal.write_fd)
    terminal.write_fd = os.open(os.devnull, os.O_WRONLY)
    async with HumanLayer([terminal.channel], listen=None, timeout=0.1) as hl:

        @hl.require_approval()
        async def tool() -> None: ...

        with pytest.raises(ApprovalDenied):
            await tool()


async def test_input_from_a_file_or_dev_null_is_read_without_watching_it(tmp_path: Path) -> None:
    answers = tmp_path / "answers.txt"
    answers.write_text("?\n")
    output = io.StringIO()
    devnull, typed = os.open(os.devnull, os.O_RDONLY), os.open(answers, os.O_RDONLY)
    try:
        for source, expected in ((devnull, ""), (typed, "nothing is waiting for an answer")):
            channel = ConsoleChannel(user="alice", input=source, output=output)
            async with HumanLayer([channel], listen=None, timeout=0.05) as hl:

                @hl.require_approval()
                async def tool() -> None: ...

                with pytest.raises(ApprovalDenied):
                    await tool()
            assert expected in output.getvalue()
    finally:
        os.close(devnull)
        os.close(typed)
