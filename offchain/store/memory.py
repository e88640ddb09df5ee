"""A :class:`offchain.store.Store` in memory: same behaviour as the SQLite store, no durability.

For tests and benchmarks. It validates and refuses exactly what :class:`SQLiteStore` does (the
checks live in :mod:`offchain.store.base`) and keeps JSON values as text, so a caller gets back a
fresh copy, never an object it could still be mutating; states and the other records are frozen
objects and are kept as they are (a state seen again as the same object is known to be the same
state without comparing its JSON). Transactions are real: every change is
recorded in an undo log, and an exception leaving a (possibly nested) transaction undoes that
transaction's changes, so an aborted batch of writes leaves nothing behind here either.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self, TypeVar

from offchain.errors import ValidationError
from offchain.model import MAX_VERSION, ChannelParams, ChannelState, check_amount, check_uint32
from offchain.store.base import (
    ChannelRecord,
    StoredBatchPrice,
    StoredOrder,
    StoredState,
    StoreError,
    check_bytes,
    check_channel_record,
    check_stored_batch_price,
    check_stored_order,
    check_stored_state,
    check_str,
    check_version,
    encode_json,
    normalise_broker,
    same_state,
)
from offchain.types import ChannelId

K = TypeVar("K")
V = TypeVar("V")


def _key(channel_id: bytes) -> str:
    return "channel 0x" + channel_id.hex()


class _Transaction:
    """One (possibly nested) transaction of a MemoryStore: a plain context manager rather than a
    generator one, because every write opens one (it costs a third as much)."""

    __slots__ = ("_mark", "_store")

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._mark = 0

    def __enter__(self) -> None:
        store = self._store
        store._lock.acquire()
        if store._closed:
            store._lock.release()
            raise StoreError("the store is closed")
        self._mark = len(store._undo)
        store._depth += 1

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        store = self._store
        try:
            store._depth -= 1
            undo = store._undo
            if exc_type is not None:
                while len(undo) > self._mark:
                    undo.pop()()
            elif store._depth == 0:
                undo.clear()
        finally:
            store._lock.release()


class MemoryStore:
    """Every record in dicts, guarded by one re-entrant lock (thread-safe like SQLiteStore)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0
        self._closed = False
        self._undo: list[Callable[[], object]] = []
        self._channels: dict[bytes, tuple[ChannelParams, str]] = {}
        self._states: dict[tuple[bytes, int], StoredState] = {}
        self._latest: dict[bytes, int] = {}
        self._latest_co_signed: dict[bytes, int] = {}
        self._signed: dict[tuple[bytes, int], bytes] = {}
        self._orders: dict[bytes, dict[int, StoredOrder]] = {}
        self._prices: dict[tuple[str, int, int], list[StoredBatchPrice]] = {}
        self._latest_prices: dict[str, dict[int, StoredBatchPrice]] = {}
        self._pending: dict[bytes, str] = {}
        self._meta: dict[str, dict[str, str]] = {}

    # ------------------------------------------------------------------ lifetime and transactions

    def close(self) -> None:
        """Make the store unusable (the data is dropped with it). Idempotent; raises StoreError
        inside a transaction."""
        with self._lock:
            if self._depth:
                raise StoreError("close() inside a transaction")
            self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")

    def transaction(self) -> _Transaction:
        """Group writes; an exception leaving the block undoes the block's writes (a nested block
        undoes only its own) and propagates. Other threads wait until the block ends."""
        return _Transaction(self)

    def _written(self) -> None:
        """End of a write method that needs no transaction of its own (whatever could raise came
        before its writes): outside any transaction its writes are committed, so their undo
        entries go; inside one they stay, for that transaction to undo."""
        if not self._depth:
            self._undo.clear()

    def _set(self, mapping: dict[K, V], key: K, value: V) -> None:
        """``mapping[key] = value``, undoable. Call with the lock held (in a transaction, or
        followed by :meth:`_written`)."""
        if key in mapping:
            old = mapping[key]
            self._undo.append(lambda: mapping.__setitem__(key, old))
        else:
            self._undo.append(lambda: mapping.pop(key, None))
        mapping[key] = value

    def _delete(self, mapping: dict[K, V], key: K) -> None:
        """``del mapping[key]`` if present, undoable. Call only inside a transaction."""
        if key in mapping:
            old = mapping.pop(key)
            self._undo.append(lambda: mapping.__setitem__(key, old))

    def _read(self) -> threading.RLock:
        """The lock, after checking the store is open (for readers)."""
        self._check_open()
        return self._lock

    # ------------------------------------------------------------------ channels

    def put_channel(self, record: ChannelRecord) -> None:
        meta = check_channel_record(record)
        with self._lock:  # no nested transaction: the one write comes last
            self._check_open()
            self._set(self._channels, record.channel_id, (record.params, meta))
            self._written()

    def channel(self, channel_id: bytes) -> ChannelRecord | None:
        with self._read():
            entry = self._channels.get(channel_id)
        return None if entry is None else ChannelRecord(channel_id, entry[0], json.loads(entry[1]))

    def channels(self) -> list[ChannelRecord]:
        with self._read():
            entries = list(self._channels.items())
        return [ChannelRecord(channel_id, params, json.loads(meta)) for channel_id, (params, meta) in entries]

    def channel_ids(self) -> list[ChannelId]:
        with self._read():
            return [ChannelId(channel_id) for channel_id in self._channels]

    # ------------------------------------------------------------------ states

    def put_state(self, state: ChannelState, trader_signature: bytes | None, broker_signature: bytes | None) -> None:
        if not (  # what check_stored_state lets through, recognised in one test (a checked state)
            type(state) is ChannelState
            and state._checked
            and (trader_signature is None or type(trader_signature) is bytes)
            and (broker_signature is None or type(broker_signature) is bytes)
        ):
            check_stored_state(state, trader_signature, broker_signature)
        channel_id, version = state.channel_id, state.version
        with self._lock:  # no nested transaction: everything that can raise comes before the writes
            self._check_open()
            existing = self._states.get((channel_id, version))
            if existing is None:
                stored = StoredState(state, trader_signature, broker_signature)
            else:
                if existing.state is not state and existing.state != state and not same_state(existing.state, state):
                    raise StoreError(
                        f"refusing to overwrite the stored state of {_key(channel_id)}, version {version} "
                        "with a different one"
                    )
                if trader_signature is None and broker_signature is None:
                    return
                stored = StoredState(
                    existing.state,
                    existing.trader_signature if trader_signature is None else trader_signature,
                    existing.broker_signature if broker_signature is None else broker_signature,
                )
            self._set(self._states, (channel_id, version), stored)
            if version > self._latest.get(channel_id, -1):
                self._set(self._latest, channel_id, version)
            if stored.co_signed and version > self._latest_co_signed.get(channel_id, -1):
                self._set(self._latest_co_signed, channel_id, version)
            self._written()

    def state(self, channel_id: bytes, version: int) -> StoredState | None:
        if type(version) is not int or not 0 <= version <= MAX_VERSION:
            check_version(version)
        with self._read():
            return self._states.get((channel_id, version))

    def latest_state(self, channel_id: bytes) -> StoredState | None:
        with self._read():
            version = self._latest.get(channel_id)
            return None if version is None else self._states[(channel_id, version)]

    def latest_co_signed(self, channel_id: bytes) -> StoredState | None:
        with self._read():
            version = self._latest_co_signed.get(channel_id)
            return None if version is None else self._states[(channel_id, version)]

    # ------------------------------------------------------------------ signed versions

    def signed_digest(self, channel_id: bytes, version: int) -> bytes | None:
        if type(version) is not int or not 0 <= version <= MAX_VERSION:
            check_version(version)
        with self._read():
            return self._signed.get((channel_id, version))

    def record_signed(self, channel_id: bytes, version: int, digest: bytes) -> None:
        check_bytes("channel_id", channel_id, 32)
        check_bytes("digest", digest, 32)
        if type(version) is not int or not 0 <= version <= MAX_VERSION:
            check_version(version)
        with self._lock:  # no nested transaction: the one write comes last
            self._check_open()
            previous = self._signed.get((channel_id, version))
            if previous is None:
                self._set(self._signed, (channel_id, version), digest)
                self._written()
            elif previous != digest:
                raise StoreError(
                    f"{_key(channel_id)}, version {version}: a different digest is already recorded as signed"
                )

    # ------------------------------------------------------------------ orders

    def put_order(self, order: StoredOrder) -> None:
        check_stored_order(order)
        with self.transaction():
            by_nonce = self._orders.get(order.channel_id)
            if by_nonce is None:
                by_nonce = {}
                self._set(self._orders, order.channel_id, by_nonce)
            existing = by_nonce.get(order.nonce)
            if existing is None:
                self._set(by_nonce, order.nonce, order)
            elif existing.order.to_json() != order.order.to_json() or existing.signature != order.signature:
                raise StoreError(
                    f"refusing to overwrite the stored order of {_key(order.channel_id)}, nonce {order.nonce} "
                    "with a different one"
                )

    def orders(self, channel_id: bytes) -> list[StoredOrder]:
        with self._read():
            return list(self._orders.get(channel_id, {}).values())

    # ------------------------------------------------------------------ batch prices

    def put_batch_price(self, price: StoredBatchPrice) -> bool:
        price = check_stored_batch_price(price)
        p = price.price
        key = (price.broker, int(p.market), int(p.batch))
        with self.transaction():
            same_batch = self._prices.get(key)
            if same_batch is None:
                same_batch = []
                self._set(self._prices, key, same_batch)
            if price in same_batch:
                return False
            same_batch.append(price)
            self._undo.append(same_batch.pop)
            latest = self._latest_prices.get(price.broker)
            if latest is None:
                latest = {}
                self._set(self._latest_prices, price.broker, latest)
            current = latest.get(p.market)
            # Becomes the market's latest only with a strictly higher batch: on a tie the first stays.
            if current is None or p.batch > current.price.batch:
                self._set(latest, int(p.market), price)
            return True

    def batch_prices(self, broker: str, market: int, batch: int) -> list[StoredBatchPrice]:
        broker = normalise_broker(broker)
        check_uint32("market", market)
        check_amount("batch", batch)
        with self._read():
            return list(self._prices.get((broker, market, batch), ()))

    def batch_prices_between(self, broker: str, market: int, first: int, last: int) -> list[StoredBatchPrice]:
        broker = normalise_broker(broker)
        check_uint32("market", market)
        check_amount("first", first)
        check_amount("last", last)
        with self._read():
            keys: list[tuple[str, int, int]]
            if last - first < len(self._prices):
                keys = [(broker, market, b) for b in range(first, last + 1)]
            else:
                keys = sorted(k for k in self._prices if k[:2] == (broker, market) and first <= k[2] <= last)
            return [p for key in keys for p in self._prices.get(key, ())]

    def latest_batch_prices(self, broker: str) -> dict[int, StoredBatchPrice]:
        broker = normalise_broker(broker)
        with self._read():
            latest = self._latest_prices.get(broker, {})
            return {market: latest[market] for market in sorted(latest)}

    # ------------------------------------------------------------------ pending proposal

    def put_pending(self, channel_id: bytes, message: dict[str, Any] | None) -> None:
        check_bytes("channel_id", channel_id, 32)
        if message is not None and not isinstance(message, dict):
            raise ValidationError("a pending message must be a JSON object or None")
        text = None if message is None else encode_json(message, "pending message")
        with self._lock:  # no nested transaction: the one write comes last
            self._check_open()
            if text is None:
                self._delete(self._pending, channel_id)
            else:
                self._set(self._pending, channel_id, text)
            self._written()

    def pending(self, channel_id: bytes) -> dict[str, Any] | None:
        with self._read():
            text = self._pending.get(channel_id)
        if text is None:
            return None
        message: dict[str, Any] = json.loads(text)
        return message

    # ------------------------------------------------------------------ agent bookkeeping

    def put_meta(self, namespace: str, key: str, value: Any) -> None:
        check_str("namespace", namespace)
        check_str("key", key)
        text = None if value is None else encode_json(value, f"meta {namespace}/{key}")
        with self.transaction():
            keys = self._meta.get(namespace)
            if text is None:
                if keys is not None:
                    self._delete(keys, key)
                return
            if keys is None:
                keys = {}
                self._set(self._meta, namespace, keys)
            self._set(keys, key, text)

    def meta(self, namespace: str, key: str) -> Any | None:
        with self._read():
            text = self._meta.get(namespace, {}).get(key)
        return None if text is None else json.loads(text)

    def meta_items(self, namespace: str) -> dict[str, Any]:
        with self._read():
            items = sorted(self._meta.get(namespace, {}).items())
        return {key: json.loads(text) for key, text in items}
