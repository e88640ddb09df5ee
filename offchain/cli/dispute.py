"""``tchan`` subcommands for disputes by hand: one per dispute transaction, and ``channel show``.

Each command reads one channel from a party's store (the trader's or the broker's SQLite store:
channel parameters, co-signed states, signed batch prices), checks everything it can against the
store and the chain before it sends anything, sends one adjudicator transaction, and checks the
receipt and the events it emitted:

- ``challenge``: register a co-signed state (the newest by default, ``--version N`` for another);
  only the trader or the broker may;
- ``refute``: answer a dispute with a strictly newer co-signed state, during the refutation phase;
- ``evidence``: submit the broker-signed batch prices that cross open orders of the registered
  state (the earliest crossing batch per order, as the watchtower does);
- ``conclude``: after the deadline, ``conclude`` or ``concludeWithState``; at once with
  ``concludeSlashed`` when the broker is slashed; ``--wait`` waits for the deadline;
- ``withdraw``: pull a payout the token refused to push at conclusion;
- ``prove-two-prices``: two different prices the broker signed for one batch: the broker is slashed;
- ``prove-left-out-order``: a co-signed state that leaves out an order a signed price crossed: the
  trader takes the channel;
- ``channel show`` (the chain beside the store) and ``channel list`` (the channels of a store).

A refusal before anything is sent is a typed error (one line on the command line). Its code says
what was wrong: ``no_store``, ``unknown_channel``, ``unknown_version``, ``version_not_newer``,
``wrong_stage``, ``not_participant``, ``deadline_not_reached``, ``nothing_to_submit``,
``nothing_to_withdraw``, ``no_proof``, and the ``invalid_input``, ``wrong_chain`` and ``deployment``
errors shared with the other commands. A transaction the node still refuses comes back as the
adjudicator's own error.

**Time.** The adjudicator compares deadlines with the timestamp of the block that includes the
transaction. A local anvil mines no block while idle, so the latest block can be far behind the
time the next block will have. The commands estimate that time as the latest block's time,
advanced by the wall-clock time since that block was first seen, and never behind the wall clock
(:class:`ChainClock`). A simulation that still fails because the latest block is before the
deadline is repeated at that estimate, where the node allows a block-time override (anvil does).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offchain.cli.common import (
    Output,
    add_key_args,
    add_network_args,
    format_fraction,
    load_key,
    open_deployment,
    table,
)
from offchain.errors import ChainError, DeploymentError, ValidationError, WrongChainError

if TYPE_CHECKING:
    from web3.types import TxReceipt

    from offchain.chain.client import AdjudicatorClient, OnChainChannel
    from offchain.chain.connection import Chain, Transactor
    from offchain.chain.deploy import Deployment
    from offchain.eip712 import Domain
    from offchain.model import ChannelParams, ChannelState, OpenOrder
    from offchain.settlement import Evidence
    from offchain.signing import CoSignedState
    from offchain.store import ChannelRecord, Store, StoredBatchPrice
    from offchain.types import Address, ChannelId

PROGRESS_SECONDS = 5.0
"""How often ``conclude --wait`` reports the time left."""
POLL_SECONDS = 1.0
"""How often ``conclude --wait`` looks at the chain."""
LOG_RANGE = 10_000
"""Blocks per ``eth_getLogs`` call when searching for the transaction that registered a state."""
MAX_EVIDENCE_PRICES = 64
"""The most prices one ``submitEvidence`` accepts (the adjudicator's MAX_EVIDENCE_PRICES)."""
GAS_MARGIN_NUMERATOR, GAS_MARGIN_DENOMINATOR = 6, 5


# --------------------------------------------------------------------------- errors


class NoStoreError(ValidationError):
    """The store file given with --store does not exist."""

    code = "no_store"


class UnknownChannelError(ValidationError):
    """The store holds no such channel (or several, and none was chosen)."""

    code = "unknown_channel"


class UnknownVersionError(ValidationError):
    """The store holds no co-signed state with the version asked for."""

    code = "unknown_version"


class VersionNotNewerError(ValidationError):
    """The co-signed state is not newer than the registered one: it cannot refute it."""

    code = "version_not_newer"


class WrongStageError(ValidationError):
    """The channel is not in the stage the transaction needs (open, disputed, concluded)."""

    code = "wrong_stage"


class NotParticipantError(ValidationError):
    """The sending account is not one the adjudicator accepts for this transaction."""

    code = "not_participant"


class DeadlineNotReachedError(ValidationError):
    """The dispute's deadline has not passed yet."""

    code = "deadline_not_reached"


class NothingToSubmitError(ValidationError):
    """No signed batch price in the store changes the evidence the adjudicator holds."""

    code = "nothing_to_submit"


class NothingToWithdrawError(ValidationError):
    """The adjudicator holds no payout credit for the account in this token."""

    code = "nothing_to_withdraw"


class AlreadyRevokedError(ValidationError):
    """The sender revoked its authorisations for this agent in this channel already."""

    code = "already_revoked"


class NoProofError(ValidationError):
    """The store holds nothing that proves the broker cheated."""

    code = "no_proof"


# --------------------------------------------------------------------------- small helpers


def when(timestamp: int) -> str:
    """A block timestamp as UTC date and time, e.g. ``2026-05-08 07:50:55 UTC``."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def hex_id(data: bytes) -> str:
    """Bytes (a channel id, a hash) as 0x-hex."""
    return "0x" + data.hex()


def parse_channel_id(text: str | None) -> bytes | None:
    """``--channel``: a 0x-prefixed 32-byte hex channel id (None when not given)."""
    if text is None:
        return None
    digits = text[2:] if text.startswith(("0x", "0X")) else None
    if digits is None or len(digits) != 64:
        raise ValidationError(f"--channel must be a 0x-prefixed 32-byte hex channel id, got {text!r}")
    try:
        return bytes.fromhex(digits)
    except ValueError as exc:
        raise ValidationError(f"--channel is not hex: {text!r}") from exc


def check_store_path(text: str) -> str:
    """``--store``: an existing file (opening a missing one would create an empty store)."""
    path = Path(text)
    if not path.is_file():
        raise NoStoreError(
            f"no store at {text}: give --store FILE, the SQLite store of the trader or broker that holds the channel"
        )
    return text


def check_version_arg(name: str, value: int | None) -> int | None:
    """A version, market, batch or index argument: not negative (None when not given)."""
    if value is not None and value < 0:
        raise ValidationError(f"{name} must not be negative, got {value}")
    return value


def check_batch_args(args: argparse.Namespace) -> None:
    """``--market`` and ``--batch``: both or neither, neither negative."""
    if (args.market is None) != (args.batch is None):
        raise ValidationError("give --market and --batch together, or neither")
    for name, value in (("--market", args.market), ("--batch", args.batch)):
        check_version_arg(name, value)


def check_address_arg(name: str, value: str | None) -> Address | None:
    """An address argument, checksummed (None when not given)."""
    from offchain.model import check_address

    return None if value is None else check_address(name, value)


def pick_channel(store: Store, channel_id: bytes | None, trader: Address | None = None) -> ChannelRecord:
    """The channel ``--channel`` names, or the store's only channel with ``--trader`` (any trader
    when None)."""
    records = store.channels()
    ids = ", ".join(hex_id(r.channel_id) for r in records)
    if channel_id is not None:
        if trader is not None:
            raise ValidationError("choose the channel by --channel or by --trader, not both")
        record = store.channel(channel_id)
        if record is None:
            held = f"it holds {ids}" if records else "it holds no channel"
            raise UnknownChannelError(f"the store has no channel {hex_id(channel_id)}: {held}")
        return record
    if not records:
        raise UnknownChannelError("the store holds no channel")
    if trader is not None:
        records = [r for r in records if r.params.trader == trader]
        if not records:
            raise UnknownChannelError(f"the store holds no channel of trader {trader}: it holds {ids}")
        if len(records) > 1:
            of_trader = ", ".join(hex_id(r.channel_id) for r in records)
            raise UnknownChannelError(
                f"trader {trader} has {len(records)} channels: choose one with --channel ({of_trader})"
            )
        return records[0]
    if len(records) > 1:
        raise UnknownChannelError(
            f"the store holds {len(records)} channels: choose one with --channel or --trader ({ids})"
        )
    return records[0]


def check_same_deployment(params: ChannelParams, chain: Chain, deployment: Deployment) -> None:
    """The channel lives on this node's chain and on the deployment's adjudicator."""
    if params.chain_id != chain.chain_id:
        raise WrongChainError(
            f"channel {hex_id(params.channel_id)} is on chain id {params.chain_id}, "
            f"but the node is chain id {chain.chain_id}"
        )
    if params.adjudicator != deployment.adjudicator:
        raise DeploymentError(
            f"channel {hex_id(params.channel_id)} is on adjudicator {params.adjudicator}, "
            f"but deployment {deployment.network!r} has {deployment.adjudicator}"
        )


def co_signed_state(store: Store, params: ChannelParams, domain: Domain, version: int | None) -> CoSignedState:
    """The co-signed state ``version`` of the channel in ``store`` (the newest when None), with
    both signatures checked against the channel's trader and broker."""
    from offchain.model import check_state
    from offchain.signing import CoSignedState
    from offchain.types import Signature

    cid = params.channel_id
    newest = store.latest_co_signed(cid)
    if version is None:
        stored = newest
        if stored is None:
            raise UnknownVersionError(f"the store holds no co-signed state of channel {hex_id(cid)}")
    else:
        stored = store.state(cid, version)
        held = f"its newest co-signed version is {newest.state.version}" if newest else "it holds no co-signed state"
        if stored is None:
            raise UnknownVersionError(f"the store has no version {version} of channel {hex_id(cid)}: {held}")
        if stored.trader_signature is None or stored.broker_signature is None:
            missing = "trader" if stored.trader_signature is None else "broker"
            raise UnknownVersionError(
                f"version {version} of channel {hex_id(cid)} lacks the {missing}'s signature: "
                f"it is not co-signed ({held})"
            )
    assert stored is not None and stored.trader_signature is not None and stored.broker_signature is not None
    signed = CoSignedState(
        check_state(stored.state, params), Signature(stored.trader_signature), Signature(stored.broker_signature)
    )
    signed.verify(domain, params.trader, params.broker)
    return signed


