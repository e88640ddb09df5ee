"""Dropped, duplicated and cut WebSocket frames between a TraderAgent and a BrokerAgent (through
:class:`tests.faults.conftest.Proxy`).

The agents do not retransmit on a live connection: a lost frame shows as a missing answer. The
side that waits past its timeout recovers by reconnecting: the trader reconnects itself, the broker
marks the channel ``unresponsive`` and drops the trader's connection. On the new connection the
trader sends ``resume`` (its own pending proposal, and its unanswered request again), the broker
answers ``sync`` and re-sends its pending proposal (with the batch prices a pending trade needs);
duplicates get the same ACK. A counterparty that stays silent is disputed on-chain in time
(tests/faults/test_fallback.py).
"""

from __future__ import annotations

import pytest

from offchain.agents.trader import AgentTimeout
from tests.faults.conftest import (
    DOWN,
    UP,
    FaultNet,
    Proxy,
    Rule,
    check_conservation,
    kinds,
    settled,
    trader_via,
)
from tests.protocol.conftest import GOLD, UNIT, USD, eventually, run

SI = "server_initiative"
CO = "cooperative"


async def place(trader, price: int = 2_010, is_buy: bool = True):  # type: ignore[no-untyped-def]
    return await trader.place_order(GOLD, is_buy, UNIT, price * USD, 5 * USD)


async def cross(net: FaultNet, broker, proxy_rules: list[Rule], flow: str):  # type: ignore[no-untyped-def]
    """A counter-party trader (direct) with a sell that crosses our buy in the next batch."""
    other = await net.trader(broker, CO)
    await place(other, 1_990, is_buy=False)
    return other


# --------------------------------------------------------------------------- dropped frames

DROPS = [
    # (flow, [rules]), run one after the other in one session
    pytest.param(
        SI,
        [
            Rule("drop", DOWN, "propose", 1, kind="lock"),
            Rule("drop", UP, "ack", 1),
            Rule("drop", UP, "create_order", 1),
        ],
        id="si",
    ),
    pytest.param(
        CO,
        [
            Rule("drop", UP, "propose", 1, kind="lock"),
            Rule("drop", DOWN, "ack", 1),
            Rule("drop", DOWN, "yield", 1),
        ],
        id="co",
    ),
]


@pytest.mark.parametrize(("flow", "cases"), DROPS)
def test_a_dropped_frame_is_recovered_by_reconnecting_in_time(net: FaultNet, flow: str, cases: list[Rule]) -> None:
    """SI: a lost lock proposal, a lost ACK of the trader, a lost order request; cooperative: a
    lost lock proposal of the trader, a lost ACK of the broker, a lost turn. The side that waits
    past its timeout reconnects (the trader) or drops the connection (the broker, so the trader
    reconnects); the resume re-sends what is pending (and the trader its request), and the
    trader's call succeeds with nothing lost and no dispute."""

    async def body() -> None:
        broker = await net.broker(ack_timeout=0.5)
        proxy = await Proxy(f"ws://127.0.0.1:{broker.port}").start()
        trader = await trader_via(net, broker, proxy, flow, timeout=0.8)
        trader.timeout = 0.5  # open; now a lost answer is noticed sooner
        try:
            for n, rule in enumerate(cases):
                before, connections = trader.state.version, proxy.connections
                proxy.rules[:] = [rule]
                await place(trader, 1_000)
                assert rule.fired == 1
                await settled(broker, trader)
                assert proxy.connections > connections, "recovered by a reconnection"
                assert trader.state.version == before + 1
                assert len(trader.state.open_orders) == n + 1
                await eventually(lambda: trader.channel_id not in broker.unresponsive, "responsive again", 2)
                assert trader.party is not None and trader.party.status == "open"
                check_conservation(broker, trader)
            assert "challenged" not in kinds(broker) + kinds(trader)
        finally:
            await trader.stop()
            await proxy.stop()
            await broker.stop()

    run(body(), timeout=30)


def test_a_dropped_batch_price_is_resent_with_the_pending_trade(net: FaultNet) -> None:
    """The trader refuses a trade whose batch price it never received (``stale_marks``, nothing
    signed); on resume the broker sends the prices of its pending trade first, then the trade."""

    async def body() -> None:
        broker = await net.broker(ack_timeout=0.5)
        proxy = await Proxy(f"ws://127.0.0.1:{broker.port}").start()
        trader = await trader_via(net, broker, proxy, SI)
        other = await net.trader(broker, CO)
        try:
            await place(trader)
            await place(other, 1_990, is_buy=False)
            rule = Rule("drop", DOWN, "batch_price", 1)
            proxy.rules.append(rule)
            await broker.settle_batch(GOLD)
            assert rule.fired == 1
            assert any("stale_marks" in d for k, d in broker.events if k == "unresponsive")
            version = trader.state.version
            assert trader.party is not None and trader.party.store.signed_digest(trader.channel_id, version + 1) is None
            proxy.rules.clear()
            await proxy.cut()
            await settled(broker, trader)
            assert trader.state.outcomes[0].position == UNIT
            check_conservation(broker, trader)
            check_conservation(broker, other)
        finally:
            for agent in (trader, other):
                await agent.stop()
            await proxy.stop()
            await broker.stop()

    run(body(), timeout=30)


