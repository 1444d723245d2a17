"""Making a collection with fine codes ready to search on a Milvus server: companions after vs beside.

Why: a collection that keeps fine codes has two companion collections (``rsir_sdk.store.fine``).
``prepare_for_search`` used to prepare the main collection, then flush and wait for each
companion in turn; on the 2.3.5 server each wait is a segment hand-off of seconds however few
the rows, so every ``rsir index --prepare always`` and every ``--bulk`` run paid them, a re-run
that wrote nothing too. Now the companions are flushed first and their hand-off runs while the
main collection's does. Both orders run here on fresh collections of the same rows, on one
local server with its default hand-off settings, alternated:

- **baseline, one after the other**: ``server.prepare`` of the main collection, then for each
  companion: flush, wait indexed, wait served (the order before this change);
- ``MilvusCodeStore.prepare_for_search`` (companions flushed first, waited for after).

    python benchmarks/prepare_fine.py                 # writes its docs/benchmarks.md section
    python benchmarks/prepare_fine.py --rows 300 --repeat 2 --no-write
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import load_average, machine, section, table, versions, write_section

from rsir_sdk import MilvusCodeStore
from rsir_sdk.store import fine, server
from testing.store_local_server import local_server


def one_after_the_other(store: MilvusCodeStore) -> None:
    """The order before: the main collection, then each companion flushed and waited for."""
    server.prepare(store._conn, store.collection, policy=store.index_policy,
                   explicit_params=False)
    for comp, field in ((fine.mirror(store.collection), "fine"),
                        (fine.codebook(store.collection), "code")):
        store._conn.call("flush", comp, what=f"flushing {comp!r}")
        rows = server.count_strong(store._conn, comp)
        deadline = server._Deadline(comp, 3600)
        server.wait_indexed(store._conn, comp, rows, deadline, lambda p: None, field)
        server.wait_serving(store._conn, comp, rows, deadline, lambda p: None)


def filled(uri: str, name: str, rows: int) -> MilvusCodeStore:
    rng = np.random.default_rng(0)
    store = MilvusCodeStore(uri, name, bits=64, fine_bits=128)
    store.upsert([f"i{i}" for i in range(rows)], rng.integers(0, 256, (rows, 8), np.uint8),
                 fine=rng.integers(0, 256, (rows, 16), np.uint8))
    return store


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3, help="runs of each order, alternated")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    load0 = load_average()
    seconds: dict[str, list[float]] = {"baseline": [], "store": []}
    with tempfile.TemporaryDirectory() as tmp, local_server(Path(tmp) / "milvus") as srv:
        for i in range(args.repeat):
            for kind in ("baseline", "store"):
                store = filled(srv.uri, f"prep_{kind}_{i}", args.rows)
                t0 = time.perf_counter()
                if kind == "baseline":
                    one_after_the_other(store)
                else:
                    store.prepare_for_search()
                seconds[kind].append(time.perf_counter() - t0)
                print(f"{kind} {i}: {seconds[kind][-1]:.1f}s", file=sys.stderr, flush=True)
                store.close()
    base, ours = statistics.median(seconds["baseline"]), statistics.median(seconds["store"])
    rows = [["baseline: main collection, then each companion in turn",
             *(f"{s:.1f}" for s in seconds["baseline"]), f"{base:.1f}", "1.00"],
            ["`prepare_for_search`: companions flushed first, waited for after",
             *(f"{s:.1f}" for s in seconds["store"]), f"{ours:.1f}", f"{ours / base:.2f}"]]
    heads = ["order", *(f"run {i + 1} (s)" for i in range(args.repeat)), "median (s)",
             "vs baseline"]
    body = (f"{args.rows:,} rows, 64-bit codes and 128-bit fine codes, a fresh collection per "
            f"run, one local Milvus 2.3.5 server (default hand-off).\n\n" + table(heads, rows))
    print(body)
    if not args.no_write:
        doc = write_section("prepare-fine", section(
            "prepare-fine", "Ready to search with fine codes: companions beside the main collection",
            body, {**machine(), "versions": versions("pymilvus", "milvus")}, (load0, load_average())))
        print(f"wrote {doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
