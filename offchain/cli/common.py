"""What every ``tchan`` subcommand shares: the network it talks to, the key it signs with, and how
it prints.

**Networks.** ``--network NAME`` names both the deployment file (``deployments/NAME.json``) and,
if there is one, the ``[networks.NAME]`` table of the configuration file (``--config FILE``, else
``$TCHAN_CONFIG``, else ``./tchan.toml`` when it exists)::

    [networks.local]
    rpc = "http://127.0.0.1:8545"
    chain_id = 31337            # optional: refuse a node with another chain id
    deployments = "deployments" # optional

``--rpc URL`` overrides the configured URL. The network ``local`` needs no configuration: it is
anvil on ``http://127.0.0.1:8545`` (what ``tchan localnet`` starts).

**Keys** come from an encrypted keystore (eth-account keystore JSON; the password from
``--password-file`` or a prompt) or, on a local anvil chain only, from anvil's dev accounts
(``--dev-account N``). A raw private key is never taken on the command line.

**Output** is human-readable by default; ``--json`` prints one JSON document on stdout instead,
with amounts as decimal strings. Progress lines go to stderr, so they never mix with ``--json``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from offchain.errors import ConfigError, KeystoreError, ValidationError, WrongChainError

if TYPE_CHECKING:
    from offchain.chain.connection import Chain
    from offchain.chain.deploy import Deployment

ANVIL_CHAIN_ID = 31337
ANVIL_MNEMONIC = "test test test test test test test test test test test junk"
DEFAULT_NETWORK = "local"
LOCAL_RPC = "http://127.0.0.1:8545"
CONFIG_FILE = "tchan.toml"
CONFIG_ENV = "TCHAN_CONFIG"
DEV_ACCOUNTS = 10  # anvil's default number of funded accounts
MAX_DEV_ACCOUNTS = 1000
"""Dev accounts ``tchan localnet --accounts`` can fund, and ``--dev-account N`` can choose."""


# --------------------------------------------------------------------------- arguments


def add_network_args(p: argparse.ArgumentParser, deployment: bool = True) -> None:
    """``--network``, ``--rpc``, ``--config`` (and ``--deployments`` when the command reads one)."""
    p.add_argument(
        "--network",
        default=DEFAULT_NETWORK,
        help="network name: the deployment file deployments/NAME.json and the [networks.NAME] "
        f"table of the config file (default: {DEFAULT_NETWORK}, anvil on {LOCAL_RPC})",
    )
    p.add_argument("--rpc", metavar="URL", help="JSON-RPC URL of the node (default: from the config file)")
    p.add_argument(
        "--config", metavar="FILE", help=f"configuration file (default: ${CONFIG_ENV}, else ./{CONFIG_FILE} if present)"
    )
    if deployment:
        p.add_argument("--deployments", metavar="DIR", help="directory of deployment files (default: deployments)")


def add_key_args(p: argparse.ArgumentParser, who: str = "the account") -> None:
    p.add_argument("--keystore", metavar="FILE", help=f"encrypted keystore JSON of {who}")
    p.add_argument("--password-file", metavar="FILE", help="file holding the keystore password (default: prompt)")
    p.add_argument(
        "--dev-account",
        type=int,
        metavar="N",
        help="use anvil's dev account N (local anvil chains only; 0-9 are funded by default, more with "
        "`tchan localnet --accounts`)",
    )


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Options every subcommand takes, wherever they stand on the line."""
    p.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks instead of one-line errors"
    )
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of text")


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class Network:
    name: str
    rpc: str
    chain_id: int | None
    deployments: Path


def config_path(args: argparse.Namespace) -> Path | None:
    given = getattr(args, "config", None) or os.environ.get(CONFIG_ENV)
    if given:
        path = Path(given)
        if not path.is_file():
            raise ConfigError(f"configuration file {path} does not exist")
        return path
    default = Path(CONFIG_FILE)
    return default if default.is_file() else None


