"""Tests of rsir_sdk.metrics: hand-computed cases, tie-breaking, conventions, a reference check."""

from __future__ import annotations

import numpy as np
import pytest

from rsir_sdk.codes import pack_codes
from rsir_sdk.metrics import (
    average_precisions,
    mean_average_precision,
    pr_curve,
    precision_at_k,
    precision_recall_within_radius,
)


def codes_at_distance(*distances: int) -> np.ndarray:
    """8-bit codes whose Hamming distance to the all-zero code is each of ``distances``."""
    return pack_codes(np.array([[1] * d + [0] * (8 - d) for d in distances]))


ZERO = codes_at_distance(0)
ONES = codes_at_distance(8)

# A hand-checkable database. Distances to the all-zero query / to the all-one query:
#   item:    0    1    2    3    4
#   d(0):    2    1    0    3    4
#   d(1):    6    7    8    5    4
#   label:   A    B    A    B    A
DB = codes_at_distance(2, 1, 0, 3, 4)
DB_LABELS = ["A", "B", "A", "B", "A"]
QUERIES = np.concatenate([ZERO, ONES])
QUERY_LABELS = ["A", "B"]


# --------------------------------------------------------------------------- hand-computed


def test_average_precision_by_hand():
    aps = average_precisions(QUERIES, QUERY_LABELS, DB, DB_LABELS)
    # query 0 ("A"): ranking 2(A) 1(B) 0(A) 3(B) 4(A) -> hits at ranks 1, 3, 5
    #   AP = (1/1 + 2/3 + 3/5) / 3 = 2.26667 / 3 = 0.755556
    # query 1 ("B"): ranking 4(A) 3(B) 0(A) 1(B) 2(A) -> hits at ranks 2, 4
    #   AP = (1/2 + 2/4) / 2 = 0.5
    assert aps == pytest.approx([(1 + 2 / 3 + 3 / 5) / 3, 0.5])
    assert mean_average_precision(QUERIES, QUERY_LABELS, DB, DB_LABELS) == pytest.approx(
        ((1 + 2 / 3 + 3 / 5) / 3 + 0.5) / 2  # 0.627778
    )


def test_map_at_k_is_normalised_by_relevant_items_retrieved():
    # k=3: query 0 top 3 = 2(A) 1(B) 0(A): hits at ranks 1, 3 -> (1/1 + 2/3) / 2 = 0.833333
    #      (normalised by 2 retrieved hits, not by R=3 nor by k=3)
    #      query 1 top 3 = 4(A) 3(B) 0(A): one hit at rank 2 -> (1/2) / 1 = 0.5
    aps = average_precisions(QUERIES, QUERY_LABELS, DB, DB_LABELS, topk=3)
    assert aps == pytest.approx([(1 + 2 / 3) / 2, 0.5])
    # k=1: query 0 retrieves 2(A): AP 1; query 1 retrieves 4(A): no hit -> 0, still counted
    assert mean_average_precision(QUERIES, QUERY_LABELS, DB, DB_LABELS, topk=1) == 0.5
    # k beyond the database = the whole ranking = full mAP
    assert mean_average_precision(QUERIES, QUERY_LABELS, DB, DB_LABELS, topk=99) == pytest.approx(
        mean_average_precision(QUERIES, QUERY_LABELS, DB, DB_LABELS)
    )


def test_precision_at_k_by_hand():
    # k=2: query 0 gets 2(A) 1(B) -> 1/2; query 1 gets 4(A) 3(B) -> 1/2
    assert precision_at_k(QUERIES, QUERY_LABELS, DB, DB_LABELS, k=2) == 0.5
    # k=3: query 0 -> 2/3; query 1 -> 1/3; mean 0.5
    assert precision_at_k(QUERIES, QUERY_LABELS, DB, DB_LABELS, k=3) == pytest.approx(0.5)
    # k=10 > 5 items: the denominator is the database size: query 0 3/5, query 1 2/5
    assert precision_at_k(QUERIES, QUERY_LABELS, DB, DB_LABELS, k=10) == pytest.approx(0.5)


