"""The channel's data: parameters, state ``[increment, balances, open_orders, outcomes]``, orders,
batch prices, challenge authorisations. One-to-one with the Solidity structs in
contracts/ChannelTypes.sol.

Bounds (MISSION.md, "Money and numbers"), checked by :func:`check_state` and friends exactly as
the adjudicator checks them:

- balances, deposits, fees and positions stay in (-2^63, 2^63);
- order amounts, fills, nonces and batch numbers are < 2^64;
- market ids and expirations (hours since the epoch) are < 2^32;
- versions are < 2^48 (the adjudicator stores them packed).

JSON carries every amount as a decimal string; addresses as checksummed hex; bytes as 0x-hex.
"""

from __future__ import annotations

from binascii import a2b_hex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from offchain.errors import BoundsError, ValidationError
from offchain.types import (
    Address,
    BatchNumber,
    ChannelId,
    ExpirationHours,
    MarketId,
    Nonce,
    Price,
    Signature,
    SyntheticAmount,
    TokenAmount,
    Version,
)

MAX_BALANCE = 2**63 - 1
MAX_AMOUNT = 2**64 - 1
MAX_UINT32 = 2**32 - 1
MAX_VERSION = 2**48 - 1
MIN_CHALLENGE_DURATION = 3600
MAX_CHALLENGE_DURATION = 30 * 86400
MAX_MARKETS = 16
MAX_OPEN_ORDERS = 64
ZERO_ADDRESS = cast(Address, "0x0000000000000000000000000000000000000000")


def _fast_keccak() -> Callable[[bytes], bytes]:
    """keccak-256 from the fastest backend installed: pysha3's C type (safe-pysha3 wheel) costs
    under 1 us for a 66-byte message, pycryptodome through eth-hash about 6 us. Both give the
    same bytes (tests/unit/test_eip712.py compares them)."""
    try:
        from _pysha3 import keccak_256  # safe-pysha3, without sha3.py patching hashlib
    except ImportError:  # pragma: no cover - depends on what is installed
        from eth_hash.auto import keccak as slow

        return slow

    def keccak(data: bytes) -> bytes:
        return keccak_256(data).digest()  # type: ignore[no-any-return]

    return keccak


keccak: Callable[[bytes], bytes] = _fast_keccak()
"""keccak-256 of ``data`` (the hash of every EIP-712 struct, of channel parameters into ids, and
of public keys into addresses); offchain.eip712 re-exports it."""


# --------------------------------------------------------------------------- sharing
#
# A broker holds many channels whose parameters repeat: one chain, one adjudicator, one broker,
# one token, a few market lists. Values that are immutable and equal are interchangeable, so the
# parsing below hands out one object per distinct value from small caches, instead of a copy per
# channel (MISSION.md, "Bars": < 2 KiB per open channel). The caches are bounded: when one is
# full it is emptied, and the next values start it again; nothing depends on a value being in it.

_SHARED_CACHE_SIZE = 4096
_T = TypeVar("_T")


def _shared(cache: dict[Any, Any], value: _T) -> _T:
    """The object in ``cache`` equal to ``value`` (``value`` itself the first time)."""
    known = cache.get(value)
    if known is not None:
        return cast(_T, known)
    if len(cache) >= _SHARED_CACHE_SIZE:
        cache.clear()
    cache[value] = value
    return value


_MARKET_LISTS: dict[tuple[Market, ...], tuple[Market, ...]] = {}
_MARKET_HASHES: dict[tuple[Market, ...], bytes] = {}
_PARAM_VALUES: dict[tuple[Any, ...], tuple[Any, ...]] = {}
_NONCE_SETS: dict[frozenset[int], frozenset[int]] = {}
_CHANNEL_IDS: dict[bytes, bytes] = {}
_OUTCOME_LISTS: dict[tuple[Outcome, ...], tuple[Outcome, ...]] = {}


def shared_nonces(nonces: frozenset[int]) -> frozenset[int]:
    """``nonces``, or an equal frozenset already in use (a trader agent numbers its orders 1, 2,
    3, ..., so many channels have used the same nonces). Sets of more than 8 are not shared."""
    if not nonces:
        return _EMPTY_NONCES
    if len(nonces) > 8 or not all(type(n) is int for n in nonces):
        return nonces
    return _shared(_NONCE_SETS, nonces)


_EMPTY_NONCES: frozenset[int] = frozenset()


# --------------------------------------------------------------------------- bounds


def check_range(name: str, value: int, low: int, high: int) -> int:
    """Return ``value`` if it is an int (not a bool) in [low, high], else raise BoundsError."""
    if type(value) is int and low <= value <= high:  # the common case, in one test
        return value
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError(f"{name} must be an integer, got {type(value).__name__}")
    if value < low or value > high:
        raise BoundsError(f"{name}={value} is outside [{low}, {high}]")
    return value


def check_balance(name: str, value: int) -> int:
    return check_range(name, value, -MAX_BALANCE, MAX_BALANCE)


def check_non_negative_balance(name: str, value: int) -> int:
    return check_range(name, value, 0, MAX_BALANCE)


def check_amount(name: str, value: int) -> int:
    return check_range(name, value, 0, MAX_AMOUNT)


def check_uint32(name: str, value: int) -> int:
    return check_range(name, value, 0, MAX_UINT32)


