"""The split fine code (issue 20): pooled features and two colour thumbnails in one graph.

Real parts: a real ITQ bundle (small_cnn on the shipped EuroSAT sample) trained with
``fine=FineCodeConfig("split", 128)``, its ONNX graph run by onnxruntime, compared with the numpy
form of the same fitted code; the thumbnails against PyTorch's adaptive average pool; the
rotation-averaged part against a rotated input; the ``--fine-code`` option's parsing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

import torch.nn.functional as F  # noqa: E402

from rsir_sdk import Bundle, Encoder  # noqa: E402
from rsir_sdk.codes import SceneTest, unpack_codes  # noqa: E402
from rsir_sdk.errors import BundleError  # noqa: E402
from rsir_sdk.images import load_image  # noqa: E402
from rsir_sdk.preprocess import prepare  # noqa: E402
from rsir_train.dataset import open_training_archive  # noqa: E402
from rsir_train.fine_code import FineCodeConfig  # noqa: E402
from rsir_train.fine_split import (  # noqa: E402
    TEST_WEIGHTS,
    SplitFineCode,
    Thumbnails,
    colour_layout,
    fit_split,
    part_bits,
    thumbnail_descriptors,
)
from rsir_train.onnx_export import pooled_outputs  # noqa: E402
from rsir_train.testing import SAMPLE_ARCHIVE  # noqa: E402

pytestmark = pytest.mark.train
FINE_BITS = 128


@pytest.mark.parametrize("size", [(64, 64), (224, 224), (70, 90)])
def test_thumbnails_are_pytorchs_adaptive_average_pool(size):
    """Two matrix products (what the graph runs, for any input size) give the pool's boxes."""
    images = torch.randint(0, 256, (3, *size, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    want = F.adaptive_avg_pool2d(images.permute(0, 3, 1, 2).float(), 16).flatten(1)
    got = Thumbnails(*size)(images)
    assert got.shape == (3, 768) and torch.allclose(got, want, atol=1e-3)


def test_rotation_part_is_invariant_and_the_parts_differ():
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 255, (4, 3, 16, 16))
    turned = np.rot90(t, 1, axes=(2, 3))
    a, b = (thumbnail_descriptors(x.reshape(4, -1), "t16r") for x in (t, turned))
    assert np.allclose(a, b, atol=1e-12)
    t8 = thumbnail_descriptors(t.reshape(4, -1), "t8")
    assert t8.shape == (4, 192) and not np.allclose(
        t8, thumbnail_descriptors(turned.reshape(4, -1), "t8"))
    # mean colour removed: a uniform shift of every pixel leaves both parts unchanged
    shifted = thumbnail_descriptors(t.reshape(4, -1) + 20.0, "t8")
    assert np.allclose(shifted, t8, atol=1e-12)
    assert part_bits(256) == [("pooled", 64), ("t8", 64), ("t16r", 128)]
    with pytest.raises(ValueError, match="multiple of 32"):
        part_bits(48)


def _prepared(result, indices):
    arch = open_training_archive(SAMPLE_ARCHIVE)
    return np.stack([prepare(load_image(arch.items[int(i)].file), result.preprocess)
                     for i in indices])


@pytest.fixture(scope="module")
def split_bundle(tmp_path_factory):
    from rsir_train.itq import ITQConfig, train_itq_bundle

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("split") / "bundle"
    cfg = ITQConfig(bits=32, backbone="small_cnn", pretrained=False, cache_dir=False, device="cpu")
    result, manifest, _ = train_itq_bundle(SAMPLE_ARCHIVE, out, cfg,
                                           fine=FineCodeConfig("split", FINE_BITS))
    return out, result, manifest


def test_the_bundle_records_the_split_and_onnx_matches_numpy(split_bundle):
    out, result, manifest = split_bundle
    fine = manifest["fine_code"]
    assert fine["kind"] == "split" and fine["bits"] == FINE_BITS
    assert [(p["part"], p["bits"]) for p in fine["parts"]] == part_bits(FINE_BITS)
    assert "thumbnails" in fine["fitted_on"] and Bundle.load(out).fine_bits == FINE_BITS
    # the same code refitted here from the train side (pooled features + thumbnails)
    train = _prepared(result, result.train_indices)
    thumbs = Thumbnails(*train.shape[1:3])(torch.as_tensor(train)).numpy()
    pooled = pooled_outputs(result.net, result.normalize, train)
    from rsir_train.fine_code import _usable_bits

    code = fit_split(pooled, thumbs, FINE_BITS, *train.shape[1:3], _usable_bits)
    assert isinstance(code, SplitFineCode) and code.bits == FINE_BITS
    images = _prepared(result, np.arange(0, 200, 7))
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_fine = sess.run(["fine_codes"], {"images": images})[0]
    want = code.codes(pooled_outputs(result.net, result.normalize, images),
                      Thumbnails(*images.shape[1:3])(torch.as_tensor(images)).numpy())
    differ = unpack_codes(onnx_fine, FINE_BITS) != unpack_codes(want, FINE_BITS)
    assert differ.mean() < 0.01, differ.mean()
    assert np.array_equal(Encoder(out).encode_both_arrays(images).fine, onnx_fine)


def test_a_rotated_scene_keeps_its_rotation_part(split_bundle):
    """The last half of the bits (t16r) is a function of the rotation-averaged thumbnail: a
    90-degree turn of a square input keeps it (up to float noise on near-zero projections)."""
    out, result, _ = split_bundle
    images = _prepared(result, np.arange(0, 200, 11))
    turned = np.ascontiguousarray(np.rot90(images, 1, axes=(1, 2)))
    enc = Encoder(out)
    a = unpack_codes(enc.encode_both_arrays(images).fine, FINE_BITS)
    b = unpack_codes(enc.encode_both_arrays(turned).fine, FINE_BITS)
    half = FINE_BITS // 2
    assert (a[:, half:] == b[:, half:]).mean() >= 0.98
    assert (a[:, :half] != b[:, :half]).any()  # the other parts see the turn


def test_fine_code_option_parses_and_refuses_in_one_line(capsys):
    from rsir_train.cli import build_parser

    base = ["train", "itq", "--data", str(SAMPLE_ARCHIVE), "--out", "x"]
    parse = build_parser().parse_args
    assert parse(base + ["--fine-code", "split"]).fine_code == FineCodeConfig("split", 256)
    assert parse(base + ["--fine-code", "pca:64"]).fine_code == FineCodeConfig("pca", 64)
    assert parse(base + ["--fine-code", "layout"]).fine_code == FineCodeConfig("layout", 320)
    assert parse(base).fine_code is None
    for bad in ("split:48", "itq", "pca:x", "layout:64"):
        with pytest.raises(SystemExit):
            parse(base + ["--fine-code", bad])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "--fine-code" in err and bad.split(":")[0] in err


def test_a_small_train_side_caps_each_part_and_names_it(caplog):
    """A train side of 12 images varies in at most 11 directions: each part is fitted with 8
    bits and the log line names the part and says why (the tiny-archive case of issue 21)."""
    from rsir_train.fine_code import _usable_bits

    rng = np.random.default_rng(0)
    pooled, thumbs = rng.normal(size=(12, 40)), rng.uniform(0, 255, size=(12, 768))
    with caplog.at_level("INFO", logger="rsir_train.fine_code"):
        code = fit_split(pooled, thumbs, FINE_BITS, 64, 64, _usable_bits)
    assert [int(c.bits) for _, c in code.parts] == [8, 8, 8]
    lines = [r.getMessage() for r in caplog.records]
    for name, bits in part_bits(FINE_BITS):
        assert any(f"fine code part '{name}': {bits} bits asked, 8 fitted (its 12 training "
                   f"images" in line for line in lines), lines
    with pytest.raises(ValueError, match="fine code part 'pooled' needs features that vary "
                                         r"in at least 8 directions, got 5 \(6 training images"):
        fit_split(pooled[:6], thumbs[:6], FINE_BITS, 64, 64, _usable_bits)


def test_the_colour_layout_survives_brightness_and_keeps_the_cells():
    """``cl`` is the 8 x 8 cells' colours over 1 + the mean luminance: a brightness change
    (every pixel x 1.1) leaves it within 1 %; a changed cell changes it; the layout kind's
    parts and the same-scene weights are as measured (docs/similar.md)."""
    rng = np.random.default_rng(0)
    t = rng.uniform(40, 200, (4, 768))
    a, b = colour_layout(t), colour_layout(t * 1.1)
    assert a.shape == (4, 192) and np.abs(b / a - 1).max() < 0.01
    other = t.reshape(4, 3, 16, 16).copy()
    other[:, 0, :2, :2] += 50  # one cell's red
    moved = np.abs(colour_layout(other.reshape(4, -1)) - a)
    assert moved[:, 0].min() > 0.1 and np.median(moved) < 0.02
    assert part_bits(320, "layout") == [("pooled", 64), ("t8", 64), ("cl", 64), ("t16r", 128)]
    assert TEST_WEIGHTS["layout"] == {"pooled": [0, 0], "t8": [1, 0], "cl": [3, 0],
                                      "t16r": [1, 1]}
    with pytest.raises(ValueError, match="multiple of 40"):
        part_bits(256, "layout")


def test_a_layout_bundle_records_its_test_and_onnx_matches_numpy(tmp_path):
    """``--fine-code layout``: four parts in one graph, each part's test weight in the
    manifest, and onnxruntime's codes equal to the numpy form of the fitted code."""
    from rsir_train.fine_code import _usable_bits
    from rsir_train.itq import ITQConfig, train_itq_bundle

    torch.set_num_threads(2)
    bits, out = 160, tmp_path / "layout"
    cfg = ITQConfig(bits=32, backbone="small_cnn", pretrained=False, cache_dir=False, device="cpu")
    result, manifest, _ = train_itq_bundle(SAMPLE_ARCHIVE, out, cfg,
                                           fine=FineCodeConfig("layout", bits))
    fine = manifest["fine_code"]
    assert fine["kind"] == "layout" and Bundle.load(out).fine_bits == bits
    assert [(p["part"], p["bits"], p["test_weight"]) for p in fine["parts"]] == [
        ("pooled", 32, [0, 0]), ("t8", 32, [1, 0]), ("cl", 32, [3, 0]), ("t16r", 64, [1, 1])]
    train = _prepared(result, result.train_indices)
    code = fit_split(pooled_outputs(result.net, result.normalize, train),
                     Thumbnails(*train.shape[1:3])(torch.as_tensor(train)).numpy(), bits,
                     *train.shape[1:3], _usable_bits, "layout")
    images = _prepared(result, np.arange(0, 200, 7))
    onnx_fine = Encoder(out).encode_both_arrays(images).fine
    want = code.codes(pooled_outputs(result.net, result.normalize, images),
                      Thumbnails(*images.shape[1:3])(torch.as_tensor(images)).numpy())
    differ = unpack_codes(onnx_fine, bits) != unpack_codes(want, bits)
    assert differ.mean() < 0.01, differ.mean()
    cl = slice(64, 96)  # the colour-layout part's bits
    assert (unpack_codes(onnx_fine, bits)[:, cl] == unpack_codes(want, bits)[:, cl]).mean() > 0.99
    # the runtime reads the test (bytes, weight) from the manifest, and refuses a bad one
    assert fine["test_ratios"] == [0.8, 0.6]
    assert Bundle.load(out).scene_test == SceneTest([((4, 8, 1), (8, 12, 3), (12, 20, 1)),
                                                     ((12, 20, 1),)], [0.8, 0.6])
    # a Retriever's new collection records it; the same file comes back first
    from rsir_sdk import Retriever

    files = [open_training_archive(SAMPLE_ARCHIVE).items[i].file for i in range(0, 200, 9)]
    with Retriever(out, uri=str(tmp_path / "layout.db"), collection="layout") as r:
        r.add_images(files)
        assert r.store.scene_test == Bundle.load(out).scene_test
        assert r.store.info()["scene_test"] == {
            "tests": [[[4, 8, 1], [8, 12, 3], [12, 20, 1]], [[12, 20, 1]]], "ratios": [0.8, 0.6]}
        for f, hits in zip(files, r.search_batch(files, k=3)):
            assert hits[0].fine_distance == 0 and hits[0].distance == 0, (f, hits[0])
    # rsir eval ranks through Milvus with the test too: Milvus equals its numpy reference
    from rsir_sdk.evaluate import evaluate_bundle

    result = evaluate_bundle(out, SAMPLE_ARCHIVE)
    assert result.agree and result.fine_bits == bits
    manifest_file = out / "manifest.json"
    original = manifest_file.read_text()
    for bad, says in (({"bits": 40}, "parts' covers 168 bits"),
                      ({"test_weight": ["x"]}, "parts' is malformed"),
                      ({"test_weight": [1, -1]}, "parts' is malformed"),
                      ({"test_weight": [1.5, 0]}, "parts' is malformed"),
                      ({"test_ratios": [0.8]}, "test_ratios' is malformed"),
                      ({"test_ratios": [0.8, 1.2]}, "test_ratios' is malformed"),
                      ({"test_ratios": 0.6}, "test_ratios' is malformed")):
        m = json.loads(original)
        where = m["fine_code"] if "test_ratios" in bad else m["fine_code"]["parts"][1]
        where.update(bad)
        manifest_file.write_text(json.dumps(m))
        with pytest.raises(BundleError, match=says) as err:
            Bundle.load(out, verify_hash=False)
        assert "\n" not in str(err.value) and "'fine_code." + says in str(err.value)
        manifest_file.write_text(original)
