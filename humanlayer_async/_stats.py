"""Per-tool approval stats, read off the audit trail every store keeps.

``tool_stats(entries)`` takes the trail from some time on (``Store.history(since=...)``,
oldest first) and gives one ``ToolStats`` per function: what came of the requests made in
that window, how long people took, who answered most, and how often a tool gated in shadow
mode would have asked. It reads nothing else, so the CLI (``humanlayer-async stats``) and
the web console's stats page show the same numbers from any store. Both read the window as
operators type it (``7d``, or an ISO 8601 time) with ``_durations.parse_since``.

What counts:

- A request is counted when its ``approval.requested`` entry is among the entries: a request
  made before the window, decided in it, is left out (its tool is not known from the window).
  Questions (``human_as_tool``) count under their tool's name, ``contact_human``.
- Its outcome is its first final entry: ``approval.decided`` (approved or denied; ``granted``
  when ``via="grant"``), ``approval.timed_out``, ``approval.cancelled`` or ``approval.failed``.
  One with none yet is ``pending``.
- ``approval_rate`` is approved / (approved + denied): the decisions people made, grants
  left out. ``None`` when people decided none.
- Waits run from ``approval.requested`` to a person's approval or denial (grants, timeouts,
  cancellations and failures are not waits for a person). ``median_wait_seconds`` is the
  middle wait (the mean of the two middle ones for an even count); ``p95_wait_seconds`` is
  the nearest-rank 95th percentile (``percentile``): the smallest wait that at least 95% of
  the waits do not exceed, so for fewer than 20 waits it is the longest one. Both ``None``
  with no wait.
- ``top_approvers``: the (at most 3) people who answered most of the tool's requests, each
  request counted once per person whether they decided it or cast one of its votes; ties in
  name order. Names compare as approver lists compare them (an email address in any case is
  one person).
- ``shadowed``: ``approval.shadowed`` entries, calls of a tool gated in shadow mode, which ran
  at once: the requests it *would have* made.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ._audit import AuditEntry, AuditEvent
from ._models import same_name

__all__ = [
    "DEFAULT_SINCE",
    "HEADERS",
    "SHADOWED",
    "ApproverCount",
    "ToolStats",
    "cells",
    "describe_wait",
    "percentile",
    "tool_stats",
]

SHADOWED: AuditEvent = "approval.shadowed"
"""The audit event of a call a shadow-mode gate let run: what it would have asked."""

DEFAULT_SINCE = "7d"
"""The window stats cover when none is given: the last 7 days."""

TOP_APPROVERS = 3

_FINAL: frozenset[AuditEvent] = frozenset(
    {"approval.decided", "approval.timed_out", "approval.cancelled", "approval.failed"}
)


@dataclass(frozen=True, slots=True)
class ApproverCount:
    """One of a tool's top approvers: who, and how many of its requests they answered."""

    by: str
    count: int


@dataclass(frozen=True, slots=True)
class ToolStats:
    """What came of one tool's requests in a window of the audit trail (see the module's
    docstring for what each number counts). Its fields are the keys of
    ``humanlayer-async stats --json``."""

    function: str
    requests: int
    approved: int
    denied: int
    timed_out: int
    cancelled: int
    failed: int
    granted: int
    pending: int
    approval_rate: float | None
    median_wait_seconds: float | None
    p95_wait_seconds: float | None
    top_approvers: tuple[ApproverCount, ...]
    shadowed: int


@dataclass
class _Tally:
    """One tool's counts while the entries are read."""

    outcomes: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    shadowed: int = 0
    waits: list[float] = field(default_factory=list)
    answered: Counter[str] = field(default_factory=Counter)  # same_name(by) -> requests answered
    names: dict[str, str] = field(default_factory=dict)  # same_name(by) -> the name first seen

    def result(self, function: str) -> ToolStats:
        decided = self.outcomes["approved"] + self.outcomes["denied"]
        top = sorted(self.answered.items(), key=lambda item: (-item[1], self.names[item[0]]))
        return ToolStats(
            function=function,
            requests=self.requests,
            approved=self.outcomes["approved"],
            denied=self.outcomes["denied"],
            timed_out=self.outcomes["timed_out"],
            cancelled=self.outcomes["cancelled"],
            failed=self.outcomes["failed"],
            granted=self.outcomes["granted"],
            pending=self.requests - sum(self.outcomes.values()),
            approval_rate=self.outcomes["approved"] / decided if decided else None,
            median_wait_seconds=statistics.median(self.waits) if self.waits else None,
            p95_wait_seconds=percentile(self.waits, 95),
            top_approvers=tuple(ApproverCount(self.names[key], n) for key, n in top[:TOP_APPROVERS]),
            shadowed=self.shadowed,
        )


