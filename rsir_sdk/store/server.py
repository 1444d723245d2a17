"""A Milvus server collection made ready to search: sealed, indexed, served, calibrated, warm.

Why (measured on the 2.3.5 server, ``docs/scale.md``): rows written by inserts sit in *growing*
segments that the query node searches by brute force in chunks of 128 rows, so the first
1,000-query search after loading a million rows took 55-57 s (later ones 2-5 s). Sealing,
indexing and the hand-over to sealed segments happen on their own, but slowly (minutes) and the
last segment is never sealed without a flush. :func:`prepare` runs the sequence that gets there
at once and waits for it:

1. ``flush``: seal every growing segment;
2. wait until the index covers every flushed row (``describe_index``);
3. wait until the query node serves exactly the flushed segments and they hold every row
   (``list_loaded_segments`` == ``list_persistent_segments``, twice in a row);
4. the index choice (``index_type="auto"``) and the calibration of ``nprobe`` (below);
5. one warm-up search.

**Index choice.** ``BIN_FLAT`` is exact; ``BIN_IVF_FLAT`` scans ``nprobe`` of ``nlist`` lists
per segment. Under :data:`AUTO_IVF_MIN_ROWS` rows a scan is cheap and exact, so ``auto`` keeps
BIN_FLAT; above it, ``auto`` builds BIN_IVF_FLAT (``nlist`` from the segment size), calibrates
``nprobe`` and keeps IVF only when a recall@100 of :data:`TARGET_RECALL` needs at most a quarter
of the lists (codes with structure, as trained codes have). Uniform random codes need every list,
and go back to BIN_FLAT.

**Calibration.** Queries are stored codes, picked uniformly through their hashed primary keys,
with 5% of their bits flipped (new images of the same kind); the exact answer is the same IVF
index searched with ``nprobe = nlist`` (every list: exact); ``nprobe`` doubles from 1 until the
tie-aware recall@100 reaches the target. The result is recorded in the collection's properties,
and searches use it unless the caller gives ``search_params``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from ..errors import StoreError
from . import keys
from .connect import Connection
from .schema import AUTO_INDEX, PROP_CALIBRATION, PROP_POLICY, PROP_SEARCH

log = logging.getLogger(__name__)

#: ``auto`` keeps BIN_FLAT below this many rows
AUTO_IVF_MIN_ROWS = 200_000
#: recall@100 the calibrated ``nprobe`` must reach against exact search
TARGET_RECALL = 0.99
CALIBRATION_QUERIES = 200
CALIBRATION_K = 100
#: bits of a calibration query flipped (each with this probability)
CALIBRATION_FLIP = 0.05
POLL_S = 0.5


class PrepareProgress(NamedTuple):
    """Where :func:`prepare` stands: a step name and, when countable, how far it is."""

    step: str  # flush, index, serving, index-choice, calibration, warm-up, done
    done: int = 0
    total: int = 0


Progress = Callable[[PrepareProgress], None]


class _Deadline:
    def __init__(self, name: str, timeout: float | None):
        self.name = name
        self.end = None if timeout is None else time.monotonic() + float(timeout)
        self.timeout = timeout

    def check(self, pending: str) -> None:
        if self.end is not None and time.monotonic() > self.end:
            raise StoreError(
                f"collection {self.name!r} was not ready to search after {self.timeout:.0f}s "
                f"({pending}); the server is still working on it: call prepare_for_search() "
                f"again later (or give a longer timeout)"
            )


def count_strong(conn: Connection, name: str) -> int:
    """Rows the collection holds, as of now (Strong: every earlier write, by anyone)."""
    res = conn.call("query", name, filter="", output_fields=["count(*)"], read=True,
                    consistency_level="Strong", what=f"count in {name!r}")
    return int(res[0]["count(*)"])


def describe_index(conn: Connection, name: str, field: str = "code") -> dict[str, Any]:
    """``describe_index`` of the code field (or ``field``: index type, params, row counts)."""
    return dict(conn.call("describe_index", name, field, what=f"reading the index of {name!r}"))


def serving_state(conn: Connection, name: str) -> tuple[dict[int, int], dict[int, int]]:
    """``({segment: rows} the query node serves, {segment: rows} flushed on storage)``."""
    loaded = {s.segment_id: int(s.num_rows) for s in
              conn.call("list_loaded_segments", name, what=f"reading segments of {name!r}")}
    flushed = {s.segment_id: int(s.num_rows) for s in
               conn.call("list_persistent_segments", name, what=f"reading segments of {name!r}")
               if str(s.state).endswith("Flushed")}
    return loaded, flushed


def wait_indexed(conn: Connection, name: str, rows: int, deadline: _Deadline,
                 progress: Progress, field: str = "code") -> None:
    """Until the index (of ``field``) covers every flushed row (at least ``rows``) and nothing
    is pending."""
    while True:
        d = describe_index(conn, name, field)
        total, done = int(d.get("total_rows", 0)), int(d.get("indexed_rows", 0))
        progress(PrepareProgress("index", min(done, total), max(total, rows)))
        if total >= rows and done >= total and int(d.get("pending_index_rows", 0)) == 0:
            return
        deadline.check(f"index built for {done} of {max(total, rows)} rows")
        time.sleep(POLL_S)


def wait_serving(conn: Connection, name: str, rows: int, deadline: _Deadline,
                 progress: Progress, stable: int = 2) -> None:
    """Until the query node serves exactly the flushed segments, holding at least ``rows``
    rows, on ``stable`` polls in a row (growing copies are released when this holds)."""
    ok = 0
    while True:
        loaded, flushed = serving_state(conn, name)
        served = sum(v for k, v in loaded.items() if flushed.get(k) == v)
        progress(PrepareProgress("serving", min(served, rows), rows))
        if loaded == flushed and sum(flushed.values()) >= rows:
            ok += 1
            if ok >= stable:
                return
        else:
            ok = 0
        deadline.check(f"{len(loaded)} of {len(flushed)} sealed segments served")
        time.sleep(POLL_S)


#: build parameters an index type is given when the caller names none (Milvus refuses
#: BIN_IVF_FLAT without ``nlist`` and HNSW without ``M``/``efConstruction``, and a collection
#: created with the refused index was left unloadable)
INDEX_DEFAULTS: dict[str, dict[str, Any]] = {"BIN_IVF_FLAT": {"nlist": 128},
                                             "HNSW": {"M": 16, "efConstruction": 200}}


def build_params(index_type: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The index's build parameters: the caller's over :data:`INDEX_DEFAULTS` (none for
    BIN_FLAT)."""
    if index_type == "BIN_FLAT":
        return {}
    return {**INDEX_DEFAULTS.get(index_type, {}), **dict(params or {})}


