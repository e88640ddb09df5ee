"""The payout rule (MISSION.md, "The channel on-chain", item 7), as a pure function.

It mirrors ``TradingChannelAdjudicator._payouts`` exactly; the property tests run both on the
same random states and prices and require equal results.

Rounding, documented in one place: a position is valued at
``position * answer * 10^token_decimals / (resolution * 10^feed_decimals)`` rounded toward
negative infinity, i.e. against the trader, whose claim on the channel is being valued.
"""

from __future__ import annotations

from dataclasses import dataclass

from offchain.model import ChannelParams, ChannelState, Market


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


def payouts(
    params: ChannelParams,
    state: ChannelState,
    trader_deposit: int,
    broker_deposit: int,
    prices: dict[int, OraclePrice],
    token_decimals: int,
) -> Payouts:
    """What each party receives when ``state`` concludes with these on-chain deposits.

    ``prices`` maps a market id to its oracle price; only markets with a non-zero position need one.
    The two payouts always sum to ``trader_deposit + broker_deposit``.
    """
    b = state.balances
    if trader_deposit < b.trader_deposit or broker_deposit < b.broker_deposit:
        return Payouts(trader_deposit, broker_deposit, underfunded=True)
    value = b.trader_available + b.trader_locked
    for market, outcome in zip(params.markets, state.outcomes, strict=True):
        if outcome.position:
            value += position_value(market, outcome.position, prices[market.id], token_decimals)
    total = b.trader_deposit + b.broker_deposit
    share = min(max(value, 0), total)
    return Payouts(
        to_trader=share + trader_deposit - b.trader_deposit,
        to_broker=total - share + broker_deposit - b.broker_deposit,
    )
