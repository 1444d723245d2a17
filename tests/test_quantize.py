"""``rsir_train.quantize``: int8/fp16 bundles derived from an fp32 one, no torch needed.

The encoder here is the random-projection bundle built with onnx.helper (one MatMul); the
Conv network case (a trained AHCL bundle with learned database codes) is in
``test_quantize_train.py``.
"""

import json
import shutil

import numpy as np
import pytest

from rsir_sdk import Bundle, Encoder, MilvusCodeStore, Retriever
from rsir_sdk.errors import CollectionMismatchError
from rsir_train.cli import main as train_cli
from rsir_train.quantize import QuantizeError, QuantizeOptions, calibration_set, quantize_bundle

pytest.importorskip("onnx")


def main(argv):
    """``rsir quantize ARGS`` as forwarded by the rsir command."""
    return train_cli(["quantize", *argv])


@pytest.fixture(scope="module")
def int8_bundle(rp_bundle, sample_dir, tmp_path_factory):
    """The random-projection bundle quantized to int8 (its MatMul quantized: it is the only one)."""
    out = tmp_path_factory.mktemp("q") / "rp64-int8"
    options = QuantizeOptions(count=64, check=64, quantize_hash_layer=True, min_agreement=0.5)
    res = quantize_bundle(rp_bundle[0], sample_dir, out, options)
    return out, res


def test_int8_bundle_records_its_parent(rp_bundle, int8_bundle):
    out, res = int8_bundle
    parent, child = Bundle.load(rp_bundle[0]), Bundle.load(out)
    assert child.encoder_id == res.encoder_id != parent.encoder_id
    assert (child.method, child.bits, child.preprocess) == (parent.method, parent.bits, parent.preprocess)
    rec = child.manifest["parent"]
    assert rec["model_sha256"] == parent.model_sha256 and rec["encoder_id"] == parent.encoder_id
    assert rec["bit_agreement"] == pytest.approx(res.bit_agreement, abs=1e-6)
    assert 0.5 <= rec["bit_agreement"] <= 1.0
    assert rec["agreement"]["set"] == "held-out" and rec["agreement"]["images"] == 64
    cal = rec["calibration"]
    assert cal["reader"] == "folder" and cal["count"] == 64 == len(cal["paths"])
    assert rec["quantization"]["calibration_method"] == "MinMax"
    assert child.manifest["precision"] == "int8"
    # calibration images are stratified over the class folders
    assert len({p.split("/")[0] for p in cal["paths"]}) == 10
    # the graph really holds int8 weights now, and keeps the bundle's metadata
    import onnx

    model = onnx.load(str(child.model_path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["rsir.bits"] == "64" and meta["rsir.precision"] == "int8"
    assert meta["rsir.parent_sha256"] == parent.model_sha256


def test_int8_codes_agree_with_the_parent(rp_bundle, int8_bundle, sample_images):
    files = [p for p, _ in sample_images[::5]]
    a = Encoder(rp_bundle[0]).encode(files)
    b = Encoder(int8_bundle[0]).encode(files)
    assert a.shape == b.shape and b.dtype == np.uint8
    agreement = (np.unpackbits(a) == np.unpackbits(b)).mean()
    assert agreement >= 0.8, agreement


def test_int8_bundle_serves_and_fp32_collection_refuses_it(
    rp_bundle, int8_bundle, sample_images, db_uri
):
    paths = [p for p, _ in sample_images[:40]]
    ids = [f"{l}/{p.name}" for p, l in sample_images[:40]]
    with Retriever(int8_bundle[0], uri=db_uri, collection="int8") as r:
        assert r.add_images(paths, ids=ids) == 40
        hits = r.search(paths[3], k=5)
        assert hits[0].id == ids[3] and hits[0].distance == 0
        int8_codes = r.encoder.encode(paths[:2])

    with Retriever(rp_bundle[0], uri=db_uri, collection="fp32") as r32:
        r32.add_images(paths[:10], ids=ids[:10])
    # opening the fp32 collection with the int8 bundle is refused, naming both encoders
    child = Bundle.load(int8_bundle[0])
    parent = Bundle.load(rp_bundle[0])
    with pytest.raises(CollectionMismatchError) as err:
        Retriever(int8_bundle[0], uri=db_uri, collection="fp32")
    assert child.encoder_id in str(err.value) and parent.encoder_id in str(err.value)
    # and so is writing int8 codes into it through a plain store, nothing is written
    with MilvusCodeStore(db_uri, "fp32") as store:
        with pytest.raises(CollectionMismatchError, match="not comparable"):
            store.upsert(["x", "y"], int8_codes, encoder=child.identity())
        assert store.count() == 10 and store.encoder["encoder_id"] == parent.encoder_id


def test_fp16_variant(rp_bundle, sample_dir, tmp_path, sample_images):
    """... and what a killed quantize left beside its --out (its work folder, holding the old
    bundle after a swap) is removed by the next run (a temporary folder of its own name stayed
    for good: about a model's size per kill)."""
    import subprocess
    import sys

    from rsir_sdk import staging

    out = tmp_path / "rp64-fp16"
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys\n"
        "from rsir_train.quantize import derive\n"
        "def kill(*a, **kw): os.kill(os.getpid(), signal.SIGKILL)\n"
        "derive._write_derived = kill\n"
        "derive.quantize_bundle(sys.argv[1], sys.argv[2], sys.argv[3], precision='fp16', "
        "check=40)\n"), str(rp_bundle[0]), str(sample_dir), str(out)],
        capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert len(left) == 1 and left[0].startswith(f".rp64-fp16.writing-{staging._host()}-"), left
    res = quantize_bundle(rp_bundle[0], sample_dir, out, precision="fp16", check=40)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    child = Bundle.load(out)
    assert child.manifest["precision"] == "fp16" and res.bit_agreement >= 0.95
    assert child.encoder_id != Bundle.load(rp_bundle[0]).encoder_id
    assert res.model_bytes < 0.6 * res.parent_model_bytes
    codes = Encoder(out).encode([p for p, _ in sample_images[:3]])
    assert codes.shape == (3, 8)


