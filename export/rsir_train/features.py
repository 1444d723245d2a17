"""Model inputs for training: prepared image crops, and cached outputs of frozen backbone parts.

Images are decoded and cropped by the runtime's own code (``rsir_sdk.images.load_image`` and
``rsir_sdk.preprocess.prepare``), so training sees the pixels the deployed encoder will see.
Scaling and mean/std normalisation are done by :class:`Normalize`, the same module that is
exported inside the ONNX graph.

Frozen parts of a backbone are run once and their output kept on disk, keyed by a hash of the
frozen weights, the preprocessing and the file list (sizes and mtimes), so any change to one of
them computes it afresh. The file is written batch by batch as it is computed, so a run
interrupted there (Ctrl-C, SIGKILL) continues where it stopped when started again
(:mod:`rsir_train.feature_cache`):

- :func:`frozen_features` (AHCL on CPU): the stem and the first N blocks, for the images given;
- :func:`pooled_features` (MiLAN): the whole backbone, pooled, for every image of the archive,
  so every split, bit length and seed of one archive share one file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from rsir_sdk.archive import ArchiveListing

from .backbones import Backbone
from .errors import CorruptImageError
from .feature_cache import Batches, read_or_fill

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]
#: version tag of the pooled-feature cache key
POOLED_CACHE_FORMAT = "milan-pooled-v1"

__all__ = ["Normalize", "cache_key", "default_cache_dir", "frozen_features", "load_prepared",
           "pooled_cache_key", "pooled_features"]


class Normalize(nn.Module):
    """uint8 NHWC RGB → float NCHW: ``(x / 255 - mean) / std`` (exported inside the ONNX graph)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        return (x - self.mean) / self.std  # type: ignore[operator]