def percentile(values: Sequence[float], percent: int) -> float | None:
    """The nearest-rank ``percent``-th percentile of ``values``: the value at rank
    ⌈percent/100 × n⌉ in ascending order (the smallest one that at least ``percent``% of
    the values do not exceed); ``None`` for no values. Always one of ``values``, never
    interpolated: of 1 value, that value; the 95th of fewer than 20, the largest."""
    if not values:
        return None
    ordered = sorted(values)
    rank = -(-percent * len(ordered) // 100)  # the ceiling, in integers: no float rounding
    return ordered[max(rank, 1) - 1]


def tool_stats(entries: Iterable[AuditEntry]) -> list[ToolStats]:
    """Per-tool stats of the requests made among ``entries`` (the audit trail from some time
    on, oldest first), one per function, by name."""
    tallies: dict[str, _Tally] = {}
    asked: dict[str, tuple[str, datetime]] = {}  # request id -> (function, requested at)
    settled: set[str] = set()
    answerers: dict[str, dict[str, str]] = {}  # request id -> same_name(by) -> by

    def tally(function: str) -> _Tally:
        return tallies.setdefault(function, _Tally())

    for entry in entries:
        event = entry.event
        fields = entry.fields
        if event == "approval.requested":
            function = str(fields.get("function", ""))
            asked[entry.request_id] = (function, entry.at)
            tally(function).requests += 1
        elif event == SHADOWED:
            tally(str(fields.get("function", ""))).shadowed += 1
        elif entry.request_id not in asked or entry.request_id in settled:
            continue  # made before the window, or already settled (the first outcome stands)
        elif event == "approval.voted":
            answerers.setdefault(entry.request_id, {})[same_name(str(fields["by"]))] = str(fields["by"])
        elif event in _FINAL:
            settled.add(entry.request_id)
            function, requested_at = asked[entry.request_id]
            counts = tally(function)
            if event != "approval.decided":
                counts.outcomes[event.removeprefix("approval.")] += 1
            elif fields.get("via") == "grant":
                counts.outcomes["granted"] += 1
            else:
                counts.outcomes["approved" if fields.get("status") == "approved" else "denied"] += 1
                counts.waits.append((entry.at - requested_at).total_seconds())
                answerers.setdefault(entry.request_id, {})[same_name(str(fields["by"]))] = str(fields["by"])
    for request_id, people in answerers.items():
        counts = tally(asked[request_id][0])
        for key, name in people.items():
            counts.answered[key] += 1
            counts.names.setdefault(key, name)
    return [tallies[function].result(function) for function in sorted(tallies)]


# -- for people: the table the CLI and the web console show ---------------------------------

HEADERS = (
    "TOOL",
    "REQUESTS",
    "APPROVED",
    "DENIED",
    "TIMED OUT",
    "CANCELLED",
    "FAILED",
    "GRANTED",
    "PENDING",
    "APPROVAL RATE",
    "MEDIAN WAIT",
    "P95 WAIT",
    "WOULD HAVE ASKED",
    "TOP APPROVERS",
)
"""The stats table's columns, in order (``cells`` gives a row's)."""


def describe_wait(seconds: float | None) -> str:
    """A wait for people to read: ``0.4 s``, ``42.0 s``, ``3.5 min``, ``2.0 h``, ``1.5 d``; ``-``
    for none."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def cells(stats: ToolStats) -> tuple[str, ...]:
    """One tool's row of the stats table, under ``HEADERS`` (raw text: callers escape it for
    their medium, as the tool's and approvers' names are anyone's)."""
    rate = "-" if stats.approval_rate is None else f"{stats.approval_rate:.0%}"
    top = ", ".join(f"{approver.by} ({approver.count})" for approver in stats.top_approvers)
    counts = (
        stats.requests,
        stats.approved,
        stats.denied,
        stats.timed_out,
        stats.cancelled,
        stats.failed,
        stats.granted,
        stats.pending,
    )
    return (
        stats.function,
        *(str(count) for count in counts),
        rate,
        describe_wait(stats.median_wait_seconds),
        describe_wait(stats.p95_wait_seconds),
        str(stats.shadowed),
        top or "-",
    )


# -- the window, as operators type it -------------------------------------------------------
