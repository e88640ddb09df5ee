"""A node that is unreachable for a while: :class:`tests.faults.conftest.FlakyProvider` raises
``ConnectionError`` for every JSON-RPC request while ``down`` (the in-process chain stays as it
was, as a restarted node would).

- the trader's deposit and close fail with a typed ``ChainError`` (nothing off-chain changes) and
  succeed when called again once the node is back; the broker's deposit is retried on its own;
- the trader's proofs (``_retry_on_chain``) retry through a short outage and land;
- the watchtower keeps its cursor through the outage and catches up with the logs it missed.
"""

from __future__ import annotations

import asyncio

import pytest
from web3 import Web3

from offchain.agents.common import on_chain
from offchain.agents.watchtower import Watchtower, WatchtowerConfig
from offchain.chain.client import Stage
from offchain.chain.connection import Chain
from offchain.errors import ChainError
from offchain.model import BatchPrice
from offchain.signing import CoSignedState
from offchain.store import MemoryStore, StoredBatchPrice
from offchain.types import BatchNumber, MarketId, Price, Signature
from tests.faults.conftest import FaultNet, FlakyProvider, check_conservation, kinds, settled
from tests.protocol.conftest import GOLD, GOLD_PRICE, USD, eventually, run

DEPOSIT = 5_000 * USD


def test_deposit_and_close_fail_typed_while_the_node_is_down_and_succeed_after(net: FaultNet) -> None:
    async def body() -> None:
        broker = await net.broker(ack_timeout=2)
        trader = await net.trader(broker, None, timeout=3)
        before = await net.balance(trader.address)
        try:
            net.provider.down = True
            with pytest.raises(ChainError) as failed:  # setup co-signed off-chain, the deposit fails
                await trader.open_channel(DEPOSIT, flow="server_initiative")
            assert failed.value.code == "chain"
            assert trader.state.version == 0 and trader.party is not None and trader.party.pending is None
            await asyncio.sleep(0.3)  # the broker's deposit fails too, and is retried
            net.provider.down = False
            await trader.open_channel(DEPOSIT, flow="server_initiative")  # again: picks up where it was
            await settled(broker, trader)
            balances = trader.state.balances
            assert (balances.trader_deposit, balances.broker_deposit) == (DEPOSIT, 20_000 * USD)
            status = await net.party_status(trader)
            assert (status.trader_deposit, status.broker_deposit) == (DEPOSIT, 20_000 * USD)

            await trader.finalize()
            await settled(broker, trader)
            net.provider.down = True
            with pytest.raises(ChainError):
                await trader.close_on_chain()
            assert trader.party.status == "open"  # nothing recorded as closed
            net.provider.down = False
            await trader.close_on_chain()
            assert trader.party.status == "closed"
            assert await net.balance(trader.address) == before  # all of the deposit came back
            check_conservation(broker, trader)
        finally:
            net.provider.down = False
            await trader.stop()
            await broker.stop()

    run(body(), timeout=30)


def test_a_proof_retries_through_a_short_outage(net: FaultNet) -> None:
    """Two prices for one batch, proven by the trader while the node is down for 0.3 s: the
    call is retried (``chain_retry``), the broker is slashed and the trader takes the channel."""

    async def body() -> None:
        broker = await net.broker(ack_timeout=2)
        trader = await net.trader(broker, "server_initiative")
        try:
            prices = []
            for price in (GOLD_PRICE, GOLD_PRICE + USD):
                batch_price = BatchPrice(MarketId(GOLD), BatchNumber(7), Price(price))
                signature = broker.signer.sign(trader.domain, batch_price)
                prices.append(StoredBatchPrice(broker.address, batch_price, Signature(signature)))
            before = await net.balance(trader.address)
            net.provider.down = True

            async def back() -> None:
                await asyncio.sleep(0.3)
                net.provider.down = False

            asyncio.get_running_loop().create_task(back())
            await trader.prove_two_prices(prices[0], prices[1])
            assert "chain_retry" in kinds(trader) and "proved_two_prices" in kinds(trader)
            assert trader.party is not None and trader.party.status == "concluded"
            assert await net.slashed_at(broker.address) is not None
            assert (await net.party_status(trader)).stage == Stage.CONCLUDED
            total = trader.state.balances.trader_deposit + trader.state.balances.broker_deposit
            assert await net.balance(trader.address) - before == total
        finally:
            net.provider.down = False
            await trader.stop()
            await broker.stop()

    run(body(), timeout=30)


def test_the_watchtower_keeps_its_cursor_through_an_outage_and_catches_up(net: FaultNet) -> None:
    """The watchtower's node goes down; while it is down (for the watchtower only) the broker
    registers an old state. The cursor never moves while the node is away; once back, the
    watchtower reads the missed logs from its cursor and refutes with the newest state."""

    async def body() -> None:
        broker = await net.broker(ack_timeout=2)
        trader = await net.trader(broker, "server_initiative")
        await trader.place_order(GOLD, True, 10**6, 2_010 * USD, 5 * USD)
        params, cid = trader.party.params, trader.channel_id  # type: ignore[union-attr]
        old = trader.store.state(cid, 1)
        assert old is not None and old.trader_signature and old.broker_signature
        stale = CoSignedState(old.state, Signature(old.trader_signature), Signature(old.broker_signature))
        newest = trader.party.co_signed  # type: ignore[union-attr]
        await trader.stop()
        await broker.stop()

        provider = FlakyProvider(net.chain.w3.provider.ethereum_tester)  # type: ignore[attr-defined]
        chain = Chain(w3=Web3(provider), in_process=True)
        keeper = await net.party("watchtower", 0)
        wt = Watchtower(
            keeper.signer,
            MemoryStore(),
            chain,
            net.sb.adjudicator.address,
            WatchtowerConfig(port=0, poll_seconds=0.02, max_backoff_seconds=0.05, sweep_seconds=3600),
        )
        wt.guard(params, newest)
        await wt.start()
        try:
            await eventually(lambda: wt.store.meta("watchtower", "cursor") is not None, "a first cycle")
            provider.down = True
            cursor = wt.store.meta("watchtower", "cursor")
            await eventually(lambda: kinds(wt).count("node_error") >= 2, "node errors")
            # the broker registers the old state (through its own node) while the watchtower's is away
            await on_chain(chain, net.sb.adjudicator.challenge, broker.transactor, params, stale)
            count = kinds(wt).count("node_error")
            await eventually(lambda: kinds(wt).count("node_error") >= count + 2, "more node errors")
            assert wt.store.meta("watchtower", "cursor") == cursor  # not moved while the node is away
            provider.down = False
            await eventually(lambda: "refuted" in kinds(wt), "the refute")
            assert int(wt.store.meta("watchtower", "cursor")) > int(cursor)
            status = await on_chain(chain, net.sb.adjudicator.status, cid)
            assert status.registered_version == newest.state.version
        finally:
            provider.down = False
            await wt.stop()

    run(body(), timeout=30)