def check_address(name: str, value: object) -> Address:
    """A 0x address, returned in its checksummed form. Mixed case must be a valid EIP-55 checksum
    (all-lowercase or all-uppercase hex carries no checksum and is accepted).

    The addresses met recently are remembered (input form -> checksummed form), and each
    checksummed address is one shared string: a broker's channels repeat the same few."""
    if type(value) is str:
        known = _ADDRESSES.get(value)
        if known is not None:
            return known
    return _check_new_address(name, value)


def _check_new_address(name: str, value: object) -> Address:
    if not isinstance(value, str) or len(value) != 42 or not value.startswith("0x"):
        raise ValidationError(f"{name} is not an address: {value!r}")
    digits = value[2:]
    if not _HEX_DIGITS.issuperset(digits):
        raise ValidationError(f"{name} is not an address: {value!r}")
    checksummed = checksum_address(bytes.fromhex(digits))
    if checksummed != value and digits != digits.lower() and digits != digits.upper():
        raise ValidationError(f"{name} has a wrong EIP-55 checksum: {value}")
    if type(value) is str:
        if len(_ADDRESSES) >= _SHARED_CACHE_SIZE:
            _ADDRESSES.clear()
        checksummed = _ADDRESSES.setdefault(checksummed, checksummed)
        _ADDRESSES[value] = checksummed
    return checksummed


_ADDRESSES: dict[str, Address] = {}


def checksum_address(raw: bytes) -> Address:
    """EIP-55 of a 20-byte address (eth_utils.to_checksum_address, without its generic input
    handling; tests/unit/test_model.py compares the two): hex digit i is upper case when nibble i
    of keccak256(the lower-case hex) is 8 or more. Done on whole byte strings rather than a
    Python loop over the 40 digits: a broker checksums every trader address it loads."""
    digits = raw.hex().encode()
    hashed = keccak(digits)[:20]
    high = bytearray(40)  # 0x20 (the ASCII case bit) where the nibble is 8 or more
    high[0::2] = hashed.translate(_HIGH_NIBBLE)
    high[1::2] = hashed.translate(_LOW_NIBBLE)
    flip = int.from_bytes(high, "big") & int.from_bytes(digits.translate(_LETTERS), "big")
    return cast(Address, "0x" + (int.from_bytes(digits, "big") - flip).to_bytes(40, "big").decode())


_HIGH_NIBBLE = bytes(0x20 if b & 0x80 else 0 for b in range(256))
_LOW_NIBBLE = bytes(0x20 if b & 0x08 else 0 for b in range(256))
_LETTERS = bytes(0x20 if chr(b) in "abcdef" else 0 for b in range(256))


# --------------------------------------------------------------------------- structures


@dataclass(frozen=True, slots=True)
class Market:
    """A market the channel may trade (fixed at opening)."""

    id: MarketId
    feed: Address
    resolution: int
    risk_factor: int  # 32-bit fixed point: risk = value * risk_factor / 2^32
    max_price_age: int  # seconds

    def check(self, index: int = 0) -> Market:
        where = f"markets[{index}]"
        check_uint32(f"{where}.id", self.id)
        check_address(f"{where}.feed", self.feed)
        if self.feed == ZERO_ADDRESS:
            raise ValidationError(f"{where}.feed is the zero address")
        check_range(f"{where}.resolution", self.resolution, 1, MAX_AMOUNT)
        check_uint32(f"{where}.risk_factor", self.risk_factor)
        check_range(f"{where}.max_price_age", self.max_price_age, 1, MAX_UINT32)
        return self

    def as_abi(self) -> tuple[int, str, int, int, int]:
        return (self.id, self.feed, self.resolution, self.risk_factor, self.max_price_age)

    def to_json(self) -> dict[str, str]:
        return {
            "id": str(self.id),
            "feed": self.feed,
            "resolution": str(self.resolution),
            "risk_factor": str(self.risk_factor),
            "max_price_age": str(self.max_price_age),
        }

    @classmethod
    def from_json(cls, data: object, index: int = 0) -> Market:
        obj = json_object(data, "market")
        return cls(
            id=MarketId(decimal_field(obj, "id")),
            feed=_address(obj, "feed"),
            resolution=decimal_field(obj, "resolution"),
            risk_factor=decimal_field(obj, "risk_factor"),
            max_price_age=decimal_field(obj, "max_price_age"),
        ).check(index)


