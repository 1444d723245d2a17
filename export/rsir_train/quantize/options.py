"""What a quantization does, as one frozen value: :class:`QuantizeOptions`.

Why a value: ``rsir quantize``, the examples, the benchmarks and the tests all describe the same
eighteen settings; passed by hand they made :func:`~rsir_train.quantize.quantize_bundle` a
22-parameter function. A value is checked once, where it is made (a bad one raises
:class:`~rsir_train.errors.QuantizeError`, one line, before anything is read or written), and
each step of the job reads the fields it needs.

>>> opts = QuantizeOptions(count=128, check=64)
>>> opts.precision, opts.replace(precision="fp16").precision
('int8', 'fp16')
>>> QuantizeOptions(method="magic")
Traceback (most recent call last):
...
rsir_train.errors.QuantizeError: unknown calibration method 'magic'; choose one of ['distribution', 'entropy', 'minmax', 'percentile']
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from rsir_sdk.options import unknown_fields

from ..errors import QuantizeError
from .calibration import READERS
from .quantizers import ACTIVATION_TYPES, CALIBRATION_METHODS

__all__ = ["PRECISIONS", "QuantizeOptions"]

PRECISIONS = ("int8", "fp16")


@dataclass(frozen=True)
class QuantizeOptions:
    """How :func:`~rsir_train.quantize.quantize_bundle` derives a bundle.

    What: ``precision`` (``int8`` static QDQ, or ``fp16``). Calibration (int8): ``method``
    (``minmax``, ``percentile``, ``entropy``, ``distribution``), ``reader``, ``count``
    (calibration images), ``check`` (held-out images measuring bit agreement) and ``seed`` (see
    :func:`~rsir_train.quantize.calibration.calibration_set`), ``batch_size`` (images per
    calibration and check call). The int8 graph: ``per_channel`` weights, ``activations``
    (``uint8``: U8S8, or ``int8``: S8S8), ``reduce_range`` (7-bit weights, for x86-64 CPUs
    without VNNI), ``fold_pads`` (fold zero Pads into their Convs first),
    ``quantize_hash_layer`` (else it stays float32), ``keep_float`` (name fragments of nodes
    kept float32 in any case). Acceptance: ``target_agreement`` (below it, quantize again
    keeping the first 3, 6, 12, 24 weighted layers in float; 0 disables the retries),
    ``min_agreement`` (below it, refuse and write nothing). ``overwrite`` a non-empty ``out``.
    ``providers`` and ``threads`` run the agreement check.
    """

    precision: str = "int8"
    method: str = "minmax"
    reader: str = "auto"
    count: int = 256
    check: int = 256
    seed: int = 0
    per_channel: bool = True
    quantize_hash_layer: bool = False
    fold_pads: bool = True
    keep_float: tuple[str, ...] = ()
    target_agreement: float = 0.99
    activations: str = "uint8"
    reduce_range: bool = False
    batch_size: int = 16
    min_agreement: float = 0.95
    overwrite: bool = False
    providers: tuple[str, ...] | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.keep_float, str):
            raise QuantizeError("keep_float must be a list of node name fragments, not one string")
        object.__setattr__(self, "keep_float", tuple(self.keep_float or ()))
        if self.providers is not None:
            object.__setattr__(self, "providers", tuple(self.providers))
        self._check_choices()
        for name in ("count", "check", "batch_size"):
            value = getattr(self, name)
            low = 0 if name == "check" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise QuantizeError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.threads is not None and (isinstance(self.threads, bool)
                                         or not isinstance(self.threads, int) or self.threads < 1):
            raise QuantizeError(f"threads must be a positive integer or None, got {self.threads!r}")
        for name in ("target_agreement", "min_agreement"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise QuantizeError(f"{name} must be a fraction >= 0, got {value!r}")

    def _check_choices(self) -> None:
        if self.precision not in PRECISIONS:
            raise QuantizeError(f"unknown precision {self.precision!r}; choose one of {PRECISIONS}")
        if self.method not in CALIBRATION_METHODS:
            raise QuantizeError(f"unknown calibration method {self.method!r}; choose one of "
                                f"{sorted(CALIBRATION_METHODS)}")
        if self.activations not in ACTIVATION_TYPES:
            raise QuantizeError(f"activations must be one of {ACTIVATION_TYPES}, "
                                f"got {self.activations!r}")
        if self.reader not in READERS:
            raise QuantizeError(f"reader must be one of {READERS}, got {self.reader!r}")

    def replace(self, **changes: Any) -> "QuantizeOptions":
        """A copy with some fields changed (checked again); unknown names raise
        :class:`~rsir_train.errors.QuantizeError` naming them."""
        unknown = unknown_fields(self, changes)
        if unknown:
            raise QuantizeError(f"unknown quantize option(s): {', '.join(unknown)} "
                                f"(see rsir_train.quantize.QuantizeOptions)")
        return dataclasses.replace(self, **changes)

    @classmethod
    def build(cls, options: "QuantizeOptions | None",
              overrides: Mapping[str, Any]) -> "QuantizeOptions":
        """``options`` (or the defaults) with keyword ``overrides`` applied."""
        if options is not None and not isinstance(options, QuantizeOptions):
            raise QuantizeError(f"options must be a QuantizeOptions value, got "
                                f"{type(options).__name__}")
        base = options if options is not None else cls()
        return base.replace(**overrides) if overrides else base
