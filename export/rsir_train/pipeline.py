"""The pipeline every method shares: archive → split → (train) → bundle.

Why: AHCL and MiLAN differ only in what they train. Reading and checking the archive, drawing
or reading the split, recording provenance and writing the bundle are the same steps, done here
once, through the runtime's own modules (:mod:`rsir_sdk.splits` for the split file,
:mod:`rsir_sdk.bundle_writer` for the bundle), so every bundle records its archive
(``archive`` in the manifest: ``rsir eval BUNDLE`` and galleries find the images without
``--data``) and its split (``split.json``) the same way.

A method module (:mod:`rsir_train.ahcl.bundle`, :mod:`rsir_train.milan.bundle`) calls
:func:`prepare_data`, trains on ``data.archive``/``data.split``, then :func:`write_trained_bundle`
with its exported model, its :func:`training_record` and, when it has them, database codes.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rsir_sdk.archive import ArchiveListing
from rsir_sdk.bundle_writer import archive_record, write_bundle
from rsir_sdk.splits import SPLIT_FILE, Split, split_for

from .dataset import check_images, open_training_archive, skipped

log = logging.getLogger(__name__)

__all__ = ["TrainingData", "bundle_manifest", "prepare_data", "recorded_archive",
           "training_record", "versions", "write_trained_bundle"]


@dataclass(frozen=True)
class TrainingData:
    """A checked archive, the split drawn (or read) for it, and where it was read from."""

    source: Path  # the folder or CSV manifest given
    archive: ArchiveListing
    split: Split

    def indices(self) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the split's train and query items in :attr:`archive`."""
        return self.split.indices(self.archive)


def prepare_data(
    data: str | os.PathLike,
    *,
    split_file: str | os.PathLike | None = None,
    protocol: str = "80-20",
    seed: int = 0,
    skip_corrupt: bool = False,
) -> TrainingData:
    """List and check the archive (every image decoded once), then read or draw the split.

    The split is read from ``split_file`` when it exists, else drawn with ``protocol`` and
    ``seed`` (and written there when ``split_file`` is given).
    """
    archive = check_images(open_training_archive(data), skip_corrupt=skip_corrupt)
    split = split_for(archive, split_file, protocol, seed)
    return TrainingData(Path(data), archive, split)


def versions() -> dict[str, str]:
    """Versions of the software that trained a bundle (recorded in its manifest)."""
    from importlib.metadata import PackageNotFoundError, version

    import onnx
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "onnx": onnx.__version__, "numpy": np.__version__}
    for dist in ("rsir-sdk", "rsir-train"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:  # a source checkout that was never installed
            pass
    return out


def training_record(
    data: TrainingData,
    *,
    protocol: str,
    seed: int,
    backbone: str,
    pretrained: bool,
    frozen: str,
    hyperparameters: Mapping[str, Any],
    metrics: Mapping[str, float],
    history: list[dict[str, Any]],
    device: str,
    train_seconds: float,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest's ``training`` block: what was trained on, how, and what it measured."""
    train_idx, query_idx = data.indices()
    record: dict[str, Any] = {
        "dataset": data.archive.name,
        "archive_fingerprint": data.archive.fingerprint(),
        "split_file": SPLIT_FILE,
        "protocol": protocol,
        "seed": seed,
        "backbone": backbone,
        "pretrained": pretrained,
        "frozen": frozen,
        "hyperparameters": dict(hyperparameters),
        "metrics": dict(metrics),
        "history": history,
        "versions": versions(),
        "device": device,
        "train_seconds": round(train_seconds, 1),
        "n_train": int(len(train_idx)),
        "n_query": int(len(query_idx)),
        "skipped": skipped(data.archive),
        "date": time.strftime("%Y-%m-%d"),
    }
    record.update(extra or {})
    return record


def bundle_manifest(
    *,
    method: str,
    bits: int,
    code_threshold: float,
    preprocess: Mapping[str, Any],
    classes: list[str],
    symmetric: bool,
    training: Mapping[str, Any],
) -> dict[str, Any]:
    """The manifest of a trained (not derived) bundle; :func:`write_trained_bundle` completes it."""
    return {
        "method": method,
        "bits": int(bits),
        "code_threshold": float(code_threshold),
        "bit_order": "big",
        "preprocess": {k: preprocess[k] for k in
                       ("resize", "crop", "interpolation", "scale", "mean", "std")},
        "classes": list(classes),
        "symmetric": symmetric,
        "training": dict(training),
        "parent": None,
    }


def recorded_archive(data: TrainingData) -> dict[str, Any]:
    """The manifest's ``archive`` field: root, name, fingerprint (+ ``manifest`` for a CSV)."""
    record = archive_record(data.archive.root, data.archive.name, data.archive.fingerprint())
    if data.archive.kind == "csv":
        record["manifest"] = str(data.source.absolute())
    return record


def write_trained_bundle(
    out_dir: str | os.PathLike,
    model: Any,
    manifest: Mapping[str, Any],
    data: TrainingData,
    database: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the bundle through :func:`rsir_sdk.bundle_writer.write_bundle`, with its split and
    archive; returns the manifest as written."""
    return write_bundle(out_dir, model, manifest, database, split=data.split,
                        archive=recorded_archive(data))