@dataclass(frozen=True, slots=True)
class ChannelParams:
    """Fixed at opening; their hash is the channel id (MISSION.md, "The channel on-chain", 1):

    ``keccak256(abi.encode(chain_id, adjudicator, trader, broker, token, challenge_duration, nonce,
    len(markets), keccak256(abi.encode(markets))))``.
    """

    chain_id: int
    adjudicator: Address
    trader: Address
    broker: Address
    token: Address
    challenge_duration: int
    nonce: int
    markets: tuple[Market, ...]
    _channel_id: ChannelId = field(init=False, repr=False, compare=False, default=ChannelId(b""))

    def __post_init__(self) -> None:
        for name in ("adjudicator", "trader", "broker", "token"):
            object.__setattr__(self, name, check_address(name, getattr(self, name)))
        self.check()
        # What repeats from channel to channel (one chain, adjudicator, broker, token, a few
        # market lists) is held once: equal immutable values, shared (see _shared).
        if type(self.chain_id) is int and type(self.challenge_duration) is int and type(self.markets) is tuple:
            if all(type(m) is Market for m in self.markets):
                object.__setattr__(self, "markets", _shared(_MARKET_LISTS, self.markets))
            shared = (self.chain_id, self.adjudicator, self.broker, self.token, self.challenge_duration)
            chain_id, adjudicator, broker, token, challenge_duration = _shared(_PARAM_VALUES, shared)
            object.__setattr__(self, "chain_id", chain_id)
            object.__setattr__(self, "adjudicator", adjudicator)
            object.__setattr__(self, "broker", broker)
            object.__setattr__(self, "token", token)
            object.__setattr__(self, "challenge_duration", challenge_duration)
        # keccak256(abi.encode(chain_id, adjudicator, trader, broker, token, challenge_duration,
        # nonce, len(markets), markets_hash)): nine static words (checked in range above).
        channel_id = keccak(
            b"".join(
                (
                    self.chain_id.to_bytes(32, "big"),
                    _address_word(self.adjudicator),
                    _address_word(self.trader),
                    _address_word(self.broker),
                    _address_word(self.token),
                    self.challenge_duration.to_bytes(32, "big"),
                    self.nonce.to_bytes(32, "big"),
                    len(self.markets).to_bytes(32, "big"),
                    markets_hash(self.markets),
                )
            )
        )
        object.__setattr__(self, "_channel_id", ChannelId(_shared(_CHANNEL_IDS, channel_id)))

    def check(self) -> None:
        """The checks the adjudicator applies to parameters in every function."""
        check_range("chain_id", self.chain_id, 1, 2**256 - 1)
        for name in ("adjudicator", "trader", "broker", "token"):
            check_address(name, getattr(self, name))
        if ZERO_ADDRESS in (self.trader, self.broker) or self.trader == self.broker:
            raise ValidationError("trader and broker must be two different non-zero addresses")
        if self.token == ZERO_ADDRESS:
            raise ValidationError("token is the zero address")
        check_range("challenge_duration", self.challenge_duration, MIN_CHALLENGE_DURATION, MAX_CHALLENGE_DURATION)
        check_range("nonce", self.nonce, 0, 2**256 - 1)
        if not isinstance(self.markets, tuple):
            raise ValidationError("markets must be a tuple")
        if len(self.markets) > MAX_MARKETS:
            raise BoundsError(f"{len(self.markets)} markets, at most {MAX_MARKETS}")
        ids = set()
        for i, market in enumerate(self.markets):
            market.check(i)
            if market.id in ids:
                raise ValidationError(f"market id {market.id} appears twice")
            ids.add(market.id)

    @property
    def channel_id(self) -> ChannelId:
        return self._channel_id

    def market_index(self, market_id: int) -> int:
        for i, market in enumerate(self.markets):
            if market.id == market_id:
                return i
        raise ValidationError(f"market {market_id} does not belong to this channel")

    def header(self) -> ChannelHeader:
        """The parameters with the markets reduced to their count and hash (what most
        adjudicator functions take)."""
        return ChannelHeader(
            trader=self.trader,
            broker=self.broker,
            token=self.token,
            challenge_duration=self.challenge_duration,
            nonce=self.nonce,
            market_count=len(self.markets),
            markets_hash=markets_hash(self.markets),
        )

    def as_abi(self) -> tuple[Any, ...]:
        """The Solidity ChannelParams (chain id and adjudicator come from the execution context)."""
        return (
            self.trader,
            self.broker,
            self.token,
            self.challenge_duration,
            self.nonce,
            [m.as_abi() for m in self.markets],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": str(self.chain_id),
            "adjudicator": self.adjudicator,
            "trader": self.trader,
            "broker": self.broker,
            "token": self.token,
            "challenge_duration": str(self.challenge_duration),
            "nonce": str(self.nonce),
            "markets": [m.to_json() for m in self.markets],
        }

    @classmethod
    def from_json(cls, data: object) -> ChannelParams:
        obj = json_object(data, "params")
        markets = tuple(Market.from_json(x, i) for i, x in enumerate(_list(obj, "markets")))
        return cls(
            chain_id=decimal_field(obj, "chain_id"),
            adjudicator=_address(obj, "adjudicator"),
            trader=_address(obj, "trader"),
            broker=_address(obj, "broker"),
            token=_address(obj, "token"),
            challenge_duration=decimal_field(obj, "challenge_duration"),
            nonce=decimal_field(obj, "nonce"),
            markets=markets,
        )


def markets_hash(markets: tuple[Market, ...]) -> bytes:
    """``keccak256(abi.encode(markets))`` of checked markets (remembered per market list): the
    head word, the length, then five static words per market."""
    known = _MARKET_HASHES.get(markets)
    if known is not None:
        return known
    words = [(32).to_bytes(32, "big"), len(markets).to_bytes(32, "big")]
    for m in markets:
        words += (
            m.id.to_bytes(32, "big"),
            _address_word(m.feed),
            m.resolution.to_bytes(32, "big"),
            m.risk_factor.to_bytes(32, "big"),
            m.max_price_age.to_bytes(32, "big"),
        )
    digest = keccak(b"".join(words))
    if len(_MARKET_HASHES) >= _SHARED_CACHE_SIZE:
        _MARKET_HASHES.clear()
    _MARKET_HASHES[markets] = digest
    return digest


