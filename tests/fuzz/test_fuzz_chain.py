"""Hostile data from the chain side: revert data (``errors.decode_revert``), what providers raise
(``errors.revert_data``), adjudicator logs (``AdjudicatorClient.events``, the watchtower's
``_logs`` reader) and a registering transaction's calldata
(``AdjudicatorClient.registered_state_from_transaction``), each built real and then mutated.

Property: decode_revert always returns a ContractError; revert_data returns bytes or None; the log
readers drop what does not decode; the calldata decoder returns a checked state or raises a
TradingChannelsError. Nothing else escapes."""

from __future__ import annotations

import random
import warnings
from typing import Any

from eth_abi.abi import encode as abi_encode
from eth_utils.abi import event_abi_to_log_topic
from hexbytes import HexBytes
from hypothesis import given
from web3.datastructures import AttributeDict

from offchain.agents.watchtower import Watchtower
from offchain.chain import errors as ce
from offchain.errors import ContractError, TradingChannelsError
from tests.fuzz import helpers as h
from tests.fuzz.test_fuzz_agents import WATCH_TEMPLATE, WATCHTOWER_KEY, _build_params, _co_signed, offline_chain
from tests.fuzz.test_fuzz_party import SCENES
from tests.protocol.conftest import ADJUDICATOR

SELECTORS = list(ce._selectors().items())


