"""Exact Hamming top-k with a fixed tie rule, on top of Milvus' search.

Milvus returns items at equal distance in insertion order (Lite) or in an order that changes
between calls (server), and cuts a tie group at the k-th distance anywhere. Hamming distances tie
heavily (64-bit codes have 65 possible distances), so "the k nearest" is only well defined with a
tie rule; ours is (distance, primary key) ascending. The primary key is the BLAKE2b digest of the
id (:func:`.keys.digest`), so tied items come back in an order that is deterministic but owes
nothing to how the ids are spelled. Why not the id itself: archives are usually laid out class by
class (``River/River_001.jpg``), and ids in name order would hand every tie group to the classes
whose names sort first. Trained codes tie a lot (MiLAN heads put dozens of images on one code),
and on such a layout that bias cost 0.07 mAP@20 (docs/training.md, "Ties"); in a digest order a
tie group is ranked as a random order would rank it, whose expected AP is the tie-aware figure of
:mod:`rsir_sdk.tie_aware`. :func:`tie_order` gives the same order for ids held in memory.

The algorithm (measured on Milvus Lite 2.5.1 and the 2.3.5 server):

1. Search with ``limit = min(16384, 2k)`` and sort the hits by (distance, pk).
2. If fewer than ``limit`` came back, or the last hit is farther than the k-th (distance
   ``dk``), the whole tie group at ``dk`` is inside: take the first k.
3. Otherwise keep the hits nearer than ``dk`` and fetch **every** item at exactly ``dk`` with a
   range search (``range_filter=dk <= d < radius=dk+1``, same filter), sort that group by pk and
   fill up to k. The queries that need one are grouped by ``dk``: one range search request per
   distinct ``dk`` (and per :data:`TIE_BATCH` queries), not one per query.
4. When a query's range search returns 16384 items (Milvus' cap), split it by primary-key
   prefix (``pk >= "3" and pk < "3g"``; the keys are hex digests, so these literals are safe)
   and recurse.

The extra range search happens only when the tie group at ``dk`` runs past ``2k`` (at a million
class-centred codes that is most queries: their tie groups hold hundreds of items); it asks for
ids only, and the fields of the few tie items chosen are read by primary key afterwards.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from . import keys
from .schema import MAX_TOPK

#: one query's hits as Milvus returned them: primary keys, Hamming distances (ints) and the
#: entities (dicts holding ``id`` and the output fields), in Milvus' order
Raw = tuple[list[str], list[int], list[dict[str, Any]]]
#: ``search(queries, limit, expr, radius, output_fields)`` -> one :data:`Raw` per query;
#: ``radius`` is ``None`` or Milvus' ``(radius, range_filter)``
SearchFn = Callable[[Sequence[bytes], int, str, "tuple[int, int] | None", "list[str]"], "list[Raw]"]
#: ``fetch(pks)`` -> ``{pk: entity}`` with the output fields
FetchFn = Callable[[Sequence[str]], "dict[str, dict[str, Any]]"]


class Found:
    """One result: primary key, id, Hamming distance, (when read) the stored fields, and the
    fine-code distance when the fine code took part in the ranking (:mod:`.finerank`)."""

    __slots__ = ("pk", "id", "distance", "entity", "fine")

    def __init__(self, pk: str, id: str, distance: int, entity: dict[str, Any] | None,
                 fine: int | None = None):
        self.pk, self.id, self.distance, self.entity = pk, id, distance, entity
        self.fine = fine

    def key(self) -> tuple[int, str]:
        """The tie rule: distance, then primary key (the digest of the id)."""
        return (self.distance, self.pk)


def tie_order(ids: Sequence[str]) -> np.ndarray:
    """Indices that list ``ids`` in the store's tie order (their primary keys ascending).

    A database held in memory in this order and ranked with a stable sort (ties by index, as
    :mod:`rsir_sdk.metrics` and :func:`rsir_sdk.codes.topk_bruteforce` do) ranks exactly as a
    search of the collection does.

    >>> ids = ["Forest/1.jpg", "Forest/2.jpg", "Forest/3.jpg", "River/1.jpg", "River/2.jpg"]
    >>> [ids[i] for i in tie_order(ids)]
    ['Forest/3.jpg', 'River/1.jpg', 'River/2.jpg', 'Forest/1.jpg', 'Forest/2.jpg']
    """
    return np.argsort(np.array([keys.digest(i) for i in ids], dtype="U32"), kind="stable")


#: queries per batched tie-group range search (bounds one response: at most this many times
#: 16,384 hits)
TIE_BATCH = 100


def exact_topk(
    search: SearchFn,
    fetch: FetchFn,
    queries: Sequence[bytes],
    k: int,
    expr: str,
    radius: int | None,
    fields: list[str],
    stats: dict[str, int] | None = None,
    exact_ties: bool = True,
) -> list[list[Found]]:
    """Top-``k`` per query by (distance, primary key); ``radius`` (inclusive) keeps ``d <= radius``.

    Only the hits returned become :class:`Found` objects; the rest is sorted as indices.
    ``exact_ties=False``: one request of ``limit = k``; the distances are the same, but which
    items of the tie group at the k-th distance come back is Milvus' choice (as with FAISS).
    """
    limit = min(MAX_TOPK, 2 * k) if exact_ties else k
    window = None if radius is None else (radius + 1, 0)  # Milvus: range_filter <= d < radius
    raw = search(queries, limit, expr, window, fields)
    if stats is not None:
        stats["searches"] = stats.get("searches", 0) + 1
        stats["hits"] = stats.get("hits", 0) + sum(len(r[0]) for r in raw)
    out: list[list[Found]] = [[] for _ in queries]
    # per query still open: (query index, dk, hits nearer than dk, {pk: hit at dk})
    ties: dict[int, list[tuple[int, list[Found], dict[str, Found]]]] = {}
    for qi, (pks, dist, ents) in enumerate(raw):
        ids = [e["id"] for e in ents]
        order = sorted(range(len(pks)), key=lambda i: (dist[i], pks[i]))
        if not exact_ties or len(order) < limit or dist[order[-1]] > dist[order[k - 1]]:
            # every match came back, or the tie group at the k-th distance is whole
            out[qi] = [Found(pks[i], ids[i], dist[i], ents[i]) for i in order[:k]]
            continue
        dk = dist[order[k - 1]]
        head = [Found(pks[i], ids[i], dist[i], ents[i]) for i in order if dist[i] < dk]
        group = {pks[i]: Found(pks[i], ids[i], dk, ents[i]) for i in order if dist[i] == dk}
        ties.setdefault(dk, []).append((qi, head, group))
    for dk, open_ in ties.items():
        for at in range(0, len(open_), TIE_BATCH):
            part = open_[at : at + TIE_BATCH]
            if stats is not None:
                stats["range_searches"] = stats.get("range_searches", 0) + 1
            res = search([queries[qi] for qi, _, _ in part], MAX_TOPK, expr, (dk + 1, dk), ["id"])
            for (qi, head, group), (pks, _, ents) in zip(part, res):
                if len(pks) >= MAX_TOPK:  # past Milvus' cap: read the group in pk-prefix buckets
                    found = [h for ch in "0123456789abcdef"
                             for h in _all_at(search, queries[qi], dk, expr, stats, ch)]
                else:
                    found = [Found(pk, e["id"], dk, None) for pk, e in zip(pks, ents)]
                for h in found:
                    group.setdefault(h.pk, h)
                out[qi] = head + sorted(group.values(), key=Found.key)[: k - len(head)]
    unread = [h.pk for row in out for h in row if h.entity is None]
    if unread and fields == ["id"]:  # ids only: the range search read them
        for row in out:
            for h in row:
                if h.entity is None:
                    h.entity = {"id": h.id}
    elif unread:
        entities = fetch(unread)
        for row in out:
            for h in row:
                if h.entity is None:
                    h.entity = entities.get(h.pk, {"id": h.id})
    return out


def _all_at(search: SearchFn, q: bytes, d: int, expr: str, stats: dict[str, int] | None,
            prefix: str = "") -> list[Found]:
    """Every item at exactly Hamming distance ``d`` (ids only), split by pk prefix past the cap."""
    if stats is not None:
        stats["range_searches"] = stats.get("range_searches", 0) + 1
    pks, _, ents = search([q], MAX_TOPK, keys.combine(expr, keys.pk_prefix(prefix)), (d + 1, d),
                          ["id"])[0]
    if len(pks) < MAX_TOPK:
        return [Found(pk, e["id"], d, None) for pk, e in zip(pks, ents)]
    out: list[Found] = []
    for ch in "0123456789abcdef":
        out += _all_at(search, q, d, expr, stats, prefix + ch)
    return out
