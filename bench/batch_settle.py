"""Settling a batch (MISSION.md, "Bars"): a batch that touches 10,000 channels, every Trade state
co-signed and stored, < 2 s.

One process, no sockets: the real :class:`offchain.agents.broker.BrokerAgent` (its
``settle_batch`` -> ``_settle``: ``book_orders``, ``clear``, ``_trades``, ``_would_apply``, the
signed price, ``ChannelParty.propose`` / ``on_ack`` in grouped transactions) with its durable store
(:class:`offchain.store.sqlite.SQLiteStore`, WAL, ``synchronous=FULL``), and one trader
:class:`offchain.protocol.party.ChannelParty` per channel, each with its own in-memory store
(a trader's disk is on its own machine). Only ``_broadcast_to`` is replaced: a proposal is handed
to the trader's party, whose ACK goes back through the broker's own ``_dispatch``. The trader
agent's own checks around ``on_proposal`` (the batch price's signature, once per batch) are left
out.

Every channel holds one order crossing the book (half buys, half sells), so every channel gets a
Trade. Set-up (not timed): each channel is opened at version 2 (deposits and the order) by the
real engine, both sides signing that state; the set-up is stored in one transaction, and each
side's party is loaded back from its store, as a restarted agent does; then the loaded heap is
taken out of the garbage collector's scans, as ``tchan broker`` does once it has loaded its store
(``offchain.agents.common.freeze_loaded_heap``).

The figure is the broker's real ``settle_batch`` on ``--channels`` channels (default 10,000):
one store transaction for the batch price, the batch's trades and every Trade proposal before
anything is sent, then every proposal sent, and the ACKs taken in group commits (one transaction,
one fsync, for the ACKs that arrive together: here all of them, as the in-process traders answer
at once).

Beside it: the raw cryptography of as many co-signed updates with coincurve (2 digests, 2
signatures, 2 recoveries each), the time the in-process traders took, and one fsynced commit.

    .venv/bin/python bench/batch_settle.py [--channels N]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    ADJUDICATOR,
    BROKER_DEPOSIT,
    BROKER_KEY,
    CHAIN_ID,
    FEED,
    MARKET_ID,
    MARKET_RESOLUTION,
    REFERENCE_PRICE,
    TOKEN,
    TRADER_DEPOSIT,
    bar,
    print_bars,
    raw_cosigned_updates,
    results_dir,
    trader_key,
    write_result,
)
from web3 import Web3

from offchain.agents.broker import BrokerAgent, BrokerConfig
from offchain.agents.common import freeze_loaded_heap
from offchain.chain.connection import Chain
from offchain.engine.channel import AccountDeposits, Channel, CreateOrder, apply, setup
from offchain.model import BatchPrice, ChannelParams, Market, Order
from offchain.protocol import messages as m
from offchain.protocol.party import BROKER, SERVER_INITIATIVE, TRADER, ChannelParty
from offchain.signing import CoSignedState, LocalSigner, StateSigner
from offchain.store import MemoryStore
from offchain.store.sqlite import SQLiteStore
from offchain.types import (
    Address,
    BatchNumber,
    ExpirationHours,
    MarketId,
    Nonce,
    SyntheticAmount,
    Timestamp,
    TokenAmount,
)

BAR_SECONDS = 2.0
MARKET = Market(MarketId(MARKET_ID), Address(FEED), MARKET_RESOLUTION, 2**32 // 10, 3600)
ORDER_SIZE = MARKET_RESOLUTION  # one whole unit per order


class InProcessBroker(BrokerAgent):
    """The real broker; its messages to a trader go to that trader's party in this process."""

    traders: dict[bytes, ChannelParty]
    trader_seconds: float

    async def _broadcast_to(self, trader: Address, message: m.Message) -> None:
        if isinstance(message, m.Propose):
            start = time.perf_counter()
            ack = self.traders[message.channel_id].on_proposal(message)
            self.trader_seconds += time.perf_counter() - start
            await self._dispatch(None, trader, ack)  # type: ignore[arg-type]  # the broker's own ACK handling


