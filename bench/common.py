"""Helpers shared by the benchmark scripts: machine description, best-of timing, one JSON schema.

Every script writes bench/results/<name>.json as::

    {"benchmark": name, "machine": {...}, "timestamp": ..., "bars": [bar, ...], ...details}

with each bar ``{"name", "figure", "unit", "reference", "reference_label", "ratio", "bar",
"direction", "met"}``: ``figure`` is what was measured, ``reference`` a yardstick measured in the
same run on the same machine (so ``ratio = figure / reference`` survives a noisy, shared host),
``bar`` the MISSION.md limit, ``direction`` "<" (figure must stay below the bar) or ">=".
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }


def timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def best_of(work: Callable[[], object], repeats: int) -> float:
    """The least wall time of ``repeats`` runs of ``work``, in seconds (the least disturbed run)."""
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def bar(
    name: str,
    figure: float,
    unit: str,
    reference: float | None,
    reference_label: str,
    limit: float,
    direction: str = "<",
) -> dict[str, Any]:
    """One bar in the common schema."""
    if direction not in ("<", ">="):
        raise ValueError(f"direction must be '<' or '>=', got {direction!r}")
    met = figure < limit if direction == "<" else figure >= limit
    ratio = figure / reference if reference else None
    return {
        "name": name,
        "figure": _round(figure),
        "unit": unit,
        "reference": None if reference is None else _round(reference),
        "reference_label": reference_label,
        "ratio": None if ratio is None else round(ratio, 3),
        "bar": limit,
        "direction": direction,
        "met": met,
    }


def _round(value: float) -> float:
    return float(f"{value:.4g}") if isinstance(value, float) else value


def write_result(name: str, bars: list[dict[str, Any]], results: Path = RESULTS, **details: Any) -> Path:
    """Write results/<name>.json in the common schema; returns its path."""
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}.json"
    document = {"benchmark": name, "machine": machine(), "timestamp": timestamp(), "bars": bars, **details}
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def print_bars(bars: list[dict[str, Any]]) -> None:
    for b in bars:
        state = "met" if b["met"] else "MISSED"
        ratio = "" if b["ratio"] is None else f", {b['ratio']:.3g}x {b['reference_label']}"
        print(f"bar {b['name']}: {b['figure']:g} {b['unit']} {b['direction']} {b['bar']:g}: {state}{ratio}")


def results_dir(argument: str | None) -> Path:
    return Path(argument) if argument else RESULTS


# --------------------------------------------------------------------------- channels for the benchmarks
# Real channels between one broker and many traders, built with the real engine and ChannelParty,
# driven in one process (no sockets): the broker's side in its own store, each trader's in its own.

CHAIN_ID = 31337
ADJUDICATOR = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
TOKEN = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
FEED = "0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0"
BROKER_KEY = bytes.fromhex("22" * 32)
MARKET_ID = 1
MARKET_RESOLUTION = 10**6
REFERENCE_PRICE = 30_000
TRADER_DEPOSIT = 10**12
BROKER_DEPOSIT = 10**12


def trader_key(i: int) -> bytes:
    """A distinct valid secp256k1 key per trader (not BROKER_KEY)."""
    return (10**6 + i).to_bytes(32, "big")


def raw_cosigned_updates(n: int) -> float:
    """Seconds for the cryptography alone of ``n`` co-signed updates with coincurve: 2 digests
    (keccak-256 of a 66-byte EIP-712 message), 2 recoverable signatures, 2 recoveries each."""
    from coincurve import PrivateKey, PublicKey

    from offchain.eip712 import keccak  # the fastest keccak installed, as the real code uses

    keys = (PrivateKey(trader_key(0)), PrivateKey(BROKER_KEY))
    prefix = b"\x19\x01" + keccak(b"domain separator")
    start = time.perf_counter()
    for i in range(n):
        message = prefix + i.to_bytes(32, "big")
        for key in keys:
            digest = keccak(message)
            signature = key.sign_recoverable(digest, hasher=None)
            PublicKey.from_signature_and_message(signature, digest, hasher=None)
    return time.perf_counter() - start


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")
