"""``tchan demo``: the whole story with the real agents, run once for this module on the in-process
chain (``offchain.demo.main``), and the pure curve functions behind its plot (``offchain.plot``).

The story is checked from the outside: by its printed lines, by the result it returns, and by
reading the chain again (token balances, the adjudicator's events)."""

from __future__ import annotations

import io
import json
import struct
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offchain import demo
from offchain.chain.client import AdjudicatorClient, Stage, TokenClient
from offchain.engine.auction import MAX_PRICE, BookOrder, clear
from offchain.plot import batch_curves, crossing, grid_limit, step_lines

pytestmark = pytest.mark.slow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RES = 10**6


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> tuple[demo.DemoResult, str, Path]:
    plot = tmp_path_factory.mktemp("demo") / "batch.png"
    out = io.StringIO()
    result = demo.main(None, out, plot_path=plot)
    return result, out.getvalue(), plot


def test_every_check_passes_in_well_under_a_minute(story: tuple[demo.DemoResult, str, Path]) -> None:
    result, text, _ = story
    assert result.ok, text
    assert len(result.checks) >= 30
    assert f"all checks passed: {len(result.checks)}/{len(result.checks)}" in text
    assert result.elapsed < 60


def test_every_chapter_of_the_story_is_told(story: tuple[demo.DemoResult, str, Path]) -> None:
    _, text, _ = story
    headings = [line for line in text.splitlines() if line[:1].isdigit()]
    assert [h.split(".")[0] for h in headings] == [str(n) for n in range(1, 9)]
    assert "adjudicator 0x" in text and "(6 decimals)" in text and "feed XAU / USD" in text and "feed BTC / USD" in text
    assert "cooperative flow" in text and "server_initiative flow" in text
    for market in ("gold", "BTC"):
        for batch in (1, 2, 3):
            assert f"   {market} batch {batch}: " in text
    assert "rationed at $2,015.00: alice gets 0.18 oz of 0.6 oz, carol gets 0.12 oz of 0.4 oz" in text
    assert "oracle: gold $2,000.00 -> $2,040.00" in text
    assert "the broker challenges with v" in text and "the watchtower refutes with v" in text
    assert "alice and the broker co-sign final state v" in text
    assert "bob's agent proves it on-chain by itself" in text and "bob takes the whole channel, $30,000.00" in text


def test_the_stale_challenge_was_refuted_and_the_watchtower_concluded(story: tuple[demo.DemoResult, str, Path]) -> None:
    result, text, _ = story
    assert result.stale_version is not None and result.refuted_with is not None
    assert result.stale_version < result.refuted_with
    carol = result.row("carol")
    assert carol.ended.startswith(f"dispute: stale v{result.stale_version} refuted with v{result.refuted_with}")
    adjudicator = AdjudicatorClient(result.chain, result.adjudicator)
    cid = result.channels["carol"]
    assert adjudicator.status(cid).stage == Stage.CONCLUDED
    latest = result.chain.w3.eth.block_number

    def logs(event: str) -> list[dict[str, Any]]:
        return [e["args"] for e in adjudicator.logs(event, 0, latest) if bytes(e["args"]["channelId"]) == cid]

    (challenged,) = logs("Challenged")
    assert (challenged["challenger"], challenged["version"]) == (result.row("broker").address, result.stale_version)
    (refuted,) = logs("Refuted")
    assert (refuted["refuter"], refuted["version"]) == (result.watchtower, result.refuted_with)
    (concluded,) = logs("Concluded")
    assert concluded["toTrader"] == carol.paid_out
    # the stale state would have paid the broker more: the refute is worth something to carol
    assert f"carol's newest state v{result.refuted_with} pays her {demo.usd(carol.paid_out)}" in text


