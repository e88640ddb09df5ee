"""Cooperative close: a final co-signed state without open orders or positions pays both parties
at once. Payout rule, funding safety (unaccounted and underfunded deposits), every check on the
state and its signatures (channel, chain and contract binding, malleability), and closing during
a dispute."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from eth_utils import to_checksum_address
from web3.types import TxReceipt

from offchain.chain import errors
from offchain.chain.client import RegistrationKind, Stage
from offchain.eip712 import Domain
from offchain.errors import ContractError
from offchain.model import ChannelParams, ChannelState, OpenOrder, Order, Outcome
from offchain.sandbox import USD, plain_state
from offchain.signing import CoSignedState, malleate
from offchain.types import (
    Address,
    BatchNumber,
    ExpirationHours,
    MarketId,
    Nonce,
    Signature,
    SyntheticAmount,
    TokenAmount,
    Version,
)
from tests.conftest import BROKER_DEPOSIT, TRADER_DEPOSIT, World

TOTAL = TRADER_DEPOSIT + BROKER_DEPOSIT


# --------------------------------------------------------------------------- helpers


def same(a: object, b: object) -> bool:
    """Addresses compare case-insensitively (decoded revert arguments are not checksummed)."""
    return str(a).lower() == str(b).lower()


def final_state(
    params: ChannelParams,
    version: int,
    trader_available: int,
    trader_locked: int = 0,
    trader_deposit: int = TRADER_DEPOSIT,
    broker_deposit: int = BROKER_DEPOSIT,
) -> ChannelState:
    """A final state whose balances sum to the deposits it accounts for."""
    base = plain_state(params, version, trader_deposit, broker_deposit, final=True)
    holdings = trader_deposit + broker_deposit
    return replace(
        base,
        balances=replace(
            base.balances,
            trader_available=TokenAmount(trader_available),
            trader_locked=TokenAmount(trader_locked),
            broker_available=TokenAmount(holdings - trader_available - trader_locked),
        ),
    )


def one(w: World, receipt: TxReceipt, event: str) -> dict[str, Any]:
    events = w.sb.adjudicator.events(receipt, event)
    assert len(events) == 1, events
    return events[0]


def close(w: World, params: ChannelParams, signed: CoSignedState) -> TxReceipt:
    return w.sb.adjudicator.close(w.broker.transactor, params, signed)


def adjudicator_balance(w: World) -> int:
    return w.sb.token.balance_of(w.sb.adjudicator.address)


def order(w: World, params: ChannelParams, nonce: int = 1) -> OpenOrder:
    o = Order(
        channel_id=params.channel_id,
        trader=w.trader.address,
        collateral=params.token,
        market=MarketId(params.markets[0].id),
        is_buy=True,
        amount_synthetic=SyntheticAmount(10**6),
        amount_collateral=TokenAmount(100 * USD),
        max_fee=TokenAmount(USD),
        nonce=Nonce(nonce),
        expiration=ExpirationHours(2**31),
    )
    return OpenOrder(o, w.trader.signer.sign(w.sb.domain, o), SyntheticAmount(0), BatchNumber(1))


def with_orders(state: ChannelState, orders: tuple[OpenOrder, ...], locked: int) -> ChannelState:
    b = state.balances
    return replace(
        state,
        open_orders=orders,
        balances=replace(
            b,
            trader_available=TokenAmount(b.trader_available - locked),
            trader_locked=TokenAmount(b.trader_locked + locked),
        ),
    )


# --------------------------------------------------------------------------- paying out


def test_close_pays_both_parties_at_once(w: World) -> None:
    params = w.open_channel()
    trader_before, broker_before, held_before = w.balance(w.trader), w.balance(w.broker), adjudicator_balance(w)
    state = w.plain(params, 7, trader_available=1_800 * USD, final=True)

    receipt = w.sb.adjudicator.close(w.outsider.transactor, params, w.sign(state))

    assert one(w, receipt, "Closed") == {
        "channelId": params.channel_id,
        "version": 7,
        "toTrader": 1_800 * USD,
        "toBroker": TOTAL - 1_800 * USD,
        "underfunded": False,
    }
    assert w.balance(w.trader) == trader_before + 1_800 * USD
    assert w.balance(w.broker) == broker_before + TOTAL - 1_800 * USD
    assert adjudicator_balance(w) == held_before - TOTAL
    assert w.sb.adjudicator.events(receipt, "PayoutDeferred") == []
    status = w.sb.adjudicator.status(params.channel_id)
    assert status.stage == Stage.CONCLUDED
    assert (status.trader_deposit, status.broker_deposit) == (0, 0)
    assert status.kind == RegistrationKind.NONE


@pytest.mark.parametrize(
    ("trader_available", "trader_locked", "to_trader"),
    [
        (TRADER_DEPOSIT, 0, TRADER_DEPOSIT),  # version-0 split
        (300 * USD, 200 * USD, 500 * USD),  # locked collateral belongs to the trader
        (0, 0, 0),
        (TOTAL, 0, TOTAL),
        (-100 * USD, 0, 0),  # clamped at zero
        (-100 * USD, 40 * USD, 0),
        (TOTAL + 50 * USD, 0, TOTAL),  # clamped at the total
        (TOTAL - 10, 20, TOTAL),
    ],
)
def test_trader_gets_its_collateral_clamped_and_the_broker_the_rest(
    w: World, trader_available: int, trader_locked: int, to_trader: int
) -> None:
    params = w.open_channel()
    trader_before, broker_before = w.balance(w.trader), w.balance(w.broker)
    receipt = close(w, params, w.sign(final_state(params, 1, trader_available, trader_locked)))
    closed = one(w, receipt, "Closed")
    assert (closed["toTrader"], closed["toBroker"], closed["underfunded"]) == (to_trader, TOTAL - to_trader, False)
    assert w.balance(w.trader) - trader_before == to_trader
    assert w.balance(w.broker) - broker_before == TOTAL - to_trader


def test_unaccounted_deposits_go_back_to_whoever_made_them(w: World) -> None:
    params = w.params()
    w.fund(params, TRADER_DEPOSIT + 7, BROKER_DEPOSIT + 11)
    trader_before, broker_before = w.balance(w.trader), w.balance(w.broker)
    receipt = close(w, params, w.sign(final_state(params, 3, 600 * USD)))
    closed = one(w, receipt, "Closed")
    assert closed["toTrader"] == 600 * USD + 7
    assert closed["toBroker"] == TOTAL - 600 * USD + 11
    assert closed["underfunded"] is False
    assert w.balance(w.trader) - trader_before == 600 * USD + 7
    assert w.balance(w.broker) - broker_before == TOTAL - 600 * USD + 11


def test_unaccounted_deposit_is_returned_even_when_the_share_is_clamped(w: World) -> None:
    params = w.params()
    w.fund(params, TRADER_DEPOSIT + 5 * USD, BROKER_DEPOSIT)
    closed = one(w, close(w, params, w.sign(final_state(params, 1, -50 * USD))), "Closed")
    assert (closed["toTrader"], closed["toBroker"]) == (5 * USD, TOTAL)


@pytest.mark.parametrize(
    ("trader_deposit", "broker_deposit"),
    [
        (TRADER_DEPOSIT - 1, BROKER_DEPOSIT + 5),
        (TRADER_DEPOSIT + 5, BROKER_DEPOSIT - 1),
        (0, BROKER_DEPOSIT),
        (TRADER_DEPOSIT, 0),
    ],
)
def test_underfunded_channel_returns_every_deposit(w: World, trader_deposit: int, broker_deposit: int) -> None:
    """The state accounts for more than a party deposited: it was never funded, so every deposit
    goes back as deposited, whatever the state says."""
    params = w.params()
    w.fund(params, trader_deposit, broker_deposit)
    trader_before, broker_before = w.balance(w.trader), w.balance(w.broker)
    receipt = close(w, params, w.sign(final_state(params, 4, TOTAL)))
    closed = one(w, receipt, "Closed")
    assert (closed["toTrader"], closed["toBroker"], closed["underfunded"]) == (trader_deposit, broker_deposit, True)
    assert w.balance(w.trader) - trader_before == trader_deposit
    assert w.balance(w.broker) - broker_before == broker_deposit
    assert w.sb.adjudicator.status(params.channel_id).stage == Stage.CONCLUDED


def test_close_of_an_unfunded_channel_pays_nothing(w: World) -> None:
    params = w.params()
    state = plain_state(params, 0, 0, 0, final=True)
    receipt = close(w, params, w.sign(state))
    closed = one(w, receipt, "Closed")
    assert (closed["toTrader"], closed["toBroker"], closed["underfunded"]) == (0, 0, False)
    assert w.sb.adjudicator.status(params.channel_id).stage == Stage.CONCLUDED


# --------------------------------------------------------------------------- the state


def test_non_final_state_is_refused(w: World) -> None:
    params = w.params()
    with pytest.raises(errors.StateNotFinal):
        close(w, params, w.sign(w.plain(params, 1, final=False)))
    assert w.sb.adjudicator.status(params.channel_id).stage == Stage.OPEN


def test_final_state_with_an_open_order_is_refused(w: World) -> None:
    params = w.params(markets=1)
    state = with_orders(w.plain(params, 2, final=True), (order(w, params),), 101 * USD)
    with pytest.raises(errors.FinalStateNotSettled):
        close(w, params, w.sign(state))


@pytest.mark.parametrize("position", [1, -1, 2**63 - 1])
def test_final_state_with_a_position_is_refused(w: World, position: int) -> None:
    params = w.params(markets=2)
    base = w.plain(params, 2, final=True)
    outcomes = (base.outcomes[0], Outcome(SyntheticAmount(position), TokenAmount(0), BatchNumber(1)))
    with pytest.raises(errors.FinalStateNotSettled):
        close(w, params, w.sign(replace(base, outcomes=outcomes)))


def test_final_state_with_fees_but_no_position_closes(w: World) -> None:
    """Fees paid and a last batch are history, not exposure: such a state is settled."""
    params = w.open_channel(markets=1)
    base = w.plain(params, 2, trader_available=TRADER_DEPOSIT - 3 * USD, final=True)
    state = replace(base, outcomes=(Outcome(SyntheticAmount(0), TokenAmount(3 * USD), BatchNumber(9)),))
    closed = one(w, close(w, params, w.sign(state)), "Closed")
    assert closed["toTrader"] == TRADER_DEPOSIT - 3 * USD


def test_state_of_another_channel_is_refused(w: World) -> None:
    params, other = w.params(), w.params()
    with pytest.raises(errors.WrongChannel) as exc:
        close(w, params, w.sign(w.plain(other, 1, final=True)))
    assert exc.value.arguments == {"expected": params.channel_id, "actual": other.channel_id}


def test_signatures_for_another_channel_do_not_verify_here(w: World) -> None:
    """Identical content, other channel id: the signatures recover to someone else."""
    params, other = w.params(), w.params()
    foreign = w.sign(w.plain(other, 1, trader_available=5 * USD, final=True))
    mine = replace(foreign.state, channel_id=params.channel_id)
    with pytest.raises(errors.WrongSigner) as exc:
        close(w, params, CoSignedState(mine, foreign.trader_signature, foreign.broker_signature))
    assert same(exc.value.arguments["expected"], w.trader.address)
    assert not same(exc.value.arguments["recovered"], w.trader.address)
    assert w.sb.adjudicator.status(params.channel_id).stage == Stage.OPEN


@pytest.mark.parametrize("what", ["chain", "contract"])
def test_signatures_under_another_domain_are_refused(w: World, what: str) -> None:
    params = w.params()
    domain = w.sb.domain
    if what == "chain":
        domain = Domain(chain_id=domain.chain_id + 1, verifying_contract=domain.verifying_contract)
    else:
        domain = Domain(chain_id=domain.chain_id, verifying_contract=Address(to_checksum_address(w.sb.token.address)))
    signed = w.sign_unchecked(w.plain(params, 1, final=True), domain)
    with pytest.raises(errors.WrongSigner) as exc:
        close(w, params, signed)
    assert same(exc.value.arguments["expected"], w.trader.address)
    assert not same(exc.value.arguments["recovered"], w.trader.address)


@pytest.mark.parametrize("slot", ["trader", "broker"])
def test_state_signed_by_an_outsider_is_refused(w: World, slot: str) -> None:
    params = w.params()
    state = w.plain(params, 1, trader_available=TOTAL, final=True)
    good = w.sign_unchecked(state)
    forged = w.outsider.signer.sign(w.sb.domain, state)
    signed = (
        CoSignedState(state, forged, good.broker_signature)
        if slot == "trader"
        else CoSignedState(state, good.trader_signature, forged)
    )
    expected = w.trader.address if slot == "trader" else w.broker.address
    with pytest.raises(errors.WrongSigner) as exc:
        close(w, params, signed)
    assert same(exc.value.arguments["expected"], expected)
    assert same(exc.value.arguments["recovered"], w.outsider.address)


def test_swapped_signatures_are_refused(w: World) -> None:
    params = w.params()
    good = w.sign_unchecked(w.plain(params, 1, final=True))
    with pytest.raises(errors.WrongSigner) as exc:
        close(w, params, CoSignedState(good.state, good.broker_signature, good.trader_signature))
    assert same(exc.value.arguments["expected"], w.trader.address)
    assert same(exc.value.arguments["recovered"], w.broker.address)


@pytest.mark.parametrize("slot", ["trader", "broker"])
def test_malleable_signature_is_refused(w: World, slot: str) -> None:
    params = w.params()
    good = w.sign_unchecked(w.plain(params, 1, final=True))
    signed = (
        replace(good, trader_signature=malleate(good.trader_signature))
        if slot == "trader"
        else replace(good, broker_signature=malleate(good.broker_signature))
    )
    with pytest.raises(errors.MalleableSignature):
        close(w, params, signed)
    # The low-s original still closes.
    assert one(w, close(w, params, good), "Closed")["version"] == 1


MALFORMED = {
    "empty": b"",
    "64 zero bytes": bytes(64),
    "64 bytes": b"\x11" * 64,  # a compact (EIP-2098) signature is not accepted
    "66 bytes": b"\x11" * 66,
    "r = s = 0": bytes(64) + b"\x1b",
    "v = 29": b"\x01" * 64 + b"\x1d",
    "v = 0": b"\x01" * 64 + b"\x00",
}


def test_malformed_signature_is_refused(w: World) -> None:
    params = w.params()
    good = w.sign_unchecked(w.plain(params, 1, final=True))
    outcome: dict[str, str] = {}
    for name, signature in MALFORMED.items():
        for slot in ("trader_signature", "broker_signature"):
            try:
                close(w, params, replace(good, **{slot: Signature(signature)}))
                outcome[f"{slot} {name}"] = "accepted"
            except ContractError as exc:
                outcome[f"{slot} {name}"] = type(exc).__name__
    assert outcome == {key: "MalformedSignature" for key in outcome}
    assert len(outcome) == 2 * len(MALFORMED)


def test_sixty_four_byte_truncation_of_a_valid_signature_is_refused(w: World) -> None:
    params = w.params()
    good = w.sign_unchecked(w.plain(params, 1, final=True))
    with pytest.raises(errors.MalformedSignature):
        close(w, params, replace(good, trader_signature=Signature(good.trader_signature[:64])))


@pytest.mark.parametrize("outcomes", [0, 2])
def test_outcome_count_must_match_the_markets(w: World, outcomes: int) -> None:
    params = w.params(markets=1)
    base = w.plain(params, 1, final=True)
    state = replace(base, outcomes=tuple(base.outcomes[0] for _ in range(outcomes)))
    with pytest.raises(errors.OutcomeCountMismatch) as exc:
        close(w, params, w.sign_unchecked(state))
    assert exc.value.arguments == {"outcomes": outcomes, "markets": 1}


def test_too_many_open_orders(w: World) -> None:
    """At most 64 open orders in a co-signed state. A close never gets as far as counting them
    (a final state with any open order is refused first as not settled), so the bound on the
    shared verification path is shown with a challenge: 65 are refused, 64 are accepted."""
    params = w.params(markets=1)
    orders = tuple(order(w, params, nonce=i + 1) for i in range(65))
    base = w.plain(params, 1)

    too_many = with_orders(base, orders, 0)
    with pytest.raises(errors.FinalStateNotSettled):
        close(w, params, w.sign_unchecked(replace(too_many, is_final=True)))
    with pytest.raises(errors.TooManyOpenOrders) as exc:
        w.sb.adjudicator.challenge(w.trader.transactor, params, w.sign_unchecked(too_many))
    assert exc.value.arguments["count"] == 65

    w.sb.adjudicator.challenge(w.trader.transactor, params, w.sign_unchecked(with_orders(base, orders[:64], 0)))
    status = w.sb.adjudicator.status(params.channel_id)
    assert (status.stage, status.kind, status.registered_version) == (Stage.DISPUTED, RegistrationKind.FINGERPRINT, 1)


def _out_of_bounds(state: ChannelState, field: str) -> ChannelState:
    b = state.balances
    if field == "version":
        return replace(state, version=Version(2**48))
    if field == "trader_available_high":
        return replace(state, balances=replace(b, trader_available=TokenAmount(2**63)))
    if field == "trader_available_low":
        return replace(state, balances=replace(b, trader_available=TokenAmount(-(2**63))))
    if field == "broker_available":
        return replace(state, balances=replace(b, broker_available=TokenAmount(2**63)))
    if field == "trader_locked":
        return replace(state, balances=replace(b, trader_locked=TokenAmount(2**63)))
    if field == "trader_deposit":
        return replace(state, balances=replace(b, trader_deposit=TokenAmount(2**63)))
    assert field == "fees"
    return replace(state, outcomes=(Outcome(SyntheticAmount(0), TokenAmount(2**63), BatchNumber(0)),))


@pytest.mark.parametrize(
    "field",
    [
        "version",
        "trader_available_high",
        "trader_available_low",
        "broker_available",
        "trader_locked",
        "trader_deposit",
        "fees",
    ],
)
def test_value_out_of_bounds_is_refused(w: World, field: str) -> None:
    """The Python model refuses such states; built by hand and signed anyway, the contract's
    hashing refuses them too."""
    params = w.params(markets=1)
    state = _out_of_bounds(w.plain(params, 1, final=True), field)
    with pytest.raises(errors.ValueOutOfBounds):
        close(w, params, w.sign_unchecked(state))
    assert w.sb.adjudicator.status(params.channel_id).stage == Stage.OPEN


def test_values_at_the_bounds_are_accepted(w: World) -> None:
    params = w.open_channel()
    state = final_state(params, 2**48 - 1, 2**63 - 1)
    closed = one(w, close(w, params, w.sign_unchecked(state)), "Closed")
    assert (closed["version"], closed["toTrader"], closed["toBroker"]) == (2**48 - 1, TOTAL, 0)


# --------------------------------------------------------------------------- during a dispute and after


def test_close_during_a_dispute_with_a_newer_final_state(w: World) -> None:
    params = w.open_channel()
    w.sb.adjudicator.challenge(w.trader.transactor, params, w.sign(w.plain(params, 2)))
    assert w.sb.adjudicator.status(params.channel_id).stage == Stage.DISPUTED
    trader_before = w.balance(w.trader)

    receipt = close(w, params, w.sign(w.plain(params, 3, trader_available=2_000 * USD, final=True)))

    closed = one(w, receipt, "Closed")
    assert (closed["version"], closed["toTrader"], closed["toBroker"]) == (3, 2_000 * USD, TOTAL - 2_000 * USD)
    assert w.balance(w.trader) - trader_before == 2_000 * USD
    status = w.sb.adjudicator.status(params.channel_id)
    assert status.stage == Stage.CONCLUDED
    assert status.kind == RegistrationKind.NONE


@pytest.mark.parametrize("version", [1, 2])
def test_close_during_a_dispute_with_an_older_or_equal_state_is_refused(w: World, version: int) -> None:
    params = w.open_channel()
    w.sb.adjudicator.challenge(w.trader.transactor, params, w.sign_unchecked(w.plain(params, 2)))
    with pytest.raises(errors.VersionNotNewer) as exc:
        close(w, params, w.sign_unchecked(w.plain(params, version, trader_available=TOTAL, final=True)))
    assert exc.value.arguments == {"registeredVersion": 2, "version": version}
    status = w.sb.adjudicator.status(params.channel_id)
    assert (status.stage, status.registered_version) == (Stage.DISPUTED, 2)


def test_close_during_a_challenge_without_state_accepts_version_zero(w: World) -> None:
    params = w.open_channel()
    w.sb.adjudicator.challenge_without_state(w.broker.transactor, params)
    closed = one(w, close(w, params, w.sign(w.plain(params, 0, final=True))), "Closed")
    assert (closed["version"], closed["toTrader"], closed["toBroker"]) == (0, TRADER_DEPOSIT, BROKER_DEPOSIT)
    assert w.sb.adjudicator.status(params.channel_id).stage == Stage.CONCLUDED


def test_close_after_conclusion_is_refused(w: World) -> None:
    params = w.open_channel()
    close(w, params, w.sign(w.plain(params, 1, final=True)))
    held = adjudicator_balance(w)
    with pytest.raises(errors.ChannelConcluded) as exc:
        close(w, params, w.sign(w.plain(params, 2, trader_available=TOTAL, final=True)))
    assert exc.value.arguments["channelId"] == params.channel_id
    # The same state again is refused too: nothing is paid twice.
    with pytest.raises(errors.ChannelConcluded):
        close(w, params, w.sign(w.plain(params, 1, final=True)))
    assert adjudicator_balance(w) == held
