"""secp256k1 signing and recovery, low-s rule, and never signing two states with one version
(MISSION.md, "Signatures")."""

from __future__ import annotations

from dataclasses import replace

import pytest
from coincurve import PublicKey
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.crypto import keccak
from hypothesis import given
from hypothesis import strategies as st

from offchain.eip712 import Domain, Signable, typed_data
from offchain.errors import (
    DoubleSignError,
    MalleableSignatureError,
    SignatureError,
    ValidationError,
    WrongSignerError,
)
from offchain.model import BatchPrice, ChallengeAuthorization, ChannelState
from offchain.signing import (
    HALF_N,
    SECP256K1_N,
    CoSignedState,
    LocalSigner,
    MemorySignedVersionLog,
    StateSigner,
    address_of_public_key,
    co_sign,
    malleate,
    recover,
    verify,
)
from offchain.types import BatchNumber, ChannelId, MarketId, Price, Signature, TokenAmount, Version
from tests.unit.test_model import SETTINGS, addr, make_balances, make_order, make_state

DOMAIN = Domain(chain_id=1337, verifying_contract=addr(0xAD))
TRADER = LocalSigner(keccak(text="unit tests: trader"))
BROKER = LocalSigner(keccak(text="unit tests: broker"))
DIGEST = keccak(text="some digest")

private_keys = st.integers(1, SECP256K1_N - 1).map(lambda k: k.to_bytes(32, "big"))
digests = st.binary(min_size=32, max_size=32)


def state(version: int = 5, trader_available: int = 900, channel: bytes | None = None) -> ChannelState:
    s = make_state(version=Version(version), balances=make_balances(trader_available=TokenAmount(trader_available)))
    return s if channel is None else replace(s, channel_id=ChannelId(channel))


# --------------------------------------------------------------------------- sign / recover


def test_sign_then_recover_gives_the_signer() -> None:
    signature = TRADER.sign_digest(DIGEST)
    assert len(signature) == 65
    assert recover(DIGEST, signature) == TRADER.address
    verify(DIGEST, signature, TRADER.address)


def test_address_matches_eth_account() -> None:
    assert TRADER.address == Account.from_key(TRADER.private_key).address
    assert address_of_public_key(PublicKey.from_secret(TRADER.private_key)) == TRADER.address


def test_generated_signers_are_distinct_and_work() -> None:
    a, b = LocalSigner.generate(), LocalSigner.generate()
    assert a.address != b.address
    assert recover(DIGEST, a.sign_digest(DIGEST)) == a.address
    assert LocalSigner(a.private_key).address == a.address


@pytest.mark.parametrize("length", [0, 31, 33])
def test_private_key_must_be_32_bytes(length: int) -> None:
    with pytest.raises(SignatureError):
        LocalSigner(bytes([1]) * length)


def test_recover_agrees_with_eth_account() -> None:
    st_ = state()
    signature = TRADER.sign(DOMAIN, st_)
    message = encode_typed_data(full_message=typed_data(DOMAIN, st_))
    assert Account.recover_message(message, signature=signature) == TRADER.address
    assert recover(DOMAIN.state_digest(st_), signature) == TRADER.address


@SETTINGS
@given(private_keys, digests)
def test_signatures_are_low_s_and_recover(key: bytes, digest: bytes) -> None:
    signer = LocalSigner(key)
    signature = signer.sign_digest(digest)
    assert len(signature) == 65
    s = int.from_bytes(signature[32:64], "big")
    assert 0 < s <= HALF_N
    assert signature[64] in (27, 28)
    assert recover(digest, signature) == signer.address
    assert signer.sign_digest(digest) == signature  # deterministic (RFC 6979)