class ChainClock:
    """The time the next block will have, estimated as the latest of: the latest block's time
    advanced by the wall-clock time since this clock first saw that block, the wall clock, and the
    node's pending block's time when it reports one. A local anvil mines no block while idle (its
    next block is still stamped with the current time), and ``evm_increaseTime`` moves only its
    pending block."""

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self._seen: tuple[int, int, float] | None = None  # block number, its time, monotonic time seen
        self.latest = 0

    def now(self) -> int:
        """The estimated time of the next block (one look at the node)."""
        block = self.chain.w3.eth.get_block("latest")
        number, stamp = int(block["number"]), int(block["timestamp"])
        seen = time.monotonic()
        if self._seen is None or self._seen[0] != number:
            self._seen = (number, stamp, seen)
        self.latest = stamp
        return max(stamp + int(seen - self._seen[2]), int(time.time()), self._pending())

    def _pending(self) -> int:
        try:
            return int(self.chain.w3.eth.get_block("pending")["timestamp"])
        except Exception:  # noqa: BLE001 - a node without a pending block: the other estimates stand
            return 0


def send(chain: Chain, sender: Transactor, fn: Any, at: int | None = None) -> TxReceipt:
    """Send the bound contract call ``fn``. When the node's simulation, run at its latest block,
    says the deadline has not passed although the next block will be at ``at`` or later, the gas
    is estimated at block time ``at`` instead (a node without block-time overrides keeps the
    refusal)."""
    from offchain.chain import errors as ce

    try:
        return sender.transact(fn)
    except ce.DeadlineNotReached as exc:
        deadline = int(exc.arguments.get("deadline", 0))
        if at is None or at < deadline:
            raise
        gas = _estimate_at(chain, sender, fn, at)
        if gas is None:
            raise DeadlineNotReachedError(
                f"the deadline {when(deadline)} has passed by the clock, but the node's latest block is older: "
                "try again once the node has mined a newer block"
            ) from exc
        return transact_with_gas(chain, sender, fn, gas)


def transact_with_gas(chain: Chain, sender: Transactor, fn: Any, gas: int) -> TxReceipt:
    """Send ``fn`` with a gas limit found beforehand, without the node's own estimate.

    ``Transactor.transact(fn, gas=...)`` still lets web3 estimate while it builds the transaction,
    which is the very simulation that refuses here."""
    from offchain.chain.connection import translate_error

    w3 = chain.w3
    try:
        tx = fn.build_transaction({"from": sender.address, "chainId": chain.chain_id, "gas": gas})
        tx["nonce"] = w3.eth.get_transaction_count(sender.address, "pending")
        signed = sender.account.sign_transaction(tx)
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)
    except Exception as exc:
        raise translate_error(exc) from exc
    if int(receipt["status"]) != 1:
        raise ChainError(
            f"transaction 0x{bytes(receipt['transactionHash']).hex()} reverted in block {receipt['blockNumber']}: "
            "the block was stamped before the deadline"
        )
    return receipt


def _estimate_at(chain: Chain, sender: Transactor, fn: Any, at: int) -> int | None:
    """The gas of ``fn`` simulated at block time ``at``; None if the node takes no block override.
    A revert there is the adjudicator's typed error."""
    from offchain.chain.errors import decode_revert

    tx = fn.build_transaction({"from": sender.address, "chainId": chain.chain_id, "gas": 30_000_000})
    call = {"from": sender.address, "to": tx["to"], "data": tx["data"]}
    response = chain.w3.provider.make_request("eth_estimateGas", [call, "latest", {}, {"time": hex(at)}])  # type: ignore[arg-type]
    error = response.get("error")
    if error is None:
        return int(str(response["result"]), 16) * GAS_MARGIN_NUMERATOR // GAS_MARGIN_DENOMINATOR
    data = error.get("data") if isinstance(error, dict) else None
    if isinstance(data, str) and data.startswith("0x") and len(data) >= 10:
        raised = decode_revert(bytes.fromhex(data[2:]))
        if type(raised).__name__ != "DeadlineNotReached":
            raise raised
    return None


# --------------------------------------------------------------------------- one channel of one store


MAX_TOKEN_DECIMALS = 36
"""The most decimals a token may declare for its amounts to be shown in whole tokens."""


@dataclass(frozen=True, slots=True)
class TokenUnits:
    """How the people's output of these commands shows token amounts: in whole tokens by the
    token's ``decimals()``, with the base units beside an amount that stands alone (``--json``
    carries base units only). A token whose ``decimals()`` does not answer, or answers beyond
    :data:`MAX_TOKEN_DECIMALS`, is shown in base units."""

    decimals: int | None
    symbol: str

    @classmethod
    def of(cls, chain: Chain, token: Address) -> TokenUnits:
        from web3.exceptions import Web3Exception

        from offchain.chain.client import TokenClient

        client = TokenClient(chain, token)
        decimals: int | None
        try:
            decimals = client.decimals()  # optional in ERC-20
        except Web3Exception:
            decimals = None
        if decimals is not None and not 0 <= decimals <= MAX_TOKEN_DECIMALS:
            decimals = None
        try:
            symbol = client.symbol()  # optional too, and not always a string
        except Web3Exception:
            symbol = ""
        if not (0 < len(symbol) <= 16 and symbol.isascii() and symbol.isprintable() and " " not in symbol):
            symbol = "tokens"
        return cls(decimals, symbol)

    def number(self, amount: int) -> str:
        """``amount`` in whole tokens, without the symbol (``5000.00``), for a table."""
        if self.decimals is None:
            return str(amount)
        return format_fraction(amount, 10**self.decimals, min(2, self.decimals))

    def short(self, amount: int) -> str:
        """``5000.00 tUSD``: whole tokens and the symbol (a price, a figure inside a sentence)."""
        if self.decimals is None:
            return f"{amount} base units"
        return f"{self.number(amount)} {self.symbol}"

    def __call__(self, amount: int) -> str:
        """``5000.00 tUSD (5000000000)``: whole tokens and the exact base units."""
        if self.decimals is None:
            return f"{amount} base units"
        return f"{self.number(amount)} {self.symbol} ({amount})"

    def legend(self) -> str:
        """What the numbers of a table are."""
        if self.decimals is None:
            return "amounts in the token's base units (it declares no decimals)"
        return f"amounts in {self.symbol} ({self.decimals} decimals); --json gives base units"


