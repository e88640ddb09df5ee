"""The watchtower on the in-process chain, driven cycle by cycle with ``poll()`` while the test
moves the chain's clock; its follow loop under node failures; its wire messages, over a real
loopback WebSocket too, with WatchtowerClient.

No trader code runs in the dispute tests: the counterparty (the broker's key) acts on-chain and
only the watchtower answers.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from web3 import EthereumTesterProvider, Web3
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from offchain.agents.common import on_chain
from offchain.agents.watchtower import (
    DONE,
    Watchtower,
    WatchtowerClient,
    WatchtowerConfig,
    WatchtowerTimeout,
    fingerprint,
)
from offchain.chain.client import RegistrationKind, Stage
from offchain.chain.connection import Chain
from offchain.eip712 import Domain
from offchain.engine.rules import lock_needed
from offchain.localnet import free_port
from offchain.model import BatchPrice, ChannelParams, ChannelState, OpenOrder, Order, Outcome
from offchain.protocol import messages as m
from offchain.protocol import watch as wm
from offchain.sandbox import USD
from offchain.settlement import Evidence, OraclePrice, payouts
from offchain.signing import CoSignedState, LocalSigner, malleate, verify
from offchain.store import MemoryStore, SQLiteStore, Store
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
    Version,
)
from tests.conftest import BROKER_DEPOSIT, GOLD, TRADER_DEPOSIT, World
from tests.contracts.test_withdraw import blacklist_channel
from tests.protocol.conftest import eventually, run

GOLD_ID = 1  # the market id of the World's gold market
HOUR = 3600
TOTAL = TRADER_DEPOSIT + BROKER_DEPOSIT
DOCS = Path(__file__).resolve().parents[2] / "docs" / "watchtower.md"


# --------------------------------------------------------------------------- helpers


def tower(w: World, store: Store | None = None, **config: Any) -> Watchtower:
    settings: dict[str, Any] = {"port": 0, "poll_seconds": 0.02, "max_backoff_seconds": 0.1}
    settings.update(config)
    return Watchtower(
        w.watchtower.signer,
        store if store is not None else MemoryStore(),
        w.chain,
        w.sb.adjudicator.address,
        WatchtowerConfig(**settings),
    )


def kinds(wt: Watchtower) -> list[str]:
    return [kind for kind, _ in wt.events]


def status(w: World, params: ChannelParams) -> Any:
    return w.sb.adjudicator.status(params.channel_id)


def to_time(w: World, timestamp: int) -> None:
    """Mine a block at ``timestamp`` (the next transaction lands one second later)."""
    now = w.chain.now()
    assert timestamp > now, (timestamp, now)
    w.chain.increase_time(timestamp - now)


def with_open_buy(
    w: World, params: ChannelParams, version: int, limit: int = 2_000 * USD, last_batch: int = 0
) -> ChannelState:
    """A state of a one-market channel with one open buy of 0.1 gold at <= ``limit`` per oz
    (max fee $1), eligible from batch 1."""
    order = Order(
        channel_id=params.channel_id,
        trader=params.trader,
        collateral=params.token,
        market=params.markets[0].id,
        is_buy=True,
        amount_synthetic=SyntheticAmount(100_000),
        amount_collateral=TokenAmount(limit // 10),
        max_fee=TokenAmount(USD),
        nonce=Nonce(version),
        expiration=ExpirationHours(1_000_000),
    )
    signature = w.trader.signer.sign(w.sb.domain, order)
    lock = lock_needed(order, 0)
    base = w.plain(params, version, TRADER_DEPOSIT - lock)
    return replace(
        base,
        balances=replace(base.balances, trader_locked=lock),
        open_orders=(OpenOrder(order, signature, SyntheticAmount(0), BatchNumber(1)),),
        outcomes=(Outcome(SyntheticAmount(0), TokenAmount(0), BatchNumber(last_batch)),),
    )


def signed_price(
    w: World, market: int, batch: int, price: int, signer: LocalSigner | None = None
) -> tuple[BatchPrice, Signature]:
    batch_price = BatchPrice(MarketId(market), BatchNumber(batch), Price(price))
    return batch_price, (signer or w.broker.signer).sign(w.sb.domain, batch_price)


def fresh_oracle(w: World) -> OraclePrice:
    """Push the gold price again (positions are valued at a fresh price) and return it."""
    w.sb.push_price(GOLD, 2_000 * 10**8)
    feed = w.sb.feeds[GOLD]
    return OraclePrice(feed.latest().answer, feed.decimals())


def store_snapshot(store: Store) -> Any:
    channels = [(r.channel_id, r.params, r.meta) for r in store.channels()]
    latest = [store.latest_state(r.channel_id) for r in store.channels()]
    prices = {b: store.latest_batch_prices(b) for b in {r.params.broker for r in store.channels()}}
    return channels, latest, prices


# --------------------------------------------------------------------------- disputes


def test_stale_challenge_is_refuted_while_the_trader_is_offline_and_concluded(w: World) -> None:
    params = w.open_channel()
    stale = w.sign(w.plain(params, 1, TRADER_DEPOSIT - 400 * USD))
    newest = w.sign(w.plain(params, 3, TRADER_DEPOSIT + 300 * USD))
    wt = tower(w)
    assert wt.guard(params, newest) == 3
    wt.poll()
    assert status(w, params).stage == Stage.OPEN and "refuted" not in kinds(wt)

    w.sb.adjudicator.challenge(w.broker.transactor, params, stale)
    wt.poll()
    on_chain_now = status(w, params)
    assert on_chain_now.registered_version == 3 and on_chain_now.stage == Stage.DISPUTED
    assert ("refuted", f"0x{params.channel_id.hex()} with version 3") in wt.events
    assert ("seen", f"Challenged 0x{params.channel_id.hex()} version 1") in wt.events

    to_time(w, on_chain_now.deadline - 5)
    wt.poll()
    assert status(w, params).stage == Stage.DISPUTED  # not before the deadline
    trader_before, broker_before = w.balance(w.trader), w.balance(w.broker)
    to_time(w, on_chain_now.deadline)
    wt.poll()
    assert status(w, params).stage == Stage.CONCLUDED
    assert w.balance(w.trader) - trader_before == TRADER_DEPOSIT + 300 * USD
    assert w.balance(w.broker) - broker_before == BROKER_DEPOSIT - 300 * USD
    assert "concluded" in kinds(wt) and kinds(wt)[-1] == "done"
    assert wt.guarded() == {}
    record = wt.store.channel(params.channel_id)
    assert record is not None and record.meta["status"] == DONE


def test_a_challenge_with_the_newest_state_is_left_alone_and_concluded(w: World) -> None:
    params = w.open_channel()
    newest = w.sign(w.plain(params, 4, TRADER_DEPOSIT - 100 * USD))
    wt = tower(w)
    wt.guard(params, newest)
    w.sb.adjudicator.challenge(w.broker.transactor, params, newest)
    wt.poll()
    wt.poll()
    assert "refuted" not in kinds(wt) and "closed" not in kinds(wt)
    deadline = status(w, params).deadline
    to_time(w, deadline - 1)  # the conclusion lands in the next block, at the deadline
    trader_before = w.balance(w.trader)
    wt.poll()
    assert status(w, params).stage == Stage.CONCLUDED
    assert w.balance(w.trader) - trader_before == TRADER_DEPOSIT - 100 * USD


def test_evidence_makes_the_earliest_known_crossing_count_and_the_order_fills(w: World) -> None:
    params = w.open_channel(markets=1)
    state = with_open_buy(w, params, 2)  # buy 0.1 oz at <= $2,000
    registered = w.sign(state)
    wt = tower(w)
    wt.guard(params, registered)
    at_limit = signed_price(w, GOLD_ID, 1, 2_000 * USD)  # exactly at the limit: no crossing
    earliest = signed_price(w, GOLD_ID, 2, 1_990 * USD)
    later = signed_price(w, GOLD_ID, 3, 1_995 * USD)
    for price, signature in (at_limit, later, earliest):
        assert wt.add_price(w.broker.address, price, signature) is True
    assert wt.add_price(w.broker.address, *earliest) is False  # already stored

    # The broker challenges with the newest state and submits the later, dearer crossing.
    w.sb.adjudicator.challenge(w.broker.transactor, params, registered)
    w.sb.adjudicator.submit_evidence(w.broker.transactor, params, state, [later])
    assert w.sb.adjudicator.evidence_of(params.channel_id, 2, 0) == Evidence(3, 1_995 * USD)
    wt.poll()
    assert w.sb.adjudicator.evidence_of(params.channel_id, 2, 0) == Evidence(2, 1_990 * USD)
    assert ("evidence", f"0x{params.channel_id.hex()} version 2: order 0 batch 2 price {1_990 * USD}") in wt.events
    wt.poll()  # nothing new: no second submission
    assert kinds(wt).count("evidence") == 1

    deadline = status(w, params).deadline
    to_time(w, deadline + 1)
    oracle = fresh_oracle(w)
    trader_before, broker_before = w.balance(w.trader), w.balance(w.broker)
    wt.poll()
    assert status(w, params).stage == Stage.CONCLUDED
    expected = payouts(
        params, state, TRADER_DEPOSIT, BROKER_DEPOSIT, {GOLD_ID: oracle}, 6, {0: Evidence(2, 1_990 * USD)}
    )
    assert w.balance(w.trader) - trader_before == expected.to_trader
    assert w.balance(w.broker) - broker_before == expected.to_broker
    # the fill at $1,990: 0.1 oz for $199 plus the fee the order allows ($0.995), worth $200
    assert expected.to_trader == TRADER_DEPOSIT - 199 * USD - 995_000 + 200 * USD


def test_counterparty_refutes_late_with_an_older_state_and_is_refuted_again(w: World) -> None:
    params = w.open_channel()
    v1, v3, v4, v5 = (w.sign(w.plain(params, v, TRADER_DEPOSIT + v * USD)) for v in (1, 3, 4, 5))
    wt = tower(w)
    wt.guard(params, v3)
    w.sb.adjudicator.challenge(w.broker.transactor, params, v1)
    t0 = status(w, params).dispute_start
    wt.poll()
    assert status(w, params).registered_version == 3

    # Near the end of the refutation phase the trader hands over v5; in the same moment the
    # broker refutes with v4 (newer than what is registered, older than v5).
    to_time(w, t0 + params.challenge_duration - 3)
    wt.guard(params, v5)
    w.sb.adjudicator.refute(w.broker.transactor, params, v4)
    assert status(w, params).registered_version == 4
    wt.poll()
    after = status(w, params)
    assert after.registered_version == 5
    refuted_at = after.deadline - params.challenge_duration
    assert refuted_at < t0 + params.challenge_duration  # within the phase

    to_time(w, after.deadline)
    trader_before = w.balance(w.trader)
    wt.poll()
    assert status(w, params).stage == Stage.CONCLUDED
    assert w.balance(w.trader) - trader_before == TRADER_DEPOSIT + 5 * USD


def test_refute_in_the_last_second_with_a_newer_state_gets_evidence_in_its_new_window(w: World) -> None:
    params = w.open_channel(markets=1)
    v1 = w.sign(w.plain(params, 1))
    v3 = w.sign(w.plain(params, 3))
    v4_state = with_open_buy(w, params, 4)  # the watchtower never saw v4
    v4 = w.sign(v4_state)
    wt = tower(w)
    wt.guard(params, v3)
    crossing = signed_price(w, GOLD_ID, 1, 1_980 * USD)
    wt.add_price(w.broker.address, *crossing)

    w.sb.adjudicator.challenge(w.broker.transactor, params, v1)
    t0 = status(w, params).dispute_start
    wt.poll()
    assert status(w, params).registered_version == 3

    # The broker refutes with v4 in the last second of the refutation phase.
    to_time(w, t0 + params.challenge_duration - 2)
    w.sb.adjudicator.refute(w.broker.transactor, params, v4)
    late = status(w, params)
    assert late.registered_version == 4 and late.kind == RegistrationKind.FINGERPRINT
    assert w.chain.now() == t0 + params.challenge_duration - 1
    wt.poll()
    # v4 is newer than anything the watchtower holds: it recovers v4 from the refute's input
    # and submits evidence for it within the new window.
    assert w.sb.adjudicator.evidence_of(params.channel_id, 4, 0) == Evidence(1, 1_980 * USD)
    assert kinds(wt).count("refuted") == 1  # only v3, at the start
    assert wt.guarded() == {params.channel_id: 4}
    stored = wt.store.latest_co_signed(params.channel_id)
    assert stored is not None and stored.state == v4_state
    assert fingerprint(wt.domain, v4_state) == late.registered_data

    to_time(w, late.deadline + 1)
    oracle = fresh_oracle(w)
    trader_before = w.balance(w.trader)
    wt.poll()
    assert status(w, params).stage == Stage.CONCLUDED
    expected = payouts(
        params, v4_state, TRADER_DEPOSIT, BROKER_DEPOSIT, {GOLD_ID: oracle}, 6, {0: Evidence(1, 1_980 * USD)}
    )
    assert w.balance(w.trader) - trader_before == expected.to_trader


def test_guarded_after_the_dispute_began_it_finds_the_registered_state_in_the_logs(w: World) -> None:
    params = w.open_channel(markets=1)
    registered_state = with_open_buy(w, params, 7)
    w.sb.adjudicator.challenge(w.broker.transactor, params, w.sign(registered_state))
    w.chain.increase_time(HOUR)
    wt = tower(w, block_range=3)  # a fresh store: its cursor starts after the challenge
    wt.guard(params, w.sign(w.plain(params, 5)))  # older than what is registered
    wt.add_price(w.broker.address, *signed_price(w, GOLD_ID, 2, 1_970 * USD))
    wt.poll()
    assert ("registered_state", f"0x{params.channel_id.hex()} version 7 recovered from its transaction") in wt.events
    assert w.sb.adjudicator.evidence_of(params.channel_id, 7, 0) == Evidence(2, 1_970 * USD)
    assert wt.guarded() == {params.channel_id: 7}
    to_time(w, status(w, params).deadline + 1)
    fresh_oracle(w)
    wt.poll()
    assert status(w, params).stage == Stage.CONCLUDED and "concluded" in kinds(wt)


def test_a_slashed_broker_s_channel_is_concluded_at_once(w: World) -> None:
    params = w.open_channel()
    wt = tower(w)
    wt.guard(params, w.sign(w.plain(params, 2, TRADER_DEPOSIT - 500 * USD)))
    wt.poll()
    first, second = signed_price(w, 1, 7, 2_000 * USD), signed_price(w, 1, 7, 2_001 * USD)
    w.sb.adjudicator.prove_two_prices(w.outsider.transactor, w.broker.address, first, second)
    trader_before = w.balance(w.trader)
    wt.poll()
    assert status(w, params).stage == Stage.CONCLUDED
    assert w.balance(w.trader) - trader_before == TOTAL
    assert ("broker_slashed", w.broker.address) in wt.events and "concluded_slashed" in kinds(wt)


def test_two_prices_for_one_batch_are_proven_and_the_channel_concluded(w: World) -> None:
    params = w.open_channel(markets=1)
    wt = tower(w)
    wt.guard(params, w.sign(w.plain(params, 2)))
    first, second = signed_price(w, GOLD_ID, 7, 2_000 * USD), signed_price(w, GOLD_ID, 7, 2_001 * USD)
    assert wt.add_price(w.broker.address, *first) and wt.add_price(w.broker.address, *second)
    assert "two_prices" in kinds(wt)
    trader_before = w.balance(w.trader)
    wt.poll()
    assert w.sb.adjudicator.slashed_at(w.broker.address) is not None
    assert status(w, params).stage == Stage.CONCLUDED
    assert w.balance(w.trader) - trader_before == TOTAL
    assert kinds(wt).index("proved_two_prices") < kinds(wt).index("concluded_slashed")


def test_a_state_that_leaves_a_crossed_order_out_is_proven_and_the_trader_takes_the_channel(w: World) -> None:
    """The newest state reflects batch 2 while holding a buy at <= $2,000 that batch 1's $1,990
    crossed: proven as soon as the watchtower holds both, whichever comes first."""
    params = w.open_channel(markets=1)
    wt = tower(w)
    wt.guard(params, w.sign(with_open_buy(w, params, 3, last_batch=2)))
    wt.poll()
    assert status(w, params).stage == Stage.OPEN and "proved_left_out_order" not in kinds(wt)
    at_the_limit = signed_price(w, GOLD_ID, 2, 2_000 * USD)  # exactly at the limit: may be rationed, no proof
    assert wt.add_price(w.broker.address, *at_the_limit)
    wt.poll()
    assert status(w, params).stage == Stage.OPEN and "proved_left_out_order" not in kinds(wt)
    assert wt.add_price(w.broker.address, *signed_price(w, GOLD_ID, 1, 1_990 * USD))
    trader_before = w.balance(w.trader)
    wt.poll()
    assert status(w, params).stage == Stage.CONCLUDED
    assert w.balance(w.trader) - trader_before == TOTAL
    assert ("proved_left_out_order", f"0x{params.channel_id.hex()}: order 3 crossed by batch 1") in wt.events
    assert "done" in kinds(wt)


def test_a_deferred_payout_is_withdrawn_once_the_token_pays(w: World) -> None:
    token, params = blacklist_channel(w)
    wt = tower(w, sweep_seconds=0)
    wt.guard(params, w.sign(w.plain(params, 2)))
    w.sb.deployer.transactor.transact(token.functions.setBlacklisted(w.trader.address, True))
    w.sb.adjudicator.challenge(w.broker.transactor, params, w.sign(w.plain(params, 1, 0)))
    wt.poll()
    to_time(w, status(w, params).deadline)
    wt.poll()
    assert status(w, params).stage == Stage.CONCLUDED
    assert w.sb.adjudicator.withdrawable(token.address, w.trader.address) == TRADER_DEPOSIT
    assert "withdraw_failed" in kinds(wt) and "done" not in kinds(wt)
    wt.poll()
    assert kinds(wt).count("withdraw_failed") == 1  # reported once, retried quietly

    w.sb.deployer.transactor.transact(token.functions.setBlacklisted(w.trader.address, False))
    before = int(token.functions.balanceOf(w.trader.address).call())
    wt.poll()
    assert int(token.functions.balanceOf(w.trader.address).call()) - before == TRADER_DEPOSIT
    assert w.sb.adjudicator.withdrawable(token.address, w.trader.address) == 0
    assert kinds(wt)[-2:] == ["withdrawn", "done"]


# --------------------------------------------------------------------------- restarts and node failures


def test_a_restarted_watchtower_continues_from_its_store_and_meets_the_deadline(w: World, tmp_path: Path) -> None:
    path = tmp_path / "wt.db"
    params = w.open_channel()
    stale, newest = w.sign(w.plain(params, 1, 0)), w.sign(w.plain(params, 6, TRADER_DEPOSIT + 50 * USD))
    first = tower(w, SQLiteStore(path))
    first.guard(params, newest)
    first.poll()
    first.store.close()

    w.sb.adjudicator.challenge(w.broker.transactor, params, stale)  # while the watchtower is down
    second = tower(w, SQLiteStore(path), sweep_seconds=3600)
    assert second.guarded() == {params.channel_id: 6}
    second.poll()
    # the challenge was read from the logs after the stored cursor
    assert ("seen", f"Challenged 0x{params.channel_id.hex()} version 1") in second.events
    assert status(w, params).registered_version == 6
    second.store.close()

    to_time(w, status(w, params).deadline)
    third = tower(w, SQLiteStore(path))
    trader_before = w.balance(w.trader)
    third.poll()
    assert status(w, params).stage == Stage.CONCLUDED
    assert w.balance(w.trader) - trader_before == TRADER_DEPOSIT + 50 * USD
    third.store.close()
    fourth = tower(w, SQLiteStore(path))
    assert fourth.guarded() == {}
    fourth.store.close()


class FlakyProvider(EthereumTesterProvider):
    """The in-process chain behind a connection that fails every request while ``down``, and
    the next ``failing[method]`` requests of a method (a node that restarts, drops
    connections, ...)."""

    down = False

    def __init__(self, tester: Any) -> None:
        super().__init__(tester)
        self.failing: dict[str, int] = {}

    def make_request(self, method: Any, params: Any) -> Any:
        if self.failing.get(method, 0) > 0:
            self.failing[method] -= 1
            raise ConnectionError(f"connection reset ({method})")
        if self.down:
            raise ConnectionError(f"node unreachable ({method})")
        return super().make_request(method, params)


def test_node_errors_do_not_stop_the_loop_and_the_deadline_is_met(w: World) -> None:
    provider = FlakyProvider(w.chain.w3.provider.ethereum_tester)  # type: ignore[attr-defined]
    flaky = Chain(w3=Web3(provider), in_process=True)
    params = w.open_channel()
    newest = w.sign(w.plain(params, 3, TRADER_DEPOSIT + 70 * USD))
    wt = Watchtower(
        w.watchtower.signer,
        MemoryStore(),
        flaky,
        w.sb.adjudicator.address,
        WatchtowerConfig(port=0, poll_seconds=0.02, max_backoff_seconds=0.05, sweep_seconds=3600),
    )
    wt.guard(params, newest)

    def errors() -> int:
        return kinds(wt).count("node_error")

    async def body() -> None:
        await wt.start()
        try:
            await eventually(lambda: wt.store.meta("watchtower", "cursor") is not None, "a first cycle")
            provider.down = True
            await on_chain(flaky, w.sb.adjudicator.challenge, w.broker.transactor, params, w.sign(w.plain(params, 1)))
            await eventually(lambda: errors() >= 4, "node errors")
            assert wt._task is not None and not wt._task.done()
            # Back up, but the first attempts to send the refute, and a log query, fail half-way
            # through their cycles.
            provider.failing = {"eth_sendRawTransaction": 2, "eth_getLogs": 1}
            provider.down = False
            await eventually(lambda: "refuted" in kinds(wt), "the refute")
            assert provider.failing == {"eth_sendRawTransaction": 0, "eth_getLogs": 0}
            deadline = (await on_chain(flaky, status, w, params)).deadline
            provider.down = True
            await on_chain(flaky, to_time, w, deadline)
            count = errors()
            await eventually(lambda: errors() >= count + 3, "more node errors")
            provider.down = False
            await eventually(lambda: "done" in kinds(wt), "the conclusion")
        finally:
            provider.down = False
            await wt.stop()

    trader_before = w.balance(w.trader)
    run(body(), timeout=30)
    assert status(w, params).stage == Stage.CONCLUDED
    assert w.balance(w.trader) - trader_before == TRADER_DEPOSIT + 70 * USD


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_with_typed_errors_and_changes_nothing(w: World) -> None:
    params = w.open_channel(markets=1)
    other = w.params(markets=1)
    wt = tower(w, max_channels=1)
    good = w.sign(w.plain(params, 2))
    assert wt.guard(params, good) == 2
    wt.add_price(w.broker.address, *signed_price(w, GOLD_ID, 1, 2_000 * USD))
    before = store_snapshot(wt.store)

    state3 = w.plain(params, 3)
    digest = w.sb.domain.state_digest(state3)
    trader_sig, broker_sig = w.trader.signer.sign_digest(digest), w.broker.signer.sign_digest(digest)
    foreign = Domain(w.chain.chain_id, Address("0x" + "11" * 20))
    foreign_digest = foreign.state_digest(state3)
    refusals: list[tuple[str, Any]] = [
        (
            m.BAD_SIGNATURE,
            lambda: wt.guard(params, CoSignedState(state3, w.outsider.signer.sign_digest(digest), broker_sig)),
        ),
        (m.BAD_SIGNATURE, lambda: wt.guard(params, CoSignedState(state3, trader_sig, trader_sig))),
        (m.BAD_SIGNATURE, lambda: wt.guard(params, CoSignedState(state3, malleate(trader_sig), broker_sig))),
        (
            m.BAD_SIGNATURE,  # signed under another adjudicator's domain
            lambda: wt.guard(
                params,
                CoSignedState(
                    state3, w.trader.signer.sign_digest(foreign_digest), w.broker.signer.sign_digest(foreign_digest)
                ),
            ),
        ),
        (m.BAD_PARAMS, lambda: wt.guard(replace(params, chain_id=params.chain_id + 1), good)),
        (m.BAD_PARAMS, lambda: wt.guard(replace(params, adjudicator=foreign.verifying_contract), good)),
        (m.INVALID_MESSAGE, lambda: wt.guard(other, good)),  # the state belongs to another channel
        (wm.TOO_MANY_CHANNELS, lambda: wt.guard(other, w.sign(w.plain(other, 1)))),
        (
            m.UNKNOWN_CHANNEL,
            lambda: wt.add_price(w.outsider.address, *signed_price(w, GOLD_ID, 2, 1, w.outsider.signer)),
        ),
        (m.UNKNOWN_CHANNEL, lambda: wt.add_price(w.broker.address, *signed_price(w, 9, 2, 2_000 * USD))),
        (m.BAD_SIGNATURE, lambda: wt.add_price(w.broker.address, *signed_price(w, GOLD_ID, 2, 1, w.outsider.signer))),
        (m.INVALID_MESSAGE, lambda: wt.add_price("0x1234", *signed_price(w, GOLD_ID, 2, 1))),
        (
            m.INVALID_MESSAGE,
            lambda: wt.add_price(w.broker.address, BatchPrice(MarketId(1), BatchNumber(-1), Price(1)), b""),
        ),
    ]
    for code, call in refusals:
        with pytest.raises(m.ProtocolError) as exc:
            call()
        assert exc.value.code == code, (code, exc.value.reason)
    assert wt.guard(params, w.sign(w.plain(params, 1))) == 2  # older: ignored, not an error
    assert store_snapshot(wt.store) == before
    served = tower(w, traders=frozenset({w.outsider.address}))
    with pytest.raises(m.ProtocolError) as refused:
        served.guard(params, good)
    assert refused.value.code == wm.TRADER_NOT_SERVED and served.store.channels() == []


def test_bad_frames_over_the_socket_get_error_replies(w: World) -> None:
    params = w.open_channel()
    wt = tower(w)
    good = w.sign(w.plain(params, 2))
    wt.guard(params, good)
    wt.poll()  # the watchtower's own bookkeeping (the channel is open) is in place
    before = store_snapshot(wt.store)
    watch = wm.to_json(wm.watch_message(params, w.sign(w.plain(params, 3)), "bad-sig"))
    watch["trader_signature"] = watch["broker_signature"]
    frames: list[tuple[str, str, str]] = [
        ("not json", "", m.INVALID_MESSAGE),
        (json.dumps({"v": 2, "type": "watch", "id": "old"}), "old", m.UNSUPPORTED_VERSION),
        (json.dumps({"v": 1, "type": "propose", "id": "p"}), "p", m.UNKNOWN_TYPE),
        (
            json.dumps(
                {"v": 1, "type": "watch_ack", "id": "a", "re": "", "channel_id": "0x" + "00" * 32, "version": "1"}
            ),
            "a",
            m.UNKNOWN_TYPE,
        ),
        (json.dumps({**watch, "id": "short", "broker_signature": "0x1234"}), "short", m.INVALID_MESSAGE),
        (json.dumps({**watch, "id": "num", "state": [3, *watch["state"][1:]]}), "num", m.INVALID_MESSAGE),
        (json.dumps(watch), "bad-sig", m.BAD_SIGNATURE),
        ("[" * 5000 + "]" * 5000, "", m.INVALID_MESSAGE),
    ]

    async def body() -> None:
        await wt.start()
        try:
            async with connect(f"ws://127.0.0.1:{wt.port}", max_size=None) as ws:
                for frame, re_, code in frames:
                    await ws.send(frame)
                    reply = wm.parse(await asyncio.wait_for(ws.recv(), 5))
                    assert isinstance(reply, m.ErrorReply), (frame[:40], reply)
                    assert (reply.re, reply.code) == (re_, code), (frame[:40], reply)
                await ws.send("x" * (m.MAX_MESSAGE_BYTES + 1))
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5)
        finally:
            await wt.stop()

    run(body())
    assert store_snapshot(wt.store) == before


# --------------------------------------------------------------------------- the client


def test_client_delivers_states_and_prices_also_after_the_watchtower_restarts(w: World, tmp_path: Path) -> None:
    path = tmp_path / "wt.db"
    port = free_port()
    params = w.open_channel(markets=1)
    states = {v: w.sign(w.plain(params, v)) for v in (1, 2, 3, 4)}
    prices = [signed_price(w, GOLD_ID, b, 2_000 * USD + b) for b in (1, 2)]
    foreign = replace(params, chain_id=params.chain_id + 1)

    async def body() -> None:
        first = tower(w, SQLiteStore(path), port=port)
        await first.start()
        client = WatchtowerClient(f"ws://127.0.0.1:{port}", reconnect_delay=0.05)
        client.watch(params, states[1])  # queued before the start: delivered too
        await client.start()
        client.watch(params, states[2])
        client.watch(params, states[1])  # older than what is queued: dropped
        client.price(w.broker.address, *prices[0])
        await client.flush(5)
        assert client.acknowledged == {params.channel_id: 2} and client.pending() == 0
        assert first.guarded() == {params.channel_id: 2}
        await first.stop()
        first.store.close()

        # While the watchtower is down, the client keeps what it is given.
        client.watch(params, states[3])
        client.watch(params, states[4])
        client.price(w.broker.address, *prices[1])
        with pytest.raises(WatchtowerTimeout):
            await client.flush(0.3)
        assert client.pending() == 2

        second = tower(w, SQLiteStore(path), port=port)
        await second.start()
        try:
            await client.flush(5)
            assert second.guarded() == {params.channel_id: 4}
            assert client.acknowledged[params.channel_id] == 4
            stored = second.store.batch_prices_between(w.broker.address, GOLD_ID, 1, 2)
            assert [(p.price, p.signature) for p in stored] == prices
            # A refusal is an answer too: flush returns, and the client says why.
            client.watch(foreign, states[4])
            await client.flush(5)
            assert client.refused and client.refused[-1][0] == m.BAD_PARAMS
        finally:
            await client.stop()
            await second.stop()
            second.store.close()

    run(body(), timeout=30)


# --------------------------------------------------------------------------- wire format and docs


def test_every_watch_message_round_trips(w: World) -> None:
    params = w.open_channel(markets=1)
    signed = w.sign(with_open_buy(w, params, 5))
    price, signature = signed_price(w, GOLD_ID, 3, 1_990 * USD)
    messages: list[wm.WatchMessage] = [
        wm.watch_message(params, signed, "w1"),
        wm.WatchPrice(w.broker.address, price, signature, "w2"),
        wm.WatchAck("w1", params.channel_id, Version(5)),
        wm.WatchPriceAck("w2", GOLD_ID, 3, True),
        wm.error_reply("w3", m.ProtocolError(wm.TOO_MANY_CHANNELS, "full"), params.channel_id),
    ]
    assert {wm.type_name(x) for x in messages} == set(wm.TYPES)
    for message in messages:
        assert wm.parse(wm.encode(message)) == message
    data = wm.to_json(messages[0])
    data["params"] = {**data["params"], "markets": []}  # the state's outcomes no longer fit
    with pytest.raises(m.ProtocolError, match="outcomes"):
        wm.from_json(data)


def doc_examples() -> dict[str, wm.WatchMessage]:
    text = DOCS.read_text()
    found = {
        match["key"]: wm.parse(match["body"])
        for match in re.finditer(r"^### `(?P<key>[a-z_]+)`\n(?:.*?\n)??```json\n(?P<body>.*?)^```$", text, re.M | re.S)
    }
    assert found, "no examples in docs/watchtower.md"
    return found


def test_the_docs_show_a_real_example_of_every_message_and_every_code() -> None:
    examples = doc_examples()
    assert {wm.type_name(x) for x in examples.values()} == set(wm.TYPES)
    text = DOCS.read_text()
    for code in wm.WATCH_ERROR_CODES:
        assert f"`{code}`" in text, code
    for message in examples.values():
        if isinstance(message, wm.Watch):
            domain = Domain(message.params.chain_id, message.params.adjudicator)
            message.signed.verify(domain, message.params.trader, message.params.broker)
        elif isinstance(message, wm.WatchPrice):
            watch = next(x for x in examples.values() if isinstance(x, wm.Watch))
            domain = Domain(watch.params.chain_id, watch.params.adjudicator)
            verify(domain.batch_price_digest(message.batch_price), message.signature, message.broker)
