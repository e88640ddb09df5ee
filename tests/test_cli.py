"""tchan through the real console script: help, and every way a user can get a command wrong
(a bad argument, a wrong chain id, a missing deployment, an unreachable node, a wrong keystore
password, a bad configuration file) gives one clear line on stderr and a non-zero exit, and
writes nothing."""

from __future__ import annotations

import argparse
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account

from offchain.chain.deploy import DeployedContract, Deployment, load_deployment, write_deployment
from offchain.cli import build_parser
from offchain.errors import DeploymentError
from offchain.localnet import Anvil, free_port
from tests.cli_helpers import one_line_error, tchan, tchan_process

SUBCOMMANDS = [
    name
    for action in build_parser()._actions
    if isinstance(action, argparse._SubParsersAction)
    for name in action.choices
]


@pytest.fixture(scope="module")
def node() -> Iterator[Anvil]:
    with Anvil.start() as anvil:
        yield anvil


# --------------------------------------------------------------------------- help


def test_every_subcommand_is_listed() -> None:
    assert {"compile", "deploy", "broker", "trader", "watchtower", "demo", "gas"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("command", [[], *([name] for name in SUBCOMMANDS)])
def test_help(command: list[str]) -> None:
    run = tchan(*command, "--help")
    assert run.returncode == 0
    assert "usage: tchan" in run.stdout


def test_trader_help_offers_a_watchtower_and_a_prompt() -> None:
    run = tchan_process("trader", "--help")
    assert "--watchtower WS_URL" in run.stdout
    assert "a prompt" in run.stdout


# --------------------------------------------------------------------------- bad arguments


def test_bad_argument_is_one_line_with_exit_2() -> None:
    run = tchan_process("deploy", "--dev-account", "zero")
    one_line_error(run, "tchan: usage: argument --dev-account: invalid int value: 'zero'", code=2)
    assert "tchan deploy --help" in run.stderr


def test_unknown_subcommand_is_one_line() -> None:
    one_line_error(tchan("fly"), "tchan: usage: argument COMMAND: invalid choice: 'fly'", code=2)


def test_debug_shows_the_traceback_instead(tmp_path: Path) -> None:
    run = tchan_process("deploy", "--rpc", f"http://127.0.0.1:{free_port()}", "--dev-account", "0", "--debug")
    assert run.returncode == 1
    assert "Traceback" in run.stderr and "NodeUnreachableError" in run.stderr


def test_a_watchtower_that_is_not_a_websocket_url_is_one_clear_line(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text('[{"sleep": {"seconds": "0"}}]')
    run = tchan(
        "trader", "--rpc", "http://127.0.0.1:9", "--network", "local", "--broker-url", "ws://127.0.0.1:9",
        "--script", str(script), "--watchtower", "http://127.0.0.1:8766",
    )  # fmt: skip
    one_line_error(run, "tchan: invalid_input: --watchtower must be a ws:// or wss:// URL, got 'http://127.0.0.1:8766'")


@pytest.mark.parametrize(
    "command",
    [
        ["trader", "--broker-url", "ws://127.0.0.1:9", "--script"],
        ["broker", "--market", "1,XAU / USD,2000000000"],
    ],
)
def test_a_negative_dispute_after_is_refused_before_the_node_is_asked(command: list[str], tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text('[{"sleep": {"seconds": "0"}}]')
    if command[-1] == "--script":
        command = [*command, str(script)]
    run = tchan(*command, "--rpc", "http://127.0.0.1:9", "--dispute-after", "-1")
    one_line_error(run, "tchan: invalid_input: --dispute-after must not be negative")
    run = tchan(*command, "--rpc", "http://127.0.0.1:9", "--chain-poll-seconds", "0")
    one_line_error(run, "tchan: invalid_input: --chain-poll-seconds must be positive")


def test_rpc_must_be_an_http_url() -> None:
    run = tchan("deploy", "--rpc", "127.0.0.1:8545", "--dev-account", "0")
    one_line_error(run, "tchan: invalid_input: --rpc must be an http:// or https:// URL")


@pytest.mark.parametrize(
    "command",
    [
        ["deploy", "--dev-account", "0"],
        ["broker", "--dev-account", "0", "--market", "1,XAU / USD,1"],
        ["watchtower", "--dev-account", "0"],
        ["trader", "--dev-account", "1", "--broker-url", "ws://127.0.0.1:9"],
    ],
)
def test_unreachable_node_is_one_clear_line(command: list[str], tmp_path: Path) -> None:
    run = tchan(*command, "--rpc", f"http://127.0.0.1:{free_port()}", cwd=tmp_path)
    one_line_error(run, "tchan: node_unreachable: cannot reach a node at http://127.0.0.1:")
    assert "is it running?" in run.stderr
    assert not list(tmp_path.iterdir()), "nothing written"


def test_the_default_local_network_suggests_tchan_localnet(tmp_path: Path) -> None:
    """Without --rpc or a config file, ``local`` is anvil on port 8545; when nothing answers there
    the error names the command that starts one (skipped when something does listen on 8545)."""
    import socket

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8545)) == 0:
            pytest.skip("something listens on 127.0.0.1:8545")
    run = tchan_process("deploy", "--dev-account", "0", cwd=tmp_path)
    one_line_error(run, "tchan: node_unreachable: cannot reach a node at http://127.0.0.1:8545")
    assert "tchan localnet" in run.stderr


# --------------------------------------------------------------------------- deployments and chain ids


def test_deployment_for_another_chain_id_is_not_overwritten(tmp_path: Path) -> None:
    contract = DeployedContract(
        "TradingChannelAdjudicator", "TradingChannelAdjudicator", "0x" + "11" * 20, "0x" + "22" * 32, 7
    )  # type: ignore[arg-type]
    write_deployment(tmp_path, Deployment("net", 1, {contract.name: contract}))
    with pytest.raises(DeploymentError, match="records chain id 1"):
        write_deployment(tmp_path, Deployment("net", 5, {contract.name: contract}))
    write_deployment(tmp_path, Deployment("net", 1, {contract.name: contract}))
    with pytest.raises(DeploymentError, match="is for chain id 1 but the node is chain id 5"):
        load_deployment(tmp_path, "net", expected_chain_id=5)
    with pytest.raises(DeploymentError, match="no deployment"):
        load_deployment(tmp_path, "other")
    with pytest.raises(DeploymentError, match="network name"):
        load_deployment(tmp_path, "../etc")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DeploymentError, match="not valid JSON"):
        load_deployment(tmp_path, "broken")


