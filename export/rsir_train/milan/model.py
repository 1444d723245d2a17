"""MiLAN: metric-learning based deep hashing (Roy, Sangineto, Demir, Sebe; IEEE GRSL 2020).

The method as the authors' code does it: a frozen ImageNet-pretrained CNN gives features
(computed once and cached); only a small hash head is trained on them::

    features (d) -> Linear(d, 1024) -> LeakyReLU(0.2) -> Linear(1024, 512) -> LeakyReLU(0.2)
                 -> Linear(512, K) -> sigmoid = b in (0, 1)^K

with three losses on batches of triplets (anchor, positive, negative):

- triplet loss on the L2-normalised ``b`` (squared Euclidean distances, margin ``alpha=0.2``):
  similar images close, dissimilar ones far;
- push loss ``-(1/K) mean_i ||b_i - 0.5||^2`` (weight ``beta=0.001``): pushes every activation
  away from 0.5 towards 0 or 1, so binarising loses little;
- balance loss ``mean_i (mean_k b_ik - 0.5)^2`` (weight ``gamma=1``): each code has about as
  many ones as zeros.

Adam (lr 1e-4, betas 0.5/0.9), 10,000 iterations of 30 triplets. Codes are symmetric: bit
``k = b_k > 0.5`` for queries and database alike (:data:`CODE_THRESHOLD`).

This module holds the method's parts and trains the head on precomputed features; feature
caching, ONNX export and the CLI live elsewhere in ``export/``.

>>> import torch
>>> feats, labels = torch.randn(40, 16), [i % 4 for i in range(40)]
>>> head = train_milan_head(feats, labels, bits=16, params=MilanParams(iterations=5))
>>> milan_codes(head, feats).shape
(40, 2)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rsir_sdk.codes import pack_codes, validate_bits

__all__ = [
    "CODE_THRESHOLD",
    "MilanHead",
    "MilanParams",
    "TripletSampler",
    "balance_loss",
    "milan_codes",
    "milan_loss",
    "mine_triplets",
    "push_loss",
    "train_milan_head",
    "triplet_loss",
]

#: bit k of a MiLAN code is ``b_k > CODE_THRESHOLD`` (the manifest's ``code_threshold``)
CODE_THRESHOLD = 0.5

Miner = Literal["random", "batch-hard", "semi-hard"]
ProgressFn = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class MilanParams:
    """Hyper-parameters of MiLAN head training; the defaults are the authors'.

    ``miner="random"`` is the authors' sampler (:class:`TripletSampler`: per batch one class
    gives anchors and positives, another the negatives). ``"batch-hard"`` and ``"semi-hard"``
    instead draw ``classes_per_batch x items_per_class`` images and mine triplets inside the
    batch (:func:`mine_triplets`); they are options, not the published method.
    """

    margin: float = 0.2  # alpha, triplet margin on L2-normalised b
    push_weight: float = 0.001  # beta
    balance_weight: float = 1.0  # gamma
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    iterations: int = 10_000
    triplets_per_batch: int = 30
    hidden: tuple[int, ...] = (1024, 512)
    negative_slope: float = 0.2  # LeakyReLU
    miner: Miner = "random"
    classes_per_batch: int = 6  # miners only
    items_per_class: int = 5  # miners only
    seed: int = 0
    device: str | None = None  # None: train where the features are
    log_every: int = 100  # progress callback period, in iterations

    def to_dict(self) -> dict:
        """Plain JSON-able dict, for the bundle manifest's ``training.hyperparameters``."""
        out = asdict(self)
        out["betas"] = list(self.betas)
        out["hidden"] = list(self.hidden)
        return out


class MilanHead(nn.Module):
    """The MiLAN hash head: an MLP with LeakyReLU whose sigmoid output ``b`` is in (0, 1)^K.

    >>> MilanHead(2048, 32)(torch.zeros(1, 2048)).shape
    torch.Size([1, 32])
    """

    def __init__(
        self,
        in_dim: int,
        bits: int,
        hidden: Sequence[int] = (1024, 512),
        negative_slope: float = 0.2,
    ):
        super().__init__()
        self.in_dim = int(in_dim)
        self.bits = validate_bits(bits)
        layers: list[nn.Module] = []
        width = self.in_dim
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.LeakyReLU(negative_slope)]
            width = int(h)
        layers.append(nn.Linear(width, self.bits))
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``b = sigmoid(mlp(features))``, shape ``(n, bits)``."""
        return torch.sigmoid(self.mlp(features))


# --------------------------------------------------------------------------- losses


def triplet_loss(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float = 0.2
) -> torch.Tensor:
    """Mean hinge ``max(0, |a - p|^2 - |a - n|^2 + margin)`` on **L2-normalised** rows.

    Inputs are the raw ``b`` of shape ``(n, K)``; each row is scaled to unit length first (as
    the authors do), so for the non-negative ``b`` every squared distance lies in [0, 2].

    >>> a, p, n = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    >>> triplet_loss(a, p, n, margin=0.2)  # |a-p|^2 = 0, |a-n|^2 = 2
    tensor(0.)
    """
    a, p, n = (F.normalize(t, dim=1, eps=1e-10) for t in (anchor, positive, negative))
    pos_dist = (a - p).pow(2).sum(dim=1)
    neg_dist = (a - n).pow(2).sum(dim=1)
    return F.relu(pos_dist - neg_dist + margin).mean()


def push_loss(b: torch.Tensor) -> torch.Tensor:
    """``-(1/K) mean_i ||b_i - 0.5||^2``: minimising it drives activations to 0 or 1.

    >>> push_loss(torch.tensor([[0.0, 1.0]]))  # -(0.25 + 0.25) / 2
    tensor(-0.2500)
    """
    return -(b - 0.5).pow(2).sum(dim=1).mean() / b.shape[1]


def balance_loss(b: torch.Tensor) -> torch.Tensor:
    """``mean_i (mean_k b_ik - 0.5)^2``: each code should hold as many ones as zeros.

    >>> balance_loss(torch.tensor([[1.0, 1.0], [0.0, 1.0]]))  # ((1 - .5)^2 + 0) / 2
    tensor(0.1250)
    """
    return (b.mean(dim=1) - 0.5).pow(2).mean()


def milan_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    params: MilanParams | None = None,
    batch: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss ``triplet + beta * push + gamma * balance`` and its parts (detached).

    Push and balance are taken over every ``b`` of the batch: ``batch`` when given (the mined
    case), else anchors, positives and negatives together (the authors' case).
    """
    params = params or MilanParams()
    every = batch if batch is not None else torch.cat([anchor, positive, negative])
    parts = {
        "triplet": triplet_loss(anchor, positive, negative, params.margin),
        "push": push_loss(every),
        "balance": balance_loss(every),
    }
    total = (
        parts["triplet"]
        + params.push_weight * parts["push"]
        + params.balance_weight * parts["balance"]
    )
    return total, {"loss": total.detach(), **{k: v.detach() for k, v in parts.items()}}


