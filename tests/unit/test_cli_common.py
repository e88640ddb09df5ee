"""The pure parts of the command line: which network a command talks to, the configuration file,
how results print."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from offchain.cli.common import (
    LOCAL_RPC,
    Output,
    dev_account_key,
    jsonable,
    load_config,
    load_key,
    resolve_network,
    table,
)
from offchain.errors import ConfigError, DeploymentError, KeystoreError, ValidationError


def namespace(**kw: object) -> argparse.Namespace:
    defaults: dict[str, object] = {
        "network": "local",
        "rpc": None,
        "config": None,
        "deployments": None,
        "keystore": None,
        "password_file": None,
        "dev_account": None,
    }
    defaults.update(kw)
    return argparse.Namespace(**defaults)


@pytest.fixture(autouse=True)
def in_empty_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TCHAN_CONFIG", raising=False)


def test_local_needs_no_configuration() -> None:
    network = resolve_network(namespace())
    assert (network.name, network.rpc, network.chain_id, network.deployments) == (
        "local",
        LOCAL_RPC,
        None,
        Path("deployments"),
    )


def test_rpc_overrides_the_configuration(tmp_path: Path) -> None:
    (tmp_path / "tchan.toml").write_text('[networks.local]\nrpc = "http://10.0.0.1:8545"\nchain_id = 31337\n')
    assert resolve_network(namespace()).rpc == "http://10.0.0.1:8545"
    assert resolve_network(namespace(rpc="http://127.0.0.1:9")).rpc == "http://127.0.0.1:9"
    assert resolve_network(namespace()).chain_id == 31337


def test_a_named_network_with_its_own_deployments_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "elsewhere.toml"
    config.write_text('[networks.sepolia]\nrpc = "https://rpc.example"\nchain_id = 11155111\ndeployments = "d"\n')
    monkeypatch.setenv("TCHAN_CONFIG", str(config))
    network = resolve_network(namespace(network="sepolia"))
    assert (network.rpc, network.chain_id, network.deployments) == ("https://rpc.example", 11155111, Path("d"))
    assert resolve_network(namespace(network="sepolia", deployments="x")).deployments == Path("x")


def test_an_unknown_network_needs_an_rpc_url() -> None:
    with pytest.raises(ConfigError, match=r"network 'sepolia' has no rpc URL \(no tchan.toml here\)"):
        resolve_network(namespace(network="sepolia"))
    assert resolve_network(namespace(network="sepolia", rpc="http://h:1")).rpc == "http://h:1"


@pytest.mark.parametrize(
    "text",
    [
        "networks = 3\n",
        "[networks]\nlocal = 3\n",
        '[networks.a]\nrpc = "ws://h"\n',
        "[networks.a]\nrpc = 5\n",
        '[networks.a]\nrpc = "http://h"\nchain_id = 0\n',
        '[networks.a]\nrpc = "http://h"\nchain_id = true\n',
        '[networks.a]\nrpc = "http://h"\ndeployments = 1\n',
        '[networks.a]\nurl = "http://h"\n',
        "not toml at all [",
    ],
)
def test_a_malformed_configuration_is_refused(text: str, tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path)


def test_bad_names_and_urls_are_refused() -> None:
    with pytest.raises(DeploymentError, match="network name"):
        resolve_network(namespace(network="../x"))
    with pytest.raises(ValidationError, match="--rpc must be"):
        resolve_network(namespace(rpc="localhost:8545"))


def test_dev_accounts_only_on_anvil_and_in_range() -> None:
    assert load_key(namespace(dev_account=1), 31337) == dev_account_key(1)
    assert dev_account_key(0).hex() == "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
    with pytest.raises(ValidationError, match="local anvil chains"):
        load_key(namespace(dev_account=1), 1)
    assert load_key(namespace(dev_account=999), 31337) == dev_account_key(999)  # tchan localnet --accounts 1000
    with pytest.raises(ValidationError, match="0 to 999"):
        load_key(namespace(dev_account=1000), 31337)
    with pytest.raises(ValidationError, match="choose a key"):
        load_key(namespace(), 31337)


def test_keystores(tmp_path: Path) -> None:
    from eth_account import Account

    key = bytes(range(1, 33))
    keystore = tmp_path / "k.json"
    keystore.write_text(json.dumps(Account.encrypt(key, "pw", iterations=2)))
    password = tmp_path / "pw"
    password.write_text("pw\n")
    assert load_key(namespace(keystore=str(keystore), password_file=str(password)), 1) == key
    password.write_text("nope\n")
    with pytest.raises(KeystoreError, match="wrong password"):
        load_key(namespace(keystore=str(keystore), password_file=str(password)), 1)
    with pytest.raises(KeystoreError, match="cannot read keystore"):
        load_key(namespace(keystore=str(tmp_path / "missing.json"), password_file=str(password)), 1)
    with pytest.raises(KeystoreError, match="cannot read the password file"):
        load_key(namespace(keystore=str(keystore), password_file=str(tmp_path / "missing")), 1)


def test_json_carries_integers_as_decimal_strings() -> None:
    assert jsonable({"a": 10**30, "b": [1, b"\x01"], "c": True, "d": None, "e": 1.5, 7: "x"}) == {
        "a": str(10**30),
        "b": ["1", "0x01"],
        "c": True,
        "d": None,
        "e": 1.5,
        "7": "x",
    }
    with pytest.raises(TypeError):
        jsonable({"a": object()})


def test_output_prints_text_or_one_json_document_and_progress_on_stderr() -> None:
    stdout, stderr = io.StringIO(), io.StringIO()
    out = Output(True, stdout, stderr)
    out.say("hidden")
    with out.step("work"):
        pass
    out.result({"n": 5}, "text")
    assert json.loads(stdout.getvalue()) == {"n": "5"}
    assert stderr.getvalue().startswith("work ...\nwork: done in ")
    human = Output(False, io.StringIO(), io.StringIO())
    human.say("shown")
    human.result({"n": 5}, lambda: "n is 5")
    assert human.stdout.getvalue() == "shown\nn is 5\n"


def test_table_aligns_columns() -> None:
    assert table([("a", "1"), ("bbb", "22")], header=("k", "v")) == "k     v\n---  --\na     1\nbbb  22"
