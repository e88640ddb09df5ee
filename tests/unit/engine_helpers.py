"""Shared builders for the engine tests (test_engine_rules, test_engine_channel,
test_engine_properties): channel parameters with two markets, a funded channel, signed orders,
and the invariants every state must satisfy, computed independently of offchain.engine."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import pytest
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from offchain.eip712 import Domain
from offchain.engine.channel import (
    AccountDeposits,
    Channel,
    CreateOrder,
    Fill,
    Trade,
    Transition,
    Transitioned,
    apply,
    setup,
)
from offchain.engine.rules import Rule, RuleViolation
from offchain.model import BatchPrice, ChannelParams, Market, Order, check_state
from offchain.signing import LocalSigner
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
    Version,
)

USD = 10**6
"""Collateral base units per dollar (a 6-decimal token)."""

NOW = Timestamp(1_700_000_000)
"""Seconds since the epoch used as ``now`` everywhere."""
HOUR = 3600
EXPIRATION = ExpirationHours(NOW // HOUR + 24)
"""A day from NOW, in hours since the epoch."""

TRADER = LocalSigner(keccak(text="engine tests: trader"))
BROKER = LocalSigner(keccak(text="engine tests: broker"))
OUTSIDER = LocalSigner(keccak(text="engine tests: outsider"))

TRADER_DEPOSIT = 1_000 * USD
BROKER_DEPOSIT = 5_000 * USD


def addr(n: int) -> Address:
    return Address(to_checksum_address(n.to_bytes(20, "big")))


TOKEN = addr(0x33)
ADJUDICATOR = addr(0x22)

GOLD = Market(id=MarketId(1), feed=addr(0x11), resolution=10**6, risk_factor=2**32 // 10, max_price_age=3600)
"""Market 1: 10^6 base units per ounce, 10% risk factor."""
BTC = Market(id=MarketId(2), feed=addr(0x12), resolution=10**8, risk_factor=2**32 // 5, max_price_age=3600)
"""Market 2: 10^8 base units per coin, 20% risk factor."""


def make_params(
    *,
    trader: LocalSigner = TRADER,
    markets: tuple[Market, ...] = (GOLD, BTC),
    chain_id: int = 1,
    adjudicator: Address = ADJUDICATOR,
    nonce: int = 1,
) -> ChannelParams:
    return ChannelParams(
        chain_id=chain_id,
        adjudicator=adjudicator,
        trader=trader.address,
        broker=BROKER.address,
        token=TOKEN,
        challenge_duration=3600,
        nonce=nonce,
        markets=markets,
    )


PARAMS = make_params()


def funded(
    trader_deposit: int = TRADER_DEPOSIT,
    broker_deposit: int = BROKER_DEPOSIT,
    params: ChannelParams = PARAMS,
) -> Channel:
    """A version-1 channel whose deposits are accounted."""
    return apply(setup(params), AccountDeposits(TokenAmount(trader_deposit), TokenAmount(broker_deposit))).channel


def make_order(channel: Channel, **overrides: Any) -> Order:
    """A buy of 0.4 ounce for at most $800 (limit $2000/oz), max fee $2, nonce 1, one day."""
    fields: dict[str, Any] = {
        "channel_id": channel.params.channel_id,
        "trader": channel.params.trader,
        "collateral": channel.params.token,
        "market": MarketId(1),
        "is_buy": True,
        "amount_synthetic": SyntheticAmount(4 * 10**5),
        "amount_collateral": TokenAmount(800 * USD),
        "max_fee": TokenAmount(2 * USD),
        "nonce": Nonce(1),
        "expiration": EXPIRATION,
    }
    fields.update(overrides)
    return Order(**fields)


def sign(channel: Channel, order: Order, signer: LocalSigner = TRADER, domain: Domain | None = None) -> Signature:
    """The trader's EIP-712 signature of ``order`` (no bound checks, so out-of-range orders can be
    signed for the tests that break the bounds)."""
    return signer.sign_digest((domain or channel.domain).order_digest(order))


def create(
    channel: Channel,
    order: Order,
    *,
    first_batch: int = 1,
    now: int = NOW,
    marks: Mapping[int, int] | None = None,
    signature: Signature | None = None,
) -> CreateOrder:
    return CreateOrder(
        order=order,
        signature=signature if signature is not None else sign(channel, order),
        first_batch=BatchNumber(first_batch),
        now=Timestamp(now),
        marks={k: Price(v) for k, v in (marks or {}).items()},
    )


def place(channel: Channel, order: Order, **kwargs: Any) -> Channel:
    """``channel`` after creating ``order`` (must be accepted)."""
    return apply(channel, create(channel, order, **kwargs)).channel


def trade(
    market: int,
    batch: int,
    price: int,
    fills: Iterable[tuple[int, int, int]],
    *,
    now: int = NOW,
    marks: Mapping[int, int] | None = None,
) -> Trade:
    """A Trade of ``fills`` = (nonce, amount_synthetic, fee) at ``price`` in ``batch``."""
    return Trade(
        batch_price=BatchPrice(MarketId(market), BatchNumber(batch), Price(price)),
        fills=tuple(Fill(Nonce(n), SyntheticAmount(a), TokenAmount(f)) for n, a, f in fills),
        now=Timestamp(now),
        marks={k: Price(v) for k, v in (marks or {}).items()},
    )


# --------------------------------------------------------------------------- independent arithmetic


def cdiv(a: int, b: int) -> int:
    """Ceiling division, written independently of the engine's."""
    q, r = divmod(a, b)
    return q + (1 if r else 0)