@dataclass
class Session:
    """What a dispute command works with: the node, the deployment, a store and one of its channels."""

    out: Output
    chain: Chain
    deployment: Deployment
    adjudicator: AdjudicatorClient
    store: Store
    record: ChannelRecord

    @property
    def params(self) -> ChannelParams:
        return self.record.params

    @property
    def channel_id(self) -> ChannelId:
        return self.record.params.channel_id

    @property
    def domain(self) -> Domain:
        return self.adjudicator.domain

    @cached_property
    def units(self) -> TokenUnits:
        """How to show the channel's token amounts (asks the token once)."""
        return TokenUnits.of(self.chain, self.params.token)

    def synthetic(self, market: int, amount: int) -> str:
        """``amount`` of ``market``'s asset in whole units (by the market's resolution)."""
        for m in self.params.markets:
            if m.id == market:
                return format_fraction(amount, m.resolution)
        return str(amount)

    @property
    def role(self) -> str:
        """Whose store this is: ``trader`` or ``broker`` (as the agent recorded it)."""
        return str(self.record.meta.get("role", "party"))

    def sender(self, args: argparse.Namespace) -> Transactor:
        """The account of ``--keystore`` or ``--dev-account``, ready to send."""
        from offchain.chain.connection import Transactor

        return Transactor.from_key(self.chain, load_key(args, self.chain.chain_id))

    def status(self) -> OnChainChannel:
        """The channel as the adjudicator holds it now."""
        return self.adjudicator.status(self.channel_id)

    def signed(self, version: int | None) -> CoSignedState:
        """The store's co-signed state ``version`` (None: the newest), signatures checked."""
        return co_signed_state(self.store, self.params, self.domain, version)

    def registered_state(self, status: OnChainChannel) -> CoSignedState | None:
        """The co-signed state the dispute registered: from the store when it holds it, else
        from the input of the ``challenge`` or ``refute`` transaction that registered it."""
        from offchain.agents.watchtower import fingerprint
        from offchain.chain.client import RegistrationKind
        from offchain.errors import TradingChannelsError

        version = status.registered_version
        if version is None or status.kind != RegistrationKind.FINGERPRINT:
            return None
        stored = self.store.state(self.channel_id, version)
        if stored is not None and stored.co_signed:
            try:
                candidate: CoSignedState | None = self.signed(version)
            except TradingChannelsError:
                candidate = None
            if candidate is not None and fingerprint(self.domain, candidate.state) == status.registered_data:
                return candidate
        return self._registered_from_chain(version, status.registered_data)

    def _registered_from_chain(self, version: int, data: int) -> CoSignedState | None:
        from offchain.agents.watchtower import fingerprint
        from offchain.chain.client import ADJUDICATOR
        from offchain.errors import TradingChannelsError
        from offchain.model import check_state

        deployed = self.deployment.contracts.get(ADJUDICATOR)
        first = deployed.block if deployed is not None else 0
        last = int(self.chain.w3.eth.block_number)
        events = self.adjudicator.contract.events
        while last >= first:
            low = max(first, last - LOG_RANGE + 1)
            found: list[tuple[int, int, bytes]] = []
            for name in ("Challenged", "Refuted"):
                entries = events[name]().get_logs(
                    argument_filters={"channelId": self.channel_id}, from_block=low, to_block=last
                )
                found += [
                    (int(e["blockNumber"]), int(e["logIndex"]), bytes(e["transactionHash"]))
                    for e in entries
                    if int(e["args"]["version"]) == version
                ]
            for _, _, tx_hash in sorted(found, reverse=True):
                try:
                    signed = self.adjudicator.registered_state_from_transaction(tx_hash)
                    if signed.state.version != version or fingerprint(self.domain, signed.state) != data:
                        continue
                    signed.verify(self.domain, self.params.trader, self.params.broker)
                    check_state(signed.state, self.params)
                except (TradingChannelsError, ValueError, KeyError):
                    continue
                return signed
            last = low - 1
        return None

    def require_registered_state(self, status: OnChainChannel) -> CoSignedState:
        signed = self.registered_state(status)
        if signed is None:
            raise UnknownVersionError(
                f"the registered state (version {status.registered_version}) of channel {hex_id(self.channel_id)} "
                "is neither in the store nor recoverable from the transaction that registered it"
            )
        return signed

    def transaction(self, receipt: TxReceipt, sender: Transactor, expect: tuple[str, ...]) -> dict[str, Any]:
        """What a mined transaction did: its hash, block, gas and the adjudicator's events. Every
        event named in ``expect`` must be there (for this channel, when the event names one)."""
        from web3.logs import DISCARD

        if int(receipt["status"]) != 1:
            raise ChainError(f"transaction 0x{bytes(receipt['transactionHash']).hex()} failed")
        found: list[tuple[int, str, dict[str, Any]]] = []
        for name in RESULT_EVENTS:
            for entry in self.adjudicator.contract.events[name]().process_receipt(receipt, errors=DISCARD):
                args = dict(entry["args"])
                if "channelId" in args and bytes(args["channelId"]) != self.channel_id:
                    continue
                found.append((int(entry["logIndex"]), name, args))
        events = [{"event": name, "args": args} for _, name, args in sorted(found, key=lambda f: f[0])]
        for name in expect:
            if not any(e["event"] == name for e in events):
                raise ChainError(
                    f"transaction 0x{bytes(receipt['transactionHash']).hex()} was mined without a {name} event "
                    f"for channel {hex_id(self.channel_id)}"
                )
        return {
            "channel_id": self.channel_id,
            "sender": sender.address,
            "tx": bytes(receipt["transactionHash"]),
            "block": int(receipt["blockNumber"]),
            "gas_used": int(receipt["gasUsed"]),
            "events": events,
        }

    def event(self, result: dict[str, Any], name: str) -> dict[str, Any]:
        """The arguments of the first ``name`` event of ``result``."""
        args: dict[str, Any] = next(e["args"] for e in result["events"] if e["event"] == name)
        return args


RESULT_EVENTS = (
    "Challenged",
    "Refuted",
    "EvidenceAccepted",
    "OrderFilledByEvidence",
    "OracleFallbackUsed",
    "LeftOutOrderProven",
    "BrokerSlashed",
    "Concluded",
    "PayoutDeferred",
    "Withdrawn",
    "ChallengeAuthorizationRevoked",
)
"""The adjudicator events a command reports (a transaction's events of other channels are left out)."""


@contextmanager
def session(args: argparse.Namespace, out: Output) -> Iterator[Session]:
    """Open the store and the channel ``args`` name, on the node and deployment they name; the
    store is closed on the way out."""
    path = check_store_path(args.store)
    channel_id = parse_channel_id(args.channel)
    trader = check_address_arg("--trader", args.trader)
    from offchain.chain.client import AdjudicatorClient
    from offchain.store import open_store

    _, chain, deployment = open_deployment(args)
    store = open_store(path)
    try:
        record = pick_channel(store, channel_id, trader)
        check_same_deployment(record.params, chain, deployment)
        yield Session(out, chain, deployment, AdjudicatorClient(chain, deployment.adjudicator), store, record)
    finally:
        store.close()


def tx_line(result: dict[str, Any]) -> str:
    """``tx 0x... in block N, gas G`` for the human output."""
    return f"tx {hex_id(result['tx'])} in block {result['block']}, gas {result['gas_used']}"


def require_stage(s: Session, status: OnChainChannel, wanted: str, doing: str) -> None:
    """Refuse unless the channel is in stage ``wanted`` (``open`` or ``disputed``)."""
    from offchain.chain.client import Stage

    cid = hex_id(s.channel_id)
    if status.stage == Stage.CONCLUDED:
        raise WrongStageError(f"channel {cid} has concluded: nothing to {doing}")
    if wanted == "disputed" and status.stage == Stage.OPEN:
        raise WrongStageError(
            f"channel {cid} is not in a dispute: nothing to {doing} (start one with `tchan challenge`)"
        )
    if wanted == "open" and status.stage == Stage.DISPUTED:
        registered = "no state" if status.registered_version is None else f"version {status.registered_version}"
        raise WrongStageError(
            f"channel {cid} is in a dispute already ({registered} registered, deadline {when(status.deadline)}): "
            "answer it with `tchan refute`"
        )


