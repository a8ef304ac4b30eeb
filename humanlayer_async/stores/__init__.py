"""Where requests, decisions and the audit trail live."""

from .base import DurableStore, Store, StoreEvent
from .memory import MemoryStore
from .postgres import PostgresStore
from .sqlite import SQLiteStore
from .url import store_from_url

__all__ = [
    "DurableStore",
    "MemoryStore",
    "PostgresStore",
    "SQLiteStore",
    "Store",
    "StoreEvent",
    "store_from_url",
]
