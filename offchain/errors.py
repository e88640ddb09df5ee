"""Every exception the package raises derives from :class:`TradingChannelsError`.

Each carries a stable machine-readable ``code`` (for error replies and ``--json`` output) and a
human ``reason``. Exceptions decoded from the adjudicator's custom errors live in
:mod:`offchain.chain.errors` and derive from :class:`ContractError`.
"""

from __future__ import annotations


class TradingChannelsError(Exception):
    """Root of every error this package raises on purpose."""

    code: str = "error"

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason or self.__class__.__doc__ or self.code)
        self.reason = reason or (self.__class__.__doc__ or self.code).strip()


class ValidationError(TradingChannelsError):
    """Input from outside (a message, an argument, a file) is malformed or out of bounds."""

    code = "invalid_input"


class BoundsError(ValidationError):
    """A number is outside the bound its field allows (MISSION.md, "Money and numbers")."""

    code = "out_of_bounds"


class SignatureError(TradingChannelsError):
    """A signature is malformed, malleable (high s) or from the wrong signer."""

    code = "bad_signature"


class MalleableSignatureError(SignatureError):
    """The signature's s value is in the upper half of the curve order."""

    code = "malleable_signature"


class WrongSignerError(SignatureError):
    """The signature recovers to someone other than the expected signer."""

    code = "wrong_signer"


class DoubleSignError(TradingChannelsError):
    """Refused to sign a second, different state with a version already signed."""

    code = "double_sign"


class TwoPricesError(TradingChannelsError):
    """Refused to sign a second, different price for a (market, batch) already priced: the
    adjudicator slashes a broker for it (MISSION.md, "Slashing")."""

    code = "two_prices"


class LeftOutOrderError(TradingChannelsError):
    """Refused to sign a state that proves an order was left out by a signed batch price: the
    adjudicator gives the trader the whole channel for it (MISSION.md, "Slashing")."""

    code = "left_out_order"


class CompilerError(TradingChannelsError):
    """The Solidity build failed or no compiler is available."""

    code = "compiler"


class ArtifactError(TradingChannelsError):
    """A compiled artifact is missing or unreadable."""

    code = "artifact"


class DeploymentError(TradingChannelsError):
    """A deployment file is missing, malformed, or for another chain."""

    code = "deployment"


class ChainError(TradingChannelsError):
    """The node could not be reached or a transaction could not be sent."""

    code = "chain"


class ContractError(ChainError):
    """A transaction reverted. Subclasses are named after the Solidity custom error."""

    code = "contract_revert"


class ConfigError(ValidationError):
    """The configuration file is missing a network, or is malformed."""

    code = "config"


class KeystoreError(ValidationError):
    """A keystore cannot be read or opened (wrong password, wrong file)."""

    code = "keystore"


class NodeUnreachableError(ChainError):
    """No node answers at the given URL."""

    code = "node_unreachable"


class WrongChainError(DeploymentError):
    """The node's chain id is not the one the deployment or configuration names."""

    code = "wrong_chain"