# --------------------------------------------------------------------------- challenge, refute


def challenge_command(args: argparse.Namespace) -> int:
    """Register a co-signed state of the store on-chain and start a dispute."""
    out = Output.of(args)
    version = check_version_arg("--version", args.version)
    with session(args, out) as s:
        signed = s.signed(version)
        sender = s.sender(args)
        if sender.address not in (s.params.trader, s.params.broker):
            raise NotParticipantError(
                f"{sender.address} may not challenge channel {hex_id(s.channel_id)}: only its trader "
                f"{s.params.trader} or its broker {s.params.broker} may"
            )
        require_stage(s, s.status(), "open", "challenge")
        newest = s.signed(None).state.version
        if signed.state.version < newest:
            out.progress(
                f"note: challenging with version {signed.state.version}; the store holds version {newest}, "
                "and the counterparty may refute with any newer co-signed state"
            )
        receipt = s.adjudicator.challenge(sender, s.params, signed)
        result = s.transaction(receipt, sender, ("Challenged",))
        event = s.event(result, "Challenged")
        status = s.status()
        result.update(
            command="challenge",
            version=int(event["version"]),
            deadline=int(event["deadline"]),
            refutation_end=int(status.refutation_end(s.params)),
        )
    out.result(
        result,
        lambda: "\n".join(
            [
                f"challenged channel {hex_id(s.channel_id)} with version {result['version']}",
                f"  refutations accepted until {when(result['refutation_end'])}",
                f"  deadline {when(result['deadline'])}: anyone may conclude after it",
                f"  {tx_line(result)}",
            ]
        ),
    )
    return 0


def refute_command(args: argparse.Namespace) -> int:
    """Replace the registered state with a strictly newer co-signed one from the store."""
    from offchain.chain.client import RegistrationKind

    out = Output.of(args)
    version = check_version_arg("--version", args.version)
    with session(args, out) as s:
        signed = s.signed(version)
        status = s.status()
        require_stage(s, status, "disputed", "refute")
        end = int(status.refutation_end(s.params))
        if ChainClock(s.chain).now() >= end:
            raise WrongStageError(
                f"the refutation phase of channel {hex_id(s.channel_id)} ended at {when(end)}: "
                f"conclude after the deadline {when(status.deadline)}"
            )
        registered = status.registered_version
        if status.kind != RegistrationKind.NO_STATE and registered is not None and signed.state.version <= registered:
            which = f"the store's newest co-signed version, {signed.state.version}," if version is None else ""
            raise VersionNotNewerError(
                f"{which or f'version {signed.state.version}'} is not newer than the registered version "
                f"{registered}: nothing to refute with"
            )
        sender = s.sender(args)
        receipt = s.adjudicator.refute(sender, s.params, signed)
        result = s.transaction(receipt, sender, ("Refuted",))
        event = s.event(result, "Refuted")
        result.update(
            command="refute",
            replaced_version=registered,
            version=int(event["version"]),
            deadline=int(event["deadline"]),
        )
    replaced = "no state" if registered is None else f"version {registered}"
    out.result(
        result,
        lambda: "\n".join(
            [
                f"refuted {replaced} of channel {hex_id(s.channel_id)} with version {result['version']}",
                f"  new deadline {when(result['deadline'])}",
                f"  {tx_line(result)}",
            ]
        ),
    )
    return 0


# --------------------------------------------------------------------------- evidence


def candidate_prices(s: Session, state: ChannelState, market: int | None, batch: int | None) -> list[StoredBatchPrice]:
    """The broker-signed prices of the store that may cross an open order of ``state``, by batch:
    those of (``market``, ``batch``) when given, else every price after the batch the state
    reflects in each market of an open order."""
    from offchain.model import MAX_AMOUNT

    broker = s.params.broker
    if market is not None and batch is not None:
        found = s.store.batch_prices(broker, market, batch)
        if not found:
            raise NothingToSubmitError(
                f"the store holds no price signed by the broker {broker} for market {market} batch {batch}"
            )
        return found
    lows: dict[int, int] = {}
    for open_order in state.open_orders:
        order = open_order.order
        try:
            index = s.params.market_index(order.market)
        except ValidationError:
            continue
        low = max(open_order.first_batch, state.outcomes[index].last_batch + 1)
        lows[order.market] = min(lows.get(order.market, low), low)
    prices: list[StoredBatchPrice] = []
    for market_id, low in sorted(lows.items()):
        prices += s.store.batch_prices_between(broker, market_id, low, MAX_AMOUNT)
    prices.sort(key=lambda p: p.price.batch)
    return prices


def choose_evidence(
    s: Session, state: ChannelState, known: dict[int, Evidence], candidates: list[StoredBatchPrice], now: int
) -> list[StoredBatchPrice]:
    """The candidates that change the adjudicator's evidence, taken by batch, so that each order
    ends with the earliest crossing batch (:func:`offchain.settlement.record_evidence` is the
    adjudicator's rule). A price with a bad signature is left out."""
    from offchain.errors import SignatureError
    from offchain.settlement import record_evidence
    from offchain.signing import verify

    evidence = dict(known)
    chosen: list[StoredBatchPrice] = []
    for candidate in candidates:
        try:
            verify(s.domain.batch_price_digest(candidate.price), candidate.signature, s.params.broker)
            after = record_evidence(evidence, s.params, state, candidate.price, now)
        except SignatureError as exc:
            s.out.progress(f"note: skipping a price of batch {candidate.price.batch}: {exc.reason}")
            continue
        except ValidationError:
            continue
        if after != evidence:
            chosen.append(candidate)
            evidence = after
    return chosen


def evidence_command(args: argparse.Namespace) -> int:
    """Submit broker-signed batch prices that fill open orders of the registered state."""
    from offchain.chain.client import RegistrationKind

    out = Output.of(args)
    check_batch_args(args)
    with session(args, out) as s:
        status = s.status()
        require_stage(s, status, "disputed", "submit evidence for")
        if status.kind != RegistrationKind.FINGERPRINT:
            raise NothingToSubmitError(
                f"the registered state of channel {hex_id(s.channel_id)} has no open orders: no evidence applies"
            )
        clock = ChainClock(s.chain)
        now = clock.now()
        if now >= status.deadline:
            raise WrongStageError(f"evidence was accepted until the deadline {when(status.deadline)}: conclude now")
        registered = s.require_registered_state(status)
        state = registered.state
        if not state.open_orders:
            raise NothingToSubmitError(f"the registered version {state.version} has no open orders")
        known = s.adjudicator.evidence(s.channel_id, state)
        candidates = candidate_prices(s, state, args.market, args.batch)
        chosen = choose_evidence(s, state, known, candidates, now)
        if not chosen:
            held = "; ".join(
                f"order {i}: batch {e.batch} at {s.units.short(e.price)}" for i, e in sorted(known.items())
            )
            which = f"the price of market {args.market} batch {args.batch}" if args.market is not None else "no price"
            raise NothingToSubmitError(
                f"{which} in the store crosses an open order of the registered version {state.version} "
                f"earlier than the evidence the adjudicator holds ({held or 'none'})"
            )
        sender = s.sender(args)
        results = []
        for start in range(0, len(chosen), MAX_EVIDENCE_PRICES):
            chunk = chosen[start : start + MAX_EVIDENCE_PRICES]
            receipt = s.adjudicator.submit_evidence(sender, s.params, state, [(p.price, p.signature) for p in chunk])
            results.append(s.transaction(receipt, sender, ("EvidenceAccepted",)))
        accepted = [
            _accepted(s, state, e["args"]) for r in results for e in r["events"] if e["event"] == "EvidenceAccepted"
        ]
        result = {
            **results[-1],
            "command": "evidence",
            "version": state.version,
            "transactions": [{k: r[k] for k in ("tx", "block", "gas_used")} for r in results],
            "submitted": [p.price.to_json() for p in chosen],
            "accepted": accepted,
        }
    out.result(
        result,
        lambda: "\n".join(
            [f"evidence for version {state.version} of channel {hex_id(s.channel_id)}:"]
            + [
                f"  order {a['order_index']} (nonce {a['nonce']}, {a['side']} "
                f"{s.synthetic(a['market'], a['amount'])}) fills at {s.units.short(a['price'])} from batch "
                f"{a['batch']}: {s.units.short(a['collateral'])} collateral, fee {s.units.short(a['fee'])}"
                for a in accepted
            ]
            + [f"  {tx_line(r)}" for r in results]
        ),
    )
    return 0


