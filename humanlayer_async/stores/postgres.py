"""PostgresStore: one database for a fleet of processes, decisions announced with NOTIFY.

Requests, the audit trail and an event log live in tables of one schema, created and
migrated by the store (versioned). ``decide`` writes a decision only where none stands,
after reading the request's row ``FOR UPDATE``: across processes the first decision wins.
``vote`` locks the request's row (``FOR UPDATE``) too, so the votes of many processes
count one after another. Every new request and decision appends to the event log, whose
sequence numbers follow commit order (writers take a transaction advisory lock just before
appending), and sends ``NOTIFY`` with ids only (up to ``_NOTIFY_IDS`` a notification, sent
in order: ``watch()`` relies on it); so does every grant given, confirmed or revoked (a
``granted`` event with the grant's id). ``take`` leases a due step with one conditional
``UPDATE``, and ``use_grant`` counts a use with one per candidate grant (re-checking the
uses left, after waiting for the row), so neither holds a lock across anything else and
concurrent uses never exceed a grant's ``max_uses``.

Each audit entry is chained to the newest of its chain (``_chain``). That chain's newest
hash is kept in its request's (or grant's) row, which every writer of the chain locks: the
transactions that change a request read it with the statement that locks the row, so the
hash costs no extra round trip. ``record`` locks nothing across round trips: it appends
by one statement on the condition that the chain's newest hash is still the one it read
(or was last told, ``_Heads``), and reads again when it moved.

Batches: concurrent calls of one kind share a transaction or a statement (``_batch``):
creations (rows, audit entries and one announcement), decisions without edits, reads, audit
entries, and the claims and records of runs. A batch the database refuses as a whole is
written again call by call. Rows a transaction locks, it locks in the order of their ids,
so concurrent batches never wait for each other in a circle. Each process holds at most
``max_size`` pooled connections (one batch of each kind is in flight at a time) and one
``LISTEN`` connection; a pooled connection goes back to the pool without asyncpg's reset
query, since the store sets no session state.

The schema is named by ``schema=`` or by the DSN's ``?schema=`` parameter (the form the
``humanlayer-async`` command takes), which the store removes before asyncpg sees the DSN,
as it does ``?statement_cache_size=``. With ``create=False`` the store only opens a schema
that holds its tables, never creates one.

Each store keeps one dedicated connection that ``LISTEN``s (to ``listen_dsn``, which may
bypass a pooler), opened before its first write. When that connection drops (a server
restart, ``pg_terminate_backend``) the store reconnects with backoff, and every
``watch()`` iterator then yields a ``resync`` event and catches up on the events it
missed by sequence number, so a decision made meanwhile still wakes its waiter.

Every statement runs inside a transaction (its own, for a lone statement) and names its
tables with the schema, and the store sets no session state (no ``SET``, no session
advisory lock, no ``search_path``), so it works through a pooler in transaction mode
(PgBouncer, RDS Proxy) once asyncpg's prepared-statement cache is off
(``statement_cache_size=0``). Expiry uses the database's clock. asyncpg is imported on
first use; its errors become ``StoreError``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar
from urllib.parse import unquote_plus, urlsplit, urlunsplit

import anyio

from .._audit import AuditEntry, logger
from .._codec import dumps, loads
from .._exceptions import ArgumentsChanged, ConfigurationError, StoreError, UnknownGrant, UnknownRequest
from .._models import ApprovalRequest, Decision, Execution, Grant, Kind, Principal, Status, Vote
from .._retry import Backoff
from ._batch import Batcher
from ._chain import ChainEntry, check_key, link
from ._rows import (
    DEFAULT_RETENTION,
    SCHEMA_VERSION,
    audit_row,
    decision_row,
    edited,
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
from .url import POSTGRES_FORM, redacted

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

    Connection = asyncpg.Connection[Any] | PoolConnectionProxy[Any]

__all__ = ["PostgresStore"]

T = TypeVar("T")

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,47}")
_DEFAULT_SCHEMA = "humanlayer"
_ASYNCPG_STATEMENT_CACHE = 100  # asyncpg's own default
CATCH_UP_INTERVAL = 60.0
"""Seconds without a notification after which ``watch()`` reads the event log anyway (one
query by sequence): a notification lost without a reconnect (a half-open connection, a
pooler in between) delays a wake-up by at most this long, and never loses it."""
_RECONNECT_FIRST, _RECONNECT_CAP = 0.05, 5.0  # seconds between attempts to LISTEN again
_PAGE = 1000
_HINTS = 10_000
"""Audit chain heads kept as hints (``_Heads``): about 1.5 MB at most."""
_NOTIFY_IDS = 200
"""Request ids a notification carries at most: 200 ids of 32 characters stay well under
PostgreSQL's 8,000-byte payload limit."""
"""Audit entries read at a time by ``audit_chain``."""


def _migrations(schema: str) -> dict[int, tuple[str, ...]]:
    """Version → the statements that bring the previous version to it."""
    return {
        1: (
            f"""CREATE TABLE {schema}.requests (
                id text PRIMARY KEY,
                key text UNIQUE,
                run_id text,
                kind text NOT NULL,
                function text NOT NULL,
                kwargs jsonb NOT NULL,
                context jsonb NOT NULL,
                approvers jsonb NOT NULL,
                message text,
                doc text,
                digest text,
                created_at timestamptz NOT NULL,
                expires_at timestamptz NOT NULL,
                status text NOT NULL DEFAULT 'pending',
                approved boolean,
                decided_by text,
                decided_via text,
                comment text,
                answer text,
                decided_at timestamptz,
                exec_state text,
                exec_outcome text,
                result text
            )""",
            f"CREATE INDEX requests_pending ON {schema}.requests (created_at) WHERE status = 'pending'",
            f"""CREATE TABLE {schema}.audit (
                seq bigserial PRIMARY KEY,
                request_id text NOT NULL,
                event text NOT NULL,
                at timestamptz NOT NULL,
                fields jsonb NOT NULL
            )""",
            f"CREATE INDEX audit_request ON {schema}.audit (request_id, seq)",
            f"""CREATE TABLE {schema}.events (
                seq bigserial PRIMARY KEY,
                kind text NOT NULL,
                request_id text NOT NULL,
                at timestamptz NOT NULL DEFAULT now()
            )""",
        ),
    }


def _additions(schema: str) -> dict[str, tuple[str, ...]]:
    """Name → the statements of an additive change (see ``SCHEMA_VERSION``), in order."""
    return {
        "claims": (
            f"CREATE TABLE {schema}.claims (key text PRIMARY KEY, expires_at timestamptz NOT NULL)",
            f"CREATE INDEX claims_expiry ON {schema}.claims (expires_at)",
        ),
        "principals": (
            f"ALTER TABLE {schema}.requests ADD COLUMN requested_by text",
            f"ALTER TABLE {schema}.requests ADD COLUMN decided_user text",
        ),
        "quorum": (
            f"ALTER TABLE {schema}.requests ADD COLUMN approvals integer NOT NULL DEFAULT 1",
            f"ALTER TABLE {schema}.requests ADD COLUMN votes text",  # JSON (votes_text); NULL: none yet
        ),
        "edits": (
            f"ALTER TABLE {schema}.requests ADD COLUMN editable text",  # JSON Schema by argument; NULL: none
            f"ALTER TABLE {schema}.requests ADD COLUMN decided_edits text",  # JSON; NULL: approved as asked
        ),
        "grants": (
            # where_ is JSON as text, not jsonb: jsonb renormalises numbers, and grants compare JSON text.
            f"""CREATE TABLE {schema}.grants (
                id text PRIMARY KEY,
                function text NOT NULL,
                where_ text,
                granted_by text NOT NULL,
                users text NOT NULL,
                approvers text NOT NULL,
                approvals integer NOT NULL,
                created_at timestamptz NOT NULL,
                expires_at timestamptz NOT NULL,
                max_uses integer,
                uses integer NOT NULL DEFAULT 0,
                revoked_by text,
                revoked_at timestamptz
            )""",
            f"CREATE INDEX grants_function ON {schema}.grants (function)",
        ),
        "schedule": (
            f"""CREATE TABLE {schema}.schedule (
                request_id text,
                name text,
                due_at timestamptz NULL,
                number integer NOT NULL DEFAULT 0,
                lease_until timestamptz NULL,
                PRIMARY KEY (request_id, name)
            )""",
        ),
        "grant_columns": (
            f"ALTER TABLE {schema}.requests ADD COLUMN tool text",  # the gated function's module.qualname
            f"ALTER TABLE {schema}.requests ADD COLUMN decided_grant text",  # the grant that approved it
        ),
        "audit_chain": (  # NULL in prev and hash: an entry written before the chains (_chain)
            f"ALTER TABLE {schema}.audit ADD COLUMN IF NOT EXISTS prev text",  # its chain's hash before it
            f"ALTER TABLE {schema}.audit ADD COLUMN IF NOT EXISTS hash text",  # over prev and the entry
            # The newest hash of the row's chain, where every writer of the chain holds the lock.
            f"ALTER TABLE {schema}.requests ADD COLUMN IF NOT EXISTS audit_head text",
            f"ALTER TABLE {schema}.grants ADD COLUMN IF NOT EXISTS audit_head text",
        ),
        # Pending requests by page (list_pending, count_pending): partial indexes, so a decided
        # request leaves them and they stay as small as what is pending; each costs every insert.
        "pending_pages": (
            # Every page and count, in page order (created_at, id): replaces (created_at) alone.
            f"CREATE INDEX IF NOT EXISTS requests_page ON {schema}.requests (created_at, id)"
            " WHERE status = 'pending'",
            f"DROP INDEX IF EXISTS {schema}.requests_pending",
            # The expiry sweep every list and count runs first: reads only what has expired.
            f"CREATE INDEX IF NOT EXISTS requests_expiry ON {schema}.requests (expires_at)"
            " WHERE status = 'pending'",
            # function= (a tool's requests, approve --all --function), by name and by qualname.
            f"CREATE INDEX IF NOT EXISTS requests_function ON {schema}.requests (function, created_at, id)"
            " WHERE status = 'pending'",
            f"CREATE INDEX IF NOT EXISTS requests_tool ON {schema}.requests (tool, created_at, id)"
            " WHERE status = 'pending' AND tool IS NOT NULL",
            # run_id= (a run's few requests among many).
            f"CREATE INDEX IF NOT EXISTS requests_run ON {schema}.requests (run_id, created_at, id)"
            " WHERE status = 'pending' AND run_id IS NOT NULL",
        ),
    }


