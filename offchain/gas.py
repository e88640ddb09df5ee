"""The gas table: what each adjudicator operation costs, beside Nitro's and Raiden's published
figures (MISSION.md, "Bars").

Measured on the in-process chain (py-evm, Prague rules) with the project's OpenZeppelin test
token, under the conditions of Nitro's own benchmark (gas-benchmarks/benchmark.test.ts):

- the adjudicator already holds tokens for other channels (no refund from emptying its balance);
- both parties already hold some tokens when they are paid (a broker always does; a trader who
  deposited part of its tokens does), so no payout creates a token balance from zero;
- deposits are approved for exactly the amount deposited (the usual approve-then-deposit flow);
  the table also shows the first deposit with an unlimited approval and with an allowance left
  over afterwards (Nitro's setting);
- keys are fixed, so addresses (and the zero bytes in calldata) are the same on every run.

``tchan gas`` writes the table to bench/gas.json; a test recomputes it and fails when any figure
drifts by more than 1%.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from eth_utils.crypto import keccak

from offchain.chain.client import TokenClient
from offchain.chain.connection import in_process_chain
from offchain.chain.deploy import deploy_contract
from offchain.engine.rules import lock_needed
from offchain.model import BatchPrice, ChannelParams, ChannelState, OpenOrder, Order, Outcome
from offchain.sandbox import USD, Party, Sandbox, plain_state, position_state
from offchain.signing import co_sign
from offchain.types import (
    BatchNumber,
    ExpirationHours,
    MarketId,
    Nonce,
    Price,
    Signature,
    SyntheticAmount,
    TokenAmount,
)

GAS_TABLE_PATH = Path("bench") / "gas.json"
DRIFT_TOLERANCE = 0.01

# Published figures the bars compare against (MISSION.md, "Bars").
REFERENCES: dict[str, dict[str, Any]] = {
    "first_deposit": {"bar": 65_000, "nitro": 69_866, "nitro_op": "deposit (ERC-20, first)"},
    "sad_exit_total": {
        "bar": 150_000,
        "nitro": 195_172,
        "nitro_op": "challenge + transferAllAssets",
        "raiden": 317_586,
        "raiden_op": "closeChannel + updateNonClosingBalanceProof + settleChannel",
    },
    "cooperative_close_total": {
        "bar": 80_000,
        "nitro": 112_690,
        "nitro_op": "concludeAndTransferAllAssets (ERC-20)",
        "raiden": 112_270,
        "raiden_op": "cooperativeSettle",
    },
}

TRADER_DEPOSIT = 1_000 * USD
BROKER_DEPOSIT = 5_000 * USD


def _key(label: str) -> bytes:
    return keccak(text=f"trading-channels gas table: {label}")


@dataclass
class GasRun:
    sandbox: Sandbox
    trader: Party
    broker: Party
    figures: dict[str, int]

    def record(self, name: str, receipt: Any) -> int:
        self.figures[name] = int(receipt["gasUsed"])
        return self.figures[name]


def _open_channel(run: GasRun, markets: int = 0, approval: str = "exact") -> ChannelParams:
    """A funded channel (trader then broker deposit) with ``markets`` markets over the sandbox's feeds."""
    sb = run.sandbox
    descriptions = list(sb.feeds)
    market_list = tuple(sb.market(descriptions[i % len(descriptions)], i + 1) for i in range(markets))
    params = sb.channel_params(run.trader, run.broker, market_list)
    _deposit(run, params, run.trader, TRADER_DEPOSIT, approval)
    _deposit(run, params, run.broker, BROKER_DEPOSIT, approval)
    return params


def _approve(run: GasRun, party: Party, amount: int, approval: str) -> None:
    sb = run.sandbox
    allowance = {"exact": amount, "unlimited": 2**256 - 1, "leftover": 2 * amount}[approval]
    sb.token.approve(party.transactor, sb.adjudicator.address, allowance)


def _deposit(run: GasRun, params: ChannelParams, party: Party, amount: int, approval: str = "exact") -> Any:
    _approve(run, party, amount, approval)
    return run.sandbox.adjudicator.deposit(party.transactor, params, party.address, amount)


def _signed(run: GasRun, state: ChannelState) -> Any:
    return co_sign(state, (run.trader.state_signer, run.broker.state_signer))


def _with_positions(params: ChannelParams, version: int) -> ChannelState:
    """A state with a position in every market (the trader long)."""
    count = len(params.markets)
    return position_state(
        params, version, TRADER_DEPOSIT, BROKER_DEPOSIT, (50_000,) * count, cost=100 * USD * count, fees=10 * USD
    )


def _plain(params: ChannelParams, version: int, trader_available: int, final: bool = False) -> ChannelState:
    return plain_state(params, version, TRADER_DEPOSIT, BROKER_DEPOSIT, trader_available, final)


