"""Property: the adjudicator pays exactly what the pure rule (offchain.settlement.payouts) says.

For random states (balances consistent with the deposits or not, positions in 1-3 markets,
deposits above or below what the state accounts for) and random fresh oracle answers, a dispute
is challenged, waited out and concluded; the Concluded event must equal the pure rule, the payouts
must sum to the channel's holdings, each lie in [0, holdings], and the token balances must move
by exactly those amounts. Each example rolls the chain back itself.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from offchain.chain.client import RegistrationKind, Stage
from offchain.model import Balances, ChannelParams, ChannelState, Outcome
from offchain.sandbox import USD
from offchain.settlement import OraclePrice, payouts
from offchain.types import BatchNumber, SyntheticAmount, TokenAmount, Version
from tests.conftest import BTC, GOLD, World

HOUR = 3600
TOKEN_DECIMALS = 6
OUNCE = 10**6  # one whole synthetic unit (market resolution 10**6)
MAX_VERSION = 2**48 - 1
PROPERTY_EXAMPLES = int(os.environ.get("TCHAN_PROPERTY_EXAMPLES", "12"))
"""Examples per contract property test: a fast sample in the normal suite, more with
``make invariants`` (which sets TCHAN_PROPERTY_EXAMPLES)."""
PROPERTY_SETTINGS = settings(
    max_examples=PROPERTY_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@dataclass(frozen=True)
class Scenario:
    markets: int
    version: int
    accounted: tuple[int, int]  # deposits the state accounts for (trader, broker)
    deposits: tuple[int, int]  # what actually arrives on-chain (trader, broker)
    trader_available: int
    trader_locked: int
    broker_available: int
    broker_locked: int
    positions: tuple[int, ...]
    fees: tuple[int, ...]
    gold: int  # feed answers, 8 decimals
    btc: int
    challenger: str


@st.composite
def funding(draw: st.DrawFn, accounted: tuple[int, int]) -> tuple[int, int]:
    """On-chain deposits: exactly what the state accounts for, more (unaccounted deposits, which go
    back to their participant), or less for one party (underfunded: every deposit goes back)."""
    kind = draw(st.sampled_from(["exact", "exact", "unaccounted", "underfunded"]))
    if kind == "unaccounted":
        extra = (draw(st.integers(0, 3_000 * USD)), draw(st.integers(1, 3_000 * USD)))
        if draw(st.booleans()):
            extra = (extra[1], extra[0])
        return (accounted[0] + extra[0], accounted[1] + extra[1])
    short = [i for i in (0, 1) if accounted[i] > 0]
    if kind == "underfunded" and short:
        i = draw(st.sampled_from(short))
        deposits = list(accounted)
        deposits[i] = draw(st.integers(0, accounted[i] - 1))
        deposits[1 - i] += draw(st.one_of(st.just(0), st.integers(0, 3_000 * USD)))
        return (deposits[0], deposits[1])
    return accounted


@st.composite
def scenarios(draw: st.DrawFn, with_positions: bool) -> Scenario:
    markets = draw(st.integers(1, 3)) if with_positions else draw(st.integers(0, 3))
    accounted = (draw(st.integers(0, 20_000 * USD)), draw(st.integers(0, 20_000 * USD)))
    deposits = draw(funding(accounted))
    total = sum(accounted)
    scale = max(total, USD)
    trader_locked = draw(st.one_of(st.just(0), st.integers(0, total)))
    if draw(st.integers(0, 3)):  # mostly a trader's collateral inside the channel's total
        trader_available = draw(st.integers(0, total)) - trader_locked
    else:
        trader_available = draw(st.integers(-2 * scale, 2 * scale))
    broker_locked = draw(st.one_of(st.just(0), st.integers(0, scale)))
    if draw(st.booleans()):  # balances that sum to the accounted deposits, as agents sign them
        broker_available = total - trader_available - trader_locked - broker_locked
    else:
        broker_available = draw(st.integers(-2 * scale, 2 * scale))
    if with_positions:
        limits = [2 * OUNCE, OUNCE // 20, 2 * OUNCE]  # gold, BTC, gold (market i has id i + 1)
        positions = [draw(st.integers(-limits[i], limits[i])) for i in range(markets)]
        if not any(positions):
            index = draw(st.integers(0, markets - 1))
            positions[index] = draw(st.integers(1, limits[index])) * draw(st.sampled_from([1, -1]))
    else:
        positions = [0] * markets
    return Scenario(
        markets=markets,
        version=draw(st.one_of(st.integers(0, 1_000), st.just(MAX_VERSION))),
        accounted=accounted,
        deposits=deposits,
        trader_available=trader_available,
        trader_locked=trader_locked,
        broker_available=broker_available,
        broker_locked=broker_locked,
        positions=tuple(positions),
        fees=tuple(draw(st.integers(0, 100 * USD)) for _ in range(markets)),
        gold=draw(st.integers(100 * 10**8, 5_000 * 10**8)),
        btc=draw(st.integers(1_000 * 10**8, 150_000 * 10**8)),
        challenger=draw(st.sampled_from(["trader", "broker"])),
    )


def build_state(params: ChannelParams, sc: Scenario) -> ChannelState:
    return ChannelState(
        channel_id=params.channel_id,
        version=Version(sc.version),
        balances=Balances(
            trader_available=TokenAmount(sc.trader_available),
            trader_locked=TokenAmount(sc.trader_locked),
            broker_available=TokenAmount(sc.broker_available),
            broker_locked=TokenAmount(sc.broker_locked),
            trader_deposit=TokenAmount(sc.accounted[0]),
            broker_deposit=TokenAmount(sc.accounted[1]),
        ),
        open_orders=(),
        outcomes=tuple(
            Outcome(SyntheticAmount(p), TokenAmount(f), BatchNumber(1 if p else 0))
            for p, f in zip(sc.positions, sc.fees, strict=True)
        ),
    )


def describe(sc: Scenario, to_trader: int) -> str:
    """The case an example falls in (shown by pytest --hypothesis-show-statistics)."""
    if sc.deposits[0] < sc.accounted[0] or sc.deposits[1] < sc.accounted[1]:
        return "underfunded"
    share = to_trader - (sc.deposits[0] - sc.accounted[0])
    extra = "with unaccounted deposits" if sc.deposits != sc.accounted else "exactly funded"
    if share == 0:
        return f"trader payout clamped at 0, {extra}"
    if share == sum(sc.accounted):
        return f"trader payout clamped at the total, {extra}"
    return f"trader payout inside (0, total), {extra}"


def in_fresh_thread(body: Callable[[], None]) -> None:
    """Run ``body`` on a new thread and re-raise what it raised.

    Speed only: under Hypothesis's deep call stack, CPython 3.11 kept allocating and freeing a
    frame-stack chunk (an mmap/munmap pair) on nearly every py-evm opcode, doubling the run time.
    A fresh thread starts with a shallow stack of its own."""
    raised: list[BaseException] = []

    def target() -> None:
        try:
            body()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller below
            raised.append(exc)

    thread = threading.Thread(target=target, name="payout-example")
    thread.start()
    thread.join()
    if raised:
        raise raised[0]


def run_dispute(w: World, sc: Scenario, labels: list[str]) -> None:
    """Fund, challenge, wait for the deadline, push fresh prices, conclude, check."""
    adjudicator = w.sb.adjudicator
    params = w.params(sc.markets, challenge_duration=HOUR)
    state = build_state(params, sc)
    w.fund(params, *sc.deposits)
    challenger = w.trader if sc.challenger == "trader" else w.broker
    receipt = adjudicator.challenge(challenger.transactor, params, w.sign(state))
    (challenged,) = adjudicator.events(receipt, "Challenged")
    w.chain.increase_time(int(challenged["deadline"]) - w.chain.now())

    answers = {GOLD: sc.gold, BTC: sc.btc}
    prices: dict[int, OraclePrice] = {}
    pushed: set[str] = set()
    for market, position in zip(params.markets, sc.positions, strict=True):
        feed = GOLD if market.id % 2 == 1 else BTC
        prices[market.id] = OraclePrice(answers[feed], 8)
        if position and feed not in pushed:
            w.sb.push_price(feed, answers[feed])
            pushed.add(feed)

    expected = payouts(params, state, sc.deposits[0], sc.deposits[1], prices, TOKEN_DECIMALS)
    holdings = sum(sc.deposits)
    status = adjudicator.status(params.channel_id)
    assert status.registered_version == sc.version
    if any(sc.positions):
        assert status.kind == RegistrationKind.FINGERPRINT
    else:
        assert status.kind == (
            RegistrationKind.SETTLED_UNDERFUNDED if expected.underfunded else RegistrationKind.SETTLED
        )
        assert status.registered_data == expected.to_trader

    before = (w.balance(w.trader), w.balance(w.broker), w.sb.token.balance_of(adjudicator.address))
    receipt = adjudicator.conclude(w.outsider.transactor, params, state)
    (concluded,) = adjudicator.events(receipt, "Concluded")
    to_trader, to_broker = int(concluded["toTrader"]), int(concluded["toBroker"])

    assert (to_trader, to_broker, concluded["underfunded"]) == (
        expected.to_trader,
        expected.to_broker,
        expected.underfunded,
    )
    assert to_trader + to_broker == holdings
    assert 0 <= to_trader <= holdings
    assert 0 <= to_broker <= holdings
    if expected.underfunded:
        assert (to_trader, to_broker) == sc.deposits
    assert w.balance(w.trader) - before[0] == to_trader
    assert w.balance(w.broker) - before[1] == to_broker
    assert before[2] - w.sb.token.balance_of(adjudicator.address) == holdings
    assert adjudicator.events(receipt, "OracleFallbackUsed") == []
    after = adjudicator.status(params.channel_id)
    assert (after.stage, after.trader_deposit, after.broker_deposit) == (Stage.CONCLUDED, 0, 0)
    labels.append(describe(sc, to_trader))


def run_example(w: World, sc: Scenario) -> None:
    """One example on a rolled-back chain, labelled for hypothesis's statistics."""
    labels: list[str] = []
    snapshot = w.chain.snapshot()
    try:
        in_fresh_thread(lambda: run_dispute(w, sc, labels))
    finally:
        w.chain.revert(snapshot)
    event(labels[0])


@PROPERTY_SETTINGS
@given(sc=scenarios(with_positions=True))
def test_positions_conclude_exactly_as_the_pure_rule(w: World, sc: Scenario) -> None:
    run_example(w, sc)


@PROPERTY_SETTINGS
@given(sc=scenarios(with_positions=False))
def test_settled_states_conclude_exactly_as_the_pure_rule(w: World, sc: Scenario) -> None:
    run_example(w, sc)
