"""The fast EIP-712 path equals eth_account's reference byte for byte (MISSION.md, "Signatures")."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from eth_account import Account
from eth_account._utils.encode_typed_data.encoding_and_hashing import encode_type as reference_encode_type
from eth_account._utils.encode_typed_data.encoding_and_hashing import hash_domain
from eth_account.messages import encode_typed_data
from eth_utils.crypto import keccak
from hypothesis import given
from hypothesis import strategies as st

from offchain.eip712 import (
    BALANCES_TYPEHASH,
    BATCH_PRICE_TYPEHASH,
    CHALLENGE_AUTHORIZATION_TYPEHASH,
    OPEN_ORDER_TYPEHASH,
    ORDER_TYPEHASH,
    OUTCOME_TYPEHASH,
    STATE_TYPEHASH,
    Domain,
    Signable,
    encode_type,
    struct_digest,
    typed_data,
)
from offchain.model import BatchPrice, ChallengeAuthorization, ChannelState, Order, Outcome
from offchain.signing import SECP256K1_N, LocalSigner
from offchain.types import BatchNumber, ChannelId, MarketId, Price, SyntheticAmount, TokenAmount, Version
from tests.unit.test_model import (
    CHANNEL,
    I63,
    SETTINGS,
    U32,
    U48,
    U64,
    addr,
    addresses,
    bytes32s,
    channel_states,
    make_balances,
    make_open_order,
    make_order,
    make_outcome,
    make_state,
    orders,
    uint32s,
    uint64s,
)

DOMAIN = Domain(chain_id=1337, verifying_contract=addr(0xAD))

ORDER_TYPE = (
    "Order(bytes32 channelId,address trader,address collateral,uint32 market,bool isBuy,uint64 amountSynthetic,"
    "uint64 amountCollateral,uint64 maxFee,uint64 nonce,uint32 expiration)"
)
OPEN_ORDER_TYPE = "OpenOrder(Order order,bytes signature,uint64 filled,uint64 firstBatch)"
OUTCOME_TYPE = "Outcome(int64 position,uint64 fees,uint64 lastBatch)"
BALANCES_TYPE = (
    "Balances(int64 traderAvailable,uint64 traderLocked,int64 brokerAvailable,uint64 brokerLocked,"
    "uint64 traderDeposit,uint64 brokerDeposit)"
)
STATE_TYPE = (
    "State(bytes32 channelId,uint64 version,Balances balances,OpenOrder[] openOrders,Outcome[] outcomes,bool isFinal)"
)


def reference_digest(domain: Domain, obj: Signable) -> bytes:
    """What a wallet signs: eth_account's EIP-712 encoding, hashed as EIP-191 version 0x01."""
    message = encode_typed_data(full_message=typed_data(domain, obj))
    assert message.version == b"\x01"
    return bytes(keccak(b"\x19" + message.version + message.header + message.body))


domains = st.builds(Domain, chain_id=st.integers(1, 2**256 - 1), verifying_contract=addresses)
batch_prices = st.builds(
    BatchPrice, market=uint32s.map(MarketId), batch=uint64s.map(BatchNumber), price=uint64s.map(Price)
)
authorizations = st.builds(ChallengeAuthorization, channel_id=bytes32s, agent=addresses)


# --------------------------------------------------------------------------- type strings


def test_encode_type_state() -> None:
    assert encode_type("State") == STATE_TYPE + BALANCES_TYPE + OPEN_ORDER_TYPE + ORDER_TYPE + OUTCOME_TYPE


def test_encode_type_others() -> None:
    assert encode_type("Order") == ORDER_TYPE
    assert encode_type("OpenOrder") == OPEN_ORDER_TYPE + ORDER_TYPE
    assert encode_type("Outcome") == OUTCOME_TYPE
    assert encode_type("Balances") == BALANCES_TYPE
    assert encode_type("BatchPrice") == "BatchPrice(uint32 market,uint64 batch,uint64 price)"
    assert encode_type("ChallengeAuthorization") == "ChallengeAuthorization(bytes32 channelId,address agent)"
    assert encode_type("EIP712Domain") == (
        "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
    )


