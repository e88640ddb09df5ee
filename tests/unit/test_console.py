"""The trader prompt's pure parts (offchain/cli/console.py): every command and every bad input of
the line parser, the exact conversion of human amounts to base units (nothing off the grid, no
float anywhere), and the tables and fill events built from real engine states."""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import replace

import pytest

from offchain.cli.console import (
    MAX_LINE_BYTES,
    Cancel,
    Close,
    Deposit,
    Finalize,
    Help,
    InsufficientFunds,
    LineReader,
    MarketInfo,
    NotNow,
    Open,
    OrderAmounts,
    PlaceOrder,
    Quantity,
    Quit,
    ShowBalances,
    ShowOrders,
    ShowPositions,
    ShowPrices,
    ShowStatus,
    Units,
    WaitBatches,
    WaitFilled,
    awaits_trade,
    decode_line,
    deposit_amount,
    equity,
    error_text,
    expiry_text,
    format_fraction,
    grid_of,
    help_result,
    order_amounts,
    parse_command,
    parse_quantity,
    printable,
    render_balances,
    render_orders,
    render_positions,
    render_prices,
    to_base_units,
    trade_events,
)
from offchain.engine.channel import CancelOrder, Channel, apply
from offchain.errors import TradingChannelsError, ValidationError
from offchain.model import MAX_AMOUNT, MAX_BALANCE
from offchain.protocol import messages as m
from offchain.types import BatchNumber, Nonce
from tests.unit.engine_helpers import (
    EXPIRATION,
    PARAMS,
    USD,
    funded,
    make_order,
    place,
    trade,
)

GOLD_UNIT = 10**6  # engine_helpers' GOLD resolution
BTC_UNIT = 10**8  # engine_helpers' BTC resolution
UNITS = Units(
    6,
    "tUSD",
    {1: MarketInfo(1, GOLD_UNIT, "XAU / USD"), 2: MarketInfo(2, BTC_UNIT)},
)


def q(text: str) -> Quantity:
    return parse_quantity(text, "X")


def bad(line: str, *fragments: str) -> str:
    """``line`` is refused with a ValidationError whose reason holds every fragment."""
    with pytest.raises(ValidationError) as caught:
        parse_command(line)
    for fragment in fragments:
        assert fragment in caught.value.reason, caught.value.reason
    return caught.value.reason


# --------------------------------------------------------------------------- every command


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("help", Help()),
        ("open 5000", Open(Quantity(5000, 0), "server_initiative")),
        ("open 5000.50 cooperative", Open(Quantity(50005, 1), "cooperative")),
        ("open 1 server_initiative", Open(Quantity(1, 0), "server_initiative")),
        ("open 1 Server-Initiative", Open(Quantity(1, 0), "server_initiative")),
        ("deposit 0.000001", Deposit(Quantity(1, 6))),
        ("buy 1 0.5 2010", PlaceOrder(1, True, Quantity(5, 1), Quantity(2010, 0), None)),
        ("sell 2 0.01 70000 0.7", PlaceOrder(2, False, Quantity(1, 2), Quantity(70000, 0), Quantity(7, 1))),
        ("buy 0 1 1 0", PlaceOrder(0, True, Quantity(1, 0), Quantity(1, 0), Quantity(0, 0))),
        ("cancel 3", Cancel(3)),
        ("cancel all", Cancel(None)),
        ("cancel ALL", Cancel(None)),
        ("orders", ShowOrders()),
        ("balances", ShowBalances()),
        ("positions", ShowPositions()),
        ("prices", ShowPrices()),
        ("status", ShowStatus()),
        ("wait", WaitBatches(1)),
        ("wait 3", WaitBatches(3)),
        ("wait 1000", WaitBatches(1000)),
        ("wait filled 2", WaitFilled(2, 60)),
        ("wait FILLED 2 90", WaitFilled(2, 90)),
        ("finalize", Finalize()),
        ("close", Close()),
        ("quit", Quit()),
        ("exit", Quit()),
        ("  BUY   1  0.5\t2010  \n", PlaceOrder(1, True, Quantity(5, 1), Quantity(2010, 0), None)),
        ("Orders\r\n", ShowOrders()),
    ],
)
def test_every_command_parses_to_its_typed_object(line: str, command: object) -> None:
    assert parse_command(line) == command


@pytest.mark.parametrize("line", ["", "   ", "\n", "# a comment", "   # open 5000"])
def test_empty_lines_and_comments_are_no_command(line: str) -> None:
    assert parse_command(line) is None


