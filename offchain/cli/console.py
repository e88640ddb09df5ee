"""The trader's prompt: ``tchan trader`` without ``--script``.

One line, one command (``help`` lists them; docs/cli-trader.md describes each). Lines come from a
terminal (with the prompt ``trader> ``) or from a pipe, which makes the prompt scriptable too::

    printf 'open 5000\\nbuy 1 0.5 2010\\nwait filled 1\\nfinalize\\nclose\\n' | tchan trader ...

**Units.** What the user types and reads is in whole units, written as exact decimals: an
``AMOUNT`` of a market's asset (``0.5`` oz), and ``DEPOSIT``, ``LIMIT`` (tokens per whole unit of
the asset) and ``MAX_FEE`` in tokens (``2010.25``). Each is converted to base units with integer
arithmetic only, and must land exactly on its grid: an amount on the market's resolution, a token
amount on the token's decimals, and the order's collateral (``AMOUNT x LIMIT``) on the token's
decimals too. Anything off the grid is refused, never rounded. ``--json`` output carries base
units, as decimal strings (the project's JSON convention).

**Shape.** :func:`parse_command` turns a line into a typed command (or raises
:class:`ValidationError` naming what is wrong) and touches nothing; :func:`order_amounts` turns an
order's human amounts into base units. Both are pure, as are the ``render_*`` functions and
:func:`trade_events`. :class:`Console` is the thin I/O loop around them: it reads stdin in a
thread (the event loop keeps answering the broker while the user types), runs one command at a
time on the :class:`~offchain.agents.trader.TraderAgent`, prints each result (text, or one JSON
line with ``--json``) or one ``error: <code>: <reason>`` line, and prints what happens in the
background (fills, price changes, the agent's events) as ``* ...`` lines: at once while no one is
typing, and held back until the next prompt while a terminal user is at the prompt.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import json
import queue
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar, Final

from offchain.cli.common import Output, format_fraction, jsonable, table
from offchain.engine.rules import accepts_price, lock_needed, position_value
from offchain.errors import TradingChannelsError, ValidationError
from offchain.model import MAX_AMOUNT, MAX_BALANCE, ChannelParams, ChannelState, Market, OpenOrder, parse_decimal

if TYPE_CHECKING:
    from offchain.agents.trader import TraderAgent
    from offchain.protocol.party import ChannelParty

PROMPT: Final = "trader> "
MAX_LINE_BYTES: Final = 4096
MAX_QUANTITY_CHARS: Final = 80
MAX_WAIT_BATCHES: Final = 1000
MAX_WAIT_SECONDS: Final = 3600
DEFAULT_WAIT_FILLED_SECONDS: Final = 60
WATCH_SECONDS: Final = 1.0  # the background watcher looks at least this often
STATUS_EVENTS: Final = 5  # the agent's latest events that `status` shows
FLOWS: Final = {
    "server_initiative": "server_initiative",
    "server-initiative": "server_initiative",
    "cooperative": "cooperative",
}

HELP: Final = (
    ("open DEPOSIT [cooperative|server_initiative]", "open a channel with the broker and deposit DEPOSIT tokens"),
    ("deposit AMOUNT", "deposit AMOUNT more tokens into the channel"),
    ("buy MARKET AMOUNT LIMIT [MAX_FEE]", "buy AMOUNT units of MARKET at LIMIT tokens per unit or less"),
    ("sell MARKET AMOUNT LIMIT [MAX_FEE]", "sell AMOUNT units of MARKET at LIMIT tokens per unit or more"),
    ("cancel NONCE | cancel all", "cancel one open order, or every one"),
    ("orders", "open orders: nonce, market, side, amount, filled, limit, max fee, expiry"),
    ("balances", "available, locked and deposited collateral, yours and the broker's"),
    ("positions", "per market: your position, the mark (latest batch price), its value, fees paid"),
    ("prices", "the latest signed batch price of each market"),
    ("status", "channel, version, flow, connection, the latest events"),
    ("wait [N]", "wait until N more batches (default 1) of every market are priced and settled"),
    ("wait filled NONCE [SECONDS]", f"wait until order NONCE is filled (default {DEFAULT_WAIT_FILLED_SECONDS} s)"),
    ("finalize", "close every position at the latest batch price, cancel every order, co-sign the final state"),
    ("close", "submit the final state on-chain: both parties are paid at once"),
    ("help", "this list"),
    ("quit | exit", "leave (so does the end of the input, or Ctrl-D)"),
)
HELP_FOOTER: Final = (
    "AMOUNT is in whole units of the market's asset (0.5); DEPOSIT, LIMIT and MAX_FEE in tokens (2010.25).\n"
    "Every amount must be exact on its grid (the market's resolution, the token's decimals).\n"
    "MAX_FEE defaults to the broker's fee on the order's collateral. An empty line shows what happened meanwhile."
)


class NotNow(TradingChannelsError):
    """The command does not apply to the channel as it stands (no channel yet, already final, ...)."""

    code = "not_now"


class InsufficientFunds(ValidationError):
    """The wallet or the channel holds less than the command needs."""

    code = "insufficient_funds"


class Interrupted(TradingChannelsError):
    """The command was interrupted (Ctrl-C) before it finished."""

    code = "interrupted"


# --------------------------------------------------------------------------- exact amounts


_QUANTITY = re.compile(r"([0-9]+)(?:\.([0-9]+))?")


@dataclass(frozen=True, slots=True)
class Quantity:
    """A non-negative decimal exactly as typed: ``digits / 10**places``, with no trailing zero
    after the point (``1.50`` is ``Quantity(15, 1)``)."""

    digits: int
    places: int

    def __str__(self) -> str:
        return format_fraction(self.digits, 10**self.places)

    @property
    def is_zero(self) -> bool:
        return self.digits == 0


def parse_quantity(raw: str, what: str) -> Quantity:
    """``12``, ``0.5``, ``2010.25``: digits with at most one point and digits on both sides.
    Nothing else (no sign, exponent, separator, ``inf``)."""
    match = _QUANTITY.fullmatch(raw) if len(raw) <= MAX_QUANTITY_CHARS else None
    if match is None:
        raise ValidationError(f"{what} must be a plain decimal number like 12 or 0.5, got {raw[:40]!r}")
    whole, fraction = match.group(1), (match.group(2) or "").rstrip("0")
    return Quantity(int(whole + fraction), len(fraction))


def grid_of(scale: int) -> str:
    """How a quantity with ``scale`` base units per whole unit may be written."""
    places = len(str(scale)) - 1
    if scale == 10**places:
        return "a whole number" if places == 0 else f"at most {places} decimal place{'s' if places > 1 else ''}"
    return f"a multiple of 1/{scale}"


def to_base_units(quantity: Quantity, scale: int, what: str) -> int:
    """``quantity`` whole units in base units (``scale`` per whole unit), exactly, or a
    ValidationError if it is not a whole number of base units."""
    numerator = quantity.digits * scale
    denominator: int = 10**quantity.places
    if numerator % denominator:
        raise ValidationError(f"{what} {quantity} is off the grid: it takes {grid_of(scale)}")
    return numerator // denominator


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class Help:
    name: ClassVar[str] = "help"


@dataclass(frozen=True, slots=True)
class Open:
    name: ClassVar[str] = "open"
    deposit: Quantity
    flow: str = "server_initiative"


@dataclass(frozen=True, slots=True)
class Deposit:
    name: ClassVar[str] = "deposit"
    amount: Quantity


@dataclass(frozen=True, slots=True)
class PlaceOrder:
    name: ClassVar[str] = "order"
    market: int
    is_buy: bool
    amount: Quantity
    limit: Quantity
    max_fee: Quantity | None = None

    @property
    def side(self) -> str:
        return "buy" if self.is_buy else "sell"


@dataclass(frozen=True, slots=True)
class Cancel:
    """``nonce`` None: every open order."""

    name: ClassVar[str] = "cancel"
    nonce: int | None


@dataclass(frozen=True, slots=True)
class ShowOrders:
    name: ClassVar[str] = "orders"


@dataclass(frozen=True, slots=True)
class ShowBalances:
    name: ClassVar[str] = "balances"


@dataclass(frozen=True, slots=True)
class ShowPositions:
    name: ClassVar[str] = "positions"


@dataclass(frozen=True, slots=True)
class ShowPrices:
    name: ClassVar[str] = "prices"


@dataclass(frozen=True, slots=True)
class ShowStatus:
    name: ClassVar[str] = "status"


@dataclass(frozen=True, slots=True)
class WaitBatches:
    name: ClassVar[str] = "wait"
    count: int = 1


@dataclass(frozen=True, slots=True)
class WaitFilled:
    name: ClassVar[str] = "wait_filled"
    nonce: int
    seconds: int = DEFAULT_WAIT_FILLED_SECONDS


@dataclass(frozen=True, slots=True)
class Finalize:
    name: ClassVar[str] = "finalize"


@dataclass(frozen=True, slots=True)
class Close:
    name: ClassVar[str] = "close"


@dataclass(frozen=True, slots=True)
class Quit:
    name: ClassVar[str] = "quit"


Command = (
    Help
    | Open
    | Deposit
    | PlaceOrder
    | Cancel
    | ShowOrders
    | ShowBalances
    | ShowPositions
    | ShowPrices
    | ShowStatus
    | WaitBatches
    | WaitFilled
    | Finalize
    | Close
    | Quit
)

_SYNTAX: Final = {syntax.split()[0]: syntax for syntax, _ in HELP}
_NAMES: Final = sorted({*_SYNTAX, "exit"})


def _usage(name: str) -> ValidationError:
    return ValidationError(f"usage: {_SYNTAX[name]}")


def _integer(raw: str, what: str, low: int, high: int) -> int:
    value = parse_decimal(raw, what)
    if not low <= value <= high:
        raise ValidationError(f"{what} must be within [{low}, {high}], got {value}")
    return value


def _positive(raw: str, what: str) -> Quantity:
    quantity = parse_quantity(raw, what)
    if quantity.is_zero:
        raise ValidationError(f"{what} must be more than 0")
    return quantity


def _no_arguments(name: str, args: Sequence[str]) -> None:
    if args:
        raise ValidationError(f"{name} takes no arguments (usage: {_SYNTAX[name]})")


def parse_command(line: str) -> Command | None:
    """One line of input as a command; None for an empty line or a ``#`` comment.

    Pure: raises :class:`ValidationError` with the reason for anything malformed. Command names,
    flows and ``all``/``filled`` are case-insensitive; amounts are :func:`parse_quantity`
    decimals, market ids, nonces and counts canonical decimal integers."""
    if len(line.encode("utf-8", "surrogatepass")) > MAX_LINE_BYTES:
        raise ValidationError(f"the line is longer than {MAX_LINE_BYTES} bytes")
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if not text.replace("\t", " ").isprintable():
        raise ValidationError("the line holds control characters")
    words = text.split()
    name, args = words[0].lower(), words[1:]
    if name in ("quit", "exit"):
        _no_arguments("quit", args)
        return Quit()
    simple: dict[str, Command] = {
        "help": Help(),
        "orders": ShowOrders(),
        "balances": ShowBalances(),
        "positions": ShowPositions(),
        "prices": ShowPrices(),
        "status": ShowStatus(),
        "finalize": Finalize(),
        "close": Close(),
    }
    if name in simple:
        _no_arguments(name, args)
        return simple[name]
    if name == "open":
        if not 1 <= len(args) <= 2:
            raise _usage(name)
        flow = "server_initiative"
        if len(args) == 2:
            if args[1].lower() not in FLOWS:
                raise ValidationError(f"the flow must be cooperative or server_initiative, got {args[1][:40]!r}")
            flow = FLOWS[args[1].lower()]
        return Open(_positive(args[0], "DEPOSIT"), flow)
    if name == "deposit":
        if len(args) != 1:
            raise _usage(name)
        return Deposit(_positive(args[0], "AMOUNT"))
    if name in ("buy", "sell"):
        if not 3 <= len(args) <= 4:
            raise _usage(name)
        return PlaceOrder(
            market=_integer(args[0], "MARKET", 0, 2**32 - 1),
            is_buy=name == "buy",
            amount=_positive(args[1], "AMOUNT"),
            limit=_positive(args[2], "LIMIT"),
            max_fee=parse_quantity(args[3], "MAX_FEE") if len(args) == 4 else None,
        )
    if name == "cancel":
        if len(args) != 1:
            raise _usage(name)
        if args[0].lower() == "all":
            return Cancel(None)
        return Cancel(_integer(args[0], "NONCE", 1, MAX_AMOUNT))
    if name == "wait":
        if args and args[0].lower() == "filled":
            if not 2 <= len(args) <= 3:
                raise ValidationError("usage: wait filled NONCE [SECONDS]")
            seconds = DEFAULT_WAIT_FILLED_SECONDS
            if len(args) == 3:
                seconds = _integer(args[2], "SECONDS", 1, MAX_WAIT_SECONDS)
            return WaitFilled(_integer(args[1], "NONCE", 1, MAX_AMOUNT), seconds)
        if len(args) > 1:
            raise ValidationError("usage: wait [N] | wait filled NONCE [SECONDS]")
        return WaitBatches(_integer(args[0], "N", 1, MAX_WAIT_BATCHES) if args else 1)
    close = difflib.get_close_matches(name, _NAMES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "; type help for the list"
    raise ValidationError(f"unknown command {words[0][:40]!r}{hint}")


@dataclass(frozen=True, slots=True)
class OrderAmounts:
    """An order's amounts in base units, as the order signs them."""

    amount_synthetic: int
    amount_collateral: int
    max_fee: int
    price: int  # the limit, in token base units per whole unit of the asset

    @property
    def lock(self) -> int:
        """Collateral the order locks when it is placed (seed 002: a buy its collateral and fee,
        a sell its fee)."""
        return self.amount_collateral + self.max_fee


