"""The default durable store: one SQLite file in WAL mode.

Durability: ``PRAGMA synchronous=FULL`` by default, so a commit has reached the disk (the WAL is
fsynced) when the write method, or the outermost :meth:`SQLiteStore.transaction`, returns. A
party that is killed (even with ``kill -9``) between any two steps restarts from what was
committed; an uncommitted transaction leaves no trace.

Exclusivity: an ``flock(LOCK_EX | LOCK_NB)`` on ``<path>.lock`` is held from opening until
:meth:`SQLiteStore.close`. A second store on the same file, in this process or another, raises
:class:`StoreLockedError` at once. The kernel drops the lock when the holder dies, so a killed
process never leaves a stale lock behind (the lock file itself stays; it is never deleted, as
deleting lock files races with the next opener).

Encoding: bytes are BLOBs; states, orders, params and agent JSON are canonical JSON text whose
amounts are already decimal strings. Versions (< 2^48) are INTEGER, which sorts numerically.
Order nonces and batch numbers go up to 2^64 - 1, beyond SQLite's signed 64-bit INTEGER, so they
are TEXT of exactly 20 zero-padded decimal digits, which sorts like the numbers do.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from types import TracebackType
from typing import Any, Self

import orjson

from offchain.crashpoints import crash_point
from offchain.errors import ValidationError
from offchain.model import BatchPrice, ChannelParams, ChannelState, Order, check_amount, check_uint32
from offchain.store.base import (
    ChannelRecord,
    StoreCorruptError,
    StoredBatchPrice,
    StoredOrder,
    StoredState,
    StoreError,
    StoreLockedError,
    check_bytes,
    check_channel_record,
    check_stored_batch_price,
    check_stored_order,
    check_stored_state,
    check_stored_state_signatures,
    check_str,
    check_version,
    encode_json,
    normalise_broker,
)
from offchain.types import BatchNumber, ChannelId, MarketId, Price

SCHEMA_VERSION = 1
"""Kept in ``PRAGMA user_version``; a file with a higher number is refused (StoreCorruptError)."""

SYNCHRONOUS_LEVELS = {"NORMAL": 1, "FULL": 2, "EXTRA": 3}

_SCHEMA = (
    # seq is the rowid: channels() lists them in the order first stored (nothing is ever deleted).
    """CREATE TABLE IF NOT EXISTS channels (
        seq INTEGER PRIMARY KEY,
        channel_id BLOB NOT NULL UNIQUE,
        params TEXT NOT NULL,
        meta TEXT NOT NULL
    )""",
    # version < 2^48: INTEGER holds it and ORDER BY version is numeric.
    """CREATE TABLE IF NOT EXISTS states (
        channel_id BLOB NOT NULL,
        version INTEGER NOT NULL,
        is_final INTEGER NOT NULL,
        body TEXT NOT NULL,
        trader_signature BLOB,
        broker_signature BLOB,
        PRIMARY KEY (channel_id, version)
    )""",
    """CREATE TABLE IF NOT EXISTS signed (
        channel_id BLOB NOT NULL,
        version INTEGER NOT NULL,
        digest BLOB NOT NULL,
        PRIMARY KEY (channel_id, version)
    ) WITHOUT ROWID""",
    # nonce < 2^64: 20-digit zero-padded TEXT (see the module docstring).
    """CREATE TABLE IF NOT EXISTS orders (
        seq INTEGER PRIMARY KEY,
        channel_id BLOB NOT NULL,
        nonce TEXT NOT NULL,
        body TEXT NOT NULL,
        signature BLOB NOT NULL,
        UNIQUE (channel_id, nonce)
    )""",
    # batch < 2^64: 20-digit zero-padded TEXT, so batch comparisons and ORDER BY batch are numeric.
    # price: canonical decimal TEXT. Several rows per (broker, market, batch) are allowed on purpose.
    """CREATE TABLE IF NOT EXISTS batch_prices (
        seq INTEGER PRIMARY KEY,
        broker TEXT NOT NULL,
        market INTEGER NOT NULL,
        batch TEXT NOT NULL,
        price TEXT NOT NULL,
        signature BLOB NOT NULL,
        UNIQUE (broker, market, batch, price, signature)
    )""",
    # Per (broker, market) the row latest_batch_prices() returns, maintained on insert.
    """CREATE TABLE IF NOT EXISTS latest_batch_prices (
        broker TEXT NOT NULL,
        market INTEGER NOT NULL,
        seq INTEGER NOT NULL REFERENCES batch_prices (seq),
        PRIMARY KEY (broker, market)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS pending (
        channel_id BLOB PRIMARY KEY,
        message TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS meta (
        namespace TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (namespace, key)
    )""",
)

_STATE_COLUMNS = "channel_id, version, is_final, body, trader_signature, broker_signature"
_PRICE_COLUMNS = "broker, market, batch, price, signature"


def _u64_text(value: int) -> str:
    """A number < 2^64 as 20 zero-padded digits (sorts as the numbers do)."""
    return f"{value:020d}"


CACHE_ENTRIES = 4096
"""Entries of each of the store's small caches (see SQLiteStore.__init__)."""


def _remember(cache: OrderedDict[Any, Any], key: Any, value: Any) -> None:
    cache[key] = value
    cache.move_to_end(key)
    if len(cache) > CACHE_ENTRIES:
        cache.popitem(last=False)


def _canonical(value: Any, what: str) -> str:
    """``encode_json(value, what, check_round_trip=False)``, the same text, by orjson when it can:
    for the model's ``to_json()`` output and plain string maps (strings, lists, dicts with string
    keys; no floats), orjson's sorted compact output is json's byte for byte when it is ASCII
    (json escapes the rest; orjson also refuses ints beyond 64 bits)."""
    try:
        data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        data = b"\x80"
    if data.isascii():
        return data.decode("ascii")
    return encode_json(value, what, check_round_trip=False)


def _plain_strings(meta: object) -> bool:
    """``meta`` is a dict of strings to strings or lists of strings: it round-trips through JSON."""
    return type(meta) is dict and all(
        type(k) is str and (type(v) is str or (type(v) is list and all(type(x) is str for x in v)))
        for k, v in meta.items()
    )


def _key(channel_id: bytes) -> str:
    return "channel 0x" + channel_id.hex()


def _store_error(exc: sqlite3.Error) -> StoreError:
    if getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return StoreCorruptError(f"the database is corrupt: {exc}")
    return StoreError(f"SQLite: {exc}")


class _Transaction:
    """SQLiteStore.transaction(): a plain context manager (every update opens several)."""

    __slots__ = ("_store",)

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store

    def __enter__(self) -> None:
        self._store._begin()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._store._end(exc)


_NO_TRANSACTION: AbstractContextManager[None] = nullcontext()


class SQLiteStore:
    """A :class:`offchain.store.Store` in one SQLite file (WAL, ``synchronous`` FULL by default,
    exclusive file lock). One connection, shared by every thread under a re-entrant lock."""

    def __init__(self, path: str | os.PathLike[str], synchronous: str = "FULL") -> None:
        if not isinstance(synchronous, str) or synchronous.upper() not in SYNCHRONOUS_LEVELS:
            raise ValidationError(f"synchronous must be one of FULL, NORMAL, EXTRA; got {synchronous!r}")
        self.path = os.fspath(path)
        self.synchronous = synchronous.upper()
        self._lock = threading.RLock()
        self._depth = 0
        # Per nested level (depth 2, 3, ...) of the open transaction: None while no write has
        # happened in it (its savepoint is not created yet), else (savepoint name, owner). A
        # savepoint is created at the first write, once for every level still without one: no
        # write happened between their starts, so one savepoint marks all of them; the outermost
        # of them owns it (releases it), the others roll back to it.
        self._levels: list[tuple[str, bool] | None] = []
        # What this transaction wrote or read of the states and the signed-version log: exact
        # while it is open (BEGIN IMMEDIATE holds SQLite's write lock, and this connection is the
        # only writer), forgotten when it ends, on any rollback and on any SQLite error.
        self._tx_rows: dict[tuple[bytes, int], tuple[Any, ...]] = {}
        self._tx_digests: dict[tuple[bytes, int], bytes] = {}
        self._params_text: OrderedDict[int, tuple[ChannelParams, str]] = OrderedDict()
        # Bounded caches of what was just written or read (a party reads back the state it has
        # just stored): a state object already checked and encoded, by identity (states are
        # immutable; the entry holds the object, so its id is not reused while cached), and a row
        # already parsed, by (channel id, version), used only while the row's text is the same.
        self._encoded: OrderedDict[int, tuple[ChannelState, str]] = OrderedDict()
        self._parsed: OrderedDict[tuple[bytes, int], tuple[int, str, ChannelState]] = OrderedDict()
        self._conn: sqlite3.Connection | None = None
        self._lock_fd = self._acquire_file_lock()
        try:
            self._conn = self._connect()
        except BaseException:
            self._release_file_lock()
            raise

    # ------------------------------------------------------------------ opening and closing

    def _acquire_file_lock(self) -> int:
        lock_path = os.path.realpath(self.path) + ".lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open the lock file {lock_path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreLockedError(f"another process is using this store: {self.path}") from exc
            raise StoreError(f"cannot lock {lock_path}: {exc}") from exc
        return fd

    def _release_file_lock(self) -> None:
        if self._lock_fd >= 0:
            fd, self._lock_fd = self._lock_fd, -1
            with suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: journal_mode=WAL did not take (got {mode})")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            level = conn.execute("PRAGMA synchronous").fetchone()[0]
            if level != SYNCHRONOUS_LEVELS[self.synchronous]:
                raise StoreError(f"{self.path}: synchronous={self.synchronous} did not take (got {level})")
            conn.execute("PRAGMA foreign_keys=ON")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreCorruptError(
                    f"{self.path} has schema version {version}; this code knows versions up to {SCHEMA_VERSION}"
                )
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return conn
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, sqlite3.Error):
                raise _store_error(exc) from exc
            raise

    def close(self) -> None:
        """Close the database (checkpointing the WAL) and release the file lock. Idempotent.
        Raises StoreError if called inside a transaction."""
        with self._lock:
            if self._depth:
                raise StoreError("close() inside a transaction")
            conn, self._conn = self._conn, None
            try:
                if conn is not None:
                    conn.close()
            finally:
                self._release_file_lock()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # A store dropped without close() still releases its lock (best effort).
        with suppress(Exception):
            if self._conn is not None and not self._depth:
                self._conn.close()
            self._release_file_lock()

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the thread lock, with SQLite errors turned into StoreError."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreError("the store is closed")
            try:
                yield conn
            except sqlite3.Error as exc:
                self._forget()
                raise _store_error(exc) from exc

    def _read(self, sql: str, args: tuple[Any, ...]) -> Any:
        """The first row of a query (or None), under the thread lock; StoreError on SQLite errors."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreError("the store is closed")
            try:
                return conn.execute(sql, args).fetchone()
            except sqlite3.Error as exc:
                self._forget()
                raise _store_error(exc) from exc

    def _write(self, sql: str, args: tuple[Any, ...]) -> sqlite3.Cursor:
        """One write statement inside the open transaction (the caller holds the lock and is
        inside :meth:`transaction` or :meth:`_writing`): the savepoints of the levels without one
        are created first."""
        conn = self._conn
        if conn is None:
            raise StoreError("the store is closed")
        try:
            if self._levels and self._levels[-1] is None:
                self._materialise(conn)
            return conn.execute(sql, args)
        except sqlite3.Error as exc:
            self._forget()
            raise _store_error(exc) from exc

    def _materialise(self, conn: sqlite3.Connection) -> None:
        levels = self._levels
        first = len(levels) - 1
        while first > 0 and levels[first - 1] is None:
            first -= 1
        name = f"sp{first + 1}"
        conn.execute(f"SAVEPOINT {name}")
        levels[first] = (name, True)
        for i in range(first + 1, len(levels)):
            levels[i] = (name, False)

    def _forget(self) -> None:
        """Drop what the open transaction remembers (after a rollback or an error)."""
        self._tx_rows.clear()
        self._tx_digests.clear()

    def transaction(self) -> _Transaction:
        """One commit for every write inside (``BEGIN IMMEDIATE`` ... ``COMMIT``: one fsync). A
        nested call is a savepoint of the enclosing transaction (created at its first write: a
        nested block that writes nothing costs no statement). An exception leaving the block
        rolls back the block's writes and propagates; other threads wait until the block ends."""
        return _Transaction(self)

    def _writing(self) -> AbstractContextManager[None]:
        """What a write method of one statement runs in (the caller holds the lock): its own
        transaction when none is open, else nothing more (a failing statement leaves no trace,
        SQLite undoes it, so it needs no savepoint of its own)."""
        return self.transaction() if self._depth == 0 else _NO_TRANSACTION

    def _begin(self) -> None:
        self._lock.acquire()
        try:
            conn = self._conn
            if conn is None:
                raise StoreError("the store is closed")
            depth = self._depth
            if depth == 0:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as exc:
                    raise _store_error(exc) from exc
                self._forget()
            else:
                if not conn.in_transaction:
                    # SQLite rolled the enclosing transaction back by itself (some I/O errors do, e.g.
                    # in a savepoint that failed and was caught): a write now would commit on its own.
                    raise StoreError(f"{self.path}: the enclosing transaction was rolled back by SQLite")
                self._levels.append(None)
            self._depth = depth + 1
        except BaseException:
            self._lock.release()
            raise

    def _end(self, exc: BaseException | None) -> None:
        """Leave the innermost level: commit or release it, or roll it back if ``exc``."""
        try:
            conn = self._conn
            assert conn is not None  # close() refuses to run inside a transaction
            depth = self._depth - 1
            self._depth = depth
            if depth == 0:
                if exc is not None:
                    self._forget()
                    with suppress(sqlite3.Error):
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                else:
                    crash_point("store.before_commit")
                    try:
                        conn.execute("COMMIT")
                    except sqlite3.Error as error:
                        self._forget()
                        with suppress(sqlite3.Error):
                            if conn.in_transaction:
                                conn.execute("ROLLBACK")
                        raise _store_error(error) from error
                    self._forget()
                    crash_point("store.after_commit")
            else:
                level = self._levels.pop()
                if level is None:
                    pass  # nothing was written at this level: nothing to release or undo
                elif exc is not None:
                    self._forget()
                    name, owner = level
                    # SQLite may already have rolled back by itself (some I/O errors do).
                    with suppress(sqlite3.Error):
                        conn.execute(f"ROLLBACK TO {name}")
                        if owner:
                            conn.execute(f"RELEASE {name}")
                elif level[1]:
                    try:
                        conn.execute(f"RELEASE {level[0]}")
                    except sqlite3.Error as error:
                        self._forget()
                        with suppress(sqlite3.Error):
                            conn.execute(f"ROLLBACK TO {level[0]}")
                            conn.execute(f"RELEASE {level[0]}")
                        raise _store_error(error) from error
            if isinstance(exc, sqlite3.Error):
                raise _store_error(exc) from exc
        finally:
            self._lock.release()

    def _corrupt(self, table: str, key: str, detail: object) -> StoreCorruptError:
        return StoreCorruptError(f"{self.path}: unreadable row in {table} ({key}): {detail}")

    def _json(self, table: str, key: str, text: object) -> Any:
        if not isinstance(text, str):
            raise self._corrupt(table, key, f"expected JSON text, found {type(text).__name__}")
        try:
            return json.loads(text)
        except ValueError as exc:
            raise self._corrupt(table, key, f"bad JSON: {exc}") from exc

    # ------------------------------------------------------------------ channels

    def put_channel(self, record: ChannelRecord) -> None:
        if isinstance(record.params, ChannelParams) and _plain_strings(record.meta):
            # check_channel_record's checks (the others hold), its text by the fast encoder.
            check_bytes("channel_id", record.channel_id, 32)
            if record.params.channel_id != record.channel_id:
                raise ValidationError("channel_id is not the hash of params")
            meta = _canonical(record.meta, "channel meta")
        else:
            meta = check_channel_record(record)
        known = self._params_text.get(id(record.params))
        if known is not None and known[0] is record.params:
            params = known[1]  # this very (immutable) object was encoded before
        else:
            params = _canonical(record.params.to_json(), "params")
            _remember(self._params_text, id(record.params), (record.params, params))
        with self._lock, self._writing():
            self._write(
                "INSERT INTO channels (channel_id, params, meta) VALUES (?, ?, ?) "
                "ON CONFLICT (channel_id) DO UPDATE SET params = excluded.params, meta = excluded.meta",
                (record.channel_id, params, meta),
            )

    def channel(self, channel_id: bytes) -> ChannelRecord | None:
        with self._db() as conn:
            row = conn.execute(
                "SELECT channel_id, params, meta FROM channels WHERE channel_id = ?", (channel_id,)
            ).fetchone()
        return None if row is None else self._channel_record(row)

    def channels(self) -> list[ChannelRecord]:
        with self._db() as conn:
            rows = conn.execute("SELECT channel_id, params, meta FROM channels ORDER BY seq").fetchall()
        return [self._channel_record(row) for row in rows]

    def channel_ids(self) -> list[ChannelId]:
        with self._db() as conn:
            rows = conn.execute("SELECT channel_id FROM channels ORDER BY seq").fetchall()
        found = []
        for (channel_id,) in rows:
            if not isinstance(channel_id, bytes) or len(channel_id) != 32:
                raise self._corrupt("channels", repr(channel_id), "a channel id is not 32 bytes")
            found.append(ChannelId(channel_id))
        return found

    def _channel_record(self, row: tuple[Any, ...]) -> ChannelRecord:
        channel_id, params_text, meta_text = row
        key = _key(channel_id)
        try:
            params = ChannelParams.from_json(self._json("channels", key, params_text))
        except ValidationError as exc:
            raise self._corrupt("channels", key, exc.reason) from exc
        if params.channel_id != channel_id:
            raise self._corrupt("channels", key, "params hash to another channel id")
        meta = self._json("channels", key, meta_text)
        if not isinstance(meta, dict):
            raise self._corrupt("channels", key, "meta is not a JSON object")
        return ChannelRecord(channel_id=channel_id, params=params, meta=meta)

    # ------------------------------------------------------------------ states

    def put_state(self, state: ChannelState, trader_signature: bytes | None, broker_signature: bytes | None) -> None:
        known = self._encoded.get(id(state))
        if known is not None and known[0] is state:
            # This very object was checked and encoded before (it is immutable): only the signatures.
            check_stored_state_signatures(trader_signature, broker_signature)
            text = known[1]
        else:
            check_stored_state(state, trader_signature, broker_signature)
            text = _canonical(state.to_json(), "state")
            _remember(self._encoded, id(state), (state, text))
        channel_id, version, is_final = state.channel_id, state.version, int(state.is_final)
        key = (channel_id, version)
        with self._lock, self._writing():
            row = self._tx_rows.get(key)
            if row is None:
                cursor = self._write(
                    f"INSERT INTO states ({_STATE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (channel_id, version) DO NOTHING",
                    (channel_id, version, is_final, text, trader_signature, broker_signature),
                )
                if cursor.rowcount == 1:
                    self._tx_rows[key] = (channel_id, version, is_final, text, trader_signature, broker_signature)
                    _remember(self._parsed, key, (is_final, text, state))
                    return
                row = self._read(f"SELECT {_STATE_COLUMNS} FROM states WHERE channel_id = ? AND version = ?", key)
                assert row is not None  # the insert met this row (nothing deletes states)
            where = f"{_key(channel_id)}, version {version}"
            # The same canonical text is the same state; another text may still be the same JSON.
            if row[2] != is_final or (
                row[3] != text and self._json("states", where, row[3]) != self._json("states", where, text)
            ):
                raise StoreError(f"refusing to overwrite the stored state of {where} with a different one")
            if trader_signature is not None or broker_signature is not None:
                self._write(
                    "UPDATE states SET trader_signature = COALESCE(?, trader_signature), "
                    "broker_signature = COALESCE(?, broker_signature) WHERE channel_id = ? AND version = ?",
                    (trader_signature, broker_signature, channel_id, version),
                )
                row = (
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                    row[4] if trader_signature is None else trader_signature,
                    row[5] if broker_signature is None else broker_signature,
                )
            self._tx_rows[key] = row

    def state(self, channel_id: bytes, version: int) -> StoredState | None:
        check_version(version)
        with self._lock:
            row = self._tx_rows.get((channel_id, version)) if self._depth else None
            if row is None:
                row = self._read(
                    f"SELECT {_STATE_COLUMNS} FROM states WHERE channel_id = ? AND version = ?", (channel_id, version)
                )
                if row is not None and self._depth:
                    self._tx_rows[(channel_id, version)] = row
        return None if row is None else self._stored_state(row)

    def latest_state(self, channel_id: bytes) -> StoredState | None:
        with self._db() as conn:
            row = conn.execute(
                f"SELECT {_STATE_COLUMNS} FROM states WHERE channel_id = ? ORDER BY version DESC LIMIT 1",
                (channel_id,),
            ).fetchone()
        return None if row is None else self._stored_state(row)

    def latest_co_signed(self, channel_id: bytes) -> StoredState | None:
        with self._db() as conn:
            row = conn.execute(
                f"SELECT {_STATE_COLUMNS} FROM states WHERE channel_id = ? "
                "AND trader_signature IS NOT NULL AND broker_signature IS NOT NULL "
                "ORDER BY version DESC LIMIT 1",
                (channel_id,),
            ).fetchone()
        return None if row is None else self._stored_state(row)

    def _stored_state(self, row: tuple[Any, ...]) -> StoredState:
        channel_id, version, is_final, body, trader_signature, broker_signature = row
        key = f"{_key(channel_id)}, version {version}"
        if is_final not in (0, 1):
            raise self._corrupt("states", key, f"is_final is {is_final!r}")
        known = self._parsed.get((channel_id, version)) if isinstance(channel_id, bytes) else None
        if known is not None and known[0] == is_final and known[1] == body:
            state = known[2]  # the row holds exactly the text this state was stored or read as
        else:
            try:
                state = ChannelState.from_json(ChannelId(channel_id), bool(is_final), self._json("states", key, body))
            except ValidationError as exc:
                raise self._corrupt("states", key, exc.reason) from exc
            if state.version != version:
                raise self._corrupt("states", key, f"the body has version {state.version}")
            if isinstance(body, str):
                _remember(self._parsed, (channel_id, version), (is_final, body, state))
        for signature in (trader_signature, broker_signature):
            if signature is not None and not isinstance(signature, bytes):
                raise self._corrupt("states", key, "a signature is not a BLOB")
        return StoredState(state, trader_signature, broker_signature)

    # ------------------------------------------------------------------ signed versions

    def signed_digest(self, channel_id: bytes, version: int) -> bytes | None:
        check_version(version)
        with self._lock:
            known = self._tx_digests.get((channel_id, version)) if self._depth else None
            if known is not None:
                return known
            row = self._read("SELECT digest FROM signed WHERE channel_id = ? AND version = ?", (channel_id, version))
            if row is None:
                return None
            if not isinstance(row[0], bytes):
                raise self._corrupt("signed", f"{_key(channel_id)}, version {version}", "digest is not a BLOB")
            if self._depth:
                self._tx_digests[(channel_id, version)] = row[0]
            return row[0]

    def record_signed(self, channel_id: bytes, version: int, digest: bytes) -> None:
        check_bytes("channel_id", channel_id, 32)
        check_bytes("digest", digest, 32)
        check_version(version)
        with self._lock, self._writing():
            previous = self._tx_digests.get((channel_id, version))
            if previous is None:
                cursor = self._write(
                    "INSERT INTO signed (channel_id, version, digest) VALUES (?, ?, ?) "
                    "ON CONFLICT (channel_id, version) DO NOTHING",
                    (channel_id, version, digest),
                )
                if cursor.rowcount == 1:
                    self._tx_digests[(channel_id, version)] = digest
                    return
                previous = self.signed_digest(channel_id, version)
            if previous != digest:
                raise StoreError(
                    f"{_key(channel_id)}, version {version}: a different digest is already recorded as signed"
                )

    # ------------------------------------------------------------------ orders

    def put_order(self, order: StoredOrder) -> None:
        check_stored_order(order)
        body = order.order.to_json()
        nonce = _u64_text(order.nonce)
        with self._lock, self._writing():
            row = self._read(
                "SELECT body, signature FROM orders WHERE channel_id = ? AND nonce = ?", (order.channel_id, nonce)
            )
            if row is None:
                self._write(
                    "INSERT INTO orders (channel_id, nonce, body, signature) VALUES (?, ?, ?, ?)",
                    (order.channel_id, nonce, encode_json(body, "order", check_round_trip=False), order.signature),
                )
                return
            key = f"{_key(order.channel_id)}, nonce {order.nonce}"
            if self._json("orders", key, row[0]) != body or row[1] != order.signature:
                raise StoreError(f"refusing to overwrite the stored order of {key} with a different one")

    def orders(self, channel_id: bytes) -> list[StoredOrder]:
        with self._db() as conn:
            rows = conn.execute(
                "SELECT nonce, body, signature FROM orders WHERE channel_id = ? ORDER BY seq", (channel_id,)
            ).fetchall()
        result = []
        for nonce_text, body, signature in rows:
            key = f"{_key(channel_id)}, nonce {nonce_text}"
            try:
                order = Order.from_json(self._json("orders", key, body))
            except ValidationError as exc:
                raise self._corrupt("orders", key, exc.reason) from exc
            if _u64_text(order.nonce) != nonce_text or order.channel_id != channel_id:
                raise self._corrupt("orders", key, "the body is another order")
            if not isinstance(signature, bytes):
                raise self._corrupt("orders", key, "signature is not a BLOB")
            result.append(StoredOrder(channel_id, order.nonce, order, signature))
        return result

    # ------------------------------------------------------------------ batch prices

    def put_batch_price(self, price: StoredBatchPrice) -> bool:
        price = check_stored_batch_price(price)
        p = price.price
        batch = _u64_text(p.batch)
        with self.transaction():  # two writes: a level of its own
            cursor = self._write(
                f"INSERT OR IGNORE INTO batch_prices ({_PRICE_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                (price.broker, p.market, batch, str(p.price), price.signature),
            )
            if cursor.rowcount != 1:
                return False
            # Becomes the market's latest only with a strictly higher batch: on a tie the first stays.
            self._write(
                "INSERT INTO latest_batch_prices (broker, market, seq) VALUES (?, ?, ?) "
                "ON CONFLICT (broker, market) DO UPDATE SET seq = excluded.seq "
                "WHERE (SELECT batch FROM batch_prices WHERE seq = latest_batch_prices.seq) < ?",
                (price.broker, p.market, cursor.lastrowid, batch),
            )
            return True

    def batch_prices(self, broker: str, market: int, batch: int) -> list[StoredBatchPrice]:
        broker = normalise_broker(broker)
        check_uint32("market", market)
        check_amount("batch", batch)
        with self._db() as conn:
            rows = conn.execute(
                f"SELECT {_PRICE_COLUMNS} FROM batch_prices WHERE broker = ? AND market = ? AND batch = ? ORDER BY seq",
                (broker, market, _u64_text(batch)),
            ).fetchall()
        return [self._stored_price(row) for row in rows]

    def batch_prices_between(self, broker: str, market: int, first: int, last: int) -> list[StoredBatchPrice]:
        broker = normalise_broker(broker)
        check_uint32("market", market)
        check_amount("first", first)
        check_amount("last", last)
        with self._db() as conn:
            rows = conn.execute(
                f"SELECT {_PRICE_COLUMNS} FROM batch_prices WHERE broker = ? AND market = ? AND batch BETWEEN ? AND ? "
                "ORDER BY batch, seq",
                (broker, market, _u64_text(first), _u64_text(last)),
            ).fetchall()
        return [self._stored_price(row) for row in rows]

    def latest_batch_prices(self, broker: str) -> dict[int, StoredBatchPrice]:
        broker = normalise_broker(broker)
        with self._db() as conn:
            rows = conn.execute(
                "SELECT b.broker, b.market, b.batch, b.price, b.signature "
                "FROM latest_batch_prices AS l JOIN batch_prices AS b ON b.seq = l.seq "
                "WHERE l.broker = ? ORDER BY l.market",
                (broker,),
            ).fetchall()
        prices = [self._stored_price(row) for row in rows]
        return {p.price.market: p for p in prices}

    def _stored_price(self, row: tuple[Any, ...]) -> StoredBatchPrice:
        broker, market, batch, price, signature = row
        key = f"broker {broker}, market {market}, batch {batch}"
        try:
            if not (isinstance(batch, str) and isinstance(price, str)):
                raise ValidationError("batch and price must be TEXT")
            value = BatchPrice(MarketId(market), BatchNumber(int(batch)), Price(int(price))).check()
            check_bytes("signature", signature)
        except (ValueError, ValidationError) as exc:
            raise self._corrupt("batch_prices", key, exc) from exc
        return StoredBatchPrice(broker, value, signature)

    # ------------------------------------------------------------------ pending proposal

    def put_pending(self, channel_id: bytes, message: dict[str, Any] | None) -> None:
        check_bytes("channel_id", channel_id, 32)
        if message is not None and not isinstance(message, dict):
            raise ValidationError("a pending message must be a JSON object or None")
        text = None if message is None else encode_json(message, "pending message")
        with self._lock, self._writing():
            if text is None:
                self._write("DELETE FROM pending WHERE channel_id = ?", (channel_id,))
            else:
                self._write(
                    "INSERT INTO pending (channel_id, message) VALUES (?, ?) "
                    "ON CONFLICT (channel_id) DO UPDATE SET message = excluded.message",
                    (channel_id, text),
                )

    def pending(self, channel_id: bytes) -> dict[str, Any] | None:
        with self._db() as conn:
            row = conn.execute("SELECT message FROM pending WHERE channel_id = ?", (channel_id,)).fetchone()
        if row is None:
            return None
        message = self._json("pending", _key(channel_id), row[0])
        if not isinstance(message, dict):
            raise self._corrupt("pending", _key(channel_id), "not a JSON object")
        return message

    # ------------------------------------------------------------------ agent bookkeeping

    def put_meta(self, namespace: str, key: str, value: Any) -> None:
        check_str("namespace", namespace)
        check_str("key", key)
        text = None if value is None else encode_json(value, f"meta {namespace}/{key}")
        with self._lock, self._writing():
            if text is None:
                self._write("DELETE FROM meta WHERE namespace = ? AND key = ?", (namespace, key))
            else:
                self._write(
                    "INSERT INTO meta (namespace, key, value) VALUES (?, ?, ?) "
                    "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
                    (namespace, key, text),
                )

    def meta(self, namespace: str, key: str) -> Any | None:
        with self._db() as conn:
            row = conn.execute("SELECT value FROM meta WHERE namespace = ? AND key = ?", (namespace, key)).fetchone()
        return None if row is None else self._json("meta", f"{namespace}/{key}", row[0])

    def meta_items(self, namespace: str) -> dict[str, Any]:
        with self._db() as conn:
            rows = conn.execute("SELECT key, value FROM meta WHERE namespace = ? ORDER BY key", (namespace,)).fetchall()
        return {key: self._json("meta", f"{namespace}/{key}", value) for key, value in rows}
