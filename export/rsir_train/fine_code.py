"""The fine code: a label-free, similarity-preserving binary code of a network's pooled features.

Why (issue 20): trained AHCL and MiLAN codes collapse to about one code per class, so inside a
class the store returns images in a random order and "find this scene" fails. A second code that
keeps the geometry of the pooled features, computed by the same forward pass, orders each tie
group (and serves an appearance mode and duplicate search). It is fitted on the TRAINING side's
pooled features at ``rsir train`` time, without labels; ``docs/similar.md`` gives the
measurement that chose its kind and length.

The code is one linear map and a sign, so an ONNX graph needs only two tensors::

    f (pooled, D) ─► f / |f| (when l2_normalize) ─► (f - mean) @ projection.T = u (B) ─► bits = u > 0

packed big-endian (``numpy.packbits`` order, as every code of the project). Kinds:

- ``"itq"``: PCA to B dims, then the ITQ rotation (Gong & Lazebnik 2011; reuses
  :func:`rsir_train.baselines.fit_itq`), which balances variance over the bits;
- ``"pca"``: PCA-sign, the top B principal directions (signs fixed deterministically);
- ``"lsh"``: sign random projections of the centred features (SimHash; keeps cosine, needs no fit
  beyond the mean).

Every kind is deterministic for a seed and the same features. PCA-sign at 128 bits had the best
rank-1 rate per byte on nwpu12 and eurosat (``export/scripts/fine_code_length.py``); bundles get
the ``"layout"`` code by default (:data:`DEFAULT_FINE_CODE`: PCA-sign of the pooled features
beside two colour thumbnails and a colour layout, with same-scene tests,
:mod:`rsir_train.fine_split`), the one that brings a re-encoded, cropped or turned copy of a
small scene back first (``docs/similar.md``, "The layout fine code and the same-scene test").
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .baselines import fit_itq

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_FINE_CODE", "FINE_KINDS", "FineCode", "FineCodeConfig", "FineCodeHead",
           "attach_fine_code", "fit_fine_code"]

#: the kinds of fine code :func:`fit_fine_code` fits
FINE_KINDS = ("itq", "pca", "lsh")


@dataclass(frozen=True)
class FineCodeConfig:
    """What fine code to fit: ``kind`` (one of :data:`FINE_KINDS`; :func:`attach_fine_code` also
    takes ``"split"``, :mod:`rsir_train.fine_split`), ``bits`` (a multiple of 8),
    L2 normalisation of the pooled features first (cosine geometry), ITQ iterations, seed.

    The field defaults are PCA-sign at 128 bits (the best rank-1 per byte of the pooled-feature
    codes); what bundles get is :data:`DEFAULT_FINE_CODE`."""

    kind: str = "pca"
    bits: int = 128
    l2_normalize: bool = True
    iterations: int = 50
    seed: int = 0


#: the fine code bundles get unless told otherwise (``--fine-code``): the layout code, 320 bits.
#: Why (docs/similar.md, "The layout fine code and the same-scene test"): with its two
#: same-scene tests every changed-copy bar of issue 20 is met in both rankings by ITQ, MiLAN and
#: AHCL 16/32/64 on nwpu12 and eurosat, where the split code (256 bits, ``--fine-code split``)
#: left eurosat ITQ's JPEG q70 copies at 0.922; class-level figures do not fall (docs/results.md,
#: "The layout fine code"). The cost: 8 more bytes an item than split (40 at 320 bits) and an
#: order inside a class that follows colour layout more than the pooled features.
DEFAULT_FINE_CODE = FineCodeConfig("layout", 320)


@dataclass(frozen=True)
class FineCode:
    """A fitted fine code: ``bits = ((f̂ - mean) @ projection.T) > 0``, packed big-endian.

    ``f̂`` is ``f / |f|`` when ``l2_normalize``, else ``f``; ``mean`` is ``(D,)`` and
    ``projection`` ``(B, D)``, both float32 (the form a graph's ``Linear`` layer takes).
    """

    kind: str
    bits: int
    mean: np.ndarray
    projection: np.ndarray
    l2_normalize: bool
    #: what it was fitted on, in words (recorded in the bundle: ``fine_code.fitted_on``)
    fitted_on: str = ""

    def embed(self, features: np.ndarray) -> np.ndarray:
        """The pre-sign projections ``(n, B)`` (float64) of pooled features ``(n, D)``."""
        x = _normalised(features, self.l2_normalize)
        return (x - self.mean.astype(np.float64)) @ self.projection.astype(np.float64).T

    def codes(self, features: np.ndarray) -> np.ndarray:
        """Packed fine codes, ``uint8 (n, B/8)``, bit k set when projection k is > 0."""
        return np.packbits(self.embed(features) > 0, axis=1, bitorder="big")

    def linear(self) -> tuple[np.ndarray, np.ndarray]:
        """``(weight (B, D), bias (B,))`` of the equivalent ``Linear`` layer: ``u = W f̂ + b``."""
        w = self.projection.astype(np.float32)
        return w, (-(w.astype(np.float64) @ self.mean.astype(np.float64))).astype(np.float32)


def _normalised(features: np.ndarray, l2: bool) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (n, D), got shape {x.shape}")
    if l2:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def _pca_basis(xc: np.ndarray, bits: int) -> np.ndarray:
    """Top ``bits`` principal directions ``(D, bits)`` of centred ``xc``, each column's sign
    fixed so that its largest-magnitude entry is positive (eigh's signs are arbitrary)."""
    cov = xc.T @ xc / max(1, len(xc) - 1)
    vals, vecs = np.linalg.eigh(cov)
    basis = vecs[:, np.argsort(vals, kind="stable")[::-1][:bits]]
    pivot = basis[np.argmax(np.abs(basis), axis=0), np.arange(bits)]
    return basis * np.where(pivot < 0, -1.0, 1.0)


def fit_fine_code(features: np.ndarray, config: FineCodeConfig = FineCodeConfig()) -> FineCode:
    """Fit a fine code on pooled features ``(n, D)`` of the training side (no labels).

    ``itq`` and ``pca`` need at least ``bits`` images and ``bits`` feature dimensions; ``lsh``
    only the mean. Deterministic for ``config.seed`` and the same features.

    >>> x = np.random.default_rng(0).standard_normal((100, 32))
    >>> fit_fine_code(x, FineCodeConfig("pca", 16)).codes(x).shape
    (100, 2)
    """
    if config.kind not in FINE_KINDS:
        raise ValueError(f"fine code kind must be one of {FINE_KINDS}, got {config.kind!r}")
    if config.bits <= 0 or config.bits % 8:
        raise ValueError(f"fine code bits must be a positive multiple of 8, got {config.bits}")
    x = _normalised(features, config.l2_normalize)
    if config.kind != "lsh" and config.bits > min(x.shape):
        raise ValueError(f"a {config.kind} fine code of {config.bits} bits needs at least "
                         f"{config.bits} images and feature dimensions, got {x.shape}")
    if config.kind == "itq":
        itq = fit_itq(x, config.bits, iterations=config.iterations, seed=config.seed,
                      l2_normalize=False)
        mean, proj = itq.mean, itq.projection.T
    else:
        mean = x.mean(axis=0)
        if config.kind == "pca":
            proj = _pca_basis(x - mean, config.bits).T
        else:
            rng = np.random.default_rng(config.seed)
            proj = rng.standard_normal((config.bits, x.shape[1])) / np.sqrt(x.shape[1])
    return FineCode(config.kind, config.bits, mean.astype(np.float32),
                    np.ascontiguousarray(proj, dtype=np.float32), config.l2_normalize)


class FineCodeHead(nn.Module):
    """Pooled features ``(N, D)`` → fine projections ``u (N, B)`` (threshold 0), for a graph.

    The bits are ``u > 0``; pack them with the export's ``PackBits(B)`` so the graph's second
    output holds the same bytes as :meth:`FineCode.codes`.
    """

    def __init__(self, code: FineCode):
        super().__init__()
        self.l2_normalize = code.l2_normalize
        weight, bias = code.linear()
        self.proj = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.proj.weight.copy_(torch.from_numpy(weight))
            self.proj.bias.copy_(torch.from_numpy(bias))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if self.l2_normalize:
            feats = nn.functional.normalize(feats, dim=1, eps=1e-12)
        return self.proj(feats)


def _usable_bits(wanted: int, config: FineCodeConfig, x: np.ndarray,
                 what: str = "fine code") -> int:
    """``wanted``, or the largest multiple of 8 that a PCA/ITQ fit of features ``x (n, D)``
    can give meaningful bits for: no more than the directions with non-negligible variance
    (eigenvalue above 1e-6 of the largest). Why: a direction without variance projects every
    image to about 0, so its bit is float rounding noise that flips between runtimes (a small
    network's pooled features have dead channels, and a train side of n images varies in at
    most n - 1). ``what`` names the code or part in the log line."""
    if config.kind == "lsh":
        return wanted
    xn = _normalised(x, config.l2_normalize)
    xc = xn - xn.mean(axis=0)
    vals = np.linalg.eigvalsh(xc.T @ xc / max(1, len(xc) - 1))
    rank = int((vals > 1e-6 * max(float(vals.max()), 1e-30)).sum())
    cap = (min(rank, len(x)) // 8) * 8
    if cap < 8:
        raise ValueError(f"a {config.kind} {what} needs features that vary in at least 8 "
                         f"directions, got {rank} ({len(x)} training images, {x.shape[1]} "
                         f"values each)")
    if cap < wanted:
        log.info("%s: %d bits asked, %d fitted (its %d training images, %d values each, vary "
                 "in %d directions)", what, wanted, cap, len(x), x.shape[1], rank)
    return min(wanted, cap)


def attach_fine_code(contents: Any, data: Any, features: np.ndarray | None = None,
                     config: FineCodeConfig = DEFAULT_FINE_CODE) -> Any:
    """The one training step every method shares (issue 20): fit the fine code on the TRAIN
    side's pooled features, no labels, and return ``contents`` (a
    :class:`~rsir_train.pipeline.BundleContents`) with ``fine_code`` set, so the exported graph
    gets the ``fine_codes`` output.

    ``features``: the train side's pooled features when the method already holds them (ITQ,
    MiLAN: the frozen backbone's cached ones); else they are computed by one pass of
    ``contents.net`` over the train side's images, with the bundle's preprocessing and the same
    tap the graph's fine head uses (:func:`rsir_train.onnx_export.pooled_outputs`: for AHCL,
    the trained network's pooled features). ``bits`` shrinks to what the features allow
    (:func:`_usable_bits`: no more bits than directions in which they vary).

    A bundle with database codes (AHCL's learned V) also gets the fine codes of its database
    images (``database["fine"]``, from the same pooled features: what the exported graph gives
    for those images), so that ``add_learned_codes`` writes both codes without encoding.
    """
    train_idx, _ = data.indices()
    from .fine_split import KIND_PARTS

    split = config.kind in KIND_PARTS
    thumbs: np.ndarray | None = None
    if features is None:
        features, thumbs, size = _pooled(contents, data, train_idx, split)
        source = "pooled features of the exported network"
    else:
        source = "pooled features of the frozen backbone"
        if split:
            _, thumbs, size = _pooled(contents, data, train_idx, True, pooled=False)
    x = np.asarray(features, dtype=np.float32)
    try:
        if split:
            from .fine_split import fit_split

            assert thumbs is not None
            code: Any = fit_split(x, thumbs, config.bits, size[0], size[1], _usable_bits,
                                  config.kind)
        else:
            cfg = dataclasses.replace(config, bits=_usable_bits(config.bits, config, x))
            code = fit_fine_code(x, cfg)
    except ValueError as exc:  # a tiny archive: the bundle works without one (Encoder.fine_bits None)
        log.warning("no fine code in this bundle: %s", exc)
        return contents
    name = getattr(data.archive, "name", "") or "archive"
    fitted_on = f"train side of {name}: {len(x)} images, {source} (no labels)"
    if split:
        fitted_on += " and 16 x 16 colour thumbnails of the input"
    code = dataclasses.replace(code, fitted_on=fitted_on)
    database = contents.database
    if database is not None:
        database = {**database, "fine": _database_fine(contents, data, train_idx, (x, thumbs),
                                                       code)}
    return dataclasses.replace(contents, fine_code=code, database=database)


def _pooled(contents: Any, data: Any, indices: np.ndarray, thumbs: bool = False, *,
            pooled: bool = True) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]]:
    """Pooled features of the archive's ``indices`` by one pass of ``contents.net`` (the tap
    the graph's fine head uses), in chunks of 256 images; with ``thumbs`` also their 16 x 16
    thumbnails (:mod:`.fine_split`) from the same decoded images; and the input size.
    ``pooled=False`` decodes for the thumbnails only (methods whose features are cached): the
    features are then an empty array."""
    from .features import load_prepared
    from .onnx_export import pooled_outputs

    feats, thumb_parts, size = [], [], (0, 0)
    for s in range(0, len(indices), 256):
        images = load_prepared(data.archive, indices[s:s + 256], contents.preprocess)
        size = (int(images.shape[1]), int(images.shape[2]))
        if pooled:
            feats.append(pooled_outputs(contents.net, contents.normalize, images))
        if thumbs:
            thumb_parts.append(_thumbs_of(images))
    return (np.concatenate(feats) if feats else np.zeros((0, 0), np.float32),
            np.concatenate(thumb_parts) if thumbs else None, size)


def _thumbs_of(images: np.ndarray) -> np.ndarray:
    """16 x 16 thumbnails ``(n, 768)`` of prepared uint8 images, as the graph computes them."""
    from .fine_split import Thumbnails

    module = Thumbnails(int(images.shape[1]), int(images.shape[2]))
    with torch.no_grad():
        return module(torch.as_tensor(np.ascontiguousarray(images))).numpy()


def _database_fine(contents: Any, data: Any, train_idx: np.ndarray,
                   train_side: tuple[np.ndarray, np.ndarray | None], code: Any) -> np.ndarray:
    """Packed fine codes of the bundle's database images, in the database's order: from the
    train side's features (and thumbnails) when the database is the train side (AHCL), else
    from a pass of the network over the database images."""
    x, thumbs = train_side
    split = thumbs is not None
    ids = [str(i) for i in contents.database["ids"]]
    items = data.archive.items
    row = {items[int(i)].id: r for r, i in enumerate(train_idx)}
    if all(i in row for i in ids):
        rows = [row[i] for i in ids]
        feats, db_thumbs = x[rows], (thumbs[rows] if thumbs is not None else None)
    else:
        where = {it.id: n for n, it in enumerate(items)}
        feats, db_thumbs, _ = _pooled(contents, data, np.asarray([where[i] for i in ids],
                                                                 dtype=np.int64), split)
    return code.codes(feats, db_thumbs) if split else code.codes(feats)
