"""The server half of ``benchmarks/search.py`` (``--server``): a Milvus 2.3.5 server on this
machine, 1M (or more) codes loaded by ``MilvusCodeStore.bulk_insert``, exact ``BIN_FLAT`` and
``BIN_IVF_FLAT`` (calibrated ``nprobe`` and a sweep), first and warm search times and recall@100
against FAISS' exact lists, on uniform, class-centred and trained codes.

Only the store's public API is used (``bulk_insert``, ``prepare_for_search``, ``set_index``,
``search_ids``, ``search``, ``index_info``); server CPU-seconds are read from ``/proc``.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _codes import Codes, make, recall_at_k
from _common import table

from rsir_sdk import MilvusCodeStore
from rsir_sdk.store import BulkOptions
from testing.store_local_server import local_server


def proc_cpu(pid: int) -> float:
    """user + system CPU-seconds of a process (Linux)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")


def proc_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def faiss_exact(db: np.ndarray, q: np.ndarray, k: int) -> tuple[dict[int, float], np.ndarray]:
    import faiss

    index = faiss.IndexBinaryFlat(db.shape[1] * 8)
    index.add(db)
    times, ref = {}, None
    for threads in sorted({1, os.cpu_count() or 1}):
        faiss.omp_set_num_threads(threads)
        index.search(q[:10], k)
        t0 = time.perf_counter()
        d, _ = index.search(q, k)
        times[threads] = time.perf_counter() - t0
        ref = d.astype(np.int64)
    assert ref is not None
    return times, ref


class Timer:
    """Wall, client CPU and server CPU of a block."""

    def __init__(self, pid: int):
        self.pid = pid

    def __enter__(self) -> "Timer":
        self.t, self.c, self.s = time.perf_counter(), time.process_time(), proc_cpu(self.pid)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self.t
        self.client = time.process_time() - self.c
        self.server = proc_cpu(self.pid) - self.s


def search_rows(store: MilvusCodeStore, queries: np.ndarray, k: int, ref: np.ndarray, pid: int,
                repeat: int, first: bool, exact_ties: bool = False) -> dict[str, Any]:
    """First (optional) and best-of-``repeat`` warm times of ``search_ids``, recall@k."""
    out: dict[str, Any] = {}
    runs = []
    before = dict(store.search_stats)
    for i in range(repeat + (1 if first else 0)):
        with Timer(pid) as t:
            res = store.search_ids(queries, k, exact_ties=exact_ties)
        if first and i == 0:
            out["first_s"] = t.wall
        else:
            runs.append(t)
    best = min(runs, key=lambda t: t.wall)
    out.update(warm_s=best.wall, client_cpu=best.client, server_cpu=best.server)
    got = np.full((len(queries), k), 2048, np.int64)
    for i, r in enumerate(res):
        got[i, : len(r.distances)] = r.distances
    out["recall"] = recall_at_k(ref, got)
    calls = repeat + (1 if first else 0)
    out["tie_searches"] = (store.search_stats.get("range_searches", 0)
                           - before.get("range_searches", 0)) / calls
    return out


def fields_time(store: MilvusCodeStore, queries: np.ndarray, k: int) -> float:
    t0 = time.perf_counter()
    store.search(queries, k, exact_ties=False)  # label, path and metadata read, hits made
    return time.perf_counter() - t0


def profile(store: MilvusCodeStore, queries: np.ndarray, k: int) -> list[list[Any]]:
    """Where a warm ``search_ids`` spends its client-side time, by library (cProfile)."""
    pr = cProfile.Profile()
    pr.enable()
    store.search_ids(queries, k, exact_ties=False)
    pr.disable()
    buckets: dict[str, float] = {}
    stats = pstats.Stats(pr).stats  # type: ignore[attr-defined]
    for (filename, _, func), (_, _, tottime, _, _) in stats.items():
        if "grpc" in filename or "cygrpc" in func or "grpc" in func:
            key = "gRPC call (request out, server, response in)"
        elif "pymilvus" in filename:
            key = "pymilvus (request building, response decoding)"
        elif "rsir_sdk" in filename:
            key = "rsir_sdk (tie rule, lean conversion)"
        elif "protobuf" in filename or "google" in filename:
            key = "protobuf"
        else:
            key = "other (builtins, numpy)"
        buckets[key] = buckets.get(key, 0.0) + tottime
    return [[k_, v] for k_, v in sorted(buckets.items(), key=lambda kv: -kv[1])]


#: rows per ``bulk_insert`` call: the client builds one call's columns (ids, labels, paths,
#: metadata and their digests) in memory, about 1 KB a row, so 10M rows go in ten calls
LOAD_CALL_ROWS = 1_000_000


