"""Hostile messages against one side of a channel (``ChannelParty``): proposals, ACKs, yields and
syncs from a misbehaving counterpart, built from the honest next messages and mutated (on the
wire, then parsed; a proposal is often re-signed by the counterpart's real key, so that it gets
past the signature check and reaches the engine's rules).

Property: the handler either accepts (and then the message was a valid one: the ACK's signature
is ours over exactly the proposed state) or raises ProtocolError, and then the party and its
store are exactly as before. No other exception escapes."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

from hypothesis import given

from offchain.engine.channel import AccountDeposits, CancelOrder, Fill, Finalize, Trade, apply, setup
from offchain.model import BatchPrice
from offchain.protocol import messages as m
from offchain.protocol.messages import ProtocolError
from offchain.protocol.party import BROKER, COOPERATIVE, SERVER_INITIATIVE, TRADER, ChannelParty
from offchain.signing import LocalSigner, StateSigner, verify
from offchain.store import MemoryStore
from offchain.types import BatchNumber, MarketId, Nonce, Price, SyntheticAmount, Timestamp, TokenAmount
from tests.fuzz import helpers as h
from tests.protocol.conftest import BROKER_KEY, DOMAIN, GOLD, GOLD_PRICE, TRADER_KEY, UNIT, USD, lock, offline_params

KEYS = {TRADER: TRADER_KEY, BROKER: BROKER_KEY}


def signer(role: str, store: MemoryStore) -> StateSigner:
    return StateSigner(KEYS[role], DOMAIN, log=store)


def load(store: MemoryStore, role: str, cid: bytes) -> ChannelParty:
    return ChannelParty.load(store, signer(role, store), cid)


def party_view(party: ChannelParty) -> tuple[Any, ...]:
    return (
        party.state,
        party.co_signed,
        party.pending[0] if party.pending else None,
        party.turn,
        party.status,
        party.flow,
        party.channel.used_nonces,
        h.store_snapshot(party.store),  # type: ignore[arg-type]
    )


def sign_as(key: LocalSigner, proposal: m.Propose) -> m.Propose:
    return dataclasses.replace(proposal, signature=key.sign_digest(DOMAIN.state_digest(proposal.state)))


@dataclass
class Scene:
    """One side's store at some point of a channel's history, and the messages its counterpart
    could send next (honest ones, which the mutators start from)."""

    name: str
    role: str
    store: MemoryStore
    cid: bytes
    seeds: list[m.Message]


def _history(flow: str) -> tuple[ChannelParty, ChannelParty, list[m.Propose]]:
    """A channel with deposits, two orders (one partly filled by a trade), as (trader, broker)."""
    params = offline_params(nonce=777 if flow == COOPERATIVE else 778)
    ts, bs = MemoryStore(), MemoryStore()
    proposals: list[m.Propose] = []
    if flow == COOPERATIVE:
        trader, setup_p = ChannelParty.propose_setup(ts, signer(TRADER, ts), TRADER, params, flow)
        broker, ack = ChannelParty.accept_setup(bs, signer(BROKER, bs), BROKER, setup_p)
        trader.on_ack(ack)
    else:
        broker, setup_p = ChannelParty.propose_setup(bs, signer(BROKER, bs), BROKER, params, flow)
        trader, ack = ChannelParty.accept_setup(ts, signer(TRADER, ts), TRADER, setup_p)
        broker.on_ack(ack)
    proposals.append(setup_p)

    def step(kind: str, transition: Any, proposer: ChannelParty, receiver: ChannelParty) -> None:
        if proposer.flow == COOPERATIVE and not proposer.my_turn():
            proposer.on_yield(receiver.yield_turn())
        proposal, _ = proposer.propose(kind, transition)
        proposer.on_ack(receiver.on_proposal(proposal))
        proposals.append(proposal)

    t_side = trader if flow == COOPERATIVE else broker
    t_other = broker if flow == COOPERATIVE else trader
    step("deposit", AccountDeposits(TokenAmount(5_000 * USD), TokenAmount(20_000 * USD)), t_side, t_other)
    step("lock", lock(params, 1, amount_collateral=2_010 * USD), t_side, t_other)
    step(
        "lock", lock(params, 2, is_buy=False, amount_synthetic=UNIT // 2, amount_collateral=900 * USD), t_side, t_other
    )
    price = BatchPrice(MarketId(GOLD), BatchNumber(1), Price(GOLD_PRICE))
    fill = Fill(Nonce(1), SyntheticAmount(UNIT // 2), TokenAmount(USD))
    step("trade", Trade(price, (fill,), Timestamp(1_700_000_000), {GOLD: Price(GOLD_PRICE)}), broker, trader)
    return trader, broker, proposals


def _next_proposals(receiver: ChannelParty, key: LocalSigner) -> list[m.Propose]:
    """What the counterpart could propose next, each built on the receiver's state."""
    params = receiver.params
    price = BatchPrice(MarketId(GOLD), BatchNumber(2), Price(GOLD_PRICE + 1))
    transitions: list[tuple[str, Any]] = [
        ("deposit", AccountDeposits(TokenAmount(6_000 * USD), TokenAmount(20_000 * USD))),
        ("lock", lock(params, 3, amount_collateral=2_010 * USD)),
        ("cancel", CancelOrder(Nonce(2))),
        ("trade", Trade(price, (Fill(Nonce(1), SyntheticAmount(UNIT // 4), TokenAmount(0)),), Timestamp(1), {})),
        ("finalize", Finalize({GOLD: Price(GOLD_PRICE)})),
    ]
    out = []
    for kind, transition in transitions:
        try:
            state = apply(receiver.channel, transition).state
        except Exception:  # noqa: BLE001 - a transition the engine refuses is still a fine seed
            continue
        signature = key.sign_digest(DOMAIN.state_digest(state))
        out.append(m.Propose(receiver.channel_id, kind, transition, state, signature, id="p"))
    return out


def _scenes() -> list[Scene]:
    scenes = []
    for flow in (COOPERATIVE, SERVER_INITIATIVE):
        trader, broker, history = _history(flow)
        for receiver, other in ((trader, broker), (broker, trader)):
            if flow == COOPERATIVE and receiver.my_turn():  # let the counterpart hold the turn
                other.on_yield(receiver.yield_turn())
            key = KEYS[other.role]
            seeds: list[m.Message] = [*history, *_next_proposals(receiver, key)]
            seeds += [m.Yield(receiver.channel_id, v, id="y") for v in (0, receiver.state.version)]
            seeds += [m.Ack(receiver.channel_id, receiver.state.version, receiver.co_signed.broker_signature, "a")]
            scenes.append(Scene(f"{flow}/{receiver.role}", receiver.role, receiver.store, receiver.channel_id, seeds))
        # the trader with a proposal of its own pending (ACKs, syncs and proposals against it)
        if flow == COOPERATIVE:
            if not trader.my_turn():
                trader.on_yield(broker.yield_turn())
            pending, _ = trader.propose("cancel", CancelOrder(Nonce(2)))
            ack = broker.on_proposal(pending)
            signed = m.Sync(
                trader.channel_id,
                trader.params,
                flow,
                pending.state,
                pending.signature,
                ack.signature,
                BROKER,
            )
            seeds = [ack, dataclasses.replace(ack, version=ack.version - 1), signed, *history]
            seeds += _next_proposals(broker, BROKER_KEY)
            scenes.append(Scene("cooperative/trader pending", TRADER, trader.store, trader.channel_id, seeds))
    return scenes


SCENES = _scenes()


def _message(rng: random.Random, scene: Scene) -> m.Message | None:
    seed = rng.choice(scene.seeds)
    raw = h.dumps(h.mutated_json(rng, m.to_json(seed))) if rng.random() < 0.85 else m.encode(seed)
    try:
        message = m.parse(raw)
    except ProtocolError:
        return None
    if isinstance(message, m.Propose) and rng.random() < 0.6:  # the counterpart signs what it sends
        other = BROKER_KEY if scene.role == TRADER else TRADER_KEY
        message = sign_as(rng.choice([other, other, other, TRADER_KEY, BROKER_KEY]), message)
    return message


def scene_and_message(rng: random.Random, kinds: tuple[type, ...]) -> tuple[Scene, m.Message | None]:
    scene = rng.choice(SCENES)
    for _ in range(20):  # until the mutated frame still parses as one of ``kinds``
        message = _message(rng, scene)
        if isinstance(message, kinds):
            return scene, message
    return scene, None


def _refused_or_valid(party: ChannelParty, call: Any) -> Any:
    before = party_view(party)
    try:
        return call()
    except ProtocolError:
        assert party_view(party) == before, "a refused message changed the party or its store"
        return None
    except Exception as exc:
        h.assert_typed(exc)
        raise AssertionError(f"{type(exc).__name__} is not a ProtocolError: {exc}") from exc


@h.fuzz_settings("ChannelParty.on_proposal")
@given(seed=h.SEEDS)
def test_on_proposal(seed: int) -> None:
    for rng in h.cases(seed):
        check_on_proposal(*scene_and_message(rng, (m.Propose,)))


def check_on_proposal(scene: Scene, message: m.Message | None) -> None:
    with h.count("ChannelParty.on_proposal"):
        store = h.clone_store(scene.store)
        party = load(store, scene.role, scene.cid)
        if not isinstance(message, m.Propose):
            return
        ack = _refused_or_valid(party, lambda: party.on_proposal(message))
        if ack is not None:
            assert ack.version == message.state.version
            stored = store.state(scene.cid, message.state.version)
            assert stored is not None and stored.state == message.state
            verify(DOMAIN.state_digest(message.state), ack.signature, KEYS[scene.role].address)


@h.fuzz_settings("ChannelParty.on_ack/on_yield/adopt")
@given(seed=h.SEEDS)
def test_on_ack_yield_sync(seed: int) -> None:
    for rng in h.cases(seed):
        check_on_ack_yield_sync(*scene_and_message(rng, (m.Ack, m.Yield, m.Sync)))


def check_on_ack_yield_sync(scene: Scene, message: m.Message | None) -> None:
    with h.count("ChannelParty.on_ack/on_yield/adopt"):
        store = h.clone_store(scene.store)
        party = load(store, scene.role, scene.cid)
        if isinstance(message, m.Ack):
            pending = party.pending[0] if party.pending else None
            if _refused_or_valid(party, lambda: party.on_ack(message)) is not None and pending is not None:
                assert party.co_signed.state == pending.state
                party.co_signed.verify(DOMAIN, party.params.trader, party.params.broker)
        elif isinstance(message, m.Yield):
            _refused_or_valid(party, lambda: party.on_yield(message))
        elif isinstance(message, m.Sync):
            if message.channel_id != party.channel_id:
                return
            adopted = _refused_or_valid(
                party, lambda: party.adopt(message.state, message.trader_signature, message.broker_signature)
            )
            if adopted:
                party.co_signed.verify(DOMAIN, party.params.trader, party.params.broker)


@h.fuzz_settings("ChannelParty.accept_setup")
@given(seed=h.SEEDS)
def test_accept_setup(seed: int) -> None:
    for rng in h.cases(seed):
        check_accept_setup(rng)


FRESH_PARAMS = [offline_params(nonce=n) for n in range(3)]


def check_accept_setup(rng: random.Random) -> None:
    scene = rng.choice(SCENES)
    fresh = rng.random() < 0.5
    params = rng.choice(FRESH_PARAMS)
    proposer = TRADER if scene.role == BROKER else BROKER
    if fresh:
        state = setup(params).state
        seed = m.Propose(params.channel_id, "setup", None, state, KEYS[proposer].sign(DOMAIN, state), params, "x")
        seed = dataclasses.replace(seed, flow=rng.choice([COOPERATIVE, SERVER_INITIATIVE]))
        scene = dataclasses.replace(scene, seeds=[seed])
    with h.count("ChannelParty.accept_setup"):
        message = _message(rng, scene)
        store = h.clone_store(scene.store) if not fresh else MemoryStore()
        if not isinstance(message, m.Propose) or message.kind != "setup":
            return
        before = h.store_snapshot(store)
        try:
            party, ack = ChannelParty.accept_setup(store, signer(scene.role, store), scene.role, message)
        except ProtocolError:
            assert h.store_snapshot(store) == before
            return
        except Exception as exc:
            h.assert_typed(exc)
            raise AssertionError(f"{type(exc).__name__} is not a ProtocolError: {exc}") from exc
        verify(DOMAIN.state_digest(message.state), ack.signature, KEYS[scene.role].address)
        assert ack.version == 0 and party.channel_id == message.channel_id
