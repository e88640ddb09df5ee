"""The crash harness: kill a broker or trader process at a named crash point, restart it on its
store, let the run finish, and check that nothing was lost and nothing signed twice.

One *case* is (crash point, hit count, flow, victim). A run on anvil has one broker (``tchan
broker``) and two traders (:mod:`tests.crash.driver`, the real TraderAgent) in the case's flow:
trader A (dev account 1) sells and trader B (dev account 2) buys the same amount of XAU across the
price, so one batch fills both; then each cancels what is left, finalizes and closes on-chain.
The victim (the broker or trader A) runs with ``TCHAN_CRASH_AT``; when it dies by SIGKILL it is
restarted on the same store (and port) without the variable. After the run:

- every channel in any store is closed or concluded on-chain; one that is not (a trader gave up)
  is finished by hand: the newest co-signed state of either store is registered with
  ``challenge``, the chain travels past the deadline, and the harness concludes;
- what the adjudicator paid (``Closed``/``Concluded``) is what the newest co-signed state says
  (:func:`offchain.settlement.payouts` with the deposits made), and that state is the newest any
  store holds;
- no party signed two different states with one version: per (signer, channel, version) the
  digests in the signer's ``signed`` log and of every state carrying its signature in either store
  are one and the same.

:func:`run_matrix` runs many cases on a few anvil nodes in parallel (one deployment per node, the
cases of a node one after the other).
"""

from __future__ import annotations

import json
import queue
import shutil
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offchain.chain.client import AdjudicatorClient, Stage
from offchain.chain.connection import Chain, Transactor, rpc_chain
from offchain.crashpoints import CRASH_POINTS, ENV
from offchain.eip712 import Domain
from offchain.localnet import Anvil, free_port
from offchain.model import ChannelParams
from offchain.protocol.party import BROKER, COOPERATIVE, SERVER_INITIATIVE, TRADER
from offchain.settlement import payouts
from offchain.signing import CoSignedState, recover
from offchain.store import open_store
from tests.e2e.trading_helpers import TCHAN, USD, XAU, Proc, Processes, dev_key, stop, units

DRIVER = str(Path(__file__).with_name("driver.py"))
TRADER_DEPOSIT = 1_000 * USD
BROKER_DEPOSIT = 2_000 * USD
AMOUNT = 0.1  # XAU each way
FLOWS = (COOPERATIVE, SERVER_INITIATIVE)
VICTIMS = (BROKER, TRADER)
RUN_TIMEOUT = 150.0  # seconds for one run, restarts included
TRADER_DEADLINE = 80.0  # what a trader driver retries for before it gives up

# Which victims a crash point can hit: the agents' own points only their process; the shared
# code (party, signing, store) both.
PREFIX_VICTIMS = {"broker.": (BROKER,), "trader.": (TRADER,)}

# Points the full matrix also tries later in the run (the N-th hit), so that the crash lands in
# the order, batch, finalize and close phases and not only at the channel's setup.
LATER_HITS: dict[str, tuple[int, ...]] = {
    "store.after_commit": (6,),
    "party.propose.committed": (3,),
    "party.on_proposal.committed": (3,),
}


@dataclass(frozen=True)
class Case:
    point: str
    flow: str
    victim: str
    hits: int = 1

    @property
    def spec(self) -> str:
        return self.point if self.hits == 1 else f"{self.point}:{self.hits}"

    @property
    def label(self) -> str:
        return f"{self.spec} / {self.flow} / {self.victim}"


@dataclass
class Outcome:
    case: Case
    crashed: bool = False  # the victim died by SIGKILL at the point (else the point was not reached)
    passed: bool = False
    disputed: int = 0  # channels the harness had to finish by a dispute
    closed: int = 0  # channels closed cooperatively
    traded: bool = False  # the batch filled the orders
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    logs: str = ""

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        how = "crashed+restarted" if self.crashed else "not reached"
        extra = f", {self.disputed} disputed" if self.disputed else ""
        fills = "fills" if self.traded else "no fills"
        text = f"{verdict} {self.case.label}: {how}, {self.closed} closed{extra}, {fills}, {self.seconds:.1f} s"
        return text + "".join(f"\n    - {p}" for p in self.problems)


