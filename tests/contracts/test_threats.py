"""Attacks from docs/threats.md that no other test shows failing, and the check that keeps the
catalogue true: every test it cites exists.

- a collateral token that re-enters the adjudicator (during a deposit, during a payout);
- signatures of another EIP-712 type offered as a state signature or an authorisation;
- a replay on a second adjudicator deployed on the same chain;
- an outsider calling every external function;
- an authorised agent (a watchtower) abusing its authorisation;
- a feed that reports more than 18 decimals.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
from eth_utils.crypto import keccak
from web3.contract import Contract

from offchain.chain import errors
from offchain.chain.client import AdjudicatorClient, Stage
from offchain.chain.deploy import deploy_contract
from offchain.compiler import find_compiler
from offchain.model import BatchPrice, ChallengeAuthorization, ChannelParams, Market
from offchain.sandbox import DEFAULT_MAX_PRICE_AGE, DEFAULT_RISK_FACTOR, USD, Party, position_state
from offchain.signing import CoSignedState
from offchain.types import Address, BatchNumber, MarketId, Price
from tests.conftest import BROKER_DEPOSIT, TRADER_DEPOSIT, World
from tests.contracts.test_dispute import FALLBACK_DELAY, OUNCE, at, challenge_and_wait, one
from tests.contracts.test_evidence import fast, make_order, open_order, order_state, signed_price

ROOT = Path(__file__).resolve().parents[2]
THREATS = ROOT / "docs" / "threats.md"
TOTAL = TRADER_DEPOSIT + BROKER_DEPOSIT

# --------------------------------------------------------------------------- the catalogue

CITATION = re.compile(r"(tests/[\w/]+\.py)::(test_\w+)")


def test_every_threat_names_a_test_that_exists() -> None:
    """Every ``file::test`` that docs/threats.md cites is a test function in that file, and every
    numbered entry cites at least one."""
    text = THREATS.read_text()
    cited = CITATION.findall(text)
    assert len(cited) >= 30
    missing = []
    for file, name in sorted(set(cited)):
        path = ROOT / file
        if not path.exists() or not re.search(rf"^(async )?def {name}\(", path.read_text(), re.MULTILINE):
            missing.append(f"{file}::{name}")
    assert missing == [], f"docs/threats.md cites tests that do not exist: {missing}"
    entries = re.split(r"^### ", text, flags=re.MULTILINE)[1:]
    assert len(entries) >= 30
    without = [e.splitlines()[0] for e in entries if not CITATION.search(e)]
    assert without == [], f"entries without a test: {without}"


# --------------------------------------------------------------------------- a re-entering token

REENTRANT_TOKEN = """
// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// A collateral token that calls back into `target` with `payload` from inside its next
/// transfer or transferFrom, and records how the call ended (in one storage slot, so that a
/// payout's gas stipend covers it).
contract ReentrantToken {
    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;
    address public target;
    bytes public payload;
    uint64 public attempts;
    bool public armed;
    bool public lastSucceeded;
    bytes4 public lastError;

    function decimals() external pure returns (uint8) { return 6; }
    function mint(address to, uint256 amount) external { balanceOf[to] += amount; }
    function approve(address spender, uint256 amount) external returns (bool) {
        allowance[msg.sender][spender] = amount;
        return true;
    }
    function arm(address target_, bytes calldata payload_) external {
        target = target_;
        payload = payload_;
        armed = true;
    }
    function _hook() internal {
        if (!armed) return;
        armed = false;
        attempts += 1;
        (bool ok, bytes memory ret) = target.call(payload);
        lastSucceeded = ok;
        lastError = ret.length >= 4 ? bytes4(ret) : bytes4(0);
    }
    function transfer(address to, uint256 amount) external returns (bool) {
        _hook();
        balanceOf[msg.sender] -= amount;
        balanceOf[to] += amount;
        return true;
    }
    function transferFrom(address from, address to, uint256 amount) external returns (bool) {
        _hook();
        allowance[from][msg.sender] -= amount;
        balanceOf[from] -= amount;
        balanceOf[to] += amount;
        return true;
    }
}
"""
REENTRANCY_ERROR = keccak(text="ReentrancyGuardReentrantCall()")[:4]


@pytest.fixture(scope="module")
def reentrant_artifact() -> dict[str, Any]:
    compiler = find_compiler()
    if compiler is None:
        pytest.skip("no solc 0.8.30 (run `npm ci`)")
    out = compiler.run(
        {
            "language": "Solidity",
            "sources": {"ReentrantToken.sol": {"content": REENTRANT_TOKEN}},
            "settings": {"evmVersion": "prague", "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}}},
        }
    )
    assert not [e for e in out.get("errors", []) if e["severity"] == "error"], out["errors"]
    compiled = out["contracts"]["ReentrantToken.sol"]["ReentrantToken"]
    return {"abi": compiled["abi"], "bytecode": "0x" + compiled["evm"]["bytecode"]["object"]}


def reentrant_channel(w: World, artifact: dict[str, Any]) -> tuple[Contract, ChannelParams]:
    """An unfunded channel whose collateral is a ReentrantToken both parties hold and approved."""
    factory = w.chain.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    receipt = w.sb.deployer.transactor.transact(factory.constructor())
    token = cast(Contract, w.chain.w3.eth.contract(address=receipt["contractAddress"], abi=artifact["abi"]))
    for party in (w.trader, w.broker):
        w.sb.deployer.transactor.transact(token.functions.mint(party.address, 100_000 * USD))
        party.transactor.transact(token.functions.approve(w.sb.adjudicator.address, 2**256 - 1))
    return token, replace(w.params(), token=token.address)


def balance(token: Contract, account: str) -> int:
    return int(token.functions.balanceOf(account).call())


def test_a_token_that_re_enters_deposit_is_refused_and_the_deposit_counts_once(
    w: World, reentrant_artifact: dict[str, Any]
) -> None:
    """The token calls deposit again from inside transferFrom: without the guard the outer
    deposit would measure both transfers and credit them twice (balance before and after)."""
    adjudicator = w.sb.adjudicator
    token, params = reentrant_channel(w, reentrant_artifact)
    inner = adjudicator.contract.encode_abi("deposit", [params.header().as_abi(), w.trader.address, 500 * USD])
    w.sb.deployer.transactor.transact(token.functions.mint(token.address, 1_000 * USD))
    w.sb.deployer.transactor.transact(token.functions.arm(adjudicator.address, inner))

    receipt = adjudicator.deposit(fast(w.trader), params, w.trader.address, 1_000 * USD)

    assert token.functions.attempts().call() == 1
    assert token.functions.lastSucceeded().call() is False
    assert token.functions.lastError().call() == REENTRANCY_ERROR
    assert one(w, receipt, "Deposited")["amount"] == 1_000 * USD
    assert adjudicator.status(params.channel_id).trader_deposit == 1_000 * USD
    assert balance(token, adjudicator.address) == 1_000 * USD


@pytest.mark.parametrize("reentry", ["challenge", "challenge without state"])
def test_a_token_that_re_enters_a_challenge_during_a_deposit_is_refused(
    w: World, reentrant_artifact: dict[str, Any], reentry: str
) -> None:
    """From inside the deposit's transferFrom, the token challenges the same channel (with an
    authorization a participant signed for it). ``deposit`` writes back the channel's packed word
    it read before the transfer, so a challenge landing in between would be overwritten: the
    channel open again, its registration left behind. The challenge is refused; the deposit
    counts, the channel stays open, and the same challenge afterwards goes through."""
    adjudicator = w.sb.adjudicator
    token, params = reentrant_channel(w, reentrant_artifact)
    w.fund(params)
    agent = Address(token.address)
    authorization = w.trader.signer.sign(w.sb.domain, ChallengeAuthorization(params.channel_id, agent))
    signed = w.sign(w.plain(params, 1))
    header = params.header().as_abi()
    calls = {
        "challenge": (
            "challenge",
            [header, signed.state.as_abi(), signed.trader_signature, signed.broker_signature, authorization],
        ),
        "challenge without state": ("challengeWithoutState", [header, authorization]),
    }
    name, args = calls[reentry]
    w.sb.deployer.transactor.transact(
        token.functions.arm(adjudicator.address, adjudicator.contract.encode_abi(name, args))
    )

    adjudicator.deposit(fast(w.broker), params, w.broker.address, 1_000 * USD)

    assert token.functions.attempts().call() == 1
    assert token.functions.lastSucceeded().call() is False
    assert token.functions.lastError().call() == REENTRANCY_ERROR
    status = adjudicator.status(params.channel_id)
    assert status.stage == Stage.OPEN and status.broker_deposit == BROKER_DEPOSIT + 1_000 * USD
    adjudicator.challenge(fast(w.trader), params, signed)
    assert adjudicator.status(params.channel_id).stage == Stage.DISPUTED


@pytest.mark.parametrize("reentry", ["conclude another channel", "withdraw", "close again"])
def test_a_token_that_re_enters_during_a_payout_is_refused_and_pays_once(
    w: World, reentrant_artifact: dict[str, Any], reentry: str
) -> None:
    """While the adjudicator pushes a payout, the token calls back into a guarded function: the
    call is refused, the payout still goes through (the stipend covers the attempt), and the
    other channel of the same token is untouched."""
    adjudicator = w.sb.adjudicator
    token, params = reentrant_channel(w, reentrant_artifact)
    other = replace(w.params(), token=token.address)
    w.fund(params)
    w.fund(other)
    challenge_and_wait(w, other, w.sign(w.plain(other, 1)), by=w.trader)
    final = w.sign(w.plain(params, 1, trader_available=600 * USD, final=True))
    payloads = {
        "conclude another channel": adjudicator.contract.encode_abi("conclude", [other.header().as_abi()]),
        "withdraw": adjudicator.contract.encode_abi("withdraw", [token.address, w.trader.address, w.trader.address]),
        "close again": adjudicator.contract.encode_abi(
            "close",
            [params.header().as_abi(), final.state.as_abi(), final.trader_signature, final.broker_signature],
        ),
    }
    w.sb.deployer.transactor.transact(token.functions.arm(adjudicator.address, payloads[reentry]))
    before = (balance(token, w.trader.address), balance(token, w.broker.address))

    receipt = adjudicator.close(fast(w.broker), params, final)

    assert token.functions.attempts().call() == 1
    assert token.functions.lastSucceeded().call() is False
    assert token.functions.lastError().call() == REENTRANCY_ERROR
    assert adjudicator.events(receipt, "PayoutDeferred") == []
    assert balance(token, w.trader.address) - before[0] == 600 * USD
    assert balance(token, w.broker.address) - before[1] == TOTAL - 600 * USD
    assert adjudicator.status(other.channel_id).stage == Stage.DISPUTED
    assert balance(token, adjudicator.address) == TOTAL  # the other channel's holdings, exactly
    adjudicator.conclude(fast(w.outsider), other)
    assert balance(token, adjudicator.address) == 0


# --------------------------------------------------------------------------- signatures of other types


def test_signatures_of_other_types_do_not_verify_as_state_signatures(w: World) -> None:
    """Each party signs an Order, a BatchPrice and a ChallengeAuthorization whose digests share
    the domain; none of them is accepted in place of its signature of a state, and a state
    signature is no authorisation."""
    params = w.open_channel(1)
    state = w.plain(params, 1)
    good = w.sign(state)
    domain = w.sb.domain
    order = make_order(w, params, 1)
    price = BatchPrice(MarketId(1), BatchNumber(1), Price(2_000 * USD))
    auth = ChallengeAuthorization(params.channel_id, w.trader.address)
    others: dict[str, Any] = {"order": order, "batch price": price, "authorisation": auth}
    for name, obj in others.items():
        for slot, party in (("trader_signature", w.trader), ("broker_signature", w.broker)):
            signature = party.signer.sign(domain, obj)
            if slot == "trader_signature":
                forged = replace(good, trader_signature=signature)
            else:
                forged = replace(good, broker_signature=signature)
            with pytest.raises(errors.WrongSigner):
                w.sb.adjudicator.challenge(w.trader.transactor, params, forged)
            assert w.sb.adjudicator.status(params.channel_id).stage == Stage.OPEN, name
    # the trader's state signature offered as an authorisation of the outsider
    with pytest.raises(errors.NotAuthorized):
        w.sb.adjudicator.challenge(w.outsider.transactor, params, good, authorization=good.trader_signature)


# --------------------------------------------------------------------------- a second adjudicator


def test_a_second_adjudicator_on_the_same_chain_accepts_nothing_signed_for_the_first(w: World) -> None:
    """The same parameters on another deployment are another channel (the id hashes the
    adjudicator's address), and the signatures recover to others under its domain."""
    deployed = deploy_contract(w.sb.deployer.transactor, "TradingChannelAdjudicator")
    second = AdjudicatorClient(w.chain, deployed.address)
    params = w.open_channel()
    signed = w.sign(w.plain(params, 1, trader_available=900 * USD, final=True))
    twin = replace(params, adjudicator=second.address)
    assert twin.channel_id != params.channel_id
    w.sb.token.approve(w.trader.transactor, second.address, 2**256 - 1)
    w.sb.token.approve(w.broker.transactor, second.address, 2**256 - 1)
    second.deposit(w.trader.transactor, twin, w.trader.address, TRADER_DEPOSIT)
    second.deposit(w.broker.transactor, twin, w.broker.address, BROKER_DEPOSIT)
    with pytest.raises(errors.WrongChannel):
        second.close(w.broker.transactor, twin, signed)
    moved = CoSignedState(
        replace(signed.state, channel_id=twin.channel_id), signed.trader_signature, signed.broker_signature
    )
    with pytest.raises(errors.WrongSigner):
        second.close(w.broker.transactor, twin, moved)
    with pytest.raises(errors.WrongSigner):
        second.challenge(w.trader.transactor, twin, moved)
    assert second.status(twin.channel_id).stage == Stage.OPEN


# --------------------------------------------------------------------------- an outsider


def test_an_outsider_calling_every_function_gains_nothing(w: World) -> None:
    """The outsider holds no signature of the trader's or the broker's: every call that needs one
    fails, and the calls that anyone may make (refute with co-signed states it found, conclude,
    evidence, withdraw to the account) only ever pay the participants."""
    adjudicator = w.sb.adjudicator
    me: Party = w.outsider
    start = w.balance(me)
    params = w.open_channel(1)
    forged_state = w.plain(params, 9, trader_available=0)
    mine = CoSignedState(
        forged_state, me.signer.sign(w.sb.domain, forged_state), me.signer.sign(w.sb.domain, forged_state)
    )
    half = replace(mine, broker_signature=w.sign(forged_state).broker_signature)

    with pytest.raises(errors.NotParticipant):
        adjudicator.deposit(me.transactor, params, me.address, USD)
    with pytest.raises(errors.NotAuthorized):
        adjudicator.challenge(me.transactor, params, w.sign(w.plain(params, 1)))
    with pytest.raises(errors.NotAuthorized):
        adjudicator.challenge_without_state(me.transactor, params)
    own_auth = me.signer.sign(w.sb.domain, ChallengeAuthorization(params.channel_id, me.address))
    with pytest.raises(errors.NotAuthorized):
        adjudicator.challenge(me.transactor, params, w.sign(w.plain(params, 1)), authorization=own_auth)
    with pytest.raises(errors.WrongSigner):
        adjudicator.close(me.transactor, params, replace(mine, state=replace(forged_state, is_final=True)))
    with pytest.raises(errors.ChannelNotDisputed):
        adjudicator.refute(me.transactor, params, w.sign(w.plain(params, 2)))
    with pytest.raises(errors.ChannelNotDisputed):
        adjudicator.conclude(me.transactor, params)
    fake = (
        BatchPrice(MarketId(1), BatchNumber(3), Price(1)),
        me.signer.sign(w.sb.domain, BatchPrice(MarketId(1), BatchNumber(3), Price(1))),
    )
    fake2 = (
        BatchPrice(MarketId(1), BatchNumber(3), Price(2)),
        me.signer.sign(w.sb.domain, BatchPrice(MarketId(1), BatchNumber(3), Price(2))),
    )
    with pytest.raises(errors.WrongSigner):
        adjudicator.prove_two_prices(me.transactor, w.broker.address, fake, fake2)
    with pytest.raises(errors.BrokerNotSlashed):
        adjudicator.conclude_slashed(me.transactor, params)
    order = open_order(w, make_order(w, params, 1))
    left_out = order_state(params, 4, [order], last_batches=(1,))
    forged_left_out = CoSignedState(left_out, me.signer.sign(w.sb.domain, left_out), w.sign(left_out).broker_signature)
    with pytest.raises(errors.WrongSigner):
        adjudicator.prove_left_out_order(me.transactor, params, forged_left_out, 0, signed_price(w, 1, 1, 1_990 * USD))
    with pytest.raises(errors.NothingToWithdraw):
        adjudicator.withdraw(me.transactor, w.sb.token.address, w.trader.address)
    with pytest.raises(errors.NotAuthorized):
        adjudicator.withdraw(me.transactor, w.sb.token.address, w.trader.address, me.address)

    # In a dispute: a half-forged refute fails, forged evidence fails, the conclusion pays the parties.
    registered = order_state(params, 3, [order], last_batches=(0,))
    deadline = int(
        one(w, adjudicator.challenge(w.trader.transactor, params, w.sign(registered)), "Challenged")["deadline"]
    )
    with pytest.raises(errors.WrongSigner):
        adjudicator.refute(me.transactor, params, half)
    with pytest.raises(errors.WrongSigner):
        adjudicator.submit_evidence(me.transactor, params, registered, [fake])
    at(w, deadline)
    w.sb.push_price("XAU / USD", 2_000 * 10**8)
    receipt = adjudicator.conclude(fast(me), params, registered)
    concluded = one(w, receipt, "Concluded")
    assert concluded["toTrader"] + concluded["toBroker"] == TOTAL
    assert w.balance(me) == start


# --------------------------------------------------------------------------- a watchtower's authorisation


def test_an_authorised_agent_can_only_start_a_dispute_and_never_receives_anything(w: World) -> None:
    """A watchtower holding the trader's authorisation challenges with an old state (v1) behind
    the trader's back. The trader (or anyone) refutes with the newest (v3) in the phase; the
    payouts follow v3 and go to the participants; the agent gets nothing, cannot redirect a
    credit, and its authorisation is worth nothing for another channel."""
    adjudicator = w.sb.adjudicator
    agent = w.watchtower
    params = w.open_channel()
    authorization = w.trader.signer.sign(w.sb.domain, ChallengeAuthorization(params.channel_id, agent.address))
    old = w.sign(w.plain(params, 1, trader_available=100 * USD))
    newest = w.sign(w.plain(params, 3, trader_available=900 * USD))
    start = w.balance(agent)

    adjudicator.challenge(agent.transactor, params, old, authorization=authorization)
    receipt = adjudicator.refute(w.trader.transactor, params, newest)
    at(w, int(one(w, receipt, "Refuted")["deadline"]))
    concluded = one(w, adjudicator.conclude(agent.transactor, params), "Concluded")
    assert (concluded["toTrader"], concluded["toBroker"]) == (900 * USD, TOTAL - 900 * USD)
    assert w.balance(agent) == start
    with pytest.raises(errors.NotAuthorized):
        adjudicator.withdraw(agent.transactor, w.sb.token.address, w.trader.address, agent.address)
    second = w.open_channel()
    with pytest.raises(errors.NotAuthorized):
        adjudicator.challenge(agent.transactor, second, w.sign(w.plain(second, 1)), authorization=authorization)


# --------------------------------------------------------------------------- feed decimals


def test_a_feed_with_more_than_18_decimals_counts_as_no_price(w: World) -> None:
    """A feed that reports 19 decimals (whose arithmetic could overflow) is no price: the
    conclusion waits for the fallback delay, then the position settles at zero value."""
    feed = deploy_contract(w.sb.deployer.transactor, "PriceFeed", 19, "ODD / USD", w.sb.deployer.address)
    market = Market(
        id=MarketId(5),
        feed=Address(feed.address),
        resolution=10**6,
        risk_factor=DEFAULT_RISK_FACTOR,
        max_price_age=DEFAULT_MAX_PRICE_AGE,
    )
    params = w.sb.channel_params(w.trader, w.broker, (market,))
    w.fund(params)
    odd = w.chain.w3.eth.contract(address=feed.address, abi=w.sb.feeds["XAU / USD"].contract.abi)
    w.sb.deployer.transactor.transact(odd.functions.pushAnswer(2_000 * 10**19))
    state = position_state(params, 1, TRADER_DEPOSIT, BROKER_DEPOSIT, (OUNCE,), 300 * USD)
    deadline = challenge_and_wait(w, params, w.sign(state))
    w.sb.deployer.transactor.transact(odd.functions.pushAnswer(2_000 * 10**19))
    with pytest.raises(errors.OraclePriceUnavailable):
        w.sb.adjudicator.conclude(w.outsider.transactor, params, state)
    at(w, deadline + FALLBACK_DELAY)
    receipt = w.sb.adjudicator.conclude(fast(w.outsider), params, state)
    assert one(w, receipt, "OracleFallbackUsed")["price"] == 0
    concluded = one(w, receipt, "Concluded")
    assert (concluded["toTrader"], concluded["toBroker"]) == (TRADER_DEPOSIT - 300 * USD, BROKER_DEPOSIT + 300 * USD)
