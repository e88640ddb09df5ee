"""The channel state machine's happy paths with exact numbers (MISSION.md, "The trading state",
"Money and numbers", "Batches"): deposits, locks, fills at the batch price with the rounding
against the trader, fees, cancels, finalize, expect(), events, versions and balance sums."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest

from offchain.engine.channel import (
    AccountDeposits,
    CancelOrder,
    Channel,
    ChannelFinalized,
    DepositsAccounted,
    Finalize,
    OrderCancelled,
    OrderFilled,
    OrderLocked,
    PositionClosed,
    apply,
    expect,
    setup,
)
from offchain.engine.rules import Rule, RuleViolation, lock_needed
from offchain.model import EMPTY_OUTCOME, Balances, ChannelState, Outcome
from offchain.types import (
    BatchNumber,
    ChannelId,
    MarketId,
    Nonce,
    Price,
    Signature,
    SyntheticAmount,
    TokenAmount,
    Version,
)
from tests.unit.engine_helpers import (
    PARAMS,
    USD,
    accepted,
    assert_invariants,
    buyer_pays,
    create,
    expected_lock,
    fill_payment,
    funded,
    make_order,
    place,
    rejected,
    seller_gets,
    trade,
)

OZ = 10**6
"""Gold's resolution: base units per ounce."""
BTC = 10**8


def filled(
    nonce: int, market: int, batch: int, is_buy: bool, synthetic: int, collateral: int, fee: int, complete: bool
) -> OrderFilled:
    return OrderFilled(
        Nonce(nonce),
        MarketId(market),
        BatchNumber(batch),
        is_buy,
        SyntheticAmount(synthetic),
        TokenAmount(collateral),
        TokenAmount(fee),
        complete,
    )


def outcome(position: int, fees: int, last_batch: int) -> Outcome:
    return Outcome(SyntheticAmount(position), TokenAmount(fees), BatchNumber(last_batch))


def closed(market: int, position: int, price: int, value: int) -> PositionClosed:
    return PositionClosed(MarketId(market), SyntheticAmount(position), Price(price), TokenAmount(value))


def balances(channel: Channel) -> tuple[int, int, int, int]:
    b = channel.state.balances
    return (b.trader_available, b.trader_locked, b.broker_available, b.broker_locked)


# --------------------------------------------------------------------------- deposits


def test_setup_is_version_zero_with_nothing_in_it() -> None:
    channel = setup(PARAMS)
    assert channel.state.version == 0
    assert channel.state.balances == Balances(*(TokenAmount(0),) * 6)
    assert channel.state.open_orders == ()
    assert channel.state.outcomes == (EMPTY_OUTCOME, EMPTY_OUTCOME)
    assert channel.state.channel_id == PARAMS.channel_id
    assert not channel.state.is_final
    assert channel.used_nonces == frozenset()


def test_deposits_are_accounted() -> None:
    channel = setup(PARAMS)
    result = accepted(channel, AccountDeposits(TokenAmount(1_000 * USD), TokenAmount(5_000 * USD)))
    assert result.state.version == 1
    assert balances(result.channel) == (1_000 * USD, 0, 5_000 * USD, 0)
    assert (result.state.balances.trader_deposit, result.state.balances.broker_deposit) == (1_000 * USD, 5_000 * USD)
    assert result.events == (DepositsAccounted(TokenAmount(1_000 * USD), TokenAmount(5_000 * USD)),)

    # a top-up with an order open: the trader's available grows by the deposit, the lock stays
    channel = place(result.channel, make_order(result.channel))
    assert balances(channel) == (198 * USD, 802 * USD, 5_000 * USD, 0)
    result = accepted(channel, AccountDeposits(TokenAmount(1_500 * USD), TokenAmount(5_000 * USD)))
    assert result.state.version == 3
    assert balances(result.channel) == (698 * USD, 802 * USD, 5_000 * USD, 0)
    result = accepted(result.channel, AccountDeposits(TokenAmount(1_500 * USD), TokenAmount(7_000 * USD)))
    assert balances(result.channel) == (698 * USD, 802 * USD, 7_000 * USD, 0)
    assert result.state.open_orders == channel.state.open_orders


# --------------------------------------------------------------------------- locks


