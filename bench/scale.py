"""Broker scale (MISSION.md, "Bars"): 100,000 open channels in one broker process, < 2 KiB each,
and how the time per update and per batch grows with the number of channels (1,000 to 100,000).

The channels are stored in the broker's durable store (:class:`offchain.store.sqlite.SQLiteStore`).
Each level is then measured as a broker restart: a fresh process opens the store and constructs
the real broker (:class:`batch_settle.InProcessBroker`, a :class:`BrokerAgent`), whose
``BrokerAgent._load`` does one ``ChannelParty.load`` per stored channel. Memory per channel is the
growth of that process's resident set (RSS) over the construction, divided by the channels it
loaded: everything the broker keeps per channel, plus what is fixed (SQLite's page cache, the
store's bounded caches), which weighs little at 100,000 channels and much at 1,000. As a
cross-check, one more fresh process loads one level (``--trace-level``, default 10,000) under
tracemalloc (the bytes Python allocated and still holds, the store's bounded caches included).

Each stored channel is at version 2: deposits and one resting order that does not cross (buys at
20,000, sells at 40,000); its used order nonces are {1}, as the trader agent numbers its orders.
Built quickly, and honestly so: two states are made by the real engine (one resting buy, one
resting sell); every other channel's state is that state under its own parameters (its own
trader, nonce and channel id, the order re-bound to them), written through the store's API with
65-byte random placeholder signatures, which nothing verifies on load; there are no per-channel
chain calls. Loading parses, checks and builds every channel from its stored JSON, as after a
real restart: nothing is shared with the build.

The channels that take part in the timings are real: an update is a co-signed AccountDeposits
between the broker's loaded party and a trader party (proposal, countersignature, ACK, both
stored; the broker's two commits are fsynced), and a batch is the real ``settle_batch`` over the
whole book (every resting order is read and cleared) in which ``--traders`` extra channels, set
up by the real engine with signed orders, cross and get co-signed Trade states.

    .venv/bin/python bench/scale.py [--levels 1000,10000,100000] [--updates U] [--traders K]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from batch_settle import MARKET, InProcessBroker, channel_with_order, done_deposits, open_channel, params_of
from common import (
    ADJUDICATOR,
    BROKER_KEY,
    CHAIN_ID,
    MARKET_ID,
    MARKET_RESOLUTION,
    REFERENCE_PRICE,
    TOKEN,
    bar,
    print_bars,
    results_dir,
    rss_bytes,
    trader_key,
    write_result,
)
from web3 import Web3

from offchain.agents.broker import BrokerConfig
from offchain.chain.connection import Chain
from offchain.engine.channel import AccountDeposits, Channel
from offchain.model import ChannelState
from offchain.protocol.party import BROKER, SERVER_INITIATIVE, TRADER, ChannelParty
from offchain.signing import LocalSigner, StateSigner
from offchain.store import ChannelRecord, MemoryStore
from offchain.store.sqlite import SQLiteStore
from offchain.types import (
    Address,
    Signature,
    Timestamp,
    TokenAmount,
)

BAR_BYTES = 2048
DEFAULT_LEVELS = "1000,10000,100000"
RESTING_BUY, RESTING_SELL = 20_000, 40_000
FIRST_SCALE_CHANNEL = 1_000_000  # channel numbers of the scale channels (the crossing ones start at 0)


def resting_state(i: int, broker: Address, now: Timestamp) -> Channel:
    """Channel ``i`` at version 2 with one resting order, by the real engine."""
    is_buy = i % 2 == 0
    return channel_with_order(i, broker, is_buy, MARKET_RESOLUTION, RESTING_BUY if is_buy else RESTING_SELL, now)[0]


def add_scale_channels(
    store: SQLiteStore, broker: Address, first: int, count: int, templates: tuple[Channel, Channel]
) -> None:
    """Store ``count`` more resting channels in the broker's store (one transaction)."""
    meta = {"role": BROKER, "flow": SERVER_INITIATIVE, "turn": BROKER, "status": "open", "used_nonces": ["1"]}
    with store.transaction():
        for i in range(first, first + count):
            params, trader = params_of(i, broker)
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


