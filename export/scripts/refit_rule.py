"""Which refit should a selecting AHCL run export? Compared on its validation folds only.

Why: a selecting run (:mod:`rsir_train.ahcl.selection`) chooses a schedule and an outer
iteration T on validation folds, then refits on the whole train side and stops at T with the
lr still where the long schedule had it at T (``cut``, today's rule). On eurosat at 60 images a
class that refit's query mAP swung between 0.89 and 0.95 from one evaluation to the next at 64
bits and ended low, so two settled endpoints were tried against it:

- ``--rule anneal``: the chosen schedule compressed to T outer iterations (a cosine reaches 0
  at T; step drops move proportionally): the same epochs, the lr annealed by the end;
- ``--rule tail``: the long schedule to T as today, then ``--tail-share`` x T (at least 5)
  more outer iterations whose lr falls from its value at T to 0 (the second half of a cosine).

This script judges them on the run's own validation folds, never on its queries. For a finished
selecting bundle it rebuilds the folds (same seed, same fit and validation images; their sizes
and the candidate's schedule checked against the manifest, and ``tail``'s ``cut_rerun``
re-trains the fold to T, which reproduces the recorded figure only on the same images),
trains the rule on each fold (patience off) and prints, per fold and as the
validation-weighted mean, the ``cut`` figure (the fold's validation mAP at T in the
selection's own run, read from the manifest; ``tail`` re-trains it and prints ``cut_rerun``,
which must equal it) beside the rule's (``anneal``). The cut figure is the one the selection
maximised over T, so it is biased upward; ``cut_near`` is the cut curve's mean over T - 10 ..
T + 10 (the points a noisy stop could have landed on). ``--train-seed`` trains each fold
with another seed (the folds stay the bundle's): ``cut_rerun`` is then a fresh run's figure at
T, unbiased by the selection, paired with the rule's. Result (docs/results.md, "60 images a
class: eurosat draw 0"): neither rule beats today's on validation, and over fresh seeds
``tail`` is ahead at 64 bits (+0.004) and behind at 32 (-0.002), so today's rule stands.

    python export/scripts/refit_rule.py --bundle runs/bundles/small-eurosat-60-s0-sel-64 \\
        --data runs/data/eurosat-60-s0 --split-file runs/splits/eurosat-60-s0-80-20-seed0.json \\
        --cache-dir runs/cache --work-dir runs/an/eurosat-60-s0-64 --threads 1 \\
        --json runs/refit_rule.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsir_sdk.splits import split_for
from rsir_train.ahcl.config import AHCLConfig, candidate_configs, epoch_lr
from rsir_train.ahcl.selection import _part
from rsir_train.ahcl.trainer import _Context, _outer_iteration, _Part, _prepare, _validate, run_schedule
from rsir_train.dataset import open_training_archive
from rsir_train.folds import validation_folds
from rsir_train.trainer import CHECKPOINT_FILE


def annealed(cfg: AHCLConfig, outer: int) -> AHCLConfig:
    """``cfg``'s schedule compressed to ``outer`` outer iterations: a cosine ends its decay
    there; a step schedule's drops move proportionally (as :meth:`AHCLConfig.resolved` does)."""
    steps = tuple(sorted({max(1, round(s * outer / cfg.outer)) for s in (cfg.lr_steps or ())}))
    return dataclasses.replace(cfg, outer=outer, lr_steps=steps, patience=0, val_every=5)


def tail_config(cfg: AHCLConfig, outer: int, tail: int) -> AHCLConfig:
    """A cosine whose second half runs ``tail`` outer iterations from ``cfg``'s lr at outer
    iteration ``outer`` down to 0 (outer iterations ``tail .. 2 tail - 1`` of it)."""
    assert cfg.inner is not None and cfg.outer is not None
    lr_t = epoch_lr(cfg, outer * cfg.inner, cfg.outer * cfg.inner)
    return dataclasses.replace(cfg, schedule="cosine", lr=2 * lr_t, outer=2 * tail, lr_steps=())