def _accepted(s: Session, state: ChannelState, args: dict[str, Any]) -> dict[str, Any]:
    """An ``EvidenceAccepted`` event with the fill it implies at conclusion."""
    from offchain.settlement import evidence_fill

    index = int(args["orderIndex"])
    open_order = state.open_orders[index]
    resolution = s.params.markets[s.params.market_index(open_order.order.market)].resolution
    fill = evidence_fill(open_order, int(args["price"]), resolution)
    return {
        "order_index": index,
        "nonce": open_order.order.nonce,
        "side": "buy" if open_order.order.is_buy else "sell",
        "market": int(args["market"]),
        "batch": int(args["batch"]),
        "price": int(args["price"]),
        "amount": fill.amount,
        "collateral": fill.collateral,
        "fee": fill.fee,
    }


# --------------------------------------------------------------------------- conclude


def conclude_command(args: argparse.Namespace) -> int:
    """After the deadline, pay the channel out; at once when the broker is slashed."""
    from offchain.chain.client import RegistrationKind, Stage

    out = Output.of(args)
    with session(args, out) as s:
        status = s.status()
        if status.stage == Stage.CONCLUDED:
            raise WrongStageError(f"channel {hex_id(s.channel_id)} has concluded already")
        slashed = s.adjudicator.slashed_at(s.params.broker)
        sender = s.sender(args)
        registered_orders: tuple[OpenOrder, ...] = ()
        if slashed is not None:
            receipt = send(
                s.chain, sender, s.adjudicator.contract.functions.concludeSlashed(s.params.header().as_abi())
            )
            how = f"concludeSlashed: the broker was slashed at {when(slashed)}, so the trader takes everything"
        else:
            require_stage(s, status, "disputed", "conclude")
            if status.kind == RegistrationKind.FINGERPRINT:
                state = s.require_registered_state(status).state
                registered_orders = state.open_orders
                fn = s.adjudicator.contract.functions.concludeWithState(s.params.as_abi(), state.as_abi())
                how = f"concludeWithState with the registered version {state.version}"
            else:
                fn = s.adjudicator.contract.functions.conclude(s.params.header().as_abi())
                registered = status.registered_version
                what = "dispute" if registered is None else f"version {registered}"
                how = f"conclude: the registered {what} pays out without a state"
            receipt = wait_and_conclude(s, status, sender, fn, args.wait)
        result = s.transaction(receipt, sender, ("Concluded",))
        event = s.event(result, "Concluded")
        deferred = [e["args"] for e in result["events"] if e["event"] == "PayoutDeferred"]
        fills = [e["args"] for e in result["events"] if e["event"] == "OrderFilledByEvidence"]
        result.update(
            command="conclude",
            how=how,
            slashed=slashed is not None,
            to_trader=int(event["toTrader"]),
            to_broker=int(event["toBroker"]),
            underfunded=bool(event["underfunded"]),
            deferred=[{"account": d["account"], "amount": int(d["amount"])} for d in deferred],
        )
    out.result(
        result,
        lambda: "\n".join(
            [
                f"concluded channel {hex_id(s.channel_id)} ({how})",
                f"  trader {s.params.trader}: {s.units(result['to_trader'])}",
                f"  broker {s.params.broker}: {s.units(result['to_broker'])}",
            ]
            + (["  underfunded: every deposit went back to whoever made it"] if result["underfunded"] else [])
            + [f"  order {f['orderIndex']} filled by evidence: {fill_text(s, registered_orders, f)}" for f in fills]
            + [
                f"  the token refused to pay {d['account']}: {s.units(d['amount'])} is waiting for `tchan withdraw`"
                for d in result["deferred"]
            ]
            + [f"  {tx_line(result)}"]
        ),
    )
    return 0


def fill_text(s: Session, orders: tuple[OpenOrder, ...], fill: dict[str, Any]) -> str:
    """An ``OrderFilledByEvidence`` event for people: ``0.5 at 1995.00 tUSD (batch 2)``."""
    index, amount = int(fill["orderIndex"]), int(fill["amount"])
    size = s.synthetic(orders[index].order.market, amount) if index < len(orders) else f"{amount} base units"
    return f"{size} at {s.units.short(int(fill['price']))} (batch {fill['batch']})"


def wait_and_conclude(s: Session, status: OnChainChannel, sender: Transactor, fn: Any, wait: bool) -> TxReceipt:
    """Send the conclusion once the deadline has passed; with ``wait``, wait for it first (a line
    on stderr every few seconds), else refuse before the deadline."""
    from offchain.chain import errors as ce

    clock = ChainClock(s.chain)
    deadline = int(status.deadline)
    last_report = 0.0
    while True:
        now = clock.now()
        if now >= deadline:
            try:
                return send(s.chain, sender, fn, at=now)
            except (ce.DeadlineNotReached, DeadlineNotReachedError):
                if not wait:
                    raise
                left = 0
        else:
            left = deadline - now
            if not wait:
                raise DeadlineNotReachedError(
                    f"channel {hex_id(s.channel_id)} can be concluded from {when(deadline)}, {left} s from now "
                    "(latest block at " + when(clock.latest) + "): run again then, or add --wait"
                )
        if time.monotonic() - last_report >= PROGRESS_SECONDS:
            last_report = time.monotonic()
            s.out.progress(
                f"waiting for the deadline: {left} s left" if left else "waiting for a block past the deadline"
            )
        time.sleep(min(POLL_SECONDS, max(left, POLL_SECONDS / 4)))


# --------------------------------------------------------------------------- withdraw


def withdraw_command(args: argparse.Namespace) -> int:
    """Pay out a payout credit the adjudicator holds for an account (a refused transfer)."""
    from offchain.chain.client import AdjudicatorClient, TokenClient
    from offchain.chain.connection import Transactor
    from offchain.store import open_store

    out = Output.of(args)
    token = check_address_arg("--token", args.token)
    to = check_address_arg("--to", args.to)
    account = check_address_arg("--account", args.account)
    path = check_store_path(args.store) if args.store is not None else None
    channel_id = parse_channel_id(args.channel)
    if channel_id is not None and path is None:
        raise ValidationError("--channel needs --store, the store that holds the channel")
    _, chain, deployment = open_deployment(args)
    if token is None and path is not None:
        store = open_store(path)
        try:
            record = pick_channel(store, channel_id)
            check_same_deployment(record.params, chain, deployment)
            token = record.params.token
        finally:
            store.close()
    if token is None:
        token = deployment.token
    adjudicator = AdjudicatorClient(chain, deployment.adjudicator)
    sender = Transactor.from_key(chain, load_key(args, chain.chain_id))
    account = account or sender.address
    recipient = to or account
    if recipient != account and sender.address != account:
        raise NotParticipantError(
            f"only {account} may send its credit elsewhere; {sender.address} may only pay it to {account} itself"
        )
    amount = int(adjudicator.withdrawable(token, account))
    if amount == 0:
        raise NothingToWithdrawError(
            f"the adjudicator holds no credit of token {token} for {account}: payouts are paid at conclusion, "
            "and a credit is left only when the token refused the transfer"
        )
    receipt = adjudicator.withdraw(sender, token, account, recipient)
    if int(receipt["status"]) != 1:
        raise ChainError(f"transaction 0x{bytes(receipt['transactionHash']).hex()} failed")
    withdrawn = [e for e in adjudicator.events(receipt, "Withdrawn") if e["account"] == account]
    if not withdrawn:
        raise ChainError(f"transaction 0x{bytes(receipt['transactionHash']).hex()} was mined without a Withdrawn event")
    paid = int(withdrawn[0]["amount"])
    balance = int(TokenClient(chain, token).balance_of(recipient))
    units = TokenUnits.of(chain, token)
    result = {
        "command": "withdraw",
        "sender": sender.address,
        "token": token,
        "account": account,
        "to": recipient,
        "amount": paid,
        "balance": balance,
        "tx": bytes(receipt["transactionHash"]),
        "block": int(receipt["blockNumber"]),
        "gas_used": int(receipt["gasUsed"]),
        "events": [{"event": "Withdrawn", "args": e} for e in withdrawn],
    }
    out.result(
        result,
        lambda: "\n".join(
            [
                f"withdrew {units(paid)} of token {token} for {account} to {recipient}",
                f"  {recipient} now holds {units(balance)}",
                f"  {tx_line(result)}",
            ]
        ),
    )
    return 0


