"""``tchan trader`` without ``--script``: the prompt, driven through a pipe as a user's script
would drive it, against a real ``tchan broker`` on a real anvil node.

Trader A (text output, cooperative flow) opens a channel, places a gold bid and a BTC ask, and
gets a bad command, an amount off the grid and an unknown market refused without harm. Trader B
(a second prompt, with ``--json``, server-initiative flow) sells gold into A's bid, so a batch
crosses and fills A's bid in part. A then reads its orders, balances, positions, prices and
status, cancels both orders, finalizes and closes on-chain, and quits; the chain pays exactly what
the prompt said, and both processes exit 0."""

from __future__ import annotations

import json
import queue
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest

from offchain.chain.connection import rpc_chain
from offchain.localnet import Anvil
from tests.e2e.trading_helpers import (
    MINT,
    TCHAN,
    USD,
    Proc,
    Processes,
    balances,
    close_payout,
    dev_address,
)

pytestmark = [pytest.mark.anvil, pytest.mark.slow]

DEPOSIT = 5_000 * USD


class Prompt:
    """A ``tchan trader`` prompt whose stdin is a pipe. Every stdout line is kept (and written to
    the logs, so the harness shows its tail on a failure)."""

    def __init__(self, procs: Processes, name: str, account: int, url: str, store: Path, *extra: str) -> None:
        self.name = name
        stdout, stderr = procs.logs / f"{name}.out", procs.logs / f"{name}.err"
        args = ["trader", *procs.node_args(account), "--broker-url", url, "--store", str(store), *extra]
        with stderr.open("wb") as err:
            self.process = subprocess.Popen([TCHAN, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        procs.procs.append(Proc(name, self.process, stdout, stderr))
        self.proc = procs.procs[-1]
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.transcript: list[str] = []
        assert self.process.stdout is not None
        threading.Thread(target=self._pump, args=(self.process.stdout, stdout), daemon=True).start()

    def _pump(self, pipe: IO[bytes], log: Path) -> None:
        with log.open("w") as out:
            for raw in pipe:
                line = raw.decode(errors="replace").rstrip("\n")
                out.write(line + "\n")
                out.flush()
                self.lines.put(line)
        self.lines.put(None)

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.transcript.append(f"> {line}")
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def expect(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """Read lines until one matches ``pattern`` (``re.search``); fail on a timeout or the end."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{self.name}: no line matching {pattern!r}\n{self.proc.tail()}") from None
            if line is None:
                raise AssertionError(f"{self.name} ended before {pattern!r}\n{self.proc.tail()}")
            self.transcript.append(line)
            match = re.search(pattern, line)
            if match is not None:
                return match

    def run(self, command: str, *patterns: str, timeout: float = 30) -> list[re.Match[str]]:
        """Send ``command`` and expect ``patterns`` in order."""
        self.send(command)
        return [self.expect(p, timeout) for p in patterns]

    def call(self, command: str, timeout: float = 30) -> dict[str, Any]:
        """``--json``: send ``command`` and return its result line (event lines are skipped)."""
        self.send(command)
        while True:
            data: dict[str, Any] = json.loads(self.expect(r"^\{", timeout).string)
            if "command" in data:
                return data

    def close_input(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()


def test_the_prompt_trades_through_a_pipe_and_closes_on_chain(anvil: Anvil, tmp_path: Path) -> None:
    started = time.monotonic()
    chain = rpc_chain(anvil.url)
    with Processes(tmp_path / "logs", anvil.url, tmp_path / "deployments") as procs:
        procs.deploy()
        _, adjudicator, token = procs.contracts(chain)
        url = procs.wait_ready(procs.broker(tmp_path / "broker.db"))

        a = Prompt(procs, "trader-a", 1, url, tmp_path / "a.db")
        b = Prompt(procs, "trader-b", 2, url, tmp_path / "b.db", "--json")
        a.expect(r"^type help for the commands$")
        ready = json.loads(b.expect(r'^\{"event": "ready"').string)
        assert ready["trader"] == dev_address(2) and ready["channel_id"] is None
        assert ready["token"] == {"symbol": "tUSD", "decimals": "6"}

        # help, and bad input before and after opening: one error line each, nothing changes
        a.run("help", r"^buy MARKET AMOUNT LIMIT \[MAX_FEE\] ", r"^quit \| exit ")
        a.run("frobnicate 3", r"^error: invalid_input: unknown command 'frobnicate'; type help for the list$")
        a.run("buy 1 0.5 2010", r"^error: not_now: no channel yet: open one with `open DEPOSIT`$")
        a.run(
            "open 5000 cooperative",
            r"^channel (0x[0-9a-f]{64}) open \(cooperative\), version 1: you deposited 5000\.00 tUSD, "
            r"the broker 20000\.00 tUSD$",
        )
        a.run("buy 1 0.0000001 2010", r"^error: invalid_input: AMOUNT 0\.0000001 is off the grid")
        a.run("buy 9 1 2010", r"^error: invalid_input: market 9 is not traded here \(markets: 1, 2\)$")
        a.run("sell 1 0.5", r"^error: invalid_input: usage: sell MARKET AMOUNT LIMIT \[MAX_FEE\]$")
        a.run("buy 1 5 2010", r"^error: insufficient_funds: the order locks 10060\.05 tUSD, 5000\.00 tUSD")
        a.run("buy 1 0.5 2010", r"^order 1 placed: buy 0\.5 of market 1 XAU / USD at 2010\.00 tUSD or less, ")
        a.run("sell 2 0.01 70000 0.7", r"^order 2 placed: sell 0\.01 of market 2 BTC / USD at 70000\.00 tUSD or more")

        # B sells 0.3 oz into A's bid of 0.5: a batch crosses
        opened = b.call("open 5000")
        assert (opened["flow"], opened["trader_deposit"]) == ("server_initiative", str(DEPOSIT))
        assert b.call("cancel 7") == {
            "command": "cancel",
            "error": "invalid_input",
            "reason": "no open order 7 (open: none)",
        }
        sold = b.call("sell 1 0.3 1990")
        assert (sold["nonce"], sold["side"], sold["amount_synthetic"]) == ("1", "sell", "300000")
        filled = b.call("wait filled 1")
        assert filled["position"] == "-300000"

        # A: the fill shows as an event, and in every view
        a.run("wait 1", r"^waited 1 batch\(es\): market 1 XAU / USD batch \d+ at ")
        trade = next(line for line in a.transcript if line.startswith("* trade: "))
        fill = re.fullmatch(
            r"\* trade: batch (\d+) of market 1 XAU / USD at ([0-9.]+) tUSD: order 1 bought 0\.3 \(0\.3 of 0\.5\); "
            r"fee ([0-9.]+) tUSD; position 0\.3",
            trade,
        )
        assert fill is not None, trade
        a.run(
            "orders",
            r"^nonce +market +side +amount +filled +limit \(tUSD\) +max fee +expiry$",
            r"^1 +1 XAU / USD +buy +0\.5 +0\.3 +2010\.00 +1\.005 +\d{4}-\d\d-\d\d \d\d:00 UTC$",
            r"^2 +2 BTC / USD +sell +0\.01 +0 +70000\.00 +0\.70 ",
        )
        a.run(
            "balances",
            r"^available +\d+\.\d+ +\d+\.\d+$",
            r"^locked +403\.102 +0\.00$",  # what is left of order 1 (402.402) and order 2's fee (0.70)
            r"^deposited +5000\.00 +20000\.00$",
            r"^your equity at the marks: \d+\.\d+ tUSD",
        )
        a.run("positions", rf"^1 XAU / USD +0\.3 +\d+\.\d+ \(batch \d+\) +\d+\.\d+ +{re.escape(fill.group(3))}$")
        a.run("prices", r"^1 XAU / USD +\d+ +\d+\.\d\d +\d+$", r"^2 BTC / USD +\d+ +60000\.00 +\d+$")
        a.run("status", r"^flow +cooperative", r"^status +open$", r"^open orders +2$", r"^events ")

        # cancel one, a bad cancel, cancel the rest
        a.run("cancel 1", r"^order 1 cancelled \(0\.3 of 0\.5 had filled\): 402\.402 tUSD released")
        a.run("cancel 1", r"^error: invalid_input: no open order 1 \(open: 2\)$")
        a.run("cancel all", r"^order 2 cancelled \(0 of 0\.01 had filled\): 0\.70 tUSD released")
        a.run("orders", r"^no open orders$")

        # finalize and close: the chain pays what the prompt says
        _, pays = a.run(
            "finalize",
            r"^final state co-signed \(version \d+\): closed 0\.3 of market 1 XAU / USD at ",
            r"^it pays ([0-9.]+) tUSD to you and ([0-9.]+) tUSD to the broker: `close` submits it$",
        )
        (closed,) = a.run(
            "close",
            r"^closed on-chain in (0x[0-9a-f]{64}) \(gas \d+\): ([0-9.]+) tUSD to you, ([0-9.]+) tUSD to the broker; "
            r"your wallet holds ([0-9.]+) tUSD$",
        )
        a.run("close", r"^error: not_now: channel 0x[0-9a-f]{64} is closed already$")
        channel_id = bytes.fromhex(next(line for line in a.transcript if line.startswith("channel 0x"))[10:74])
        payout = close_payout(chain, adjudicator, closed.group(1), channel_id)
        assert payout.to_trader + payout.to_broker == DEPOSIT + 20_000 * USD
        assert closed.group(2) == pays.group(1) == _tokens(payout.to_trader)
        assert closed.group(3) == pays.group(2) == _tokens(payout.to_broker)
        wallet = balances(token, [1])[1]
        assert wallet == MINT - DEPOSIT + payout.to_trader
        assert closed.group(4) == _tokens(wallet)

        a.send("quit")
        assert a.process.wait(timeout=20) == 0, a.proc.tail()
        assert "Traceback" not in a.proc.err()

        # B finalizes and closes too, then its input ends: it stops cleanly
        final = b.call("finalize")
        assert final["final"] is True
        closed_b = b.call("close")
        assert closed_b["to_trader"] == final["to_trader"]
        assert closed_b["wallet"] == str(MINT - DEPOSIT + int(final["to_trader"])) == str(balances(token, [2])[2])
        b.close_input()
        assert b.process.wait(timeout=20) == 0, b.proc.tail()
        assert "Traceback" not in b.proc.err()
    print("\n".join(a.transcript))
    print(f"{time.monotonic() - started:.1f} s")


def test_a_restarted_prompt_tops_up_the_channel_it_opened_before(anvil: Anvil, tmp_path: Path) -> None:
    """The prompt of a later session (a new process on the same store) tops the channel up: the
    broker repeats its deposit notice when the trader resumes, and the agent waits for it."""
    chain = rpc_chain(anvil.url)
    with Processes(tmp_path / "logs", anvil.url, tmp_path / "deployments") as procs:
        procs.deploy()
        _, adjudicator, _ = procs.contracts(chain)
        url = procs.wait_ready(procs.broker(tmp_path / "broker.db"))
        first = Prompt(procs, "first", 3, url, tmp_path / "c.db")
        first.expect(r"^type help for the commands$")
        (opened,) = first.run("open 5000 cooperative", r"^channel (0x[0-9a-f]{64}) open \(cooperative\), version 1: ")
        first.send("quit")
        assert first.process.wait(timeout=20) == 0, first.proc.tail()

        later = Prompt(procs, "later", 3, url, tmp_path / "c.db")
        later.expect(r"^type help for the commands$")
        later.run("deposit 250.5", r"^deposited 250\.50 tUSD: your deposit is now 5250\.50 tUSD \(version \d+\)$")
        channel_id = bytes.fromhex(opened.group(1)[2:])
        assert adjudicator.status(channel_id).trader_deposit == DEPOSIT + 250_500_000
        later.send("quit")
        assert later.process.wait(timeout=20) == 0, later.proc.tail()
        assert "Traceback" not in later.proc.err()


def _tokens(amount: int) -> str:
    """Token base units as the prompt shows them (6 decimals, at least 2 shown)."""
    whole, fraction = divmod(amount, USD)
    digits = str(fraction).rjust(6, "0").rstrip("0").ljust(2, "0")
    return f"{whole}.{digits}"
