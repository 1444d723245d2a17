"""A bundle written by hand, as docs/bundle.md describes (an ONNX file saved by the user and a
manifest with its sha256, no rsir metadata in the model), is held to the same contract as one
written by ``write_bundle``: graph faults are refused at load in one line, input fields the
runtime does not feed are refused, an edited ``preprocess`` is refused by the collection the
bundle filled, and a graph whose batch size is fixed to 1 encodes batches correctly.
Real ONNX graphs (onnx.helper), real onnxruntime sessions, a real Milvus Lite file."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from onnx_models import manifest_for, numpy_reference, random_projection_model

from rsir_sdk import Bundle, Encoder, Retriever
from rsir_sdk.errors import BundleError, CollectionMismatchError, InvalidInputError
from rsir_sdk.preprocess import prepare

SIZE, BITS = 32, 32


def hand_made(out: Path, model, manifest: dict) -> Path:
    """Save ``model`` with onnx.save and a manifest naming its sha256: the documented route."""
    import onnx

    out.mkdir(parents=True)
    onnx.save(model, str(out / "model.onnx"))
    manifest = dict(manifest, model_sha256=hashlib.sha256(
        (out / "model.onnx").read_bytes()).hexdigest())
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def with_input_shape(model, shape: list):
    """The same graph with another declared input shape."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, shape):
        if isinstance(value, str):
            dim.dim_param = value
        else:
            dim.dim_value = value
    return model


@pytest.fixture
def rp():
    model, weight = random_projection_model(SIZE, SIZE, BITS, seed=1)
    return model, weight


@pytest.mark.parametrize("field, value", [("channels", "BGR"), ("layout", "NCHW"),
                                          ("dtype", "float32")])
def test_input_fields_the_runtime_does_not_feed_are_refused(rp, tmp_path, field, value):
    manifest = manifest_for(BITS, SIZE, SIZE)
    manifest["input"][field] = value
    bundle = hand_made(tmp_path / "b", rp[0], manifest)
    with pytest.raises(BundleError) as err:
        Bundle.load(bundle)
    text = str(err.value)
    assert "\n" not in text and f"input.{field}" in text and "NHWC RGB" in text


@pytest.mark.parametrize("shape, words", [
    (["N", SIZE + 8, SIZE, 3], "input height is 40 but the manifest's input.height is 32"),
    (["N", 3, SIZE, SIZE], "NCHW"),
    ([4, SIZE, SIZE, 3], "batch size is fixed to 4"),
])
def test_graph_input_faults_are_refused_at_load_in_one_line(tmp_path, shape, words):
    from onnx import numpy_helper

    model = random_projection_model(SIZE + 8 if shape[1] == SIZE + 8 else SIZE, SIZE, BITS)[0]
    if shape[1] == 3:  # an NCHW graph normalises with scalars (its channels are not last)
        for init in model.graph.initializer:
            if init.name in ("mean", "std"):
                init.CopyFrom(numpy_helper.from_array(np.float32(0.5).reshape(()), init.name))
    bundle = hand_made(tmp_path / "b", with_input_shape(model, shape), manifest_for(BITS, SIZE, SIZE))
    with pytest.raises(BundleError) as err:
        Encoder(bundle)
    assert "\n" not in str(err.value) and words in str(err.value), err.value


