"""The watchtower's wire messages (docs/watchtower.md).

A party (the trader agent, through :class:`offchain.agents.watchtower.WatchtowerClient`) sends a
watchtower two kinds of messages over a WebSocket, and gets one reply to each:

- ``watch``: guard this channel; here is its newest co-signed state (the channel's parameters,
  the state, its final flag, both signatures). Replied to with ``watch_ack`` carrying the channel
  id and the version the watchtower now holds (it keeps the newest; an older state changes
  nothing and is acknowledged with the newer version it holds).
- ``watch_price``: a batch price signed by the broker of a guarded channel (evidence for disputes,
  and, with a second different price for the same batch, a proof that the broker equivocated).
  Replied to with ``watch_price_ack``.

A refused message gets the trader protocol's ``error`` reply (``re``, ``code``, ``reason``). The
conventions are those of :mod:`offchain.protocol.messages`: ``{"v": 1, "type": ..., "id": ...}``,
numbers as canonical decimal strings, addresses EIP-55, bytes 0x-hex of exact length, at most
``MAX_MESSAGE_BYTES`` per frame and ``MAX_BRACKETS`` arrays and objects. No authentication is
needed: every payload carries its own signatures, which the watchtower checks under its own chain
id and adjudicator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from offchain.errors import TradingChannelsError
from offchain.model import BatchPrice, ChannelParams, ChannelState, check_address, decimal_field, hex_field
from offchain.protocol.messages import (
    BAD_PARAMS,
    BAD_SIGNATURE,
    CHANNEL_CLOSED,
    INVALID_MESSAGE,
    MAX_ID_LENGTH,
    PROTOCOL_VERSION,
    UNKNOWN_CHANNEL,
    UNKNOWN_TYPE,
    UNSUPPORTED_VERSION,
    ErrorReply,
    ProtocolError,
    decode_with,
    envelope,
    load_frame,
    message_id_of,
)
from offchain.protocol.messages import from_json as protocol_from_json
from offchain.protocol.messages import to_json as protocol_to_json
from offchain.signing import CoSignedState
from offchain.types import Address, ChannelId, Signature, Version

MAX_VERSION = 2**48 - 1

# Error codes of the watchtower (besides INVALID_MESSAGE, UNSUPPORTED_VERSION, UNKNOWN_TYPE,
# BAD_SIGNATURE, BAD_PARAMS, UNKNOWN_CHANNEL and CHANNEL_CLOSED of messages.py).
TOO_MANY_CHANNELS = "too_many_channels"
TRADER_NOT_SERVED = "trader_not_served"

WATCH_ERROR_CODES = (
    INVALID_MESSAGE,
    UNSUPPORTED_VERSION,
    UNKNOWN_TYPE,
    BAD_SIGNATURE,
    BAD_PARAMS,
    UNKNOWN_CHANNEL,
    CHANNEL_CLOSED,
    TOO_MANY_CHANNELS,
    TRADER_NOT_SERVED,
)


@dataclass(frozen=True, slots=True)
class Watch:
    """Party -> watchtower: guard this channel; ``state`` is its newest co-signed state."""

    params: ChannelParams
    state: ChannelState
    trader_signature: Signature
    broker_signature: Signature
    id: str = ""

    @property
    def channel_id(self) -> ChannelId:
        return self.params.channel_id

    @property
    def signed(self) -> CoSignedState:
        return CoSignedState(self.state, self.trader_signature, self.broker_signature)


@dataclass(frozen=True, slots=True)
class WatchPrice:
    """Party -> watchtower: a batch price signed by ``broker``."""

    broker: Address
    batch_price: BatchPrice
    signature: Signature
    id: str = ""


@dataclass(frozen=True, slots=True)
class WatchAck:
    """Watchtower -> party: the channel is guarded with the co-signed state of ``version``
    (the newest the watchtower holds, which may be newer than the one acknowledged)."""

    re: str
    channel_id: ChannelId
    version: Version
    id: str = ""


@dataclass(frozen=True, slots=True)
class WatchPriceAck:
    """Watchtower -> party: the price is stored (``new``: it was not stored before)."""

    re: str
    market: int
    batch: int
    new: bool
    id: str = ""


WatchMessage = Watch | WatchPrice | WatchAck | WatchPriceAck | ErrorReply

_TYPE_NAMES: dict[type, str] = {
    Watch: "watch",
    WatchPrice: "watch_price",
    WatchAck: "watch_ack",
    WatchPriceAck: "watch_price_ack",
    ErrorReply: "error",
}
TYPES = tuple(_TYPE_NAMES.values())


def type_name(message: WatchMessage) -> str:
    return _TYPE_NAMES[type(message)]


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


def watch_message(params: ChannelParams, signed: CoSignedState, message_id: str = "") -> Watch:
    return Watch(params, signed.state, signed.trader_signature, signed.broker_signature, message_id)


def error_reply(re: str, exc: TradingChannelsError, channel_id: bytes | None = None) -> ErrorReply:
    """The error reply to a refused message (``exc.code`` is the code it carries)."""
    return ErrorReply(re=re, code=exc.code[:64], reason=exc.reason[:500], channel_id=_channel(channel_id))


def _channel(channel_id: bytes | None) -> ChannelId | None:
    return ChannelId(channel_id) if channel_id is not None else None


# --------------------------------------------------------------------------- encode


def to_json(message: WatchMessage) -> dict[str, Any]:
    """The JSON object of ``message`` (without serialising it)."""
    if isinstance(message, ErrorReply):
        return protocol_to_json(message)
    out: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": type_name(message)}
    if message.id:
        out["id"] = message.id
    if isinstance(message, Watch):
        out.update(
            params=message.params.to_json(),
            state=message.state.to_json(),
            final=message.state.is_final,
            trader_signature=_hex(message.trader_signature),
            broker_signature=_hex(message.broker_signature),
        )
    elif isinstance(message, WatchPrice):
        out.update(broker=message.broker, batch_price=message.batch_price.to_json(), signature=_hex(message.signature))
    elif isinstance(message, WatchAck):
        out.update(re=message.re, channel_id=_hex(message.channel_id), version=str(message.version))
    else:
        out.update(re=message.re, market=str(message.market), batch=str(message.batch), new=message.new)
    return out


def encode(message: WatchMessage) -> str:
    return json.dumps(to_json(message), separators=(",", ":"))


# --------------------------------------------------------------------------- parse


def parse(raw: str | bytes) -> WatchMessage:
    """Validate ``raw`` in full and return the typed message; ProtocolError otherwise."""
    return from_json(load_frame(raw))


def from_json(data: object) -> WatchMessage:
    obj = envelope(data)
    if obj.get("type") == "error":
        reply = protocol_from_json(obj)
        assert isinstance(reply, ErrorReply)
        return reply
    message: WatchMessage = decode_with(obj, _PARSERS)
    return message


def _bounded(obj: dict[str, Any], key: str, high: int) -> int:
    value = decimal_field(obj, key)
    if not 0 <= value <= high:
        raise ProtocolError(INVALID_MESSAGE, f"{key}={value} is outside [0, {high}]")
    return value


def _re(obj: dict[str, Any]) -> str:
    value = obj.get("re", "")
    if not isinstance(value, str) or len(value) > MAX_ID_LENGTH:
        raise ProtocolError(INVALID_MESSAGE, f"re must be a string of at most {MAX_ID_LENGTH} characters")
    return value


def _parse_watch(d: dict[str, Any], mid: str) -> Watch:
    params = ChannelParams.from_json(d.get("params"))
    final = d.get("final")
    if not isinstance(final, bool):
        raise ProtocolError(INVALID_MESSAGE, "final must be a boolean")
    state = ChannelState.from_json(params.channel_id, final, d.get("state"))
    if len(state.outcomes) != len(params.markets):
        raise ProtocolError(
            INVALID_MESSAGE, f"the state has {len(state.outcomes)} outcomes for {len(params.markets)} markets"
        )
    return Watch(
        params=params,
        state=state,
        trader_signature=Signature(hex_field(d, "trader_signature", 65)),
        broker_signature=Signature(hex_field(d, "broker_signature", 65)),
        id=mid,
    )


def _parse_watch_price(d: dict[str, Any], mid: str) -> WatchPrice:
    return WatchPrice(
        broker=check_address("broker", d.get("broker")),
        batch_price=BatchPrice.from_json(d.get("batch_price")),
        signature=Signature(hex_field(d, "signature", 65)),
        id=mid,
    )


def _parse_watch_ack(d: dict[str, Any], mid: str) -> WatchAck:
    return WatchAck(
        re=_re(d),
        channel_id=ChannelId(hex_field(d, "channel_id", 32)),
        version=Version(_bounded(d, "version", MAX_VERSION)),
        id=mid,
    )


def _parse_watch_price_ack(d: dict[str, Any], mid: str) -> WatchPriceAck:
    new = d.get("new")
    if not isinstance(new, bool):
        raise ProtocolError(INVALID_MESSAGE, "new must be a boolean")
    return WatchPriceAck(
        re=_re(d), market=_bounded(d, "market", 2**32 - 1), batch=_bounded(d, "batch", 2**64 - 1), new=new, id=mid
    )


_PARSERS: dict[str, Any] = {
    "watch": _parse_watch,
    "watch_price": _parse_watch_price,
    "watch_ack": _parse_watch_ack,
    "watch_price_ack": _parse_watch_price_ack,
}

__all__ = [
    "TOO_MANY_CHANNELS",
    "TRADER_NOT_SERVED",
    "TYPES",
    "WATCH_ERROR_CODES",
    "ErrorReply",
    "ProtocolError",
    "Watch",
    "WatchAck",
    "WatchMessage",
    "WatchPrice",
    "WatchPriceAck",
    "encode",
    "error_reply",
    "from_json",
    "message_id_of",
    "parse",
    "to_json",
    "watch_message",
]
