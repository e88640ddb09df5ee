"""A fast sample of the crash matrix (``make crash`` runs all of it; docs/crash-points.md).

The sample is also the regression test of the two bugs the harness found: a broker killed after
it proposed the first trade of a batch (``party.propose.committed``: in the cooperative flow its
first proposal is a trade) proposes the others after its restart; and a broker killed before it
sent its setup ACK (``broker.setup_ack.before_send``) repeats its ``broker_deposited`` notice to the
trader that resumes, so that the deposits get accounted; and a broker killed right after it sent
its server-initiative setup proposal (``broker.proposal.sent``) deposits when the trader's ACK
reaches it after its restart (it used to deposit only on an ACK it was still waiting for)."""

from __future__ import annotations

from pathlib import Path

import pytest

from offchain.protocol.party import BROKER, COOPERATIVE, SERVER_INITIATIVE
from tests.crash.harness import Case, run_matrix, summary

pytestmark = [pytest.mark.anvil, pytest.mark.slow]

SAMPLE = (
    Case("party.propose.committed", COOPERATIVE, BROKER),
    Case("broker.setup_ack.before_send", COOPERATIVE, BROKER),
    Case("broker.proposal.sent", SERVER_INITIATIVE, BROKER),
)


def test_a_sample_of_crash_points_restart_and_settle(tmp_path: Path) -> None:
    outcomes = run_matrix(SAMPLE, tmp_path, nodes=len(SAMPLE))
    print(summary(outcomes))
    for outcome in outcomes:
        assert outcome.passed, outcome.line() + "\n" + outcome.logs
        assert outcome.crashed, f"{outcome.case.label}: the crash point was not reached"
        assert outcome.closed == 2 and outcome.disputed == 0, outcome.line()
        assert outcome.traded, f"{outcome.case.label}: the batch filled nothing"
