"""Retriever end to end: real bundle, real onnxruntime, real Milvus Lite file, real images."""

import numpy as np
import pytest
from onnx_models import build_random_projection_bundle

from rsir_sdk import Retriever
from rsir_sdk.errors import CodeLengthError, CollectionMismatchError, ImageLoadError


def test_add_search_reopen_filter_delete(rp_bundle, sample_images, db_uri):
    paths = [p for p, _ in sample_images]
    labels = [l for _, l in sample_images]
    ids = [f"{l}/{p.name}" for p, l in sample_images]
    meta = [{"n": i, "half": "a" if i < 100 else "b"} for i in range(len(paths))]
    with Retriever(rp_bundle[0], uri=db_uri, collection="scenes") as r:
        assert r.add_images(paths, ids=ids, labels=labels, metadata=meta) == len(paths)
        assert r.count() == len(paths)
        hits = r.search(paths[5], k=5)
        assert hits[0].id == ids[5] and hits[0].distance == 0 and hits[0].label == labels[5]
        assert hits[0].path == str(paths[5]) and hits[0].metadata == meta[5]
        assert [h.distance for h in hits] == sorted(h.distance for h in hits)
        first = r.search_batch(paths[:10], k=7)
        label_hits = r.search(paths[5], k=50, filter={"label": "Forest"})
        meta_hits = r.search(paths[5], k=300, filter='metadata["half"] == "b"')
        radius_hits = r.search(paths[5], k=300, radius=10)
    assert all(h.label == "Forest" for h in label_hits) and len(label_hits) == 20
    assert len(meta_hits) == 100 and all(h.metadata["half"] == "b" for h in meta_hits)
    assert all(h.distance <= 10 for h in radius_hits) and radius_hits[0].id == ids[5]

    with Retriever(rp_bundle[0], uri=db_uri, collection="scenes") as again:
        assert again.count() == len(paths)
        assert again.search_batch(paths[:10], k=7) == first
        codes = again.encoder.encode(paths[:10])
        assert again.search_codes(codes, k=7) == first
        assert again.search_codes(codes[0].tobytes(), k=7)[0] == first[0]
        assert again.delete([ids[5], "not-there"]) == 1
        assert again.count() == len(paths) - 1
        assert ids[5] not in {h.id for h in again.search(paths[5], k=20)}


def test_bad_input_changes_nothing(rp_bundle, sample_images, db_uri, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(sample_images[0][0].read_bytes()[:200])
    empty = tmp_path / "zero.jpg"; empty.write_bytes(b"")
    good = [p for p, _ in sample_images[:3]]
    with Retriever(rp_bundle[0], uri=db_uri, collection="c") as r:
        r.add_images(good, ids=["a", "b", "c"])
        for bad in (corrupt, empty):
            with pytest.raises(ImageLoadError, match=bad.name):
                r.add_images(good + [bad], ids=["x", "y", "z", "w"])
            with pytest.raises(ImageLoadError):
                r.search(bad)
        with pytest.raises(CodeLengthError):
            r.add_codes(np.zeros((1, 16), np.uint8), ["q"])
        with pytest.raises(CodeLengthError):
            r.search_codes(np.zeros((1, 4), np.uint8))
        assert r.count() == 3 and {h.id for h in r.search(good[0], k=10)} == {"a", "b", "c"}


def test_other_bundles_are_refused(rp_bundle, tmp_path, db_uri, sample_images):
    with Retriever(rp_bundle[0], uri=db_uri, collection="c") as r:
        r.add_images([sample_images[0][0]], ids=["a"])
    b32 = tmp_path / "b32"
    build_random_projection_bundle(b32, bits=32, size=32, seed=0)
    with pytest.raises(CollectionMismatchError, match="64-bit"):
        Retriever(b32, uri=db_uri, collection="c")
    other = tmp_path / "other64"
    build_random_projection_bundle(other, bits=64, size=32, seed=1)
    with pytest.raises(CollectionMismatchError, match="not comparable"):
        Retriever(other, uri=db_uri, collection="c")
    with Retriever.from_bundle(other, uri=db_uri) as r2:   # its own collection is fine
        assert r2.store.collection.startswith("random_projection_64_")
        assert r2.count() == 0


def test_index_options_reach_the_store_as_one_value(rp_bundle, db_uri, sample_images):
    """``Retriever(index_options=IndexOptions(...))`` is how a new collection's index and search
    parameters are given (the constructor stays within 10 parameters); the store honours them."""
    import inspect

    from rsir_sdk.errors import InvalidInputError, StoreError
    from rsir_sdk.options import IndexOptions

    assert len(inspect.signature(Retriever).parameters) <= 10
    opts = IndexOptions(index_type="bin_flat", search_params={"nprobe": 4})
    assert opts.index_type == "BIN_FLAT"
    with Retriever(rp_bundle[0], uri=db_uri, collection="c", index_options=opts) as r:
        assert r.store.search_params == {"nprobe": 4}
        r.add_images([sample_images[0][0]], ids=["a"])
        assert r.search(sample_images[0][0], k=1)[0].id == "a"
    with pytest.raises(StoreError, match="BIN_FLAT"):  # Milvus Lite has BIN_FLAT only
        Retriever(rp_bundle[0], uri=db_uri, collection="ivf",
                  index_options=IndexOptions(index_type="BIN_IVF_FLAT"))
    with pytest.raises(InvalidInputError, match="IndexOptions"):
        Retriever(rp_bundle[0], uri=db_uri, collection="c", index_options={"index_type": "x"})
    with pytest.raises(InvalidInputError, match="search_params"):
        IndexOptions(search_params=[("nprobe", 4)])
    with pytest.raises(TypeError):  # the old loose keywords are gone: one way to say it
        Retriever(rp_bundle[0], uri=db_uri, collection="c", search_params={"nprobe": 4})
    # url_timeout (the total time to fetch an image URL) reaches the encoder that fetches
    with Retriever(rp_bundle[0], uri=db_uri, collection="c", url_timeout=0.5) as r:
        assert r.encoder.url_timeout == 0.5
    with Retriever(rp_bundle[0], uri=db_uri, collection="c") as r:
        assert r.encoder.url_timeout == 20.0
