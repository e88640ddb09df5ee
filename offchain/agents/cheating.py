"""A broker that signs two prices for one batch on purpose, to show what it costs (MISSION.md,
"Slashing"): ``tchan demo`` runs it, and the tests use it in one process and as a separate
process (``python -m tests.cheating``).

The honest :class:`~offchain.agents.broker.BrokerAgent` cannot do this: its
:class:`~offchain.signing.BatchPriceSigner` refuses a second price for a batch, also after a
restart. :meth:`EquivocatingBroker.equivocate` signs with the raw key instead. Until it does, this
broker behaves exactly as the honest one.
"""

from __future__ import annotations

from offchain.agents.broker import BrokerAgent, MarketBook
from offchain.engine.channel import Trade
from offchain.model import BatchPrice, OpenOrder
from offchain.protocol import messages as m
from offchain.types import Address, Price, Timestamp


class EquivocatingBroker(BrokerAgent):
    """After pricing the first batch from ``equivocate_batch`` on in which some channel traded,
    signs a second price for the same batch (one base unit higher) and sends it to every connected
    trader. Once. With ``equivocate_batch = None`` it only cheats when :meth:`equivocate` is
    called."""

    equivocate_batch: int | None = 1
    equivocated: BatchPrice | None = None
    _traded = False

    def _trades(
        self,
        fills: dict[tuple[bytes, int], int],
        by_key: dict[tuple[bytes, int], OpenOrder],
        book: MarketBook,
        price: BatchPrice,
        now: Timestamp,
        marks: dict[int, Price],
    ) -> dict[bytes, Trade]:
        trades = super()._trades(fills, by_key, book, price, now, marks)
        self._traded = bool(trades)
        return trades

    async def settle_batch(self, market_id: int) -> BatchPrice:
        self._traded = False
        price = await super().settle_batch(market_id)
        due = self.equivocate_batch is not None and price.batch >= self.equivocate_batch
        if self.equivocated is None and due and self._traded:
            await self.equivocate(price)
        return price

    async def equivocate(self, price: BatchPrice, to: tuple[Address, ...] | None = None) -> BatchPrice:
        """Sign and publish a second price for ``price``'s batch (one base unit higher),
        bypassing the price signer; sent to the traders ``to`` (default: every connected one).
        Returns the second price."""
        second = BatchPrice(price.market, price.batch, Price(price.price + 1))
        signature = self.signer.sign(self.domain, second)
        self.equivocated = second
        self._event("equivocated", f"market {price.market} batch {price.batch}: {price.price} and {second.price}")
        for trader in to if to is not None else tuple(self.connections):
            await self._broadcast_to(trader, m.BatchPriceMessage(second, signature))
        return second
