"""The gate: conditions, waiting, approval, denial, timeouts, cancellation."""

from __future__ import annotations

import inspect
import random
import re
import threading
import time
import typing
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from structlog.testing import capture_logs

from humanlayer_async import (
    ApprovalDenied,
    ApprovalTimeout,
    ConfigurationError,
    HumanLayer,
    Status,
)
from humanlayer_async.stores import MemoryStore
from humanlayer_async.testing import AutoChannel, wait_for_pending

pytestmark = pytest.mark.anyio


async def test_condition_false_runs_at_once_without_a_request() -> None:
    calls: list[float] = []
    async with HumanLayer([], listen=None) as hl:

        @hl.require_approval(condition=lambda amount, **kwargs: amount > 1000)
        async def transfer_money(amount: float, recipient: str) -> str:
            calls.append(amount)
            return f"sent {amount}"

        assert await transfer_money(100, "bob") == "sent 100"
        assert calls == [100]
        assert await hl.pending() == []


async def test_approved_call_runs_once_with_its_arguments() -> None:
    calls: list[tuple[str, str]] = []
    async with HumanLayer([], listen=None) as hl:

        @hl.require_approval()
        async def send_email(to: str, subject: str = "hello") -> str:
            calls.append((to, subject))
            return "sent"

        async with anyio.create_task_group() as tg:
            results: list[str] = []

            async def call() -> None:
                results.append(await send_email("ceo@example.com"))

            tg.start_soon(call)
            [request] = await wait_for_pending(hl, within=5)
            assert calls == []
            assert request.function == "send_email"
            assert request.kind == "approval"
            assert dict(request.kwargs) == {"to": "ceo@example.com", "subject": "hello"}
            assert request.status is Status.PENDING
            decision = await hl.decide(request.id, True, by="alice", comment="fine")
        assert results == ["sent"]
        assert calls == [("ceo@example.com", "hello")]
        assert decision is not None and decision.approved and decision.by == "alice" and decision.via == "api"
        stored = await hl.get(request.id)
        assert stored.status is Status.APPROVED
        assert stored.decision == decision


async def test_denial_raises_a_sentence_naming_who_and_why() -> None:
    async with HumanLayer([AutoChannel(lambda r: "vendor not verified", by="cfo")], listen=None) as hl:

        @hl.require_approval()
        async def pay_invoice(invoice_id: str) -> str:
            raise AssertionError("must not run")

        with pytest.raises(ApprovalDenied) as caught:
            await pay_invoice("INV-1")
    message = str(caught.value)
    assert "pay_invoice" in message and "cfo" in message and "vendor not verified" in message
    assert caught.value.decision.status is Status.DENIED
    assert caught.value.decision.by == "cfo"
    assert caught.value.decision.via == "auto"
    assert not isinstance(caught.value, ApprovalTimeout)


async def test_on_reject_return_gives_the_sentence_instead() -> None:
    async with HumanLayer([AutoChannel(lambda r: False, by="ops")], listen=None) as hl:

        @hl.require_approval(on_reject="return")
        async def scale(service: str, replicas: int) -> str:
            return "scaled"

        result = await scale("api", 50)
    assert result.startswith("A human denied scale by ops via auto")


async def test_hl_level_on_reject_applies_to_every_tool() -> None:
    async with HumanLayer([AutoChannel(lambda r: False)], listen=None, on_reject="return") as hl:

        @hl.require_approval()
        async def tool() -> str:
            return "ran"

        assert "denied tool" in await tool()


async def test_timeout_fails_closed_and_tells_the_channels() -> None:
    channel = AutoChannel(lambda r: None)
    ran = False
    async with HumanLayer([channel], listen=None, timeout=60) as hl:

        @hl.require_approval(timeout=0.05)
        async def delete_records(table: str) -> None:
            nonlocal ran
            ran = True

        with pytest.raises(ApprovalTimeout) as caught:
            await delete_records("users")
        assert not ran
        decision = caught.value.decision
        assert decision.status is Status.TIMED_OUT and decision.via == "timeout"
        assert (await hl.get(decision.request_id)).status is Status.TIMED_OUT
        with anyio.fail_after(5):
            while not channel.updated:
                await anyio.sleep(0.001)
        assert channel.updated[0].status is Status.TIMED_OUT
        # A late approval cannot undo the timeout.
        late = await hl.decide(decision.request_id, True, by="alice")
        assert late is not None and late.status is Status.TIMED_OUT
    # The sentence an LLM gets says what happened: it expired and did not run, it is not waiting.
    sentence = str(caught.value)
    assert "expired without an answer" in sentence and "did not run" in sentence
    assert "waiting" not in sentence