def cases(
    points: Iterable[str] = CRASH_POINTS,
    flows: Iterable[str] = FLOWS,
    later_hits: bool = False,
) -> list[Case]:
    """Every (point, hit count, flow, victim) to try."""
    result = []
    for point in points:
        victims = next((v for p, v in PREFIX_VICTIMS.items() if point.startswith(p)), VICTIMS)
        for hits in (1, *(LATER_HITS.get(point, ()) if later_hits else ())):
            for flow in flows:
                for victim in victims:
                    result.append(Case(point, flow, victim, hits))
    return result


# --------------------------------------------------------------------------- one node


class Node:
    """One anvil node with the contracts deployed; runs cases one after the other."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.anvil = Anvil.start()
        self.chain = rpc_chain(self.anvil.url)
        self.deployments = workdir / "deployments"
        with Processes(workdir / "deploy-logs", self.anvil.url, self.deployments) as procs:
            procs.deploy(mint=10**7 * USD)
            _, self.adjudicator, self.token = procs.contracts(self.chain)
        self.count = 0

    def close(self) -> None:
        self.anvil.stop()

    def run(self, case: Case, keep_logs: bool = False) -> Outcome:
        self.count += 1
        rundir = self.workdir / f"run{self.count:03d}"
        outcome = Outcome(case)
        started = time.monotonic()
        try:
            _run_case(self, case, rundir, outcome)
        except Exception as exc:  # noqa: BLE001 - a harness failure is a failed case, with its story
            outcome.problems.append(f"{type(exc).__name__}: {exc}")
        outcome.seconds = time.monotonic() - started
        outcome.passed = not outcome.problems
        if not outcome.passed:
            outcome.logs = _tails(rundir / "logs")
        elif not keep_logs:
            shutil.rmtree(rundir, ignore_errors=True)
        return outcome


def _tails(logs: Path, lines: int = 25) -> str:
    parts = []
    for path in sorted(logs.glob("*")) if logs.exists() else []:
        if path.suffix in (".out", ".err"):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"===== {path.name}\n" + "\n".join(text))
    return "\n".join(parts)


def _order(side: str, limit: int) -> dict[str, str]:
    synthetic = units(AMOUNT)
    return {
        "market": str(XAU),
        "side": side,
        "amount_synthetic": str(synthetic),
        "amount_collateral": str(synthetic * limit * USD // 10**6),
        "max_fee": str(5 * USD),
    }


def _run_case(node: Node, case: Case, rundir: Path, outcome: Outcome) -> None:
    crash_env = ("env", f"{ENV}={case.spec}")
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    broker_store = rundir / "broker.db"
    stores = {"A": rundir / "tA.db", "B": rundir / "tB.db"}
    accounts = {"A": 1, "B": 2}
    orders = {"A": _order("sell", 1990), "B": _order("buy", 2010)}
    with Processes(rundir / "logs", node.anvil.url, node.deployments) as procs:

        def start_broker(armed: bool) -> Proc:
            program = (*crash_env, TCHAN) if armed else (TCHAN,)
            return procs.broker(
                broker_store,
                port,
                channel_deposit=BROKER_DEPOSIT,
                batch_seconds=1.0,
                extra=["--ack-timeout", "4"],
                name="broker" if armed else "broker-restarted",
                program=program,
            )

        def start_trader(who: str, armed: bool) -> Proc:
            plan = {
                "deposit": str(TRADER_DEPOSIT),
                "flow": case.flow,
                "order": orders[who],
                "fill_wait": "15",
                "deadline": str(TRADER_DEADLINE),
            }
            name = f"trader{who}" + ("" if armed or who != "A" or case.victim != TRADER else "-restarted")
            plan_path = rundir / f"plan-{who}-{procs._count + 1}.json"
            plan_path.write_text(json.dumps(plan))
            args = [
                *procs.node_args(accounts[who]),
                "--broker-url",
                url,
                "--store",
                str(stores[who]),
                "--json",
                "--timeout",
                "6",
            ]
            program = (*crash_env, sys.executable, DRIVER) if armed else (sys.executable, DRIVER)
            return procs.spawn(name, [str(plan_path), *args], program)

        rundir.mkdir(parents=True, exist_ok=True)
        broker = start_broker(case.victim == BROKER)
        _wait_ready_or_dead(broker)
        traders = {"A": start_trader("A", case.victim == TRADER), "B": start_trader("B", False)}

        def victim() -> Proc:
            return broker if case.victim == BROKER else traders["A"]

        deadline = time.monotonic() + RUN_TIMEOUT
        while True:
            v = victim()
            code = v.process.poll()
            if code is not None and not outcome.crashed and code == -signal.SIGKILL:
                outcome.crashed = True
                if f"crash point {case.point} reached" not in v.err():
                    outcome.problems.append(f"{v.name} was killed, but not by the crash point")
                if case.victim == BROKER:
                    broker = start_broker(False)
                    _wait_ready_or_dead(broker)
                else:
                    traders["A"] = start_trader("A", False)
                continue
            if all(t.process.poll() is not None for t in traders.values()):
                break
            if broker.process.poll() is not None:
                outcome.problems.append(f"{broker.name} exited with {broker.process.returncode}")
                break
            if time.monotonic() > deadline:
                outcome.problems.append(f"the run did not finish in {RUN_TIMEOUT} s")
                break
            time.sleep(0.1)
        for who, proc in traders.items():
            if proc.process.poll() is None:
                stop(proc)
            if proc.process.returncode != 0:
                outcome.problems.append(f"trader {who} exited with {proc.process.returncode}")
            summary = _summary(proc)
            outcome.traded = outcome.traded or bool(summary.get("traded"))
        stop(broker)
        if broker.process.returncode not in (0, -signal.SIGKILL) or (
            broker.process.returncode == -signal.SIGKILL and case.victim != BROKER
        ):
            outcome.problems.append(f"broker exited with {broker.process.returncode}")
        if case.victim == TRADER and not outcome.crashed and traders["A"].process.returncode == -signal.SIGKILL:
            outcome.problems.append("trader A was killed twice")
    check_run(node, [broker_store, *stores.values()], outcome)


def _summary(proc: Proc) -> dict[str, Any]:
    lines = [line for line in proc.out().splitlines() if line.strip().startswith("{")]
    try:
        data: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    except ValueError:
        return {}
    return data


def _wait_ready_or_dead(broker: Proc, timeout: float = 90) -> None:
    """Wait for the broker's ready line, or for it to die (a crash point during start)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if " ready on ws://" in broker.out() or broker.process.poll() is not None:
            return
        time.sleep(0.05)
    raise AssertionError(f"{broker.name} did not get ready\n{broker.tail()}")


