"""A local world to run channels in: a chain, the deployed contracts, funded parties.

Used by ``tchan demo``, ``tchan gas`` and the tests, on the in-process chain or on anvil.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from offchain.chain.client import AdjudicatorClient, PriceFeedClient, TokenClient
from offchain.chain.connection import Chain, Transactor
from offchain.chain.deploy import Deployment, FeedSpec, deploy_stack
from offchain.eip712 import Domain
from offchain.model import ChannelParams, ChannelState, Market, Outcome, initial_state
from offchain.signing import LocalSigner, StateSigner
from offchain.types import Address, BatchNumber, MarketId, SyntheticAmount, TokenAmount, Version

ETHER = 10**18
USD = 10**6  # the test token has 6 decimals
DEFAULT_CHALLENGE_DURATION = 24 * 3600
DEFAULT_RISK_FACTOR = 2**32 // 10  # 10%
DEFAULT_MAX_PRICE_AGE = 3600


@dataclass
class Party:
    """Someone with a key on the chain: a trader, a broker, an oracle, a watchtower."""

    name: str
    signer: LocalSigner
    transactor: Transactor
    state_signer: StateSigner

    @property
    def address(self) -> Address:
        return self.signer.address


@dataclass
class Sandbox:
    chain: Chain
    deployer: Party
    deployment: Deployment
    adjudicator: AdjudicatorClient
    token: TokenClient
    feeds: dict[str, PriceFeedClient]
    _nonce: int = field(default=0, repr=False)

    @classmethod
    def create(
        cls,
        chain: Chain,
        deployer_key: bytes | None = None,
        feeds: tuple[FeedSpec, ...] = (FeedSpec("XAU / USD"), FeedSpec("BTC / USD")),
        network: str = "sandbox",
    ) -> Sandbox:
        signer = LocalSigner(deployer_key) if deployer_key else LocalSigner.generate()
        transactor = Transactor.from_key(chain, signer.private_key)
        if deployer_key is None:
            chain.fund(signer.address, 100 * ETHER)
        deployment = deploy_stack(chain, transactor, network, feeds)
        adjudicator = AdjudicatorClient(chain, deployment.adjudicator)
        deployer = Party("deployer", signer, transactor, StateSigner(signer, adjudicator.domain))
        return cls(
            chain=chain,
            deployer=deployer,
            deployment=deployment,
            adjudicator=adjudicator,
            token=TokenClient(chain, deployment.token),
            feeds={desc: PriceFeedClient(chain, addr) for desc, addr in deployment.feeds().items()},
        )

    @property
    def domain(self) -> Domain:
        return self.adjudicator.domain

    def party(self, name: str, tokens: int = 0, ether: int = 10 * ETHER, key: bytes | None = None) -> Party:
        """A new funded party holding ``tokens`` test-token base units, approved to the adjudicator."""
        signer = LocalSigner(key) if key else LocalSigner.generate()
        transactor = Transactor.from_key(self.chain, signer.private_key)
        if ether:
            self.chain.fund(signer.address, ether)
        if tokens:
            self.token.mint(self.deployer.transactor, signer.address, tokens)
            self.token.approve(transactor, self.adjudicator.address, 2**256 - 1)
        return Party(name, signer, transactor, StateSigner(signer, self.domain))

    def market(self, description: str, market_id: int, resolution: int = 10**6) -> Market:
        return Market(
            id=MarketId(market_id),
            feed=self.feeds[description].address,
            resolution=resolution,
            risk_factor=DEFAULT_RISK_FACTOR,
            max_price_age=DEFAULT_MAX_PRICE_AGE,
        )

    def channel_params(
        self,
        trader: Party,
        broker: Party,
        markets: tuple[Market, ...] = (),
        challenge_duration: int = DEFAULT_CHALLENGE_DURATION,
    ) -> ChannelParams:
        self._nonce += 1
        return ChannelParams(
            chain_id=self.chain.chain_id,
            adjudicator=self.adjudicator.address,
            trader=trader.address,
            broker=broker.address,
            token=self.token.address,
            challenge_duration=challenge_duration,
            nonce=self._nonce,
            markets=markets,
        )

    def push_price(self, description: str, answer: int) -> None:
        self.feeds[description].push(self.deployer.transactor, answer)


# --------------------------------------------------------------------------- state builders


def plain_state(
    params: ChannelParams,
    version: int,
    trader_deposit: int,
    broker_deposit: int,
    trader_available: int | None = None,
    final: bool = False,
) -> ChannelState:
    """A state without open orders or positions in which ``trader_available`` of the holdings
    belong to the trader (default: its deposit) and the rest to the broker."""
    base = initial_state(params, trader_deposit, broker_deposit)
    trader_value = trader_deposit if trader_available is None else trader_available
    holdings = trader_deposit + broker_deposit
    return replace(
        base,
        version=Version(version),
        balances=replace(
            base.balances,
            trader_available=TokenAmount(trader_value),
            broker_available=TokenAmount(holdings - trader_value),
        ),
        is_final=final,
    )


def position_state(
    params: ChannelParams,
    version: int,
    trader_deposit: int,
    broker_deposit: int,
    positions: tuple[int, ...],
    cost: int,
    fees: int = 0,
) -> ChannelState:
    """A state with ``positions[i]`` synthetic base units in market i, bought by the trader for
    ``cost`` collateral plus ``fees`` paid to the broker."""
    base = initial_state(params, trader_deposit, broker_deposit)
    return replace(
        base,
        version=Version(version),
        balances=replace(
            base.balances,
            trader_available=TokenAmount(trader_deposit - cost - fees),
            broker_available=TokenAmount(broker_deposit + cost + fees),
        ),
        outcomes=tuple(
            Outcome(SyntheticAmount(p), TokenAmount(fees if i == 0 else 0), BatchNumber(1 if p else 0))
            for i, p in enumerate(positions)
        ),
    )