def _foreign_deployment(directory: Path, network: str, chain_id: int = 1) -> Path:
    contract = DeployedContract(
        "TradingChannelAdjudicator", "TradingChannelAdjudicator", "0x" + "11" * 20, "0x" + "22" * 32, 7
    )  # type: ignore[arg-type]
    return write_deployment(directory, Deployment(network, chain_id, {contract.name: contract}))


def test_deploy_refuses_to_overwrite_a_deployment_on_another_chain_before_spending_gas(
    node: Anvil, tmp_path: Path
) -> None:
    path = _foreign_deployment(tmp_path, "x")
    before = path.read_text()
    run = tchan("deploy", "--rpc", node.url, "--network", "x", "--deployments", str(tmp_path), "--dev-account", "0")
    one_line_error(run, f"tchan: deployment: {path} records chain id 1, the node is chain id 31337")
    assert path.read_text() == before


@pytest.mark.parametrize(
    "command",
    [
        ["broker", "--dev-account", "0", "--market", "1,XAU / USD,1"],
        ["watchtower", "--dev-account", "0"],
        ["trader", "--dev-account", "1", "--broker-url", "ws://127.0.0.1:9"],
    ],
)
def test_a_deployment_for_another_chain_id_is_refused(command: list[str], node: Anvil, tmp_path: Path) -> None:
    path = _foreign_deployment(tmp_path, "x")
    run = tchan(*command, "--rpc", node.url, "--network", "x", "--deployments", str(tmp_path))
    one_line_error(run, f"tchan: wrong_chain: {path} is for chain id 1 but the node is chain id 31337")


@pytest.mark.parametrize(
    "command",
    [
        ["broker", "--dev-account", "0", "--market", "1,XAU / USD,1"],
        ["watchtower", "--dev-account", "0"],
        ["trader", "--dev-account", "1", "--broker-url", "ws://127.0.0.1:9"],
    ],
)
def test_a_missing_deployment_says_to_deploy(command: list[str], node: Anvil, tmp_path: Path) -> None:
    run = tchan(*command, "--rpc", node.url, "--network", "nowhere", "--deployments", str(tmp_path))
    one_line_error(
        run, f"tchan: deployment: no deployment {tmp_path}/nowhere.json: run `tchan deploy --network nowhere` first"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--network", "Bad Name", "--dev-account", "0"], "tchan: deployment: network name 'Bad Name'"),
        (["--network", "x", "--dev-account", "-1"], "tchan: invalid_input: --dev-account must be 0 to 999"),
        (["--network", "x", "--dev-account", "1000"], "tchan: invalid_input: --dev-account must be 0 to 999"),
        (["--network", "x"], "tchan: invalid_input: choose a key"),
        (["--network", "x", "--mint", "-5", "--dev-account", "0"], "tchan: invalid_input: --mint must not be"),
    ],
)
def test_bad_deploy_arguments_are_one_clear_line(args: list[str], message: str, node: Anvil, tmp_path: Path) -> None:
    run = tchan("deploy", "--rpc", node.url, "--deployments", str(tmp_path), *args)
    one_line_error(run, message)
    assert not list(tmp_path.iterdir()), "nothing deployed, nothing written"