def measure() -> dict[str, int]:
    """Run every scenario on a fresh in-process chain and return gas used per operation."""
    chain = in_process_chain()
    deployer_key = chain.dev_private_keys()[0]
    sb = Sandbox.create(chain, deployer_key=deployer_key)
    figures: dict[str, int] = {}
    # Deploy the adjudicator once more on its own so its deployment gas is measured alone.
    figures["deploy_adjudicator"] = _deploy_gas(sb)

    trader = sb.party("trader", tokens=1_000_000 * USD, key=_key("trader"))
    broker = sb.party("broker", tokens=1_000_000 * USD, key=_key("broker"))
    run = GasRun(sb, trader, broker, figures)
    _open_channel(run)  # the adjudicator holds tokens for another channel from here on

    def deposits() -> None:
        for approval in ("exact", "unlimited", "leftover"):
            params = sb.channel_params(trader, broker)
            first = _deposit(run, params, trader, TRADER_DEPOSIT, approval)
            suffix = "" if approval == "exact" else f"_{approval}_approval"
            run.record(f"first_deposit{suffix}", first)
            if approval == "exact":
                run.record("second_deposit", _deposit(run, params, broker, BROKER_DEPOSIT, approval))

    def cooperative_close() -> None:
        params = _open_channel(run)
        final = _plain(params, 7, TRADER_DEPOSIT + 25 * USD, final=True)
        run.record("cooperative_close", sb.adjudicator.close(broker.transactor, params, _signed(run, final)))

    def sad_exit() -> None:
        params = _open_channel(run)
        old = _plain(params, 3, TRADER_DEPOSIT - 40 * USD)
        new = _plain(params, 4, TRADER_DEPOSIT + 25 * USD)
        run.record("challenge", sb.adjudicator.challenge(broker.transactor, params, _signed(run, old)))
        run.record("refute", sb.adjudicator.refute(trader.transactor, params, _signed(run, new)))
        chain.increase_time(params.challenge_duration + 1)
        run.record("conclude", sb.adjudicator.conclude(trader.transactor, params))
        # The bar's sad exit: challenge with the latest state, nobody answers, conclude.
        params = _open_channel(run)
        latest = _plain(params, 4, TRADER_DEPOSIT + 25 * USD)
        challenge = sb.adjudicator.challenge(trader.transactor, params, _signed(run, latest))
        chain.increase_time(params.challenge_duration + 1)
        conclude = sb.adjudicator.conclude(trader.transactor, params)
        figures["sad_exit_total"] = int(challenge["gasUsed"]) + int(conclude["gasUsed"])

    def positions() -> None:
        params = _open_channel(run, markets=3)
        state = _with_positions(params, 5)
        run.record("challenge_3_positions", sb.adjudicator.challenge(trader.transactor, params, _signed(run, state)))
        chain.increase_time(params.challenge_duration + 1)
        for description in sb.feeds:
            sb.push_price(description, 2_000 * 10**8)
        run.record("conclude_3_positions", sb.adjudicator.conclude(trader.transactor, params, state))

    deposits()
    cooperative_close()
    sad_exit()
    positions()
    _binding_prices_scenario(run)
    _withdraw_scenario(run)
    _slashing_scenario(run)
    figures["cooperative_close_total"] = figures["cooperative_close"]
    return dict(sorted(figures.items()))


ORDER_EXPIRATION = ExpirationHours(1_000_000)  # hours since the epoch (year 2084): fixed calldata


def _with_open_buy(run: GasRun, params: ChannelParams, version: int, last_batch: int = 0) -> ChannelState:
    """A state with one open buy order of 0.1 gold at $2,000 (max fee $1), eligible from batch 1,
    reflecting batch ``last_batch`` of the market."""
    order = Order(
        channel_id=params.channel_id,
        trader=run.trader.address,
        collateral=params.token,
        market=params.markets[0].id,
        is_buy=True,
        amount_synthetic=SyntheticAmount(100_000),
        amount_collateral=TokenAmount(200 * USD),
        max_fee=TokenAmount(1 * USD),
        nonce=Nonce(1),
        expiration=ORDER_EXPIRATION,
    )
    signature = run.trader.signer.sign(run.sandbox.domain, order)
    base = _plain(params, version, TRADER_DEPOSIT - lock_needed(order, 0))
    return replace(
        base,
        balances=replace(base.balances, trader_locked=lock_needed(order, 0)),
        open_orders=(OpenOrder(order, signature, SyntheticAmount(0), BatchNumber(1)),),
        outcomes=(Outcome(SyntheticAmount(0), TokenAmount(0), BatchNumber(last_batch)),),
    )


