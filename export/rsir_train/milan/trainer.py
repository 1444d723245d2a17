"""Training MiLAN: the hash head on precomputed features, and the whole run on an archive.

:func:`train_milan_head` trains a :class:`~rsir_train.milan.model.MilanHead` on features (any
source); :func:`train_milan` runs it on an archive and split: pooled features of the frozen
backbone (cached, :func:`rsir_train.features.pooled_features`), the head on the train side,
and the in-memory metrics of both protocols on the cached features (``*_torch``, for
comparison: the published numbers come from the exported encoder through
:func:`rsir_sdk.evaluate.evaluate_bundle`).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rsir_sdk.archive import ArchiveListing
from rsir_sdk.metrics import mean_average_precision
from rsir_sdk.splits import Split

from ..backbones import Backbone, build_backbone
from ..errors import TrainingError
from ..evaluation import archive_map, in_tie_order
from ..features import Normalize, pooled_features
from ..folds import SMALL_ARCHIVE
from ..trainer import Progress, default_device, no_progress, validation_indices
from .model import VAL_METRICS, MilanHead, MilanNet, MilanParams, milan_codes, milan_loss
from .triplets import TripletSampler, mine_triplets

log = logging.getLogger(__name__)

__all__ = ["MILAN_PREPROCESS", "MilanConfig", "MilanResult", "train_milan",
           "resolve_val_metric", "train_milan_head", "validation_indices", "validation_so_far"]

#: called as ``progress(iteration, iterations, losses)`` by :func:`train_milan_head`
ProgressFn = Callable[[int, int, dict[str, float]], None]
#: MiLAN's change to the backbone's preprocessing: resize the whole scene straight to the crop
#: size (no shorter-side resize + centre crop, which cuts the scene's border). On nwpu12 at 32
#: bits this gave mAP@20 0.776 against 0.747 for 256 -> centre 224 (docs/milan.md).
MILAN_PREPROCESS: dict[str, Any] = {"resize": None}


def resolve_val_metric(metric: str, protocol: str | None) -> str:
    """``"auto"`` -> ``"archive"`` on a 60-40 split (the MiLAN protocol), else ``"database"``."""
    if metric == "auto":
        return "archive" if protocol == "60-40" else "database"
    if metric not in VAL_METRICS:
        raise ValueError(f"val_metric must be auto, database or archive, not {metric!r}")
    return metric


def _val_map(head: MilanHead, fit_x: torch.Tensor, fit_y: np.ndarray, val_x: torch.Tensor,
             val_y: np.ndarray, metric: str = "database") -> float:
    """The validation figure (:attr:`MilanParams.val_metric`): ``database`` = mAP of the
    validation codes against the fit part's codes (whole fit part ranked); ``archive`` = the
    validation codes ranked among themselves, leave-one-out, mAP@20 (the MiLAN protocol's
    metric on images the head never saw).

    Both tie-aware (in expectation over every order of tied codes, :mod:`rsir_sdk.tie_aware`):
    with ties ranked by index the figure of a head whose codes tie (a class on one code) would
    depend on the order the validation images are listed in, class by class, and that order
    penalises tied heads by several points of mAP@20 (docs/training.md, section Ties).
    """
    val_codes = milan_codes(head, val_x)
    if metric == "archive":
        return archive_map(val_codes, val_y, ties="expected")
    return float(mean_average_precision(val_codes, val_y, milan_codes(head, fit_x), fit_y,
                                        ties="expected"))


def train_milan_head(
    features: torch.Tensor,
    labels: Sequence,
    bits: int,
    params: MilanParams | None = None,
    progress: ProgressFn | None = None,
    validation: tuple[torch.Tensor, Sequence] | None = None,
    report: dict[str, Any] | None = None,
) -> MilanHead:
    """Train a :class:`MilanHead` on precomputed (frozen-backbone) features.

    Args:
        features: ``(n, d)`` float features of the training images (CPU or CUDA tensor).
        labels: ``n`` class labels, any hashable values.
        bits: code length K, a multiple of 8.
        params: hyper-parameters (default: the authors').
        progress: called as ``progress(iteration, iterations, losses)`` every
            ``params.log_every`` iterations and at the last, with ``losses`` the float values
            of ``loss``, ``triplet``, ``push``, ``balance`` on that batch.
        validation: ``(features, labels)`` of held-out images: every ``params.val_every``
            iterations they are scored by ``params.val_metric`` (``auto`` means ``database``
            here: their codes ranked against those of ``features``, mAP; :func:`train_milan`
            resolves it from the split's protocol), the best head is kept and training stops
            after ``params.patience`` evaluations without improvement (0: runs all
            iterations, still keeping the best head).
        report: filled with ``val_metric``, ``best_iteration``, ``best_val_map``,
            ``stopped_at`` and the validation curve ``val_curve`` (``[[iteration, value],
            ...]``) when ``validation``.

    Returns the head in eval mode on the training device. Deterministic for a given seed on a
    given device: the weights are initialised from ``params.seed`` (on CPU, so CPU and CUDA
    runs start alike) and the batches come from a numpy generator with the same seed; the
    global torch RNG is left untouched.
    """
    params = params or MilanParams()
    params = params.resolved_validation(len(labels), len(labels))
    every = int(params.val_every or 0)
    features = torch.as_tensor(features)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(
            f"features must be (n, d) with one label per row, got shape {tuple(features.shape)} "
            f"and {len(labels)} labels"
        )
    device = torch.device(params.device) if params.device else features.device
    x = features.detach().to(device=device, dtype=torch.float32)
    run = _HeadRun(x, labels, bits, params, device)
    watch = None
    if validation is not None:
        watch = _Watch(run.scored, x, np.asarray(labels, dtype=object), validation, params,
                       device)
    step = 0
    for step in range(1, params.iterations + 1):
        parts = run.step(step)
        stop = (watch is not None and (step % every == 0 or step == params.iterations)
                and watch.check(step))
        if progress is not None and (step % params.log_every == 0 or step == params.iterations
                                     or stop):
            # this step's validation included (the line before showed the one before it)
            progress(step, params.iterations, {**parts, **(watch.shown() if watch else {})})
        if stop:
            break
    head = run.head
    if watch is None and run.averaged is not None:
        head.load_state_dict(run.averaged.head.state_dict())
    if watch is not None:
        head.load_state_dict(watch.best_state)  # of the averaged head when averaging
        if report is not None:
            report.update(watch.report(step))
    return head.eval()


class _HeadRun:
    """One head's training state: the head, its Polyak average, the auxiliary classifier,
    the optimizer, the triplet sampler and the input-dropout generator (seeded, the global
    torch RNG untouched)."""

    def __init__(self, x: torch.Tensor, labels: Sequence, bits: int, params: MilanParams,
                 device: torch.device):
        self.x, self.params = x, params
        self.sampler = TripletSampler(labels, seed=params.seed,
                                      triplets_per_batch=params.triplets_per_batch)
        self.class_ids = torch.as_tensor(self.sampler.class_ids, device=device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(params.seed)
            head = MilanHead(x.shape[1], bits, params.hidden, params.negative_slope)
        self.head = head.to(device).train()
        # the Polyak average (params.ema_decay): what is validated and returned when on
        self.averaged = _Average(self.head, params.ema_decay) if params.ema_decay else None
        self.scored = self.averaged.head if self.averaged is not None else self.head
        # the auxiliary label classifier on b (params.classifier_weight): trained, never exported
        self.classifier = None
        trainable = list(self.head.parameters())
        if params.classifier_weight:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(params.seed + 1)
                self.classifier = nn.Linear(bits, int(self.class_ids.max()) + 1).to(device)
            trainable += list(self.classifier.parameters())
        self.optimizer = torch.optim.Adam(trainable, lr=params.lr, betas=params.betas,
                                          weight_decay=params.weight_decay)
        self.gen = torch.Generator(device=device).manual_seed(params.seed)

    def _drop(self, batch: torch.Tensor) -> torch.Tensor:
        p = self.params.input_dropout
        if not p:
            return batch
        keep = torch.rand(batch.shape, generator=self.gen, device=batch.device) >= p
        return batch * keep / (1.0 - p)

    def step(self, step: int) -> dict[str, float]:
        """One iteration (a batch, the loss, an Adam step); returns the loss terms."""
        params, device = self.params, self.x.device
        if params.miner == "random":
            triplets = torch.as_tensor(self.sampler.sample(), device=device)
            idx = triplets.T.reshape(-1)
            b = self.head(self._drop(self.x[idx]))
            anchor, positive, negative = b.view(3, len(triplets), -1)
            loss, parts = milan_loss(anchor, positive, negative, params)
        else:
            idx = torch.as_tensor(
                self.sampler.pk_batch(params.classes_per_batch, params.items_per_class),
                device=device)
            b = self.head(self._drop(self.x[idx]))
            a, p, n = mine_triplets(b, self.class_ids[idx], params.margin, params.miner)
            loss, parts = milan_loss(b[a], b[p], b[n], params, batch=b)
        if self.classifier is not None:  # b: one row per image of the batch, idx: rows of x
            ce = F.cross_entropy(self.classifier(b), self.class_ids[idx])
            loss = loss + params.classifier_weight * ce
            # the objective shown is the one optimised (it left the classifier's term out)
            parts = {**parts, "loss": loss.detach(), "ce": ce.detach()}
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.averaged is not None:
            self.averaged.update(self.head, step)
        return {k: float(v) for k, v in parts.items()}


class _Watch:
    """Validation of a head during training: the figure every ``val_every`` iterations, the
    best head's weights, patience."""

    def __init__(self, scored: MilanHead, fit_x: torch.Tensor, fit_y: np.ndarray,
                 validation: tuple[torch.Tensor, Sequence], params: MilanParams,
                 device: torch.device):
        self.scored, self.fit_x, self.fit_y, self.params = scored, fit_x, fit_y, params
        self.val_x = torch.as_tensor(validation[0]).to(device=device, dtype=torch.float32)
        self.val_y = np.asarray(validation[1], dtype=object)
        self.metric = resolve_val_metric(params.val_metric, None)
        self.best_map, self.best_step, self.bad = -1.0, 0, 0
        self.best_state = {k: v.detach().clone() for k, v in scored.state_dict().items()}
        self.curve: list[list[float]] = []

    def score(self, step: int) -> float:
        """The validation figure of the head at ``step``, added to the curve."""
        value = _val_map(self.scored, self.fit_x, self.fit_y, self.val_x, self.val_y,
                         self.metric)
        self.curve.append([step, round(value, 4)])
        return value

    def check(self, step: int) -> bool:
        """Validate at ``step``; keep the head when best; True when patience ran out."""
        value = self.score(step)
        if value > self.best_map:
            self.best_map, self.best_step, self.bad = value, step, 0
            self.best_state = {k: v.detach().clone() for k, v in self.scored.state_dict().items()}
            return False
        self.bad += 1
        return bool(self.params.patience) and self.bad >= self.params.patience

    def shown(self) -> dict[str, float]:
        """The validation so far, for the progress lines (:func:`validation_so_far`)."""
        return validation_so_far(self.curve, self.best_map, self.best_step)

    def report(self, stopped_at: int) -> dict[str, Any]:
        return {"val_metric": self.metric, "best_iteration": self.best_step,
                "best_val_map": round(self.best_map, 4), "stopped_at": stopped_at,
                "val_curve": self.curve}


def validation_so_far(curve: list[list[float]], best: float, best_step: int) -> dict[str, float]:
    """What a progress line shows of the validation: the last figure of ``curve``, the best
    and its iteration (nothing before the first validation)."""
    if not curve:
        return {}
    return {"val_map": curve[-1][1], "best_val_map": round(best, 4), "best_iteration": best_step}


class _Average:
    """An exponential moving average of a head's weights (Polyak averaging).

    The decay ramps up as ``min(decay, (1 + t) / (10 + t))`` at iteration ``t`` so that the
    average is not held near the random initialisation for the first thousand iterations.
    """

    def __init__(self, head: MilanHead, decay: float):
        self.decay = float(decay)
        self.head = copy.deepcopy(head).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, head: MilanHead, step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        for mine, theirs in zip(self.head.parameters(), head.parameters()):
            mine.mul_(d).add_(theirs.detach(), alpha=1.0 - d)


@dataclass
class MilanConfig:
    """What a MiLAN run needs beyond the archive: backbone, preprocessing, head training.

    ``preprocess`` overrides the backbone's defaults (``resize``, ``crop``, ``mean``, ...);
    ``cache_dir=None`` is :func:`rsir_train.features.default_cache_dir`, ``False`` disables the cache.
    """

    bits: int = 32
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    weights: str | None = None  # local weights file (resnet18); None: the backbone's default
    preprocess: dict[str, Any] | None = None
    params: MilanParams = field(default_factory=MilanParams)
    device: str | None = None
    cache_dir: str | os.PathLike | bool | None = None
    batch_size: int = 64  # feature extraction

    def resolved_preprocess(self, backbone: Backbone) -> dict[str, Any]:
        """This run's preprocessing: the backbone's, resized straight to the crop (MiLAN's
        default, :data:`MILAN_PREPROCESS`), overridden by ``preprocess``."""
        pre = {**backbone.preprocess, **MILAN_PREPROCESS}
        pre.update(self.preprocess or {})
        pre["scale"] = 1.0 / 255.0
        return {k: pre[k] for k in ("resize", "crop", "interpolation", "scale", "mean", "std")}


@dataclass
class MilanResult:
    """What training produced: the exportable net, its preprocessing, split indices, history."""

    net: MilanNet
    normalize: Normalize
    preprocess: dict[str, Any]
    train_indices: np.ndarray
    query_indices: np.ndarray
    classes: list[str]
    config: MilanConfig
    device: str
    feature_seconds: float
    head_seconds: float
    feature_cache: str  # "hit" | "computed" | "off"
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    #: model selection on the validation split (empty for the authors' run)
    selection: dict[str, Any] = field(default_factory=dict)

    @property
    def train_seconds(self) -> float:
        """Feature extraction (0 on a cache hit, nearly) + head training, in seconds."""
        return self.feature_seconds + self.head_seconds


def _torch_metrics(codes: np.ndarray, labels: np.ndarray, train_idx: np.ndarray,
                   query_idx: np.ndarray, ids: Sequence[str]) -> dict[str, float]:
    """Both protocols' metrics on codes of the cached features (torch, before export), each
    side in the store's tie order (as the figures through Milvus)."""
    out: dict[str, float] = {}
    train_idx, query_idx = in_tie_order(train_idx, ids), in_tie_order(query_idx, ids)
    if len(query_idx) > 1:
        cq, yq = codes[query_idx], labels[query_idx]
        out["milan_map@20_torch"] = archive_map(cq, yq)
        out["ahcl_map_torch"] = mean_average_precision(cq, yq, codes[train_idx], labels[train_idx])
    return out


def _choose_head(feats: torch.Tensor, labels: np.ndarray, train_idx: np.ndarray, bits: int,
                 params: MilanParams, protocol: str | None,
                 on_step: ProgressFn) -> tuple[MilanHead, dict[str, Any]]:
    """The head of a run and its ``selection`` record: on a small train side chosen on
    validation folds and refit (:mod:`rsir_train.milan.selection`); otherwise on one
    ``val_fraction`` split (best head kept, refit with ``params.refit``); with
    ``val_fraction=0`` the authors' run (``params.iterations``, last head, empty record)."""
    selection: dict[str, Any] = {}
    if params.val_fraction <= 0:
        head = train_milan_head(feats[torch.as_tensor(train_idx)], labels[train_idx], bits,
                                params, progress=on_step)
        return head, selection
    params = replace(params, val_metric=resolve_val_metric(params.val_metric, protocol))  # type: ignore[arg-type]
    if len(train_idx) < SMALL_ARCHIVE and params.val_folds > 1:
        from .selection import select_on_folds

        return select_on_folds(feats[torch.as_tensor(train_idx)], labels[train_idx], bits,
                               params, params.val_folds, progress=on_step)
    fit, val = validation_indices(labels[train_idx], params.val_fraction, params.seed)
    fit_idx, val_idx = train_idx[fit], train_idx[val]
    params = params.resolved_validation(len(train_idx), len(fit))
    head = train_milan_head(feats[torch.as_tensor(fit_idx)], labels[fit_idx], bits, params,
                            progress=on_step,
                            validation=(feats[torch.as_tensor(val_idx)], labels[val_idx]),
                            report=selection)
    selection.update(n_fit=int(len(fit_idx)), n_val=int(len(val_idx)),
                     val_every=int(params.val_every or 0), patience=params.patience)
    selection["reason"] = (f"best {selection['val_metric']} validation mAP "
                           f"{selection['best_val_map']:.4f} on {len(val_idx)} held-out images "
                           f"at iteration {selection['best_iteration']} (stopped at "
                           f"{selection['stopped_at']})")
    if params.refit:
        selection["refit_iterations"] = max(1, int(selection["best_iteration"]))
        selection["reason"] += (f"; refit {selection['refit_iterations']} iterations on all "
                                f"{len(train_idx)} training images")
        head = train_milan_head(feats[torch.as_tensor(train_idx)], labels[train_idx], bits,
                                replace(params, iterations=selection["refit_iterations"]))
    return head, selection


def check_triplet_classes(archive: ArchiveListing, split: Split, miner: str) -> None:
    """Refuse, before any feature is computed, a training side MiLAN cannot make triplets of
    (a tiny or one-class archive failed late, with "min() arg is an empty sequence" or a label
    index): two classes, each of two images or more unless ``--miner random``."""
    by_id = archive.by_id()
    sizes: dict[str, int] = {}
    for item_id in split.train_ids:
        label = by_id[item_id].label if item_id in by_id else None
        if label is not None:
            sizes[label] = sizes.get(label, 0) + 1
    pairs = [c for c, n in sizes.items() if n >= 2]  # an anchor needs a positive
    if (len(pairs) >= 2) or (miner == "random" and len(sizes) >= 2 and pairs):
        return
    shown = ", ".join(f"{c} ({n})" for c, n in sorted(sizes.items())[:6]) or "none"
    need = ("2 classes, one of 2 or more training images" if miner == "random"
            else "2 classes with 2 or more training images each (or --miner random)")
    raise TrainingError(f"MiLAN learns from triplets of images of two classes: its training side "
                        f"needs {need}; it holds {shown}")


def train_milan(
    archive: ArchiveListing,
    split: Split,
    config: MilanConfig,
    *,
    progress: Progress | None = None,
) -> MilanResult:
    """Cache the frozen features of ``archive`` and train the MiLAN head on ``split``'s train side.

    Progress events: ``cache_hit`` / ``cache_progress`` / ``cache_saved`` (features), then
    ``iteration`` (every ``params.log_every`` iterations, with the losses). The result's
    ``metrics`` are computed in torch on the cached features (``*_torch``); the published
    numbers come from the exported encoder (:func:`rsir_sdk.evaluate.evaluate_bundle`).
    """
    check_triplet_classes(archive, split, config.params.miner)
    emit = progress or no_progress
    device = config.device or default_device()
    params = config.params if config.params.device else replace(config.params, device=device)
    with torch.random.fork_rng(devices=[]):  # small_cnn is random init: make it seed-determined
        torch.manual_seed(params.seed)
        extra = {"weights": config.weights} if config.weights else {}
        backbone = build_backbone(config.backbone, config.pretrained, **extra)
    backbone.eval().requires_grad_(False)
    preprocess = config.resolved_preprocess(backbone)
    normalize = Normalize(preprocess["mean"], preprocess["std"])

    t0 = time.perf_counter()
    feats, status = pooled_features(
        backbone, normalize, archive, preprocess, cache_dir=config.cache_dir, device=device,
        batch_size=config.batch_size, progress=emit,
    )
    feature_seconds = time.perf_counter() - t0
    train_idx, query_idx = split.indices(archive)
    if len(train_idx) == 0:
        raise TrainingError("the split's train side is empty")
    labels = archive.labels()

    history: list[dict[str, Any]] = []

    def on_step(step: int, total: int, losses: dict[str, float]) -> None:
        record = {"iteration": step, **losses, "seconds": time.perf_counter() - t1}
        history.append(record)
        emit({"event": "iteration", "iterations": total, **record})

    t1 = time.perf_counter()
    head, selection = _choose_head(feats, labels, train_idx, config.bits, params,
                                   split.protocol, on_step)
    if selection:
        emit({"event": "selection", "chosen": f"head at iteration {selection['best_iteration']}",
              "reason": selection["reason"]})
    head_seconds = time.perf_counter() - t1
    head = head.cpu().eval()
    metrics = _torch_metrics(milan_codes(head, feats), labels, train_idx, query_idx,
                             [it.id for it in archive.items])
    log.info("MiLAN head trained in %.1fs (features %.1fs, cache %s): %s", head_seconds,
             feature_seconds, status, metrics)
    return MilanResult(
        net=MilanNet(backbone.cpu(), head).eval(), normalize=normalize.cpu(),
        preprocess=preprocess, train_indices=train_idx, query_indices=query_idx,
        classes=archive.classes, config=config, device=device, feature_seconds=feature_seconds,
        head_seconds=head_seconds, feature_cache=status, history=history, metrics=metrics,
        selection=selection,
    )