@pytest.mark.parametrize(
    ("is_buy", "synthetic", "collateral", "fee", "locks"),
    [
        # locks after 0, 1, 2, ... units filled: buy ceil(C*r/S) + ceil(F*r/S), sell ceil(F*r/S)
        (True, 3, 10, 7, [10 + 7, 7 + 5, 4 + 3]),
        (False, 3, 10, 7, [7, 5, 3]),
        (True, 4 * 10**5, 800 * USD, 2 * USD, [802 * USD]),
        (False, 4 * 10**5, 800 * USD, 2 * USD, [2 * USD]),
        (True, 7, 0, 0, [0, 0]),
    ],
)
def test_lock_needed(is_buy: bool, synthetic: int, collateral: int, fee: int, locks: list[int]) -> None:
    order = make_order(funded(), is_buy=is_buy, amount_synthetic=synthetic, amount_collateral=collateral, max_fee=fee)
    for done, lock in enumerate(locks):
        assert lock_needed(order, done) == lock == expected_lock(order, done)
    assert lock_needed(order, synthetic) == 0


@pytest.mark.parametrize(("is_buy", "lock"), [(True, 802 * USD), (False, 2 * USD)])
def test_create_order_locks(is_buy: bool, lock: int) -> None:
    channel = funded()
    order = make_order(channel, is_buy=is_buy)
    result = accepted(channel, create(channel, order, first_batch=4))
    assert result.state.version == 2
    assert balances(result.channel) == (1_000 * USD - lock, lock, 5_000 * USD, 0)
    (open_order,) = result.state.open_orders
    assert (open_order.order, open_order.filled, open_order.first_batch) == (order, 0, 4)
    assert result.channel.used_nonces == {1}
    assert result.events == (OrderLocked(Nonce(1), order.market, TokenAmount(lock), open_order.first_batch),)


def test_partial_buys_pay_at_most_what_they_release_of_the_lock() -> None:
    """Buy 3 units for 10 base units, max fee 7 (lock 10 + 7 = 17). At 3.3 per unit (resolution
    10^6) one unit is worth 3.3: the buyer pays ceil(3.3) = 4, capped at what the fill releases
    of the collateral lock: 10 - ceil(20/3) = 3. At 1.5 the rounded-up value 2 is below the
    release (3). The last unit releases 4 and pays ceil(3.3) = 4. The three payments add up to
    at most C."""
    channel = funded()
    order = make_order(channel, amount_synthetic=3, amount_collateral=10, max_fee=7)
    channel = place(channel, order)
    assert channel.state.balances.trader_locked == 17
    steps = [
        # price, fee, paid, lock after
        (3_300_000, 2, 3, 7 + 5),
        (1_500_000, 1, 2, 4 + 3),
        (3_300_000, 2, 4, 0),
    ]
    collateral = 1_000 * USD
    for batch, (price, fee, paid, lock) in enumerate(steps, start=1):
        assert fill_payment(order, batch - 1, 1, price, OZ) == paid
        result = accepted(channel, trade(1, batch, price, [(1, 1, fee)]))
        assert result.events == (filled(1, 1, batch, True, 1, paid, fee, batch == 3),)
        collateral -= paid + fee
        assert balances(result.channel) == (collateral - lock, lock, 6_000 * USD - collateral, 0)
        channel = result.channel
    assert channel.state.open_orders == ()
    assert channel.state.outcomes[0] == outcome(3, 5, 3)


# --------------------------------------------------------------------------- fills


