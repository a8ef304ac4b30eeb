"""A store named by a URL, as the ``humanlayer-async`` command and ``HUMANLAYER_STORE`` name it.

- ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``: ``SQLiteStore``
- ``postgresql://user:password@host:5432/db?schema=humanlayer``: ``PostgresStore``
  (``postgres://`` too; ``schema`` and ``statement_cache_size`` are the store's, every other
  parameter goes to asyncpg; ``statement_cache_size=0`` behind a pooler in transaction mode)

The store's audit key (``audit_key=``) is ``$HUMANLAYER_AUDIT_KEY`` unless given: a secret
kept outside the database, never in its URL.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._exceptions import ConfigurationError
from ._chain import environment_key
from .base import DurableStore

__all__ = ["store_from_url"]

SQLITE_FORM = "sqlite:///relative/file.db or sqlite:////absolute/file.db"
POSTGRES_FORM = "postgresql://user:password@host:5432/database?schema=name"


def store_from_url(url: str, *, create: bool = True, audit_key: str | bytes | None = None) -> DurableStore:
    """The durable store ``url`` names; ``ConfigurationError`` for anything else.

    With ``create=False`` the store is only opened, never created (see ``SQLiteStore`` and
    ``PostgresStore``): the operator commands of ``humanlayer-async`` open stores so. Errors
    name the URL form expected and never show a password. ``audit_key`` makes the audit
    trail's hashes HMAC-SHA256 (default: ``$HUMANLAYER_AUDIT_KEY``, when set and not empty).
    """
    key = environment_key() if audit_key is None else audit_key
    scheme = url.partition(":")[0].lower()
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore

        return PostgresStore(url, create=create, audit_key=key)
    if scheme != "sqlite":
        raise ConfigurationError(
            f"unsupported store URL {redacted(url)!r}: use {SQLITE_FORM}, or {POSTGRES_FORM}"
        )
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    path = parts.path[1:] if parts and parts.path.startswith("/") else ""
    if parts is None or parts.netloc or parts.query or parts.fragment or not path:
        raise ConfigurationError(f"a SQLite store URL is {SQLITE_FORM}, without parameters")
    from .sqlite import SQLiteStore

    return SQLiteStore(path, create=create, audit_key=key)


def redacted(url: str) -> str:
    """``url`` without its password (in its user part or as a ``password`` parameter), for messages."""
    try:
        parts = urlsplit(url)
        user = parts.username
    except ValueError:
        return "(a URL that does not parse)"
    host = parts.netloc.rpartition("@")[2]
    query = [
        (name, value) for name, value in parse_qsl(parts.query, keep_blank_values=True) if name != "password"
    ]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}" if user else host, query=urlencode(query)))
