"""`rsir eval`: a bundle's query split searched through Milvus, checked against rsir_sdk.metrics."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from onnx_models import manifest_for, numpy_reference, random_projection_model

from rsir_sdk import metrics
from rsir_sdk.archive import open_archive
from rsir_sdk.bundle_writer import write_bundle
from rsir_sdk.cli import main
from rsir_sdk.encoder import Encoder
from rsir_sdk.errors import EvaluationError
from rsir_sdk.evaluate import EvalOptions, evaluate_bundle, evaluate_codes, evaluation_codes
from rsir_sdk.images import load_image
from rsir_sdk.preprocess import prepare
from rsir_sdk.splits import make_split


def make_bundle(out: Path, data: Path, *, protocol: str, learned: bool, command: str | None = None,
                noise: float = 0.1):
    """A random-projection bundle with split.json; AHCL-like "learned" codes = the encoder's
    codes of the train split with a fraction of bits flipped (learned V differs from F(x))."""
    archive = open_archive(data, label_from="top")
    split = make_split(archive, "60-40" if protocol.startswith("milan") else "80-20", seed=0)
    model, weight = random_projection_model(32, 32, 32, seed=3)
    manifest = manifest_for(32, 32, 32, method="ahcl" if learned else "milan",
                            classes=archive.classes)
    manifest["symmetric"] = not learned
    manifest["training"] = {"protocol": protocol, "split_file": "split.json"}
    if command:
        manifest["training"]["command"] = command
    database = None
    if learned:
        by_id = {s.id: s for s in archive.items}
        train = [by_id[i] for i in split.train_ids]
        prepared = np.stack([prepare(load_image(s.file), manifest["preprocess"]) for s in train])
        codes = numpy_reference(prepared, weight)[1]
        rng = np.random.default_rng(0)
        bits = np.unpackbits(codes, axis=1) ^ (rng.random((len(train), 32)) < noise)
        database = {"codes": np.packbits(bits.astype(np.uint8), axis=1), "ids": [s.id for s in train],
                    "labels": [s.label for s in train], "paths": [s.path for s in train],
                    "kind": "learned"}
    write_bundle(out, model, manifest, database, split=split)
    return split, archive


def test_ahcl_bundle_through_milvus_matches_the_reference(tmp_path, sample_dir):
    bundle = tmp_path / "ahcl"
    split, archive = make_bundle(bundle, sample_dir, protocol="ahcl-80-20", learned=True)
    res = evaluate_bundle(bundle, sample_dir, ks=(5, 20))
    assert res.n_queries == len(split.query_ids) == 40 and res.n_database == 160
    assert res.database == "learned" and not res.leave_one_out and res.topk == 160
    assert res.agree and not res.failed
    assert set(res.metrics) == {"mAP", "mAP@160", "mAP@5", "P@5", "mAP@20", "P@20"}
    for key, value in res.metrics.items():
        assert value == pytest.approx(res.reference[key], abs=1e-12), key
    # independently: encoder codes of the queries vs the learned codes, database in the
    # store's tie order (BLAKE2b-128 hex digests of the ids ascending)
    import hashlib

    from rsir_sdk import Encoder

    db = np.load(bundle / "database.npz")
    order = np.argsort([hashlib.blake2b(str(i).encode(), digest_size=16).hexdigest()
                        for i in db["ids"]])
    by_id = {s.id: s for s in archive.items}
    queries = [by_id[i] for i in split.query_ids]
    q_codes = Encoder(bundle).encode([s.file for s in queries])
    expect = metrics.mean_average_precision(q_codes, [s.label for s in queries],
                                            db["codes"][order], db["labels"][order].tolist())
    assert res.metrics["mAP"] == pytest.approx(expect, abs=1e-12)
    assert 0.1 < res.metrics["mAP"] < 1.0
    # the tie-aware figures: the mAPs in expectation over the order of tied codes
    assert set(res.tie_aware) == {"mAP", "mAP@160", "mAP@5", "mAP@20"}
    tie_aware = metrics.mean_average_precision(q_codes, [s.label for s in queries],
                                               db["codes"][order], db["labels"][order].tolist(),
                                               topk=5, ties="expected")
    assert res.tie_aware["mAP@5"] == pytest.approx(tie_aware, abs=1e-12)


def test_symmetric_bundle_leave_one_out_and_named_collections(tmp_path, sample_dir, db_uri):
    bundle = tmp_path / "milan"
    split, _ = make_bundle(bundle, sample_dir, protocol="milan-60-40", learned=False)
    res = evaluate_bundle(bundle, sample_dir, uri=db_uri, collection="ev", ks=(20,))
    assert res.leave_one_out and res.database == "encoded"
    assert res.n_queries == res.n_database == len(split.query_ids) == 80
    assert res.topk == 79 and res.agree
    for key, value in res.metrics.items():
        assert value == pytest.approx(res.reference[key], abs=1e-12), key
    # 32-bit random projections of 80 images tie: the tie-aware mAP@20 is its own figure
    assert 0.0 < res.tie_aware["mAP@20"] < 1.0
    again = evaluate_bundle(bundle, sample_dir, uri=db_uri, collection="ev", ks=(20,))
    assert again.metrics == res.metrics  # the named collection is reused (upsert by id)
    train = evaluate_bundle(bundle, sample_dir, options=EvalOptions(database="train"),
                            ks=(20,))  # queries vs train
    assert not train.leave_one_out and train.n_database == 120 and train.n_queries == 80
    from rsir_sdk import MilvusCodeStore

    with MilvusCodeStore(db_uri, "ev", create=False) as s:
        s.upsert(["intruder"], np.zeros((1, 4), np.uint8))
    with pytest.raises(EvaluationError, match="holds 81 items"):
        evaluate_bundle(bundle, sample_dir, uri=db_uri, collection="ev")


def test_archive_recorded_in_the_bundle_and_errors(tmp_path, sample_dir):
    data = tmp_path / "data"
    shutil.copytree(sample_dir, data)
    bundle = tmp_path / "b"
    make_bundle(bundle, data, protocol="ahcl-80-20", learned=True,
                command=f"python -m export train ahcl --data {data} --bits 32 --out {bundle}")
    from rsir_sdk import Bundle

    assert Bundle.load(bundle).archive_root == str(data)
    assert evaluate_bundle(bundle, ks=(10,)).agree
    # an unreadable query is left out and reported
    split = json.loads((bundle / "split.json").read_text())
    (data / split["query"][0]).write_bytes(b"")
    res = evaluate_bundle(bundle, ks=(10,))
    assert res.n_queries == 39 and [f.id for f in res.failed] == [split["query"][0]]
    with pytest.raises(EvaluationError, match="not in the archive"):
        evaluate_bundle(bundle, data / "Forest")
    with pytest.raises(EvaluationError, match="does not exist"):
        evaluate_bundle(bundle, tmp_path / "nowhere")
    (bundle / "split.json").unlink()
    with pytest.raises(EvaluationError, match="split.json"):
        evaluate_bundle(bundle)


def test_rsir_eval_command(tmp_path, sample_dir, capsys):
    bundle = tmp_path / "ahcl"
    make_bundle(bundle, sample_dir, protocol="ahcl-80-20", learned=True)
    assert main(["eval", str(bundle), "--data", str(sample_dir), "--ks", "10", "--no-progress",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["agree"] and out["metrics"]["mAP"] == pytest.approx(out["reference"]["mAP"])
    assert main(["eval", str(bundle), "--data", str(sample_dir), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "mAP@100" in text and "matches the exact numpy ranking" in text
    assert "tie-aware" in text
    assert main(["eval", str(bundle), "--no-progress"]) == 1
    assert "--data" in capsys.readouterr().err


class CountingEncoder:
    """Counts the images every real :class:`Encoder` encodes, wherever it was made (every path
    to onnxruntime goes through ``Encoder.encode_arrays``, wrapped here, not replaced)."""

    images: list[int] = []

    @classmethod
    def install(cls, monkeypatch) -> None:
        real = Encoder.encode_arrays
        cls.images = []

        def counted(self, batch, return_embeddings=False):
            cls.images.append(len(batch))
            return real(self, batch, return_embeddings)

        monkeypatch.setattr(Encoder, "encode_arrays", counted)


@pytest.mark.parametrize("protocol,args,expected", [
    ("ahcl-80-20", [], 40),  # learned database: the 40 queries only
    ("milan-60-40", [], 80),  # leave-one-out: the 80 query-side images are queries and database
    ("milan-60-40", ["--database", "train"], 120 + 80),  # encoded train side + queries
])
def test_rsir_eval_plot_encodes_each_image_once(tmp_path, sample_dir, monkeypatch, capsys,
                                                 protocol, args, expected):
    """`rsir eval --plot` computes the codes once: the search, the metrics and the curves all
    come from them (it used to encode the whole split twice)."""
    pytest.importorskip("matplotlib")
    bundle = tmp_path / "b"
    make_bundle(bundle, sample_dir, protocol=protocol, learned=protocol.startswith("ahcl"))
    CountingEncoder.install(monkeypatch)
    png = tmp_path / "pr.png"
    assert main(["eval", str(bundle), "--data", str(sample_dir), "--no-progress", "--json",
                 "--plot", str(png)] + args) == 0
    out = json.loads(capsys.readouterr().out)
    assert sum(CountingEncoder.images) == expected
    assert out["n_queries"] + (out["n_database"] if out["database"] == "encoded"
                               and not out["leave_one_out"] else 0) == expected
    assert out["agree"] and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_set_of_codes_for_milvus_the_metrics_and_the_curves(tmp_path, sample_dir, db_uri,
                                                                 monkeypatch):
    from rsir_sdk.plots import curves_of

    bundle = tmp_path / "ahcl"
    make_bundle(bundle, sample_dir, protocol="ahcl-80-20", learned=True)
    CountingEncoder.install(monkeypatch)
    codes = evaluation_codes(bundle, sample_dir, EvalOptions(batch_size=16))
    assert sum(CountingEncoder.images) == 40 and max(CountingEncoder.images) == 16
    # the database as the bundle lists it: the metrics put it in the store's tie order
    assert codes.db_ids == [str(i) for i in np.load(bundle / "database.npz")["ids"]]
    assert codes.database == "learned" and not codes.leave_one_out and codes.query_indices is None
    res = evaluate_codes(codes, ks=(5,), uri=db_uri, collection="once")
    again = evaluate_codes(codes, ks=(5,))  # a temporary Lite file this time
    assert sum(CountingEncoder.images) == 40  # nothing encoded again
    assert res.agree and again.metrics == res.metrics and res.uri == db_uri
    assert res.metrics["mAP"] == pytest.approx(res.reference["mAP"], abs=1e-12)
    curves = curves_of(codes, label="x")
    assert curves.mean_ap == pytest.approx(res.reference["mAP"], abs=1e-12)
    assert curves.n_queries == 40 and curves.n_database == 160 and curves.label == "x"
    with pytest.raises(EvaluationError, match="database must be"):
        EvalOptions(database="both")


def test_evaluation_functions_stay_short_and_narrow():
    """Issue 23: no function of the evaluation modules over 80 lines, no public one over 10
    parameters."""
    import ast
    import inspect

    import rsir_sdk.cli.evaluate
    import rsir_sdk.evaluate
    import rsir_sdk.metrics
    import rsir_sdk.plots
    import rsir_sdk.tie_aware

    for mod in (rsir_sdk.evaluate, rsir_sdk.plots, rsir_sdk.metrics, rsir_sdk.tie_aware,
                rsir_sdk.cli.evaluate):
        tree = ast.parse(inspect.getsource(mod))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                assert lines <= 80, f"{mod.__name__}.{node.name}: {lines} lines"
                a = node.args
                params = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
                n = len(params) - (params[:1] in (["self"], ["cls"]))
                if not node.name.startswith("_"):
                    assert n <= 10, f"{mod.__name__}.{node.name}: {n} parameters"
