"""Exceptions of the training side; all derive from :class:`rsir_sdk.errors.RsirError`.

Why: the ``rsir`` command turns any :class:`~rsir_sdk.errors.RsirError` into one line and exit
status 1, so every problem training reports on purpose (a bad archive, a checkpoint of another
run, an unknown backbone, a model that cannot be quantized) must be one of them. Archive
problems derive from :class:`~rsir_sdk.errors.ArchiveError`, the runtime's own, so a caller
catching that catches the training-specific ones too.
"""

from __future__ import annotations

from typing import Sequence

from rsir_sdk.errors import ArchiveError, RsirError, SplitError

__all__ = [
    "BackboneError",
    "CorruptImageError",
    "DataError",
    "EmptyClassError",
    "MissingLabelError",
    "QuantizeError",
    "SplitError",
    "TrainingError",
]


class DataError(ArchiveError):
    """An archive cannot be trained on (beyond what listing it checks)."""


class EmptyClassError(DataError):
    """A class folder holds no images."""


class MissingLabelError(DataError):
    """Images without a label: files at the top of a folder archive, empty CSV labels."""


class CorruptImageError(DataError):
    """One or more images of the archive cannot be decoded; ``bad`` lists ``(path, reason)``."""

    def __init__(self, bad: Sequence[tuple[str, str]]):
        self.bad = list(bad)
        lines = "; ".join(f"{p}: {why}" for p, why in self.bad[:5])
        more = f" (and {len(self.bad) - 5} more)" if len(self.bad) > 5 else ""
        super().__init__(
            f"{len(self.bad)} image(s) cannot be decoded: {lines}{more}. Remove or replace "
            f"them, or pass skip_corrupt=True (--skip-corrupt) to leave them out (reported)."
        )

    def __reduce__(self):  # keep ``bad`` through pickling
        return (type(self), (self.bad,))


class TrainingError(RsirError, RuntimeError):
    """Training cannot start or continue (bad configuration, checkpoint of another run)."""


class BackboneError(RsirError, RuntimeError):
    """A backbone name is unknown or its pretrained weights cannot be found or loaded."""


class QuantizeError(RsirError, RuntimeError):
    """A bundle cannot be quantized (no calibration images, onnx missing, codes disagree)."""
