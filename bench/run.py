"""Run every benchmark under bench/ and print one table of every bar (``make bench``).

Runs each ``bench/*.py`` that has a ``main`` (all but this file and common.py), one after the
other, with its default sizes, collects each one's bench/results/<name>.json, adds the gas bars of
the committed gas table (bench/gas.json, kept true by tests/test_gas.py), prints every bar with
its figure, reference, ratio and met/missed, and writes bench/results/all.json with the machine
and the time. Extra arguments after ``--`` are not passed on; to run one benchmark with other
sizes, run it directly (each takes ``--help``).

    .venv/bin/python bench/run.py [--only NAME[,NAME]] [--skip NAME[,NAME]]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import RESULTS, machine, timestamp

BENCH = Path(__file__).resolve().parent
NOT_BENCHMARKS = {"run", "common"}
GAS_BARS = {
    "sad_exit_total": "sad exit, challenge until both hold their tokens (gas)",
    "cooperative_close_total": "cooperative close until both hold their tokens (gas)",
    "first_deposit": "first ERC-20 deposit (gas)",
}


def benchmarks() -> list[Path]:
    return [
        path
        for path in sorted(BENCH.glob("*.py"))
        if path.stem not in NOT_BENCHMARKS and "def main(" in path.read_text()
    ]


def normalise(name: str, document: dict[str, Any]) -> list[dict[str, Any]]:
    """The bars of a result file: the common schema, or signing_ceiling's older one."""
    bars = document.get("bars")
    if isinstance(bars, list):
        return [dict(b, benchmark=name) for b in bars]
    old = document.get("bar")
    if isinstance(old, dict) and "ratio_to_raw" in document:  # signing_ceiling.py before the common schema
        rates = document.get("updates_per_second", {})
        ratio = document["ratio_to_raw"].get("ours")
        return [
            {
                "benchmark": name,
                "name": old.get("what", name),
                "figure": rates.get("ours"),
                "unit": "updates/s",
                "reference": rates.get("raw_coincurve"),
                "reference_label": "raw coincurve",
                "ratio": ratio,
                "bar": old.get("ratio"),
                "direction": ">=",
                "met": bool(old.get("met")),
                "bar_is_ratio": True,
            }
        ]
    return [{"benchmark": name, "name": f"{name}: no bars in its JSON", "met": False}]


def gas_bars(path: Path = BENCH / "gas.json") -> list[dict[str, Any]]:
    try:
        table = json.loads(path.read_text())["bars"]
    except (OSError, ValueError, KeyError):
        return [{"benchmark": "gas", "name": f"gas table {path} unreadable", "met": False}]
    found = []
    for key, label in GAS_BARS.items():
        entry = table.get(key)
        if not isinstance(entry, dict):
            continue
        ours, nitro = entry.get("ours"), entry.get("nitro")
        found.append(
            {
                "benchmark": "gas",
                "name": label,
                "figure": ours,
                "unit": "gas",
                "reference": nitro,
                "reference_label": f"Nitro {entry.get('nitro_operation', '')}".strip(),
                "ratio": round(ours / nitro, 3) if ours and nitro else None,
                "bar": entry.get("bar"),
                "direction": "<",
                "met": bool(entry.get("met")),
                "raiden": entry.get("raiden"),
            }
        )
    return found


def run_one(path: Path) -> dict[str, Any]:
    name = path.stem
    result_file = RESULTS / f"{name}.json"
    before = result_file.stat().st_mtime if result_file.exists() else None
    print(f"==> {name}", flush=True)
    start = time.perf_counter()
    process = subprocess.run([sys.executable, str(path)], cwd=BENCH.parent, check=False)
    seconds = time.perf_counter() - start
    fresh = result_file.exists() and result_file.stat().st_mtime != before
    if process.returncode != 0 or not fresh:
        why = f"exit status {process.returncode}" if process.returncode else "no fresh results JSON"
        return {"name": name, "seconds": round(seconds, 1), "error": why, "bars": []}
    document = json.loads(result_file.read_text())
    return {"name": name, "seconds": round(seconds, 1), "bars": normalise(name, document), "result": document}


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(bars: list[dict[str, Any]]) -> str:
    header = ("bar", "figure", "unit", "reference", "ratio", "bar", "met")
    rows = [header]
    for b in bars:
        limit = b.get("bar")
        limit_text = "-" if limit is None else f"{b.get('direction', '<')} {fmt(limit)}"
        if b.get("bar_is_ratio"):
            limit_text += " (ratio)"
        rows.append(
            (
                str(b.get("name", "")),
                fmt(b.get("figure")),
                str(b.get("unit", "")),
                f"{fmt(b.get('reference'))} ({b.get('reference_label', '')})" if b.get("reference") else "-",
                fmt(b.get("ratio")),
                limit_text,
                "met" if b.get("met") else "MISSED",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated benchmark names to run (default: all)")
    parser.add_argument("--skip", help="comma-separated benchmark names not to run")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    skip = set(args.skip.split(",")) if args.skip else set()
    start = time.perf_counter()
    runs = [run_one(p) for p in benchmarks() if (only is None or p.stem in only) and p.stem not in skip]
    bars = [b for r in runs for b in r["bars"]] + gas_bars()
    errors = [r for r in runs if "error" in r]
    total = time.perf_counter() - start
    info = machine()
    print()
    print(f"bars on {info['cpu']}, {info['cores']} cores, Python {info['python']} ({timestamp()}):")
    print(table(bars))
    for r in errors:
        print(f"!! {r['name']}: {r['error']}")
    met = sum(1 for b in bars if b.get("met"))
    print(f"{met} of {len(bars)} bars met; benchmarks took {total:.0f} s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": info,
        "timestamp": timestamp(),
        "seconds": round(total, 1),
        "bars": bars,
        "benchmarks": {r["name"]: {"seconds": r["seconds"], "error": r.get("error")} for r in runs},
    }
    (RESULTS / "all.json").write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {RESULTS / 'all.json'}")
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
