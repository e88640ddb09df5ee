"""The channel state machine: pure transition functions, no I/O.

A :class:`Channel` is the parameters, the latest state both parties agreed on, and the order
nonces the channel has used. :func:`apply` takes a channel and one transition and returns the
next channel plus the events the transition produced, or raises
:class:`~offchain.engine.rules.RuleViolation` naming the rule it broke; the input channel is
never modified (everything is frozen).

Transitions (seed 000's flows): :class:`AccountDeposits` (deposits seen on-chain enter the
balances), :class:`CreateOrder` (lock collateral for a signed limit order), :class:`CancelOrder`
(unlock it), :class:`Trade` (the fills of one batch of one market, at the broker's signed
price, with fees), :class:`Finalize` (close every position at a price both sign and mark the
state final). Every transition increments the version by exactly one.

Who may propose what, and how the proposals travel, is the protocol's business
(:mod:`offchain.protocol`); this module only says what the next state is.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass

from offchain.eip712 import Domain
from offchain.engine.rules import (
    Rule,
    RuleViolation,
    accepts_price,
    check_balance_bounds,
    check_fee,
    check_fill_amount,
    check_fill_price,
    check_leverage,
    check_not_expired,
    check_order_belongs,
    check_order_fields,
    fill_collateral,
    lock_needed,
    position_value,
    total_lock,
)
from offchain.errors import SignatureError, ValidationError
from offchain.model import (
    MAX_AMOUNT,
    MAX_BALANCE,
    MAX_OPEN_ORDERS,
    MAX_VERSION,
    Balances,
    BatchPrice,
    ChannelParams,
    ChannelState,
    OpenOrder,
    Order,
    Outcome,
    check_state,
    initial_state,
)
from offchain.signing import verify
from offchain.types import (
    Address,
    BatchNumber,
    MarketId,
    Nonce,
    Price,
    Signature,
    SyntheticAmount,
    Timestamp,
    TokenAmount,
    Version,
)

# --------------------------------------------------------------------------- the machine's state


@dataclass(frozen=True, slots=True)
class Channel:
    """What one party knows of a channel: parameters, latest agreed state, used order nonces."""

    params: ChannelParams
    state: ChannelState
    used_nonces: frozenset[int] = frozenset()

    @property
    def domain(self) -> Domain:
        return _domain(self.params.chain_id, self.params.adjudicator)

    def open_order(self, nonce: int) -> OpenOrder | None:
        for open_order in self.state.open_orders:
            if open_order.order.nonce == nonce:
                return open_order
        return None

    @property
    def trader_collateral(self) -> int:
        return self.state.balances.trader_available + self.state.balances.trader_locked

    @property
    def positions(self) -> tuple[int, ...]:
        return tuple(o.position for o in self.state.outcomes)


@functools.lru_cache(maxsize=1024)
def _domain(chain_id: int, adjudicator: Address) -> Domain:
    """One (frozen) Domain object per adjudicator: it carries its separator ready to hash."""
    return Domain(chain_id, adjudicator)


def setup(params: ChannelParams) -> Channel:
    """The version-0 state: nothing deposited, nothing open (co-signed before anyone deposits)."""
    return Channel(params=params, state=initial_state(params, 0, 0))


# --------------------------------------------------------------------------- transitions


@dataclass(frozen=True, slots=True)
class AccountDeposits:
    """The on-chain deposits of both parties, as the adjudicator shows them, enter the state."""

    trader_deposit: TokenAmount
    broker_deposit: TokenAmount


@dataclass(frozen=True, slots=True)
class CreateOrder:
    """Lock collateral for a signed order, eligible from batch ``first_batch`` of its market.
    ``marks`` are the latest batch prices of the channel's markets (for the leverage check)."""

    order: Order
    signature: Signature
    first_batch: BatchNumber
    now: Timestamp
    marks: Mapping[int, Price]


@dataclass(frozen=True, slots=True)
class CancelOrder:
    """Remove an open order and release its lock; its nonce stays used."""

    nonce: Nonce


