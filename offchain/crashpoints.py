"""Crash points: the places where a process writes, signs, sends or submits, made explicit.

``crash_point(name)`` does nothing unless the environment variable ``TCHAN_CRASH_AT`` names that
point when the process starts; then the process kills itself with SIGKILL right there (no
``finally``, no atexit, no flush: what a power cut or ``kill -9`` leaves). ``NAME:N`` fires on the
N-th time the point is reached (``party.propose.committed:3``); plain ``NAME`` on the first.

The variable is read once, at import. When it is unset a call costs one global lookup and one
comparison with ``None``.

:data:`CRASH_POINTS` lists every name used in the code; ``tests/crash/test_registry.py`` greps the
code so that none is missing here and none listed is gone from the code. docs/crash-points.md says
what has and has not been written, signed or sent when each one fires.
"""

from __future__ import annotations

import os
import signal
import sys

ENV = "TCHAN_CRASH_AT"

CRASH_POINTS: tuple[str, ...] = (
    # offchain/store/sqlite.py: every outermost transaction
    "store.before_commit",
    "store.after_commit",
    # offchain/signing.py: StateSigner.sign_state (inside the caller's store transaction)
    "signing.recorded",
    "signing.signed",
    # offchain/protocol/party.py: ChannelParty
    "party.setup.stored",
    "party.setup.committed",
    "party.accept_setup.committed",
    "party.propose.stored",
    "party.propose.committed",
    "party.on_proposal.stored",
    "party.on_proposal.committed",
    "party.on_ack.committed",
    "party.yield.committed",
    "party.on_yield.committed",
    # offchain/agents/broker.py: BrokerAgent
    "broker.setup_ack.before_send",
    "broker.ack.before_send",
    "broker.ack.sent",
    "broker.proposal.before_send",
    "broker.proposal.sent",
    "broker.ack_received",
    "broker.yield.before_send",
    "broker.deposit.before_submit",
    "broker.deposit.submitted",
    "broker.batch.signed",
    "broker.batch.stored",
    "broker.batch.published",
    "broker.trade_proposal.before_send",
    "broker.trade_proposal.sent",
    # offchain/agents/trader.py: TraderAgent
    "trader.setup.before_send",
    "trader.setup_ack.before_send",
    "trader.ack.before_send",
    "trader.ack.sent",
    "trader.order.stored",
    "trader.proposal.before_send",
    "trader.proposal.sent",
    "trader.yield.before_send",
    "trader.batch_price.stored",
    "trader.deposit.before_submit",
    "trader.deposit.submitted",
    "trader.close.before_submit",
    "trader.close.submitted",
)


def parse(value: str | None) -> tuple[str, int] | None:
    """``NAME`` or ``NAME:N`` (N >= 1) as (name, N); None for an unset or empty value."""
    if not value:
        return None
    name, _, count = value.partition(":")
    hits = int(count) if count else 1
    if hits < 1:
        raise ValueError(f"{ENV}={value!r}: the hit count must be at least 1")
    return name, hits


_target = parse(os.environ.get(ENV))
_remaining = _target[1] if _target is not None else 0
if _target is not None and _target[0] not in CRASH_POINTS:
    print(f"tchan: warning: {ENV}={_target[0]!r} is not a known crash point", file=sys.stderr)


def crash_point(name: str) -> None:
    """SIGKILL this process here if ``TCHAN_CRASH_AT`` names this point (and its hit count is up)."""
    if _target is None:
        return
    _reached(name)


def _reached(name: str) -> None:
    global _remaining
    assert _target is not None
    if name != _target[0]:
        return
    _remaining -= 1
    if _remaining == 0:
        sys.stderr.write(f"tchan: crash point {name} reached: SIGKILL\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
