"""Would a selecting AHCL run export a better refit if it stopped later? (issue 21, a lead)

Why: a selecting run (:mod:`rsir_train.ahcl.selection`) refits its chosen schedule on the whole
train side and stops at the best point of the candidate's fold-mean validation curve. On
nwpu12 at 60 images a class, draw 2, 64 bits, that point (outer 10 of the authors' schedule)
came one lr step before the queries settled (the schedule drops lr at 11; the fold-mean curve
stayed within 0.005 of its best from 12 to 22). This script measures the other endpoint rule
named in the twenty-second session's note: the *latest* point of the chosen candidate's
fold-mean curve within ``TOLERANCE`` of its best. Choice among candidates is unchanged.

It runs the ordinary command line (``python -m rsir_train train ahcl ...``) with that one
choice replaced in this process (``rsir_train.ahcl.selection._candidate``'s ``best_outer``),
after copying the finished fold checkpoints of an earlier selecting run, so the folds are
resumed, not retrained, and only the refit runs (the refit's checkpoint folder is named by its
outer count, so it never resumes the earlier refit). The library's default is not changed by
it: that needs all twelve small-archive draws (docs/results.md)::

    python export/scripts/refit_endpoint.py 0.005 runs/bundles/small-nwpu12-60-s2-sel-64 -- \\
        train ahcl --data runs/data/nwpu12-60-s2 --bits 64 \\
        --out runs/bundles/late0.005-nwpu12-60-s2-sel-64 \\
        --split-file runs/splits/nwpu12-60-s2-80-20-seed0.json --eval-every 4 \\
        --cache-dir runs/cache --eval --results runs/late_results_nwpu12-60-s2.json \\
        --threads 1 --resume

The command must be the earlier run's (same data, split, bits, seed) with another ``--out``;
``--eval-every 4`` prints the refit's query mAP every 4 outer iterations, which must equal the
earlier refit's up to its stop (the same run, continued).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import rsir_train.ahcl.selection as selection
from rsir_train.cli import main


def latest_within(curve: list[list[float]], best: float, tolerance: float) -> int:
    """The latest outer iteration of ``curve`` (``[[outer, mAP], ...]``) within ``tolerance``
    of ``best``."""
    return max(int(o) for o, v in curve if v >= best - tolerance - 1e-9)


def patch(tolerance: float) -> None:
    """Make this process's selections refit to :func:`latest_within` the best point."""
    original = selection._candidate

    def candidate(*args: Any, **kwargs: Any) -> Any:
        summary, history, devices = original(*args, **kwargs)
        late = latest_within(summary["val_curve"], summary["best_val_map"], tolerance)
        print(f"refit endpoint: {summary['name']} best {summary['best_val_map']} at outer "
              f"{summary['best_outer']}; latest within {tolerance}: {late}", flush=True)
        summary["best_outer"] = late
        return summary, history, devices

    selection._candidate = candidate


def copy_folds(earlier: Path, out: Path) -> None:
    """The earlier run's finished fold checkpoints into ``<out>.work`` (kept if there)."""
    work = Path(f"{out}.work")
    for fold in sorted(Path(f"{earlier}.work").glob("select-*")):
        if not (work / fold.name).exists():
            shutil.copytree(fold, work / fold.name)


def run(argv: list[str]) -> int:
    """``TOLERANCE EARLIER_BUNDLE -- <rsir_train arguments with --out>``."""
    if len(argv) < 4 or argv[2] != "--" or "--out" not in argv:
        print(__doc__, file=sys.stderr)
        return 2
    tolerance, earlier, command = float(argv[0]), Path(argv[1]), argv[3:]
    copy_folds(earlier, Path(command[command.index("--out") + 1]))
    patch(tolerance)
    return main(command)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