def choose_nlist(segment_rows: list[int]) -> int:
    """Lists per segment: about one per 1,000 rows of the typical segment, a power of two in
    16..1024 (128 for the ~100k-row segments inserts make, 1024 for 1M-row bulk imports)."""
    typical = float(np.median(segment_rows)) if segment_rows else 0.0
    if typical <= 0:
        return 128
    return int(2 ** min(10, max(4, round(math.log2(max(1.0, typical / 1000))))))


def set_index(conn: Connection, name: str, index_type: str, params: dict[str, Any], rows: int,
              deadline: _Deadline, progress: Progress) -> None:
    """Replace the code field's index (the collection is released meanwhile) and serve again."""
    progress(PrepareProgress(f"index-choice: building {index_type} {json.dumps(params)}"))
    conn.call("release_collection", name, what=f"releasing {name!r}")
    conn.call("drop_index", name, "code", what=f"dropping the index of {name!r}")
    index = conn.client.prepare_index_params()
    index.add_index(field_name="code", index_type=index_type, metric_type="HAMMING", params=params)
    conn.call("create_index", name, index, what=f"building {index_type} on {name!r}")
    wait_indexed(conn, name, rows, deadline, progress)
    conn.call("load_collection", name, what=f"loading {name!r}")
    wait_serving(conn, name, rows, deadline, progress)
    conn.forget_collection(name)


