"""Properties of the channel state machine under random transitions (MISSION.md, "The trading
state", "Money and numbers", "Batches").

:class:`ChannelMachine` drives one channel with two markets through random deposits, orders
(some broken on purpose), cancels, trades at random batch prices with random fills and fees, and
an occasional finalize. A model kept by the test, with its own arithmetic, predicts every
outcome: the set of rules a transition breaks (the engine must reject exactly when that set is
not empty, naming one of them, and leave the channel unchanged) and the next balances,
positions, fees and open orders. After every step the invariants of the trading state are
checked.

:func:`test_one_auction_fills_many_channels` clears one batch of one market over several
channels with :func:`offchain.engine.auction.clear` and applies its fills as Trades: every fill
is accepted and the broker ends flat.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from eth_utils.crypto import keccak
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from offchain.eip712 import Domain
from offchain.engine.auction import BookOrder, clear
from offchain.engine.channel import (
    AccountDeposits,
    CancelOrder,
    Channel,
    CreateOrder,
    Event,
    Finalize,
    OrderCancelled,
    OrderFilled,
    OrderLocked,
    Transition,
    apply,
)
from offchain.engine.rules import Rule, RuleViolation, lock_needed
from offchain.model import MAX_OPEN_ORDERS, Market, Order
from offchain.signing import LocalSigner, malleate
from offchain.types import BatchNumber, Nonce, Price, Signature, Timestamp, TokenAmount
from tests.unit.engine_helpers import (
    BTC,
    GOLD,
    HOUR,
    NOW,
    OUTSIDER,
    USD,
    addr,
    assert_invariants,
    expected_lock,
    fill_payment,
    funded,
    make_order,
    make_params,
    sign,
)
from tests.unit.engine_helpers import trade as make_trade

MARKETS: dict[int, Market] = {GOLD.id: GOLD, BTC.id: BTC}
START_MARKS: dict[int, int] = {GOLD.id: 2_000 * USD, BTC.id: 60_000 * USD}
MAX_UNITS: dict[int, int] = {GOLD.id: 2 * GOLD.resolution, BTC.id: BTC.resolution // 10}
"""Largest order per market: 2 oz of gold, 0.1 BTC."""
TRADER_DEPOSIT = 5_000 * USD
BROKER_DEPOSIT = 100_000 * USD

STATS: Counter[str] = Counter()
"""What the machine did: '<kind> accepted' / '<kind> <rule>' (checked after the run)."""


# --------------------------------------------------------------------------- the model's leverage


def model_leverage(collateral: int, positions: dict[int, int], marks: dict[int, int]) -> tuple[int, int] | None:
    """(total value, total risk * 2^32), or None when a position has no mark."""
    value, risk = collateral, 0
    for market_id, position in positions.items():
        if position == 0:
            continue
        if market_id not in marks:
            return None
        v = position * marks[market_id] // MARKETS[market_id].resolution
        value += v
        risk += abs(v) * MARKETS[market_id].risk_factor
    return value, risk


def leverage_rules(
    before: tuple[int, dict[int, int]], after: tuple[int, dict[int, int]], marks: dict[int, int]
) -> set[Rule]:
    """Well leveraged after, or only reducing risk: no position grows or flips and value/risk
    does not fall."""
    lev_after = model_leverage(after[0], after[1], marks)
    if lev_after is None:
        return {Rule.MARK_PRICE_KNOWN}
    value_after, risk_after = lev_after
    if value_after * 2**32 >= risk_after:
        return set()
    for market_id, new in after[1].items():
        old = before[1][market_id]
        if abs(new) > abs(old) or (new != 0 and (new > 0) != (old > 0)):
            return {Rule.WELL_LEVERAGED}
    lev_before = model_leverage(before[0], before[1], marks)
    assert lev_before is not None
    value_before, risk_before = lev_before
    if risk_after == 0 or value_after * risk_before >= value_before * risk_after:
        return set()
    return {Rule.WELL_LEVERAGED}


# --------------------------------------------------------------------------- the model


@dataclass
class ModelOrder:
    order: Order
    filled: int
    first_batch: int


@dataclass
class Model:
    """What the test expects the channel to be."""

    version: int = 1
    trader_deposit: int = TRADER_DEPOSIT
    broker_deposit: int = BROKER_DEPOSIT
    collateral: int = TRADER_DEPOSIT
    positions: dict[int, int] = field(default_factory=lambda: {1: 0, 2: 0})
    fees: dict[int, int] = field(default_factory=lambda: {1: 0, 2: 0})
    last_batch: dict[int, int] = field(default_factory=lambda: {1: 0, 2: 0})
    open: dict[int, ModelOrder] = field(default_factory=dict)
    used: set[int] = field(default_factory=set)
    final: bool = False

    def locked(self) -> int:
        return sum(expected_lock(o.order, o.filled) for o in self.open.values())

    def available(self) -> int:
        return self.collateral - self.locked()


class ChannelMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.channel = funded(TRADER_DEPOSIT, BROKER_DEPOSIT)
        self.model = Model()
        self.marks = dict(START_MARKS)
        self.next_nonce = 1
        self.previous_fees = (0, 0)
        self.events: tuple[Event, ...] = ()

    @initialize(
        trader=st.sampled_from([100 * USD, 1_000 * USD, TRADER_DEPOSIT]),
        broker=st.sampled_from([1_000 * USD, 10_000 * USD, BROKER_DEPOSIT]),
    )
    def open_channel(self, trader: int, broker: int) -> None:
        """Deposits of a few sizes, so that leverage and the broker's balance are reached too."""
        self.channel = funded(trader, broker)
        self.model = Model(trader_deposit=trader, broker_deposit=broker, collateral=trader)

    # ----------------------------------------------------------------- driving

    def step(self, kind: str, transition: Transition, broken: set[Rule]) -> bool:
        """Apply ``transition``; the engine must reject it iff ``broken`` is not empty, naming one
        of those rules, and leave the channel as it was."""
        if self.model.final:
            broken = {Rule.CHANNEL_NOT_FINAL}
        before = copy.deepcopy(self.channel)
        try:
            result = apply(self.channel, transition)
        except RuleViolation as exc:
            assert self.channel == before
            assert exc.code == "rule_violation"
            assert broken, f"{kind} rejected ({exc}) though the model breaks no rule"
            assert exc.rule in broken, f"{kind}: engine says {exc.rule}, the model {sorted(broken)}"
            STATS[f"{kind} {exc.rule.value}"] += 1
            return False
        assert self.channel == before
        assert not broken, f"{kind} accepted though the model breaks {sorted(broken)}"
        assert result.state.version == self.channel.state.version + 1
        self.channel = result.channel
        self.model.version += 1
        self.events = result.events
        STATS[f"{kind} accepted"] += 1
        return True

    # ----------------------------------------------------------------- rules

    @rule(
        trader=st.one_of(st.just(0), st.integers(-10, 2_000 * USD)),
        broker=st.one_of(st.just(0), st.integers(-10, 20_000 * USD)),
    )
    def deposit(self, trader: int, broker: int) -> None:
        m = self.model
        new = (m.trader_deposit + trader, m.broker_deposit + broker)
        broken = set()
        if trader < 0 or broker < 0 or (trader, broker) == (0, 0):
            broken.add(Rule.DEPOSITS_ONLY_GROW)
        if self.step("deposit", AccountDeposits(TokenAmount(new[0]), TokenAmount(new[1])), broken):
            m.trader_deposit, m.broker_deposit = new
            m.collateral += trader

    @rule(data=st.data())
    def create_order(self, data: st.DataObject) -> None:
        """An order, one time in two with one fault injected."""
        self.do_create_order(data, faults=True)

    @rule(data=st.data())
    def create_good_order(self, data: st.DataObject) -> None:
        self.do_create_order(data, faults=False)

    def do_create_order(self, data: st.DataObject, faults: bool) -> None:
        m = self.model
        market_id = data.draw(st.sampled_from([1, 2]), "market")
        market = MARKETS[market_id]
        is_buy = data.draw(st.booleans(), "is_buy")
        top = MAX_UNITS[market_id]
        synthetic = data.draw(
            st.one_of(st.integers(1, 10), st.integers(1, top), st.sampled_from([top // 4, top // 2, top])), "S"
        )
        limit = self.marks[market_id] * data.draw(st.integers(80, 120), "limit %") // 100
        limit += data.draw(st.integers(-2, 2), "limit offset")
        collateral = synthetic * max(limit, 0) // market.resolution + data.draw(st.integers(0, 1), "round up")
        max_fee = data.draw(st.integers(0, collateral // 200 + 3), "max fee")
        fault = "none"
        if faults:
            fault = data.draw(
                st.sampled_from(
                    ["none"] * 7 + ["expired", "reused", "signer", "malleated", "domain", "past batch", "no marks"]
                ),
                "fault",
            )
        if fault == "reused" and m.used:
            nonce = data.draw(st.sampled_from(sorted(m.used)), "reused nonce")
        else:
            nonce = self.next_nonce
        expiration = NOW // HOUR + data.draw(st.integers(1, 48), "hours") if fault != "expired" else NOW // HOUR
        first_batch = m.last_batch[market_id] + (0 if fault == "past batch" else data.draw(st.integers(1, 2), "fb"))
        order = make_order(
            self.channel,
            market=market_id,
            is_buy=is_buy,
            amount_synthetic=synthetic,
            amount_collateral=collateral,
            max_fee=max_fee,
            nonce=nonce,
            expiration=expiration,
        )
        signature = sign(self.channel, order)
        if fault == "signer":
            signature = sign(self.channel, order, OUTSIDER)
        elif fault == "malleated":
            signature = malleate(signature)
        elif fault == "domain":
            signature = sign(self.channel, order, domain=Domain(1, addr(0x99)))
        marks = {} if fault == "no marks" else dict(self.marks)

        broken: set[Rule] = set()
        if fault == "expired":
            broken.add(Rule.NOT_EXPIRED)
        if nonce in m.used:
            broken.add(Rule.NONCE_NOT_USED)
        if fault in ("signer", "malleated", "domain"):
            broken.add(Rule.ORDER_SIGNATURE_VALID)
        if first_batch <= m.last_batch[market_id]:
            broken.add(Rule.FIRST_BATCH_IS_CURRENT)
        if len(m.open) >= MAX_OPEN_ORDERS:
            broken.add(Rule.OPEN_ORDER_LIMIT)
        lock = expected_lock(order, 0)
        if lock > m.available():
            broken.add(Rule.AVAILABLE_COVERS_LOCK)
        # leverage if the order filled completely at its own limit, paying its max fee
        own_limit = collateral * market.resolution // synthetic
        signed = 1 if is_buy else -1
        after_positions = dict(m.positions)
        after_positions[market_id] += signed * synthetic
        after_collateral = m.collateral - signed * collateral - max_fee
        broken |= leverage_rules(
            (m.collateral, m.positions), (after_collateral, after_positions), {**marks, market_id: own_limit}
        )

        transition = CreateOrder(
            order, signature, BatchNumber(first_batch), Timestamp(NOW), {k: Price(v) for k, v in marks.items()}
        )
        if self.step("create", transition, broken):
            assert self.events == (OrderLocked(order.nonce, order.market, TokenAmount(lock), BatchNumber(first_batch)),)
            m.open[nonce] = ModelOrder(order, 0, first_batch)
            m.used.add(nonce)
            self.next_nonce += 1

    @precondition(lambda self: bool(self.model.open))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        m = self.model
        if m.open and data.draw(st.integers(0, 3), "pick open") > 0:
            nonce = data.draw(st.sampled_from(sorted(m.open)), "nonce")
        else:
            nonce = data.draw(st.integers(0, self.next_nonce + 1), "any nonce")
        broken = set() if nonce in m.open else {Rule.ORDER_IS_OPEN}
        if self.step("cancel", CancelOrder(Nonce(nonce)), broken):
            released = expected_lock(m.open[nonce].order, m.open[nonce].filled)
            assert self.events == (OrderCancelled(Nonce(nonce), TokenAmount(released)),)
            del m.open[nonce]

    @rule(data=st.data())
    def trade(self, data: st.DataObject) -> None:
        """Anything goes: any market, batch, price, nonces, amounts, fees, marks and time."""
        self.do_trade(data, focused=False)

    def has_eligible_orders(self) -> bool:
        m = self.model
        return not m.final and any(o.first_batch <= m.last_batch[o.order.market] + 1 for o in m.open.values())

    @precondition(has_eligible_orders)
    @rule(data=st.data())
    def trade_open_orders(self, data: st.DataObject) -> None:
        """Fills of eligible open orders in the next batch near their limits: mostly valid."""
        self.do_trade(data, focused=True)

    def do_trade(self, data: st.DataObject, focused: bool) -> None:
        m = self.model
        if focused:
            eligible: list[int] = sorted(
                {int(o.order.market) for o in m.open.values() if o.first_batch <= m.last_batch[o.order.market] + 1}
            )
            if not eligible:
                return
            market_id = data.draw(st.sampled_from(eligible), "market")
            batch = m.last_batch[market_id] + 1
        else:
            market_id = data.draw(st.sampled_from([1, 2]), "market")
            batch = m.last_batch[market_id] + data.draw(st.sampled_from([1, 1, 1, 2, 0]), "batch step")
        market = MARKETS[market_id]
        other = 3 - market_id
        here = [o for o in m.open.values() if o.order.market == market_id and (o.first_batch <= batch or not focused)]
        limits: dict[int, int] = {
            o.order.nonce: o.order.amount_collateral * market.resolution // o.order.amount_synthetic for o in here
        }
        if focused:
            nonces = data.draw(st.lists(st.sampled_from(sorted(limits)), min_size=1, max_size=3, unique=True), "nonces")
            first = m.open[nonces[0]].order
            better = data.draw(st.sampled_from([0, 0, 1, 2, limits[nonces[0]] // 20]), "better by")
            price = limits[nonces[0]] + (-better if first.is_buy else better + 1)
        else:
            near_a_limit: bool = bool(limits) and data.draw(st.booleans(), "near a limit")
            if near_a_limit:
                price = data.draw(st.sampled_from(sorted(limits.values())), "limit")
                price += data.draw(st.sampled_from([0, 0, 1, -1, 2]), "off")
            else:
                price = self.marks[market_id] * data.draw(st.integers(85, 115), "price %") // 100
            candidates = [o.order.nonce for o in here] + [o.order.nonce for o in m.open.values()][:2] + [10**6]
            nonces = data.draw(st.lists(st.sampled_from(candidates), min_size=0, max_size=4), "nonces")
        price = max(price, 1)
        fills: list[tuple[int, int, int]] = []
        for nonce in nonces:
            o = m.open.get(nonce)
            if o is None:
                fills.append((nonce, 1, 0))
                continue
            remaining = o.order.amount_synthetic - o.filled
            amounts = st.one_of(st.integers(1, remaining), st.just(remaining))
            if not focused:
                amounts = st.one_of(amounts, st.sampled_from([0, remaining + 1]))
            amount = data.draw(amounts, "amount")
            paid = fill_payment(o.order, o.filled, max(amount, 0), price, market.resolution)
            allowed: int = o.order.max_fee
            if o.order.amount_collateral > 0:
                allowed = min(allowed, o.order.max_fee * paid // o.order.amount_collateral)
            pick = data.draw(st.integers(0, 9), "fee choice")
            if pick == 9 or (pick == 8 and not focused):
                fee = allowed + 1  # one base unit over the ratio or the max fee
            elif pick in (0, 8):
                fee = allowed
            else:
                fee = data.draw(st.integers(0, allowed), "fee")
            fills.append((nonce, amount, fee))
        marks: dict[int, int] = {}
        if focused or data.draw(st.integers(0, 9), "drop the other mark") > 0:
            marks[other] = self.marks[other] * data.draw(st.integers(90, 110), "other %") // 100
        now: int = NOW
        if not focused and data.draw(st.booleans(), "later"):
            now += data.draw(st.integers(0, 48 * HOUR), "seconds later")

        broken, after = self.model_trade(market_id, batch, price, fills, marks, now)
        if self.step(
            "fill" if focused else "trade", make_trade(market_id, batch, price, fills, now=now, marks=marks), broken
        ):
            expected_events = []
            for nonce, amount, fee in fills:
                o = m.open[nonce]
                paid = fill_payment(o.order, o.filled, amount, price, market.resolution)
                o.filled += amount
                complete = o.filled == o.order.amount_synthetic
                expected_events.append((nonce, market_id, batch, o.order.is_buy, amount, paid, fee, complete))
                if complete:
                    del m.open[nonce]
            got = [
                (e.nonce, e.market, e.batch, e.is_buy, e.amount_synthetic, e.amount_collateral, e.fee, e.complete)
                for e in self.events
                if isinstance(e, OrderFilled)
            ]
            assert got == expected_events, (got, expected_events)
            m.collateral, m.positions, m.fees = after
            m.last_batch[market_id] = batch
            self.marks[market_id] = price
            self.marks.update(marks)

    def model_trade(
        self,
        market_id: int,
        batch: int,
        price: int,
        fills: list[tuple[int, int, int]],
        marks: dict[int, int],
        now: int,
    ) -> tuple[set[Rule], tuple[int, dict[int, int], dict[int, int]]]:
        """Every rule the trade breaks, and (collateral, positions, fees) after it."""
        m = self.model
        market = MARKETS[market_id]
        broken: set[Rule] = set()
        if batch <= m.last_batch[market_id]:
            broken.add(Rule.BATCH_AFTER_LAST)
        if not fills:
            broken.add(Rule.STATE_MATCHES_TRANSITION)
        collateral = m.collateral
        positions, fees = dict(m.positions), dict(m.fees)
        filled = {n: o.filled for n, o in m.open.items()}
        seen: set[int] = set()
        for nonce, amount, fee in fills:
            if nonce in seen:
                broken.add(Rule.FILL_WITHIN_ORDER)
                continue
            seen.add(nonce)
            o = m.open.get(nonce)
            if o is None:
                broken.add(Rule.ORDER_IS_OPEN)
                continue
            order = o.order
            if order.market != market_id:
                broken.add(Rule.MARKET_IN_CHANNEL)
            if o.first_batch > batch:
                broken.add(Rule.ELIGIBLE_IN_BATCH)
            if now >= order.expiration * HOUR:
                broken.add(Rule.NOT_EXPIRED)
            if amount <= 0:
                broken.add(Rule.AMOUNTS_NON_NEGATIVE_AND_BOUNDED)
                continue
            if o.filled + amount > order.amount_synthetic:
                broken.add(Rule.FILL_WITHIN_ORDER)
            S, C = order.amount_synthetic, order.amount_collateral
            # the batch price within the limit on the grid, then StarkEx's ratio after rounding
            if (price * S > C * market.resolution) if order.is_buy else (price * S < C * market.resolution):
                broken.add(Rule.PRICE_AT_LEAST_SIGNED_RATIO)
            paid = fill_payment(order, o.filled, amount, price, market.resolution)
            if order.is_buy and not (paid - 1) * S < C * amount:
                broken.add(Rule.PRICE_AT_LEAST_SIGNED_RATIO)
            if not order.is_buy and not amount * C < S * (paid + 1):
                broken.add(Rule.PRICE_AT_LEAST_SIGNED_RATIO)
            if fee > order.max_fee:
                broken.add(Rule.FEE_AT_MOST_MAX_FEE)
            if fee * C > order.max_fee * paid:
                broken.add(Rule.FEE_RATIO_WITHIN_SIGNED)
            lock = expected_lock(order, o.filled)
            if order.is_buy and paid + fee > lock:
                broken.add(Rule.LOCKED_COVERS_FILL)
            if not order.is_buy and fee > lock + paid:
                broken.add(Rule.LOCKED_COVERS_FILL)
            collateral += -paid - fee if order.is_buy else paid - fee
            positions[market_id] += amount if order.is_buy else -amount
            fees[market_id] += fee
            filled[nonce] += amount
        if broken:
            return broken, (collateral, positions, fees)
        broken |= leverage_rules((m.collateral, m.positions), (collateral, positions), {**marks, market_id: price})
        locked = sum(
            expected_lock(o.order, filled[n]) for n, o in m.open.items() if filled[n] < o.order.amount_synthetic
        )
        if collateral - locked < 0:
            broken.add(Rule.AVAILABLE_COVERS_LOCK)
        if m.trader_deposit + m.broker_deposit - collateral < 0:
            broken.add(Rule.BROKER_COVERS_FILL)
        return broken, (collateral, positions, fees)

    @precondition(lambda self: self.model.version >= 8)
    @rule(data=st.data())
    def finalize(self, data: st.DataObject) -> None:
        if data.draw(st.integers(0, 3), "finalize now") > 0:
            return
        m = self.model
        prices: dict[int, int] = {}
        for market_id in (1, 2):
            choice = data.draw(st.integers(0, 9), f"price of {market_id}")
            if choice == 0:
                continue
            prices[market_id] = 0 if choice == 1 else self.marks[market_id] * data.draw(st.integers(50, 150)) // 100
        broken: set[Rule] = set()
        collateral = m.collateral
        for market_id, position in m.positions.items():
            if position == 0:
                continue
            if prices.get(market_id, 0) <= 0:
                broken.add(Rule.MARK_PRICE_KNOWN)
            else:
                collateral += position * prices[market_id] // MARKETS[market_id].resolution
        # the trader may end below zero (test_finalize_of_an_underwater_trader), the broker too
        accepted = self.step("finalize", Finalize({k: Price(v) for k, v in prices.items()}), broken)
        if accepted:
            m.collateral = collateral
            m.positions = {1: 0, 2: 0}
            m.open = {}
            m.final = True

    # ----------------------------------------------------------------- invariants

    @invariant()
    def state_matches_the_model(self) -> None:
        channel, m = self.channel, self.model
        state, b = channel.state, channel.state.balances
        assert_invariants(channel)
        assert state.version == m.version
        assert state.is_final == m.final
        assert (b.trader_deposit, b.broker_deposit) == (m.trader_deposit, m.broker_deposit)
        # conservation: the trader's collateral and the broker's add up to the deposits
        assert b.trader_available + b.trader_locked == m.collateral
        assert b.broker_available + b.broker_locked == m.trader_deposit + m.broker_deposit - m.collateral
        assert b.trader_locked == m.locked() == sum(lock_needed(o.order, o.filled) for o in state.open_orders)
        # positions: the trader's are the signed sum of its fills; the broker holds the opposite
        assert channel.positions == (m.positions[1], m.positions[2])
        fees = tuple(o.fees for o in state.outcomes)
        assert fees == (m.fees[1], m.fees[2])
        assert all(new >= old for new, old in zip(fees, self.previous_fees, strict=True))
        self.previous_fees = (fees[0], fees[1])
        assert tuple(o.last_batch for o in state.outcomes) == (m.last_batch[1], m.last_batch[2])
        assert [(o.order, o.filled, o.first_batch) for o in state.open_orders] == [
            (o.order, o.filled, o.first_batch) for o in m.open.values()
        ]
        assert channel.used_nonces == m.used


def test_random_transitions_keep_the_invariants() -> None:
    STATS.clear()
    run_state_machine_as_test(
        ChannelMachine,
        settings=settings(
            max_examples=200,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    # the run reached both sides of every kind of transition
    for kind in ("deposit", "create", "cancel", "fill", "finalize"):
        assert STATS[f"{kind} accepted"] > 0, STATS
    for kind in ("deposit", "create", "cancel", "trade"):
        assert any(k.startswith(kind) and not k.endswith("accepted") for k in STATS), STATS
    assert STATS["fill accepted"] + STATS["trade accepted"] >= 50, STATS


# --------------------------------------------------------------------------- one auction, many channels


TRADERS = [LocalSigner(keccak(text=f"engine properties: trader {i}")) for i in range(4)]


def order_specs() -> st.SearchStrategy[list[tuple[bool, int, int, int]]]:
    """(is_buy, amount_synthetic, limit %, fee per mille) for the orders of one channel in one
    batch."""
    spec = st.tuples(
        st.booleans(),
        st.one_of(st.integers(1, 100), st.integers(1, 2 * 10**6)),
        st.integers(90, 110),
        st.integers(0, 10),
    )
    return st.lists(spec, max_size=3)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(st.lists(order_specs(), min_size=4, max_size=4), min_size=1, max_size=3),
    channels=st.integers(2, 4),
    previous=st.integers(1_900, 2_100),
)
def test_one_auction_fills_many_channels(batches: list[list[list[Any]]], channels: int, previous: int) -> None:
    """Each batch: every channel may add orders eligible from it, one clearing over all the
    channels' open orders of gold, and each channel applies its fills as one Trade at the
    clearing price with a fee of max_fee * collateral / amount_collateral. Every Trade is
    accepted, the orders strictly better than the price fill completely, and the buys and sells
    of the batch cancel out, so the broker's position over all channels stays zero."""
    resolution = GOLD.resolution
    chans: list[Channel] = [
        funded(10_000 * USD, 100_000 * USD, params=make_params(trader=TRADERS[i], nonce=100 + i))
        for i in range(channels)
    ]
    next_nonce = [1] * channels
    sequence: dict[tuple[bytes, int], int] = {}
    price = previous * USD
    for batch_number, per_channel in enumerate(batches, start=1):
        for i, specs in enumerate(per_channel[:channels]):
            for is_buy, synthetic, percent, per_mille in specs:
                limit = price * percent // 100
                order = make_order(
                    chans[i],
                    is_buy=is_buy,
                    amount_synthetic=synthetic,
                    amount_collateral=synthetic * limit // resolution,
                    max_fee=synthetic * limit // resolution * per_mille // 1000,
                    nonce=next_nonce[i],
                )
                if expected_lock(order, 0) > chans[i].state.balances.trader_available:
                    continue
                transition = CreateOrder(
                    order,
                    Signature(TRADERS[i].sign_digest(chans[i].domain.order_digest(order))),
                    BatchNumber(batch_number),
                    Timestamp(NOW),
                    {1: Price(price)},
                )
                try:
                    chans[i] = apply(chans[i], transition).channel
                except RuleViolation as exc:
                    assert exc.rule is Rule.WELL_LEVERAGED
                    continue
                sequence[(bytes(chans[i].params.channel_id), order.nonce)] = len(sequence)
                next_nonce[i] += 1

        book = [
            BookOrder(
                key=(bytes(c.params.channel_id), o.order.nonce),
                is_buy=o.order.is_buy,
                amount_synthetic=o.order.amount_synthetic,
                amount_collateral=o.order.amount_collateral,
                remaining=o.order.amount_synthetic - o.filled,
                sequence=sequence[(bytes(c.params.channel_id), o.order.nonce)],
            )
            for c in chans
            for o in c.state.open_orders
        ]
        if not book:
            continue
        clearing = clear(book, resolution, price)
        price = clearing.price
        positions_before = sum(c.positions[0] for c in chans)
        for i, c in enumerate(chans):
            fills = []
            for o in c.state.open_orders:
                amount = clearing.fills.get((bytes(c.params.channel_id), o.order.nonce), 0)
                if amount == 0:
                    continue
                paid = fill_payment(o.order, o.filled, amount, price, resolution)
                c_signed = o.order.amount_collateral
                fee = min(o.order.max_fee, o.order.max_fee * paid // c_signed) if c_signed else 0
                fills.append((o.order.nonce, amount, fee))
            if not fills:
                continue
            result = apply(c, make_trade(1, batch_number, price, fills, marks={}))
            assert_invariants(result.channel)
            got = {e.nonce: e.amount_synthetic for e in result.events if isinstance(e, OrderFilled)}
            assert got == {n: a for n, a, _ in fills}
            chans[i] = result.channel
        # the broker holds the opposite of every trader: over the batch it is flat
        assert sum(c.positions[0] for c in chans) == positions_before
        # orders strictly better than the clearing price are gone
        for c in chans:
            for o in c.state.open_orders:
                limit_num = o.order.amount_collateral * resolution
                if o.order.is_buy:
                    assert not (price + 1) * o.order.amount_synthetic <= limit_num
                else:
                    assert not (price >= 2 and (price - 1) * o.order.amount_synthetic >= limit_num)
    assert sum(c.positions[0] for c in chans) == 0
    assert all(c.positions[1] == 0 for c in chans)
