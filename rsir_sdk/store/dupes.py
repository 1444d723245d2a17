"""Near-duplicates in a collection (issue 20, item 4): groups of items whose fine codes are close.

Why here and how: the fine code (:mod:`.fine`) is label-free and similarity-preserving, so two
files of the same scene (a re-encode, a crop, a brightened copy) lie a few bits apart while
different scenes lie far apart. Every item's fine code is read from the mirror (in pages of
primary-key ranges), each is range-searched on the mirror's fine field within the radius
(:data:`QUERY_BATCH` queries a request, under the same filter), and the pairs found are
linked transitively (union-find): a group is a connected component of two or more items.
Measured on Milvus Lite, 100,000 items (shared 2-core box): 288 s with one limit of 16,384 a
query, 65 s with :data:`FIRST_LIMIT` (13 s of it reading the codes).

``DEFAULT_DUPLICATE_RADIUS`` is for 128-bit fine codes (the length bundles ship, see
docs/similar.md); for another length :func:`default_radius` scales it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..codes import NEAR_DUPLICATE_RADIUS, near_duplicate_radius
from ..errors import CollectionMismatchError, StoreError
from ..geo import GeoFilter
from . import fine, keys, place, values
from . import search as searching
from .schema import MAX_TOPK
from .server import _code

if TYPE_CHECKING:  # pragma: no cover
    from .collection import MilvusCodeStore

#: the default radius (inclusive, in bits of a 128-bit fine code) within which two items are
#: near-duplicates: the one the default search ranking puts first too
#: (:data:`rsir_sdk.codes.NEAR_DUPLICATE_RADIUS`, where its measurement is cited)
DEFAULT_DUPLICATE_RADIUS = NEAR_DUPLICATE_RADIUS
#: queries per range-search request
QUERY_BATCH = 100
#: the first range search's limit per query: Milvus Lite's cost grows with the limit (100
#: queries on 100k codes: 0.03 s at 100, 0.4 s at 16,384), and near-duplicates are few; a query
#: that fills it is asked again up to Milvus' cap
FIRST_LIMIT = 256


def default_radius(fine_bits: int) -> int:
    """:data:`DEFAULT_DUPLICATE_RADIUS` scaled to a fine code of ``fine_bits`` bits."""
    return near_duplicate_radius(fine_bits)


def duplicates(store: "MilvusCodeStore", radius: int | None, filter: Any,
               geo: GeoFilter | None, progress: Callable[[int, int], Any] | None,
               ) -> list[list[str]]:
    """Groups (ids sorted, largest group first) of items within ``radius`` of each other."""
    expr = keys.build_filter(filter)
    gf = store.check_geo(geo)
    store._require_exists()
    if store.fine_bits is None:
        raise CollectionMismatchError(
            f"collection {store.collection!r} at {store.display_uri} keeps no fine codes (made "
            f"before them, or without them), so it cannot list near-duplicates; rebuild it: rsir "
            f"drop {store.collection} --uri {store.display_uri} --yes, then index it again")
    r = default_radius(store.fine_bits) if radius is None else int(values.radius(radius) or 0)
    user = filter if isinstance(filter, str) else None
    request = searching.SearchRequest(k=1, expr=expr, user_expr=user, geo=gf)
    search, _, full, _ = searching.calls(store._conn, fine.mirror(store.collection), request,
                                         "fine")
    near = gf is not None and gf.near is not None
    fields = ["pk", "id", "fine", *(place.FIELDS if near else ())]
    rows = list(place.iter_rows(store._conn, fine.mirror(store.collection), full, fields, "",
                                user))
    if near:
        keep = place.keeper(gf)  # type: ignore[arg-type]
        rows = [row for row in rows if keep(row)]
    index = {row["pk"]: i for i, row in enumerate(rows)}
    parent = np.arange(len(rows))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    for start in range(0, len(rows), QUERY_BATCH):
        part = rows[start : start + QUERY_BATCH]
        data = [_code(row["fine"]).tobytes() for row in part]
        res = search(data, FIRST_LIMIT, full, (r + 1, 0), [])
        full_pages = [i for i, (pks, _, _) in enumerate(res) if len(pks) >= FIRST_LIMIT]
        if full_pages:  # more neighbours than the first limit: those queries again, to the cap
            again = search([data[i] for i in full_pages], MAX_TOPK, full, (r + 1, 0), [])
            for i, hits in zip(full_pages, again):
                res[i] = hits
        for qi, (pks, _, _) in enumerate(res, start):
            if len(pks) >= MAX_TOPK:
                raise StoreError(
                    f"item {rows[qi]['id']!r:.80} has {MAX_TOPK} or more items within fine "
                    f"distance {r} (the limit of one search); lower the radius or add a filter")
            a = root(qi)
            for pk in pks:
                j = index.get(pk)
                if j is not None:
                    b = root(j)
                    if a != b:
                        parent[b] = a
        if progress is not None:
            progress(min(start + QUERY_BATCH, len(rows)), len(rows))
    groups: dict[int, list[str]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(root(i), []).append(row["id"])
    out = [sorted(g) for g in groups.values() if len(g) >= 2]
    return sorted(out, key=lambda g: (-len(g), g[0]))
