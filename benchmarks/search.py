"""Hamming top-k over 100k-10M codes: MilvusCodeStore on Milvus Lite and on a Milvus server vs FAISS.

Why: once an archive holds millions of codes, search speed is what users feel. The baseline is
FAISS ``IndexBinaryFlat`` (exhaustive, exact, SIMD popcount) on the same codes in the same run;
the numpy brute force is the no-dependency floor. Every system must return the same distance
list for every query (exact search), and the script says so per row.

Codes are uniform random (seeded): with 64 bits the top-100 of 1M sit at distances ~12-17, so
the k-th distance ties; ids at the tie may legitimately differ, distance lists may not.

    python benchmarks/search.py                                   # 100k and 1M, 64 and 128 bits
    python benchmarks/search.py --sizes 20000 --queries 200 --no-write   # a quick look

``--server`` (its own section) starts a Milvus 2.3.5 server on this machine (PyPI ``milvus``),
bulk-loads 1M codes of each kind (uniform, class-centred, a trained bundle's codes of a real
dataset replicated with augmentation-rate bit flips: ``benchmarks/_codes.py``) and measures exact
``BIN_FLAT`` and ``BIN_IVF_FLAT`` (calibrated ``nprobe`` and a sweep): first and warm search
times, recall@100 against FAISS' exact lists, CPU-seconds (``benchmarks/_search_server.py``):

    python benchmarks/search.py --server --kinds uniform,clustered,trained \
        --bundle runs/bundles/ahcl-nwpu12-64 --data ../shared/data/nwpu12

Needs ``faiss-cpu`` (benchmark-only: ``pip install faiss-cpu``).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import load_average, machine, section, table, versions, write_section

from rsir_sdk import MilvusCodeStore
from rsir_sdk.codes import topk_bruteforce
from testing import store_baseline as baseline


def random_codes(n: int, bits: int, rng: np.random.Generator) -> np.ndarray:
    """``uint8 (n, bits/8)`` uniform random packed codes."""
    return rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)


def numpy_topk(queries: np.ndarray, db: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k with numpy only: 64-bit popcount (``np.bitwise_count``) + k-th-distance threshold.

    Same result as :func:`rsir_sdk.codes.topk_bruteforce` (ties by lower index) without its
    full argsort of every row; chunked so temporaries stay near 128 MB.
    """
    if not hasattr(np, "bitwise_count"):  # numpy < 2.0: byte lookup table, slower
        return topk_bruteforce(queries, db, k)
    word = np.uint64 if db.shape[1] % 8 == 0 else np.uint8
    dbw = np.ascontiguousarray(db).view(word)
    words = [np.ascontiguousarray(dbw[:, w]) for w in range(dbw.shape[1])]
    qw = np.ascontiguousarray(queries).view(word)
    n = dbw.shape[0]
    acc = np.uint8 if db.shape[1] * 8 < 256 else np.uint16
    step = max(1, (128 << 20) // max(1, n * 8))
    idx_out = np.empty((len(qw), k), np.int64)
    dist_out = np.empty((len(qw), k), np.int32)
    for s in range(0, len(qw), step):
        q = qw[s : s + step]
        d = np.bitwise_count(np.bitwise_xor(q[:, 0, None], words[0][None, :])).astype(acc)
        for w in range(1, len(words)):
            d += np.bitwise_count(np.bitwise_xor(q[:, w, None], words[w][None, :]))
        kth = np.partition(d, k - 1, axis=1)[:, k - 1]
        for j in range(d.shape[0]):
            cand = np.flatnonzero(d[j] <= kth[j])
            order = np.argsort(d[j][cand], kind="stable")[:k]
            idx_out[s + j] = cand[order]
            dist_out[s + j] = d[j][cand[order]]
    return idx_out, dist_out


def bench_faiss(db, queries, bits, k, threads: int):
    import faiss

    faiss.omp_set_num_threads(threads)
    t0 = time.perf_counter()
    index = faiss.IndexBinaryFlat(bits)
    index.add(db)
    t_add = time.perf_counter() - t0
    index.search(queries[:10], k)  # warm-up
    t0 = time.perf_counter()
    D, I = index.search(queries, k)
    t_search = time.perf_counter() - t0
    single = []
    for q in queries[:50]:
        t1 = time.perf_counter()
        index.search(q[None, :], k)
        single.append(time.perf_counter() - t1)
    return {"add_s": t_add, "search_s": t_search, "dist": D.astype(np.int32),
            "single_ms": 1000 * statistics.median(single)}


def bench_numpy(db, queries, k):
    numpy_topk(queries[:2], db, k)  # warm-up
    t0 = time.perf_counter()
    idx, dist = numpy_topk(queries, db, k)
    t = time.perf_counter() - t0
    single = []
    for q in queries[:20]:
        t1 = time.perf_counter()
        numpy_topk(q[None, :], db, k)
        single.append(time.perf_counter() - t1)
    return {"search_s": t, "dist": dist, "idx": idx, "single_ms": 1000 * statistics.median(single)}


def bench_milvus(db, queries, bits, k, uri, diagnose: bool):
    name = f"bench_{bits}_{len(db)}"
    ids = [str(i) for i in range(len(db))]
    store = MilvusCodeStore(uri, name, bits=bits,
                            encoder={"encoder_id": "bench", "bits": bits, "method": "random"})
    out: dict = {}
    try:
        t0 = time.perf_counter()
        store.upsert(ids, db, batch_size=10000)
        out["insert_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.search(queries[:1], k)  # first search loads the collection
        out["first_search_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        hits = store.search(queries, k)
        out["search_s"] = time.perf_counter() - t0
        out["dist"] = np.array([[h.distance for h in row] for row in hits], np.int32)
        single = []
        for q in queries[:50]:
            t1 = time.perf_counter()
            store.search(q[None, :], k)
            single.append(time.perf_counter() - t1)
        out["single_ms"] = 1000 * statistics.median(single)
        if diagnose:
            out.update(_milvus_diagnostics(store, name, db, queries, k))
    finally:
        store.drop()
        store.close()
    return out


def _milvus_diagnostics(store, name, db, queries, k) -> dict:
    """Where Milvus Lite's time goes, through the store's public API and bare pymilvus: the
    search without stored fields (``search_ids``), and inserts of the same rows."""
    t0 = time.perf_counter()
    store.search_ids(queries, k)
    raw_search = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.search(queries, k, fields=())
    raw_search_fields = time.perf_counter() - t0  # hits as objects, no stored fields
    ids = [str(i) for i in range(len(db))]
    timings = {}
    for verb in ("insert", "upsert"):
        copy = MilvusCodeStore(store.uri, f"{name}_{verb}", bits=db.shape[1] * 8)
        t0 = time.perf_counter()
        getattr(copy, verb)(ids, db, batch_size=10000)
        timings[verb] = time.perf_counter() - t0
        copy.drop()
        copy.close()
    # bare pymilvus: an int64 id and the code, row dicts, no checks (the floor for Lite)
    raw_insert = baseline.insert_int_id_codes(store.uri, name + "_raw", db)
    return {"raw_search_s": raw_search, "raw_search_fields_s": raw_search_fields,
            "raw_insert_s": raw_insert, "insert_s_store": timings["insert"],
            "upsert_s_store": timings["upsert"]}


def exact(dist: np.ndarray, reference: np.ndarray) -> str:
    """'yes' when every query's distance list equals the reference's, else how many differ."""
    bad = int((dist != reference).any(axis=1).sum())
    return "yes" if bad == 0 else f"NO ({bad} queries differ)"


def parse_args(argv=None) -> argparse.Namespace:
    """The command line: the Lite section's sizes and options, and the ``--server`` group."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="100000,1000000", help="database sizes, comma-separated")
    p.add_argument("--bits", default="64,128", help="code lengths, comma-separated")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("-k", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="folder for the Milvus Lite file (default: a temp folder)")
    p.add_argument("--skip-numpy", action="store_true")
    p.add_argument("--diagnose", default="smallest", choices=["none", "smallest", "all"],
                   help="raw-pymilvus rows that split Milvus' time (default: smallest size only)")
    p.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    g = p.add_argument_group("server (--server: its own section of docs/benchmarks.md)")
    g.add_argument("--server", action="store_true", help="benchmark a Milvus server instead of Lite")
    g.add_argument("--kinds", default="uniform,clustered,trained", help="codes: uniform, "
                   "clustered, trained (needs --bundle and --data)")
    g.add_argument("--server-sizes", default="1000000", help="database sizes (default 1000000)")
    g.add_argument("--nlists", default="1024,128", help="BIN_IVF_FLAT lists per segment to try")
    g.add_argument("--nprobes", default="4,16,64", help="nprobe values swept besides the calibrated one")
    g.add_argument("--repeat", type=int, default=3, help="warm searches (best of)")
    g.add_argument("--section", default="search-server",
                   help="the docs/benchmarks.md section written (e.g. search-server-10m, so a 10M "
                        "run keeps the 1M section)")
    g.add_argument("--bundle", type=Path, help="a trained bundle (for --kinds trained)")
    g.add_argument("--data", type=Path, help="the dataset folder its codes are made from")
    g.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "rsir-bench-codes",
                   help="cache of the trained codes")
    g.add_argument("--cold", action="store_true", help="also time the first search without "
                   "prepare_for_search (inserted rows; slow)")
    g.add_argument("--profile", action="store_true", help="profile the best configuration's search")
    g.add_argument("--exact-queries", type=int, default=1000,
                   help="queries of the exact-ties BIN_FLAT row (fewer: huge tie groups are slow)")
    return p.parse_args(argv)


def bench_size(args: argparse.Namespace, n: int, bits: int, uri: str, diagnose: bool,
               rows: list[list], diag_rows: list[list]) -> None:
    """One database size and code length: FAISS (1 and all threads), numpy, Milvus Lite on the
    same seeded codes; appends their table rows to ``rows`` (and ``diag_rows``) and logs the
    last rows (``rows`` grows in place, so the log shows what it always showed)."""
    rng = np.random.default_rng([args.seed, bits, n])
    db = random_codes(n, bits, rng)
    queries = random_codes(args.queries, bits, rng)
    print(f"n={n:,} bits={bits}: faiss ...", file=sys.stderr, flush=True)
    fas = {t: bench_faiss(db, queries, bits, args.k, t) for t in sorted({1, os.cpu_count() or 1})}
    assert all(np.array_equal(f["dist"], fas[1]["dist"]) for f in fas.values())
    # the baseline is FAISS at its best thread count (OpenMP suffers most from a busy machine)
    fa = min(fas.values(), key=lambda f: f["search_s"])
    ref = fa["dist"]
    npy = None
    if not args.skip_numpy:
        print("  numpy ...", file=sys.stderr, flush=True)
        npy = bench_numpy(db, queries, args.k)
        # the fast numpy path must equal the SDK's reference, tie order included
        ridx, rdist = topk_bruteforce(queries[:5], db, args.k)
        assert np.array_equal(ridx, npy["idx"][:5]) and np.array_equal(rdist, npy["dist"][:5])
    print("  milvus lite ...", file=sys.stderr, flush=True)
    mv = bench_milvus(db, queries, bits, args.k, uri, diagnose)
    nq = len(queries)
    for t, f in fas.items():
        rows.append([f"{n:,}", bits, f"FAISS IndexBinaryFlat, {t} thread{'s' if t > 1 else ''}",
                     f["add_s"], n / f["add_s"], f["search_s"], nq / f["search_s"],
                     f["single_ms"], f"{f['search_s'] / fa['search_s']:.1f}x",
                     "reference" if f is fa else exact(f["dist"], ref)])
    rows.append([f"{n:,}", bits, "MilvusCodeStore (Lite, BIN_FLAT)", mv["insert_s"],
                 n / mv["insert_s"], mv["search_s"], nq / mv["search_s"], mv["single_ms"],
                 f"{mv['search_s'] / fa['search_s']:.1f}x", exact(mv["dist"], ref)])
    if npy:
        rows.append([f"{n:,}", bits, "numpy popcount + threshold", None, None,
                     npy["search_s"], nq / npy["search_s"], npy["single_ms"],
                     f"{npy['search_s'] / fa['search_s']:.1f}x", exact(npy["dist"], ref)])
    if "raw_search_s" in mv:
        diag_rows.append([f"{n:,}", bits, mv["search_s"], mv["raw_search_fields_s"],
                          mv["raw_search_s"], fa["search_s"], mv["first_search_s"],
                          n / mv["insert_s"], n / mv["insert_s_store"],
                          n / mv["upsert_s_store"], n / mv["raw_insert_s"]])
    print(table(HEAD, rows[-(2 + len(fas)):]), file=sys.stderr, flush=True)


def main(argv=None) -> int:
    """The Lite section (every size and length through :func:`bench_size`), or ``--server``'s."""
    args = parse_args(argv)
    if args.server:
        return run_server(args)
    try:
        import faiss  # noqa: F401 - the baseline of every row
    except ImportError:
        print("benchmarks/search.py measures FAISS beside Milvus: pip install -e '.[bench]' "
              "(faiss-cpu)", file=sys.stderr)
        return 2
    sizes = [int(x) for x in args.sizes.split(",")]
    bit_lengths = [int(x) for x in args.bits.split(",")]
    load0 = load_average()
    rows, diag_rows = [], []
    tmp = tempfile.TemporaryDirectory(prefix="rsir-bench-")
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    uri = str(work / "bench.db")
    for bits in bit_lengths:
        for n in sizes:
            diagnose = args.diagnose == "all" or (args.diagnose == "smallest" and n == min(sizes))
            bench_size(args, n, bits, uri, diagnose, rows, diag_rows)
            gc.collect()
    tmp.cleanup()
    body = table(HEAD, rows)
    body += (f"\n\n{args.queries:,} queries, k = {args.k}, uniform random codes (seed {args.seed}). "
             "Time ratio = search time / the faster FAISS run's search time (lower is better). Insert = "
             "`MilvusCodeStore.upsert` in batches of 10,000 (FAISS: `add`). Single query = median "
             "latency of one query, k = 100. Exact = every query's distance list equals FAISS'.\n")
    if diag_rows:
        body += "\nWhere Milvus Lite's time goes (same queries):\n\n" + table(DIAG_HEAD, diag_rows) + "\n"
    print(body)
    meta = machine({"versions": versions("pymilvus", "milvus-lite", "faiss-cpu", "numpy")})
    if not args.no_write:
        doc = write_section("search", section(
            "search", "Search: Milvus Lite vs FAISS vs numpy (`benchmarks/search.py`)", body, meta,
            (load0, load_average())))
        print(f"written to {doc}", file=sys.stderr)
    return 0


def run_server(args) -> int:
    """``--server``: the server section (benchmarks/_search_server.py)."""
    import _search_server

    load0 = load_average()
    body, _ = _search_server.run(args)
    print(body)
    meta = machine({"versions": versions("pymilvus", "milvus", "faiss-cpu", "numpy")})
    if not args.no_write:
        sizes = ", ".join(f"{int(x):,}" for x in args.server_sizes.split(","))
        doc = write_section(args.section, section(
            args.section, f"Search on a Milvus server, {sizes} codes: BIN_FLAT and BIN_IVF_FLAT "
            "vs FAISS (`benchmarks/search.py --server`)", body, meta, (load0, load_average())))
        print(f"written to {doc}", file=sys.stderr)
    return 0


HEAD = ["n", "bits", "system", "insert s", "insert rows/s", "search s", "queries/s",
        "1 query ms", "time vs FAISS", "exact"]
DIAG_HEAD = ["n", "bits", "store.search s", "store.search, no fields s", "store.search_ids s",
             "FAISS s", "first search (load) s", "store.upsert rows/s (first load)",
             "store.insert rows/s", "store.upsert rows/s", "pymilvus insert (int id, code only) rows/s"]

if __name__ == "__main__":
    sys.exit(main())