def test_type_hashes() -> None:
    assert STATE_TYPEHASH == keccak(text=STATE_TYPE + BALANCES_TYPE + OPEN_ORDER_TYPE + ORDER_TYPE + OUTCOME_TYPE)
    assert ORDER_TYPEHASH == keccak(text=ORDER_TYPE)
    assert OPEN_ORDER_TYPEHASH == keccak(text=OPEN_ORDER_TYPE + ORDER_TYPE)
    assert OUTCOME_TYPEHASH == keccak(text=OUTCOME_TYPE)
    assert BALANCES_TYPEHASH == keccak(text=BALANCES_TYPE)
    assert BATCH_PRICE_TYPEHASH == keccak(text="BatchPrice(uint32 market,uint64 batch,uint64 price)")
    assert CHALLENGE_AUTHORIZATION_TYPEHASH == keccak(text="ChallengeAuthorization(bytes32 channelId,address agent)")


@pytest.mark.parametrize(
    ("obj", "primary"),
    [
        (make_state(), "State"),
        (make_order(), "Order"),
        (BatchPrice(MarketId(1), BatchNumber(2), Price(3)), "BatchPrice"),
        (ChallengeAuthorization(CHANNEL, addr(0xDD)), "ChallengeAuthorization"),
    ],
    ids=["State", "Order", "BatchPrice", "ChallengeAuthorization"],
)
def test_encode_type_matches_eth_account(obj: Signable, primary: str) -> None:
    types = typed_data(DOMAIN, obj)["types"]
    assert reference_encode_type(primary, types) == encode_type(primary)


# --------------------------------------------------------------------------- typed data JSON


def test_typed_data_json() -> None:
    data = typed_data(DOMAIN, make_state())
    text = json.dumps(data)
    assert json.loads(text) == data
    assert data["primaryType"] == "State"
    assert set(data["types"]) == {"EIP712Domain", "State", "Balances", "OpenOrder", "Order", "Outcome"}
    assert data["types"]["EIP712Domain"] == [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ]
    assert data["domain"] == {
        "name": "TradingChannels",
        "version": "1",
        "chainId": 1337,
        "verifyingContract": addr(0xAD),
    }
    message = data["message"]
    assert message["channelId"] == "0x" + CHANNEL.hex()
    assert message["version"] == "5"
    assert message["isFinal"] is False
    assert message["balances"]["traderAvailable"] == "900"
    assert len(message["openOrders"]) == 2 and len(message["outcomes"]) == 2
    assert message["openOrders"][0]["order"]["isBuy"] is True
    assert message["outcomes"][0]["position"] == "-1500"


@pytest.mark.parametrize(
    ("obj", "primary", "types"),
    [
        (make_order(), "Order", {"EIP712Domain", "Order"}),
        (BatchPrice(MarketId(1), BatchNumber(2), Price(3)), "BatchPrice", {"EIP712Domain", "BatchPrice"}),
        (
            ChallengeAuthorization(CHANNEL, addr(0xDD)),
            "ChallengeAuthorization",
            {"EIP712Domain", "ChallengeAuthorization"},
        ),
    ],
    ids=["Order", "BatchPrice", "ChallengeAuthorization"],
)
def test_typed_data_json_other_types(obj: Signable, primary: str, types: set[str]) -> None:
    data = typed_data(DOMAIN, obj)
    assert json.loads(json.dumps(data)) == data
    assert data["primaryType"] == primary
    assert set(data["types"]) == types
    assert data["domain"]["chainId"] == 1337
    assert data["domain"]["verifyingContract"] == addr(0xAD)


def test_domain_separator_matches_eth_account() -> None:
    assert DOMAIN.separator == hash_domain(DOMAIN.to_json())
    other = Domain(chain_id=2**255, verifying_contract=addr(2**160 - 1))
    assert other.separator == hash_domain(other.to_json())


# --------------------------------------------------------------------------- fast path == reference


@SETTINGS
@given(domains, channel_states())
def test_state_digest_equals_reference(domain: Domain, state: ChannelState) -> None:
    digest = domain.state_digest(state)
    assert len(digest) == 32
    assert digest == reference_digest(domain, state)
    assert struct_digest(domain, state) == digest