# --------------------------------------------------------------------------- duplicated frames

DUPLICATED = ("ack", "propose", "yield", "request_yield", "batch_price", "sync", "notice", "resume")
REQUESTS = ("create_order", "cancel_order", "request_deposit", "request_finalize")


def dup_rules(flow: str) -> list[Rule]:
    """Every frame of every type duplicated, in both directions (requests too, server initiative)."""
    types = DUPLICATED + (REQUESTS if flow == SI else ())
    return [Rule("dup", d, t) for t in types for d in (UP, DOWN)]


DUPS = [pytest.param(SI, dup_rules(SI), id="si"), pytest.param(CO, dup_rules(CO), id="co")]


@pytest.mark.parametrize(("flow", "rules"), DUPS)
def test_duplicated_frames_change_nothing(net: FaultNet, flow: str, rules: list[Rule]) -> None:
    """A whole session (setup, deposits, lock, trade, cancel, finalize, close) with every frame of
    a type sent twice: duplicates get the same ACK or are ignored, nothing is refused or signed
    twice, and the channel pays out what the final co-signed state says."""

    async def body() -> None:
        broker = await net.broker(ack_timeout=2)
        proxy = await Proxy(f"ws://127.0.0.1:{broker.port}", rules).start()
        trader = await trader_via(net, broker, proxy, flow)
        other = await net.trader(broker, CO)
        try:
            await place(trader)
            await place(trader, 1_000)  # stays open, then cancelled
            await place(other, 1_990, is_buy=False)
            await broker.settle_batch(GOLD)
            await settled(broker, trader)
            await trader.cancel_order(2)
            await settled(broker, trader)
            await proxy.cut()  # a resume too, with its sync (duplicated in one case)
            await trader.wait_until(lambda: proxy.connections >= 2 and trader.ws is not None, "a reconnection")
            await settled(broker, trader)
            await trader.finalize()
            await settled(broker, trader)
            fired = {(r.direction, r.type) for r in rules if r.fired}
            assert len(fired) >= (10 if flow == SI else 11), fired  # 21 (direction, type) cases
            assert not [k for k in kinds(broker) if k in ("unresponsive", "refused_by_trader")], broker.events
            assert "refused" not in kinds(trader), trader.events
            assert trader.state.is_final and trader.state.outcomes[0].position == 0
            check_conservation(broker, trader)
            before = await net.balance(trader.address)
            await trader.close_on_chain()
            b = trader.state.balances
            assert await net.balance(trader.address) - before == b.trader_available + b.trader_locked
        finally:
            for agent in (trader, other):
                await agent.stop()
            await proxy.stop()
            await broker.stop()

    run(body(), timeout=30)


# --------------------------------------------------------------------------- a connection cut mid-proposal


def cut_rules(flow: str) -> list[Rule]:
    """Cut right after the first proposal of each kind, in the direction that kind travels."""
    mine = DOWN if flow == SI else UP
    return [Rule("cut", mine, "propose", 1, kind=k) for k in ("lock", "cancel", "finalize")] + [
        Rule("cut", DOWN, "propose", 1, kind="trade")
    ]


CUTS = [pytest.param(SI, cut_rules(SI), id="si"), pytest.param(CO, cut_rules(CO), id="co")]


@pytest.mark.parametrize(("flow", "rules"), CUTS)
def test_a_cut_right_after_a_proposal_resumes_from_the_stores(net: FaultNet, flow: str, rules: list[Rule]) -> None:
    """The proxy forwards a proposal and closes both sides before the ACK can pass. The trader
    reconnects; resume/sync and the re-sent pending proposal bring both sides to one co-signed
    state."""

    async def body() -> None:
        broker = await net.broker(ack_timeout=1)
        proxy = await Proxy(f"ws://127.0.0.1:{broker.port}", rules).start()
        trader = await trader_via(net, broker, proxy, flow, timeout=3)
        by_kind = {r.kind: r for r in rules}
        other = await net.trader(broker, CO)
        try:
            for step in ("lock", "trade", "cancel", "finalize"):
                try:
                    if step == "lock":
                        await place(trader)
                        await place(trader, 1_000)
                    elif step == "trade":
                        await place(other, 1_990, is_buy=False)
                        await broker.settle_batch(GOLD)
                    elif step == "cancel":
                        await trader.cancel_order(2)
                    else:
                        await trader.finalize()
                except AgentTimeout:
                    assert by_kind[step].fired == 1  # the answer was lost with the connection
                await trader.wait_until(lambda: trader.ws is not None, "a connection")
                await settled(broker, trader)
                assert by_kind[step].fired == 1
                check_conservation(broker, trader)
                if step == "trade":
                    assert trader.state.outcomes[0].position == UNIT
            assert proxy.connections == 1 + len(rules)
            assert trader.state.is_final and trader.state.outcomes[0].position == 0
            check_conservation(broker, trader)
        finally:
            for agent in (trader, other):
                await agent.stop()
            await proxy.stop()
            await broker.stop()

    run(body(), timeout=30)