def test_deploy_json_is_one_document_and_progress_goes_to_stderr(node: Anvil, tmp_path: Path) -> None:
    run = tchan_process(
        "deploy", "--rpc", node.url, "--network", "j", "--deployments", str(tmp_path), "--dev-account", "0",
        "--feed", "XAU / USD", "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    assert document["chain_id"] == "31337" and document["network"] == "j"  # every integer as a decimal string
    written = load_deployment(tmp_path, "j", expected_chain_id=31337)
    assert document["contracts"]["PriceFeed:XAU / USD"]["address"] == written.feeds()["XAU / USD"]
    assert "deploying 3 contracts to chain 31337" in run.stderr and "done in" in run.stderr


# --------------------------------------------------------------------------- keys


def _keystore(tmp_path: Path, password: str = "right horse battery") -> Path:
    keystore = tmp_path / "key.json"
    keystore.write_text(json.dumps(Account.encrypt(Account.create().key, password)))
    return keystore


def _deploy_with(node: Anvil, tmp_path: Path, *key_args: str) -> subprocess.CompletedProcess[str]:
    deployments = tmp_path / "d"
    return tchan("deploy", "--rpc", node.url, "--network", "x", "--deployments", str(deployments), *key_args)


def _deploy_with_process(node: Anvil, tmp_path: Path, *key_args: str) -> subprocess.CompletedProcess[str]:
    deployments = tmp_path / "d"
    return tchan_process("deploy", "--rpc", node.url, "--network", "x", "--deployments", str(deployments), *key_args)


def test_wrong_keystore_password_is_one_clear_line(node: Anvil, tmp_path: Path) -> None:
    keystore = _keystore(tmp_path)
    password = tmp_path / "password"
    password.write_text("wrong\n")
    run = _deploy_with_process(node, tmp_path, "--keystore", str(keystore), "--password-file", str(password))
    one_line_error(run, f"tchan: keystore: cannot open keystore {keystore}: wrong password")
    assert not (tmp_path / "d").exists()


def test_a_file_that_is_not_a_keystore_is_one_clear_line(node: Anvil, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.json"
    bogus.write_text('{"hello": "world"}')
    password = tmp_path / "password"
    password.write_text("x\n")
    run = _deploy_with(node, tmp_path, "--keystore", str(bogus), "--password-file", str(password))
    one_line_error(run, f"tchan: keystore: cannot open keystore {bogus}: not a keystore")


def test_a_missing_password_without_a_terminal_is_one_clear_line(node: Anvil, tmp_path: Path) -> None:
    run = _deploy_with(node, tmp_path, "--keystore", str(_keystore(tmp_path)))
    one_line_error(run, "tchan: keystore: no terminal to ask the keystore password on: give --password-file FILE")


def test_keystore_and_dev_account_together_are_refused(node: Anvil, tmp_path: Path) -> None:
    run = _deploy_with(node, tmp_path, "--keystore", str(_keystore(tmp_path)), "--dev-account", "0")
    one_line_error(run, "tchan: invalid_input: choose one key")


def test_a_raw_private_key_is_not_an_option() -> None:
    run = tchan("deploy", "--private-key", "0x" + "11" * 32)
    one_line_error(run, "tchan: usage: unrecognized arguments: --private-key", code=2)


# --------------------------------------------------------------------------- the configuration file


def test_a_named_network_from_the_config_file(node: Anvil, tmp_path: Path) -> None:
    (tmp_path / "tchan.toml").write_text(f'[networks.devnet]\nrpc = "{node.url}"\nchain_id = 31337\n')
    run = tchan_process("deploy", "--network", "devnet", "--dev-account", "0", "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert load_deployment(tmp_path / "deployments", "devnet", expected_chain_id=31337).adjudicator


def test_a_configured_chain_id_that_does_not_match_the_node_is_refused(node: Anvil, tmp_path: Path) -> None:
    config = tmp_path / "networks.toml"
    config.write_text(f'[networks.mainnet]\nrpc = "{node.url}"\nchain_id = 1\n')
    run = tchan("deploy", "--config", str(config), "--network", "mainnet", "--dev-account", "0", cwd=tmp_path)
    one_line_error(run, "tchan: wrong_chain: network 'mainnet' is configured for chain id 1, but the node at")
    assert not (tmp_path / "deployments").exists()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("[networks.x\n", "tchan: config: cannot read"),
        ('[networks.x]\nrpc = "ftp://host"\n', "tchan: config: "),
        ('[networks.x]\nrpc = "http://h"\nchain_id = "one"\n', "tchan: config: "),
        ('[networks.x]\nrpc = "http://h"\ncolour = "red"\n', "tchan: config: "),
        ("[networks.y]\n", "tchan: config: network 'x' has no rpc URL"),
    ],
)
def test_a_bad_config_file_is_one_clear_line(config: str, message: str, tmp_path: Path) -> None:
    (tmp_path / "tchan.toml").write_text(config)
    one_line_error(tchan("deploy", "--network", "x", "--dev-account", "0", cwd=tmp_path), message)


def test_a_missing_config_file_is_one_clear_line(tmp_path: Path) -> None:
    run = tchan("deploy", "--config", str(tmp_path / "nope.toml"), "--dev-account", "0")
    one_line_error(run, f"tchan: config: configuration file {tmp_path}/nope.toml does not exist")


# --------------------------------------------------------------------------- compile


def test_compile_check_passes_on_the_committed_artifacts() -> None:
    run = tchan("compile", "--check")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "artifacts match the sources" in run.stdout
    run = tchan("compile", "--check", "--json")
    assert json.loads(run.stdout) == {"up_to_date": True, "stale": []}
