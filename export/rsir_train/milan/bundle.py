"""MiLAN archive in, bundle out: the shared pipeline with MiLAN's trainer and bundle contents.

The bundle holds one ONNX graph ``uint8 NHWC -> b = sigmoid(...)``, codes ``b > 0.5``
(:func:`rsir_train.onnx_export.export_onnx` with ``threshold=0.5``), and no database codes
(``database: null``, ``symmetric: true``): the archive is encoded by the same graph.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from rsir_sdk.preprocess import crop_size
from rsir_sdk.splits import Split

from ..onnx_export import export_onnx
from ..pipeline import TrainingData, bundle_manifest, prepare_data, training_record, write_trained_bundle
from ..trainer import Progress
from .model import CODE_THRESHOLD
from .trainer import MilanConfig, MilanResult, train_milan

__all__ = ["EVAL_FOR_SPLIT", "build_milan_bundle", "split_protocol_name", "train_milan_bundle"]

#: split protocol -> the evaluation protocol it was drawn for
EVAL_FOR_SPLIT = {"60-40": "milan", "80-20": "ahcl", "50-50": "ahcl"}


def split_protocol_name(split: Split) -> str:
    """``milan-60-40`` for the MiLAN split, ``ahcl-80-20`` / ``ahcl-50-50`` for AHCL's.

    :func:`rsir_sdk.evaluate.evaluate_bundle` reads it: ``milan-*`` bundles are evaluated
    leave-one-out on the query side, the others against the train side.
    """
    return f"{EVAL_FOR_SPLIT.get(split.protocol, 'custom')}-{split.protocol}"


def build_milan_bundle(
    result: MilanResult,
    out_dir: str | os.PathLike,
    data: TrainingData,
    *,
    extra_training: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Export ``result``'s net (codes ``b > 0.5``) and write a symmetric bundle, no database."""
    cfg = result.config
    h, w = crop_size(result.preprocess)
    model = export_onnx(result.net, result.normalize, cfg.bits, h, w, CODE_THRESHOLD,
                        doc=f"rsir-sdk MiLAN {cfg.bits}-bit encoder ({cfg.backbone}, frozen)")
    training = training_record(
        data, protocol=split_protocol_name(data.split), seed=cfg.params.seed,
        backbone=cfg.backbone, pretrained=cfg.pretrained,
        frozen="whole backbone + global average pooling (features cached on disk)",
        hyperparameters={**cfg.params.to_dict(), "bits": cfg.bits, "device": result.device,
                         "feature_batch_size": cfg.batch_size},
        metrics=result.metrics, history=result.history, device=result.device,
        train_seconds=result.train_seconds,
        extra={"feature_dim": int(result.net.head.in_dim),
               "feature_seconds": round(result.feature_seconds, 1),
               "head_seconds": round(result.head_seconds, 1),
               "feature_cache": result.feature_cache, **(extra_training or {})},
    )
    manifest = bundle_manifest(method="milan", bits=cfg.bits, code_threshold=CODE_THRESHOLD,
                               preprocess=result.preprocess, classes=result.classes,
                               symmetric=True, training=training)
    return write_trained_bundle(out_dir, model, manifest, data)


def train_milan_bundle(
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: MilanConfig,
    *,
    split_file: str | os.PathLike | None = None,
    protocol: str = "60-40",
    skip_corrupt: bool = False,
    progress: Progress | None = None,
    extra_training: Mapping[str, Any] | None = None,
) -> tuple[MilanResult, dict[str, Any], TrainingData]:
    """The whole job: archive → checked images → split → features → head → bundle at ``out_dir``.

    The split is read from ``split_file`` when it exists, else drawn with ``protocol`` and the
    head's seed (and written there). Returns ``(result, manifest, data)``.
    """
    prepared = prepare_data(data, split_file=split_file, protocol=protocol,
                            seed=config.params.seed, skip_corrupt=skip_corrupt)
    result = train_milan(prepared.archive, prepared.split, config, progress=progress)
    manifest = build_milan_bundle(result, out_dir, prepared, extra_training=extra_training)
    return result, manifest, prepared