# --------------------------------------------------------------------------- one level, in a fresh process


def restart_broker(path: Path, trace: bool) -> tuple[InProcessBroker, dict[str, Any]]:
    """Construct the broker on the store at ``path`` (``BrokerAgent._load`` loads every channel)
    and measure that construction: seconds, RSS growth, and (with ``trace``) tracemalloc's."""
    chain = Chain(w3=Web3(), in_process=False, url="offline", _chain_id=CHAIN_ID)
    config = BrokerConfig(markets=(MARKET,), reference_prices={MARKET_ID: REFERENCE_PRICE}, ack_timeout=60.0)
    signer = LocalSigner(BROKER_KEY)
    store = SQLiteStore(path)
    gc.collect()
    before = rss_bytes()
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    broker = InProcessBroker(signer, store, chain, Address(ADJUDICATOR), Address(TOKEN), config)
    seconds = time.perf_counter() - start
    traced = None
    if trace:
        traced, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    gc.collect()
    channels = len(broker.parties)
    broker.traders = {}
    broker.trader_seconds = 0.0
    return broker, {
        "channels": channels,
        "load_seconds": seconds,
        "rss_bytes": rss_bytes() - before,
        "traced_bytes": traced,
    }


def trader_party(party: ChannelParty) -> ChannelParty:
    """The trader's side of a loaded channel, in memory (channel ``i``'s trader key is trader_key(i))."""
    store = MemoryStore()
    signer = StateSigner(LocalSigner(trader_key(party.params.nonce)), party.channel.domain, log=store)
    return ChannelParty(store, signer, TRADER, party.channel, SERVER_INITIATIVE, BROKER, party.co_signed)


def time_updates(broker: InProcessBroker, updates: int) -> float:
    """Seconds per co-signed update (broker proposes AccountDeposits, trader countersigns, broker
    takes the ACK), on ``updates`` of the loaded channels."""
    sample = list(broker.parties.values())[: max(1, updates)]
    traders = [trader_party(party) for party in sample]
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


def worker(path: Path, trace: bool, updates: int, traders: int, first_crossing: int) -> dict[str, Any]:
    """One level in this (fresh) process: the restart, then (unless tracing) the timings."""
    broker, result = restart_broker(path, trace)
    if not trace:
        result["update_seconds"] = time_updates(broker, updates)
        for party in broker.parties.values():  # crossing channels of earlier levels may trade again
            if party.params.nonce < FIRST_SCALE_CHANNEL:
                broker.traders[bytes(party.channel_id)] = trader_party(party)
        now = Timestamp(int(time.time()))
        with broker.store.transaction():  # ``traders`` real crossing channels join the book
            for i in range(first_crossing, first_crossing + traders):
                party, trader = open_channel(broker, i, now)
                broker.parties[party.channel_id] = party
                broker.traders[bytes(party.channel_id)] = trader
        result["book_orders"] = sum(len(p.state.open_orders) for p in broker.parties.values())
        result["batch_seconds"] = asyncio.run(time_batch(broker))
    broker.store.close()
    return result


