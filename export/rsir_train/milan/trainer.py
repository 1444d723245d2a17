"""MiLAN archive in, bundle out: cached frozen features, head training, ONNX export, evaluation.

The MiLAN method (:mod:`export.milan`) trains only a small hash head on the pooled features of
a frozen ImageNet CNN. This module wraps it into the project's bundle contract
(``docs/bundle.md``), the same way :mod:`export.pipeline` does for AHCL:

1. archive + split (:mod:`export.data`; MiLAN protocol 60/40 by default);
2. pooled backbone features of **every** archive image, computed once and cached on disk, keyed
   by the backbone's weights, the preprocessing and the file list (:func:`pooled_features`), so
   every split, bit length and seed of one archive shares one cache;
3. :func:`~export.milan.train_milan_head` on the train side;
4. one ONNX graph ``uint8 NHWC -> b = sigmoid(...)`` and codes ``b > 0.5`` (through
   :func:`export.onnx_export.export_onnx` with ``threshold=0.5``); no database codes
   (``database: null``, ``symmetric: true``): the archive is encoded by the same graph;
5. optional: :func:`index_archive` (the database side, through ``Retriever.add_images``, the path
   users take) and :func:`evaluate_bundle` under the MiLAN and/or AHCL protocol, with the codes of
   the exported ONNX encoder (``rsir_sdk.Encoder``), optionally through Milvus.

Library code logs and reports progress through a callback; only :func:`run_milan` prints.
Command line (``docs/milan.md``)::

    rsir train milan --data DIR --bits 32 --out BUNDLE --eval [--eval-uri ./eval.db]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .backbones import BACKBONES, Backbone, BackboneError, build_backbone, default_device
from .data import PROTOCOLS, Archive, DataError, Sample, Split, check_images, open_archive, \
    save_split, split_for
from .features import Normalize, default_cache_dir, load_prepared
from .milan import CODE_THRESHOLD, MilanHead, MilanParams, milan_codes, train_milan_head
from .pipeline import versions

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]
SPLIT_FILE = "split.json"
#: split protocol -> evaluation protocol it was drawn for
EVAL_FOR_SPLIT = {"60-40": "milan", "80-20": "ahcl", "50-50": "ahcl"}
MILAN_TOPK = 20
CACHE_FORMAT = "milan-pooled-v1"
#: MiLAN's change to the backbone's preprocessing: resize the whole scene straight to the crop
#: size (no shorter-side resize + centre crop, which cuts the scene's border). On nwpu12 at 32
#: bits this gave mAP@20 0.776 against 0.747 for 256 -> centre 224 (docs/milan.md).
MILAN_PREPROCESS: dict[str, Any] = {"resize": None}


class MilanPipelineError(RuntimeError):
    """The MiLAN pipeline cannot go on (an evaluation that cannot be run as asked, ...)."""


# --------------------------------------------------------------------------- configuration


@dataclass
class MilanConfig:
    """What a MiLAN run needs beyond the archive: backbone, preprocessing, head training.

    ``preprocess`` overrides the backbone's defaults (``resize``, ``crop``, ``mean``, ...);
    ``cache_dir=None`` is :func:`export.features.default_cache_dir`, ``False`` disables the cache.
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

    net: "MilanNet"
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

    @property
    def train_seconds(self) -> float:
        """Feature extraction (0 on a cache hit, nearly) + head training, in seconds."""
        return self.feature_seconds + self.head_seconds


class MilanNet(nn.Module):
    """Normalised NCHW images -> frozen backbone (pooled) -> :class:`MilanHead` -> ``b``.

    The module that :func:`export.onnx_export.export_onnx` wraps with the uint8 NHWC input,
    normalisation and bit packing.
    """

    def __init__(self, backbone: Backbone, head: MilanHead):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.bits = head.bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


# --------------------------------------------------------------------------- feature cache


