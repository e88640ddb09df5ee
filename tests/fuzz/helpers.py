"""Budgets, mutators and snapshots shared by the fuzz targets (docs/fuzzing.md).

The budget: ``TCHAN_FUZZ_EXAMPLES`` (unset in the normal suite) is the total number of cases of a
run, shared between the targets by their weights below. Unset, the suite runs a fast sample of
``FAST_BUDGET`` cases. Every target counts the cases it actually ran (:func:`count`); conftest.py
prints them per target and in total.

A mutated frame starts from a real, valid one and is changed by one to four operations on its
JSON value (drop, duplicate, swap or retype a field; a huge, negative, neighbouring or
non-canonical number; a flipped, cut or lengthened hex string; a wrong-checksum address; unicode;
deep nesting; another type or kind), then possibly at the byte level (truncated JSON, inserted or
flipped bytes, random bytes).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from offchain.protocol import messages as m
from offchain.store import MemoryStore

T = TypeVar("T")

# --------------------------------------------------------------------------- budget

WEIGHTS: dict[str, float] = {
    "messages.parse (mutated frames)": 16,
    "messages.parse (random JSON and bytes)": 6,
    "watch.parse (mutated frames)": 6,
    "ChannelParty.on_proposal": 12,
    "ChannelParty.on_ack/on_yield/adopt": 8,
    "ChannelParty.accept_setup": 4,
    "BrokerAgent._handle": 10,
    "TraderAgent._handle": 10,
    "Watchtower.handle": 8,
    "chain.decode_revert": 8,
    "chain.revert_data": 4,
    "chain log decoding (Watchtower._logs, AdjudicatorClient.events)": 5,
    "chain calldata decoding (registered_state_from_transaction)": 3,
}
FAST_BUDGET = 800
_ENV = os.environ.get("TCHAN_FUZZ_EXAMPLES", "").strip()
TOTAL_BUDGET = int(_ENV) if _ENV else FAST_BUDGET
MODE = "full" if _ENV else "fast sample"
COUNTS: dict[str, list[float]] = {}


def budget(target: str) -> int:
    """This target's share of the total budget (at least 10 examples)."""
    return max(10, math.ceil(TOTAL_BUDGET * WEIGHTS[target] / sum(WEIGHTS.values())))


PER_EXAMPLE = 25 if _ENV else 1
"""Cases per hypothesis example: each example draws one random seed, and the target runs this many
cases from it with a seeded ``random.Random`` (cheap to generate; the seed reproduces them)."""


def fuzz_settings(target: str) -> settings:
    return settings(
        max_examples=math.ceil(budget(target) / PER_EXAMPLE),
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        print_blob=True,
    )


SEEDS = st.integers(min_value=0, max_value=2**64 - 1)


def cases(seed: int) -> Iterator[random.Random]:
    """The random generators of one example's cases."""
    for i in range(PER_EXAMPLE):
        yield random.Random(seed * 1_000 + i)


@contextmanager
def count(target: str) -> Iterator[None]:
    """Count one case of ``target`` (and the time spent in it)."""
    assert target in WEIGHTS, target
    start = time.perf_counter()
    try:
        yield
    finally:
        entry = COUNTS.setdefault(target, [0, 0.0])
        entry[0] += 1
        entry[1] += time.perf_counter() - start


# --------------------------------------------------------------------------- mutators

NASTY_DECIMALS = [
    "0",
    "1",
    "-1",
    "2",
    str(2**32),
    str(2**48),
    str(2**63 - 1),
    str(2**63),
    str(2**64 - 1),
    str(2**64),
    str(2**255),
    str(2**256 - 1),
    str(2**256),
    "-" + str(2**255),
    "9" * 80,
    "9" * 81,
    "01",
    "-0",
    "00",
    "1e3",
    " 1",
    "1 ",
    "+1",
    "1.0",
    "0x10",
    "",
    "-",
    "1_000",
    "\u0661",
    "\u00b2",
    "1\n",
    "--1",
    "NaN",
    "Infinity",
]
TYPE_NAMES = [*sorted(m._TYPE_NAMES.values()), "watch", "watch_price", "watch_ack", "watch_price_ack", "nope"]
NASTY_STRINGS = [
    "",
    "\x00",
    "\ud800",
    "\U0001f4a9" * 10,
    "a" * 65,
    "a" * 501,
    "é",
    "\u202e",
    "null",
    "0x",
    "0X" + "ab" * 32,
]
WORDS = [*m.KINDS, *m.FLOWS, "trader", "broker", "buy", "sell"]
_ALPHABET = 'ab0x\u00e9\u0661\ud800\U0001f4a9 \n"\\{}[],:-'


def rand_text(rng: random.Random, size: int = 12) -> str:
    return "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, size)))


