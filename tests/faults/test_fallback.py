"""Falling back to a dispute in time (offchain/agents/fallback.py): a counterparty that stays
silent after the agent's recovery attempt (a reconnection) is challenged on-chain once
``dispute_after`` has passed, and the agent sees the dispute through to the payout of its latest
co-signed state. Also the pure deadline bookkeeping (:class:`UnresponsiveDeadlines`)."""

from __future__ import annotations

import pytest

from offchain.agents.common import on_chain
from offchain.agents.fallback import DisputeFallback, UnresponsiveDeadlines
from offchain.agents.trader import AgentTimeout
from offchain.chain.client import RegistrationKind, Stage
from offchain.protocol.party import ChannelParty
from offchain.settlement import Evidence, OraclePrice, payouts
from offchain.signing import CoSignedState
from offchain.store import StoreError
from offchain.types import ChannelId, Signature
from tests.faults.conftest import UP, FaultNet, Proxy, Rule, kinds, settled, trader_via
from tests.faults.test_transport import place
from tests.protocol.conftest import GOLD, USD, eventually, run

CO = "cooperative"
SI = "server_initiative"
GOLD_ORACLE = 2_000 * 10**8


def test_deadlines_are_due_only_after_dispute_after_and_forget_a_recovered_channel() -> None:
    a, b = ChannelId(b"\x01" * 32), ChannelId(b"\x02" * 32)
    deadlines = UnresponsiveDeadlines(dispute_after=10)
    deadlines.unresponsive(a, now=100)
    deadlines.unresponsive(b, now=105)
    deadlines.unresponsive(a, now=108)  # reported again: the first report counts
    assert deadlines.due(109) == []
    assert deadlines.due(110) == [a]
    assert deadlines.due(120) == [a, b]  # oldest first
    deadlines.responsive(a)
    assert deadlines.due(1_000) == [b]
    deadlines.responsive(b)
    assert deadlines.due(1_000) == []


@pytest.mark.parametrize("flow", [CO, SI])
def test_a_trader_disputes_a_broker_that_stays_silent_and_is_paid_its_last_co_signed_state(
    net: FaultNet, flow: str
) -> None:
    """Every frame from the trader is lost from some point on (a broker that withholds its
    answers looks the same). The trader's call times out, it reconnects and asks again, times out
    again, and after ``dispute_after`` challenges with its latest co-signed state; after the
    challenge period its in-process watchtower concludes and the trader holds its tokens."""

    async def body() -> None:
        broker = await net.broker(ack_timeout=0.5, dispute_after=None)
        proxy = await Proxy(f"ws://127.0.0.1:{broker.port}").start()
        trader = await trader_via(net, broker, proxy, flow, timeout=3, dispute_after=0.3, dispute_poll_seconds=0.05)
        trader.timeout = 0.4
        try:
            await place(trader, 1_000)
            await settled(broker, trader)
            party = trader.party
            assert party is not None
            last = party.co_signed
            proxy.rules[:] = [Rule("drop", UP)]  # from now on nothing the trader sends arrives
            with pytest.raises(AgentTimeout):
                await place(trader, 1_001)
            assert "reconnecting" in kinds(trader), "it tried to recover first"
            await eventually(lambda: party.status == "disputed", "the trader's challenge", 5)
            status = await net.party_status(trader)
            assert status.stage == Stage.DISPUTED
            assert status.registered_version == last.state.version
            assert status.kind == RegistrationKind.FINGERPRINT  # the open buy of $1,000
            with pytest.raises(Exception, match="dispute"):
                await place(trader, 1_002)  # it signs nothing more in the channel

            before = await net.balance(trader.address)
            await on_chain(net.chain, net.chain.increase_time, party.params.challenge_duration + 1)
            await on_chain(net.chain, net.sb.push_price, "XAU / USD", GOLD_ORACLE)
            await eventually(lambda: party.status == "concluded", "the conclusion", 10)
            assert (await net.party_status(trader)).stage == Stage.CONCLUDED
            expected = payouts(
                party.params, last.state, status.trader_deposit, status.broker_deposit, {}, 6
            )  # the order never crossed: it is unlocked
            assert await net.balance(trader.address) - before == expected.to_trader
            assert expected.to_trader == last.state.balances.trader_available + last.state.balances.trader_locked
            assert "challenged" in kinds(trader) and "dispute_concluded" in kinds(trader)
        finally:
            await trader.stop()
            await proxy.stop()
            await broker.stop()

    run(body(), timeout=60)


