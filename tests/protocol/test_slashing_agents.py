"""The agents hold the broker to its signed prices on their own (MISSION.md, "Slashing"), in one
process on the in-process chain:

- a broker that signs two prices for one batch ends with nothing in any of its open channels: the
  traders prove it on-chain without being told, and every one of them takes its whole channel;
- a broker that leaves a crossed order out of a co-signed Trade state loses that channel to the
  trader;
- the honest broker can do neither: its price signer refuses a second price, and it refuses to
  propose a Trade that leaves a crossed order out.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from offchain.agents import broker as broker_module
from offchain.agents.broker import BrokerAgent, MarketBook
from offchain.agents.common import on_chain
from offchain.agents.trader import TraderAgent
from offchain.agents.watchtower import Watchtower, WatchtowerClient, WatchtowerConfig
from offchain.chain.client import Stage
from offchain.engine.channel import Trade
from offchain.errors import TwoPricesError
from offchain.model import BatchPrice
from offchain.protocol import messages as m
from offchain.settlement import Evidence, OraclePrice, evidence_fill, payouts
from offchain.signing import BatchPriceSigner, LocalSigner
from offchain.store import MemoryStore, SQLiteStore, StoredBatchPrice
from offchain.types import BatchNumber, MarketId, Price, Timestamp
from tests.cheating import EquivocatingBroker, LeftOutBroker
from tests.protocol.conftest import DOMAIN, GOLD, GOLD_PRICE, UNIT, USD, Net, eventually, fixed_key, run

TOKENS = 10_000 * USD
DEPOSIT = 5_000 * USD
BROKER_DEPOSIT = 20_000 * USD
CHANNEL = DEPOSIT + BROKER_DEPOSIT


def events_of(agent: TraderAgent | BrokerAgent, kind: str) -> list[str]:
    return [detail for k, detail in agent.events if k == kind]


async def took_the_channel(net: Net, trader: TraderAgent) -> None:
    """The trader's channel concluded on-chain and paid the trader all of its holdings."""
    await eventually(
        lambda: trader.party is not None and trader.party.status == "concluded", "the trader to take its channel", 20
    )
    status = await net.party_status(trader)
    assert status.stage == Stage.CONCLUDED
    assert (status.trader_deposit, status.broker_deposit) == (0, 0)
    assert await net.balance(trader.address) == TOKENS - DEPOSIT + CHANNEL