def test_codes_that_are_not_packed_uint8_are_refused_at_load(rp, tmp_path):
    from onnx import TensorProto, helper

    model = rp[0]
    out = model.graph.output[1]
    assert out.name == "codes"
    model.graph.node.append(helper.make_node("Cast", ["codes"], ["codes_f"], to=TensorProto.FLOAT))
    model.graph.output.append(helper.make_tensor_value_info("codes_f", TensorProto.FLOAT,
                                                            ["N", BITS // 8]))
    manifest = manifest_for(BITS, SIZE, SIZE)
    manifest["outputs"]["codes"] = "codes_f"
    bundle = hand_made(tmp_path / "b", model, manifest)
    with pytest.raises(BundleError) as err:
        Encoder(bundle)
    assert "'codes_f' output must be packed bits, uint8" in str(err.value)


def test_a_graph_with_batch_fixed_to_one_encodes_batches_exactly(rp, tmp_path, sample_images,
                                                                  caplog):
    model, weight = rp
    bundle = hand_made(tmp_path / "b", with_input_shape(model, [1, SIZE, SIZE, 3]),
                       manifest_for(BITS, SIZE, SIZE))
    enc = Encoder(bundle, batch_size=4)
    files = [p for p, _ in sample_images[:7]]
    with caplog.at_level(logging.INFO):
        codes = enc.encode(files)
    prepared = np.stack([enc.prepare(f) for f in files])
    assert np.array_equal(codes, numpy_reference(prepared, weight)[1])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_edited_preprocess_is_refused_by_the_collection_the_bundle_filled(
        rp, tmp_path, sample_images):
    """The model's bytes are the encoder's identity, the manifest is not: without rsir metadata
    in the model, an edited resize gave other codes under the same encoder id, accepted."""
    bundle = hand_made(tmp_path / "b", rp[0], manifest_for(BITS, SIZE, SIZE, resize=40))
    db = str(tmp_path / "c.db")
    files = [str(p) for p, _ in sample_images[:3]]
    with Retriever(bundle, uri=db, collection="c") as r:
        r.add_images(files)
    edited = tmp_path / "edited"
    shutil.copytree(bundle, edited)
    m = json.loads((edited / "manifest.json").read_text())
    m["preprocess"]["resize"] = 48
    (edited / "manifest.json").write_text(json.dumps(m))
    assert Bundle.load(edited).encoder_id == Bundle.load(bundle).encoder_id
    e1, e2 = Encoder(bundle), Encoder(edited)
    assert not np.array_equal(e1.encode(files), e2.encode(files))  # other codes, same id
    with pytest.raises(CollectionMismatchError) as err:
        Retriever(edited, uri=db, collection="c")
    text = str(err.value)
    assert "\n" not in text and '"resize": 40' in text and '"resize": 48' in text
    with Retriever(bundle, uri=db, collection="c") as r:  # the unedited bundle still opens
        assert r.search(files[0], k=1)[0].id == files[0]


def test_a_manifest_that_drops_the_models_fine_code_is_said_out_loud(rp, tmp_path, caplog,
                                                                      sample_images):
    """The fine code removed from the manifest of the bundle that filled a collection: searches
    silently lost the appearance ranking, and add_images asked for a fine= it does not take."""
    from onnx import TensorProto, helper

    model = rp[0]
    model.graph.node.append(helper.make_node("Identity", ["codes"], ["fine_codes"]))
    model.graph.output.append(helper.make_tensor_value_info("fine_codes", TensorProto.UINT8,
                                                            ["N", BITS // 8]))
    manifest = manifest_for(BITS, SIZE, SIZE)
    manifest["outputs"]["fine_codes"] = "fine_codes"
    manifest["fine_code"] = {"kind": "lsh", "bits": BITS, "output": "fine_codes"}
    bundle = hand_made(tmp_path / "b", model, manifest)
    db, files = str(tmp_path / "c.db"), [str(p) for p, _ in sample_images[:3]]
    with Retriever(bundle, uri=db, collection="c") as r:
        r.add_images(files)
        assert r.fine_ranking
    del manifest["fine_code"], manifest["outputs"]["fine_codes"]
    edited = hand_made(tmp_path / "edited", model, manifest)
    with caplog.at_level(logging.WARNING):
        r = Retriever(edited, uri=db, collection="c")
    said = [x.getMessage() for x in caplog.records if x.levelno == logging.WARNING]
    assert len(said) == 1 and "records none" in said[0] and "fine_code" in said[0], said
    with r, pytest.raises(InvalidInputError) as err:
        r.add_images([str(sample_images[5][0])])
    assert "records no fine code" in str(err.value) and "fine=" not in str(err.value)


def test_prepare_reads_the_manifest_preprocess(rp, tmp_path, sample_images):
    """The check above is needed because the manifest decides the pixels: two resizes, two
    inputs (guards the test against a preprocess that ignores resize)."""
    img = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(sample_images[0][0]))
    a = prepare(img, {"resize": 40, "crop": [SIZE, SIZE]})
    b = prepare(img, {"resize": 48, "crop": [SIZE, SIZE]})
    assert a.shape == b.shape == (SIZE, SIZE, 3) and not np.array_equal(a, b)


def test_a_misspelt_preprocess_field_is_said_at_load(rp, tmp_path, caplog):
    manifest = manifest_for(BITS, SIZE, SIZE)
    manifest["preprocess"]["resise"] = 40   # resize stays null: straight to 32 x 32
    bundle = hand_made(tmp_path / "b", rp[0], manifest)
    with caplog.at_level(logging.WARNING):
        Bundle.load(bundle)
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(said) == 1 and "'preprocess.resise'" in said[0] and "'resize'" in said[0]


@pytest.mark.parametrize("change, words", [
    (lambda m: m.update(bits=64), "manifest says 64 bits"),
    (lambda m: m["outputs"].update(codes="nope"), "no output 'nope'"),
    (lambda m: m["input"].update(height=40, width=40) or m["preprocess"].update(crop=[40, 40]),
     "input height is 32 but the manifest's input.height is 40"),
])
def test_write_bundle_refuses_to_leave_a_bundle_the_runtime_refuses(rp, tmp_path, change,
                                                                    words):
    from rsir_sdk.bundle_writer import BundleWriteError, write_bundle

    manifest = manifest_for(BITS, SIZE, SIZE)
    change(manifest)
    with pytest.raises(BundleWriteError) as err:
        write_bundle(tmp_path / "b", rp[0], manifest)
    assert "does not load" in str(err.value) and words in str(err.value), err.value
    assert not (tmp_path / "b" / "manifest.json").exists()
    with pytest.raises(BundleWriteError, match="cannot be completed"):
        write_bundle(tmp_path / "c", rp[0], dict(manifest_for(BITS, SIZE, SIZE), bits="32x"))


@pytest.mark.parametrize("field, value, words", [
    ("code_threshold", float("nan"), "'code_threshold' is NaN; it must be a finite number"),
    ("format_version", "1", "format_version must be a positive integer"),
])
def test_manifest_values_json_allows_but_the_runtime_cannot_use_are_refused(rp, tmp_path, field,
                                                                          value, words):
    bundle = hand_made(tmp_path / "b", rp[0], dict(manifest_for(BITS, SIZE, SIZE), **{field: value}))
    with pytest.raises(BundleError) as err:
        Bundle.load(bundle)
    assert words in str(err.value)


def test_an_upper_case_model_hash_names_the_same_model(rp, tmp_path):
    bundle = hand_made(tmp_path / "b", rp[0], manifest_for(BITS, SIZE, SIZE))
    m = json.loads((bundle / "manifest.json").read_text())
    m["model_sha256"] = m["model_sha256"].upper()
    (bundle / "manifest.json").write_text(json.dumps(m))
    assert Bundle.load(bundle).encoder_id == m["model_sha256"][:16].lower()


def test_a_model_that_cannot_run_is_named_before_the_collection_is_compared(rp, tmp_path,
                                                                           sample_images):
    """A damaged model with its hash recomputed was reported as an encoder that does not
    match the collection, whose advice (re-index) only led to the real error."""
    bundle = hand_made(tmp_path / "b", rp[0], manifest_for(BITS, SIZE, SIZE))
    db = str(tmp_path / "c.db")
    with Retriever(bundle, uri=db, collection="c") as r:
        r.add_images([str(sample_images[0][0])])
    (bundle / "model.onnx").write_bytes(b"not a model at all")
    m = json.loads((bundle / "manifest.json").read_text())
    m["model_sha256"] = hashlib.sha256(b"not a model at all").hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError) as err:
        Retriever(bundle, uri=db, collection="c")
    assert "onnxruntime cannot load model.onnx" in str(err.value)