def backbone_digest(backbone: Backbone) -> str:
    """sha256 of a backbone's name and every parameter and buffer (the whole network)."""
    h = hashlib.sha256(backbone.name.encode())
    for k, v in sorted(backbone.state_dict().items()):
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def pooled_cache_key(backbone: Backbone, preprocess: dict[str, Any], archive: Archive) -> str:
    """Key of the pooled-feature cache: weights + preprocessing + file list (sizes, mtimes).

    Any change to the backbone weights, to the preprocessing (resize, crop, interpolation,
    mean, std) or to the archive's files gives another key, so a stale cache is never read.
    """
    h = hashlib.sha256(CACHE_FORMAT.encode())
    h.update(backbone_digest(backbone).encode())
    h.update(json.dumps(preprocess, sort_keys=True).encode())
    h.update(str(archive.root.resolve()).encode())
    for s in archive.samples:
        st = archive.abspath(s).stat()
        h.update(f"{s.path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


@torch.no_grad()
def pooled_features(
    backbone: Backbone,
    normalize: Normalize,
    archive: Archive,
    preprocess: dict[str, Any],
    *,
    cache_dir: str | os.PathLike | bool | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    progress: Progress | None = None,
) -> tuple[torch.Tensor, str]:
    """Pooled frozen-backbone features of every archive image, ``float32 (n, out_dim)``.

    Returns ``(features, status)`` with ``status`` = ``"hit"`` (read from the cache),
    ``"computed"`` (computed and saved) or ``"off"`` (``cache_dir=False``: computed, not saved).
    Rows follow ``archive.samples``. The cache file is ``<cache_dir>/milan-<backbone>-<key>.npy``
    (:func:`pooled_cache_key`); ``cache_dir=None`` means :func:`default_cache_dir`.

    The backbone runs in eval mode (BatchNorm with its ImageNet statistics), as in the exported
    encoder, on the runtime's own decoding and cropping (:func:`export.features.load_prepared`).
    """
    emit = progress or (lambda event: None)
    path = None
    if cache_dir is not False:
        folder = Path(cache_dir) if cache_dir not in (None, True) else default_cache_dir()
        key = pooled_cache_key(backbone, preprocess, archive)
        path = folder / f"milan-{backbone.name}-{key}.npy"
        if path.is_file():
            feats = np.load(path, allow_pickle=False)
            if feats.shape[0] == len(archive):
                log.info("pooled features: cache hit %s", path)
                emit({"event": "cache_hit", "path": str(path)})
                return torch.from_numpy(feats.astype(np.float32, copy=False)), "hit"
            log.warning("pooled features: cache %s has %d rows for %d images; recomputing",
                        path, feats.shape[0], len(archive))
    was_training = backbone.training
    backbone.eval().to(device)
    normalize = normalize.to(device)
    chunks = []
    n = len(archive)
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(n, start + batch_size))
        imgs = torch.from_numpy(load_prepared(archive, idx, preprocess)).to(device)
        chunks.append(backbone(normalize(imgs)).to(torch.float32).cpu())
        emit({"event": "cache_progress", "done": int(idx[-1]) + 1, "total": n})
    backbone.train(was_training)
    feats_t = torch.cat(chunks) if chunks else torch.zeros(0, backbone.out_dim)
    if path is None:
        return feats_t, "off"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")  # concurrent runs: no clash
    np.save(tmp, feats_t.numpy())
    os.replace(tmp, path)
    log.info("pooled features: saved cache %s (%.1f MB)", path, feats_t.numel() * 4 / 1e6)
    emit({"event": "cache_saved", "path": str(path)})
    return feats_t, "computed"


# --------------------------------------------------------------------------- training


def _torch_metrics(codes: np.ndarray, labels: np.ndarray, train_idx: np.ndarray,
                   query_idx: np.ndarray) -> dict[str, float]:
    """Both protocols' metrics on codes of the cached features (torch, before export)."""
    from rsir_sdk.metrics import mean_average_precision

    out: dict[str, float] = {}
    if len(query_idx) > 1:
        cq, yq = codes[query_idx], labels[query_idx]
        out["milan_map@20_torch"] = mean_average_precision(cq, yq, cq, yq, topk=MILAN_TOPK,
                                                           exclude_self=True)
        out["ahcl_map_torch"] = mean_average_precision(cq, yq, codes[train_idx], labels[train_idx])
    return out


