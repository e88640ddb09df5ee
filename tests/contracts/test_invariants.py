"""Stateful property of the adjudicator (issue 6): whatever sequence of calls anyone makes, the
adjudicator owes exactly what it holds.

:class:`AdjudicatorMachine` drives five channels between three traders and two brokers, in three
collateral tokens (the OpenZeppelin test token, a fee-on-transfer token and a blacklisting
token), through random deposits (by the participant or a third party), cooperative closes,
challenges (by a participant, an authorised agent or an outsider), challenges without a state,
refutes (newer or stale), batch-price evidence, time travel, conclusions, two-price proofs,
conclusions of a slashed broker's channels, left-out-order proofs, blacklisting and withdrawals.
Each call's outcome is predicted from a model kept by the test: a refusal must come with the
predicted custom error and change nothing, a conclusion must pay exactly what the pure rule
(``offchain.settlement.payouts``) says.

After every step, for each token the step touched (and for every token at the end of each
example): the adjudicator's balance equals the holdings of every unconcluded
channel plus every withdrawable credit (the on-chain view and the model agree on both); and a
concluded channel's on-chain record never changes again. Every conclusion pays out exactly the
channel's holdings, neither payout above them.

Run size: ``TCHAN_INVARIANT_EXAMPLES`` (default 4) examples of ``TCHAN_INVARIANT_STEPS`` (default
40) steps; e.g. ``TCHAN_INVARIANT_EXAMPLES=200 pytest tests/contracts/test_invariants.py``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import wraps
from typing import Any, TypeVar

import pytest
from eth_utils.address import to_checksum_address
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from web3.contract import Contract
from web3.types import TxReceipt

from offchain.chain import errors
from offchain.chain.artifacts import load_artifact
from offchain.chain.client import OnChainChannel, Stage
from offchain.chain.deploy import deploy_contract
from offchain.errors import ContractError
from offchain.model import (
    BatchPrice,
    ChallengeAuthorization,
    ChannelParams,
    ChannelState,
    OpenOrder,
    Order,
)
from offchain.sandbox import USD, Party, plain_state, position_state
from offchain.settlement import OraclePrice, payouts
from offchain.signing import CoSignedState
from offchain.types import (
    Address,
    BatchNumber,
    ExpirationHours,
    MarketId,
    Nonce,
    Price,
    Signature,
    SyntheticAmount,
    TokenAmount,
)
from tests.conftest import GOLD, World, fixed_key
from tests.contracts.test_dispute import block_time
from tests.contracts.test_evidence import fast, next_block_time, order_state
from tests.contracts.test_payout_property import in_fresh_thread

HOUR = 3600
OUNCE = 10**6
FEE_BASIS_POINTS = 100  # the fee-on-transfer token keeps 1% of every transfer
EXAMPLES = int(os.environ.get("TCHAN_INVARIANT_EXAMPLES", "4"))
STEPS = int(os.environ.get("TCHAN_INVARIANT_STEPS", "40"))
LIMIT = 2_000 * USD  # the buy limit of every open order here (per whole unit of gold)
CROSSING = 1_990 * USD  # a batch price strictly better than LIMIT
COLD_WALLET = Address(to_checksum_address("0x000000000000000000000000000000000000c01d"))

STATS: Counter[str] = Counter()

F = TypeVar("F", bound=Callable[..., None])


def shallow(method: F) -> F:
    """Run a rule on a fresh thread: py-evm is twice as fast on a shallow stack (see
    ``in_fresh_thread``)."""

    @wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        in_fresh_thread(lambda: method(*args, **kwargs))

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------- tokens and channels


@dataclass
class Token:
    name: str
    address: Address
    contract: Contract

    def balance_of(self, account: str) -> int:
        return int(self.contract.functions.balanceOf(account).call())


@dataclass
class Chan:
    """The model of one channel."""

    name: str
    params: ChannelParams
    trader: Party
    broker: Party
    token: Token
    deposits: list[int] = field(default_factory=lambda: [0, 0])
    stage: Stage = Stage.OPEN
    version: int = 0  # the highest version signed so far
    registered: ChannelState | None = None  # None while open, or after challengeWithoutState
    dispute_start: int = 0
    deadline: int = 0
    evidence: bool = False  # evidence submitted for the registered state
    frozen: OnChainChannel | None = None  # the on-chain record at conclusion

    @property
    def markets(self) -> int:
        return len(self.params.markets)

    @property
    def holdings(self) -> int:
        return sum(self.deposits)

    def next_version(self) -> int:
        self.version += 1
        return self.version


@dataclass
class Actors:
    traders: list[Party]
    brokers: list[Party]
    outsider: Party
    agent: Party
    tokens: list[Token]  # test token, fee-on-transfer, blacklist


def deploy_token(w: World, artifact: str, *args: Any) -> Token:
    deployed = deploy_contract(w.sb.deployer.transactor, artifact, *args)
    contract = w.chain.w3.eth.contract(address=deployed.address, abi=load_artifact(artifact)["abi"])
    return Token(artifact, deployed.address, contract)


def set_up(w: World) -> Actors:
    """Parties and tokens, once per test (the ``w`` fixture rolls them back afterwards)."""
    sb = w.sb
    traders = [w.trader] + [
        sb.party(f"invariant trader {i}", tokens=1_000_000 * USD, key=fixed_key(f"invariant trader {i}"))
        for i in (1, 2)
    ]
    brokers = [w.broker, sb.party("invariant broker 1", tokens=1_000_000 * USD, key=fixed_key("invariant broker 1"))]
    test_token = Token("TestToken", sb.token.address, sb.token.contract)
    fee = deploy_token(w, "FeeOnTransferToken", FEE_BASIS_POINTS)
    blacklist = deploy_token(w, "BlacklistToken")
    for token in (fee, blacklist):
        users = [traders[1], brokers[0]] if token is blacklist else [traders[2], brokers[1]]
        for party in [*users, w.outsider]:
            fast(sb.deployer).transact(token.contract.functions.mint(party.address, 1_000_000 * USD))
            fast(party).transact(token.contract.functions.approve(sb.adjudicator.address, 2**256 - 1))
    return Actors(traders, brokers, w.outsider, w.watchtower, [test_token, fee, blacklist])


def sign(w: World, chan: Chan, state: ChannelState) -> CoSignedState:
    """Both parties of ``chan`` sign ``state`` from its digest (no double-sign log: the model
    never signs two states with one version, and versions restart with every example)."""
    digest = w.sb.domain.state_digest(state)
    return CoSignedState(
        state, Signature(chan.trader.signer.sign_digest(digest)), Signature(chan.broker.signer.sign_digest(digest))
    )


def buy_order(w: World, chan: Chan, first_batch: int) -> OpenOrder:
    """An open buy of 0.1 oz at LIMIT, signed by the channel's trader, eligible from ``first_batch``."""
    order = Order(
        channel_id=chan.params.channel_id,
        trader=chan.trader.address,
        collateral=chan.params.token,
        market=MarketId(1),
        is_buy=True,
        amount_synthetic=SyntheticAmount(OUNCE // 10),
        amount_collateral=TokenAmount(LIMIT // 10),
        max_fee=TokenAmount(USD),
        nonce=Nonce(chan.version + 1),
        expiration=ExpirationHours(w.chain.now() // HOUR + 24 * 365),
    )
    signature = chan.trader.signer.sign(w.sb.domain, order)
    return OpenOrder(order, signature, SyntheticAmount(0), BatchNumber(first_batch))


def signed_price(w: World, chan: Chan, batch: int, price: int) -> tuple[BatchPrice, bytes]:
    batch_price = BatchPrice(MarketId(1), BatchNumber(batch), Price(price))
    return batch_price, chan.broker.signer.sign(w.sb.domain, batch_price)


# --------------------------------------------------------------------------- the machine

CHANNEL = st.integers(0, 9)
"""0-4: that channel, whatever its stage; 5-9: a channel that has not concluded (if any)."""
KINDS = ["plain", "plain", "positions", "order"]
FUNDING = ["exact", "exact", "exact", "unaccounted", "underfunded"]


class AdjudicatorMachine(RuleBasedStateMachine):
    w: World
    actors: Actors

    def __init__(self) -> None:
        super().__init__()
        w, a = self.w, self.actors
        self.snapshot = w.chain.snapshot()
        t, b, tok = a.traders, a.brokers, a.tokens
        specs = [
            ("test token, no market", t[0], b[0], tok[0], 0, HOUR),
            ("blacklist token", t[1], b[0], tok[2], 0, HOUR),
            ("fee-on-transfer token", t[2], b[1], tok[1], 0, 2 * HOUR),
            ("gold, broker 0", t[0], b[0], tok[0], 1, HOUR),
            ("gold, broker 1", t[1], b[1], tok[0], 1, 3 * HOUR),
        ]
        self.chans: list[Chan] = []
        for name, trader, broker, token, markets, duration in specs:
            params = w.sb.channel_params(trader, broker, tuple(w.sb.market(GOLD, 1) for _ in range(markets)), duration)
            self.chans.append(Chan(name, replace(params, token=token.address), trader, broker, token))
        self.slashed: set[str] = set()
        self.blacklisted: set[str] = set()
        self.credits: Counter[tuple[str, str]] = Counter()
        self.touched: set[str] = set()  # the tokens of the channels the last step touched
        self.block = -1  # the block of the last check
        self.baseline = {token.address: token.balance_of(w.sb.adjudicator.address) for token in tok}

    # ----------------------------------------------------------------- helpers

    def touch(self, i: int) -> Chan:
        live = [c for c in self.chans if c.stage != Stage.CONCLUDED]
        chan = self.chans[i % 5] if i < 5 or not live else live[(i - 5) % len(live)]
        self.touched.add(chan.token.address)
        return chan

    def refused(self, error: type[ContractError], action: Callable[[], object], label: str) -> None:
        """``action`` must revert with ``error`` (sent with a gas estimate, so nothing is mined)."""
        with pytest.raises(error):
            action()
        STATS[f"refused: {label} ({error.__name__})"] += 1

    def chan_state(
        self, chan: Chan, version: int, kind: str, funding: str, share: int, final: bool = False
    ) -> ChannelState:
        """A state of ``chan`` at ``version`` that accounts for the deposits as ``funding`` says."""
        td, bd = chan.deposits
        if funding == "unaccounted":
            td, bd = td // 2, bd - bd // 3
        elif funding == "underfunded":
            td += 1
        total = td + bd
        trader_value = total * share // 100  # share in [-20, 120]: clamped at both ends sometimes
        if kind == "positions" and chan.markets and not final:
            position = (share - 50) * OUNCE // 50  # -1 oz .. +1.4 oz
            cost = position * 2_000 * USD // OUNCE if position else 0
            return position_state(chan.params, version, td, bd, (position or 1,), cost)
        if kind == "order" and chan.markets and not final and td >= LIMIT // 10 + USD:
            return order_state(chan.params, version, [buy_order(self.w, chan, 1)], last_batches=(0,), deposits=(td, bd))
        return plain_state(chan.params, version, td, bd, trader_value, final)

    def caller(self, who: str, chan: Chan) -> tuple[Party, bytes]:
        """A challenger and its authorisation."""
        if who == "trader":
            return chan.trader, b""
        if who == "broker":
            return chan.broker, b""
        if who == "agent":
            auth = ChallengeAuthorization(chan.params.channel_id, self.actors.agent.address)
            return self.actors.agent, chan.trader.signer.sign(self.w.sb.domain, auth)
        return self.actors.outsider, b""

    def register(self, chan: Chan, state: ChannelState | None, receipt: TxReceipt, start: bool) -> None:
        t = block_time(self.w, receipt)
        if start:
            chan.stage, chan.dispute_start = Stage.DISPUTED, t
        chan.deadline = t + chan.params.challenge_duration
        chan.registered, chan.evidence = state, False

    def expected_payouts(self, chan: Chan, state: ChannelState | None, answer: int) -> tuple[int, int, bool]:
        slashed = chan.broker.address in self.slashed
        td, bd = chan.deposits
        if slashed:
            return chan.holdings, 0, False
        if state is None:
            return td, bd, False
        evidence = self.w.sb.adjudicator.evidence(chan.params.channel_id, state)
        p = payouts(chan.params, state, td, bd, {1: OraclePrice(answer, 8)}, 6, evidence=evidence)
        return p.to_trader, p.to_broker, p.underfunded

    def concluded(self, chan: Chan, receipt: TxReceipt, event: str, expected: tuple[int, int, bool] | None) -> None:
        """Check a conclusion's event and payouts, record deferred credits, freeze the channel."""
        adjudicator = self.w.sb.adjudicator
        (paid,) = adjudicator.events(receipt, event)
        to_trader, to_broker = int(paid["toTrader"]), int(paid["toBroker"])
        assert to_trader + to_broker == chan.holdings
        assert 0 <= to_trader <= chan.holdings and 0 <= to_broker <= chan.holdings
        if expected is not None:
            assert (to_trader, to_broker, paid["underfunded"]) == expected
        if chan.broker.address in self.slashed:
            assert (to_trader, to_broker) == (chan.holdings, 0)
        deferred = adjudicator.events(receipt, "PayoutDeferred")
        for d in deferred:
            self.credits[(d["token"], d["account"])] += int(d["amount"])
            STATS["payout deferred"] += 1
        blocked = {chan.trader.address, chan.broker.address} & self.blacklisted
        if chan.token.name == "BlacklistToken":
            assert {d["account"] for d in deferred} == {
                a for a, amt in ((chan.trader.address, to_trader), (chan.broker.address, to_broker)) if amt
            } & blocked
        else:
            assert deferred == []
        chan.stage, chan.deposits = Stage.CONCLUDED, [0, 0]
        chan.frozen = adjudicator.status(chan.params.channel_id)
        STATS[f"concluded by {event}"] += 1

    # ----------------------------------------------------------------- rules

    @rule(
        i=CHANNEL,
        side=st.sampled_from(["trader", "broker"]),
        amount=st.integers(1, 5_000 * USD),
        third_party=st.booleans(),
    )
    @shallow
    def deposit(self, i: int, side: str, amount: int, third_party: bool) -> None:
        chan = self.touch(i)
        participant: Party = getattr(chan, side)
        payer = self.actors.outsider if third_party else participant
        adjudicator = self.w.sb.adjudicator
        if chan.stage != Stage.OPEN:
            error = errors.ChannelDisputed if chan.stage == Stage.DISPUTED else errors.ChannelConcluded
            self.refused(
                error,
                lambda: adjudicator.deposit(payer.transactor, chan.params, participant.address, amount),
                "deposit",
            )
            return
        if payer.address in self.blacklisted and chan.token.name == "BlacklistToken":
            return
        before = chan.token.balance_of(adjudicator.address)
        receipt = adjudicator.deposit(fast(payer), chan.params, participant.address, amount)
        received = chan.token.balance_of(adjudicator.address) - before
        fee = amount * FEE_BASIS_POINTS // 10_000 if chan.token.name == "FeeOnTransferToken" else 0
        assert received == amount - fee
        (event,) = adjudicator.events(receipt, "Deposited")
        assert event["amount"] == received
        chan.deposits[0 if side == "trader" else 1] += received
        STATS["deposit"] += 1

    @rule(i=CHANNEL, side=st.sampled_from(["trader", "broker"]), amount=st.integers(1, 5_000 * USD))
    def top_up(self, i: int, side: str, amount: int) -> None:
        """Another deposit rule: deposits are the most common step."""
        self.deposit(i, side, amount, third_party=False)

    @rule(i=CHANNEL, share=st.integers(-20, 120), funding=st.sampled_from(FUNDING), stale=st.booleans())
    @shallow
    def close(self, i: int, share: int, funding: str, stale: bool) -> None:
        chan = self.touch(i)
        adjudicator = self.w.sb.adjudicator
        if chan.stage == Stage.CONCLUDED:
            state = self.chan_state(chan, chan.next_version(), "plain", funding, share, final=True)
            self.refused(
                errors.ChannelConcluded,
                lambda: adjudicator.close(chan.trader.transactor, chan.params, sign(self.w, chan, state)),
                "close",
            )
            return
        if stale and chan.registered is not None:
            state = self.chan_state(chan, chan.registered.version, "plain", funding, share, final=True)
            self.refused(
                errors.VersionNotNewer,
                lambda: adjudicator.close(chan.broker.transactor, chan.params, sign(self.w, chan, state)),
                "stale close",
            )
            return
        state = self.chan_state(chan, chan.next_version(), "plain", funding, share, final=True)
        expected = self.expected_payouts(chan, state, 0)
        receipt = adjudicator.close(fast(chan.broker), chan.params, sign(self.w, chan, state))
        self.concluded(chan, receipt, "Closed", expected)

    @rule(
        i=CHANNEL,
        kind=st.sampled_from(KINDS),
        funding=st.sampled_from(FUNDING),
        share=st.integers(-20, 120),
        who=st.sampled_from(["trader", "broker", "agent", "outsider"]),
    )
    @shallow
    def challenge(self, i: int, kind: str, funding: str, share: int, who: str) -> None:
        chan = self.touch(i)
        adjudicator = self.w.sb.adjudicator
        party, auth = self.caller(who, chan)
        state = self.chan_state(chan, chan.next_version(), kind, funding, share)
        signed = sign(self.w, chan, state)
        if who == "outsider":
            self.refused(
                errors.NotAuthorized,
                lambda: adjudicator.challenge(party.transactor, chan.params, signed, auth),
                "challenge by an outsider",
            )
            return
        if chan.stage != Stage.OPEN:
            error = errors.ChannelDisputed if chan.stage == Stage.DISPUTED else errors.ChannelConcluded
            self.refused(error, lambda: adjudicator.challenge(party.transactor, chan.params, signed, auth), "challenge")
            return
        receipt = adjudicator.challenge(fast(party), chan.params, signed, auth)
        self.register(chan, state, receipt, start=True)
        STATS[f"challenge by {who}"] += 1

    @rule(i=CHANNEL, who=st.sampled_from(["trader", "broker", "agent"]))
    @shallow
    def challenge_without_state(self, i: int, who: str) -> None:
        chan = self.touch(i)
        adjudicator = self.w.sb.adjudicator
        party, auth = self.caller(who, chan)
        if chan.stage != Stage.OPEN:
            error = errors.ChannelDisputed if chan.stage == Stage.DISPUTED else errors.ChannelConcluded
            self.refused(
                error,
                lambda: adjudicator.challenge_without_state(party.transactor, chan.params, auth),
                "challenge without state",
            )
            return
        receipt = adjudicator.challenge_without_state(fast(party), chan.params, auth)
        self.register(chan, None, receipt, start=True)
        STATS["challenge without state"] += 1

    @rule(
        i=CHANNEL,
        kind=st.sampled_from(KINDS),
        funding=st.sampled_from(FUNDING),
        share=st.integers(-20, 120),
        stale=st.booleans(),
    )
    @shallow
    def refute(self, i: int, kind: str, funding: str, share: int, stale: bool) -> None:
        chan = self.touch(i)
        adjudicator = self.w.sb.adjudicator
        by = self.actors.outsider  # anyone may refute
        stale = stale and chan.registered is not None
        version = chan.registered.version if stale and chan.registered else chan.next_version()
        state = self.chan_state(chan, version, kind, funding, share)
        signed = sign(self.w, chan, state)
        if chan.stage != Stage.DISPUTED:
            error = errors.ChannelNotDisputed if chan.stage == Stage.OPEN else errors.ChannelConcluded
            self.refused(error, lambda: adjudicator.refute(by.transactor, chan.params, signed), "refute")
            return
        if next_block_time(self.w) >= chan.dispute_start + chan.params.challenge_duration:
            self.refused(
                errors.RefutationPhaseOver,
                lambda: adjudicator.refute(by.transactor, chan.params, signed),
                "late refute",
            )
            return
        if stale:
            self.refused(
                errors.VersionNotNewer, lambda: adjudicator.refute(by.transactor, chan.params, signed), "stale refute"
            )
            return
        receipt = adjudicator.refute(fast(by), chan.params, signed)
        self.register(chan, state, receipt, start=False)
        STATS["refute"] += 1

    @rule(seconds=st.sampled_from([1, 60, 600, 1_800, HOUR, 2 * HOUR, 4 * HOUR]))
    @shallow
    def wait(self, seconds: int) -> None:
        self.w.chain.increase_time(seconds)

    def has_open_order(self) -> bool:
        return any(c.registered is not None and c.registered.open_orders for c in self.chans)

    @precondition(has_open_order)
    @rule(i=CHANNEL)
    @shallow
    def submit_evidence(self, i: int) -> None:
        chan = self.touch(i)
        state = chan.registered
        if state is None or not state.open_orders:
            return
        adjudicator = self.w.sb.adjudicator
        prices = [signed_price(self.w, chan, 1, CROSSING)]
        if chan.stage == Stage.CONCLUDED:
            error: type[ContractError] = errors.ChannelConcluded
        elif next_block_time(self.w) >= chan.deadline:
            error = errors.EvidencePeriodOver
        elif chan.evidence:
            error = errors.EvidenceChangesNothing
        else:
            adjudicator.submit_evidence(fast(self.actors.outsider), chan.params, state, prices)
            chan.evidence = True
            STATS["evidence"] += 1
            return
        self.refused(
            error,
            lambda: adjudicator.submit_evidence(self.actors.outsider.transactor, chan.params, state, prices),
            "evidence",
        )

    @rule(i=CHANNEL, answer=st.sampled_from([1_500, 2_000, 2_600]))
    @shallow
    def conclude(self, i: int, answer: int) -> None:
        chan = self.touch(i)
        adjudicator = self.w.sb.adjudicator
        by = self.actors.outsider  # anyone may conclude
        state = chan.registered
        if chan.stage != Stage.DISPUTED:
            error = errors.ChannelNotDisputed if chan.stage == Stage.OPEN else errors.ChannelConcluded
            self.refused(error, lambda: adjudicator.conclude(by.transactor, chan.params, state), "conclude")
            return
        if next_block_time(self.w) < chan.deadline:
            self.refused(
                errors.DeadlineNotReached,
                lambda: adjudicator.conclude(by.transactor, chan.params, state),
                "early conclude",
            )
            return
        if chan.markets:
            self.w.sb.feeds[GOLD].push(fast(self.w.sb.deployer), answer * 10**8)
        expected = self.expected_payouts(chan, state, answer * 10**8)
        receipt = adjudicator.conclude(fast(by), chan.params, state)
        self.concluded(chan, receipt, "Concluded", expected)

    @precondition(lambda self: not self.slashed)
    @rule()
    @shallow
    def prove_two_prices(self) -> None:
        """Broker 1 signs two prices for one batch (broker 0 stays honest, so that its channels
        keep concluding by their states)."""
        broker = self.actors.brokers[1]
        adjudicator = self.w.sb.adjudicator
        first, second = (BatchPrice(MarketId(1), BatchNumber(9), Price(p)) for p in (2_000 * USD, 2_001 * USD))
        proof = (
            broker.address,
            (first, broker.signer.sign(self.w.sb.domain, first)),
            (second, broker.signer.sign(self.w.sb.domain, second)),
        )
        if broker.address in self.slashed:
            self.refused(
                errors.BrokerAlreadySlashed,
                lambda: adjudicator.prove_two_prices(self.actors.outsider.transactor, *proof),
                "second proof",
            )
            return
        adjudicator.prove_two_prices(fast(self.actors.outsider), *proof)
        self.slashed.add(broker.address)
        STATS["broker slashed"] += 1

    @precondition(lambda self: bool(self.slashed))
    @rule(i=st.sampled_from([2, 4]))  # broker 1's channels
    @shallow
    def conclude_slashed(self, i: int) -> None:
        chan = self.touch(i)
        adjudicator = self.w.sb.adjudicator
        if chan.broker.address not in self.slashed:
            error: type[ContractError] = errors.BrokerNotSlashed
        elif chan.stage == Stage.CONCLUDED:
            error = errors.ChannelConcluded
        else:
            receipt = adjudicator.conclude_slashed(fast(self.actors.outsider), chan.params)
            self.concluded(chan, receipt, "Concluded", (chan.holdings, 0, False))
            return
        self.refused(
            error,
            lambda: adjudicator.conclude_slashed(self.actors.outsider.transactor, chan.params),
            "conclude slashed",
        )

    @rule(i=st.sampled_from([3, -1, -1]))
    @shallow
    def prove_left_out_order(self, i: int) -> None:
        """The broker co-signed a state that reflects batch 1 while an order eligible in it and
        strictly better than its price stays unfilled: the trader takes the channel. (-1: a gold
        channel that has not concluded, if any.)"""
        if i < 0:
            i = next((j for j in (3, 4) if self.chans[j].stage != Stage.CONCLUDED), 3)
        chan = self.touch(i)
        adjudicator = self.w.sb.adjudicator
        order = buy_order(self.w, chan, 1)
        state = order_state(chan.params, chan.next_version(), [order], last_batches=(1,), deposits=(0, 0))
        proof = (chan.params, sign(self.w, chan, state), 0, signed_price(self.w, chan, 1, CROSSING))
        if chan.stage == Stage.CONCLUDED:
            self.refused(
                errors.ChannelConcluded,
                lambda: adjudicator.prove_left_out_order(self.actors.outsider.transactor, *proof),
                "left-out proof",
            )
            return
        receipt = adjudicator.prove_left_out_order(fast(self.actors.outsider), *proof)
        self.concluded(chan, receipt, "Concluded", (chan.holdings, 0, False))

    @rule(who=st.sampled_from([0, 1]), value=st.booleans())
    @shallow
    def blacklist(self, who: int, value: bool) -> None:
        """Block or unblock the participants of the blacklist token's channel."""
        account = (self.chans[1].trader, self.chans[1].broker)[who].address
        token = self.actors.tokens[2]
        self.w.sb.deployer.transactor.transact(token.contract.functions.setBlacklisted(account, value))
        (self.blacklisted.add if value else self.blacklisted.discard)(account)

    @rule(who=st.sampled_from([0, 1]), redirect=st.booleans(), by_outsider=st.booleans())
    @shallow
    def withdraw(self, who: int, redirect: bool, by_outsider: bool) -> None:
        account: Party = (self.chans[1].trader, self.chans[1].broker)[who]
        token = self.actors.tokens[2]
        self.touched.add(token.address)
        caller = self.actors.outsider if by_outsider else account
        to = COLD_WALLET if redirect else account.address
        adjudicator = self.w.sb.adjudicator
        credit = self.credits[(token.address, account.address)]

        def attempt() -> object:
            return adjudicator.withdraw(caller.transactor, token.address, account.address, to)

        if by_outsider and redirect:
            self.refused(errors.NotAuthorized, attempt, "withdraw to another address by an outsider")
        elif credit == 0:
            self.refused(errors.NothingToWithdraw, attempt, "withdraw")
        elif to in self.blacklisted:
            with pytest.raises(ContractError):  # the token's own error (Blacklisted)
                attempt()
            STATS["withdraw refused by the token"] += 1
        else:
            before = token.balance_of(to)
            adjudicator.withdraw(fast(caller), token.address, account.address, to)
            assert token.balance_of(to) - before == credit
            self.credits[(token.address, account.address)] = 0
            STATS["withdraw"] += 1

    # ----------------------------------------------------------------- invariants

    def check_token(self, token: Token) -> None:
        """The adjudicator's balance of ``token`` is the holdings of every unconcluded channel in
        it plus every withdrawable credit in it, on-chain and in the model alike."""
        adjudicator = self.w.sb.adjudicator
        owed = 0
        accounts: set[str] = set()
        for chan in self.chans:
            if chan.token is not token:
                continue
            accounts |= {chan.trader.address, chan.broker.address}
            status = adjudicator.status(chan.params.channel_id)
            assert status.stage == chan.stage, chan.name
            assert [status.trader_deposit, status.broker_deposit] == chan.deposits, chan.name
            if chan.stage == Stage.CONCLUDED:
                assert status == chan.frozen, f"{chan.name} changed after its conclusion"
            owed += status.trader_deposit + status.broker_deposit
        for account in sorted(accounts):
            credit = adjudicator.withdrawable(token.address, to_checksum_address(account))
            assert credit == self.credits[(token.address, account)]
            owed += credit
        held = token.balance_of(adjudicator.address) - self.baseline[token.address]
        assert held == owed, f"{token.name}: holds {held}, owes {owed}"

    @invariant()
    def the_adjudicator_holds_exactly_what_it_owes(self) -> None:
        """After every step, for the tokens the step touched (a step that touches no channel of a
        token cannot move it; ``teardown`` checks every token at the end of each example)."""
        block = self.w.chain.w3.eth.block_number
        if block != self.block:  # no block, no change: refusals are judged by gas estimates
            for token in self.actors.tokens:
                if token.address in self.touched:
                    self.check_token(token)
            self.block = block
        self.touched.clear()

    def teardown(self) -> None:
        try:
            for token in self.actors.tokens:
                self.check_token(token)
        finally:
            self.w.chain.revert(self.snapshot)


def test_the_adjudicator_owes_exactly_what_it_holds(w: World) -> None:
    AdjudicatorMachine.w = w
    AdjudicatorMachine.actors = set_up(w)
    STATS.clear()
    run_state_machine_as_test(
        AdjudicatorMachine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            derandomize="TCHAN_INVARIANT_EXAMPLES" not in os.environ,  # the short run is the same every time
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    print(dict(sorted(STATS.items())))  # shown with pytest -s
    assert sum(v for k, v in STATS.items() if k.startswith("concluded")) > 0, STATS
