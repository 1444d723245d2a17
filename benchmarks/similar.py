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
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
from _common import load_average, machine, section, table, versions, write_section
from PIL import Image

from rsir_sdk import Bundle, Encoder, MilvusCodeStore, Retriever
from rsir_sdk.archive import open_archive
from rsir_sdk.codes import fine_ranking_key, hamming_distances
from rsir_sdk.errors import RsirError
from rsir_sdk.images import load_image
from rsir_sdk.store import DEFAULT_DUPLICATE_RADIUS, drop_collection, list_collections, tie_order

VARIANTS = ("same", "jpeg70", "crop90", "bright110", "rot90")
HEADS = {"same": "same file", "jpeg70": "JPEG q70", "crop90": "90% crop",
         "bright110": "brightness x1.1", "rot90": "rot 90 in top 10"}
RANKINGS = ("today", "default", "appearance")
CHANGED = ("jpeg70", "crop90", "bright110")
RADII = (4, 8, 10, 12, 14, 16, 20, 24, 28, 32)


def _jpeg70(rgb: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=70)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _crop90(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    ch, cw = round(h * 0.9), round(w * 0.9)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = Image.fromarray(rgb[top:top + ch, left:left + cw])
    return np.asarray(crop.resize((w, h), Image.BILINEAR), dtype=np.uint8)


def _bright110(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb.astype(np.float32) * 1.1), 0, 255).astype(np.uint8)


def _rot90(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(rgb))


#: the changed queries, as in export/scripts/fine_code_length.py (the same file is its path)
CHANGES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "jpeg70": _jpeg70, "crop90": _crop90, "bright110": _bright110, "rot90": _rot90}


@dataclass
class Case:
    """One bundle's database draw, its query images and their codes."""

    bundle: Bundle
    name: str
    ids: list[str]
    labels: list[str]
    paths: list[str]
    db: Any = None  # Encoded of the database images
    queries: dict[str, Any] = field(default_factory=dict)  # variant -> Encoded
    images: dict[str, list[Any]] = field(default_factory=dict)  # variant -> query sources
    encode_s: float = 0.0
    pooled: np.ndarray | None = None  # pooled features of the database images
    #: what the collection holds, when not the encoded images: AHCL's learned rows (codes, fine)
    learned: tuple[np.ndarray, np.ndarray] | None = None

    def stored(self) -> tuple[np.ndarray, np.ndarray]:
        """The retrieval and fine codes the collection holds for ``ids``."""
        return self.learned if self.learned is not None else (self.db.codes, self.db.fine)


def learned_case(case: Case) -> Case | None:
    """The same draw with AHCL's learned database rows (``database.npz``: the codes V and their
    fine codes) as the collection, as ``Retriever.add_learned_codes`` stores them; None for a
    bundle without learned rows or without their fine codes."""
    if not case.bundle.has_database:
        return None
    db = case.bundle.load_database()
    if db.fine is None:
        return None
    pos = {x: i for i, x in enumerate(db.ids)}
    rows = [pos[i] for i in case.ids]
    return replace(case, name=case.name + " learned", learned=(db.codes[rows], db.fine[rows]))


def archive_root(bundle: Bundle, data: Path | None, first_id: str) -> Path:
    """The folder holding the bundle's images: ``data`` or ``data/<dataset>``, else the archive
    the bundle records."""
    dataset = (bundle.manifest.get("training") or {}).get("dataset", "")
    cands = [data, data / dataset] if data else []
    if bundle.archive_root:
        cands.append(Path(bundle.archive_root))
    for cand in cands:
        if cand is not None and (cand / first_id).is_file():
            return cand
    raise SystemExit(f"no archive holding {first_id} for {bundle.path}: give --data the archive folder")


def draw_case(bundle: Bundle, data: Path | None, n: int, seed: int) -> Case:
    """``n`` database images drawn with ``seed`` from the bundle's database side."""
    try:
        side = list(bundle.split().train_ids)
    except (OSError, RsirError):  # no split.json: the whole archive is the database
        side = []
    root = archive_root(bundle, data, side[0]) if side else Path(bundle.archive_root or data or ".")
    listing = open_archive(root, label_from="top")
    by_id = listing.by_id()
    side = side or sorted(by_id)
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(side), size=min(n, len(side)), replace=False).tolist())
    ids = [side[i] for i in pick]
    dataset = (bundle.manifest.get("training") or {}).get("dataset") or root.name
    name = f"{dataset}-{bundle.method}-{bundle.bits}"
    return Case(bundle, name, ids, [by_id[i].label for i in ids], [str(by_id[i].file) for i in ids])