def train_milan(
    archive: Archive,
    split: Split,
    config: MilanConfig,
    *,
    progress: Progress | None = None,
) -> MilanResult:
    """Cache the frozen features of ``archive`` and train the MiLAN head on ``split``'s train side.

    Progress events: ``cache_hit`` / ``cache_progress`` / ``cache_saved`` (features), then
    ``iteration`` (every ``params.log_every`` iterations, with the losses). The result's
    ``metrics`` are computed in torch on the cached features (``*_torch``); the published
    numbers come from the exported encoder (:func:`evaluate_bundle`).
    """
    emit = progress or (lambda event: None)
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
        raise MilanPipelineError("the split's train side is empty")
    labels = archive.labels()

    history: list[dict[str, Any]] = []

    def on_step(step: int, total: int, losses: dict[str, float]) -> None:
        record = {"iteration": step, **losses, "seconds": time.perf_counter() - t1}
        history.append(record)
        emit({"event": "iteration", "iterations": total, **record})

    t1 = time.perf_counter()
    head = train_milan_head(feats[torch.as_tensor(train_idx)], labels[train_idx], config.bits,
                            params, progress=on_step)
    head_seconds = time.perf_counter() - t1
    head = head.cpu().eval()
    metrics = _torch_metrics(milan_codes(head, feats), labels, train_idx, query_idx)
    log.info("MiLAN head trained in %.1fs (features %.1fs, cache %s): %s", head_seconds,
             feature_seconds, status, metrics)
    return MilanResult(
        net=MilanNet(backbone.cpu(), head).eval(), normalize=normalize.cpu(),
        preprocess=preprocess, train_indices=train_idx, query_indices=query_idx,
        classes=archive.classes, config=config, device=device, feature_seconds=feature_seconds,
        head_seconds=head_seconds, feature_cache=status, history=history, metrics=metrics,
    )


# --------------------------------------------------------------------------- bundle


def split_protocol_name(split: Split) -> str:
    """``milan-60-40`` for the MiLAN split, ``ahcl-80-20`` / ``ahcl-50-50`` for AHCL's."""
    return f"{EVAL_FOR_SPLIT.get(split.protocol, 'custom')}-{split.protocol}"


