"""Rows of the durable stores: the columns they share and the records they map to.

``SQLiteStore`` and ``PostgresStore`` keep the same tables in their own SQL dialects;
turning requests, decisions and audit entries into column values and back is done
here once for both. Timestamps are the one difference (epoch seconds in SQLite,
``timestamptz`` in PostgreSQL), so callers pass their converter.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast

from .._audit import AuditEntry, AuditEvent
from .._codec import digest, dumps, dumps_mapping, loads
from .._exceptions import ArgumentsChanged, ArgumentsEdited
from .._models import ApprovalRequest, Decision, Execution, Grant, Kind, Principal, Status, Vote, same_name

__all__ = [
    "DEFAULT_RETENTION",
    "SCHEMA_VERSION",
    "Row",
    "audit_row",
    "decision_row",
    "edited",
    "epoch",
    "execution_so_far",
    "expired_decision",
    "grant_row",
    "joined",
    "request_row",
    "retention_seconds",
    "tally",
    "to_entry",
    "to_grant",
    "to_request",
    "to_votes",
    "votes_text",
]

SCHEMA_VERSION = 1
"""The schema's version: what a reader must understand to use a store; stores migrate older
ones up to it and refuse newer ones. Additive changes (a new table that older readers never
touch, a nullable column that they never name) do not raise it: each store applies them by
name (its ``ADDITIONS``) and records them in a table of their own, so a fleet upgraded one
process at a time keeps working, the processes not yet upgraded included (they check this
number and find what they know)."""

DEFAULT_RETENTION = timedelta(days=30)

ToDatetime = Callable[[Any], datetime]


class Row(Protocol):
    """A fetched row, by column name: ``sqlite3.Row`` or ``asyncpg.Record``."""

    def __getitem__(self, column: str, /) -> Any: ...


def retention_seconds(value: float | timedelta) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not seconds >= 0:
        raise ValueError(f"retention must be a non-negative number of seconds, not {value!r}")
    return seconds


def request_row(request: ApprovalRequest) -> dict[str, Any]:
    """The columns of a new request (timestamps excepted); ``StoreError`` names an unstorable argument."""
    kwargs = dumps_mapping(request.kwargs, "argument")
    return {
        "id": request.id,
        "key": request.key,
        "run_id": request.run_id,
        "kind": request.kind,
        "function": request.function,
        "kwargs": kwargs,
        "context": dumps_mapping(request.context, "context entry"),
        "approvers": json.dumps(list(request.approvers)),
        "message": request.message,
        "doc": request.doc,
        "digest": request.digest or hashlib.sha256(kwargs.encode()).hexdigest(),  # what digest() gives
        "requested_by": request.requested_by,
        "approvals": request.approvals,
        "editable": None if request.editable is None else json.dumps(request.editable),
        "tool": request.tool,
    }


def decision_row(decision: Decision) -> dict[str, Any]:
    """The decision columns (``decided_at`` excepted): a store's ``UPDATE`` sets each one it names."""
    return {
        "status": decision.status.value,
        "approved": decision.approved,
        "decided_by": decision.by,
        "decided_via": decision.via,
        "comment": decision.comment,
        "answer": decision.answer,
        "decided_user": decision.user,
        "decided_edits": None if decision.edits is None else dumps_mapping(decision.edits, "edit"),
        "decided_grant": decision.grant,
    }


def expired_decision(request_id: str, at: datetime) -> Decision:
    """The decision a store writes for a pending request it finds past its expiry."""
    return Decision(request_id, False, Status.TIMED_OUT, None, "timeout", None, at)


def tally(
    request: ApprovalRequest, votes: tuple[Vote, ...], vote: Vote, needed: int
) -> tuple[tuple[Vote, ...], Decision | None]:
    """What ``vote`` does to pending ``request`` (as read in the store's transaction) that
    needs ``needed`` approvals and has ``votes``: the votes then (unchanged when it does not
    count), and the decision it makes, if any.

    A vote cast on another version of the call (``vote.seen`` is not the request's
    ``fingerprint``: it was edited meanwhile) raises ``ArgumentsEdited``: nothing is written.
    A denial denies at once (a veto). An approval by someone who approved already counts
    once. An approval with edits starts the count again: the votes before it approved
    another call. The approval that brings the distinct approvers to ``needed`` approves.
    The decision carries every vote that made it (and the edits they approved), and is the
    last voter's. The store applies a vote's edits to the request's arguments (``edited``).
    """
    if vote.seen is not None and vote.seen != request.fingerprint:
        raise ArgumentsEdited(request.id, request.function)
    request_id = request.id
    if vote.edits:  # the votes before were for another call; the edits before still hold
        earlier = votes[0].edits if votes else None  # the first vote carries every edit so far
        vote = replace(vote, edits={**(earlier or {}), **vote.edits})
        votes = ()
    elif vote.approved and any(same_name(earlier.by) == same_name(vote.by) for earlier in votes):
        return votes, None
    votes = (*votes, vote)
    if vote.approved and len(votes) < needed:
        return votes, None
    status = Status.APPROVED if vote.approved else Status.DENIED
    decision = Decision(
        request_id,
        vote.approved,
        status,
        vote.by,
        vote.via,
        vote.comment,
        vote.at,
        None,
        vote.user,
        votes,
        _edits_of(votes),
    )
    return votes, decision


def _edits_of(votes: tuple[Vote, ...]) -> Mapping[str, Any] | None:
    """The edits the votes agreed on: those of the first vote, which reset the ones before it."""
    return votes[0].edits if votes else None


