"""A bundle with a fine code built without torch (issue 20), for the service and parity tests.

:func:`build_fine_bundle` writes a random-projection bundle (``onnx_models``) whose graph has a
third output, ``fine_codes``: the signs of a second, 128-column projection of the same
normalised pixels, packed big-endian, from the same forward pass. ``directions`` makes the
64-bit retrieval code *collapse* the way trained AHCL/MiLAN codes do: its columns repeat
``directions`` random directions, so the 200 sample scenes share ``2**directions`` codes or
fewer, and every tie group is large (the case the fine code is for).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FINE_BITS = 128


def build_fine_bundle(out: Path, bits: int = 64, fine_bits: int = FINE_BITS, size: int = 32,
                      seed: int = 0, directions: int | None = 3) -> Path:
    """Write the bundle to ``out``; returns ``out``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnx_models import manifest_for, random_projection_model

    from rsir_sdk.bundle_writer import write_bundle

    model, _ = random_projection_model(size, size, bits, seed)
    graph = model.graph
    if directions:
        for init in graph.initializer:
            if init.name == "W":
                w = numpy_helper.to_array(init)
                cols = np.ascontiguousarray(w[:, np.arange(bits) % directions])
                init.CopyFrom(numpy_helper.from_array(cols, "W"))
    rng = np.random.default_rng(seed + 1000)
    wf = (rng.standard_normal((size * size * 3, fine_bits)) / np.sqrt(size * size * 3))
    graph.initializer.extend([
        numpy_helper.from_array(wf.astype(np.float32), "Wf"),
        numpy_helper.from_array(np.array([0, fine_bits // 8, 8], np.int64), "fine_byte_shape"),
        numpy_helper.from_array(np.float32(0).reshape(()), "zero"),
    ])
    graph.node.extend([
        helper.make_node("MatMul", ["flat", "Wf"], ["fproj"]),
        helper.make_node("Greater", ["fproj", "zero"], ["fbits_b"]),
        helper.make_node("Cast", ["fbits_b"], ["fbits_f"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["fbits_f", "fine_byte_shape"], ["fbytes_f"]),
        helper.make_node("Mul", ["fbytes_f", "bit_values"], ["fweighted"]),
        helper.make_node("ReduceSum", ["fweighted", "axis2"], ["fsum"], keepdims=0),
        helper.make_node("Cast", ["fsum"], ["fine_codes"], to=TensorProto.UINT8),
    ])
    graph.output.append(helper.make_tensor_value_info("fine_codes", TensorProto.UINT8,
                                                      ["N", fine_bits // 8]))
    onnx.checker.check_model(model)
    manifest = manifest_for(bits, size, size)
    manifest["outputs"]["fine_codes"] = "fine_codes"
    manifest["fine_code"] = {"kind": "random_projection", "bits": fine_bits, "bit_order": "big",
                             "output": "fine_codes"}
    write_bundle(Path(out), model, manifest)
    return Path(out)
