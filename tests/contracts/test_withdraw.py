"""Pull fallback for payouts the token refuses: a blacklisted recipient never blocks the other
party, its payout is credited to ``withdrawable`` and withdrawn later (to another address of its
own, or by anyone to the account itself). A caller who gives too little gas cannot turn a payable
payout into a deferred one: the whole transaction reverts with InsufficientGasForPayout."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from web3.contract import Contract
from web3.types import TxReceipt

from offchain.chain import errors
from offchain.chain.artifacts import load_artifact
from offchain.chain.client import Stage
from offchain.chain.deploy import deploy_contract
from offchain.chain.errors import decode_revert, is_revert, revert_data
from offchain.errors import ContractError
from offchain.model import ChannelParams
from offchain.sandbox import USD, Party
from offchain.signing import CoSignedState
from tests.conftest import BROKER_DEPOSIT, TRADER_DEPOSIT, World

TOTAL = TRADER_DEPOSIT + BROKER_DEPOSIT
TO_TRADER = 1_500 * USD
TO_BROKER = TOTAL - TO_TRADER


# --------------------------------------------------------------------------- helpers


def same(a: object, b: object) -> bool:
    """Addresses compare case-insensitively (decoded revert arguments are not checksummed)."""
    return str(a).lower() == str(b).lower()


def one(w: World, receipt: TxReceipt, event: str) -> dict[str, Any]:
    events = w.sb.adjudicator.events(receipt, event)
    assert len(events) == 1, events
    return events[0]


def balance(token: Contract, account: str) -> int:
    return int(token.functions.balanceOf(account).call())


def blacklist_channel(w: World) -> tuple[Contract, ChannelParams]:
    """A funded channel whose collateral is a BlacklistToken."""
    deployed = deploy_contract(w.sb.deployer.transactor, "BlacklistToken")
    token = w.chain.w3.eth.contract(address=deployed.address, abi=load_artifact("BlacklistToken")["abi"])
    for party in (w.trader, w.broker):
        w.sb.deployer.transactor.transact(token.functions.mint(party.address, 10_000 * USD))
        party.transactor.transact(token.functions.approve(w.sb.adjudicator.address, 2**256 - 1))
    params = replace(w.params(), token=token.address)
    w.fund(params)
    return token, params


def set_blacklisted(w: World, token: Contract, account: str, value: bool) -> None:
    w.sb.deployer.transactor.transact(token.functions.setBlacklisted(account, value))


def close_with_blacklisted(w: World, side: str = "trader") -> tuple[Contract, ChannelParams, TxReceipt]:
    token, params = blacklist_channel(w)
    set_blacklisted(w, token, getattr(w, side).address, True)
    other = w.broker if side == "trader" else w.trader
    state = w.plain(params, 1, trader_available=TO_TRADER, final=True)
    receipt = w.sb.adjudicator.close(other.transactor, params, w.sign(state))
    return token, params, receipt


# --------------------------------------------------------------------------- deferral


@pytest.mark.parametrize("side", ["trader", "broker"])
def test_blacklisted_party_does_not_block_the_other(w: World, side: str) -> None:
    token, params = blacklist_channel(w)
    blocked = getattr(w, side)
    other = w.broker if side == "trader" else w.trader
    blocked_amount, other_amount = (TO_TRADER, TO_BROKER) if side == "trader" else (TO_BROKER, TO_TRADER)
    set_blacklisted(w, token, blocked.address, True)
    blocked_before, other_before = balance(token, blocked.address), balance(token, other.address)

    state = w.plain(params, 1, trader_available=TO_TRADER, final=True)
    receipt = w.sb.adjudicator.close(other.transactor, params, w.sign(state))

    closed = one(w, receipt, "Closed")
    assert (closed["toTrader"], closed["toBroker"], closed["underfunded"]) == (TO_TRADER, TO_BROKER, False)
    assert one(w, receipt, "PayoutDeferred") == {
        "token": token.address,
        "account": blocked.address,
        "amount": blocked_amount,
    }
    assert balance(token, other.address) == other_before + other_amount
    assert balance(token, blocked.address) == blocked_before
    assert w.sb.adjudicator.withdrawable(token.address, blocked.address) == blocked_amount
    assert w.sb.adjudicator.withdrawable(token.address, other.address) == 0
    assert balance(token, w.sb.adjudicator.address) == blocked_amount
    assert w.sb.adjudicator.status(params.channel_id).stage == Stage.CONCLUDED


def test_credit_is_per_token(w: World) -> None:
    token, _, _ = close_with_blacklisted(w)
    assert w.sb.adjudicator.withdrawable(token.address, w.trader.address) == TO_TRADER
    assert w.sb.adjudicator.withdrawable(w.sb.token.address, w.trader.address) == 0


# --------------------------------------------------------------------------- withdrawing


def test_withdraw_while_still_blacklisted_fails_and_keeps_the_credit(w: World) -> None:
    token, _, _ = close_with_blacklisted(w)
    with pytest.raises(errors.Blacklisted) as exc:
        w.sb.adjudicator.withdraw(w.trader.transactor, token.address, w.trader.address)
    assert same(exc.value.arguments["account"], w.trader.address)
    assert w.sb.adjudicator.withdrawable(token.address, w.trader.address) == TO_TRADER
    assert balance(token, w.sb.adjudicator.address) == TO_TRADER


def test_account_withdraws_to_another_address_of_its_own(w: World) -> None:
    token, _, _ = close_with_blacklisted(w)
    cold = w.sb.party("trader-cold")

    receipt = w.sb.adjudicator.withdraw(w.trader.transactor, token.address, w.trader.address, cold.address)

    assert one(w, receipt, "Withdrawn") == {
        "token": token.address,
        "account": w.trader.address,
        "to": cold.address,
        "amount": TO_TRADER,
    }
    assert balance(token, cold.address) == TO_TRADER
    assert w.sb.adjudicator.withdrawable(token.address, w.trader.address) == 0
    assert balance(token, w.sb.adjudicator.address) == 0


def test_account_withdraws_to_itself_once_unblocked(w: World) -> None:
    token, _, _ = close_with_blacklisted(w)
    set_blacklisted(w, token, w.trader.address, False)
    before = balance(token, w.trader.address)
    receipt = w.sb.adjudicator.withdraw(w.trader.transactor, token.address, w.trader.address)
    event = one(w, receipt, "Withdrawn")
    assert (event["account"], event["to"], event["amount"]) == (w.trader.address, w.trader.address, TO_TRADER)
    assert balance(token, w.trader.address) == before + TO_TRADER
    assert w.sb.adjudicator.withdrawable(token.address, w.trader.address) == 0


def test_anyone_may_pay_the_account_itself(w: World) -> None:
    token, _, _ = close_with_blacklisted(w)
    set_blacklisted(w, token, w.trader.address, False)
    before = balance(token, w.trader.address)
    receipt = w.sb.adjudicator.withdraw(w.outsider.transactor, token.address, w.trader.address, w.trader.address)
    assert one(w, receipt, "Withdrawn")["to"] == w.trader.address
    assert balance(token, w.trader.address) == before + TO_TRADER
    assert w.sb.adjudicator.withdrawable(token.address, w.trader.address) == 0


@pytest.mark.parametrize("caller", ["outsider", "broker", "watchtower"])
def test_nobody_else_may_redirect_a_credit(w: World, caller: str) -> None:
    token, _, _ = close_with_blacklisted(w)
    thief = getattr(w, caller)
    with pytest.raises(errors.NotAuthorized) as exc:
        w.sb.adjudicator.withdraw(thief.transactor, token.address, w.trader.address, thief.address)
    assert same(exc.value.arguments["caller"], thief.address)
    assert w.sb.adjudicator.withdrawable(token.address, w.trader.address) == TO_TRADER
    assert balance(token, thief.address) == (10_000 * USD - BROKER_DEPOSIT + TO_BROKER if caller == "broker" else 0)


def test_second_withdraw_has_nothing_to_withdraw(w: World) -> None:
    token, _, _ = close_with_blacklisted(w)
    cold = w.sb.party("trader-cold")
    w.sb.adjudicator.withdraw(w.trader.transactor, token.address, w.trader.address, cold.address)
    with pytest.raises(errors.NothingToWithdraw) as exc:
        w.sb.adjudicator.withdraw(w.trader.transactor, token.address, w.trader.address, cold.address)
    assert same(exc.value.arguments["token"], token.address)
    assert same(exc.value.arguments["account"], w.trader.address)
    assert balance(token, cold.address) == TO_TRADER


def test_withdraw_without_any_credit_is_refused(w: World) -> None:
    with pytest.raises(errors.NothingToWithdraw) as exc:
        w.sb.adjudicator.withdraw(w.outsider.transactor, w.sb.token.address, w.outsider.address)
    assert same(exc.value.arguments["account"], w.outsider.address)


def test_credits_accumulate_over_channels(w: World) -> None:
    token, _, _ = close_with_blacklisted(w)
    params = replace(w.params(), token=token.address)
    set_blacklisted(w, token, w.trader.address, False)
    w.fund(params)
    set_blacklisted(w, token, w.trader.address, True)
    state = w.plain(params, 1, trader_available=100 * USD, final=True)
    receipt = w.sb.adjudicator.close(w.broker.transactor, params, w.sign(state))
    assert one(w, receipt, "PayoutDeferred")["amount"] == 100 * USD
    assert w.sb.adjudicator.withdrawable(token.address, w.trader.address) == TO_TRADER + 100 * USD


# --------------------------------------------------------------------------- too little gas


def _call_outcome(w: World, tx: dict[str, Any], gas: int) -> str:
    """What the transaction would do with ``gas``: "ok" or the decoded error's class name."""
    call = {"from": tx["from"], "to": tx["to"], "data": tx["data"], "gas": gas}
    try:
        w.chain.w3.eth.call(call)  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - classify every failure
        return type(decode_revert(revert_data(exc))).__name__ if is_revert(exc) else type(exc).__name__
    return "ok"