async def test_timeouts_use_their_own_deadlines_in_any_order() -> None:
    async with HumanLayer([], listen=None) as hl:
        ended: list[float] = []

        async def gated_wait(seconds: float) -> None:
            @hl.require_approval(timeout=seconds)
            async def tool() -> None: ...

            with pytest.raises(ApprovalTimeout):
                await tool()
            ended.append(seconds)

        async with anyio.create_task_group() as tg:
            for seconds in (0.3, 0.1, 0.2):
                tg.start_soon(gated_wait, seconds)
        assert ended == [0.1, 0.2, 0.3]


async def test_cancelled_caller_marks_request_cancelled_and_tells_channels() -> None:
    channel = AutoChannel(lambda r: None)
    async with HumanLayer([channel], listen=None) as hl:

        @hl.require_approval()
        async def tool() -> None: ...

        with anyio.move_on_after(0.1) as scope:
            await tool()
        assert scope.cancelled_caught
        [request] = channel.sent
        assert (await hl.get(request.id)).status is Status.CANCELLED
        with anyio.fail_after(5):
            while not channel.updated:
                await anyio.sleep(0.001)
        assert channel.updated[0].decision is not None
        assert channel.updated[0].decision.via == "caller"
        assert await hl.pending() == []


async def test_cancel_withdraws_a_request() -> None:
    async with HumanLayer([], listen=None) as hl:

        @hl.require_approval()
        async def tool() -> None: ...

        async with anyio.create_task_group() as tg:
            errors: list[ApprovalDenied] = []

            async def call() -> None:
                try:
                    await tool()
                except ApprovalDenied as exc:
                    errors.append(exc)

            tg.start_soon(call)
            [request] = await wait_for_pending(hl, within=5)
            await hl.cancel(request.id, by="operator", reason="obsolete")
        [error] = errors
        assert error.decision.status is Status.CANCELLED
        assert "cancelled by operator" in str(error) and "obsolete" in str(error)


async def test_condition_that_raises_requires_approval() -> None:
    def broken(**kwargs: Any) -> bool:
        raise KeyError("oops")

    channel = AutoChannel(lambda r: True)
    async with HumanLayer([channel], listen=None) as hl:

        @hl.require_approval(condition=broken)
        async def tool(x: int) -> int:
            return x * 2

        with capture_logs() as logs:
            assert await tool(21) == 42
    assert len(channel.sent) == 1
    assert any(entry["event"] == "approval.condition_failed" for entry in logs)


async def test_async_condition_and_context_get_bound_arguments_with_defaults() -> None:
    seen: list[dict[str, Any]] = []

    async def condition(**kwargs: Any) -> bool:
        seen.append(kwargs)
        return bool(kwargs["amount"] > 10)

    async def context(amount: float, currency: str) -> dict[str, Any]:
        return {"in_eur": amount * 0.9 if currency == "USD" else amount}

    channel = AutoChannel(lambda r: True)
    async with HumanLayer([channel], listen=None) as hl:

        @hl.require_approval(condition=condition, context=context)
        async def pay(amount: float, currency: str = "USD") -> str:
            return "paid"

        assert await pay(5) == "paid"
        assert channel.sent == []
        assert await pay(amount=100) == "paid"
    assert seen == [{"amount": 5, "currency": "USD"}, {"amount": 100, "currency": "USD"}]
    assert channel.sent[0].context == {"in_eur": 90.0}