def test_readers_choose_disjoint_images(rp_bundle, sample_dir, tmp_path):
    s = calibration_set(sample_dir, reader="folder", count=50, check=30, seed=1)
    assert len(s.paths) == 50 and len(s.check_paths) == 30
    assert not set(s.paths) & set(s.check_paths)
    assert s.paths == calibration_set(sample_dir, reader="folder", count=50, check=30, seed=1).paths
    csv_file = tmp_path / "cal.csv"
    csv_file.write_text("path,label\n" + "\n".join(
        f"{sample_dir.name}/{p}," for p in s.paths[:12]) + "\n")
    (tmp_path / sample_dir.name).symlink_to(sample_dir)
    c = calibration_set(csv_file, count=8, check=4)
    assert c.reader == "csv" and len(c.paths) == 8 and len(c.check_paths) == 4
    # a bundle with a split file: calibrate on its train part, check on its query part
    bundle = Bundle.load(rp_bundle[0])
    split = tmp_path / "b"
    split.mkdir()
    for f in bundle.path.iterdir():
        (split / f.name).symlink_to(f)
    train, query = s.paths[:40], s.check_paths[:20]
    (split / "split.json").write_text(json.dumps({"protocol": "80-20", "train": train,
                                                  "query": query}))
    sp = calibration_set(sample_dir, Bundle.load(split), count=16, check=8)
    assert sp.reader == "split" and set(sp.paths) <= set(train) and set(sp.check_paths) <= set(query)


