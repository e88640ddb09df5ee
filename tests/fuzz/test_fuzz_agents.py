"""Hostile frames against the agents' message handling, in-process and without sockets: the
broker's ``BrokerAgent._handle`` and the trader's ``TraderAgent._handle`` with a fake connection
that records what they send, and the watchtower's ``Watchtower.handle``. The agents run offline
(a Web3 without a node; the broker's reads of the adjudicator are stubbed).

Property: nothing escapes the handler; everything it sends is a valid message; and when it answers
with an error, its channels, its store and its books are exactly as before."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypothesis import given
from web3 import Web3

from offchain.agents.broker import BrokerAgent, BrokerConfig
from offchain.agents.trader import TraderAgent
from offchain.agents.watchtower import Watchtower, WatchtowerConfig
from offchain.chain.client import OnChainChannel, RegistrationKind, Stage
from offchain.chain.connection import Chain
from offchain.model import BatchPrice
from offchain.protocol import messages as m
from offchain.protocol import watch as wm
from offchain.protocol.party import BROKER, TRADER
from offchain.signing import CoSignedState, LocalSigner
from offchain.types import BatchNumber, ChannelId, MarketId, Price, Signature, Timestamp, TokenAmount
from tests.fuzz import helpers as h
from tests.fuzz.test_fuzz_party import SCENES, Scene, sign_as
from tests.protocol.conftest import (
    ADJUDICATOR,
    BROKER_KEY,
    CHAIN_ID,
    DOMAIN,
    GOLD,
    GOLD_PRICE,
    OFFLINE_MARKETS,
    TOKEN,
    TRADER_KEY,
    fixed_key,
    make_order,
)

LOOP = h.Loop()


def offline_chain() -> Chain:
    return Chain(w3=Web3(), in_process=False, url="offline", _chain_id=CHAIN_ID)


def _status(channel_id: ChannelId) -> OnChainChannel:
    return OnChainChannel(
        channel_id, Stage.OPEN, TokenAmount(5_000 * 10**6), TokenAmount(20_000 * 10**6), Timestamp(0),
        Timestamp(0), RegistrationKind.NONE, None, 0,
    )  # fmt: skip


def _merged_store(scenes: list[Scene]) -> Any:
    """One store holding the channels of several scenes (of one role)."""
    store = h.clone_store(scenes[0].store)
    for scene in scenes[1:]:
        other = h.store_snapshot(scene.store)
        for key, value in other.items():
            mine = getattr(store, key)
            if isinstance(mine, dict):
                for k, v in value.items():
                    mine.setdefault(k, v)
    return store


def _agent_view(agent: Any) -> tuple[Any, ...]:
    parties = agent.parties.values() if isinstance(agent, BrokerAgent) else [agent.party]
    return (
        h.store_snapshot(agent.store),
        [
            (p.state, p.co_signed, p.pending[0] if p.pending else None, p.turn, p.status, p.channel.used_nonces)
            for p in parties
            if p is not None
        ],
        sorted(getattr(agent, "unresponsive", ())),
        {k: (b.open_batch, b.last_price) for k, b in getattr(agent, "books", {}).items()},
        dict(getattr(agent, "marks", {})) if isinstance(agent, TraderAgent) else None,
    )


async def _drive(agent: Any, ws: h.FakeConnection, raw: str | bytes, *args: Any) -> None:
    await agent._handle(ws, *args, raw)
    for _ in range(3):
        await asyncio.sleep(0)
    for task in getattr(agent, "_background", ()):  # the trader's on-chain proofs: not offline
        task.cancel()
    tasks = [t for t in getattr(agent, "_tasks", ()) if not t.done()]
    tasks += [t for t in getattr(agent, "deposit_tasks", {}).values() if not t.done()]
    if tasks:
        await asyncio.wait(tasks, timeout=2)
    for task in tasks:
        if not task.done():
            task.cancel()
        elif not task.cancelled() and task.exception() is not None:
            h.assert_typed(task.exception())  # type: ignore[arg-type]


class Harness:
    """An agent rebuilt from its template store whenever a message was accepted."""

    def __init__(self, build: Any) -> None:
        self.build = build
        self.agent: Any = None

    def get(self) -> Any:
        if self.agent is None:
            self.agent = self.build()
        return self.agent

    def run(self, raw: str | bytes, *args: Any) -> None:
        agent = self.get()
        ws = h.FakeConnection()
        if isinstance(agent, BrokerAgent):
            agent.connections[TRADER_KEY.address] = {ws}  # type: ignore[assignment]
        before = _agent_view(agent)
        try:
            LOOP.run(_drive(agent, ws, raw, *args))
        except Exception as exc:
            self.agent = None
            raise AssertionError(f"{type(exc).__name__} escaped the handler: {exc!r}") from exc
        replies = [m.parse(text) for text in ws.sent]  # everything sent is a valid message
        errors = [r for r in replies if isinstance(r, m.ErrorReply)]
        if errors and len(errors) == len(replies):
            assert _agent_view(agent) == before, f"refused ({errors[0].code}) but changed: {errors[0].reason}"
        if _agent_view(agent) != before or len(errors) != len(replies):
            self.agent = None  # accepted: start again from the template


# --------------------------------------------------------------------------- broker

BROKER_SCENES = [s for s in SCENES if s.role == BROKER]
BROKER_STORE = _merged_store(BROKER_SCENES)
BROKER_STORE.put_meta("broker.market", str(GOLD), {"open_batch": 2, "last_price": GOLD_PRICE, "priced": True})


def _build_broker() -> BrokerAgent:
    config = BrokerConfig(port=0, ack_timeout=0.01, markets=OFFLINE_MARKETS, reference_prices={GOLD: GOLD_PRICE})
    broker = BrokerAgent(BROKER_KEY, h.clone_store(BROKER_STORE), offline_chain(), ADJUDICATOR, TOKEN, config)
    broker.adjudicator.status = _status  # type: ignore[method-assign]
    return broker


def _broker_seeds() -> list[Any]:
    seeds: list[m.Message] = []
    for scene in BROKER_SCENES:
        seeds += scene.seeds
        cid = ChannelId(scene.cid)
        order, signature = make_order(_build_params(scene), 9)
        seeds += [
            m.CreateOrderRequest(cid, order, signature, id="co"),
            m.CancelOrderRequest(cid, order.nonce, id="cx"),
            m.RequestDeposit(cid, id="rd"),
            m.RequestFinalize(cid, id="rf"),
            m.Resume(cid, id="re"),
            m.RequestYield(cid, id="ry"),
            m.ErrorReply("x", m.RULE_VIOLATION, "no", "order_is_open", cid, id="e"),
            m.Notice(m.UNRESPONSIVE, "hello"),
        ]
    seeds += [m.RequestSetup(5, 3600, id="rs"), m.Hello(TRADER_KEY.address, Signature(bytes(65)))]
    return [m.to_json(s) for s in seeds]


def _build_params(scene: Scene) -> Any:
    record = scene.store.channel(scene.cid)
    assert record is not None
    return record.params


BROKER_SEEDS = _broker_seeds()
BROKER = Harness(_build_broker)


def _maybe_resigned(rng: random.Random, raw: str | bytes, key: LocalSigner) -> str | bytes:
    """Often, a proposal that parses is re-signed by the sender's real key (to reach the rules)."""
    if rng.random() < 0.5:
        try:
            message = m.parse(raw)
        except m.ProtocolError:
            return raw
        if isinstance(message, m.Propose):
            return m.encode(sign_as(key, message))
    return raw


