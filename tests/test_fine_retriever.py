"""The Retriever writes and searches with fine codes (issue 20): real bundles, real Milvus Lite.

A real tiny AHCL bundle (the session's ``tiny_ahcl``: small_cnn trained on the shipped EuroSAT
sample, 32-bit codes that collapse to about one per class, and a fine code) fills collections
through every writer (``add_images``, ``index``, ``add_learned_codes``, ``add_codes``); searches
rank each tie group by the fine code, the appearance mode ranks by the fine code alone, edge
codes sent with both parts give the image's hits, duplicates are found, an old collection and an
old bundle keep working, and ``rsir eval`` still agrees with the in-memory metrics.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")

from rsir_sdk import Bundle, Retriever, metrics  # noqa: E402
from rsir_sdk.bundle import file_sha256  # noqa: E402
from rsir_sdk.codes import hamming_distances, near_duplicate_radius, pack_codes  # noqa: E402
from rsir_sdk.errors import BundleError, CollectionMismatchError, InvalidInputError  # noqa: E402
from rsir_sdk.evaluate import evaluate_bundle  # noqa: E402
from rsir_sdk.rasters import RasterRule  # noqa: E402
from rsir_sdk.store import MilvusCodeStore, tie_order  # noqa: E402

pytestmark = pytest.mark.train

#: images of the sample put into the collections: 6 per class, 60 in all
PER_CLASS = 6


@pytest.fixture(scope="module")
def tiny(tiny_ahcl):
    out, _, manifest = tiny_ahcl
    assert manifest["fine_code"]["bits"] >= 8
    return out


@pytest.fixture(scope="module")
def chosen(sample_images):
    """(path, label, id) of 6 images per class."""
    seen: dict[str, int] = {}
    out = []
    for path, label in sample_images:
        if seen.get(label, 0) < PER_CLASS:
            seen[label] = seen.get(label, 0) + 1
            out.append((path, label, f"{label}/{path.name}"))
    return out


@pytest.fixture(scope="module")
def filled(tiny, chosen, tmp_path_factory):
    """A collection filled by ``add_images`` with the fine-code bundle; the Retriever open."""
    uri = str(tmp_path_factory.mktemp("fine") / "rsir.db")
    with Retriever(tiny, uri=uri, collection="scenes") as r:
        n = r.add_images([p for p, _, _ in chosen], ids=[i for _, _, i in chosen],
                         labels=[lab for _, lab, _ in chosen])
        assert n == len(chosen)
        yield r


@pytest.fixture(scope="module")
def jpegs(chosen, tmp_path_factory):
    """Every chosen image re-encoded as a JPEG of quality 70 (a lightly changed copy)."""
    d = tmp_path_factory.mktemp("q70")
    out = []
    for path, _, _ in chosen:
        target = d / f"{path.stem}_q70.jpg"
        Image.open(path).convert("RGB").save(target, quality=70)
        out.append(target)
    return out


def _old_collection(uri: str, name: str, bundle: Path, chosen) -> None:
    """A collection filled before issue 20: retrieval codes only (the same encoder)."""
    r = Retriever(bundle, uri=uri, collection="scratch_for_codes")
    codes = r.encoder.encode([p for p, _, _ in chosen])
    r.close()
    identity = dict(Bundle.load(bundle).identity(), raster_rule=RasterRule().to_dict())
    with MilvusCodeStore(uri, name, bits=codes.shape[1] * 8, encoder=identity) as store:
        store.upsert([i for _, _, i in chosen], codes, [lab for _, lab, _ in chosen],
                     encoder=identity)
        assert store.fine_bits is None


def test_same_file_and_jpeg_copy_come_back_first(filled, chosen, jpegs, tmp_path):
    r = filled
    assert r.fine_ranking and r.info()["fine_bits"] == r.bundle.fine_bits
    assert r.info()["collection_fine_bits"] == r.bundle.fine_bits
    ids = [i for _, _, i in chosen]
    same = r.search_batch([p for p, _, _ in chosen], k=10)
    copies = r.search_batch(jpegs, k=10)
    # the same file: first, or tied with it on both codes (the tiny network gives a few
    # different scenes one fine code)
    for hits, i in zip(same, ids):
        assert i in {h.id for h in hits if (h.distance, h.fine_distance) == (0, 0)}
    assert np.mean([hits[0].id == i for hits, i in zip(same, ids)]) >= 0.95
    near = near_duplicate_radius(r.bundle.fine_bits)
    for hits in same + copies:  # near-duplicates by fine distance, then (distance, fine distance)
        assert all(h.fine_distance is not None for h in hits)
        keys = [(0, h.fine_distance, 0) if h.fine_distance <= near else
                (1, h.distance, h.fine_distance) for h in hits]
        assert keys[1:] == sorted(keys[1:])
        # the first is in order, or the ratio test's leader: nearer by fine distance than any
        assert keys[0] <= keys[1] or hits[0].fine_distance < min(h.fine_distance for h in hits[1:])
    rank1_fine = np.mean([hits[0].id == i for hits, i in zip(copies, ids)])
    assert rank1_fine >= 0.8, rank1_fine  # 0.88 measured
    # the same codes in a collection without fine codes: ties come back in digest order
    uri = str(tmp_path / "old.db")
    _old_collection(uri, "old", r.bundle.path, chosen)
    with Retriever(r.bundle.path, uri=uri, collection="old") as old:
        assert not old.fine_ranking and old.info()["collection_fine_bits"] is None
        plain = old.search_batch(jpegs, k=10)
        assert all(h.fine_distance is None for hits in plain for h in hits)
        rank1_plain = np.mean([hits[0].id == i for hits, i in zip(plain, ids)])
        # the tiny bundle's codes collapse: digest order rarely puts the original first
        assert rank1_plain < rank1_fine, (rank1_plain, rank1_fine)
        # a query with no near-duplicate gets the same distances: only the order inside ties
        # differs (a near-duplicate, or the ratio test's leader, moves ahead whatever its
        # distance, which leaves the distances out of order)
        alike = [(a, b) for a, b in zip(plain, copies) if all(h.fine_distance > near for h in b)
                 and [h.distance for h in b] == sorted(h.distance for h in b)]
        assert alike and all([h.distance for h in a] == [h.distance for h in b] for a, b in alike)
        with pytest.raises(CollectionMismatchError):
            old.search(jpegs[0], mode="appearance")
        # an old collection takes new writes as before (fine codes are not written there)
        assert old.add_images([chosen[0][0]], ids=["again"]) == 1
        assert old.search(chosen[0][0], k=2)[0].fine_distance is None


def test_appearance_mode_ranks_by_the_fine_code_alone(filled, chosen, jpegs):
    r = filled
    ids = [i for _, _, i in chosen]
    db_fine = r.encoder.encode_fine([p for p, _, _ in chosen])
    q = r.encoder.encode_fine(jpegs[:10])
    hits = r.search_batch(jpegs[:10], k=8, mode="appearance")
    order = tie_order(ids)
    for row, got in enumerate(hits):
        d = hamming_distances(q[row:row + 1], db_fine[order])[0]
        want = [ids[order[j]] for j in np.argsort(d, kind="stable")[:8]]
        assert [h.id for h in got] == want
        assert all(h.distance == h.fine_distance for h in got)
    assert np.mean([got[0].id == i for got, i in zip(hits, ids)]) >= 0.8
    rad = hits[0][0].fine_distance + 2  # a radius holding the nearest few (the code's length varies)
    one = r.search(jpegs[0], k=60, radius=rad, mode="appearance")
    assert one and all(h.distance <= rad for h in one) and len(one) < 60
    within = r.range_search(jpegs[0], rad, mode="appearance")
    assert [h.id for h in within] == [h.id for h in one]


def test_edge_codes_with_both_parts_equal_the_image_search(filled, chosen, jpegs):
    r = filled
    both = r.encoder.encode_both(jpegs[:5])
    assert r.search_codes(both.codes, k=10, fine=both.fine) == r.search_batch(jpegs[:5], k=10)
    assert (r.search_codes(both.codes, k=10, fine=both.fine, mode="appearance")
            == r.search_batch(jpegs[:5], k=10, mode="appearance"))
    one = r.search_codes(both.codes[0].tobytes(), k=10, fine=both.fine[0].tobytes())[0]
    assert one == r.search(jpegs[0], k=10)
    # without the fine part: the same distances, ties in digest order, no fine distance
    plain = r.search_codes(both.codes, k=10)
    assert all(h.fine_distance is None for hits in plain for h in hits)
    with pytest.raises(InvalidInputError, match="fine"):
        r.search_codes(both.codes, mode="appearance")
    with pytest.raises(InvalidInputError, match="2 codes but 1 fine"):
        r.search_codes(both.codes[:2], fine=both.fine[:1])


def test_bad_mode_is_one_clear_line(filled, chosen):
    with pytest.raises(InvalidInputError, match="mode must be one of default, appearance"):
        filled.search(chosen[0][0], mode="visual")
    with pytest.raises(InvalidInputError):
        filled.search_batch([chosen[0][0]], mode=None)


def test_a_radius_longer_than_its_code_is_one_clear_line(filled, chosen):
    # as the service refuses it (tests/test_serve_api.py): every item would match
    bits, fine = filled.bundle.bits, filled.bundle.fine_bits
    img = chosen[0][0]
    for call, longest, what in (
            (lambda r: filled.search(img, radius=r), bits, "code"),
            (lambda r: filled.search(img, radius=r, mode="appearance"), fine, "fine-code"),
            (lambda r: filled.range_search(img, r), bits, "code"),
            (lambda r: filled.duplicates(radius=r), fine, "fine-code")):
        with pytest.raises(InvalidInputError) as err:
            call(longest + 1)
        assert str(err.value) == (f"radius must be between 0 and {longest} (the {what} "
                                  f"length), got {longest + 1}")
        call(longest)  # the whole code is a radius


def test_writes_carry_fine_codes_and_duplicates_are_found(tiny, chosen, tmp_path):
    uri = str(tmp_path / "dup.db")
    paths = [p for p, _, _ in chosen[:12]]
    with Retriever(tiny, uri=uri, collection="dups") as r:
        r.add_images(paths, ids=[f"img{i}" for i in range(12)])
        # an exact copy stored under two more ids, through add_images and add_codes
        r.add_images([paths[3]], ids=["copy-a"])
        both = r.encoder.encode_both([paths[3]])
        assert r.add_codes(both.codes, ["copy-b"], fine=both.fine) == 1
        with pytest.raises(InvalidInputError):  # a collection with fine codes needs them
            r.add_codes(both.codes, ["copy-c"])
        groups = r.duplicates(radius=0)
        assert ["copy-a", "copy-b", "img3"] in groups
        assert all(len(g) >= 2 and g == sorted(g) for g in groups)
        assert r.count() == 14
        hits = r.search(paths[3], k=3, mode="appearance")
        assert {h.id for h in hits} == {"img3", "copy-a", "copy-b"}
        assert all(h.distance == 0 for h in hits)


def _small_archive(sample_dir: Path, root: Path) -> Path:
    """15 real scenes: 5 of each of three classes, one folder per class."""
    for cls in ("Forest", "River", "Highway"):
        (root / cls).mkdir(parents=True)
        for f in sorted((sample_dir / cls).glob("*.jpg"))[:5]:
            shutil.copy(f, root / cls / f.name)
    return root


def _appearance_hits(r: Retriever, archive: Path) -> list[list[tuple[str, int, int | None]]]:
    queries = sorted(archive.rglob("*.jpg"))[::4]
    return [[(h.id, h.distance, h.fine_distance) for h in hits]
            for hits in r.search_batch(queries, k=15, mode="appearance")]


def test_index_writes_fine_codes(tiny, sample_dir, tmp_path):
    archive = _small_archive(sample_dir, tmp_path / "archive")
    with Retriever(tiny, uri=str(tmp_path / "idx.db"), collection="idx") as r:
        summary = r.index(archive, label_from="parent")
        assert summary.indexed == 15 and summary.ok
        query = archive / "River" / sorted(p.name for p in (archive / "River").iterdir())[2]
        hits = r.search(query, k=15, mode="appearance")
        assert hits[0].id == f"River/{query.name}" and hits[0].distance == 0
        assert r.search(query, k=5)[0].fine_distance == 0
        local = _appearance_hits(r, archive)
    # on Ray (actors encode both codes in one run): the same fine codes stored
    pytest.importorskip("ray")
    from rsir_sdk.options import RayOptions

    with Retriever(tiny, uri=str(tmp_path / "ray.db"), collection="idx") as r:
        summary = r.index(archive, label_from="parent", engine="ray", workers=1,
                          ray=RayOptions(threads_per_worker=1))
        assert summary.indexed == 15 and summary.ok
        assert _appearance_hits(r, archive) == local


@pytest.mark.server
def test_bulk_load_writes_fine_codes_on_the_server(tiny, sample_dir, server_uri, tmp_path):
    archive = _small_archive(sample_dir, tmp_path / "archive")
    with Retriever(tiny, uri=str(tmp_path / "idx.db"), collection="idx") as r:
        r.index(archive, label_from="parent")
        local = _appearance_hits(r, archive)
    with Retriever(tiny, uri=server_uri, collection="fine_bulk") as r:
        summary = r.index(archive, label_from="parent", bulk_dir=str(tmp_path / "stage"))
        assert summary.ok and summary.bulk is not None and summary.indexed == 15
        assert r.store.fine_bits == r.bundle.fine_bits
        assert _appearance_hits(r, archive) == local
        r.store.drop()


def test_add_learned_codes_writes_the_bundles_fine_codes(tiny, tmp_path):
    b = Bundle.load(tiny)
    db = b.load_database()
    assert db.fine is not None and db.fine.shape == (len(db), b.fine_bits // 8)
    assert b.manifest["database"]["fine_bits"] == b.fine_bits
    with Retriever(b, uri=str(tmp_path / "learned.db"), collection="learned") as r:
        assert r.add_learned_codes() == len(db)
        root = Path(b.archive_root)
        some = [str(root / p) for p in db.paths[::40]]
        # the exported fine codes are what the ONNX encoder gives for those images
        agree = (np.unpackbits(r.encoder.encode_fine(some), axis=1)
                 == np.unpackbits(db.fine[::40], axis=1)).mean()
        assert agree > 0.99, agree
        for path, want in zip(some, db.ids[::40]):
            assert r.search(path, k=3, mode="appearance")[0].id == want


def test_old_bundle_database_without_fine_codes_is_encoded(tiny, tmp_path):
    """A bundle exported before database fine codes: add_learned_codes encodes its images."""
    old = tmp_path / "old-bundle"
    shutil.copytree(tiny, old)
    with np.load(old / "database.npz") as npz:
        arrays = {k: npz[k] for k in npz.files if k != "fine"}
    np.savez(old / "database.npz", **arrays)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["database"].pop("fine_bits")
    manifest["database"]["sha256"] = file_sha256(old / "database.npz")
    (old / "manifest.json").write_text(json.dumps(manifest))
    fresh = Bundle.load(tiny).load_database()
    assert Bundle.load(old).load_database().fine is None
    with Retriever(old, uri=str(tmp_path / "old.db"), collection="learned") as r:
        assert r.add_learned_codes() == len(fresh)
        root = Path(r.bundle.archive_root)
        path = str(root / fresh.paths[7])
        assert r.search(path, k=2, mode="appearance")[0].id == fresh.ids[7]
    # moved away from its archive, it says what to do, and writes nothing
    manifest["archive"] = {"root": str(tmp_path / "nowhere"), "name": "x", "fingerprint": ""}
    (old / "manifest.json").write_text(json.dumps(manifest))
    with Retriever(old, uri=str(tmp_path / "old2.db"), collection="learned") as r:
        with pytest.raises(BundleError, match="no fine codes"):
            r.add_learned_codes()
        assert not r.store.exists or r.count() == 0


def test_bundle_without_fine_code_keeps_working(rp_bundle, sample_images, db_uri):
    paths = [p for p, _ in sample_images[:20]]
    with Retriever(rp_bundle[0], uri=db_uri, collection="plain") as r:
        assert not r.fine_ranking and r.info()["fine_bits"] is None
        r.add_images(paths, ids=[str(i) for i in range(20)])
        hits = r.search(paths[4], k=5)
        assert hits[0].id == "4" and all(h.fine_distance is None for h in hits)
        with pytest.raises(InvalidInputError, match="appearance.*fine code"):
            r.search(paths[4], mode="appearance")
        with pytest.raises(InvalidInputError, match="no fine code"):
            r.search_codes(r.encoder.encode(paths[:1]), fine=np.zeros((1, 16), np.uint8))
        with pytest.raises(InvalidInputError):
            r.duplicates()


def test_metrics_rank_ties_by_the_fine_code():
    q = pack_codes(np.zeros((1, 8), int))
    db = pack_codes(np.zeros((3, 8), int))  # three items tied at distance 0
    labels, ids = ["a", "b", "b"], ["x", "y", "z"]
    q_fine = pack_codes(np.zeros((1, 16), int))
    db_fine = pack_codes(np.array([[1] * 16, [1] * 8 + [0] * 8, [0] * 16]))  # far, mid, near
    # by the fine code: z (b), y (b), x (a): the "a" item comes last
    got = metrics.mean_average_precision(q, ["a"], db, labels, db_ids=ids, fine=(q_fine, db_fine))
    assert got == pytest.approx(1 / 3)
    assert metrics.precision_at_k(q, ["b"], db, labels, 2, fine=(q_fine, db_fine)) == 1.0
    with pytest.raises(ValueError, match="expected"):
        metrics.mean_average_precision(q, ["a"], db, labels, ties="expected",
                                       fine=(q_fine, db_fine))
    with pytest.raises(ValueError, match="fine codes"):
        metrics.mean_average_precision(q, ["a"], db, labels, fine=(q_fine, db_fine[:2]))


def test_evaluation_ranks_ties_by_the_fine_code_and_agrees(tiny):
    res = evaluate_bundle(tiny, ks=(5, 10))
    b = Bundle.load(tiny)
    assert res.fine_bits == b.fine_bits and res.database == "learned"
    assert res.agree
    for key, value in res.metrics.items():
        assert value == pytest.approx(res.reference[key], abs=1e-12), key



def test_int8_bundle_keeps_the_fine_codes_ranking(tiny, sample_dir, tmp_path):
    """``rsir quantize`` copies the database fine codes; the int8 encoder's fine codes (its
    fine head stays in float) rank the database images' JPEG copies as the fp32 bundle does."""
    from rsir_train.quantize import QuantizeOptions, quantize_bundle

    quantize_bundle(tiny, sample_dir, tmp_path / "int8", QuantizeOptions(count=64, check=20))
    parent, child = Bundle.load(tiny), Bundle.load(tmp_path / "int8")
    db = parent.load_database()
    assert child.fine_bits == parent.fine_bits
    assert np.array_equal(child.load_database().fine, db.fine)
    root = Path(parent.archive_root)
    queries = []
    for rel in db.paths[::8]:
        target = tmp_path / f"{Path(rel).stem}_q70.jpg"
        Image.open(root / rel).convert("RGB").save(target, quality=70)
        queries.append(target)
    rank1 = {}
    for name, bundle in (("fp32", parent), ("int8", child)):
        with Retriever(bundle, uri=str(tmp_path / f"{name}.db"), collection=name) as r:
            assert r.add_learned_codes() == len(db)
            hits = r.search_batch(queries, k=5, mode="appearance")
            rank1[name] = np.mean([h[0].id == i for h, i in zip(hits, db.ids[::8])])
            assert all(h[0].fine_distance is not None for h in r.search_batch(queries[:3], k=3))
    assert rank1["int8"] >= 0.8 and rank1["int8"] >= rank1["fp32"] - 0.1, rank1
