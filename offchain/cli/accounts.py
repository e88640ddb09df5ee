"""``tchan balance`` (what an account holds: ether, test tokens, and what it can withdraw from the
adjudicator) and ``tchan advance-time`` (move a local anvil chain's clock, e.g. past a challenge
deadline: the contract's shortest challenge period is an hour)."""

from __future__ import annotations

import argparse
from typing import Any

from offchain.cli.common import (
    ANVIL_CHAIN_ID,
    Output,
    add_key_args,
    add_network_args,
    connect,
    load_key,
    open_deployment,
    table,
)
from offchain.errors import ValidationError
from offchain.types import Address

MAX_ADVANCE_SECONDS = 366 * 24 * 3600


def balance_command(args: argparse.Namespace) -> int:
    from eth_account import Account

    from offchain.chain.client import AdjudicatorClient, TokenClient
    from offchain.model import check_address

    out = Output.of(args)
    _, chain, deployment = open_deployment(args)
    if args.address is not None:
        if args.keystore or args.dev_account is not None:
            raise ValidationError("give an ADDRESS or a key (--keystore/--dev-account), not both")
        account = check_address("ADDRESS", args.address)
    else:
        account = Address(Account.from_key(load_key(args, chain.chain_id)).address)
    token = TokenClient(chain, deployment.token)
    adjudicator = AdjudicatorClient(chain, deployment.adjudicator)
    figures: dict[str, Any] = {
        "account": account,
        "ether_wei": int(chain.w3.eth.get_balance(account)),
        "token": deployment.token,
        "token_balance": int(token.balance_of(account)),
        "withdrawable": int(adjudicator.withdrawable(deployment.token, account)),
    }
    out.result(
        figures,
        lambda: table(
            [
                ("account", account),
                ("ether (wei)", str(figures["ether_wei"])),
                ("tokens (base units)", str(figures["token_balance"])),
                ("withdrawable from the adjudicator", str(figures["withdrawable"])),
            ]
        ),
    )
    return 0


def advance_time_command(args: argparse.Namespace) -> int:
    out = Output.of(args)
    if not 0 < args.seconds <= MAX_ADVANCE_SECONDS:
        raise ValidationError(f"SECONDS must be within (0, {MAX_ADVANCE_SECONDS}], got {args.seconds}")
    _, chain = connect(args)
    if chain.chain_id != ANVIL_CHAIN_ID:
        raise ValidationError(
            f"advance-time only moves local anvil chains (chain id {ANVIL_CHAIN_ID}), not chain id {chain.chain_id}"
        )
    before = chain.now()
    after = chain.increase_time(args.seconds)
    out.result(
        {"before": before, "after": after, "block": int(chain.w3.eth.block_number)},
        f"chain time moved from {before} to {after} (+{after - before} s)",
    )
    return 0


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "balance",
        parents=parents,
        help="what an account holds: ether, test tokens, and what it can withdraw from the adjudicator",
    )
    add_network_args(p)
    add_key_args(p, "the account (or give ADDRESS)")
    p.add_argument("address", nargs="?", metavar="ADDRESS", help="the account to show (default: the key's)")
    p.set_defaults(func=balance_command)

    p = sub.add_parser(
        "advance-time",
        parents=parents,
        help="local anvil only: mine a block SECONDS later (e.g. past a challenge deadline)",
    )
    add_network_args(p, deployment=False)
    p.add_argument("seconds", type=int, metavar="SECONDS", help="how far to move the chain's clock")
    p.set_defaults(func=advance_time_command)
