"""Broker scale (MISSION.md, "Bars"): 100,000 open channels in one broker process, < 2 KiB each,
and how the time per update and per batch grows with the number of channels.

The channels are stored in the broker's durable store (:class:`offchain.store.sqlite.SQLiteStore`)
and loaded the way :meth:`BrokerAgent._load` loads them: one ``ChannelParty.load`` per channel,
held in ``BrokerAgent.parties``. Memory per channel is the growth of the process's resident set
(RSS) over that load, divided by the channels loaded (the same with tracemalloc at the smallest
level, as a cross-check). Each channel is at version 2: deposits and one resting order that does
not cross (buys at 20,000, sells at 40,000).

Built quickly, and honestly so: two states are made by the real engine (one resting buy, one
resting sell); every other channel's state is that state under its own parameters (its own
trader, nonce and channel id, the order re-bound to them), written to the store with 65-byte
placeholder signatures, which nothing verifies on load; there are no per-channel chain calls.
The channels that take part in the timings are real: an update is a co-signed AccountDeposits
between the broker's loaded party and a trader party (proposal, countersignature, ACK, both
stored; the broker's two commits are fsynced), and a batch is the real ``settle_batch`` over the
whole book (every resting order is read and cleared) in which ``--traders`` extra channels, set
up by the real engine with signed orders, cross and get co-signed Trade states.

    .venv/bin/python bench/scale.py [--levels 1000,4000,100000] [--updates U] [--traders K]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import os
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from batch_settle import MARKET, InProcessBroker, done_deposits, make_broker, open_channel
from common import (
    ADJUDICATOR,
    BROKER_DEPOSIT,
    CHAIN_ID,
    MARKET_ID,
    MARKET_RESOLUTION,
    TOKEN,
    TRADER_DEPOSIT,
    bar,
    print_bars,
    results_dir,
    rss_bytes,
    trader_key,
    write_result,
)

from offchain.engine.channel import AccountDeposits, Channel, CreateOrder, apply, setup
from offchain.model import ChannelParams, ChannelState, Order
from offchain.protocol.party import BROKER, SERVER_INITIATIVE, TRADER, ChannelParty
from offchain.signing import LocalSigner, StateSigner
from offchain.store import ChannelRecord, MemoryStore
from offchain.types import (
    Address,
    BatchNumber,
    ChannelId,
    ExpirationHours,
    MarketId,
    Nonce,
    Signature,
    SyntheticAmount,
    Timestamp,
    TokenAmount,
)

BAR_BYTES = 2048
RESTING_BUY, RESTING_SELL = 20_000, 40_000
FIRST_SCALE_CHANNEL = 1_000_000  # channel numbers of the scale channels (the crossing ones start at 0)


def params_of(i: int, broker: Address) -> tuple[ChannelParams, LocalSigner]:
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


def resting_state(i: int, broker: Address, now: Timestamp) -> Channel:
    """Channel ``i`` at version 2 with one resting order, by the real engine."""
    params, trader = params_of(i, broker)
    is_buy = i % 2 == 0
    limit = RESTING_BUY if is_buy else RESTING_SELL
    order = Order(
        channel_id=params.channel_id,
        trader=trader.address,
        collateral=Address(TOKEN),
        market=MarketId(MARKET_ID),
        is_buy=is_buy,
        amount_synthetic=SyntheticAmount(MARKET_RESOLUTION),
        amount_collateral=TokenAmount(limit),
        max_fee=TokenAmount(1_000),
        nonce=Nonce(1),
        expiration=ExpirationHours(now // 3600 + 24),
    )
    channel = setup(params)
    channel = apply(channel, AccountDeposits(TokenAmount(TRADER_DEPOSIT), TokenAmount(BROKER_DEPOSIT))).channel
    signature = trader.sign(channel.domain, order)
    return apply(channel, CreateOrder(order, signature, BatchNumber(1), now, {})).channel


def add_scale_channels(broker: InProcessBroker, first: int, count: int, templates: tuple[Channel, Channel]) -> None:
    """Store ``count`` more resting channels in the broker's store (one transaction)."""
    meta = {"role": BROKER, "flow": SERVER_INITIATIVE, "turn": BROKER, "status": "open", "used_nonces": ["1"]}
    store = broker.store
    with store.transaction():
        for i in range(first, first + count):
            params, trader = params_of(i, broker.address)
            template = templates[i % 2]
            open_order = template.state.open_orders[0]
            order = dataclasses.replace(open_order.order, channel_id=params.channel_id, trader=trader.address)
            state: ChannelState = dataclasses.replace(
                template.state,
                channel_id=params.channel_id,
                open_orders=(dataclasses.replace(open_order, order=order, signature=Signature(os.urandom(65))),),
            )
            store.put_state(state, os.urandom(65), os.urandom(65))
            store.put_channel(ChannelRecord(params.channel_id, params, meta))


def load_parties(broker: InProcessBroker) -> dict[ChannelId, ChannelParty]:
    """What ``BrokerAgent._load`` does for the channels."""
    parties: dict[ChannelId, ChannelParty] = {}
    for record in broker.store.channels():
        party = ChannelParty.load(broker.store, broker.state_signer, ChannelId(record.channel_id))
        parties[party.channel_id] = party
    return parties


