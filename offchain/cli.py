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

from offchain.errors import TradingChannelsError, ValidationError

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
    print(f"wrote {path}")
    return 0


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
    print(f"wrote {path}")
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
    p.set_defaults(func=_deploy)

    p = sub.add_parser("demo", help="run the dispute story end to end and print the payouts")
    p.add_argument("--rpc", help="run on this JSON-RPC node instead of the embedded in-process chain")
    p.set_defaults(func=_demo)

    p = sub.add_parser("gas", help="measure the gas of every adjudicator operation")
    p.add_argument("--output", default="bench/gas.json", help="gas table file (default: bench/gas.json)")
    p.add_argument("--check", action="store_true", help="compare with the committed table instead of writing it")
    p.set_defaults(func=_gas)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
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