# --------------------------------------------------------------------------- the checks


@dataclass
class StoredChannel:
    params: ChannelParams
    newest: CoSignedState | None = None
    signed: dict[tuple[str, int], set[bytes]] = field(default_factory=lambda: defaultdict(set))


def read_stores(paths: Sequence[Path]) -> dict[bytes, StoredChannel]:
    """Every channel of every store, its newest co-signed state, and every digest each signer
    signed per version (from its own signature log and from every stored signature)."""
    channels: dict[bytes, StoredChannel] = {}
    for path in paths:
        if not path.exists():
            continue
        store = open_store(str(path))
        try:
            for record in store.channels():
                cid = bytes(record.channel_id)
                params = record.params
                found = channels.setdefault(cid, StoredChannel(params))
                domain = Domain(params.chain_id, params.adjudicator)
                owner = params.trader if record.meta["role"] == TRADER else params.broker
                latest = store.latest_state(cid)
                top = latest.state.version if latest is not None else 0
                for version in range(top + 3):
                    digest = store.signed_digest(cid, version)
                    if digest is not None:
                        found.signed[(owner, version)].add(bytes(digest))
                    stored = store.state(cid, version)
                    if stored is None:
                        continue
                    digest = domain.state_digest(stored.state)
                    for signer, sig in (
                        (params.trader, stored.trader_signature),
                        (params.broker, stored.broker_signature),
                    ):
                        if sig:
                            assert recover(digest, sig) == signer, f"{path.name}: a stored signature is not {signer}'s"
                            found.signed[(signer, version)].add(bytes(digest))
                    if stored.co_signed and (found.newest is None or found.newest.state.version < version):
                        found.newest = CoSignedState(stored.state, stored.trader_signature, stored.broker_signature)  # type: ignore[arg-type]
        finally:
            store.close()
    return channels


