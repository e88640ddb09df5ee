"""The buy and sell curves of one batch auction, and their plot (seed 001's figures).

For a price P (collateral base units per whole synthetic unit):

- the **buy curve** (demand) D(P) is the synthetic amount still open in the buy orders that accept
  P, i.e. whose limit is at or above P;
- the **sell curve** (supply) S(P) is the amount still open in the sell orders that accept P, i.e.
  whose limit is at or below P.

Both are step functions of the price: D steps down just after each buy limit, S steps up at each
sell limit. Limits are taken on the integer price grid exactly as the auction takes them
(:func:`offchain.engine.auction.limit_price`): a buy of S units for C accepts every price up to
floor(C*res/S), a sell every price from ceil(C*res/S).

Drawn as lines with their vertical steps, the two curves meet at the prices P where the step of D
at P, from D(P+1) to D(P), overlaps the step of S at P, from S(P-1) to S(P):
D(P+1) <= S(P) and S(P-1) <= D(P). These are the auction's *feasible* prices (see
:mod:`offchain.engine.auction`): the clearing price is one of them, and at it buys and sells match
(seed 001's balanced figure). :func:`crossing` finds them from the curves alone, so a test can hold
the auction to the picture.

Everything here except :func:`save_plot` is pure integer arithmetic; :func:`save_plot` draws with
matplotlib's Agg backend (no display needed) and converts to floats only to draw.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from offchain.engine.auction import MAX_PRICE, MIN_PRICE, BookOrder


def grid_limit(order: BookOrder, resolution: int) -> int:
    """The order's limit on the price grid, clipped to [MIN_PRICE, MAX_PRICE]: the highest price a
    buy accepts, the lowest price a sell accepts."""
    numerator = order.amount_collateral * resolution
    if order.is_buy:
        return min(numerator // order.amount_synthetic, MAX_PRICE)
    return max(-(-numerator // order.amount_synthetic), MIN_PRICE)


@dataclass(frozen=True, slots=True)
class Curves:
    """The buy and sell curves of one book: each side's grid limits, ascending, with the open
    amount at each (several orders at one limit are added up)."""

    resolution: int
    buy_limits: tuple[int, ...]
    buy_amounts: tuple[int, ...]
    sell_limits: tuple[int, ...]
    sell_amounts: tuple[int, ...]

    def demand(self, price: int) -> int:
        """D(price): the open amount of the buys whose limit is at or above ``price``."""
        return sum(self.buy_amounts[bisect_left(self.buy_limits, price) :])

    def supply(self, price: int) -> int:
        """S(price): the open amount of the sells whose limit is at or below ``price``."""
        return sum(self.sell_amounts[: bisect_right(self.sell_limits, price)])

    @property
    def limits(self) -> tuple[int, ...]:
        """Every price at which a curve steps, ascending."""
        return tuple(sorted({*self.buy_limits, *self.sell_limits}))

    def meet(self, price: int) -> bool:
        """Whether the curves meet at ``price``: the step of D there overlaps the step of S."""
        return self.demand(price + 1) <= self.supply(price) and self.supply(price - 1) <= self.demand(price)

    def volume(self, price: int) -> int:
        """What trades at ``price``: min(D, S)."""
        return min(self.demand(price), self.supply(price))


def batch_curves(orders: Sequence[BookOrder], resolution: int) -> Curves:
    """The buy and sell curves of a batch's orders (their ``remaining`` amounts)."""
    sides: dict[bool, dict[int, int]] = {True: {}, False: {}}
    for order in orders:
        side = sides[order.is_buy]
        limit = grid_limit(order, resolution)
        side[limit] = side.get(limit, 0) + order.remaining
    buys, sells = sorted(sides[True].items()), sorted(sides[False].items())
    return Curves(
        resolution=resolution,
        buy_limits=tuple(p for p, _ in buys),
        buy_amounts=tuple(a for _, a in buys),
        sell_limits=tuple(p for p, _ in sells),
        sell_amounts=tuple(a for _, a in sells),
    )


