"""Bundle reader and Encoder: real ONNX files, real onnxruntime sessions, real image files."""

import json
import shutil

import numpy as np
import pytest
from onnx_models import build_random_projection_bundle, numpy_reference

from rsir_sdk import Bundle, Encoder
from rsir_sdk.errors import BundleError, ImageLoadError
from rsir_sdk.images import load_image
from rsir_sdk.preprocess import prepare


def test_bundle_reads_identity(rp_bundle):
    path, _ = rp_bundle
    b = Bundle.load(path)
    assert (b.method, b.bits, b.input_height, b.input_width) == ("random_projection", 64, 32, 32)
    assert len(b.encoder_id) == 16 and b.identity()["encoder_id"] == b.encoder_id
    assert not b.has_database and b.symmetric
    with pytest.raises(BundleError, match="no database codes"):
        b.load_database()


def test_encoder_matches_numpy_reference_on_many_formats(rp_bundle, format_files, sample_images):
    path, weight = rp_bundle
    enc = Encoder(path, threads=1)
    assert enc.providers == ["CPUExecutionProvider"]
    sources = list(format_files.values()) + [p for p, _ in sample_images[::17]]
    res = enc.encode(sources, batch_size=4, return_embeddings=True)
    prepared = np.stack([prepare(load_image(s), enc.bundle.preprocess) for s in sources])
    ref_emb, ref_codes = numpy_reference(prepared, weight)
    assert res.codes.shape == (len(sources), 8) and res.codes.dtype == np.uint8
    assert np.abs(res.embeddings - ref_emb).max() < 1e-4
    stable = np.abs(ref_emb) > 1e-4   # bits whose sign float rounding cannot flip
    got_bits = np.unpackbits(res.codes, axis=1)
    ref_bits = np.unpackbits(ref_codes, axis=1)
    assert (got_bits[stable] == ref_bits[stable]).all()
    # one source alone, and codes_only by default
    assert (enc.encode(sources[0]) == res.codes[:1]).all()
    # batching does not change codes
    assert (enc.encode(sources, batch_size=1) == res.codes).all()


def test_resize_then_crop_preprocessing(tmp_path, sample_images):
    weight = build_random_projection_bundle(tmp_path / "b", bits=32, size=40, resize=48)
    enc = Encoder(tmp_path / "b")
    src = sample_images[3][0]
    prepared = prepare(load_image(src), enc.bundle.preprocess)
    assert prepared.shape == (40, 40, 3)
    _, ref = numpy_reference(prepared[None], weight)
    emb = enc.encode([src], return_embeddings=True).embeddings
    stable = np.abs(emb) > 1e-4
    assert (np.unpackbits(enc.encode([src]), axis=1)[stable] == np.unpackbits(ref, axis=1)[stable]).all()


def test_encode_bad_image_names_it(rp_bundle, tmp_path, sample_images):
    bad = tmp_path / "bad.png"; bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(ImageLoadError, match="bad.png"):
        Encoder(rp_bundle[0]).encode([sample_images[0][0], bad])


def _copy(rp_bundle, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(rp_bundle[0], dst)
    return dst


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: (d / "manifest.json").unlink(), "no manifest.json"),
        (lambda d: (d / "model.onnx").unlink(), "model file model.onnx is missing"),
        (lambda d: (d / "manifest.json").write_text("{not json"), "not valid JSON"),
        (lambda d: _edit(d, lambda m: m.pop("bits")), "'bits'"),
        (lambda d: _edit(d, lambda m: m.update(bits=12)), "multiple of 8"),
        (lambda d: _edit(d, lambda m: m["preprocess"].pop("mean")), "preprocess.mean"),
        (lambda d: _edit(d, lambda m: m["input"].update(height=30)), "differs from the input size"),
        (lambda d: _edit(d, lambda m: m.update(format_version=99)), "upgrade"),
        (lambda d: (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes() + b"x"), "model_sha256"),
        (lambda d: _edit(d, lambda m: m.update(database={"file": "database.npz"})), None),
    ],
)
def test_bundle_errors_name_the_problem(rp_bundle, tmp_path, mutate, message):
    d = _copy(rp_bundle, tmp_path)
    mutate(d)
    if message is None:  # database declared but missing: load works, load_database names the file
        with pytest.raises(BundleError, match="database.npz is missing"):
            Bundle.load(d).load_database()
        return
    with pytest.raises(BundleError, match=message):
        Bundle.load(d)


def test_bits_mismatch_between_manifest_and_model(rp_bundle, tmp_path):
    d = _copy(rp_bundle, tmp_path)
    _edit(d, lambda m: m.update(bits=128))
    with pytest.raises(BundleError, match="128 bits"):
        Encoder(d)


def test_missing_bundle_folder(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        Bundle.load(tmp_path / "nope")


def _edit(d, fn):
    m = json.loads((d / "manifest.json").read_text())
    fn(m)
    (d / "manifest.json").write_text(json.dumps(m))
