"""Validation folds of a train side and their averaged curves, shared by both trainers' model selection.

Why a module of its own: AHCL (:mod:`rsir_train.ahcl.selection`) and MiLAN
(:mod:`rsir_train.milan.selection`) choose their model on the archive being trained the same
way when it is small: stratified folds of the train side (never the queries), the figure of
each fold over training, averaged over the folds, then one refit on the whole train side.
On a few hundred images one 20 % split is 4-12 validation images a class and its best point
is noise (issue 21: one 60-image split chose AHCL's ``auto`` at 64 bits by 0.028 where the
queries preferred the authors' schedule by 0.037; one 40-image split stopped a MiLAN head at
iteration 250 where the 16-bit head ran to 1,500).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .trainer import validation_indices

__all__ = ["SMALL_ARCHIVE", "SMOOTH_TOP", "Fold", "fold_mean_curve", "smoothed",
           "validation_folds"]

#: below this many training images a selecting run validates on folds of the train side
#: (both trainers); from this many on, AHCL trains its auto schedule as measured on the full
#: sets and MiLAN validates on one ``val_fraction`` split, as before folds existed
SMALL_ARCHIVE = 1000
#: a candidate's figure: the mean of the best SMOOTH_TOP values of its fold-averaged
#: validation curve (the best single value of a long, noisy curve is biased upward)
SMOOTH_TOP = 3

#: positions ``(fit, val)`` into a train side
Fold = tuple[np.ndarray, np.ndarray]


def validation_folds(labels: Sequence | np.ndarray, folds: int, fraction: float,
                     seed: int) -> list[Fold]:
    """Positions ``(fit, val)`` into a train side for each validation fold: with ``folds``
    >= 2, per class the members permuted (seeded) and dealt round-robin into the folds, so
    every image of a class of two or more is validated exactly once and every fold's fit part
    keeps each class; folds with no validation image are left out. With ``folds`` <= 1 the
    single per-class ``fraction`` split of :func:`rsir_train.trainer.validation_indices`."""
    if folds <= 1:
        return [validation_indices(labels, fraction, seed)]
    y = np.asarray(labels, dtype=object).astype(str)
    rng = np.random.default_rng(seed)
    vals: list[list[int]] = [[] for _ in range(folds)]
    for c in sorted(set(y.tolist())):
        members = np.flatnonzero(y == c)
        if len(members) < 2:
            continue  # one image: nothing to hold out
        perm = rng.permutation(members)
        for j in range(folds):
            vals[j] += [int(i) for i in perm[j::folds]]
    out = []
    for v in vals:
        if v:
            val = np.sort(np.array(v, dtype=np.int64))
            out.append((np.setdiff1d(np.arange(len(y), dtype=np.int64), val), val))
    return out


def fold_mean_curve(curves: Sequence[Sequence[Sequence[float]]],
                    weights: Sequence[float]) -> list[list[float]]:
    """The folds' validation curves (``[[step, mAP], ...]`` each) averaged, weighted, at the
    steps every fold validated (a fold that stopped early ends the curve)."""
    common = set.intersection(*({int(o) for o, _ in c} for c in curves)) if curves else set()
    total = float(sum(weights))
    out = []
    for o in sorted(common):
        value = sum(w * dict((int(a), b) for a, b in c)[o] for c, w in zip(curves, weights))
        out.append([o, round(value / total, 4)])
    return out


def smoothed(curve: Sequence[Sequence[float]], top: int = SMOOTH_TOP) -> float:
    """A curve's figure: the mean of its ``top`` best values (-1 for an empty curve)."""
    values = sorted((float(v) for _, v in curve), reverse=True)[:top]
    return float(np.mean(values)) if values else -1.0
