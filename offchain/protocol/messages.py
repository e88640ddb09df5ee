"""The wire format between trader and broker: versioned JSON messages (docs/protocol.md).

Every message is one JSON object ``{"v": 1, "type": ..., "id": ..., ...}``. Amounts, versions,
nonces and batch numbers travel as decimal strings; addresses as EIP-55 hex; bytes as 0x-hex.
:func:`parse` validates a message in full (shape, types, bounds, canonical numbers) and returns
a typed message object, or raises :class:`ProtocolError` with the code to answer with; nothing
is stored or signed before a message has passed it. :func:`encode` is its inverse.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from offchain.engine.channel import (
    AccountDeposits,
    CancelOrder,
    CreateOrder,
    Fill,
    Finalize,
    Trade,
    Transition,
)
from offchain.errors import TradingChannelsError
from offchain.model import (
    MAX_AMOUNT,
    BatchPrice,
    ChannelParams,
    ChannelState,
    Market,
    Order,
    check_address,
    decimal_field,
    hex_field,
    json_object,
    parse_decimal,
)
from offchain.types import (
    Address,
    BatchNumber,
    ChannelId,
    Nonce,
    Price,
    Signature,
    SyntheticAmount,
    Timestamp,
    TokenAmount,
)

T = TypeVar("T")

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 1 << 20
MAX_ID_LENGTH = 64
MAX_BRACKETS = 4096
FLOWS = ("server_initiative", "cooperative")
KINDS = ("setup", "deposit", "lock", "cancel", "trade", "finalize")


class ProtocolError(TradingChannelsError):
    """A message was refused; ``code`` is what the error reply carries."""

    code = "invalid_message"

    def __init__(self, code: str, reason: str, rule: str | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.rule = rule


# Error codes (docs/protocol.md lists them with their meaning).
INVALID_MESSAGE = "invalid_message"
UNSUPPORTED_VERSION = "unsupported_version"
UNKNOWN_TYPE = "unknown_type"
NOT_AUTHENTICATED = "not_authenticated"
AUTH_FAILED = "auth_failed"
UNKNOWN_CHANNEL = "unknown_channel"
NOT_YOUR_CHANNEL = "not_your_channel"
CHANNEL_EXISTS = "channel_exists"
WRONG_FLOW = "wrong_flow"
NOT_YOUR_TURN = "not_your_turn"
PROPOSAL_PENDING = "proposal_pending"
STALE_VERSION = "stale_version"
NO_PENDING_PROPOSAL = "no_pending_proposal"
BAD_SIGNATURE = "bad_signature"
RULE_VIOLATION = "rule_violation"
STALE_MARKS = "stale_marks"
CLOCK_SKEW = "clock_skew"
BAD_PARAMS = "bad_params"
DEPOSIT_NOT_SEEN = "deposit_not_seen"
CHANNEL_CLOSED = "channel_closed"
KIND_NOT_ALLOWED = "kind_not_allowed"
UNRESPONSIVE = "unresponsive"
BROKER_DEPOSITED = "broker_deposited"


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Challenge:
    """Broker -> trader on connect: sign this nonce (with the broker's address, so the proof is
    good for this broker only) to prove you control your address."""

    nonce: bytes
    broker: Address
    id: str = ""


@dataclass(frozen=True, slots=True)
class Hello:
    """Trader -> broker: the answer to the challenge (EIP-191 personal signature)."""

    address: Address
    signature: Signature
    id: str = ""


@dataclass(frozen=True, slots=True)
class Welcome:
    """Broker -> trader after a valid hello: what the broker offers."""

    broker: Address
    chain_id: int
    adjudicator: Address
    token: Address
    markets: tuple[Market, ...]
    batch_seconds: int
    fee_bps: int
    open_batches: Mapping[int, int]
    channels: tuple[ChannelId, ...]
    id: str = ""


@dataclass(frozen=True, slots=True)
class RequestSetup:
    """Trader -> broker (server initiative): please propose the setup of a channel."""

    nonce: int
    challenge_duration: int
    id: str = ""


@dataclass(frozen=True, slots=True)
class CreateOrderRequest:
    """Trader -> broker (server initiative): a signed order; the broker proposes its lock."""

    channel_id: ChannelId
    order: Order
    signature: Signature
    id: str = ""


@dataclass(frozen=True, slots=True)
class CancelOrderRequest:
    channel_id: ChannelId
    nonce: Nonce
    id: str = ""


@dataclass(frozen=True, slots=True)
class RequestDeposit:
    """Trader -> broker (server initiative): deposits landed on-chain; account for them."""

    channel_id: ChannelId
    id: str = ""


@dataclass(frozen=True, slots=True)
class RequestFinalize:
    channel_id: ChannelId
    id: str = ""


@dataclass(frozen=True, slots=True)
class Resume:
    """Trader -> broker after (re)connecting: send me where this channel stands."""

    channel_id: ChannelId
    id: str = ""


@dataclass(frozen=True, slots=True)
class Propose:
    """A proposed state, signed by its proposer, with the transition that produces it.

    For ``setup`` the transition carries the channel parameters and the flow."""

    channel_id: ChannelId
    kind: str
    transition: Transition | None
    state: ChannelState
    signature: Signature
    params: ChannelParams | None = None
    flow: str | None = None
    id: str = ""


@dataclass(frozen=True, slots=True)
class Ack:
    """The countersignature of a proposal."""

    channel_id: ChannelId
    version: int
    signature: Signature
    id: str = ""


@dataclass(frozen=True, slots=True)
class Yield:
    """Cooperative flow: the turn passes to the other side."""

    channel_id: ChannelId
    version: int
    id: str = ""


@dataclass(frozen=True, slots=True)
class RequestYield:
    """Cooperative flow: the side without the turn asks for it; an idle holder yields."""

    channel_id: ChannelId
    id: str = ""


@dataclass(frozen=True, slots=True)
class BatchPriceMessage:
    """Broker -> every trader of the market: the signed clearing price of one batch."""

    batch_price: BatchPrice
    signature: Signature
    id: str = ""


@dataclass(frozen=True, slots=True)
class Sync:
    """Broker -> trader: where a channel stands (answer to resume and after setup)."""

    channel_id: ChannelId
    params: ChannelParams
    flow: str
    state: ChannelState
    trader_signature: Signature
    broker_signature: Signature
    turn: str
    id: str = ""


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """The answer to a refused message; ``re`` is the refused message's id."""

    re: str
    code: str
    reason: str
    rule: str | None = None
    channel_id: ChannelId | None = None
    id: str = ""