@SETTINGS
@given(private_keys, digests)
def test_malleated_signature_is_rejected(key: bytes, digest: bytes) -> None:
    signature = LocalSigner(key).sign_digest(digest)
    twin = malleate(signature)
    assert twin[:32] == signature[:32]
    assert int.from_bytes(twin[32:64], "big") == SECP256K1_N - int.from_bytes(signature[32:64], "big")
    assert int.from_bytes(twin[32:64], "big") > HALF_N
    assert {twin[64], signature[64]} == {27, 28}
    with pytest.raises(MalleableSignatureError) as info:
        recover(digest, twin)
    assert info.value.code == "malleable_signature"
    assert isinstance(info.value, SignatureError)


def test_malleated_twin_is_otherwise_valid() -> None:
    """The twin recovers to the same key when the low-s rule is not applied: that is why it is rejected."""
    twin = malleate(TRADER.sign_digest(DIGEST))
    public_key = PublicKey.from_signature_and_message(twin[:64] + bytes((twin[64] - 27,)), DIGEST, hasher=None)
    assert address_of_public_key(public_key) == TRADER.address


def test_s_boundary() -> None:
    signature = TRADER.sign_digest(DIGEST)
    high = signature[:32] + (HALF_N + 1).to_bytes(32, "big") + signature[64:]
    with pytest.raises(MalleableSignatureError):
        recover(DIGEST, high)
    at_half = signature[:32] + HALF_N.to_bytes(32, "big") + signature[64:]
    try:
        recovered = recover(DIGEST, at_half)
    except MalleableSignatureError:
        pytest.fail("s == HALF_N is low-s and must not be rejected as malleable")
    except SignatureError:
        pass  # not malleable, merely unrecoverable
    else:
        assert recovered != TRADER.address  # a valid but different signature


@pytest.mark.parametrize("v", [0, 1, 26, 29, 35, 36, 255])
def test_recover_rejects_bad_v(v: int) -> None:
    signature = TRADER.sign_digest(DIGEST)
    with pytest.raises(SignatureError) as info:
        recover(DIGEST, signature[:64] + bytes((v,)))
    assert not isinstance(info.value, MalleableSignatureError)


@pytest.mark.parametrize("length", [0, 1, 64, 66, 130])
def test_recover_rejects_wrong_length(length: int) -> None:
    signature = TRADER.sign_digest(DIGEST)
    garbage = (signature * 3)[:length]
    with pytest.raises(SignatureError):
        recover(DIGEST, garbage)


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(bytes(64) + b"\x1b", id="zeros"),
        pytest.param(b"\x00" * 32 + b"\x01" * 32 + b"\x1c", id="r-zero"),
        pytest.param(b"\x01" * 32 + b"\x00" * 32 + b"\x1b", id="s-zero"),
        pytest.param(b"\xff" * 32 + b"\x01" * 32 + b"\x1b", id="r-overflow"),
        pytest.param(SECP256K1_N.to_bytes(32, "big") + b"\x01" * 32 + b"\x1b", id="r-equals-n"),
    ],
)
def test_recover_rejects_garbage(signature: bytes) -> None:
    with pytest.raises(SignatureError):
        recover(DIGEST, signature)


def test_verify_rejects_another_signer() -> None:
    signature = BROKER.sign_digest(DIGEST)
    with pytest.raises(WrongSignerError) as info:
        verify(DIGEST, signature, TRADER.address)
    assert info.value.code == "wrong_signer"
    assert BROKER.address in info.value.reason


def test_verify_rejects_another_digest() -> None:
    signature = TRADER.sign_digest(DIGEST)
    with pytest.raises(WrongSignerError):
        verify(keccak(text="another digest"), signature, TRADER.address)


@SETTINGS
@given(private_keys, private_keys, digests)
def test_verify_property(key_a: bytes, key_b: bytes, digest: bytes) -> None:
    a, b = LocalSigner(key_a), LocalSigner(key_b)
    signature = a.sign_digest(digest)
    verify(digest, signature, a.address)
    if a.address != b.address:
        with pytest.raises(WrongSignerError):
            verify(digest, signature, b.address)


