"""The ``tchan`` subcommands that build and run the system: compile, deploy, broker, trader,
watchtower, demo, gas."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from offchain.agents import DEFAULT_DISPUTE_AFTER
from offchain.cli.common import (
    ANVIL_CHAIN_ID,
    MAX_DEV_ACCOUNTS,
    Output,
    add_key_args,
    add_network_args,
    connect,
    load_key,
    open_deployment,
)
from offchain.errors import ChainError, ValidationError

if TYPE_CHECKING:
    from offchain.agents.broker import BrokerAgent
    from offchain.agents.trader import TraderAgent
    from offchain.chain.connection import Chain, Transactor
    from offchain.types import Address

DEFAULT_BROKER_PORT = 8765
DEFAULT_BROKER_URL = f"ws://127.0.0.1:{DEFAULT_BROKER_PORT}"
DEFAULT_WATCHTOWER_PORT = 8766
QUIET_LOGGERS = ("websockets", "web3", "urllib3", "eth", "asyncio")
T = TypeVar("T")


def quiet_logging(who: str) -> None:
    """INFO lines of the agent, prefixed with ``who``, on stdout; the libraries' only from WARNING."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {who} %(message)s", stream=sys.stdout)
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run an agent's process on the fastest event loop available (uvloop where installed)."""
    from offchain.agents.common import run_loop as run

    return run(main)


