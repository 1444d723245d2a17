"""Hashing baselines on frozen pooled features: ITQ, the supervised linear hash, float cosine.

Why: a trained hashing model is worth its training only above what its backbone's frozen
features give for free (``/work/shared/data/anchors.md``). These are those floors, computed on
the same cached features (:func:`rsir_train.features.pooled_features`) and scored with the one
AP implementation (:mod:`rsir_sdk.metrics`), under either protocol:

- :func:`fit_itq`: ITQ (Gong & Lazebnik, CVPR 2011): centre, PCA to K dimensions, then a
  rotation learned to minimise the quantization error; **label-free**, it is also the
  :mod:`rsir_train.itq` method that writes bundles for archives without labels;
- :func:`fit_linear_hash`: the supervised linear hash of anchors.md: ridge regression to one-hot
  labels, a random projection of the class scores to K bits, sign;
- :func:`float_map`: float cosine kNN (no hashing), on the raw or the centred features: the
  ceiling of label-free codes.

    python -m rsir_train.baselines --data /data/nwpu12 --split-file runs/splits/nwpu12-60-40-seed0.json \\
        --protocol 60-40 --bits 16,32,64 --method linear --method itq --method cosine

prints one line per (method, bits) with the protocol's metric (60-40: mAP@20 leave-one-out on
the query side; 80-20: mAP over the whole train side).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from rsir_sdk.codes import pack_codes
from rsir_sdk.metrics import Ties, average_precision_of_ranking, mean_average_precision

from .evaluation import MILAN_TOPK, archive_map, in_tie_order

__all__ = ["ITQ", "LinearHash", "fit_itq", "fit_linear_hash", "float_map", "protocol_map"]


@dataclass
class ITQ:
    """``codes = (x - mean) @ projection > 0``; ``projection`` = PCA basis @ rotation, ``(d, K)``."""

    mean: np.ndarray  # (d,)
    projection: np.ndarray  # (d, K)
    l2_normalize: bool

    def embed(self, x: np.ndarray) -> np.ndarray:
        x = _prep(x, self.l2_normalize)
        return (x - self.mean) @ self.projection

    def codes(self, x: np.ndarray) -> np.ndarray:
        return pack_codes(self.embed(x) > 0)


def _prep(x: np.ndarray, l2: bool) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if l2:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def fit_itq(x: np.ndarray, bits: int, *, iterations: int = 50, seed: int = 0,
            l2_normalize: bool = True) -> ITQ:
    """ITQ on ``x`` (``(n, d)`` features, no labels): PCA to ``bits`` dims, learned rotation.

    ``l2_normalize``: scale each feature to unit length first (cosine geometry, which is what
    float retrieval on these features uses). Deterministic for a seed.
    """
    x = _prep(x, l2_normalize)
    if bits > min(x.shape):
        raise ValueError(f"ITQ needs at least {bits} images and feature dimensions for {bits} "
                         f"bits, got features of shape {x.shape}")
    mean = x.mean(axis=0)
    xc = x - mean
    # PCA basis: the top eigenvectors of the covariance
    cov = xc.T @ xc / max(1, len(xc) - 1)
    vals, vecs = np.linalg.eigh(cov)
    pca = vecs[:, np.argsort(vals)[::-1][:bits]]
    v = xc @ pca
    rng = np.random.default_rng(seed)
    r, _ = np.linalg.qr(rng.standard_normal((bits, bits)))
    for _ in range(iterations):
        b = np.where(v @ r >= 0, 1.0, -1.0)
        u, _, wt = np.linalg.svd(b.T @ v)
        r = (u @ wt).T
    return ITQ(mean, pca @ r, l2_normalize)


@dataclass
class LinearHash:
    """``codes = ((x - mean) @ weights - score_mean) @ projection > 0``."""

    mean: np.ndarray
    weights: np.ndarray  # (d, C)
    score_mean: np.ndarray  # (C,)
    projection: np.ndarray  # (C, K)

    def codes(self, x: np.ndarray) -> np.ndarray:
        s = (np.asarray(x, np.float64) - self.mean) @ self.weights - self.score_mean
        return pack_codes(s @ self.projection > 0)


def fit_linear_hash(x: np.ndarray, labels: Sequence, bits: int, *, ridge: float = 1.0,
                    seed: int = 0) -> LinearHash:
    """The supervised linear hash: ridge regression of one-hot labels on the centred features
    (penalty ``ridge`` x the mean feature variance x d), scores centred, a Gaussian random
    projection to ``bits``, sign."""
    x = np.asarray(x, np.float64)
    classes, y = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    onehot = np.eye(len(classes))[y]
    mean = x.mean(axis=0)
    xc = x - mean
    d = x.shape[1]
    lam = ridge * float((xc ** 2).sum()) / len(xc)
    w = np.linalg.solve(xc.T @ xc + lam * np.eye(d), xc.T @ onehot)
    scores = xc @ w
    proj = np.random.default_rng(seed).standard_normal((len(classes), bits))
    return LinearHash(mean, w, scores.mean(axis=0), proj)


def float_map(q: np.ndarray, q_labels: Sequence, db: np.ndarray, db_labels: Sequence,
              topk: int | None = None, leave_one_out: bool = False,
              center: np.ndarray | None = None) -> float:
    """mAP of cosine-similarity ranking (ties by database index), the AP of :mod:`rsir_sdk.metrics`.

    ``center``: subtract it (e.g. the training features' mean) before the cosine."""
    if center is not None:
        q, db = np.asarray(q, np.float64) - center, np.asarray(db, np.float64) - center
    qn, dn = _prep(q, True), _prep(db, True)
    ql = np.asarray(q_labels, dtype=object)
    dl = np.asarray(db_labels, dtype=object)
    aps = []
    for s in range(0, len(qn), 256):
        sim = qn[s : s + 256] @ dn.T
        if leave_one_out:
            rows = np.arange(sim.shape[0])
            sim[rows, rows + s] = -np.inf
        order = np.argsort(-sim, axis=1, kind="stable")
        if leave_one_out:
            order = order[:, : dn.shape[0] - 1]
        if topk:
            order = order[:, :topk]
        rel = dl[order] == ql[s : s + 256, None]
        aps.append(average_precision_of_ranking(rel))
    return float(np.concatenate(aps).mean())


def protocol_map(q_codes: np.ndarray, q_labels: Sequence, db_codes: np.ndarray | None,
                 db_labels: Sequence | None, protocol: str, ties: Ties = "index") -> float:
    """The protocol's metric on packed codes: ``60-40`` = mAP@20 leave-one-out on the query
    side (``db_codes`` ignored), else mAP of the queries over the whole database; ``ties`` as
    in :func:`rsir_sdk.metrics.mean_average_precision`."""
    if protocol == "60-40":
        return archive_map(q_codes, q_labels, ties=ties)
    return float(mean_average_precision(q_codes, q_labels, db_codes, db_labels, ties=ties))  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    from rsir_sdk.splits import split_for

    from .backbones import build_backbone
    from .dataset import open_training_archive
    from .features import Normalize, pooled_features
    from .milan.trainer import MilanConfig

    p = argparse.ArgumentParser(prog="python -m rsir_train.baselines",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--split-file")
    p.add_argument("--protocol", default="80-20", choices=("80-20", "60-40", "50-50"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bits", default="16,32,64")
    p.add_argument("--method", action="append",
                   choices=("itq", "linear", "cosine", "cosine-centered"))
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--cache-dir")
    p.add_argument("--ridge", type=float, default=1.0)
    p.add_argument("--json", help="append records (JSON lines) to this file")
    args = p.parse_args(argv)
    archive = open_training_archive(args.data)
    split = split_for(archive, args.split_file, args.protocol, args.seed)
    bb = build_backbone(args.backbone)
    pre = MilanConfig().resolved_preprocess(bb)  # the features MiLAN's head trains on
    with torch.no_grad():
        feats, _ = pooled_features(bb, Normalize(pre["mean"], pre["std"]), archive, pre,
                                   cache_dir=args.cache_dir)
    x = feats.numpy()
    labels = np.asarray(archive.labels())
    tr, q = split.indices(archive)
    # both sides in the store's tie order, so each figure ranks ties as a Milvus search would
    # (the fits do not depend on the order of their rows: ridge and ITQ see the same sums)
    ids = [it.id for it in archive.items]
    tr, q = in_tie_order(tr, ids), in_tie_order(q, ids)
    metric = "mAP@20 (leave-one-out, query side)" if split.protocol == "60-40" else "mAP"
    for method in args.method or ["itq", "linear", "cosine"]:
        rows: list[dict[str, Any]] = []
        if method.startswith("cosine"):
            # cosine-centered: the features minus the train side's mean (what ITQ starts from)
            center = x[tr].mean(axis=0) if method == "cosine-centered" else None
            value = float_map(x[q], labels[q], x[q] if split.protocol == "60-40" else x[tr],
                              labels[q] if split.protocol == "60-40" else labels[tr],
                              topk=MILAN_TOPK if split.protocol == "60-40" else None,
                              leave_one_out=split.protocol == "60-40", center=center)
            rows.append({"bits": None, "value": value})
        else:
            for bits in (int(b) for b in args.bits.split(",")):
                if method == "itq":
                    model: Any = fit_itq(x[tr], bits, seed=args.seed)
                else:
                    model = fit_linear_hash(x[tr], labels[tr], bits, ridge=args.ridge,
                                            seed=args.seed)
                q_codes, tr_codes = model.codes(x[q]), model.codes(x[tr])
                value = protocol_map(q_codes, labels[q], tr_codes, labels[tr], split.protocol)
                tie_aware = protocol_map(q_codes, labels[q], tr_codes, labels[tr],
                                         split.protocol, ties="expected")
                rows.append({"bits": bits, "value": value, "tie_aware": round(tie_aware, 4)})
        for r in rows:
            rec = {"method": method, "dataset": archive.name, "protocol": split.protocol,
                   "metric": metric, "backbone": args.backbone, "command":
                   "python -m rsir_train.baselines " + " ".join(sys.argv[1:] if argv is None else argv),
                   **r, "value": round(r["value"], 4)}
            ties = f" (tie-aware {r['tie_aware']:.4f})" if "tie_aware" in r else ""
            print(f"{archive.name} {split.protocol} {method:>6} {str(r['bits'] or '-'):>3} bits  "
                  f"{metric}: {r['value']:.4f}{ties}", flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