def with_tail(ctx: _Context, cfg: AHCLConfig, part: _Part, T: int, tail: int,
              ckpt: Path) -> tuple[float, float]:
    """The selection's own run to T (its lr as in the long schedule), then ``tail`` outer
    iterations annealing the lr to 0: the cut figure (validation at T) and the tail's."""
    st = run_schedule(ctx, dataclasses.replace(cfg, patience=0), part, ckpt, True,
                      lambda e: None, stop_at=T)
    cut = [v for o, v in st.curve if o == T][-1]
    tcfg = tail_config(cfg, T, tail)
    for i in range(tail):
        _outer_iteration(st, tail + i, tcfg, part.db_in, part.y_db, ctx.n_frozen, ctx.device,
                         ctx.amp)
    return cut, _validate(st, ctx, cfg, part, T + tail)


def near(curve: list[list[float]], at: int, span: int = 10) -> float:
    """Mean of a curve's values at outer iterations within ``span`` of ``at``."""
    vals = [v for o, v in curve if abs(o - at) <= span]
    return float(np.mean(vals)) if vals else float("nan")


def common_args(p: argparse.ArgumentParser) -> None:
    """The arguments every refit script takes (this one and ``refit_spread.py``)."""
    p.add_argument("--bundle", required=True, help="a finished selecting AHCL bundle")
    p.add_argument("--data", required=True)
    p.add_argument("--split-file", required=True)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--work-dir", required=True, help="checkpoints of the runs (resumable)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="append the results as JSON lines")


def append_json(path: str | None, row: dict) -> None:
    """Append ``row`` as one JSON line to ``path`` (``--json``), when given."""
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def selecting_run(args: argparse.Namespace) -> tuple[dict, AHCLConfig, Any, Any]:
    """A finished selecting bundle's training record, its configuration as the user gave it
    (every recorded field; the schedule fields back to None, since the manifest records them
    resolved for the refit's train side), its archive and its split."""
    t = json.loads((Path(args.bundle) / "manifest.json").read_text())["training"]
    fields = {f.name for f in dataclasses.fields(AHCLConfig)}
    given = {k: (tuple(v) if isinstance(v, list) else v)
             for k, v in t["hyperparameters"].items() if k in fields}
    given["lam"] = given_lambda(t)
    config = dataclasses.replace(AHCLConfig(**given), schedule="auto", lr=None, momentum=None,
                                 outer=None, inner=None, lr_steps=None, device="cpu",
                                 cache_dir=args.cache_dir, eval_every=0)
    archive = open_training_archive(args.data)
    split = split_for(archive, args.split_file, t.get("protocol") or "80-20", 0)
    return t, config, archive, split


def given_lambda(t: dict) -> float:
    """The lambda the folds trained with (the user's). Since 2026-12-06 the manifest's
    ``hyperparameters.lam`` is the refit's, scaled by ``n_train / mean(n_fit)``
    (:func:`rsir_train.ahcl.selection.refit_config`); ``selection.refit.fold_lam`` records the
    folds' (bundles of the first day of that rule lack it: undo the scale); older bundles
    trained the refit with the user's lambda, which the manifest records."""
    sel = t.get("selection") or {}
    refit = sel.get("refit") or {}
    if "fold_lam" in refit:
        return float(refit["fold_lam"])
    if "lam" in refit:
        return round(float(refit["lam"]) * float(np.mean(sel["n_fit"])) / refit["n_train"], 4)
    return float(t["hyperparameters"]["lam"])


def chosen_candidate(t: dict) -> dict:
    """The manifest's record of the candidate the selection chose (schedule, curves, folds)."""
    sel = t["selection"]
    return next(c for c in sel["candidates"] if c["name"] == sel["chosen"])


