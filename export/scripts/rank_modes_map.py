"""Class-level mAP of a bundle under each ranking the store could use (issue 20, numpy only).

Why: eurosat ITQ 64's JPEG q70 copies come back first 0.922 of the time in the default ranking
(retrieval distance first, then the fine code; the bar is 0.95) and 0.956 in the appearance
mode (the fine code alone). A label-free bundle has no classes to keep, so its default ranking
could be the appearance ranking; this measures what that costs the class-level figure: the
bundle's query side against its train side (the AHCL protocol, mAP over the whole database,
P@10), ranked by the retrieval code alone, the default rule (:func:`rsir_sdk.codes.fine_ranking_key`),
the fine code alone, and the sum of the two distances. Ties by database index.

    python export/scripts/rank_modes_map.py runs/bundles/split-eurosat-itq-64 --data ../shared/data/eurosat

Finding (docs/similar.md, "A colour-layout part"): on eurosat ITQ 64 the fine code alone gives
mAP 0.1953 against 0.5543 for the default ranking, so the appearance mode stays a mode.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import rsir_sdk.codes as codes
from rsir_sdk import Bundle
from rsir_sdk.archive import open_archive
from rsir_sdk.encoder import Encoder
from rsir_sdk.metrics import average_precision_of_ranking


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path, help="a bundle with a fine code")
    ap.add_argument("--data", type=Path, required=True, help="the archive of its split")
    args = ap.parse_args(argv)
    bundle = Bundle.load(args.bundle)
    split, enc = bundle.split(), Encoder(bundle)
    items = open_archive(args.data, label_from="top").by_id()  # the split's ids, as training read them

    def side(ids: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        e = enc.encode_both([str(items[i].file) for i in ids])
        return e.codes, e.fine, np.array([items[i].label for i in ids])

    qc, qf, ql = side(list(split.query_ids))
    dc, df, dl = side(list(split.train_ids))
    d, fd = codes.hamming_distances(qc, dc), codes.hamming_distances(qf, df)
    keys = {"retrieval code alone": d.astype(np.int64),
            "default (retrieval, then fine)": codes.fine_ranking_key(d, fd, df.shape[1] * 8),
            "fine code alone (appearance)": fd.astype(np.int64),
            "sum of the two distances": fd.astype(np.int64) + d}
    print(f"{args.bundle}: {len(ql)} queries, {len(dl)} database images")
    for name, key in keys.items():
        rel = dl[np.argsort(key, axis=1, kind="stable")] == ql[:, None]
        print(f"  {name:32s} mAP {average_precision_of_ranking(rel).mean():.4f}  "
              f"P@10 {rel[:, :10].mean():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