def _value(rng: random.Random, typ: str) -> Any:
    if typ.startswith("uint"):
        return rng.choice([0, 1, 2 ** int(typ[4:] or 256) - 1, rng.randrange(2 ** int(typ[4:] or 256))])
    if typ == "address":
        return "0x" + rng.randbytes(20).hex()
    if typ == "bytes32":
        return rng.randbytes(32)
    if typ == "bool":
        return rng.random() < 0.5
    if typ == "string":
        return h.rand_text(rng, 40).replace("\ud800", "?")
    raise AssertionError(typ)


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    raw = bytearray(data)
    for _ in range(rng.randint(0, 3)):
        pick = rng.randint(0, 5)
        if pick == 0 and raw:
            raw[rng.randrange(len(raw))] ^= rng.randint(1, 255)
        elif pick == 1:
            del raw[rng.randint(0, len(raw)) :]
        elif pick == 2:
            raw += rng.randbytes(rng.choice([1, 31, 32, 64]))
        elif pick == 3 and len(raw) >= 36:  # a huge offset or length word
            i = 4 + 32 * rng.randrange((len(raw) - 4) // 32)
            raw[i : i + 32] = rng.choice(
                [b"\xff" * 32, (2**64).to_bytes(32, "big"), (len(raw) + 1).to_bytes(32, "big")]
            )
        elif pick == 4:
            raw = bytearray(rng.randbytes(rng.randint(0, 100)))
    return bytes(raw)


def revert_payload(rng: random.Random) -> bytes:
    pick = rng.randint(0, 3)
    if pick == 0:
        return ce._ERROR_STRING + abi_encode(["string"], [_value(rng, "string")])
    if pick == 1:
        return ce._PANIC + abi_encode(["uint256"], [rng.randrange(2**256)])
    selector, (_, types, _) = rng.choice(SELECTORS)
    return selector + abi_encode(types, [_value(rng, t) for t in types])


@h.fuzz_settings("chain.decode_revert")
@given(seed=h.SEEDS)
def test_decode_revert(seed: int) -> None:
    for rng in h.cases(seed):
        data = _mutate_bytes(rng, revert_payload(rng))
        with h.count("chain.decode_revert"):
            error = ce.decode_revert(data if data or rng.random() < 0.5 else None)
            assert isinstance(error, ContractError)
            assert isinstance(error.code, str) and isinstance(error.reason, str)


class _NodeError(Exception):
    def __init__(self, *args: Any, data: Any = None) -> None:
        super().__init__(*args)
        if data is not None:
            self.data = data


def provider_error(rng: random.Random) -> BaseException:
    """What a node or eth-tester might raise on a revert, real and mangled."""
    payload = _mutate_bytes(rng, revert_payload(rng))
    hexed = "0x" + payload.hex()
    pick = rng.randint(0, 7)
    if pick == 0:
        return _NodeError("execution reverted", data=rng.choice([hexed, hexed[:-1], hexed + "g", "0x", "0xZZ"]))
    if pick == 1:
        return _NodeError("reverted", data={"data": rng.choice([hexed, hexed[:-1], "nothex", "0x" + "a", ""])})
    if pick == 2:
        return _NodeError(repr(payload))
    if pick == 3:
        return _NodeError(rng.choice(["b'\\x'", "b'\\", 'b"\\xzz"', "b''", "b'\\N{x}'", h.rand_text(rng, 30)]))
    if pick == 4:
        inner = _NodeError(payload)
        outer = _NodeError("wrapped", inner)
        outer.__cause__ = _NodeError("cause", data=hexed[: rng.randint(0, len(hexed))])
        return outer
    if pick == 5:
        loop = _NodeError("loop")
        loop.__context__ = loop
        return loop
    if pick == 6:
        return _NodeError(None, 1, data=rng.choice([1, None, [], {"data": 5}]))
    return _NodeError("x" * rng.randint(0, 50) + repr(payload) + h.rand_text(rng, 5))


@h.fuzz_settings("chain.revert_data")
@given(seed=h.SEEDS)
def test_revert_data(seed: int) -> None:
    for rng in h.cases(seed):
        exc = provider_error(rng)
        with h.count("chain.revert_data"), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # literal_eval of odd escapes
            data = ce.revert_data(exc)
            assert data is None or isinstance(data, bytes)
            assert isinstance(ce.decode_revert(data), ContractError)


# --------------------------------------------------------------------------- logs

TOWER = Watchtower(WATCHTOWER_KEY, h.clone_store(WATCH_TEMPLATE), offline_chain(), ADJUDICATOR)
CLIENT = TOWER.adjudicator
EVENTS = [e for e in CLIENT.contract.abi if e.get("type") == "event"]
GUARDED = bytes(next(iter(TOWER._channels)))


def _log(rng: random.Random) -> AttributeDict[str, Any]:
    event: Any = rng.choice(EVENTS)
    topics = [bytes(event_abi_to_log_topic(event))]
    types, values = [], []
    for item in event["inputs"]:
        value = GUARDED if item["type"] == "bytes32" and rng.random() < 0.7 else _value(rng, item["type"])
        if item.get("indexed"):
            topics.append(abi_encode([item["type"]], [value]))
        else:
            types.append(item["type"])
            values.append(value)
    data = abi_encode(types, values)
    if rng.random() < 0.8:
        data = _mutate_bytes(rng, data)
    if rng.random() < 0.3:
        i = rng.randrange(len(topics))
        topics[i] = _mutate_bytes(rng, topics[i]) if rng.random() < 0.5 else rng.randbytes(32)
    if rng.random() < 0.2:
        topics = topics[: rng.randint(0, len(topics))] + [rng.randbytes(32)] * rng.randint(0, 2)
    return AttributeDict(
        {
            "address": CLIENT.address,
            "topics": [HexBytes(t) for t in topics],
            "data": HexBytes(data),
            "blockNumber": rng.randint(0, 10),
            "transactionHash": HexBytes(rng.randbytes(32)),
            "transactionIndex": 0,
            "blockHash": HexBytes(rng.randbytes(32)),
            "logIndex": rng.randint(0, 5),
            "removed": False,
        }
    )


@h.fuzz_settings("chain log decoding (Watchtower._logs, AdjudicatorClient.events)")
@given(seed=h.SEEDS)
def test_log_decoding(seed: int) -> None:
    for rng in h.cases(seed):
        entries = [_log(rng) for _ in range(rng.randint(1, 3))]
        with h.count("chain log decoding (Watchtower._logs, AdjudicatorClient.events)"):
            TOWER.chain.w3.eth.get_logs = lambda query, e=entries: e  # type: ignore[method-assign]
            try:
                decoded = TOWER._logs(0, 10)
                for name, args, entry in decoded:
                    TOWER._on_log(name, args, entry)
                receipt: Any = AttributeDict({"logs": entries})
                for event in {str(e["name"]) for e in EVENTS}:
                    CLIENT.events(receipt, event)
            except Exception as exc:
                raise AssertionError(f"{type(exc).__name__} escaped log decoding: {exc!r}") from exc


# --------------------------------------------------------------------------- calldata

TRADER_SCENE = next(s for s in SCENES if s.role == "trader")
PARAMS = _build_params(TRADER_SCENE)


def _calldata(rng: random.Random) -> bytes:
    signed = _co_signed(TRADER_SCENE, rng.randint(0, 4))
    fn = rng.choice(["challenge", "refute", "close", "deposit"])
    header = PARAMS.header().as_abi()
    state = signed.state.as_abi()
    args: dict[str, list[Any]] = {
        "challenge": [header, state, signed.trader_signature, signed.broker_signature, b""],
        "refute": [header, state, signed.trader_signature, signed.broker_signature],
        "close": [header, state, signed.trader_signature, signed.broker_signature],
        "deposit": [header, PARAMS.trader, 5],
    }
    return bytes(HexBytes(CLIENT.contract.encode_abi(fn, args=args[fn])))


CALLDATA = [_calldata(random.Random(i)) for i in range(12)]


@h.fuzz_settings("chain calldata decoding (registered_state_from_transaction)")
@given(seed=h.SEEDS)
def test_registered_state_from_transaction(seed: int) -> None:
    for rng in h.cases(seed):
        data = rng.choice(CALLDATA)
        if rng.random() < 0.9:
            data = data[:4] + _mutate_bytes(rng, data[4:]) if rng.random() < 0.8 else _mutate_bytes(rng, data)
        tx = {"to": rng.choice([CLIENT.address, CLIENT.address, PARAMS.trader]), "input": HexBytes(data)}
        client = CLIENT
        client.chain.w3.eth.get_transaction = lambda tx_hash, t=tx: t  # type: ignore[method-assign]
        with h.count("chain calldata decoding (registered_state_from_transaction)"):
            try:
                signed = client.registered_state_from_transaction(b"\x00" * 32)
            except TradingChannelsError:
                continue
            except Exception as exc:
                raise AssertionError(f"{type(exc).__name__} escaped the calldata decoder: {exc!r}") from exc
            assert signed.state.channel_id == signed.state.channel_id
