"""A clock that jumps: :class:`tests.faults.conftest.Clock` stands in for ``time`` inside an agent
module (trader, broker or both: they share this process), with an offset moved during the test.

- the trader's clock jumps forward or back by an hour: the broker's next proposal carries a
  ``now`` more than ``MAX_CLOCK_SKEW`` from the trader's, which refuses it (``clock_skew``) and
  signs nothing; with the clock right again, the re-sent proposal is countersigned;
- the broker's clock jumps past an order's expiration: the lock is refused with the rule's name
  and nothing is signed by either side;
- the whole process jumps past the expiration of a locked order: the batch does not fill it.
"""

from __future__ import annotations

import pytest

from offchain.agents import broker as broker_module
from offchain.agents import trader as trader_module
from offchain.agents.trader import AgentTimeout, RequestRefused
from tests.faults.conftest import Clock, FaultNet, check_conservation, settled
from tests.protocol.conftest import GOLD, UNIT, USD, eventually, run

HOUR = 3600


def test_a_trader_whose_clock_jumps_refuses_and_recovers(net: FaultNet, monkeypatch: pytest.MonkeyPatch) -> None:
    """An hour forward, then an hour back: both times the lock is refused and then recovered."""
    clock = Clock()
    monkeypatch.setattr(trader_module, "time", clock)

    async def body() -> None:
        broker = await net.broker(ack_timeout=0.5)
        trader = await net.trader(broker, "server_initiative", timeout=0.8)
        trader.timeout = 0.5
        try:
            for n, jump in enumerate((HOUR, -HOUR)):
                cid, version = trader.channel_id, trader.state.version
                refusals = [d for k, d in trader.events if k == "refused" and d.startswith("clock_skew")]
                clock.offset = jump
                with pytest.raises((AgentTimeout, RequestRefused)):  # asked again after reconnecting: refused
                    await trader.place_order(GOLD, True, UNIT, 2_010 * USD, 5 * USD, expiration_hours=10**6)
                now = [d for k, d in trader.events if k == "refused" and d.startswith("clock_skew")]
                assert len(now) > len(refusals)  # refused on the first connection and again after the resume
                assert trader.store.signed_digest(cid, version + 1) is None
                await eventually(lambda c=cid: c in broker.unresponsive, "the broker reporting it", 2)
                clock.offset = 0
                assert trader.ws is not None
                await trader.ws.close()  # reconnect: the broker re-sends the lock
                await settled(broker, trader)
                assert trader.state.version == version + 1 and len(trader.state.open_orders) == n + 1
                assert cid not in broker.unresponsive
                check_conservation(broker, trader)
        finally:
            await trader.stop()
            await broker.stop()

    run(body(), timeout=20)


def test_clock_jumps_past_an_order_s_expiration(net: FaultNet, monkeypatch: pytest.MonkeyPatch) -> None:
    """First the broker's clock alone jumps past an order's expiration: the lock is refused with
    the rule's name, nothing is signed by either side. Then, with the order locked, the whole
    process jumps past it: the batch does not fill it."""
    broker_clock, trader_clock = Clock(), Clock()
    monkeypatch.setattr(broker_module, "time", broker_clock)
    monkeypatch.setattr(trader_module, "time", trader_clock)

    async def body() -> None:
        broker = await net.broker(ack_timeout=1)
        buyer = await net.trader(broker, "server_initiative")
        seller = await net.trader(broker, "cooperative")
        try:
            cid, version = buyer.channel_id, buyer.state.version
            expires = int(broker_clock.time()) // HOUR + 2
            broker_clock.offset = 3 * HOUR
            with pytest.raises(RequestRefused) as refused:
                await buyer.place_order(GOLD, True, UNIT, 2_010 * USD, 5 * USD, expiration_hours=expires)
            assert refused.value.code == "rule_violation" and refused.value.rule == "not_expired"
            for party in (buyer.party, broker.party(cid)):
                assert party is not None and party.store.signed_digest(cid, version + 1) is None
            broker_clock.offset = 0  # back: the order goes through

            await buyer.place_order(GOLD, True, UNIT, 2_010 * USD, 5 * USD, expiration_hours=expires)
            await seller.place_order(GOLD, False, UNIT, 1_990 * USD, 5 * USD, expiration_hours=10**6)
            assert buyer.state.version == version + 1
            broker_clock.offset = trader_clock.offset = 3 * HOUR  # the whole process: the buy has expired
            await broker.settle_batch(GOLD)
            for trader in (buyer, seller):
                await settled(broker, trader)
                assert trader.state.outcomes[0].position == 0
                check_conservation(broker, trader)
        finally:
            for trader in (buyer, seller):
                await trader.stop()
            await broker.stop()

    run(body(), timeout=20)
