"""Quantization: derive an int8 (or fp16) encoder bundle from an fp32 one (``rsir quantize``).

- :mod:`.calibration`: which images calibrate, which check (the runtime's archive lister and
  the bundle's split);
- :mod:`.quantizers`: onnxruntime's int8/fp16 conversion and the bit-agreement check;
- :mod:`.options`: :class:`QuantizeOptions`, what a quantization does, as one frozen value;
- :mod:`.derive`: :func:`quantize_bundle`, the whole job, writing the derived bundle through
  :func:`rsir_sdk.bundle_writer.write_bundle`.

Graph surgery (Pad folding, the float region) is :mod:`rsir_train.graph`, shared with the
export. Importing this package pulls neither torch nor onnx.
"""

from ..errors import QuantizeError
from ..graph import fold_static_pads
from .calibration import READERS, CalibrationSet, calibration_set
from .derive import PRECISIONS, QuantizeResult, quantize_bundle
from .options import QuantizeOptions
from .quantizers import ACTIVATION_TYPES, CALIBRATION_METHODS

__all__ = [
    "ACTIVATION_TYPES",
    "CALIBRATION_METHODS",
    "PRECISIONS",
    "READERS",
    "CalibrationSet",
    "QuantizeError",
    "QuantizeOptions",
    "QuantizeResult",
    "calibration_set",
    "fold_static_pads",
    "quantize_bundle",
]
