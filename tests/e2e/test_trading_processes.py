"""The broker and several traders as separate ``tchan`` processes on a real anvil node: batches
with rationed and partial fills in two markets, both flows, fees, finalize and close with the
exact on-chain payouts; a broker restarted on its store; and a trader that
was offline while its order filled."""

from __future__ import annotations

import re
import signal
import time
from collections import defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from offchain.chain.client import AdjudicatorClient, Stage
from offchain.chain.connection import rpc_chain
from offchain.chain.deploy import load_deployment
from offchain.localnet import ANVIL_CHAIN_ID, Anvil, free_port
from offchain.model import ChannelState
from offchain.store import open_store
from tests.e2e.trading_helpers import (
    BTC,
    CANCEL_ALL,
    CLOSE,
    FINALIZE,
    MINT,
    NETWORK,
    USD,
    XAU,
    Proc,
    Processes,
    balances,
    close_payout,
    dev_address,
    open_step,
    order_step,
    state_of,
    stop,
    stored_states,
    units,
    wait_all,
    wait_filled,
)

pytestmark = [pytest.mark.anvil, pytest.mark.slow]

TRADER_DEPOSIT = 5_000 * USD
BROKER_DEPOSIT = 20_000 * USD
SI, COOP = "server_initiative", "cooperative"


def _scripts() -> dict[int, tuple[str, list[dict[str, Any]]]]:
    """Four traders (dev accounts 1..4) whose orders depend on each other's fills, so that every
    interleaving of the four processes ends the same way (only the prices and fees may differ):

    1. XAU: T1 sells 1.0 at >= 1990, T2 buys 0.6 at <= 2010 -> T1's sell is rationed (0.6 of 1.0).
       (T3's and T4's XAU bids at <= 1980 and <= 1975 cannot trade with T1's ask at 1990.)
    2. BTC: T2, once filled, sells 0.03 at >= 59000 to T1's bid of 0.03 at <= 61000 (T4's asks
       at 62000 are out of its reach); T1, once filled, knows its XAU sell is at 0.6, cancels
       the rest (an order that ends smaller than its amount) and sells 0.7 XAU at >= 1970: all
       of it goes to the bids of T3 (0.5) and T4 (0.2).
    3. BTC: T3, once filled, bids 0.04 at <= 62500; only T4's first 0.02 is there (T3's bid is
       rationed), T4's second 0.02 comes after its first filled: T3's bid fills in two batches.

    XAU: 1.7 offered, 1.3 bought. BTC: 0.07 each way, but never at the same time.
    """
    return {
        1: (
            SI,
            [
                open_step(TRADER_DEPOSIT, SI),
                order_step(XAU, "sell", 1.0, 1990),
                order_step(BTC, "buy", 0.03, 61000),
                wait_filled(2),
                CANCEL_ALL,
                order_step(XAU, "sell", 0.7, 1970),
                wait_filled(3),
                FINALIZE,
                CLOSE,
            ],
        ),
        2: (
            SI,
            [
                open_step(TRADER_DEPOSIT, SI),
                order_step(XAU, "buy", 0.6, 2010),
                wait_filled(1),
                order_step(BTC, "sell", 0.03, 59000),
                wait_filled(2),
                FINALIZE,
                CLOSE,
            ],
        ),
        3: (
            COOP,
            [
                open_step(TRADER_DEPOSIT, COOP),
                order_step(XAU, "buy", 0.5, 1980),
                wait_filled(1),
                order_step(BTC, "buy", 0.04, 62500),
                wait_filled(2),
                FINALIZE,
                CLOSE,
            ],
        ),
        4: (
            COOP,
            [
                open_step(TRADER_DEPOSIT, COOP),
                order_step(XAU, "buy", 0.2, 1975),
                order_step(BTC, "sell", 0.02, 62000),
                wait_filled(2),
                order_step(BTC, "sell", 0.02, 62000),
                wait_filled(3),
                wait_filled(1),
                FINALIZE,
                CLOSE,
            ],
        ),
    }


# Positions just before finalize, by trader: (XAU, BTC) in base units.
EXPECTED_POSITIONS = {
    1: (units(-1.3), units(0.03)),
    2: (units(0.6), units(-0.03)),
    3: (units(0.5), units(0.04)),
    4: (units(0.2), units(-0.04)),
}


