"""The uniform-price batch auction (offchain.engine.auction): the clearing price rule, fills,
input validation, and a brute-force reference over every integer price of small books."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offchain.engine.auction import (
    MAX_PRICE,
    BookOrder,
    Clearing,
    accepts,
    at_price,
    clear,
    clear_columns,
    clear_reference,
    curves,
    limit_price,
    strictly_better,
)
from offchain.errors import ValidationError
from offchain.model import MAX_AMOUNT

CHANNEL = b"\x11" * 32


class Book:
    """Builds orders with distinct keys and increasing sequence numbers."""

    def __init__(self, resolution: int = 1) -> None:
        self.resolution = resolution
        self.orders: list[BookOrder] = []

    def add(self, is_buy: bool, limit: int, qty: int, *, remaining: int | None = None) -> BookOrder:
        """An order for ``qty`` base units at a whole-number ``limit`` (C = limit * qty / res)."""
        assert limit * qty % self.resolution == 0
        return self.raw(is_buy, qty, limit * qty // self.resolution, remaining=remaining)

    def raw(self, is_buy: bool, s: int, c: int, *, remaining: int | None = None) -> BookOrder:
        n = len(self.orders)
        order = BookOrder(
            key=(CHANNEL, n),
            is_buy=is_buy,
            amount_synthetic=s,
            amount_collateral=c,
            remaining=remaining or s,
            sequence=n,
        )
        self.orders.append(order)
        return order

    def buy(self, limit: int, qty: int, **kw: int) -> BookOrder:
        return self.add(True, limit, qty, **kw)

    def sell(self, limit: int, qty: int, **kw: int) -> BookOrder:
        return self.add(False, limit, qty, **kw)

    def clear(self, previous: int = 1) -> Clearing:
        return clear(self.orders, self.resolution, previous)


def side_totals(result: Clearing, orders: Sequence[BookOrder]) -> tuple[int, int]:
    by_key = {o.key: o for o in orders}
    buys = sum(f for k, f in result.fills.items() if by_key[k].is_buy)
    sells = sum(f for k, f in result.fills.items() if not by_key[k].is_buy)
    return buys, sells


# --------------------------------------------------------------------------- one order


def test_grid_predicates_of_a_fractional_limit() -> None:
    # buy 3 base units for 1000 collateral at resolution 1: limit 333.33..
    buy = BookOrder((CHANNEL, 0), True, 3, 1000, 3, 0)
    assert limit_price(buy, 1) == 333
    assert accepts(buy, 333, 1) and not accepts(buy, 334, 1)
    assert at_price(buy, 333, 1) and strictly_better(buy, 332, 1)
    # sell 3 for 1000: limit 333.33.., first accepted price 334
    sell = replace(buy, is_buy=False)
    assert limit_price(sell, 1) == 334
    assert accepts(sell, 334, 1) and not accepts(sell, 333, 1)
    assert at_price(sell, 334, 1) and strictly_better(sell, 335, 1)
    # a sell for nothing accepts every price but is never strictly better than price 1
    free = replace(sell, amount_collateral=0)
    assert accepts(free, 1, 1) and not strictly_better(free, 1, 1) and strictly_better(free, 2, 1)
    # a buy above the top price is at the price there, not strictly better
    rich = BookOrder((CHANNEL, 1), True, 1, MAX_PRICE, 1, 1)
    assert at_price(rich, MAX_PRICE, 10)


# --------------------------------------------------------------------------- hand-made books


def test_balanced_cross_clears_where_the_curves_cross() -> None:
    book = Book()
    b1, b2, b3 = book.buy(120, 10), book.buy(110, 10), book.buy(100, 10)
    s1, s2, s3 = book.sell(90, 10), book.sell(100, 10), book.sell(115, 10)
    # D: 30 up to 100, 20 to 110, 10 to 120; S: 10 from 90, 20 from 100, 30 from 115.
    # At 100: D 30, S 20 (imbalance 10); 101..110: D 20 = S 20, imbalance 0.
    result = book.clear(previous=105)
    assert (result.price, result.volume, result.demand, result.supply) == (105, 20, 20, 20)
    assert result.fills == {b1.key: 10, b2.key: 10, s1.key: 10, s2.key: 10}
    assert b3.key not in result.fills and s3.key not in result.fills
    demand, supply = curves(book.orders, 1, [99, 100, 101, 110, 111, 115, 121])
    assert demand == [30, 30, 20, 20, 10, 10, 0]
    assert supply == [10, 20, 20, 20, 20, 30, 30]


def test_long_side_at_the_price_is_rationed_pro_rata_remainder_by_sequence() -> None:
    book = Book()
    big = book.buy(100, 20, remaining=7)  # seq 0, at the price, remaining 7
    better = book.buy(101, 4)  # strictly better at 100
    mid = book.buy(100, 5)  # seq 2, at the price
    small = book.buy(100, 3)  # seq 3, at the price
    sell = book.sell(100, 14)
    result = book.clear(previous=100)
    # D(100) = 4 + 7 + 5 + 3 = 19, S(100) = 14; D(101) = 4 <= 14; at 101 S(100) = 14 > D(101) = 4.
    assert (result.price, result.volume, result.demand, result.supply) == (100, 14, 19, 14)
    # left for the at-price buys: 14 - 4 = 10 over 15: floors 70/15 = 4, 50/15 = 3, 30/15 = 2 -> 9,
    # one unit left over goes to the earliest at-price order.
    assert result.fills == {better.key: 4, big.key: 5, mid.key: 3, small.key: 2, sell.key: 14}


def test_remainder_goes_by_sequence_not_by_position_in_the_input() -> None:
    book = Book()
    a = book.buy(50, 1)
    b = book.buy(50, 1)
    c = book.buy(50, 1)
    sell = book.sell(50, 2)
    # three equal at-price buys share 2: floors 0, two leftover units to the two earliest
    result = clear([c, sell, b, a], 1, 50)
    assert result.price == 50
    assert result.fills == {a.key: 1, b.key: 1, sell.key: 2}


def test_strictly_better_orders_always_fill() -> None:
    book = Book()
    buy = book.buy(200, 10)
    sell = book.sell(100, 5)
    for previous in (1, 100, 150, 200, 10**6):
        result = book.clear(previous)
        # Below 200 the buy is strictly better and could not fill its 10: only 200 is feasible.
        assert (result.price, result.volume) == (200, 5)
        assert result.fills == {buy.key: 5, sell.key: 5}


@pytest.mark.parametrize(("previous", "expected"), [(150, 150), (90, 100), (300, 200), (100, 100), (200, 200)])
def test_ties_go_to_the_price_closest_to_the_previous_one(previous: int, expected: int) -> None:
    book = Book()
    buy = book.buy(200, 5)
    sell = book.sell(100, 5)
    result = book.clear(previous)
    assert (result.price, result.volume, result.demand, result.supply) == (expected, 5, 5, 5)
    assert result.fills == {buy.key: 5, sell.key: 5}


@pytest.mark.parametrize("previous", [1, 777, MAX_PRICE])
def test_no_orders_clear_at_the_previous_price(previous: int) -> None:
    assert clear([], 1, previous) == Clearing(previous, 0, 0, 0, {})


def test_one_sided_book_clears_where_nobody_is_left_out() -> None:
    book = Book()
    book.buy(200, 5)
    book.buy(150, 5)
    # Below 200 the 200-buy is strictly better with nothing to sell it, so the feasible prices are
    # 200 and up; nothing can trade, so the imbalance is moot and the price stays nearest the
    # previous one: at the best bid, not one step past it.
    result = book.clear(previous=100)
    assert (result.price, result.volume, result.fills) == (200, 0, {})
    assert book.clear(previous=5000).price == 5000
    sells = Book()
    sells.sell(100, 5)
    assert sells.clear(previous=150).price == 100
    assert sells.clear(previous=10).price == 10


def test_non_crossing_book_clears_between_best_bid_and_best_ask() -> None:
    book = Book()
    book.buy(90, 5)
    book.buy(95, 5)
    book.sell(105, 5)
    book.sell(110, 5)
    assert book.clear(previous=100) == Clearing(100, 0, 0, 0, {})
    assert book.clear(previous=1).price == 95
    assert book.clear(previous=10**9).price == 105
    # Touching but not crossing: bid 95, ask 96 -> only 95 or 96, nearest wins.
    touching = Book()
    touching.buy(95, 5)
    touching.sell(96, 5)
    assert touching.clear(previous=1).price == 95
    assert touching.clear(previous=1000).price == 96


def test_fractional_limits_on_both_sides() -> None:
    book = Book(resolution=3)
    buy = book.raw(True, 7, 700)  # limit 300 exactly
    frac_buy = book.raw(True, 7, 701)  # limit 300.43: last accepted price 300
    frac_sell = book.raw(False, 7, 698)  # limit 299.14: first accepted price 300
    sell = book.raw(False, 7, 697)  # limit 298.71: first accepted price 299
    assert [limit_price(o, 3) for o in book.orders] == [300, 300, 300, 299]
    result = book.clear(previous=1)
    # D(300) = 14, S(300) = 14, D(301) = 0, S(299) = 7: feasible, imbalance 0; at 299 the buys would
    # be strictly better (14 > S(299) = 7).
    assert (result.price, result.volume) == (300, 14)
    assert result.fills == {buy.key: 7, frac_buy.key: 7, frac_sell.key: 7, sell.key: 7}
    assert book.clear(previous=10**6).price == 300


def test_fractional_limit_breaks_a_cross_that_rounding_would_make() -> None:
    # buy limit 100.5 (S 2, C 201), sell limit 100.6 (S 5, C 503): the limits never meet on the grid.
    book = Book()
    book.raw(True, 2, 201)
    book.raw(False, 5, 503)
    result = book.clear(previous=100)
    assert (result.price, result.volume, result.fills) == (100, 0, {})


def test_buy_above_the_top_price_is_rationed_at_the_top_price() -> None:
    book = Book(resolution=10**6)
    buy = book.raw(True, 10, 2**64 - 1)  # limit (2^64 - 1) * 10^5: far above the top price
    sell = book.raw(False, 10, 1, remaining=4)  # limit 10^5
    # Below the top price the buy (10) is strictly better than the supply (4) allows: only the top
    # price is feasible, and there the buy is at the price and rationed.
    result = book.clear(previous=1)
    assert (result.price, result.volume, result.demand, result.supply) == (MAX_PRICE, 4, 10, 4)
    assert result.fills == {buy.key: 4, sell.key: 4}


def test_sell_for_nothing_clears_at_one_against_a_buy_at_one() -> None:
    book = Book()
    buy = book.buy(1, 3)
    sell = book.raw(False, 5, 0)
    result = book.clear(previous=50)
    assert (result.price, result.volume, result.demand, result.supply) == (1, 3, 3, 5)
    assert result.fills == {buy.key: 3, sell.key: 3}


# --------------------------------------------------------------------------- validation


def _order(**changes: object) -> BookOrder:
    base = BookOrder(
        key=(CHANNEL, 0), is_buy=True, amount_synthetic=10, amount_collateral=100, remaining=10, sequence=0
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("orders", "resolution", "previous", "match"),
    [
        ([], 0, 1, "resolution"),
        ([], 1, 0, "previous_price"),
        ([], 1, 2**64, "previous_price"),
        ([_order(amount_synthetic=0, remaining=0)], 1, 1, "amount_synthetic"),
        ([_order(amount_synthetic=-1)], 1, 1, "amount_synthetic"),
        ([_order(amount_collateral=-1)], 1, 1, "amount_collateral"),
        ([_order(remaining=0)], 1, 1, "remaining"),
        ([_order(remaining=11)], 1, 1, "remaining"),
        ([_order(), _order(sequence=1)], 1, 1, "duplicate order key"),
        ([_order(), _order(key=(CHANNEL, 1))], 1, 1, "duplicate sequence"),
        ([_order(remaining=True)], 1, 1, "integer"),
    ],
)
def test_invalid_input_is_refused(orders: list[BookOrder], resolution: int, previous: int, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        clear(orders, resolution, previous)


def test_the_same_nonce_in_another_channel_is_another_order() -> None:
    orders = [_order(), _order(key=(b"\x22" * 32, 0), sequence=1, is_buy=False)]
    assert clear(orders, 1, 1).volume == 10


# --------------------------------------------------------------------------- brute-force reference


def _reference_price(orders: Sequence[BookOrder], resolution: int, previous: int) -> tuple[int, set[int], int]:
    """Every integer price from 1 to past every limit and the previous price, straight from the
    definitions: (best price, the volumes at the feasible prices, maximum volume over all prices)."""

    def demand(p: int) -> int:
        return sum(
            o.remaining for o in orders if o.is_buy and p * o.amount_synthetic <= o.amount_collateral * resolution
        )

    def supply(p: int) -> int:
        if p == 0:
            return 0
        return sum(
            o.remaining for o in orders if not o.is_buy and p * o.amount_synthetic >= o.amount_collateral * resolution
        )

    top = max([previous] + [o.amount_collateral * resolution // o.amount_synthetic + 1 for o in orders]) + 2
    feasible = {p for p in range(1, top + 1) if demand(p + 1) <= supply(p) and supply(p - 1) <= demand(p)}
    best = min(
        feasible,
        key=lambda p: (
            -min(demand(p), supply(p)),
            abs(demand(p) - supply(p)) if min(demand(p), supply(p)) else 0,  # no trade: imbalance moot
            abs(p - previous),
            p,
        ),
    )
    max_volume = max(min(demand(p), supply(p)) for p in range(1, top + 1))
    return best, {min(demand(p), supply(p)) for p in feasible}, max_volume


@st.composite
def small_books(draw: st.DrawFn) -> tuple[list[BookOrder], int, int]:
    resolution = draw(st.sampled_from([1, 2, 3, 7, 10]))
    n = draw(st.integers(0, 8))
    sequences = draw(st.permutations(range(n)))
    orders = []
    for i in range(n):
        s = draw(st.integers(1, 12))
        c = draw(st.integers(0, 300 * s // resolution))
        remaining = draw(st.integers(1, s))
        orders.append(BookOrder((CHANNEL, i), draw(st.booleans()), s, c, remaining, sequences[i]))
    previous = draw(st.integers(1, 320))
    return orders, resolution, previous


@settings(max_examples=250, deadline=None)
@given(small_books())
def test_clear_matches_the_brute_force_reference(book: tuple[list[BookOrder], int, int]) -> None:
    orders, resolution, previous = book
    result = clear(orders, resolution, previous)
    best, feasible_volumes, max_volume = _reference_price(orders, resolution, previous)
    assert result.price == best
    # every feasible price has the maximum volume over all prices
    assert feasible_volumes == {max_volume}
    demand, supply = curves(orders, resolution, [result.price])
    assert (result.demand, result.supply, result.volume) == (demand[0], supply[0], min(demand[0], supply[0]))
    _check_fills(orders, resolution, result)


def _check_fills(orders: Sequence[BookOrder], resolution: int, result: Clearing) -> None:
    price = result.price
    by_key = {o.key: o for o in orders}
    assert side_totals(result, orders) == (result.volume, result.volume)
    assert all(f > 0 for f in result.fills.values())
    for order in orders:
        fill = result.fills.get(order.key, 0)
        assert fill <= order.remaining
        if not accepts(order, price, resolution):
            assert fill == 0
        elif strictly_better(order, price, resolution):
            assert fill == order.remaining
    for is_buy in (True, False):
        side = [o for o in orders if o.is_buy == is_buy]
        at = [o for o in side if at_price(o, price, resolution)]
        better = sum(o.remaining for o in side if strictly_better(o, price, resolution))
        left = result.volume - better
        at_total = sum(o.remaining for o in at)
        floors = [left * o.remaining // at_total if at_total else 0 for o in at]
        extras = [result.fills.get(o.key, 0) - f for o, f in zip(at, floors, strict=True)]
        assert all(e in (0, 1) for e in extras)
        # the extra units went to the earliest at-price orders
        by_sequence = [e for _, e in sorted(zip([o.sequence for o in at], extras, strict=True))]
        assert by_sequence == sorted(by_sequence, reverse=True)
    assert set(result.fills) <= set(by_key)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(1, 10**6), st.integers(0, 10**9), st.integers(1, 10**6)),
        max_size=40,
    ),
    st.integers(1, 10**4),
    st.integers(1, MAX_PRICE),
)
def test_fill_properties_on_large_amounts(
    raw: list[tuple[bool, int, int, int]], resolution: int, previous: int
) -> None:
    orders = [BookOrder((CHANNEL, i), is_buy, s, c, min(r, s), len(raw) - i) for i, (is_buy, s, c, r) in enumerate(raw)]
    result = clear(orders, resolution, previous)
    # feasible and no better price by the rule's own order, checked locally around the price
    demand, supply = curves(orders, resolution, [result.price - 1, result.price, result.price + 1])
    d_next = demand[2] if result.price < MAX_PRICE else 0
    s_prev = supply[0] if result.price > 1 else 0
    assert d_next <= supply[1] and s_prev <= demand[1]
    _check_fills(orders, resolution, result)


# --------------------------------------------------------------------------- columnar == reference


def _columns(orders: Sequence[BookOrder]) -> tuple[np.ndarray, ...]:
    return (
        np.array([o.is_buy for o in orders], dtype=np.bool_),
        np.array([o.amount_synthetic for o in orders], dtype=np.int64),
        np.array([o.amount_collateral for o in orders], dtype=np.int64),
        np.array([o.remaining for o in orders], dtype=np.int64),
        np.array([o.sequence for o in orders], dtype=np.int64),
    )


def _assert_same_as_reference(orders: list[BookOrder], resolution: int, previous: int) -> Clearing:
    expected = clear_reference(orders, resolution, previous)
    result = clear(orders, resolution, previous)
    assert result == expected
    assert list(result.fills.items()) == list(expected.fills.items())  # same report order too
    if all(o.amount_synthetic < 2**63 and o.amount_collateral < 2**63 for o in orders):
        columns = clear_columns(*_columns(orders), resolution, previous)  # type: ignore[arg-type]
        assert (columns.price, columns.volume, columns.demand, columns.supply) == (
            expected.price,
            expected.volume,
            expected.demand,
            expected.supply,
        )
        assert [orders[row].key for row in columns.filled_rows.tolist()] == list(expected.fills)
        assert [int(columns.fills[row]) for row in columns.filled_rows.tolist()] == list(expected.fills.values())
        assert int(columns.fills.sum()) == 2 * expected.volume
    return expected


# Amount scales: small (many ties at one price), ordinary, and near the bounds (int64 and beyond).
_AMOUNT_SCALES = [10, 10**6, 2**40, 2**62, MAX_AMOUNT]


@st.composite
def columnar_books(draw: st.DrawFn) -> tuple[list[BookOrder], int, int]:
    scale = draw(st.sampled_from(_AMOUNT_SCALES))
    resolution = draw(st.sampled_from([1, 3, 10**6, 2**32, MAX_AMOUNT]))
    n = draw(st.integers(0, 30))
    sides = draw(st.sampled_from(["both", "buys", "sells"]))
    one_price = draw(st.booleans())  # every order at one limit: everything rationed
    sequences = draw(st.permutations(range(n)))
    orders = []
    for i in range(n):
        s = draw(st.integers(1, scale))
        if one_price:
            c = s
        else:
            c = draw(st.integers(0, scale))
        remaining = draw(st.one_of(st.just(s), st.integers(1, s)))
        is_buy = {"buys": True, "sells": False}.get(sides, draw(st.booleans()))
        orders.append(BookOrder((CHANNEL, i), is_buy, s, c, remaining, sequences[i]))
    previous = draw(st.one_of(st.integers(1, 2 * scale), st.sampled_from([1, MAX_PRICE, 2**63 - 1, 2**63])))
    return orders, resolution, min(previous, MAX_PRICE)


@settings(max_examples=200, deadline=None)
@given(columnar_books())
def test_columnar_clearing_equals_the_reference(book: tuple[list[BookOrder], int, int]) -> None:
    _assert_same_as_reference(*book)


@settings(max_examples=150, deadline=None)
@given(small_books())
def test_columnar_clearing_equals_the_reference_on_small_books(book: tuple[list[BookOrder], int, int]) -> None:
    _assert_same_as_reference(*book)


def test_columnar_clearing_of_a_large_random_book() -> None:
    rng = np.random.default_rng(7)
    n = 5000
    is_buy = rng.random(n) < 0.5
    s = rng.integers(1, 1000, n)
    limit = np.where(is_buy, rng.integers(95, 106, n), rng.integers(98, 109, n))  # few prices, many ties
    orders = [
        BookOrder((CHANNEL, i), bool(is_buy[i]), int(s[i]), int(limit[i] * s[i]), int(rng.integers(1, s[i] + 1)), n - i)
        for i in range(n)
    ]
    result = _assert_same_as_reference(orders, 1, 100)
    assert result.volume > 0 and len(result.fills) > 100


def test_columnar_path_refuses_what_the_reference_refuses() -> None:
    bad = np.array([5], dtype=np.int64)
    one = np.array([1], dtype=np.int64)
    with pytest.raises(ValidationError, match="remaining"):
        clear_columns(np.array([True]), one, one, bad, one, 1, 1)
    with pytest.raises(ValidationError, match="duplicate sequence"):
        clear_columns(np.array([True, False]), bad[[0, 0]], bad[[0, 0]], one[[0, 0]], one[[0, 0]], 1, 1)
    with pytest.raises(ValidationError, match="int64"):
        clear_columns(np.array([True]), one.astype(np.int32), one, one, one, 1, 1)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="previous_price"):
        clear_columns(np.array([True]), one, one, one, one, 1, 0)


def test_columnar_clearing_of_amounts_beyond_int64_falls_back_exactly() -> None:
    # C * res overflows int64: the same result as the reference, through Python ints.
    big = 2**62
    orders = [
        BookOrder((CHANNEL, 0), True, big, big, big, 0),
        BookOrder((CHANNEL, 1), True, big - 1, big, 3, 1),
        BookOrder((CHANNEL, 2), False, big, big - 5, big - 7, 2),
    ]
    result = _assert_same_as_reference(orders, 10**6, 10**6)
    assert result.volume == big - 7
