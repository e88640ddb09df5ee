"""Deposits on the adjudicator: credited per party (whoever pays), counters that never race,
the channel-parameter checks every function applies, the holdings cap, and tokens that misbehave
(no allowance, false instead of a revert, a fee taken on transfer)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from eth_abi import encode as abi_encode
from eth_utils import keccak
from web3.contract import Contract

from offchain.chain import errors
from offchain.chain.artifacts import load_artifact
from offchain.chain.client import Stage
from offchain.chain.deploy import deploy_contract
from offchain.model import ZERO_ADDRESS, ChannelParams
from offchain.sandbox import USD, Party, plain_state
from offchain.signing import CoSignedState
from tests.conftest import BROKER_DEPOSIT, TRADER_DEPOSIT, World

MAX_HOLDINGS = 2**63 - 1
EMPTY_MARKETS_HASH = keccak(abi_encode(["(uint256,address,uint256,uint256,uint256)[]"], [[]]))


# --------------------------------------------------------------------------- helpers


def same(a: object, b: object) -> bool:
    """Addresses compare case-insensitively (decoded revert arguments are not checksummed)."""
    return str(a).lower() == str(b).lower()


def deposited(w: World, receipt: Any) -> dict[str, Any]:
    events = w.sb.adjudicator.events(receipt, "Deposited")
    assert len(events) == 1
    return events[0]


def deposit(w: World, payer: Party, params: ChannelParams, participant: Party, amount: int) -> dict[str, Any]:
    return deposited(w, w.sb.adjudicator.deposit(payer.transactor, params, participant.address, amount))


def raw_deposit(w: World, header: tuple[Any, ...], participant: str, amount: int) -> None:
    """A deposit with a hand-built header (for parameters the Python model refuses to build)."""
    fn = w.sb.adjudicator.contract.functions.deposit(header, participant, amount)
    w.trader.transactor.transact(fn)


def header(
    w: World,
    trader: str | None = None,
    broker: str | None = None,
    token: str | None = None,
    duration: int = 24 * 3600,
    market_count: int = 0,
    markets_hash: bytes = EMPTY_MARKETS_HASH,
) -> tuple[Any, ...]:
    return (
        trader if trader is not None else w.trader.address,
        broker if broker is not None else w.broker.address,
        token if token is not None else w.sb.token.address,
        duration,
        987_654_321,
        market_count,
        markets_hash,
    )


def token_contract(w: World, artifact: str, *args: Any) -> Contract:
    deployed = deploy_contract(w.sb.deployer.transactor, artifact, *args)
    return w.chain.w3.eth.contract(address=deployed.address, abi=load_artifact(artifact)["abi"])


def mint_and_approve(w: World, token: Contract, party: Party, amount: int) -> None:
    w.sb.deployer.transactor.transact(token.functions.mint(party.address, amount))
    party.transactor.transact(token.functions.approve(w.sb.adjudicator.address, 2**256 - 1))


# --------------------------------------------------------------------------- crediting


@pytest.mark.parametrize("side", ["trader", "broker"])
def test_deposit_is_credited_to_its_party(w: World, side: str) -> None:
    params = w.params()
    party = getattr(w, side)
    adjudicator_before = w.sb.token.balance_of(w.sb.adjudicator.address)
    payer_before = w.balance(party)

    event = deposit(w, party, params, party, 123 * USD)

    assert event == {
        "channelId": params.channel_id,
        "participant": party.address,
        "amount": 123 * USD,
        "participantTotal": 123 * USD,
    }
    status = w.sb.adjudicator.status(params.channel_id)
    assert status.stage == Stage.OPEN
    assert (status.trader_deposit, status.broker_deposit) == ((123 * USD, 0) if side == "trader" else (0, 123 * USD))
    assert w.balance(party) == payer_before - 123 * USD
    assert w.sb.token.balance_of(w.sb.adjudicator.address) == adjudicator_before + 123 * USD


@pytest.mark.parametrize("side", ["trader", "broker"])
def test_third_party_deposit_is_credited_to_the_participant(w: World, side: str) -> None:
    params = w.params()
    participant = getattr(w, side)
    outsider_before, participant_before = w.balance(w.outsider), w.balance(participant)

    event = deposit(w, w.outsider, params, participant, 77 * USD)

    assert event["participant"] == participant.address
    assert event["amount"] == event["participantTotal"] == 77 * USD
    status = w.sb.adjudicator.status(params.channel_id)
    credited = status.trader_deposit if side == "trader" else status.broker_deposit
    other = status.broker_deposit if side == "trader" else status.trader_deposit
    assert (credited, other) == (77 * USD, 0)
    assert w.balance(w.outsider) == outsider_before - 77 * USD
    assert w.balance(participant) == participant_before


def test_second_deposit_adds_up(w: World) -> None:
    params = w.params()
    first = deposit(w, w.trader, params, w.trader, 100 * USD)
    second = deposit(w, w.trader, params, w.trader, 250 * USD)
    assert (first["amount"], first["participantTotal"]) == (100 * USD, 100 * USD)
    assert (second["amount"], second["participantTotal"]) == (250 * USD, 350 * USD)
    assert w.sb.adjudicator.status(params.channel_id).trader_deposit == 350 * USD


@pytest.mark.parametrize("order", ["TBT", "BTT", "TTB", "BTB"])
def test_deposits_of_the_two_parties_never_interfere(w: World, order: str) -> None:
    """Each side has its own counter: any interleaving gives the same per-party totals."""
    params = w.params()
    totals = {"T": 0, "B": 0}
    for i, who in enumerate(order):
        party = w.trader if who == "T" else w.broker
        amount = (i + 1) * 10 * USD + (1 if who == "T" else 2)
        event = deposit(w, party, params, party, amount)
        totals[who] += amount
        assert event["participant"] == party.address
        assert event["participantTotal"] == totals[who]
    status = w.sb.adjudicator.status(params.channel_id)
    assert (status.trader_deposit, status.broker_deposit) == (totals["T"], totals["B"])


def test_deposit_to_one_channel_leaves_others_alone(w: World) -> None:
    first, second = w.params(), w.params()
    deposit(w, w.trader, first, w.trader, 5 * USD)
    assert w.sb.adjudicator.status(second.channel_id).trader_deposit == 0
    assert w.sb.adjudicator.status(first.channel_id).trader_deposit == 5 * USD


def test_deposit_up_to_the_holdings_cap_is_accepted(w: World) -> None:
    """Both deposits together may reach exactly 2^63 - 1."""
    params = w.params()
    w.sb.token.mint(w.sb.deployer.transactor, w.trader.address, MAX_HOLDINGS)
    deposit(w, w.trader, params, w.trader, MAX_HOLDINGS - 10)
    event = deposit(w, w.broker, params, w.broker, 10)
    assert event["participantTotal"] == 10
    status = w.sb.adjudicator.status(params.channel_id)
    assert status.trader_deposit + status.broker_deposit == MAX_HOLDINGS


# --------------------------------------------------------------------------- refusals


def test_deposit_to_an_outsider_is_refused(w: World) -> None:
    params = w.params()
    with pytest.raises(errors.NotParticipant) as exc:
        w.sb.adjudicator.deposit(w.outsider.transactor, params, w.outsider.address, USD)
    assert same(exc.value.arguments["account"], w.outsider.address)


def test_zero_deposit_is_refused(w: World) -> None:
    params = w.params()
    with pytest.raises(errors.ZeroDeposit):
        w.sb.adjudicator.deposit(w.trader.transactor, params, w.trader.address, 0)


def test_deposit_above_the_holdings_cap_is_refused(w: World) -> None:
    params = w.params()
    w.sb.token.mint(w.sb.deployer.transactor, w.trader.address, 2**64)
    with pytest.raises(errors.DepositOutOfBounds) as exc:
        w.sb.adjudicator.deposit(w.trader.transactor, params, w.trader.address, 2**63)
    assert exc.value.arguments["holdings"] == 2**63


def test_cap_counts_both_parties_together(w: World) -> None:
    params = w.params()
    w.sb.token.mint(w.sb.deployer.transactor, w.trader.address, MAX_HOLDINGS)
    deposit(w, w.trader, params, w.trader, MAX_HOLDINGS - 5 * USD)
    with pytest.raises(errors.DepositOutOfBounds) as exc:
        w.sb.adjudicator.deposit(w.broker.transactor, params, w.broker.address, 5 * USD + 1)
    assert exc.value.arguments["holdings"] == MAX_HOLDINGS + 1
    assert w.sb.adjudicator.status(params.channel_id).broker_deposit == 0


def test_deposit_during_a_dispute_is_refused(w: World) -> None:
    params = w.open_channel()
    w.sb.adjudicator.challenge(w.trader.transactor, params, w.sign(w.plain(params, 1)))
    with pytest.raises(errors.ChannelDisputed) as exc:
        w.sb.adjudicator.deposit(w.broker.transactor, params, w.broker.address, USD)
    assert exc.value.arguments["channelId"] == params.channel_id


def test_deposit_after_a_close_is_refused(w: World) -> None:
    params = w.open_channel()
    w.sb.adjudicator.close(w.trader.transactor, params, w.sign(w.plain(params, 1, final=True)))
    with pytest.raises(errors.ChannelConcluded) as exc:
        w.sb.adjudicator.deposit(w.trader.transactor, params, w.trader.address, USD)
    assert exc.value.arguments["channelId"] == params.channel_id
    status = w.sb.adjudicator.status(params.channel_id)
    assert (status.trader_deposit, status.broker_deposit) == (0, 0)


@pytest.mark.parametrize("case", ["same", "zero-trader", "zero-broker"])
def test_invalid_participants_are_refused(w: World, case: str) -> None:
    trader, broker = {
        "same": (w.trader.address, w.trader.address),
        "zero-trader": (ZERO_ADDRESS, w.broker.address),
        "zero-broker": (w.trader.address, ZERO_ADDRESS),
    }[case]
    with pytest.raises(errors.InvalidParticipants) as exc:
        raw_deposit(w, header(w, trader=trader, broker=broker), w.trader.address, USD)
    assert same(exc.value.arguments["trader"], trader)
    assert same(exc.value.arguments["broker"], broker)


def test_zero_token_is_refused(w: World) -> None:
    with pytest.raises(errors.InvalidToken):
        raw_deposit(w, header(w, token=ZERO_ADDRESS), w.trader.address, USD)


@pytest.mark.parametrize("duration", [0, 3599, 30 * 86400 + 1, 2**256 - 1])
def test_challenge_duration_out_of_range_is_refused(w: World, duration: int) -> None:
    with pytest.raises(errors.ChallengeDurationOutOfRange) as exc:
        raw_deposit(w, header(w, duration=duration), w.trader.address, USD)
    assert exc.value.arguments["duration"] == duration


@pytest.mark.parametrize("duration", [3600, 30 * 86400])
def test_challenge_duration_bounds_are_accepted(w: World, duration: int) -> None:
    params = w.params(challenge_duration=duration)
    event = deposit(w, w.trader, params, w.trader, USD)
    assert event["channelId"] == params.channel_id


def test_seventeen_markets_are_refused(w: World) -> None:
    markets = [(i + 1, w.sb.feeds["XAU / USD"].address, 10**6, 2**32 // 10, 3600) for i in range(17)]
    markets_hash = keccak(abi_encode(["(uint256,address,uint256,uint256,uint256)[]"], [markets]))
    with pytest.raises(errors.TooManyMarkets) as exc:
        raw_deposit(w, header(w, market_count=17, markets_hash=markets_hash), w.trader.address, USD)
    assert exc.value.arguments["count"] == 17


def test_sixteen_markets_are_accepted(w: World) -> None:
    params = w.params(markets=16)
    assert deposit(w, w.trader, params, w.trader, USD)["channelId"] == params.channel_id


def test_deposit_without_allowance_is_refused(w: World) -> None:
    payer = w.sb.party("no-allowance", tokens=10 * USD)
    w.sb.token.approve(payer.transactor, w.sb.adjudicator.address, 0)
    params = w.params()
    with pytest.raises(errors.ERC20InsufficientAllowance) as exc:
        w.sb.adjudicator.deposit(payer.transactor, params, w.trader.address, 3 * USD)
    assert same(exc.value.arguments["spender"], w.sb.adjudicator.address)
    assert exc.value.arguments["allowance"] == 0
    assert exc.value.arguments["needed"] == 3 * USD
    assert w.balance(payer) == 10 * USD


# --------------------------------------------------------------------------- misbehaving tokens


def test_token_returning_false_is_refused(w: World) -> None:
    token = token_contract(w, "FalseReturningToken")
    mint_and_approve(w, token, w.trader, 1_000 * USD)
    params = replace(w.params(), token=token.address)
    with pytest.raises(errors.SafeERC20FailedOperation) as exc:
        w.sb.adjudicator.deposit(w.trader.transactor, params, w.trader.address, 100 * USD)
    assert same(exc.value.arguments["token"], token.address)
    assert w.sb.adjudicator.status(params.channel_id).trader_deposit == 0


def test_fee_on_transfer_token_is_accounted_at_the_amount_received(w: World) -> None:
    """The project "accounts for" fee-on-transfer tokens: a deposit is credited with what
    actually arrived at the adjudicator (amount minus the token's fee), so the credited total
    always equals the adjudicator's balance of that token and a close pays out exactly that."""
    token = token_contract(w, "FeeOnTransferToken", 100)  # 1%
    mint_and_approve(w, token, w.trader, 10_000 * USD)
    mint_and_approve(w, token, w.broker, 10_000 * USD)
    params = replace(w.params(), token=token.address)

    first = deposit(w, w.trader, params, w.trader, 1_000 * USD)
    second = deposit(w, w.broker, params, w.broker, 5_000 * USD)
    third = deposit(w, w.trader, params, w.trader, 200 * USD)

    assert (first["amount"], first["participantTotal"]) == (990 * USD, 990 * USD)
    assert (second["amount"], second["participantTotal"]) == (4_950 * USD, 4_950 * USD)
    assert (third["amount"], third["participantTotal"]) == (198 * USD, 1_188 * USD)
    status = w.sb.adjudicator.status(params.channel_id)
    assert (status.trader_deposit, status.broker_deposit) == (1_188 * USD, 4_950 * USD)
    assert token.functions.balanceOf(w.sb.adjudicator.address).call() == 1_188 * USD + 4_950 * USD

    # A final state accounting for what was credited closes and empties the adjudicator.
    state = plain_state(params, 1, 1_188 * USD, 4_950 * USD, trader_available=1_000 * USD, final=True)
    signed = CoSignedState(
        state,
        w.trader.signer.sign(w.sb.domain, state),
        w.broker.signer.sign(w.sb.domain, state),
    )
    receipt = w.sb.adjudicator.close(w.broker.transactor, params, signed)
    closed = w.sb.adjudicator.events(receipt, "Closed")[0]
    assert (closed["toTrader"], closed["toBroker"]) == (1_000 * USD, 5_138 * USD)
    assert token.functions.balanceOf(w.sb.adjudicator.address).call() == 0


def test_fee_token_that_delivers_nothing_is_a_zero_deposit(w: World) -> None:
    token = token_contract(w, "FeeOnTransferToken", 10_000)  # 100%: nothing arrives
    mint_and_approve(w, token, w.trader, 1_000 * USD)
    params = replace(w.params(), token=token.address)
    with pytest.raises(errors.ZeroDeposit):
        w.sb.adjudicator.deposit(w.trader.transactor, params, w.trader.address, 100 * USD)


def test_default_deposits_match_the_fixture_constants(w: World) -> None:
    params = w.open_channel()
    status = w.sb.adjudicator.status(params.channel_id)
    assert (status.trader_deposit, status.broker_deposit) == (TRADER_DEPOSIT, BROKER_DEPOSIT)
