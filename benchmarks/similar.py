"""The most similar image first, through Milvus: rank-1 of lightly changed copies (issue 20).

Why: trained AHCL/MiLAN codes are class prototypes, so without the fine code a search returns
its class in digest order (docs/similar.md). Issue 20's acceptance is measured here on real
bundles with fine codes, through a Milvus collection and the public API, for the three rankings
a user can get:

- ``today``: a collection written WITHOUT fine codes (a :class:`~rsir_sdk.MilvusCodeStore`
  created without ``fine_bits`` and written with the retrieval codes alone, as every
  collection made before issue 20), searched with ``Retriever.search_codes``: retrieval
  distance, then the digest of the id;
- ``default``: a collection filled by ``Retriever.add_images`` (which writes both codes),
  searched with both codes: retrieval distance, then fine distance, then the digest;
- ``appearance``: the same collection, ``mode="appearance"``: fine distance, then the digest.

Per bundle: ``--n`` database images, a seeded draw from the bundle's database side (the
split's train side; the whole archive when the bundle has no split), put in the collection.
Each is queried as the same file, JPEG re-encoded at quality 70, a 90% centre crop resized
back, brightness x 1.1 and rotated 90 degrees (the changes of
``export/scripts/fine_code_length.py``). For a bundle with learned database rows (AHCL) a second
row, ``<bundle> learned``, holds the same images as ``add_learned_codes`` stores them: their
learned codes V and the fine codes ``database.npz`` keeps (written with ``Retriever.add_codes(...,
fine=)``), queried by the encoded images (AHCL's asymmetric protocol). Figures:

- rank-1: the original is the first hit (the first four changes); for the rotation, the
  original is among the first 10 hits;
- overlap@10 (same-file queries): of the query's 10 nearest other database images by float
  cosine of the bundle's embeddings (``Encoder.encode_both(...).embeddings``, the continuous
  output the codes are the signs of), how many are among its first 10 hits other than itself;
- ``= memory``: the queries whose top 10 from Milvus equal the same ranking computed in numpy
  (distances, then :func:`rsir_sdk.store.tie_order`): a check of the store, not a figure;
- the fine-code Hamming distance between each database image and its changed copies, against
  that between distinct database images: what ``rsir duplicates``' default radius should be.

Queries are encoded once with ``Encoder.encode_both`` and searched with
``Retriever.search_codes(codes, fine=...)`` (the edge path: the same store call an image search
makes); ``--check-images N`` also runs the first N queries of every change through
``Retriever.search_batch`` (images in, the encoder inside) and requires the same hits.

    python benchmarks/similar.py runs/bundles/sim-nwpu12-itq-64 runs/bundles/sim-eurosat-itq-64
    python benchmarks/similar.py BUNDLE --memory-only --no-write     # numpy ranking, no Milvus

``--data``: the archive folder, or a folder holding it under the dataset name; default the
archive the bundle records. ``--uri``: a Milvus to use (default: a new Milvus Lite file in a
temporary folder); the benchmark's collections (``similar_*``) there are replaced.

This file searches Milvus; the draw, the changed queries and the numpy rankings are in
``_similar_queries.py``, the report in ``_similar_report.py`` (their names that
``export/scripts/ratio_test_sweep.py`` uses are imported here, so ``similar.X`` keeps working).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from _common import load_average, machine, section, versions, write_section
from _similar_queries import (
    CHANGED,
    RANKINGS,
    VARIANTS,
    Case,
    ceiling,
    cosine_nearest,
    draw_case,
    encode_case,
    figures,
    fine_distances,
    learned_case,
    memory_topk,
    pooled_features,
)
from _similar_queries import archive_root as archive_root  # re-exported: ratio_test_sweep.py
from _similar_report import render

from rsir_sdk import Bundle, MilvusCodeStore, Retriever
from rsir_sdk.store import drop_collection, list_collections
from rsir_sdk.store.dupes import default_radius


# --------------------------------------------------------------------------- Milvus
@dataclass
class Stores:
    """The two collections of one case, opened through the public API."""

    fine: Retriever
    today: Retriever


def open_stores(case: Case, uri: str, threads: int | None) -> Stores:
    """Fill ``similar_<case>_fine`` with ``add_images`` (learned rows: ``add_codes(...,
    fine=)``) and ``similar_<case>_today`` with the retrieval codes alone (a store created
    without fine codes, as before issue 20), and open both."""
    base = "similar_" + "".join(c if c.isalnum() else "_" for c in case.name)
    for suffix in ("_fine", "_today"):
        if base + suffix in list_collections(uri):
            drop_collection(uri, base + suffix)
    fine = Retriever(case.bundle, uri=uri, collection=base + "_fine",
                     providers=["CPUExecutionProvider"], threads=threads)
    codes, fine_codes = case.stored()
    if case.learned is None:
        fine.add_images(case.paths, ids=case.ids, labels=case.labels)
    else:
        fine.add_codes(codes, case.ids, case.labels, case.paths, fine=fine_codes)
    if fine.store.fine_bits != case.bundle.fine_bits:
        raise SystemExit(f"{fine.collection} keeps fine_bits={fine.store.fine_bits}, the bundle "
                         f"has {case.bundle.fine_bits}: Retriever.add_images did not write fine codes")
    stored = {it.id: it.code for it in fine.get(case.ids)}
    if not all(np.array_equal(stored[i], c) for i, c in zip(case.ids, codes)):
        raise SystemExit(f"{fine.collection}: stored codes differ from those written")
    plain = MilvusCodeStore(uri, base + "_today", bits=case.bundle.bits, encoder=fine.store.encoder)
    plain.upsert(case.ids, codes, case.labels, case.paths, encoder=case.bundle.identity())
    if plain.fine_bits is not None:
        raise SystemExit(f"{plain.collection} keeps fine codes though none were written")
    plain.close()
    today = Retriever(case.bundle, uri=uri, collection=base + "_today",
                      providers=["CPUExecutionProvider"], threads=threads)
    return Stores(fine, today)


def milvus_topk(case: Case, stores: Stores, variant: str, ranking: str, k: int) -> list[list[str]]:
    """The top-``k`` ids of every query of ``variant`` from Milvus."""
    q = case.queries[variant]
    if ranking == "today":
        hits = stores.today.search_codes(q.codes, k)
    else:
        hits = stores.fine.search_codes(q.codes, k, fine=q.fine, mode=ranking)
    return [[h.id for h in hs] for hs in hits]


def check_images(case: Case, stores: Stores, tops: dict[tuple[str, str], list[list[str]]],
                 n: int, k: int) -> int:
    """Run the first ``n`` queries of every variant through ``search_batch`` (images in);
    how many were checked. Exits when any differs from the codes path."""
    done = 0
    for v in VARIANTS:
        imgs = case.images[v][:n]
        for ranking in RANKINGS:
            if ranking == "today":
                got = stores.today.search_batch(imgs, k)
            else:
                got = stores.fine.search_batch(imgs, k, mode=ranking)
            ids = [[h.id for h in hs] for hs in got]
            if ids != tops[(v, ranking)][:n]:
                raise SystemExit(f"{case.name} {v} {ranking}: search_batch(images) differs from "
                                 f"search_codes(codes, fine=) on the first {n} queries")
            done += len(imgs)
    return done


def duplicates_check(case: Case, stores: Stores, radii: list[int]) -> list[dict[str, Any]]:
    """``Retriever.duplicates`` on a collection holding every database image AND its JPEG,
    crop and brightness copies (ids ``<id>#<change>``, written with ``add_codes(..., fine=)``):
    per radius, the share of copies found in their original's group, and the groups that join
    distinct database images (false duplicates)."""
    r = stores.fine
    ids = list(case.ids)
    codes, fine = [case.db.codes], [case.db.fine]
    for v in CHANGED:
        ids += [f"{i}#{v}" for i in case.ids]
        codes.append(case.queries[v].codes)
        fine.append(case.queries[v].fine)
    r.add_codes(np.concatenate(codes), ids, case.labels * (1 + len(CHANGED)),
                fine=np.concatenate(fine))
    out = []
    # None first: the store's own default, NEAR_DUPLICATE_RADIUS scaled to the fine length
    for radius in dict.fromkeys([None, *radii]):
        groups = r.duplicates(radius)
        where = {x: g for g, members in enumerate(groups) for x in members}
        found = {v: float(np.mean([f"{i}#{v}" in where and where.get(i) == where[f"{i}#{v}"]
                                   for i in case.ids])) for v in CHANGED}
        originals = [{x.split("#")[0] for x in g} for g in groups]
        mixed = [o for o in originals if len(o) > 1]
        used = default_radius(int(r.store.fine_bits or 0)) if radius is None else radius
        out.append({"radius": used, "default": radius is None, "groups": len(groups), "found": found,
                    "mixed_groups": len(mixed),
                    "images_in_mixed": int(sum(len(o) for o in mixed)),
                    "largest": max((len(g) for g in groups), default=0)})
    return out


# --------------------------------------------------------------------------- one bundle
def run_case(case: Case, args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """All figures of one bundle."""
    k = 11  # 10 others besides the query itself
    near = {"embedding": cosine_nearest(case.db.embeddings)}
    if case.pooled is not None:
        near["pooled"] = cosine_nearest(case.pooled)
    mem = {(v, r): memory_topk(case, v, r, k) for v in VARIANTS for r in RANKINGS}
    out: dict[str, Any] = {
        "bundle": str(case.bundle.path), "case": case.name, "n": len(case.ids),
        "bits": case.bundle.bits, "fine_bits": case.bundle.fine_bits,
        "distinct_codes": int(len(np.unique(case.stored()[0], axis=0))),
        "distinct_fine": int(len(np.unique(case.stored()[1], axis=0))),
        "learned_fine_equal_encoded": None if case.learned is None else
        float((case.learned[1] == case.db.fine).all(axis=1).mean()),
        "encode_s": case.encode_s,
        "memory": {r: figures(case, {v: mem[(v, r)] for v in VARIANTS}, near) for r in RANKINGS},
        "fine_distances": fine_distances(case),
        "ceiling": ceiling(case),
    }
    if args.memory_only:
        return out
    stores = open_stores(case, args.uri, args.threads)
    try:
        t0 = time.perf_counter()
        mil = {(v, r): milvus_topk(case, stores, v, r, k) for v in VARIANTS for r in RANKINGS}
        out["search_s"] = time.perf_counter() - t0
        out["milvus"] = {r: figures(case, {v: mil[(v, r)] for v in VARIANTS}, near)
                         for r in RANKINGS}
        out["agree"] = {r: sum(int(a[:10] == b[:10]) for v in VARIANTS
                               for a, b in zip(mil[(v, r)], mem[(v, r)])) for r in RANKINGS}
        out["queries"] = len(VARIANTS) * len(case.ids)
        out["image_checks"] = check_images(case, stores, mil, args.check_images, k)
        if case.learned is None:
            out["duplicates"] = duplicates_check(case, stores, args.dup_radii)
        log(f"  {case.name}: Milvus searches {out['search_s']:.1f} s")
    finally:
        stores.fine.close()
        stores.today.close()
    return out



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, default=None, help="archive folder (default: the bundle's)")
    ap.add_argument("--n", type=int, default=500, help="database images per bundle")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--uri", default=None, help="Milvus uri (default: a new Milvus Lite file)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads")
    ap.add_argument("--check-images", type=int, default=20,
                    help="queries per change also run through search_batch(images)")
    ap.add_argument("--dup-radii", type=lambda t: [int(x) for x in t.split(",") if x],
                    default=[12, 16],
                    help="radii for the Retriever.duplicates check besides the default one "
                         "(comma-separated; '' = the default alone)")
    ap.add_argument("--memory-only", action="store_true", help="rank in numpy only (no Milvus; writes no docs section)")
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
    ap.add_argument("--section", default="similar",
                    help="name of the docs/benchmarks.md section to write (default: similar)")
    ap.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    args = ap.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr, flush=True)
    load0 = load_average()
    tmp = None
    if args.uri is None and not args.memory_only:
        tmp = tempfile.TemporaryDirectory(prefix="rsir-similar-")
        args.uri = os.path.join(tmp.name, "similar.db")
    results = []
    t0 = time.perf_counter()
    for path in args.bundles:
        case = draw_case(Bundle.load(path), args.data, args.n, args.seed)
        log(f"{case.name}: {len(case.ids)} database images from {path}")
        enc = encode_case(case, args.threads, log)
        case.pooled = pooled_features(case, enc, args.threads)
        results.append(run_case(case, args, log))
        learned = learned_case(case)
        if learned is not None:
            results.append(run_case(learned, args, log))
    source = "memory" if args.memory_only else "milvus"
    body = render(results, source)
    print(body)
    if args.json:
        import json

        args.json.write_text(json.dumps(results, indent=1))
    load1 = load_average()
    if not args.no_write and not args.memory_only:  # the section holds Milvus figures only
        meta = machine({"versions": versions("rsir-sdk", "onnxruntime", "pymilvus", "milvus-lite"),
                        "wall time": f"{time.perf_counter() - t0:.0f} s",
                        "milvus": "a new Milvus Lite file" if tmp else args.uri.split("@")[-1]})
        title = (f"The most similar image first: rank-1 of changed copies through Milvus, "
                 f"{', '.join(r['case'] for r in results)} (`benchmarks/similar.py`)")
        write_section(args.section, section(args.section, title, body, meta, (load0, load1)))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
