"""Slashing (MISSION.md, "Slashing"; seed 001) on the adjudicator.

- Two prices: two different prices signed by one broker for one (market, batch), proven by
  anyone, once. From then on every channel of that broker concludes with the trader taking all
  of its funds: at once with ``concludeSlashed``, or through ``close``, ``conclude`` and
  ``concludeWithState`` (which then need no oracle).
- Left-out order: a co-signed state that reflects batch b while holding an order eligible in b,
  strictly better than b's signed price, unfilled and unexpired proves the broker left the order
  out: the trader takes the channel at once. Each condition has a refusal with its reason code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial

import pytest
from web3.logs import DISCARD
from web3.types import TxReceipt

from offchain.chain import errors
from offchain.chain.client import Stage
from offchain.chain.connection import call_view
from offchain.eip712 import Domain
from offchain.engine.slashing import left_out_orders
from offchain.model import ChannelParams, ChannelState, Market, OpenOrder
from offchain.sandbox import DEFAULT_MAX_PRICE_AGE, DEFAULT_RISK_FACTOR, USD, Party, plain_state, position_state
from offchain.signing import CoSignedState, malleate
from offchain.store import MemoryStore, StoredBatchPrice
from offchain.types import ExpirationHours, MarketId
from tests.conftest import World
from tests.contracts.test_dispute import adjudicator_balance, at, block_time, dead_feed, one, same
from tests.contracts.test_evidence import (
    BD,
    HOLDINGS,
    HOUR,
    OUNCE,
    TD,
    SignedPrice,
    dispute,
    expiring_in,
    fast,
    fund,
    make_order,
    next_block_time,
    open_channel,
    open_order,
    order_state,
    signed_price,
    submit,
)

# --------------------------------------------------------------------------- helpers


def prove_two_prices(
    w: World, first: SignedPrice, second: SignedPrice, by: Party | None = None, broker: Party | None = None
) -> TxReceipt:
    return w.sb.adjudicator.prove_two_prices(fast(by or w.outsider), (broker or w.broker).address, first, second)


def slash(w: World, broker: Party | None = None) -> int:
    """Prove that ``broker`` (default: the world's broker) signed two prices for gold's batch 7;
    returns the block time."""
    broker = broker or w.broker
    first = signed_price(w, 1, 7, 2_000 * USD, signer=broker)
    second = signed_price(w, 1, 7, 2_001 * USD, signer=broker)
    receipt = prove_two_prices(w, first, second, broker=broker)
    return block_time(w, receipt)


def trader_takes_all(
    w: World,
    params: ChannelParams,
    action: Callable[[], TxReceipt],
    event: str = "Concluded",
    holdings: int = HOLDINGS,
) -> TxReceipt:
    """Run ``action`` (a conclusion); the trader must receive all of ``holdings``, the broker
    nothing, and the adjudicator must hold nothing more for the channel."""
    before = (w.balance(w.trader), w.balance(w.broker), adjudicator_balance(w))
    receipt = action()
    found = one(w, receipt, event)
    assert found["channelId"] == params.channel_id
    assert (found["toTrader"], found["toBroker"], found["underfunded"]) == (holdings, 0, False)
    after = (w.balance(w.trader), w.balance(w.broker), adjudicator_balance(w))
    assert (after[0] - before[0], after[1] - before[1], before[2] - after[2]) == (holdings, 0, holdings)
    status = w.sb.adjudicator.status(params.channel_id)
    assert (status.stage, status.trader_deposit, status.broker_deposit) == (Stage.CONCLUDED, 0, 0)
    assert w.sb.adjudicator.events(receipt, "OrderFilledByEvidence") == []
    assert w.sb.adjudicator.events(receipt, "OracleFallbackUsed") == []
    return receipt


def conclude_slashed(w: World, params: ChannelParams, by: Party | None = None) -> TxReceipt:
    return w.sb.adjudicator.conclude_slashed(fast(by or w.outsider), params)


def position_channel(w: World, version: int = 2) -> tuple[ChannelParams, ChannelState]:
    """A funded gold channel and a state in which the trader is long 1 oz, bought for $2,000."""
    params = open_channel(w)
    return params, position_state(params, version, TD, BD, (OUNCE,), 2_000 * USD)


def log_index(w: World, receipt: TxReceipt, event: str) -> int:
    (entry,) = w.sb.adjudicator.contract.events[event]().process_receipt(receipt, errors=DISCARD)
    return int(entry["logIndex"])


# --------------------------------------------------------------------------- two prices


@pytest.mark.parametrize("prover", ["outsider", "watchtower", "trader"])
def test_two_prices_for_one_batch_slash_the_broker(w: World, prover: str) -> None:
    party: Party = getattr(w, prover)
    first = signed_price(w, 2, 41, 60_000 * USD)
    second = signed_price(w, 2, 41, 60_000 * USD + 1)
    assert w.sb.adjudicator.slashed_at(w.broker.address) is None
    receipt = prove_two_prices(w, first, second, by=party)
    event = one(w, receipt, "BrokerSlashed")
    assert same(event["broker"], w.broker.address)
    assert same(event["prover"], party.address)
    assert (event["market"], event["batch"], event["firstPrice"], event["secondPrice"]) == (
        2,
        41,
        60_000 * USD,
        60_000 * USD + 1,
    )
    assert w.sb.adjudicator.slashed_at(w.broker.address) == block_time(w, receipt)

    # Once is enough: the same pair, the pair swapped and any other pair are refused.
    third = signed_price(w, 1, 3, 1_000 * USD)
    fourth = signed_price(w, 1, 3, 1_001 * USD)
    for pair in ((first, second), (second, first), (third, fourth)):
        with pytest.raises(errors.BrokerAlreadySlashed) as exc:
            w.sb.adjudicator.prove_two_prices(w.trader.transactor, w.broker.address, *pair)
        assert same(exc.value.arguments["broker"], w.broker.address)
    assert w.sb.adjudicator.slashed_at(w.broker.address) == block_time(w, receipt)


def test_two_prices_that_do_not_conflict_are_refused(w: World) -> None:
    adjudicator = w.sb.adjudicator
    price = signed_price(w, 1, 5, 2_000 * USD)
    refusals: list[tuple[SignedPrice, SignedPrice, type[errors.CustomContractError]]] = [
        (price, price, errors.SamePrice),  # the same signed price twice
        (price, (price[0], malleate(price[1])), errors.SamePrice),  # the same price, another signature
        (price, signed_price(w, 1, 6, 2_001 * USD), errors.DifferentBatches),  # another batch
        (price, signed_price(w, 2, 5, 2_001 * USD), errors.DifferentBatches),  # another market
        (price, signed_price(w, 2, 6, 2_000 * USD), errors.DifferentBatches),
    ]
    for first, second, error in refusals:
        with pytest.raises(error):
            adjudicator.prove_two_prices(w.outsider.transactor, w.broker.address, first, second)
    assert adjudicator.slashed_at(w.broker.address) is None


def test_two_prices_not_both_signed_by_the_broker_are_refused(w: World) -> None:
    adjudicator = w.sb.adjudicator
    good = signed_price(w, 1, 5, 2_000 * USD)
    forged = signed_price(w, 1, 5, 2_001 * USD, signer=w.outsider)
    for first, second in ((good, forged), (forged, good)):
        with pytest.raises(errors.WrongSigner) as exc:
            adjudicator.prove_two_prices(w.outsider.transactor, w.broker.address, first, second)
        assert same(exc.value.arguments["expected"], w.broker.address)
        assert same(exc.value.arguments["recovered"], w.outsider.address)
    # The broker's own signatures do not slash someone else.
    with pytest.raises(errors.WrongSigner) as exc:
        adjudicator.prove_two_prices(w.outsider.transactor, w.outsider.address, good, signed_price(w, 1, 5, 1))
    assert same(exc.value.arguments["expected"], w.outsider.address)
    assert same(exc.value.arguments["recovered"], w.broker.address)
    # A signature of another price, and a malleable one.
    second = signed_price(w, 1, 5, 2_001 * USD)
    with pytest.raises(errors.WrongSigner):
        adjudicator.prove_two_prices(w.outsider.transactor, w.broker.address, good, (second[0], good[1]))
    with pytest.raises(errors.MalleableSignature):
        adjudicator.prove_two_prices(w.outsider.transactor, w.broker.address, good, (second[0], malleate(second[1])))
    assert adjudicator.slashed_at(w.broker.address) is None
    assert adjudicator.slashed_at(w.outsider.address) is None


@pytest.mark.parametrize("other", ["chain id", "adjudicator"])
def test_prices_signed_under_another_domain_are_refused(w: World, other: str) -> None:
    domain = w.sb.domain
    foreign = (
        Domain(chain_id=domain.chain_id + 1, verifying_contract=domain.verifying_contract)
        if other == "chain id"
        else Domain(chain_id=domain.chain_id, verifying_contract=w.sb.token.address)
    )
    first, second = signed_price(w, 1, 5, 2_000 * USD), signed_price(w, 1, 5, 2_001 * USD)
    replayed = (second[0], w.broker.signer.sign(foreign, second[0]))
    with pytest.raises(errors.WrongSigner) as exc:
        w.sb.adjudicator.prove_two_prices(w.outsider.transactor, w.broker.address, first, replayed)
    assert same(exc.value.arguments["expected"], w.broker.address)
    assert not same(exc.value.arguments["recovered"], w.broker.address)
    assert w.sb.adjudicator.slashed_at(w.broker.address) is None
    prove_two_prices(w, first, second)  # under the adjudicator's own domain, they slash


# --------------------------------------------------------------------------- after slashing


def test_conclude_slashed_pays_the_trader_an_open_or_disputed_channel(w: World) -> None:
    """An open channel, a disputed one before its deadline, and a disputed one whose state has a
    position in a market with a dead feed: all conclude at once, without an oracle."""
    open_params, _ = position_channel(w)  # its co-signed state with a position is never registered
    disputed = open_channel(w)
    dispute(w, disputed, plain_state(disputed, 3, TD, BD, trader_available=1_000 * USD), by=w.broker)
    dead = Market(MarketId(7), dead_feed(w), OUNCE, DEFAULT_RISK_FACTOR, DEFAULT_MAX_PRICE_AGE)
    dead_params = w.sb.channel_params(w.trader, w.broker, (dead,))
    fund(w, dead_params)
    dead_state = position_state(dead_params, 4, TD, BD, (-OUNCE,), -2_000 * USD)
    deadline = dispute(w, dead_params, dead_state, by=w.broker)

    slash(w)
    for params in (open_params, disputed, dead_params):
        trader_takes_all(w, params, partial(conclude_slashed, w, params))
    assert w.chain.now() < deadline


def test_a_deposit_after_slashing_goes_to_the_trader(w: World) -> None:
    """Deposits are not refused once the broker is slashed (that would cost every deposit a
    storage read), but whatever lands in such a channel, from either side, goes to the trader."""
    params = open_channel(w)
    slash(w)
    fund(w, params, 100 * USD, 250 * USD)
    trader_takes_all(w, params, partial(conclude_slashed, w, params), holdings=HOLDINGS + 350 * USD)


def test_every_conclusion_of_a_slashed_brokers_channel_pays_the_trader(w: World) -> None:
    """close with a final state, conclude of a settled registration, concludeWithState of a
    state with positions in a market whose feed never answered and an open order with evidence:
    each pays everything to the trader."""
    final_params = open_channel(w)
    final = plain_state(final_params, 9, TD, BD, trader_available=TD // 2, final=True)
    settled_params = open_channel(w)
    settled_deadline = dispute(w, settled_params, plain_state(settled_params, 2, TD, BD, 2_000 * USD), by=w.broker)

    dead = Market(MarketId(7), dead_feed(w), OUNCE, DEFAULT_RISK_FACTOR, DEFAULT_MAX_PRICE_AGE)
    dead_params = w.sb.channel_params(w.trader, w.broker, (dead,))
    fund(w, dead_params)
    buy = open_order(w, make_order(w, dead_params, 1, market=7))
    with_state = order_state(dead_params, 5, [buy], positions=(-OUNCE,), cost=-2_000 * USD)
    deadline = dispute(w, dead_params, with_state, by=w.broker)
    submit(w, dead_params, with_state, [signed_price(w, 7, 1, 1_000 * USD)])

    at(w, max(deadline, settled_deadline))
    # Unslashed, the position cannot be valued before the oracle fallback delay.
    with pytest.raises(errors.OraclePriceUnavailable):
        w.sb.adjudicator.conclude(w.outsider.transactor, dead_params, with_state)

    slash(w)
    close = partial(w.sb.adjudicator.close, fast(w.broker), final_params, w.sign(final))
    trader_takes_all(w, final_params, close, event="Closed")
    for params, state in ((settled_params, None), (dead_params, with_state)):
        trader_takes_all(w, params, partial(w.sb.adjudicator.conclude, fast(w.outsider), params, state))


def test_conclude_slashed_is_refused_for_an_unslashed_broker_or_a_concluded_channel(w: World) -> None:
    params = open_channel(w)
    with pytest.raises(errors.BrokerNotSlashed) as exc:
        w.sb.adjudicator.conclude_slashed(w.trader.transactor, params)
    assert same(exc.value.arguments["broker"], w.broker.address)
    slash(w)
    trader_takes_all(w, params, lambda: conclude_slashed(w, params, by=w.trader))
    with pytest.raises(errors.ChannelConcluded) as exc:
        w.sb.adjudicator.conclude_slashed(w.trader.transactor, params)
    assert exc.value.arguments == {"channelId": params.channel_id}


def test_channels_of_other_brokers_are_unaffected(w: World) -> None:
    """w.outsider acts as another broker: its channel with the same trader concludes by the usual
    rule after w.broker is slashed."""
    other = w.sb.channel_params(w.trader, w.outsider, ())
    w.sb.adjudicator.deposit(fast(w.trader), other, w.trader.address, TD)
    w.sb.adjudicator.deposit(fast(w.outsider), other, w.outsider.address, BD)
    state = order_state(other, 2, [])
    slash(w)
    with pytest.raises(errors.BrokerNotSlashed):
        w.sb.adjudicator.conclude_slashed(w.trader.transactor, other)
    signed = CoSignedState(
        state,
        w.trader.signer.sign_digest(w.sb.domain.state_digest(state)),
        w.outsider.signer.sign_digest(w.sb.domain.state_digest(state)),
    )
    receipt = w.sb.adjudicator.challenge(fast(w.trader), other, signed)
    at(w, int(one(w, receipt, "Challenged")["deadline"]))
    before = (w.balance(w.trader), w.balance(w.outsider))
    concluded = one(w, w.sb.adjudicator.conclude(fast(w.broker), other), "Concluded")
    assert (concluded["toTrader"], concluded["toBroker"]) == (TD, BD)
    assert (w.balance(w.trader) - before[0], w.balance(w.outsider) - before[1]) == (TD, BD)
    assert w.sb.adjudicator.slashed_at(w.outsider.address) is None


def test_a_slashed_broker_loses_every_channel_whatever_its_stage(w: World) -> None:
    """One broker, channels in different stages, then it signs two prices for one batch: every
    channel ends with the broker receiving nothing and the trader receiving all of the channel's
    holdings, and the adjudicator holds nothing for them any more."""
    adjudicator = w.sb.adjudicator
    deposits = {"positions": (300 * USD, 7_000 * USD), "evidence": (TD, BD), "orders": (2_000 * USD, 500 * USD)}
    # Open, with positions (in a co-signed state nobody registered).
    with_positions = w.params(2)
    fund(w, with_positions, *deposits["positions"])
    w.sign(position_state(with_positions, 5, *deposits["positions"], (OUNCE // 10, -1_000), 100 * USD))
    # Disputed by the broker, with evidence for the trader's open buy.
    with_evidence = open_channel(w)
    registered = order_state(with_evidence, 4, [open_order(w, make_order(w, with_evidence, 1))])
    dispute(w, with_evidence, registered, by=w.broker)
    submit(w, with_evidence, registered, [signed_price(w, 1, 1, 1_500 * USD)])
    # Open, with orders; the trader will dispute it after the proof.
    with_orders = w.params(1)
    fund(w, with_orders, *deposits["orders"])
    sell = open_order(w, make_order(w, with_orders, 1, is_buy=False))
    orders_state = order_state(with_orders, 6, [sell], deposits=deposits["orders"])
    # The trader holds a final state (more than its deposit: it won).
    with_final = open_channel(w)
    final = replace(order_state(with_final, 11, []), is_final=True)

    holdings = {name: sum(d) for name, d in deposits.items()} | {"final": HOLDINGS}
    broker_before, trader_before, held_before = w.balance(w.broker), w.balance(w.trader), adjudicator_balance(w)

    slash(w)
    trader_takes_all(w, with_positions, lambda: conclude_slashed(w, with_positions), holdings=holdings["positions"])
    trader_takes_all(w, with_evidence, lambda: conclude_slashed(w, with_evidence, by=w.trader))
    deadline = dispute(w, with_orders, orders_state, by=w.trader)
    at(w, deadline)
    trader_takes_all(
        w,
        with_orders,
        lambda: adjudicator.conclude(fast(w.outsider), with_orders, orders_state),
        holdings=holdings["orders"],
    )
    trader_takes_all(
        w, with_final, lambda: adjudicator.close(fast(w.trader), with_final, w.sign(final)), event="Closed"
    )

    total = sum(holdings.values())
    assert w.balance(w.broker) == broker_before
    assert w.balance(w.trader) == trader_before + total
    assert adjudicator_balance(w) == held_before - total
    assert adjudicator.withdrawable(w.sb.token.address, w.broker.address) == 0
    for params in (with_positions, with_evidence, with_orders, with_final):
        status = adjudicator.status(params.channel_id)
        assert (status.stage, status.trader_deposit, status.broker_deposit) == (Stage.CONCLUDED, 0, 0)


# --------------------------------------------------------------------------- left-out orders


def left_out_setup(w: World) -> tuple[ChannelParams, OpenOrder, Callable[..., ChannelState]]:
    """A gold and BTC channel; the trader's gold buy at $2,000 eligible from batch 3; states that
    reflect gold batch 5 (BTC batch 5)."""
    params = open_channel(w, markets=2)
    order = open_order(w, make_order(w, params, 1, limit=2_000 * USD), first_batch=3)

    def state(version: int, oo: OpenOrder = order, last: int = 5) -> ChannelState:
        return order_state(params, version, [oo], last_batches=(last, 5))

    return params, order, state


def prove(
    w: World, params: ChannelParams, signed: CoSignedState, index: int, price: SignedPrice, by: Party | None = None
) -> TxReceipt:
    return w.sb.adjudicator.prove_left_out_order((by or w.trader).transactor, params, signed, index, price)


@pytest.mark.parametrize("stage", ["open", "disputed"])
def test_a_left_out_order_gives_the_trader_the_channel(w: World, stage: str) -> None:
    params, _, state = left_out_setup(w)
    proof = w.sign(state(4))
    if stage == "disputed":
        dispute(w, params, state(6, last=6), by=w.broker)
    price = signed_price(w, 1, 4, 1_990 * USD)  # batch 4: the order was eligible and better
    receipt = trader_takes_all(
        w, params, lambda: w.sb.adjudicator.prove_left_out_order(fast(w.outsider), params, proof, 0, price)
    )
    event = one(w, receipt, "LeftOutOrderProven")
    assert event["channelId"] == params.channel_id
    assert (event["orderIndex"], event["market"], event["batch"], event["price"]) == (0, 1, 4, 1_990 * USD)
    assert log_index(w, receipt, "LeftOutOrderProven") < log_index(w, receipt, "Concluded")


def test_the_boundaries_of_a_left_out_order_are_accepted(w: World) -> None:
    """The batch the state reflects last (b == lastBatch), the order's first batch (b ==
    firstBatch), one unit better than the limit, the last second before expiry."""
    params, order, state = left_out_setup(w)
    expiration = expiring_in(w, 2)
    expiring = open_order(w, replace(order.order, expiration=expiration, nonce=order.order.nonce + 1), first_batch=5)
    proof = w.sign(state(7, expiring))
    price = signed_price(w, 1, 5, 2_000 * USD - 1)
    at(w, expiration * HOUR - 1)
    receipt = trader_takes_all(
        w, params, lambda: w.sb.adjudicator.prove_left_out_order(fast(w.trader), params, proof, 0, price)
    )
    assert block_time(w, receipt) == expiration * HOUR - 1


def test_wrong_left_out_proofs_are_refused_with_their_reason(w: World) -> None:
    params, order, state = left_out_setup(w)
    crossing = signed_price(w, 1, 4, 1_990 * USD)
    filled = replace(order, filled=order.order.amount_synthetic)
    expired = open_order(w, replace(order.order, expiration=ExpirationHours(w.chain.now() // HOUR)), first_batch=3)
    assert expired.order.expiration * HOUR <= w.chain.now()
    cases: list[tuple[str, ChannelState, SignedPrice, int]] = [
        ("another market", state(1), signed_price(w, 2, 4, 50_000 * USD), 1),
        ("the state does not reflect the batch", state(2, last=3), crossing, 2),
        ("not eligible in the batch", state(3), signed_price(w, 1, 2, 1_990 * USD), 3),
        ("already filled", state(4, filled), crossing, 4),
        ("at the price", state(5), signed_price(w, 1, 4, 2_000 * USD), 5),
        ("worse than the price", state(6), signed_price(w, 1, 4, 2_010 * USD), 5),
        ("expired", state(7, expired), crossing, 6),
    ]
    for what, proof_state, price, reason in cases:
        with pytest.raises(errors.OrderNotLeftOut) as exc:
            prove(w, params, w.sign(proof_state), 0, price)
        assert exc.value.arguments == {"reason": reason}, what
    assert w.sb.adjudicator.status(params.channel_id).stage == Stage.OPEN
    prove(w, params, w.sign(state(8)), 0, crossing)  # the same channel with a sound proof


def test_malformed_left_out_proofs_are_refused(w: World) -> None:
    params, order, state = left_out_setup(w)
    crossing = signed_price(w, 1, 4, 1_990 * USD)
    proof = w.sign(state(1))

    with pytest.raises(errors.OrderIndexOutOfRange) as exc:
        prove(w, params, proof, 1, crossing)
    assert exc.value.arguments == {"orderIndex": 1, "openOrders": 1}

    stray = open_order(w, make_order(w, params, 2, market=99), first_batch=3)
    with pytest.raises(errors.UnknownMarket) as exc:
        prove(
            w, params, w.sign(order_state(params, 2, [order, stray], last_batches=(5, 5))), 1, signed_price(w, 99, 4, 1)
        )
    assert exc.value.arguments == {"market": 99}

    with pytest.raises(errors.WrongSigner) as exc:
        prove(w, params, proof, 0, signed_price(w, 1, 4, 1_990 * USD, signer=w.trader))
    assert same(exc.value.arguments["recovered"], w.trader.address)

    digest = w.sb.domain.state_digest(proof.state)
    for forged, expected, recovered in (
        (replace(proof, broker_signature=w.outsider.signer.sign_digest(digest)), w.broker, w.outsider),
        (replace(proof, trader_signature=w.outsider.signer.sign_digest(digest)), w.trader, w.outsider),
        (replace(proof, trader_signature=proof.broker_signature), w.trader, w.broker),
    ):
        with pytest.raises(errors.WrongSigner) as exc:
            prove(w, params, forged, 0, crossing)
        assert same(exc.value.arguments["expected"], expected.address)
        assert same(exc.value.arguments["recovered"], recovered.address)

    trader_takes_all(
        w, params, lambda: w.sb.adjudicator.prove_left_out_order(fast(w.trader), params, proof, 0, crossing)
    )
    with pytest.raises(errors.ChannelConcluded) as exc:
        prove(w, params, proof, 0, crossing)
    assert exc.value.arguments == {"channelId": params.channel_id}


def test_left_out_orders_finds_exactly_what_the_adjudicator_accepts(w: World) -> None:
    """The agent-side detection (offchain.engine.slashing.left_out_orders, over a store's
    batch_prices_between) against proveLeftOutOrder, run as a call for every (order, price)
    pair: every pair it reports is accepted, and for each order it reports the earliest batch
    the adjudicator accepts."""
    params = open_channel(w, markets=2)
    expiration = expiring_in(w, 0)
    orders = [
        open_order(w, make_order(w, params, 1, limit=2_000 * USD), first_batch=2),  # crossed by batch 3
        open_order(w, make_order(w, params, 2, is_buy=False, limit=2_100 * USD), first_batch=1),  # by batch 4
        open_order(w, make_order(w, params, 3, limit=1_800 * USD), first_batch=1),  # never
        open_order(w, make_order(w, params, 4, limit=2_500 * USD, expiration=expiration), first_batch=1),  # expired
        open_order(w, make_order(w, params, 5, size=10), filled=10, first_batch=1),  # filled
        open_order(w, make_order(w, params, 6, market=2, size=100, limit=61_000 * USD), first_batch=6),  # too late
    ]
    state = order_state(params, 3, orders, last_batches=(5, 5))
    proof = w.sign(state)
    store = MemoryStore()
    gold = [(1, 2_050 * USD), (2, 2_000 * USD), (3, 1_999 * USD), (4, 2_150 * USD), (5, 1_900 * USD), (6, 1 * USD)]
    signed: dict[tuple[int, int], SignedPrice] = {}
    for batch, value in gold:
        signed[(1, batch)] = signed_price(w, 1, batch, value)
    signed[(2, 5)] = signed_price(w, 2, 5, 1 * USD)
    for price, signature in signed.values():
        store.put_batch_price(StoredBatchPrice(w.broker.address, price, signature))

    def between(market: int, first: int, last: int) -> list[StoredBatchPrice]:
        return store.batch_prices_between(w.broker.address, market, first, last)

    now = next_block_time(w)
    found = {f.index: f.price.price for f in left_out_orders(params, state, between, now)}
    assert {i: (p.market, p.batch, p.price) for i, p in found.items()} == {
        0: (1, 3, 1_999 * USD),
        1: (1, 4, 2_150 * USD),
    }

    accepted: dict[int, list[int]] = {}
    for index in range(len(orders)):
        for (_, batch), price in signed.items():
            fn = w.sb.adjudicator.contract.functions.proveLeftOutOrder(
                params.as_abi(),
                state.as_abi(),
                proof.trader_signature,
                proof.broker_signature,
                index,
                price[0].as_abi(),
                price[1],
            )
            try:
                call_view(fn)
            except errors.OrderNotLeftOut:
                continue
            accepted.setdefault(index, []).append(batch)
    assert {i: min(batches) for i, batches in accepted.items()} == {i: p.batch for i, p in found.items()}
    assert accepted == {0: [3, 5], 1: [4]}
