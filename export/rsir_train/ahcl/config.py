"""AHCL's hyper-parameters and its schedules: the authors', and defaults that converge in bounded time.

Why a module of its own: the schedule is the one part of AHCL that depends on where and on what
it runs. The authors' code trains 30 outer iterations of 2 network epochs at lr 1e-3 without
momentum (lr / 10 at outer iterations 10 and 20); on a CPU with the first blocks frozen and
cached that is hours per code length, and on a few hundred images it is a few dozen SGD steps,
far from converged. ``schedule="auto"`` (the default) picks instead

- SGD with momentum 0.9 and a cosine lr decay over the run, one network epoch per V update
  (the V update is a closed-form sweep that costs well under a second for 2,000 images);
- a number of epochs from the archive size and the path: enough SGD steps to converge
  (:data:`AUTO_STEPS`), at least :data:`AUTO_MIN_EPOCHS` and at most
  :data:`AUTO_MAX_EPOCHS` epochs, so a small archive gets many cheap epochs and a large one a
  few long ones.

``schedule="authors"`` restores the published schedule, one flag away (``--schedule authors``);
``"cosine"`` and ``"step"`` are the two lr shapes with every value given explicitly. Fields left
``None`` are filled by :meth:`AHCLConfig.resolved` once the train side's size and the device are
known; the resolved values are what the manifest records.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..backbones import Backbone
from ..folds import SMALL_ARCHIVE, SMOOTH_TOP

__all__ = ["AHCLConfig", "AUTHORS", "AUTO_LR", "AUTO_MAX_EPOCHS", "AUTO_MIN_EPOCHS",
           "AUTO_LR_BITS", "AUTO_STEPS", "CANDIDATES", "DEFAULT_CANDIDATES", "SCENE_PREPROCESS",
           "SCHEDULES", "SHORT_EPOCHS", "SMALL_ARCHIVE", "SMOOTH_TOP", "VAL_FOLDS",
           "candidate_configs", "epoch_lr", "identity"]

SCHEDULES = ("auto", "authors", "cosine", "step")
#: the AHCL authors' schedule (their code, ADSH-derived)
AUTHORS: dict[str, Any] = {"lr": 1e-3, "momentum": 0.0, "outer": 30, "inner": 2,
                           "lr_steps": (10, 20)}
#: ``schedule="auto"``: SGD lr (momentum 0.9, cosine decay) at :data:`AUTO_LR_BITS` bits,
#: chosen on a validation split drawn from the train side (``python -m rsir_train.sweep``,
#: docs/training.md). Longer codes get ``AUTO_LR * AUTO_LR_BITS / bits``: the pairwise term
#: ``(u_i'v_j - K S_ij)^2`` has gradients that grow with K, so the same lr is K/16 times
#: larger a step at K bits (64 bits: 7.5e-4, validation mAP 0.956 over 20 epochs on nwpu12).
AUTO_LR = 3e-3
AUTO_LR_BITS = 16
AUTO_MOMENTUM = 0.9
#: ``schedule="auto"``: SGD steps a run aims at, by path (frozen-and-cached blocks or full
#: fine-tune), and the bounds on the number of epochs. 900 on the CPU path too (30 epochs for
#: 1,920 images): on the nwpu12 validation split at 64 bits, 600 steps (20 epochs) ended at
#: 0.956 only because the cosine decay had reached 0, and 900 reached 0.967, flat over its last
#: 3 validations (docs/results.md, "How the AHCL defaults were chosen").
AUTO_STEPS = {"cached": 900, "full": 900}
AUTO_MIN_EPOCHS = 10
AUTO_MAX_EPOCHS = 100
#: the whole scene resized straight to the backbone's input size, no centre crop: remote
#: sensing scenes have no centre object, and "shorter side 256 -> centre 224" discards 23 % of
#: each scene. On the nwpu12 validation split (16 bits, 12 epochs, lr 3e-3) it gave mAP 0.960
#: against 0.941 with the crop (docs/results.md); MiLAN and ITQ do the same.
SCENE_PREPROCESS: dict[str, Any] = {"resize": None}
#: fields that do not change the trained model (a checkpoint may be resumed with others)
RUN_ONLY = ("device", "eval_every", "cache_dir", "amp")
#: model selection (``schedule="auto"``, ``select="auto"``): below :data:`SMALL_ARCHIVE`
#: (1,000, :mod:`rsir_train.folds`) training images the run chooses among
#: :data:`DEFAULT_CANDIDATES` on :data:`VAL_FOLDS` validation folds; from that many on it trains
#: the auto schedule on the whole train side as before (the full-set rows of
#: docs/results.md); ``select="on"`` validates the auto schedule alone at that size, on one
#: ``val_fraction`` split
#: the schedules a selecting run may choose among (``candidates=``), in order (a tie goes to
#: the earlier): ``auto`` (above), ``authors`` (:data:`AUTHORS`), ``short`` (cosine, the auto
#: lr, 30 epochs) and, above 16 bits, ``lr16`` (``short`` at the 16-bit lr :data:`AUTO_LR`)
CANDIDATES = ("auto", "authors", "short", "lr16")
#: what a small archive chooses among by default: ``auto`` and ``authors``. ``short`` and
#: ``lr16`` were dropped on validation evidence (nwpu12, 30 images a class, docs/results.md):
#: ``short`` validated below ``auto`` at 16, 32 and 64 bits (0.9035 / 0.8886 / 0.8670 against
#: 0.9093 / 0.9134 / 0.9375), ``lr16`` below ``auto`` at 32 bits (0.8715 / 0.9134) and
#: diverged at 64 (0.8397 at epoch 4, 0.41 at 16): the 16-bit lr does not carry to longer
#: codes, and the two cost the folds below half a selection's time
DEFAULT_CANDIDATES = ("auto", "authors")
#: stratified validation folds of a small archive's train side: every training image is
#: validated once (3 x the validation images of one 20 % split: one 60-image split chose
#: ``auto`` at 64 bits by 0.028 where the queries preferred ``authors`` by 0.037, issue 21)
VAL_FOLDS = 3
SHORT_EPOCHS = 30
#: ``select`` values: ``auto`` (model selection with ``schedule="auto"`` when no schedule
#: field is set by hand), ``on`` (with ``schedule="auto"`` even then: the hand-set values are
#: the ``auto`` candidate's), ``off`` (the schedule on the whole train side, last epoch kept:
#: the behaviour before model selection)
SELECT = ("auto", "on", "off")
#: the schedule fields a user may set by hand (then ``select="auto"`` trains them as given)
SCHEDULE_FIELDS = ("lr", "momentum", "outer", "inner", "lr_steps")


@dataclass
class AHCLConfig:
    """Hyper-parameters of an AHCL run.

    ``schedule`` ``"auto"`` (default; see the module doc), ``"authors"``, ``"cosine"`` or
    ``"step"``; ``lr``, ``momentum``, ``outer``, ``inner`` and ``lr_steps`` left ``None`` are
    the schedule's. The loss weights, weight decay, batch and sampling are the authors'.
    ``amp``: ``"auto"`` trains in bfloat16 autocast on CUDA and in float32 elsewhere, ``"off"``
    always float32, ``"bf16"`` always autocast; metrics and the exported graph are float32.
    """

    bits: int = 64
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    weights: str | None = None
    schedule: str = "auto"
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float = 5e-4
    batch_size: int = 64
    outer: int | None = None
    inner: int | None = None
    lr_steps: tuple[int, ...] | None = None
    lr_decay: float = 0.1
    lam: float = 200.0
    gamma: float = 20.0
    num_samples: int | None = 2000
    freeze_blocks: int = 0
    preprocess: dict[str, Any] | None = None
    seed: int = 0
    device: str | None = None
    eval_every: int = 0
    cache_dir: str | bool | None = None  # None: the default folder; False: no cache
    amp: str = "auto"
    #: model selection (module doc of :mod:`rsir_train.ahcl.selection`): ``select`` "auto",
    #: "on" or "off"; on a small archive ``val_folds`` stratified folds of the train side
    #: (seeded by ``seed``; 1: per class ``val_fraction`` held out once, as on a large one);
    #: validation every ``val_every`` outer iterations (0: about 20 per run), stop after
    #: ``patience`` validations without improvement (0: never); ``candidates`` None: by size
    select: str = "auto"
    val_fraction: float = 0.2
    val_folds: int = VAL_FOLDS
    val_every: int = 0
    patience: int = 6
    candidates: tuple[str, ...] | None = None

    @property
    def hand_set(self) -> bool:
        """Whether a schedule field (:data:`SCHEDULE_FIELDS`) was given."""
        return any(getattr(self, k) is not None for k in SCHEDULE_FIELDS)

    @property
    def selects(self) -> bool:
        """Whether this run selects its model on a validation split: the ``auto`` schedule
        with a validation fraction and ``select="on"``, or ``select="auto"`` with no schedule
        field set by hand. An explicit schedule or hand-set values are trained as given, on
        the whole train side, the last epoch kept."""
        if self.select not in SELECT:
            raise ValueError(f"select must be one of {', '.join(SELECT)}, got {self.select!r}")
        if isinstance(self.val_folds, bool) or not isinstance(self.val_folds, int) \
                or self.val_folds < 1:
            raise ValueError(f"val_folds must be a whole number of folds >= 1, got "
                             f"{self.val_folds!r}")
        if self.schedule != "auto" or self.select == "off" or self.val_fraction <= 0:
            return False
        return self.select == "on" or not self.hand_set

    def resolved_preprocess(self, backbone: Backbone) -> dict[str, Any]:
        """This run's preprocessing: the backbone's, with the whole scene resized straight to
        the crop size (:data:`SCENE_PREPROCESS`), overridden by ``preprocess``."""
        pre = {**backbone.preprocess, **SCENE_PREPROCESS}
        pre.update(self.preprocess or {})
        pre["scale"] = 1.0 / 255.0
        return pre

    def resolved(self, n_train: int, cached: bool) -> "AHCLConfig":
        """This configuration with every schedule field filled in, for ``n_train`` training
        images on the cached (``cached=True``: frozen blocks cached) or the full path."""
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        fill: dict[str, Any] = {}
        if self.schedule == "authors":
            base = dict(AUTHORS)
        else:
            base = {"lr": AUTO_LR * min(1.0, AUTO_LR_BITS / self.bits),
                    "momentum": AUTO_MOMENTUM, "inner": 1, "lr_steps": ()}
            m = n_train if not self.num_samples else min(n_train, self.num_samples)
            steps_per_epoch = max(1, math.ceil(m / self.batch_size))
            inner = self.inner or 1
            epochs = math.ceil(AUTO_STEPS["cached" if cached else "full"] / steps_per_epoch)
            epochs = min(AUTO_MAX_EPOCHS, max(AUTO_MIN_EPOCHS, epochs))
            base["outer"] = max(1, math.ceil(epochs / inner))
        for key in ("lr", "momentum", "outer", "inner"):
            if getattr(self, key) is None:
                fill[key] = base[key]
        outer = self.outer if self.outer is not None else fill["outer"]
        if self.lr_steps is None:
            if self.schedule in ("authors", "step"):
                # the authors' drops (10, 20 of 30) moved proportionally to the run's length
                fill["lr_steps"] = tuple(sorted({max(1, round(s * outer / 30)) for s in (10, 20)}))
            else:
                fill["lr_steps"] = ()
        return dataclasses.replace(self, **fill)

    @property
    def lr_shape(self) -> str:
        """``"cosine"`` (auto, cosine) or ``"step"`` (authors, step)."""
        return "step" if self.schedule in ("authors", "step") else "cosine"


def candidate_configs(config: AHCLConfig, n_fit: int, n_train: int,
                      cached: bool) -> list[tuple[str, AHCLConfig]]:
    """The ``(name, resolved configuration)`` pairs a selecting run trains on its fit part
    (``n_fit`` images of ``n_train``): :data:`DEFAULT_CANDIDATES` when the train side is
    smaller than :data:`SMALL_ARCHIVE` and no schedule field was set by hand, else the auto
    schedule only; ``config.candidates`` overrides the list (any of :data:`CANDIDATES`;
    ``lr16`` is dropped at 16 bits or fewer)."""
    names = config.candidates
    if names is None:
        small = n_train < SMALL_ARCHIVE and not config.hand_set
        names = DEFAULT_CANDIDATES if small else ("auto",)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown or not names:
        raise ValueError(f"candidates must be among {', '.join(CANDIDATES)}, got {names!r}")
    out = []
    for name in names:
        if name == "lr16" and config.bits <= AUTO_LR_BITS:
            continue
        if name == "auto":
            cand = config
        elif name == "authors":
            cand = dataclasses.replace(config, schedule="authors")
        else:
            lr = AUTO_LR if name == "lr16" else AUTO_LR * min(1.0, AUTO_LR_BITS / config.bits)
            cand = dataclasses.replace(config, schedule="cosine", lr=lr, momentum=AUTO_MOMENTUM,
                                       outer=SHORT_EPOCHS, inner=1)
        out.append((name, cand.resolved(n_fit, cached)))
    return out


def epoch_lr(config: AHCLConfig, epoch: int, epochs: int) -> float:
    """The lr of network epoch ``epoch`` (0-based) of ``epochs`` for a resolved ``config``.

    Cosine: ``lr * (1 + cos(pi * epoch / epochs)) / 2``; step: ``lr * lr_decay ** (number of
    lr_steps at or before the epoch's outer iteration)``.
    """
    assert config.lr is not None and config.inner is not None
    if config.lr_shape == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, epochs)))
    outer = epoch // config.inner
    return config.lr * config.lr_decay ** sum(outer >= s for s in (config.lr_steps or ()))


def identity(config: AHCLConfig) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: every field that changes the model."""
    d = dataclasses.asdict(config)
    for key in RUN_ONLY:
        d.pop(key, None)
    return d