def expected_lock(order: Order, filled: int) -> int:
    """Buy: ceil(C*r/S) + ceil(F*r/S); sell: ceil(F*r/S), with r the remaining synthetic."""
    r = order.amount_synthetic - filled
    fee = cdiv(order.max_fee * r, order.amount_synthetic)
    return fee + (cdiv(order.amount_collateral * r, order.amount_synthetic) if order.is_buy else 0)


def buyer_pays(amount: int, price: int, resolution: int) -> int:
    """The exact value of a buy, rounded up (before the cap of :func:`fill_payment`)."""
    return cdiv(amount * price, resolution)


def seller_gets(amount: int, price: int, resolution: int) -> int:
    return (amount * price) // resolution


def fill_payment(order: Order, filled: int, amount: int, price: int, resolution: int) -> int:
    """Collateral a fill moves (docs/engine.md): a seller gets the value rounded down; a buyer
    pays it rounded up, but at most what the fill releases of the order's collateral lock,
    ceil(C*r/S) - ceil(C*(r-s)/S)."""
    if not order.is_buy:
        return seller_gets(amount, price, resolution)
    r, S, C = order.amount_synthetic - filled, order.amount_synthetic, order.amount_collateral
    return min(buyer_pays(amount, price, resolution), cdiv(C * r, S) - cdiv(C * (r - amount), S))


# --------------------------------------------------------------------------- assertions


def trader_collateral(channel: Channel) -> int:
    b = channel.state.balances
    return b.trader_available + b.trader_locked


def assert_invariants(channel: Channel) -> None:
    """What holds in every state the engine produces."""
    state = channel.state
    b = state.balances
    check_state(state, channel.params)
    assert b.trader_available + b.trader_locked + b.broker_available + b.broker_locked == (
        b.trader_deposit + b.broker_deposit
    )
    assert b.trader_locked >= 0
    assert b.broker_locked == 0
    if not state.is_final:
        assert b.trader_available >= 0
        assert b.broker_available >= 0
    assert b.trader_locked == sum(expected_lock(o.order, o.filled) for o in state.open_orders)
    nonces = [o.order.nonce for o in state.open_orders]
    assert len(nonces) == len(set(nonces))
    assert set(nonces) <= channel.used_nonces
    for o in state.open_orders:
        assert 0 <= o.filled < o.order.amount_synthetic
    assert len(state.outcomes) == len(channel.params.markets)
    if state.is_final:
        assert state.open_orders == ()
        assert all(o.position == 0 for o in state.outcomes)


def rejected(channel: Channel, transition: Transition, rule: Rule) -> RuleViolation:
    """Apply ``transition``, expect a RuleViolation naming ``rule``, and check ``channel`` is
    unchanged."""
    before = copy.deepcopy(channel)
    with pytest.raises(RuleViolation) as exc:
        apply(channel, transition)
    assert exc.value.rule is rule, f"expected {rule}, got {exc.value.rule}: {exc.value}"
    assert exc.value.code == "rule_violation"
    assert channel == before
    return exc.value


def accepted(channel: Channel, transition: Transition) -> Transitioned:
    """Apply ``transition`` (must be accepted), check the version step and the invariants."""
    result = apply(channel, transition)
    assert result.state.version == channel.state.version + 1
    assert_invariants(result.channel)
    return result


def with_version(channel: Channel, version: int) -> Channel:
    """``channel`` with its state's version replaced (to reach the version bound quickly)."""
    return replace(channel, state=replace(channel.state, version=Version(version)))
