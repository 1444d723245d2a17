"""What every trainer shares: the device, seeding, progress events and checkpoints.

Why one module: AHCL and MiLAN train differently but must pick a device, seed torch, numpy and
Python, report progress (``progress(event: dict)``, never print) and, for long runs, write a
checkpoint that a later run resumes only when it belongs to the same configuration and split.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .errors import TrainingError

log = logging.getLogger(__name__)

#: progress callback of the trainers: ``progress({"event": "outer", ...})``
Progress = Callable[[dict[str, Any]], None]
CHECKPOINT_FILE = "checkpoint.pt"

__all__ = ["CHECKPOINT_FILE", "Progress", "default_device", "load_checkpoint", "no_progress",
           "save_checkpoint", "seed_everything", "validation_indices"]


def no_progress(event: dict[str, Any]) -> None:
    """The progress callback used when none is given."""


def default_device() -> str:
    """``cuda`` when a GPU is visible (and ``RSIR_DEVICE`` does not say otherwise), else ``cpu``."""
    env = os.environ.get("RSIR_DEVICE")
    if env:
        return env
    return "cuda" if torch.cuda.is_available() else "cpu"


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` with ``torch.save`` atomically (a crash leaves the previous checkpoint)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, str(tmp))
    os.replace(tmp, path)


def _what_differs(key: str, saved: Any, asked: Any) -> str:
    """``key`` and, for two dicts (a configuration), the fields that differ with both
    values, so the user sees which flag does not match the checkpoint."""
    if not (isinstance(saved, dict) and isinstance(asked, dict)):
        return key
    fields = sorted(f for f in set(saved) | set(asked) if saved.get(f) != asked.get(f))
    shown = ", ".join(f"{f} {saved.get(f)!r} there, {asked.get(f)!r} here" for f in fields[:4])
    return f"{key}: {shown}{' ...' if len(fields) > 4 else ''}"


def load_checkpoint(path: str | os.PathLike, **identity: Any) -> dict[str, Any] | None:
    """Read a checkpoint written by :func:`save_checkpoint`; ``None`` when there is none.

    Every ``identity`` value (e.g. ``config=asdict(config), train_ids=split.train_ids``) must
    equal the checkpoint's, else :class:`~rsir_train.errors.TrainingError`: resuming another
    run's state would silently train a different model.
    """
    path = Path(path)
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    differ = [_what_differs(k, state.get(k), v) for k, v in identity.items()
              if state.get(k) != v]
    if differ:
        raise TrainingError(
            f"checkpoint {path} belongs to another configuration or split ({', '.join(differ)} "
            f"differ): run the command that made it with --resume, or train again without "
            f"--resume (with --overwrite when --out holds a bundle), which starts over"
        )
    log.info("resuming from %s", path)
    return state


def validation_indices(labels: Sequence | np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(fit, val)`` of a per-class split of ``labels`` (a train side's labels):
    ``round(fraction * n)`` items of each class (at least 1 when ``fraction > 0``, never all)
    go to ``val``; seeded. Both trainers hold their validation images out so: the positions
    are into the train side, so a query image can never be drawn."""
    y = np.asarray(labels, dtype=object)
    rng = np.random.default_rng(seed)
    fit, val = [], []
    for c in sorted({str(v) for v in y}):
        members = np.flatnonzero(y.astype(str) == c)
        perm = rng.permutation(members)
        k = min(len(members) - 1, max(1 if fraction > 0 else 0, int(round(fraction * len(members)))))
        val += list(perm[:k])
        fit += list(perm[k:])
    return np.sort(np.array(fit, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))
