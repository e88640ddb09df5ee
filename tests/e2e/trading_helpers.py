"""Helpers for the end-to-end tests that run ``tchan broker`` and ``tchan trader`` as separate
processes against a real anvil node: process bookkeeping with logs in a directory, trader
scripts, and reading back what the processes stored and what the chain paid."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any

from eth_account import Account

from offchain.chain.client import AdjudicatorClient, TokenClient
from offchain.chain.connection import Chain
from offchain.chain.deploy import Deployment, load_deployment
from offchain.localnet import free_port
from offchain.model import ChannelState
from offchain.store import open_store

TCHAN = str(Path(sys.executable).parent / "tchan")
ANVIL_MNEMONIC = "test test test test test test test test test test test junk"
NETWORK = "local"
RESOLUTION = 10**6  # synthetic base units per whole unit (the broker's default)
USD = 10**6  # token base units per whole token (6 decimals)
MINT = 100_000 * USD  # what `tchan deploy --mint` gives each dev account
XAU, BTC = 1, 2
MARKETS = (f"{XAU},XAU / USD,{2000 * USD}", f"{BTC},BTC / USD,{60000 * USD}")
FEEDS = ("XAU / USD", "BTC / USD")
TAIL_LINES = 40


def dev_key(n: int) -> bytes:
    """The private key of anvil's dev account ``n``."""
    Account.enable_unaudited_hdwallet_features()
    return bytes(Account.from_mnemonic(ANVIL_MNEMONIC, account_path=f"m/44'/60'/0'/0/{n}").key)


def dev_address(n: int) -> str:
    Account.enable_unaudited_hdwallet_features()
    return str(Account.from_mnemonic(ANVIL_MNEMONIC, account_path=f"m/44'/60'/0'/0/{n}").address)


# --------------------------------------------------------------------------- scripts


def units(amount: float) -> int:
    """Whole units (of a synthetic asset) written as a short decimal, to base units, exactly: the
    decimal text of ``amount`` is converted, never its binary float value."""
    exact = Decimal(str(amount)) * RESOLUTION
    assert exact == exact.to_integral_value(), f"{amount} is not a whole number of base units"
    return int(exact)


def open_step(deposit: int, flow: str) -> dict[str, Any]:
    return {"open": {"deposit": str(deposit), "flow": flow}}


def order_step(market: int, side: str, amount: float, limit: int, max_fee: int = 5 * USD) -> dict[str, Any]:
    """A limit order for ``amount`` whole units at ``limit`` whole tokens per unit (exact on the grid)."""
    synthetic = units(amount)
    collateral = synthetic * limit * USD // RESOLUTION
    assert collateral * RESOLUTION == synthetic * limit * USD, "pick amounts whose collateral is exact"
    return {
        "order": {
            "market": str(market),
            "side": side,
            "amount_synthetic": str(synthetic),
            "amount_collateral": str(collateral),
            "max_fee": str(max_fee),
        }
    }


def wait_filled(order: int, timeout: float = 45) -> dict[str, Any]:
    return {"wait_filled": {"order": str(order), "timeout": str(timeout)}}


CANCEL_ALL: dict[str, Any] = {"cancel_all": {}}
FINALIZE: dict[str, Any] = {"finalize": {}}
CLOSE: dict[str, Any] = {"close": {}}


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def out(self) -> str:
        return self.stdout.read_text(errors="replace") if self.stdout.exists() else ""

    def err(self) -> str:
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""

    def tail(self, lines: int = TAIL_LINES) -> str:
        out = "\n".join(self.out().splitlines()[-lines:])
        err = "\n".join(self.err().splitlines()[-lines:])
        code = self.process.poll()
        return f"===== {self.name} (exit {code}) stdout =====\n{out}\n===== {self.name} stderr =====\n{err}\n"

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def summary(self) -> dict[str, Any]:
        """The trader's ``--json`` summary: the last stdout line."""
        lines = [line for line in self.out().splitlines() if line.strip()]
        assert lines, f"{self.name} printed nothing\n{self.tail()}"
        data: dict[str, Any] = json.loads(lines[-1])
        return data