def chosen_config(config: AHCLConfig, t: dict, n_train: int, cached: bool) -> AHCLConfig:
    """The chosen candidate's resolved configuration, checked against the manifest's record."""
    sel, chosen = t["selection"], chosen_candidate(t)
    cfg = dict(candidate_configs(config, min(sel["n_fit"]), n_train, cached=cached))[chosen["name"]]
    recorded = (chosen["lr"], chosen["outer"], chosen["inner"], list(chosen["lr_steps"]))
    assert (cfg.lr, cfg.outer, cfg.inner, list(cfg.lr_steps or ())) == recorded, \
        f"the candidate's schedule differs from the bundle's: {cfg} against {recorded}"
    return cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_args(p)
    p.add_argument("--rule", choices=("anneal", "tail"), default="anneal",
                   help="anneal: the schedule compressed to T; tail: the long schedule to T, "
                        "then --tail-share x T outer iterations annealing its lr to 0")
    p.add_argument("--tail-share", type=float, default=0.2)
    p.add_argument("--train-seed", type=int, default=None,
                   help="train each fold with this seed (the folds stay the bundle's); with "
                        "--rule tail, cut_rerun is then a fresh run's figure at T, unbiased by "
                        "the selection, and the pairs over seeds give each rule's spread")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t, config, archive, split = selecting_run(args)
    sel, chosen = t["selection"], chosen_candidate(t)
    T = int(sel["best_outer"])
    ctx, _ = _prepare(archive, split, config, lambda e: None)
    folds = validation_folds(ctx.y_db, config.val_folds, config.val_fraction, config.seed)
    assert [len(f[0]) for f in folds] == sel["n_fit"], "folds differ from the bundle's"
    cfg = chosen_config(config, t, len(ctx.y_db), cached=ctx.n_frozen > 0)
    seed_tag = ""
    if args.train_seed is not None and args.train_seed != cfg.seed:
        cfg, seed_tag = dataclasses.replace(cfg, seed=args.train_seed), f"-seed{args.train_seed}"
    comp = annealed(cfg, T)
    rows = []
    for k, fold in enumerate(folds):
        t0 = time.perf_counter()
        ckpt = Path(args.work_dir) / f"anneal-{chosen['name']}-{T}-f{k}{seed_tag}" / CHECKPOINT_FILE
        curve = chosen["folds"][k]["val_curve"]
        row = {"fold": k, "n_val": len(fold[1]), "cut": dict((o, v) for o, v in curve).get(T),
               "cut_near": round(near(curve, T), 4)}
        if args.rule == "anneal":
            st = run_schedule(ctx, comp, _part(ctx, *fold), ckpt, True, lambda e: None)
            row.update(anneal=st.curve[-1][1], anneal_curve=st.curve)
        else:
            tail = max(5, round(args.tail_share * T))
            ckpt = Path(args.work_dir) / f"cut-{chosen['name']}-{T}-f{k}{seed_tag}" / CHECKPOINT_FILE
            cut, value = with_tail(ctx, cfg, _part(ctx, *fold), T, tail, ckpt)
            row.update(cut_rerun=round(cut, 4), anneal=round(value, 4), tail=tail)
        rows.append({**row, "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps({k2: v for k2, v in rows[-1].items() if k2 != "anneal_curve"}), flush=True)
    w = np.array([r["n_val"] for r in rows], float)
    mean = {key: round(float(np.average([r[key] for r in rows], weights=w)), 4)
            for key in ("cut", "cut_near", "anneal", "cut_rerun") if key in rows[0]}
    out = {"bundle": args.bundle, "rule": args.rule, "bits": config.bits, "train_seed": cfg.seed,
           "chosen": chosen["name"], "T": T,
           "schedule": {"outer": comp.outer, "lr": comp.lr, "lr_steps": list(comp.lr_steps or ())},
           **mean, "folds": rows}
    print(json.dumps({k2: v for k2, v in out.items() if k2 != "folds"}), flush=True)
    append_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
