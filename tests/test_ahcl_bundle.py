"""A tiny AHCL run on the shipped EuroSAT sample: it learns, exports faithfully, bundles V."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from rsir_sdk.bundle import file_sha256  # noqa: E402
from rsir_sdk.codes import pack_codes, unpack_codes  # noqa: E402
from rsir_sdk.images import load_image  # noqa: E402
from rsir_sdk.metrics import mean_average_precision  # noqa: E402
from rsir_sdk.preprocess import prepare  # noqa: E402
from rsir_train.dataset import open_training_archive as read_folder  # noqa: E402
from rsir_train.onnx_export import torch_outputs  # noqa: E402
from rsir_train.testing import SAMPLE_ARCHIVE  # noqa: E402

pytestmark = pytest.mark.train
BITS = 32


@pytest.fixture(scope="module")
def tiny(tiny_ahcl):
    """The session's tiny AHCL bundle (conftest.py), trained once for every test file."""
    out, result, manifest = tiny_ahcl
    assert result.config.bits == BITS
    return out, result, manifest


def _query_images(result, n=None):
    arch = read_folder(SAMPLE_ARCHIVE)
    idx = result.query_indices[:n] if n else result.query_indices
    return np.stack([prepare(load_image(arch.items[i].file), result.preprocess) for i in idx])


def _chance_map(q_labels, db_labels):
    db = np.asarray(db_labels)
    return float(np.mean([(db == y).mean() for y in q_labels]))


def test_tiny_run_learns(tiny):
    _, result, _ = tiny
    labels = read_folder(SAMPLE_ARCHIVE).labels()
    chance = _chance_map(labels[result.query_indices], labels[result.train_indices])
    got = result.metrics["map_query_vs_learned_db"]
    assert chance == pytest.approx(0.1, abs=0.01)
    assert got > chance + 0.2, (got, chance)
    assert set(np.unique(result.V)) <= {-1.0, 1.0}


def test_onnx_matches_torch(tiny):
    out, result, manifest = tiny
    images = _query_images(result)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    emb, codes = sess.run(["embedding", "codes"], {"images": images})
    t_emb, t_codes = torch_outputs(result.net, result.normalize, BITS, images)
    assert emb.dtype == np.float32 and emb.shape == (len(images), BITS)
    assert codes.dtype == np.uint8 and codes.shape == (len(images), BITS // 8)
    np.testing.assert_allclose(emb, t_emb, atol=1e-4, rtol=0)
    # packed codes agree bit for bit, except on embeddings too close to the threshold to call
    bits_onnx, bits_torch = unpack_codes(codes, BITS), unpack_codes(t_codes, BITS)
    unsure = np.abs(t_emb) < 1e-4
    assert np.array_equal(bits_onnx[~unsure], bits_torch[~unsure])
    # the graph's packing is numpy.packbits of (u > 0)
    assert np.array_equal(codes, np.packbits(emb > 0, axis=1, bitorder="big"))
    # dynamic batch
    one, _ = sess.run(["embedding", "codes"], {"images": images[:1]})
    np.testing.assert_allclose(one, emb[:1], atol=1e-5)
    # queries through the ONNX graph against the bundled V give the trainer's mAP
    labels = read_folder(SAMPLE_ARCHIVE).labels()
    db = np.load(out / "database.npz", allow_pickle=False)
    m = mean_average_precision(codes, labels[result.query_indices], db["codes"],
                               labels[result.train_indices])
    assert m == pytest.approx(result.metrics["map_query_vs_learned_db"], abs=0.02)


def test_database_holds_learned_v(tiny):
    out, result, manifest = tiny
    db = np.load(out / "database.npz", allow_pickle=False)
    assert np.array_equal(db["codes"], pack_codes(np.sign(result.V).astype(np.int8)))
    arch = read_folder(SAMPLE_ARCHIVE)
    train = [arch.items[i] for i in result.train_indices]
    assert db["ids"].tolist() == [s.id for s in train]
    assert db["labels"].tolist() == [s.label for s in train]
    assert db["paths"].tolist() == [s.path for s in train]
    fine_bits = manifest["fine_code"]["bits"]  # the database images' fine codes (issue 20)
    assert db["fine"].shape == (len(train), fine_bits // 8) and db["fine"].dtype == np.uint8
    assert manifest["database"] == {"file": "database.npz", "count": len(train), "codes": "learned",
                                    "sha256": file_sha256(out / "database.npz"),
                                    "fine_bits": fine_bits}


def test_manifest_and_metadata(tiny):
    out, result, manifest = tiny
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["method"] == "ahcl" and manifest["bits"] == BITS
    assert manifest["input"] == {"name": "images", "layout": "NHWC", "dtype": "uint8",
                                 "height": 64, "width": 64, "channels": "RGB"}
    assert manifest["classes"] == read_folder(SAMPLE_ARCHIVE).classes
    tr = manifest["training"]
    for key in ("dataset", "split_file", "protocol", "seed", "backbone", "hyperparameters",
                "metrics", "versions", "device", "train_seconds"):
        assert key in tr, key
    assert tr["protocol"] == "ahcl-80-20" and (out / tr["split_file"]).is_file()
    # the bundle records its archive, so evaluation and galleries find the images without --data
    assert manifest["archive"]["root"] == str(SAMPLE_ARCHIVE.absolute())
    assert manifest["archive"]["fingerprint"] == read_folder(SAMPLE_ARCHIVE).fingerprint()
    model = onnx.load(str(out / "model.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["rsir.method"] == "ahcl" and props["rsir.bits"] == str(BITS)
    assert props["rsir.bit_order"] == "big" and json.loads(props["rsir.classes"]) == manifest["classes"]
    assert json.loads(props["rsir.preprocess"]) == manifest["preprocess"]
    assert model.opset_import[0].version == 17


def test_bundle_reads_back_with_the_sdk(tiny):
    from rsir_sdk.bundle import Bundle

    out, result, manifest = tiny
    b = Bundle.load(out)
    assert b.bits == BITS and b.method == "ahcl" and not b.symmetric
    db = b.load_database()
    assert db.kind == "learned" and len(db) == len(result.train_indices)