# --------------------------------------------------------------------------- proofs


def two_signed_prices(s: Session, market: int | None, batch: int | None) -> tuple[StoredBatchPrice, StoredBatchPrice]:
    """Two different prices the channel's broker signed for one (market, batch) in the store: the
    one asked for, or the first such batch of any market of the channel."""
    from offchain.engine.slashing import two_prices
    from offchain.errors import SignatureError
    from offchain.model import MAX_AMOUNT
    from offchain.signing import verify

    broker = s.params.broker

    def valid(p: StoredBatchPrice) -> bool:
        try:
            verify(s.domain.batch_price_digest(p.price), p.signature, broker)
        except SignatureError:
            return False
        return True

    if market is not None and batch is not None:
        groups = [[p for p in s.store.batch_prices(broker, market, batch) if valid(p)]]
    else:
        by_batch: dict[tuple[int, int], list[StoredBatchPrice]] = {}
        for m in s.params.markets:
            for p in s.store.batch_prices_between(broker, m.id, 0, MAX_AMOUNT):
                by_batch.setdefault((p.price.market, p.price.batch), []).append(p)
        groups = [[p for p in group if valid(p)] for _, group in sorted(by_batch.items())]
    for group in groups:
        for i, price in enumerate(group):
            other = two_prices(group[:i], price)
            if other is not None:
                return other, price
    where = f"market {market} batch {batch}" if market is not None else "any batch"
    raise NoProofError(f"the store holds no two different prices signed by the broker {broker} for {where}")


def prove_two_prices_command(args: argparse.Namespace) -> int:
    """Prove that the channel's broker signed two different prices for one batch."""
    out = Output.of(args)
    check_batch_args(args)
    with session(args, out) as s:
        broker = s.params.broker
        slashed = s.adjudicator.slashed_at(broker)
        if slashed is not None:
            raise WrongStageError(
                f"the broker {broker} was slashed already at {when(slashed)}: take the channel with `tchan conclude`"
            )
        first, second = two_signed_prices(s, args.market, args.batch)
        sender = s.sender(args)
        receipt = s.adjudicator.prove_two_prices(
            sender, broker, (first.price, first.signature), (second.price, second.signature)
        )
        result = s.transaction(receipt, sender, ("BrokerSlashed",))
        result.update(
            command="prove-two-prices",
            broker=broker,
            market=first.price.market,
            batch=first.price.batch,
            prices=[first.price.price, second.price.price],
        )
    out.result(
        result,
        lambda: "\n".join(
            [
                f"proved that broker {broker} signed two prices for market {result['market']} batch "
                f"{result['batch']}: {s.units.short(first.price.price)} and {s.units.short(second.price.price)}",
                "  the broker is slashed: every channel of it now pays its trader everything "
                "(take this one with `tchan conclude`)",
                f"  {tx_line(result)}",
            ]
        ),
    )
    return 0


def find_left_out(
    s: Session, version: int | None, order_index: int | None, now: int
) -> tuple[CoSignedState, int, StoredBatchPrice]:
    """A co-signed state of the store that leaves out an order a broker-signed price crossed
    (:func:`offchain.engine.slashing.left_out_orders`): the state ``version`` (the newest first
    otherwise), order ``order_index`` (any otherwise)."""
    from offchain.engine.slashing import left_out_orders

    broker = s.params.broker

    def prices(market: int, first: int, last: int) -> list[StoredBatchPrice]:
        return s.store.batch_prices_between(broker, market, first, last)

    if version is not None or order_index is not None:
        candidates = [s.signed(version)]
    else:
        newest = s.signed(None).state.version
        candidates = []
        for v in range(newest, -1, -1):
            stored = s.store.state(s.channel_id, v)
            if stored is not None and stored.co_signed:
                candidates.append(s.signed(v))
    for signed in candidates:
        state = signed.state
        if order_index is not None and order_index >= len(state.open_orders):
            raise NoProofError(
                f"version {state.version} has {len(state.open_orders)} open orders: "
                f"there is no order index {order_index}"
            )
        for proof in left_out_orders(s.params, state, prices, now):
            if order_index is None or proof.index == order_index:
                return signed, proof.index, proof.price
    if len(candidates) == 1:
        which = f"order {order_index} of version" if order_index is not None else "version"
        raise NoProofError(
            f"{which} {candidates[0].state.version} does not prove a left-out order with the prices in the store "
            "(the state must reflect a batch whose signed price crossed the order, still open, unfilled, unexpired)"
        )
    raise NoProofError("no co-signed state in the store leaves out an order that a broker-signed price crossed")


def prove_left_out_order_command(args: argparse.Namespace) -> int:
    """Prove with a co-signed state that the broker left out a crossed order: the trader takes
    the channel at once."""
    from offchain.chain.client import Stage

    out = Output.of(args)
    version = check_version_arg("--version", args.version)
    order_index = check_version_arg("--order-index", args.order_index)
    with session(args, out) as s:
        status = s.status()
        if status.stage == Stage.CONCLUDED:
            raise WrongStageError(f"channel {hex_id(s.channel_id)} has concluded: nothing to prove")
        signed, index, price = find_left_out(s, version, order_index, ChainClock(s.chain).now())
        sender = s.sender(args)
        receipt = s.adjudicator.prove_left_out_order(sender, s.params, signed, index, (price.price, price.signature))
        result = s.transaction(receipt, sender, ("LeftOutOrderProven", "Concluded"))
        event = s.event(result, "Concluded")
        order = signed.state.open_orders[index].order
        result.update(
            command="prove-left-out-order",
            version=signed.state.version,
            order_index=index,
            nonce=order.nonce,
            price=price.price.to_json(),
            to_trader=int(event["toTrader"]),
            to_broker=int(event["toBroker"]),
        )
    out.result(
        result,
        lambda: "\n".join(
            [
                f"proved with version {signed.state.version} that the broker left out order {index} "
                f"(nonce {order.nonce}), crossed by batch {price.price.batch} at {s.units.short(price.price.price)}",
                f"  the trader takes the channel: {s.units(result['to_trader'])} to {s.params.trader}",
                f"  {tx_line(result)}",
            ]
        ),
    )
    return 0


# --------------------------------------------------------------------------- revoke an agent


def revoke_agent_command(args: argparse.Namespace) -> int:
    """Revoke the challenge authorisations the sender signed for an agent in the channel."""
    out = Output.of(args)
    agent = check_address_arg("--agent", args.agent)
    if agent is None:
        raise ValidationError("--agent ADDRESS is required: the agent whose authorisations to revoke")
    with session(args, out) as s:
        sender = s.sender(args)
        if sender.address not in (s.params.trader, s.params.broker):
            raise NotParticipantError(
                f"only the channel's trader or broker revokes what it signed; {sender.address} is neither"
            )
        if s.adjudicator.authorization_revoked(s.channel_id, agent, sender.address):
            raise AlreadyRevokedError(
                f"{sender.address} revoked its authorisations for {agent} in this channel already"
            )
        receipt = s.adjudicator.revoke_challenge_authorization(sender, s.params, agent)
        result = s.transaction(receipt, sender, ("ChallengeAuthorizationRevoked",))
        result.update(command="revoke-agent", agent=agent, participant=sender.address)
    out.result(
        result,
        lambda: "\n".join(
            [
                f"revoked the challenge authorisations {sender.address} signed for {agent} "
                f"in channel {hex_id(s.channel_id)}: that agent can no longer challenge with them",
                f"  {tx_line(result)}",
            ]
        ),
    )
    return 0