def make_broker(path: Path, n: int, first: int) -> InProcessBroker:
    chain = Chain(w3=Web3(), in_process=False, url="offline", _chain_id=CHAIN_ID)
    config = BrokerConfig(markets=(MARKET,), reference_prices={MARKET_ID: REFERENCE_PRICE}, ack_timeout=60.0)
    store = SQLiteStore(path)
    broker = InProcessBroker(LocalSigner(BROKER_KEY), store, chain, Address(ADJUDICATOR), Address(TOKEN), config)
    broker.traders = {}
    broker.trader_seconds = 0.0
    now = Timestamp(int(time.time()))
    with store.transaction():  # the set-up: one commit, not timed
        for i in range(first, first + n):
            broker_party, trader_party = open_channel(broker, i, now)
            broker.traders[bytes(broker_party.channel_id)] = trader_party
    # Each side as a running agent holds it: loaded back from its store (BrokerAgent._load does
    # the same on a restart), so that each party knows what its store holds.
    for channel_id, trader_party in broker.traders.items():
        party = ChannelParty.load(store, broker.state_signer, channel_id)
        broker.parties[party.channel_id] = party
        broker.traders[channel_id] = ChannelParty.load(trader_party.store, trader_party.signer, channel_id)
    freeze_loaded_heap()  # as `tchan broker` does once it has loaded its store
    return broker


def params_of(i: int, broker: Address) -> tuple[ChannelParams, LocalSigner]:
    """The parameters of channel ``i`` (trader ``i``'s key) with ``broker``, and the trader."""
    trader = LocalSigner(trader_key(i))
    params = ChannelParams(
        chain_id=CHAIN_ID,
        adjudicator=Address(ADJUDICATOR),
        trader=trader.address,
        broker=broker,
        token=Address(TOKEN),
        challenge_duration=3600,
        nonce=i,
        markets=(MARKET,),
    )
    return params, trader


