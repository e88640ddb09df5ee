"""The adjudicator's own EIP-712 hashing and channel ids equal the Python fast path byte for byte,
for random objects (hypothesis) and at every bound; outside the bounds both sides refuse."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from eth_utils import to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from offchain.chain import errors
from offchain.errors import BoundsError
from offchain.model import (
    Balances,
    BatchPrice,
    ChallengeAuthorization,
    ChannelState,
    OpenOrder,
    Order,
    Outcome,
    check_state,
)
from offchain.sandbox import USD
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
from tests.conftest import World

MAX_BALANCE = 2**63 - 1
MAX_AMOUNT = 2**64 - 1
MAX_UINT32 = 2**32 - 1
MAX_VERSION = 2**48 - 1

FAST = settings(max_examples=15, deadline=None, derandomize=True)

balances_ = st.integers(-MAX_BALANCE, MAX_BALANCE)
non_negative = st.integers(0, MAX_BALANCE)
amounts = st.integers(0, MAX_AMOUNT)
uint32s = st.integers(0, MAX_UINT32)
bytes32s = st.binary(min_size=32, max_size=32)
addresses = st.binary(min_size=20, max_size=20).map(lambda b: Address(to_checksum_address(b)))

orders = st.builds(
    Order,
    channel_id=bytes32s,
    trader=addresses,
    collateral=addresses,
    market=uint32s,
    is_buy=st.booleans(),
    amount_synthetic=amounts,
    amount_collateral=amounts,
    max_fee=amounts,
    nonce=amounts,
    expiration=uint32s,
)
outcomes = st.builds(Outcome, position=balances_, fees=non_negative, last_batch=amounts)
balances = st.builds(
    Balances,
    trader_available=balances_,
    trader_locked=non_negative,
    broker_available=balances_,
    broker_locked=non_negative,
    trader_deposit=non_negative,
    broker_deposit=non_negative,
)


def signed_open_order(w: World, order: Order, filled: int, first_batch: int) -> OpenOrder:
    """An open order carrying the trader's real signature of ``order``."""
    signature = w.trader.signer.sign(w.sb.domain, order)
    return OpenOrder(order, signature, SyntheticAmount(filled), BatchNumber(first_batch))


def assert_state_digest_matches(w: World, state: ChannelState) -> None:
    check_state(state)
    assert w.sb.adjudicator.state_digest(state) == w.sb.domain.state_digest(state)


# --------------------------------------------------------------------------- random objects


@FAST
@given(
    channel_id=bytes32s,
    version=st.integers(0, MAX_VERSION),
    balances=balances,
    open_orders=st.lists(st.tuples(orders, amounts, amounts), max_size=4),
    outcomes=st.lists(outcomes, max_size=4),
    is_final=st.booleans(),
)
def test_state_digest_matches(
    world: World,
    channel_id: bytes,
    version: int,
    balances: Balances,
    open_orders: list[tuple[Order, int, int]],
    outcomes: list[Outcome],
    is_final: bool,
) -> None:
    state = ChannelState(
        channel_id=ChannelId(channel_id),
        version=Version(version),
        balances=balances,
        open_orders=tuple(signed_open_order(world, o, filled, batch) for o, filled, batch in open_orders),
        outcomes=tuple(outcomes),
        is_final=is_final,
    )
    assert_state_digest_matches(world, state)


@FAST
@given(order=orders)
def test_order_digest_matches(world: World, order: Order) -> None:
    order.check()
    assert world.sb.adjudicator.order_digest(order) == world.sb.domain.order_digest(order)


@FAST
@given(market=uint32s, batch=amounts, price=amounts)
def test_batch_price_digest_matches(world: World, market: int, batch: int, price: int) -> None:
    bp = BatchPrice(MarketId(market), BatchNumber(batch), Price(price)).check()
    assert world.sb.adjudicator.batch_price_digest(bp) == world.sb.domain.batch_price_digest(bp)


@FAST
@given(channel_id=bytes32s, agent=addresses)
def test_challenge_authorization_digest_matches(world: World, channel_id: bytes, agent: Address) -> None:
    auth = ChallengeAuthorization(ChannelId(channel_id), agent)
    on_chain = world.sb.adjudicator.challenge_authorization_digest(auth.channel_id, agent)
    assert on_chain == world.sb.domain.challenge_authorization_digest(auth)


# --------------------------------------------------------------------------- chosen states


