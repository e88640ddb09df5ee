"""The committed gas table (bench/gas.json) stays true: every figure within 1%."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from offchain import gas
from offchain.compiler import project_root


def test_gas_table_matches_a_fresh_measurement() -> None:
    """``tchan gas --check --json`` (the real console script) measures afresh and finds no drift."""
    committed = json.loads((project_root() / gas.GAS_TABLE_PATH).read_text())
    run = subprocess.run(
        [str(Path(sys.executable).parent / "tchan"), "gas", "--check", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=project_root(),
    )
    report = json.loads(run.stdout)
    measured = {name: int(value) for name, value in report["operations"].items()}
    assert gas.drift(committed["operations"], measured) == report["drift"] == [], "run `tchan gas` and commit"
    assert run.returncode == 0 and report["up_to_date"] is True, run.stderr
    assert committed == gas.table(committed["operations"]), "bars section out of date: run `tchan gas`"


def test_bars_met_by_the_committed_table() -> None:
    committed = json.loads((project_root() / gas.GAS_TABLE_PATH).read_text())["operations"]
    assert committed["sad_exit_total"] < gas.REFERENCES["sad_exit_total"]["bar"]
    assert committed["cooperative_close_total"] < gas.REFERENCES["cooperative_close_total"]["bar"]
    assert committed["sad_exit_total"] < gas.REFERENCES["sad_exit_total"]["nitro"]
    assert committed["first_deposit"] < gas.REFERENCES["first_deposit"]["nitro"]


def test_drift_detection() -> None:
    assert gas.drift({"a": 1000}, {"a": 1010}) == []
    assert gas.drift({"a": 1000}, {"a": 1011}) == ["a: committed 1000, measured 1011 (+1.1%)"]
    assert gas.drift({"a": 1000}, {"b": 5}) == ["a: only in committed table", "b: only in measured table"]


def test_readme_shows_the_committed_table() -> None:
    """The README's gas tables are exactly what bench/gas.json says (``gas.markdown_tables``)."""
    committed = json.loads((project_root() / gas.GAS_TABLE_PATH).read_text())["operations"]
    readme = (project_root() / "README.md").read_text()
    assert f"{gas.README_BEGIN}\n{gas.markdown_tables(committed)}\n{gas.README_END}" in readme, "run `tchan gas`"