def test_partial_buy_at_the_batch_price() -> None:
    """Buy 0.4 oz for $800, fee $2; 0.1 oz filled at $1999.999999: pays ceil($199.9999999) =
    $200, fee $0.50; $601.50 stays locked for the 0.3 oz left."""
    channel = place(funded(), make_order(funded()))
    price = 2_000 * USD - 1
    result = accepted(channel, trade(1, 1, price, [(1, 10**5, 500_000)]))
    paid = buyer_pays(10**5, price, OZ)
    assert paid == 200 * USD
    collateral = 1_000 * USD - 200 * USD - 500_000
    assert balances(result.channel) == (collateral - 601_500_000, 601_500_000, 6_000 * USD - collateral, 0)
    assert result.state.outcomes == (outcome(10**5, TokenAmount(500_000), 1), EMPTY_OUTCOME)
    (open_order,) = result.state.open_orders
    assert open_order.filled == 10**5
    assert result.events == (filled(1, 1, 1, True, 10**5, 200 * USD, 500_000, False),)

    # the rest at $1990 in batch 3 (batches may be skipped): $597 + fee $2 * 597 / 800 = $1.4925;
    # the order is gone
    result = accepted(result.channel, trade(1, 3, 1_990 * USD, [(1, 3 * 10**5, 1_492_500)]))
    collateral -= 597 * USD + 1_492_500
    assert balances(result.channel) == (collateral, 0, 6_000 * USD - collateral, 0)
    assert result.state.open_orders == ()
    assert result.state.outcomes[0] == outcome(4 * 10**5, 1_992_500, 3)
    assert result.events == (filled(1, 1, 3, True, 3 * 10**5, 597 * USD, 1_492_500, True),)
    assert result.channel.used_nonces == {1}


def test_partial_sell_at_the_batch_price() -> None:
    """Sell 0.4 oz for $800, fee $2; 0.1 oz filled at $2000.000001: gets floor($200.0000001) =
    $200, pays $0.50; $1.50 stays locked."""
    channel = funded()
    channel = place(channel, make_order(channel, is_buy=False))
    price = 2_000 * USD + 1
    result = accepted(channel, trade(1, 1, price, [(1, 10**5, 500_000)]))
    assert seller_gets(10**5, price, OZ) == 200 * USD
    collateral = 1_000 * USD + 200 * USD - 500_000
    assert balances(result.channel) == (collateral - 1_500_000, 1_500_000, 6_000 * USD - collateral, 0)
    assert result.state.outcomes[0] == outcome(-(10**5), 500_000, 1)
    assert result.events == (filled(1, 1, 1, False, 10**5, 200 * USD, 500_000, False),)


def test_two_orders_filled_in_one_trade() -> None:
    channel = funded(trader_deposit=3_000 * USD)
    first = make_order(channel)  # 0.4 oz, limit $2000, max fee $2
    second = make_order(channel, nonce=2, amount_synthetic=10**6, amount_collateral=2_100 * USD, max_fee=3 * USD)
    channel = place(place(channel, first), second)
    assert channel.state.balances.trader_locked == 802 * USD + 2_103 * USD
    rejected(channel, create(channel, make_order(channel, nonce=3)), Rule.AVAILABLE_COVERS_LOCK)  # $95 left

    # order 1's fee: at most $2 * 796 / 800 = $1.99
    result = accepted(channel, trade(1, 1, 1_990 * USD, [(2, 5 * 10**5, 1_000_000), (1, 4 * 10**5, 1_990_000)]))
    collateral = 3_000 * USD - 995 * USD - 1_000_000 - 796 * USD - 1_990_000
    lock = expected_lock(second, 5 * 10**5)
    assert lock == 1_050 * USD + 1_500_000
    assert balances(result.channel) == (collateral - lock, lock, 8_000 * USD - collateral, 0)
    assert result.state.outcomes[0] == outcome(9 * 10**5, 2_990_000, 1)
    assert [o.order.nonce for o in result.state.open_orders] == [2]
    assert result.events == (
        filled(2, 1, 1, True, 5 * 10**5, 995 * USD, 1_000_000, False),
        filled(1, 1, 1, True, 4 * 10**5, 796 * USD, 1_990_000, True),
    )


def test_fill_in_the_second_market_leaves_the_first_alone() -> None:
    channel = funded(broker_deposit=100_000 * USD)
    btc = make_order(channel, market=2, is_buy=False, amount_synthetic=10**6, amount_collateral=600 * USD, max_fee=0)
    channel = place(channel, btc)
    result = accepted(channel, trade(2, 7, 61_000 * USD, [(1, 10**6, 0)]))
    assert result.state.outcomes == (EMPTY_OUTCOME, outcome(-(10**6), 0, 7))
    assert result.channel.trader_collateral == 1_000 * USD + 610 * USD
    # the gold market's batches are still at 0
    gold = make_order(result.channel, nonce=2, amount_synthetic=10**5, amount_collateral=200 * USD, max_fee=0)
    accepted(result.channel, create(result.channel, gold, first_batch=1, marks={2: 61_000 * USD}))


