"""The durable store (MISSION.md: a party writes a state to its store before it signs or
acknowledges it, and restarts from the store after a crash, even kill -9).

Behaviour tests run on both implementations (SQLiteStore and MemoryStore must agree); durability,
pragmas, the file lock and corrupt rows are SQLite-only.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from offchain.eip712 import Domain
from offchain.errors import BoundsError, DoubleSignError, TradingChannelsError, ValidationError
from offchain.model import BatchPrice, ChannelParams, ChannelState, initial_state
from offchain.signing import LocalSigner, SignedVersionLog, StateSigner
from offchain.store import (
    ChannelRecord,
    MemoryStore,
    SQLiteStore,
    Store,
    StoreCorruptError,
    StoredBatchPrice,
    StoredOrder,
    StoredState,
    StoreError,
    StoreLockedError,
    open_store,
)
from offchain.types import BatchNumber, MarketId, Nonce, Price, TokenAmount, Version
from tests.unit.test_model import BROKER, addr, make_order, make_params, make_state

ROOT = Path(__file__).resolve().parents[2]
PARAMS = make_params()
CID = PARAMS.channel_id
OTHER_PARAMS = make_params(nonce=8)
DOMAIN = Domain(chain_id=1337, verifying_contract=addr(0xAD))
U64 = 2**64 - 1


def sig(n: int) -> bytes:
    return bytes([n]) * 65


def state_v(version: int, trader_available: int = 1000, params: ChannelParams = PARAMS) -> ChannelState:
    """A state of ``params`` at ``version``; a different ``trader_available`` makes a different state."""
    base = initial_state(params, 1000, 5000)
    balances = replace(base.balances, trader_available=TokenAmount(trader_available))
    return replace(base, version=Version(version), balances=balances)


def price(market: int = 1, batch: int = 1, value: int = 100, n: int = 1, broker: str = BROKER) -> StoredBatchPrice:
    return StoredBatchPrice(broker, BatchPrice(MarketId(market), BatchNumber(batch), Price(value)), sig(n))


def stored_order(nonce: int = 1, amount: int = 2000, n: int = 1) -> StoredOrder:
    order = make_order(channel_id=CID, nonce=Nonce(nonce), amount_synthetic=amount)
    return StoredOrder(CID, nonce, order, sig(n))


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "party.db")
    yield s
    s.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "party.db"


def fill(s: Store) -> None:
    """One of every record."""
    s.put_channel(ChannelRecord(CID, PARAMS, {"role": "trader", "nonces": [1, 2], "turn": None}))
    s.put_state(state_v(0), sig(1), sig(2))
    s.put_state(state_v(1, 900), sig(1), None)
    s.put_state(make_state(), None, sig(3))
    s.record_signed(CID, 1, b"\x11" * 32)
    s.put_order(stored_order(nonce=U64))
    s.put_batch_price(price(batch=U64))
    s.put_pending(CID, {"type": "propose", "version": "2"})
    s.put_meta("batches", "1", {"next": "7"})


def snapshot(s: Store) -> tuple[object, ...]:
    """Everything fill() wrote, as read back."""
    return (
        s.channels(),
        s.state(CID, 0),
        s.latest_state(CID),
        s.latest_co_signed(CID),
        s.latest_state(make_state().channel_id),
        s.signed_digest(CID, 1),
        s.orders(CID),
        s.batch_prices(BROKER, 1, U64),
        s.latest_batch_prices(BROKER),
        s.pending(CID),
        s.meta_items("batches"),
    )


# --------------------------------------------------------------------------- round trips


def test_every_record_round_trips(store: Store) -> None:
    fill(store)
    channels, v0, latest, co_signed, rich, digest, orders, prices, latest_prices, pending, meta = snapshot(store)
    assert channels == [ChannelRecord(CID, PARAMS, {"role": "trader", "nonces": [1, 2], "turn": None})]
    assert v0 == StoredState(state_v(0), sig(1), sig(2))
    assert latest == StoredState(state_v(1, 900), sig(1), None)
    assert co_signed == v0
    assert rich == StoredState(make_state(), None, sig(3))
    assert digest == b"\x11" * 32
    assert orders == [stored_order(nonce=U64)]
    assert prices == [price(batch=U64)]
    assert latest_prices == {1: price(batch=U64)}
    assert pending == {"type": "propose", "version": "2"}
    assert meta == {"1": {"next": "7"}}


def test_final_flag_round_trips(store: Store) -> None:
    final = replace(state_v(3), is_final=True)
    store.put_state(final, sig(1), sig(2))
    stored = store.state(CID, 3)
    assert stored is not None and stored.state.is_final and stored.state == final


def test_channels_upsert_keeps_insertion_order(store: Store) -> None:
    store.put_channel(ChannelRecord(OTHER_PARAMS.channel_id, OTHER_PARAMS, {"n": 1}))
    store.put_channel(ChannelRecord(CID, PARAMS, {"n": 2}))
    store.put_channel(ChannelRecord(OTHER_PARAMS.channel_id, OTHER_PARAMS, {"n": 3}))
    assert [(r.channel_id, r.meta) for r in store.channels()] == [(OTHER_PARAMS.channel_id, {"n": 3}), (CID, {"n": 2})]
    assert store.channel_ids() == [OTHER_PARAMS.channel_id, CID]  # the same order, ids only
    assert store.channel(b"\x00" * 32) is None


def test_returned_meta_is_a_copy(store: Store) -> None:
    meta = {"nonces": [1]}
    store.put_channel(ChannelRecord(CID, PARAMS, meta))
    meta["nonces"].append(2)
    record = store.channel(CID)
    assert record is not None and record.meta == {"nonces": [1]}
    record.meta["nonces"].append(3)
    assert store.channel(CID) == ChannelRecord(CID, PARAMS, {"nonces": [1]})


@pytest.mark.parametrize("meta", [{"t": (1, 2)}, {1: "a"}, {"x": float("nan")}, {"s": {1, 2}}])
def test_json_that_does_not_round_trip_is_refused(store: Store, meta: dict[object, object]) -> None:
    with pytest.raises(ValidationError):
        store.put_channel(ChannelRecord(CID, PARAMS, meta))  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        store.put_meta("ns", "k", meta)
    with pytest.raises(ValidationError):
        store.put_pending(CID, meta)  # type: ignore[arg-type]
    assert store.channels() == [] and store.meta_items("ns") == {} and store.pending(CID) is None


def test_channel_id_must_be_the_params_hash(store: Store) -> None:
    with pytest.raises(ValidationError):
        store.put_channel(ChannelRecord(OTHER_PARAMS.channel_id, PARAMS, {}))


# --------------------------------------------------------------------------- states


def test_put_state_merges_signatures(store: Store) -> None:
    store.put_state(state_v(4), sig(1), None)
    store.put_state(state_v(4), None, sig(2))
    assert store.state(CID, 4) == StoredState(state_v(4), sig(1), sig(2))
    store.put_state(state_v(4), None, None)
    stored = store.state(CID, 4)
    assert stored is not None and stored.co_signed
    store.put_state(state_v(4), sig(9), None)  # a signature given replaces the stored one
    assert store.state(CID, 4) == StoredState(state_v(4), sig(9), sig(2))


def test_put_state_refuses_to_overwrite_history(store: Store) -> None:
    store.put_state(state_v(4), sig(1), None)
    with pytest.raises(StoreError, match="refusing to overwrite"):
        store.put_state(state_v(4, trader_available=999), sig(1), sig(2))
    with pytest.raises(StoreError):
        store.put_state(replace(state_v(4), is_final=True), None, None)
    assert store.state(CID, 4) == StoredState(state_v(4), sig(1), None)


def test_put_state_checks_bounds(store: Store) -> None:
    with pytest.raises(BoundsError):
        store.put_state(state_v(2**48), None, None)
    with pytest.raises(ValidationError):
        store.put_state(state_v(1), "sig", None)  # type: ignore[arg-type]


def test_latest_state_and_latest_co_signed(store: Store) -> None:
    assert store.latest_state(CID) is None and store.latest_co_signed(CID) is None
    store.put_state(state_v(9), sig(1), sig(2))
    store.put_state(state_v(10), sig(1), None)  # 10 > 9 numerically (not as text)
    store.put_state(state_v(2**40), None, None)
    store.put_state(state_v(3), sig(1), sig(2))  # stored late, still older
    latest, co_signed = store.latest_state(CID), store.latest_co_signed(CID)
    assert latest is not None and latest.state.version == 2**40 and not latest.co_signed
    assert co_signed is not None and co_signed.state.version == 9 and co_signed.co_signed
    store.put_state(state_v(10), None, sig(2))
    co_signed = store.latest_co_signed(CID)
    assert co_signed is not None and co_signed.state.version == 10
    assert store.latest_state(OTHER_PARAMS.channel_id) is None
    assert store.state(CID, 11) is None


# --------------------------------------------------------------------------- transactions


def test_transaction_is_all_or_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.put_channel(ChannelRecord(CID, PARAMS, {}))
        store.put_state(state_v(0), sig(1), sig(2))
        store.put_order(stored_order())
        store.put_batch_price(price())
        store.record_signed(CID, 0, b"\x22" * 32)
        store.put_pending(CID, {"m": 1})
        store.put_meta("ns", "k", 1)
        raise RuntimeError("crash in the middle")
    assert store.channels() == [] and store.latest_state(CID) is None and store.latest_co_signed(CID) is None
    assert store.orders(CID) == [] and store.batch_prices(BROKER, 1, 1) == []
    assert store.latest_batch_prices(BROKER) == {} and store.signed_digest(CID, 0) is None
    assert store.pending(CID) is None and store.meta("ns", "k") is None
    # ... and the store still works afterwards
    store.put_meta("ns", "k", 2)
    assert store.meta("ns", "k") == 2


def test_rollback_restores_overwritten_values(store: Store) -> None:
    fill(store)
    before = snapshot(store)
    with pytest.raises(RuntimeError), store.transaction():
        store.put_channel(ChannelRecord(CID, PARAMS, {"role": "broker"}))
        store.put_state(state_v(1, 900), None, sig(2))
        store.put_state(state_v(5), sig(1), sig(2))
        store.put_batch_price(price(batch=U64, value=1))
        store.put_pending(CID, None)
        store.put_meta("batches", "1", None)
        store.put_meta("batches", "2", 5)
        raise RuntimeError
    assert snapshot(store) == before


def test_nested_transactions_join_the_outer_one(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.put_meta("ns", "outer", 1)
        with store.transaction():
            store.put_meta("ns", "inner", 1)
        assert store.meta("ns", "inner") == 1
        raise RuntimeError
    assert store.meta_items("ns") == {}


def test_a_failed_nested_transaction_undoes_only_its_own_writes(store: Store) -> None:
    store.put_state(state_v(1), sig(1), None)
    with store.transaction():
        store.put_meta("ns", "outer", 1)
        with pytest.raises(StoreError), store.transaction():
            store.put_meta("ns", "inner", 1)
            store.put_state(state_v(1, 5), None, None)  # refused: a different state for version 1
        store.put_meta("ns", "after", 1)
    assert store.meta_items("ns") == {"after": 1, "outer": 1}


def test_a_transaction_excludes_other_threads(store: Store) -> None:
    """Another thread's write waits for the transaction instead of joining (and dying with) it."""
    other = threading.Thread(target=lambda: store.put_meta("ns", "other thread", 1))
    with pytest.raises(RuntimeError), store.transaction():
        store.put_meta("ns", "mine", 1)
        other.start()
        time.sleep(0.05)
        assert store.meta("ns", "other thread") is None
        raise RuntimeError
    other.join(5)
    assert store.meta_items("ns") == {"other thread": 1}


