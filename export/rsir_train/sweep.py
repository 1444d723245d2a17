"""Choose AHCL hyper-parameters on a validation split drawn from the train side, never the queries.

Why: the defaults of ``rsir train ahcl`` (:mod:`rsir_train.ahcl.config`) must hold on archives
nobody has tuned them on, and the query split is what the published figures are measured on.
This runs a grid of configurations on the train side of a split, itself split per class into
a training part (the database whose codes are learned) and a validation part (its queries),
and reports the validation mAP (queries coded by the network, database = learned V) after
every ``--eval-every`` epochs, so convergence and the effect of each setting can be read.

    python -m rsir_train.sweep --data /data/nwpu12 --split-file runs/splits/nwpu12-80-20-seed0.json \\
        --bits 16,64 --freeze-blocks 11 --config "schedule=authors" --config "lr=3e-3" \\
        --config "lr=1e-2;epochs=10" --json runs/sweep-nwpu12.json

Each ``--config`` is ``key=value`` pairs separated by ``;`` over :class:`AHCLConfig` fields
(``epochs`` sets ``outer`` for one network epoch per V update). The frozen-stage cache is shared
by every configuration (it covers the whole archive).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from rsir_sdk.splits import Split, make_split, split_for

from .ahcl.config import AHCLConfig
from .dataset import open_training_archive

__all__ = ["parse_config", "run_sweep", "validation_split"]

log = logging.getLogger(__name__)


def validation_split(archive: Any, split: Split, seed: int = 1, protocol: str = "80-20") -> Split:
    """The train side of ``split`` split again per class (``protocol``, ``seed``): its train
    part is the sweep's database, its query part the validation queries."""
    inner = make_split(archive.subset(split.train_ids), protocol, seed)
    return Split(f"val-{protocol}", seed, inner.train_ids, inner.query_ids,
                 split.archive_fingerprint, split.dataset)


def parse_config(text: str) -> dict[str, Any]:
    """``"lr=3e-3;epochs=20;schedule=cosine"`` → ``{"lr": 0.003, "outer": 20, ...}``."""
    fields = {f.name: f for f in dataclasses.fields(AHCLConfig)}
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, _, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if key == "epochs":
            key = "outer"
        if key not in fields:
            raise ValueError(f"unknown AHCL setting {key!r} in {text!r}")
        v: Any = value.strip()
        if key == "lr_steps":
            v = tuple(int(x) for x in v.split(",") if x)
        elif key in ("schedule", "backbone", "amp"):
            pass
        elif key == "preprocess":
            v = json.loads(v)
        else:
            v = float(v) if any(c in v for c in ".e") else int(v)
        out[key] = v
    return out


def run_sweep(data: str, split_file: str | None, bits: Sequence[int], configs: Sequence[str],
              base: dict[str, Any], val_seed: int = 1, eval_every: int = 5,
              emit: Any = None) -> list[dict[str, Any]]:
    """Train every (bits, config) on the validation split; one record per run."""
    from .ahcl.trainer import train_ahcl

    archive = open_training_archive(data)
    split = split_for(archive, split_file, "80-20", 0)
    val = validation_split(archive, split, val_seed)
    records = []
    for b in bits:
        for text in configs:
            # the configuration as given (select "off"): the sweep is itself the selection
            cfg = AHCLConfig(**{**base, "bits": int(b), "eval_every": eval_every,
                                "select": "off", **parse_config(text)})
            t0 = time.perf_counter()
            res = train_ahcl(archive, val, cfg)
            rec = {"dataset": archive.name, "bits": int(b), "config": text,
                   "resolved": {k: v for k, v in dataclasses.asdict(res.config).items()  # type: ignore[arg-type]
                                if k in ("schedule", "lr", "momentum", "outer", "inner",
                                         "lr_steps", "freeze_blocks", "preprocess", "amp")},
                   "val_map": round(res.metrics.get("map_query_vs_learned_db", float("nan")), 4),
                   "val_map_encoded": round(res.metrics.get("map_query_vs_encoded_db", float("nan")), 4),
                   "val_accuracy": round(res.metrics.get("query_accuracy", float("nan")), 4),
                   "curve": [(h["outer"], round(h["map_query"], 4)) for h in res.history
                             if "map_query" in h],
                   "seconds": round(time.perf_counter() - t0, 1), "device": res.device,
                   "n_train": len(val.train_ids), "n_val": len(val.query_ids)}
            records.append(rec)
            if emit:
                emit(rec)
    return records


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rsir_train.sweep", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--split-file", help="the split whose train side is swept (read or drawn, 80-20 seed 0)")
    p.add_argument("--bits", default="16,64")
    p.add_argument("--config", action="append", required=True,
                   help="key=value;key=value over AHCLConfig fields (repeatable)")
    p.add_argument("--freeze-blocks", type=int, default=11)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--device")
    p.add_argument("--cache-dir")
    p.add_argument("--val-seed", type=int, default=1)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--json", help="append the records (JSON lines) to this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    base: dict[str, Any] = {"backbone": args.backbone, "freeze_blocks": args.freeze_blocks,
                            "device": args.device, "cache_dir": args.cache_dir}

    def emit(rec: dict[str, Any]) -> None:
        print(f"{rec['dataset']} {rec['bits']:>3} bits  {rec['config']:<40} val mAP "
              f"{rec['val_map']:.4f} (encoded db {rec['val_map_encoded']:.4f}, acc "
              f"{rec['val_accuracy']:.3f})  {rec['seconds']:.0f}s  curve {rec['curve']}",
              flush=True)
        if args.json:
            with Path(args.json).open("a") as f:
                f.write(json.dumps(rec) + "\n")

    run_sweep(args.data, args.split_file, [int(b) for b in args.bits.split(",")], args.config,
              base, args.val_seed, args.eval_every, emit)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
