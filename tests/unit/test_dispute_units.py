"""How the dispute commands show token amounts to people (``offchain.cli.dispute.TokenUnits``):
whole tokens by the token's own ``decimals()`` and ``symbol()``, with the exact base units beside
an amount that stands alone; base units when the token does not say, or says nonsense."""

from __future__ import annotations

import pytest

from offchain.chain.client import TokenClient
from offchain.chain.connection import in_process_chain
from offchain.cli.dispute import MAX_TOKEN_DECIMALS, TokenUnits
from offchain.sandbox import Sandbox
from offchain.types import Address


def test_amounts_in_whole_tokens_with_the_base_units_beside() -> None:
    units = TokenUnits(6, "tUSD")
    assert units(5_017_990_000) == "5017.99 tUSD (5017990000)"
    assert units.short(1_995_000_000) == "1995.00 tUSD"
    assert units.number(0) == "0.00" and units.number(1) == "0.000001" and units.number(-2_500_000) == "-2.50"
    assert units.legend() == "amounts in tUSD (6 decimals); --json gives base units"
    whole = TokenUnits(0, "PTS")
    assert whole(42) == "42 PTS (42)" and whole.number(42) == "42"


def test_a_token_that_declares_no_decimals_is_shown_in_base_units() -> None:
    units = TokenUnits(None, "tokens")
    assert units(5_000) == "5000 base units" and units.short(7) == "7 base units" and units.number(9) == "9"
    assert "base units" in units.legend()


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox.create(in_process_chain())


def test_read_from_the_token(sandbox: Sandbox) -> None:
    units = TokenUnits.of(sandbox.chain, sandbox.token.address)
    assert units == TokenUnits(sandbox.token.decimals(), sandbox.token.symbol())


def test_an_address_without_a_token_falls_back_to_base_units(sandbox: Sandbox) -> None:
    """No code at the address: neither call answers (web3's decoding error), nothing escapes."""
    units = TokenUnits.of(sandbox.chain, Address("0x000000000000000000000000000000000000dEaD"))
    assert units == TokenUnits(None, "tokens")


@pytest.mark.parametrize(
    ("decimals", "symbol", "expected"),
    [
        (MAX_TOKEN_DECIMALS + 1, "tUSD", TokenUnits(None, "tUSD")),
        (-1, "tUSD", TokenUnits(None, "tUSD")),
        (6, "two words", TokenUnits(6, "tokens")),
        (6, "", TokenUnits(6, "tokens")),
        (6, "\x1b[31mRED", TokenUnits(6, "tokens")),  # no terminal escapes from a token
        (6, "X" * 17, TokenUnits(6, "tokens")),
    ],
)
def test_what_a_token_says_is_checked_before_it_is_shown(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, decimals: int, symbol: str, expected: TokenUnits
) -> None:
    monkeypatch.setattr(TokenClient, "decimals", lambda self: decimals)
    monkeypatch.setattr(TokenClient, "symbol", lambda self: symbol)
    assert TokenUnits.of(sandbox.chain, sandbox.token.address) == expected
