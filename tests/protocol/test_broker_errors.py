"""The broker over a real socket, refusing what a raw client sends by hand.

Channels are opened by a TraderAgent, which is then stopped; a raw client logs in with the same
key and drives the trader's ChannelParty (loaded by the agent) to build its messages. After every
refusal the broker's side of the channel must be unchanged."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from offchain.agents.broker import BrokerAgent
from offchain.agents.common import sign_login
from offchain.agents.trader import TraderAgent
from offchain.engine.channel import AccountDeposits, CreateOrder, Fill, Trade, Transition, apply, setup
from offchain.model import BatchPrice
from offchain.protocol import messages as m
from offchain.protocol.party import ChannelParty
from offchain.signing import LocalSigner, malleate
from offchain.types import (
    BatchNumber,
    ChannelId,
    MarketId,
    Nonce,
    Price,
    Signature,
    SyntheticAmount,
    Timestamp,
    TokenAmount,
)
from tests.protocol.conftest import GOLD, USD, Net, RawClient, eventually, make_order, run

# --------------------------------------------------------------------------- helpers


@dataclasses.dataclass
class Opened:
    broker: BrokerAgent
    agent: TraderAgent  # stopped; its party and store are the raw client's now
    client: RawClient

    @property
    def party(self) -> ChannelParty:
        assert self.agent.party is not None
        return self.agent.party

    @property
    def cid(self) -> ChannelId:
        return self.party.channel_id

    @property
    def theirs(self) -> ChannelParty:
        return self.broker.party(self.cid)


async def opened(net: Net, flow: str, broker: BrokerAgent | None = None, deposit: int = 5_000 * USD) -> Opened:
    """A broker (new unless given) and a channel of ``flow`` opened by a TraderAgent that is then
    stopped; a raw client is logged in with the trader's key."""
    broker = broker or await net.broker()
    agent = await net.trader(broker, flow, deposit)
    await agent.stop()
    client = await RawClient.connect(broker, agent.signer)
    assert client.welcome is not None and client.welcome.channels == (agent.channel_id,)
    return Opened(broker, agent, client)


def broker_view(broker: BrokerAgent, cid: bytes) -> tuple[Any, ...]:
    party = broker.party(cid)
    store = broker.store
    return (
        party.state,
        party.co_signed,
        party.pending[0] if party.pending else None,
        party.turn,
        party.status,
        party.channel.used_nonces,
        store.latest_state(cid),
        store.latest_co_signed(cid),
        store.pending(cid),
    )


async def refused(
    o: Opened, message: m.Message | dict[str, Any] | str, code: str, rule: str | None = None, re: str | None = None
) -> m.ErrorReply:
    """Send ``message``; the broker answers ``code`` (and ``rule``) and its channel is unchanged."""
    before = broker_view(o.broker, o.cid)
    if re is None:
        re = getattr(message, "id", None) or (message.get("id", "") if isinstance(message, dict) else "")
    await o.client.send(message)
    reply = await o.client.error(re)
    assert reply.code == code, reply
    if rule is not None:
        assert reply.rule == rule, reply
    assert broker_view(o.broker, o.cid) == before
    return reply


async def take_turn(o: Opened) -> None:
    """Cooperative flow: ask for the turn and take it."""
    await o.client.send(m.RequestYield(o.cid, id="turn"))
    grant = await o.client.expect(lambda x: isinstance(x, m.Yield) and x.channel_id == o.cid)
    assert isinstance(grant, m.Yield)
    o.party.on_yield(grant)
    assert o.party.my_turn() and o.theirs.turn == "trader"


async def propose(o: Opened, kind: str, transition: Transition, message_id: str) -> tuple[m.Propose, m.Ack]:
    """Propose through the trader's party and wait for the broker's ACK."""
    proposal, _ = o.party.propose(kind, transition)
    proposal = dataclasses.replace(proposal, id=message_id)
    await o.client.send(proposal)
    ack = await o.client.ack(o.cid, proposal.state.version)
    o.party.on_ack(ack)
    return proposal, ack


def forged(o: Opened, kind: str, transition: Transition, key: LocalSigner | None = None, **changes: Any) -> m.Propose:
    """A proposal from the party's current state, signed directly by ``key`` (default: the
    trader), bypassing turn and signature log; ``changes`` replace fields of the state."""
    state = apply(o.party.channel, transition).state
    if changes:
        state = dataclasses.replace(state, **changes)
    key = key or o.agent.signer
    signature = key.sign_digest(o.party.channel.domain.state_digest(state))
    return m.Propose(o.cid, kind, transition, state, signature, id=f"forged-{kind}")


