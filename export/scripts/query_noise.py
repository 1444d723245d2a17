"""How much of a small-archive difference the queries can resolve: a paired bootstrap (issue 21).

Why: issue 21's checks compare two bundles trained on the same split (the defaults against
``--schedule authors``, 64 bits against 16 bits) within 0.005, but a 30-images-a-class draw of
nwpu12 has 72 queries: one query's AP moving by 0.5 moves the mAP by 0.007. This prints each
bundle's mAP as the store ranks it (the figure ``--eval`` records through Milvus, computed in
memory with the store's rule: :func:`rsir_sdk.eval_codes.evaluation_codes`) and, for every
pair, the mean difference of the per-query APs (the same queries on both sides) with a 95 %
interval from 10,000 bootstrap resamples of the queries (seeded), and how many queries
differ at all::

    python export/scripts/query_noise.py runs/bundles/small-nwpu12-30-s0-sel-16 \\
        runs/bundles/exp-lam-nwpu12-30-s0-64 --data runs/data/nwpu12-30-s0

Every bundle must carry the same split (same query ids); numpy and onnxruntime only.
"""

from __future__ import annotations

import argparse
from itertools import combinations
from pathlib import Path

import numpy as np

from rsir_sdk import Bundle
from rsir_sdk.errors import RsirError
from rsir_sdk.eval_codes import evaluation_codes
from rsir_sdk.metrics import average_precisions

RESAMPLES = 10_000


def per_query_ap(bundle: Path, data: Path) -> tuple[list[str], np.ndarray]:
    """The query ids and each query's AP over the whole database, ranked as the store ranks."""
    codes = evaluation_codes(Bundle.load(bundle), data)
    aps = average_precisions(codes.q_codes, codes.q_labels, codes.db_codes, codes.db_labels,
                             **codes.metric_args())
    return codes.q_ids, aps


def paired_interval(diff: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """The 2.5 and 97.5 percentiles of the mean of ``diff`` over resampled queries."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(diff), size=(RESAMPLES, len(diff)))
    means = diff[picks].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("bundles", type=Path, nargs="+", help="bundles trained on one split")
    ap.add_argument("--data", type=Path, required=True, help="the archive of their split")
    args = ap.parse_args(argv)
    runs = {}
    for path in args.bundles:
        try:
            ids, aps = per_query_ap(path, args.data)
        except RsirError as exc:  # a missing bundle or split, unreadable images: one line
            raise SystemExit(f"{path}: {exc}") from None
        runs[path.name] = dict(zip(ids, aps))
        print(f"{path.name}: mAP {aps.mean():.4f} over {len(aps)} queries")
    print("| A | B | mean AP(B) − AP(A) | 95 % interval (paired bootstrap) | queries that differ |")
    print("|---|---|---|---|---|")
    for a, b in combinations(runs, 2):
        if runs[a].keys() != runs[b].keys():
            raise SystemExit(f"{a} and {b} have different queries: train them on one split")
        order = sorted(runs[a])
        diff = np.array([runs[b][q] - runs[a][q] for q in order])
        low, high = paired_interval(diff)
        print(f"| {a} | {b} | {diff.mean():+.4f} | [{low:+.4f}, {high:+.4f}] | "
              f"{int((np.abs(diff) > 1e-9).sum())} of {len(diff)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
