"""Durations as the API takes them: a positive, finite number of seconds, or a ``timedelta``."""

from __future__ import annotations

import math
from datetime import timedelta

from ._exceptions import ConfigurationError

__all__ = ["seconds"]


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