def bulk_load(store: MilvusCodeStore, db: np.ndarray, staging: Path) -> dict[str, Any]:
    """Load ``db`` with realistic ids, labels, paths and metadata through ``bulk_insert``, one
    call per :data:`LOAD_CALL_ROWS` rows (ids are new: no presence check), then prepare."""
    total: dict[str, Any] = {}
    n = len(db)
    for start in range(0, n, LOAD_CALL_ROWS):
        rng = range(start, min(n, start + LOAD_CALL_ROWS))
        last = rng.stop == n
        out = store.bulk_insert(
            [str(i) for i in rng], db[rng.start : rng.stop],
            [f"class_{i % 45:02d}" for i in rng],
            [f"/data/archive/class_{i % 45:02d}/img_{i:08d}.tif" for i in rng],
            [{"year": 2015 + i % 8} for i in rng],
            staging_dir=staging, options=BulkOptions(skip_existing=False, prepare=last))
        for key, value in out.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
        if last:
            total["prepare"] = out["prepare"]
        if n > LOAD_CALL_ROWS:
            print(f"    {rng.stop:,} rows loaded", file=sys.stderr, flush=True)
    return total


@dataclass
class Results:
    """What the runs add up to: the rows of the report's tables, its notes and the raw records."""

    records: list[dict[str, Any]] = field(default_factory=list)
    search: list[list[Any]] = field(default_factory=list)  # the search table
    load: list[list[Any]] = field(default_factory=list)  # the loading table
    notes: list[str] = field(default_factory=list)  # the codes' notes
    profile: list[list[Any]] = field(default_factory=list)  # where the best search spends its time


@dataclass
class Case:
    """One database on the server (``n`` codes of one kind) and what its search rows compare to:
    FAISS' exact distance lists and the faster FAISS run's time."""

    args: Any
    pid: int  # the server's process (CPU-seconds)
    n: int
    tag: str  # "n kind", the first column of every row
    codes: Codes
    ref: np.ndarray
    fbest: float
    store: MilvusCodeStore


def run(args: Any) -> tuple[str, list[dict[str, Any]]]:
    """Run the server benchmark; returns the markdown body and the raw records."""
    kinds = [x for x in args.kinds.split(",") if x]
    sizes = [int(x) for x in args.server_sizes.split(",")]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rsir-bench-server-"))
    res = Results()
    with local_server(work / "milvus") as srv:
        print(f"Milvus server started in {srv.started_s:.1f}s", file=sys.stderr, flush=True)
        for n in sizes:
            for kind in kinds:
                bench_codes(args, srv, work, kind, n, res, cold=args.cold and kind == kinds[0])
                shutil.rmtree(work / "staging", ignore_errors=True)
    body = report(args, res)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return body, res.records


def bench_codes(args: Any, srv: Any, work: Path, kind: str, n: int, res: Results, cold: bool) -> None:
    """Every row of one database: FAISS, the bulk load, BIN_FLAT, each BIN_IVF_FLAT ``nlist``,
    the best configuration at recall >= 0.99 (profiled with ``--profile``), and with ``cold`` the
    first search without ``prepare_for_search``; the collection is dropped at the end."""
    k = args.k
    codes = make(kind, n, args.queries, 64, args.seed, args.bundle, args.data, args.cache)
    res.notes.append(f"- `{kind}`: {codes.note}")
    print(f"{kind} n={n:,}: faiss ...", file=sys.stderr, flush=True)
    ftimes, ref = faiss_exact(codes.db, codes.queries, k)
    fbest = min(ftimes.values())
    tag = f"{n:,} {kind}"
    for th, t in ftimes.items():
        res.search.append([tag, f"FAISS IndexBinaryFlat, {th} thread{'s' if th > 1 else ''}",
                           "-", "-", t, f"{t / fbest:.2f}x", 1.0, "-", "-", "-", "-"])
    store = MilvusCodeStore(srv.uri, f"bench_{kind}_{n}", bits=64, index_type="BIN_FLAT",
                            encoder={"encoder_id": f"bench-{kind}", "bits": 64, "method": kind})
    case = Case(args, srv.pid, n, tag, codes, ref, fbest, store)
    rec: dict[str, Any] = {"kind": kind, "n": n, "faiss": ftimes,
                           "load": load_codes(case, work, res)}
    best = search_flat(case, rec, res)
    for nlist in [int(x) for x in args.nlists.split(",") if x]:
        best = search_ivf(case, nlist, rec, res, best)
    rec["best"] = {"config": best[0], "warm_s": best[1]["warm_s"],
                   "x_faiss": best[1]["warm_s"] / fbest, "recall": best[1]["recall"]}
    res.notes.append(f"- best at recall@{k} >= 0.99 on `{kind}` ({n:,}): {best[0]}, "
                     f"{best[1]['warm_s']:.2f} s = {best[1]['warm_s'] / fbest:.2f}x the faster "
                     f"FAISS run (recall {best[1]['recall']:.4f})")
    if args.profile and best[0] != "BIN_FLAT":
        profile_best(case, best[0], res)
    res.records.append(rec)
    store.drop()
    store.close()
    if cold:
        res.records.append(cold_first_search(srv, codes, k, n))
        r = res.records[-1]
        res.notes.append(f"- without `prepare_for_search` (`{kind}`, {n:,} rows written by "
                         f"`store.insert`, {r['insert_s']:.0f} s): first 1,000-query search "
                         f"{r['first_s']:.1f} s, second {r['second_s']:.1f} s; after "
                         f"`prepare_for_search` ({r['prepare_s']:.0f} s) {r['after_s']:.1f} s")