def test_too_little_gas_for_a_payout_reverts_instead_of_deferring(w: World) -> None:
    """The trader deposited its whole balance, so its payout writes a fresh balance slot (an
    expensive transfer). With a gas limit that lets ``close`` reach the transfer but not finish
    it, the transaction reverts with InsufficientGasForPayout; it never concludes with the
    payout deferred."""
    trader: Party = w.sb.party("poor-trader", tokens=TRADER_DEPOSIT)
    params = w.sb.channel_params(trader, w.broker)
    w.sb.adjudicator.deposit(trader.transactor, params, trader.address, TRADER_DEPOSIT)
    w.sb.adjudicator.deposit(w.broker.transactor, params, w.broker.address, BROKER_DEPOSIT)
    assert w.sb.token.balance_of(trader.address) == 0
    state = w.plain(params, 1, trader_available=TO_TRADER, final=True)
    signed = CoSignedState(state, trader.signer.sign(w.sb.domain, state), w.broker.signer.sign(w.sb.domain, state))
    fn = w.sb.adjudicator.contract.functions.close(
        params.header().as_abi(), state.as_abi(), signed.trader_signature, signed.broker_signature
    )
    tx = fn.build_transaction({"from": w.broker.address})

    # Smallest gas limit that succeeds.
    low, high = 30_000, int(tx["gas"])
    assert _call_outcome(w, tx, high) == "ok"
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if _call_outcome(w, tx, mid) == "ok" else (mid, high)
    enough = high

    # Below it, somewhere the trader's transfer runs out of gas while close itself does not.
    short = next(
        (
            g
            for g in range(enough - 500, enough - 40_000, -500)
            if _call_outcome(w, tx, g) == "InsufficientGasForPayout"
        ),
        None,
    )
    assert short is not None, "no gas limit gives InsufficientGasForPayout"

    trader_before, broker_before = w.balance(trader), w.balance(w.broker)
    with pytest.raises(errors.InsufficientGasForPayout):
        w.broker.transactor.transact(fn, gas=short)  # mined, fails, replayed for its reason
    status = w.sb.adjudicator.status(params.channel_id)
    assert (status.stage, status.trader_deposit, status.broker_deposit) == (Stage.OPEN, TRADER_DEPOSIT, BROKER_DEPOSIT)
    assert w.sb.adjudicator.withdrawable(w.sb.token.address, trader.address) == 0
    assert (w.balance(trader), w.balance(w.broker)) == (trader_before, broker_before)

    # Every mined attempt between the two either reverts or pays both at once, never defers.
    for gas in range(short, enough + 1, max(1, (enough - short) // 6)):
        snapshot = w.chain.snapshot()
        try:
            receipt = w.broker.transactor.transact(fn, gas=gas)
        except ContractError:
            assert w.sb.adjudicator.status(params.channel_id).stage == Stage.OPEN
        else:
            assert w.sb.adjudicator.events(receipt, "PayoutDeferred") == []
            assert w.sb.token.balance_of(trader.address) == TO_TRADER
        finally:
            w.chain.revert(snapshot)

    receipt = w.broker.transactor.transact(fn, gas=enough)
    assert w.sb.adjudicator.events(receipt, "PayoutDeferred") == []
    assert one(w, receipt, "Closed")["toTrader"] == TO_TRADER
    assert w.balance(trader) == trader_before + TO_TRADER
    assert w.balance(w.broker) == broker_before + TO_BROKER


# --------------------------------------------------------------------------- a token that burns all gas


def test_a_token_that_refuses_by_burning_all_gas_cannot_lock_the_channel(w: World) -> None:
    """A refusal by INVALID (all forwarded gas burnt) costs at most the payout stipend: the
    dispute still concludes, the broker is paid, the trader's payout is credited for later."""
    deployed = deploy_contract(w.sb.deployer.transactor, "GasBurningToken")
    token = w.chain.w3.eth.contract(address=deployed.address, abi=load_artifact("GasBurningToken")["abi"])
    for party in (w.trader, w.broker):
        w.sb.deployer.transactor.transact(token.functions.mint(party.address, 10_000 * USD))
        party.transactor.transact(token.functions.approve(w.sb.adjudicator.address, 2**256 - 1))
    params = replace(w.params(), token=token.address)
    w.fund(params)
    w.sb.adjudicator.challenge(w.broker.transactor, params, w.sign(w.plain(params, 2, trader_available=TO_TRADER)))
    w.sb.deployer.transactor.transact(token.functions.setBlocked(w.trader.address, True))
    w.chain.increase_time(params.challenge_duration)
    broker_before = balance(token, w.broker.address)

    receipt = w.sb.adjudicator.conclude(w.outsider.transactor, params)

    assert receipt["gasUsed"] < 300_000
    assert w.sb.adjudicator.status(params.channel_id).stage == Stage.CONCLUDED
    to_broker = TRADER_DEPOSIT + BROKER_DEPOSIT - TO_TRADER
    assert balance(token, w.broker.address) - broker_before == to_broker
    assert w.sb.adjudicator.withdrawable(token.address, w.trader.address) == TO_TRADER
    deferred = one(w, receipt, "PayoutDeferred")
    assert deferred["account"] == w.trader.address and deferred["amount"] == TO_TRADER