def sample_codes(conn: Connection, name: str, rows: int, want: int, seed: int) -> np.ndarray:
    """About ``want`` stored codes, uniformly at random (a narrow random range of the hashed
    primary keys: ids are uniform there, whatever the insertion order)."""
    rng = np.random.default_rng(seed)
    space = 16**8
    width = max(1, min(space, int(space * 2.0 * want / max(rows, 1))))
    lo = int(rng.integers(0, space - width + 1))
    expr = keys.pk_range(f"{lo:08x}", f"{lo + width:08x}" if lo + width < space else "")
    res = conn.call("query", name, filter=expr, output_fields=["code"], limit=16384, read=True,
                    what=f"sampling codes of {name!r}")
    codes = [_code(r["code"]) for r in res]
    if len(codes) > want:
        codes = [codes[i] for i in sorted(rng.choice(len(codes), want, replace=False))]
    return np.stack(codes) if codes else np.zeros((0, 0), np.uint8)


def _code(value: Any) -> np.ndarray:
    if isinstance(value, list):
        value = value[0] if len(value) == 1 and isinstance(value[0], (bytes, bytearray)) else bytes(value)
    return np.frombuffer(bytes(value), dtype=np.uint8)


def flip_bits(codes: np.ndarray, p: float, seed: int) -> np.ndarray:
    """``codes`` with each bit flipped with probability ``p``."""
    rng = np.random.default_rng(seed)
    bits = np.unpackbits(codes, axis=1)
    bits ^= (rng.random(bits.shape) < p).astype(np.uint8)
    return np.packbits(bits, axis=1)


def search_distances(conn: Connection, name: str, queries: np.ndarray, k: int,
                     params: dict[str, Any]) -> np.ndarray:
    """Hamming distances of the top ``k`` per query (ids not read), ``9999`` where short."""
    res = conn.call("search", name, data=[q.tobytes() for q in queries], anns_field="code",
                    limit=k, output_fields=[], read=True,
                    search_params={"metric_type": "HAMMING", "params": dict(params)},
                    what=f"calibration search in {name!r}")
    out = np.full((len(queries), k), 9999, np.int32)
    for i, hits in enumerate(res):
        d = np.rint(np.asarray(hits.distances, np.float64)).astype(np.int32)
        out[i, : len(d)] = d
    return out


def recall_at_k(exact: np.ndarray, got: np.ndarray) -> float:
    """Tie-aware recall@k: per query, the multiset overlap of the distance lists, over k (any
    item at the k-th distance is a right answer)."""
    k = exact.shape[1]
    total = 0
    for a, b in zip(exact, got):
        total += int(np.minimum(np.bincount(a[a < 9999], minlength=2049),
                                np.bincount(b[b < 9999], minlength=2049)).sum())
    return total / float(k * max(1, len(exact)))


def calibrate(conn: Connection, name: str, rows: int, nlist: int, *,
              target: float = TARGET_RECALL, k: int = CALIBRATION_K,
              queries: int = CALIBRATION_QUERIES, seed: int = 0,
              progress: Progress | None = None) -> dict[str, Any]:
    """The smallest ``nprobe`` (1, 2, 4, ... nlist) whose recall@``k`` reaches ``target``.

    Returns ``{"nprobe", "recall", "nlist", "k", "queries", "target", "curve"}``.
    """
    q = sample_codes(conn, name, rows, queries, seed)
    if len(q) == 0:
        return {"nprobe": nlist, "recall": 1.0, "nlist": nlist, "k": k, "queries": 0,
                "target": target, "curve": {}}
    q = flip_bits(q, CALIBRATION_FLIP, seed + 1)
    k = min(k, max(1, rows))
    exact = search_distances(conn, name, q, k, {"nprobe": nlist})
    curve: dict[int, float] = {}
    nprobe = 1
    while True:
        if progress is not None:
            progress(PrepareProgress("calibration", nprobe, nlist))
        r = recall_at_k(exact, search_distances(conn, name, q, k, {"nprobe": nprobe}))
        curve[nprobe] = round(r, 4)
        if r >= target or nprobe >= nlist:
            break
        nprobe = min(nlist, nprobe * 2)
    return {"nprobe": nprobe, "recall": curve[nprobe], "nlist": nlist, "k": k, "queries": len(q),
            "target": target, "flip": CALIBRATION_FLIP, "rows": rows,
            "curve": {str(a): b for a, b in curve.items()}}