@dataclass(frozen=True, slots=True)
class Fill:
    """One order's share of a batch: synthetic amount filled and the fee charged."""

    nonce: Nonce
    amount_synthetic: SyntheticAmount
    fee: TokenAmount


@dataclass(frozen=True, slots=True)
class Trade:
    """The fills of one batch of one market at the broker's signed price."""

    batch_price: BatchPrice
    fills: tuple[Fill, ...]
    now: Timestamp
    marks: Mapping[int, Price]


@dataclass(frozen=True, slots=True)
class Finalize:
    """Cancel every open order, close every position at the given price (one per market with a
    position), and mark the state final: the state a cooperative close pays out."""

    prices: Mapping[int, Price]


Transition = AccountDeposits | CreateOrder | CancelOrder | Trade | Finalize


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class DepositsAccounted:
    trader_deposit: TokenAmount
    broker_deposit: TokenAmount


@dataclass(frozen=True, slots=True)
class OrderLocked:
    nonce: Nonce
    market: MarketId
    locked: TokenAmount
    first_batch: BatchNumber


@dataclass(frozen=True, slots=True)
class OrderCancelled:
    nonce: Nonce
    released: TokenAmount


@dataclass(frozen=True, slots=True)
class OrderFilled:
    nonce: Nonce
    market: MarketId
    batch: BatchNumber
    is_buy: bool
    amount_synthetic: SyntheticAmount
    amount_collateral: TokenAmount
    fee: TokenAmount
    complete: bool


@dataclass(frozen=True, slots=True)
class PositionClosed:
    market: MarketId
    position: SyntheticAmount
    price: Price
    value: TokenAmount


@dataclass(frozen=True, slots=True)
class ChannelFinalized:
    version: Version


Event = DepositsAccounted | OrderLocked | OrderCancelled | OrderFilled | PositionClosed | ChannelFinalized


@dataclass(frozen=True, slots=True)
class Transitioned:
    channel: Channel
    events: tuple[Event, ...]

    @property
    def state(self) -> ChannelState:
        return self.channel.state


# --------------------------------------------------------------------------- apply


def apply(channel: Channel, transition: Transition) -> Transitioned:
    """The next channel after ``transition``, or RuleViolation. ``channel`` is not modified."""
    if channel.state.is_final:
        raise RuleViolation(Rule.CHANNEL_NOT_FINAL, "the channel is final; nothing follows a final state")
    if channel.state.version >= MAX_VERSION:
        raise RuleViolation(Rule.VERSION_INCREMENTS, "the version cannot grow any further")
    if isinstance(transition, AccountDeposits):
        return _account_deposits(channel, transition)
    if isinstance(transition, CreateOrder):
        return _create_order(channel, transition)
    if isinstance(transition, CancelOrder):
        return _cancel_order(channel, transition)
    if isinstance(transition, Trade):
        return _trade(channel, transition)
    if isinstance(transition, Finalize):
        return _finalize(channel, transition)
    raise TypeError(f"not a transition: {transition!r}")