@dataclass(frozen=True, slots=True)
class Notice:
    """Either side: something the other should know that needs no answer (e.g. unresponsive)."""

    code: str
    reason: str
    channel_id: ChannelId | None = None
    id: str = ""


Message = (
    Challenge
    | Hello
    | Welcome
    | RequestSetup
    | CreateOrderRequest
    | CancelOrderRequest
    | RequestDeposit
    | RequestFinalize
    | Resume
    | Propose
    | Ack
    | Yield
    | RequestYield
    | BatchPriceMessage
    | Sync
    | ErrorReply
    | Notice
)

_TYPE_NAMES: dict[type, str] = {
    Challenge: "challenge",
    Hello: "hello",
    Welcome: "welcome",
    RequestSetup: "request_setup",
    CreateOrderRequest: "create_order",
    CancelOrderRequest: "cancel_order",
    RequestDeposit: "request_deposit",
    RequestFinalize: "request_finalize",
    Resume: "resume",
    Propose: "propose",
    Ack: "ack",
    Yield: "yield",
    RequestYield: "request_yield",
    BatchPriceMessage: "batch_price",
    Sync: "sync",
    ErrorReply: "error",
    Notice: "notice",
}


def type_name(message: Message) -> str:
    return _TYPE_NAMES[type(message)]


# --------------------------------------------------------------------------- encode


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


def transition_to_json(transition: Transition | None) -> dict[str, Any]:
    if transition is None:
        return {}
    if isinstance(transition, AccountDeposits):
        return {"trader_deposit": str(transition.trader_deposit), "broker_deposit": str(transition.broker_deposit)}
    if isinstance(transition, CreateOrder):
        return {
            "order": transition.order.to_json(),
            "signature": _hex(transition.signature),
            "first_batch": str(transition.first_batch),
            "now": str(transition.now),
            "marks": _marks_json(transition.marks),
        }
    if isinstance(transition, CancelOrder):
        return {"nonce": str(transition.nonce)}
    if isinstance(transition, Trade):
        return {
            "batch_price": transition.batch_price.to_json(),
            "fills": [
                {"nonce": str(f.nonce), "amount_synthetic": str(f.amount_synthetic), "fee": str(f.fee)}
                for f in transition.fills
            ],
            "now": str(transition.now),
            "marks": _marks_json(transition.marks),
        }
    return {"prices": _marks_json(transition.prices)}


