"""ONNX encoders built in the tests without torch: a random-projection hash written with onnx.helper.

``numpy_reference`` computes the same codes in numpy, so the Encoder can be checked against it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def random_projection_model(height: int, width: int, bits: int, seed: int = 0, threshold: float = 0.0):
    """An ONNX graph: uint8 NHWC image → normalise → flatten → x·W → tanh → embedding, packed codes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((height * width * 3, bits)) / np.sqrt(height * width * 3)).astype(
        np.float32
    )
    inits = [
        numpy_helper.from_array(np.float32(1 / 255.0).reshape(()), "scale"),
        numpy_helper.from_array(np.array(MEAN, np.float32), "mean"),
        numpy_helper.from_array(np.array(STD, np.float32), "std"),
        numpy_helper.from_array(weight, "W"),
        numpy_helper.from_array(np.array([0, -1], np.int64), "flat_shape"),
        numpy_helper.from_array(np.array([0, bits // 8, 8], np.int64), "byte_shape"),
        numpy_helper.from_array(np.array([128, 64, 32, 16, 8, 4, 2, 1], np.float32), "bit_values"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        numpy_helper.from_array(np.float32(threshold).reshape(()), "threshold"),
    ]
    nodes = [
        helper.make_node("Cast", ["images"], ["x_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x_f", "scale"], ["x_s"]),
        helper.make_node("Sub", ["x_s", "mean"], ["x_c"]),
        helper.make_node("Div", ["x_c", "std"], ["x_n"]),
        helper.make_node("Reshape", ["x_n", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["proj"]),
        helper.make_node("Tanh", ["proj"], ["embedding"]),
        helper.make_node("Greater", ["embedding", "threshold"], ["bits_b"]),
        helper.make_node("Cast", ["bits_b"], ["bits_f"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["bits_f", "byte_shape"], ["bytes_f"]),
        helper.make_node("Mul", ["bytes_f", "bit_values"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "axis2"], ["sum"], keepdims=0),
        helper.make_node("Cast", ["sum"], ["codes"], to=TensorProto.UINT8),
    ]
    graph = helper.make_graph(
        nodes,
        "random_projection_hash",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", height, width, 3])],
        [
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", bits]),
            helper.make_tensor_value_info("codes", TensorProto.UINT8, ["N", bits // 8]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, weight


def manifest_for(bits: int, height: int, width: int, method: str = "random_projection",
                 resize: int | None = None, classes=None, threshold: float = 0.0) -> dict:
    """A manifest for the random-projection encoder (docs/bundle.md)."""
    return {
        "format_version": 1,
        "method": method,
        "bits": bits,
        "code_threshold": threshold,
        "bit_order": "big",
        "model_file": "model.onnx",
        "input": {"name": "images", "layout": "NHWC", "dtype": "uint8", "height": height,
                  "width": width, "channels": "RGB"},
        "outputs": {"embedding": "embedding", "codes": "codes"},
        "preprocess": {"resize": resize, "crop": [height, width], "interpolation": "bilinear",
                       "scale": 1 / 255.0, "mean": MEAN, "std": STD},
        "classes": list(classes or []),
        "database": None,
        "symmetric": True,
        "training": {"note": "random projection built by the tests"},
    }


def build_random_projection_bundle(out: Path, bits: int = 64, size: int = 32, seed: int = 0,
                                   resize: int | None = None, database: dict | None = None):
    """Write a random-projection bundle to ``out``; returns the projection matrix."""
    from rsir_sdk.bundle_writer import write_bundle

    model, weight = random_projection_model(size, size, bits, seed)
    manifest = manifest_for(bits, size, size, resize=resize)
    write_bundle(out, model, manifest, database)
    return weight


def numpy_reference(prepared: np.ndarray, weight: np.ndarray, threshold: float = 0.0):
    """The random-projection encoder in numpy: ``(embeddings, packed codes)``."""
    x = prepared.astype(np.float32) * np.float32(1 / 255.0)
    x = (x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    emb = np.tanh(x.reshape(len(x), -1) @ weight)
    return emb, np.packbits(emb > threshold, axis=1, bitorder="big")