# --------------------------------------------------------------------------- channel show, list


def on_chain_view(s: Session) -> dict[str, Any]:
    """What the adjudicator holds for the channel."""
    from offchain.chain.client import RegistrationKind, Stage

    status = s.status()
    disputed = status.stage == Stage.DISPUTED
    evidence: list[dict[str, Any]] | None = []
    registered = s.registered_state(status) if disputed else None
    if registered is not None:
        held = s.adjudicator.evidence(s.channel_id, registered.state)
        evidence = [
            {
                "order_index": i,
                "nonce": registered.state.open_orders[i].order.nonce,
                "batch": e.batch,
                "price": e.price,
            }
            for i, e in sorted(held.items())
        ]
    elif disputed and status.kind == RegistrationKind.FINGERPRINT:
        evidence = None  # the registered state is unknown here
    slashed = s.adjudicator.slashed_at(s.params.broker)
    return {
        "block_time": s.chain.now(),
        "stage": status.stage.name.lower(),
        "trader_deposit": status.trader_deposit,
        "broker_deposit": status.broker_deposit,
        "registered_kind": status.kind.name.lower(),
        "registered_version": status.registered_version,
        "dispute_start": status.dispute_start if disputed else None,
        "refutation_end": int(status.refutation_end(s.params)) if disputed else None,
        "deadline": status.deadline if disputed else None,
        "evidence": evidence,
        "broker_slashed_at": slashed,
        "withdrawable": {
            "trader": s.adjudicator.withdrawable(s.params.token, s.params.trader),
            "broker": s.adjudicator.withdrawable(s.params.token, s.params.broker),
        },
    }


def store_view(s: Session) -> dict[str, Any]:
    """What the store holds for the channel: the newest co-signed state and the latest prices."""
    stored = s.store.latest_co_signed(s.channel_id)
    latest = s.store.latest_state(s.channel_id)
    prices = s.store.latest_batch_prices(s.params.broker)
    view: dict[str, Any] = {
        "role": s.role,
        "status": s.record.meta.get("status"),
        "version": None,
        "newest_version": latest.state.version if latest is not None else None,
        "latest_prices": [
            {"market": market, "batch": p.price.batch, "price": p.price.price}
            for market, p in sorted(prices.items())
            if any(m.id == market for m in s.params.markets)
        ],
    }
    if stored is None:
        return view
    state = stored.state
    view.update(
        version=state.version,
        final=state.is_final,
        balances=state.balances.to_json(),
        outcomes=[
            {"market": m.id, "position": o.position, "fees": o.fees, "last_batch": o.last_batch}
            for m, o in zip(s.params.markets, state.outcomes, strict=True)
        ],
        open_orders=[
            {
                "index": i,
                "nonce": o.order.nonce,
                "market": o.order.market,
                "side": "buy" if o.order.is_buy else "sell",
                "amount_synthetic": o.order.amount_synthetic,
                "amount_collateral": o.order.amount_collateral,
                "max_fee": o.order.max_fee,
                "filled": o.filled,
                "first_batch": o.first_batch,
                "expiration": o.order.expiration,
            }
            for i, o in enumerate(state.open_orders)
        ],
    )
    return view


def show_text(s: Session, chain: dict[str, Any], held: dict[str, Any]) -> str:
    """``channel show`` for people: the chain and the store side by side."""

    u = s.units

    def text(value: Any) -> str:
        return "-" if value is None else str(value)

    def tokens(value: Any) -> str:
        return "-" if value is None else u.number(int(value))

    def at(value: int | None) -> str:
        if value is None:
            return "-"
        left = value - chain["block_time"]
        return f"{when(value)} ({f'in {left} s' if left > 0 else f'{-left} s ago'})"

    balances = held.get("balances") or {}
    registered = chain["registered_version"]
    kind = chain["registered_kind"]
    evidence = chain["evidence"]
    rows: list[tuple[str, ...]] = [
        ("stage", chain["stage"], text(held["status"])),
        (
            "version",
            f"{registered} registered ({kind})" if registered is not None else ("-" if kind == "none" else kind),
            f"{held['version']} newest co-signed" if held["version"] is not None else "none co-signed",
        ),
        ("trader deposit", tokens(chain["trader_deposit"]), tokens(balances.get("trader_deposit"))),
        ("broker deposit", tokens(chain["broker_deposit"]), tokens(balances.get("broker_deposit"))),
        ("trader available", "-", tokens(balances.get("trader_available"))),
        ("trader locked", "-", tokens(balances.get("trader_locked"))),
        ("broker available", "-", tokens(balances.get("broker_available"))),
    ]
    for outcome in held.get("outcomes", []):
        position = s.synthetic(outcome["market"], outcome["position"])
        rows.append((f"market {outcome['market']} position", "-", position))
        rows.append((f"market {outcome['market']} last batch", "-", str(outcome["last_batch"])))
    for price in held["latest_prices"]:
        rows.append(
            (f"market {price['market']} latest price", "-", f"{tokens(price['price'])} (batch {price['batch']})")
        )
    plural = "" if evidence is not None and len(evidence) == 1 else "s"
    evidence_text = "unknown" if evidence is None else f"for {len(evidence)} order{plural}" if evidence else "none"
    rows += [
        ("open orders", f"evidence: {evidence_text}", str(len(held.get("open_orders", [])))),
        ("dispute start", at(chain["dispute_start"]), "-"),
        ("refutation end", at(chain["refutation_end"]), "-"),
        ("deadline", at(chain["deadline"]), "-"),
        ("broker slashed", at(chain["broker_slashed_at"]) if chain["broker_slashed_at"] else "no", "-"),
        ("withdrawable trader", tokens(chain["withdrawable"]["trader"]), "-"),
        ("withdrawable broker", tokens(chain["withdrawable"]["broker"]), "-"),
    ]
    p = s.params
    lines = [
        f"channel {hex_id(s.channel_id)}",
        f"  trader {p.trader}  broker {p.broker}",
        f"  token {p.token}  challenge duration {p.challenge_duration} s",
        f"  latest block at {when(chain['block_time'])}",
        f"  {u.legend()}",
        "",
        table(rows, ("", "on-chain", f"store ({held['role']})")),
    ]
    if held.get("open_orders"):
        by_index = {e["order_index"]: e for e in evidence or []}
        order_rows = [
            (
                str(o["index"]),
                str(o["nonce"]),
                str(o["market"]),
                o["side"],
                s.synthetic(o["market"], o["amount_synthetic"]),
                tokens(o["amount_collateral"]),
                s.synthetic(o["market"], o["filled"]),
                str(o["first_batch"]),
                f"{tokens(by_index[o['index']]['price'])} (batch {by_index[o['index']]['batch']})"
                if o["index"] in by_index and registered == held["version"]
                else "-",
            )
            for o in held["open_orders"]
        ]
        header = ("order", "nonce", "market", "side", "synthetic", "collateral", "filled", "first batch", "evidence")
        lines += ["", f"open orders of version {held['version']}:", table(order_rows, header)]
    if evidence and registered != held["version"]:
        lines += ["", f"evidence for the registered version {registered}:"]
        lines += [f"  order {e['order_index']}: batch {e['batch']} at {u.short(e['price'])}" for e in evidence]
    return "\n".join(lines)


def channel_show_command(args: argparse.Namespace) -> int:
    """The channel on-chain beside the channel in the store."""
    out = Output.of(args)
    with session(args, out) as s:
        chain = on_chain_view(s)
        held = store_view(s)
        result = {"channel_id": s.channel_id, "params": s.params.to_json(), "on_chain": chain, "store": held}
        out.result(result, lambda: show_text(s, chain, held))
    return 0


