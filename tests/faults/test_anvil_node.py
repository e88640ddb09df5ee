"""Node faults over real JSON-RPC: a real anvil (``node_modules/.bin/anvil``, 127.0.0.1, a free
port) behind :class:`tests.faults.rpc_proxy.RpcProxy`, which refuses connections, answers HTTP
500 or JSON-RPC errors for a while. What ``test_node.py`` checks on the in-process chain, checked
through web3's HTTP provider, its own retries and the node's own error bodies:

- the trader's deposit and close fail typed (``ChainError``) while the node is away or answers
  errors, and succeed when called again once it is back; the broker's deposit is retried;
- the watchtower keeps its cursor through an outage and refutes a stale challenge once back.

web3's HTTP provider retries a failed request itself (5 tries, about 4 s, by default); the
agents' chain here keeps that but with a short back-off, so that each case takes seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from web3.providers.rpc.utils import ExceptionRetryConfiguration

from offchain.agents.common import on_chain
from offchain.agents.watchtower import Watchtower, WatchtowerConfig
from offchain.chain.connection import Chain, rpc_chain
from offchain.errors import ChainError
from offchain.localnet import Anvil
from offchain.protocol.party import OPEN
from offchain.sandbox import Sandbox
from offchain.signing import CoSignedState
from offchain.store import MemoryStore
from offchain.types import Signature
from tests.faults.conftest import check_conservation, kinds, settled
from tests.faults.rpc_proxy import HTTP500, REFUSE, RPC_ERROR, RpcProxy
from tests.protocol.conftest import BTC, GOLD, UNIT, USD, Net, eventually, run

pytestmark = pytest.mark.anvil

DEPOSIT = 5_000 * USD


def chain_via(proxy: RpcProxy, timeout: float = 2.0) -> Chain:
    """A JSON-RPC chain through the proxy (``rpc_chain``), with web3's own retry kept short."""
    chain = rpc_chain(proxy.url, timeout=timeout)
    provider = chain.w3.provider
    default = provider.exception_retry_configuration  # type: ignore[attr-defined]
    provider.exception_retry_configuration = ExceptionRetryConfiguration(  # type: ignore[attr-defined]
        errors=default.errors, retries=2, backoff_factor=0.01
    )
    return chain


@dataclass
class AnvilWorld:
    anvil: Anvil
    proxy: RpcProxy
    direct: Net
    """The deployment, straight to the node (funding, the counterparty's own node)."""
    faulty: Net
    """The same deployment through the proxy: agents made with it see the faults."""


@pytest.fixture(scope="module")
def world() -> Iterator[AnvilWorld]:
    with Anvil.start() as node, RpcProxy(node.url) as proxy:
        chain = rpc_chain(node.url)
        sb = Sandbox.create(chain)
        direct = Net(chain, sb, sb.market("XAU / USD", GOLD), sb.market("BTC / USD", BTC))
        yield AnvilWorld(node, proxy, direct, Net(chain_via(proxy), sb, direct.gold, direct.btc))


@pytest.fixture
def w(world: AnvilWorld) -> Iterator[AnvilWorld]:
    world.proxy.clear()
    world.proxy.log.clear()
    yield world
    world.proxy.clear()


