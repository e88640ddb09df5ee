"""The parsers' fast paths (offchain.model, "fast paths"): a state's JSON parses back to the equal
state, marked checked; and on any input, valid or not, the result or the refusal (type and text)
is the one of the detailed parsers alone (the fast paths switched off)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offchain import model
from offchain.errors import ValidationError
from offchain.model import (
    MAX_AMOUNT,
    MAX_BALANCE,
    MAX_UINT32,
    MAX_VERSION,
    Balances,
    ChannelState,
    OpenOrder,
    Order,
    Outcome,
    check_state,
    checksum_address,
    decimal_field,
    hex_field,
    parse_decimal,
)
from offchain.protocol import messages as m
from offchain.types import ChannelId

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CHANNEL_ID = ChannelId(bytes(range(32)))
_FAST = ("_fast_state", "_fast_balances", "_fast_order", "_fast_open_order", "_fast_outcome")


@contextmanager
def detailed_only() -> Iterator[None]:
    """The parsers without their fast paths (each gives up at once)."""

    def give_up(*_: object) -> Any:
        raise model._NotFast

    with mock.patch.multiple(model, **dict.fromkeys(_FAST, give_up)):  # type: ignore[call-overload]
        yield


def outcome(parse: Callable[[], object]) -> tuple[Any, ...]:
    """What a parser makes of an input: its result (with the checked flag), or its refusal."""
    try:
        result = parse()
    except Exception as exc:  # noqa: BLE001 - compared, whatever it is
        return ("refused", type(exc), str(exc), getattr(exc, "code", None))
    return ("parsed", type(result), result, getattr(result, "_checked", None))


# --------------------------------------------------------------------------- strategies


def between(low: int, high: int) -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from([low, high, max(low, 0), min(high, 1)]), st.integers(low, high))


addresses = st.binary(min_size=20, max_size=20).map(checksum_address)
balances = st.builds(
    Balances,
    between(-MAX_BALANCE, MAX_BALANCE),
    between(0, MAX_BALANCE),
    between(-MAX_BALANCE, MAX_BALANCE),
    between(0, MAX_BALANCE),
    between(0, MAX_BALANCE),
    between(0, MAX_BALANCE),
)
orders = st.builds(
    Order,
    st.one_of(st.just(CHANNEL_ID), st.binary(min_size=32, max_size=32)),
    addresses,
    addresses,
    between(0, MAX_UINT32),
    st.booleans(),
    between(0, MAX_AMOUNT),
    between(0, MAX_AMOUNT),
    between(0, MAX_AMOUNT),
    between(0, MAX_AMOUNT),
    between(0, MAX_UINT32),
)
open_orders = st.builds(
    OpenOrder, orders, st.binary(min_size=65, max_size=65), between(0, MAX_AMOUNT), between(0, MAX_AMOUNT)
)
outcomes = st.one_of(
    st.just(Outcome(0, 0, 0)),  # type: ignore[arg-type]
    st.builds(Outcome, between(-MAX_BALANCE, MAX_BALANCE), between(0, MAX_BALANCE), between(0, MAX_AMOUNT)),
)
states = st.builds(
    ChannelState,
    st.just(CHANNEL_ID),
    between(0, MAX_VERSION),
    balances,
    st.lists(open_orders, max_size=3).map(tuple),
    st.lists(outcomes, max_size=4).map(tuple),
    st.booleans(),
)


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield (*path, key)
        yield from _leaves(child, (*path, key))


def _near(value: Any) -> list[Any]:
    """Values that look like ``value``: neighbours, non-canonical spellings, other types."""
    out: list[Any] = [None, True, 0, 1.0, [], {}, "", " ", "-", "0", "-0", "00", "+1", "1_0", "\u0661", "\u00b2"]
    if isinstance(value, str):
        out += [" " + value, value + "\n", value.upper(), value.lower(), value[:-1], value + "0", "0" + value]
        if value.isascii() and value.lstrip("-").isdigit() and value.count("-") <= 1 and len(value) < 100:
            n = int(value)
            out += [n, str(n + 1), str(n - 1), str(-n), "-" + value, str(2**64), str(2**63), str(2**48), "9" * 81]
        if value.startswith("0x"):
            out += ["0x" + value[2:].upper(), "0X" + value[2:], value[:-1] + "g", value[:-2] + " 0", value[2:]]
    return out


@st.composite
def mutated(draw: st.DrawFn, value: Any) -> Any:
    """``value`` (JSON) with one to three leaves replaced, dropped or given a neighbour."""
    data = json.loads(json.dumps(value))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_leaves(data))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = data
        for step in path[:-1]:
            parent = parent[step]
        key = path[-1]
        if draw(st.integers(0, 5)) == 0:
            del parent[key]
        else:
            parent[key] = draw(st.sampled_from(_near(parent[key])))
    return data


# --------------------------------------------------------------------------- properties


@SETTINGS
@given(states)
def test_a_state_parses_back_to_itself_checked(state: ChannelState) -> None:
    state = check_state(state)
    parsed = ChannelState.from_json(state.channel_id, state.is_final, json.loads(json.dumps(state.to_json())))
    assert parsed == state
    assert parsed._checked
    assert type(parsed.balances) is Balances and type(parsed.open_orders) is tuple
    assert all(type(o) is OpenOrder and type(o.order) is Order for o in parsed.open_orders)
    assert all(type(o) is Outcome for o in parsed.outcomes)
    assert all(type(v) is int for v in (parsed.version, *parsed.balances.as_abi()))
    with detailed_only():
        assert outcome(lambda: ChannelState.from_json(CHANNEL_ID, state.is_final, state.to_json())) == outcome(
            lambda: parsed
        )


@SETTINGS
@given(st.data(), states)
def test_fast_and_detailed_parsers_agree(data: st.DataObject, state: ChannelState) -> None:
    raw = data.draw(mutated(state.to_json()))
    final = data.draw(st.sampled_from([state.is_final, None, 1]))
    parsers: list[Callable[[], object]] = [lambda: ChannelState.from_json(CHANNEL_ID, final, raw)]  # type: ignore[arg-type]
    if isinstance(raw, list) and len(raw) == 4:
        parts = [raw[1], *(raw[2] if isinstance(raw[2], list) else []), *(raw[3] if isinstance(raw[3], list) else [])]
        for part in parts:
            order = part.get("order") if isinstance(part, dict) else part
            parsers += [
                partial(Balances.from_json, part),
                partial(Outcome.from_json, part),
                partial(OpenOrder.from_json, part, CHANNEL_ID),
                partial(Order.from_json, order, CHANNEL_ID),
                partial(Order.from_json, order),
            ]
    for parse in parsers:
        fast = outcome(parse)
        with detailed_only():
            assert outcome(parse) == fast


@SETTINGS
@given(st.data(), states)
def test_proposals_parse_as_without_fast_paths(data: st.DataObject, state: ChannelState) -> None:
    frame = {"v": 1, "type": "propose", "channel_id": "0x" + CHANNEL_ID.hex(), "kind": "cancel"}
    frame |= {"transition": {"nonce": "1"}, "final": state.is_final, "signature": "0x" + "1b" * 65}
    frame["state"] = data.draw(st.one_of(st.just(state.to_json()), mutated(state.to_json())))
    text = json.dumps(frame)
    fast = outcome(lambda: m.parse(text))
    with detailed_only():
        assert outcome(lambda: m.parse(text)) == fast


NASTY: list[object] = [
    "0",
    "7",
    "-7",
    "-0",
    "00",
    "01",
    "+1",
    " 1",
    "1 ",
    "1\n",
    "1_0",
    "\u0661",
    "\u00b2",
    "",
    "-",
    "1e3",
    "0x10",
]
NASTY += [str(2**64 - 1), str(2**64), "-" + str(2**63 - 1), "9" * 80, "9" * 81, "1" * 5000, 1, 1.0, True, None, [], {}]


@pytest.mark.parametrize("raw", NASTY)
def test_decimal_field_is_parse_decimal(raw: object) -> None:
    assert outcome(lambda: decimal_field({"k": raw}, "k")) == outcome(lambda: parse_decimal(raw, "k"))
    assert outcome(lambda: decimal_field({}, "k")) == ("refused", ValidationError, "missing field k", "invalid_input")


@pytest.mark.parametrize("raw", NASTY)
def test_the_decimal_cache_holds_canonical_decimals_only(raw: object) -> None:
    for parse in (model._nat, model._int):
        got = outcome(lambda parse=parse: parse(raw, MAX_AMOUNT))  # type: ignore[misc]
        detailed = outcome(lambda: parse_decimal(raw, "k"))
        if got[0] == "parsed":
            assert detailed[0] == "parsed" and got[2] == detailed[2]
    assert all(str(v) == k for k, v in model._DECIMALS.items())


HEX: list[object] = [
    "0x" + "ab" * 32,
    "0x" + "AB" * 32,
    "0X" + "ab" * 32,
    "0x" + "ab" * 31 + "g0",
    "0x" + "ab" * 31 + " 0",
]
HEX += ["0x" + "\u0660" * 64, "0x" + "ab" * 31, "0x" + "ab" * 33, "ab" * 33, None, 5, ["0x"]]


@pytest.mark.parametrize("raw", HEX)
def test_hex_field(raw: object) -> None:
    got = outcome(lambda: hex_field({"k": raw}, "k", 32))
    if got[0] == "parsed":
        assert isinstance(raw, str) and got[2] == bytes.fromhex(raw[2:]) and got[1] is bytes
    else:
        assert got[1] is ValidationError
        assert got[2] in ("k must be 0x-hex of 32 bytes", "k is not hex")