# --------------------------------------------------------------------------- cancel


def test_cancel_releases_exactly_the_lock() -> None:
    channel = funded()
    order = make_order(channel, amount_synthetic=3, amount_collateral=10, max_fee=7)
    channel = place(channel, order)
    before = balances(channel)
    result = accepted(channel, CancelOrder(Nonce(1)))
    assert balances(result.channel) == (before[0] + 17, 0, before[2], 0)
    assert result.events == (OrderCancelled(Nonce(1), TokenAmount(17)),)
    assert result.state.open_orders == ()
    assert result.channel.used_nonces == {1}


def test_cancel_of_a_partly_filled_order_releases_the_rest() -> None:
    channel = funded()
    order = make_order(channel, amount_synthetic=3, amount_collateral=10, max_fee=7)
    channel = place(channel, order)
    # 2 units at 3.3: ceil(6.6) = 7, capped at the release 10 - ceil(10/3) = 6; fee 4
    channel = accepted(channel, trade(1, 1, 3_300_000, [(1, 2, 4)])).channel
    assert channel.state.balances.trader_locked == 4 + 3
    result = accepted(channel, CancelOrder(Nonce(1)))
    assert result.events == (OrderCancelled(Nonce(1), TokenAmount(7)),)
    assert balances(result.channel) == (1_000 * USD - 10, 0, 5_000 * USD + 10, 0)
    assert result.state.outcomes[0] == outcome(2, 4, 1)


def test_cancel_one_of_two() -> None:
    channel = funded()
    channel = place(channel, make_order(channel))
    channel = place(channel, make_order(channel, nonce=5, is_buy=False))
    result = accepted(channel, CancelOrder(Nonce(1)))
    assert [o.order.nonce for o in result.state.open_orders] == [5]
    assert result.state.balances.trader_locked == 2 * USD


# --------------------------------------------------------------------------- finalize


def long_gold_short_btc() -> Channel:
    """$5000 deposited; bought 0.4 oz at $2000 ($800), sold 0.05 BTC at $60000 ($3000); one buy
    still open (nonce 3)."""
    channel = funded(trader_deposit=5_000 * USD, broker_deposit=100_000 * USD)
    channel = place(channel, make_order(channel))
    channel = accepted(channel, trade(1, 1, 2_000 * USD, [(1, 4 * 10**5, 2 * USD)])).channel
    btc = make_order(
        channel, nonce=2, market=2, is_buy=False, amount_synthetic=5 * 10**6, amount_collateral=3_000 * USD, max_fee=0
    )
    channel = place(channel, btc, marks={1: 2_000 * USD})
    channel = accepted(channel, trade(2, 1, 60_000 * USD, [(2, 5 * 10**6, 0)], marks={1: 2_000 * USD})).channel
    channel = place(
        channel,
        make_order(channel, nonce=3, amount_synthetic=10**5, amount_collateral=150 * USD),
        first_batch=2,
        marks={2: 60_000 * USD},
    )
    assert channel.positions == (4 * 10**5, -5 * 10**6)
    assert channel.trader_collateral == (5_000 - 800 - 2 + 3_000) * USD
    return channel


