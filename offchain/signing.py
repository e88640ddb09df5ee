"""secp256k1 signing and recovery on EIP-712 digests.

The fast path uses coincurve (libsecp256k1) directly on the 32-byte digest; eth-account's
``Account.sign_typed_data`` is the reference the tests compare against byte for byte (both
are RFC 6979 deterministic and produce low-s signatures).

Rules enforced here exactly as the adjudicator enforces them (OpenZeppelin ECDSA):
signatures are 65 bytes ``r || s || v`` with ``v`` in {27, 28}; an ``s`` in the upper half of
the curve order (a malleable signature) is rejected.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from coincurve import PrivateKey, PublicKey

from offchain.crashpoints import crash_point
from offchain.eip712 import Domain, Signable, keccak, struct_digest
from offchain.errors import (
    DoubleSignError,
    MalleableSignatureError,
    SignatureError,
    TwoPricesError,
    WrongSignerError,
)
from offchain.model import BatchPrice, ChannelState, check_signable, check_state, checksum_address
from offchain.types import Address, ChannelId, Digest, Signature, Version

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
HALF_N = SECP256K1_N // 2


def address_of_public_key(public_key: PublicKey) -> Address:
    return address_of(public_key.format(compressed=False)[1:])


def address_of(public_key: bytes) -> Address:
    """The EIP-55 address of a 64-byte uncompressed public key (``x || y``).

    A pure function, remembered for the last few thousand keys: a party recovers the same two
    keys over and over, and the checksum costs more than the recovery's bookkeeping."""
    address = _ADDRESSES.get(public_key)
    if address is None:
        address = checksum_address(keccak(public_key)[12:])
        if len(_ADDRESSES) >= _ADDRESS_CACHE_SIZE:
            _ADDRESSES.clear()
        _ADDRESSES[public_key] = address
    return address


_ADDRESSES: dict[bytes, Address] = {}
_ADDRESS_CACHE_SIZE = 4096


class LocalSigner:
    """Holds one private key and signs digests with it."""

    __slots__ = ("_key", "address")

    def __init__(self, private_key: bytes) -> None:
        if len(private_key) != 32:
            raise SignatureError("a private key is 32 bytes")
        self._key = PrivateKey(private_key)
        self.address = address_of_public_key(self._key.public_key)

    @classmethod
    def generate(cls) -> LocalSigner:
        return cls(PrivateKey().secret)

    @property
    def private_key(self) -> bytes:
        return bytes(self._key.secret)

    def sign_digest(self, digest: bytes) -> Signature:
        raw = self._key.sign_recoverable(digest, hasher=None)
        return Signature(raw[:64] + bytes((raw[64] + 27,)))

    def sign(self, domain: Domain, obj: Signable) -> Signature:
        """Sign ``obj`` after checking every bound it must respect (BoundsError/ValidationError)."""
        return self.sign_digest(struct_digest(domain, check_signable(obj)))


def recover(digest: bytes, signature: bytes) -> Address:
    """The signer of ``digest``; raises SignatureError for malformed or malleable signatures."""
    if len(signature) != 65:
        raise SignatureError(f"a signature is 65 bytes, got {len(signature)}")
    v = signature[64]
    if v not in (27, 28):
        raise SignatureError(f"signature v must be 27 or 28, got {v}")
    s = int.from_bytes(signature[32:64], "big")
    if s > HALF_N:
        raise MalleableSignatureError("signature s is in the upper half of the curve order")
    try:
        public_key = PublicKey.from_signature_and_message(signature[:64] + bytes((v - 27,)), digest, hasher=None)
    except Exception as exc:  # coincurve raises a bare Exception for unrecoverable signatures
        raise SignatureError("signature does not recover to a public key") from exc
    return address_of(public_key.format(compressed=False)[1:])


def verify(digest: bytes, signature: bytes, expected: Address) -> None:
    signer = recover(digest, signature)
    if signer != expected:
        raise WrongSignerError(f"signed by {signer}, expected {expected}")