def test_refusals_write_nothing(rp_bundle, int8_bundle, sample_dir, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(QuantizeError, match="agrees with its parent on only"):
        quantize_bundle(rp_bundle[0], sample_dir, out, count=16, check=16,
                        quantize_hash_layer=True, min_agreement=1.01)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rsir-quantize-")]
    with pytest.raises(QuantizeError, match="itself derived"):
        quantize_bundle(int8_bundle[0], sample_dir, out)
    with pytest.raises(QuantizeError, match="not empty: choose another --out, or replace it with --overwrite"):
        quantize_bundle(rp_bundle[0], sample_dir, int8_bundle[0])
    with pytest.raises(QuantizeError, match="no calibration images"):
        (tmp_path / "empty").mkdir()
        quantize_bundle(rp_bundle[0], tmp_path / "empty", out)
    with pytest.raises(QuantizeError, match="calibration method"):
        quantize_bundle(rp_bundle[0], sample_dir, out, method="magic")
    # the options are a value checked where it is made: one line, before anything is read
    for bad in (dict(precision="int4"), dict(method="magic"), dict(activations="int16"),
                dict(reader="guess"), dict(count=0), dict(check=-1), dict(batch_size=True),
                dict(threads=0), dict(min_agreement=-0.1), dict(keep_float="conv1")):
        with pytest.raises(QuantizeError) as err:
            QuantizeOptions(**bad)
        assert "\n" not in str(err.value), bad
    with pytest.raises(QuantizeError, match="unknown quantize option.*cuont"):
        quantize_bundle(rp_bundle[0], sample_dir, out, cuont=16)
    with pytest.raises(QuantizeError, match="QuantizeOptions value"):
        quantize_bundle(rp_bundle[0], sample_dir, out, {"count": 16})
    with pytest.raises(QuantizeError, match="does not exist"):
        quantize_bundle(rp_bundle[0], tmp_path / "nowhere", out)
    # unreadable calibration images: all named at once, before any work, not blamed on
    # onnxruntime (the first one stopped the run half way, the next run the next one)
    mixed = tmp_path / "mixed"
    shutil.copytree(sample_dir, mixed)
    broken = sorted(mixed.rglob("*.jpg"))[:3]
    for p in broken:
        p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(QuantizeError) as err:
        quantize_bundle(rp_bundle[0], mixed, out, count=400, check=0)
    text = str(err.value)
    assert text.startswith(f"3 calibration image(s) in {mixed} cannot be read: ")
    assert all(str(p.relative_to(mixed)) in text for p in broken) and "onnxruntime" not in text
    assert not out.exists()


def test_command_line(rp_bundle, sample_dir, tmp_path, capsys):
    out = tmp_path / "cli-int8"
    rc = main([str(rp_bundle[0]), "--calibration", str(sample_dir), "--out", str(out),
               "--count", "20", "--check", "20", "--method", "percentile", "--json"])
    assert rc == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)  # stdout stays the JSON; the notes go to stderr
    assert printed["method"] == "Percentile" and printed["encoder_id"] == Bundle.load(out).encoder_id
    assert "rsir quantize: note: the agreement rests on 20 images" in captured.err
    rc = main([str(rp_bundle[0]), "--calibration", str(tmp_path / "nowhere"), "--out",
               str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 1 and "does not exist" in err and err.startswith("rsir quantize: ")
    assert err.count("\n") == 1
    # a summary resting on few check images says so (it read as a pass)
    rc = main([str(rp_bundle[0]), "--calibration", str(sample_dir), "--out", str(tmp_path / "few"),
               "--count", "20", "--check", "8"])
    captured = capsys.readouterr()
    assert rc == 0 and "agreement" in captured.out
    assert "rsir quantize: note: the agreement rests on 8 images" in captured.err


def test_fold_static_pads_keeps_outputs():
    """A 'same'-padding Pad (amounts computed at run time) is folded into its Conv exactly."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from rsir_train.graph import fold_static_pads

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["images"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["xf"], ["x"], perm=[0, 3, 1, 2]),
        # pad amounts from the input's shape, as torch exports F.pad of "same" convolutions
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "two"], ["h"], axis=0),
        helper.make_node("Mod", ["h", "two"], ["extra"]),
        helper.make_node("Concat", ["zeros6", "extra", "extra"], ["pads"], axis=0),
        helper.make_node("Pad", ["x", "pads"], ["xp"], mode="constant"),
        helper.make_node("Conv", ["xp", "W"], ["y"], kernel_shape=[3, 3], strides=[2, 2]),
    ]
    graph = helper.make_graph(
        nodes, "pad_conv",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", 9, 9, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4, 4])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array([2], np.int64), "two"),
         numpy_helper.from_array(np.zeros(6, np.int64), "zeros6")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.integers(0, 256, (3, 9, 9, 3), dtype=np.uint8)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"images": x})[0]
    assert fold_static_pads(model, "images", 9, 9) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Cast", "Transpose", "Conv"]
    conv = model.graph.node[-1]
    assert [list(a.ints) for a in conv.attribute if a.name == "pads"] == [[0, 0, 1, 1]]
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"images": x})[0]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    onnx.checker.check_model(model)