def build_milan_bundle(
    result: MilanResult,
    out_dir: str | os.PathLike,
    *,
    archive: Archive,
    split: Split,
    extra_training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export ``result``'s net (codes ``b > 0.5``) and write a symmetric bundle, no database."""
    from rsir_sdk.preprocess import crop_size

    from .bundle import write_bundle
    from .onnx_export import export_onnx

    cfg = result.config
    h, w = crop_size(result.preprocess)
    model = export_onnx(result.net, result.normalize, cfg.bits, h, w, CODE_THRESHOLD,
                        doc=f"rsir-sdk MiLAN {cfg.bits}-bit encoder ({cfg.backbone}, frozen)")
    hyper = {**cfg.params.to_dict(), "bits": cfg.bits, "device": result.device,
             "feature_batch_size": cfg.batch_size}
    training = {
        "dataset": archive.name,
        "archive_root": str(archive.root),
        "archive_fingerprint": archive.fingerprint(),
        "split_file": SPLIT_FILE,
        "protocol": split_protocol_name(split),
        "seed": cfg.params.seed,
        "backbone": cfg.backbone,
        "pretrained": cfg.pretrained,
        "frozen": "whole backbone + global average pooling (features cached on disk)",
        "feature_dim": int(result.net.head.in_dim),
        "hyperparameters": hyper,
        "metrics": dict(result.metrics),
        "history": result.history,
        "versions": versions(),
        "device": result.device,
        "train_seconds": round(result.train_seconds, 1),
        "feature_seconds": round(result.feature_seconds, 1),
        "head_seconds": round(result.head_seconds, 1),
        "feature_cache": result.feature_cache,
        "n_train": int(len(result.train_indices)),
        "n_query": int(len(result.query_indices)),
        "skipped": [list(x) for x in archive.skipped],
        "date": time.strftime("%Y-%m-%d"),
    }
    training.update(extra_training or {})
    manifest = {
        "format_version": 1,
        "method": "milan",
        "bits": cfg.bits,
        "code_threshold": CODE_THRESHOLD,
        "bit_order": "big",
        "preprocess": result.preprocess,
        "classes": result.classes,
        "database": None,
        "symmetric": True,
        "training": training,
        "parent": None,
    }
    written = write_bundle(out_dir, model, manifest, None)
    save_split(split, Path(out_dir) / SPLIT_FILE)
    return written


def train_milan_bundle(
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: MilanConfig,
    *,
    split_file: str | os.PathLike | None = None,
    protocol: str = "60-40",
    skip_corrupt: bool = False,
    progress: Progress | None = None,
    extra_training: dict[str, Any] | None = None,
) -> tuple[MilanResult, dict[str, Any], Archive, Split]:
    """The whole job: archive → checked images → split → features → head → bundle at ``out_dir``.

    The split is read from ``split_file`` when it exists, else drawn with ``protocol`` and the
    head's seed (and written there). Returns ``(result, manifest, archive, split)``.
    """
    archive = check_images(open_archive(data), skip_corrupt=skip_corrupt)
    split = split_for(archive, split_file, protocol, config.params.seed)
    result = train_milan(archive, split, config, progress=progress)
    manifest = build_milan_bundle(result, out_dir, archive=archive, split=split,
                                  extra_training=extra_training)
    return result, manifest, archive, split


def update_manifest_metrics(out_dir: str | os.PathLike, metrics: dict[str, Any]) -> dict:
    """Merge ``metrics`` into ``training.metrics`` of a written bundle (the model is untouched)."""
    from .bundle import MANIFEST_FILE

    path = Path(out_dir) / MANIFEST_FILE
    m = json.loads(path.read_text(encoding="utf-8"))
    m.setdefault("training", {}).setdefault("metrics", {}).update(metrics)
    path.write_text(json.dumps(m, indent=2), encoding="utf-8")
    return m


# --------------------------------------------------------------------------- ingestion


def side_samples(archive: Archive, split: Split, side: str) -> list[Sample]:
    """Samples of one side of ``split``, sorted by id (= Milvus' tie order).

    ``side``: ``train``, ``query``, ``all``, or ``database`` = the retrieval archive of the
    split's protocol (MiLAN 60/40: the test side, which is query set and archive at once;
    AHCL 80/20 or 50/50: the train side).
    """
    if side == "database":
        side = "query" if EVAL_FOR_SPLIT.get(split.protocol) == "milan" else "train"
    by_id = {s.id: s for s in archive.samples}
    if side == "train":
        ids = split.train_ids
    elif side == "query":
        ids = split.query_ids
    elif side == "all":
        ids = list(by_id)
    else:
        raise ValueError(f"side must be train, query, all or database, got {side!r}")
    split.indices(archive)  # raises SplitError when the split belongs to another archive
    return [by_id[i] for i in sorted(ids)]


def _add_samples(retriever: Any, archive: Archive, samples: Sequence[Sample],
                 batch_size: int) -> int:
    return retriever.add_images(
        [archive.abspath(s) for s in samples], ids=[s.id for s in samples],
        labels=[s.label for s in samples], paths=[s.path for s in samples],
        batch_size=batch_size,
    )


def index_archive(
    bundle: str | os.PathLike,
    archive: Archive | str | os.PathLike,
    split: Split | str | os.PathLike | None,
    uri: str,
    collection: str | None = None,
    *,
    side: str = "database",
    token: str | None = None,
    threads: int | None = None,
    batch_size: int = 64,
) -> tuple[str, int]:
    """Ingest archive images into Milvus with the bundle's encoder, via ``Retriever.add_images``.

    For symmetric bundles (MiLAN) this is how the database codes come to exist: the same ONNX
    encoder that codes queries codes the archive, through the same call users make.
    ``split=None`` (or ``side="all"``) indexes the whole archive; otherwise ``side`` picks
    ``train``, ``query`` or ``database`` (see :func:`side_samples`). The collection defaults to
    ``<method>_<bits>_<encoder_id>``. Returns ``(collection, number of items written)``.

    >>> index_archive("bundle/", "data/nwpu12", "bundle/split.json", "./rsir.db")  # doctest: +SKIP
    ('milan_32_3f2a...', 960)
    """
    from rsir_sdk.retriever import Retriever

    from .data import load_split

    arch = archive if isinstance(archive, Archive) else open_archive(archive)
    if split is None:
        samples = sorted(arch.samples, key=lambda s: s.id)
    else:
        sp = split if isinstance(split, Split) else load_split(split, arch)
        samples = side_samples(arch, sp, side)
    with Retriever.from_bundle(bundle, uri=uri, collection=collection, token=token,
                               threads=threads, batch_size=batch_size) as r:
        n = _add_samples(r, arch, samples, batch_size)
        log.info("indexed %d images into %s at %s", n, r.store.collection, uri)
        return r.store.collection, n


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class EvalTask:
    """One protocol's evaluation: queries, database (sorted by id), top-k and leave-one-out."""

    protocol: str  # "milan" | "ahcl"
    queries: list[Sample]
    database: list[Sample]
    topk: int | None
    leave_one_out: bool

    @property
    def metric(self) -> str:
        """``mAP@20`` (MiLAN) or ``mAP`` (AHCL, whole database)."""
        return f"mAP@{self.topk}" if self.topk else "mAP"

    @property
    def key(self) -> str:
        """Metric key in the bundle manifest: ``milan_map@20`` or ``ahcl_map``."""
        return f"{self.protocol}_map" + (f"@{self.topk}" if self.topk else "")


def eval_task(archive: Archive, split: Split, protocol: str, topk: int = MILAN_TOPK) -> EvalTask:
    """The evaluation of ``protocol`` on ``split``.

    - ``milan``: the query (test) side is query set and archive at once, leave-one-out,
      mAP@``topk`` normalised by the relevant items retrieved (MiLAN protocol on a 60/40 split);
    - ``ahcl``: queries = query side, database = train side encoded by the network, mAP over the
      whole database (AHCL protocol on an 80/20 split).

    The database is sorted by id, so the metric's tie rule (database index) is Milvus' (id).
    """
    if protocol == "milan":
        test = side_samples(archive, split, "query")
        return EvalTask("milan", test, test, int(topk), True)
    if protocol == "ahcl":
        return EvalTask("ahcl", side_samples(archive, split, "query"),
                        side_samples(archive, split, "train"), None, False)
    raise ValueError(f"protocol must be 'milan' or 'ahcl', got {protocol!r}")


def _ap_of_ranking(relevant: np.ndarray, topk: int | None) -> float:
    """AP of one ranked relevance list (whole list, or @k normalised by the hits in the top k)."""
    rel = np.asarray(relevant, dtype=bool)[: topk if topk else None]
    hits = np.cumsum(rel)
    if hits.size == 0 or hits[-1] == 0:
        return 0.0
    return float((hits / np.arange(1, rel.size + 1))[rel].sum() / hits[-1])


def _milvus_metric(bundle: Any, archive: Archive, task: EvalTask, uri: str,
                   collection: str | None, token: str | None, threads: int | None,
                   batch_size: int) -> float:
    """The task's metric through Milvus: add_images(database), search_batch(queries, k = all)."""
    from rsir_sdk.retriever import Retriever
    from rsir_sdk.store import MAX_TOPK

    name = collection or f"eval_{task.protocol}_{bundle.bits}_{bundle.encoder_id}"
    n_db = len(task.database)
    k = min(n_db, MAX_TOPK)
    if task.topk is None and n_db > MAX_TOPK:
        raise MilanPipelineError(
            f"mAP over the whole database needs every item ranked; Milvus returns at most "
            f"{MAX_TOPK} and the database holds {n_db}: evaluate in memory instead"
        )
    r = Retriever(bundle, uri=uri, collection=name, token=token, threads=threads,
                  batch_size=batch_size)
    try:
        if r.count():
            r.store.drop()  # a stale evaluation collection: start from an empty one
            r.close()
            r = Retriever(bundle, uri=uri, collection=name, token=token, threads=threads,
                          batch_size=batch_size)
        _add_samples(r, archive, task.database, batch_size)
        if r.count() != n_db:
            raise MilanPipelineError(f"collection {name} holds {r.count()} items, not {n_db}")
        aps = []
        for start in range(0, len(task.queries), 100):
            chunk = task.queries[start : start + 100]
            results = r.search_batch([archive.abspath(s) for s in chunk], k=k,
                                     batch_size=batch_size)
            for q, hits in zip(chunk, results):
                ranked = [h for h in hits if not (task.leave_one_out and h.id == q.id)]
                aps.append(_ap_of_ranking(np.array([h.label == q.label for h in ranked]),
                                          task.topk))
        return float(np.mean(aps)) if aps else 0.0
    finally:
        r.close()


def evaluate_bundle(
    bundle: str | os.PathLike,
    archive: Archive | str | os.PathLike,
    split: Split | str | os.PathLike,
    protocols: Sequence[str] = ("milan",),
    *,
    topk: int = MILAN_TOPK,
    milvus_uri: str | None = None,
    milvus_collection: str | None = None,
    token: str | None = None,
    threads: int | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Evaluate a bundle's ONNX encoder (``rsir_sdk.Encoder``) under the given protocols.

    Returns ``{"milan_map@20": ..., "ahcl_map": ..., "n_queries_<p>": ..., "n_database_<p>":
    ..., "encoder_id": ...}``. With ``milvus_uri`` each metric is computed a second time through
    Milvus (``Retriever.add_images`` of the database, ``search_batch`` of the queries, the whole
    database ranked) as ``<key>_milvus``; :class:`MilanPipelineError` when the two differ by more
    than 1e-9. Each image is encoded once for the in-memory metrics.

    >>> evaluate_bundle("b/", "data/nwpu12", "b/split.json", ["milan"])  # doctest: +SKIP
    {'milan_map@20': 0.81, 'n_queries_milan': 960, 'n_database_milan': 960, ...}
    """
    from rsir_sdk.bundle import Bundle
    from rsir_sdk.encoder import Encoder
    from rsir_sdk.metrics import mean_average_precision

    from .data import load_split

    b = Bundle.load(bundle)
    arch = archive if isinstance(archive, Archive) else open_archive(archive)
    sp = split if isinstance(split, Split) else load_split(split, arch)
    tasks = [eval_task(arch, sp, p, topk) for p in protocols]
    needed = sorted({s.id: s for t in tasks for s in t.queries + t.database}.values(),
                    key=lambda s: s.id)
    enc = Encoder(b, threads=threads, batch_size=batch_size)
    t0 = time.perf_counter()
    codes = enc.encode([arch.abspath(s) for s in needed])
    row = {s.id: i for i, s in enumerate(needed)}
    out: dict[str, Any] = {"encoder_id": b.encoder_id, "encode_seconds":
                           round(time.perf_counter() - t0, 1), "n_encoded": len(needed)}
    for t in tasks:
        q = codes[[row[s.id] for s in t.queries]]
        d = codes[[row[s.id] for s in t.database]]
        yq = [s.label for s in t.queries]
        yd = [s.label for s in t.database]
        qi = [row_db for row_db in range(len(t.database))] if t.leave_one_out else None
        out[t.key] = mean_average_precision(q, yq, d, yd, topk=t.topk,
                                            exclude_self=t.leave_one_out, query_indices=qi)
        out[f"n_queries_{t.protocol}"] = len(t.queries)
        out[f"n_database_{t.protocol}"] = len(t.database)
        if milvus_uri:
            t1 = time.perf_counter()
            via = _milvus_metric(b, arch, t, milvus_uri, milvus_collection, token, threads,
                                 batch_size)
            out[f"{t.key}_milvus"] = via
            out[f"milvus_seconds_{t.protocol}"] = round(time.perf_counter() - t1, 1)
            if abs(via - out[t.key]) > 1e-9:
                raise MilanPipelineError(
                    f"{t.metric} through Milvus ({via:.6f}) differs from the in-memory metric "
                    f"({out[t.key]:.6f}) on the same encoder codes"
                )
    return out


# --------------------------------------------------------------------------- results


def result_records(manifest: dict[str, Any], metrics: dict[str, Any], command: str,
                   protocols: Sequence[str], topk: int = MILAN_TOPK) -> list[dict[str, Any]]:
    """One results record per evaluated protocol (``runs/milan_results.json`` format)."""
    tr = manifest.get("training", {})
    out = []
    for p in protocols:
        key = f"{p}_map" + (f"@{topk}" if p == "milan" else "")
        if key not in metrics:
            continue
        out.append({
            "method": "milan",
            "protocol": "milan" if p == "milan" else "ahcl",
            "split": tr.get("protocol"),
            "dataset": tr.get("dataset"),
            "bits": manifest["bits"],
            "metric": f"mAP@{topk}" if p == "milan" else "mAP",
            "value": round(float(metrics[key]), 4),
            "value_torch": round(float(tr.get("metrics", {}).get(f"{key}_torch", float("nan"))), 4),
            "milvus_checked": f"{key}_milvus" in metrics,
            "backbone": tr.get("backbone"),
            "iterations": tr.get("hyperparameters", {}).get("iterations"),
            "seed": tr.get("seed"),
            "device": tr.get("device"),
            "train_seconds": tr.get("train_seconds"),
            "feature_seconds": tr.get("feature_seconds"),
            "head_seconds": tr.get("head_seconds"),
            "feature_cache": tr.get("feature_cache"),
            "encoder_id": manifest["model_sha256"][:16],
            "command": command,
            "date": tr.get("date"),
        })
    return out


def append_results(path: str | os.PathLike, records: Sequence[dict[str, Any]]) -> list[dict]:
    """Append records to a JSON list file; a record with the same (protocol, dataset, bits,
    split, iterations, backbone, seed) replaces the older one. Returns the whole list."""
    path = Path(path)
    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    ident = ("method", "protocol", "split", "dataset", "bits", "iterations", "backbone", "seed")
    new_keys = {tuple(r.get(k) for k in ident) for r in records}
    merged = [r for r in old if tuple(r.get(k) for k in ident) not in new_keys] + list(records)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=1), encoding="utf-8")
    return merged


# --------------------------------------------------------------------------- command line


def add_milan_parser(methods: Any) -> argparse.ArgumentParser:
    """Add the ``milan`` sub-command to ``train``'s sub-parsers (``export.cli``)."""
    defaults = MilanParams()
    m = methods.add_parser(
        "milan", help="MiLAN: hash head on frozen ImageNet features, symmetric codes (b > 0.5)",
        description="Train a MiLAN hash head on cached frozen backbone features and write a "
                    "symmetric bundle (no database codes: the archive is encoded by the model).",
    )
    m.add_argument("--data", default=os.environ.get("RSIR_DATA"),
                   help="archive: folder with one sub-folder per class, or a CSV manifest; "
                        "default $RSIR_DATA")
    m.add_argument("--bits", type=int, default=32)
    m.add_argument("--out", required=True, help="bundle folder to write")
    m.add_argument("--split-file", help="split JSON: read if it exists, else drawn and written")
    m.add_argument("--protocol", default="60-40", choices=sorted(PROTOCOLS),
                   help="split to draw when no split file exists: 60-40 (MiLAN protocol, "
                        "default) or 80-20 / 50-50 (AHCL protocol)")
    m.add_argument("--iterations", type=int, default=defaults.iterations)
    m.add_argument("--lr", type=float, default=defaults.lr)
    m.add_argument("--margin", type=float, default=defaults.margin, help="triplet margin alpha")
    m.add_argument("--push-weight", type=float, default=defaults.push_weight, help="beta")
    m.add_argument("--balance-weight", type=float, default=defaults.balance_weight, help="gamma")
    m.add_argument("--triplets", type=int, default=defaults.triplets_per_batch,
                   help="triplets per iteration")
    m.add_argument("--miner", default=defaults.miner, choices=["random", "batch-hard", "semi-hard"],
                   help="random = the authors' sampler; the miners are options")
    m.add_argument("--seed", type=int, default=0, help="head init, triplets and the split")
    m.add_argument("--backbone", default="efficientnet_lite0", choices=list(BACKBONES))
    m.add_argument("--weights", help="local weights file (resnet18: a torchvision state dict)")
    m.add_argument("--no-pretrained", action="store_true", help="random init (tests only)")
    m.add_argument("--resize", type=int,
                   help="resize the shorter side to this, then centre-crop (default 0: resize "
                        "the whole image straight to the crop size)")
    m.add_argument("--crop", type=int, help="square centre crop size (default per backbone)")
    m.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when present)")
    m.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    m.add_argument("--batch-size", type=int, default=64, help="feature extraction / encoding batch")
    m.add_argument("--cache-dir",
                   help="feature cache folder (default $RSIR_CACHE or ~/.cache/rsir-sdk/features)")
    m.add_argument("--no-cache", action="store_true", help="do not cache features on disk")
    m.add_argument("--eval", nargs="?", const="auto", choices=["auto", "milan", "ahcl", "both"],
                   help="evaluate the exported encoder: auto = the split's protocol (60-40: MiLAN "
                        "mAP@20 leave-one-out on the test side; 80-20/50-50: AHCL mAP, queries vs "
                        "the encoded train side), or milan / ahcl / both")
    m.add_argument("--eval-uri",
                   help="also evaluate through Milvus at this URI (./eval.db = Milvus Lite): "
                        "Retriever.add_images + search_batch, checked equal to in memory")
    m.add_argument("--index", metavar="URI",
                   help="ingest the archive into Milvus at URI with the new encoder "
                        "(Retriever.add_images)")
    m.add_argument("--collection", help="collection for --index (default <method>_<bits>_<id>)")
    m.add_argument("--index-side", default="database",
                   choices=["database", "train", "query", "all"],
                   help="what --index ingests: database = the split's retrieval archive")
    m.add_argument("--results", help="append result records of --eval to this JSON list")
    m.add_argument("--skip-corrupt", action="store_true",
                   help="leave out unreadable images (reported) instead of stopping")
    m.add_argument("--log-every", type=int, default=defaults.log_every)
    m.add_argument("-q", "--quiet", action="store_true")
    m.set_defaults(func=run_milan)
    return m


def config_from_args(args: argparse.Namespace) -> MilanConfig:
    """Turn parsed ``train milan`` arguments into a :class:`MilanConfig`."""
    pre: dict[str, Any] = {}
    if args.resize is not None:
        pre["resize"] = args.resize if args.resize > 0 else None
    if args.crop is not None:
        pre["crop"] = [args.crop, args.crop]
    build_backbone(args.backbone, pretrained=False)  # a typo fails before any data is read
    device = args.device or default_device()
    params = MilanParams(
        margin=args.margin, push_weight=args.push_weight, balance_weight=args.balance_weight,
        lr=args.lr, iterations=args.iterations, triplets_per_batch=args.triplets,
        miner=args.miner, seed=args.seed, device=device, log_every=args.log_every,
    )
    return MilanConfig(
        bits=args.bits, backbone=args.backbone, pretrained=not args.no_pretrained,
        weights=args.weights, preprocess=pre or None, params=params, device=device,
        cache_dir=False if args.no_cache else args.cache_dir, batch_size=args.batch_size,
    )


def _printer(quiet: bool) -> Progress:
    def show(event: dict[str, Any]) -> None:
        if quiet:
            return
        kind = event.get("event")
        if kind == "iteration":
            print(f"iteration {event['iteration']}/{event['iterations']}: loss={event['loss']:.4f} "
                  f"(triplet {event['triplet']:.4f}, push {event['push']:.4f}, balance "
                  f"{event['balance']:.5f}) {event['seconds']:.0f}s", flush=True)
        elif kind == "cache_progress" and (event["done"] == event["total"]
                                           or event["done"] % 512 < 64):
            print(f"frozen features {event['done']}/{event['total']}", flush=True)
        elif kind in ("cache_hit", "cache_saved"):
            print(f"feature {kind.replace('_', ' ')}: {event['path']}", flush=True)
    return show


def run_milan(args: argparse.Namespace) -> int:
    """``train milan``: train, export, write the bundle; then evaluate / index when asked."""
    from rsir_sdk.errors import RsirError

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not args.data:
        print("error: --data (or $RSIR_DATA) is required", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    argv = getattr(args, "_argv", None) or sys.argv[1:]
    command = "python -m export " + shlex.join(argv)
    protocols: list[str] = []
    try:
        config = config_from_args(args)
        t0 = time.perf_counter()
        result, manifest, archive, split = train_milan_bundle(
            args.data, args.out, config, split_file=args.split_file, protocol=args.protocol,
            skip_corrupt=args.skip_corrupt, progress=_printer(args.quiet),
            extra_training={"command": command},
        )
        if not args.quiet:
            print(f"bundle written to {args.out} in {time.perf_counter() - t0:.0f}s (encoder "
                  f"{manifest['model_sha256'][:16]}, features {result.feature_cache})")
            for k, v in result.metrics.items():
                print(f"  {k}: {v:.4f}")
        if args.eval:
            auto = EVAL_FOR_SPLIT.get(split.protocol, "ahcl")
            protocols = {"auto": [auto], "both": ["milan", "ahcl"]}.get(args.eval, [args.eval])
            threads = args.threads
            metrics = evaluate_bundle(args.out, archive, split, protocols,
                                      milvus_uri=args.eval_uri, threads=threads,
                                      batch_size=args.batch_size)
            manifest = update_manifest_metrics(args.out, metrics)
            if not args.quiet:
                for k, v in metrics.items():
                    print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")
            if args.results:
                append_results(args.results, result_records(manifest, metrics, command, protocols))
        if args.index:
            name, n = index_archive(args.out, archive, split, args.index, args.collection,
                                    side=args.index_side, threads=args.threads,
                                    batch_size=args.batch_size)
            if not args.quiet:
                print(f"indexed {n} images into {name} at {args.index}")
    except (DataError, BackboneError, MilanPipelineError, RsirError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (until wired into ``export.cli``): ``python -m export.milan_pipeline
    --data DIR --bits 32 --out BUNDLE``."""
    parser = argparse.ArgumentParser(prog="python -m export.milan_pipeline")
    sub = parser.add_subparsers(dest="method", required=True)
    add_milan_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(["milan", *argv])
    args._argv = ["train", "milan", *argv]
    return run_milan(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