def _pending_where(
    run_id: str | None, kind: Kind | None, age: float | None, id_prefix: str | None
) -> tuple[str, list[Any]]:
    """``list_pending``'s filters (but ``function``) as a ``WHERE`` clause and its arguments
    ($1...), each term only when given: a generic plan of ``$1 IS NULL OR column = $1`` would
    use no index. The age is by the database's clock, as expiry is."""
    terms, args = ["status = 'pending'"], []
    for term, value in (
        ("run_id = ${}", run_id),
        ("kind = ${}", kind),
        ("created_at <= now() - make_interval(secs => ${})", age),
        ("starts_with(id, ${})", id_prefix),  # exact: no LIKE wildcards to escape
    ):
        if value is not None:
            args.append(value)
            terms.append(term.format(len(args)))
    return " AND ".join(terms), args


_BY_FUNCTION = ("function = ${0}", "tool = ${0} AND function <> ${0}")
"""A function's requests: by its name, then (the others) by its ``module.qualname``; each
branch reads its own index in page order, which an ``OR`` of the two would not."""

_REQUEST_COLUMNS = (
    *("id", "key", "run_id", "kind", "function", "kwargs", "context", "approvers", "message", "doc"),
    *("digest", "requested_by", "approvals", "editable", "tool"),
)
"""The columns of ``request_row``, in the order a batch of new requests passes them."""
_CREATE_COLUMNS = ", ".join(_REQUEST_COLUMNS)
_CREATE_TYPES = (
    *("int" if name == "approvals" else "text" for name in _REQUEST_COLUMNS),
    *("float8", "timestamptz", "text", "text"),  # the lifetime, and the audit entry's at, fields and hash
)
_CREATE_ARRAYS = ", ".join(f"${index}::{kind}[]" for index, kind in enumerate(_CREATE_TYPES, start=1))
_CREATE_VALUES = ", ".join(
    f"{name}::jsonb" if name in ("kwargs", "context", "approvers") else name for name in _REQUEST_COLUMNS
)

_DECISION_TYPES = {
    **dict.fromkeys(("status", "decided_by", "decided_via", "comment", "answer", "decided_user"), "text"),
    "approved": "bool",
    "decided_edits": "text",
    "decided_grant": "text",
    "decided_at": "timestamptz",
}
"""The columns of ``decision_row`` and ``decided_at``, as a batch of decisions passes them (after the ids)."""
_DECIDE_COLUMNS = ", ".join(_DECISION_TYPES)
_DECIDE_ARRAYS = ", ".join(f"${i}::{kind}[]" for i, kind in enumerate(_DECISION_TYPES.values(), start=2))
_DECIDE_ASSIGNMENTS = ", ".join(f"{name} = v.{name}" for name in _DECISION_TYPES)
_TIMELY = (Status.APPROVED, Status.DENIED)
"""What counts only before a request's expiry: timeouts and cancellations count after it too."""

_LIVE = "revoked_at IS NULL AND expires_at > now() AND (max_uses IS NULL OR uses < max_uses)"
"""``Grant.live`` in SQL, by the database's clock: what ``grants()`` lists and a use re-checks."""


def _asyncpg() -> Any:
    try:
        import asyncpg
    except ImportError as exc:
        raise ConfigurationError(
            "PostgresStore needs asyncpg: pip install 'humanlayer-async[postgres]'"
        ) from exc
    return asyncpg


@functools.cache
def _connection_class() -> type[asyncpg.Connection[Any]]:
    """Pooled connections that skip asyncpg's reset query when they go back to the pool (one
    round trip per use): the store sets no session state (no ``SET``, ``LISTEN``, session
    advisory lock or cursor) for it to undo."""

    class PooledConnection(_asyncpg().Connection):  # type: ignore[misc]
        def get_reset_query(self) -> str:
            return ""

    return PooledConnection


class _DSN(NamedTuple):
    """A DSN as asyncpg gets it, and the store's own parameters taken off it."""

    dsn: str
    schema: str | None
    statement_cache_size: int | None


def _split_dsn(dsn: str, what: str) -> _DSN:
    """``dsn`` without the store's parameters (every other one kept as written), and those.

    ``what`` names the DSN in messages (``"the DSN"``, ``"listen_dsn"``), which never show
    its password.
    """
    try:
        parts = urlsplit(dsn)
        _ = parts.port  # a port that is not a number raises ValueError
    except ValueError:
        raise ConfigurationError(f"{what} is not a URL: a PostgreSQL DSN is {POSTGRES_FORM}") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigurationError(f"{what} {redacted(dsn)!r} is not a PostgreSQL DSN: use {POSTGRES_FORM}")
    kept: list[str] = []
    own: dict[str, list[str]] = {"schema": [], "statement_cache_size": []}
    for parameter in filter(None, parts.query.split("&")):
        name, _, value = parameter.partition("=")
        if unquote_plus(name) in own:
            own[unquote_plus(name)].append(unquote_plus(value))
        else:
            kept.append(parameter)
    for name, values in own.items():
        if len(values) > 1:
            raise ConfigurationError(
                f"{what} names {name}= {len(values)} times: a PostgreSQL DSN is {POSTGRES_FORM}"
            )
    cache = next(iter(own["statement_cache_size"]), None)
    if cache is not None and not re.fullmatch(r"[0-9]{1,9}", cache):
        raise ConfigurationError(
            f"{what}'s statement_cache_size must be a whole number (0 turns the cache off), not {cache!r}"
        )
    schema = next(iter(own["schema"]), None)
    return _DSN(
        urlunsplit(parts._replace(query="&".join(kept))), schema, None if cache is None else int(cache)
    )


def _first(*values: int | None) -> int:
    """The first of ``values`` that is not ``None`` (the last one never is)."""
    return next(value for value in values if value is not None)


def _check_schema(schema: str | None, what: str) -> None:
    if schema is not None and not _IDENTIFIER.fullmatch(schema):
        raise ConfigurationError(
            f"{what} must be a lowercase SQL identifier (letters, digits, _), not {schema!r}"
        )