def check_run(node: Node, store_paths: Sequence[Path], outcome: Outcome) -> None:
    channels = read_stores(store_paths)
    chain, adjudicator = node.chain, node.adjudicator
    for cid, found in channels.items():
        short = "0x" + cid.hex()[:10]
        for (signer, version), digests in found.signed.items():
            if len(digests) > 1:
                outcome.problems.append(
                    f"{short}: {signer} signed {len(digests)} different states with version {version}"
                )
        deposits = _deposits(chain, adjudicator, found.params)
        status = adjudicator.status(cid)  # type: ignore[arg-type]
        if status.stage != Stage.CONCLUDED:
            if found.newest is None and not any(deposits.values()):
                continue  # never co-signed, never funded: nothing to settle (a setup cut short)
            _dispute_by_hand(chain, adjudicator, found, deposits)
            outcome.disputed += 1
        event = _payout_event(chain, adjudicator, cid)
        if event is None:
            outcome.problems.append(f"{short}: concluded without a Closed or Concluded event")
            continue
        if event["event"] == "Closed":
            outcome.closed += 1
            if found.newest is None or int(event["args"]["version"]) != found.newest.state.version:
                newest = None if found.newest is None else found.newest.state.version
                outcome.problems.append(f"{short}: closed with version {event['args']['version']}, newest is {newest}")
        if found.newest is None:
            expected = (deposits[TRADER], deposits[BROKER])
        else:
            p = payouts(found.params, found.newest.state, deposits[TRADER], deposits[BROKER], {}, 6)
            expected = (p.to_trader, p.to_broker)
        paid = (int(event["args"]["toTrader"]), int(event["args"]["toBroker"]))
        if paid != expected:
            outcome.problems.append(f"{short}: paid {paid}, the newest co-signed state says {expected}")


def _deposits(chain: Chain, adjudicator: AdjudicatorClient, params: ChannelParams) -> dict[str, int]:
    """What each participant deposited into the channel (from the ``Deposited`` events)."""
    total = {TRADER: 0, BROKER: 0}
    for log in adjudicator.logs("Deposited", 0, chain.w3.eth.block_number):
        if bytes(log["args"]["channelId"]) == params.channel_id:
            who = TRADER if log["args"]["participant"] == params.trader else BROKER
            total[who] += int(log["args"]["amount"])
    return total


def _payout_event(chain: Chain, adjudicator: AdjudicatorClient, cid: bytes) -> dict[str, Any] | None:
    latest = chain.w3.eth.block_number
    for name in ("Closed", "Concluded"):
        for log in adjudicator.logs(name, 0, latest):
            if bytes(log["args"]["channelId"]) == cid:
                return log
    return None


def _dispute_by_hand(
    chain: Chain, adjudicator: AdjudicatorClient, found: StoredChannel, deposits: dict[str, int]
) -> None:
    """Register the newest co-signed state, wait out the challenge period, conclude."""
    params = found.params
    sender = Transactor.from_key(chain, dev_key(1))
    if found.newest is None:
        adjudicator.challenge_without_state(sender, params)
    else:
        adjudicator.challenge(sender, params, found.newest)
    chain.increase_time(params.challenge_duration + 1)
    adjudicator.conclude(sender, params, None if found.newest is None else found.newest.state)


# --------------------------------------------------------------------------- many cases


def run_matrix(
    todo: Sequence[Case],
    workdir: Path,
    nodes: int = 4,
    report: Callable[[Outcome], None] | None = None,
    keep_logs: bool = False,
) -> list[Outcome]:
    """Run ``todo`` on ``nodes`` anvil nodes in parallel; outcomes in the order of ``todo``."""
    pending: queue.Queue[tuple[int, Case]] = queue.Queue()
    for item in enumerate(todo):
        pending.put(item)
    results: dict[int, Outcome] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            node = Node(workdir / f"node{n}")
        except BaseException as exc:  # noqa: BLE001 - reported after the others finish
            errors.append(exc)
            return
        try:
            while True:
                try:
                    index, case = pending.get_nowait()
                except queue.Empty:
                    return
                outcome = node.run(case, keep_logs)
                with lock:
                    results[index] = outcome
                    if report is not None:
                        report(outcome)
        finally:
            node.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(min(nodes, len(todo)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors and not results:
        raise errors[0]
    return [results[i] for i in sorted(results)]


def summary(outcomes: Sequence[Outcome]) -> str:
    tried = len(outcomes)
    passed = sum(o.passed for o in outcomes)
    crashed = sum(o.crashed for o in outcomes)
    disputed = sum(o.disputed > 0 for o in outcomes)
    points = len({o.case.point for o in outcomes})
    return (
        f"{tried} cases ({points} crash points x hit counts x flows x victims): {passed} passed, "
        f"{tried - passed} failed; the crash point fired in {crashed}, was not reached in {tried - crashed}; "
        f"{disputed} needed a dispute by hand"
    )
