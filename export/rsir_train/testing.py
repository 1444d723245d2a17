"""Helpers for tests: train a tiny AHCL bundle on the shipped EuroSAT sample in seconds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .ahcl.trainer import AHCLConfig, AHCLResult
from .sample import sample_archive

#: the 200-image EuroSAT sample shipped with the package (10 classes x 20)
SAMPLE_ARCHIVE = sample_archive()

__all__ = ["SAMPLE_ARCHIVE", "tiny_ahcl_bundle", "tiny_config"]


def tiny_config(bits: int = 32, seed: int = 0, **overrides: Any) -> AHCLConfig:
    """A small_cnn AHCL configuration that learns the sample in seconds on 2 CPU cores.

    It departs from the authors' defaults to converge in a few epochs from random init: lr 0.01
    with momentum 0.9, 10 outer x 2 inner epochs, batch 32, 64x64 input.
    """
    cfg: dict[str, Any] = dict(
        bits=bits, backbone="small_cnn", pretrained=False, schedule="step", lr=0.01, momentum=0.9,
        batch_size=32, outer=10, inner=2, lr_steps=(7,), seed=seed, device="cpu",
        num_samples=None, freeze_blocks=0, cache_dir=False,
    )
    cfg.update(overrides)
    return AHCLConfig(**cfg)


def tiny_ahcl_bundle(
    out_dir: str | os.PathLike,
    data: str | os.PathLike | None = None,
    bits: int = 32,
    fine: Any = None,
    **overrides: Any,
) -> tuple[AHCLResult, dict[str, Any]]:
    """Train AHCL (small_cnn) on ``data`` (default: the shipped sample) and write a bundle;
    ``fine``: a :class:`~rsir_train.fine_code.FineCodeConfig` (default: the bundles' default).

    Returns ``(result, manifest)``: the :class:`~rsir_train.ahcl.AHCLResult` and the written
    manifest. Typically 10-30 s on 2 CPU cores.
    """
    from .ahcl.bundle import train_ahcl_bundle

    return train_ahcl_bundle(
        data or SAMPLE_ARCHIVE, out_dir, tiny_config(bits, **overrides),
        work_dir=Path(out_dir).parent / (Path(out_dir).name + ".work"),
        **({} if fine is None else {"fine": fine}),
    )
