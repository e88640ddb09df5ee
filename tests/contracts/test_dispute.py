"""Disputes on the adjudicator: challenge (by a participant or an authorised agent), refute, the
deadline rule (minimum response window and bounded length, at exact timestamps), conclusion,
funding safety (unaccounted and underfunded deposits, challenges without a state) and settlement of
positions at the oracle price, including stale and dead feeds.

Time: on eth-tester every transaction mines its own block one second after the latest one (the
chain runs ahead of the wall clock once time has been moved), so ``at(w, t)`` makes the next
transaction land at exactly ``t``; the tests check the mined blocks' timestamps from the receipts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from web3.types import TxReceipt

from offchain.chain import errors
from offchain.chain.client import RegistrationKind, Stage
from offchain.chain.deploy import deploy_contract
from offchain.model import ChallengeAuthorization, ChannelParams, ChannelState, Market, Outcome
from offchain.sandbox import DEFAULT_MAX_PRICE_AGE, DEFAULT_RISK_FACTOR, USD, Party, position_state
from offchain.settlement import OraclePrice, Payouts, payouts
from offchain.signing import CoSignedState, malleate
from offchain.types import Address, BatchNumber, ChannelId, MarketId, SyntheticAmount, TokenAmount, Version
from tests.conftest import BROKER_DEPOSIT, BTC, GOLD, TRADER_DEPOSIT, World

DAY = 24 * 3600
HOUR = 3600
FALLBACK_DELAY = 7 * DAY
TOKEN_DECIMALS = 6
TOTAL = TRADER_DEPOSIT + BROKER_DEPOSIT
OUNCE = 10**6  # one whole synthetic unit (market resolution 10**6)


# --------------------------------------------------------------------------- helpers


def same(a: object, b: object) -> bool:
    """Addresses compare case-insensitively (decoded revert arguments are not checksummed)."""
    return str(a).lower() == str(b).lower()


def block_time(w: World, receipt: TxReceipt) -> int:
    return int(w.chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"])


def at(w: World, target: int) -> None:
    """Move time so that the next transaction mines in a block stamped exactly ``target``."""
    now = w.chain.now()
    assert target > now, f"cannot go back to {target} from {now}"
    if target - 1 > now:
        w.chain.increase_time(target - 1 - now)
    assert w.chain.now() == target - 1


def price(dollars: int, cents: int = 0) -> int:
    """A feed answer with 8 decimals."""
    return dollars * 10**8 + cents * 10**6


def authorization(w: World, participant: Party, channel_id: ChannelId, agent: Address) -> bytes:
    return participant.signer.sign(w.sb.domain, ChallengeAuthorization(channel_id, agent))


def one(w: World, receipt: TxReceipt, event: str) -> dict[str, Any]:
    found = w.sb.adjudicator.events(receipt, event)
    assert len(found) == 1, f"expected one {event}, got {found}"
    return found[0]


def challenge(w: World, params: ChannelParams, signed: CoSignedState, by: Party | None = None) -> TxReceipt:
    return w.sb.adjudicator.challenge((by or w.trader).transactor, params, signed)


def challenge_and_wait(w: World, params: ChannelParams, signed: CoSignedState, by: Party | None = None) -> int:
    """Challenge with ``signed`` and move time so that the next transaction mines at the deadline."""
    deadline = int(one(w, challenge(w, params, signed, by), "Challenged")["deadline"])
    at(w, deadline)
    return deadline


def adjudicator_balance(w: World) -> int:
    return w.sb.token.balance_of(w.sb.adjudicator.address)


def conclude_and_check(
    w: World,
    params: ChannelParams,
    expected: Payouts,
    state: ChannelState | None = None,
    by: Party | None = None,
) -> TxReceipt:
    """Conclude (through the client, which picks conclude or concludeWithState) and check the
    Concluded event, the token movements and the final status against ``expected``."""
    by = by or w.outsider
    before = (w.balance(w.trader), w.balance(w.broker), adjudicator_balance(w), w.balance(w.outsider))
    receipt = w.sb.adjudicator.conclude(by.transactor, params, state)
    event = one(w, receipt, "Concluded")
    assert event["channelId"] == params.channel_id
    assert (event["toTrader"], event["toBroker"], event["underfunded"]) == (
        expected.to_trader,
        expected.to_broker,
        expected.underfunded,
    )
    assert w.balance(w.trader) - before[0] == expected.to_trader
    assert w.balance(w.broker) - before[1] == expected.to_broker
    assert before[2] - adjudicator_balance(w) == expected.total
    if by is not w.trader and by is not w.broker:
        assert w.balance(by) == before[3]
    status = w.sb.adjudicator.status(params.channel_id)
    assert status.stage == Stage.CONCLUDED
    assert (status.trader_deposit, status.broker_deposit) == (0, 0)
    return receipt


def settled(params: ChannelParams, state: ChannelState, trader_deposit: int, broker_deposit: int) -> Payouts:
    """The pure rule for a state without positions."""
    return payouts(params, state, trader_deposit, broker_deposit, {}, TOKEN_DECIMALS)


def dead_feed(w: World) -> Address:
    """A fresh PriceFeed that has never answered."""
    return deploy_contract(w.sb.deployer.transactor, "PriceFeed", 8, "DEAD / USD", w.sb.deployer.address).address


# --------------------------------------------------------------------------- challenge


@pytest.mark.parametrize("challenger", ["trader", "broker"])
def test_participant_challenges(w: World, challenger: str) -> None:
    params = w.open_channel()
    signed = w.sign(w.plain(params, 3, trader_available=700 * USD))
    party = getattr(w, challenger)
    receipt = challenge(w, params, signed, by=party)
    t0 = block_time(w, receipt)

    event = one(w, receipt, "Challenged")
    assert event["channelId"] == params.channel_id
    assert same(event["challenger"], party.address)
    assert event["version"] == 3
    assert event["deadline"] == t0 + params.challenge_duration

    status = w.sb.adjudicator.status(params.channel_id)
    assert status.stage == Stage.DISPUTED
    assert status.kind == RegistrationKind.SETTLED
    assert status.registered_version == 3
    assert status.dispute_start == t0
    assert status.deadline == t0 + params.challenge_duration
    assert status.refutation_end(params) == t0 + params.challenge_duration
    assert status.registered_data == 700 * USD  # the trader's payout, computed at registration
    assert (status.trader_deposit, status.broker_deposit) == (TRADER_DEPOSIT, BROKER_DEPOSIT)


def test_position_state_registers_its_fingerprint(w: World) -> None:
    params = w.open_channel(1)
    state = position_state(params, 2, TRADER_DEPOSIT, BROKER_DEPOSIT, (OUNCE,), 2_000 * USD)
    challenge(w, params, w.sign(state))
    status = w.sb.adjudicator.status(params.channel_id)
    assert status.kind == RegistrationKind.FINGERPRINT
    assert status.registered_version == 2
    assert status.registered_data == int.from_bytes(w.sb.domain.state_digest(state)[12:], "big")


@pytest.mark.parametrize("principal", ["trader", "broker"])
def test_agent_challenges_with_authorization(w: World, principal: str) -> None:
    params = w.open_channel()
    signed = w.sign(w.plain(params, 1))
    auth = authorization(w, getattr(w, principal), params.channel_id, w.watchtower.address)
    receipt = w.sb.adjudicator.challenge(w.watchtower.transactor, params, signed, authorization=auth)
    event = one(w, receipt, "Challenged")
    assert same(event["challenger"], w.watchtower.address)
    assert event["version"] == 1
    assert event["deadline"] == block_time(w, receipt) + params.challenge_duration
    status = w.sb.adjudicator.status(params.channel_id)
    assert status.stage == Stage.DISPUTED
    assert status.registered_version == 1


def test_a_revoked_authorization_no_longer_lets_the_agent_challenge(w: World) -> None:
    """The trader revokes what it signed for its old watchtower: that agent's challenge is refused,
    with or without a state, while the broker's own agent keeps its authorization."""
    params = w.open_channel()
    signed = w.sign(w.plain(params, 1))
    revoked = authorization(w, w.trader, params.channel_id, w.watchtower.address)
    assert not w.sb.adjudicator.authorization_revoked(params.channel_id, w.watchtower.address, w.trader.address)

    receipt = w.sb.adjudicator.revoke_challenge_authorization(w.trader.transactor, params, w.watchtower.address)
    event = one(w, receipt, "ChallengeAuthorizationRevoked")
    assert event["channelId"] == params.channel_id
    assert same(event["agent"], w.watchtower.address) and same(event["participant"], w.trader.address)
    assert w.sb.adjudicator.authorization_revoked(params.channel_id, w.watchtower.address, w.trader.address)
    assert not w.sb.adjudicator.authorization_revoked(params.channel_id, w.watchtower.address, w.broker.address)

    with pytest.raises(errors.AuthorizationRevoked) as exc:
        w.sb.adjudicator.challenge(w.watchtower.transactor, params, signed, authorization=revoked)
    assert same(exc.value.arguments["agent"], w.watchtower.address)
    assert same(exc.value.arguments["signer"], w.trader.address)
    with pytest.raises(errors.AuthorizationRevoked):
        w.sb.adjudicator.challenge_without_state(w.watchtower.transactor, params, authorization=revoked)
    assert w.sb.adjudicator.status(params.channel_id).stage == Stage.OPEN
    with pytest.raises(errors.AuthorizationAlreadyRevoked):
        w.sb.adjudicator.revoke_challenge_authorization(w.trader.transactor, params, w.watchtower.address)

    # the broker's authorization of the same agent is the broker's to revoke, not the trader's
    kept = authorization(w, w.broker, params.channel_id, w.watchtower.address)
    w.sb.adjudicator.challenge(w.watchtower.transactor, params, signed, authorization=kept)
    assert w.sb.adjudicator.status(params.channel_id).stage == Stage.DISPUTED