def _address_word(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(address[2:])


@dataclass(frozen=True, slots=True)
class ChannelHeader:
    """The Solidity ChannelHeader: channel parameters with the markets as count and hash."""

    trader: Address
    broker: Address
    token: Address
    challenge_duration: int
    nonce: int
    market_count: int
    markets_hash: bytes

    def as_abi(self) -> tuple[Any, ...]:
        return (
            self.trader,
            self.broker,
            self.token,
            self.challenge_duration,
            self.nonce,
            self.market_count,
            self.markets_hash,
        )


@dataclass(frozen=True, slots=True)
class Balances:
    """Collateral in the channel. They sum to the deposits the state accounts for."""

    trader_available: TokenAmount
    trader_locked: TokenAmount
    broker_available: TokenAmount
    broker_locked: TokenAmount
    trader_deposit: TokenAmount
    broker_deposit: TokenAmount

    def check(self) -> Balances:
        if (  # the common case in one test; otherwise the checks below name the field at fault
            type(self.trader_available) is int
            and type(self.trader_locked) is int
            and type(self.broker_available) is int
            and type(self.broker_locked) is int
            and type(self.trader_deposit) is int
            and type(self.broker_deposit) is int
            and -MAX_BALANCE <= self.trader_available <= MAX_BALANCE
            and 0 <= self.trader_locked <= MAX_BALANCE
            and -MAX_BALANCE <= self.broker_available <= MAX_BALANCE
            and 0 <= self.broker_locked <= MAX_BALANCE
            and 0 <= self.trader_deposit <= MAX_BALANCE
            and 0 <= self.broker_deposit <= MAX_BALANCE
        ):
            return self
        check_balance("trader_available", self.trader_available)
        check_non_negative_balance("trader_locked", self.trader_locked)
        check_balance("broker_available", self.broker_available)
        check_non_negative_balance("broker_locked", self.broker_locked)
        check_non_negative_balance("trader_deposit", self.trader_deposit)
        check_non_negative_balance("broker_deposit", self.broker_deposit)
        return self

    @property
    def holdings(self) -> int:
        return self.trader_deposit + self.broker_deposit

    def as_abi(self) -> tuple[int, ...]:
        return (
            self.trader_available,
            self.trader_locked,
            self.broker_available,
            self.broker_locked,
            self.trader_deposit,
            self.broker_deposit,
        )

    def to_json(self) -> dict[str, str]:
        return {
            "trader_available": str(self.trader_available),
            "trader_locked": str(self.trader_locked),
            "broker_available": str(self.broker_available),
            "broker_locked": str(self.broker_locked),
            "trader_deposit": str(self.trader_deposit),
            "broker_deposit": str(self.broker_deposit),
        }

    @classmethod
    def from_json(cls, data: object) -> Balances:
        if cls is Balances and type(data) is dict:
            try:
                return _fast_balances(data)
            except _NOT_FAST:
                pass  # the detailed checks below say what is wrong
        obj = json_object(data, "balances")
        return cls(
            trader_available=TokenAmount(decimal_field(obj, "trader_available")),
            trader_locked=TokenAmount(decimal_field(obj, "trader_locked")),
            broker_available=TokenAmount(decimal_field(obj, "broker_available")),
            broker_locked=TokenAmount(decimal_field(obj, "broker_locked")),
            trader_deposit=TokenAmount(decimal_field(obj, "trader_deposit")),
            broker_deposit=TokenAmount(decimal_field(obj, "broker_deposit")),
        ).check()


@dataclass(frozen=True, slots=True)
class Order:
    """A limit order signed by the trader (seed 002's fields, bound to one channel)."""

    channel_id: ChannelId
    trader: Address
    collateral: Address
    market: MarketId
    is_buy: bool
    amount_synthetic: SyntheticAmount
    amount_collateral: TokenAmount
    max_fee: TokenAmount
    nonce: Nonce
    expiration: ExpirationHours

    def check(self) -> Order:
        _check_bytes32("order.channel_id", self.channel_id)
        check_address("order.trader", self.trader)
        check_address("order.collateral", self.collateral)
        check_uint32("order.market", self.market)
        if not isinstance(self.is_buy, bool):
            raise ValidationError("order.is_buy must be a boolean")
        check_amount("order.amount_synthetic", self.amount_synthetic)
        check_amount("order.amount_collateral", self.amount_collateral)
        check_amount("order.max_fee", self.max_fee)
        check_amount("order.nonce", self.nonce)
        check_uint32("order.expiration", self.expiration)
        return self

    def as_abi(self) -> tuple[Any, ...]:
        return (
            self.channel_id,
            self.trader,
            self.collateral,
            self.market,
            self.is_buy,
            self.amount_synthetic,
            self.amount_collateral,
            self.max_fee,
            self.nonce,
            self.expiration,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "channel_id": "0x" + self.channel_id.hex(),
            "trader": self.trader,
            "collateral": self.collateral,
            "market": str(self.market),
            "side": "buy" if self.is_buy else "sell",
            "amount_synthetic": str(self.amount_synthetic),
            "amount_collateral": str(self.amount_collateral),
            "max_fee": str(self.max_fee),
            "nonce": str(self.nonce),
            "expiration": str(self.expiration),
        }

    @classmethod
    def from_json(cls, data: object, channel_id: bytes | None = None) -> Order:
        """The order in ``data``; if its channel id equals ``channel_id``, it holds that object."""
        if cls is Order and type(data) is dict:
            try:
                return _fast_order(data, channel_id, None)
            except _NOT_FAST:
                pass  # the detailed checks below say what is wrong
        obj = json_object(data, "order")
        side = obj.get("side")
        if side not in ("buy", "sell"):
            raise ValidationError(f"order.side must be 'buy' or 'sell', got {side!r}")
        own = hex_field(obj, "channel_id", 32)
        return cls(
            channel_id=ChannelId(channel_id if channel_id is not None and own == channel_id else own),
            trader=_address(obj, "trader"),
            collateral=_address(obj, "collateral"),
            market=MarketId(decimal_field(obj, "market")),
            is_buy=side == "buy",
            amount_synthetic=SyntheticAmount(decimal_field(obj, "amount_synthetic")),
            amount_collateral=TokenAmount(decimal_field(obj, "amount_collateral")),
            max_fee=TokenAmount(decimal_field(obj, "max_fee")),
            nonce=Nonce(decimal_field(obj, "nonce")),
            expiration=ExpirationHours(decimal_field(obj, "expiration")),
        ).check()


@dataclass(frozen=True, slots=True)
class OpenOrder:
    """An order resting in the channel."""

    order: Order
    signature: Signature
    filled: SyntheticAmount
    first_batch: BatchNumber
    # The EIP-712 struct hash, filled in by offchain.eip712 on first use (the object is frozen, so
    # it cannot go stale; dataclasses.replace starts the copy without it). Not compared.
    _struct_hash: bytes | None = field(init=False, repr=False, compare=False, default=None)

    def check(self) -> OpenOrder:
        self.order.check()
        if not isinstance(self.signature, bytes) or len(self.signature) != 65:
            raise ValidationError("open order signature must be 65 bytes")
        check_amount("open_order.filled", self.filled)
        check_amount("open_order.first_batch", self.first_batch)
        return self

    def as_abi(self) -> tuple[Any, ...]:
        return (self.order.as_abi(), self.signature, self.filled, self.first_batch)

    def to_json(self) -> dict[str, Any]:
        return {
            "order": self.order.to_json(),
            "signature": "0x" + self.signature.hex(),
            "filled": str(self.filled),
            "first_batch": str(self.first_batch),
        }

    @classmethod
    def from_json(cls, data: object, channel_id: bytes | None = None) -> OpenOrder:
        if cls is OpenOrder and type(data) is dict:
            try:
                return _fast_open_order(data, channel_id, None)
            except _NOT_FAST:
                pass  # the detailed checks below say what is wrong
        obj = json_object(data, "open_order")
        return cls(
            order=Order.from_json(obj.get("order"), channel_id),
            signature=Signature(hex_field(obj, "signature", 65)),
            filled=SyntheticAmount(decimal_field(obj, "filled")),
            first_batch=BatchNumber(decimal_field(obj, "first_batch")),
        ).check()


@dataclass(frozen=True, slots=True)
class Outcome:
    """Per market: the trader's position (the broker holds the opposite), fees, last batch."""

    position: SyntheticAmount
    fees: TokenAmount
    last_batch: BatchNumber
    _struct_hash: bytes | None = field(init=False, repr=False, compare=False, default=None)  # as OpenOrder's

    def check(self, index: int = 0) -> Outcome:
        if (  # the common case in one test; otherwise the checks below name the field at fault
            type(self.position) is int
            and type(self.fees) is int
            and type(self.last_batch) is int
            and -MAX_BALANCE <= self.position <= MAX_BALANCE
            and 0 <= self.fees <= MAX_BALANCE
            and 0 <= self.last_batch <= MAX_AMOUNT
        ):
            return self
        check_balance(f"outcomes[{index}].position", self.position)
        check_non_negative_balance(f"outcomes[{index}].fees", self.fees)
        check_amount(f"outcomes[{index}].last_batch", self.last_batch)
        return self

    def as_abi(self) -> tuple[int, int, int]:
        return (self.position, self.fees, self.last_batch)

    def to_json(self) -> dict[str, str]:
        return {"position": str(self.position), "fees": str(self.fees), "last_batch": str(self.last_batch)}

    @classmethod
    def from_json(cls, data: object) -> Outcome:
        if cls is Outcome and type(data) is dict:
            try:
                return _fast_outcome(data)
            except _NOT_FAST:
                pass  # the detailed checks below say what is wrong
        obj = json_object(data, "outcome")
        return cls(
            position=SyntheticAmount(decimal_field(obj, "position")),
            fees=TokenAmount(decimal_field(obj, "fees")),
            last_batch=BatchNumber(decimal_field(obj, "last_batch")),
        ).check()


EMPTY_OUTCOME = Outcome(position=SyntheticAmount(0), fees=TokenAmount(0), last_batch=BatchNumber(0))


@dataclass(frozen=True, slots=True)
class ChannelState:
    """``[increment, balances, open_orders, outcomes]`` plus the envelope fields that are signed
    with it: the channel id and the final flag."""

    channel_id: ChannelId
    version: Version
    balances: Balances
    open_orders: tuple[OpenOrder, ...]
    outcomes: tuple[Outcome, ...]
    is_final: bool = False
    # Caches of values that are pure functions of the fields above, filled in on first use; the
    # object is frozen, so they cannot go stale, and dataclasses.replace starts without them. Not
    # compared, not in repr. ``_checked``: check_state found every bound respected (without
    # params); ``_struct_hash``: the EIP-712 struct hash; ``_digest``: (domain separator, digest)
    # of the last domain it was digested under (offchain.eip712).
    _checked: bool = field(init=False, repr=False, compare=False, default=False)
    _struct_hash: bytes | None = field(init=False, repr=False, compare=False, default=None)
    _digest: tuple[bytes, bytes] | None = field(init=False, repr=False, compare=False, default=None)

    def as_abi(self) -> tuple[Any, ...]:
        return (
            self.channel_id,
            self.version,
            self.balances.as_abi(),
            [o.as_abi() for o in self.open_orders],
            [o.as_abi() for o in self.outcomes],
            self.is_final,
        )

    def to_json(self) -> list[Any]:
        """The canonical JSON: the four-element array of seed 000."""
        return [
            str(self.version),
            self.balances.to_json(),
            [o.to_json() for o in self.open_orders],
            [o.to_json() for o in self.outcomes],
        ]

    @classmethod
    def from_json(cls, channel_id: ChannelId, is_final: bool, data: object) -> ChannelState:
        if cls is ChannelState:
            try:
                return _fast_state(channel_id, is_final, data)
            except _NOT_FAST:
                pass  # the detailed checks below say what is wrong
        if not isinstance(data, list) or len(data) != 4:
            raise ValidationError("a state is the array [increment, balances, open_orders, outcomes]")
        version_raw, balances, orders, outcomes = data
        if not isinstance(orders, list) or not isinstance(outcomes, list):
            raise ValidationError("open_orders and outcomes must be arrays")
        if not isinstance(is_final, bool):
            raise ValidationError("final must be a boolean")
        if type(channel_id) is bytes:  # the object of the parameters read just before, if any
            channel_id = ChannelId(_CHANNEL_IDS.get(channel_id, channel_id))
        state = cls(
            channel_id=channel_id,
            version=Version(parse_decimal(version_raw, "increment")),
            balances=Balances.from_json(balances),
            open_orders=tuple(OpenOrder.from_json(o, channel_id) for o in orders),
            outcomes=_outcomes(tuple(Outcome.from_json(o) for o in outcomes)),
            is_final=is_final,
        )
        return check_state(state)


def _outcomes(outcomes: tuple[Outcome, ...]) -> tuple[Outcome, ...]:
    """One shared tuple of EMPTY_OUTCOMEs for outcomes equal to them (no market traded yet)."""
    if all(o == EMPTY_OUTCOME and type(o) is Outcome for o in outcomes):
        return _shared(_OUTCOME_LISTS, tuple(EMPTY_OUTCOME for _ in outcomes))
    return outcomes


def check_state(state: ChannelState, params: ChannelParams | None = None) -> ChannelState:
    """Every bound the adjudicator enforces on a state; with ``params``, also its shape.

    A state that passed once is marked (it is frozen, and so are its parts when its arrays are
    tuples), and the bounds are not checked again: the party checks one state several times on
    its way through the store and the signer."""
    if not getattr(state, "_checked", False):
        _check_state_bounds(state)
    if params is not None:
        if state.channel_id != params.channel_id:
            raise ValidationError("the state belongs to another channel")
        if len(state.outcomes) != len(params.markets):
            raise ValidationError(f"{len(state.outcomes)} outcomes for {len(params.markets)} markets")
    return state


def _check_state_bounds(state: ChannelState) -> None:
    if type(state.channel_id) is not bytes or len(state.channel_id) != 32:
        _check_bytes32("channel_id", state.channel_id)
    check_range("version", state.version, 0, MAX_VERSION)
    state.balances.check()
    if len(state.open_orders) > MAX_OPEN_ORDERS:
        raise BoundsError(f"{len(state.open_orders)} open orders, at most {MAX_OPEN_ORDERS}")
    for order in state.open_orders:
        order.check()
    for i, outcome in enumerate(state.outcomes):
        outcome.check(i)
    if not isinstance(state.is_final, bool):
        raise ValidationError("is_final must be a boolean")
    if _immutable(state):
        object.__setattr__(state, "_checked", True)  # frozen all the way down: it stays true


def _immutable(state: ChannelState) -> bool:
    """The state is made of this module's frozen classes and tuples only (no subclass, no list)."""
    return (
        type(state) is ChannelState
        and type(state.balances) is Balances
        and type(state.open_orders) is tuple
        and type(state.outcomes) is tuple
        and all(type(o) is OpenOrder and type(o.order) is Order for o in state.open_orders)
        and all(type(o) is Outcome for o in state.outcomes)
    )


def initial_state(params: ChannelParams, trader_deposit: int, broker_deposit: int) -> ChannelState:
    """The version-0 state, co-signed before anyone deposits."""
    return check_state(
        ChannelState(
            channel_id=params.channel_id,
            version=Version(0),
            balances=Balances(
                trader_available=TokenAmount(trader_deposit),
                trader_locked=TokenAmount(0),
                broker_available=TokenAmount(broker_deposit),
                broker_locked=TokenAmount(0),
                trader_deposit=TokenAmount(trader_deposit),
                broker_deposit=TokenAmount(broker_deposit),
            ),
            open_orders=(),
            outcomes=tuple(EMPTY_OUTCOME for _ in params.markets),
        ),
        params,
    )


@dataclass(frozen=True, slots=True)
class BatchPrice:
    """The broker's uniform clearing price of one batch of one market."""

    market: MarketId
    batch: BatchNumber
    price: Price

    def check(self) -> BatchPrice:
        check_uint32("batch_price.market", self.market)
        check_amount("batch_price.batch", self.batch)
        check_amount("batch_price.price", self.price)
        return self

    def as_abi(self) -> tuple[int, int, int]:
        return (self.market, self.batch, self.price)

    def to_json(self) -> dict[str, str]:
        return {"market": str(self.market), "batch": str(self.batch), "price": str(self.price)}

    @classmethod
    def from_json(cls, data: object) -> BatchPrice:
        obj = json_object(data, "batch_price")
        return cls(
            market=MarketId(decimal_field(obj, "market")),
            batch=BatchNumber(decimal_field(obj, "batch")),
            price=Price(decimal_field(obj, "price")),
        ).check()


@dataclass(frozen=True, slots=True)
class ChallengeAuthorization:
    """A participant lets ``agent`` (a watchtower) challenge on its behalf."""

    channel_id: ChannelId
    agent: Address

    def check(self) -> ChallengeAuthorization:
        _check_bytes32("channel_id", self.channel_id)
        check_address("agent", self.agent)
        return self


def check_signable(obj: ChannelState | Order | BatchPrice | ChallengeAuthorization) -> Any:
    """``obj`` after every bound check that applies to it: nothing out of range gets signed."""
    if isinstance(obj, ChannelState):
        return check_state(obj)
    return obj.check()


# --------------------------------------------------------------------------- JSON helpers


def json_object(data: object, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValidationError(f"{what} must be an object")
    return data


def _list(obj: dict[str, Any], key: str) -> list[Any]:
    value = obj.get(key)
    if not isinstance(value, list):
        raise ValidationError(f"{key} must be an array")
    return value


def parse_decimal(raw: object, name: str) -> int:
    """Amounts travel as decimal strings: '-12', '0', '340'. Nothing else is accepted."""
    if type(raw) is str and raw.isdigit() and raw.isascii() and len(raw) <= 80 and (raw[0] != "0" or len(raw) == 1):
        return int(raw)  # the common case, in one test; the checks below say what is wrong
    if not isinstance(raw, str):
        raise ValidationError(f"{name} must be a decimal string, got {type(raw).__name__}")
    digits = raw[1:] if raw.startswith("-") else raw
    if not digits.isascii() or not digits.isdigit() or (len(digits) > 1 and digits[0] == "0") or len(raw) > 80:
        raise ValidationError(f"{name} is not a canonical decimal integer: {raw[:40]!r}")
    if raw == "-0":
        raise ValidationError(f"{name} is not a canonical decimal integer: '-0'")
    return int(raw)


def decimal_field(obj: dict[str, Any], key: str) -> int:
    if key not in obj:
        raise ValidationError(f"missing field {key}")
    raw = obj[key]
    if type(raw) is str and raw.isdigit() and raw.isascii() and len(raw) <= 80 and (raw[0] != "0" or len(raw) == 1):
        return int(raw)  # parse_decimal's common case, without the call
    return parse_decimal(raw, key)


def _address(obj: dict[str, Any], key: str) -> Address:
    return check_address(key, obj.get(key))


def hex_field(obj: dict[str, Any], key: str, length: int) -> bytes:
    raw = obj.get(key)
    if type(raw) is str and len(raw) == 2 + 2 * length and raw[:2] == "0x":
        try:
            return a2b_hex(raw[2:])  # the common case; refuses what is not hex (fromhex skips spaces)
        except ValueError:
            pass  # not hex, or not ASCII: said below
    if not isinstance(raw, str) or not raw.startswith("0x") or len(raw) != 2 + 2 * length:
        raise ValidationError(f"{key} must be 0x-hex of {length} bytes")
    digits = raw[2:]
    if not _HEX_DIGITS.issuperset(digits):  # bytes.fromhex would skip whitespace
        raise ValidationError(f"{key} is not hex")
    return bytes.fromhex(digits)


_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def _check_bytes32(name: str, value: object) -> None:
    if not isinstance(value, bytes) or len(value) != 32:
        raise ValidationError(f"{name} must be 32 bytes")


# --------------------------------------------------------------------------- fast paths
#
# Almost every input is valid and canonical: a parser above first tries the fast path below, which
# recognises that case with few tests per field and builds the same objects as the detailed path
# (same types, equal values, the state marked checked exactly when check_state would mark it).
# Anything else, every invalid input included, raises one of _NOT_FAST inside the fast path, and
# the detailed path parses the input again from the start: it alone refuses, so the errors and
# their order stay its own. The fast path accepts a subset of what the detailed path accepts.


class _NotFast(Exception):
    """Not the common case: the detailed parser decides."""


_NOT_FAST = (_NotFast, LookupError, TypeError, ValueError, ValidationError)


def _nat(raw: object, high: int) -> Any:
    """A canonical decimal string whose value is in [0, ``high``] (``high`` < 2^64)."""
    if type(raw) is str:
        value = _DECIMALS.get(raw)
        if value is None:
            value = _new_decimal(raw)
        if 0 <= value <= high:
            return value
    raise _NotFast


def _int(raw: object, bound: int) -> Any:
    """A canonical decimal string whose value is in [-``bound``, ``bound``] (``bound`` < 2^64)."""
    if type(raw) is str:
        value = _DECIMALS.get(raw)
        if value is None:
            value = _new_decimal(raw)
        if -bound <= value <= bound:
            return value
    raise _NotFast


def _new_decimal(raw: str) -> int:
    """The value of ``raw`` if it is a canonical decimal string of at most 20 digits, remembered.
    Canonical: int() reads it and str() writes it back the same, so no '+', space, underscore,
    leading zero, '-0' or non-ASCII digit (the short length keeps int() cheap)."""
    if len(raw) <= 21:
        value = int(raw)  # ValueError if it is no integer at all
        if str(value) == raw:
            if len(_DECIMALS) >= _SHARED_CACHE_SIZE:
                _DECIMALS.clear()
            _DECIMALS[raw] = value
            return value
    raise _NotFast


_DECIMALS: dict[str, int] = {}
"""Decimal strings met recently -> their values: most of a state's numbers repeat from one state to
the next (deposits, zeros, an order's fields, batch numbers), and a look-up is cheaper than reading."""


def _hex(raw: object, length: int) -> bytes:
    """0x-hex of ``length`` bytes (a2b_hex raises ValueError on a non-hex or non-ASCII digit)."""
    if type(raw) is str and len(raw) == 2 + 2 * length and raw[:2] == "0x":
        return a2b_hex(raw[2:])
    raise _NotFast


def _addr(raw: object, name: str) -> Address:
    return _ADDRESSES.get(raw) or check_address(name, raw)  # type: ignore[call-overload]


def _fast_balances(obj: dict[str, Any]) -> Balances:
    return Balances(
        _int(obj["trader_available"], MAX_BALANCE),
        _nat(obj["trader_locked"], MAX_BALANCE),
        _int(obj["broker_available"], MAX_BALANCE),
        _nat(obj["broker_locked"], MAX_BALANCE),
        _nat(obj["trader_deposit"], MAX_BALANCE),
        _nat(obj["broker_deposit"], MAX_BALANCE),
    )


def _fast_order(obj: dict[str, Any], channel_id: bytes | None, channel_hex: str | None) -> Order:
    """Order.from_json's common case; ``channel_hex``: ``channel_id`` as lower-case 0x-hex, if known."""
    side = obj["side"]
    if side != "buy" and side != "sell":
        raise _NotFast
    raw_id = obj["channel_id"]
    if channel_hex is not None and raw_id == channel_hex:
        own = channel_id
    else:
        own = _hex(raw_id, 32)
        if channel_id is not None and own == channel_id:
            own = channel_id
    return Order(
        own,  # type: ignore[arg-type]
        _addr(obj["trader"], "trader"),
        _addr(obj["collateral"], "collateral"),
        _nat(obj["market"], MAX_UINT32),
        side == "buy",
        _nat(obj["amount_synthetic"], MAX_AMOUNT),
        _nat(obj["amount_collateral"], MAX_AMOUNT),
        _nat(obj["max_fee"], MAX_AMOUNT),
        _nat(obj["nonce"], MAX_AMOUNT),
        _nat(obj["expiration"], MAX_UINT32),
    )


def _fast_open_order(obj: dict[str, Any], channel_id: bytes | None, channel_hex: str | None) -> OpenOrder:
    order = obj["order"]
    if type(order) is not dict:
        raise _NotFast
    return OpenOrder(
        _fast_order(order, channel_id, channel_hex),
        _hex(obj["signature"], 65),  # type: ignore[arg-type]
        _nat(obj["filled"], MAX_AMOUNT),
        _nat(obj["first_batch"], MAX_AMOUNT),
    )


def _fast_outcome(obj: dict[str, Any]) -> Outcome:
    return Outcome(
        _int(obj["position"], MAX_BALANCE), _nat(obj["fees"], MAX_BALANCE), _nat(obj["last_batch"], MAX_AMOUNT)
    )


def _fast_state(channel_id: ChannelId, is_final: bool, data: object) -> ChannelState:
    """ChannelState.from_json's common case, marked checked as check_state marks it."""
    if type(data) is not list or len(data) != 4 or type(is_final) is not bool:
        raise _NotFast
    version_raw, balances, orders, outcomes = data
    if type(channel_id) is not bytes or len(channel_id) != 32 or type(balances) is not dict:
        raise _NotFast
    if type(orders) is not list or len(orders) > MAX_OPEN_ORDERS or type(outcomes) is not list:
        raise _NotFast
    channel_id = _CHANNEL_IDS.get(channel_id, channel_id)  # type: ignore[assignment]
    version = _nat(version_raw, MAX_VERSION)
    checked_balances = _fast_balances(balances)
    open_orders: tuple[OpenOrder, ...] = ()
    if orders:
        channel_hex = "0x" + channel_id.hex()
        for o in orders:
            if type(o) is not dict:
                raise _NotFast
        open_orders = tuple(_fast_open_order(o, channel_id, channel_hex) for o in orders)
    for o in outcomes:
        if type(o) is not dict:
            raise _NotFast
    if all(o.get("position") == "0" and o.get("fees") == "0" and o.get("last_batch") == "0" for o in outcomes):
        # what _outcomes makes of outcomes all equal to EMPTY_OUTCOME
        shared = _shared(_OUTCOME_LISTS, tuple(EMPTY_OUTCOME for _ in outcomes))
    else:
        shared = tuple(_fast_outcome(o) for o in outcomes)
    state = ChannelState(channel_id, version, checked_balances, open_orders, shared, is_final)
    object.__setattr__(state, "_checked", True)  # what check_state finds (all of this module's types)
    return state
