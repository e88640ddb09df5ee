"""A real anvil node per test module, started and stopped by the tests themselves."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from offchain.localnet import Anvil


@pytest.fixture(scope="module")
def anvil() -> Iterator[Anvil]:
    with Anvil.start() as node:
        yield node