def test_finalize_closes_a_long_and_a_short_at_floor_value() -> None:
    channel = long_gold_short_btc()
    gold, btc = 2_100 * USD + 1, 60_000 * USD + 1
    # 0.4 oz * $2100.000001 = $840.0000004 -> $840; -0.05 BTC * $60000.000001 = -$3000.00000005 -> -$3000.000001
    gold_value, btc_value = 840 * USD, -3_000 * USD - 1
    assert (4 * 10**5 * gold // OZ, -5 * 10**6 * btc // BTC) == (gold_value, btc_value)
    result = accepted(channel, Finalize({1: Price(gold), 2: Price(btc), 9: Price(1)}))
    collateral = channel.trader_collateral + gold_value + btc_value
    assert balances(result.channel) == (collateral, 0, 105_000 * USD - collateral, 0)
    assert result.state.is_final
    assert result.state.open_orders == ()
    assert result.state.outcomes == (outcome(0, 2 * USD, 1), outcome(0, 0, 1))
    assert result.events == (
        OrderCancelled(Nonce(3), TokenAmount(152 * USD)),
        closed(1, 4 * 10**5, gold, gold_value),
        closed(2, -5 * 10**6, btc, btc_value),
        ChannelFinalized(result.state.version),
    )
    assert result.state.version == channel.state.version + 1

    for transition in (
        AccountDeposits(TokenAmount(6_000 * USD), TokenAmount(100_000 * USD)),
        create(result.channel, make_order(result.channel, nonce=4), first_batch=BatchNumber(2)),
        CancelOrder(Nonce(3)),
        trade(1, 2, 2_000 * USD, [(3, 10**5, 0)]),
        Finalize({}),
    ):
        rejected(result.channel, transition, Rule.CHANNEL_NOT_FINAL)


def test_finalize_without_positions() -> None:
    channel = place(funded(), make_order(funded()))
    result = accepted(channel, Finalize({}))
    assert balances(result.channel) == (1_000 * USD, 0, 5_000 * USD, 0)
    assert result.events == (OrderCancelled(Nonce(1), TokenAmount(802 * USD)), ChannelFinalized(Version(3)))


def test_finalize_may_leave_the_broker_below_zero() -> None:
    """The trader bought 0.4 oz at $2000 and gold went to $20000: the trader is owed $8000 and
    the broker had $5800; the final state says so (the adjudicator clamps the payout)."""
    channel = place(funded(), make_order(funded()))
    channel = accepted(channel, trade(1, 1, 2_000 * USD, [(1, 4 * 10**5, 0)])).channel
    result = accepted(channel, Finalize({1: Price(20_000 * USD)}))
    assert balances(result.channel) == (8_200 * USD, 0, -2_200 * USD, 0)


def test_finalize_of_an_underwater_trader() -> None:
    """Short 4 oz at $2000 with $1000 of collateral ($9000 after the sale); gold closes at $2400:
    the position is worth -$9600, so the trader's collateral is -$600 and the broker's $21600
    (the adjudicator clamps the trader's payout to 0). Found by this suite: Finalize refused this
    with available_covers_lock, so an under-water trader could not close cooperatively."""
    channel = funded(broker_deposit=20_000 * USD)
    sell = make_order(channel, is_buy=False, amount_synthetic=4 * 10**6, amount_collateral=8_000 * USD, max_fee=0)
    channel = place(channel, sell)
    channel = accepted(channel, trade(1, 1, 2_000 * USD, [(1, 4 * 10**6, 0)])).channel
    result = accepted(channel, Finalize({1: Price(2_400 * USD)}))
    assert result.state.is_final
    assert result.channel.positions == (0, 0)
    assert result.channel.trader_collateral == -600 * USD
    b = result.state.balances
    assert b.broker_available == 21_600 * USD
    assert b.trader_available + b.trader_locked + b.broker_available + b.broker_locked == 21_000 * USD


# --------------------------------------------------------------------------- expect


def traded() -> tuple[Channel, Any, ChannelState]:
    channel = place(funded(), make_order(funded()))
    transition = trade(1, 1, 1_990 * USD, [(1, 10**5, 100_000)])
    return channel, transition, apply(channel, transition).state


def test_expect_accepts_exactly_the_state_the_transition_gives() -> None:
    channel, transition, state = traded()
    result = expect(channel, transition, copy.deepcopy(state))
    assert result.state == state
    assert result.events == apply(channel, transition).events


def one_field_off(state: ChannelState) -> dict[str, ChannelState]:
    b = state.balances
    (o,) = state.open_orders
    out = state.outcomes[0]
    return {
        "version": replace(state, version=Version(state.version + 1)),
        "channel_id": replace(state, channel_id=ChannelId(b"\x01" * 32)),
        "is_final": replace(state, is_final=True),
        "trader_available": replace(state, balances=replace(b, trader_available=TokenAmount(b.trader_available - 1))),
        "trader_locked": replace(state, balances=replace(b, trader_locked=TokenAmount(b.trader_locked + 1))),
        "broker_available": replace(state, balances=replace(b, broker_available=TokenAmount(b.broker_available + 1))),
        "broker_locked": replace(state, balances=replace(b, broker_locked=TokenAmount(1))),
        "trader_deposit": replace(state, balances=replace(b, trader_deposit=TokenAmount(b.trader_deposit + 1))),
        "broker_deposit": replace(state, balances=replace(b, broker_deposit=TokenAmount(b.broker_deposit - 1))),
        "filled": replace(state, open_orders=(replace(o, filled=SyntheticAmount(o.filled + 1)),)),
        "first_batch": replace(state, open_orders=(replace(o, first_batch=BatchNumber(2)),)),
        "signature": replace(
            state, open_orders=(replace(o, signature=Signature(bytes([o.signature[0] ^ 1]) + o.signature[1:])),)
        ),
        "no open orders": replace(state, open_orders=()),
        "position": replace(
            state, outcomes=(replace(out, position=SyntheticAmount(out.position + 1)), state.outcomes[1])
        ),
        "fees": replace(state, outcomes=(replace(out, fees=TokenAmount(out.fees - 1)), state.outcomes[1])),
        "last_batch": replace(state, outcomes=(replace(out, last_batch=BatchNumber(2)), state.outcomes[1])),
        "other outcome": replace(state, outcomes=(out, replace(out, last_batch=BatchNumber(0)))),
    }


@pytest.mark.parametrize("field", sorted(one_field_off(traded()[2])))
def test_expect_rejects_a_state_one_field_off(field: str) -> None:
    channel, transition, state = traded()
    proposed = one_field_off(state)[field]
    assert proposed != state
    before = copy.deepcopy(channel)
    with pytest.raises(RuleViolation) as exc:
        expect(channel, transition, proposed)
    assert exc.value.rule is Rule.STATE_MATCHES_TRANSITION
    assert channel == before


def test_expect_passes_on_the_transitions_own_rejection() -> None:
    channel, _, state = traded()
    with pytest.raises(RuleViolation) as exc:
        expect(channel, CancelOrder(Nonce(2)), state)
    assert exc.value.rule is Rule.ORDER_IS_OPEN


# --------------------------------------------------------------------------- every transition


def test_a_session_steps_the_version_by_one_and_keeps_the_sums() -> None:
    channel = setup(PARAMS)
    marks = {1: 2_000 * USD, 2: 60_000 * USD}
    steps: list[Any] = [
        AccountDeposits(TokenAmount(2_000 * USD), TokenAmount(50_000 * USD)),
        "buy",
        "sell btc",
        trade(1, 1, 1_995 * USD, [(1, 2 * 10**5, 900_000)], marks=marks),
        trade(2, 1, 60_500 * USD, [(2, 10**6, 5 * 10**5)], marks=marks),
        AccountDeposits(TokenAmount(2_500 * USD), TokenAmount(50_000 * USD)),
        CancelOrder(Nonce(1)),
        trade(2, 2, 59_000 * USD, [(2, 10**6, 5 * 10**5)], marks=marks),
        Finalize({1: Price(2_010 * USD), 2: Price(58_000 * USD)}),
    ]
    deposits = 0
    for step in steps:
        if step == "buy":
            step = create(channel, make_order(channel), marks=marks)
        elif step == "sell btc":
            btc = make_order(
                channel, nonce=2, market=2, is_buy=False, amount_synthetic=3 * 10**6, amount_collateral=1_700 * USD
            )
            step = create(channel, btc, marks=marks)
        before = copy.deepcopy(channel)
        result = apply(channel, step)
        assert channel == before
        assert result.state.version == channel.state.version + 1
        assert_invariants(result.channel)
        b = result.state.balances
        deposits = b.trader_deposit + b.broker_deposit
        assert b.trader_available + b.trader_locked + b.broker_available + b.broker_locked == deposits
        channel = result.channel
    assert channel.state.version == len(steps)
    assert channel.state.is_final
    assert deposits == 52_500 * USD
    assert channel.state.outcomes[1].fees == 10**6
    assert channel.state.outcomes[0].fees == 900_000


def test_apply_refuses_what_is_not_a_transition() -> None:
    with pytest.raises(TypeError):
        apply(funded(), "deposit")  # type: ignore[arg-type]
