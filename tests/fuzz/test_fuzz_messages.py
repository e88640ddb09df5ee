"""Hostile frames against the parsers: ``messages.parse`` (and load_frame, envelope, decode_with
under it) and ``watch.parse``. Property: a frame is either a message, which then round-trips
through encode exactly, or a ProtocolError with an envelope-level code; nothing else escapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given

from offchain.model import BatchPrice
from offchain.protocol import messages as m
from offchain.protocol import watch as wm
from offchain.protocol.messages import ProtocolError
from offchain.signing import CoSignedState
from offchain.types import BatchNumber, MarketId, Price, Signature
from tests.fuzz import helpers as h
from tests.protocol.conftest import BROKER_KEY, DOMAIN, GOLD, GOLD_PRICE, TRADER_KEY, sample_proposals
from tests.protocol.test_messages import all_messages

PARSE_CODES = (m.INVALID_MESSAGE, m.UNSUPPORTED_VERSION, m.UNKNOWN_TYPE)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def _doc_examples() -> list[Any]:
    """The JSON examples of docs/protocol.md that are messages."""
    out = []
    for block in DOCS.read_text().split("```json")[1:]:
        try:
            value = json.loads(block.split("```")[0])
        except ValueError:
            continue
        if isinstance(value, dict) and "type" in value:
            out.append(value)
    return out


PROTOCOL_SEEDS = h.seed_json(all_messages()) + _doc_examples()


def _watch_messages() -> list[wm.WatchMessage]:
    proposals = sample_proposals()
    params = proposals[0].params
    assert params is not None
    out: list[wm.WatchMessage] = []
    for p in proposals[:4]:
        digest = DOMAIN.state_digest(p.state)
        signed = CoSignedState(p.state, TRADER_KEY.sign_digest(digest), BROKER_KEY.sign_digest(digest))
        out.append(wm.watch_message(params, signed, f"w{p.state.version}"))
    price = BatchPrice(MarketId(GOLD), BatchNumber(3), Price(GOLD_PRICE))
    out.append(wm.WatchPrice(BROKER_KEY.address, price, BROKER_KEY.sign(DOMAIN, price), "wp"))
    out.append(wm.WatchAck("w1", params.channel_id, 3))  # type: ignore[arg-type]
    out.append(wm.WatchPriceAck("wp", GOLD, 3, True))
    out.append(m.ErrorReply("x", m.BAD_SIGNATURE, "no", None, params.channel_id))
    return out


WATCH_SEEDS = h.seed_json(_watch_messages(), wm.to_json)
_ = Signature  # re-exported type, used by the seeds above


def check_protocol(raw: str | bytes) -> None:
    try:
        message = m.parse(raw)
    except ProtocolError as exc:
        assert exc.code in PARSE_CODES, exc.code
        m.message_id_of(raw)  # what the error reply's "re" is read with: must not raise either
        return
    except Exception as exc:
        h.assert_typed(exc)
        raise
    again = m.parse(m.encode(message))
    assert again == message
    assert m.to_json(again) == m.to_json(message)


def check_watch(raw: str | bytes) -> None:
    try:
        message = wm.parse(raw)
    except ProtocolError as exc:
        assert exc.code in PARSE_CODES, exc.code
        return
    except Exception as exc:
        h.assert_typed(exc)
        raise
    assert wm.parse(wm.encode(message)) == message


@h.fuzz_settings("messages.parse (mutated frames)")
@given(seed=h.SEEDS)
def test_mutated_protocol_frames(seed: int) -> None:
    for rng in h.cases(seed):
        raw = h.mutated_frame(rng, PROTOCOL_SEEDS)
        with h.count("messages.parse (mutated frames)"):
            check_protocol(raw)


@h.fuzz_settings("messages.parse (random JSON and bytes)")
@given(seed=h.SEEDS)
def test_random_frames(seed: int) -> None:
    for rng in h.cases(seed):
        raw = h.random_frame(rng)
        with h.count("messages.parse (random JSON and bytes)"):
            check_protocol(raw)
            check_watch(raw)


@h.fuzz_settings("watch.parse (mutated frames)")
@given(seed=h.SEEDS)
def test_mutated_watch_frames(seed: int) -> None:
    for rng in h.cases(seed):
        raw = h.mutated_frame(rng, WATCH_SEEDS)
        with h.count("watch.parse (mutated frames)"):
            check_watch(raw)


def test_seeds_are_valid() -> None:
    """The seeds the mutators start from parse (so the mutations start from real frames)."""
    assert len(_doc_examples()) >= 10
    for seed in PROTOCOL_SEEDS:
        m.from_json(seed)
    for seed in WATCH_SEEDS:
        wm.from_json(seed)


def test_deep_nesting_is_refused_before_parsing() -> None:
    deep = "[" * 200_000 + "]" * 200_000
    for raw in (deep, deep.encode(), '{"v":1,"type":"ack","x":' + deep + "}"):
        check_protocol(raw)
        check_watch(raw)
