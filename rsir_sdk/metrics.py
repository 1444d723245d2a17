"""Retrieval metrics for packed binary codes: mAP, mAP@k, precision@k, radius search, PR curve.

All metrics rank the database by exact Hamming distance (:func:`rsir_sdk.codes.hamming_distances`)
with a stated tie rule, so every number is deterministic: short codes tie heavily, and an
unstated tie rule can move mAP by several points. Give the database ids (``db_ids=``) and ties
are ranked **as the store ranks them** (by the digest of the id, :func:`rsir_sdk.store.tie_order`),
whatever order the database is listed in: the figure is then the one a Milvus search gives.
Without ids, ties go by database index (a stable sort, as :func:`rsir_sdk.codes.topk_bruteforce`
does). ``ties="expected"`` gives instead the AP expected over every order of the tied items
(:mod:`rsir_sdk.tie_aware`), which depends on neither. ``fine=(query fine codes, database fine
codes)`` (issue 20) ranks the items at one Hamming distance by their fine codes' distance before
the tie rule, as the store ranks a collection that keeps fine codes.

Relevance: a database item is relevant to a query when they share a label.

- single-label: ``labels`` is a 1-D sequence of hashable values (ints, strings, ...);
  relevant means equal labels;
- multi-label: ``labels`` is a 2-D numeric or boolean 0/1 indicator matrix
  ``(n, n_classes)``; relevant means at least one label in common. (Anything that numpy turns
  into a 2-D number array is read this way, so give tuple labels as strings if in doubt.)

Leave-one-out (the MiLAN protocol: the test set is both query set and archive) is
``exclude_self=True``: each query's own database item is dropped from its ranking. By default
query ``i`` *is* database item ``i`` (pass the same arrays twice); when the queries are a subset
of the database, pass ``query_indices`` (the database index of each query).

Averages are over queries (macro); a query with no relevant item contributes 0 to every
metric rather than being skipped, so every query counts. Work is chunked over queries, so memory
stays at a few hundred MB whatever the number of queries (2,000 x 100,000 at 64 bits is fine).

>>> from rsir_sdk.codes import pack_codes
>>> db = pack_codes(np.array([[0] * 8, [1] * 8, [0] * 7 + [1]]))
>>> mean_average_precision(db[:1], ["a"], db, ["a", "b", "a"])
1.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple, get_args

import numpy as np

from .metric_inputs import _Task
from .tie_aware import expected_average_precisions

__all__ = [
    "PRCurve",
    "TIES",
    "Ties",
    "average_precision_of_ranking",
    "average_precisions",
    "mean_average_precision",
    "pr_curve",
    "precision_at_k",
    "precision_recall_within_radius",
]

#: how tied items are ranked: by database index (Milvus' order) or in expectation over orders
Ties = Literal["index", "expected"]
TIES: tuple[str, ...] = get_args(Ties)


class PRCurve(NamedTuple):
    """Mean precision and recall when retrieving everything within Hamming radius ``r``.

    ``radius`` is ``0..bits``; ``precision[r]`` and ``recall[r]`` are averages over queries
    (see :func:`pr_curve` for the conventions). Unpacks as ``radius, precision, recall``.
    """

    radius: np.ndarray
    precision: np.ndarray
    recall: np.ndarray


# --------------------------------------------------------------------------- public metrics


def average_precisions(
    query_codes: np.ndarray,
    query_labels: Sequence | np.ndarray,
    db_codes: np.ndarray,
    db_labels: Sequence | np.ndarray,
    topk: int | None = None,
    exclude_self: bool = False,
    *,
    query_indices: Sequence[int] | np.ndarray | None = None,
    ties: Ties = "index",
    db_ids: Sequence[str] | None = None,
    fine: tuple[Any, ...] | None = None,
) -> np.ndarray:
    """Average precision of every query, ``float64 (n_queries,)``.

    Same arguments and conventions as :func:`mean_average_precision` (which is its mean);
    useful to look at the worst queries or to average per class.

    >>> from rsir_sdk.codes import pack_codes
    >>> db = pack_codes(np.array([[0] * 8, [1] * 8]))
    >>> average_precisions(db, ["a", "b"], db, ["a", "a"])
    array([1., 0.])
    """
    task = _Task(query_codes, query_labels, db_codes, db_labels, exclude_self, query_indices,
                 db_ids, fine)
    if topk is not None:
        topk = _positive_int(topk, "topk")
    if ties not in TIES:
        raise ValueError(f"ties must be one of {', '.join(TIES)}, got {ties!r}")
    if ties == "expected" and fine is not None:
        raise ValueError("ties='expected' averages over every order of tied codes; fine codes "
                         "fix that order: give one or the other")
    out = np.zeros(task.n_queries, dtype=np.float64)
    if ties == "expected":
        for rows, dist, rel in task.distance_chunks():
            out[rows] = expected_average_precisions(
                _row_histogram(dist, None, task.bits + 1), _row_histogram(dist, rel, task.bits + 1),
                topk)
        return out
    for rows, rel_ranked in task.ranked_relevance(topk):
        # the full ranking holds every relevant item, so "hits seen" is R there and R_k at k
        out[rows] = _ap_of_ranked(rel_ranked)
    return out


def mean_average_precision(
    query_codes: np.ndarray,
    query_labels: Sequence | np.ndarray,
    db_codes: np.ndarray,
    db_labels: Sequence | np.ndarray,
    topk: int | None = None,
    exclude_self: bool = False,
    *,
    query_indices: Sequence[int] | np.ndarray | None = None,
    ties: Ties = "index",
    db_ids: Sequence[str] | None = None,
    fine: tuple[Any, ...] | None = None,
) -> float:
    """Mean average precision of a Hamming ranking, over the whole database or the top ``k``.

    For one query with ranking ``1..n`` and relevance ``rel(i)`` in {0, 1}:

    - ``topk=None`` (whole database, the AHCL protocol):
      ``AP = sum_i P(i) rel(i) / R``, ``R`` = number of relevant items in the database
      (after ``exclude_self``), ``P(i)`` = precision of the top ``i``;
    - ``topk=k`` (mAP@k, the MiLAN protocol): ``AP@k = sum_{i<=k} P(i) rel(i) / R_k``, normalised
      by ``R_k``, the number of relevant items **retrieved in the top k** (not by ``R`` nor ``k``);
      when ``k`` exceeds the database, the whole database is ranked.

    A query with ``R = 0`` (or ``R_k = 0``) has AP 0 and still counts in the mean.

    Args:
        query_codes, db_codes: packed ``uint8 (n, bits/8)`` codes of the same length.
        query_labels, db_labels: 1-D labels (equal = relevant) or 2-D 0/1 indicator
            matrices (one shared label = relevant).
        topk: ``None`` for the whole database, else ``k >= 1``.
        exclude_self: leave-one-out: drop each query's own item from its ranking. Query ``i``
            is database item ``i`` (same arrays twice) unless ``query_indices`` says otherwise.
        query_indices: with ``exclude_self``, the database index of each query.
        ties: ``"index"`` (default): tied items ranked in one fixed order, the store's when
            ``db_ids`` is given (the order Milvus returns them in), else by database index;
            ``"expected"``: the AP expected over every order of the tied items
            (:mod:`rsir_sdk.tie_aware`), a figure of the codes alone, not of the order the
            archive was listed in.
        db_ids: the id of each database item: ties are then ranked by the digest of the id,
            as the store ranks them (:func:`rsir_sdk.store.tie_order`), so the figure equals a
            Milvus search's whatever order the database is listed in. Without it, ties go by
            database index.
        fine: ``(query fine codes, database fine codes)``, packed ``uint8 (n, fine_bits/8)``
            (issue 20): items at one Hamming distance are ranked by the distance of their fine
            codes first, then by the tie rule above: the store's default ranking when the
            collection keeps fine codes (retrieval distance, fine distance, digest). A third
            item, the bundle's :class:`~rsir_sdk.codes.SceneTest` (``Bundle.scene_test``),
            makes the same-scene test read its parts, as the collection does. Not with
            ``ties="expected"``.

    >>> from rsir_sdk.codes import pack_codes
    >>> q = pack_codes(np.array([[0] * 8]))
    >>> db = pack_codes(np.array([[0] * 8, [1] * 8, [0] * 7 + [1]]))
    >>> # ranking: item 0 (d=0, "a"), item 2 (d=1, "b"), item 1 (d=8, "a")
    >>> round(mean_average_precision(q, ["a"], db, ["a", "a", "b"]), 4)  # (1/1 + 2/3) / 2
    0.8333
    >>> mean_average_precision(q, ["a"], db, ["a", "a", "b"], topk=2)  # (1/1) / 1
    1.0
    >>> tied = pack_codes(np.zeros((3, 8), int))  # three items at distance 0: ties only
    >>> ids = ["Forest/1.jpg", "River/1.jpg", "River/2.jpg"]  # store order: River/1, River/2, Forest/1
    >>> labels = ["Forest", "River", "River"]
    >>> mean_average_precision(q, ["Forest"], tied, labels), round(
    ...     mean_average_precision(q, ["Forest"], tied, labels, db_ids=ids), 4)
    (1.0, 0.3333)
    """
    aps = average_precisions(
        query_codes, query_labels, db_codes, db_labels, topk, exclude_self,
        query_indices=query_indices, ties=ties, db_ids=db_ids, fine=fine,
    )
    return float(aps.mean()) if aps.size else 0.0


def precision_at_k(
    query_codes: np.ndarray,
    query_labels: Sequence | np.ndarray,
    db_codes: np.ndarray,
    db_labels: Sequence | np.ndarray,
    k: int,
    exclude_self: bool = False,
    *,
    query_indices: Sequence[int] | np.ndarray | None = None,
    db_ids: Sequence[str] | None = None,
    fine: tuple[Any, ...] | None = None,
) -> float:
    """Mean fraction of relevant items among the top ``k`` of the Hamming ranking.

    When ``k`` exceeds the (leave-one-out) database size ``n``, the denominator is ``n``.
    Arguments as in :func:`mean_average_precision` (``db_ids``: ties in the store's order;
    ``fine``: the store's rule, :func:`~rsir_sdk.codes.fine_ranking_key`).

    >>> from rsir_sdk.codes import pack_codes
    >>> q = pack_codes(np.array([[0] * 8]))
    >>> db = pack_codes(np.array([[0] * 8, [1] * 8, [0] * 7 + [1]]))
    >>> precision_at_k(q, ["a"], db, ["a", "a", "b"], k=2)  # items 0 ("a"), 2 ("b")
    0.5
    """
    k = _positive_int(k, "k")
    task = _Task(query_codes, query_labels, db_codes, db_labels, exclude_self, query_indices,
                 db_ids, fine)
    total = 0.0
    for _, rel_ranked in task.ranked_relevance(k):
        total += float(rel_ranked.mean(axis=1).sum()) if rel_ranked.shape[1] else 0.0
    return total / task.n_queries if task.n_queries else 0.0


def precision_recall_within_radius(
    query_codes: np.ndarray,
    query_labels: Sequence | np.ndarray,
    db_codes: np.ndarray,
    db_labels: Sequence | np.ndarray,
    radius: int,
    exclude_self: bool = False,
    *,
    query_indices: Sequence[int] | np.ndarray | None = None,
) -> tuple[float, float]:
    """Mean ``(precision, recall)`` when retrieving every item at Hamming distance ``<= radius``.

    The radius is **inclusive** (``d <= r``; note that Milvus range search is ``d < radius``).
    Conventions: a query that retrieves nothing has precision 0 (so a radius that is too small
    is penalised, not skipped); a query with no relevant item in the database has recall 0.
    A radius above the bit length means the whole database. Other arguments as in
    :func:`mean_average_precision`.

    >>> from rsir_sdk.codes import pack_codes
    >>> q = pack_codes(np.array([[0] * 8]))
    >>> db = pack_codes(np.array([[0] * 8, [1] * 8, [0] * 7 + [1]]))
    >>> precision_recall_within_radius(q, ["a"], db, ["a", "a", "b"], radius=1)  # items 0, 2
    (0.5, 0.5)
    """
    radius = int(radius)
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    curve = pr_curve(
        query_codes, query_labels, db_codes, db_labels, exclude_self, query_indices=query_indices
    )
    r = min(radius, len(curve.radius) - 1)
    return float(curve.precision[r]), float(curve.recall[r])


def pr_curve(
    query_codes: np.ndarray,
    query_labels: Sequence | np.ndarray,
    db_codes: np.ndarray,
    db_labels: Sequence | np.ndarray,
    exclude_self: bool = False,
    *,
    query_indices: Sequence[int] | np.ndarray | None = None,
) -> PRCurve:
    """Precision and recall of Hamming-radius retrieval at every radius ``0..bits``.

    Point ``r`` is :func:`precision_recall_within_radius` at radius ``r`` (inclusive, empty
    retrieval = precision 0, no relevant item = recall 0, averaged over queries). Recall is
    non-decreasing in ``r``; at ``r = bits`` everything is retrieved.

    >>> from rsir_sdk.codes import pack_codes
    >>> q = pack_codes(np.array([[0] * 8]))
    >>> db = pack_codes(np.array([[0] * 8, [1] * 8, [0] * 7 + [1]]))
    >>> curve = pr_curve(q, ["a"], db, ["a", "a", "b"])
    >>> curve.precision[[0, 1, 8]], curve.recall[[0, 1, 8]]
    (array([1.        , 0.5       , 0.66666667]), array([0.5, 0.5, 1. ]))
    """
    task = _Task(query_codes, query_labels, db_codes, db_labels, exclude_self, query_indices)
    nbins = task.bits + 1
    precision = np.zeros(nbins, dtype=np.float64)
    recall = np.zeros(nbins, dtype=np.float64)
    for rows, dist, rel in task.distance_chunks():
        retrieved = np.cumsum(_row_histogram(dist, None, nbins), axis=1)
        hits = np.cumsum(_row_histogram(dist, rel, nbins), axis=1)
        relevant = hits[:, -1:]
        precision += _safe_ratio(hits, retrieved).sum(axis=0)
        recall += _safe_ratio(hits, np.broadcast_to(relevant, hits.shape)).sum(axis=0)
    if task.n_queries:
        precision /= task.n_queries
        recall /= task.n_queries
    return PRCurve(np.arange(nbins), precision, recall)


# --------------------------------------------------------------------------- internals


def average_precision_of_ranking(rel_ranked: np.ndarray) -> np.ndarray:
    """AP of each row of a ranked relevance matrix ``(n_queries, depth)``, normalised by the hits
    the row holds (0 for a row without one).

    Over a whole-database ranking this is AP over all relevant items; over a top-``k`` ranking
    it is AP@k normalised by the relevant items retrieved, the conventions of
    :func:`mean_average_precision`. Use it for rankings made elsewhere (by Milvus, say).

    >>> average_precision_of_ranking(np.array([[1, 0, 1], [0, 0, 0]], bool)).round(4).tolist()
    [0.8333, 0.0]
    """
    return _ap_of_ranked(np.asarray(rel_ranked, dtype=bool))


def _ap_of_ranked(rel_ranked: np.ndarray) -> np.ndarray:
    """AP per row of a ranked relevance matrix, normalised by the hits it holds (0 if none).

    Only the relevant positions are visited: the ``j``-th hit (0-based) of a row at rank
    position ``p`` (0-based) adds precision ``(j + 1) / (p + 1)``.
    """
    n_rows = rel_ranked.shape[0]
    rows, cols = np.nonzero(rel_ranked)  # row-major: positions ascending within each row
    hits_per_row = np.bincount(rows, minlength=n_rows)
    first_hit = np.concatenate(([0], np.cumsum(hits_per_row)[:-1]))
    hit_rank = np.arange(len(rows)) - first_hit[rows]
    sums = np.bincount(rows, weights=(hit_rank + 1) / (cols + 1), minlength=n_rows)
    return _safe_ratio(sums, hits_per_row)


def _row_histogram(dist: np.ndarray, mask: np.ndarray | None, nbins: int) -> np.ndarray:
    """Per-row counts of distances ``0..nbins-1`` (larger ones, i.e. the sentinel, dropped)."""
    width = nbins + 1  # one extra bin for the leave-one-out sentinel
    flat = dist + width * np.arange(dist.shape[0])[:, None]
    flat = flat[mask] if mask is not None else flat.ravel()
    counts = np.bincount(flat, minlength=dist.shape[0] * width)
    return counts.reshape(dist.shape[0], width)[:, :nbins]


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0 where ``den`` is 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast_shapes(num.shape, den.shape), dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
