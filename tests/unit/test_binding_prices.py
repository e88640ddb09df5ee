"""Binding batch prices as pure functions (MISSION.md, "Batches", "Slashing"): when a signed price
crosses an order (``offchain.engine.rules.crosses``), which evidence the adjudicator keeps
(``offchain.settlement.record_evidence``), what a fill from evidence moves (``evidence_fill``), the
payouts with evidence and with slashing, and the agent-side detection of a broker that signed two
prices or left an order out (``offchain.engine.slashing``).

The on-chain counterparts are checked against these in tests/contracts/test_evidence*.py and
tests/contracts/test_slashing.py.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from offchain.engine.auction import BookOrder, limit_accepts, strictly_better
from offchain.engine.rules import (
    check_fee,
    check_fill_price,
    collateral_lock,
    crosses,
    fee_lock,
    lock_needed,
    total_lock,
)
from offchain.engine.slashing import PricesBetween, left_out_orders, two_prices
from offchain.errors import ValidationError
from offchain.model import MAX_BALANCE, Balances, BatchPrice, ChannelState, OpenOrder, Order, Outcome
from offchain.settlement import (
    SECONDS_PER_HOUR,
    Evidence,
    EvidenceFill,
    OraclePrice,
    Payouts,
    evidence_crosses,
    evidence_fill,
    fills_from_evidence,
    payouts,
    record_evidence,
)
from offchain.store import MemoryStore, StoredBatchPrice
from offchain.types import (
    BatchNumber,
    ExpirationHours,
    MarketId,
    Nonce,
    Price,
    Signature,
    SyntheticAmount,
    TokenAmount,
    Version,
)
from tests.unit.test_model import BROKER, addr, int_in, make_market, make_params

U64 = 2**64 - 1
RES = 1_000  # market 1's resolution in PARAMS (market 2's is 10**8)
PARAMS = make_params()
NOW = 1_800_000_000  # seconds
FAR = ExpirationHours(NOW // SECONDS_PER_HOUR + 1_000)
SIG = Signature(bytes(65))
ORACLE = {1: OraclePrice(2_000 * 10**8, 8), 2: OraclePrice(60_000 * 10**8, 8)}
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def order(
    nonce: int = 1,
    *,
    is_buy: bool = True,
    size: int = 2_000,
    collateral: int = 4_000,
    max_fee: int = 40,
    market: int = 1,
    expiration: int = FAR,
) -> Order:
    """An order of PARAMS's channel; by default a buy of 2,000 units for 4,000 (2,000 per 1,000 units)."""
    return Order(
        channel_id=PARAMS.channel_id,
        trader=PARAMS.trader,
        collateral=PARAMS.token,
        market=MarketId(market),
        is_buy=is_buy,
        amount_synthetic=SyntheticAmount(size),
        amount_collateral=TokenAmount(collateral),
        max_fee=TokenAmount(max_fee),
        nonce=Nonce(nonce),
        expiration=ExpirationHours(expiration),
    )


def open_(o: Order, filled: int = 0, first_batch: int = 1) -> OpenOrder:
    return OpenOrder(o, SIG, SyntheticAmount(filled), BatchNumber(first_batch))


def state_with(
    orders: list[OpenOrder],
    last_batches: tuple[int, int] = (0, 0),
    positions: tuple[int, int] = (0, 0),
    deposits: tuple[int, int] = (10_000, 10_000),
) -> ChannelState:
    lock = total_lock(orders)
    return ChannelState(
        channel_id=PARAMS.channel_id,
        version=Version(4),
        balances=Balances(
            trader_available=TokenAmount(deposits[0] - lock),
            trader_locked=TokenAmount(lock),
            broker_available=TokenAmount(deposits[1]),
            broker_locked=TokenAmount(0),
            trader_deposit=TokenAmount(deposits[0]),
            broker_deposit=TokenAmount(deposits[1]),
        ),
        open_orders=tuple(orders),
        outcomes=tuple(
            Outcome(SyntheticAmount(p), TokenAmount(0), BatchNumber(b))
            for p, b in zip(positions, last_batches, strict=True)
        ),
    )


def bp(batch: int, price: int, market: int = 1) -> BatchPrice:
    return BatchPrice(MarketId(market), BatchNumber(batch), Price(price))


def record_all(state: ChannelState, prices: list[BatchPrice], now: int = NOW) -> dict[int, Evidence]:
    evidence: dict[int, Evidence] = {}
    for price in prices:
        evidence = record_evidence(evidence, PARAMS, state, price, now)
    return evidence


