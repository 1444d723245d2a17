"""What AHCL's trainable part eats and how it is encoded: inputs, autocast, the device's name.

Why a module of its own: the trainer (:mod:`.trainer`) is the loop (outer iterations, the V
update, validation, checkpoints); this is the data side it runs on. On the CPU path the frozen
early blocks' activations are cached for the whole archive (:func:`rsir_train.features.frozen_features`)
and the trainable part eats those; on a full fine-tune it eats prepared image crops, normalised on
the device.
"""

from __future__ import annotations

import contextlib
import copy
import os
from typing import Any

import numpy as np
import torch

from rsir_sdk.archive import ArchiveListing

from ..backbones import Backbone, stage_modules
from ..features import Normalize, frozen_features, load_prepared
from ..trainer import Progress
from .config import AHCLConfig
from .model import AHCLNet

__all__ = ["Inputs", "autocast", "build_inputs", "device_name", "encode", "use_amp"]


class Inputs:
    """What the trainable part of the network eats: cached frozen features or image crops.

    The tensor is moved to the training device once (a GPU holds a few thousand crops or
    cached feature maps easily), in channels-last layout when ``channels_last`` (faster
    convolutions on CPU and GPU alike).
    """

    def __init__(self, tensor: torch.Tensor, start_stage: int, normalize: Normalize | None,
                 device: str = "cpu", channels_last: bool = False):
        self.tensor = tensor.to(device)
        if channels_last and self.tensor.ndim == 4 and normalize is None:
            self.tensor = self.tensor.contiguous(memory_format=torch.channels_last)
        self.start_stage = start_stage
        self.normalize = normalize
        self.channels_last = channels_last

    def sub(self, rows: np.ndarray) -> "Inputs":
        """These inputs restricted to ``rows`` (the fit or validation part of a train side)."""
        part = copy.copy(self)
        part.tensor = self.tensor[torch.as_tensor(rows, device=self.tensor.device)]
        if self.channels_last and part.tensor.ndim == 4 and self.normalize is None:
            part.tensor = part.tensor.contiguous(memory_format=torch.channels_last)
        return part

    def batch(self, rows: np.ndarray, device: str) -> torch.Tensor:
        x = self.tensor[torch.as_tensor(rows, device=self.tensor.device)].to(device)
        if self.normalize is not None:
            x = self.normalize(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        return x


def autocast(device: str, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` when ``enabled``, else nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def use_amp(config: AHCLConfig, device: str) -> bool:
    if config.amp not in ("auto", "off", "bf16"):
        raise ValueError(f"amp must be 'auto', 'off' or 'bf16', got {config.amp!r}")
    return config.amp == "bf16" or (config.amp == "auto" and device.startswith("cuda"))


def device_name(device: str) -> str:
    """``cpu (N cores)`` or ``cuda (<GPU name>)``, for the manifest."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(torch.device(device))})"
    return f"cpu ({os.cpu_count()} cores)" if device == "cpu" else device


@torch.no_grad()
def encode(net: AHCLNet, inputs: Inputs, device: str, batch_size: int,
            amp: bool = False) -> np.ndarray:
    net.eval()
    out = []
    n = inputs.tensor.shape[0]
    for s in range(0, n, batch_size):
        with autocast(device, amp):
            u, _ = net(inputs.batch(np.arange(s, min(n, s + batch_size)), device),
                       inputs.start_stage)
        out.append(u.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, net.bits), np.float32)


def build_inputs(backbone: Backbone, normalize: Normalize, n_frozen: int, archive: ArchiveListing,
            train_idx: np.ndarray, query_idx: np.ndarray, preprocess: dict[str, Any],
            config: AHCLConfig, device: str, emit: Progress) -> tuple[Inputs, Inputs]:
    """Inputs of the trainable part for the database and the queries: cached frozen-stage
    outputs when stages are frozen, prepared image crops otherwise.

    The frozen stages' output is cached for the whole archive (in archive order), so every
    split, code length and seed of one archive read the same file.
    """
    cl = device != "cpu" or n_frozen > 0
    if n_frozen:
        for i in range(n_frozen):
            for m in stage_modules(backbone, i):
                m.requires_grad_(False)
        feats = frozen_features(
            backbone, normalize, n_frozen, archive, np.arange(len(archive.items)),
            preprocess, cache_dir=config.cache_dir, device=device,
            batch_size=config.batch_size, progress=emit,
        )
        return (Inputs(feats[torch.as_tensor(train_idx)], n_frozen, None, device, cl),
                Inputs(feats[torch.as_tensor(query_idx)], n_frozen, None, device, cl))
    norm_dev = normalize.to(device)
    return (Inputs(torch.from_numpy(load_prepared(archive, train_idx, preprocess)), 0, norm_dev,
                    device, cl),
            Inputs(torch.from_numpy(load_prepared(archive, query_idx, preprocess)), 0, norm_dev,
                    device, cl))
