"""``python -m tests.crash [--quick] [--nodes N] [--keep-logs] [POINT ...]``: the crash matrix
(what ``make crash`` runs). Prints one line per case and the figures; exits 1 if a case failed."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from offchain.crashpoints import CRASH_POINTS
from tests.crash.harness import FLOWS, Outcome, cases, run_matrix, summary


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.crash")
    parser.add_argument("points", nargs="*", help="crash points to try (default: every one)")
    parser.add_argument("--nodes", type=int, default=4, help="anvil nodes running cases in parallel")
    parser.add_argument("--flow", choices=FLOWS, action="append", help="only this flow (repeatable)")
    parser.add_argument("--later-hits", action="store_true", help="also the later hits of LATER_HITS")
    parser.add_argument("--keep-logs", action="store_true", help="keep the logs of passing runs too")
    parser.add_argument("--workdir", type=Path, help="where runs write stores and logs (default: a temp dir)")
    args = parser.parse_args(argv)
    unknown = set(args.points) - set(CRASH_POINTS)
    if unknown:
        parser.error(f"unknown crash points: {sorted(unknown)}")
    todo = cases(args.points or CRASH_POINTS, args.flow or FLOWS, later_hits=args.later_hits)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tchan-crash-"))
    print(f"{len(todo)} cases on {args.nodes} anvil nodes; runs in {workdir}", flush=True)
    started = time.monotonic()

    def report(outcome: Outcome) -> None:
        print(outcome.line(), flush=True)
        if not outcome.passed:
            print(outcome.logs, flush=True)

    outcomes = run_matrix(todo, workdir, nodes=args.nodes, report=report, keep_logs=args.keep_logs)
    print(f"\n{summary(outcomes)}; {time.monotonic() - started:.0f} s", flush=True)
    return 0 if outcomes and all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
