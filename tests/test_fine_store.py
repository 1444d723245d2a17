"""The store keeps fine codes and ranks by them (issue 20, items 2 and 4, store side).

Real Milvus Lite files in a temporary folder and the real 2.3.5 server of conftest.py; every
ranking is compared with a numpy brute force of (retrieval distance, fine distance, digest of the
id), the store's documented order.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from rsir_sdk.codes import hamming_distances
from rsir_sdk.errors import (
    CodeLengthError,
    CollectionMismatchError,
    InvalidInputError,
    StoreError,
)
from rsir_sdk.geo import GeoFilter
from rsir_sdk.store import (
    DEFAULT_DUPLICATE_RADIUS,
    MilvusCodeStore,
    describe_collections,
    drop_collection,
    dupes,
    finerank,
    list_collections,
)
from rsir_sdk.store.keys import digest
from testing.store_baseline import collection_names, row_count

N_TIED, N_FREE = 300, 60
#: the near-duplicate radius of 128-bit fine codes (docs/similar.md), written out: the reference
NEAR = 12
#: the ratio test's factor (rsir_sdk.codes.NEAR_RATIO), written out
RATIO = 0.8


def _data(seed: int = 0) -> dict:
    """300 items on 3 retrieval codes (collapsed, as trained codes are) and 60 on random ones;
    random 128-bit fine codes with planted near-duplicates; a point footprint each."""
    rng = np.random.default_rng(seed)
    n = N_TIED + N_FREE
    base = rng.integers(0, 256, (3, 8), dtype=np.uint8)
    codes = np.concatenate([base[np.arange(N_TIED) % 3],
                            rng.integers(0, 256, (N_FREE, 8), dtype=np.uint8)])
    fine = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    flips = np.zeros((n, 16), np.uint8)
    # near-duplicates: 7 <- 4 (2 bits), 10 <- 7 (3 bits): one group of 3, chained; 20 <- 21 (0)
    for dst, src, bits in ((7, 4, 2), (10, 7, 3), (20, 21, 0), (331, 30, 1)):
        fine[dst] = fine[src]
        for b in range(bits):
            flips[dst, b] = 1
    fine ^= flips
    ids = [f"scene/{i:04d}.jpg" for i in range(n)]
    labels = [f"L{i % 3}" if i < N_TIED else "free" for i in range(n)]
    lonlat = rng.uniform(0, 10, (n, 2))
    return {"codes": codes, "fine": fine, "ids": ids, "labels": labels,
            "footprints": [tuple(p) for p in lonlat.tolist()], "lonlat": lonlat}


def brute(data: dict, qc, qf, k: int, *, mode: str = "default", allowed=None,
          radius: int | None = None) -> list[str]:
    """The documented order over the allowed items: near-duplicates (fine d <= 12 of 128, and
    the nearest by fine d when it is below 0.8 x the runner-up's) by (fine d, digest), then the
    rest by (d, fine d, digest); or, appearance, (fine d, digest)."""
    d = hamming_distances(np.asarray(qc)[None], data["codes"])[0] if qc is not None else None
    fd = hamming_distances(np.asarray(qf)[None], data["fine"])[0]
    ids = data["ids"]
    idx = [i for i in range(len(ids)) if allowed is None or ids[i] in allowed]
    if mode == "appearance":
        idx = [i for i in idx if radius is None or fd[i] <= radius]
        idx.sort(key=lambda i: (fd[i], digest(ids[i])))
    else:
        near = {i for i in idx if fd[i] <= NEAR}
        by_fine = sorted(idx, key=lambda i: fd[i])
        if len(by_fine) >= 2 and fd[by_fine[0]] < RATIO * fd[by_fine[1]]:  # the ratio test
            near.add(by_fine[0])
        idx = [i for i in idx if radius is None or d[i] <= radius]
        idx.sort(key=lambda i: (i not in near, d[i] if i not in near else 0, fd[i], digest(ids[i])))
    return [ids[i] for i in idx[:k]]


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    """A Milvus Lite collection keeping 128-bit fine codes, filled with :func:`_data`."""
    data = _data()
    uri = str(tmp_path_factory.mktemp("fine") / "fine.db")
    store = MilvusCodeStore(uri, "scenes", bits=64, fine_bits=128)
    store.upsert(data["ids"], data["codes"], data["labels"], footprints=data["footprints"],
                 fine=data["fine"])
    yield store, data
    store.close()


def _queries(data: dict, rng_seed: int = 1):
    """Query codes of tied items, of free items and a random one; fine codes a few bits off."""
    rng = np.random.default_rng(rng_seed)
    rows = [0, 1, 2, 3, 305, 340]
    qc = np.concatenate([data["codes"][rows], rng.integers(0, 256, (1, 8), dtype=np.uint8)])
    qf = np.concatenate([data["fine"][rows], rng.integers(0, 256, (1, 16), dtype=np.uint8)])
    qf[:, 0] ^= 0b101  # two bits off each
    return qc, qf


@pytest.mark.parametrize("k", [1, 5, 10, 150, 360])
def test_ties_are_ordered_by_the_fine_code(lite, k):
    store, data = lite
    qc, qf = _queries(data)
    got = store.search(qc, k=k, fine=qf)
    lean = store.search_ids(qc, k=k, fine=qf)
    for i in range(len(qc)):
        want = brute(data, qc[i], qf[i], k)
        assert [h.id for h in got[i]] == want
        assert lean[i].ids == want
        d = hamming_distances(qc[i][None], data["codes"])[0]
        fd = hamming_distances(qf[i][None], data["fine"])[0]
        for h in got[i]:
            j = data["ids"].index(h.id)
            assert (h.distance, h.fine_distance) == (d[j], fd[j])
            assert h.label == data["labels"][j] and h.footprint is not None
    # the query's own item (two fine bits off) comes first in its tie group of 100
    assert got[0][0].id == data["ids"][0] and got[0][0].fine_distance == 2


def test_without_fine_the_order_is_todays(lite):
    store, data = lite
    qc, _ = _queries(data)
    got = store.search(qc, k=20)
    for i in range(len(qc)):
        d = hamming_distances(qc[i][None], data["codes"])[0]
        want = sorted(range(len(d)), key=lambda j: (d[j], digest(data["ids"][j])))[:20]
        assert [h.id for h in got[i]] == [data["ids"][j] for j in want]
        assert all(h.fine_distance is None for h in got[i])


def test_a_big_tie_group_is_not_read_whole(lite):
    """k=5 on groups of 100 (> 2k): the fine field under a code filter, no range search of the
    whole group; queries sharing a code share one fine search. Queries whose own code holds
    them (the same files) take one request per code (no main search, no codebook); queries a
    bit away from every code take the main search, the codebook and the fine search."""
    store, data = lite
    rows = np.arange(12)  # 4 queries per collapsed code
    qc, qf = data["codes"][rows], data["fine"][rows] ^ np.uint8(1)
    store.search(qc[:1], k=5, fine=qf[:1])  # the store's shape is counted once (finerank)
    store.search_stats.clear()
    got = store.search(qc, k=5, fine=qf)
    stats = {name: n for name, n in store.search_stats.items() if n}
    assert stats == {"own_code_searches": 3, "near_searches": 1}
    off = qc.copy()
    off[:, 0] ^= 1  # a bit away from the item's code: no item holds it
    store.search_stats.clear()
    got_off = store.search(off, k=5, fine=qf)
    stats = dict(store.search_stats)
    assert stats.get("range_searches", 0) == 0 and stats["searches"] == 1
    assert stats["codebook_searches"] == 1 and stats["fine_searches"] == 3
    assert stats["own_code_searches"] == 3  # tried, found no item on those codes
    for i in range(len(rows)):
        assert [h.id for h in got[i]] == brute(data, qc[i], qf[i], 5)
        assert [h.id for h in got_off[i]] == brute(data, off[i], qf[i], 5)
        assert all(h.distance == 0 for h in got[i]) and all(h.distance == 1 for h in got_off[i])
        if rows[i] not in (4, 7, 10):  # (those three are planted near-duplicates)
            assert got[i][0].id == data["ids"][rows[i]] and got[i][0].fine_distance == 16
            assert got_off[i][0].id == data["ids"][rows[i]]


def test_own_code_group_smaller_than_k_takes_the_main_search(lite):
    """k=150 on groups of 100: the query's own code cannot fill k, so the general path orders
    the group at 0 and the next ones exactly; a filter that leaves fewer than k items on the
    code does the same."""
    store, data = lite
    qc, qf = data["codes"][[0, 1]], data["fine"][[0, 1]]
    label1 = {x for x, lab in zip(data["ids"], data["labels"]) if lab == "L1"}
    # item 0 is L0 (its code holds no L1 item), item 1 is L1: the filter sends only 0 on
    for k, filt, allowed, main in ((5, None, None, False), (150, None, None, True),
                                   (5, {"label": "L1"}, label1, True)):
        store.search_stats.clear()
        got = store.search(qc, k=k, filter=filt, fine=qf)
        for i in range(2):
            assert [h.id for h in got[i]] == brute(data, qc[i], qf[i], k, allowed=allowed)
        assert (store.search_stats.get("searches", 0) > 0) == main, (k, filt)


@pytest.mark.parametrize("bits", [16, 128])
def test_short_and_long_retrieval_codes(tmp_path, bits):
    """Codes up to 64 bits are the mirror's key as an integer, longer ones as hex: both paths
    order the big tie groups exactly."""
    rng = np.random.default_rng(bits)
    base = rng.integers(0, 256, (2, bits // 8), dtype=np.uint8)
    data = {"codes": base[np.arange(300) % 2], "fine": rng.integers(0, 256, (300, 16), np.uint8),
            "ids": [f"x{i}" for i in range(300)]}
    with MilvusCodeStore(str(tmp_path / "b.db"), "b", bits=bits, fine_bits=128) as store:
        store.upsert(data["ids"], data["codes"], fine=data["fine"])
        qf = data["fine"][:4] ^ np.uint8(16)
        got = store.search(data["codes"][:4], k=6, fine=qf)
        assert store.search_stats.get("range_searches", 0) == 0
        assert store.search_stats["own_code_searches"] == 2  # the key of their own codes
        off = data["codes"][:4].copy()
        off[:, -1] ^= 1
        got_off = store.search(off, k=6, fine=qf)
        assert store.search_stats.get("range_searches", 0) == 0
        assert store.search_stats["fine_searches"] == 2  # the codebook's keys at d=1
        for i in range(4):
            assert [h.id for h in got[i]] == brute(data, data["codes"][i], qf[i], 6)
            assert [h.id for h in got_off[i]] == brute(data, off[i], qf[i], 6)
            assert got[i][0].id == data["ids"][i] == got_off[i][0].id


def test_random_short_codes_many_codes_at_each_distance(tmp_path):
    """8-bit retrieval codes: each distance holds many codes and the group at the k-th distance
    spans several of them; every k and radius gives the brute-force order."""
    rng = np.random.default_rng(11)
    n = 500
    data = {"codes": rng.integers(0, 256, (n, 1), dtype=np.uint8),
            "fine": rng.integers(0, 256, (n, 16), dtype=np.uint8), "ids": [f"r{i}" for i in range(n)]}
    with MilvusCodeStore(str(tmp_path / "r.db"), "r", bits=8, fine_bits=128) as store:
        store.upsert(data["ids"], data["codes"], fine=data["fine"])
        qc = rng.integers(0, 256, (12, 1), dtype=np.uint8)
        qf = rng.integers(0, 256, (12, 16), dtype=np.uint8)
        for k, radius in ((1, None), (7, None), (40, None), (100, 3), (333, None), (500, 5)):
            got = store.search_ids(qc, k=k, radius=radius, fine=qf)
            for i in range(len(qc)):
                assert got[i].ids == brute(data, qc[i], qf[i], k, radius=radius), (k, radius, i)
        assert store.search_stats["fine_searches"] >= 1  # the codebook path was taken


def test_many_codes_at_the_kth_distance_fall_back_to_reading_the_group(lite, monkeypatch):
    store, data = lite
    qc, qf = _queries(data)
    monkeypatch.setattr(finerank, "MAX_CODE_KEYS", 0)
    store.search_stats.clear()
    got = store.search(qc, k=5, fine=qf)
    assert store.search_stats.get("range_searches", 0) >= 1
    for i in range(len(qc)):
        assert [h.id for h in got[i]] == brute(data, qc[i], qf[i], 5)


def test_filters_with_fine_ranking(lite):
    store, data = lite
    qc, qf = _queries(data)
    label1 = {x for x, lab in zip(data["ids"], data["labels"]) if lab == "L1"}
    for filt in ({"label": "L1"}, 'label == "L1"'):
        got = store.search(qc, k=8, filter=filt, fine=qf)
        for i in range(len(qc)):
            assert [h.id for h in got[i]] == brute(data, qc[i], qf[i], 8, allowed=label1)
    for geo in (GeoFilter.of(bbox=(2, 2, 7, 6)), GeoFilter.of(near=(5.0, 5.0, 300_000.0))):
        for k in (3, 40):
            got = store.search(qc, k=k, geo=geo, fine=qf)
            for i in range(len(qc)):
                passing = {h.id for h in store.search(qc[i : i + 1], k=400, geo=geo)[0]}
                assert passing and len(passing) < len(data["ids"])
                assert [h.id for h in got[i]] == brute(data, qc[i], qf[i], k, allowed=passing)


def test_near_duplicates_come_first_whatever_their_retrieval_code(lite):
    """Item 331 is item 30's scene (fine code 1 bit off) stored under another retrieval code (as
    AHCL's learned codes or an int8 encoder can store it): searched with item 30's codes it comes
    second, right after item 30, ahead of the 99 items tied with 30 at distance 0, with its own
    retrieval distance; a radius that excludes it, a filter that excludes it, or a place
    filter that keeps it are obeyed; the appearance mode is unchanged."""
    store, data = lite
    qc, qf = data["codes"][[30, 31]], data["fine"][[30, 31]]
    d331 = int(hamming_distances(qc[:1], data["codes"][331:332])[0, 0])
    assert d331 > 0  # a random code: by retrieval distance alone it is far behind the tie group
    for k in (1, 2, 5, 120):
        got = store.search(qc, k=k, fine=qf)
        for i in range(2):
            assert [h.id for h in got[i]] == brute(data, qc[i], qf[i], k)
        assert got[0][0].id == data["ids"][30] and got[0][0].fine_distance == 0
        if k > 1:
            h = got[0][1]
            assert (h.id, h.distance, h.fine_distance, h.label) == (data["ids"][331], d331, 1, "free")
            assert h.footprint is not None
        assert data["ids"][331] not in [h.id for h in got[1]]  # item 31 has no near-duplicate
    lean = store.search_ids(qc[:1], k=3, fine=qf[:1])[0]
    assert lean.ids == brute(data, qc[0], qf[0], 3) and lean.distances[1] == d331
    within = store.search(qc[:1], k=5, fine=qf[:1], radius=d331 - 1)[0]
    assert data["ids"][331] not in [h.id for h in within]
    assert [h.id for h in within] == brute(data, qc[0], qf[0], 5, radius=d331 - 1)
    tied = {x for x, lab in zip(data["ids"], data["labels"]) if lab == "L0"}
    got = store.search(qc[:1], k=5, fine=qf[:1], filter={"label": "L0"})[0]
    assert [h.id for h in got] == brute(data, qc[0], qf[0], 5, allowed=tied)
    lon, lat = data["lonlat"][331]
    geo = GeoFilter.of(near=(float(lon), float(lat), 400_000.0))
    passing = {h.id for h in store.search(qc[:1], k=400, geo=geo)[0]}
    got = store.search(qc[:1], k=4, fine=qf[:1], geo=geo)[0]
    assert data["ids"][331] in passing and [h.id for h in got] == brute(data, qc[0], qf[0], 4,
                                                                        allowed=passing)


def _flipped(fine: np.ndarray, n: int) -> np.ndarray:
    """``fine`` (one packed code) with its first ``n`` bits flipped."""
    bits = np.unpackbits(fine, axis=1)
    bits[0, :n] ^= 1
    return np.packbits(bits, axis=1)


def test_a_clearly_nearest_item_leads_by_the_ratio_test(lite):
    """Item 340 (a free item) is searched for with item 30's retrieval code and a fine code 30 bits off its
    own (past the 12-bit radius: a re-encoded small scene moves that far). Every other item is
    at least 46 bits away, so 340 is clearly the nearest (30 < 0.8 x 46) and comes first,
    ahead of the 99 items tied at retrieval distance 0; at 44 bits off it is not (44 >= 0.8 x
    46 at least) and stays behind them. A label filter that leaves it out is obeyed."""
    store, data = lite
    qc = data["codes"][[30]]
    for off, leads in ((30, True), (44, False)):
        qf = _flipped(data["fine"][[340]], off)
        fd = np.sort(hamming_distances(qf, data["fine"])[0])
        assert fd[0] == off and fd[1] >= 46  # the drawn codes, checked, not assumed
        got = store.search(qc, k=5, fine=qf)[0]
        assert [h.id for h in got] == brute(data, qc[0], qf[0], 5)
        assert (got[0].id == data["ids"][340]) is leads
        if leads:
            assert (got[0].fine_distance, got[0].label) == (off, "free") and got[0].distance > 0
        tied = {x for x, lab in zip(data["ids"], data["labels"]) if lab == "L0"}
        got = store.search(qc, k=5, fine=qf, filter={"label": "L0"})[0]
        assert [h.id for h in got] == brute(data, qc[0], qf[0], 5, allowed=tied)
        assert data["ids"][340] not in [h.id for h in got]


def test_appearance_mode_and_radius(lite):
    store, data = lite
    qc, qf = _queries(data)
    for k in (1, 7, 50):
        got = store.search(None, k=k, fine=qf, mode="appearance")
        for i in range(len(qf)):
            assert [h.id for h in got[i]] == brute(data, None, qf[i], k, mode="appearance")
            assert all(h.distance == h.fine_distance for h in got[i])
    # the planted duplicates are each other's nearest by appearance, whatever their codes
    near = store.search(qc[:1], k=2, fine=data["fine"][[4]], mode="appearance")[0]
    assert [h.id for h in near] == [data["ids"][4], data["ids"][7]]
    assert [h.fine_distance for h in near] == [0, 2]
    # radius: the fine distance in the appearance mode, the retrieval distance by default
    inside = store.range_search(None, 3, fine=data["fine"][[7]], mode="appearance")[0]
    assert sorted(h.id for h in inside) == sorted(data["ids"][j] for j in (4, 7, 10))
    for i in range(len(qc)):
        got = store.search(qc[i : i + 1], k=500, radius=20, fine=qf[i : i + 1])[0]
        assert [h.id for h in got] == brute(data, qc[i], qf[i], 500, radius=20)
        got = store.search(qc[i : i + 1], k=500, radius=60, fine=qf[i : i + 1],
                           mode="appearance")[0]
        assert [h.id for h in got] == brute(data, None, qf[i], 500, mode="appearance", radius=60)
    filtered = store.search(None, k=5, fine=qf, mode="appearance", filter={"label": "free"})
    free = {x for x, lab in zip(data["ids"], data["labels"]) if lab == "free"}
    for i in range(len(qf)):
        assert [h.id for h in filtered[i]] == brute(data, None, qf[i], 5, mode="appearance",
                                                    allowed=free)


def test_bad_search_arguments_are_one_line_errors(lite):
    store, data = lite
    qc, qf = _queries(data)
    with pytest.raises(InvalidInputError, match="mode must be one of"):
        store.search(qc, k=3, fine=qf, mode="looks")
    with pytest.raises(InvalidInputError, match="pass fine="):
        store.search(qc, k=3, mode="appearance")
    with pytest.raises(CodeLengthError):
        store.search(qc, k=3, fine=qf[:, :8])
    with pytest.raises(InvalidInputError, match="7 codes but 2 fine codes"):
        store.search(qc, k=3, fine=qf[:2])


def _groups(data: dict, radius: int, allowed=None) -> list[list[str]]:
    """Near-duplicate groups by numpy: components of the graph of pairs within ``radius``."""
    idx = [i for i, x in enumerate(data["ids"]) if allowed is None or x in allowed]
    d = hamming_distances(data["fine"][idx], data["fine"][idx])
    parent = list(range(len(idx)))

    def root(a):
        while parent[a] != a:
            a = parent[a]
        return a

    for a, b in zip(*np.nonzero(d <= radius)):
        parent[root(int(a))] = root(int(b))
    comps: dict[int, list[str]] = {}
    for a in range(len(idx)):
        comps.setdefault(root(a), []).append(data["ids"][idx[a]])
    return sorted((sorted(g) for g in comps.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))


def test_duplicates_match_a_brute_force(lite):
    store, data = lite
    calls = []
    got = store.duplicates(3, progress=lambda done, total: calls.append((done, total)))
    assert got == _groups(data, 3)
    assert [data["ids"][j] for j in (10, 4, 7)] in [sorted(g) for g in got] or \
        sorted(data["ids"][j] for j in (4, 7, 10)) in got
    assert calls and calls[-1] == (len(data["ids"]), len(data["ids"]))
    assert store.duplicates(0) == [sorted([data["ids"][20], data["ids"][21]])]
    assert store.duplicates() == _groups(data, DEFAULT_DUPLICATE_RADIUS)
    free = {x for x, lab in zip(data["ids"], data["labels"]) if lab == "free"}
    assert store.duplicates(3, filter={"label": "free"}) == _groups(data, 3, free) == []
    box = GeoFilter.of(bbox=(0, 0, 10, 10))
    assert store.duplicates(3, geo=box) == _groups(data, 3)


def test_duplicates_past_the_first_limit_and_at_the_cap(lite, monkeypatch):
    store, data = lite
    monkeypatch.setattr(dupes, "FIRST_LIMIT", 1)  # every query fills it: asked again
    assert store.duplicates(3) == _groups(data, 3)
    monkeypatch.setattr(dupes, "MAX_TOPK", 2)
    with pytest.raises(StoreError, match="lower the radius"):
        store.duplicates(3)


def test_info_reopen_and_listing(lite):
    store, data = lite
    assert store.info()["fine_bits"] == 128 and store.fine_bits == 128
    uri = store.uri
    assert list_collections(uri) == ["scenes"]
    assert [d["collection"] for d in describe_collections(uri)] == ["scenes"]
    with MilvusCodeStore(uri, "scenes", create=False) as again:
        assert again.fine_bits == 128
    with pytest.raises(CollectionMismatchError, match="128-bit fine codes, not 256-bit"):
        MilvusCodeStore(uri, "scenes", fine_bits=256)
    for bad in ("x__fine", "x__codes", "a" * 249):
        with pytest.raises(InvalidInputError):
            MilvusCodeStore(uri, bad, bits=64)


def test_writes_are_checked_and_reach_both_companions(tmp_path):
    data = _data(3)
    uri = str(tmp_path / "w.db")
    with MilvusCodeStore(uri, "w", bits=64) as store:
        # the first write's fine codes make a collection that keeps them
        store.upsert(data["ids"][:50], data["codes"][:50], fine=data["fine"][:50])
        assert store.fine_bits == 128
        with pytest.raises(InvalidInputError, match="keeps 128-bit fine codes"):
            store.upsert(data["ids"][50:60], data["codes"][50:60])
        with pytest.raises(CodeLengthError):
            store.upsert(data["ids"][50:60], data["codes"][50:60], fine=data["fine"][50:60, :8])
        with pytest.raises(InvalidInputError, match="10 items but 9 fine codes"):
            store.insert(data["ids"][50:60], data["codes"][50:60], fine=data["fine"][50:59])
        assert store.count() == 50 and row_count(store, "w__fine") == 50
        store.insert(data["ids"][50:80], data["codes"][50:80], fine=data["fine"][50:80])
        out = store.bulk_insert(data["ids"][70:100], data["codes"][70:100],
                                staging_dir=tmp_path / "staging", fine=data["fine"][70:100])
        assert out["skipped"] == 10 and out["written"] == 20
        store.upsert(data["ids"][:10], data["codes"][:10], fine=data["fine"][:10])  # again
        assert store.count() == 100 and row_count(store, "w__fine") == 100
        distinct = len(np.unique(data["codes"][:100], axis=0))
        assert row_count(store, "w__codes") == distinct
        # the mirror rows are the ones searched: exact order over what was written
        sub = {k: v[:100] if hasattr(v, "__len__") else v for k, v in data.items()}
        got = store.search(data["codes"][:3], k=30, fine=data["fine"][:3])
        for i in range(3):
            assert [h.id for h in got[i]] == brute(sub, data["codes"][i], data["fine"][i], 30)
        assert store.delete(data["ids"][:40] + ["absent"]) == 40
        assert store.count() == 60 and row_count(store, "w__fine") == 60
        got = store.search(None, k=5, fine=data["fine"][:1], mode="appearance")[0]
        assert data["ids"][0] not in [h.id for h in got]
        assert set(collection_names(store)) == {"w", "w__fine", "w__codes"}
        store.drop()
        assert collection_names(store) == []
    with MilvusCodeStore(uri, "w2", bits=64, fine_bits=128) as store:
        store.upsert(["a"], data["codes"][:1], fine=data["fine"][:1])
    assert drop_collection(uri, "w2") == 1
    assert list_collections(uri) == []


def test_an_old_collection_without_fine_codes(tmp_path):
    """A collection made without fine codes (as every one before issue 20): searched as
    before, the appearance mode and duplicates refused with how to rebuild, fine codes given
    to a write dropped with one warning."""
    data = _data(5)
    uri = str(tmp_path / "old.db")
    with MilvusCodeStore(uri, "old", bits=64) as store:
        store.upsert(data["ids"], data["codes"])
    with MilvusCodeStore(uri, "old", bits=64, fine_bits=128) as store:
        assert store.fine_bits is None and store.info()["fine_bits"] is None
        qc, qf = _queries(data)
        plain, with_fine = store.search(qc, k=12), store.search(qc, k=12, fine=qf)
        assert [[(h.id, h.distance) for h in r] for r in plain] == \
            [[(h.id, h.distance) for h in r] for r in with_fine]
        assert all(h.fine_distance is None for r in with_fine for h in r)
        for call in (lambda: store.search(qc, k=3, fine=qf, mode="appearance"),
                     lambda: store.duplicates(3)):
            with pytest.raises(CollectionMismatchError, match="keeps no fine codes.*rsir drop old"):
                call()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            store.upsert(["new1"], data["codes"][:1], fine=data["fine"][:1])
            store.upsert(["new2"], data["codes"][:1], fine=data["fine"][:1])
        mine = [w for w in caught if "keeps no fine codes" in str(w.message)]
        assert len(mine) == 1 and store.count() == len(data["ids"]) + 2
        assert collection_names(store) == ["old"]


@pytest.mark.server
def test_fine_ranking_on_a_server(server_uri, tmp_path):
    """The same layout on the 2.3.5 server (one vector field a collection): writes by upsert
    and by bulk import, ties by the fine code through the codebook, the appearance mode,
    duplicates, deletes and drop."""
    data = _data(7)
    with MilvusCodeStore(server_uri, "fine_server", bits=64, fine_bits=128) as store:
        store.drop()
        store.upsert(data["ids"][:200], data["codes"][:200], data["labels"][:200],
                     footprints=data["footprints"][:200], fine=data["fine"][:200])
        out = store.bulk_insert(data["ids"][200:], data["codes"][200:], data["labels"][200:],
                                staging_dir=tmp_path / "staging",
                                footprints=data["footprints"][200:], fine=data["fine"][200:])
        assert out["written"] == len(data["ids"]) - 200 and "companions" in out["prepare"]
        assert store.count() == row_count(store, "fine_server__fine") == len(data["ids"])
        qc, qf = _queries(data)
        store.search_stats.clear()
        for k in (5, 40):
            got = store.search(qc, k=k, fine=qf)
            for i in range(len(qc)):
                assert [h.id for h in got[i]] == brute(data, qc[i], qf[i], k)
        assert store.search_stats.get("range_searches", 0) == 0
        assert store.search_stats["codebook_searches"] >= 1
        assert store.search_stats["own_code_searches"] >= 1  # k=5: the tied items' own codes
        near = store.search(data["codes"][[30]], k=3, fine=data["fine"][[30]])[0]
        assert [h.id for h in near] == brute(data, data["codes"][30], data["fine"][30], 3)
        assert near[1].id == data["ids"][331] and near[1].fine_distance == 1  # near-duplicate
        # the ratio test: a free item's fine code 30 bits off, clearly the nearest (checked)
        item, qf30 = next((i, f) for i in range(N_TIED, N_TIED + N_FREE)
                          for f in [_flipped(data["fine"][[i]], 30)]
                          if np.sort(hamming_distances(f, data["fine"])[0])[1] > 38)
        lead = store.search(data["codes"][[30]], k=3, fine=qf30)[0]
        assert [h.id for h in lead] == brute(data, data["codes"][30], qf30[0], 3)
        assert lead[0].id == data["ids"][item] and lead[0].fine_distance == 30
        got = store.search(qc, k=4, fine=qf, filter={"label": "L2"})
        l2 = {x for x, lab in zip(data["ids"], data["labels"]) if lab == "L2"}
        for i in range(len(qc)):
            assert [h.id for h in got[i]] == brute(data, qc[i], qf[i], 4, allowed=l2)
        got = store.search(None, k=6, fine=qf, mode="appearance")
        for i in range(len(qf)):
            assert [h.id for h in got[i]] == brute(data, None, qf[i], 6, mode="appearance")
        assert store.duplicates(3) == _groups(data, 3)
        assert store.delete(data["ids"][:30]) == 30
        assert row_count(store, "fine_server__fine") == len(data["ids"]) - 30
        left = set(data["ids"][30:])
        got = store.search(qc, k=5, fine=qf)  # the own-code path never returns a deleted item
        for i in range(len(qc)):
            assert [h.id for h in got[i]] == brute(data, qc[i], qf[i], 5, allowed=left)
        assert "fine_server__fine" not in list_collections(server_uri)
        store.drop()
        assert not {"fine_server", "fine_server__fine", "fine_server__codes"} & set(
            collection_names(store))