def test_the_broker_was_slashed_and_bob_took_all_of_his_channel(story: tuple[demo.DemoResult, str, Path]) -> None:
    result, _, _ = story
    adjudicator = AdjudicatorClient(result.chain, result.adjudicator)
    assert result.slashed and adjudicator.slashed_at(result.row("broker").address) is not None
    assert result.bob_took_channel
    bob = result.row("bob")
    assert bob.paid_out == demo.TRADER_DEPOSIT + demo.BROKER_DEPOSIT
    (concluded,) = [
        e["args"]
        for e in adjudicator.logs("Concluded", 0, result.chain.w3.eth.block_number)
        if bytes(e["args"]["channelId"]) == result.channels["bob"]
    ]
    assert (concluded["toTrader"], concluded["toBroker"]) == (bob.paid_out, 0)


def test_alice_closed_cooperatively(story: tuple[demo.DemoResult, str, Path]) -> None:
    result, _, _ = story
    assert result.alice_closed
    adjudicator = AdjudicatorClient(result.chain, result.adjudicator)
    (closed,) = [
        e["args"]
        for e in adjudicator.logs("Closed", 0, result.chain.w3.eth.block_number)
        if bytes(e["args"]["channelId"]) == result.channels["alice"]
    ]
    alice = result.row("alice")
    assert closed["toTrader"] == alice.paid_out
    assert closed["toTrader"] + closed["toBroker"] == demo.TRADER_DEPOSIT + demo.BROKER_DEPOSIT
    assert alice.ended.startswith("cooperative close")


def test_payouts_add_up_to_the_deposits(story: tuple[demo.DemoResult, str, Path]) -> None:
    result, text, _ = story
    deposited = sum(r.deposited for r in result.rows)
    paid = sum(r.paid_out for r in result.rows)
    assert deposited == paid == len(demo.TRADERS) * (demo.TRADER_DEPOSIT + demo.BROKER_DEPOSIT)
    assert sum(r.pnl for r in result.rows) == 0
    token = TokenClient(result.chain, result.token)
    assert token.balance_of(result.adjudicator) == 0
    assert f"conservation: payouts {demo.usd(paid)} = deposits {demo.usd(deposited)}" in text
    for name in ("alice", "carol", "bob"):
        (check,) = [c for c in result.checks if c.name == f"{name}'s channel conserves"]
        assert check.ok
    for name in ("alice", "carol"):
        (check,) = [c for c in result.checks if c.name == f"{name} paid by the rule"]
        assert check.ok, check.detail


def test_the_summary_table_agrees_with_the_chain(story: tuple[demo.DemoResult, str, Path]) -> None:
    result, text, _ = story
    token = TokenClient(result.chain, result.token)
    adjudicator = AdjudicatorClient(result.chain, result.adjudicator)
    assert [r.name for r in result.rows] == ["alice", "bob", "carol", "broker"]
    table = text.split("7. Summary", 1)[1].splitlines()
    for row in result.rows:
        now = token.balance_of(row.address)
        assert now == row.balance_after
        assert now - row.balance_before == row.pnl, row.name
        assert adjudicator.withdrawable(result.token, row.address) == 0
        printed = next(line for line in table if line.startswith(f"   {row.name} "))
        for figure in (demo.usd(row.deposited), demo.usd(row.paid_out), demo.usd(row.pnl, signed=True)):
            assert figure in printed, (figure, printed)
        assert demo.usd(row.fees) in printed and row.ended in printed
    traders = [r for r in result.rows if r.name != "broker"]
    assert result.row("broker").fees == sum(r.fees for r in traders) > 0
    assert result.row("broker").deposited == len(traders) * demo.BROKER_DEPOSIT


def test_the_json_summary_carries_amounts_as_decimal_strings(story: tuple[demo.DemoResult, str, Path]) -> None:
    result, _, _ = story
    data = json.loads(json.dumps(result.as_json()))
    assert data["ok"] is True
    assert [p["name"] for p in data["parties"]] == ["alice", "bob", "carol", "broker"]
    for party, row in zip(data["parties"], result.rows, strict=True):
        assert party["paid_out"] == str(row.paid_out) and party["pnl"] == str(row.pnl)
    assert data["plot_batch"]["price"] == str(result.plot_batch.signed_price if result.plot_batch else None)