async def until_stopped() -> None:
    """Return on Ctrl-C (SIGINT) or SIGTERM, so that a server stops cleanly on either: the caller's
    ``finally`` stops the agent and closes its store."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise ValidationError(f"--port must be within [0, 65535], got {port}")


# --------------------------------------------------------------------------- compile, deploy


def compile_command(args: argparse.Namespace) -> int:
    from offchain import compiler

    out = Output.of(args)
    if args.check:
        stale = compiler.stale_sources()
        out.result(
            {"up_to_date": not stale, "stale": stale},
            "artifacts are stale; run `tchan compile`:\n  " + "\n  ".join(stale)
            if stale
            else "artifacts match the sources",
        )
        return 1 if stale else 0
    with out.step("compiling contracts/"):
        result = compiler.compile_contracts()
    written = compiler.write_artifacts(result)
    out.result(
        {"compiler": result.compiler.name, "version": result.compiler.version, "written": [str(p) for p in written]},
        f"compiled with {result.compiler.name} {result.compiler.version}; wrote {len(written)} files to "
        f"{compiler.ARTIFACTS_DIR}",
    )
    return 0


def deploy_command(args: argparse.Namespace) -> int:
    from offchain.chain.connection import Transactor
    from offchain.chain.deploy import FeedSpec, deploy_stack, deployment_path, load_deployment, write_deployment
    from offchain.errors import DeploymentError

    out = Output.of(args)
    if args.mint < 0:
        raise ValidationError(f"--mint must not be negative, got {args.mint}")
    network, chain = connect(args)
    path = deployment_path(network.deployments, network.name)
    if path.exists():  # refuse before spending gas, not after
        try:
            existing = load_deployment(network.deployments, network.name)
        except DeploymentError:
            existing = None
        if existing is not None and existing.chain_id != chain.chain_id:
            raise DeploymentError(
                f"{path} records chain id {existing.chain_id}, the node is chain id {chain.chain_id}: "
                "choose another --network name or remove the file"
            )
    key = load_key(args, chain.chain_id)
    sender = Transactor.from_key(chain, key)
    feeds = tuple(FeedSpec(description=d) for d in args.feed)
    count = 1 + (0 if args.no_token else 1) + len(feeds)
    with out.step(f"deploying {count} contracts to chain {chain.chain_id} at {network.rpc} from {sender.address}"):
        deployment = deploy_stack(chain, sender, network.name, feeds, with_token=not args.no_token)
    written = write_deployment(network.deployments, deployment)
    minted = 0
    if args.mint:
        with out.step(f"minting {args.mint} test-token base units to each of the node's dev accounts"):
            minted = mint_to_dev_accounts(chain, sender, deployment.token, args.mint)
    out.result(
        {"network": network.name, "chain_id": chain.chain_id, "file": str(written), **deployment.to_json()},
        lambda: "\n".join(
            [f"  {name:<32} {c.address}  (block {c.block})" for name, c in sorted(deployment.contracts.items())]
            + ([f"minted {args.mint} to each of {minted} dev accounts"] if minted else [])
            + [f"wrote {written}"]
        ),
    )
    return 0


def mint_to_dev_accounts(chain: Chain, sender: Transactor, token: Address, amount: int) -> int:
    """Local anvil chains: give ``amount`` test tokens to each dev account the node funds (its
    ``eth_accounts``: 10 by default, as many as ``tchan localnet --accounts`` asked for, at most
    MAX_DEV_ACCOUNTS); returns how many."""
    from offchain.chain.client import TokenClient
    from offchain.model import check_address

    if chain.chain_id != ANVIL_CHAIN_ID:
        raise ValidationError(f"--mint is for local anvil chains (chain id {ANVIL_CHAIN_ID})")
    accounts = chain.w3.eth.accounts
    if not isinstance(accounts, list | tuple):
        raise ChainError(f"the node's eth_accounts is not a list: {str(accounts)[:80]}")
    funded = [check_address("eth_accounts entry", a) for a in accounts[:MAX_DEV_ACCOUNTS]]
    client = TokenClient(chain, token)
    for address in funded:
        client.mint(sender, address, amount)
    return len(funded)


# --------------------------------------------------------------------------- broker


def parse_market(spec: str, index: int) -> tuple[int, str, int]:
    """``ID,FEED DESCRIPTION,REFERENCE_PRICE``, e.g. ``1,XAU / USD,2000000000``."""
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) != 3 or not parts[0].isdigit() or not parts[2].isdigit():
        raise ValidationError(f"--market #{index + 1} must be ID,FEED DESCRIPTION,REFERENCE_PRICE, got {spec!r}")
    return int(parts[0]), parts[1], int(parts[2])


def broker_command(args: argparse.Namespace, broker_class: type[BrokerAgent] | None = None) -> int:
    from offchain.agents.broker import BrokerAgent, BrokerConfig
    from offchain.agents.common import freeze_loaded_heap
    from offchain.model import Market
    from offchain.sandbox import DEFAULT_MAX_PRICE_AGE, DEFAULT_RISK_FACTOR
    from offchain.signing import LocalSigner
    from offchain.store import open_store
    from offchain.types import MarketId

    out = Output.of(args)
    if not 0 <= args.fee_bps <= 10_000:
        raise ValidationError("--fee-bps must be within [0, 10000]")
    if args.batch_seconds <= 0 or args.ack_timeout <= 0:
        raise ValidationError("--batch-seconds and --ack-timeout must be positive")
    check_port(args.port)
    dispute = dispute_after(args)
    if args.channel_deposit < 0 or args.resolution < 1:
        raise ValidationError("--channel-deposit must not be negative and --resolution must be at least 1")
    if not args.market:
        raise ValidationError("give at least one --market ID,FEED DESCRIPTION,REFERENCE_PRICE")
    specs = [parse_market(spec, i) for i, spec in enumerate(args.market)]
    quiet_logging("broker")
    _, chain, deployment = open_deployment(args)
    feeds = deployment.feeds()
    markets = []
    references = {}
    for market_id, description, reference in specs:
        if description not in feeds:
            raise ValidationError(f"no feed {description!r} in the deployment; it has {sorted(feeds)}")
        markets.append(
            Market(MarketId(market_id), feeds[description], args.resolution, DEFAULT_RISK_FACTOR, DEFAULT_MAX_PRICE_AGE)
        )
        references[market_id] = reference
    key = load_key(args, chain.chain_id)
    config = BrokerConfig(
        host=args.host,
        port=args.port,
        batch_seconds=args.batch_seconds,
        fee_bps=args.fee_bps,
        ack_timeout=args.ack_timeout,
        dispute_after=dispute,
        dispute_poll_seconds=args.chain_poll_seconds,
        channel_deposit=args.channel_deposit,
        markets=tuple(markets),
        reference_prices=references,
    )

    async def serve() -> None:
        store = open_store(args.store)
        agent = broker_class or BrokerAgent
        broker = agent(LocalSigner(key), store, chain, deployment.adjudicator, deployment.token, config)
        freeze_loaded_heap()  # its channels, loaded from the store, live as long as the process
        try:
            await broker.start()
            url = f"ws://{args.host}:{broker.port}"
            out.result({"ready": True, "broker": broker.address, "url": url}, f"broker {broker.address} ready on {url}")
            await until_stopped()
        finally:
            await broker.stop()
            store.close()

    run_loop(serve())
    out.progress("broker stopped")
    return 0


def add_dispute_after_arg(p: argparse.ArgumentParser, counterparty: str) -> None:
    p.add_argument(
        "--dispute-after",
        type=float,
        default=DEFAULT_DISPUTE_AFTER,
        metavar="SECONDS",
        help=f"challenge a channel on-chain once the {counterparty} has stayed unresponsive this long, "
        f"after reconnecting did not help; 0 never (default: {DEFAULT_DISPUTE_AFTER:g})",
    )
    p.add_argument(
        "--chain-poll-seconds",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how often to read the chain for challenges of our channels and drive our disputes (default: 1)",
    )


def dispute_after(args: argparse.Namespace) -> float | None:
    if args.dispute_after < 0:
        raise ValidationError("--dispute-after must not be negative")
    if not args.chain_poll_seconds > 0:
        raise ValidationError("--chain-poll-seconds must be positive")
    return args.dispute_after or None


# --------------------------------------------------------------------------- trader


@asynccontextmanager
async def running_trader(args: argparse.Namespace, out: Output) -> AsyncIterator[TraderAgent]:
    """A started trader agent (and its watchtower link) for ``args``; stopped and its store closed
    on the way out, after everything was handed to the watchtower."""
    from offchain.agents.trader import TraderAgent
    from offchain.agents.watchtower import WatchtowerClient
    from offchain.signing import LocalSigner
    from offchain.store import open_store

    if args.watchtower is not None and not args.watchtower.startswith(("ws://", "wss://")):
        raise ValidationError(f"--watchtower must be a ws:// or wss:// URL, got {args.watchtower!r}")
    if not args.broker_url.startswith(("ws://", "wss://")):
        raise ValidationError(f"--broker-url must be a ws:// or wss:// URL, got {args.broker_url!r}")
    if args.timeout <= 0:
        raise ValidationError("--timeout must be positive")
    dispute = dispute_after(args)
    _, chain, deployment = open_deployment(args)
    key = load_key(args, chain.chain_id)
    store = open_store(args.store)
    watchtower = WatchtowerClient(args.watchtower) if args.watchtower else None
    agent = TraderAgent(
        LocalSigner(key),
        store,
        chain,
        args.broker_url,
        deployment.adjudicator,
        timeout=args.timeout,
        watchtower=watchtower,
        dispute_after=dispute,
        dispute_poll_seconds=args.chain_poll_seconds,
    )
    try:
        if watchtower is not None:
            await watchtower.start()
        out.progress(f"trader {agent.address}: connecting to {args.broker_url} ...")
        await agent.start()
        yield agent
        if watchtower is not None:  # everything handed over before this trader goes offline
            await watchtower.flush(args.timeout)
            out.progress(f"trader: watchtower {args.watchtower} holds the newest state")
    finally:
        await agent.stop()
        if watchtower is not None:
            await watchtower.stop()
        store.close()


def trader_command(args: argparse.Namespace) -> int:
    from offchain.agents.script import load_script, run_script

    out = Output.of(args)
    if args.script is None:
        from offchain.cli.console import run_console

        return run_console(args, out)
    steps = load_script(args.script)

    async def run() -> dict[str, Any]:
        async with running_trader(args, out) as agent:
            return await run_script(agent, steps, lambda line: out.progress(f"trader: {line}"))

    summary = run_loop(run())
    out.result(summary, lambda: _summary_text(summary))
    return 0


def _summary_text(summary: dict[str, Any]) -> str:
    import json

    return json.dumps(summary, indent=2)


# --------------------------------------------------------------------------- watchtower


def watchtower_command(args: argparse.Namespace) -> int:
    from offchain.agents.watchtower import Watchtower, WatchtowerConfig
    from offchain.chain.client import ADJUDICATOR
    from offchain.model import check_address
    from offchain.signing import LocalSigner
    from offchain.store import open_store

    out = Output.of(args)
    check_port(args.port)
    if not 0 < args.poll_seconds <= 3600:
        raise ValidationError("--poll-seconds must be positive and at most 3600")
    if args.max_channels < 1 or args.confirmations < 0:
        raise ValidationError("--max-channels must be at least 1 and --confirmations not negative")
    traders = frozenset(check_address("--trader", t) for t in args.trader)
    quiet_logging("watchtower")
    _, chain, deployment = open_deployment(args)
    key = load_key(args, chain.chain_id)
    adjudicator = deployment.contracts.get(ADJUDICATOR)
    config = WatchtowerConfig(
        host=args.host,
        port=args.port,
        poll_seconds=args.poll_seconds,
        max_channels=args.max_channels,
        confirmations=args.confirmations,
        first_block=adjudicator.block if adjudicator is not None else 0,
        traders=traders,
    )

    async def serve() -> None:
        store = open_store(args.store)
        try:
            watchtower = Watchtower(LocalSigner(key), store, chain, deployment.adjudicator, config)
            await watchtower.start()
            url = f"ws://{args.host}:{watchtower.port}"
            out.result(
                {"ready": True, "watchtower": watchtower.address, "url": url},
                f"watchtower {watchtower.address} ready on {url}",
            )
            try:
                await until_stopped()
            finally:
                await watchtower.stop()
        finally:
            store.close()

    run_loop(serve())
    out.progress("watchtower stopped")
    return 0


# --------------------------------------------------------------------------- demo, gas


def demo_command(args: argparse.Namespace) -> int:
    from offchain import demo

    if args.rpc is not None and not args.rpc.startswith(("http://", "https://")):
        raise ValidationError(f"--rpc must be an http:// or https:// URL, got {args.rpc!r}")
    result = demo.main(args.rpc, sys.stdout, plot_path=args.plot, json_out=args.json)
    return 0 if result.ok else 1


def gas_command(args: argparse.Namespace) -> int:
    import json

    from offchain import gas

    out = Output.of(args)
    with out.step("measuring gas on the in-process chain"):
        figures = gas.measure()
    path = Path(args.output)
    if args.check:
        committed = json.loads(path.read_text())["operations"]
        problems = gas.drift(committed, figures)
        out.result(
            {"up_to_date": not problems, "drift": problems, "operations": figures},
            lambda: (
                gas.format_table(figures)
                + (
                    "\ngas drifted by more than 1%:\n  " + "\n  ".join(problems)
                    if problems
                    else f"\n{path} is up to date"
                )
            ),
        )
        return 1 if problems else 0
    gas.write_table(path, figures)
    readme = Path(args.readme)
    gas.write_readme_tables(readme, figures)
    out.result(
        {"operations": figures, "written": [str(path), str(readme)]},
        lambda: gas.format_table(figures) + f"\nwrote {path} and the gas tables of {readme}",
    )
    return 0


# --------------------------------------------------------------------------- the parsers


def add_listen_args(p: argparse.ArgumentParser, default_port: int) -> None:
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    p.add_argument(
        "--port",
        type=int,
        default=default_port,
        help=f"port to listen on (default: {default_port}; 0 picks a free one)",
    )


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("compile", parents=parents, help="compile contracts/ into offchain/artifacts/")
    p.add_argument("--check", action="store_true", help="only check that the artifacts match the sources")
    p.set_defaults(func=compile_command)

    p = sub.add_parser(
        "deploy", parents=parents, help="deploy the adjudicator (and, on local chains, a test token and feeds)"
    )
    add_network_args(p)
    add_key_args(p, "the deploying account (it owns the feeds: the oracle's key)")
    p.add_argument(
        "--feed",
        action="append",
        default=[],
        metavar="DESCRIPTION",
        help="also deploy a price feed, e.g. 'XAU / USD' (repeatable)",
    )
    p.add_argument("--no-token", action="store_true", help="do not deploy the test token")
    p.add_argument(
        "--mint", type=int, default=0, metavar="AMOUNT", help="local anvil only: mint AMOUNT tokens to each dev account"
    )
    p.set_defaults(func=deploy_command)

    p = sub.add_parser(
        "broker", parents=parents, help="run the broker: WebSocket server, batch auctions, its side of every channel"
    )
    add_network_args(p)
    add_key_args(p, "the broker")
    p.add_argument("--store", default="broker.db", help="SQLite store (default: broker.db; ':memory:' for none)")
    add_listen_args(p, DEFAULT_BROKER_PORT)
    p.add_argument(
        "--market",
        action="append",
        default=[],
        metavar="ID,FEED,PRICE",
        help="a market: id, feed description in the deployment, reference price before the first batch "
        "(collateral base units per whole unit), e.g. '1,XAU / USD,2000000000' (repeatable)",
    )
    p.add_argument("--resolution", type=int, default=10**6, help="synthetic base units per unit (default: 10^6)")
    p.add_argument("--batch-seconds", type=float, default=2.0, help="length of a batch (default: 2)")
    p.add_argument("--fee-bps", type=int, default=10, help="fee in basis points of each fill (default: 10)")
    p.add_argument("--ack-timeout", type=float, default=10.0, help="seconds before a silent trader is reported")
    add_dispute_after_arg(p, "trader")
    p.add_argument(
        "--channel-deposit", type=int, default=0, help="token base units the broker deposits into each channel"
    )
    p.set_defaults(func=broker_command)

    p = sub.add_parser(
        "trader",
        parents=parents,
        help="run a trader: open a channel and trade, at a prompt or from a script",
        description="Without --script, a prompt: type `help` for its commands (open, buy, sell, cancel, "
        "balances, positions, orders, ...). Its standard input may also be a pipe.",
    )
    add_network_args(p)
    add_key_args(p, "the trader")
    p.add_argument(
        "--broker-url",
        default=DEFAULT_BROKER_URL,
        metavar="WS_URL",
        help=f"the broker's WebSocket URL (default: {DEFAULT_BROKER_URL}, where `tchan broker` listens by default)",
    )
    p.add_argument("--store", default="trader.db", help="SQLite store (default: trader.db)")
    p.add_argument("--script", help="JSON script of steps (see docs/protocol.md); without it, a prompt")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the broker (default: 30)")
    add_dispute_after_arg(p, "broker")
    p.add_argument(
        "--watchtower",
        metavar="WS_URL",
        help="hand every co-signed state and batch price to this watchtower, e.g. ws://127.0.0.1:8766",
    )
    p.set_defaults(func=trader_command)

    p = sub.add_parser(
        "watchtower", parents=parents, help="run a watchtower: guard channels, answer disputes, conclude and withdraw"
    )
    add_network_args(p)
    add_key_args(p, "the watchtower (it pays the gas of what it sends)")
    p.add_argument("--store", default="watchtower.db", help="SQLite store (default: watchtower.db)")
    add_listen_args(p, DEFAULT_WATCHTOWER_PORT)
    p.add_argument("--poll-seconds", type=float, default=1.0, help="seconds between two looks at the chain")
    p.add_argument("--max-channels", type=int, default=1000, help="most channels guarded at once (default: 1000)")
    p.add_argument("--confirmations", type=int, default=0, help="blocks a log must be deep before it is read")
    p.add_argument(
        "--trader",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="guard only channels of this trader (repeatable; default: any trader)",
    )
    p.set_defaults(func=watchtower_command)

    p = sub.add_parser("demo", parents=parents, help="run the whole story end to end and print who got what")
    p.add_argument(
        "--rpc", metavar="URL", help="run on this local JSON-RPC node (e.g. anvil) instead of the embedded chain"
    )
    p.add_argument(
        "--plot",
        default="demo-batch.png",
        metavar="FILE",
        help="where to save the batch plot (default: demo-batch.png)",
    )
    p.set_defaults(func=demo_command)

    p = sub.add_parser("gas", parents=parents, help="measure the gas of every adjudicator operation")
    p.add_argument("--output", default="bench/gas.json", help="gas table file (default: bench/gas.json)")
    p.add_argument("--check", action="store_true", help="compare with the committed table instead of writing it")
    p.add_argument("--readme", default="README.md", help="README whose gas tables to rewrite (default: README.md)")
    p.set_defaults(func=gas_command)
