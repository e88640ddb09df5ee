"""``tchan demo``: the whole story with the real agents, on the embedded chain or any local node.

A broker (:class:`~offchain.agents.broker.BrokerAgent`) and three traders
(:class:`~offchain.agents.trader.TraderAgent`: alice, bob, carol) talk over real loopback
WebSockets; a :class:`~offchain.agents.watchtower.Watchtower` guards carol. The story:

1. deploy the adjudicator, a 6-decimal test token and two price feeds (gold and BTC);
2. the three traders open and fund channels with the broker, in both flows of seed 000;
3. three rounds of batch auctions in both markets: uniform clearing prices, orders rationed at the
   price, fees, and the oracle moving between rounds;
4. carol hands her newest state to the watchtower and goes offline; the broker challenges her
   channel with an old co-signed state from its store; the watchtower refutes with the newest;
   after the challenge period (the demo moves the chain's clock) it concludes and carol is paid;
5. alice closes cooperatively: a final co-signed state pays both sides at once;
6. the broker signs two prices for one batch; bob's agent proves it on-chain by itself and takes
   his whole channel.

Alice closes before the broker cheats because from the moment a broker is proven to have signed two
prices, every channel of that broker concludes with its trader taking everything (MISSION.md,
"Slashing"): a cooperative close is no longer possible then.

Every figure printed is read from the chain or from the agents. The summary checks that the payouts
add up to the deposits, that each payout is what the pure rule of :mod:`offchain.settlement` says,
that the token balances moved by exactly the payouts, that each batch's signed price is the one the
auction computes from the batch's orders, and that the broker carries no position after any batch.
The plot (:mod:`offchain.plot`) shows the buy and sell curves of the batch with the most orders.

The broker is a :class:`DemoBroker`, an :class:`~offchain.agents.cheating.EquivocatingBroker` that
also records the book of every batch it settles: it behaves exactly as the honest broker until the
demo tells it to cheat (the honest one refuses to sign a second price). The demo settles every batch
by hand and moves the chain's clock over the challenge period, so it needs a local chain: the
embedded one, or a node such as anvil (``--rpc``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

from offchain.agents.broker import BrokerConfig, MarketBook
from offchain.agents.cheating import EquivocatingBroker
from offchain.agents.common import on_chain
from offchain.agents.trader import TraderAgent
from offchain.agents.watchtower import Watchtower, WatchtowerClient, WatchtowerConfig
from offchain.chain.client import Stage
from offchain.chain.connection import Chain, in_process_chain, rpc_chain
from offchain.chain.deploy import FeedSpec
from offchain.engine.auction import BookOrder, Clearing, at_price, clear
from offchain.model import MIN_CHALLENGE_DURATION, ChannelParams, ChannelState, OpenOrder
from offchain.plot import PlotLabels, batch_curves, crossing, save_plot
from offchain.protocol.party import COOPERATIVE, SERVER_INITIATIVE
from offchain.sandbox import USD, Party, Sandbox
from offchain.settlement import OraclePrice, payouts
from offchain.signing import CoSignedState, LocalSigner
from offchain.store import MemoryStore, Store
from offchain.types import Address, ChannelId, MarketId, Signature

T = TypeVar("T")

GOLD = MarketId(1)
BTC = MarketId(2)
MARKETS = (GOLD, BTC)
FEEDS = {GOLD: "XAU / USD", BTC: "BTC / USD"}
MARKET_NAMES = {GOLD: "gold", BTC: "BTC"}
UNITS = {GOLD: "oz", BTC: "BTC"}
AMOUNT_DECIMALS = 6
RESOLUTION = 10**AMOUNT_DECIMALS  # synthetic base units per whole unit, both markets
TOKEN_DECIMALS = 6
FEED_DECIMALS = 8
TRADERS = ("alice", "bob", "carol")
FLOWS = {"alice": COOPERATIVE, "bob": SERVER_INITIATIVE, "carol": COOPERATIVE}
TRADER_TOKENS = 12_000 * USD  # each trader's wallet
TRADER_DEPOSIT = 10_000 * USD
BROKER_DEPOSIT = 20_000 * USD  # into each channel
CHALLENGE_DURATION = MIN_CHALLENGE_DURATION  # one hour, the shortest the adjudicator allows
FEE_BPS = 10  # the broker's fee: 0.1% of a fill's collateral, within the order's max fee
MAX_FEE_PER_MILLE = 5  # each order allows up to 0.5% of its collateral as fee
WAIT_SECONDS = 60.0  # the longest the demo waits for an agent or the watchtower


# --------------------------------------------------------------------------- the script


@dataclass(frozen=True, slots=True)
class Quote:
    """One order of the script: amounts as exact decimal text (whole units, dollars)."""

    who: str
    market: MarketId
    side: str  # "buy" or "sell"
    amount: str  # whole synthetic units
    limit: str  # dollars per whole unit


@dataclass(frozen=True, slots=True)
class Round:
    quotes: tuple[Quote, ...]
    oracle_after: dict[MarketId, str]  # dollars per whole unit the feeds move to after the round


def _q(who: str, market: MarketId, side: str, amount: str, limit: str) -> Quote:
    return Quote(who, market, side, amount, limit)


OPENING_PRICES = {GOLD: "2000", BTC: "60000"}
ROUNDS = (
    Round(
        (
            # gold: two bids at $2,015 share what is left at that price (rationing)
            _q("carol", GOLD, "buy", "1.0", "2040"),
            _q("alice", GOLD, "buy", "0.5", "2025"),
            _q("carol", GOLD, "buy", "0.4", "2015"),
            _q("alice", GOLD, "buy", "0.6", "2015"),
            _q("carol", GOLD, "buy", "0.3", "1995"),
            _q("bob", GOLD, "sell", "0.7", "1980"),
            _q("bob", GOLD, "sell", "0.5", "2000"),
            _q("bob", GOLD, "sell", "0.6", "2015"),
            _q("bob", GOLD, "sell", "0.5", "2035"),
            _q("alice", BTC, "sell", "0.03", "60500"),
            _q("bob", BTC, "buy", "0.05", "61000"),
            _q("carol", BTC, "buy", "0.02", "60500"),
        ),
        {GOLD: "2040", BTC: "61400"},
    ),
    Round(
        (
            _q("carol", GOLD, "buy", "0.6", "2070"),
            _q("alice", GOLD, "buy", "0.3", "2060"),
            _q("bob", GOLD, "sell", "1.0", "2050"),
            _q("alice", BTC, "sell", "0.05", "61500"),
            _q("carol", BTC, "buy", "0.03", "62000"),
        ),
        {GOLD: "2070", BTC: "61000"},
    ),
    Round(
        (
            _q("alice", GOLD, "buy", "0.8", "2080"),
            _q("bob", GOLD, "sell", "0.4", "2075"),
            _q("carol", BTC, "sell", "0.03", "60800"),
        ),
        {GOLD: "2090", BTC: "60600"},
    ),
)
CHEAT_QUOTE = _q("bob", GOLD, "sell", "0.3", "2100")  # rests in the batch the broker signs twice


# --------------------------------------------------------------------------- numbers


def parse_decimal(text: str, decimals: int) -> int:
    """Exact decimal text ("2015", "0.05") in base units of ``decimals`` decimals."""
    whole, _, frac = text.partition(".")
    if len(frac) > decimals or not whole.isdigit() or (frac and not frac.isdigit()):
        raise ValueError(f"{text!r} is not a decimal with at most {decimals} decimals")
    scale: int = 10**decimals
    return int(whole) * scale + int(frac.ljust(decimals, "0") or "0")


def _decimal(amount: int, decimals: int, min_decimals: int) -> str:
    sign = "-" if amount < 0 else ""
    scale: int = 10**decimals
    whole, frac = divmod(abs(amount), scale)
    digits = f"{frac:0{decimals}d}".rstrip("0").ljust(min_decimals, "0")
    return f"{sign}{whole:,}" + (f".{digits}" if digits else "")


def usd(amount: int, signed: bool = False) -> str:
    """Token base units as exact dollars: $2,015.00, $0.416666, -$27.50 (+$1.00 if ``signed``)."""
    text = _decimal(abs(amount), TOKEN_DECIMALS, 2)
    sign = "-" if amount < 0 else ("+" if signed and amount > 0 else "")
    return f"{sign}${text}"


def qty(amount: int, market: int) -> str:
    """Synthetic base units as exact whole units: 1.12 oz, 0.05 BTC."""
    return f"{_decimal(amount, AMOUNT_DECIMALS, 0)} {UNITS[MarketId(market)]}"


def feed_answer(price: int) -> int:
    """A price in token base units per whole unit as the feed's answer (8 decimals)."""
    up: int = 10**FEED_DECIMALS
    down: int = 10**TOKEN_DECIMALS
    return price * up // down


