"""Average precision in expectation over the order of tied items (tie-aware AP).

Why: a Hamming ranking ties heavily (a 64-bit code has 65 possible distances, and a head that
maps a class to one code puts dozens of items at distance 0). The index-order figure of
:mod:`rsir_sdk.metrics` then depends on the order in which the archive was listed: on an
archive listed class by class, a query meets the tied items of the classes listed before its
own first (the store ranks ties by the digest of the id for that reason, an order that is one
draw of a random one). The expected AP over every order of the tied items
(McSherry & Najork, *Computing information retrieval performance measures efficiently in the
presence of tied scores*, ECIR 2008) depends on the codes alone. It is computed exactly here,
not sampled.

For one query the database falls into groups by distance ``0..bits``; group ``v`` has ``g``
items, ``r`` of them relevant, ``s`` items and ``c`` relevant items ranked before it. Over a
uniformly random order inside the group, the item at offset ``t`` (1-based) is relevant with
probability ``r / g`` and, if so, has ``c + 1 + (t - 1)(r - 1)/(g - 1)`` relevant items at or
above it in expectation, so the group adds ``(r / g) [(c + 1) A + (r - 1)/(g - 1) B]`` to the sum
of precisions at the hits, with ``A = sum_t 1/(s + t)`` and ``B = sum_t (t - 1)/(s + t)``. A
top-``k`` cut-off that falls inside a group keeps ``m`` of its items holding ``j`` relevant ones,
``j`` hypergeometric; mAP@k is normalised by the hits retrieved, so the expectation is taken
over ``j`` of the ratio.
"""

from __future__ import annotations

import numpy as np

__all__ = ["expected_average_precisions"]


def expected_average_precisions(groups: np.ndarray, relevant: np.ndarray,
                                topk: int | None = None) -> np.ndarray:
    """Expected AP of each query over the order of tied items, ``float64 (n_queries,)``.

    Args:
        groups: ``(n_queries, n_distances)`` number of database items at each distance, in
            ranking order (distance ascending); the query's own item already left out.
        relevant: same shape, how many of them are relevant.
        topk: ``None`` for AP over the whole ranking (normalised by all relevant items), else
            AP@k normalised by the relevant items in the top ``k`` (:mod:`rsir_sdk.metrics`'
            conventions; 0 for a query with none).
    """
    g = np.asarray(groups, dtype=np.float64)
    r = np.asarray(relevant, dtype=np.float64)
    n_ranked = int(g[0].sum()) if len(g) else 0
    k = n_ranked if topk is None else min(int(topk), n_ranked)
    harmonic = np.concatenate(([0.0], np.cumsum(1.0 / np.arange(1, n_ranked + 1))))
    before = np.cumsum(g, axis=1) - g  # s: items ranked before each group
    rel_before = np.cumsum(r, axis=1) - r  # c: relevant items ranked before each group

    # groups wholly inside the top k
    inside = before + g <= k
    term = _group_precision_sum(harmonic, before, g, r, rel_before)
    sums = np.where(inside, term, 0.0).sum(axis=1)
    hits = np.where(inside, r, 0.0).sum(axis=1)
    out = np.divide(sums, hits, out=np.zeros_like(sums), where=hits > 0)

    # the group the cut-off falls inside, if any: m of its items kept, j of them relevant
    rows, cols = np.nonzero((before < k) & (before + g > k))
    if len(rows) == 0:
        return out
    gs, rs = g[rows, cols].astype(np.int64), r[rows, cols].astype(np.int64)
    ss, cs = before[rows, cols], rel_before[rows, cols]
    m = k - ss.astype(np.int64)
    log_fact = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, n_ranked + 1)))))

    def log_choose(n: np.ndarray, x: np.ndarray) -> np.ndarray:
        return log_fact[n] - log_fact[x] - log_fact[n - x]

    expected = np.zeros(len(rows))
    for j in range(0, int(m.max()) + 1):
        possible = (j <= rs) & (j <= m) & (m - j <= gs - rs)
        if not possible.any():
            continue
        jj = np.where(possible, j, 0)
        others = np.clip(m - jj, 0, gs - rs)
        p = np.where(possible, np.exp(log_choose(rs, jj) + log_choose(gs - rs, others)
                                      - log_choose(gs, m)), 0.0)
        # the m kept slots are a uniformly ordered group of m items holding j relevant ones
        kept_relevant = np.full(len(rows), float(j))
        added = _group_precision_sum(harmonic, ss, m.astype(np.float64), kept_relevant, cs)
        total_hits = hits[rows] + j
        ap = np.divide(sums[rows] + added, total_hits, out=np.zeros(len(rows)),
                       where=total_hits > 0)
        expected += p * ap
    out[rows] = expected
    return out


def _group_precision_sum(harmonic: np.ndarray, before: np.ndarray, size: np.ndarray,
                         relevant: np.ndarray, rel_before: np.ndarray) -> np.ndarray:
    """Expected sum of the precisions at the hits of uniformly ordered groups: ``size`` items,
    ``relevant`` of them relevant, after ``before`` items holding ``rel_before`` relevant ones
    (the module doc's ``(r / g) [(c + 1) A + (r - 1)/(g - 1) B]``; 0 for an empty group)."""
    s = before.astype(np.int64)
    a = harmonic[s + size.astype(np.int64)] - harmonic[s]  # sum_t 1/(s + t)
    b = size - (s + 1) * a  # sum_t (t - 1)/(s + t)
    spread = np.divide(relevant - 1, size - 1, out=np.zeros_like(size), where=size > 1)
    share = np.divide(relevant, size, out=np.zeros_like(size), where=size > 0)
    return share * ((rel_before + 1) * a + spread * b)
