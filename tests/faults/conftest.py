"""Fault injection around the agents (issue 6, "Faults").

In one process, on the in-process chain, like ``tests/protocol``:

- :class:`Proxy`: a loopback WebSocket proxy between a TraderAgent and a BrokerAgent that drops,
  duplicates or cuts frames by rule ("drop the 1st ``propose`` of kind ``lock`` going down",
  "duplicate every ``ack``", "close both sides right after forwarding a ``propose``");
- :class:`FlakyProvider`: the chain's provider, which raises ``ConnectionError`` for every request
  while ``down`` (a node that is unreachable for a while);
- :class:`FullDiskStore`: a SQLite store whose transactions fail with SQLite's own
  ``database or disk is full`` while ``full`` is set (the failure lands before COMMIT, as SQLite's
  does when it cannot grow the WAL);
- :class:`Clock`: a ``time`` module stand-in with an offset, patched into one agent module.

:func:`check_conservation` is run after every case.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time as real_time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from eth_tester import EthereumTester, PyEVMBackend
from web3 import EthereumTesterProvider, Web3
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from offchain.agents.broker import BrokerAgent
from offchain.agents.trader import TraderAgent
from offchain.agents.watchtower import Watchtower
from offchain.chain.connection import Chain
from offchain.protocol import messages as m
from offchain.protocol.party import ChannelParty
from offchain.sandbox import Sandbox
from offchain.store import MemoryStore, SQLiteStore, Store
from tests.protocol.conftest import BTC, GOLD, Net

UP = "up"  # trader -> broker
DOWN = "down"  # broker -> trader


# --------------------------------------------------------------------------- the chain


class FlakyProvider(EthereumTesterProvider):
    """The in-process chain behind a connection that fails every request while ``down``."""

    def __init__(self, tester: Any) -> None:
        super().__init__(tester)
        self.down = False
        self.refused = 0

    def make_request(self, method: Any, params: Any) -> Any:
        if self.down:
            self.refused += 1
            raise ConnectionError(f"node unreachable ({method})")
        return super().make_request(method, params)


@dataclass
class FaultNet(Net):
    provider: FlakyProvider = field(default=None)  # type: ignore[assignment]


@pytest.fixture(scope="package")
def net() -> FaultNet:
    """One chain and deployment for the whole package (every test uses fresh keys)."""
    provider = FlakyProvider(EthereumTester(PyEVMBackend()))
    chain = Chain(w3=Web3(provider), in_process=True)
    sb = Sandbox.create(chain)
    return FaultNet(chain, sb, sb.market("XAU / USD", GOLD), sb.market("BTC / USD", BTC), provider)


# --------------------------------------------------------------------------- the proxy


@dataclass
class Rule:
    """``action`` (drop, dup or cut) the ``nth`` frame (1-based; None: every one) of ``type``
    (None: any) going ``direction``; ``kind`` narrows a ``propose`` to one kind."""

    action: str
    direction: str
    type: str | None = None
    nth: int | None = None
    kind: str | None = None
    seen: int = 0
    fired: int = 0

    def matches(self, direction: str, frame: dict[str, Any]) -> bool:
        if direction != self.direction or (self.type is not None and frame.get("type") != self.type):
            return False
        if self.kind is not None and frame.get("kind") != self.kind:
            return False
        self.seen += 1
        return self.nth is None or self.seen == self.nth


class Proxy:
    """A WebSocket proxy on 127.0.0.1 that forwards every frame between one trader and the broker,
    except where a rule says otherwise. ``log`` keeps (direction, type, kind, action) per frame."""

    def __init__(self, upstream: str, rules: list[Rule] | None = None) -> None:
        self.upstream = upstream
        self.rules = list(rules or [])
        self.log: list[tuple[str, str, str, str]] = []
        self.connections = 0
        self.server: Server | None = None
        self._live: set[tuple[ServerConnection, ClientConnection]] = set()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = next(iter(self.server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    async def start(self) -> Proxy:
        self.server = await serve(self._serve, "127.0.0.1", 0, max_size=m.MAX_MESSAGE_BYTES)
        return self

    async def stop(self) -> None:
        await self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def cut(self) -> None:
        """Close every live connection on both sides (the trader reconnects on its own)."""
        for down, up in list(self._live):
            await asyncio.gather(down.close(), up.close(), return_exceptions=True)

    def fired(self, action: str) -> int:
        return sum(r.fired for r in self.rules if r.action == action)

    async def _serve(self, down: ServerConnection) -> None:
        try:
            up = await connect(self.upstream, max_size=m.MAX_MESSAGE_BYTES, open_timeout=5)
        except OSError:
            await down.close()
            return
        self.connections += 1
        pair = (down, up)
        self._live.add(pair)
        try:
            await asyncio.gather(self._pump(down, up, UP, pair), self._pump(up, down, DOWN, pair))
        finally:
            self._live.discard(pair)
            await asyncio.gather(down.close(), up.close(), return_exceptions=True)

    async def _pump(self, src: Any, dst: Any, direction: str, pair: Any) -> None:
        try:
            async for raw in src:
                try:
                    frame = json.loads(raw)
                except ValueError:
                    frame = {}
                frame = frame if isinstance(frame, dict) else {}
                action = "forward"
                for rule in self.rules:
                    if rule.matches(direction, frame):
                        rule.fired += 1
                        action = rule.action
                        break
                self.log.append((direction, str(frame.get("type")), str(frame.get("kind", "")), action))
                if action == "drop":
                    continue
                await dst.send(raw)
                if action == "dup":
                    await dst.send(raw)
                elif action == "cut":
                    await asyncio.gather(src.close(), dst.close(), return_exceptions=True)
                    return
        except ConnectionClosed:
            pass
        finally:
            await asyncio.gather(src.close(), dst.close(), return_exceptions=True)


# --------------------------------------------------------------------------- a full disk


class FullDiskStore(SQLiteStore):
    """SQLite whose outermost transactions fail with ``database or disk is full`` while ``full``
    is set (every write of the transaction is rolled back, as SQLite does); ``failures`` counts
    them."""

    full = False
    failures = 0
    countdown: int | None = None  # become full after this many more outermost transactions

    def full_after(self, transactions: int) -> None:
        self.countdown = transactions

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with super().transaction():
            yield
            if self.countdown is not None and self._depth == 1:
                if self.countdown == 0:
                    self.full, self.countdown = True, None
                else:
                    self.countdown -= 1
            if self.full and self._depth == 1:
                self.failures += 1
                raise sqlite3.OperationalError("database or disk is full")


class DiskFullDuring:
    """Makes ``store`` full while the next ``calls`` calls of ``target.name`` run (the disk fills
    up at that very moment, e.g. while a party stores a yield or a trade, and has room again
    right after); ``hits`` counts the calls that ran on a full disk."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, store: FullDiskStore, target: object, name: str, calls: int = 1
    ) -> None:
        self.hits = 0
        original = getattr(target, name)

        def full(*args: Any, **kw: Any) -> Any:
            if self.hits >= calls:
                return original(*args, **kw)
            self.hits += 1
            store.full = True
            try:
                return original(*args, **kw)
            finally:
                store.full = False

        monkeypatch.setattr(target, name, full)


