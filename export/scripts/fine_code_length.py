"""Which fine code, and how long? Measured on nwpu12 and eurosat (issue 20).

Why: every bundle is to carry a label-free fine code beside its retrieval code so that the nearest
hit is the most similar image (``docs/similar.md``). Its kind and length are chosen here, by what
users judge: an image of the database, queried unchanged or lightly changed, comes back first.

For each archive: pooled features of the frozen ImageNet EfficientNet-Lite0 (the ITQ/MiLAN
preprocessing: the scene resized straight to 224 x 224; the pooled-feature cache of
:func:`rsir_train.features.pooled_features`, shared with ``rsir train``), the 80/20 split
(``--split-file`` when it exists, else drawn per class with seed 0 as ``rsir train`` draws it),
every fine code of :mod:`rsir_train.fine_code` fitted on the TRAIN side. Database: 500 images
(``--side query``: the held-out side, never seen by the fit, all of it when smaller;
``--side train``: a seeded draw from the train side). Each is queried as the same file, JPEG
re-encoded at quality 70, a 90% centre crop resized back, brightness x 1.1 and rotated 90
degrees (forward passes batched, cached under ``--cache-dir``). Figures, in expectation over the
order of tied codes:

- rank-1: the original is first (1 / size of the tie group at the smallest distance when the
  original is in it); for the rotation also in-top-10;
- overlap@10: of each original's 10 nearest others by float cosine of the same pooled features,
  how many the code's top 10 (the original itself left out) holds;
- the float-cosine reference for all of these, and the number of distinct codes;
- the ranking issue 20 designs, simulated: a collapsed class-level code (``--retrieval-bits``,
  one random code per class predicted by a ridge classifier fitted on the train side's labels,
  as converged AHCL/MiLAN codes are about one code per class) ranked first, ties in random
  order (today) or ordered by each fine code of ``--ranked-bits``.

    nice -n 10 python export/scripts/fine_code_length.py --data ../shared/data/nwpu12 \\
        --data ../shared/data/eurosat --cache-dir runs/cache --side query --side train \\
        --ranked-bits 64,128 --json runs/fine_code_length.json

Prints one table per archive and side; writes everything as JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from rsir_sdk.codes import hamming_distances
from rsir_sdk.images import load_image
from rsir_sdk.preprocess import prepare
from rsir_train.backbones import build_backbone
from rsir_train.baselines import fit_linear_hash
from rsir_train.features import Normalize, pooled_cache_key, pooled_features
from rsir_train.fine_code import FINE_KINDS, FineCodeConfig, fit_fine_code
from rsir_train.itq import ITQConfig
from rsir_train.pipeline import prepare_data

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _similar_queries import CHANGES as SIMILAR_CHANGES  # noqa: E402

VARIANTS = ("same", "jpeg70", "crop90", "bright110", "rot90")
VARIANT_FORMAT = "fine-variants-v1"


#: the changed queries (the same file is the archive's own features): the benchmark's own
#: (benchmarks/_similar_queries.py), so that both measure the same changes
CHANGES: dict[str, Callable[[np.ndarray], np.ndarray]] = SIMILAR_CHANGES


@torch.no_grad()
def variant_features(backbone: Any, normalize: Normalize, files: list[Path],
                     pre: dict[str, Any], batch: int) -> np.ndarray:
    """Pooled features ``(len(CHANGES), n, D)`` of every changed version of ``files``."""
    out = np.empty((len(CHANGES), len(files), backbone.out_dim), dtype=np.float32)
    for start in range(0, len(files), batch):
        rgbs = [load_image(f) for f in files[start:start + batch]]
        for v, change in enumerate(CHANGES.values()):
            x = np.stack([prepare(change(rgb), pre) for rgb in rgbs])
            out[v, start:start + len(rgbs)] = backbone(normalize(torch.from_numpy(x))).numpy()
        print(f"  variants {start + len(rgbs)}/{len(files)}", file=sys.stderr, flush=True)
    return out


def cached_variants(cache_dir: Path, base_key: str, ids: list[str],
                    compute: Callable[[], np.ndarray]) -> np.ndarray:
    """Variant features read from ``cache_dir`` when present for the same images, else computed."""
    h = hashlib.sha256(f"{VARIANT_FORMAT}\t{base_key}\t{','.join(CHANGES)}".encode())
    h.update("\n".join(ids).encode())
    path = cache_dir / f"{VARIANT_FORMAT}-{h.hexdigest()[:32]}.npy"
    if path.is_file():
        return np.load(path)
    feats = compute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, feats)
    os.replace(tmp, path)
    return feats


def expected_in_topk(dist: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """P(item ``target[i]`` is in row i's top ``k``), ties broken uniformly at random."""
    d_t = dist[np.arange(len(dist)), target][:, None]
    closer = (dist < d_t).sum(axis=1)
    tied = (dist == d_t).sum(axis=1)
    return np.clip(k - closer, 0, tied) / tied


def overlap_at_10(dist: np.ndarray, reference: np.ndarray) -> float:
    """Mean expected count of each row's 10 nearest by ``reference`` (self excluded) among its
    top 10 by ``dist`` (self excluded, ties broken uniformly at random)."""
    n = len(dist)
    d = dist.astype(np.float64).copy()
    ref = reference.astype(np.float64).copy()
    np.fill_diagonal(d, np.inf)
    np.fill_diagonal(ref, np.inf)
    nearest = np.argsort(ref, axis=1, kind="stable")[:, :10]
    total = 0.0
    for j in range(10):
        total += expected_in_topk(d, nearest[:, j], 10).sum()
    return total / n


def scores(q_dist: dict[str, np.ndarray], db_dist: np.ndarray, cos_dist: np.ndarray) -> dict:
    """The figures of one code (or of float cosine) from its distance matrices."""
    idx = np.arange(len(db_dist))
    out = {v: float(expected_in_topk(q_dist[v], idx, 1).mean()) for v in VARIANTS}
    out["rot90_top10"] = float(expected_in_topk(q_dist["rot90"], idx, 10).mean())
    out["overlap10"] = overlap_at_10(db_dist, cos_dist)
    return out


def _cosine_dist(q: np.ndarray, db: np.ndarray) -> np.ndarray:
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    dn = db / np.linalg.norm(db, axis=1, keepdims=True)
    return -(qn.astype(np.float64) @ dn.astype(np.float64).T)


def _class_code(train: tuple[np.ndarray, np.ndarray], bits: int) -> Callable[[np.ndarray], np.ndarray]:
    """A collapsed class-level code, as converged AHCL/MiLAN codes are (about one code per
    class): the class predicted by the ridge classifier of the supervised linear hash (fitted on
    the train side's labels), mapped to one seeded random code per class."""
    lh = fit_linear_hash(train[0], train[1], bits, seed=0)
    n_classes = lh.weights.shape[1]
    table = np.packbits(np.random.default_rng(0).integers(0, 2, (n_classes, bits)).astype(bool),
                        axis=1, bitorder="big")

    def codes(x: np.ndarray) -> np.ndarray:
        scores = (np.asarray(x, np.float64) - lh.mean) @ lh.weights
        return table[np.argmax(scores, axis=1)]

    return codes


def _code_row(name: str, kind: str, nbytes: int, db_codes: np.ndarray, q_dist: dict,
              db_dist: np.ndarray, cos_db: np.ndarray) -> dict[str, Any]:
    return {"code": name, "kind": kind, "bits": 8 * nbytes, "bytes": nbytes,
            "distinct": len(np.unique(db_codes, axis=0)), **scores(q_dist, db_dist, cos_db)}


def measure_side(train: tuple[np.ndarray, np.ndarray], db_feats: np.ndarray,
                 var_feats: np.ndarray, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows for float cosine and every (kind, bits) fine code, fitted on the train side's
    features ``train[0]``; then a class-level retrieval code (the supervised linear hash on the
    labels ``train[1]``) alone (today's ranking: ties in random order) and followed by each
    fine code of ``args.ranked_bits`` (the ranking issue 20 designs)."""
    queries = {"same": db_feats, **{v: var_feats[i] for i, v in enumerate(CHANGES)}}
    cos_db = _cosine_dist(db_feats, db_feats)
    d = db_feats.shape[1]
    rows = [{"code": "float cosine", "kind": "float", "bits": 32 * d, "bytes": 4 * d,
             "distinct": len(db_feats),
             **scores({v: _cosine_dist(q, db_feats) for v, q in queries.items()}, cos_db, cos_db)}]
    fine_dists: dict[tuple[str, int], tuple[dict, np.ndarray]] = {}
    for kind in args.kind:
        for b in args.bits:
            code = fit_fine_code(train[0], FineCodeConfig(kind=kind, bits=b))
            db_codes = code.codes(db_feats)
            q_dist = {v: hamming_distances(code.codes(q), db_codes) for v, q in queries.items()}
            db_dist = hamming_distances(db_codes, db_codes)
            fine_dists[(kind, b)] = (q_dist, db_dist)
            rows.append(_code_row(f"{kind} {b}", kind, b // 8, db_codes, q_dist, db_dist, cos_db))
    if args.retrieval_bits:
        rb = args.retrieval_bits
        class_code = _class_code(train, rb)
        r_db = class_code(db_feats)
        r_q = {v: hamming_distances(class_code(q), r_db) for v, q in queries.items()}
        r_dd = hamming_distances(r_db, r_db)
        rows.append(_code_row(f"class code {rb} (ties random)", "class", rb // 8, r_db, r_q,
                              r_dd, cos_db))
        for (kind, b), (q_dist, db_dist) in fine_dists.items():
            if b not in args.ranked_bits:
                continue
            combined = {v: r_q[v].astype(np.int64) * (b + 1) + q_dist[v] for v in queries}
            rows.append(_code_row(f"class code {rb}, then {kind} {b}", "class+" + kind,
                                  (rb + b) // 8, r_db, combined,
                                  r_dd.astype(np.int64) * (b + 1) + db_dist, cos_db))
    return rows


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    """One Markdown table of ``rows``."""
    cols = ["same", "jpeg70", "crop90", "bright110", "rot90", "rot90_top10", "overlap10"]
    print(f"\n### {title}\n")
    print("| code | bytes | distinct | " + " | ".join(cols) + " |")
    print("|---|---|---|" + "---|" * len(cols))
    for r in rows:
        vals = " | ".join(f"{r[c]:.2f}" if c == "overlap10" else f"{r[c]:.3f}" for c in cols)
        print(f"| {r['code']} | {r['bytes']} | {r['distinct']} | {vals} |")


def run_archive(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Features, split, variants and the rows of every side of one archive."""
    split_file = args.split_file or Path("runs/splits") / f"{path.name}-80-20-seed0.json"
    data = prepare_data(path, split_file=split_file if Path(split_file).is_file() else None,
                        protocol="80-20", seed=0)
    backbone = build_backbone("efficientnet_lite0").eval().requires_grad_(False)
    pre = ITQConfig().resolved_preprocess(backbone)
    normalize = Normalize(pre["mean"], pre["std"])
    t0 = time.perf_counter()
    feats, status = pooled_features(backbone, normalize, data.archive, pre,
                                    cache_dir=args.cache_dir, batch_size=args.batch)
    feats_np = feats.numpy()
    train_idx, query_idx = data.indices()
    base_key = pooled_cache_key(backbone, pre, data.archive)
    out: dict[str, Any] = {"archive": str(path), "n_images": len(data.archive.items),
                           "n_train": len(train_idx), "n_query": len(query_idx),
                           "split_file": str(split_file) if Path(split_file).is_file() else None,
                           "feature_cache": status, "sides": {}}
    for side in args.side:
        pool = query_idx if side == "query" else train_idx
        rng = np.random.default_rng(args.seed)
        db_idx = pool if len(pool) <= args.n else np.sort(rng.choice(pool, args.n, replace=False))
        items = [data.archive.items[int(i)] for i in db_idx]
        var = cached_variants(Path(args.cache_dir), base_key, [it.id for it in items],
                              lambda: variant_features(backbone, normalize,
                                                       [it.file for it in items], pre, args.batch))
        labels = np.array([data.archive.items[int(i)].label for i in train_idx], dtype=object)
        rows = measure_side((feats_np[train_idx], labels), feats_np[db_idx], var, args)
        out["sides"][side] = {"n_database": len(db_idx), "rows": rows}
        print_table(f"{path.name}, database = {len(db_idx)} images of the {side} side", rows)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse, measure every archive, print the tables, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, action="append", required=True)
    p.add_argument("--split-file", type=Path, default=None,
                   help="one archive only; default runs/splits/<name>-80-20-seed0.json if present")
    p.add_argument("--cache-dir", default="runs/cache")
    p.add_argument("--side", action="append", choices=("query", "train"), default=None)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--bits", type=lambda s: [int(b) for b in s.split(",")], default=[32, 64, 128, 256])
    p.add_argument("--kind", type=lambda s: s.split(","), default=list(FINE_KINDS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retrieval-bits", type=int, default=64,
                   help="class-level code (supervised linear hash) ranked before the fine code; 0: none")
    p.add_argument("--ranked-bits", type=lambda s: [int(b) for b in s.split(",")], default=[64])
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=Path("runs/fine_code_length.json"))
    args = p.parse_args(argv)
    args.side = args.side or ["query"]
    torch.set_num_threads(args.threads)
    started = dt.datetime.now(dt.timezone.utc)
    results = [run_archive(path, args) for path in args.data]
    report = {"command": " ".join(sys.argv), "started_utc": started.isoformat(timespec="seconds"),
              "machine": f"{platform.machine()} {os.cpu_count()} cores, torch threads "
                         f"{args.threads}, {platform.platform()}",
              "backbone": "efficientnet_lite0 (ImageNet, frozen), scene resized to 224",
              "variants": list(VARIANTS), "archives": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(f"\nwritten {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
