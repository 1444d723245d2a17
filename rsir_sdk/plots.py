"""Pictures of retrieval quality: the precision-recall curve and the AP of each class.

Why: one mAP figure hides where a model fails (a class it confuses, short codes that tie). This
draws, for one or several bundles side by side, the Hamming-radius precision-recall curve
(:func:`rsir_sdk.metrics.pr_curve`) and the mean AP of each class's queries
(:func:`rsir_sdk.metrics.average_precisions`), on the same split, database and codes as
``rsir eval`` (:mod:`rsir_sdk.evaluate`): the query side encoded by the bundle's ONNX encoder,
the database its learned codes (AHCL) or encoded too, leave-one-out on the query side for
MiLAN-protocol bundles. The figures are the exact in-memory ranking's, which ``rsir eval``
checks Milvus against.

matplotlib is imported only when drawing (``pip install 'rsir-sdk[plot]'``).

>>> from rsir_sdk.plots import evaluation_curves, plot_curves
>>> curves = [evaluation_curves(b, data="/data/nwpu12") for b in ("b16", "b64")]  # doctest: +SKIP
>>> plot_curves(curves, "pr.png", title="nwpu12")                                  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import metrics
from .archive import open_archive
from .bundle import Bundle
from .encoder import Encoder
from .errors import EvaluationError, RsirError
from .images import RuleLike
from .ingest import iter_codes
from .store import tie_order

__all__ = ["Curves", "PlotError", "evaluation_curves", "plot_curves"]


class PlotError(RsirError):
    """Drawing needs matplotlib (the ``plot`` extra), or the curves are empty."""


@dataclass
class Curves:
    """What one bundle's picture shows: its PR curve, per-class AP and mAP, and a label."""

    label: str
    pr: metrics.PRCurve
    class_ap: dict[str, float]
    mean_ap: float
    n_queries: int
    n_database: int
    database: str  # "learned" | "encoded"
    leave_one_out: bool