def _fills(states: list[ChannelState]) -> list[tuple[int, int, int, int]]:
    """(market, batch, order nonce, signed amount) of every fill in a channel's history: a
    transition that moves a market's ``last_batch`` is a trade of that batch, and what the
    orders of that market gained in ``filled`` (an order that left the book filled completely)
    is its fill."""
    fills: list[tuple[int, int, int, int]] = []
    for before, after in pairwise(states):
        for index, (old, new) in enumerate(zip(before.outcomes, after.outcomes, strict=True)):
            if new.last_batch == old.last_batch:
                continue
            now_filled = {o.order.nonce: o.filled for o in after.open_orders}
            traded = 0
            for open_order in before.open_orders:
                order = open_order.order
                if order.market != index + 1:  # market ids are 1 and 2, in this order
                    continue
                gained = now_filled.get(order.nonce, order.amount_synthetic) - open_order.filled
                if gained:
                    signed = gained if order.is_buy else -gained
                    fills.append((int(order.market), int(new.last_batch), int(order.nonce), signed))
                    traded += signed
            assert traded == new.position - old.position, (index, before.version, after.version)
    return fills


def test_broker_and_four_trader_processes_trade_and_close_on_anvil(anvil: Anvil, tmp_path: Path) -> None:
    started = time.monotonic()
    chain = rpc_chain(anvil.url)
    deployments = tmp_path / "deployments"
    with Processes(tmp_path / "logs", anvil.url, deployments) as procs:
        procs.deploy()
        _deployment, adjudicator, token = procs.contracts(chain)
        accounts = (0, 1, 2, 3, 4)
        assert balances(token, accounts) == dict.fromkeys(accounts, MINT)

        broker_store = tmp_path / "broker.db"
        broker = procs.broker(broker_store)
        url = procs.wait_ready(broker)

        scripts = _scripts()
        traders: dict[int, Proc] = {
            n: procs.trader(f"trader{n}", n, url, tmp_path / f"t{n}.db", script) for n, (_, script) in scripts.items()
        }
        wait_all(list(traders.values()), timeout=75)
        for proc in traders.values():
            assert proc.process.returncode == 0, proc.tail()
        assert broker.process.poll() is None, broker.tail()
        stop(broker)  # SIGINT: a clean stop, so that its store can be read below
        assert broker.process.returncode == 0, broker.tail()

        summaries = {n: proc.summary() for n, proc in traders.items()}
        finals: dict[int, ChannelState] = {}
        histories: dict[int, list[ChannelState]] = {}
        payouts = {}
        for n, summary in summaries.items():
            assert summary["final"] is True and summary["status"] == "closed", summary
            assert summary["flow"] == scripts[n][0]
            assert summary["trader"] == dev_address(n)
            channel_id = bytes.fromhex(summary["channel_id"][2:])
            state = finals[n] = state_of(summary)
            b = state.balances
            assert state.is_final and state.open_orders == ()
            assert all(o.position == 0 for o in state.outcomes)
            assert (b.trader_deposit, b.broker_deposit) == (TRADER_DEPOSIT, BROKER_DEPOSIT)
            assert b.trader_locked == 0 and b.broker_locked == 0
            assert b.trader_available + b.trader_locked + b.broker_available + b.broker_locked == b.holdings

            # The chain paid exactly what the final co-signed state says.
            payout = payouts[n] = close_payout(chain, adjudicator, summary["close_tx"], channel_id)
            assert payout.version == state.version and not payout.underfunded
            assert payout.to_trader == b.trader_available + b.trader_locked
            assert payout.to_broker == b.broker_available + b.broker_locked
            assert payout.to_trader + payout.to_broker == TRADER_DEPOSIT + BROKER_DEPOSIT
            on_chain = adjudicator.status(channel_id)  # type: ignore[arg-type]
            assert on_chain.stage == Stage.CONCLUDED, on_chain

            # The trader's store holds every co-signed version; so does the broker's.
            histories[n] = stored_states(tmp_path / f"t{n}.db", channel_id)
            assert histories[n][-1] == state
            assert stored_states(broker_store, channel_id) == histories[n]

        # Token balances moved exactly by the payouts.
        after = balances(token, accounts)
        for n in traders:
            assert after[n] == MINT - TRADER_DEPOSIT + payouts[n].to_trader
        assert after[0] == MINT - len(traders) * BROKER_DEPOSIT + sum(p.to_broker for p in payouts.values())
        assert sum(after.values()) == len(accounts) * MINT

        # Positions just before finalize: as designed, and they sum to zero in each market.
        for n, history in histories.items():
            assert not history[-2].is_final
            assert tuple(o.position for o in history[-2].outcomes) == EXPECTED_POSITIONS[n], n
        for market in range(2):
            assert sum(h[-2].outcomes[market].position for h in histories.values()) == 0

        # Every batch's fills net to zero across the traders: the broker carries no position.
        by_batch: dict[tuple[int, int], int] = defaultdict(int)
        by_order: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
        for n, history in histories.items():
            for market, batch, nonce, signed in _fills(history):
                by_batch[market, batch] += signed
                by_order[n, nonce].append((batch, signed))
        assert by_batch and all(v == 0 for v in by_batch.values()), dict(by_batch)
        assert len(by_batch) >= 4, f"fills in only {len(by_batch)} (market, batch) pairs"
        assert {market for market, _ in by_batch} == {XAU, BTC}

        # Rationing: T1's first sell ends at 0.6 of 1.0 (the rest cancelled) ...
        assert sum(a for _, a in by_order[1, 1]) == -units(0.6)
        assert histories[1][-2].open_orders == ()
        # ... and T3's BTC bid of 0.04 filled in two batches of 0.02.
        assert sorted(a for _, a in by_order[3, 2]) == [units(0.02), units(0.02)]
        assert len({batch for batch, _ in by_order[3, 2]}) == 2
        # Every other order filled completely.
        for (n, nonce), fills in by_order.items():
            if (n, nonce) != (1, 1):
                order = next(o for h in histories[n] for o in h.open_orders if o.order.nonce == nonce).order
                assert abs(sum(a for _, a in fills)) == order.amount_synthetic, (n, nonce)

        # Fees: every trader paid some, within its orders' max fees.
        fees = {n: sum(o.fees for o in s.outcomes) for n, s in finals.items()}
        assert all(0 < fee for fee in fees.values()), fees
        assert all(fees[n] <= 5 * USD * len(summaries[n]["orders"]) for n in fees)

        # The broker's log shows the batches with volume.
        volumes = [int(v) for v in re.findall(r"batch \d+: price \d+, volume (\d+)", broker.out())]
        assert sum(1 for v in volumes if v) >= len(by_batch)
    elapsed = time.monotonic() - started
    print(f"four traders and a broker on anvil: {elapsed:.1f} s")


