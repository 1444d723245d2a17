"""AHCL archive in, bundle out: the shared pipeline with AHCL's trainer and bundle contents.

The bundle holds the exported encoder (``u = tanh(...)``, codes ``u > 0``) and, as its
database, the learned codes ``V`` of the train side with their ids, labels and paths
(``symmetric: false``): queries are encoded, the archive's codes are learned.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

from rsir_sdk.codes import pack_codes
from rsir_sdk.preprocess import crop_size

from ..onnx_export import export_onnx
from ..pipeline import TrainingData, bundle_manifest, prepare_data, training_record, write_trained_bundle
from ..trainer import Progress
from .trainer import AHCLConfig, AHCLResult, train_ahcl

__all__ = ["build_ahcl_bundle", "train_ahcl_bundle"]


def _frozen(result: AHCLResult, cfg: AHCLConfig) -> str:
    if not result.net.backbone.frozen_stages(cfg.freeze_blocks):
        return "none (full fine-tune)"
    return f"stem + blocks 0-{cfg.freeze_blocks - 1} frozen, their output cached"


def build_ahcl_bundle(
    result: AHCLResult,
    out_dir: str | os.PathLike,
    data: TrainingData,
    *,
    extra_training: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Export ``result``'s network and write the bundle (learned V as the database codes)."""
    cfg = result.config or AHCLConfig()
    h, w = crop_size(result.preprocess)
    model = export_onnx(result.net, result.normalize, cfg.bits, h, w, 0.0,
                        doc=f"rsir-sdk AHCL {cfg.bits}-bit encoder ({cfg.backbone})")
    training = training_record(
        data, protocol=f"ahcl-{data.split.protocol}", seed=cfg.seed, backbone=cfg.backbone,
        pretrained=cfg.pretrained, frozen=_frozen(result, cfg),
        hyperparameters=dataclasses.asdict(cfg), metrics=result.metrics,
        history=result.history, device=result.device, train_seconds=result.train_seconds,
        extra={"freeze_blocks": cfg.freeze_blocks, **(extra_training or {})},
    )
    manifest = bundle_manifest(method="ahcl", bits=cfg.bits, code_threshold=0.0,
                               preprocess=result.preprocess, classes=result.classes,
                               symmetric=False, training=training)
    items = [data.archive.items[int(i)] for i in result.train_indices]
    database = {
        "codes": pack_codes(result.V > 0),
        "ids": [it.id for it in items],
        "labels": [it.label for it in items],
        "paths": [it.path for it in items],
        "kind": "learned",
    }
    return write_trained_bundle(out_dir, model, manifest, data, database)


def train_ahcl_bundle(
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: AHCLConfig,
    *,
    split_file: str | os.PathLike | None = None,
    protocol: str = "80-20",
    skip_corrupt: bool = False,
    work_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    extra_training: Mapping[str, Any] | None = None,
) -> tuple[AHCLResult, dict[str, Any]]:
    """The whole job: archive → checked images → split → AHCL training → bundle at ``out_dir``.

    Checkpoints go to ``work_dir`` (default ``<out_dir>.work``). Returns the training result
    and the manifest as written.
    """
    prepared = prepare_data(data, split_file=split_file, protocol=protocol, seed=config.seed,
                            skip_corrupt=skip_corrupt)
    work = Path(work_dir) if work_dir else Path(str(out_dir).rstrip("/\\") + ".work")
    result = train_ahcl(prepared.archive, prepared.split, config, work_dir=work, resume=resume,
                        progress=progress)
    return result, build_ahcl_bundle(result, out_dir, prepared, extra_training=extra_training)
