"""What Slack and the web console offer next to Approve: "Approve, and allow the same for 1 hour".

The channels' ``grant_durations=`` option, checked once here, and the words for a duration.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from .._durations import seconds as duration_seconds
from .._exceptions import ConfigurationError

__all__ = ["GRANT_DURATIONS", "MAX_GRANT_DURATIONS", "check_grant_durations", "describe_duration"]

GRANT_DURATIONS = (timedelta(hours=1),)
"""What "Approve, and allow the same for …" offers by default."""
MAX_GRANT_DURATIONS = 3

_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60))


def check_grant_durations(durations: Sequence[float | timedelta]) -> tuple[float, ...]:
    """``durations`` in seconds, once each is a positive, finite number of seconds or a
    ``timedelta``, none repeats and there are at most ``MAX_GRANT_DURATIONS``."""
    if isinstance(durations, str | bytes) or not isinstance(durations, Sequence):
        raise ConfigurationError(
            f"grant_durations must be a sequence of durations (seconds or timedeltas), not {durations!r}"
        )
    offered: list[float] = []
    for value in durations:
        seconds = duration_seconds(value, "grant_durations: each")
        if seconds in offered:
            raise ConfigurationError(f"grant_durations offers {value!r} ({describe_duration(seconds)}) twice")
        offered.append(seconds)
    if len(offered) > MAX_GRANT_DURATIONS:
        raise ConfigurationError(
            f"grant_durations offers at most {MAX_GRANT_DURATIONS} durations, not {len(offered)}"
        )
    return tuple(offered)


def describe_duration(seconds: float) -> str:
    """A length of time in words, exactly: ``30 minutes``, ``1 hour``, ``8 hours``, ``1 day``,
    ``90 minutes``, ``45 seconds``."""
    for unit, size in _UNITS:
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds:g} second{'' if seconds == 1 else 's'}"