def test_concurrent_writers(store: Store) -> None:
    def write(thread: int) -> None:
        for i in range(10):
            with store.transaction():
                store.put_meta("ns", f"{thread}-{i}", i)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(store.meta_items("ns")) == 40


def test_writes_commit_on_their_own_or_with_their_transaction(path: Path) -> None:
    with SQLiteStore(path) as s, sqlite3.connect(path) as reader:

        def committed() -> int:
            count: int = reader.execute("SELECT count(*) FROM meta").fetchone()[0]
            return count

        s.put_meta("ns", "a", 1)
        assert committed() == 1
        with s.transaction():
            s.put_meta("ns", "b", 1)
            with s.transaction():
                s.put_meta("ns", "c", 1)
            assert committed() == 1
        assert committed() == 3


# --------------------------------------------------------------------------- orders


def test_orders(store: Store) -> None:
    store.put_order(stored_order(nonce=5))
    store.put_order(stored_order(nonce=U64))
    store.put_order(stored_order(nonce=2))
    store.put_order(stored_order(nonce=5))  # same content: a no-op
    assert [o.nonce for o in store.orders(CID)] == [5, U64, 2]
    with pytest.raises(StoreError):
        store.put_order(stored_order(nonce=5, amount=1))
    with pytest.raises(StoreError):
        store.put_order(stored_order(nonce=5, n=9))
    assert store.orders(CID)[0] == stored_order(nonce=5)
    assert store.orders(OTHER_PARAMS.channel_id) == []


