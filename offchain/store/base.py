"""The durable store's interface, its records and errors (MISSION.md: a party writes a state to its
durable store before it signs or acknowledges it, and restarts from the store after a crash).

:class:`Store` is deliberately small and says nothing about SQL, so that a PostgreSQL store can be
added behind it later. Two implementations exist: :class:`offchain.store.sqlite.SQLiteStore`
(durable, the default) and :class:`offchain.store.memory.MemoryStore` (not durable; tests and
benchmarks). Both behave identically, including the validation done here on the way in.

Guarantees every implementation gives:

- every write outside :meth:`Store.transaction` is committed (durably, for a durable store) before
  the method returns; writes inside one are committed together when the outermost one exits, or
  not at all;
- history is never overwritten: a different state, order or signed digest under a key that is
  already taken raises :class:`StoreError`, and identical re-writes are no-ops;
- what comes back is what went in: records are validated on the way in (``ValidationError`` /
  ``BoundsError`` from :mod:`offchain.errors`), JSON values must round-trip through JSON exactly,
  and a row that no longer parses raises :class:`StoreCorruptError` naming its table and key.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from offchain.errors import TradingChannelsError, ValidationError
from offchain.model import (
    MAX_VERSION,
    BatchPrice,
    ChannelParams,
    ChannelState,
    Order,
    check_address,
    check_range,
    check_state,
)
from offchain.types import Address, ChannelId

# --------------------------------------------------------------------------- errors


class StoreError(TradingChannelsError):
    """The store refused an operation or could not complete it."""

    code = "store"


class StoreLockedError(StoreError):
    """Another process (or another store object in this one) is using this store."""

    code = "store_locked"


class StoreCorruptError(StoreError):
    """The store holds data this code cannot read (a malformed row, an unknown schema version)."""

    code = "store_corrupt"


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class ChannelRecord:
    """A channel the party takes part in: its parameters plus agent-level bookkeeping.

    ``meta`` (role, flow, whose turn, status, used order nonces, ...) is stored as JSON and must
    round-trip through it exactly: string keys only, lists rather than tuples, no NaN.
    ``channel_id`` must be ``params.channel_id``.
    """

    channel_id: bytes
    params: ChannelParams
    meta: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StoredState:
    """A state and whichever of the two signatures on it the party holds."""

    state: ChannelState
    trader_signature: bytes | None
    broker_signature: bytes | None

    @property
    def co_signed(self) -> bool:
        """Both signatures are present (what the adjudicator accepts)."""
        return self.trader_signature is not None and self.broker_signature is not None


@dataclass(frozen=True, slots=True)
class StoredOrder:
    """A signed order received in (or sent to) a channel; ``channel_id`` and ``nonce`` must be the
    order's own."""

    channel_id: bytes
    nonce: int
    order: Order
    signature: bytes


@dataclass(frozen=True, slots=True)
class StoredBatchPrice:
    """A batch price signed by ``broker``. Two different ones for one (broker, market, batch) are
    both kept: together they are evidence of equivocation."""

    broker: str
    price: BatchPrice
    signature: bytes


# --------------------------------------------------------------------------- the interface


class Store(Protocol):
    """Durable storage of one party's channels. Also a :class:`offchain.signing.SignedVersionLog`,
    so the never-sign-twice record survives a crash.

    Thread-safe: a transaction excludes every other thread's reads and writes until it ends.
    """

    # -- transactions and lifetime

    def transaction(self) -> AbstractContextManager[None]:
        """Group writes into one commit. A nested call joins the enclosing transaction as a
        savepoint: an exception leaving it undoes that block's writes only (then propagates); an
        exception leaving the outermost block undoes everything since it began. Writes outside
        any transaction commit on their own."""
        ...

    def close(self) -> None:
        """Release the store (and its lock). Idempotent; any later call raises StoreError."""
        ...

    def __enter__(self) -> Store: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    # -- channels

    def put_channel(self, record: ChannelRecord) -> None:
        """Insert or replace the record of ``record.channel_id`` (a channel keeps its place in
        :meth:`channels`)."""
        ...

    def channel(self, channel_id: bytes) -> ChannelRecord | None: ...

    def channels(self) -> list[ChannelRecord]:
        """Every channel, in the order each was first stored."""
        ...

    def channel_ids(self) -> list[ChannelId]:
        """The id of every channel, in the order each was first stored (a broker with many
        channels loads them one at a time instead of holding every record at once)."""
        ...

    # -- states

    def put_state(self, state: ChannelState, trader_signature: bytes | None, broker_signature: bytes | None) -> None:
        """Store ``state`` under (channel id, version). A signature given as None keeps the one
        already stored; one given replaces it. A different state (JSON or final flag) under a
        taken (channel id, version) raises StoreError."""
        ...

    def state(self, channel_id: bytes, version: int) -> StoredState | None: ...

    def latest_state(self, channel_id: bytes) -> StoredState | None:
        """The state with the highest version, co-signed or not."""
        ...

    def latest_co_signed(self, channel_id: bytes) -> StoredState | None:
        """The state with the highest version that carries both signatures."""
        ...

    # -- never sign twice (offchain.signing.SignedVersionLog)

    def signed_digest(self, channel_id: bytes, version: int) -> bytes | None:
        """The state digest this party signed for (channel, version), if any."""
        ...

    def record_signed(self, channel_id: bytes, version: int, digest: bytes) -> None:
        """Record the digest about to be signed; a different digest already recorded for the
        same (channel, version) raises StoreError, the same one is a no-op."""
        ...

    # -- orders

    def put_order(self, order: StoredOrder) -> None:
        """Store a signed order. The same content again is a no-op; different content under a
        taken (channel id, nonce) raises StoreError."""
        ...

    def orders(self, channel_id: bytes) -> list[StoredOrder]:
        """The channel's orders, in the order each was first stored."""
        ...

    # -- batch prices

    def put_batch_price(self, price: StoredBatchPrice) -> bool:
        """Store a signed batch price; True if it was new. An identical (broker, price, signature)
        is ignored; a different one for the same (broker, market, batch) is kept beside it."""
        ...

    def batch_prices(self, broker: str, market: int, batch: int) -> list[StoredBatchPrice]:
        """Every price stored for (broker, market, batch), first stored first."""
        ...

    def latest_batch_prices(self, broker: str) -> dict[int, StoredBatchPrice]:
        """Per market id, the broker's price with the highest batch number (the first stored one
        if that batch has two)."""
        ...

    def batch_prices_between(self, broker: str, market: int, first: int, last: int) -> list[StoredBatchPrice]:
        """Every price stored for (broker, market) with ``first <= batch <= last``, by batch, and
        first stored first within a batch."""
        ...

    # -- pending proposal, bookkeeping

    def put_pending(self, channel_id: bytes, message: dict[str, Any] | None) -> None:
        """Set the channel's one pending proposal (a JSON object); None clears it."""
        ...

    def pending(self, channel_id: bytes) -> dict[str, Any] | None: ...

    def put_meta(self, namespace: str, key: str, value: Any) -> None:
        """Set a JSON value; None deletes the key."""
        ...

    def meta(self, namespace: str, key: str) -> Any | None: ...

    def meta_items(self, namespace: str) -> dict[str, Any]:
        """Every key of ``namespace``, sorted by key."""
        ...


