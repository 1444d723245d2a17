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

This module holds the method's network, losses and codes; triplets are
:mod:`rsir_train.milan.triplets`, head training :mod:`rsir_train.milan.trainer`.

>>> import torch
>>> milan_codes(MilanHead(16, 16), torch.randn(40, 16)).shape
(40, 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rsir_sdk.codes import pack_codes, validate_bits

from ..backbones import Backbone
from ..folds import SMALL_ARCHIVE
from .triplets import Miner

__all__ = [
    "CODE_THRESHOLD",
    "MilanHead",
    "MilanNet",
    "MilanParams",
    "balance_loss",
    "milan_codes",
    "milan_loss",
    "push_loss",
    "triplet_loss",
]

#: what a validation measures (:attr:`MilanParams.val_metric`)
ValMetric = Literal["auto", "database", "archive"]
VAL_METRICS: tuple[str, ...] = get_args(ValMetric)

#: bit k of a MiLAN code is ``b_k > CODE_THRESHOLD`` (the manifest's ``code_threshold``)
CODE_THRESHOLD = 0.5
#: iterations between validations on a train side of 1,000 images or more
DEFAULT_VAL_EVERY = 250
#: passes over the fit part between validations on a smaller one: 250 iterations of 30
#: images over nwpu12's 1,152 fit images (60/40), the setting of the full-set rows
VAL_PASSES = 6.5



@dataclass(frozen=True)
class MilanParams:
    """Hyper-parameters of MiLAN head training; the losses, optimiser and head are the authors'.

    ``miner="random"`` is the authors' sampler (:class:`TripletSampler`: per batch one class
    gives anchors and positives, another the negatives); :meth:`authors` uses it.
    ``"batch-hard"`` (the default) and ``"semi-hard"`` instead draw ``classes_per_batch x
    items_per_class`` images and mine triplets inside the batch (:func:`mine_triplets`): with
    random triplets the triplet loss is zero for most of them early on and the head stops
    learning; on nwpu12 (60/40, 64 bits, validation split of the train side) batch-hard
    mining gave validation mAP 0.896 against 0.854 for random triplets (0.848 for the
    supervised linear hash) and stopped early after 3,750 iterations (docs/results.md).
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
    miner: Miner = "batch-hard"
    classes_per_batch: int = 6  # miners only
    items_per_class: int = 5  # miners only
    seed: int = 0
    device: str | None = None  # None: train where the features are
    log_every: int = 100  # progress callback period, in iterations
    # ---- model selection on a validation split drawn from the train side (not the authors'):
    # every ``val_every`` iterations the head codes the held-out part (``val_fraction`` of
    # each class) and the rest; the head with the best mAP of the one against the other is
    # kept, and training stops after ``patience`` evaluations without improvement (0 = never).
    # ``refit``: then train a fresh head on the whole train side for the chosen number of
    # iterations. ``val_fraction=0`` is the authors' run (fixed iterations, last head).
    # ``val_metric``: what the validation measures. ``"database"``: the held-out codes ranked
    # against the fit part's codes, mAP over all of it (the AHCL protocol's question: queries
    # against the images the codes were fitted to). ``"archive"``: the held-out codes ranked
    # among themselves, leave-one-out, mAP@20 (the MiLAN protocol's question: an archive of
    # images the head never saw). ``"auto"``: ``"archive"`` on a 60-40 split, else ``"database"``.
    val_fraction: float = 0.2
    # on a train side under 1,000 images (rsir_train.folds.SMALL_ARCHIVE) the head is chosen on
    # ``val_folds`` stratified folds instead of one split: one head per fold trained in
    # lockstep, the fold-averaged validation curve picks the iteration, patience watches that
    # curve, and a fresh head is refit on the whole train side for that many iterations
    # (rsir_train.milan.selection; 1 = one ``val_fraction`` split at any size, as before)
    val_folds: int = 3
    val_metric: ValMetric = "auto"
    # None: 250 on a train side of 1,000 images or more; below, about VAL_PASSES passes over
    # the validated fit part (multiples of 25), ``patience`` then scaled to span the same
    # iterations (:meth:`resolved_validation`)
    val_every: int | None = None
    patience: int = 8
    refit: bool = False
    weight_decay: float = 0.0  # Adam L2 penalty on the head's weights
    # dropout on the input features while training (a regulariser for small archives; the
    # head and the exported graph are unchanged: nothing is dropped at inference)
    input_dropout: float = 0.0
    # weight of an auxiliary cross-entropy: a linear classifier on b (K -> classes) trained with
    # the head and thrown away (the exported head and graph are the authors'). On a check part
    # of the train side cut like the 60-40 protocol (40 % of each class), scored tie-aware, it
    # lifted 5 of 6 (dataset, bits) by 0.010-0.041 mAP@20 and put all six above the supervised
    # linear hash (docs/training.md); 0 = off (the authors' recipe).
    classifier_weight: float = 1.0
    # Polyak averaging: the head that is validated and returned is an exponential moving
    # average of the trained weights (decay per iteration; 0 = off, the authors'). Adam with
    # the authors' beta1 0.5 makes the head jitter from one validation to the next
    # (+-0.01 mAP@20 every 250 iterations); the average sits in the middle of that jitter.
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), not {self.ema_decay}")
        if not 0.0 <= self.input_dropout < 1.0:
            raise ValueError(f"input_dropout must be in [0, 1), not {self.input_dropout}")
        if self.classifier_weight < 0:
            raise ValueError(f"classifier_weight must be >= 0, not {self.classifier_weight}")
        if self.val_every is not None and self.val_every < 1:
            raise ValueError(f"val_every must be >= 1 (leave it unset for the automatic "
                             f"period), not {self.val_every}")
        if self.val_folds < 1:
            raise ValueError(f"val_folds must be >= 1, not {self.val_folds}")
        if self.val_metric not in VAL_METRICS:
            raise ValueError(f"val_metric must be auto, database or archive, not {self.val_metric!r}")

    def resolved_validation(self, n_train: int, n_fit: int) -> "MilanParams":
        """These parameters with the validation period resolved (``val_every=None``): 250
        iterations on a train side of :data:`~rsir_train.folds.SMALL_ARCHIVE` images or more
        (the full-set rows: about 6.5 passes over nwpu12's 1,152 fit images); below, the same
        :data:`VAL_PASSES` passes over the ``n_fit`` images a head is fitted to, in multiples
        of 25, at least 25, and ``patience`` scaled by 250 / period so that it still spans
        ``patience x 250`` iterations (Adam moves the head per step, not per pass: on eurosat
        at 30 a class, 80/20, a 200-iteration patience stopped the 64-bit folds on a plateau at
        525 where one split had found its best at 1,000). At a 250-iteration period a 120-image
        fit part is validated every 62 passes and its fold-mean curve peaked at the first
        validation (eurosat, 30 a class, 60/40, issue 21). Set by hand, ``val_every`` and
        ``patience`` are kept."""
        if self.val_every:
            return self
        if n_train >= SMALL_ARCHIVE:
            return replace(self, val_every=DEFAULT_VAL_EVERY)
        per_batch = (3 * self.triplets_per_batch if self.miner == "random"
                     else self.classes_per_batch * self.items_per_class)
        every = int(min(DEFAULT_VAL_EVERY, max(25, 25 * round(VAL_PASSES * n_fit / per_batch / 25))))
        patience = -(-self.patience * DEFAULT_VAL_EVERY // every)
        return replace(self, val_every=every, patience=patience)

    @classmethod
    def authors(cls, **overrides: object) -> "MilanParams":
        """The published recipe: 10,000 iterations of random triplets, no validation split,
        last head, no auxiliary classifier."""
        return cls(**{"val_fraction": 0.0, "patience": 0, "miner": "random",  # type: ignore[arg-type]
                      "classifier_weight": 0.0, "ema_decay": 0.0, **overrides})

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


class MilanNet(nn.Module):
    """Normalised NCHW images -> frozen backbone (pooled) -> :class:`MilanHead` -> ``b``.

    The module that :func:`rsir_train.onnx_export.export_onnx` wraps with the uint8 NHWC input,
    normalisation and bit packing.
    """

    def __init__(self, backbone: Backbone, head: MilanHead):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.bits = head.bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


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
