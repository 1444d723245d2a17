"""Which validation figure should choose the MiLAN head on a 60-40 split? Train side only.

Why: ``rsir train milan`` keeps the head with the best validation figure. Under the MiLAN
protocol the published metric ranks unseen images among themselves (leave-one-out mAP@20),
while the validation used to rank held-out images against the fit part (mAP over it). This
compares the two rules without reading the query side and without the bias of scoring a rule
on the very images it chose on: the train side of the split is cut per class into

- ``check`` (``--check-fraction``, default 20 %, ``--check-seed``, default 2): never seen
  by training or selection; the rules are scored here,
- ``val`` (20 % of the rest, seed 0, as the trainer draws it): what each rule chooses on,
- ``fit`` (the rest): what the head is trained on;

and both rules run the shipped trainer (:func:`rsir_train.milan.trainer.train_milan_head`,
the default parameters, patience included) with ``val_metric="database"`` and ``"archive"``.
The supervised linear hash (ridge to one-hot labels, random projection, sign) is fitted on
fit + val, as the head's alternative would be, and scored on ``check`` too.

    python export/scripts/milan_selection.py --data ../shared/data/nwpu12 \\
        --split-file runs/splits/nwpu12-60-40-seed0.json --bits 16,32,64 \\
        --cache-dir runs/cache --threads 1 --json runs/milan_selection.jsonl

Prints one JSON line per code length: each rule's chosen iteration, its validation figure
and its ``check`` figure (leave-one-out mAP@20 among the check images, ties by index and
``check_tie_aware``, in expectation over the order of tied codes), and the linear hash's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rsir_sdk.splits import split_for
from rsir_train.backbones import build_backbone
from rsir_train.baselines import fit_linear_hash
from rsir_train.dataset import open_training_archive
from rsir_train.evaluation import archive_map
from rsir_train.features import Normalize, pooled_features
from rsir_train.milan.model import VAL_METRICS, MilanParams, milan_codes
from rsir_train.milan.trainer import MilanConfig, train_milan_head, validation_indices


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, MilanParams, dict]:
    """The command line, checked before any work: the arguments, the MilanParams every rule
    starts from (the defaults with ``--param``'s changes) and those changes (recorded)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="archive folder (one sub-folder per class)")
    p.add_argument("--split-file", required=True, help="a 60-40 split JSON (read, or drawn)")
    p.add_argument("--bits", default="16,32,64")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--cache-dir", help="feature cache folder (the trainer's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rules", default="database,archive",
                   help="validation figures to compare (MilanParams.val_metric values; "
                        "NAME+refit: then a fresh head on fit + val for the chosen length)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a MilanParams field to change for every rule (float/int/str), e.g. "
                        "margin=0.5; repeatable; recorded in the output")
    p.add_argument("--check-fraction", type=float, default=0.2,
                   help="share of each class of the train side held out as the check part "
                        "(default 0.2; 0.4 cuts the train side the way the 60-40 protocol cuts "
                        "the archive)")
    p.add_argument("--check-seed", type=int, default=2, help="seed of the check cut (default 2)")
    p.add_argument("--json", help="append one JSON line per code length to this file")
    args = p.parse_args(argv)
    defaults = MilanParams()
    overrides = {}
    for item in args.param:  # every --param fails here, before any work
        key, _, value = item.partition("=")
        if not hasattr(defaults, key):
            p.error(f"--param {item}: MilanParams has no field {key!r}")
        default = getattr(defaults, key)
        try:
            overrides[key] = type(default)(value) if not isinstance(default, str) else value
        except ValueError:
            p.error(f"--param {item}: {value!r} is not a {type(default).__name__}")
    try:
        params = replace(defaults, **overrides)
    except ValueError as exc:  # a value MilanParams refuses, e.g. ema_decay=1
        p.error(f"--param: {exc}")

    if not 0.0 < args.check_fraction < 1.0:
        p.error(f"--check-fraction must be in (0, 1), not {args.check_fraction}")
    for rule in args.rules.split(","):
        if rule.removesuffix("+refit") not in VAL_METRICS:
            p.error(f"--rules: {rule!r} is not one of {', '.join(VAL_METRICS)} (+refit)")
    return args, params, overrides


def rule_figures(x: Callable[[np.ndarray], torch.Tensor], labels: np.ndarray,
                 parts: dict[str, np.ndarray], bits: int, params: MilanParams,
                 rule: str) -> tuple[str, dict]:
    """Train the head choosing on ``val`` by ``rule`` (``NAME+refit``: then a fresh head on
    fit + val for the chosen length) and score it on ``check``: the record's key and entry."""
    fit_idx, val_idx, rest_idx, check_idx = (parts[k] for k in ("fit", "val", "rest", "check"))
    refit = rule.endswith("+refit")  # then a fresh head on fit + val, chosen length
    rule = rule.removesuffix("+refit")
    t0 = time.perf_counter()
    report: dict = {}
    head = train_milan_head(x(fit_idx), labels[fit_idx], bits,
                            replace(params, val_metric=rule),
                            validation=(x(val_idx), labels[val_idx]), report=report)
    if refit:
        head = train_milan_head(x(rest_idx), labels[rest_idx], bits, replace(
            params, iterations=max(1, report["best_iteration"])))
        rule += "+refit"
    codes = milan_codes(head, x(check_idx))
    return rule, {
        "best_iteration": report["best_iteration"], "stopped_at": report["stopped_at"],
        "val": report["best_val_map"],
        "check": round(archive_map(codes, labels[check_idx]), 4),
        "check_tie_aware": round(archive_map(codes, labels[check_idx], ties="expected"), 4),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Cut the train side into fit / val / check, then per code length print (and append to
    ``--json``) the linear hash's check figures and each rule's (:func:`rule_figures`)."""
    args, params, overrides = parse_args(argv)
    torch.set_num_threads(args.threads)
    archive = open_training_archive(args.data)
    split = split_for(archive, args.split_file, "60-40", 0)
    backbone = build_backbone(args.backbone)
    pre = MilanConfig(backbone=args.backbone).resolved_preprocess(backbone)
    feats, _ = pooled_features(backbone, Normalize(pre["mean"], pre["std"]), archive, pre,
                               cache_dir=args.cache_dir)
    labels = np.asarray(archive.labels(), dtype=object)
    train_idx, _ = split.indices(archive)  # the query side is never used
    rest, check = validation_indices(labels[train_idx], args.check_fraction, seed=args.check_seed)
    rest_idx, check_idx = train_idx[rest], train_idx[check]
    # validation cut as the trainer draws it (its fraction and seed)
    fit, val = validation_indices(labels[rest_idx], params.val_fraction, seed=params.seed)
    fit_idx, val_idx = rest_idx[fit], rest_idx[val]
    parts = {"fit": fit_idx, "val": val_idx, "rest": rest_idx, "check": check_idx}
    sizes = {"fit": len(fit_idx), "val": len(val_idx), "check": len(check_idx),
             "check_seed": args.check_seed}

    def x(idx: np.ndarray) -> torch.Tensor:
        return feats[torch.as_tensor(idx)]

    for bits in (int(b) for b in args.bits.split(",")):
        record: dict = {"dataset": archive.name, "bits": bits, "sizes": sizes,
                        "params": overrides}
        linear = fit_linear_hash(x(rest_idx).numpy(), labels[rest_idx], bits)
        linear_codes = linear.codes(x(check_idx).numpy())
        record["linear_check"] = round(archive_map(linear_codes, labels[check_idx]), 4)
        record["linear_check_tie_aware"] = round(
            archive_map(linear_codes, labels[check_idx], ties="expected"), 4)
        for rule in args.rules.split(","):
            key, entry = rule_figures(x, labels, parts, bits, params, rule)
            record[key] = entry
        print(json.dumps(record), flush=True)
        if args.json:
            with Path(args.json).open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