def test_only_a_participant_revokes_an_authorization(w: World) -> None:
    params = w.open_channel()
    with pytest.raises(errors.NotParticipant):
        w.sb.adjudicator.revoke_challenge_authorization(w.outsider.transactor, params, w.watchtower.address)
    with pytest.raises(errors.NotParticipant):  # an agent cannot revoke itself for its principal either
        w.sb.adjudicator.revoke_challenge_authorization(w.watchtower.transactor, params, w.watchtower.address)
    auth = authorization(w, w.trader, params.channel_id, w.watchtower.address)
    w.sb.adjudicator.challenge(w.watchtower.transactor, params, w.sign(w.plain(params, 1)), authorization=auth)


def test_outsider_without_authorization_cannot_challenge(w: World) -> None:
    params = w.open_channel()
    signed = w.sign(w.plain(params, 1))
    with pytest.raises(errors.NotAuthorized) as exc:
        w.sb.adjudicator.challenge(w.outsider.transactor, params, signed)
    assert same(exc.value.arguments["caller"], w.outsider.address)
    assert w.sb.adjudicator.status(params.channel_id).stage == Stage.OPEN


def test_authorization_signed_by_an_outsider_is_refused(w: World) -> None:
    params = w.open_channel()
    auth = authorization(w, w.outsider, params.channel_id, w.watchtower.address)
    with pytest.raises(errors.NotAuthorized) as exc:
        w.sb.adjudicator.challenge(w.watchtower.transactor, params, w.sign(w.plain(params, 1)), authorization=auth)
    assert same(exc.value.arguments["caller"], w.watchtower.address)


def test_authorization_for_another_channel_is_refused(w: World) -> None:
    params = w.open_channel()
    other = w.params()
    auth = authorization(w, w.trader, other.channel_id, w.watchtower.address)
    with pytest.raises(errors.NotAuthorized) as exc:
        w.sb.adjudicator.challenge(w.watchtower.transactor, params, w.sign(w.plain(params, 1)), authorization=auth)
    assert same(exc.value.arguments["caller"], w.watchtower.address)


def test_authorization_for_another_agent_is_refused(w: World) -> None:
    params = w.open_channel()
    auth = authorization(w, w.trader, params.channel_id, w.outsider.address)
    with pytest.raises(errors.NotAuthorized) as exc:
        w.sb.adjudicator.challenge(w.watchtower.transactor, params, w.sign(w.plain(params, 1)), authorization=auth)
    assert same(exc.value.arguments["caller"], w.watchtower.address)


