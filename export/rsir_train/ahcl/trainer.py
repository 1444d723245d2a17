"""The AHCL trainer: outer iterations of network epochs followed by the closed-form V update.

Library code: it logs through :mod:`logging` and reports progress through an optional
callback (``progress(event: dict)``), never prints. It checkpoints after every outer iteration
(:func:`rsir_train.trainer.save_checkpoint`) and resumes from the checkpoint when asked; it is
seeded end to end. In-memory metrics are :func:`rsir_sdk.metrics.mean_average_precision`.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsir_sdk.archive import ArchiveListing
from rsir_sdk.codes import pack_codes
from rsir_sdk.metrics import mean_average_precision
from rsir_sdk.splits import Split

from ..backbones import build_backbone, stage_modules
from ..errors import TrainingError
from ..features import Normalize
from ..progress_log import SHOWN
from ..trainer import (
    CHECKPOINT_FILE,
    Progress,
    default_device,
    load_checkpoint,
    no_progress,
    save_checkpoint,
    seed_everything,
    validation_indices,
)
from .config import SMALL_ARCHIVE, AHCLConfig, epoch_lr, identity
from .inputs import Inputs, autocast, build_inputs, device_name, encode, use_amp
from .model import AHCLNet, ahcl_loss, similarity_t_times, update_codes

log = logging.getLogger(__name__)

__all__ = ["AHCLConfig", "AHCLResult", "TrainingError", "device_name", "train_ahcl"]


@dataclass
class AHCLResult:
    """What training produced: the network, learned database codes and its history."""

    net: AHCLNet
    normalize: Normalize
    preprocess: dict[str, Any]
    V: np.ndarray  # float32 (n_train, bits) in {-1, +1}
    train_indices: np.ndarray
    query_indices: np.ndarray
    classes: list[str]
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    device: str = "cpu"
    config: AHCLConfig | None = None
    #: model selection on the validation split (empty when the schedule was trained as given)
    selection: dict[str, Any] = field(default_factory=dict)


def _set_train_mode(net: AHCLNet, n_frozen: int) -> None:
    net.train()
    for i in range(n_frozen):
        for m in stage_modules(net.backbone, i):
            m.eval()  # frozen BatchNorm keeps its ImageNet statistics


def _map(query_u: np.ndarray, query_labels: np.ndarray, db_signs: np.ndarray,
         db_labels: np.ndarray) -> float:
    """mAP of ``sign(u)`` queries against a database of signs, whole database, Hamming ranking."""
    return float(mean_average_precision(pack_codes(query_u > 0), query_labels,
                                        pack_codes(db_signs > 0), db_labels))


@dataclass
class _State:
    """What an outer iteration changes, and what a checkpoint saves; with a validation part
    also the best validated network and codes so far (``best_*``), the validation curve and
    whether patience ran out (``stopped``)."""

    net: AHCLNet
    opt: torch.optim.Optimizer
    V: np.ndarray
    rng: np.random.Generator
    history: list[dict[str, Any]]
    outer_done: int = 0
    seconds_before: float = 0.0
    devices: list[str] = field(default_factory=list)  # where the outer iterations ran
    best_map: float = -1.0
    best_outer: int = 0
    best_net: dict[str, torch.Tensor] | None = None
    best_V: np.ndarray | None = None
    bad: int = 0
    curve: list[list[float]] = field(default_factory=list)
    stopped: bool = False
    seconds: float = 0.0

    def done(self, config: AHCLConfig) -> bool:
        return self.stopped or self.outer_done >= (config.outer or 0)

    def checkpoint(self, config: AHCLConfig, train_ids: list[str], seconds: float) -> dict[str, Any]:
        return {
            "config": identity(config), "train_ids": train_ids,
            "net": self.net.state_dict(),
            # a finished run is never trained further: its optimizer state is not kept
            "optimizer": None if self.done(config) else self.opt.state_dict(), "V": self.V,
            "rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            "history": self.history, "outer_done": self.outer_done,
            "train_seconds": self.seconds_before + seconds, "devices": self.devices,
            "best": {"map": self.best_map, "outer": self.best_outer, "net": self.best_net,
                     "V": self.best_V, "bad": self.bad, "curve": self.curve,
                     "stopped": self.stopped},
        }

    def restore(self, ck: dict[str, Any]) -> None:
        self.net.load_state_dict(ck["net"])
        if ck.get("optimizer") is not None:
            self.opt.load_state_dict(ck["optimizer"])
        self.V = ck["V"]
        self.rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        self.history = ck["history"]
        self.outer_done = ck["outer_done"]
        self.seconds_before = ck["train_seconds"]
        self.devices = list(ck.get("devices") or [])
        best = ck.get("best") or {}
        self.best_map, self.best_outer = best.get("map", -1.0), best.get("outer", 0)
        self.best_net, self.best_V = best.get("net"), best.get("V")
        self.bad, self.curve = best.get("bad", 0), list(best.get("curve") or [])
        self.stopped = bool(best.get("stopped", False))


def _similarity(y_rows: torch.Tensor, y_db: torch.Tensor) -> torch.Tensor:
    """:func:`rsir_train.ahcl.model.similarity` on the training device (1 / ``-r``)."""
    same = y_rows[:, None] == y_db[None, :]
    n_sim = same.sum()
    n_dis = same.numel() - n_sim
    r = torch.where(n_dis > 0, n_sim / n_dis.clamp(min=1), torch.zeros((), device=same.device))
    return torch.where(same, torch.ones((), device=same.device), -r).to(torch.float32)


def _outer_iteration(st: _State, outer: int, config: AHCLConfig, db_in: Inputs,
                     y_db: np.ndarray, n_frozen: int, device: str, amp: bool) -> dict[str, Any]:
    """Network epochs on a sample of the database, then the closed-form V update."""
    assert config.inner is not None and config.outer is not None
    t_it = time.perf_counter()
    n, bits = st.V.shape
    m = n if not config.num_samples else min(n, config.num_samples)
    sample = np.sort(st.rng.permutation(n)[:m])
    U = np.zeros((m, bits), dtype=np.float32)
    V_t = torch.from_numpy(st.V).to(device)
    y_db_t = torch.as_tensor(y_db, device=device)
    sums = {"pairwise": 0.0, "quantization": 0.0, "classification": 0.0, "loss": 0.0}
    steps = 0
    lrs = []
    for inner in range(config.inner):
        lr = epoch_lr(config, outer * config.inner + inner, config.outer * config.inner)
        lrs.append(lr)
        for g in st.opt.param_groups:
            g["lr"] = lr
        _set_train_mode(st.net, n_frozen)
        order = st.rng.permutation(m)
        for b in range(0, m, config.batch_size):
            pos = order[b : b + config.batch_size]
            rows = sample[pos]
            if len(rows) < 2:
                continue  # BatchNorm cannot train on one image
            rows_t = torch.as_tensor(rows, device=device)
            with autocast(device, amp):
                u, logits = st.net(db_in.batch(rows, device), db_in.start_stage)
            u, logits = u.float(), logits.float()
            loss, terms = ahcl_loss(u, logits, y_db_t[rows_t], V_t, V_t[rows_t],
                                    _similarity(y_db_t[rows_t], y_db_t), config.lam, config.gamma)
            st.opt.zero_grad(set_to_none=True)
            loss.backward()
            st.opt.step()
            U[pos] = u.detach().cpu().numpy()
            for k, v in terms.items():
                sums[k] += v
            sums["loss"] += float(loss.detach())
            steps += 1
    t_v = time.perf_counter()
    st.V = update_codes(st.V, U, None, sample, config.lam,
                        StU=similarity_t_times(y_db[sample], y_db, U))
    now = time.perf_counter()
    return {"outer": outer + 1, "lr": lrs[0], **{k: v / max(steps, 1) for k, v in sums.items()},
            "seconds": now - t_it, "v_update_seconds": now - t_v}




@dataclass
class _Context:
    """What every schedule of one run shares: the network (and its initial weights, so every
    candidate starts alike), the train side's and the queries' inputs, labels and ids."""

    net: AHCLNet
    init_state: dict[str, torch.Tensor]
    normalize: Normalize
    preprocess: dict[str, Any]
    n_frozen: int
    device: str
    amp: bool
    db_in: Inputs
    q_in: Inputs
    train_idx: np.ndarray
    query_idx: np.ndarray
    y_db: np.ndarray
    y_q: np.ndarray
    train_ids: list[str]
    prep_seconds: float


@dataclass
class _Part:
    """What one schedule trains on: a database (the whole train side, or its fit part) and,
    when selecting, the validation images held out of it, scored against the database's codes
    listed in the store's tie order (``order``)."""

    db_in: Inputs
    y_db: np.ndarray
    ids: list[str]
    val_in: Inputs | None = None
    y_val: np.ndarray | None = None
    order: np.ndarray | None = None