def test_stored_order_must_match_its_order(store: Store) -> None:
    good = stored_order(nonce=5)
    with pytest.raises(ValidationError):
        store.put_order(replace(good, nonce=6))
    with pytest.raises(ValidationError):
        store.put_order(replace(good, channel_id=OTHER_PARAMS.channel_id))


# --------------------------------------------------------------------------- batch prices


def test_two_prices_for_one_batch_are_both_kept(store: Store) -> None:
    assert store.put_batch_price(price(batch=7, value=100))
    assert not store.put_batch_price(price(batch=7, value=100))  # identical duplicate
    assert store.put_batch_price(price(batch=7, value=101, n=2))  # equivocation: kept as evidence
    assert [p.price.price for p in store.batch_prices(BROKER, 1, 7)] == [100, 101]
    assert store.batch_prices(BROKER, 2, 7) == [] and store.batch_prices(addr(0x99), 1, 7) == []


def test_latest_batch_prices(store: Store) -> None:
    assert store.latest_batch_prices(BROKER) == {}
    store.put_batch_price(price(market=1, batch=9))
    store.put_batch_price(price(market=1, batch=10, value=1))  # 10 > 9 numerically
    store.put_batch_price(price(market=1, batch=10, value=2, n=2))  # same batch: the first one stays
    store.put_batch_price(price(market=1, batch=3))  # older, arriving late
    store.put_batch_price(price(market=2, batch=U64))
    store.put_batch_price(price(market=1, batch=11, broker=addr(0x99)))  # another broker
    latest = store.latest_batch_prices(BROKER)
    assert latest == {1: price(market=1, batch=10, value=1), 2: price(market=2, batch=U64)}


