"""``tchan oracle``: the oracle agent. It pushes prices to the deployment's price feeds with the
feeds' owner key (the key that ran ``tchan deploy --feed ...``).

**Prices** are decimal strings in the feed's quote currency, e.g. ``2012.50`` dollars per ounce
for ``XAU / USD``. Each is converted exactly, with integers only, into the feed's answer (the
price times 10^decimals: 201250000000 for an 8-decimal feed); a price with more fraction digits
than the feed has, zero, or above the adjudicator's largest accepted answer (2^128 - 1) is
refused.

**Two sources.**

* ``--prices FILE``: rows of (feed description, price), replayed in order, one push per row,
  ``--interval S`` apart (``--loop``: again and again until stopped). A ``.json`` file is a list
  of ``{"feed": "XAU / USD", "price": "2012.50"}`` (prices as strings, never JSON numbers); any
  other file is CSV with the header ``feed,price``; blank lines and lines starting with ``#`` are
  skipped. Every row is checked (syntax, known feed, exact price) before anything is pushed.
* ``--random-walk --feed "XAU / USD" --start 2000 [--feed ... --start ...]``: per feed, the start
  price first, then each push moves the previous answer by a whole number of basis points drawn
  uniformly from [-step_bps, +step_bps]: ``answer * (10000 + move) // 10000``, kept within
  [1, 2^128 - 1], so it never reaches zero. The move of push n (n >= 1) of feed F is
  ``int.from_bytes(sha256(f"tchan-oracle:{seed}:{F}:{n}")[:8], "big") % (2 * step_bps + 1) -
  step_bps``: the walk is a function of (seed, feed, start, step) alone, the same on every
  machine. ``--steps N`` pushes per feed (``--once``: 1); without them it runs until stopped.

**Output.** One line per push (feed, round, price, answer, tx) on stdout; with ``--json``, the
same line goes to stderr as progress and one JSON document listing every push follows on stdout
at the end. Ctrl-C (or SIGTERM) lets the push under way finish, then stops with exit code 0 (a
second Ctrl-C interrupts at once).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offchain.cli.common import Output, add_key_args, add_network_args, load_key, open_deployment
from offchain.errors import DeploymentError, ValidationError

if TYPE_CHECKING:
    from offchain.chain.client import PriceFeedClient
    from offchain.chain.connection import Chain, Transactor
    from offchain.chain.deploy import Deployment

BPS = 10_000
MAX_ANSWER = 2**128 - 1  # TradingChannelAdjudicator.MAX_ORACLE_ANSWER: larger answers are ignored
MAX_DECIMALS = 18  # TradingChannelAdjudicator.MAX_DECIMALS
MAX_INTERVAL = 86_400.0
MAX_PRICE_TEXT = 80
CSV_HEADER = ("feed", "price")
_DECIMAL = re.compile(r"^(\d+)(?:\.(\d+))?$")


class NotFeedOwnerError(ValidationError):
    """The key is not the owner of a feed it would push to (the feed would revert)."""

    code = "not_feed_owner"


# --------------------------------------------------------------------------- prices


def check_price_text(text: str, where: str) -> str:
    """``text`` stripped, if it is a plain decimal number (digits, optionally a point and digits)."""
    stripped = text.strip()
    if len(stripped) > MAX_PRICE_TEXT or not _DECIMAL.match(stripped):
        raise ValidationError(f"{where}: price {text!r} is not a decimal number like 2012.50")
    return stripped


def parse_price(text: str, decimals: int, where: str) -> int:
    """A decimal price (whole units of the quote currency) as the feed's integer answer, exactly:
    ``"2012.50"`` with 8 decimals is 201250000000. No floats anywhere."""
    match = _DECIMAL.match(check_price_text(text, where))
    assert match is not None
    whole, fraction = match.group(1), match.group(2) or ""
    significant = fraction.rstrip("0")
    if len(significant) > decimals:
        raise ValidationError(
            f"{where}: price {text.strip()} has more decimals than the feed's {decimals}: it cannot be pushed exactly"
        )
    scale: int = 10**decimals
    answer = int(whole) * scale + (int(significant.ljust(decimals, "0")) if decimals else 0)
    check_answer(answer, where)
    return answer


def check_answer(answer: int, where: str) -> None:
    if answer <= 0:
        raise ValidationError(f"{where}: the price must be positive")
    if answer > MAX_ANSWER:
        raise ValidationError(f"{where}: the price is above the largest answer the adjudicator accepts (2^128 - 1)")


def format_price(answer: int, decimals: int) -> str:
    """The feed's answer as a decimal price, exactly: 201250000000 with 8 decimals is ``2012.5``."""
    whole, rest = divmod(answer, 10**decimals)
    if rest == 0:
        return str(whole)
    return f"{whole}.{str(rest).rjust(decimals, '0').rstrip('0')}"


