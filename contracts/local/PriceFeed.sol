// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {AggregatorV3Interface} from "../interfaces/AggregatorV3Interface.sol";

/// @title Chainlink-compatible price feed for local chains and tests
/// @notice The owner (the oracle agent) pushes answers; readers see the same interface as a
/// Chainlink data feed. Each push opens a new round stamped with the block time.
contract PriceFeed is AggregatorV3Interface, Ownable {
    struct Round {
        int256 answer;
        uint64 startedAt;
        uint64 updatedAt;
    }

    uint8 public immutable override decimals;
    string public override description;
    uint80 public latestRound;
    mapping(uint80 roundId => Round) internal _rounds;

    /// @notice Emitted on every new answer (Chainlink's event).
    event AnswerUpdated(int256 indexed current, uint256 indexed roundId, uint256 updatedAt);
    /// @notice Emitted when a round opens (Chainlink's event).
    event NewRound(uint256 indexed roundId, address indexed startedBy, uint256 startedAt);

    /// @notice The round has no answer.
    error NoDataPresent();

    /// @param decimals_ Decimals of the answers, e.g. 8 for a USD feed.
    /// @param description_ E.g. "XAU / USD".
    /// @param owner_ Who may push answers.
    constructor(uint8 decimals_, string memory description_, address owner_) Ownable(owner_) {
        decimals = decimals_;
        description = description_;
    }

    /// @notice Implementation version.
    function version() external pure override returns (uint256) {
        return 1;
    }

    /// @notice Push a new answer, stamped with the current block time.
    /// @param answer The price with `decimals` decimals.
    function pushAnswer(int256 answer) external onlyOwner {
        _pushAnswer(answer, block.timestamp);
    }

    /// @notice Push an answer with an explicit update time (to simulate a stale feed in tests).
    /// @param answer The price with `decimals` decimals.
    /// @param updatedAt When the answer was observed; not in the future.
    function pushAnswerAt(int256 answer, uint256 updatedAt) external onlyOwner {
        _pushAnswer(answer, updatedAt);
    }

    /// @inheritdoc AggregatorV3Interface
    function getRoundData(uint80 roundId)
        external
        view
        override
        returns (uint80, int256, uint256, uint256, uint80)
    {
        Round memory r = _rounds[roundId];
        if (r.updatedAt == 0) revert NoDataPresent();
        return (roundId, r.answer, r.startedAt, r.updatedAt, roundId);
    }

    /// @inheritdoc AggregatorV3Interface
    function latestRoundData() external view override returns (uint80, int256, uint256, uint256, uint80) {
        uint80 roundId = latestRound;
        Round memory r = _rounds[roundId];
        if (r.updatedAt == 0) revert NoDataPresent();
        return (roundId, r.answer, r.startedAt, r.updatedAt, roundId);
    }

    function _pushAnswer(int256 answer, uint256 updatedAt) internal {
        uint80 roundId = latestRound + 1;
        latestRound = roundId;
        _rounds[roundId] = Round(answer, uint64(updatedAt), uint64(updatedAt));
        emit NewRound(roundId, msg.sender, updatedAt);
        emit AnswerUpdated(answer, roundId, updatedAt);
    }
}
