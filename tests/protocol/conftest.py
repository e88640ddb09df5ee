"""Fixtures and helpers of the protocol tests.

Offline (no chain, for the message and ChannelParty tests): fixed keys, a domain, channel
parameters with two markets, and builders of signed orders and of one proposal of every kind.

On the in-process chain (for the broker and agent tests): ``net`` deploys the contracts once per
module; every test starts its own broker (a BrokerAgent on port 0 whose batches run only when the
test calls ``await broker.settle_batch(market)``) and its own traders, all with fresh keys, so
tests do not see each other's channels. There is no pytest-asyncio: a test is a plain function
that calls :func:`run` on its async body.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from eth_utils import keccak
from websockets.asyncio.client import ClientConnection, connect

from offchain.agents.broker import BrokerAgent, BrokerConfig
from offchain.agents.common import on_chain, sign_login
from offchain.agents.trader import TraderAgent, WatchtowerLink
from offchain.chain.client import OnChainChannel
from offchain.chain.connection import Chain, in_process_chain
from offchain.eip712 import Domain
from offchain.engine.channel import AccountDeposits, CancelOrder, CreateOrder, Fill, Finalize, Trade, apply, setup
from offchain.model import BatchPrice, ChannelParams, Market, Order
from offchain.protocol import messages as m
from offchain.sandbox import USD, Party, Sandbox
from offchain.signing import LocalSigner
from offchain.store import MemoryStore, Store
from offchain.types import (
    Address,
    BatchNumber,
    ExpirationHours,
    MarketId,
    Nonce,
    Price,
    Signature,
    SyntheticAmount,
    Timestamp,
    TokenAmount,
)

T = TypeVar("T")

GOLD = 1
BTC = 2
UNIT = 10**6  # both markets' resolution: synthetic base units per whole unit
GOLD_PRICE = 2_000 * USD
BTC_PRICE = 60_000 * USD


def fixed_key(label: str) -> bytes:
    return keccak(text=f"trading-channels protocol tests: {label}")


# --------------------------------------------------------------------------- offline world

CHAIN_ID = 31337
ADJUDICATOR = Address(LocalSigner(fixed_key("adjudicator")).address)
TOKEN = Address(LocalSigner(fixed_key("token")).address)
FEED_GOLD = Address(LocalSigner(fixed_key("feed gold")).address)
FEED_BTC = Address(LocalSigner(fixed_key("feed btc")).address)
DOMAIN = Domain(CHAIN_ID, ADJUDICATOR)
TRADER_KEY = LocalSigner(fixed_key("trader"))
BROKER_KEY = LocalSigner(fixed_key("broker"))
OUTSIDER_KEY = LocalSigner(fixed_key("outsider"))
OFFLINE_MARKETS = (
    Market(MarketId(GOLD), FEED_GOLD, UNIT, 2**32 // 10, 3600),
    Market(MarketId(BTC), FEED_BTC, UNIT, 2**32 // 10, 3600),
)


def offline_params(nonce: int = 1, trader: LocalSigner = TRADER_KEY, broker: LocalSigner = BROKER_KEY) -> ChannelParams:
    return ChannelParams(
        chain_id=CHAIN_ID,
        adjudicator=ADJUDICATOR,
        trader=trader.address,
        broker=broker.address,
        token=TOKEN,
        challenge_duration=3600,
        nonce=nonce,
        markets=OFFLINE_MARKETS,
    )


def make_order(
    params: ChannelParams,
    nonce: int,
    *,
    market: int = GOLD,
    is_buy: bool = True,
    amount_synthetic: int = UNIT,
    amount_collateral: int = 2_000 * USD,
    max_fee: int = 5 * USD,
    signer: LocalSigner = TRADER_KEY,
    domain: Domain = DOMAIN,
) -> tuple[Order, Signature]:
    """A limit order of ``params``'s trader, signed by ``signer`` (the trader unless told)."""
    order = Order(
        channel_id=params.channel_id,
        trader=params.trader,
        collateral=params.token,
        market=MarketId(market),
        is_buy=is_buy,
        amount_synthetic=SyntheticAmount(amount_synthetic),
        amount_collateral=TokenAmount(amount_collateral),
        max_fee=TokenAmount(max_fee),
        nonce=Nonce(nonce),
        expiration=ExpirationHours(int(time.time()) // 3600 + 24),
    )
    return order, signer.sign(domain, order)


def lock(
    params: ChannelParams, nonce: int, first_batch: int = 1, marks: dict[int, int] | None = None, **kw: Any
) -> CreateOrder:
    order, signature = make_order(params, nonce, **kw)
    return CreateOrder(order, signature, BatchNumber(first_batch), Timestamp(int(time.time())), dict(marks or {}))


def sample_proposals() -> list[m.Propose]:
    """One well-formed proposal of every kind, along one channel's history (signed by the broker;
    for the schema tests, not meant to be answered)."""
    params = offline_params(nonce=99)
    channel = setup(params)
    v0 = channel.state
    out = [m.Propose(params.channel_id, "setup", None, v0, BROKER_KEY.sign(DOMAIN, v0), params, "cooperative", "p0")]

    def step(kind: str, transition: Any) -> None:
        nonlocal channel
        result = apply(channel, transition)
        signature = BROKER_KEY.sign(DOMAIN, result.state)
        out.append(m.Propose(params.channel_id, kind, transition, result.state, signature, id=f"p{len(out)}"))
        channel = result.channel

    step("deposit", AccountDeposits(TokenAmount(5_000 * USD), TokenAmount(20_000 * USD)))
    step("lock", lock(params, 1, amount_collateral=2_010 * USD))
    step("lock", lock(params, 2, is_buy=False, amount_synthetic=UNIT // 2, amount_collateral=900 * USD))
    step("cancel", CancelOrder(Nonce(2)))
    price = BatchPrice(MarketId(GOLD), BatchNumber(1), Price(GOLD_PRICE))
    fill = Fill(Nonce(1), SyntheticAmount(UNIT // 2), TokenAmount(USD))
    step("trade", Trade(price, (fill,), Timestamp(int(time.time())), {GOLD: Price(GOLD_PRICE)}))
    step("finalize", Finalize({GOLD: Price(GOLD_PRICE)}))
    return out


# --------------------------------------------------------------------------- async plumbing


def run(body: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    """Run an async test body on a fresh event loop, with an overall time limit."""

    async def limited() -> T:
        return await asyncio.wait_for(body, timeout)

    return asyncio.run(limited())


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- the chain world


@dataclass
class Net:
    """The contracts deployed once on an in-process chain, and the two markets."""

    chain: Chain
    sb: Sandbox
    gold: Market
    btc: Market

    async def party(self, name: str, tokens: int) -> Party:
        """A fresh funded party (new key), created in the chain's thread gate."""
        return await on_chain(self.chain, self.sb.party, name, tokens)

    async def balance(self, address: Address) -> int:
        return await on_chain(self.chain, self.sb.token.balance_of, address)

    async def party_status(self, trader: TraderAgent) -> OnChainChannel:
        """Where the trader's channel stands on-chain."""
        return await on_chain(self.chain, self.sb.adjudicator.status, trader.channel_id)

    async def slashed_at(self, broker: Address) -> int | None:
        return await on_chain(self.chain, self.sb.adjudicator.slashed_at, broker)

    async def broker(
        self,
        tokens: int = 100_000 * USD,
        store: Store | None = None,
        cls: type[BrokerAgent] = BrokerAgent,
        **config: Any,
    ) -> BrokerAgent:
        """A started broker (of class ``cls``) with a fresh key; ``config`` overrides BrokerConfig's
        fields."""
        party = await self.party("broker", tokens)
        settings: dict[str, Any] = {
            "port": 0,
            "batch_seconds": 3600,
            "fee_bps": 10,
            "ack_timeout": 5,
            "channel_deposit": 20_000 * USD,
            "markets": (self.gold, self.btc),
            "reference_prices": {GOLD: GOLD_PRICE, BTC: BTC_PRICE},
        }
        settings.update(config)
        broker = cls(
            party.signer,
            store if store is not None else MemoryStore(),
            self.chain,
            self.sb.adjudicator.address,
            self.sb.token.address,
            BrokerConfig(**settings),
        )
        await broker.start()
        return broker

    async def trader(
        self,
        broker: BrokerAgent,
        flow: str | None = "cooperative",
        deposit: int = 5_000 * USD,
        *,
        tokens: int = 10_000 * USD,
        party: Party | None = None,
        store: Store | None = None,
        timeout: float = 10,
        slash_check_seconds: float = 30.0,
        watchtower: WatchtowerLink | None = None,
    ) -> TraderAgent:
        """A started trader (fresh key unless ``party``) with, unless ``flow`` is None, an open
        channel of that flow holding ``deposit``."""
        party = party or await self.party("trader", tokens)
        trader = TraderAgent(
            party.signer,
            store if store is not None else MemoryStore(),
            self.chain,
            url(broker),
            self.sb.adjudicator.address,
            timeout=timeout,
            slash_check_seconds=slash_check_seconds,
            watchtower=watchtower,
        )
        await trader.start()
        if flow is not None:
            await trader.open_channel(deposit, flow=flow)
        return trader


def url(broker: BrokerAgent) -> str:
    return f"ws://127.0.0.1:{broker.port}"


@pytest.fixture(scope="module")
def net() -> Net:
    chain = in_process_chain()
    sb = Sandbox.create(chain)
    return Net(chain, sb, sb.market("XAU / USD", GOLD), sb.market("BTC / USD", BTC))


# --------------------------------------------------------------------------- a raw protocol client


class RawClient:
    """A WebSocket client that speaks the protocol by hand (for refusals the agents never send)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen: list[m.Message] = []
        self.challenge: m.Challenge | None = None
        self.welcome: m.Welcome | None = None

    @classmethod
    async def connect(cls, broker: BrokerAgent, signer: LocalSigner | None = None) -> RawClient:
        """Connect; with ``signer``, answer the challenge and wait for the welcome."""
        client = cls(await connect(url(broker), max_size=m.MAX_MESSAGE_BYTES, open_timeout=5))
        challenge = m.parse(await asyncio.wait_for(client.ws.recv(), 5))
        assert isinstance(challenge, m.Challenge)
        client.challenge = challenge
        if signer is not None:
            await client.send(m.Hello(signer.address, sign_login(signer, challenge.broker, challenge.nonce)))
            welcome = m.parse(await asyncio.wait_for(client.ws.recv(), 5))
            assert isinstance(welcome, m.Welcome), welcome
            client.welcome = welcome
        return client

    async def send(self, message: m.Message | dict[str, Any] | str | bytes) -> None:
        if isinstance(message, dict):
            message = json.dumps(message)
        elif not isinstance(message, str | bytes):
            message = m.encode(message)
        await self.ws.send(message)

    async def recv(self, timeout: float = 5) -> m.Message:
        message = m.parse(await asyncio.wait_for(self.ws.recv(), timeout))
        self.seen.append(message)
        return message

    async def expect(self, predicate: Callable[[m.Message], bool], timeout: float = 5) -> m.Message:
        """The next message for which ``predicate`` holds (others are kept in ``seen``)."""
        deadline = time.monotonic() + timeout
        while True:
            message = await self.recv(max(0.01, deadline - time.monotonic()))
            if predicate(message):
                return message

    async def error(self, re: str, timeout: float = 5) -> m.ErrorReply:
        reply = await self.expect(lambda x: isinstance(x, m.ErrorReply) and x.re == re, timeout)
        assert isinstance(reply, m.ErrorReply)
        return reply

    async def ack(self, channel_id: bytes, version: int, timeout: float = 5) -> m.Ack:
        reply = await self.expect(
            lambda x: (
                (isinstance(x, m.Ack) and x.channel_id == channel_id and x.version == version)
                or (isinstance(x, m.ErrorReply) and x.channel_id == channel_id)
            ),
            timeout,
        )
        assert isinstance(reply, m.Ack), reply
        return reply

    async def close(self) -> None:
        await self.ws.close()

    stop = close