def channel_with_order(
    i: int, broker: Address, is_buy: bool, synthetic: int, collateral: int, now: Timestamp
) -> tuple[Channel, LocalSigner]:
    """Channel ``i`` at version 2 by the real engine: the deposits, then one order (nonce 1) of
    ``synthetic`` units for ``collateral``; and its trader."""
    params, trader = params_of(i, broker)
    order = Order(
        channel_id=params.channel_id,
        trader=trader.address,
        collateral=Address(TOKEN),
        market=MarketId(MARKET_ID),
        is_buy=is_buy,
        amount_synthetic=SyntheticAmount(synthetic),
        amount_collateral=TokenAmount(collateral),
        max_fee=TokenAmount(1_000),
        nonce=Nonce(1),
        expiration=ExpirationHours(now // 3600 + 24),
    )
    channel = setup(params)
    channel = apply(channel, AccountDeposits(TokenAmount(TRADER_DEPOSIT), TokenAmount(BROKER_DEPOSIT))).channel
    signature = trader.sign(channel.domain, order)
    return apply(channel, CreateOrder(order, signature, BatchNumber(1), now, {})).channel, trader


def open_channel(broker: BrokerAgent, i: int, now: Timestamp) -> tuple[ChannelParty, ChannelParty]:
    """Channel ``i`` at version 2: deposits, and one order of one unit crossing the book."""
    is_buy = i % 2 == 0
    limit = REFERENCE_PRICE + 1_000 if is_buy else REFERENCE_PRICE - 1_000
    channel, trader = channel_with_order(
        i, broker.address, is_buy, ORDER_SIZE, limit * ORDER_SIZE // MARKET_RESOLUTION, now
    )
    trader_store = MemoryStore()
    trader_signer = StateSigner(trader, channel.domain, log=trader_store)
    trader_signature = trader_signer.sign_state(channel.state)
    broker_signature = broker.state_signer.sign_state(channel.state)
    co_signed = CoSignedState(channel.state, trader_signature, broker_signature)
    parties = []
    for store, signer, role in ((broker.store, broker.state_signer, BROKER), (trader_store, trader_signer, TRADER)):
        party = ChannelParty(store, signer, role, channel, SERVER_INITIATIVE, BROKER, co_signed)
        store.put_state(channel.state, trader_signature, broker_signature)
        party.save()
        parties.append(party)
    return parties[0], parties[1]


def done_deposits(broker: BrokerAgent) -> None:
    """The broker's deposits are done (as in a broker that has run a while): no deposit task."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    for channel_id in broker.parties:
        broker.deposit_tasks[channel_id] = done  # type: ignore[assignment]


async def settle(broker: InProcessBroker) -> tuple[BatchPrice, float]:
    done_deposits(broker)
    start = time.perf_counter()
    price = await broker.settle_batch(MARKET_ID)
    return price, time.perf_counter() - start


def co_signed_trades(broker: InProcessBroker, batch: int) -> int:
    """Channels whose latest co-signed state, on both sides and in the broker's store, is the trade."""
    count = 0
    for channel_id, party in broker.parties.items():
        trader = broker.traders[bytes(channel_id)]
        stored = broker.store.latest_co_signed(channel_id)
        if (
            party.co_signed.state.outcomes[0].last_batch == batch
            and trader.co_signed.state == party.co_signed.state
            and stored is not None
            and stored.state == party.co_signed.state
        ):
            count += 1
    return count


def fsync_commit_seconds(directory: Path, commits: int = 50) -> float:
    with SQLiteStore(directory / "fsync.db") as store:
        start = time.perf_counter()
        for i in range(commits):
            store.put_meta("bench", str(i), i)
        return (time.perf_counter() - start) / commits


def run(label: str, directory: Path, channels: int, first: int) -> dict[str, Any]:
    start = time.perf_counter()
    broker = make_broker(directory / f"{label}.db", channels, first)
    setup_seconds = time.perf_counter() - start
    print(f"  {label}: {channels:,} channels set up in {setup_seconds:.1f} s; settling ...", flush=True)
    price, seconds = asyncio.run(settle(broker))
    touched = co_signed_trades(broker, price.batch)
    broker.store.close()
    if touched != channels:
        raise SystemExit(f"{label}: only {touched} of {channels} channels hold the co-signed trade")
    return {
        "channels": channels,
        "seconds": round(seconds, 3),
        "trader_seconds": round(broker.trader_seconds, 3),
        "broker_seconds": round(seconds - broker.trader_seconds, 3),
        "setup_seconds": round(setup_seconds, 1),
        "price": price.price,
        "co_signed_trades": touched,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=10_000, help="channels in the batch (default: 10000)")
    parser.add_argument("--dir", help="directory for the SQLite files (default: a temporary one beside the results)")
    parser.add_argument("--results", help="directory for the JSON (default: bench/results)")
    args = parser.parse_args()
    n = args.channels
    results = results_dir(args.results)
    results.mkdir(parents=True, exist_ok=True)
    # On the disk of the results, not a tmpfs: the fsyncs are part of the figure.
    with tempfile.TemporaryDirectory(dir=args.dir or results) as tmp:
        directory = Path(tmp)
        fsync = fsync_commit_seconds(directory)
        raw = raw_cosigned_updates(min(n, 2_000)) * n / min(n, 2_000)
        print("settling one batch, in one process (the broker + in-process trader parties, no sockets):")
        settle = run("settle", directory, n, 0)
    bars = [
        bar(
            f"settling a batch touching {n:,} channels (BrokerAgent.settle_batch)",
            settle["seconds"],
            "s",
            raw,
            "raw coincurve for as many co-signed updates",
            BAR_SECONDS,
        ),
    ]
    print(
        f"  settle_batch {settle['channels']:>7,} channels  {settle['seconds']:8.2f} s"
        f"  (broker {settle['broker_seconds']:.2f} s, in-process traders {settle['trader_seconds']:.2f} s)"
        f"  {settle['seconds'] / raw:5.1f}x raw crypto"
    )
    print(f"  raw coincurve, {n:,} co-signed updates   {raw:8.2f} s;  one fsynced SQLite commit {fsync * 1e3:.2f} ms")
    print_bars(bars)
    path = write_result(
        "batch_settle",
        bars,
        results,
        mode="one process, in-process trader parties (no sockets); broker SQLiteStore synchronous=FULL",
        settle=settle,
        raw_crypto_seconds=round(raw, 3),
        fsync_commit_ms=round(fsync * 1e3, 3),
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
