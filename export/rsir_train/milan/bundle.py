"""MiLAN archive in, bundle out: the shared pipeline with MiLAN's trainer and bundle contents.

The bundle holds one ONNX graph ``uint8 NHWC -> b = sigmoid(...)``, codes ``b > 0.5``
(:func:`rsir_train.onnx_export.export_onnx` with ``threshold=0.5``), and no database codes
(``database: null``, ``symmetric: true``): the archive is encoded by the same graph.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from rsir_sdk.splits import Split

from ..fine_code import DEFAULT_FINE_CODE, FineCodeConfig, attach_fine_code
from ..pipeline import BundleContents, TrainingData, train_bundle, training_record
from ..trainer import Progress
from .model import CODE_THRESHOLD
from .trainer import MilanConfig, MilanResult, train_milan

__all__ = ["EVAL_FOR_SPLIT", "milan_contents", "split_protocol_name", "train_milan_bundle"]

#: split protocol -> the evaluation protocol it was drawn for
EVAL_FOR_SPLIT = {"60-40": "milan", "80-20": "ahcl", "50-50": "ahcl"}


def split_protocol_name(split: Split) -> str:
    """``milan-60-40`` for the MiLAN split, ``ahcl-80-20`` / ``ahcl-50-50`` for AHCL's.

    :func:`rsir_sdk.evaluate.evaluate_bundle` reads it: ``milan-*`` bundles are evaluated
    leave-one-out on the query side, the others against the train side.
    """
    return f"{EVAL_FOR_SPLIT.get(split.protocol, 'custom')}-{split.protocol}"


def milan_contents(result: MilanResult, data: TrainingData,
                   extra_training: Mapping[str, Any] | None = None) -> BundleContents:
    """The MiLAN bundle: the encoder (codes ``b > 0.5``), symmetric, no database codes."""
    cfg = result.config
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
               "feature_cache": result.feature_cache, "selection": result.selection,
               **(extra_training or {})},
    )
    return BundleContents(
        method="milan", net=result.net, normalize=result.normalize, bits=cfg.bits,
        code_threshold=CODE_THRESHOLD, preprocess=result.preprocess, classes=result.classes,
        training=training, doc=f"rsir-sdk MiLAN {cfg.bits}-bit encoder ({cfg.backbone}, frozen)",
    )


def train_milan_bundle(
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: MilanConfig,
    *,
    progress: Progress | None = None,
    extra_training: Mapping[str, Any] | None = None,
    fine: FineCodeConfig = DEFAULT_FINE_CODE,
    **split: Any,
) -> tuple[MilanResult, dict[str, Any], TrainingData]:
    """The whole job: archive → checked images → split → features → head → bundle at ``out_dir``.

    ``split``: ``split_file``, ``protocol`` (default ``60-40``, MiLAN's), ``skip_corrupt`` (see
    :func:`rsir_train.pipeline.prepare_data`); the split is seeded by the head's seed. Returns
    ``(result, manifest, data)``.
    """
    return train_bundle(
        data, out_dir, seed=config.params.seed, **{"protocol": "60-40", **split},
        train=lambda d: train_milan(d.archive, d.split, config, progress=progress),
        contents=lambda r, d: attach_fine_code(milan_contents(r, d, extra_training), d,
                                               config=fine),
    )