def edited(request: ApprovalRequest, edits: Mapping[str, Any] | None) -> ApprovalRequest:
    """``request`` with ``edits`` applied to its arguments, and the digest of what then runs."""
    if not edits:
        return request
    kwargs = {**request.kwargs, **edits}
    return replace(request, kwargs=kwargs, digest=digest(kwargs))


def votes_text(votes: tuple[Vote, ...]) -> str:
    """The votes column: JSON."""
    return json.dumps(
        [
            {
                "by": v.by,
                "approved": v.approved,
                "via": v.via,
                "comment": v.comment,
                "at": v.at.isoformat(),
                "user": v.user,
                "edits": None if v.edits is None else json.loads(dumps_mapping(v.edits, "edit")),
                "grant": v.grant,
            }
            for v in votes
        ]
    )


def to_votes(text: str | None) -> tuple[Vote, ...]:
    """The votes column back as votes."""
    if not text:
        return ()
    return tuple(
        Vote(
            v["by"],
            v["approved"],
            v["via"],
            v["comment"],
            datetime.fromisoformat(v["at"]),
            v.get("user"),
            v.get("edits"),
            v.get("grant"),
        )
        for v in json.loads(text)
    )


def execution_so_far(request: ApprovalRequest, digest: str | None) -> Execution | None:
    """``begin_execution``'s checks, the same in every store, on the request read for update.

    Raises ``ArgumentsChanged`` when ``digest`` is not the stored arguments' digest (``None``:
    the caller stored these very arguments itself, nothing to compare); returns how far an
    earlier run got, or ``None`` when this caller may run it (the store then marks it executing).
    """
    if digest is not None and request.digest != digest:
        raise ArgumentsChanged(request.id, request.function)
    return request.execution


def to_request(row: Row, when: ToDatetime) -> ApprovalRequest:
    """A stored row as an ``ApprovalRequest`` with its decision, votes and execution."""
    votes = to_votes(row["votes"])
    decision = None
    if row["status"] != Status.PENDING.value:
        status = Status(row["status"])
        decision = Decision(
            request_id=row["id"],
            approved=bool(row["approved"]),
            status=status,
            by=row["decided_by"],
            via=row["decided_via"],
            comment=row["comment"],
            decided_at=when(row["decided_at"]),
            answer=row["answer"],
            user=row["decided_user"],
            votes=votes if status in (Status.APPROVED, Status.DENIED) else (),
            edits=None if row["decided_edits"] is None else loads(row["decided_edits"]),
            grant=row["decided_grant"],
        )
    execution = None
    if row["exec_state"] is not None:
        execution = Execution(row["exec_state"], row["exec_outcome"], row["result"])
    return ApprovalRequest(
        id=row["id"],
        kind=cast(Kind, row["kind"]),
        function=row["function"],
        kwargs=loads(row["kwargs"]),
        context=loads(row["context"]),
        approvers=tuple(loads(row["approvers"])),
        created_at=when(row["created_at"]),
        expires_at=when(row["expires_at"]),
        run_id=row["run_id"],
        message=row["message"],
        doc=row["doc"],
        decision=decision,
        key=row["key"],
        digest=row["digest"],
        execution=execution,
        requested_by=row["requested_by"],
        approvals=row["approvals"],
        votes=votes,
        editable=None if row["editable"] is None else loads(row["editable"]),
        tool=row["tool"],
    )


def grant_row(grant: Grant) -> dict[str, Any]:
    """The columns of a grant (timestamps excepted)."""
    return {
        "id": grant.id,
        "function": grant.function,
        "where_": None if grant.where is None else dumps_mapping(grant.where, "where value"),
        "granted_by": json.dumps(list(grant.by)),
        "users": json.dumps(list(grant.users)),
        "approvers": json.dumps(list(grant.approvers)),
        "approvals": grant.approvals,
        "max_uses": grant.max_uses,
        "uses": grant.uses,
        "revoked_by": grant.revoked_by,
    }


def to_grant(row: Row, when: ToDatetime) -> Grant:
    return Grant(
        id=row["id"],
        function=row["function"],
        where=None if row["where_"] is None else loads(row["where_"]),
        by=tuple(json.loads(row["granted_by"])),
        created_at=when(row["created_at"]),
        expires_at=when(row["expires_at"]),
        max_uses=row["max_uses"],
        uses=row["uses"],
        approvals=row["approvals"],
        approvers=tuple(json.loads(row["approvers"])),
        users=tuple(json.loads(row["users"])),
        revoked_by=row["revoked_by"],
        revoked_at=None if row["revoked_at"] is None else when(row["revoked_at"]),
    )


def joined(grant: Grant, by: Principal) -> Grant:
    """``grant`` with ``by`` among its granters (unchanged when they are already: one person counts once)."""
    if grant.granted_by(by.id) or (by.user is not None and grant.granted_by(by.user)):
        return grant
    return replace(grant, by=(*grant.by, by.id), users=(*grant.users, by.user))


def audit_row(entry: AuditEntry) -> tuple[str, str, str]:
    """``(request_id, event, fields as JSON)`` of an audit entry."""
    return entry.request_id, entry.event, dumps(dict(entry.fields), f"audit field of {entry.event}")


def to_entry(row: Row, when: ToDatetime) -> AuditEntry:
    return AuditEntry(
        event=cast(AuditEvent, row["event"]),
        request_id=row["request_id"],
        at=when(row["at"]),
        fields=loads(row["fields"]),
    )


def epoch(value: float) -> datetime:
    """Epoch seconds (SQLite's timestamps) as an aware UTC datetime."""
    return datetime.fromtimestamp(value, UTC)