def encode_case(case: Case, threads: int | None, log: Callable[[str], None]) -> Encoder:
    """Encode the database images and every changed copy with ``Encoder.encode_both``."""
    enc = Encoder(case.bundle, providers=["CPUExecutionProvider"], threads=threads, batch_size=32)
    if enc.fine_bits is None:
        raise SystemExit(f"{case.bundle.path} has no fine code (made before issue 20): train it again")
    t0 = time.perf_counter()
    case.db = enc.encode_both(case.paths)
    case.images["same"] = list(case.paths)
    rgbs = [load_image(p) for p in case.paths]
    for v, change in CHANGES.items():
        case.images[v] = [change(x) for x in rgbs]
    for v in VARIANTS:
        case.queries[v] = case.db if v == "same" else enc.encode_both(case.images[v])
        log(f"  {case.name}: encoded {v}")
    case.encode_s = time.perf_counter() - t0
    return enc


def pooled_features(case: Case, enc: Encoder, threads: int | None) -> np.ndarray | None:
    """The pooled features the fine code is fitted on (the input of the fine head's linear
    layer in the bundle's graph, exposed as an extra output), for the database images; None
    when the graph has no such layer. Why: the issue asks for the order inside a class to follow
    the cosine of these features, which the bundle's graph computes but does not output."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(case.bundle.model_path))
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer.get(case.bundle.fine_output or "")
    while node is not None and node.op_type not in ("Gemm", "MatMul"):
        node = producer.get(node.input[0])
    if node is None:
        return None
    feat = node.input[0]
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(feat))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or 0
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    parts = [sess.run([feat], {case.bundle.input_name: np.stack([enc.prepare(p) for p in
                                                                  case.paths[s:s + 32]])})[0]
             for s in range(0, len(case.paths), 32)]
    return np.concatenate(parts).reshape(len(case.paths), -1).astype(np.float32)


# --------------------------------------------------------------------------- rankings
def digest_rank(ids: list[str]) -> np.ndarray:
    """Each id's position in the store's tie order."""
    rank = np.empty(len(ids), dtype=np.int64)
    rank[tie_order(ids)] = np.arange(len(ids))
    return rank


def ceiling(case: Case) -> dict[str, float]:
    """Per variant, the share of queries whose original is in the nearest group of retrieval
    codes (for the rotation: among the 10 nearest by retrieval distance, ties counted in): the
    most the default ranking can reach, whatever the fine code, since it keeps the retrieval
    distance first."""
    codes = case.stored()[0]
    out = {}
    for v in VARIANTS:
        d = hamming_distances(case.queries[v].codes, codes)
        own = d[np.arange(len(d)), np.arange(len(d))]
        depth = 10 if v == "rot90" else 1
        out[v] = float(np.mean((d < own[:, None]).sum(axis=1) < depth))
    return out


def memory_topk(case: Case, variant: str, ranking: str, k: int) -> list[list[str]]:
    """The top-``k`` ids of every query of ``variant`` ranked in numpy as the store ranks."""
    q = case.queries[variant]
    codes, fine = case.stored()
    d_ret = hamming_distances(q.codes, codes)
    d_fine = hamming_distances(q.fine, fine)
    tie = digest_rank(case.ids)
    out = []
    for i in range(len(d_ret)):
        if ranking == "today":
            order = np.lexsort((tie, d_ret[i]))
        elif ranking == "default":  # the store's rule: near-duplicates first (codes.py)
            order = np.lexsort((tie, fine_ranking_key(d_ret[i], d_fine[i], q.fine.shape[1] * 8)))
        else:
            order = np.lexsort((tie, d_fine[i]))
        out.append([case.ids[j] for j in order[:k]])
    return out


def cosine_nearest(emb: np.ndarray, k: int = 10) -> list[set[int]]:
    """Each row's ``k`` nearest other rows by float cosine (positions)."""
    x = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return [set(r.tolist()) for r in np.argsort(-sim, axis=1, kind="stable")[:, :k]]