@SETTINGS
@given(domains, orders())
def test_order_digest_equals_reference(domain: Domain, order: Order) -> None:
    assert domain.order_digest(order) == reference_digest(domain, order)
    assert struct_digest(domain, order) == domain.order_digest(order)


@SETTINGS
@given(domains, batch_prices)
def test_batch_price_digest_equals_reference(domain: Domain, price: BatchPrice) -> None:
    assert domain.batch_price_digest(price) == reference_digest(domain, price)
    assert struct_digest(domain, price) == domain.batch_price_digest(price)


@SETTINGS
@given(domains, authorizations)
def test_challenge_authorization_digest_equals_reference(domain: Domain, auth: ChallengeAuthorization) -> None:
    assert domain.challenge_authorization_digest(auth) == reference_digest(domain, auth)
    assert struct_digest(domain, auth) == domain.challenge_authorization_digest(auth)


EXTREMES: list[tuple[str, dict[str, Any]]] = [
    ("min", {"ta": -I63, "ba": -I63, "pos": -I63, "u64": 0, "u32": 0, "version": 0}),
    ("zero", {"ta": 0, "ba": 0, "pos": 0, "u64": 0, "u32": 0, "version": 0}),
    ("max", {"ta": I63, "ba": I63, "pos": I63, "u64": U64, "u32": U32, "version": U48}),
    ("minus-one", {"ta": -1, "ba": -1, "pos": -1, "u64": 1, "u32": 1, "version": 1}),
]


@pytest.mark.parametrize("is_final", [False, True])
@pytest.mark.parametrize("ex", [e[1] for e in EXTREMES], ids=[e[0] for e in EXTREMES])
def test_state_digest_at_bounds(ex: dict[str, Any], is_final: bool) -> None:
    u64, u32 = ex["u64"], ex["u32"]
    order = make_order(
        market=u32,
        amount_synthetic=u64,
        amount_collateral=u64,
        max_fee=u64,
        nonce=u64,
        expiration=u32,
    )
    state = make_state(
        version=Version(ex["version"]),
        balances=make_balances(
            trader_available=TokenAmount(ex["ta"]),
            broker_available=TokenAmount(ex["ba"]),
            trader_locked=TokenAmount(abs(ex["ta"])),
            broker_locked=TokenAmount(abs(ex["ba"])),
            trader_deposit=TokenAmount(abs(ex["ta"])),
            broker_deposit=TokenAmount(abs(ex["ba"])),
        ),
        open_orders=tuple(
            make_open_order(order=replace(order, is_buy=i % 2 == 0), filled=u64, first_batch=u64) for i in range(3)
        ),
        outcomes=tuple(
            make_outcome(position=SyntheticAmount(ex["pos"] * sign), fees=abs(ex["pos"]), last_batch=u64)
            for sign in (1, -1, 1)
        ),
        is_final=is_final,
    )
    assert DOMAIN.state_digest(state) == reference_digest(DOMAIN, state)
    assert DOMAIN.order_digest(order) == reference_digest(DOMAIN, order)
    price = BatchPrice(MarketId(u32), BatchNumber(u64), Price(u64))
    assert DOMAIN.batch_price_digest(price) == reference_digest(DOMAIN, price)


def test_empty_state_digest_equals_reference() -> None:
    for is_final in (False, True):
        state = make_state(open_orders=(), outcomes=(), is_final=is_final)
        assert DOMAIN.state_digest(state) == reference_digest(DOMAIN, state)


def test_negative_int64_is_sign_extended() -> None:
    """int64 -1 encodes as 32 bytes of 0xff, not as 2^64 - 1."""
    minus = make_state(outcomes=(make_outcome(position=SyntheticAmount(-1)),))
    wrapped = make_state(outcomes=(make_outcome(position=SyntheticAmount(2**64 - 1)),))
    assert DOMAIN.state_digest(minus) == reference_digest(DOMAIN, minus)
    assert DOMAIN.state_digest(minus) != DOMAIN.state_digest(wrapped)


# --------------------------------------------------------------------------- signatures over the digest


