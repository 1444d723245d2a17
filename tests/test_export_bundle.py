"""The one bundle writer (rsir_sdk.bundle_writer.write_bundle, used by AHCL, MiLAN and
quantization) on a hand-made onnx.helper graph, and the result records of rsir_train.results
(both torch-free)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from rsir_sdk.bundle import file_sha256  # noqa: E402
from rsir_sdk.bundle_writer import BundleWriteError, write_bundle  # noqa: E402

BITS = 16


def _graph(bits: int = BITS, seed: int = 0) -> onnx.ModelProto:
    """uint8 NHWC 8x8 -> random projection -> tanh = embedding; packed (embedding > 0) = codes."""
    from onnx_models import random_projection_model

    return random_projection_model(8, 8, bits, seed)[0]


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
    assert m["database"] == {"file": "database.npz", "count": 5, "codes": "learned",
                             "sha256": file_sha256(tmp_path / "b" / "database.npz")}
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


def test_writer_cli_results_and_quantize_import_neither_torch_nor_onnx():
    code = ("import sys, json, rsir_sdk.bundle_writer, rsir_train, rsir_train.results, "
            "rsir_train.quantize, rsir_train.cli; print(json.dumps(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('torch', 'onnx') or m.startswith('onnxruntime.quantization'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_split_and_archive_are_recorded(tmp_path):
    from rsir_sdk.bundle import Bundle
    from rsir_sdk.bundle_writer import archive_record
    from rsir_sdk.splits import Split

    split = Split("80-20", 0, ["a/1.jpg"], ["a/2.jpg"], "f" * 64, "toy")
    m = write_bundle(tmp_path / "b", _graph(), _manifest(), None, split=split,
                     archive=archive_record(tmp_path / "data", "toy", "f" * 64))
    b = Bundle.load(tmp_path / "b")
    assert b.split().train_ids == ["a/1.jpg"] and b.archive_root == str((tmp_path / "data").absolute())
    assert m["archive"]["name"] == "toy"


def _training(metrics):
    return {"protocol": "ahcl-80-20", "dataset": "toy", "backbone": "small_cnn",
            "frozen": "none", "device": "cpu", "train_seconds": 12.0, "command": "cmd",
            "date": "2026-01-01", "seed": 0, "metrics": metrics}


def test_result_records_from_bundles(tmp_path):
    from rsir_train.results import append_results, markdown_table, records_for_bundle

    training = _training({"map_query_vs_learned_db": 0.91234, "map_query_vs_encoded_db": 0.9})
    write_bundle(tmp_path / "a", _graph(), {**_manifest(), "training": training}, None)
    rows = records_for_bundle(tmp_path / "a", device="cpu (2 cores)")
    assert [(r["metric"], r["value"]) for r in rows] == [("map", 0.9123), ("map_encoded_db", 0.9)]
    assert rows[0]["bits"] == BITS and rows[0]["command"] == "cmd"
    assert rows[0]["device"] == "cpu (2 cores)" and rows[0]["protocol"] == "ahcl-80-20"
    assert "| toy | 16 | 0.9123 | 0.9000 |" in markdown_table(rows).replace("| toy | ahcl-80-20 ", "| toy ")
    write_bundle(tmp_path / "b", _graph(),
                 {**_manifest(), "training": training, "parent": {"model_sha256": "x"}}, None)
    assert records_for_bundle(tmp_path / "b") == []
    # MiLAN metrics (through Milvus) give records of the same shape; one writer merges both
    milan = {**_training({"milan_map@20": 0.7, "milan_map@20_torch": 0.71,
                          "milvus_agrees_milan": True}), "protocol": "milan-60-40"}
    write_bundle(tmp_path / "c", _graph(), {**_manifest(), "method": "milan", "training": milan},
                 None)
    (mrow,) = records_for_bundle(tmp_path / "c")
    assert (mrow["protocol"], mrow["metric"], mrow["value"], mrow["value_torch"],
            mrow["milvus_checked"], mrow["split"]) == ("milan", "mAP@20", 0.7, 0.71, True,
                                                       "milan-60-40")
    assert set(rows[0]) <= set(mrow) | {"value_torch"}
    path = tmp_path / "results.json"
    append_results(path, rows + [mrow])
    assert len(append_results(path, [{**mrow, "value": 0.8}])) == 3  # replaced, not added
    assert json.loads(path.read_text())[-1]["value"] == 0.8


def _append_many(args):
    from rsir_train.results import append_results

    path, worker = args
    for i in range(20):
        append_results(path, [{"method": "m", "dataset": f"w{worker}", "bits": i, "value": i}])


def test_result_records_appended_by_parallel_runs_are_all_kept(tmp_path):
    """Runs finishing side by side merge into one results file: none of their records is lost
    and the file is valid JSON throughout; tie-aware figures are records of their own."""
    import multiprocessing

    from rsir_train.results import records_for_manifest

    path = str(tmp_path / "results.json")
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_append_many, [(path, w) for w in range(4)])
    kept = json.loads((tmp_path / "results.json").read_text())
    assert sorted((r["dataset"], r["bits"]) for r in kept) == sorted(
        (f"w{w}", i) for w in range(4) for i in range(20))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    training = {**_training({"milan_map@20": 0.7, "milan_map@20_tie_aware": 0.75,
                             "milvus_agrees_milan": True}), "protocol": "milan-60-40"}
    rows = records_for_manifest({**_manifest(), "method": "milan", "training": training})
    assert [(r["metric"], r["value"]) for r in rows] == [("mAP@20", 0.7),
                                                         ("mAP@20 tie-aware", 0.75)]