def test_a_broker_that_signs_two_prices_ends_with_nothing_in_any_channel(net: Net) -> None:
    async def body() -> None:
        broker = await net.broker(cls=EquivocatingBroker, channel_deposit=BROKER_DEPOSIT)
        assert isinstance(broker, EquivocatingBroker)
        broker.equivocate_batch = 2
        broker_start = await net.balance(broker.address)
        a = await net.trader(broker, "server_initiative", DEPOSIT, tokens=TOKENS)
        b = await net.trader(broker, "cooperative", DEPOSIT, tokens=TOKENS)
        c = await net.trader(broker, "cooperative", DEPOSIT, tokens=TOKENS)
        traders = (a, b, c)

        # batch 1, honest: a buys 1 oz from b; c's bid rests below the price
        await a.place_order(GOLD, True, UNIT, 2_010 * USD, 5 * USD)
        await b.place_order(GOLD, False, UNIT, 1_990 * USD, 5 * USD)
        await c.place_order(GOLD, True, UNIT // 2, 950 * USD, 1 * USD)
        first = await broker.settle_batch(GOLD)
        assert first.batch == 1 and a.state.outcomes[0].position == UNIT and b.state.outcomes[0].position == -UNIT
        # d opens a channel and goes away before the broker cheats
        d_party, d_store = await net.party("d", TOKENS), MemoryStore()
        d = await net.trader(broker, "cooperative", DEPOSIT, party=d_party, store=d_store)
        await d.stop()

        # batch 2: b buys back half from a; the broker signs its price, then a second one
        await b.place_order(GOLD, True, UNIT // 2, 1_010 * USD, 1 * USD)
        await a.place_order(GOLD, False, UNIT // 2, 990 * USD, 1 * USD)
        second = await broker.settle_batch(GOLD)
        assert second.batch == 2 and events_of(broker, "equivocated")

        # every trader proves it or finds it proven, and takes its whole channel
        for trader in traders:
            await took_the_channel(net, trader)
        assert await net.slashed_at(broker.address) is not None
        proofs = [t for t in traders if events_of(t, "proved_two_prices")]
        assert len(proofs) >= 1
        assert all(events_of(t, "took_channel") or events_of(t, "already_concluded") for t in traders)
        assert await net.balance(broker.address) == broker_start - 4 * BROKER_DEPOSIT  # d's deposit is in too
        assert events_of(d, "two_prices") == []

        # d was away and never saw the second price: back, it finds the proof on-chain and takes
        # its channel too
        d = await net.trader(broker, None, party=d_party, store=d_store, slash_check_seconds=0.1)
        await took_the_channel(net, d)
        assert events_of(d, "took_channel") and not events_of(d, "two_prices")
        assert await net.balance(broker.address) == broker_start - 4 * BROKER_DEPOSIT
        traders = (a, b, c, d)

        # nothing more is signed in a concluded channel
        party = a.party
        assert party is not None
        with pytest.raises(m.ProtocolError) as refused:
            party.propose("cancel", None)  # type: ignore[arg-type]
        assert refused.value.code == m.CHANNEL_CLOSED

        for trader in traders:
            await trader.stop()
        await broker.stop()

    run(body(), timeout=90)


def test_a_left_out_order_costs_the_broker_the_channel(net: Net) -> None:
    async def body() -> None:
        broker = await net.broker(cls=LeftOutBroker, channel_deposit=BROKER_DEPOSIT)
        assert isinstance(broker, LeftOutBroker)
        a = await net.trader(broker, "cooperative", DEPOSIT, tokens=TOKENS)
        b = await net.trader(broker, "server_initiative", DEPOSIT, tokens=TOKENS)
        left_out = await a.place_order(GOLD, True, UNIT, 2_010 * USD, 5 * USD)
        await a.place_order(GOLD, True, UNIT, 2_020 * USD, 5 * USD)
        await b.place_order(GOLD, False, 2 * UNIT, 3_980 * USD, 10 * USD)
        broker.leave_out = frozenset({(bytes(a.channel_id), left_out)})

        price = await broker.settle_batch(GOLD)
        assert price.price < 2_010 * USD  # both of a's bids are strictly better than the price

        await took_the_channel(net, a)
        (proof,) = events_of(a, "proved_left_out_order")
        assert proof.startswith(f"order {left_out} crossed by batch 1")
        # b's channel is not a's business: it stays open
        status = await net.party_status(b)
        assert status.stage == Stage.OPEN
        await a.stop()
        await b.stop()
        await broker.stop()

    run(body(), timeout=60)


def test_the_honest_broker_refuses_a_trade_that_leaves_a_crossed_order_out(net: Net) -> None:
    async def body() -> None:
        broker = await net.broker(channel_deposit=BROKER_DEPOSIT)
        a = await net.trader(broker, "cooperative", DEPOSIT, tokens=TOKENS)
        crossed = await a.place_order(GOLD, True, UNIT, 2_010 * USD, 5 * USD)
        other = await a.place_order(GOLD, True, UNIT, 2_020 * USD, 5 * USD)
        price = BatchPrice(MarketId(GOLD), BatchNumber(1), Price(GOLD_PRICE))
        now = Timestamp(int(time.time()))
        fills = broker._trades(
            {(bytes(a.channel_id), crossed): UNIT, (bytes(a.channel_id), other): UNIT},
            {(bytes(a.channel_id), o.order.nonce): o for o in a.state.open_orders},
            broker.books[GOLD],
            price,
            now,
            {GOLD: price.price},
        )
        complete = fills[bytes(a.channel_id)]
        assert broker._would_apply(a.channel_id, complete, now)
        partial = Trade(price, tuple(f for f in complete.fills if f.nonce == other), now, complete.marks)
        assert not broker._would_apply(a.channel_id, partial, now)
        assert events_of(broker, "left_out")[-1].endswith(f"would leave crossed order(s) {crossed} unfilled")
        # at the price (rationed) is no proof: a price one unit below the 2,010 limit crosses, at 2,010 it does not
        at_limit = BatchPrice(MarketId(GOLD), BatchNumber(1), Price(2_010 * USD))
        rationed = Trade(at_limit, partial.fills, now, {GOLD: at_limit.price})
        assert broker._would_apply(a.channel_id, rationed, now)
        await a.stop()
        await broker.stop()

    run(body(), timeout=60)


def test_the_price_signer_refuses_a_second_price_even_after_a_restart(tmp_path: Path) -> None:
    signer = LocalSigner(fixed_key("price signer"))
    price = BatchPrice(MarketId(GOLD), BatchNumber(7), Price(GOLD_PRICE))
    store = SQLiteStore(tmp_path / "broker.db")
    prices = BatchPriceSigner(signer, DOMAIN, store)
    signature = prices.sign_price(price)
    store.put_batch_price(StoredBatchPrice(signer.address, price, signature))
    assert prices.sign_price(price) == signature  # the same price again: the same signature
    store.close()

    store = SQLiteStore(tmp_path / "broker.db")
    prices = BatchPriceSigner(signer, DOMAIN, store)
    with pytest.raises(TwoPricesError) as refused:
        prices.sign_price(BatchPrice(MarketId(GOLD), BatchNumber(7), Price(GOLD_PRICE + 1)))
    assert refused.value.code == "two_prices"
    next_batch = BatchPrice(MarketId(GOLD), BatchNumber(8), Price(GOLD_PRICE + 1))
    assert prices.sign_price(next_batch)  # another batch is another matter
    store.close()


def test_a_trade_withheld_by_the_broker_is_filled_from_evidence_by_the_watchtower(net: Net) -> None:
    """The broker prices batch 1 across a's bid but never proposes a's Trade (so no co-signed
    state proves anything). a notices once batch 2 is priced; a disputes with its newest state and
    its watchtower, which holds the signed price, submits it as evidence: at conclusion the order
    fills at batch 1's price, as the batch said."""

    async def body() -> None:
        broker = await net.broker(cls=LeftOutBroker, channel_deposit=BROKER_DEPOSIT)
        assert isinstance(broker, LeftOutBroker)
        keeper = await net.party("watchtower", 0)
        wt = Watchtower(keeper.signer, MemoryStore(), net.chain, net.sb.adjudicator.address, WatchtowerConfig(port=0))
        await wt.start()
        client = WatchtowerClient(f"ws://127.0.0.1:{wt.port}", reconnect_delay=0.05)
        await client.start()
        a = await net.trader(broker, "cooperative", DEPOSIT, tokens=TOKENS, watchtower=client)
        b = await net.trader(broker, "server_initiative", DEPOSIT, tokens=TOKENS)
        bid = await a.place_order(GOLD, True, UNIT, 2_010 * USD, 5 * USD)
        await b.place_order(GOLD, False, UNIT, 1_990 * USD, 5 * USD)
        broker.leave_out = frozenset({(bytes(a.channel_id), bid)})

        price = await broker.settle_batch(GOLD)
        assert a.state.open_orders[0].order.nonce == bid  # no trade for a
        await broker.settle_batch(GOLD)
        await a.wait_until(lambda: bool(events_of(a, "not_filled")), "a to notice")
        (notice,) = events_of(a, "not_filled")
        assert notice.startswith(f"order(s) {bid} crossed by batch 1 of market {GOLD} got no trade")
        await client.flush(10)

        party = a.party
        assert party is not None
        signed, params = party.co_signed, party.params
        await on_chain(net.chain, net.sb.adjudicator.challenge, a.transactor, params, signed)
        await wt.run_once()
        assert net.sb.adjudicator.evidence(params.channel_id, signed.state) == {0: Evidence(1, price.price)}

        before = await net.balance(a.address)
        await on_chain(net.chain, net.chain.increase_time, params.challenge_duration + 1)
        await on_chain(net.chain, net.sb.push_price, "XAU / USD", 2_000 * 10**8)
        await wt.run_once()  # (unless its own loop was quicker)
        status = await net.party_status(a)
        assert status.stage == Stage.CONCLUDED
        expected = payouts(
            params,
            signed.state,
            DEPOSIT,
            BROKER_DEPOSIT,
            {GOLD: OraclePrice(2_000 * 10**8, 8)},
            6,
            evidence={0: Evidence(1, price.price)},
        )
        fill = evidence_fill(signed.state.open_orders[0], price.price, UNIT)
        assert fill.amount == UNIT and fill.collateral == price.price  # the whole order at batch 1's price
        assert await net.balance(a.address) - before == expected.to_trader
        await client.stop()
        await wt.stop()
        await a.stop()
        await b.stop()
        await broker.stop()

    run(body(), timeout=60)


def test_the_broker_keeps_in_memory_only_the_prices_an_open_order_may_need(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check for left-out orders reads the signed prices from an open order's first batch on;
    older ones are dropped from memory (the store keeps them all), and a restarted broker loads
    only the ones still needed."""
    monkeypatch.setattr(broker_module, "HISTORY_KEPT", 4)

    def batches(book: MarketBook) -> list[int]:
        return [r.price.batch for r in book.history]

    async def body() -> None:
        store = MemoryStore()
        broker = await net.broker(store=store, channel_deposit=BROKER_DEPOSIT)
        book = broker.books[GOLD]
        book.forget_at = 4
        for _ in range(4):  # no order: at 4 prices, none is needed any more
            await broker.settle_batch(GOLD)
        assert batches(book) == [] and book.open_batch == 5

        a = await net.trader(broker, "cooperative", DEPOSIT, tokens=TOKENS)
        resting = await a.place_order(GOLD, True, UNIT, 1_000 * USD, 5 * USD)  # far below: never crossed
        for _ in range(8):
            await broker.settle_batch(GOLD)
        assert batches(book) == list(range(5, 13))  # every one needed since the order's first batch
        assert book.forget_at == 16  # checked at 4 and 8 prices, all needed: next at 16

        adjudicator, token = broker.adjudicator.address, broker.token.address
        restarted = BrokerAgent(broker.signer, store, net.chain, adjudicator, token, broker.config)
        assert batches(restarted.books[GOLD]) == list(range(5, 13))  # not from batch 1

        await a.cancel_order(resting)
        for _ in range(7):
            await broker.settle_batch(GOLD)
        assert batches(book) == list(range(5, 20))  # 15 prices: not checked again before 16
        await broker.settle_batch(GOLD)
        assert batches(book) == [] and book.forget_at == 4  # no open order needs any
        assert [r.price.batch for r in store.batch_prices_between(broker.address, GOLD, 1, 100)] == list(range(1, 21))
        await a.stop()
        await broker.stop()

    run(body(), timeout=90)
