"""A disk that fills up: :class:`tests.faults.conftest.FullDiskStore` makes every transaction fail
with SQLite's ``database or disk is full`` while ``full`` is set.

A party must not sign or acknowledge what it could not store: the failed transaction takes the
state, the signature and the signed-digest record with it, the proposal is refused (error reply
``store``), nothing about the channel changes in memory either, and once writes work again the
re-sent proposal (after a reconnection) is countersigned as if nothing happened.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from offchain.agents.trader import AgentTimeout, RequestRefused
from offchain.store import StoreError
from tests.faults.conftest import FaultNet, FullDiskStore, Proxy, check_conservation, settled, trader_via
from tests.protocol.conftest import GOLD, UNIT, USD, eventually, run


def test_a_trader_whose_disk_is_full_refuses_the_lock_and_countersigns_it_later(net: FaultNet, tmp_path: Path) -> None:
    async def body() -> None:
        broker = await net.broker(ack_timeout=0.5)
        proxy = await Proxy(f"ws://127.0.0.1:{broker.port}").start()
        store = FullDiskStore(tmp_path / "trader.db")
        trader = await trader_via(net, broker, proxy, "server_initiative", store=store, timeout=0.8)
        try:
            assert trader.party is not None
            cid, version = trader.channel_id, trader.state.version
            put_order = store.put_order

            def then_full(order):  # type: ignore[no-untyped-def]
                put_order(order)
                store.full = True  # the disk fills up right after the order is stored

            store.put_order = then_full  # type: ignore[method-assign]
            with pytest.raises((AgentTimeout, StoreError)):
                await trader.place_order(GOLD, True, UNIT, 2_010 * USD, 5 * USD)
            assert store.failures >= 1
            # refused, nothing signed or changed: not on disk, not in memory
            assert store.signed_digest(cid, version + 1) is None and store.state(cid, version + 1) is None
            assert trader.party.co_signed.state.version == version and trader.party.state.version == version
            assert trader.party.channel.state == trader.party.co_signed.state
            assert any(k == "refused" and d.startswith("store") for k, d in trader.events)
            await eventually(lambda: cid in broker.unresponsive, "the broker reporting the channel", 2)

            store.full = False
            store.put_order = put_order  # type: ignore[method-assign]
            await proxy.cut()  # resume: the broker re-sends its pending lock
            await settled(broker, trader)
            assert trader.state.version == version + 1 and len(trader.state.open_orders) == 1
            assert cid not in broker.unresponsive
            check_conservation(broker, trader)
        finally:
            store.full = False
            await trader.stop()
            await proxy.stop()
            await broker.stop()
            store.close()

    run(body(), timeout=20)


def test_a_broker_whose_disk_is_full_refuses_a_proposal_that_is_countersigned_later(
    net: FaultNet, tmp_path: Path
) -> None:
    """Cooperative flow: the trader proposes a lock while the broker's disk is full. The broker
    refuses with ``store`` and signs nothing; the trader's call raises ``RequestRefused``. The
    trader keeps its signed proposal (the version is burned with that state) and re-sends it on
    the next connection, once the broker can write again."""

    async def body() -> None:
        store = FullDiskStore(tmp_path / "broker.db")
        broker = await net.broker(store=store, ack_timeout=0.5)
        proxy = await Proxy(f"ws://127.0.0.1:{broker.port}").start()
        trader = await trader_via(net, broker, proxy, "cooperative", timeout=0.8)
        try:
            cid, version = trader.channel_id, trader.state.version
            bp = broker.party(cid)
            await eventually(lambda: bp.turn == "broker", "the trader's yield to be stored")
            store.full_after(1)  # the broker stores its yield of the turn, then the disk is full
            with pytest.raises(RequestRefused) as refused:
                await trader.place_order(GOLD, True, UNIT, 2_010 * USD, 5 * USD)
            assert refused.value.code == "store"
            assert store.signed_digest(cid, version + 1) is None and store.state(cid, version + 1) is None
            assert bp.co_signed.state.version == version and bp.channel.state.version == version

            store.full = False
            await proxy.cut()  # the trader re-sends its pending proposal on the new connection
            await settled(broker, trader)
            assert trader.state.version == version + 1 and len(trader.state.open_orders) == 1
            await trader.place_order(GOLD, False, UNIT, 2_500 * USD, 5 * USD)  # and goes on
            await settled(broker, trader)
            assert trader.state.version == version + 2
            check_conservation(broker, trader)
        finally:
            store.full = False
            await trader.stop()
            await proxy.stop()
            await broker.stop()
            store.close()

    run(body(), timeout=20)


def test_a_broker_whose_disk_is_full_refuses_a_request_at_once(net: FaultNet, tmp_path: Path) -> None:
    """Server initiative: the broker cannot store its lock proposal. It signs and sends nothing and
    refuses the request with ``store`` at once (the trader's call raises ``RequestRefused``
    instead of waiting for its timeout); with room again the next order goes through."""

    async def body() -> None:
        store = FullDiskStore(tmp_path / "broker.db")
        broker = await net.broker(store=store, ack_timeout=0.5)
        trader = await net.trader(broker, "server_initiative", timeout=5)
        try:
            cid, version = trader.channel_id, trader.state.version
            store.full = True
            with pytest.raises(RequestRefused) as refused:
                await trader.place_order(GOLD, True, UNIT, 2_010 * USD, 5 * USD)
            assert refused.value.code == "store"
            assert store.signed_digest(cid, version + 1) is None and broker.party(cid).pending is None
            store.full = False
            await trader.place_order(GOLD, True, UNIT, 2_010 * USD, 5 * USD)
            await settled(broker, trader)
            assert trader.state.version == version + 1
            check_conservation(broker, trader)
        finally:
            store.full = False
            await trader.stop()
            await broker.stop()
            store.close()

    run(body(), timeout=20)