def evaluation_curves(
    bundle: Bundle | str | os.PathLike,
    data: str | os.PathLike | None = None,
    *,
    database: str = "auto",
    label: str | None = None,
    rule: RuleLike = None,
    batch_size: int = 32,
    workers: int | None = None,
) -> Curves:
    """Encode the bundle's split as ``rsir eval`` does and compute its curves (in memory).

    ``data``: the archive (default: the one the bundle records); ``database``: ``"auto"``,
    ``"train"`` (AHCL protocol) or ``"query"`` (MiLAN protocol, leave-one-out). Images that
    cannot be read are left out.
    """
    b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    sp = b.split()
    protocol = str((b.manifest.get("training") or {}).get("protocol") or sp.protocol)
    if database == "auto":
        database = "query" if protocol.lower().startswith("milan") else "train"
    if database not in ("train", "query"):
        raise EvaluationError(f"database must be 'auto', 'train' or 'query', got {database!r}")
    root = data if data is not None else b.archive_source
    if root is None or not Path(root).exists():
        raise EvaluationError(f"give the archive the bundle's split belongs to (data=, --data): {root}")
    by_id = open_archive(root, label_from="top").by_id()
    enc = Encoder(b, raster_rule=rule, batch_size=batch_size)

    def encode(ids: list[str]) -> tuple[list[str], np.ndarray]:
        items = [by_id[i] for i in ids if i in by_id]
        kept: list[str] = []
        parts = []
        for batch in iter_codes(enc, items, workers=workers, batch_size=batch_size,
                                on_failure=lambda f: None):
            kept += [str(it.label) for it in batch.items]
            parts.append(batch.codes)
        return kept, (np.concatenate(parts) if parts else np.zeros((0, b.bits // 8), np.uint8))

    loo = database == "query"
    if database == "train" and b.has_database:
        db = b.load_database()
        order = tie_order(db.ids)  # the store's tie order, as rsir eval
        db_labels = [str(db.labels[i]) for i in order]
        db_codes, kind = db.codes[order], "learned"
    else:
        ids = list(sp.query_ids if loo else sp.train_ids)
        db_labels, db_codes = encode([ids[i] for i in tie_order(ids)])
        kind = "encoded"
    if loo:
        q_labels, q_codes = db_labels, db_codes
    else:
        q_labels, q_codes = encode(sorted(sp.query_ids))
    if not len(q_codes) or not len(db_codes):
        raise EvaluationError("no query or database image could be encoded")
    kw: dict[str, Any] = {"exclude_self": loo}
    if loo:
        kw["query_indices"] = np.arange(len(q_codes))
    ap = metrics.average_precisions(q_codes, q_labels, db_codes, db_labels, **kw)
    pr = metrics.pr_curve(q_codes, q_labels, db_codes, db_labels, **kw)
    labels = np.asarray(q_labels, dtype=object)
    class_ap = {str(c): float(ap[labels == c].mean()) for c in sorted(set(q_labels))}
    name = label or f"{b.method} {b.bits} bits"
    return Curves(name, pr, class_ap, float(ap.mean()), len(q_codes), len(db_codes), kind, loo)


def plot_curves(curves: Sequence[Curves], out: str | os.PathLike, *, title: str | None = None,
                dpi: int = 110) -> Path:
    """Draw the PR curves (left) and per-class AP (right) of ``curves`` side by side; write ``out``
    (PNG, or any format matplotlib knows by the suffix). Returns the path."""
    if not curves:
        raise PlotError("nothing to plot")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError("plots need matplotlib: pip install 'rsir-sdk[plot]'") from None
    classes = sorted({c for cv in curves for c in cv.class_ap})
    fig, (ax_pr, ax_ap) = plt.subplots(
        1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1, max(1.2, len(classes) / 8)]})
    for cv in curves:
        ax_pr.plot(cv.pr.recall, cv.pr.precision, marker=".", markersize=3,
                   label=f"{cv.label} (mAP {cv.mean_ap:.3f})")
    ax_pr.set_xlabel("recall (Hamming radius 0 .. bits)")
    ax_pr.set_ylabel("precision")
    ax_pr.set_xlim(0, 1.02)
    ax_pr.set_ylim(0, 1.02)
    ax_pr.grid(alpha=0.3)
    ax_pr.legend(fontsize=8, loc="lower left")
    ax_pr.set_title("precision-recall")
    width = 0.8 / len(curves)
    x = np.arange(len(classes))
    for i, cv in enumerate(curves):
        ax_ap.bar(x + (i - (len(curves) - 1) / 2) * width,
                  [cv.class_ap.get(c, np.nan) for c in classes], width, label=cv.label)
    ax_ap.set_xticks(x)
    ax_ap.set_xticklabels(classes, rotation=45, ha="right", fontsize=8)
    lo = min(min(cv.class_ap.values()) for cv in curves)
    ax_ap.set_ylim(max(0.0, min(lo - 0.05, 0.9)), 1.0)
    ax_ap.set_ylabel("AP of the class's queries")
    ax_ap.grid(axis="y", alpha=0.3)
    ax_ap.set_title("per-class AP")
    if len(curves) > 1:
        ax_ap.legend(fontsize=8, loc="lower left")
    first = curves[0]
    db = ("leave-one-out on the query side" if first.leave_one_out else
          f"{first.n_queries} queries vs {first.n_database} {first.database} database codes")
    fig.suptitle(f"{title + ': ' if title else ''}{db}", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rsir_sdk.plots OUT.png BUNDLE... [--data DIR] [--title T]``: several
    bundles' curves side by side in one picture (each labelled ``<method> <bits> bits``)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m rsir_sdk.plots", description=main.__doc__)
    p.add_argument("out")
    p.add_argument("bundles", nargs="+")
    p.add_argument("--data", help="the archive (default: the one each bundle records)")
    p.add_argument("--database", choices=["auto", "train", "query"], default="auto")
    p.add_argument("--title")
    p.add_argument("--label", action="append", help="one per bundle, in order")
    args = p.parse_args(argv)
    labels = args.label or [None] * len(args.bundles)
    if len(labels) != len(args.bundles):
        p.error("give one --label per bundle, or none")
    curves = [evaluation_curves(b, args.data, database=args.database, label=lab)
              for b, lab in zip(args.bundles, labels)]
    print(plot_curves(curves, args.out, title=args.title))
    for cv in curves:
        print(f"{cv.label}: mAP {cv.mean_ap:.4f} ({cv.n_queries} queries, {cv.n_database} "
              f"{cv.database} database codes)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
