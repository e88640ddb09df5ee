#!/usr/bin/env python
"""Record one real example of every protocol message as it crosses the wire (docs/protocol.md).

Runs a real BrokerAgent and two real TraderAgents in one process, over real loopback WebSockets,
on the embedded in-process chain:

- trader A uses the server-initiative flow: request_setup, request_deposit, create_order,
  cancel_order, request_finalize; the broker proposes every state and A countersigns;
- trader B uses the cooperative flow: it proposes setup, deposit, lock, cancel and finalize in
  its turn, asks for the turn with request_yield and yields it back; the broker proposes the
  trade after asking B for the turn;
- one batch is settled explicitly (``broker.settle_batch``): A's buy and B's sell cross;
- A reconnects (challenge, hello, welcome, the latest batch price, resume -> sync);
- a few deliberately bad messages draw error replies.

Every frame any agent sends is captured from ``Connection.send`` of the websockets library, so
what is recorded is exactly the encoded JSON that went out. The output is one JSON object
``{key: message}`` with the first message seen for each key, in order of first appearance. A key
is the message type, plus the kind and the proposer for ``propose`` (``propose:lock:trader``),
the sender for ``ack``, ``yield`` and ``request_yield`` (``ack:broker``), and the code for
``error`` and ``notice`` (``error:wrong_flow``).

Usage::

    .venv/bin/python scripts/protocol_examples.py                 # pretty JSON on stdout
    .venv/bin/python scripts/protocol_examples.py --out ex.json   # also write it to a file
    .venv/bin/python scripts/protocol_examples.py --markdown      # the examples as markdown
    .venv/bin/python scripts/protocol_examples.py --update-doc docs/protocol.md --transcript

Keys, addresses, the channel nonces and the order amounts are fixed; timestamps, expirations,
the login challenge and the signatures over them change from run to run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eth_utils.crypto import keccak
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from offchain.agents.broker import BrokerAgent, BrokerConfig
from offchain.agents.common import login_text, send
from offchain.agents.trader import TraderAgent
from offchain.chain.connection import in_process_chain
from offchain.model import Order
from offchain.protocol import messages as m
from offchain.sandbox import USD, Sandbox
from offchain.signing import LocalSigner
from offchain.store import MemoryStore
from offchain.types import ExpirationHours, MarketId, Nonce, Signature, SyntheticAmount, TokenAmount

GOLD = 1
ONE_OZ = 10**6  # the market's resolution: synthetic base units per ounce
SENDER_KEYED = ("ack", "yield", "request_yield")


def fixed_key(label: str) -> bytes:
    return keccak(text=f"trading-channels protocol examples: {label}")


# --------------------------------------------------------------------------- the recorder


class Recorder:
    """Every frame sent by any Connection in this process, keyed as the module doc says."""

    def __init__(self) -> None:
        self.examples: dict[str, dict[str, Any]] = {}
        self.transcript: list[str] = []

    def record(self, from_broker: bool, raw: str | bytes) -> None:
        sender = "broker" if from_broker else "trader"
        try:
            m.parse(raw)
        except m.ProtocolError:
            self.transcript.append(f"{sender}: (refused frame) {raw!r}")
            return  # a deliberately bad frame is not an example
        data = json.loads(raw)
        kind = data.get("type")
        detail = " ".join(
            f"{field}={data[field]}" for field in ("id", "re", "kind", "version", "code", "turn") if field in data
        )
        channel = data.get("channel_id", "")[:10]
        self.transcript.append(f"{sender}: {kind} {channel} {detail}".rstrip())
        if kind == "propose":
            key = f"propose:{data.get('kind')}:{sender}"
        elif kind in SENDER_KEYED:
            key = f"{kind}:{sender}"
        elif kind in ("error", "notice"):
            key = f"{kind}:{data.get('code')}"
        else:
            key = str(kind)
        self.examples.setdefault(key, data)

    def install(self) -> None:
        original = Connection.send
        recorder = self

        async def recording_send(self: Connection, message: Any, *, text: bool | None = None) -> None:
            if isinstance(message, str | bytes):
                recorder.record(isinstance(self, ServerConnection), message)
            await original(self, message, text=text)

        Connection.send = recording_send  # type: ignore[method-assign]

    async def wait_for(self, key: str, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while key not in self.examples:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {key} message within {timeout}s")
            await asyncio.sleep(0.01)
        return self.examples[key]


async def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- the story


async def run(recorder: Recorder) -> dict[str, dict[str, Any]]:
    recorder.install()

    chain = in_process_chain()
    deployer_key = fixed_key("deployer")
    chain.fund(LocalSigner(deployer_key).address, 100 * 10**18)
    sb = Sandbox.create(chain, deployer_key=deployer_key)
    gold = sb.market("XAU / USD", GOLD)
    broker_party = sb.party("broker", tokens=100_000 * USD, key=fixed_key("broker"))
    config = BrokerConfig(
        port=0,
        batch_seconds=3600,  # the batch loop never fires: the script settles the batch itself
        fee_bps=10,
        ack_timeout=10,
        channel_deposit=20_000 * USD,
        markets=(gold,),
        reference_prices={GOLD: 2000 * USD},
    )
    broker = BrokerAgent(broker_party.signer, MemoryStore(), chain, sb.adjudicator.address, sb.token.address, config)
    await broker.start()
    url = f"ws://127.0.0.1:{broker.port}"

    def trader(name: str) -> TraderAgent:
        party = sb.party(name, tokens=10_000 * USD, key=fixed_key(name))
        return TraderAgent(party.signer, MemoryStore(), chain, url, sb.adjudicator.address, timeout=10)

    a, b = trader("trader A"), trader("trader B")
    try:
        await a.start()
        await b.start()

        # Setup and deposits: version 0 co-signed first, then both deposits accounted for.
        await a.open_channel(5_000 * USD, flow="server_initiative", nonce=1)
        await b.open_channel(5_000 * USD, flow="cooperative", nonce=2)

        # Orders of batch 1: A buys 1 oz at up to $2,010, B sells 1 oz at $1,990 or more; each
        # also places an order that does not cross and cancels it.
        await a.place_order(GOLD, True, ONE_OZ, 2010 * USD, 5 * USD)
        spare_a = await a.place_order(GOLD, True, ONE_OZ // 10, 150 * USD, 1 * USD)
        await a.cancel_order(spare_a)
        await b.place_order(GOLD, False, ONE_OZ, 1990 * USD, 5 * USD)
        spare_b = await b.place_order(GOLD, False, ONE_OZ // 10, 250 * USD, 1 * USD)
        await b.cancel_order(spare_b)

        # B takes the turn and sits on it; the batch makes the broker ask for it back.
        assert b.party is not None and b.ws is not None
        await send(b.ws, m.RequestYield(b.channel_id, id="b-turn"))
        await until(lambda: b.party is not None and b.party.my_turn(), "B's turn")

        # Batch 1 of gold: signed price, sent to every trader, one Trade state per channel.
        price = await broker.settle_batch(GOLD)
        assert price.price == 2000 * USD, price
        await until(lambda: a.state.outcomes[0].position == ONE_OZ, "A's trade")
        await until(lambda: b.state.outcomes[0].position == -ONE_OZ, "B's trade")

        # Refused messages: each gets an error reply naming the refused message's id.
        assert a.ws is not None and b.ws is not None
        order = Order(
            channel_id=a.channel_id,
            trader=a.address,
            collateral=sb.token.address,
            market=MarketId(GOLD),
            is_buy=True,
            amount_synthetic=SyntheticAmount(ONE_OZ),
            amount_collateral=TokenAmount(1900 * USD),
            max_fee=TokenAmount(1 * USD),
            nonce=Nonce(99),
            expiration=ExpirationHours(int(time.time()) // 3600 + 24),
        )
        wrong = b.signer.sign(b.domain, order)  # signed by someone else than the channel's trader
        await send(a.ws, m.CreateOrderRequest(a.channel_id, order, Signature(wrong), id="a-bad-order"))
        await recorder.wait_for("error:rule_violation")
        await send(b.ws, m.CancelOrderRequest(b.channel_id, Nonce(spare_b), id="b-wrong-flow"))
        await recorder.wait_for("error:wrong_flow")
        await a.ws.send(json.dumps({"v": 2, "type": "resume", "id": "a-v2", "channel_id": "0x" + a.channel_id.hex()}))
        await recorder.wait_for("error:unsupported_version")

        # A reconnects: challenge, hello, welcome, the latest batch price, resume -> sync.
        await a.ws.close()
        await recorder.wait_for("sync")
        await until(lambda: a.ws is not None and a.welcome is not None, "A's reconnection")

        # Finalize: every position closed at the latest batch price, then closed on-chain.
        await a.finalize()
        await b.finalize()
        await a.close_on_chain()
        await b.close_on_chain()
    finally:
        await a.stop()
        await b.stop()
        await broker.stop()
    return recorder.examples


# --------------------------------------------------------------------------- output


CAPTIONS = {
    "challenge": "broker -> trader, first frame of every connection",
    "hello": "trader -> broker, the answer to the challenge",
    "welcome": "broker -> trader, after a valid hello",
    "request_setup": "trader -> broker, server initiative",
    "propose:setup:broker": "broker -> trader, server initiative: version 0 with the parameters",
    "ack:trader": "trader -> broker: the countersignature of a broker proposal",
    "notice:broker_deposited": "broker -> trader, once the broker's deposit is on-chain",
    "request_deposit": "trader -> broker, server initiative",
    "propose:deposit:broker": "broker -> trader, server initiative: the deposits enter the balances",
    "propose:setup:trader": "trader -> broker, cooperative: version 0 with the parameters",
    "ack:broker": "broker -> trader: the countersignature of a trader proposal",
    "propose:deposit:trader": "trader -> broker, cooperative",
    "yield:trader": "trader -> broker, cooperative: the turn goes back to the broker",
    "create_order": "trader -> broker, server initiative: a signed order",
    "propose:lock:broker": "broker -> trader, server initiative: the order's collateral is locked",
    "cancel_order": "trader -> broker, server initiative",
    "propose:cancel:broker": "broker -> trader, server initiative: the order and its lock are gone",
    "request_yield:trader": "trader -> broker, cooperative: the trader asks for the turn",
    "yield:broker": "broker -> trader, cooperative: the turn goes to the trader",
    "propose:lock:trader": "trader -> broker, cooperative",
    "propose:cancel:trader": "trader -> broker, cooperative",
    "request_yield:broker": "broker -> trader, cooperative: the broker needs the turn back (here: to settle a batch)",
    "batch_price": "broker -> every connected trader: the signed clearing price of one batch",
    "propose:trade:broker": "broker -> trader, both flows: the fills of one batch",
    "error:rule_violation": "broker -> trader: an order signed by someone else",
    "error:wrong_flow": "broker -> trader: a request in a cooperative channel",
    "error:unsupported_version": 'broker -> trader: a frame with "v": 2 (unparsable, so `re` is empty)',
    "resume": "trader -> broker, after reconnecting",
    "sync": "broker -> trader, the answer to resume",
    "request_finalize": "trader -> broker, server initiative",
    "propose:finalize:broker": "broker -> trader, server initiative: the final state",
    "propose:finalize:trader": "trader -> broker, cooperative: the final state",
}

BEGIN = "<!-- examples:begin (generated by scripts/protocol_examples.py --update-doc) -->"
END = "<!-- examples:end -->"
LOGIN_BEGIN = "<!-- login:begin -->"
LOGIN_END = "<!-- login:end -->"


def markdown(examples: dict[str, dict[str, Any]]) -> str:
    """The examples, one fenced JSON block each, under a heading naming the key."""
    out = []
    for key, example in examples.items():
        caption = CAPTIONS.get(key, "")
        out.append(f"### `{key}`\n\n{caption}\n\n```json\n{json.dumps(example, indent=2)}\n```\n")
    return "\n".join(out)


def _between(text: str, begin: str, end: str, body: str) -> str:
    start, stop = text.index(begin) + len(begin), text.index(end)
    return text[:start] + body + text[stop:]


def update_doc(path: Path, examples: dict[str, dict[str, Any]]) -> None:
    """Rewrite the generated parts of ``path``: the login text of the challenge example (between
    the LOGIN markers) and the examples (between BEGIN and END)."""
    challenge = m.parse(json.dumps(examples["challenge"]))
    assert isinstance(challenge, m.Challenge)
    lines = login_text(challenge.broker, challenge.nonce).decode().split("\n")
    login = "\n   ```text\n" + "".join(f"   {line}\n" for line in lines) + "   ```\n   "
    text = _between(path.read_text(), LOGIN_BEGIN, LOGIN_END, login)
    text = _between(text, BEGIN, END, "\n\n" + markdown(examples) + "\n")
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the JSON to this file")
    parser.add_argument("--markdown", action="store_true", help="print markdown blocks instead of one JSON object")
    parser.add_argument("--update-doc", metavar="PATH", help="rewrite the examples section of PATH (docs/protocol.md)")
    parser.add_argument("--transcript", action="store_true", help="also print every frame, in order, on stderr")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the agents")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    recorder = Recorder()
    examples = asyncio.run(run(recorder))
    if args.transcript:
        print("\n".join(recorder.transcript), file=sys.stderr)
    text = json.dumps(examples, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.update_doc:
        update_doc(Path(args.update_doc), examples)
    print(markdown(examples) if args.markdown else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
