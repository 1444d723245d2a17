"""AHCL (asymmetric hash code learning, Song et al., TGRS 2022) on the shared pipeline.

- :mod:`.model`: the network, the loss and the closed-form update of the database codes V;
- :mod:`.config`: :class:`AHCLConfig` and the schedules (``auto``, the authors');
- :mod:`.trainer`: :func:`train_ahcl` (checkpoints, resume);
- :mod:`.bundle`: :func:`train_ahcl_bundle` (archive → split → train → bundle with V).
"""

from .bundle import ahcl_contents, train_ahcl_bundle
from .config import AHCLConfig
from .trainer import AHCLResult, train_ahcl

__all__ = ["AHCLConfig", "AHCLResult", "ahcl_contents", "train_ahcl", "train_ahcl_bundle"]
