"""Regression tests of the bugs the fuzz suite found (docs/fuzzing.md, "Bugs found")."""

from __future__ import annotations

from typing import Any

import pytest
from eth_abi.abi import encode as abi_encode
from eth_utils.abi import event_abi_to_log_topic
from hexbytes import HexBytes
from web3.datastructures import AttributeDict

from offchain.chain import errors as ce
from offchain.errors import ChainError
from tests.fuzz.test_fuzz_chain import CALLDATA, CLIENT, EVENTS, GUARDED


class _NodeError(Exception):
    def __init__(self, *args: Any, data: Any = None) -> None:
        super().__init__(*args)
        self.data = data


@pytest.mark.parametrize(
    "exc",
    [
        _NodeError("reverted", data="0xabc"),  # odd-length hex: bytes.fromhex raised ValueError
        _NodeError("reverted", data={"data": "not hex"}),  # ValueError
        _NodeError("reverted", data={"data": "0xzz"}),
        _NodeError("TransactionFailed: b'\\x'"),  # ast.literal_eval raised SyntaxError
    ],
)
def test_revert_data_of_a_mangled_node_error_is_none(exc: Exception) -> None:
    assert ce.revert_data(exc) is None
    assert isinstance(ce.decode_revert(ce.revert_data(exc)), ce.ContractReverted)


def test_revert_data_still_reads_good_payloads() -> None:
    assert ce.revert_data(_NodeError("x", data="0x08c379a0")) == bytes.fromhex("08c379a0")
    assert ce.revert_data(_NodeError("x", data={"data": "0x01"})) == b"\x01"
    assert ce.revert_data(_NodeError("failed: b'\\x01\\x02'")) == b"\x01\x02"


def _challenged_log(data: bytes) -> AttributeDict[str, Any]:
    event: Any = next(e for e in EVENTS if e["name"] == "Challenged")
    topics = [bytes(event_abi_to_log_topic(event)), GUARDED, abi_encode(["address"], [CLIENT.address])]
    return AttributeDict(
        {
            "address": CLIENT.address,
            "topics": [HexBytes(t) for t in topics],
            "data": HexBytes(data),
            "blockNumber": 1,
            "transactionHash": HexBytes(bytes(32)),
            "transactionIndex": 0,
            "blockHash": HexBytes(bytes(32)),
            "logIndex": 0,
            "removed": False,
        }
    )


def test_receipt_events_skip_a_log_with_non_empty_padding() -> None:
    """web3's DISCARD let eth_abi's NonEmptyPaddingBytes out of AdjudicatorClient.events."""
    event: Any = next(e for e in EVENTS if e["name"] == "Withdrawn")
    topics = [bytes(event_abi_to_log_topic(event)), bytes(32), bytes(32)]
    bad = AttributeDict({**_challenged_log(b"\xff" * 64), "topics": [HexBytes(t) for t in topics]})
    good = _challenged_log(abi_encode(["uint256", "uint256"], [3, 4]))
    receipt: Any = AttributeDict({"logs": [bad, good]})
    assert CLIENT.events(receipt, "Withdrawn") == []
    assert len(CLIENT.events(receipt, "Challenged")) == 1


@pytest.mark.parametrize("cut", [4, 40, 100, 300])
def test_registered_state_from_mangled_calldata_is_a_chain_error(cut: int) -> None:
    """decode_function_input raised eth_abi DecodingErrors and OverflowError (untyped; the
    watchtower's poll cycle does not catch them)."""
    data = bytearray(CALLDATA[0])
    data[cut : cut + 32] = b"\xff" * 32
    CLIENT.chain.w3.eth.get_transaction = lambda tx_hash: {"to": CLIENT.address, "input": HexBytes(bytes(data))}  # type: ignore[method-assign]
    with pytest.raises(ChainError):
        CLIENT.registered_state_from_transaction(b"\x00" * 32)
