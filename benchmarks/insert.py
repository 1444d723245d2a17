"""Loading 1M rows into a Milvus server: bare pymilvus vs the store's insert, upsert and bulk load.

Why: a first load of a large archive is bounded by how fast rows get into Milvus once encoded.
All paths write the same 1M rows (realistic ids, labels, paths and metadata, class-centred
64-bit codes) into fresh collections of the store's schema on one local Milvus 2.3.5 server,
in the same run, then make them searchable (``prepare_for_search``):

- **bare pymilvus**: ``pymilvus.Collection.insert`` of ready-made column lists
  (``testing.store_baseline.insert_columns``) (digest columns
  computed beforehand, no checks): the floor for inserts through the message stream;
- ``MilvusCodeStore.insert`` (checks every value, column lists, 10,000 rows a request);
- ``MilvusCodeStore.upsert`` (the same, as upserts: a delete per row on the server);
- ``MilvusCodeStore.bulk_insert`` (checks, numpy files, Milvus bulk import).

The machine may be shared: wall times are reported with client and server CPU-seconds (from
/proc), which other load inflates far less.

    python benchmarks/insert.py                     # 1M rows, writes its docs/benchmarks.md section
    python benchmarks/insert.py --rows 100000 --no-write
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _codes import clustered
from _common import load_average, machine, section, table, versions, write_section
from _search_server import Timer, proc_rss_mb

from rsir_sdk import MilvusCodeStore
from rsir_sdk.store import BulkOptions, keys
from testing import store_baseline as baseline
from testing.store_local_server import local_server


def make_rows(n: int, seed: int = 0):
    codes = clustered(n, 0, 64, seed).db
    cls = np.random.default_rng(seed).integers(0, 45, n)
    ids = [f"class_{cls[i]:02d}/img_{i:07d}.tif" for i in range(n)]
    labels = [f"class_{cls[i]:02d}" for i in range(n)]
    paths = [f"/data/archive/class_{cls[i]:02d}/img_{i:07d}.tif" for i in range(n)]
    meta = [{"year": 2015 + i % 8} for i in range(n)]
    return ids, codes, labels, paths, meta


def bare_columns(ids, codes, labels, paths, meta) -> list[list]:
    """The store's nine columns, computed once outside the timing (what a caller who already
    holds checked, hashed columns would send)."""
    lh = {x: keys.digest(x) for x in set(labels)}
    return [[keys.digest(i) for i in ids], ids, [c.tobytes() for c in codes], labels,
            [lh[x] for x in labels], paths, [keys.digest(p) for p in paths], meta,
            [keys.meta_digests(m) for m in meta]]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=10_000, help="rows per insert request")
    p.add_argument("--paths", default="bare,insert,upsert,bulk",
                   help="which paths, comma-separated (bare, insert, upsert, bulk)")
    p.add_argument("--workdir", help="server data and bulk files (default: a temp folder)")
    p.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = p.parse_args(argv)
    load0 = load_average()
    n = args.rows
    t0 = time.perf_counter()
    rows = make_rows(n)
    print(f"{n:,} rows made in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rsir-bench-insert-"))
    out = []
    with local_server(work / "milvus") as srv:
        for kind in args.paths.split(","):
            name = f"ins_{kind}"
            store = MilvusCodeStore(srv.uri, name, bits=64, index_type="BIN_FLAT")
            store.insert(["warm-up"], rows[1][:1])  # create the collection outside the timing
            store.delete(["warm-up"])
            print(f"{kind} ...", file=sys.stderr, flush=True)
            disk0 = du_mb(srv.data_dir / "data")
            extra = ""
            if kind == "bare":
                cols = bare_columns(*rows)
                with Timer(srv.pid) as t:
                    baseline.insert_columns(srv.uri, name, cols, args.batch)
                del cols
                label = f"bare pymilvus `Collection.insert`, columns ready, {args.batch:,} a request"
            elif kind in ("insert", "upsert"):
                with Timer(srv.pid) as t:
                    getattr(store, kind)(*rows, batch_size=args.batch)
                label = f"`MilvusCodeStore.{kind}`, {args.batch:,} a request"
            elif kind == "bulk":
                with Timer(srv.pid) as t:
                    res = store.bulk_insert(*rows, staging_dir=work / "staging",
                                            options=BulkOptions(prepare=False))
                label = "`MilvusCodeStore.bulk_insert` (numpy files + bulk import)"
                extra = (f"numpy files {res['write_s']:.1f}s, import {res['import_s']:.1f}s, "
                         f"segments served {res['visible_s']:.1f}s, the rest checks")
            else:
                raise SystemExit(f"unknown path {kind!r}")
            with Timer(srv.pid) as tp:
                prep = store.prepare_for_search()
            disk = du_mb(srv.data_dir / "data") - disk0
            count = store.count()
            assert count == n, (kind, count)
            out.append([label, n, t.wall, n / t.wall, t.client, t.server, tp.wall,
                        n / (t.wall + tp.wall), tp.server, proc_rss_mb(srv.pid), disk,
                        extra or "-"])
            print(table(HEAD, out[-1:]), file=sys.stderr, flush=True)
            print(f"  prepare: {prep}", file=sys.stderr, flush=True)
            store.drop()
            store.close()
    body = table(HEAD, out)
    body += (f"\n\n{n:,} rows of class-centred 64-bit codes with ids like "
             "`class_07/img_0001234.tif`, a label, a path and `{\"year\": ...}` metadata; every "
             "path into a fresh collection of the store's schema on one local server, one after "
             "the other. Write = until the call returns (the bulk load: until the rows are "
             "imported and served). Prepare = `prepare_for_search` after it (flush, index, "
             "sealed segments served, warm-up): the time until the first search is as fast as "
             "the hundredth. CPU-seconds: this process (client) and the server process, from "
             "/proc. Server RSS after the load (the earlier paths' collections dropped); disk "
             "added under the server's local storage (compressed binlogs, index files).\n")
    print(body)
    meta = machine({"versions": versions("pymilvus", "milvus", "numpy")})
    if not args.no_write:
        doc = write_section("insert", section(
            "insert", "Loading 1M rows into a Milvus server (`benchmarks/insert.py`)", body, meta,
            (load0, load_average())))
        print(f"written to {doc}", file=sys.stderr)
    return 0


HEAD = ["path", "rows", "write s", "write rows/s", "client CPU-s", "server CPU-s", "prepare s",
        "rows/s to searchable", "prepare server CPU-s", "server RSS MB", "disk MB added",
        "bulk load detail"]


def du_mb(path: Path) -> float:
    """Megabytes under ``path`` (``du``; storage may still hold dropped collections' files)."""
    import subprocess

    res = subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True)
    try:
        return float(res.stdout.split()[0])
    except (IndexError, ValueError):
        return float("nan")

if __name__ == "__main__":
    sys.exit(main())
