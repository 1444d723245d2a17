"""Model inputs for training: prepared image crops, and cached outputs of frozen backbone stages.

Images are decoded and cropped by the runtime's own code (``rsir_sdk.images.load_image`` and
``rsir_sdk.preprocess.prepare``), so training sees the pixels the deployed encoder will see.
Scaling and mean/std normalisation are done by :class:`Normalize`, the same module that is
exported inside the ONNX graph.

On CPU the stem and the first N blocks can be frozen: their output is computed once and kept on
disk, keyed by a hash of the frozen weights, the preprocessing and the file list, so any change
to one of them computes it afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .backbones import Backbone
from .data import Archive, CorruptImageError

log = logging.getLogger(__name__)


class Normalize(nn.Module):
    """uint8 NHWC RGB → float NCHW: ``(x / 255 - mean) / std`` (exported inside the ONNX graph)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        return (x - self.mean) / self.std


def default_cache_dir() -> Path:
    """Feature cache folder: ``$RSIR_CACHE`` or ``~/.cache/rsir-sdk/features``."""
    env = os.environ.get("RSIR_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "rsir-sdk" / "features"


def load_prepared(archive: Archive, indices: Sequence[int], preprocess: dict[str, Any]) -> np.ndarray:
    """Decode and crop the images at ``indices``: ``uint8 (n, h, w, 3)``, runtime preprocessing."""
    from rsir_sdk.errors import ImageLoadError
    from rsir_sdk.images import load_image
    from rsir_sdk.preprocess import crop_size, prepare

    h, w = crop_size(preprocess)
    out = np.empty((len(indices), h, w, 3), dtype=np.uint8)
    bad = []
    for j, i in enumerate(indices):
        s = archive.samples[int(i)]
        try:
            out[j] = prepare(load_image(archive.abspath(s)), preprocess)
        except ImageLoadError as exc:
            bad.append((s.path, exc.reason))
    if bad:
        raise CorruptImageError(bad)
    return out


def cache_key(backbone: Backbone, n_stages: int, preprocess: dict[str, Any], archive: Archive,
              indices: Sequence[int]) -> str:
    """Hash of frozen weights + preprocessing + file list (with sizes and mtimes) of a cache."""
    h = hashlib.sha256()
    h.update(backbone.prefix_digest(n_stages).encode())
    h.update(str(n_stages).encode())
    h.update(json.dumps(preprocess, sort_keys=True).encode())
    h.update(str(archive.root.resolve()).encode())
    for i in indices:
        s = archive.samples[int(i)]
        st = archive.abspath(s).stat()
        h.update(f"{s.path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


@torch.no_grad()
def frozen_features(
    backbone: Backbone,
    normalize: Normalize,
    n_stages: int,
    archive: Archive,
    indices: Sequence[int],
    preprocess: dict[str, Any],
    *,
    cache_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> torch.Tensor:
    """Output of the first ``n_stages`` stages for ``indices`` (``float32``, cached as ``.npy``).

    Loaded from ``cache_dir`` when a cache with the same key exists; computed and saved otherwise
    (``cache_dir=None`` uses :func:`default_cache_dir`; pass ``False`` to not cache).
    """
    use_cache = cache_dir is not False
    path = None
    if use_cache:
        folder = Path(cache_dir) if cache_dir else default_cache_dir()
        key = cache_key(backbone, n_stages, preprocess, archive, indices)
        path = folder / f"{backbone.name}-s{n_stages}-{key}.npy"
        if path.is_file():
            log.info("frozen features: loading cache %s", path)
            if progress:
                progress({"event": "cache_hit", "path": str(path)})
            return torch.from_numpy(np.load(path).astype(np.float32))
    was_training = backbone.training
    backbone.eval()
    normalize = normalize.to(device)
    chunks = []
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        imgs = torch.from_numpy(load_prepared(archive, idx, preprocess)).to(device)
        feats = backbone.forward_stages(normalize(imgs), 0, n_stages)
        chunks.append(feats.to(torch.float32).cpu())
        if progress:
            progress({"event": "cache_progress", "done": start + len(idx), "total": len(indices)})
    backbone.train(was_training)
    out = torch.cat(chunks)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, out.numpy())
        os.replace(tmp, path)
        log.info("frozen features: saved cache %s (%.1f MB)", path, out.numel() * 4 / 1e6)
    return out