def test_a_broker_disputes_a_trader_that_went_away_and_the_evidence_fills_its_order(net: FaultNet) -> None:
    """A trader's buy crosses in a batch, but the trader has gone: the broker's trade proposal is
    never answered. The broker reports the channel unresponsive, drops the connection (nobody
    comes back) and, after ``dispute_after``, challenges with the latest co-signed state (the open
    buy); its watchtower submits the signed batch price as evidence and concludes: the trader is
    paid as if the trade had been signed, at the oracle price."""

    async def body() -> None:
        broker = await net.broker(ack_timeout=0.5, dispute_after=0.3, dispute_poll_seconds=0.05)
        trader = await net.trader(broker, CO, timeout=3)
        other = await net.trader(broker, CO, timeout=3)
        try:
            await trader.place_order(GOLD, True, 10**5, 201 * USD, USD)  # 0.1 oz at <= $2,010
            await other.place_order(GOLD, False, 10**5, 199 * USD, USD)
            party = broker.parties[trader.channel_id]
            last = party.co_signed
            await trader.stop()  # gone for good, holding no turn
            price = await broker.settle_batch(GOLD)
            assert price.price < 2_010 * USD  # strictly crossed: evidence fills it whole
            await eventually(lambda: party.status == "disputed", "the broker's challenge", 5)
            status = await net.party_status(trader)
            assert status.stage == Stage.DISPUTED and status.registered_version == last.state.version
            await eventually(lambda: "dispute_evidence" in kinds(broker), "the evidence of the crossing batch", 5)
            assert net.sb.adjudicator.evidence(party.channel_id, last.state) == {0: Evidence(1, price.price)}

            before = await net.balance(trader.address)
            await on_chain(net.chain, net.chain.increase_time, party.params.challenge_duration + 1)
            await on_chain(net.chain, net.sb.push_price, "XAU / USD", GOLD_ORACLE)
            await eventually(lambda: party.status == "concluded", "the conclusion", 10)
            expected = payouts(
                party.params,
                last.state,
                status.trader_deposit,
                status.broker_deposit,
                {GOLD: OraclePrice(GOLD_ORACLE, 8)},
                6,
                evidence={0: Evidence(1, price.price)},
            )
            assert await net.balance(trader.address) - before == expected.to_trader
            assert trader.channel_id not in {p.channel_id for p in broker.parties.values() if p.status == "open"}
            await settled(broker, other)  # the other channel traded on and is untouched
            assert other.state.outcomes[0].position == -(10**5)
        finally:
            await other.stop()
            await broker.stop()

    run(body(), timeout=60)


class Killed(BaseException):
    """Stands for SIGKILL between the challenge transaction and the status write."""


def test_an_agent_killed_after_its_challenge_landed_carries_on_after_the_restart(net: FaultNet) -> None:
    """The challenge is on-chain but the process dies before it stores ``disputed``. Restarted on
    its store (status ``unresponsive``), the fallback becomes due again, finds the dispute already
    running (no second challenge), hands it to its watchtower and concludes."""

    async def body() -> None:
        broker = await net.broker(dispute_after=None)
        trader = await net.trader(broker, CO, timeout=3)
        try:
            await place(trader, 1_000)
            await settled(broker, trader)
        finally:
            await trader.stop()
            await broker.stop()
        party = trader.party
        assert party is not None
        last = party.co_signed
        party.set_status("unresponsive")
        first_block = int(net.chain.w3.eth.block_number)

        first = DisputeFallback(trader.signer, net.chain, net.sb.adjudicator.address, dispute_after=0)
        first.unresponsive(party)

        def killed(status: str) -> None:
            raise Killed

        party.set_status = killed  # type: ignore[method-assign]
        with pytest.raises(Killed):
            await first.step()
        assert (await net.party_status(trader)).stage == Stage.DISPUTED

        # the restart: the same store, a new party and a new fallback
        restarted = ChannelParty.load(party.store, trader.state_signer, party.channel_id)
        assert restarted.status == "unresponsive"
        second = DisputeFallback(trader.signer, net.chain, net.sb.adjudicator.address, dispute_after=0)
        second.resume(restarted)
        await second.step()
        assert restarted.status == "disputed"
        disputed = await net.party_status(trader)
        await on_chain(net.chain, net.chain.increase_time, restarted.params.challenge_duration + 1)
        before = await net.balance(trader.address)
        await second.step()
        assert restarted.status == "concluded"
        assert (await net.party_status(trader)).stage == Stage.CONCLUDED
        expected = payouts(restarted.params, last.state, disputed.trader_deposit, disputed.broker_deposit, {}, 6)
        assert await net.balance(trader.address) - before == expected.to_trader
        challenges = await on_chain(
            net.chain, net.sb.adjudicator.logs, "Challenged", first_block, int(net.chain.w3.eth.block_number)
        )
        assert [bytes(c["args"]["channelId"]) for c in challenges].count(party.channel_id) == 1

    run(body(), timeout=60)


