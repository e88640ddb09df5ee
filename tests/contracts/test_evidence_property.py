"""Property: evidence on the adjudicator is exactly the pure mirror (offchain.settlement).

For random single-market states with a few open orders (buys and sells, limits next to the
prices, partly or completely filled, eligible from various batches, some expired or expiring
during the dispute) and random sequences of broker-signed prices submitted as evidence at random
times: after every submission ``evidenceOf`` equals ``record_evidence`` (or both refuse with
EvidenceChangesNothing), and at conclusion the fills and the payouts equal
``fills_from_evidence`` and ``payouts``, while the adjudicator's token balance drops by exactly the
channel's holdings. Each example rolls the chain back itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from offchain.chain import errors
from offchain.model import ChannelParams, ChannelState
from offchain.sandbox import USD
from offchain.settlement import Evidence, OraclePrice, fills_from_evidence, payouts
from tests.conftest import GOLD, World
from tests.contracts.test_dispute import adjudicator_balance, at, block_time, one
from tests.contracts.test_evidence import (
    BD,
    HOLDINGS,
    HOUR,
    TD,
    TOKEN_DECIMALS,
    fast,
    fund,
    make_order,
    mirror,
    next_block_time,
    open_order,
    order_state,
    signed_price,
)
from tests.contracts.test_payout_property import PROPERTY_EXAMPLES, in_fresh_thread

PROPERTY_SETTINGS = settings(max_examples=PROPERTY_EXAMPLES, deadline=None)


@dataclass(frozen=True)
class OrderSpec:
    is_buy: bool
    size: int
    limit: int  # collateral per whole unit
    jitter: int  # added to the order's collateral: limits off the price grid
    filled: str  # "none", "half", "all but one", "all"
    first_batch: int
    max_fee: int
    expiry: str  # "far", "expired", "during the dispute"


@dataclass(frozen=True)
class Scenario:
    resolution: int
    last_batch: int
    orders: tuple[OrderSpec, ...]
    submissions: tuple[tuple[int, tuple[tuple[int, int], ...]], ...]  # (seconds to wait, ((batch, price), ...))
    oracle: int  # gold's answer at conclusion, 8 decimals


LIMITS = [1_950 * USD, 2_000 * USD, 2_050 * USD]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    resolution = draw(st.sampled_from([10**6, 1_000]))
    last_batch = draw(st.integers(0, 3))
    orders = tuple(
        OrderSpec(
            is_buy=draw(st.booleans()),
            size=draw(st.integers(1, resolution)),
            limit=draw(st.sampled_from(LIMITS)) + draw(st.sampled_from([0, 0, 1, -1, 7 * USD])),
            jitter=draw(st.sampled_from([0, 0, 1, -1])),
            filled=draw(st.sampled_from(["none", "none", "half", "all but one", "all"])),
            first_batch=draw(st.integers(0, last_batch + 4)),
            max_fee=draw(st.integers(0, 5 * USD)),
            expiry=draw(st.sampled_from(["far", "far", "expired", "during the dispute"])),
        )
        for _ in range(draw(st.integers(1, 4)))
    )
    # Prices at, next to and around the orders' limits.
    candidates = [o.limit + d for o in orders for d in (-2, -1, 0, 1, 2)] + [1_900 * USD, 2_100 * USD]
    price = st.one_of(st.sampled_from(candidates), st.integers(1_800 * USD, 2_200 * USD))
    submissions = tuple(
        (
            draw(st.sampled_from([0, 0, 60, 10 * 60, 25 * 60])),
            tuple((draw(st.integers(0, last_batch + 6)), draw(price)) for _ in range(draw(st.integers(1, 3)))),
        )
        for _ in range(draw(st.integers(1, 6)))
    )
    return Scenario(resolution, last_batch, orders, submissions, draw(st.integers(1_500, 2_500)) * 10**8)


def build(w: World, params: ChannelParams, sc: Scenario, challenge_at: int) -> ChannelState:
    hour = challenge_at // HOUR
    expirations = {"far": hour + 24 * 365, "expired": hour, "during the dispute": hour + 1}
    filled = {"none": lambda s: 0, "half": lambda s: s // 2, "all but one": lambda s: s - 1, "all": lambda s: s}
    open_orders = []
    for nonce, spec in enumerate(sc.orders, start=1):
        collateral = max(spec.limit * spec.size // sc.resolution + spec.jitter, 0)
        order = make_order(
            w,
            params,
            nonce,
            is_buy=spec.is_buy,
            size=spec.size,
            collateral=collateral,
            max_fee=spec.max_fee,
            expiration=expirations[spec.expiry],
        )
        open_orders.append(open_order(w, order, filled=filled[spec.filled](spec.size), first_batch=spec.first_batch))
    return order_state(params, 7, open_orders, last_batches=(sc.last_batch,))


def run_dispute(w: World, sc: Scenario, labels: list[str]) -> None:
    adjudicator = w.sb.adjudicator
    params = w.sb.channel_params(w.trader, w.broker, (w.sb.market(GOLD, 1, resolution=sc.resolution),), HOUR)
    fund(w, params)
    state = build(w, params, sc, next_block_time(w))
    receipt = adjudicator.challenge(fast(w.broker), params, w.sign(state))
    deadline = int(one(w, receipt, "Challenged")["deadline"])

    evidence: dict[int, Evidence] = {}
    for wait, entries in sc.submissions:
        if wait:
            at(w, w.chain.now() + wait)
        prices = [signed_price(w, 1, batch, price) for batch, price in entries]
        now = next_block_time(w)
        if now >= deadline:
            with pytest.raises(errors.EvidencePeriodOver):
                adjudicator.submit_evidence(w.trader.transactor, params, state, prices)
            labels.append("evidence period over")
            break
        expected, accepted = mirror(evidence, params, state, [p for p, _ in prices], now)
        if accepted:
            receipt = adjudicator.submit_evidence(fast(w.outsider), params, state, prices)
            assert block_time(w, receipt) == now
            events = [
                (e["orderIndex"], e["batch"], e["price"]) for e in adjudicator.events(receipt, "EvidenceAccepted")
            ]
            assert events == [(i, p.batch, p.price) for i, p in accepted]
            labels.append("evidence accepted")
        else:
            with pytest.raises(errors.EvidenceChangesNothing):
                adjudicator.submit_evidence(w.trader.transactor, params, state, prices)
            labels.append("evidence changes nothing")
        evidence = expected
        assert adjudicator.evidence(params.channel_id, state) == evidence

    if w.chain.now() < deadline - 1:
        at(w, deadline)
    w.sb.feeds[GOLD].push(fast(w.sb.deployer), sc.oracle)
    expected_payouts = payouts(params, state, TD, BD, {1: OraclePrice(sc.oracle, 8)}, TOKEN_DECIMALS, evidence=evidence)
    fills, _, _ = fills_from_evidence(params, state, evidence)
    before = (w.balance(w.trader), w.balance(w.broker), adjudicator_balance(w))
    receipt = adjudicator.conclude(fast(w.outsider), params, state)
    concluded = one(w, receipt, "Concluded")
    assert (concluded["toTrader"], concluded["toBroker"], concluded["underfunded"]) == (
        expected_payouts.to_trader,
        expected_payouts.to_broker,
        False,
    )
    filled = [
        (e["orderIndex"], e["batch"], e["price"], e["amount"], e["collateral"], e["fee"])
        for e in adjudicator.events(receipt, "OrderFilledByEvidence")
    ]
    assert filled == [
        (i, evidence[i].batch, evidence[i].price, f.amount, f.collateral, f.fee) for i, f in sorted(fills.items())
    ]
    after = (w.balance(w.trader), w.balance(w.broker), adjudicator_balance(w))
    assert after[0] - before[0] == expected_payouts.to_trader
    assert after[1] - before[1] == expected_payouts.to_broker
    assert before[2] - after[2] == HOLDINGS
    labels.append(f"{len(fills)} order(s) filled from evidence")


@PROPERTY_SETTINGS
@given(sc=scenarios())
def test_evidence_and_payouts_follow_the_mirror(world: World, sc: Scenario) -> None:
    labels: list[str] = []
    snapshot = world.chain.snapshot()
    try:
        in_fresh_thread(lambda: run_dispute(world, sc, labels))
    finally:
        world.chain.revert(snapshot)
    for label in set(labels):
        event(label)
