"""``tchan localnet`` and ``tchan oracle`` against real anvil nodes: the printed dev accounts are
anvil's, signals stop the node cleanly, pushed prices are what the feeds answer on-chain, and every
refusal is one line with nothing pushed.

Both commands run through the real console script, as subprocesses, wherever a process of their
own matters: a node or an oracle that runs until a signal stops it, and the console script's exit
code. The runs that end by themselves (price files, a bounded random walk, refusals, ``--help``)
go through the same entry point in this process (:func:`tests.cli_helpers.tchan`), which saves a
Python start-up per run."""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice, pairwise
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from offchain.chain.client import PriceFeedClient, TokenClient
from offchain.chain.connection import Chain, rpc_chain
from offchain.chain.deploy import load_deployment
from offchain.cli import build_parser, main
from offchain.cli.common import ANVIL_MNEMONIC, dev_account_key
from offchain.cli.oracle import MAX_ANSWER, format_price, load_price_file, parse_price, random_walk
from offchain.errors import ValidationError
from offchain.localnet import ANVIL_CHAIN_ID, Anvil, free_port, port_in_use
from offchain.types import Address
from tests.cli_helpers import TCHAN, tchan, tchan_process

from .trading_helpers import FEEDS, NETWORK, Processes, dev_address

DECIMALS = 8  # what `tchan deploy --feed` gives a feed
ACCOUNT_ROW = re.compile(r"^(\d+)\s+(0x[0-9a-fA-F]{40})\s+(0x[0-9a-f]{64})\s+(\S+)$")
PUSH_LINE = re.compile(r"^(.+?)  round (\d+)  price (\S+)  answer (\d+)  tx (0x[0-9a-f]{64})$")


def one_error_line(run: subprocess.CompletedProcess[str], prefix: str) -> str:
    """The run failed with exit code 1 and one stderr line starting with ``prefix``."""
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), run.stderr
    assert run.stdout == ""
    return lines[0]


