"""Reverts from the contracts as typed Python exceptions, named after the Solidity custom error.

``decode_revert(data)`` turns revert data (raw bytes, from eth-tester or from a JSON-RPC node)
into an instance of the class below whose name is the Solidity error's name, with the error's
arguments in ``.arguments`` (a dict by parameter name). A test checks that every custom error in
every ABI under offchain/artifacts/ has its class here.
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_utils.crypto import keccak

from offchain.errors import ContractError


class ContractReverted(ContractError):
    """The transaction reverted without a decodable reason."""

    code = "reverted"


class ContractPanic(ContractError):
    """Solidity Panic(uint256): an assertion, overflow or similar failed in the contract."""

    code = "panic"


class ContractRevertedWithReason(ContractError):
    """Solidity Error(string): the contract reverted with a reason string."""

    code = "revert_reason"


class CustomContractError(ContractError):
    """A Solidity custom error. ``arguments`` holds its parameters by name."""

    code = "custom_error"

    def __init__(self, reason: str = "", arguments: dict[str, Any] | None = None) -> None:
        self.arguments: dict[str, Any] = dict(arguments or {})
        detail = ", ".join(f"{k}={_show(v)}" for k, v in self.arguments.items())
        doc = (self.__class__.__doc__ or "").strip()
        super().__init__(reason or f"{self.__class__.__name__}({detail}): {doc}")
        self.code = _snake(self.__class__.__name__)


def _show(value: Any) -> str:
    return "0x" + value.hex() if isinstance(value, bytes) else str(value)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


# --------------------------------------------------------------------------- adjudicator


class InvalidParticipants(CustomContractError):
    """Trader or broker is the zero address, or both are the same address."""


class InvalidToken(CustomContractError):
    """The collateral token is the zero address."""


class ChallengeDurationOutOfRange(CustomContractError):
    """The challenge duration is outside the adjudicator's minimum and maximum."""


class TooManyMarkets(CustomContractError):
    """The channel lists more markets than the adjudicator allows."""


class NotParticipant(CustomContractError):
    """The address is neither the trader nor the broker of the channel."""


class ZeroDeposit(CustomContractError):
    """A deposit of zero, or one that delivered nothing."""


class DepositOutOfBounds(CustomContractError):
    """The deposit would take the channel's holdings above 2^63 - 1."""


class ChannelDisputed(CustomContractError):
    """The channel is in a dispute."""


class ChannelConcluded(CustomContractError):
    """The channel has concluded; nothing more can happen to it."""


class ChannelNotDisputed(CustomContractError):
    """The channel is not in a dispute."""


class WrongChannel(CustomContractError):
    """The state belongs to another channel."""


class OutcomeCountMismatch(CustomContractError):
    """The state has a different number of outcomes than the channel has markets."""


class TooManyOpenOrders(CustomContractError):
    """The state holds more open orders than the adjudicator allows."""


class MalformedSignature(CustomContractError):
    """The signature is not 65 bytes or does not recover to any address."""


class MalleableSignature(CustomContractError):
    """The signature's s value is in the upper half of the curve order."""


class WrongSigner(CustomContractError):
    """The signature recovers to someone other than the expected signer."""


class NotAuthorized(CustomContractError):
    """The caller is not a participant and carries no valid authorisation of one."""


class AuthorizationRevoked(CustomContractError):
    """The participant that signed the agent's challenge authorisation has revoked it."""


class AuthorizationAlreadyRevoked(CustomContractError):
    """The caller revoked its authorisations for this agent in this channel already."""


class StateNotFinal(CustomContractError):
    """A cooperative close needs a state marked final."""


class FinalStateNotSettled(CustomContractError):
    """A final state must have no open orders and no positions."""


class VersionNotNewer(CustomContractError):
    """The state is not strictly newer than the registered one."""


class RefutationPhaseOver(CustomContractError):
    """The refutation phase of the dispute has ended."""


class DeadlineNotReached(CustomContractError):
    """The dispute's deadline has not passed yet."""


class StateMismatch(CustomContractError):
    """The state given is not the registered one."""


class StateRequired(CustomContractError):
    """The registered state has open orders or positions: conclude with the state."""


class StateNotRequired(CustomContractError):
    """The registered state needs no state to conclude: conclude without it."""


class OraclePriceUnavailable(CustomContractError):
    """No fresh, valid oracle price for a market with a position, and the fallback delay has not passed."""


class InsufficientGasForPayout(CustomContractError):
    """A payout transfer ran out of gas: retry with a higher gas limit."""


class NothingToWithdraw(CustomContractError):
    """Nothing is credited to this account in this token."""


class ValueOutOfBounds(CustomContractError):
    """A number in the state, order or price is outside the bound its field allows."""


class EvidencePeriodOver(CustomContractError):
    """Evidence is accepted only until the dispute's deadline, which has passed."""


class NoOpenOrders(CustomContractError):
    """The registered state has no open orders for evidence to fill."""


class EvidenceCountInvalid(CustomContractError):
    """Prices and signatures differ in number, or there are none or too many."""


class UnknownMarket(CustomContractError):
    """The market is not one of the channel's."""


class EvidenceChangesNothing(CustomContractError):
    """No price submitted is earlier than what is known for any order it crosses."""


class BrokerAlreadySlashed(CustomContractError):
    """The broker has already been proven to sign two prices for one batch."""


class BrokerNotSlashed(CustomContractError):
    """The broker has not been slashed."""


class DifferentBatches(CustomContractError):
    """Two prices only conflict when they are for the same market and batch."""


class SamePrice(CustomContractError):
    """The two prices are the same: there is no conflict."""