def test_the_plot_is_a_png_of_the_batch_with_the_most_orders(story: tuple[demo.DemoResult, str, Path]) -> None:
    result, text, path = story
    assert result.plot_path == path
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert 600 <= width <= 2000 and 400 <= height <= 1500
    assert 10_000 < len(data) < 1_000_000
    record = result.plot_batch
    assert record is not None
    assert len(record.orders) == max(len(b.orders) for b in result.batches) >= 8
    sides = {o.is_buy for o in record.orders}
    owners = {record.owners[o.key[0]] for o in record.orders}
    assert sides == {True, False} and owners == {"alice", "bob", "carol"}
    assert f"8. Plot: {path} shows gold batch {record.batch}" in text


def test_the_plotted_curves_meet_at_the_signed_price(story: tuple[demo.DemoResult, str, Path]) -> None:
    result, _, _ = story
    record = result.plot_batch
    assert record is not None
    curves = batch_curves(record.orders, demo.RESOLUTION)
    assert crossing(curves) == (record.signed_price, record.signed_price)
    assert clear(record.orders, demo.RESOLUTION, record.previous_price).price == record.signed_price
    assert curves.volume(record.signed_price) == record.clearing.volume > 0
    for batch in result.batches:  # every batch's signed price is where its curves meet
        low, high = crossing(batch_curves(batch.orders, demo.RESOLUTION))
        assert low <= batch.signed_price <= high


def test_the_sample_run_in_docs_demo_md_is_still_true(story: tuple[demo.DemoResult, str, Path]) -> None:
    """The trading rounds and the summary table of docs/demo.md are what a run prints today (keys,
    ports and timings aside, which the doc does not claim)."""
    _, text, _ = story
    doc = (Path(__file__).resolve().parents[1] / "docs" / "demo.md").read_text()
    sample = doc.split("## A run", 1)[1].split("```", 2)[1]
    trading = sample.split("3. Trade", 1)[1].split("4. Carol", 1)[0]
    table = sample.split("7. Summary", 1)[1].split("   conservation:", 1)[0]
    printed = text.splitlines()
    for part in (trading, table):
        for line in part.splitlines()[1:]:  # after the heading's remainder
            assert line in printed, line


# --------------------------------------------------------------------------- pure: the curves


