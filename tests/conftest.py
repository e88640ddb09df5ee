"""Shared fixtures.

``world`` deploys the contracts once per test session on the in-process chain; the ``w`` fixture
wraps every test in a chain snapshot, so tests are isolated and may change anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from eth_utils import keccak

from offchain.chain.connection import Chain, in_process_chain
from offchain.eip712 import Domain
from offchain.model import ChannelParams, ChannelState
from offchain.sandbox import USD, Party, Sandbox, plain_state
from offchain.signing import CoSignedState, co_sign

GOLD = "XAU / USD"
BTC = "BTC / USD"
TRADER_DEPOSIT = 1_000 * USD
BROKER_DEPOSIT = 5_000 * USD


def fixed_key(label: str) -> bytes:
    return keccak(text=f"trading-channels tests: {label}")


@dataclass
class World:
    chain: Chain
    sb: Sandbox
    trader: Party
    broker: Party
    outsider: Party
    watchtower: Party

    def params(self, markets: int = 0, challenge_duration: int = 24 * 3600) -> ChannelParams:
        """Fresh channel parameters between trader and broker with ``markets`` markets
        (gold, BTC, gold, ... with ids 1, 2, 3, ...)."""
        feeds = [GOLD, BTC]
        chosen = tuple(self.sb.market(feeds[i % 2], i + 1) for i in range(markets))
        return self.sb.channel_params(self.trader, self.broker, chosen, challenge_duration)

    def sign(self, state: ChannelState) -> CoSignedState:
        """Both parties sign ``state``."""
        return co_sign(state, (self.trader.state_signer, self.broker.state_signer))

    def sign_unchecked(self, state: ChannelState, domain: Domain | None = None) -> CoSignedState:
        """Both parties sign ``state`` straight from its digest: no bound checks and no double-sign
        log, so that adversarial tests can reach the contract's own checks with out-of-range states
        or sign two states with the same version."""
        digest = (domain or self.sb.domain).state_digest(state)
        return CoSignedState(state, self.trader.signer.sign_digest(digest), self.broker.signer.sign_digest(digest))

    def fund(
        self, params: ChannelParams, trader_deposit: int = TRADER_DEPOSIT, broker_deposit: int = BROKER_DEPOSIT
    ) -> None:
        if trader_deposit:
            self.sb.adjudicator.deposit(self.trader.transactor, params, self.trader.address, trader_deposit)
        if broker_deposit:
            self.sb.adjudicator.deposit(self.broker.transactor, params, self.broker.address, broker_deposit)

    def open_channel(self, markets: int = 0, challenge_duration: int = 24 * 3600) -> ChannelParams:
        """A channel whose version-0 state accounts for TRADER_DEPOSIT and BROKER_DEPOSIT, funded."""
        params = self.params(markets, challenge_duration)
        self.fund(params)
        return params

    def plain(
        self, params: ChannelParams, version: int, trader_available: int | None = None, final: bool = False
    ) -> ChannelState:
        return plain_state(params, version, TRADER_DEPOSIT, BROKER_DEPOSIT, trader_available, final)

    def balance(self, party: Party) -> int:
        return self.sb.token.balance_of(party.address)


@pytest.fixture(scope="session")
def world() -> World:
    chain = in_process_chain()
    sb = Sandbox.create(chain, deployer_key=chain.dev_private_keys()[0])
    sb.push_price(GOLD, 2_000 * 10**8)
    sb.push_price(BTC, 60_000 * 10**8)
    return World(
        chain=chain,
        sb=sb,
        trader=sb.party("trader", tokens=1_000_000 * USD, key=fixed_key("trader")),
        broker=sb.party("broker", tokens=1_000_000 * USD, key=fixed_key("broker")),
        outsider=sb.party("outsider", tokens=1_000_000 * USD, key=fixed_key("outsider")),
        watchtower=sb.party("watchtower", key=fixed_key("watchtower")),
    )


@pytest.fixture
def w(world: World) -> Iterator[World]:
    """The session's world, rolled back after the test."""
    snapshot = world.chain.snapshot()
    try:
        yield world
    finally:
        world.chain.revert(snapshot)