@dataclass
class Processes:
    """Every process a test starts, with its logs in ``logs``. On leaving the block every process
    still running is stopped (SIGINT, then SIGKILL) and, when the block failed, the tails of
    every log are printed (pytest shows them with the failure)."""

    logs: Path
    rpc: str
    deployments: Path
    procs: list[Proc] = field(default_factory=list)
    _count: int = 0

    def __enter__(self) -> Processes:
        self.logs.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for proc in self.procs:
            stop(proc)
        if exc_type is not None:
            print(self.tails())

    def tails(self) -> str:
        return "\n".join(p.tail() for p in self.procs)

    def spawn(self, name: str, args: Sequence[str], program: Sequence[str] = (TCHAN,)) -> Proc:
        """Start ``tchan ARGS`` (or ``PROGRAM ARGS``) with its output in the logs directory."""
        self._count += 1
        stem = f"{self._count:02d}-{name}"
        stdout, stderr = self.logs / f"{stem}.out", self.logs / f"{stem}.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen([*program, *args], stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        proc = Proc(name, process, stdout, stderr)
        self.procs.append(proc)
        return proc

    def node_args(self, account: int) -> list[str]:
        return [
            "--rpc",
            self.rpc,
            "--network",
            NETWORK,
            "--deployments",
            str(self.deployments),
            "--dev-account",
            str(account),
        ]

    def deploy(self, mint: int = MINT, timeout: float = 60) -> None:
        args = ["deploy", *self.node_args(0), "--mint", str(mint)]
        for feed in FEEDS:
            args += ["--feed", feed]
        proc = self.spawn("deploy", args)
        assert proc.wait(timeout) == 0, proc.tail()

    def contracts(self, chain: Chain) -> tuple[Deployment, AdjudicatorClient, TokenClient]:
        """The deployment written by :meth:`deploy` (checked against the node's chain id) and
        clients of its adjudicator and test token."""
        deployment = load_deployment(self.deployments, NETWORK, expected_chain_id=chain.chain_id)
        return deployment, AdjudicatorClient(chain, deployment.adjudicator), TokenClient(chain, deployment.token)

    def broker(
        self,
        store: Path,
        port: int | None = None,
        *,
        channel_deposit: int = 20_000 * USD,
        batch_seconds: float = 1.0,
        extra: Sequence[str] = (),
        name: str = "broker",
        program: Sequence[str] = (TCHAN,),
    ) -> Proc:
        """``tchan broker`` (or another program taking its arguments, e.g. a cheating broker)."""
        args = ["broker", *self.node_args(0), "--store", str(store), "--port", str(port or free_port())]
        for market in MARKETS:
            args += ["--market", market]
        args += ["--batch-seconds", str(batch_seconds), "--channel-deposit", str(channel_deposit), *extra]
        return self.spawn(name, args, program)

    def wait_ready(self, broker: Proc, timeout: float = 30) -> str:
        """Wait for ``broker 0x... ready on ws://HOST:PORT``; returns the URL."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in broker.out().splitlines():
                if " ready on ws://" in line:
                    return line.rsplit(" ", 1)[-1]
            if broker.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{broker.name} did not get ready\n{broker.tail()}")

    def trader(
        self,
        name: str,
        account: int,
        url: str,
        store: Path,
        script: list[dict[str, Any]],
        extra: Sequence[str] = (),
    ) -> Proc:
        path = self.logs / f"{self._count + 1:02d}-{name}-script.json"
        path.write_text(json.dumps(script, indent=1))
        args = ["trader", *self.node_args(account), "--broker-url", url, "--store", str(store)]
        return self.spawn(name, [*args, "--script", str(path), "--json", *extra])


def stop(proc: Proc, sig: int = signal.SIGINT, grace: float = 10) -> None:
    """Stop one of our processes by its own handle: ``sig`` first, SIGKILL after ``grace`` s."""
    if proc.process.poll() is not None:
        return
    proc.process.send_signal(sig)
    try:
        proc.process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.process.kill()
        proc.process.wait()


def wait_until(predicate: Callable[[], bool], what: str, proc: Proc, timeout: float = 45) -> None:
    """Poll ``predicate`` until it holds; fail with ``proc``'s log tail if it does not in time or
    ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline or proc.process.poll() is not None:
            raise AssertionError(f"timed out waiting for {what}\n{proc.tail()}")
        time.sleep(0.1)


def wait_all(procs: Sequence[Proc], timeout: float) -> None:
    """Wait until every process has exited (or raise once ``timeout`` s have passed)."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"{proc.name} still running after {timeout} s") from exc


# --------------------------------------------------------------------------- what was stored and paid


def state_of(summary: dict[str, Any]) -> ChannelState:
    return ChannelState.from_json(bytes.fromhex(summary["channel_id"][2:]), summary["final"], summary["state"])  # type: ignore[arg-type]


def stored_states(store_path: Path, channel_id: bytes) -> list[ChannelState]:
    """Every co-signed state of the channel in ``store_path``, by version (the process must have
    released the store)."""
    store = open_store(str(store_path))
    try:
        latest = store.latest_co_signed(channel_id)
        assert latest is not None
        states = []
        for version in range(latest.state.version + 1):
            stored = store.state(channel_id, version)
            assert stored is not None and stored.co_signed, f"version {version} missing or not co-signed"
            states.append(stored.state)
        return states
    finally:
        store.close()


@dataclass(frozen=True)
class Payout:
    to_trader: int
    to_broker: int
    version: int
    underfunded: bool


def close_payout(chain: Chain, adjudicator: AdjudicatorClient, close_tx: str, channel_id: bytes) -> Payout:
    """The ``Closed`` event of the close transaction (and no deferred payout)."""
    receipt = chain.w3.eth.get_transaction_receipt(close_tx)  # type: ignore[arg-type]
    assert receipt["status"] == 1
    closed = adjudicator.events(receipt, "Closed")
    assert len(closed) == 1, closed
    event = closed[0]
    assert bytes(event["channelId"]) == channel_id
    assert adjudicator.events(receipt, "PayoutDeferred") == []
    return Payout(int(event["toTrader"]), int(event["toBroker"]), int(event["version"]), bool(event["underfunded"]))


def balances(token: TokenClient, accounts: Sequence[int]) -> dict[int, int]:
    return {n: int(token.balance_of(dev_address(n))) for n in accounts}  # type: ignore[arg-type]
