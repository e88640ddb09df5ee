// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Balances, BatchPrice, Order, OpenOrder, Outcome, State} from "./ChannelTypes.sol";

/// @title EIP-712 struct hashes of every signed object, with the bounds of "Money and numbers"
/// @notice Hashing a struct checks every number in it against its bound first, so that a state
/// that verifies is also a state whose numbers are in range.
library ChannelHashing {
    /// @notice A number is outside the bound its field allows.
    error ValueOutOfBounds();

    /// @dev StarkEx bound for balances and positions: every value stays in (-2^63, 2^63).
    int256 internal constant MAX_BALANCE = int256(2 ** 63 - 1);
    /// @dev Order amounts, fills and batch numbers are < 2^64.
    uint256 internal constant MAX_AMOUNT = 2 ** 64 - 1;
    /// @dev Market ids and expirations (hours since the epoch) are < 2^32.
    uint256 internal constant MAX_UINT32 = 2 ** 32 - 1;
    /// @dev Versions are < 2^48 so that the adjudicator can store them packed.
    uint256 internal constant MAX_VERSION = 2 ** 48 - 1;

    bytes internal constant ORDER_TYPE =
        "Order(bytes32 channelId,address trader,address collateral,uint32 market,bool isBuy,uint64 amountSynthetic,uint64 amountCollateral,uint64 maxFee,uint64 nonce,uint32 expiration)";
    bytes internal constant OPEN_ORDER_TYPE = "OpenOrder(Order order,bytes signature,uint64 filled,uint64 firstBatch)";
    bytes internal constant OUTCOME_TYPE = "Outcome(int64 position,uint64 fees,uint64 lastBatch)";
    bytes internal constant BALANCES_TYPE =
        "Balances(int64 traderAvailable,uint64 traderLocked,int64 brokerAvailable,uint64 brokerLocked,uint64 traderDeposit,uint64 brokerDeposit)";
    bytes internal constant STATE_TYPE =
        "State(bytes32 channelId,uint64 version,Balances balances,OpenOrder[] openOrders,Outcome[] outcomes,bool isFinal)";

    bytes32 internal constant ORDER_TYPEHASH = keccak256(ORDER_TYPE);
    bytes32 internal constant OPEN_ORDER_TYPEHASH = keccak256(abi.encodePacked(OPEN_ORDER_TYPE, ORDER_TYPE));
    bytes32 internal constant OUTCOME_TYPEHASH = keccak256(OUTCOME_TYPE);
    bytes32 internal constant BALANCES_TYPEHASH = keccak256(BALANCES_TYPE);
    bytes32 internal constant STATE_TYPEHASH =
        keccak256(abi.encodePacked(STATE_TYPE, BALANCES_TYPE, OPEN_ORDER_TYPE, ORDER_TYPE, OUTCOME_TYPE));
    bytes32 internal constant BATCH_PRICE_TYPEHASH = keccak256("BatchPrice(uint32 market,uint64 batch,uint64 price)");
    bytes32 internal constant CHALLENGE_AUTHORIZATION_TYPEHASH =
        keccak256("ChallengeAuthorization(bytes32 channelId,address agent)");

    /// @dev keccak256 of the empty array: the EIP-712 encoding of a state without open orders.
    bytes32 internal constant EMPTY_ARRAY_HASH = keccak256("");

    function checkBalance(int256 value) internal pure returns (int256) {
        if (value > MAX_BALANCE || value < -MAX_BALANCE) revert ValueOutOfBounds();
        return value;
    }

    function checkNonNegativeBalance(uint256 value) internal pure returns (uint256) {
        if (value > uint256(MAX_BALANCE)) revert ValueOutOfBounds();
        return value;
    }

    function checkAmount(uint256 value) internal pure returns (uint256) {
        if (value > MAX_AMOUNT) revert ValueOutOfBounds();
        return value;
    }

    function checkUint32(uint256 value) internal pure returns (uint256) {
        if (value > MAX_UINT32) revert ValueOutOfBounds();
        return value;
    }

    function hashBalances(Balances calldata b) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                BALANCES_TYPEHASH,
                checkBalance(b.traderAvailable),
                checkNonNegativeBalance(b.traderLocked),
                checkBalance(b.brokerAvailable),
                checkNonNegativeBalance(b.brokerLocked),
                checkNonNegativeBalance(b.traderDeposit),
                checkNonNegativeBalance(b.brokerDeposit)
            )
        );
    }

    function hashOrder(Order calldata o) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                ORDER_TYPEHASH,
                o.channelId,
                o.trader,
                o.collateral,
                checkUint32(o.market),
                o.isBuy,
                checkAmount(o.amountSynthetic),
                checkAmount(o.amountCollateral),
                checkAmount(o.maxFee),
                checkAmount(o.nonce),
                checkUint32(o.expiration)
            )
        );
    }

    function hashOpenOrder(OpenOrder calldata o) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                OPEN_ORDER_TYPEHASH,
                hashOrder(o.order),
                keccak256(o.signature),
                checkAmount(o.filled),
                checkAmount(o.firstBatch)
            )
        );
    }

    function hashOutcome(Outcome calldata o) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(OUTCOME_TYPEHASH, checkBalance(o.position), checkNonNegativeBalance(o.fees), checkAmount(o.lastBatch))
        );
    }

    function hashOpenOrders(OpenOrder[] calldata orders) internal pure returns (bytes32) {
        uint256 n = orders.length;
        if (n == 0) return EMPTY_ARRAY_HASH;
        bytes32[] memory hashes = new bytes32[](n);
        for (uint256 i = 0; i < n; ++i) {
            hashes[i] = hashOpenOrder(orders[i]);
        }
        return keccak256(abi.encodePacked(hashes));
    }

    function hashOutcomes(Outcome[] calldata outcomes) internal pure returns (bytes32) {
        uint256 n = outcomes.length;
        bytes32[] memory hashes = new bytes32[](n);
        for (uint256 i = 0; i < n; ++i) {
            hashes[i] = hashOutcome(outcomes[i]);
        }
        return keccak256(abi.encodePacked(hashes));
    }

    /// @notice EIP-712 struct hash of a channel state (not yet combined with the domain).
    function hashState(State calldata s) internal pure returns (bytes32) {
        if (s.version > MAX_VERSION) revert ValueOutOfBounds();
        return keccak256(
            abi.encode(
                STATE_TYPEHASH,
                s.channelId,
                s.version,
                hashBalances(s.balances),
                hashOpenOrders(s.openOrders),
                hashOutcomes(s.outcomes),
                s.isFinal
            )
        );
    }

    function hashBatchPrice(BatchPrice calldata p) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(BATCH_PRICE_TYPEHASH, checkUint32(p.market), checkAmount(p.batch), checkAmount(p.price))
        );
    }

    function hashChallengeAuthorization(bytes32 channelId, address agent) internal pure returns (bytes32) {
        return keccak256(abi.encode(CHALLENGE_AUTHORIZATION_TYPEHASH, channelId, agent));
    }
}
