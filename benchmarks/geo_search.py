"""Place- and period-filtered Hamming search at 1M codes on a Milvus server, next to the unfiltered
search in the same run (issue 22).

Why: a filter is a scalar comparison Milvus evaluates before the Hamming scan (``lat_max >= s and
lat_min <= n and ...`` over typed DOUBLE fields, ``rsir_sdk.geo``); whether a box holding 1% or
10% of an archive makes a search cheaper or dearer than no filter, and what the exact ``near``
test (an enclosing box in the engine, the great-circle distance after, deeper rounds until ``k``
pass) costs, is what a user choosing between them needs to know.

What it does: starts a Milvus 2.3.5 server on this machine (``testing/store_local_server.py``),
bulk-loads ``--size`` 64-bit codes (``benchmarks/_codes.py``: uniform or class-centred) through
``MilvusCodeStore.bulk_insert`` with a footprint per item (a random box of 0.1-2 degrees a side,
centres uniform on the sphere between 80 S and 80 N, so some boxes cross the antimeridian) and a
time (uniform over 2015-2024), prepares for search, then for ``--queries`` held-out queries and
each ``k`` runs ``search_ids`` (the store's exact order and tie rule) unfiltered (the baseline),
within a box holding about 1% of the items, the same across the antimeridian, a box holding
about 10%, ``near`` a point (a circle crossing the antimeridian) holding about 1%, and a period
holding about 10%. Each filter is sized on the in-memory footprints and its holding counted
twice (numpy, and ``store.count(geo=...)``). Times: all queries in one call, and one query per
call (p50 and total). Correctness: for ``--check`` queries per row the hits (ids and distances,
in order) equal a brute force in numpy over the in-memory codes and footprints (box and period
masks computed independently of ``rsir_sdk.geo``; ``near``: a numpy great-circle bound on the
box centres, then ``rsir_sdk.geo.box_distance`` for the exact distance to each box).

    python benchmarks/geo_search.py                                   # 1M codes, 1,000 queries
    python benchmarks/geo_search.py --size 20000 --queries 50 --no-write   # a quick look
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from _codes import make
from _common import load_average, machine, section, table, versions, write_section

from rsir_sdk import MilvusCodeStore
from rsir_sdk.geo import EARTH_RADIUS_M, BBox, Footprint, GeoFilter, Near, Period, box_distance, iso
from rsir_sdk.store import BulkOptions
from rsir_sdk.store.topk import tie_order
from testing.store_local_server import local_server

T0 = 1420070400.0  # 2015-01-01T00:00:00Z
T1 = 1735689600.0  # 2025-01-01T00:00:00Z


class Places(NamedTuple):
    """The items' footprints (degrees; ``west > east`` crosses the antimeridian) and times."""

    west: np.ndarray
    south: np.ndarray
    east: np.ndarray
    north: np.ndarray
    lon: np.ndarray  # centre
    lat: np.ndarray
    t: np.ndarray  # UTC epoch seconds


def make_places(n: int, seed: int) -> Places:
    """Random small boxes: centres uniform on the sphere between 80 S and 80 N, sides 0.1-2
    degrees (so about 0.3% of boxes cross the antimeridian), times uniform over ten years."""
    rng = np.random.default_rng([seed, n, 22])
    lon = rng.uniform(-180.0, 180.0, n)
    lat = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n) * math.sin(math.radians(80.0))))
    hw, hh = rng.uniform(0.05, 1.0, n), rng.uniform(0.05, 1.0, n)
    west = (lon - hw + 180.0) % 360.0 - 180.0
    east = (lon + hw + 180.0) % 360.0 - 180.0
    return Places(west, lat - hh, east, lat + hh, lon, lat, rng.uniform(T0, T1, n))


def footprints(p: Places) -> list[Footprint]:
    """One :class:`Footprint` (with its time) per item, for ``bulk_insert``."""
    return [Footprint(BBox(w, s, e, nn), (x, y), t) for w, s, e, nn, x, y, t in
            zip(p.west.tolist(), p.south.tolist(), p.east.tolist(), p.north.tolist(),
                p.lon.tolist(), p.lat.tolist(), p.t.tolist())]