def _prepare(archive: ArchiveListing, split: Split, config: AHCLConfig,
             emit: Progress) -> tuple[_Context, AHCLConfig]:
    """Seed, build the network, read (or cache) the inputs of both split sides; returns the
    context and ``config`` resolved for the whole train side."""
    seed_everything(config.seed)
    device = config.device or default_device()
    t0 = time.perf_counter()
    backbone = build_backbone(config.backbone, config.pretrained, config.weights)
    preprocess = config.resolved_preprocess(backbone)
    normalize = Normalize(preprocess["mean"], preprocess["std"])
    labels_all = archive.labels()
    train_idx, query_idx = split.indices(archive)
    if len(train_idx) == 0:
        raise TrainingError("the split's train side is empty")
    n_frozen = backbone.frozen_stages(config.freeze_blocks)
    config = config.resolved(len(train_idx), cached=n_frozen > 0)
    net = AHCLNet(backbone, config.bits, len(archive.classes)).to(device)
    db_in, q_in = build_inputs(backbone, normalize, n_frozen, archive, train_idx, query_idx,
                          preprocess, config, device, emit)
    if db_in.channels_last:
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    prep_seconds = time.perf_counter() - t0
    log.info("inputs ready in %.1fs (%d frozen stages)", prep_seconds, n_frozen)
    return _Context(
        net=net, init_state=copy.deepcopy(net.state_dict()), normalize=normalize,
        preprocess=preprocess, n_frozen=n_frozen, device=device,
        amp=use_amp(config, device), db_in=db_in, q_in=q_in, train_idx=train_idx,
        query_idx=query_idx, y_db=labels_all[train_idx], y_q=labels_all[query_idx],
        train_ids=[archive.items[int(i)].id for i in train_idx], prep_seconds=prep_seconds,
    ), config


