"""SQLiteStore: requests, decisions and the audit trail in one file; survives restarts.

The standard library's ``sqlite3`` runs in worker threads, on one connection, so the event
loop never waits on the disk. Concurrent calls share a trip to a thread and one commit
(``_batch``), each call in a savepoint of its own: an error rolls back its own writes only.
The file is in WAL mode: several processes on one machine may share it (an agent, the
operator's ``humanlayer-async approve``). SQLite has no notifications, so ``watch()`` learns about
other processes' writes by reading ``PRAGMA data_version`` at most every 250 ms, the
one polling this SDK does. With ``create=False`` the store only opens a file that holds
its tables, and never creates a file or a directory.

A write that depends on what it reads is one ``BEGIN IMMEDIATE`` transaction: the
processes sharing the file take turns, so a vote counts once, a scheduled step is taken
by one of them, a grant's uses never exceed its limit, and each audit entry is chained to
the newest of its chain (``_chain``), read in the transaction that appends it.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar

import anyio

from .. import _threads
from .._audit import AuditEntry
from .._codec import loads
from .._exceptions import ConfigurationError, StoreError, UnknownGrant, UnknownRequest
from .._models import ApprovalRequest, Decision, Execution, Grant, Kind, Principal, Status, Vote
from ._batch import Batcher
from ._chain import ChainEntry, check_key, link
from ._rows import (
    DEFAULT_RETENTION,
    SCHEMA_VERSION,
    audit_row,
    decision_row,
    edited,
    epoch,
    execution_so_far,
    expired_decision,
    grant_row,
    joined,
    request_row,
    retention_seconds,
    tally,
    to_entry,
    to_grant,
    to_request,
    votes_text,
)
from .base import (
    Step,
    StoreEvent,
    Tally,
    age_seconds,
    decision_entry,
    given_entry,
    grant_entry,
    page_limit,
    requested_entry,
    vote_entry,
)

__all__ = ["SQLiteStore"]

T = TypeVar("T")
_Call = Callable[[sqlite3.Connection], Any]

POLL_INTERVAL = 0.25
"""Seconds between two ``PRAGMA data_version`` checks while someone watches."""

_PAGE = 1000
"""Audit entries read at a time by ``audit_chain``."""

_SCHEMA = (
    """CREATE TABLE hl_requests (
        id TEXT PRIMARY KEY,
        key TEXT UNIQUE,
        run_id TEXT,
        kind TEXT NOT NULL,
        function TEXT NOT NULL,
        kwargs TEXT NOT NULL,
        context TEXT NOT NULL,
        approvers TEXT NOT NULL,
        message TEXT,
        doc TEXT,
        digest TEXT,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        approved INTEGER,
        decided_by TEXT,
        decided_via TEXT,
        comment TEXT,
        answer TEXT,
        decided_at REAL,
        exec_state TEXT,
        exec_outcome TEXT,
        result TEXT
    )""",
    "CREATE INDEX hl_requests_pending ON hl_requests (status, created_at)",
    """CREATE TABLE hl_audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id TEXT NOT NULL,
        event TEXT NOT NULL,
        at REAL NOT NULL,
        fields TEXT NOT NULL
    )""",
    "CREATE INDEX hl_audit_request ON hl_audit (request_id, seq)",
    """CREATE TABLE hl_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        request_id TEXT NOT NULL,
        at REAL NOT NULL
    )""",
)

_MIGRATIONS: dict[int, tuple[str, ...]] = {1: _SCHEMA}
"""Version → the statements that bring the previous version to it."""

_ADDITIONS: dict[str, tuple[str, ...]] = {
    "claims": (
        "CREATE TABLE hl_claims (key TEXT PRIMARY KEY, expires_at REAL NOT NULL)",
        "CREATE INDEX hl_claims_expiry ON hl_claims (expires_at)",
    ),
    "principals": (
        "ALTER TABLE hl_requests ADD COLUMN requested_by TEXT",
        "ALTER TABLE hl_requests ADD COLUMN decided_user TEXT",
    ),
    "quorum": (
        "ALTER TABLE hl_requests ADD COLUMN approvals INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE hl_requests ADD COLUMN votes TEXT",  # JSON (votes_text); NULL: none yet
    ),
    "edits": (
        "ALTER TABLE hl_requests ADD COLUMN editable TEXT",  # JSON Schema by argument; NULL: none
        "ALTER TABLE hl_requests ADD COLUMN decided_edits TEXT",  # JSON; NULL: approved as asked
    ),
    "grants": (
        """CREATE TABLE hl_grants (
            id TEXT PRIMARY KEY,
            function TEXT NOT NULL,
            where_ TEXT,
            granted_by TEXT NOT NULL,
            users TEXT NOT NULL,
            approvers TEXT NOT NULL,
            approvals INTEGER NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            max_uses INTEGER,
            uses INTEGER NOT NULL DEFAULT 0,
            revoked_by TEXT,
            revoked_at REAL
        )""",
        "CREATE INDEX hl_grants_function ON hl_grants (function)",
    ),
    "schedule": (
        """CREATE TABLE hl_schedule (
            request_id TEXT NOT NULL,
            name TEXT NOT NULL,
            due_at REAL,
            number INTEGER NOT NULL DEFAULT 0,
            lease_until REAL,
            PRIMARY KEY (request_id, name)
        )""",
    ),
    "grant_columns": (
        "ALTER TABLE hl_requests ADD COLUMN tool TEXT",  # module.qualname; NULL: not a gated call
        "ALTER TABLE hl_requests ADD COLUMN decided_grant TEXT",  # the grant that approved it
    ),
    "audit_chain": (  # NULL in both: an entry written before the chains (_chain)
        "ALTER TABLE hl_audit ADD COLUMN prev TEXT",  # the hash of its chain's entry before it
        "ALTER TABLE hl_audit ADD COLUMN hash TEXT",  # over prev and the entry (_chain.link)
    ),
    # Pending requests by page (list_pending, count_pending): partial indexes, so a decided
    # request leaves them and they stay as small as what is pending; each costs every insert.
    "pending_pages": (
        # Every page and count, in page order (created_at, id): replaces (status, created_at),
        # which held every decided request too.
        "CREATE INDEX hl_requests_page ON hl_requests (created_at, id) WHERE status = 'pending'",
        "DROP INDEX IF EXISTS hl_requests_pending",
        # The expiry sweep every list and count runs first: reads only what has expired.
        "CREATE INDEX hl_requests_expiry ON hl_requests (expires_at) WHERE status = 'pending'",
        # function= (a tool's requests, approve --all --function), by name and by qualname.
        "CREATE INDEX hl_requests_function ON hl_requests (function, created_at, id)"
        " WHERE status = 'pending'",
        "CREATE INDEX hl_requests_tool ON hl_requests (tool, created_at, id)"
        " WHERE status = 'pending' AND tool IS NOT NULL",
        # run_id= (a run's few requests among many). Without the NULLs of calls outside a run,
        # which would make the planner take a run for as many requests.
        "CREATE INDEX hl_requests_run ON hl_requests (run_id, created_at, id)"
        " WHERE status = 'pending' AND run_id IS NOT NULL",
    ),
}
"""Name → the statements of an additive change (see ``SCHEMA_VERSION``), in order."""

_LIVE = "revoked_at IS NULL AND expires_at > :now AND (max_uses IS NULL OR uses < max_uses)"
"""``Grant.live`` at ``:now`` as SQL, so that reads skip dead grants (keep the two alike)."""


class SQLiteStore:
    """A durable store in one SQLite file, for one machine.

    Args:
        path: The database file; created with its tables (and its directory) on first use.
        create: Create the file when missing (the default). With ``False`` the store only
            opens a file that already holds its tables, and its first use raises
            ``ConfigurationError`` ("no store at ...") otherwise, creating nothing: the
            operator commands of ``humanlayer-async`` open stores so.
        retention: How long ``prune()`` keeps decided requests. Default: 30 days.
        busy_timeout: Seconds a write waits for another process's transaction.
        audit_key: A secret (16 bytes or more) that makes each audit entry's hash an
            HMAC-SHA256, so that someone who can write to the file cannot rewrite the trail
            and its hashes unnoticed. Keep it outside the file; every process writing to the
            store, and ``humanlayer-async audit verify``, needs the same one. Default: none
            (SHA-256, which catches accidents and naive edits).
    """

    def __init__(
        self,
        path: str | PathLike[str],
        *,
        create: bool = True,
        retention: float | timedelta = DEFAULT_RETENTION,
        busy_timeout: float = 10.0,
        audit_key: str | bytes | None = None,
    ) -> None:
        self.path = Path(path)
        self._audit_key = check_key(audit_key)
        self._create = create
        self._retention = retention_seconds(retention)
        self._busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        # One connection, on the library's own threads (never the application's: sync tools
        # waiting for a decision may hold all of those). Concurrent calls share a trip to a
        # thread (_batch), where each runs in turn, in a savepoint of one transaction.
        self._calls: Batcher[_Call | None, Any] = Batcher(self._call_all, concurrency=1)
        self._closed = False
        self._closing = anyio.Event()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    # -- plumbing --------------------------------------------------------------------

    async def _run(self, func: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreError(f"{self!r} is closed")
        answer: T = await self._calls.submit(func)
        return answer

    async def _call_all(self, funcs: Sequence[_Call | None]) -> list[Any]:
        """Run ``funcs`` one after another in a library thread, in one transaction, each in a
        savepoint of its own (an error rolls back only its own writes): each one's answer or
        error. ``None`` closes the connection (``aclose``), after the calls before it."""
        return await _threads.run_sync(functools.partial(self._call_each, funcs))

    def _call_each(self, funcs: Sequence[_Call | None]) -> list[Any]:
        calls = [func for func in funcs if func is not None]
        answers: list[Any] = []
        if calls:
            try:
                if self._conn is None:
                    self._conn = self._connect()
                with _transaction(self._conn):  # one commit for all: a commit writes each page it changed
                    answers = [self._call(self._conn, func) for func in calls]
            except sqlite3.Error as exc:  # (the commit failed: nothing was written)
                raise self._error(exc) from exc
        if len(calls) < len(funcs):
            self._disconnect()
        answered = iter(answers)
        return [None if func is None else next(answered) for func in funcs]

    def _call(self, conn: sqlite3.Connection, func: _Call) -> Any:
        """``func``'s answer, or its error (its writes rolled back to the savepoint before it)."""
        conn.execute("SAVEPOINT call")
        try:
            answer = func(conn)
        except Exception as exc:
            conn.execute("ROLLBACK TO call")
            # (UnicodeEncodeError: text SQLite cannot encode, a lone surrogate in a comment)
            answer = self._error(exc) if isinstance(exc, sqlite3.Error | UnicodeEncodeError) else exc
        conn.execute("RELEASE call")
        return answer

    def _error(self, exc: sqlite3.Error | UnicodeEncodeError) -> StoreError:
        return StoreError(f"SQLite ({self.path}): {exc}")

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connect(self) -> sqlite3.Connection:
        if self._create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            database = str(self.path)
        elif self.path.is_file():
            database = f"{self.path.absolute().as_uri()}?mode=rw"  # opened, never created
        else:
            raise self._missing()
        conn = sqlite3.connect(
            database,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
            uri=not self._create,
        )
        try:
            conn.row_factory = sqlite3.Row
            if not self._create and not conn.execute("PRAGMA user_version").fetchone()[0]:
                raise self._missing()  # a file, but without the store's tables
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            with _transaction(conn):  # (migrations: one at a time across processes)
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path} has schema version {version}, newer than this SDK's "
                        f"{SCHEMA_VERSION}: upgrade humanlayer-async"
                    )
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[target]:
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version={target}")
                conn.execute("CREATE TABLE IF NOT EXISTS hl_additions (name TEXT PRIMARY KEY)")
                done = {row[0] for row in conn.execute("SELECT name FROM hl_additions")}
                for name, statements in _ADDITIONS.items():
                    if name not in done:
                        for statement in statements:
                            _add(conn, statement)
                        conn.execute("INSERT INTO hl_additions (name) VALUES (?)", (name,))
        except BaseException:
            conn.close()
            raise
        return conn

    def _missing(self) -> ConfigurationError:
        return ConfigurationError(f"no store at {self.path.absolute()}: nothing was created (check the path)")

    # -- the Store protocol ------------------------------------------------------------

    async def open(self) -> None:
        await self._run(_max_seq)

    async def create(self, request: ApprovalRequest) -> None:
        await self.create_or_attach(request)

    async def create_or_attach(self, request: ApprovalRequest) -> ApprovalRequest:
        values = request_row(request)  # encodes in the caller's task: errors name the argument
        values["created_at"] = request.created_at.timestamp()
        values["expires_at"] = request.expires_at.timestamp()
        columns = ", ".join(values)
        marks = ", ".join(f":{name}" for name in values)

        def create(conn: sqlite3.Connection) -> ApprovalRequest:
            if request.key is not None:
                row = conn.execute("SELECT id FROM hl_requests WHERE key = ?", (request.key,)).fetchone()
                if row is not None:
                    return self._fetch(conn, row["id"])
            conn.execute(f"INSERT INTO hl_requests ({columns}) VALUES ({marks})", values)
            _event(conn, "requested", request.id)
            _audit(conn, requested_entry(request), self._audit_key)
            return request

        return await self._run(create)

    async def get(self, request_id: str) -> ApprovalRequest:
        def get(conn: sqlite3.Connection) -> ApprovalRequest:
            return self._fetch(conn, request_id)

        return await self._run(get)

    def _fetch(self, conn: sqlite3.Connection, request_id: str) -> ApprovalRequest:
        """The request, marked timed out first when it is pending past its expiry."""
        _expire(conn, request_id, self._audit_key)
        row = conn.execute("SELECT * FROM hl_requests WHERE id = ?", (request_id,)).fetchone()
        if row is None:
            raise UnknownRequest(request_id)
        return to_request(row, epoch)

    async def decide(self, decision: Decision) -> Decision:
        values: dict[str, Any] = {**decision_row(decision), "decided_at": decision.decided_at.timestamp()}
        where = {"id": decision.request_id, "now": time.time()}
        human = decision.status in (Status.APPROVED, Status.DENIED)

        def decide(conn: sqlite3.Connection) -> Decision:
            columns = dict(values)
            if decision.edits:  # the call that runs is the edited one: its kwargs and digest
                row = conn.execute("SELECT * FROM hl_requests WHERE id = ?", (decision.request_id,))
                current = row.fetchone()
                if current is not None:  # (else the UPDATE finds nothing, and _fetch says so)
                    columns.update(_arguments(edited(to_request(current, epoch), decision.edits)))
            # Approvals and denials only count before the expiry; timeouts and cancellations always.
            updated = conn.execute(
                f"UPDATE hl_requests SET {_assignments(columns)} WHERE id = :id AND status = 'pending'"
                + (" AND expires_at > :now" if human else ""),
                {**columns, **where},
            ).rowcount
            if updated:
                _event(conn, "decided", decision.request_id)
                _audit(conn, decision_entry(decision), self._audit_key)
                return decision
            standing = self._fetch(conn, decision.request_id).decision
            assert standing is not None
            return standing

        return await self._run(decide)

    async def vote(self, request_id: str, vote: Vote, needed: int) -> Tally:
        def count(conn: sqlite3.Connection) -> Tally:
            # BEGIN IMMEDIATE before the read: other processes' votes wait, none is lost.
            request = self._fetch(conn, request_id)  # past the expiry, the timeout stored first
            if request.decision is not None:
                return Tally(request.decision, request.votes, False)
            after, decision = tally(request, request.votes, vote, needed)
            if after is request.votes:
                return Tally(None, after, False)
            values: dict[str, Any] = {"votes": votes_text(after)}
            if vote.edits:  # the votes from now on are for the edited call
                values.update(_arguments(edited(request, vote.edits)))
            if decision is not None:
                values.update(decision_row(decision), decided_at=decision.decided_at.timestamp())
            assignments = _assignments(values)
            conn.execute(f"UPDATE hl_requests SET {assignments} WHERE id = :id", {**values, "id": request_id})
            _audit(
                conn,
                vote_entry(request_id, vote, sum(v.approved for v in after), needed),
                self._audit_key,
            )
            _event(conn, "voted" if decision is None else "decided", request_id)
            if decision is not None:
                _audit(conn, decision_entry(decision), self._audit_key)
            return Tally(decision, after, decision is not None)

        return await self._run(count)

    async def list_pending(
        self,
        *,
        run_id: str | None = None,
        kind: Kind | None = None,
        function: str | None = None,
        older_than: float | timedelta | None = None,
        id_prefix: str | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[ApprovalRequest]:
        limit = page_limit(limit)
        age = age_seconds(older_than)

        def pending(conn: sqlite3.Connection) -> list[ApprovalRequest]:
            _expire(conn, None, self._audit_key)
            where, values = _pending_where(run_id, kind, age, id_prefix)
            if after is not None:
                start = conn.execute("SELECT created_at, id FROM hl_requests WHERE id = ?", (after,))
                row = start.fetchone()
                if row is None:
                    raise UnknownRequest(after)
                where += " AND (created_at, id) > (:after_at, :after_id)"
                values.update(after_at=row["created_at"], after_id=row["id"])
            rows = conn.execute(*_pending_select(where, values, function, limit)).fetchall()
            return [to_request(row, epoch) for row in rows]

        return await self._run(pending)

    async def count_pending(
        self,
        *,
        run_id: str | None = None,
        kind: Kind | None = None,
        function: str | None = None,
        older_than: float | timedelta | None = None,
        id_prefix: str | None = None,
    ) -> int:
        age = age_seconds(older_than)

        def count(conn: sqlite3.Connection) -> int:
            _expire(conn, None, self._audit_key)
            where, values = _pending_where(run_id, kind, age, id_prefix)
            return int(conn.execute(*_pending_count(where, values, function)).fetchone()[0])

        return await self._run(count)

    async def record(self, entry: AuditEntry) -> None:
        def record(conn: sqlite3.Connection) -> None:
            _audit(conn, entry, self._audit_key)

        await self._run(record)

    async def claim(self, key: str, expires_at: datetime) -> bool:
        def claim(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM hl_claims WHERE expires_at <= ?", (time.time(),))
            return bool(
                conn.execute(
                    "INSERT INTO hl_claims (key, expires_at) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                    (key, expires_at.timestamp()),
                ).rowcount
            )

        return await self._run(claim)

    async def schedule(self, request_id: str, steps: Sequence[Step]) -> None:
        rows = [(request_id, s.name, _seconds(s.due_at), s.number, _seconds(s.lease_until)) for s in steps]

        def schedule(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM hl_requests WHERE id = ?", (request_id,)).fetchone() is None:
                raise UnknownRequest(request_id)
            conn.executemany(
                "INSERT INTO hl_schedule (request_id, name, due_at, number, lease_until)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (request_id, name) DO NOTHING",
                rows,
            )

        await self._run(schedule)

    async def steps(self, request_id: str) -> list[Step]:
        def steps(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            return conn.execute(
                "SELECT * FROM hl_schedule WHERE request_id = ? ORDER BY name", (request_id,)
            ).fetchall()

        return [
            Step(row["name"], _datetime(row["due_at"]), row["number"], _datetime(row["lease_until"]))
            for row in await self._run(steps)
        ]

    async def take(self, request_id: str, step: str, lease: timedelta) -> int | None:
        def take(conn: sqlite3.Connection) -> int | None:
            now = time.time()
            key = {"request_id": request_id, "name": step}
            leased = conn.execute(
                "UPDATE hl_schedule SET lease_until = :until WHERE request_id = :request_id"
                " AND name = :name AND due_at <= :now AND (lease_until IS NULL OR lease_until <= :now)",
                {**key, "now": now, "until": now + lease.total_seconds()},
            ).rowcount
            if not leased:
                return None
            row = conn.execute(
                "SELECT number FROM hl_schedule WHERE request_id = :request_id AND name = :name", key
            ).fetchone()
            return int(row["number"])

        return await self._run(take)

    async def done(self, request_id: str, step: str, number: int, next_due: datetime | None) -> None:
        def done(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE hl_schedule SET due_at = ?, number = number + 1, lease_until = NULL"
                " WHERE request_id = ? AND name = ? AND number = ?",
                (_seconds(next_due), request_id, step, number),
            )

        await self._run(done)

    async def escalate(
        self, request_id: str, approvers: tuple[str, ...], entry: AuditEntry
    ) -> ApprovalRequest:
        def escalate(conn: sqlite3.Connection) -> ApprovalRequest:
            request = self._fetch(conn, request_id)  # past the expiry, the timeout stored first
            if request.decision is not None:
                return request
            added = tuple(dict.fromkeys(a for a in approvers if a not in request.approvers))
            if request.approvers and added:  # no approver list: anyone may decide it already
                widened = request.approvers + added
                conn.execute(
                    "UPDATE hl_requests SET approvers = ? WHERE id = ?",
                    (json.dumps(list(widened)), request_id),
                )
                request = replace(request, approvers=widened)
            _audit(conn, entry, self._audit_key)
            return request

        return await self._run(escalate)

    async def add_grant(self, grant: Grant) -> None:
        values = grant_row(grant)  # encodes in the caller's task: errors name the value
        values["created_at"] = grant.created_at.timestamp()
        values["expires_at"] = grant.expires_at.timestamp()
        values["revoked_at"] = _seconds(grant.revoked_at)
        columns = ", ".join(values)
        marks = ", ".join(f":{name}" for name in values)

        def add(conn: sqlite3.Connection) -> None:
            conn.execute(f"INSERT INTO hl_grants ({columns}) VALUES ({marks})", values)
            _audit(conn, given_entry(grant), self._audit_key)
            _event(conn, "granted", grant.id)

        await self._run(add)

    async def confirm_grant(self, grant_id: str, by: Principal) -> Grant:
        def confirm(conn: sqlite3.Connection) -> Grant:
            grant = _grant(conn, grant_id)
            after = joined(grant, by)
            if after is not grant:
                conn.execute(
                    "UPDATE hl_grants SET granted_by = :granted_by, users = :users WHERE id = :id",
                    grant_row(after),
                )
                _audit(
                    conn,
                    grant_entry("grant.confirmed", after, by.id, granters=len(after.by)),
                    self._audit_key,
                )
                _event(conn, "granted", grant_id)
            return after

        return await self._run(confirm)

    async def use_grant(
        self, function: str, kwargs: Mapping[str, Any], requested_by: str | None
    ) -> Grant | None:
        def use(conn: sqlite3.Connection) -> Grant | None:
            # BEGIN IMMEDIATE before the read: other processes' uses wait, so none sees a use
            # this one counts, and together they never exceed max_uses.
            now = time.time()
            rows = conn.execute(
                f"SELECT * FROM hl_grants WHERE function = :function AND {_LIVE} ORDER BY created_at, rowid",
                {"function": function, "now": now},
            ).fetchall()
            for row in rows:
                grant = to_grant(row, epoch)
                if grant.covers(kwargs, requested_by, epoch(now)):
                    conn.execute("UPDATE hl_grants SET uses = uses + 1 WHERE id = ?", (grant.id,))
                    return replace(grant, uses=grant.uses + 1)
            return None

        return await self._run(use)

    async def revoke_grant(self, grant_id: str, by: str) -> Grant:
        def revoke(conn: sqlite3.Connection) -> Grant:
            revoked = conn.execute(
                "UPDATE hl_grants SET revoked_by = ?, revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (by, time.time(), grant_id),
            ).rowcount
            grant = _grant(conn, grant_id)
            if revoked:  # the first time only: whoever revoked it first stays
                _audit(conn, grant_entry("grant.revoked", grant, by), self._audit_key)
                _event(conn, "granted", grant_id)
            return grant

        return await self._run(revoke)

    async def grants(self, *, function: str | None = None, active: bool = True) -> list[Grant]:
        def grants(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            return conn.execute(
                "SELECT * FROM hl_grants WHERE (:function IS NULL OR function = :function)"
                + (f" AND {_LIVE}" if active else "")
                + " ORDER BY created_at, rowid",
                {"function": function, "now": time.time()},
            ).fetchall()

        return [to_grant(row, epoch) for row in await self._run(grants)]

    async def watch(self) -> AsyncIterator[StoreEvent]:
        def start(conn: sqlite3.Connection) -> tuple[int, int]:
            return _max_seq(conn), _data_version(conn)

        last, version = await self._run(start)
        while not self._closed:
            with anyio.move_on_after(POLL_INTERVAL):
                await self._closing.wait()
            if self._closed:
                return
            seen = await self._run(_data_version)
            if seen == version:
                continue
            version = seen
            for row in await self._run(functools.partial(_events_after, after=last)):
                last = row["seq"]
                yield StoreEvent(row["kind"], row["request_id"])

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        with anyio.CancelScope(shield=True):
            await self._calls.submit(None)  # (closes the connection after the calls before it)

    # -- durable extras ----------------------------------------------------------------

    async def begin_execution(self, request_id: str, digest: str | None) -> Execution | None:
        def begin(conn: sqlite3.Connection) -> Execution | None:
            earlier = execution_so_far(self._fetch(conn, request_id), digest)
            if earlier is not None:
                return earlier
            conn.execute(
                "UPDATE hl_requests SET exec_state = 'executing' WHERE id = ? AND status = 'approved'",
                (request_id,),
            )
            return None

        return await self._run(begin)

    async def finish_execution(self, request_id: str, outcome: str, result: str | None) -> None:
        def finish(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE hl_requests SET exec_state = 'executed', exec_outcome = ?, result = ? WHERE id = ?",
                (outcome, result, request_id),
            )

        await self._run(finish)

    async def history(
        self, *, request_id: str | None = None, since: datetime | None = None
    ) -> list[AuditEntry]:
        params = {"request_id": request_id, "since": None if since is None else since.timestamp()}

        def history(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            return conn.execute(
                "SELECT * FROM hl_audit WHERE (:request_id IS NULL OR request_id = :request_id)"
                " AND (:since IS NULL OR at >= :since) ORDER BY seq",
                params,
            ).fetchall()

        return [to_entry(row, epoch) for row in await self._run(history)]

    async def audit_chain(self) -> AsyncIterator[ChainEntry]:
        """Every audit entry with its hashes, chain by chain (see ``_chain.ChainSource``).

        Writers take turns on the file, so every entry up to the newest one read first is
        there for good."""

        def newest(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT coalesce(max(seq), 0) FROM hl_audit").fetchone()[0])

        upto = await self._run(newest)
        after: tuple[str, int] | None = None
        while True:
            rows = await self._run(functools.partial(_audit_page, after=after, upto=upto))
            for row in rows:
                fields = loads(row["fields"])
                at = epoch(row["at"])
                yield ChainEntry(
                    row["seq"], row["request_id"], row["event"], at, fields, row["prev"], row["hash"]
                )
            if len(rows) < _PAGE:
                return
            after = (rows[-1]["request_id"], rows[-1]["seq"])

    async def prune(self, older_than: float | timedelta | None = None) -> int:
        horizon = time.time() - (self._retention if older_than is None else retention_seconds(older_than))

        def prune(conn: sqlite3.Connection) -> int:
            conn.execute("DELETE FROM hl_events WHERE at < ?", (horizon,))
            conn.execute("DELETE FROM hl_grants WHERE expires_at <= ?", (horizon,))
            pruned = conn.execute(
                "DELETE FROM hl_requests WHERE status != 'pending' AND decided_at < ?", (horizon,)
            ).rowcount
            conn.execute(
                "DELETE FROM hl_schedule WHERE NOT EXISTS"
                " (SELECT 1 FROM hl_requests WHERE hl_requests.id = hl_schedule.request_id)"
            )
            return pruned

        return await self._run(prune)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``: writers queue up on the file lock, not on retries.
    Every call runs in one (a batch's, ``_call_each``), in a savepoint of its own (``_call``)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _add(conn: sqlite3.Connection, statement: str) -> None:
    """Run a statement of an addition. A column it adds that the file has already (a file whose
    record of additions was lost: SQLite has no ``ADD COLUMN IF NOT EXISTS``) is kept as it is."""
    try:
        conn.execute(statement)
    except sqlite3.OperationalError as exc:
        if not str(exc).startswith("duplicate column name"):
            raise


def _event(conn: sqlite3.Connection, kind: str, request_id: str) -> None:
    conn.execute(
        "INSERT INTO hl_events (kind, request_id, at) VALUES (?, ?, ?)", (kind, request_id, time.time())
    )


def _audit(conn: sqlite3.Connection, entry: AuditEntry, key: bytes | None) -> None:
    """Append ``entry`` to the audit trail, chained to the newest entry of its chain (inside
    the caller's transaction: the chain cannot grow between the read and the write)."""
    request_id, event, fields = audit_row(entry)
    at = entry.at.timestamp()
    newest = conn.execute(
        "SELECT hash FROM hl_audit WHERE request_id = ? AND hash IS NOT NULL ORDER BY seq DESC LIMIT 1",
        (request_id,),
    ).fetchone()
    prev = None if newest is None else newest["hash"]
    conn.execute(
        "INSERT INTO hl_audit (request_id, event, at, fields, prev, hash) VALUES (?, ?, ?, ?, ?, ?)",
        (request_id, event, at, fields, prev, link(key, prev, event, request_id, epoch(at), fields)),
    )


def _audit_page(conn: sqlite3.Connection, *, after: tuple[str, int] | None, upto: int) -> list[sqlite3.Row]:
    """The next ``_PAGE`` audit entries up to ``upto``, chain by chain, after ``(request_id, seq)``."""
    since = "" if after is None else "(request_id, seq) > (?, ?) AND "
    return conn.execute(
        f"SELECT * FROM hl_audit WHERE {since}seq <= ? ORDER BY request_id, seq LIMIT ?",
        (*(after or ()), upto, _PAGE),
    ).fetchall()


def _expire(conn: sqlite3.Connection, request_id: str | None, key: bytes | None) -> None:
    """Mark pending requests past their expiry timed out (one, or all when ``request_id`` is None)."""
    now = time.time()
    rows = conn.execute(
        "SELECT id FROM hl_requests WHERE status = 'pending' AND expires_at <= ?"
        + (" AND id = ?" if request_id is not None else ""),
        (now,) if request_id is None else (now, request_id),
    ).fetchall()
    for row in rows:
        decision = expired_decision(row["id"], epoch(now))
        values: dict[str, Any] = {**decision_row(decision), "decided_at": now}
        assignments = _assignments(values)
        conn.execute(f"UPDATE hl_requests SET {assignments} WHERE id = :id", {**values, "id": row["id"]})
        _audit(conn, decision_entry(decision), key)
        _event(conn, "decided", decision.request_id)


def _pending_where(
    run_id: str | None, kind: Kind | None, age: float | None, id_prefix: str | None
) -> tuple[str, dict[str, Any]]:
    """``list_pending``'s filters (but ``function``) as a ``WHERE`` clause, each term only when
    given: ``:x IS NULL OR column = :x`` would keep SQLite from the indexes."""
    terms, values = ["status = 'pending'"], dict[str, Any]()
    if run_id is not None:
        terms.append("run_id = :run_id")
        values["run_id"] = run_id
    if kind is not None:
        terms.append("kind = :kind")
        values["kind"] = kind
    if age is not None:
        terms.append("created_at <= :made_by")
        values["made_by"] = time.time() - age
    if id_prefix is not None:  # exact and case-sensitive, as LIKE is not
        terms.append("substr(id, 1, length(:id_prefix)) = :id_prefix")
        values["id_prefix"] = id_prefix
    return " AND ".join(terms), values


_BY_FUNCTION = ("function = :function", "tool = :function AND function != :function")
"""A function's requests: by its name, then (the others) by its ``module.qualname``; each
term has its index, which an ``OR`` of the two would not use in page order."""


def _pending_select(
    where: str, values: dict[str, Any], function: str | None, limit: int | None
) -> tuple[str, dict[str, Any]]:
    """The page's query: the oldest ``limit`` (``-1``: every one) of ``where``."""
    order = "ORDER BY created_at, id LIMIT :limit"
    values = {**values, "limit": -1 if limit is None else limit}
    if function is None:
        return f"SELECT * FROM hl_requests WHERE {where} {order}", values
    branches = " UNION ALL ".join(
        f"SELECT * FROM (SELECT * FROM hl_requests WHERE {where} AND {term} {order})" for term in _BY_FUNCTION
    )
    return f"SELECT * FROM ({branches}) {order}", {**values, "function": function}


def _pending_count(where: str, values: dict[str, Any], function: str | None) -> tuple[str, dict[str, Any]]:
    if function is None:
        return f"SELECT count(*) FROM hl_requests WHERE {where}", values
    counts = " + ".join(
        f"(SELECT count(*) FROM hl_requests WHERE {where} AND {term})" for term in _BY_FUNCTION
    )
    return f"SELECT {counts}", {**values, "function": function}


def _grant(conn: sqlite3.Connection, grant_id: str) -> Grant:
    row = conn.execute("SELECT * FROM hl_grants WHERE id = ?", (grant_id,)).fetchone()
    if row is None:
        raise UnknownGrant(grant_id)
    return to_grant(row, epoch)


def _seconds(value: datetime | None) -> float | None:
    """A timestamp column's value: epoch seconds (``NULL`` for ``None``)."""
    return None if value is None else value.timestamp()


def _datetime(value: float | None) -> datetime | None:
    """A timestamp column back as an aware datetime (``None`` for ``NULL``)."""
    return None if value is None else epoch(value)


def _arguments(request: ApprovalRequest) -> dict[str, Any]:
    """The ``kwargs`` and ``digest`` columns of ``request``, as ``request_row`` writes them."""
    row = request_row(request)
    return {"kwargs": row["kwargs"], "digest": row["digest"]}


def _assignments(values: dict[str, Any]) -> str:
    """``SET`` assignments of every column in ``values`` from the parameter of its name."""
    return ", ".join(f"{column} = :{column}" for column in values)


def _events_after(conn: sqlite3.Connection, *, after: int) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT seq, kind, request_id FROM hl_events WHERE seq > ? ORDER BY seq", (after,)
    ).fetchall()


def _max_seq(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(seq), 0) FROM hl_events").fetchone()[0])


def _data_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA data_version").fetchone()[0])
