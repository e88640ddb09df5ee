// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title Channel types
/// @notice Every struct the adjudicator accepts, and the bounds every number in them must respect.
/// @dev Calldata structs use full-width integers so that an out-of-range value reverts with the
/// custom error `ValueOutOfBounds` instead of an ABI-decoder revert without data. The EIP-712
/// type strings (see `ChannelHashing`) declare the narrow types; a value that passes the bound
/// checks encodes to the same 32-byte word either way.

/// @notice One market a channel may trade. The adjudicator never rejects a market: a market it
/// cannot price (no feed, zero resolution, ...) settles by the oracle fallback rule, so that no
/// parameter can lock a channel's funds. The agents refuse such markets before opening.
/// @param id Market id, unique per broker (< 2^32).
/// @param feed Chainlink-compatible price feed (AggregatorV3Interface).
/// @param resolution Synthetic base units per whole synthetic unit (> 0, < 2^64).
/// @param riskFactor Risk factor as a 32-bit fixed-point fraction: riskFactor / 2^32 (< 2^32).
/// @param maxPriceAge Oldest oracle answer (seconds) accepted at settlement (> 0, < 2^32).
struct Market {
    uint256 id;
    address feed;
    uint256 resolution;
    uint256 riskFactor;
    uint256 maxPriceAge;
}

/// @notice Fixed at opening. Together with the chain id and the adjudicator's address they make
/// the channel id (see `ChannelHeader`).
struct ChannelParams {
    address trader;
    address broker;
    address token;
    uint256 challengeDuration;
    uint256 nonce;
    Market[] markets;
}

/// @notice The channel parameters with the markets reduced to their count and
/// `keccak256(abi.encode(markets))`: what every function but `concludeWithState` takes, so that
/// calldata stays small. The channel id is
/// `keccak256(abi.encode(block.chainid, adjudicator, trader, broker, token, challengeDuration,
/// nonce, marketCount, marketsHash))`.
struct ChannelHeader {
    address trader;
    address broker;
    address token;
    uint256 challengeDuration;
    uint256 nonce;
    uint256 marketCount;
    bytes32 marketsHash;
}

/// @notice Collateral held in the channel, in token base units.
/// @dev traderAvailable + traderLocked + brokerAvailable + brokerLocked == traderDeposit + brokerDeposit
/// for every state the agents sign; the contract's payout rule preserves the holdings regardless.
struct Balances {
    int256 traderAvailable;
    uint256 traderLocked;
    int256 brokerAvailable;
    uint256 brokerLocked;
    uint256 traderDeposit;
    uint256 brokerDeposit;
}

/// @notice A limit order signed by the trader (seed 002's fields).
struct Order {
    bytes32 channelId;
    address trader;
    address collateral;
    uint256 market;
    bool isBuy;
    uint256 amountSynthetic;
    uint256 amountCollateral;
    uint256 maxFee;
    uint256 nonce;
    uint256 expiration;
}

/// @notice An order resting in the channel: the signed order, how much of it is filled, and the
/// first batch it is eligible for.
struct OpenOrder {
    Order order;
    bytes signature;
    uint256 filled;
    uint256 firstBatch;
}

/// @notice Per market (same index as `ChannelParams.markets`): the trader's synthetic position
/// (the broker holds the opposite), fees the trader paid, and the last batch the state reflects.
struct Outcome {
    int256 position;
    uint256 fees;
    uint256 lastBatch;
}

/// @notice The trading state `[increment, balances, open_orders, outcomes]` with its envelope
/// fields (channel id and final flag), exactly as both parties sign it.
struct State {
    bytes32 channelId;
    uint256 version;
    Balances balances;
    OpenOrder[] openOrders;
    Outcome[] outcomes;
    bool isFinal;
}

/// @notice A broker's uniform clearing price for one batch of one market.
struct BatchPrice {
    uint256 market;
    uint256 batch;
    uint256 price;
}
