"""``tchan localnet``: a local testnet (anvil) in the foreground.

It starts anvil from npm (``npm ci`` installs it) on 127.0.0.1 only, with Prague rules and chain
id 31337, prints the RPC URL and the funded dev accounts (the keys ``--dev-account N`` of the other
commands uses), then waits. Ctrl-C, SIGTERM or SIGHUP stop anvil (which writes ``--state`` then)
and the command exits 0; nothing is left running. The other commands' default network ``local`` is
this node on the default port 8545.
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from offchain.cli.common import ANVIL_CHAIN_ID, ANVIL_MNEMONIC, DEV_ACCOUNTS, LOCAL_RPC, MAX_DEV_ACCOUNTS, Output, table
from offchain.errors import ChainError, ValidationError

DEFAULT_PORT = 8545
MAX_ACCOUNTS = MAX_DEV_ACCOUNTS
MAX_BALANCE_ETH = 10**12  # whole ether per account; far beyond any test, well inside uint256
WEI_PER_ETH = 10**18
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")
KEYS_WARNING = (
    "these are anvil's PUBLIC, well-known test keys (mnemonic '{mnemonic}'): "
    "anyone can spend from them; never use them on a real network"
)


def dev_accounts(count: int) -> list[tuple[int, str, bytes]]:
    """(index, checksum address, private key) of anvil's first ``count`` dev accounts: the same
    keys as :func:`offchain.cli.common.dev_account_key`, derived from the mnemonic once."""
    from eth_account import Account
    from eth_account.hdaccount import key_from_seed, seed_from_mnemonic

    seed = seed_from_mnemonic(ANVIL_MNEMONIC, "")
    accounts = []
    for index in range(count):
        key = bytes(key_from_seed(seed, f"m/44'/60'/0'/0/{index}"))
        accounts.append((index, str(Account.from_key(key).address), key))
    return accounts


def format_eth(wei: int) -> str:
    """Wei as ether, exactly (integer arithmetic): 10000, 9999.5."""
    whole, rest = divmod(wei, WEI_PER_ETH)
    return str(whole) if rest == 0 else f"{whole}.{rest:018d}".rstrip("0")


@contextmanager
def stop_signals(second_interrupts: bool = False) -> Iterator[threading.Event]:
    """An event set by the first SIGINT, SIGTERM or SIGHUP, so that the work under way can finish
    and stop cleanly (the previous handlers are restored on the way out; outside the main thread,
    where Python allows no handler, none is installed). With ``second_interrupts``, a second
    signal raises KeyboardInterrupt (a user who insists)."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set() and second_interrupts:
            raise KeyboardInterrupt
        stop.set()

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is not threading.main_thread():  # handlers only work there
        yield stop
        return
    for name in STOP_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def check_args(args: argparse.Namespace) -> None:
    if not 1 <= args.port <= 65535:
        raise ValidationError(f"--port must be within [1, 65535], got {args.port}")
    if not 1 <= args.accounts <= MAX_ACCOUNTS:
        raise ValidationError(f"--accounts must be within [1, {MAX_ACCOUNTS}], got {args.accounts}")
    if args.balance is not None and not 1 <= args.balance <= MAX_BALANCE_ETH:
        raise ValidationError(f"--balance must be a whole number of ether within [1, {MAX_BALANCE_ETH}]")
    if args.block_time is not None and not 0 < args.block_time <= 3600:
        raise ValidationError(f"--block-time must be positive and at most 3600 s, got {args.block_time}")
    if not 1 <= args.chain_id < 2**63:
        raise ValidationError(f"--chain-id must be a positive integer below 2^63, got {args.chain_id}")
    if args.state is not None:
        parent = Path(args.state).resolve().parent
        if not parent.is_dir():
            raise ValidationError(f"--state: directory {parent} does not exist")


def localnet_command(args: argparse.Namespace) -> int:
    from offchain.localnet import HARDFORK, Anvil, rpc_request

    out = Output.of(args)
    check_args(args)
    state = Path(args.state) if args.state is not None else None
    state_existed = state is not None and state.exists()
    with stop_signals() as stop:
        anvil = Anvil.start(
            port=args.port,
            chain_id=args.chain_id,
            accounts=args.accounts,
            balance=args.balance,
            block_time=args.block_time,
            state=state,
            mnemonic=ANVIL_MNEMONIC,
            new_session=True,
        )
        try:
            accounts = dev_accounts(args.accounts)
            node_accounts = rpc_request(anvil.url, "eth_accounts")
            if not isinstance(node_accounts, list) or [a.lower() for a in node_accounts] != [
                address.lower() for _, address, _ in accounts
            ]:
                raise ChainError("anvil's dev accounts are not the ones derived from its test mnemonic")
            balances = []
            for _, address, _ in accounts:
                raw = rpc_request(anvil.url, "eth_getBalance", [address, "latest"])
                balances.append(int(str(raw), 16))
            report(out, args, anvil.url, HARDFORK, accounts, balances, state, state_existed)
            while not stop.wait(0.25):
                if anvil.process.poll() is not None:
                    err = anvil.process.stderr.read().decode(errors="replace") if anvil.process.stderr else ""
                    raise ChainError(
                        f"anvil exited on its own with code {anvil.process.returncode}: {' '.join(err.split())[:300]}"
                    )
        finally:
            code = anvil.stop()
    out.progress(f"anvil stopped (exit code {code})" + (f"; state written to {state}" if state else ""))
    return 0


