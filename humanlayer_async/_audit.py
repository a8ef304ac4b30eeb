"""The audit trail: one structlog event per state change, also kept by the store.

Events, each with ``request_id`` bound:

- ``approval.requested``  a request was stored (function, kind, expiry)
- ``approval.delivered``  a channel delivered it (channel, its message reference)
- ``approval.voted``      an approver's vote counted, on a request that needs several (by, approved)
- ``approval.decided``    a decision stands (approved, by, via)
- ``approval.timed_out``  nobody answered in time
- ``approval.cancelled``  the caller or an operator withdrew it
- ``approval.executing``  an approved tool started
- ``approval.executed``   an approved tool ran (ok or the error's type)
- ``approval.failed``     no channel could deliver it
- ``approval.reattached`` a replayed call of a run found its earlier request (durable stores)
- ``approval.outcome_unknown``  a replayed call found its tool started and never finished
- ``approval.reminded``   the approvers were reminded where it was delivered (reminder number)
- ``approval.escalated``  more approvers may decide it, and it went to more channels
- ``approval.shadowed``   a tool in shadow mode would have asked (function, kwargs): it ran
- ``grant.given``         a grant was given (or proposed, when it needs more granters); keyed
  by the grant's id, like ``grant.confirmed`` and ``grant.revoked``

A call a grant approved is ``approval.decided`` with ``via="grant"`` and the grant's id.

The library never configures logging: events go through ``structlog.get_logger()`` and
appear however the application has set structlog up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import structlog

__all__ = ["AuditEntry", "AuditEvent", "logger", "make_entry"]

AuditEvent = Literal[
    "approval.requested",
    "approval.delivered",
    "approval.voted",
    "approval.decided",
    "approval.timed_out",
    "approval.cancelled",
    "approval.executing",
    "approval.executed",
    "approval.failed",
    "approval.reattached",
    "approval.outcome_unknown",
    "approval.reminded",
    "approval.escalated",
    "approval.shadowed",
    "grant.given",
    "grant.confirmed",
    "grant.revoked",
]

logger = structlog.get_logger("humanlayer_async")

_WARNINGS = frozenset({"approval.timed_out", "approval.failed", "approval.outcome_unknown"})


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One line of the audit trail."""

    event: AuditEvent
    request_id: str
    at: datetime
    fields: Mapping[str, Any]


def make_entry(event: AuditEvent, request_id: str, **fields: Any) -> AuditEntry:
    """Log ``event`` and return it as an entry for the store's audit trail."""
    if event in _WARNINGS:
        logger.warning(event, request_id=request_id, **fields)
    else:
        logger.info(event, request_id=request_id, **fields)
    return AuditEntry(event, request_id, datetime.now(UTC), fields)