def test_a_deposit_and_a_close_fail_typed_while_the_node_is_away_and_succeed_after(w: AnvilWorld) -> None:
    """The trader's deposit fails with ``ChainError`` while the node refuses connections, and
    again while it answers JSON-RPC errors to the nonce lookup only (a transaction half built);
    the broker's deposit fails too and is retried on its own. Once the node answers, the trader's
    call picks up where it was and the deposits are co-signed. The close fails typed on HTTP 500s
    and is not recorded; once back it pays out the co-signed state."""

    async def body() -> None:
        broker = await w.faulty.broker(ack_timeout=3)
        trader = await w.faulty.trader(broker, None, timeout=5)
        before = await w.direct.balance(trader.address)
        try:
            w.proxy.fail(REFUSE)
            with pytest.raises(ChainError) as refused:  # setup co-signed off-chain, the deposit fails
                await trader.open_channel(DEPOSIT, flow="server_initiative")
            assert refused.value.code == "chain"
            assert trader.state.version == 0 and trader.party is not None and trader.party.pending is None
            await eventually(lambda: "chain_retry" in kinds(broker), "the broker retrying its deposit")

            w.proxy.fail(RPC_ERROR, methods={"eth_getTransactionCount"})
            with pytest.raises(ChainError) as errored:
                await trader.open_channel(DEPOSIT, flow="server_initiative")
            assert "limit exceeded" in errored.value.reason and w.proxy.faulted(RPC_ERROR) >= 1
            assert (await w.direct.party_status(trader)).trader_deposit == 0  # nothing was sent
            assert w.proxy.faulted(REFUSE) >= 1

            w.proxy.clear()
            await trader.open_channel(DEPOSIT, flow="server_initiative")  # again: picks up where it was
            await settled(broker, trader)
            balances = trader.state.balances
            assert (balances.trader_deposit, balances.broker_deposit) == (DEPOSIT, 20_000 * USD)
            status = await w.direct.party_status(trader)
            assert (status.trader_deposit, status.broker_deposit) == (DEPOSIT, 20_000 * USD)
            assert "deposited" in kinds(broker)

            await trader.place_order(GOLD, True, UNIT, 2_010 * USD, 5 * USD)
            await trader.finalize()
            await settled(broker, trader)
            w.proxy.fail(HTTP500)
            with pytest.raises(ChainError):
                await trader.close_on_chain()
            assert trader.party.status == OPEN  # nothing recorded as closed
            assert w.proxy.faulted(HTTP500) >= 1
            w.proxy.clear()
            await trader.close_on_chain()
            assert trader.party.status == "closed"
            assert await w.direct.balance(trader.address) == before  # all of the deposit came back
            check_conservation(broker, trader)
        finally:
            w.proxy.clear()
            await trader.stop()
            await broker.stop()

    run(body(), timeout=60)


def test_the_watchtower_keeps_its_cursor_through_an_outage_and_refutes_after(w: AnvilWorld) -> None:
    """The watchtower's node goes away (connections refused, then HTTP 500s); meanwhile the
    broker registers an old state through its own node. The cursor does not move while the node
    is away; once back, the watchtower reads the missed logs from its cursor and refutes with the
    newest state."""

    async def body() -> None:
        broker = await w.direct.broker(ack_timeout=2)
        trader = await w.direct.trader(broker, "server_initiative")
        await trader.place_order(GOLD, True, UNIT, 2_010 * USD, 5 * USD)
        assert trader.party is not None
        params, cid = trader.party.params, trader.channel_id
        old = trader.store.state(cid, 1)
        assert old is not None and old.trader_signature and old.broker_signature
        stale = CoSignedState(old.state, Signature(old.trader_signature), Signature(old.broker_signature))
        newest = trader.party.co_signed
        await trader.stop()
        await broker.stop()

        keeper = await w.direct.party("watchtower", 0)
        wt = Watchtower(
            keeper.signer,
            MemoryStore(),
            w.faulty.chain,
            w.direct.sb.adjudicator.address,
            WatchtowerConfig(port=0, poll_seconds=0.05, max_backoff_seconds=0.1, sweep_seconds=3600),
        )
        wt.guard(params, newest)
        await wt.start()
        try:
            await eventually(lambda: wt.store.meta("watchtower", "cursor") is not None, "a first cycle")
            w.proxy.fail(REFUSE)
            cursor = wt.store.meta("watchtower", "cursor")
            await eventually(lambda: kinds(wt).count("node_error") >= 2, "node errors")
            # the broker registers the old state through its own node while the watchtower's is away
            await on_chain(w.direct.chain, w.direct.sb.adjudicator.challenge, broker.transactor, params, stale)
            w.proxy.fail(HTTP500)
            count = kinds(wt).count("node_error")
            await eventually(lambda: kinds(wt).count("node_error") >= count + 2, "more node errors")
            assert wt.store.meta("watchtower", "cursor") == cursor  # not moved while the node is away
            assert w.proxy.faulted(REFUSE) >= 1 and w.proxy.faulted(HTTP500) >= 1
            w.proxy.clear()
            await eventually(lambda: "refuted" in kinds(wt), "the refute", timeout=10)
            assert int(str(wt.store.meta("watchtower", "cursor"))) > int(str(cursor))
            status = await on_chain(w.direct.chain, w.direct.sb.adjudicator.status, cid)
            assert status.registered_version == newest.state.version
        finally:
            w.proxy.clear()
            await wt.stop()

    run(body(), timeout=60)
