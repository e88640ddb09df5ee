"""The trader agent: a WebSocket client of one broker that opens and funds one channel, places
and cancels orders, checks every state it is asked to sign, and keeps every batch price it
receives. It reconnects on its own and resumes from its store.

Use it from Python (``await agent.place_order(...)``) or from a script (``tchan trader
--script``). In the server-initiative flow it sends requests and countersigns the broker's
proposals; in the cooperative flow it proposes in its turn and yields the turn afterwards.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from websockets.asyncio.client import connect
from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from offchain.agents import DEFAULT_DISPUTE_AFTER
from offchain.agents.common import log, on_chain, send, sign_login
from offchain.agents.fallback import DisputeFallback
from offchain.chain import errors
from offchain.chain.client import AdjudicatorClient, TokenClient
from offchain.chain.connection import Chain, Transactor
from offchain.crashpoints import crash_point
from offchain.eip712 import Domain
from offchain.engine.channel import AccountDeposits, CancelOrder, Channel, CreateOrder, Finalize, Trade
from offchain.engine.slashing import LeftOutOrder, left_out_orders, two_prices
from offchain.errors import ChainError, ContractError, SignatureError, TradingChannelsError, ValidationError
from offchain.model import BatchPrice, ChannelParams, ChannelState, OpenOrder, Order
from offchain.protocol import messages as m
from offchain.protocol.messages import ProtocolError
from offchain.protocol.party import (
    COOPERATIVE,
    ENDED,
    OPEN,
    SERVER_INITIATIVE,
    TRADER,
    UNRESPONSIVE,
    ChannelParty,
)
from offchain.settlement import evidence_crosses
from offchain.signing import CoSignedState, LocalSigner, StateSigner, verify
from offchain.store import Store, StoredBatchPrice, StoredOrder, StoreError
from offchain.types import (
    Address,
    BatchNumber,
    ChannelId,
    ExpirationHours,
    MarketId,
    Nonce,
    Price,
    SyntheticAmount,
    Timestamp,
    TokenAmount,
)

MAX_CLOCK_SKEW = 300

T = TypeVar("T")


class AgentTimeout(TradingChannelsError):
    """The broker did not answer in time (the dispute path can take over)."""

    code = "timeout"


class RequestRefused(TradingChannelsError):
    """The broker refused a request or proposal; ``code`` and ``rule`` say why."""

    code = "refused"

    def __init__(self, reply: m.ErrorReply) -> None:
        super().__init__(f"{reply.code}: {reply.reason}")
        self.code = reply.code
        self.rule = reply.rule


class WatchtowerLink(Protocol):
    """Where the trader hands its newest co-signed state and every signed batch price, so that a
    watchtower can answer for it while it is offline (``offchain.agents.watchtower.WatchtowerClient``)."""

    def watch(self, params: ChannelParams, signed: CoSignedState) -> None: ...

    def price(self, broker: Address, price: BatchPrice, signature: bytes) -> None: ...


class TraderAgent:
    """One trader, one broker, one channel (per store).

    Besides trading, it holds the broker to its signed prices (MISSION.md, "Slashing") without
    being told: every batch price is checked against every earlier one for the same batch (two
    prices: it proves them on-chain and takes its channel), and every co-signed state against the
    prices it holds (a left-out order: it proves it and takes the channel). With a watchtower, it
    hands over every co-signed state and price as it gets them.
    """

    def __init__(
        self,
        signer: LocalSigner,
        store: Store,
        chain: Chain,
        url: str,
        adjudicator: Address,
        *,
        timeout: float = 15.0,
        reconnect_delay: float = 0.2,
        watchtower: WatchtowerLink | None = None,
        slash_check_seconds: float = 30.0,
        dispute_after: float | None = DEFAULT_DISPUTE_AFTER,
        dispute_poll_seconds: float = 1.0,
    ) -> None:
        self.signer = signer
        self.watchtower = watchtower
        self.store = store
        self.chain = chain
        self.url = url
        self.timeout = timeout
        self.reconnect_delay = reconnect_delay
        self.slash_check_seconds = slash_check_seconds
        self.adjudicator = AdjudicatorClient(chain, adjudicator)
        self.domain = Domain(chain.chain_id, adjudicator)
        self.state_signer = StateSigner(signer, self.domain, log=store)
        self.transactor = Transactor.from_key(chain, signer.private_key)
        self.welcome: m.Welcome | None = None
        self.ws: Connection | None = None
        self.party: ChannelParty | None = None
        self.open_batches: dict[int, int] = {}
        self.marks: dict[int, Price] = {}  # the latest signed batch price per market
        self.mark_batches: dict[int, int] = {}
        self.signed_prices: dict[int, set[int]] = {}  # every signed price received, per market
        self.batch_prices_seen = 0
        self.conflicts: list[tuple[StoredBatchPrice, StoredBatchPrice]] = []
        self.events: list[tuple[str, str]] = []
        self._ids = itertools.count(1)
        self._changed = asyncio.Condition()
        self._replies: dict[str, asyncio.Future[None]] = {}
        self._broker_deposited = False
        self._expected_setup_nonce: int | None = None
        self._expected_challenge_duration: int | None = None
        self._requested_cancels: set[int] = set()  # server initiative: what we asked the broker for
        self._requested_finalize = False
        self._run_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._checked_version = -1  # the co-signed version last checked for left-out orders
        self.expected_fills: dict[tuple[int, int], list[Nonce]] = {}  # (market, batch) -> crossed orders
        for record in store.channels():
            self.party = ChannelParty.load(store, self.state_signer, record.channel_id)
        self._load_marks()
        self.fallback = DisputeFallback(
            signer,
            chain,
            adjudicator,
            dispute_after,
            poll_seconds=dispute_poll_seconds,
            report=lambda kind, detail: self.events.append((kind, detail)),
        )
        self.fallback.follow(store, lambda cid: self.party if self.party and self.party.channel_id == cid else None)
        if self.party is not None:
            self.fallback.resume(self.party)

    @property
    def address(self) -> Address:
        return self.signer.address

    # ------------------------------------------------------------------ connection

    async def start(self) -> None:
        """Connect (and keep reconnecting) in the background; returns once welcomed."""
        self._after_change()  # a state restored from the store may already be a proof
        self._run_task = asyncio.create_task(self._run())
        self._spawn(self._watch_slashing())
        self._spawn(self.fallback.run())
        await self._wait(lambda: self.welcome is not None and self.ws is not None, "the broker's welcome")

    async def stop(self) -> None:
        tasks = [t for t in (self._run_task, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
        if self.ws is not None:
            await self.ws.close()

    async def _run(self) -> None:
        while True:
            try:
                async with connect(self.url, max_size=m.MAX_MESSAGE_BYTES, open_timeout=5) as ws:
                    await self._session(ws)
            except (OSError, ConnectionClosed, InvalidHandshake, InvalidURI, TimeoutError) as exc:
                log.debug("connection to %s lost: %s", self.url, exc)
            except TradingChannelsError as exc:  # e.g. a broker that is not ours: say so, retry later
                self.events.append(("connection_refused", f"{exc.code}: {exc.reason}"))
                log.warning("connection to %s refused: %s", self.url, exc.reason)
            self.ws = None
            self.welcome = None
            await asyncio.sleep(self.reconnect_delay)

    async def _session(self, ws: Connection) -> None:
        challenge = m.parse(await ws.recv())
        if not isinstance(challenge, m.Challenge):
            raise ConnectionClosed(None, None)
        if self.party is not None and challenge.broker != self.party.params.broker:
            raise TradingChannelsError(f"{self.url} is broker {challenge.broker}, our channel is with another")
        await send(ws, m.Hello(self.address, sign_login(self.signer, challenge.broker, challenge.nonce)))
        welcome = m.parse(await ws.recv())
        if not isinstance(welcome, m.Welcome):
            raise ConnectionClosed(None, None)
        if welcome.adjudicator != self.adjudicator.address or welcome.chain_id != self.chain.chain_id:
            raise TradingChannelsError("the broker uses another adjudicator or chain")
        self.ws = ws
        self.welcome = welcome
        for market, batch in welcome.open_batches.items():
            self.open_batches[market] = max(self.open_batches.get(market, 1), batch)
        if self.party is not None:
            await send(ws, m.Resume(self.party.channel_id))
            if self.party.pending is not None:
                await send(ws, self.party.pending[0])
        await self._notify()
        async for raw in ws:
            await self._handle(ws, raw)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _wait(self, predicate: Callable[[], bool], what: str, timeout: float | None = None) -> None:
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(predicate), timeout or self.timeout)
            except TimeoutError as exc:
                raise AgentTimeout(f"timed out waiting for {what}") from exc

    def _next_id(self) -> str:
        return f"t{next(self._ids)}"

    async def _send(self, message: m.Message) -> str:
        message_id = self._next_id()
        message = dataclasses.replace(message, id=message_id)
        if self.ws is None:
            await self._wait(lambda: self.ws is not None, "a connection")
        assert self.ws is not None
        self._replies[message_id] = asyncio.get_running_loop().create_future()
        await send(self.ws, message)
        return message_id

    # ------------------------------------------------------------------ incoming

    async def _handle(self, ws: Connection, raw: str | bytes) -> None:
        message_id = ""
        try:
            message = m.parse(raw)
            message_id = message.id
            await self._dispatch(ws, message)
        except ProtocolError as exc:
            self.events.append(("refused", f"{exc.code}: {exc.reason}"))
            await send(ws, m.ErrorReply(message_id, exc.code, exc.reason, exc.rule, _channel_of(raw)))
        except TradingChannelsError as exc:
            self.events.append(("refused", f"{exc.code}: {exc.reason}"))
            await send(ws, m.ErrorReply(message_id, exc.code, exc.reason, None, _channel_of(raw)))
        self._after_change()
        await self._notify()

    async def _dispatch(self, ws: Connection, msg: m.Message) -> None:
        if isinstance(msg, m.Propose):
            await self._on_propose(ws, msg)
        elif isinstance(msg, m.Ack):
            party = self._require_party(msg.channel_id)
            party.on_ack(msg)
            self._broker_answered()
        elif isinstance(msg, m.BatchPriceMessage):
            self._on_batch_price(msg)
        elif isinstance(msg, m.Sync):
            self._on_sync(msg)
        elif isinstance(msg, m.Yield):
            self._require_party(msg.channel_id).on_yield(msg)
        elif isinstance(msg, m.RequestYield):
            party = self._require_party(msg.channel_id)
            if party.flow == COOPERATIVE and party.my_turn() and party.pending is None and not self._busy:
                message = party.yield_turn()
                crash_point("trader.yield.before_send")
                await send(ws, message)
        elif isinstance(msg, m.Notice):
            if msg.code == m.BROKER_DEPOSITED:
                self._broker_deposited = True
            self.events.append((msg.code, msg.reason))
        elif isinstance(msg, m.ErrorReply):
            future = self._replies.pop(msg.re, None)
            if future is not None and not future.done():
                future.set_exception(RequestRefused(msg))
            else:
                self.events.append(("error", f"{msg.code}: {msg.reason}"))
        else:
            raise ProtocolError(m.UNKNOWN_TYPE, f"a trader does not accept {m.type_name(msg)}")

    _busy = False

    def _require_party(self, channel_id: bytes) -> ChannelParty:
        if self.party is None or self.party.channel_id != channel_id:
            raise ProtocolError(m.UNKNOWN_CHANNEL, f"unknown channel 0x{channel_id.hex()}")
        return self.party

    async def _on_propose(self, ws: Connection, msg: m.Propose) -> None:
        if msg.kind == "setup" and (self.party is None or self.party.channel_id != msg.channel_id):
            assert msg.params is not None
            self._check_setup(msg.params, msg.flow)
            party, ack = ChannelParty.accept_setup(self.store, self.state_signer, TRADER, msg)
            self.party = party
            crash_point("trader.setup_ack.before_send")
            await send(ws, ack)
            return
        party = self._require_party(msg.channel_id)
        deposits = None
        if msg.kind == "deposit":
            status = await on_chain(self.chain, self.adjudicator.status, party.channel_id)
            deposits = (status.trader_deposit, status.broker_deposit)

        def check(channel: Channel, proposal: m.Propose) -> None:
            self._check_proposal(channel, proposal, deposits)

        ack = party.on_proposal(msg, check)
        self._broker_answered()
        crash_point("trader.ack.before_send")
        await send(ws, ack)
        crash_point("trader.ack.sent")

    def _check_setup(self, params: ChannelParams, flow: str | None) -> None:
        welcome = self.welcome
        if welcome is None or flow != SERVER_INITIATIVE:
            raise ProtocolError(m.WRONG_FLOW, "we did not ask for a server-initiative channel")
        if (
            params.trader != self.address
            or params.broker != welcome.broker
            or params.token != welcome.token
            or params.adjudicator != self.adjudicator.address
            or params.chain_id != self.chain.chain_id
            or params.nonce != self._expected_setup_nonce
            or params.challenge_duration != self._expected_challenge_duration
            or params.markets != welcome.markets
        ):
            raise ProtocolError(m.BAD_PARAMS, "these are not the parameters we asked for")

    def _check_proposal(self, channel: Channel, msg: m.Propose, deposits: tuple[int, int] | None) -> None:
        """What the trader checks beyond the rules before it countersigns a broker proposal."""
        t = msg.transition
        if isinstance(t, CreateOrder):
            stored = {o.nonce: o for o in self.store.orders(channel.params.channel_id)}
            mine = stored.get(t.order.nonce)
            if mine is None or mine.order != t.order or mine.signature != t.signature:
                raise ProtocolError(m.RULE_VIOLATION, "an order we did not place", "order_signature_valid")
            if t.first_batch < self.open_batches.get(t.order.market, 1):
                raise ProtocolError(
                    m.RULE_VIOLATION, f"first batch {t.first_batch} was already priced", "first_batch_is_current"
                )
            self._check_clock(t.now)
            self._check_marks(t.marks)
        elif isinstance(t, Trade):
            known = self.store.batch_prices(channel.params.broker, t.batch_price.market, t.batch_price.batch)
            if not any(k.price == t.batch_price for k in known):
                raise ProtocolError(m.STALE_MARKS, f"no signed price {t.batch_price.price} for that batch")
            self._check_clock(t.now)
            self._check_marks(t.marks)
        elif isinstance(t, CancelOrder):
            if t.nonce not in self._requested_cancels:
                raise ProtocolError(m.RULE_VIOLATION, f"we did not ask to cancel order {t.nonce}", "order_is_open")
        elif isinstance(t, AccountDeposits):
            if deposits is None or t.trader_deposit > deposits[0] or t.broker_deposit > deposits[1]:
                raise ProtocolError(m.DEPOSIT_NOT_SEEN, "the adjudicator holds less than the proposal accounts for")
        elif isinstance(t, Finalize):
            if not self._requested_finalize:
                raise ProtocolError(m.RULE_VIOLATION, "we did not ask to finalize", "channel_not_final")
            for market, outcome in zip(channel.params.markets, channel.state.outcomes, strict=True):
                if outcome.position and t.prices.get(market.id) != self.marks.get(market.id):
                    raise ProtocolError(m.STALE_MARKS, f"market {market.id}: not the latest batch price")

    def _check_clock(self, now: int) -> None:
        if abs(now - time.time()) > MAX_CLOCK_SKEW:
            raise ProtocolError(m.CLOCK_SKEW, f"proposal time {now} is more than {MAX_CLOCK_SKEW}s from ours")

    def _check_marks(self, marks: Any) -> None:
        """Every mark is a broker-signed batch price of its market that we hold (the latest, or
        an earlier one when we countersign a proposal made while we were away)."""
        for market, price in marks.items():
            if self.marks.get(market) != price and price not in self.signed_prices.get(market, set()):
                raise ProtocolError(m.STALE_MARKS, f"market {market}: {price} is not the latest batch price")

    def _on_batch_price(self, msg: m.BatchPriceMessage) -> None:
        """Keep every batch price (evidence, also handed to the watchtower); a second, different
        price for one batch is kept too, and proven on-chain at once (two prices)."""
        if self.welcome is None:
            raise ProtocolError(m.NOT_AUTHENTICATED, "no welcome yet")
        try:
            verify(self.domain.batch_price_digest(msg.batch_price), msg.signature, self.welcome.broker)
        except SignatureError as exc:
            raise ProtocolError(m.BAD_SIGNATURE, exc.reason) from exc
        price = msg.batch_price
        record = StoredBatchPrice(self.welcome.broker, price, msg.signature)
        self.signed_prices.setdefault(price.market, set()).add(price.price)
        earlier = self.store.batch_prices(self.welcome.broker, price.market, price.batch)
        if self.store.put_batch_price(record):
            crash_point("trader.batch_price.stored")
            self.batch_prices_seen += 1
            if self.watchtower is not None:
                self.watchtower.price(self.welcome.broker, price, record.signature)
            other = two_prices(earlier, record)
            if other is not None:
                self.conflicts.append((other, record))
                self.events.append(("two_prices", f"market {price.market} batch {price.batch}"))
                self._spawn(self.prove_two_prices(other, record))
            self._check_own_orders(price)
        if price.batch >= self.mark_batches.get(price.market, 0):
            self.mark_batches[price.market] = price.batch
            self.marks[price.market] = price.price
        self.open_batches[price.market] = max(self.open_batches.get(price.market, 1), price.batch + 1)

    def _load_marks(self) -> None:
        if self.party is None:
            return
        for market, record in self.store.latest_batch_prices(self.party.params.broker).items():
            self.marks[market] = record.price.price
            self.mark_batches[market] = record.price.batch
            self.open_batches[market] = record.price.batch + 1

    def _on_sync(self, msg: m.Sync) -> None:
        party = self._require_party(msg.channel_id)
        if msg.state.version > party.co_signed.state.version:
            party.adopt(msg.state, msg.trader_signature, msg.broker_signature)
        if party.flow == COOPERATIVE and msg.turn == TRADER and party.turn != TRADER:
            party.on_yield(m.Yield(party.channel_id, party.state.version))

    # ------------------------------------------------------------------ holding the broker to its prices

    def _check_own_orders(self, price: BatchPrice) -> None:
        """Check a new price against our own open orders. An order it crosses must be filled by
        the Trade of that batch, before the next batch of the market is priced; one still open
        then, with no Trade pending, was left out without a co-signed state to prove it. That is
        reported (``not_filled``): the signed price is kept, and handed to the watchtower, as
        evidence that fills the order in a dispute."""
        party = self.party
        if party is None:
            return
        for (market, batch), nonces in list(self.expected_fills.items()):
            if market != price.market or batch >= price.batch:
                continue
            del self.expected_fills[(market, batch)]
            open_now = {o.order.nonce for o in party.co_signed.state.open_orders}
            missed = [n for n in nonces if n in open_now]
            if missed and party.pending is None:
                self.events.append(
                    (
                        "not_filled",
                        f"order(s) {', '.join(map(str, missed))} crossed by batch {batch} of market {market} got no "
                        "trade: the signed price is evidence for a dispute",
                    )
                )
        state = party.co_signed.state
        try:
            crossed = [
                o.order.nonce
                for i, o in enumerate(state.open_orders)
                if evidence_crosses(party.params, state, i, price)
            ]
        except ValidationError:  # a market outside the channel crosses nothing of ours
            return
        if crossed:
            self.expected_fills[(price.market, price.batch)] = crossed

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _after_change(self) -> None:
        """After anything changed: hand a new co-signed state to the watchtower and check it for
        a left-out order."""
        party = self.party
        if party is None or not party.co_signed.broker_signature or not party.co_signed.trader_signature:
            return
        signed = party.co_signed
        if signed.state.version <= self._checked_version:
            return
        self._checked_version = signed.state.version
        if self.watchtower is not None:
            self.watchtower.watch(party.params, signed)
        if party.status in ENDED:
            return
        broker = party.params.broker
        proofs = left_out_orders(
            party.params,
            signed.state,
            lambda market, first, last: self.store.batch_prices_between(broker, market, first, last),
            int(time.time()),
        )
        if proofs:
            nonces = ", ".join(str(p.open_order.order.nonce) for p in proofs)
            self.events.append(("left_out_order", f"version {signed.state.version} leaves out order(s) {nonces}"))
            self._spawn(self.prove_left_out_order(signed, proofs[0]))

    async def prove_two_prices(self, first: StoredBatchPrice, second: StoredBatchPrice) -> None:
        """Prove on-chain that the broker signed ``first`` and ``second`` for one batch, then take
        this channel (every channel of a slashed broker goes to its trader)."""
        try:
            await self._retry_on_chain(
                self.adjudicator.prove_two_prices,
                self.transactor,
                first.broker,
                (first.price, first.signature),
                (second.price, second.signature),
            )
            self.events.append(("proved_two_prices", f"market {first.price.market} batch {first.price.batch}"))
        except errors.BrokerAlreadySlashed:
            self.events.append(("broker_already_slashed", first.broker))
        await self.claim_if_broker_slashed()

    async def _watch_slashing(self) -> None:
        """Every ``slash_check_seconds``, look whether someone proved that the broker signed two
        prices (perhaps with a price this trader never saw), and if so take the channel."""
        while True:
            await asyncio.sleep(self.slash_check_seconds)
            try:
                await self.claim_if_broker_slashed()
            except TradingChannelsError as exc:  # the node is away: look again next time
                self.events.append(("slash_check_failed", f"{exc.code}: {exc.reason}"))

    async def claim_if_broker_slashed(self) -> bool:
        """If the broker has been slashed, conclude this channel at once: the trader takes all of
        its funds. True if the channel is (now) concluded that way."""
        party = self.party
        if party is None or party.status in ENDED:
            return False
        if await on_chain(self.chain, self.adjudicator.slashed_at, party.params.broker) is None:
            return False
        try:
            receipt = await self._retry_on_chain(self.adjudicator.conclude_slashed, self.transactor, party.params)
        except errors.ChannelConcluded:
            self.events.append(("already_concluded", f"0x{party.channel_id.hex()}"))
        else:
            (event,) = self.adjudicator.events(receipt, "Concluded")
            self.events.append(("took_channel", f"the broker is slashed: {event['toTrader']} to the trader"))
        party.set_status("concluded")
        await self._notify()
        return True

    async def prove_left_out_order(self, signed: CoSignedState, proof: LeftOutOrder) -> None:
        """Prove on-chain with ``signed`` that the broker left out an order: the trader takes the
        channel at once."""
        party = self._party()
        try:
            receipt = await self._retry_on_chain(
                self.adjudicator.prove_left_out_order,
                self.transactor,
                party.params,
                signed,
                proof.index,
                (proof.price.price, proof.price.signature),
            )
        except errors.ChannelConcluded:
            self.events.append(("already_concluded", f"0x{party.channel_id.hex()}"))
        else:
            (event,) = self.adjudicator.events(receipt, "Concluded")
            self.events.append(
                (
                    "proved_left_out_order",
                    f"order {proof.open_order.order.nonce} crossed by batch {proof.price.price.batch}: "
                    f"{event['toTrader']} to the trader",
                )
            )
        party.set_status("concluded")
        await self._notify()

    async def _retry_on_chain(self, fn: Callable[..., T], *args: Any) -> T:
        """A chain call, retried while the node cannot be reached (a revert is final)."""
        delay = 0.5
        for attempt in range(6):
            try:
                return await on_chain(self.chain, fn, *args)
            except ContractError:
                raise
            except ChainError as exc:
                if attempt == 5:
                    raise
                self.events.append(("chain_retry", exc.reason))
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ the API

    @property
    def channel_id(self) -> ChannelId:
        return self._party().channel_id

    def _party(self) -> ChannelParty:
        if self.party is None:
            raise TradingChannelsError("no channel yet: open one first")
        return self.party

    @property
    def state(self) -> ChannelState:
        return self._party().co_signed.state

    def open_orders(self) -> tuple[OpenOrder, ...]:
        return self.state.open_orders

    async def open_channel(
        self, deposit: int, flow: str = SERVER_INITIATIVE, challenge_duration: int = 3600, nonce: int | None = None
    ) -> ChannelId:
        """Set up the channel (version 0 co-signed first), deposit, and have the deposits
        accounted for in a co-signed state."""
        if self.party is None:
            nonce = nonce if nonce is not None else int.from_bytes(os.urandom(8), "big")
            welcome = self._welcome()
            if flow == SERVER_INITIATIVE:
                self._expected_setup_nonce = nonce
                self._expected_challenge_duration = challenge_duration
                await self._request(
                    m.RequestSetup(nonce, challenge_duration), lambda: self.party is not None, again=False
                )
            else:
                params = ChannelParams(
                    chain_id=self.chain.chain_id,
                    adjudicator=self.adjudicator.address,
                    trader=self.address,
                    broker=welcome.broker,
                    token=welcome.token,
                    challenge_duration=challenge_duration,
                    nonce=nonce,
                    markets=welcome.markets,
                )
                party, proposal = ChannelParty.propose_setup(self.store, self.state_signer, TRADER, params, flow)
                self.party = party
                crash_point("trader.setup.before_send")
                await self._send(proposal)
            await self._wait(lambda: bool(self._party().co_signed.broker_signature), "the setup's countersignature")
        party = self._party()
        if deposit and party.state.balances.trader_deposit < deposit:
            await self._deposit_on_chain(deposit)
            await self._account_deposits()
        return party.channel_id

    def _welcome(self) -> m.Welcome:
        if self.welcome is None:
            raise TradingChannelsError("not connected to the broker")
        return self.welcome

    async def _deposit_on_chain(self, deposit: int) -> None:
        party = self._party()
        token = TokenClient(self.chain, party.params.token)
        status = await on_chain(self.chain, self.adjudicator.status, party.channel_id)
        missing = deposit - status.trader_deposit
        if missing > 0:
            await on_chain(self.chain, token.approve, self.transactor, self.adjudicator.address, missing)
            crash_point("trader.deposit.before_submit")
            await on_chain(self.chain, self.adjudicator.deposit, self.transactor, party.params, self.address, missing)
            crash_point("trader.deposit.submitted")
            self.events.append(("deposited", str(missing)))

    async def _account_deposits(self) -> None:
        party = self._party()
        await self._wait(lambda: self._broker_deposited, "the broker's deposit", timeout=self.timeout * 2)
        status = await on_chain(self.chain, self.adjudicator.status, party.channel_id)
        target = (status.trader_deposit, status.broker_deposit)

        def accounted() -> bool:
            b = party.co_signed.state.balances
            return (b.trader_deposit, b.broker_deposit) == target and party.pending is None

        if party.flow == SERVER_INITIATIVE:
            await self._request(m.RequestDeposit(party.channel_id), accounted)
        else:
            await self._propose("deposit", AccountDeposits(TokenAmount(target[0]), TokenAmount(target[1])))

    async def place_order(
        self,
        market: int,
        is_buy: bool,
        amount_synthetic: int,
        amount_collateral: int,
        max_fee: int,
        expiration_hours: int | None = None,
    ) -> Nonce:
        """Sign an order and have its collateral locked in a co-signed state; returns its nonce."""
        party = self._party()
        used = party.channel.used_nonces | {o.nonce for o in self.store.orders(party.channel_id)}
        nonce = Nonce(max(used, default=0) + 1)
        order = Order(
            channel_id=party.channel_id,
            trader=self.address,
            collateral=party.params.token,
            market=MarketId(market),
            is_buy=is_buy,
            amount_synthetic=SyntheticAmount(amount_synthetic),
            amount_collateral=TokenAmount(amount_collateral),
            max_fee=TokenAmount(max_fee),
            nonce=nonce,
            expiration=ExpirationHours(expiration_hours or int(time.time()) // 3600 + 24),
        )
        signature = self.signer.sign(self.domain, order)
        self.store.put_order(StoredOrder(party.channel_id, nonce, order, signature))
        crash_point("trader.order.stored")
        if party.flow == SERVER_INITIATIVE:
            await self._request(
                m.CreateOrderRequest(party.channel_id, order, signature), lambda: nonce in party.channel.used_nonces
            )
        else:
            await self._propose(
                "lock",
                lambda: CreateOrder(
                    order,
                    signature,
                    BatchNumber(self.open_batches.get(market, 1)),
                    Timestamp(int(time.time())),
                    dict(self.marks),
                ),
            )
        return nonce

    async def cancel_order(self, nonce: int) -> None:
        party = self._party()
        if party.flow == SERVER_INITIATIVE:
            self._requested_cancels.add(nonce)
            await self._request(
                m.CancelOrderRequest(party.channel_id, Nonce(nonce)),
                lambda: party.channel.open_order(nonce) is None and party.pending is None,
            )
        else:
            await self._propose("cancel", CancelOrder(Nonce(nonce)))

    async def finalize(self) -> ChannelState:
        """Close every position at the latest batch prices and co-sign the final state."""
        party = self._party()
        if party.flow == SERVER_INITIATIVE:
            self._requested_finalize = True
            await self._request(m.RequestFinalize(party.channel_id), lambda: party.co_signed.state.is_final)
        else:

            def prices() -> Finalize:
                return Finalize(
                    {
                        mk.id: self.marks[mk.id]
                        for mk, outcome in zip(party.params.markets, party.state.outcomes, strict=True)
                        if outcome.position
                    }
                )

            await self._propose("finalize", prices)
        return party.co_signed.state

    async def close_on_chain(self) -> dict[str, Any]:
        """Submit the co-signed final state: the adjudicator pays both parties at once."""
        party = self._party()
        if not party.co_signed.state.is_final:
            raise TradingChannelsError("the channel has no co-signed final state yet")
        crash_point("trader.close.before_submit")
        receipt = await on_chain(self.chain, self.adjudicator.close, self.transactor, party.params, party.co_signed)
        crash_point("trader.close.submitted")
        party.set_status("closed")
        return dict(receipt)

    async def wait_batches(self, count: int, market: int | None = None) -> None:
        """Wait until ``count`` more batch prices (of ``market``, or any) have arrived."""
        start = dict(self.open_batches)
        if market is None:
            target = self.batch_prices_seen + count
            await self._wait(lambda: self.batch_prices_seen >= target, f"{count} batch prices", self.timeout * count)
        else:
            goal = start.get(market, 1) + count
            await self._wait(lambda: self.open_batches.get(market, 1) >= goal, f"{count} batches of market {market}")
        party = self._party()
        await self._wait(lambda: party.pending is None, "the trades of those batches")

    async def wait_until(self, predicate: Callable[[], bool], what: str, timeout: float | None = None) -> None:
        await self._wait(predicate, what, timeout)

    # ------------------------------------------------------------------ request / propose plumbing

    async def _request(self, message: m.Message, done: Callable[[], bool], again: bool = True) -> None:
        """Send an unsigned request (server-initiative flow) and wait until ``done`` holds; a late
        answer sends it ``again`` after reconnecting (a request already carried out is refused
        then, which changes nothing)."""
        if self.party is not None:
            self._require_trading(self.party)
        message_id = await self._send(message)
        await self._until(message_id, done, m.type_name(message), message if again else None)

    async def _until(
        self, message_id: str, done: Callable[[], bool], what: str, again: m.Message | None = None
    ) -> None:
        """Wait until ``done`` holds or the broker refuses ``message_id``.

        An answer later than the timeout may have been lost on a live connection: the trader
        reconnects and resumes (the pending proposal is sent again, and the broker re-sends its
        own), sends ``again`` once more, and waits another timeout. A broker still silent then is
        reported unresponsive, and the channel is challenged on-chain if it stays so for
        ``dispute_after`` seconds (agents/fallback.py)."""
        try:
            await self._answer(message_id, done, what, refusal_ends=True)
        except AgentTimeout:
            if not await self._reconnect(what):
                self._broker_unresponsive(what)
                raise
            retry_id = await self._send(again) if again is not None else message_id
            try:
                # A refusal of a repeated request may only mean it was carried out the first time.
                await self._answer(retry_id, done, what, refusal_ends=again is None)
            except AgentTimeout:
                self._broker_unresponsive(what)
                raise
        finally:
            self._replies.pop(message_id, None)

    async def _answer(self, message_id: str, done: Callable[[], bool], what: str, refusal_ends: bool) -> None:
        """Wait until ``done`` holds (AgentTimeout after the timeout). A refusal of ``message_id``
        is raised at once with ``refusal_ends``, else only if ``done`` still fails at the end."""
        future = self._replies.setdefault(message_id, asyncio.get_running_loop().create_future())
        waiter = asyncio.ensure_future(self._wait(done, what))
        try:
            if refusal_ends:
                finished, _ = await asyncio.wait({waiter, future}, return_when=asyncio.FIRST_COMPLETED)
                if future in finished and not done():
                    future.result()  # raises RequestRefused
            try:
                await waiter
            except AgentTimeout:
                if future.done() and not future.cancelled():
                    future.result()  # the refusal is the answer
                raise
        finally:
            self._replies.pop(message_id, None)
            for task in (waiter, future):
                if not task.done():
                    task.cancel()

    async def _reconnect(self, what: str) -> bool:
        """Drop the connection and wait for the next one (its resume re-sends what is pending)."""
        self.events.append(("reconnecting", f"late answer: {what}"))
        old = self.ws
        if old is not None:
            await old.close()
        try:
            await self._wait(lambda: self.ws is not None and self.ws is not old, "a reconnection")
        except AgentTimeout:
            return False
        self.events.append(("reconnected", f"resumed after a late answer: {what}"))
        return True

    @staticmethod
    def _require_trading(party: ChannelParty) -> None:
        """Nothing is asked for or proposed in a channel in a dispute or paid out on-chain."""
        if party.status not in (OPEN, UNRESPONSIVE):
            raise ProtocolError(m.CHANNEL_CLOSED, f"the channel is {party.status} on-chain")

    def _broker_unresponsive(self, what: str) -> None:
        self.events.append(("unresponsive", f"the broker did not answer: {what}"))
        party = self.party
        if party is None:
            return
        if party.status == OPEN:
            party.set_status(UNRESPONSIVE)
        self.fallback.unresponsive(party)

    def _broker_answered(self) -> None:
        """A countersignature or a proposal we accepted: the broker is back."""
        party = self.party
        if party is not None and party.status == UNRESPONSIVE and party.pending is None:
            party.set_status(OPEN)
            self.fallback.responsive(party)
            self.events.append(("responsive", "the broker answers again"))

    async def _propose(self, kind: str, transition: Any) -> None:
        """Cooperative flow: take the turn, propose, wait for the ACK, yield the turn.

        A refusal is final for this proposal: we signed its state, so its version can only ever
        carry that state (MISSION.md, "Signatures"); the error is raised to the caller. A ``store``
        refusal (the broker could not write) is not final: the proposal stays pending and is
        re-sent on the next connection."""
        party = self._party()
        self._require_trading(party)
        self._busy = True
        try:
            if not party.my_turn():
                request = m.RequestYield(party.channel_id)
                message_id = await self._send(request)
                await self._until(message_id, party.my_turn, "the turn", request)
            built = transition() if callable(transition) else transition
            proposal, _ = party.propose(kind, built)
            crash_point("trader.proposal.before_send")
            message_id = await self._send(proposal)
            crash_point("trader.proposal.sent")
            try:
                await self._until(message_id, lambda: party.pending is None, f"the ACK of {kind}")
            except RequestRefused as exc:
                if exc.code != StoreError.code:
                    self._withdraw_pending()
                # else the broker could not store it (a full disk): nothing of it was signed there,
                # and the same signed proposal is re-sent on the next connection.
                raise
            if party.my_turn() and party.pending is None:
                await self._send(party.yield_turn())
        finally:
            self._busy = False
            await self._notify()

    def _withdraw_pending(self) -> None:
        """The broker refused our proposal: forget it (we signed it, so the version stays
        burned in our signature log; the next proposal uses it only with the same state)."""
        party = self._party()
        if party.pending is not None:
            with self.store.transaction():
                party.pending = None
                party.save()


def _channel_of(raw: str | bytes) -> ChannelId | None:
    """The channel id of a refused message, when it has a well-formed one (for the reply)."""
    try:
        data = m.load_frame(raw)  # within the size and nesting bounds: a refused frame may be hostile
        value = data.get("channel_id") if isinstance(data, dict) else None
        if isinstance(value, str) and len(value) == 66 and value.startswith("0x"):
            return ChannelId(bytes.fromhex(value[2:]))
    except (m.ProtocolError, ValueError):
        pass
    return None