@SETTINGS
@given(
    st.integers(1, SECP256K1_N - 1).map(lambda k: k.to_bytes(32, "big")),
    st.one_of(
        channel_states(max_orders=2, max_outcomes=2),
        orders(),
        batch_prices,
        authorizations,
    ),
)
def test_local_signer_equals_eth_account(key: bytes, obj: Signable) -> None:
    signer = LocalSigner(key)
    expected = Account.sign_typed_data(key, full_message=typed_data(DOMAIN, obj)).signature
    signature = signer.sign(DOMAIN, obj)
    assert len(signature) == 65
    assert signature[64] in (27, 28)
    assert signature == bytes(expected)
    assert signer.address == Account.from_key(key).address


# --------------------------------------------------------------------------- domain separation


def test_other_chain_gives_another_digest() -> None:
    state = make_state()
    other = Domain(chain_id=1338, verifying_contract=DOMAIN.verifying_contract)
    assert other.state_digest(state) != DOMAIN.state_digest(state)
    assert other.order_digest(make_order()) != DOMAIN.order_digest(make_order())
    assert other.state_digest(state) == reference_digest(other, state)


def test_other_contract_gives_another_digest() -> None:
    state = make_state()
    other = Domain(chain_id=DOMAIN.chain_id, verifying_contract=addr(0xAE))
    assert other.state_digest(state) != DOMAIN.state_digest(state)
    price = BatchPrice(MarketId(1), BatchNumber(1), Price(1))
    assert other.batch_price_digest(price) != DOMAIN.batch_price_digest(price)


def test_other_name_or_version_gives_another_digest() -> None:
    state = make_state()
    assert replace(DOMAIN, name="Other").state_digest(state) != DOMAIN.state_digest(state)
    assert replace(DOMAIN, version="2").state_digest(state) != DOMAIN.state_digest(state)


def test_other_channel_gives_another_digest() -> None:
    other = ChannelId(keccak(b"another channel"))
    state = make_state()
    assert DOMAIN.state_digest(replace(state, channel_id=other)) != DOMAIN.state_digest(state)
    order = make_order()
    assert DOMAIN.order_digest(replace(order, channel_id=other)) != DOMAIN.order_digest(order)
    auth = ChallengeAuthorization(CHANNEL, addr(0xDD))
    assert DOMAIN.challenge_authorization_digest(
        replace(auth, channel_id=other)
    ) != DOMAIN.challenge_authorization_digest(auth)


@pytest.mark.parametrize(
    "change",
    [
        {"version": Version(6)},
        {"is_final": True},
        {"balances": make_balances(trader_available=TokenAmount(899))},
        {"open_orders": ()},
        {"outcomes": ()},
        {"outcomes": (make_outcome(position=SyntheticAmount(-1499)), make_outcome(position=SyntheticAmount(7)))},
    ],
    ids=["version", "final", "balance", "orders", "outcomes", "position"],
)
def test_any_state_change_gives_another_digest(change: dict[str, Any]) -> None:
    state = make_state()
    assert DOMAIN.state_digest(replace(state, **change)) != DOMAIN.state_digest(state)


def test_order_of_open_orders_matters() -> None:
    state = make_state()
    swapped = replace(state, open_orders=tuple(reversed(state.open_orders)))
    assert DOMAIN.state_digest(swapped) != DOMAIN.state_digest(state)
    assert DOMAIN.state_digest(swapped) == reference_digest(DOMAIN, swapped)


def test_different_types_with_same_fields_do_not_collide() -> None:
    # an outcome and a batch price can carry the same three numbers
    price = BatchPrice(MarketId(1), BatchNumber(2), Price(3))
    outcome = Outcome(SyntheticAmount(1), TokenAmount(2), BatchNumber(3))
    state = make_state(outcomes=(outcome,), open_orders=())
    assert DOMAIN.batch_price_digest(price) not in {DOMAIN.state_digest(state), DOMAIN.order_digest(make_order())}


# --------------------------------------------------------------------------- the caches on frozen objects
# offchain.eip712 keeps a state's struct hash and digest on the state (and an open order's or an
# outcome's struct hash on it): these tests fail if a cached value could be stale or shared.


