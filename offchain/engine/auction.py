"""The uniform-price batch auction of one market: pure functions, integers only, no I/O.

Prices are collateral base units per whole synthetic unit, integers in [1, 2^64 - 1]. A market
has a ``resolution`` (synthetic base units per whole unit). A signed limit order carries
``amount_synthetic`` S > 0 and ``amount_collateral`` C >= 0; its limit is the rational C*res/S,
and every comparison with it is done exactly on the integer grid, without division:

- a buy accepts P iff ``P * S <= C * res``; it is *strictly better* than P iff it accepts P + 1
  (and P + 1 is still a price, see below);
- a sell accepts P iff ``P * S >= C * res``; it is *strictly better* than P iff P >= 2 and it
  accepts P - 1;
- an order is *at the price* P if it accepts P but is not strictly better than P.

So a buy accepts exactly the prices up to floor(C*res/S) and a sell exactly the prices from
ceil(C*res/S) (see :func:`limit_price`).

D(P) is the sum of ``remaining`` over the buys accepting P, S(P) over the sells accepting P; D is
non-increasing and S non-decreasing. Outside the price range both curves are closed off
symmetrically: S(0) = 0 and D(2^64) = 0 (nobody trades at a price that cannot be quoted, so a buy
whose limit is above the top price is at the price, not strictly better, at 2^64 - 1). Volume
V(P) = min(D(P), S(P)), imbalance |D(P) - S(P)|.

**Feasible prices.** P is feasible iff D(P+1) <= S(P) and S(P-1) <= D(P): the strictly better
buys, D(P+1), fit inside the supply at P and the strictly better sells, S(P-1), inside the demand
at P, so at a feasible price every strictly better order fills completely and only the orders at
the price are rationed.

*A feasible price exists and every feasible price has the maximum volume over all prices.* Let
P0 = min{P : D(P+1) <= S(P)} (it exists, since D(2^64) = 0). If P0 = 1 then S(P0-1) = S(0) = 0
<= D(P0); otherwise D(P0) > S(P0-1) by minimality; so P0 is feasible. Now let P be feasible.
For Q > P: V(Q) <= D(Q) <= D(P+1) <= S(P) and D(Q) <= D(P), so V(Q) <= min(D(P), S(P)) = V(P).
Symmetrically for Q < P: V(Q) <= S(Q) <= S(P-1) <= D(P) and S(Q) <= S(P), so V(Q) <= V(P).

**The clearing price.** MISSION.md: "maximise matched volume; ties: smallest imbalance, then
closest to the previous price", refined so that strictly better orders always fill completely:
among the feasible prices, maximise V, then minimise the imbalance, then minimise
|P - previous_price|, then take the lower price. When nothing can trade (V = 0 at every price)
the imbalance is moot: the price is the feasible one nearest the previous price, i.e. the
previous price held between the best bid and the best ask (a one-sided book clears at its best
order, not one step past it).

**Computing it without visiting every price.** Both conditions are monotone: D(P+1) <= S(P)
holds from some P0 upwards and S(P-1) <= D(P) up to some P1 downwards, so the feasible prices are
exactly the interval [P0, P1] (all with the same, maximal, volume). On it D - S is
non-increasing, so the prices of least |D - S| form one interval [lo, hi] too (at most two
adjacent level sets of D - S, one at +a and one at -a). The price is previous_price clamped to
[lo, hi]. D and S are step functions evaluated by bisection over the sorted limits and their
prefix sums, and P0, P1, lo, hi are found by bisection over the price range: O(n log n) for the
sort, then O(64 log n).

**Fills at the clearing price P.** Every strictly better order fills its whole ``remaining``. On
each side, the orders at the price share what is left of V (V minus that side's strictly better
total) pro rata to ``remaining``, rounding down; the leftover units (fewer than the number of
orders at the price) go one each to the orders at the price in ascending ``sequence`` (time
priority). The buy fills and the sell fills both sum to V exactly, so the broker carries no net
position. Fills of 0 are not reported.

**Two implementations, one result.** :func:`clear_reference` is the plain Python version of the
above. :func:`clear_columns` does the same on a columnar book (numpy int64 arrays, one row per
order) and :func:`clear` uses it whenever the book fits int64 arithmetic, and the reference
otherwise. They agree to the base unit (tests/unit/test_auction.py compares them on random books)
because they compute the same integers: the grid limits are the same floor/ceil divisions; D and
S are the same prefix sums over the same sorted limits (ties in any order give the same sums at
group boundaries, the only places bisection lands), and the price search is one shared function
(:func:`_clearing_price`) over them; the fills are the same floors ``left * remaining //
at_total`` with the leftover units handed out in ascending ``sequence`` to the at-price orders
that have room. The fast path is taken only when no intermediate can leave int64: every
``amount_collateral * resolution`` < 2^63 - 1 (so every limit is < 2^63 - 1 and a price clamped
to 2^63 - 1 sees the same D and S), the sum of all ``remaining`` < 2^63, and the pro-rata
products ``left * remaining`` are computed with Python ints when they could overflow.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate

import numpy as np
import numpy.typing as npt

from offchain.errors import ValidationError

MIN_PRICE = 1
MAX_PRICE = 2**64 - 1
INT64_LIMIT = 2**63 - 1
"""The largest int64; the columnar path keeps every intermediate below it."""

Int64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

OrderKey = tuple[bytes, int]
"""(channel_id, order nonce)."""


@dataclass(frozen=True, slots=True)
class BookOrder:
    """An open limit order in the book of one market."""

    key: OrderKey
    is_buy: bool
    amount_synthetic: int
    """S of the signed order (> 0)."""
    amount_collateral: int
    """C of the signed order (>= 0)."""
    remaining: int
    """Synthetic base units still open (in [1, amount_synthetic])."""
    sequence: int
    """Arrival order, unique within a book (lower = earlier)."""


@dataclass(frozen=True, slots=True)
class Clearing:
    """The outcome of one batch auction."""

    price: int
    volume: int
    """V = min(demand, supply): synthetic base units bought, and sold, in this batch."""
    demand: int
    """D(price)."""
    supply: int
    """S(price)."""
    fills: dict[OrderKey, int]
    """Order key -> synthetic base units filled (only fills > 0)."""


# --------------------------------------------------------------------------- one order


def limit_accepts(is_buy: bool, amount_synthetic: int, amount_collateral: int, price: int, resolution: int) -> bool:
    """Whether a limit order of S = ``amount_synthetic`` for C = ``amount_collateral`` trades at
    ``price``: a buy iff ``price * S <= C * res``, a sell iff ``price * S >= C * res``."""
    if is_buy:
        return price * amount_synthetic <= amount_collateral * resolution
    return price * amount_synthetic >= amount_collateral * resolution


def limit_strictly_better(
    is_buy: bool, amount_synthetic: int, amount_collateral: int, price: int, resolution: int
) -> bool:
    """Whether such an order also accepts the next price away from it (so it must fill completely).

    A buy: it accepts price + 1 and price + 1 <= 2^64 - 1. A sell: price >= 2 and it accepts
    price - 1. The adjudicator's ``_strictlyBetter`` is the same test.
    """
    if is_buy:
        return price < MAX_PRICE and limit_accepts(True, amount_synthetic, amount_collateral, price + 1, resolution)
    return price >= 2 and limit_accepts(False, amount_synthetic, amount_collateral, price - 1, resolution)


def accepts(order: BookOrder, price: int, resolution: int) -> bool:
    """Whether ``order`` trades at ``price`` (exact integer comparison with its limit)."""
    return limit_accepts(order.is_buy, order.amount_synthetic, order.amount_collateral, price, resolution)


def strictly_better(order: BookOrder, price: int, resolution: int) -> bool:
    """Whether ``order`` also accepts the next price away from it (see :func:`limit_strictly_better`)."""
    return limit_strictly_better(order.is_buy, order.amount_synthetic, order.amount_collateral, price, resolution)


def at_price(order: BookOrder, price: int, resolution: int) -> bool:
    """Whether ``order`` accepts ``price`` but is not strictly better than it."""
    return accepts(order, price, resolution) and not strictly_better(order, price, resolution)


def limit_price(order: BookOrder, resolution: int) -> int:
    """The order's limit on the integer grid, unclipped.

    A buy: floor(C*res/S), the last price it accepts (0: none). A sell: ceil(C*res/S), the first
    price it accepts (may exceed 2^64 - 1: none).
    """
    numerator = order.amount_collateral * resolution
    if order.is_buy:
        return numerator // order.amount_synthetic
    return -(-numerator // order.amount_synthetic)


# --------------------------------------------------------------------------- the book


def _check_int(name: str, value: object) -> int:
    if type(value) is not int:  # not a bool, not a float
        raise ValidationError(f"{name} must be an integer, got {type(value).__name__}")
    return value


def _validate(orders: Sequence[BookOrder], resolution: int) -> None:
    if _check_int("resolution", resolution) < 1:
        raise ValidationError(f"resolution must be >= 1, got {resolution}")
    keys: set[OrderKey] = set()
    sequences: set[int] = set()
    for order in orders:
        s, c, r, seq = order.amount_synthetic, order.amount_collateral, order.remaining, order.sequence
        if type(s) is not int or type(c) is not int or type(r) is not int or type(seq) is not int:
            for name in ("amount_synthetic", "amount_collateral", "remaining", "sequence"):
                _check_int(f"order {order.key!r}: {name}", getattr(order, name))
        if s <= 0:
            raise ValidationError(f"order {order.key!r}: amount_synthetic must be > 0, got {s}")
        if c < 0:
            raise ValidationError(f"order {order.key!r}: amount_collateral must be >= 0, got {c}")
        if not 1 <= r <= s:
            raise ValidationError(f"order {order.key!r}: remaining must be in [1, {s}], got {r}")
        if order.key in keys:
            raise ValidationError(f"duplicate order key {order.key!r}")
        if seq in sequences:
            raise ValidationError(f"duplicate sequence {seq}")
        keys.add(order.key)
        sequences.add(seq)


def _by_limit(entry: tuple[int, BookOrder]) -> int:
    return entry[0]


class _Book:
    """D and S as step functions: each side's orders with their grid limits, sorted by limit, and
    prefix sums of ``remaining``.

    The grid limit is :func:`limit_price` closed off at the ends of the price range: a buy's last
    accepted price capped at 2^64 - 1 (so D(2^64) = 0), a sell's first accepted price raised to 1
    (so S(0) = 0). At a price P in range an order accepts P iff its grid limit is >= P (buy) or
    <= P (sell), is strictly better iff the inequality is strict, and is at the price iff equal.
    """

    def __init__(self, orders: Sequence[BookOrder], resolution: int) -> None:
        buys: list[tuple[int, BookOrder]] = []
        sells: list[tuple[int, BookOrder]] = []
        for order in orders:
            numerator = order.amount_collateral * resolution
            if order.is_buy:
                buys.append((min(numerator // order.amount_synthetic, MAX_PRICE), order))
            else:
                sells.append((max(-(-numerator // order.amount_synthetic), MIN_PRICE), order))
        buys.sort(key=_by_limit)
        sells.sort(key=_by_limit)
        self.buys, self.sells = buys, sells
        self.buy_limits = [limit for limit, _ in buys]
        self.buy_prefix = [0, *accumulate(order.remaining for _, order in buys)]
        self.sell_limits = [limit for limit, _ in sells]
        self.sell_prefix = [0, *accumulate(order.remaining for _, order in sells)]

    def demand(self, price: int) -> int:
        """D(price): buys whose last accepted price is >= price."""
        return self.buy_prefix[-1] - self.buy_prefix[bisect_left(self.buy_limits, price)]

    def supply(self, price: int) -> int:
        """S(price): sells whose first accepted price is <= price."""
        return self.sell_prefix[bisect_right(self.sell_limits, price)]


def _first_true(low: int, high: int, predicate: Callable[[int], bool]) -> int:
    """The least P in [low, high] with ``predicate(P)`` for a predicate that is false then true;
    high + 1 if it is never true."""
    while low <= high:
        mid = (low + high) // 2
        if predicate(mid):
            high = mid - 1
        else:
            low = mid + 1
    return low


def curves(orders: Sequence[BookOrder], resolution: int, prices: Sequence[int]) -> tuple[list[int], list[int]]:
    """D and S at each of ``prices`` (for plots), with S(0) = 0 and D(2^64) = 0."""
    _validate(orders, resolution)
    book = _Book(orders, resolution)
    return [book.demand(p) for p in prices], [book.supply(p) for p in prices]


# --------------------------------------------------------------------------- the auction


def _clearing_price(demand: Callable[[int], int], supply: Callable[[int], int], previous_price: int) -> int:
    """The clearing price of the module doc, from D and S (shared by both implementations)."""
    # The feasible prices [p0, p1]; p0 <= MAX_PRICE because D(MAX_PRICE + 1) = 0.
    p0 = _first_true(MIN_PRICE, MAX_PRICE, lambda p: demand(p + 1) <= supply(p))
    p1 = _first_true(p0, MAX_PRICE, lambda p: supply(p - 1) > demand(p)) - 1

    # Least imbalance on [p0, p1]: D - S is non-increasing, so look on both sides of its sign change.
    def excess(p: int) -> int:
        return demand(p) - supply(p)

    first_short = _first_true(p0, p1, lambda p: excess(p) <= 0)
    candidates: list[int] = []
    if first_short <= p1:
        candidates.append(-excess(first_short))
    if first_short > p0:
        candidates.append(excess(first_short - 1))
    least = min(candidates)
    lo = _first_true(p0, p1, lambda p: excess(p) <= least)
    hi = _first_true(p0, p1, lambda p: excess(p) < -least) - 1
    if min(demand(p0), supply(p0)) == 0:
        # Nothing can trade: the imbalance means nothing, so the price stays as close to the
        # previous one as the book allows (no order strictly better than it).
        lo, hi = p0, p1
    return min(max(previous_price, lo), hi)


def _check_previous(previous_price: int) -> None:
    if not MIN_PRICE <= _check_int("previous_price", previous_price) <= MAX_PRICE:
        raise ValidationError(f"previous_price must be in [{MIN_PRICE}, {MAX_PRICE}], got {previous_price}")


def clear(orders: Sequence[BookOrder], resolution: int, previous_price: int) -> Clearing:
    """Run the batch auction: the clearing price and every order's fill (see the module doc).

    The columnar implementation when the book fits int64 arithmetic, else the reference; both
    give the same result, fills reported in the same order."""
    columns = _columns_of(orders, resolution)
    if columns is None:
        return clear_reference(orders, resolution, previous_price)
    try:
        result = _clear_arrays(*columns, resolution, previous_price)
    except ValidationError:
        result = None  # the reference refuses it, with the message naming the order
    if result is None:
        return clear_reference(orders, resolution, previous_price)
    rows = result.filled_rows.tolist()
    amounts = result.fills[result.filled_rows].tolist()
    fills = {orders[row].key: amount for row, amount in zip(rows, amounts, strict=True)}
    return Clearing(price=result.price, volume=result.volume, demand=result.demand, supply=result.supply, fills=fills)


def clear_reference(orders: Sequence[BookOrder], resolution: int, previous_price: int) -> Clearing:
    """The batch auction in plain Python integers (any size of amounts): the reference."""
    _validate(orders, resolution)
    _check_previous(previous_price)
    book = _Book(orders, resolution)
    demand, supply = book.demand, book.supply
    price = _clearing_price(demand, supply, previous_price)

    d, s = demand(price), supply(price)
    volume = min(d, s)
    fills: dict[OrderKey, int] = {}
    # Strictly better: a buy whose grid limit is above the price (so demand(price + 1), which is 0
    # at the top price), a sell whose grid limit is below it (supply(price - 1)).
    _fill_side(book.buys, price, volume, demand(price + 1), lambda limit: limit > price, fills)
    _fill_side(book.sells, price, volume, supply(price - 1), lambda limit: limit < price, fills)
    return Clearing(price=price, volume=volume, demand=d, supply=s, fills=fills)


def _fill_side(
    side: list[tuple[int, BookOrder]],
    price: int,
    volume: int,
    better_total: int,
    is_better: Callable[[int], bool],
    fills: dict[OrderKey, int],
) -> None:
    """Fill one side (orders with their grid limits): ``better_total`` (the remaining of its
    strictly better orders) in full, the rest of ``volume`` pro rata over the orders at the price,
    leftover units by sequence."""
    left = volume - better_total
    at: list[BookOrder] = []
    for limit, order in side:
        if limit == price:
            at.append(order)
        elif is_better(limit):
            fills[order.key] = order.remaining
    at_total = sum(o.remaining for o in at)
    assert 0 <= left <= at_total, "clearing price is not feasible"
    if left == 0:
        return
    shares = [left * o.remaining // at_total for o in at]
    leftover = left - sum(shares)
    if leftover:
        by_sequence = sorted(range(len(at)), key=lambda i: at[i].sequence)
        for i in by_sequence:
            if leftover == 0:
                break
            if shares[i] < at[i].remaining:
                shares[i] += 1
                leftover -= 1
        assert leftover == 0, "leftover units exceed the room of the orders at the price"
    for order, share in zip(at, shares, strict=True):
        if share:
            fills[order.key] = share


# --------------------------------------------------------------------------- the columnar auction


@dataclass(frozen=True, slots=True)
class ColumnClearing:
    """The outcome of :func:`clear_columns`: like :class:`Clearing`, with the fills as an array."""

    price: int
    volume: int
    demand: int
    supply: int
    fills: Int64Array
    """Synthetic base units filled, one per row of the book (0: not filled)."""
    filled_rows: Int64Array
    """The rows with a fill > 0, in the order :func:`clear_reference` reports them: the buys
    strictly better than the price by (limit, row), then the buys at the price by row, then the
    sells likewise."""


def clear_columns(
    is_buy: BoolArray,
    amount_synthetic: Int64Array,
    amount_collateral: Int64Array,
    remaining: Int64Array,
    sequence: Int64Array,
    resolution: int,
    previous_price: int,
) -> ColumnClearing:
    """The batch auction of a columnar book: one row per order, the columns as numpy arrays of
    equal length (``is_buy`` bool, the others int64). Same rules, same result as :func:`clear`
    of the same orders in the same order (rows play the part of the order keys)."""
    n = len(is_buy)
    for name, column, dtype in (
        ("is_buy", is_buy, np.bool_),
        ("amount_synthetic", amount_synthetic, np.int64),
        ("amount_collateral", amount_collateral, np.int64),
        ("remaining", remaining, np.int64),
        ("sequence", sequence, np.int64),
    ):
        if not isinstance(column, np.ndarray) or column.dtype != dtype or column.shape != (n,):
            raise ValidationError(f"{name} must be a 1-d numpy array of {np.dtype(dtype).name}, {n} long")
    if _check_int("resolution", resolution) < 1:
        raise ValidationError(f"resolution must be >= 1, got {resolution}")
    result = _clear_arrays(is_buy, amount_synthetic, amount_collateral, remaining, sequence, resolution, previous_price)
    if result is not None:
        return result
    # Too large for int64 arithmetic: the reference, on Python ints.
    orders = [
        BookOrder((b"", row), bool(b), s, c, r, q)
        for row, (b, s, c, r, q) in enumerate(
            zip(
                is_buy.tolist(),
                amount_synthetic.tolist(),
                amount_collateral.tolist(),
                remaining.tolist(),
                sequence.tolist(),
                strict=True,
            )
        )
    ]
    reference = clear_reference(orders, resolution, previous_price)
    fills = np.zeros(n, dtype=np.int64)
    rows = np.array([key[1] for key in reference.fills], dtype=np.int64)
    fills[rows] = np.array(list(reference.fills.values()), dtype=np.int64)
    return ColumnClearing(reference.price, reference.volume, reference.demand, reference.supply, fills, rows)


def _columns_of(
    orders: Sequence[BookOrder], resolution: int
) -> tuple[BoolArray, Int64Array, Int64Array, Int64Array, Int64Array] | None:
    """The book as columns, or None if it is not a valid book of int64 amounts (then the
    reference takes it, and refuses it with the same message as always if it is invalid)."""
    if not orders or type(resolution) is not int or resolution < 1:
        return None
    if len({o.key for o in orders}) != len(orders):
        return None
    buys = [o.is_buy for o in orders]
    synthetic = [o.amount_synthetic for o in orders]
    collateral = [o.amount_collateral for o in orders]
    remaining = [o.remaining for o in orders]
    sequence = [o.sequence for o in orders]
    if set(map(type, buys)) != {bool}:
        return None
    types: set[type] = set()
    for column in (synthetic, collateral, remaining, sequence):
        types.update(map(type, column))
    if types != {int}:  # no bools, no floats
        return None
    try:
        return (
            np.array(buys, dtype=np.bool_),
            np.array(synthetic, dtype=np.int64),
            np.array(collateral, dtype=np.int64),
            np.array(remaining, dtype=np.int64),
            np.array(sequence, dtype=np.int64),
        )
    except OverflowError:
        return None


def _check_columns(
    amount_synthetic: Int64Array, amount_collateral: Int64Array, remaining: Int64Array, sequence: Int64Array
) -> None:
    def first(bad: BoolArray) -> int:
        return int(np.flatnonzero(bad)[0])

    if (bad := amount_synthetic <= 0).any():
        row = first(bad)
        raise ValidationError(f"row {row}: amount_synthetic must be > 0, got {amount_synthetic[row]}")
    if (bad := amount_collateral < 0).any():
        row = first(bad)
        raise ValidationError(f"row {row}: amount_collateral must be >= 0, got {amount_collateral[row]}")
    if (bad := (remaining < 1) | (remaining > amount_synthetic)).any():
        row = first(bad)
        raise ValidationError(f"row {row}: remaining must be in [1, {amount_synthetic[row]}], got {remaining[row]}")
    ordered = np.sort(sequence)
    if (same := ordered[1:] == ordered[:-1]).any():
        raise ValidationError(f"duplicate sequence {ordered[first(same)]}")


def _sorted_side(limits: Int64Array, rows: Int64Array, row_bits: int) -> tuple[Int64Array, Int64Array]:
    """One side's rows sorted by (grid limit, row), and the limits in that order. Packing limit
    and row into one int64 lets a plain sort do it when the limits are small enough."""
    if not len(rows):
        return rows, limits
    if int(limits.max()) < 1 << (62 - row_bits):
        packed = np.sort((limits << row_bits) | rows)
        return packed & ((1 << row_bits) - 1), packed >> row_bits
    order = np.argsort(limits, kind="stable")
    return rows[order], limits[order]


def _share_out(left: int, rows: Int64Array, remaining: Int64Array, sequence: Int64Array) -> Int64Array:
    """``left`` units over the at-price ``rows``: pro rata to remaining, rounded down, leftover
    units one each by ascending sequence to the rows with room (as :func:`_fill_side`)."""
    at_remaining = remaining[rows]
    at_total = int(at_remaining.sum())
    assert 0 <= left <= at_total, "clearing price is not feasible"
    if left == 0:
        return np.zeros(len(rows), dtype=np.int64)
    if left * int(at_remaining.max()) <= INT64_LIMIT:
        shares = left * at_remaining // at_total
    else:
        shares = np.array([left * r // at_total for r in at_remaining.tolist()], dtype=np.int64)
    leftover = left - int(shares.sum())
    if leftover:
        by_sequence = np.argsort(sequence[rows])
        with_room = by_sequence[shares[by_sequence] < at_remaining[by_sequence]]
        assert len(with_room) >= leftover, "leftover units exceed the room of the orders at the price"
        shares[with_room[:leftover]] += 1
    return shares


def _clear_arrays(
    is_buy: BoolArray,
    amount_synthetic: Int64Array,
    amount_collateral: Int64Array,
    remaining: Int64Array,
    sequence: Int64Array,
    resolution: int,
    previous_price: int,
) -> ColumnClearing | None:
    """The columnar auction; None if some intermediate could leave int64 (see the module doc)."""
    n = len(is_buy)
    _check_columns(amount_synthetic, amount_collateral, remaining, sequence)
    _check_previous(previous_price)
    if resolution >= INT64_LIMIT or (
        n and (int(amount_collateral.max()) * resolution >= INT64_LIMIT or int(remaining.max()) * n > INT64_LIMIT)
    ):
        return None
    numerator = amount_collateral * resolution
    row_bits = max(1, n.bit_length())
    buy_rows = np.flatnonzero(is_buy)
    sell_rows = np.flatnonzero(~is_buy)
    # Grid limits: a buy's last accepted price floor(C*res/S) (< 2^63 - 1, so below MAX_PRICE),
    # a sell's first accepted price ceil(C*res/S) raised to 1.
    buy_limits = numerator[buy_rows] // amount_synthetic[buy_rows]
    sell_limits = np.maximum(-(-numerator[sell_rows] // amount_synthetic[sell_rows]), MIN_PRICE)
    buy_rows, buy_limits = _sorted_side(buy_limits, buy_rows, row_bits)
    sell_rows, sell_limits = _sorted_side(sell_limits, sell_rows, row_bits)
    zero = np.zeros(1, dtype=np.int64)
    buy_prefix = np.concatenate((zero, np.cumsum(remaining[buy_rows])))
    sell_prefix = np.concatenate((zero, np.cumsum(remaining[sell_rows])))
    buy_total = int(buy_prefix[-1])
    # Every limit is < 2^63 - 1, so a price above that sees the same D and S as 2^63 - 1.
    buy_find, sell_find = buy_limits.searchsorted, sell_limits.searchsorted

    def demand(price: int) -> int:
        return buy_total - int(buy_prefix[buy_find(min(price, INT64_LIMIT), "left")])

    def supply(price: int) -> int:
        return int(sell_prefix[sell_find(min(price, INT64_LIMIT), "right")])

    price = _clearing_price(demand, supply, previous_price)
    d, s = demand(price), supply(price)
    volume = min(d, s)
    at = min(price, INT64_LIMIT)
    fills = np.zeros(n, dtype=np.int64)
    # Buys: strictly better above the price (a suffix), at the price in [lo, hi).
    lo, hi = int(buy_find(at, "left")), int(buy_find(at, "right"))
    better_buys, at_buys = buy_rows[hi:], buy_rows[lo:hi]
    fills[better_buys] = remaining[better_buys]
    buy_shares = _share_out(volume - (buy_total - int(buy_prefix[hi])), at_buys, remaining, sequence)
    fills[at_buys] = buy_shares
    # Sells: strictly better below the price (a prefix), at the price in [lo, hi).
    lo, hi = int(sell_find(at, "left")), int(sell_find(at, "right"))
    better_sells, at_sells = sell_rows[:lo], sell_rows[lo:hi]
    fills[better_sells] = remaining[better_sells]
    sell_shares = _share_out(volume - int(sell_prefix[lo]), at_sells, remaining, sequence)
    fills[at_sells] = sell_shares
    filled_rows = np.concatenate(
        (better_buys, at_buys[buy_shares > 0], better_sells, at_sells[sell_shares > 0])
    ).astype(np.int64)
    return ColumnClearing(price, volume, d, s, fills, filled_rows)
