"""How a dispute concludes, as pure functions: the payout rule (MISSION.md, "The channel
on-chain", item 7), batch-price evidence and slashing ("Batches", "Slashing").

Everything here mirrors the adjudicator exactly: :func:`record_evidence` is ``submitEvidence``
for one verified price, :func:`evidence_fill` is ``_evidenceFill``, :func:`payouts` is
``_payoutWithPositions`` with ``_fillFromEvidence`` and the slashing override of ``_finish``. The
property tests run both on the same random states, prices and evidence and require equal results.

Rounding, documented in one place: a position is valued at
``position * answer * 10^token_decimals / (resolution * 10^feed_decimals)`` rounded toward
negative infinity, i.e. against the trader, whose claim on the channel is being valued. A fill
from evidence rounds as the engine's fills do (:func:`offchain.engine.rules.fill_collateral`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from offchain.engine.rules import ceil_div, crosses
from offchain.model import MAX_BALANCE, BatchPrice, ChannelParams, ChannelState, Market, OpenOrder

SECONDS_PER_HOUR = 3600


@dataclass(frozen=True, slots=True)
class OraclePrice:
    """A feed's answer and its decimals (collateral currency per whole synthetic unit)."""

    answer: int
    decimals: int


@dataclass(frozen=True, slots=True)
class Payouts:
    to_trader: int
    to_broker: int
    underfunded: bool = False

    @property
    def total(self) -> int:
        return self.to_trader + self.to_broker


def position_value(market: Market, position: int, price: OraclePrice, token_decimals: int) -> int:
    """Collateral base units that ``position`` synthetic base units are worth, floored."""
    numerator: int = position * price.answer * 10**token_decimals
    denominator: int = market.resolution * 10**price.decimals
    return numerator // denominator  # Python's // floors toward negative infinity


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the adjudicator holds for one open order of the registered state: the earliest batch
    known to cross it and that batch's signed price (``evidenceOf``)."""

    batch: int
    price: int


@dataclass(frozen=True, slots=True)
class EvidenceFill:
    """An open order's whole remainder filled at its evidence's price at conclusion."""

    amount: int
    """Synthetic base units: the order's remainder."""
    collateral: int
    """Collateral the trader pays (buy) or receives (sell)."""
    fee: int
    """The most the order allows: the fee lock the fill releases, within the signed fee ratio."""


def evidence_crosses(params: ChannelParams, state: ChannelState, index: int, price: BatchPrice) -> bool:
    """Whether ``price`` crosses open order ``index`` of ``state`` as evidence: same market, the
    order eligible in the batch, the batch after the last one the state reflects in that market,
    the order not completely filled, and its limit strictly better than the price."""
    open_order = state.open_orders[index]
    order = open_order.order
    if order.market != price.market or open_order.first_batch > price.batch:
        return False
    if open_order.filled >= order.amount_synthetic:
        return False
    m = params.market_index(price.market)
    if price.batch <= state.outcomes[m].last_batch:
        return False
    return crosses(order, price.price, params.markets[m].resolution)


def record_evidence(
    evidence: Mapping[int, Evidence], params: ChannelParams, state: ChannelState, price: BatchPrice, now: int
) -> dict[int, Evidence]:
    """The evidence after ``submitEvidence`` accepts ``price`` (signature already checked) at
    block time ``now``: every order it crosses records it if it is the earliest crossing batch
    known; a first crossing counts only while the order has not expired."""
    params.market_index(price.market)  # ValidationError, as the contract's UnknownMarket
    out = dict(evidence)
    for i, open_order in enumerate(state.open_orders):
        if not evidence_crosses(params, state, i, price):
            continue
        known = out.get(i)
        if known is None:
            if now >= open_order.order.expiration * SECONDS_PER_HOUR:
                continue
        elif known.batch <= price.batch:
            continue
        out[i] = Evidence(price.batch, price.price)
    return out


def evidence_fill(open_order: OpenOrder, price: int, resolution: int) -> EvidenceFill:
    """The fill of ``open_order``'s remainder at ``price`` (``_evidenceFill``)."""
    order = open_order.order
    amount = order.amount_synthetic - open_order.filled
    if order.is_buy:
        collateral = min(
            ceil_div(amount * price, resolution), ceil_div(order.amount_collateral * amount, order.amount_synthetic)
        )
    else:
        collateral = amount * price // resolution
    fee = ceil_div(order.max_fee * amount, order.amount_synthetic)
    if order.amount_collateral:
        fee = min(fee, order.max_fee * collateral // order.amount_collateral)
    return EvidenceFill(amount, collateral, fee)


def fills_from_evidence(
    params: ChannelParams, state: ChannelState, evidence: Mapping[int, Evidence]
) -> tuple[dict[int, EvidenceFill], list[int], int]:
    """The fills conclusion applies (``_fillFromEvidence``): per open order index its fill, the
    positions after them (per market, in the channel's order) and the change in the trader's
    collateral. Orders go in the order the state lists them; a fill that would take a position
    out of (-2^63, 2^63) is not applied."""
    positions: list[int] = [o.position for o in state.outcomes]
    change = 0
    fills: dict[int, EvidenceFill] = {}
    for i, open_order in enumerate(state.open_orders):
        known = evidence.get(i)
        if known is None:
            continue
        m = params.market_index(open_order.order.market)
        fill = evidence_fill(open_order, known.price, params.markets[m].resolution)
        position = positions[m] + (fill.amount if open_order.order.is_buy else -fill.amount)
        if not -MAX_BALANCE <= position <= MAX_BALANCE:
            continue
        positions[m] = position
        change += -(fill.collateral + fill.fee) if open_order.order.is_buy else fill.collateral - fill.fee
        fills[i] = fill
    return fills, positions, change


def payouts(
    params: ChannelParams,
    state: ChannelState,
    trader_deposit: int,
    broker_deposit: int,
    prices: Mapping[int, OraclePrice],
    token_decimals: int,
    evidence: Mapping[int, Evidence] | None = None,
    broker_slashed: bool = False,
) -> Payouts:
    """What each party receives when ``state`` concludes with these on-chain deposits.

    ``prices`` maps a market id to its oracle price; only markets with a non-zero position (after
    the fills from ``evidence``) need one. ``evidence`` maps an open order's index to what the
    adjudicator holds for it. A slashed broker's channel pays everything to the trader. The two
    payouts always sum to ``trader_deposit + broker_deposit``.
    """
    if broker_slashed:
        return Payouts(trader_deposit + broker_deposit, 0)
    b = state.balances
    if trader_deposit < b.trader_deposit or broker_deposit < b.broker_deposit:
        return Payouts(trader_deposit, broker_deposit, underfunded=True)
    _, positions, change = fills_from_evidence(params, state, evidence or {})
    value = b.trader_available + b.trader_locked + change
    for market, position in zip(params.markets, positions, strict=True):
        if position:
            value += position_value(market, position, prices[market.id], token_decimals)
    total = b.trader_deposit + b.broker_deposit
    share = min(max(value, 0), total)
    return Payouts(
        to_trader=share + trader_deposit - b.trader_deposit,
        to_broker=total - share + broker_deposit - b.broker_deposit,
    )
