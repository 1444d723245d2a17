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

from ..fine_code import DEFAULT_FINE_CODE, FineCodeConfig, attach_fine_code
from ..pipeline import BundleContents, TrainingData, train_bundle, training_record
from ..trainer import Progress
from .trainer import AHCLConfig, AHCLResult, train_ahcl

__all__ = ["ahcl_contents", "train_ahcl_bundle"]


def _frozen(result: AHCLResult, cfg: AHCLConfig) -> str:
    if not result.net.backbone.frozen_stages(cfg.freeze_blocks):
        return "none (full fine-tune)"
    return f"stem + blocks 0-{cfg.freeze_blocks - 1} frozen, their output cached"


def _hyperparameters(result: AHCLResult, cfg: AHCLConfig) -> dict[str, Any]:
    """The resolved configuration; a selecting run keeps ``schedule: auto`` (its recipe, what
    the user asked for) and names what the selection trained under ``chosen_schedule``
    (``auto``, ``authors`` or ``cosine``) and ``candidate``."""
    hyper = dataclasses.asdict(cfg)
    if result.selection:
        hyper.update(schedule="auto", chosen_schedule=cfg.schedule,
                     candidate=result.selection["chosen"])
    return hyper


def ahcl_contents(result: AHCLResult, data: TrainingData,
                  extra_training: Mapping[str, Any] | None = None) -> BundleContents:
    """The AHCL bundle: the encoder (codes ``u > 0``) and the learned V as database codes."""
    cfg = result.config or AHCLConfig()
    training = training_record(
        data, protocol=f"ahcl-{data.split.protocol}", seed=cfg.seed, backbone=cfg.backbone,
        pretrained=cfg.pretrained, frozen=_frozen(result, cfg),
        hyperparameters=_hyperparameters(result, cfg), metrics=result.metrics,
        history=result.history, device=result.device, train_seconds=result.train_seconds,
        extra={"freeze_blocks": cfg.freeze_blocks,
               **({"selection": result.selection} if result.selection else {}),
               **(extra_training or {})},
    )
    items = [data.archive.items[int(i)] for i in result.train_indices]
    database = {
        "codes": pack_codes(result.V > 0),
        "ids": [it.id for it in items],
        "labels": [it.label for it in items],
        "paths": [it.path for it in items],
        "kind": "learned",
    }
    return BundleContents(
        method="ahcl", net=result.net, normalize=result.normalize, bits=cfg.bits,
        code_threshold=0.0, preprocess=result.preprocess, classes=result.classes,
        training=training, doc=f"rsir-sdk AHCL {cfg.bits}-bit encoder ({cfg.backbone})",
        database=database,
    )


def train_ahcl_bundle(
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: AHCLConfig,
    *,
    work_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    extra_training: Mapping[str, Any] | None = None,
    with_data: bool = False,
    fine: FineCodeConfig = DEFAULT_FINE_CODE,
    **split: Any,
) -> Any:
    """The whole job: archive → checked images → split → AHCL training → bundle at ``out_dir``.

    ``split``: ``split_file``, ``protocol`` (default ``80-20``), ``skip_corrupt`` (see
    :func:`rsir_train.pipeline.prepare_data`). Checkpoints go to ``work_dir`` (default
    ``<out_dir>.work``). Returns the training result and the manifest as written (and the
    :class:`~rsir_train.pipeline.TrainingData` with ``with_data``).
    """
    work = Path(work_dir) if work_dir else Path(str(out_dir).rstrip("/\\") + ".work")
    result, manifest, data_ = train_bundle(
        data, out_dir, seed=config.seed, **{"protocol": "80-20", **split},
        train=lambda d: train_ahcl(d.archive, d.split, config, work_dir=work, resume=resume,
                                   progress=progress),
        contents=lambda r, d: attach_fine_code(ahcl_contents(r, d, extra_training), d,
                                               config=fine),
    )
    return (result, manifest, data_) if with_data else (result, manifest)
