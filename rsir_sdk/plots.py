"""Pictures of retrieval quality: the precision-recall curve and the AP of each class.

Why: one mAP figure hides where a model fails (a class it confuses, short codes that tie). This
draws, for one or several bundles side by side, the Hamming-radius precision-recall curve
(:func:`rsir_sdk.metrics.pr_curve`) and the mean AP of each class's queries
(:func:`rsir_sdk.metrics.average_precisions`), from the very codes ``rsir eval`` ranks
(:class:`rsir_sdk.evaluate.EvalCodes`: the query side encoded by the bundle's ONNX encoder,
the database its learned codes (AHCL) or encoded too, leave-one-out on the query side for
MiLAN-protocol bundles); ``rsir eval --plot`` encodes each image once for both. The figures
are the exact in-memory ranking's (ties in the store's order), which ``rsir eval`` checks
Milvus against.

matplotlib is imported only when drawing (``pip install 'rsir-sdk[plot]'``).

>>> from rsir_sdk.plots import evaluation_curves, plot_curves
>>> curves = [evaluation_curves(b, data="/data/nwpu12") for b in ("b16", "b64")]  # doctest: +SKIP
>>> plot_curves(curves, "pr.png", title="nwpu12")                                  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from . import metrics
from .bundle import Bundle
from .errors import RsirError
from .evaluate import EvalCodes, EvalOptions, evaluation_codes

log = logging.getLogger(__name__)

__all__ = ["Curves", "PlotError", "curves_of", "evaluation_curves", "plot_curves"]


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


def curves_of(codes: EvalCodes, label: str | None = None) -> Curves:
    """The curves of an evaluation's codes (:func:`rsir_sdk.evaluate.evaluation_codes`), in
    memory: nothing is encoded again, ties ranked in the store's order (the database ids go to
    the metrics), so the mAP is ``rsir eval``'s reference mAP over the whole database."""
    args = (codes.q_codes, codes.q_labels, codes.db_codes, codes.db_labels)
    kw = codes.metric_args()
    ap = metrics.average_precisions(*args, **kw)
    pr = metrics.pr_curve(*args, exclude_self=codes.leave_one_out,
                          query_indices=codes.query_indices)
    q_labels = [str(x) for x in codes.q_labels]
    labels = np.asarray(q_labels, dtype=object)
    class_ap = {c: float(ap[labels == c].mean()) for c in sorted(set(q_labels))}
    b = codes.bundle
    name = label or f"{b.method} {b.bits} bits"
    return Curves(name, pr, class_ap, float(ap.mean()), len(codes.q_ids), len(codes.db_ids),
                  codes.database, codes.leave_one_out)


def evaluation_curves(
    bundle: Bundle | str | os.PathLike,
    data: str | os.PathLike | None = None,
    *,
    options: EvalOptions | None = None,
    label: str | None = None,
) -> Curves:
    """Encode the bundle's split as ``rsir eval`` does (:func:`rsir_sdk.evaluate.evaluation_codes`)
    and compute its curves in memory (:func:`curves_of`).

    ``data``: the archive (default: the one the bundle records); ``options``: which side is the
    database (``"auto"``, ``"train"``: AHCL protocol, ``"query"``: MiLAN protocol,
    leave-one-out), raster rule, workers, batch size. Images that cannot be read are left out.
    """
    return curves_of(evaluation_codes(bundle, data, options), label)


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
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(record=True) as caught:  # matplotlib's own, as one line
        warnings.simplefilter("always")
        fig.tight_layout()
        fig.savefig(out, dpi=dpi)
    plt.close(fig)
    for w in caught:  # the others as they were
        if "Glyph" not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if any("Glyph" in str(w.message) for w in caught):
        log.warning("the plot's font has no glyphs for some class names (drawn as boxes in "
                    "%s): matplotlib's DejaVu Sans lacks e.g. CJK; the figures are unaffected",
                    out)
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
    options = EvalOptions(database=args.database)
    curves = [evaluation_curves(b, args.data, options=options, label=lab)
              for b, lab in zip(args.bundles, labels)]
    print(plot_curves(curves, args.out, title=args.title))
    for cv in curves:
        print(f"{cv.label}: mAP {cv.mean_ap:.4f} ({cv.n_queries} queries, {cv.n_database} "
              f"{cv.database} database codes)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