# --------------------------------------------------------------------------- never sign twice


def test_state_signer_refuses_a_second_state_with_the_same_version() -> None:
    signer = StateSigner(TRADER, DOMAIN)
    first = signer.sign_state(state(5))
    assert recover(DOMAIN.state_digest(state(5)), first) == TRADER.address
    with pytest.raises(DoubleSignError) as info:
        signer.sign_state(state(5, trader_available=899))
    assert info.value.code == "double_sign"
    with pytest.raises(DoubleSignError):
        signer.sign_state(replace(state(5), is_final=True))
    # the refusal did not overwrite the record: the original state can still be signed
    assert signer.sign_state(state(5)) == first


def test_state_signer_re_signs_the_identical_state() -> None:
    signer = StateSigner(TRADER, DOMAIN)
    assert signer.sign_state(state(5)) == signer.sign_state(state(5))
    assert signer.address == TRADER.address


def test_state_signer_signs_other_versions() -> None:
    signer = StateSigner(TRADER, DOMAIN)
    s5, s6 = signer.sign_state(state(5)), signer.sign_state(state(6, trader_available=899))
    assert s5 != s6
    assert signer.sign_state(state(4, trader_available=1)) != s5


def test_state_signer_other_channel_same_version_is_fine() -> None:
    signer = StateSigner(TRADER, DOMAIN)
    one = signer.sign_state(state(5, channel=keccak(b"one")))
    two = signer.sign_state(state(5, trader_available=1, channel=keccak(b"two")))
    assert one != two
    assert recover(DOMAIN.state_digest(state(5, trader_available=1, channel=keccak(b"two"))), two) == TRADER.address


def test_state_signer_log_is_shared_across_instances() -> None:
    """A restarted signer using the same (durable) log keeps refusing."""
    log = MemorySignedVersionLog()
    StateSigner(TRADER, DOMAIN, log).sign_state(state(5))
    with pytest.raises(DoubleSignError):
        StateSigner(TRADER, DOMAIN, log).sign_state(state(5, trader_available=1))
    assert log.signed_digest(state(5).channel_id, Version(5)) == DOMAIN.state_digest(state(5))


# --------------------------------------------------------------------------- co-signed states


def co_signed(st_: ChannelState) -> CoSignedState:
    return co_sign(st_, (StateSigner(TRADER, DOMAIN), StateSigner(BROKER, DOMAIN)))


def test_co_signed_state_verifies() -> None:
    cs = co_signed(state())
    assert cs.verify(DOMAIN, TRADER.address, BROKER.address) == DOMAIN.state_digest(state())
    assert cs.trader_signature == TRADER.sign(DOMAIN, state())
    assert cs.broker_signature == BROKER.sign(DOMAIN, state())


def test_co_signed_state_rejects_swapped_signatures() -> None:
    cs = co_signed(state())
    swapped = CoSignedState(cs.state, cs.broker_signature, cs.trader_signature)
    with pytest.raises(WrongSignerError):
        swapped.verify(DOMAIN, TRADER.address, BROKER.address)
    with pytest.raises(WrongSignerError):
        cs.verify(DOMAIN, BROKER.address, TRADER.address)


def test_co_signed_state_rejects_tampering() -> None:
    cs = co_signed(state())
    with pytest.raises(WrongSignerError):
        replace(cs, state=state(trader_available=901)).verify(DOMAIN, TRADER.address, BROKER.address)
    with pytest.raises(WrongSignerError):
        cs.verify(Domain(chain_id=1, verifying_contract=DOMAIN.verifying_contract), TRADER.address, BROKER.address)
    with pytest.raises(MalleableSignatureError):
        replace(cs, broker_signature=malleate(cs.broker_signature)).verify(DOMAIN, TRADER.address, BROKER.address)
    with pytest.raises(SignatureError):
        replace(cs, trader_signature=Signature(cs.trader_signature[:64])).verify(DOMAIN, TRADER.address, BROKER.address)


