"""The order rules (MISSION.md, "Orders"; seed 002's list) in StarkEx's integer forms, the lock an
open order needs, the collateral of a fill, and the well-leveraged check.

Every rule has a name in :class:`Rule`; a transition that breaks one raises
:class:`RuleViolation` carrying that name, so a rejection always says which rule it broke.

Rounding, documented in one place (MISSION.md, "Money and numbers": rounding goes against the
party whose limit is being checked, here always the trader):

- a fill of ``s`` synthetic base units at batch price ``P`` moves ``s * P / resolution``
  collateral, rounded **up** when the trader buys (it pays more) and **down** when the trader
  sells (it receives less): :func:`fill_collateral`;
- the lock an open order needs is rounded **up**: :func:`lock_needed`;
- a position is valued rounded toward negative infinity (as in the adjudicator's payout,
  :func:`offchain.settlement.position_value`), and risk uses the absolute value of that floor.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

from offchain.engine.auction import limit_accepts, limit_strictly_better
from offchain.errors import TradingChannelsError
from offchain.model import MAX_AMOUNT, MAX_BALANCE, ChannelParams, Market, OpenOrder, Order
from offchain.types import Price, TokenAmount

RISK_FACTOR_ONE = 2**32
"""Risk factors are 32-bit fixed point: risk = |value| * risk_factor / 2^32 (StarkEx)."""


class Rule(enum.StrEnum):
    """Every rule a transition can break, by name (``rule`` in an error reply)."""

    # Orders (MISSION.md, "Orders"; seed 002)
    MARKET_IN_CHANNEL = "market_in_channel"
    COLLATERAL_IS_CHANNEL_TOKEN = "collateral_is_channel_token"
    ORDER_FOR_THIS_CHANNEL = "order_for_this_channel"
    PRICE_AT_LEAST_SIGNED_RATIO = "price_at_least_signed_ratio"
    FEE_RATIO_WITHIN_SIGNED = "fee_ratio_within_signed"
    FEE_AT_MOST_MAX_FEE = "fee_at_most_max_fee"
    NOT_EXPIRED = "not_expired"
    NONCE_NOT_USED = "nonce_not_used"
    FILL_WITHIN_ORDER = "fill_within_order"
    AMOUNTS_NON_NEGATIVE_AND_BOUNDED = "amounts_non_negative_and_bounded"
    LOCKED_COVERS_FILL = "locked_covers_fill"
    BALANCES_WITHIN_BOUNDS = "balances_within_bounds"
    ORDER_SIGNATURE_VALID = "order_signature_valid"
    WELL_LEVERAGED = "well_leveraged"
    # Channel transitions (MISSION.md, "The trading state", "Batches")
    AVAILABLE_COVERS_LOCK = "available_covers_lock"
    BROKER_COVERS_FILL = "broker_covers_fill"
    OPEN_ORDER_LIMIT = "open_order_limit"
    ORDER_IS_OPEN = "order_is_open"
    ELIGIBLE_IN_BATCH = "eligible_in_batch"
    BATCH_AFTER_LAST = "batch_after_last"
    FIRST_BATCH_IS_CURRENT = "first_batch_is_current"
    DEPOSITS_ONLY_GROW = "deposits_only_grow"
    CHANNEL_NOT_FINAL = "channel_not_final"
    MARK_PRICE_KNOWN = "mark_price_known"
    STATE_MATCHES_TRANSITION = "state_matches_transition"
    VERSION_INCREMENTS = "version_increments"


class RuleViolation(TradingChannelsError):
    """A transition broke a rule; ``rule`` names it."""

    code = "rule_violation"

    def __init__(self, rule: Rule, reason: str) -> None:
        super().__init__(f"{rule.value}: {reason}")
        self.rule = rule


def ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


# --------------------------------------------------------------------------- order checks


def check_order_fields(order: Order) -> None:
    """All amounts >= 0 and within bounds (amounts < 2^64, expiration < 2^32); a positive amount
    of synthetic so the order's ratio is defined."""
    try:
        order.check()
    except TradingChannelsError as exc:
        raise RuleViolation(Rule.AMOUNTS_NON_NEGATIVE_AND_BOUNDED, exc.reason) from exc
    if order.amount_synthetic == 0:
        raise RuleViolation(Rule.AMOUNTS_NON_NEGATIVE_AND_BOUNDED, "amount_synthetic must be positive")