# --------------------------------------------------------------- brute force (numpy)
def box_mask(p: Places, b: BBox) -> np.ndarray:
    """Items whose box meets ``b`` (bounds inclusive), longitudes compared on the circle: two
    arcs ``[a, a + wa]`` and ``[c, c + wc]`` meet iff ``(c - a) mod 360 <= wa`` or
    ``(a - c) mod 360 <= wc`` (no box here spans all longitudes)."""
    lat = (p.south <= b.north) & (p.north >= b.south)
    wb = (b.east - b.west) % 360.0
    wi = (p.east - p.west) % 360.0
    lon = ((p.west - b.west) % 360.0 <= wb) | ((b.west - p.west) % 360.0 <= wi)
    return lat & lon


def haversine(lon: np.ndarray, lat: np.ndarray, plon: float, plat: float) -> np.ndarray:
    """Great-circle metres from each ``(lon, lat)`` to the point (numpy, mean sphere)."""
    p1, p2 = np.radians(lat), math.radians(plat)
    h = (np.sin((p2 - p1) / 2) ** 2
         + np.cos(p1) * math.cos(p2) * np.sin(np.radians(plon - lon) / 2) ** 2)
    return 2 * np.arcsin(np.minimum(1.0, np.sqrt(h))) * EARTH_RADIUS_M


def near_mask(p: Places, nr: Near) -> np.ndarray:
    """Items whose box lies within ``nr.metres`` of the point: a safe numpy bound first (the
    distance to the box's centre minus half its height and width in degrees of arc), then the
    exact distance to the box for the candidates."""
    half = (p.north - p.south) / 2 + ((p.east - p.west) % 360.0) / 2
    bound = haversine(p.lon, p.lat, nr.lon, nr.lat) - np.radians(half) * EARTH_RADIUS_M - 1.0
    out = np.zeros(len(p.lon), bool)
    for i in np.flatnonzero(bound <= nr.metres):
        b = BBox(p.west[i], p.south[i], p.east[i], p.north[i])
        out[i] = box_distance(nr.lon, nr.lat, b) <= nr.metres
    return out


def mask_of(p: Places, g: GeoFilter) -> np.ndarray:
    """The items a filter holds, by brute force."""
    m = np.ones(len(p.lon), bool)
    if g.bbox is not None:
        m &= box_mask(p, g.bbox)
    if g.near is not None:
        m &= near_mask(p, g.near)
    if g.time is not None:
        m &= (p.t >= g.time.start) & (p.t <= g.time.end)
    return m


def bisect(count: Any, target: float, hi: float, steps: int = 40) -> float:
    """The size ``x`` in ``[0, hi]`` where the monotone ``count(x)`` reaches ``target``."""
    lo = 0.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if count(mid) < target else (lo, mid)
    return hi


def sized_box(p: Places, lon: float, lat: float, share: float) -> BBox:
    """A box twice as wide as high around ``(lon, lat)`` holding about ``share`` of the items."""
    def box(s: float) -> BBox:
        w = min(2 * s, 170.0)
        return BBox((lon - w + 180.0) % 360.0 - 180.0, max(-90.0, lat - s),
                    (lon + w + 180.0) % 360.0 - 180.0, min(90.0, lat + s))

    return box(bisect(lambda s: box_mask(p, box(s)).sum(), share * len(p.lon), 90.0))


def filters(p: Places) -> list[tuple[str, GeoFilter | None]]:
    """The rows of the table: unfiltered first (the baseline), then each filter."""
    near_pt = (-178.0, 40.0)  # its circle reaches across the antimeridian
    dist = haversine(p.lon, p.lat, *near_pt)
    metres = bisect(lambda m: (dist <= m).sum(), 0.01 * len(p.lon), math.pi * EARTH_RADIUS_M)
    year = Period.parse("2019-01-01/2019-12-31")
    return [("unfiltered (baseline)", None),
            ("box ~1%", GeoFilter(bbox=sized_box(p, 20.0, 10.0, 0.01))),
            ("box ~1% across the antimeridian", GeoFilter(bbox=sized_box(p, 180.0, -20.0, 0.01))),
            ("box ~10%", GeoFilter(bbox=sized_box(p, -60.0, 20.0, 0.10))),
            ("near ~1% (circle across the antimeridian)", GeoFilter(near=Near(*near_pt, round(metres)))),
            ("period ~10% (2019)", GeoFilter(time=year))]