def wait_for_line(read: Any, predicate: Any, proc: subprocess.Popen[bytes], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in read().splitlines():
            if predicate(line):
                return str(line)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no such line (exit {proc.poll()}):\n{read()}")


def anvil_processes_on(port: int) -> list[int]:
    """Pids of anvil processes started with ``--port PORT`` (Linux /proc; [] elsewhere)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"anvil") and b"--port" in argv and str(port).encode() in argv:
            pids.append(int(cmdline.parent.name))
    return pids


# --------------------------------------------------------------------------- the random walk (no node)


def test_the_random_walk_is_deterministic_positive_and_within_its_step() -> None:
    start = parse_price("2000", DECIMALS, "start")
    walk = list(islice(random_walk(start, 50, 7, "XAU / USD"), 200))
    assert walk == list(islice(random_walk(start, 50, 7, "XAU / USD"), 200))
    assert walk != list(islice(random_walk(start, 50, 8, "XAU / USD"), 200))
    assert walk[0] == start and len(set(walk)) > 100
    for before, after in pairwise(walk):
        assert before * 9950 // 10_000 <= after <= before * 10_050 // 10_000
    wild = list(islice(random_walk(1000, 9999, 1, "X"), 2000))  # steps of up to -99.99 %
    assert min(wild) >= 1 and max(wild) <= MAX_ANSWER


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("no-header.csv", "XAU / USD,2000\n", "line 1: the first row must be the header 'feed,price'"),
        ("negative.csv", "feed,price\nXAU / USD,-1\n", "line 2: price '-1' is not a decimal number"),
        ("empty.csv", "feed,price\n# nothing\n", "holds no prices"),
        ("no-feed.csv", "feed,price\n,2000\n", "line 2: the feed description is empty"),
        ("object.json", '{"feed": "XAU / USD", "price": "1"}', "must be a JSON list"),
        ("extra-key.json", '[{"feed": "XAU / USD", "price": "1", "at": "0"}]', "entry 1: expected exactly"),
        ("broken.json", "[{", "is not valid JSON"),
    ],
)
def test_malformed_price_files_are_refused_with_where(tmp_path: Path, name: str, text: str, reason: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValidationError) as raised:
        load_price_file(path)
    assert str(path) in raised.value.reason and reason in raised.value.reason


def test_prices_convert_exactly_and_refuse_what_a_feed_cannot_hold() -> None:
    assert parse_price("2012.50", 8, "p") == 201_250_000_000
    assert parse_price("0.00000001", 8, "p") == 1
    assert parse_price("61000.000000000", 8, "p") == 6_100_000_000_000  # zeros past the 8th decimal are exact
    assert format_price(201_250_000_000, 8) == "2012.5" and format_price(1, 8) == "0.00000001"
    for bad in ("1e3", "-5", "+5", "2,000", "", "12.", ".5", "nan", "0", "0.000000001", str(2**128)):
        with pytest.raises(ValidationError):
            parse_price(bad, 8, "p")


# --------------------------------------------------------------------------- tchan localnet


@pytest.mark.anvil
def test_localnet_prints_anvils_dev_accounts_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    out, err = tmp_path / "localnet.out", tmp_path / "localnet.err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen([TCHAN, "localnet", "--port", str(port), "--accounts", "3"], stdout=o, stderr=e)
    try:
        wait_for_line(out.read_text, lambda line: line == "press Ctrl-C to stop", proc)
        text = out.read_text()
        assert f"anvil on http://127.0.0.1:{port}  (chain id {ANVIL_CHAIN_ID}, prague rules" in text
        assert "PUBLIC, well-known test keys" in text and ANVIL_MNEMONIC in text
        rows = [m.groups() for line in text.splitlines() if (m := ACCOUNT_ROW.match(line))]
        assert [int(r[0]) for r in rows] == [0, 1, 2]
        for index, address, key, balance in rows:
            assert key == "0x" + dev_account_key(int(index)).hex()
            assert address == Account.from_key(dev_account_key(int(index))).address == dev_address(int(index))
            assert balance == "10000"
        chain = rpc_chain(f"http://127.0.0.1:{port}")
        assert chain.chain_id == ANVIL_CHAIN_ID
        assert list(chain.w3.eth.accounts) == [r[1] for r in rows]
        assert anvil_processes_on(port) != [] or not Path("/proc").is_dir()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not port_in_use(port)
    assert anvil_processes_on(port) == []
    assert "anvil stopped (exit code 0)" in err.read_text()


@pytest.mark.anvil
def test_localnet_json_with_state_stops_on_sigterm_and_keeps_the_chain(tmp_path: Path) -> None:
    state, port = tmp_path / "chain-state.json", free_port()
    args = [
        TCHAN,
        "localnet",
        "--port",
        str(port),
        "--accounts",
        "2",
        "--balance",
        "7",
        "--state",
        str(state),
        "--json",
    ]

    def run_once() -> dict[str, Any]:
        with (tmp_path / "out").open("wb") as o, (tmp_path / "err").open("wb") as e:
            proc = subprocess.Popen(args, stdout=o, stderr=e)
        try:
            line = wait_for_line((tmp_path / "out").read_text, lambda line: line.startswith("{"), proc)
            data: dict[str, Any] = json.loads(line)
            chain = rpc_chain(data["rpc"])
            data["block_seen"] = chain.w3.eth.block_number
            chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0, (tmp_path / "err").read_text()
            return data
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    first = run_once()
    assert first["rpc"] == f"http://127.0.0.1:{port}" and first["chain_id"] == str(ANVIL_CHAIN_ID)
    assert [(a["index"], a["address"], a["private_key"]) for a in first["accounts"]] == [
        (str(n), dev_address(n), "0x" + dev_account_key(n).hex()) for n in range(2)
    ]
    assert {a["balance_wei"] for a in first["accounts"]} == {str(7 * 10**18)}
    assert state.is_file() and not port_in_use(port)
    second = run_once()  # the block mined in the first run was written to --state and loaded again
    assert second["block_seen"] == first["block_seen"] + 1
    assert not port_in_use(port) and anvil_processes_on(port) == []


@pytest.mark.anvil
def test_every_account_localnet_funds_takes_dev_account_and_gets_minted_tokens(tmp_path: Path) -> None:
    """``tchan localnet --accounts 12``: ``--dev-account 11`` deploys, and ``deploy --mint`` gives
    each of the 12 funded accounts the test token (not only the first 10)."""
    port = free_port()
    with (tmp_path / "out").open("wb") as o, (tmp_path / "err").open("wb") as e:
        proc = subprocess.Popen([TCHAN, "localnet", "--port", str(port), "--accounts", "12"], stdout=o, stderr=e)
    try:
        wait_for_line((tmp_path / "out").read_text, lambda line: line == "press Ctrl-C to stop", proc)
        assert "use them with --dev-account N (0 to 11)" in (tmp_path / "out").read_text()
        rpc = f"http://127.0.0.1:{port}"
        deployments = tmp_path / "deployments"
        run = tchan(
            "deploy", "--rpc", rpc, "--network", NETWORK, "--deployments", str(deployments),
            "--dev-account", "11", "--mint", "5", "--json",
        )  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        token = TokenClient(rpc_chain(rpc), load_deployment(deployments, NETWORK).token)
        assert [token.balance_of(Address(dev_address(n))) for n in range(12)] == [5] * 12
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)


@pytest.mark.anvil
def test_localnet_on_a_taken_port_is_one_line(anvil: Anvil) -> None:
    run = tchan_process("localnet", "--port", str(anvil.port), timeout=60)  # the console script's exit code
    one_error_line(run, f"tchan: chain: port {anvil.port} on 127.0.0.1 is already in use")
    with socket.socket() as sock:  # a listener that is not a node at all
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        run = tchan("localnet", "--port", str(sock.getsockname()[1]))
    one_error_line(run, "tchan: chain: port")


# --------------------------------------------------------------------------- tchan oracle


@dataclass
class Deployed:
    chain: Chain
    rpc: str
    deployments: Path
    feeds: dict[str, PriceFeedClient]

    def args(self, account: int = 0) -> list[str]:
        return ["--rpc", self.rpc, "--network", NETWORK, "--deployments", str(self.deployments),
                "--dev-account", str(account)]  # fmt: skip

    def rounds(self) -> dict[str, int]:
        return {d: int(f.contract.functions.latestRound().call()) for d, f in self.feeds.items()}

    def answer(self, feed: str, round_id: int) -> int:
        _, answer, _, _, _ = self.feeds[feed].contract.functions.getRoundData(round_id).call()
        return int(answer)


@pytest.fixture(scope="module")
def deployed(anvil: Anvil, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """The stack deployed with ``tchan deploy --feed 'XAU / USD' --feed 'BTC / USD'`` (dev account 0
    owns the feeds)."""
    base = tmp_path_factory.mktemp("oracle")
    processes = Processes(base / "logs", anvil.url, base / "deployments")
    feeds = [arg for feed in FEEDS for arg in ("--feed", feed)]
    run = tchan("deploy", *processes.node_args(0), "--mint", "0", *feeds)  # as Processes.deploy(mint=0)
    assert run.returncode == 0, run.stdout + run.stderr
    chain = rpc_chain(anvil.url)
    deployment = load_deployment(base / "deployments", NETWORK, expected_chain_id=chain.chain_id)
    assert sorted(deployment.feeds()) == sorted(FEEDS)
    yield Deployed(
        chain, anvil.url, base / "deployments", {d: PriceFeedClient(chain, a) for d, a in deployment.feeds().items()}
    )


def pushes_of(stdout: str) -> list[tuple[str, int, str, int]]:
    """(feed, round, price, answer) of every push line."""
    found = []
    for line in stdout.splitlines():
        match = PUSH_LINE.match(line)
        assert match, f"not a push line: {line!r}"
        found.append((match[1], int(match[2]), match[3], int(match[4])))
    return found


@pytest.mark.anvil
def test_oracle_replays_a_csv_price_file(deployed: Deployed, tmp_path: Path) -> None:
    before = deployed.rounds()
    prices = tmp_path / "prices.csv"
    prices.write_text("feed,price\n# gold first\nXAU / USD,2012.50\n\nBTC / USD , 61000\nXAU / USD,2013.25\n")
    run = tchan("oracle", *deployed.args(), "--prices", str(prices), "--interval", "0")
    assert run.returncode == 0, run.stderr
    x, b = before["XAU / USD"], before["BTC / USD"]
    assert pushes_of(run.stdout) == [
        ("XAU / USD", x + 1, "2012.5", 201_250_000_000),
        ("BTC / USD", b + 1, "61000", 6_100_000_000_000),
        ("XAU / USD", x + 2, "2013.25", 201_325_000_000),
    ]
    assert deployed.answer("XAU / USD", x + 1) == 201_250_000_000
    assert deployed.feeds["XAU / USD"].latest().answer == 201_325_000_000
    assert deployed.feeds["BTC / USD"].latest().answer == 6_100_000_000_000


@pytest.mark.anvil
def test_oracle_replays_a_json_price_file_with_a_json_report(deployed: Deployed, tmp_path: Path) -> None:
    before = deployed.rounds()
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps([{"feed": "BTC / USD", "price": "60500.12345678"}]))
    run = tchan("oracle", *deployed.args(), "--prices", str(prices), "--interval", "0", "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["stopped"] is False and report["oracle"] == dev_address(0)
    [push] = report["pushes"]
    assert (push["feed"], push["round"], push["price"], push["answer"]) == (
        "BTC / USD", str(before["BTC / USD"] + 1), "60500.12345678", "6050012345678",
    )  # fmt: skip
    receipt = deployed.chain.w3.eth.get_transaction_receipt(push["tx"])
    assert receipt["status"] == 1 and receipt["blockNumber"] == int(push["block"])
    assert deployed.feeds["BTC / USD"].latest().answer == 6_050_012_345_678
    assert "BTC / USD  round" in run.stderr  # the per-push lines went to stderr


@pytest.mark.anvil
def test_oracle_random_walk_pushes_the_seeded_walk(deployed: Deployed) -> None:
    before = deployed.rounds()
    run = tchan(
        "oracle", *deployed.args(), "--random-walk", "--feed", "XAU / USD", "--start", "1999.5",
        "--feed", "BTC / USD", "--start", "60000", "--step-bps", "100", "--steps", "4", "--seed", "42",
        "--interval", "0",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    pushes = pushes_of(run.stdout)
    expected = {
        "XAU / USD": list(islice(random_walk(199_950_000_000, 100, 42, "XAU / USD"), 4)),
        "BTC / USD": list(islice(random_walk(6_000_000_000_000, 100, 42, "BTC / USD"), 4)),
    }
    assert [p[0] for p in pushes] == ["XAU / USD", "BTC / USD"] * 4
    for feed, answers in expected.items():
        mine = [p for p in pushes if p[0] == feed]
        assert [p[3] for p in mine] == answers
        assert [p[1] for p in mine] == [before[feed] + n for n in range(1, 5)]
        assert [p[2] for p in mine] == [format_price(a, DECIMALS) for a in answers]
        assert [deployed.answer(feed, r) for _, r, _, _ in mine] == answers  # every round, on-chain
        assert deployed.feeds[feed].latest().answer == answers[-1]
    assert expected["XAU / USD"][0] == 199_950_000_000 and len(set(expected["XAU / USD"])) > 1


@pytest.mark.anvil
def test_oracle_stops_cleanly_on_ctrl_c(deployed: Deployed, tmp_path: Path) -> None:
    out, err = tmp_path / "oracle.out", tmp_path / "oracle.err"
    args = [*deployed.args(), "--random-walk", "--feed", "XAU / USD", "--start", "2000", "--interval", "0.2", "--json"]
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen([TCHAN, "oracle", *args], stdout=o, stderr=e, stdin=subprocess.DEVNULL)
    try:
        wait_for_line(err.read_text, lambda line: "round" in line and "  tx 0x" in line, proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    report = json.loads(out.read_text())
    assert report["stopped"] is True and report["pushes"]
    last = report["pushes"][-1]
    assert deployed.feeds["XAU / USD"].latest().round_id == int(last["round"])
    assert deployed.feeds["XAU / USD"].latest().answer == int(last["answer"])


@pytest.mark.anvil
def test_oracle_refusals_are_one_line_and_push_nothing(deployed: Deployed, tmp_path: Path) -> None:
    before = deployed.rounds()
    good = tmp_path / "good.csv"
    good.write_text("feed,price\nXAU / USD,2000\n")
    malformed = {
        "late-bad-price.csv": (
            "feed,price\nXAU / USD,2000\nBTC / USD,60000\nXAU / USD,2,001.5\n",
            "line 4: expected 2",
        ),
        "too-precise.csv": ("feed,price\nXAU / USD,2000\nBTC / USD,1.123456789\n", "more decimals than the feed's 8"),
        "float.json": ('[{"feed": "XAU / USD", "price": "2000"}, {"feed": "BTC / USD", "price": 6e4}]', "entry 2"),
    }
    runs: dict[str, tuple[subprocess.CompletedProcess[str], str]] = {}

    def attempt(name: str, *args: str, expect: str) -> None:
        runs[name] = (tchan("oracle", *args), expect)

    for name, (text, _) in malformed.items():
        (tmp_path / name).write_text(text)
        attempt(
            name, *deployed.args(), "--prices", str(tmp_path / name), expect=f"tchan: invalid_input: {tmp_path / name}"
        )
    attempt(
        "unknown feed", *deployed.args(), "--random-walk", "--feed", "EUR / USD", "--start", "1.1", "--once",
        expect="tchan: invalid_input: no feed 'EUR / USD' in deployment 'local'; it has 'BTC / USD', 'XAU / USD'",
    )  # fmt: skip
    attempt(
        "not the owner", *deployed.args(account=1), "--prices", str(good),
        expect=f"tchan: not_feed_owner: {dev_address(1)} does not own feed 'XAU / USD'",
    )  # fmt: skip
    unreachable = f"http://127.0.0.1:{free_port()}"
    attempt(
        "unreachable", "--rpc", unreachable, "--deployments", str(deployed.deployments), "--dev-account", "0",
        "--prices", str(good), expect=f"tchan: node_unreachable: cannot reach a node at {unreachable}",
    )  # fmt: skip
    for name, (run, expect) in runs.items():
        line = one_error_line(run, expect)
        if name in malformed:
            assert malformed[name][1] in line, line
    assert deployed.rounds() == before  # nothing was pushed


@pytest.mark.parametrize("command", ["localnet", "oracle"])
def test_help_describes_every_option(command: str) -> None:
    run = tchan(command, "--help")
    assert run.returncode == 0 and f"usage: tchan {command}" in run.stdout
    [subparsers] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    parser = subparsers.choices[command]
    options = [a for a in parser._actions if a.option_strings]
    assert len(options) >= 8
    for action in options:
        assert action.help and len(action.help) > 10, action.option_strings
        assert action.option_strings[-1] in run.stdout


def test_localnet_without_npm_ci_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import offchain.localnet

    monkeypatch.setattr(offchain.localnet, "project_root", lambda: tmp_path)  # no node_modules there
    assert main(["localnet", "--port", str(free_port())]) == 1
    err = capsys.readouterr().err
    assert err == f"tchan: chain: anvil not found at {tmp_path}/node_modules/.bin/anvil: run `npm ci`\n"