@pytest.mark.parametrize(
    "obj",
    [
        make_state(version=Version(2**48)),
        make_state(balances=make_balances(trader_available=TokenAmount(2**63))),
        make_order(amount_synthetic=2**64),
        make_order(expiration=2**32),
        BatchPrice(market=MarketId(1), batch=BatchNumber(2**64), price=Price(1)),
        ChallengeAuthorization(channel_id=ChannelId(b"\x01" * 31), agent=addr(1)),
    ],
    ids=["version", "balance", "order_amount", "order_expiration", "batch", "short_channel_id"],
)
def test_nothing_out_of_range_gets_signed(obj: Signable) -> None:
    """Bad input never reaches a signature: the signer raises a typed error instead."""
    with pytest.raises(ValidationError):
        TRADER.sign(DOMAIN, obj)
    if isinstance(obj, ChannelState):
        with pytest.raises(ValidationError):
            StateSigner(TRADER, DOMAIN).sign_state(obj)


# --------------------------------------------------------------------------- fast paths == reference


@SETTINGS
@given(st.binary(min_size=20, max_size=20))
def test_checksum_address_equals_eth_utils(raw: bytes) -> None:
    from eth_utils.address import to_checksum_address

    from offchain.signing import checksum_address

    assert checksum_address(raw) == to_checksum_address(raw)


@SETTINGS
@given(private_keys)
def test_address_of_public_key_equals_eth_account_also_when_remembered(key: bytes) -> None:
    from offchain.signing import address_of

    public = PublicKey.from_secret(key).format(compressed=False)[1:]
    expected = Account.from_key(key).address
    assert address_of(public) == expected  # computed (or remembered from an earlier example)
    assert address_of(public) == expected  # remembered
    assert LocalSigner(key).address == expected


def test_address_cache_is_bounded_and_stays_right() -> None:
    from offchain import signing

    keys = [keccak(text=f"cache {i}") for i in range(signing._ADDRESS_CACHE_SIZE + 10)]
    for key in keys:
        signing.address_of(PublicKey.from_secret(key).format(compressed=False)[1:])
    assert len(signing._ADDRESSES) <= signing._ADDRESS_CACHE_SIZE
    for key in (keys[0], keys[-1]):
        assert signing.address_of(PublicKey.from_secret(key).format(compressed=False)[1:]) == (
            Account.from_key(key).address
        )


def test_state_signature_from_cached_digest_equals_eth_account() -> None:
    s = state(7)
    first = StateSigner(TRADER, DOMAIN).sign_state(s)  # caches the digest on s
    again = StateSigner(TRADER, DOMAIN).sign_state(s)  # uses it
    reference = Account.from_key(TRADER.private_key).sign_typed_data(full_message=typed_data(DOMAIN, s))
    assert first == again == bytes(reference.signature)
    changed = replace(s, balances=make_balances(trader_available=TokenAmount(901)))
    other = StateSigner(TRADER, DOMAIN).sign_state(changed)
    assert other != first
    assert other == bytes(
        Account.from_key(TRADER.private_key).sign_typed_data(full_message=typed_data(DOMAIN, changed)).signature
    )


def test_an_out_of_bounds_state_is_refused_every_time() -> None:
    # check_state marks a state that passed; one that failed is never marked
    bad = state(5, trader_available=2**63)
    signer = StateSigner(TRADER, DOMAIN)
    for _ in range(2):
        with pytest.raises(ValidationError):
            signer.sign_state(bad)
    assert not bad._checked


def test_check_state_marks_only_frozen_states() -> None:
    from offchain.model import check_state

    good = state(5)
    assert check_state(good) is good and good._checked
    with_list = replace(state(5), outcomes=list(state(5).outcomes))  # type: ignore[arg-type]
    check_state(with_list)
    assert not with_list._checked  # a list can change after the check: it is checked again next time