@h.fuzz_settings("BrokerAgent._handle")
@given(seed=h.SEEDS)
def test_broker_handle(seed: int) -> None:
    for rng in h.cases(seed):
        raw = _maybe_resigned(rng, h.mutated_frame(rng, BROKER_SEEDS), TRADER_KEY)
        with h.count("BrokerAgent._handle"):
            BROKER.run(raw, TRADER_KEY.address)


# --------------------------------------------------------------------------- trader

TRADER_SCENES = [s for s in SCENES if s.role == TRADER]


def _build_trader(scene: Scene) -> TraderAgent:
    trader = TraderAgent(TRADER_KEY, h.clone_store(scene.store), offline_chain(), "ws://127.0.0.1:9", ADJUDICATOR)
    trader.adjudicator.status = _status  # type: ignore[method-assign]
    trader.welcome = m.Welcome(
        BROKER_KEY.address, CHAIN_ID, ADJUDICATOR, TOKEN, OFFLINE_MARKETS, 2, 10, {GOLD: 2}, (ChannelId(scene.cid),)
    )
    return trader


def _trader_seeds(scene: Scene) -> list[Any]:
    price = BatchPrice(MarketId(GOLD), BatchNumber(1), Price(GOLD_PRICE))
    other = dataclasses.replace(price, price=Price(GOLD_PRICE + 1))
    seeds: list[m.Message] = [
        *scene.seeds,
        m.BatchPriceMessage(price, BROKER_KEY.sign(DOMAIN, price)),
        m.BatchPriceMessage(other, BROKER_KEY.sign(DOMAIN, other)),  # a second price: the broker equivocates
        m.RequestYield(ChannelId(scene.cid)),
        m.Notice(m.BROKER_DEPOSITED, "done", ChannelId(scene.cid)),
        m.ErrorReply("t1", m.STALE_VERSION, "no", None, ChannelId(scene.cid)),
        m.Challenge(bytes(32), BROKER_KEY.address),
    ]
    return [m.to_json(s) for s in seeds]


TRADERS = [(Harness(lambda s=s: _build_trader(s)), _trader_seeds(s)) for s in TRADER_SCENES]


@h.fuzz_settings("TraderAgent._handle")
@given(seed=h.SEEDS)
def test_trader_handle(seed: int) -> None:
    for rng in h.cases(seed):
        harness, seeds = rng.choice(TRADERS)
        raw = _maybe_resigned(rng, h.mutated_frame(rng, seeds), BROKER_KEY)
        with h.count("TraderAgent._handle"):
            harness.run(raw)


