"""Model selection for AHCL on the archive being trained: validation folds of the train side.

Why: no fixed schedule is right for every archive and code length. The 900-step ``auto``
schedule was chosen on 1,920 training images; on a 336-image archive it runs 100 epochs and its
64-bit model came out worse than its 16-bit one (issue 21). A first selection on one 20 %
validation split (60 images on a 288-image train side) chose ``auto`` at 64 bits by 0.028
where the queries preferred the authors' schedule by 0.037, and exported a network that had
seen 228 of the 288 training images. So a run with ``schedule="auto"`` (the default) chooses
its model on the archive it is given, never on the queries, as follows:

1. **Validation folds**: on a small archive (train side under
   :data:`~rsir_train.ahcl.config.SMALL_ARCHIVE` images) ``val_folds`` (3) stratified folds:
   per class the train side's positions, permuted by the run's seed, dealt round-robin into
   the folds (:func:`rsir_train.folds.validation_folds`), so every training image is validated once and no
   query image can be drawn (positions into the train side). A large archive (``select="on"``)
   or ``val_folds=1`` holds out per class ``val_fraction`` once
   (:func:`rsir_train.trainer.validation_indices`).
2. **Figure**: the project's own metric: a fold's validation images coded by the network
   (``sign(u)``) against the fold's fit part's learned V, mAP over that whole database,
   Hamming ranking, ties in the store's order (:func:`rsir_train.evaluation.in_tie_order`),
   every ``val_every`` outer iterations (about 20 a run); a fold stops after ``patience``
   validations without improvement. A candidate's curve is the mean over folds (weighted by
   their validation images) at the iterations every fold validated; its figure is the mean
   of the best :data:`~rsir_train.ahcl.config.SMOOTH_TOP` (3) points of that curve, its
   epoch count the curve's best point.
3. **Candidates**: :data:`~rsir_train.ahcl.config.DEFAULT_CANDIDATES` (``auto``,
   ``authors``) on a small archive, ``auto`` alone otherwise; each bounded in steps (at most
   100 epochs of a fold's fit part, patience usually stops it sooner). The best figure wins;
   a tie goes to the earlier.
4. **Refit**: the chosen schedule is trained again from the same initial weights on the
   **whole train side**, its lr following the validated schedule, and stopped after the
   chosen number of outer iterations; that network and its learned V (every training image)
   are exported. The quantization weight is scaled by ``n_train / n_fit``
   (:func:`refit_config`) so the refit trains the per-image objective the folds validated:
   the loss divides both terms by the database size, so the same lambda on 1.5 x the images
   is a 1.5 x weaker per-image quantization weight than the one validated. Unscaled, the
   refit's query curve swung by 0.03 between validations where every fold's was flat, and it
   exported a 64-bit model below all three fold networks on the queries (issue 21, eurosat
   60 a class: 0.9284 against 0.9419 / 0.9503 / 0.9690; scaled: 0.9524; docs/training.md).
   Cost: folds x candidates fit runs plus one refit, about 3-4 times one run of the
   authors' schedule on a few hundred images.

Every fold of every candidate and the refit checkpoint on their own
(``<work_dir>/select-<name>-f<k>/``, ``<work_dir>/refit-<name>-<outer>-lam<lambda>/``); a
resumed run skips finished ones and chooses and refits the same model.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluation import in_tie_order
from ..folds import Fold, fold_mean_curve, smoothed, validation_folds
from ..progress_log import SHOWN
from ..trainer import CHECKPOINT_FILE, Progress
from .config import SMALL_ARCHIVE, SMOOTH_TOP, AHCLConfig, candidate_configs
from .trainer import _Context, _Part, _State, run_schedule

log = logging.getLogger(__name__)

__all__ = ["FINAL_RULE", "fold_mean_curve", "refit_config", "select_model", "smoothed",
           "validation_folds"]

#: what the exported model is, recorded in the manifest's ``training.selection.final``
FINAL_RULE = ("the chosen schedule refit on the whole train side from the same initial "
              "weights, stopped at the chosen outer iteration (lr as in the validated "
              "schedule), lambda scaled by n_train / n_fit (the folds' per-image "
              "quantization weight); database codes: that run's learned V of every "
              "training image")


def refit_config(chosen: AHCLConfig, n_train: int, n_fit: float) -> AHCLConfig:
    """The chosen schedule for the refit on ``n_train`` images after folds that fit on
    ``n_fit`` (their mean): lambda times ``n_train / n_fit``, so each image's quantization
    term weighs in the refit's loss and V update what it weighed where it was validated
    (both terms of :func:`rsir_train.ahcl.model.ahcl_loss` are divided by the database
    size, and the V update's similarity sum grows with it)."""
    return dataclasses.replace(chosen, lam=round(chosen.lam * n_train / max(n_fit, 1.0), 4))


@dataclass
class _Runs:
    """Progress of a selection over its training runs (folds x candidates, then the refit):
    a selecting run takes an hour on a few hundred images on a CPU, so the user is told the
    plan at the start and each run as it ends (events ``selection_plan`` and
    ``selection_progress``, the same lines in the log)."""

    emit: Progress
    total: int
    done: int = 0
    started: float = field(default_factory=time.perf_counter)

    def plan(self, names: list[str], folds: list[Fold], n_train: int) -> None:
        fit, val = [len(f[0]) for f in folds], [len(f[1]) for f in folds]
        where = (f"{len(folds)} validation folds of the train side ({_span(fit)} fit / "
                 f"{_span(val)} validation images each)" if len(folds) > 1 else
                 f"one validation split of the train side ({fit[0]} fit / {val[0]} validation "
                 f"images)")
        text = (f"{', '.join(names)} on {where}, then the choice refit on all {n_train} "
                f"training images: {self.total} training runs")
        log.info("model selection: %s", text, extra=SHOWN)
        self.emit({"event": "selection_plan", "text": text, "runs": self.total})

    def fold_done(self, name: str, k: int, n_folds: int, st: _State) -> None:
        self.done += 1
        text = (f"run {self.done}/{self.total} done ({name}, fold {k + 1}/{n_folds}): best "
                f"validation mAP {st.best_map:.4f} at outer iteration {st.best_outer} (stopped "
                f"at {st.outer_done}); {time.perf_counter() - self.started:.0f} s so far")
        log.info("model selection: %s", text, extra=SHOWN)
        self.emit({"event": "selection_progress", "text": text, "run": self.done,
                   "runs": self.total})


def _span(values: list[int]) -> str:
    return f"{min(values)}" if min(values) == max(values) else f"{min(values)}-{max(values)}"


def _part(ctx: _Context, fit: np.ndarray, val: np.ndarray) -> _Part:
    """A fold: its fit part (the database while selecting) and its validation images."""
    fit_ids = [ctx.train_ids[int(i)] for i in fit]
    order = in_tie_order(np.arange(len(fit)), fit_ids)
    return _Part(ctx.db_in.sub(fit), ctx.y_db[fit], fit_ids, ctx.db_in.sub(val),
                 ctx.y_db[val], order)


def _fold_summary(k: int, fold: Fold, st: _State) -> dict[str, Any]:
    return {"fold": k, "n_fit": int(len(fold[0])), "n_val": int(len(fold[1])),
            "best_val_map": round(st.best_map, 4), "best_outer": st.best_outer,
            "stopped_at": st.outer_done, "stopped_early": st.stopped,
            "seconds": round(st.seconds, 1), "val_curve": st.curve}


def _candidate(ctx: _Context, name: str, cfg: AHCLConfig, folds: list[Fold],
               work_dir: str | os.PathLike | None, resume: bool,
               runs: _Runs) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """Train one candidate on every fold; its summary (figure, mean curve, best outer, the
    folds'), the history and the devices."""
    per_fold, history, devices = [], [], []
    for k, fold in enumerate(folds):
        ckpt = Path(work_dir) / f"select-{name}-f{k}" / CHECKPOINT_FILE if work_dir else None
        st = run_schedule(ctx, cfg, _part(ctx, *fold), ckpt, resume, runs.emit,
                          tag=f"{name}/f{k}")
        st.best_net = st.best_V = None  # the exported network is refit, not a fold's
        runs.fold_done(name, k, len(folds), st)
        per_fold.append(_fold_summary(k, fold, st))
        history += st.history
        devices += [d for d in st.devices if d not in devices]
    curve = fold_mean_curve([f["val_curve"] for f in per_fold], [f["n_val"] for f in per_fold])
    best = max(curve, key=lambda p: (p[1], -p[0])) if curve else [float(cfg.outer or 1), -1.0]
    summary = {"name": name, "schedule": cfg.schedule, "lr": cfg.lr, "momentum": cfg.momentum,
               "outer": cfg.outer, "inner": cfg.inner, "lr_steps": list(cfg.lr_steps or ()),
               "val_map": round(smoothed(curve), 4), "best_val_map": best[1],
               "best_outer": int(best[0]), "val_curve": curve, "folds": per_fold,
               "seconds": round(sum(f["seconds"] for f in per_fold), 1)}
    cut = _curve_cut(curve, per_fold)
    if cut:
        summary["curve_cut"] = cut
    return summary, history, devices


def _curve_cut(curve: list[list[float]], per_fold: list[dict[str, Any]]) -> dict[str, int] | None:
    """Where the fold-mean curve ends because a fold stopped early (patience) while another
    ran on, or None. The curve holds only the iterations every fold validated, so its best
    point cannot lie beyond that: the reason says so when the choice sits at the end."""
    if not curve:
        return None
    end, ran_to = int(curve[-1][0]), max(int(f["stopped_at"]) for f in per_fold)
    if end >= ran_to:
        return None
    first = min((f for f in per_fold if f["stopped_early"]), key=lambda f: f["stopped_at"],
                default=None)
    return None if first is None else {"at": end, "fold": int(first["fold"]) + 1,
                                       "others_ran_to": ran_to}


def _reason(chosen: dict[str, Any], tried: list[dict[str, Any]], n_folds: int,
            lam: float) -> str:
    others = [t for t in tried if t["name"] != chosen["name"]]
    text = (f"{chosen['name']}: highest validation mAP {chosen['val_map']:.4f} (mean of the "
            f"best {SMOOTH_TOP} points of the {n_folds}-fold mean curve; best "
            f"{chosen['best_val_map']:.4f} at outer iteration {chosen['best_outer']})")
    cut = chosen.get("curve_cut")
    if cut and chosen["best_outer"] >= cut["at"]:
        text += (f", where the curve ends: fold {cut['fold']} stopped early there (patience) "
                 f"while another ran to {cut['others_ran_to']}, so a later point was not "
                 f"compared")
    text += ("; " + ", ".join(f"{t['name']} {t['val_map']:.4f}" for t in others)) if others \
        else "; the only candidate"
    return text + (f"; refit on the whole train side for {chosen['best_outer']} outer "
                   f"iterations ({chosen['best_outer'] * chosen['inner']} epochs, lambda "
                   f"{lam:g})")


def select_model(
    ctx: _Context,
    config: AHCLConfig,
    work_dir: str | os.PathLike | None,
    resume: bool,
    emit: Progress,
) -> tuple[AHCLConfig, np.ndarray, list[dict[str, Any]], float, list[str], dict[str, Any]]:
    """Train every candidate on every validation fold, choose on the smoothed fold-mean
    figure, refit the choice on the whole train side; returns the refit's configuration
    (the chosen schedule, lambda scaled by :func:`refit_config`), the refit's learned V of
    the whole train side, the history (folds and refit), the training seconds, the devices
    and the ``selection`` record. ``ctx.net`` holds the refit network afterwards."""
    n_folds = config.val_folds if len(ctx.y_db) < SMALL_ARCHIVE else 1
    folds = validation_folds(ctx.y_db, n_folds, config.val_fraction, config.seed)
    n_fit = [int(len(f[0])) for f in folds]
    cands = candidate_configs(config, min(n_fit), len(ctx.y_db), cached=ctx.n_frozen > 0)
    tried, history, devices = [], [], []
    runs = _Runs(emit, len(cands) * len(folds) + 1)
    runs.plan([name for name, _ in cands], folds, len(ctx.y_db))
    chosen: tuple[dict[str, Any], AHCLConfig] | None = None
    for name, cfg in cands:
        summary, hist, devs = _candidate(ctx, name, cfg, folds, work_dir, resume, runs)
        tried.append(summary)
        history += hist
        devices += [d for d in devs if d not in devices]
        if chosen is None or summary["val_map"] > chosen[0]["val_map"]:
            chosen = (summary, cfg)
    assert chosen is not None
    best, cfg = chosen
    fold_lam = cfg.lam  # what the user gave and the folds trained; the refit's is scaled
    cfg = refit_config(cfg, len(ctx.y_db), float(np.mean(n_fit)))
    reason = _reason(best, tried, len(folds), cfg.lam)
    log.info("model selection: %s", reason, extra=SHOWN)
    emit({"event": "selection", "chosen": best["name"], "reason": reason})
    ckpt = (Path(work_dir) / f"refit-{best['name']}-{best['best_outer']}-lam{cfg.lam:g}"
            / CHECKPOINT_FILE if work_dir else None)
    st = run_schedule(ctx, cfg, _Part(ctx.db_in, ctx.y_db, ctx.train_ids), ckpt, resume, emit,
                      tag=f"{best['name']}/refit", stop_at=best["best_outer"])
    history += st.history
    devices += [d for d in st.devices if d not in devices]
    seconds = sum(t["seconds"] for t in tried) + st.seconds
    selection = {"chosen": best["name"], "reason": reason, "val_map": best["val_map"],
                 "best_val_map": best["best_val_map"], "best_outer": best["best_outer"],
                 "candidates": tried, "folds": len(folds), "val_seed": config.seed,
                 "val_fraction": config.val_fraction if len(folds) == 1 else None,
                 "n_fit": n_fit,
                 "n_val": [int(len(f[1])) for f in folds],
                 "metric": "mAP of each fold's validation images' sign(u) against its fit "
                           "part's learned V, whole database, Hamming, ties in the store's "
                           f"order; mean over folds; figure: mean of the best {SMOOTH_TOP}",
                 "patience": config.patience,
                 "refit": {"outer": st.outer_done, "epochs": st.outer_done * (cfg.inner or 1),
                           "n_train": int(len(ctx.y_db)), "lam": cfg.lam, "fold_lam": fold_lam,
                           "seconds": round(st.seconds, 1)},
                 "final": FINAL_RULE}
    return cfg, st.V, history, seconds, devices, selection
