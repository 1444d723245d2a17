"""``rsir train``, ``rsir quantize``, ``rsir quickstart``: forwarded to the training package.

Training and quantization live in their own distribution (``rsir-train``, package
``rsir_train``; the ``export/`` folder of the repository), so that the runtime pulls neither
torch nor onnx. When it is not installed these commands say in one line what to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Sequence

from .common import EXIT_USAGE, warn

#: the commands the training package provides
COMMANDS = ("train", "quantize", "quickstart")
INSTALL_HINT = ("pip install rsir-train (from a checkout of rsir-sdk: pip install -e ./export); "
                "install torch first (pip install torch) to pick its CPU or CUDA build")


def run(command: str, argv: Sequence[str]) -> int:
    """Run ``rsir <command> argv...`` through :func:`rsir_train.cli.main`."""
    if importlib.util.find_spec("rsir_train") is None:
        warn(f"rsir {command} needs the training package: {INSTALL_HINT}")
        return EXIT_USAGE
    try:
        cli = importlib.import_module("rsir_train.cli")
    except ImportError as exc:  # torch or onnx missing under an installed rsir_train
        warn(f"rsir {command} needs the training package's dependencies ({exc.name or exc} "
             f"is missing): {INSTALL_HINT}")
        return EXIT_USAGE
    return int(cli.main([command, *argv]) or 0)
