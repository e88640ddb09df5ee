"""Typed clients for the adjudicator, the collateral token and the price feeds.

Every value read from the chain (a view's result, an event) is checked before it is returned.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi.exceptions import DecodingError
from eth_utils.address import to_checksum_address
from web3.contract import Contract
from web3.types import TxReceipt

from offchain.chain.artifacts import load_artifact
from offchain.chain.connection import Chain, Transactor, call_view
from offchain.eip712 import Domain
from offchain.errors import ChainError
from offchain.model import (
    Balances,
    BatchPrice,
    ChannelParams,
    ChannelState,
    OpenOrder,
    Order,
    Outcome,
    check_state,
)
from offchain.settlement import Evidence
from offchain.signing import CoSignedState
from offchain.types import (
    Address,
    BatchNumber,
    ChannelId,
    ExpirationHours,
    MarketId,
    Nonce,
    Signature,
    SyntheticAmount,
    Timestamp,
    TokenAmount,
    Version,
)

ADJUDICATOR = "TradingChannelAdjudicator"
TOKEN = "TestToken"
PRICE_FEED = "PriceFeed"


class Stage(enum.IntEnum):
    OPEN = 0
    DISPUTED = 1
    CONCLUDED = 2


class RegistrationKind(enum.IntEnum):
    """What a dispute registered (TradingChannelAdjudicator.Kind)."""

    NONE = 0
    FINGERPRINT = 1  # a state with open orders or positions; concludes with the state
    SETTLED = 2  # a state without them; the trader's payout is registered_data
    SETTLED_UNDERFUNDED = 3  # as SETTLED, and every deposit goes back
    NO_STATE = 4  # challengeWithoutState: every deposit goes back unless refuted


@dataclass(frozen=True, slots=True)
class OnChainChannel:
    """What the adjudicator knows about a channel."""

    channel_id: ChannelId
    stage: Stage
    trader_deposit: TokenAmount
    broker_deposit: TokenAmount
    dispute_start: Timestamp
    deadline: Timestamp
    kind: RegistrationKind
    registered_version: Version | None  # None: no dispute, or a dispute without a state
    registered_data: int  # fingerprint (FINGERPRINT) or the trader's payout (SETTLED*)

    def refutation_end(self, params: ChannelParams) -> Timestamp:
        """Until when a strictly newer state is accepted (see the deadline rule)."""
        return Timestamp(self.dispute_start + params.challenge_duration)


def _receipt_events(contract: Contract, receipt: TxReceipt, event: str) -> list[dict[str, Any]]:
    """Every log of ``receipt`` that decodes as ``event``; the others are skipped (web3's own
    DISCARD lets malformed padding or pointers through as eth_abi DecodingErrors)."""
    from web3.logs import DISCARD

    out = []
    for entry in receipt["logs"]:
        single: Any = {"logs": [entry]}
        try:
            out += [dict(e["args"]) for e in contract.events[event]().process_receipt(single, errors=DISCARD)]
        except (DecodingError, ValueError, TypeError, OverflowError):
            continue
    return out


class AdjudicatorClient:
    """One deployed TradingChannelAdjudicator."""

    def __init__(self, chain: Chain, address: Address) -> None:
        self.chain = chain
        self.address = Address(to_checksum_address(address))
        self.contract = chain.w3.eth.contract(address=self.address, abi=load_artifact(ADJUDICATOR)["abi"])

    @property
    def domain(self) -> Domain:
        return Domain(chain_id=self.chain.chain_id, verifying_contract=self.address)

    # ------------------------------------------------------------ transactions

    def deposit(self, sender: Transactor, params: ChannelParams, participant: Address, amount: int) -> TxReceipt:
        return sender.transact(self.contract.functions.deposit(params.header().as_abi(), participant, amount))

    def close(self, sender: Transactor, params: ChannelParams, signed: CoSignedState) -> TxReceipt:
        return sender.transact(
            self.contract.functions.close(
                params.header().as_abi(), signed.state.as_abi(), signed.trader_signature, signed.broker_signature
            )
        )

    def challenge(
        self, sender: Transactor, params: ChannelParams, signed: CoSignedState, authorization: bytes = b""
    ) -> TxReceipt:
        return sender.transact(
            self.contract.functions.challenge(
                params.header().as_abi(),
                signed.state.as_abi(),
                signed.trader_signature,
                signed.broker_signature,
                authorization,
            )
        )

    def challenge_without_state(
        self, sender: Transactor, params: ChannelParams, authorization: bytes = b""
    ) -> TxReceipt:
        return sender.transact(self.contract.functions.challengeWithoutState(params.header().as_abi(), authorization))

    def refute(self, sender: Transactor, params: ChannelParams, signed: CoSignedState) -> TxReceipt:
        return sender.transact(
            self.contract.functions.refute(
                params.header().as_abi(), signed.state.as_abi(), signed.trader_signature, signed.broker_signature
            )
        )

    def conclude(self, sender: Transactor, params: ChannelParams, state: ChannelState | None = None) -> TxReceipt:
        """Conclude after the deadline. The registered state is needed (and must be given) only
        when it has open orders or positions; otherwise the adjudicator already knows the payouts."""
        if self.status(params.channel_id).kind == RegistrationKind.FINGERPRINT:
            if state is None:
                raise ChainError("the registered state has open orders or positions: pass it to conclude")
            return sender.transact(self.contract.functions.concludeWithState(params.as_abi(), state.as_abi()))
        return sender.transact(self.contract.functions.conclude(params.header().as_abi()))

    def withdraw(self, sender: Transactor, token: Address, account: Address, to: Address | None = None) -> TxReceipt:
        return sender.transact(self.contract.functions.withdraw(token, account, to or account))

    def revoke_challenge_authorization(self, sender: Transactor, params: ChannelParams, agent: Address) -> TxReceipt:
        """The sender (a participant) revokes the challenge authorisations it signed for ``agent``."""
        return sender.transact(self.contract.functions.revokeChallengeAuthorizations(params.header().as_abi(), agent))

    def submit_evidence(
        self,
        sender: Transactor,
        params: ChannelParams,
        state: ChannelState,
        prices: Sequence[tuple[BatchPrice, bytes]],
    ) -> TxReceipt:
        """Submit broker-signed batch prices as evidence for the registered ``state``."""
        return sender.transact(
            self.contract.functions.submitEvidence(
                params.as_abi(), state.as_abi(), [p.as_abi() for p, _ in prices], [bytes(sig) for _, sig in prices]
            )
        )

    def prove_two_prices(
        self,
        sender: Transactor,
        broker: Address,
        first: tuple[BatchPrice, bytes],
        second: tuple[BatchPrice, bytes],
    ) -> TxReceipt:
        """Prove that ``broker`` signed two different prices for one (market, batch)."""
        return sender.transact(
            self.contract.functions.proveTwoPrices(
                broker, first[0].as_abi(), bytes(first[1]), second[0].as_abi(), bytes(second[1])
            )
        )

    def prove_left_out_order(
        self,
        sender: Transactor,
        params: ChannelParams,
        signed: CoSignedState,
        order_index: int,
        price: tuple[BatchPrice, bytes],
    ) -> TxReceipt:
        """Prove with a co-signed state that the broker left out open order ``order_index``."""
        return sender.transact(
            self.contract.functions.proveLeftOutOrder(
                params.as_abi(),
                signed.state.as_abi(),
                signed.trader_signature,
                signed.broker_signature,
                order_index,
                price[0].as_abi(),
                bytes(price[1]),
            )
        )

    def conclude_slashed(self, sender: Transactor, params: ChannelParams) -> TxReceipt:
        """Conclude a channel of a slashed broker at once: the trader takes all of its funds."""
        return sender.transact(self.contract.functions.concludeSlashed(params.header().as_abi()))

    # ------------------------------------------------------------ views

    def channel_id(self, params: ChannelParams) -> ChannelId:
        value = call_view(self.contract.functions.channelId(params.header().as_abi()))
        return ChannelId(_bytes32(value))

    def status(self, channel_id: ChannelId) -> OnChainChannel:
        raw = call_view(self.contract.functions.getChannel(channel_id))
        stage, trader_deposit, broker_deposit, dispute_start, deadline, kind, version, data = raw
        if stage not in (0, 1, 2) or kind not in tuple(RegistrationKind):
            raise ChainError(f"unexpected channel status from the adjudicator: {raw!r}")
        kind = RegistrationKind(kind)
        has_state = kind not in (RegistrationKind.NONE, RegistrationKind.NO_STATE)
        return OnChainChannel(
            channel_id=channel_id,
            stage=Stage(stage),
            trader_deposit=TokenAmount(int(trader_deposit)),
            broker_deposit=TokenAmount(int(broker_deposit)),
            dispute_start=Timestamp(int(dispute_start)),
            deadline=Timestamp(int(deadline)),
            kind=kind,
            registered_version=Version(int(version)) if has_state else None,
            registered_data=int(data),
        )

    def slashed_at(self, broker: Address) -> Timestamp | None:
        """When ``broker`` was proven to have signed two prices for one batch (None: never)."""
        value = int(call_view(self.contract.functions.slashedAt(broker)))
        return Timestamp(value) if value else None

    def evidence_of(self, channel_id: ChannelId, version: int, order_index: int) -> Evidence | None:
        """The evidence the adjudicator holds for open order ``order_index`` of registered state
        ``version`` (None: none)."""
        batch, price = call_view(self.contract.functions.evidenceOf(channel_id, version, order_index))
        if not batch:
            return None
        return Evidence(int(batch), int(price))

    def evidence(self, channel_id: ChannelId, state: ChannelState) -> dict[int, Evidence]:
        """Every open order of the registered ``state`` that has evidence, by index."""
        found = {i: self.evidence_of(channel_id, state.version, i) for i in range(len(state.open_orders))}
        return {i: e for i, e in found.items() if e is not None}

    def logs(self, event: str, from_block: int, to_block: int) -> list[dict[str, Any]]:
        """The adjudicator's ``event`` logs in [from_block, to_block], decoded, each with
        ``args``, ``blockNumber``, ``transactionHash`` and ``logIndex``."""
        raw = self.contract.events[event]().get_logs(from_block=from_block, to_block=to_block)
        return [
            {
                "event": event,
                "args": dict(entry["args"]),
                "blockNumber": int(entry["blockNumber"]),
                "transactionHash": bytes(entry["transactionHash"]),
                "logIndex": int(entry["logIndex"]),
            }
            for entry in raw
        ]

    def withdrawable(self, token: Address, account: Address) -> TokenAmount:
        return TokenAmount(int(call_view(self.contract.functions.withdrawable(token, account))))

    def authorization_revoked(self, channel_id: ChannelId, agent: Address, participant: Address) -> bool:
        """Whether ``participant`` revoked the challenge authorisations it signed for ``agent``."""
        return bool(call_view(self.contract.functions.authorizationRevoked(channel_id, agent, participant)))

    def state_digest(self, state: ChannelState) -> bytes:
        """The adjudicator's own EIP-712 digest of ``state``."""
        return _bytes32(call_view(self.contract.functions.stateDigest(state.as_abi())))

    def order_digest(self, order: Order) -> bytes:
        return _bytes32(call_view(self.contract.functions.orderDigest(order.as_abi())))

    def batch_price_digest(self, price: BatchPrice) -> bytes:
        return _bytes32(call_view(self.contract.functions.batchPriceDigest(price.as_abi())))

    def challenge_authorization_digest(self, channel_id: ChannelId, agent: Address) -> bytes:
        return _bytes32(call_view(self.contract.functions.challengeAuthorizationDigest(channel_id, agent)))

    def constant(self, name: str) -> int:
        return int(call_view(getattr(self.contract.functions, name)()))

    # ------------------------------------------------------------ events and inputs

    def events(self, receipt: TxReceipt, event: str) -> list[dict[str, Any]]:
        """The ``event`` logs this adjudicator emitted in ``receipt``, decoded."""
        return _receipt_events(self.contract, receipt, event)

    def registered_state_from_transaction(self, tx_hash: bytes) -> CoSignedState:
        """The co-signed state a challenge or refute transaction registered, from its input.

        For a party that must conclude a dispute started with a state it does not hold.
        """
        tx = self.chain.w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
        if str(tx.get("to")) != self.address:
            raise ChainError("the transaction was not sent to this adjudicator")
        try:
            fn, args = self.contract.decode_function_input(tx["input"])
        except (DecodingError, ValueError, TypeError, OverflowError) as exc:  # not calldata of ours
            raise ChainError(f"undecodable adjudicator calldata: {type(exc).__name__}: {exc}") from exc
        if fn.fn_name not in ("challenge", "refute", "close", "proveLeftOutOrder"):
            raise ChainError(f"{fn.fn_name} does not register a state")
        state = state_from_abi(args["state"])
        return CoSignedState(
            state, Signature(bytes(args["traderSignature"])), Signature(bytes(args["brokerSignature"]))
        )


