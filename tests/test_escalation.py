"""Escalation: a request still pending after a while goes to more channels and more approvers
may decide it; each step is carried out by one process of a fleet, with a lease."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from humanlayer_async import (
    ApprovalRequest,
    ConfigurationError,
    Escalation,
    HumanLayer,
    NotAnApprover,
    Status,
)
from humanlayer_async.channels import BaseChannel
from humanlayer_async.testing import wait_for_pending

pytestmark = pytest.mark.anyio

AFTER = 0.3  # seconds before the escalation in these tests
PATIENCE = 10.0


class Recorder(BaseChannel):
    """A channel that records what it was sent, reminded of and told."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[ApprovalRequest] = []
        self.reminded: list[ApprovalRequest] = []
        self.updated: list[ApprovalRequest] = []
        self._changed = anyio.Event()

    async def send(self, request: ApprovalRequest) -> str | None:
        self.sent.append(request)
        self._poke()
        return f"{self.name}-{len(self.sent)}"

    async def remind(self, request: ApprovalRequest, ref: str | None) -> None:
        self.reminded.append(request)
        self._poke()

    async def update(self, request: ApprovalRequest, ref: str | None) -> None:
        self.updated.append(request)
        self._poke()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, check: Callable[[], bool]) -> None:
        with anyio.fail_after(PATIENCE):
            while not check():
                await self._changed.wait()


def test_an_escalation_is_checked_when_made() -> None:
    wrong: Any
    for wrong in (0, -5, float("nan"), "30m", True):
        with pytest.raises(ConfigurationError, match="after"):
            Escalation(after=wrong, approvers=["cto"])
    with pytest.raises(ConfigurationError, match="channels to deliver to, approvers to add"):
        Escalation(after=60)
    with pytest.raises(ConfigurationError, match="non-empty strings"):
        Escalation(after=60, approvers=[""])
    escalation = Escalation(after=timedelta(minutes=30), approvers="cto@example.com")
    assert escalation.after == 1800.0 and escalation.approvers == ("cto@example.com",)
    hl = HumanLayer([], listen=None)
    with pytest.raises(ConfigurationError, match="Escalation"):
        hl.require_approval(escalate=["cto"])  # type: ignore[list-item]


async def test_an_escalation_widens_the_approvers_and_delivers_to_more_channels() -> None:
    team, oncall = Recorder("team"), Recorder("oncall")
    async with HumanLayer([team], listen=None) as hl:

        @hl.require_approval(
            approvers=["alice"], escalate=[Escalation(after=AFTER, channels=[oncall], approvers=["cto"])]
        )
        async def drop_table(name: str) -> str:
            return f"dropped {name}"

        async with anyio.create_task_group() as tg:
            results: list[str] = []

            async def call() -> None:
                results.append(await drop_table("users"))

            tg.start_soon(call)
            [request] = await wait_for_pending(hl)
            with pytest.raises(NotAnApprover):  # not yet
                await hl.decide(request.id, True, by="cto")
            assert oncall.sent == []
            await oncall.wait_for(lambda: len(oncall.sent) == 1)
            assert (await hl.get(request.id)).approvers == ("alice", "cto")
            assert oncall.sent[0].approvers == ("alice", "cto")  # what the on-call channel shows
            decision = await hl.decide(request.id, True, by="cto")
            assert decision is not None and decision.by == "cto"
        assert results == ["dropped users"]
        await oncall.wait_for(lambda: len(oncall.updated) == 1)  # the outcome reaches it too
        assert oncall.updated[0].status is Status.APPROVED
        events = [entry.event for entry in await hl.store.history(request_id=request.id)]
        assert events.count("approval.escalated") == 1
        assert events.index("approval.escalated") < events.index("approval.decided")
        [escalated] = [
            e for e in await hl.store.history(request_id=request.id) if e.event == "approval.escalated"
        ]
        assert escalated.fields["approvers"] == ["cto"] and escalated.fields["channels"] == ["oncall"]


async def test_nothing_escalates_once_a_decision_stands() -> None:
    team, oncall = Recorder("team"), Recorder("oncall")
    async with HumanLayer([team], listen=None) as hl:

        @hl.require_approval(escalate=[Escalation(after=AFTER, channels=[oncall])])
        async def restart(service: str) -> str:
            return f"restarted {service}"

        async with anyio.create_task_group() as tg:
            tg.start_soon(restart, "api")
            [request] = await wait_for_pending(hl)
            await hl.decide(request.id, True, by="ops")
        await anyio.sleep(AFTER * 2)
        assert oncall.sent == []
        assert "approval.escalated" not in [e.event for e in await hl.store.history(request_id=request.id)]


async def test_an_escalation_without_approvers_keeps_anyone_as_approver() -> None:
    # A tool with no approver list may be decided by anyone: escalating adds a channel and
    # must not narrow it to the escalation's approvers.
    team, oncall = Recorder("team"), Recorder("oncall")
    async with HumanLayer([team], listen=None) as hl:

        @hl.require_approval(escalate=[Escalation(after=AFTER, channels=[oncall], approvers=["cto"])])
        async def scale(replicas: int) -> int:
            return replicas

        async with anyio.create_task_group() as tg:
            tg.start_soon(scale, 3)
            [request] = await wait_for_pending(hl)
            await oncall.wait_for(lambda: len(oncall.sent) == 1)
            assert (await hl.get(request.id)).approvers == ()
            assert await hl.decide(request.id, True, by="anyone") is not None


