"""Batch-price evidence in a dispute (MISSION.md, "The channel on-chain" item 5, "Batches",
"Slashing"): until the deadline anyone may submit broker-signed batch prices for the registered
state; a price strictly better than an open order's limit (on the integer grid) fills the order's
remainder at that price at conclusion, and per order the earliest crossing batch wins.

Every accepted submission is checked against the pure mirror (``offchain.settlement``): the
``EvidenceAccepted`` events, what ``evidenceOf`` holds afterwards, the ``OrderFilledByEvidence``
events and the ``Concluded`` payouts, with the token movements. The rules themselves are also
checked with hand-computed numbers, so that the mirror and the contract cannot agree on a mistake.

Time: ``at(w, t)`` makes the next transaction mine at exactly ``t``; a refused transaction mines
nothing, so it is judged at the timestamp the next block would have.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from web3.types import TxReceipt

from offchain.chain import errors
from offchain.chain.client import Stage
from offchain.chain.connection import Transactor
from offchain.engine.rules import crosses, total_lock
from offchain.errors import ValidationError
from offchain.model import (
    MAX_BALANCE,
    Balances,
    BatchPrice,
    ChannelParams,
    ChannelState,
    OpenOrder,
    Order,
    Outcome,
)
from offchain.sandbox import USD, Party, position_state
from offchain.settlement import (
    Evidence,
    EvidenceFill,
    OraclePrice,
    Payouts,
    evidence_fill,
    fills_from_evidence,
    payouts,
    record_evidence,
)
from offchain.signing import malleate
from offchain.types import (
    BatchNumber,
    ExpirationHours,
    MarketId,
    Nonce,
    Price,
    Signature,
    SyntheticAmount,
    TokenAmount,
    Version,
)
from tests.conftest import BTC, GOLD, World
from tests.contracts.test_dispute import adjudicator_balance, at, block_time, one, same

HOUR = 3600
DAY = 24 * HOUR
OUNCE = 10**6  # one whole synthetic unit (market resolution 10**6)
TOKEN_DECIMALS = 6
GOLD_ANSWER = 2_000 * 10**8
BTC_ANSWER = 60_000 * 10**8
# Deposits of the channels here (the state accounts for exactly these).
TD = 10_000 * USD
BD = 10_000 * USD
HOLDINGS = TD + BD
MAX_EVIDENCE_PRICES = 64

FAST_GAS = 5_000_000

SignedPrice = tuple[BatchPrice, Signature]


# --------------------------------------------------------------------------- speed and time


class FastTransactor:
    """Sends with a fixed gas limit instead of an estimate (eth-tester estimates by running the
    transaction several times): for transactions that must succeed. A refusal sent this way would
    mine a failed block, so refusals go through the party's own transactor, whose estimate
    reverts before anything is mined."""

    def __init__(self, transactor: Transactor) -> None:
        self.transactor = transactor

    @property
    def address(self) -> Any:
        return self.transactor.address

    def transact(self, fn: Any, gas: int | None = None) -> TxReceipt:
        return self.transactor.transact(fn, gas=gas or FAST_GAS)


def fast(party: Party) -> Any:
    """``party``'s transactor without gas estimates (duck-typed for the client's methods)."""
    return FastTransactor(party.transactor)


def next_block_time(w: World) -> int:
    """The timestamp the next block will have (and a refused call is judged at)."""
    return int(w.chain.w3.eth.get_block("pending")["timestamp"])


@contextmanager
def rolled_back(w: World) -> Iterator[None]:
    """Run a case and roll the chain back to where it was, to try several cases on one setup."""
    snapshot = w.chain.snapshot()
    try:
        yield
    finally:
        w.chain.revert(snapshot)


# --------------------------------------------------------------------------- builders


def open_channel(w: World, markets: int = 1, challenge_duration: int = DAY) -> ChannelParams:
    """A funded channel (TD and BD) with ``markets`` markets: gold (id 1), BTC (id 2), gold (id 3)."""
    params = w.params(markets, challenge_duration)
    fund(w, params)
    return params


def fund(w: World, params: ChannelParams, trader_deposit: int = TD, broker_deposit: int = BD) -> None:
    w.sb.adjudicator.deposit(fast(w.trader), params, w.trader.address, trader_deposit)
    w.sb.adjudicator.deposit(fast(w.broker), params, w.broker.address, broker_deposit)


def expiring_in(w: World, hours: int) -> ExpirationHours:
    """An expiration (hours since the epoch) ``hours`` after the hour of the latest block."""
    return ExpirationHours(w.chain.now() // HOUR + hours)


def make_order(
    w: World,
    params: ChannelParams,
    nonce: int,
    *,
    is_buy: bool = True,
    size: int = OUNCE // 10,
    limit: int = 2_000 * USD,
    collateral: int | None = None,
    max_fee: int = USD,
    market: int = 1,
    expiration: int | None = None,
) -> Order:
    """An order of ``size`` synthetic base units at ``limit`` collateral per whole unit (the
    markets here all have resolution 10**6), unless ``collateral`` is given."""
    return Order(
        channel_id=params.channel_id,
        trader=w.trader.address,
        collateral=params.token,
        market=MarketId(market),
        is_buy=is_buy,
        amount_synthetic=SyntheticAmount(size),
        amount_collateral=TokenAmount(limit * size // OUNCE if collateral is None else collateral),
        max_fee=TokenAmount(max_fee),
        nonce=Nonce(nonce),
        expiration=ExpirationHours(expiring_in(w, 24 * 365) if expiration is None else expiration),
    )


def open_order(w: World, order: Order, filled: int = 0, first_batch: int = 1) -> OpenOrder:
    return OpenOrder(order, w.trader.signer.sign(w.sb.domain, order), SyntheticAmount(filled), BatchNumber(first_batch))


def order_state(
    params: ChannelParams,
    version: int,
    orders: Sequence[OpenOrder],
    *,
    last_batches: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    cost: int = 0,
    deposits: tuple[int, int] = (TD, BD),
) -> ChannelState:
    """A state accounting for ``deposits``, holding ``orders`` (their locks taken from the
    trader's collateral) and ``positions`` bought for ``cost``, reflecting ``last_batches`` per
    market."""
    count = len(params.markets)
    lock = total_lock(orders)
    trader_deposit, broker_deposit = deposits
    return ChannelState(
        channel_id=params.channel_id,
        version=Version(version),
        balances=Balances(
            trader_available=TokenAmount(trader_deposit - lock - cost),
            trader_locked=TokenAmount(lock),
            broker_available=TokenAmount(broker_deposit + cost),
            broker_locked=TokenAmount(0),
            trader_deposit=TokenAmount(trader_deposit),
            broker_deposit=TokenAmount(broker_deposit),
        ),
        open_orders=tuple(orders),
        outcomes=tuple(
            Outcome(SyntheticAmount(p), TokenAmount(0), BatchNumber(b))
            for p, b in zip(positions or (0,) * count, last_batches or (0,) * count, strict=True)
        ),
    )


def signed_price(w: World, market: int, batch: int, price: int, signer: Party | None = None) -> SignedPrice:
    batch_price = BatchPrice(MarketId(market), BatchNumber(batch), Price(price))
    return batch_price, (signer or w.broker).signer.sign(w.sb.domain, batch_price)


def dispute(w: World, params: ChannelParams, state: ChannelState, by: Party | None = None) -> int:
    """Challenge with ``state`` co-signed; returns the deadline."""
    receipt = w.sb.adjudicator.challenge(fast(by or w.trader), params, w.sign(state))
    return int(one(w, receipt, "Challenged")["deadline"])


def held(w: World, params: ChannelParams, state: ChannelState) -> dict[int, Evidence]:
    return w.sb.adjudicator.evidence(params.channel_id, state)


# --------------------------------------------------------------------------- checks against the mirror


def mirror(
    evidence: dict[int, Evidence], params: ChannelParams, state: ChannelState, prices: Sequence[BatchPrice], now: int
) -> tuple[dict[int, Evidence], list[tuple[int, BatchPrice]]]:
    """What ``submitEvidence`` of ``prices`` at block time ``now`` leaves, by the mirror, and
    which (order index, price) it accepts, in the order of the EvidenceAccepted events."""
    accepted: list[tuple[int, BatchPrice]] = []
    for price in prices:
        after = record_evidence(evidence, params, state, price, now)
        accepted += [(i, price) for i in sorted(after) if after[i] != evidence.get(i)]
        evidence = after
    return evidence, accepted


def submit(
    w: World, params: ChannelParams, state: ChannelState, prices: Sequence[SignedPrice], by: Party | None = None
) -> TxReceipt:
    """Submit ``prices`` for the registered ``state``; the events and the evidence held afterwards
    must be exactly what the mirror says, and the mirror must accept something."""
    adjudicator = w.sb.adjudicator
    version = adjudicator.status(params.channel_id).registered_version
    before = held(w, params, state)
    now = next_block_time(w)
    receipt = adjudicator.submit_evidence(fast(by or w.trader), params, state, prices)
    assert block_time(w, receipt) == now
    expected, accepted = mirror(before, params, state, [p for p, _ in prices], now)
    assert accepted, "the mirror accepts nothing: use refused()"
    events = [
        (e["channelId"], e["version"], e["orderIndex"], e["market"], e["batch"], e["price"])
        for e in adjudicator.events(receipt, "EvidenceAccepted")
    ]
    assert events == [(params.channel_id, version, i, p.market, p.batch, p.price) for i, p in accepted]
    assert held(w, params, state) == expected
    return receipt


def refused(
    w: World, params: ChannelParams, state: ChannelState, prices: Sequence[SignedPrice], by: Party | None = None
) -> None:
    """Submitting ``prices`` changes nothing: the mirror accepts none of them and the contract
    refuses with EvidenceChangesNothing."""
    before = held(w, params, state)
    expected, accepted = mirror(before, params, state, [p for p, _ in prices], next_block_time(w))
    assert (expected, accepted) == (before, [])
    with pytest.raises(errors.EvidenceChangesNothing):
        w.sb.adjudicator.submit_evidence((by or w.trader).transactor, params, state, prices)
    assert held(w, params, state) == before


def oracle(w: World, params: ChannelParams) -> dict[int, OraclePrice]:
    """The fresh answers push_fresh_prices() pushes, per market of ``params``."""
    gold = w.sb.feeds[GOLD].address
    return {m.id: OraclePrice(GOLD_ANSWER if m.feed == gold else BTC_ANSWER, 8) for m in params.markets}


def push_fresh_prices(w: World, params: ChannelParams) -> None:
    """Fresh answers for the feeds of ``params``'s markets."""
    feeds = {m.feed for m in params.markets}
    for description, answer in ((GOLD, GOLD_ANSWER), (BTC, BTC_ANSWER)):
        feed = w.sb.feeds[description]
        if feed.address in feeds:
            feed.push(fast(w.sb.deployer), answer)


def conclude_checked(
    w: World, params: ChannelParams, expected: Payouts, state: ChannelState | None = None, by: Party | None = None
) -> TxReceipt:
    """Conclude (the client picks conclude or concludeWithState) and check the Concluded event,
    the token movements (the adjudicator pays out exactly the holdings) and the final status."""
    by = by or w.outsider
    parties = (w.trader, w.broker, w.outsider)
    before = [w.balance(p) for p in parties] + [adjudicator_balance(w)]
    receipt = w.sb.adjudicator.conclude(fast(by), params, state)
    event = one(w, receipt, "Concluded")
    assert event["channelId"] == params.channel_id
    assert (event["toTrader"], event["toBroker"], event["underfunded"]) == (
        expected.to_trader,
        expected.to_broker,
        expected.underfunded,
    )
    after = [w.balance(p) for p in parties] + [adjudicator_balance(w)]
    assert [a - b for a, b in zip(after, before, strict=True)] == [
        expected.to_trader,
        expected.to_broker,
        0,
        -expected.total,
    ]
    status = w.sb.adjudicator.status(params.channel_id)
    assert (status.stage, status.trader_deposit, status.broker_deposit) == (Stage.CONCLUDED, 0, 0)
    return receipt


def conclude_with_evidence(
    w: World, params: ChannelParams, state: ChannelState, deadline: int, by: Party | None = None
) -> tuple[Payouts, list[tuple[int, EvidenceFill]]]:
    """Wait for the deadline, push fresh oracle prices, conclude with ``state`` and check the
    Concluded payouts and the OrderFilledByEvidence events against the mirror. Returns the
    payouts and the fills (order index, fill)."""
    if w.chain.now() < deadline - 1:
        at(w, deadline)
    push_fresh_prices(w, params)
    evidence = held(w, params, state)
    expected = payouts(params, state, TD, BD, oracle(w, params), TOKEN_DECIMALS, evidence=evidence)
    assert expected.total == HOLDINGS
    receipt = conclude_checked(w, params, expected, state, by=by)
    fills, _, _ = fills_from_evidence(params, state, evidence)
    events = [
        (e["channelId"], e["orderIndex"], e["batch"], e["price"], e["amount"], e["collateral"], e["fee"])
        for e in w.sb.adjudicator.events(receipt, "OrderFilledByEvidence")
    ]
    assert events == [
        (params.channel_id, i, evidence[i].batch, evidence[i].price, f.amount, f.collateral, f.fee)
        for i, f in sorted(fills.items())
    ]
    return expected, sorted(fills.items())


def raw_submit(w: World, params: ChannelParams, state: ChannelState, prices: list[Any], signatures: list[bytes]) -> Any:
    fn = w.sb.adjudicator.contract.functions.submitEvidence(params.as_abi(), state.as_abi(), prices, signatures)
    return w.outsider.transactor.transact(fn)


def disputed_buy(w: World, version: int = 3) -> tuple[ChannelParams, ChannelState, int]:
    """A channel in dispute whose registered state holds one open buy (0.1 oz at $2,000, eligible
    from batch 1, the state reflecting batch 0)."""
    params = open_channel(w)
    state = order_state(params, version, [open_order(w, make_order(w, params, 1))])
    return params, state, dispute(w, params, state)


# --------------------------------------------------------------------------- a crossing price fills the remainder


@pytest.mark.parametrize("side", ["buy", "sell"])
def test_a_crossing_price_fills_the_remainder_at_that_price(w: World, side: str) -> None:
    params = open_channel(w)
    if side == "buy":
        # 1 oz at $2,000 (max fee $2), 0.4 oz already bought; batch 4 clears at $1,990.
        order = make_order(w, params, 1, is_buy=True, size=OUNCE, limit=2_000 * USD, max_fee=2 * USD)
        filled, position, cost, price = 400_000, 400_000, 800 * USD, 1_990 * USD
        # Buyer pays 0.6 * 1,990 = 1,194 (within its lock of 1,200); the fee is capped by the
        # signed ratio: 2 * 1,194 / 2,000 = 1.194 (the pro-rata lock would allow 1.2).
        fill = EvidenceFill(600_000, 1_194 * USD, 1_194_000)
        trader_gets = TD - cost - 1_194 * USD - 1_194_000 + 2_000 * USD  # 1 oz at the oracle's $2,000
    else:
        # 0.5 oz at $2,100 (max fee $1), 0.1 oz already sold; batch 4 clears at $2,150.
        order = make_order(w, params, 1, is_buy=False, size=500_000, limit=2_100 * USD, max_fee=USD)
        filled, position, cost, price = 100_000, -100_000, -210 * USD, 2_150 * USD
        # Seller receives 0.4 * 2,150 = 860; the fee is the pro-rata 0.8 (the ratio cap is 0.819...).
        fill = EvidenceFill(400_000, 860 * USD, 800_000)
        trader_gets = TD - cost + 860 * USD - 800_000 - 1_000 * USD  # short 0.5 oz at $2,000
    oo = open_order(w, order, filled=filled, first_batch=2)
    state = order_state(params, 5, [oo], last_batches=(3,), positions=(position,), cost=cost)
    assert evidence_fill(oo, price, OUNCE) == fill

    deadline = dispute(w, params, state, by=w.broker)
    receipt = submit(w, params, state, [signed_price(w, 1, 4, price)])
    event = one(w, receipt, "EvidenceAccepted")
    assert (event["version"], event["orderIndex"], event["market"], event["batch"], event["price"]) == (
        5,
        0,
        1,
        4,
        price,
    )
    assert w.sb.adjudicator.evidence_of(params.channel_id, 5, 0) == Evidence(4, price)

    expected, fills = conclude_with_evidence(w, params, state, deadline)
    assert fills == [(0, fill)]
    assert expected == Payouts(trader_gets, HOLDINGS - trader_gets)


def test_a_trader_whose_broker_never_answers_gets_the_fill_alone(w: World) -> None:
    """The trader challenges with its latest state, submits the broker's signed price by itself,
    and concludes after the deadline: its open buy is filled at the batch price."""
    params = open_channel(w)
    order = make_order(w, params, 9, size=OUNCE, limit=2_050 * USD, max_fee=3 * USD)
    state = order_state(params, 12, [open_order(w, order, first_batch=7)], last_batches=(6,))
    deadline = dispute(w, params, state, by=w.trader)
    submit(w, params, state, [signed_price(w, 1, 7, 2_010 * USD)], by=w.trader)
    expected, fills = conclude_with_evidence(w, params, state, deadline, by=w.trader)
    assert fills == [(0, EvidenceFill(OUNCE, 2_010 * USD, 2_941_463))]  # fee 3 * 2,010 / 2,050, floored
    assert expected.to_trader == TD - 2_010 * USD - 2_941_463 + 2_000 * USD


# --------------------------------------------------------------------------- the earliest batch wins


def test_the_earliest_crossing_batch_wins_whoever_submits_it(w: World) -> None:
    params, state, deadline = disputed_buy(w)
    cid = params.channel_id
    submit(w, params, state, [signed_price(w, 1, 5, 1_950 * USD)], by=w.trader)
    assert w.sb.adjudicator.evidence_of(cid, 3, 0) == Evidence(5, 1_950 * USD)

    # An earlier batch replaces it, whoever submits it.
    submit(w, params, state, [signed_price(w, 1, 3, 1_980 * USD)], by=w.broker)
    assert w.sb.adjudicator.evidence_of(cid, 3, 0) == Evidence(3, 1_980 * USD)

    # A later batch, or the same one again, changes nothing, however good its price.
    refused(w, params, state, [signed_price(w, 1, 4, 1_900 * USD)], by=w.outsider)
    refused(w, params, state, [signed_price(w, 1, 3, 1_980 * USD)], by=w.outsider)
    refused(w, params, state, [signed_price(w, 1, 5, 1_950 * USD), signed_price(w, 1, 4, 10 * USD)], by=w.broker)
    # An earlier batch that does not cross (exactly at the limit) does not replace it either.
    refused(w, params, state, [signed_price(w, 1, 1, 2_000 * USD)], by=w.outsider)

    submit(w, params, state, [signed_price(w, 1, 2, 1_999 * USD)], by=w.outsider)
    assert w.sb.adjudicator.evidence_of(cid, 3, 0) == Evidence(2, 1_999 * USD)

    _, fills = conclude_with_evidence(w, params, state, deadline)
    assert fills == [(0, EvidenceFill(OUNCE // 10, 199_900_000, 999_500))]


def test_several_prices_in_one_call_in_any_order(w: World) -> None:
    """Order A (limit $2,000, eligible from batch 1) and order B (limit $1,900, eligible from
    batch 4). Batch 3 at $1,950 crosses A only; batch 4 at $1,890 and batch 5 at $1,800 cross
    both. Whatever the order of the prices in one call, A ends with batch 3 and B with batch 4."""
    params = open_channel(w)
    a = open_order(w, make_order(w, params, 1, limit=2_000 * USD), first_batch=1)
    b = open_order(w, make_order(w, params, 2, limit=1_900 * USD), first_batch=4)
    state = order_state(params, 2, [a, b])
    deadline = dispute(w, params, state)
    prices = {3: 1_950 * USD, 4: 1_890 * USD, 5: 1_800 * USD}
    events = {
        (5, 3, 4): [(0, 5), (1, 5), (0, 3), (1, 4)],
        (3, 4, 5): [(0, 3), (1, 4)],
        (4, 5, 3): [(0, 4), (1, 4), (0, 3)],
        (5, 4, 3): [(0, 5), (1, 5), (0, 4), (1, 4), (0, 3)],
    }
    for batches, accepted in events.items():
        with rolled_back(w):
            receipt = submit(w, params, state, [signed_price(w, 1, batch, prices[batch]) for batch in batches])
            assert held(w, params, state) == {0: Evidence(3, 1_950 * USD), 1: Evidence(4, 1_890 * USD)}
            assert [(e["orderIndex"], e["batch"]) for e in w.sb.adjudicator.events(receipt, "EvidenceAccepted")] == (
                accepted
            )
    submit(w, params, state, [signed_price(w, 1, batch, prices[batch]) for batch in (4, 3, 5)])
    _, fills = conclude_with_evidence(w, params, state, deadline)
    assert [(i, f.collateral) for i, f in fills] == [(0, 195 * USD), (1, 189 * USD)]


# --------------------------------------------------------------------------- batches that do not count


def test_batches_the_state_reflects_or_before_the_order_do_nothing(w: World) -> None:
    """Gold reflects batch 2, BTC batch 10. A gold buy eligible from batch 5 and a BTC buy
    eligible from batch 1: gold batches 2 (reflected), 3 and 4 (before the order) and BTC batch 10
    (reflected) do nothing; gold batch 5 counts though BTC is at 10 (lastBatch is per market)."""
    params = open_channel(w, markets=2)
    gold = open_order(w, make_order(w, params, 1, limit=2_000 * USD), first_batch=5)
    btc = open_order(w, make_order(w, params, 2, market=2, size=1_000, limit=60_000 * USD), first_batch=1)
    state = order_state(params, 4, [gold, btc], last_batches=(2, 10))
    deadline = dispute(w, params, state)

    refused(w, params, state, [signed_price(w, 1, 2, 1_000 * USD)])
    refused(w, params, state, [signed_price(w, 1, 1, 1_000 * USD), signed_price(w, 1, 0, 1_000 * USD)])
    refused(w, params, state, [signed_price(w, 1, 3, 1_000 * USD), signed_price(w, 1, 4, 1_000 * USD)])
    refused(w, params, state, [signed_price(w, 2, 10, 50_000 * USD), signed_price(w, 2, 3, 50_000 * USD)])
    assert held(w, params, state) == {}

    submit(w, params, state, [signed_price(w, 1, 5, 1_500 * USD), signed_price(w, 2, 11, 59_000 * USD)])
    assert held(w, params, state) == {0: Evidence(5, 1_500 * USD), 1: Evidence(11, 59_000 * USD)}
    _, fills = conclude_with_evidence(w, params, state, deadline)
    assert [(i, f.amount, f.collateral) for i, f in fills] == [(0, OUNCE // 10, 150 * USD), (1, 1_000, 59 * USD)]


def test_prices_at_or_worse_than_the_limit_do_nothing_one_unit_better_crosses(w: World) -> None:
    """Orders exactly at the price may have been rationed: they do not count. Gold: a buy at
    $2,000 (C * res == P * S at P = 2,000 * 10**6) and a sell at $2,100. BTC (market 2): a buy and a
    sell of 3 units for 7,000, a limit of 2,333,333,333.33... base units, off the integer grid:
    the buy accepts 2,333,333,333 but not one more, the sell 2,333,333,334 but not one less."""
    params = open_channel(w, markets=2)
    grid = 2_333_333_333
    orders = [
        open_order(w, make_order(w, params, 1, is_buy=True, size=OUNCE, limit=2_000 * USD)),
        open_order(w, make_order(w, params, 2, is_buy=False, size=OUNCE, limit=2_100 * USD)),
        open_order(w, make_order(w, params, 3, is_buy=True, market=2, size=3, collateral=7_000)),
        open_order(w, make_order(w, params, 4, is_buy=False, market=2, size=3, collateral=7_000)),
    ]
    assert orders[0].order.amount_collateral * OUNCE == 2_000 * USD * orders[0].order.amount_synthetic
    state = order_state(params, 8, orders)
    deadline = dispute(w, params, state)

    not_crossing = [
        (1, 2_000 * USD),  # the buy exactly at its limit; the sell's limit is worse
        (1, 2_100 * USD),  # the sell exactly at its limit; the buy's limit is worse
        (1, 2_050 * USD),  # between the two limits: both are worse
        (2, grid),  # the fractional buy at the last price it accepts (rationed)
        (2, grid + 1),  # the fractional sell at the first price it accepts (rationed)
    ]
    for batch, (market, price) in enumerate(not_crossing, start=1):
        refused(w, params, state, [signed_price(w, market, batch, price)])
        assert not any(crosses(o.order, price, OUNCE) for o in orders if o.order.market == market)

    one_unit_better = [(1, 2_000 * USD - 1), (1, 2_100 * USD + 1), (2, grid - 1), (2, grid + 2)]
    receipt = submit(w, params, state, [signed_price(w, m, 10 + i, p) for i, (m, p) in enumerate(one_unit_better)])
    assert [e["orderIndex"] for e in w.sb.adjudicator.events(receipt, "EvidenceAccepted")] == [0, 1, 2, 3]
    assert held(w, params, state) == {i: Evidence(10 + i, p) for i, (_, p) in enumerate(one_unit_better)}
    _, fills = conclude_with_evidence(w, params, state, deadline)
    assert [i for i, _ in fills] == [0, 1, 2, 3]


# --------------------------------------------------------------------------- expiry


def test_a_first_crossing_counts_only_before_the_order_expires(w: World) -> None:
    """Two buys expiring at hour E: a first crossing in the block at E * 3600 - 1 counts, one at
    E * 3600 does not; the order that has evidence is still replaced by an earlier batch after."""
    params = open_channel(w)
    expiration = expiring_in(w, 2)
    expires_at = expiration * HOUR
    a = open_order(w, make_order(w, params, 1, limit=2_000 * USD, expiration=expiration))
    b = open_order(w, make_order(w, params, 2, limit=1_800 * USD, expiration=expiration))
    state = order_state(params, 6, [a, b])
    deadline = dispute(w, params, state)
    assert expires_at + HOUR < deadline

    at(w, expires_at - 1)
    submit(w, params, state, [signed_price(w, 1, 5, 1_990 * USD)])  # crosses a only
    assert held(w, params, state) == {0: Evidence(5, 1_990 * USD)}
    assert w.chain.now() == expires_at - 1

    # From E * 3600 on, b is expired: its first crossing is ignored ...
    refused(w, params, state, [signed_price(w, 1, 6, 1_700 * USD)])
    # ... while a, which has evidence, still takes an earlier batch.
    receipt = submit(w, params, state, [signed_price(w, 1, 3, 1_995 * USD), signed_price(w, 1, 2, 1_700 * USD)])
    assert block_time(w, receipt) == expires_at
    assert held(w, params, state) == {0: Evidence(2, 1_700 * USD)}
    _, fills = conclude_with_evidence(w, params, state, deadline)
    assert [(i, f.collateral) for i, f in fills] == [(0, 170 * USD)]


# --------------------------------------------------------------------------- wrong input


def test_a_price_not_signed_by_the_broker_is_refused(w: World) -> None:
    params, state, _ = disputed_buy(w)
    good = signed_price(w, 1, 2, 1_900 * USD)
    for signer in (w.outsider, w.trader):
        # A forged price after a good one: the whole call reverts.
        forged = signed_price(w, 1, 3, 1_800 * USD, signer=signer)
        with pytest.raises(errors.WrongSigner) as exc:
            w.sb.adjudicator.submit_evidence(w.trader.transactor, params, state, [good, forged])
        assert same(exc.value.arguments["expected"], w.broker.address)
        assert same(exc.value.arguments["recovered"], signer.address)
    # The broker's signature of another price does not carry over.
    other_signature = signed_price(w, 1, 3, 1_800 * USD)[1]
    with pytest.raises(errors.WrongSigner):
        w.sb.adjudicator.submit_evidence(w.trader.transactor, params, state, [(good[0], other_signature)])
    assert held(w, params, state) == {}


def test_a_malleable_price_signature_is_refused(w: World) -> None:
    params, state, _ = disputed_buy(w)
    price, signature = signed_price(w, 1, 2, 1_900 * USD)
    with pytest.raises(errors.MalleableSignature):
        w.sb.adjudicator.submit_evidence(w.trader.transactor, params, state, [(price, malleate(signature))])
    assert held(w, params, state) == {}


def test_a_price_of_an_unknown_market_is_refused(w: World) -> None:
    params, state, _ = disputed_buy(w)
    unknown = signed_price(w, 99, 2, 1_900 * USD)
    with pytest.raises(ValidationError):  # the mirror refuses it too
        record_evidence({}, params, state, unknown[0], w.chain.now())
    with pytest.raises(errors.UnknownMarket) as exc:
        w.sb.adjudicator.submit_evidence(
            w.trader.transactor, params, state, [signed_price(w, 1, 2, 1_900 * USD), unknown]
        )
    assert exc.value.arguments == {"market": 99}
    assert held(w, params, state) == {}


def test_an_invalid_number_of_prices_is_refused(w: World) -> None:
    params, state, _ = disputed_buy(w)
    price, signature = signed_price(w, 1, 2, 1_900 * USD)
    assert w.sb.adjudicator.constant("MAX_EVIDENCE_PRICES") == MAX_EVIDENCE_PRICES
    for prices, signatures in [(0, 0), (1, 0), (0, 1), (1, 2), (2, 1), (MAX_EVIDENCE_PRICES + 1,) * 2]:
        with pytest.raises(errors.EvidenceCountInvalid) as exc:
            raw_submit(w, params, state, [price.as_abi()] * prices, [bytes(signature)] * signatures)
        assert exc.value.arguments == {"prices": prices, "signatures": signatures}
    assert held(w, params, state) == {}
    # MAX_EVIDENCE_PRICES is accepted: each earlier batch replaces the one before.
    many = [signed_price(w, 1, MAX_EVIDENCE_PRICES + 1 - i, 1_900 * USD) for i in range(MAX_EVIDENCE_PRICES)]
    receipt = submit(w, params, state, many)
    assert len(w.sb.adjudicator.events(receipt, "EvidenceAccepted")) == MAX_EVIDENCE_PRICES
    assert held(w, params, state) == {0: Evidence(2, 1_900 * USD)}


def test_a_state_other_than_the_registered_one_is_refused(w: World) -> None:
    params, state, _ = disputed_buy(w)
    price = [signed_price(w, 1, 2, 1_900 * USD)]
    (oo,) = state.open_orders
    others = [
        replace(state, version=Version(state.version + 1)),
        replace(state, open_orders=(replace(oo, filled=SyntheticAmount(1)),)),
        replace(state, open_orders=(replace(oo, first_batch=BatchNumber(0)),)),
        replace(state, open_orders=(oo, oo)),
        replace(state, balances=replace(state.balances, trader_available=TokenAmount(TD))),
    ]
    for other in others:
        with pytest.raises(errors.StateMismatch):
            w.sb.adjudicator.submit_evidence(w.trader.transactor, params, other, price)
    foreign = replace(state, channel_id=w.params(1).channel_id)
    with pytest.raises(errors.WrongChannel) as exc:
        w.sb.adjudicator.submit_evidence(w.trader.transactor, params, foreign, price)
    assert exc.value.arguments == {"expected": params.channel_id, "actual": foreign.channel_id}
    submit(w, params, state, price)


def test_a_registered_state_without_open_orders_takes_no_evidence(w: World) -> None:
    params = open_channel(w)
    price = [signed_price(w, 1, 1, 1_000 * USD)]
    with_order = order_state(params, 1, [open_order(w, make_order(w, params, 1))])
    settled = order_state(params, 2, [])
    positions = position_state(params, 3, TD, BD, (OUNCE // 10,), 200 * USD)
    for registered in (settled, positions, None):
        with rolled_back(w):
            if registered is None:
                w.sb.adjudicator.challenge_without_state(fast(w.trader), params)
            else:
                dispute(w, params, registered)
                with pytest.raises(errors.NoOpenOrders):
                    w.sb.adjudicator.submit_evidence(w.trader.transactor, params, registered, price)
            # A state with open orders is not the registered one: refused all the same.
            expected = errors.StateMismatch if registered is positions else errors.NoOpenOrders
            with pytest.raises(expected):
                w.sb.adjudicator.submit_evidence(w.trader.transactor, params, with_order, price)


def test_evidence_needs_a_dispute(w: World) -> None:
    params = open_channel(w)
    state = order_state(params, 1, [open_order(w, make_order(w, params, 1))])
    with pytest.raises(errors.ChannelNotDisputed) as exc:
        w.sb.adjudicator.submit_evidence(w.trader.transactor, params, state, [signed_price(w, 1, 1, 1_000 * USD)])
    assert exc.value.arguments == {"channelId": params.channel_id}


def test_evidence_is_accepted_until_the_block_before_the_deadline(w: World) -> None:
    params, state, deadline = disputed_buy(w)
    at(w, deadline - 1)
    receipt = submit(w, params, state, [signed_price(w, 1, 4, 1_950 * USD)])
    assert block_time(w, receipt) == deadline - 1
    # The next block is at the deadline: too late, even for an earlier batch.
    with pytest.raises(errors.EvidencePeriodOver) as exc:
        w.sb.adjudicator.submit_evidence(w.broker.transactor, params, state, [signed_price(w, 1, 2, 1_000 * USD)])
    assert exc.value.arguments == {"deadline": deadline}
    assert held(w, params, state) == {0: Evidence(4, 1_950 * USD)}
    _, fills = conclude_with_evidence(w, params, state, deadline)
    assert [(i, f.collateral) for i, f in fills] == [(0, 195 * USD)]


def test_evidence_for_a_concluded_channel_is_refused(w: World) -> None:
    params, state, deadline = disputed_buy(w)
    conclude_with_evidence(w, params, state, deadline)
    with pytest.raises(errors.ChannelConcluded) as exc:
        w.sb.adjudicator.submit_evidence(w.trader.transactor, params, state, [signed_price(w, 1, 4, 1_950 * USD)])
    assert exc.value.arguments == {"channelId": params.channel_id}
    assert w.sb.adjudicator.status(params.channel_id).stage == Stage.CONCLUDED


# --------------------------------------------------------------------------- refute


def test_a_refute_starts_over_from_no_evidence_with_a_full_window(w: World) -> None:
    """Evidence belongs to the registered state. After a refute in the last block of the
    refutation phase (disputeStart + d - 1), the new state has no evidence, evidence for the old
    state is refused, and evidence for the new one is accepted until the new deadline."""
    params = open_channel(w, challenge_duration=HOUR)
    d = params.challenge_duration
    order = make_order(w, params, 1, limit=2_000 * USD)
    old = order_state(params, 1, [open_order(w, order)])
    new = order_state(params, 2, [open_order(w, order)], last_batches=(1,))
    receipt = w.sb.adjudicator.challenge(fast(w.broker), params, w.sign(old))
    t0 = block_time(w, receipt)
    submit(w, params, old, [signed_price(w, 1, 2, 1_900 * USD)])
    assert w.sb.adjudicator.evidence_of(params.channel_id, 1, 0) == Evidence(2, 1_900 * USD)

    at(w, t0 + d - 1)
    receipt = w.sb.adjudicator.refute(fast(w.trader), params, w.sign(new))
    t1 = block_time(w, receipt)
    assert t1 == t0 + d - 1
    assert one(w, receipt, "Refuted")["deadline"] == t1 + d
    assert held(w, params, new) == {}  # nothing carried over
    with pytest.raises(errors.StateMismatch):
        w.sb.adjudicator.submit_evidence(w.trader.transactor, params, old, [signed_price(w, 1, 3, 1_800 * USD)])

    # The broker has the whole window d for the new state: evidence in its last block counts.
    at(w, t1 + d - 1)
    receipt = submit(w, params, new, [signed_price(w, 1, 3, 1_950 * USD)], by=w.broker)
    assert block_time(w, receipt) == t1 + d - 1
    with pytest.raises(errors.EvidencePeriodOver) as exc:
        w.sb.adjudicator.submit_evidence(w.trader.transactor, params, new, [signed_price(w, 1, 2, 1_900 * USD)])
    assert exc.value.arguments == {"deadline": t1 + d}
    _, fills = conclude_with_evidence(w, params, new, t1 + d)
    assert [(i, f.collateral) for i, f in fills] == [(0, 195 * USD)]


# --------------------------------------------------------------------------- position bounds


def test_a_fill_that_would_leave_the_position_bounds_is_skipped(w: World) -> None:
    """Long 2^63 - 16 units of a market with resolution 2^64 - 1 (about half an ounce). Buys A and
    B of 10 units and sell C of 10 units all have evidence: A fills (2^63 - 6), B would pass 2^63 - 1
    and is skipped, C still fills after it (2^63 - 16). The mirror agrees."""
    resolution = 2**64 - 1
    params = w.sb.channel_params(w.trader, w.broker, (w.sb.market(GOLD, 1, resolution=resolution),))
    fund(w, params)
    start = MAX_BALANCE - 15
    orders = [
        open_order(w, make_order(w, params, 1, is_buy=True, size=10, collateral=1, max_fee=5 * USD)),
        open_order(w, make_order(w, params, 2, is_buy=True, size=10, collateral=1, max_fee=5 * USD)),
        open_order(w, make_order(w, params, 3, is_buy=False, size=10, collateral=0, max_fee=3 * USD)),
    ]
    state = order_state(params, 3, orders, positions=(start,))
    deadline = dispute(w, params, state)
    submit(w, params, state, [signed_price(w, 1, 1, 2_000 * USD)])
    assert set(held(w, params, state)) == {0, 1, 2}

    fills, positions, change = fills_from_evidence(params, state, held(w, params, state))
    assert sorted(fills) == [0, 2]
    assert positions == [start]
    assert change == -(1 + 5 * USD) - 3 * USD
    expected, concluded = conclude_with_evidence(w, params, state, deadline)
    assert concluded == [(0, EvidenceFill(10, 1, 5 * USD)), (2, EvidenceFill(10, 0, 3 * USD))]
    value = start * GOLD_ANSWER * 10**TOKEN_DECIMALS // (resolution * 10**8)
    trader = TD + change + value  # available + locked is the whole deposit: nothing was bought before
    assert expected == Payouts(trader, HOLDINGS - trader)


def test_an_underfunded_state_with_evidence_returns_the_deposits_without_an_oracle(w: World) -> None:
    """The broker never funded: the state was never funded, so every deposit goes back. Evidence
    does not change that, fills nothing, and no oracle price is needed (the gold answer is stale
    by then)."""
    params = w.params(1)
    w.sb.adjudicator.deposit(fast(w.trader), params, w.trader.address, TD)
    state = order_state(params, 3, [open_order(w, make_order(w, params, 1))])
    deadline = dispute(w, params, state)
    submit(w, params, state, [signed_price(w, 1, 1, 1_900 * USD)])
    at(w, deadline + 2 * HOUR)  # the gold answer (max age 1 h) is stale now
    expected = payouts(params, state, TD, 0, {}, TOKEN_DECIMALS, evidence=held(w, params, state))
    assert expected == Payouts(TD, 0, underfunded=True)
    receipt = w.sb.adjudicator.conclude(fast(w.outsider), params, state)
    event = one(w, receipt, "Concluded")
    assert (event["toTrader"], event["toBroker"], event["underfunded"]) == (TD, 0, True)
    assert w.sb.adjudicator.events(receipt, "OrderFilledByEvidence") == []


def test_evidence_of_a_version_out_of_range_is_none(w: World) -> None:
    """The view keys evidence by ``version << 8 | index``: a version beyond 2^48 - 1 (which no
    registration can have) must not alias another version's evidence."""
    params = open_channel(w)
    state = order_state(params, 0, [open_order(w, make_order(w, params, 1))])
    dispute(w, params, state)
    submit(w, params, state, [signed_price(w, 1, 1, 1_900 * USD)])
    assert w.sb.adjudicator.evidence_of(params.channel_id, 0, 0) == Evidence(1, 1_900 * USD)
    assert w.sb.adjudicator.evidence_of(params.channel_id, 2**248, 0) is None
    assert w.sb.adjudicator.evidence_of(params.channel_id, 0, 64) is None