def describe(g: GeoFilter | None) -> str:
    if g is None:
        return "-"
    if g.bbox is not None:
        b = g.bbox
        return f"bbox=({b.west:.2f}, {b.south:.2f}, {b.east:.2f}, {b.north:.2f})"
    if g.near is not None:
        return f"near=({g.near.lon:g}, {g.near.lat:g}, {g.near.metres:,.0f} m)"
    assert g.time is not None and g.time.start is not None and g.time.end is not None
    return f"time={iso(g.time.start)}/{iso(g.time.end)}"


def expected(db64: np.ndarray, rank: np.ndarray, idx: np.ndarray, q64: np.ndarray,
             k: int) -> tuple[list[str], np.ndarray]:
    """Brute-force top-``k`` among the items ``idx``: Hamming distance, then the store's tie
    order (the digest of the id: ``rank``)."""
    d = np.zeros(len(idx), np.int32)
    for w in range(db64.shape[1]):
        d += np.bitwise_count(db64[idx, w] ^ q64[w]).astype(np.int32)
    order = np.lexsort((rank[idx], d))[:k]
    return [str(i) for i in idx[order]], d[order]


# --------------------------------------------------------------- the run
def load(store: MilvusCodeStore, db: np.ndarray, p: Places, staging: Path) -> dict[str, Any]:
    """``bulk_insert`` every item with its footprint and time, then prepare for search."""
    t0 = time.perf_counter()
    fps = footprints(p)
    made = time.perf_counter() - t0
    out = store.bulk_insert([str(i) for i in range(len(db))], db, footprints=fps,
                            staging_dir=staging, options=BulkOptions(skip_existing=False))
    out["footprints_s"] = made
    out["end_to_end_s"] = time.perf_counter() - t0
    return out


def measure(store: MilvusCodeStore, queries: np.ndarray, k: int, g: GeoFilter | None,
            singles: int, repeat: int) -> dict[str, Any]:
    """All queries in one call (best of ``repeat``, after one warm-up query), and ``singles``
    queries one per call."""
    store.search_ids(queries[:1], k, geo=g)
    batch = float("inf")
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        res = store.search_ids(queries, k, geo=g)
        batch = min(batch, time.perf_counter() - t0)
    lat = []
    for i in range(min(singles, len(queries))):
        t1 = time.perf_counter()
        store.search_ids(queries[i : i + 1], k, geo=g)
        lat.append(time.perf_counter() - t1)
    return {"batch_s": batch, "res": res, "p50_ms": 1000 * statistics.median(lat),
            "single_total_s": sum(lat), "singles": len(lat)}