def _next(
    channel: Channel,
    *,
    trader_collateral: int,
    open_orders: tuple[OpenOrder, ...],
    outcomes: tuple[Outcome, ...] | None = None,
    deposits: tuple[int, int] | None = None,
    is_final: bool = False,
    used_nonces: frozenset[int] | None = None,
) -> Channel:
    """The successor state with balances recomputed from the trader's total collateral and the
    open orders' locks; the broker's available balance is whatever the deposits leave."""
    old = channel.state.balances
    trader_deposit, broker_deposit = deposits if deposits is not None else (old.trader_deposit, old.broker_deposit)
    locked = total_lock(open_orders)
    available = trader_collateral - locked
    if available < 0 and not is_final:  # a final state may leave the trader under water
        raise RuleViolation(Rule.AVAILABLE_COVERS_LOCK, f"available {available} after locking {locked}")
    broker_available = trader_deposit + broker_deposit - trader_collateral - old.broker_locked
    if broker_available < 0 and not is_final:
        raise RuleViolation(Rule.BROKER_COVERS_FILL, f"the broker's available balance would be {broker_available}")
    if not (
        -MAX_BALANCE <= available <= MAX_BALANCE
        and -MAX_BALANCE <= locked <= MAX_BALANCE
        and -MAX_BALANCE <= broker_available <= MAX_BALANCE
    ):
        for name, value in (
            ("trader_available", available),
            ("trader_locked", locked),
            ("broker_available", broker_available),
        ):
            check_balance_bounds(name, value)  # raises for the first one out of bounds
    new_outcomes = outcomes if outcomes is not None else channel.state.outcomes
    for i, outcome in enumerate(new_outcomes):
        if not (-MAX_BALANCE <= outcome.position <= MAX_BALANCE and -MAX_BALANCE <= outcome.fees <= MAX_BALANCE):
            check_balance_bounds(f"outcomes[{i}].position", outcome.position)  # raises (the name is built
            check_balance_bounds(f"outcomes[{i}].fees", outcome.fees)  # only for the message)
    state = ChannelState(
        channel_id=channel.state.channel_id,
        version=Version(channel.state.version + 1),
        balances=Balances(
            trader_available=TokenAmount(available),
            trader_locked=TokenAmount(locked),
            broker_available=TokenAmount(broker_available),
            broker_locked=old.broker_locked,
            trader_deposit=TokenAmount(trader_deposit),
            broker_deposit=TokenAmount(broker_deposit),
        ),
        open_orders=open_orders,
        outcomes=new_outcomes,
        is_final=is_final,
    )
    return Channel(  # dataclasses.replace(channel, ...), without its introspection
        channel.params,
        check_state(state, channel.params),
        used_nonces if used_nonces is not None else channel.used_nonces,
    )


def _account_deposits(channel: Channel, t: AccountDeposits) -> Transitioned:
    old = channel.state.balances
    for name, new, before in (
        ("trader", t.trader_deposit, old.trader_deposit),
        ("broker", t.broker_deposit, old.broker_deposit),
    ):
        check_balance_bounds(f"{name}_deposit", new)
        if new < before:
            raise RuleViolation(Rule.DEPOSITS_ONLY_GROW, f"the {name}'s deposit would fall from {before} to {new}")
    if (t.trader_deposit, t.broker_deposit) == (old.trader_deposit, old.broker_deposit):
        raise RuleViolation(Rule.DEPOSITS_ONLY_GROW, "no new deposit to account for")
    collateral = channel.trader_collateral + t.trader_deposit - old.trader_deposit
    nxt = _next(
        channel,
        trader_collateral=collateral,
        open_orders=channel.state.open_orders,
        deposits=(t.trader_deposit, t.broker_deposit),
    )
    return Transitioned(nxt, (DepositsAccounted(t.trader_deposit, t.broker_deposit),))


