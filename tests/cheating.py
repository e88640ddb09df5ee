"""Brokers that cheat on their batch prices on purpose, for the tests that show what it costs them
(MISSION.md, "Slashing"). The honest :class:`~offchain.agents.broker.BrokerAgent` cannot do either:
its :class:`~offchain.signing.BatchPriceSigner` refuses a second price for a batch, and its
``_would_apply`` refuses a Trade state that leaves a crossed order out.

Both are used in one process (tests/protocol) and as a separate broker process
(``python -m tests.cheating``, same options as ``tchan broker`` plus ``--equivocate-batch``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from offchain.agents.broker import BrokerAgent
from offchain.engine.channel import Trade
from offchain.model import BatchPrice
from offchain.protocol import messages as m
from offchain.types import Price


class EquivocatingBroker(BrokerAgent):
    """After pricing the first batch from ``equivocate_batch`` on in which some channel traded,
    signs a second price for the same batch (one unit higher) and sends it to every connected
    trader. Once."""

    equivocate_batch = 1
    equivocated: BatchPrice | None = None
    _traded = False

    def _trades(self, *args: Any, **kwargs: Any) -> dict[bytes, Trade]:
        trades = super()._trades(*args, **kwargs)
        self._traded = bool(trades)
        return trades

    async def settle_batch(self, market_id: int) -> BatchPrice:
        self._traded = False
        price = await super().settle_batch(market_id)
        if self.equivocated is None and price.batch >= self.equivocate_batch and self._traded:
            self.equivocated = await self.equivocate(price)
        return price

    async def equivocate(self, price: BatchPrice) -> BatchPrice:
        """Sign and publish a second price for ``price``'s batch, bypassing the price signer."""
        second = BatchPrice(price.market, price.batch, Price(price.price + 1))
        signature = self.signer.sign(self.domain, second)
        self._event("equivocated", f"market {price.market} batch {price.batch}: {price.price} and {second.price}")
        for trader in list(self.connections):
            await self._broadcast_to(trader, m.BatchPriceMessage(second, signature))
        return second


class LeftOutBroker(BrokerAgent):
    """Leaves the orders of ``leave_out`` ((channel id, nonce) pairs) out of its Trades, and skips
    its own guard against doing so. A channel left with no fill gets no Trade at all."""

    leave_out: frozenset[tuple[bytes, int]] = frozenset()

    def _trades(self, *args: Any, **kwargs: Any) -> dict[bytes, Trade]:
        trades = super()._trades(*args, **kwargs)
        out = {}
        for channel_id, trade in trades.items():
            kept = tuple(f for f in trade.fills if (channel_id, f.nonce) not in self.leave_out)
            if kept:
                out[channel_id] = Trade(trade.batch_price, kept, trade.now, trade.marks)
        return out

    def _would_apply(self, channel_id: bytes, trade: Trade, now: int) -> bool:
        return True


def main(argv: Sequence[str] | None = None) -> int:
    """``tchan broker ...`` run with :class:`EquivocatingBroker`; ``--equivocate-batch N`` (default
    1) is the first batch it may equivocate on."""
    from offchain import cli

    args = list(sys.argv[1:] if argv is None else argv)
    if "--equivocate-batch" in args:
        at = args.index("--equivocate-batch")
        EquivocatingBroker.equivocate_batch = int(args[at + 1])
        del args[at : at + 2]
    return cli.main(args, broker_class=EquivocatingBroker)


if __name__ == "__main__":
    sys.exit(main())
