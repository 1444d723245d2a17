"""ITQ hashing for archives without labels: frozen backbone → pooled features → PCA + rotation.

Why: AHCL and MiLAN need a class label per image; most archives have none. ITQ (Gong &
Lazebnik, CVPR 2011; :func:`rsir_train.baselines.fit_itq`) learns codes from the features
alone: the frozen ImageNet backbone's pooled features (cached on disk and shared with MiLAN,
:func:`rsir_train.features.pooled_features`), L2-normalised, centred, projected on their top K
principal directions and rotated to minimise the quantization error. The whole encoder is one
ONNX graph like every bundle's::

    uint8 NHWC ─► /255, mean/std ─► backbone ─► pool ─► x / |x| ─► Linear(d, K) = u,  code = u > 0
                                                     └─► fine code (PCA-sign, fitted on the same
                                                         train-side features: issue 20)

The bundle is symmetric (``database: null``: the archive is encoded by the same graph), so
``rsir index BUNDLE ARCHIVE`` and ``Retriever.search`` work as with MiLAN bundles.

Archives: a folder with class sub-folders (the labels only draw the usual per-class split so the
figures compare with the other methods; training never sees them), or, with ``labels="none"``
(or ``"auto"`` on a folder whose images are not in class folders), any folder or CSV of images:
every image is trained on, the bundle records no split and no classes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rsir_sdk.archive import open_archive
from rsir_sdk.splits import Split

from .backbones import Backbone, build_backbone
from .baselines import fit_itq
from .dataset import check_images
from .errors import DataError, EmptyClassError, MissingLabelError
from .features import Normalize, pooled_features
from .fine_code import DEFAULT_FINE_CODE, FineCodeConfig, attach_fine_code
from .pipeline import BundleContents, TrainingData, prepare_data, training_record, write_trained_bundle
from .trainer import Progress, default_device, no_progress

log = logging.getLogger(__name__)

__all__ = ["ITQConfig", "ITQNet", "ITQResult", "LABELS", "train_itq", "train_itq_bundle"]

LABELS = ("auto", "folders", "none")


@dataclass
class ITQConfig:
    """An ITQ run: backbone and preprocessing (straight resize to the crop, as MiLAN's), bits,
    rotation iterations, L2 normalisation of the pooled features, seed (the rotation's start)."""

    bits: int = 64
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    weights: str | None = None
    preprocess: dict[str, Any] | None = None
    iterations: int = 50
    l2_normalize: bool = True
    seed: int = 0
    device: str | None = None
    cache_dir: str | os.PathLike | bool | None = None
    batch_size: int = 64

    def resolved_preprocess(self, backbone: Backbone) -> dict[str, Any]:
        """The backbone's preprocessing with the whole scene resized straight to the crop."""
        from .milan.trainer import MILAN_PREPROCESS

        pre = {**backbone.preprocess, **MILAN_PREPROCESS}
        pre.update(self.preprocess or {})
        pre["scale"] = 1.0 / 255.0
        return {k: pre[k] for k in ("resize", "crop", "interpolation", "scale", "mean", "std")}


class ITQNet(nn.Module):
    """Normalised NCHW images → backbone (pooled) → L2 normalisation → ``Linear(d, K)`` = ``u``."""

    def __init__(self, backbone: Backbone, mean: np.ndarray, projection: np.ndarray,
                 l2_normalize: bool = True):
        super().__init__()
        self.backbone = backbone
        self.l2_normalize = l2_normalize
        self.bits = int(projection.shape[1])
        self.hash_layer = nn.Linear(projection.shape[0], self.bits)
        with torch.no_grad():
            w = torch.as_tensor(projection.T, dtype=torch.float32)
            self.hash_layer.weight.copy_(w)
            self.hash_layer.bias.copy_(-(w @ torch.as_tensor(mean, dtype=torch.float32)))

    def embed_features(self, feats: torch.Tensor) -> torch.Tensor:
        if self.l2_normalize:
            feats = F.normalize(feats, dim=1, eps=1e-12)
        return self.hash_layer(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_features(self.backbone(x))


@dataclass
class ITQResult:
    """The trained encoder, its preprocessing, what it was fitted on, and timings."""

    net: ITQNet
    normalize: Normalize
    preprocess: dict[str, Any]
    train_indices: np.ndarray
    config: ITQConfig
    device: str
    feature_seconds: float
    fit_seconds: float
    feature_cache: str
    metrics: dict[str, float] = field(default_factory=dict)
    #: the train side's pooled features (what the fine code is fitted on, issue 20)
    train_features: np.ndarray | None = field(default=None, repr=False)


def train_itq(archive: Any, train_indices: np.ndarray, config: ITQConfig, *,
              query_indices: np.ndarray | None = None,
              progress: Progress | None = None) -> ITQResult:
    """Pooled features of ``archive`` (cached), ITQ fitted on ``train_indices`` (no labels).

    With ``query_indices`` and a labelled archive, ``metrics`` holds the in-memory figure of the
    AHCL protocol (queries against the encoded train side: ``ahcl_map_torch``), for comparison.
    """
    emit = progress or no_progress
    device = config.device or default_device()
    backbone = build_backbone(config.backbone, config.pretrained, config.weights)
    backbone.eval().requires_grad_(False)
    pre = config.resolved_preprocess(backbone)
    normalize = Normalize(pre["mean"], pre["std"])
    t0 = time.perf_counter()
    with torch.no_grad():
        feats, status = pooled_features(backbone, normalize, archive, pre,
                                        cache_dir=config.cache_dir, device=device,
                                        batch_size=config.batch_size, progress=emit)
    t1 = time.perf_counter()
    x = feats.numpy()
    model = fit_itq(x[train_indices], config.bits, iterations=config.iterations,
                    seed=config.seed, l2_normalize=config.l2_normalize)
    fit_seconds = time.perf_counter() - t1
    net = ITQNet(backbone.cpu(), model.mean, model.projection, config.l2_normalize).eval()
    metrics: dict[str, float] = {}
    if query_indices is not None and len(query_indices) and all(it.label for it in archive.items):
        from .baselines import protocol_map
        from .evaluation import in_tie_order

        labels = np.array([it.label for it in archive.items], dtype=object)
        ids = [it.id for it in archive.items]
        qi, ti = in_tie_order(query_indices, ids), in_tie_order(train_indices, ids)
        metrics["ahcl_map_torch"] = protocol_map(
            model.codes(x[qi]), labels[qi], model.codes(x[ti]), labels[ti], "80-20")
    log.info("ITQ %d bits fitted in %.1fs (features %.1fs, cache %s)", config.bits, fit_seconds,
             t1 - t0, status)
    return ITQResult(net, normalize.cpu(), pre, np.asarray(train_indices), config, device,
                     t1 - t0, fit_seconds, status, metrics, x[train_indices])


def _unlabelled_data(source: str | os.PathLike, skip_corrupt: bool) -> TrainingData:
    """Every image of a folder or CSV, no labels: one "split" with every image on the train side."""
    listing = open_archive(source, label_from="none")
    if listing.invalid:
        bad = "; ".join(f"{f.id}: {f.reason}" for f in listing.invalid[:5])
        raise DataError(f"{len(listing.invalid)} entries of {source} cannot be used: {bad}")
    if not listing.items:
        raise DataError(f"{source} holds no images")
    listing = check_images(listing, skip_corrupt=skip_corrupt)
    split = Split("all", 0, [it.id for it in listing.items], [], listing.fingerprint(), listing.name)
    return TrainingData(Path(source), listing, split)


def itq_data(source: str | os.PathLike, *, labels: str = "auto", split_file: Any = None,
             protocol: str = "80-20", seed: int = 0, skip_corrupt: bool = False) -> TrainingData:
    """The archive as ITQ reads it: labelled (split per class) or not (every image trained on)."""
    if labels not in LABELS:
        raise ValueError(f"labels must be one of {LABELS}, got {labels!r}")
    if labels == "none":
        return _unlabelled_data(source, skip_corrupt)
    try:
        return prepare_data(source, split_file=split_file, protocol=protocol, seed=seed,
                            skip_corrupt=skip_corrupt)
    except (MissingLabelError, DataError) as exc:
        if labels == "folders" or isinstance(exc, EmptyClassError):
            raise  # a labelled archive with a class of no (readable) image: said, not dropped
        root = Path(source)
        folders = root.is_dir() and any(d.is_dir() and not d.name.startswith(".")
                                        for d in root.iterdir())
        # an archive with class folders and one stray file trained unlabelled without a word
        (log.warning if folders or not root.is_dir() else log.info)(
            "training ITQ without labels (no classes, no queries to evaluate): %s; --labels "
            "folders refuses instead", exc)
        return _unlabelled_data(source, skip_corrupt)


def itq_contents(result: ITQResult, data: TrainingData,
                 extra_training: Mapping[str, Any] | None = None) -> BundleContents:
    """The ITQ bundle: symmetric codes ``u > 0``, no database codes, classes when labelled."""
    cfg = result.config
    labelled = bool(data.split.query_ids)
    training = training_record(
        data, protocol="ahcl-" + data.split.protocol if labelled else "none", seed=cfg.seed,
        backbone=cfg.backbone, pretrained=cfg.pretrained,
        frozen="whole backbone + global average pooling (features cached on disk)",
        hyperparameters=dataclasses.asdict(cfg) | {"cache_dir": str(cfg.cache_dir)},
        metrics=result.metrics, history=[], device=result.device,
        train_seconds=result.feature_seconds + result.fit_seconds,
        extra={"labels_used": False, "feature_cache": result.feature_cache,
               "feature_seconds": round(result.feature_seconds, 1),
               "fit_seconds": round(result.fit_seconds, 2), **(extra_training or {})},
    )
    return BundleContents(
        method="itq", net=result.net, normalize=result.normalize, bits=cfg.bits,
        code_threshold=0.0, preprocess=result.preprocess,
        classes=data.archive.classes if labelled else [], training=training,
        doc=f"rsir-sdk ITQ {cfg.bits}-bit encoder ({cfg.backbone}, frozen; no labels used)",
    )


def train_itq_bundle(data: str | os.PathLike, out_dir: str | os.PathLike, config: ITQConfig, *,
                     labels: str = "auto", progress: Progress | None = None,
                     extra_training: Mapping[str, Any] | None = None,
                     fine: FineCodeConfig = DEFAULT_FINE_CODE,
                     **split: Any) -> tuple[ITQResult, dict[str, Any], TrainingData]:
    """Archive → (split) → cached features → ITQ → bundle at ``out_dir``.

    ``split``: ``split_file``, ``protocol`` (default 80-20), ``skip_corrupt``; ignored for an
    unlabelled archive. Returns ``(result, manifest, data)``.
    """
    prepared = itq_data(data, labels=labels, seed=config.seed, **split)
    train_idx, query_idx = prepared.indices()
    result = train_itq(prepared.archive, train_idx, config, query_indices=query_idx,
                       progress=progress)
    contents = attach_fine_code(itq_contents(result, prepared, extra_training), prepared,
                                result.train_features, fine)
    manifest = write_trained_bundle(out_dir, contents, prepared)
    return result, manifest, prepared