def crossing(curves: Curves) -> tuple[int, int]:
    """The prices where the two curves meet, an interval [low, high] (often one price).

    ``meet`` is false and then true as the price rises in its first half (D(P+1) <= S(P)), and true
    and then false in its second (S(P-1) <= D(P)). Each half changes only where a curve steps, so
    both ends of the interval are limits of the book (or the ends of the price range)."""
    candidates = (MIN_PRICE, *curves.limits, MAX_PRICE)
    low = min(p for p in candidates if curves.demand(p + 1) <= curves.supply(p))
    high = max(p for p in candidates if curves.supply(p - 1) <= curves.demand(p))
    return low, high


Point = tuple[int, int]


def step_lines(curves: Curves, low: int, high: int) -> tuple[list[Point], list[Point]]:
    """The vertices of the two curves drawn over prices [low, high], steps included, as (price,
    amount) pairs: D holds its value up to each buy limit and then drops; S rises at each sell
    limit and then holds."""
    demand: list[Point] = [(low, curves.demand(low))]
    for limit in curves.buy_limits:
        if low <= limit < high:
            demand += [(limit, curves.demand(limit)), (limit, curves.demand(limit + 1))]
    demand.append((high, curves.demand(high)))
    supply: list[Point] = [(low, curves.supply(low))]
    for limit in curves.sell_limits:
        if low < limit <= high:
            supply += [(limit, curves.supply(limit - 1)), (limit, curves.supply(limit))]
    supply.append((high, curves.supply(high)))
    return demand, supply


@dataclass(frozen=True, slots=True)
class PlotLabels:
    title: str
    price_unit: str  # e.g. "$ per oz"
    amount_unit: str  # e.g. "oz"
    collateral_decimals: int  # the token's decimals (prices are in its base units)
    price_text: str  # the clearing price as printed, e.g. "$2,015.00"
    volume_text: str  # the volume as printed, e.g. "1.8 oz"


def save_plot(path: str | Path, curves: Curves, price: int, labels: PlotLabels) -> Path:
    """Draw the two curves of one batch as step functions with the clearing ``price`` marked, and
    save a PNG at ``path``. Returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    limits = curves.limits or (price,)
    span = max(limits[-1] - limits[0], price // 100, 1)
    low, high = max(MIN_PRICE, min(limits[0], price) - span // 5), max(limits[-1], price) + span // 5
    demand, supply = step_lines(curves, low, high)
    price_scale = 10**labels.collateral_decimals

    def xs(points: list[Point]) -> list[float]:
        return [p / price_scale for p, _ in points]

    def ys(points: list[Point]) -> list[float]:
        return [a / curves.resolution for _, a in points]

    figure = Figure(figsize=(8, 5), dpi=110)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.plot(xs(demand), ys(demand), color="black", linewidth=2, label="buy: amount bid at or above the price")
    ax.plot(xs(supply), ys(supply), color="red", linewidth=2, label="sell: amount offered at or below the price")
    volume = curves.volume(price)
    ax.axvline(price / price_scale, color="tab:blue", linestyle="--", linewidth=1)
    ax.plot([price / price_scale], [volume / curves.resolution], "o", color="tab:blue")
    ax.annotate(
        f"clearing price {labels.price_text}\n{labels.volume_text} bought = {labels.volume_text} sold",
        xy=(price / price_scale, volume / curves.resolution),
        xytext=(-10, 14),
        textcoords="offset points",
        horizontalalignment="right",
        color="tab:blue",
    )
    ax.set_title(labels.title)
    ax.set_xlabel(f"price ({labels.price_unit})")
    ax.set_ylabel(f"amount ({labels.amount_unit})")
    top = max(curves.demand(low), curves.supply(high), 1) / curves.resolution
    ax.set_ylim(0, top * 1.1)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize="small", frameon=False)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png", bbox_inches="tight")
    return out