# --------------------------------------------------------------------------- watchtower

WATCHTOWER_KEY = LocalSigner(fixed_key("fuzz watchtower"))


def _co_signed(scene: Scene, version: int) -> CoSignedState:
    stored = scene.store.state(scene.cid, version)
    assert stored is not None
    digest = DOMAIN.state_digest(stored.state)
    return CoSignedState(stored.state, TRADER_KEY.sign_digest(digest), BROKER_KEY.sign_digest(digest))


def _build_watchtower() -> Watchtower:
    tower = Watchtower(WATCHTOWER_KEY, h.clone_store(WATCH_TEMPLATE), offline_chain(), ADJUDICATOR, WatchtowerConfig())
    return tower


def _watch_template() -> Any:
    from offchain.store import MemoryStore

    store = MemoryStore()
    tower = Watchtower(WATCHTOWER_KEY, store, offline_chain(), ADJUDICATOR, WatchtowerConfig())
    scene = TRADER_SCENES[0]
    tower.guard(_build_params(scene), _co_signed(scene, 2))
    return store


WATCH_TEMPLATE = _watch_template()


def _watch_seeds() -> list[Any]:
    seeds: list[wm.WatchMessage] = []
    for scene in TRADER_SCENES[:2]:
        params = _build_params(scene)
        seeds += [wm.watch_message(params, _co_signed(scene, v), f"w{v}") for v in range(5)]
    price = BatchPrice(MarketId(GOLD), BatchNumber(1), Price(GOLD_PRICE))
    other = dataclasses.replace(price, price=Price(GOLD_PRICE + 1))
    seeds += [
        wm.WatchPrice(BROKER_KEY.address, price, BROKER_KEY.sign(DOMAIN, price), "p1"),
        wm.WatchPrice(BROKER_KEY.address, other, BROKER_KEY.sign(DOMAIN, other), "p2"),
        wm.WatchAck("w", ChannelId(TRADER_SCENES[0].cid), 3),  # type: ignore[arg-type]
        m.ErrorReply("x", m.INVALID_MESSAGE, "no"),
    ]
    return [wm.to_json(s) for s in seeds]


WATCH_SEEDS = _watch_seeds()
TOWER: list[Watchtower] = []


def _watch_view(tower: Watchtower) -> tuple[Any, ...]:
    return (
        h.store_snapshot(tower.store),  # type: ignore[arg-type]
        {cid: (g.newest, dict(g.meta)) for cid, g in tower._channels.items()},
        dict(tower._price_generation),
    )


@h.fuzz_settings("Watchtower.handle")
@given(seed=h.SEEDS)
def test_watchtower_handle(seed: int) -> None:
    for rng in h.cases(seed):
        raw = h.mutated_frame(rng, WATCH_SEEDS)
        if rng.random() < 0.5:  # re-sign a watch that parses with both real keys (to reach guard)
            try:
                message = wm.parse(raw)
            except m.ProtocolError:
                message = None
            if isinstance(message, wm.Watch):
                digest = DOMAIN.state_digest(message.state)
                raw = wm.encode(
                    dataclasses.replace(
                        message,
                        trader_signature=TRADER_KEY.sign_digest(digest),
                        broker_signature=BROKER_KEY.sign_digest(digest),
                    )
                )
        with h.count("Watchtower.handle"):
            if not TOWER:
                TOWER.append(_build_watchtower())
            tower = TOWER[0]
            before = _watch_view(tower)
            try:
                reply = tower.handle(raw)
            except Exception as exc:
                TOWER.clear()
                raise AssertionError(f"{type(exc).__name__} escaped Watchtower.handle: {exc!r}") from exc
            assert wm.parse(wm.encode(reply)) == reply
            if isinstance(reply, m.ErrorReply):
                assert _watch_view(tower) == before, f"refused ({reply.code}) but changed: {reply.reason}"
            elif _watch_view(tower) != before:
                TOWER.clear()


TRADER_CRASH = """
import asyncio
from tests.fuzz import test_fuzz_agents as t
from tests.fuzz import helpers as h
agent = t._build_trader(t.TRADER_SCENES[0])
raw = '{"v":1,"type":"ack","x":' + "[" * 100_000 + "]" * 100_000 + "}"
t.LOOP.run(t._drive(agent, h.FakeConnection(), raw))
print("refused")
"""


def test_trader_survives_a_deeply_nested_frame() -> None:
    """Regression: a 200 KB frame nested 100,000 deep is refused by parse (too many brackets), and
    the trader's error reply reads its channel id within the same bounds (TraderAgent._channel_of
    uses load_frame). It used to use a plain json.loads, which recursed past the C stack: the
    trader process died with SIGSEGV. Run in a subprocess for that reason."""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", TRADER_CRASH], capture_output=True, text=True, timeout=120, cwd=root)
    assert out.returncode == 0 and "refused" in out.stdout, (out.returncode, out.stderr[-500:])
