"""Domain quantities. Money is ``int`` everywhere; these names say which kind of int."""

from __future__ import annotations

from typing import NewType

from eth_typing import ChecksumAddress

Address = ChecksumAddress
"""A checksummed 0x-prefixed Ethereum address (eth-typing's NewType, as web3 expects)."""

ChannelId = NewType("ChannelId", bytes)
"""keccak256(abi.encode(ChannelParams)): 32 bytes."""

Digest = NewType("Digest", bytes)
"""A 32-byte EIP-712 digest (what is signed)."""

Signature = NewType("Signature", bytes)
"""65 bytes r || s || v with v in {27, 28} and low s."""

TokenAmount = NewType("TokenAmount", int)
"""Collateral in token base units (may be negative for a trader's available balance)."""

SyntheticAmount = NewType("SyntheticAmount", int)
"""Synthetic asset in base units: a market's resolution of them make one whole unit."""

Price = NewType("Price", int)
"""Collateral base units per whole synthetic unit."""

Version = NewType("Version", int)
"""A state's increment; +1 on every co-signed transition."""

MarketId = NewType("MarketId", int)
BatchNumber = NewType("BatchNumber", int)
Nonce = NewType("Nonce", int)
Timestamp = NewType("Timestamp", int)
"""Seconds since the Unix epoch."""

ExpirationHours = NewType("ExpirationHours", int)
"""Hours since the Unix epoch (StarkEx expiration), < 2^32."""
