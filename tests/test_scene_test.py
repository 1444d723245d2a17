"""The same-scene test on weighted parts of the fine code (``--fine-code layout``, issue 20).

A collection made with a :class:`~rsir_sdk.codes.SceneTest` records it, keeps ``fine_hex`` in
its mirror and decides "the same scene" on the weighted parts of the query's 10 nearest items
by fine code. Real Milvus Lite files and the real 2.3.5 server of conftest.py; every ranking is
compared with a brute force written out here (not the library's reference).
"""

from __future__ import annotations

import numpy as np
import pytest

from rsir_sdk.codes import SceneTest, fine_ranking_key, hamming_distances, scene_leader
from rsir_sdk.errors import CollectionMismatchError
from rsir_sdk.store import MilvusCodeStore
from rsir_sdk.store.keys import digest
from testing.store_baseline import row_count

#: two tests: bytes 8-15 weighted 3 (bytes 0-7, a "pooled" part, unread), and bytes 0-7 alone
TEST = SceneTest([((0, 8, 0), (8, 16, 3)), ((0, 8, 1),)], [0.8, 0.6])
#: each test as ((first byte, end byte, weight) of the parts it reads, its factor), written
#: out: the reference
TESTS = [([(8, 16, 3)], 0.8), ([(0, 8, 1)], 0.6)]
N = 240


def _data(seed: int = 0) -> dict:
    """240 items on 3 retrieval codes (trained codes collapse), random 128-bit fine codes."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (3, 8), dtype=np.uint8)
    return {"codes": base[np.arange(N) % 3], "fine": rng.integers(0, 256, (N, 16), np.uint8),
            "ids": [f"scene/{i:04d}.png" for i in range(N)],
            "labels": [f"L{i % 3}" for i in range(N)]}


def _copy_of(fine: np.ndarray, first_part_bits: int, second_part_bits: int, seed: int) -> np.ndarray:
    """``fine`` with that many bits flipped in its first part (bytes 0-7) and its second."""
    bits = np.unpackbits(fine[None], axis=1)
    rng = np.random.default_rng(seed)
    bits[0, rng.choice(64, first_part_bits, replace=False)] ^= 1
    bits[0, 64 + rng.choice(64, second_part_bits, replace=False)] ^= 1
    return np.packbits(bits, axis=1)


def brute(data: dict, qc: np.ndarray, qf: np.ndarray, k: int, test: bool) -> list[str]:
    """Near-duplicates (fine d <= 12) and the scene leaders first, then (d, fine d, digest). A
    leader (``test``): per test of :data:`TESTS`, among the 10 nearest by (fine d, digest), the
    unique least weighted part distance when below 0.8 x the next; else the nearest by fine d
    when below 0.8 x the runner-up's."""
    ids = data["ids"]
    d = hamming_distances(qc[None], data["codes"])[0]
    fd = hamming_distances(qf[None], data["fine"])[0]
    by_fine = sorted(range(N), key=lambda i: (fd[i], digest(ids[i])))
    near = {i for i in range(N) if fd[i] <= 12}
    if test:
        cands = by_fine[:10]
        for parts, ratio in TESTS:
            td = {i: sum(w * int(hamming_distances(qf[None, a:b], data["fine"][[i], a:b])[0, 0])
                         for a, b, w in parts) for i in cands}
            best = sorted(cands, key=lambda i: td[i])
            if td[best[0]] < ratio * td[best[1]]:
                near.add(best[0])
    elif fd[by_fine[0]] < 0.8 * fd[by_fine[1]]:
        near.add(by_fine[0])
    order = sorted(range(N), key=lambda i: (i not in near, 0 if i in near else d[i], fd[i],
                                            digest(ids[i])))
    return [ids[i] for i in order[:k]]


def _case(data: dict) -> tuple[np.ndarray, np.ndarray, int]:
    """A query for item 100 under another retrieval code: its first part moved 40 bits (the
    whole code is not clearly nearest), its second 3 bits (the second part is)."""
    qf = _copy_of(data["fine"][100], 40, 3, seed=1)[0]
    return data["codes"][101], qf, 100


def test_recorded_forms_read_back():
    """A collection records ``to_json``; those made before ratios (a list of tests) or before
    several tests (one test's parts) read back as the same tests with the default factor."""
    assert SceneTest.from_json(TEST.to_json()) == TEST
    old = SceneTest(TEST.tests)
    assert SceneTest.from_json([[[8, 16, 3]], [[0, 8, 1]]]) == old
    assert SceneTest.from_json([[8, 16, 3]]) == SceneTest([((8, 16, 3),)])
    for weight in (1.5, True, "1"):
        with pytest.raises(ValueError, match="integer weights"):
            SceneTest.from_parts([{"bits": 8, "test_weight": weight}])


