"""The README's walkthrough, run exactly as written.

The walkthrough (between ``<!-- walkthrough: begin -->`` and ``<!-- walkthrough: end -->`` in
README.md) is a sequence of code blocks, each headed ``# terminal N: ...``:

- a ``sh`` block holds ``tchan`` commands typed in terminal N. ``tchan localnet``, ``tchan
  broker``, ``tchan watchtower`` and ``tchan trader`` without ``--script`` keep running in their
  terminal; every other command must finish with exit code 0 before the next line. ``^C`` is
  Ctrl-C in that terminal: the command running there must stop cleanly (exit 0).
- a ``text`` block holds lines typed at the prompt (``trader> ...``) of the trader running in
  terminal N.

This test runs those blocks in order, as subprocesses in a fresh directory: the traders in a
pseudo-terminal, as a user would see them (a command is done when the next prompt shows), and
the other long-running commands with their output in files. Then it checks what the story says
happened: bob closed cooperatively, the broker's stale challenge was refuted, alice's channel
concluded on her newest state and paid what ``settlement.payouts`` says.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shlex
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from offchain.chain.client import AdjudicatorClient, PriceFeedClient, Stage, TokenClient
from offchain.chain.connection import rpc_chain
from offchain.chain.deploy import load_deployment
from offchain.cli.common import LOCAL_RPC, dev_account_key, format_fraction
from offchain.settlement import OraclePrice, payouts
from offchain.store import open_store
from tests.e2e.trading_helpers import TCHAN

pytestmark = [pytest.mark.anvil, pytest.mark.slow]

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN, END = "<!-- walkthrough: begin -->", "<!-- walkthrough: end -->"
SERVERS = {"localnet": "press Ctrl-C to stop", "broker": " ready on ws://", "watchtower": " ready on ws://"}
PROMPT = "trader> "
STEP_SECONDS = 90.0


@dataclass(frozen=True)
class Block:
    kind: str  # "sh" or "text"
    terminal: int
    lines: tuple[str, ...]


def walkthrough_blocks(readme: str) -> list[Block]:
    """The walkthrough's code blocks, in order, with their terminal and their typed lines."""
    section = readme.split(BEGIN, 1)[1].split(END, 1)[0]
    blocks = []
    for kind, body in re.findall(r"```(sh|text)\n(.*?)```", section, flags=re.S):
        lines = body.replace("\\\n", " ").splitlines()
        head = re.match(r"# terminal (\d+)", lines[0])
        assert head, f"a walkthrough block must start with '# terminal N': {lines[0]!r}"
        typed = [line.strip() for line in lines[1:] if line.strip() and not line.lstrip().startswith("#")]
        blocks.append(Block(kind, int(head.group(1)), tuple(typed)))
    return blocks


