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

    // The EIP-712 type strings, hashed at compile time: each typehash is `keccak256` of one string
    // literal (adjacent literals are one literal), which the compiler folds into a constant. A
    // typehash built at run time (`keccak256(abi.encodePacked(...))`) would write the ~500-byte
    // type string to memory and hash it on every call. tests/contracts/test_hashing.py checks
    // every digest against the Python side, which derives the type strings from the field lists.
    bytes32 internal constant ORDER_TYPEHASH = keccak256(
        "Order(bytes32 channelId,address trader,address collateral,uint32 market,bool isBuy,uint64 amountSynthetic,uint64 amountCollateral,uint64 maxFee,uint64 nonce,uint32 expiration)"
    );
    bytes32 internal constant OPEN_ORDER_TYPEHASH = keccak256(
        "OpenOrder(Order order,bytes signature,uint64 filled,uint64 firstBatch)"
        "Order(bytes32 channelId,address trader,address collateral,uint32 market,bool isBuy,uint64 amountSynthetic,uint64 amountCollateral,uint64 maxFee,uint64 nonce,uint32 expiration)"
    );
    bytes32 internal constant OUTCOME_TYPEHASH = keccak256("Outcome(int64 position,uint64 fees,uint64 lastBatch)");
    bytes32 internal constant BALANCES_TYPEHASH = keccak256(
        "Balances(int64 traderAvailable,uint64 traderLocked,int64 brokerAvailable,uint64 brokerLocked,uint64 traderDeposit,uint64 brokerDeposit)"
    );
    bytes32 internal constant STATE_TYPEHASH = keccak256(
        "State(bytes32 channelId,uint64 version,Balances balances,OpenOrder[] openOrders,Outcome[] outcomes,bool isFinal)"
        "Balances(int64 traderAvailable,uint64 traderLocked,int64 brokerAvailable,uint64 brokerLocked,uint64 traderDeposit,uint64 brokerDeposit)"
        "OpenOrder(Order order,bytes signature,uint64 filled,uint64 firstBatch)"
        "Order(bytes32 channelId,address trader,address collateral,uint32 market,bool isBuy,uint64 amountSynthetic,uint64 amountCollateral,uint64 maxFee,uint64 nonce,uint32 expiration)"
        "Outcome(int64 position,uint64 fees,uint64 lastBatch)"
    );
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

    /// @dev Bounds of the six balances checked in one go, then the struct hashed where it lies in
    /// calldata (six static words: nothing to re-encode).
    function hashBalances(Balances calldata b) internal pure returns (bytes32 h) {
        bytes32 typeHash = BALANCES_TYPEHASH;
        bool outOfBounds;
        assembly ("memory-safe") {
            // A signed v is in [-MAX_BALANCE, MAX_BALANCE] exactly when v + MAX_BALANCE, as an
            // unsigned word, is at most 2 * MAX_BALANCE (anything else wraps above it).
            let maxBalance := 0x7fffffffffffffff
            let signedSpan := 0xfffffffffffffffe
            outOfBounds := or(
                or(gt(add(calldataload(b), maxBalance), signedSpan), gt(add(calldataload(add(b, 0x40)), maxBalance), signedSpan)),
                or(
                    or(gt(calldataload(add(b, 0x20)), maxBalance), gt(calldataload(add(b, 0x60)), maxBalance)),
                    or(gt(calldataload(add(b, 0x80)), maxBalance), gt(calldataload(add(b, 0xa0)), maxBalance))
                )
            )
            let ptr := mload(0x40)
            mstore(ptr, typeHash)
            calldatacopy(add(ptr, 0x20), b, 0xc0)
            h := keccak256(ptr, 0xe0)
        }
        if (outOfBounds) revert ValueOutOfBounds();
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

    /// @dev As `hashBalances`, for an outcome's three static words.
    function hashOutcome(Outcome calldata o) internal pure returns (bytes32 h) {
        bytes32 typeHash = OUTCOME_TYPEHASH;
        bool outOfBounds;
        assembly ("memory-safe") {
            let maxBalance := 0x7fffffffffffffff
            outOfBounds := or(
                gt(add(calldataload(o), maxBalance), 0xfffffffffffffffe),
                or(gt(calldataload(add(o, 0x20)), maxBalance), gt(calldataload(add(o, 0x40)), 0xffffffffffffffff))
            )
            let ptr := mload(0x40)
            mstore(ptr, typeHash)
            calldatacopy(add(ptr, 0x20), o, 0x60)
            h := keccak256(ptr, 0x80)
        }
        if (outOfBounds) revert ValueOutOfBounds();
    }

    /// @dev EIP-712 array hash: keccak256 of the concatenated element hashes, written once into
    /// a memory array and hashed in place (no `abi.encodePacked` copy).
    function hashOpenOrders(OpenOrder[] calldata orders) internal pure returns (bytes32 h) {
        uint256 n = orders.length;
        if (n == 0) return EMPTY_ARRAY_HASH;
        bytes32[] memory hashes = new bytes32[](n);
        for (uint256 i = 0; i < n; ++i) {
            hashes[i] = hashOpenOrder(orders[i]);
        }
        assembly ("memory-safe") {
            h := keccak256(add(hashes, 0x20), shl(5, n))
        }
    }

    /// @dev As `hashOpenOrders`, for the outcomes.
    function hashOutcomes(Outcome[] calldata outcomes) internal pure returns (bytes32 h) {
        uint256 n = outcomes.length;
        if (n == 0) return EMPTY_ARRAY_HASH;
        bytes32[] memory hashes = new bytes32[](n);
        for (uint256 i = 0; i < n; ++i) {
            hashes[i] = hashOutcome(outcomes[i]);
        }
        assembly ("memory-safe") {
            h := keccak256(add(hashes, 0x20), shl(5, n))
        }
    }

    /// @notice EIP-712 struct hash of a channel state (not yet combined with the domain).
    function hashState(State calldata s) internal pure returns (bytes32 h) {
        uint256 version = s.version;
        if (version > MAX_VERSION) revert ValueOutOfBounds();
        bytes32 typeHash = STATE_TYPEHASH;
        bytes32 channelId = s.channelId;
        bytes32 balancesHash = hashBalances(s.balances);
        bytes32 openOrdersHash = hashOpenOrders(s.openOrders);
        bytes32 outcomesHash = hashOutcomes(s.outcomes);
        bool isFinal = s.isFinal; // read by the ABI decoder, which rejects a dirty bool
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, typeHash)
            mstore(add(ptr, 0x20), channelId)
            mstore(add(ptr, 0x40), version)
            mstore(add(ptr, 0x60), balancesHash)
            mstore(add(ptr, 0x80), openOrdersHash)
            mstore(add(ptr, 0xa0), outcomesHash)
            mstore(add(ptr, 0xc0), isFinal)
            h := keccak256(ptr, 0xe0)
        }
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