def test_the_scene_leader_and_the_whole_code_test_differ_on_the_planted_copy():
    data = _data()
    qc, qf, item = _case(data)
    fd = hamming_distances(qf[None], data["fine"])[0]
    second = np.sort(fd)[1]
    assert fd[item] == fd.min() and fd[item] >= 0.8 * second  # the whole-code test stays silent
    td = TEST.distances(qf[None], data["fine"])[:, 0]
    assert td[0, item] == 9 and np.sort(td[0])[1] > 9 / 0.8  # the first test fires
    in_tie = np.argsort([digest(i) for i in data["ids"]], kind="stable")
    lead = TEST.leader(td[:, in_tie], fd[in_tie])
    assert in_tie[lead].tolist() == [item]
    assert not scene_leader(td[:, in_tie], fd[in_tie], ratios=(0.05, 0.05)).any()  # stricter
    key = fine_ranking_key(np.zeros(N), fd[in_tie], 128, TEST.leader(td[:, in_tie], fd[in_tie]))
    assert in_tie[np.argsort(key, kind="stable")[0]] == item
    # outside the 10 nearest by fine code the test cannot see it
    assert not scene_leader(td[:, in_tie], fd[in_tie], candidates=0).any()
    # the second test alone: item 50's first part 2 bits off, its second 40 (a turned copy)
    turned = _copy_of(data["fine"][50], 2, 40, seed=4)[0]
    fd = hamming_distances(turned[None], data["fine"])[0]
    assert fd[50] >= 0.8 * np.sort(fd)[1]  # the whole code does not say it
    td = TEST.distances(turned[None], data["fine"])[:, 0]
    assert in_tie[scene_leader(td[1, in_tie], fd[in_tie])].tolist() == [50]
    assert not scene_leader(td[0, in_tie], fd[in_tie]).any()
    assert in_tie[TEST.leader(td[:, in_tie], fd[in_tie])].tolist() == [50]


def _check_store(store: MilvusCodeStore, data: dict, test: bool) -> None:
    qc, qf, item = _case(data)
    got = store.search(qc[None], k=5, fine=qf[None])[0]
    assert [h.id for h in got] == brute(data, qc, qf, 5, test)
    assert (got[0].id == data["ids"][item]) is test
    # an item within the radius (12 bits moved, all in the weighted part: test distance 36)
    # leads, and the scene leader (test distance 9) still joins it
    near = _copy_of(qf, 0, 12, seed=2)[0]
    planted = dict(data, fine=data["fine"].copy())
    planted["fine"][7] = near
    store.upsert([data["ids"][7]], data["codes"][[7]], [data["labels"][7]], fine=near[None])
    hits = store.search(qc[None], k=5, fine=qf[None])[0]
    assert [h.id for h in hits] == brute(planted, qc, qf, 5, test)
    assert hits[0].id == data["ids"][7] and (hits[1].id == data["ids"][item]) is test
    store.upsert([data["ids"][7]], data["codes"][[7]], [data["labels"][7]],
                 fine=data["fine"][[7]])
    if test:  # the leader comes with its retrieval distance and no fine_hex in its metadata
        assert got[0].distance > 0 and got[0].fine_distance == 43 and got[0].metadata == {}
    turned = _copy_of(data["fine"][50], 2, 40, seed=4)[0]  # the second test's case
    got = store.search(qc[None], k=5, fine=turned[None])[0]
    assert [h.id for h in got] == brute(data, qc, turned, 5, test)
    rng = np.random.default_rng(3)
    for row in rng.choice(N, 6, replace=False):  # changed copies of other items, any k
        q = _copy_of(data["fine"][row], int(rng.integers(0, 40)), int(rng.integers(0, 12)), 5)[0]
        for k in (1, 10, 30):
            hits = store.search(data["codes"][row][None], k=k, fine=q[None])[0]
            assert [h.id for h in hits] == brute(data, data["codes"][row], q, k, test)


def test_a_collection_records_its_scene_test_and_ranks_by_it(tmp_path):
    data = _data()
    uri = str(tmp_path / "scene.db")
    with MilvusCodeStore(uri, "layout", bits=64, fine_bits=128, scene_test=TEST) as store:
        store.upsert(data["ids"], data["codes"], data["labels"], fine=data["fine"])
        _check_store(store, data, test=True)
    with MilvusCodeStore(uri, "layout") as store:  # reopened: the test is the recorded one
        assert store.scene_test == TEST and row_count(store, "layout__fine") == N
        assert store.info()["scene_test"] == {"tests": [[[8, 16, 3]], [[0, 8, 1]]],
                                              "ratios": [0.8, 0.6]}  # weight 0: unread
        _check_store(store, data, test=True)
    with MilvusCodeStore(uri, "whole", bits=64, fine_bits=128) as store:  # as before: no test
        store.upsert(data["ids"], data["codes"], data["labels"], fine=data["fine"])
        assert store.scene_test is None and "scene_test" not in store.info()
        _check_store(store, data, test=False)
    # a bundle whose code is tested on parts may not use it: it would rank otherwise
    for name, says in (("whole", "without a same-scene test"), ("layout", "another same-scene")):
        other = None if name == "whole" else SceneTest(TEST.tests, [0.8, 0.7])
        with pytest.raises(CollectionMismatchError, match=says) as err:
            MilvusCodeStore(uri, name, bits=64, fine_bits=128, scene_test=other or TEST)
        assert "\n" not in str(err.value)


@pytest.mark.server
def test_the_scene_test_on_a_server(server_uri, tmp_path):
    """The 2.3.5 server: writes by upsert and by bulk import reach the mirror's ``fine_hex``."""
    data = _data(4)
    with MilvusCodeStore(server_uri, "scene_server", bits=64, fine_bits=128,
                         scene_test=TEST) as store:
        store.drop()
        store.upsert(data["ids"][:100], data["codes"][:100], data["labels"][:100],
                     fine=data["fine"][:100])
        store.bulk_insert(data["ids"][100:], data["codes"][100:], data["labels"][100:],
                          staging_dir=tmp_path / "staging", fine=data["fine"][100:])
        assert store.count() == row_count(store, "scene_server__fine") == N
        _check_store(store, data, test=True)
        store.drop()
