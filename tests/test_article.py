# mypy: disable-error-code="no-untyped-def"
# (The article's tools declare no return type; they are pasted as the article prints them.)
"""The seed article's code, pasted verbatim, runs as the article says, from a sync script.

The article ("Stop Your AI Agents from Going Rogue") gates plain ``def`` tools: "When your
agent calls send_email(), HumanLayer pauses execution, sends an approval request, waits,
then executes or blocks". Each scenario calls a tool in a plain thread with no event loop,
as a sync script does; the approver answers from the test's own thread through
``hl.decide``, once the request has reached its channel.

What is not the article's: the import (``humanlayer_async``, not ``humanlayer``), the
channels (``Inbox`` below stands in for the Slack and email channels the article builds,
which a test cannot reach, and for the terminal ``HumanLayer()`` asks by default), and the
services the tools call (``email_client``, ``bank``, ... are recording fakes).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import pytest

from humanlayer_async import (
    ApprovalDenied,
    ApprovalRequest,
    ConfigurationError,
    Decision,
    HumanLayer,  # the article: from humanlayer import HumanLayer
    HumanLayerError,
)
from humanlayer_async.channels import BaseChannel
from humanlayer_async.testing import AutoChannel

PATIENCE = 20.0
"""Seconds a step may take before the test fails instead of hanging (not a measurement)."""


class Inbox(BaseChannel):
    """A channel whose requests wait in a queue until the test, as the approver, takes them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._requests: queue.Queue[ApprovalRequest] = queue.Queue()

    async def send(self, request: ApprovalRequest) -> str | None:
        self._requests.put(request)
        return request.id

    def next(self) -> ApprovalRequest:
        """The next request delivered here, waiting for it (from any thread without a loop)."""
        try:
            return self._requests.get(timeout=PATIENCE)
        except queue.Empty:
            pytest.fail(f"no request reached the {self.name} channel within {PATIENCE} s")

    def empty(self) -> bool:
        return self._requests.empty()


@dataclass(frozen=True)
class Call:
    method: str
    args: tuple[object, ...]
    thread: threading.Thread