def test_broker_addresses_are_checksummed(store: Store) -> None:
    store.put_batch_price(price(broker=BROKER.lower()))
    assert store.batch_prices(BROKER.lower(), 1, 1) == [price()]
    assert store.latest_batch_prices(BROKER)[1].broker == BROKER
    with pytest.raises(ValidationError):
        store.put_batch_price(price(broker="0x1234"))


# --------------------------------------------------------------------------- pending, meta


def test_pending(store: Store) -> None:
    assert store.pending(CID) is None
    store.put_pending(CID, {"type": "propose", "state": ["1"]})
    store.put_pending(CID, {"type": "propose", "state": ["2"]})
    assert store.pending(CID) == {"type": "propose", "state": ["2"]}
    store.put_pending(CID, None)
    assert store.pending(CID) is None
    store.put_pending(CID, None)  # clearing nothing is fine
    with pytest.raises(ValidationError):
        store.put_pending(CID, ["not", "an", "object"])  # type: ignore[arg-type]


def test_meta(store: Store) -> None:
    store.put_meta("batches", "2", {"next": "4"})
    store.put_meta("batches", "1", [1, "x", True, None, 1.5])
    store.put_meta("other", "1", "y")
    assert store.meta("batches", "1") == [1, "x", True, None, 1.5]
    assert store.meta("batches", "3") is None
    assert list(store.meta_items("batches")) == ["1", "2"]
    store.put_meta("batches", "2", None)
    assert store.meta_items("batches") == {"1": [1, "x", True, None, 1.5]}
    assert store.meta_items("other") == {"1": "y"} and store.meta_items("none") == {}


# --------------------------------------------------------------------------- never sign twice


def test_store_is_a_signed_version_log(store: Store) -> None:
    log: SignedVersionLog = store
    signer = StateSigner(LocalSigner.generate(), DOMAIN, log=log)
    first = signer.sign_state(state_v(1))
    assert store.signed_digest(CID, 1) == DOMAIN.state_digest(state_v(1))
    assert signer.sign_state(state_v(1)) == first
    with pytest.raises(DoubleSignError):
        signer.sign_state(state_v(1, 999))
    with pytest.raises(StoreError):
        store.record_signed(CID, 1, b"\x00" * 32)
    store.record_signed(CID, 1, DOMAIN.state_digest(state_v(1)))  # the same digest again: a no-op


