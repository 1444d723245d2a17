"""AHCL (asymmetric hash code learning, Song et al., TGRS 2022): network, loss and code update.

The network maps an image to ``u = tanh(W h + b)`` in ``(-1, 1)^K`` and classifies ``u``. The
database codes ``V`` in ``{-1, +1}^{n x K}`` are free variables learned alongside it:

    L = sum_j (u_i^T v_j - K S_ij)^2 + lambda ||v_i - u_i||^2   (both / (n * batch))
        + gamma * CE(classifier(u_i), y_i)

with ``S_ij = 1`` for the same class and ``-r`` otherwise (``r`` = #similar / #dissimilar
pairs of the block). After each outer iteration ``V`` is updated column by column in closed
form (:func:`update_codes`), exactly as the authors' (ADSH-derived) code does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone


class AHCLNet(nn.Module):
    """Backbone → ``Linear(d, K)`` + tanh (the hash layer, ``u``) → ``Linear(K, classes)``.

    ``forward(x, start_stage)`` accepts either normalised images (``start_stage=0``) or the
    cached output of the frozen stages (``start_stage=s``); it returns ``(u, logits)``.
    """

    def __init__(self, backbone: Backbone, bits: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.hash_layer = nn.Linear(backbone.out_dim, bits)
        self.classifier = nn.Linear(bits, num_classes)
        self.bits = bits

    def forward(self, x: torch.Tensor, start_stage: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone.head(self.backbone.forward_stages(x, start_stage))
        u = torch.tanh(self.hash_layer(feats))
        return u, self.classifier(u)


def similarity(labels_a: np.ndarray, labels_b: np.ndarray) -> np.ndarray:
    """``S`` (``float32 (a, b)``): 1 for the same class, ``-r`` otherwise, r = #sim / #dissim."""
    same = labels_a[:, None] == labels_b[None, :]
    n_sim = float(same.sum())
    n_dis = float(same.size - n_sim)
    r = n_sim / n_dis if n_dis > 0 else 0.0
    return np.where(same, 1.0, -r).astype(np.float32)


def similarity_t_times(labels_sample: np.ndarray, labels_db: np.ndarray, U: np.ndarray) -> np.ndarray:
    """``S^T U`` (``n x K``) for ``S = similarity(labels_sample, labels_db)``, without forming ``S``.

    Memory ``O((n + m) K)`` instead of ``O(n m)``, so large databases fit.
    """
    classes, inv = np.unique(np.concatenate([labels_sample, labels_db]), return_inverse=True)
    ls, ld = inv[: len(labels_sample)], inv[len(labels_sample):]
    U = np.asarray(U, dtype=np.float64)
    class_sums = np.zeros((len(classes), U.shape[1]))
    np.add.at(class_sums, ls, U)
    n_sim = float((np.bincount(ls, minlength=len(classes)) * np.bincount(ld, minlength=len(classes))).sum())
    n_dis = float(len(labels_sample) * len(labels_db) - n_sim)
    r = n_sim / n_dis if n_dis > 0 else 0.0
    return (1.0 + r) * class_sums[ld] - r * U.sum(axis=0, keepdims=True)


def ahcl_loss(
    u: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    V: torch.Tensor,
    V_batch: torch.Tensor,
    S: torch.Tensor,
    lam: float,
    gamma: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The AHCL loss of one batch and its terms (pairwise, quantization, classification)."""
    n, bits = V.shape
    batch = u.shape[0]
    pairwise = ((u @ V.t() - bits * S) ** 2).sum() / (n * batch)
    quant = lam * ((V_batch - u) ** 2).sum() / (n * batch)
    ce = gamma * F.cross_entropy(logits, labels)
    loss = pairwise + quant + ce
    return loss, {"pairwise": float(pairwise.detach()), "quantization": float(quant.detach()),
                  "classification": float(ce.detach())}


def code_objective(V: np.ndarray, U: np.ndarray, S: np.ndarray, sample_index: np.ndarray, lam: float) -> float:
    """The objective the V-step minimises: ``||U V^T - K S||^2 + lambda ||V[Ω] - U||^2``."""
    bits = V.shape[1]
    r = U @ V.T - bits * S
    q = V[sample_index] - U
    return float((r * r).sum() + lam * (q * q).sum())


def update_codes(
    V: np.ndarray, U: np.ndarray, S: np.ndarray | None, sample_index: np.ndarray, lam: float,
    *, StU: np.ndarray | None = None,
) -> np.ndarray:
    """One sweep of the closed-form bit-by-bit V update; returns the new ``V`` in ``{-1, +1}``.

    ``U`` (``m x K``) holds the network outputs of the sampled images (rows ``sample_index`` of
    the database), ``S`` (``m x n``) their similarity to every database item. With
    ``Q = -2K S^T U - 2 lambda Ū``, column ``k`` becomes
    ``-sign(Q[:,k] + 2 V_¬k U_¬k^T U[:,k])``; each column step minimises the objective exactly
    given the others, so :func:`code_objective` never increases. A zero argument keeps the
    previous bit (+1 where the previous value was 0, as at the start), so V stays ±1.
    ``StU`` (``S^T U``, see :func:`similarity_t_times`) may be given instead of ``S``.
    """
    V = np.array(V, dtype=np.float64, copy=True)
    U = np.asarray(U, dtype=np.float64)
    n, bits = V.shape
    U_bar = np.zeros((n, bits))
    U_bar[sample_index] = U
    if StU is None:
        StU = np.asarray(S, dtype=np.float64).T @ U
    Q = -2.0 * bits * np.asarray(StU, dtype=np.float64) - 2.0 * lam * U_bar
    for k in range(bits):
        rest = np.arange(bits) != k
        arg = Q[:, k] + 2.0 * V[:, rest] @ (U[:, rest].T @ U[:, k])
        prev = np.where(V[:, k] == 0, 1.0, V[:, k])
        V[:, k] = np.where(arg > 0, -1.0, np.where(arg < 0, 1.0, prev))
    return V.astype(np.float32)