def _lock_id(text: str) -> int:
    """A signed 64-bit advisory lock key for ``text``."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


def _same(value: datetime) -> datetime:
    return value


def _as_jsonb(value: Any) -> Any:
    """JSON data as ``jsonb`` gives it back: a float written with an exponent (``1e+16``) comes
    back an integer (as its digits say), ``-0.0`` as ``0.0``."""
    if isinstance(value, float):
        text = repr(value)
        return int(Decimal(text)) if "e+" in text else value + 0.0
    if isinstance(value, dict):
        return {name: _as_jsonb(item) for name, item in value.items()}
    if isinstance(value, list):
        return [_as_jsonb(item) for item in value]
    return value


def _jsonb_text(fields: str) -> str:
    """Canonical JSON ``fields`` as they read back from the ``jsonb`` column: what the hash covers."""
    if "e+" not in fields and "-0.0" not in fields:  # (no float jsonb rewrites)
        return fields
    return dumps(_as_jsonb(loads(fields)), "audit fields")


def _arguments(request: ApprovalRequest) -> dict[str, Any]:
    """The ``kwargs`` and ``digest`` columns of ``request``, as ``request_row`` writes them.

    Arguments read back from ``jsonb`` digest as they did when written, but for floats
    ``jsonb`` does not return as written (``1e+16`` comes back an integer, ``-0.0`` as ``0.0``):
    an edit to a request holding one gives a digest a run's replay does not match.
    """
    row = request_row(request)
    return {"kwargs": row["kwargs"], "digest": row["digest"]}


class _Linked(NamedTuple):
    """An audit entry as a row of the audit table, chained: ``hash`` follows ``prev``."""

    request_id: str
    event: str
    at: datetime
    fields: str
    prev: str | None
    hash: str


class _Heads:
    """The newest hashes of some requests' audit chains, as last seen here: where ``record``
    tries to append first (a hint: a chain that moved meanwhile is read again), saving it a
    round trip for the entries of a call that runs (read when its decision was, then each
    one's own). At most ``_HINTS``: the oldest go first."""

    def __init__(self) -> None:
        self._newest: dict[str, str | None] = {}

    def hint(self, request_id: str, head: str | None) -> None:
        self._newest.pop(request_id, None)
        self._newest[request_id] = head
        if len(self._newest) > _HINTS:
            del self._newest[next(iter(self._newest))]

    def take(self, ids: Collection[str]) -> dict[str, str | None]:
        """The hints for ``ids`` (those there are), forgotten here."""
        return {request_id: self._newest.pop(request_id) for request_id in ids if request_id in self._newest}


class _Subscriber:
    """One ``watch()`` iterator: the notifications it has not yielded yet."""

    def __init__(self) -> None:
        self.items: deque[tuple[int, str, list[str]]] = deque()
        self.wake = anyio.Event()


class PostgresStore:
    """A durable store on PostgreSQL, shared by every process of a fleet.

    Args:
        dsn: A libpq connection URI (``postgresql://user:password@host:5432/db``), with
            ``?schema=name`` if you like. It is never logged or shown in reprs; messages
            show it without its password.
        schema: The schema holding the store's tables. Default: the DSN's ``schema``
            parameter, else ``humanlayer``; naming two different ones is a
            ``ConfigurationError``. Give each deployment (or test run) its own to keep them apart.
        create: Create the schema and its tables when missing (the default). With ``False``
            the store only opens a schema that already holds them, and its first use
            raises ``ConfigurationError`` ("no store at ...") otherwise, creating nothing:
            the operator commands of ``humanlayer-async`` open stores so.
        retention: How long ``prune()`` keeps decided requests. Default: 30 days.
        min_size: The connection pool's lower bound (plus one ``LISTEN`` connection).
        max_size: The connection pool's upper bound (plus one ``LISTEN`` connection).
        connect_timeout: Seconds to wait for a connection.
        listen_dsn: Where the one ``LISTEN`` connection goes, validated (and kept out of
            logs) like ``dsn``. Default: ``dsn``. A pooler in transaction mode (PgBouncer,
            RDS Proxy) never delivers notifications: point ``dsn`` at the pooler and
            ``listen_dsn`` at the server itself (or a session-mode pool). A ``schema``
            parameter in it must name the store's schema.
        statement_cache_size: asyncpg's prepared-statement cache, per connection. Default:
            the DSN's ``statement_cache_size`` parameter, else asyncpg's (100). ``0`` turns
            it off, which a pooler in transaction mode needs (PgBouncer before 1.21
            without ``max_prepared_statements``, RDS Proxy).
        audit_key: A secret (16 bytes or more) that makes each audit entry's hash an
            HMAC-SHA256, so that someone who can write to the database cannot rewrite the
            trail and its hashes unnoticed. Keep it outside the database; every process
            writing to the store, and ``humanlayer-async audit verify``, needs the same one.
            Default: none (SHA-256, which catches accidents and naive edits).
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        create: bool = True,
        retention: float | timedelta = DEFAULT_RETENTION,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
        listen_dsn: str | None = None,
        statement_cache_size: int | None = None,
        audit_key: str | bytes | None = None,
    ) -> None:
        _asyncpg()
        self._audit_key = check_key(audit_key)
        main = _split_dsn(dsn, "the DSN")
        listen = main if listen_dsn is None else _split_dsn(listen_dsn, "listen_dsn")
        _check_schema(main.schema, f"the DSN's schema (a PostgreSQL DSN is {POSTGRES_FORM})")
        _check_schema(schema, "schema")
        if schema is not None and main.schema is not None and schema != main.schema:
            raise ConfigurationError(
                f"two schemas named: {main.schema!r} in the DSN and {schema!r} as schema="
            )
        schema = schema or main.schema or _DEFAULT_SCHEMA
        if listen.schema is not None and listen.schema != schema:
            raise ConfigurationError(
                f"listen_dsn names schema {listen.schema!r}, the store's is {schema!r}"
                " (leave it out: the store's schema applies)"
            )
        if statement_cache_size is not None and (
            type(statement_cache_size) is not int or statement_cache_size < 0
        ):
            raise ConfigurationError(
                f"statement_cache_size must be a whole number >= 0, not {statement_cache_size!r}"
            )
        if None not in (statement_cache_size, main.statement_cache_size) and (
            statement_cache_size != main.statement_cache_size
        ):
            raise ConfigurationError(
                f"two statement cache sizes named: {main.statement_cache_size} in the DSN"
                f" and {statement_cache_size} as statement_cache_size="
            )
        self._dsn, self._listen_dsn = main.dsn, listen.dsn
        self.schema = schema
        self._create = create
        shown = urlsplit(redacted(self._dsn))  # for messages: no password, and the schema
        self._where = urlunsplit(
            shown._replace(query="&".join(filter(None, [shown.query, f"schema={schema}"])))
        )
        self._retention = retention_seconds(retention)
        self._listen_where = redacted(self._listen_dsn)  # for logs: no password
        cache = _first(statement_cache_size, main.statement_cache_size, _ASYNCPG_STATEMENT_CACHE)
        self._pool_args: dict[str, Any] = {
            "min_size": min_size,
            "max_size": max_size,
            "timeout": connect_timeout,
            "statement_cache_size": cache,
            "server_settings": {"application_name": self.application_name},
        }
        self._listen_args: dict[str, Any] = {
            "timeout": connect_timeout,
            "statement_cache_size": _first(listen.statement_cache_size, cache),
            "server_settings": {"application_name": self.application_name},
        }
        self._channel = f"{schema}_events"
        self._event_lock = _lock_id(f"humanlayer_async:{schema}:events")
        self._pool: asyncpg.Pool[Any] | None = None
        self._listen_conn: asyncpg.Connection[Any] | None = None
        self._lost = False
        self._listens = 0  # how many times the LISTEN connection was opened; watch() compares
        self._baseline = 0
        self._subscribers: set[_Subscriber] = set()
        self._open_lock = anyio.Lock()
        self._listen_lock = anyio.Lock()
        self._closing = anyio.Event()
        self._closed = False
        # Concurrent writes of one kind share a transaction (_batch): see "Batches" in the docstring.
        self._creating = Batcher(self._create_many)
        self._deciding = Batcher(self._decide_many)
        self._getting = Batcher(self._get_many)
        self._recording = Batcher(self._record_many)
        self._beginning = Batcher(self._begin_many)
        self._finishing = Batcher(self._finish_many)
        self._heads = _Heads()

    def __repr__(self) -> str:
        return f"PostgresStore(schema={self.schema!r})"

    @property
    def application_name(self) -> str:
        """What the store's connections show as ``application_name`` in ``pg_stat_activity``."""
        return f"humanlayer-async/{self.schema}"

    # -- connections -------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        asyncpg = _asyncpg()
        try:
            yield
        except (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
            OSError,
            TimeoutError,
        ) as exc:
            raise StoreError(f"PostgreSQL ({self.schema}): {type(exc).__name__}: {exc}") from exc

    async def _ready(self) -> asyncpg.Pool[Any]:
        if self._pool is not None:
            return self._pool
        if self._closed:
            raise StoreError(f"{self!r} is closed")
        async with self._open_lock:
            if self._pool is None:
                with self._errors():
                    pool = await _asyncpg().create_pool(
                        self._dsn, connection_class=_connection_class(), **self._pool_args
                    )
                    try:
                        async with pool.acquire() as conn:
                            await self._migrate(conn)
                        await self._listen()
                        async with pool.acquire() as conn, conn.transaction():
                            self._baseline = await conn.fetchval(
                                f"SELECT coalesce(max(seq), 0) FROM {self.schema}.events"
                            )
                    except BaseException:
                        with anyio.CancelScope(shield=True):
                            await pool.close()
                        raise
                self._pool = pool
        return self._pool

    async def _migrate(self, conn: Connection) -> None:
        schema = self.schema
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_id(f"humanlayer_async:{schema}"))
            if self._create:
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
                await conn.execute(f"CREATE TABLE IF NOT EXISTS {schema}.meta (version integer NOT NULL)")
            elif await conn.fetchval("SELECT to_regclass($1)", f"{schema}.meta") is None:
                raise ConfigurationError(
                    f"no store at {self._where}: nothing was created (check the DSN and the schema)"
                )
            version = await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {schema}.meta")
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"schema {schema!r} has version {version}, newer than this SDK's "
                    f"{SCHEMA_VERSION}: upgrade humanlayer-async"
                )
            migrations = _migrations(schema)
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in migrations[target]:
                    await conn.execute(statement)
                await conn.execute(f"DELETE FROM {schema}.meta")
                await conn.execute(f"INSERT INTO {schema}.meta (version) VALUES ($1)", target)
                logger.info("store.migrated", store=repr(self), version=target)
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {schema}.additions (name text PRIMARY KEY)")
            done = {row["name"] for row in await conn.fetch(f"SELECT name FROM {schema}.additions")}
            for name, statements in _additions(schema).items():
                if name not in done:
                    for statement in statements:
                        await conn.execute(statement)
                    await conn.execute(f"INSERT INTO {schema}.additions (name) VALUES ($1)", name)
                    logger.info("store.migrated", store=repr(self), addition=name)

    async def _listen(self) -> None:
        """Open the dedicated connection and ``LISTEN`` on it."""
        conn = await _asyncpg().connect(self._listen_dsn, **self._listen_args)
        try:
            await conn.add_listener(self._channel, self._notified)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.close()
            raise
        conn.add_termination_listener(self._terminated)
        self._listen_conn = conn
        self._lost = False
        self._listens += 1

    def _notified(self, conn: object, pid: int, channel: str, payload: object) -> None:
        seq, kind, ids = str(payload).split(":", 2)
        item = (int(seq), kind, ids.split(" "))
        for subscriber in self._subscribers:
            subscriber.items.append(item)
            subscriber.wake.set()

    def _terminated(self, conn: object) -> None:
        if conn is not self._listen_conn or self._closed:
            return
        logger.warning("store.listen_lost", store=repr(self), at=self._listen_where)
        self._lost = True
        for subscriber in self._subscribers:
            subscriber.wake.set()

    async def _reconnect(self) -> None:
        """Reopen the ``LISTEN`` connection, with backoff, until it works or the store closes."""
        async with self._listen_lock:
            backoff = Backoff(_RECONNECT_FIRST, _RECONNECT_CAP)
            while self._lost and not self._closed:
                old, self._listen_conn = self._listen_conn, None
                if old is not None:
                    old.terminate()
                try:
                    with self._errors():
                        await self._listen()
                except StoreError as exc:
                    delay = backoff.next()
                    assert delay is not None  # no bound on retries: until it works or the store closes
                    logger.warning(
                        "store.reconnect_failed",
                        store=repr(self),
                        at=self._listen_where,
                        error=str(exc),
                        retry_in=round(delay, 3),
                    )
                    with anyio.move_on_after(delay):
                        await self._closing.wait()
                else:
                    logger.info("store.listen_restored", store=repr(self), at=self._listen_where)

    async def _transact(self, func: Callable[[Connection], Awaitable[T]], *, atomic: bool = True) -> T:
        """Run ``func`` in a transaction; once more on fresh connections if the first was dropped.

        ``atomic=False`` runs it without ``BEGIN`` and ``COMMIT`` (two round trips fewer): for
        a ``func`` of one statement, which PostgreSQL runs as a transaction of its own.

        A pooled connection whose backend the server ended (a restart, ``pg_terminate_backend``)
        while it sat idle may look open: it has read the server's goodbye but not yet the
        end of the stream. asyncpg then refuses the next query with ``InternalClientError``
        ("another operation is in progress") rather than ``ConnectionDoesNotExistError``.
        Its idle siblings most likely went with it, so the retry replaces them all.
        """
        asyncpg = _asyncpg()
        pool = await self._ready()
        with self._errors():
            for attempt in range(2):
                try:
                    async with pool.acquire() as conn:
                        if not atomic:
                            return await func(conn)
                        async with conn.transaction():
                            return await func(conn)
                except (
                    asyncpg.ConnectionDoesNotExistError,
                    asyncpg.InterfaceError,
                    asyncpg.InternalClientError,
                ):
                    if attempt:
                        raise
                    logger.warning("store.connection_lost", store=repr(self), retrying=True)
                    await pool.expire_connections()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _announce(self, conn: Connection, kind: str, *ids: str) -> None:
        """Append to the event log in commit order and ``NOTIFY``: ``"{seq}:{kind}:{ids}"``, the
        ids separated by spaces (at most ``_NOTIFY_IDS`` a notification) and ``seq`` the last
        of theirs."""
        await conn.execute("SELECT pg_advisory_xact_lock($1)", self._event_lock)
        await conn.execute(
            f"WITH logged AS (INSERT INTO {self.schema}.events (kind, request_id)"
            " SELECT $1, id FROM unnest($2::text[]) WITH ORDINALITY AS u(id, n) ORDER BY n"
            " RETURNING seq, request_id),"
            " numbered AS (SELECT seq, request_id, (row_number() OVER (ORDER BY seq) - 1) / $4 AS part"
            " FROM logged), parts AS (SELECT max(seq) AS seq, string_agg(request_id, ' ' ORDER BY seq) AS ids"
            " FROM numbered GROUP BY part ORDER BY part)"  # sent in this order: watch() relies on it
            " SELECT pg_notify($3, seq || ':' || $1 || ':' || ids) FROM parts",
            kind,
            ids,
            self._channel,
            _NOTIFY_IDS,
        )

    def _linked(self, entry: AuditEntry, head: str | None) -> _Linked:
        """``entry`` as the audit table keeps it, chained after ``head`` (its chain's newest hash)."""
        request_id, event, fields = audit_row(entry)
        digest = link(self._audit_key, head, event, request_id, entry.at, _jsonb_text(fields))
        return _Linked(request_id, event, entry.at, fields, head, digest)

    async def _insert_audit(
        self, conn: Connection, entry: AuditEntry, head: str | None, table: str | None = "requests"
    ) -> str:
        """Append ``entry`` to its chain after ``head``, the chain's newest hash, which the caller
        read from the row of ``table`` it holds locked (``None`` for ``table``: no row keeps the
        chain's head, see ``_chain_head``); the row then keeps the entry's hash, returned."""
        linked = self._linked(entry, head)
        statement = (
            f"INSERT INTO {self.schema}.audit (request_id, event, at, fields, prev, hash)"
            " VALUES ($1, $2, $3, $4, $5, $6)"
        )
        if table is not None:
            statement = (
                f"WITH entry AS ({statement}) UPDATE {self.schema}.{table} SET audit_head = $6 WHERE id = $1"
            )
        await conn.execute(statement, *linked)
        return linked.hash

    async def _append_audit(self, conn: Connection, entries: Sequence[_Linked]) -> None:
        """Append ``entries``, chained (each ``prev`` read from the row of its request, which the
        caller holds locked, or the entry before it of the same request), and keep the newest
        hash of each request's chain as its ``audit_head``."""
        newest = {entry.request_id: entry.hash for entry in entries}
        await conn.execute(
            f"WITH logged AS (INSERT INTO {self.schema}.audit (request_id, event, at, fields, prev, hash)"
            " SELECT request_id, event, at, fields::jsonb, prev, hash FROM unnest($1::text[], $2::text[],"
            " $3::timestamptz[], $4::text[], $5::text[], $6::text[]) WITH ORDINALITY"
            " AS t(request_id, event, at, fields, prev, hash, n) ORDER BY n)"  # (seq in chain order)
            f" UPDATE {self.schema}.requests r SET audit_head = v.hash"
            " FROM unnest($7::text[], $8::text[]) AS v(id, hash) WHERE r.id = v.id",
            *map(list, zip(*entries, strict=True)),
            list(newest),
            list(newest.values()),
        )

    async def _chain_head(self, conn: Connection, chain: str) -> tuple[str | None, str | None]:
        """Lock the row that keeps ``chain``'s newest hash (its request's, else its grant's) and
        read it: ``(hash, table)``. A chain without one (its request pruned) is locked by an
        advisory lock of its own, and its newest hash read from the trail: ``(hash, None)``."""
        for table in ("requests", "grants"):
            row = await conn.fetchrow(
                f"SELECT audit_head FROM {self.schema}.{table} WHERE id = $1 FOR UPDATE", chain
            )
            if row is not None:
                return row["audit_head"], table
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1)", _lock_id(f"humanlayer_async:{self.schema}:audit:{chain}")
        )
        newest: str | None = await conn.fetchval(
            f"SELECT hash FROM {self.schema}.audit WHERE request_id = $1 AND hash IS NOT NULL"
            " ORDER BY seq DESC LIMIT 1",
            chain,
        )
        return newest, None

    async def _expire(self, conn: Connection, ids: Sequence[str] | None) -> None:
        """Mark pending requests past their expiry (by the database's clock) timed out: those
        of ``ids``, or (``None``) every one."""
        rows = await conn.fetch(
            f"UPDATE {self.schema}.requests SET status = 'timed_out', approved = false, decided_by = NULL,"
            " decided_user = NULL, decided_via = 'timeout', comment = NULL, decided_at = now()"
            " WHERE status = 'pending' AND expires_at <= now() AND ($1::text[] IS NULL OR id = ANY($1))"
            " RETURNING id, decided_at, audit_head",
            ids,
        )
        if rows:
            decisions = [expired_decision(row["id"], row["decided_at"]) for row in rows]
            heads = [row["audit_head"] for row in rows]
            entries = [self._linked(decision_entry(d), h) for d, h in zip(decisions, heads, strict=True)]
            await self._append_audit(conn, entries)
            await self._announce(conn, "decided", *(row["id"] for row in rows))

    async def _fetch(self, conn: Connection, request_id: str) -> ApprovalRequest:
        await self._expire(conn, [request_id])
        row = await conn.fetchrow(f"SELECT * FROM {self.schema}.requests WHERE id = $1", request_id)
        if row is None:
            raise UnknownRequest(request_id)
        return to_request(row, _same)

    # -- the Store protocol ------------------------------------------------------------

    async def open(self) -> None:
        await self._ready()

    async def create(self, request: ApprovalRequest) -> None:
        await self.create_or_attach(request)

    async def create_or_attach(self, request: ApprovalRequest) -> ApprovalRequest:
        request_row(request)  # encodes first, here: errors name the argument, and fail this call alone
        return await self._creating.submit(request)

    async def _create_many(
        self, requests: Sequence[ApprovalRequest]
    ) -> list[ApprovalRequest | BaseException]:
        """Store ``requests`` in one transaction, with their audit entries and one announcement.

        A request whose ``key`` another one holds already (stored before, or earlier in this
        batch) is not stored: it attaches to that one, in a transaction of its own after.
        """
        rows = [request_row(request) for request in requests]
        entries = [self._linked(requested_entry(request), None) for request in requests]  # new chains
        assert rows[0].keys() == set(_REQUEST_COLUMNS), "request_row and _REQUEST_COLUMNS differ"
        columns = [[row[name] for row in rows] for name in _REQUEST_COLUMNS]
        lifetimes = [(r.expires_at - r.created_at).total_seconds() for r in requests]
        schema = self.schema

        async def create(conn: Connection) -> set[str]:
            created = await conn.fetch(
                f"WITH input AS (SELECT * FROM unnest({_CREATE_ARRAYS}) AS t({_CREATE_COLUMNS},"
                " lifetime, at, fields, hash)),"
                f" created AS (INSERT INTO {schema}.requests"
                f" ({_CREATE_COLUMNS}, created_at, expires_at, audit_head)"
                f" SELECT {_CREATE_VALUES}, now(), now() + make_interval(secs => lifetime), hash FROM input"
                " ON CONFLICT (key) DO NOTHING RETURNING id),"
                f" logged AS (INSERT INTO {schema}.audit (request_id, event, at, fields, prev, hash)"
                " SELECT id, 'approval.requested', at, fields::jsonb, NULL, hash"
                " FROM input JOIN created USING (id))"
                " SELECT id FROM created",
                *columns,
                lifetimes,
                [entry.at for entry in entries],
                [entry.fields for entry in entries],
                [entry.hash for entry in entries],
            )
            ids = [row["id"] for row in created]
            if ids:
                await self._announce(conn, "requested", *ids)
            return set(ids)

        created = await self._transact(create)
        answers: list[ApprovalRequest | BaseException] = []
        for request in requests:  # (committed: from here on an error is one caller's)
            try:
                answers.append(request if request.id in created else await self._attach_key(request))
            except Exception as exc:
                answers.append(exc)
        return answers

    async def _attach_key(self, request: ApprovalRequest) -> ApprovalRequest:
        """The request stored under ``request.key`` (another process's, or an earlier caller's)."""

        async def attach(conn: Connection) -> ApprovalRequest | None:
            existing = await conn.fetchval(
                f"SELECT id FROM {self.schema}.requests WHERE key = $1", request.key
            )
            if existing is None:  # (the key's request was pruned meanwhile: store this one after all)
                return None
            return await self._fetch(conn, existing)

        attached = await self._transact(attach)
        if attached is None:
            attached = await self.create_or_attach(request)
        return attached

    async def get(self, request_id: str) -> ApprovalRequest:
        return await self._getting.submit(request_id)

    async def _get_many(self, ids: Sequence[str]) -> list[ApprovalRequest | BaseException]:
        """The requests of ``ids`` (``UnknownRequest`` for those the store does not hold), read
        by one statement; those pending past their expiry are marked timed out first, and read
        again (rare: the expiry's own timer in the waiting process usually did it)."""

        async def read(conn: Connection) -> list[Mapping[str, Any]]:
            return list(
                await conn.fetch(
                    f"SELECT *, expires_at <= now() AS expired FROM {self.schema}.requests"
                    " WHERE id = ANY($1::text[])",
                    ids,
                )
            )

        rows = await self._transact(read, atomic=False)
        expired = [row["id"] for row in rows if row["expired"] and row["status"] == Status.PENDING.value]
        if expired:
            await self._transact(functools.partial(self._expire, ids=expired))
            rows = await self._transact(read, atomic=False)
        for row in rows:
            if row["status"] == Status.APPROVED.value and row["exec_state"] is None:  # about to run
                self._heads.hint(row["id"], row["audit_head"])
        found = {row["id"]: to_request(row, _same) for row in rows}
        return [found[each] if each in found else UnknownRequest(each) for each in ids]

    async def decide(self, decision: Decision) -> Decision:
        if decision.edits:  # (rare: the request's row is read to store the edited call)
            return await self._decide_one(decision)
        return await self._deciding.submit(decision)

    async def _decide_many(self, decisions: Sequence[Decision]) -> list[Decision | BaseException]:
        """Store ``decisions`` (none with edits) in one transaction: each one whose request is
        pending (and, for an approval or a denial, not past its expiry) and not decided by an
        earlier one of the batch. The others get the decision that stands, each after."""
        ids = sorted({decision.request_id for decision in decisions})

        async def decide(conn: Connection) -> dict[str, Decision]:
            # Locked in the order of their ids: concurrent batches never wait for each other in a circle.
            rows = await conn.fetch(
                f"SELECT id, audit_head, expires_at > now() AS live FROM {self.schema}.requests"
                " WHERE id = ANY($1::text[]) AND status = 'pending' ORDER BY id FOR UPDATE",
                ids,
            )
            pending = {row["id"]: row for row in rows}
            stored: dict[str, Decision] = {}
            heads: dict[str, str | None] = {}
            for decision in decisions:
                row = pending.pop(decision.request_id, None)  # (the first decision of a request wins)
                if row is not None and (row["live"] or decision.status not in _TIMELY):
                    stored[decision.request_id] = decision
                    heads[decision.request_id] = row["audit_head"]
            if not stored:
                return stored
            values = [{**decision_row(d), "decided_at": d.decided_at} for d in stored.values()]
            await conn.execute(
                f"UPDATE {self.schema}.requests r SET {_DECIDE_ASSIGNMENTS}"
                f" FROM unnest($1::text[], {_DECIDE_ARRAYS}) AS v(id, {_DECIDE_COLUMNS}) WHERE r.id = v.id",
                list(stored),
                *([value[name] for value in values] for name in _DECISION_TYPES),
            )
            await self._append_audit(
                conn, [self._linked(decision_entry(d), heads[d.request_id]) for d in stored.values()]
            )
            await self._announce(conn, "decided", *stored)
            return stored

        stored = await self._transact(decide)
        answers: list[Decision | BaseException] = []
        for decision in decisions:
            try:
                ours = stored.get(decision.request_id) is decision
                answers.append(decision if ours else await self._decide_one(decision))
            except Exception as exc:
                answers.append(exc)
        return answers

    async def _decide_one(self, decision: Decision) -> Decision:
        """``decide`` in a transaction of its own: for a decision with edits, and for those a batch
        did not store (decided already, past the expiry, unknown), which read what stands."""
        values = {**decision_row(decision), "decided_at": decision.decided_at}
        # Approvals and denials count only before the expiry; timeouts and cancellations always.
        late_ok = decision.status not in (Status.APPROVED, Status.DENIED)

        async def decide(conn: Connection) -> Decision:
            columns = dict(values)
            if decision.edits:  # the call that runs is the edited one: its kwargs and digest
                row = await conn.fetchrow(
                    f"SELECT * FROM {self.schema}.requests WHERE id = $1 FOR UPDATE", decision.request_id
                )
                if row is not None:  # (else the UPDATE finds nothing, and _fetch says so)
                    columns.update(_arguments(edited(to_request(row, _same), decision.edits)))
            assignments = ", ".join(f"{column} = ${index}" for index, column in enumerate(columns, start=2))
            updated = await conn.fetchrow(
                f"UPDATE {self.schema}.requests SET {assignments} WHERE id = $1 AND status = 'pending'"
                f" AND (${len(columns) + 2} OR expires_at > now()) RETURNING audit_head",
                decision.request_id,
                *columns.values(),
                late_ok,
            )
            if updated is not None:
                await self._announce(conn, "decided", decision.request_id)
                await self._insert_audit(conn, decision_entry(decision), updated["audit_head"])
                return decision
            standing = (await self._fetch(conn, decision.request_id)).decision
            assert standing is not None
            return standing

        return await self._transact(decide)

    async def vote(self, request_id: str, vote: Vote, needed: int) -> Tally:
        async def count(conn: Connection) -> Tally:
            # The row lock serializes the votes of every process: each reads the votes before it.
            head = await conn.fetchval(
                f"SELECT audit_head FROM {self.schema}.requests WHERE id = $1 FOR UPDATE", request_id
            )
            request = await self._fetch(conn, request_id)  # past the expiry: the timeout stored first
            if request.decision is not None:
                return Tally(request.decision, request.votes, False)
            after, decision = tally(request, request.votes, vote, needed)
            if after is request.votes:
                return Tally(None, after, False)
            values: dict[str, Any] = {"votes": votes_text(after)}
            if vote.edits:  # the votes from now on are for the edited call
                values.update(_arguments(edited(request, vote.edits)))
            if decision is not None:
                values.update(decision_row(decision), decided_at=decision.decided_at)
            assignments = ", ".join(f"{column} = ${index}" for index, column in enumerate(values, start=2))
            await conn.execute(
                f"UPDATE {self.schema}.requests SET {assignments} WHERE id = $1", request_id, *values.values()
            )
            approvals = sum(v.approved for v in after)
            head = await self._insert_audit(conn, vote_entry(request_id, vote, approvals, needed), head)
            await self._announce(conn, "voted" if decision is None else "decided", request_id)
            if decision is not None:
                await self._insert_audit(conn, decision_entry(decision), head)
            return Tally(decision, after, decision is not None)

        return await self._transact(count)

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
        table = f"{self.schema}.requests"

        async def pending(conn: Connection) -> list[ApprovalRequest]:
            await self._expire(conn, None)
            where, args = _pending_where(run_id, kind, age, id_prefix)
            if after is not None:
                start = await conn.fetchrow(f"SELECT created_at, id FROM {table} WHERE id = $1", after)
                if start is None:
                    raise UnknownRequest(after)
                args += [start["created_at"], start["id"]]
                where += f" AND (created_at, id) > (${len(args) - 1}, ${len(args)})"
            args.append(limit)  # NULL: no limit
            order = f"ORDER BY created_at, id LIMIT ${len(args)}"
            if function is None:
                query = f"SELECT * FROM {table} WHERE {where} {order}"
            else:
                args.append(function)
                branches = " UNION ALL ".join(
                    f"(SELECT * FROM {table} WHERE {where} AND {term.format(len(args))} {order})"
                    for term in _BY_FUNCTION
                )
                query = f"SELECT * FROM ({branches}) AS found {order}"
            return [to_request(row, _same) for row in await conn.fetch(query, *args)]

        return await self._transact(pending)

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
        table = f"{self.schema}.requests"

        async def count(conn: Connection) -> int:
            await self._expire(conn, None)
            where, args = _pending_where(run_id, kind, age, id_prefix)
            if function is None:
                query = f"SELECT count(*) FROM {table} WHERE {where}"
            else:
                args.append(function)
                query = "SELECT " + " + ".join(
                    f"(SELECT count(*) FROM {table} WHERE {where} AND {term.format(len(args))})"
                    for term in _BY_FUNCTION
                )
            return int(await conn.fetchval(query, *args))

        return await self._transact(count)

    async def record(self, entry: AuditEntry) -> None:
        await self._recording.submit(entry)

    async def _record_many(self, entries: Sequence[AuditEntry]) -> list[None]:
        """Append ``entries``, each to its chain after the one before it.

        The chains of requests take no lock across round trips: their newest hashes are read,
        the entries linked after them, and one statement appends the entries of each chain
        whose newest hash is still the one read (and moves it on). Entries of a chain that
        moved meanwhile (another process appended to it) are linked again, and so on. Those
        of grants, and of requests pruned, are appended one at a time, their chain locked.
        """
        waiting = list(entries)
        read = self._heads.take({entry.request_id for entry in waiting})
        while waiting:
            chains = {entry.request_id for entry in waiting} - read.keys()
            if chains:
                read |= await self._transact(functools.partial(self._audit_heads, ids=chains), atomic=False)
            heads = dict(read)
            linked: list[_Linked] = []
            for entry in waiting:
                if entry.request_id in heads:
                    linked.append(self._linked(entry, heads[entry.request_id]))
                    heads[entry.request_id] = linked[-1].hash
                else:
                    await self._transact(functools.partial(self._record_locked, entry=entry))
            if not linked:
                return [None] * len(entries)
            appended = await self._append_if_unmoved(linked, read, heads)
            for request_id in appended:
                self._heads.hint(request_id, heads[request_id])  # (for the next entry, likely soon)
            waiting = [entry for entry in waiting if entry.request_id in read.keys() - appended]
            read = {}
        return [None] * len(entries)

    async def _audit_heads(self, conn: Connection, *, ids: Collection[str]) -> dict[str, str | None]:
        """The newest hash of the chain of each request of ``ids`` that the store holds."""
        rows = await conn.fetch(
            f"SELECT id, audit_head FROM {self.schema}.requests WHERE id = ANY($1::text[])", list(ids)
        )
        return {row["id"]: row["audit_head"] for row in rows}

    async def _record_locked(self, conn: Connection, *, entry: AuditEntry) -> None:
        head, table = await self._chain_head(conn, entry.request_id)
        await self._insert_audit(conn, entry, head, table)

    async def _append_if_unmoved(
        self, linked: Sequence[_Linked], read: Mapping[str, str | None], newest: Mapping[str, str | None]
    ) -> set[str]:
        """Append ``linked`` by one statement, for the requests whose ``audit_head`` is still
        the one ``read``, moving it to their ``newest``; returns the ids of those requests."""
        ids = list(read)

        async def append(conn: Connection) -> set[str]:
            rows = await conn.fetch(
                f"WITH moved AS (UPDATE {self.schema}.requests r SET audit_head = h.newest"
                " FROM unnest($7::text[], $8::text[], $9::text[]) AS h(id, read, newest)"
                " WHERE r.id = h.id AND r.audit_head IS NOT DISTINCT FROM h.read RETURNING r.id),"
                f" logged AS (INSERT INTO {self.schema}.audit (request_id, event, at, fields, prev, hash)"
                " SELECT request_id, event, at, fields::jsonb, prev, hash FROM unnest($1::text[], $2::text[],"
                " $3::timestamptz[], $4::text[], $5::text[], $6::text[]) WITH ORDINALITY"
                " AS t(request_id, event, at, fields, prev, hash, n)"
                " WHERE request_id IN (SELECT id FROM moved) ORDER BY n)"
                " SELECT id FROM moved",
                *map(list, zip(*linked, strict=True)),
                ids,
                [read[request_id] for request_id in ids],
                [newest[request_id] for request_id in ids],
            )
            return {row["id"] for row in rows}

        return await self._transact(append, atomic=False)

    async def claim(self, key: str, expires_at: datetime) -> bool:
        async def claim(conn: Connection) -> bool:
            await conn.execute(f"DELETE FROM {self.schema}.claims WHERE expires_at <= now()")
            claimed = await conn.fetchval(
                f"INSERT INTO {self.schema}.claims (key, expires_at) VALUES ($1, $2)"
                " ON CONFLICT (key) DO NOTHING RETURNING true",
                key,
                expires_at,
            )
            return claimed is not None

        return await self._transact(claim)

    async def schedule(self, request_id: str, steps: Sequence[Step]) -> None:
        async def schedule(conn: Connection) -> None:
            if await conn.fetchval(f"SELECT 1 FROM {self.schema}.requests WHERE id = $1", request_id) is None:
                raise UnknownRequest(request_id)
            await conn.executemany(
                f"INSERT INTO {self.schema}.schedule (request_id, name, due_at, number, lease_until)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (request_id, name) DO NOTHING",
                [(request_id, step.name, step.due_at, step.number, step.lease_until) for step in steps],
            )

        await self._transact(schedule)

    async def steps(self, request_id: str) -> list[Step]:
        async def steps(conn: Connection) -> list[Step]:
            rows = await conn.fetch(
                f"SELECT name, due_at, number, lease_until FROM {self.schema}.schedule"
                " WHERE request_id = $1 ORDER BY name",
                request_id,
            )
            return [Step(row["name"], row["due_at"], row["number"], row["lease_until"]) for row in rows]

        return await self._transact(steps)

    async def take(self, request_id: str, step: str, lease: timedelta) -> int | None:
        async def take(conn: Connection) -> int | None:
            # One statement, no lock held past it: of many takers the row lock lets one through.
            number: int | None = await conn.fetchval(
                f"UPDATE {self.schema}.schedule SET lease_until = now() + make_interval(secs => $3)"
                " WHERE request_id = $1 AND name = $2 AND due_at <= now()"
                " AND (lease_until IS NULL OR lease_until <= now()) RETURNING number",
                request_id,
                step,
                lease.total_seconds(),
            )
            return number

        return await self._transact(take)

    async def done(self, request_id: str, step: str, number: int, next_due: datetime | None) -> None:
        async def done(conn: Connection) -> None:
            await conn.execute(
                f"UPDATE {self.schema}.schedule SET due_at = $4, number = number + 1, lease_until = NULL"
                " WHERE request_id = $1 AND name = $2 AND number = $3",
                request_id,
                step,
                number,
                next_due,
            )

        await self._transact(done)

    async def escalate(
        self, request_id: str, approvers: tuple[str, ...], entry: AuditEntry
    ) -> ApprovalRequest:
        async def escalate(conn: Connection) -> ApprovalRequest:
            head = await conn.fetchval(
                f"SELECT audit_head FROM {self.schema}.requests WHERE id = $1 FOR UPDATE", request_id
            )
            request = await self._fetch(conn, request_id)  # past the expiry: the timeout stored first
            if request.decision is not None:
                return request
            added = tuple(a for a in dict.fromkeys(approvers) if a not in request.approvers)
            if request.approvers and added:  # (an empty list lets anyone decide already)
                request = replace(request, approvers=(*request.approvers, *added))
                await conn.execute(
                    f"UPDATE {self.schema}.requests SET approvers = $2 WHERE id = $1",
                    request_id,
                    json.dumps(list(request.approvers)),
                )
            await self._insert_audit(conn, entry, head)
            return request

        return await self._transact(escalate)

    async def add_grant(self, grant: Grant) -> None:
        values = {
            **grant_row(grant),
            "created_at": grant.created_at,
            "expires_at": grant.expires_at,
            "revoked_at": grant.revoked_at,
        }
        columns = ", ".join(values)
        marks = ", ".join(f"${index}" for index in range(1, len(values) + 1))

        async def add(conn: Connection) -> None:
            await conn.execute(
                f"INSERT INTO {self.schema}.grants ({columns}) VALUES ({marks})", *values.values()
            )
            await self._announce(conn, "granted", grant.id)
            await self._insert_audit(conn, given_entry(grant), None, "grants")  # a new chain

        await self._transact(add)

    async def confirm_grant(self, grant_id: str, by: Principal) -> Grant:
        async def confirm(conn: Connection) -> Grant:
            row = await conn.fetchrow(
                f"SELECT * FROM {self.schema}.grants WHERE id = $1 FOR UPDATE", grant_id
            )
            if row is None:
                raise UnknownGrant(grant_id)
            grant = to_grant(row, _same)
            after = joined(grant, by)
            if after is grant:
                return grant
            values = grant_row(after)
            await conn.execute(
                f"UPDATE {self.schema}.grants SET granted_by = $2, users = $3 WHERE id = $1",
                grant_id,
                values["granted_by"],
                values["users"],
            )
            await self._announce(conn, "granted", grant_id)
            await self._insert_audit(
                conn,
                grant_entry("grant.confirmed", after, by.id, granters=len(after.by)),
                row["audit_head"],
                "grants",
            )
            return after

        return await self._transact(confirm)

    async def use_grant(
        self, function: str, kwargs: Mapping[str, Any], requested_by: str | None
    ) -> Grant | None:
        async def use(conn: Connection) -> Grant | None:
            candidates = await conn.fetch(
                f"SELECT *, now() AS now_ FROM {self.schema}.grants WHERE function = $1 AND {_LIVE}"
                " ORDER BY created_at, id",
                function,
            )
            for row in candidates:
                if not to_grant(row, _same).covers(kwargs, requested_by, row["now_"]):
                    continue
                # The row lock orders concurrent uses, and each re-checks the count it waited for.
                used = await conn.fetchrow(
                    f"UPDATE {self.schema}.grants SET uses = uses + 1 WHERE id = $1 AND {_LIVE} RETURNING *",
                    row["id"],
                )
                if used is not None:  # (else another process took its last use, or revoked it)
                    return to_grant(used, _same)
            return None

        return await self._transact(use)

    async def revoke_grant(self, grant_id: str, by: str) -> Grant:
        async def revoke(conn: Connection) -> Grant:
            row = await conn.fetchrow(
                f"UPDATE {self.schema}.grants SET revoked_by = $2, revoked_at = now()"
                " WHERE id = $1 AND revoked_at IS NULL RETURNING *",
                grant_id,
                by,
            )
            if row is None:  # revoked already (it stays so, by whoever did it first), or unknown
                row = await conn.fetchrow(f"SELECT * FROM {self.schema}.grants WHERE id = $1", grant_id)
                if row is None:
                    raise UnknownGrant(grant_id)
                return to_grant(row, _same)
            grant = to_grant(row, _same)
            await self._announce(conn, "granted", grant_id)
            await self._insert_audit(
                conn, grant_entry("grant.revoked", grant, by), row["audit_head"], "grants"
            )
            return grant

        return await self._transact(revoke)

    async def grants(self, *, function: str | None = None, active: bool = True) -> list[Grant]:
        async def grants(conn: Connection) -> list[Grant]:
            rows = await conn.fetch(
                f"SELECT * FROM {self.schema}.grants WHERE ($1::text IS NULL OR function = $1)"
                f" AND (NOT $2 OR ({_LIVE})) ORDER BY created_at, id",
                function,
                active,
            )
            return [to_grant(row, _same) for row in rows]

        return await self._transact(grants)

    async def watch(self) -> AsyncIterator[StoreEvent]:
        await self._ready()
        subscriber = _Subscriber()
        self._subscribers.add(subscriber)
        last = self._baseline
        listens = self._listens
        behind = True  # events may have been written before this iterator subscribed
        try:
            while not self._closed:
                if self._lost:
                    await self._reconnect()
                    continue
                if listens != self._listens:
                    # Listening again (this iterator's reconnect or another's, perhaps while
                    # this one was not being iterated): notifications sent meanwhile are gone.
                    listens = self._listens
                    behind = True
                    yield StoreEvent("resync", "")
                    continue
                if behind:
                    behind = False
                    for row in await self._transact(functools.partial(self._events_after, after=last)):
                        last = row["seq"]
                        yield StoreEvent(row["kind"], row["request_id"])
                while subscriber.items:
                    seq, kind, ids = subscriber.items.popleft()
                    if seq > last:  # (a notification's seq is its last event's: they come in order)
                        last = seq
                        for request_id in ids:
                            yield StoreEvent(kind, request_id)  # type: ignore[arg-type]
                with anyio.move_on_after(CATCH_UP_INTERVAL) as quiet:
                    await subscriber.wake.wait()
                if quiet.cancelled_caught:  # a silently dead LISTEN connection delivers nothing
                    behind = True
                else:
                    subscriber.wake = anyio.Event()
        finally:
            self._subscribers.discard(subscriber)

    async def _events_after(self, conn: Connection, *, after: int) -> list[Mapping[str, Any]]:
        return list(
            await conn.fetch(
                f"SELECT seq, kind, request_id FROM {self.schema}.events WHERE seq > $1 ORDER BY seq", after
            )
        )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        for subscriber in self._subscribers:
            subscriber.wake.set()
        with anyio.CancelScope(shield=True):
            if self._listen_conn is not None:
                self._listen_conn.terminate()
                self._listen_conn = None
            if self._pool is not None:
                with anyio.move_on_after(5) as scope:
                    await self._pool.close()
                if scope.cancelled_caught:
                    self._pool.terminate()
                self._pool = None

    # -- durable extras ----------------------------------------------------------------

    async def begin_execution(self, request_id: str, digest: str | None) -> Execution | None:
        return await self._beginning.submit((request_id, digest))

    async def _begin_many(
        self, items: Sequence[tuple[str, str | None]]
    ) -> list[Execution | BaseException | None]:
        """Claim the runs of ``items`` (request id, digest) by one statement: ``begin_execution``
        for each. It claims those that may start (nothing started yet, approved, the digest
        matches) and reads every row as it was before (locked by it), for what
        ``execution_so_far`` says of the others. An item of a request named earlier in the
        batch is answered after, by a statement of its own: it sees the earlier one's claim."""
        first: dict[str, str | None] = {}
        again: list[tuple[str, str | None]] = []
        for request_id, digest in items:
            if request_id in first:
                again.append((request_id, digest))
            else:
                first[request_id] = digest

        async def begin(conn: Connection) -> list[Mapping[str, Any]]:
            return list(
                await conn.fetch(
                    f"WITH before AS (SELECT * FROM {self.schema}.requests WHERE id = ANY($1::text[])"
                    " ORDER BY id FOR UPDATE),"
                    f" claimed AS (UPDATE {self.schema}.requests r SET exec_state = 'executing'"
                    " FROM before JOIN unnest($1::text[], $2::text[]) AS asked(id, digest) USING (id)"
                    " WHERE r.id = before.id AND before.exec_state IS NULL AND before.status = 'approved'"
                    " AND (asked.digest IS NULL OR asked.digest = before.digest) RETURNING r.id)"
                    " SELECT before.*, claimed.id IS NOT NULL AS claimed"
                    " FROM before LEFT JOIN claimed USING (id)",
                    list(first),
                    list(first.values()),
                )
            )

        rows = {row["id"]: row for row in await self._transact(begin, atomic=False)}
        answered: dict[str, Execution | BaseException | None] = {}
        for request_id, digest in first.items():
            row = rows.get(request_id)
            if row is None:
                answered[request_id] = UnknownRequest(request_id)
            elif row["claimed"]:
                answered[request_id] = None
            else:
                try:
                    answered[request_id] = execution_so_far(to_request(row, _same), digest)
                except ArgumentsChanged as exc:
                    answered[request_id] = exc
        later = iter(await self._begin_many(again) if again else ())
        answers: list[Execution | BaseException | None] = []
        for request_id, _ in items:
            answers.append(answered.pop(request_id) if request_id in answered else next(later))
        return answers

    async def finish_execution(self, request_id: str, outcome: str, result: str | None) -> None:
        await self._finishing.submit((request_id, outcome, result))

    async def _finish_many(self, items: Sequence[tuple[str, str, str | None]]) -> list[None]:
        """``finish_execution`` for each of ``items`` (request id, outcome, result), in one statement."""

        async def finish(conn: Connection) -> None:
            await conn.execute(
                f"UPDATE {self.schema}.requests r SET exec_state = 'executed', exec_outcome = v.outcome,"
                " result = v.result FROM unnest($1::text[], $2::text[], $3::text[]) AS v(id, outcome, result)"
                " WHERE r.id = v.id",
                *map(list, zip(*items, strict=True)),
            )

        await self._transact(finish, atomic=False)
        return [None] * len(items)

    async def history(
        self, *, request_id: str | None = None, since: datetime | None = None
    ) -> list[AuditEntry]:
        async def history(conn: Connection) -> list[AuditEntry]:
            rows = await conn.fetch(
                f"SELECT * FROM {self.schema}.audit WHERE ($1::text IS NULL OR request_id = $1)"
                " AND ($2::timestamptz IS NULL OR at >= $2) ORDER BY seq",
                request_id,
                since,
            )
            return [to_entry(row, _same) for row in rows]

        return await self._transact(history)

    async def audit_chain(self) -> AsyncIterator[ChainEntry]:
        """Every audit entry with its hashes, chain by chain (see ``_chain.ChainSource``), up
        to the newest one before which no transaction can still add an entry (``_settled``)."""
        upto = await self._settled()
        after: tuple[str, int] | None = None
        while True:
            rows = await self._transact(functools.partial(self._audit_page, after=after, upto=upto))
            for row in rows:
                fields = loads(row["fields"])
                yield ChainEntry(
                    row["seq"], row["request_id"], row["event"], row["at"], fields, row["prev"], row["hash"]
                )
            if len(rows) < _PAGE:
                return
            after = (rows[-1]["request_id"], rows[-1]["seq"])

    async def _audit_page(
        self, conn: Connection, *, after: tuple[str, int] | None, upto: int
    ) -> list[Mapping[str, Any]]:
        """The next ``_PAGE`` audit entries up to ``upto``, chain by chain, after ``(request_id, seq)``."""
        since = "" if after is None else "(request_id, seq) > ($3, $4) AND "
        return list(
            await conn.fetch(
                f"SELECT seq, request_id, event, at, fields, prev, hash FROM {self.schema}.audit"
                f" WHERE {since}seq <= $1 ORDER BY request_id, seq LIMIT $2",
                upto,
                _PAGE,
                *(after or ()),
            )
        )

    async def _settled(self) -> int:
        """The newest ``seq`` up to which the trail is there for good.

        Sequence numbers are taken as entries are inserted, not as their transactions commit:
        an entry may still appear before the newest one read. So this is the newest one read,
        once every transaction that was then writing to the table has ended (each waited for
        with a ``Backoff``, at most about 30 s: ``StoreError`` after that).
        """

        async def newest(conn: Connection) -> tuple[int, list[str]]:
            seq = await conn.fetchval(f"SELECT coalesce(max(seq), 0) FROM {self.schema}.audit")
            writers = await conn.fetch(
                "SELECT DISTINCT virtualtransaction FROM pg_locks WHERE locktype = 'relation'"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND relation = $1::regclass AND mode = 'RowExclusiveLock'",
                f"{self.schema}.audit",
            )
            return seq, [row["virtualtransaction"] for row in writers]

        async def running(conn: Connection) -> list[str]:
            rows = await conn.fetch(
                "SELECT DISTINCT virtualtransaction FROM pg_locks WHERE virtualtransaction = ANY($1::text[])",
                writers,
            )
            return [row["virtualtransaction"] for row in rows]

        seq, writers = await self._transact(newest)
        backoff = Backoff(0.005, 0.25, retries=125)
        while writers:
            delay = backoff.next()
            if delay is None:
                raise StoreError(
                    f"PostgreSQL ({self.schema}): transactions writing audit entries stayed open"
                    " for over 30 s: try again"
                )
            await anyio.sleep(delay)
            writers = await self._transact(running)
        return seq

    async def prune(self, older_than: float | timedelta | None = None) -> int:
        seconds = self._retention if older_than is None else retention_seconds(older_than)

        async def prune(conn: Connection) -> int:
            await conn.execute(
                f"DELETE FROM {self.schema}.events WHERE at < now() - make_interval(secs => $1)", seconds
            )
            await conn.execute(
                f"DELETE FROM {self.schema}.grants WHERE expires_at <= now() - make_interval(secs => $1)",
                seconds,
            )
            deleted = await conn.fetch(
                f"DELETE FROM {self.schema}.requests WHERE status <> 'pending'"
                " AND decided_at < now() - make_interval(secs => $1) RETURNING id",
                seconds,
            )
            await conn.execute(
                f"DELETE FROM {self.schema}.schedule WHERE request_id = ANY($1::text[])",
                [row["id"] for row in deleted],
            )
            return len(deleted)

        return await self._transact(prune)
