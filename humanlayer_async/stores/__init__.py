"""Where requests, decisions and the audit trail live."""

from .base import Store, StoreEvent
from .memory import MemoryStore

__all__ = ["MemoryStore", "Store", "StoreEvent"]
