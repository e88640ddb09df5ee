"""Proofs that a broker cheated on its batch prices (MISSION.md, "Slashing"; seed 001), found in
what a party holds: pure functions, no I/O.

- **Two prices**: two prices signed by one broker for one (market, batch) that differ
  (:func:`two_prices`). Proven on-chain with ``proveTwoPrices``; from then on every channel of the
  broker concludes with the trader taking all of its funds.
- **Left-out order** (the earliest-batch rule): a co-signed state that reflects batch b in a
  market (its ``last_batch`` there is at least b) while holding an order of that market that was
  eligible in b (``first_batch <= b``), is not completely filled, has not expired, and whose limit
  is strictly better than b's signed price (:func:`offchain.engine.rules.crosses`)
  (:func:`left_out_orders`). Proven on-chain with ``proveLeftOutOrder``: the trader takes the
  channel.

The trader agent runs both on everything it receives; the broker runs :func:`left_out_orders` on
every Trade state before it signs it, so that it never hands out such a proof.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from offchain.engine.rules import crosses
from offchain.errors import ValidationError
from offchain.model import ChannelParams, ChannelState, OpenOrder
from offchain.store.base import StoredBatchPrice

SECONDS_PER_HOUR = 3600

PricesBetween = Callable[[int, int, int], Iterable[StoredBatchPrice]]
"""``(market, first_batch, last_batch)`` -> the broker's signed prices of those batches, in batch
order (a store's :meth:`~offchain.store.base.Store.batch_prices_between` bound to one broker)."""


@dataclass(frozen=True, slots=True)
class LeftOutOrder:
    """Open order ``index`` of a state was crossed by ``price`` and left out."""

    index: int
    open_order: OpenOrder
    price: StoredBatchPrice


def two_prices(known: Sequence[StoredBatchPrice], new: StoredBatchPrice) -> StoredBatchPrice | None:
    """A price among ``known`` (signed by ``new``'s broker for ``new``'s market and batch) that
    differs from ``new``: with ``new`` it proves the broker signed two prices for one batch."""
    for other in known:
        if (
            other.broker == new.broker
            and other.price.market == new.price.market
            and other.price.batch == new.price.batch
            and other.price.price != new.price.price
        ):
            return other
    return None


def left_out_orders(
    params: ChannelParams,
    state: ChannelState,
    prices_between: PricesBetween,
    now: int,
    markets: Collection[int] | None = None,
) -> list[LeftOutOrder]:
    """Every open order of ``state`` (of ``markets`` only, if given) that a signed price proves
    was left out (the earliest such batch per order), as ``proveLeftOutOrder`` would accept it at
    block time ``now``."""
    found: list[LeftOutOrder] = []
    for index, open_order in enumerate(state.open_orders):
        order = open_order.order
        if markets is not None and order.market not in markets:
            continue
        if open_order.filled >= order.amount_synthetic or now >= order.expiration * SECONDS_PER_HOUR:
            continue
        try:
            m = params.market_index(order.market)
        except ValidationError:
            continue
        last = state.outcomes[m].last_batch
        if open_order.first_batch > last:
            continue
        resolution = params.markets[m].resolution
        for record in prices_between(order.market, open_order.first_batch, last):
            if crosses(order, record.price.price, resolution):
                found.append(LeftOutOrder(index, open_order, record))
                break
    return found