def order_lock(o: Opened, nonce: int, first_batch: int | None = None, signer: LocalSigner | None = None) -> CreateOrder:
    order, signature = make_order(o.party.params, nonce, signer=signer or o.agent.signer, domain=o.party.channel.domain)
    batch = o.broker.books[GOLD].open_batch if first_batch is None else first_batch
    return CreateOrder(order, signature, BatchNumber(batch), Timestamp(int(time.time())), o.broker.marks())


async def finish(*agents_or_brokers: Any) -> None:
    for x in agents_or_brokers:
        await x.stop()


# --------------------------------------------------------------------------- login


def test_first_message_must_be_hello(net: Net) -> None:
    async def body() -> None:
        broker = await net.broker()
        for first in (m.Resume(ChannelId(bytes(32)), id="r1"), m.RequestSetup(1, 3600, id="r2")):
            client = await RawClient.connect(broker)
            await client.send(first)
            reply = await client.recv()
            assert isinstance(reply, m.ErrorReply) and reply.code == m.NOT_AUTHENTICATED
            with pytest.raises(ConnectionClosed):
                await client.recv()
        # a malformed first message is refused too, and the socket closes
        client = await RawClient.connect(broker)
        await client.send("{nope")
        reply = await client.recv()
        assert isinstance(reply, m.ErrorReply) and reply.code == m.INVALID_MESSAGE
        with pytest.raises(ConnectionClosed):
            await client.recv()
        await broker.stop()

    run(body())


def test_hello_signed_by_another_key(net: Net) -> None:
    async def body() -> None:
        broker = await net.broker()
        me, other = LocalSigner.generate(), LocalSigner.generate()
        wrong: list[Callable[[m.Challenge], Signature]] = [
            lambda c: sign_login(other, c.broker, c.nonce),  # another key
            lambda c: sign_login(me, c.broker, os.urandom(32)),  # another challenge (a replayed login)
            lambda c: sign_login(me, me.address, c.nonce),  # for another broker
            lambda c: malleate(sign_login(me, c.broker, c.nonce)),
            lambda c: Signature(bytes(65)),
        ]
        for make in wrong:
            client = await RawClient.connect(broker)
            assert client.challenge is not None
            await client.send(m.Hello(me.address, make(client.challenge)))
            reply = await client.recv()
            assert isinstance(reply, m.ErrorReply) and reply.code == m.AUTH_FAILED, reply
            with pytest.raises(ConnectionClosed):
                await client.recv()
        client = await RawClient.connect(broker, me)  # the right one is welcome
        assert client.welcome is not None and client.welcome.broker == broker.address
        await client.close()
        await broker.stop()

    run(body())


# --------------------------------------------------------------------------- malformed and misdirected


def test_malformed_and_unknown_messages(net: Net) -> None:
    async def body() -> None:
        o = await opened(net, "cooperative")
        await refused(o, "{not json", m.INVALID_MESSAGE, re="")
        await refused(o, "[1, 2]", m.INVALID_MESSAGE, re="")
        await refused(o, {"v": 2, "type": "resume", "channel_id": "0x" + o.cid.hex()}, m.UNSUPPORTED_VERSION, re="")
        await refused(o, {"v": 1, "type": "bogus", "id": "u1"}, m.UNKNOWN_TYPE, re="")
        ack = m.to_json(m.Ack(o.cid, 1, Signature(bytes(65)), id="n1"))
        ack["version"] = 1  # a number, not a decimal string
        await refused(o, ack, m.INVALID_MESSAGE, re="")
        # well-formed messages a broker does not take
        await refused(
            o,
            m.Welcome(o.broker.address, 1, o.broker.address, o.broker.address, (), 1, 0, {}, (), id="w"),
            m.UNKNOWN_TYPE,
        )
        await refused(o, m.Challenge(bytes(32), o.broker.address, id="c"), m.UNKNOWN_TYPE)
        await refused(o, m.Hello(o.agent.address, Signature(bytes(65)), id="h"), m.UNKNOWN_TYPE)
        # the connection is still usable
        await o.client.send(m.Resume(o.cid, id="res"))
        sync = await o.client.expect(lambda x: isinstance(x, m.Sync))
        assert isinstance(sync, m.Sync) and sync.state == o.theirs.co_signed.state
        await finish(o.client, o.broker)

    run(body())


