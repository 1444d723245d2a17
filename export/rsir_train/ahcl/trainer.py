"""The AHCL trainer: outer iterations of network epochs followed by the closed-form V update.

Library code: it logs through :mod:`logging` and reports progress through an optional
callback (``progress(event: dict)``), never prints. It checkpoints after every outer iteration
and resumes from the checkpoint when asked; it is seeded end to end.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .ahcl import AHCLNet, ahcl_loss, similarity, similarity_t_times, update_codes
from .backbones import Backbone, build_backbone, default_device
from .data import Archive, Split
from .features import Normalize, frozen_features, load_prepared

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]


class TrainingError(RuntimeError):
    """Training cannot start or continue (bad configuration, checkpoint of another run)."""


@dataclass
class AHCLConfig:
    """Hyper-parameters; the defaults are those of the AHCL authors' code."""

    bits: int = 64
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    weights: str | None = None
    lr: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 5e-4
    batch_size: int = 64
    outer: int = 30
    inner: int = 2
    lr_steps: tuple[int, ...] = (10, 20)
    lr_decay: float = 0.1
    lam: float = 200.0
    gamma: float = 20.0
    num_samples: int | None = 2000
    freeze_blocks: int = 0
    preprocess: dict[str, Any] | None = None
    seed: int = 0
    device: str | None = None
    eval_every: int = 0
    cache_dir: str | None = None

    def resolved_preprocess(self, backbone: Backbone) -> dict[str, Any]:
        """This run's preprocessing: the backbone's defaults overridden by ``preprocess``."""
        pre = dict(backbone.preprocess)
        pre.update(self.preprocess or {})
        pre["scale"] = 1.0 / 255.0
        return pre


@dataclass
class AHCLResult:
    """What training produced: the network, learned database codes and its history."""

    net: AHCLNet
    normalize: Normalize
    preprocess: dict[str, Any]
    V: np.ndarray  # float32 (n_train, bits) in {-1, +1}
    train_indices: np.ndarray
    query_indices: np.ndarray
    classes: list[str]
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    device: str = "cpu"
    config: AHCLConfig | None = None


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _map(query_codes: np.ndarray, query_labels, db_codes: np.ndarray, db_labels) -> float:
    from rsir_sdk.metrics import mean_average_precision

    return float(mean_average_precision(query_codes, query_labels, db_codes, db_labels))


def _pack(signs: np.ndarray) -> np.ndarray:
    from rsir_sdk.codes import pack_codes

    return pack_codes(np.asarray(signs) > 0)


class _Inputs:
    """What the trainable part of the network eats: cached frozen features or image crops."""

    def __init__(self, tensor: torch.Tensor, start_stage: int, normalize: Normalize | None):
        self.tensor = tensor
        self.start_stage = start_stage
        self.normalize = normalize

    def batch(self, rows: np.ndarray, device: str) -> torch.Tensor:
        x = self.tensor[torch.as_tensor(rows)].to(device)
        return self.normalize(x) if self.normalize is not None else x


@torch.no_grad()
def _encode(net: AHCLNet, inputs: _Inputs, device: str, batch_size: int) -> np.ndarray:
    net.eval()
    out = []
    n = inputs.tensor.shape[0]
    for s in range(0, n, batch_size):
        u, _ = net(inputs.batch(np.arange(s, min(n, s + batch_size)), device), inputs.start_stage)
        out.append(u.cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, net.bits), np.float32)


def _set_train_mode(net: AHCLNet, n_frozen: int) -> None:
    from .backbones import stage_modules

    net.train()
    for i in range(n_frozen):
        for m in stage_modules(net.backbone, i):
            m.eval()  # frozen BatchNorm keeps its ImageNet statistics