class TokenClient:
    """An ERC-20 collateral token (the TestToken on local chains)."""

    def __init__(self, chain: Chain, address: Address, artifact: str = TOKEN) -> None:
        """``artifact`` names the ABI to use; any ERC-20 artifact works for the common functions."""
        self.chain = chain
        self.address = Address(to_checksum_address(address))
        self.contract = chain.w3.eth.contract(address=self.address, abi=load_artifact(artifact)["abi"])

    def balance_of(self, account: Address) -> TokenAmount:
        return TokenAmount(int(self.contract.functions.balanceOf(account).call()))

    def decimals(self) -> int:
        return int(self.contract.functions.decimals().call())

    def symbol(self) -> str:
        return str(self.contract.functions.symbol().call())

    def approve(self, sender: Transactor, spender: Address, amount: int) -> TxReceipt:
        return sender.transact(self.contract.functions.approve(spender, amount))

    def mint(self, sender: Transactor, to: Address, amount: int) -> TxReceipt:
        return sender.transact(self.contract.functions.mint(to, amount))


@dataclass(frozen=True, slots=True)
class FeedAnswer:
    round_id: int
    answer: int
    updated_at: Timestamp


class PriceFeedClient:
    """A Chainlink-compatible feed (the project's PriceFeed on local chains)."""

    def __init__(self, chain: Chain, address: Address) -> None:
        self.chain = chain
        self.address = Address(to_checksum_address(address))
        self.contract = chain.w3.eth.contract(address=self.address, abi=load_artifact(PRICE_FEED)["abi"])

    def decimals(self) -> int:
        return int(self.contract.functions.decimals().call())

    def latest(self) -> FeedAnswer:
        round_id, answer, _, updated_at, _ = self.contract.functions.latestRoundData().call()
        return FeedAnswer(int(round_id), int(answer), Timestamp(int(updated_at)))

    def push(self, sender: Transactor, answer: int) -> TxReceipt:
        return sender.transact(self.contract.functions.pushAnswer(answer))

    def push_at(self, sender: Transactor, answer: int, updated_at: int) -> TxReceipt:
        return sender.transact(self.contract.functions.pushAnswerAt(answer, updated_at))


