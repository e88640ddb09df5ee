"""The broker agent: a WebSocket server for many traders, the markets' batch auctions, and its
side of every channel.

Per market the broker numbers batches from 1. Orders locked while batch ``b`` is open are
eligible from ``b``. Every ``batch_seconds`` it cuts each market's book, computes the uniform
clearing price (:func:`offchain.engine.auction.clear`), stores and signs
``BatchPrice{market, batch, price}``, sends it to every connected trader, and turns the fills
into one co-signed Trade state per channel before it opens batch ``b + 1``. A trader that does
not countersign within ``ack_timeout`` is reported unresponsive (the dispute path takes over)
and its channel takes no further part until it answers.

No order changes while a book is cut: in the server-initiative flow the broker is the only
proposer and finishes its own proposals in flight before the cut and starts new ones after the
batch is settled; in the cooperative flow the turn rests with the broker (a trader asks for it
with ``request_yield`` and yields it back after its proposal), the broker grants no turn while
it settles a batch, and it cuts only once every turn has come back. So no proposal is ever
refused because a batch is settling, and no trader signs a state the broker then refuses.
"""

from __future__ import annotations

import asyncio
import os
import time
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from websockets.asyncio.connection import Connection
from websockets.asyncio.server import Server, serve
from websockets.exceptions import ConnectionClosed

from offchain.agents import DEFAULT_DISPUTE_AFTER
from offchain.agents.common import error_reply, log, login_signer, on_chain, send
from offchain.agents.fallback import DisputeFallback
from offchain.chain.client import AdjudicatorClient, TokenClient
from offchain.chain.connection import Chain, Transactor
from offchain.crashpoints import crash_point
from offchain.eip712 import Domain
from offchain.engine.auction import BookOrder, clear
from offchain.engine.channel import (
    AccountDeposits,
    CancelOrder,
    Channel,
    CreateOrder,
    Fill,
    Finalize,
    Trade,
    Transitioned,
    apply,
)
from offchain.engine.rules import RuleViolation, fee_lock, fill_collateral
from offchain.engine.slashing import left_out_orders
from offchain.errors import ChainError, ContractError, SignatureError, TradingChannelsError
from offchain.model import (
    MAX_CHALLENGE_DURATION,
    MIN_CHALLENGE_DURATION,
    BatchPrice,
    ChannelParams,
    Market,
    OpenOrder,
    Order,
)
from offchain.protocol import messages as m
from offchain.protocol.messages import ProtocolError
from offchain.protocol.party import BROKER, COOPERATIVE, OPEN, SERVER_INITIATIVE, UNRESPONSIVE, ChannelParty
from offchain.signing import BatchPriceSigner, LocalSigner, StateSigner, verify
from offchain.store import Store, StoredBatchPrice, StoreError
from offchain.types import (
    Address,
    BatchNumber,
    ChannelId,
    MarketId,
    Nonce,
    Price,
    Signature,
    SyntheticAmount,
    Timestamp,
    TokenAmount,
)

T = TypeVar("T")

MARK_LOOKBACK = 1000
"""Batches searched back for the signed price behind a mark when a trader resumes."""

MAX_CLOCK_SKEW = 300
"""Seconds a proposal's ``now`` may differ from our clock."""
HISTORY_KEPT = 1024
"""Signed prices a market book keeps in memory before it drops those that no open, unexpired
order can need any more (they stay in the store)."""
DEPOSIT_ATTEMPTS = 8
"""Tries of the broker's deposit into a channel while the node cannot be reached (about 16 s)."""


@dataclass
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    batch_seconds: float = 2.0
    fee_bps: int = 10  # fee charged, in basis points of the fill's collateral, within the order's max fee
    ack_timeout: float = 10.0
    channel_deposit: int = 0  # what the broker deposits into each new channel
    markets: tuple[Market, ...] = ()
    reference_prices: dict[int, int] = field(default_factory=dict)  # before a market's first batch
    dispute_after: float | None = DEFAULT_DISPUTE_AFTER
    """Seconds a trader may stay unresponsive before the broker challenges its channel (None:
    never; challenges of its channels by others are answered all the same)."""
    dispute_poll_seconds: float = 1.0


@dataclass
class MarketBook:
    market: Market
    open_batch: int
    last_price: int
    priced: bool
    history: list[StoredBatchPrice] = field(default_factory=list)
    """The broker's signed prices by batch, from the first batch of the oldest open, unexpired
    order of the market (what the check for left-out orders reads; see :meth:`forget_before`)."""
    forget_at: int = HISTORY_KEPT
    """The length of ``history`` at which the broker next drops what no order needs."""

    def prices_between(self, first: int, last: int) -> list[StoredBatchPrice]:
        lo = bisect_left(self.history, first, key=_batch_of)
        hi = bisect_right(self.history, last, key=_batch_of)
        return self.history[lo:hi]

    def forget_before(self, batch: int) -> None:
        """Drop the prices of the batches before ``batch`` from memory; the next drop waits
        until the history has doubled (or reached :data:`HISTORY_KEPT`)."""
        del self.history[: bisect_left(self.history, batch, key=_batch_of)]
        self.forget_at = max(HISTORY_KEPT, 2 * len(self.history))


def _trades_json(batch: int, trades: dict[bytes, Trade]) -> dict[str, Any]:
    return {"batch": str(batch), "trades": {"0x" + cid.hex(): m.transition_to_json(t) for cid, t in trades.items()}}


def _batch_of(record: StoredBatchPrice) -> int:
    return record.price.batch


def _snapshot(party: ChannelParty) -> tuple[Any, ...]:
    """What a party holds in memory that a step may change (as ``ChannelParty._atomic`` keeps it)."""
    return (party.channel, party.co_signed, party.turn, party.status, party.pending)


def _restore(party: ChannelParty, snapshot: tuple[Any, ...]) -> None:
    """Put back what :func:`_snapshot` kept after a group commit failed. The party's record of
    what it last wrote is forgotten, so that its next save writes in full (as ``save`` does)."""
    party.channel, party.co_signed, party.turn, party.status, party.pending = snapshot
    party._saved = None