def test_unknown_and_foreign_channels(net: Net) -> None:
    async def body() -> None:
        o = await opened(net, "server_initiative")
        other = await net.trader(o.broker, "server_initiative")
        foreign = other.channel_id
        unknown = ChannelId(os.urandom(32))
        for cid, code in ((foreign, m.NOT_YOUR_CHANNEL), (unknown, m.UNKNOWN_CHANNEL)):
            order, signature = make_order(o.party.params, 9, signer=o.agent.signer, domain=o.party.channel.domain)
            order = dataclasses.replace(order, channel_id=cid)
            for message in (
                m.Resume(cid, id="a"),
                m.RequestDeposit(cid, id="b"),
                m.RequestFinalize(cid, id="c"),
                m.CancelOrderRequest(cid, Nonce(1), id="d"),
                m.CreateOrderRequest(cid, order, signature, id="e"),
                m.Ack(cid, 1, Signature(bytes(65)), id="f"),
                m.Yield(cid, 1, id="g"),
                m.RequestYield(cid, id="h"),
                dataclasses.replace(
                    forged(o, "deposit", AccountDeposits(TokenAmount(6_000 * USD), TokenAmount(20_000 * USD))),
                    channel_id=cid,
                    id="i",
                ),
            ):
                other_before = broker_view(o.broker, foreign)
                reply = await refused(o, message, code)
                assert reply.channel_id == cid
                assert broker_view(o.broker, foreign) == other_before
        await finish(o.client, other, o.broker)

    run(body())


# --------------------------------------------------------------------------- proposals


def test_bad_proposal_signatures(net: Net) -> None:
    async def body() -> None:
        o = await opened(net, "cooperative")
        await take_turn(o)
        good = forged(o, "lock", order_lock(o, 1))
        outsider = LocalSigner.generate()
        for bad in (
            dataclasses.replace(good, signature=Signature(bytes(65)), id="zeros"),
            dataclasses.replace(good, signature=malleate(good.signature), id="malleated"),
            dataclasses.replace(forged(o, "lock", order_lock(o, 1), outsider), id="outsider"),
            dataclasses.replace(forged(o, "lock", order_lock(o, 1), o.broker.signer), id="broker's own"),
        ):
            await refused(o, bad, m.BAD_SIGNATURE)
        missing = m.to_json(dataclasses.replace(good, id="missing"))
        del missing["signature"]
        await refused(o, missing, m.INVALID_MESSAGE, re="")
        # the good one goes through, and the channel moves on
        await o.client.send(good)
        ack = await o.client.ack(o.cid, good.state.version)
        assert o.theirs.state == good.state and o.theirs.co_signed.trader_signature == good.signature
        assert ack.version == good.state.version
        await finish(o.client, o.broker)

    run(body())


def test_out_of_turn(net: Net) -> None:
    async def body() -> None:
        broker = await net.broker()
        # cooperative: the turn rests with the broker after the channel opened
        o = await opened(net, "cooperative", broker)
        assert o.theirs.turn == "broker"
        await refused(o, forged(o, "lock", order_lock(o, 1)), m.NOT_YOUR_TURN)
        # a yield of a turn the trader does not hold: a duplicate (ignored) or for an unknown version
        before = broker_view(broker, o.cid)
        await o.client.send(m.Yield(o.cid, o.party.state.version, id="y0"))
        await o.client.send(m.Resume(o.cid, id="sync"))
        await o.client.expect(lambda x: isinstance(x, m.Sync | m.ErrorReply))
        assert broker_view(broker, o.cid) == before
        await refused(o, m.Yield(o.cid, o.party.state.version + 1, id="y1"), m.STALE_VERSION)
        # server initiative: the broker never accepts a trader proposal
        s = await opened(net, "server_initiative", broker)
        await refused(s, forged(s, "lock", order_lock(s, 1)), m.NOT_YOUR_TURN)
        await refused(
            s,
            forged(s, "deposit", AccountDeposits(TokenAmount(6_000 * USD), TokenAmount(20_000 * USD))),
            m.NOT_YOUR_TURN,
        )
        await finish(o.client, s.client, broker)

    run(body())


def test_stale_and_replayed_proposals(net: Net) -> None:
    async def body() -> None:
        o = await opened(net, "cooperative")
        await take_turn(o)
        proposal, ack = await propose(o, "lock", order_lock(o, 1), "lock-1")
        version = o.theirs.state.version
        # replayed: the same ACK, byte for byte, and nothing new on the broker
        before = broker_view(o.broker, o.cid)
        for _ in range(2):
            await o.client.send(dataclasses.replace(proposal, id="again"))
            again = await o.client.ack(o.cid, proposal.state.version)
            assert again.signature == ack.signature and again.version == ack.version
        assert broker_view(o.broker, o.cid) == before and o.theirs.state.version == version
        # stale: the current version with a different state
        await refused(o, forged(o, "lock", order_lock(o, 2), version=version), m.STALE_VERSION)
        # an older version, differently
        await refused(o, forged(o, "lock", order_lock(o, 2), version=1), m.STALE_VERSION)
        # skipping a version
        await refused(o, forged(o, "lock", order_lock(o, 2), version=version + 2), m.STALE_VERSION)
        # the state does not follow from the transition
        wrong = forged(o, "lock", order_lock(o, 2))
        wrong = forged(o, "lock", order_lock(o, 2), balances=dataclasses.replace(wrong.state.balances, broker_locked=1))
        await refused(o, wrong, m.RULE_VIOLATION, "state_matches_transition")
        await finish(o.client, o.broker)

    run(body())


