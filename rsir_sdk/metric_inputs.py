"""The inputs of one evaluation of :mod:`rsir_sdk.metrics`, checked, and their chunked iterators.

Split from :mod:`rsir_sdk.metrics` (which keeps the public metrics) because it is one job:
turning codes, labels, ids and fine codes into validated arrays (labels factorized or
multi-label indicators, the store's tie order from the database ids, the fine-code pair) and
iterating distances and rankings in bounded chunks.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .codes import as_packed, fine_ranking_key, hamming_distances

# about this many (query, database) pairs are ranked at once: ~100 MB of temporaries
_CHUNK_PAIRS = 1 << 22

class _Task:
    """Validated inputs of one evaluation, with chunked distance and ranking iterators."""

    def __init__(self, query_codes, query_labels, db_codes, db_labels, exclude_self, query_indices,
                 db_ids=None, fine=None):
        self.queries = as_packed(query_codes)
        self.database = as_packed(db_codes, self.queries.shape[1] * 8)
        self.bits = self.queries.shape[1] * 8
        self.n_queries = self.queries.shape[0]
        self.n_db = self.database.shape[0]
        self._relevance = _Relevance(query_labels, db_labels, self.n_queries, self.n_db)
        self.self_index = _self_indices(
            exclude_self, query_indices, self.n_queries, self.n_db, self._relevance
        )
        # the sentinel distance sorts a query's own item after every real item
        self._sentinel = self.bits + 1
        self.q_fine, self.db_fine = _fine_pair(fine, self.n_queries, self.n_db)
        #: the bundle's same-scene test (``fine``'s optional third item), else None
        self.scene_test = fine[2] if fine is not None and len(fine) == 3 else None
        order = _store_order(db_ids, self.n_db)
        if order is not None:  # the database in the store's tie order: ties by index = by digest
            self.database = self.database[order]
            if self.db_fine is not None:
                self.db_fine = self.db_fine[order]
            self._relevance.db = self._relevance.db[order]
            if self.self_index is not None:
                position = np.empty_like(order)
                position[order] = np.arange(len(order))
                self.self_index = position[self.self_index]

    @property
    def n_ranked(self) -> int:
        """Length of each query's ranking (the database, less the query itself)."""
        return self.n_db - (self.self_index is not None)

    def distance_chunks(self) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
        """Yield ``(rows, distances int32 (c, n_db), relevance bool (c, n_db))`` per chunk.

        With ``exclude_self`` the query's own item has distance ``bits + 1`` and relevance
        False, so it falls outside every radius and at the end of every ranking.
        """
        step = max(1, _CHUNK_PAIRS // max(1, self.n_db))
        for start in range(0, self.n_queries, step):
            rows = slice(start, min(start + step, self.n_queries))
            dist = hamming_distances(self.queries[rows], self.database)
            rel = self._relevance(rows)
            if self.self_index is not None:
                local = np.arange(dist.shape[0])
                dist[local, self.self_index[rows]] = self._sentinel
                rel[local, self.self_index[rows]] = False
            yield rows, dist, rel

    def ranked_relevance(self, topk: int | None) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield ``(rows, relevance in rank order bool (c, min(topk, n_ranked)))`` per chunk.

        Ranking: Hamming distance ascending, then database index ascending (stable sort); with
        fine codes the store's rule (:func:`~rsir_sdk.codes.fine_ranking_key`: near-duplicates
        by fine distance first, then Hamming distance, then fine distance, then index).
        """
        keep = self.n_ranked if topk is None else min(topk, self.n_ranked)
        for rows, dist, rel in self.distance_chunks():
            if self.q_fine is not None and self.db_fine is not None:
                fine_d = hamming_distances(self.q_fine[rows], self.db_fine)
                leader = (None if self.scene_test is None
                          else self.scene_test.leaders(self.q_fine[rows], self.db_fine, fine_d))
                key = fine_ranking_key(dist, fine_d, self.db_fine.shape[1] * 8, leader)
                key[dist == self._sentinel] = np.iinfo(np.int64).max  # the query's own item last
                order = np.argsort(key, axis=1, kind="stable")[:, :keep]
            else:
                # distances fit uint16 (bits <= 32768, sentinel included): numpy then radix-sorts
                order = np.argsort(dist.astype(np.uint16), axis=1, kind="stable")[:, :keep]
            yield rows, np.take_along_axis(rel, order, axis=1)


class _Relevance:
    """Relevance of database items to queries: equal labels (1-D) or a shared label (2-D 0/1)."""

    def __init__(self, query_labels, db_labels, n_queries: int, n_db: int):
        if len(query_labels) != n_queries or len(db_labels) != n_db:
            raise ValueError(
                f"got {len(query_labels)} query labels for {n_queries} query codes and "
                f"{len(db_labels)} database labels for {n_db} database codes"
            )
        q, d = _as_indicator(query_labels), _as_indicator(db_labels)
        if (q is None) != (d is None):
            raise ValueError(
                "query and database labels must be of one kind: both 1-D (one label per item) "
                "or both 2-D 0/1 indicator matrices"
            )
        self.multi_label = q is not None
        self.query: np.ndarray
        self.db: np.ndarray
        if q is not None and d is not None:
            if q.shape[1] != d.shape[1]:
                raise ValueError(f"label matrices have {q.shape[1]} and {d.shape[1]} columns")
            self.query, self.db = q, d
        else:
            self.query, self.db = _factorize(query_labels, db_labels)

    def __call__(self, rows) -> np.ndarray:
        """Boolean relevance ``(len(rows), n_db)`` of the queries in ``rows``."""
        if self.multi_label:
            return (self.query[rows] @ self.db.T) > 0.5
        return self.query[rows, None] == self.db[None, :]

    def same(self, query_rows: np.ndarray, db_rows: np.ndarray) -> bool:
        """Whether the queries carry the same labels as the given database items."""
        return bool(np.array_equal(self.query[query_rows], self.db[db_rows]))


def _fine_pair(fine, n_queries: int, n_db: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``fine`` = ``(query fine codes, database fine codes[, scene test])`` checked: one per
    code, one length (the optional :class:`~rsir_sdk.codes.SceneTest`: the bundle's)."""
    if fine is None:
        return None, None
    if len(fine) not in (2, 3):
        raise ValueError("fine must be a pair (query fine codes, database fine codes), or "
                         "those and the bundle's SceneTest")
    q = as_packed(fine[0])
    d = as_packed(fine[1], q.shape[1] * 8)
    if q.shape[0] != n_queries or d.shape[0] != n_db:
        raise ValueError(f"got {q.shape[0]} query fine codes for {n_queries} queries and "
                         f"{d.shape[0]} database fine codes for {n_db} database codes")
    return q, d