def default_cache_dir() -> Path:
    """Feature cache folder: ``$RSIR_CACHE`` or ``~/.cache/rsir-sdk/features``."""
    env = os.environ.get("RSIR_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "rsir-sdk" / "features"


def load_prepared(archive: ArchiveListing, indices: Sequence[int] | np.ndarray,
                  preprocess: dict[str, Any]) -> np.ndarray:
    """Decode and crop the images at ``indices``: ``uint8 (n, h, w, 3)``, runtime preprocessing."""
    from rsir_sdk.errors import ImageLoadError
    from rsir_sdk.images import load_image
    from rsir_sdk.preprocess import crop_size, prepare

    h, w = crop_size(preprocess)
    out = np.empty((len(indices), h, w, 3), dtype=np.uint8)
    bad = []
    for j, i in enumerate(indices):
        item = archive.items[int(i)]
        try:
            out[j] = prepare(load_image(item.file), preprocess)
        except ImageLoadError as exc:
            bad.append((item.path, exc.reason))
    if bad:
        raise CorruptImageError(bad)
    return out


def _file_list_digest(h: Any, archive: ArchiveListing, indices: Sequence[int] | np.ndarray) -> None:
    h.update(str(archive.root.resolve()).encode())
    for i in indices:
        item = archive.items[int(i)]
        st = item.file.stat()
        h.update(f"{item.path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())


def cache_key(backbone: Backbone, n_stages: int, preprocess: dict[str, Any],
              archive: ArchiveListing, indices: Sequence[int] | np.ndarray) -> str:
    """Key of a frozen-stage cache: frozen weights + preprocessing + file list (sizes, mtimes)."""
    h = hashlib.sha256()
    h.update(backbone.prefix_digest(n_stages).encode())
    h.update(str(n_stages).encode())
    h.update(json.dumps(preprocess, sort_keys=True).encode())
    _file_list_digest(h, archive, indices)
    return h.hexdigest()[:32]


def pooled_cache_key(backbone: Backbone, preprocess: dict[str, Any], archive: ArchiveListing) -> str:
    """Key of the pooled-feature cache: every weight + preprocessing + the whole file list."""
    h = hashlib.sha256(POOLED_CACHE_FORMAT.encode())
    h.update(backbone.weights_digest().encode())
    h.update(json.dumps(preprocess, sort_keys=True).encode())
    _file_list_digest(h, archive, range(len(archive.items)))
    return h.hexdigest()[:32]


def _cache_folder(cache_dir: str | os.PathLike | bool | None) -> Path | None:
    """``False`` = no cache; ``None``/``True`` = :func:`default_cache_dir`; else the folder."""
    if cache_dir is False:
        return None
    return default_cache_dir() if cache_dir in (None, True) else Path(cache_dir)  # type: ignore[arg-type]


def _run(backbone: Backbone, normalize: Normalize, archive: ArchiveListing,
         indices: Sequence[int] | np.ndarray, preprocess: dict[str, Any], n_stages: int | None,
         device: str, batch_size: int, emit: Progress) -> Batches:
    """``batches(first)``: the frozen part's output for ``indices[first:]``, batch by batch, as
    ``(start, float32 rows)`` (``n_stages=None``: the whole backbone, pooled)."""

    @torch.no_grad()
    def batches(first: int) -> Iterator[tuple[int, np.ndarray]]:
        was_training = backbone.training
        backbone.eval().to(device)
        norm = normalize.to(device)
        try:
            for start in range(first, len(indices), batch_size):
                idx = indices[start : start + batch_size]
                x = norm(torch.from_numpy(load_prepared(archive, idx, preprocess)).to(device))
                out = backbone(x) if n_stages is None else backbone.forward_stages(x, 0, n_stages)
                yield start, out.to(torch.float32).cpu().numpy()
                emit({"event": "cache_progress", "done": start + len(idx), "total": len(indices)})
        finally:
            backbone.train(was_training)

    return batches


def _cached(path: Path | None, rows: int, batches: Batches, emit: Progress,
            empty_dim: int) -> tuple[torch.Tensor, str]:
    """Read ``path`` when it holds ``rows`` rows, else compute (saved as it goes when ``path``:
    :func:`rsir_train.feature_cache.read_or_fill`, which resumes an interrupted computation)."""
    if path is None or rows == 0:
        parts = [b for _, b in batches(0)]
        out = np.concatenate(parts) if parts else np.zeros((0, empty_dim), np.float32)
        return torch.from_numpy(out), "off"
    feats, status = read_or_fill(path, rows, batches, emit)
    return torch.from_numpy(feats), status


def frozen_features(
    backbone: Backbone,
    normalize: Normalize,
    n_stages: int,
    archive: ArchiveListing,
    indices: Sequence[int] | np.ndarray,
    preprocess: dict[str, Any],
    *,
    cache_dir: str | os.PathLike | bool | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Output of the first ``n_stages`` stages for ``indices`` (``float32``, cached as ``.npy``).

    Loaded from ``cache_dir`` when a cache with the same key exists; computed and saved otherwise
    (``cache_dir=None`` uses :func:`default_cache_dir`; pass ``False`` to not cache).
    """
    emit = progress or (lambda event: None)
    folder = _cache_folder(cache_dir)
    path = None
    if folder is not None:
        key = cache_key(backbone, n_stages, preprocess, archive, indices)
        path = folder / f"{backbone.name}-s{n_stages}-{key}.npy"
    feats, _ = _cached(path, len(indices), _run(backbone, normalize, archive, indices, preprocess,
                                                n_stages, device, batch_size, emit),
                       emit, backbone.out_dim)
    return feats


def pooled_features(
    backbone: Backbone,
    normalize: Normalize,
    archive: ArchiveListing,
    preprocess: dict[str, Any],
    *,
    cache_dir: str | os.PathLike | bool | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    progress: Progress | None = None,
) -> tuple[torch.Tensor, str]:
    """Pooled frozen-backbone features of every archive image, ``float32 (n, out_dim)``.

    Returns ``(features, status)`` with ``status`` = ``"hit"`` (read from the cache),
    ``"computed"`` (computed and saved) or ``"off"`` (``cache_dir=False``: computed, not saved).
    Rows follow ``archive.items``; the file is ``<cache_dir>/milan-<backbone>-<key>.npy``
    (:func:`pooled_cache_key`). The backbone runs in eval mode (BatchNorm with its ImageNet
    statistics), as in the exported encoder.
    """
    emit = progress or (lambda event: None)
    folder = _cache_folder(cache_dir)
    path = None
    if folder is not None:
        path = folder / f"milan-{backbone.name}-{pooled_cache_key(backbone, preprocess, archive)}.npy"
    n = len(archive.items)
    return _cached(path, n, _run(backbone, normalize, archive, np.arange(n), preprocess, None,
                                 device, batch_size, emit),
                   emit, backbone.out_dim)