def rand_leaf(rng: random.Random) -> Any:
    pick = rng.randint(0, 9)
    if pick == 0:
        return None
    if pick == 1:
        return rng.random() < 0.5
    if pick == 2:
        return rng.choice([0, 1, -1, 2**64, 2**256, -(2**255), 10**400, rng.randint(-(2**70), 2**70)])
    if pick == 3:
        return rng.choice([0.5, -0.0, 1e308, float("inf"), float("-inf"), float("nan"), 1.0])
    if pick == 4:
        return rng.choice(NASTY_STRINGS)
    if pick == 5:
        return rand_text(rng)
    if pick == 6:
        return rng.choice(WORDS)
    return rng.choice(NASTY_DECIMALS)


def rand_json(rng: random.Random, depth: int = 3) -> Any:
    """A random JSON value (a few levels deep at most)."""
    pick = rng.randint(0, 5) if depth > 0 else 0
    if pick == 4:
        return [rand_json(rng, depth - 1) for _ in range(rng.randint(0, 4))]
    if pick == 5:
        return {rand_text(rng, 6): rand_json(rng, depth - 1) for _ in range(rng.randint(0, 4))}
    return rand_leaf(rng)


def _is_decimal(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        m.parse_decimal(value, "x")
    except Exception:  # noqa: BLE001 - anything not canonical
        return False
    return True


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    if isinstance(value, dict):
        items: Any = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    else:
        return out
    for key, child in items:
        out.append((*prefix, key))
        out.extend(_paths(child, (*prefix, key)))
    return out


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        data = data[step]
    return data


def mutate_leaf(rng: random.Random, value: Any) -> Any:
    """A change that keeps the look of the value (so the frame often still parses)."""
    if isinstance(value, bool):
        return rng.choice([not value, int(value), str(value).lower(), None])
    if _is_decimal(value):
        number = int(value)
        pick = rng.randint(0, 3)
        if pick == 0:
            return rng.choice(NASTY_DECIMALS)
        if pick == 1:
            return rng.choice([str(number + 1), str(number - 1), str(number * 2), str(-number), str(number // 2)])
        if pick == 2:
            return str(rng.randint(0, 2 ** rng.choice([8, 32, 64, 70])))
        return rng.choice([number, float(number), [value]])
    if isinstance(value, str) and value.startswith("0x"):
        digits = value[2:]
        choice = rng.randint(0, 7)
        if choice == 0 and digits:  # flip one hex digit
            i = rng.randrange(len(digits))
            old = int(digits[i], 16) if digits[i] in "0123456789abcdefABCDEF" else 0
            new = "0123456789abcdef"[(old + rng.randint(1, 15)) % 16]
            return "0x" + digits[:i] + new + digits[i + 1 :]
        if choice == 1:  # cut
            return value[: rng.randint(0, len(value))]
        if choice == 2:  # lengthen
            return value + rng.choice(["0", "00", "ab" * 32, " ", "\n"])
        if choice == 3:  # change the case (a wrong EIP-55 checksum, or a valid lowercase one)
            return "0x" + rng.choice([digits.upper(), digits.lower(), digits.swapcase()])
        if choice == 4 and digits:  # a non-hex character
            i = rng.randrange(len(digits))
            return "0x" + digits[:i] + rng.choice(["g", " ", "\u0660", "-"]) + digits[i + 1 :]
        if choice == 5:
            return "0x" + "0" * len(digits)
        if choice == 6:
            return digits  # without 0x
        return "0x" + "f" * len(digits)
    if isinstance(value, str):
        return rng.choice([rng.choice(NASTY_STRINGS), rand_text(rng), rng.choice(WORDS)])
    return rand_json(rng)


_NEST = re.compile(r'"\\u0000NEST(\d+)\\u0000"')


def _nest_marker(depth: int) -> str:
    """A leaf that :func:`dumps` turns into ``depth`` nested arrays and objects (built as text:
    json.dumps itself would recurse too deep)."""
    return f"\x00NEST{depth}\x00"


def _expand(match: re.Match[str]) -> str:
    depth = int(match.group(1))
    return '{"a":[' * (depth // 2) + "1" + "]}" * (depth // 2)


OPS = ["leaf", "leaf", "leaf", "leaf", "leaf", "drop", "dup", "swap", "retype", "nest", "type", "envelope"]


def mutated_json(rng: random.Random, seed: Any) -> Any:
    """One to four mutations of (a deep copy of) the JSON value ``seed``."""
    data = json.loads(json.dumps(seed))
    for _ in range(rng.randint(1, 4)):
        paths = _paths(data)
        op = rng.choice(OPS)
        if op == "type" and isinstance(data, dict):
            data["type"] = rng.choice(TYPE_NAMES)
            if "kind" in data or rng.random() < 0.5:
                data["kind"] = rng.choice([*m.KINDS, "", "Setup"])
            continue
        if op == "envelope" and isinstance(data, dict):
            key = rng.choice(["v", "id", "type", "extra"])
            data[key] = rng.choice([2, 0, True, "1", 1.0, None, "a" * 65, "x", 10**400, rand_json(rng)])
            continue
        if not paths:
            data = rand_json(rng)
            continue
        path = rng.choice(paths)
        parent = _get(data, path[:-1])
        key = path[-1]
        if op == "drop":
            del parent[key]
        elif op == "dup":
            if isinstance(parent, list):
                parent.insert(key, json.loads(json.dumps(parent[key])))
            else:
                parent[rng.choice([*parent.keys(), "extra"])] = json.loads(json.dumps(parent[key]))
        elif op == "swap":
            other = rng.choice(paths)
            if other[: len(path)] != path and path[: len(other)] != other:
                other_parent = _get(data, other[:-1])
                parent[key], other_parent[other[-1]] = other_parent[other[-1]], parent[key]
        elif op == "retype":
            parent[key] = rand_json(rng)
        elif op == "nest":
            parent[key] = _nest_marker(rng.choice([1, 2, 10, 100, 2100, 5000]))
        else:
            parent[key] = mutate_leaf(rng, parent[key])
    return data


def dumps(data: Any) -> str:
    return _NEST.sub(_expand, json.dumps(data, separators=(",", ":"), allow_nan=True))


def mutated_frame(rng: random.Random, seeds: list[Any]) -> str | bytes:
    """A frame made from one of ``seeds`` (JSON values): JSON mutations, then maybe byte ones."""
    seed = rng.choice(seeds)
    data = mutated_json(rng, seed) if rng.random() < 0.9 else seed
    text = dumps(data)
    how = rng.randint(0, 11)
    if how == 0:  # truncated JSON
        return text[: rng.randint(0, max(0, len(text) - 1))]
    if how == 1:  # bytes, one flipped
        raw = bytearray(text.encode("utf-8", "surrogatepass"))
        if raw:
            raw[rng.randrange(len(raw))] ^= rng.randint(1, 255)
        return bytes(raw)
    if how == 2:  # random characters inserted
        i = rng.randint(0, len(text))
        return text[:i] + rand_text(rng, 8) + text[i:]
    if how == 3:
        return text.encode("utf-8", "surrogatepass")
    return text


def random_frame(rng: random.Random) -> str | bytes:
    """Random bytes, random text, or random JSON (sometimes with a valid envelope)."""
    pick = rng.randint(0, 3)
    if pick == 0:
        return rng.randbytes(rng.randint(0, 300))
    if pick == 1:
        return rand_text(rng, 200)
    value = rand_json(rng, 4)
    if pick == 3:
        fields = ["channel_id", "state", "signature", "version", "params", "order", "nonce", "batch_price", "x"]
        value = {k: rand_json(rng) for k in rng.sample(fields, rng.randint(0, 6))}
        value.update(v=1, type=rng.choice(TYPE_NAMES))
        if rng.random() < 0.5:
            value["id"] = rng.choice([*NASTY_STRINGS, rand_text(rng)])
    return json.dumps(value, allow_nan=True)


def seed_json(messages: list[Any], to_json: Callable[[Any], Any] = m.to_json) -> list[Any]:
    return [to_json(x) for x in messages]


# --------------------------------------------------------------------------- stores


_NOT_DATA = {"_lock", "_undo", "_depth", "_closed"}


def _copy2(value: Any) -> Any:
    """Two levels of containers copied; the leaves of a MemoryStore are immutable."""
    if isinstance(value, dict):
        return {k: _copy1(v) for k, v in value.items()}
    return _copy1(value)


def _copy1(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: (list(v) if isinstance(v, list) else v) for k, v in value.items()}
    if isinstance(value, list | set):
        return type(value)(value)
    return value


def store_snapshot(store: MemoryStore) -> dict[str, Any]:
    """Everything a MemoryStore holds (to compare before and after a refused message)."""
    return {k: _copy2(v) for k, v in vars(store).items() if k not in _NOT_DATA}


def clone_store(store: MemoryStore) -> MemoryStore:
    """A new MemoryStore with the same contents."""
    new = MemoryStore()
    for key, value in store_snapshot(store).items():
        setattr(new, key, value)
    return new


def assert_typed(exc: BaseException) -> None:
    """The only exceptions a handler may raise: the package's own."""
    from offchain.errors import TradingChannelsError

    if not isinstance(exc, TradingChannelsError):
        raise AssertionError(f"untyped {type(exc).__name__} escaped: {exc!r}") from exc


# --------------------------------------------------------------------------- async


class FakeConnection:
    """Stands in for a WebSocket connection: records every frame sent."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, text: str | bytes) -> None:
        self.sent.append(text if isinstance(text, str) else text.decode())

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass


class Loop:
    """One event loop for a module's examples (agents bind their asyncio objects to one loop)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)