def _validate(st: _State, ctx: _Context, cfg: AHCLConfig, part: _Part, outer: int) -> float:
    """Score the network on the validation part (mAP of its codes against the database's
    learned V, whole database, Hamming ranking, ties in the store's order); keep the best."""
    assert part.val_in is not None and part.y_val is not None and part.order is not None
    uv = encode(st.net, part.val_in, ctx.device, cfg.batch_size, ctx.amp)
    value = _map(uv, part.y_val, st.V[part.order], part.y_db[part.order])
    st.curve.append([outer, round(value, 4)])
    if value > st.best_map:
        st.best_map, st.best_outer, st.bad = value, outer, 0
        st.best_net = {k: v.detach().clone() for k, v in st.net.state_dict().items()}
        st.best_V = st.V.copy()
    else:
        st.bad += 1
        st.stopped = bool(cfg.patience) and st.bad >= cfg.patience
    return value


def run_schedule(ctx: _Context, cfg: AHCLConfig, part: _Part, ckpt_path: Path | None,
                 resume: bool, emit: Progress, tag: str | None = None,
                 stop_at: int | None = None) -> _State:
    """Train the resolved schedule ``cfg`` on ``part`` from the context's initial weights,
    checkpointing after every outer iteration (resumed from ``ckpt_path`` with ``resume``);
    with a validation part, validate every ``val_every`` outer iterations and stop when
    patience runs out. ``tag`` names the candidate in the history and progress events.
    ``stop_at``: stop after that many outer iterations, the lr still following the whole
    schedule of ``cfg.outer`` (a refit to the epoch a selection chose)."""
    assert cfg.outer is not None
    stop = cfg.outer if stop_at is None else max(1, min(cfg.outer, stop_at))
    seed_everything(cfg.seed)
    ctx.net.load_state_dict(ctx.init_state)
    params = [p for p in ctx.net.parameters() if p.requires_grad]
    st = _State(ctx.net, torch.optim.SGD(params, lr=cfg.lr or 0.0, momentum=cfg.momentum or 0.0,
                                         weight_decay=cfg.weight_decay),
                np.zeros((len(part.y_db), cfg.bits), dtype=np.float32),
                np.random.default_rng(cfg.seed), [])
    if resume and ckpt_path is not None:
        ck = load_checkpoint(ckpt_path, config=identity(cfg), train_ids=part.ids)
        if ck is not None:
            st.restore(ck)
            emit({"event": "resumed", "outer_done": st.outer_done,
                  **({"candidate": tag} if tag else {})})
        else:  # --resume with nothing to resume: said, so a fresh run is not a surprise
            log.info("no checkpoint at %s: %s starts from the beginning", ckpt_path,
                     tag or "training")
    t_train = time.perf_counter()
    here = device_name(ctx.device)
    val_every = cfg.val_every or max(1, math.ceil(cfg.outer / 20))
    for outer in range(st.outer_done, stop):
        if st.stopped:
            break
        if here not in st.devices:
            st.devices.append(here)
        record = _outer_iteration(st, outer, cfg, part.db_in, part.y_db, ctx.n_frozen,
                                  ctx.device, ctx.amp)
        last = outer + 1 == stop
        if part.val_in is not None and ((outer + 1) % val_every == 0 or last):
            record["val_map"] = _validate(st, ctx, cfg, part, outer + 1)
        if cfg.eval_every and ((outer + 1) % cfg.eval_every == 0 or last):
            record["map_query"] = _map(encode(st.net, ctx.q_in, ctx.device, cfg.batch_size,
                                               ctx.amp), ctx.y_q, st.V, part.y_db)
        st.history.append({**record, **({"candidate": tag} if tag else {})})
        st.outer_done = outer + 1
        log.info("%souter %d/%d: %s", f"[{tag}] " if tag else "", outer + 1, stop,
                 ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "outer"),
                 extra=SHOWN)
        if ckpt_path is not None:
            save_checkpoint(ckpt_path, st.checkpoint(cfg, part.ids, time.perf_counter() - t_train))
        emit({"event": "outer", **record, "of": stop, **({"candidate": tag} if tag else {})})
    st.seconds = st.seconds_before + time.perf_counter() - t_train
    return st


