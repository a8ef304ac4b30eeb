"""The terminal channel, driven through a real pipe."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from humanlayer_async import ApprovalDenied, Decision, HumanLayer, Status
from humanlayer_async.channels import ConsoleChannel
from humanlayer_async.stores import MemoryStore
from humanlayer_async.testing import wait_for_pending

from .conftest import LateDecider, make_request

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
            pending = {r.kwargs["to"]: r for r in await wait_for_pending(hl, 3, within=5)}
            for request in pending.values():
                await terminal.wait_for(f"answer: y {request.short_id}")
            printed = terminal.output.getvalue()
            assert "Send an email." in printed and "hunter2" not in printed and "password='***'" in printed
            terminal.type(f"y {pending['b@x.com'].short_id}")
            terminal.type(f"n {pending['a@x.com'].short_id} not this customer")
            await terminal.wait_for("denied by alice via console")
            terminal.type(f"y {pending['c@x.com'].short_id}")
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
        [question] = await wait_for_pending(hl, within=5)
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
            [first, second] = await wait_for_pending(hl, 2, within=5)
            await terminal.wait_for(second.short_id)
            terminal.type("maybe later")
            await terminal.wait_for("unknown command 'maybe'")
            terminal.type("y")
            await terminal.wait_for("name the request: y <id> [comment]")
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


# -- an answer applies only to the request it names ----------------------------------------


async def test_a_repeated_answer_never_reaches_another_request(terminal: Terminal) -> None:
    async with HumanLayer([terminal.channel], listen=None) as hl:

        @hl.require_approval()
        async def delete_records(table: str) -> str:
            return f"deleted {table}"

        async with anyio.create_task_group() as tg:
            tg.start_soon(delete_records, "invoices")
            tg.start_soon(delete_records, "customers")
            requests = {r.kwargs["table"]: r for r in await wait_for_pending(hl, 2, within=5)}
            first, second = requests["invoices"], requests["customers"]
            await terminal.wait_for(f"y {second.short_id}")
            terminal.type(f"y {first.short_id}")
            await terminal.wait_for(f"[{first.short_id}] delete_records: approved by alice via console")
            terminal.type(f"y {first.short_id} sure")  # typed twice: still names the first
            await terminal.wait_for(
                f"[{first.short_id}] delete_records: already approved by alice via console"
            )
            terminal.type("y 0123456789abcdef")
            await terminal.wait_for("no request with id '0123456789abcdef'")
            terminal.type("y")  # one request waits, but a line must name it
            await terminal.wait_for("name the request: y <id> [comment]")
            terminal.type(f"y {second.short_id[:3]}")  # a one-letter slip must not reach a request
            await terminal.wait_for("at least 4 characters")
            terminal.type(f"n {second.short_id}")  # a deny needs its reason
            await terminal.wait_for(f"n {second.short_id} <reason>")
            assert (await hl.get(second.id)).status is Status.PENDING
            assert (await hl.get(first.id)).decision.comment is None  # type: ignore[union-attr]
            terminal.type(f"Y {second.id.upper()} ok")  # the full id, in any case
            await terminal.wait_for(f"[{second.short_id}] delete_records: approved by alice via console")
    assert (await hl.get(second.id)).decision.comment == "ok"  # type: ignore[union-attr]


async def test_an_ambiguous_prefix_lists_the_candidates() -> None:
    term, store = Terminal(), MemoryStore()
    try:
        async with HumanLayer([term.channel], store=store, listen=None) as hl:
            one, two = (
                make_request(f"abcd{n * 4}" + "0" * 24, approvers=(), kwargs={"amount": n}) for n in "12"
            )
            for request in (one, two):
                await store.create(request)
                await term.channel.send(request)
            term.type("y abcd")
            await term.wait_for("'abcd' is the start of 2 request ids")
            printed = term.output.getvalue()
            assert "abcd1111  transfer(amount='1')" in printed and "abcd2222  transfer(amount='2')" in printed
            assert [r.status for r in await hl.pending()] == [Status.PENDING, Status.PENDING]
            term.type("y abcd2 fine")
            with anyio.fail_after(5):
                while (await hl.get(two.id)).status is Status.PENDING:
                    await anyio.sleep(0.005)
            assert (await hl.get(two.id)).decision.comment == "fine"  # type: ignore[union-attr]
            assert (await hl.get(one.id)).status is Status.PENDING
    finally:
        term.close()


async def test_a_request_decided_elsewhere_says_who_decided_it(terminal: Terminal) -> None:
    async with HumanLayer([terminal.channel], listen=None) as hl:

        @hl.require_approval()
        async def send_email(to: str) -> None: ...

        @hl.require_approval(channels=[], on_reject="return")
        async def elsewhere() -> str:
            return "ran"

        async with anyio.create_task_group() as tg:
            tg.start_soon(send_email, "a@x.com")
            [shown] = await wait_for_pending(hl, within=5)
            tg.start_soon(elsewhere)
            [unseen] = [r for r in await wait_for_pending(hl, 2, within=5) if r.id != shown.id]
            terminal.type(f"y {unseen.id}")
            await terminal.wait_for(f"[{unseen.short_id}] was not sent to this terminal")
            await hl.decide(shown.id, True, by="bob", via="web")
            await hl.decide(unseen.id, False, by="carol", comment="no", via="slack")
            await terminal.wait_for(f"[{shown.short_id}] send_email: approved by bob via web")
            terminal.type(f"n {shown.short_id} too late")
            await terminal.wait_for(f"[{shown.short_id}] send_email: already approved by bob via web")
            terminal.type(f"y {unseen.id}")  # never shown here: its full id still says who decided
            await terminal.wait_for("elsewhere: already denied by carol via slack")
            tg.cancel_scope.cancel()
    assert (await hl.get(shown.id)).decision.by == "bob"  # type: ignore[union-attr]
    assert (await hl.get(unseen.id)).decision.by == "carol"  # type: ignore[union-attr]


# -- what the terminal shows is the real call ---------------------------------------------

FORGED = "\x1b[2J\x1b[H\rtransfer_money(amount=25, recipient='ACME')\n\u202eevil\u202c"


async def test_control_and_bidi_characters_are_shown_escaped(terminal: Terminal) -> None:
    async with HumanLayer([terminal.channel], listen=None) as hl:

        async def transfer_money(amount: int, recipient: str) -> None:
            """Move money.\x1b[8m hidden"""

        transfer_money.__name__ = "transfer_money\x1b[1A"
        gated = hl.require_approval(context={"note": FORGED, "\x1b[31mkey": 1}, approvers=["alice", FORGED])(
            transfer_money
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(gated, 250_000, f"Mallory{FORGED}")
            [request] = await wait_for_pending(hl, within=5)
            await terminal.wait_for("expires")
            terminal.type(f"y {request.short_id} {FORGED}")
            await terminal.wait_for("approved by alice via console at")
            terminal.type(f"y \x1b[2J{request.short_id}")
            await terminal.wait_for("no request with id")
            tg.start_soon(hl.human_as_tool(), f"Which region?{FORGED}")
            await terminal.wait_for("answer: r ")
            tg.cancel_scope.cancel()
    printed = terminal.output.getvalue()
    for raw in ("\x1b", "\r", "\u202e", "\u202c"):
        assert raw not in printed
    assert "amount=250000" in printed
    assert "\\x1b[2J\\x1b[H\\rtransfer_money(amount=25, recipient='ACME')\\n\\u202eevil\\u202c" in printed
    assert not [line for line in printed.splitlines() if line.startswith("transfer_money(amount=25")]
    assert "transfer_money\\x1b[1A(amount=250000" in printed and "\\x1b[31mkey: 1" in printed
    assert "Move money.\\x1b[8m hidden" in printed and "no request with id '\\x1b[2J" in printed
    assert (
        "  Which region?\\x1b[2J\\x1b[H\\rtransfer_money(amount=25, recipient='ACME')\\n\\u202eevil"
        in printed
    )
    assert "approved by alice via console at" in printed and "(\\x1b[2J\\x1b[H\\rtransfer_money" in printed


# -- nothing is shortened silently ---------------------------------------------------------


async def test_a_shortened_call_says_so_and_v_shows_all_of_it(terminal: Terminal) -> None:
    async with HumanLayer([terminal.channel], listen=None) as hl:

        @hl.require_approval()
        async def run_sql(rows: list[str], options: dict[str, object], query: str) -> None: ...

        async with anyio.create_task_group() as tg:
            rows = [f"row-{n}" for n in range(1, 12)]
            nested: dict[str, object] = {"a": {"b": {"c": {"d": "fourth-level"}}}}
            tg.start_soon(run_sql, rows, nested, "SELECT 1;" + " " * 1000 + "DROP TABLE users")
            [request] = await wait_for_pending(hl, within=5)
            await terminal.wait_for("expires")
            block = terminal.output.getvalue()
            assert "… 1 more item" in block and "nested deeper" in block and "more characters" in block
            assert f"v {request.short_id} shows the full call" in block
            assert "row-11" not in block and "fourth-level" not in block and "DROP TABLE" not in block
            terminal.type(f"v {request.short_id}")
            await terminal.wait_for("Expires:")
            full = terminal.output.getvalue()[len(block) :]
            assert '"row-11"' in full and '"d": "fourth-level"' in full and " DROP TABLE users" in full
            assert (await hl.get(request.id)).status is Status.PENDING
            tg.cancel_scope.cancel()


# -- an answer that lost the race -----------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "kind", "standing", "told"),
    [
        # Someone else's decision was stored between reading the request and deciding it.
        ("y {id}", "approval", ("bob", "slack", True), "transfer: already approved by bob via slack"),
        # The same person, through this very terminal (a line sent twice, from two shells):
        # by and via are ours, yet this answer is not the one that stands.
        (
            "n {id} no",
            "approval",
            ("alice", "console", True),
            "transfer: already approved by alice via console",
        ),
        (
            "r {id} eu-west-1",
            "question",
            ("carol", "web", True),
            "transfer: already approved by carol via web",
        ),
    ],
)
async def test_an_answer_that_did_not_stand_says_who_decided_first(
    terminal: Terminal, line: str, kind: str, standing: tuple[str, str, bool], told: str
) -> None:
    request = make_request("f" * 32, approvers=(), kind=kind, message="Which region?")
    by, via, approved = standing
    first = Decision(request.id, approved, Status.APPROVED, by, via, None, datetime.now(UTC))
    decider = LateDecider(request, first)
    async with anyio.create_task_group() as tg:
        await tg.start(terminal.channel.run, decider)
        await terminal.channel.send(request)
        await terminal.channel.handle(line.format(id=request.short_id))
        tg.cancel_scope.cancel()
    assert decider.answers == [(request.id, "alice", "console")]
    assert terminal.output.getvalue().splitlines()[-1].startswith(f"[{request.short_id}] {told} at ")


async def test_e_approves_with_edited_arguments_and_a_bad_edit_decides_nothing(terminal: Terminal) -> None:
    async with HumanLayer([terminal.channel], listen=None) as hl, anyio.create_task_group() as tg:
        sent: list[tuple[str, float]] = []

        @hl.require_approval(editable=["amount", "memo"])
        async def transfer(recipient: str, amount: float, memo: str = "") -> None:
            sent.append((memo, amount))

        tg.start_soon(transfer, "acme", 12000.0)
        [request] = await wait_for_pending(hl, within=5)
        short = request.short_id
        await terminal.wait_for(f"editable: amount, memo  (e {short} <name>=<value> approves with changes)")
        terminal.type(f"e {short} amount=lots")
        await terminal.wait_for("not decided: cannot edit request")
        terminal.type(f"e {short} recipient=mallory")
        await terminal.wait_for("'recipient': it is not an editable argument")
        terminal.type(f"e {short} amount")
        await terminal.wait_for(f"nothing decided: type e {short} <name>=<value> ...")
        assert (await hl.get(request.id)).status is Status.PENDING
        terminal.type(f"e {short} amount=5000 memo='two parts'")
        await terminal.wait_for("approved by alice with amount=5000, memo='two parts' via console")
    assert sent == [("two parts", 5000)]
