"""export.bundle.write_bundle on a hand-made onnx.helper graph (torch-free)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from export.bundle import BundleWriteError, write_bundle  # noqa: E402

BITS = 16


def _graph(bits: int = BITS, seed: int = 0) -> onnx.ModelProto:
    """uint8 NHWC -> mean colour -> linear -> tanh = embedding; packed (embedding > 0) = codes."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(size=(3, bits)).astype(np.float32), "W"),
        numpy_helper.from_array(np.array([-0.5], np.float32), "b"),
        numpy_helper.from_array(np.array([0.0], np.float32), "zero"),
        numpy_helper.from_array(np.array([-1, bits // 8, 8], np.int64), "shape"),
        numpy_helper.from_array(np.array([128, 64, 32, 16, 8, 4, 2, 1], np.float32), "weights"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
    ]
    nodes = [
        helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f"], ["m"], axes=[1, 2], keepdims=0),
        helper.make_node("Div", ["m", "scale"], ["ms"]),
        helper.make_node("MatMul", ["ms", "W"], ["z"]),
        helper.make_node("Add", ["z", "b"], ["zb"]),
        helper.make_node("Tanh", ["zb"], ["embedding"]),
        helper.make_node("Greater", ["embedding", "zero"], ["on"]),
        helper.make_node("Cast", ["on"], ["onf"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["onf", "shape"], ["r"]),
        helper.make_node("Mul", ["r", "weights"], ["rw"]),
        helper.make_node("ReduceSum", ["rw", "axis2"], ["s"], keepdims=0),
        helper.make_node("Cast", ["s"], ["codes"], to=TensorProto.UINT8),
    ]
    inits.append(numpy_helper.from_array(np.array([255.0], np.float32), "scale"))
    graph = helper.make_graph(
        nodes, "toy",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", 8, 8, 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", bits]),
         helper.make_tensor_value_info("codes", TensorProto.UINT8, ["N", bits // 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _manifest() -> dict:
    return {
        "method": "toy",
        "bits": BITS,
        "preprocess": {"resize": None, "crop": [8, 8], "mean": [0.5] * 3, "std": [0.5] * 3},
        "classes": ["a", "b"],
    }


def test_write_bundle_roundtrip(tmp_path):
    codes = np.packbits(np.random.default_rng(1).random((5, BITS)) > 0.5, axis=1)
    db = {"codes": codes, "ids": [f"i{k}" for k in range(5)], "labels": ["a", "b", "a", "b", "a"],
          "paths": [f"x/{k}.jpg" for k in range(5)]}
    m = write_bundle(tmp_path / "b", _graph(), _manifest(), db)
    model_bytes = (tmp_path / "b" / "model.onnx").read_bytes()
    assert m["model_sha256"] == hashlib.sha256(model_bytes).hexdigest()
    assert json.loads((tmp_path / "b" / "manifest.json").read_text()) == m
    assert m["format_version"] == 1 and m["bit_order"] == "big" and m["code_threshold"] == 0.0
    assert m["input"]["height"] == 8 and m["input"]["layout"] == "NHWC"
    assert m["database"] == {"file": "database.npz", "count": 5, "codes": "learned"}
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "b" / "model.onnx")).metadata_props}
    assert props["rsir.bits"] == str(BITS) and props["rsir.method"] == "toy"
    assert json.loads(props["rsir.input"]) == m["input"]
    with np.load(tmp_path / "b" / "database.npz", allow_pickle=False) as npz:
        assert np.array_equal(npz["codes"], codes) and npz["ids"].tolist()[0] == "i0"

    sess = ort.InferenceSession(str(tmp_path / "b" / "model.onnx"), providers=["CPUExecutionProvider"])
    imgs = np.random.default_rng(2).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    emb, got = sess.run(["embedding", "codes"], {"images": imgs})
    assert np.array_equal(got, np.packbits(emb > 0, axis=1, bitorder="big"))

    from rsir_sdk.bundle import Bundle

    b = Bundle.load(tmp_path / "b")
    assert b.bits == BITS and len(b.load_database()) == 5


def test_rewrite_without_database_removes_stale_file(tmp_path):
    db = {"codes": np.zeros((2, BITS // 8), np.uint8)}
    write_bundle(tmp_path, _graph(), _manifest(), db)
    m = write_bundle(tmp_path, _graph(), _manifest(), None)
    assert m["database"] is None and not (tmp_path / "database.npz").exists()


@pytest.mark.parametrize(
    "db,match",
    [
        ({"codes": np.zeros((2, 3), np.uint8)}, "packed"),
        ({"codes": np.zeros((2, BITS), np.int8)}, "packed"),
        ({"codes": np.zeros((2, 2), np.uint8), "ids": ["a"]}, "entries"),
        ({"codes": np.zeros((2, 2), np.uint8), "ids": ["a", "a"]}, "unique"),
        ({"ids": ["a"]}, "codes"),
    ],
)
def test_bad_database_is_refused(tmp_path, db, match):
    with pytest.raises(BundleWriteError, match=match):
        write_bundle(tmp_path, _graph(), _manifest(), db)


def test_bad_manifest_is_refused(tmp_path):
    with pytest.raises(BundleWriteError, match="bits"):
        write_bundle(tmp_path, _graph(), {k: v for k, v in _manifest().items() if k != "bits"}, None)
    with pytest.raises(BundleWriteError, match="differs"):
        write_bundle(tmp_path, _graph(), {**_manifest(), "input": {"height": 9, "width": 8}}, None)


def test_bundle_module_is_torch_free():
    code = "import sys, export.bundle; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_report_rows_from_bundles(tmp_path):
    from export.report import markdown_table, rows_for_bundle

    training = {"protocol": "ahcl-80-20", "dataset": "toy", "backbone": "small_cnn",
                "frozen": "none", "device": "cpu", "train_seconds": 12.0, "command": "cmd",
                "date": "2026-01-01",
                "metrics": {"map_query_vs_learned_db": 0.91234, "map_query_vs_encoded_db": 0.9}}
    write_bundle(tmp_path / "a", _graph(), {**_manifest(), "training": training}, None)
    rows = rows_for_bundle(tmp_path / "a")
    assert [(r["metric"], r["value"]) for r in rows] == [("map", 0.9123), ("map_encoded_db", 0.9)]
    assert rows[0]["bits"] == BITS and rows[0]["command"] == "cmd"
    assert "| toy | 16 | 0.9123 | 0.9000 |" in markdown_table(rows)
    write_bundle(tmp_path / "b", _graph(),
                 {**_manifest(), "training": training, "parent": {"model_sha256": "x"}}, None)
    assert rows_for_bundle(tmp_path / "b") == []