# --------------------------------------------------------------------------- crosses


@st.composite
def limits(draw: st.DrawFn) -> tuple[bool, int, int, int, int]:
    """(is_buy, S, C, price, resolution), with the price often at or next to the order's limit."""
    is_buy = draw(st.booleans())
    size = draw(st.one_of(int_in(1, U64), st.integers(1, 10)))
    collateral = draw(st.one_of(int_in(0, U64), st.integers(0, 10**6)))
    resolution = draw(st.one_of(int_in(1, U64), st.sampled_from([1, 3, 1_000, 10**6])))
    limit = collateral * resolution // size
    near = min(max(limit - 2, 0), U64 - 4)
    price = draw(st.one_of(int_in(0, U64), st.integers(near, near + 4)))
    return is_buy, size, collateral, price, resolution


@SETTINGS
@given(limits())
def test_crosses_is_the_auctions_strictly_better(case: tuple[bool, int, int, int, int]) -> None:
    is_buy, size, collateral, price, resolution = case
    o = order(is_buy=is_buy, size=size, collateral=collateral)
    book = BookOrder((b"channel", 1), is_buy, size, collateral, size, 0)
    assert crosses(o, price, resolution) == strictly_better(book, price, resolution)
    # Strictly better: the order also accepts the next price away from it, on the uint64 grid.
    step = 1 if is_buy else -1
    neighbour = price + step
    expected = 1 <= neighbour <= U64 and limit_accepts(is_buy, size, collateral, neighbour, resolution)
    assert crosses(o, price, resolution) == expected
    if crosses(o, price, resolution):
        assert limit_accepts(is_buy, size, collateral, price, resolution)


def test_an_order_exactly_at_the_price_is_not_crossed() -> None:
    buy = order(size=2_000, collateral=4_000)  # 2,000 per 1,000 units: C * res == P * S at P = 2,000
    assert 4_000 * RES == 2_000 * 2_000
    assert not crosses(buy, 2_000, RES) and crosses(buy, 1_999, RES) and not crosses(buy, 2_001, RES)
    sell = order(is_buy=False, size=2_000, collateral=4_000)
    assert not crosses(sell, 2_000, RES) and crosses(sell, 2_001, RES) and not crosses(sell, 1_999, RES)
    # Off the grid: 3 units for 7 at resolution 1,000 is 2,333.33...: the buy accepts 2,333 only.
    fractional = order(size=3, collateral=7)
    assert limit_accepts(True, 3, 7, 2_333, RES) and not crosses(fractional, 2_333, RES)
    assert crosses(fractional, 2_332, RES)
    # The grid's ends: a buy never crosses 2^64 - 1, a sell never crosses 1 (nor 0).
    assert not crosses(order(size=1, collateral=U64), U64, U64) and crosses(order(size=1, collateral=U64), U64 - 1, U64)
    assert not crosses(order(is_buy=False, collateral=0), 1, RES) and crosses(order(is_buy=False, collateral=0), 2, RES)


# --------------------------------------------------------------------------- record_evidence


def test_evidence_crosses_checks_market_eligibility_last_batch_and_fill() -> None:
    a = open_(order(1), first_batch=3)
    state = state_with([a, open_(order(2), filled=2_000), open_(order(3, market=2, collateral=4 * 10**8))], (4, 0))
    crossing = bp(5, 1_000)
    assert evidence_crosses(PARAMS, state, 0, crossing)
    assert not evidence_crosses(PARAMS, state, 0, bp(4, 1_000))  # the state reflects batch 4
    assert not evidence_crosses(
        PARAMS, replace(state, open_orders=(replace(a, first_batch=BatchNumber(6)),)), 0, crossing
    )
    assert not evidence_crosses(PARAMS, state, 1, crossing)  # completely filled
    assert not evidence_crosses(PARAMS, state, 2, crossing)  # another market
    assert evidence_crosses(PARAMS, state, 2, bp(1, 1_000, market=2))  # its own market: lastBatch 0 there
    assert not evidence_crosses(PARAMS, state, 0, bp(5, 2_000))  # at the price