def timed_count(store: MilvusCodeStore, g: GeoFilter | None, repeat: int = 5) -> tuple[int, float]:
    """``store.count(geo=g)`` and its median milliseconds: one request that evaluates the filter
    over every row and scans no code (for ``near`` it also reads the prefiltered rows' places)."""
    times, n = [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = store.count(geo=g)
        times.append(1000 * (time.perf_counter() - t0))
    return n, statistics.median(times)


def check(res: list[Any], db64: np.ndarray, rank: np.ndarray, mask: np.ndarray,
          q64: np.ndarray, k: int, n_check: int) -> tuple[int, int]:
    """``(queries checked, queries whose hits differ from the brute force)``."""
    idx = np.flatnonzero(mask)
    bad = 0
    for i in range(min(n_check, len(res))):
        ids, dist = expected(db64, rank, idx, q64[i], k)
        if res[i].ids != ids or not np.array_equal(res[i].distances, dist):
            bad += 1
    return min(n_check, len(res)), bad


def run(args: argparse.Namespace) -> tuple[str, list[dict[str, Any]]]:
    """Load, search each filter at each k, check; the markdown body and the raw records."""
    ks = [int(x) for x in args.ks.split(",")]
    codes = make(args.kind, args.size, args.queries, 64, args.seed, None, None, None)
    places = make_places(args.size, args.seed)
    db64 = np.ascontiguousarray(codes.db).view(np.uint64)
    q64 = np.ascontiguousarray(codes.queries).view(np.uint64)
    print("tie order of the ids ...", file=sys.stderr, flush=True)
    rank = np.empty(args.size, np.int64)
    rank[tie_order([str(i) for i in range(args.size)])] = np.arange(args.size)
    rows = [(name, g, mask_of(places, g) if g is not None else np.ones(args.size, bool))
            for name, g in filters(places)]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rsir-bench-geo-"))
    records: list[dict[str, Any]] = []
    out_rows: list[list[Any]] = []
    with local_server(work / "milvus") as srv:
        print(f"Milvus server started in {srv.started_s:.1f}s; loading {args.size:,} rows ...",
              file=sys.stderr, flush=True)
        store = MilvusCodeStore(srv.uri, f"bench_geo_{args.size}", bits=64, index_type="BIN_FLAT",
                                encoder={"encoder_id": f"bench-{args.kind}", "bits": 64})
        loaded = load(store, codes.db, places, work / "staging")
        print(f"  loaded in {loaded['end_to_end_s']:.1f}s", file=sys.stderr, flush=True)
        base: dict[int, dict[str, Any]] = {}
        for name, g, mask in rows:
            held = int(mask.sum())
            counted, count_ms = timed_count(store, g)
            for k in ks:
                print(f"  {name}, k={k} ...", file=sys.stderr, flush=True)
                m = measure(store, codes.queries, k, g, args.singles, args.repeat)
                checked, bad = check(m.pop("res"), db64, rank, mask, q64, k, args.check)
                base.setdefault(k, m)
                b = base[k]
                records.append({"filter": name, "k": k, "held": held, "counted": counted,
                                "count_ms": count_ms,
                                "checked": checked, "differ": bad, **m})
                out_rows.append([name, k, held, f"{100 * held / args.size:.2f}%",
                                 "yes" if counted == held else f"NO ({counted:,})", count_ms,
                                 m["batch_s"], 1000 * m["batch_s"] / args.queries,
                                 f"{m['batch_s'] / b['batch_s']:.2f}x", m["p50_ms"],
                                 m["single_total_s"], f"{m['p50_ms'] / b['p50_ms']:.2f}x",
                                 checked, "yes" if bad == 0 else f"NO ({bad} differ)"])
                print(table(HEAD, out_rows[-1:]), file=sys.stderr, flush=True)
        store.drop()
        store.close()
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    crossing = int((places.west > places.east).sum())
    return body(args, out_rows, rows, loaded, (codes.note, crossing)) + reading(records), records


HEAD = ["filter", "k", "items held", "share", "store.count agrees", "store.count ms", "batch s",
        "ms/query (batch)", "batch vs unfiltered", "1 query p50 ms", "1 query total s",
        "p50 vs unfiltered", "queries checked", "hits = brute force"]


def body(args: argparse.Namespace, out_rows: list[list[Any]], rows: list[Any],
         loaded: dict[str, Any], notes: tuple[str, int]) -> str:
    """The markdown of the section: the table, the filters, the load."""
    n, nq = args.size, args.queries
    text = (f"{n:,} 64-bit codes ({notes[0]}) on a Milvus 2.3.5 server (`BIN_FLAT`, exact), "
            f"each with a footprint (a random box of 0.1-2 degrees a side, centres uniform on "
            f"the sphere between 80 S and 80 N; {notes[1]:,} boxes cross the antimeridian) and "
            f"a time (uniform over 2015-2024); {nq:,} held-out queries, "
            f"`MilvusCodeStore.search_ids(codes, k, geo=...)` (exact top-k, ties by the digest "
            f"of the id, the store's default). Batch = all {nq:,} queries in one call (best of "
            f"{args.repeat}, after one warm-up query); 1 query = {min(args.singles, nq):,} calls "
            f"of one query each (p50 and their sum). Ratios: against the unfiltered search at "
            f"the same k in the same run. Items held: counted by brute force in numpy; `store.count(geo=...)` "
            f"must agree; store.count ms = the median of 5 counts (for `near` the engine's box "
            f"count is followed by reading the boxed rows' places for the exact distance). "
            f"Hits = brute force: for the first {args.check} queries of each row the ids and "
            f"distances, in order, equal a brute force in numpy over the in-memory codes and "
            f"footprints (exact top-k under the filter).\n\n")
    text += table(HEAD, out_rows) + "\n\nThe filters (sized on the footprints, then counted):\n\n"
    text += table(["filter", "as given to `GeoFilter`"], [[r[0], describe(r[1])] for r in rows])
    text += ("\n\nLoading (`bulk_insert(..., footprints=...)`, one call, then "
             "`prepare_for_search`):\n\n")
    text += table(["rows", "footprints built s", "import s", "prepare s", "end to end s", "rows/s"],
                  [[n, loaded["footprints_s"], loaded.get("import_s", float("nan")),
                    loaded.get("prepare", {}).get("total_s", float("nan")), loaded["end_to_end_s"],
                    n / loaded["end_to_end_s"]]])
    return text + "\n"


def reading(records: list[dict[str, Any]]) -> str:
    """What the run says in numbers: what a filter adds per request, and in a batch."""
    base = {r["k"]: r for r in records if r["filter"].startswith("unfiltered")}
    rest = [r for r in records if not r["filter"].startswith("unfiltered")]
    if not rest or not base:
        return ""
    added = [r["p50_ms"] - base[r["k"]]["p50_ms"] for r in rest]
    ratio = [r["batch_s"] / base[r["k"]]["batch_s"] for r in rest]
    counts = [r["count_ms"] for r in rest]
    p50 = ", ".join(f"k={k} {b['p50_ms']:.1f} ms" for k, b in base.items())
    return (f"\nReading: one query per call, a filter added {min(added):.1f} to {max(added):.1f} ms "
            f"to the p50 (the unfiltered p50: {p50}); "
            f"one `store.count(geo=...)` of the same filters took {min(counts):.1f} to "
            f"{max(counts):.1f} ms (the unfiltered count {base[min(base)]['count_ms']:.1f} ms). "
            f"With all queries in one call the filter's cost is paid once for the call "
            f"(it is evaluated per request, not per query): the filtered batches took "
            f"{min(ratio):.2f}x to {max(ratio):.2f}x the unfiltered batch.\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=1_000_000, help="codes loaded (default 1,000,000)")
    ap.add_argument("--queries", type=int, default=1000, help="held-out queries (default 1,000)")
    ap.add_argument("--singles", type=int, default=1000,
                    help="of those, how many are also timed one per call (default all)")
    ap.add_argument("--check", type=int, default=20,
                    help="queries per row whose hits are checked against the brute force")
    ap.add_argument("--repeat", type=int, default=3, help="batch searches per row (best of)")
    ap.add_argument("--ks", default="10,100", help="k values, comma-separated")
    ap.add_argument("--kind", default="uniform", choices=["uniform", "clustered"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="server data and staging folder (default: a temp folder)")
    ap.add_argument("--section", default="geo-search", help="the docs/benchmarks.md section written")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args(argv)
    load0 = load_average()
    text, records = run(args)
    print(text)
    bad = sum(r["differ"] for r in records) + sum(r["held"] != r["counted"] for r in records)
    if not args.no_write:
        meta = machine({"versions": versions("pymilvus", "milvus", "numpy")})
        doc = write_section(args.section, section(
            args.section, f"Place- and period-filtered search on a Milvus server, {args.size:,} "
            "codes (`benchmarks/geo_search.py`)", text, meta, (load0, load_average())))
        print(f"written to {doc}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
