"""The benchmark scripts (bench/) run end to end at tiny sizes and write well-formed results.
Nothing here asserts on time: the figures only have to be positive numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
BAR_KEYS = {"name", "figure", "unit", "reference", "reference_label", "ratio", "bar", "direction", "met"}

TINY = {
    "clearing": ["--orders", "1000", "--repeats", "2"],
    "batch_settle": ["--channels", "12"],
    "broker_wire": ["--connections", "4", "--updates", "50", "--rounds", "1"],
    "scale": ["--levels", "10,30", "--updates", "2", "--traders", "2"],
}


def _run(name: str, results: Path) -> dict[str, Any]:
    command = [sys.executable, str(BENCH / f"{name}.py"), *TINY[name], "--results", str(results)]
    done = subprocess.run(command, cwd=BENCH.parent, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    document: dict[str, Any] = json.loads((results / f"{name}.json").read_text())
    return document


def _check_schema(document: dict[str, Any], name: str) -> None:
    assert document["benchmark"] == name
    assert {"platform", "cpu", "cores", "python"} <= set(document["machine"])
    assert document["bars"]
    for bar in document["bars"]:
        assert BAR_KEYS <= set(bar)
        assert bar["figure"] > 0 and bar["reference"] > 0 and bar["ratio"] > 0
        assert isinstance(bar["met"], bool)
        assert bar["direction"] in ("<", ">=")


@pytest.mark.parametrize("name", sorted(TINY))
def test_benchmark_runs_at_tiny_size(name: str, tmp_path: Path) -> None:
    document = _run(name, tmp_path)
    _check_schema(document, name)
    if name == "clearing":
        assert document["implementations_agree"] is True
        assert document["fills"] > 0 and all(v > 0 for v in document["ms"].values())
    elif name == "batch_settle":
        assert document["settle"]["co_signed_trades"] == 12
    elif name == "broker_wire":
        assert document["best"]["updates"] == 4 * 50
        assert document["best"]["p50_ms"] > 0 and document["best"]["p99_ms"] > 0
    else:
        assert [row["channels"] for row in document["table"]] == [10, 30]
        assert all(row["update_ms"] > 0 and row["batch_ms"] > 0 for row in document["table"])


def test_every_script_has_help_and_run_knows_them() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import run
    finally:
        sys.path.remove(str(BENCH))
    names = {path.stem for path in run.benchmarks()}
    assert set(TINY) <= names and "run" not in names and "common" not in names
    for name in sorted(names | {"run"}):
        done = subprocess.run(
            [sys.executable, str(BENCH / f"{name}.py"), "--help"], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0 and "usage:" in done.stdout, name
    # The committed gas table's bars, and the older signing_ceiling format, both become table rows.
    gas = run.gas_bars()
    assert {b["unit"] for b in gas} == {"gas"} and len(gas) == 3 and all(b["figure"] > 0 for b in gas)
    old = {
        "updates_per_second": {"raw_coincurve": 1000, "ours": 500},
        "ratio_to_raw": {"ours": 0.5},
        "bar": {"what": "ours >= 90% of raw", "ratio": 0.9, "met": False},
    }
    rows = run.normalise("signing_ceiling", old)
    assert rows[0]["figure"] == 500 and rows[0]["met"] is False
    assert "MISSED" in run.table(rows + gas)
