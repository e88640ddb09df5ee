"""The compiler pipeline: committed artifacts are current, and recompiling reproduces them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from offchain import compiler
from offchain.chain.artifacts import load_artifact


def test_committed_artifacts_match_every_source() -> None:
    """Fails when a contract (or an OpenZeppelin source it imports) changed without `tchan compile`."""
    assert compiler.stale_sources() == []


def test_a_changed_source_is_reported_stale(tmp_path: Path) -> None:
    shutil.copytree(compiler.project_root() / "contracts", tmp_path / "contracts")
    assert compiler.stale_sources(root=tmp_path) == []
    target = tmp_path / "contracts" / "TradingChannelAdjudicator.sol"
    target.write_text(target.read_text() + "\n// changed\n")
    (tmp_path / "contracts" / "Extra.sol").write_text("// SPDX-License-Identifier: MIT\npragma solidity 0.8.30;\n")
    assert compiler.stale_sources(root=tmp_path) == ["contracts/Extra.sol", "contracts/TradingChannelAdjudicator.sol"]


def test_a_deleted_source_is_reported_stale(tmp_path: Path) -> None:
    shutil.copytree(compiler.project_root() / "contracts", tmp_path / "contracts")
    (tmp_path / "contracts" / "local" / "TestToken.sol").unlink()
    assert compiler.stale_sources(root=tmp_path) == ["contracts/local/TestToken.sol"]


def test_artifacts_carry_abi_bytecode_compiler_and_checksums() -> None:
    manifest = json.loads((compiler.ARTIFACTS_DIR / compiler.MANIFEST_NAME).read_text())
    assert manifest["compiler"]["version"] == compiler.SOLC_VERSION
    assert manifest["compiler"]["settings"]["evmVersion"] == "prague"
    assert manifest["compiler"]["settings"]["optimizer"] == {"enabled": True, "runs": compiler.OPTIMIZER_RUNS}
    assert any(name.startswith("@openzeppelin/contracts/") for name in manifest["sources"])
    assert all(len(digest) == 64 for digest in manifest["sources"].values())
    for name in ("TradingChannelAdjudicator", "PriceFeed", "TestToken"):
        artifact = load_artifact(name)
        assert artifact["abi"]
        assert artifact["bytecode"].startswith("0x") and len(artifact["bytecode"]) > 1000
        assert artifact["deployedBytecode"].startswith("0x")
        assert artifact["compiler"] == manifest["compiler"]
        assert artifact["sources"] == manifest["sources"], "every artifact records the checksum of every source"
    runtime = len(load_artifact("TradingChannelAdjudicator")["deployedBytecode"]) // 2 - 1
    assert runtime <= 24_576, "EIP-170: the adjudicator's runtime code must stay deployable"


def test_standard_json_pins_the_settings() -> None:
    data = compiler.standard_json_input(compiler.collect_sources())
    assert data["settings"]["evmVersion"] == "prague"
    assert data["settings"]["viaIR"] is True
    assert all("content" in source for source in data["sources"].values())


def test_recompiling_reproduces_the_committed_bytecode() -> None:
    """The same standard-JSON input through whichever compiler is present (solcjs in CI)."""
    found = compiler.find_compiler()
    assert found is not None, "no solc: `make test` installs solcjs with npm ci"
    result = compiler.compile_contracts(compiler=found)
    for name, artifact in result.artifacts.items():
        committed = load_artifact(name)
        assert artifact["bytecode"] == committed["bytecode"], name
        assert artifact["deployedBytecode"] == committed["deployedBytecode"], name
        assert artifact["abi"] == committed["abi"], name