def _create_order(channel: Channel, t: CreateOrder) -> Transitioned:
    order = t.order
    check_order_fields(order)
    market = check_order_belongs(order, channel.params)
    check_not_expired(order, t.now)
    if order.nonce in channel.used_nonces or channel.open_order(order.nonce) is not None:
        raise RuleViolation(Rule.NONCE_NOT_USED, f"order nonce {order.nonce} was used before")
    try:
        verify(channel.domain.order_digest(order), t.signature, channel.params.trader)
    except SignatureError as exc:
        raise RuleViolation(Rule.ORDER_SIGNATURE_VALID, exc.reason) from exc
    index = channel.params.market_index(order.market)
    last_batch = channel.state.outcomes[index].last_batch
    if not 0 <= t.first_batch <= MAX_AMOUNT:
        raise RuleViolation(Rule.AMOUNTS_NON_NEGATIVE_AND_BOUNDED, "a batch number is below 2^64")
    if t.first_batch <= last_batch:
        raise RuleViolation(
            Rule.FIRST_BATCH_IS_CURRENT, f"first batch {t.first_batch} is not after the last batch {last_batch}"
        )
    if len(channel.state.open_orders) >= MAX_OPEN_ORDERS:
        raise RuleViolation(Rule.OPEN_ORDER_LIMIT, f"already {MAX_OPEN_ORDERS} open orders")
    locked = lock_needed(order, 0)
    if locked > channel.state.balances.trader_available:
        raise RuleViolation(
            Rule.AVAILABLE_COVERS_LOCK,
            f"order needs {locked} locked, {channel.state.balances.trader_available} available",
        )
    # Leverage if the order filled completely at its own limit.
    limit = order.amount_collateral * market.resolution // order.amount_synthetic
    signed = 1 if order.is_buy else -1
    after_positions = list(channel.positions)
    after_positions[index] += signed * order.amount_synthetic
    after_collateral = channel.trader_collateral - signed * order.amount_collateral - order.max_fee
    marks = {**t.marks, order.market: Price(limit)}
    check_leverage(
        channel.params, (channel.trader_collateral, channel.positions), (after_collateral, after_positions), marks
    )

    open_order = OpenOrder(order=order, signature=t.signature, filled=SyntheticAmount(0), first_batch=t.first_batch)
    nxt = _next(
        channel,
        trader_collateral=channel.trader_collateral,
        open_orders=(*channel.state.open_orders, open_order),
        used_nonces=channel.used_nonces | {order.nonce},
    )
    return Transitioned(nxt, (OrderLocked(order.nonce, order.market, locked, t.first_batch),))


def _cancel_order(channel: Channel, t: CancelOrder) -> Transitioned:
    open_order = channel.open_order(t.nonce)
    if open_order is None:
        raise RuleViolation(Rule.ORDER_IS_OPEN, f"no open order with nonce {t.nonce}")
    remaining = tuple(o for o in channel.state.open_orders if o.order.nonce != t.nonce)
    nxt = _next(channel, trader_collateral=channel.trader_collateral, open_orders=remaining)
    released = lock_needed(open_order.order, open_order.filled)
    return Transitioned(nxt, (OrderCancelled(t.nonce, released),))