def check_order_belongs(order: Order, params: ChannelParams) -> Market:
    """The order is for this channel and its trader, the market is one of the channel's and the
    collateral is the channel's token. Returns the market."""
    if order.channel_id != params.channel_id or order.trader != params.trader:
        raise RuleViolation(Rule.ORDER_FOR_THIS_CHANNEL, "the order names another channel or trader")
    if order.collateral != params.token:
        raise RuleViolation(Rule.COLLATERAL_IS_CHANNEL_TOKEN, f"collateral {order.collateral} is not {params.token}")
    for market in params.markets:
        if market.id == order.market:
            return market
    raise RuleViolation(Rule.MARKET_IN_CHANNEL, f"market {order.market} does not belong to this channel")


def check_not_expired(order: Order, now: int) -> None:
    """StarkEx expirations are hours since the epoch: valid while ``now < expiration * 3600``."""
    if now >= order.expiration * 3600:
        raise RuleViolation(Rule.NOT_EXPIRED, f"order {order.nonce} expired at hour {order.expiration}")


def check_fill_price(order: Order, actual_synthetic: int, actual_collateral: int) -> None:
    """The fill's price is at least as good as the signed ratio (StarkEx's integer forms):

    - buyer:  ``(actual_collateral - 1) * amount_synthetic < amount_collateral * actual_synthetic``
    - seller: ``actual_synthetic * amount_collateral < amount_synthetic * (actual_collateral + 1)``
    """
    if order.is_buy:
        ok = (actual_collateral - 1) * order.amount_synthetic < order.amount_collateral * actual_synthetic
    else:
        ok = actual_synthetic * order.amount_collateral < order.amount_synthetic * (actual_collateral + 1)
    if not ok:
        side = "buys" if order.is_buy else "sells"
        raise RuleViolation(
            Rule.PRICE_AT_LEAST_SIGNED_RATIO,
            f"order {order.nonce} {side} {actual_synthetic} for {actual_collateral}, worse than "
            f"{order.amount_synthetic} for {order.amount_collateral}",
        )


def check_fee(order: Order, actual_fee: int, actual_collateral: int) -> None:
    """``actual_fee * amount_collateral <= max_fee * actual_collateral`` and ``actual_fee <= max_fee``."""
    if actual_fee < 0:
        raise RuleViolation(Rule.AMOUNTS_NON_NEGATIVE_AND_BOUNDED, "a fee cannot be negative")
    if actual_fee > order.max_fee:
        raise RuleViolation(Rule.FEE_AT_MOST_MAX_FEE, f"fee {actual_fee} exceeds max fee {order.max_fee}")
    if actual_fee * order.amount_collateral > order.max_fee * actual_collateral:
        raise RuleViolation(
            Rule.FEE_RATIO_WITHIN_SIGNED,
            f"fee {actual_fee} on {actual_collateral} is a higher ratio than "
            f"{order.max_fee} on {order.amount_collateral}",
        )


def check_fill_amount(open_order: OpenOrder, actual_synthetic: int) -> None:
    """``filled + fill <= amount_synthetic``, with a positive fill."""
    if actual_synthetic <= 0 or actual_synthetic > MAX_AMOUNT:
        raise RuleViolation(Rule.AMOUNTS_NON_NEGATIVE_AND_BOUNDED, f"fill amount {actual_synthetic} is not positive")
    if open_order.filled + actual_synthetic > open_order.order.amount_synthetic:
        raise RuleViolation(
            Rule.FILL_WITHIN_ORDER,
            f"order {open_order.order.nonce}: filled {open_order.filled} + {actual_synthetic} exceeds "
            f"{open_order.order.amount_synthetic}",
        )


# --------------------------------------------------------------------------- locks and fills


def collateral_lock(order: Order, filled: int) -> TokenAmount:
    """The collateral a buy may still pay, pro rata to what is left, rounded up (0 for a sell)."""
    if not order.is_buy:
        return TokenAmount(0)
    return TokenAmount(ceil_div(order.amount_collateral * (order.amount_synthetic - filled), order.amount_synthetic))


def fee_lock(order: Order, filled: int) -> TokenAmount:
    """The fee an order may still pay, pro rata to what is left, rounded up."""
    return TokenAmount(ceil_div(order.max_fee * (order.amount_synthetic - filled), order.amount_synthetic))


def lock_needed(order: Order, filled: int) -> TokenAmount:
    """Collateral an open order keeps locked: for a buy, the collateral it may still pay plus the
    fee it may still pay; for a sell, the fee (a sale brings collateral in)."""
    return TokenAmount(collateral_lock(order, filled) + fee_lock(order, filled))