def order_amounts(command: PlaceOrder, resolution: int, decimals: int, fee_bps: int) -> OrderAmounts:
    """Base units of an order typed in whole units, exactly; a ValidationError for anything off
    its grid or out of bounds.

    ``amount_synthetic = AMOUNT * resolution`` and ``amount_collateral = AMOUNT * LIMIT *
    10^decimals`` must both be integers. ``MAX_FEE`` defaults to ``fee_bps`` of the collateral,
    rounded up (the broker charges at most that on a fill at the limit, and never more than the
    order's max fee)."""
    synthetic = to_base_units(command.amount, resolution, "AMOUNT")
    price = to_base_units(command.limit, 10**decimals, "LIMIT")
    value = synthetic * price
    if value % resolution:
        raise ValidationError(
            f"AMOUNT x LIMIT = {format_fraction(value, resolution * 10**decimals)} tokens is off the grid: "
            f"the token takes {grid_of(10**decimals)}"
        )
    collateral = value // resolution
    if command.max_fee is not None:
        max_fee = to_base_units(command.max_fee, 10**decimals, "MAX_FEE")
    else:
        max_fee = -(-collateral * fee_bps // 10_000)
    for what, amount in (("AMOUNT", synthetic), ("AMOUNT x LIMIT", collateral), ("MAX_FEE", max_fee)):
        if amount > MAX_AMOUNT:
            raise ValidationError(f"{what} is {amount} base units, more than an order carries (2^64 - 1)")
    return OrderAmounts(synthetic, collateral, max_fee, price)


def deposit_amount(quantity: Quantity, decimals: int, what: str = "DEPOSIT") -> int:
    """A deposit typed in tokens, in base units (exact, within a balance's bound)."""
    amount = to_base_units(quantity, 10**decimals, what)
    if amount > MAX_BALANCE:
        raise ValidationError(f"{what} is {amount} base units, more than a balance holds (2^63 - 1)")
    return amount


# --------------------------------------------------------------------------- rendering (pure)


@dataclass(frozen=True, slots=True)
class MarketInfo:
    id: int
    resolution: int
    name: str = ""  # the feed's description, e.g. "XAU / USD", when the feed has one

    @property
    def label(self) -> str:
        return f"{self.id} {self.name}" if self.name else str(self.id)


@dataclass(frozen=True, slots=True)
class Units:
    """How to show amounts: the token's decimals and symbol, each market's resolution and name."""

    decimals: int
    symbol: str
    markets: Mapping[int, MarketInfo]

    def money(self, amount: int) -> str:
        """Token base units in tokens, with at least two decimals (``5000.00``, ``0.603``)."""
        return format_fraction(amount, 10**self.decimals, min(2, self.decimals))

    def tokens(self, amount: int) -> str:
        return f"{self.money(amount)} {self.symbol}"

    def market(self, market: int) -> MarketInfo:
        info = self.markets.get(market)
        if info is None:
            known = ", ".join(str(m) for m in sorted(self.markets)) or "none"
            raise ValidationError(f"market {market} is not traded here (markets: {known})")
        return info

    def synthetic(self, market: int, amount: int) -> str:
        return format_fraction(amount, self.market(market).resolution)

    def limit(self, open_order: OpenOrder) -> str:
        """The order's limit: tokens per whole unit of its asset (``~`` if not exact)."""
        order = open_order.order
        resolution = self.market(order.market).resolution
        return format_fraction(
            order.amount_collateral * resolution, order.amount_synthetic * 10**self.decimals, min(2, self.decimals)
        )


@dataclass(frozen=True, slots=True)
class Result:
    """What a command (or a background event) prints: ``data`` with ``--json`` (base units),
    else ``text``."""

    data: dict[str, Any]
    text: str


def expiry_text(hours: int) -> str:
    """An order's expiration (hours since the epoch) as a UTC time."""
    return datetime.fromtimestamp(hours * 3600, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def render_orders(units: Units, orders: Sequence[OpenOrder]) -> Result:
    ordered = sorted(orders, key=lambda o: o.order.nonce)
    data = {
        "orders": [
            {
                "nonce": o.order.nonce,
                "market": o.order.market,
                "side": "buy" if o.order.is_buy else "sell",
                "amount_synthetic": o.order.amount_synthetic,
                "filled": o.filled,
                "amount_collateral": o.order.amount_collateral,
                "max_fee": o.order.max_fee,
                "expiration": o.order.expiration,
                "first_batch": o.first_batch,
            }
            for o in ordered
        ]
    }
    if not ordered:
        return Result(data, "no open orders")
    rows = [
        (
            str(o.order.nonce),
            units.market(o.order.market).label,
            "buy" if o.order.is_buy else "sell",
            units.synthetic(o.order.market, o.order.amount_synthetic),
            units.synthetic(o.order.market, o.filled),
            units.limit(o),
            units.money(o.order.max_fee),
            expiry_text(o.order.expiration),
        )
        for o in ordered
    ]
    header = ("nonce", "market", "side", "amount", "filled", f"limit ({units.symbol})", "max fee", "expiry")
    return Result(data, table(rows, header))


def equity(params: ChannelParams, state: ChannelState, marks: Mapping[int, int]) -> int | None:
    """The trader's collateral plus its positions valued at the marks (floored, as the engine
    values them); None while a market with a position has no mark."""
    total = state.balances.trader_available + state.balances.trader_locked
    for market, outcome in zip(params.markets, state.outcomes, strict=True):
        if outcome.position:
            mark = marks.get(market.id)
            if mark is None:
                return None
            total += position_value(outcome.position, mark, market.resolution)
    return total


def render_balances(units: Units, params: ChannelParams, state: ChannelState, marks: Mapping[int, int]) -> Result:
    b = state.balances
    worth = equity(params, state, marks)
    data = {**{k: int(v) for k, v in b.to_json().items()}, "version": state.version, "equity": worth}
    rows = [
        ("available", units.money(b.trader_available), units.money(b.broker_available)),
        ("locked", units.money(b.trader_locked), units.money(b.broker_locked)),
        ("deposited", units.money(b.trader_deposit), units.money(b.broker_deposit)),
    ]
    text = table(rows, (f"version {state.version} ({units.symbol})", "you", "broker"))
    if worth is not None:
        text += f"\nyour equity at the marks: {units.tokens(worth)} (collateral + positions at the latest prices)"
    return Result(data, text)


def render_positions(
    units: Units,
    params: ChannelParams,
    state: ChannelState,
    marks: Mapping[int, int],
    mark_batches: Mapping[int, int],
) -> Result:
    items: list[dict[str, Any]] = []
    rows = []
    for market, outcome in zip(params.markets, state.outcomes, strict=True):
        mark = marks.get(market.id)
        value = position_value(outcome.position, mark, market.resolution) if mark is not None else None
        items.append(
            {
                "market": market.id,
                "position": outcome.position,
                "mark": mark,
                "mark_batch": mark_batches.get(market.id),
                "value": value,
                "fees": outcome.fees,
                "last_batch": outcome.last_batch,
            }
        )
        rows.append(
            (
                units.market(market.id).label,
                units.synthetic(market.id, outcome.position),
                f"{units.money(mark)} (batch {mark_batches.get(market.id, '?')})" if mark is not None else "-",
                units.money(value) if value is not None else "-",
                units.money(outcome.fees),
            )
        )
    header = ("market", "position", f"mark ({units.symbol})", "value at mark", "fees paid")
    return Result({"positions": items}, table(rows, header))


def render_prices(
    units: Units, marks: Mapping[int, int], mark_batches: Mapping[int, int], open_batches: Mapping[int, int]
) -> Result:
    items: list[dict[str, Any]] = []
    rows = []
    for market in sorted(units.markets):
        price, batch = marks.get(market), mark_batches.get(market)
        items.append({"market": market, "batch": batch, "price": price, "open_batch": open_batches.get(market)})
        rows.append(
            (
                units.market(market).label,
                str(batch) if batch is not None else "-",
                units.money(price) if price is not None else "-",
                str(open_batches.get(market, "-")),
            )
        )
    return Result({"prices": items}, table(rows, ("market", "batch", f"price ({units.symbol})", "open batch")))


def trade_events(
    units: Units,
    params: ChannelParams,
    before: ChannelState,
    after: ChannelState,
    price_of: Callable[[int, int], int | None],
) -> list[Result]:
    """The fills between two consecutive co-signed states, one event per market traded.

    A transition that moves a market's ``last_batch`` is that batch's trade: what each order of
    the market gained in ``filled`` (an order that left the book filled the rest) is its fill, the
    outcome's fees grew by the fee. ``price_of(market, batch)`` is the signed price held, if any."""
    events = []
    now_filled = {o.order.nonce: o.filled for o in after.open_orders}
    for market, old, new in zip(params.markets, before.outcomes, after.outcomes, strict=True):
        if new.last_batch <= old.last_batch:
            continue
        fills: list[dict[str, Any]] = []
        parts = []
        for open_order in before.open_orders:
            order = open_order.order
            if order.market != market.id:
                continue
            filled = now_filled.get(order.nonce, order.amount_synthetic)
            gained = filled - open_order.filled
            if gained <= 0:
                continue
            side = "bought" if order.is_buy else "sold"
            fills.append(
                {
                    "nonce": order.nonce,
                    "side": "buy" if order.is_buy else "sell",
                    "amount_synthetic": gained,
                    "filled": filled,
                    "order_amount": order.amount_synthetic,
                }
            )
            done = (
                "filled"
                if filled == order.amount_synthetic
                else f"{units.synthetic(market.id, filled)} of {units.synthetic(market.id, order.amount_synthetic)}"
            )
            parts.append(f"order {order.nonce} {side} {units.synthetic(market.id, gained)} ({done})")
        price = price_of(market.id, new.last_batch)
        fee = new.fees - old.fees
        data = {
            "market": market.id,
            "batch": new.last_batch,
            "price": price,
            "fills": fills,
            "fee": fee,
            "position": new.position,
            "version": after.version,
        }
        at = f" at {units.tokens(price)}" if price is not None else ""
        text = (
            f"trade: batch {new.last_batch} of market {units.market(market.id).label}{at}: "
            f"{', '.join(parts) or 'no order of yours'}; fee {units.tokens(fee)}; "
            f"position {units.synthetic(market.id, new.position)}"
        )
        events.append(Result(data, text))
    return events


def awaits_trade(params: ChannelParams, state: ChannelState, market: int, batch: int, price: int) -> bool:
    """Whether ``state`` may still get a trade of ``batch`` of ``market`` priced at ``price``: it
    does not reflect that batch yet, and an open order of the market, eligible in that batch,
    accepts the price (only such an order can fill in it)."""
    index = params.market_index(market)
    if state.outcomes[index].last_batch >= batch:
        return False
    resolution = params.markets[index].resolution
    return any(
        o.order.market == market and o.first_batch <= batch and accepts_price(o.order, price, resolution)
        for o in state.open_orders
    )


def help_result() -> Result:
    width = max(len(syntax) for syntax, _ in HELP)
    lines = [f"{syntax.ljust(width)}  {does}" for syntax, does in HELP]
    return Result(
        {"commands": [{"syntax": syntax, "does": does} for syntax, does in HELP]},
        "\n".join(lines) + "\n\n" + HELP_FOOTER,
    )


def printable(text: str) -> str:
    """``text`` on one line with every control character shown escaped: codes and reasons may
    come from the broker, and must not drive the user's terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in " ".join(text.split()))


def error_text(exc: TradingChannelsError) -> tuple[str, str, str | None]:
    """(code, reason on one line, rule) of an error, control characters escaped; a broker's
    refusal already names its code in its reason, which is not repeated."""
    code, reason = printable(exc.code), printable(exc.reason)
    if reason.startswith(f"{code}: "):
        reason = reason[len(code) + 2 :]
    rule = getattr(exc, "rule", None)
    return code, reason, printable(rule) if isinstance(rule, str) else None


# --------------------------------------------------------------------------- stdin


class LineReader:
    """Reads lines of a binary stream in a daemon thread, one line per :meth:`readline` call, so
    that the event loop runs on while the user types. A daemon thread, not an executor's: one
    blocked on a terminal must not hold up the interpreter's exit."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._requests: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, asyncio.Future[bytes]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def readline(self) -> bytes:
        """The next line (at most MAX_LINE_BYTES + 1 bytes of it, the rest dropped), b"" at the
        end of the input."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tchan-console-stdin", daemon=True)
            self._thread.start()
        self._requests.put((loop, future))
        return await future

    def _run(self) -> None:
        while True:
            loop, future = self._requests.get()
            try:
                line = self._read()
            except (OSError, ValueError):
                line = b""
            try:
                loop.call_soon_threadsafe(_settle, future, line)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return

    def _read(self) -> bytes:
        line = self._stream.readline(MAX_LINE_BYTES + 1)
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while True:  # drop the rest of an overlong line
                rest = self._stream.readline(MAX_LINE_BYTES)
                if not rest or rest.endswith(b"\n"):
                    break
        return line


def _settle(future: asyncio.Future[bytes], line: bytes) -> None:
    if not future.done():
        future.set_result(line)


def decode_line(raw: bytes) -> str:
    if len(raw.rstrip(b"\r\n")) > MAX_LINE_BYTES:
        raise ValidationError(f"the line is longer than {MAX_LINE_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError("the line is not valid UTF-8") from exc


# --------------------------------------------------------------------------- the session


_QUIT: Final = object()


@dataclass
class _Seen:
    """What the background watcher has already reported."""

    events: int = 0
    state: ChannelState | None = None
    batches: dict[int, int] = field(default_factory=dict)
    prices: dict[int, int] = field(default_factory=dict)
    connected: bool = True


class Console:
    """The prompt around one started trader agent."""

    def __init__(
        self,
        agent: TraderAgent,
        out: Output,
        reader: LineReader,
        *,
        interactive: bool,
        debug: bool = False,
        broker_url: str = "",
    ) -> None:
        self.agent = agent
        self.out = out
        self.reader = reader
        self.interactive = interactive
        self.debug = debug
        self.broker_url = broker_url
        self.units = Units(0, "tokens", {})
        self.fee_bps = 0
        self.batch_seconds = 1
        self._seen = _Seen()
        self._held: list[str] = []
        self._at_prompt = False
        self._command: asyncio.Task[Result] | None = None
        self._stop = asyncio.Event()

    # ------------------------------------------------------------------ the loop

    async def run(self) -> int:
        """Read and run commands until ``quit``, the end of the input or Ctrl-C at the prompt."""
        await self._load_units()
        self._baseline()
        self._ready()
        watcher = asyncio.create_task(self._watch())
        loop = asyncio.get_running_loop()
        handles_sigint = _add_sigint(loop, self._on_sigint)
        try:
            while True:
                self._collect()
                self._flush_held()
                raw = await self._next_line()
                if raw is None or await self._handle(raw) is _QUIT:
                    break
        finally:
            if handles_sigint:
                loop.remove_signal_handler(signal.SIGINT)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        self._collect()
        self._flush_held()
        self._goodbye()
        return 0

    async def _next_line(self) -> bytes | None:
        """The next line, or None at the end of the input or on Ctrl-C at the prompt."""
        if self._stop.is_set():
            return None
        if self.interactive:
            prompt_stream = self.out.stderr if self.out.as_json else self.out.stdout
            prompt_stream.write(PROMPT)
            prompt_stream.flush()
        self._at_prompt = True
        line = asyncio.ensure_future(self.reader.readline())
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({line, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._at_prompt = False
            stop.cancel()
        if not line.done():  # Ctrl-C: the reader thread is left blocked; it is a daemon
            if self.interactive:
                print(file=self.out.stdout, flush=True)
            return None
        raw = line.result()
        if raw == b"":
            if self.interactive:
                print(file=self.out.stdout, flush=True)
            return None
        return raw

    def _on_sigint(self) -> None:
        """Ctrl-C interrupts the running command; at the prompt it leaves, like ``quit``."""
        if self._command is not None and not self._command.done():
            self._command.cancel()
        else:
            self._stop.set()

    async def _handle(self, raw: bytes) -> object:
        try:
            command = parse_command(decode_line(raw))
        except ValidationError as exc:
            self._error(None, exc)
            return None
        if command is None:
            return None
        if isinstance(command, Quit):
            return _QUIT
        task = asyncio.create_task(self._execute(command))
        self._command = task
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            self._command = None
        self._collect()
        if task.cancelled():
            self._error(command, Interrupted("the command was interrupted (Ctrl-C); what it had done stands"))
            return None
        failure = task.exception()
        if failure is None:
            result = task.result()
            self.out.result({"command": command.name, **result.data}, result.text)
        elif isinstance(failure, TradingChannelsError):
            self._error(command, failure)
        else:
            if self.debug:
                traceback.print_exception(failure, file=self.out.stderr)
            reason = f"{type(failure).__name__}: {failure}" + ("" if self.debug else " (--debug shows the traceback)")
            self._error(command, TradingChannelsError(reason), code="internal")
        return None

    def _error(self, command: Command | None, exc: TradingChannelsError, code: str | None = None) -> None:
        error_code, reason, rule = error_text(exc)
        error_code = code or error_code
        data: dict[str, Any] = {"command": command.name if command else None, "error": error_code, "reason": reason}
        if rule:
            data["rule"] = rule
        self.out.result(data, f"error: {error_code}: {reason}" + (f" (rule {rule})" if rule else ""))

    # ------------------------------------------------------------------ background events

    async def _watch(self) -> None:
        from offchain.agents.trader import AgentTimeout

        while True:
            try:
                await self.agent.wait_until(self._has_news, "news", timeout=WATCH_SECONDS)
            except AgentTimeout:
                pass
            if not self._collect():
                await asyncio.sleep(WATCH_SECONDS)

    def _co_signed(self) -> ChannelState | None:
        party = self.agent.party
        if party is None or not party.co_signed.trader_signature or not party.co_signed.broker_signature:
            return None
        return party.co_signed.state

    def _has_news(self) -> bool:
        agent, seen = self.agent, self._seen
        state = self._co_signed()
        return (
            len(agent.events) != seen.events
            or dict(agent.mark_batches) != seen.batches
            or (state is not None and (seen.state is None or state.version != seen.state.version))
            or (agent.ws is not None) != seen.connected
        )

    def _baseline(self) -> None:
        """Start reporting from now: nothing that happened before the prompt is an event."""
        seen = self._seen
        seen.events = len(self.agent.events)
        seen.state = self._co_signed()
        seen.batches = dict(self.agent.mark_batches)
        seen.prices = dict(self.agent.marks)
        seen.connected = self.agent.ws is not None

    def _collect(self) -> bool:
        """Report what changed since the last look; False if that failed (it is said as an
        event, and the next look tries again)."""
        try:
            self._collect_all()
        except TradingChannelsError as exc:  # e.g. the store cannot be read
            self._emit("console", {"error": exc.code, "reason": exc.reason}, f"console: {exc.code}: {exc.reason}")
            return False
        return True

    def _collect_all(self) -> None:
        """The agent's events, the connection, fills, and prices that moved."""
        agent, seen = self.agent, self._seen
        for code, detail in agent.events[seen.events :]:
            if code != "deposited":  # the command that deposited says so itself
                self._emit("agent", {"code": code, "detail": detail}, f"{printable(code)}: {printable(detail)}")
        seen.events = len(agent.events)
        connected = agent.ws is not None
        if connected != seen.connected:
            seen.connected = connected
            text = f"connection: back to {self.broker_url}" if connected else "connection: lost, reconnecting"
            self._emit("connection", {"connected": connected}, text)
        self._collect_trades()
        for market, batch in sorted(agent.mark_batches.items()):
            if batch <= seen.batches.get(market, 0):
                continue
            seen.batches[market] = batch
            price, previous = agent.marks.get(market), seen.prices.get(market)
            if price is None or price == previous:
                continue
            seen.prices[market] = price
            label = self.units.markets[market].label if market in self.units.markets else str(market)
            was = f" (was {self.units.money(previous)})" if previous is not None else ""
            self._emit(
                "price",
                {"market": market, "batch": batch, "price": price, "previous": previous},
                f"price: market {label} batch {batch}: {self.units.tokens(price)}{was}",
            )

    def _collect_trades(self) -> None:
        seen, current = self._seen, self._co_signed()
        if current is None:
            return
        previous = seen.state
        if previous is None or previous.channel_id != current.channel_id or current.version <= previous.version:
            seen.state = current if previous is None or previous.channel_id != current.channel_id else previous
            return
        party = self.agent.party
        assert party is not None
        states = []
        for version in range(previous.version + 1, current.version):
            stored = self.agent.store.state(current.channel_id, version)
            if stored is not None and stored.co_signed:
                states.append(stored.state)
        states.append(current)
        broker = party.params.broker
        for state in states:
            for event in trade_events(self.units, party.params, previous, state, self._price_of(broker)):
                self._emit("trade", event.data, event.text)
            previous = state
        seen.state = current

    def _price_of(self, broker: str) -> Callable[[int, int], int | None]:
        def price_of(market: int, batch: int) -> int | None:
            held = self.agent.store.batch_prices(broker, market, batch)
            return held[0].price.price if held else None

        return price_of

    def _emit(self, kind: str, data: dict[str, Any], text: str) -> None:
        line = json.dumps(jsonable({"event": kind, **data})) if self.out.as_json else f"* {text}"
        if self.interactive and self._at_prompt:
            self._held.append(line)  # printing now would garble what the user is typing
        else:
            print(line, file=self.out.stdout, flush=True)

    def _flush_held(self) -> None:
        for line in self._held:
            print(line, file=self.out.stdout, flush=True)
        self._held.clear()

    # ------------------------------------------------------------------ start and end

    async def _load_units(self) -> None:
        """The token's decimals and symbol and the markets' names, read once from the chain."""
        from offchain.agents.common import on_chain
        from offchain.chain.client import PriceFeedClient, TokenClient

        agent = self.agent
        welcome = agent.welcome
        party = agent.party
        if welcome is not None:
            self.fee_bps, self.batch_seconds = welcome.fee_bps, max(1, welcome.batch_seconds)
        token_address = party.params.token if party is not None else welcome.token if welcome is not None else None
        if token_address is None:
            raise NotNow("not connected to the broker")
        token = TokenClient(agent.chain, token_address)
        decimals = await on_chain(agent.chain, token.decimals)
        if not 0 <= decimals <= 77:  # 10^77 < 2^256: anything more is not a token amount's scale
            raise ValidationError(f"the token reports {decimals} decimals")
        symbol = await on_chain(agent.chain, _metadata, token.contract.functions.symbol, 16) or "tokens"
        markets = {}
        for market in self._channel_markets():
            feed = PriceFeedClient(agent.chain, market.feed)
            name = await on_chain(agent.chain, _metadata, feed.contract.functions.description, 40)
            markets[int(market.id)] = MarketInfo(int(market.id), market.resolution, name)
        self.units = Units(decimals, symbol, markets)

    def _channel_markets(self) -> tuple[Market, ...]:
        party, welcome = self.agent.party, self.agent.welcome
        if party is not None:
            return party.params.markets
        return welcome.markets if welcome is not None else ()

    def _ready(self) -> None:
        agent, units = self.agent, self.units
        party = agent.party
        broker = party.params.broker if party is not None else agent.welcome.broker if agent.welcome else None
        data = {
            "trader": agent.address,
            "broker": broker,
            "broker_url": self.broker_url,
            "channel_id": "0x" + party.channel_id.hex() if party is not None else None,
            "token": {"symbol": units.symbol, "decimals": units.decimals},
            "markets": [{"id": m.id, "name": m.name, "resolution": m.resolution} for m in units.markets.values()],
        }
        if party is not None:
            state = party.co_signed.state
            channel = f"channel 0x{party.channel_id.hex()} ({party.flow}, {party.status}, version {state.version})"
        else:
            channel = "no channel yet: open one with `open DEPOSIT`"
        markets = ", ".join(units.market(m).label for m in sorted(units.markets))
        text = (
            f"trader {agent.address}, broker {broker} at {self.broker_url}\n"
            f"markets: {markets}; batches every {self.batch_seconds} s, fee {self.fee_bps} bps, "
            f"amounts in whole units and {units.symbol}\n{channel}\ntype help for the commands"
        )
        if self.out.as_json:
            print(json.dumps(jsonable({"event": "ready", **data})), file=self.out.stdout, flush=True)
        else:
            print(text, file=self.out.stdout, flush=True)

    def _goodbye(self) -> None:
        party = self.agent.party
        if party is None or party.status != "open":
            return
        open_orders = party.co_signed.state.open_orders
        if open_orders:
            self.out.progress(
                f"trader: {len(open_orders)} open order(s) stay in the channel; the broker cannot fill them "
                "while this trader is offline (its trades need the trader's countersignature)"
            )

    # ------------------------------------------------------------------ the commands

    async def _execute(self, command: Command) -> Result:
        if isinstance(command, Help):
            return help_result()
        if isinstance(command, Open):
            return await self._open(command)
        if isinstance(command, Deposit):
            return await self._deposit(command)
        if isinstance(command, PlaceOrder):
            return await self._place(command)
        if isinstance(command, Cancel):
            return await self._cancel(command)
        if isinstance(command, ShowOrders):
            return render_orders(self.units, self._party().co_signed.state.open_orders)
        if isinstance(command, ShowBalances):
            party = self._party()
            return render_balances(self.units, party.params, party.co_signed.state, self.agent.marks)
        if isinstance(command, ShowPositions):
            party = self._party()
            agent = self.agent
            return render_positions(self.units, party.params, party.co_signed.state, agent.marks, agent.mark_batches)
        if isinstance(command, ShowPrices):
            return render_prices(self.units, self.agent.marks, self.agent.mark_batches, self.agent.open_batches)
        if isinstance(command, ShowStatus):
            return self._status()
        if isinstance(command, WaitBatches):
            return await self._wait_batches(command.count)
        if isinstance(command, WaitFilled):
            return await self._wait_filled(command)
        if isinstance(command, Finalize):
            return await self._finalize()
        if isinstance(command, Close):
            return await self._close()
        raise AssertionError(f"unhandled command {command!r}")

    def _party(self) -> ChannelParty:
        party = self.agent.party
        if party is None:
            raise NotNow("no channel yet: open one with `open DEPOSIT`")
        return party

    def _live_party(self) -> ChannelParty:
        """The channel, still open for trading."""
        from offchain.protocol.party import ENDED

        party = self._party()
        if party.status in ENDED:
            raise NotNow(f"the channel has been paid out on-chain ({party.status}): a new channel needs a new --store")
        if party.co_signed.state.is_final:
            raise NotNow("the channel's final state is co-signed: nothing follows it but `close`")
        return party

    async def _wallet(self) -> int:
        from offchain.agents.common import on_chain
        from offchain.chain.client import TokenClient

        party, welcome = self.agent.party, self.agent.welcome
        token_address = party.params.token if party is not None else welcome.token if welcome is not None else None
        if token_address is None:
            raise NotNow("not connected to the broker")
        token = TokenClient(self.agent.chain, token_address)
        return int(await on_chain(self.agent.chain, token.balance_of, self.agent.address))

    async def _open(self, command: Open) -> Result:
        agent, units = self.agent, self.units
        deposit = deposit_amount(command.deposit, units.decimals)
        party = agent.party
        if party is not None:
            self._live_party()
            if not party.co_signed.broker_signature or not party.co_signed.trader_signature:
                raise NotNow("the channel's setup is not co-signed yet: nothing is deposited before it (see `status`)")
            if party.co_signed.state.balances.trader_deposit > 0:
                raise NotNow(
                    f"channel 0x{party.channel_id.hex()} is open already: `deposit AMOUNT` adds to it "
                    "(one channel per --store)"
                )
            if party.flow != command.flow:
                raise NotNow(f"channel 0x{party.channel_id.hex()} was set up {party.flow}: open it that way")
        else:
            wallet = await self._wallet()
            if wallet < deposit:
                raise InsufficientFunds(
                    f"your wallet holds {units.tokens(wallet)}, the deposit is {units.tokens(deposit)}"
                )
        channel_id = await agent.open_channel(deposit, flow=command.flow)
        party = self._party()
        state = party.co_signed.state
        b = state.balances
        return Result(
            {
                "channel_id": "0x" + channel_id.hex(),
                "flow": party.flow,
                "version": state.version,
                "trader_deposit": b.trader_deposit,
                "broker_deposit": b.broker_deposit,
            },
            f"channel 0x{channel_id.hex()} open ({party.flow}), version {state.version}: "
            f"you deposited {units.tokens(b.trader_deposit)}, the broker {units.tokens(b.broker_deposit)}",
        )

    async def _deposit(self, command: Deposit) -> Result:
        agent, units = self.agent, self.units
        amount = deposit_amount(command.amount, units.decimals, "AMOUNT")
        party = self._live_party()
        before = party.co_signed.state.balances.trader_deposit
        if before == 0:
            raise NotNow("the channel has no deposit yet: finish opening it with `open DEPOSIT`")
        # The agent accounts for the deposit once the broker's deposit notice is in (the broker
        # sends it when the channel opens and again whenever the trader resumes the channel, so
        # a later session gets it on connecting); it waits for it (twice ``--timeout``).
        if before + amount > MAX_BALANCE:
            raise ValidationError("the deposit would exceed a balance's bound (2^63 - 1)")
        wallet = await self._wallet()
        if wallet < amount:
            raise InsufficientFunds(f"your wallet holds {units.tokens(wallet)}, the deposit is {units.tokens(amount)}")
        await agent.open_channel(before + amount, flow=party.flow)
        state = party.co_signed.state
        return Result(
            {"amount": amount, "trader_deposit": state.balances.trader_deposit, "version": state.version},
            f"deposited {units.tokens(state.balances.trader_deposit - before)}: your deposit is now "
            f"{units.tokens(state.balances.trader_deposit)} (version {state.version})",
        )

    async def _place(self, command: PlaceOrder) -> Result:
        agent, units = self.agent, self.units
        party = self._live_party()
        info = units.market(command.market)
        amounts = order_amounts(command, info.resolution, units.decimals, self.fee_bps)
        lock = amounts.lock if command.is_buy else amounts.max_fee
        available = party.co_signed.state.balances.trader_available
        if lock > available:
            raise InsufficientFunds(f"the order locks {units.tokens(lock)}, {units.tokens(available)} is available")
        nonce = await agent.place_order(
            command.market, command.is_buy, amounts.amount_synthetic, amounts.amount_collateral, amounts.max_fee
        )
        state = party.co_signed.state
        bound = "or less" if command.is_buy else "or more"
        return Result(
            {
                "nonce": nonce,
                "market": command.market,
                "side": command.side,
                "amount_synthetic": amounts.amount_synthetic,
                "amount_collateral": amounts.amount_collateral,
                "max_fee": amounts.max_fee,
                "locked": lock,
                "version": state.version,
            },
            f"order {nonce} placed: {command.side} {command.amount} of market {info.label} at "
            f"{units.tokens(amounts.price)} {bound}, max fee {units.tokens(amounts.max_fee)}; "
            f"locks {units.tokens(lock)} (version {state.version})",
        )

    async def _cancel(self, command: Cancel) -> Result:
        agent, units = self.agent, self.units
        party = self._live_party()
        open_orders: dict[int, OpenOrder] = {o.order.nonce: o for o in party.co_signed.state.open_orders}
        targets: list[int]
        if command.nonce is None:
            targets = sorted(open_orders)
        elif command.nonce in open_orders:
            targets = [command.nonce]
        else:
            known = ", ".join(str(n) for n in sorted(open_orders)) or "none"
            raise ValidationError(f"no open order {command.nonce} (open: {known})")
        done: list[dict[str, Any]] = []
        lines = []
        for nonce in targets:
            open_order = open_orders[nonce]
            released = lock_needed(open_order.order, open_order.filled)
            await agent.cancel_order(nonce)
            market = open_order.order.market
            filled = units.synthetic(market, open_order.filled)
            amount = units.synthetic(market, open_order.order.amount_synthetic)
            done.append({"nonce": nonce, "filled": open_order.filled, "released": released})
            lines.append(
                f"order {nonce} cancelled ({filled} of {amount} had filled): {units.tokens(released)} released"
            )
        version = party.co_signed.state.version
        if not lines:
            return Result({"cancelled": [], "version": version}, "no open orders to cancel")
        return Result({"cancelled": done, "version": version}, "\n".join(lines) + f" (version {version})")

    def _status(self) -> Result:
        agent = self.agent
        party = agent.party
        connected = agent.ws is not None and agent.welcome is not None
        events = [{"code": code, "detail": detail} for code, detail in agent.events[-STATUS_EVENTS:]]
        data: dict[str, Any] = {
            "trader": agent.address,
            "broker_url": self.broker_url,
            "connected": connected,
            "events": events,
            "event_count": len(agent.events),
        }
        rows = [
            ("trader", agent.address),
            ("broker", f"{self.broker_url} ({'connected' if connected else 'reconnecting'})"),
        ]
        if party is None:
            rows.append(("channel", "none yet: open one with `open DEPOSIT`"))
        else:
            state = party.co_signed.state
            pending = party.pending is not None
            data.update(
                channel_id="0x" + party.channel_id.hex(),
                broker=party.params.broker,
                flow=party.flow,
                status=party.status,
                version=state.version,
                final=state.is_final,
                turn=party.turn,
                pending=pending,
            )
            rows += [
                ("channel", "0x" + party.channel_id.hex()),
                ("broker address", party.params.broker),
                ("flow", party.flow + (f" (turn: {party.turn})" if party.flow == "cooperative" else "")),
                ("status", party.status + (", final state co-signed" if state.is_final else "")),
                ("version", f"{state.version}" + (" (a proposal is pending)" if pending else "")),
                ("open orders", str(len(state.open_orders))),
            ]
        rows.append(("events", f"{len(agent.events)} so far" + (", the latest:" if events else "")))
        text = "\n".join(f"{k.ljust(14)}  {v}" for k, v in rows)
        for event in events:
            text += f"\n  {printable(event['code'])}: {printable(event['detail'])}"
        return Result(data, text)

    async def _wait_batches(self, count: int) -> Result:
        """Wait until ``count`` more batches of every market are priced, and their trades with
        this channel co-signed: the broker co-signs a batch's trades before it prices the next
        batch of the market, so a trade is still due only while the last batch waited for is the
        latest priced and an open order of the channel accepts its price."""
        agent, units = self.agent, self.units
        markets = sorted(units.markets)
        last = {m: agent.open_batches.get(m, 1) + count - 1 for m in markets}

        def priced() -> bool:
            return all(agent.mark_batches.get(m, 0) >= last[m] for m in markets)

        def settled() -> bool:
            party = agent.party
            if party is None:
                return True
            if party.pending is not None:
                return False
            state = party.co_signed.state
            return not any(
                agent.mark_batches.get(m) == last[m] and awaits_trade(party.params, state, m, last[m], agent.marks[m])
                for m in markets
            )

        seconds = agent.timeout + 2 * count * self.batch_seconds
        await agent.wait_until(priced, f"{count} batch(es) of every market", seconds)
        await agent.wait_until(settled, "the trades of those batches", agent.timeout + 2 * self.batch_seconds)
        items = [{"market": m, "batch": agent.mark_batches.get(m), "price": agent.marks.get(m)} for m in markets]
        parts = [
            f"market {units.market(m).label} batch {agent.mark_batches.get(m)} at {units.tokens(agent.marks[m])}"
            for m in markets
            if m in agent.marks
        ]
        return Result({"count": count, "prices": items}, f"waited {count} batch(es): " + "; ".join(parts))

    async def _wait_filled(self, command: WaitFilled) -> Result:
        agent, units = self.agent, self.units
        party = self._party()

        def open_order() -> OpenOrder | None:
            return next((o for o in party.co_signed.state.open_orders if o.order.nonce == command.nonce), None)

        current = open_order()
        if current is None:
            if all(stored.nonce != command.nonce for stored in agent.store.orders(party.channel_id)):
                raise ValidationError(f"no order {command.nonce} in this channel")
        else:
            await agent.wait_until(lambda: open_order() is None, f"order {command.nonce} to fill", command.seconds)
        stored = next(s for s in agent.store.orders(party.channel_id) if s.nonce == command.nonce)
        market = stored.order.market
        position = party.co_signed.state.outcomes[party.params.market_index(market)].position
        side = "bought" if stored.order.is_buy else "sold"
        amount = units.synthetic(market, stored.order.amount_synthetic)
        return Result(
            {"nonce": command.nonce, "open": False, "position": position, "version": party.co_signed.state.version},
            f"order {command.nonce} is no longer open ({side} up to {amount} of market {units.market(market).label}); "
            f"position {units.synthetic(market, position)}",
        )

    async def _finalize(self) -> Result:
        agent, units = self.agent, self.units
        party = self._live_party()
        before = party.co_signed.state
        closing = [
            (market.id, outcome.position)
            for market, outcome in zip(party.params.markets, before.outcomes, strict=True)
            if outcome.position
        ]
        state = await agent.finalize()
        b = state.balances
        parts = []
        closed: list[dict[str, Any]] = []
        for market, position in closing:
            price = agent.marks.get(market)
            closed.append({"market": market, "position": position, "price": price})
            at = f" at {units.tokens(price)}" if price is not None else ""
            parts.append(f"closed {units.synthetic(market, position)} of market {units.market(market).label}{at}")
        cancelled = len(before.open_orders)
        if cancelled:
            parts.append(f"cancelled {cancelled} open order(s)")
        trader = b.trader_available + b.trader_locked
        broker = b.broker_available + b.broker_locked
        return Result(
            {
                "version": state.version,
                "final": state.is_final,
                "closed": closed,
                "cancelled": cancelled,
                "to_trader": trader,
                "to_broker": broker,
            },
            f"final state co-signed (version {state.version})"
            + (": " + "; ".join(parts) if parts else "")
            + f"\nit pays {units.tokens(trader)} to you and {units.tokens(broker)} to the broker: `close` submits it",
        )

    async def _close(self) -> Result:
        agent, units = self.agent, self.units
        party = self._party()
        if not party.co_signed.state.is_final:
            raise NotNow("the channel has no co-signed final state yet: `finalize` first")
        if party.status == "closed":
            raise NotNow(f"channel 0x{party.channel_id.hex()} is closed already")
        receipt = await agent.close_on_chain()
        closed = agent.adjudicator.events(receipt, "Closed")  # type: ignore[arg-type]
        deferred = agent.adjudicator.events(receipt, "PayoutDeferred")  # type: ignore[arg-type]
        to_trader = sum(int(e["toTrader"]) for e in closed)
        to_broker = sum(int(e["toBroker"]) for e in closed)
        wallet = await self._wallet()
        tx = "0x" + bytes(receipt["transactionHash"]).hex()
        gas = int(receipt["gasUsed"])
        text = (
            f"closed on-chain in {tx} (gas {gas}): {units.tokens(to_trader)} to you, "
            f"{units.tokens(to_broker)} to the broker; your wallet holds {units.tokens(wallet)}"
        )
        for event in deferred:
            if event["account"] == agent.address:
                refused = units.tokens(int(event["amount"]))
                text += f"\nthe token refused {refused}: it waits in the adjudicator to be withdrawn"
        return Result(
            {
                "tx": tx,
                "gas": gas,
                "to_trader": to_trader,
                "to_broker": to_broker,
                "wallet": wallet,
                "deferred": [{"account": e["account"], "amount": int(e["amount"])} for e in deferred],
            },
            text,
        )


def _metadata(function: Callable[[], Any], limit: int) -> str:
    """An optional ERC-20 symbol or feed description: empty when the contract has none or it is
    not short printable text."""
    try:
        value = function().call()
    except Exception:  # noqa: BLE001 - optional metadata: any failure means there is none
        return ""
    return value if isinstance(value, str) and value.isprintable() and 0 < len(value) <= limit else ""


def _add_sigint(loop: asyncio.AbstractEventLoop, handler: Callable[[], None]) -> bool:
    """Route Ctrl-C to ``handler`` (main thread, POSIX); False where that is not possible."""
    try:
        loop.add_signal_handler(signal.SIGINT, handler)
    except (NotImplementedError, RuntimeError, ValueError):
        return False
    return True


def run_console(args: argparse.Namespace, out: Output) -> int:
    """``tchan trader`` without ``--script``: the prompt, on a started agent (its store and
    watchtower handled by :func:`offchain.cli.commands.running_trader`)."""
    from offchain.cli.commands import running_trader

    interactive = sys.stdin.isatty()
    reader = LineReader(sys.stdin.buffer)

    async def session() -> int:
        async with running_trader(args, out) as agent:
            console = Console(
                agent,
                out,
                reader,
                interactive=interactive,
                debug=bool(getattr(args, "debug", False)),
                broker_url=args.broker_url,
            )
            return await console.run()

    return asyncio.run(session())


__all__ = [
    "Cancel",
    "Close",
    "Command",
    "Console",
    "Deposit",
    "Finalize",
    "Help",
    "Open",
    "OrderAmounts",
    "PlaceOrder",
    "Quantity",
    "Quit",
    "ShowBalances",
    "ShowOrders",
    "ShowPositions",
    "ShowPrices",
    "ShowStatus",
    "WaitBatches",
    "WaitFilled",
    "format_fraction",
    "order_amounts",
    "parse_command",
    "parse_quantity",
    "run_console",
    "to_base_units",
]
