"""The registry of crash points is the code's: every ``crash_point("...")`` in offchain/ is listed
in CRASH_POINTS once, every listed name is used exactly once, docs/crash-points.md describes each
one, and a point fires (SIGKILL) only when TCHAN_CRASH_AT names it, on the given hit."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from offchain import crashpoints
from offchain.crashpoints import CRASH_POINTS, ENV, parse

ROOT = Path(__file__).resolve().parents[2]
CALL = re.compile(r"""crash_point\(\s*["']([^"']+)["']\s*\)""")


def used_points() -> Counter[str]:
    found: Counter[str] = Counter()
    for path in (ROOT / "offchain").rglob("*.py"):
        if path.name == "crashpoints.py":
            continue
        found.update(CALL.findall(path.read_text()))
    return found


def test_every_crash_point_in_the_code_is_registered_and_none_is_stale() -> None:
    used = used_points()
    assert len(CRASH_POINTS) == len(set(CRASH_POINTS)), "a name is registered twice"
    assert set(used) - set(CRASH_POINTS) == set(), "crash points missing from CRASH_POINTS"
    assert set(CRASH_POINTS) - set(used) == set(), "registered crash points no longer in the code"
    assert [name for name, n in used.items() if n > 1] == [], "a name marks two places"


def test_every_crash_point_is_documented() -> None:
    doc = (ROOT / "docs" / "crash-points.md").read_text()
    missing = [name for name in CRASH_POINTS if f"`{name}`" not in doc]
    assert missing == []


def test_parse() -> None:
    assert parse(None) is None and parse("") is None
    assert parse("party.propose.stored") == ("party.propose.stored", 1)
    assert parse("store.after_commit:3") == ("store.after_commit", 3)
    with pytest.raises(ValueError):
        parse("store.after_commit:0")


def test_disabled_crash_points_do_nothing() -> None:
    if crashpoints._target is not None:  # pragma: no cover - the suite never runs armed
        pytest.skip(f"{ENV} is set")
    for name in CRASH_POINTS:
        crashpoints.crash_point(name)


def _run(env_value: str | None, calls: list[str]) -> subprocess.CompletedProcess[str]:
    code = "from offchain.crashpoints import crash_point\n" + "".join(
        f"crash_point({name!r}); print({name!r}, flush=True)\n" for name in calls
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != ENV}
    if env_value is not None:
        env[ENV] = env_value
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)


def test_an_armed_crash_point_kills_the_process_on_its_hit() -> None:
    calls = ["party.propose.stored", "store.after_commit", "store.after_commit", "store.after_commit"]
    unarmed = _run(None, calls)
    assert unarmed.returncode == 0 and unarmed.stdout.split() == calls
    first = _run("party.propose.stored", calls)
    assert first.returncode == -signal.SIGKILL and first.stdout == ""
    assert "crash point party.propose.stored reached" in first.stderr
    second = _run("store.after_commit:2", calls)
    assert second.returncode == -signal.SIGKILL
    assert second.stdout.split() == ["party.propose.stored", "store.after_commit"]
    other = _run("trader.close.submitted", calls)
    assert other.returncode == 0 and other.stdout.split() == calls