def properties(conn: Connection, name: str) -> dict[str, Any]:
    """What :func:`prepare` recorded: ``{"search_params": {...}, "calibration": {...}}``."""
    desc = conn.call("describe_collection", name, what=f"opening collection {name!r}")
    props = desc.get("properties") or {}
    out: dict[str, Any] = {}
    if props.get(PROP_POLICY):
        out["policy"] = str(props[PROP_POLICY])
    for key, prop in (("search_params", PROP_SEARCH), ("calibration", PROP_CALIBRATION)):
        try:
            value = json.loads(props.get(prop) or "null")
        except (TypeError, ValueError):
            value = None
        if isinstance(value, dict):
            out[key] = value
    return out


def index_info(conn: Connection, name: str, policy: str | None, search_params: dict[str, Any],
               recorded: dict[str, Any]) -> dict[str, Any]:
    """What :meth:`~rsir_sdk.store.MilvusCodeStore.index_info` returns."""
    try:
        d = describe_index(conn, name)
    except StoreError:  # Milvus Lite may not describe its implicit index
        d = {"index_type": "BIN_FLAT"}
    skip = {"index_type", "metric_type", "field_name", "index_name", "total_rows",
            "indexed_rows", "pending_index_rows", "state"}
    try:
        loaded, flushed = serving_state(conn, name)
    except StoreError:  # Milvus Lite lists no segments
        loaded, flushed = {}, {}
    return {
        "index_type": d.get("index_type"),
        "metric_type": d.get("metric_type", "HAMMING"),
        "params": {k: v for k, v in d.items() if k not in skip},
        "policy": policy or "fixed",
        "total_rows": d.get("total_rows"),
        "indexed_rows": d.get("indexed_rows"),
        "pending_index_rows": d.get("pending_index_rows"),
        "search_params": search_params,
        "calibration": recorded.get("calibration"),
        # sealed (flushed) segments on storage and those the query node serves, {id: rows};
        # rows written since the last flush are in growing segments, listed in neither
        "sealed_segments": flushed,
        "served_segments": loaded,
    }


def record(conn: Connection, name: str, search_params: dict[str, Any] | None,
           calibration: dict[str, Any] | None, policy: str | None = None) -> None:
    """Record the search parameters and their calibration (and an index policy) with the
    collection."""
    props = {PROP_SEARCH: json.dumps(search_params or {}),
             PROP_CALIBRATION: json.dumps(calibration or {})}
    if policy:
        props[PROP_POLICY] = policy
    conn.call("alter_collection_properties", name, properties=props,
              what=f"recording search parameters of {name!r}")


