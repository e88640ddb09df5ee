"""The wire schema (offchain.protocol.messages): every message type round-trips, and malformed
input is refused with the exact error code before anything else looks at it."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offchain.model import BatchPrice
from offchain.protocol import messages as m
from offchain.protocol.messages import ProtocolError
from offchain.types import BatchNumber, ChannelId, MarketId, Nonce, Price, Signature
from tests.protocol.conftest import (
    BROKER_KEY,
    CHAIN_ID,
    DOMAIN,
    GOLD,
    GOLD_PRICE,
    OFFLINE_MARKETS,
    TOKEN,
    TRADER_KEY,
    make_order,
    offline_params,
    sample_proposals,
)

PARAMS = offline_params(nonce=7)
CID = PARAMS.channel_id
SIG = Signature(bytes(range(65)))
PROPOSALS = sample_proposals()


def all_messages() -> list[m.Message]:
    """One instance of every message type (and of every proposal kind)."""
    order, order_signature = make_order(PARAMS, 3)
    final_state = PROPOSALS[-1].state
    return [
        m.Challenge(os.urandom(32), BROKER_KEY.address, id="c1"),
        m.Hello(TRADER_KEY.address, SIG, id="h1"),
        m.Welcome(
            broker=BROKER_KEY.address,
            chain_id=CHAIN_ID,
            adjudicator=DOMAIN.verifying_contract,
            token=TOKEN,
            markets=(OFFLINE_MARKETS[0], OFFLINE_MARKETS[1]),
            batch_seconds=2,
            fee_bps=10,
            open_batches={1: 4, 2: 1},
            channels=(CID, ChannelId(bytes(32))),
            id="w1",
        ),
        m.RequestSetup(2**200, 3600, id="rs"),
        m.CreateOrderRequest(CID, order, order_signature, id="co"),
        m.CancelOrderRequest(CID, Nonce(3), id="cx"),
        m.RequestDeposit(CID, id="rd"),
        m.RequestFinalize(CID, id="rf"),
        m.Resume(CID, id="re"),
        *PROPOSALS,
        m.Ack(CID, 5, SIG, id="a1"),
        m.Yield(CID, 5, id="y1"),
        m.RequestYield(CID, id="ry"),
        m.BatchPriceMessage(BatchPrice(MarketId(GOLD), BatchNumber(3), Price(GOLD_PRICE)), SIG, id="bp"),
        m.Sync(
            final_state.channel_id,
            PROPOSALS[0].params,  # type: ignore[arg-type]
            "cooperative",
            final_state,
            SIG,
            Signature(bytes(65)),
            "trader",
            id="s1",
        ),
        m.ErrorReply("x1", m.RULE_VIOLATION, "nope", "order_is_open", CID, id="e1"),
        m.ErrorReply("", m.INVALID_MESSAGE, "bad"),
        m.Notice(m.UNRESPONSIVE, "silent", CID, id="n1"),
        m.Notice(m.BROKER_DEPOSITED, "done"),
    ]


MESSAGES = all_messages()


def base(type_name: str, kind: str | None = None) -> dict[str, Any]:
    """A fresh JSON object of a valid message of that type (and proposal kind)."""
    for message in MESSAGES:
        if m.type_name(message) == type_name and (kind is None or getattr(message, "kind", None) == kind):
            return copy.deepcopy(m.to_json(message))
    raise KeyError(type_name)


def refused(raw: str | bytes | dict[str, Any] | list[Any], code: str = m.INVALID_MESSAGE) -> ProtocolError:
    if isinstance(raw, dict | list):
        raw = json.dumps(raw)
    with pytest.raises(ProtocolError) as info:
        m.parse(raw)
    assert info.value.code == code, info.value.reason
    return info.value


# --------------------------------------------------------------------------- round trips


def test_every_message_type_is_covered() -> None:
    covered = {m.type_name(x) for x in MESSAGES}
    assert covered == set(m._TYPE_NAMES.values())
    assert {p.kind for p in PROPOSALS} == set(m.KINDS)


@pytest.mark.parametrize("message", MESSAGES, ids=lambda x: f"{m.type_name(x)}-{getattr(x, 'kind', '')}-{x.id}")
def test_round_trip(message: m.Message) -> None:
    text = m.encode(message)
    assert m.parse(text) == message
    assert m.parse(text.encode()) == message
    assert m.from_json(json.loads(text)) == message
    assert m.to_json(m.parse(text)) == json.loads(text)
    data = json.loads(text)
    assert data["v"] == m.PROTOCOL_VERSION
    assert data["type"] == m.type_name(message)


def test_amounts_travel_as_decimal_strings() -> None:
    deposit = base("propose", "deposit")
    assert deposit["transition"] == {"trader_deposit": str(5_000 * 10**6), "broker_deposit": str(20_000 * 10**6)}
    assert deposit["state"][0] == "1"
    assert all(isinstance(v, str) for v in deposit["state"][1].values())
    assert base("ack")["version"] == "5"
    assert base("request_setup")["nonce"] == str(2**200)


# --------------------------------------------------------------------------- refusals: envelope


@pytest.mark.parametrize("raw", ["", "{", "not json", "{'v': 1}", b"\xff\xfe", "[1,]", '{"v":1,"type":"ack",}'])
def test_not_json(raw: str | bytes) -> None:
    refused(raw)


@pytest.mark.parametrize("raw", ["[]", "1", '"hello"', "null", "true", '[{"v":1,"type":"resume"}]'])
def test_not_an_object(raw: str) -> None:
    refused(raw)


@pytest.mark.parametrize("version", [None, 0, 2, "1", -1, 1.5, [1], {"v": 1}])
def test_wrong_version(version: Any) -> None:
    data = base("resume")
    if version is None:
        del data["v"]
    else:
        data["v"] = version
    refused(data, m.UNSUPPORTED_VERSION)


def test_version_true_is_not_version_1() -> None:
    data = base("resume")
    data["v"] = True
    refused(data, m.UNSUPPORTED_VERSION)


@pytest.mark.parametrize("type_", [None, "bogus", "Resume", "", 5, ["resume"], "propose "])
def test_unknown_type(type_: Any) -> None:
    data = base("resume")
    if type_ is None:
        del data["type"]
    else:
        data["type"] = type_
    refused(data, m.UNKNOWN_TYPE)


def test_id_bounds() -> None:
    data = base("resume")
    data["id"] = "x" * m.MAX_ID_LENGTH
    assert m.parse(json.dumps(data)).id == "x" * m.MAX_ID_LENGTH
    data["id"] = "x" * (m.MAX_ID_LENGTH + 1)
    refused(data)
    for bad in (5, None, ["a"], {"a": 1}):
        data["id"] = bad
        refused(data)


def test_oversized_message() -> None:
    data = base("notice")
    data["reason"] = "x" * m.MAX_MESSAGE_BYTES
    text = json.dumps(data)
    assert len(text) > m.MAX_MESSAGE_BYTES
    refused(text)
    refused(text.encode())
    # just under the limit is parsed (the reason is cut to 500 characters)
    data["reason"] = "x" * (m.MAX_MESSAGE_BYTES - 200)
    assert isinstance(m.parse(json.dumps(data)), m.Notice)


def test_oversized_message_counts_bytes_not_characters() -> None:
    data = base("notice")
    data["reason"] = "é" * (m.MAX_MESSAGE_BYTES // 2 + 100)
    text = json.dumps(data, ensure_ascii=False)
    assert len(text.encode()) > m.MAX_MESSAGE_BYTES >= len(text)
    refused(text.encode())  # as bytes it is refused ...
    refused(text)  # ... as the same text it is not


# --------------------------------------------------------------------------- refusals: fields

OPTIONAL = {"v", "type", "id"}
OPTIONAL_BY_TYPE = {"error": {"re", "rule", "channel_id"}, "notice": {"channel_id"}}


def _required_keys() -> list[tuple[int, str]]:
    out = []
    for i, message in enumerate(MESSAGES):
        data = m.to_json(message)
        optional = OPTIONAL | OPTIONAL_BY_TYPE.get(data["type"], set())
        out.extend((i, key) for key in data if key not in optional)
    return out


@pytest.mark.parametrize(("index", "key"), _required_keys())
def test_missing_field(index: int, key: str) -> None:
    data = m.to_json(MESSAGES[index])
    del data[key]
    refused(data)


@pytest.mark.parametrize(
    ("type_", "kind", "path"),
    [
        ("create_order", None, ("order", "nonce")),
        ("create_order", None, ("order", "side")),
        ("propose", "lock", ("transition", "order", "trader")),
        ("propose", "lock", ("transition", "first_batch")),
        ("propose", "trade", ("transition", "batch_price", "price")),
        ("propose", "deposit", ("state", 1, "broker_deposit")),
        ("propose", "setup", ("params", "markets", 0, "feed")),
        ("batch_price", None, ("batch_price", "batch")),
        ("sync", None, ("params", "token")),
    ],
)
def test_missing_nested_field(type_: str, kind: str | None, path: tuple[Any, ...]) -> None:
    data = base(type_, kind)
    target: Any = data
    for step in path[:-1]:
        target = target[step]
    del target[path[-1]]
    refused(data)


NUMBER_FIELDS = [
    ("ack", None, ("version",), 5),
    ("yield", None, ("version",), 5),
    ("cancel_order", None, ("nonce",), 3),
    ("request_setup", None, ("challenge_duration",), 3600),
    ("create_order", None, ("order", "amount_synthetic"), 10**6),
    ("propose", "deposit", ("transition", "trader_deposit"), 5),
    ("propose", "deposit", ("state", 0), 1),
    ("propose", "deposit", ("state", 1, "trader_available"), 5),
    ("propose", "trade", ("transition", "fills", 0, "fee"), 1),
    ("propose", "finalize", ("transition", "prices", "1"), 2000),
    ("batch_price", None, ("batch_price", "price"), 2000),
    ("welcome", None, ("chain_id",), 31337),
]


def _set(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    target: Any = data
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return data


@pytest.mark.parametrize(("type_", "kind", "path", "number"), NUMBER_FIELDS)
def test_amounts_as_json_numbers_are_refused(type_: str, kind: str | None, path: tuple[Any, ...], number: int) -> None:
    refused(_set(base(type_, kind), path, number))
    refused(_set(base(type_, kind), path, float(number)))


NON_CANONICAL = ["01", "-0", "1e3", " 1", "1 ", "+1", "1.0", "0x10", "", "-", "1_000", "\u0661", "٣", "1\n", "--1"]


@pytest.mark.parametrize("raw", NON_CANONICAL)
@pytest.mark.parametrize(
    ("type_", "kind", "path"),
    [
        ("ack", None, ("version",)),
        ("cancel_order", None, ("nonce",)),
        ("create_order", None, ("order", "amount_collateral")),
        ("propose", "deposit", ("state", 1, "trader_available")),
        ("propose", "lock", ("transition", "marks", "1")),
    ],
)
def test_non_canonical_decimals(raw: str, type_: str, kind: str | None, path: tuple[Any, ...]) -> None:
    refused(_set(base(type_, kind), path, raw))


def test_non_canonical_decimal_as_a_marks_key() -> None:
    data = base("propose", "finalize")
    data["transition"]["prices"] = {"01": str(GOLD_PRICE)}
    refused(data)


@pytest.mark.parametrize(
    ("type_", "kind", "path", "value"),
    [
        ("cancel_order", None, ("nonce",), "-1"),
        ("cancel_order", None, ("nonce",), str(2**64)),
        ("ack", None, ("version",), "-1"),
        ("ack", None, ("version",), str(2**48)),
        ("yield", None, ("version",), str(2**48)),
        ("create_order", None, ("order", "amount_synthetic"), str(2**64)),
        ("create_order", None, ("order", "amount_collateral"), "-1"),
        ("create_order", None, ("order", "nonce"), "-5"),
        ("create_order", None, ("order", "market"), str(2**32)),
        ("create_order", None, ("order", "expiration"), str(2**32)),
        ("propose", "deposit", ("transition", "broker_deposit"), str(2**63)),
        ("propose", "deposit", ("state", 0), str(2**48)),
        ("propose", "deposit", ("state", 1, "trader_available"), str(2**63)),
        ("propose", "deposit", ("state", 1, "trader_locked"), "-1"),
        ("propose", "lock", ("transition", "first_batch"), str(2**64)),
        ("propose", "lock", ("transition", "now"), str(2**40 + 1)),
        ("propose", "lock", ("transition", "marks", "1"), "0"),
        ("propose", "trade", ("transition", "fills", 0, "amount_synthetic"), str(2**64)),
        ("propose", "trade", ("transition", "batch_price", "market"), str(2**32)),
        ("propose", "finalize", ("transition", "prices", "1"), str(2**64)),
        ("request_setup", None, ("challenge_duration",), str(2**32 + 1)),
        ("request_setup", None, ("nonce",), str(2**256)),
        ("welcome", None, ("fee_bps",), "10001"),
        ("welcome", None, ("chain_id",), "0"),
        ("batch_price", None, ("batch_price", "price"), str(2**64)),
    ],
)
def test_out_of_range(type_: str, kind: str | None, path: tuple[Any, ...], value: str) -> None:
    refused(_set(base(type_, kind), path, value))


def test_fill_count_bounds() -> None:
    data = base("propose", "trade")
    fill = data["transition"]["fills"][0]
    refused(_set(copy.deepcopy(data), ("transition", "fills"), []))
    refused(_set(copy.deepcopy(data), ("transition", "fills"), [fill] * 65))
    refused(_set(copy.deepcopy(data), ("transition", "fills"), fill))
    many = {str(i): "1" for i in range(65)}
    refused(_set(copy.deepcopy(data), ("transition", "marks"), many))


GOOD_SIG = "0x" + "ab" * 65


@pytest.mark.parametrize(
    "value",
    [
        "0x" + "ab" * 64,  # 64 bytes
        "0x" + "ab" * 66,  # 66 bytes
        "ab" * 65 + "00",  # no 0x
        "0X" + "ab" * 65,
        "0x" + "zz" * 65,
        "0x" + "ab" * 64 + "a",  # odd length
        "0x" + "ab" * 64 + "gg",
        "",
        None,
        65,
        ["0x" + "ab" * 65],
    ],
)
@pytest.mark.parametrize("type_", ["hello", "ack", "batch_price", "create_order"])
def test_bad_signature_hex(type_: str, value: Any) -> None:
    data = base(type_)
    assert m.parse(json.dumps(_set(copy.deepcopy(data), ("signature",), GOOD_SIG)))
    refused(_set(data, ("signature",), value))


@pytest.mark.parametrize("value", ["0x" + "11" * 31, "0x" + "11" * 33, "0x" + "qq" * 32, "11" * 32 + "00", 5])
def test_bad_channel_id(value: Any) -> None:
    refused(_set(base("resume"), ("channel_id",), value))
    refused(_set(base("ack"), ("channel_id",), value))


@pytest.mark.parametrize(
    ("type_", "key", "value"),
    [
        ("resume", "channel_id", "0x" + "11" * 31 + "  "),
        ("ack", "signature", "0x" + "ab " * 43 + " "),
    ],
    ids=["channel_id-31-bytes", "signature-43-bytes"],
)
def test_hex_with_whitespace_is_refused(type_: str, key: str, value: str) -> None:
    refused(_set(base(type_), (key,), value))


def _bad_checksum(address: str) -> str:
    """``address`` with the case of its first letter flipped: a wrong EIP-55 checksum."""
    for i, ch in enumerate(address[2:], start=2):
        if ch.isalpha():
            return address[:i] + ch.swapcase() + address[i + 1 :]
    raise AssertionError("no letter")


@pytest.mark.parametrize(
    ("type_", "kind", "path"),
    [
        ("hello", None, ("address",)),
        ("challenge", None, ("broker",)),
        ("welcome", None, ("token",)),
        ("create_order", None, ("order", "trader")),
        ("create_order", None, ("order", "collateral")),
        ("propose", "setup", ("params", "broker")),
        ("propose", "setup", ("params", "markets", 0, "feed")),
    ],
)
def test_bad_address_checksum(type_: str, kind: str | None, path: tuple[Any, ...]) -> None:
    data = base(type_, kind)
    target: Any = data
    for step in path[:-1]:
        target = target[step]
    good = target[path[-1]]
    assert good != good.lower()
    refused(_set(data, path, _bad_checksum(good)))
    # no checksum at all (all lower case) is accepted, and comes back checksummed
    lower = _set(copy.deepcopy(base(type_, kind)), path, good.lower())
    if type_ != "propose":  # for a setup, the channel id still matches (the id hashes the address)
        assert m.to_json(m.parse(json.dumps(lower))) == base(type_, kind)
    for bad in ("0x1234", "1" * 40, 5, None, "0x" + "g" * 40):
        refused(_set(copy.deepcopy(data), path, bad))


def test_setup_channel_id_must_be_the_hash_of_params() -> None:
    data = base("propose", "setup")
    data["params"]["nonce"] = "100"
    error = refused(data)
    assert "hash of params" in error.reason
    sync = base("sync")
    sync["params"]["challenge_duration"] = "7200"
    refused(sync)


@pytest.mark.parametrize(
    ("type_", "kind", "path", "value"),
    [
        ("propose", "lock", ("kind",), "order"),
        ("propose", "lock", ("final",), "false"),
        ("propose", "lock", ("final",), None),
        ("propose", "lock", ("transition",), []),
        ("propose", "lock", ("transition", "order", "side"), "long"),
        ("propose", "lock", ("state",), ["1", {}, [], []]),
        ("propose", "lock", ("state",), {"version": "1"}),
        ("propose", "setup", ("flow",), "both"),
        ("sync", None, ("turn",), "nobody"),
        ("welcome", None, ("markets",), [{}] * 17),
        ("error", None, ("code",), 5),
        ("error", None, ("rule",), 5),
        ("notice", None, ("reason",), None),
    ],
)
def test_malformed_values(type_: str, kind: str | None, path: tuple[Any, ...], value: Any) -> None:
    refused(_set(base(type_, kind), path, value))


# --------------------------------------------------------------------------- bugs in the envelope


NESTED_PARSE = """
import sys
from offchain.protocol import messages as m
try:
    m.parse("[" * 100_000 + "]" * 100_000)
