"""The onnxruntime side of quantization: int8 (static, QDQ) and fp16 conversion, and the check.

Why apart from the job: these are thin, quiet wrappers over ``onnxruntime.quantization`` (whose
calibrators print to stdout and warn through the root logger) plus the one measurement that
decides whether a derived encoder may be written, its bit agreement with the parent.
``onnxruntime.quantization`` is imported when called.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from rsir_sdk.bundle import Bundle

from .calibration import CalibrationReader, prepared_batches

log = logging.getLogger(__name__)

__all__ = ["ACTIVATION_TYPES", "CALIBRATION_METHODS", "agreement", "convert_fp16", "ort_version",
           "pre_process", "quantize_int8", "quiet_root_logger"]

#: calibration methods of onnxruntime.quantization.CalibrationMethod, by our option name
CALIBRATION_METHODS = {
    "minmax": "MinMax",
    "percentile": "Percentile",
    "entropy": "Entropy",
    "distribution": "Distribution",
}
#: activation types: uint8 (U8S8, onnxruntime's fast path on x86-64 and fine on ARM) or int8
ACTIVATION_TYPES = ("uint8", "int8")


def quantize_int8(
    src_model_path: Path, dst: Path, reader: CalibrationReader, *, method: str, per_channel: bool,
    exclude: list[str], activations: str, reduce_range: bool, cache: Path | None = None,
) -> dict[str, Any]:
    """onnxruntime static quantization (QDQ) of ``src_model_path`` to ``dst``; returns what
    was done, for the manifest. ``exclude``: node names kept in float."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    # onnxruntime's calibrators print progress to stdout: library code must not print
    with contextlib.redirect_stdout(io.StringIO()) as chatter, quiet_root_logger():
        quantize_static(
            str(src_model_path),
            str(dst),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=None,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]),
            extra_options={
                # one batch per collection step: memory stays at one batch's activations
                "CalibStridedMinMax": 1,
                "ActivationSymmetric": False,
                "WeightSymmetric": True,
            },
            # ranges are collected once and reused when a retry keeps more layers in float
            calibration_cache_path=str(cache) if cache else None,
        )
    if chatter.getvalue().strip():
        log.debug("onnxruntime calibration: %s", chatter.getvalue().strip())
    return {
        "format": "QDQ",
        "weights": "int8, symmetric, " + ("per output channel" if per_channel else "per tensor")
        + (", 7-bit range" if reduce_range else ""),
        "activations": f"{activations}, asymmetric, per tensor",
        "calibration_method": CALIBRATION_METHODS[method],
    }


def pre_process(src: Path, dst: Path) -> bool:
    """onnxruntime's recommended pre-processing (shape inference, graph optimisation); False if it fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    for skip_symbolic in (False, True):
        try:
            with contextlib.redirect_stdout(io.StringIO()), quiet_root_logger():
                quant_pre_process(str(src), str(dst), skip_symbolic_shape=skip_symbolic)
            return True
        except Exception as exc:  # shape inference fails on some graphs; quantize without it
            log.info("quantization pre-processing failed (symbolic=%s): %s", not skip_symbolic, exc)
    return False


@contextlib.contextmanager
def quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization warns through the root logger; keep that out of users' logs."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def convert_fp16(model: Any, exclude: list[str]) -> Any:
    """The model in float16, except the ``exclude`` nodes; uint8 input and float32 outputs kept."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(
        model, keep_io_types=True, node_block_list=exclude, disable_shape_infer=False
    )


def agreement(
    parent: Bundle, child_model: Path, root: Path, paths: Sequence[str], batch_size: int,
    providers: Sequence[str] | None, threads: int | None, output: str | None = None,
) -> tuple[float, float]:
    """``(bit agreement, fraction of identical codes)`` of the child's codes with the parent's
    on the images ``paths`` under ``root``; ``output``: another packed output to compare (the
    fine codes' ``parent.fine_output``, issue 20) instead of the retrieval codes."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    provs = list(providers) if providers else ["CPUExecutionProvider"]
    sessions = [
        ort.InferenceSession(str(p), sess_options=opts, providers=provs)
        for p in (parent.model_path, child_model)
    ]
    name = output or parent.codes_output
    agree = total = same = n = 0
    for batch in prepared_batches(root, paths, parent.preprocess, batch_size):
        a, b = (s.run([name], {parent.input_name: batch})[0] for s in sessions)
        a_bits = np.unpackbits(a, axis=1)
        b_bits = np.unpackbits(b, axis=1)
        agree += int((a_bits == b_bits).sum())
        total += a_bits.size
        same += int((a == b).all(axis=1).sum())
        n += len(batch)
    return agree / max(total, 1), same / max(n, 1)


def ort_version() -> str:
    """The installed onnxruntime version (recorded with a quantized bundle)."""
    import onnxruntime

    return onnxruntime.__version__