@dataclass(frozen=True, slots=True)
class PriceRow:
    """One row of a price file: a feed description and a price (checked decimal text)."""

    feed: str
    price: str
    where: str  # "FILE line N" / "FILE entry N", for error messages


def load_price_file(path: Path) -> list[PriceRow]:
    """Every row of a price file (JSON if the name ends in .json, else CSV), each one checked."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"cannot read the price file {path}: {exc}") from exc
    rows = _json_rows(path, text) if path.suffix.lower() == ".json" else _csv_rows(path, text)
    if not rows:
        raise ValidationError(f"{path} holds no prices")
    return rows


def _json_rows(path: Path, text: str) -> list[PriceRow]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValidationError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, list):
        raise ValidationError(f'{path} must be a JSON list of {{"feed": "XAU / USD", "price": "2012.50"}}')
    rows = []
    for n, entry in enumerate(data, start=1):
        where = f"{path} entry {n}"
        if not isinstance(entry, dict) or set(entry) != {"feed", "price"}:
            raise ValidationError(f'{where}: expected exactly {{"feed": ..., "price": ...}}, got {str(entry)[:80]}')
        feed, price = entry["feed"], entry["price"]
        if not isinstance(feed, str) or not feed.strip():
            raise ValidationError(f"{where}: feed must be a feed description such as 'XAU / USD'")
        if not isinstance(price, str):
            raise ValidationError(f'{where}: price must be a decimal string such as "2012.50", got {price!r}')
        rows.append(PriceRow(feed.strip(), check_price_text(price, where), where))
    return rows


def _csv_rows(path: Path, text: str) -> list[PriceRow]:
    rows = []
    header_seen = False
    reader = csv.reader(io.StringIO(text))
    try:
        for record in reader:
            where = f"{path} line {reader.line_num}"
            if not record or all(not cell.strip() for cell in record) or record[0].lstrip().startswith("#"):
                continue
            cells = tuple(cell.strip() for cell in record)
            if not header_seen:
                if tuple(c.lower() for c in cells) != CSV_HEADER:
                    raise ValidationError(f"{where}: the first row must be the header 'feed,price', got {record!r}")
                header_seen = True
                continue
            if len(cells) != 2:
                raise ValidationError(f"{where}: expected 2 columns (feed,price), got {len(cells)}")
            if not cells[0]:
                raise ValidationError(f"{where}: the feed description is empty")
            rows.append(PriceRow(cells[0], check_price_text(cells[1], where), where))
    except csv.Error as exc:
        raise ValidationError(f"{path} line {reader.line_num}: not valid CSV: {exc}") from exc
    return rows


def random_walk(start: int, step_bps: int, seed: int, feed: str) -> Iterator[int]:
    """The answers of a feed's deterministic random walk: ``start``, then each one moved from
    the previous by a whole number of basis points in [-step_bps, +step_bps] (rounded down),
    kept within [1, 2^128 - 1]. Endless; the caller takes what it needs."""
    check_answer(start, "--start")
    if not 0 <= step_bps < BPS:
        raise ValidationError(f"--step-bps must be within [0, {BPS - 1}], got {step_bps}")
    answer = start
    yield answer
    n = 0
    while True:
        n += 1
        digest = hashlib.sha256(f"tchan-oracle:{seed}:{feed}:{n}".encode()).digest()
        move = int.from_bytes(digest[:8], "big") % (2 * step_bps + 1) - step_bps
        answer = min(max(answer * (BPS + move) // BPS, 1), MAX_ANSWER)
        yield answer


# --------------------------------------------------------------------------- the feeds


@dataclass(frozen=True, slots=True)
class Feed:
    """A feed of the deployment, checked: there is a contract, and the sender owns it."""

    description: str
    client: PriceFeedClient
    decimals: int


@dataclass(frozen=True, slots=True)
class Push:
    """One answer pushed: what the chain recorded."""

    feed: str
    address: str
    round: int
    answer: int
    price: str
    tx: str
    block: int

    def line(self) -> str:
        return f"{self.feed}  round {self.round}  price {self.price}  answer {self.answer}  tx {self.tx}"

    def to_json(self) -> dict[str, Any]:
        return {
            "feed": self.feed,
            "address": self.address,
            "round": self.round,
            "price": self.price,
            "answer": self.answer,
            "tx": self.tx,
            "block": self.block,
        }


def open_feeds(chain: Chain, deployment: Deployment, sender: Transactor, wanted: list[str]) -> dict[str, Feed]:
    """The feeds named in ``wanted``, each known to the deployment, deployed on this chain, owned
    by ``sender`` and with usable decimals; every check before any transaction."""
    from offchain.chain.client import PriceFeedClient
    from offchain.chain.connection import call_view

    available = deployment.feeds()
    if not available:
        raise ValidationError(f"deployment {deployment.network!r} has no price feeds: deploy with --feed 'XAU / USD'")
    unknown = sorted({d for d in wanted if d not in available})
    if unknown:
        raise ValidationError(
            f"no feed {', '.join(repr(d) for d in unknown)} in deployment {deployment.network!r}; "
            f"it has {', '.join(repr(d) for d in sorted(available))}"
        )
    feeds = {}
    for description in dict.fromkeys(wanted):
        address = available[description]
        if not chain.w3.eth.get_code(address):
            raise DeploymentError(
                f"no contract at {address} (feed {description!r}) on this node: was the chain restarted "
                "without its state? deploy again"
            )
        client = PriceFeedClient(chain, address)
        owner = str(call_view(client.contract.functions.owner()))
        if owner.lower() != sender.address.lower():
            raise NotFeedOwnerError(
                f"{sender.address} does not own feed {description!r} ({address}); its owner is {owner}: "
                "push with the key that deployed it"
            )
        decimals = int(call_view(client.contract.functions.decimals()))
        if decimals > MAX_DECIMALS:
            raise ValidationError(f"feed {description!r} has {decimals} decimals; the adjudicator reads at most 18")
        feeds[description] = Feed(description, client, decimals)
    return feeds


def push(sender: Transactor, feed: Feed, answer: int) -> Push:
    """Push ``answer`` and read the round it opened from the transaction's AnswerUpdated event."""
    from web3.logs import DISCARD

    from offchain.errors import ChainError

    receipt = feed.client.push(sender, answer)
    events = feed.client.contract.events.AnswerUpdated().process_receipt(receipt, errors=DISCARD)
    if len(events) != 1 or int(events[0]["args"]["current"]) != answer:
        raise ChainError(f"the push to {feed.description!r} did not emit one AnswerUpdated({answer})")
    return Push(
        feed=feed.description,
        address=feed.client.address,
        round=int(events[0]["args"]["roundId"]),
        answer=answer,
        price=format_price(answer, feed.decimals),
        tx="0x" + bytes(receipt["transactionHash"]).hex(),
        block=int(receipt["blockNumber"]),
    )


