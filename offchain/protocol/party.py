"""One side of one channel: proposals, countersignatures and turns, with the store in front.

A :class:`ChannelParty` wraps the pure machine (:mod:`offchain.engine.channel`) with what a
party must do around it (MISSION.md, "Off-chain protocol"):

- a proposal is checked in full (turn, version, the proposer's signature, the transition's
  rules, the exact resulting state) before anything is stored or signed;
- the state is written to the durable store before its signature or ACK leaves the party: the
  state, our signature and the digest the signer logs are one store transaction, committed
  before the proposal or the ACK is returned; the signature log in the store refuses a second
  different state with one version, also after a restart;
- one pending proposal per channel at a time;
- a duplicate of a proposal already acknowledged is answered with the same ACK and changes
  nothing; an older or conflicting one is refused with ``stale_version``.

The networking lives in the agents; this class is synchronous and does no I/O but the store.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any

from offchain.crashpoints import crash_point
from offchain.engine.channel import Channel, Transition, Transitioned, apply, expect, setup
from offchain.engine.rules import RuleViolation
from offchain.errors import SignatureError, ValidationError
from offchain.model import MAX_VERSION, ChannelParams, ChannelState, parse_decimal, shared_nonces
from offchain.protocol import messages as m
from offchain.protocol.messages import ProtocolError
from offchain.signing import CoSignedState, StateSigner, verify
from offchain.store import ChannelRecord, Store, StoreCorruptError
from offchain.types import Address, ChannelId, Signature

TRADER = "trader"
BROKER = "broker"
SERVER_INITIATIVE = "server_initiative"
COOPERATIVE = "cooperative"
OPEN = "open"
UNRESPONSIVE = "unresponsive"
"""The counterparty stopped answering; the agent recovers or, in time, disputes (agents/fallback.py)."""
DISPUTED = "disputed"
"""This agent challenged the channel on-chain: it signs nothing more in it."""
CLOSED = "closed"
CONCLUDED = "concluded"
ENDED = (CLOSED, CONCLUDED)
"""Statuses of a channel that has been paid out on-chain: nothing is proposed or signed in it."""

ContextCheck = Callable[[Channel, m.Propose], None]
"""An agent's own checks of a proposal against what it knows (chain, batch prices, clock);
raises ProtocolError. Runs after the message checks and before anything is stored or signed."""


class ChannelParty:
    """What one side holds of a channel, and the only way it changes."""

    # A broker holds one per open channel (MISSION.md, "Bars": < 2 KiB each). ``__dict__`` keeps
    # attributes beyond these possible (tests replace a method on one party); no dict is made
    # until one is set.
    __slots__ = (
        "__dict__",
        "_saved",
        "channel",
        "co_signed",
        "flow",
        "pending",
        "role",
        "signer",
        "status",
        "store",
        "turn",
    )

    def __init__(
        self,
        store: Store,
        signer: StateSigner,
        role: str,
        channel: Channel,
        flow: str,
        turn: str,
        co_signed: CoSignedState,
        status: str = "open",
    ) -> None:
        self.store = store
        self.signer = signer
        self.role = role
        self.channel = channel
        self.flow = flow
        self.turn = turn
        self.co_signed = co_signed
        self.status = status
        self.pending: tuple[m.Propose, Transitioned] | None = None
        # What _save last wrote: (role, flow, turn, status, used nonces) and the pending proposal.
        self._saved: tuple[_SavedMeta, m.Propose | None] | None = None

    # ------------------------------------------------------------------ identity

    @property
    def params(self) -> ChannelParams:
        return self.channel.params

    @property
    def channel_id(self) -> ChannelId:
        return self.channel.params.channel_id

    @property
    def state(self) -> ChannelState:
        return self.channel.state

    @property
    def counterpart(self) -> Address:
        return self.params.broker if self.role == TRADER else self.params.trader

    @property
    def other_role(self) -> str:
        return BROKER if self.role == TRADER else TRADER

    def my_turn(self) -> bool:
        return self.turn == self.role

    # ------------------------------------------------------------------ creation and loading

    @classmethod
    def propose_setup(
        cls, store: Store, signer: StateSigner, role: str, params: ChannelParams, flow: str
    ) -> tuple[ChannelParty, m.Propose]:
        """Create the channel with our signature on version 0 and the setup proposal to send."""
        channel = setup(params)
        turn = role if flow == COOPERATIVE else BROKER
        with store.transaction():
            if store.channel(params.channel_id) is not None:
                raise ProtocolError(m.CHANNEL_EXISTS, "this channel exists already")
            party = cls(store, signer, role, channel, flow, turn, _unsigned(channel.state))
            store.put_state(channel.state, None, None)
            crash_point("party.setup.stored")
            signature = signer.sign_state(channel.state)
            proposal = m.Propose(
                channel_id=params.channel_id,
                kind="setup",
                transition=None,
                state=channel.state,
                signature=signature,
                params=params,
                flow=flow,
            )
            party._store_signatures(channel.state, signature, None)
            party.pending = (proposal, Transitioned(channel, ()))
            party.save()
        crash_point("party.setup.committed")
        return party, proposal

    @classmethod
    def accept_setup(
        cls, store: Store, signer: StateSigner, role: str, proposal: m.Propose, check: ContextCheck | None = None
    ) -> tuple[ChannelParty, m.Ack]:
        """Countersign a setup proposal after checking it (the caller checks the parameters)."""
        params, flow = proposal.params, proposal.flow
        if params is None or flow is None:
            raise ProtocolError(m.INVALID_MESSAGE, "a setup proposal carries params and flow")
        existing = store.channel(params.channel_id)
        if existing is not None:
            party = cls.load(store, signer, params.channel_id)
            return party, party.on_proposal(proposal)  # a duplicate gets the same ACK
        channel = setup(params)
        if proposal.state != channel.state:
            raise ProtocolError(m.RULE_VIOLATION, "the setup state is not the version-0 state of these parameters")
        proposer = params.broker if role == TRADER else params.trader
        _verify(channel, proposal.state, proposal.signature, proposer)
        if check is not None:
            check(channel, proposal)
        turn = (BROKER if role == TRADER else TRADER) if flow == COOPERATIVE else BROKER  # the proposer's
        with store.transaction():
            party = cls(store, signer, role, channel, flow, turn, _unsigned(channel.state))
            signature = signer.sign_state(channel.state)
            party._store_signatures(channel.state, signature, proposal.signature)
            party.save()
        crash_point("party.accept_setup.committed")
        return party, m.Ack(params.channel_id, 0, signature)

    @classmethod
    def load(cls, store: Store, signer: StateSigner, channel_id: bytes) -> ChannelParty:
        """The party as the store left it (after a restart)."""
        record = store.channel(channel_id)
        if record is None:
            raise ProtocolError(m.UNKNOWN_CHANNEL, f"unknown channel 0x{channel_id.hex()}")
        meta = record.meta
        latest = store.latest_co_signed(channel_id)
        if latest is not None:
            state = latest.state
            co_signed = CoSignedState(state, _sig(latest.trader_signature), _sig(latest.broker_signature))
        else:
            stored = store.state(channel_id, 0)
            if stored is None:
                raise ProtocolError(m.UNKNOWN_CHANNEL, "the store has no state of this channel")
            state = stored.state
            co_signed = _unsigned(state)
        nonces = shared_nonces(frozenset(int(n) for n in meta.get("used_nonces", [])))
        channel = Channel(record.params, state, nonces)
        party = cls(
            store,
            signer,
            _name(meta["role"]),
            channel,
            _name(meta["flow"]),
            _name(meta["turn"]),
            co_signed,
            _name(meta.get("status", "open")),
        )
        pending = store.pending(channel_id)
        if pending is not None:
            proposal = _pending_from_record(store, channel_id, party.role, pending)
            if isinstance(proposal, m.Propose) and proposal.state.version == state.version + 1:
                party.pending = (proposal, _replay(channel, proposal))
            elif isinstance(proposal, m.Propose) and proposal.kind == "setup" and latest is None:
                party.pending = (proposal, Transitioned(channel, ()))
        if pending is None or party.pending is not None:
            # What the store holds is what _save would write now: its first call skips the same.
            party._saved = _saved_record(
                (party.role, party.flow, party.turn, party.status, channel.used_nonces),
                None if party.pending is None else party.pending[0],
            )
        return party

    def save(self) -> None:
        """Write the channel record and the pending proposal (inside the caller's transaction)."""
        self._saved = None  # whatever the caller's transaction does, the next _save writes in full
        self.store.put_channel(ChannelRecord(self.channel_id, self.params, self._meta()))
        self.store.put_pending(self.channel_id, _pending_record(self.pending[0]) if self.pending else None)

    def _meta(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "flow": self.flow,
            "turn": self.turn,
            "status": self.status,
            "used_nonces": sorted(str(n) for n in self.channel.used_nonces),
        }

    def _save(self) -> None:
        """:meth:`save` from inside :meth:`_atomic`, skipping the writes that would not change
        what this party last wrote there: the channel record when its meta fields are the same,
        the pending proposal when it is the same object (or None both times). ``_atomic`` puts
        the record of what was written back when its transaction fails, and :meth:`save`
        forgets it, so a skipped write is only ever one the store already holds."""
        pending = self.pending[0] if self.pending else None
        meta = (self.role, self.flow, self.turn, self.status, self.channel.used_nonces)
        saved = self._saved
        if saved is None or saved[0] != meta:
            self.store.put_channel(ChannelRecord(self.channel_id, self.params, self._meta()))
        if saved is None or saved[1] is not pending:
            self.store.put_pending(self.channel_id, None if pending is None else _pending_record(pending))
        self._saved = _saved_record(meta, pending)

    # ------------------------------------------------------------------ proposing

    def propose(
        self, kind: str, transition: Transition, applied: tuple[Channel, Transitioned] | None = None
    ) -> tuple[m.Propose, Transitioned]:
        """Apply ``transition``, store and sign the result, and return the proposal to send.

        ``applied`` is ``(channel, apply(channel, transition))`` when the caller has already run
        the engine (the broker does, to leave out of a batch a channel that cannot take its
        Trade): it is used only when ``channel`` is this party's current channel (the engine is
        pure, so the result is the same), and the engine runs again otherwise."""
        self._require_open()
        if self.pending is not None:
            raise ProtocolError(m.PROPOSAL_PENDING, "a proposal of ours is waiting for its ACK")
        if not self.my_turn():
            raise ProtocolError(m.NOT_YOUR_TURN, f"it is the {self.turn}'s turn")
        if applied is not None and applied[0] is self.channel:
            result = applied[1]
        else:
            result = apply(self.channel, transition)
        with self._atomic():  # nothing leaves before it commits: the state with our signature
            signature = self.signer.sign_state(result.state)
            self._store_signatures(result.state, signature, None)
            crash_point("party.propose.stored")
            proposal = m.Propose(self.channel_id, kind, transition, result.state, signature)
            self.pending = (proposal, result)
            self._save()
        crash_point("party.propose.committed")
        return proposal, result

    def on_ack(self, ack: m.Ack) -> Transitioned:
        """The counterpart countersigned our pending proposal: it is now the agreed state."""
        if self.pending is None:
            if ack.version == self.state.version and self.co_signed.state.version == ack.version:
                return Transitioned(self.channel, ())  # a duplicate ACK: nothing to do
            raise ProtocolError(m.NO_PENDING_PROPOSAL, "no proposal of ours is waiting for an ACK")
        proposal, result = self.pending
        if ack.version != proposal.state.version:
            raise ProtocolError(m.STALE_VERSION, f"ACK for version {ack.version}, pending {proposal.state.version}")
        _verify(result.channel, proposal.state, ack.signature, self.counterpart)
        with self._atomic():
            self._store_signatures(proposal.state, proposal.signature, ack.signature)
            self.channel = result.channel
            self.pending = None
            self._save()
        crash_point("party.on_ack.committed")
        return result

    def yield_turn(self) -> m.Yield:
        if self.flow != COOPERATIVE:
            raise ProtocolError(m.WRONG_FLOW, "Yield belongs to the cooperative flow")
        if not self.my_turn() or self.pending is not None:
            raise ProtocolError(m.NOT_YOUR_TURN, "we do not hold the turn, or a proposal is pending")
        with self._atomic():
            self.turn = self.other_role
            self._save()
        crash_point("party.yield.committed")
        return m.Yield(self.channel_id, self.state.version)

    # ------------------------------------------------------------------ answering

    def on_proposal(self, proposal: m.Propose, check: ContextCheck | None = None) -> m.Ack:
        """Check a proposal of the counterpart in full, store it, countersign it."""
        version = proposal.state.version
        if version <= self.co_signed.state.version or (proposal.kind == "setup" and version == 0):
            return self._duplicate(proposal)
        self._require_open()
        if proposal.kind == "setup":
            raise ProtocolError(m.CHANNEL_EXISTS, "this channel exists already")
        if self.flow == SERVER_INITIATIVE and self.role == BROKER:
            raise ProtocolError(m.NOT_YOUR_TURN, "in the server-initiative flow only the broker proposes")
        if self.flow == COOPERATIVE and self.my_turn():
            raise ProtocolError(m.NOT_YOUR_TURN, f"it is the {self.role}'s turn, not yours")
        if self.pending is not None:
            raise ProtocolError(m.PROPOSAL_PENDING, "a proposal of ours is pending; answer it first")
        if version != self.state.version + 1:
            raise ProtocolError(m.STALE_VERSION, f"expected version {self.state.version + 1}, got {version}")
        if proposal.transition is None:
            raise ProtocolError(m.INVALID_MESSAGE, "a proposal carries its transition")
        # The same checks, answers and order of precedence as: verify the signature, run the
        # agent's check, replay the transition. The replay (pure) runs first so that the digest
        # is computed once, of our own resulting state (equal to the proposed one, so the same
        # digest), and serves to verify, record and countersign; its failure is raised only
        # after the signature and the agent's check, as before.
        result: Transitioned | None = None
        failure: Exception | None = None
        try:
            result = expect(self.channel, proposal.transition, proposal.state)
        except Exception as exc:  # noqa: BLE001 - raised below, in its old place
            failure = exc
        _verify(self.channel, proposal.state if result is None else result.state, proposal.signature, self.counterpart)
        if check is not None:
            check(self.channel, proposal)
        if failure is not None:
            if isinstance(failure, RuleViolation):
                raise ProtocolError(m.RULE_VIOLATION, failure.reason, failure.rule.value) from failure
            raise failure
        assert result is not None
        with self._atomic():  # committed before the ACK leaves: the state with both signatures
            signature = self.signer.sign_state(result.state)
            self._store_signatures(result.state, signature, proposal.signature)
            crash_point("party.on_proposal.stored")
            self.channel = result.channel
            self._save()
        crash_point("party.on_proposal.committed")
        return m.Ack(self.channel_id, version, signature)

    def on_yield(self, message: m.Yield) -> None:
        if self.flow != COOPERATIVE:
            raise ProtocolError(m.WRONG_FLOW, "Yield belongs to the cooperative flow")
        if self.turn == self.role:
            if message.version <= self.state.version:
                return  # a duplicate Yield: we already hold the turn
            raise ProtocolError(m.STALE_VERSION, "Yield for a version we do not know")
        if message.version != self.state.version:
            raise ProtocolError(m.STALE_VERSION, f"Yield at version {message.version}, ours is {self.state.version}")
        with self._atomic():
            self.turn = self.role
            self._save()
        crash_point("party.on_yield.committed")

    def adopt(self, state: ChannelState, trader_signature: Signature, broker_signature: Signature) -> bool:
        """Take a co-signed state newer than ours (after a lost ACK). Only a state we signed
        ourselves can be newer, so it must be our pending proposal's. Returns True if adopted."""
        if state.version <= self.co_signed.state.version:
            return False
        if self.pending is None or self.pending[0].state != state:
            raise ProtocolError(m.STALE_VERSION, "a co-signed state we did not propose")
        digest = self.channel.domain.state_digest(state)
        for signature, signer in ((trader_signature, self.params.trader), (broker_signature, self.params.broker)):
            try:
                verify(digest, signature, signer)
            except SignatureError as exc:
                raise ProtocolError(m.BAD_SIGNATURE, exc.reason) from exc
        self.on_ack(
            m.Ack(self.channel_id, state.version, broker_signature if self.role == TRADER else trader_signature)
        )
        return True

    def set_status(self, status: str) -> None:
        with self._atomic():
            self.status = status
            self._save()

    # ------------------------------------------------------------------ internals

    def _atomic(self) -> _Atomic:
        """A store transaction that, when it fails (a full disk, an I/O error), also undoes what
        the block changed in memory: the party must not hold, act on or re-send a state, a
        signature or a pending proposal that its store does not have."""
        return _Atomic(self)

    def _require_open(self) -> None:
        if self.state.is_final and self.co_signed.state.is_final:
            raise ProtocolError(m.CHANNEL_CLOSED, "the channel is final")
        if self.status in ENDED:
            raise ProtocolError(m.CHANNEL_CLOSED, f"the channel has {self.status} on-chain")
        if self.status == DISPUTED:
            raise ProtocolError(m.CHANNEL_CLOSED, "the channel is in a dispute on-chain")

    def _duplicate(self, proposal: m.Propose) -> m.Ack:
        stored = self.store.state(self.channel_id, proposal.state.version)
        mine = None
        if stored is not None and stored.state == proposal.state:
            mine = stored.trader_signature if self.role == TRADER else stored.broker_signature
        if mine is None:
            raise ProtocolError(m.STALE_VERSION, f"version {proposal.state.version} is already agreed differently")
        return m.Ack(self.channel_id, proposal.state.version, Signature(mine))

    def _store_signatures(self, state: ChannelState, mine: Signature, theirs: Signature | None) -> None:
        """Write ``state`` with our signature, and the counterpart's when it has signed it too:
        the state is then co-signed. Inside the caller's transaction, with the digest the
        StateSigner logged before signing: the three are committed together, before the
        signature leaves this party (the proposal or the ACK is sent after the commit)."""
        trader, broker = (mine, theirs) if self.role == TRADER else (theirs, mine)
        self.store.put_state(state, trader, broker)
        if theirs is not None:
            self.co_signed = CoSignedState(state, _sig(trader), _sig(broker))


_SavedMeta = tuple[str, str, str, str, frozenset[int]]
_SAVED_RECORDS: dict[_SavedMeta, tuple[_SavedMeta, None]] = {}


def _saved_record(meta: _SavedMeta, pending: m.Propose | None) -> tuple[_SavedMeta, m.Propose | None]:
    """``(meta, pending)``, what :meth:`ChannelParty._save` wrote. With nothing pending, one
    shared tuple per meta (a broker holds one per channel; MISSION.md, "Bars": < 2 KiB each);
    metas are few (the nonce sets of up to 8 are shared, see ``shared_nonces``), larger ones are
    not kept."""
    if pending is not None or len(meta[4]) > 8:
        return (meta, pending)
    return _SAVED_RECORDS.setdefault(meta, (meta, None))


class _Atomic:
    """ChannelParty._atomic: a plain context manager (a generator one costs three times as much,
    and every update opens three)."""

    __slots__ = ("_party", "_saved", "_transaction")
    _saved: tuple[Any, ...]
    _transaction: AbstractContextManager[None]

    def __init__(self, party: ChannelParty) -> None:
        self._party = party

    def __enter__(self) -> None:
        p = self._party
        self._saved = (p.channel, p.co_signed, p.turn, p.status, p.pending, p._saved)
        self._transaction = p.store.transaction()
        self._transaction.__enter__()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self._transaction.__exit__(exc_type, exc, tb)  # a failing commit raises here
        except BaseException:
            self._restore()
            raise
        if exc_type is not None:
            self._restore()

    def _restore(self) -> None:
        p = self._party
        p.channel, p.co_signed, p.turn, p.status, p.pending, p._saved = self._saved


def _verify(channel: Channel, state: ChannelState, signature: Signature, signer: Address) -> None:
    try:
        verify(channel.domain.state_digest(state), signature, signer)
    except SignatureError as exc:
        raise ProtocolError(m.BAD_SIGNATURE, exc.reason) from exc


_NAMES = {name: name for name in (TRADER, BROKER, SERVER_INITIATIVE, COOPERATIVE, OPEN, UNRESPONSIVE, DISPUTED, *ENDED)}


def _name(value: Any) -> Any:
    """The module's own string for a role, flow or status read from the store (one object for
    all channels rather than a copy each)."""
    return _NAMES.get(value, value) if type(value) is str else value


def _sig(raw: bytes | None) -> Signature:
    return Signature(raw or b"")


def _pending_record(proposal: m.Propose) -> dict[str, Any]:
    """Our pending proposal as the store keeps it. Its state, with our signature on it, is
    written to the store's states in the same transaction, so a proposal with a transition is
    kept as its kind, transition and version (and request id), not its state a second time; a
    setup proposal (no transition, with the parameters) is kept whole, as its message."""
    if proposal.transition is None:
        return m.to_json(proposal)
    record: dict[str, Any] = {
        "kind": proposal.kind,
        "transition": m.transition_to_json(proposal.transition),
        "version": str(proposal.state.version),
    }
    if proposal.id:
        record["id"] = proposal.id
    return record


def _pending_from_record(store: Store, channel_id: bytes, role: str, record: dict[str, Any]) -> m.Message | None:
    """The pending proposal from :func:`_pending_record`'s record (or a whole message, as setup
    proposals and stores written before it keep it); None when its state is not in the store."""
    if "version" not in record:
        return m.from_json(record)
    try:
        version = parse_decimal(record["version"], "pending version")
        kind, request_id = record.get("kind"), record.get("id", "")
        if not isinstance(kind, str) or not isinstance(request_id, str):
            raise ValidationError("the pending proposal's kind and id are strings")
        transition = m.transition_from_json(kind, record.get("transition"))
    except (ValidationError, ProtocolError) as exc:
        raise StoreCorruptError(f"unreadable pending proposal of channel 0x{channel_id.hex()}: {exc}") from exc
    stored = store.state(channel_id, version) if version <= MAX_VERSION else None
    ours = None if stored is None else (stored.trader_signature if role == TRADER else stored.broker_signature)
    if stored is None or ours is None or transition is None:
        return None
    return m.Propose(ChannelId(channel_id), kind, transition, stored.state, Signature(ours), id=request_id)


def _unsigned(state: ChannelState) -> CoSignedState:
    return CoSignedState(state, Signature(b""), Signature(b""))


def _replay(channel: Channel, proposal: m.Propose) -> Transitioned:
    if proposal.transition is None:
        return Transitioned(channel, ())
    return apply(channel, proposal.transition)
