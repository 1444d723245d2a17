"""The ratio test's factor (issue 20): rank-1 of changed copies in the default ranking, and how
often the test fires for a query whose scene is not in the collection, for several factors.

Why: the default ranking puts the nearest item by fine code first when it is clearly nearer than
the runner-up (``d1 < NEAR_RATIO * d2``, :func:`rsir_sdk.codes.ratio_leader`). A larger factor
brings more re-encoded and cropped copies back first; it also fires more often for a query whose
scene is not stored, putting a look-alike ahead of the query's retrieval group. This prints
both for each factor, with the draw of ``benchmarks/similar.py`` (500 database images from the
bundle's database side, seed 0; its changed copies) and up to 500 held-out query images (seed 1),
all ranked in numpy by :func:`rsir_sdk.codes.fine_ranking_key` (the store's rule; the benchmark
checks Milvus against it; a bundle with a same-scene test, ``--fine-code layout``, is tested on
its weighted parts, :func:`rsir_sdk.codes.scene_leader`; the factor then replaces its tests'
factors, or with ``--test N`` test N's alone, and 0 drops them). Command (from the repo root)::

    python export/scripts/ratio_test_sweep.py --data ../shared/data/eurosat \\
        runs/bundles/split-eurosat-itq-64 runs/bundles/sim-eurosat-itq-64 [--json out.json]

``--factors 0.8,0.9,0.94`` sweeps other factors (``--draw-seed 1``: on another draw, where a
factor may be chosen; the layout code's rotation test was chosen with ``--draw-seed 1 --test 2
--factors 0,0.5,0.6,0.7,0.8``); ``--misses jpeg70`` also lists, per bundle,
the changed copies that the appearance mode brings back first and the default ranking does not:
the fine distance to the original (d1) and to the runner-up (d2), the original's retrieval
distance and the smallest retrieval distance in the collection. Why: it says whether a miss is
the rule's (a factor or another rule would catch it) or the fine code's (d1 close to d2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import similar as bench  # noqa: E402
from _similar_queries import digest_rank  # noqa: E402

import rsir_sdk.codes as codes  # noqa: E402
from rsir_sdk import Bundle  # noqa: E402

FACTORS = (0.0, 0.7, 0.75, 0.8, 0.85, 0.9)


def distinct_fires(case: bench.Case, enc: Any, data: Path, n: int,
                   factors: tuple[float, ...], which: int | None = None) -> dict[float, float]:
    """Per factor, the share of held-out queries (scenes not in the collection) whose nearest
    database item by fine code passes the ratio test."""
    ids = list(case.bundle.split().query_ids)
    pick = np.random.default_rng(1).choice(len(ids), size=min(n, len(ids)), replace=False)
    root = bench.archive_root(case.bundle, data, ids[0])
    fine = enc.encode_both([str(root / ids[i]) for i in sorted(pick)]).fine
    d = codes.hamming_distances(fine, case.stored()[1])
    in_tie = np.argsort(digest_rank(case.ids))  # the store's tie order (the tests' candidates)
    out, saved = {}, codes.NEAR_RATIO
    try:
        for f in factors:
            codes.NEAR_RATIO = f
            test = tested(case.bundle, f, which).scene_test
            if test is None:
                out[f] = float(codes.ratio_leader(d, f).any(axis=1).mean())
                continue
            t = test.distances(fine, case.stored()[1])[..., in_tie]
            out[f] = float(test.leader(t, d[:, in_tie]).any(axis=1).mean())
    finally:
        codes.NEAR_RATIO = saved
    return out


def tested(bundle: Bundle, factor: float, which: int | None) -> Bundle:
    """``bundle`` with its same-scene tests' factor set to ``factor`` (test ``which``, 1-based,
    or all of them); factor 0 drops the test(s). A bundle without tests is returned as it is
    (its whole-code test reads :data:`rsir_sdk.codes.NEAR_RATIO`, which the sweep sets)."""
    test = bundle.scene_test
    if test is None:
        return bundle
    n = len(test.tests)
    ratios = list(test.ratios or [codes.NEAR_RATIO] * n)
    chosen = range(n) if which is None else [which - 1]
    for i in chosen:
        ratios[i] = factor
    keep = [i for i in range(n) if ratios[i] > 0]
    new = (codes.SceneTest([test.tests[i] for i in keep], [ratios[i] for i in keep])
           if keep else None)
    return dataclasses.replace(bundle, scene_test=new)


def sweep(case: bench.Case, factors: tuple[float, ...],
          which: int | None = None) -> dict[float, dict[str, float]]:
    """Per factor, the benchmark's rank-1 figures of the default ranking (numpy)."""
    out = {}
    saved = codes.NEAR_RATIO
    try:
        for f in factors:
            codes.NEAR_RATIO = f
            c = dataclasses.replace(case, bundle=tested(case.bundle, f, which))
            tops = {v: bench.memory_topk(c, v, "default", 11) for v in bench.VARIANTS}
            out[f] = bench.figures(c, tops, {})
    finally:
        codes.NEAR_RATIO = saved
    return out


