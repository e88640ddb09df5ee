"""The same code against a real JSON-RPC node: anvil from node_modules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from offchain.chain import errors
from offchain.chain.connection import rpc_chain
from offchain.chain.deploy import load_deployment
from offchain.localnet import ANVIL_CHAIN_ID, Anvil
from offchain.sandbox import USD, Sandbox, plain_state
from offchain.signing import co_sign

pytestmark = pytest.mark.anvil
TCHAN = str(Path(sys.executable).parent / "tchan")


def test_tchan_demo_runs_the_whole_story_on_anvil(anvil: Anvil, tmp_path: Path) -> None:
    """``tchan demo --rpc URL``: the same story as on the embedded chain, through the console script."""
    plot = tmp_path / "batch.png"
    run = subprocess.run(
        [TCHAN, "demo", "--rpc", anvil.url, "--plot", str(plot), "--json"], capture_output=True, text=True, timeout=180
    )
    assert run.returncode == 0, run.stdout + run.stderr
    document = json.loads(run.stdout)
    assert document["ok"] is True
    assert all(check["ok"] for check in document["checks"]) and len(document["checks"]) > 20
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_custom_errors_are_typed_on_a_json_rpc_node(anvil: Anvil) -> None:
    chain = rpc_chain(anvil.url)
    assert chain.chain_id == ANVIL_CHAIN_ID
    sb = Sandbox.create(chain)
    trader, broker = sb.party("trader", tokens=100 * USD), sb.party("broker", tokens=100 * USD)
    params = sb.channel_params(trader, broker)
    sb.adjudicator.deposit(trader.transactor, params, trader.address, 10 * USD)
    signed = co_sign(plain_state(params, 1, 10 * USD, 0), (trader.state_signer, broker.state_signer))
    sb.adjudicator.challenge(broker.transactor, params, signed)
    with pytest.raises(errors.DeadlineNotReached) as raised:
        sb.adjudicator.conclude(trader.transactor, params)
    assert raised.value.arguments["deadline"] == sb.adjudicator.status(params.channel_id).deadline
    with pytest.raises(errors.VersionNotNewer):
        sb.adjudicator.refute(trader.transactor, params, signed)


def test_tchan_deploy_writes_the_deployment_file(anvil: Anvil, tmp_path: Path) -> None:
    run = subprocess.run(
        [
            TCHAN,
            "deploy",
            "--rpc",
            anvil.url,
            "--network",
            "local",
            "--deployments",
            str(tmp_path),
            "--dev-account",
            "0",
            "--feed",
            "XAU / USD",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    deployment = load_deployment(tmp_path, "local", expected_chain_id=ANVIL_CHAIN_ID)
    assert set(deployment.contracts) == {"TradingChannelAdjudicator", "TestToken", "PriceFeed:XAU / USD"}
    raw = json.loads((tmp_path / "local.json").read_text())
    adjudicator = raw["contracts"]["TradingChannelAdjudicator"]
    assert adjudicator["artifact"] == "TradingChannelAdjudicator" and len(adjudicator["abi_sha256"]) == 64
    chain = rpc_chain(anvil.url)
    assert chain.w3.eth.get_code(deployment.adjudicator) != b""
    receipt = chain.w3.eth.get_transaction_receipt(adjudicator["tx_hash"])
    assert receipt["blockNumber"] == adjudicator["block"]