def test_never_sign_twice_survives_a_restart(path: Path) -> None:
    key = LocalSigner.generate().private_key
    with SQLiteStore(path) as s:
        first = StateSigner(LocalSigner(key), DOMAIN, log=s).sign_state(state_v(1))
    with SQLiteStore(path) as s:
        signer = StateSigner(LocalSigner(key), DOMAIN, log=s)
        with pytest.raises(DoubleSignError):
            signer.sign_state(state_v(1, 999))
        assert signer.sign_state(state_v(1)) == first


# --------------------------------------------------------------------------- lifetime


def test_closed_store_refuses_everything(store: Store) -> None:
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError):
        store.channels()
    with pytest.raises(StoreError):
        store.put_meta("ns", "k", 1)


def test_close_inside_a_transaction_is_refused(store: Store) -> None:
    with store.transaction():
        with pytest.raises(StoreError):
            store.close()
        store.put_meta("ns", "k", 1)
    assert store.meta("ns", "k") == 1


def test_open_store(path: Path) -> None:
    assert isinstance(open_store(None), MemoryStore)
    assert isinstance(open_store(":memory:"), MemoryStore)
    with open_store(str(path)) as s:
        assert isinstance(s, SQLiteStore)


def test_error_codes() -> None:
    assert issubclass(StoreLockedError, StoreError) and issubclass(StoreCorruptError, StoreError)
    assert issubclass(StoreError, TradingChannelsError)
    codes = (StoreError.code, StoreLockedError.code, StoreCorruptError.code)
    assert codes == ("store", "store_locked", "store_corrupt")


# --------------------------------------------------------------------------- SQLite: durability and pragmas


def test_data_survives_close_and_reopen(path: Path) -> None:
    with SQLiteStore(path) as s:
        fill(s)
        before = snapshot(s)
    with SQLiteStore(path) as s:
        assert snapshot(s) == before
        assert s.put_batch_price(price(batch=U64)) is False  # still known after the restart
    memory = MemoryStore()
    fill(memory)
    assert snapshot(memory) == before  # and both implementations agree


def test_wal_and_synchronous_full_are_set(path: Path) -> None:
    with SQLiteStore(path) as s:
        conn = s._conn
        assert conn is not None
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    with SQLiteStore(path, synchronous="NORMAL") as s:
        assert s._conn is not None and s._conn.execute("PRAGMA synchronous").fetchone()[0] == 1
    with pytest.raises(ValidationError):
        SQLiteStore(path, synchronous="OFF")


def test_second_open_in_process_is_locked(path: Path) -> None:
    first = SQLiteStore(path)
    with pytest.raises(StoreLockedError, match="another process is using this store") as info:
        SQLiteStore(path)
    assert info.value.code == "store_locked"
    first.put_meta("ns", "k", 1)  # the failed open did not disturb the first store
    first.close()
    with SQLiteStore(path) as s:
        assert s.meta("ns", "k") == 1


CHILD_OPEN = """
import sys
from offchain.store import SQLiteStore, StoreLockedError
try:
    SQLiteStore(sys.argv[1]).close()
except StoreLockedError as exc:
    print(exc.code)
else:
    print("opened")
"""

CHILD_HOLD = """
import sys, time
from offchain.store import SQLiteStore
store = SQLiteStore(sys.argv[1])
store.put_meta("child", "committed", True)
print("ready", flush=True)
time.sleep(60)
"""


