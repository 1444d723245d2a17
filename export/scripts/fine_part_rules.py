"""Which part of the split fine code moves under a change, and would a ratio test on some parts
bring more changed copies back first? (issue 20; eurosat ITQ 64's JPEG q70 copies, 0.922 < 0.95).

Why: the default ranking's ratio test (:func:`rsir_sdk.codes.ratio_leader`, ``d1 < 0.8 d2``) runs
on the whole 256-bit split code (64 bits of pooled features, 64 of an 8 x 8 thumbnail ``t8``, 128
of a rotation-averaged 16 x 16 one ``t16r``: :mod:`rsir_train.fine_split`). If one part carried
most of a JPEG copy's movement, a test on the other parts could fire for more copies. This
prints, for the benchmark's draw (``benchmarks/similar.py``: 500 database images, seed 0, and
its changed copies) and up to 500 held-out query images (seed 1, scenes not in the collection):

1. per part, how many bits a changed copy moves from its original (median, 90th percentile),
   and how far the nearest other database image is (median);
2. per rule, rank-1 of the changed copies (rotation: top 10) in the default ranking with that
   rule in place of today's test, ties in the store's digest order, and the share of held-out
   queries for which the rule fires (the cost: a look-alike put first);
3. ``--chroma``: a float check of the idea that the mean colour survives JPEG, from the images:
   rank-1 of the copies by L1 distance of the r, g chromaticities of a g x g grid of cells.

Command (from the repo root; about a minute)::

    python export/scripts/fine_part_rules.py runs/bundles/split-eurosat-itq-64 \\
        --data ../shared/data/eurosat --chroma
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import similar as bench  # noqa: E402
from _similar_queries import CHANGES, digest_rank  # noqa: E402

import rsir_sdk.codes as codes  # noqa: E402
from rsir_sdk import Bundle  # noqa: E402

#: byte ranges of the 256-bit split code's parts (rsir_train.fine_split.part_bits(256))
PARTS = {"pooled": slice(0, 8), "t8": slice(8, 16), "t16r": slice(16, 32)}
Dists = dict[str, np.ndarray]
Rule = Callable[[Dists], np.ndarray]


def part_distances(q_fine: np.ndarray, db_fine: np.ndarray) -> Dists:
    """Hamming distances ``(q, n)`` over the whole fine code (``all``) and over each part."""
    out = {p: codes.hamming_distances(q_fine[:, s], db_fine[:, s]) for p, s in PARTS.items()}
    out["all"] = codes.hamming_distances(q_fine, db_fine)
    return out


RULES: dict[str, Rule] = {
    "today: whole code, 0.8": lambda d: codes.ratio_leader(d["all"], 0.8),
    "whole code, 0.9": lambda d: codes.ratio_leader(d["all"], 0.9),
    "thumbnails (t8 + t16r), 0.8": lambda d: codes.ratio_leader(d["t8"] + d["t16r"], 0.8),
    "t8 alone, 0.6": lambda d: codes.ratio_leader(d["t8"], 0.6),
    "today or t8 alone 0.5": lambda d: codes.ratio_leader(d["all"], 0.8)
    | codes.ratio_leader(d["t8"], 0.5),
    "t8 weighted x3, 0.8": lambda d: codes.ratio_leader(d["pooled"] + 3 * d["t8"] + d["t16r"], 0.8),
}


def rank1(d_ret: np.ndarray, d: Dists, fine_bits: int, rule: Rule, tie: np.ndarray,
          top: int) -> float:
    """Share of rows whose own item (row i, item i) is in the first ``top`` of the default
    ranking with ``rule`` deciding the leader (near-duplicates within the radius stay)."""
    span = np.int64(fine_bits + 1)
    key = d_ret.astype(np.int64) * span + d["all"]
    near = (d["all"] <= codes.near_duplicate_radius(fine_bits)) | rule(d)
    key = np.where(near, d["all"] - span, key)
    hits = [i in np.lexsort((tie, key[i]))[:top] for i in range(len(key))]
    return float(np.mean(hits))


def report_parts(case: bench.Case) -> None:
    own = np.arange(len(case.ids))
    print("| change | part | bits | moved, median | moved, p90 | nearest other, median |")
    print("|---|---|---|---|---|---|")
    for v in bench.VARIANTS:
        d = part_distances(case.queries[v].fine, case.db.fine)
        for p, s in PARTS.items():
            moved = d[p][own, own]
            other = d[p].astype(float)
            other[own, own] = np.inf
            print(f"| {v} | {p} | {(s.stop - s.start) * 8} | {np.median(moved):.0f} | "
                  f"{np.percentile(moved, 90):.0f} | {np.median(other.min(axis=1)):.0f} |")


def report_rules(case: bench.Case, held: Dists) -> None:
    tie = digest_rank(case.ids)
    bits = case.db.fine.shape[1] * 8
    names = list(bench.VARIANTS)
    print("\n| rule | " + " | ".join(names) + " | fires, held-out |")
    print("|---|" + "---|" * (len(names) + 1))
    dists = {v: (codes.hamming_distances(case.queries[v].codes, case.db.codes),
                 part_distances(case.queries[v].fine, case.db.fine)) for v in names}
    for name, rule in RULES.items():
        cells = [rank1(*dists[v], bits, rule, tie, 10 if v == "rot90" else 1) for v in names]
        fires = float(rule(held).any(axis=1).mean())
        print(f"| {name} | " + " | ".join(f"{c:.3f}" for c in cells) + f" | {fires:.3f} |")


def chromaticity(rgb: np.ndarray, grid: int) -> np.ndarray:
    """r and g chromaticity (r / (r + g + b), g / ...) of each cell of a ``grid x grid`` split."""
    x = rgb.astype(np.float64)
    h, w = x.shape[:2]
    cells = np.array([x[i * h // grid:(i + 1) * h // grid, j * w // grid:(j + 1) * w // grid]
                      .reshape(-1, 3).mean(axis=0) for i in range(grid) for j in range(grid)])
    return (cells / (cells.sum(axis=1, keepdims=True) + 1e-6))[:, :2].ravel()


def report_chroma(case: bench.Case) -> None:
    from PIL import Image

    images = [np.asarray(Image.open(p).convert("RGB")) for p in case.paths]
    own = np.arange(len(images))
    print("\n| grid | change | rank-1 by chromaticity (float L1) | ratio < 0.8 | per class, lowest |")
    print("|---|---|---|---|---|")
    for grid in (1, 2):
        db = np.array([chromaticity(x, grid) for x in images])
        for v in ("jpeg70", "bright110", "crop90"):
            q = np.array([chromaticity(CHANGES[v](x), grid) for x in images])
            d = np.abs(q[:, None, :] - db[None]).sum(axis=-1)
            first = d.argmin(axis=1) == own
            other = d.copy()
            other[own, own] = np.inf
            ratio = d[own, own] / np.maximum(other.min(axis=1), 1e-12)
            labels = np.array(case.labels)
            worst = min((first[labels == c].mean(), c) for c in set(case.labels))
            print(f"| {grid} | {v} | {first.mean():.3f} | {np.mean(ratio < 0.8):.3f} | "
                  f"{worst[1]} {worst[0]:.3f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path, help="a bundle with the 256-bit split fine code")
    ap.add_argument("--data", type=Path, required=True, help="the archive folder")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--chroma", action="store_true", help="also the float chromaticity check")
    args = ap.parse_args(argv)
    bundle = Bundle.load(args.bundle)
    if bundle.fine_bits != 256 or bundle.manifest.get("fine_code", {}).get("kind") != "split":
        raise SystemExit(f"{args.bundle} has no 256-bit split fine code (--fine-code split:256)")
    case = bench.draw_case(bundle, args.data, args.n, 0)
    enc = bench.encode_case(case, 1, lambda m: None)
    ids = list(bundle.split().query_ids)
    pick = np.random.default_rng(1).choice(len(ids), size=min(args.n, len(ids)), replace=False)
    root = bench.archive_root(bundle, args.data, ids[0])
    held = enc.encode_both([str(root / ids[i]) for i in sorted(pick)]).fine
    report_parts(case)
    report_rules(case, part_distances(held, case.db.fine))
    if args.chroma:
        report_chroma(case)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
