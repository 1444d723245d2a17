"""The frozen-feature cache written batch by batch (resumable) against computing in memory.

Why: since the cache is written as it is computed (``rsir_train.feature_cache``: a
memory-mapped ``.npy`` flushed after every batch, with a progress record), a Ctrl-C or SIGKILL
during the longest step of a CPU run loses one batch instead of everything. This measures what
that costs on the step itself, against the baseline of the same extraction kept in memory
(``cache_dir=False``: the batches concatenated, the path every run took before), and what an
interrupted run saves: the second run after an interruption half way computes only the other
half. The backbone, its frozen depth and the preprocessing are AHCL's CPU path
(EfficientNet-Lite0, stem + blocks 0-10, 112 x 14 x 14 floats an image).

    python benchmarks/feature_cache.py --data ../shared/data/eurosat --images 256
    RSIR_DATA=../shared/data/nwpu12 python benchmarks/feature_cache.py

Each figure is the best of ``--repeat`` runs (a fresh cache folder each time) after one warm-up;
one torch thread by default so that the two paths compete for the same core.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import load_average, machine, section, table, versions, write_section

from rsir_train.backbones import build_backbone
from rsir_train.dataset import open_training_archive
from rsir_train.features import Normalize, frozen_features

HEAD = ["path", "seconds", "images/s", "vs in memory"]


class _Stop(Exception):
    """Raised from the progress callback: an interruption half way."""


def _extract(net, norm, stages, archive, idx, pre, batch, cache_dir, progress=None):
    return frozen_features(net, norm, stages, archive, idx, pre, cache_dir=cache_dir,
                           batch_size=batch, progress=progress)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(args: argparse.Namespace) -> tuple[list[list], dict[str, float]]:
    """Rows of the table and the figures behind them."""
    archive = open_training_archive(args.data)
    n = min(args.images, len(archive.items))
    idx = np.linspace(0, len(archive.items) - 1, n).round().astype(np.int64)
    net = build_backbone(args.backbone).eval()
    pre = dict(net.preprocess)
    norm = Normalize(pre["mean"], pre["std"])
    stages = net.frozen_stages(args.freeze_blocks)
    run = (net, norm, stages, archive, idx, pre, args.batch_size)
    reference = _extract(*run, False)  # warm-up, and the figures every path must equal
    best = {"memory": float("inf"), "written": float("inf"), "resumed": float("inf")}
    with tempfile.TemporaryDirectory(prefix="rsir-bench-cache-") as tmp:
        for r in range(args.repeat):
            best["memory"] = min(best["memory"], _timed(lambda: _extract(*run, False)))
            folder = Path(tmp) / f"w{r}"
            best["written"] = min(best["written"], _timed(lambda: _extract(*run, folder)))
            half = Path(tmp) / f"r{r}"

            def stop_half_way(event):
                if event["event"] == "cache_progress" and event["done"] >= n // 2:
                    raise _Stop

            try:
                _extract(*run, half, stop_half_way)
            except _Stop:
                pass
            out: list[torch.Tensor] = []
            best["resumed"] = min(best["resumed"], _timed(lambda: out.append(_extract(*run, half))))
            if not torch.equal(out[0], reference):
                raise SystemExit("the resumed cache differs from the in-memory features")
        hit = _timed(lambda: _extract(*run, Path(tmp) / "w0"))
    rows = [
        ["in memory, cache off (baseline: the path before)", best["memory"], n / best["memory"], 1.0],
        ["written batch by batch (cache on, fresh)", best["written"], n / best["written"],
         best["written"] / best["memory"]],
        ["second run after a stop half way (resumed)", best["resumed"], n / best["resumed"],
         best["resumed"] / best["memory"]],
        ["cache hit (read the finished file)", hit, n / hit, hit / best["memory"]],
    ]
    return rows, {**best, "hit": hit, "images": n, "mb": reference.numel() * 4 / 1e6}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.environ.get("RSIR_DATA"),
                   help="archive folder (class sub-folders); default $RSIR_DATA")
    p.add_argument("--images", type=int, default=256, help="images, evenly spaced in the listing")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--freeze-blocks", type=int, default=11)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    if not args.data:
        p.error("give --data or set RSIR_DATA")
    torch.set_num_threads(args.threads)
    load0 = load_average()
    rows, fig = measure(args)
    body = table(HEAD, rows)
    body += (f"\n\n{fig['images']} images of `{Path(args.data).name}`, {args.backbone} stem + "
             f"blocks 0-{args.freeze_blocks - 1} ({fig['mb']:.0f} MB of features), batches of "
             f"{args.batch_size}, {args.threads} torch thread(s), best of {args.repeat}. "
             "\"vs in memory\" is the ratio of seconds to the baseline measured in the same run "
             "(above 1 is slower). The resumed row is the second run only: the first stopped "
             "once half the rows were on disk; its features equal the in-memory ones "
             "(checked).\n")
    print(body)
    meta = machine({"versions": versions("torch", "numpy")})
    if not args.no_write:
        write_section("feature-cache", section(
            "feature-cache", "Feature cache written as computed vs kept in memory "
            "(`benchmarks/feature_cache.py`)", body, meta, (load0, load_average())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
