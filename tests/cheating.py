"""Brokers that cheat on their batch prices on purpose, for the tests that show what it costs them
(MISSION.md, "Slashing"). The honest :class:`~offchain.agents.broker.BrokerAgent` cannot do either:
its :class:`~offchain.signing.BatchPriceSigner` refuses a second price for a batch, and its
``_would_apply`` refuses a Trade state that leaves a crossed order out.

:class:`EquivocatingBroker` (two prices for one batch) lives in the product,
:mod:`offchain.agents.cheating`, because ``tchan demo`` runs it too; it is re-exported here.

Both are used in one process (tests/protocol) and as a separate broker process
(``python -m tests.cheating``, same options as ``tchan broker`` plus ``--equivocate-batch``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from offchain.agents.broker import BrokerAgent
from offchain.agents.cheating import EquivocatingBroker
from offchain.engine.channel import Trade, Transitioned, apply
from offchain.engine.rules import RuleViolation

__all__ = ["EquivocatingBroker", "LeftOutBroker", "main"]


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

    def _would_apply(self, channel_id: bytes, trade: Trade, now: int) -> Transitioned | None:
        """The engine alone decides: no check for the orders a signed price leaves out."""
        try:
            return apply(self.party(channel_id).channel, trade)
        except RuleViolation:
            return None


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
