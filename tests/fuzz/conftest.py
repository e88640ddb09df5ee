"""The fuzz suite's plumbing: how many cases ran per target, summed over the xdist workers and
printed at the end of the run (docs/fuzzing.md). The case budget lives in helpers.py."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.fuzz import helpers

_MERGED: dict[str, list[float]] = {}
_STARTED = time.monotonic()


def _merge(counts: dict[str, list[float]]) -> None:
    for target, (cases, seconds) in counts.items():
        entry = _MERGED.setdefault(target, [0, 0.0])
        entry[0] += cases
        entry[1] += seconds


def pytest_sessionfinish(session: pytest.Session) -> None:
    output: Any = getattr(session.config, "workeroutput", None)
    if output is not None:  # an xdist worker: hand the counts to the controller
        output["fuzz_counts"] = json.dumps(helpers.COUNTS)
    else:
        _merge(helpers.COUNTS)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    raw = getattr(node, "workeroutput", {}).get("fuzz_counts")
    if raw:
        _merge(json.loads(raw))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _MERGED:
        return
    wall = time.monotonic() - _STARTED
    tr = terminalreporter
    tr.section(f"fuzz cases ({helpers.MODE}, budget {helpers.TOTAL_BUDGET:,})")
    width = max(len(t) for t in _MERGED)
    for target in sorted(_MERGED):
        cases, seconds = _MERGED[target]
        tr.write_line(f"{target:<{width}}  {int(cases):>9,} cases  {seconds:8.1f} s")
    total = int(sum(c for c, _ in _MERGED.values()))
    cpu = sum(s for _, s in _MERGED.values())
    tr.write_line(
        f"fuzz total: {total:,} cases in {len(_MERGED)} targets, {cpu:.0f} s in the targets, {wall:.0f} s wall"
    )
