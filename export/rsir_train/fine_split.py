"""The split fine code (issue 20): pooled features and two colour thumbnails, one code.

Why: the fine code of :mod:`rsir_train.fine_code` (PCA-sign of the pooled features) misses
eurosat's changed copies (JPEG q70 0.69, a 90 % crop 0.94 in the appearance mode) because the
pooled features themselves move under those changes. A small colour thumbnail of the input keeps
each block's mean through JPEG, and with its mean colour removed it ignores a brightness change;
averaged over its four 90-degree rotations it is exactly invariant to a rotation of a square
input. ``export/scripts/fine_descriptors.py`` measured the split ``avg | t8 | t16r`` (64 bits of
the pooled features + 64 of an 8 x 8 thumbnail + 128 of a rotation-averaged 16 x 16 one, each
part its own PCA-sign code, one Hamming distance over the 256 bits) meeting every changed-copy bar
on both archives (docs/similar.md).

How the graph computes it (every step linear until a norm and a sign, so it exports to a few
small ops beside the backbone)::

    images (uint8, N x H x W x 3) ─► t16 = Ph · image · Pwᵀ per channel (box averages, 3 x 16 x 16)
    t8   = 2 x 2 box average of t16, overall mean removed (192)      ─► x / (|x| + 1) ─► PCA ─► 64
    t16r = per channel and rotation orbit of 4 pixels, their sum / 2,
           overall mean removed (192: the rotation-averaged thumbnail
           in an orthonormal basis)                                  ─► x / (|x| + 1) ─► PCA ─► 128
    pooled features    ─► x / |x| ─► PCA ─► 64

The ``layout`` kind (``--fine-code layout``, :data:`LAYOUT_PARTS`) adds ``cl``, the colour
layout (:func:`colour_layout`: ``t8``'s cells before their mean is removed, divided by 1 + their
mean luminance) ─► PCA ─► 64, and records per part the weight the same-scene test gives it
(:data:`TEST_WEIGHTS`; :class:`rsir_sdk.codes.SceneTest`).

The thumbnail parts are reshapes, a gather and means in the graph (``_part_map`` is their
matrix form, which the fit uses): no large matrix, so an int8 bundle, which keeps the fine head
in float, stays small.

``Ph``/``Pw`` are the weights of an adaptive average pool written as matrices, so any input size
works (224, 240, 260). The ``+ 1`` keeps a flat scene's thumbnail near 0 instead of amplifying
noise. The thumbnail is of the graph's input (the prepared, cropped image), so an edge device and
the server compute the same bits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from .fine_parts import (  # noqa: F401  (re-exported: the layouts are part of this module's API)
    KIND_PARTS,
    KIND_STEP,
    LAYOUT_PARTS,
    SPLIT_PARTS,
    TEST_RATIOS,
    TEST_WEIGHTS,
    part_bits,
)

__all__ = ["KIND_PARTS", "LAYOUT_PARTS", "SPLIT_PARTS", "SplitFineCode", "SplitFineCodeHead",
           "TEST_RATIOS", "TEST_WEIGHTS", "Thumbnails", "colour_layout", "fit_split", "part_bits",
           "thumbnail_descriptors"]

#: the thumbnail's side (the parts are computed from it)
THUMB = 16
#: the luminance weights of the colour layout's divisor (ITU-R BT.601)
LUMA = (0.299, 0.587, 0.114)


def box_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` weights of an adaptive average pool along one axis (PyTorch's boxes:
    ``floor(i n_in / n_out)`` to ``ceil((i + 1) n_in / n_out)``)."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


#: the length of each thumbnail part's vector (t8: 3 x 8 x 8 cells; t16r: 3 x 64 rotation orbits)
PART_DIM = 3 * THUMB * THUMB // 4


def _part_map(name: str) -> np.ndarray:
    """The fixed linear map ``(PART_DIM, 768)`` from a flattened ``3 x 16 x 16`` thumbnail to
    the part's vector (the fit's form; the graph computes the same by reshapes and a gather).

    ``t8``: the 2 x 2 box average, its overall mean removed. ``t16r``: the thumbnail averaged
    over its four 90-degree rotations, its overall mean removed, written in coordinates of the
    rotation orbits (:func:`_orbit_pixels`: per channel and orbit of 4 pixels, their sum / 2, an
    orthonormal basis of the rotation-invariant thumbnails): norms and inner products, hence
    the PCA-sign code's distances, are those of the averaged 768-value thumbnail."""
    n = 3 * THUMB * THUMB
    if name == "t8":
        eye = np.eye(n).reshape(n, 3, THUMB // 2, 2, THUMB // 2, 2)
        t = eye.mean(axis=(3, 5)).reshape(n, -1)
        t = t - t.mean(axis=1, keepdims=True)
        return np.ascontiguousarray(t.T)
    if name != "t16r":
        raise ValueError(f"unknown thumbnail part {name!r}")
    basis = np.zeros((PART_DIM, n))
    basis[np.arange(PART_DIM)[:, None], _orbit_pixels()] = 0.5
    return basis - basis.mean(axis=0, keepdims=True)  # the mean removed in orbit space


def _orbit_pixels() -> np.ndarray:
    """``(PART_DIM, 4)`` positions in a flattened ``3 x 16 x 16`` thumbnail: each row the four
    pixels of one channel that a 90-degree rotation maps onto each other, channel by channel."""
    seen = np.zeros((THUMB, THUMB), dtype=bool)
    orbits = []
    for i in range(THUMB):
        for j in range(THUMB):
            if not seen[i, j]:
                orbit, (a, b) = [], (i, j)
                for _ in range(4):
                    seen[a, b] = True
                    orbit.append(a * THUMB + b)
                    a, b = b, THUMB - 1 - a
                orbits.append(orbit)
    one = np.array(orbits, dtype=np.int64)
    return np.concatenate([c * THUMB * THUMB + one for c in range(3)])


def _soft_normalised(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1.0)


def thumbnail_descriptors(thumbs: np.ndarray, name: str) -> np.ndarray:
    """The part ``name``'s descriptors ``(n, d)`` (float64) of flattened 16 x 16 thumbnails."""
    if name == "cl":
        return colour_layout(thumbs)
    return _soft_normalised(np.asarray(thumbs, np.float64) @ _part_map(name).T)


def colour_layout(thumbs: np.ndarray) -> np.ndarray:
    """``(n, 192)``: the 8 x 8 cells' r, g, b means (each the mean of 2 x 2 thumbnail pixels)
    divided by 1 + their mean luminance. Why: JPEG keeps each 8 x 8 block's mean to within a
    grey level and the division removes a brightness change, so a re-encoded or brightened copy
    keeps its layout; not soft-normalised (its scale is already fixed by the division).

    >>> colour_layout(np.full((1, 768), 99.0))[0, :3].round(3).tolist()
    [0.99, 0.99, 0.99]
    """
    cells = np.asarray(thumbs, np.float64).reshape(-1, 3, THUMB // 2, 2, THUMB // 2, 2)
    cells = cells.mean(axis=(3, 5))
    luma = np.tensordot(cells, np.array(LUMA), axes=([1], [0])).mean(axis=(1, 2))
    return cells.reshape(len(cells), -1) / (luma[:, None] + 1.0)


class Thumbnails(nn.Module):
    """uint8 NHWC images of a fixed ``height x width`` → flattened ``3 x 16 x 16`` box-average
    thumbnails (float32, pixel units): two matrix products, so it exports for any size."""

    def __init__(self, height: int, width: int):
        super().__init__()
        self.register_buffer("rows", torch.tensor(box_matrix(height, THUMB), dtype=torch.float32))
        self.register_buffer("cols", torch.tensor(box_matrix(width, THUMB).T, dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32).permute(0, 3, 1, 2)  # N, 3, H, W
        return torch.matmul(torch.matmul(self.rows, x), self.cols).flatten(1)  # type: ignore[arg-type]


@dataclass(frozen=True)
class SplitFineCode:
    """A fitted split fine code: its parts ``[(name, FineCode)]`` in bit order, and the input
    size its thumbnails are taken at. Duck-types :class:`~rsir_train.fine_code.FineCode` where
    the export needs it (``kind``, ``bits``, ``l2_normalize``, ``fitted_on``)."""

    parts: tuple[tuple[str, Any], ...]
    height: int
    width: int
    fitted_on: str = ""
    kind: str = "split"

    @property
    def bits(self) -> int:
        return sum(int(code.bits) for _, code in self.parts)

    @property
    def l2_normalize(self) -> bool:
        return True  # the pooled part; the thumbnail parts are soft-normalised (module doc)

    def describe(self) -> list[dict[str, Any]]:
        """The parts as the manifest records them."""
        weights = TEST_WEIGHTS.get(self.kind)
        return [{"part": name, "bits": int(code.bits), "kind": code.kind,
                 **({"test_weight": weights[name]} if weights else {})}
                for name, code in self.parts]

    def codes(self, pooled: np.ndarray, thumbs: np.ndarray) -> np.ndarray:
        """Packed codes ``uint8 (n, bits/8)`` from pooled features and 16 x 16 thumbnails."""
        out = [code.codes(pooled if name == "pooled" else thumbnail_descriptors(thumbs, name))
               for name, code in self.parts]
        return np.concatenate(out, axis=1)


def fit_split(pooled: np.ndarray, thumbs: np.ndarray, bits: int, height: int, width: int,
              usable: Any, kind: str = "split") -> SplitFineCode:
    """Fit each part's PCA-sign code of a ``kind`` code (:data:`KIND_PARTS`) on the train side
    (no labels). ``usable(bits, config, x, what)`` caps a part's bits at what its descriptors
    allow (:func:`rsir_train.fine_code._usable_bits`)."""
    from .fine_code import FineCodeConfig, fit_fine_code

    parts = []
    for name, want in part_bits(bits, kind):
        if name == "pooled":
            x, cfg = np.asarray(pooled, np.float64), FineCodeConfig("pca", want, l2_normalize=True)
        else:
            x, cfg = thumbnail_descriptors(thumbs, name), FineCodeConfig("pca", want,
                                                                         l2_normalize=False)
        cfg = replace(cfg, bits=usable(want, cfg, x, f"fine code part {name!r}"))
        parts.append((name, fit_fine_code(x, cfg)))
    return SplitFineCode(tuple(parts), height, width, kind=kind)


class SplitFineCodeHead(nn.Module):
    """``(pooled features, uint8 images)`` → the split code's projections ``u (N, bits)``
    (threshold 0), for the graph: the bits equal :meth:`SplitFineCode.codes`."""

    def __init__(self, code: SplitFineCode):
        super().__init__()
        from .fine_code import FineCodeHead

        self.thumbs = Thumbnails(code.height, code.width)
        self.names = [name for name, _ in code.parts]
        # the pixels of each rotation orbit, orbit by orbit (the rows of _part_map("t16r"))
        self.register_buffer("orbit_order", torch.from_numpy(_orbit_pixels().ravel()))
        self.heads = nn.ModuleList([FineCodeHead(c) for _, c in code.parts])

    def _part(self, name: str, t16: torch.Tensor) -> torch.Tensor:
        """The part's vector, ``t16 @ _part_map(name).T`` computed by reshapes, a gather and
        means, so the graph holds no 768-column matrix (it stays float in int8 bundles)."""
        if name in ("t8", "cl"):
            cells = t16.reshape(-1, 3, THUMB // 2, 2, THUMB // 2, 2).mean(dim=(3, 5))
            if name == "cl":  # colour_layout: not centred, divided by 1 + the mean luminance
                luma = (cells[:, 0] * LUMA[0] + cells[:, 1] * LUMA[1]
                        + cells[:, 2] * LUMA[2]).mean(dim=(1, 2))
                return cells.reshape(-1, PART_DIM) / (luma[:, None] + 1.0)
            x = cells.reshape(-1, PART_DIM)
        else:  # t16r: each orbit's sum / 2
            order: torch.Tensor = self.orbit_order  # type: ignore[assignment]  # a buffer
            x = torch.index_select(t16, 1, order).reshape(-1, PART_DIM, 4).sum(dim=2) * 0.5
        return x - x.mean(dim=1, keepdim=True)

    def forward(self, pooled: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        t16 = self.thumbs(images)
        out = []
        for name, head in zip(self.names, self.heads):
            if name == "pooled":
                out.append(head(pooled))
                continue
            x = self._part(name, t16)
            if name != "cl":  # the colour layout's scale is fixed by its own division
                x = x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + 1.0)
            out.append(head(x))
        return torch.cat(out, dim=1)