def test_order_rules_at_the_broker(net: Net) -> None:
    async def body() -> None:
        broker = await net.broker()
        # server initiative: an order signed by another key
        s = await opened(net, "server_initiative", broker)
        order, _ = make_order(s.party.params, 1, signer=s.agent.signer, domain=s.party.channel.domain)
        bad_signature = LocalSigner.generate().sign(s.party.channel.domain, order)
        await refused(
            s, m.CreateOrderRequest(s.cid, order, bad_signature, id="co"), m.RULE_VIOLATION, "order_signature_valid"
        )
        assert s.broker.store.orders(s.cid) == []
        await refused(s, m.CancelOrderRequest(s.cid, Nonce(5), id="cx"), m.RULE_VIOLATION, "order_is_open")
        # cooperative: a lock whose first batch is not the open batch
        o = await opened(net, "cooperative", broker)
        await take_turn(o)
        assert broker.books[GOLD].open_batch == 1
        await refused(o, forged(o, "lock", order_lock(o, 1, first_batch=2)), m.RULE_VIOLATION, "first_batch_is_current")
        await finish(s.client)
        await o.client.send(o.party.yield_turn())  # the turn goes back before a batch is cut
        await eventually(lambda: o.theirs.turn == "broker", "the turn back at the broker")
        await broker.settle_batch(GOLD)  # the open batch is 2 now
        assert o.cid not in broker.unresponsive
        await take_turn(o)
        await refused(o, forged(o, "lock", order_lock(o, 1, first_batch=1)), m.RULE_VIOLATION, "first_batch_is_current")
        # a lock with stale marks, and one with a clock far off
        lock = order_lock(o, 1)
        await refused(
            o, forged(o, "lock", dataclasses.replace(lock, marks={GOLD: lock.marks[GOLD] + 1})), m.STALE_MARKS
        )
        await refused(o, forged(o, "lock", dataclasses.replace(lock, now=Timestamp(lock.now - 3600))), m.CLOCK_SKEW)
        await finish(o.client, broker)

    run(body())


def test_wrong_flow(net: Net) -> None:
    async def body() -> None:
        broker = await net.broker()
        o = await opened(net, "cooperative", broker)
        order, signature = make_order(o.party.params, 1, signer=o.agent.signer, domain=o.party.channel.domain)
        for request in (
            m.RequestDeposit(o.cid, id="a"),
            m.RequestFinalize(o.cid, id="b"),
            m.CancelOrderRequest(o.cid, Nonce(1), id="c"),
            m.CreateOrderRequest(o.cid, order, signature, id="d"),
        ):
            await refused(o, request, m.WRONG_FLOW)
        s = await opened(net, "server_initiative", broker)
        await refused(s, m.RequestYield(s.cid, id="e"), m.WRONG_FLOW)
        await refused(s, m.Yield(s.cid, s.party.state.version, id="f"), m.WRONG_FLOW)
        # a server-initiative channel is not set up by the trader's proposal
        params = dataclasses.replace(s.party.params, nonce=s.party.params.nonce + 1)
        state = setup(params).state
        setup_proposal = m.Propose(
            params.channel_id,
            "setup",
            None,
            state,
            s.agent.signer.sign(s.party.channel.domain, state),
            params,
            "server_initiative",
            id="g",
        )
        await refused(s, setup_proposal, m.WRONG_FLOW)
        assert params.channel_id not in broker.parties and broker.store.channel(params.channel_id) is None
        await finish(o.client, s.client, broker)

    run(body())


def test_trade_kind_is_the_brokers(net: Net) -> None:
    async def body() -> None:
        o = await opened(net, "cooperative")
        await take_turn(o)
        await propose(o, "lock", order_lock(o, 1), "l1")
        price = BatchPrice(MarketId(GOLD), BatchNumber(1), Price(2_000 * USD))
        t = Trade(price, (Fill(Nonce(1), SyntheticAmount(10), TokenAmount(0)),), Timestamp(int(time.time())), {})
        await refused(o, forged(o, "trade", t), m.KIND_NOT_ALLOWED)
        await finish(o.client, o.broker)

    run(body())


