"""Clearing a batch (MISSION.md, "Bars"): 100,000 orders, the price and every fill, < 20 ms.

The figure is :func:`offchain.engine.auction.clear_columns` on a columnar book (one numpy row per
order: side, amounts, remaining, sequence), best of several runs. Beside it, in the same run:

- the yardstick: numpy's sort of as many int64 (the ratio is figure / sort);
- Python's ``sorted`` of as many ints, for scale;
- :func:`offchain.engine.auction.clear` on the same book as ``BookOrder`` objects with the fills
  as a dict (what the broker calls today: its cost is mostly turning objects into columns and
  back), and the pure-Python reference :func:`clear_reference` (once or twice: it is slow).

The three implementations are checked to agree on the price and on every fill.

    .venv/bin/python bench/clearing.py [--orders N] [--repeats R]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from common import bar, best_of, print_bars, results_dir, write_result

from offchain.engine.auction import BookOrder, BoolArray, Int64Array, clear, clear_columns, clear_reference

BAR_MS = 20.0
RESOLUTION = 10**6  # synthetic base units per whole unit
CHANNEL = b"\x42" * 32


def random_book(n: int, seed: int) -> tuple[BoolArray, Int64Array, Int64Array, Int64Array, Int64Array]:
    """A crossing book around a price of 30,000 collateral units: buys with limits 29,000-31,000,
    sells 29,500-31,500, amounts up to one whole unit, a third of the orders partly filled."""
    rng = np.random.default_rng(seed)
    is_buy = rng.random(n) < 0.5
    synthetic = rng.integers(1, RESOLUTION, n, dtype=np.int64)
    limit = np.where(is_buy, rng.integers(29_000, 31_000, n), rng.integers(29_500, 31_500, n))
    collateral = (limit * synthetic // RESOLUTION).astype(np.int64)
    partly = rng.random(n) < 1 / 3
    remaining = np.where(partly, np.maximum(1, synthetic // 2), synthetic).astype(np.int64)
    sequence = rng.permutation(n).astype(np.int64)
    return is_buy, synthetic, collateral, remaining, sequence


def measure(orders: int, repeats: int, seed: int) -> dict[str, Any]:
    columns = random_book(orders, seed)
    previous = 30_000
    fast = clear_columns(*columns, RESOLUTION, previous)
    seconds = best_of(lambda: clear_columns(*columns, RESOLUTION, previous), repeats)

    ints = np.random.default_rng(seed + 1).integers(0, 2**40, orders, dtype=np.int64)
    python_ints = ints.tolist()
    np_sort = best_of(lambda: np.sort(ints), repeats)
    py_sort = best_of(lambda: sorted(python_ints), repeats)

    is_buy, synthetic, collateral, remaining, sequence = (c.tolist() for c in columns)
    book = [
        BookOrder((CHANNEL, i), is_buy[i], synthetic[i], collateral[i], remaining[i], sequence[i])
        for i in range(orders)
    ]
    objects = clear(book, RESOLUTION, previous)
    objects_seconds = best_of(lambda: clear(book, RESOLUTION, previous), max(1, repeats // 2))
    start = time.perf_counter()
    reference = clear_reference(book, RESOLUTION, previous)
    reference_seconds = time.perf_counter() - start

    rows = fast.filled_rows.tolist()
    fills = {book[row].key: int(fast.fills[row]) for row in rows}
    agree = objects == reference and (fast.price, fast.volume) == (reference.price, reference.volume)
    agree = agree and fills == reference.fills and list(fills) == list(reference.fills)
    if not agree:
        raise SystemExit("clear_columns, clear and clear_reference disagree")
    ms = seconds * 1e3
    bars = [
        bar(
            f"clearing {orders:,} orders (price and every fill)",
            ms,
            "ms",
            np_sort * 1e3,
            f"numpy sort of {orders:,} int64",
            BAR_MS,
        )
    ]
    return {
        "bars": bars,
        "orders": orders,
        "repeats": repeats,
        "price": fast.price,
        "volume": fast.volume,
        "fills": len(rows),
        "ms": {
            "clear_columns": round(ms, 3),
            "numpy_sort_int64": round(np_sort * 1e3, 3),
            "python_sorted_ints": round(py_sort * 1e3, 3),
            "clear_book_objects": round(objects_seconds * 1e3, 3),
            "clear_reference_pure_python": round(reference_seconds * 1e3, 3),
        },
        "implementations_agree": agree,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=100_000, help="orders in the book (default: 100000)")
    parser.add_argument("--repeats", type=int, default=7, help="runs; the best is kept (default: 7)")
    parser.add_argument("--seed", type=int, default=1, help="random book seed (default: 1)")
    parser.add_argument("--results", help="directory for the JSON (default: bench/results)")
    args = parser.parse_args()
    result = measure(args.orders, args.repeats, args.seed)
    ms = result["ms"]
    price, volume, fills = result["price"], result["volume"], result["fills"]
    print(f"clearing {args.orders:,} orders: price {price}, volume {volume}, {fills:,} fills")
    print(f"  clear_columns (numpy)                 {ms['clear_columns']:9.2f} ms")
    print(f"  numpy sort of {args.orders:,} int64          {ms['numpy_sort_int64']:9.2f} ms  (reference)")
    print(f"  Python sorted() of {args.orders:,} ints     {ms['python_sorted_ints']:9.2f} ms")
    print(f"  clear(BookOrder objects -> dict)      {ms['clear_book_objects']:9.2f} ms")
    print(f"  clear_reference (pure Python)         {ms['clear_reference_pure_python']:9.2f} ms")
    print_bars(result["bars"])
    path = write_result("clearing", result.pop("bars"), results_dir(args.results), **result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
