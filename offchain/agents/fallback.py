"""Falling back to a dispute in time (MISSION.md, "Off-chain protocol" and "Funding safety").

An agent first tries to recover a channel whose counterparty stopped answering: the trader
reconnects and resumes on a late answer, the broker drops the trader's connection so that it
reconnects and the broker re-sends its proposal. A channel that is still unresponsive
``dispute_after`` seconds later is challenged on-chain with the agent's latest co-signed state
(or without a state when nothing was co-signed yet), and then driven to its end by an in-process
:class:`~offchain.agents.watchtower.Watchtower`: it refutes a staler registration, submits the
evidence of crossed orders, concludes after the deadline and withdraws what the token refused to
pay. The party's status goes ``unresponsive`` -> ``disputed`` -> ``concluded`` in its store, so a
restarted agent carries on where it stopped.

The same watchtower answers for the agent when the counterparty (or anyone) challenges one of its
channels: with :meth:`DisputeFallback.follow`, every ``Challenged`` and ``ChallengedWithoutState``
log of the adjudicator is read (from a cursor kept in the agent's store), and a channel of ours
challenged by someone else is handed over like one of ours: a staler registration is refuted with
our newest co-signed state, evidence is submitted, and the dispute is concluded.

:class:`UnresponsiveDeadlines` is the pure part (which channels are due at a given time);
:class:`DisputeFallback` does the chain work.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from offchain.agents import DEFAULT_DISPUTE_AFTER
from offchain.agents.common import log, on_chain
from offchain.agents.watchtower import Watchtower, WatchtowerConfig
from offchain.chain import errors as ce
from offchain.chain.client import AdjudicatorClient, Stage
from offchain.chain.connection import Chain, Transactor
from offchain.errors import TradingChannelsError
from offchain.protocol.party import CONCLUDED, DISPUTED, ENDED, UNRESPONSIVE, ChannelParty
from offchain.signing import LocalSigner
from offchain.store import MemoryStore, Store
from offchain.types import Address, ChannelId

MAX_BATCH = 2**63 - 1  # the largest batch a store can hold (SQLite INTEGER)


CURSOR = ("fallback", "challenges")
"""Store meta (namespace, key): the last block whose challenge logs were read."""
BLOCK_RANGE = 2_000
"""Blocks of challenge logs read per step."""


@dataclass
class UnresponsiveDeadlines:
    """When each unresponsive channel became so, and which are due for a dispute (pure).
    ``dispute_after`` None: never (the agent only answers challenges)."""

    dispute_after: float | None
    since: dict[ChannelId, float] = field(default_factory=dict)

    def unresponsive(self, channel_id: ChannelId, now: float) -> None:
        """The counterparty stopped answering at ``now`` (an earlier start is kept)."""
        self.since.setdefault(channel_id, now)

    def responsive(self, channel_id: ChannelId) -> None:
        self.since.pop(channel_id, None)

    def due(self, now: float) -> list[ChannelId]:
        """The channels unresponsive for at least ``dispute_after`` seconds at ``now``, oldest first."""
        after = self.dispute_after
        if after is None:
            return []
        ready = [(t, cid) for cid, t in self.since.items() if now - t >= after]
        return [cid for _, cid in sorted(ready)]


class DisputeFallback:
    """Challenges the channels that stayed unresponsive too long and sees each dispute through."""

    def __init__(
        self,
        signer: LocalSigner,
        chain: Chain,
        adjudicator: Address,
        dispute_after: float | None = DEFAULT_DISPUTE_AFTER,
        *,
        poll_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        report: Callable[[str, str], None] | None = None,
    ) -> None:
        self.chain = chain
        self.adjudicator = AdjudicatorClient(chain, adjudicator)
        self.transactor = Transactor.from_key(chain, signer.private_key)
        self.deadlines = UnresponsiveDeadlines(dispute_after)
        self.poll_seconds = poll_seconds
        self.clock = clock
        self.report = report or (lambda kind, detail: None)
        # The in-process watchtower keeps only what it is handed (a restart hands it again).
        config = WatchtowerConfig(
            poll_seconds=poll_seconds,
            sweep_seconds=max(poll_seconds, 5.0),
            max_channels=2**62,  # a public watchtower's bound against abuse; these are all our own
        )
        self.tower = Watchtower(signer, MemoryStore(), chain, adjudicator, config)
        self.parties: dict[ChannelId, ChannelParty] = {}  # unresponsive or in our dispute
        self.guarding: set[ChannelId] = set()  # handed to the in-process watchtower
        self.stateless: set[ChannelId] = set()  # challenged without a co-signed state
        self.address = signer.address
        self._followed: tuple[Store, Callable[[ChannelId], ChannelParty | None]] | None = None
        self._cursor: int | None = None
        self._saved_cursor: int | None = None
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ what the agent reports

    def unresponsive(self, party: ChannelParty) -> None:
        """The counterparty of ``party`` stopped answering: start its clock (once)."""
        if party.status in (DISPUTED, CONCLUDED):
            return
        self.parties[party.channel_id] = party
        self.deadlines.unresponsive(party.channel_id, self.clock())

    def responsive(self, party: ChannelParty) -> None:
        """The counterparty answered again: no dispute (unless one has started)."""
        self.deadlines.responsive(party.channel_id)
        if party.status != DISPUTED:
            self.parties.pop(party.channel_id, None)

    def resume(self, party: ChannelParty) -> None:
        """After a restart: carry on with a channel according to its stored status."""
        if party.status == UNRESPONSIVE:
            self.unresponsive(party)
        elif party.status == DISPUTED:
            self.parties[party.channel_id] = party  # handed over on the next step

    def follow(self, store: Store, holds: Callable[[ChannelId], ChannelParty | None]) -> None:
        """Also answer challenges of our channels (``holds`` gives our party of a channel id, or
        None) registered by someone else, following the logs from the cursor in ``store`` (the
        first time: from the current block on)."""
        saved = store.meta(*CURSOR)
        self._cursor = int(saved["block"]) if isinstance(saved, dict) and "block" in saved else None
        self._saved_cursor = self._cursor
        self._followed = (store, holds)

    # ------------------------------------------------------------------ the work

    async def run(self) -> None:
        """Check the deadlines and drive the disputes until cancelled; chain errors are retried."""
        while True:
            try:
                await self.step()
            except TradingChannelsError as exc:
                self.report("dispute_retry", f"{exc.code}: {exc.reason}")
            except Exception as exc:  # noqa: BLE001 - a node error must not end the fallback
                self.report("dispute_retry", f"{type(exc).__name__}: {str(exc)[:200]}")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
            except TimeoutError:
                pass

    def poke(self) -> None:
        self._wake.set()

    async def step(self) -> None:
        """Challenge every channel that is due, then one watchtower cycle for those in dispute."""
        for channel_id in self.deadlines.due(self.clock()):
            party = self.parties.get(channel_id)
            if party is None or party.status != UNRESPONSIVE:
                self.deadlines.responsive(channel_id)
                continue
            await on_chain(self.chain, self._challenge, party)
            self._disputed(party)
        if self._followed is not None:
            store, holds = self._followed
            for channel_id in await on_chain(self.chain, self._challenged_by_others):
                party = holds(channel_id)
                if party is None or party.status in ENDED or channel_id in self.guarding | self.stateless:
                    continue
                self.report("challenged_by_counterparty", f"0x{channel_id.hex()}: answering with our newest state")
                self._disputed(party)
            if self._cursor is not None and self._cursor != self._saved_cursor:
                store.put_meta(*CURSOR, {"block": str(self._cursor)})
                self._saved_cursor = self._cursor
        for party in list(self.parties.values()):  # e.g. the hand-over failed last time
            if party.status == DISPUTED and party.channel_id not in self.guarding | self.stateless:
                self._disputed(party)
        if self.stateless:
            for channel_id in await on_chain(self.chain, self._conclude_stateless):
                self.stateless.discard(channel_id)
                party = self.parties.pop(channel_id)
                party.set_status(CONCLUDED)
        if self.tower.guarded():
            await self.tower.run_once()
        self._relay_events()
        self._mark_concluded()

    def _challenged_by_others(self) -> list[ChannelId]:
        """The channels challenged by someone else in the next range of blocks (blocking)."""
        latest = int(self.chain.w3.eth.block_number)
        if self._cursor is None:
            self._cursor = latest
        first, last = self._cursor + 1, min(latest, self._cursor + BLOCK_RANGE)
        if first > last:
            return []
        found: list[ChannelId] = []
        for event in ("Challenged", "ChallengedWithoutState"):
            for entry in self.adjudicator.logs(event, first, last):
                if entry["args"]["challenger"] != self.address:  # ours are handed over as made
                    found.append(ChannelId(bytes(entry["args"]["channelId"])))
        self._cursor = last
        return list(dict.fromkeys(found))

    def _challenge(self, party: ChannelParty) -> None:
        """Challenge ``party``'s channel unless a dispute already runs (blocking)."""
        cid = party.channel_id
        status = self.adjudicator.status(cid)
        if status.stage == Stage.OPEN:
            try:
                if self._co_signed(party):
                    receipt = self.adjudicator.challenge(self.transactor, party.params, party.co_signed)
                    what = f"version {party.co_signed.state.version}"
                else:
                    receipt = self.adjudicator.challenge_without_state(self.transactor, party.params)
                    what = "no co-signed state"
            except (ce.ChannelDisputed, ce.ChannelConcluded):
                pass  # the counterparty (or its watchtower) was first: see it through all the same
            else:
                del receipt
                self.report("challenged", f"0x{cid.hex()} with {what}: the counterparty stayed unresponsive")

    def _disputed(self, party: ChannelParty) -> None:
        """The channel is in a dispute: sign nothing more in it, and see the dispute through (a
        hand-over that fails is reported and tried again on the next step, without holding up
        the other channels)."""
        self.deadlines.responsive(party.channel_id)
        self.parties[party.channel_id] = party
        if party.status != DISPUTED:
            party.set_status(DISPUTED)
        try:
            self._hand_over(party)
        except TradingChannelsError as exc:
            self.report("dispute_retry", f"0x{party.channel_id.hex()}: {exc.code}: {exc.reason}")

    def _hand_over(self, party: ChannelParty) -> None:
        """Give the in-process watchtower the channel's newest co-signed state and, for its open
        orders, every signed batch price the party stored since (its evidence in the dispute)."""
        if self._co_signed(party):
            self.tower.guard(party.params, party.co_signed)
            broker = party.params.broker
            for open_order in party.co_signed.state.open_orders:
                market = open_order.order.market
                for record in party.store.batch_prices_between(broker, market, open_order.first_batch, MAX_BATCH):
                    self.tower.add_price(broker, record.price, record.signature)
            self.guarding.add(party.channel_id)
        else:
            self.stateless.add(party.channel_id)

    @staticmethod
    def _co_signed(party: ChannelParty) -> bool:
        return bool(party.co_signed.trader_signature and party.co_signed.broker_signature)

    def _conclude_stateless(self) -> list[ChannelId]:
        """A dispute registered without a state pays out the deposits after the deadline; returns
        the channels concluded (blocking)."""
        concluded = []
        for cid in list(self.stateless):
            party = self.parties[cid]
            status = self.adjudicator.status(cid)
            if status.stage == Stage.DISPUTED:
                try:
                    self.adjudicator.conclude(self.transactor, party.params)
                except ce.DeadlineNotReached:
                    continue
                except (ce.ChannelConcluded, ce.ChannelNotDisputed):
                    pass
                self.report("concluded", f"0x{cid.hex()}: deposits paid out")
            if self.adjudicator.status(cid).stage == Stage.CONCLUDED:
                concluded.append(cid)
        return concluded

    def _relay_events(self) -> None:
        drained = list(self.tower.events)  # the tower's cycle has returned: nothing appends now
        del self.tower.events[: len(drained)]
        for kind, detail in drained:
            self.report(f"dispute_{kind}", detail)

    def _mark_concluded(self) -> None:
        guarded = self.tower.guarded()
        for cid, party in list(self.parties.items()):
            if party.status == DISPUTED and cid in self.guarding and cid not in guarded:
                self.guarding.discard(cid)
                party.set_status(CONCLUDED)
                self.parties.pop(cid, None)
                log.info("channel 0x%s concluded after a dispute", cid.hex())