def test_help_lists_every_command_with_its_syntax() -> None:
    result = help_result()
    listed = {c["syntax"].split()[0] for c in result.data["commands"]}
    assert listed == {
        "open", "deposit", "buy", "sell", "cancel", "orders", "balances", "positions",
        "prices", "status", "wait", "finalize", "close", "help", "quit",
    }  # fmt: skip
    for command in result.data["commands"]:
        assert command["syntax"] in result.text and command["does"] in result.text
    assert "exact on its grid" in result.text


# --------------------------------------------------------------------------- every bad input


def test_an_unknown_command_names_itself_and_suggests_the_nearest() -> None:
    assert "did you mean 'cancel'?" in bad("cancle 1", "unknown command 'cancle'")
    assert "type help" in bad("frobnicate 1 2", "unknown command 'frobnicate'")
    bad("x" * 100, "unknown command")


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("open", "usage: open DEPOSIT"),
        ("open 1 cooperative extra", "usage: open DEPOSIT"),
        ("deposit", "usage: deposit AMOUNT"),
        ("deposit 1 2", "usage: deposit AMOUNT"),
        ("buy", "usage: buy MARKET AMOUNT LIMIT [MAX_FEE]"),
        ("buy 1 0.5", "usage: buy MARKET"),
        ("sell 1 0.5 2000 1 extra", "usage: sell MARKET"),
        ("cancel", "usage: cancel NONCE | cancel all"),
        ("cancel 1 2", "usage: cancel NONCE"),
        ("wait 1 2", "usage: wait [N]"),
        ("wait filled", "usage: wait filled NONCE"),
        ("wait filled 1 2 3", "usage: wait filled NONCE"),
        ("help me", "help takes no arguments"),
        ("orders 1", "orders takes no arguments"),
        ("balances all", "balances takes no arguments"),
        ("positions 1", "positions takes no arguments"),
        ("prices now", "prices takes no arguments"),
        ("status -v", "status takes no arguments"),
        ("finalize now", "finalize takes no arguments"),
        ("close 1", "close takes no arguments"),
        ("quit now", "quit takes no arguments"),
        ("exit 0", "quit takes no arguments"),
    ],
)
def test_a_wrong_number_of_arguments_shows_the_usage(line: str, fragment: str) -> None:
    bad(line, fragment)


@pytest.mark.parametrize(
    "amount",
    [
        "-1",
        "+1",
        "1e3",
        "1E3",
        "1,5",
        "1_000",
        ".5",
        "5.",
        "1..5",
        "1.2.3",
        "0x10",
        "inf",
        "nan",
        "½",
        "\uff11",  # a fullwidth digit one
        "٣",
        "1 5",
    ],
)
def test_amounts_are_plain_decimals_only(amount: str) -> None:
    words = amount.split()
    if len(words) > 1:  # "1 5": one word too many
        bad(f"deposit {amount}", "usage")
        return
    bad(f"deposit {amount}", "AMOUNT must be a plain decimal number")
    bad(f"buy 1 {amount} 2000", "AMOUNT must be a plain decimal number")
    bad(f"buy 1 1 {amount}", "LIMIT must be a plain decimal number")
    bad(f"sell 1 1 2000 {amount}", "MAX_FEE must be a plain decimal number")
    bad(f"open {amount}", "DEPOSIT must be a plain decimal number")