def order(key: int, is_buy: bool, amount: int, limit: int, remaining: int | None = None) -> BookOrder:
    return BookOrder((b"c", key), is_buy, amount, amount * limit // RES, remaining or amount, key)


def seed_book() -> list[BookOrder]:
    """Gold batch 1 of the demo, by hand (amounts in 10^-6 oz, limits in 10^-6 $ per oz)."""
    usd = 10**6
    return [
        order(1, True, 1_000_000, 2_040 * usd),
        order(2, True, 500_000, 2_025 * usd),
        order(3, True, 400_000, 2_015 * usd),
        order(4, True, 600_000, 2_015 * usd),
        order(5, True, 300_000, 1_995 * usd),
        order(6, False, 700_000, 1_980 * usd),
        order(7, False, 500_000, 2_000 * usd),
        order(8, False, 600_000, 2_015 * usd),
        order(9, False, 500_000, 2_035 * usd),
    ]


def test_the_curves_of_a_book_by_hand() -> None:
    usd = 10**6
    curves = batch_curves(seed_book(), RES)
    assert curves.buy_limits == (1_995 * usd, 2_015 * usd, 2_025 * usd, 2_040 * usd)
    assert curves.buy_amounts == (300_000, 1_000_000, 500_000, 1_000_000)  # the two bids at 2,015 add up
    # demand: everything bid at or above the price; supply: everything offered at or below it
    assert curves.demand(1_995 * usd) == 2_800_000 and curves.demand(1_995 * usd + 1) == 2_500_000
    assert curves.demand(2_015 * usd) == 2_500_000 and curves.demand(2_015 * usd + 1) == 1_500_000
    assert curves.supply(2_015 * usd - 1) == 1_200_000 and curves.supply(2_015 * usd) == 1_800_000
    assert curves.demand(2_040 * usd + 1) == 0 and curves.supply(1_980 * usd - 1) == 0
    # at $2,015 the step of demand (1.5 to 2.5 oz) overlaps the step of supply (1.2 to 1.8 oz)
    assert crossing(curves) == (2_015 * usd, 2_015 * usd)
    assert curves.volume(2_015 * usd) == 1_800_000
    assert clear(seed_book(), RES, 2_000 * usd).price == 2_015 * usd
    assert not curves.meet(2_015 * usd - 1) and not curves.meet(2_015 * usd + 1)


def test_step_lines_are_monotone_steps_over_the_range() -> None:
    curves = batch_curves(seed_book(), RES)
    low, high = 1_900 * 10**6, 2_100 * 10**6
    demand, supply = step_lines(curves, low, high)
    assert demand[0] == (low, 2_800_000) and demand[-1] == (high, 0)
    assert supply[0] == (low, 0) and supply[-1] == (high, 2_300_000)
    for line, direction in ((demand, -1), (supply, 1)):
        for (p1, a1), (p2, a2) in pairwise(line):
            assert p1 <= p2 and (a2 - a1) * direction >= 0
            assert p1 == p2 or a1 == a2  # only horizontal and vertical segments


def test_a_book_that_cannot_cross_meets_between_the_best_bid_and_ask() -> None:
    usd = 10**6
    book = [order(1, True, 100_000, 1_900 * usd), order(2, False, 100_000, 2_100 * usd)]
    low, high = crossing(batch_curves(book, RES))
    assert (low, high) == (1_900 * usd, 2_100 * usd)
    assert clear(book, RES, 2_000 * usd).price == 2_000 * usd
    assert crossing(batch_curves([], RES)) == (1, MAX_PRICE)


def test_grid_limits_round_against_the_order() -> None:
    # 3 units for 10 collateral at resolution 1: a buy pays at most 3 per unit, a sell gets at least 4
    assert grid_limit(BookOrder((b"c", 1), True, 3, 10, 3, 1), 1) == 3
    assert grid_limit(BookOrder((b"c", 2), False, 3, 10, 3, 2), 1) == 4


books = st.lists(
    st.tuples(st.booleans(), st.integers(1, 50), st.integers(0, 400), st.integers(1, 50)),
    min_size=0,
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(books, st.integers(1, 400))
def test_the_clearing_price_is_always_where_the_curves_meet(
    raw: list[tuple[bool, int, int, int]], previous: int
) -> None:
    orders = [
        BookOrder((b"c", i), is_buy, amount, collateral, min(remaining, amount), i)
        for i, (is_buy, amount, collateral, remaining) in enumerate(raw)
    ]
    resolution = 10
    clearing = clear(orders, resolution, previous)
    curves = batch_curves(orders, resolution)
    low, high = crossing(curves)
    assert low <= clearing.price <= high
    assert curves.meet(clearing.price)
    assert curves.volume(clearing.price) == clearing.volume
    assert (curves.demand(clearing.price), curves.supply(clearing.price)) == (clearing.demand, clearing.supply)
    for price in (low - 1, high + 1):
        if 1 <= price <= MAX_PRICE:
            assert not curves.meet(price)


# --------------------------------------------------------------------------- pure: the figures


def test_amounts_print_as_exact_dollars_and_units() -> None:
    assert demo.usd(10_067_979_800) == "$10,067.9798"
    assert demo.usd(2_015_000_000) == "$2,015.00"
    assert demo.usd(1) == "$0.000001"
    assert demo.usd(-20_146_432_000) == "-$20,146.432"
    assert demo.usd(67_979_800, signed=True) == "+$67.9798" and demo.usd(0, signed=True) == "$0.00"
    assert demo.qty(1_120_000, demo.GOLD) == "1.12 oz" and demo.qty(30_000, demo.BTC) == "0.03 BTC"
    assert demo.parse_decimal("2015", 6) == 2_015_000_000 and demo.parse_decimal("0.05", 6) == 50_000
    with pytest.raises(ValueError):
        demo.parse_decimal("0.0000001", 6)
