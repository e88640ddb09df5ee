"""ChannelParty without sockets: a trader and a broker, each with its own store, driving each
other by handing messages across. Every refused message must leave the refusing party exactly as
it was: state, co-signed state, pending proposal, turn, and the store's records."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from offchain.eip712 import Domain
from offchain.engine.channel import AccountDeposits, CancelOrder, Fill, Finalize, Trade, Transition, apply
from offchain.errors import DoubleSignError, TradingChannelsError
from offchain.model import Balances, BatchPrice
from offchain.protocol import messages as m
from offchain.protocol.messages import ProtocolError
from offchain.protocol.party import BROKER, COOPERATIVE, SERVER_INITIATIVE, TRADER, ChannelParty
from offchain.signing import LocalSigner, StateSigner, malleate, verify
from offchain.store import MemoryStore, SQLiteStore, Store, StoreCorruptError
from offchain.types import BatchNumber, MarketId, Nonce, Price, Signature, SyntheticAmount, Timestamp, TokenAmount
from tests.protocol.conftest import (
    BROKER_KEY,
    DOMAIN,
    GOLD,
    GOLD_PRICE,
    OUTSIDER_KEY,
    TRADER_KEY,
    UNIT,
    USD,
    lock,
    offline_params,
)

PARAMS = offline_params(nonce=4242)
CID = PARAMS.channel_id
DEPOSITS = AccountDeposits(TokenAmount(5_000 * USD), TokenAmount(20_000 * USD))


def signer_for(key: LocalSigner, store: Store) -> StateSigner:
    return StateSigner(key, DOMAIN, log=store)


def open_channel(
    flow: str, trader_store: Store | None = None, broker_store: Store | None = None
) -> tuple[ChannelParty, ChannelParty]:
    """Set the channel up in ``flow`` (the trader proposes in the cooperative flow, the broker in
    the server-initiative one); returns (trader, broker) with version 0 co-signed."""
    ts = trader_store if trader_store is not None else MemoryStore()
    bs = broker_store if broker_store is not None else MemoryStore()
    if flow == COOPERATIVE:
        trader, proposal = ChannelParty.propose_setup(ts, signer_for(TRADER_KEY, ts), TRADER, PARAMS, flow)
        broker, ack = ChannelParty.accept_setup(bs, signer_for(BROKER_KEY, bs), BROKER, proposal)
        trader.on_ack(ack)
    else:
        broker, proposal = ChannelParty.propose_setup(bs, signer_for(BROKER_KEY, bs), BROKER, PARAMS, flow)
        trader, ack = ChannelParty.accept_setup(ts, signer_for(TRADER_KEY, ts), TRADER, proposal)
        broker.on_ack(ack)
    return trader, broker


def exchange(
    proposer: ChannelParty, receiver: ChannelParty, kind: str, transition: Transition
) -> tuple[m.Propose, m.Ack]:
    proposal, _ = proposer.propose(kind, transition)
    ack = receiver.on_proposal(proposal)
    proposer.on_ack(ack)
    return proposal, ack


def hand_turn(holder: ChannelParty, other: ChannelParty) -> None:
    other.on_yield(holder.yield_turn())


def forge(
    party: ChannelParty,
    kind: str,
    transition: Transition,
    key: LocalSigner,
    *,
    state_change: Callable[[Any], Any] | None = None,
    domain: Domain = DOMAIN,
) -> m.Propose:
    """A proposal built from ``party``'s current state and signed by ``key`` directly (no turn,
    no signature log): what a misbehaving counterpart could send."""
    state = apply(party.channel, transition).state
    if state_change is not None:
        state = state_change(state)
    signature = key.sign_digest(domain.state_digest(state))
    return m.Propose(party.channel_id, kind, transition, state, signature)


def snapshot(party: ChannelParty) -> tuple[Any, ...]:
    store, cid = party.store, party.channel_id
    record = store.channel(cid)
    return (
        party.state,
        party.co_signed,
        party.pending[0] if party.pending else None,
        party.pending[1].state if party.pending else None,
        party.turn,
        party.status,
        party.channel.used_nonces,
        store.latest_state(cid),
        store.latest_co_signed(cid),
        store.pending(cid),
        record.meta if record else None,
        [store.state(cid, v) for v in range(party.state.version + 3)],
    )


def refuse(party: ChannelParty, call: Callable[[], Any], code: str, rule: str | None = None) -> ProtocolError:
    """``call`` raises ProtocolError(code[, rule]) and ``party`` (with its store) is unchanged."""
    before = snapshot(party)
    with pytest.raises(ProtocolError) as info:
        call()
    assert info.value.code == code, info.value.reason
    if rule is not None:
        assert info.value.rule == rule, info.value.reason
    assert snapshot(party) == before
    return info.value


def assert_agreed(trader: ChannelParty, broker: ChannelParty) -> None:
    """Both hold the same co-signed state with both valid signatures, and nothing pending."""
    assert trader.co_signed == broker.co_signed
    assert trader.state == broker.state == trader.co_signed.state
    assert trader.pending is None and broker.pending is None
    trader.co_signed.verify(DOMAIN, PARAMS.trader, PARAMS.broker)
    for party in (trader, broker):
        stored = party.store.latest_co_signed(party.channel_id)
        assert stored is not None and stored.state == party.state
        assert stored.trader_signature == party.co_signed.trader_signature
        assert stored.broker_signature == party.co_signed.broker_signature


def trade(batch: int, fills: tuple[tuple[int, int, int], ...], price: int = GOLD_PRICE, market: int = GOLD) -> Trade:
    return Trade(
        BatchPrice(MarketId(market), BatchNumber(batch), Price(price)),
        tuple(Fill(Nonce(n), SyntheticAmount(a), TokenAmount(f)) for n, a, f in fills),
        Timestamp(1_700_000_000),
        {market: Price(price)},
    )


# --------------------------------------------------------------------------- setup


def test_cooperative_setup() -> None:
    ts, bs = MemoryStore(), MemoryStore()
    trader, proposal = ChannelParty.propose_setup(ts, signer_for(TRADER_KEY, ts), TRADER, PARAMS, COOPERATIVE)
    assert proposal.kind == "setup" and proposal.flow == COOPERATIVE and proposal.params == PARAMS
    assert proposal.state.version == 0 and trader.pending is not None
    verify(DOMAIN.state_digest(proposal.state), proposal.signature, PARAMS.trader)
    assert not trader.co_signed.broker_signature

    broker, ack = ChannelParty.accept_setup(bs, signer_for(BROKER_KEY, bs), BROKER, proposal)
    assert ack.version == 0
    trader.on_ack(ack)
    assert_agreed(trader, broker)
    assert trader.turn == broker.turn == TRADER  # the proposer of the setup holds the turn
    assert trader.flow == broker.flow == COOPERATIVE

    # the same setup again gets the same ACK and changes nothing
    before = snapshot(broker)
    again, ack2 = ChannelParty.accept_setup(bs, signer_for(BROKER_KEY, bs), BROKER, proposal)
    assert ack2 == ack and snapshot(again) == before


def test_server_initiative_setup() -> None:
    trader, broker = open_channel(SERVER_INITIATIVE)
    assert_agreed(trader, broker)
    assert trader.turn == broker.turn == BROKER
    assert trader.state.version == 0


def test_setup_refusals() -> None:
    ts, bs = MemoryStore(), MemoryStore()
    broker, proposal = ChannelParty.propose_setup(bs, signer_for(BROKER_KEY, bs), BROKER, PARAMS, SERVER_INITIATIVE)
    with pytest.raises(ProtocolError) as info:
        ChannelParty.propose_setup(bs, signer_for(BROKER_KEY, bs), BROKER, PARAMS, SERVER_INITIATIVE)
    assert info.value.code == m.CHANNEL_EXISTS

    signer = signer_for(TRADER_KEY, ts)
    wrong_signer = dataclasses.replace(proposal, signature=OUTSIDER_KEY.sign(DOMAIN, proposal.state))
    not_v0 = dataclasses.replace(proposal, state=dataclasses.replace(proposal.state, version=1))
    for bad, code in (
        (wrong_signer, m.BAD_SIGNATURE),
        (dataclasses.replace(proposal, signature=malleate(proposal.signature)), m.BAD_SIGNATURE),
        (not_v0, m.RULE_VIOLATION),
        (dataclasses.replace(proposal, params=None), m.INVALID_MESSAGE),
    ):
        with pytest.raises(ProtocolError) as info:
            ChannelParty.accept_setup(ts, signer, TRADER, bad)
        assert info.value.code == code
        assert ts.channels() == [] and ts.latest_state(CID) is None and ts.signed_digest(CID, 0) is None
    trader, ack = ChannelParty.accept_setup(ts, signer, TRADER, proposal)
    broker.on_ack(ack)
    assert_agreed(trader, broker)


# --------------------------------------------------------------------------- propose and ack


def test_server_initiative_lifecycle() -> None:
    trader, broker = open_channel(SERVER_INITIATIVE)
    exchange(broker, trader, "deposit", DEPOSITS)
    assert trader.state.balances.trader_available == 5_000 * USD
    exchange(broker, trader, "lock", lock(PARAMS, 1, amount_collateral=2_010 * USD))
    exchange(
        broker, trader, "lock", lock(PARAMS, 2, is_buy=False, amount_synthetic=UNIT, amount_collateral=2_100 * USD)
    )
    exchange(broker, trader, "cancel", CancelOrder(Nonce(2)))
    exchange(broker, trader, "trade", trade(1, ((1, UNIT // 2, USD),)))
    assert_agreed(trader, broker)
    assert trader.state.outcomes[0].position == UNIT // 2
    assert trader.channel.used_nonces == broker.channel.used_nonces == {1, 2}
    exchange(broker, trader, "finalize", Finalize({GOLD: Price(GOLD_PRICE)}))
    assert_agreed(trader, broker)
    assert trader.state.is_final and trader.state.version == 6
    refuse(broker, lambda: broker.propose("deposit", DEPOSITS), m.CHANNEL_CLOSED)


def test_cooperative_lifecycle_with_turns() -> None:
    trader, broker = open_channel(COOPERATIVE)
    exchange(trader, broker, "deposit", DEPOSITS)
    exchange(trader, broker, "lock", lock(PARAMS, 1, amount_collateral=2_010 * USD))
    assert trader.turn == broker.turn == TRADER  # a proposal does not move the turn
    hand_turn(trader, broker)
    assert trader.turn == broker.turn == BROKER
    exchange(broker, trader, "trade", trade(1, ((1, UNIT // 4, USD),)))
    hand_turn(broker, trader)
    exchange(trader, broker, "cancel", CancelOrder(Nonce(1)))
    exchange(trader, broker, "finalize", Finalize({GOLD: Price(GOLD_PRICE)}))
    assert_agreed(trader, broker)
    assert trader.state.is_final


# --------------------------------------------------------------------------- turns and pending


def test_cooperative_turns() -> None:
    trader, broker = open_channel(COOPERATIVE)
    # the trader holds the turn: the broker may not propose, nor may the trader accept a broker proposal
    refuse(broker, lambda: broker.propose("deposit", DEPOSITS), m.NOT_YOUR_TURN)
    forged = forge(broker, "deposit", DEPOSITS, BROKER_KEY)
    refuse(trader, lambda: trader.on_proposal(forged), m.NOT_YOUR_TURN)
    refuse(broker, broker.yield_turn, m.NOT_YOUR_TURN)
    hand_turn(trader, broker)
    # now the other way round
    refuse(trader, lambda: trader.propose("deposit", DEPOSITS), m.NOT_YOUR_TURN)
    forged = forge(trader, "deposit", DEPOSITS, TRADER_KEY)
    refuse(broker, lambda: broker.on_proposal(forged), m.NOT_YOUR_TURN)
    # yields: a duplicate is ignored, one for a version we do not know is stale
    broker.on_yield(m.Yield(CID, 0))
    assert broker.turn == BROKER
    refuse(trader, lambda: trader.on_yield(m.Yield(CID, 5)), m.STALE_VERSION)
    refuse(broker, lambda: broker.on_yield(m.Yield(CID, 5)), m.STALE_VERSION)


def test_server_initiative_turns() -> None:
    trader, broker = open_channel(SERVER_INITIATIVE)
    refuse(trader, lambda: trader.propose("deposit", DEPOSITS), m.NOT_YOUR_TURN)
    forged = forge(trader, "deposit", DEPOSITS, TRADER_KEY)
    refuse(broker, lambda: broker.on_proposal(forged), m.NOT_YOUR_TURN)
    refuse(broker, broker.yield_turn, m.WRONG_FLOW)
    refuse(trader, lambda: trader.on_yield(m.Yield(CID, 0)), m.WRONG_FLOW)
    exchange(broker, trader, "deposit", DEPOSITS)  # the broker still proposes fine
    assert_agreed(trader, broker)


def test_one_pending_proposal_at_a_time() -> None:
    trader, broker = open_channel(SERVER_INITIATIVE)
    proposal, _ = broker.propose("deposit", DEPOSITS)
    refuse(broker, lambda: broker.propose("lock", lock(PARAMS, 1)), m.PROPOSAL_PENDING)
    refuse(broker, lambda: broker.propose("deposit", DEPOSITS), m.PROPOSAL_PENDING)
    broker.on_ack(trader.on_proposal(proposal))
    assert_agreed(trader, broker)

    trader, broker = open_channel(COOPERATIVE)
    proposal, _ = trader.propose("deposit", DEPOSITS)
    refuse(trader, trader.yield_turn, m.NOT_YOUR_TURN)  # no yielding with a proposal in flight
    refuse(trader, lambda: trader.propose("lock", lock(PARAMS, 1)), m.PROPOSAL_PENDING)
    trader.on_ack(broker.on_proposal(proposal))
    assert_agreed(trader, broker)


def test_stale_version() -> None:
    trader, broker = open_channel(SERVER_INITIATIVE)
    exchange(broker, trader, "deposit", DEPOSITS)
    # version current + 2 (skips one)
    ahead = forge(broker, "lock", lock(PARAMS, 1), BROKER_KEY, state_change=lambda s: dataclasses.replace(s, version=3))
    refuse(trader, lambda: trader.on_proposal(ahead), m.STALE_VERSION)
    # a different state with an agreed version (here the current one, and version 0)
    for version in (1, 0):
        stale = forge(
            broker,
            "lock",
            lock(PARAMS, 1),
            BROKER_KEY,
            state_change=lambda s, v=version: dataclasses.replace(s, version=v),
        )
        refuse(trader, lambda p=stale: trader.on_proposal(p), m.STALE_VERSION)


def test_duplicate_proposal_gets_the_same_ack() -> None:
    trader, broker = open_channel(SERVER_INITIATIVE)
    first, ack1 = exchange(broker, trader, "deposit", DEPOSITS)
    second, ack2 = exchange(broker, trader, "lock", lock(PARAMS, 1))
    before = snapshot(trader)
    assert trader.on_proposal(second) == ack2
    assert trader.on_proposal(first) == ack1  # an older one too
    assert snapshot(trader) == before
    # and the broker's duplicate of its own pending-free state: on_ack of the same ACK is a no-op
    before = snapshot(broker)
    broker.on_ack(ack2)
    assert snapshot(broker) == before


def test_bad_signatures_on_a_proposal() -> None:
    trader, broker = open_channel(SERVER_INITIATIVE)
    exchange(broker, trader, "deposit", DEPOSITS)
    good = forge(broker, "lock", lock(PARAMS, 1), BROKER_KEY)
    other_domain = Domain(DOMAIN.chain_id + 1, DOMAIN.verifying_contract)
    other_state = forge(broker, "lock", lock(PARAMS, 2), BROKER_KEY).signature
    cases = {
        "outsider": forge(broker, "lock", lock(PARAMS, 1), OUTSIDER_KEY),
        "trader itself": forge(broker, "lock", lock(PARAMS, 1), TRADER_KEY),
        "malleated": dataclasses.replace(good, signature=malleate(good.signature)),
        "zeros": dataclasses.replace(good, signature=Signature(bytes(65))),
        "v is 0": dataclasses.replace(good, signature=Signature(good.signature[:64] + b"\x00")),
        "empty": dataclasses.replace(good, signature=Signature(b"")),
        "another state": dataclasses.replace(good, signature=other_state),
        "another domain": forge(broker, "lock", lock(PARAMS, 1), BROKER_KEY, domain=other_domain),
    }
    for name, proposal in cases.items():
        error = refuse(trader, lambda p=proposal: trader.on_proposal(p), m.BAD_SIGNATURE)
        assert error.reason, name
    trader.on_proposal(good)  # and the good one is accepted


def test_state_must_match_the_transition() -> None:
    trader, broker = open_channel(SERVER_INITIATIVE)
    exchange(broker, trader, "deposit", DEPOSITS)

    def richer(state: Any) -> Any:
        b: Balances = state.balances
        return dataclasses.replace(
            state,
            balances=dataclasses.replace(
                b, trader_available=b.trader_available - 1, broker_available=b.broker_available + 1
            ),
        )

    proposal = forge(broker, "lock", lock(PARAMS, 1), BROKER_KEY, state_change=richer)
    refuse(trader, lambda: trader.on_proposal(proposal), m.RULE_VIOLATION, "state_matches_transition")
    final = forge(
        broker,
        "deposit",
        AccountDeposits(TokenAmount(6_000 * USD), TokenAmount(20_000 * USD)),
        BROKER_KEY,
        state_change=lambda s: dataclasses.replace(s, is_final=True),
    )
    refuse(trader, lambda: trader.on_proposal(final), m.RULE_VIOLATION, "state_matches_transition")


def test_refusals_keep_their_precedence_signature_then_check_then_rules() -> None:
    # on_proposal replays the transition before it verifies the signature (to hash its own state
    # once), but answers as if it had verified first, then run the agent's check, then replayed
    trader, broker = open_channel(SERVER_INITIATIVE)
    exchange(broker, trader, "deposit", DEPOSITS)

    def richer(state: Any) -> Any:
        return dataclasses.replace(state, balances=dataclasses.replace(state.balances, broker_locked=1))

    def stale(channel: Any, proposal: m.Propose) -> None:
        raise ProtocolError(m.STALE_MARKS, "the agent refuses")

    wrong_state_and_signer = forge(broker, "lock", lock(PARAMS, 1), OUTSIDER_KEY, state_change=richer)
    wrong_state = forge(broker, "lock", lock(PARAMS, 1), BROKER_KEY, state_change=richer)
    wrong_signer = forge(broker, "lock", lock(PARAMS, 1), OUTSIDER_KEY)
    good = forge(broker, "lock", lock(PARAMS, 1), BROKER_KEY)
    refuse(trader, lambda: trader.on_proposal(wrong_state_and_signer), m.BAD_SIGNATURE)
    refuse(trader, lambda: trader.on_proposal(wrong_state_and_signer, stale), m.BAD_SIGNATURE)
    refuse(trader, lambda: trader.on_proposal(wrong_signer, stale), m.BAD_SIGNATURE)
    refuse(trader, lambda: trader.on_proposal(wrong_state, stale), m.STALE_MARKS)
    refuse(trader, lambda: trader.on_proposal(wrong_state), m.RULE_VIOLATION, "state_matches_transition")
    refuse(trader, lambda: trader.on_proposal(good, stale), m.STALE_MARKS)
    ack = trader.on_proposal(good)
    verify(DOMAIN.state_digest(good.state), ack.signature, PARAMS.trader)


def test_rule_violations() -> None:
    trader, broker = open_channel(SERVER_INITIATIVE)
    exchange(broker, trader, "deposit", DEPOSITS)
    exchange(broker, trader, "lock", lock(PARAMS, 1))

    def forged_with(kind: str, transition: Transition, state_from: Transition) -> m.Propose:
        """Sign the state ``state_from`` gives, sent as ``transition`` (which the rules refuse)."""
        state = apply(broker.channel, state_from).state
        return m.Propose(CID, kind, transition, state, BROKER_KEY.sign_digest(DOMAIN.state_digest(state)))

    cancel_missing = forged_with("cancel", CancelOrder(Nonce(7)), CancelOrder(Nonce(1)))
    refuse(trader, lambda: trader.on_proposal(cancel_missing), m.RULE_VIOLATION, "order_is_open")
    reused = forged_with("lock", lock(PARAMS, 1), lock(PARAMS, 2))
    refuse(trader, lambda: trader.on_proposal(reused), m.RULE_VIOLATION, "nonce_not_used")
    outsider_order = forged_with("lock", lock(PARAMS, 2, signer=OUTSIDER_KEY), lock(PARAMS, 2))
    refuse(trader, lambda: trader.on_proposal(outsider_order), m.RULE_VIOLATION, "order_signature_valid")
    shrink = forged_with("deposit", AccountDeposits(TokenAmount(USD), TokenAmount(20_000 * USD)), CancelOrder(Nonce(1)))
    refuse(trader, lambda: trader.on_proposal(shrink), m.RULE_VIOLATION, "deposits_only_grow")
    overfill = forged_with("trade", trade(1, ((1, 2 * UNIT, USD),)), trade(1, ((1, UNIT, USD),)))
    refuse(trader, lambda: trader.on_proposal(overfill), m.RULE_VIOLATION, "fill_within_order")
    # and the proposer's own side refuses to build them at all
    with pytest.raises(TradingChannelsError):
        broker.propose("cancel", CancelOrder(Nonce(7)))
    assert broker.pending is None


def test_bad_acks() -> None:
    trader, broker = open_channel(SERVER_INITIATIVE)
    exchange(broker, trader, "deposit", DEPOSITS)
    refuse(broker, lambda: broker.on_ack(m.Ack(CID, 5, Signature(bytes(65)))), m.NO_PENDING_PROPOSAL)
    refuse(trader, lambda: trader.on_ack(m.Ack(CID, 2, Signature(bytes(65)))), m.NO_PENDING_PROPOSAL)
    trader_on_v1 = Signature(trader.co_signed.trader_signature)
    proposal, _ = broker.propose("lock", lock(PARAMS, 1))
    ack = trader.on_proposal(proposal)
    by_outsider = OUTSIDER_KEY.sign_digest(DOMAIN.state_digest(proposal.state))
    by_broker = BROKER_KEY.sign_digest(DOMAIN.state_digest(proposal.state))
    for bad in (
        m.Ack(CID, 2, Signature(by_outsider)),
        m.Ack(CID, 2, Signature(by_broker)),  # its own signature
        m.Ack(CID, 2, malleate(ack.signature)),
        m.Ack(CID, 2, Signature(bytes(65))),
        m.Ack(CID, 2, trader_on_v1),  # the trader's signature on version 1
    ):
        refuse(broker, lambda a=bad: broker.on_ack(a), m.BAD_SIGNATURE)
    refuse(broker, lambda: broker.on_ack(dataclasses.replace(ack, version=3)), m.STALE_VERSION)
    broker.on_ack(ack)
    assert_agreed(trader, broker)


def test_adopt_a_co_signed_state_after_a_lost_ack() -> None:
    trader, broker = open_channel(COOPERATIVE)
    proposal, _ = trader.propose("deposit", DEPOSITS)
    broker.on_proposal(proposal)  # the ACK is lost on the way back
    signed = broker.co_signed
    refuse(
        trader,
        lambda: trader.adopt(signed.state, signed.trader_signature, Signature(malleate(signed.broker_signature))),
        m.BAD_SIGNATURE,
    )
    other = dataclasses.replace(signed.state, balances=dataclasses.replace(signed.state.balances, broker_locked=1))
    refuse(trader, lambda: trader.adopt(other, signed.trader_signature, signed.broker_signature), m.STALE_VERSION)
    assert trader.adopt(signed.state, signed.trader_signature, signed.broker_signature)
    assert_agreed(trader, broker)
    assert not trader.adopt(signed.state, signed.trader_signature, signed.broker_signature)  # nothing newer


# --------------------------------------------------------------------------- restart and double signing


def test_restart_from_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "trader.db"
    trader, broker = open_channel(COOPERATIVE, trader_store=SQLiteStore(path))
    exchange(trader, broker, "deposit", DEPOSITS)
    exchange(trader, broker, "lock", lock(PARAMS, 1))
    proposal, result = trader.propose("lock", lock(PARAMS, 2, is_buy=False, amount_collateral=2_100 * USD))
    before = trader
    trader.store.close()

    store = SQLiteStore(path)
    loaded = ChannelParty.load(store, signer_for(TRADER_KEY, store), CID)
    assert loaded.params == before.params and loaded.flow == COOPERATIVE and loaded.role == TRADER
    assert loaded.state == before.state and loaded.co_signed == before.co_signed
    assert loaded.turn == TRADER and loaded.status == "open"
    assert loaded.channel.used_nonces == {1}
    assert loaded.pending is not None
    assert loaded.pending[0] == proposal and loaded.pending[1].state == result.state
    # the loaded party completes the pending proposal
    loaded.on_ack(broker.on_proposal(proposal))
    assert_agreed(loaded, broker)
    assert loaded.channel.used_nonces == {1, 2}
    expected = snapshot(loaded)
    store.close()

    store = SQLiteStore(path)
    again = ChannelParty.load(store, signer_for(TRADER_KEY, store), CID)
    assert snapshot(again) == expected
    store.close()


def test_restart_with_a_pending_setup(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    store = SQLiteStore(path)
    _, proposal = ChannelParty.propose_setup(store, signer_for(BROKER_KEY, store), BROKER, PARAMS, SERVER_INITIATIVE)
    store.close()
    store = SQLiteStore(path)
    broker = ChannelParty.load(store, signer_for(BROKER_KEY, store), CID)
    assert broker.pending is not None and broker.pending[0] == proposal
    assert broker.turn == BROKER and not broker.co_signed.trader_signature
    ts = MemoryStore()
    trader, ack = ChannelParty.accept_setup(ts, signer_for(TRADER_KEY, ts), TRADER, proposal)
    broker.on_ack(ack)
    assert_agreed(trader, broker)
    store.close()


def test_the_pending_proposal_is_stored_by_version_and_older_whole_records_still_load() -> None:
    """The state of a pending proposal is in the store's states already: the pending record
    keeps its kind, transition and version. A record that holds the whole message (as setup
    proposals and stores written before are kept) loads the same; a damaged one is refused."""
    trader, broker = open_channel(COOPERATIVE)
    exchange(trader, broker, "deposit", DEPOSITS)
    proposal, _ = trader.propose("lock", lock(PARAMS, 1))
    record = trader.store.pending(CID)
    assert record is not None and "state" not in record and record["version"] == str(proposal.state.version)
    loaded = ChannelParty.load(trader.store, signer_for(TRADER_KEY, trader.store), CID)
    assert loaded.pending is not None and loaded.pending[0] == proposal

    with trader.store.transaction():
        trader.store.put_pending(CID, m.to_json(proposal))  # the whole message
    whole = ChannelParty.load(trader.store, signer_for(TRADER_KEY, trader.store), CID)
    assert whole.pending is not None and whole.pending[0] == proposal

    for damaged in ({**record, "version": "x"}, {**record, "kind": 7}, {**record, "transition": []}):
        with trader.store.transaction():
            trader.store.put_pending(CID, damaged)
        with pytest.raises(StoreCorruptError):
            ChannelParty.load(trader.store, signer_for(TRADER_KEY, trader.store), CID)
    with trader.store.transaction():  # a version whose state the store does not have: no pending
        trader.store.put_pending(CID, {**record, "version": str(proposal.state.version + 5)})
    assert ChannelParty.load(trader.store, signer_for(TRADER_KEY, trader.store), CID).pending is None


def test_load_unknown_channel() -> None:
    store = MemoryStore()
    with pytest.raises(ProtocolError) as info:
        ChannelParty.load(store, signer_for(TRADER_KEY, store), CID)
    assert info.value.code == m.UNKNOWN_CHANNEL


def test_never_signs_two_states_with_one_version(tmp_path: Path) -> None:
    path = tmp_path / "trader.db"
    trader, broker = open_channel(COOPERATIVE, trader_store=SQLiteStore(path))
    exchange(trader, broker, "deposit", DEPOSITS)
    first, _ = trader.propose("lock", lock(PARAMS, 1))
    conflicting = apply(trader.channel, lock(PARAMS, 2)).state
    assert conflicting.version == first.state.version and conflicting != first.state
    with pytest.raises(DoubleSignError):
        trader.signer.sign_state(conflicting)
    assert trader.signer.sign_state(first.state) == first.signature  # the same state again is fine

    # The broker refuses the proposal; the trader forgets it (as TraderAgent._withdraw_pending does).
    with trader.store.transaction():
        trader.pending = None
        trader.save()
    trader.store.close()

    store = SQLiteStore(path)
    loaded = ChannelParty.load(store, signer_for(TRADER_KEY, store), CID)
    assert loaded.pending is None and loaded.state.version == 1
    with pytest.raises(DoubleSignError):
        loaded.signer.sign_state(conflicting)
    with pytest.raises(DoubleSignError):
        StateSigner(TRADER_KEY, DOMAIN, log=store).sign_state(conflicting)
    # Through the party: proposing a different state at the burned version is refused, nothing changes.
    before = snapshot(loaded)
    with pytest.raises(TradingChannelsError):
        loaded.propose("lock", lock(PARAMS, 2))
    assert snapshot(loaded) == before
    assert store.signed_digest(CID, 2) == DOMAIN.state_digest(first.state)
    # ... and so is countersigning a different state at that version from the broker.
    hand_turn(loaded, broker)
    proposal, _ = broker.propose("lock", lock(PARAMS, 2))
    before = snapshot(loaded)
    with pytest.raises(TradingChannelsError):
        loaded.on_proposal(proposal)
    assert snapshot(loaded) == before
    store.close()
