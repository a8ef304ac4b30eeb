"""A store named by a URL, as the ``humanlayer-async`` command and ``HUMANLAYER_STORE`` name it.

- ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``: ``SQLiteStore``
- ``postgresql://user:password@host:5432/db?schema=humanlayer``: ``PostgresStore``
  (``postgres://`` too; ``schema`` is the store's, every other parameter goes to asyncpg)
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._exceptions import ConfigurationError
from .base import DurableStore
from .postgres import PostgresStore
from .sqlite import SQLiteStore

__all__ = ["store_from_url"]


def store_from_url(url: str) -> DurableStore:
    """The durable store ``url`` names; ``ConfigurationError`` for anything else."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if parts.netloc or not path:
            raise ConfigurationError(
                "a SQLite store URL is sqlite:///relative/file.db or sqlite:////absolute/file.db"
            )
        return SQLiteStore(path)
    if parts.scheme in ("postgresql", "postgres"):
        query = parse_qsl(parts.query, keep_blank_values=True)
        schema = [value for name, value in query if name == "schema"]
        rest = urlencode([(name, value) for name, value in query if name != "schema"])
        dsn = urlunsplit(parts._replace(query=rest))
        return PostgresStore(dsn, schema=schema[-1]) if schema else PostgresStore(dsn)
    shown = urlunsplit(parts._replace(netloc=parts.hostname or "")) if parts.password else url
    raise ConfigurationError(
        f"unsupported store URL {shown!r}: use sqlite:///path/to/file.db or postgresql://host/db"
    )
