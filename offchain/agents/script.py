"""Trader scripts: a JSON list of steps a trader agent runs in order (``tchan trader --script``).

Each step is an object with exactly one key; amounts are decimal strings::

    [
      {"open": {"deposit": "5000000000", "flow": "cooperative"}},
      {"order": {"market": "1", "side": "buy", "amount_synthetic": "1000000",
                 "amount_collateral": "2010000000", "max_fee": "5000000"}},
      {"wait_filled": {"order": "1"}},
      {"wait_batches": {"count": "2"}},
      {"cancel": {"order": "2"}},
      {"cancel_all": {}},
      {"sleep": {"seconds": "0.5"}},
      {"finalize": {}},
      {"close": {}}
    ]

``wait_concluded`` waits (up to ``timeout`` seconds, default 60) until the channel has been paid
out on-chain, e.g. after the agent proved that the broker cheated on a batch price.

``order`` in ``wait_filled``/``cancel`` is the 1-based index of an order this script placed.
The whole script is validated before the first step runs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offchain.agents.trader import TraderAgent
from offchain.errors import ValidationError
from offchain.model import json_object, parse_decimal
from offchain.protocol.party import ENDED

STEP_FIELDS: dict[str, dict[str, bool]] = {
    "open": {"deposit": True, "flow": False, "challenge_duration": False, "nonce": False},
    "order": {
        "market": True,
        "side": True,
        "amount_synthetic": True,
        "amount_collateral": True,
        "max_fee": True,
        "expiration": False,
    },
    "wait_filled": {"order": True, "timeout": False},
    "wait_batches": {"count": True, "market": False},
    "cancel": {"order": True},
    "cancel_all": {},
    "sleep": {"seconds": True},
    "finalize": {},
    "close": {},
    "wait_concluded": {"timeout": False},
}


@dataclass(frozen=True, slots=True)
class Step:
    kind: str
    args: dict[str, Any]


def load_script(path: str | Path) -> list[Step]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValidationError(f"cannot read script {path}: {exc}") from exc
    return parse_script(data)


def parse_script(data: object) -> list[Step]:
    if not isinstance(data, list):
        raise ValidationError("a script is a JSON array of steps")
    steps: list[Step] = []
    orders = 0
    for i, raw in enumerate(data):
        obj = json_object(raw, f"step {i}")
        if len(obj) != 1:
            raise ValidationError(f"step {i} must have exactly one key, one of {sorted(STEP_FIELDS)}")
        kind, body = next(iter(obj.items()))
        fields = STEP_FIELDS.get(kind)
        if fields is None:
            raise ValidationError(f"step {i}: unknown step {kind!r}")
        args = json_object(body, f"step {i} ({kind})")
        unknown = set(args) - set(fields)
        missing = {f for f, required in fields.items() if required} - set(args)
        if unknown or missing:
            raise ValidationError(f"step {i} ({kind}): unknown {sorted(unknown)}, missing {sorted(missing)}")
        parsed: dict[str, Any] = {}
        for name, value in args.items():
            if name == "flow":
                if value not in ("server_initiative", "cooperative"):
                    raise ValidationError(f"step {i}: flow must be server_initiative or cooperative")
                parsed[name] = value
            elif name == "side":
                if value not in ("buy", "sell"):
                    raise ValidationError(f"step {i}: side must be buy or sell")
                parsed[name] = value
            elif name in ("seconds", "timeout"):
                try:
                    parsed[name] = float(value)
                except (TypeError, ValueError) as exc:
                    raise ValidationError(f"step {i}: {name} must be a number of seconds") from exc
                if not 0 <= parsed[name] <= 3600:
                    raise ValidationError(f"step {i}: {name} must be within [0, 3600]")
            else:
                parsed[name] = parse_decimal(value, f"step {i}.{name}")
                if parsed[name] < 0:
                    raise ValidationError(f"step {i}: {name} must not be negative")
        if kind == "order":
            orders += 1
        if kind in ("wait_filled", "cancel") and not 1 <= parsed["order"] <= orders:
            raise ValidationError(f"step {i}: order {parsed['order']} is not one placed before this step")
        steps.append(Step(kind, parsed))
    return steps


def _filled(agent: TraderAgent, nonce: int) -> Callable[[], bool]:
    def done() -> bool:
        return all(o.order.nonce != nonce for o in agent.state.open_orders)

    return done


async def run_script(agent: TraderAgent, steps: list[Step], progress: Any = None) -> dict[str, Any]:
    """Run ``steps`` on a started agent; returns the summary ``tchan trader`` prints."""
    placed: list[int] = []
    receipt: dict[str, Any] | None = None
    for step in steps:
        a = step.args
        if progress is not None:
            progress(f"{step.kind} {json.dumps({k: str(v) for k, v in a.items()})}")
        if step.kind == "open":
            await agent.open_channel(
                a["deposit"],
                flow=a.get("flow", "server_initiative"),
                challenge_duration=a.get("challenge_duration", 3600),
                nonce=a.get("nonce"),
            )
        elif step.kind == "order":
            nonce = await agent.place_order(
                a["market"],
                a["side"] == "buy",
                a["amount_synthetic"],
                a["amount_collateral"],
                a["max_fee"],
                a.get("expiration"),
            )
            placed.append(nonce)
        elif step.kind == "wait_filled":
            await agent.wait_until(_filled(agent, placed[a["order"] - 1]), "an order to fill", a.get("timeout", 60.0))
        elif step.kind == "wait_batches":
            await agent.wait_batches(a["count"], a.get("market"))
        elif step.kind == "cancel":
            await agent.cancel_order(placed[a["order"] - 1])
        elif step.kind == "cancel_all":
            for open_order in list(agent.state.open_orders):
                await agent.cancel_order(open_order.order.nonce)
        elif step.kind == "sleep":
            await asyncio.sleep(a["seconds"])
        elif step.kind == "finalize":
            await agent.finalize()
        elif step.kind == "close":
            receipt = await agent.close_on_chain()
        elif step.kind == "wait_concluded":
            await agent.wait_until(
                lambda: agent.party is not None and agent.party.status in ENDED,
                "the channel to be paid out on-chain",
                a.get("timeout", 60.0),
            )
    summary: dict[str, Any] = {"trader": agent.address, "orders": [str(n) for n in placed]}
    if agent.party is not None:
        state = agent.state
        summary.update(
            channel_id="0x" + agent.channel_id.hex(),
            flow=agent.party.flow,
            state=state.to_json(),
            final=state.is_final,
            status=agent.party.status,
        )
    if receipt is not None:
        summary["close_tx"] = "0x" + bytes(receipt["transactionHash"]).hex()
        summary["close_gas"] = str(receipt["gasUsed"])
    return summary