def _final_metrics(ctx: _Context, V: np.ndarray, batch_size: int) -> dict[str, float]:
    """The query side against the exported model's codes (float32, as the exported graph):
    queries by sign(u); database = learned V (and, for reference, sign(u))."""
    net = ctx.net.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    uq = encode(net, ctx.q_in, ctx.device, batch_size)
    udb = encode(net, ctx.db_in, ctx.device, batch_size)
    metrics: dict[str, float] = {}
    if len(ctx.query_idx):
        metrics["map_query_vs_learned_db"] = _map(uq, ctx.y_q, V, ctx.y_db)
        metrics["map_query_vs_encoded_db"] = _map(uq, ctx.y_q, udb, ctx.y_db)
        logits = net.classifier(torch.from_numpy(uq).to(ctx.device))
        metrics["query_accuracy"] = float((logits.argmax(1).cpu().numpy() == ctx.y_q).mean())
    metrics["db_code_agreement"] = float(((udb > 0) == (V > 0)).mean())
    net.eval()
    return metrics


def train_ahcl(
    archive: ArchiveListing,
    split: Split,
    config: AHCLConfig,
    *,
    work_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> AHCLResult:
    """Train AHCL on ``split``'s train side (= the database); evaluate on its query side.

    With the ``auto`` schedule (and ``select="auto"``, the default) the model is chosen on a
    validation split of the train side (:mod:`rsir_train.ahcl.selection`): the best validated
    epoch count is chosen, a small archive also chooses between schedules (on a few validation
    folds), the choice is refit on the whole train side, and the result's ``selection`` says
    what was chosen and why. An explicit schedule is trained as given on the
    whole train side, its last epoch kept. Fields left ``None`` are resolved from the train
    side's size and the path (:meth:`AHCLConfig.resolved`); the result carries the resolved
    configuration. ``work_dir`` holds the checkpoints (written after every outer iteration);
    with ``resume`` training continues from them, on any device (a finished checkpoint only
    evaluates and exports). Returns an :class:`AHCLResult`.
    """
    emit = progress or no_progress
    if len(archive.classes) < 2:  # before features are computed: nothing to learn from
        raise ValueError(
            f"AHCL learns its codes from classes, and the archive holds one "
            f"({', '.join(map(repr, archive.classes)) or 'none'}): give two or more class "
            f"folders, or train a label-free ITQ bundle (rsir train itq)")
    ctx, resolved = _prepare(archive, split, config, emit)
    # select="auto" selects on small archives only: a full-size train side trains the auto
    # schedule as measured in docs/results.md (select="on" selects at any size); a train side
    # with one image a class has nothing to hold out: trained as given
    small = len(ctx.y_db) < SMALL_ARCHIVE or config.select == "on"
    selects = config.selects and small and len(validation_indices(
        ctx.y_db, config.val_fraction, config.seed)[1]) > 0
    selection: dict[str, Any] = {}
    if selects:
        from .selection import select_model

        resolved, V, history, seconds, devices, selection = select_model(
            ctx, config, work_dir, resume, emit)
    else:
        if config.candidates is not None:  # asked for, but nothing is chosen: say so, once
            why = ("a schedule or its values were set by hand, or --select off"
                   if not config.selects else
                   f"its train side has {len(ctx.y_db)} images (selection runs under "
                   f"{SMALL_ARCHIVE} unless --select on)" if not small else
                   "no class has an image to hold out for validation")
            log.warning("candidates %s not used: this run does not select (%s)",
                        ",".join(config.candidates), why)
        elif config.schedule == "auto" and config.select == "auto" and config.hand_set:
            log.info("no model selection: a schedule value was set by hand (--lr, --epochs, "
                     "...), so it is trained as given; --select on validates it")
        ckpt = Path(work_dir) / CHECKPOINT_FILE if work_dir else None
        st = run_schedule(ctx, resolved, _Part(ctx.db_in, ctx.y_db, ctx.train_ids), ckpt,
                          resume, emit)
        V, history, seconds, devices = st.V, st.history, st.seconds, st.devices
    train_seconds = ctx.prep_seconds + seconds
    metrics = _final_metrics(ctx, V, resolved.batch_size)
    if selection:
        metrics["val_map"] = float(selection["val_map"])
    emit({"event": "done", "metrics": metrics, "train_seconds": train_seconds})
    return AHCLResult(
        net=ctx.net.cpu(), normalize=ctx.normalize.cpu(), preprocess=ctx.preprocess, V=V,
        train_indices=ctx.train_idx, query_indices=ctx.query_idx, classes=archive.classes,
        history=history, metrics=metrics, train_seconds=train_seconds,
        device=", ".join(devices) or device_name(ctx.device), config=resolved,
        selection=selection,
    )
