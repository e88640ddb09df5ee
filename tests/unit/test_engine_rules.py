"""Every rule of the engine (offchain.engine.rules.Rule) has a test that breaks it and gets a typed
rejection naming the rule (MISSION.md, "Orders"), with the input channel left unchanged.

Each breaking test is registered with :func:`breaks`; :func:`test_every_rule_has_a_breaking_test`
fails if a member of :class:`Rule` has none. Every rule is broken through
:func:`offchain.engine.channel.apply` (or :func:`~offchain.engine.channel.expect`); the price and
fee rules are also tested at their exact boundaries directly on the functions of rules.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import pytest

from offchain.eip712 import Domain
from offchain.engine.channel import (
    AccountDeposits,
    CancelOrder,
    Channel,
    Finalize,
    OrderFilled,
    apply,
    expect,
)
from offchain.engine.rules import (
    RISK_FACTOR_ONE,
    Rule,
    RuleViolation,
    check_fee,
    check_fill_price,
    leverage,
    lock_needed,
)
from offchain.model import MAX_AMOUNT, MAX_BALANCE, MAX_OPEN_ORDERS, MAX_UINT32, MAX_VERSION, Order
from offchain.signing import HALF_N, malleate
from offchain.types import MarketId, Nonce, Price, Signature, SyntheticAmount, TokenAmount
from tests.unit.engine_helpers import (
    ADJUDICATOR,
    BROKER,
    EXPIRATION,
    HOUR,
    NOW,
    OUTSIDER,
    USD,
    accepted,
    addr,
    create,
    funded,
    make_order,
    make_params,
    place,
    rejected,
    sign,
    trade,
    with_version,
)

F = TypeVar("F", bound=Callable[..., Any])

BREAKING_TESTS: dict[Rule, list[str]] = {}
"""Rule -> names of the tests in this module that break it."""


def breaks(*rules: Rule) -> Callable[[F], F]:
    """Register the decorated test as one that breaks ``rules``."""

    def register(test: F) -> F:
        for rule in rules:
            BREAKING_TESTS.setdefault(rule, []).append(test.__name__)
        return test

    return register


def test_every_rule_has_a_breaking_test() -> None:
    missing = [rule.name for rule in Rule if not BREAKING_TESTS.get(rule)]
    assert not missing, f"rules without a test that breaks them: {missing}"
    for names in BREAKING_TESTS.values():
        for name in names:
            assert name.startswith("test_") and callable(globals()[name])


NO_SIGNATURE = Signature(b"\x00" * 65)
"""For orders rejected before their signature is looked at."""

GOLD_2000 = 2_000 * USD
"""$2000 per ounce, the limit of the default order."""


def short_four_ounces(broker_deposit: int = 20_000 * USD) -> Channel:
    """Trader: $1000 deposited, then sold 4 oz at $2000 (collateral $9000, position -4 oz)."""
    channel = funded(broker_deposit=broker_deposit)
    sell = make_order(
        channel, is_buy=False, amount_synthetic=4 * 10**6, amount_collateral=8_000 * USD, max_fee=TokenAmount(0)
    )
    channel = place(channel, sell)
    channel = accepted(channel, trade(1, 1, GOLD_2000, [(1, 4 * 10**6, 0)])).channel
    assert channel.positions == (-4 * 10**6, 0)
    assert channel.trader_collateral == 9_000 * USD
    return channel


# --------------------------------------------------------------------------- the order belongs here


@breaks(Rule.MARKET_IN_CHANNEL)
def test_order_in_a_market_outside_the_channel() -> None:
    channel = funded()
    order = make_order(channel, market=3)
    rejected(channel, create(channel, order), Rule.MARKET_IN_CHANNEL)


@breaks(Rule.MARKET_IN_CHANNEL)
def test_trade_in_a_market_outside_the_channel() -> None:
    channel = place(funded(), make_order(funded()))
    rejected(channel, trade(3, 1, GOLD_2000, [(1, 100_000, 0)]), Rule.MARKET_IN_CHANNEL)


@breaks(Rule.MARKET_IN_CHANNEL)
def test_fill_of_an_order_of_another_market() -> None:
    channel = place(funded(), make_order(funded()))  # market 1
    rejected(channel, trade(2, 1, 60_000 * USD, [(1, 100_000, 0)]), Rule.MARKET_IN_CHANNEL)


@breaks(Rule.COLLATERAL_IS_CHANNEL_TOKEN)
def test_order_whose_collateral_is_not_the_channel_token() -> None:
    channel = funded()
    order = make_order(channel, collateral=addr(0x44))
    rejected(channel, create(channel, order), Rule.COLLATERAL_IS_CHANNEL_TOKEN)


@breaks(Rule.ORDER_FOR_THIS_CHANNEL)
def test_order_for_another_channel() -> None:
    channel = funded()
    other = make_params(nonce=2)
    order = make_order(channel, channel_id=other.channel_id)
    rejected(channel, create(channel, order), Rule.ORDER_FOR_THIS_CHANNEL)


@breaks(Rule.ORDER_FOR_THIS_CHANNEL)
def test_order_of_another_trader() -> None:
    channel = funded()
    order = make_order(channel, trader=OUTSIDER.address)
    rejected(channel, create(channel, order, signature=sign(channel, order, OUTSIDER)), Rule.ORDER_FOR_THIS_CHANNEL)


# --------------------------------------------------------------------------- price (StarkEx form)


def price_order(is_buy: bool, amount_synthetic: int, amount_collateral: int, max_fee: int = 0) -> Order:
    return make_order(
        funded(),
        is_buy=is_buy,
        amount_synthetic=amount_synthetic,
        amount_collateral=amount_collateral,
        max_fee=max_fee,
    )


@pytest.mark.parametrize(
    ("amount_synthetic", "amount_collateral", "actual_synthetic", "best_collateral"),
    [
        # S, C, fill, the most a buyer may pay: (ac - 1) * S < C * fill
        (10, 30, 5, 15),  # C*fill/S = 15 exactly
        (3, 10, 1, 4),  # 10/3 = 3.33: up to 4 (StarkEx lets the buyer pay the rounding)
        (3, 10, 3, 10),  # the whole order: exactly C
        (4 * 10**5, 800 * USD, 10**5, 200 * USD),
        (7, 0, 7, 0),  # a buy for nothing pays nothing
    ],
)
@breaks(Rule.PRICE_AT_LEAST_SIGNED_RATIO)
def test_buyer_price_boundary(
    amount_synthetic: int, amount_collateral: int, actual_synthetic: int, best_collateral: int
) -> None:
    order = price_order(True, amount_synthetic, amount_collateral)
    assert (best_collateral - 1) * amount_synthetic < amount_collateral * actual_synthetic
    check_fill_price(order, actual_synthetic, best_collateral)
    check_fill_price(order, actual_synthetic, 0)
    with pytest.raises(RuleViolation) as exc:
        check_fill_price(order, actual_synthetic, best_collateral + 1)
    assert exc.value.rule is Rule.PRICE_AT_LEAST_SIGNED_RATIO


@pytest.mark.parametrize(
    ("amount_synthetic", "amount_collateral", "actual_synthetic", "least_collateral"),
    [
        # S, C, fill, the least a seller may get: fill * C < S * (ac + 1)
        (10, 30, 5, 15),
        (3, 10, 1, 3),  # 10/3 = 3.33: down to 3 (the seller may get the rounding)
        (3, 10, 2, 6),  # 20/3 = 6.67: down to 6
        (3, 10, 3, 10),
        (4 * 10**5, 800 * USD, 10**5, 200 * USD),
    ],
)
@breaks(Rule.PRICE_AT_LEAST_SIGNED_RATIO)
def test_seller_price_boundary(
    amount_synthetic: int, amount_collateral: int, actual_synthetic: int, least_collateral: int
) -> None:
    order = price_order(False, amount_synthetic, amount_collateral)
    check_fill_price(order, actual_synthetic, least_collateral)
    check_fill_price(order, actual_synthetic, 10**30)
    with pytest.raises(RuleViolation) as exc:
        check_fill_price(order, actual_synthetic, least_collateral - 1)
    assert exc.value.rule is Rule.PRICE_AT_LEAST_SIGNED_RATIO


def test_a_sell_for_nothing_accepts_any_collateral() -> None:
    order = price_order(False, 7, 0)
    check_fill_price(order, 7, 0)
    check_fill_price(order, 1, 0)


@breaks(Rule.PRICE_AT_LEAST_SIGNED_RATIO)
def test_buy_filled_one_unit_above_its_limit() -> None:
    """Buy 0.4 oz for $800: the batch price $2000.000000 fills, $2000.000001 does not."""
    channel = place(funded(), make_order(funded()))
    accepted(channel, trade(1, 1, GOLD_2000, [(1, 4 * 10**5, 0)]))
    rejected(channel, trade(1, 1, GOLD_2000 + 1, [(1, 4 * 10**5, 0)]), Rule.PRICE_AT_LEAST_SIGNED_RATIO)


@breaks(Rule.PRICE_AT_LEAST_SIGNED_RATIO)
def test_sell_filled_one_unit_below_its_limit() -> None:
    """Sell 0.4 oz for $800: the batch price $2000.000000 fills, $1999.999999 does not."""
    channel = funded()
    channel = place(channel, make_order(channel, is_buy=False))
    accepted(channel, trade(1, 1, GOLD_2000, [(1, 4 * 10**5, 0)]))
    rejected(channel, trade(1, 1, GOLD_2000 - 1, [(1, 4 * 10**5, 0)]), Rule.PRICE_AT_LEAST_SIGNED_RATIO)


def unit_market_channel() -> Channel:
    """A channel whose only market has resolution 1: a price is collateral per base unit."""
    return funded(params=make_params(markets=(replace(make_params().markets[0], resolution=1),)))


@breaks(Rule.PRICE_AT_LEAST_SIGNED_RATIO)
def test_partial_fills_are_priced_on_the_grid() -> None:
    """Buy 3 units for 10: the batch price 3 fills one unit, 4 does not, although StarkEx's form
    alone would let one unit pay 4 ((4 - 1) * 3 < 10 * 1): a Trade also checks the batch price
    against the limit, P * S <= C * resolution."""
    channel = unit_market_channel()
    order = make_order(channel, amount_synthetic=3, amount_collateral=10, max_fee=0)
    channel = place(channel, order)
    check_fill_price(order, 1, 4)
    accepted(channel, trade(1, 1, 3, [(1, 1, 0)]))
    rejected(channel, trade(1, 1, 4, [(1, 1, 0)]), Rule.PRICE_AT_LEAST_SIGNED_RATIO)


@breaks(Rule.PRICE_AT_LEAST_SIGNED_RATIO)
def test_partial_sells_are_priced_on_the_grid() -> None:
    """Sell 3 units for 10: 4 fills one unit, 3 does not (StarkEx's form alone would accept
    receiving 3: 1 * 10 < 3 * (3 + 1))."""
    channel = unit_market_channel()
    order = make_order(channel, is_buy=False, amount_synthetic=3, amount_collateral=10, max_fee=0)
    channel = place(channel, order)
    check_fill_price(order, 1, 3)
    accepted(channel, trade(1, 1, 4, [(1, 1, 0)]))
    rejected(channel, trade(1, 1, 3, [(1, 1, 0)]), Rule.PRICE_AT_LEAST_SIGNED_RATIO)


# --------------------------------------------------------------------------- fees


@breaks(Rule.FEE_RATIO_WITHIN_SIGNED)
def test_fee_ratio_boundary() -> None:
    """Max fee $2 on $800: a fill worth $200 may pay $0.500000, not $0.500001."""
    order = price_order(True, 4 * 10**5, 800 * USD, 2 * USD)
    check_fee(order, 500_000, 200 * USD)
    check_fee(order, 0, 200 * USD)
    with pytest.raises(RuleViolation) as exc:
        check_fee(order, 500_001, 200 * USD)
    assert exc.value.rule is Rule.FEE_RATIO_WITHIN_SIGNED
    # non-divisible: 7 * 3 / 10 = 2.1, so 2 passes and 3 fails
    order = price_order(True, 10, 10, 7)
    check_fee(order, 2, 3)
    with pytest.raises(RuleViolation) as exc:
        check_fee(order, 3, 3)
    assert exc.value.rule is Rule.FEE_RATIO_WITHIN_SIGNED


@breaks(Rule.FEE_AT_MOST_MAX_FEE)
def test_fee_above_max_fee_boundary() -> None:
    """A seller getting twice its signed collateral: the ratio allows a fee of 2F, the max fee
    allows F."""
    order = price_order(False, 4 * 10**5, 800 * USD, 2 * USD)
    check_fee(order, 2 * USD, 1_600 * USD)
    with pytest.raises(RuleViolation) as exc:
        check_fee(order, 2 * USD + 1, 1_600 * USD)
    assert exc.value.rule is Rule.FEE_AT_MOST_MAX_FEE


@breaks(Rule.FEE_RATIO_WITHIN_SIGNED)
def test_partial_fill_charging_more_than_its_share_of_the_fee() -> None:
    channel = place(funded(), make_order(funded()))
    accepted(channel, trade(1, 1, GOLD_2000, [(1, 10**5, 500_000)]))
    rejected(channel, trade(1, 1, GOLD_2000, [(1, 10**5, 500_001)]), Rule.FEE_RATIO_WITHIN_SIGNED)


@breaks(Rule.FEE_AT_MOST_MAX_FEE)
def test_fill_charging_more_than_the_max_fee() -> None:
    channel = place(funded(), make_order(funded()))
    accepted(channel, trade(1, 1, GOLD_2000, [(1, 4 * 10**5, 2 * USD)]))
    rejected(channel, trade(1, 1, GOLD_2000, [(1, 4 * 10**5, 2 * USD + 1)]), Rule.FEE_AT_MOST_MAX_FEE)


@breaks(Rule.FEE_AT_MOST_MAX_FEE)
def test_sell_at_a_better_price_still_pays_at_most_the_max_fee() -> None:
    channel = funded(broker_deposit=10_000 * USD)
    channel = place(channel, make_order(channel, is_buy=False))
    accepted(channel, trade(1, 1, 2 * GOLD_2000, [(1, 4 * 10**5, 2 * USD)]))
    rejected(channel, trade(1, 1, 2 * GOLD_2000, [(1, 4 * 10**5, 2 * USD + 1)]), Rule.FEE_AT_MOST_MAX_FEE)


# --------------------------------------------------------------------------- expiry, nonce, amounts


@breaks(Rule.NOT_EXPIRED)
def test_order_expired_at_creation() -> None:
    channel = funded()
    order = make_order(channel)
    accepted(channel, create(channel, order, now=EXPIRATION * HOUR - 1))
    rejected(channel, create(channel, order, now=EXPIRATION * HOUR), Rule.NOT_EXPIRED)
    rejected(channel, create(channel, order, now=EXPIRATION * HOUR + 10**6), Rule.NOT_EXPIRED)


@breaks(Rule.NOT_EXPIRED)
def test_order_expired_at_trade_time() -> None:
    channel = place(funded(), make_order(funded()))
    accepted(channel, trade(1, 1, GOLD_2000, [(1, 10**5, 0)], now=EXPIRATION * HOUR - 1))
    rejected(channel, trade(1, 1, GOLD_2000, [(1, 10**5, 0)], now=EXPIRATION * HOUR), Rule.NOT_EXPIRED)


@breaks(Rule.NONCE_NOT_USED)
def test_nonce_of_an_open_order() -> None:
    channel = place(funded(), make_order(funded()))
    again = make_order(channel, amount_synthetic=10**5, amount_collateral=150 * USD)
    rejected(channel, create(channel, again), Rule.NONCE_NOT_USED)


@breaks(Rule.NONCE_NOT_USED)
def test_nonce_replayed_after_cancel() -> None:
    order = make_order(funded())
    channel = place(funded(), order)
    channel = accepted(channel, CancelOrder(Nonce(1))).channel
    assert channel.state.open_orders == ()
    rejected(channel, create(channel, order), Rule.NONCE_NOT_USED)


@breaks(Rule.NONCE_NOT_USED)
def test_nonce_replayed_after_a_complete_fill() -> None:
    order = make_order(funded())
    channel = place(funded(), order)
    channel = accepted(channel, trade(1, 1, GOLD_2000, [(1, 4 * 10**5, 0)])).channel
    assert channel.state.open_orders == ()
    rejected(channel, create(channel, order, first_batch=2), Rule.NONCE_NOT_USED)


@breaks(Rule.FILL_WITHIN_ORDER)
def test_fill_beyond_the_order() -> None:
    channel = place(funded(), make_order(funded()))
    rejected(channel, trade(1, 1, GOLD_2000, [(1, 4 * 10**5 + 1, 0)]), Rule.FILL_WITHIN_ORDER)
    channel = accepted(channel, trade(1, 1, GOLD_2000, [(1, 3 * 10**5, 0)])).channel
    rejected(channel, trade(1, 2, GOLD_2000, [(1, 10**5 + 1, 0)]), Rule.FILL_WITHIN_ORDER)
    accepted(channel, trade(1, 2, GOLD_2000, [(1, 10**5, 0)]))


@breaks(Rule.FILL_WITHIN_ORDER)
def test_one_order_filled_twice_in_one_trade() -> None:
    channel = place(funded(), make_order(funded()))
    rejected(channel, trade(1, 1, GOLD_2000, [(1, 10**5, 0), (1, 10**5, 0)]), Rule.FILL_WITHIN_ORDER)


@pytest.mark.parametrize(
    "overrides",
    [
        {"amount_synthetic": 0},
        {"amount_synthetic": MAX_AMOUNT + 1},
        {"amount_collateral": -1},
        {"amount_collateral": MAX_AMOUNT + 1},
        {"max_fee": -1},
        {"max_fee": MAX_AMOUNT + 1},
        {"nonce": -1},
        {"nonce": MAX_AMOUNT + 1},
        {"expiration": MAX_UINT32 + 1},
        {"market": -1},
    ],
)
@breaks(Rule.AMOUNTS_NON_NEGATIVE_AND_BOUNDED)
def test_order_amount_out_of_bounds(overrides: dict[str, int]) -> None:
    channel = funded()
    order = make_order(channel, **overrides)
    rejected(channel, create(channel, order, signature=NO_SIGNATURE), Rule.AMOUNTS_NON_NEGATIVE_AND_BOUNDED)


@pytest.mark.parametrize(("amount", "fee", "price"), [(0, 0, GOLD_2000), (-1, 0, GOLD_2000), (10**5, -1, GOLD_2000)])
@breaks(Rule.AMOUNTS_NON_NEGATIVE_AND_BOUNDED)
def test_fill_amount_or_fee_out_of_bounds(amount: int, fee: int, price: int) -> None:
    channel = place(funded(), make_order(funded()))
    rejected(channel, trade(1, 1, price, [(1, amount, fee)]), Rule.AMOUNTS_NON_NEGATIVE_AND_BOUNDED)


@pytest.mark.parametrize("price", [0, -GOLD_2000])
@breaks(Rule.AMOUNTS_NON_NEGATIVE_AND_BOUNDED)
def test_batch_price_not_positive(price: int) -> None:
    channel = funded()
    channel = place(channel, make_order(channel, is_buy=False, amount_collateral=0))
    rejected(channel, trade(1, 1, price, [(1, 10**5, 0)]), Rule.AMOUNTS_NON_NEGATIVE_AND_BOUNDED)


@pytest.mark.parametrize("case", ["first_batch", "batch", "price"])
@breaks(Rule.AMOUNTS_NON_NEGATIVE_AND_BOUNDED)
def test_batch_numbers_and_prices_beyond_2_64_are_rule_violations(case: str) -> None:
    """Found by this suite: a first batch or batch number of 2^64 escaped as a BoundsError from
    check_state, and a batch price of 2^64 was accepted."""
    channel = funded(trader_deposit=10**16, broker_deposit=2**62)
    sell = make_order(channel, is_buy=False, max_fee=0)
    if case == "first_batch":
        transition: Any = create(channel, sell, first_batch=MAX_AMOUNT + 1)
    else:
        channel = place(channel, sell)
        transition = (
            trade(1, MAX_AMOUNT + 1, GOLD_2000, [(1, 1, 0)])
            if case == "batch"
            else trade(1, 1, MAX_AMOUNT + 1, [(1, 1, 0)])
        )
    rejected(channel, transition, Rule.AMOUNTS_NON_NEGATIVE_AND_BOUNDED)


# --------------------------------------------------------------------------- locks and balances


@breaks(Rule.LOCKED_COVERS_FILL)
def test_buy_fill_paying_more_than_its_lock() -> None:
    """Buy 3 for 1 base unit with a max fee of 100: after 2 are filled, 1 + ceil(100/3) = 35 stays
    locked, but a fill of the last unit may pay 1 + a fee of 100 within the signed ratio."""
    channel = funded()
    order = make_order(channel, amount_synthetic=3, amount_collateral=1, max_fee=100)
    channel = place(channel, order)
    assert channel.state.balances.trader_locked == 101
    channel = accepted(channel, trade(1, 1, 300_000, [(1, 2, 0)])).channel
    assert channel.state.balances.trader_locked == 35
    check_fill_price(order, 1, 1)
    check_fee(order, 100, 1)
    rejected(channel, trade(1, 2, 300_000, [(1, 1, 100)]), Rule.LOCKED_COVERS_FILL)
    accepted(channel, trade(1, 2, 300_000, [(1, 1, 34)]))


@breaks(Rule.LOCKED_COVERS_FILL)
def test_sell_fee_above_its_lock_and_proceeds() -> None:
    """Sell 3 for nothing with a max fee of 100: after 2 are filled, ceil(100/3) = 34 stays
    locked and the last unit brings in 0, so a fee of 100 is not covered."""
    channel = funded()
    channel = place(channel, make_order(channel, is_buy=False, amount_synthetic=3, amount_collateral=0, max_fee=100))
    assert channel.state.balances.trader_locked == 100
    channel = accepted(channel, trade(1, 1, 1, [(1, 2, 0)])).channel
    assert channel.state.balances.trader_locked == 34
    rejected(channel, trade(1, 2, 1, [(1, 1, 100)]), Rule.LOCKED_COVERS_FILL)
    rejected(channel, trade(1, 2, 1, [(1, 1, 35)]), Rule.LOCKED_COVERS_FILL)
    accepted(channel, trade(1, 2, 1, [(1, 1, 34)]))


@breaks(Rule.BALANCES_WITHIN_BOUNDS)
def test_deposit_beyond_2_63() -> None:
    channel = funded()
    rejected(channel, AccountDeposits(TokenAmount(MAX_BALANCE + 1), TokenAmount(0)), Rule.BALANCES_WITHIN_BOUNDS)
    rejected(channel, AccountDeposits(TokenAmount(10**9), TokenAmount(MAX_BALANCE + 1)), Rule.BALANCES_WITHIN_BOUNDS)
    accepted(channel, AccountDeposits(TokenAmount(10**9), TokenAmount(MAX_BALANCE)))


@breaks(Rule.BALANCES_WITHIN_BOUNDS)
def test_trade_pushing_the_broker_balance_beyond_2_63() -> None:
    channel = funded(broker_deposit=MAX_BALANCE)
    channel = place(channel, make_order(channel))
    rejected(channel, trade(1, 1, GOLD_2000, [(1, 4 * 10**5, 0)]), Rule.BALANCES_WITHIN_BOUNDS)


@breaks(Rule.AVAILABLE_COVERS_LOCK)
def test_order_locking_more_than_available() -> None:
    channel = funded()  # $1000 available
    exact = make_order(channel, amount_collateral=999 * USD, max_fee=1 * USD)
    assert lock_needed(exact, 0) == 1_000 * USD
    accepted(channel, create(channel, exact))
    over = make_order(channel, amount_collateral=999 * USD + 1, max_fee=1 * USD)
    rejected(channel, create(channel, over), Rule.AVAILABLE_COVERS_LOCK)


@breaks(Rule.AVAILABLE_COVERS_LOCK)
def test_second_order_locking_more_than_what_is_left() -> None:
    channel = place(funded(), make_order(funded()))  # locks $802 of $1000
    second = make_order(channel, nonce=2, amount_synthetic=10**5, amount_collateral=198 * USD + 1, max_fee=0)
    rejected(channel, create(channel, second), Rule.AVAILABLE_COVERS_LOCK)


def test_the_lock_of_a_buy_pays_every_fill_the_rules_accept() -> None:
    """A trader who deposited exactly what its buy locks (3 units for $800, no fee) can pay fills
    of 1 unit at the order's own limit price. Found by this suite: each fill paid
    ceil($266.666666) = $266.666667 (as StarkEx's ratio allows), the second left $533.333333 for a
    lock of $533.333334, and the fill was refused (available_covers_lock). A buy now pays at most
    what the fill releases of the order's collateral lock: $266.666666, $266.666667, $266.666667."""
    params = make_params()
    order = make_order(funded(), amount_synthetic=3, amount_collateral=800 * USD, max_fee=0)
    channel = place(funded(trader_deposit=lock_needed(order, 0), params=params), order)
    limit = 800 * USD * 10**6 // 3
    payments = []
    for batch in (1, 2, 3):
        result = accepted(channel, trade(1, batch, limit, [(1, 1, 0)]))
        payments += [e.amount_collateral for e in result.events if isinstance(e, OrderFilled)]
        channel = result.channel
    assert channel.positions == (3, 0)
    assert payments == [266_666_666, 266_666_667, 266_666_667]
    assert channel.trader_collateral == 0


@breaks(Rule.BROKER_COVERS_FILL)
def test_trader_sale_bigger_than_the_broker_balance() -> None:
    channel = funded(broker_deposit=5_000 * USD)
    sell = make_order(
        channel, is_buy=False, amount_synthetic=4 * 10**6, amount_collateral=8_000 * USD, max_fee=TokenAmount(0)
    )
    channel = place(channel, sell)
    rejected(channel, trade(1, 1, GOLD_2000, [(1, 4 * 10**6, 0)]), Rule.BROKER_COVERS_FILL)
    # $5000 of the $8000 is what the broker has
    accepted(channel, trade(1, 1, GOLD_2000, [(1, 25 * 10**5, 0)]))
    rejected(channel, trade(1, 1, GOLD_2000, [(1, 25 * 10**5 + 1, 0)]), Rule.BROKER_COVERS_FILL)


@breaks(Rule.OPEN_ORDER_LIMIT)
def test_one_order_more_than_the_limit() -> None:
    channel = funded()
    for nonce in range(1, MAX_OPEN_ORDERS + 1):
        order = make_order(channel, nonce=nonce, amount_synthetic=1, amount_collateral=1, max_fee=0)
        channel = place(channel, order)
    assert len(channel.state.open_orders) == MAX_OPEN_ORDERS
    extra = make_order(channel, nonce=MAX_OPEN_ORDERS + 1, amount_synthetic=1, amount_collateral=1, max_fee=0)
    rejected(channel, create(channel, extra), Rule.OPEN_ORDER_LIMIT)
    channel = accepted(channel, CancelOrder(Nonce(7))).channel
    accepted(channel, create(channel, extra))


@breaks(Rule.ORDER_IS_OPEN)
def test_cancel_of_an_order_that_is_not_open() -> None:
    channel = funded()
    rejected(channel, CancelOrder(Nonce(1)), Rule.ORDER_IS_OPEN)
    channel = place(channel, make_order(channel))
    rejected(channel, CancelOrder(Nonce(2)), Rule.ORDER_IS_OPEN)
    channel = accepted(channel, CancelOrder(Nonce(1))).channel
    rejected(channel, CancelOrder(Nonce(1)), Rule.ORDER_IS_OPEN)


@breaks(Rule.ORDER_IS_OPEN)
def test_fill_of_an_order_that_is_not_open() -> None:
    channel = place(funded(), make_order(funded()))
    rejected(channel, trade(1, 1, GOLD_2000, [(2, 10**5, 0)]), Rule.ORDER_IS_OPEN)
    rejected(channel, trade(1, 1, GOLD_2000, [(1, 10**5, 0), (2, 10**5, 0)]), Rule.ORDER_IS_OPEN)
    done = accepted(channel, trade(1, 1, GOLD_2000, [(1, 4 * 10**5, 0)])).channel
    rejected(done, trade(1, 2, GOLD_2000, [(1, 1, 0)]), Rule.ORDER_IS_OPEN)


# --------------------------------------------------------------------------- signatures


def signature_cases() -> list[tuple[str, Callable[[Channel, Order], Signature]]]:
    return [
        ("wrong signer", lambda c, o: sign(c, o, OUTSIDER)),
        ("broker signed", lambda c, o: sign(c, o, BROKER)),
        ("malleated (high s)", lambda c, o: malleate(sign(c, o))),
        ("another chain id", lambda c, o: sign(c, o, domain=Domain(2, ADJUDICATOR))),
        ("another adjudicator", lambda c, o: sign(c, o, domain=Domain(1, addr(0x23)))),
        ("another order", lambda c, o: sign(c, replace(o, amount_collateral=o.amount_collateral - 1))),
        ("v = 29", lambda c, o: Signature(sign(c, o)[:64] + bytes((29,)))),
        ("64 bytes", lambda c, o: Signature(sign(c, o)[:64])),
        ("zeros", lambda c, o: NO_SIGNATURE),
    ]


@pytest.mark.parametrize(("what", "make_signature"), signature_cases(), ids=[c[0] for c in signature_cases()])
@breaks(Rule.ORDER_SIGNATURE_VALID)
def test_order_signature_not_valid(what: str, make_signature: Callable[[Channel, Order], Signature]) -> None:
    channel = funded()
    order = make_order(channel)
    signature = make_signature(channel, order)
    if what.startswith("malleated"):
        assert int.from_bytes(signature[32:64], "big") > HALF_N
    rejected(channel, create(channel, order, signature=signature), Rule.ORDER_SIGNATURE_VALID)


def test_the_same_order_signed_by_the_trader_is_accepted() -> None:
    channel = funded()
    order = make_order(channel)
    accepted(channel, create(channel, order, signature=sign(channel, order)))


# --------------------------------------------------------------------------- leverage


@breaks(Rule.WELL_LEVERAGED)
def test_short_too_big_at_creation() -> None:
    """$1000 of collateral, a risk factor of floor(2^32 / 10): selling $10000 of gold leaves value
    $1000 against a risk just below $1000; the largest max fee that keeps value >= risk is
    accepted, one base unit more is not."""
    channel = funded(broker_deposit=20_000 * USD)
    risk_scaled = 10_000 * USD * (2**32 // 10)
    slack = (1_000 * USD * RISK_FACTOR_ONE - risk_scaled) // RISK_FACTOR_ONE
    assert slack == 1  # floor(2^32 / 10) is a little under 10%
    ok = make_order(channel, is_buy=False, amount_synthetic=5 * 10**6, amount_collateral=10_000 * USD, max_fee=slack)
    accepted(channel, create(channel, ok))
    too_big = replace(ok, max_fee=TokenAmount(slack + 1))
    rejected(channel, create(channel, too_big), Rule.WELL_LEVERAGED)
    much_too_big = replace(
        ok, amount_synthetic=SyntheticAmount(50 * 10**6), amount_collateral=TokenAmount(100_000 * USD)
    )
    rejected(channel, create(channel, much_too_big), Rule.WELL_LEVERAGED)


@breaks(Rule.WELL_LEVERAGED)
def test_short_growing_when_another_market_moved_against_the_trader() -> None:
    """Short 0.05 BTC at $60000; a sell of 0.1 oz gold is fine while BTC is at $60000 (value $1000,
    risk $620) and not when the trade comes with BTC at $70000 (value $500, risk $720)."""
    channel = funded(broker_deposit=100_000 * USD)
    btc = make_order(
        channel, market=2, is_buy=False, amount_synthetic=5 * 10**6, amount_collateral=3_000 * USD, max_fee=0
    )
    channel = place(channel, btc)
    channel = accepted(channel, trade(2, 1, 60_000 * USD, [(1, 5 * 10**6, 0)])).channel
    gold = make_order(channel, nonce=2, is_buy=False, amount_synthetic=10**5, amount_collateral=200 * USD, max_fee=0)
    channel = place(channel, gold, marks={2: 60_000 * USD})
    accepted(channel, trade(1, 1, GOLD_2000, [(2, 10**5, 0)], marks={2: 60_000 * USD}))
    rejected(channel, trade(1, 1, GOLD_2000, [(2, 10**5, 0)], marks={2: 70_000 * USD}), Rule.WELL_LEVERAGED)


def test_risk_reducing_trade_is_allowed_although_not_well_leveraged() -> None:
    """Short 4 oz from $2000, gold now at $2200: value $9000 - $8800 = $200 < risk $880. Buying
    1 oz back at $2200 leaves value $200 < risk $660: still not well leveraged, but the position
    shrinks and value/risk rises, so it is allowed, at creation and at trade time."""
    channel = short_four_ounces()
    marks = {1: Price(2_200 * USD)}
    value, risk = leverage(channel.params, channel.trader_collateral, channel.positions, marks)
    assert (value, risk) == (200 * USD, 8_800 * USD * (2**32 // 10))
    assert value * RISK_FACTOR_ONE < risk
    buy_back = make_order(channel, nonce=2, amount_synthetic=10**6, amount_collateral=2_200 * USD, max_fee=0)
    channel = accepted(channel, create(channel, buy_back, first_batch=2, marks=marks)).channel
    result = accepted(channel, trade(1, 2, 2_200 * USD, [(2, 10**6, 0)]))
    assert result.channel.positions == (-3 * 10**6, 0)
    value, risk = leverage(result.channel.params, result.channel.trader_collateral, result.channel.positions, marks)
    assert value == 200 * USD
    assert value * RISK_FACTOR_ONE < risk  # still not well leveraged, and allowed


@breaks(Rule.WELL_LEVERAGED)
def test_risk_reducing_order_whose_fee_lowers_value_per_risk() -> None:
    """The same buy-back with a max fee of $100: value/risk would fall from 200/880 to 100/660."""
    channel = short_four_ounces()
    marks = {1: 2_200 * USD}
    costly = make_order(channel, nonce=2, amount_synthetic=10**6, amount_collateral=2_200 * USD, max_fee=100 * USD)
    rejected(channel, create(channel, costly, first_batch=2, marks=marks), Rule.WELL_LEVERAGED)
    cheap = replace(costly, max_fee=TokenAmount(10 * USD))  # 190/660 >= 200/880
    accepted(channel, create(channel, cheap, first_batch=2, marks=marks))


@breaks(Rule.WELL_LEVERAGED)
def test_increasing_a_short_while_under_leveraged() -> None:
    channel = short_four_ounces()
    more = make_order(channel, nonce=2, is_buy=False, amount_synthetic=1, amount_collateral=2_200, max_fee=0)
    rejected(channel, create(channel, more, first_batch=2, marks={1: 2_200 * USD}), Rule.WELL_LEVERAGED)


@breaks(Rule.MARK_PRICE_KNOWN)
def test_order_in_another_market_without_the_mark_of_an_open_position() -> None:
    channel = short_four_ounces()
    btc = make_order(channel, nonce=2, market=2, amount_synthetic=10**6, amount_collateral=600 * USD, max_fee=0)
    rejected(channel, create(channel, btc), Rule.MARK_PRICE_KNOWN)
    accepted(channel, create(channel, btc, marks={1: GOLD_2000}))


@breaks(Rule.MARK_PRICE_KNOWN)
def test_trade_in_another_market_without_the_mark_of_an_open_position() -> None:
    channel = short_four_ounces()
    btc = make_order(channel, nonce=2, market=2, amount_synthetic=10**6, amount_collateral=600 * USD, max_fee=0)
    channel = place(channel, btc, marks={1: GOLD_2000})
    rejected(channel, trade(2, 1, 60_000 * USD, [(2, 10**6, 0)]), Rule.MARK_PRICE_KNOWN)
    accepted(channel, trade(2, 1, 60_000 * USD, [(2, 10**6, 0)], marks={1: GOLD_2000}))


@pytest.mark.parametrize("prices", [{}, {2: 60_000 * USD}, {1: 0}, {1: -1}])
@breaks(Rule.MARK_PRICE_KNOWN)
def test_finalize_without_a_closing_price_for_a_position(prices: dict[int, int]) -> None:
    channel = short_four_ounces()
    rejected(channel, Finalize({k: Price(v) for k, v in prices.items()}), Rule.MARK_PRICE_KNOWN)


# --------------------------------------------------------------------------- batches


@breaks(Rule.ELIGIBLE_IN_BATCH)
def test_fill_before_the_order_is_eligible() -> None:
    channel = funded()
    channel = place(channel, make_order(channel), first_batch=3)
    rejected(channel, trade(1, 2, GOLD_2000, [(1, 10**5, 0)]), Rule.ELIGIBLE_IN_BATCH)
    accepted(channel, trade(1, 3, GOLD_2000, [(1, 10**5, 0)]))


@breaks(Rule.BATCH_AFTER_LAST)
def test_trade_in_a_batch_already_reflected() -> None:
    channel = place(funded(), make_order(funded()))
    rejected(channel, trade(1, 0, GOLD_2000, [(1, 10**5, 0)]), Rule.BATCH_AFTER_LAST)
    channel = accepted(channel, trade(1, 1, GOLD_2000, [(1, 10**5, 0)])).channel
    rejected(channel, trade(1, 1, GOLD_2000, [(1, 10**5, 0)]), Rule.BATCH_AFTER_LAST)
    rejected(channel, trade(1, -1, GOLD_2000, [(1, 10**5, 0)]), Rule.BATCH_AFTER_LAST)
    accepted(channel, trade(1, 2, GOLD_2000, [(1, 10**5, 0)]))


@breaks(Rule.FIRST_BATCH_IS_CURRENT)
def test_order_eligible_from_a_past_batch() -> None:
    channel = funded()
    order = make_order(channel)
    rejected(channel, create(channel, order, first_batch=0), Rule.FIRST_BATCH_IS_CURRENT)
    channel = place(channel, make_order(channel, nonce=9, amount_synthetic=10**5, amount_collateral=100 * USD))
    channel = accepted(channel, trade(1, 1, 1_000 * USD, [(9, 10**5, 0)])).channel
    rejected(channel, create(channel, order, first_batch=1), Rule.FIRST_BATCH_IS_CURRENT)
    accepted(channel, create(channel, order, first_batch=2))
    # the batches of the other market are counted apart
    accepted(
        channel,
        create(
            channel,
            replace(order, market=MarketId(2), amount_collateral=TokenAmount(10 * USD)),
            first_batch=1,
            marks={1: 1_000 * USD},
        ),
    )


@pytest.mark.parametrize(
    ("trader_deposit", "broker_deposit"),
    [(999 * USD, 5_000 * USD), (1_000 * USD, 4_999 * USD), (1_000 * USD, 5_000 * USD), (0, 0), (-1, 5_000 * USD)],
)
@breaks(Rule.DEPOSITS_ONLY_GROW)
def test_deposits_that_do_not_grow(trader_deposit: int, broker_deposit: int) -> None:
    channel = funded()  # $1000 and $5000
    rejected(
        channel, AccountDeposits(TokenAmount(trader_deposit), TokenAmount(broker_deposit)), Rule.DEPOSITS_ONLY_GROW
    )


# --------------------------------------------------------------------------- channel state


def finalized() -> Channel:
    channel = place(funded(), make_order(funded()))
    channel = accepted(channel, trade(1, 1, GOLD_2000, [(1, 10**5, 0)])).channel
    return accepted(channel, Finalize({1: Price(GOLD_2000)})).channel


@pytest.mark.parametrize(
    "transition",
    [
        AccountDeposits(TokenAmount(2_000 * USD), TokenAmount(5_000 * USD)),
        "create",
        CancelOrder(Nonce(1)),
        trade(1, 2, GOLD_2000, [(1, 10**5, 0)]),
        Finalize({1: Price(GOLD_2000)}),
    ],
    ids=["deposits", "create", "cancel", "trade", "finalize"],
)
@breaks(Rule.CHANNEL_NOT_FINAL)
def test_nothing_follows_a_final_state(transition: Any) -> None:
    channel = finalized()
    assert channel.state.is_final
    if transition == "create":
        transition = create(channel, make_order(channel, nonce=2), first_batch=2)
    rejected(channel, transition, Rule.CHANNEL_NOT_FINAL)


@breaks(Rule.STATE_MATCHES_TRANSITION)
def test_proposed_state_that_is_not_what_the_transition_gives() -> None:
    channel = funded()
    transition = AccountDeposits(TokenAmount(1_500 * USD), TokenAmount(5_000 * USD))
    right = apply(channel, transition).state
    expect(channel, transition, right)
    wrong = replace(
        right, balances=replace(right.balances, broker_available=TokenAmount(right.balances.broker_available + 1))
    )
    with pytest.raises(RuleViolation) as exc:
        expect(channel, transition, wrong)
    assert exc.value.rule is Rule.STATE_MATCHES_TRANSITION
    assert exc.value.code == "rule_violation"


@breaks(Rule.STATE_MATCHES_TRANSITION)
def test_trade_without_fills() -> None:
    channel = place(funded(), make_order(funded()))
    rejected(channel, trade(1, 1, GOLD_2000, []), Rule.STATE_MATCHES_TRANSITION)


@breaks(Rule.VERSION_INCREMENTS)
def test_no_transition_past_the_last_version() -> None:
    channel = with_version(funded(), MAX_VERSION)
    rejected(channel, AccountDeposits(TokenAmount(2_000 * USD), TokenAmount(5_000 * USD)), Rule.VERSION_INCREMENTS)
    rejected(channel, CancelOrder(Nonce(1)), Rule.VERSION_INCREMENTS)
    last = accepted(
        with_version(funded(), MAX_VERSION - 1), AccountDeposits(TokenAmount(2_000 * USD), TokenAmount(5_000 * USD))
    )
    assert last.state.version == MAX_VERSION


def test_rule_violation_is_typed_and_names_its_rule() -> None:
    channel = funded()
    error = rejected(channel, CancelOrder(Nonce(5)), Rule.ORDER_IS_OPEN)
    assert str(error).startswith("order_is_open: ")
    assert error.rule.value == "order_is_open"


def test_create_is_checked_in_a_channel_with_a_position_and_marks() -> None:
    """Sanity: a channel with a short and the right marks still accepts a small, safe order."""
    channel = short_four_ounces()
    small = make_order(channel, nonce=2, amount_synthetic=10**5, amount_collateral=190 * USD, max_fee=0)
    accepted(channel, create(channel, small, first_batch=2, marks={1: GOLD_2000}))
    assert NOW < EXPIRATION * HOUR