@dataclass
class Terminal:
    """One terminal: the long-running command in it, if any."""

    number: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    pty_fd: int | None = None
    screen: bytearray = field(default_factory=bytearray)
    reader: threading.Thread | None = None
    transcript: list[str] = field(default_factory=list)

    def text(self) -> str:
        if self.pty_fd is not None:
            return self.screen.decode(errors="replace").replace("\r\n", "\n")
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def start_server(self, argv: list[str], ready: str) -> None:
        self.log = self.directory / f"terminal-{self.number}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                argv, cwd=self.directory, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.wait_for(lambda: ready in self.text(), f"{shlex.join(argv[1:3])} to be ready")

    def start_prompt(self, argv: list[str]) -> None:
        primary, secondary = pty.openpty()
        self.pty_fd = primary
        self.process = subprocess.Popen(
            argv, cwd=self.directory, stdin=secondary, stdout=secondary, stderr=secondary, start_new_session=True
        )
        os.close(secondary)
        self.reader = threading.Thread(target=self._read_pty, daemon=True)
        self.reader.start()
        self.wait_for(lambda: self.prompts() >= 1, "the trader's first prompt")

    def _read_pty(self) -> None:
        assert self.pty_fd is not None
        while True:
            ready, _, _ = select.select([self.pty_fd], [], [], 0.2)
            if not ready:
                if self.process is not None and self.process.poll() is not None:
                    return
                continue
            try:
                chunk = os.read(self.pty_fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.screen.extend(chunk)

    def prompts(self) -> int:
        return self.text().count(PROMPT)

    def type(self, line: str) -> None:
        """Type ``line`` at the prompt and wait for the next prompt (or, for quit, the exit)."""
        assert self.pty_fd is not None and self.process is not None, f"no prompt in terminal {self.number}"
        before = self.prompts()
        os.write(self.pty_fd, (line + "\n").encode())
        if line in ("quit", "exit"):
            self.stopped()
            return
        self.wait_for(lambda: self.prompts() > before, f"{line!r} to finish")

    def interrupt(self) -> None:
        """Ctrl-C: the running command stops cleanly."""
        assert self.process is not None, f"nothing runs in terminal {self.number}"
        self.process.send_signal(signal.SIGINT)
        self.stopped()

    def stopped(self) -> None:
        assert self.process is not None
        try:
            code = self.process.wait(timeout=STEP_SECONDS)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"terminal {self.number} did not stop\n{self.text()[-3000:]}") from None
        assert code == 0, f"terminal {self.number} exited {code}\n{self.text()[-3000:]}"
        if self.reader is not None:
            self.reader.join(timeout=5)
        self.transcript.append(self.text())
        if self.pty_fd is not None:
            os.close(self.pty_fd)
        self.process, self.pty_fd, self.screen = None, None, bytearray()

    def wait_for(self, predicate: object, what: str) -> None:
        assert callable(predicate)
        deadline = time.monotonic() + STEP_SECONDS
        while not predicate():
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"terminal {self.number} exited while waiting for {what}\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"terminal {self.number}: timed out waiting for {what}\n{self.text()[-3000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def run_command(terminal: Terminal, argv: list[str]) -> str:
    assert terminal.process is None, f"terminal {terminal.number} is busy"
    done = subprocess.run(argv, cwd=terminal.directory, capture_output=True, text=True, timeout=STEP_SECONDS)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{shlex.join(argv)} exited {done.returncode}:\n{output}"
    terminal.transcript.append(output)
    return output


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    assert port_is_free(8545) and port_is_free(8765), "the walkthrough needs ports 8545 and 8765 free"
    blocks = walkthrough_blocks(README.read_text())
    assert len(blocks) >= 6, "the walkthrough lost its blocks"
    terminals: dict[int, Terminal] = {}
    outputs: dict[str, str] = {}
    try:
        for block in blocks:
            terminal = terminals.setdefault(block.terminal, Terminal(block.terminal, tmp_path))
            for line in block.lines:
                if block.kind == "text":
                    assert line.startswith(PROMPT), f"prompt blocks hold typed lines: {line!r}"
                    terminal.type(line[len(PROMPT) :])
                elif line == "^C":
                    terminal.interrupt()
                else:
                    argv = shlex.split(line)
                    assert argv[0] == "tchan", f"the walkthrough runs tchan commands only: {line!r}"
                    argv[0] = TCHAN
                    subcommand = argv[1]
                    if subcommand in SERVERS:
                        terminal.start_server(argv, SERVERS[subcommand])
                    elif subcommand == "trader" and "--script" not in argv:
                        terminal.start_prompt(argv)
                    else:
                        outputs[subcommand] = run_command(terminal, argv)
        check_the_story(tmp_path, terminals, outputs)
    finally:
        for terminal in terminals.values():
            terminal.kill()


def check_the_story(directory: Path, terminals: dict[int, Terminal], outputs: dict[str, str]) -> None:
    """What the walkthrough says happened, read back from the chain and the stores."""
    transcript = "\n".join(t for terminal in terminals.values() for t in terminal.transcript)
    assert "closed on-chain in 0x" in transcript, "bob closed cooperatively"
    assert "refuted version 2 of channel" in outputs["refute"]
    chain = rpc_chain(LOCAL_RPC)
    deployment = load_deployment(directory / "deployments", "local", expected_chain_id=chain.chain_id)
    adjudicator = AdjudicatorClient(chain, deployment.adjudicator)
    token = TokenClient(chain, deployment.token)
    with open_store(str(directory / "alice.db")) as store:
        (record,) = store.channels()
        newest = store.latest_co_signed(record.channel_id)
        assert newest is not None
    status = adjudicator.status(record.params.channel_id)
    assert status.stage == Stage.CONCLUDED
    gold = PriceFeedClient(chain, deployment.feeds()["XAU / USD"])
    expected = payouts(
        record.params,
        newest.state,
        newest.state.balances.trader_deposit,
        newest.state.balances.broker_deposit,
        {1: OraclePrice(gold.latest().answer, gold.decimals())},  # gold: the only market alice holds
        token.decimals(),
    )
    paid = re.search(r"trader 0x[0-9a-fA-F]{40}: ([0-9.]+) tUSD \((\d+)\)", outputs["conclude"])
    assert paid is not None, outputs["conclude"]
    assert int(paid.group(2)) == expected.to_trader  # whole tokens, then the exact base units
    assert paid.group(1) == format_fraction(expected.to_trader, 10 ** token.decimals(), 2)
    from eth_account import Account

    alice = Account.from_key(dev_account_key(1)).address
    assert f"{token.balance_of(alice)}" in outputs["balance"]