def test_radius_is_inclusive():
    q, ql = ZERO, ["A"]  # distances 2 1 0 3 4, labels A B A B A; 3 relevant items
    # r=0: {2(A)} -> P 1/1, R 1/3
    assert precision_recall_within_radius(q, ql, DB, DB_LABELS, 0) == pytest.approx((1, 1 / 3))
    # r=1: {2(A), 1(B)} -> P 1/2, R 1/3
    assert precision_recall_within_radius(q, ql, DB, DB_LABELS, 1) == pytest.approx((1 / 2, 1 / 3))
    # r=2: {2, 1, 0} -> the item at distance exactly 2 is in: P 2/3, R 2/3
    assert precision_recall_within_radius(q, ql, DB, DB_LABELS, 2) == pytest.approx((2 / 3, 2 / 3))
    # r above the bit length: everything -> P 3/5, R 1
    assert precision_recall_within_radius(q, ql, DB, DB_LABELS, 50) == pytest.approx((3 / 5, 1))


def test_empty_retrieval_has_precision_zero():
    # query 1 (all ones) is at distance >= 4 from every item: nothing within radius 3
    p, r = precision_recall_within_radius(ONES, ["B"], DB, DB_LABELS, 3)
    assert (p, r) == (0.0, 0.0)
    # averaged with query 0 at r=3: query 0 gets {2,1,0,3}: P 2/4, R 2/3; query 1 P 0, R 0
    p, r = precision_recall_within_radius(QUERIES, QUERY_LABELS, DB, DB_LABELS, 3)
    assert (p, r) == pytest.approx(((2 / 4 + 0) / 2, (2 / 3 + 0) / 2))


def test_pr_curve_matches_radius_queries():
    curve = pr_curve(QUERIES, QUERY_LABELS, DB, DB_LABELS)
    radius, precision, recall = curve
    assert list(radius) == list(range(9))
    for r in range(9):
        expected = precision_recall_within_radius(QUERIES, QUERY_LABELS, DB, DB_LABELS, r)
        assert (precision[r], recall[r]) == pytest.approx(expected)
    assert np.all(np.diff(recall) >= 0)
    assert recall[-1] == 1.0


def test_query_without_relevant_items_counts_zero():
    # label "C" appears nowhere: AP 0, P@k 0, recall 0; it still counts in the mean
    assert mean_average_precision(ZERO, ["C"], DB, DB_LABELS) == 0.0
    both = mean_average_precision(np.concatenate([ZERO, ZERO]), ["A", "C"], DB, DB_LABELS)
    assert both == pytest.approx((1 + 2 / 3 + 3 / 5) / 3 / 2)


# --------------------------------------------------------------------------- ties and order


def test_ties_are_broken_by_database_index():
    # every item at distance 0: the ranking is the database order
    q = ZERO
    # labels A B A -> hits at ranks 1, 3: AP = (1/1 + 2/3) / 2 = 0.833333
    assert mean_average_precision(q, ["A"], codes_at_distance(0, 0, 0), ["A", "B", "A"]) == (
        pytest.approx((1 + 2 / 3) / 2)
    )
    # the same items reordered B A A -> hits at ranks 2, 3: AP = (1/2 + 2/3) / 2 = 0.583333
    assert mean_average_precision(q, ["A"], codes_at_distance(0, 0, 0), ["B", "A", "A"]) == (
        pytest.approx((1 / 2 + 2 / 3) / 2)
    )
    # the result does not change between calls or with the chunking of queries
    many = np.repeat(q, 7, axis=0)
    aps = average_precisions(many, ["A"] * 7, codes_at_distance(0, 0, 0), ["B", "A", "A"])
    assert np.all(aps == aps[0])