def test_broker_restarts_on_its_store_and_the_channel_closes(anvil: Anvil, tmp_path: Path) -> None:
    chain = rpc_chain(anvil.url)
    deployments = tmp_path / "deployments"
    with Processes(tmp_path / "logs", anvil.url, deployments) as procs:
        procs.deploy()
        _deployment, adjudicator, token = procs.contracts(chain)

        broker_store, trader_store = tmp_path / "broker.db", tmp_path / "trader.db"
        port = free_port()
        first = procs.broker(broker_store, port, name="broker-first")
        url = procs.wait_ready(first)
        assert url == f"ws://127.0.0.1:{port}"

        # A trader opens, places a bid far below the market (it cannot fill), and exits.
        run1 = procs.trader(
            "trader-run1", 1, url, trader_store, [open_step(TRADER_DEPOSIT, SI), order_step(XAU, "buy", 1.0, 1000)]
        )
        assert run1.wait(60) == 0, run1.tail()
        before = run1.summary()
        assert before["final"] is False and before["status"] == "open"
        resting = state_of(before)
        assert len(resting.open_orders) == 1 and resting.balances.trader_locked > 0
        channel_id = bytes.fromhex(before["channel_id"][2:])

        # A second broker on the same store is refused at once, in one line.
        second = procs.broker(broker_store, free_port(), name="broker-second")
        assert second.wait(60) == 1, second.tail()
        err_lines = second.err().strip().splitlines()
        assert len(err_lines) == 1 and err_lines[0].startswith("tchan: store_locked: "), second.err()
        assert first.process.poll() is None, first.tail()

        # SIGKILL the broker after a batch or two, restart it on the same store and port.
        wait_for_batch(first, market=XAU, at_least=2)
        first.process.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
        open_batch = stored_open_batch(broker_store, XAU)  # the batch the store says is open
        assert open_batch > max(batches_logged(first, XAU))
        restarted = procs.broker(broker_store, port, name="broker-restarted")
        assert procs.wait_ready(restarted) == url

        # The same trader, on its own store: the channel is already open and funded.
        run2 = procs.trader(
            "trader-run2", 1, url, trader_store, [open_step(TRADER_DEPOSIT, SI), CANCEL_ALL, FINALIZE, CLOSE]
        )
        assert run2.wait(60) == 0, run2.tail()
        after = run2.summary()
        assert after["channel_id"] == before["channel_id"] and after["orders"] == []
        assert after["final"] is True and after["status"] == "closed"
        final = state_of(after)
        # The versions continue where they were: cancel, then finalize.
        assert final.version == resting.version + 2
        b = final.balances
        assert (b.trader_available, b.trader_locked) == (TRADER_DEPOSIT, 0)
        assert (b.broker_available, b.broker_locked) == (BROKER_DEPOSIT, 0)

        payout = close_payout(chain, adjudicator, after["close_tx"], channel_id)
        assert (payout.to_trader, payout.to_broker, payout.version) == (TRADER_DEPOSIT, BROKER_DEPOSIT, final.version)
        assert adjudicator.status(channel_id).stage == Stage.CONCLUDED  # type: ignore[arg-type]
        assert balances(token, (0, 1)) == {0: MINT, 1: MINT}

        # The restarted broker numbered its batches on from the store.
        wait_for_batch(restarted, market=XAU, at_least=open_batch)
        assert min(batches_logged(restarted, XAU)) == open_batch
        stop(restarted)
        history = stored_states(trader_store, channel_id)
        assert history[resting.version] == resting and history[-1] == final
        assert stored_states(broker_store, channel_id) == history