def test_the_earliest_batch_wins_and_later_ones_change_nothing() -> None:
    state = state_with([open_(order(1))])
    evidence = record_all(state, [bp(5, 1_900)])
    assert evidence == {0: Evidence(5, 1_900)}
    assert record_evidence(evidence, PARAMS, state, bp(6, 1_000), NOW) == evidence
    assert record_evidence(evidence, PARAMS, state, bp(5, 1_000), NOW) == evidence  # the same batch again
    assert record_evidence(evidence, PARAMS, state, bp(4, 2_000), NOW) == evidence  # earlier, at the price
    assert record_evidence(evidence, PARAMS, state, bp(3, 1_990), NOW) == {0: Evidence(3, 1_990)}
    assert evidence == {0: Evidence(5, 1_900)}  # the input is not modified


def test_expiry_stops_first_crossings_only() -> None:
    expiration = NOW // SECONDS_PER_HOUR + 1
    expires_at = expiration * SECONDS_PER_HOUR
    state = state_with([open_(order(1, expiration=expiration)), open_(order(2, expiration=expiration))])
    assert record_evidence({}, PARAMS, state, bp(5, 1_500), expires_at - 1) == {
        0: Evidence(5, 1_500),
        1: Evidence(5, 1_500),
    }
    assert record_evidence({}, PARAMS, state, bp(5, 1_500), expires_at) == {}
    held = {0: Evidence(5, 1_500)}
    assert record_evidence(held, PARAMS, state, bp(3, 1_800), expires_at + 3_600) == {0: Evidence(3, 1_800)}


def test_a_price_of_a_market_outside_the_channel_is_refused() -> None:
    with pytest.raises(ValidationError):
        record_evidence({}, PARAMS, state_with([open_(order(1))]), bp(1, 1, market=99), NOW)


def test_two_prices_for_one_batch_keep_the_first_submitted() -> None:
    """Equivocation makes the evidence depend on the order of submission (and slashes the broker)."""
    state = state_with([open_(order(1))])
    assert record_all(state, [bp(2, 1_500), bp(2, 1_000)]) == {0: Evidence(2, 1_500)}
    assert record_all(state, [bp(2, 1_000), bp(2, 1_500)]) == {0: Evidence(2, 1_000)}