def load_config(path: Path | None) -> dict[str, dict[str, Any]]:
    """The ``[networks.*]`` tables of the configuration file, validated."""
    if path is None:
        return {}
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    networks = raw.get("networks", {})
    if not isinstance(networks, dict):
        raise ConfigError(f"{path}: [networks] must be a table of tables, e.g. [networks.local]")
    for name, table in networks.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: networks.{name} must be a table")
        unknown = set(table) - {"rpc", "chain_id", "deployments"}
        if unknown:
            raise ConfigError(f"{path}: networks.{name} has unknown keys {sorted(unknown)}")
        if "rpc" in table and not (isinstance(table["rpc"], str) and table["rpc"].startswith(("http://", "https://"))):
            raise ConfigError(f"{path}: networks.{name}.rpc must be an http:// or https:// URL")
        chain_id = table.get("chain_id")
        if chain_id is not None and (not isinstance(chain_id, int) or isinstance(chain_id, bool) or chain_id <= 0):
            raise ConfigError(f"{path}: networks.{name}.chain_id must be a positive integer")
        if "deployments" in table and not isinstance(table["deployments"], str):
            raise ConfigError(f"{path}: networks.{name}.deployments must be a directory path")
    return networks


def resolve_network(args: argparse.Namespace) -> Network:
    """The network the command talks to, from ``--network``/``--rpc``/the configuration file."""
    from offchain.chain.deploy import deployment_path

    name: str = args.network
    deployment_path(Path("."), name)  # refuses a bad name
    path = config_path(args)
    table = load_config(path).get(name)
    rpc = getattr(args, "rpc", None)
    if rpc is not None and not rpc.startswith(("http://", "https://")):
        raise ValidationError(f"--rpc must be an http:// or https:// URL, got {rpc!r}")
    if rpc is None and table is not None:
        rpc = table.get("rpc")
    if rpc is None:
        if name != DEFAULT_NETWORK:
            where = f"in {path}" if path else f"(no {CONFIG_FILE} here)"
            raise ConfigError(f"network {name!r} has no rpc URL {where}: give --rpc URL or add [networks.{name}] rpc")
        rpc = LOCAL_RPC
    deployments = getattr(args, "deployments", None) or (table or {}).get("deployments") or "deployments"
    return Network(name=name, rpc=rpc, chain_id=(table or {}).get("chain_id"), deployments=Path(deployments))


def connect(args: argparse.Namespace) -> tuple[Network, Chain]:
    """Resolve the network and reach its node; check the configured chain id."""
    from offchain.chain.connection import rpc_chain

    network = resolve_network(args)
    try:
        chain = rpc_chain(network.rpc)
    except Exception as exc:
        if network.rpc == LOCAL_RPC and network.name == DEFAULT_NETWORK:
            raise type(exc)(f"{exc} (start one with `tchan localnet`)") from exc
        raise
    if network.chain_id is not None and network.chain_id != chain.chain_id:
        raise WrongChainError(
            f"network {network.name!r} is configured for chain id {network.chain_id}, "
            f"but the node at {network.rpc} is chain id {chain.chain_id}"
        )
    return network, chain


def open_deployment(args: argparse.Namespace) -> tuple[Network, Chain, Deployment]:
    """The node and the deployment on it, with the chain ids checked against each other."""
    from offchain.chain.deploy import load_deployment

    network, chain = connect(args)
    deployment = load_deployment(network.deployments, network.name, expected_chain_id=chain.chain_id)
    return network, chain, deployment


# --------------------------------------------------------------------------- keys