def test_an_amount_of_more_than_80_characters_is_refused() -> None:
    bad("deposit " + "1" * 81, "plain decimal number")
    assert parse_command("deposit " + "1" * 80) == Deposit(Quantity(int("1" * 80), 0))


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("open 0", "DEPOSIT must be more than 0"),
        ("open 0.000", "DEPOSIT must be more than 0"),
        ("deposit 0", "AMOUNT must be more than 0"),
        ("buy 1 0 2000", "AMOUNT must be more than 0"),
        ("sell 1 0.0 2000", "AMOUNT must be more than 0"),
        ("buy 1 1 0", "LIMIT must be more than 0"),
        ("open 5000 coop", "the flow must be cooperative or server_initiative, got 'coop'"),
        ("open 5000 1", "the flow must be"),
    ],
)
def test_zero_amounts_and_unknown_flows_are_refused(line: str, fragment: str) -> None:
    bad(line, fragment)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("buy x 1 2000", "MARKET is not a canonical decimal integer"),
        ("buy 01 1 2000", "MARKET is not a canonical decimal integer"),
        ("buy -1 1 2000", "MARKET must be within [0, 4294967295], got -1"),
        ("buy 1.0 1 2000", "MARKET is not a canonical decimal integer"),
        (f"buy {2**32} 1 2000", "MARKET must be within"),
        ("cancel 0", "NONCE must be within [1, 18446744073709551615], got 0"),
        ("cancel -3", "NONCE must be within"),
        (f"cancel {2**64}", "NONCE must be within"),
        ("cancel first", "NONCE is not a canonical decimal integer"),
        ("wait 0", "N must be within [1, 1000], got 0"),
        ("wait 1001", "N must be within [1, 1000]"),
        ("wait 1.5", "N is not a canonical decimal integer"),
        ("wait soon", "N is not a canonical decimal integer"),
        ("wait filled 0", "NONCE must be within"),
        ("wait filled one", "NONCE is not a canonical decimal integer"),
        ("wait filled 1 0", "SECONDS must be within [1, 3600], got 0"),
        ("wait filled 1 3601", "SECONDS must be within [1, 3600]"),
        ("wait filled 1 2.5", "SECONDS is not a canonical decimal integer"),
    ],
)
def test_ids_counts_and_seconds_are_canonical_integers_in_range(line: str, fragment: str) -> None:
    bad(line, fragment)


def test_control_characters_and_overlong_lines_are_refused() -> None:
    bad("buy 1 1\x00 2000", "control characters")
    bad("orders\x1b[2J", "control characters")
    bad("status " + "x" * MAX_LINE_BYTES, f"longer than {MAX_LINE_BYTES} bytes")


def test_decode_line_refuses_bad_utf8_and_overlong_lines() -> None:
    assert decode_line(b"orders\n") == "orders\n"
    with pytest.raises(ValidationError, match="not valid UTF-8"):
        decode_line(b"buy 1 \xff 2000\n")
    with pytest.raises(ValidationError, match="longer than"):
        decode_line(b"x" * (MAX_LINE_BYTES + 1))


# --------------------------------------------------------------------------- exact amounts


def test_quantities_are_exact_and_normalised() -> None:
    assert q("1.50") == Quantity(15, 1) == q("1.5")
    assert q("2010.0") == Quantity(2010, 0) == q("2010")
    assert q("0.000001") == Quantity(1, 6)
    assert q("007") == Quantity(7, 0)
    assert str(q("0.10")) == "0.1" and str(q("12")) == "12"
    assert q("0.0").is_zero
    big = "1" + "0" * 70 + ".1"
    assert to_base_units(q(big), 10, "X") == 10**71 + 1  # no float could hold this


def test_to_base_units_refuses_anything_off_the_grid() -> None:
    assert to_base_units(q("1.5"), 10**6, "AMOUNT") == 1_500_000
    assert to_base_units(q("0.000001"), 10**6, "AMOUNT") == 1
    assert to_base_units(q("0.25"), 4, "AMOUNT") == 1
    with pytest.raises(ValidationError, match=r"AMOUNT 0\.0000001 is off the grid: it takes at most 6 decimal places"):
        to_base_units(q("0.0000001"), 10**6, "AMOUNT")
    with pytest.raises(ValidationError, match="it takes a whole number"):
        to_base_units(q("1.5"), 1, "AMOUNT")
    with pytest.raises(ValidationError, match="a multiple of 1/3"):
        to_base_units(q("0.5"), 3, "AMOUNT")


def test_grid_descriptions() -> None:
    assert grid_of(1) == "a whole number"
    assert grid_of(10) == "at most 1 decimal place"
    assert grid_of(10**8) == "at most 8 decimal places"
    assert grid_of(12) == "a multiple of 1/12"


def test_order_amounts_are_exact_base_units() -> None:
    buy = parse_command("buy 1 0.5 2010")
    assert isinstance(buy, PlaceOrder)
    amounts = order_amounts(buy, 10**6, 6, fee_bps=10)
    assert amounts == OrderAmounts(500_000, 1_005_000_000, 1_005_000, 2_010_000_000)
    assert amounts.lock == 1_006_005_000
    sell = parse_command("sell 2 0.00000001 60000 0.25")
    assert isinstance(sell, PlaceOrder)
    assert order_amounts(sell, 10**8, 6, fee_bps=10) == OrderAmounts(1, 600, 250_000, 60_000_000_000)