# --------------------------------------------------------------------------- sampling


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
        self.class_ids, self.class_names = _factorize(labels)
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


# --------------------------------------------------------------------------- training


def train_milan_head(
    features: torch.Tensor,
    labels: Sequence,
    bits: int,
    params: MilanParams | None = None,
    progress: ProgressFn | None = None,
) -> MilanHead:
    """Train a :class:`MilanHead` on precomputed (frozen-backbone) features.

    Args:
        features: ``(n, d)`` float features of the training images (CPU or CUDA tensor).
        labels: ``n`` class labels, any hashable values.
        bits: code length K, a multiple of 8.
        params: hyper-parameters (default: the authors').
        progress: called as ``progress(iteration, iterations, losses)`` every
            ``params.log_every`` iterations and at the last, with ``losses`` the float values
            of ``loss``, ``triplet``, ``push``, ``balance`` on that batch.

    Returns the head in eval mode on the training device. Deterministic for a given seed on a
    given device: the weights are initialised from ``params.seed`` (on CPU, so CPU and CUDA
    runs start alike) and the batches come from a numpy generator with the same seed; the
    global torch RNG is left untouched.
    """
    params = params or MilanParams()
    features = torch.as_tensor(features)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(
            f"features must be (n, d) with one label per row, got shape {tuple(features.shape)} "
            f"and {len(labels)} labels"
        )
    device = torch.device(params.device) if params.device else features.device
    x = features.detach().to(device=device, dtype=torch.float32)
    sampler = TripletSampler(labels, seed=params.seed, triplets_per_batch=params.triplets_per_batch)
    class_ids = torch.as_tensor(sampler.class_ids, device=device)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        head = MilanHead(x.shape[1], bits, params.hidden, params.negative_slope)
    head = head.to(device).train()
    optimizer = torch.optim.Adam(head.parameters(), lr=params.lr, betas=params.betas)

    for step in range(1, params.iterations + 1):
        if params.miner == "random":
            triplets = torch.as_tensor(sampler.sample(), device=device)
            b = head(x[triplets.T.reshape(-1)]).view(3, len(triplets), -1)
            loss, parts = milan_loss(b[0], b[1], b[2], params)
        else:
            idx = torch.as_tensor(
                sampler.pk_batch(params.classes_per_batch, params.items_per_class), device=device
            )
            b = head(x[idx])
            a, p, n = mine_triplets(b, class_ids[idx], params.margin, params.miner)
            loss, parts = milan_loss(b[a], b[p], b[n], params, batch=b)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress is not None and (step % params.log_every == 0 or step == params.iterations):
            progress(step, params.iterations, {k: float(v) for k, v in parts.items()})
    return head.eval()


@torch.no_grad()
def milan_codes(head: MilanHead, features: torch.Tensor, batch_size: int = 4096) -> np.ndarray:
    """Packed ``uint8 (n, bits/8)`` codes of ``features``: bit k = ``b_k > 0.5``, big-endian.

    >>> head = MilanHead(4, 8)
    >>> milan_codes(head, torch.zeros(3, 4)).dtype
    dtype('uint8')
    """
    device = next(head.parameters()).device
    features = torch.as_tensor(features)
    was_training = head.training
    head.eval()
    chunks = [
        (head(features[i : i + batch_size].to(device, torch.float32)) > CODE_THRESHOLD).cpu()
        for i in range(0, len(features), batch_size)
    ]
    head.train(was_training)
    if not chunks:
        return np.zeros((0, head.bits // 8), dtype=np.uint8)
    return pack_codes(torch.cat(chunks).numpy())


def _factorize(labels: Sequence) -> tuple[np.ndarray, list]:
    """Class id per item (``int64``) and the distinct labels in order of first appearance."""
    items = labels.tolist() if isinstance(labels, (np.ndarray, torch.Tensor)) else list(labels)
    ids: dict = {}
    class_ids = np.fromiter(
        (ids.setdefault(x, len(ids)) for x in items), dtype=np.int64, count=len(items)
    )
    return class_ids, list(ids)