def holding(state: ChannelState) -> str:
    """What a state holds, in words: its positions, or none."""
    held = [qty(o.position, m) for m, o in zip(MARKETS, state.outcomes, strict=True) if o.position]
    return "holding " + " and ".join(held) if held else "no position yet"


def short(address: str) -> str:
    return f"{address[:6]}...{address[-4:]}"


# --------------------------------------------------------------------------- the result


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class PartyRow:
    """One line of the summary: everything read from the chain or the agents."""

    name: str
    address: Address
    deposited: int
    paid_out: int
    fees: int  # paid (traders) or earned (the broker)
    ended: str
    balance_before: int  # the party's token balance before its first deposit
    balance_after: int

    @property
    def pnl(self) -> int:
        return self.paid_out - self.deposited


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One settled batch: the orders the auction saw, and its outcome."""

    market: MarketId
    batch: int
    previous_price: int
    signed_price: int
    orders: tuple[BookOrder, ...]
    clearing: Clearing
    owners: dict[bytes, str]  # channel id -> trader name


@dataclass
class DemoResult:
    chain: Chain
    token: Address
    adjudicator: Address
    rows: list[PartyRow] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    batches: list[BatchRecord] = field(default_factory=list)
    plot_path: Path | None = None
    plot_batch: BatchRecord | None = None
    channels: dict[str, ChannelId] = field(default_factory=dict)
    watchtower: Address | None = None
    stale_version: int | None = None
    refuted_with: int | None = None
    slashed: bool = False
    bob_took_channel: bool = False
    alice_closed: bool = False
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def row(self, name: str) -> PartyRow:
        return next(r for r in self.rows if r.name == name)

    def as_json(self) -> dict[str, Any]:
        """The summary as JSON (amounts as decimal strings of token base units)."""
        return {
            "ok": self.ok,
            "chain_id": str(self.chain.chain_id),
            "adjudicator": self.adjudicator,
            "token": self.token,
            "parties": [
                {
                    "name": r.name,
                    "address": r.address,
                    "deposited": str(r.deposited),
                    "paid_out": str(r.paid_out),
                    "pnl": str(r.pnl),
                    "fees": str(r.fees),
                    "ended": r.ended,
                }
                for r in self.rows
            ],
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
            "plot": None if self.plot_path is None else str(self.plot_path),
            "plot_batch": None
            if self.plot_batch is None
            else {
                "market": str(self.plot_batch.market),
                "batch": str(self.plot_batch.batch),
                "price": str(self.plot_batch.signed_price),
                "orders": str(len(self.plot_batch.orders)),
            },
            "story": self.lines,
            "seconds": f"{self.elapsed:.1f}",
        }


class DemoError(RuntimeError):
    """An agent or the watchtower did not do its part in time."""


class DemoBroker(EquivocatingBroker):
    """The demo's broker: records the book of every batch exactly as its auction takes it (for the
    checks and the plot). Honest until :meth:`equivocate` is called."""

    equivocate_batch = None

    def __init__(
        self,
        signer: LocalSigner,
        store: Store,
        chain: Chain,
        adjudicator: Address,
        token: Address,
        config: BrokerConfig,
    ) -> None:
        self.books_seen: list[tuple[int, int, int, tuple[BookOrder, ...]]] = []  # market, batch, previous price
        super().__init__(signer, store, chain, adjudicator, token, config)

    def book_orders(self, book: MarketBook, now: int) -> tuple[list[BookOrder], dict[tuple[bytes, int], OpenOrder]]:
        orders, by_key = super().book_orders(book, now)
        self.books_seen.append((book.market.id, book.open_batch, book.last_price, tuple(orders)))
        return orders, by_key


# --------------------------------------------------------------------------- the story


class Story:
    """The demo's actors and what happened to them; one method per chapter."""

    def __init__(self, chain: Chain, say: Callable[[str], None]) -> None:
        self.chain = chain
        self.say = say
        self.t0 = time.monotonic()
        self.sb: Sandbox | None = None
        self.first_block = 0
        self.parties: dict[str, Party] = {}
        self.balances_before: dict[str, int] = {}
        self.agents: dict[str, TraderAgent] = {}
        self.ended: dict[str, str] = {}
        self.broker: DemoBroker | None = None
        self.watchtower: Watchtower | None = None
        self.client: WatchtowerClient | None = None
        self.result: DemoResult | None = None
        self.last_oracle: dict[MarketId, int] = {}

    # -- plumbing

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """A blocking chain call, through the chain's gate (the agents run theirs in threads)."""
        return await on_chain(self.chain, fn, *args)

    @property
    def box(self) -> Sandbox:
        assert self.sb is not None
        return self.sb

    @property
    def res(self) -> DemoResult:
        assert self.result is not None
        return self.result

    @property
    def the_broker(self) -> DemoBroker:
        assert self.broker is not None
        return self.broker

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.res.checks.append(Check(name, ok, detail))
        if not ok:
            self.say(f"   CHECK FAILED: {name}: {detail}")
        return ok

    async def until(self, predicate: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> float:
        """Wait until ``predicate`` holds (checked every 20 ms); returns the seconds waited."""
        start = time.monotonic()
        while not predicate():
            if time.monotonic() - start > timeout:
                raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")
            await asyncio.sleep(0.02)
        return time.monotonic() - start

    async def until_on_chain(self, predicate: Callable[[], bool], what: str) -> float:
        """Wait until ``predicate`` (which reads the chain) holds; returns the seconds waited."""
        start = time.monotonic()
        while not await self.call(predicate):
            if time.monotonic() - start > WAIT_SECONDS:
                raise DemoError(f"timed out after {WAIT_SECONDS:.0f} s waiting for {what}")
            await asyncio.sleep(0.05)
        return time.monotonic() - start

    def params(self, name: str) -> ChannelParams:
        party = self.agents[name].party
        assert party is not None
        return party.params

    # -- 1. deploy

    async def deploy(self) -> None:
        chain = self.chain
        self.say("1. Deploy")
        deployer_key = chain.dev_private_keys()[0] if chain.in_process else None
        feeds = tuple(FeedSpec(FEEDS[m], FEED_DECIMALS) for m in MARKETS)
        self.sb = await self.call(Sandbox.create, chain, deployer_key, feeds, "demo")
        sb = self.sb
        self.first_block = min(c.block for c in sb.deployment.contracts.values())
        self.result = DemoResult(chain, sb.token.address, sb.adjudicator.address)
        decimals = await self.call(sb.token.decimals)
        self.check("token decimals", decimals == TOKEN_DECIMALS, f"the test token has {decimals} decimals")
        where = "the embedded in-process chain (py-evm)" if chain.in_process else chain.url
        self.say(f"   on {where}, chain id {chain.chain_id}")
        self.say(f"   adjudicator {sb.adjudicator.address}")
        self.say(f"   test token  {sb.token.address} ({decimals} decimals)")
        for market in MARKETS:
            self.say(f"   feed {FEEDS[market]:<9}   {sb.feeds[FEEDS[market]].address}")
        await self.move_oracle(OPENING_PRICES, opening=True)

    async def move_oracle(self, prices: dict[MarketId, str], opening: bool = False) -> None:
        """The oracle agent's job: push new answers to the feeds; printed as read back."""
        sb = self.box
        parts = []
        for market in MARKETS:
            price = parse_decimal(prices[market], TOKEN_DECIMALS)
            feed = sb.feeds[FEEDS[market]]
            await self.call(feed.push, sb.deployer.transactor, feed_answer(price))
            answer = (await self.call(feed.latest)).answer
            now = answer * 10**TOKEN_DECIMALS // 10**FEED_DECIMALS
            before = self.last_oracle.get(market)
            move = "" if before is None else f"{usd(before)} -> "
            parts.append(f"{MARKET_NAMES[market]} {move}{usd(now)}")
            self.last_oracle[market] = now
        self.say(("   oracle opens: " if opening else "   oracle: ") + ", ".join(parts))

    async def oracle_prices(self) -> dict[int, OraclePrice]:
        out: dict[int, OraclePrice] = {}
        for market in MARKETS:
            feed = self.box.feeds[FEEDS[market]]
            out[market] = OraclePrice((await self.call(feed.latest)).answer, await self.call(feed.decimals))
        return out

    # -- 2. open channels

    async def open_channels(self) -> None:
        sb, chain = self.box, self.chain
        self.say("2. Open and fund channels")
        broker_party = await self.call(sb.party, "broker", len(TRADERS) * BROKER_DEPOSIT)
        self.parties["broker"] = broker_party
        for name in TRADERS:
            self.parties[name] = await self.call(sb.party, name, TRADER_TOKENS)
        keeper = await self.call(sb.party, "watchtower", 0)
        for name, party in self.parties.items():
            self.balances_before[name] = await self.call(sb.token.balance_of, party.address)

        markets = tuple(sb.market(FEEDS[m], m, RESOLUTION) for m in MARKETS)
        config = BrokerConfig(
            port=0,
            batch_seconds=3600,  # the demo settles every batch by hand
            fee_bps=FEE_BPS,
            ack_timeout=10,
            channel_deposit=BROKER_DEPOSIT,
            markets=markets,
            reference_prices={m: parse_decimal(OPENING_PRICES[m], TOKEN_DECIMALS) for m in MARKETS},
        )
        broker = DemoBroker(broker_party.signer, MemoryStore(), chain, sb.adjudicator.address, sb.token.address, config)
        await broker.start()
        self.broker = broker
        url = f"ws://127.0.0.1:{broker.port}"
        self.say(f"   broker {short(broker.address)} listens on {url}: fee {FEE_BPS} bps, markets gold and BTC")

        watchtower = Watchtower(
            keeper.signer,
            MemoryStore(),
            chain,
            sb.adjudicator.address,
            WatchtowerConfig(port=0, poll_seconds=0.05, first_block=self.first_block),
        )
        await watchtower.start()
        self.watchtower = watchtower
        self.res.watchtower = watchtower.address
        self.client = WatchtowerClient(f"ws://127.0.0.1:{watchtower.port}", reconnect_delay=0.05)
        await self.client.start()
        self.say(f"   watchtower {short(watchtower.address)} listens on ws://127.0.0.1:{watchtower.port}")

        for name in TRADERS:
            party = self.parties[name]
            agent = TraderAgent(
                party.signer,
                MemoryStore(),
                chain,
                url,
                sb.adjudicator.address,
                timeout=30,
                watchtower=self.client if name == "carol" else None,
            )
            await agent.start()
            await agent.open_channel(TRADER_DEPOSIT, flow=FLOWS[name], challenge_duration=CHALLENGE_DURATION)
            self.agents[name] = agent
            self.res.channels[name] = agent.channel_id
            status = await self.call(sb.adjudicator.status, agent.channel_id)
            b = agent.state.balances
            how = (
                "whoever holds the turn proposes, Yield hands it over"
                if FLOWS[name] == COOPERATIVE
                else f"{name} asks, the broker proposes every state, {name} countersigns"
            )
            self.say(
                f"   {name} {short(party.address)}: channel 0x{agent.channel_id.hex()[:12]}, {FLOWS[name]} flow ({how})"
            )
            self.say(
                f"      on-chain: {name} {usd(status.trader_deposit)} + broker {usd(status.broker_deposit)}; "
                f"co-signed v{agent.state.version} accounts for {usd(b.trader_deposit)} + {usd(b.broker_deposit)}"
            )
            self.check(
                f"{name} funded",
                (status.trader_deposit, status.broker_deposit) == (b.trader_deposit, b.broker_deposit)
                and b.trader_deposit == TRADER_DEPOSIT,
                f"on-chain {status.trader_deposit}/{status.broker_deposit}, "
                f"state {b.trader_deposit}/{b.broker_deposit}",
            )
        self.say("   carol hands every co-signed state and batch price to the watchtower as she gets them")

    # -- 3. trade

    async def trade(self) -> None:
        self.say("3. Trade in batches (one uniform price per market and batch)")
        for number, round_ in enumerate(ROUNDS, start=1):
            self.say(f"   round {number}: orders")
            await self.place_all(round_.quotes)
            for market in MARKETS:
                await self.settle(market)
            await self.move_oracle(round_.oracle_after)

    async def place_all(self, quotes: Sequence[Quote]) -> None:
        described: dict[str, list[str]] = {}
        for quote in quotes:
            await self.place(quote)
            sign = "<=" if quote.side == "buy" else ">="
            amount = parse_decimal(quote.amount, AMOUNT_DECIMALS)
            limit = parse_decimal(quote.limit, TOKEN_DECIMALS)
            described.setdefault(quote.who, []).append(f"{quote.side} {qty(amount, quote.market)} {sign} {usd(limit)}")
        for who in sorted(described, key=TRADERS.index):
            self.say(f"      {who:<5} " + ", ".join(described[who]))

    async def place(self, quote: Quote) -> int:
        amount = parse_decimal(quote.amount, AMOUNT_DECIMALS)
        limit = parse_decimal(quote.limit, TOKEN_DECIMALS)
        collateral, rest = divmod(amount * limit, RESOLUTION)
        if rest:
            raise ValueError(f"{quote}: the limit times the amount is not a whole number of base units")
        max_fee = collateral * MAX_FEE_PER_MILLE // 1000
        return await self.agents[quote.who].place_order(quote.market, quote.side == "buy", amount, collateral, max_fee)

    def active(self) -> dict[str, TraderAgent]:
        return {
            n: a
            for n, a in self.agents.items()
            if a.party is not None and a.party.status not in ("closed", "concluded")
        }

    async def settle(self, market: MarketId) -> BatchRecord:
        broker = self.the_broker
        owners = {bytes(cid): name for name, cid in self.res.channels.items()}
        traders = self.active()
        before = {n: a.state for n, a in traders.items()}
        price = await broker.settle_batch(market)
        seen_market, seen_batch, previous, orders = broker.books_seen[-1]
        if (seen_market, seen_batch) != (market, price.batch):
            raise DemoError(f"the broker's last book is of market {seen_market} batch {seen_batch}")
        for agent in traders.values():
            if agent.ws is not None:

                def priced(a: TraderAgent = agent) -> bool:
                    return a.open_batches.get(market, 1) > price.batch

                await agent.wait_until(priced, "the batch price")
        clearing = clear(orders, RESOLUTION, previous)
        record = BatchRecord(market, price.batch, previous, price.price, orders, clearing, owners)
        self.res.batches.append(record)
        name = MARKET_NAMES[market]
        self.check(
            f"{name} batch {price.batch} price",
            clearing.price == price.price,
            f"signed {price.price}, the auction of its {len(orders)} orders gives {clearing.price}",
        )
        net = [0] * len(MARKETS)
        for party in broker.parties.values():
            for i, outcome in enumerate(party.co_signed.state.outcomes):
                net[i] += outcome.position
        self.check(f"{name} batch {price.batch} broker flat", net == [0] * len(MARKETS), f"broker net positions {net}")

        moves, fees = [], 0
        index = MARKETS.index(market)
        for who, agent in traders.items():
            old, new = before[who].outcomes[index], agent.state.outcomes[index]
            fees += new.fees - old.fees
            change = new.position - old.position
            if change:
                moves.append(f"{who} {'buys' if change > 0 else 'sells'} {qty(abs(change), market)}")
        move = usd(price.price) if price.price == previous else f"{usd(previous)} -> {usd(price.price)}"
        self.say(
            f"   {name} batch {price.batch}: {len(orders)} orders, price {move}, {qty(clearing.volume, market)} traded"
            + (f": {', '.join(moves)}; fees {usd(fees)}" if moves else "")
        )
        rationed = []
        for order in orders:
            filled = clearing.fills.get(order.key, 0)
            if at_price(order, price.price, RESOLUTION) and 0 < filled < order.remaining:
                rationed.append(f"{owners[order.key[0]]} gets {qty(filled, market)} of {qty(order.remaining, market)}")
        if rationed:
            self.say(f"      rationed at {usd(price.price)}: " + ", ".join(rationed))
        return record

    # -- 4. a stale challenge, refuted by the watchtower

    async def dispute(self) -> None:
        sb, broker = self.box, self.the_broker
        carol, client, watchtower = self.agents["carol"], self.client, self.watchtower
        assert client is not None and watchtower is not None and carol.party is not None
        self.say("4. Carol goes offline; the broker challenges with an old state; the watchtower answers")
        resting = [o.order.nonce for o in carol.state.open_orders]
        for nonce in resting:
            await carol.cancel_order(nonce)
        if resting:
            self.say(f"   carol cancels her {len(resting)} resting orders (now at v{carol.state.version})")
        newest = carol.party.co_signed
        params = carol.party.params
        cid = params.channel_id
        await client.flush(WAIT_SECONDS)
        held = watchtower.guarded().get(cid)
        self.check("watchtower holds the newest", held == newest.state.version, f"holds v{held}")
        await carol.stop()
        await client.stop()
        self.say(f"   carol's watchtower holds her newest state v{held}; carol goes offline")

        oracle = await self.oracle_prices()
        status = await self.call(sb.adjudicator.status, cid)
        deposits = (status.trader_deposit, status.broker_deposit)
        fair = payouts(params, newest.state, *deposits, oracle, TOKEN_DECIMALS)
        best: tuple[int, CoSignedState] | None = None
        for version in range(newest.state.version):
            stored = broker.store.state(cid, version)
            if stored is None or stored.trader_signature is None or stored.broker_signature is None:
                continue
            to_broker = payouts(params, stored.state, *deposits, oracle, TOKEN_DECIMALS).to_broker
            if best is None or to_broker >= best[0]:  # the latest of the best: it looks least stale
                signed = CoSignedState(
                    stored.state, Signature(stored.trader_signature), Signature(stored.broker_signature)
                )
                best = (to_broker, signed)
        assert best is not None
        stale = best[1]
        self.res.stale_version = stale.state.version
        self.say(
            f"   at today's oracle prices carol's newest state v{newest.state.version} pays her {usd(fair.to_trader)}; "
            f"of the older states, v{stale.state.version} ({holding(stale.state)}) pays the broker the most, "
            f"{usd(best[0] - fair.to_broker)} more"
        )
        await self.call(sb.adjudicator.challenge, broker.transactor, params, stale)
        self.say(f"   the broker challenges with v{stale.state.version} (co-signed, from its own store)")
        newest_version = newest.state.version
        waited = await self.until_on_chain(
            lambda: sb.adjudicator.status(cid).registered_version == newest_version, "the watchtower's refute"
        )
        status = await self.call(sb.adjudicator.status, cid)
        self.res.refuted_with = status.registered_version
        self.check(
            "stale challenge refuted",
            status.stage == Stage.DISPUTED and status.registered_version == newest_version,
            f"stage {status.stage.name}, registered v{status.registered_version}",
        )
        self.say(
            f"   the watchtower refutes with v{status.registered_version} within {waited:.1f} s; the deadline is now "
            f"one challenge period ({CHALLENGE_DURATION} s of chain time) after the refute"
        )

        def travel() -> int:
            now = self.chain.now()
            deadline = sb.adjudicator.status(cid).deadline
            self.chain.increase_time(max(1, deadline - now))
            for market in MARKETS:  # the oracle keeps its answers fresh
                feed = sb.feeds[FEEDS[market]]
                feed.push(sb.deployer.transactor, feed.latest().answer)
            return deadline - now

        moved = await self.call(travel)
        self.say(f"   ... the demo moves the chain's clock {moved} s forward, to the deadline; the oracle pushes again")
        await self.until_on_chain(lambda: sb.adjudicator.status(cid).stage == Stage.CONCLUDED, "the conclusion")
        await self.until(lambda: cid not in watchtower.guarded(), "the watchtower to finish")
        to_trader, to_broker = await self.paid(cid)
        evidence = await self.call(sb.adjudicator.evidence, cid, newest.state)
        rule = payouts(params, newest.state, *deposits, await self.oracle_prices(), TOKEN_DECIMALS, evidence)
        self.check(
            "carol paid by the rule",
            (to_trader, to_broker) == (rule.to_trader, rule.to_broker),
            f"paid {to_trader}/{to_broker}, the rule says {rule.to_trader}/{rule.to_broker}",
        )
        positions = ", ".join(
            f"{qty(o.position, m)} at {usd(self.last_oracle[m])}"
            for m, o in zip(MARKETS, newest.state.outcomes, strict=True)
            if o.position
        )
        self.say(
            f"   the watchtower concludes v{newest_version} at the oracle price ({positions}): "
            f"carol {usd(to_trader)}, broker {usd(to_broker)}"
        )
        self.ended["carol"] = (
            f"dispute: stale v{stale.state.version} refuted with v{newest_version} by the watchtower, concluded"
        )

    async def paid(self, cid: ChannelId) -> tuple[int, int]:
        """What the adjudicator paid out for a channel (its Closed or Concluded event)."""
        sb = self.box

        def read() -> list[dict[str, Any]]:
            latest = int(self.chain.w3.eth.block_number)
            return [
                e["args"]
                for name in ("Closed", "Concluded")
                for e in sb.adjudicator.logs(name, self.first_block, latest)
                if bytes(e["args"]["channelId"]) == cid
            ]

        events = await self.call(read)
        if len(events) != 1:
            raise DemoError(f"expected one payout event for channel 0x{cid.hex()}, found {len(events)}")
        return int(events[0]["toTrader"]), int(events[0]["toBroker"])

    # -- 5. a cooperative close

    async def close(self) -> None:
        alice = self.agents["alice"]
        self.say("5. Alice closes cooperatively")
        final = await alice.finalize()
        self.say(
            f"   alice and the broker co-sign final state v{final.version}: orders cancelled, positions closed at "
            "the last batch prices"
        )
        await alice.close_on_chain()
        to_trader, to_broker = await self.paid(alice.channel_id)
        params = self.params("alice")
        b = final.balances
        rule = payouts(params, final, b.trader_deposit, b.broker_deposit, {}, TOKEN_DECIMALS)
        self.res.alice_closed = True
        self.check(
            "alice paid by the rule",
            (to_trader, to_broker) == (rule.to_trader, rule.to_broker),
            f"paid {to_trader}/{to_broker}, the rule says {rule.to_trader}/{rule.to_broker}",
        )
        self.say(f"   close(): paid at once, no waiting: alice {usd(to_trader)}, broker {usd(to_broker)}")
        await alice.stop()
        self.ended["alice"] = f"cooperative close with final v{final.version}"

    # -- 6. two prices for one batch

    async def slash(self) -> None:
        sb, broker, bob = self.box, self.the_broker, self.agents["bob"]
        self.say("6. The broker signs two prices for one batch; bob takes his channel")
        await self.place(CHEAT_QUOTE)
        self.say(
            f"   {CHEAT_QUOTE.who} offers {CHEAT_QUOTE.amount} {UNITS[CHEAT_QUOTE.market]} of gold at "
            f">= {usd(parse_decimal(CHEAT_QUOTE.limit, TOKEN_DECIMALS))}"
        )
        first = await broker.settle_batch(GOLD)
        second = await broker.equivocate(first)
        self.say(
            f"   the broker signs gold batch {first.batch} at {usd(first.price)}, then sends bob a second price "
            f"for the same batch: {usd(second.price)}"
        )

        def concluded() -> bool:
            return bob.party is not None and bob.party.status == "concluded"

        waited = await self.until(concluded, "bob to take his channel")
        slashed_at = await self.call(sb.adjudicator.slashed_at, broker.address)
        self.res.slashed = slashed_at is not None
        proofs = [d for k, d in bob.events if k == "proved_two_prices"]
        self.check("broker slashed", slashed_at is not None, f"slashedAt {slashed_at}")
        self.say(
            "   bob's agent proves it on-chain by itself "
            f"(proveTwoPrices: {', '.join(proofs) or 'proven by another'}); the broker is slashed"
        )
        cid = bob.channel_id
        to_trader, to_broker = await self.paid(cid)
        deposits = await self.deposits(cid)
        rule = payouts(self.params("bob"), bob.state, *deposits, {}, TOKEN_DECIMALS, broker_slashed=True)
        self.res.bob_took_channel = to_trader == sum(deposits) and to_broker == 0
        self.check(
            "bob took his channel",
            self.res.bob_took_channel and (to_trader, to_broker) == (rule.to_trader, rule.to_broker),
            f"paid {to_trader}/{to_broker} of {sum(deposits)}",
        )
        self.say(
            f"   concludeSlashed ({waited:.1f} s after the second price): bob takes the whole channel, "
            f"{usd(to_trader)}; the broker {usd(to_broker)}"
        )
        await bob.stop()
        self.ended["bob"] = f"broker slashed (two prices for gold batch {first.batch}): bob took the channel"

    async def deposits(self, cid: ChannelId) -> tuple[int, int]:
        """The trader's and the broker's deposits into a channel (its Deposited events)."""
        sb = self.box
        params = next(self.params(n) for n, c in self.res.channels.items() if c == cid)

        def read() -> list[dict[str, Any]]:
            latest = int(self.chain.w3.eth.block_number)
            return [
                e["args"]
                for e in sb.adjudicator.logs("Deposited", self.first_block, latest)
                if bytes(e["args"]["channelId"]) == cid
            ]

        trader = broker = 0
        for args in await self.call(read):
            if args["participant"] == params.trader:
                trader += int(args["amount"])
            elif args["participant"] == params.broker:
                broker += int(args["amount"])
        return trader, broker

    # -- 7. summary

    async def summarize(self) -> None:
        sb, broker = self.box, self.the_broker
        self.say("7. Summary (every figure read from the chain and the agents' co-signed states)")
        rows: list[PartyRow] = []
        broker_deposited = broker_paid = broker_fees = 0
        for name in TRADERS:
            cid = self.res.channels[name]
            deposited, broker_in = await self.deposits(cid)
            to_trader, to_broker = await self.paid(cid)
            self.check(
                f"{name}'s channel conserves",
                to_trader + to_broker == deposited + broker_in,
                f"paid {to_trader} + {to_broker}, deposited {deposited} + {broker_in}",
            )
            state: ChannelState = broker.party(cid).co_signed.state
            fees = sum(o.fees for o in state.outcomes)
            party = self.parties[name]
            after = await self.call(sb.token.balance_of, party.address)
            rows.append(
                PartyRow(
                    name, party.address, deposited, to_trader, fees, self.ended[name], self.balances_before[name], after
                )
            )
            broker_deposited += broker_in
            broker_paid += to_broker
            broker_fees += fees
        party = self.parties["broker"]
        after = await self.call(sb.token.balance_of, party.address)
        rows.append(
            PartyRow(
                "broker",
                party.address,
                broker_deposited,
                broker_paid,
                broker_fees,
                "slashed for signing two prices",
                self.balances_before["broker"],
                after,
            )
        )
        self.res.rows = rows
        for row in rows:
            self.check(
                f"{row.name}'s tokens",
                row.balance_after - row.balance_before == row.pnl,
                f"balance moved by {row.balance_after - row.balance_before}, PnL {row.pnl}",
            )
            left = await self.call(sb.adjudicator.withdrawable, sb.token.address, row.address)
            self.check(f"{row.name} withdrew everything", left == 0, f"{left} left to withdraw")
        held = await self.call(sb.token.balance_of, sb.adjudicator.address)
        total_in, total_out = sum(r.deposited for r in rows), sum(r.paid_out for r in rows)
        self.check("conservation", total_in == total_out and held == 0, f"in {total_in}, out {total_out}, held {held}")

        self.say(f"   {'party':<7}{'deposited':>12}{'paid out':>14}{'PnL':>14}  {'fees':<16}  how it ended")
        for row in rows:
            fee_text = f"{usd(row.fees)} {'earned' if row.name == 'broker' else 'paid'}"
            self.say(
                f"   {row.name:<7}{usd(row.deposited):>12}{usd(row.paid_out):>14}{usd(row.pnl, signed=True):>14}"
                f"  {fee_text:<16}  {row.ended}"
            )
        self.say(f"   {'total':<7}{usd(total_in):>12}{usd(total_out):>14}{usd(total_out - total_in, signed=True):>14}")
        self.say(
            f"   conservation: payouts {usd(total_out)} = deposits {usd(total_in)}; the adjudicator holds {usd(held)} "
            "and owes nobody a withdrawal (every payout went straight to its wallet)"
        )
        self.say(
            "   every wallet moved by exactly its PnL; every payout is what the pure rule (offchain/settlement.py) says"
        )

    # -- 8. the plot

    def plot(self, path: str | Path) -> None:
        record = max(self.res.batches, key=lambda b: (len(b.orders), -b.batch, -b.market))
        curves = batch_curves(record.orders, RESOLUTION)
        low, high = crossing(curves)
        price = record.signed_price
        self.check(
            "curves cross at the price",
            low <= price <= high and curves.volume(price) == record.clearing.volume,
            f"curves meet on [{low}, {high}], the signed price is {price}",
        )
        market = record.market
        unit = UNITS[market]
        labels = PlotLabels(
            title=f"{MARKET_NAMES[market]} ({FEEDS[market]}) batch {record.batch}: {len(record.orders)} orders",
            price_unit=f"$ per {unit}",
            amount_unit=unit,
            collateral_decimals=TOKEN_DECIMALS,
            price_text=usd(price),
            volume_text=qty(record.clearing.volume, market),
        )
        saved = save_plot(path, curves, price, labels)
        self.res.plot_path = saved
        self.res.plot_batch = record
        where = f"at {usd(low)}" if low == high else f"on [{usd(low)}, {usd(high)}]"
        self.say(
            f"8. Plot: {saved} shows {MARKET_NAMES[market]} batch {record.batch} ({len(record.orders)} orders): "
            f"the buy and sell curves meet {where}, the signed price"
        )

    async def shutdown(self) -> None:
        """Stop whatever still runs (also after a failure)."""
        for agent in self.agents.values():
            await agent.stop()
        if self.client is not None:
            await self.client.stop()
        if self.watchtower is not None:
            await self.watchtower.stop()
        if self.broker is not None:
            await self.broker.stop()


async def _run(chain: Chain, say: Callable[[str], None], plot_path: str | Path) -> DemoResult:
    story = Story(chain, say)
    say(
        "tchan demo: a broker and three traders (alice, bob, carol) trade in state channels over WebSockets; "
        "a watchtower guards carol"
    )
    try:
        await story.deploy()
        await story.open_channels()
        await story.trade()
        await story.dispute()
        await story.close()
        await story.slash()
        await story.summarize()
        story.plot(plot_path)
    finally:
        await story.shutdown()
    result = story.res
    result.elapsed = time.monotonic() - story.t0
    verdict = "all checks passed" if result.ok else "SOME CHECKS FAILED"
    say(f"{verdict}: {sum(c.ok for c in result.checks)}/{len(result.checks)} ({result.elapsed:.1f} s)")
    return result


def run(chain: Chain, out: TextIO, *, plot_path: str | Path = "demo-batch.png", json_out: bool = False) -> DemoResult:
    """Run the story on ``chain`` (a local one: the demo moves its clock); print it to ``out`` as
    it happens, or, with ``json_out``, only the summary as one JSON document at the end."""
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        if not json_out:
            print(line, file=out, flush=True)

    result = asyncio.run(_run(chain, say, plot_path))
    result.lines = lines
    if json_out:
        print(json.dumps(result.as_json(), indent=2), file=out, flush=True)
    return result


def main(
    rpc: str | None, out: TextIO, *, plot_path: str | Path = "demo-batch.png", json_out: bool = False
) -> DemoResult:
    """``tchan demo [--rpc URL]``: on the embedded chain, or on the node at ``rpc`` (a local one,
    such as anvil: the demo moves its clock)."""
    chain = rpc_chain(rpc) if rpc else in_process_chain()
    return run(chain, out, plot_path=plot_path, json_out=json_out)
