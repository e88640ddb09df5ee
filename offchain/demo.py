"""``tchan demo``: a dispute end to end on a real EVM.

The story: deploy the adjudicator, a 6-decimal test token and a gold price feed; a trader and a
broker open a channel and fund it; they co-sign a few states (an order locks collateral, a batch
fills it with a fee and opens a gold position, a second order rests); gold rises, so the broker
challenges with an old state that has no position; the trader refutes with the newest state; after
the deadline the channel concludes at the oracle's price and both parties are paid.

The states here are built with the Python API a script would use. Every figure printed is read
from the chain and checked against the pure payout rule in :mod:`offchain.settlement`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TextIO

from offchain.chain.client import RegistrationKind, Stage
from offchain.chain.connection import Chain, in_process_chain, rpc_chain
from offchain.model import (
    ChannelParams,
    ChannelState,
    OpenOrder,
    Order,
    Outcome,
    initial_state,
)
from offchain.sandbox import USD, Party, Sandbox
from offchain.settlement import OraclePrice, payouts
from offchain.signing import CoSignedState, co_sign
from offchain.types import (
    BatchNumber,
    ExpirationHours,
    MarketId,
    Nonce,
    Signature,
    SyntheticAmount,
    TokenAmount,
    Version,
)

GOLD = "XAU / USD"
GOLD_MARKET = MarketId(1)
RESOLUTION = 1_000  # synthetic base units per ounce
FEED_DECIMALS = 8
TRADER_DEPOSIT = 10_000 * USD
BROKER_DEPOSIT = 50_000 * USD


def usd(amount: int) -> str:
    """Token base units (6 decimals) as dollars, exactly."""
    sign = "-" if amount < 0 else ""
    whole, cents = divmod(abs(amount), USD)
    return f"{sign}${whole:,}.{cents:06d}".rstrip("0").rstrip(".")


def feed_price(dollars_per_ounce: int) -> int:
    scale: int = 10**FEED_DECIMALS
    return dollars_per_ounce * scale


@dataclass
class DemoResult:
    trader_payout: int
    broker_payout: int
    expected_trader: int
    expected_broker: int
    registered_version: int

    @property
    def ok(self) -> bool:
        return (self.trader_payout, self.broker_payout) == (self.expected_trader, self.expected_broker)


def _order(params: ChannelParams, trader: Party, is_buy: bool, ounces: int, limit: int, nonce: int) -> Order:
    return Order(
        channel_id=params.channel_id,
        trader=trader.address,
        collateral=params.token,
        market=GOLD_MARKET,
        is_buy=is_buy,
        amount_synthetic=SyntheticAmount(ounces * RESOLUTION),
        amount_collateral=TokenAmount(ounces * limit * USD),
        max_fee=TokenAmount(2 * USD),
        nonce=Nonce(nonce),
        expiration=ExpirationHours(int(time.time()) // 3600 + 24),
    )


def _lock(state: ChannelState, order: Order, signature: Signature, batch: int) -> ChannelState:
    """The trader locks the collateral (and maximum fee) a buy order may spend."""
    lock = order.amount_collateral + order.max_fee
    b = state.balances
    return replace(
        state,
        version=Version(state.version + 1),
        balances=replace(
            b,
            trader_available=TokenAmount(b.trader_available - lock),
            trader_locked=TokenAmount(b.trader_locked + lock),
        ),
        open_orders=(*state.open_orders, OpenOrder(order, signature, SyntheticAmount(0), BatchNumber(batch))),
    )


def _fill_completely(state: ChannelState, index: int, price: int, fee: int, batch: int) -> ChannelState:
    """Batch ``batch`` fills open order ``index`` completely at ``price`` (dollars per ounce)."""
    open_order = state.open_orders[index]
    order = open_order.order
    cost = order.amount_synthetic * price * USD // RESOLUTION
    released = order.amount_collateral + order.max_fee
    b = state.balances
    outcome = state.outcomes[0]
    return replace(
        state,
        version=Version(state.version + 1),
        balances=replace(
            b,
            trader_available=TokenAmount(b.trader_available + released - cost - fee),
            trader_locked=TokenAmount(b.trader_locked - released),
            broker_available=TokenAmount(b.broker_available + cost + fee),
        ),
        open_orders=state.open_orders[:index] + state.open_orders[index + 1 :],
        outcomes=(
            Outcome(
                SyntheticAmount(outcome.position + order.amount_synthetic),
                TokenAmount(outcome.fees + fee),
                BatchNumber(batch),
            ),
        ),
    )


def run(chain: Chain, out: TextIO, step: Callable[[str], None] | None = None) -> DemoResult:
    say = step or (lambda line: print(line, file=out))
    t0 = time.monotonic()
    deployer_key = chain.dev_private_keys()[0] if chain.in_process else None
    sb = Sandbox.create(chain, deployer_key=deployer_key, network="demo")
    say(f"deployed adjudicator {sb.adjudicator.address} on chain {chain.chain_id} ({chain.url})")
    sb.push_price(GOLD, feed_price(1_950))

    trader = sb.party("trader", tokens=20_000 * USD)
    broker = sb.party("broker", tokens=100_000 * USD)
    params = sb.channel_params(trader, broker, (sb.market(GOLD, GOLD_MARKET, resolution=RESOLUTION),))
    signers = (trader.state_signer, broker.state_signer)
    say(f"channel 0x{params.channel_id.hex()[:16]}...  trader {trader.address}  broker {broker.address}")

    history: list[CoSignedState] = []

    def agree(state: ChannelState, what: str) -> ChannelState:
        signed = co_sign(state, signers)
        signed.verify(sb.domain, trader.address, broker.address)
        history.append(signed)
        say(f"  v{state.version}: {what}")
        return state

    state = agree(initial_state(params, TRADER_DEPOSIT, BROKER_DEPOSIT), "setup co-signed before any deposit")
    sb.adjudicator.deposit(trader.transactor, params, trader.address, TRADER_DEPOSIT)
    sb.adjudicator.deposit(broker.transactor, params, broker.address, BROKER_DEPOSIT)
    say(f"funded: trader {usd(TRADER_DEPOSIT)}, broker {usd(BROKER_DEPOSIT)}")

    buy = _order(params, trader, is_buy=True, ounces=2, limit=1_960, nonce=1)
    locked = _lock(state, buy, trader.signer.sign(sb.domain, buy), batch=1)
    state = agree(locked, "buy 2 oz gold, limit $1,960: collateral locked")
    state = agree(
        _fill_completely(state, 0, price=1_950, fee=1 * USD, batch=1),
        "batch 1 clears at $1,950: filled, fee $1, long 2 oz",
    )
    rest = _order(params, trader, is_buy=True, ounces=1, limit=1_900, nonce=2)
    state = agree(
        _lock(state, rest, trader.signer.sign(sb.domain, rest), batch=2), "buy 1 oz gold, limit $1,900: resting"
    )

    sb.push_price(GOLD, feed_price(2_010))
    stale = history[1]
    say(f"gold rises to $2,010; the broker challenges with stale v{stale.state.version} (no position)")
    sb.adjudicator.challenge(broker.transactor, params, stale)
    status = sb.adjudicator.status(params.channel_id)
    remaining = status.deadline - chain.now()
    say(f"  dispute open: deadline in {remaining} s; refutations accepted for {params.challenge_duration} s")

    newest = history[-1]
    sb.adjudicator.refute(trader.transactor, params, newest)
    status = sb.adjudicator.status(params.channel_id)
    say(f"the trader refutes with v{newest.state.version}; registered version is now {status.registered_version}")

    chain.increase_time(params.challenge_duration + 1)
    sb.push_price(GOLD, feed_price(2_010))  # a fresh answer for settlement
    say("challenge period over; the oracle answer is fresh; anyone may conclude")
    trader_before = sb.token.balance_of(trader.address)
    broker_before = sb.token.balance_of(broker.address)
    assert status.kind == RegistrationKind.FINGERPRINT
    receipt = sb.adjudicator.conclude(broker.transactor, params, newest.state)
    (event,) = sb.adjudicator.events(receipt, "Concluded")
    trader_paid = sb.token.balance_of(trader.address) - trader_before
    broker_paid = sb.token.balance_of(broker.address) - broker_before
    assert sb.adjudicator.status(params.channel_id).stage == Stage.CONCLUDED

    expected = payouts(
        params,
        newest.state,
        TRADER_DEPOSIT,
        BROKER_DEPOSIT,
        {GOLD_MARKET: OraclePrice(feed_price(2_010), FEED_DECIMALS)},
        token_decimals=6,
    )
    say("")
    say("settled at the oracle price of $2,010/oz:")
    collateral = state.balances.trader_available + state.balances.trader_locked
    trader_pnl, broker_pnl = trader_paid - TRADER_DEPOSIT, broker_paid - BROKER_DEPOSIT
    say(f"  trader: collateral {usd(collateral)} + 2 oz x $2,010 = {usd(trader_paid)}")
    say(f"          deposited {usd(TRADER_DEPOSIT)}, PnL {usd(trader_pnl)}")
    say(f"  broker: {usd(broker_paid)}")
    say(f"          deposited {usd(BROKER_DEPOSIT)}, PnL {usd(broker_pnl)} (including the $1 fee it earned)")
    say(f"  payouts sum to the holdings: {usd(trader_paid + broker_paid)} = {usd(TRADER_DEPOSIT + BROKER_DEPOSIT)}")
    if (int(event["toTrader"]), int(event["toBroker"])) != (trader_paid, broker_paid):
        raise AssertionError("the Concluded event disagrees with the token transfers")
    result = DemoResult(trader_paid, broker_paid, expected.to_trader, expected.to_broker, newest.state.version)
    say(f"matches the off-chain payout rule: {'yes' if result.ok else 'NO'}   ({time.monotonic() - t0:.1f} s)")
    return result


def main(rpc: str | None, out: TextIO) -> DemoResult:
    chain = rpc_chain(rpc) if rpc else in_process_chain()
    return run(chain, out)