@pytest.mark.parametrize("who", ["broker", "trader"])
def test_an_agent_answers_a_stale_challenge_of_its_channel_by_itself(net: FaultNet, who: str) -> None:
    """The counterparty challenges with an old co-signed state while the agent is running (no
    watchtower of its own): the agent reads the Challenged log, refutes with its newest state,
    signs nothing more in the channel, and concludes after the deadline with the newest state's
    payouts."""

    async def body() -> None:
        broker = await net.broker(dispute_poll_seconds=0.05)
        trader = await net.trader(broker, CO, timeout=3)
        try:
            await place(trader, 1_000)
            await place(trader, 1_001)
            await settled(broker, trader)
            tp, bp = trader.party, broker.parties[trader.channel_id]
            assert tp is not None
            old = tp.store.state(tp.channel_id, 1)  # the deposits only, before both orders
            assert old is not None and old.trader_signature and old.broker_signature
            stale = CoSignedState(old.state, Signature(old.trader_signature), Signature(old.broker_signature))
            newest = tp.co_signed
            challenger, answerer = (trader, bp) if who == "broker" else (broker, tp)
            if who == "trader":  # the trader answers: stop the broker's own answer first
                await broker.stop()
            await on_chain(net.chain, net.sb.adjudicator.challenge, challenger.transactor, tp.params, stale)
            agent = broker if who == "broker" else trader
            await eventually(lambda: "dispute_refuted" in kinds(agent), "the refute", 5)
            assert "challenged_by_counterparty" in kinds(agent) and answerer.status == "disputed"
            status = await net.party_status(trader)
            assert status.registered_version == newest.state.version
            await on_chain(net.chain, net.chain.increase_time, tp.params.challenge_duration + 1)
            before = await net.balance(trader.address)
            await eventually(lambda: answerer.status == "concluded", "the conclusion", 10)
            expected = payouts(tp.params, newest.state, status.trader_deposit, status.broker_deposit, {}, 6)
            assert await net.balance(trader.address) - before == expected.to_trader
        finally:
            await trader.stop()
            await broker.stop()

    run(body(), timeout=60)


def test_a_channel_the_watchtower_refuses_does_not_hold_up_the_others(net: FaultNet) -> None:
    """Two channels in dispute; the first hand-over fails (as a full watchtower store would): it
    is reported and tried again on the next step, and the other channel is handed over at once."""

    async def body() -> None:
        broker = await net.broker(dispute_after=None)
        a = await net.trader(broker, CO, timeout=3)
        b = await net.trader(broker, CO, timeout=3)
        try:
            for t in (a, b):
                await place(t, 1_000)
                await settled(broker, t)
        finally:
            for t in (a, b):
                await t.stop()
            await broker.stop()
        events: list[tuple[str, str]] = []
        fallback = DisputeFallback(
            broker.signer,
            net.chain,
            net.sb.adjudicator.address,
            dispute_after=0,
            report=lambda kind, detail: events.append((kind, detail)),
        )
        pa, pb = broker.parties[a.channel_id], broker.parties[b.channel_id]
        guard = fallback.tower.guard
        refused: list[ChannelId] = []

        def flaky_guard(params, signed):  # type: ignore[no-untyped-def]
            if params.channel_id == pa.channel_id and len(refused) < 2:  # this step's two tries
                refused.append(params.channel_id)
                raise StoreError("the watchtower's store is full")
            return guard(params, signed)

        fallback.tower.guard = flaky_guard  # type: ignore[method-assign]
        for party in (pa, pb):
            party.set_status("unresponsive")
            fallback.unresponsive(party)
        await fallback.step()
        assert refused == [pa.channel_id, pa.channel_id]
        assert pb.channel_id in fallback.guarding and pa.channel_id not in fallback.guarding
        assert any(k == "dispute_retry" and pa.channel_id.hex() in d for k, d in events)
        await fallback.step()
        assert {pa.channel_id, pb.channel_id} <= fallback.guarding
        assert pa.status == pb.status == "disputed"

    run(body(), timeout=60)