def test_the_default_max_fee_is_the_brokers_fee_rounded_up() -> None:
    order = parse_command("buy 1 0.000001 2010")
    assert isinstance(order, PlaceOrder)
    assert order_amounts(order, 10**6, 6, fee_bps=10).max_fee == 3  # 2010 * 10 / 10000 = 2.01 -> 3
    assert order_amounts(order, 10**6, 6, fee_bps=0).max_fee == 0
    given = parse_command("buy 1 0.000001 2010 0")
    assert isinstance(given, PlaceOrder)
    assert order_amounts(given, 10**6, 6, fee_bps=10).max_fee == 0


@pytest.mark.parametrize(
    ("line", "resolution", "message"),
    [
        ("buy 1 0.0000001 2010", 10**6, "AMOUNT 0.0000001 is off the grid: it takes at most 6 decimal places"),
        ("buy 1 1 2010.0000001", 10**6, "LIMIT 2010.0000001 is off the grid"),
        ("buy 1 1 2010 0.0000001", 10**6, "MAX_FEE 0.0000001 is off the grid"),
        (
            "buy 1 0.000001 2010.000001",
            10**6,
            "AMOUNT x LIMIT = 0.002010000001 tokens is off the grid: the token takes at most 6 decimal places",
        ),
        ("sell 1 0.5 1", 3, "AMOUNT 0.5 is off the grid: it takes a multiple of 1/3"),
        (f"buy 1 {2**64} 1", 1, "AMOUNT is 18446744073709551616 base units, more than an order carries"),
        (f"buy 1 {2**40} {2**30}", 1, "AMOUNT x LIMIT is"),
        (f"buy 1 1 1 {2**64}", 10**6, "MAX_FEE is"),
    ],
)
def test_order_amounts_off_the_grid_or_out_of_bounds_are_refused(line: str, resolution: int, message: str) -> None:
    command = parse_command(line)
    assert isinstance(command, PlaceOrder)
    decimals = 0 if resolution == 1 else 6
    with pytest.raises(ValidationError) as caught:
        order_amounts(command, resolution, decimals, fee_bps=10)
    assert message in caught.value.reason


def test_deposit_amounts() -> None:
    assert deposit_amount(q("5000"), 6) == 5_000_000_000
    with pytest.raises(ValidationError, match=r"DEPOSIT 0\.0000001 is off the grid"):
        deposit_amount(q("0.0000001"), 6)
    assert deposit_amount(q(str(MAX_BALANCE)), 0) == MAX_BALANCE
    with pytest.raises(ValidationError, match="more than a balance holds"):
        deposit_amount(q(str(MAX_BALANCE + 1)), 0, "AMOUNT")


@pytest.mark.parametrize(
    ("numerator", "denominator", "min_places", "text"),
    [
        (5_000_000_000, 10**6, 2, "5000.00"),
        (603_000, 10**6, 2, "0.603"),
        (-300_000, 10**6, 0, "-0.3"),
        (0, 10**6, 0, "0"),
        (1, 10**8, 0, "0.00000001"),
        (1, 3, 0, "~0.33333333"),
        (2, 3, 2, "~0.66666667"),
        (-1, 3, 0, "~-0.33333333"),
        (10, 3, 0, "~3.33333333"),
        (1, 7 * 10**10, 0, "~0"),
        (2010 * 10**6 * 10**6, 10**6 * 10**6, 2, "2010.00"),
    ],
)
def test_format_fraction_is_exact_or_says_it_is_not(
    numerator: int, denominator: int, min_places: int, text: str
) -> None:
    assert format_fraction(numerator, denominator, min_places) == text


# --------------------------------------------------------------------------- tables and events on real states


def _book() -> tuple[Channel, Channel]:
    """A funded channel with two orders (buy 0.4 oz <= $2000, sell 0.02 BTC >= $60,000), and the
    channel after batch 3 of gold filled 0.1 oz of the buy at $1,990 with a 0.2 fee."""
    channel = funded()
    buy = make_order(channel)
    channel = place(channel, buy)
    sell = make_order(
        channel,
        market=2,
        is_buy=False,
        amount_synthetic=2 * 10**6,
        amount_collateral=1200 * USD,
        max_fee=USD,
        nonce=Nonce(2),
    )
    channel = place(channel, sell, marks={1: 2000 * USD})
    after = apply(channel, trade(1, 3, 1990 * USD, [(1, 10**5, 200_000)], marks={1: 1990 * USD})).channel
    return channel, after