def misses(case: bench.Case, variant: str) -> list[dict[str, Any]]:
    """The copies of ``variant`` whose original is the appearance mode's rank 1 but not the
    default ranking's (both in the store's order, :func:`bench.memory_topk`): their ids, labels
    and distances."""
    by_fine = bench.memory_topk(case, variant, "appearance", 2)
    default = bench.memory_topk(case, variant, "default", 1)
    q, (codes_db, fine_db) = case.queries[variant], case.stored()
    pos = {x: j for j, x in enumerate(case.ids)}
    out = []
    for i, (near, first) in enumerate(zip(by_fine, default)):
        if near[0] != case.ids[i] or first[0] == case.ids[i]:
            continue
        d_ret = codes.hamming_distances(q.codes[i : i + 1], codes_db)[0]
        d_fine = codes.hamming_distances(q.fine[i : i + 1], fine_db)[0]
        out.append({"id": case.ids[i], "label": case.labels[i], "d1": int(d_fine[i]),
                    "d2": int(d_fine[pos[near[1]]]), "retrieval": int(d_ret[i]),
                    "retrieval_min": int(d_ret.min())})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, required=True, help="the archive folder")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--factors", default=",".join(str(f) for f in FACTORS),
                    help="comma-separated ratio-test factors (default %(default)s)")
    ap.add_argument("--draw-seed", type=int, default=0,
                    help="the database draw (0: the benchmark's; choose a factor on another)")
    ap.add_argument("--test", type=int, default=None,
                    help="a bundle with same-scene tests (--fine-code layout): sweep the factor "
                         "of this test only (1-based; the others keep theirs); default: all")
    ap.add_argument("--misses", choices=list(bench.VARIANTS), default=None,
                    help="also list this variant's copies the default ranking misses and the "
                         "appearance mode finds, with their distances")
    args = ap.parse_args(argv)
    factors = tuple(float(f) for f in args.factors.split(","))
    results: dict[str, Any] = {}
    print("| bundle | factor | same | JPEG q70 | crop 90% | brightness | rot 90 (top 10) "
          "| held-out queries it fires for |")
    print("|---|---|---|---|---|---|---|---|")
    for path in args.bundles:
        case = bench.draw_case(Bundle.load(path), args.data, args.n, args.draw_seed)
        enc = bench.encode_case(case, 1, lambda m: None)
        fires = distinct_fires(case, enc, args.data, args.n, factors, args.test)
        for c in [case] + [x for x in [bench.learned_case(case)] if x is not None]:
            rows = sweep(c, factors, args.test)
            name = f"{path.name}{' learned' if c.learned is not None else ''}"
            results[name] = {"rank1": rows, "fires": fires, "fine_bits": case.bundle.fine_bits}
            for f in factors:
                figs = " | ".join(f"{rows[f][v]:.3f}" for v in bench.VARIANTS)
                print(f"| {name} | {f} | {figs} | {fires[f]:.3f} |", flush=True)
            if args.misses:
                missed = misses(c, args.misses)
                results[name]["misses"] = {args.misses: missed}
                for m in missed:
                    print(f"  {name} {args.misses} miss {m['id']} ({m['label']}): "
                          f"d1 {m['d1']} d2 {m['d2']} (ratio {m['d1'] / max(m['d2'], 1):.3f}), retrieval distance "
                          f"{m['retrieval']} (smallest {m['retrieval_min']})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
