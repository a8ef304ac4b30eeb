"""The engine and its runtime: faults that must wake the calls waiting, never leave them hanging."""

from __future__ import annotations

import socket
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from humanlayer_async import HumanLayer, HumanLayerError, Status, StoreError
from humanlayer_async.channels.base import BaseChannel, Decider
from humanlayer_async.stores import MemoryStore, PostgresStore, SQLiteStore, StoreEvent
from humanlayer_async.testing import AutoChannel, wait_for_pending

pytestmark = pytest.mark.anyio


class DyingChannel(BaseChannel):
    """Delivers; its inbound side dies when told to (a lost socket, a bug in a custom channel)."""

    name = "dying"

    def __init__(self) -> None:
        self.die = anyio.Event()

    async def send(self, request: object) -> str | None:
        return "sent"

    async def run(self, decider: Decider, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self.die.wait()
        raise ConnectionResetError("the inbound socket went away")


async def test_a_channel_that_dies_fails_every_waiting_call_at_once_naming_it() -> None:
    channel = DyingChannel()
    async with HumanLayer([channel], listen=None) as hl:

        @hl.require_approval()
        async def transfer(amount: int) -> str:
            return "sent"

        errors: list[BaseException] = []

        async def call(amount: int) -> None:
            try:
                await transfer(amount)
            except HumanLayerError as exc:
                errors.append(exc)

        with anyio.fail_after(5):  # not the hour of the default timeout
            async with anyio.create_task_group() as tg:
                for amount in (1, 2, 3):
                    tg.start_soon(call, amount)
                await wait_for_pending(hl, 3)
                channel.die.set()
        assert len(errors) == 3
        assert all("the dying channel stopped" in str(e) and "ConnectionResetError" in str(e) for e in errors)
        with pytest.raises(HumanLayerError, match="the dying channel stopped"):
            await transfer(4)  # refused at once, not asked
        assert "failed" in repr(hl)
    assert [r.status for r in await hl.pending()] == []


async def test_two_callers_of_one_run_key_in_one_process_both_get_the_decision() -> None:
    """A queue message delivered twice: both copies wait for the one request, both resume."""
    hl = HumanLayer([], listen=None)
    ran: list[int] = []

    @hl.require_approval()
    async def refund(order: int) -> str:
        ran.append(order)
        return "refunded"

    async def handle(results: list[str]) -> None:
        with hl.run("order-42"):
            results.append(await refund(42))

    first: list[str] = []
    second: list[str] = []
    async with hl:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(handle, first)
                [request] = await wait_for_pending(hl)
                tg.start_soon(handle, second)
                await anyio.wait_all_tasks_blocked()
                assert len(await hl.pending()) == 1  # the second caller re-attached: no second request
                await hl.decide(request.id, True, by="alice")
    # Both resumed; the tool ran once, the other caller got its recorded result.
    assert first == second == ["refunded"] and ran == [42]


async def test_async_with_fails_at_once_with_store_error_when_sqlite_path_is_a_directory(
    tmp_path: Path,
) -> None:
    hl = HumanLayer([], store=SQLiteStore(tmp_path), listen="127.0.0.1:0")
    with anyio.fail_after(5), pytest.raises(StoreError, match="SQLite"):
        async with hl:
            pytest.fail("started on a store that cannot be used")
    assert hl.url is None  # no listener was left serving


async def test_async_with_fails_at_once_with_store_error_when_postgres_is_not_there() -> None:
    pytest.importorskip("asyncpg", reason="PostgresStore needs the postgres extra")
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hl = HumanLayer([], store=PostgresStore(f"postgresql://postgres@127.0.0.1:{port}/test"), listen=None)
    with anyio.fail_after(10), pytest.raises(StoreError):
        async with hl:
            pytest.fail("started on a store that cannot be reached")


class MissedNotificationStore(MemoryStore):
    """Decisions written "elsewhere" (behind the engine's back) and a stream that only says resync."""

    def __init__(self) -> None:
        super().__init__()
        self.resync = anyio.Event()

    async def watch(self) -> AsyncIterator[StoreEvent]:
        await self.resync.wait()
        yield StoreEvent("resync", "")
        await anyio.sleep_forever()


async def test_a_resync_event_rereads_the_requests_waited_for_so_a_missed_notification_is_not_lost() -> None:
    from humanlayer_async._models import Decision

    store = MissedNotificationStore()
    async with HumanLayer([], store=store, listen=None) as hl:

        @hl.require_approval()
        async def tool() -> str:
            return "ran"

        results: list[str] = []
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    results.append(await tool())

                tg.start_soon(call)
                [request] = await wait_for_pending(hl)
                # Another process decided it; its notification never arrived.
                decided = Decision(
                    request.id, True, Status.APPROVED, "alice", "api", None, request.created_at
                )
                await MemoryStore.decide(store, decided)
                await anyio.wait_all_tasks_blocked()
                assert results == []  # nothing woke the call yet
                store.resync.set()
        assert results == ["ran"]


async def test_wait_for_pending_says_how_many_were_pending_when_it_gives_up() -> None:
    async with HumanLayer([AutoChannel()], listen=None) as hl:
        with pytest.raises(TimeoutError, match=r"0 of 2 requests were pending after 0\.1 s"):
            await wait_for_pending(hl, 2, within=0.1)


async def test_a_sync_tool_called_from_a_worker_thread_keeps_the_threads_run() -> None:
    async with HumanLayer([], listen=None) as hl:

        @hl.require_approval()
        def refund(order: int) -> str:
            return f"refunded {order}"

        def worker() -> str:
            with hl.run("order-7"):
                return refund(7)

        results: list[str] = []

        async def call() -> None:
            results.append(await anyio.to_thread.run_sync(worker))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                [request] = await wait_for_pending(hl)
                assert request.run_id == "order-7"  # the worker thread's run, not the loop's none
                await hl.decide(request.id, True, by="alice")
        assert results == ["refunded 7"]


def test_a_sync_tool_called_from_a_plain_script_keeps_its_run() -> None:
    hl = HumanLayer([], listen=None)

    @hl.require_approval()
    def refund(order: int) -> str:
        return f"refunded {order}"

    results: list[str] = []

    def script() -> None:
        with hl.run("order-8"):
            results.append(refund(8))

    thread = threading.Thread(target=script)
    thread.start()
    try:
        [request] = hl.blocking(wait_for_pending)(hl)
        assert request.run_id == "order-8"
        hl.blocking(hl.decide)(request.id, True, by="alice")
        thread.join(5)
        assert results == ["refunded 8"]
    finally:
        hl.close()


class BrokenWatchStore(MemoryStore):
    """A store whose change stream breaks with a bug (not a ``StoreError`` it could retry)."""

    def __init__(self) -> None:
        super().__init__()
        self.break_now = anyio.Event()

    async def watch(self) -> AsyncIterator[StoreEvent]:
        await self.break_now.wait()
        raise RuntimeError("a bug in the store's watch()")
        yield  # pragma: no cover - makes this an async generator


async def test_a_store_follower_that_dies_fails_every_waiting_call_at_once_naming_it() -> None:
    store = BrokenWatchStore()
    async with HumanLayer([], store=store, listen=None) as hl:

        @hl.require_approval()
        async def tool() -> str:
            return "ran"

        errors: list[HumanLayerError] = []

        async def call() -> None:
            try:
                await tool()
            except HumanLayerError as exc:
                errors.append(exc)

        with anyio.fail_after(5):  # not the hour of the default timeout
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await wait_for_pending(hl)
                store.break_now.set()
        [error] = errors
        assert "the store follower stopped" in str(error) and "RuntimeError" in str(error)
        with pytest.raises(HumanLayerError, match="the store follower stopped"):
            await tool()
