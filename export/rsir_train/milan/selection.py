"""Choosing a MiLAN head on a small archive: validation folds of the train side, then a refit.

Why: on a few hundred images one 20 % validation split holds 4-12 images a class, and the
iteration where its curve peaks is noise. On eurosat, 30 images a class, 60/40 protocol, the
64-bit head was chosen at iteration 250 on 40 validation images and scored below the 16-bit
head chosen at 1,500 (issue 21). So on a train side under
:data:`~rsir_train.folds.SMALL_ARCHIVE` images (``MilanParams.val_folds``, 3 by default):

1. **Folds**: :func:`rsir_train.folds.validation_folds`: per class the train side's images,
   permuted by the seed, dealt round-robin into the folds, so every training image is
   validated once and no query can be drawn (positions into the train side).
2. **Lockstep**: one head per fold, each on its fold's fit part from the same initial weights
   and seed, stepped together; every ``val_every`` iterations each fold's validation figure
   (``val_metric``, tie-aware, as for one split) and their mean weighted by validation images.
   Patience watches that mean, so no fold's early stop cuts the curve short.
3. **Choice**: the iteration where the fold-mean curve is highest (the earlier on a tie).
4. **Refit**: a fresh head, same initial weights and seed, trained on the whole train side
   for that many iterations; that head is exported. Cost: folds + 1 head trainings, a few
   minutes on a CPU for a few hundred images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, cast

import numpy as np
import torch

from ..folds import validation_folds
from .model import MilanHead, MilanParams
from .trainer import ProgressFn, _HeadRun, _Watch, train_milan_head, validation_so_far

__all__ = ["FINAL_RULE", "fold_curve", "select_on_folds"]

#: what the exported head is, recorded in the manifest's ``training.selection.final``
FINAL_RULE = ("a fresh head (same initial weights and seed) trained on the whole train side for "
              "the iteration count where the fold-mean validation curve was highest")


def fold_curve(features: torch.Tensor, labels: Sequence | np.ndarray, bits: int,
               params: MilanParams, folds: Sequence[tuple[np.ndarray, np.ndarray]],
               progress: ProgressFn | None = None) -> dict[str, Any]:
    """Train one head per fold in lockstep and return the selection record: the fold-mean
    validation curve, its best iteration and figure, where patience stopped, each fold's
    curve and sizes. ``features`` and ``labels`` are the train side's; ``folds`` positions
    into it (:func:`rsir_train.folds.validation_folds`)."""
    params = params.resolved_validation(len(labels), min(len(fit) for fit, _ in folds))
    every = int(params.val_every or 0)
    device = torch.device(params.device) if params.device else features.device
    x = features.detach().to(device=device, dtype=torch.float32)
    y = np.asarray(labels, dtype=object)
    members = []
    for fit, val in folds:
        fit_x = x[torch.as_tensor(fit, device=device)]
        run = _HeadRun(fit_x, y[fit], bits, params, device)
        watch = _Watch(run.scored, fit_x, y[fit],
                       (x[torch.as_tensor(val, device=device)], y[val]), params, device)
        members.append((run, watch))
    weights = np.array([len(val) for _, val in folds], dtype=np.float64)
    curve: list[list[float]] = []
    best, best_step, bad, step = -1.0, 0, 0, 0
    for step in range(1, params.iterations + 1):
        parts = [run.step(step) for run, _ in members]
        last, stop = step == params.iterations, False
        if not step % every or last:
            mean = float(np.dot(weights, [w.score(step) for _, w in members]) / weights.sum())
            curve.append([step, round(mean, 4)])
            if mean > best:
                best, best_step, bad = mean, step, 0
            else:
                bad += 1
                stop = bool(params.patience) and bad >= params.patience
        if progress is not None and (step % params.log_every == 0 or last or stop):
            # the folds' mean losses, and the fold-mean validation so far, this step's
            # included (what patience watches: the lines showed a flat loss and nothing
            # being validated)
            shown = {k: float(np.mean([p[k] for p in parts])) for k in parts[0]}
            progress(step, params.iterations,
                     {**shown, **validation_so_far(curve, best, best_step)})
        if stop:
            break
    return {"val_metric": members[0][1].metric, "folds": len(folds),
            "val_every": every, "patience": params.patience,
            "best_iteration": best_step, "best_val_map": round(best, 4), "stopped_at": step,
            "val_curve": curve, "n_fit": [int(len(f)) for f, _ in folds],
            "n_val": [int(len(v)) for _, v in folds],
            "fold_curves": [w.curve for _, w in members]}


def select_on_folds(features: torch.Tensor, labels: Sequence | np.ndarray, bits: int,
                    params: MilanParams, folds: int,
                    progress: ProgressFn | None = None) -> tuple[MilanHead, dict[str, Any]]:
    """The head of a small train side (``features``, ``labels``): the iteration chosen on
    ``folds`` validation folds (:func:`fold_curve`), then a head refit on all of it for that
    many iterations. Returns the head (eval mode) and the ``selection`` record."""
    parts = validation_folds(labels, folds, params.val_fraction, params.seed)
    record = fold_curve(features, labels, bits, params, parts, progress)
    iterations = max(1, int(record["best_iteration"]))
    head = train_milan_head(features, cast(Sequence, labels), bits,
                            replace(params, iterations=iterations))
    record.update(refit_iterations=iterations, n_train=int(len(labels)), final=FINAL_RULE)
    record["reason"] = (f"best {record['val_metric']} validation mAP {record['best_val_map']:.4f}"
                        f" of the {record['folds']}-fold mean curve at iteration {iterations} "
                        f"(stopped at {record['stopped_at']}); refit {iterations} iterations "
                        f"on all {len(labels)} training images")
    return head, record