def _marks_json(marks: Mapping[int, int]) -> dict[str, str]:
    return {str(k): str(v) for k, v in sorted(marks.items())}


def to_json(message: Message) -> dict[str, Any]:
    """The JSON object of ``message`` (without serialising it)."""
    out: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": type_name(message)}
    if message.id:
        out["id"] = message.id
    if isinstance(message, Challenge):
        out.update(nonce=_hex(message.nonce), broker=message.broker)
    elif isinstance(message, Hello):
        out.update(address=message.address, signature=_hex(message.signature))
    elif isinstance(message, Welcome):
        out.update(
            broker=message.broker,
            chain_id=str(message.chain_id),
            adjudicator=message.adjudicator,
            token=message.token,
            markets=[mk.to_json() for mk in message.markets],
            batch_seconds=str(message.batch_seconds),
            fee_bps=str(message.fee_bps),
            open_batches=_marks_json(message.open_batches),
            channels=[_hex(c) for c in message.channels],
        )
    elif isinstance(message, RequestSetup):
        out.update(nonce=str(message.nonce), challenge_duration=str(message.challenge_duration))
    elif isinstance(message, CreateOrderRequest):
        out.update(
            channel_id=_hex(message.channel_id), order=message.order.to_json(), signature=_hex(message.signature)
        )
    elif isinstance(message, CancelOrderRequest):
        out.update(channel_id=_hex(message.channel_id), nonce=str(message.nonce))
    elif isinstance(message, RequestDeposit | RequestFinalize | Resume | RequestYield):
        out["channel_id"] = _hex(message.channel_id)
    elif isinstance(message, Propose):
        out.update(
            channel_id=_hex(message.channel_id),
            kind=message.kind,
            transition=transition_to_json(message.transition),
            state=message.state.to_json(),
            final=message.state.is_final,
            signature=_hex(message.signature),
        )
        if message.params is not None:
            out["params"] = message.params.to_json()
        if message.flow is not None:
            out["flow"] = message.flow
    elif isinstance(message, Ack):
        out.update(channel_id=_hex(message.channel_id), version=str(message.version), signature=_hex(message.signature))
    elif isinstance(message, Yield):
        out.update(channel_id=_hex(message.channel_id), version=str(message.version))
    elif isinstance(message, BatchPriceMessage):
        out.update(batch_price=message.batch_price.to_json(), signature=_hex(message.signature))
    elif isinstance(message, Sync):
        out.update(
            channel_id=_hex(message.channel_id),
            params=message.params.to_json(),
            flow=message.flow,
            state=message.state.to_json(),
            final=message.state.is_final,
            trader_signature=_hex(message.trader_signature),
            broker_signature=_hex(message.broker_signature),
            turn=message.turn,
        )
    elif isinstance(message, ErrorReply):
        out.update(re=message.re, code=message.code, reason=message.reason)
        if message.rule is not None:
            out["rule"] = message.rule
        if message.channel_id is not None:
            out["channel_id"] = _hex(message.channel_id)
    elif isinstance(message, Notice):
        out.update(code=message.code, reason=message.reason)
        if message.channel_id is not None:
            out["channel_id"] = _hex(message.channel_id)
    return out


def encode(message: Message) -> str:
    return dumps(to_json(message))


def dumps(value: Any) -> str:
    """Compact JSON text, exactly ``json.dumps(value, separators=(",", ":"))``: orjson's when it is
    plain ASCII (then the two are the same text: the messages hold strings, small ints, bools and
    null), else json's (which escapes non-ASCII characters; orjson also refuses ints beyond 64 bits)."""
    try:
        data = orjson.dumps(value)
    except TypeError:
        data = b"\x80"  # not encodable by orjson (e.g. an int beyond 64 bits): json's
    if data.isascii():
        return data.decode("ascii")
    return json.dumps(value, separators=(",", ":"))


