"""MilvusCodeStore against a real Milvus Lite file, checked against the numpy reference."""

import re

import numpy as np
import pytest

from rsir_sdk.codes import hamming_distances, topk_bruteforce, within_radius
from rsir_sdk.errors import CodeLengthError, CollectionMismatchError, StoreError
from rsir_sdk.store import MAX_TOPK, MilvusCodeStore, build_filter, list_collections, tie_order
from rsir_sdk.store.keys import digest


def tie_heavy_codes(n: int, bits: int, seed: int) -> np.ndarray:
    """Codes with many duplicates and heavy distance ties: sparse bits + a small repeated pool."""
    rng = np.random.default_rng(seed)
    sparse = rng.random((n, bits)) < 0.06                       # most codes near all-zeros
    pool = rng.integers(0, 2, (40, bits)).astype(bool)          # 40 patterns repeated many times
    pick = rng.random(n) < 0.3
    sparse[pick] = pool[rng.integers(0, 40, pick.sum())]
    return np.packbits(sparse, axis=1, bitorder="big")


@pytest.mark.parametrize("bits", [64, 128])
def test_topk_and_range_equal_bruteforce(tmp_path, bits):
    n, nq, k = 20_000, 150, 50
    db = tie_heavy_codes(n, bits, seed=bits)
    rng = np.random.default_rng(7)
    queries = np.concatenate([db[rng.integers(0, n, nq // 2)], tie_heavy_codes(nq - nq // 2, bits, 99)])
    store = MilvusCodeStore(str(tmp_path / "c.db"), "codes", bits=bits)
    assert store.upsert([str(i) for i in range(n)], db) == n
    assert store.count() == n

    ref_idx, ref_dist = topk_bruteforce(queries, db, k)
    full = hamming_distances(queries, db)
    results = store.search(queries, k=k)
    assert len(results) == nq
    ties_at_cutoff = 0
    for qi, hits in enumerate(results):
        got_dist = [h.distance for h in hits]
        assert got_dist == ref_dist[qi].tolist(), f"query {qi}: distances differ"
        assert all(isinstance(d, int) for d in got_dist)
        cutoff = ref_dist[qi, -1]
        got_ids = [int(h.id) for h in hits]
        # below the cut-off distance the ids must be exactly the reference's
        assert {i for i, d in zip(got_ids, got_dist) if d < cutoff} == {
            int(i) for i, d in zip(ref_idx[qi], ref_dist[qi]) if d < cutoff
        }
        # ties (at the cut-off too) go by the digest of the id: the exact list is known
        want = sorted(np.flatnonzero(full[qi] <= cutoff),
                      key=lambda i: (full[qi, i], digest(str(i))))[:k]
        assert [h.id for h in hits] == [str(i) for i in want], f"query {qi}: tie order"
        assert len(set(got_ids)) == k
        ties_at_cutoff += int((full[qi] == cutoff).sum() > list(ref_dist[qi]).count(cutoff))
    assert ties_at_cutoff > nq // 4, "the data should produce heavy ties at the cut-off"

    radius = 3 if bits == 64 else 6
    ref_in = within_radius(queries[:40], db, radius)
    got = store.range_search(queries[:40], radius)
    for qi in range(40):
        assert sorted(int(h.id) for h in got[qi]) == sorted(ref_in[qi].tolist())
        assert all(h.distance <= radius for h in got[qi])
    store.close()


def test_radius_zero_is_exact_matches_and_inclusive(db_uri):
    db = np.array([[0], [1], [3], [0], [255]], dtype=np.uint8)
    with MilvusCodeStore(db_uri, "r", bits=8) as store:
        store.upsert(list("abcde"), db)
        assert sorted(h.id for h in store.range_search(db[:1], 0)[0]) == ["a", "d"]
        assert sorted(h.id for h in store.range_search(db[:1], 1)[0]) == ["a", "b", "d"]
        assert [h.id for h in store.search(db[:1], k=10, radius=2)[0]] == [
            *sorted("ad", key=digest), "b", "c"]  # a and d tie at 0: by digest


def test_numpy_float32_metadata_is_stored_as_written(db_uri):
    """np.float32(0.1) was stored widened (0.10000000149011612): a filter {"f": 0.1} found
    nothing. A float32 is stored by its shortest decimal form."""
    codes = np.zeros((2, 8), np.uint8)
    with MilvusCodeStore(db_uri, "f32", bits=64) as store:
        store.upsert(["a", "b"], codes, metadata=[{"f": np.float32(0.1)},
                                                  {"f": np.array([0.2, 0.7], np.float32)}])
        assert store.get(["a"])[0].metadata == {"f": 0.1}
        assert store.get(["b"])[0].metadata == {"f": [0.2, 0.7]}
        assert store.count({"f": 0.1}) == 1 and store.count({"f": np.float32(0.1)}) == 1
        # a row written before (the widened value) is still found by the float32 filter
        store.upsert(["old"], codes[:1], metadata=[{"f": 0.10000000149011612}])
        assert store.count({"f": np.float32(0.1)}) == 2 and store.count({"f": 0.1}) == 1
        store.upsert(["c"], codes[:1], metadata=[{"f": np.array(np.float32(0.5))}])  # 0-d
        assert store.get(["c"])[0].metadata == {"f": 0.5}


def test_get_delete_count_and_metadata(db_uri):
    codes = np.arange(24, dtype=np.uint8).reshape(3, 8)
    with MilvusCodeStore(db_uri, "g", bits=64) as store:
        store.upsert(["x", "y", "z"], codes, labels=["a", "b", "a"], paths=["p/x", "p/y", "p/z"],
                     metadata=[{"year": 2020}, None, {"year": 2021, "sensor": "S2"}])
        items = store.get(["z", "missing", "x"])
        assert [i.id for i in items] == ["z", "x"]
        assert (items[0].code == codes[2]).all() and items[0].metadata["sensor"] == "S2"
        assert items[1].label == "a" and items[1].path == "p/x"
        assert store.count({"label": "a"}) == 2
        assert store.delete(["x", "nope"]) == 1
        assert store.count() == 2
        assert store.get(["x"]) == []
        # upsert replaces by id rather than duplicating
        store.upsert(["y"], codes[:1], labels=["c"])
        assert store.count() == 2 and store.get(["y"])[0].label == "c"


def test_bad_writes_change_nothing(db_uri):
    with MilvusCodeStore(db_uri, "b", bits=64) as store:
        store.upsert(["keep"], np.zeros((1, 8), np.uint8))
        with pytest.raises(CodeLengthError):
            store.upsert(["a", "b"], np.zeros((2, 16), np.uint8))
        with pytest.raises(ValueError, match="unique"):
            store.upsert(["a", "a"], np.zeros((2, 8), np.uint8))
        with pytest.raises(ValueError, match="2 ids but 3 codes"):
            store.upsert(["a", "b"], np.zeros((3, 8), np.uint8))
        with pytest.raises(ValueError, match="JSON"):
            store.upsert(["a", "b"], np.zeros((2, 8), np.uint8), metadata=[{}, {"x": object()}])
        with pytest.raises(CodeLengthError):
            store.search(np.zeros((1, 4), np.uint8), k=3)
        with pytest.raises(ValueError, match="k must be"):
            store.search(np.zeros((1, 8), np.uint8), k=20000)
        assert store.count() == 1


def test_reopen_checks_bits_and_encoder(db_uri):
    enc = {"encoder_id": "aaaa", "bits": 64, "method": "ahcl"}
    with MilvusCodeStore(db_uri, "e", bits=64, encoder=enc) as store:
        store.upsert(["1"], np.ones((1, 8), np.uint8), encoder=enc)
        with pytest.raises(CollectionMismatchError, match="encoder"):
            store.upsert(["2"], np.ones((1, 8), np.uint8), encoder={**enc, "encoder_id": "bbbb"})
    with pytest.raises(CollectionMismatchError, match="64-bit"):
        MilvusCodeStore(db_uri, "e", bits=32)
    with pytest.raises(CollectionMismatchError, match="encoder"):
        MilvusCodeStore(db_uri, "e", bits=64, encoder={**enc, "encoder_id": "cccc"})
    with MilvusCodeStore(db_uri, "e") as again:  # bits and encoder read from the collection
        assert again.bits == 64 and again.encoder == enc and again.count() == 1
    assert list_collections(db_uri) == ["e"]


def test_create_needs_bits_and_lite_rejects_other_indexes(db_uri, tmp_path):
    with pytest.raises(CodeLengthError, match="bits="):
        MilvusCodeStore(db_uri, "new")
    with pytest.raises(StoreError, match="BIN_FLAT"):
        MilvusCodeStore(db_uri, "ivf", bits=64, index_type="BIN_IVF_FLAT")
    with MilvusCodeStore(db_uri, "made", bits=64) as store:   # an existing one: refused alike
        store.upsert(["a"], np.zeros((1, 8), np.uint8))
    with pytest.raises(StoreError, match="only the BIN_FLAT index"):
        MilvusCodeStore(db_uri, "made", index_type="BIN_IVF_FLAT")
    with pytest.raises(StoreError, match="does not exist"):
        MilvusCodeStore(str(tmp_path / "nope" / "x.db"), "c", bits=64)


def test_filters(db_uri):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (30, 8), dtype=np.uint8)
    labels = ["forest" if i % 3 == 0 else "river" for i in range(30)]
    meta = [{"tile": i % 5, "sensor": "S2" if i < 15 else "L8"} for i in range(30)]
    with MilvusCodeStore(db_uri, "f", bits=64) as store:
        store.upsert([f"i{i}" for i in range(30)], codes, labels=labels, metadata=meta)
        hits = store.search(codes[:2], k=30, filter='label == "forest"')
        assert all(h.label == "forest" for hs in hits for h in hs) and len(hits[0]) == 10
        hits = store.search(codes[:1], k=30, filter={"sensor": "S2", "tile": [1, 2]})[0]
        expected = {f"i{i}" for i in range(15) if i % 5 in (1, 2)}
        assert {h.id for h in hits} == expected


def test_build_filter_puts_only_digests_in_expressions():
    expr = build_filter({"label": 'a "b"', "path": ["x\n", "y\\"], "year": 2020, "id": "O'Brien"})
    assert '"b"' not in expr and "O'Brien" not in expr and "\n" not in expr
    assert re.fullmatch(r'(label_h|path_h|pk|meta_h\["k[0-9a-f]{32}"\])( == "[0-9a-f]{32}"| in \[.*\])'
                        r'( and .*)?', expr)
    assert build_filter({"year": 2020}) == build_filter({"year": 2020.0})  # same canonical value
    assert build_filter(None) == "" and build_filter({}) == ""
    assert build_filter(' label == "forest" ') == 'label == "forest"'  # expressions pass through


def test_ties_at_the_kth_distance_are_broken_by_digest_not_insertion_order(db_uri):
    """30 equal codes written in a shuffled order over three calls (issue 11: k=5 gave t25..t29);
    tied items come back in the order of their primary keys (digests of the ids)."""
    ties = sorted((f"t{i:02d}" for i in range(30)), key=digest)
    assert ties != sorted(ties)  # the digest order is not the name order
    order = [ties[i] for i in np.random.default_rng(3).permutation(30)]
    near = [f"d{d}_{j}" for d in (1, 2, 3) for j in range(3)]
    near_codes = np.zeros((9, 8), np.uint8)
    for i, name in enumerate(near):  # distance d from the tie code: d low bits cleared
        near_codes[i] = 255
        near_codes[i, 7] = (0xFF << int(name[1])) & 0xFF
    with MilvusCodeStore(db_uri, "ties", bits=64) as store:
        for part in (order[:10], order[10:20], order[20:]):
            store.upsert(part, np.full((len(part), 8), 255, np.uint8))
        store.upsert(near, near_codes)
        q = np.full((1, 8), 255, np.uint8)
        assert [h.id for h in store.search(q, k=5)[0]] == ties[:5]
        assert [h.id for h in store.search(q, k=31)[0]] == ties + ["d1_0"]
        got = store.search(q, k=33)[0]
        assert [(h.distance, h.id) for h in got] == [(0, t) for t in ties] + [(1, f"d1_{j}") for j in range(3)]
        assert [h.id for h in store.search(q, k=2, radius=2, filter={"id": ["d2_1", "d1_2", "d2_0"]})[0]] \
            == ["d1_2", "d2_0"]
        assert [h.id for h in store.search(q, k=3, filter='id in ["t07", "t03", "t20", "d1_0"]')[0]] \
            == sorted(["t03", "t07", "t20"], key=digest)


def test_tie_order_does_not_follow_the_folder_layout(db_uri):
    """An archive listed class by class, every code equal: the tie group is not handed to the
    class whose name sorts first, and tie_order gives the store's order in memory."""
    ids = [f"{cls}/{cls}_{j:03d}.jpg" for cls in ("Airport", "Beach", "Forest", "River") for j in range(25)]
    with MilvusCodeStore(db_uri, "layout", bits=64) as store:
        store.upsert(ids, np.zeros((len(ids), 8), np.uint8))
        got = [h.id for h in store.search(np.zeros((1, 8), np.uint8), k=len(ids))[0]]
    assert got == [ids[i] for i in tie_order(ids)]
    first20 = [i.split("/")[0] for i in got[:20]]
    assert len(set(first20)) == 4  # all four classes among the first 20, not Airport alone


def test_exact_top_k_past_milvus_topk_cap(db_uri):
    """17,000 identical codes: the tie group is read in pk-prefix buckets past 16,384."""
    from rsir_sdk.store import topk

    n = 17_000
    ids = [f"b{i:05d}" for i in np.random.default_rng(1).permutation(n)]
    with MilvusCodeStore(db_uri, "cap", bits=64) as store:
        store.upsert(ids, np.zeros((n, 8), np.uint8))
        calls = []
        original = topk._all_at

        def counting(*a, **kw):
            calls.append(1)
            return original(*a, **kw)

        topk._all_at = counting
        try:
            hits = store.search(np.zeros((1, 8), np.uint8), k=5)[0]
            top = store.search(np.zeros((1, 8), np.uint8), k=MAX_TOPK)[0]
        finally:
            topk._all_at = original
        want = sorted(ids, key=digest)  # the tie rule: primary keys (digests) ascending
        assert [h.id for h in hits] == want[:5]
        assert [h.id for h in top] == want[:MAX_TOPK]
        assert len(calls) == 2 * 16  # 1 capped range search, then 16 pk-prefix buckets, twice
        assert top[-1].label == "" and top[-1].metadata == {}


def test_writes_are_cut_by_bytes_as_well_as_rows(db_uri):
    from rsir_sdk.store import rows

    sizes = [10, 10, 25, 10, 40, 1]
    got = [(start, len(b)) for start, b in rows.batches(list(range(6)), sizes, max_rows=3, max_bytes=30)]
    assert got == [(0, 2), (2, 1), (3, 1), (4, 1), (5, 1)]
    n = 700  # 700 rows of ~60 kB metadata: about 42 MB, over one 32 MiB request
    meta = [{"blob": "x" * 60_000, "i": i} for i in range(n)]
    with MilvusCodeStore(db_uri, "big", bits=64) as store:
        assert store.upsert([f"r{i}" for i in range(n)], np.zeros((n, 8), np.uint8), metadata=meta) == n
        assert store.count() == n and store.get(["r699"])[0].metadata["i"] == 699


def weird_rows(n: int, seed: int = 5):
    """Rows with awkward text: quotes, newlines, NUL (inside and trailing), emoji, long paths."""
    rng = np.random.default_rng(seed)
    odd = ["O'Brien \"x\"", "tab\there", "line\nbreak", "nul\x00inside", "trailing\x00", "é🌍",
           "back\\slash", " "]
    ids = [f"{odd[i % len(odd)]}/{i}" for i in range(n)]
    labels = [odd[(i * 3) % len(odd)] for i in range(n)]
    paths = [f"/data/{odd[(i * 5) % len(odd)]}/{'p' * (i % 300)}.tif" for i in range(n)]
    meta = [{"year": 2015 + i % 8, "k": odd[i % len(odd)], "f": i / 7, "nested": {"a": [i, None]}}
            for i in range(n)]
    codes = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    return ids, codes, labels, paths, meta


def stored_rows(store, ids):
    got = list(store.iter_ids())
    assert len(got) == len(set(got)) == store.count()  # every row once
    return {it.id: (it.code.tobytes(), it.label, it.path, it.metadata) for it in store.get(ids)}


def test_insert_equals_upsert_and_ids_only_search_equals_search(db_uri):
    ids, codes, labels, paths, meta = weird_rows(3000)
    with MilvusCodeStore(db_uri, "up", bits=64) as a, MilvusCodeStore(db_uri, "ins", bits=64) as b:
        assert a.upsert(ids, codes, labels, paths, meta, batch_size=700) == 3000
        assert b.insert(ids[:1000], codes[:1000], labels[:1000], paths[:1000], meta[:1000]) == 1000
        assert b.insert(ids[1000:], codes[1000:], labels[1000:], paths[1000:], meta[1000:],
                        batch_size=512) == 2000
        want = stored_rows(a, ids)
        assert stored_rows(b, ids) == want and len(want) == 3000
        assert want[ids[4]][0] == codes[4].tobytes() and want[ids[4]][3] == meta[4]
        q = np.concatenate([codes[:20], codes[:20] ^ 1])
        full, lean = b.search(q, k=25), b.search_ids(q, k=25)
        assert [[h.id for h in row] for row in full] == [row.ids for row in lean]
        assert [[h.distance for h in row] for row in full] == [row.distances.tolist() for row in lean]
        assert lean[0].distances.dtype == np.int32
        loose = b.search_ids(q, k=25, exact_ties=False)  # one request: same distances
        assert [row.distances.tolist() for row in loose] == [row.distances.tolist() for row in lean]
        only = b.search(q[:3], k=5, fields=["label"])
        assert [h.label for h in only[0]] == [h.label for h in full[0][:5]]
        assert only[0][0].path == "" and only[0][0].metadata == {}
        with pytest.raises(ValueError, match="fields"):
            b.search(q[:1], k=5, fields=["code"])
        # Milvus Lite: nothing to prepare, one index
        assert b.prepare_for_search() == {}
        assert b.index_info()["index_type"] == "BIN_FLAT"
        # a bulk load on Lite writes with inserts, and skips ids present
        out = b.bulk_insert(ids, codes, labels, paths, meta, staging_dir=db_uri + ".staging")
        assert out["skipped"] == 3000 and out["written"] == 0 and b.count() == 3000


def test_hits_and_items_write_themselves_as_json(db_uri):
    """A Hit or StoredItem to JSON: ``asdict`` kept the code as an ndarray (json refused it)."""
    import json

    from rsir_sdk.hits import hit_from_json, item_from_json

    codes = np.arange(16, dtype=np.uint8).reshape(2, 8)
    with MilvusCodeStore(db_uri, "js", bits=64) as store:
        store.upsert(["a", "b"], codes, labels=["x", "y"], metadata=[{"n": 1}, None],
                     footprints=[(1.0, 2.0, 3.0, 4.0), None], times=["2021-06-01", None])
        item = store.get(["a"])[0]
        hit = store.search(codes[1], k=2)[0][0]
    assert item_from_json(json.loads(json.dumps(item.to_json()))) == item
    assert hit_from_json(json.loads(json.dumps(hit.to_json()))) == hit