class Service:
    """Stands in for a client the article's tools call: records each call and the thread it ran in."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[Call] = []

    def __getattr__(self, method: str) -> Callable[..., str]:
        if method.startswith("_"):
            raise AttributeError(method)

        def call(*args: object) -> str:
            self.calls.append(Call(method, args, threading.current_thread()))
            return f"{self.name}.{method} #{len(self.calls)}"

        return call


@dataclass(frozen=True)
class Invoice:
    number: str
    amount: float


email_client = Service("email_client")
bank = Service("bank")
email_service = Service("email_service")
accounting = Service("accounting")
kubernetes = Service("kubernetes")
cloud = Service("cloud")
SERVICES = (email_client, bank, email_service, accounting, kubernetes, cloud)

approvals = Inbox("console")
slack = Inbox("slack")
email = Inbox("email")

# fmt: off
# -- The article: "Basic Usage" ------------------------------------------------------------
hl = HumanLayer(approval_channels=[approvals], listen=None)  # the article: hl = HumanLayer()

@hl.require_approval()
def send_email(to: str, subject: str, body: str):
    """This function now requires human approval before executing."""
    return email_client.send(to, subject, body)

# -- The article: "Conditional Approval" ---------------------------------------------------
@hl.require_approval(
    condition=lambda amount, **kwargs: amount > 1000
)
def transfer_money(amount: float, recipient: str):
    return bank.transfer(amount, recipient)
# fmt: on

basic_hl = hl  # the article now builds a second HumanLayer; the test closes both

# fmt: off
# -- The article: "Multiple Approval Channels" ---------------------------------------------
hl = HumanLayer(
    approval_channels=[
        slack,  # the article: SlackChannel(webhook_url="https://hooks.slack.com/..."),
        email,  # the article: EmailChannel(to="approvals@company.com"),
    ],
    listen=None,  # not the article's: nothing calls back over HTTP here
)

# -- The article: "1. Sales Automation" ----------------------------------------------------
@hl.require_approval()
def send_proposal(client_email: str, proposal_pdf: bytes):
    """Sales team reviews before sending proposals."""
    return email_service.send_with_attachment(
        client_email,
        "Your Custom Proposal",
        proposal_pdf
    )

# -- The article: "2. Financial Operations" ------------------------------------------------
@hl.require_approval(
    condition=lambda invoice, **kwargs: invoice.amount > 5000
)
def pay_invoice(invoice: Invoice):
    """Large invoices need CFO approval."""
    return accounting.process_payment(invoice)

# -- The article: "3. DevOps Automation" ---------------------------------------------------
@hl.require_approval()
def scale_infrastructure(service: str, replicas: int):
    """Ops team confirms scaling decisions."""
    return kubernetes.scale(service, replicas)

@hl.require_approval()
def delete_resources(resource_ids: list[str]):
    """Destructive operations always need approval."""
    return cloud.delete(resource_ids)
# fmt: on


@pytest.fixture(scope="module", autouse=True)
def _close_the_article() -> Iterator[None]:
    yield
    basic_hl.close()  # also wakes, with HumanLayerError, a call a failed test left waiting
    hl.close()


@pytest.fixture(autouse=True)
def _fresh_services() -> Iterator[None]:
    yield
    for service in SERVICES:
        service.calls.clear()
    assert all(inbox.empty() for inbox in (approvals, slack, email)), "a request nobody looked at"


class Script(threading.Thread):
    """One call of a gated tool as a sync script makes it: in a thread that runs no event loop."""

    def __init__(self, tool: Callable[..., object], *args: object) -> None:
        super().__init__(name=f"script {getattr(tool, '__name__', tool)}", daemon=True)
        self._call = functools.partial(tool, *args)
        self._returned: object = None
        self._raised: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:  # pragma: no cover - a new thread has no loop
            raise AssertionError("a sync script's thread runs no event loop")
        try:
            self._returned = self._call()
        except BaseException as exc:
            self._raised = exc

    @property
    def waiting(self) -> bool:
        return self.is_alive()

    def result(self) -> object:
        """What the call returned, or raise what it raised, once it has ended."""
        self.join(PATIENCE)
        if self.is_alive():
            pytest.fail(f"{self.name} was still waiting {PATIENCE} s after its request was decided")
        if self._raised is not None:
            raise self._raised
        return self._returned


def decide(layer: HumanLayer, request: ApprovalRequest, approved: bool, **kwargs: Any) -> Decision:
    """``hl.decide`` from this sync thread, on the loop the ``HumanLayer`` runs in."""
    decision = layer.blocking(layer.decide)(request.id, approved, **kwargs)
    assert decision is not None  # one approval decides
    return decision


# -- the article's use cases, from a sync script ------------------------------------------------


def test_send_email_pauses_until_approved_then_runs_in_the_calling_thread() -> None:
    script = Script(send_email, "jane@example.com", "Your order", "It shipped today.")
    request = approvals.next()
    assert (request.function, dict(request.kwargs)) == (
        "send_email",
        {"to": "jane@example.com", "subject": "Your order", "body": "It shipped today."},
    )
    assert request.doc == "This function now requires human approval before executing."
    assert script.waiting and email_client.calls == []  # paused: nothing sent before the answer

    assert decide(basic_hl, request, True, by="alice").by == "alice"

    assert script.result() == "email_client.send #1"  # what the tool returns
    assert email_client.calls == [
        Call("send", ("jane@example.com", "Your order", "It shipped today."), script)
    ]


def test_a_transfer_over_the_threshold_waits_for_approval() -> None:
    script = Script(transfer_money, 10_000.0, "ACME Supplies")
    request = approvals.next()
    assert dict(request.kwargs) == {"amount": 10_000.0, "recipient": "ACME Supplies"}
    assert script.waiting and bank.calls == []

    decide(basic_hl, request, True, by="treasurer")

    assert script.result() == "bank.transfer #1"
    assert bank.calls == [Call("transfer", (10_000.0, "ACME Supplies"), script)]


def test_a_transfer_under_the_threshold_runs_at_once() -> None:
    script = Script(transfer_money, 100.0, "ACME Supplies")
    assert script.result() == "bank.transfer #1"
    assert bank.calls == [Call("transfer", (100.0, "ACME Supplies"), script)]
    assert approvals.empty()  # nobody was asked


def test_a_proposal_goes_to_slack_and_email_and_is_sent_once_approved() -> None:
    pdf = b"%PDF-1.7 your custom proposal"
    script = Script(send_proposal, "jane@bigcorp.example", pdf)
    request = slack.next()
    assert email.next().id == request.id  # the same request on both channels
    assert request.kwargs["client_email"] == "jane@bigcorp.example"
    assert script.waiting and email_service.calls == []

    decision = decide(hl, request, True, by="maria", via="slack")
    assert (decision.approved, decision.via) == (True, "slack")

    assert script.result() == "email_service.send_with_attachment #1"
    assert email_service.calls == [
        Call("send_with_attachment", ("jane@bigcorp.example", "Your Custom Proposal", pdf), script)
    ]


def test_a_large_invoice_waits_for_the_cfo_and_a_small_one_is_paid_at_once() -> None:
    small, large = Invoice("INV-001", 1_200.0), Invoice("INV-002", 8_400.0)
    assert Script(pay_invoice, small).result() == "accounting.process_payment #1"
    assert slack.empty() and email.empty()

    script = Script(pay_invoice, large)
    request = slack.next()
    assert email.next().id == request.id
    assert request.function == "pay_invoice"
    assert script.waiting and len(accounting.calls) == 1

    decide(hl, request, True, by="cfo@company.com", via="email")

    assert script.result() == "accounting.process_payment #2"
    assert [call.args for call in accounting.calls] == [(small,), (large,)]
    assert accounting.calls[1].thread is script


def test_scaling_runs_once_the_ops_team_confirms() -> None:
    script = Script(scale_infrastructure, "checkout", 8)
    request = slack.next()
    assert email.next().id == request.id
    assert dict(request.kwargs) == {"service": "checkout", "replicas": 8}
    assert script.waiting and kubernetes.calls == []

    decide(hl, request, True, by="ops-lead", via="slack")

    assert script.result() == "kubernetes.scale #1"
    assert kubernetes.calls == [Call("scale", ("checkout", 8), script)]


def test_a_denied_deletion_does_not_run_and_says_why() -> None:
    script = Script(delete_resources, ["prod-db-1"])
    request = slack.next()
    assert email.next().id == request.id
    assert dict(request.kwargs) == {"resource_ids": ["prod-db-1"]}

    decide(hl, request, False, by="ops-lead", comment="prod is deleted by change request only", via="slack")

    with pytest.raises(ApprovalDenied) as denied:
        script.result()
    assert str(denied.value) == (
        "A human denied delete_resources by ops-lead via slack: "
        "prod is deleted by change request only. It did not run."
    )
    assert cloud.calls == []


# -- a gated def called where it must not block, and from many worker threads at once ------------

CALLS = 8


@pytest.fixture
async def arrivals() -> AsyncIterator[tuple[AutoChannel, anyio.abc.ObjectReceiveStream[ApprovalRequest]]]:
    """A channel that leaves each request pending and hands it to the test as it arrives."""
    send, receive = anyio.create_memory_object_stream[ApprovalRequest](CALLS)

    async def leave_pending(request: ApprovalRequest) -> None:
        await send.send(request)

    with send, receive:
        yield AutoChannel(leave_pending), receive


@pytest.mark.anyio
@pytest.mark.parametrize("started", [True, False], ids=["in async with", "before it started"])
async def test_a_gated_def_called_on_the_event_loop_thread_refuses_at_once(
    arrivals: tuple[AutoChannel, anyio.abc.ObjectReceiveStream[ApprovalRequest]], started: bool
) -> None:
    channel, _ = arrivals
    layer = HumanLayer([channel], listen=None)
    ran: list[str] = []

    @layer.require_approval()
    def restart(service: str) -> str:
        ran.append(service)
        return f"restarted {service}"

    async with contextlib.AsyncExitStack() as stack:
        if started:
            await stack.enter_async_context(layer)
        with pytest.raises(HumanLayerError) as error:
            restart("checkout")
        assert await layer.pending() == []
    await layer.aclose()
    message = str(error.value)
    assert "make the tool async (async def)" in message.lower()
    assert "anyio.to_thread.run_sync" in message
    assert ran == [] and channel.sent == []


@pytest.mark.anyio
@pytest.mark.parametrize("pool", ["asyncio.to_thread", "anyio.to_thread.run_sync"])
async def test_many_sync_calls_from_worker_threads_wait_at_once_and_each_resumes_when_decided(
    arrivals: tuple[AutoChannel, anyio.abc.ObjectReceiveStream[ApprovalRequest]], pool: str
) -> None:
    channel, requests = arrivals
    layer = HumanLayer([channel], listen=None)
    called_in: dict[int, int] = {}
    ran_in: dict[int, int] = {}

    @layer.require_approval()
    def restart(n: int) -> str:
        ran_in[n] = threading.get_ident()
        return f"restarted {n}"

    def call(n: int) -> str:  # what the framework's worker thread does with a sync tool
        called_in[n] = threading.get_ident()
        try:
            return restart(n)
        except ApprovalDenied as denied:
            return str(denied)

    results: dict[int, str] = {}
    ended = {n: anyio.Event() for n in range(CALLS)}

    async def in_worker_thread(n: int) -> None:
        if pool == "asyncio.to_thread":
            results[n] = await asyncio.to_thread(call, n)
        else:
            results[n] = await anyio.to_thread.run_sync(call, n, abandon_on_cancel=True)
        ended[n].set()

    if pool == "asyncio.to_thread":  # its default pool has min(32, CPUs + 4) threads: room for all
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(CALLS))  # shut down with the loop
    loop_thread = threading.get_ident()
    async with layer:  # first: the HumanLayer runs in this loop, not in a background thread
        with anyio.fail_after(PATIENCE):
            async with anyio.create_task_group() as tg:
                for n in range(CALLS):
                    tg.start_soon(in_worker_thread, n)
                waiting: dict[int, ApprovalRequest] = {}
                for _ in range(CALLS):
                    request = await requests.receive()
                    waiting[request.kwargs["n"]] = request
                assert sorted(waiting) == list(range(CALLS))  # every call waits, all at once
                assert ran_in == {} and results == {}
                for n in reversed(range(CALLS)):  # the last asked is answered first
                    await layer.decide(waiting[n].id, n % 2 == 0, by="ops", comment="not now")
                    await ended[n].wait()
                    assert set(results) == set(range(n, CALLS))  # the others still wait
    assert results == {
        n: f"restarted {n}"
        if n % 2 == 0
        else "A human denied restart by ops via api: not now. It did not run."
        for n in range(CALLS)
    }
    assert set(ran_in) == {n for n in range(CALLS) if n % 2 == 0}
    assert all(ran_in[n] == called_in[n] for n in ran_in)  # the tool ran in its caller's thread
    assert loop_thread not in called_in.values()
    assert len(set(called_in.values())) == CALLS  # one worker thread per waiting call


def test_a_sync_call_before_the_app_loop_started_binds_the_background_thread() -> None:
    channel = AutoChannel(lambda request: True)
    layer = HumanLayer([channel], listen=None)

    @layer.require_approval()
    def restart(service: str) -> str:
        return f"restarted {service}"

    async def app() -> None:
        async with layer:  # too late: the sync call below started it in its own thread
            pass

    try:
        assert restart("checkout") == "restarted checkout"
        with pytest.raises(ConfigurationError, match="bound to the event loop it first ran in"):
            asyncio.run(app())
    finally:
        layer.close()