class BrokerAgent:
    """The broker: one process, many channels, one store."""

    def __init__(
        self,
        signer: LocalSigner,
        store: Store,
        chain: Chain,
        adjudicator: Address,
        token: Address,
        config: BrokerConfig,
    ) -> None:
        self.signer = signer
        self.store = store
        self.chain = chain
        self.config = config
        self.adjudicator = AdjudicatorClient(chain, adjudicator)
        self.token = TokenClient(chain, token)
        self.transactor = Transactor.from_key(chain, signer.private_key)
        self.domain = Domain(chain.chain_id, adjudicator)
        self.state_signer = StateSigner(signer, self.domain, log=store)
        self.price_signer = BatchPriceSigner(signer, self.domain, log=store)
        self.parties: dict[ChannelId, ChannelParty] = {}
        self.connections: dict[Address, set[Connection]] = defaultdict(set)
        self.channel_locks: dict[ChannelId, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.ack_waiters: dict[ChannelId, asyncio.Future[None]] = {}
        self.turn_events: dict[ChannelId, asyncio.Event] = defaultdict(asyncio.Event)
        self.deposit_tasks: dict[ChannelId, asyncio.Task[None]] = {}
        self.books: dict[int, MarketBook] = {}
        self.unresponsive: set[ChannelId] = set()
        self.settling = False  # a batch is being cut, priced and settled
        self.inflight = 0  # broker proposals in flight that change orders or balances
        self.phase = asyncio.Condition()
        self.yield_requested: dict[ChannelId, str] = {}  # channel -> the id of its request_yield
        self.unsettled: dict[int, set[bytes]] = {}  # per market: channels whose trade is still to propose
        self.events: list[tuple[str, str]] = []  # (kind, detail) for tests, logs and the demo
        # The group commit (see _grouped): steps waiting for the next transaction.
        self._group: list[tuple[ChannelParty | None, Callable[[], Any], asyncio.Future[Any]]] = []
        self._group_scheduled = False
        self._server: Server | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.fallback = DisputeFallback(
            signer,
            chain,
            adjudicator,
            config.dispute_after,
            poll_seconds=config.dispute_poll_seconds,
            report=self._event,
        )
        self.fallback.follow(store, self.parties.get)
        self._load()

    @property
    def address(self) -> Address:
        return self.signer.address

    # ------------------------------------------------------------------ start and stop

    def _load(self) -> None:
        """Resume every channel and market from the store."""
        for market in self.config.markets:
            saved = self.store.meta("broker.market", str(market.id)) or {}
            book = MarketBook(
                market=market,
                open_batch=int(saved.get("open_batch", 1)),
                last_price=int(saved.get("last_price", self.config.reference_prices.get(market.id, 1))),
                priced=bool(saved.get("priced", False)),
            )
            self.books[market.id] = book
        for channel_id in self.store.channel_ids():  # one at a time: 100k records at once cost memory
            party = ChannelParty.load(self.store, self.state_signer, channel_id)
            self.parties[party.channel_id] = party
            if party.status == UNRESPONSIVE:
                self.unresponsive.add(party.channel_id)
            self.fallback.resume(party)
        now = int(time.time())
        for book in self.books.values():  # the prices an open order may still need, from the store
            first = self._oldest_needed_batch(book, now)
            book.history = self.store.batch_prices_between(self.address, book.market.id, first, book.open_batch - 1)

    def _oldest_needed_batch(self, book: MarketBook, now: int) -> int:
        """The first batch whose signed price the check for left-out orders may still read: the
        first batch of the market's oldest open, unexpired order in any channel (an order
        placed later is eligible from the open batch on)."""
        oldest = book.open_batch
        market = book.market.id
        for party in self.parties.values():
            for open_order in party.state.open_orders:
                order = open_order.order
                if order.market == market and open_order.first_batch < oldest and now < order.expiration * 3600:
                    oldest = open_order.first_batch
        return oldest

    async def start(self) -> None:
        await on_chain(self.chain, self._approve)
        self._server = await serve(
            self._serve, self.config.host, self.config.port, max_size=m.MAX_MESSAGE_BYTES, compression=None
        )
        self._tasks.append(asyncio.create_task(self._batch_loop()))
        self._tasks.append(asyncio.create_task(self.fallback.run()))
        for party in self.parties.values():
            self._maybe_deposit(party)
        log.info("broker %s listening on ws://%s:%d", self.address, self.config.host, self.port)

    @property
    def port(self) -> int:
        if self._server is None:
            return self.config.port
        return int(next(iter(self._server.sockets)).getsockname()[1])

    async def stop(self) -> None:
        for task in self._tasks + list(self.deposit_tasks.values()):
            task.cancel()
        for task in self._tasks + list(self.deposit_tasks.values()):
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _approve(self) -> None:
        if (
            self.config.channel_deposit
            and self.token.contract.functions.allowance(self.address, self.adjudicator.address).call() < 2**255
        ):
            self.token.approve(self.transactor, self.adjudicator.address, 2**256 - 1)

    def _event(self, kind: str, detail: str) -> None:
        self.events.append((kind, detail))
        log.info("%s: %s", kind, detail)

    # ------------------------------------------------------------------ connections

    async def _serve(self, ws: Connection) -> None:
        trader = await self._authenticate(ws)
        if trader is None:
            return
        self.connections[trader].add(ws)
        try:
            async for raw in ws:
                await self._handle(ws, trader, raw)
        except ConnectionClosed:
            pass
        finally:
            self.connections[trader].discard(ws)

    async def _authenticate(self, ws: Connection) -> Address | None:
        nonce = os.urandom(32)
        await send(ws, m.Challenge(nonce, self.address))
        try:
            raw = await asyncio.wait_for(ws.recv(), timeout=10)
            hello = m.parse(raw)
            if not isinstance(hello, m.Hello):
                raise ProtocolError(m.NOT_AUTHENTICATED, "the first message must be hello")
            try:
                signer = login_signer(self.address, nonce, hello.signature)
            except SignatureError as exc:
                raise ProtocolError(m.AUTH_FAILED, exc.reason) from exc
            if signer != hello.address:
                raise ProtocolError(m.AUTH_FAILED, "the login signature is not from that address")
        except ProtocolError as exc:
            await send(ws, error_reply("", exc))
            await ws.close()
            return None
        except (TimeoutError, ConnectionClosed):
            await ws.close()
            return None
        channels = tuple(p.channel_id for p in self.parties.values() if p.params.trader == hello.address)
        await send(
            ws,
            m.Welcome(
                broker=self.address,
                chain_id=self.chain.chain_id,
                adjudicator=self.adjudicator.address,
                token=self.token.address,
                markets=tuple(b.market for b in self.books.values()),
                batch_seconds=max(1, round(self.config.batch_seconds)),
                fee_bps=self.config.fee_bps,
                open_batches={k: b.open_batch for k, b in self.books.items()},
                channels=channels,
            ),
        )
        # The latest signed price of every market: the marks a newcomer needs to check states.
        for record in self.store.latest_batch_prices(self.address).values():
            await send(ws, m.BatchPriceMessage(record.price, Signature(record.signature)))
        return hello.address

    async def _handle(self, ws: Connection, trader: Address, raw: str | bytes) -> None:
        message_id = ""
        channel_id: bytes | None = None
        try:
            message = m.parse(raw)
            message_id = message.id
            channel_id = getattr(message, "channel_id", None)
            await self._dispatch(ws, trader, message)
        except ProtocolError as exc:
            await send(ws, error_reply(message_id, exc, channel_id))
        except RuleViolation as exc:
            await send(
                ws, error_reply(message_id, ProtocolError(m.RULE_VIOLATION, exc.reason, exc.rule.value), channel_id)
            )
        except TradingChannelsError as exc:
            await send(ws, error_reply(message_id, ProtocolError(exc.code, exc.reason), channel_id))

    def _party_of(self, trader: Address, channel_id: bytes) -> ChannelParty:
        party = self.parties.get(ChannelId(channel_id))
        if party is None:
            raise ProtocolError(m.UNKNOWN_CHANNEL, f"unknown channel 0x{channel_id.hex()}")
        if party.params.trader != trader:
            raise ProtocolError(m.NOT_YOUR_CHANNEL, "this channel belongs to another trader")
        return party

    async def _dispatch(self, ws: Connection, trader: Address, msg: m.Message) -> None:
        if isinstance(msg, m.RequestSetup):
            self._spawn(self._setup_server_initiative(ws, trader, msg))
        elif isinstance(msg, m.Propose):
            await self._on_propose(ws, trader, msg)
        elif isinstance(msg, m.Ack):
            party = self._party_of(trader, msg.channel_id)
            await self._grouped(party, lambda: party.on_ack(msg))
            crash_point("broker.ack_received")
            # A setup ACK that came after the ACK timeout, or after a restart: deposit now (idempotent).
            self._maybe_deposit(party)
            waiter = self.ack_waiters.get(party.channel_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            self._mark_responsive(party)
        elif isinstance(msg, m.Yield):
            party = self._party_of(trader, msg.channel_id)
            await self._grouped(party, lambda: party.on_yield(msg))
            self.turn_events[party.channel_id].set()
        elif isinstance(msg, m.RequestYield):
            party = self._party_of(trader, msg.channel_id)
            if party.flow != COOPERATIVE:
                raise ProtocolError(m.WRONG_FLOW, "turns belong to the cooperative flow")
            self.yield_requested[party.channel_id] = msg.id
            await self._grant_turns()
        elif isinstance(msg, m.CreateOrderRequest):
            party = self._server_initiative(trader, msg.channel_id)
            self._check_order_request(party, msg.order, msg.signature)
            self._spawn(self._propose_lock(party, msg, ws))
        elif isinstance(msg, m.CancelOrderRequest):
            party = self._server_initiative(trader, msg.channel_id)
            self._spawn(self._propose_cancel(party, msg, ws))
        elif isinstance(msg, m.RequestDeposit):
            party = self._server_initiative(trader, msg.channel_id)
            self._spawn(self._propose_deposit(party, msg, ws))
        elif isinstance(msg, m.RequestFinalize):
            party = self._server_initiative(trader, msg.channel_id)
            self._spawn(self._propose_finalize(party, msg, ws))
        elif isinstance(msg, m.Resume):
            await self._resume(ws, self._party_of(trader, msg.channel_id))
        elif isinstance(msg, m.ErrorReply):
            # The trader refused something of ours: the proposal stays unanswered (the dispute
            # path takes over if it never is); stop waiting for an ACK that will not come.
            self._event("refused_by_trader", f"{trader}: {msg.code}: {msg.reason}")
            if msg.channel_id is not None:
                self._party_of(trader, msg.channel_id)  # only about the sender's own channels
                waiter = self.ack_waiters.get(ChannelId(msg.channel_id))
                if waiter is not None and not waiter.done():
                    waiter.set_exception(ProtocolError(msg.code, msg.reason, msg.rule))
        else:
            raise ProtocolError(m.UNKNOWN_TYPE, f"a broker does not accept {m.type_name(msg)}")

    # ------------------------------------------------------------------ group commit

    async def _grouped(self, party: ChannelParty | None, step: Callable[[], T]) -> T:
        """Run ``step`` (a synchronous step of ``party`` that writes to the store: countersigning
        a proposal, taking an ACK or a yield) in the next group commit, and return its result once
        the group's transaction is committed, i.e. durable (MISSION.md: a state is stored before
        it is acknowledged; group commit).

        The steps that arrive while the event loop is busy (from every connection) are run one
        after the other in one store transaction, each in its own savepoint, then committed with
        one fsync; only then does any of them get its result, so no ACK leaves before its state
        is on disk. A step that raises undoes its own writes only (its savepoint, and the party's
        memory, by ``ChannelParty._atomic``) and gets its exception. A commit that fails fails
        every step of the group with the store's error and puts the parties' memory back as it
        was before the group: nothing of it was stored, so nothing of it is acted on."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._group.append((party, step, future))
        if not self._group_scheduled:
            self._group_scheduled = True
            loop.call_soon(self._commit_group)
        return await future

    def _commit_group(self) -> None:
        self._group_scheduled = False
        group, self._group = self._group, []
        outcomes: list[tuple[bool, Any]] = []
        snapshots: list[tuple[ChannelParty, tuple[Any, ...]]] = []
        try:
            with self.store.transaction():
                for party, step, _ in group:
                    if party is not None:
                        snapshots.append((party, _snapshot(party)))
                    try:
                        with self.store.transaction():  # a savepoint: a failing step undoes its own writes
                            outcomes.append((True, step()))
                    except Exception as exc:  # noqa: BLE001 - handed to the step's caller
                        outcomes.append((False, exc))
        except Exception as exc:  # noqa: BLE001 - the commit failed: nothing of the group is stored
            for party, snapshot in reversed(snapshots):
                _restore(party, snapshot)
            for _, _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, _, future), (ok, value) in zip(group, outcomes, strict=True):
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    def _server_initiative(self, trader: Address, channel_id: bytes) -> ChannelParty:
        party = self._party_of(trader, channel_id)
        if party.flow != SERVER_INITIATIVE:
            raise ProtocolError(m.WRONG_FLOW, "requests belong to the server-initiative flow; propose instead")
        return party

    async def _resume(self, ws: Connection, party: ChannelParty) -> None:
        if party.co_signed.trader_signature:
            signed = party.co_signed
            await send(
                ws,
                m.Sync(
                    party.channel_id,
                    party.params,
                    party.flow,
                    signed.state,
                    signed.trader_signature,
                    signed.broker_signature,
                    party.turn,
                ),
            )
        task = self.deposit_tasks.get(party.channel_id)
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            self._maybe_deposit(party)  # it failed while the node was away: again
            task = self.deposit_tasks.get(party.channel_id)
        if task is not None and task.done() and not task.cancelled() and task.exception() is None:
            # The notice may have gone out while the trader was away (or to a trader since restarted).
            await send(ws, m.Notice(m.BROKER_DEPOSITED, "the broker's deposit is on-chain", party.channel_id))
        if party.pending is not None:
            proposal = party.pending[0]
            if isinstance(proposal.transition, Trade):
                # The trader may have missed these prices while away: it needs them to check.
                for record in self._prices_of(proposal.transition):
                    await send(ws, m.BatchPriceMessage(record.price, Signature(record.signature)))
            await send(ws, proposal)
        self._mark_responsive(party)

    def _prices_of(self, trade: Trade) -> list[StoredBatchPrice]:
        """The signed batch prices a trade refers to: its own batch's and those of its marks."""
        found = [
            r
            for r in self.store.batch_prices(self.address, trade.batch_price.market, trade.batch_price.batch)
            if r.price == trade.batch_price
        ]
        for market, price in trade.marks.items():
            book = self.books.get(market)
            if book is None:
                continue
            for batch in range(book.open_batch - 1, max(0, book.open_batch - 1 - MARK_LOOKBACK), -1):
                match = [r for r in self.store.batch_prices(self.address, market, batch) if r.price.price == price]
                if match:
                    found.append(match[0])
                    break
        return found

    async def _grant_turns(self) -> None:
        """Yield the turn to every trader that asked for it, unless a batch is settling or the
        broker is proposing in that channel (then the turn is granted afterwards)."""
        if self.settling:
            return
        for channel_id, request_id in list(self.yield_requested.items()):
            party = self.parties[channel_id]
            if self.channel_locks[channel_id].locked() or party.pending is not None:
                continue
            del self.yield_requested[channel_id]
            if party.my_turn() and not party.state.is_final:
                try:
                    message = party.yield_turn()
                except StoreError as exc:  # e.g. a full disk: the turn stays ours; say so at once
                    self._event("refused", f"yield in 0x{channel_id.hex()}: {exc.reason}")
                    refusal = error_reply(request_id, ProtocolError(exc.code, exc.reason), channel_id)
                    await self._broadcast_to(party.params.trader, refusal)
                    continue
                crash_point("broker.yield.before_send")
                await self._broadcast_to(party.params.trader, message)

    def _mark_responsive(self, party: ChannelParty) -> None:
        if party.channel_id in self.unresponsive and party.pending is None and party.status == UNRESPONSIVE:
            self.unresponsive.discard(party.channel_id)
            party.set_status(OPEN)
            self.fallback.responsive(party)
            self._event("responsive", f"0x{party.channel_id.hex()}")

    # ------------------------------------------------------------------ proposals of the trader

    async def _on_propose(self, ws: Connection, trader: Address, msg: m.Propose) -> None:
        if msg.kind == "setup":
            assert msg.params is not None
            if msg.params.trader != trader:
                raise ProtocolError(m.BAD_PARAMS, "the channel's trader is not the authenticated address")
            if msg.flow != COOPERATIVE and ChannelId(msg.channel_id) not in self.parties:
                raise ProtocolError(m.WRONG_FLOW, "a server-initiative channel starts with request_setup")
            self._check_params(msg.params)
            party, ack = ChannelParty.accept_setup(self.store, self.state_signer, BROKER, msg)
            self.parties[party.channel_id] = party
            crash_point("broker.setup_ack.before_send")
            await send(ws, ack)
            self._maybe_deposit(party)
            return
        party = self._party_of(trader, msg.channel_id)
        if msg.kind == "trade":
            raise ProtocolError(m.KIND_NOT_ALLOWED, "only the broker proposes trades")
        on_chain_deposits = None
        if msg.kind == "deposit":
            status = await on_chain(self.chain, self.adjudicator.status, party.channel_id)
            on_chain_deposits = (status.trader_deposit, status.broker_deposit)

        def check(channel: Channel, proposal: m.Propose) -> None:
            self._check_trader_proposal(channel, proposal, on_chain_deposits)

        ack = await self._grouped(party, lambda: party.on_proposal(msg, check))
        crash_point("broker.ack.before_send")
        await send(ws, ack)
        crash_point("broker.ack.sent")
        self._mark_responsive(party)

    def _check_trader_proposal(self, channel: Channel, msg: m.Propose, deposits: tuple[int, int] | None = None) -> None:
        t = msg.transition
        if isinstance(t, CreateOrder):
            self._check_clock(t.now)
            book = self.books[t.order.market] if t.order.market in self.books else None
            if book is None:
                raise ProtocolError(m.RULE_VIOLATION, f"market {t.order.market} is not traded", "market_in_channel")
            if t.first_batch != book.open_batch:
                raise ProtocolError(
                    m.RULE_VIOLATION,
                    f"first batch must be the open batch {book.open_batch}, got {t.first_batch}",
                    "first_batch_is_current",
                )
            self._check_marks(t.marks)
        elif isinstance(t, AccountDeposits):
            if deposits is None or t.trader_deposit > deposits[0] or t.broker_deposit > deposits[1]:
                raise ProtocolError(m.DEPOSIT_NOT_SEEN, "the adjudicator holds less than the proposal accounts for")
        elif isinstance(t, Finalize):
            self._check_marks(t.prices, exact=True, channel=channel)

    def _check_clock(self, now: int) -> None:
        if abs(now - time.time()) > MAX_CLOCK_SKEW:
            raise ProtocolError(m.CLOCK_SKEW, f"proposal time {now} is more than {MAX_CLOCK_SKEW}s from ours")

    def marks(self) -> dict[int, Price]:
        """The latest signed batch price of every market that has had a batch."""
        return {k: Price(b.last_price) for k, b in self.books.items() if b.priced}

    def _check_marks(self, marks: dict[int, Price] | Any, exact: bool = False, channel: Channel | None = None) -> None:
        ours = self.marks()
        for market, price in marks.items():
            if ours.get(market) != price:
                raise ProtocolError(m.STALE_MARKS, f"market {market}: {price} is not the latest batch price")
        if exact and channel is not None:
            for market, outcome in zip(channel.params.markets, channel.state.outcomes, strict=True):
                if outcome.position and market.id not in marks:
                    raise ProtocolError(m.STALE_MARKS, f"no closing price for market {market.id}")

    def _check_params(self, params: ChannelParams) -> None:
        if (
            params.broker != self.address
            or params.token != self.token.address
            or params.adjudicator != self.adjudicator.address
            or params.chain_id != self.chain.chain_id
        ):
            raise ProtocolError(m.BAD_PARAMS, "the parameters name another broker, token, adjudicator or chain")
        if params.markets != tuple(b.market for b in self.books.values()):
            raise ProtocolError(m.BAD_PARAMS, "the channel's markets must be the broker's markets")
        if not MIN_CHALLENGE_DURATION <= params.challenge_duration <= MAX_CHALLENGE_DURATION:
            raise ProtocolError(m.BAD_PARAMS, "challenge duration outside the adjudicator's bounds")

    def _check_order_request(self, party: ChannelParty, order: Order, signature: bytes) -> None:
        try:
            verify(self.domain.order_digest(order), signature, party.params.trader)
        except SignatureError as exc:
            raise ProtocolError(m.RULE_VIOLATION, exc.reason, "order_signature_valid") from exc
        if order.market not in self.books:
            raise ProtocolError(m.RULE_VIOLATION, f"market {order.market} is not traded", "market_in_channel")

    # ------------------------------------------------------------------ proposals of the broker

    async def _propose(
        self, party: ChannelParty, kind: str, transition: Any, ws: Connection | None = None, re: str = ""
    ) -> bool:
        """Propose under the channel's lock, wait for the ACK; False if refused or unanswered."""
        async with self.channel_locks[party.channel_id]:
            if party.channel_id in self.unresponsive:
                if ws is not None:
                    refusal = ProtocolError(m.UNRESPONSIVE, "the channel waits for an answer to an earlier proposal")
                    await send(ws, error_reply(re, refusal, party.channel_id))
                return False
            if party.flow == COOPERATIVE and not party.my_turn():
                if not await self._wait_turn(party):
                    return False
            try:
                proposal, _ = party.propose(kind, transition)
            except ProtocolError as exc:
                self._event("refused", f"{kind} in 0x{party.channel_id.hex()}: {exc.reason}")
                if ws is not None:
                    await send(ws, error_reply(re, exc, party.channel_id))
                return False
            except RuleViolation as exc:
                self._event("refused", f"{kind} in 0x{party.channel_id.hex()}: {exc.reason}")
                if ws is not None:
                    refusal = ProtocolError(m.RULE_VIOLATION, exc.reason, exc.rule.value)
                    await send(ws, error_reply(re, refusal, party.channel_id))
                return False
            except StoreError as exc:  # e.g. a full disk: nothing was stored, signed or sent
                self._event("refused", f"{kind} in 0x{party.channel_id.hex()}: {exc.reason}")
                if ws is not None:
                    await send(ws, error_reply(re, ProtocolError(exc.code, exc.reason), party.channel_id))
                return False
            acked = await self._deliver(party, proposal)
        await self._grant_turns()
        return acked

    async def _wait_turn(self, party: ChannelParty) -> bool:
        """Ask for the turn and wait for it; a trader that keeps it too long is unresponsive."""
        event = self.turn_events[party.channel_id]
        event.clear()
        if party.my_turn():
            return True
        await self._broadcast_to(party.params.trader, m.RequestYield(party.channel_id))
        try:
            await asyncio.wait_for(event.wait(), self.config.ack_timeout)
        except TimeoutError:
            self._report_unresponsive(party, "did not yield the turn", reconnect=True)
            return False
        return party.my_turn()

    async def _in_flight(self) -> None:
        """Enter a server-initiative proposal that changes orders: not while a batch settles."""
        async with self.phase:
            await self.phase.wait_for(lambda: not self.settling)
            self.inflight += 1

    async def _done_in_flight(self) -> None:
        async with self.phase:
            self.inflight -= 1
            self.phase.notify_all()

    async def _deliver(self, party: ChannelParty, proposal: m.Propose) -> bool:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ack_waiters[party.channel_id] = future
        crash_point("broker.proposal.before_send")
        await self._broadcast_to(party.params.trader, proposal)
        crash_point("broker.proposal.sent")
        try:
            await asyncio.wait_for(future, self.config.ack_timeout)
        except TimeoutError:
            self._report_unresponsive(party, f"did not countersign version {proposal.state.version}", reconnect=True)
            return False
        except ProtocolError as exc:
            self._report_unresponsive(party, f"refused version {proposal.state.version}: {exc.code}")
            return False
        finally:
            self.ack_waiters.pop(party.channel_id, None)
        return True

    def _report_unresponsive(self, party: ChannelParty, why: str, reconnect: bool = False) -> None:
        """The counterparty stopped answering (or refused our proposal). Recover first: with
        ``reconnect`` (an answer that is late, perhaps lost on the way) the trader's connections
        are dropped, so it reconnects and resumes, and the pending proposal is sent again. A
        channel still unresponsive ``dispute_after`` seconds later is challenged (agents/fallback.py)."""
        self.unresponsive.add(party.channel_id)
        if party.status == OPEN:
            party.set_status(UNRESPONSIVE)
        self._event("unresponsive", f"0x{party.channel_id.hex()}: trader {party.params.trader} {why}")
        self.fallback.unresponsive(party)
        if reconnect:
            for ws in list(self.connections.get(party.params.trader, ())):
                self._spawn(ws.close(code=1011, reason="late answer: reconnect and resume"))

    async def _broadcast_to(self, trader: Address, message: m.Message) -> None:
        for ws in list(self.connections.get(trader, ())):
            await send(ws, message)

    async def _setup_server_initiative(self, ws: Connection, trader: Address, msg: m.RequestSetup) -> None:
        try:
            if not MIN_CHALLENGE_DURATION <= msg.challenge_duration <= MAX_CHALLENGE_DURATION:
                raise ProtocolError(m.BAD_PARAMS, "challenge duration outside the adjudicator's bounds")
            params = ChannelParams(
                chain_id=self.chain.chain_id,
                adjudicator=self.adjudicator.address,
                trader=trader,
                broker=self.address,
                token=self.token.address,
                challenge_duration=msg.challenge_duration,
                nonce=msg.nonce,
                markets=tuple(b.market for b in self.books.values()),
            )
            party, proposal = ChannelParty.propose_setup(
                self.store, self.state_signer, BROKER, params, SERVER_INITIATIVE
            )
        except ProtocolError as exc:
            await send(ws, error_reply(msg.id, exc))
            return
        self.parties[party.channel_id] = party
        async with self.channel_locks[party.channel_id]:
            if await self._deliver(party, proposal):
                self._maybe_deposit(party)

    def _maybe_deposit(self, party: ChannelParty) -> None:
        """Deposit the broker's side once the setup is co-signed (MISSION.md: version 0 first).
        A deposit that failed (the node stayed away through every retry) is tried again."""
        task = self.deposit_tasks.get(party.channel_id)
        if task is not None and not (task.done() and not task.cancelled() and task.exception() is not None):
            return
        if not party.co_signed.trader_signature or party.state.is_final:
            return
        self.deposit_tasks[party.channel_id] = asyncio.create_task(self._deposit(party))

    async def _deposit(self, party: ChannelParty) -> None:
        delay = 0.2
        for attempt in range(DEPOSIT_ATTEMPTS):  # a node that is away for a while: retry (a revert is final)
            try:
                status = await on_chain(self.chain, self.adjudicator.status, party.channel_id)
                if status.broker_deposit < self.config.channel_deposit:  # nothing to do when it is 0
                    amount = self.config.channel_deposit - status.broker_deposit
                    crash_point("broker.deposit.before_submit")
                    await on_chain(
                        self.chain, self.adjudicator.deposit, self.transactor, party.params, self.address, amount
                    )
                    crash_point("broker.deposit.submitted")
                    self._event("deposited", f"{amount} into 0x{party.channel_id.hex()}")
                break
            except ContractError:
                raise
            except ChainError as exc:
                if attempt == DEPOSIT_ATTEMPTS - 1:
                    raise
                self._event("chain_retry", f"deposit into 0x{party.channel_id.hex()}: {exc.reason}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        await self._broadcast_to(
            party.params.trader, m.Notice(m.BROKER_DEPOSITED, "the broker's deposit is on-chain", party.channel_id)
        )

    async def _propose_lock(self, party: ChannelParty, msg: m.CreateOrderRequest, ws: Connection) -> None:
        book = self.books[msg.order.market]
        await self._in_flight()
        try:
            transition = CreateOrder(
                msg.order, msg.signature, BatchNumber(book.open_batch), Timestamp(int(time.time())), self.marks()
            )
            await self._propose(party, "lock", transition, ws, msg.id)
        finally:
            await self._done_in_flight()

    async def _propose_cancel(self, party: ChannelParty, msg: m.CancelOrderRequest, ws: Connection) -> None:
        open_order = party.channel.open_order(msg.nonce)
        if open_order is None:
            await send(ws, error_reply(msg.id, ProtocolError(m.RULE_VIOLATION, "no such open order", "order_is_open")))
            return
        await self._in_flight()
        try:
            await self._propose(party, "cancel", CancelOrder(Nonce(msg.nonce)), ws, msg.id)
        finally:
            await self._done_in_flight()

    async def _propose_deposit(self, party: ChannelParty, msg: m.RequestDeposit, ws: Connection) -> None:
        task = self.deposit_tasks.get(party.channel_id)
        if task is not None:
            await asyncio.shield(task)
        status = await on_chain(self.chain, self.adjudicator.status, party.channel_id)
        transition = AccountDeposits(TokenAmount(status.trader_deposit), TokenAmount(status.broker_deposit))
        await self._propose(party, "deposit", transition, ws, msg.id)

    async def _propose_finalize(self, party: ChannelParty, msg: m.RequestFinalize, ws: Connection) -> None:
        await self._in_flight()
        try:
            prices: dict[int, Price] = {
                mk.id: Price(self.books[mk.id].last_price)
                for mk, outcome in zip(party.params.markets, party.state.outcomes, strict=True)
                if outcome.position
            }
            await self._propose(party, "finalize", Finalize(prices), ws, msg.id)
        finally:
            await self._done_in_flight()

    # ------------------------------------------------------------------ batches

    async def _batch_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.batch_seconds)
            for market_id in list(self.books):
                try:
                    await self.settle_batch(market_id)
                except Exception:  # noqa: BLE001 - a failed batch must not stop the others
                    log.exception("batch of market %d failed", market_id)

    async def settle_batch(self, market_id: int) -> BatchPrice:
        """Cut, price, sign, publish and settle the open batch of one market."""
        book = self.books[market_id]
        async with self.phase:
            await self.phase.wait_for(lambda: not self.settling)
            self.settling = True
            await self.phase.wait_for(lambda: self.inflight == 0)
        try:
            await self._collect_turns()
            await self._finish_trades(book)
            return await self._settle(book)
        finally:
            async with self.phase:
                self.settling = False
                self.phase.notify_all()
            await self._grant_turns()

    async def _collect_turns(self) -> None:
        """Cooperative channels: wait until every turn is back with the broker (a trader
        finishing a proposal yields it; one that keeps it past the timeout is unresponsive)."""
        waiting = [
            p
            for p in self.parties.values()
            if p.flow == COOPERATIVE
            and not p.my_turn()
            and p.channel_id not in self.unresponsive
            and p.status == OPEN
            and not p.state.is_final
            and p.co_signed.broker_signature
        ]
        await asyncio.gather(*(self._wait_turn(p) for p in waiting))

    def book_orders(self, book: MarketBook, now: int) -> tuple[list[BookOrder], dict[tuple[bytes, int], OpenOrder]]:
        """The orders eligible in the open batch, from co-signed states of answering channels."""
        orders: list[BookOrder] = []
        by_key: dict[tuple[bytes, int], OpenOrder] = {}
        for party in self.parties.values():
            if (
                party.channel_id in self.unresponsive
                or party.status != OPEN
                or party.pending is not None
                or party.state.is_final
            ):
                continue
            for open_order in party.state.open_orders:
                order = open_order.order
                if order.market != book.market.id or open_order.first_batch > book.open_batch:
                    continue
                if now >= order.expiration * 3600:
                    continue
                key = (bytes(party.channel_id), int(order.nonce))
                by_key[key] = open_order
                orders.append(
                    BookOrder(
                        key=key,
                        is_buy=order.is_buy,
                        amount_synthetic=order.amount_synthetic,
                        amount_collateral=order.amount_collateral,
                        remaining=order.amount_synthetic - open_order.filled,
                        sequence=len(orders),
                    )
                )
        return orders, by_key

    def fee_for(self, open_order: OpenOrder, amount: int, collateral: int) -> TokenAmount:
        """The broker's fee: ``fee_bps`` of the fill's collateral, within the order's max fee, its
        signed fee ratio, and what the fill releases of the order's fee lock (rounded down, in
        the trader's favour)."""
        order = open_order.order
        fee = collateral * self.config.fee_bps // 10_000
        if order.amount_collateral:
            fee = min(fee, order.max_fee * collateral // order.amount_collateral)
        release = fee_lock(order, open_order.filled) - fee_lock(order, open_order.filled + amount)
        return TokenAmount(min(fee, order.max_fee, release))

    async def _settle(self, book: MarketBook) -> BatchPrice:
        now = Timestamp(int(time.time()))
        orders, by_key = self.book_orders(book, now)
        batch = BatchNumber(book.open_batch)
        # A channel whose fill the engine would refuse (e.g. no longer well leveraged at the new
        # marks) leaves the book and the batch is cleared again, so that every fill priced is a
        # fill co-signed and the broker ends the batch without a net position.
        excluded: set[bytes] = set(self.unsettled.get(book.market.id, ()))  # their last trade comes first
        while True:
            clearing = clear([o for o in orders if o.key[0] not in excluded], book.market.resolution, book.last_price)
            price = BatchPrice(MarketId(book.market.id), batch, Price(clearing.price))
            marks = {**self.marks(), book.market.id: price.price}
            trades = self._trades(clearing.fills, by_key, book, price, now, marks)
            applied: dict[bytes, tuple[Channel, Transitioned]] = {}  # reused by propose: one run each
            refused: set[bytes] = set()
            for cid, trade in trades.items():
                channel = self.parties[ChannelId(cid)].channel
                result = self._would_apply(cid, trade, now)
                if result is None:
                    refused.add(cid)
                else:
                    applied[cid] = (channel, result)
            if not refused:
                break
            excluded |= refused
        signature = self.price_signer.sign_price(price)  # never a second price for this batch
        crash_point("broker.batch.signed")
        # One transaction, stored before anything is published or proposed: the price, the next
        # open batch, the batch's trades (a broker killed before they are all co-signed proposes
        # the rest on restart) and every Trade proposal (our signature on each new state).
        with self._storing_proposals() as snapshots, self.store.transaction():
            self.store.put_batch_price(StoredBatchPrice(self.address, price, signature))
            self.store.put_meta(
                "broker.market",
                str(book.market.id),
                {"open_batch": batch + 1, "last_price": clearing.price, "priced": True},
            )
            self.store.put_meta("broker.trades", str(book.market.id), _trades_json(batch, trades) if trades else None)
            proposals, later = self._store_trade_proposals(trades, snapshots, applied)
        crash_point("broker.batch.stored")
        book.open_batch = batch + 1
        book.history.append(StoredBatchPrice(self.address, price, signature))
        if len(book.history) >= book.forget_at:
            book.forget_before(self._oldest_needed_batch(book, now))
        book.last_price = clearing.price
        book.priced = True
        self._event(
            "batch",
            f"market {book.market.id} batch {batch}: price {clearing.price}, volume {clearing.volume}, "
            f"{len(clearing.fills)} fills" + (f", {len(excluded)} channels left out" if excluded else ""),
        )
        notice = m.BatchPriceMessage(price, signature)
        for trader in list(self.connections):
            await self._broadcast_to(trader, notice)
        crash_point("broker.batch.published")
        await self._deliver_trades(proposals, later)
        self._keep_unsettled(book.market.id)
        return price

    @contextmanager
    def _storing_proposals(self) -> Iterator[list[tuple[ChannelParty, tuple[Any, ...]]]]:
        """Around a store transaction that proposes in many channels: if it fails (nothing of it
        was stored), the parties' memory is put back as it was (see :meth:`_commit_group`)."""
        snapshots: list[tuple[ChannelParty, tuple[Any, ...]]] = []
        try:
            yield snapshots
        except BaseException:
            for party, snapshot in reversed(snapshots):
                _restore(party, snapshot)
            raise

    def _store_trade_proposals(
        self,
        trades: dict[bytes, Trade],
        snapshots: list[tuple[ChannelParty, tuple[Any, ...]]],
        applied: dict[bytes, tuple[Channel, Transitioned]] | None = None,
    ) -> tuple[dict[bytes, m.Propose], dict[bytes, Trade]]:
        """Inside the caller's transaction: store and sign the Trade proposal of every channel
        that can take it at once (answering, no proposal pending or in the making, the turn with
        us), each in its own savepoint. Returns those proposals, and the trades left for the
        one-by-one path (:meth:`_propose`, which waits for the channel's lock or turn). A trade
        refused (the engine, the signature log, the store) is left out and stays unsettled.
        ``applied`` holds the engine's results already computed for the trades (see
        :meth:`ChannelParty.propose`)."""
        proposals: dict[bytes, m.Propose] = {}
        later: dict[bytes, Trade] = {}
        for cid, trade in trades.items():
            party = self.parties[ChannelId(cid)]
            if party.channel_id in self.unresponsive:
                continue  # as _propose: its trade waits until it answers
            if (
                self.channel_locks[party.channel_id].locked()
                or party.pending is not None
                or (party.flow == COOPERATIVE and not party.my_turn())
            ):
                later[cid] = trade
                continue
            snapshots.append((party, _snapshot(party)))
            try:
                with self.store.transaction():  # a savepoint: a refusal undoes this channel's writes only
                    proposal, _ = party.propose("trade", trade, applied.get(cid) if applied else None)
            except (ProtocolError, RuleViolation, StoreError) as exc:
                self._event("refused", f"trade in 0x{party.channel_id.hex()}: {exc.reason}")
                continue
            proposals[cid] = proposal
        return proposals, later

    async def _deliver_trades(self, proposals: dict[bytes, m.Propose], later: dict[bytes, Trade]) -> None:
        """Send every stored Trade proposal, then wait for the ACKs (taken in group commits, as
        they come); a channel that does not countersign within ``ack_timeout`` is unresponsive.
        The channels' locks are held until then, as :meth:`_propose` holds them."""
        locks = [self.channel_locks[ChannelId(cid)] for cid in proposals]
        for lock in locks:
            await lock.acquire()  # free (checked when proposing, nothing ran since): no wait
        try:
            loop = asyncio.get_running_loop()
            waiters: dict[bytes, asyncio.Future[None]] = {}
            for cid in proposals:
                waiters[cid] = self.ack_waiters[ChannelId(cid)] = loop.create_future()
            try:
                await asyncio.gather(
                    *(self._send_proposal(proposal) for proposal in proposals.values()),
                    *(self._propose(self.parties[ChannelId(cid)], "trade", trade) for cid, trade in later.items()),
                )
                if waiters:
                    await asyncio.wait(waiters.values(), timeout=self.config.ack_timeout)
            finally:
                for cid, waiter in waiters.items():
                    if self.ack_waiters.get(ChannelId(cid)) is waiter:
                        del self.ack_waiters[ChannelId(cid)]
            for cid, waiter in waiters.items():
                party, version = self.parties[ChannelId(cid)], proposals[cid].state.version
                if not waiter.done():
                    waiter.cancel()
                    self._report_unresponsive(party, f"did not countersign version {version}", reconnect=True)
                elif waiter.exception() is not None:
                    exc = waiter.exception()
                    code = exc.code if isinstance(exc, ProtocolError) else type(exc).__name__
                    self._report_unresponsive(party, f"refused version {version}: {code}")
        finally:
            for lock in locks:
                lock.release()

    async def _send_proposal(self, proposal: m.Propose) -> None:
        party = self.parties[proposal.channel_id]
        crash_point("broker.trade_proposal.before_send")
        await self._broadcast_to(party.params.trader, proposal)
        crash_point("broker.trade_proposal.sent")

    def _unproposed_trades(self, market_id: int) -> dict[bytes, Trade]:
        """The stored trades of the market's last batch not yet proposed (after a crash between
        storing the batch price and proposing every trade, or a channel that did not answer).
        A trade that no longer applies (the order was cancelled meanwhile) is dropped: the trader
        holds the signed price as evidence for a dispute."""
        saved = self.store.meta("broker.trades", str(market_id))
        if not saved:
            return {}
        batch = int(saved["batch"])
        left: dict[bytes, Trade] = {}
        for cid_hex, raw in saved["trades"].items():
            party = self.parties.get(ChannelId(bytes.fromhex(cid_hex[2:])))
            if party is None or party.state.is_final:
                continue
            if party.state.outcomes[party.params.market_index(market_id)].last_batch >= batch:
                continue  # co-signed already (the common case: checked before parsing the trade)
            trade = m.transition_from_json("trade", raw)
            if not isinstance(trade, Trade):
                continue
            pending = party.pending[0].transition if party.pending is not None else None
            if isinstance(pending, Trade) and pending.batch_price == trade.batch_price:
                continue  # proposed; delivered when the trader resumes
            try:
                apply(party.channel, trade)
            except RuleViolation as exc:
                self._event("left_out", f"{cid_hex} from batch {batch}: {exc.reason}")
                continue
            left[party.channel_id] = trade
        return left

    def _keep_unsettled(self, market_id: int) -> None:
        """Forget the stored trades of the market once all are proposed; else remember which are not."""
        left = self._unproposed_trades(market_id)
        self.unsettled[market_id] = set(left)
        if not left:
            self.store.put_meta("broker.trades", str(market_id), None)

    async def _finish_trades(self, book: MarketBook) -> None:
        """Propose the trades of the last batch that were stored but never proposed, before the
        next batch of the market is cut (MISSION.md: the fills of batch b are applied before
        batch b + 1 is priced)."""
        left = self._unproposed_trades(book.market.id)
        if left:
            self._event("resume_trades", f"market {book.market.id}: {len(left)} trade(s) of the last batch")
            with self._storing_proposals() as snapshots, self.store.transaction():
                proposals, later = self._store_trade_proposals(left, snapshots)
            await self._deliver_trades(proposals, later)
        self._keep_unsettled(book.market.id)

    def _trades(
        self,
        fills: dict[tuple[bytes, int], int],
        by_key: dict[tuple[bytes, int], OpenOrder],
        book: MarketBook,
        price: BatchPrice,
        now: Timestamp,
        marks: dict[int, Price],
    ) -> dict[bytes, Trade]:
        """One Trade per channel with fills, fees charged by :meth:`fee_for`."""
        per_channel: dict[bytes, list[Fill]] = defaultdict(list)
        for (channel_id, nonce), amount in fills.items():
            open_order = by_key[(channel_id, nonce)]
            collateral = fill_collateral(
                open_order.order, open_order.filled, amount, price.price, book.market.resolution
            )
            fee = self.fee_for(open_order, amount, collateral)
            per_channel[channel_id].append(Fill(Nonce(nonce), SyntheticAmount(amount), fee))
        return {cid: Trade(price, tuple(f), now, marks) for cid, f in per_channel.items()}

    def _would_apply(self, channel_id: bytes, trade: Trade, now: int) -> Transitioned | None:
        """Whether the channel's Trade can be proposed: the engine accepts it, and the resulting
        state would not prove that an order was left out by one of our signed prices (this
        batch's included). A channel whose fill cannot be co-signed sits the batch out; while an
        order it holds stays crossed and unfilled, it takes no trade in that market, so that the
        broker never signs a state the trader could slash it with. Returns the engine's result,
        or None when the channel sits the batch out."""
        party = self.parties[ChannelId(channel_id)]
        try:
            result = apply(party.channel, trade)
        except RuleViolation as exc:
            self._event("left_out", f"0x{channel_id.hex()} from batch {trade.batch_price.batch}: {exc.reason}")
            return None
        pending = trade.batch_price

        def prices_between(market: int, first: int, last: int) -> list[StoredBatchPrice]:
            found = self.books[market].prices_between(first, last) if market in self.books else []
            if market == pending.market and first <= pending.batch <= last:
                found.append(StoredBatchPrice(self.address, pending, b""))
            return found

        proofs = left_out_orders(party.params, result.state, prices_between, now, markets={pending.market})
        if proofs:
            nonces = ", ".join(str(p.open_order.order.nonce) for p in proofs)
            self._event(
                "left_out",
                f"0x{channel_id.hex()} from batch {pending.batch}: it would leave crossed order(s) {nonces} unfilled",
            )
            return None
        return result

    # ------------------------------------------------------------------ views

    def party(self, channel_id: bytes) -> ChannelParty:
        return self.parties[ChannelId(channel_id)]