def channel_list_command(args: argparse.Namespace) -> int:
    """The channels of a store, with their newest co-signed version (no node needed)."""
    from offchain.store import open_store

    out = Output.of(args)
    store = open_store(check_store_path(args.store))
    try:
        channels: list[dict[str, Any]] = []
        for record in store.channels():
            newest = store.latest_co_signed(record.channel_id)
            channels.append(
                {
                    "channel_id": record.channel_id,
                    "role": record.meta.get("role"),
                    "status": record.meta.get("status"),
                    "chain_id": record.params.chain_id,
                    "trader": record.params.trader,
                    "broker": record.params.broker,
                    "version": newest.state.version if newest is not None else None,
                }
            )
    finally:
        store.close()
    rows = [
        (
            hex_id(c["channel_id"]),
            str(c["role"]),
            str(c["status"]),
            str(c["version"]),
            str(c["trader"]),
            str(c["broker"]),
        )
        for c in channels
    ]
    header = ("channel", "role", "status", "version", "trader", "broker")
    out.result(
        {"store": args.store, "channels": channels},
        lambda: table(rows, header) if rows else f"{args.store} holds no channel",
    )
    return 0


# --------------------------------------------------------------------------- the parsers


def add_channel_args(p: argparse.ArgumentParser) -> None:
    """``--store`` and ``--channel``: which channel of which party's store."""
    p.add_argument(
        "--store",
        required=True,
        metavar="FILE",
        help="the SQLite store of the trader or the broker (channel parameters, co-signed states, signed prices)",
    )
    p.add_argument(
        "--channel", metavar="0xID", help="the channel id (default: the store's only channel; see `tchan channel list`)"
    )
    p.add_argument(
        "--trader", metavar="ADDRESS", help="the channel of this trader (in a broker's store, which holds many)"
    )


def add_batch_args(p: argparse.ArgumentParser, what: str) -> None:
    """``--market`` and ``--batch``: one batch of one market."""
    p.add_argument("--market", type=int, metavar="M", help=f"market id of the batch {what} (with --batch)")
    p.add_argument("--batch", type=int, metavar="B", help=f"batch number {what} (with --market)")


def _parser(
    sub: Any, parents: list[argparse.ArgumentParser], name: str, help_text: str, description: str
) -> argparse.ArgumentParser:
    """A subcommand's parser with its one-line help and its description."""
    p: argparse.ArgumentParser = sub.add_parser(name, parents=parents, help=help_text, description=description)
    return p


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the dispute subcommands and ``channel show``/``channel list`` to ``tchan``."""
    commands: list[tuple[str, str, str, Callable[[argparse.Namespace], int], str]] = [
        (
            "challenge",
            "start a dispute with a co-signed state from the store",
            "Register a co-signed state of the store on-chain (the newest by default): the deadline is now plus "
            "the channel's challenge duration. Only the trader or the broker may challenge.",
            challenge_command,
            "the trader or the broker",
        ),
        (
            "refute",
            "answer a dispute with a newer co-signed state from the store",
            "Replace the registered state with a strictly newer co-signed one (the store's newest by default) "
            "during the refutation phase; the deadline moves to now plus the challenge duration. Anyone may refute.",
            refute_command,
            "the account paying the gas",
        ),
        (
            "evidence",
            "submit broker-signed batch prices that fill open orders of the registered state",
            "Submit every broker-signed batch price in the store that crosses an open order of the registered "
            "state earlier than the evidence the adjudicator holds (the earliest crossing batch per order), or only "
            "the price of --market M --batch B. Such an order fills at that price at conclusion. Accepted until "
            "the deadline; anyone may submit.",
            evidence_command,
            "the account paying the gas",
        ),
        (
            "conclude",
            "pay out a dispute after its deadline (at once if the broker is slashed)",
            "After the deadline, conclude the dispute: with the registered state when it has open orders or "
            "positions (from the store, or from the transaction that registered it). If the broker has been "
            "slashed, concludeSlashed pays the trader everything at once, disputed or not. Anyone may conclude.",
            conclude_command,
            "the account paying the gas",
        ),
        (
            "prove-two-prices",
            "prove that the broker signed two prices for one batch (slashes the broker)",
            "Find two different prices the channel's broker signed for one (market, batch) in the store (or the "
            "one given by --market and --batch) and prove them on-chain. From then on every channel of the broker "
            "pays its trader everything: take this one with `tchan conclude`. Anyone may prove it.",
            prove_two_prices_command,
            "the account paying the gas",
        ),
        (
            "prove-left-out-order",
            "prove that the broker left out an order its price crossed (the trader takes the channel)",
            "Find a co-signed state in the store that reflects a batch whose broker-signed price crossed one of "
            "its open orders, still unfilled and unexpired, and prove it on-chain: the trader takes the whole "
            "channel at once. Anyone may prove it.",
            prove_left_out_order_command,
            "the account paying the gas",
        ),
    ]
    for name, help_text, description, func, who in commands:
        p = _parser(sub, parents, name, help_text, description)
        add_network_args(p)
        add_key_args(p, who)
        add_channel_args(p)
        if name in ("challenge", "refute"):
            p.add_argument(
                "--version",
                type=int,
                metavar="N",
                help="the co-signed version of the store to register (default: the newest)",
            )
        if name == "evidence":
            add_batch_args(p, "whose signed price to submit")
        if name == "prove-two-prices":
            add_batch_args(p, "with two different signed prices")
        if name == "prove-left-out-order":
            p.add_argument(
                "--version", type=int, metavar="N", help="the co-signed version that proves it (default: search all)"
            )
            p.add_argument(
                "--order-index",
                type=int,
                metavar="I",
                help="the index of the left-out order in that state's open orders (default: any)",
            )
        if name == "conclude":
            p.add_argument(
                "--wait",
                action="store_true",
                help="wait for the deadline (a progress line on stderr every few seconds), then conclude",
            )
        p.set_defaults(func=func)

    p = _parser(
        sub,
        parents,
        "revoke-agent",
        "revoke the challenge authorisations you signed for an agent (a watchtower) in the channel",
        "Revoke on-chain every challenge authorisation the sender (the channel's trader or broker) signed for "
        "--agent in the channel: that agent can no longer challenge with them. Use it for a watchtower you "
        "stopped using or whose key leaked. The other participant's authorisations are its own.",
    )
    add_network_args(p)
    add_key_args(p, "the trader or the broker")
    add_channel_args(p)
    p.add_argument("--agent", required=True, metavar="ADDRESS", help="the agent (e.g. a watchtower's address)")
    p.set_defaults(func=revoke_agent_command)

    p = _parser(
        sub,
        parents,
        "withdraw",
        "withdraw a payout the token refused to push at conclusion",
        "Pay out the credit the adjudicator holds for an account (the sender by default) in a token: what was "
        "left when the token refused a payout at conclusion. Payouts the token accepted were paid already.",
    )
    add_network_args(p)
    add_key_args(p, "the sender")
    p.add_argument("--store", metavar="FILE", help="a party's store: withdraw in the token of its channel")
    p.add_argument("--channel", metavar="0xID", help="which channel of --store (default: its only channel)")
    p.add_argument(
        "--token", metavar="ADDRESS", help="the token (default: the channel's, else the deployment's test token)"
    )
    p.add_argument("--account", metavar="ADDRESS", help="whose credit to pay (default: the sender)")
    p.add_argument(
        "--to", metavar="ADDRESS", help="recipient (default: the account; another only when the sender is the account)"
    )
    p.set_defaults(func=withdraw_command)

    channel = _parser(
        sub, parents, "channel", "show a channel, or list the channels of a store", "Look at channels: show, list."
    )
    actions = channel.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=type(channel))
    p = actions.add_parser(
        "show",
        parents=parents,
        help="the channel on-chain beside the channel in the store",
        description="The adjudicator's view (stage, registered version, deadlines, deposits, evidence, "
        "slashing, withdrawable credits) beside the store's (newest co-signed state, balances, positions, open "
        "orders, latest signed prices). With --json, one JSON document with amounts as decimal strings.",
    )
    add_network_args(p)
    add_channel_args(p)
    p.set_defaults(func=channel_show_command)
    p = actions.add_parser(
        "list",
        parents=parents,
        help="the channels of a store",
        description="Every channel of a store with its role, status and newest co-signed version (no node needed).",
    )
    p.add_argument("--store", required=True, metavar="FILE", help="the SQLite store of a trader or a broker")
    p.set_defaults(func=channel_list_command)