def test_real_channel_states_match(w: World) -> None:
    """States as the agents build them: several signed open orders, negative balances, positions
    both ways, final and not."""
    params = w.params(markets=3)
    base = w.plain(params, 12, trader_available=-250 * USD)
    open_orders = tuple(
        signed_open_order(
            w,
            Order(
                channel_id=params.channel_id,
                trader=w.trader.address,
                collateral=params.token,
                market=MarketId(params.markets[i % 3].id),
                is_buy=i % 2 == 0,
                amount_synthetic=SyntheticAmount((i + 1) * 10**6),
                amount_collateral=TokenAmount((i + 1) * 2_000 * USD),
                max_fee=TokenAmount(USD),
                nonce=Nonce(100 + i),
                expiration=ExpirationHours(500_000 + i),
            ),
            filled=i * 1_000,
            first_batch=i + 3,
        )
        for i in range(5)
    )
    outcomes = (
        Outcome(SyntheticAmount(3 * 10**6), TokenAmount(12 * USD), BatchNumber(40)),
        Outcome(SyntheticAmount(-(7 * 10**5)), TokenAmount(0), BatchNumber(41)),
        Outcome(SyntheticAmount(0), TokenAmount(5), BatchNumber(0)),
    )
    state = replace(base, open_orders=open_orders, outcomes=outcomes)
    assert_state_digest_matches(w, state)
    assert_state_digest_matches(w, replace(state, is_final=True))
    assert_state_digest_matches(w, replace(state, open_orders=()))
    assert_state_digest_matches(w, replace(state, open_orders=open_orders[:1], outcomes=()))
    # Every field is bound: changing one changes both digests alike.
    digests = {
        w.sb.adjudicator.state_digest(s)
        for s in (
            state,
            replace(state, version=Version(13)),
            replace(state, is_final=True),
            replace(state, open_orders=open_orders[::-1]),
            replace(state, outcomes=outcomes[::-1]),
        )
    }
    assert len(digests) == 5


@pytest.mark.parametrize("sign", [1, -1])
def test_state_at_every_bound_matches(w: World, sign: int) -> None:
    extreme = Order(
        channel_id=ChannelId(b"\xff" * 32),
        trader=Address(to_checksum_address(b"\xff" * 20)),
        collateral=Address(to_checksum_address(b"\xee" * 20)),
        market=MarketId(MAX_UINT32),
        is_buy=sign > 0,
        amount_synthetic=SyntheticAmount(MAX_AMOUNT),
        amount_collateral=TokenAmount(MAX_AMOUNT),
        max_fee=TokenAmount(MAX_AMOUNT),
        nonce=Nonce(MAX_AMOUNT),
        expiration=ExpirationHours(MAX_UINT32),
    )
    state = ChannelState(
        channel_id=ChannelId(b"\xff" * 32),
        version=Version(MAX_VERSION),
        balances=Balances(
            trader_available=TokenAmount(sign * MAX_BALANCE),
            trader_locked=TokenAmount(MAX_BALANCE),
            broker_available=TokenAmount(-sign * MAX_BALANCE),
            broker_locked=TokenAmount(MAX_BALANCE),
            trader_deposit=TokenAmount(MAX_BALANCE),
            broker_deposit=TokenAmount(MAX_BALANCE),
        ),
        open_orders=(signed_open_order(w, extreme, MAX_AMOUNT, MAX_AMOUNT),),
        outcomes=(Outcome(SyntheticAmount(sign * MAX_BALANCE), TokenAmount(MAX_BALANCE), BatchNumber(MAX_AMOUNT)),),
        is_final=sign > 0,
    )
    assert_state_digest_matches(w, state)
    assert w.sb.adjudicator.order_digest(extreme) == w.sb.domain.order_digest(extreme)
    bp = BatchPrice(MarketId(MAX_UINT32), BatchNumber(MAX_AMOUNT), Price(MAX_AMOUNT))
    assert w.sb.adjudicator.batch_price_digest(bp) == w.sb.domain.batch_price_digest(bp)


def test_empty_state_matches(w: World) -> None:
    state = ChannelState(
        channel_id=ChannelId(bytes(32)),
        version=Version(0),
        balances=Balances(*(TokenAmount(0) for _ in range(6))),
        open_orders=(),
        outcomes=(),
        is_final=False,
    )
    assert_state_digest_matches(w, state)


# --------------------------------------------------------------------------- out of bounds


def _plain(w: World) -> ChannelState:
    params = w.params(markets=1)
    return w.plain(params, 1)