def load_codes(case: Case, work: Path, res: Results) -> dict[str, Any]:
    """Bulk-load the case's codes (timed, with the client's and the server's CPU) and add the
    loading table's row; returns ``bulk_load``'s figures."""
    print("  bulk load ...", file=sys.stderr, flush=True)
    with Timer(case.pid) as t:
        load = bulk_load(case.store, case.codes.db, work / "staging")
    prep = load["prepare"]
    n = case.n
    res.load.append([case.tag, n, t.wall - prep["total_s"], load["write_s"], load["import_s"],
                     load["visible_s"], prep["total_s"], t.wall, n / t.wall, t.client,
                     t.server, proc_rss_mb(case.pid)])
    return load


def search_flat(case: Case, rec: dict[str, Any], res: Results) -> tuple[str, dict[str, Any]]:
    """The exact ``BIN_FLAT`` rows: ties broken by distance only, then exactly (the store's
    default); returns the first as the best configuration so far."""
    args, codes, k, fbest = case.args, case.codes, case.args.k, case.fbest
    print("  BIN_FLAT ...", file=sys.stderr, flush=True)
    flat = search_rows(case.store, codes.queries, k, case.ref, case.pid, args.repeat, first=True)
    flat["fields_s"] = fields_time(case.store, codes.queries, k)
    rec["BIN_FLAT"] = flat
    res.search.append([case.tag, "server BIN_FLAT (exact)", "-", flat["first_s"],
                       flat["warm_s"], f"{flat['warm_s'] / fbest:.2f}x", flat["recall"],
                       flat["server_cpu"], flat["client_cpu"], flat["fields_s"],
                       flat["tie_searches"]])
    # the same with ties broken exactly by the tie rule (the store's default), on fewer queries
    # when tie groups are huge (duplicated trained codes)
    nq = min(len(codes.queries), args.exact_queries)
    ex = search_rows(case.store, codes.queries[:nq], k, case.ref[:nq], case.pid, 1, first=False,
                     exact_ties=True)
    rec["BIN_FLAT_exact_ties"] = {**ex, "queries": nq}
    res.search.append([case.tag, f"server BIN_FLAT, exact ties ({nq:,} queries)",
                       "-", "-", ex["warm_s"], f"{ex['warm_s'] / fbest * len(codes.queries) / nq:.2f}x",
                       ex["recall"], ex["server_cpu"], ex["client_cpu"], "-",
                       ex["tie_searches"]])
    return ("BIN_FLAT", flat)