# --------------------------------------------------------------------------- shared by the implementations
# Validation and encoding live here so that every implementation accepts and refuses exactly the
# same input.


def encode_json(value: Any, what: str, check_round_trip: bool = True) -> str:
    """Canonical JSON text of ``value`` (sorted keys, compact); ValidationError unless it
    round-trips exactly (so a reader gets back what the writer stored). ``check_round_trip=False``
    is for the model's own ``to_json()`` output, which round-trips by construction."""
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{what} is not JSON-serialisable: {exc}") from exc
    if check_round_trip and json.loads(text) != value:
        raise ValidationError(f"{what} does not round-trip through JSON (tuples? non-string keys?)")
    return text


def check_bytes(name: str, value: object, length: int | None = None) -> bytes:
    if not isinstance(value, bytes) or (length is not None and len(value) != length):
        size = "" if length is None else f" of {length} bytes"
        raise ValidationError(f"{name} must be bytes{size}")
    return value


def check_signature(name: str, value: object) -> bytes | None:
    return None if value is None else check_bytes(name, value)


def check_version(version: int) -> int:
    """A version argument: an int in [0, 2^48)."""
    return check_range("version", version, 0, MAX_VERSION)


def check_str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a string")
    return value


def check_channel_record(record: ChannelRecord) -> str:
    """Validate ``record``; return its meta as JSON text."""
    check_bytes("channel_id", record.channel_id, 32)
    if not isinstance(record.params, ChannelParams):
        raise ValidationError("params must be ChannelParams")
    if record.params.channel_id != record.channel_id:
        raise ValidationError("channel_id is not the hash of params")
    if not isinstance(record.meta, dict):
        raise ValidationError("channel meta must be a dict")
    return encode_json(record.meta, "channel meta")


def check_stored_state(
    state: ChannelState, trader_signature: bytes | None, broker_signature: bytes | None
) -> ChannelState:
    if not isinstance(state, ChannelState):
        raise ValidationError("state must be a ChannelState")
    check_stored_state_signatures(trader_signature, broker_signature)
    return check_state(state)


def check_stored_state_signatures(trader_signature: bytes | None, broker_signature: bytes | None) -> None:
    check_signature("trader_signature", trader_signature)
    check_signature("broker_signature", broker_signature)


def check_stored_order(record: StoredOrder) -> None:
    if not isinstance(record.order, Order):
        raise ValidationError("order must be an Order")
    record.order.check()
    if record.channel_id != record.order.channel_id:
        raise ValidationError("StoredOrder.channel_id is not the order's channel id")
    if record.nonce != record.order.nonce or isinstance(record.nonce, bool):
        raise ValidationError("StoredOrder.nonce is not the order's nonce")
    check_bytes("order signature", record.signature)


def check_stored_batch_price(record: StoredBatchPrice) -> StoredBatchPrice:
    """Validate ``record``; return it with the broker address checksummed (the form stored)."""
    if not isinstance(record.price, BatchPrice):
        raise ValidationError("price must be a BatchPrice")
    record.price.check()
    check_bytes("batch price signature", record.signature)
    broker = check_address("broker", record.broker)
    return record if broker == record.broker else StoredBatchPrice(broker, record.price, record.signature)


def normalise_broker(broker: str) -> Address:
    return check_address("broker", broker)


def same_state(a: ChannelState, b: ChannelState) -> bool:
    """Equal as stored: same canonical JSON and final flag (the key is the channel id and version)."""
    return a.is_final == b.is_final and a.to_json() == b.to_json()