@st.composite
def evidence_cases(draw: st.DrawFn) -> tuple[ChannelState, list[BatchPrice]]:
    """A state with up to 5 unexpired open orders in PARAMS's two markets and signed prices for
    distinct (market, batch) pairs, often next to the orders' limits."""
    orders: list[OpenOrder] = []
    for nonce in range(draw(st.integers(1, 5))):
        market = draw(st.sampled_from([1, 2]))
        resolution = PARAMS.markets[market - 1].resolution
        size = draw(st.integers(1, 10**6))
        limit = draw(st.integers(1, 10**6))
        collateral = limit * size // resolution + draw(st.integers(-1, 1))
        o = order(nonce, is_buy=draw(st.booleans()), size=size, collateral=max(collateral, 0), market=market)
        orders.append(
            open_(o, filled=draw(st.sampled_from([0, 0, size // 2, size])), first_batch=draw(st.integers(0, 6)))
        )
    state = state_with(orders, (draw(st.integers(0, 3)), draw(st.integers(0, 3))))
    limits = [
        o.order.amount_collateral * PARAMS.markets[o.order.market - 1].resolution // o.order.amount_synthetic
        for o in orders
    ]
    keys = draw(st.lists(st.tuples(st.sampled_from([1, 2]), st.integers(0, 8)), min_size=1, max_size=8, unique=True))
    prices = [
        bp(
            batch,
            max(draw(st.one_of(st.sampled_from(limits), st.integers(0, 10**6))) + draw(st.integers(-2, 2)), 0),
            market,
        )
        for market, batch in keys
    ]
    return state, prices


@SETTINGS
@given(evidence_cases(), st.data())
def test_evidence_does_not_depend_on_the_order_of_submission(
    case: tuple[ChannelState, list[BatchPrice]], data: st.DataObject
) -> None:
    """With one price per (market, batch) and unexpired orders, any permutation of the prices
    (one by one) gives the same evidence: per order, the earliest crossing batch and its price."""
    state, prices = case
    evidence = record_all(state, prices)
    expected: dict[int, Evidence] = {}
    for i in range(len(state.open_orders)):
        crossing = [p for p in prices if evidence_crosses(PARAMS, state, i, p)]
        if crossing:
            first = min(crossing, key=lambda p: p.batch)
            expected[i] = Evidence(first.batch, first.price)
    assert evidence == expected
    for _ in range(4):
        assert record_all(state, data.draw(st.permutations(prices))) == expected
    # Submitting again changes nothing.
    assert record_all(state, prices + prices) == expected


# --------------------------------------------------------------------------- evidence_fill


def test_evidence_fill_hand_computed() -> None:
    # A buy of 2,000 units for 4,000 (max fee 40), 500 filled, at 1,990 per 1,000 units:
    # pays ceil(1,500 * 1.99) = 2,985 (lock left 3,000); fee min(ceil(40 * 1,500 / 2,000) = 30,
    # 40 * 2,985 // 4,000 = 29) = 29.
    assert evidence_fill(open_(order(1), filled=500), 1_990, RES) == EvidenceFill(1_500, 2_985, 29)
    # Rounded up but never above the lock: 3 units for 7 at 2,332 per 1,000 is 6.996 -> 7 = the lock.
    assert evidence_fill(open_(order(1, size=3, collateral=7, max_fee=1)), 2_332, RES) == EvidenceFill(3, 7, 1)
    # A sell receives the value rounded down; its fee is the pro-rata lock when the ratio allows.
    sell = order(1, is_buy=False, size=2_000, collateral=4_000, max_fee=40)
    assert evidence_fill(open_(sell, filled=1_000), 2_501, RES) == EvidenceFill(1_000, 2_501, 20)
    # An order for nothing pays its whole remaining fee lock.
    free = order(1, is_buy=False, size=10, collateral=0, max_fee=7)
    assert evidence_fill(open_(free, filled=3), 5, RES) == EvidenceFill(7, 0, 5)


@st.composite
def fills(draw: st.DrawFn) -> tuple[OpenOrder, int, int]:
    is_buy = draw(st.booleans())
    size = draw(st.one_of(int_in(1, U64), st.integers(1, 1_000)))
    o = order(
        is_buy=is_buy,
        size=size,
        collateral=draw(st.one_of(int_in(0, U64), st.integers(0, 10**6))),
        max_fee=draw(st.one_of(int_in(0, U64), st.integers(0, 1_000))),
    )
    filled = draw(st.integers(0, size - 1))
    resolution = draw(st.one_of(int_in(1, U64), st.sampled_from([1, 1_000, 10**6])))
    limit = o.amount_collateral * resolution // size
    near = min(max(limit - 2, 0), U64 - 4)
    price = draw(st.one_of(int_in(0, U64), st.integers(near, near + 4)))
    return open_(o, filled=filled), price, resolution


@SETTINGS
@given(fills())
def test_evidence_fill_stays_within_the_order(case: tuple[OpenOrder, int, int]) -> None:
    oo, price, resolution = case
    o = oo.order
    fill = evidence_fill(oo, price, resolution)
    assert fill.amount == o.amount_synthetic - oo.filled
    assert fill.collateral >= 0 and fill.fee >= 0
    # The fee: at most the max fee, the fee lock of the remainder, and the signed ratio.
    assert fill.fee <= o.max_fee
    assert fill.fee <= fee_lock(o, oo.filled)
    if o.amount_collateral:
        assert fill.fee * o.amount_collateral <= o.max_fee * fill.collateral
    if o.is_buy:
        # A buyer never pays more than its remaining lock.
        assert fill.collateral <= collateral_lock(o, oo.filled)
        assert fill.collateral + fill.fee <= lock_needed(o, oo.filled)
        assert fill.collateral == min(-(-fill.amount * price // resolution), collateral_lock(o, oo.filled))
    else:
        assert fill.collateral == fill.amount * price // resolution
    if crosses(o, price, resolution):
        # A crossing price gives a fill the engine's own order rules accept.
        check_fill_price(o, fill.amount, fill.collateral)
        check_fee(o, fill.fee, fill.collateral)


# --------------------------------------------------------------------------- payouts


@st.composite
def payout_cases(draw: st.DrawFn) -> tuple[ChannelState, dict[int, Evidence], int, int, dict[int, OraclePrice]]:
    state, prices = draw(evidence_cases())
    positions = (draw(int_in(-MAX_BALANCE, MAX_BALANCE)), draw(st.integers(-(10**6), 10**6)))
    deposits = (draw(st.integers(0, 10**12)), draw(st.integers(0, 10**12)))
    last_batches = (state.outcomes[0].last_batch, state.outcomes[1].last_batch)
    state = state_with(list(state.open_orders), last_batches, positions, deposits)
    evidence = record_all(state, prices)
    on_chain = (deposits[0] + draw(st.sampled_from([0, 0, 7])), deposits[1] - draw(st.sampled_from([0, 0, 0, 1])))
    assume(on_chain[1] >= 0)
    oracle = {m: OraclePrice(draw(st.integers(1, 2**127)), draw(st.integers(0, 18))) for m in (1, 2)}
    return state, evidence, on_chain[0], on_chain[1], oracle


@SETTINGS
@given(payout_cases(), st.booleans())
def test_payouts_with_evidence_or_slashing_conserve_the_holdings(
    case: tuple[ChannelState, dict[int, Evidence], int, int, dict[int, OraclePrice]], slashed: bool
) -> None:
    state, evidence, trader_deposit, broker_deposit, oracle = case
    holdings = trader_deposit + broker_deposit
    result = payouts(
        PARAMS, state, trader_deposit, broker_deposit, oracle, 6, evidence=evidence, broker_slashed=slashed
    )
    assert result.total == holdings
    assert 0 <= result.to_trader <= holdings and 0 <= result.to_broker <= holdings
    if slashed:
        assert result == Payouts(holdings, 0)
    elif broker_deposit < state.balances.broker_deposit:
        assert result == Payouts(trader_deposit, broker_deposit, underfunded=True)
    fills_, positions, _ = fills_from_evidence(PARAMS, state, evidence)
    assert set(fills_) <= set(evidence)
    assert all(-MAX_BALANCE <= p <= MAX_BALANCE for p in positions)


def test_payouts_with_evidence_hand_computed() -> None:
    # The trader holds 10,000 and buys 2,000 units (2 whole units at resolution 1,000) for 4,000;
    # batch 3 clears at 1,990: it pays 3,980 and a fee of 40 * 3,980 // 4,000 = 39, then holds 2
    # units worth 2 * 2,000.00000000 at the oracle's 8 decimals, in a token with 0 decimals.
    state = state_with([open_(order(1))], deposits=(10_000, 10_000))
    evidence = {0: Evidence(3, 1_990)}
    oracle = {1: OraclePrice(2_000 * 10**8, 8), 2: OraclePrice(1, 0)}
    trader = 10_000 - 3_980 - 39 + 4_000
    assert payouts(PARAMS, state, 10_000, 10_000, oracle, 0, evidence=evidence) == Payouts(trader, 20_000 - trader)
    assert payouts(PARAMS, state, 10_000, 10_000, oracle, 0) == Payouts(10_000, 10_000)
    assert payouts(PARAMS, state, 10_000, 10_000, oracle, 0, evidence=evidence, broker_slashed=True) == Payouts(
        20_000, 0
    )


def test_a_fill_beyond_the_position_bounds_is_skipped() -> None:
    start = MAX_BALANCE - 15
    orders = [
        open_(order(1, size=10, collateral=1)),
        open_(order(2, size=10, collateral=1)),
        open_(order(3, is_buy=False, size=10, collateral=0)),
    ]
    state = state_with(orders, positions=(start, 0))
    evidence = {0: Evidence(1, 5), 1: Evidence(1, 5), 2: Evidence(1, 5)}
    fills_, positions, change = fills_from_evidence(PARAMS, state, evidence)
    assert sorted(fills_) == [0, 2]
    assert positions == [start, 0]
    assert change == -(fills_[0].collateral + fills_[0].fee) + fills_[2].collateral - fills_[2].fee


# --------------------------------------------------------------------------- two prices


def stored(batch: int, price: int, market: int = 1, broker: str = BROKER, n: int = 1) -> StoredBatchPrice:
    return StoredBatchPrice(broker, bp(batch, price, market), bytes([n]) * 65)


def test_two_prices_finds_a_different_price_of_the_same_batch() -> None:
    new = stored(7, 100)
    assert two_prices([], new) is None
    assert two_prices([stored(7, 100, n=2)], new) is None  # the same price
    assert two_prices([stored(6, 101), stored(7, 101, market=2), stored(7, 101, broker=addr(0x99))], new) is None
    conflict = stored(7, 99)
    assert two_prices([stored(7, 100), conflict, stored(7, 98)], new) == conflict


# --------------------------------------------------------------------------- left-out orders


def store_with(prices: list[StoredBatchPrice]) -> MemoryStore:
    store = MemoryStore()
    for price in prices:
        store.put_batch_price(price)
    return store


def between(store: MemoryStore, broker: str = BROKER) -> PricesBetween:
    return lambda market, first, last: store.batch_prices_between(broker, market, first, last)


def test_left_out_orders_reports_the_earliest_crossing_batch_of_each_order() -> None:
    orders = [
        open_(order(1), first_batch=2),  # crossed by batches 3 and 5: reports 3
        open_(order(2, is_buy=False, collateral=4_200), first_batch=1),  # a sell at 2,100: crossed by batch 4
        open_(order(3, collateral=1_000), first_batch=1),  # a buy at 500: crossed only after batch 5
        open_(order(4, expiration=NOW // SECONDS_PER_HOUR), first_batch=1),  # expired
        open_(order(5), filled=2_000, first_batch=1),  # completely filled
        open_(order(6, collateral=4_000), first_batch=6),  # eligible after the last batch reflected
        open_(order(7, market=2, collateral=4 * 10**8), first_batch=1),  # BTC: crossed by its batch 2
        open_(order(8, market=9), first_batch=1),  # a market outside the channel
    ]
    state = state_with(orders[:7], (5, 2))
    state = replace(state, open_orders=(*state.open_orders, orders[7]))
    store = store_with(
        [
            stored(1, 2_050),  # worse than both limits
            stored(2, 2_000),  # exactly at the first buy's limit: rationed, not left out
            stored(3, 1_999),
            stored(4, 2_101),
            stored(5, 1_000),
            stored(6, 1),  # after the last batch the state reflects
            stored(2, 1, market=2),
            stored(3, 1, market=2),
            stored(1, 1, market=9),
            stored(1, 1, broker=addr(0x99)),  # another broker's price
        ]
    )
    found = left_out_orders(PARAMS, state, between(store), NOW)
    assert [(f.index, f.price.price.market, f.price.price.batch, f.price.price.price) for f in found] == [
        (0, 1, 3, 1_999),
        (1, 1, 4, 2_101),
        (6, 2, 2, 1),
    ]
    assert [f.open_order for f in found] == [orders[0], orders[1], orders[6]]
    # An hour later nothing changes for unexpiring orders; at the order's expiry it is skipped.
    expiring = replace(state, open_orders=(replace(orders[0], order=replace(orders[0].order, expiration=FAR - 999)),))
    assert [f.index for f in left_out_orders(PARAMS, expiring, between(store), (FAR - 999) * SECONDS_PER_HOUR - 1)] == [
        0
    ]
    assert left_out_orders(PARAMS, expiring, between(store), (FAR - 999) * SECONDS_PER_HOUR) == []


@SETTINGS
@given(evidence_cases(), st.integers(0, 8), st.integers(0, 8))
def test_left_out_orders_matches_a_brute_force_search(
    case: tuple[ChannelState, list[BatchPrice]], last_gold: int, last_btc: int
) -> None:
    """For every order: the first stored price, by batch, of its market within [first_batch,
    last_batch] that crosses it (orders unexpired and not completely filled)."""
    state, prices = case
    state = replace(
        state,
        outcomes=(
            replace(state.outcomes[0], last_batch=BatchNumber(last_gold)),
            replace(state.outcomes[1], last_batch=BatchNumber(last_btc)),
        ),
    )
    store = store_with([StoredBatchPrice(BROKER, p, SIG) for p in prices])
    found = {f.index: f.price.price for f in left_out_orders(PARAMS, state, between(store), NOW)}
    expected: dict[int, BatchPrice] = {}
    for i, oo in enumerate(state.open_orders):
        o = oo.order
        m = o.market - 1
        last = state.outcomes[m].last_batch
        if oo.filled >= o.amount_synthetic:
            continue
        candidates = sorted(
            (p for p in prices if p.market == o.market and oo.first_batch <= p.batch <= last),
            key=lambda p: p.batch,
        )
        for p in candidates:
            if crosses(o, p.price, PARAMS.markets[m].resolution):
                expected[i] = p
                break
    assert found == expected


def test_left_out_orders_of_a_market_with_another_resolution() -> None:
    params = make_params(markets=(make_market(id=MarketId(1), resolution=10**6),))
    o = replace(order(1, size=10**6, collateral=2_000 * 10**6), channel_id=params.channel_id)
    state = replace(
        state_with([open_(o)]),
        channel_id=params.channel_id,
        outcomes=(Outcome(SyntheticAmount(0), TokenAmount(0), BatchNumber(3)),),
    )
    store = store_with([stored(2, 2_000 * 10**6), stored(3, 2_000 * 10**6 - 1)])
    assert [(f.index, f.price.price.batch) for f in left_out_orders(params, state, between(store), NOW)] == [(0, 3)]