async def test_context_hook_that_raises_still_asks_and_says_so() -> None:
    def context(**kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("db down")

    channel = AutoChannel(lambda r: True)
    async with HumanLayer([channel], listen=None) as hl:

        @hl.require_approval(context=context)
        async def tool() -> str:
            return "ok"

        assert await tool() == "ok"
    assert channel.sent[0].context == {"context_error": "the context hook raised RuntimeError"}


async def test_wrapper_keeps_name_doc_signature_and_hints() -> None:
    hl = HumanLayer([], listen=None)

    def tool(to: str, subject: str, body: str = "") -> str:
        """Send an email."""
        return "sent"

    send_email = hl.require_approval()(tool)
    assert send_email.__name__ == "tool"
    assert send_email.__doc__ == "Send an email."
    assert inspect.signature(send_email) == inspect.signature(tool)
    assert list(inspect.signature(send_email).parameters) == ["to", "subject", "body"]
    assert typing.get_type_hints(send_email) == {"to": str, "subject": str, "body": str, "return": str}
    assert not inspect.iscoroutinefunction(send_email)  # a sync tool stays sync

    async def async_tool(to: str) -> str:
        return to

    assert inspect.iscoroutinefunction(hl.require_approval()(async_tool))
    await hl.aclose()


async def test_a_bare_decorator_gates_the_tool() -> None:
    store = MemoryStore()
    async with HumanLayer([AutoChannel(lambda r: True)], store=store, listen=None) as hl:

        @hl.require_approval
        async def send_email(to: str) -> str:
            """Send an email."""
            return f"sent to {to}"

        assert send_email.__name__ == "send_email" and send_email.__doc__ == "Send an email."
        assert await send_email("bob@example.com") == "sent to bob@example.com"
        [entry] = [e for e in store.audit_log if e.event == "approval.requested"]
        assert entry.fields["function"] == "send_email"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"condition": "amount > 1000"}, "condition of transfer_money must be a function"),
        ({"condition": lambda amt, **kwargs: amt > 1000}, "missing a required argument: 'amt'"),
        ({"condition": lambda amount: amount > 1000}, "unexpected keyword argument 'recipient'"),
        ({"context": lambda amount: {"a": amount}}, "context of transfer_money cannot be called"),
        ({"context": "the CFO's call"}, "context of transfer_money must be a function"),
        ({"timeout": "1h"}, "timeout must be a positive, finite number"),
        ({"approvers": ["cfo", 7]}, "approvers must be non-empty strings"),
        ({"render": 3}, "render must be a function"),
    ],
)
def test_mistakes_are_caught_when_the_tool_is_decorated(options: dict[str, Any], message: str) -> None:
    hl = HumanLayer([], listen=None)

    def transfer_money(amount: float, recipient: str) -> str:
        return "sent"

    with pytest.raises(ConfigurationError, match=re.escape(message)):
        hl.require_approval(**options)(transfer_money)


def test_a_condition_given_positionally_is_refused_not_gated() -> None:
    hl = HumanLayer([], listen=None)
    with pytest.raises(ConfigurationError, match="condition=lambda"):
        hl.require_approval(lambda amount, **kwargs: amount > 1000)
    with pytest.raises(ConfigurationError, match="keywords"):
        hl.require_approval("amount > 1000")  # type: ignore[call-overload]


async def test_hooks_that_fit_the_tool_are_accepted_and_get_its_arguments() -> None:
    channel = AutoChannel(lambda r: True)
    async with HumanLayer([channel], listen=None) as hl:

        async def pay(amount: float, /, currency: str = "EUR", *lines: str, **extra: object) -> str:
            return "paid"

        small_ones_run = hl.require_approval(condition=lambda amount, **kwargs: amount > 10)(pay)
        every_name = hl.require_approval(
            condition=lambda amount, currency, lines, extra: bool(lines), context=dict
        )(pay)  # dict: a builtin without a signature, not checked (and it works)
        assert await small_ones_run(5) == "paid" and channel.sent == []
        assert await every_name(50, "USD", "line 1", memo="x") == "paid"
        [request] = channel.sent
        assert dict(request.context) == {
            "amount": 50,
            "currency": "USD",
            "lines": ("line 1",),
            "extra": {"memo": "x"},
        }


async def test_sync_tool_runs_in_a_worker_thread_while_the_loop_ticks() -> None:
    threads: list[int] = []
    ticks = 0

    async with HumanLayer([AutoChannel()], listen=None) as hl:

        @hl.require_approval()
        def slow_sync_tool(seconds: float) -> str:
            threads.append(threading.get_ident())
            time.sleep(seconds)
            return "done"

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            assert await anyio.to_thread.run_sync(slow_sync_tool, 0.5) == "done"
            tg.cancel_scope.cancel()
    assert threads and threads[0] != threading.get_ident()
    assert ticks >= 20  # the loop kept running while the tool slept in its thread


