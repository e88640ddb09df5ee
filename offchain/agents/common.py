"""What the broker and trader agents share: the login proof, the chain gate, the connection."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from eth_utils.crypto import keccak
from websockets.asyncio.connection import Connection

from offchain.chain.connection import Chain
from offchain.protocol import messages as m
from offchain.signing import LocalSigner, recover
from offchain.types import Address, Signature

T = TypeVar("T")
log = logging.getLogger("tchan")

LOGIN_PREFIX = "Trading Channels login"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (Linux, macOS: a dependency there), else None
    (asyncio's own). ``TCHAN_EVENT_LOOP=asyncio`` picks asyncio's in any case."""
    if os.environ.get("TCHAN_EVENT_LOOP", "").lower() == "asyncio":
        return None
    try:
        import uvloop  # optional: not on Windows
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the fastest event loop available (see :func:`loop_factory`): what
    the agents' processes (broker, trader, watchtower) and the load generator run in."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


def freeze_loaded_heap() -> None:
    """Take every object alive now out of the cyclic garbage collector's scans (``gc.freeze``),
    after a collection. An agent's process calls it once it has loaded its store: a broker holds
    the channels it loaded for its whole life, and every full collection would otherwise walk
    all of them again (about 15% of settling a batch that touches 10,000 channels). Reference
    counting still frees them as usual; only cycles among them would stay."""
    gc.collect()
    gc.freeze()


def login_text(broker: Address, nonce: bytes) -> bytes:
    """What a trader signs (EIP-191 personal message) to prove it controls its address."""
    return f"{LOGIN_PREFIX}\nbroker: {broker}\nchallenge: 0x{nonce.hex()}".encode()


def personal_digest(text: bytes) -> bytes:
    return keccak(b"\x19Ethereum Signed Message:\n" + str(len(text)).encode() + text)


def sign_login(signer: LocalSigner, broker: Address, nonce: bytes) -> Signature:
    return signer.sign_digest(personal_digest(login_text(broker, nonce)))


def login_signer(broker: Address, nonce: bytes, signature: bytes) -> Address:
    return recover(personal_digest(login_text(broker, nonce)), signature)


_GATES: dict[int, threading.Lock] = {}
_GATES_LOCK = threading.Lock()


async def on_chain(chain: Chain, fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking chain call in a thread, one at a time per chain (the in-process chain is
    not thread-safe, and one account's transactions must not race for a nonce)."""
    with _GATES_LOCK:
        gate = _GATES.setdefault(id(chain), threading.Lock())

    def locked() -> T:
        with gate:
            return fn(*args)

    return await asyncio.to_thread(locked)


async def send(ws: Connection, message: m.Message) -> bool:
    """Send a message; False if the connection is gone (the caller's timeout takes over)."""
    try:
        await ws.send(m.encode(message))
    except Exception as exc:  # noqa: BLE001 - any transport failure means "not delivered"
        log.debug("send failed: %s", exc)
        return False
    return True


def error_reply(message_id: str, exc: m.ProtocolError, channel_id: bytes | None = None) -> m.ErrorReply:
    from offchain.types import ChannelId

    return m.ErrorReply(
        re=message_id,
        code=exc.code,
        reason=exc.reason,
        rule=exc.rule,
        channel_id=ChannelId(channel_id) if channel_id is not None else None,
    )