STATE_FIELD_CHANGES: dict[str, dict[str, Any]] = {
    "channel_id": {"channel_id": ChannelId(b"\x07" * 32)},
    "version": {"version": Version(6)},
    "is_final": {"is_final": True},
    "trader_available": {"balances": make_balances(trader_available=TokenAmount(899))},
    "trader_locked": {"balances": make_balances(trader_locked=TokenAmount(101))},
    "broker_available": {"balances": make_balances(broker_available=TokenAmount(4999))},
    "broker_locked": {"balances": make_balances(broker_locked=TokenAmount(1))},
    "trader_deposit": {"balances": make_balances(trader_deposit=TokenAmount(1001))},
    "broker_deposit": {"balances": make_balances(broker_deposit=TokenAmount(1))},
    "filled": {"open_orders": (make_open_order(filled=SyntheticAmount(501)),)},
    "first_batch": {"open_orders": (make_open_order(first_batch=BatchNumber(4)),)},
    "order signature": {"open_orders": (make_open_order(signature=bytes(range(1, 66))),)},
    "order nonce": {"open_orders": (make_open_order(order=make_order(nonce=99)),)},
    "position": {"outcomes": (make_outcome(position=SyntheticAmount(-1499)),)},
    "fees": {"outcomes": (make_outcome(fees=TokenAmount(13)),)},
    "last_batch": {"outcomes": (make_outcome(last_batch=BatchNumber(5)),)},
}


@pytest.mark.parametrize("change", STATE_FIELD_CHANGES.values(), ids=STATE_FIELD_CHANGES.keys())
def test_one_field_changed_after_hashing_gives_the_reference_digest(change: dict[str, Any]) -> None:
    state = make_state(open_orders=(make_open_order(),), outcomes=(make_outcome(),))
    before = DOMAIN.state_digest(state)  # fills the caches of the state and of its parts
    changed = replace(state, **change)  # a new object: it must not carry the old digest
    assert DOMAIN.state_digest(changed) != before
    assert DOMAIN.state_digest(changed) == reference_digest(DOMAIN, changed)
    assert DOMAIN.state_digest(state) == before == reference_digest(DOMAIN, state)


def test_cached_digest_equals_a_fresh_computation_and_the_reference() -> None:
    state = make_state()
    first = DOMAIN.state_digest(state)
    assert state._digest is not None and state._struct_hash is not None  # cached
    assert DOMAIN.state_digest(state) == first  # served from the cache
    twin = replace(state)  # equal, but nothing cached on it
    assert twin == state and twin._digest is None and twin._struct_hash is None
    assert DOMAIN.state_digest(twin) == first == reference_digest(DOMAIN, state)


def test_cached_digest_is_per_domain() -> None:
    state = make_state()
    other = Domain(chain_id=DOMAIN.chain_id + 1, verifying_contract=DOMAIN.verifying_contract)
    third = Domain(chain_id=DOMAIN.chain_id, verifying_contract=addr(0xAE))
    digests = [d.state_digest(state) for d in (DOMAIN, other, third, DOMAIN, third)]
    assert len(set(digests[:3])) == 3
    assert digests[3] == digests[0] and digests[4] == digests[2]
    for domain, digest in zip((DOMAIN, other, third), digests, strict=False):
        assert digest == reference_digest(domain, state)


def test_shared_parts_keep_their_own_hashes() -> None:
    # a transition shares the unchanged open orders and outcomes with the state before it
    outcome, order = make_outcome(), make_open_order()
    a = make_state(open_orders=(order,), outcomes=(outcome,))
    b = make_state(version=Version(6), open_orders=(order, make_open_order(filled=SyntheticAmount(1))), outcomes=())
    c = make_state(version=Version(7), open_orders=(), outcomes=(outcome, make_outcome(fees=TokenAmount(1))))
    for state in (a, b, c, a, b, c):
        assert DOMAIN.state_digest(state) == reference_digest(DOMAIN, state)


def test_caches_are_not_part_of_equality_hash_or_repr() -> None:
    state = make_state()
    fresh = replace(state)
    DOMAIN.state_digest(state)
    assert state == fresh and hash(state) == hash(fresh) and repr(state) == repr(fresh)


def test_fast_keccak_equals_eth_hash() -> None:
    from eth_hash.auto import keccak as reference

    from offchain.eip712 import keccak as fast

    for data in (b"", b"\x00", b"abc", bytes(range(256)) * 3, b"\x19\x01" + bytes(64)):
        assert fast(data) == reference(data) == keccak(data)
