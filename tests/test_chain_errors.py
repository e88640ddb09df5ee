"""Reverts become typed Python exceptions named after the Solidity custom error."""

from __future__ import annotations

from eth_abi import encode
from eth_tester.exceptions import TransactionFailed
from eth_utils import keccak
from web3.exceptions import ContractCustomError

from offchain.chain import errors
from offchain.chain.artifacts import all_abis
from offchain.errors import ContractError, TradingChannelsError


def _selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


def test_every_custom_error_in_every_abi_has_a_python_class() -> None:
    names = {item["name"] for abi in all_abis().values() for item in abi if item["type"] == "error"}
    assert names == set(errors.ERROR_CLASSES)
    for cls in errors.ERROR_CLASSES.values():
        assert issubclass(cls, ContractError) and issubclass(cls, TradingChannelsError)


def test_decode_custom_error_with_arguments() -> None:
    data = _selector("VersionNotNewer(uint256,uint256)") + encode(["uint256", "uint256"], [7, 5])
    exc = errors.decode_revert(data)
    assert isinstance(exc, errors.VersionNotNewer)
    assert exc.arguments == {"registeredVersion": 7, "version": 5}
    assert exc.code == "version_not_newer"
    assert "registeredVersion=7" in exc.reason


def test_decode_error_string_panic_empty_and_garbage() -> None:
    reason = errors.decode_revert(_selector("Error(string)") + encode(["string"], ["nope"]))
    assert isinstance(reason, errors.ContractRevertedWithReason) and reason.reason == "nope"
    panic = errors.decode_revert(_selector("Panic(uint256)") + encode(["uint256"], [0x11]))
    assert isinstance(panic, errors.ContractPanic) and "0x11" in panic.reason
    assert isinstance(errors.decode_revert(b""), errors.ContractReverted)
    assert isinstance(errors.decode_revert(None), errors.ContractReverted)
    unknown = errors.decode_revert(b"\xde\xad\xbe\xef" + bytes(32))
    assert type(unknown) is errors.ContractReverted and "deadbeef" in unknown.reason
    truncated = errors.decode_revert(_selector("VersionNotNewer(uint256,uint256)") + bytes(8))
    assert type(truncated) is errors.ContractReverted


def test_revert_data_from_eth_tester_and_json_rpc_shapes() -> None:
    payload = _selector("StateMismatch()")
    # eth-tester through web3's provider: the bytes arrive as their repr inside the message.
    wrapped = TransactionFailed(f"execution reverted: {payload!r}")
    assert errors.revert_data(wrapped) == payload
    # eth-tester directly: raw bytes.
    assert errors.revert_data(TransactionFailed(payload)) == payload
    # a JSON-RPC node (anvil, geth): web3 raises ContractCustomError with hex data.
    rpc = ContractCustomError("0x" + payload.hex(), data="0x" + payload.hex())
    assert errors.revert_data(rpc) == payload
    # chained exceptions are searched too
    try:
        try:
            raise TransactionFailed(payload)
        except TransactionFailed as inner:
            raise RuntimeError("outer") from inner
    except RuntimeError as outer:
        assert errors.revert_data(outer) == payload
    assert isinstance(errors.decode_revert(errors.revert_data(wrapped)), errors.StateMismatch)