def _signed_price(party: Party, sb: Sandbox, market: int, batch: int, price: int) -> tuple[BatchPrice, Signature]:
    batch_price = BatchPrice(MarketId(market), BatchNumber(batch), Price(price))
    return batch_price, party.signer.sign(sb.domain, batch_price)


def _binding_prices_scenario(run: GasRun) -> None:
    """Evidence in a dispute (one open order crossed by one signed price, then filled at
    conclusion), and a left-out order proven with a co-signed state."""
    sb, trader, broker = run.sandbox, run.trader, run.broker
    params = _open_channel(run, markets=1)
    state = _with_open_buy(run, params, 3)
    run.record("challenge_1_open_order", sb.adjudicator.challenge(broker.transactor, params, _signed(run, state)))
    evidence = _signed_price(broker, sb, params.markets[0].id, 1, 1_990 * USD)
    run.record("submit_evidence", sb.adjudicator.submit_evidence(trader.transactor, params, state, [evidence]))
    sb.chain.increase_time(params.challenge_duration + 1)
    for description in sb.feeds:
        sb.push_price(description, 2_000 * 10**8)
    run.record("conclude_with_evidence", sb.adjudicator.conclude(trader.transactor, params, state))

    params = _open_channel(run, markets=1)
    proof = _signed(run, _with_open_buy(run, params, 4, last_batch=2))
    price = _signed_price(broker, sb, params.markets[0].id, 1, 1_990 * USD)
    run.record("prove_left_out_order", sb.adjudicator.prove_left_out_order(trader.transactor, params, proof, 0, price))


def _slashing_scenario(run: GasRun) -> None:
    """A broker signs two prices for one batch: the proof, then a funded open channel of that
    broker concluded at once (the trader takes everything). Its own broker, since slashing is for
    good."""
    sb = run.sandbox
    cheat = sb.party("slashed broker", tokens=1_000_000 * USD, key=_key("slashed broker"))
    slashed = GasRun(sb, run.trader, cheat, run.figures)
    params = _open_channel(slashed)
    first = _signed_price(cheat, sb, 1, 7, 2_000 * USD)
    second = _signed_price(cheat, sb, 1, 7, 2_001 * USD)
    run.record("prove_two_prices", sb.adjudicator.prove_two_prices(run.trader.transactor, cheat.address, first, second))
    run.record("conclude_slashed", sb.adjudicator.conclude_slashed(run.trader.transactor, params))


def _deploy_gas(sb: Sandbox) -> int:
    deployed = deploy_contract(sb.deployer.transactor, "TradingChannelAdjudicator")
    receipt = sb.chain.w3.eth.get_transaction_receipt(deployed.tx_hash)  # type: ignore[arg-type]
    return int(receipt["gasUsed"])


def _withdraw_scenario(run: GasRun) -> None:
    """A payout the token refuses (blacklisted trader) is credited, then withdrawn."""
    sb = run.sandbox
    blacklist = deploy_contract(sb.deployer.transactor, "BlacklistToken")
    token = TokenClient(sb.chain, blacklist.address, artifact="BlacklistToken")
    for party, amount in ((run.trader, TRADER_DEPOSIT), (run.broker, BROKER_DEPOSIT)):
        token.mint(sb.deployer.transactor, party.address, 10 * amount)
        token.approve(party.transactor, sb.adjudicator.address, 2**256 - 1)
    params = replace(sb.channel_params(run.trader, run.broker), token=blacklist.address)
    sb.adjudicator.deposit(run.trader.transactor, params, run.trader.address, TRADER_DEPOSIT)
    sb.adjudicator.deposit(run.broker.transactor, params, run.broker.address, BROKER_DEPOSIT)
    final = _plain(params, 2, TRADER_DEPOSIT, final=True)
    sb.deployer.transactor.transact(token.contract.functions.setBlacklisted(run.trader.address, True))
    sb.adjudicator.close(run.broker.transactor, params, _signed(run, final))
    sb.deployer.transactor.transact(token.contract.functions.setBlacklisted(run.trader.address, False))
    receipt = sb.adjudicator.withdraw(run.trader.transactor, blacklist.address, run.trader.address)
    run.record("withdraw_deferred_payout", receipt)


def table(figures: dict[str, int]) -> dict[str, Any]:
    """The JSON written to bench/gas.json: figures plus the bars and references."""
    bars = {}
    for name, ref in REFERENCES.items():
        ours = figures[name]
        entry: dict[str, Any] = {"ours": ours, "bar": ref["bar"], "met": ours < ref["bar"]}
        for other in ("nitro", "raiden"):
            if other in ref:
                entry[other] = ref[other]
                entry[f"{other}_operation"] = ref[f"{other}_op"]
                entry[f"ratio_to_{other}"] = round(ours / ref[other], 3)
        bars[name] = entry
    return {
        "conditions": (
            "in-process py-evm (Prague), OpenZeppelin TestToken; adjudicator already holds tokens; "
            "recipients already hold tokens; deposits approved for exactly the amount"
        ),
        "operations": figures,
        "bars": bars,
    }


