"""``tchan watchtower`` as its own process on a real anvil node: the test hands it a channel's
newest co-signed state through WatchtowerClient, the broker (a key in the test) challenges with
a stale state, and the watchtower refutes, then concludes after the deadline, on its own. It is
then stopped and started again on its store while a second dispute runs, and still answers."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from offchain.agents.watchtower import WatchtowerClient
from offchain.chain.client import AdjudicatorClient, OnChainChannel, Stage, TokenClient
from offchain.chain.connection import Chain, Transactor, rpc_chain
from offchain.localnet import Anvil, free_port
from offchain.model import ChannelParams
from offchain.sandbox import plain_state
from offchain.signing import CoSignedState, LocalSigner, StateSigner, co_sign
from offchain.types import Address
from tests.e2e.trading_helpers import MINT, USD, Proc, Processes, dev_address, dev_key, stop, wait_until

pytestmark = [pytest.mark.anvil, pytest.mark.slow]

TRADER, BROKER, WATCHTOWER = 1, 2, 5
TRADER_DEPOSIT = 1_000 * USD
BROKER_DEPOSIT = 4_000 * USD
DURATION = 3600  # the shortest challenge duration the adjudicator allows


class Channel:
    """One funded channel between dev accounts TRADER and BROKER, and its co-signed states."""

    def __init__(self, chain: Chain, adjudicator: AdjudicatorClient, token: TokenClient) -> None:
        self.chain, self.adjudicator = chain, adjudicator
        self.trader = Transactor.from_key(chain, dev_key(TRADER))
        self.broker = Transactor.from_key(chain, dev_key(BROKER))
        self.params = ChannelParams(
            chain_id=chain.chain_id,
            adjudicator=adjudicator.address,
            trader=self.trader.address,
            broker=self.broker.address,
            token=token.address,
            challenge_duration=DURATION,
            nonce=int.from_bytes(os.urandom(8), "big"),
            markets=(),
        )
        self.signers = [StateSigner(LocalSigner(dev_key(n)), adjudicator.domain) for n in (TRADER, BROKER)]
        for sender, amount in ((self.trader, TRADER_DEPOSIT), (self.broker, BROKER_DEPOSIT)):
            token.approve(sender, adjudicator.address, amount)
            adjudicator.deposit(sender, self.params, sender.address, amount)

    def state(self, version: int, trader_gets: int) -> CoSignedState:
        state = plain_state(self.params, version, TRADER_DEPOSIT, BROKER_DEPOSIT, trader_gets)
        return co_sign(state, self.signers)

    def status(self) -> OnChainChannel:
        return self.adjudicator.status(self.params.channel_id)


def guard(url: str, channel: Channel, signed: CoSignedState) -> None:
    async def deliver() -> None:
        client = WatchtowerClient(url, reconnect_delay=0.1)
        await client.start()
        try:
            client.watch(channel.params, signed)
            await client.flush(15)
            assert client.acknowledged == {channel.params.channel_id: signed.state.version}, client.refused
        finally:
            await client.stop()

    asyncio.run(deliver())


def dispute(chain: Chain, channel: Channel, proc: Proc, newest: int) -> None:
    """The broker challenges with version 1; the watchtower must refute with ``newest`` and
    conclude once the deadline has passed."""
    channel.adjudicator.challenge(channel.broker, channel.params, channel.state(1, 0))
    wait_until(lambda: channel.status().registered_version == newest, f"the refute with v{newest}", proc)
    deadline = channel.status().deadline
    assert channel.status().stage == Stage.DISPUTED
    chain.increase_time(deadline - chain.now())  # anvil: evm_setNextBlockTimestamp + evm_mine
    wait_until(lambda: channel.status().stage == Stage.CONCLUDED, "the conclusion", proc)


def test_the_watchtower_process_refutes_and_concludes_on_its_own(anvil: Anvil, tmp_path: Path) -> None:
    chain = rpc_chain(anvil.url)
    deployments = tmp_path / "deployments"
    with Processes(tmp_path / "logs", anvil.url, deployments) as procs:
        procs.deploy()
        _deployment, adjudicator, token = procs.contracts(chain)
        store, port = tmp_path / "wt.db", free_port()
        args = ["watchtower", *procs.node_args(WATCHTOWER), "--store", str(store), "--port", str(port)]
        args += ["--poll-seconds", "0.2"]
        first = procs.spawn("watchtower", args)
        url = procs.wait_ready(first)
        assert url == f"ws://127.0.0.1:{port}"
        assert f"watchtower {dev_address(WATCHTOWER)} ready on {url}" in first.out()

        channel = Channel(chain, adjudicator, token)
        guard(url, channel, channel.state(3, TRADER_DEPOSIT + 250 * USD))
        dispute(chain, channel, first, newest=3)
        trader, broker = Address(dev_address(TRADER)), Address(dev_address(BROKER))
        assert token.balance_of(trader) == MINT + 250 * USD
        assert token.balance_of(broker) == MINT - 250 * USD
        wait_until(lambda: "done: 0x" in first.out(), "the watchtower to finish", first)
        log = first.out()
        assert f"refuted: 0x{channel.params.channel_id.hex()} with version 3" in log
        assert f"concluded: 0x{channel.params.channel_id.hex()}" in log

        # Stopped and started again on its store, it still guards the channels it holds.
        second_channel = Channel(chain, adjudicator, token)
        guard(url, second_channel, second_channel.state(4, TRADER_DEPOSIT - 100 * USD))
        stop(first)
        assert first.process.returncode == 0, first.tail()
        second = procs.spawn("watchtower-restarted", args)
        assert procs.wait_ready(second) == url
        dispute(chain, second_channel, second, newest=4)
        assert token.balance_of(trader) == MINT + 150 * USD
        assert token.balance_of(broker) == MINT - 150 * USD