# --------------------------------------------------------------------------- unresponsive


def test_silent_trader_is_reported_unresponsive(net: Net) -> None:
    async def body() -> None:
        broker = await net.broker(ack_timeout=0.5)
        o = await opened(net, "server_initiative", broker, deposit=0)
        assert o.party.state.balances.broker_deposit == 0
        await eventually(lambda: any(k == "deposited" for k, _ in broker.events), "the broker's deposit")
        await o.client.send(m.RequestDeposit(o.cid, id="rd"))
        proposal = await o.client.expect(lambda x: isinstance(x, m.Propose))
        assert isinstance(proposal, m.Propose) and proposal.kind == "deposit"
        # ... and the trader stays silent
        await eventually(lambda: any(k == "unresponsive" for k, _ in broker.events), "the unresponsive report", 3)
        detail = next(d for k, d in broker.events if k == "unresponsive")
        assert o.cid.hex() in detail and o.agent.address in detail
        assert o.theirs.status == "unresponsive" and o.cid in broker.unresponsive
        assert broker.store.channel(o.cid).meta["status"] == "unresponsive"  # type: ignore[union-attr]
        assert o.theirs.pending is not None and o.theirs.co_signed.state.version == o.party.state.version
        # to recover, the broker drops the connection ...
        with pytest.raises(ConnectionClosed) as closed:
            await o.client.recv(3)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        # ... and on resume sends the pending proposal again; a late ACK brings the channel back
        client = await RawClient.connect(broker, o.agent.signer)
        await client.send(m.Resume(o.cid))
        again = await client.expect(lambda x: isinstance(x, m.Propose))
        assert again == proposal
        await client.send(o.party.on_proposal(proposal))
        await eventually(lambda: o.theirs.status == "open", "the channel back open")
        assert o.theirs.co_signed.state == proposal.state and o.cid not in broker.unresponsive
        assert ("responsive", f"0x{o.cid.hex()}") in broker.events
        await finish(client, broker)

    run(body())


# --------------------------------------------------------------------------- a crash


CRASH = """
import asyncio
from websockets.asyncio.client import connect
from offchain.agents.broker import BrokerAgent, BrokerConfig
from offchain.chain.connection import in_process_chain
from offchain.protocol import messages as m
from offchain.signing import LocalSigner
from offchain.store import MemoryStore

async def main():
    chain = in_process_chain()
    fake = LocalSigner.generate().address
    config = BrokerConfig(port=0, batch_seconds=3600)
    broker = BrokerAgent(LocalSigner.generate(), MemoryStore(), chain, fake, fake, config)
    await broker.start()
    async with connect(f"ws://127.0.0.1:{broker.port}") as ws:
        await ws.recv()  # the challenge
        await ws.send("[" * 100_000 + "]" * 100_000)  # 200 kB, unauthenticated
        reply = m.parse(await asyncio.wait_for(ws.recv(), 10))
        print("reply", reply.code)
    print("alive")
    await broker.stop()

asyncio.run(main())
"""


def test_deeply_nested_first_message_does_not_crash_the_broker() -> None:
    out = subprocess.run([sys.executable, "-c", CRASH], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"broker process exited with {out.returncode}: {out.stderr[-1500:]}"
    assert out.stdout.split() == ["reply", "invalid_message", "alive"]


def test_error_reply_about_another_traders_channel_is_refused(net: Net) -> None:
    async def body() -> None:
        broker = await net.broker()
        victim = await opened(net, "server_initiative", broker, deposit=0)
        await eventually(lambda: any(k == "deposited" for k, _ in broker.events), "the broker's deposit")
        await victim.client.send(m.RequestDeposit(victim.cid, id="rd"))
        proposal = await victim.client.expect(lambda x: isinstance(x, m.Propose))
        assert isinstance(proposal, m.Propose)
        # a stranger (any key, no channel needed) claims to refuse the victim's proposal
        stranger = await RawClient.connect(broker, LocalSigner.generate())
        await stranger.send(m.ErrorReply("", m.RULE_VIOLATION, "no", None, victim.cid, id="x"))
        await asyncio.sleep(0.2)
        try:
            assert victim.cid not in broker.unresponsive
            assert not any(k == "unresponsive" for k, _ in broker.events), broker.events
        finally:
            await victim.client.send(victim.party.on_proposal(proposal))  # the real answer
            await eventually(lambda: victim.theirs.pending is None, "the victim's ACK")
            await finish(victim.client, stranger, broker)

    run(body())