def _trade(channel: Channel, t: Trade) -> Transitioned:
    price = t.batch_price
    try:
        index = channel.params.market_index(price.market)
    except ValidationError as exc:
        raise RuleViolation(Rule.MARKET_IN_CHANNEL, f"market {price.market} does not belong to this channel") from exc
    market = channel.params.markets[index]
    outcome = channel.state.outcomes[index]
    if price.batch <= outcome.last_batch:
        raise RuleViolation(
            Rule.BATCH_AFTER_LAST, f"batch {price.batch} is not after the last batch {outcome.last_batch}"
        )
    if not t.fills:
        raise RuleViolation(Rule.STATE_MATCHES_TRANSITION, "a trade needs at least one fill")
    if not 0 < price.price <= MAX_AMOUNT or not 0 <= price.batch <= MAX_AMOUNT:
        raise RuleViolation(Rule.AMOUNTS_NON_NEGATIVE_AND_BOUNDED, "a batch price and number are in (0, 2^64)")

    by_nonce = {o.order.nonce: o for o in channel.state.open_orders}
    collateral = channel.trader_collateral
    position: int = outcome.position
    fees: int = outcome.fees
    events: list[Event] = []
    seen: set[int] = set()
    for fill in t.fills:
        if fill.nonce in seen:
            raise RuleViolation(Rule.FILL_WITHIN_ORDER, f"order {fill.nonce} appears twice in one trade")
        seen.add(fill.nonce)
        open_order = by_nonce.get(fill.nonce)
        if open_order is None:
            raise RuleViolation(Rule.ORDER_IS_OPEN, f"no open order with nonce {fill.nonce}")
        order = open_order.order
        if order.market != price.market:
            raise RuleViolation(Rule.MARKET_IN_CHANNEL, f"order {order.nonce} is for market {order.market}")
        if open_order.first_batch > price.batch:
            raise RuleViolation(
                Rule.ELIGIBLE_IN_BATCH, f"order {order.nonce} is eligible from batch {open_order.first_batch}"
            )
        check_not_expired(order, t.now)
        check_fill_amount(open_order, fill.amount_synthetic)
        if not accepts_price(order, price.price, market.resolution):
            raise RuleViolation(
                Rule.PRICE_AT_LEAST_SIGNED_RATIO, f"batch price {price.price} is beyond order {order.nonce}'s limit"
            )
        actual_collateral = fill_collateral(
            order, open_order.filled, fill.amount_synthetic, price.price, market.resolution
        )
        check_fill_price(order, fill.amount_synthetic, actual_collateral)
        check_fee(order, fill.fee, actual_collateral)
        lock = lock_needed(order, open_order.filled)
        if order.is_buy:
            if actual_collateral + fill.fee > lock:
                raise RuleViolation(
                    Rule.LOCKED_COVERS_FILL, f"order {order.nonce} pays {actual_collateral + fill.fee}, {lock} locked"
                )
            collateral -= actual_collateral + fill.fee
            position += fill.amount_synthetic
        else:
            if fill.fee > lock + actual_collateral:
                raise RuleViolation(
                    Rule.LOCKED_COVERS_FILL, f"order {order.nonce} fee {fill.fee} exceeds {lock} locked"
                )
            collateral += actual_collateral - fill.fee
            position -= fill.amount_synthetic
        fees += fill.fee
        filled = SyntheticAmount(open_order.filled + fill.amount_synthetic)
        complete = filled == order.amount_synthetic
        by_nonce[order.nonce] = dataclasses.replace(open_order, filled=filled)
        events.append(
            OrderFilled(
                order.nonce,
                order.market,
                price.batch,
                order.is_buy,
                fill.amount_synthetic,
                actual_collateral,
                fill.fee,
                complete,
            )
        )
    open_orders = tuple(
        by_nonce[o.order.nonce]
        for o in channel.state.open_orders
        if by_nonce[o.order.nonce].filled < o.order.amount_synthetic
    )
    outcomes = list(channel.state.outcomes)
    outcomes[index] = Outcome(position=SyntheticAmount(position), fees=TokenAmount(fees), last_batch=price.batch)
    positions = tuple(o.position for o in outcomes)
    marks = {**t.marks, price.market: price.price}
    check_leverage(channel.params, (channel.trader_collateral, channel.positions), (collateral, positions), marks)
    nxt = _next(channel, trader_collateral=collateral, open_orders=open_orders, outcomes=tuple(outcomes))
    return Transitioned(nxt, tuple(events))


def _finalize(channel: Channel, t: Finalize) -> Transitioned:
    collateral = channel.trader_collateral
    events: list[Event] = [
        OrderCancelled(o.order.nonce, lock_needed(o.order, o.filled)) for o in channel.state.open_orders
    ]
    outcomes = []
    for market, outcome in zip(channel.params.markets, channel.state.outcomes, strict=True):
        if outcome.position != 0:
            price = t.prices.get(market.id)
            if price is None or price <= 0:
                raise RuleViolation(Rule.MARK_PRICE_KNOWN, f"no closing price for market {market.id}")
            value = position_value(outcome.position, price, market.resolution)
            collateral += value
            events.append(PositionClosed(market.id, outcome.position, price, TokenAmount(value)))
        outcomes.append(dataclasses.replace(outcome, position=SyntheticAmount(0)))
    check_balance_bounds("trader collateral", collateral)
    nxt = _next(channel, trader_collateral=collateral, open_orders=(), outcomes=tuple(outcomes), is_final=True)
    events.append(ChannelFinalized(nxt.state.version))
    return Transitioned(nxt, tuple(events))


def expect(channel: Channel, transition: Transition, proposed: ChannelState) -> Transitioned:
    """Check a counterparty's proposal: the proposed state must be exactly what ``transition``
    gives from ``channel`` (rule ``state_matches_transition``)."""
    result = apply(channel, transition)
    if result.state != proposed:
        raise RuleViolation(
            Rule.STATE_MATCHES_TRANSITION,
            f"proposed version {proposed.version} differs from what the transition gives",
        )
    return result