def write_table(path: Path, figures: dict[str, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table(figures), indent=2, sort_keys=True) + "\n")


def drift(committed: dict[str, int], measured: dict[str, int]) -> list[str]:
    """Operations whose gas moved by more than DRIFT_TOLERANCE (or appeared/disappeared)."""
    problems = []
    for name in sorted(set(committed) | set(measured)):
        if name not in committed or name not in measured:
            problems.append(f"{name}: only in {'measured' if name in measured else 'committed'} table")
            continue
        old, new = committed[name], measured[name]
        if abs(new - old) > DRIFT_TOLERANCE * old:
            problems.append(f"{name}: committed {old}, measured {new} ({(new - old) / old:+.1%})")
    return problems


OPERATION_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("deploy adjudicator", ("deploy_adjudicator",)),
    (
        "first deposit (exact approval / unlimited / allowance left over)",
        ("first_deposit", "first_deposit_unlimited_approval", "first_deposit_leftover_approval"),
    ),
    ("second deposit", ("second_deposit",)),
    ("cooperative close (both parties paid)", ("cooperative_close",)),
    ("challenge", ("challenge",)),
    ("refute", ("refute",)),
    ("conclude, no positions", ("conclude",)),
    ("challenge, 3 positions", ("challenge_3_positions",)),
    ("conclude at the oracle price, 3 positions", ("conclude_3_positions",)),
    ("challenge, 1 open order", ("challenge_1_open_order",)),
    ("submit evidence: 1 signed price crossing 1 open order", ("submit_evidence",)),
    ("conclude with the order filled from evidence", ("conclude_with_evidence",)),
    ("prove two prices (slashes the broker)", ("prove_two_prices",)),
    ("conclude a slashed broker's channel (trader takes all)", ("conclude_slashed",)),
    ("prove a left-out order (trader takes the channel)", ("prove_left_out_order",)),
    ("withdraw a deferred payout", ("withdraw_deferred_payout",)),
)

BAR_ROWS: tuple[tuple[str, str], ...] = (
    ("sad exit: challenge until both hold their tokens", "sad_exit_total"),
    ("cooperative close until both hold their tokens", "cooperative_close_total"),
    ("first ERC-20 deposit", "first_deposit"),
)


def markdown_tables(figures: dict[str, int]) -> str:
    """The README's two gas tables (operations, then the bars beside Nitro and Raiden)."""
    lines = ["| operation | gas |", "| --- | ---: |"]
    for label, names in OPERATION_ROWS:
        lines.append(f"| {label} | {' / '.join(f'{figures[n]:,}' for n in names)} |")
    lines += [
        "",
        "| bar (MISSION.md) | ours | bar | Nitro | Raiden | met |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for label, name in BAR_ROWS:
        ref, ours = REFERENCES[name], figures[name]
        raiden = f"{ref['raiden']:,}" if "raiden" in ref else "-"
        met = "yes" if ours < ref["bar"] else "**no**"
        lines.append(f"| {label} | {ours:,} | < {ref['bar']:,} | {ref['nitro']:,} | {raiden} | {met} |")
    return "\n".join(lines)


README_BEGIN = "<!-- gas tables: written by `tchan gas` from bench/gas.json -->"
README_END = "<!-- end of gas tables -->"


def write_readme_tables(readme: Path, figures: dict[str, int]) -> None:
    """Replace the README's gas tables (between the two markers) with :func:`markdown_tables`."""
    text = readme.read_text()
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme} has no gas-table markers")
    readme.write_text(text[: start + len(README_BEGIN)] + "\n" + markdown_tables(figures) + "\n" + text[end:])


def format_table(figures: dict[str, int]) -> str:
    lines = [f"{'operation':<40}{'gas':>10}"]
    lines += [f"{name:<40}{gas:>10,}" for name, gas in figures.items()]
    lines.append("")
    lines.append(f"{'bar':<26}{'ours':>9}{'bar':>9}{'Nitro':>9}{'Raiden':>9}  met")
    for name, ref in REFERENCES.items():
        ours = figures[name]
        raiden = f"{ref['raiden']:>9,}" if "raiden" in ref else f"{'-':>9}"
        lines.append(
            f"{name:<26}{ours:>9,}{ref['bar']:>9,}{ref['nitro']:>9,}{raiden}  {'yes' if ours < ref['bar'] else 'NO'}"
        )
    return "\n".join(lines)