def figures(case: Case, tops: dict[str, list[list[str]]],
            nears: dict[str, list[set[int]]]) -> dict[str, float]:
    """Rank-1 (rotation: in the top 10) per variant and overlap@10 of the same-file queries
    with each cosine reference of ``nears``."""
    out: dict[str, float] = {}
    for v in VARIANTS:
        depth = 10 if v == "rot90" else 1
        out[v] = float(np.mean([case.ids[i] in top[:depth] for i, top in enumerate(tops[v])]))
    pos = {x: j for j, x in enumerate(case.ids)}
    for ref, near in nears.items():
        counts = []
        for i, top in enumerate(tops["same"]):
            others = [pos[x] for x in top if x != case.ids[i]][:10]
            counts.append(len(near[i].intersection(others)))
        out[f"overlap10_{ref}"] = float(np.mean(counts))
    return out


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
    for radius in radii:
        groups = r.duplicates(radius)
        where = {x: g for g, members in enumerate(groups) for x in members}
        found = {v: float(np.mean([f"{i}#{v}" in where and where.get(i) == where[f"{i}#{v}"]
                                   for i in case.ids])) for v in CHANGED}
        originals = [{x.split("#")[0] for x in g} for g in groups]
        mixed = [o for o in originals if len(o) > 1]
        out.append({"radius": radius, "groups": len(groups), "found": found,
                    "mixed_groups": len(mixed),
                    "images_in_mixed": int(sum(len(o) for o in mixed)),
                    "largest": max((len(g) for g in groups), default=0)})
    return out


# --------------------------------------------------------------------------- fine distances
def fine_distances(case: Case) -> dict[str, Any]:
    """Fine-code Hamming distances: each original to its changed copies, and to the other
    database images (all, and the nearest one), with duplicate rates at candidate radii."""
    db = case.stored()[1]
    n = len(db)
    same_pair = {v: hamming_distances(case.queries[v].fine, db)[np.arange(n), np.arange(n)]
                 for v in (*CHANGED, "rot90")}
    dd = hamming_distances(db, db).astype(np.float64)
    np.fill_diagonal(dd, np.inf)
    labels = np.array(case.labels)
    same_class = labels[:, None] == labels[None, :]
    iu = np.triu_indices(n, 1)
    pairs = dd[iu]
    nearest = dd.min(axis=1)
    changed = np.concatenate([same_pair[v] for v in CHANGED])
    rates = []
    for r in RADII:
        rates.append({"radius": r, "changed_within": float((changed <= r).mean()),
                      **{f"{v}_within": float((same_pair[v] <= r).mean()) for v in CHANGED},
                      "images_with_distinct_within": float((nearest <= r).mean()),
                      "distinct_pairs_within": int((pairs <= r).sum())})
    pct = (50, 90, 95, 99, 100)
    return {
        "fine_bits": case.bundle.fine_bits,
        "changed": {v: {f"p{p}": float(np.percentile(same_pair[v], p)) for p in pct}
                    for v in (*CHANGED, "rot90")},
        "nearest_distinct": {f"p{p}": float(np.percentile(nearest, p)) for p in (0, 1, 5, 50)},
        "distinct_same_class": {f"p{p}": float(np.percentile(dd[iu][same_class[iu]], p))
                                for p in (0, 1, 5, 50)},
        "rates": rates,
    }


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
        if case.learned is None and args.dup_radii:
            out["duplicates"] = duplicates_check(case, stores, args.dup_radii)
        log(f"  {case.name}: Milvus searches {out['search_s']:.1f} s")
    finally:
        stores.fine.close()
        stores.today.close()
    return out


# --------------------------------------------------------------------------- report
def rank_rows(results: list[dict[str, Any]], source: str) -> list[list[Any]]:
    """One row per bundle and ranking."""
    rows = []
    for res in results:
        for r in RANKINGS:
            f = res[source][r]
            label = {"today": "today (no fine codes)", "default": "default (fine codes kept)",
                     "appearance": "appearance mode"}[r]
            rows.append([res["case"], label, *(f"{f[v]:.3f}" for v in VARIANTS),
                         f"{f['overlap10_embedding']:.2f}", f"{f.get('overlap10_pooled', float('nan')):.2f}"]
                        + ([f"{res['agree'][r]}/{res['queries']}"] if source == "milvus" else []))
        rows.append([res["case"], "(retrieval-first ceiling)", *(f"{res['ceiling'][v]:.3f}" for v in VARIANTS),
                     "", ""] + ([""] if source == "milvus" else []))
    return rows


