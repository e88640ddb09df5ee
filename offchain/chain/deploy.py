"""Deploying the contracts and recording where they are: deployments/<network>.json.

A deployment file records, per contract: address, artifact name (the ABI reference) and the
SHA-256 of that ABI, deployment transaction hash and block; and the chain id of the network.
Writing refuses to replace a deployment made on a different chain id.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_utils.address import to_checksum_address

from offchain.chain.artifacts import load_artifact
from offchain.chain.client import ADJUDICATOR, PRICE_FEED, TOKEN
from offchain.chain.connection import Chain, Transactor
from offchain.errors import DeploymentError, WrongChainError
from offchain.types import Address

DEPLOYMENT_FORMAT = 1
_NETWORK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass(frozen=True, slots=True)
class DeployedContract:
    name: str  # key in the deployment file, e.g. "PriceFeed:XAU/USD"
    artifact: str
    address: Address
    tx_hash: str
    block: int

    def to_json(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact,
            "abi_sha256": abi_sha256(self.artifact),
            "address": self.address,
            "tx_hash": self.tx_hash,
            "block": self.block,
        }


@dataclass(frozen=True, slots=True)
class Deployment:
    network: str
    chain_id: int
    contracts: dict[str, DeployedContract]

    def address(self, name: str) -> Address:
        try:
            return self.contracts[name].address
        except KeyError as exc:
            raise DeploymentError(f"deployment {self.network!r} has no contract {name!r}") from exc

    @property
    def adjudicator(self) -> Address:
        return self.address(ADJUDICATOR)

    @property
    def token(self) -> Address:
        return self.address(TOKEN)

    def feeds(self) -> dict[str, Address]:
        """Price feeds by description, e.g. {"XAU / USD": 0x...}."""
        prefix = PRICE_FEED + ":"
        return {name[len(prefix) :]: c.address for name, c in self.contracts.items() if name.startswith(prefix)}

    def to_json(self) -> dict[str, Any]:
        return {
            "format": DEPLOYMENT_FORMAT,
            "network": self.network,
            "chain_id": self.chain_id,
            "contracts": {name: c.to_json() for name, c in sorted(self.contracts.items())},
        }


def abi_sha256(artifact: str) -> str:
    abi = load_artifact(artifact)["abi"]
    return hashlib.sha256(json.dumps(abi, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def deploy_contract(sender: Transactor, artifact: str, *args: Any, name: str | None = None) -> DeployedContract:
    data = load_artifact(artifact)
    factory = sender.chain.w3.eth.contract(abi=data["abi"], bytecode=data["bytecode"])
    receipt = sender.transact(factory.constructor(*args))
    address = receipt["contractAddress"]
    if address is None:
        raise DeploymentError(f"deploying {artifact} produced no contract address")
    return DeployedContract(
        name=name or artifact,
        artifact=artifact,
        address=Address(to_checksum_address(address)),
        tx_hash="0x" + bytes(receipt["transactionHash"]).hex(),
        block=int(receipt["blockNumber"]),
    )


@dataclass(frozen=True, slots=True)
class FeedSpec:
    description: str  # e.g. "XAU / USD"
    decimals: int = 8


def deploy_stack(
    chain: Chain, sender: Transactor, network: str, feeds: tuple[FeedSpec, ...] = (), with_token: bool = True
) -> Deployment:
    """The adjudicator, plus (on local chains) a test token and one price feed per spec,
    owned by ``sender`` (the oracle agent's key)."""
    contracts = {ADJUDICATOR: deploy_contract(sender, ADJUDICATOR)}
    if with_token:
        contracts[TOKEN] = deploy_contract(sender, TOKEN, "Test USD", "tUSD")
    for feed in feeds:
        name = f"{PRICE_FEED}:{feed.description}"
        contracts[name] = deploy_contract(
            sender, PRICE_FEED, feed.decimals, feed.description, sender.address, name=name
        )
    return Deployment(network=network, chain_id=chain.chain_id, contracts=contracts)


def deployment_path(directory: Path, network: str) -> Path:
    if not _NETWORK_NAME.match(network):
        raise DeploymentError(f"network name {network!r} must be lower-case letters, digits, '-' or '_'")
    return directory / f"{network}.json"


def write_deployment(directory: Path, deployment: Deployment) -> Path:
    """Write deployments/<network>.json; refuse to replace one on another chain id."""
    path = deployment_path(directory, deployment.network)
    if path.exists():
        existing = load_deployment(directory, deployment.network)
        if existing.chain_id != deployment.chain_id:
            raise DeploymentError(
                f"{path} records chain id {existing.chain_id}, this chain is {deployment.chain_id}: "
                "choose another network name or remove the file"
            )
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(deployment.to_json(), indent=2) + "\n")
    return path


def load_deployment(directory: Path, network: str, expected_chain_id: int | None = None) -> Deployment:
    """Read and validate deployments/<network>.json (and check the chain id if given)."""
    path = deployment_path(directory, network)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise DeploymentError(f"no deployment {path}: run `tchan deploy --network {network}` first") from exc
    except ValueError as exc:
        raise DeploymentError(f"{path} is not valid JSON") from exc
    try:
        if raw["format"] != DEPLOYMENT_FORMAT:
            raise DeploymentError(f"{path}: unknown format {raw['format']!r}")
        chain_id = raw["chain_id"]
        if not isinstance(chain_id, int) or isinstance(chain_id, bool) or chain_id <= 0:
            raise DeploymentError(f"{path}: chain_id must be a positive integer")
        contracts = {}
        for name, c in raw["contracts"].items():
            if not isinstance(c["block"], int) or not isinstance(c["tx_hash"], str):
                raise DeploymentError(f"{path}: contract {name} is malformed")
            load_artifact(c["artifact"])
            contracts[name] = DeployedContract(
                name=name,
                artifact=c["artifact"],
                address=Address(to_checksum_address(c["address"])),
                tx_hash=c["tx_hash"],
                block=c["block"],
            )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DeploymentError(f"{path} is malformed: {exc}") from exc
    deployment = Deployment(network=raw["network"], chain_id=chain_id, contracts=contracts)
    if expected_chain_id is not None and expected_chain_id != chain_id:
        raise WrongChainError(
            f"{path} is for chain id {chain_id} but the node is chain id {expected_chain_id}: wrong --rpc or --network?"
        )
    return deployment