# --------------------------------------------------------------------------- a clock that jumps


class Clock:
    """Stands in for the ``time`` module inside one agent module: ``time()`` is off by ``offset``."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return real_time.time() + self.offset

    def __getattr__(self, name: str) -> Any:
        return getattr(real_time, name)


# --------------------------------------------------------------------------- agents through a proxy


async def trader_via(
    net: Net,
    broker: BrokerAgent,
    proxy: Proxy,
    flow: str | None = "cooperative",
    deposit: int = 5_000 * 10**6,
    *,
    store: Store | None = None,
    timeout: float = 2.0,
    **kw: Any,
) -> TraderAgent:
    """A started trader that talks to ``broker`` through ``proxy``."""
    party = kw.pop("party", None) or await net.party("trader", 10_000 * 10**6)
    trader = TraderAgent(
        party.signer,
        store if store is not None else MemoryStore(),
        net.chain,
        proxy.url,
        net.sb.adjudicator.address,
        timeout=timeout,
        reconnect_delay=0.05,
        **kw,
    )
    await trader.start()
    if flow is not None:
        await trader.open_channel(deposit, flow=flow)
    return trader


async def settled(broker: BrokerAgent, trader: TraderAgent, timeout: float = 5.0) -> None:
    """Wait until both sides hold the same co-signed state with nothing pending."""
    deadline = real_time.monotonic() + timeout
    while True:
        tp, bp = trader.party, broker.parties.get(trader.channel_id)
        if (
            tp is not None
            and bp is not None
            and tp.pending is None
            and bp.pending is None
            and tp.co_signed == bp.co_signed
        ):
            return
        if real_time.monotonic() > deadline:
            raise AssertionError(
                f"not settled: trader v{tp and tp.co_signed.state.version} pending={tp and tp.pending is not None}, "
                f"broker v{bp and bp.co_signed.state.version} pending={bp and bp.pending is not None}"
            )
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- conservation


def signed_versions(party: ChannelParty) -> dict[int, bytes]:
    """version -> digest this party signed (its signature log), up to the latest stored state."""
    latest = party.store.latest_state(party.channel_id)
    top = latest.state.version if latest is not None else -1
    out = {}
    for version in range(top + 2):
        digest = party.store.signed_digest(party.channel_id, version)
        if digest is not None:
            out[version] = digest
    return out


def check_party(party: ChannelParty) -> None:
    """One side on its own: the store and memory agree, versions are gap-free and monotone, every
    stored state carrying our signature is the one the signature log names, and the log holds no
    version that the store lost (a signature that left without its state)."""
    cid = party.channel_id
    latest = party.store.latest_co_signed(cid)
    assert latest is not None
    assert latest.state == party.co_signed.state, "memory and store disagree on the co-signed state"
    assert party.channel.state.version == latest.state.version or party.pending is not None
    log = signed_versions(party)
    mine = "trader_signature" if party.role == "trader" else "broker_signature"
    for version in range(latest.state.version + 1):
        stored = party.store.state(cid, version)
        assert stored is not None, f"version {version} missing: versions must be gap-free"
        assert stored.co_signed, f"version {version} below the latest co-signed one is not co-signed"
        assert stored.state.version == version
        assert getattr(stored, mine) is not None
        assert log.get(version) == party.channel.domain.state_digest(stored.state), f"log of version {version}"
    for version, digest in log.items():
        stored = party.store.state(cid, version)
        assert stored is not None, f"version {version} was signed but never stored"
        assert party.channel.domain.state_digest(stored.state) == digest, f"version {version} signed twice"


def check_conservation(broker: BrokerAgent, trader: TraderAgent) -> None:
    """After a fault: both sides hold the same co-signed state with nothing pending, each side is
    sound on its own (:func:`check_party`), the co-signed histories are identical, and the
    balances sum to the deposits the state accounts for."""
    tp, bp = trader.party, broker.parties[trader.channel_id]
    assert tp is not None
    assert tp.pending is None and bp.pending is None, "a proposal is still pending"
    assert tp.co_signed == bp.co_signed, "the two sides hold different co-signed states"
    for party in (tp, bp):
        check_party(party)
    for version in range(tp.co_signed.state.version + 1):
        a, b = tp.store.state(tp.channel_id, version), bp.store.state(bp.channel_id, version)
        assert a is not None and b is not None and a.state == b.state, f"version {version} differs"
    balances = tp.co_signed.state.balances
    total = balances.trader_available + balances.trader_locked + balances.broker_available + balances.broker_locked
    assert total == balances.trader_deposit + balances.broker_deposit or tp.co_signed.state.version == 0


def kinds(agent: TraderAgent | BrokerAgent | Watchtower) -> list[str]:
    return [kind for kind, _ in agent.events]
