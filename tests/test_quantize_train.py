"""An int8 bundle from a small trained AHCL network (Conv layers, learned database codes V).

Trains the tiny small_cnn AHCL bundle on the shipped EuroSAT sample (rsir_train.testing), quantizes
it with its own split (train part calibrates, query part checks), and serves it.
"""

import numpy as np
import pytest

pytest.importorskip("torch")

from rsir_sdk import Bundle, Retriever  # noqa: E402
from rsir_sdk.errors import CollectionMismatchError  # noqa: E402
from rsir_train.quantize import QuantizeOptions, quantize_bundle  # noqa: E402

pytestmark = pytest.mark.train


@pytest.fixture(scope="module")
def ahcl_pair(tmp_path_factory, sample_dir):
    from rsir_train.testing import tiny_ahcl_bundle

    root = tmp_path_factory.mktemp("ahcl")
    tiny_ahcl_bundle(root / "fp32", data=sample_dir, bits=32, outer=4, inner=1)
    res = quantize_bundle(root / "fp32", sample_dir, root / "int8",
                          QuantizeOptions(count=96, check=40))
    return root / "fp32", root / "int8", res


def _weight_bytes(model_path) -> tuple[int, int]:
    """Bytes of the float weights of the graph's Conv/Gemm/MatMul nodes: (network, fine head)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    init = {t.name: numpy_helper.to_array(t).nbytes for t in model.graph.initializer}
    out = [0, 0]
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            out["fine" in node.name.lower()] += sum(init.get(i, 0) for i in node.input)
    return out[0], out[1]


def test_int8_ahcl_bundle_ships_the_parents_learned_codes(ahcl_pair):
    fp32, int8, res = ahcl_pair
    parent, child = Bundle.load(fp32), Bundle.load(int8)
    assert res.check_set == "held-out" and res.calibration_images == 96
    rec = child.manifest["parent"]
    assert rec["calibration"]["reader"] == "split"
    assert rec["quantization"]["kept_float32"]["hash_layer"]  # the sign-deciding layer stays fp32
    assert res.bit_agreement >= 0.97, res
    # int8 saves at least half the bytes of the network's weights; the fine head (a few small
    # projections, no 768-column matrix) stays float by design
    network, fine_head = _weight_bytes(parent.model_path)
    assert fine_head < 0.4 * res.parent_model_bytes, fine_head  # 0.34 with small_cnn
    assert res.parent_model_bytes - res.model_bytes >= 0.5 * network, (network, res)
    a, b = parent.load_database(), child.load_database()
    assert np.array_equal(a.codes, b.codes) and a.ids == b.ids and a.labels == b.labels
    assert (child.path / "split.json").read_bytes() == (parent.path / "split.json").read_bytes()
    # written through the one bundle writer: the parent's archive record and split come along
    assert child.manifest["archive"] == parent.manifest["archive"]
    assert child.manifest["database"]["source"] == f"parent {parent.encoder_id}"


def test_int8_ahcl_serves_from_its_own_collection(ahcl_pair, sample_images, tmp_path):
    fp32, int8, _ = ahcl_pair
    uri = str(tmp_path / "rsir.db")
    query = [p for p, _ in sample_images[::20]]
    with Retriever(fp32, uri=uri, collection="fp32") as r32:
        r32.add_learned_codes()
        hits32 = r32.search_batch(query, k=10)
    with Retriever(int8, uri=uri, collection="int8") as r8:
        assert r8.add_learned_codes() == r8.bundle.load_database().codes.shape[0]
        hits8 = r8.search_batch(query, k=10)
    # same learned V, nearly the same query codes: the top hits mostly coincide
    overlap = np.mean([len({h.id for h in a} & {h.id for h in b}) / 10 for a, b in zip(hits32, hits8)])
    assert overlap >= 0.5, overlap
    with pytest.raises(CollectionMismatchError):
        Retriever(int8, uri=uri, collection="fp32")


def test_missed_target_keeps_leading_layers_in_float(ahcl_pair, sample_dir, tmp_path):
    fp32, _, _ = ahcl_pair
    res = quantize_bundle(fp32, sample_dir, tmp_path / "int8-retry", count=32, check=20,
                          target_agreement=1.01)  # unreachable: every retry is made
    assert [a["leading_float"] for a in res.attempts] == [0, 3]  # small_cnn has 4 convs
    best = max(res.attempts, key=lambda a: a["bit_agreement"])
    assert res.bit_agreement == pytest.approx(best["bit_agreement"], abs=1e-6)
    rec = Bundle.load(tmp_path / "int8-retry").manifest["parent"]["quantization"]
    assert rec["attempts"] == res.attempts and rec["target_agreement"] == 1.01
    assert len(rec["kept_float32"]["leading_layers"]) == best["leading_float"]
    assert res.float_layers[0].endswith("hash_layer/Gemm")
