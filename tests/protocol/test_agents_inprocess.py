"""Everything in one Python process on the in-process chain: a broker and three TraderAgents (one
server-initiative, two cooperative), two markets, batches run by hand with ``settle_batch``.

Checked along the way: rationing at the clearing price, fees within each order's max fee, a
cancel in both flows, a batch without a crossing, the broker's net position per market (zero
after every batch), every batch price stored by every trader, a trader that restarts on its
SQLite store and resumes its channel, and the payout of the co-signed final states on-chain."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from offchain.agents.broker import BrokerAgent
from offchain.agents.trader import TraderAgent
from offchain.model import ChannelState
from offchain.sandbox import Party
from offchain.store import MemoryStore, SQLiteStore
from tests.protocol.conftest import BTC, BTC_PRICE, GOLD, GOLD_PRICE, UNIT, USD, Net, eventually, run

TOKENS = 10_000 * USD
DEPOSIT = 5_000 * USD
BROKER_DEPOSIT = 20_000 * USD


def positions(state: ChannelState) -> tuple[int, int]:
    gold, btc = state.outcomes
    return gold.position, btc.position


def check_agreement(broker: BrokerAgent, traders: list[TraderAgent]) -> None:
    """Each trader and the broker hold the same co-signed state, with nothing pending, and the
    broker's net position per market over all channels is zero."""
    net = [0, 0]
    for trader in traders:
        party = broker.party(trader.channel_id)
        assert trader.party is not None and trader.party.pending is None and party.pending is None
        assert trader.state == party.co_signed.state
        assert trader.party.co_signed == party.co_signed
        assert trader.channel_id not in broker.unresponsive
        for i, p in enumerate(positions(party.co_signed.state)):
            net[i] += p
    assert net == [0, 0], f"broker carries {net}"


def order_of(state: ChannelState, nonce: int):  # type: ignore[no-untyped-def]
    return next((o for o in state.open_orders if o.order.nonce == nonce), None)


async def restart(trader: TraderAgent, path: Path, net: Net, broker: BrokerAgent, party: Party) -> TraderAgent:
    """Stop the agent, close its store, and start a new agent on the same SQLite file."""
    version, cid = trader.state.version, trader.channel_id
    await trader.stop()
    trader.store.close()
    again = await net.trader(broker, None, party=party, store=SQLiteStore(path))
    assert again.party is not None and again.channel_id == cid
    assert again.state.version == version == broker.party(cid).co_signed.state.version
    return again