def change_index(conn: Connection, name: str, index_type: str, params: dict[str, Any], *,
                 calibrate_nprobe: bool = True, timeout: float | None = 3600.0,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Replace the index by hand (the ``auto`` policy stops applying); for BIN_IVF_FLAT without
    an ``nprobe`` in mind, calibrate one. The collection is unavailable while it is rebuilt."""
    report = progress or (lambda p: None)
    deadline = _Deadline(name, timeout)
    t0 = time.perf_counter()
    conn.call("flush", name, what=f"flushing {name!r}")
    rows = count_strong(conn, name)
    params = build_params(index_type, params)
    set_index(conn, name, index_type, params, rows, deadline, report)
    out: dict[str, Any] = {"rows": rows, "index_type": index_type, "build_s": time.perf_counter() - t0}
    cal = None
    if index_type == "BIN_IVF_FLAT" and calibrate_nprobe:
        nlist = int(describe_index(conn, name).get("nlist", params.get("nlist", 128)))
        cal = calibrate(conn, name, rows, nlist, progress=report)
        out["calibration"] = cal
    record(conn, name, {"nprobe": cal["nprobe"]} if cal else {}, cal, policy="fixed")
    return out


def prepare(conn: Connection, name: str, *, policy: str | None, explicit_params: bool,
            timeout: float | None = 3600.0, progress: Progress | None = None) -> dict[str, Any]:
    """Flush, wait for the index and the sealed segments, choose and calibrate the index (see
    the module's docs), warm up. Returns the seconds of each step and what was chosen."""
    report = progress or (lambda p: None)
    deadline = _Deadline(name, timeout)
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    report(PrepareProgress("flush"))
    conn.call("flush", name, what=f"flushing {name!r}")
    rows = count_strong(conn, name)
    out["flush_s"] = time.perf_counter() - t0
    out["rows"] = rows
    t = time.perf_counter()
    wait_indexed(conn, name, rows, deadline, report)
    out["index_s"] = time.perf_counter() - t
    t = time.perf_counter()
    wait_serving(conn, name, rows, deadline, report)
    out["serving_s"] = time.perf_counter() - t
    t = time.perf_counter()
    index = describe_index(conn, name)
    kind = str(index.get("index_type", "BIN_FLAT"))
    if policy == AUTO_INDEX:
        kind = _auto_choice(conn, name, kind, rows, deadline, report, out)
    elif kind == "BIN_IVF_FLAT" and not explicit_params:
        nlist = int(describe_index(conn, name).get("nlist", 128))
        report(PrepareProgress("calibration", 0, nlist))
        cal = calibrate(conn, name, rows, nlist, progress=report)
        record(conn, name, {"nprobe": cal["nprobe"]}, cal)
        out["calibration"] = cal
    out["index_type"] = kind
    out["index_choice_s"] = time.perf_counter() - t
    t = time.perf_counter()
    report(PrepareProgress("warm-up"))
    if rows:
        sample = sample_codes(conn, name, rows, 1, 7)
        if len(sample):
            params = properties(conn, name).get("search_params") or {}
            search_distances(conn, name, sample[:1], min(20, rows), params)
    out["warmup_s"] = time.perf_counter() - t
    out["total_s"] = time.perf_counter() - t0
    report(PrepareProgress("done", rows, rows))
    log.info("collection %s ready to search: %s", name,
             {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()
              if k != "calibration"})
    return out


def _auto_choice(conn: Connection, name: str, kind: str, rows: int, deadline: _Deadline,
                 report: Progress, out: dict[str, Any]) -> str:
    """``auto``: BIN_FLAT below :data:`AUTO_IVF_MIN_ROWS`; above, IVF when calibration says it
    pays (``nprobe <= nlist / 4``), else BIN_FLAT again."""
    if rows < AUTO_IVF_MIN_ROWS:
        if kind != "BIN_FLAT":
            return kind  # a collection that shrank keeps what it has
        return "BIN_FLAT"
    _, flushed = serving_state(conn, name)
    nlist = choose_nlist(list(flushed.values()))
    if kind != "BIN_IVF_FLAT":
        set_index(conn, name, "BIN_IVF_FLAT", {"nlist": nlist}, rows, deadline, report)
    else:
        nlist = int(describe_index(conn, name).get("nlist", nlist))
    report(PrepareProgress("calibration", 0, nlist))
    cal = calibrate(conn, name, rows, nlist, progress=report)
    out["calibration"] = cal
    if cal["nprobe"] <= max(1, nlist // 4):
        record(conn, name, {"nprobe": cal["nprobe"]}, cal)
        return "BIN_IVF_FLAT"
    log.info("collection %s: BIN_IVF_FLAT needs nprobe %d of %d lists for recall %.2f: "
             "keeping BIN_FLAT (exact)", name, cal["nprobe"], nlist, cal["target"])
    set_index(conn, name, "BIN_FLAT", {}, rows, deadline, report)
    record(conn, name, {}, {**cal, "rejected": "BIN_IVF_FLAT"})
    return "BIN_FLAT"