def measure_load(broker: InProcessBroker, trace: bool) -> tuple[dict[ChannelId, ChannelParty], int, int | None, float]:
    broker.parties.clear()
    gc.collect()
    before = rss_bytes()
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    parties = load_parties(broker)
    seconds = time.perf_counter() - start
    traced = None
    if trace:
        traced, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    gc.collect()
    return parties, rss_bytes() - before, traced, seconds


def time_updates(broker: InProcessBroker, parties: dict[ChannelId, ChannelParty], updates: int) -> float:
    """Seconds per co-signed update (broker proposes AccountDeposits, trader countersigns, broker
    takes the ACK), on ``updates`` of the loaded channels."""
    sample = list(parties.values())[: max(1, updates)]
    traders = []
    for party in sample:
        i = party.params.nonce
        store = MemoryStore()
        signer = StateSigner(LocalSigner(trader_key(i)), party.channel.domain, log=store)
        trader = ChannelParty(store, signer, TRADER, party.channel, SERVER_INITIATIVE, BROKER, party.co_signed)
        traders.append(trader)
    start = time.perf_counter()
    for party, trader in zip(sample, traders, strict=True):
        balances = party.state.balances
        deposits = AccountDeposits(TokenAmount(balances.trader_deposit + 1), TokenAmount(balances.broker_deposit))
        proposal, _ = party.propose("deposit", deposits)
        party.on_ack(trader.on_proposal(proposal))
    return (time.perf_counter() - start) / len(sample)


async def time_batch(broker: InProcessBroker) -> float:
    done_deposits(broker)
    start = time.perf_counter()
    await broker.settle_batch(MARKET_ID)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1000,4000", help="channel counts (default: 1000,4000; 100000 takes long)")
    parser.add_argument("--updates", type=int, default=50, help="co-signed updates timed per level (default: 50)")
    parser.add_argument("--traders", type=int, default=20, help="crossing channels in each timed batch (default: 20)")
    parser.add_argument("--dir", help="directory for the SQLite file (default: a temporary one beside the results)")
    parser.add_argument("--results", help="directory for the JSON (default: bench/results)")
    args = parser.parse_args()
    levels = sorted(int(x) for x in args.levels.split(","))
    results = results_dir(args.results)
    results.mkdir(parents=True, exist_ok=True)
    now = Timestamp(int(time.time()))
    rows: list[dict[str, Any]] = []
    print("broker scale: channels loaded from the broker's SQLite store as BrokerAgent._load does")
    print(f"{'channels':>9} {'load s':>8} {'RSS B/ch':>9} {'traced B/ch':>11} {'update ms':>10} {'batch ms':>9}")
    with tempfile.TemporaryDirectory(dir=args.dir or results) as tmp:
        broker = make_broker(Path(tmp) / "broker.db", 0, 0)
        templates = (
            resting_state(FIRST_SCALE_CHANNEL, broker.address, now),
            resting_state(FIRST_SCALE_CHANNEL + 1, broker.address, now),
        )
        stored = 0
        crossing_next = 0
        for level in levels:
            add_scale_channels(broker, FIRST_SCALE_CHANNEL + stored, level - stored, templates)
            stored = level
            parties, rss, traced, load_seconds = measure_load(broker, trace=level == levels[0])
            update_seconds = time_updates(broker, parties, args.updates)
            # A batch over the whole book, with ``--traders`` real crossing channels added to it.
            broker.parties = parties
            with broker.store.transaction():
                for i in range(crossing_next, crossing_next + args.traders):
                    party, trader = open_channel(broker, i, now)
                    broker.parties[party.channel_id] = party
                    broker.traders[bytes(party.channel_id)] = trader
            crossing_next += args.traders
            batch_seconds = asyncio.run(time_batch(broker))
            row = {
                "channels": level,
                "load_seconds": round(load_seconds, 2),
                "rss_bytes_per_channel": round(rss / level),
                "traced_bytes_per_channel": None if traced is None else round(traced / level),
                "update_ms": round(update_seconds * 1e3, 3),
                "batch_ms": round(batch_seconds * 1e3, 1),
                "batch_trades": args.traders,
            }
            rows.append(row)
            traced_text = "" if traced is None else f"{row['traced_bytes_per_channel']:,}"
            print(
                f"{level:>9,} {load_seconds:>8.1f} {row['rss_bytes_per_channel']:>9,} {traced_text:>11}"
                f" {row['update_ms']:>10.2f} {row['batch_ms']:>9.1f}",
                flush=True,
            )
            broker.parties = {}
            del parties
        broker.store.close()
    top = rows[-1]
    first = rows[0]
    bars = [
        bar(
            f"memory per open channel, broker holding {top['channels']:,} channels",
            float(top["rss_bytes_per_channel"]),
            "B",
            float(BAR_BYTES),
            "the bar (2 KiB)",
            BAR_BYTES,
        )
    ]
    print(
        f"(update: one co-signed AccountDeposits, broker commits fsynced; batch: settle_batch over the whole book,"
        f" {args.traders} co-signed trades)"
    )
    update_growth, batch_growth = top["update_ms"] / first["update_ms"], top["batch_ms"] / first["batch_ms"]
    print(
        f"growth {first['channels']:,} -> {top['channels']:,} channels: update x{update_growth:.2f},"
        f" batch x{batch_growth:.2f}"
    )
    print_bars(bars)
    path = write_result(
        "scale",
        bars,
        results,
        table=rows,
        build="resting channels: engine-made template state re-bound per channel, placeholder signatures; "
        "timed updates and trades: real signatures",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
