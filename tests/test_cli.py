"""tchan through the real console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from offchain.chain.deploy import DeployedContract, Deployment, load_deployment, write_deployment
from offchain.errors import DeploymentError
from offchain.localnet import free_port

TCHAN = str(Path(sys.executable).parent / "tchan")


def tchan(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TCHAN, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "command", [[], ["compile"], ["deploy"], ["demo"], ["gas"], ["broker"], ["trader"], ["watchtower"]]
)
def test_help(command: list[str]) -> None:
    run = tchan(*command, "--help")
    assert run.returncode == 0
    assert "usage: tchan" in run.stdout


def test_trader_help_offers_a_watchtower() -> None:
    run = tchan("trader", "--help")
    assert "--watchtower WS_URL" in run.stdout


def test_a_watchtower_that_is_not_a_websocket_url_is_one_clear_line(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text('[{"sleep": {"seconds": "0"}}]')
    run = tchan(
        "trader", "--rpc", "http://127.0.0.1:9", "--network", "local", "--broker-url", "ws://127.0.0.1:9",
        "--script", str(script), "--watchtower", "http://127.0.0.1:8766",
    )  # fmt: skip
    assert run.returncode == 1
    assert run.stderr.strip() == (
        "tchan: invalid_input: --watchtower must be a ws:// or wss:// URL, got 'http://127.0.0.1:8766'"
    )


def test_compile_check_passes_on_the_committed_artifacts() -> None:
    run = tchan("compile", "--check")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "artifacts match the sources" in run.stdout


def test_demo_shows_the_dispute_with_correct_payouts() -> None:
    run = tchan("demo")
    assert run.returncode == 0, run.stderr
    assert "the broker challenges with stale v1" in run.stdout
    assert "the trader refutes with v3" in run.stdout
    assert "trader: collateral $6,099 + 2 oz x $2,010 = $10,119" in run.stdout
    assert "broker: $49,881" in run.stdout
    assert "matches the off-chain payout rule: yes" in run.stdout


def test_unreachable_node_is_one_clear_line() -> None:
    run = tchan("deploy", "--rpc", f"http://127.0.0.1:{free_port()}", "--network", "x", "--dev-account", "0")
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tchan: chain: cannot reach a node at")


def test_bad_argument_is_rejected() -> None:
    run = tchan("deploy", "--rpc", "http://127.0.0.1:1", "--network", "x", "--dev-account", "zero")
    assert run.returncode == 2
    assert "invalid int value" in run.stderr


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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--network", "Bad Name", "--dev-account", "0"], "tchan: deployment: network name 'Bad Name'"),
        (["--network", "x", "--dev-account", "-1"], "tchan: invalid_input: --dev-account must be between"),
        (["--network", "x"], "tchan: invalid_input: choose a key"),
    ],
)
def test_bad_deploy_arguments_are_one_clear_line(args: list[str], message: str, tmp_path: Path) -> None:
    from offchain.localnet import Anvil

    with Anvil.start() as node:
        run = tchan("deploy", "--rpc", node.url, "--deployments", str(tmp_path), *args)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]
    assert run.stderr.startswith(message), run.stderr
    assert not list(tmp_path.iterdir()), "nothing deployed, nothing written"


def test_wrong_keystore_password_is_one_clear_line(tmp_path: Path) -> None:
    import json

    from eth_account import Account

    from offchain.localnet import Anvil

    keystore = tmp_path / "key.json"
    keystore.write_text(json.dumps(Account.encrypt(Account.create().key, "right horse battery")))
    password = tmp_path / "password"
    password.write_text("wrong\n")
    with Anvil.start() as node:
        run = tchan(
            "deploy",
            "--rpc",
            node.url,
            "--network",
            "x",
            "--deployments",
            str(tmp_path / "d"),
            "--keystore",
            str(keystore),
            "--password-file",
            str(password),
        )
    assert run.returncode == 1
    assert run.stderr.startswith(f"tchan: invalid_input: cannot open keystore {keystore}")
    assert len(run.stderr.strip().splitlines()) == 1
