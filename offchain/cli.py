"""``tchan``: the Trading Channels command line.

Every error this package raises on purpose prints as one line (``tchan: <code>: <reason>``) and
exits non-zero; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from offchain.errors import TradingChannelsError, ValidationError
from offchain.types import Address

if TYPE_CHECKING:
    from offchain.agents.broker import BrokerAgent

ANVIL_CHAIN_ID = 31337
ANVIL_MNEMONIC = "test test test test test test test test test test test junk"


def _compile(args: argparse.Namespace) -> int:
    from offchain import compiler

    if args.check:
        stale = compiler.stale_sources()
        if stale:
            print("artifacts are stale; run `tchan compile`:\n  " + "\n  ".join(stale))
            return 1
        print("artifacts match the sources")
        return 0
    result = compiler.compile_contracts()
    written = compiler.write_artifacts(result)
    print(
        f"compiled with {result.compiler.name} {result.compiler.version}; wrote {len(written)} files to "
        f"{compiler.ARTIFACTS_DIR}"
    )
    return 0


def _deploy_key(args: argparse.Namespace, chain_id: int) -> bytes:
    if args.keystore:
        from eth_account import Account

        password = (
            Path(args.password_file).read_text().rstrip("\n")
            if args.password_file
            else getpass.getpass("keystore password: ")
        )
        try:
            key: bytes = Account.decrypt(json.loads(Path(args.keystore).read_text()), password)
        except (ValueError, OSError) as exc:
            raise ValidationError(f"cannot open keystore {args.keystore}: {exc}") from exc
        return key
    if args.dev_account is not None:
        if not 0 <= args.dev_account < 2**31:
            raise ValidationError(f"--dev-account must be between 0 and 2^31-1, got {args.dev_account}")
        if chain_id != ANVIL_CHAIN_ID:
            raise ValidationError(
                f"--dev-account is for local anvil chains (chain id {ANVIL_CHAIN_ID}), not {chain_id}"
            )
        from eth_account import Account

        Account.enable_unaudited_hdwallet_features()
        account = Account.from_mnemonic(ANVIL_MNEMONIC, account_path=f"m/44'/60'/0'/0/{args.dev_account}")
        return bytes(account.key)
    raise ValidationError("choose a key: --keystore FILE, or --dev-account N on a local anvil chain")


def _deploy(args: argparse.Namespace) -> int:
    from offchain.chain.connection import Transactor, rpc_chain
    from offchain.chain.deploy import FeedSpec, deploy_stack, deployment_path, write_deployment

    deployment_path(Path(args.deployments), args.network)  # refuse a bad name before spending gas
    chain = rpc_chain(args.rpc)
    key = _deploy_key(args, chain.chain_id)
    sender = Transactor.from_key(chain, key)
    feeds = tuple(FeedSpec(description=d) for d in args.feed)
    print(f"deploying to chain {chain.chain_id} at {args.rpc} from {sender.address} ...")
    deployment = deploy_stack(chain, sender, args.network, feeds, with_token=not args.no_token)
    path = write_deployment(Path(args.deployments), deployment)
    for name, contract in sorted(deployment.contracts.items()):
        print(f"  {name:<32} {contract.address}  (block {contract.block})")
    if args.mint:
        _mint_to_dev_accounts(chain, sender, deployment.token, args.mint)
    print(f"wrote {path}")
    return 0


def _load_deployment_for(args: argparse.Namespace) -> tuple[object, object]:
    from offchain.chain.connection import rpc_chain
    from offchain.chain.deploy import load_deployment

    chain = rpc_chain(args.rpc)
    deployment = load_deployment(Path(args.deployments), args.network, expected_chain_id=chain.chain_id)
    return chain, deployment


def _parse_market(spec: str, index: int) -> tuple[int, str, int]:
    """``ID,FEED DESCRIPTION,REFERENCE_PRICE``, e.g. ``1,XAU / USD,2000000000``."""
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) != 3 or not parts[0].isdigit() or not parts[2].isdigit():
        raise ValidationError(f"--market #{index + 1} must be ID,FEED DESCRIPTION,REFERENCE_PRICE, got {spec!r}")
    return int(parts[0]), parts[1], int(parts[2])


def _broker(args: argparse.Namespace, broker_class: type[BrokerAgent] | None = None) -> int:
    import asyncio
    import logging

    from offchain.agents.broker import BrokerAgent, BrokerConfig
    from offchain.chain.connection import Chain
    from offchain.chain.deploy import Deployment
    from offchain.model import Market
    from offchain.sandbox import DEFAULT_MAX_PRICE_AGE, DEFAULT_RISK_FACTOR
    from offchain.signing import LocalSigner
    from offchain.store import open_store
    from offchain.types import MarketId

    logging.basicConfig(level=logging.INFO, format="%(asctime)s broker %(message)s", stream=sys.stdout)
    for noisy in ("websockets", "web3", "urllib3", "eth", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not 0 <= args.fee_bps <= 10_000:
        raise ValidationError("--fee-bps must be within [0, 10000]")
    if args.batch_seconds <= 0 or args.ack_timeout <= 0:
        raise ValidationError("--batch-seconds and --ack-timeout must be positive")
    if not 0 <= args.port <= 65535:
        raise ValidationError(f"--port must be within [0, 65535], got {args.port}")
    if args.channel_deposit < 0 or args.resolution < 1:
        raise ValidationError("--channel-deposit must not be negative and --resolution must be at least 1")
    if not args.market:
        raise ValidationError("give at least one --market ID,FEED DESCRIPTION,REFERENCE_PRICE")
    chain_obj, deployment_obj = _load_deployment_for(args)
    assert isinstance(chain_obj, Chain) and isinstance(deployment_obj, Deployment)
    chain, deployment = chain_obj, deployment_obj
    feeds = deployment.feeds()
    markets = []
    references = {}
    for i, spec in enumerate(args.market):
        market_id, description, reference = _parse_market(spec, i)
        if description not in feeds:
            raise ValidationError(f"no feed {description!r} in the deployment; it has {sorted(feeds)}")
        markets.append(
            Market(MarketId(market_id), feeds[description], args.resolution, DEFAULT_RISK_FACTOR, DEFAULT_MAX_PRICE_AGE)
        )
        references[market_id] = reference
    key = _deploy_key(args, chain.chain_id)
    config = BrokerConfig(
        host=args.host,
        port=args.port,
        batch_seconds=args.batch_seconds,
        fee_bps=args.fee_bps,
        ack_timeout=args.ack_timeout,
        channel_deposit=args.channel_deposit,
        markets=tuple(markets),
        reference_prices=references,
    )

    async def serve() -> None:
        store = open_store(args.store)
        agent = broker_class or BrokerAgent
        broker = agent(LocalSigner(key), store, chain, deployment.adjudicator, deployment.token, config)
        await broker.start()
        print(f"broker {broker.address} ready on ws://{args.host}:{broker.port}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await broker.stop()
            store.close()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        print("broker stopped", flush=True)
    return 0


def _trader(args: argparse.Namespace) -> int:
    import asyncio

    from offchain.agents.script import load_script, run_script
    from offchain.agents.trader import TraderAgent
    from offchain.agents.watchtower import WatchtowerClient
    from offchain.chain.connection import Chain
    from offchain.chain.deploy import Deployment
    from offchain.signing import LocalSigner
    from offchain.store import open_store

    steps = load_script(args.script)
    if args.watchtower is not None and not args.watchtower.startswith(("ws://", "wss://")):
        raise ValidationError(f"--watchtower must be a ws:// or wss:// URL, got {args.watchtower!r}")
    chain_obj, deployment_obj = _load_deployment_for(args)
    assert isinstance(chain_obj, Chain) and isinstance(deployment_obj, Deployment)
    chain, deployment = chain_obj, deployment_obj
    key = _deploy_key(args, chain.chain_id)

    def progress(line: str) -> None:
        if not args.json:
            print(f"trader: {line}", flush=True)

    async def run() -> dict[str, object]:
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
        )
        try:
            if watchtower is not None:
                await watchtower.start()
            await agent.start()
            summary = await run_script(agent, steps, progress)
            if watchtower is not None:  # everything handed over before this trader goes offline
                await watchtower.flush(args.timeout)
                progress(f"watchtower {args.watchtower} holds version {summary.get('state', ['?'])[0]}")
            return summary
        finally:
            await agent.stop()
            if watchtower is not None:
                await watchtower.stop()
            store.close()

    summary = asyncio.run(run())
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=2), flush=True)
    return 0


def _watchtower(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from offchain.agents.watchtower import Watchtower, WatchtowerConfig
    from offchain.chain.client import ADJUDICATOR
    from offchain.chain.connection import Chain
    from offchain.chain.deploy import Deployment
    from offchain.model import check_address
    from offchain.signing import LocalSigner
    from offchain.store import open_store

    logging.basicConfig(level=logging.INFO, format="%(asctime)s watchtower %(message)s", stream=sys.stdout)
    for noisy in ("websockets", "web3", "urllib3", "eth", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not 0 <= args.port <= 65535:
        raise ValidationError(f"--port must be within [0, 65535], got {args.port}")
    if not 0 < args.poll_seconds <= 3600:
        raise ValidationError("--poll-seconds must be positive and at most 3600")
    if args.max_channels < 1 or args.confirmations < 0:
        raise ValidationError("--max-channels must be at least 1 and --confirmations not negative")
    traders = frozenset(check_address("--trader", t) for t in args.trader)
    chain_obj, deployment_obj = _load_deployment_for(args)
    assert isinstance(chain_obj, Chain) and isinstance(deployment_obj, Deployment)
    chain, deployment = chain_obj, deployment_obj
    key = _deploy_key(args, chain.chain_id)
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
            print(f"watchtower {watchtower.address} ready on ws://{args.host}:{watchtower.port}", flush=True)
            try:
                await asyncio.Event().wait()
            finally:
                await watchtower.stop()
        finally:
            store.close()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        print("watchtower stopped", flush=True)
    return 0


def _add_node_and_key(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rpc", required=True, help="JSON-RPC URL of the node, e.g. http://127.0.0.1:8545")
    p.add_argument("--network", required=True, help="deployment to use: deployments/NAME.json")
    p.add_argument("--deployments", default="deployments", help="directory of deployment files (default: deployments)")
    p.add_argument("--keystore", help="encrypted keystore JSON of the account")
    p.add_argument("--password-file", help="file holding the keystore password (default: prompt)")
    p.add_argument("--dev-account", type=int, help="use anvil's dev account N (local chains only)")


def _mint_to_dev_accounts(chain: object, sender: object, token: Address, amount: int) -> None:
    """Local anvil chains: give each of the ten dev accounts ``amount`` test tokens."""
    from eth_account import Account

    from offchain.chain.client import TokenClient
    from offchain.chain.connection import Chain, Transactor

    assert isinstance(chain, Chain) and isinstance(sender, Transactor)
    if chain.chain_id != ANVIL_CHAIN_ID:
        raise ValidationError(f"--mint is for local anvil chains (chain id {ANVIL_CHAIN_ID})")
    Account.enable_unaudited_hdwallet_features()
    client = TokenClient(chain, token)
    for n in range(10):
        account = Account.from_mnemonic(ANVIL_MNEMONIC, account_path=f"m/44'/60'/0'/0/{n}")
        client.mint(sender, account.address, amount)
    print(f"minted {amount} test-token base units to each of anvil's 10 dev accounts")


def _demo(args: argparse.Namespace) -> int:
    from offchain import demo

    result = demo.main(args.rpc, sys.stdout)
    return 0 if result.ok else 1


def _gas(args: argparse.Namespace) -> int:
    from offchain import gas

    print("measuring gas on the in-process chain ...", flush=True)
    figures = gas.measure()
    print(gas.format_table(figures))
    path = Path(args.output)
    if args.check:
        committed = json.loads(path.read_text())["operations"]
        problems = gas.drift(committed, figures)
        if problems:
            print("gas drifted by more than 1%:\n  " + "\n  ".join(problems))
            return 1
        print(f"{path} is up to date")
        return 0
    gas.write_table(path, figures)
    readme = Path(args.readme)
    gas.write_readme_tables(readme, figures)
    print(f"wrote {path} and the gas tables of {readme}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tchan",
        description="Trading Channels: trade off-chain in two-party state channels, settle on an EVM chain.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("compile", help="compile contracts/ into offchain/artifacts/")
    p.add_argument("--check", action="store_true", help="only check that the artifacts match the sources")
    p.set_defaults(func=_compile)

    p = sub.add_parser("deploy", help="deploy the adjudicator (and, on local chains, a test token and feeds)")
    p.add_argument("--rpc", required=True, help="JSON-RPC URL of the node, e.g. http://127.0.0.1:8545")
    p.add_argument("--network", required=True, help="name of the deployment file: deployments/NAME.json")
    p.add_argument("--deployments", default="deployments", help="directory of deployment files (default: deployments)")
    p.add_argument("--keystore", help="encrypted keystore JSON of the deploying account")
    p.add_argument("--password-file", help="file holding the keystore password (default: prompt)")
    p.add_argument("--dev-account", type=int, help="use anvil's dev account N (local chains only)")
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
    p.set_defaults(func=_deploy)

    p = sub.add_parser("broker", help="run the broker: WebSocket server, batch auctions, its side of every channel")
    _add_node_and_key(p)
    p.add_argument("--store", default="broker.db", help="SQLite store (default: broker.db; ':memory:' for none)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port to listen on (default: 8765; 0 picks a free one)")
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
    p.add_argument(
        "--channel-deposit", type=int, default=0, help="token base units the broker deposits into each channel"
    )
    p.set_defaults(func=_broker)

    p = sub.add_parser("trader", help="run a trader agent: open a channel and trade from a script")
    _add_node_and_key(p)
    p.add_argument("--broker-url", required=True, help="the broker's WebSocket URL, e.g. ws://127.0.0.1:8765")
    p.add_argument("--store", default="trader.db", help="SQLite store (default: trader.db)")
    p.add_argument("--script", required=True, help="JSON script of steps (see docs/protocol.md)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the broker (default: 30)")
    p.add_argument("--json", action="store_true", help="print only the JSON summary")
    p.add_argument(
        "--watchtower",
        metavar="WS_URL",
        help="hand every co-signed state and batch price to this watchtower, e.g. ws://127.0.0.1:8766",
    )
    p.set_defaults(func=_trader)

    p = sub.add_parser("watchtower", help="run a watchtower: guard channels, answer disputes, conclude and withdraw")
    _add_node_and_key(p)
    p.add_argument("--store", default="watchtower.db", help="SQLite store (default: watchtower.db)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8766, help="port to listen on (default: 8766; 0 picks a free one)")
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
    p.set_defaults(func=_watchtower)

    p = sub.add_parser("demo", help="run the dispute story end to end and print the payouts")
    p.add_argument("--rpc", help="run on this JSON-RPC node instead of the embedded in-process chain")
    p.set_defaults(func=_demo)

    p = sub.add_parser("gas", help="measure the gas of every adjudicator operation")
    p.add_argument("--output", default="bench/gas.json", help="gas table file (default: bench/gas.json)")
    p.add_argument("--check", action="store_true", help="compare with the committed table instead of writing it")
    p.add_argument("--readme", default="README.md", help="README whose gas tables to rewrite (default: README.md)")
    p.set_defaults(func=_gas)
    return parser


def main(argv: Sequence[str] | None = None, broker_class: type[BrokerAgent] | None = None) -> int:
    """Run ``tchan ARGV``. ``broker_class`` replaces the broker agent of ``tchan broker`` (the
    tests run misbehaving brokers this way)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args, broker_class) if args.func is _broker else args.func(args)
        return code
    except TradingChannelsError as exc:
        if args.debug:
            raise
        print(f"tchan: {exc.code}: {exc.reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tchan: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
