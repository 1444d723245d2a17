"""ITQ (label-free codes on frozen features): the fit itself, a bundle trained on a folder with
no class sub-folders, indexed with ``rsir index`` and searched with ``Retriever.search``."""

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.train

from rsir_sdk import Bundle, Encoder, Retriever  # noqa: E402
from rsir_sdk.cli import main as rsir_main  # noqa: E402
from rsir_train.baselines import fit_itq, fit_linear_hash, float_map, protocol_map  # noqa: E402
from rsir_train.cli import main  # noqa: E402


def test_itq_rotation_lowers_the_quantization_error():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 32)) @ rng.standard_normal((32, 32)) + 3.0
    itq = fit_itq(x, 16, iterations=50, seed=0)
    v = itq.embed(x)
    b = np.where(v >= 0, 1.0, -1.0)
    # the projection is the PCA basis times an orthogonal rotation: orthonormal columns
    assert np.allclose(itq.projection.T @ itq.projection, np.eye(16), atol=1e-8)
    pca = fit_itq(x, 16, iterations=0, seed=0)
    vp = pca.embed(x)
    assert ((b - v) ** 2).sum() < ((np.where(vp >= 0, 1.0, -1.0) - vp) ** 2).sum()
    assert itq.codes(x).shape == (400, 2)


def test_baselines_rank_clustered_features():
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((4, 64)) * 4
    y = np.repeat(np.arange(4), 50)
    x = centers[y] + rng.standard_normal((200, 64))
    lin = fit_linear_hash(x, y, 16)
    itq = fit_itq(x, 16)
    assert protocol_map(lin.codes(x), y, lin.codes(x), y, "80-20") > 0.9
    assert protocol_map(itq.codes(x), y, itq.codes(x), y, "60-40") > 0.9
    assert float_map(x, y, x, y, topk=20, leave_one_out=True) > 0.9


def test_trains_on_a_folder_without_class_folders_then_index_and_search(
        tmp_path, sample_images, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    for p, _ in sample_images[::5]:  # 40 images, no class folders, no labels
        shutil.copy(p, flat / p.name)
    out = tmp_path / "itq16"
    rc = main(["train", "itq", "--data", str(flat), "--bits", "16", "--out", str(out),
               "--backbone", "small_cnn", "--no-pretrained", "--no-cache", "--device", "cpu",
               "-q"])
    assert rc == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "itq" and manifest["symmetric"] is True
    assert manifest["classes"] == [] and manifest["training"]["labels_used"] is False
    assert manifest["training"]["n_train"] == 40 and manifest["training"]["n_query"] == 0
    bundle = Bundle.load(out)
    assert not bundle.has_database
    db = str(tmp_path / "r.db")
    assert rsir_main(["index", str(out), str(flat), "--uri", db, "--collection", "flat"]) == 0
    files = sorted(flat.iterdir())
    with Retriever(bundle, uri=db, collection="flat") as r:
        assert r.count() == 40
        hits = r.search(files[3], k=3)
        same_code = {h.id for h in r.range_search(files[3], radius=0)}
    # the file comes back at distance 0; 16-bit codes of 40 tiny-network images may collide, and
    # the fine code (issue 20) orders that tie group: the file first, unless another image has
    # its fine code too (then both are at fine distance 0)
    assert hits[0].distance == 0 and files[3].name in same_code and hits[0].id in same_code
    assert bundle.fine_bits is not None and hits[0].fine_distance == 0
    assert hits[0].id == files[3].name or any(
        h.id == files[3].name and h.fine_distance == 0 for h in hits)
    # the exported graph and the fitted model agree (same codes from the same images)
    codes = Encoder(bundle).encode(files[:8])
    assert codes.shape == (8, 2)
    # nothing to evaluate is said as such, not as "every query image failed to load"
    capsys.readouterr()
    assert rsir_main(["eval", str(out), "--data", str(flat)]) == 1
    err = capsys.readouterr().err
    assert "has no query side to evaluate" in err and "failed to load" not in err, err


def test_class_folders_with_a_stray_file_train_unlabelled_with_a_warning(tmp_path, sample_images,
                                                                         caplog):
    """One stray file beside the class folders made ITQ (--labels auto) train the whole bundle
    without labels, said only at INFO; now a warning naming why and --labels folders."""
    from rsir_train.itq import itq_data

    root = tmp_path / "archive"
    for p, label in sample_images[::20]:
        (root / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / label / p.name)
    shutil.copy(sample_images[0][0], root / "stray.jpg")
    with caplog.at_level("WARNING", logger="rsir_train.itq"):
        data = itq_data(root)
    assert not data.split.query_ids
    assert "training ITQ without labels" in caplog.text and "--labels folders" in caplog.text


def test_labelled_archive_draws_the_split_but_trains_without_labels(tmp_path, sample_dir):
    from rsir_train.itq import ITQConfig, train_itq_bundle

    cfg = ITQConfig(bits=16, backbone="small_cnn", pretrained=False, cache_dir=False,
                    device="cpu")
    result, manifest, data = train_itq_bundle(sample_dir, tmp_path / "b", cfg)
    assert manifest["training"]["protocol"] == "ahcl-80-20"
    assert len(data.split.query_ids) == 40 and manifest["classes"][:2] == ["AnnualCrop", "Forest"]
    assert 0.0 < result.metrics["ahcl_map_torch"] <= 1.0
    assert manifest["training"]["labels_used"] is False
    assert len(result.train_indices) == 160  # fitted on the train side only


def test_baselines_command_writes_one_record_per_method_and_length(tmp_path, sample_dir, capsys):
    """``python -m rsir_train.baselines`` (the linear-hash and cosine rows of results.md): one
    JSON line per method and length, on the 80/20 split, with the figure it printed."""
    from rsir_train.baselines import main as baselines_main

    out = tmp_path / "baselines.jsonl"
    rc = baselines_main(["--data", str(sample_dir), "--bits", "16,32", "--method", "linear",
                         "--method", "cosine", "--backbone", "small_cnn", "--json", str(out),
                         "--cache-dir", str(tmp_path / "features")])
    assert rc == 0, capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["method"], r["bits"]) for r in records] == [
        ("linear", 16), ("linear", 32), ("cosine", None)]
    assert all(r["protocol"] == "80-20" and r["metric"] == "mAP" for r in records)
    assert all(0.0 < r["value"] <= 1.0 for r in records)
    assert "tie_aware" in records[0] and "tie_aware" not in records[2]
    printed = capsys.readouterr().out
    assert all(f"{r['value']:.4f}" in printed for r in records)
