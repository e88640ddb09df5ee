"""A party's durable store: it writes every state here before signing or acknowledging it, and
restarts from here after a crash (MISSION.md). See :mod:`offchain.store.base` for the interface
and its guarantees, :mod:`offchain.store.sqlite` for the default durable implementation."""

from __future__ import annotations

from offchain.store.base import (
    ChannelRecord,
    Store,
    StoreCorruptError,
    StoredBatchPrice,
    StoredOrder,
    StoredState,
    StoreError,
    StoreLockedError,
)
from offchain.store.memory import MemoryStore
from offchain.store.sqlite import SQLiteStore

__all__ = [
    "ChannelRecord",
    "MemoryStore",
    "SQLiteStore",
    "Store",
    "StoreCorruptError",
    "StoreError",
    "StoreLockedError",
    "StoredBatchPrice",
    "StoredOrder",
    "StoredState",
    "open_store",
]


def open_store(path: str | None) -> Store:
    """A :class:`MemoryStore` for None or ``":memory:"``, else a :class:`SQLiteStore` on ``path``
    (synchronous=FULL; raises StoreLockedError if another process has it open)."""
    if path is None or path == ":memory:":
        return MemoryStore()
    return SQLiteStore(path)
