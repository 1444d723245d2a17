"""MiLAN's triplets: the authors' random sampler and two in-batch miners (options).

Why apart from the model: which (anchor, positive, negative) triplets a step sees is the one
part of MiLAN that is pure indexing (numpy) plus, for the miners, distances on a batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Miner", "TripletSampler", "factorize", "mine_triplets"]

Miner = Literal["random", "batch-hard", "semi-hard"]


class TripletSampler:
    """The authors' triplet sampler over integer indices of a labelled training set.

    Each batch: one class (among those with >= 2 items) gives anchors and positives, another
    class gives the negatives, so a negative never shares the anchor's class. When the class
    has at least ``2n`` items, anchors and positives are ``2n`` distinct items (exactly the
    authors' draw); otherwise items repeat, but a positive never equals its own anchor.

    Iterating yields ``int64 (triplets_per_batch, 3)`` arrays of (anchor, positive, negative)
    indices forever. Labels are any hashable values. Seeded: the same seed, same batches.

    >>> s = TripletSampler(["a", "a", "b", "b", "c"], seed=0, triplets_per_batch=4)
    >>> s.sample().shape
    (4, 3)
    """

    def __init__(self, labels: Sequence, seed: int = 0, triplets_per_batch: int = 30):
        if triplets_per_batch < 1:
            raise ValueError(f"triplets_per_batch must be >= 1, got {triplets_per_batch}")
        self.triplets_per_batch = int(triplets_per_batch)
        self.class_ids, self.class_names = factorize(labels)
        self.members = [np.flatnonzero(self.class_ids == c) for c in range(len(self.class_names))]
        if len(self.members) < 2:
            raise ValueError(
                f"triplets need at least 2 classes, the labels hold {len(self.members)}: "
                f"{self.class_names[:1]}"
            )
        self.anchor_classes = np.array([c for c, m in enumerate(self.members) if len(m) >= 2])
        if len(self.anchor_classes) == 0:
            raise ValueError(
                "triplets need a class with at least 2 items (an anchor and a different "
                "positive); every class here has a single item"
            )
        self.rng = np.random.default_rng(seed)

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            yield self.sample()

    def sample(self, n: int | None = None) -> np.ndarray:
        """One batch of ``n`` (default ``triplets_per_batch``) triplets, ``int64 (n, 3)``."""
        n = self.triplets_per_batch if n is None else int(n)
        pos_class = self.rng.choice(self.anchor_classes)
        others = np.delete(np.arange(len(self.members)), pos_class)
        neg_class = self.rng.choice(others)
        anchors, positives = self._pairs(self.members[pos_class], n)
        negatives = self._draw(self.members[neg_class], n)
        return np.stack([anchors, positives, negatives], axis=1).astype(np.int64)

    def pk_batch(self, classes_per_batch: int, items_per_class: int) -> np.ndarray:
        """Indices of ``P`` random classes (>= 2 items each) x ``K`` items, for mining."""
        p = min(int(classes_per_batch), len(self.anchor_classes))
        if items_per_class < 2:
            raise ValueError(
                f"items_per_class must be >= 2 to hold positives, got {items_per_class}"
            )
        if p < 2:
            raise ValueError(
                "mining needs at least 2 classes with >= 2 items; use miner='random'"
            )
        classes = self.rng.choice(self.anchor_classes, size=p, replace=False)
        return np.concatenate([self._draw(self.members[c], items_per_class) for c in classes])

    def _pairs(self, members: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        m = len(members)
        if m >= 2 * n:
            picked = self.rng.permutation(m)[: 2 * n]
            return members[picked[:n]], members[picked[n:]]
        anchor_pos = self.rng.choice(m, size=n, replace=m < n)
        # a non-zero offset modulo m: the positive is always another item of the class
        positive_pos = (anchor_pos + self.rng.integers(1, m, size=n)) % m
        return members[anchor_pos], members[positive_pos]

    def _draw(self, members: np.ndarray, n: int) -> np.ndarray:
        return self.rng.choice(members, size=n, replace=len(members) < n)


def mine_triplets(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.2,
    strategy: Literal["batch-hard", "semi-hard"] = "batch-hard",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mine (anchor, positive, negative) index tensors inside a batch of ``b`` vectors.

    Distances are squared Euclidean on L2-normalised rows, as in :func:`triplet_loss`.

    - ``"batch-hard"``: per anchor, its farthest positive and nearest negative;
    - ``"semi-hard"``: per (anchor, positive) pair, the nearest negative farther than the
      positive (``d_ap < d_an``; inside the margin whenever such a negative exists), or the
      nearest negative when none is farther.

    Anchors without a positive or a negative in the batch are skipped.
    """
    with torch.no_grad():
        e = F.normalize(embeddings, dim=1, eps=1e-10)
        dist = torch.cdist(e, e).pow(2)
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        pos_mask, neg_mask = same & ~eye, ~same
        inf = torch.tensor(float("inf"), device=dist.device)
        if strategy == "batch-hard":
            valid = pos_mask.any(1) & neg_mask.any(1)
            anchors = torch.nonzero(valid).squeeze(1)
            positives = torch.where(pos_mask, dist, -inf)[anchors].argmax(1)
            negatives = torch.where(neg_mask, dist, inf)[anchors].argmin(1)
            return anchors, positives, negatives
        if strategy != "semi-hard":
            raise ValueError(f"unknown mining strategy {strategy!r}")
        anchors, positives = torch.nonzero(pos_mask & neg_mask.any(1, keepdim=True), as_tuple=True)
        d_ap = dist[anchors, positives][:, None]
        d_an = torch.where(neg_mask[anchors], dist[anchors], inf)
        farther = torch.where(d_an > d_ap, d_an, inf)
        negatives = torch.where(
            torch.isfinite(farther.min(1).values), farther.argmin(1), d_an.argmin(1)
        )
        return anchors, positives, negatives


def factorize(labels: Sequence) -> tuple[np.ndarray, list]:
    """Class id per item (``int64``) and the distinct labels in order of first appearance."""
    items = labels.tolist() if isinstance(labels, (np.ndarray, torch.Tensor)) else list(labels)
    ids: dict = {}
    class_ids = np.fromiter(
        (ids.setdefault(x, len(ids)) for x in items), dtype=np.int64, count=len(items)
    )
    return class_ids, list(ids)