def test_trader_offline_while_its_order_fills_countersigns_on_return(anvil: Anvil, tmp_path: Path) -> None:
    chain = rpc_chain(anvil.url)
    deployments = tmp_path / "deployments"
    with Processes(tmp_path / "logs", anvil.url, deployments) as procs:
        procs.deploy()
        deployment = load_deployment(deployments, NETWORK, expected_chain_id=ANVIL_CHAIN_ID)
        adjudicator = AdjudicatorClient(chain, deployment.adjudicator)
        broker = procs.broker(tmp_path / "broker.db", extra=["--ack-timeout", "2"])
        url = procs.wait_ready(broker)
        store1 = tmp_path / "t1.db"

        # Trader 1 bids and goes away; trader 2 sells into the bid and closes its channel.
        run1 = procs.trader(
            "trader1-bid", 1, url, store1, [open_step(TRADER_DEPOSIT, SI), order_step(XAU, "buy", 1.0, 2010)]
        )
        assert run1.wait(60) == 0, run1.tail()
        channel_id = run1.summary()["channel_id"]
        seller = procs.trader(
            "trader2",
            2,
            url,
            tmp_path / "t2.db",
            [open_step(TRADER_DEPOSIT, SI), order_step(XAU, "sell", 1.0, 1990), wait_filled(1, 30), FINALIZE, CLOSE],
        )
        assert seller.wait(60) == 0, seller.tail()
        fill_batch = max(b for b, volume in batch_volumes(broker, XAU) if volume)

        # The broker gives up on trader 1's countersignature, and prices further batches.
        wait_for_line(broker, f"unresponsive: {channel_id}")
        wait_for_batch(broker, market=XAU, at_least=fill_batch + 1)

        # Trader 1 comes back: it countersigns the fill, then finalizes and closes.
        run2 = procs.trader(
            "trader1-back",
            1,
            url,
            store1,
            [open_step(TRADER_DEPOSIT, SI), CANCEL_ALL, FINALIZE, CLOSE],
            extra=["--timeout", "8"],
        )
        assert run2.wait(60) == 0, run2.tail()
        summary = run2.summary()
        assert summary["final"] is True and summary["status"] == "closed"
        final = state_of(summary)
        assert final.outcomes[0].fees > 0 and final.outcomes[0].last_batch == fill_batch
        payout = close_payout(chain, adjudicator, summary["close_tx"], bytes.fromhex(channel_id[2:]))
        assert payout.to_trader == final.balances.trader_available + final.balances.trader_locked


def batch_volumes(broker: Proc, market: int) -> list[tuple[int, int]]:
    found = re.findall(rf"market {market} batch (\d+): price \d+, volume (\d+)", broker.out())
    return [(int(b), int(v)) for b, v in found]


def wait_for_line(proc: Proc, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in proc.out():
            return
        time.sleep(0.1)
    raise AssertionError(f"{proc.name} never logged {text!r}\n{proc.tail()}")


def batches_logged(broker: Proc, market: int) -> list[int]:
    return [int(b) for b in re.findall(rf"market {market} batch (\d+): price", broker.out())]


def stored_open_batch(store_path: Path, market: int) -> int:
    store = open_store(str(store_path))
    try:
        saved = store.meta("broker.market", str(market))
        assert saved is not None
        return int(saved["open_batch"])
    finally:
        store.close()


def wait_for_batch(broker: Proc, market: int, at_least: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(b >= at_least for b in batches_logged(broker, market)):
            return
        time.sleep(0.1)
    raise AssertionError(f"{broker.name}: no batch {at_least} of market {market}\n{broker.tail()}")