# --------------------------------------------------------------------------- parse


def load_frame(raw: str | bytes) -> object:
    """The JSON value of one frame, within the size and nesting bounds; ProtocolError otherwise.
    (The frame checks of every wire format here: this one and the watchtower's.)"""
    if isinstance(raw, str):  # an ASCII str (str.isascii() is O(1)) has as many bytes as characters
        size = len(raw) if raw.isascii() else len(raw.encode("utf-8", "surrogatepass"))
    else:
        size = len(raw)
    if size > MAX_MESSAGE_BYTES:
        raise ProtocolError(INVALID_MESSAGE, f"message larger than {MAX_MESSAGE_BYTES} bytes")
    # Bound the nesting before the JSON parser recurses into it: every valid message has far
    # fewer brackets than this, and a deep one could exhaust the C stack of the process.
    brackets = raw.count("[") + raw.count("{") if isinstance(raw, str) else raw.count(b"[") + raw.count(b"{")
    if brackets > MAX_BRACKETS:
        raise ProtocolError(INVALID_MESSAGE, f"more than {MAX_BRACKETS} arrays and objects")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass  # NaN, 1e400, a lone surrogate, UTF-16, ...: whatever json makes of it
    return _json_loads(raw)


def _json_loads(raw: str | bytes) -> object:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(INVALID_MESSAGE, "not JSON") from exc


def envelope(data: object) -> dict[str, Any]:
    """``data`` as a message object of this protocol version (``{"v": 1, ...}``)."""
    if not isinstance(data, dict):
        raise ProtocolError(INVALID_MESSAGE, "a message is a JSON object")
    if type(data.get("v")) is not int or data.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(UNSUPPORTED_VERSION, f"protocol version must be {PROTOCOL_VERSION}, got {data.get('v')!r}")
    return data


def decode_with(data: dict[str, Any], parsers: Mapping[str, Callable[[dict[str, Any], str], T]]) -> T:
    """The typed message of a message object, by the parser of its ``type``; every failure of
    the parser becomes a ProtocolError (``invalid_message`` unless the parser chose a code)."""
    kind = data.get("type")
    parser = parsers.get(kind) if isinstance(kind, str) else None
    if parser is None:
        raise ProtocolError(UNKNOWN_TYPE, f"unknown message type {kind!r}")
    message_id = data.get("id", "")
    if not isinstance(message_id, str) or len(message_id) > MAX_ID_LENGTH:
        raise ProtocolError(INVALID_MESSAGE, f"id must be a string of at most {MAX_ID_LENGTH} characters")
    try:
        return parser(data, message_id)
    except ProtocolError:
        raise
    except TradingChannelsError as exc:
        raise ProtocolError(INVALID_MESSAGE, exc.reason) from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProtocolError(INVALID_MESSAGE, f"malformed {kind}: {exc}") from exc


def message_id_of(raw: str | bytes) -> str:
    """The ``id`` of a frame that failed to parse, if it can be read (for the error reply)."""
    try:
        data = load_frame(raw)
    except ProtocolError:
        return ""
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) and len(value) <= MAX_ID_LENGTH else ""


def parse(raw: str | bytes) -> Message:
    """Validate ``raw`` in full and return the typed message; ProtocolError otherwise."""
    data = load_frame(raw)
    try:
        return from_json(data)
    except ProtocolError:
        # orjson reads an integer beyond 64 bits as a float, json as an int: no valid message has
        # one, and the refusal of either is the same, but its reason may name the value. So a
        # refused frame is read again as json reads it, and refused (or not) exactly as before.
        return from_json(_json_loads(raw))


def from_json(data: object) -> Message:
    message: Message = decode_with(envelope(data), _PARSERS)
    return message


def _channel_id(obj: dict[str, Any]) -> ChannelId:
    return ChannelId(hex_field(obj, "channel_id", 32))


def _signature(obj: dict[str, Any], key: str = "signature") -> Signature:
    return Signature(hex_field(obj, key, 65))


def _bounded(obj: dict[str, Any], key: str, high: int = MAX_AMOUNT, low: int = 0) -> int:
    value = decimal_field(obj, key)
    if not low <= value <= high:
        raise ProtocolError(INVALID_MESSAGE, f"{key}={value} is outside [{low}, {high}]")
    return value