def total_lock(open_orders: Sequence[OpenOrder]) -> TokenAmount:
    return TokenAmount(sum(lock_needed(o.order, o.filled) for o in open_orders))


def fill_collateral(order: Order, filled: int, actual_synthetic: int, price: int, resolution: int) -> TokenAmount:
    """Collateral moved by a fill of an order (``filled`` before it) at ``price``.

    A seller receives the value rounded down. A buyer pays it rounded up, but never more than
    the fill releases from the order's collateral lock: each partial fill rounding up on its own
    could otherwise add up to more than the lock taken for the whole order. The payment stays
    within one base unit of the exact value, so the StarkEx price rule holds either way."""
    if not order.is_buy:
        return TokenAmount(actual_synthetic * price // resolution)
    exact_up = ceil_div(actual_synthetic * price, resolution)
    release = collateral_lock(order, filled) - collateral_lock(order, filled + actual_synthetic)
    return TokenAmount(min(exact_up, release))


def accepts_price(order: Order, price: int, resolution: int) -> bool:
    """Whether a fill at ``price`` respects the order's limit on the integer grid
    (buy: ``price * S <= C * resolution``; sell: ``price * S >= C * resolution``)."""
    return limit_accepts(order.is_buy, order.amount_synthetic, order.amount_collateral, price, resolution)


def crosses(order: Order, price: int, resolution: int) -> bool:
    """Whether a batch price crosses ``order``: its limit is strictly better than ``price`` (it
    also accepts the next price away), so the batch fills it completely. An order exactly at the
    price may be rationed, even to nothing, and is not crossed. This is what binds a signed price
    (MISSION.md, "Slashing"): the adjudicator fills crossed orders from evidence and slashes a
    broker that leaves one out, with the same test (``_strictlyBetter``)."""
    return limit_strictly_better(order.is_buy, order.amount_synthetic, order.amount_collateral, price, resolution)


def check_balance_bounds(name: str, value: int) -> None:
    if value <= -MAX_BALANCE - 1 or value > MAX_BALANCE:
        raise RuleViolation(Rule.BALANCES_WITHIN_BOUNDS, f"{name}={value} leaves (-2^63, 2^63)")


# --------------------------------------------------------------------------- leverage


def position_value(position: int, price: int, resolution: int) -> int:
    """Collateral a position is worth at ``price``, floored (against the trader)."""
    return position * price // resolution


def leverage(
    params: ChannelParams,
    collateral: int,
    positions: Sequence[int],
    marks: Mapping[int, Price],
) -> tuple[int, int]:
    """StarkEx's (total value, total risk * 2^32) for the trader: total value = collateral + the
    value of every position at its mark price; total risk = sum of |value| * risk_factor."""
    value = collateral
    risk = 0
    for market, position in zip(params.markets, positions, strict=True):
        if position == 0:
            continue
        mark = marks.get(market.id)
        if mark is None:
            raise RuleViolation(Rule.MARK_PRICE_KNOWN, f"no mark price for market {market.id} with a position")
        v = position_value(position, mark, market.resolution)
        value += v
        risk += abs(v) * market.risk_factor
    return value, risk


def is_well_leveraged(total_value: int, total_risk_scaled: int) -> bool:
    return total_value * RISK_FACTOR_ONE >= total_risk_scaled


def check_leverage(
    params: ChannelParams,
    before: tuple[int, Sequence[int]],
    after: tuple[int, Sequence[int]],
    marks: Mapping[int, Price],
) -> None:
    """After the transition the trader is well leveraged (total value >= total risk), or the
    transition only reduces risk: no position grows or flips and total value per risk does not
    fall (seed 002)."""
    value_after, risk_after = leverage(params, after[0], after[1], marks)
    if is_well_leveraged(value_after, risk_after):
        return
    shrinks = all(
        abs(new) <= abs(old) and (new == 0 or (new > 0) == (old > 0))
        for old, new in zip(before[1], after[1], strict=True)
    )
    if shrinks:
        value_before, risk_before = leverage(params, before[0], before[1], marks)
        # TV/TR does not decrease: value_after / risk_after >= value_before / risk_before
        if risk_after == 0 or value_after * risk_before >= value_before * risk_after:
            return
    raise RuleViolation(
        Rule.WELL_LEVERAGED,
        f"total value {value_after} is below total risk {ceil_div(risk_after, RISK_FACTOR_ONE)} and the risk does "
        "not only fall",
    )