def test_three_traders_two_markets(net: Net, tmp_path: Path) -> None:
    async def body() -> None:
        broker = await net.broker(ack_timeout=5)
        broker_start = await net.balance(broker.address)
        parties = [await net.party(name, TOKENS) for name in ("a", "b", "c")]
        paths = {0: tmp_path / "a.db", 2: tmp_path / "c.db"}
        flows = ["server_initiative", "cooperative", "cooperative"]
        traders = [
            await net.trader(
                broker, flow, DEPOSIT, party=p, store=SQLiteStore(paths[i]) if i in paths else MemoryStore()
            )
            for i, (flow, p) in enumerate(zip(flows, parties, strict=True))
        ]
        a, b, c = traders
        for t in traders:
            assert t.state.balances.trader_deposit == DEPOSIT and t.state.balances.broker_deposit == BROKER_DEPOSIT
            assert t.party is not None and t.party.flow == broker.party(t.channel_id).flow
        check_agreement(broker, traders)
        assert [await net.balance(p.address) for p in parties] == [TOKENS - DEPOSIT] * 3

        # ---- batch 1: gold rations the two sells at the price; BTC fills half of a's sell
        a_gold = await a.place_order(GOLD, True, UNIT, 2_010 * USD, 5 * USD)  # buy 1 @ <= 2010
        b_gold = await b.place_order(GOLD, False, 6 * UNIT // 10, 1_200 * USD, 5 * USD)  # sell 0.6 @ >= 2000
        c_gold = await c.place_order(GOLD, False, 6 * UNIT // 10, 1_200 * USD, USD // 2)  # same, tiny max fee
        b_btc = await b.place_order(BTC, True, UNIT // 20, 3_050 * USD, 5 * USD)  # buy 0.05 @ <= 61000
        a_btc = await a.place_order(BTC, False, UNIT // 10, 6_000 * USD, 5 * USD)  # sell 0.1 @ >= 60000
        locked = {t.channel_id: t.state for t in traders}
        assert a.state.balances.trader_locked == 2_015 * USD + 5 * USD  # buy: collateral + fee; sell: fee
        check_agreement(broker, traders)

        gold_price = await broker.settle_batch(GOLD)
        check_agreement(broker, traders)
        btc_price = await broker.settle_batch(BTC)
        check_agreement(broker, traders)
        assert (gold_price.batch, gold_price.price) == (1, GOLD_PRICE)
        assert (btc_price.batch, btc_price.price) == (1, BTC_PRICE)

        assert positions(a.state) == (UNIT, -(UNIT // 20))
        assert positions(b.state) == (-(UNIT // 2), UNIT // 20)
        assert positions(c.state) == (-(UNIT // 2), 0)
        # the strictly better buy filled in full; the two sells at the price shared pro rata
        assert order_of(a.state, a_gold) is None and order_of(b.state, b_btc) is None
        assert order_of(b.state, b_gold).filled == UNIT // 2  # type: ignore[union-attr]
        assert order_of(c.state, c_gold).filled == UNIT // 2  # type: ignore[union-attr]
        assert order_of(a.state, a_btc).filled == UNIT // 20  # type: ignore[union-attr]
        # fees: 10 bps of the fill's collateral, within the max fee and its ratio
        assert [o.fees for o in a.state.outcomes] == [2 * USD, 2_500_000]  # BTC: 5 * 3000 / 6000 = 2.5
        assert [o.fees for o in b.state.outcomes] == [1 * USD, 3 * USD]
        assert [o.fees for o in c.state.outcomes] == [416_666, 0]  # 0.5 * 1000 / 1200, rounded down
        for t in traders:
            for o in t.state.outcomes:
                assert o.last_batch in (0, 1)
        # collateral moved as the fills say: a paid 2000 + 2 for gold, got 3000 - 2.5 for BTC
        collateral = {t.channel_id: t.state.balances.trader_available + t.state.balances.trader_locked for t in traders}
        assert collateral[a.channel_id] == DEPOSIT - 2_002 * USD + 2_997_500_000
        assert collateral[b.channel_id] == DEPOSIT + 999 * USD - 3_003 * USD
        assert collateral[c.channel_id] == DEPOSIT + 1_000 * USD - 416_666
        assert all(locked[cid].version < broker.party(cid).state.version for cid in collateral)

        # ---- cancels, in both flows
        await a.cancel_order(a_btc)
        await c.cancel_order(c_gold)
        assert a.state.open_orders == () and c.state.open_orders == ()
        assert b.state.open_orders != ()
        await b.cancel_order(b_gold)
        check_agreement(broker, traders)
        assert all(t.state.balances.trader_locked == 0 for t in traders)

        # ---- batch 2: nothing crosses (b bids 1900, c asks 2100); no BTC orders at all
        b_bid = await b.place_order(GOLD, True, UNIT // 10, 190 * USD, USD)
        c_ask = await c.place_order(GOLD, False, UNIT // 10, 210 * USD, USD)
        versions = {t.channel_id: t.state.version for t in traders}
        gold_price = await broker.settle_batch(GOLD)
        btc_price = await broker.settle_batch(BTC)
        assert (gold_price.batch, gold_price.price) == (2, GOLD_PRICE)  # the previous price lies in the gap
        assert (btc_price.batch, btc_price.price) == (2, BTC_PRICE)
        assert {t.channel_id: t.state.version for t in traders} == versions  # no trade proposals
        assert order_of(b.state, b_bid).filled == 0 and order_of(c.state, c_ask).filled == 0  # type: ignore[union-attr]
        check_agreement(broker, traders)
        assert [e for e in broker.events if e[0] == "batch"][-2:] == [
            ("batch", f"market {GOLD} batch 2: price {GOLD_PRICE}, volume 0, 0 fills"),
            ("batch", f"market {BTC} batch 2: price {BTC_PRICE}, volume 0, 0 fills"),
        ]

        # ---- every trader stored every batch price, as the broker signed it
        for t in traders:  # (batch 2 had no trades to wait for: let its prices arrive)
            await t.wait_until(lambda t=t: t.open_batches == {GOLD: 3, BTC: 3}, "the prices of batch 2")
            for market in (GOLD, BTC):
                for batch in (1, 2):
                    mine = t.store.batch_prices(broker.address, market, batch)
                    signed = broker.store.batch_prices(broker.address, market, batch)
                    assert mine == signed and len(mine) == 1
            assert t.marks == {GOLD: GOLD_PRICE, BTC: BTC_PRICE}

        # ---- a and c restart on their SQLite stores and resume where they were
        a = traders[0] = await restart(a, paths[0], net, broker, parties[0])
        c = traders[2] = await restart(c, paths[2], net, broker, parties[2])
        assert c.party is not None and c.party.turn == "broker"
        assert order_of(c.state, c_ask) is not None
        check_agreement(broker, traders)

        # ---- finalize everyone and close on-chain
        finals = {}
        for t in traders:
            final = await t.finalize()
            assert final.is_final and final.open_orders == () and positions(final) == (0, 0)
            assert broker.party(t.channel_id).co_signed.state == final
            finals[t.channel_id] = final
        check_agreement(broker, traders)
        for t in traders:
            await t.close_on_chain()
        for t, p in zip(traders, parties, strict=True):
            final = finals[t.channel_id]
            payout = final.balances.trader_available + final.balances.trader_locked
            assert await net.balance(p.address) == TOKENS - DEPOSIT + payout
        broker_payouts = sum(
            f.balances.trader_deposit
            + f.balances.broker_deposit
            - f.balances.trader_available
            - f.balances.trader_locked
            for f in finals.values()
        )
        assert broker_payouts == sum(f.balances.broker_available + f.balances.broker_locked for f in finals.values())
        assert await net.balance(broker.address) == broker_start - 3 * BROKER_DEPOSIT + broker_payouts
        # the payouts: positions closed at the last batch prices, fees to the broker
        assert finals[c.channel_id].balances.trader_available == DEPOSIT - 416_666  # sold 0.5 @ 2000, closed @ 2000
        assert finals[b.channel_id].balances.trader_available == DEPOSIT - 4 * USD  # only fees
        assert finals[a.channel_id].balances.trader_available == DEPOSIT - 4_500_000

        for t in traders:
            await t.stop()
            t.store.close()
        await broker.stop()

    run(body(), timeout=90)


async def _offline_trade(net: Net, tmp_path: Path, price_btc_first: bool):  # type: ignore[no-untyped-def]
    """x (server initiative, SQLite) buys 1 gold from y (cooperative) at 2000; x is offline when
    the batch settles, so its trade stays pending and x is reported unresponsive."""
    broker = await net.broker(ack_timeout=0.5)
    if price_btc_first:
        await broker.settle_batch(BTC)  # BTC is priced: every later trade carries a BTC mark
    px, py = await net.party("x", TOKENS), await net.party("y", TOKENS)
    path = tmp_path / "x.db"
    x = await net.trader(broker, "server_initiative", DEPOSIT, party=px, store=SQLiteStore(path))
    y = await net.trader(broker, "cooperative", DEPOSIT, party=py)
    await x.place_order(GOLD, True, UNIT, 2_000 * USD, 5 * USD)
    await y.place_order(GOLD, False, UNIT, 2_000 * USD, 5 * USD)
    await x.stop()
    x.store.close()
    await broker.settle_batch(GOLD)
    theirs = broker.party(x.channel_id)
    assert x.channel_id in broker.unresponsive and theirs.status == "unresponsive"
    assert theirs.pending is not None and theirs.pending[0].kind == "trade"
    assert positions(y.state) == (-UNIT, 0)
    return broker, x, y, px, path


def test_offline_trader_resumes_and_countersigns_the_pending_trade(net: Net, tmp_path: Path) -> None:
    async def body() -> None:
        broker, x, y, px, path = await _offline_trade(net, tmp_path, price_btc_first=False)
        x = await net.trader(broker, None, party=px, store=SQLiteStore(path))
        await eventually(lambda: broker.party(x.channel_id).pending is None, "the trade's ACK")
        assert positions(x.state) == (UNIT, 0)
        assert x.channel_id not in broker.unresponsive and broker.party(x.channel_id).status == "open"
        check_agreement(broker, [x, y])
        final = await x.finalize()
        assert final.is_final and broker.party(x.channel_id).co_signed.state == final
        for t in (x, y):
            await t.stop()
        x.store.close()
        await broker.stop()

    run(body())


def test_offline_trader_countersigns_a_pending_trade_after_a_later_batch(net: Net, tmp_path: Path) -> None:
    """The pending trade's marks are older than the latest prices when x comes back: the broker
    re-sends the signed prices it refers to, and x countersigns."""

    async def body() -> None:
        broker, x, y, px, path = await _offline_trade(net, tmp_path, price_btc_first=True)
        # while x is away, BTC trades at 61000 between y and z
        z = await net.trader(broker, "cooperative", DEPOSIT)
        await y.place_order(BTC, True, UNIT // 10, 6_100 * USD, 5 * USD)
        await z.place_order(BTC, False, UNIT // 10, 6_100 * USD, 5 * USD)
        price = await broker.settle_batch(BTC)
        assert price.price == 61_000 * USD
        x = await net.trader(broker, None, party=px, store=SQLiteStore(path))
        theirs = broker.party(x.channel_id)

        def answered() -> bool:
            return theirs.pending is None or any(k == "refused_by_trader" for k, _ in broker.events)

        try:
            await eventually(answered, "x's answer to the pending trade", 5)
        finally:
            for t in (x, y, z):
                await t.stop()
            x.store.close()
            await broker.stop()
        assert [e for e in broker.events if e[0] == "refused_by_trader"] == []
        assert theirs.pending is None and positions(x.state) == (UNIT, 0)
        assert x.marks[BTC] == 61_000 * USD and theirs.status == "open"
        assert x.state == theirs.co_signed.state

    run(body())


def test_broker_restarts_on_its_store(net: Net, tmp_path: Path) -> None:
    """The broker stops with orders resting and comes back on the same SQLite store and port: the
    traders reconnect on their own, and the next batch trades their orders."""

    async def body() -> None:
        path = tmp_path / "broker.db"
        broker = await net.broker(store=SQLiteStore(path))
        a = await net.trader(broker, "server_initiative", DEPOSIT)
        b = await net.trader(broker, "cooperative", DEPOSIT)
        await a.place_order(GOLD, True, UNIT, 2_000 * USD, 5 * USD)
        await b.place_order(GOLD, False, UNIT, 2_000 * USD, 5 * USD)
        await broker.settle_batch(BTC)
        port, key, config = broker.port, broker.signer, broker.config
        versions = {t.channel_id: t.state.version for t in (a, b)}
        await broker.stop()
        broker.store.close()

        again = BrokerAgent(
            key,
            SQLiteStore(path),
            net.chain,
            net.sb.adjudicator.address,
            net.sb.token.address,
            dataclasses.replace(config, port=port),
        )
        await again.start()
        assert {cid: again.party(cid).co_signed.state.version for cid in versions} == versions
        assert again.books[BTC].open_batch == 2 and again.books[GOLD].open_batch == 1
        await eventually(lambda: all(len(again.connections.get(t.address, ())) for t in (a, b)), "reconnects")
        price = await again.settle_batch(GOLD)
        assert (price.batch, price.price) == (1, GOLD_PRICE)
        check_agreement(again, [a, b])
        assert positions(a.state) == (UNIT, 0) and positions(b.state) == (-UNIT, 0)
        for t in (a, b):
            final = await t.finalize()
            assert final.is_final
            await t.close_on_chain()
            await t.stop()
        await again.stop()
        again.store.close()

    run(body())


def test_net_position_stays_zero_when_one_fill_breaks_leverage(net: Net) -> None:
    async def body() -> None:
        broker = await net.broker()
        flow = "server_initiative"
        s = await net.trader(broker, flow, 700 * USD)  # a thinly funded short seller
        l = await net.trader(broker, flow, 7_000 * USD)  # noqa: E741 - the BTC buyer
        p = await net.trader(broker, flow, 1_000 * USD)
        q = await net.trader(broker, flow, 1_000 * USD)
        g = await net.trader(broker, flow, 1_000 * USD)
        traders = [s, l, p, q, g]
        await s.place_order(BTC, False, UNIT // 10, 6_000 * USD, 0)  # sell 0.1 BTC @ 60000
        await s.place_order(GOLD, False, UNIT // 10, 200 * USD, 0)  # sell 0.1 gold @ 2000 (rests)
        await l.place_order(BTC, True, UNIT // 10, 6_000 * USD, 0)
        await broker.settle_batch(BTC)  # s is short 0.1 BTC, still well leveraged (700 >= 600)
        assert positions(s.state) == (0, -(UNIT // 10))
        check_agreement(broker, traders)
        await p.place_order(BTC, True, UNIT // 100, 660 * USD, 0)  # BTC moves to 66000 between p and q
        await q.place_order(BTC, False, UNIT // 100, 660 * USD, 0)
        assert (await broker.settle_batch(BTC)).price == 66_000 * USD
        check_agreement(broker, traders)
        await g.place_order(GOLD, True, UNIT // 10, 200 * USD, 0)  # crosses s's resting gold sell
        await broker.settle_batch(GOLD)
        try:
            check_agreement(broker, traders)  # fails: "broker carries [100000, 0]"
            assert not [e for e in broker.events if e[0] == "refused"]
        finally:
            for t in traders:
                await t.stop()
            await broker.stop()

    run(body())
