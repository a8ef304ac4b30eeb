"""Escalations, and the steps a waiting request has scheduled: reminders and escalations.

A request's steps are stored (``Store.schedule``) when it is asked, by name: ``"remind"``
(due every ``remind_every`` seconds from the request's creation) and ``"escalate:<n>"``
(the tool's n-th ``Escalation``, due ``after`` its creation). The processes waiting for
the request carry them out: each takes a due step with a lease (``Store.take``), carries it
out, then marks it done (``Store.done``), so of a fleet one process does each; one that
dies mid-way lets the lease expire and another does it again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ._durations import seconds
from ._exceptions import ConfigurationError
from .stores.base import Step

if TYPE_CHECKING:
    from .channels.base import Channel

__all__ = ["LEASE", "REMIND", "Escalation", "escalation_step", "next_reminder", "planned", "ready_at"]

REMIND = "remind"
LEASE = timedelta(seconds=60)
"""How long a process may take to carry out a step before another may take it again."""


class Escalation:
    """What happens to a request still pending ``after`` its creation (seconds or a
    ``timedelta``): it goes to ``channels`` too, and ``approvers`` may decide it as well.

    ``@hl.require_approval(escalate=[Escalation(after=timedelta(minutes=30),
    channels=[oncall], approvers=["cto@example.com"])])``. A tool with no approver list
    (anyone may decide) stays so; a channel's own approvers still narrow who may answer
    through it. ``after`` reads back in seconds.
    """

    __slots__ = ("after", "approvers", "channels")

    def __init__(
        self, after: float | timedelta, channels: Iterable[Channel] = (), approvers: Iterable[str] | str = ()
    ) -> None:
        counted = seconds(after, "Escalation(after=...)")
        named = (approvers,) if isinstance(approvers, str) else tuple(approvers)
        if not all(isinstance(a, str) and a for a in named):
            raise ConfigurationError(f"Escalation approvers must be non-empty strings, not {approvers!r}")
        self.after = counted
        self.channels: tuple[Channel, ...] = tuple(channels)
        self.approvers: tuple[str, ...] = named
        if not self.channels and not self.approvers:
            raise ConfigurationError("an Escalation needs channels to deliver to, approvers to add, or both")

    def __repr__(self) -> str:
        names = [channel.name for channel in self.channels]
        return f"Escalation(after={self.after}, channels={names}, approvers={list(self.approvers)})"


def escalation_step(name: str) -> int | None:
    """The escalation's position in the tool's list, for a step named ``"escalate:<n>"``."""
    prefix, _, number = name.partition(":")
    return int(number) if prefix == "escalate" and number.isdigit() else None


def planned(
    created_at: datetime, remind_every: float | None, escalations: Sequence[Escalation]
) -> list[Step]:
    """The steps of a request created at ``created_at``, each at its first due time."""
    steps = [
        Step(f"escalate:{n}", created_at + timedelta(seconds=e.after)) for n, e in enumerate(escalations)
    ]
    if remind_every is not None:
        steps.append(Step(REMIND, created_at + timedelta(seconds=remind_every)))
    return steps


def ready_at(step: Step) -> datetime:
    """When a pending step may be taken: once due, and once another process's lease is over."""
    assert step.due_at is not None
    return step.due_at if step.lease_until is None else max(step.due_at, step.lease_until)


def next_reminder(due_at: datetime, every: float, now: datetime) -> datetime:
    """The first reminder time after ``now`` on the series ``due_at + k * every``: a process
    that restarts late sends one reminder, not every one it missed."""
    missed = max(0, math.floor((now - due_at).total_seconds() / every))
    return due_at + timedelta(seconds=every * (missed + 1))