class OrderIndexOutOfRange(CustomContractError):
    """The state holds no open order at that index."""


class OrderNotLeftOut(CustomContractError):
    """The order was not left out by that price (reason: 1 another market, 2 the state does not
    reflect the batch, 3 not eligible in the batch, 4 already filled, 5 not strictly better than
    the price, 6 expired)."""


# --------------------------------------------------------------------------- OpenZeppelin


class ReentrancyGuardReentrantCall(CustomContractError):
    """A call re-entered a function guarded against re-entrancy."""


class SafeERC20FailedOperation(CustomContractError):
    """The token returned false or no data where a transfer was expected to succeed."""


class InvalidShortString(CustomContractError):
    """OpenZeppelin ShortStrings: invalid short string (EIP-712 domain)."""


class StringTooLong(CustomContractError):
    """OpenZeppelin ShortStrings: string too long (EIP-712 domain)."""


class ERC20InsufficientAllowance(CustomContractError):
    """The spender's allowance is smaller than the amount: approve the adjudicator first."""


class ERC20InsufficientBalance(CustomContractError):
    """The sender's token balance is smaller than the amount."""


class ERC20InvalidApprover(CustomContractError):
    """ERC-20: invalid approver."""


class ERC20InvalidReceiver(CustomContractError):
    """ERC-20: invalid receiver."""


class ERC20InvalidSender(CustomContractError):
    """ERC-20: invalid sender."""


class ERC20InvalidSpender(CustomContractError):
    """ERC-20: invalid spender."""


class OwnableInvalidOwner(CustomContractError):
    """Ownable: invalid owner."""


class OwnableUnauthorizedAccount(CustomContractError):
    """Only the feed's owner may push answers."""


class NoDataPresent(CustomContractError):
    """The price feed has no answer yet."""


class Blacklisted(CustomContractError):
    """The test token refuses transfers to or from this blacklisted address."""


ERROR_CLASSES: dict[str, type[CustomContractError]] = {
    cls.__name__: cls for cls in CustomContractError.__subclasses__()
}


# --------------------------------------------------------------------------- decoding

_ERROR_STRING = keccak(text="Error(string)")[:4]
_PANIC = keccak(text="Panic(uint256)")[:4]


@lru_cache(maxsize=1)
def _selectors() -> dict[bytes, tuple[str, list[str], list[str]]]:
    from offchain.chain.artifacts import all_abis

    table: dict[bytes, tuple[str, list[str], list[str]]] = {}
    for abi in all_abis().values():
        for item in abi:
            if item.get("type") != "error":
                continue
            types = [_abi_type(i) for i in item["inputs"]]
            selector = keccak(text=f"{item['name']}({','.join(types)})")[:4]
            table[selector] = (item["name"], types, [i["name"] for i in item["inputs"]])
    return table


def _abi_type(item: dict[str, Any]) -> str:
    typ = str(item["type"])
    if typ.startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in item["components"]) + ")" + typ[5:]
    return typ


def decode_revert(data: bytes | None) -> ContractError:
    """The typed exception for revert ``data`` (None or b"" when the node gave none)."""
    if not data:
        return ContractReverted("the transaction reverted without a reason")
    selector, body = data[:4], data[4:]
    try:
        if selector == _ERROR_STRING:
            return ContractRevertedWithReason(abi_decode(["string"], body)[0])
        if selector == _PANIC:
            return ContractPanic(f"panic code 0x{abi_decode(['uint256'], body)[0]:02x}")
        known = _selectors().get(selector)
        if known is not None:
            name, types, names = known
            values = abi_decode(types, body)
            cls = ERROR_CLASSES.get(name)
            arguments = dict(zip(names, values, strict=True))
            if cls is None:
                return ContractReverted(f"unknown contract error {name}{arguments}")
            return cls(arguments=arguments)
    except Exception:  # noqa: BLE001 - malformed revert data is itself a (generic) revert
        pass
    return ContractReverted(f"the transaction reverted with undecodable data 0x{data.hex()}")


_REPR_BYTES = re.compile(r"""(b'(?:[^'\\]|\\.)*'|b"(?:[^"\\]|\\.)*")""")
_HEX = re.compile(r"0x[0-9a-fA-F]*")


def revert_data(exc: BaseException) -> bytes | None:
    """Dig the revert payload out of whatever the provider raised.

    - JSON-RPC nodes (anvil, geth): web3's ContractCustomError / ContractLogicError carry ``.data``
      as a hex string.
    - eth-tester: TransactionFailed carries the payload as bytes, or as the ``repr`` of bytes in
      its message once web3's provider has wrapped it.
    """
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        data = getattr(current, "data", None)
        if isinstance(data, dict):
            data = data.get("data")
        if isinstance(data, str) and _HEX.fullmatch(data) and len(data) % 2 == 0:
            return bytes.fromhex(data[2:])
        for arg in current.args:
            if isinstance(arg, bytes):
                return arg
            if isinstance(arg, BaseException):
                pending.append(arg)
            elif isinstance(arg, str):
                match = _REPR_BYTES.search(arg)
                if match:
                    try:
                        value = ast.literal_eval(match.group(1))
                    except (SyntaxError, ValueError):  # not a bytes literal after all (e.g. b'\x')
                        continue
                    if isinstance(value, bytes):
                        return value
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)
    return None


def is_revert(exc: BaseException) -> bool:
    """True for the exceptions providers raise when a call or transaction reverts."""
    from eth_tester.exceptions import TransactionFailed
    from web3.exceptions import ContractLogicError

    return isinstance(exc, (TransactionFailed, ContractLogicError))