def _with_order(w: World, state: ChannelState, **changes: Any) -> ChannelState:
    order = Order(
        channel_id=state.channel_id,
        trader=w.trader.address,
        collateral=w.sb.token.address,
        market=MarketId(1),
        is_buy=True,
        amount_synthetic=SyntheticAmount(1),
        amount_collateral=TokenAmount(1),
        max_fee=TokenAmount(0),
        nonce=Nonce(1),
        expiration=ExpirationHours(1),
    )
    open_order = OpenOrder(
        replace(order, **changes.get("order", {})), Signature(b"\x01" * 65), SyntheticAmount(0), BatchNumber(0)
    )
    return replace(state, open_orders=(replace(open_order, **changes.get("open_order", {})),))


OUT_OF_BOUNDS: dict[str, Any] = {
    "version": lambda w, s: replace(s, version=2**48),
    "trader_available above": lambda w, s: replace(s, balances=replace(s.balances, trader_available=2**63)),
    "trader_available below": lambda w, s: replace(s, balances=replace(s.balances, trader_available=-(2**63))),
    "broker_available": lambda w, s: replace(s, balances=replace(s.balances, broker_available=-(2**63))),
    "trader_locked": lambda w, s: replace(s, balances=replace(s.balances, trader_locked=2**63)),
    "broker_locked": lambda w, s: replace(s, balances=replace(s.balances, broker_locked=2**63)),
    "trader_deposit": lambda w, s: replace(s, balances=replace(s.balances, trader_deposit=2**63)),
    "broker_deposit": lambda w, s: replace(s, balances=replace(s.balances, broker_deposit=2**63)),
    "position": lambda w, s: replace(s, outcomes=(Outcome(SyntheticAmount(2**63), TokenAmount(0), BatchNumber(0)),)),
    "fees": lambda w, s: replace(s, outcomes=(Outcome(SyntheticAmount(0), TokenAmount(2**63), BatchNumber(0)),)),
    "last_batch": lambda w, s: replace(s, outcomes=(Outcome(SyntheticAmount(0), TokenAmount(0), BatchNumber(2**64)),)),
    "order market": lambda w, s: _with_order(w, s, order={"market": 2**32}),
    "order amount": lambda w, s: _with_order(w, s, order={"amount_collateral": 2**64}),
    "order nonce": lambda w, s: _with_order(w, s, order={"nonce": 2**64}),
    "order expiration": lambda w, s: _with_order(w, s, order={"expiration": 2**32}),
    "filled": lambda w, s: _with_order(w, s, open_order={"filled": 2**64}),
    "first_batch": lambda w, s: _with_order(w, s, open_order={"first_batch": 2**64}),
}


@pytest.mark.parametrize("field", list(OUT_OF_BOUNDS))
def test_out_of_bounds_state_is_refused_by_both_sides(w: World, field: str) -> None:
    state = OUT_OF_BOUNDS[field](w, _plain(w))
    with pytest.raises(BoundsError):
        check_state(state)
    with pytest.raises(errors.ValueOutOfBounds):
        w.sb.adjudicator.state_digest(state)


@pytest.mark.parametrize(
    "price",
    [
        BatchPrice(MarketId(2**32), BatchNumber(0), Price(1)),
        BatchPrice(MarketId(0), BatchNumber(2**64), Price(1)),
        BatchPrice(MarketId(0), BatchNumber(0), Price(2**64)),
    ],
)
def test_out_of_bounds_batch_price_is_refused_by_both_sides(w: World, price: BatchPrice) -> None:
    with pytest.raises(BoundsError):
        price.check()
    with pytest.raises(errors.ValueOutOfBounds):
        w.sb.adjudicator.batch_price_digest(price)


# --------------------------------------------------------------------------- channel ids


@pytest.mark.parametrize("markets", [0, 1, 3, 16])
def test_channel_id_and_header_match(w: World, markets: int) -> None:
    params = w.params(markets=markets)
    assert w.sb.adjudicator.channel_id(params) == params.channel_id
    header = w.sb.adjudicator.contract.functions.headerOf(params.as_abi()).call()
    assert tuple(header) == params.header().as_abi()


def test_channel_id_binds_every_parameter(w: World) -> None:
    params = w.params(markets=2)
    variants = [
        params,
        replace(params, nonce=params.nonce + 1),
        replace(params, challenge_duration=params.challenge_duration + 1),
        replace(params, trader=params.broker, broker=params.trader),
        replace(params, token=w.outsider.address),
        replace(params, markets=params.markets[::-1]),
        replace(params, markets=params.markets[:1]),
        replace(params, markets=(replace(params.markets[0], max_price_age=7), params.markets[1])),
    ]
    ids = [w.sb.adjudicator.channel_id(p) for p in variants]
    assert ids == [p.channel_id for p in variants]
    assert len(set(ids)) == len(variants)