def test_orders_table_shows_every_column_in_human_units() -> None:
    _, after = _book()
    result = render_orders(UNITS, after.state.open_orders)
    lines = result.text.splitlines()
    assert lines[0].split() == [
        "nonce",
        "market",
        "side",
        "amount",
        "filled",
        "limit",
        "(tUSD)",
        "max",
        "fee",
        "expiry",
    ]
    assert lines[2].split() == ["1", "1", "XAU", "/", "USD", "buy", "0.4", "0.1", "2000.00", "2.00", *_expiry()]
    assert lines[3].split() == ["2", "2", "sell", "0.02", "0", "60000.00", "1.00", *_expiry()]
    first = result.data["orders"][0]
    assert (first["nonce"], first["amount_synthetic"], first["filled"], first["amount_collateral"]) == (
        1,
        4 * 10**5,
        10**5,
        800 * USD,
    )
    assert render_orders(UNITS, ()).text == "no open orders"


def _expiry() -> list[str]:
    return expiry_text(EXPIRATION).split()


def test_balances_show_both_sides_and_the_equity_at_the_marks() -> None:
    _, after = _book()
    b = after.state.balances
    result = render_balances(UNITS, PARAMS, after.state, {1: 1990 * USD})
    assert result.data["trader_available"] == b.trader_available
    assert result.data["broker_deposit"] == 5_000 * USD
    worth = b.trader_available + b.trader_locked + 10**5 * 1990 * USD // GOLD_UNIT
    assert result.data["equity"] == worth == equity(PARAMS, after.state, {1: 1990 * USD})
    lines = result.text.splitlines()
    assert lines[0].split()[-2:] == ["you", "broker"]
    assert lines[2].split() == ["available", UNITS.money(b.trader_available), UNITS.money(b.broker_available)]
    assert lines[4].split() == ["deposited", "1000.00", "5000.00"]
    assert f"equity at the marks: {UNITS.money(worth)} tUSD" in result.text
    no_mark = render_balances(UNITS, PARAMS, after.state, {})
    assert no_mark.data["equity"] is None and "equity" not in no_mark.text


def test_positions_show_the_mark_and_the_value_at_it() -> None:
    _, after = _book()
    result = render_positions(UNITS, PARAMS, after.state, {1: 1990 * USD}, {1: 3})
    gold, btc = result.data["positions"]
    assert (gold["position"], gold["mark"], gold["value"], gold["fees"]) == (10**5, 1990 * USD, 199 * USD, 200_000)
    assert (btc["position"], btc["mark"], btc["value"]) == (0, None, None)
    lines = result.text.splitlines()
    assert lines[2].split() == ["1", "XAU", "/", "USD", "0.1", "1990.00", "(batch", "3)", "199.00", "0.20"]
    assert lines[3].split() == ["2", "0", "-", "-", "0.00"]


def test_prices_show_every_market_with_or_without_a_batch() -> None:
    result = render_prices(UNITS, {1: 1990 * USD}, {1: 3}, {1: 4, 2: 1})
    assert result.data["prices"] == [
        {"market": 1, "batch": 3, "price": 1990 * USD, "open_batch": 4},
        {"market": 2, "batch": None, "price": None, "open_batch": 1},
    ]
    assert result.text.splitlines()[2].split() == ["1", "XAU", "/", "USD", "3", "1990.00", "4"]
    assert result.text.splitlines()[3].split() == ["2", "-", "-", "1"]


def test_a_trade_becomes_one_fill_event_per_market() -> None:
    before, after = _book()
    events = trade_events(UNITS, PARAMS, before.state, after.state, lambda market, batch: 1990 * USD)
    assert len(events) == 1
    event = events[0]
    assert event.data["fills"] == [
        {"nonce": 1, "side": "buy", "amount_synthetic": 10**5, "filled": 10**5, "order_amount": 4 * 10**5}
    ]
    assert (event.data["batch"], event.data["fee"], event.data["position"]) == (3, 200_000, 10**5)
    assert event.text == (
        "trade: batch 3 of market 1 XAU / USD at 1990.00 tUSD: order 1 bought 0.1 (0.1 of 0.4); "
        "fee 0.20 tUSD; position 0.1"
    )
    json.dumps(event.data)  # plain data


def test_an_order_filled_to_the_end_leaves_the_book_and_says_filled() -> None:
    _, after = _book()
    done = apply(after, trade(1, 4, 1995 * USD, [(1, 3 * 10**5, 0)], marks={1: 1995 * USD})).channel
    (event,) = trade_events(UNITS, PARAMS, after.state, done.state, lambda market, batch: None)
    assert event.data["fills"][0]["filled"] == 4 * 10**5
    assert "order 1 bought 0.3 (filled)" in event.text and " at " not in event.text.split(":")[0]