def train_ahcl(
    archive: Archive,
    split: Split,
    config: AHCLConfig,
    *,
    work_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> AHCLResult:
    """Train AHCL on ``split``'s train side (= the database); evaluate on its query side.

    ``work_dir`` holds ``checkpoint.pt`` (written after every outer iteration); with ``resume``
    training continues from it. Returns an :class:`AHCLResult`.
    """
    emit = progress or (lambda event: None)
    seed_everything(config.seed)
    device = config.device or default_device()
    t0 = time.perf_counter()

    backbone = build_backbone(config.backbone, config.pretrained, config.weights)
    preprocess = config.resolved_preprocess(backbone)
    normalize = Normalize(preprocess["mean"], preprocess["std"])
    classes = archive.classes
    labels_all = archive.labels()
    train_idx, query_idx = split.indices(archive)
    if len(train_idx) == 0:
        raise TrainingError("the split's train side is empty")
    y_db = labels_all[train_idx]
    y_q = labels_all[query_idx]
    net = AHCLNet(backbone, config.bits, len(classes)).to(device)
    n_frozen = backbone.frozen_stages(config.freeze_blocks)

    # inputs of the trainable part
    if n_frozen:
        from .backbones import stage_modules

        for i in range(n_frozen):
            for m in stage_modules(backbone, i):
                m.requires_grad_(False)
        all_idx = np.concatenate([train_idx, query_idx])
        feats = frozen_features(
            backbone, normalize, n_frozen, archive, all_idx, preprocess,
            cache_dir=config.cache_dir, device=device, batch_size=config.batch_size,
            progress=emit,
        )
        db_in = _Inputs(feats[: len(train_idx)], n_frozen, None)
        q_in = _Inputs(feats[len(train_idx):], n_frozen, None)
    else:
        norm_dev = normalize.to(device)
        db_in = _Inputs(torch.from_numpy(load_prepared(archive, train_idx, preprocess)), 0, norm_dev)
        q_in = _Inputs(torch.from_numpy(load_prepared(archive, query_idx, preprocess)), 0, norm_dev)
    prep_seconds = time.perf_counter() - t0
    log.info("inputs ready in %.1fs (%d frozen stages)", prep_seconds, n_frozen)

    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    n = len(train_idx)
    bits = config.bits
    V = np.zeros((n, bits), dtype=np.float32)
    y_db_t = torch.as_tensor(y_db)
    rng = np.random.default_rng(config.seed)
    history: list[dict[str, Any]] = []
    start_outer = 0
    elapsed_before = 0.0

    ckpt_path = Path(work_dir) / "checkpoint.pt" if work_dir else None
    if resume and ckpt_path is not None and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ck["config"] != dataclasses.asdict(config) or ck["train_ids"] != split.train_ids:
            raise TrainingError(
                f"checkpoint {ckpt_path} belongs to another configuration or split; "
                f"remove it or train without --resume"
            )
        net.load_state_dict(ck["net"])
        opt.load_state_dict(ck["optimizer"])
        V = ck["V"]
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        history = ck["history"]
        start_outer = ck["outer_done"]
        elapsed_before = ck["train_seconds"]
        log.info("resumed from %s after outer iteration %d", ckpt_path, start_outer)
        emit({"event": "resumed", "outer_done": start_outer})

    t_train = time.perf_counter()
    for outer in range(start_outer, config.outer):
        lr = config.lr * config.lr_decay ** sum(outer >= s for s in config.lr_steps)
        for g in opt.param_groups:
            g["lr"] = lr
        t_it = time.perf_counter()
        m = n if not config.num_samples else min(n, config.num_samples)
        sample = np.sort(rng.permutation(n)[:m])
        U = np.zeros((m, bits), dtype=np.float32)
        V_t = torch.from_numpy(V).to(device)
        sums = {"pairwise": 0.0, "quantization": 0.0, "classification": 0.0, "loss": 0.0}
        steps = 0
        for _ in range(config.inner):
            _set_train_mode(net, n_frozen)
            order = rng.permutation(m)
            for b in range(0, m, config.batch_size):
                pos = order[b : b + config.batch_size]
                rows = sample[pos]
                if len(rows) < 2:
                    continue  # BatchNorm cannot train on one image
                x = db_in.batch(rows, device)
                u, logits = net(x, db_in.start_stage)
                S = torch.from_numpy(similarity(y_db[rows], y_db)).to(device)
                loss, terms = ahcl_loss(
                    u, logits, y_db_t[rows].to(device), V_t, V_t[torch.as_tensor(rows)], S,
                    config.lam, config.gamma,
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                U[pos] = u.detach().cpu().numpy()
                for k, v in terms.items():
                    sums[k] += v
                sums["loss"] += float(loss.detach())
                steps += 1
        V = update_codes(V, U, None, sample, config.lam,
                         StU=similarity_t_times(y_db[sample], y_db, U))
        record: dict[str, Any] = {
            "outer": outer + 1,
            "lr": lr,
            **{k: v / max(steps, 1) for k, v in sums.items()},
            "seconds": time.perf_counter() - t_it,
        }
        if config.eval_every and ((outer + 1) % config.eval_every == 0 or outer + 1 == config.outer):
            uq = _encode(net, q_in, device, config.batch_size)
            record["map_query"] = _map(_pack(uq), y_q, _pack(V), y_db)
        history.append(record)
        log.info("outer %d/%d: %s", outer + 1, config.outer,
                 ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "outer"))
        if ckpt_path is not None:
            ckpt_path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(
                {
                    "config": dataclasses.asdict(config), "train_ids": split.train_ids,
                    "net": net.state_dict(), "optimizer": opt.state_dict(), "V": V,
                    "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                    "history": history, "outer_done": outer + 1,
                    "train_seconds": elapsed_before + time.perf_counter() - t_train,
                },
                str(ckpt_path) + ".tmp",
            )
            os.replace(str(ckpt_path) + ".tmp", ckpt_path)
        emit({"event": "outer", **record})
    train_seconds = prep_seconds + elapsed_before + time.perf_counter() - t_train

    # final evaluation: queries by sign(u); database = learned V (and, for reference, sign(u))
    uq = _encode(net, q_in, device, config.batch_size)
    udb = _encode(net, db_in, device, config.batch_size)
    metrics: dict[str, float] = {}
    if len(query_idx):
        metrics["map_query_vs_learned_db"] = _map(_pack(uq), y_q, _pack(V), y_db)
        metrics["map_query_vs_encoded_db"] = _map(_pack(uq), y_q, _pack(udb), y_db)
        metrics["query_accuracy"] = float(
            (net.classifier(torch.from_numpy(uq).to(device)).argmax(1).cpu().numpy() == y_q).mean()
        )
    metrics["db_code_agreement"] = float(((udb > 0) == (V > 0)).mean())
    net.eval()
    emit({"event": "done", "metrics": metrics, "train_seconds": train_seconds})
    return AHCLResult(
        net=net.cpu(), normalize=normalize.cpu(), preprocess=preprocess, V=V,
        train_indices=train_idx, query_indices=query_idx, classes=classes, history=history,
        metrics=metrics, train_seconds=train_seconds, device=device, config=config,
    )
