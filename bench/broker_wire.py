"""One broker over the wire (MISSION.md, "Bars"): >= 10,000 co-signed updates/s for one broker with
100 trader connections over loopback WebSockets on 2 cores, every state durably stored before it
is acknowledged (group commit is fine).

Processes (all on this machine):

- **anvil** (node_modules/.bin/anvil on 127.0.0.1, a free port): the contracts are deployed and
  every channel's trader deposit is made on it before the timed window (the broker checks a
  ``deposit`` proposal against the adjudicator);
- **the broker**: the real :class:`offchain.agents.broker.BrokerAgent` in its own process, with its
  durable :class:`offchain.store.sqlite.SQLiteStore` (WAL, ``synchronous=FULL``) on the disk of the
  results, listening on a free loopback port. Its batches are set an hour apart so that no batch
  is cut during the window (batches are measured by batch_settle.py);
- **the load generator** (``--load-processes``, default 1): the traders, ``--connections`` WebSocket
  connections (default 100), one channel each, in the cooperative flow. Each logs in (EIP-191
  challenge), proposes the channel's setup and its deposit with the real
  :class:`offchain.protocol.party.ChannelParty`, then keeps the turn (the protocol lets the turn
  holder propose again after each ACK) and proposes ``lock`` an order / ``cancel`` it, one pending
  at a time per channel, each time waiting for the broker's ACK.

Like a load generator that pre-builds its requests, every trader pre-computes and pre-signs its
proposals before the timed window with the real state machine (:func:`offchain.engine.channel.apply`)
and signer (:class:`offchain.signing.LocalSigner`), and encodes them; after the window it checks
every ACK: the broker's signature recovers to the broker for the digest of the state proposed. So
the window holds the broker's full work per update (parse and validate the proposal, verify the
trader's state signature and the order's, replay the transition, store it durably, sign, ACK) and
the traders' sending and receiving, not the traders' cryptography.

The reference, measured in the same run: raw coincurve doing the cryptography of one co-signed
update (2 digests, 2 signatures, 2 recoveries) on one core; the ratio shows what the wire, the
protocol and the store cost beyond it. ``--rounds`` windows are run on the same channels; the
best is the figure. ``--profile`` profiles the broker process (cProfile) during the windows and
prints where its time goes (a profiled run does not write its figure: the profiler slows the broker).

    .venv/bin/python bench/broker_wire.py [--connections N] [--updates N] [--rounds N] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import multiprocessing as mp
import pstats
import statistics
import tempfile
import threading
import time
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import orjson
from common import (
    BROKER_KEY,
    REFERENCE_PRICE,
    bar,
    print_bars,
    raw_cosigned_updates,
    results_dir,
    trader_key,
    write_result,
)

BAR_UPDATES_PER_SECOND = 10_000
MARKET_ID = 1
RESOLUTION = 10**6
DEPOSIT = 10**15  # collateral base units per trader
ORDER_SIZE = 10**6  # one whole unit
CHALLENGE_DURATION = 24 * 3600


def channel_params(i: int, chain_id: int, adjudicator: str, token: str, broker: str, markets: Any) -> Any:
    from offchain.model import ChannelParams
    from offchain.signing import LocalSigner
    from offchain.types import Address

    return ChannelParams(
        chain_id=chain_id,
        adjudicator=Address(adjudicator),
        trader=LocalSigner(trader_key(i)).address,
        broker=Address(broker),
        token=Address(token),
        challenge_duration=CHALLENGE_DURATION,
        nonce=i,
        markets=markets,
    )


# --------------------------------------------------------------------------- the broker process


def broker_process(pipe: Pipe, rpc_url: str, adjudicator: str, token: str, markets: Any, db: str) -> None:
    from offchain.agents.broker import BrokerAgent, BrokerConfig
    from offchain.agents.common import freeze_loaded_heap, run_loop
    from offchain.chain.connection import rpc_chain
    from offchain.signing import LocalSigner
    from offchain.store.sqlite import SQLiteStore
    from offchain.types import Address

    async def main() -> None:
        loop = asyncio.get_running_loop()
        store = SQLiteStore(db)
        config = BrokerConfig(
            port=0,
            batch_seconds=3600,
            markets=markets,
            reference_prices={MARKET_ID: REFERENCE_PRICE * 10**6},
        )
        broker = BrokerAgent(
            LocalSigner(BROKER_KEY), store, rpc_chain(rpc_url), Address(adjudicator), Address(token), config
        )
        freeze_loaded_heap()  # as `tchan broker` does once its store is loaded
        await broker.start()
        pipe.send(("port", broker.port))
        profiler = cProfile.Profile()
        stop = asyncio.Event()

        def control() -> None:
            while True:
                command = pipe.recv()
                if command == "profile_on":
                    loop.call_soon_threadsafe(profiler.enable)
                elif command == "profile_off":
                    disabled = threading.Event()

                    def disable(event: threading.Event = disabled) -> None:
                        profiler.disable()
                        event.set()

                    loop.call_soon_threadsafe(disable)
                    disabled.wait()
                    out = io.StringIO()
                    stats = pstats.Stats(profiler, stream=out)
                    stats.sort_stats("tottime").print_stats(30)
                    stats.sort_stats("cumulative").print_stats(30)
                    pipe.send(("profile", out.getvalue()))
                elif command == "cpu":
                    pipe.send(("cpu", time.process_time()))
                elif command == "stop":
                    loop.call_soon_threadsafe(stop.set)
                    return

        threading.Thread(target=control, daemon=True).start()
        await stop.wait()
        await broker.stop()
        store.close()
        pipe.send(("stopped", None))

    run_loop(main())


# --------------------------------------------------------------------------- the load generator


class Trader:
    """One connection, one channel: its party for the set-up, then pre-built frames."""

    def __init__(self, i: int, params: Any) -> None:
        from offchain.signing import LocalSigner, StateSigner
        from offchain.store import MemoryStore

        self.i = i
        self.params = params
        self.signer = LocalSigner(trader_key(i))
        self.store = MemoryStore()
        self.domain = None
        self.state_signer: StateSigner | None = None
        self.party: Any = None
        self.ws: Any = None
        self.next_nonce = 1
        self.rounds: list[tuple[list[str], list[Any], Any]] = []  # per round: frames, states, channel

    async def _reply(self) -> dict[str, Any]:
        """The next ack or error (notices and prices are skipped)."""
        while True:
            data = orjson.loads(await self.ws.recv())
            if data["type"] in ("ack", "error"):
                return data  # type: ignore[no-any-return]

    async def _exchange(self, proposal: Any) -> None:
        from offchain.protocol import messages as m

        await self.ws.send(m.encode(proposal))
        data = await self._reply()
        if data["type"] != "ack":
            raise SystemExit(f"trader {self.i}: {data}")
        ack = m.from_json(data)
        assert isinstance(ack, m.Ack)
        self.party.on_ack(ack)

    async def connect(self, url: str) -> None:
        from websockets.asyncio.client import connect

        from offchain.agents.common import sign_login
        from offchain.protocol import messages as m
        from offchain.protocol.party import COOPERATIVE, TRADER, ChannelParty
        from offchain.signing import StateSigner

        self.ws = await connect(
            url, max_size=m.MAX_MESSAGE_BYTES, open_timeout=30, ping_interval=None, compression=None
        )
        challenge = m.parse(await self.ws.recv())
        assert isinstance(challenge, m.Challenge)
        await self.ws.send(
            m.encode(m.Hello(self.signer.address, sign_login(self.signer, challenge.broker, challenge.nonce)))
        )
        welcome = m.parse(await self.ws.recv())
        assert isinstance(welcome, m.Welcome), welcome
        channel_domain = __import__("offchain.eip712", fromlist=["Domain"]).Domain(
            self.params.chain_id, self.params.adjudicator
        )
        self.domain = channel_domain
        self.state_signer = StateSigner(self.signer, channel_domain, log=self.store)
        self.party, proposal = ChannelParty.propose_setup(
            self.store, self.state_signer, TRADER, self.params, COOPERATIVE
        )
        await self._exchange(proposal)

    async def account_deposit(self) -> None:
        from offchain.engine.channel import AccountDeposits
        from offchain.types import TokenAmount

        proposal, _ = self.party.propose("deposit", AccountDeposits(TokenAmount(DEPOSIT), TokenAmount(0)))
        await self._exchange(proposal)

    def prebuild(self, updates: int) -> None:
        """``updates`` proposals (lock, cancel, lock, ...) from the channel's current state."""
        from offchain.engine.channel import CancelOrder, CreateOrder, apply
        from offchain.model import Order
        from offchain.protocol import messages as m
        from offchain.types import (
            BatchNumber,
            ExpirationHours,
            MarketId,
            Nonce,
            SyntheticAmount,
            Timestamp,
            TokenAmount,
        )

        channel = self.rounds[-1][2] if self.rounds else self.party.channel
        now = int(time.time())
        frames: list[str] = []
        states: list[Any] = []
        for k in range(updates):
            if k % 2 == 0:
                nonce = self.next_nonce
                self.next_nonce += 1
                order = Order(
                    channel_id=self.params.channel_id,
                    trader=self.params.trader,
                    collateral=self.params.token,
                    market=MarketId(MARKET_ID),
                    is_buy=True,
                    amount_synthetic=SyntheticAmount(ORDER_SIZE),
                    amount_collateral=TokenAmount(REFERENCE_PRICE * 10**6 * ORDER_SIZE // RESOLUTION),
                    max_fee=TokenAmount(10**6),
                    nonce=Nonce(nonce),
                    expiration=ExpirationHours(now // 3600 + 24),
                )
                transition: Any = CreateOrder(
                    order, self.signer.sign(self.domain, order), BatchNumber(1), Timestamp(now), {}
                )
                kind = "lock"
            else:
                transition = CancelOrder(Nonce(self.next_nonce - 1))
                kind = "cancel"
            result = apply(channel, transition)
            signature = self.signer.sign(self.domain, result.state)
            frames.append(m.encode(m.Propose(self.params.channel_id, kind, transition, result.state, signature)))
            states.append(result.state)
            channel = result.channel
        self.rounds.append((frames, states, channel))

    async def run(self, round_index: int) -> tuple[float, float, list[float], list[tuple[int, str]]]:
        frames = self.rounds[round_index][0]
        ws = self.ws
        latencies: list[float] = []
        signatures: list[tuple[int, str]] = []
        clock = time.perf_counter
        loads = orjson.loads
        start = clock()
        for frame in frames:
            sent = clock()
            await ws.send(frame)
            while True:
                data = loads(await ws.recv())
                kind = data["type"]
                if kind == "ack":
                    break
                if kind == "error":
                    raise SystemExit(f"trader {self.i}: {data}")
            latencies.append(clock() - sent)
            signatures.append((int(data["version"]), data["signature"]))
        return start, clock(), latencies, signatures

    def check(self, round_index: int, signatures: list[tuple[int, str]], broker: str) -> int:
        """Every ACK: the version proposed, signed by the broker over that state."""
        from offchain.signing import recover

        states = self.rounds[round_index][1]
        bad = 0
        for state, (version, signature) in zip(states, signatures, strict=True):
            digest = self.domain.state_digest(state)  # type: ignore[attr-defined]
            if version != state.version or recover(digest, bytes.fromhex(signature[2:])) != broker:
                bad += 1
        return bad


def load_process(
    pipe: Pipe, url: str, indices: list[int], chain: tuple[int, str, str, str], markets: Any, updates: int, rounds: int
) -> None:
    from offchain.agents.common import run_loop

    async def main() -> None:
        traders = [Trader(i, channel_params(i, *chain, markets)) for i in indices]
        await asyncio.gather(*(t.connect(url) for t in traders))
        pipe.send(("connected", None))
        assert pipe.recv() == "deposited"
        await asyncio.gather(*(t.account_deposit() for t in traders))
        for _ in range(rounds):
            for t in traders:
                t.prebuild(updates)
        pipe.send(("ready", None))
        for r in range(rounds):
            assert pipe.recv() == "go"
            cpu = time.process_time()
            results = await asyncio.gather(*(t.run(r) for t in traders))
            cpu = time.process_time() - cpu
            start = min(x[0] for x in results)
            end = max(x[1] for x in results)
            latencies = [lat for x in results for lat in x[2]]
            bad = sum(t.check(r, x[3], chain[3]) for t, x in zip(traders, results, strict=True))
            pipe.send(("round", (start, end, latencies, bad, cpu)))
        for t in traders:
            await t.ws.close()

    run_loop(main())


# --------------------------------------------------------------------------- the run


def expect(pipe: Pipe, tag: str, timeout: float = 600) -> Any:
    if not pipe.poll(timeout):
        raise SystemExit(f"timed out waiting for {tag}")
    got, value = pipe.recv()
    if got != tag:
        raise SystemExit(f"expected {tag}, got {got}: {value}")
    return value


def run(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    from offchain.chain.connection import rpc_chain
    from offchain.localnet import Anvil
    from offchain.sandbox import Sandbox
    from offchain.signing import LocalSigner

    ctx = mp.get_context("spawn")
    with Anvil.start() as anvil:
        chain = rpc_chain(anvil.url)
        sandbox = Sandbox.create(chain)
        market = sandbox.market("XAU / USD", MARKET_ID, RESOLUTION)
        markets = (market,)
        broker_address = LocalSigner(BROKER_KEY).address
        chain_info = (chain.chain_id, sandbox.adjudicator.address, sandbox.token.address, broker_address)
        broker_pipe, child = ctx.Pipe()
        broker = ctx.Process(
            target=broker_process,
            args=(child, anvil.url, chain_info[1], chain_info[2], markets, str(directory / "broker.db")),
        )
        broker.start()
        loads: list[tuple[Any, Pipe]] = []
        try:
            port = expect(broker_pipe, "port", 120)
            url = f"ws://127.0.0.1:{port}"
            setup_start = time.perf_counter()
            per = [list(range(p, args.connections, args.load_processes)) for p in range(args.load_processes)]
            for indices in per:
                pipe, child = ctx.Pipe()
                process = ctx.Process(
                    target=load_process, args=(child, url, indices, chain_info, markets, args.updates, args.rounds)
                )
                process.start()
                loads.append((process, pipe))
            for _, pipe in loads:
                expect(pipe, "connected")
            # The trader deposits, on-chain (made by the deployer for each trader: not timed).
            deployer = sandbox.deployer
            sandbox.token.mint(deployer.transactor, deployer.address, DEPOSIT * args.connections)
            sandbox.token.approve(deployer.transactor, sandbox.adjudicator.address, 2**256 - 1)
            for i in range(args.connections):
                params = channel_params(i, *chain_info, markets)
                sandbox.adjudicator.deposit(deployer.transactor, params, params.trader, DEPOSIT)
            for _, pipe in loads:
                pipe.send("deposited")
            for _, pipe in loads:
                expect(pipe, "ready")
            setup_seconds = time.perf_counter() - setup_start
            print(
                f"  {args.connections} channels set up and {args.rounds} x {args.updates} proposals each "
                f"pre-signed in {setup_seconds:.1f} s"
            )
            rounds = []
            profile_text = ""
            for r in range(args.rounds):
                if args.profile:
                    broker_pipe.send("profile_on")
                    time.sleep(0.2)
                broker_pipe.send("cpu")
                broker_cpu = expect(broker_pipe, "cpu")
                for _, pipe in loads:
                    pipe.send("go")
                parts = [expect(pipe, "round") for _, pipe in loads]
                broker_pipe.send("cpu")
                broker_cpu = expect(broker_pipe, "cpu") - broker_cpu
                if args.profile:
                    broker_pipe.send("profile_off")
                    profile_text = expect(broker_pipe, "profile")
                start = min(p[0] for p in parts)
                end = max(p[1] for p in parts)
                latencies = sorted(lat for p in parts for lat in p[2])
                bad = sum(p[3] for p in parts)
                if bad:
                    raise SystemExit(f"round {r}: {bad} ACKs do not carry the broker's signature on the state proposed")
                count = len(latencies)
                rounds.append(
                    {
                        "updates": count,
                        "seconds": round(end - start, 4),
                        "updates_per_second": round(count / (end - start), 1),
                        "p50_ms": round(statistics.median(latencies) * 1e3, 3),
                        "p99_ms": round(latencies[min(count - 1, int(count * 0.99))] * 1e3, 3),
                        "broker_cpu_us_per_update": round(broker_cpu / count * 1e6, 1),
                        "load_cpu_us_per_update": round(sum(p[4] for p in parts) / count * 1e6, 1),
                    }
                )
                print(
                    f"  round {r + 1}: {count:,} updates in {end - start:.2f} s: "
                    f"{count / (end - start):,.0f} updates/s, p50 {rounds[-1]['p50_ms']:.2f} ms, "
                    f"p99 {rounds[-1]['p99_ms']:.2f} ms; CPU per update: broker "
                    f"{rounds[-1]['broker_cpu_us_per_update']:.0f} us, load generator "
                    f"{rounds[-1]['load_cpu_us_per_update']:.0f} us"
                )
            for process, _ in loads:
                process.join(60)
            broker_pipe.send("stop")
            expect(broker_pipe, "stopped", 60)
            broker.join(30)
        finally:
            for process, _ in loads:
                if process.is_alive():
                    process.kill()
            if broker.is_alive():
                broker.kill()
    return {"rounds": rounds, "setup_seconds": round(setup_seconds, 1), "profile": profile_text}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--connections", type=int, default=100, help="trader connections, one channel each (default: 100)"
    )
    parser.add_argument("--updates", type=int, default=50, help="updates per connection per round (default: 50)")
    parser.add_argument("--rounds", type=int, default=3, help="timed windows; the best one counts (default: 3)")
    parser.add_argument("--load-processes", type=int, default=1, help="processes of the load generator (default: 1)")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the broker during the windows (the figure is not written)"
    )
    parser.add_argument(
        "--dir", help="directory for the broker's SQLite file (default: a temporary one beside the results)"
    )
    parser.add_argument("--results", help="directory for the JSON (default: bench/results)")
    args = parser.parse_args()
    results = results_dir(args.results)
    results.mkdir(parents=True, exist_ok=True)
    print(
        f"one broker process (SQLite, synchronous=FULL), {args.connections} trader connections over loopback "
        f"WebSockets in {args.load_processes} load process(es), lock/cancel proposals pre-signed by the traders:"
    )
    raw_n = 2_000
    raw = min(raw_cosigned_updates(raw_n) for _ in range(3))
    with tempfile.TemporaryDirectory(dir=args.dir or results) as tmp:  # a real disk: fsyncs count
        outcome = run(args, Path(tmp))
    raw_after = min(raw_cosigned_updates(raw_n) for _ in range(3))
    raw_rate = raw_n / min(raw, raw_after)
    best = max(outcome["rounds"], key=lambda r: r["updates_per_second"])
    bars = [
        bar(
            f"broker over loopback WebSockets, {args.connections} connections, SQLite FULL",
            best["updates_per_second"],
            "updates/s",
            raw_rate,
            "raw coincurve, one core",
            BAR_UPDATES_PER_SECOND,
            direction=">=",
        )
    ]
    print(
        f"  best round: {best['updates_per_second']:,.0f} updates/s, p50 {best['p50_ms']:.2f} ms, "
        f"p99 {best['p99_ms']:.2f} ms; raw coincurve {raw_rate:,.0f} co-signed updates/s on one core: "
        f"ratio {best['updates_per_second'] / raw_rate:.3f}"
    )
    print("  (traders' proposals pre-signed before the window; every ACK's signature checked after it)")
    if outcome["profile"]:
        print(outcome["profile"])
    print_bars(bars)
    if args.profile:
        # The profiler slows the broker down: this run's figure is not the benchmark's.
        print(f"profiled run: its figure is not recorded ({results / 'broker_wire.json'} is left as it was)")
        return
    path = write_result(
        "broker_wire",
        bars,
        results,
        mode=(
            "broker process (BrokerAgent, SQLiteStore synchronous=FULL) + load generator process(es), loopback "
            "WebSockets, anvil for the deposits; traders' proposals pre-signed, ACKs checked after the window"
        ),
        connections=args.connections,
        updates_per_connection=args.updates,
        load_processes=args.load_processes,
        best=best,
        rounds=outcome["rounds"],
        raw_coincurve_updates_per_second=round(raw_rate, 1),
        setup_seconds=outcome["setup_seconds"],
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