# --------------------------------------------------------------------------- the command


def check_args(args: argparse.Namespace) -> None:
    """Every option on its own, before anything is read or reached."""
    if not 0 <= args.interval <= MAX_INTERVAL:
        raise ValidationError(f"--interval must be within [0, {MAX_INTERVAL:.0f}] seconds, got {args.interval}")
    walk_only = {
        "--feed": bool(args.feed),
        "--start": bool(args.start),
        "--step-bps": args.step_bps is not None,
        "--seed": args.seed is not None,
        "--steps": args.steps is not None,
        "--once": args.once,
    }
    if args.prices is not None:
        misplaced = [name for name, given in walk_only.items() if given]
        if misplaced:
            raise ValidationError(f"{', '.join(misplaced)}: only with --random-walk (--prices FILE replays the file)")
        return
    if args.loop:
        raise ValidationError("--loop is for --prices FILE; a random walk runs until stopped unless --steps is given")
    if not args.feed:
        raise ValidationError("--random-walk needs at least one --feed DESCRIPTION with its --start PRICE")
    if len(args.start) != len(args.feed):
        raise ValidationError(f"give one --start PRICE per --feed: {len(args.feed)} feeds, {len(args.start)} starts")
    if len(set(args.feed)) != len(args.feed):
        raise ValidationError("each --feed may be given once")
    for n, start in enumerate(args.start, start=1):
        check_price_text(start, f"--start #{n}")
    if args.step_bps is not None and not 0 <= args.step_bps < BPS:
        raise ValidationError(f"--step-bps must be within [0, {BPS - 1}], got {args.step_bps}")
    if args.once and args.steps is not None:
        raise ValidationError("choose --once or --steps N, not both")
    if args.steps is not None and args.steps < 1:
        raise ValidationError(f"--steps must be at least 1, got {args.steps}")


