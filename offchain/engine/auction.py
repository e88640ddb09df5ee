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
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate

from offchain.errors import ValidationError

MIN_PRICE = 1
MAX_PRICE = 2**64 - 1

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


def clear(orders: Sequence[BookOrder], resolution: int, previous_price: int) -> Clearing:
    """Run the batch auction: the clearing price and every order's fill (see the module doc)."""
    _validate(orders, resolution)
    if not MIN_PRICE <= _check_int("previous_price", previous_price) <= MAX_PRICE:
        raise ValidationError(f"previous_price must be in [{MIN_PRICE}, {MAX_PRICE}], got {previous_price}")
    book = _Book(orders, resolution)
    demand, supply = book.demand, book.supply

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
    price = min(max(previous_price, lo), hi)

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
