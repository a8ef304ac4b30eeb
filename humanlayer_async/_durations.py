"""Durations as the API takes them (a positive, finite number of seconds, or a ``timedelta``)
and as operators type them (``15m``, ``7d``; a time back from now, or an ISO 8601 time)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

from ._exceptions import ConfigurationError

__all__ = ["parse_duration", "parse_since", "seconds"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(value: float | timedelta, what: str) -> float:
    """``value`` in seconds; ``ConfigurationError`` naming ``what`` when it is not a duration."""
    if isinstance(value, timedelta):
        counted = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        counted = float(value)
    else:
        counted = math.nan
    if not 0 < counted < math.inf:
        raise ConfigurationError(
            f"{what} must be a positive, finite number of seconds or a timedelta, not {value!r}"
        )
    return counted


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``2h`` or ``7d`` as a ``timedelta``; ``ValueError`` saying what is
    expected for anything else (one too long for a ``timedelta`` included)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 90s, 15m, 2h or 7d")
    try:
        return timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    except OverflowError:
        raise ValueError(f"{text!r} is longer than a duration can be") from None


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A duration back from ``now`` (default: the current time; ``2h``) or an ISO 8601 time
    (UTC unless it says otherwise); ``ValueError`` saying what is expected otherwise."""
    if _DURATION.fullmatch(text.strip()) is not None:
        try:
            return (datetime.now(UTC) if now is None else now) - parse_duration(text)
        except OverflowError:
            raise ValueError(f"{text!r} reaches back before any date") from None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (15m, 2h, 7d) nor an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