def run_child(code: str, path: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout.strip()


def test_file_lock_across_processes_and_after_kill_9(path: Path) -> None:
    with SQLiteStore(path):
        assert run_child(CHILD_OPEN, path) == "store_locked"
    holder = subprocess.Popen(
        [sys.executable, "-c", CHILD_HOLD, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLockedError):
            SQLiteStore(path)
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(10) == -signal.SIGKILL
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    with SQLiteStore(path) as s:  # no stale lock, and the child's committed write is there
        assert s.meta("child", "committed") is True


# --------------------------------------------------------------------------- SQLite: corruption


def corrupt(path: Path, sql: str) -> None:
    with sqlite3.connect(path) as raw:
        raw.execute(sql)
    raw.close()


def test_corrupt_rows_are_reported_with_table_and_key(path: Path) -> None:
    with SQLiteStore(path) as s:
        fill(s)
    corrupt(path, "UPDATE channels SET meta = '{not json'")
    corrupt(path, "UPDATE states SET body = '[\"0\", {}, [], []]' WHERE version = 0")
    corrupt(path, "UPDATE meta SET value = 'nope'")
    corrupt(path, "UPDATE orders SET body = '{}'")
    corrupt(path, "UPDATE batch_prices SET price = 'x'")
    with SQLiteStore(path) as s:
        with pytest.raises(StoreCorruptError, match=rf"channels \(channel 0x{CID.hex()}\): bad JSON") as info:
            s.channel(CID)
        assert info.value.code == "store_corrupt"
        with pytest.raises(StoreCorruptError, match=rf"states \(channel 0x{CID.hex()}, version 0\)"):
            s.latest_co_signed(CID)
        with pytest.raises(StoreCorruptError, match=r"meta \(batches/1\)"):
            s.meta_items("batches")
        with pytest.raises(StoreCorruptError, match="orders"):
            s.orders(CID)
        with pytest.raises(StoreCorruptError, match="batch_prices"):
            s.latest_batch_prices(BROKER)
        latest = s.latest_state(CID)  # the rows that are intact still read
        assert latest is not None and latest.state == state_v(1, 900)


def test_newer_schema_is_refused(path: Path) -> None:
    SQLiteStore(path).close()
    corrupt(path, "PRAGMA user_version = 2")
    for _ in range(2):  # the failed open released its lock: the second attempt fails the same way
        with pytest.raises(StoreCorruptError, match="schema version 2"):
            SQLiteStore(path)


def test_not_a_database_is_refused(path: Path) -> None:
    path.write_bytes(b"this is not an SQLite file at all" * 100)
    with pytest.raises(StoreCorruptError):
        SQLiteStore(path)


# --------------------------------------------------------------------------- batch prices between two batches


def test_batch_prices_between_returns_a_range_by_batch_then_arrival(store: Store) -> None:
    for batch in (12, 3, 9, 10, 100, 2):  # arriving out of order; 10 and 100 sort after 9 numerically
        store.put_batch_price(price(batch=batch, value=batch))
    store.put_batch_price(price(batch=9, value=1, n=2))  # a second price for batch 9, stored later
    store.put_batch_price(price(market=2, batch=5, value=5))  # another market
    store.put_batch_price(price(batch=6, value=6, broker=addr(0x99)))  # another broker

    def batches(first: int, last: int, market: int = 1, broker: str = BROKER) -> list[tuple[int, int]]:
        return [(p.price.batch, p.price.price) for p in store.batch_prices_between(broker, market, first, last)]

    assert batches(3, 10) == [(3, 3), (9, 9), (9, 1), (10, 10)]  # both ends included
    assert batches(4, 8) == []
    assert batches(9, 9) == [(9, 9), (9, 1)]
    assert batches(0, U64) == [(2, 2), (3, 3), (9, 9), (9, 1), (10, 10), (12, 12), (100, 100)]
    assert batches(11, 2) == []  # an empty range
    assert batches(0, U64, market=2) == [(5, 5)]
    assert batches(0, U64, market=3) == []
    assert batches(0, U64, broker=addr(0x99)) == [(6, 6)]
    assert batches(0, U64, broker=addr(0x98)) == []
    # Each record is the stored one, signature included.
    assert store.batch_prices_between(BROKER, 1, 9, 9) == [price(batch=9, value=9), price(batch=9, value=1, n=2)]
    assert store.batch_prices_between(BROKER, 1, 9, 9) == store.batch_prices(BROKER, 1, 9)


def test_batch_prices_between_at_the_ends_of_the_batch_numbers(store: Store) -> None:
    store.put_batch_price(price(batch=0, value=1))
    store.put_batch_price(price(batch=U64, value=2))
    store.put_batch_price(price(batch=U64 - 1, value=3))
    assert [p.price.price for p in store.batch_prices_between(BROKER, 1, 0, U64)] == [1, 3, 2]
    assert [p.price.price for p in store.batch_prices_between(BROKER, 1, U64, U64)] == [2]
    assert [p.price.price for p in store.batch_prices_between(BROKER, 1, 0, 0)] == [1]
    assert [p.price.price for p in store.batch_prices_between(BROKER, 1, 1, U64 - 1)] == [3]


def test_batch_prices_between_normalises_the_broker_and_checks_bounds(store: Store) -> None:
    store.put_batch_price(price(batch=4))
    assert store.batch_prices_between(BROKER.lower(), 1, 0, 10) == [price(batch=4)]
    with pytest.raises(ValidationError):
        store.batch_prices_between("0x1234", 1, 0, 10)
    for market, first, last in ((2**32, 0, 1), (-1, 0, 1), (1, -1, 1), (1, 0, 2**64), (1, 2**64, 2**64)):
        with pytest.raises(BoundsError):
            store.batch_prices_between(BROKER, market, first, last)


def test_batch_prices_between_sees_only_committed_writes(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.put_batch_price(price(batch=5))
        assert store.batch_prices_between(BROKER, 1, 0, 10) == [price(batch=5)]  # inside: visible
        raise RuntimeError("abort")
    assert store.batch_prices_between(BROKER, 1, 0, 10) == []


def test_batch_prices_between_survives_a_restart_and_reports_corrupt_rows(path: Path) -> None:
    with SQLiteStore(path) as s:
        s.put_batch_price(price(batch=7, value=70))
        s.put_batch_price(price(batch=8, value=80))
    with SQLiteStore(path) as s:
        assert [p.price.price for p in s.batch_prices_between(BROKER, 1, 0, U64)] == [70, 80]
    corrupt(path, "UPDATE batch_prices SET price = 'x' WHERE batch = '00000000000000000008'")
    with SQLiteStore(path) as s:
        assert s.batch_prices_between(BROKER, 1, 0, 7) == [price(batch=7, value=70)]
        where = r"batch_prices \(broker .*, market 1, batch 00000000000000000008\)"
        with pytest.raises(StoreCorruptError, match=where):
            s.batch_prices_between(BROKER, 1, 0, 8)


# --------------------------------------------------------------------------- the fast paths of the memory store


def test_an_equal_state_object_merges_like_the_same_one(store: Store) -> None:
    first, twin = state_v(3), state_v(3)
    assert first == twin and first is not twin
    store.put_state(first, sig(1), None)
    store.put_state(twin, None, sig(2))  # equal content: accepted, signatures merged
    stored = store.state(CID, 3)
    assert stored is not None and stored.co_signed and stored.state == first
    with pytest.raises(StoreError):
        store.put_state(state_v(3, 999), None, None)


def test_a_refused_write_inside_a_transaction_keeps_the_transaction_s_other_writes(store: Store) -> None:
    store.put_state(state_v(1), sig(1), None)
    store.record_signed(CID, 1, b"\x11" * 32)
    with store.transaction():
        store.put_meta("ns", "before", 1)
        store.put_state(state_v(2), None, None)
        with pytest.raises(StoreError):
            store.put_state(state_v(1, 5), None, None)  # a different state for version 1
        with pytest.raises(StoreError):
            store.record_signed(CID, 1, b"\x22" * 32)  # a different digest for version 1
        with pytest.raises(BoundsError):
            store.put_state(state_v(3, 2**63), None, None)
        store.put_meta("ns", "after", 1)
    assert store.meta_items("ns") == {"after": 1, "before": 1}
    assert store.latest_state(CID) is not None and store.latest_state(CID).state == state_v(2)  # type: ignore[union-attr]
    assert store.signed_digest(CID, 1) == b"\x11" * 32 and store.state(CID, 3) is None


def test_writes_of_a_failed_transaction_are_undone_also_the_single_write_methods(store: Store) -> None:
    store.put_pending(CID, {"m": 0})
    with pytest.raises(RuntimeError), store.transaction():
        store.put_state(state_v(1), sig(1), sig(2))
        store.record_signed(CID, 1, b"\x11" * 32)
        store.put_pending(CID, None)
        store.put_channel(ChannelRecord(CID, PARAMS, {"x": 1}))
        raise RuntimeError
    assert store.state(CID, 1) is None and store.latest_co_signed(CID) is None
    assert store.signed_digest(CID, 1) is None and store.pending(CID) == {"m": 0} and store.channels() == []


def test_memory_store_keeps_no_undo_outside_transactions() -> None:
    store = MemoryStore()
    store.put_channel(ChannelRecord(CID, PARAMS, {}))
    store.put_state(state_v(1), sig(1), None)
    store.put_state(state_v(1), None, sig(2))
    store.record_signed(CID, 1, b"\x11" * 32)
    store.put_pending(CID, {"m": 1})
    store.put_pending(CID, None)
    assert store._undo == [] and store._depth == 0
    store.close()
    with pytest.raises(StoreError):
        store.put_state(state_v(2), None, None)
    with pytest.raises(StoreError):
        store.record_signed(CID, 2, b"\x11" * 32)
