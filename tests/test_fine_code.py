"""The fine code (issue 20): a label-free binary code of pooled features, fitted on the train side.

Synthetic features check the fit itself (deterministic for a seed, big-endian packing, errors);
real pooled features of the shipped EuroSAT sample (ImageNet EfficientNet-Lite0) check what users
see: the same image maps to the same code, a lightly changed image lands next to its original,
and the graph form (``FineCodeHead`` + ``PackBits``, exported to ONNX, run by onnxruntime) gives
the same bytes as ``FineCode.codes``.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.train

from rsir_sdk.codes import hamming_distances  # noqa: E402
from rsir_sdk.images import load_image  # noqa: E402
from rsir_sdk.preprocess import prepare  # noqa: E402
from rsir_train.fine_code import FINE_KINDS, FineCode, FineCodeConfig, FineCodeHead, fit_fine_code  # noqa: E402

#: the sample's native size: the pretrained backbone runs fast enough for a unit test
PRE = {"resize": None, "crop": [64, 64], "interpolation": "bilinear",
       "mean": [127.0 / 255] * 3, "std": [128.0 / 255] * 3}


def _synthetic(n=300, d=48, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + 2.0


@pytest.mark.parametrize("kind", FINE_KINDS)
def test_fit_is_deterministic_for_a_seed_and_codes_are_packed_big_endian(kind):
    x = _synthetic()
    a = fit_fine_code(x, FineCodeConfig(kind=kind, bits=32, seed=3))
    b = fit_fine_code(x.copy(), FineCodeConfig(kind=kind, bits=32, seed=3))
    assert a.projection.shape == (32, 48) and a.mean.shape == (48,)
    assert a.projection.dtype == np.float32 and a.mean.dtype == np.float32
    assert np.array_equal(a.projection, b.projection) and np.array_equal(a.mean, b.mean)
    codes = a.codes(x)
    assert codes.dtype == np.uint8 and codes.shape == (300, 4)
    assert np.array_equal(codes, b.codes(x))
    # bit k of the code is projection k > 0, in numpy.packbits (big-endian) order
    bits = a.embed(x) > 0
    assert np.array_equal(np.unpackbits(codes, axis=1, bitorder="big").astype(bool), bits)
    # balanced enough to carry information: every bit takes both values on the fit data
    assert bits.any(axis=0).all() and (~bits).any(axis=0).all()
    # the Linear form a graph uses gives the same projections
    w, bias = a.linear()
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert np.allclose(xn @ w.T.astype(np.float64) + bias, a.embed(x), atol=1e-5)


def test_first_projection_is_the_most_significant_bit():
    code = FineCode("pca", 16, np.zeros(16, np.float32), np.eye(16, dtype=np.float32), False)
    f = -np.ones((2, 16))
    f[0, 0] = 1.0  # only projection 0 positive
    f[1, 15] = 1.0  # only projection 15 positive
    assert code.codes(f).tolist() == [[128, 0], [0, 1]]


def test_seeds_change_the_rotation_and_bad_configurations_are_refused():
    x = _synthetic()
    for kind in ("itq", "lsh"):
        a = fit_fine_code(x, FineCodeConfig(kind=kind, bits=16, seed=0))
        b = fit_fine_code(x, FineCodeConfig(kind=kind, bits=16, seed=1))
        assert not np.array_equal(a.projection, b.projection)
    with pytest.raises(ValueError, match="kind"):
        fit_fine_code(x, FineCodeConfig(kind="median"))
    with pytest.raises(ValueError, match="multiple of 8"):
        fit_fine_code(x, FineCodeConfig(bits=12))
    with pytest.raises(ValueError, match="at least 64"):
        fit_fine_code(x[:40], FineCodeConfig(kind="itq", bits=64))
    # random projections need no more images than bits
    assert fit_fine_code(x[:40], FineCodeConfig(kind="lsh", bits=64)).codes(x).shape == (300, 8)


@pytest.fixture(scope="module")
def lite0():
    from rsir_train.backbones import build_backbone
    from rsir_train.features import Normalize

    backbone = build_backbone("efficientnet_lite0").eval()
    normalize = Normalize(PRE["mean"], PRE["std"])

    @torch.no_grad()
    def features(rgbs):
        x = torch.from_numpy(np.stack([prepare(im, PRE) for im in rgbs]))
        return backbone(normalize(x)).numpy()

    return features


@pytest.fixture(scope="module")
def sample_features(sample_images, lite0):
    rgbs = [load_image(p) for p, _ in sample_images]
    return rgbs, lite0(rgbs)


def test_sample_scenes_keep_their_own_code_and_light_changes_stay_close(sample_features, lite0):
    rgbs, feats = sample_features
    train = np.arange(len(feats)) % 5 != 0  # fit on 160 images, 40 held out
    code = fit_fine_code(feats[train], FineCodeConfig())  # the measured default: PCA-sign 128
    assert (code.kind, code.bits) == ("pca", 128)
    db = code.codes(feats)
    # the same image, encoded again in another batch, maps to the same code
    held = np.flatnonzero(~train)[:8]
    again = code.codes(lite0([rgbs[i] for i in held[::-1]]))[::-1]
    assert np.array_equal(again, db[held])
    # unlike trained class codes (about one per class), the scenes keep apart: almost one code
    # per image (near-uniform sea scenes of the sample may share one)
    assert len(np.unique(db, axis=0)) >= 190
    # a brightened held-out scene is nearer its original than to any other scene
    bright = [np.clip(np.rint(rgbs[i] * 1.1), 0, 255).astype(np.uint8) for i in held]
    dist = hamming_distances(code.codes(lite0(bright)), db)
    own = dist[np.arange(len(held)), held]
    dist[np.arange(len(held)), held] = 10**6
    assert (own < dist.min(axis=1)).all(), (own, dist.min(axis=1))


def test_graph_form_exported_to_onnx_gives_the_same_bytes(sample_features, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from rsir_train.onnx_export import PackBits

    _, feats = sample_features
    code = fit_fine_code(feats, FineCodeConfig(kind="itq", bits=64, seed=0))  # rotated, biased
    graph = torch.nn.Sequential(FineCodeHead(code), PackBits(64)).eval()
    path = tmp_path / "fine.onnx"
    torch.onnx.export(graph, (torch.from_numpy(feats[:2]),), str(path), dynamo=False,
                      input_names=["pooled"], output_names=["fine_codes"],
                      dynamic_axes={"pooled": {0: "n"}, "fine_codes": {0: "n"}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(["fine_codes"], {"pooled": feats.astype(np.float32)})[0]
    assert out.dtype == np.uint8
    # float32 in the graph vs float64 here: a projection within rounding of 0 may flip
    flips = np.unpackbits(out ^ code.codes(feats)).sum()
    assert flips <= 2, flips
