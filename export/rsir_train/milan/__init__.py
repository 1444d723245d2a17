"""MiLAN (metric-learning deep hashing, Roy et al., GRSL 2020) on the shared pipeline.

- :mod:`.model`: hyper-parameters, the hash head, the exported net, losses, codes;
- :mod:`.triplets`: the authors' triplet sampler and the optional in-batch miners;
- :mod:`.trainer`: :func:`train_milan_head` on features, :func:`train_milan` on an archive;
- :mod:`.bundle`: :func:`train_milan_bundle` (archive → split → features → head → bundle).
"""

from .bundle import milan_contents, split_protocol_name, train_milan_bundle
from .model import (
    CODE_THRESHOLD,
    MilanHead,
    MilanNet,
    MilanParams,
    balance_loss,
    milan_codes,
    milan_loss,
    push_loss,
    triplet_loss,
)
from .trainer import MilanConfig, MilanResult, train_milan, train_milan_head
from .triplets import TripletSampler, mine_triplets

__all__ = [
    "CODE_THRESHOLD",
    "MilanConfig",
    "MilanHead",
    "MilanNet",
    "MilanParams",
    "MilanResult",
    "TripletSampler",
    "balance_loss",
    "milan_contents",
    "milan_codes",
    "milan_loss",
    "mine_triplets",
    "push_loss",
    "split_protocol_name",
    "train_milan",
    "train_milan_bundle",
    "train_milan_head",
    "triplet_loss",
]