def malleate(signature: bytes) -> Signature:
    """The high-s twin of a signature (valid for ecrecover, rejected by us and the adjudicator).

    For tests and for the threat catalogue: it shows why high-s must be rejected.
    """
    r, s, v = signature[:32], int.from_bytes(signature[32:64], "big"), signature[64]
    return Signature(r + (SECP256K1_N - s).to_bytes(32, "big") + bytes((55 - v,)))


# --------------------------------------------------------------------------- never sign twice


class SignedVersionLog(Protocol):
    """Where a party records which state digest it signed for each (channel, version).

    In-memory here; the durable store implements the same protocol so that the record survives
    a crash (a state is written before it is signed).
    """

    def signed_digest(self, channel_id: ChannelId, version: Version) -> bytes | None: ...

    def record_signed(self, channel_id: ChannelId, version: Version, digest: bytes) -> None: ...


@dataclass
class MemorySignedVersionLog:
    _digests: dict[tuple[bytes, int], bytes] = field(default_factory=dict)

    def signed_digest(self, channel_id: ChannelId, version: Version) -> bytes | None:
        return self._digests.get((channel_id, version))

    def record_signed(self, channel_id: ChannelId, version: Version, digest: bytes) -> None:
        self._digests[(channel_id, version)] = digest


class StateSigner:
    """Signs channel states, refusing a second different state with a version already signed
    (MISSION.md, "Signatures": a party never signs two different states with the same version).
    Signing the same state again returns the same signature."""

    def __init__(self, signer: LocalSigner, domain: Domain, log: SignedVersionLog | None = None) -> None:
        self.signer = signer
        self.domain = domain
        self.log: SignedVersionLog = log if log is not None else MemorySignedVersionLog()

    @property
    def address(self) -> Address:
        return self.signer.address

    def sign_state(self, state: ChannelState) -> Signature:
        """Sign ``state`` (after its bound checks), unless a different state with its version
        is already recorded as signed (DoubleSignError). Records the digest before signing."""
        digest = self.domain.state_digest(check_state(state))
        previous = self.log.signed_digest(state.channel_id, state.version)
        if previous is not None and previous != digest:
            raise DoubleSignError(
                f"already signed a different state with version {state.version} in channel 0x{state.channel_id.hex()}"
            )
        if previous is None:
            self.log.record_signed(state.channel_id, state.version, digest)
        crash_point("signing.recorded")
        signature = self.signer.sign_digest(digest)
        crash_point("signing.signed")
        return signature


class SignedPriceLog(Protocol):
    """Where a broker keeps the batch prices it signed (the durable store implements it)."""

    def batch_prices(self, broker: str, market: int, batch: int) -> Sequence[SignedPrice]: ...


class SignedPrice(Protocol):
    @property
    def price(self) -> BatchPrice: ...


class BatchPriceSigner:
    """Signs a broker's batch prices, refusing a second, different price for a (market, batch)
    it has already priced (MISSION.md, "Slashing": two prices for one batch cost the broker every
    channel). The caller stores the signed price before publishing it, so the refusal holds
    across restarts; signing the same price again returns the same signature."""

    def __init__(self, signer: LocalSigner, domain: Domain, log: SignedPriceLog) -> None:
        self.signer = signer
        self.domain = domain
        self.log = log

    def sign_price(self, price: BatchPrice) -> Signature:
        for record in self.log.batch_prices(self.signer.address, price.market, price.batch):
            if record.price.price != price.price:
                raise TwoPricesError(
                    f"market {price.market} batch {price.batch} is already priced at {record.price.price}; "
                    f"refusing to sign {price.price}"
                )
        return self.signer.sign(self.domain, price)


@dataclass(frozen=True, slots=True)
class CoSignedState:
    """A state with both parties' signatures: what the adjudicator accepts."""

    state: ChannelState
    trader_signature: Signature
    broker_signature: Signature

    def verify(self, domain: Domain, trader: Address, broker: Address) -> Digest:
        digest = domain.state_digest(self.state)
        verify(digest, self.trader_signature, trader)
        verify(digest, self.broker_signature, broker)
        return digest


def co_sign(state: ChannelState, signers: Iterable[StateSigner]) -> CoSignedState:
    """Both parties sign ``state`` (trader first, then broker); for scripts, the demo and tests."""
    trader, broker = signers
    return CoSignedState(state, trader.sign_state(state), broker.sign_state(state))
