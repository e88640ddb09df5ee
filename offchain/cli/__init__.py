"""``tchan``: the Trading Channels command line.

Each module of this package registers its subcommands (``register(sub, parents)``); every
subcommand takes ``--json`` and ``--debug``. An error this package raises on purpose prints as one
line on stderr (``tchan: <code>: <reason>``) and exits 1; a bad argument exits 2, also on one
line. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from offchain.cli import accounts, commands, dispute, localnet, oracle
from offchain.cli.common import add_common_args
from offchain.errors import TradingChannelsError

if TYPE_CHECKING:
    from offchain.agents.broker import BrokerAgent

SUBCOMMAND_MODULES = (commands, localnet, oracle, dispute, accounts)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming the help to read."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"tchan: usage: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="tchan",
        description="Trading Channels: trade off-chain in two-party state channels, settle on an EVM chain.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    common = argparse.ArgumentParser(add_help=False)
    add_common_args(common)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for module in SUBCOMMAND_MODULES:
        module.register(sub, [common])
    return parser


def one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None, broker_class: type[BrokerAgent] | None = None) -> int:
    """Run ``tchan ARGV``. ``broker_class`` replaces the broker agent of ``tchan broker`` (the
    tests run misbehaving brokers this way)."""
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    try:
        if args.func is commands.broker_command:
            code: int = commands.broker_command(args, broker_class)
        else:
            code = args.func(args)
        return code
    except TradingChannelsError as exc:
        if debug:
            raise
        print(f"tchan: {exc.code}: {one_line(exc.reason)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tchan: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        print(
            f"tchan: internal: {type(exc).__name__}: {one_line(str(exc))} (run again with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
