"""The one retry policy: how long to wait before the next attempt, for every part that retries.

Slack calls, SMTP deliveries, the stores' reconnects and the store follower all wait with a
``Backoff``: exponential from ``first`` up to ``cap`` with jitter (so a fleet that lost its
database does not come back in lockstep), or a fixed schedule, for a bounded number of
retries or for as long as the caller keeps asking.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = ["Backoff", "retry_after"]


class Backoff:
    """The delays between attempts of one retried operation.

    ``Backoff(first=0.5, cap=30.0)`` waits 0.5 s, 1 s, 2 s, ... up to 30 s, each within
    ``jitter`` (a fraction) of that; ``retries`` bounds how many waits there are (``None``:
    no bound). ``Backoff.schedule((1, 4, 15))`` waits exactly those seconds, then gives up.
    ``reset()`` after a success starts over from ``first``.
    """

    __slots__ = ("_cap", "_first", "_jitter", "_retries", "_schedule", "_tries")

    def __init__(
        self, first: float = 0.5, cap: float = 30.0, *, retries: int | None = None, jitter: float = 0.2
    ) -> None:
        if not (0 < first <= cap) or not (0 <= jitter < 1) or (retries is not None and retries < 0):
            raise ValueError(f"bad backoff: first={first}, cap={cap}, retries={retries}, jitter={jitter}")
        self._first, self._cap, self._retries, self._jitter = first, cap, retries, jitter
        self._schedule: tuple[float, ...] | None = None
        self._tries = 0

    @classmethod
    def schedule(cls, delays: Sequence[float]) -> Backoff:
        """Exactly ``delays`` (seconds), without jitter, then no more retries."""
        backoff = cls(retries=len(delays), jitter=0.0)
        backoff._schedule = tuple(delays)
        return backoff

    @property
    def retries_made(self) -> int:
        """How many delays ``next()`` has handed out since the start or the last ``reset()``."""
        return self._tries

    def next(self) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` when no retry is left."""
        if self._retries is not None and self._tries >= self._retries:
            return None
        if self._schedule is not None:
            delay = self._schedule[self._tries]
        else:
            delay = min(self._first * 2.0 ** min(self._tries, 64), self._cap)
            delay *= random.uniform(1 - self._jitter, 1 + self._jitter)
        self._tries += 1
        return delay

    def reset(self) -> None:
        """Start over from the first delay (after an attempt that worked)."""
        self._tries = 0


def retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (seconds, or an HTTP date); ``None``
    without one that can be read."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
