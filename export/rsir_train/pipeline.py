"""The pipeline every method shares: archive → split → (train) → bundle.

Why: AHCL and MiLAN differ only in what they train. Reading and checking the archive, drawing
or reading the split, recording provenance and writing the bundle are the same steps, done here
once, through the runtime's own modules (:mod:`rsir_sdk.splits` for the split file,
:mod:`rsir_sdk.bundle_writer` for the bundle), so every bundle records its archive
(``archive`` in the manifest: ``rsir eval BUNDLE`` and galleries find the images without
``--data``) and its split (``split.json``) the same way.

A method module (:mod:`rsir_train.ahcl.bundle`, :mod:`rsir_train.milan.bundle`) calls
:func:`prepare_data`, trains on ``data.archive``/``data.split``, then hands
:func:`write_trained_bundle` its :class:`BundleContents` (the network, its
:func:`training_record` and, for asymmetric methods, the learned database codes).
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import numpy as np

from rsir_sdk.archive import ArchiveListing
from rsir_sdk.bundle_writer import archive_record, write_bundle
from rsir_sdk.splits import SPLIT_FILE, Split, split_for

from .dataset import check_images, open_training_archive, skipped

log = logging.getLogger(__name__)

__all__ = ["BundleContents", "TrainingData", "prepare_data", "recorded_archive", "train_bundle",
           "training_record", "versions", "write_trained_bundle"]

R = TypeVar("R")


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


@dataclass
class BundleContents:
    """What a method puts into its bundle: the network to export and the manifest's facts.

    ``net`` maps normalised NCHW images to the embedding (or ``(embedding, logits)``);
    ``database`` holds learned codes (``codes``, ``ids``, ``labels``, ``paths``, ``kind``) for
    asymmetric methods (AHCL) and is ``None`` for symmetric ones (MiLAN).
    """

    method: str
    net: Any
    normalize: Any
    bits: int
    code_threshold: float
    preprocess: Mapping[str, Any]
    classes: list[str]
    training: Mapping[str, Any]
    doc: str = ""
    database: Mapping[str, Any] | None = None
    #: the fitted fine code (rsir_train.fine_code.attach_fine_code); None: no fine_codes output
    fine_code: Any = None

    def manifest(self) -> dict[str, Any]:
        """The manifest of this trained (not derived) bundle; the writer completes it."""
        return {
            "method": self.method,
            "bits": int(self.bits),
            "code_threshold": float(self.code_threshold),
            "bit_order": "big",
            "preprocess": {k: self.preprocess[k] for k in
                           ("resize", "crop", "interpolation", "scale", "mean", "std")},
            "classes": list(self.classes),
            "symmetric": self.database is None,
            "training": dict(self.training),
            "parent": None,
        }


def recorded_archive(data: TrainingData) -> dict[str, Any]:
    """The manifest's ``archive`` field: root, name, fingerprint (+ ``manifest`` for a CSV)."""
    record = archive_record(data.archive.root, data.archive.name, data.archive.fingerprint())
    if data.archive.kind == "csv":
        record["manifest"] = str(data.source.absolute())
    return record


def write_trained_bundle(
    out_dir: str | os.PathLike, contents: BundleContents, data: TrainingData
) -> dict[str, Any]:
    """Export ``contents.net`` to ONNX (preprocessing and bit packing inside) and write the
    bundle through :func:`rsir_sdk.bundle_writer.write_bundle`, with the split and the archive
    record; returns the manifest as written."""
    from rsir_sdk.preprocess import crop_size

    from .onnx_export import export_onnx

    h, w = crop_size(contents.preprocess)
    model = export_onnx(contents.net, contents.normalize, contents.bits, h, w,
                        contents.code_threshold, doc=contents.doc, fine=contents.fine_code)
    return write_bundle(out_dir, model, contents.manifest(), contents.database,
                        split=data.split, archive=recorded_archive(data))


def train_bundle(
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    seed: int,
    train: Callable[[TrainingData], R],
    contents: Callable[[R, TrainingData], BundleContents],
    split_file: str | os.PathLike | None = None,
    protocol: str = "80-20",
    skip_corrupt: bool = False,
) -> tuple[R, dict[str, Any], TrainingData]:
    """The whole job for any method: archive → checked images → split → ``train`` → bundle.

    ``train(data)`` returns the method's result; ``contents(result, data)`` says what goes into
    the bundle. Returns ``(result, manifest as written, data)``.
    """
    prepared = prepare_data(data, split_file=split_file, protocol=protocol, seed=seed,
                            skip_corrupt=skip_corrupt)
    result = train(prepared)
    return result, write_trained_bundle(out_dir, contents(result, prepared), prepared), prepared
