"""Would a selecting AHCL run have done better exporting a fold network than its refit? (issue 21)

Why: a selecting run (:mod:`rsir_train.ahcl.selection`) validates its candidates on three folds
of the train side, then refits the choice on the whole train side, and no validation sees that
refit. On eurosat at 60 images a class, draw 2, 32 bits, the fold networks read 0.94 on the
queries (the diagnostic ``mAP(query)=`` of the log) and the refit 0.89. This script asks the
question the fix depends on: for each fold of the chosen candidate, its validated network (the
checkpoint's best point) encodes the queries and the *whole* train side, and its mAP (queries
by sign(u) against that database, in memory, ties by index) is printed beside the exported
refit's own figure read from the bundle's manifest (``map_query_vs_learned_db``, the same
measure). A diagnostic on the queries: nothing in the library is chosen on it. Result
(docs/results.md, the twentieth session's run): a fold network would have won on that row and
lost 0.028-0.038 where the refit was ahead, so exporting one is not the fix::

    python export/scripts/fold_networks.py runs/bundles/small-eurosat-60-s2-sel-32 \\
        --data runs/data/eurosat-60-s2 --split-file runs/splits/eurosat-60-s2-80-20-seed0.json

The fold checkpoints are read from ``<bundle>.work/select-<chosen>-f<k>/`` (``--work-dir``
else), as a selecting ``rsir train ahcl --out <bundle>`` leaves them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from refit_rule import selecting_run  # this folder

from rsir_train.ahcl.trainer import _map, _prepare, encode
from rsir_train.trainer import CHECKPOINT_FILE


def fold_rows(args: argparse.Namespace,
              work_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The bundle's training record and one row a fold of the chosen candidate: its best outer, validation mAP and query mAP
    against the whole train side encoded by its network. The configuration, archive and split
    are the bundle's (:func:`refit_rule.selecting_run`: every recorded field)."""
    training, config, archive, split = selecting_run(args)
    chosen = training["selection"]["chosen"]
    ctx, config = _prepare(archive, split, config, lambda *a, **k: None)
    rows = []
    for fold in range(int(training["selection"]["folds"])):
        path = work_dir / f"select-{chosen}-f{fold}" / CHECKPOINT_FILE
        best = torch.load(path, map_location="cpu", weights_only=False)["best"]
        ctx.net.load_state_dict(best["net"])
        net = ctx.net.to(memory_format=torch.contiguous_format)
        net.eval()
        queries = encode(net, ctx.q_in, ctx.device, config.batch_size)
        database = encode(net, ctx.db_in, ctx.device, config.batch_size)
        rows.append({"fold": fold, "candidate": chosen, "best_outer": best["outer"],
                     "val_map": best["map"],
                     "map_query": _map(queries, ctx.y_q, database, ctx.y_db)})
    return training, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="a finished selecting AHCL bundle")
    parser.add_argument("--data", required=True, help="the archive it trained on")
    parser.add_argument("--split-file", required=True, help="its split file")
    parser.add_argument("--work-dir", type=Path, help="its work dir (default: <bundle>.work)")
    parser.add_argument("--cache-dir", default="runs/cache", help="the feature cache")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bundle = Path(args.bundle)
    work_dir = args.work_dir or bundle.with_name(bundle.name + ".work")
    training, rows = fold_rows(args, work_dir)
    for row in rows:
        print(f"{row['candidate']} fold {row['fold']}: best outer {row['best_outer']}, "
              f"validation {row['val_map']:.4f}, queries against the whole train side "
              f"{row['map_query']:.4f}")
    metrics = training["metrics"]
    print(f"fold networks' mean {np.mean([r['map_query'] for r in rows]):.4f}; the exported "
          f"refit {metrics['map_query_vs_learned_db']:.4f} (its learned database codes)")


if __name__ == "__main__":
    main()
