"""docs/protocol.md and docs/engine.md stay true to the code.

Fast checks (no chain, no network): every JSON block of protocol.md parses with
``messages.parse`` (message examples) or ``parse_script`` (trader scripts); every message type,
every proposal kind and every error-code constant of ``offchain/protocol/messages.py`` is in the
doc; the examples' signatures verify (they are real frames, not hand-written ones); every ``Rule``
member is in engine.md. The slow test runs ``scripts/protocol_examples.py`` and checks that it
still records every message type.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from offchain.agents.common import login_signer, login_text
from offchain.agents.script import parse_script
from offchain.eip712 import Domain
from offchain.engine.channel import CreateOrder
from offchain.engine.rules import Rule
from offchain.model import ChannelParams, ChannelState
from offchain.protocol import messages as m
from offchain.signing import recover

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL_MD = ROOT / "docs" / "protocol.md"
ENGINE_MD = ROOT / "docs" / "engine.md"
MESSAGES_PY = ROOT / "offchain" / "protocol" / "messages.py"
SCRIPT = ROOT / "scripts" / "protocol_examples.py"

FENCE = re.compile(r"^(?P<indent>[ ]*)```(?P<lang>[a-z]*)\n(?P<body>.*?)^(?P=indent)```$", re.M | re.S)
EXAMPLE = re.compile(r"^### `(?P<key>[a-z_:]+)`\n(?:.*?\n)??```json\n(?P<body>.*?)^```$", re.M | re.S)
MESSAGE_TYPES = frozenset(m._TYPE_NAMES.values())


def fenced(text: str, lang: str) -> list[str]:
    return [match["body"] for match in FENCE.finditer(text) if match["lang"] == lang]


def examples() -> dict[str, m.Message]:
    """The doc's examples by key (the heading above each JSON block), parsed."""
    found = {match["key"]: m.parse(match["body"]) for match in EXAMPLE.finditer(PROTOCOL_MD.read_text())}
    assert found, "no examples in docs/protocol.md"
    return found


def error_code_constants() -> dict[str, str]:
    """Every module-level ``NAME = "string"`` of messages.py: the error and notice codes."""
    tree = ast.parse(MESSAGES_PY.read_text())
    codes = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id.isupper()
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            codes[node.targets[0].id] = node.value.value
    return codes


def table_keys(text: str, heading: str) -> set[str]:
    """The backquoted first cells of the table under ``## heading``."""
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)`", section, re.M))


# --------------------------------------------------------------------------- protocol.md


def test_every_json_block_is_a_message_or_a_trader_script() -> None:
    blocks = fenced(PROTOCOL_MD.read_text(), "json")
    assert len(blocks) > len(MESSAGE_TYPES)
    for block in blocks:
        data = json.loads(block)
        if isinstance(data, list):
            assert parse_script(data)
        else:
            m.parse(block)  # raises ProtocolError if the example is not a valid message


def test_every_message_type_and_proposal_kind_has_an_example() -> None:
    found = examples()
    assert {m.type_name(message) for message in found.values()} == MESSAGE_TYPES
    kinds = {message.kind for message in found.values() if isinstance(message, m.Propose)}
    assert kinds == set(m.KINDS)
    for key, message in found.items():
        assert key.split(":")[0] == m.type_name(message), key


def test_every_message_type_is_in_the_message_table() -> None:
    assert table_keys(PROTOCOL_MD.read_text(), "Messages") >= MESSAGE_TYPES


def test_every_error_code_constant_is_in_the_error_table() -> None:
    codes = error_code_constants()
    assert "INVALID_MESSAGE" in codes and "BROKER_DEPOSITED" in codes
    documented = table_keys(PROTOCOL_MD.read_text(), "Error codes")
    assert documented == set(codes.values())


def test_the_login_text_is_the_one_signed_in_the_examples() -> None:
    found = examples()
    challenge, hello = found["challenge"], found["hello"]
    assert isinstance(challenge, m.Challenge) and isinstance(hello, m.Hello)
    assert login_signer(challenge.broker, challenge.nonce, hello.signature) == hello.address
    text = login_text(challenge.broker, challenge.nonce).decode()
    login_block = PROTOCOL_MD.read_text().split("## Login\n", 1)[1].split("\n## ", 1)[0]
    assert [b.replace("\n   ", "\n").strip() for b in fenced(login_block, "text")] == [text]


def test_the_examples_signatures_verify() -> None:
    found = examples()
    params: dict[bytes, ChannelParams] = {}
    for message in found.values():
        if isinstance(message, m.Propose | m.Sync) and message.params is not None:
            params[message.channel_id] = message.params
    states: dict[tuple[bytes, int], ChannelState] = {}
    checked = 0
    for key, message in found.items():
        if isinstance(message, m.Propose):
            p = params[message.channel_id]
            proposer = p.broker if key.endswith(":broker") else p.trader
            assert recover(Domain(p.chain_id, p.adjudicator).state_digest(message.state), message.signature) == (
                proposer
            ), key
            states[(message.channel_id, message.state.version)] = message.state
            checked += 1
            if isinstance(message.transition, CreateOrder):
                digest = Domain(p.chain_id, p.adjudicator).order_digest(message.transition.order)
                assert recover(digest, message.transition.signature) == p.trader, key
            for open_order in message.state.open_orders:
                digest = Domain(p.chain_id, p.adjudicator).order_digest(open_order.order)
                assert recover(digest, open_order.signature) == p.trader, key
        elif isinstance(message, m.Sync):
            domain = Domain(message.params.chain_id, message.params.adjudicator)
            digest = domain.state_digest(message.state)
            assert recover(digest, message.trader_signature) == message.params.trader
            assert recover(digest, message.broker_signature) == message.params.broker
            checked += 1
    for key, message in found.items():
        if isinstance(message, m.Ack) and (message.channel_id, message.version) in states:
            p = params[message.channel_id]
            state = states[(message.channel_id, message.version)]
            signer = p.trader if key.endswith(":trader") else p.broker
            assert recover(Domain(p.chain_id, p.adjudicator).state_digest(state), message.signature) == signer
            checked += 1
    welcome, price = found["welcome"], found["batch_price"]
    assert isinstance(welcome, m.Welcome) and isinstance(price, m.BatchPriceMessage)
    domain = Domain(welcome.chain_id, welcome.adjudicator)
    assert recover(domain.batch_price_digest(price.batch_price), price.signature) == welcome.broker
    assert checked >= len(m.KINDS) + 3


# --------------------------------------------------------------------------- engine.md


def test_every_rule_is_in_the_rule_table() -> None:
    documented = table_keys(ENGINE_MD.read_text(), "The order rules")
    assert documented == {rule.value for rule in Rule}


# --------------------------------------------------------------------------- the example script


@pytest.mark.slow
def test_the_example_script_records_every_message_type() -> None:
    run = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )
    assert run.returncode == 0, run.stderr[-2000:]
    recorded: dict[str, Any] = json.loads(run.stdout)
    parsed = {key: m.parse(json.dumps(example)) for key, example in recorded.items()}
    assert {m.type_name(message) for message in parsed.values()} == MESSAGE_TYPES
    kinds = {(message.kind, key.rsplit(":", 1)[1]) for key, message in parsed.items() if isinstance(message, m.Propose)}
    for kind in m.KINDS:
        assert (kind, "broker") in kinds, kind  # the server-initiative flow proposes every kind
        if kind != "trade":
            assert (kind, "trader") in kinds, kind  # the cooperative flow: every kind but trade
    assert set(recorded) == set(examples()), "docs/protocol.md is stale: run the script with --update-doc"