def dev_account_key(index: int) -> bytes:
    """Anvil's dev account ``index`` (from its well-known test mnemonic)."""
    from eth_account import Account

    Account.enable_unaudited_hdwallet_features()
    account = Account.from_mnemonic(ANVIL_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return bytes(account.key)


def read_password(args: argparse.Namespace, prompt: str = "keystore password: ") -> str:
    if args.password_file:
        try:
            return Path(args.password_file).read_text().rstrip("\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeystoreError(f"cannot read the password file {args.password_file}: {exc}") from exc
    if not sys.stdin.isatty():
        raise KeystoreError("no terminal to ask the keystore password on: give --password-file FILE")
    return getpass.getpass(prompt)


def load_key(args: argparse.Namespace, chain_id: int) -> bytes:
    """The private key chosen by ``--keystore`` or ``--dev-account``."""
    if args.keystore and args.dev_account is not None:
        raise ValidationError("choose one key: --keystore FILE or --dev-account N, not both")
    if args.keystore:
        from eth_account import Account

        try:
            keystore = json.loads(Path(args.keystore).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise KeystoreError(f"cannot read keystore {args.keystore}: {exc}") from exc
        password = read_password(args)
        try:
            key: bytes = Account.decrypt(keystore, password)
        except (ValueError, TypeError, KeyError) as exc:
            reason = "wrong password" if "MAC mismatch" in str(exc) else f"not a keystore ({exc})"
            raise KeystoreError(f"cannot open keystore {args.keystore}: {reason}") from exc
        return key
    if args.dev_account is not None:
        if not 0 <= args.dev_account < MAX_DEV_ACCOUNTS:
            raise ValidationError(f"--dev-account must be 0 to {MAX_DEV_ACCOUNTS - 1}, got {args.dev_account}")
        if chain_id != ANVIL_CHAIN_ID:
            raise ValidationError(
                f"--dev-account is for local anvil chains (chain id {ANVIL_CHAIN_ID}), not chain id {chain_id}: "
                "use --keystore FILE"
            )
        return dev_account_key(args.dev_account)
    raise ValidationError("choose a key: --keystore FILE, or --dev-account N on a local anvil chain")


# --------------------------------------------------------------------------- output

APPROX_PLACES = 8
"""Digits shown for a ratio that has no finite decimal expansion."""


def format_fraction(numerator: int, denominator: int, min_places: int = 0) -> str:
    """``numerator / denominator`` as a decimal: exact when it has a finite expansion (padded to
    ``min_places``), else rounded half up to :data:`APPROX_PLACES` places with a ``~`` in front."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    sign = "-" if numerator < 0 else ""
    numerator = abs(numerator)
    reduced = denominator // gcd(numerator, denominator)
    twos = fives = 0
    while reduced % 2 == 0:
        reduced //= 2
        twos += 1
    while reduced % 5 == 0:
        reduced //= 5
        fives += 1
    exact = reduced == 1
    places = max(twos, fives, min_places) if exact else max(APPROX_PLACES, min_places)
    quotient, remainder = divmod(numerator * 10**places, denominator)
    if not exact and 2 * remainder >= denominator:
        quotient += 1
    whole, fraction = divmod(quotient, 10**places)
    digits = str(fraction).rjust(places, "0") if places else ""
    if not exact:
        digits = digits.rstrip("0").ljust(min_places, "0")
    text = f"{whole}.{digits}" if digits else str(whole)
    if sign and text.strip("0.") == "":
        sign = ""
    return ("" if exact else "~") + sign + text


def jsonable(value: Any) -> Any:
    """Integers as decimal strings (JSON amounts), bytes as 0x-hex, recursively."""
    if isinstance(value, bool) or value is None or isinstance(value, str | float):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    raise TypeError(f"cannot print {type(value).__name__} as JSON")


class Output:
    """Prints a command's result as text or as one JSON document (``--json``)."""

    def __init__(self, as_json: bool, stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        self.as_json = as_json
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr

    @classmethod
    def of(cls, args: argparse.Namespace) -> Output:
        return cls(bool(getattr(args, "json", False)))

    def say(self, text: str) -> None:
        """A line of the human output (nothing with ``--json``)."""
        if not self.as_json:
            print(text, file=self.stdout, flush=True)

    def progress(self, text: str) -> None:
        """A line about work under way, on stderr (so scripts reading stdout never see it)."""
        print(text, file=self.stderr, flush=True)

    def result(self, data: dict[str, Any], human: Callable[[], str] | str | None = None) -> None:
        """The command's result: ``data`` as JSON with ``--json``, else the human text."""
        if self.as_json:
            print(json.dumps(jsonable(data)), file=self.stdout, flush=True)
        elif human is not None:
            print(human() if callable(human) else human, file=self.stdout, flush=True)

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        """``what ...`` then ``done in N s`` on stderr, around a piece of long work."""
        start = time.monotonic()
        self.progress(f"{what} ...")
        yield
        self.progress(f"{what}: done in {time.monotonic() - start:.1f} s")


def table(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None) -> str:
    """Rows as aligned columns (the first column left-aligned, the others right-aligned)."""
    all_rows = [*([header] if header else []), *rows]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(all_rows[0]))]
    lines = []
    for n, row in enumerate(all_rows):
        cells = [c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if header and n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