def search_ivf(case: Case, nlist: int, rec: dict[str, Any], res: Results,
               best: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """``BIN_IVF_FLAT`` with ``nlist`` lists: build and calibrate it, search at the calibrated
    ``nprobe``, then at each ``--nprobes`` value below ``nlist``; returns ``best`` or the faster
    of these at recall >= 0.99."""
    args, queries, k, fbest = case.args, case.codes.queries, case.args.k, case.fbest
    print(f"  BIN_IVF_FLAT nlist {nlist} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    info = case.store.set_index("BIN_IVF_FLAT", {"nlist": nlist})
    build = time.perf_counter() - t0
    cal = info["calibration"]
    r = search_rows(case.store, queries, k, case.ref, case.pid, args.repeat, first=True)
    r["fields_s"] = fields_time(case.store, queries, k)
    r.update(build_s=build, calibration=cal)
    rec[f"ivf{nlist}"] = r
    res.search.append([case.tag, f"server BIN_IVF_FLAT nlist {nlist}, nprobe {cal['nprobe']} "
                       f"(calibrated: {cal['recall']:.3f})", build, r["first_s"],
                       r["warm_s"], f"{r['warm_s'] / fbest:.2f}x", r["recall"],
                       r["server_cpu"], r["client_cpu"], r["fields_s"],
                       r["tie_searches"]])
    if r["recall"] >= 0.99 and r["warm_s"] < best[1]["warm_s"]:
        best = (f"BIN_IVF_FLAT nlist {nlist} nprobe {cal['nprobe']}", r)
    for nprobe in [int(x) for x in args.nprobes.split(",") if x]:
        if nprobe >= nlist or nprobe == cal["nprobe"]:
            continue
        case.store.search_params = {"nprobe": nprobe}
        s = search_rows(case.store, queries, k, case.ref, case.pid, max(1, args.repeat - 1),
                        first=False)
        rec[f"ivf{nlist}_nprobe{nprobe}"] = s
        res.search.append([case.tag, f"server BIN_IVF_FLAT nlist {nlist}, nprobe {nprobe}",
                           "-", "-", s["warm_s"], f"{s['warm_s'] / fbest:.2f}x",
                           s["recall"], s["server_cpu"], s["client_cpu"], "-",
                           s["tie_searches"]])
        if s["recall"] >= 0.99 and s["warm_s"] < best[1]["warm_s"]:
            best = (f"BIN_IVF_FLAT nlist {nlist} nprobe {nprobe}", s)
    case.store.search_params = {}
    return best


def profile_best(case: Case, config: str, res: Results) -> None:
    """Profile a warm search of the best configuration ``config`` (its index rebuilt when a later
    ``nlist`` replaced it) and add its rows to the profile table."""
    store = case.store
    if config.startswith("BIN_IVF_FLAT"):
        parts = config.split()
        nl, npb = int(parts[2]), int(parts[4])
        if store.index_info()["params"].get("nlist") != str(nl):
            store.set_index("BIN_IVF_FLAT", {"nlist": nl}, calibrate=False)
        store.search_params = {"nprobe": npb}
    with Timer(case.pid) as t:
        rows = profile(store, case.codes.queries, case.args.k)
    res.profile += [[case.tag, config, a, b] for a, b in rows]
    res.profile.append([case.tag, config, "total wall (profiled) / server CPU", t.wall])
    res.profile.append([case.tag, config, "server CPU-seconds in that search", t.server])
    store.search_params = {}


def report(args: Any, res: Results) -> str:
    """The markdown body: the search table, how to read it, the loading table, the codes' notes
    and (with ``--profile``) where the best search spends its time."""
    body = "Search, 1,000 held-out queries, top-100 (`MilvusCodeStore.search_ids(..., " \
        "exact_ties=False)` unless the row says exact ties; recall@100 is tie-aware " \
        "against FAISS' exact distance lists):\n\n"
    body += table(["n, codes", "system", "index build s", "first search s", "warm search s",
                   "time vs FAISS", "recall@100", "server CPU-s", "client CPU-s",
                   "with fields s", "tie requests"], res.search)
    body += ("\n\nFirst search = the first 1,000-query search after the store said the collection "
             "was ready (`bulk_insert(prepare=True)` / `set_index`); warm = best of "
             f"{args.repeat}. Time vs FAISS = warm time / the faster FAISS run in the same run. "
             "With fields = `store.search` returning label, path and metadata. Server CPU-s from "
             "/proc (both cores of the server process). Tie requests = extra range searches per "
             "1,000-query search that read whole tie groups at the 100th distance (exact ties by "
             "id; batched by distance).\n\nLoading (`MilvusCodeStore.bulk_insert`, one call per 1M rows: "
             "checks, numpy files, Milvus bulk import, then `prepare_for_search`):\n\n")
    body += table(["n, codes", "rows", "load s", "files written s", "import s",
                   "segments served s", "prepare s", "end to end s", "rows/s end to end",
                   "client CPU-s", "server CPU-s", "server RSS MB after"], res.load)
    body += "\n\nCodes:\n\n" + "\n".join(res.notes) + "\n"
    if res.profile:
        body += ("\nWhere a warm search of the best configuration spends its time (client "
                 "cProfile, by library; the gRPC row includes waiting for the server):\n\n")
        body += table(["n, codes", "config", "part", "s"], res.profile) + "\n"
    return body


def cold_first_search(srv: Any, codes: Any, k: int, n: int) -> dict[str, Any]:
    """Rows inserted (not bulk-loaded), searched at once without prepare_for_search."""
    print("  cold: insert without prepare ...", file=sys.stderr, flush=True)
    store = MilvusCodeStore(srv.uri, f"bench_cold_{n}", bits=64, index_type="BIN_FLAT")
    t0 = time.perf_counter()
    store.insert([str(i) for i in range(n)], codes.db, batch_size=10_000)
    out: dict[str, Any] = {"cold": True, "insert_s": time.perf_counter() - t0}
    for key in ("first_s", "second_s"):
        t0 = time.perf_counter()
        store.search_ids(codes.queries, k)
        out[key] = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.prepare_for_search()
    out["prepare_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.search_ids(codes.queries, k)
    out["after_s"] = time.perf_counter() - t0
    store.drop()
    store.close()
    return out