# --------------------------------------------------------------------------- ABI -> model


def _bytes32(value: object) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != 32:
        raise ChainError(f"expected 32 bytes from the chain, got {value!r}")
    return bytes(value)


def _positional(value: Any) -> Any:
    """ABI structs as tuples: web3 decodes calldata structs into dicts in ABI component order."""
    if isinstance(value, dict):
        return tuple(_positional(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return (
            type(value)(_positional(v) for v in value)
            if isinstance(value, list)
            else tuple(_positional(v) for v in value)
        )
    return value


def state_from_abi(raw: Any) -> ChannelState:
    """A state decoded from calldata (tuple or dict form), checked against every bound."""
    channel_id, version, balances, orders, outcomes, is_final = _positional(raw)
    state = ChannelState(
        channel_id=ChannelId(_bytes32(channel_id)),
        version=Version(int(version)),
        balances=Balances(*(TokenAmount(int(x)) for x in balances)),
        open_orders=tuple(
            OpenOrder(
                order=Order(
                    channel_id=ChannelId(_bytes32(o[0][0])),
                    trader=Address(to_checksum_address(o[0][1])),
                    collateral=Address(to_checksum_address(o[0][2])),
                    market=MarketId(int(o[0][3])),
                    is_buy=bool(o[0][4]),
                    amount_synthetic=SyntheticAmount(int(o[0][5])),
                    amount_collateral=TokenAmount(int(o[0][6])),
                    max_fee=TokenAmount(int(o[0][7])),
                    nonce=Nonce(int(o[0][8])),
                    expiration=ExpirationHours(int(o[0][9])),
                ),
                signature=Signature(bytes(o[1])),
                filled=SyntheticAmount(int(o[2])),
                first_batch=BatchNumber(int(o[3])),
            )
            for o in orders
        ),
        outcomes=tuple(
            Outcome(SyntheticAmount(int(o[0])), TokenAmount(int(o[1])), BatchNumber(int(o[2]))) for o in outcomes
        ),
        is_final=bool(is_final),
    )
    return check_state(state)


__all__ = [
    "AdjudicatorClient",
    "FeedAnswer",
    "OnChainChannel",
    "PriceFeedClient",
    "RegistrationKind",
    "Stage",
    "TokenClient",
    "state_from_abi",
]