def oracle_command(args: argparse.Namespace) -> int:
    from offchain.cli.localnet import stop_signals

    out = Output.of(args)
    check_args(args)
    rows = load_price_file(Path(args.prices)) if args.prices is not None else None
    network, chain, deployment = open_deployment(args)  # web3 is imported from here on only

    from offchain.chain.connection import Transactor

    wanted = [row.feed for row in rows] if rows is not None else list(args.feed)
    key = load_key(args, chain.chain_id)
    sender = Transactor.from_key(chain, key)
    feeds = open_feeds(chain, deployment, sender, wanted)

    rounds: Iterator[list[tuple[Feed, int]]]
    if rows is not None:
        answers = [(feeds[row.feed], parse_price(row.price, feeds[row.feed].decimals, row.where)) for row in rows]
        rounds = _file_rounds(answers, args.loop)
        source = f"{len(rows)} rows of {args.prices}" + (", looping" if args.loop else "")
    else:
        step_bps = 50 if args.step_bps is None else args.step_bps
        seed = 0 if args.seed is None else args.seed
        walks = [
            (feeds[d], random_walk(parse_price(s, feeds[d].decimals, f"--start {s}"), step_bps, seed, d))
            for d, s in zip(args.feed, args.start, strict=True)
        ]
        steps = 1 if args.once else args.steps
        rounds = _walk_rounds(walks, steps)
        source = f"random walk (seed {seed}, steps of up to {step_bps} bps), " + (
            f"{steps} pushes per feed" if steps is not None else "until stopped"
        )

    out.progress(f"oracle {sender.address} on chain {chain.chain_id} at {network.rpc}: {source}; Ctrl-C stops")
    pushes: list[Push] = []
    stopped = False
    with stop_signals(second_interrupts=True) as stop:
        for n, batch in enumerate(rounds):
            if n and stop.wait(args.interval):
                break
            if stop.is_set():
                break
            for feed, answer in batch:
                done = push(sender, feed, answer)
                pushes.append(done)
                if out.as_json:
                    out.progress(done.line())
                else:
                    out.say(done.line())
                if stop.is_set():
                    break
        stopped = stop.is_set()
    if stopped:
        out.progress(f"oracle stopped after {len(pushes)} pushes")
    out.result(
        {
            "network": network.name,
            "chain_id": chain.chain_id,
            "oracle": sender.address,
            "stopped": stopped,
            "pushes": [p.to_json() for p in pushes],
        }
    )
    return 0