def _flow(obj: dict[str, Any]) -> str:
    flow = obj.get("flow")
    if flow not in FLOWS:
        raise ProtocolError(INVALID_MESSAGE, f"flow must be one of {FLOWS}, got {flow!r}")
    return str(flow)


def _state(obj: dict[str, Any], channel_id: ChannelId) -> ChannelState:
    final = obj.get("final")
    if not isinstance(final, bool):
        raise ProtocolError(INVALID_MESSAGE, "final must be a boolean")
    return ChannelState.from_json(channel_id, final, obj.get("state"))


def _marks(raw: object, what: str) -> dict[int, Price]:
    obj = json_object(raw, what)
    if len(obj) > 64:
        raise ProtocolError(INVALID_MESSAGE, f"too many entries in {what}")
    out: dict[int, Price] = {}
    for key, value in obj.items():
        market = parse_decimal(key, f"{what} key")
        price = parse_decimal(value, f"{what}[{key}]")
        if not 0 <= market < 2**32 or not 0 < price <= MAX_AMOUNT:
            raise ProtocolError(INVALID_MESSAGE, f"{what}[{key}] is out of bounds")
        out[market] = Price(price)
    return out


def transition_from_json(kind: str, raw: object) -> Transition | None:
    obj = json_object(raw, "transition")
    if kind == "setup":
        return None
    if kind == "deposit":
        return AccountDeposits(
            TokenAmount(_bounded(obj, "trader_deposit", 2**63 - 1)),
            TokenAmount(_bounded(obj, "broker_deposit", 2**63 - 1)),
        )
    if kind == "lock":
        return CreateOrder(
            order=Order.from_json(obj.get("order")),
            signature=_signature(obj),
            first_batch=BatchNumber(_bounded(obj, "first_batch")),
            now=Timestamp(_bounded(obj, "now", 2**40)),
            marks=_marks(obj.get("marks"), "marks"),
        )
    if kind == "cancel":
        return CancelOrder(Nonce(_bounded(obj, "nonce")))
    if kind == "trade":
        fills_raw = obj.get("fills")
        if not isinstance(fills_raw, list) or not 0 < len(fills_raw) <= 64:
            raise ProtocolError(INVALID_MESSAGE, "fills must be an array of 1 to 64 fills")
        fills = tuple(
            Fill(
                Nonce(_bounded(f, "nonce")),
                SyntheticAmount(_bounded(f, "amount_synthetic")),
                TokenAmount(_bounded(f, "fee")),
            )
            for f in (json_object(x, "fill") for x in fills_raw)
        )
        return Trade(
            batch_price=BatchPrice.from_json(obj.get("batch_price")),
            fills=fills,
            now=Timestamp(_bounded(obj, "now", 2**40)),
            marks=_marks(obj.get("marks"), "marks"),
        )
    if kind == "finalize":
        return Finalize(_marks(obj.get("prices"), "prices"))
    raise ProtocolError(INVALID_MESSAGE, f"kind must be one of {KINDS}, got {kind!r}")


def _parse_propose(d: dict[str, Any], mid: str) -> Propose:
    channel_id = _channel_id(d)
    kind = d.get("kind")
    if kind not in KINDS:
        raise ProtocolError(INVALID_MESSAGE, f"kind must be one of {KINDS}, got {kind!r}")
    params = flow = None
    if kind == "setup":
        params = ChannelParams.from_json(d.get("params"))
        flow = _flow(d)
        if params.channel_id != channel_id:
            raise ProtocolError(INVALID_MESSAGE, "channel_id is not the hash of params")
    return Propose(
        channel_id=channel_id,
        kind=str(kind),
        transition=transition_from_json(str(kind), d.get("transition")),
        state=_state(d, channel_id),
        signature=_signature(d),
        params=params,
        flow=flow,
        id=mid,
    )