except m.ProtocolError as exc:
    print("ProtocolError", exc.code)
except BaseException as exc:
    print(type(exc).__name__)
"""


def test_deeply_nested_json_is_a_protocol_error() -> None:
    # In a subprocess: this test process imported web3, so here the input would crash pytest itself.
    out = subprocess.run([sys.executable, "-c", NESTED_PARSE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ProtocolError invalid_message"


# --------------------------------------------------------------------------- property tests

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["0", "1", "-1", "01", str(2**64), "0x" + "ab" * 32, "0x" + "ab" * 65, "buy", "setup"])
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
ENVELOPES = st.fixed_dictionaries(
    {"v": st.just(1), "type": st.sampled_from(sorted(m._TYPE_NAMES.values()))},
    optional={"id": st.text(max_size=70)},
).flatmap(lambda env: st.dictionaries(st.text(max_size=15), JSON_VALUES, max_size=6).map(lambda d: {**d, **env}))


def _parse_or_refuse(raw: str | bytes) -> m.Message | None:
    """parse either returns a message (which then round-trips) or raises ProtocolError."""
    try:
        message = m.parse(raw)
    except ProtocolError as exc:
        assert exc.code in (m.INVALID_MESSAGE, m.UNSUPPORTED_VERSION, m.UNKNOWN_TYPE)
        return None
    again = m.parse(m.encode(message))
    assert again == message
    return message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=JSON_VALUES | ENVELOPES)
def test_random_json_is_a_message_or_a_protocol_error(value: Any) -> None:
    _parse_or_refuse(json.dumps(value))


@settings(max_examples=100, deadline=None)
@given(raw=st.binary(max_size=200) | st.text(max_size=200))
def test_random_bytes_are_a_message_or_a_protocol_error(raw: bytes | str) -> None:
    _parse_or_refuse(raw)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``value`` (dict keys and list indices)."""
    out = []
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return out
    for key, child in items:
        out.append((*prefix, key))
        out.extend(_paths(child, (*prefix, key)))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    data = copy.deepcopy(m.to_json(draw(st.sampled_from(MESSAGES))))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = data
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["drop", "replace", "replace"]))
        if action == "drop":
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSON_VALUES)
    return data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated())
def test_mutated_messages_are_a_message_or_a_protocol_error(data: dict[str, Any]) -> None:
    _parse_or_refuse(json.dumps(data))