def report(
    out: Output,
    args: argparse.Namespace,
    url: str,
    hardfork: str,
    accounts: list[tuple[int, str, bytes]],
    balances: list[int],
    state: Path | None,
    state_existed: bool,
) -> None:
    """The URL, the chain and the dev accounts: a table, or one JSON document with ``--json``."""
    warning = KEYS_WARNING.format(mnemonic=ANVIL_MNEMONIC)
    data = {
        "ready": True,
        "rpc": url,
        "chain_id": args.chain_id,
        "hardfork": hardfork,
        "block_time": None if args.block_time is None else str(args.block_time),
        "state": None if state is None else str(state),
        "mnemonic": ANVIL_MNEMONIC,
        "warning": warning,
        "accounts": [
            {"index": index, "address": address, "private_key": key, "balance_wei": balance}
            for (index, address, key), balance in zip(accounts, balances, strict=True)
        ],
    }

    def human() -> str:
        rows = [
            (str(index), address, "0x" + key.hex(), format_eth(balance))
            for (index, address, key), balance in zip(accounts, balances, strict=True)
        ]
        mining = "one block per transaction" if args.block_time is None else f"a block every {args.block_time} s"
        lines = [f"anvil on {url}  (chain id {args.chain_id}, {hardfork} rules, {mining})"]
        if url != LOCAL_RPC:
            lines.append(f"the other tchan commands reach it with --rpc {url}")
        if state is not None:
            lines.append(f"state: {'loaded from' if state_existed else 'new;'} {state}, written there on stop")
        lines += [
            "",
            table(rows, ("index", "address", "private key", "balance (ETH)")),
            "",
            warning,
            f"use them with --dev-account N (0 to {len(accounts) - 1}), "
            'e.g. tchan deploy --dev-account 0 --feed "XAU / USD"',
        ]
        if args.chain_id != ANVIL_CHAIN_ID:
            lines.append(f"note: --dev-account only works with chain id {ANVIL_CHAIN_ID}")
        return "\n".join(lines)

    out.result(data, human)
    if out.as_json:
        out.progress("press Ctrl-C to stop")
    else:
        out.say("press Ctrl-C to stop")


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "localnet",
        parents=parents,
        help="run a local testnet (anvil) in the foreground, with funded dev accounts",
        description="Start anvil (from npm: run `npm ci` once) on 127.0.0.1 only, with Prague rules, print its "
        "RPC URL and its funded dev accounts (anvil's public, well-known test keys: the ones --dev-account N "
        "uses), then wait. Ctrl-C (or SIGTERM) stops anvil and exits 0. The other commands' default network "
        f"'local' is {LOCAL_RPC}, this node on the default port. With --json, one JSON document "
        "(URL, chain id, accounts with keys, balances in wei as decimal strings) once the node is ready.",
    )
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port on 127.0.0.1 to listen on (default: {DEFAULT_PORT})"
    )
    p.add_argument(
        "--accounts",
        type=int,
        default=DEV_ACCOUNTS,
        metavar="N",
        help=f"number of funded dev accounts, 1 to {MAX_ACCOUNTS} (default: {DEV_ACCOUNTS}; "
        "--dev-account N reaches each of them)",
    )
    p.add_argument(
        "--balance",
        type=int,
        metavar="ETH",
        help="whole ether in each dev account (default: anvil's 10000)",
    )
    p.add_argument(
        "--block-time",
        type=float,
        metavar="S",
        help="mine a block every S seconds (default: one block per transaction, at once)",
    )
    p.add_argument(
        "--chain-id",
        type=int,
        default=ANVIL_CHAIN_ID,
        help=f"chain id (default: {ANVIL_CHAIN_ID}; --dev-account works only with {ANVIL_CHAIN_ID})",
    )
    p.add_argument(
        "--state",
        metavar="FILE",
        help="load the chain from FILE if it exists and write it there on stop (anvil --state), "
        "so contracts and balances survive a restart",
    )
    p.set_defaults(func=localnet_command)
