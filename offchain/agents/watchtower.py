"""The watchtower: guards channels on a party's behalf while the party is offline
(MISSION.md, "Watchtower"; docs/watchtower.md).

A party hands the watchtower each new co-signed state of its channel, and the broker-signed batch
prices it receives (``watch`` and ``watch_price`` over a WebSocket, with
:class:`WatchtowerClient`, or :meth:`Watchtower.guard` and :meth:`Watchtower.add_price` from
Python). The watchtower keeps them in its own durable store, follows the adjudicator's events,
and acts for every guarded channel:

- a dispute registered with an older state than the newest it holds is refuted with the newest
  (or closed at once when the newest is a final state), while the refutation phase lasts;
- for a registered state with open orders, it submits the signed prices that make the evidence
  on-chain equal the earliest crossing batch it knows for each order;
- once the deadline has passed (by the latest block's time or by the wall clock), it concludes;
- a channel whose broker has been slashed is concluded at once with ``concludeSlashed``; two
  different prices signed for one batch are proven with ``proveTwoPrices`` first;
- a co-signed state that, with the broker's signed prices, proves a crossed order was left out
  is proven with ``proveLeftOutOrder`` (the trader takes the channel);
- after conclusion it withdraws the trader's and the broker's deferred payouts, if any.

Every action is simulated before it is sent (:class:`offchain.chain.connection.Transactor`); a
revert that means someone else already did it (``VersionNotNewer``, ``EvidenceChangesNothing``,
``ChannelConcluded``, ``BrokerAlreadySlashed``, ...) is taken as done. A channel in a dispute is
re-read on every cycle, and every guarded channel at least every ``sweep_seconds``, so neither a
missed log nor a restart loses a deadline. Node errors are retried with a capped back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from eth_abi.exceptions import DecodingError
from eth_utils.abi import event_abi_to_log_topic
from eth_utils.address import to_checksum_address
from web3.exceptions import LogTopicError, MismatchedABI, TransactionNotFound
from websockets.asyncio.client import connect
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import Server, serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from offchain.agents.common import log, on_chain
from offchain.chain import errors as ce
from offchain.chain.client import AdjudicatorClient, OnChainChannel, RegistrationKind, Stage
from offchain.chain.connection import Chain, Transactor
from offchain.eip712 import Domain
from offchain.engine.slashing import left_out_orders
from offchain.errors import ContractError, SignatureError, TradingChannelsError, ValidationError
from offchain.model import MAX_AMOUNT, BatchPrice, ChannelParams, ChannelState, check_address, check_state
from offchain.protocol import messages as m
from offchain.protocol import watch as wm
from offchain.protocol.messages import ProtocolError
from offchain.settlement import Evidence, record_evidence
from offchain.signing import CoSignedState, LocalSigner, verify
from offchain.store import ChannelRecord, Store, StoredBatchPrice, StoreError
from offchain.types import Address, ChannelId, Signature, Version

NAMESPACE = "watchtower"
SLASHED = "watchtower.slashed"
PROOFS = "watchtower.proofs"
GUARDING = "guarding"
DONE = "done"
MAX_EVIDENCE_PRICES = 64
MAX_EVENTS = 10_000


class WatchtowerTimeout(TradingChannelsError):
    """The watchtower did not acknowledge everything in time."""

    code = "timeout"


@dataclass
class WatchtowerConfig:
    host: str = "127.0.0.1"
    port: int = 8766
    poll_seconds: float = 1.0
    max_channels: int = 1_000
    """Most channels guarded at once (concluded ones do not count): anyone may ask, so bound it."""
    confirmations: int = 0
    """Logs are read up to the latest block minus this many (statuses are read at the latest)."""
    block_range: int = 2_000
    """Blocks per ``eth_getLogs`` call."""
    ranges_per_cycle: int = 20
    """At most this many log ranges are read per cycle, so a long backlog never delays an action."""
    lookback_blocks: int = 200_000
    """How far back to search for the transaction of a registration whose log was not seen."""
    first_block: int = 0
    """No adjudicator logs before this block (its deployment block)."""
    sweep_seconds: float = 60.0
    """Every guarded channel's status (and its broker's slashing) is re-read at least this often."""
    max_backoff_seconds: float = 15.0
    """The longest wait between cycles after node errors."""
    traders: frozenset[str] = frozenset()
    """When not empty, only channels of these traders are guarded."""


@dataclass
class _Guarded:
    params: ChannelParams
    meta: dict[str, Any]
    newest: CoSignedState
    registered: CoSignedState | None = None
    evidence_checked: tuple[int, int, int] | None = None
    left_out_checked: tuple[int, int] | None = None  # (newest version, price generation) looked at
    searched: tuple[int, int] | None = None  # a registration searched for in vain
    reported: set[str] = field(default_factory=set)

    @property
    def channel_id(self) -> ChannelId:
        return self.params.channel_id

    @property
    def done(self) -> bool:
        return bool(self.meta.get("status") == DONE)


def fingerprint(domain: Domain, state: ChannelState) -> int:
    """What the adjudicator registers for a state with open orders or positions: the low 160
    bits of its EIP-712 digest."""
    return int.from_bytes(domain.state_digest(state)[-20:], "big")


def _settled(state: ChannelState) -> bool:
    return not state.open_orders and all(o.position == 0 for o in state.outcomes)


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


class Watchtower:
    """Guards channels: follows the adjudicator and answers for the parties (module docstring)."""

    def __init__(
        self,
        signer: LocalSigner,
        store: Store,
        chain: Chain,
        adjudicator: Address,
        config: WatchtowerConfig | None = None,
    ) -> None:
        self.signer = signer
        self.store = store
        self.chain = chain
        self.config = config or WatchtowerConfig()
        self.traders = frozenset(check_address("trader", t) for t in self.config.traders)
        self.adjudicator = AdjudicatorClient(chain, adjudicator)
        self.domain = Domain(chain.chain_id, self.adjudicator.address)
        self.transactor = Transactor.from_key(chain, signer.private_key)
        self.events: list[tuple[str, str]] = []
        self._lock = threading.RLock()
        self._channels: dict[ChannelId, _Guarded] = {}
        self._hot: set[ChannelId] = set()  # re-read on every cycle (disputes, slashed brokers)
        self._slashed: set[Address] = set()
        self._price_generation: dict[Address, int] = {}
        self._next_sweep = 0.0
        self._stopping = False
        self._wake: asyncio.Event | None = None
        self._server: Server | None = None
        self._task: asyncio.Task[None] | None = None
        abi: list[dict[str, Any]] = list(self.adjudicator.contract.abi)  # type: ignore[arg-type]
        self._topics = {
            bytes(event_abi_to_log_topic(e)): str(e["name"])  # type: ignore[arg-type]
            for e in abi
            if e.get("type") == "event"
        }
        self._load()

    @property
    def address(self) -> Address:
        return self.signer.address

    # ------------------------------------------------------------------ store

    def _load(self) -> None:
        """Resume from the store: every channel with its newest co-signed state, the slashed
        brokers, the pending proofs. The first cycle re-reads everything from the chain."""
        for record in self.store.channels():
            stored = self.store.latest_co_signed(record.channel_id)
            if stored is None or stored.trader_signature is None or stored.broker_signature is None:
                continue
            signed = CoSignedState(stored.state, Signature(stored.trader_signature), Signature(stored.broker_signature))
            self._channels[ChannelId(record.channel_id)] = _Guarded(record.params, dict(record.meta), signed)
        self._slashed = {Address(to_checksum_address(b)) for b in self.store.meta_items(SLASHED)}

    def _put_meta(self, g: _Guarded, **changes: Any) -> None:
        meta = {**g.meta, **changes}
        meta = {k: v for k, v in meta.items() if v is not None}
        if meta != g.meta:
            self.store.put_channel(ChannelRecord(g.channel_id, g.params, meta))
            g.meta = meta

    def _event(self, kind: str, detail: str) -> None:
        with self._lock:
            self.events.append((kind, detail))
            if len(self.events) > MAX_EVENTS:
                del self.events[: MAX_EVENTS // 2]
        log.info("%s: %s", kind, detail)

    def _report_once(self, g: _Guarded, kind: str, detail: str) -> None:
        key = f"{kind}:{detail}"
        if key not in g.reported:
            g.reported.add(key)
            self._event(kind, detail)

    # ------------------------------------------------------------------ what parties hand in

    def guard(self, params: ChannelParams, signed: CoSignedState) -> int:
        """Guard ``params``'s channel with the co-signed ``signed``; returns the version now held
        (the newest: an older state changes nothing). Raises ProtocolError (with the code of the
        error reply) for anything that is not a valid co-signed state of a channel on this
        watchtower's chain and adjudicator; nothing is stored then."""
        if not isinstance(params, ChannelParams) or not isinstance(signed, CoSignedState):
            raise ProtocolError(m.INVALID_MESSAGE, "guard needs ChannelParams and a CoSignedState")
        if params.chain_id != self.domain.chain_id or params.adjudicator != self.domain.verifying_contract:
            raise ProtocolError(
                m.BAD_PARAMS,
                f"this watchtower guards chain {self.domain.chain_id} and adjudicator "
                f"{self.domain.verifying_contract}, not chain {params.chain_id} and {params.adjudicator}",
            )
        if self.traders and params.trader not in self.traders:
            raise ProtocolError(wm.TRADER_NOT_SERVED, f"this watchtower does not serve trader {params.trader}")
        try:
            state = check_state(signed.state, params)
            signed.verify(self.domain, params.trader, params.broker)
        except SignatureError as exc:
            raise ProtocolError(m.BAD_SIGNATURE, exc.reason) from exc
        except ValidationError as exc:
            raise ProtocolError(m.INVALID_MESSAGE, exc.reason) from exc
        cid = params.channel_id
        with self._lock:
            g = self._channels.get(cid)
            if g is not None and g.done:
                raise ProtocolError(m.CHANNEL_CLOSED, f"channel {_hex(cid)} has concluded")
            if g is None:
                active = sum(1 for x in self._channels.values() if not x.done)
                if active >= self.config.max_channels:
                    raise ProtocolError(wm.TOO_MANY_CHANNELS, f"this watchtower guards {active} channels, its maximum")
            elif state.version <= g.newest.state.version:
                return int(g.newest.state.version)
            try:
                with self.store.transaction():
                    if g is None:
                        meta: dict[str, Any] = {"status": GUARDING}
                        self.store.put_channel(ChannelRecord(cid, params, meta))
                    self.store.put_state(state, signed.trader_signature, signed.broker_signature)
            except StoreError as exc:  # e.g. another state already stored under this version
                raise ProtocolError(m.INVALID_MESSAGE, exc.reason) from exc
            if g is None:
                self._channels[cid] = _Guarded(params, meta, signed)
                self._event("guarding", f"{_hex(cid)} at version {state.version}")
            else:
                g.newest = signed
                self._event("state", f"{_hex(cid)} version {state.version}")
            self._hot.add(cid)
        self._poke()
        return int(state.version)

    def add_price(self, broker: str, price: BatchPrice, signature: bytes) -> bool:
        """Keep a batch price signed by ``broker`` (the broker of a guarded channel that trades
        its market); True if it was new. A second, different price for the same batch is kept
        too, and proven on-chain on the next cycle (the broker is slashed)."""
        try:
            broker = check_address("broker", broker)
            if not isinstance(price, BatchPrice):
                raise ValidationError("price must be a BatchPrice")
            price.check()
            if not isinstance(signature, bytes) or len(signature) != 65:
                raise ValidationError("a signature is 65 bytes")
        except ValidationError as exc:
            raise ProtocolError(m.INVALID_MESSAGE, exc.reason) from exc
        with self._lock:
            trades = any(
                g.params.broker == broker and any(mk.id == price.market for mk in g.params.markets)
                for g in self._channels.values()
                if not g.done
            )
        if not trades:
            raise ProtocolError(
                m.UNKNOWN_CHANNEL, f"no guarded channel with broker {broker} trades market {price.market}"
            )
        try:
            verify(self.domain.batch_price_digest(price), signature, broker)
        except SignatureError as exc:
            raise ProtocolError(m.BAD_SIGNATURE, exc.reason) from exc
        record = StoredBatchPrice(broker, price, Signature(signature))
        with self._lock, self.store.transaction():
            earlier = self.store.batch_prices(broker, price.market, price.batch)
            new = self.store.put_batch_price(record)
            conflict = new and any(e.price.price != price.price for e in earlier)
            if conflict:
                self.store.put_meta(PROOFS, f"{broker}/{price.market}/{price.batch}", True)
            if new:
                self._price_generation[broker] = self._price_generation.get(broker, 0) + 1
                for g in self._channels.values():
                    if g.params.broker == broker and not g.done and g.meta.get("stage") == "disputed":
                        self._hot.add(g.channel_id)
        if conflict:
            self._event("two_prices", f"broker {broker} market {price.market} batch {price.batch}")
            self._poke()
        return new

    def guarded(self) -> dict[ChannelId, int]:
        """Every channel still guarded, with the version held."""
        with self._lock:
            return {cid: int(g.newest.state.version) for cid, g in self._channels.items() if not g.done}

    # ------------------------------------------------------------------ the WebSocket server

    def handle(self, raw: str | bytes) -> wm.WatchMessage:
        """The reply to one frame from a party."""
        message_id = ""
        channel_id: bytes | None = None
        try:
            message = wm.parse(raw)
            message_id = message.id
            if isinstance(message, wm.Watch):
                channel_id = message.channel_id
                version = self.guard(message.params, message.signed)
                return wm.WatchAck(message_id, message.channel_id, Version(version))
            if isinstance(message, wm.WatchPrice):
                new = self.add_price(message.broker, message.batch_price, message.signature)
                return wm.WatchPriceAck(message_id, message.batch_price.market, message.batch_price.batch, new)
            raise ProtocolError(
                m.UNKNOWN_TYPE, f"a watchtower accepts watch and watch_price, not {wm.type_name(message)}"
            )
        except TradingChannelsError as exc:
            self._event("refused", f"{exc.code}: {exc.reason}")
            return wm.error_reply(message_id or wm.message_id_of(raw), exc, channel_id)

    async def _serve(self, ws: Connection) -> None:
        try:
            async for raw in ws:
                await ws.send(wm.encode(self.handle(raw)))
        except ConnectionClosed:
            pass

    @property
    def port(self) -> int:
        if self._server is None:
            return self.config.port
        return int(next(iter(self._server.sockets)).getsockname()[1])

    async def start(self) -> None:
        """Serve parties on ``ws://host:port`` and follow the chain in the background."""
        self._stopping = False
        self._wake = asyncio.Event()
        self._server = await serve(self._serve, self.config.host, self.config.port, max_size=m.MAX_MESSAGE_BYTES)
        self._task = asyncio.create_task(self._loop())
        log.info("watchtower %s listening on ws://%s:%d", self.address, self.config.host, self.port)

    async def stop(self) -> None:
        """Stop serving and following (the cycle in progress finishes first)."""
        self._stopping = True
        self._poke()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _poke(self) -> None:
        wake = self._wake
        if wake is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.call_soon(wake.set)

    async def _loop(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                await self.run_once()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - a node error must never end the watch
                failures += 1
                self._event("node_error", f"{type(exc).__name__}: {str(exc)[:300]}")
            delay = self.config.poll_seconds
            if failures:
                delay = min(self.config.max_backoff_seconds, self.config.poll_seconds * 2 ** min(failures, 16))
            if self._stopping:
                break
            assert self._wake is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()

    # ------------------------------------------------------------------ one cycle

    async def run_once(self) -> None:
        """One follow-and-act cycle, in a worker thread (one chain call at a time per chain)."""
        await on_chain(self.chain, self.poll)

    def poll(self) -> None:
        """One follow-and-act cycle (blocking): read new logs, then act on every channel that
        needs it. Node errors propagate (the loop backs off and retries)."""
        latest = int(self.chain.w3.eth.block_number)
        affected = self._follow(latest)
        sweep = time.monotonic() >= self._next_sweep
        if sweep:
            self._refresh_slashed()
        self._prove_pending()
        with self._lock:
            active = [cid for cid, g in self._channels.items() if not g.done]
            hot = set(self._hot)
        targets = active if sweep else [cid for cid in active if cid in hot or cid in affected]
        for cid in active:
            if self._stopping:
                return
            try:
                if self._prove_left_out(self._channels[cid]):
                    targets = [t for t in targets if t != cid]
            except ContractError as exc:
                self._event("failed", f"{_hex(cid)}: {exc.code}: {exc.reason}")
        for cid in targets:
            if self._stopping:
                return
            try:
                self._act(self._channels[cid])
            except ContractError as exc:
                self._event("failed", f"{_hex(cid)}: {exc.code}: {exc.reason}")
        if sweep:
            self._next_sweep = time.monotonic() + self.config.sweep_seconds

    # ------------------------------------------------------------------ following the logs

    def _follow(self, latest: int) -> set[ChannelId]:
        """Read the adjudicator's logs from the stored cursor on (in bounded ranges); returns
        the guarded channels they concern. The cursor and what the logs say are stored together."""
        cursor = self.store.meta(NAMESPACE, "cursor")
        if cursor is None:
            # Nothing was guarded before this store existed; the first sweep reads every status.
            self.store.put_meta(NAMESPACE, "cursor", latest + 1)
            return set()
        cursor = int(cursor)
        target = latest - self.config.confirmations
        affected: set[ChannelId] = set()
        for _ in range(self.config.ranges_per_cycle):
            if cursor > target:
                break
            end = min(target, cursor + self.config.block_range - 1)
            entries = self._logs(cursor, end)
            with self._lock, self.store.transaction():
                for name, args, entry in entries:
                    affected |= self._on_log(name, args, entry)
                self.store.put_meta(NAMESPACE, "cursor", end + 1)
            cursor = end + 1
        return affected

    def _logs(self, first: int, last: int, topics: list[Any] | None = None) -> list[tuple[str, dict[str, Any], Any]]:
        query: dict[str, Any] = {"address": self.adjudicator.address, "fromBlock": first, "toBlock": last}
        if topics is not None:
            query["topics"] = topics
        out = []
        for entry in self.chain.w3.eth.get_logs(query):  # type: ignore[arg-type]
            entry_topics = entry.get("topics") or []
            name = self._topics.get(bytes(entry_topics[0])) if entry_topics else None
            if name is None:
                continue
            try:
                decoded = self.adjudicator.contract.events[name]().process_log(entry)
            except (MismatchedABI, LogTopicError, DecodingError) as exc:  # not one of ours after all
                log.warning("undecodable %s log in block %s: %s", name, entry.get("blockNumber"), exc)
                continue
            out.append((name, dict(decoded["args"]), entry))
        return out

    def _on_log(self, name: str, args: dict[str, Any], entry: Any) -> set[ChannelId]:
        if "channelId" in args:
            cid = ChannelId(bytes(args["channelId"]))
            g = self._channels.get(cid)
            if g is None or g.done:
                return set()
            if name in ("Challenged", "Refuted", "ChallengedWithoutState"):
                version = int(args["version"]) if "version" in args else None
                registration = {
                    "version": version,
                    "tx": _hex(bytes(entry["transactionHash"])),
                    "block": int(entry["blockNumber"]),
                }
                self._put_meta(g, registration=registration, stage="disputed")
                self._hot.add(cid)
            if name != "Deposited":
                detail = f"{name} {_hex(cid)}"
                if "version" in args:
                    detail += f" version {args['version']}"
                self._event("seen", detail)
            return {cid}
        if name == "BrokerSlashed":
            broker = Address(to_checksum_address(args["broker"]))
            channels = {cid for cid, g in self._channels.items() if g.params.broker == broker and not g.done}
            if channels:
                self._mark_slashed(broker, int(entry["blockNumber"]))
                self._hot |= channels
            return channels
        if name == "PayoutDeferred":
            account, token = to_checksum_address(args["account"]), to_checksum_address(args["token"])
            return {
                cid
                for cid, g in self._channels.items()
                if not g.done and g.params.token == token and account in (g.params.trader, g.params.broker)
            }
        return set()

    def _mark_slashed(self, broker: Address, when: int) -> None:
        if broker not in self._slashed:
            self._slashed.add(broker)
            self.store.put_meta(SLASHED, broker, when)
            self._event("broker_slashed", broker)

    def _refresh_slashed(self) -> None:
        with self._lock:
            brokers = {g.params.broker for g in self._channels.values() if not g.done} - self._slashed
        for broker in sorted(brokers):
            when = self.adjudicator.slashed_at(broker)
            if when is not None:
                with self._lock:
                    self._mark_slashed(broker, int(when))
                    self._hot |= {cid for cid, g in self._channels.items() if g.params.broker == broker}

    def _prove_pending(self) -> None:
        """Prove every pair of different prices signed for one batch that we hold."""
        for key in self.store.meta_items(PROOFS):
            broker_text, market, batch = key.split("/")
            broker = Address(to_checksum_address(broker_text))
            prices = self.store.batch_prices(broker, int(market), int(batch))
            second = next((p for p in prices if p.price.price != prices[0].price.price), None)
            if broker not in self._slashed and second is not None:
                first = prices[0]
                try:
                    self.adjudicator.prove_two_prices(
                        self.transactor, broker, (first.price, first.signature), (second.price, second.signature)
                    )
                    self._event("proved_two_prices", f"broker {broker} market {market} batch {batch}")
                except ce.BrokerAlreadySlashed:
                    pass
                except ContractError as exc:  # cannot happen for prices we verified; do not retry
                    self._event("failed", f"proving two prices of broker {broker}: {exc.code}: {exc.reason}")
                    self.store.put_meta(PROOFS, key, None)
                    continue
                with self._lock:
                    self._mark_slashed(broker, int(self.chain.now()))
                    self._hot |= {cid for cid, g in self._channels.items() if g.params.broker == broker}
            self.store.put_meta(PROOFS, key, None)

    def _prove_left_out(self, g: _Guarded) -> bool:
        """If the newest co-signed state, with the broker's signed prices we hold, proves that the
        broker left out a crossed order, prove it on-chain: the trader takes the channel. Looked
        at again only when a newer state or a new price arrives. True if the channel concluded."""
        key = (int(g.newest.state.version), self._price_generation.get(g.params.broker, 0))
        if g.left_out_checked == key:
            return False
        broker = g.params.broker
        proofs = left_out_orders(
            g.params,
            g.newest.state,
            lambda market, first, last: self.store.batch_prices_between(broker, market, first, last),
            int(self.chain.now()),
        )
        g.left_out_checked = key
        if not proofs:
            return False
        proof = proofs[0]
        try:
            self.adjudicator.prove_left_out_order(
                self.transactor, g.params, g.newest, proof.index, (proof.price.price, proof.price.signature)
            )
        except ce.ChannelConcluded:
            pass
        else:
            nonce, batch = proof.open_order.order.nonce, proof.price.price.batch
            self._event("proved_left_out_order", f"{_hex(g.channel_id)}: order {nonce} crossed by batch {batch}")
        self._finish(g)
        return True

    # ------------------------------------------------------------------ acting on one channel

    def _act(self, g: _Guarded) -> None:
        cid, params = g.channel_id, g.params
        status = self.adjudicator.status(cid)
        if status.stage == Stage.CONCLUDED:
            self._finish(g)
            return
        if params.broker in self._slashed:
            self._conclude_slashed(g)
            return
        if status.stage == Stage.OPEN:
            with self._lock:
                self._put_meta(g, stage="open")
                self._hot.discard(cid)
            return
        with self._lock:
            self._put_meta(g, stage="disputed")
            self._hot.add(cid)
        now = int(self.chain.now())
        newest = g.newest
        if self._older_than(status, newest) and now < status.refutation_end(params):
            if self._refute(g, newest):
                status = self.adjudicator.status(cid)
                if status.stage == Stage.CONCLUDED:
                    self._finish(g)
                    return
        registered: CoSignedState | None = None
        if status.kind == RegistrationKind.FINGERPRINT:
            registered = self._registered_state(g, status)
            if registered is not None and now < status.deadline:
                self._submit_evidence(g, status, registered, now)
        if now + 1 >= status.deadline or time.time() >= status.deadline:
            self._conclude(g, status, registered)

    @staticmethod
    def _older_than(status: OnChainChannel, newest: CoSignedState) -> bool:
        """Whether ``newest`` would replace what the dispute registered."""
        if status.kind == RegistrationKind.NO_STATE:
            return True
        return status.registered_version is not None and newest.state.version > status.registered_version

    def _refute(self, g: _Guarded, newest: CoSignedState) -> bool:
        cid = g.channel_id
        try:
            if newest.state.is_final and _settled(newest.state):
                self.adjudicator.close(self.transactor, g.params, newest)
                self._event("closed", f"{_hex(cid)} with final version {newest.state.version}")
            else:
                self.adjudicator.refute(self.transactor, g.params, newest)
                self._event("refuted", f"{_hex(cid)} with version {newest.state.version}")
            return True
        except (ce.VersionNotNewer, ce.RefutationPhaseOver, ce.ChannelConcluded, ce.ChannelNotDisputed) as exc:
            self._report_once(g, "refute_skipped", f"{_hex(cid)}: {exc.code}")
            return False

    def _registered_state(self, g: _Guarded, status: OnChainChannel) -> CoSignedState | None:
        """The co-signed state the dispute registered: ours, one stored, or the one in the input
        of the registering transaction (from its log, or searched for)."""
        version, data = status.registered_version, status.registered_data
        if version is None:
            return None
        candidates = [c for c in (g.registered, g.newest) if c is not None and c.state.version == version]
        stored = self.store.state(g.channel_id, version)
        if stored is not None and stored.trader_signature is not None and stored.broker_signature is not None:
            candidates.append(
                CoSignedState(stored.state, Signature(stored.trader_signature), Signature(stored.broker_signature))
            )
        for candidate in candidates:
            if fingerprint(self.domain, candidate.state) == data:
                g.registered = candidate
                return candidate
        registration = g.meta.get("registration") or {}
        found = None
        if registration.get("version") == version and registration.get("tx"):
            found = self._state_from_tx(g, bytes.fromhex(str(registration["tx"])[2:]), version, data)
        if found is None and g.searched != (version, data):
            found = self._search_registration(g, version, data)
            if found is None:
                g.searched = (version, data)  # its log, once read, gives the transaction
        if found is None:
            self._report_once(g, "registered_state_unknown", f"{_hex(g.channel_id)} version {version}")
            return None
        g.registered = found
        with self._lock:
            with contextlib.suppress(StoreError):
                self.store.put_state(found.state, found.trader_signature, found.broker_signature)
            if found.state.version > g.newest.state.version:
                g.newest = found
        self._event("registered_state", f"{_hex(g.channel_id)} version {version} recovered from its transaction")
        return found

    def _state_from_tx(self, g: _Guarded, tx_hash: bytes, version: int, data: int) -> CoSignedState | None:
        try:
            signed = self.adjudicator.registered_state_from_transaction(tx_hash)
            if signed.state.version != version or fingerprint(self.domain, signed.state) != data:
                return None
            signed.verify(self.domain, g.params.trader, g.params.broker)
            check_state(signed.state, g.params)
            return signed
        except (TradingChannelsError, TransactionNotFound, ValueError, KeyError):
            return None

    def _search_registration(self, g: _Guarded, version: int, data: int) -> CoSignedState | None:
        """Search the Challenged and Refuted logs of the channel backwards for the registration."""
        topics = [
            [_hex(t) for t, name in self._topics.items() if name in ("Challenged", "Refuted")],
            _hex(g.channel_id),
        ]
        last = int(self.chain.w3.eth.block_number)
        floor = max(self.config.first_block, last - self.config.lookback_blocks)
        while last >= floor:
            first = max(floor, last - self.config.block_range + 1)
            for _, args, entry in reversed(self._logs(first, last, topics)):
                if int(args["version"]) == version:
                    found = self._state_from_tx(g, bytes(entry["transactionHash"]), version, data)
                    if found is not None:
                        return found
            last = first - 1
        return None

    def _submit_evidence(self, g: _Guarded, status: OnChainChannel, registered: CoSignedState, now: int) -> None:
        """Submit every known price that is earlier than what the adjudicator holds for an order
        it crosses, so that the evidence on-chain is the earliest crossing we know of."""
        params, state = g.params, registered.state
        key = (
            int(status.registered_version or 0),
            status.registered_data,
            self._price_generation.get(params.broker, 0),
        )
        if g.evidence_checked == key:
            return
        if not state.open_orders:
            g.evidence_checked = key
            return
        known = self.adjudicator.evidence(g.channel_id, state)
        evidence: dict[int, Evidence] = dict(known)
        chosen: list[StoredBatchPrice] = []
        for candidate in self._candidate_prices(params, state, known):
            try:
                after = record_evidence(evidence, params, state, candidate.price, now)
            except ValidationError:
                continue
            if after != evidence:
                chosen.append(candidate)
                evidence = after
        for start in range(0, len(chosen), MAX_EVIDENCE_PRICES):
            chunk = chosen[start : start + MAX_EVIDENCE_PRICES]
            try:
                receipt = self.adjudicator.submit_evidence(
                    self.transactor, params, state, [(p.price, p.signature) for p in chunk]
                )
            except ce.EvidenceChangesNothing:
                continue
            except (ce.EvidencePeriodOver, ce.ChannelConcluded, ce.ChannelNotDisputed, ce.StateMismatch) as exc:
                self._report_once(g, "evidence_skipped", f"{_hex(g.channel_id)}: {exc.code}")
                return
            accepted = self.adjudicator.events(receipt, "EvidenceAccepted")
            detail = ", ".join(f"order {e['orderIndex']} batch {e['batch']} price {e['price']}" for e in accepted)
            self._event("evidence", f"{_hex(g.channel_id)} version {state.version}: {detail}")
        g.evidence_checked = key

    def _candidate_prices(
        self, params: ChannelParams, state: ChannelState, known: dict[int, Evidence]
    ) -> list[StoredBatchPrice]:
        """The stored prices that could cross an open order earlier than its known evidence."""
        ranges: dict[int, tuple[int, int]] = {}
        for i, open_order in enumerate(state.open_orders):
            market = open_order.order.market
            try:
                index = params.market_index(market)
            except ValidationError:
                continue
            low = max(open_order.first_batch, state.outcomes[index].last_batch + 1)
            high = known[i].batch - 1 if i in known else MAX_AMOUNT
            if low > high:
                continue
            previous = ranges.get(market)
            ranges[market] = (low, high) if previous is None else (min(previous[0], low), max(previous[1], high))
        found: list[StoredBatchPrice] = []
        for market_id, (low, high) in sorted(ranges.items()):
            found.extend(self.store.batch_prices_between(params.broker, market_id, low, high))
        found.sort(key=lambda p: p.price.batch)
        return found

    def _conclude(self, g: _Guarded, status: OnChainChannel, registered: CoSignedState | None) -> None:
        cid = g.channel_id
        state: ChannelState | None = None
        if status.kind == RegistrationKind.FINGERPRINT:
            if registered is None:
                self._report_once(g, "cannot_conclude", f"{_hex(cid)}: the registered state is unknown")
                return
            state = registered.state
        try:
            receipt = self.adjudicator.conclude(self.transactor, g.params, state)
        except ce.DeadlineNotReached:
            return
        except ce.OraclePriceUnavailable as exc:
            self._report_once(g, "oracle_unavailable", f"{_hex(cid)}: {exc.reason}")
            return
        except (ce.ChannelConcluded, ce.ChannelNotDisputed):
            pass
        else:
            self._event("concluded", f"{_hex(cid)}: {self._payouts_of(receipt)}")
        self._finish(g)

    def _conclude_slashed(self, g: _Guarded) -> None:
        cid = g.channel_id
        try:
            receipt = self.adjudicator.conclude_slashed(self.transactor, g.params)
        except ce.ChannelConcluded:
            pass
        except ce.BrokerNotSlashed:
            with self._lock:
                self._slashed.discard(g.params.broker)
                self.store.put_meta(SLASHED, g.params.broker, None)
            return
        else:
            self._event("concluded_slashed", f"{_hex(cid)}: {self._payouts_of(receipt)}")
        self._finish(g)

    def _payouts_of(self, receipt: Any) -> str:
        concluded = self.adjudicator.events(receipt, "Concluded")
        return ", ".join(f"trader {e['toTrader']}, broker {e['toBroker']}" for e in concluded)

    def _finish(self, g: _Guarded) -> None:
        """After conclusion: withdraw what the token refused to pay the trader and the broker,
        then stop guarding. A withdrawal that fails is retried on every sweep."""
        cid, params = g.channel_id, g.params
        with self._lock:
            self._put_meta(g, stage="concluded")
        failed = False
        for account in dict.fromkeys((params.trader, params.broker)):
            amount = self.adjudicator.withdrawable(params.token, account)
            if not amount:
                continue
            try:
                self.adjudicator.withdraw(self.transactor, params.token, account)
                self._event("withdrawn", f"{_hex(cid)}: {amount} to {account}")
            except ce.NothingToWithdraw:
                pass
            except ContractError as exc:
                failed = True
                self._report_once(g, "withdraw_failed", f"{_hex(cid)}: {account}: {exc.code}")
        with self._lock:
            self._hot.discard(cid)
            if not failed:
                self._put_meta(g, status=DONE)
                self._event("done", _hex(cid))


# --------------------------------------------------------------------------- the party's side


@dataclass
class _Item:
    first_seq: int  # the seq of the first message this item stands for (flush waits for it)
    seq: int
    message: wm.Watch | wm.WatchPrice


class WatchtowerClient:
    """A party's connection to a watchtower: ``watch`` and ``price`` queue (the newest state per
    channel wins) and return at once; a background task delivers everything queued, and resends
    after a reconnect until the watchtower acknowledges it. ``flush`` waits for the acks.

    Call ``watch``, ``price`` and ``flush`` from the event loop that ran ``start``."""

    def __init__(self, url: str, *, reconnect_delay: float = 0.5, open_timeout: float = 5.0) -> None:
        self.url = url
        self.reconnect_delay = reconnect_delay
        self.open_timeout = open_timeout
        self.acknowledged: dict[ChannelId, int] = {}
        self.refused: list[tuple[str, str]] = []  # (code, reason) of refused messages
        self.events: list[tuple[str, str]] = []
        self.connected = False
        self._seq = 0
        self._states: dict[ChannelId, _Item] = {}
        self._prices: dict[tuple[str, int, int, int, bytes], _Item] = {}
        self._inflight: dict[str, tuple[str, Any, int]] = {}
        self._changed: asyncio.Condition | None = None
        self._dirty: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    # -- queueing

    def watch(self, params: ChannelParams, signed: CoSignedState) -> None:
        """Queue ``signed`` for ``params``'s channel (an older version than one queued or
        acknowledged is dropped)."""
        cid = params.channel_id
        version = signed.state.version
        if self.acknowledged.get(cid, -1) >= version:
            return
        queued = self._states.get(cid)
        if queued is not None:
            assert isinstance(queued.message, wm.Watch)
            if queued.message.state.version >= version:
                return
        self._seq += 1
        first = queued.first_seq if queued is not None else self._seq
        self._states[cid] = _Item(first, self._seq, wm.watch_message(params, signed, f"w{self._seq}"))
        self._kick()

    def price(self, broker: str, price: BatchPrice, signature: bytes) -> None:
        """Queue a batch price signed by ``broker``."""
        key = (str(broker), int(price.market), int(price.batch), int(price.price), bytes(signature))
        if key in self._prices:
            return
        self._seq += 1
        message = wm.WatchPrice(check_address("broker", broker), price, Signature(bytes(signature)), f"w{self._seq}")
        self._prices[key] = _Item(self._seq, self._seq, message)
        self._kick()

    def pending(self) -> int:
        """How many queued items the watchtower has not acknowledged yet."""
        return len(self._states) + len(self._prices)

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything queued so far is acknowledged (or refused: see ``refused``)."""
        target = self._seq
        changed = self._condition()

        def delivered() -> bool:
            return all(item.first_seq > target for item in self._items())

        async with changed:
            try:
                await asyncio.wait_for(changed.wait_for(delivered), timeout)
            except TimeoutError as exc:
                raise WatchtowerTimeout(
                    f"the watchtower at {self.url} did not acknowledge {self.pending()} items in {timeout} s"
                ) from exc

    # -- connection

    async def start(self) -> None:
        """Deliver in the background (returns at once; the watchtower may be down for now)."""
        self._condition()
        self._dirty = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        self.connected = False

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    def _items(self) -> Iterable[_Item]:
        return [*self._states.values(), *self._prices.values()]

    def _kick(self) -> None:
        if self._dirty is not None:
            self._dirty.set()

    async def _run(self) -> None:
        while True:
            try:
                async with connect(self.url, max_size=m.MAX_MESSAGE_BYTES, open_timeout=self.open_timeout) as ws:
                    self.connected = True
                    self.events.append(("connected", self.url))
                    await self._session(ws)
            except (OSError, ConnectionClosed, InvalidHandshake, InvalidURI, TimeoutError) as exc:
                log.debug("watchtower %s: %s", self.url, exc)
            self.connected = False
            await asyncio.sleep(self.reconnect_delay)

    async def _session(self, ws: Connection) -> None:
        self._inflight.clear()
        sender = asyncio.create_task(self._sender(ws))
        try:
            async for raw in ws:
                await self._on_reply(raw)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender

    async def _sender(self, ws: Connection) -> None:
        assert self._dirty is not None
        while True:
            self._dirty.clear()
            sent = {seq for _, _, seq in self._inflight.values()}
            for kind, key, item in self._outbox():
                if item.seq in sent:
                    continue
                self._inflight[item.message.id] = (kind, key, item.seq)
                await ws.send(wm.encode(item.message))
            await self._dirty.wait()

    def _outbox(self) -> list[tuple[str, Any, _Item]]:
        out: list[tuple[str, Any, _Item]] = [("state", k, i) for k, i in self._states.items()]
        out += [("price", k, i) for k, i in self._prices.items()]
        out.sort(key=lambda x: x[2].seq)
        return out

    async def _on_reply(self, raw: str | bytes) -> None:
        try:
            reply = wm.parse(raw)
        except ProtocolError as exc:
            self.events.append(("bad_reply", exc.reason))
            return
        if not isinstance(reply, wm.WatchAck | wm.WatchPriceAck | m.ErrorReply):
            self.events.append(("bad_reply", wm.type_name(reply)))
            return
        entry = self._inflight.pop(reply.re, None)
        if entry is None:
            return
        kind, key, seq = entry
        items: dict[Any, _Item] = self._states if kind == "state" else self._prices
        item = items.get(key)
        if isinstance(reply, m.ErrorReply):
            self.refused.append((reply.code, reply.reason))
            self.events.append(("refused", f"{reply.code}: {reply.reason}"))
            log.warning("watchtower %s refused a %s: %s: %s", self.url, kind, reply.code, reply.reason)
        elif isinstance(reply, wm.WatchAck):
            self.acknowledged[reply.channel_id] = max(self.acknowledged.get(reply.channel_id, -1), int(reply.version))
        if item is not None and item.seq == seq:
            del items[key]
        elif isinstance(reply, wm.WatchAck) and isinstance(item, _Item):
            assert isinstance(item.message, wm.Watch)
            if item.message.state.version <= reply.version:  # the watchtower already holds it or newer
                del items[key]
        changed = self._condition()
        async with changed:
            changed.notify_all()


__all__ = ["Watchtower", "WatchtowerClient", "WatchtowerConfig", "WatchtowerTimeout", "fingerprint"]
