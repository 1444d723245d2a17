"""rsir-train: the training side of rsir-sdk (its own distribution, package ``rsir_train``).

It trains hashing encoders on a labelled archive and writes model bundles that the torch-free
runtime (:mod:`rsir_sdk`) serves: AHCL (:mod:`rsir_train.ahcl`) and MiLAN
(:mod:`rsir_train.milan`) on one pipeline shape (:mod:`rsir_train.pipeline`: archive → split →
train → bundle), ONNX export (:mod:`rsir_train.onnx_export`), int8/fp16 derivation
(:mod:`rsir_train.quantize`), result records (:mod:`rsir_train.results`) and the EuroSAT sample
(:mod:`rsir_train.sample`). Archives, splits, bundles, metrics and evaluation are the runtime's
own (:mod:`rsir_sdk.archive`, :mod:`rsir_sdk.splits`, :mod:`rsir_sdk.bundle_writer`,
:mod:`rsir_sdk.metrics`, :mod:`rsir_sdk.evaluate`), so both halves agree on them by construction.

Users run it through the ``rsir`` command: ``rsir train ahcl|milan ...``, ``rsir quantize ...``,
``rsir quickstart`` (see :mod:`rsir_train.cli`). Importing this package imports neither torch
nor onnx; the modules that train do.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rsir-train")
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
