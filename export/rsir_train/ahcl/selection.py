"""Model selection for AHCL on the archive being trained: a validation split of the train side.

Why: no fixed schedule is right for every archive and code length. The 900-step ``auto``
schedule was chosen on 1,920 training images; on a 336-image archive it runs 100 epochs and its
64-bit model came out worse than its 16-bit one (issue 21). So a run with ``schedule="auto"``
(the default) chooses its model on the archive it is given, never on the queries:

1. **Validation split**: per class ``val_fraction`` (20 %) of the train side, seeded by the
   run's seed (:func:`rsir_train.trainer.validation_indices`, positions into the train side,
   so no query image can be drawn). The rest, the *fit* part, is the database whose codes are
   learned while selecting.
2. **Figure**: the project's own metric: the validation images coded by the network
   (``sign(u)``) against the fit part's learned V, mAP over that whole database, Hamming
   ranking, ties in the store's order (:func:`rsir_train.evaluation.in_tie_order`).
3. **Best epoch, patience**: validated every ``val_every`` outer iterations (about 20 a
   run); the best network and V are kept and a schedule stops after ``patience`` validations
   without improvement.
4. **Schedules, on a small archive** (train side under
   :data:`~rsir_train.ahcl.config.SMALL_ARCHIVE` images): ``auto``, ``authors``, ``short``
   (cosine, 30 epochs) and, above 16 bits, ``lr16`` (the 16-bit lr: the shorter codes'
   recipe, so a longer code can fall back on what made the shorter one good). Each is bounded
   in steps (at most 100 epochs of a small fit part; patience usually stops it sooner), so the
   whole choice costs at most a few times one auto run of a few hundred images. The one with
   the best validation figure is chosen (a tie goes to the earlier in that order). Larger
   archives are selected on only with ``select="on"`` (the ``auto`` schedule alone); under
   ``select="auto"`` they train as before selection existed (the trainer decides).
5. **What is exported**: the chosen schedule's best validated network, kept as it is (not
   retrained on the whole train side: a refit doubles the run and its last epoch would be
   exported unvalidated). Its database codes are completed by one closed-form V update
   (:func:`rsir_train.ahcl.model.update_codes`) over the whole train side, fit and validation
   images together, from the network's outputs and the labels, so every database image has
   a learned code.

Every candidate checkpoints on its own (``<work_dir>/select-<name>/checkpoint.pt``, its best
network and V included); a resumed run skips finished candidates and chooses the same model.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluation import in_tie_order
from ..trainer import CHECKPOINT_FILE, Progress, validation_indices
from .config import AHCLConfig, candidate_configs
from .model import similarity_t_times, update_codes
from .trainer import _Context, _encode, _Part, _State, run_schedule

log = logging.getLogger(__name__)

__all__ = ["FINAL_RULE", "select_model"]

#: what the exported model is, recorded in the manifest's ``training.selection.final``
FINAL_RULE = ("the chosen schedule's best validated network, not retrained; database codes "
              "of the whole train side (fit + validation) from one closed-form V update")


def _parts(ctx: _Context, config: AHCLConfig) -> tuple[_Part, np.ndarray, np.ndarray]:
    """The fit part (database while selecting) and the validation part of the train side."""
    fit, val = validation_indices(ctx.y_db, config.val_fraction, config.seed)
    fit_ids = [ctx.train_ids[int(i)] for i in fit]
    order = in_tie_order(np.arange(len(fit)), fit_ids)
    return (_Part(ctx.db_in.sub(fit), ctx.y_db[fit], fit_ids, ctx.db_in.sub(val),
                  ctx.y_db[val], order), fit, val)


def _summary(name: str, cfg: AHCLConfig, st: _State) -> dict[str, Any]:
    return {"name": name, "schedule": cfg.schedule, "lr": cfg.lr, "momentum": cfg.momentum,
            "outer": cfg.outer, "inner": cfg.inner, "lr_steps": list(cfg.lr_steps or ()),
            "best_val_map": round(st.best_map, 4), "best_outer": st.best_outer,
            "stopped_at": st.outer_done, "stopped_early": st.stopped,
            "seconds": round(st.seconds, 1), "val_curve": st.curve}


def complete_codes(ctx: _Context, V_fit: np.ndarray, fit: np.ndarray, lam: float,
                   batch_size: int) -> np.ndarray:
    """Learned codes of the whole train side for the network in ``ctx``: the fit part's V and
    the validation images' ``sign(u)`` as the start, then one closed-form V update with every
    train image sampled (the network's outputs ``U`` and the labels decide each bit)."""
    U = _encode(ctx.net, ctx.db_in, ctx.device, batch_size)
    V = np.where(U > 0, 1.0, -1.0).astype(np.float32)
    V[fit] = V_fit
    every = np.arange(len(U))
    return update_codes(V, U, None, every, lam, StU=similarity_t_times(ctx.y_db, ctx.y_db, U))


def select_model(
    ctx: _Context,
    config: AHCLConfig,
    work_dir: str | os.PathLike | None,
    resume: bool,
    emit: Progress,
) -> tuple[AHCLConfig, np.ndarray, list[dict[str, Any]], float, list[str], dict[str, Any]]:
    """Train every candidate on the fit part, validate, keep the best; returns the chosen
    resolved configuration, the learned V of the whole train side, the history of every
    candidate, the training seconds, the devices and the ``selection`` record."""
    part, fit, val = _parts(ctx, config)
    cands = candidate_configs(config, len(fit), len(ctx.y_db), cached=ctx.n_frozen > 0)
    tried, history, devices = [], [], []
    best: tuple[str, AHCLConfig, _State] | None = None
    seconds = 0.0
    for name, cfg in cands:
        ckpt = Path(work_dir) / f"select-{name}" / CHECKPOINT_FILE if work_dir else None
        st = run_schedule(ctx, cfg, part, ckpt, resume, emit, tag=name)
        tried.append(_summary(name, cfg, st))
        history += st.history
        devices += [d for d in st.devices if d not in devices]
        seconds += st.seconds
        if best is None or st.best_map > best[2].best_map:
            if best is not None:
                best[2].best_net = best[2].best_V = None
            best = (name, cfg, st)
        else:
            st.best_net = st.best_V = None  # only the leader's weights are kept in memory
    assert best is not None and best[2].best_net is not None and best[2].best_V is not None
    name, cfg, st = best
    ctx.net.load_state_dict(st.best_net)  # type: ignore[arg-type]
    V = complete_codes(ctx, st.best_V, fit, cfg.lam, cfg.batch_size)  # type: ignore[arg-type]
    others = [t for t in tried if t["name"] != name]
    reason = (f"{name}: highest validation mAP ({st.best_map:.4f} at outer iteration {st.best_outer})"
              + ("; " + ", ".join(f"{t['name']} {t['best_val_map']:.4f}" for t in others)
                 if others else "; the only candidate (train side of "
                 f"{len(ctx.y_db)} images, at least the small-archive limit)"))
    selection = {"chosen": name, "reason": reason, "best_val_map": round(st.best_map, 4),
                 "best_outer": st.best_outer, "candidates": tried,
                 "val_fraction": config.val_fraction, "val_seed": config.seed,
                 "n_fit": int(len(fit)), "n_val": int(len(val)),
                 "metric": "mAP of the validation images' sign(u) against the fit part's "
                           "learned V, whole database, Hamming, ties in the store's order",
                 "patience": config.patience, "final": FINAL_RULE}
    log.info("model selection: %s (%s)", name, reason)
    emit({"event": "selection", **{k: selection[k] for k in ("chosen", "reason")}})
    return cfg, V, history, seconds, devices, selection
