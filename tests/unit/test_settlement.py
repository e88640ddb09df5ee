"""The payout rule (MISSION.md, "The channel on-chain", item 7) and its rounding."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from offchain.model import (
    MAX_BALANCE,
    Balances,
    ChannelParams,
    ChannelState,
    Market,
    Outcome,
    initial_state,
)
from offchain.settlement import OraclePrice, Payouts, payouts, position_value
from offchain.types import BatchNumber, MarketId, SyntheticAmount, TokenAmount, Version
from tests.unit.test_model import (
    SETTINGS,
    addresses,
    channel_params,
    int_in,
    make_market,
    make_params,
)

USD6 = 6  # token decimals of a USDC-like collateral


def exact_value(market: Market, position: int, price: OraclePrice, token_decimals: int) -> Fraction:
    return Fraction(position * price.answer * 10**token_decimals, market.resolution * 10**price.decimals)


def make_state_for(
    params: ChannelParams,
    positions: list[int],
    trader_available: int = 1000,
    trader_locked: int = 0,
    trader_deposit: int = 1000,
    broker_deposit: int = 5000,
) -> ChannelState:
    return ChannelState(
        channel_id=params.channel_id,
        version=Version(3),
        balances=Balances(
            trader_available=TokenAmount(trader_available),
            trader_locked=TokenAmount(trader_locked),
            broker_available=TokenAmount(trader_deposit + broker_deposit - trader_available - trader_locked),
            broker_locked=TokenAmount(0),
            trader_deposit=TokenAmount(trader_deposit),
            broker_deposit=TokenAmount(broker_deposit),
        ),
        open_orders=(),
        outcomes=tuple(Outcome(SyntheticAmount(p), TokenAmount(0), BatchNumber(0)) for p in positions),
    )


# --------------------------------------------------------------------------- position_value

HALF = make_market(resolution=2)
ONE = OraclePrice(answer=1, decimals=0)


def test_position_value_rounds_toward_negative_infinity() -> None:
    # exact value 1 * 1 / 2 = 0.5
    assert position_value(HALF, 1, ONE, 0) == 0
    assert position_value(HALF, -1, ONE, 0) == -1
    # exact value 3 / 2 = 1.5
    assert position_value(HALF, 3, ONE, 0) == 1
    assert position_value(HALF, -3, ONE, 0) == -2
    # exact value 1/3
    third = make_market(resolution=3)
    assert position_value(third, 1, ONE, 0) == 0
    assert position_value(third, -1, ONE, 0) == -1
    assert position_value(third, 2, ONE, 0) == 0
    assert position_value(third, -2, ONE, 0) == -1


def test_position_value_exact_values_are_exact() -> None:
    assert position_value(HALF, 0, ONE, 0) == 0
    assert position_value(HALF, 2, ONE, 0) == 1
    assert position_value(HALF, -2, ONE, 0) == -1
    assert position_value(HALF, 4, OraclePrice(7, 0), 0) == 14
    assert position_value(HALF, -4, OraclePrice(7, 0), 0) == -14
    # decimals cancel exactly
    assert position_value(make_market(resolution=1), 5, OraclePrice(3 * 10**18, 18), 18) == 15 * 10**18


def test_position_value_hand_computed() -> None:
    gold = make_market(resolution=1000)
    price = OraclePrice(answer=2010 * 10**8, decimals=8)
    # 2 whole units at 2010 with 6 token decimals
    assert position_value(gold, 2000, price, USD6) == 4_020_000_000
    assert position_value(gold, -2000, price, USD6) == -4_020_000_000
    # one base unit is 2.01 USD = 2_010_000 base units
    assert position_value(gold, 1, price, USD6) == 2_010_000
    # a price of 2010.00000001 makes one base unit worth 2_010_000.00001: floored both ways
    odd = OraclePrice(answer=2010 * 10**8 + 1, decimals=8)
    assert position_value(gold, 1, odd, USD6) == 2_010_000
    assert position_value(gold, -1, odd, USD6) == -2_010_001


@SETTINGS
@given(
    st.integers(1, 10**12),
    int_in(-MAX_BALANCE, MAX_BALANCE),
    st.integers(1, 2**127),
    st.integers(0, 18),
    st.integers(0, 18),
)
def test_position_value_is_the_floor(resolution: int, position: int, answer: int, decimals: int, token: int) -> None:
    market = make_market(resolution=resolution)
    price = OraclePrice(answer, decimals)
    value = position_value(market, position, price, token)
    exact = exact_value(market, position, price, token)
    assert value == math.floor(exact)
    assert value <= exact < value + 1
    # against the trader: a short never costs less than the long is worth
    assert position_value(market, -position, price, token) == -math.ceil(exact)


# --------------------------------------------------------------------------- hand-computed payouts


def test_payout_hand_computed() -> None:
    params = make_params(markets=(make_market(id=MarketId(1), resolution=1000),))
    state = make_state_for(
        params, [2000], trader_available=-3_000_000_000, trader_deposit=1_000_000_000, broker_deposit=9_000_000_000
    )
    prices = {1: OraclePrice(2010 * 10**8, 8)}
    result = payouts(params, state, 1_000_000_000, 9_000_000_000, prices, USD6)
    # -3000 USD + 4020 USD = 1020 USD
    assert result == Payouts(to_trader=1_020_000_000, to_broker=8_980_000_000)
    assert result.total == 10_000_000_000
    assert result.underfunded is False


def test_payout_initial_state_returns_deposits() -> None:
    params = make_params()
    state = initial_state(params, 1000, 5000)
    assert payouts(params, state, 1000, 5000, {}, USD6) == Payouts(1000, 5000)


def test_payout_counts_locked_collateral_for_the_trader() -> None:
    params = make_params(markets=())
    state = make_state_for(params, [], trader_available=600, trader_locked=300)
    assert payouts(params, state, 1000, 5000, {}, USD6) == Payouts(900, 5100)


def test_payout_needs_no_price_for_flat_markets() -> None:
    params = make_params()
    state = make_state_for(params, [0, 0], trader_available=700)
    assert payouts(params, state, 1000, 5000, {}, USD6) == Payouts(700, 5300)


def test_payout_sums_positions_of_several_markets() -> None:
    params = make_params(
        markets=(make_market(id=MarketId(1), resolution=1000), make_market(id=MarketId(9), resolution=10))
    )
    state = make_state_for(params, [1500, -3], trader_available=100, trader_deposit=1000, broker_deposit=10_000)
    prices = {1: OraclePrice(2, 0), 9: OraclePrice(50, 1)}
    # 1.5 units * 2 = 3; -0.3 units * 5 = -1.5 -> -2
    assert payouts(params, state, 1000, 10_000, prices, 0) == Payouts(101, 10_899)


# --------------------------------------------------------------------------- clamp and funding safety


def test_clamp_above_total() -> None:
    params = make_params(markets=(make_market(id=MarketId(1), resolution=1),))
    state = make_state_for(params, [10**6], trader_available=1000)
    result = payouts(params, state, 1000 + 7, 5000 + 11, {1: OraclePrice(10**6, 0)}, 0)
    assert result == Payouts(to_trader=6000 + 7, to_broker=11)


def test_clamp_below_zero() -> None:
    params = make_params(markets=(make_market(id=MarketId(1), resolution=1),))
    state = make_state_for(params, [-(10**6)], trader_available=1000)
    result = payouts(params, state, 1000 + 7, 5000 + 11, {1: OraclePrice(10**6, 0)}, 0)
    assert result == Payouts(to_trader=7, to_broker=6000 + 11)


def test_clamp_negative_available() -> None:
    params = make_params(markets=())
    state = make_state_for(params, [], trader_available=-50)
    assert payouts(params, state, 1000, 5000, {}, 0) == Payouts(0, 6000)


def test_clamp_exact_edges() -> None:
    params = make_params(markets=())
    assert payouts(params, make_state_for(params, [], trader_available=0), 1000, 5000, {}, 0) == Payouts(0, 6000)
    assert payouts(params, make_state_for(params, [], trader_available=6000), 1000, 5000, {}, 0) == Payouts(6000, 0)


@pytest.mark.parametrize(
    ("trader_deposit", "broker_deposit"), [(999, 5000), (1000, 4999), (0, 0), (999, 10**9), (10**9, 4999)]
)
def test_underfunded_returns_deposits(trader_deposit: int, broker_deposit: int) -> None:
    params = make_params(markets=(make_market(id=MarketId(1), resolution=1),))
    state = make_state_for(params, [10**6], trader_available=1000)
    result = payouts(params, state, trader_deposit, broker_deposit, {1: OraclePrice(10**6, 0)}, 0)
    assert result == Payouts(trader_deposit, broker_deposit, underfunded=True)
    assert result.underfunded is True


def test_exactly_funded_is_not_underfunded() -> None:
    params = make_params(markets=())
    assert payouts(params, make_state_for(params, []), 1000, 5000, {}, 0).underfunded is False


# --------------------------------------------------------------------------- properties

prices_st = st.builds(OraclePrice, answer=st.integers(1, 2**127), decimals=st.integers(0, 18))


@st.composite
def scenarios(
    draw: st.DrawFn, funded: bool = True
) -> tuple[ChannelParams, ChannelState, int, int, dict[int, OraclePrice], int]:
    params = draw(channel_params(min_markets=1, max_markets=4))
    trader_deposit = draw(int_in(0, MAX_BALANCE))
    broker_deposit = draw(int_in(0, MAX_BALANCE))
    if draw(st.booleans()):  # balances consistent with the deposits
        trader_locked = draw(st.integers(0, trader_deposit))
        trader_available = draw(st.integers(-MAX_BALANCE, MAX_BALANCE - trader_locked))
        broker_available = trader_deposit + broker_deposit - trader_available - trader_locked
        assume(-MAX_BALANCE <= broker_available <= MAX_BALANCE)
    else:  # anything within bounds
        trader_locked = draw(int_in(0, MAX_BALANCE))
        trader_available = draw(int_in(-MAX_BALANCE, MAX_BALANCE))
        broker_available = draw(int_in(-MAX_BALANCE, MAX_BALANCE))
    state = ChannelState(
        channel_id=params.channel_id,
        version=Version(draw(st.integers(0, 2**48 - 1))),
        balances=Balances(
            trader_available=TokenAmount(trader_available),
            trader_locked=TokenAmount(trader_locked),
            broker_available=TokenAmount(broker_available),
            broker_locked=TokenAmount(0),
            trader_deposit=TokenAmount(trader_deposit),
            broker_deposit=TokenAmount(broker_deposit),
        ),
        open_orders=(),
        outcomes=tuple(
            Outcome(SyntheticAmount(draw(int_in(-MAX_BALANCE, MAX_BALANCE))), TokenAmount(0), BatchNumber(0))
            for _ in params.markets
        ),
    )
    prices: dict[int, OraclePrice] = {m.id: draw(prices_st) for m in params.markets}
    if funded:
        on_chain_trader = trader_deposit + draw(st.one_of(st.just(0), st.integers(0, 2**80)))
        on_chain_broker = broker_deposit + draw(st.one_of(st.just(0), st.integers(0, 2**80)))
    else:
        on_chain_trader = draw(st.integers(0, trader_deposit))
        on_chain_broker = draw(st.integers(0, broker_deposit))
        assume(on_chain_trader < trader_deposit or on_chain_broker < broker_deposit)
    return params, state, on_chain_trader, on_chain_broker, prices, draw(st.integers(0, 18))


@SETTINGS
@given(scenarios())
def test_payouts_conserve_and_stay_in_range(
    scenario: tuple[ChannelParams, ChannelState, int, int, dict[int, OraclePrice], int],
) -> None:
    params, state, trader_deposit, broker_deposit, prices, token_decimals = scenario
    result = payouts(params, state, trader_deposit, broker_deposit, prices, token_decimals)
    holdings = trader_deposit + broker_deposit
    b = state.balances
    assert result.underfunded is False
    assert result.to_trader + result.to_broker == holdings
    assert result.total == holdings
    assert 0 <= result.to_trader <= holdings
    assert 0 <= result.to_broker <= holdings
    assert result.to_trader >= trader_deposit - b.trader_deposit
    assert result.to_broker >= broker_deposit - b.broker_deposit


@SETTINGS
@given(scenarios())
def test_payouts_follow_the_rule(
    scenario: tuple[ChannelParams, ChannelState, int, int, dict[int, OraclePrice], int],
) -> None:
    """An independent computation with exact fractions: floor each position, clamp, add the excess."""
    params, state, trader_deposit, broker_deposit, prices, token_decimals = scenario
    b = state.balances
    value = b.trader_available + b.trader_locked
    for market, outcome in zip(params.markets, state.outcomes, strict=True):
        value += math.floor(exact_value(market, outcome.position, prices[market.id], token_decimals))
    accounted = b.trader_deposit + b.broker_deposit
    share = min(max(value, 0), accounted)
    result = payouts(params, state, trader_deposit, broker_deposit, prices, token_decimals)
    assert result.to_trader == share + (trader_deposit - b.trader_deposit)
    assert result.to_broker == accounted - share + (broker_deposit - b.broker_deposit)


@SETTINGS
@given(scenarios(funded=False))
def test_underfunded_property(
    scenario: tuple[ChannelParams, ChannelState, int, int, dict[int, OraclePrice], int],
) -> None:
    params, state, trader_deposit, broker_deposit, prices, token_decimals = scenario
    result = payouts(params, state, trader_deposit, broker_deposit, prices, token_decimals)
    assert result == Payouts(trader_deposit, broker_deposit, underfunded=True)
    assert result.total == trader_deposit + broker_deposit


@SETTINGS
@given(addresses, st.integers(0, 10**12), st.integers(0, 10**12))
def test_initial_state_pays_back_deposits(feed: str, trader_deposit: int, broker_deposit: int) -> None:
    params = make_params(markets=(make_market(feed=feed),))
    state = initial_state(params, trader_deposit, broker_deposit)
    assert state.channel_id == params.channel_id
    assert payouts(params, state, trader_deposit, broker_deposit, {}, USD6) == Payouts(trader_deposit, broker_deposit)