def test_transitions_other_than_trades_are_no_event() -> None:
    before, after = _book()
    cancelled = apply(after, CancelOrder(Nonce(2))).channel
    assert trade_events(UNITS, PARAMS, after.state, cancelled.state, lambda market, batch: None) == []
    assert trade_events(UNITS, PARAMS, before.state, before.state, lambda market, batch: None) == []


def test_a_trade_is_awaited_only_while_an_eligible_order_accepts_the_price() -> None:
    before, after = _book()
    state = before.state  # the buy (<= $2000, eligible from batch 1) is open, gold at last batch 0
    assert awaits_trade(PARAMS, state, 1, 3, 1990 * USD)
    assert awaits_trade(PARAMS, state, 1, 3, 2000 * USD)  # exactly at its limit: may be rationed
    assert not awaits_trade(PARAMS, state, 1, 3, 2001 * USD)  # above a buy's limit
    assert not awaits_trade(PARAMS, after.state, 1, 3, 1990 * USD)  # batch 3 is reflected already
    assert awaits_trade(PARAMS, state, 2, 3, 61_000 * USD)  # the sell accepts 61,000
    assert not awaits_trade(PARAMS, state, 2, 3, 59_000 * USD)  # below a sell's limit
    late = replace(state, open_orders=tuple(replace(o, first_batch=BatchNumber(5)) for o in state.open_orders))
    assert not awaits_trade(PARAMS, late, 1, 3, 1990 * USD)  # not eligible in batch 3


def test_units_refuse_a_market_the_broker_does_not_run() -> None:
    with pytest.raises(ValidationError, match=r"market 7 is not traded here \(markets: 1, 2\)"):
        UNITS.market(7)
    assert UNITS.tokens(1_500_000) == "1.50 tUSD"
    assert UNITS.market(2).label == "2" and UNITS.market(1).label == "1 XAU / USD"


# --------------------------------------------------------------------------- errors and stdin


def test_error_text_is_one_line_without_repeating_the_code() -> None:
    from offchain.agents.trader import RequestRefused

    refused = RequestRefused(m.ErrorReply("t3", "rule_violation", "fee 5 exceeds\nmax fee 4", "fee_at_most_max_fee"))
    assert error_text(refused) == ("rule_violation", "fee 5 exceeds max fee 4", "fee_at_most_max_fee")
    assert error_text(ValidationError("bad")) == ("invalid_input", "bad", None)
    assert error_text(NotNow("no channel yet")) == ("not_now", "no channel yet", None)
    assert error_text(InsufficientFunds("short")) == ("insufficient_funds", "short", None)
    assert isinstance(NotNow(), TradingChannelsError)


def test_text_from_the_broker_cannot_drive_the_terminal() -> None:
    from offchain.agents.trader import RequestRefused

    assert printable("left out\n order 3\x1b[2J\x07") == "left out order 3\\x1b[2J\\x07"
    refused = RequestRefused(m.ErrorReply("t1", "stale\x1bmarks", "no\x1b]0;pwned\x07 way", "rule\x00"))
    code, reason, rule = error_text(refused)
    assert all(text.isprintable() for text in (code, reason, rule or ""))
    assert reason == "no\\x1b]0;pwned\\x07 way" and rule == "rule\\x00"


def test_the_line_reader_reads_one_line_per_call_and_drops_the_rest_of_an_overlong_one() -> None:
    stream = io.BytesIO(b"open 5000\n" + b"x" * (3 * MAX_LINE_BYTES) + b"\nquit")

    async def read_all() -> list[bytes]:
        reader = LineReader(stream)
        return [await reader.readline() for _ in range(4)]

    first, long, last, end = asyncio.run(read_all())
    assert first == b"open 5000\n"
    assert len(long) == MAX_LINE_BYTES + 1 and b"\n" not in long
    with pytest.raises(ValidationError, match="longer than"):
        decode_line(long)
    assert last == b"quit" and end == b""


def test_amounts_never_pass_through_a_float() -> None:
    # 0.1 + 0.2 style pitfalls: each is exact on the grid
    amounts = [to_base_units(q(t), 10**18, "X") for t in ("0.1", "0.2", "0.3")]
    assert amounts[0] + amounts[1] == amounts[2]
    command = parse_command("buy 1 0.1 0.3")
    assert isinstance(command, PlaceOrder)
    assert order_amounts(command, 10**18, 18, fee_bps=0).amount_collateral == 3 * 10**16
    assert MAX_AMOUNT == 2**64 - 1