def distance_rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    """Fine-code distances of changed copies vs distinct images, per bundle."""
    rows = []
    for res in results:
        fd = res["fine_distances"]
        ch = fd["changed"]
        rows.append([res["case"], fd["fine_bits"],
                     *(f"{ch[v]['p50']:.0f} / {ch[v]['p95']:.0f} / {ch[v]['p100']:.0f}"
                       for v in (*CHANGED, "rot90")),
                     " / ".join(f"{fd['nearest_distinct'][p]:.0f}" for p in ("p0", "p1", "p5", "p50")),
                     " / ".join(f"{fd['distinct_same_class'][p]:.0f}" for p in ("p0", "p1", "p5", "p50"))])
    return rows


def radius_rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    """Per candidate radius: changed copies found, images that would gain a false duplicate."""
    rows = []
    for res in results:
        for rate in res["fine_distances"]["rates"]:
            rows.append([res["case"], rate["radius"], *(f"{rate[f'{v}_within']:.3f}" for v in CHANGED),
                         f"{rate['images_with_distinct_within']:.3f}", rate["distinct_pairs_within"]])
    return rows


def dup_rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    """The ``Retriever.duplicates`` check, per bundle and radius."""
    rows = []
    for res in results:
        for d in res.get("duplicates", []):
            rows.append([res["case"], d["radius"], *(f"{d['found'][v]:.3f}" for v in CHANGED),
                         d["groups"], d["mixed_groups"], d["images_in_mixed"], d["largest"]])
    return rows


def render(results: list[dict[str, Any]], source: str) -> str:
    """The markdown body: the ranking table, the distances and the radius table."""
    heads = ["bundle", "ranking", *(HEADS[v] for v in VARIANTS), "overlap@10 embedding",
             "overlap@10 pooled"]
    if source == "milvus":
        heads.append("= memory")
    info = "; ".join(f"{r['case']}: {r['n']} images, {r['distinct_codes']} distinct codes, "
                     f"{r['distinct_fine']} distinct fine codes" for r in results)
    parts = [
        f"Rank-1 rate (rotation: in the top 10) of each database image queried as itself and "
        f"lightly changed, {'through Milvus' if source == 'milvus' else 'ranked in numpy'}; "
        f"overlap@10 (same-file queries): of the 10 nearest other database images by float "
        f"cosine of the bundle's embeddings (the continuous output its retrieval code is the sign "
        f"of), or of the pooled features its fine code is fitted on, how many the first 10 hits "
        f"(the query's own image left out) hold. `(retrieval-first ceiling)`: the share of "
        f"queries whose original is in the nearest group of retrieval codes (rotation: among the "
        f"10 nearest, ties counted in), the most a ranking that keeps the retrieval distance "
        f"first can reach; the default ranking puts near-duplicates (fine distance within the "
        f"duplicates radius, or clearly the nearest by the ratio test) ahead of it, so it can "
        f"pass it. `= memory`: queries whose 10 hits from Milvus equal the same ranking "
        f"computed in numpy (a check of the store). {info}.",
        "", table(heads, rank_rows(results, source)), "",
        "Fine-code Hamming distance of each original to its changed copy (p50 / p95 / max), and "
        "to distinct database images: the nearest one per image and all same-class pairs "
        "(min / p1 / p5 / p50):", "",
        table(["bundle", "fine bits", *(f"{HEADS[v] if v != 'rot90' else 'rot 90'}" for v in
                                        (*CHANGED, "rot90")),
               "nearest distinct", "distinct, same class"], distance_rows(results)), "",
        "Duplicates radius (inclusive): the share of changed copies within it, and the share of "
        "database images with a distinct image within it (a false duplicate):", "",
        table(["bundle", "radius", *(HEADS[v] for v in CHANGED), "images with a distinct one within",
               "distinct pairs within"], radius_rows(results)),
    ]
    dups = dup_rows(results)
    if dups:
        parts += ["", f"`Retriever.duplicates(radius)` on a collection of the database images and "
                  f"their JPEG, crop and brightness copies (4 x {results[0]['n']} items): the share "
                  f"of copies in their original's group, the groups, the groups joining distinct "
                  f"database images and the images in those, the largest group "
                  f"(default radius: {DEFAULT_DUPLICATE_RADIUS}):", "",
                  table(["bundle", "radius", *(HEADS[v] for v in CHANGED), "groups",
                         "groups of distinct images", "images in them", "largest"], dups)]
    return "\n".join(parts)


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
                    default=[DEFAULT_DUPLICATE_RADIUS, 12, 16],
                    help="radii for the Retriever.duplicates check (comma-separated; '' = none)")
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