def test_malleable_authorization_is_refused(w: World) -> None:
    params = w.open_channel()
    auth = malleate(authorization(w, w.trader, params.channel_id, w.watchtower.address))
    with pytest.raises(errors.MalleableSignature):
        w.sb.adjudicator.challenge(w.watchtower.transactor, params, w.sign(w.plain(params, 1)), authorization=auth)
    assert w.sb.adjudicator.status(params.channel_id).stage == Stage.OPEN


def test_malformed_authorization_is_refused(w: World) -> None:
    params = w.open_channel()
    auth = authorization(w, w.trader, params.channel_id, w.watchtower.address)[:64]
    with pytest.raises(errors.MalformedSignature):
        w.sb.adjudicator.challenge(w.watchtower.transactor, params, w.sign(w.plain(params, 1)), authorization=auth)


def test_state_signed_by_someone_else_is_refused(w: World) -> None:
    params = w.open_channel()
    state = w.plain(params, 1)
    digest = w.sb.domain.state_digest(state)
    forged = CoSignedState(state, w.trader.signer.sign_digest(digest), w.outsider.signer.sign_digest(digest))
    with pytest.raises(errors.WrongSigner) as exc:
        challenge(w, params, forged)
    assert same(exc.value.arguments["expected"], w.broker.address)
    assert same(exc.value.arguments["recovered"], w.outsider.address)


def test_challenging_twice_is_refused(w: World) -> None:
    params = w.open_channel()
    challenge(w, params, w.sign(w.plain(params, 1)))
    with pytest.raises(errors.ChannelDisputed) as exc:
        challenge(w, params, w.sign(w.plain(params, 2)), by=w.broker)
    assert exc.value.arguments["channelId"] == params.channel_id
    with pytest.raises(errors.ChannelDisputed):
        w.sb.adjudicator.challenge_without_state(w.broker.transactor, params)
    with pytest.raises(errors.ChannelDisputed):
        w.sb.adjudicator.deposit(w.trader.transactor, params, w.trader.address, USD)
    assert w.sb.adjudicator.status(params.channel_id).registered_version == 1


# --------------------------------------------------------------------------- refute


def test_anyone_refutes_with_a_newer_state(w: World) -> None:
    params = w.open_channel()
    t0 = block_time(w, challenge(w, params, w.sign(w.plain(params, 1))))
    w.chain.increase_time(HOUR)
    receipt = w.sb.adjudicator.refute(w.outsider.transactor, params, w.sign(w.plain(params, 4, 250 * USD)))
    t1 = block_time(w, receipt)

    event = one(w, receipt, "Refuted")
    assert event["channelId"] == params.channel_id
    assert same(event["refuter"], w.outsider.address)
    assert event["version"] == 4
    assert event["deadline"] == t1 + params.challenge_duration

    status = w.sb.adjudicator.status(params.channel_id)
    assert status.stage == Stage.DISPUTED
    assert status.registered_version == 4
    assert status.kind == RegistrationKind.SETTLED
    assert status.registered_data == 250 * USD
    assert status.deadline == t1 + params.challenge_duration
    assert status.dispute_start == t0  # the refutation phase does not move


@pytest.mark.parametrize("version", [5, 4, 0])
def test_refute_with_an_equal_or_older_version_is_refused(w: World, version: int) -> None:
    params = w.open_channel()
    challenge(w, params, w.sign(w.plain(params, 5)))
    stale = w.sign_unchecked(w.plain(params, version, trader_available=123 * USD))
    with pytest.raises(errors.VersionNotNewer) as exc:
        w.sb.adjudicator.refute(w.broker.transactor, params, stale)
    assert exc.value.arguments == {"registeredVersion": 5, "version": version}
    status = w.sb.adjudicator.status(params.channel_id)
    assert status.registered_version == 5
    assert status.registered_data == TRADER_DEPOSIT


def test_refute_without_a_dispute_is_refused(w: World) -> None:
    params = w.open_channel()
    with pytest.raises(errors.ChannelNotDisputed) as exc:
        w.sb.adjudicator.refute(w.broker.transactor, params, w.sign(w.plain(params, 1)))
    assert exc.value.arguments["channelId"] == params.channel_id
    with pytest.raises(errors.ChannelNotDisputed):
        w.sb.adjudicator.conclude(w.broker.transactor, params)


# --------------------------------------------------------------------------- the deadline rule


def test_late_refute_leaves_the_other_party_a_full_window(w: World) -> None:
    """(a) A refute in the last second of the refutation phase still gives the other party the
    whole challenge duration before anyone can conclude."""
    params = w.open_channel(challenge_duration=HOUR)
    d = params.challenge_duration
    t0 = block_time(w, challenge(w, params, w.sign(w.plain(params, 1))))

    # Without a refute the challenger's counterparty has the whole phase.
    at(w, t0 + d - 1)
    with pytest.raises(errors.DeadlineNotReached) as exc:
        w.sb.adjudicator.conclude(w.outsider.transactor, params)
    assert exc.value.arguments["deadline"] == t0 + d

    # A refute in the last second of the phase is accepted ...
    receipt = w.sb.adjudicator.refute(w.broker.transactor, params, w.sign(w.plain(params, 2, 100 * USD)))
    t1 = block_time(w, receipt)
    assert t1 == t0 + d - 1
    assert one(w, receipt, "Refuted")["deadline"] == t1 + d

    # ... and the trader still has a full duration to answer before conclusion.
    at(w, t1 + d - 1)
    with pytest.raises(errors.DeadlineNotReached) as exc:
        w.sb.adjudicator.conclude(w.outsider.transactor, params)
    assert exc.value.arguments["deadline"] == t1 + d
    w.chain.increase_time(1)
    assert w.chain.now() == t1 + d - 1
    state = w.plain(params, 2, 100 * USD)
    receipt = conclude_and_check(w, params, settled(params, state, TRADER_DEPOSIT, BROKER_DEPOSIT))
    assert block_time(w, receipt) == t1 + d