def _file_rounds(answers: list[tuple[Feed, int]], loop: bool) -> Iterator[list[tuple[Feed, int]]]:
    """One push per round: the file's rows in order (again and again with ``loop``)."""
    while True:
        for answer in answers:
            yield [answer]
        if not loop:
            return


def _walk_rounds(walks: list[tuple[Feed, Iterator[int]]], steps: int | None) -> Iterator[list[tuple[Feed, int]]]:
    """Each round one push per feed, the next step of its walk; ``steps`` rounds, or endless."""
    n = 0
    while steps is None or n < steps:
        yield [(feed, next(walk)) for feed, walk in walks]
        n += 1


ORACLE_DESCRIPTION = """\
Push prices to the price feeds of the deployment with the feeds' owner key (the
key that ran `tchan deploy --feed ...`). Prices are decimal strings in the
quote currency (2012.50 for XAU / USD), converted exactly to the feed's integer
answer (price x 10^decimals). Every input is checked before the first push.
One line per push (feed, round, price, answer, tx); with --json, those lines go
to stderr and one JSON document listing every push is printed at the end.
Ctrl-C (or SIGTERM) lets the push under way finish and exits 0."""

ORACLE_EPILOG = """\
price files:
  CSV, with a header:            or JSON (the name ends in .json):
    feed,price                     [{"feed": "XAU / USD", "price": "2012.50"},
    XAU / USD,2012.50               {"feed": "BTC / USD", "price": "61000"}]
    BTC / USD,61000
  (blank lines and lines starting with # are skipped; JSON prices are strings)

examples:
  tchan oracle --dev-account 0 --prices prices.csv --interval 2
  tchan oracle --dev-account 0 --random-walk --feed "XAU / USD" --start 2000 \\
      --feed "BTC / USD" --start 60000 --step-bps 50 --steps 10 --seed 7

the random walk: see docs/cli.md (a function of seed, feed,
start and step alone)."""


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "oracle",
        parents=parents,
        help="run the oracle agent: push prices to the deployment's feeds (from a file or a random walk)",
        description=ORACLE_DESCRIPTION,
        epilog=ORACLE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_network_args(p)
    add_key_args(p, "the feeds' owner (the key that deployed them)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--prices",
        metavar="FILE",
        help="replay the (feed, price) rows of FILE in order, one push per row: CSV with the header "
        '\'feed,price\', or a .json list of {"feed": ..., "price": "..."}',
    )
    source.add_argument(
        "--random-walk",
        action="store_true",
        help="push a deterministic integer random walk per --feed, starting at its --start",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between two rows of the file, or two steps of the walk (default: 1; 0 for none)",
    )
    p.add_argument("--loop", action="store_true", help="--prices: replay the file again and again until stopped")
    p.add_argument(
        "--feed",
        action="append",
        default=[],
        metavar="DESCRIPTION",
        help="--random-walk: a feed of the deployment, e.g. 'XAU / USD' (repeatable, each with its --start)",
    )
    p.add_argument(
        "--start",
        action="append",
        default=[],
        metavar="PRICE",
        help="--random-walk: the first price of the matching --feed, a decimal in the quote currency, e.g. 2000 "
        "(repeatable, in --feed order)",
    )
    p.add_argument(
        "--step-bps",
        type=int,
        metavar="BPS",
        help="--random-walk: largest move of one step, in basis points of the price, 0 to 9999 (default: 50)",
    )
    p.add_argument(
        "--seed", type=int, metavar="N", help="--random-walk: seed; the same seed gives the same walk (default: 0)"
    )
    p.add_argument(
        "--steps",
        type=int,
        metavar="N",
        help="--random-walk: pushes per feed, the start included (default: until stopped)",
    )
    p.add_argument("--once", action="store_true", help="--random-walk: push each feed's start price once and exit")
    p.set_defaults(func=oracle_command)