def run_worker(path: Path, trace: bool, updates: int, traders: int, first_crossing: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", str(path), "--updates", str(updates), "--traders", str(traders)]
    command += ["--first-crossing", str(first_crossing)] + (["--trace"] if trace else [])
    process = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)  # its errors: ours
    result: dict[str, Any] = json.loads(process.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------- the levels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default=DEFAULT_LEVELS, help=f"channel counts (default: {DEFAULT_LEVELS})")
    parser.add_argument("--updates", type=int, default=50, help="co-signed updates timed per level (default: 50)")
    parser.add_argument("--traders", type=int, default=20, help="crossing channels in each timed batch (default: 20)")
    parser.add_argument(
        "--trace-level", type=int, default=10_000, help="level loaded once more under tracemalloc (default: 10000)"
    )
    parser.add_argument("--dir", help="directory for the SQLite file (default: a temporary one beside the results)")
    parser.add_argument("--results", help="directory for the JSON (default: bench/results)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: measure one level of this store
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--first-crossing", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.worker), args.trace, args.updates, args.traders, args.first_crossing)))
        return
    levels = sorted(int(x) for x in args.levels.split(","))
    results = results_dir(args.results)
    results.mkdir(parents=True, exist_ok=True)
    now = Timestamp(int(time.time()))
    broker_address = LocalSigner(BROKER_KEY).address
    rows: list[dict[str, Any]] = []
    print("broker scale: a fresh broker process loads the channels of its SQLite store (BrokerAgent._load)")
    print(
        f"{'channels':>9} {'build s':>8} {'load s':>7} {'load ms/ch':>10} {'RSS B/ch':>9} {'traced B/ch':>11}"
        f" {'update ms':>10} {'batch ms':>9} {'book':>8}"
    )
    with tempfile.TemporaryDirectory(dir=args.dir or results) as tmp:
        path = Path(tmp) / "broker.db"
        templates = (
            resting_state(FIRST_SCALE_CHANNEL, broker_address, now),
            resting_state(FIRST_SCALE_CHANNEL + 1, broker_address, now),
        )
        stored = 0  # scale channels in the store (the crossing ones of earlier levels come on top)
        for n, level in enumerate(levels):
            start = time.perf_counter()
            with SQLiteStore(path) as store:
                add_scale_channels(store, broker_address, FIRST_SCALE_CHANNEL + stored, level - stored, templates)
            build_seconds = time.perf_counter() - start
            stored = level
            traced = None
            if level == args.trace_level:
                traced = run_worker(path, True, args.updates, args.traders, 0)
            measured = run_worker(path, False, args.updates, args.traders, n * args.traders)
            channels = measured["channels"]  # ``level`` plus the crossing channels of earlier levels
            row = {
                "channels": level,
                "channels_loaded": channels,
                "build_seconds": round(build_seconds, 1),
                "load_seconds": round(measured["load_seconds"], 2),
                "load_ms_per_channel": round(measured["load_seconds"] * 1e3 / channels, 3),
                "rss_bytes_per_channel": round(measured["rss_bytes"] / channels),
                "traced_bytes_per_channel": None if traced is None else round(traced["traced_bytes"] / channels),
                "update_ms": round(measured["update_seconds"] * 1e3, 3),
                "batch_ms": round(measured["batch_seconds"] * 1e3, 1),
                "batch_book_orders": measured["book_orders"],
                "batch_trades": args.traders,
            }
            rows.append(row)
            traced_text = "" if traced is None else f"{row['traced_bytes_per_channel']:,}"
            print(
                f"{level:>9,} {build_seconds:>8.1f} {row['load_seconds']:>7.1f} {row['load_ms_per_channel']:>10.3f}"
                f" {row['rss_bytes_per_channel']:>9,} {traced_text:>11} {row['update_ms']:>10.2f}"
                f" {row['batch_ms']:>9.1f} {row['batch_book_orders']:>8,}",
                flush=True,
            )
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
        "(channels: resting ones, plus the few crossing ones of earlier levels, which count in the per-channel"
        " figures; RSS: growth of a fresh broker process over BrokerAgent._load, per channel loaded; traced: the"
        " same under tracemalloc; update: one co-signed AccountDeposits, broker commits fsynced; batch:"
        f" settle_batch over the whole book, {args.traders} co-signed trades)"
    )
    update_growth, batch_growth = top["update_ms"] / first["update_ms"], top["batch_ms"] / first["batch_ms"]
    print(
        f"growth {first['channels']:,} -> {top['channels']:,} channels: update x{update_growth:.2f},"
        f" batch x{batch_growth:.2f}, load per channel x{top['load_ms_per_channel'] / first['load_ms_per_channel']:.2f}"
    )
    print_bars(bars)
    path = write_result(
        "scale",
        bars,
        results,
        table=rows,
        build="resting channels: engine-made template state re-bound per channel, placeholder signatures; "
        "timed updates and trades: real signatures; each level measured in a fresh broker process",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
