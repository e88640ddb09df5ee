"""Connecting to a chain and sending transactions signed with local keys.

The same code runs on the embedded in-process chain (eth-tester + py-evm) and on any JSON-RPC
node (anvil from npm, or a real network). Every revert comes back as a typed exception from
:mod:`offchain.chain.errors`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.types import TxParams, TxReceipt, Wei

from offchain.chain.errors import decode_revert, is_revert, revert_data
from offchain.errors import ChainError, ContractError, NodeUnreachableError
from offchain.types import Address, Timestamp

GAS_MARGIN_NUMERATOR = 6  # gas limit = estimate * 6 / 5
GAS_MARGIN_DENOMINATOR = 5


@dataclass
class Chain:
    """A Web3 connection plus what the project needs around it (time control on local chains)."""

    w3: Web3
    in_process: bool
    url: str = "in-process"
    _chain_id: int | None = field(default=None, repr=False)

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self.w3.eth.chain_id)
        return self._chain_id

    def now(self) -> Timestamp:
        """Timestamp of the latest block."""
        return Timestamp(int(self.w3.eth.get_block("latest")["timestamp"]))

    def increase_time(self, seconds: int) -> Timestamp:
        """Mine a block ``seconds`` after the latest one (local chains only)."""
        target = self.now() + seconds
        if self.in_process:
            tester = self.w3.provider.ethereum_tester  # type: ignore[attr-defined]
            tester.time_travel(target)
            tester.mine_blocks(1)
        else:
            self.w3.provider.make_request("evm_setNextBlockTimestamp", [target])  # type: ignore[arg-type]
            self.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        return self.now()

    def snapshot(self) -> Any:
        if self.in_process:
            return self.w3.provider.ethereum_tester.take_snapshot()  # type: ignore[attr-defined]
        return self.w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]

    def revert(self, snapshot_id: Any) -> None:
        if self.in_process:
            self.w3.provider.ethereum_tester.revert_to_snapshot(snapshot_id)  # type: ignore[attr-defined]
        else:
            self.w3.provider.make_request("evm_revert", [snapshot_id])  # type: ignore[arg-type]

    def fund(self, address: Address, wei: int) -> None:
        """Send ether from the node's first unlocked dev account (local chains only)."""
        sender = self.w3.eth.accounts[0]
        tx_hash = self.w3.eth.send_transaction({"from": sender, "to": address, "value": Wei(wei)})
        self.w3.eth.wait_for_transaction_receipt(tx_hash)

    def dev_private_keys(self) -> list[bytes]:
        """Private keys of the in-process chain's prefunded accounts."""
        if not self.in_process:
            raise ChainError("dev keys are only known for the in-process chain; use anvil's printed keys")
        backend = self.w3.provider.ethereum_tester.backend  # type: ignore[attr-defined]
        return [key.to_bytes() for key in backend.account_keys]


def in_process_chain() -> Chain:
    """A fresh embedded chain (eth-tester on py-evm, Prague rules)."""
    from eth_tester import EthereumTester, PyEVMBackend
    from web3 import EthereumTesterProvider

    tester = EthereumTester(PyEVMBackend())
    return Chain(w3=Web3(EthereumTesterProvider(tester)), in_process=True)


def rpc_chain(url: str, timeout: float = 30.0) -> Chain:
    """A JSON-RPC node at ``url`` (http(s)://...)."""
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout}))
    try:
        _ = w3.eth.chain_id
    except Exception as exc:
        raise NodeUnreachableError(f"cannot reach a node at {url} ({type(exc).__name__}): is it running?") from exc
    return Chain(w3=w3, in_process=False, url=url)


class Transactor:
    """Sends transactions from one local key, simulating each first so that a revert comes back
    as a typed exception before anything is broadcast."""

    def __init__(self, chain: Chain, account: LocalAccount) -> None:
        self.chain = chain
        self.account = account

    @classmethod
    def from_key(cls, chain: Chain, private_key: bytes) -> Transactor:
        return cls(chain, cast(LocalAccount, Account.from_key(private_key)))

    @property
    def address(self) -> Address:
        return Address(self.account.address)

    def transact(self, fn: Any, gas: int | None = None) -> TxReceipt:
        """Send ``fn`` (a bound contract function or constructor) and wait for the receipt."""
        w3 = self.chain.w3
        base: dict[str, Any] = {"from": self.address, "chainId": self.chain.chain_id}
        try:
            tx = cast(dict[str, Any], fn.build_transaction(cast(TxParams, base)))
            if gas is None:
                estimate = int(w3.eth.estimate_gas(cast(TxParams, tx)))
                gas = estimate * GAS_MARGIN_NUMERATOR // GAS_MARGIN_DENOMINATOR
        except Exception as exc:
            raise translate_error(exc) from exc
        tx["gas"] = gas
        try:  # the nonce lookup is a request too: a node error there is a ChainError like any other
            tx["nonce"] = w3.eth.get_transaction_count(self.address, "pending")
            signed = self.account.sign_transaction(tx)
            tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
            receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)
        except Exception as exc:
            raise translate_error(exc) from exc
        if receipt["status"] != 1:
            raise self._replay_failure(tx, receipt)
        return receipt

    def _replay_failure(self, tx: dict[str, Any], receipt: TxReceipt) -> ContractError:
        call = {k: tx[k] for k in ("from", "to", "data", "value", "gas") if k in tx}
        try:
            self.chain.w3.eth.call(cast(TxParams, call), block_identifier=receipt["blockNumber"] - 1)
        except Exception as exc:  # noqa: BLE001
            if is_revert(exc):
                return decode_revert(revert_data(exc))
        return decode_revert(None)


def call_view(fn: Any) -> Any:
    """Run a bound contract view and turn a revert into its typed exception."""
    try:
        return fn.call()
    except Exception as exc:
        raise translate_error(exc) from exc


def translate_error(exc: Exception) -> Exception:
    """The package's exception for whatever web3 or the provider raised."""
    if isinstance(exc, ContractError):
        return exc
    if is_revert(exc):
        return decode_revert(revert_data(exc))
    data = revert_data(exc)
    if data:
        return decode_revert(data)
    return ChainError(f"{type(exc).__name__}: {exc}")
