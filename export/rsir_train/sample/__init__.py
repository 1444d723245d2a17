"""The EuroSAT sample shipped with rsir-train: 200 RGB JPEGs, 10 classes x 20, 64x64.

Why package data: ``rsir quickstart``, the examples and the tests train and search on it offline,
from an installed wheel as from a checkout. Citation and licence: ``eurosat/README.md``.

>>> sample_archive().name
'eurosat'
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["sample_archive"]


def sample_archive() -> Path:
    """The folder of the sample archive (``<class>/<image>.jpg``; a README at the top)."""
    return Path(__file__).resolve().parent / "eurosat"
