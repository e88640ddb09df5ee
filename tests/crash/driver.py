"""The trader process of the crash harness: ``python -m tests.crash.driver PLAN.json TCHAN-TRADER-ARGS``.

It runs the real :class:`offchain.agents.trader.TraderAgent` through ``tchan trader``'s own
plumbing (:func:`offchain.cli.commands.running_trader`: key, deployment, store, start and stop),
but instead of a script of steps it follows a plan that it can resume after a restart on the same
store, from what the store says:

1. open the channel and have the deposit accounted for (nothing to do if the store has it);
2. place the order, unless the co-signed state already holds an order or a fill;
3. wait (up to ``fill_wait`` seconds) until the order has filled;
4. cancel what is still open, finalize, and close on-chain (each skipped when already done).

A step that times out (the broker was down) or is refused is retried until ``deadline``; the
process prints one JSON summary line and exits 0 when the channel is closed or concluded, 1
otherwise (the harness then finishes the channel by a dispute by hand).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from offchain.agents.trader import TraderAgent
from offchain.chain.client import Stage
from offchain.cli import build_parser
from offchain.cli.commands import running_trader
from offchain.cli.common import Output
from offchain.errors import TradingChannelsError
from offchain.protocol.party import ENDED


def traded(agent: TraderAgent, market_index: int = 0) -> bool:
    """Whether the co-signed state reflects a fill in the market (a position or a batch)."""
    if agent.party is None:
        return False
    outcome = agent.state.outcomes[market_index]
    return bool(outcome.position) or bool(outcome.last_batch)


async def retry(what: str, step: Callable[[], Awaitable[Any]], deadline: float, log: list[str]) -> Any:
    started = time.monotonic()
    while True:
        try:
            result = await step()
            log.append(f"{what}: {time.monotonic() - started:.2f} s")
            return result
        except (TradingChannelsError, AssertionError) as exc:
            log.append(f"{what}: {type(exc).__name__}: {exc}")
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def run_plan(agent: TraderAgent, plan: dict[str, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + float(plan["deadline"])
    log: list[str] = []
    order = plan["order"]
    close_tx: str | None = None

    async def open_channel() -> None:
        await agent.open_channel(int(plan["deposit"]), flow=plan["flow"], challenge_duration=3600)

    await retry("open", open_channel, deadline, log)
    party = agent.party
    assert party is not None

    async def place() -> None:
        if traded(agent) or agent.state.open_orders or party.pending is not None:
            return
        await agent.place_order(
            int(order["market"]),
            order["side"] == "buy",
            int(order["amount_synthetic"]),
            int(order["amount_collateral"]),
            int(order["max_fee"]),
        )

    if party.status not in ENDED and not agent.state.is_final:
        await retry("order", place, deadline, log)
        started = time.monotonic()
        try:
            await agent.wait_until(lambda: traded(agent), "the fill", float(plan["fill_wait"]))
        except TradingChannelsError as exc:
            log.append(f"fill: {exc}")
        log.append(f"fill: {time.monotonic() - started:.2f} s")

    async def cancel_all() -> None:
        for open_order in list(agent.state.open_orders):
            await agent.cancel_order(open_order.order.nonce)

    async def finalize() -> None:
        if not agent.state.is_final:
            await agent.finalize()

    async def close() -> None:
        nonlocal close_tx
        if party.status in ENDED:
            return
        on_chain = agent.adjudicator.status(party.channel_id)
        if on_chain.stage == Stage.CONCLUDED:  # closed before a crash, not yet marked in the store
            party.set_status("closed")
            return
        receipt = await agent.close_on_chain()
        close_tx = "0x" + bytes(receipt["transactionHash"]).hex()

    if party.status not in ENDED:
        await retry("cancel_all", cancel_all, deadline, log)
        await retry("finalize", finalize, deadline, log)
        await retry("close", close, deadline, log)
    return {
        "trader": agent.address,
        "channel_id": "0x" + party.channel_id.hex(),
        "version": agent.state.version,
        "final": agent.state.is_final,
        "status": party.status,
        "traded": traded(agent),
        "close_tx": close_tx,
        "log": log[-20:],
    }


def main(argv: list[str]) -> int:
    plan = json.loads(Path(argv[0]).read_text())
    args = build_parser().parse_args(["trader", *argv[1:]])
    out = Output.of(args)

    async def run() -> dict[str, Any]:
        async with running_trader(args, out) as agent:
            return await run_plan(agent, plan)

    deadline = time.monotonic() + float(plan["deadline"])
    while True:  # a broker that is down (restarting) when we start: connect again
        try:
            summary = asyncio.run(run())
            break
        except TradingChannelsError as exc:
            if time.monotonic() > deadline:
                print(json.dumps({"error": f"{exc.code}: {exc.reason}"}), flush=True)
                return 1
            time.sleep(1)
    print(json.dumps(summary), flush=True)
    return 0 if summary["status"] in ENDED else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