def test_refute_at_the_end_of_the_refutation_phase_is_refused(w: World) -> None:
    params = w.open_channel(challenge_duration=HOUR)
    d = params.challenge_duration
    t0 = block_time(w, challenge(w, params, w.sign(w.plain(params, 1))))
    at(w, t0 + d)
    with pytest.raises(errors.RefutationPhaseOver) as exc:
        w.sb.adjudicator.refute(w.broker.transactor, params, w.sign(w.plain(params, 2)))
    assert exc.value.arguments["refutationEnd"] == t0 + d
    status = w.sb.adjudicator.status(params.channel_id)
    assert status.registered_version == 1
    assert status.deadline == t0 + d
    # The deadline has come: the registered state concludes at exactly t0 + d.
    receipt = conclude_and_check(w, params, settled(params, w.plain(params, 1), TRADER_DEPOSIT, BROKER_DEPOSIT))
    assert block_time(w, receipt) == t0 + d


def test_a_chain_of_late_refutes_is_bounded_by_twice_the_duration(w: World) -> None:
    """(b) However the parties take turns refuting, each as late as they can, no deadline passes
    challenge time + 2 * duration, and conclusion is possible by then."""
    params = w.open_channel(challenge_duration=HOUR)
    d = params.challenge_duration
    t0 = block_time(w, challenge(w, params, w.sign(w.plain(params, 1))))
    deadlines = []
    refuters = [w.broker, w.trader, w.broker, w.trader]
    times = [t0 + d // 2, t0 + d - 3, t0 + d - 2, t0 + d - 1]
    for version, (refuter, when) in enumerate(zip(refuters, times, strict=True), start=2):
        at(w, when)
        receipt = w.sb.adjudicator.refute(refuter.transactor, params, w.sign(w.plain(params, version, version * USD)))
        assert block_time(w, receipt) == when
        deadline = int(one(w, receipt, "Refuted")["deadline"])
        assert deadline == when + d
        assert deadline <= t0 + 2 * d
        deadlines.append(deadline)
    assert max(deadlines) == t0 + 2 * d - 1

    # The phase is over: nothing stretches the dispute further.
    with pytest.raises(errors.RefutationPhaseOver) as exc:
        w.sb.adjudicator.refute(w.broker.transactor, params, w.sign(w.plain(params, 6)))
    assert exc.value.arguments["refutationEnd"] == t0 + d
    assert w.sb.adjudicator.status(params.channel_id).deadline == t0 + 2 * d - 1

    at(w, t0 + 2 * d)
    last = w.plain(params, 5, 5 * USD)
    receipt = conclude_and_check(w, params, settled(params, last, TRADER_DEPOSIT, BROKER_DEPOSIT))
    assert block_time(w, receipt) == t0 + 2 * d


def test_refutes_every_second_never_pass_the_bound(w: World) -> None:
    params = w.open_channel(challenge_duration=HOUR)
    d = params.challenge_duration
    t0 = block_time(w, challenge(w, params, w.sign(w.plain(params, 1))))
    at(w, t0 + d - 5)
    version = 1
    while w.chain.now() + 1 < t0 + d:
        version += 1
        receipt = w.sb.adjudicator.refute(w.trader.transactor, params, w.sign(w.plain(params, version)))
        assert one(w, receipt, "Refuted")["deadline"] <= t0 + 2 * d
    assert version == 6
    with pytest.raises(errors.RefutationPhaseOver):
        w.sb.adjudicator.refute(w.trader.transactor, params, w.sign(w.plain(params, version + 1)))
    at(w, t0 + 2 * d)
    conclude_and_check(w, params, settled(params, w.plain(params, version), TRADER_DEPOSIT, BROKER_DEPOSIT))


# --------------------------------------------------------------------------- conclude


def test_conclude_before_the_deadline_is_refused(w: World) -> None:
    params = w.open_channel()
    deadline = int(one(w, challenge(w, params, w.sign(w.plain(params, 1))), "Challenged")["deadline"])
    w.chain.increase_time(params.challenge_duration // 2)
    with pytest.raises(errors.DeadlineNotReached) as exc:
        w.sb.adjudicator.conclude(w.outsider.transactor, params)
    assert exc.value.arguments["deadline"] == deadline
    assert w.sb.adjudicator.status(params.channel_id).stage == Stage.DISPUTED


def test_conclude_pays_a_settled_state_by_the_pure_rule(w: World) -> None:
    params = w.open_channel()
    state = w.plain(params, 7, trader_available=1_234_567_891)
    challenge_and_wait(w, params, w.sign(state), by=w.broker)
    expected = settled(params, state, TRADER_DEPOSIT, BROKER_DEPOSIT)
    assert expected == Payouts(1_234_567_891, TOTAL - 1_234_567_891)
    conclude_and_check(w, params, expected)


def test_nothing_happens_after_conclusion(w: World) -> None:
    params = w.open_channel()
    challenge_and_wait(w, params, w.sign(w.plain(params, 1)))
    conclude_and_check(w, params, Payouts(TRADER_DEPOSIT, BROKER_DEPOSIT))
    cid = params.channel_id

    attempts: list[Callable[[], object]] = [
        lambda: w.sb.adjudicator.conclude(w.outsider.transactor, params),
        lambda: challenge(w, params, w.sign(w.plain(params, 2))),
        lambda: w.sb.adjudicator.challenge_without_state(w.broker.transactor, params),
        lambda: w.sb.adjudicator.refute(w.broker.transactor, params, w.sign(w.plain(params, 3))),
        lambda: w.sb.adjudicator.deposit(w.trader.transactor, params, w.trader.address, USD),
        lambda: w.sb.adjudicator.close(w.broker.transactor, params, w.sign(w.plain(params, 4, final=True))),
    ]
    for attempt in attempts:
        with pytest.raises(errors.ChannelConcluded) as exc:
            attempt()
        assert exc.value.arguments["channelId"] == cid
    status = w.sb.adjudicator.status(cid)
    assert (status.stage, status.trader_deposit, status.broker_deposit) == (Stage.CONCLUDED, 0, 0)


# --------------------------------------------------------------------------- challenge without a state


@pytest.mark.parametrize("caller", ["trader", "broker", "agent"])
def test_challenge_without_state_returns_every_deposit(w: World, caller: str) -> None:
    """Deposits made before any state was co-signed are never locked."""
    params = w.params()
    w.fund(params, 700 * USD, 300 * USD)
    if caller == "agent":
        auth = authorization(w, w.broker, params.channel_id, w.watchtower.address)
        party = w.watchtower
    else:
        auth = b""
        party = getattr(w, caller)
    receipt = w.sb.adjudicator.challenge_without_state(party.transactor, params, authorization=auth)
    event = one(w, receipt, "ChallengedWithoutState")
    assert same(event["challenger"], party.address)
    assert event["deadline"] == block_time(w, receipt) + params.challenge_duration
    status = w.sb.adjudicator.status(params.channel_id)
    assert status.stage == Stage.DISPUTED
    assert status.kind == RegistrationKind.NO_STATE
    assert status.registered_version is None

    at(w, event["deadline"] - 1)
    with pytest.raises(errors.DeadlineNotReached):
        w.sb.adjudicator.conclude(w.outsider.transactor, params)
    w.chain.increase_time(1)
    conclude_and_check(w, params, Payouts(700 * USD, 300 * USD))


def test_challenge_without_state_needs_a_participant_or_an_agent(w: World) -> None:
    params = w.open_channel()
    with pytest.raises(errors.NotAuthorized) as exc:
        w.sb.adjudicator.challenge_without_state(w.outsider.transactor, params)
    assert same(exc.value.arguments["caller"], w.outsider.address)
    auth = authorization(w, w.trader, params.channel_id, w.outsider.address)
    with pytest.raises(errors.NotAuthorized) as exc:
        w.sb.adjudicator.challenge_without_state(w.watchtower.transactor, params, authorization=auth)
    assert same(exc.value.arguments["caller"], w.watchtower.address)
    assert w.sb.adjudicator.status(params.channel_id).stage == Stage.OPEN


def test_any_co_signed_state_refutes_a_challenge_without_state(w: World) -> None:
    params = w.open_channel()
    w.sb.adjudicator.challenge_without_state(w.trader.transactor, params)
    state = w.plain(params, 0, trader_available=400 * USD)
    receipt = w.sb.adjudicator.refute(w.broker.transactor, params, w.sign(state))
    assert one(w, receipt, "Refuted")["version"] == 0
    status = w.sb.adjudicator.status(params.channel_id)
    assert status.kind == RegistrationKind.SETTLED
    assert status.registered_version == 0

    # Once a state is registered, the usual rule applies: the same version does not refute it.
    with pytest.raises(errors.VersionNotNewer) as exc:
        w.sb.adjudicator.refute(w.trader.transactor, params, w.sign(state))
    assert exc.value.arguments == {"registeredVersion": 0, "version": 0}

    at(w, one(w, receipt, "Refuted")["deadline"])
    conclude_and_check(w, params, Payouts(400 * USD, TOTAL - 400 * USD))


# --------------------------------------------------------------------------- funding safety


@pytest.mark.parametrize(
    ("trader_deposit", "broker_deposit"),
    [(TRADER_DEPOSIT, 0), (0, BROKER_DEPOSIT), (TRADER_DEPOSIT, BROKER_DEPOSIT - 1), (TRADER_DEPOSIT + 9, 1)],
)
def test_underfunded_channel_returns_every_deposit(w: World, trader_deposit: int, broker_deposit: int) -> None:
    """The version-0 state accounts for both deposits; a party that never funded (fully) cannot
    take anything: each deposit goes back to its participant."""
    params = w.params()
    state = w.plain(params, 0)  # accounts TRADER_DEPOSIT and BROKER_DEPOSIT
    w.fund(params, trader_deposit, broker_deposit)
    challenge_and_wait(w, params, w.sign(state), by=w.trader if trader_deposit else w.broker)
    assert w.sb.adjudicator.status(params.channel_id).kind == RegistrationKind.SETTLED_UNDERFUNDED
    expected = settled(params, state, trader_deposit, broker_deposit)
    assert expected == Payouts(trader_deposit, broker_deposit, underfunded=True)
    conclude_and_check(w, params, expected)


def test_trader_gets_its_deposit_back_when_the_broker_never_funds(w: World) -> None:
    params = w.params()
    state = w.plain(params, 0, trader_available=0)  # would give the broker everything
    w.fund(params, TRADER_DEPOSIT, 0)
    challenge_and_wait(w, params, w.sign(state), by=w.broker)
    receipt = conclude_and_check(w, params, Payouts(TRADER_DEPOSIT, 0, underfunded=True))
    assert one(w, receipt, "Concluded")["underfunded"] is True


def test_deposits_the_state_does_not_account_for_go_back(w: World) -> None:
    params = w.open_channel()
    w.sb.adjudicator.deposit(w.trader.transactor, params, w.trader.address, 123 * USD)
    # Anyone may pay into a side; the deposit belongs to that participant.
    w.sb.adjudicator.deposit(w.outsider.transactor, params, w.broker.address, 77 * USD)
    state = w.plain(params, 3, trader_available=600 * USD)
    challenge_and_wait(w, params, w.sign(state))
    expected = settled(params, state, TRADER_DEPOSIT + 123 * USD, BROKER_DEPOSIT + 77 * USD)
    assert expected == Payouts(723 * USD, TOTAL - 600 * USD + 77 * USD)
    conclude_and_check(w, params, expected)


def test_unaccounted_deposits_go_back_with_positions(w: World) -> None:
    params = w.open_channel(1)
    w.sb.adjudicator.deposit(w.trader.transactor, params, w.trader.address, 50 * USD)
    w.sb.adjudicator.deposit(w.broker.transactor, params, w.broker.address, 20 * USD)
    state = position_state(params, 1, TRADER_DEPOSIT, BROKER_DEPOSIT, (OUNCE,), 2_000 * USD)
    challenge_and_wait(w, params, w.sign(state))
    w.sb.push_price(GOLD, price(2_010))
    expected = payouts(
        params,
        state,
        TRADER_DEPOSIT + 50 * USD,
        BROKER_DEPOSIT + 20 * USD,
        {1: OraclePrice(price(2_010), 8)},
        TOKEN_DECIMALS,
    )
    assert expected == Payouts(TRADER_DEPOSIT + 10 * USD + 50 * USD, BROKER_DEPOSIT - 10 * USD + 20 * USD)
    conclude_and_check(w, params, expected, state)


def test_underfunded_position_state_returns_every_deposit(w: World) -> None:
    params = w.params(1)
    state = position_state(params, 1, TRADER_DEPOSIT, BROKER_DEPOSIT, (OUNCE,), 2_000 * USD)
    w.fund(params, TRADER_DEPOSIT, 0)
    challenge_and_wait(w, params, w.sign(state))
    w.sb.push_price(GOLD, price(2_500))
    conclude_and_check(w, params, Payouts(TRADER_DEPOSIT, 0, underfunded=True), state)


def test_underfunded_position_state_needs_no_oracle_price(w: World) -> None:
    """Every deposit goes back whatever the positions: a dead feed does not delay it."""
    market = Market(MarketId(1), dead_feed(w), OUNCE, DEFAULT_RISK_FACTOR, DEFAULT_MAX_PRICE_AGE)
    params = w.sb.channel_params(w.trader, w.broker, (market,))
    state = position_state(params, 1, TRADER_DEPOSIT, BROKER_DEPOSIT, (OUNCE,), 2_000 * USD)
    w.fund(params, TRADER_DEPOSIT, 0)
    challenge_and_wait(w, params, w.sign(state))
    conclude_and_check(w, params, Payouts(TRADER_DEPOSIT, 0, underfunded=True), state)


# --------------------------------------------------------------------------- positions at the oracle price


@pytest.mark.parametrize(
    ("position", "cost", "answer", "trader_gets"),
    [
        (OUNCE, 2_000 * USD, price(2_100), TRADER_DEPOSIT + 100 * USD),  # long, price rises: gains
        (OUNCE, 2_000 * USD, price(1_900), TRADER_DEPOSIT - 100 * USD),  # long, price falls: loses
        (-OUNCE, -2_000 * USD, price(2_100), TRADER_DEPOSIT - 100 * USD),  # short, price rises: loses
        (-OUNCE, -2_000 * USD, price(1_900), TRADER_DEPOSIT + 100 * USD),  # short, price falls: gains
        (333_333, 0, 2_000 * 10**8 + 1, TRADER_DEPOSIT + 666_666_000),  # rounds down for a long ...
        (-333_333, 0, 2_000 * 10**8 + 1, TRADER_DEPOSIT - 666_666_001),  # ... and away from zero for a short
    ],
)
def test_one_position_settles_at_the_oracle_price(
    w: World, position: int, cost: int, answer: int, trader_gets: int
) -> None:
    params = w.open_channel(1)
    state = position_state(params, 1, TRADER_DEPOSIT, BROKER_DEPOSIT, (position,), cost)
    challenge_and_wait(w, params, w.sign(state))
    w.sb.push_price(GOLD, answer)
    expected = payouts(params, state, TRADER_DEPOSIT, BROKER_DEPOSIT, {1: OraclePrice(answer, 8)}, TOKEN_DECIMALS)
    assert expected == Payouts(trader_gets, TOTAL - trader_gets)
    receipt = conclude_and_check(w, params, expected, state)
    assert w.sb.adjudicator.events(receipt, "OracleFallbackUsed") == []


def test_three_positions_settle_at_their_oracle_prices(w: World) -> None:
    params = w.open_channel(3)  # gold (1), BTC (2), gold (3)
    state = position_state(
        params, 4, TRADER_DEPOSIT, BROKER_DEPOSIT, (2 * OUNCE, -10_000, OUNCE // 2), cost=1_000 * USD, fees=7 * USD
    )
    challenge_and_wait(w, params, w.sign(state))
    w.sb.push_price(GOLD, price(2_050))
    w.sb.push_price(BTC, price(58_000))
    prices = {1: OraclePrice(price(2_050), 8), 2: OraclePrice(price(58_000), 8), 3: OraclePrice(price(2_050), 8)}
    expected = payouts(params, state, TRADER_DEPOSIT, BROKER_DEPOSIT, prices, TOKEN_DECIMALS)
    trader = TRADER_DEPOSIT - 1_007 * USD + 4_100 * USD - 580 * USD + 1_025 * USD
    assert expected == Payouts(trader, TOTAL - trader)
    conclude_and_check(w, params, expected, state)


def test_trader_payout_is_clamped_at_zero(w: World) -> None:
    params = w.open_channel(1)
    # Bought an ounce for twice its deposit; gold then falls to 500: the trader owes more than it has.
    state = position_state(params, 1, TRADER_DEPOSIT, BROKER_DEPOSIT, (OUNCE,), 2_000 * USD)
    challenge_and_wait(w, params, w.sign(state))
    w.sb.push_price(GOLD, price(500))
    expected = payouts(params, state, TRADER_DEPOSIT, BROKER_DEPOSIT, {1: OraclePrice(price(500), 8)}, TOKEN_DECIMALS)
    assert expected == Payouts(0, TOTAL)
    conclude_and_check(w, params, expected, state)


def test_trader_payout_is_clamped_at_the_total(w: World) -> None:
    params = w.open_channel(2)
    # Sold a bitcoin at 60,000; it falls to 1,000: the trader's claim exceeds the channel.
    state = position_state(params, 1, TRADER_DEPOSIT, BROKER_DEPOSIT, (0, -OUNCE), -60_000 * USD)
    challenge_and_wait(w, params, w.sign(state))
    w.sb.push_price(BTC, price(1_000))
    expected = payouts(params, state, TRADER_DEPOSIT, BROKER_DEPOSIT, {2: OraclePrice(price(1_000), 8)}, TOKEN_DECIMALS)
    assert expected == Payouts(TOTAL, 0)
    conclude_and_check(w, params, expected, state)


def test_conclude_with_another_state_is_refused(w: World) -> None:
    params = w.open_channel(1)
    state = position_state(params, 2, TRADER_DEPOSIT, BROKER_DEPOSIT, (OUNCE,), 2_000 * USD)
    challenge_and_wait(w, params, w.sign(state))
    w.sb.push_price(GOLD, price(2_000))
    for other in (
        replace(state, version=Version(3)),
        replace(state, outcomes=(Outcome(SyntheticAmount(2 * OUNCE), TokenAmount(0), BatchNumber(1)),)),
        replace(state, balances=replace(state.balances, trader_available=TokenAmount(TRADER_DEPOSIT))),
    ):
        with pytest.raises(errors.StateMismatch):
            w.sb.adjudicator.conclude(w.outsider.transactor, params, other)
    foreign = replace(state, channel_id=w.params(1).channel_id)
    with pytest.raises(errors.WrongChannel) as exc:
        w.sb.adjudicator.conclude(w.outsider.transactor, params, foreign)
    assert exc.value.arguments == {"expected": params.channel_id, "actual": foreign.channel_id}
    conclude_and_check(w, params, Payouts(TRADER_DEPOSIT, BROKER_DEPOSIT), state)


def test_plain_conclude_of_a_fingerprint_registration_is_refused(w: World) -> None:
    params = w.open_channel(1)
    state = position_state(params, 1, TRADER_DEPOSIT, BROKER_DEPOSIT, (OUNCE,), 2_000 * USD)
    challenge_and_wait(w, params, w.sign(state))
    fn = w.sb.adjudicator.contract.functions.conclude(params.header().as_abi())
    with pytest.raises(errors.StateRequired):
        w.outsider.transactor.transact(fn)
    assert w.sb.adjudicator.status(params.channel_id).stage == Stage.DISPUTED


def test_conclude_with_state_of_a_settled_registration_is_refused(w: World) -> None:
    params = w.open_channel(1)
    state = w.plain(params, 1, 300 * USD)
    challenge_and_wait(w, params, w.sign(state))
    fn = w.sb.adjudicator.contract.functions.concludeWithState(params.as_abi(), state.as_abi())
    with pytest.raises(errors.StateNotRequired):
        w.outsider.transactor.transact(fn)
    conclude_and_check(w, params, Payouts(300 * USD, TOTAL - 300 * USD))


# --------------------------------------------------------------------------- oracle staleness and dead feeds


def test_feed_left_stale_by_time_blocks_until_the_fallback(w: World) -> None:
    params = w.open_channel(1)
    state = position_state(params, 1, TRADER_DEPOSIT, BROKER_DEPOSIT, (OUNCE,), 2_000 * USD)
    deadline = challenge_and_wait(w, params, w.sign(state))  # a day later: the session's answer is stale
    with pytest.raises(errors.OraclePriceUnavailable) as exc:
        w.sb.adjudicator.conclude(w.outsider.transactor, params, state)
    assert exc.value.arguments == {"market": 1, "fallbackAt": deadline + FALLBACK_DELAY}

    stale = w.sb.feeds[GOLD].latest().answer
    at(w, deadline + FALLBACK_DELAY)
    expected = payouts(params, state, TRADER_DEPOSIT, BROKER_DEPOSIT, {1: OraclePrice(stale, 8)}, TOKEN_DECIMALS)
    receipt = conclude_and_check(w, params, expected, state)
    fallback = one(w, receipt, "OracleFallbackUsed")
    assert (fallback["channelId"], fallback["market"], fallback["price"]) == (params.channel_id, 1, stale)


def test_stale_answer_settles_at_the_fallback_delay_exactly(w: World) -> None:
    params = w.open_channel(1)
    state = position_state(params, 1, TRADER_DEPOSIT, BROKER_DEPOSIT, (-OUNCE,), -2_000 * USD)
    deadline = challenge_and_wait(w, params, w.sign(state))
    stale = price(2_345, 67)
    w.sb.feeds[GOLD].push_at(w.sb.deployer.transactor, stale, w.chain.now() - 2 * HOUR)
    with pytest.raises(errors.OraclePriceUnavailable) as exc:
        w.sb.adjudicator.conclude(w.outsider.transactor, params, state)
    assert exc.value.arguments == {"market": 1, "fallbackAt": deadline + FALLBACK_DELAY}

    at(w, deadline + FALLBACK_DELAY - 1)
    with pytest.raises(errors.OraclePriceUnavailable):
        w.sb.adjudicator.conclude(w.outsider.transactor, params, state)
    w.chain.increase_time(1)
    expected = payouts(params, state, TRADER_DEPOSIT, BROKER_DEPOSIT, {1: OraclePrice(stale, 8)}, TOKEN_DECIMALS)
    assert expected.to_trader == TRADER_DEPOSIT + 2_000 * USD - 2_345_670_000
    receipt = conclude_and_check(w, params, expected, state)
    assert block_time(w, receipt) == deadline + FALLBACK_DELAY
    fallback = one(w, receipt, "OracleFallbackUsed")
    assert (fallback["market"], fallback["price"]) == (1, stale)


def test_an_answer_exactly_max_price_age_old_is_fresh(w: World) -> None:
    params = w.open_channel(1)
    state = position_state(params, 1, TRADER_DEPOSIT, BROKER_DEPOSIT, (OUNCE,), 2_000 * USD)
    deadline = challenge_and_wait(w, params, w.sign(state))
    conclude_at = deadline + 10
    # One second too old is refused ...
    w.sb.feeds[GOLD].push_at(w.sb.deployer.transactor, price(2_200), conclude_at - DEFAULT_MAX_PRICE_AGE - 1)
    at(w, conclude_at)
    with pytest.raises(errors.OraclePriceUnavailable):
        w.sb.adjudicator.conclude(w.outsider.transactor, params, state)
    # ... exactly maxPriceAge old is fresh (pushing mines a block, so aim one second later).
    w.sb.feeds[GOLD].push_at(w.sb.deployer.transactor, price(2_200), conclude_at + 1 - DEFAULT_MAX_PRICE_AGE)
    assert w.chain.now() == conclude_at
    expected = payouts(params, state, TRADER_DEPOSIT, BROKER_DEPOSIT, {1: OraclePrice(price(2_200), 8)}, TOKEN_DECIMALS)
    receipt = conclude_and_check(w, params, expected, state)
    assert block_time(w, receipt) == conclude_at + 1
    assert w.sb.adjudicator.events(receipt, "OracleFallbackUsed") == []


def test_a_feed_that_never_answered_settles_at_zero_after_the_delay(w: World) -> None:
    dead = Market(
        id=MarketId(7),
        feed=dead_feed(w),
        resolution=10**6,
        risk_factor=DEFAULT_RISK_FACTOR,
        max_price_age=DEFAULT_MAX_PRICE_AGE,
    )
    params = w.sb.channel_params(w.trader, w.broker, (w.sb.market(GOLD, 1), dead))
    w.fund(params)
    state = position_state(params, 1, TRADER_DEPOSIT, BROKER_DEPOSIT, (OUNCE, 5 * OUNCE), 2_500 * USD)
    deadline = challenge_and_wait(w, params, w.sign(state))
    w.sb.push_price(GOLD, price(2_100))
    with pytest.raises(errors.OraclePriceUnavailable) as exc:
        w.sb.adjudicator.conclude(w.outsider.transactor, params, state)
    assert exc.value.arguments == {"market": 7, "fallbackAt": deadline + FALLBACK_DELAY}

    at(w, deadline + FALLBACK_DELAY)
    w.sb.push_price(GOLD, price(2_100))  # gold is fresh again; the dead market falls back
    prices = {1: OraclePrice(price(2_100), 8), 7: OraclePrice(0, 8)}
    expected = payouts(params, state, TRADER_DEPOSIT, BROKER_DEPOSIT, prices, TOKEN_DECIMALS)
    assert expected.to_trader == TRADER_DEPOSIT - 2_500 * USD + 2_100 * USD
    receipt = conclude_and_check(w, params, expected, state)
    fallback = one(w, receipt, "OracleFallbackUsed")
    assert (fallback["channelId"], fallback["market"], fallback["price"]) == (params.channel_id, 7, 0)


def test_a_non_positive_answer_counts_as_no_answer(w: World) -> None:
    params = w.open_channel(1)
    state = position_state(params, 1, TRADER_DEPOSIT, BROKER_DEPOSIT, (-OUNCE,), -2_000 * USD)
    deadline = challenge_and_wait(w, params, w.sign(state))
    w.sb.push_price(GOLD, -5)
    with pytest.raises(errors.OraclePriceUnavailable):
        w.sb.adjudicator.conclude(w.outsider.transactor, params, state)
    at(w, deadline + FALLBACK_DELAY)
    receipt = conclude_and_check(w, params, Payouts(TRADER_DEPOSIT + 2_000 * USD, BROKER_DEPOSIT - 2_000 * USD), state)
    assert one(w, receipt, "OracleFallbackUsed")["price"] == 0


# --------------------------------------------------------------------------- malformed states


def _out_of_bounds(params: ChannelParams, field: str, base: ChannelState) -> ChannelState:
    b = base.balances
    if field == "version":
        return replace(base, version=Version(2**48))
    if field == "position":
        return replace(base, outcomes=(Outcome(SyntheticAmount(2**63), TokenAmount(0), BatchNumber(0)),))
    if field == "last_batch":
        return replace(base, outcomes=(Outcome(SyntheticAmount(0), TokenAmount(0), BatchNumber(2**64)),))
    if field == "trader_available":
        return replace(base, balances=replace(b, trader_available=TokenAmount(-(2**63))))
    if field == "broker_locked":
        return replace(base, balances=replace(b, broker_locked=TokenAmount(2**63)))
    raise AssertionError(field)


@pytest.mark.parametrize("field", ["version", "position", "last_batch", "trader_available", "broker_locked"])
def test_out_of_range_values_are_refused(w: World, field: str) -> None:
    params = w.open_channel(1)
    bad = w.sign_unchecked(_out_of_bounds(params, field, w.plain(params, 5)))
    with pytest.raises(errors.ValueOutOfBounds) as exc:
        challenge(w, params, bad)
    assert exc.value.arguments == {}
    challenge(w, params, w.sign(w.plain(params, 2)))
    with pytest.raises(errors.ValueOutOfBounds):
        w.sb.adjudicator.refute(w.broker.transactor, params, bad)
    assert w.sb.adjudicator.status(params.channel_id).registered_version == 2


def test_state_of_another_channel_is_refused(w: World) -> None:
    params = w.open_channel()
    other = w.params()
    foreign = w.sign(w.plain(other, 1))
    with pytest.raises(errors.WrongChannel) as exc:
        challenge(w, params, foreign)
    assert exc.value.arguments == {"expected": params.channel_id, "actual": other.channel_id}
    challenge(w, params, w.sign(w.plain(params, 1)))
    with pytest.raises(errors.WrongChannel):
        w.sb.adjudicator.refute(w.broker.transactor, params, w.sign(w.plain(other, 2)))


@pytest.mark.parametrize("outcomes", [0, 2])
def test_state_with_the_wrong_number_of_outcomes_is_refused(w: World, outcomes: int) -> None:
    params = w.open_channel(1)
    empty = Outcome(SyntheticAmount(0), TokenAmount(0), BatchNumber(0))
    state = replace(w.plain(params, 1), outcomes=(empty,) * outcomes)
    with pytest.raises(errors.OutcomeCountMismatch) as exc:
        challenge(w, params, w.sign_unchecked(state))
    assert exc.value.arguments == {"outcomes": outcomes, "markets": 1}


# --------------------------------------------------------------------------- the registered state from calldata


def test_registered_state_is_recovered_from_the_transaction(w: World) -> None:
    params = w.open_channel(2)
    first = w.sign(position_state(params, 1, TRADER_DEPOSIT, BROKER_DEPOSIT, (OUNCE, -20_000), 800 * USD, 3 * USD))
    receipt = challenge(w, params, first)
    assert w.sb.adjudicator.registered_state_from_transaction(receipt["transactionHash"]) == first

    newer = w.sign(position_state(params, 2, TRADER_DEPOSIT, BROKER_DEPOSIT, (OUNCE, -30_000), 400 * USD, 4 * USD))
    receipt = w.sb.adjudicator.refute(w.broker.transactor, params, newer)
    recovered = w.sb.adjudicator.registered_state_from_transaction(receipt["transactionHash"])
    assert recovered == newer
    assert recovered.verify(w.sb.domain, w.trader.address, w.broker.address) == w.sb.domain.state_digest(newer.state)

    # A party that never held the state concludes with the recovered one.
    at(w, int(one(w, receipt, "Refuted")["deadline"]))
    w.sb.push_price(GOLD, price(2_000))
    w.sb.push_price(BTC, price(60_000))
    prices = {1: OraclePrice(price(2_000), 8), 2: OraclePrice(price(60_000), 8)}
    expected = payouts(params, recovered.state, TRADER_DEPOSIT, BROKER_DEPOSIT, prices, TOKEN_DECIMALS)
    conclude_and_check(w, params, expected, recovered.state)
