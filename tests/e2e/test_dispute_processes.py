"""Disputes between real processes on a real anvil node (MISSION.md, "Slashing", "Watchtower"):

- a broker process that signs two prices for one batch is slashed by trader processes: each
  ``tchan trader`` sees both prices, proves them on-chain without being told and takes its whole
  channel; the broker ends with nothing in any of its channels;
- a broker that challenges with a stale state after its trader went offline loses to the
  trader's ``tchan watchtower``, which refutes with the newest state the trader handed it and
  concludes at the oracle price after the deadline.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from offchain.chain.client import OnChainChannel, PriceFeedClient, Stage
from offchain.chain.connection import Transactor, rpc_chain
from offchain.localnet import Anvil
from offchain.settlement import OraclePrice, payouts
from offchain.signing import CoSignedState
from offchain.store import open_store
from offchain.types import Address, ChannelId
from tests.e2e.trading_helpers import (
    MINT,
    USD,
    XAU,
    Processes,
    balances,
    dev_address,
    dev_key,
    open_step,
    order_step,
    stop,
    units,
    wait_all,
    wait_filled,
    wait_until,
)

pytestmark = [pytest.mark.anvil, pytest.mark.slow]

TRADER_DEPOSIT = 5_000 * USD
BROKER_DEPOSIT = 20_000 * USD
CHEATING_BROKER = (sys.executable, "-m", "tests.cheating")
WATCHTOWER = 5  # anvil dev account of the trader's watchtower


WAIT_CONCLUDED = {"wait_concluded": {"timeout": "90"}}


def test_trader_processes_slash_a_broker_process_that_signs_two_prices(anvil: Anvil, tmp_path: Path) -> None:
    deployments = tmp_path / "deployments"
    with Processes(tmp_path / "logs", anvil.url, deployments) as procs:
        procs.deploy()
        chain = rpc_chain(anvil.url)
        deployment, adjudicator, token = procs.contracts(chain)
        broker = procs.broker(
            tmp_path / "broker.db",
            channel_deposit=BROKER_DEPOSIT,
            batch_seconds=1.0,
            program=CHEATING_BROKER,
            extra=["--equivocate-batch", "1"],
        )
        url = procs.wait_ready(broker)
        scripts = {
            1: [open_step(TRADER_DEPOSIT, "server_initiative"), order_step(XAU, "buy", 1, 2010), WAIT_CONCLUDED],
            2: [open_step(TRADER_DEPOSIT, "cooperative"), order_step(XAU, "sell", 1, 1990), WAIT_CONCLUDED],
        }
        traders = [procs.trader(f"t{n}", n, url, tmp_path / f"t{n}.db", script) for n, script in scripts.items()]
        wait_all(traders, timeout=150)
        assert all(t.process.returncode == 0 for t in traders), procs.tails()

        assert "equivocated" in broker.out() + broker.err(), procs.tails()
        for trader in traders:
            summary = trader.summary()
            assert summary["status"] == "concluded", procs.tails()
            status = adjudicator.status(ChannelId(bytes.fromhex(summary["channel_id"][2:])))
            assert status.stage == Stage.CONCLUDED
        assert adjudicator.slashed_at(Address(dev_address(0))) is not None
        # every trader got its deposit back and the broker's: the broker kept nothing of either channel
        assert balances(token, scripts) == {n: MINT - TRADER_DEPOSIT + TRADER_DEPOSIT + BROKER_DEPOSIT for n in scripts}
        assert token.balance_of(deployment.adjudicator) == 0


def test_a_broker_that_challenges_with_a_stale_state_loses_to_the_traders_watchtower(
    anvil: Anvil, tmp_path: Path
) -> None:
    deployments = tmp_path / "deployments"
    with Processes(tmp_path / "logs", anvil.url, deployments) as procs:
        procs.deploy()
        chain = rpc_chain(anvil.url)
        deployment, adjudicator, token = procs.contracts(chain)
        store_args = ["--store", str(tmp_path / "wt.db"), "--port", "0", "--poll-seconds", "0.2"]
        watchtower = procs.spawn("watchtower", ["watchtower", *procs.node_args(WATCHTOWER), *store_args])
        watchtower_url = procs.wait_ready(watchtower)
        broker = procs.broker(tmp_path / "broker.db", channel_deposit=BROKER_DEPOSIT, batch_seconds=1.0)
        url = procs.wait_ready(broker)

        # The trader buys 1 oz of gold and goes offline; its watchtower holds every state it signed.
        buyer = procs.trader(
            "buyer",
            1,
            url,
            tmp_path / "buyer.db",
            [open_step(TRADER_DEPOSIT, "cooperative"), order_step(XAU, "buy", 1, 2010), wait_filled(1)],
            extra=["--watchtower", watchtower_url],
        )
        seller = procs.trader(
            "seller",
            2,
            url,
            tmp_path / "seller.db",
            [open_step(TRADER_DEPOSIT, "server_initiative"), order_step(XAU, "sell", 1, 1990), wait_filled(1)],
        )
        wait_all([buyer, seller], timeout=90)
        assert buyer.process.returncode == 0 and seller.process.returncode == 0, procs.tails()
        channel_id = ChannelId(bytes.fromhex(buyer.summary()["channel_id"][2:]))
        stop(broker)

        # The broker, from its own store, challenges with the last state before the buyer's fill.
        store = open_store(str(tmp_path / "broker.db"))
        try:
            params = next(r.params for r in store.channels() if r.channel_id == channel_id)
            newest = store.latest_co_signed(channel_id)
            assert newest is not None and newest.state.outcomes[0].position == units(1)
            stale = next(
                s
                for v in range(newest.state.version - 1, -1, -1)
                if (s := store.state(channel_id, v)) is not None and s.co_signed and s.state.outcomes[0].position == 0
            )
        finally:
            store.close()
        rogue = Transactor.from_key(chain, dev_key(0))
        adjudicator.challenge(rogue, params, CoSignedState(stale.state, stale.trader_signature, stale.broker_signature))  # type: ignore[arg-type]

        def status() -> OnChainChannel:
            return adjudicator.status(channel_id)

        wait_until(lambda: status().registered_version == newest.state.version, "the watchtower's refute", watchtower)
        chain.increase_time(status().deadline - chain.now())
        gold = PriceFeedClient(chain, deployment.feeds()["XAU / USD"])
        gold.push(rogue, 2_100 * 10**8)  # a fresh answer for the settlement: gold rose to $2,100
        wait_until(lambda: status().stage == Stage.CONCLUDED, "the watchtower's conclusion", watchtower)

        expected = payouts(
            params,
            newest.state,
            TRADER_DEPOSIT,
            BROKER_DEPOSIT,
            {XAU: OraclePrice(2_100 * 10**8, gold.decimals())},
            token.decimals(),
        )
        assert expected.to_trader > TRADER_DEPOSIT  # the position gained: the stale state would have lost it
        assert token.balance_of(Address(dev_address(1))) == MINT - TRADER_DEPOSIT + expected.to_trader
        log = watchtower.out()
        assert f"refuted: 0x{channel_id.hex()} with version {newest.state.version}" in log, watchtower.tail()