async def test_the_timeout_still_fails_closed_after_an_escalation() -> None:
    team, oncall = Recorder("team"), Recorder("oncall")
    async with HumanLayer([team], listen=None, on_reject="return") as hl:

        @hl.require_approval(timeout=AFTER * 3, escalate=[Escalation(after=AFTER, channels=[oncall])])
        async def wipe(disk: str) -> str:
            return f"wiped {disk}"

        with anyio.fail_after(PATIENCE):
            result = await wipe("sda")
        assert "expired without an answer" in result
        assert len(oncall.sent) == 1


async def test_each_escalation_is_carried_out_by_one_of_two_processes(store_url: str) -> None:
    # Two HumanLayers on one store wait for the same request of a run: the escalation is
    # taken with a lease, so exactly one of them delivers it.
    oncalls = [Recorder("oncall"), Recorder("oncall")]
    async with (
        HumanLayer([Recorder("team")], store=store_url, listen=None) as first,
        HumanLayer([Recorder("team")], store=store_url, listen=None) as second,
    ):
        tools: list[tuple[HumanLayer, Any]] = []
        for hl, oncall in zip((first, second), oncalls, strict=True):

            @hl.require_approval(
                approvers=["alice"],
                escalate=[Escalation(after=AFTER, channels=[oncall], approvers=["cto"])],
                on_reject="return",
            )
            async def deploy(version: str) -> str:
                return f"deployed {version}"

            tools.append((hl, deploy))

        async def call(hl: HumanLayer, tool: Any) -> None:
            with hl.run("release-8"):
                await tool("8.0")

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, *tools[0])
            [request] = await wait_for_pending(first)
            tg.start_soon(call, *tools[1])  # re-attaches to the same request
            with anyio.fail_after(PATIENCE):
                while not any(o.sent for o in oncalls):
                    await anyio.sleep(0.05)
            await anyio.sleep(AFTER * 3)  # time for a second delivery, were there one
            assert sum(len(o.sent) for o in oncalls) == 1
            await second.decide(request.id, False, by="cto")  # both waiters get it, neither runs
        history = await first.store.history(request_id=request.id)
        assert [e.event for e in history].count("approval.escalated") == 1


class Stuck(Recorder):
    """A channel whose deliveries hang until released: its process stalls mid-step."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.release = anyio.Event()

    async def send(self, request: ApprovalRequest) -> str | None:
        await super().send(request)
        await self.release.wait()
        return None


async def test_a_step_whose_taker_stalled_is_taken_again_once_its_lease_ends(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first process takes the escalation and stalls before marking it done (as a process
    # that died would): once its lease ends, the second carries it out (the one repeat a
    # lease allows), and the first's late "done" changes nothing.
    monkeypatch.setattr("humanlayer_async._engine.LEASE", timedelta(seconds=1))
    stuck, oncall = Stuck("oncall"), Recorder("oncall")
    async with (
        HumanLayer([Recorder("team")], store=store_url, listen=None) as first,
        HumanLayer([Recorder("team")], store=store_url, listen=None) as second,
    ):
        tools = []
        for hl, channel in ((first, stuck), (second, oncall)):

            @hl.require_approval(
                approvers=["alice"],
                escalate=[Escalation(after=AFTER, channels=[channel])],
                on_reject="return",
            )
            async def rotate(key: str) -> str:
                return f"rotated {key}"

            tools.append((hl, rotate))

        async def call(hl: HumanLayer, tool: Any) -> None:
            with hl.run("rotation-3"):
                await tool("db")

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, *tools[0])
            [request] = await wait_for_pending(first)
            await stuck.wait_for(lambda: len(stuck.sent) == 1)  # taken, and stalled
            taken_at = datetime.now(UTC)
            tg.start_soon(call, *tools[1])  # re-attaches, finds the step leased
            await oncall.wait_for(lambda: len(oncall.sent) == 1)
            assert datetime.now(UTC) - taken_at >= timedelta(seconds=0.8)  # not before the lease ended
            stuck.release.set()
            await anyio.sleep(AFTER)
            [step] = await second.store.steps(request.id)
            assert step.due_at is None and step.number == 1  # done once: the late "done" was stale
            assert (len(stuck.sent), len(oncall.sent)) == (1, 1)
            await second.decide(request.id, False, by="alice")
        escalated = [
            e for e in await first.store.history(request_id=request.id) if e.event == "approval.escalated"
        ]
        assert len(escalated) == 2  # the stalled attempt and the repeat


async def test_a_restarted_process_carries_the_stored_schedule_on(store_url: str) -> None:
    # The reminder series is stored: a process that re-attaches after two reminders were
    # sent goes on with the third, not the first again.
    every = 0.3

    async def wait(hl: HumanLayer, team: Recorder, reminders: int) -> str:
        @hl.require_approval(remind_every=every)
        async def migrate(step: int) -> int:
            return step

        async with anyio.create_task_group() as tg:
            with hl.run("migration-1"):
                tg.start_soon(migrate, 1)
            [request] = await wait_for_pending(hl)
            await team.wait_for(lambda: len(team.reminded) >= reminders)
            tg.cancel_scope.cancel()  # the caller goes away; a run's request stays pending
        return request.id

    first, second = Recorder("team"), Recorder("team")
    async with HumanLayer([first], store=store_url, listen=None) as hl:
        request_id = await wait(hl, first, 2)
    async with HumanLayer([second], store=store_url, listen=None) as hl:
        assert await wait(hl, second, 1) == request_id
        assert second.sent == []  # re-attached: not delivered again
        numbers = [
            entry.fields["reminder"]
            for entry in await hl.store.history(request_id=request_id)
            if entry.event == "approval.reminded"
        ]
        assert numbers[:3] == [1, 2, 3]
