// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Metadata} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Metadata.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

import {AggregatorV3Interface} from "./interfaces/AggregatorV3Interface.sol";
import {ChannelHashing} from "./ChannelHashing.sol";
import {BatchPrice, ChannelHeader, ChannelParams, Market, OpenOrder, Order, State} from "./ChannelTypes.sol";

/// @title Trading channel adjudicator
/// @notice Holds the ERC-20 collateral of every trader-broker channel, accepts the latest
/// co-signed state, runs disputes with a bounded challenge period, and pays out at conclusion,
/// settling synthetic positions at a Chainlink-compatible oracle price.
/// @dev Deadline rule (MISSION.md, "The channel on-chain", item 5). Let d be the channel's
/// challenge duration and t0 the time of the challenge.
///  - Refutation phase: a strictly newer co-signed state is accepted while now < t0 + d.
///    The counterparty of a challenger always has the whole phase (d) to answer it.
///  - Response window: every registration (challenge or refute) at time t sets the deadline to
///    t + d, so whoever did not register last keeps at least d before conclusion, whatever the
///    other side does and however late in the phase it acts.
///  - Bound: the last registration happens before t0 + d, so every dispute concludes by t0 + 2d.
/// Deposits are refused during a dispute, so for a registered state without open orders or
/// positions the payouts are already known: they are computed at registration and `conclude`
/// needs no state. A state with positions or open orders is registered by its fingerprint and
/// concluded with `concludeWithState`, at the oracle price.
/// Payouts are pushed at conclusion; a transfer the token refuses (a blacklisted recipient, say)
/// is credited to `withdrawable` instead, so one recipient can never block the other.
///
/// Binding batch prices (MISSION.md, "Batches" and "Slashing"):
///  - Evidence: until the deadline, anyone may submit broker-signed batch prices for the
///    registered state. A price of batch b strictly better than an open order's limit (the order
///    eligible in b, b after the last batch the state reflects in that market) fills the order's
///    remainder at that price at conclusion; per order the earliest such batch wins. Evidence
///    belongs to the registered state: a refute registers a new state and restarts the full
///    window d, so the other side always has d to submit evidence for the new state.
///  - Two prices: two different prices signed by one broker for one (market, batch) slash the
///    broker: from then on every channel of that broker concludes with the trader taking all
///    of the channel's funds, at once with `concludeSlashed`, or through any other conclusion.
///  - Left-out order: a co-signed state that reflects batch b while holding an unfilled order
///    that was eligible in b and strictly better than b's signed price proves the broker left
///    the order out: the trader takes the channel at once.
contract TradingChannelAdjudicator is EIP712, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice Life cycle of a channel.
    enum Stage {
        Open,
        Disputed,
        Concluded
    }

    /// @dev One storage slot per channel: what each party deposited and where the dispute stands.
    struct Channel {
        uint64 traderDeposit;
        uint64 brokerDeposit;
        Stage stage;
        uint40 disputeStart;
        uint40 deadline;
    }

    /// @notice What a dispute has registered.
    enum Kind {
        None,
        // A state with open orders or positions: `data` is its fingerprint (the low 160 bits of
        // its EIP-712 digest) and it concludes with `concludeWithState`.
        Fingerprint,
        // A state without open orders or positions: `data` is the trader's payout.
        Settled,
        // As Settled, and a party's deposit fell short of the state's: every deposit goes back.
        SettledUnderfunded,
        // `challengeWithoutState`: every deposit goes back unless a co-signed state refutes it.
        NoState
    }

    /// @dev One storage slot per dispute.
    struct Registration {
        Kind kind;
        uint48 version;
        uint160 data;
    }

    /// @notice What `getChannel` returns.
    struct ChannelStatus {
        Stage stage;
        uint256 traderDeposit;
        uint256 brokerDeposit;
        uint256 disputeStart;
        uint256 deadline;
        Kind kind;
        uint256 registeredVersion;
        uint256 data;
    }

    /// @notice Shortest challenge duration a channel may choose.
    uint256 public constant MIN_CHALLENGE_DURATION = 1 hours;
    /// @notice Longest challenge duration a channel may choose.
    uint256 public constant MAX_CHALLENGE_DURATION = 30 days;
    /// @notice Most markets one channel may trade.
    uint256 public constant MAX_MARKETS = 16;
    /// @notice Most open orders one state may hold.
    uint256 public constant MAX_OPEN_ORDERS = 64;
    /// @notice After the deadline plus this delay, a position whose oracle gives no fresh price
    /// settles at the feed's latest valid answer however old, or at zero value if there is none,
    /// so that a dead feed cannot lock a channel's funds forever.
    uint256 public constant ORACLE_FALLBACK_DELAY = 7 days;
    /// @notice Gas given to each payout transfer at conclusion; a token that needs more is paid
    /// through `withdraw` instead.
    uint256 public constant PAYOUT_TRANSFER_GAS = 100_000;
    /// @notice Largest number of decimals accepted from a feed or from the collateral token.
    uint256 public constant MAX_DECIMALS = 18;
    /// @notice Cap on deposits per channel (both parties together): balances stay below 2^63.
    uint256 public constant MAX_CHANNEL_HOLDINGS = 2 ** 63 - 1;

    /// @notice Most batch prices one `submitEvidence` call accepts.
    uint256 public constant MAX_EVIDENCE_PRICES = 64;

    uint256 internal constant MAX_ORACLE_ANSWER = 2 ** 128 - 1;
    uint256 internal constant SECONDS_PER_HOUR = 3600;
    uint256 internal constant DECIMALS_NOT_READ = type(uint256).max;
    uint256 internal constant DECIMALS_UNREADABLE = MAX_DECIMALS + 1;
    /// @dev What must be left before a payout call so that the call really gets its stipend
    /// (EIP-150 forwards at most 63/64 of what is left), with room for the call itself.
    uint256 internal constant PAYOUT_GAS_REQUIRED = PAYOUT_TRANSFER_GAS + PAYOUT_TRANSFER_GAS / 63 + 5_000;

    /// @dev Bit offsets of the fields of a packed `Channel` slot (Solidity packs from the low bits).
    uint256 internal constant BROKER_DEPOSIT_OFFSET = 64;
    uint256 internal constant STAGE_OFFSET = 128;
    uint256 internal constant DISPUTE_START_OFFSET = 136;
    uint256 internal constant DEADLINE_OFFSET = 176;
    /// @dev Bit offsets of the fields of a packed `Registration` slot.
    uint256 internal constant REGISTRATION_VERSION_OFFSET = 8;
    uint256 internal constant REGISTRATION_DATA_OFFSET = 56;

    mapping(bytes32 channelId => Channel) internal _channels;
    mapping(bytes32 channelId => Registration) internal _registrations;

    /// @dev Evidence of a dispute, per channel: key `version << 8 | orderIndex` (the registered
    /// state's version and the open order's index in it), value `batch << 64 | price`, the earliest
    /// crossing batch known for that order and its signed price (0: none; batches are >= 1 here,
    /// since evidence only counts for batches after the state's last batch).
    mapping(bytes32 channelId => mapping(uint256 key => uint256)) internal _evidence;

    /// @notice When `broker` was proven to have signed two prices for one batch (0: never).
    mapping(address broker => uint256) public slashedAt;

    /// @notice Payouts the token refused to push, claimable with `withdraw`.
    mapping(address token => mapping(address account => uint256)) public withdrawable;

    /// @notice Whether `participant` revoked the challenge authorizations it signed for `agent` in
    /// the channel (`revokeChallengeAuthorizations`): the agent can no longer challenge with them.
    mapping(bytes32 channelId => mapping(address agent => mapping(address participant => bool))) public
        authorizationRevoked;

    // ------------------------------------------------------------------ events

    /// @notice `amount` (what actually arrived) was deposited to `participant`'s side.
    event Deposited(bytes32 indexed channelId, address indexed participant, uint256 amount, uint256 participantTotal);
    /// @notice A dispute started with a co-signed state.
    event Challenged(bytes32 indexed channelId, address indexed challenger, uint256 version, uint256 deadline);
    /// @notice A dispute started without any co-signed state (every deposit goes back unless refuted).
    event ChallengedWithoutState(bytes32 indexed channelId, address indexed challenger, uint256 deadline);
    /// @notice A strictly newer co-signed state replaced the registered one.
    event Refuted(bytes32 indexed channelId, address indexed refuter, uint256 version, uint256 deadline);
    /// @notice The channel closed cooperatively with a final state. `underfunded` as in `Concluded`.
    event Closed(bytes32 indexed channelId, uint256 version, uint256 toTrader, uint256 toBroker, bool underfunded);
    /// @notice A dispute concluded after its deadline. `underfunded` is true when a party's
    /// deposit fell short of what the state accounts for, in which case every deposit went back.
    event Concluded(bytes32 indexed channelId, uint256 toTrader, uint256 toBroker, bool underfunded);
    /// @notice A market's position was valued with the fallback rule (see ORACLE_FALLBACK_DELAY).
    event OracleFallbackUsed(bytes32 indexed channelId, uint256 indexed market, uint256 price);
    /// @notice The token refused a payout; it is credited to `withdrawable`.
    event PayoutDeferred(address indexed token, address indexed account, uint256 amount);
    /// @notice A deferred payout was withdrawn.
    event Withdrawn(address indexed token, address indexed account, address to, uint256 amount);
    /// @notice `participant` revoked the challenge authorizations it signed for `agent`.
    event ChallengeAuthorizationRevoked(bytes32 indexed channelId, address indexed agent, address indexed participant);
    /// @notice Batch `batch` of `market` at `price` is now the earliest known batch crossing open
    /// order `orderIndex` of the registered state `version`: the order fills at that price.
    event EvidenceAccepted(
        bytes32 indexed channelId, uint256 version, uint256 orderIndex, uint256 market, uint256 batch, uint256 price
    );
    /// @notice At conclusion, open order `orderIndex` filled `amount` synthetic units at the price
    /// of its evidence, moving `collateral` and charging `fee`.
    event OrderFilledByEvidence(
        bytes32 indexed channelId, uint256 orderIndex, uint256 batch, uint256 price, uint256 amount, uint256 collateral, uint256 fee
    );
    /// @notice `broker` signed `firstPrice` and `secondPrice` for one batch: every channel of
    /// the broker now concludes with the trader taking all of its funds.
    event BrokerSlashed(
        address indexed broker, uint256 market, uint256 batch, uint256 firstPrice, uint256 secondPrice, address prover
    );
    /// @notice A co-signed state proved that the broker left out open order `orderIndex`, crossed
    /// by batch `batch` at `price`: the trader takes the channel.
    event LeftOutOrderProven(bytes32 indexed channelId, uint256 orderIndex, uint256 market, uint256 batch, uint256 price);

    // ------------------------------------------------------------------ errors

    /// @notice Trader or broker is the zero address, or they are the same address.
    error InvalidParticipants(address trader, address broker);
    /// @notice The collateral token is the zero address.
    error InvalidToken();
    /// @notice The challenge duration is outside [MIN_CHALLENGE_DURATION, MAX_CHALLENGE_DURATION].
    error ChallengeDurationOutOfRange(uint256 duration);
    /// @notice More than MAX_MARKETS markets.
    error TooManyMarkets(uint256 count);
    /// @notice The address is neither the trader nor the broker of the channel.
    error NotParticipant(address account);
    /// @notice A deposit of zero, or one that delivered nothing.
    error ZeroDeposit();
    /// @notice The deposit would take the channel's holdings above MAX_CHANNEL_HOLDINGS.
    error DepositOutOfBounds(uint256 holdings);
    /// @notice The channel is in a dispute.
    error ChannelDisputed(bytes32 channelId);
    /// @notice The channel has concluded; nothing more can happen to it.
    error ChannelConcluded(bytes32 channelId);
    /// @notice The channel is not in a dispute.
    error ChannelNotDisputed(bytes32 channelId);
    /// @notice The state belongs to another channel.
    error WrongChannel(bytes32 expected, bytes32 actual);
    /// @notice The state has a different number of outcomes than the channel has markets.
    error OutcomeCountMismatch(uint256 outcomes, uint256 markets);
    /// @notice The state holds more than MAX_OPEN_ORDERS open orders.
    error TooManyOpenOrders(uint256 count);
    /// @notice The signature is not 65 bytes or does not recover to any address.
    error MalformedSignature();
    /// @notice The signature's s value is in the upper half of the curve order (malleable).
    error MalleableSignature();
    /// @notice The signature recovers to someone other than the expected signer.
    error WrongSigner(address expected, address recovered);
    /// @notice The caller is not a participant and carries no valid authorisation of one.
    error NotAuthorized(address caller);
    /// @notice `signer` revoked the challenge authorizations it signed for `agent` in this channel.
    error AuthorizationRevoked(address agent, address signer);
    /// @notice The caller revoked its authorizations for `agent` in this channel already.
    error AuthorizationAlreadyRevoked(address agent);
    /// @notice The state is not marked final.
    error StateNotFinal();
    /// @notice A final state must have no open orders and no positions.
    error FinalStateNotSettled();
    /// @notice The state is not strictly newer than the registered one.
    error VersionNotNewer(uint256 registeredVersion, uint256 version);
    /// @notice The refutation phase ended at `refutationEnd`.
    error RefutationPhaseOver(uint256 refutationEnd);
    /// @notice The dispute's deadline has not passed yet.
    error DeadlineNotReached(uint256 deadline);
    /// @notice The state given is not the registered one.
    error StateMismatch();
    /// @notice The registered state has open orders or positions: use `concludeWithState`.
    error StateRequired();
    /// @notice The registered state needs no state to conclude: use `conclude`.
    error StateNotRequired();
    /// @notice No fresh, valid oracle price for market `market`, and the fallback delay has not passed.
    error OraclePriceUnavailable(uint256 market, uint256 fallbackAt);
    /// @notice Too little gas left to give a payout transfer its stipend: retry with a higher gas limit.
    error InsufficientGasForPayout();
    /// @notice Nothing is credited to `account` in `token`.
    error NothingToWithdraw(address token, address account);
    /// @notice Evidence is accepted only until the deadline, which passed at `deadline`.
    error EvidencePeriodOver(uint256 deadline);
    /// @notice The registered state has no open orders for evidence to fill.
    error NoOpenOrders();
    /// @notice `prices` and `signatures` differ in length, or there are none or too many.
    error EvidenceCountInvalid(uint256 prices, uint256 signatures);
    /// @notice The market is not one of the channel's.
    error UnknownMarket(uint256 market);
    /// @notice No price submitted is earlier than what is known for any order it crosses.
    error EvidenceChangesNothing();
    /// @notice The broker has already been slashed.
    error BrokerAlreadySlashed(address broker);
    /// @notice The broker has not been slashed.
    error BrokerNotSlashed(address broker);
    /// @notice Two prices only conflict when they are for the same market and batch.
    error DifferentBatches();
    /// @notice The two prices are the same: there is no conflict.
    error SamePrice();
    /// @notice The state holds no open order at `orderIndex`.
    error OrderIndexOutOfRange(uint256 orderIndex, uint256 openOrders);
    /// @notice The order was not left out by that price; `reason` says which condition fails:
    /// 1 another market, 2 the state does not reflect the batch, 3 not eligible in the batch,
    /// 4 already filled, 5 not strictly better than the price, 6 expired.
    error OrderNotLeftOut(uint8 reason);

    constructor() EIP712("TradingChannels", "1") {}

    // ------------------------------------------------------------------ funding

    /// @notice Deposit collateral to one side of a channel. Anyone may pay; the deposit is
    /// credited to `participant` and, if the concluded state does not account for it, goes back
    /// to `participant`. Each side has its own counter, so two deposits never race.
    /// @dev Credits the amount that actually arrived, so a token that takes a fee on transfer is
    /// accounted for exactly. The caller must have approved `amount` to this contract.
    /// @param header The channel's parameters (markets by count and hash).
    /// @param participant The trader or the broker.
    /// @param amount Token base units to transfer from the caller.
    function deposit(ChannelHeader calldata header, address participant, uint256 amount) external nonReentrant {
        bytes32 channelId = _channelId(header);
        address trader;
        address broker;
        address token;
        assembly ("memory-safe") {
            // Already checked clean by `_channelId`.
            trader := calldataload(header)
            broker := calldataload(add(header, 0x20))
            token := calldataload(add(header, 0x40))
        }
        // One branch for the checks that pass (`_refuseDeposit` says which one failed).
        bool toTrader = participant == trader;
        bool isParty;
        bool refused;
        assembly ("memory-safe") {
            isParty := or(toTrader, eq(participant, broker))
            refused := or(iszero(isParty), iszero(amount))
        }
        if (refused) _refuseDeposit(participant, isParty);
        // The channel's packed slot, read once and written once (see `Channel` for the layout).
        uint256 slot = _channelSlot(channelId);
        uint256 word;
        assembly ("memory-safe") {
            word := sload(slot)
        }
        Stage stage = Stage(uint8(word >> STAGE_OFFSET));
        if (stage != Stage.Open) _requireOpen(channelId, stage);

        // Fee-on-transfer tokens: credit what actually arrived.
        uint256 balanceBefore = _balanceOfSelf(token);
        IERC20(token).safeTransferFrom(msg.sender, address(this), amount);
        uint256 balanceAfter = _balanceOfSelf(token);

        uint256 traderDeposit = uint64(word);
        uint256 brokerDeposit = uint64(word >> BROKER_DEPOSIT_OFFSET);
        uint256 received;
        uint256 holdings;
        uint256 cap = MAX_CHANNEL_HOLDINGS;
        unchecked {
            // Wraps only when the balance fell or grew by nearly 2^256: both refused just below.
            received = balanceAfter - balanceBefore;
            holdings = traderDeposit + brokerDeposit + received;
        }
        assembly ("memory-safe") {
            refused := or(iszero(gt(balanceAfter, balanceBefore)), or(gt(holdings, cap), lt(holdings, received)))
        }
        if (refused) _refuseReceipt(balanceBefore, balanceAfter, traderDeposit + brokerDeposit);
        // Both deposits and their sum stay below 2^63 (checked just above), so the packed 64-bit
        // field the amount is added to cannot carry into its neighbour.
        uint256 shift = toTrader ? 0 : BROKER_DEPOSIT_OFFSET;
        unchecked {
            word += received << shift;
        }
        assembly ("memory-safe") {
            sstore(slot, word)
        }
        emit Deposited(channelId, participant, received, uint64(word >> shift));
    }

    /// @dev Why `deposit` refused its arguments: not a party, else a zero amount.
    function _refuseDeposit(address participant, bool isParty) internal pure {
        if (!isParty) revert NotParticipant(participant);
        revert ZeroDeposit();
    }

    /// @dev Why `deposit` refused what arrived, with checked arithmetic: a balance that fell
    /// (panic 0x11), nothing received, or holdings above the cap (panic 0x11 if they overflow).
    function _refuseReceipt(uint256 balanceBefore, uint256 balanceAfter, uint256 held) internal pure {
        uint256 received = balanceAfter - balanceBefore;
        if (received == 0) revert ZeroDeposit();
        revert DepositOutOfBounds(held + received);
    }

    // ------------------------------------------------------------------ cooperative close

    /// @notice Close the channel at once with a final state signed by both parties, and pay out.
    /// Allowed while the channel is open, and during a dispute when the final state is newer
    /// than the registered one.
    /// @param header The channel's parameters (markets by count and hash).
    /// @param state A state with `isFinal` set, no open orders and no positions.
    /// @param traderSignature The trader's EIP-712 signature of `state`.
    /// @param brokerSignature The broker's EIP-712 signature of `state`.
    function close(
        ChannelHeader calldata header,
        State calldata state,
        bytes calldata traderSignature,
        bytes calldata brokerSignature
    ) external nonReentrant {
        bytes32 channelId = _channelId(header);
        if (!state.isFinal) revert StateNotFinal();
        if (!_isSettled(state)) revert FinalStateNotSettled();
        Channel memory c = _channels[channelId];
        if (c.stage == Stage.Concluded) revert ChannelConcluded(channelId);
        if (c.stage == Stage.Disputed) {
            Registration memory r = _registrations[channelId];
            if (r.kind != Kind.NoState && state.version <= r.version) revert VersionNotNewer(r.version, state.version);
            delete _registrations[channelId];
        }
        _verifyCoSigned(channelId, header.trader, header.broker, header.marketCount, state, traderSignature, brokerSignature);

        (uint256 toTrader, bool underfunded) = _settledPayout(state, c);
        if (slashedAt[header.broker] != 0) (toTrader, underfunded) = (uint256(c.traderDeposit) + c.brokerDeposit, false);
        uint256 toBroker = uint256(c.traderDeposit) + c.brokerDeposit - toTrader;
        _markConcluded(channelId, c);
        emit Closed(channelId, state.version, toTrader, toBroker, underfunded);
        _pay(header.token, header.trader, toTrader);
        _pay(header.token, header.broker, toBroker);
    }

    // ------------------------------------------------------------------ disputes

    /// @notice Start a dispute by registering a co-signed state; the deadline is now plus the
    /// channel's challenge duration. Callable by the trader, the broker, or anyone carrying a
    /// participant's EIP-712 `ChallengeAuthorization` for this channel and the caller's address.
    /// @param header The channel's parameters (markets by count and hash).
    /// @param state Any state both parties signed.
    /// @param traderSignature The trader's EIP-712 signature of `state`.
    /// @param brokerSignature The broker's EIP-712 signature of `state`.
    /// @param authorization Empty for a participant; otherwise a participant's signature of
    /// ChallengeAuthorization{channelId, agent: msg.sender}.
    function challenge(
        ChannelHeader calldata header,
        State calldata state,
        bytes calldata traderSignature,
        bytes calldata brokerSignature,
        bytes calldata authorization
    ) external nonReentrant {
        bytes32 channelId = _channelId(header);
        _requireChallenger(channelId, header, authorization);
        Channel memory c = _channels[channelId];
        _requireOpen(channelId, c.stage);
        bytes32 digest = _verifyCoSigned(channelId, header.trader, header.broker, header.marketCount, state, traderSignature, brokerSignature);

        uint256 deadline = block.timestamp + header.challengeDuration;
        c.stage = Stage.Disputed;
        c.disputeStart = uint40(block.timestamp);
        c.deadline = uint40(deadline);
        _storeChannel(channelId, c);
        _storeRegistration(channelId, _registration(state, digest, c));
        emit Challenged(channelId, msg.sender, state.version, deadline);
    }

    /// @notice Start a dispute without any co-signed state. Unless someone refutes it with a
    /// co-signed state, every deposit goes back to its participant at conclusion: funds deposited
    /// before the version-0 state was co-signed are never locked.
    /// @param header The channel's parameters (markets by count and hash).
    /// @param authorization As in `challenge`.
    function challengeWithoutState(ChannelHeader calldata header, bytes calldata authorization)
        external
        nonReentrant
    {
        bytes32 channelId = _channelId(header);
        _requireChallenger(channelId, header, authorization);
        Channel memory c = _channels[channelId];
        _requireOpen(channelId, c.stage);

        uint256 deadline = block.timestamp + header.challengeDuration;
        c.stage = Stage.Disputed;
        c.disputeStart = uint40(block.timestamp);
        c.deadline = uint40(deadline);
        _storeChannel(channelId, c);
        _storeRegistration(channelId, Registration(Kind.NoState, 0, 0));
        emit ChallengedWithoutState(channelId, msg.sender, deadline);
    }

    /// @notice Replace the registered state with a strictly newer co-signed one. Anyone may
    /// refute (it only ever moves the channel forward), while the refutation phase lasts
    /// (challenge time + challenge duration); the deadline becomes now + challenge duration.
    /// @param header The channel's parameters (markets by count and hash).
    /// @param state A co-signed state with a higher version than the registered one.
    /// @param traderSignature The trader's EIP-712 signature of `state`.
    /// @param brokerSignature The broker's EIP-712 signature of `state`.
    function refute(
        ChannelHeader calldata header,
        State calldata state,
        bytes calldata traderSignature,
        bytes calldata brokerSignature
    ) external nonReentrant {
        bytes32 channelId = _channelId(header);
        Channel memory c = _channels[channelId];
        _requireDisputed(channelId, c);
        uint256 refutationEnd = uint256(c.disputeStart) + header.challengeDuration;
        if (block.timestamp >= refutationEnd) revert RefutationPhaseOver(refutationEnd);
        Registration memory r = _registrations[channelId];
        if (r.kind != Kind.NoState && state.version <= r.version) revert VersionNotNewer(r.version, state.version);
        bytes32 digest = _verifyCoSigned(channelId, header.trader, header.broker, header.marketCount, state, traderSignature, brokerSignature);

        uint256 deadline = block.timestamp + header.challengeDuration;
        c.deadline = uint40(deadline);
        _storeChannel(channelId, c);
        _storeRegistration(channelId, _registration(state, digest, c));
        emit Refuted(channelId, msg.sender, state.version, deadline);
    }

    /// @notice After the deadline, anyone may conclude a dispute whose registered state has no
    /// open orders and no positions (or that registered no state): both payouts are pushed.
    /// @param header The channel's parameters (markets by count and hash).
    function conclude(ChannelHeader calldata header) external nonReentrant {
        bytes32 channelId = _channelId(header);
        Channel memory c = _channels[channelId];
        _requireDeadlinePassed(channelId, c);
        Registration memory r = _registrations[channelId];
        uint256 toTrader;
        bool underfunded;
        if (r.kind == Kind.Settled || r.kind == Kind.SettledUnderfunded) {
            toTrader = r.data;
            underfunded = r.kind == Kind.SettledUnderfunded;
        } else if (r.kind == Kind.NoState) {
            toTrader = c.traderDeposit;
        } else {
            revert StateRequired();
        }
        _finish(channelId, header.trader, header.broker, header.token, c, toTrader, underfunded);
    }

    /// @notice After the deadline, anyone may conclude a dispute whose registered state has open
    /// orders or positions: positions are valued at the oracle price, the locked collateral of
    /// open orders returns to the trader, deposits the state does not account for return to
    /// their participant, and both payouts are pushed.
    /// @param params The channel's parameters, markets in full.
    /// @param state The registered state.
    function concludeWithState(ChannelParams calldata params, State calldata state) external nonReentrant {
        ChannelHeader memory header = _header(params);
        bytes32 channelId = _channelIdOf(header);
        Channel memory c = _channels[channelId];
        _requireDeadlinePassed(channelId, c);
        Registration memory r = _registrations[channelId];
        if (r.kind != Kind.Fingerprint) revert StateNotRequired();
        if (state.channelId != channelId) revert WrongChannel(channelId, state.channelId);
        if (uint160(uint256(_hashTypedDataV4(ChannelHashing.hashState(state)))) != r.data) revert StateMismatch();

        uint256 toTrader;
        bool underfunded;
        // A slashed broker's channel pays everything to the trader (in `_finish`): no oracle needed.
        if (slashedAt[params.broker] == 0) {
            (toTrader, underfunded) = _payoutWithPositions(channelId, params, state, c, r.version);
        }
        _finish(channelId, params.trader, params.broker, params.token, c, toTrader, underfunded);
    }

    // ------------------------------------------------------------------ binding batch prices

    /// @notice Submit broker-signed batch prices as evidence for the registered state, until the
    /// deadline. A price of batch b crosses an open order when the order is eligible in b
    /// (`firstBatch <= b`), the state does not reflect b (`b > lastBatch` of the order's market),
    /// the order is not completely filled, and its limit is strictly better than the price (it
    /// would also accept the next price away from it: orders exactly at the price may have been
    /// rationed and do not count). The order's remainder then fills at that price at conclusion,
    /// with the fee the order allows. Per order the earliest crossing batch wins, whoever submits
    /// it and in whatever order. A first crossing counts only while the order has not expired
    /// (the adjudicator knows block times, not batch times, and an unexpired order was unexpired
    /// at every past batch); once an order has evidence, an earlier batch always replaces it.
    /// @param params The channel's parameters, markets in full (for their resolutions).
    /// @param state The registered state.
    /// @param prices Batch prices signed by the channel's broker (at most MAX_EVIDENCE_PRICES).
    /// @param signatures The broker's EIP-712 signature of each price.
    function submitEvidence(
        ChannelParams calldata params,
        State calldata state,
        BatchPrice[] calldata prices,
        bytes[] calldata signatures
    ) external nonReentrant {
        bytes32 channelId = _channelIdOf(_header(params));
        Channel memory c = _channels[channelId];
        _requireDisputed(channelId, c);
        if (block.timestamp >= c.deadline) revert EvidencePeriodOver(c.deadline);
        Registration memory r = _registrations[channelId];
        if (r.kind != Kind.Fingerprint || state.openOrders.length == 0) revert NoOpenOrders();
        if (state.channelId != channelId) revert WrongChannel(channelId, state.channelId);
        if (uint160(uint256(_hashTypedDataV4(ChannelHashing.hashState(state)))) != r.data) revert StateMismatch();
        uint256 count = prices.length;
        if (count == 0 || count != signatures.length || count > MAX_EVIDENCE_PRICES) {
            revert EvidenceCountInvalid(count, signatures.length);
        }

        bool changed;
        for (uint256 j = 0; j < count; ++j) {
            BatchPrice calldata price = prices[j];
            _requireBrokerSigned(params.broker, price, signatures[j]);
            uint256 m = _marketIndex(params.markets, price.market);
            if (price.batch <= state.outcomes[m].lastBatch) continue; // the state reflects it already
            uint256 resolution = params.markets[m].resolution;
            for (uint256 i = 0; i < state.openOrders.length; ++i) {
                OpenOrder calldata o = state.openOrders[i];
                if (
                    o.order.market != price.market || o.firstBatch > price.batch || o.filled >= o.order.amountSynthetic
                        || !_strictlyBetter(o.order, price.price, resolution)
                ) continue;
                uint256 key = (uint256(r.version) << 8) | i;
                uint256 known = _evidence[channelId][key];
                if (known == 0) {
                    if (block.timestamp >= o.order.expiration * SECONDS_PER_HOUR) continue;
                } else if (known >> 64 <= price.batch) {
                    continue;
                }
                _evidence[channelId][key] = (price.batch << 64) | price.price;
                changed = true;
                emit EvidenceAccepted(channelId, r.version, i, price.market, price.batch, price.price);
            }
        }
        if (!changed) revert EvidenceChangesNothing();
    }

    /// @notice Prove that `broker` signed two different prices for the same market and batch.
    /// Anyone may prove it, once. From then on every channel of the broker that has not concluded
    /// concludes with the trader taking all of the channel's funds (seed 001).
    /// @param broker The broker who signed both prices.
    /// @param first One batch price.
    /// @param firstSignature The broker's EIP-712 signature of `first`.
    /// @param second Another price for the same market and batch.
    /// @param secondSignature The broker's EIP-712 signature of `second`.
    function proveTwoPrices(
        address broker,
        BatchPrice calldata first,
        bytes calldata firstSignature,
        BatchPrice calldata second,
        bytes calldata secondSignature
    ) external nonReentrant {
        if (slashedAt[broker] != 0) revert BrokerAlreadySlashed(broker);
        if (first.market != second.market || first.batch != second.batch) revert DifferentBatches();
        if (first.price == second.price) revert SamePrice();
        _requireBrokerSigned(broker, first, firstSignature);
        _requireBrokerSigned(broker, second, secondSignature);
        slashedAt[broker] = block.timestamp;
        emit BrokerSlashed(broker, first.market, first.batch, first.price, second.price, msg.sender);
    }

    /// @notice Conclude a channel of a slashed broker at once: the trader gets all of its funds.
    /// Anyone may call it, whether the channel is open or in a dispute.
    /// @param header The channel's parameters (markets by count and hash).
    function concludeSlashed(ChannelHeader calldata header) external nonReentrant {
        bytes32 channelId = _channelId(header);
        if (slashedAt[header.broker] == 0) revert BrokerNotSlashed(header.broker);
        Channel memory c = _channels[channelId];
        if (c.stage == Stage.Concluded) revert ChannelConcluded(channelId);
        _finish(channelId, header.trader, header.broker, header.token, c, 0, false);
    }

    /// @notice Prove that the broker left out an order: a co-signed state reflects batch b in the
    /// order's market (`lastBatch >= b`) while holding the order, eligible in b
    /// (`firstBatch <= b`), not completely filled, unexpired, and strictly better than b's
    /// broker-signed price. The trader takes all of the channel's funds at once. Anyone may prove
    /// it while the channel has not concluded.
    /// @param params The channel's parameters, markets in full.
    /// @param state Any state both parties signed.
    /// @param traderSignature The trader's EIP-712 signature of `state`.
    /// @param brokerSignature The broker's EIP-712 signature of `state`.
    /// @param orderIndex The left-out order's index in `state.openOrders`.
    /// @param price The broker-signed price of batch b in the order's market.
    /// @param priceSignature The broker's EIP-712 signature of `price`.
    function proveLeftOutOrder(
        ChannelParams calldata params,
        State calldata state,
        bytes calldata traderSignature,
        bytes calldata brokerSignature,
        uint256 orderIndex,
        BatchPrice calldata price,
        bytes calldata priceSignature
    ) external nonReentrant {
        ChannelHeader memory header = _header(params);
        bytes32 channelId = _channelIdOf(header);
        Channel memory c = _channels[channelId];
        if (c.stage == Stage.Concluded) revert ChannelConcluded(channelId);
        _verifyCoSigned(channelId, header.trader, header.broker, header.marketCount, state, traderSignature, brokerSignature);
        if (orderIndex >= state.openOrders.length) revert OrderIndexOutOfRange(orderIndex, state.openOrders.length);
        _requireBrokerSigned(params.broker, price, priceSignature);
        OpenOrder calldata o = state.openOrders[orderIndex];
        if (o.order.market != price.market) revert OrderNotLeftOut(1);
        uint256 m = _marketIndex(params.markets, price.market);
        if (state.outcomes[m].lastBatch < price.batch) revert OrderNotLeftOut(2);
        if (o.firstBatch > price.batch) revert OrderNotLeftOut(3);
        if (o.filled >= o.order.amountSynthetic) revert OrderNotLeftOut(4);
        if (!_strictlyBetter(o.order, price.price, params.markets[m].resolution)) revert OrderNotLeftOut(5);
        if (block.timestamp >= o.order.expiration * SECONDS_PER_HOUR) revert OrderNotLeftOut(6);

        emit LeftOutOrderProven(channelId, orderIndex, price.market, price.batch, price.price);
        _finish(channelId, params.trader, params.broker, params.token, c, uint256(c.traderDeposit) + c.brokerDeposit, false);
    }

    /// @notice Revoke the challenge authorizations the caller signed for `agent` in this channel
    /// (a watchtower it no longer uses, or whose key leaked): `agent` can no longer challenge with
    /// them, now or later. Only a participant revokes, and only what it signed itself: the other
    /// participant's agent keeps its authorizations. An authorization cannot be re-issued to the
    /// same agent in the same channel.
    /// @param header The channel's parameters (markets by count and hash).
    /// @param agent The address the authorizations were signed for.
    function revokeChallengeAuthorizations(ChannelHeader calldata header, address agent) external nonReentrant {
        bytes32 channelId = _channelId(header);
        if (msg.sender != header.trader && msg.sender != header.broker) revert NotParticipant(msg.sender);
        if (authorizationRevoked[channelId][agent][msg.sender]) revert AuthorizationAlreadyRevoked(agent);
        authorizationRevoked[channelId][agent][msg.sender] = true;
        emit ChallengeAuthorizationRevoked(channelId, agent, msg.sender);
    }

    /// @notice Pay out a payout the token refused to push at conclusion. Anyone may trigger the
    /// payment to `account` itself; only `account` may send it elsewhere.
    /// @param token The collateral token.
    /// @param account Whose credit to pay.
    /// @param to Recipient (must be `account` unless the caller is `account`).
    function withdraw(address token, address account, address to) external nonReentrant {
        if (msg.sender != account && to != account) revert NotAuthorized(msg.sender);
        uint256 amount = withdrawable[token][account];
        if (amount == 0) revert NothingToWithdraw(token, account);
        withdrawable[token][account] = 0;
        emit Withdrawn(token, account, to, amount);
        IERC20(token).safeTransfer(to, amount);
    }

    // ------------------------------------------------------------------ views

    /// @notice The channel id of `header`, after checking it as every function does.
    function channelId(ChannelHeader calldata header) external view returns (bytes32) {
        return _channelId(header);
    }

    /// @notice The header of `params`: its markets reduced to their count and hash.
    function headerOf(ChannelParams calldata params) external pure returns (ChannelHeader memory) {
        return _header(params);
    }

    /// @notice Where a channel stands on-chain.
    function getChannel(bytes32 id) external view returns (ChannelStatus memory status) {
        Channel memory c = _channels[id];
        Registration memory r = _registrations[id];
        status.stage = c.stage;
        status.traderDeposit = c.traderDeposit;
        status.brokerDeposit = c.brokerDeposit;
        status.disputeStart = c.disputeStart;
        status.deadline = c.deadline;
        status.kind = r.kind;
        status.registeredVersion = r.version;
        status.data = r.data;
    }

    /// @notice The evidence known for open order `orderIndex` of registered state `version`:
    /// the earliest crossing batch and its price (both 0 when there is none).
    function evidenceOf(bytes32 id, uint256 version, uint256 orderIndex)
        external
        view
        returns (uint256 batch, uint256 price)
    {
        if (version > ChannelHashing.MAX_VERSION || orderIndex >= MAX_OPEN_ORDERS) return (0, 0);
        uint256 known = _evidence[id][(version << 8) | orderIndex];
        return (known >> 64, uint64(known));
    }

    /// @notice EIP-712 digest of a state under this adjudicator's domain.
    function stateDigest(State calldata state) external view returns (bytes32) {
        return _hashTypedDataV4(ChannelHashing.hashState(state));
    }

    /// @notice EIP-712 digest of an order under this adjudicator's domain.
    function orderDigest(Order calldata order) external view returns (bytes32) {
        return _hashTypedDataV4(ChannelHashing.hashOrder(order));
    }

    /// @notice EIP-712 digest of a batch price under this adjudicator's domain.
    function batchPriceDigest(BatchPrice calldata price) external view returns (bytes32) {
        return _hashTypedDataV4(ChannelHashing.hashBatchPrice(price));
    }

    /// @notice EIP-712 digest of a challenge authorisation under this adjudicator's domain.
    function challengeAuthorizationDigest(bytes32 id, address agent) external view returns (bytes32) {
        return _hashTypedDataV4(ChannelHashing.hashChallengeAuthorization(id, agent));
    }

    // ------------------------------------------------------------------ internals

    function _header(ChannelParams calldata p) internal pure returns (ChannelHeader memory) {
        return ChannelHeader(
            p.trader,
            p.broker,
            p.token,
            p.challengeDuration,
            p.nonce,
            p.markets.length,
            keccak256(abi.encode(p.markets))
        );
    }

    /// @dev The channel id of a header in calldata, after checking it (see `_checkHeader`). The
    /// header's seven words are hashed where they lie, after its three addresses are checked
    /// clean as the ABI decoder would (dirty upper bits revert without data), so the hashed words
    /// are exactly the checked values. The checks that pass cost one branch.
    function _channelId(ChannelHeader calldata h) internal view returns (bytes32 id) {
        address trader;
        address broker;
        address token;
        uint256 challengeDuration;
        uint256 marketCount;
        uint256 minDuration = MIN_CHALLENGE_DURATION;
        uint256 durationSpan = MAX_CHALLENGE_DURATION - MIN_CHALLENGE_DURATION;
        uint256 maxMarkets = MAX_MARKETS;
        bool refused;
        assembly ("memory-safe") {
            trader := calldataload(h)
            broker := calldataload(add(h, 0x20))
            token := calldataload(add(h, 0x40))
            // As the ABI decoder: an address with dirty upper bits reverts without data.
            if shr(160, or(or(trader, broker), token)) { revert(0, 0) }
            challengeDuration := calldataload(add(h, 0x60))
            marketCount := calldataload(add(h, 0xa0))
            // `_checkHeader`'s conditions in one expression (the duration's range by one
            // wrapping subtraction); `_checkHeader` then says which one failed.
            refused := or(
                or(or(iszero(trader), iszero(broker)), or(eq(trader, broker), iszero(token))),
                or(gt(sub(challengeDuration, minDuration), durationSpan), gt(marketCount, maxMarkets))
            )
        }
        if (refused) _checkHeader(trader, broker, token, challengeDuration, marketCount);
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, chainid())
            mstore(add(ptr, 0x20), address())
            calldatacopy(add(ptr, 0x40), h, 0xe0)
            id := keccak256(ptr, 0x120)
        }
    }

    /// @dev As the calldata `_channelId`, for a header built in memory from full parameters.
    function _channelIdOf(ChannelHeader memory h) internal view returns (bytes32) {
        _checkHeader(h.trader, h.broker, h.token, h.challengeDuration, h.marketCount);
        return keccak256(
            abi.encode(
                block.chainid,
                address(this),
                h.trader,
                h.broker,
                h.token,
                h.challengeDuration,
                h.nonce,
                h.marketCount,
                h.marketsHash
            )
        );
    }

    /// @dev The checks every function makes on a channel's parameters.
    function _checkHeader(address trader, address broker, address token, uint256 challengeDuration, uint256 marketCount)
        internal
        pure
    {
        if (trader == address(0) || broker == address(0) || trader == broker) {
            revert InvalidParticipants(trader, broker);
        }
        if (token == address(0)) revert InvalidToken();
        if (challengeDuration < MIN_CHALLENGE_DURATION || challengeDuration > MAX_CHALLENGE_DURATION) {
            revert ChallengeDurationOutOfRange(challengeDuration);
        }
        if (marketCount > MAX_MARKETS) revert TooManyMarkets(marketCount);
    }

    /// @dev The storage slot of `_channels[id]`.
    function _channelSlot(bytes32 id) internal view returns (uint256 slot) {
        Channel storage c = _channels[id];
        assembly ("memory-safe") {
            slot := c.slot
        }
    }

    /// @dev `_channels[id] = c`, packed by hand: the compiler's struct assignment reads the slot
    /// back and merges field by field; every field is written here, so the word is simply built.
    function _storeChannel(bytes32 id, Channel memory c) internal {
        uint256 word = uint256(c.traderDeposit) | (uint256(c.brokerDeposit) << BROKER_DEPOSIT_OFFSET)
            | (uint256(c.stage) << STAGE_OFFSET) | (uint256(c.disputeStart) << DISPUTE_START_OFFSET)
            | (uint256(c.deadline) << DEADLINE_OFFSET);
        uint256 slot = _channelSlot(id);
        assembly ("memory-safe") {
            sstore(slot, word)
        }
    }

    /// @dev `_registrations[id] = r`, packed by hand as `_storeChannel`.
    function _storeRegistration(bytes32 id, Registration memory r) internal {
        uint256 word = uint256(r.kind) | (uint256(r.version) << REGISTRATION_VERSION_OFFSET)
            | (uint256(r.data) << REGISTRATION_DATA_OFFSET);
        Registration storage stored = _registrations[id];
        assembly ("memory-safe") {
            sstore(stored.slot, word)
        }
    }

    /// @dev `token.balanceOf(address(this))`, reverting as a high-level call would: with the
    /// token's revert data if it reverts, without data if it returns less than a word.
    function _balanceOfSelf(address token) internal view returns (uint256 amount) {
        assembly ("memory-safe") {
            mstore(0x00, 0x70a08231) // IERC20.balanceOf.selector
            mstore(0x20, address())
            if iszero(staticcall(gas(), token, 0x1c, 0x24, 0x00, 0x20)) {
                let ptr := mload(0x40)
                returndatacopy(ptr, 0, returndatasize())
                revert(ptr, returndatasize())
            }
            if lt(returndatasize(), 0x20) { revert(0, 0) }
            amount := mload(0x00)
        }
    }

    function _requireOpen(bytes32 id, Stage stage) internal pure {
        if (stage == Stage.Disputed) revert ChannelDisputed(id);
        if (stage == Stage.Concluded) revert ChannelConcluded(id);
    }

    function _requireDisputed(bytes32 id, Channel memory c) internal pure {
        if (c.stage == Stage.Concluded) revert ChannelConcluded(id);
        if (c.stage == Stage.Open) revert ChannelNotDisputed(id);
    }

    function _requireDeadlinePassed(bytes32 id, Channel memory c) internal view {
        _requireDisputed(id, c);
        if (block.timestamp < c.deadline) revert DeadlineNotReached(c.deadline);
    }

    function _requireChallenger(bytes32 id, ChannelHeader calldata h, bytes calldata authorization) internal view {
        if (msg.sender == h.trader || msg.sender == h.broker) return;
        if (authorization.length == 0) revert NotAuthorized(msg.sender);
        address signer =
            _recover(_hashTypedDataV4(ChannelHashing.hashChallengeAuthorization(id, msg.sender)), authorization);
        if (signer != h.trader && signer != h.broker) revert NotAuthorized(msg.sender);
        if (authorizationRevoked[id][msg.sender][signer]) revert AuthorizationRevoked(msg.sender, signer);
    }

    function _verifyCoSigned(
        bytes32 id,
        address trader,
        address broker,
        uint256 marketCount,
        State calldata s,
        bytes calldata traderSignature,
        bytes calldata brokerSignature
    ) internal view returns (bytes32 digest) {
        if (s.channelId != id) revert WrongChannel(id, s.channelId);
        if (s.outcomes.length != marketCount) revert OutcomeCountMismatch(s.outcomes.length, marketCount);
        if (s.openOrders.length > MAX_OPEN_ORDERS) revert TooManyOpenOrders(s.openOrders.length);
        digest = _hashTypedDataV4(ChannelHashing.hashState(s));
        address signer = _recover(digest, traderSignature);
        if (signer != trader) revert WrongSigner(trader, signer);
        signer = _recover(digest, brokerSignature);
        if (signer != broker) revert WrongSigner(broker, signer);
    }

    function _requireBrokerSigned(address broker, BatchPrice calldata price, bytes calldata signature) internal view {
        address signer = _recover(_hashTypedDataV4(ChannelHashing.hashBatchPrice(price)), signature);
        if (signer != broker) revert WrongSigner(broker, signer);
    }

    /// @dev The index of market `id` among the channel's markets (at most MAX_MARKETS).
    function _marketIndex(Market[] calldata markets, uint256 id) internal pure returns (uint256) {
        for (uint256 i = 0; i < markets.length; ++i) {
            if (markets[i].id == id) return i;
        }
        revert UnknownMarket(id);
    }

    /// @dev Whether an order's limit is strictly better than `price` on the integer grid of
    /// `resolution` (exactly as `offchain.engine.auction.strictly_better`): a buy also accepts
    /// price + 1 (`(price + 1) * S <= C * resolution`, price + 1 < 2^64), a sell also accepts
    /// price - 1 (`(price - 1) * S >= C * resolution`, price >= 2). A market whose resolution the
    /// adjudicator cannot use (0, or not below 2^64) crosses nothing.
    function _strictlyBetter(Order calldata o, uint256 price, uint256 resolution) internal pure returns (bool) {
        if (resolution == 0 || resolution > ChannelHashing.MAX_AMOUNT) return false;
        uint256 limit = o.amountCollateral * resolution;
        if (o.isBuy) return price + 1 <= ChannelHashing.MAX_AMOUNT && (price + 1) * o.amountSynthetic <= limit;
        return price >= 2 && (price - 1) * o.amountSynthetic >= limit;
    }

    function _recover(bytes32 digest, bytes calldata signature) internal pure returns (address signer) {
        ECDSA.RecoverError err;
        (signer, err,) = ECDSA.tryRecoverCalldata(digest, signature);
        if (err == ECDSA.RecoverError.InvalidSignatureS) revert MalleableSignature();
        if (err != ECDSA.RecoverError.NoError) revert MalformedSignature();
    }

    /// @dev True when the state has no open orders and no positions: its payout needs no oracle.
    function _isSettled(State calldata s) internal pure returns (bool) {
        if (s.openOrders.length != 0) return false;
        for (uint256 i = 0; i < s.outcomes.length; ++i) {
            if (s.outcomes[i].position != 0) return false;
        }
        return true;
    }

    function _registration(State calldata s, bytes32 digest, Channel memory c)
        internal
        pure
        returns (Registration memory)
    {
        if (!_isSettled(s)) return Registration(Kind.Fingerprint, uint48(s.version), uint160(uint256(digest)));
        (uint256 toTrader, bool underfunded) = _settledPayout(s, c);
        return Registration(underfunded ? Kind.SettledUnderfunded : Kind.Settled, uint48(s.version), uint160(toTrader));
    }

    /// @dev The trader's payout for a state without positions (MISSION.md item 7): its collateral
    /// (available + locked) clamped to [0, total accounted], plus its deposits the state does not
    /// account for. If a party deposited less than the state accounts for, the state was never
    /// funded and every deposit goes back (`underfunded`). The broker gets the rest of the holdings.
    function _settledPayout(State calldata s, Channel memory c)
        internal
        pure
        returns (uint256 toTrader, bool underfunded)
    {
        return _traderPayout(s, c, s.balances.traderAvailable + int256(s.balances.traderLocked));
    }

    function _traderPayout(State calldata s, Channel memory c, int256 traderValue)
        internal
        pure
        returns (uint256 toTrader, bool underfunded)
    {
        uint256 traderAccounted = s.balances.traderDeposit;
        uint256 brokerAccounted = s.balances.brokerDeposit;
        if (c.traderDeposit < traderAccounted || c.brokerDeposit < brokerAccounted) return (c.traderDeposit, true);
        uint256 total = traderAccounted + brokerAccounted;
        uint256 share = traderValue <= 0 ? 0 : (uint256(traderValue) > total ? total : uint256(traderValue));
        return (share + (c.traderDeposit - traderAccounted), false);
    }

    /// @dev As `_settledPayout`, after filling the open orders that have evidence, with every
    /// position valued at its market's oracle price.
    function _payoutWithPositions(
        bytes32 id,
        ChannelParams calldata p,
        State calldata s,
        Channel memory c,
        uint256 version
    ) internal returns (uint256 toTrader, bool underfunded) {
        // An underfunded state pays every deposit back whatever it holds: no fill, no oracle.
        if (c.traderDeposit < s.balances.traderDeposit || c.brokerDeposit < s.balances.brokerDeposit) {
            return (c.traderDeposit, true);
        }
        int256[] memory positions = new int256[](s.outcomes.length);
        for (uint256 i = 0; i < positions.length; ++i) {
            positions[i] = s.outcomes[i].position;
        }
        int256 traderValue =
            s.balances.traderAvailable + int256(s.balances.traderLocked) + _fillFromEvidence(id, p, s, version, positions);
        uint256 tokenDecimals = DECIMALS_NOT_READ;
        for (uint256 i = 0; i < positions.length; ++i) {
            if (positions[i] == 0) continue;
            if (tokenDecimals == DECIMALS_NOT_READ) tokenDecimals = _tokenDecimals(p.token);
            traderValue += _positionValue(id, p.markets[i], positions[i], tokenDecimals, c.deadline);
        }
        return _traderPayout(s, c, traderValue);
    }

    /// @dev Fill the remainder of every open order that has evidence, in the order the state lists
    /// them, at its evidence's price. Updates `positions` and returns the change in the trader's
    /// collateral. A fill that would take a position out of (-2^63, 2^63) is not applied (the
    /// engine's bound on balances), which also keeps `_positionValue` from overflowing.
    function _fillFromEvidence(
        bytes32 id,
        ChannelParams calldata p,
        State calldata s,
        uint256 version,
        int256[] memory positions
    ) internal returns (int256 collateralChange) {
        for (uint256 i = 0; i < s.openOrders.length; ++i) {
            uint256 known = _evidence[id][(version << 8) | i];
            if (known == 0) continue;
            OpenOrder calldata o = s.openOrders[i];
            uint256 m = _marketIndex(p.markets, o.order.market);
            (uint256 amount, uint256 collateral, uint256 fee) = _evidenceFill(o, uint64(known), p.markets[m].resolution);
            int256 position = positions[m] + (o.order.isBuy ? int256(amount) : -int256(amount));
            if (position > ChannelHashing.MAX_BALANCE || position < -ChannelHashing.MAX_BALANCE) continue;
            positions[m] = position;
            collateralChange += o.order.isBuy ? -int256(collateral + fee) : int256(collateral) - int256(fee);
            emit OrderFilledByEvidence(id, i, known >> 64, uint64(known), amount, collateral, fee);
        }
    }

    /// @dev The fill of an order's whole remainder at `price` (as `offchain.settlement.evidence_fill`,
    /// the engine's `fill_collateral` and the broker's fee cap): a buyer pays the value rounded
    /// up but never more than the rest of its collateral lock, a seller receives it rounded down;
    /// the fee is the most the order allows: what the fill releases of the order's fee lock,
    /// within the signed fee ratio.
    function _evidenceFill(OpenOrder calldata o, uint256 price, uint256 resolution)
        internal
        pure
        returns (uint256 amount, uint256 collateral, uint256 fee)
    {
        uint256 size = o.order.amountSynthetic;
        amount = size - o.filled;
        if (o.order.isBuy) {
            uint256 exact = Math.ceilDiv(amount * price, resolution);
            uint256 lockLeft = Math.ceilDiv(o.order.amountCollateral * amount, size);
            collateral = exact < lockLeft ? exact : lockLeft;
        } else {
            collateral = amount * price / resolution;
        }
        fee = Math.ceilDiv(o.order.maxFee * amount, size);
        if (o.order.amountCollateral != 0) {
            uint256 ratioCap = o.order.maxFee * collateral / o.order.amountCollateral;
            if (ratioCap < fee) fee = ratioCap;
        }
    }

    /// @dev Value in collateral base units of `position` synthetic base units:
    /// position * answer * 10^tokenDecimals / (resolution * 10^feedDecimals), rounded toward
    /// negative infinity (against the trader, whose claim is being valued). Bounds: |position| <
    /// 2^63, answer < 2^128, decimals <= 18, resolution < 2^64, so nothing overflows.
    function _positionValue(bytes32 id, Market calldata m, int256 position, uint256 tokenDecimals, uint256 deadline)
        internal
        returns (int256)
    {
        (bool fresh, uint256 answer, uint256 feedDecimals) = _oraclePrice(m);
        bool usable = tokenDecimals <= MAX_DECIMALS && m.resolution != 0 && m.resolution <= ChannelHashing.MAX_AMOUNT;
        if (!fresh || !usable) {
            uint256 fallbackAt = deadline + ORACLE_FALLBACK_DELAY;
            if (block.timestamp < fallbackAt) revert OraclePriceUnavailable(m.id, fallbackAt);
            if (!usable) answer = 0;
            emit OracleFallbackUsed(id, m.id, answer);
            if (answer == 0) return 0;
        }
        uint256 magnitude = uint256(position > 0 ? position : -position);
        uint256 numerator = magnitude * answer * 10 ** tokenDecimals;
        uint256 denominator = m.resolution * 10 ** feedDecimals;
        if (position > 0) return int256(numerator / denominator);
        return -int256((numerator + denominator - 1) / denominator);
    }

    /// @dev Reads a feed with low-level calls so that a broken feed cannot make conclusion revert
    /// for ever. Returns (fresh, answer, decimals); answer is the latest valid answer (possibly
    /// stale) or 0 when there is none.
    function _oraclePrice(Market calldata m) internal view returns (bool fresh, uint256 answer, uint256 decimals) {
        (bool ok, bytes memory data) = m.feed.staticcall(abi.encodeCall(AggregatorV3Interface.decimals, ()));
        if (!ok || data.length < 32) return (false, 0, 0);
        decimals = abi.decode(data, (uint256));
        if (decimals > MAX_DECIMALS) return (false, 0, 0);
        (ok, data) = m.feed.staticcall(abi.encodeCall(AggregatorV3Interface.latestRoundData, ()));
        if (!ok || data.length < 160) return (false, 0, decimals);
        (, int256 rawAnswer,, uint256 updatedAt,) = abi.decode(data, (uint80, int256, uint256, uint256, uint80));
        if (rawAnswer <= 0 || uint256(rawAnswer) > MAX_ORACLE_ANSWER || updatedAt > block.timestamp) {
            return (false, 0, decimals);
        }
        answer = uint256(rawAnswer);
        fresh = block.timestamp - updatedAt <= m.maxPriceAge;
    }

    function _tokenDecimals(address token) internal view returns (uint256) {
        (bool ok, bytes memory data) = token.staticcall(abi.encodeCall(IERC20Metadata.decimals, ()));
        if (!ok || data.length < 32) return DECIMALS_UNREADABLE;
        uint256 decimals = abi.decode(data, (uint256));
        return decimals > MAX_DECIMALS ? DECIMALS_UNREADABLE : decimals;
    }

    function _finish(
        bytes32 id,
        address trader,
        address broker,
        address token,
        Channel memory c,
        uint256 toTrader,
        bool underfunded
    ) internal {
        uint256 holdings = uint256(c.traderDeposit) + c.brokerDeposit;
        if (slashedAt[broker] != 0) (toTrader, underfunded) = (holdings, false);
        uint256 toBroker = holdings - toTrader;
        delete _registrations[id];
        _markConcluded(id, c);
        emit Concluded(id, toTrader, toBroker, underfunded);
        _pay(token, trader, toTrader);
        _pay(token, broker, toBroker);
    }

    function _markConcluded(bytes32 id, Channel memory c) internal {
        c.stage = Stage.Concluded;
        c.traderDeposit = 0;
        c.brokerDeposit = 0;
        _storeChannel(id, c);
    }

    /// @dev Push `amount`; if the token refuses, credit it for `withdraw`. The transfer gets a
    /// fixed gas stipend, PAYOUT_TRANSFER_GAS, so that a token that refuses by burning all the
    /// gas it is given (an INVALID opcode, say) costs at most the stipend and cannot make
    /// conclusion impossible. The caller must leave the whole stipend available: otherwise the
    /// transaction reverts (`InsufficientGasForPayout`), so that neither a gas estimate nor a
    /// griefing caller can turn a payable payout into a deferred one by starving the transfer.
    function _pay(address token, address to, uint256 amount) internal {
        if (amount == 0) return;
        if (gasleft() < PAYOUT_GAS_REQUIRED) revert InsufficientGasForPayout();
        if (!_tryTransfer(token, to, amount)) {
            withdrawable[token][to] += amount;
            emit PayoutDeferred(token, to, amount);
        }
    }

    /// @dev `IERC20.transfer` with a gas cap, reading at most 32 bytes of return data. The same
    /// success rule as OpenZeppelin's `SafeERC20.trySafeTransfer` (no return data from a contract,
    /// or `true`), which has no gas cap.
    function _tryTransfer(address token, address to, uint256 amount) internal returns (bool ok) {
        // The call is encoded in scratch space (0x1c..0x60), as OpenZeppelin's SafeERC20 does,
        // instead of allocating memory; the free memory pointer and the zero slot are restored.
        assembly ("memory-safe") {
            let fmp := mload(0x40)
            mstore(0x00, 0xa9059cbb) // IERC20.transfer.selector
            mstore(0x20, to)
            mstore(0x40, amount)
            ok := call(PAYOUT_TRANSFER_GAS, token, 0, 0x1c, 0x44, 0x00, 0x20)
            if ok {
                switch returndatasize()
                case 0 { ok := gt(extcodesize(token), 0) }
                default { ok := and(gt(returndatasize(), 0x1f), eq(mload(0x00), 1)) }
            }
            mstore(0x40, fmp)
            mstore(0x60, 0)
        }
    }
}