def test_database_order_matters_only_among_ties():
    rng = np.random.default_rng(3)
    query = codes_at_distance(0)
    # 9 items at distinct distances 0..8: any order of the database gives the same AP
    db = codes_at_distance(*range(9))
    labels = rng.integers(0, 2, 9)
    base = mean_average_precision(query, [1], db, labels)
    for _ in range(5):
        perm = rng.permutation(9)
        assert mean_average_precision(query, [1], db[perm], labels[perm]) == base
    # with ties: permuting inside one tie group changes AP exactly as the index rule says
    db = codes_at_distance(1, 1, 2, 2)
    # d: 1 1 2 2, labels 0 1 1 0 -> ranking by (d, index): 0(-) 1(+) 2(+) 3(-)
    #   AP = (1/2 + 2/3) / 2 = 0.583333
    ap = mean_average_precision(query, [1], db, [0, 1, 1, 0])
    assert ap == pytest.approx((1 / 2 + 2 / 3) / 2)
    # swap items 0 and 1 (same distance): ranking 1(+) 0(-) 2(+) 3(-): AP = (1 + 2/3) / 2
    assert mean_average_precision(query, [1], db, [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)


# --------------------------------------------------------------------------- leave-one-out


def test_exclude_self_leave_one_out_by_hand():
    codes = codes_at_distance(0, 1, 3, 8)
    labels = ["A", "A", "B", "B"]
    # pairwise distances: d(0,1)=1 d(0,2)=3 d(0,3)=8 d(1,2)=2 d(1,3)=7 d(2,3)=5
    # item 0 ranks 1(A) 2(B) 3(B)      -> AP 1
    # item 1 ranks 0(A) 2(B) 3(B)      -> AP 1
    # item 2 ranks 1(A) 0(A) 3(B)      -> hit at rank 3: AP 1/3
    # item 3 ranks 2(B) 1(A) 0(A)      -> hit at rank 1: AP 1
    aps = average_precisions(codes, labels, codes, labels, exclude_self=True)
    assert aps == pytest.approx([1, 1, 1 / 3, 1])
    # without exclusion each item finds itself first (d=0): item 2 ranks 2(B) 1(A) 0(A) 3(B)
    #   -> (1/1 + 2/4) / 2 = 0.75
    assert average_precisions(codes, labels, codes, labels)[2] == pytest.approx(0.75)
    # P@1 leave-one-out: items 0, 1, 3 right, item 2 wrong
    assert precision_at_k(codes, labels, codes, labels, 1, exclude_self=True) == 0.75
    # radius 0 leave-one-out retrieves nothing (all codes distinct): precision 0
    assert precision_recall_within_radius(codes, labels, codes, labels, 0, True) == (0.0, 0.0)


def test_exclude_self_with_query_indices():
    codes = codes_at_distance(0, 1, 3, 8)
    labels = ["A", "A", "B", "B"]
    full = average_precisions(codes, labels, codes, labels, exclude_self=True)
    sub = average_precisions(
        codes[[2, 0]], ["B", "A"], codes, labels, exclude_self=True, query_indices=[2, 0]
    )
    assert sub == pytest.approx(full[[2, 0]])


def test_exclude_self_argument_errors():
    codes = codes_at_distance(0, 1, 3, 8)
    labels = ["A", "A", "B", "B"]
    with pytest.raises(ValueError, match="query_indices"):
        mean_average_precision(codes[:2], labels[:2], codes, labels, exclude_self=True)
    with pytest.raises(ValueError, match="only used with exclude_self"):
        mean_average_precision(codes[:2], labels[:2], codes, labels, query_indices=[0, 1])
    with pytest.raises(ValueError, match="same order"):
        mean_average_precision(codes, labels[::-1], codes, labels, exclude_self=True)
    with pytest.raises(ValueError, match="0..3"):
        mean_average_precision(
            codes[:1], ["A"], codes, labels, exclude_self=True, query_indices=[4]
        )


# --------------------------------------------------------------------------- labels


def test_labels_of_any_hashable_type():
    ints = mean_average_precision(QUERIES, [0, 1], DB, [0, 1, 0, 1, 0])
    strs = mean_average_precision(QUERIES, np.array(["A", "B"]), DB, np.array(DB_LABELS))
    tuples = mean_average_precision(QUERIES, [("a", 1), ("b", 2)], DB,
                                    [("a", 1), ("b", 2), ("a", 1), ("b", 2), ("a", 1)])
    assert ints == strs == tuples == pytest.approx(((1 + 2 / 3 + 3 / 5) / 3 + 0.5) / 2)


def test_multi_label_indicator_matrix():
    # classes (x, y): query has x; items: {x}, {y}, {x, y}, {}  at distances 0, 1, 2, 3
    db = codes_at_distance(0, 1, 2, 3)
    db_labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    # relevant (share >= 1 label): items 0, 2 -> ranks 1, 3: AP = (1 + 2/3) / 2
    ap = mean_average_precision(ZERO, np.array([[1, 0]]), db, db_labels)
    assert ap == pytest.approx((1 + 2 / 3) / 2)
    # a query with both labels finds items 0, 1, 2 relevant: AP 1
    assert mean_average_precision(ZERO, np.array([[True, True]]), db, db_labels) == 1.0
    with pytest.raises(ValueError, match="only 0 and 1"):
        mean_average_precision(ZERO, np.array([[2, 0]]), db, db_labels)


def test_input_errors():
    with pytest.raises(ValueError, match="labels"):
        mean_average_precision(QUERIES, ["A"], DB, DB_LABELS)
    with pytest.raises(ValueError, match="topk"):
        mean_average_precision(QUERIES, QUERY_LABELS, DB, DB_LABELS, topk=0)
    with pytest.raises(ValueError, match="radius"):
        precision_recall_within_radius(QUERIES, QUERY_LABELS, DB, DB_LABELS, -1)
    with pytest.raises(ValueError, match="bits"):  # CodeLengthError: 16-bit vs 8-bit codes
        mean_average_precision(np.zeros((1, 2), np.uint8), ["A"], DB, DB_LABELS)
    with pytest.raises(TypeError, match="hashable"):
        mean_average_precision(QUERIES, [["A"], ["B", "C"]], DB, DB_LABELS)


# --------------------------------------------------------------------------- statistical checks


def random_codes(rng, n, bits):
    return np.packbits(rng.integers(0, 2, (n, bits), dtype=np.uint8), axis=1)


def test_perfect_codes_give_map_one():
    rng = np.random.default_rng(0)
    class_codes = random_codes(rng, 4, 32)
    labels = rng.integers(0, 4, 300)
    codes = class_codes[labels]
    assert mean_average_precision(codes[:50], labels[:50], codes, labels) == 1.0
    assert mean_average_precision(codes, labels, codes, labels, topk=20, exclude_self=True) == 1.0
    assert precision_at_k(codes, labels, codes, labels, 10) == 1.0


@pytest.mark.parametrize("proportions", [[0.2] * 5, [0.7, 0.2, 0.1]])
def test_random_codes_give_chance_level(proportions):
    # with random codes AP ~ the fraction of relevant items, so mAP ~ sum_c p_c^2
    rng = np.random.default_rng(1)
    n = 4000
    labels = rng.choice(len(proportions), n, p=proportions)
    codes = random_codes(rng, n, 64)
    chance = sum(p * p for p in proportions)
    got = mean_average_precision(codes[:300], labels[:300], codes, labels, exclude_self=True,
                                 query_indices=np.arange(300))
    assert got == pytest.approx(chance, abs=0.03)


def reference_average_precisions(q_codes, q_labels, db_codes, db_labels, topk=None,
                                 exclude_self=False):
    """Straightforward pure-Python AP: sort by (distance, index), walk the ranking."""
    def hamming(a, b):
        return sum(bin(x ^ y).count("1") for x, y in zip(a.tolist(), b.tolist()))

    out = []
    for i, (qc, ql) in enumerate(zip(q_codes, q_labels)):
        ranking = sorted(
            (hamming(qc, dc), j) for j, dc in enumerate(db_codes) if not (exclude_self and j == i)
        )
        if topk is not None:
            ranking = ranking[:topk]
        hits, total = 0, 0.0
        for rank, (_, j) in enumerate(ranking, start=1):
            if db_labels[j] == ql:
                hits += 1
                total += hits / rank
        out.append(total / hits if hits else 0.0)
    return np.array(out)


@pytest.mark.parametrize("topk", [None, 1, 20])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_matches_pure_python_reference(topk, exclude_self):
    rng = np.random.default_rng(7)
    n = 150
    codes = random_codes(rng, n, 16)  # 16 bits: many ties
    labels = rng.integers(0, 4, n)
    expected = reference_average_precisions(codes, labels, codes, labels, topk, exclude_self)
    got = average_precisions(codes, labels, codes, labels, topk, exclude_self)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_chunking_does_not_change_results(monkeypatch):
    import rsir_sdk.metric_inputs as metric_inputs

    rng = np.random.default_rng(5)
    codes = random_codes(rng, 200, 24)
    labels = rng.integers(0, 3, 200)
    whole = average_precisions(codes, labels, codes, labels, exclude_self=True)
    curve = pr_curve(codes, labels, codes, labels, exclude_self=True)
    monkeypatch.setattr(metric_inputs, "_CHUNK_PAIRS", 7 * 200)  # 7 queries per chunk
    np.testing.assert_array_equal(
        average_precisions(codes, labels, codes, labels, exclude_self=True), whole
    )
    chunked = pr_curve(codes, labels, codes, labels, exclude_self=True)
    np.testing.assert_allclose(chunked.precision, curve.precision)
    np.testing.assert_allclose(chunked.recall, curve.recall)


# --------------------------------------------------------------------------- tie-aware AP


def test_tie_aware_ap_by_hand():
    # all three at distance 0, labels A B A: the 3 orders of {A, A, B} give AP 1 (AAB),
    # (1 + 2/3)/2 (ABA), (1/2 + 2/3)/2 (BAA): the expectation is their mean
    expected = (1 + (1 + 2 / 3) / 2 + (1 / 2 + 2 / 3) / 2) / 3
    db = codes_at_distance(0, 0, 0)
    for labels in (["A", "B", "A"], ["B", "A", "A"], ["A", "A", "B"]):
        assert mean_average_precision(ZERO, ["A"], db, labels, ties="expected") == (
            pytest.approx(expected, abs=1e-12))
    # top-1 of the same: AP@1 is 1 if an A comes first (probability 2/3), else 0
    assert mean_average_precision(ZERO, ["A"], db, ["B", "A", "A"], topk=1, ties="expected") == (
        pytest.approx(2 / 3, abs=1e-12))
    # no ties: the same figure as the index rule
    assert mean_average_precision(QUERIES, QUERY_LABELS, DB, DB_LABELS, ties="expected") == (
        pytest.approx(mean_average_precision(QUERIES, QUERY_LABELS, DB, DB_LABELS), abs=1e-12))
    with pytest.raises(ValueError, match="ties must be one of index, expected"):
        mean_average_precision(ZERO, ["A"], db, ["A"] * 3, ties="random")


@pytest.mark.parametrize("topk", [None, 1, 2, 4])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_tie_aware_ap_is_the_mean_over_every_database_order(topk, exclude_self):
    """Exact, against brute force: the mean of the index-order AP over all n! orders of the
    database equals the tie-aware AP (which no order changes)."""
    import itertools

    rng = np.random.default_rng(11)
    for _ in range(12):
        n = int(rng.integers(3, 7))
        bits = np.zeros((n, 8), dtype=np.uint8)
        bits[:, :2] = rng.integers(0, 2, (n, 2))  # 4 distinct codes at most: heavy ties
        db, labels = pack_codes(bits), rng.integers(0, 3, n)
        q, q_labels = (db, labels) if exclude_self else (db[:2], labels[:2])
        got = mean_average_precision(q, q_labels, db, labels, topk, exclude_self,
                                     ties="expected")
        total, count = 0.0, 0
        for order in map(list, itertools.permutations(range(n))):
            if exclude_self:  # the queries are the database, permuted with it
                total += mean_average_precision(db[order], labels[order], db[order],
                                                labels[order], topk, True)
            else:
                total += mean_average_precision(q, q_labels, db[order], labels[order], topk)
            count += 1
        assert got == pytest.approx(total / count, abs=1e-12)
        perm = rng.permutation(n)
        if not exclude_self:
            assert mean_average_precision(q, q_labels, db[perm], labels[perm], topk,
                                          ties="expected") == pytest.approx(got, abs=1e-12)


def test_tie_aware_ap_at_scale_is_order_free_and_differs_from_the_index_rule():
    rng = np.random.default_rng(4)
    codes = random_codes(rng, 400, 8)  # 8 bits, 400 items: every distance holds many
    labels = rng.integers(0, 4, 400)
    got = average_precisions(codes, labels, codes, labels, 20, True, ties="expected")
    perm = rng.permutation(400)
    permuted = average_precisions(codes[perm], labels[perm], codes[perm], labels[perm], 20, True,
                                  ties="expected")
    np.testing.assert_allclose(permuted, got[perm], atol=1e-12)
    index = average_precisions(codes, labels, codes, labels, 20, True)
    assert not np.allclose(index, got)
    assert np.all((got >= 0) & (got <= 1))


# --------------------------------------------------------------------------- the store's tie order


def _digest(text: str) -> str:
    """The store's primary key of an id, written out here (BLAKE2b-128 hex of the UTF-8 bytes)."""
    import hashlib

    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def test_db_ids_rank_ties_by_the_digest_of_the_id_by_hand():
    ids = ["Forest/1.jpg", "Forest/2.jpg", "Forest/3.jpg", "River/1.jpg", "River/2.jpg"]
    # digests ascending: Forest/3, River/1, River/2, Forest/1, Forest/2 (the store's order)
    assert sorted(ids, key=_digest) == ["Forest/3.jpg", "River/1.jpg", "River/2.jpg",
                                        "Forest/1.jpg", "Forest/2.jpg"]
    labels = [i.split("/")[0] for i in ids]
    db = codes_at_distance(0, 0, 0, 0, 0)  # every item tied with the all-zero query
    # by index: F F F R R -> AP of a Forest query = 1; in the store's order: F R R F F
    assert mean_average_precision(ZERO, ["Forest"], db, labels) == 1.0
    store = (1 / 1 + 2 / 4 + 3 / 5) / 3
    assert mean_average_precision(ZERO, ["Forest"], db, labels, db_ids=ids) == pytest.approx(store)
    assert mean_average_precision(ZERO, ["Forest"], db, labels, topk=2,
                                  db_ids=ids) == pytest.approx(1.0)  # F R: one hit, at rank 1
    assert precision_at_k(ZERO, ["Forest"], db, labels, 3, db_ids=ids) == pytest.approx(1 / 3)
    assert precision_at_k(ZERO, ["Forest"], db, labels, 3) == 1.0
    # the tie-aware figure does not depend on the order at all
    assert mean_average_precision(ZERO, ["Forest"], db, labels, ties="expected", db_ids=ids) == (
        pytest.approx(mean_average_precision(ZERO, ["Forest"], db, labels, ties="expected")))


@pytest.mark.parametrize("topk", [None, 5, 20])
def test_db_ids_make_every_figure_independent_of_the_listing_order(topk):
    """With ids, a database listed in any order gives the figures of the database put in the
    store's order first (what callers had to do by hand): ties as a Milvus search ranks them."""
    rng = np.random.default_rng(21)
    codes = random_codes(rng, 120, 8)  # 8 bits: heavy ties
    labels = rng.integers(0, 4, 120)
    ids = [f"c{lab}/img_{i:03d}.jpg" for i, lab in enumerate(labels)]
    by_digest = np.argsort([_digest(i) for i in ids], kind="stable")
    q = codes[:30]
    want = average_precisions(q, labels[:30], codes[by_digest], labels[by_digest], topk)
    want_p = precision_at_k(q, labels[:30], codes[by_digest], labels[by_digest], 10)
    for perm in (np.arange(120), rng.permutation(120), rng.permutation(120)):
        got = average_precisions(q, labels[:30], codes[perm], labels[perm], topk,
                                 db_ids=[ids[i] for i in perm])
        np.testing.assert_allclose(got, want, atol=1e-12)
        assert precision_at_k(q, labels[:30], codes[perm], labels[perm], 10,
                              db_ids=np.array(ids)[perm]) == pytest.approx(want_p, abs=1e-12)
    # leave-one-out: the queries are the database; per-query APs stay in the query order
    loo_want = average_precisions(codes[by_digest], labels[by_digest], codes[by_digest],
                                  labels[by_digest], topk, True)
    got = average_precisions(codes, labels, codes, labels, topk, True, db_ids=ids)
    np.testing.assert_allclose(got[by_digest], loo_want, atol=1e-12)
    # a query subset of the database, by index (query_indices point into the listing order)
    sub = np.array([5, 17, 90])
    got = average_precisions(codes[sub], labels[sub], codes, labels, topk, True,
                             query_indices=sub, db_ids=ids)
    np.testing.assert_allclose(got, average_precisions(codes, labels, codes, labels, topk, True,
                                                       db_ids=ids)[sub], atol=1e-12)
    # without ids the listing order matters (which is why the ids are taken)
    shuffled = rng.permutation(120)
    assert not np.allclose(average_precisions(q, labels[:30], codes[shuffled], labels[shuffled],
                                              topk), want)


def test_db_ids_must_name_each_database_item():
    with pytest.raises(ValueError, match="one id per database code"):
        mean_average_precision(QUERIES, QUERY_LABELS, DB, DB_LABELS, db_ids=["a", "b"])
    with pytest.raises(ValueError, match="one id per database code"):
        precision_at_k(QUERIES, QUERY_LABELS, DB, DB_LABELS, 2, db_ids="abcde")


def test_fine_codes_put_near_duplicates_first_then_break_ties():
    """With ``fine=`` the ranking is the store's (codes.fine_ranking_key): an item whose fine
    code lies within the near-duplicate radius (12 of 128 bits) comes first whatever its
    retrieval distance; the rest by (distance, fine distance). By hand, query all-zero:
      item:        0    1    2    3
      d:           0    0    0    5
      fine d:     40   20   30    3
      label:       B    A    B    A      ranking 3, 1, 2, 0 -> relevances A: 1, 1, 0, 0."""
    db = codes_at_distance(0, 0, 0, 5)
    fine_q = np.zeros((1, 16), np.uint8)
    fine_db = pack_codes(np.array([[1] * f + [0] * (128 - f) for f in (40, 20, 30, 3)]))
    labels = ["B", "A", "B", "A"]
    with_fine = mean_average_precision(ZERO, ["A"], db, labels, fine=(fine_q, fine_db))
    assert with_fine == pytest.approx(1.0)
    # without fine codes: ties by index (0, 1, 2), item 3 last -> B A B A
    assert mean_average_precision(ZERO, ["A"], db, labels) == pytest.approx((1 / 2 + 2 / 4) / 2)
    # a fine distance past the radius and not clearly nearer than the runner-up (17, not below
    # 0.8 x 20) keeps item 3 behind the ties, now ordered by fine distance (1, 2, 0) -> A B B A
    far = pack_codes(np.array([[1] * f + [0] * (128 - f) for f in (40, 20, 30, 17)]))
    assert mean_average_precision(ZERO, ["A"], db, labels, fine=(fine_q, far)) == pytest.approx(
        (1 / 1 + 2 / 4) / 2)
    # past the radius but clearly nearer (15 < 0.8 x 20: the ratio test) it leads again
    clear = pack_codes(np.array([[1] * f + [0] * (128 - f) for f in (40, 20, 30, 15)]))
    assert mean_average_precision(ZERO, ["A"], db, labels, fine=(fine_q, clear)) == pytest.approx(
        1.0)
