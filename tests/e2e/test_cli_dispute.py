"""Disputes by hand through ``tchan``, against a real anvil node (MISSION.md, "Command line and
demo"): ``challenge``, ``refute``, ``evidence``, ``conclude``, ``withdraw``, ``prove-two-prices``,
``prove-left-out-order`` and ``channel show``/``list``.

The contracts are deployed once for the module with ``tchan deploy``. Each test then builds its own
channel from Python: the states come from the engine (:mod:`offchain.engine.channel`), both
parties (anvil dev accounts) sign them, the broker signs its batch prices, and everything is
written to SQLite stores with the records a trader or broker agent writes. Every dispute command
runs at least once through the installed console script, as a subprocess (``process=True``; and
``conclude --wait`` waits in its own process); the other runs, error paths included, go through
the same entry point in this process (:func:`tests.cli_helpers.tchan`), which saves a Python
start-up per command. The chain is checked from Python, and the payouts against the pure rule in
:mod:`offchain.settlement`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from web3.contract import Contract

from offchain.chain import errors
from offchain.chain.artifacts import load_artifact
from offchain.chain.client import AdjudicatorClient, PriceFeedClient, Stage, TokenClient
from offchain.chain.connection import Chain, Transactor, rpc_chain
from offchain.chain.deploy import Deployment, deploy_contract
from offchain.engine.channel import AccountDeposits, Channel, CreateOrder, Fill, Trade, Transition, apply, setup
from offchain.localnet import Anvil
from offchain.model import BatchPrice, ChallengeAuthorization, ChannelParams, Market, Order, check_address
from offchain.sandbox import DEFAULT_RISK_FACTOR
from offchain.settlement import Evidence, OraclePrice, payouts
from offchain.signing import CoSignedState, LocalSigner, StateSigner, co_sign
from offchain.store import ChannelRecord, StoredBatchPrice, StoredOrder, open_store
from offchain.types import (
    Address,
    BatchNumber,
    ExpirationHours,
    MarketId,
    Nonce,
    Price,
    Signature,
    SyntheticAmount,
    Timestamp,
    TokenAmount,
)
from tests.cli_helpers import tchan, tchan_process
from tests.e2e.trading_helpers import (
    FEEDS,
    MINT,
    TCHAN,
    USD,
    XAU,
    Processes,
    dev_address,
    dev_key,
    open_step,
    order_step,
    stop,
    wait_all,
)

pytestmark = pytest.mark.anvil

DEPLOYER, TRADER, BROKER, OUTSIDER, CHEATER, PAYEE = 0, 1, 2, 3, 4, 5
TD, BD = 5_000 * USD, 20_000 * USD  # the deposits of every channel
UNIT = 10**6  # synthetic base units per ounce (the market's resolution)
GOLD = MarketId(1)
GOLD_ID = 1  # the same, as a plain key
FEED_DECIMALS = 8
HOUR = 3600
CHALLENGE = HOUR  # the shortest challenge duration the adjudicator allows


def dollars(amount: int) -> int:
    return amount * USD


def answer(dollars_per_ounce: int) -> int:
    scale: int = 10**FEED_DECIMALS
    return dollars_per_ounce * scale


# --------------------------------------------------------------------------- the world


@dataclass
class World:
    """One anvil with the contracts deployed by ``tchan deploy``, shared by the module."""

    anvil: Anvil
    chain: Chain
    procs: Processes
    tmp: Path
    deployment: Deployment
    adjudicator: AdjudicatorClient
    token: TokenClient
    gold: PriceFeedClient
    nonce: int = 0
    transactors: dict[int, Transactor] = field(default_factory=dict)

    def tx(self, account: int) -> Transactor:
        if account not in self.transactors:
            self.transactors[account] = Transactor.from_key(self.chain, dev_key(account))
        return self.transactors[account]

    def argv(self, *args: str, account: int | None = None, node: bool = True) -> list[str]:
        """``tchan ARGS`` with the node, network and deployments of this world (and the key of
        dev account ``account``)."""
        extra: list[str] = []
        if node:
            extra = self.procs.node_args(DEPLOYER)[:-2]  # --rpc, --network, --deployments
        if account is not None:
            extra += ["--dev-account", str(account)]
        return [TCHAN, *args, *extra]

    def run(
        self, *args: str, account: int | None = None, node: bool = True, process: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run ``tchan ARGS`` in this process, or with ``process`` through the installed console
        script in its own process."""
        argv = self.argv(*args, account=account, node=node)[1:]
        return tchan_process(*argv) if process else tchan(*argv)

    def ok(self, *args: str, account: int | None = None, node: bool = True, process: bool = False) -> dict[str, Any]:
        """Run with ``--json``; it must succeed; its one JSON document."""
        run = self.run(*args, "--json", account=account, node=node, process=process)
        assert run.returncode == 0, f"tchan {' '.join(args)}\n{run.stdout}\n{run.stderr}"
        lines = run.stdout.strip().splitlines()
        assert len(lines) == 1, run.stdout
        data: dict[str, Any] = json.loads(lines[0])
        return data

    def fails(self, *args: str, code: str, account: int | None = None) -> str:
        """Run; it must fail with one line ``tchan: CODE: ...``; that line."""
        run = self.run(*args, account=account)
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 1, f"{run.stdout}\n{run.stderr}"
        assert len(lines) == 1, run.stderr
        assert lines[0].startswith(f"tchan: {code}: "), lines[0]
        assert run.stdout == ""
        return lines[0]

    def balance(self, account: int, token: TokenClient | None = None) -> int:
        return int((token or self.token).balance_of(check_address("account", dev_address(account))))

    def at_time(self, timestamp: int) -> None:
        """Mine a block at ``timestamp``; later blocks follow the wall clock from there."""
        self.chain.w3.provider.make_request("evm_setNextBlockTimestamp", [timestamp])  # type: ignore[arg-type]
        self.chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def w(anvil: Anvil, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("cli-dispute")
    procs = Processes(tmp / "logs", anvil.url, tmp / "deployments")
    feeds = [arg for feed in FEEDS for arg in ("--feed", feed)]
    deployed = tchan("deploy", *procs.node_args(DEPLOYER), "--mint", str(MINT), *feeds)  # as Processes.deploy
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    chain = rpc_chain(anvil.url)
    deployment, adjudicator, token = procs.contracts(chain)
    gold = PriceFeedClient(chain, deployment.feeds()["XAU / USD"])
    world = World(anvil, chain, procs, tmp, deployment, adjudicator, token, gold)
    gold.push(world.tx(DEPLOYER), answer(2_000))
    yield world


# --------------------------------------------------------------------------- channels


class Built:
    """A channel between dev accounts TRADER and ``broker``, funded with TD and BD, whose
    co-signed states come from the engine; ``write`` stores it as a party's agent would."""

    def __init__(self, w: World, broker: int = BROKER, token: Address | None = None) -> None:
        w.nonce += 1
        self.w = w
        self.trader_key, self.broker_key = LocalSigner(dev_key(TRADER)), LocalSigner(dev_key(broker))
        self.broker = broker
        self.params = ChannelParams(
            chain_id=w.chain.chain_id,
            adjudicator=w.adjudicator.address,
            trader=self.trader_key.address,
            broker=self.broker_key.address,
            token=token or w.token.address,
            challenge_duration=CHALLENGE,
            nonce=w.nonce,
            markets=(Market(GOLD, w.gold.address, UNIT, DEFAULT_RISK_FACTOR, 30 * 24 * HOUR),),
        )
        domain = w.adjudicator.domain
        self.signers = (StateSigner(self.trader_key, domain), StateSigner(self.broker_key, domain))
        self.channel: Channel = setup(self.params)
        self.history: list[CoSignedState] = [co_sign(self.channel.state, self.signers)]
        self.orders: list[tuple[Order, Signature]] = []
        self.prices: list[tuple[BatchPrice, Signature]] = []
        if token is None:  # agents approve exact amounts: approve again for this channel
            for account, amount in ((TRADER, TD), (broker, BD)):
                w.token.approve(w.tx(account), w.adjudicator.address, amount)
        w.adjudicator.deposit(w.tx(TRADER), self.params, self.params.trader, TD)
        w.adjudicator.deposit(w.tx(broker), self.params, self.params.broker, BD)
        self.apply(AccountDeposits(TokenAmount(TD), TokenAmount(BD)))

    @property
    def id(self) -> str:
        return "0x" + self.params.channel_id.hex()

    def now(self) -> Timestamp:
        return self.w.chain.now()

    def apply(self, transition: Transition) -> CoSignedState:
        self.channel = apply(self.channel, transition).channel
        signed = co_sign(self.channel.state, self.signers)
        self.history.append(signed)
        return signed

    def buy(self, nonce: int, limit: int, first_batch: int, ounces: int = 1) -> CoSignedState:
        """Lock a buy order for ``ounces`` at ``limit`` dollars an ounce, eligible from ``first_batch``."""
        order = Order(
            channel_id=self.params.channel_id,
            trader=self.params.trader,
            collateral=self.params.token,
            market=GOLD,
            is_buy=True,
            amount_synthetic=SyntheticAmount(ounces * UNIT),
            amount_collateral=TokenAmount(ounces * dollars(limit)),
            max_fee=TokenAmount(dollars(5)),
            nonce=Nonce(nonce),
            expiration=ExpirationHours(self.now() // HOUR + 30 * 24),
        )
        signature = self.trader_key.sign(self.w.adjudicator.domain, order)
        self.orders.append((order, signature))
        return self.apply(CreateOrder(order, signature, BatchNumber(first_batch), self.now(), {}))

    def price(self, batch: int, dollars_per_ounce: int) -> BatchPrice:
        """A gold batch price signed by the broker."""
        price = BatchPrice(GOLD, BatchNumber(batch), Price(dollars(dollars_per_ounce)))
        self.prices.append((price, self.broker_key.sign(self.w.adjudicator.domain, price)))
        return price

    def trade(self, price: BatchPrice, *nonces: int) -> CoSignedState:
        """The batch of ``price`` fills the orders ``nonces`` completely, with a $1 fee each."""
        fills = tuple(
            Fill(Nonce(n), SyntheticAmount(self.channel.open_order(n).order.amount_synthetic), TokenAmount(USD))  # type: ignore[union-attr]
            for n in nonces
        )
        return self.apply(Trade(price, fills, self.now(), {}))

    def write(self, name: str, role: str = "trader", versions: Sequence[int] | None = None) -> str:
        """A SQLite store of ``role`` holding the co-signed ``versions`` (default: all), the
        orders and the broker-signed prices, as ChannelParty and the agents store them."""
        path = self.w.tmp / f"{name}.db"
        cid = self.params.channel_id
        chosen = [s for s in self.history if versions is None or s.state.version in versions]
        with open_store(str(path)) as store, store.transaction():
            meta = {
                "role": role,
                "flow": "cooperative",
                "turn": role,
                "status": "open",
                "used_nonces": sorted(str(n) for n in self.channel.used_nonces),
            }
            store.put_channel(ChannelRecord(cid, self.params, meta))
            mine = self.signers[0] if role == "trader" else self.signers[1]
            for signed in chosen:
                store.put_state(signed.state, signed.trader_signature, signed.broker_signature)
                store.record_signed(cid, signed.state.version, mine.domain.state_digest(signed.state))
            for order, signature in self.orders:
                store.put_order(StoredOrder(cid, order.nonce, order, signature))
            for price, signature in self.prices:
                store.put_batch_price(StoredBatchPrice(self.params.broker, price, signature))
        return str(path)


def blacklist_token(w: World) -> tuple[Contract, TokenClient]:
    """A BlacklistToken held and approved by TRADER and BROKER: it refuses payouts on demand."""
    deployed = deploy_contract(w.tx(DEPLOYER), "BlacklistToken")
    contract = w.chain.w3.eth.contract(address=deployed.address, abi=load_artifact("BlacklistToken")["abi"])
    client = TokenClient(w.chain, deployed.address, artifact="BlacklistToken")
    for account in (TRADER, BROKER):
        w.tx(DEPLOYER).transact(contract.functions.mint(dev_address(account), TD + BD))
        w.tx(account).transact(contract.functions.approve(w.adjudicator.address, 2**256 - 1))
    return contract, client


def set_blacklisted(w: World, token: Contract, accounts: Sequence[int], value: bool) -> None:
    for account in accounts:
        w.tx(DEPLOYER).transact(token.functions.setBlacklisted(dev_address(account), value))


# --------------------------------------------------------------------------- the tests


def test_stale_challenge_refuted_concluded_after_waiting_and_withdrawn_by_both(w: World) -> None:
    """The broker challenges with an old state; the trader refutes with its newest; after the
    deadline (``conclude --wait``) the channel pays at the oracle price; the token refuses both
    payouts, so both parties withdraw them."""
    token, tokens = blacklist_token(w)
    c = Built(w, token=tokens.address)
    c.buy(1, limit=2_010, first_batch=1)
    c.trade(c.price(1, 2_000), 1)  # long 1 oz at $2,000
    newest = c.buy(2, limit=1_900, first_batch=2)  # resting
    trader_db, broker_db = c.write("stale-trader", "trader"), c.write("stale-broker", "broker")
    w.gold.push(w.tx(DEPLOYER), answer(2_100))

    before = w.ok("channel", "show", "--store", trader_db)
    assert before["channel_id"] == c.id
    assert before["on_chain"]["stage"] == "open"
    assert before["on_chain"]["trader_deposit"] == str(TD)
    assert before["store"]["version"] == "4" and before["store"]["role"] == "trader"
    assert [o["nonce"] for o in before["store"]["open_orders"]] == ["2"]
    assert before["store"]["outcomes"][0]["position"] == str(UNIT)
    assert before["store"]["latest_prices"] == [{"market": "1", "batch": "1", "price": str(dollars(2_000))}]

    challenged = w.ok("challenge", "--store", broker_db, "--version", "1", account=BROKER, process=True)
    assert challenged["version"] == "1" and challenged["command"] == "challenge"
    assert int(challenged["gas_used"]) > 0 and challenged["tx"].startswith("0x")
    assert [e["event"] for e in challenged["events"]] == ["Challenged"]
    status = w.adjudicator.status(c.params.channel_id)
    assert status.stage == Stage.DISPUTED and status.registered_version == 1
    assert status.deadline == int(challenged["deadline"])

    refuted = w.ok("refute", "--store", trader_db, account=TRADER, process=True)
    assert (refuted["replaced_version"], refuted["version"]) == ("1", "4")
    w.fails("refute", "--store", broker_db, code="version_not_newer", account=BROKER)
    status = w.adjudicator.status(c.params.channel_id)
    assert status.registered_version == 4

    set_blacklisted(w, token, (TRADER, BROKER), True)
    w.at_time(status.deadline - 60)
    argv = w.argv("conclude", "--store", trader_db, "--wait", "--json", account=OUTSIDER)
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as waiting:
        assert waiting.stderr is not None
        first = waiting.stderr.readline()  # it waits, and says so
        assert first.startswith("waiting for the deadline: ") and first.rstrip().endswith(" s left"), first
        w.at_time(status.deadline)  # a block at the deadline: it concludes at once
        out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    concluded = json.loads(out)
    expected = payouts(c.params, newest.state, TD, BD, {GOLD_ID: OraclePrice(answer(2_100), FEED_DECIMALS)}, 6)
    assert (int(concluded["to_trader"]), int(concluded["to_broker"])) == (expected.to_trader, expected.to_broker)
    assert expected.to_trader == TD + dollars(100) - USD  # bought at $2,000 with a $1 fee, now $2,100
    assert {d["account"] for d in concluded["deferred"]} == {c.params.trader, c.params.broker}
    assert w.adjudicator.status(c.params.channel_id).stage == Stage.CONCLUDED

    set_blacklisted(w, token, (TRADER, BROKER), False)
    trader_before, payee_before = w.balance(TRADER, tokens), w.balance(PAYEE, tokens)
    withdrawn = w.ok("withdraw", "--store", trader_db, account=TRADER, process=True)
    assert withdrawn["amount"] == str(expected.to_trader) and withdrawn["to"] == c.params.trader
    assert w.balance(TRADER, tokens) == trader_before + expected.to_trader
    withdrawn = w.ok("withdraw", "--store", broker_db, "--to", dev_address(PAYEE), account=BROKER)
    assert withdrawn["amount"] == str(expected.to_broker) and withdrawn["account"] == c.params.broker
    assert w.balance(PAYEE, tokens) == payee_before + expected.to_broker
    assert w.adjudicator.withdrawable(tokens.address, c.params.trader) == 0
    assert w.adjudicator.withdrawable(tokens.address, c.params.broker) == 0
    w.fails("withdraw", "--store", trader_db, code="nothing_to_withdraw", account=TRADER)

    after = w.run("channel", "show", "--store", broker_db, process=True)
    assert after.returncode == 0, after.stderr
    assert f"channel {c.id}" in after.stdout and "4 newest co-signed" in after.stdout
    rows = {line.split("  ")[0]: line.split() for line in after.stdout.splitlines()}
    assert rows["stage"][1:] == ["concluded", "open"] and "store (broker)" in after.stdout
    assert rows["withdrawable trader"][-2:] == ["0.00", "-"] and rows["withdrawable broker"][-2:] == ["0.00", "-"]
    assert "amounts in BLK (6 decimals); --json gives base units" in after.stdout  # the token's own


def test_a_dispute_by_hand_on_the_stores_of_real_agents(w: World) -> None:
    """``tchan broker`` and ``tchan trader`` open a channel, lock an order and receive prices; once
    they have stopped, the broker challenges by hand with a stale state from its own store and the
    trader refutes by hand from its store: the commands read the agents' stores as they are."""
    broker_db, trader_db = str(w.tmp / "agents-broker.db"), str(w.tmp / "agents-trader.db")
    with Processes(w.tmp / "agents-logs", w.anvil.url, w.procs.deployments) as procs:
        broker = procs.broker(Path(broker_db), channel_deposit=BD, batch_seconds=0.5)
        url = procs.wait_ready(broker)
        script = [open_step(TD, "cooperative"), order_step(XAU, "buy", 1, 1_000), {"wait_batches": {"count": "2"}}]
        trader = procs.trader("trader", TRADER, url, Path(trader_db), script)
        wait_all([trader], timeout=60)
        assert trader.process.returncode == 0, procs.tails()
        stop(broker)
    listed = w.ok("channel", "list", "--store", broker_db, node=False, process=True)["channels"]
    assert [(c["role"], c["trader"]) for c in listed] == [("broker", dev_address(TRADER))]
    cid = listed[0]["channel_id"]
    shown = w.ok("channel", "show", "--store", trader_db)
    newest = int(shown["store"]["version"])
    assert shown["channel_id"] == cid and newest >= 2 and len(shown["store"]["open_orders"]) == 1
    assert shown["store"]["latest_prices"], "the trader stored the broker's signed prices"

    stale = w.ok("challenge", "--store", broker_db, "--channel", cid, "--version", "1", account=DEPLOYER)
    assert stale["version"] == "1"
    refuted = w.ok("refute", "--store", trader_db, account=TRADER)
    assert refuted["version"] == str(newest)
    # As a walkthrough would: move anvil's clock without mining; the next block is stamped later.
    w.chain.w3.provider.make_request("evm_increaseTime", [CHALLENGE + 1])  # type: ignore[arg-type]
    concluded = w.ok("conclude", "--store", trader_db, account=TRADER)
    assert concluded["how"] == f"concludeWithState with the registered version {newest}"
    assert (concluded["to_trader"], concluded["to_broker"]) == (str(TD), str(BD))  # the order's lock returns


def test_evidence_fills_an_open_order_at_the_earliest_crossing_batch(w: World) -> None:
    c = Built(w)
    registered = c.buy(1, limit=2_010, first_batch=1)
    c.price(1, 2_020)  # above the limit: crosses nothing
    c.price(2, 1_995)  # the earliest crossing batch
    c.price(3, 1_990)
    trader_db = c.write("evidence-trader")
    w.ok("challenge", "--store", trader_db, account=TRADER)

    first = w.ok("evidence", "--store", trader_db, "--market", "1", "--batch", "3", account=TRADER, process=True)
    assert [(a["order_index"], a["batch"], a["price"]) for a in first["accepted"]] == [("0", "3", str(dollars(1_990)))]
    earliest = w.ok("evidence", "--store", trader_db, account=OUTSIDER)
    assert [(a["batch"], a["price"]) for a in earliest["accepted"]] == [("2", str(dollars(1_995)))]
    assert earliest["submitted"] == [{"market": "1", "batch": "2", "price": str(dollars(1_995))}]
    assert w.adjudicator.evidence(c.params.channel_id, registered.state) == {0: Evidence(2, dollars(1_995))}
    line = w.fails("evidence", "--store", trader_db, code="nothing_to_submit", account=TRADER)
    assert "order 0: batch 2 at 1995.00 tUSD" in line
    shown = w.ok("channel", "show", "--store", trader_db)
    assert shown["on_chain"]["evidence"] == [
        {"order_index": "0", "nonce": "1", "batch": "2", "price": str(dollars(1_995))}
    ]

    line = w.fails("conclude", "--store", trader_db, code="deadline_not_reached", account=TRADER)
    assert "add --wait" in line
    w.chain.increase_time(CHALLENGE + 1)
    concluded = w.ok("conclude", "--store", trader_db, account=TRADER)
    fills = [e["args"] for e in concluded["events"] if e["event"] == "OrderFilledByEvidence"]
    assert [(f["orderIndex"], f["batch"], f["price"]) for f in fills] == [("0", "2", str(dollars(1_995)))]
    oracle = {GOLD_ID: OraclePrice(int(w.gold.latest().answer), FEED_DECIMALS)}
    expected = payouts(c.params, registered.state, TD, BD, oracle, 6, evidence={0: Evidence(2, dollars(1_995))})
    assert (int(concluded["to_trader"]), int(concluded["to_broker"])) == (expected.to_trader, expected.to_broker)


def test_two_prices_slash_the_broker_and_conclude_pays_the_trader_everything(w: World) -> None:
    c = Built(w, broker=CHEATER)  # slashing is for every channel of the broker: a broker of its own
    c.price(4, 2_000)
    c.price(5, 2_000)
    c.price(5, 2_001)  # a second price for batch 5
    trader_db = c.write("two-prices-trader")
    w.fails(
        "prove-two-prices", "--store", trader_db, "--market", "1", "--batch", "4", code="no_proof", account=OUTSIDER
    )

    proved = w.ok("prove-two-prices", "--store", trader_db, account=OUTSIDER, process=True)
    assert (proved["market"], proved["batch"]) == ("1", "5")
    assert sorted(proved["prices"]) == [str(dollars(2_000)), str(dollars(2_001))]
    assert w.adjudicator.slashed_at(c.params.broker) is not None
    w.fails("prove-two-prices", "--store", trader_db, code="wrong_stage", account=OUTSIDER)

    trader_before = w.balance(TRADER)
    concluded = w.ok("conclude", "--store", trader_db, account=TRADER)
    assert concluded["slashed"] is True and concluded["how"].startswith("concludeSlashed")
    assert (concluded["to_trader"], concluded["to_broker"]) == (str(TD + BD), "0")
    assert w.balance(TRADER) == trader_before + TD + BD
    assert w.adjudicator.status(c.params.channel_id).stage == Stage.CONCLUDED


def test_a_state_that_leaves_out_a_crossed_order_gives_the_trader_the_channel(w: World) -> None:
    c = Built(w)
    c.buy(1, limit=2_010, first_batch=1)  # crossed by batch 1 at $1,990, but left out
    c.buy(2, limit=2_000, first_batch=1)
    c.trade(c.price(1, 1_990), 2)  # version 4 reflects batch 1 and still holds order 1
    trader_db = c.write("left-out-trader")
    line = w.fails(
        "prove-left-out-order", "--store", trader_db, "--version", "3", "--order-index", "0",
        code="no_proof", account=TRADER,
    )  # fmt: skip
    assert "version 3" in line
    w.fails("prove-left-out-order", "--store", trader_db, "--version", "4", "--order-index", "5", code="no_proof")

    trader_before = w.balance(TRADER)
    proved = w.ok("prove-left-out-order", "--store", trader_db, account=TRADER, process=True)
    assert (proved["version"], proved["order_index"], proved["nonce"]) == ("4", "0", "1")
    assert proved["price"] == {"market": "1", "batch": "1", "price": str(dollars(1_990))}
    assert (proved["to_trader"], proved["to_broker"]) == (str(TD + BD), "0")
    assert [e["event"] for e in proved["events"]] == ["LeftOutOrderProven", "Concluded"]
    assert w.balance(TRADER) == trader_before + TD + BD
    assert w.adjudicator.status(c.params.channel_id).stage == Stage.CONCLUDED


def test_bad_input_is_one_line_and_sends_nothing(w: World) -> None:
    c = Built(w)
    other = Built(w)
    trader_db = c.write("errors-trader", versions=(0, 1))
    line = w.fails("challenge", "--store", str(w.tmp / "missing.db"), code="no_store", account=TRADER)
    assert "missing.db" in line
    assert not (w.tmp / "missing.db").exists()
    line = w.fails("challenge", "--store", trader_db, "--channel", "0x" + "ab" * 32, code="unknown_channel")
    assert c.id in line
    w.fails("challenge", "--store", trader_db, "--channel", "0x12", code="invalid_input", account=TRADER)
    line = w.fails("challenge", "--store", trader_db, "--version", "7", code="unknown_version", account=TRADER)
    assert "newest co-signed version is 1" in line
    w.fails("challenge", "--store", trader_db, code="not_participant", account=OUTSIDER)
    w.fails("conclude", "--store", trader_db, code="wrong_stage", account=TRADER)

    both = other.write("errors-trader")  # the same file: now two channels
    line = w.fails("challenge", "--store", both, code="unknown_channel", account=TRADER)
    assert c.id in line and other.id in line
    listed = w.ok("channel", "list", "--store", both, node=False)
    assert [ch["channel_id"] for ch in listed["channels"]] == [c.id, other.id]

    elsewhere = w.tmp / "elsewhere"
    elsewhere.mkdir()
    deployment = json.loads((w.procs.deployments / "local.json").read_text())
    (elsewhere / "local.json").write_text(json.dumps({**deployment, "chain_id": 1}))
    run = tchan(
        "challenge", "--store", trader_db, "--channel", c.id, "--rpc", w.anvil.url,
        "--deployments", str(elsewhere), "--dev-account", str(TRADER),
    )  # fmt: skip
    assert run.returncode == 1 and run.stderr.startswith("tchan: wrong_chain: "), run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert w.adjudicator.status(c.params.channel_id).stage == Stage.OPEN


def test_revoke_agent_stops_an_agent_challenging_with_what_the_trader_signed(w: World) -> None:
    """The trader revokes what it signed for a watchtower it no longer trusts: the watchtower's
    challenge is refused on-chain; a second revocation, or one by someone else, is refused first."""
    c = Built(w)
    trader_db = c.write("revoke-trader")
    agent = dev_address(CHEATER)
    signed_before = c.trader_key.sign(w.adjudicator.domain, ChallengeAuthorization(c.params.channel_id, agent))
    w.fails("revoke-agent", "--store", trader_db, "--agent", "0x12", code="invalid_input", account=TRADER)
    w.fails("revoke-agent", "--store", trader_db, "--agent", agent, code="not_participant", account=OUTSIDER)

    revoked = w.ok("revoke-agent", "--store", trader_db, "--agent", agent, account=TRADER)
    assert (revoked["command"], revoked["agent"], revoked["participant"]) == ("revoke-agent", agent, c.params.trader)
    assert [e["event"] for e in revoked["events"]] == ["ChallengeAuthorizationRevoked"]
    assert w.adjudicator.authorization_revoked(c.params.channel_id, agent, c.params.trader)
    w.fails("revoke-agent", "--store", trader_db, "--agent", agent, code="already_revoked", account=TRADER)

    with pytest.raises(errors.AuthorizationRevoked):
        w.adjudicator.challenge(w.tx(CHEATER), c.params, c.history[-1], authorization=signed_before)
    assert w.adjudicator.status(c.params.channel_id).stage == Stage.OPEN


def test_every_dispute_command_describes_each_option() -> None:
    """``tchan <command> --help`` explains every option of the dispute commands."""
    import argparse

    from offchain.cli import build_parser

    def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        found: dict[str, argparse.ArgumentParser] = {}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                found.update(action.choices)
        return found

    top = subcommands(build_parser())
    names = [
        "challenge",
        "refute",
        "evidence",
        "conclude",
        "withdraw",
        "prove-two-prices",
        "prove-left-out-order",
        "revoke-agent",
    ]
    parsers = {name: top[name] for name in names}
    parsers.update({f"channel {k}": v for k, v in subcommands(top["channel"]).items()})
    assert set(parsers) >= {"channel show", "channel list"}
    for name, parser in parsers.items():
        assert parser.description, name
        for action in parser._actions:
            assert action.help, f"tchan {name} {action.option_strings} has no help"