def _parse_welcome(d: dict[str, Any], mid: str) -> Welcome:
    markets = d.get("markets")
    if not isinstance(markets, list) or len(markets) > 16:
        raise ProtocolError(INVALID_MESSAGE, "markets must be an array of at most 16")
    channels = d.get("channels")
    if not isinstance(channels, list) or len(channels) > 10_000:
        raise ProtocolError(INVALID_MESSAGE, "channels must be an array")
    return Welcome(
        broker=check_address("broker", d.get("broker")),
        chain_id=_bounded(d, "chain_id", 2**256 - 1, 1),
        adjudicator=check_address("adjudicator", d.get("adjudicator")),
        token=check_address("token", d.get("token")),
        markets=tuple(Market.from_json(mk, i) for i, mk in enumerate(markets)),
        batch_seconds=_bounded(d, "batch_seconds", 86400),
        fee_bps=_bounded(d, "fee_bps", 10_000),
        open_batches=_marks(d.get("open_batches"), "open_batches"),
        channels=tuple(ChannelId(hex_field({"channel_id": c}, "channel_id", 32)) for c in channels),
        id=mid,
    )


def _parse_error(d: dict[str, Any], mid: str) -> ErrorReply:
    re_, code, reason, rule = d.get("re", ""), d.get("code"), d.get("reason"), d.get("rule")
    if not isinstance(re_, str) or not isinstance(code, str) or not isinstance(reason, str):
        raise ProtocolError(INVALID_MESSAGE, "error needs string re, code and reason")
    if rule is not None and not isinstance(rule, str):
        raise ProtocolError(INVALID_MESSAGE, "rule must be a string")
    return ErrorReply(re_, code[:64], reason[:500], rule, _channel_id(d) if "channel_id" in d else None, mid)


def _parse_notice(d: dict[str, Any], mid: str) -> Notice:
    code, reason = d.get("code"), d.get("reason")
    if not isinstance(code, str) or not isinstance(reason, str):
        raise ProtocolError(INVALID_MESSAGE, "notice needs string code and reason")
    return Notice(code[:64], reason[:500], _channel_id(d) if "channel_id" in d else None, mid)


def _parse_sync(d: dict[str, Any], mid: str) -> Sync:
    channel_id = _channel_id(d)
    params = ChannelParams.from_json(d.get("params"))
    if params.channel_id != channel_id:
        raise ProtocolError(INVALID_MESSAGE, "channel_id is not the hash of params")
    turn = d.get("turn")
    if turn not in ("trader", "broker"):
        raise ProtocolError(INVALID_MESSAGE, "turn must be 'trader' or 'broker'")
    return Sync(
        channel_id=channel_id,
        params=params,
        flow=_flow(d),
        state=_state(d, channel_id),
        trader_signature=_signature(d, "trader_signature"),
        broker_signature=_signature(d, "broker_signature"),
        turn=str(turn),
        id=mid,
    )


_PARSERS: dict[str, Any] = {
    "challenge": lambda d, mid: Challenge(hex_field(d, "nonce", 32), check_address("broker", d.get("broker")), mid),
    "hello": lambda d, mid: Hello(check_address("address", d.get("address")), _signature(d), mid),
    "welcome": _parse_welcome,
    "request_setup": lambda d, mid: RequestSetup(
        _bounded(d, "nonce", 2**256 - 1), _bounded(d, "challenge_duration", 2**32), mid
    ),
    "create_order": lambda d, mid: CreateOrderRequest(
        _channel_id(d), Order.from_json(d.get("order")), _signature(d), mid
    ),
    "cancel_order": lambda d, mid: CancelOrderRequest(_channel_id(d), Nonce(_bounded(d, "nonce")), mid),
    "request_deposit": lambda d, mid: RequestDeposit(_channel_id(d), mid),
    "request_finalize": lambda d, mid: RequestFinalize(_channel_id(d), mid),
    "resume": lambda d, mid: Resume(_channel_id(d), mid),
    "propose": _parse_propose,
    "ack": lambda d, mid: Ack(_channel_id(d), _bounded(d, "version", 2**48 - 1), _signature(d), mid),
    "request_yield": lambda d, mid: RequestYield(_channel_id(d), mid),
    "yield": lambda d, mid: Yield(_channel_id(d), _bounded(d, "version", 2**48 - 1), mid),
    "batch_price": lambda d, mid: BatchPriceMessage(BatchPrice.from_json(d.get("batch_price")), _signature(d), mid),
    "sync": _parse_sync,
    "error": _parse_error,
    "notice": _parse_notice,
}