def _store_order(db_ids, n_db: int) -> np.ndarray | None:
    """The store's tie order of the database (:func:`rsir_sdk.store.tie_order`), or None."""
    if db_ids is None:
        return None
    if isinstance(db_ids, (str, bytes)) or len(db_ids) != n_db:
        raise ValueError(f"db_ids must hold one id per database code ({n_db}), got "
                         f"{len(db_ids) if not isinstance(db_ids, (str, bytes)) else db_ids!r}")
    from .store.topk import tie_order  # the store's rule, written once there

    items = db_ids.tolist() if isinstance(db_ids, np.ndarray) else list(db_ids)
    return tie_order([str(i) for i in items])


def _factorize(query_labels, db_labels) -> tuple[np.ndarray, np.ndarray]:
    """Map arbitrary hashable labels to small ints shared by queries and database."""
    ids: dict = {}

    def encode(labels) -> np.ndarray:
        items = labels.tolist() if isinstance(labels, np.ndarray) else list(labels)
        return np.fromiter(
            (ids.setdefault(x, len(ids)) for x in items), dtype=np.int64, count=len(items)
        )

    try:
        return encode(query_labels), encode(db_labels)
    except TypeError as exc:  # unhashable label, e.g. a list
        raise TypeError(
            "1-D labels must be hashable (int, str, ...); pass multi-label data as a 2-D 0/1 "
            f"indicator matrix ({exc})"
        ) from None


def _as_indicator(labels) -> np.ndarray | None:
    """A 2-D numeric/boolean label matrix as float32 0/1 (exact for dot products), else None."""
    try:
        arr = np.asarray(labels)
    except ValueError:  # ragged nested sequences: not a matrix
        return None
    if arr.ndim != 2 or not (arr.dtype == bool or np.issubdtype(arr.dtype, np.number)):
        return None
    if not np.isin(arr, (0, 1)).all():
        raise ValueError("a 2-D label matrix is a multi-label indicator and must hold only 0 and 1")
    return arr.astype(np.float32)


def _self_indices(
    exclude_self: bool, query_indices, n_queries: int, n_db: int, relevance: _Relevance
) -> np.ndarray | None:
    """Database index of each query for leave-one-out, or None when nothing is excluded."""
    if not exclude_self:
        if query_indices is not None:
            raise ValueError("query_indices is only used with exclude_self=True")
        return None
    if query_indices is None:
        if n_queries != n_db:
            raise ValueError(
                f"exclude_self without query_indices needs the queries to be the database, but "
                f"there are {n_queries} queries and {n_db} database items; pass query_indices "
                "(the database index of each query)"
            )
        index = np.arange(n_queries)
    else:
        index = np.asarray(query_indices)
        if index.shape != (n_queries,) or not np.issubdtype(index.dtype, np.integer):
            raise ValueError(f"query_indices must be {n_queries} integers, got {index.shape}")
        if n_queries and (index.min() < 0 or index.max() >= n_db):
            raise ValueError(f"query_indices must lie in 0..{n_db - 1}")
        index = index.astype(np.int64)
    if not relevance.same(np.arange(n_queries), index):
        raise ValueError(
            "with exclude_self, each query's labels must equal those of its own database item "
            "(are the queries the database, in the same order?)"
        )
    return index


