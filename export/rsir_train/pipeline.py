"""Archive in, bundle out: read the archive, split it, train AHCL, export ONNX, write the bundle."""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import write_bundle
from .data import check_images, open_archive, save_split, split_for
from .train import AHCLConfig, AHCLResult, Progress, train_ahcl

log = logging.getLogger(__name__)

SPLIT_FILE = "split.json"


def versions() -> dict[str, str]:
    """Versions of the software that trained a bundle (recorded in its manifest)."""
    import onnx
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "onnx": onnx.__version__, "numpy": np.__version__}
    try:
        from importlib.metadata import version

        out["rsir-sdk"] = version("rsir-sdk")
    except Exception:  # not installed as a distribution (a source checkout)
        pass
    return out


def build_ahcl_bundle(
    result: AHCLResult,
    out_dir: str | os.PathLike,
    *,
    archive,
    split,
    extra_training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export ``result``'s network and write the bundle (learned V as the database codes)."""
    from rsir_sdk.codes import pack_codes
    from rsir_sdk.preprocess import crop_size

    from .onnx_export import export_onnx

    cfg = result.config or AHCLConfig()
    h, w = crop_size(result.preprocess)
    model = export_onnx(result.net, result.normalize, cfg.bits, h, w, 0.0,
                        doc=f"rsir-sdk AHCL {cfg.bits}-bit encoder ({cfg.backbone})")
    samples = [archive.samples[int(i)] for i in result.train_indices]
    frozen = result.net.backbone.frozen_stages(cfg.freeze_blocks)
    training = {
        "dataset": archive.name,
        "archive_fingerprint": archive.fingerprint(),
        "split_file": SPLIT_FILE,
        "protocol": f"ahcl-{split.protocol}",
        "seed": cfg.seed,
        "backbone": cfg.backbone,
        "pretrained": cfg.pretrained,
        "frozen": (
            "none (full fine-tune)" if not frozen
            else f"stem + blocks 0-{cfg.freeze_blocks - 1} frozen, their output cached"
        ),
        "freeze_blocks": cfg.freeze_blocks,
        "hyperparameters": dataclasses.asdict(cfg),
        "metrics": result.metrics,
        "history": result.history,
        "versions": versions(),
        "device": result.device,
        "train_seconds": round(result.train_seconds, 1),
        "n_train": int(len(result.train_indices)),
        "n_query": int(len(result.query_indices)),
        "skipped": [list(x) for x in archive.skipped],
        "date": time.strftime("%Y-%m-%d"),
    }
    training.update(extra_training or {})
    manifest = {
        "format_version": 1,
        "method": "ahcl",
        "bits": cfg.bits,
        "code_threshold": 0.0,
        "bit_order": "big",
        "preprocess": {k: result.preprocess[k] for k in
                       ("resize", "crop", "interpolation", "scale", "mean", "std")},
        "classes": result.classes,
        "symmetric": False,
        "training": training,
        "parent": None,
    }
    database = {
        "codes": pack_codes(result.V > 0),
        "ids": [s.id for s in samples],
        "labels": [s.label for s in samples],
        "paths": [s.path for s in samples],
        "kind": "learned",
    }
    written = write_bundle(out_dir, model, manifest, database)
    save_split(split, Path(out_dir) / SPLIT_FILE)
    return written


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
    extra_training: dict[str, Any] | None = None,
) -> tuple[AHCLResult, dict[str, Any]]:
    """The whole job: archive → checked images → split → AHCL training → bundle at ``out_dir``."""
    archive = open_archive(data)
    archive = check_images(archive, skip_corrupt=skip_corrupt)
    split = split_for(archive, split_file, protocol, config.seed)
    work = Path(work_dir) if work_dir else Path(str(out_dir).rstrip("/\\") + ".work")
    result = train_ahcl(archive, split, config, work_dir=work, resume=resume, progress=progress)
    manifest = build_ahcl_bundle(result, out_dir, archive=archive, split=split,
                                 extra_training=extra_training)
    if split_file is not None and not Path(split_file).exists():
        shutil.copyfile(Path(out_dir) / SPLIT_FILE, split_file)
    return result, manifest
