"""Bounds, validation and canonical JSON of offchain.model (MISSION.md, "Money and numbers",
"The trading state")."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast

import pytest
from eth_abi.abi import encode as abi_encode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offchain.errors import BoundsError, ValidationError
from offchain.model import (
    _ADDRESSES,
    _SHARED_CACHE_SIZE,
    EMPTY_OUTCOME,
    MAX_OPEN_ORDERS,
    Balances,
    BatchPrice,
    ChannelParams,
    ChannelState,
    Market,
    OpenOrder,
    Order,
    Outcome,
    check_address,
    check_state,
    checksum_address,
    initial_state,
    shared_nonces,
)
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

# --------------------------------------------------------------------------- bounds (MISSION.md)

I63 = 2**63 - 1  # balances, positions, fees: (-2^63, 2^63)
U64 = 2**64 - 1  # order amounts, nonces, fills, batch numbers: < 2^64
U32 = 2**32 - 1  # market ids, expirations: < 2^32
U48 = 2**48 - 1  # versions: < 2^48

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def addr(n: int) -> Address:
    return Address(to_checksum_address(n.to_bytes(20, "big")))


TRADER = addr(0x7A)
BROKER = addr(0xB0)
TOKEN = addr(0x70C)
ADJUDICATOR = addr(0xAD)
FEED = addr(0xFEED)
CHANNEL = ChannelId(keccak(b"channel"))
MIXED = addr(0xABCDEF0123456789ABCDEF0123456789ABCDEF)  # checksummed, with upper- and lower-case letters


def bad_checksum(address: str) -> str:
    """``address`` with the case of its first letter flipped: mixed case, wrong checksum."""
    i = next(i for i, c in enumerate(address) if i >= 2 and c.isalpha())
    flipped = address[:i] + address[i].swapcase() + address[i + 1 :]
    assert flipped.lower() != flipped and flipped.upper()[2:] != flipped[2:]
    return flipped


# --------------------------------------------------------------------------- builders


def make_market(**overrides: Any) -> Market:
    fields: dict[str, Any] = {
        "id": MarketId(1),
        "feed": FEED,
        "resolution": 1000,
        "risk_factor": 2**31,
        "max_price_age": 3600,
    }
    fields.update(overrides)
    return Market(**fields)


def make_params(**overrides: Any) -> ChannelParams:
    fields: dict[str, Any] = {
        "chain_id": 1337,
        "adjudicator": ADJUDICATOR,
        "trader": TRADER,
        "broker": BROKER,
        "token": TOKEN,
        "challenge_duration": 86400,
        "nonce": 7,
        "markets": (make_market(id=MarketId(1)), make_market(id=MarketId(2), feed=addr(0xFEEE), resolution=10**8)),
    }
    fields.update(overrides)
    return ChannelParams(**fields)


def make_balances(**overrides: Any) -> Balances:
    fields: dict[str, Any] = {
        "trader_available": TokenAmount(900),
        "trader_locked": TokenAmount(100),
        "broker_available": TokenAmount(5000),
        "broker_locked": TokenAmount(0),
        "trader_deposit": TokenAmount(1000),
        "broker_deposit": TokenAmount(5000),
    }
    fields.update(overrides)
    return Balances(**fields)


def make_order(**overrides: Any) -> Order:
    fields: dict[str, Any] = {
        "channel_id": CHANNEL,
        "trader": TRADER,
        "collateral": TOKEN,
        "market": MarketId(1),
        "is_buy": True,
        "amount_synthetic": SyntheticAmount(2000),
        "amount_collateral": TokenAmount(4_000_000),
        "max_fee": TokenAmount(400),
        "nonce": Nonce(1),
        "expiration": ExpirationHours(500_000),
    }
    fields.update(overrides)
    return Order(**fields)


def make_open_order(**overrides: Any) -> OpenOrder:
    fields: dict[str, Any] = {
        "order": make_order(),
        "signature": Signature(bytes(range(65))),
        "filled": SyntheticAmount(500),
        "first_batch": BatchNumber(3),
    }
    fields.update(overrides)
    return OpenOrder(**fields)


def make_outcome(**overrides: Any) -> Outcome:
    fields: dict[str, Any] = {
        "position": SyntheticAmount(-1500),
        "fees": TokenAmount(12),
        "last_batch": BatchNumber(4),
    }
    fields.update(overrides)
    return Outcome(**fields)


def make_state(**overrides: Any) -> ChannelState:
    fields: dict[str, Any] = {
        "channel_id": CHANNEL,
        "version": Version(5),
        "balances": make_balances(),
        "open_orders": (
            make_open_order(),
            make_open_order(order=make_order(is_buy=False, nonce=Nonce(2)), filled=SyntheticAmount(0)),
        ),
        "outcomes": (make_outcome(), make_outcome(position=SyntheticAmount(7), fees=TokenAmount(0))),
        "is_final": False,
    }
    fields.update(overrides)
    return ChannelState(**fields)


# --------------------------------------------------------------------------- hypothesis strategies


def int_in(low: int, high: int) -> st.SearchStrategy[int]:
    """Integers in [low, high] with the bounds and zero drawn often."""
    edges = [v for v in (low, high, 0, low + 1, high - 1) if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


addresses = st.integers(1, 2**160 - 1).map(addr)
bytes32s = st.binary(min_size=32, max_size=32).map(ChannelId)
balances_i64 = int_in(-I63, I63)
non_negative_i64 = int_in(0, I63)
uint64s = int_in(0, U64)
uint32s = int_in(0, U32)

markets = st.builds(
    Market,
    id=uint32s.map(MarketId),
    feed=addresses,
    resolution=st.integers(1, 10**12),
    risk_factor=uint32s,
    max_price_age=st.integers(1, U32),
)


@st.composite
def channel_params(draw: st.DrawFn, min_markets: int = 0, max_markets: int = 4) -> ChannelParams:
    trader = draw(addresses)
    broker = draw(addresses.filter(lambda a: a != trader))
    chosen = draw(st.lists(markets, min_size=min_markets, max_size=max_markets, unique_by=lambda m: m.id))
    return ChannelParams(
        chain_id=draw(st.integers(1, 2**64)),
        adjudicator=draw(addresses),
        trader=trader,
        broker=broker,
        token=draw(addresses),
        challenge_duration=draw(st.integers(3600, 30 * 86400)),
        nonce=draw(st.integers(0, 2**256 - 1)),
        markets=tuple(chosen),
    )


balances = st.builds(
    Balances,
    trader_available=balances_i64.map(TokenAmount),
    trader_locked=non_negative_i64.map(TokenAmount),
    broker_available=balances_i64.map(TokenAmount),
    broker_locked=non_negative_i64.map(TokenAmount),
    trader_deposit=non_negative_i64.map(TokenAmount),
    broker_deposit=non_negative_i64.map(TokenAmount),
)


def orders(channel_id: st.SearchStrategy[ChannelId] = bytes32s) -> st.SearchStrategy[Order]:
    return st.builds(
        Order,
        channel_id=channel_id,
        trader=addresses,
        collateral=addresses,
        market=uint32s.map(MarketId),
        is_buy=st.booleans(),
        amount_synthetic=uint64s.map(SyntheticAmount),
        amount_collateral=uint64s.map(TokenAmount),
        max_fee=uint64s.map(TokenAmount),
        nonce=uint64s.map(Nonce),
        expiration=uint32s.map(ExpirationHours),
    )


def open_orders(channel_id: st.SearchStrategy[ChannelId] = bytes32s) -> st.SearchStrategy[OpenOrder]:
    return st.builds(
        OpenOrder,
        order=orders(channel_id),
        signature=st.binary(min_size=65, max_size=65).map(Signature),
        filled=uint64s.map(SyntheticAmount),
        first_batch=uint64s.map(BatchNumber),
    )


outcomes = st.builds(
    Outcome,
    position=balances_i64.map(SyntheticAmount),
    fees=non_negative_i64.map(TokenAmount),
    last_batch=uint64s.map(BatchNumber),
)


@st.composite
def channel_states(draw: st.DrawFn, max_orders: int = 4, max_outcomes: int = 4) -> ChannelState:
    channel_id = draw(bytes32s)
    return ChannelState(
        channel_id=channel_id,
        version=Version(draw(int_in(0, U48))),
        balances=draw(balances),
        open_orders=tuple(draw(st.lists(open_orders(st.just(channel_id)), max_size=max_orders))),
        outcomes=tuple(draw(st.lists(outcomes, max_size=max_outcomes))),
        is_final=draw(st.booleans()),
    )


# --------------------------------------------------------------------------- bounds

# (label, build-and-check for a value, accepted boundary values, rejected just-out-of-bound values)
BoundCase = tuple[str, Callable[[Any], object], list[int], list[int]]

BOUND_CASES: list[BoundCase] = [
    # balances, positions, fees in (-2^63, 2^63) (non-negative where the field cannot be negative)
    ("trader_available", lambda v: make_balances(trader_available=v).check(), [-I63, I63, 0], [-(2**63), 2**63]),
    ("broker_available", lambda v: make_balances(broker_available=v).check(), [-I63, I63, 0], [-(2**63), 2**63]),
    ("trader_locked", lambda v: make_balances(trader_locked=v).check(), [0, I63], [-1, 2**63]),
    ("broker_locked", lambda v: make_balances(broker_locked=v).check(), [0, I63], [-1, 2**63]),
    ("trader_deposit", lambda v: make_balances(trader_deposit=v).check(), [0, I63], [-1, 2**63]),
    ("broker_deposit", lambda v: make_balances(broker_deposit=v).check(), [0, I63], [-1, 2**63]),
    ("position", lambda v: make_outcome(position=v).check(), [-I63, I63, 0], [-(2**63), 2**63]),
    ("fees", lambda v: make_outcome(fees=v).check(), [0, I63], [-1, 2**63]),
    # order amounts, nonces, fills, batch numbers < 2^64
    ("amount_synthetic", lambda v: make_order(amount_synthetic=v).check(), [0, U64], [-1, 2**64]),
    ("amount_collateral", lambda v: make_order(amount_collateral=v).check(), [0, U64], [-1, 2**64]),
    ("max_fee", lambda v: make_order(max_fee=v).check(), [0, U64], [-1, 2**64]),
    ("order.nonce", lambda v: make_order(nonce=v).check(), [0, U64], [-1, 2**64]),
    ("filled", lambda v: make_open_order(filled=v).check(), [0, U64], [-1, 2**64]),
    ("first_batch", lambda v: make_open_order(first_batch=v).check(), [0, U64], [-1, 2**64]),
    ("last_batch", lambda v: make_outcome(last_batch=v).check(), [0, U64], [-1, 2**64]),
    ("batch_price.batch", lambda v: BatchPrice(MarketId(1), v, Price(100)).check(), [0, U64], [-1, 2**64]),
    ("batch_price.price", lambda v: BatchPrice(MarketId(1), BatchNumber(1), v).check(), [0, U64], [-1, 2**64]),
    # market ids and expirations < 2^32
    ("order.market", lambda v: make_order(market=v).check(), [0, U32], [-1, 2**32]),
    ("order.expiration", lambda v: make_order(expiration=v).check(), [0, U32], [-1, 2**32]),
    ("batch_price.market", lambda v: BatchPrice(v, BatchNumber(1), Price(100)).check(), [0, U32], [-1, 2**32]),
    ("market.id", lambda v: make_market(id=v).check(), [0, U32], [-1, 2**32]),
    ("market.id in params", lambda v: make_params(markets=(make_market(id=v),)), [0, U32], [-1, 2**32]),
    # versions < 2^48
    ("version", lambda v: check_state(make_state(version=v)), [0, U48], [-1, 2**48]),
    # other market fields
    ("market.resolution", lambda v: make_market(resolution=v).check(), [1, U64], [0, 2**64]),
    ("market.risk_factor", lambda v: make_market(risk_factor=v).check(), [0, U32], [-1, 2**32]),
    ("market.max_price_age", lambda v: make_market(max_price_age=v).check(), [1, U32], [0, 2**32]),
    # channel parameters
    ("challenge_duration", lambda v: make_params(challenge_duration=v), [3600, 30 * 86400], [3599, 30 * 86400 + 1]),
    ("chain_id", lambda v: make_params(chain_id=v), [1, 2**256 - 1], [0, 2**256]),
    ("params.nonce", lambda v: make_params(nonce=v), [0, 2**256 - 1], [-1, 2**256]),
]

BOUND_IDS = [case[0] for case in BOUND_CASES]


@pytest.mark.parametrize(("label", "build", "accepted", "rejected"), BOUND_CASES, ids=BOUND_IDS)
def test_bound_accepts_its_boundary(
    label: str, build: Callable[[Any], object], accepted: list[int], rejected: list[int]
) -> None:
    for value in accepted:
        assert build(value) is not None, f"{label}={value} must be accepted"


@pytest.mark.parametrize(("label", "build", "accepted", "rejected"), BOUND_CASES, ids=BOUND_IDS)
def test_bound_rejects_just_outside(
    label: str, build: Callable[[Any], object], accepted: list[int], rejected: list[int]
) -> None:
    for value in rejected:
        with pytest.raises(BoundsError) as info:
            build(value)
        assert isinstance(info.value, ValidationError)
        assert info.value.code == "out_of_bounds"
        assert info.value.reason


def test_bounds_error_is_a_validation_error() -> None:
    assert issubclass(BoundsError, ValidationError)
    assert BoundsError.code != ValidationError.code


def test_version_bound_is_exactly_2_pow_48() -> None:
    assert check_state(make_state(version=Version(2**48 - 1))).version == 2**48 - 1
    with pytest.raises(BoundsError):
        check_state(make_state(version=Version(2**48)))


@pytest.mark.parametrize("bad", [1.0, 0.5, True, False, "5", None], ids=repr)
@pytest.mark.parametrize(("label", "build", "accepted", "rejected"), BOUND_CASES, ids=BOUND_IDS)
def test_non_int_is_rejected(
    label: str, build: Callable[[Any], object], accepted: list[int], rejected: list[int], bad: object
) -> None:
    with pytest.raises(ValidationError) as info:
        build(bad)
    assert not isinstance(info.value, BoundsError), "a wrong type is not a bound violation"
    assert info.value.code == "invalid_input"


def test_is_buy_must_be_a_bool() -> None:
    with pytest.raises(ValidationError):
        make_order(is_buy=1).check()


@pytest.mark.parametrize("length", [0, 31, 33])
def test_channel_id_must_be_32_bytes(length: int) -> None:
    with pytest.raises(ValidationError):
        check_state(make_state(channel_id=ChannelId(bytes(length))))
    with pytest.raises(ValidationError):
        make_order(channel_id=ChannelId(bytes(length))).check()


@pytest.mark.parametrize("length", [0, 64, 66])
def test_open_order_signature_must_be_65_bytes(length: int) -> None:
    with pytest.raises(ValidationError):
        make_open_order(signature=Signature(bytes(length))).check()


def test_open_orders_at_most_max() -> None:
    order = make_open_order()
    assert len(check_state(make_state(open_orders=(order,) * MAX_OPEN_ORDERS)).open_orders) == MAX_OPEN_ORDERS
    with pytest.raises(BoundsError):
        check_state(make_state(open_orders=(order,) * (MAX_OPEN_ORDERS + 1)))


def test_is_final_must_be_a_bool() -> None:
    with pytest.raises(ValidationError):
        check_state(make_state(is_final=1))


# --------------------------------------------------------------------------- ChannelParams validation


def test_valid_params() -> None:
    params = make_params()
    assert len(params.channel_id) == 32
    assert params.market_index(2) == 1
    with pytest.raises(ValidationError):
        params.market_index(3)


def test_trader_equal_to_broker_is_rejected() -> None:
    with pytest.raises(ValidationError):
        make_params(broker=TRADER)


def test_trader_equal_to_broker_in_another_case_is_rejected() -> None:
    # check_address accepts an all-lowercase address; it is the same account as its checksummed form.
    assert MIXED != MIXED.lower()
    with pytest.raises(ValidationError):
        make_params(trader=cast(Address, MIXED.lower()), broker=MIXED)


@pytest.mark.parametrize("field_name", ["trader", "broker", "token"])
def test_zero_address_is_rejected(field_name: str) -> None:
    with pytest.raises(ValidationError):
        make_params(**{field_name: addr(0)})


@pytest.mark.parametrize("field_name", ["adjudicator", "trader", "broker", "token"])
@pytest.mark.parametrize("bad", ["0x1234", "not an address", 12, None, "7A" * 20], ids=repr)
def test_malformed_address_is_rejected(field_name: str, bad: object) -> None:
    with pytest.raises(ValidationError):
        make_params(**{field_name: bad})


def test_bad_checksum_is_rejected() -> None:
    assert make_params(trader=MIXED).trader == MIXED
    with pytest.raises(ValidationError):
        make_params(trader=bad_checksum(MIXED))


@pytest.mark.parametrize("duration", [0, 3599, 30 * 86400 + 1, -3600])
def test_challenge_duration_outside_range_is_rejected(duration: int) -> None:
    with pytest.raises(ValidationError):
        make_params(challenge_duration=duration)


@pytest.mark.parametrize("duration", [3600, 86400, 30 * 86400])
def test_challenge_duration_inside_range_is_accepted(duration: int) -> None:
    assert make_params(challenge_duration=duration).challenge_duration == duration


def test_at_most_16_markets() -> None:
    sixteen = tuple(make_market(id=MarketId(i)) for i in range(16))
    assert len(make_params(markets=sixteen).markets) == 16
    with pytest.raises(BoundsError):
        make_params(markets=(*sixteen, make_market(id=MarketId(16))))


def test_no_markets_is_allowed() -> None:
    assert make_params(markets=()).markets == ()


def test_duplicate_market_ids_are_rejected() -> None:
    with pytest.raises(ValidationError):
        make_params(markets=(make_market(id=MarketId(3)), make_market(id=MarketId(3), resolution=10)))


def test_markets_must_be_a_tuple() -> None:
    with pytest.raises(ValidationError):
        make_params(markets=[make_market()])


@pytest.mark.parametrize(
    "market",
    [
        pytest.param({"feed": addr(0)}, id="zero-feed"),
        pytest.param({"feed": "0x1234"}, id="bad-feed"),
        pytest.param({"resolution": 0}, id="zero-resolution"),
        pytest.param({"resolution": 2**64}, id="huge-resolution"),
        pytest.param({"risk_factor": 2**32}, id="risk-factor"),
        pytest.param({"risk_factor": -1}, id="negative-risk-factor"),
        pytest.param({"max_price_age": 0}, id="zero-max-age"),
        pytest.param({"id": 2**32}, id="id"),
        pytest.param({"id": 1.0}, id="float-id"),
    ],
)
def test_bad_market_fields_are_rejected(market: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        make_params(markets=(make_market(**market),))


# --------------------------------------------------------------------------- channel id


def test_channel_id_matches_the_documented_formula() -> None:
    p = make_params()
    markets_hash = keccak(
        abi_encode(["(uint256,address,uint256,uint256,uint256)[]"], [[m.as_abi() for m in p.markets]])
    )
    expected = keccak(
        abi_encode(
            ["uint256", "address", "address", "address", "address", "uint256", "uint256", "uint256", "bytes32"],
            [
                p.chain_id,
                p.adjudicator,
                p.trader,
                p.broker,
                p.token,
                p.challenge_duration,
                p.nonce,
                len(p.markets),
                markets_hash,
            ],
        )
    )
    assert p.channel_id == expected


CHANGES: list[tuple[str, dict[str, Any]]] = [
    ("chain_id", {"chain_id": 1338}),
    ("adjudicator", {"adjudicator": addr(0xAE)}),
    ("trader", {"trader": addr(0x7B)}),
    ("broker", {"broker": addr(0xB1)}),
    ("trader<->broker", {"trader": BROKER, "broker": TRADER}),
    ("token", {"token": addr(0x70D)}),
    ("challenge_duration", {"challenge_duration": 86401}),
    ("nonce", {"nonce": 8}),
    ("market-count", {"markets": (make_market(id=MarketId(1)),)}),
    (
        "market-order",
        {"markets": (make_market(id=MarketId(2), feed=addr(0xFEEE), resolution=10**8), make_market(id=MarketId(1)))},
    ),
]
for _field, _value in [
    ("id", 9),
    ("feed", addr(0xFEEF)),
    ("resolution", 1001),
    ("risk_factor", 2**31 + 1),
    ("max_price_age", 3601),
]:
    CHANGES.append((f"market.{_field}", {"markets": (make_market(**{_field: _value}), make_params().markets[1])}))


@pytest.mark.parametrize("change", [c[1] for c in CHANGES], ids=[c[0] for c in CHANGES])
def test_channel_id_changes_with_every_field(change: dict[str, Any]) -> None:
    base = make_params()
    changed = replace(base, **change)
    assert changed != base
    assert changed.channel_id != base.channel_id


def test_channel_id_is_deterministic() -> None:
    assert make_params().channel_id == make_params().channel_id
    assert replace(make_params()).channel_id == make_params().channel_id


@SETTINGS
@given(channel_params())
def test_params_json_round_trip(params: ChannelParams) -> None:
    data = params.to_json()
    wire = json.loads(json.dumps(data))
    back = ChannelParams.from_json(wire)
    assert back == params
    assert back.channel_id == params.channel_id
    assert back.to_json() == data
    assert isinstance(data["chain_id"], str) and isinstance(data["nonce"], str)
    assert all(isinstance(v, str) for m in data["markets"] for v in m.values())


def test_params_from_json_rejects_malformed() -> None:
    good = make_params().to_json()
    mutations: list[Callable[[dict[str, Any]], object]] = [
        lambda d: d.pop("trader"),
        lambda d: d.update(chain_id=1337),
        lambda d: d.update(markets="none"),
        lambda d: d["markets"][0].update(resolution="0"),
        lambda d: d["markets"][0].pop("feed"),
        lambda d: d.update(challenge_duration="100"),
    ]
    for mutate in mutations:
        data = copy.deepcopy(good)
        mutate(data)
        with pytest.raises(ValidationError):
            ChannelParams.from_json(data)
    with pytest.raises(ValidationError):
        ChannelParams.from_json([good])


# --------------------------------------------------------------------------- initial state


@pytest.mark.parametrize(("trader_deposit", "broker_deposit"), [(0, 0), (1000, 5000), (I63, I63), (0, 1)])
def test_initial_state_accounts_deposits(trader_deposit: int, broker_deposit: int) -> None:
    params = make_params()
    state = initial_state(params, trader_deposit, broker_deposit)
    b = state.balances
    assert state.channel_id == params.channel_id
    assert state.version == 0
    assert state.is_final is False
    assert state.open_orders == ()
    assert state.outcomes == (EMPTY_OUTCOME,) * len(params.markets)
    assert (b.trader_deposit, b.broker_deposit) == (trader_deposit, broker_deposit)
    assert (b.trader_available, b.trader_locked) == (trader_deposit, 0)
    assert (b.broker_available, b.broker_locked) == (broker_deposit, 0)
    assert b.trader_available + b.trader_locked + b.broker_available + b.broker_locked == b.holdings
    assert b.holdings == trader_deposit + broker_deposit
    assert check_state(state, params) is state


@pytest.mark.parametrize(("trader_deposit", "broker_deposit"), [(-1, 0), (0, -1), (2**63, 0), (0, 2**63)])
def test_initial_state_rejects_out_of_bound_deposits(trader_deposit: int, broker_deposit: int) -> None:
    with pytest.raises(BoundsError):
        initial_state(make_params(), trader_deposit, broker_deposit)


def test_check_state_against_params() -> None:
    params = make_params()
    state = initial_state(params, 10, 20)
    with pytest.raises(ValidationError):
        check_state(replace(state, channel_id=ChannelId(keccak(b"other"))), params)
    with pytest.raises(ValidationError):
        check_state(replace(state, outcomes=state.outcomes[:1]), params)
    with pytest.raises(ValidationError):
        check_state(replace(state, outcomes=(*state.outcomes, EMPTY_OUTCOME)), params)


# --------------------------------------------------------------------------- canonical JSON

DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)")


def _leaves(value: object) -> list[object]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def test_state_json_is_the_four_element_array() -> None:
    state = make_state()
    data = state.to_json()
    assert isinstance(data, list) and len(data) == 4
    increment, balances_json, orders_json, outcomes_json = data
    assert increment == "5"
    assert balances_json == {
        "trader_available": "900",
        "trader_locked": "100",
        "broker_available": "5000",
        "broker_locked": "0",
        "trader_deposit": "1000",
        "broker_deposit": "5000",
    }
    assert len(orders_json) == 2 and len(outcomes_json) == 2
    assert orders_json[0] == {
        "order": {
            "channel_id": "0x" + CHANNEL.hex(),
            "trader": TRADER,
            "collateral": TOKEN,
            "market": "1",
            "side": "buy",
            "amount_synthetic": "2000",
            "amount_collateral": "4000000",
            "max_fee": "400",
            "nonce": "1",
            "expiration": "500000",
        },
        "signature": "0x" + bytes(range(65)).hex(),
        "filled": "500",
        "first_batch": "3",
    }
    assert orders_json[1]["order"]["side"] == "sell"
    assert outcomes_json[0] == {"position": "-1500", "fees": "12", "last_batch": "4"}
    # the envelope (channel id, final flag) is not part of the array
    assert "is_final" not in json.dumps(data)


@SETTINGS
@given(channel_states())
def test_every_amount_is_a_decimal_string(state: ChannelState) -> None:
    data = state.to_json()
    assert isinstance(data, list) and len(data) == 4
    assert isinstance(data[0], str) and DECIMAL.fullmatch(data[0])
    amounts = [*_leaves(data[1]), *_leaves(data[3])]
    for oo in data[2]:
        amounts += [oo["filled"], oo["first_batch"]]
        amounts += [v for k, v in oo["order"].items() if k not in ("channel_id", "trader", "collateral", "side")]
    for amount in amounts:
        assert isinstance(amount, str) and DECIMAL.fullmatch(amount), amount
    assert all(isinstance(leaf, str) for leaf in _leaves(data))


@SETTINGS
@given(channel_states())
def test_state_json_round_trip(state: ChannelState) -> None:
    wire = json.loads(json.dumps(state.to_json()))
    back = ChannelState.from_json(state.channel_id, state.is_final, wire)
    assert back == state
    assert back.to_json() == state.to_json()


def test_state_json_round_trip_with_orders_and_outcomes() -> None:
    state = make_state()
    assert state.open_orders and state.outcomes
    assert ChannelState.from_json(CHANNEL, False, state.to_json()) == state
    final = replace(state, is_final=True)
    assert ChannelState.from_json(CHANNEL, True, final.to_json()) == final


def _set(path: tuple[Any, ...], value: object) -> Callable[[list[Any]], None]:
    def mutate(data: list[Any]) -> None:
        target: Any = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _drop(path: tuple[Any, ...]) -> Callable[[list[Any]], None]:
    def mutate(data: list[Any]) -> None:
        target: Any = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


BAL = (1,)
OO = (2, 0)
ORD = (2, 0, "order")
OUT = (3, 0)

MALFORMED: list[tuple[str, Callable[[list[Any]], None], bool]] = [
    # (id, mutation, is a bound violation)
    ("version-number", _set((0,), 5), False),
    ("balance-number", _set((*BAL, "trader_available"), 900), False),
    ("amount-number", _set((*ORD, "amount_synthetic"), 2000), False),
    ("float", _set((*BAL, "broker_available"), 5000.0), False),
    ("float-string", _set((*BAL, "broker_available"), "5000.0"), False),
    ("exponent", _set((*OUT, "fees"), "1e3"), False),
    ("leading-zero", _set((*BAL, "trader_locked"), "0100"), False),
    ("01", _set((0,), "01"), False),
    ("-0", _set((*OUT, "position"), "-0"), False),
    ("-01", _set((*OUT, "position"), "-01"), False),
    ("+5", _set((*OO, "filled"), "+5"), False),
    ("leading-space", _set((*OO, "first_batch"), " 5"), False),
    ("trailing-space", _set((*OO, "first_batch"), "5 "), False),
    ("empty", _set((*ORD, "nonce"), ""), False),
    ("minus-only", _set((*ORD, "nonce"), "-"), False),
    ("hex", _set((*ORD, "max_fee"), "0x10"), False),
    ("underscore", _set((*ORD, "amount_collateral"), "1_000"), False),
    ("unicode-digit", _set((*ORD, "market"), "\u0661"), False),
    ("too-long", _set((*BAL, "trader_available"), "1" * 81), False),
    ("null", _set((*BAL, "trader_deposit"), None), False),
    ("bool", _set((*OO, "filled"), True), False),
    ("unknown-side", _set((*ORD, "side"), "long"), False),
    ("side-case", _set((*ORD, "side"), "BUY"), False),
    ("side-bool", _set((*ORD, "side"), True), False),
    ("short-channel-id", _set((*ORD, "channel_id"), "0x" + "ab" * 31), False),
    ("long-channel-id", _set((*ORD, "channel_id"), "0x" + "ab" * 33), False),
    ("channel-id-no-0x", _set((*ORD, "channel_id"), "ab" * 33), False),
    ("channel-id-not-hex", _set((*ORD, "channel_id"), "0x" + "zz" * 32), False),
    ("short-signature", _set((*OO, "signature"), "0x" + "11" * 64), False),
    ("long-signature", _set((*OO, "signature"), "0x" + "11" * 66), False),
    ("signature-bytes", _set((*OO, "signature"), [1] * 65), False),
    ("bad-address", _set((*ORD, "trader"), "0x1234"), False),
    ("bad-checksum", _set((*ORD, "collateral"), bad_checksum(MIXED)), False),
    ("missing-balance", _drop((*BAL, "trader_deposit")), False),
    ("missing-order-field", _drop((*ORD, "nonce")), False),
    ("missing-side", _drop((*ORD, "side")), False),
    ("missing-trader", _drop((*ORD, "trader")), False),
    ("missing-order", _drop((*OO, "order")), False),
    ("missing-signature", _drop((*OO, "signature")), False),
    ("missing-filled", _drop((*OO, "filled")), False),
    ("missing-position", _drop((*OUT, "position")), False),
    ("balances-not-object", _set(BAL, ["900"]), False),
    ("orders-not-array", _set((2,), {}), False),
    ("outcomes-not-array", _set((3,), "[]"), False),
    ("order-not-object", _set(OO, "x"), False),
    ("outcome-not-object", _set(OUT, ["0", "0", "0"]), False),
    # out of bounds
    ("version-2^48", _set((0,), str(2**48)), True),
    ("negative-version", _set((0,), "-1"), True),
    ("trader_available-2^63", _set((*BAL, "trader_available"), str(2**63)), True),
    ("broker_available--2^63", _set((*BAL, "broker_available"), str(-(2**63))), True),
    ("negative-locked", _set((*BAL, "trader_locked"), "-1"), True),
    ("negative-deposit", _set((*BAL, "broker_deposit"), "-1"), True),
    ("position-2^63", _set((*OUT, "position"), str(2**63)), True),
    ("position--2^63", _set((*OUT, "position"), str(-(2**63))), True),
    ("fees-2^63", _set((*OUT, "fees"), str(2**63)), True),
    ("last_batch-2^64", _set((*OUT, "last_batch"), str(2**64)), True),
    ("amount-2^64", _set((*ORD, "amount_synthetic"), str(2**64)), True),
    ("negative-amount", _set((*ORD, "amount_collateral"), "-1"), True),
    ("max_fee-2^64", _set((*ORD, "max_fee"), str(2**64)), True),
    ("nonce-2^64", _set((*ORD, "nonce"), str(2**64)), True),
    ("market-2^32", _set((*ORD, "market"), str(2**32)), True),
    ("expiration-2^32", _set((*ORD, "expiration"), str(2**32)), True),
    ("filled-2^64", _set((*OO, "filled"), str(2**64)), True),
    ("first_batch-2^64", _set((*OO, "first_batch"), str(2**64)), True),
]


@pytest.mark.parametrize(("mutate", "is_bound"), [(m[1], m[2]) for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_state_from_json_rejects(mutate: Callable[[list[Any]], None], is_bound: bool) -> None:
    data = copy.deepcopy(make_state().to_json())
    mutate(data)
    with pytest.raises(ValidationError) as info:
        ChannelState.from_json(CHANNEL, False, data)
    assert isinstance(info.value.code, str) and info.value.code
    assert isinstance(info.value.reason, str) and info.value.reason
    assert isinstance(info.value, BoundsError) == is_bound, info.value.reason


@pytest.mark.parametrize(
    "data",
    [
        pytest.param([], id="empty"),
        pytest.param(["5", {}, []], id="three"),
        pytest.param([*make_state().to_json(), "extra"], id="five"),
        pytest.param({"increment": "5"}, id="object"),
        pytest.param("[]", id="string"),
        pytest.param(None, id="null"),
    ],
)
def test_state_from_json_rejects_wrong_shape(data: object) -> None:
    with pytest.raises(ValidationError) as info:
        ChannelState.from_json(CHANNEL, False, data)
    assert isinstance(info.value.code, str) and info.value.code
    assert isinstance(info.value.reason, str) and info.value.reason


def test_state_from_json_rejects_non_bool_final() -> None:
    with pytest.raises(ValidationError):
        ChannelState.from_json(CHANNEL, 1, make_state().to_json())  # type: ignore[arg-type]


def test_state_from_json_rejects_bad_envelope_channel_id() -> None:
    with pytest.raises(ValidationError):
        ChannelState.from_json(ChannelId(bytes(31)), False, make_state().to_json())


def test_from_json_accepts_lowercase_addresses_and_checksums_them() -> None:
    data = copy.deepcopy(make_state().to_json())
    data[2][0]["order"]["trader"] = TRADER.lower()
    state = ChannelState.from_json(CHANNEL, False, data)
    assert state.open_orders[0].order.trader == TRADER


@pytest.mark.parametrize(
    ("cls", "obj"),
    [
        (Balances, make_balances()),
        (Outcome, make_outcome()),
        (Order, make_order()),
        (OpenOrder, make_open_order()),
        (BatchPrice, BatchPrice(MarketId(U32), BatchNumber(U64), Price(U64))),
    ],
    ids=lambda x: x.__name__ if isinstance(x, type) else "",
)
def test_component_json_round_trip(cls: Any, obj: Any) -> None:
    data = obj.to_json()
    assert all(isinstance(leaf, str) for leaf in _leaves(data))
    assert cls.from_json(json.loads(json.dumps(data))) == obj


# --------------------------------------------------------------------------- addresses and sharing
# (MISSION.md, "Bars": a broker holds 100,000 channels; what repeats between them is held once)


@given(n=st.integers(0, 2**160 - 1))
@SETTINGS
def test_checksum_address_matches_eth_utils(n: int) -> None:
    raw = n.to_bytes(20, "big")
    assert checksum_address(raw) == to_checksum_address(raw)


@given(n=st.integers(0, 2**160 - 1), form=st.sampled_from(["checksummed", "lower", "upper", "flipped"]))
@SETTINGS
def test_check_address_agrees_with_eth_utils_every_time(n: int, form: str) -> None:
    good = to_checksum_address(n.to_bytes(20, "big"))
    value = {"checksummed": good, "lower": good.lower(), "upper": "0x" + good[2:].upper()}.get(form)
    if value is None:
        i = next((i for i, c in enumerate(good) if i >= 2 and c.isalpha()), None)
        if i is None:
            return  # no letter: no case to get wrong
        value = good[:i] + good[i].swapcase() + good[i + 1 :]
        if value[2:] in (value[2:].lower(), value[2:].upper()):
            form = "checksummed"  # not mixed case: it carries no checksum and is accepted
    for _ in range(2):  # the second time from what the first remembered
        if form == "flipped":
            with pytest.raises(ValidationError, match="EIP-55"):
                check_address("a", value)
        else:
            assert check_address("a", value) == good


def test_check_address_remembers_a_bounded_number() -> None:
    for n in range(1, 2 * _SHARED_CACHE_SIZE):
        check_address("a", addr(n).lower())
    assert len(_ADDRESSES) <= _SHARED_CACHE_SIZE
    assert check_address("a", addr(1).lower()) == addr(1)


@given(p=channel_params())
@SETTINGS
def test_channel_id_matches_eth_abi_for_any_params(p: ChannelParams) -> None:
    markets_abi = [m.as_abi() for m in p.markets]
    expected_markets_hash = keccak(abi_encode(["(uint256,address,uint256,uint256,uint256)[]"], [markets_abi]))
    assert p.header().markets_hash == expected_markets_hash
    words = ["uint256", "address", "address", "address", "address", "uint256", "uint256", "uint256", "bytes32"]
    values = [p.chain_id, p.adjudicator, p.trader, p.broker, p.token, p.challenge_duration, p.nonce]
    assert p.channel_id == keccak(abi_encode(words, [*values, len(p.markets), expected_markets_hash]))


def test_channels_read_from_json_share_what_repeats() -> None:
    first = ChannelParams.from_json(json.loads(json.dumps(make_params(nonce=1).to_json())))
    second = ChannelParams.from_json(json.loads(json.dumps(make_params(nonce=2).to_json())))
    assert first.markets is second.markets
    for name in ("chain_id", "adjudicator", "broker", "token", "challenge_duration"):
        assert getattr(first, name) is getattr(second, name), name
    assert first != second and first.channel_id != second.channel_id
    assert second == make_params(nonce=2) and hash(second) == hash(make_params(nonce=2))

    state = make_state(
        channel_id=second.channel_id,
        open_orders=(make_open_order(order=make_order(channel_id=second.channel_id)),),
        outcomes=(EMPTY_OUTCOME, Outcome(SyntheticAmount(0), TokenAmount(0), BatchNumber(0))),
    )
    parsed = ChannelState.from_json(ChannelId(bytes(second.channel_id)), False, json.loads(json.dumps(state.to_json())))
    assert parsed == state
    assert parsed.channel_id is second.channel_id
    assert parsed.open_orders[0].order.channel_id is parsed.channel_id
    assert all(o is EMPTY_OUTCOME for o in parsed.outcomes)
    traded = ChannelState.from_json(CHANNEL, False, make_state().to_json())
    assert traded.outcomes == make_state().outcomes  # outcomes of traded markets are their own


def test_shared_nonces() -> None:
    assert shared_nonces(frozenset({1, 2})) is shared_nonces(frozenset([2, 1]))
    assert shared_nonces(frozenset()) == frozenset()
    many = frozenset(range(20))
    assert shared_nonces(many) is many
