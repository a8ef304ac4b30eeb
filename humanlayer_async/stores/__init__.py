"""Where requests, decisions and the audit trail live.

``SQLiteStore``, ``PostgresStore`` and ``store_from_url`` are imported when first used;
``PostgresStore`` needs the ``postgres`` extra (``pip install 'humanlayer-async[postgres]'``).
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from .base import DurableStore, Store, StoreEvent
from .memory import MemoryStore

if TYPE_CHECKING:
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

if not TYPE_CHECKING:  # type checkers see the imports above, and an unknown name as an error
    __getattr__, __dir__ = lazy_exports(
        globals(),
        {"PostgresStore": ".postgres", "SQLiteStore": ".sqlite", "store_from_url": ".url"},
    )