async def test_two_thousand_concurrent_calls_each_get_their_own_outcome() -> None:
    count = 2000
    outcomes: dict[int, str] = {}
    async with HumanLayer([], listen=None) as hl:

        @hl.require_approval()
        async def act(n: int) -> int:
            return n * 3

        async def call(n: int) -> None:
            try:
                result = await act(n)
                outcomes[n] = f"ran:{result}"
            except ApprovalDenied as exc:
                outcomes[n] = f"denied:{exc.decision.comment}"

        async with anyio.create_task_group() as tg:
            for n in range(count):
                tg.start_soon(call, n)
                if n % 100 == 0:
                    await anyio.lowlevel.checkpoint()  # asyncio debug mode makes each task start costly
            pending = await wait_for_pending(hl, count, within=5)
            by_n = {int(r.kwargs["n"]): r.id for r in pending}
            order = list(by_n)
            random.Random(7).shuffle(order)
            for n in order:
                await hl.decide(by_n[n], n % 3 != 0, by="alice", comment=f"no-{n}")
                await anyio.lowlevel.checkpoint()  # decisions arrive one by one, as from a listener
    assert len(outcomes) == count
    for n in range(count):
        assert outcomes[n] == (f"denied:no-{n}" if n % 3 == 0 else f"ran:{n * 3}")


async def test_tool_exception_propagates_and_is_audited() -> None:
    async with HumanLayer([AutoChannel()], listen=None) as hl:

        @hl.require_approval()
        async def tool() -> None:
            raise ValueError("bank down")

        with capture_logs() as logs, pytest.raises(ValueError, match="bank down"):
            await tool()
    executed = [entry for entry in logs if entry["event"] == "approval.executed"]
    assert executed and executed[0]["outcome"] == "ValueError"


async def test_every_state_change_is_one_event_with_the_request_id() -> None:
    async with HumanLayer([AutoChannel(by="bob")], listen=None) as hl:

        @hl.require_approval()
        async def tool(api_key: str) -> str:
            return "ok"

        with capture_logs() as logs:
            await tool("sk-live-123")
    events = [entry["event"] for entry in logs if entry["event"].startswith("approval.")]
    assert events == [
        "approval.requested",
        "approval.delivered",
        "approval.decided",
        "approval.executing",
        "approval.executed",
    ]
    ids = {entry["request_id"] for entry in logs if entry["event"].startswith("approval.")}
    assert len(ids) == 1 and len(next(iter(ids))) == 32
    assert "sk-live-123" not in repr(logs)
    requested = next(entry for entry in logs if entry["event"] == "approval.requested")
    assert requested["kwargs"] == {"api_key": "***"}


async def test_the_arguments_are_bound_as_inspect_binds_them_in_parameter_order() -> None:
    channel = AutoChannel()
    async with HumanLayer([channel], listen=None) as hl:

        async def transfer(amount: int, currency: str = "EUR", *, memo: str = "") -> str:
            return "sent"

        gated = hl.require_approval()(transfer)
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
            ((5,), {}),
            ((5, "USD"), {}),
            ((5,), {"memo": "rent"}),
            ((), {"currency": "USD", "amount": 5}),
            ((5,), {"memo": "x", "currency": "GBP"}),
        ]
        for args, kwargs in calls:
            assert await gated(*args, **kwargs) == "sent"
        signature = inspect.signature(transfer)
        expected = []
        for args, kwargs in calls:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            expected.append(list(bound.arguments.items()))
        assert [list(request.kwargs.items()) for request in channel.sent] == expected
        wrong: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
            ((), {}),
            ((5,), {"amount": 6}),
            ((5, "USD", "x"), {}),
            ((5,), {"fee": 1}),
        ]
        for args, kwargs in wrong:
            with pytest.raises(TypeError):
                await gated(*args, **kwargs)
        assert len(channel.sent) == len(calls)  # a call that does not bind asks nobody
