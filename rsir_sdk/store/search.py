"""Searching a collection: the calls, the fields asked for, and a lean conversion of the hits.

Why a module of its own: with an index that makes the scan cheap, the client is what bounds a
search (measured at 1,000 queries x top-100 on the 2.3.5 server: pymilvus decodes the response
in 0.35-0.5 s; building one result object per hit with a copy of its metadata cost 1.3-1.9 s
more). So Milvus returns only the fields the caller asked for (``id`` always: the primary key
is a digest; never the primary key as an output field: it comes back anyway), metadata JSON is
parsed only when asked for, the tie rule sorts indices, and only the hits returned become
objects (:class:`~.collection.StoreHit`), or none at all (:class:`IdHits`: ids and a numpy
array of distances per query).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from ..geo import GeoFilter
from ..hits import Hit
from . import keys, place, topk
from .connect import Connection
from .schema import MAX_TOPK, PK_CHUNK

#: the stored fields a search can return besides the id and the distance (``footprint``: the
#: place fields, :data:`rsir_sdk.geo.FIELDS`, read into a hit's ``footprint`` and ``time``)
FIELDS = ("label", "path", "metadata", "footprint")


class IdHits(NamedTuple):
    """One query's hits without their fields: ids in order and their Hamming distances."""

    ids: list[str]
    distances: np.ndarray  # int32, same length as ids


def check_fields(fields: Iterable[str] | None) -> tuple[str, ...]:
    """The output fields asked for, checked (``None``: all of :data:`FIELDS`)."""
    from ..errors import InvalidInputError

    if fields is None:
        return FIELDS
    if isinstance(fields, str):
        raise InvalidInputError(f"fields must be a list such as ['label'], got the string {fields!r}")
    out = tuple(dict.fromkeys(fields))
    bad = [f for f in out if f not in FIELDS]
    if bad:
        raise InvalidInputError(f"fields may name {', '.join(FIELDS)}; not {', '.join(map(str, bad))}")
    return out


def raw(res: Any) -> list[topk.Raw]:
    """pymilvus' search result as ``(pks, int distances, entities)`` per query."""
    out: list[topk.Raw] = []
    for hits in res:
        ents = [dict.__getitem__(h, "entity") for h in hits]
        out.append((list(hits.ids), [int(round(x)) for x in hits.distances], ents))
    return out


@dataclass(frozen=True)
class SearchRequest:
    """What one search asks (one value, not seven arguments): ``k``, the Milvus expression
    ``expr`` built from the filter, ``radius`` (inclusive; ``None``: none), the stored
    ``fields`` to read, Milvus' search ``params`` (e.g. ``{"nprobe": 32}``), the caller's own
    filter string ``user_expr`` (so that Milvus refusing it becomes ``InvalidInputError``) and
    ``exact_ties`` (read whole tie groups at the k-th distance) and ``geo``, an active place
    and period filter (:mod:`.place`) or ``None``."""

    k: int
    expr: str = ""
    radius: int | None = None
    fields: Sequence[str] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    user_expr: str | None = None
    exact_ties: bool = True
    geo: GeoFilter | None = None


def calls(conn: Connection, name: str, request: SearchRequest, anns_field: str = "code",
          extra: Sequence[str] = ()) -> tuple[topk.SearchFn, topk.FetchFn, str, list[str]]:
    """The ``search`` and ``fetch`` functions of :mod:`.topk` for collection ``name`` (vector
    field ``anns_field``), the request's full expression (filter and place) and its output
    fields (``extra`` ones too): what :func:`run` and the fine-code ranking
    (:mod:`.finerank`) share."""
    params, user_expr, geo = request.params, request.user_expr, request.geo
    out_fields = ["id", *extra, *place.output_fields(request.fields)]
    expr = request.expr
    if geo is not None:
        expr = keys.combine(expr, geo.expr())
        if geo.near is not None:  # the exact distance test needs the place fields
            out_fields += [f for f in place.FIELDS if f not in out_fields]

    def search(data: Sequence[bytes], limit: int, expression: str,
               window: tuple[int, int] | None, wanted: list[str]) -> list[topk.Raw]:
        p: dict[str, Any] = {"metric_type": "HAMMING", "params": dict(params)}
        if window is not None:
            p["params"].update({"radius": window[0], "range_filter": window[1]})
        return raw(conn.call(
            "search", name, data=list(data), anns_field=anns_field, limit=limit,
            filter=expression, output_fields=wanted, search_params=p, read=True,
            what=f"search in {name!r}", expression=user_expr,
        ))

    def fetch(pks: Sequence[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for at in range(0, len(pks), PK_CHUNK):
            res = conn.call(
                "query", name, filter=keys.in_list("pk", list(pks[at : at + PK_CHUNK])),
                output_fields=["pk", *out_fields], read=True, what=f"reading hits from {name!r}")
            found.update((r["pk"], r) for r in res)
        return found

    return search, fetch, expr, out_fields


def query_step(k: int) -> int:
    """Queries per search call: 1,000 (one round trip's fixed cost spread), fewer for a large
    ``k``, so that one answer (up to 2k hits a query with exact ties) stays well under gRPC's
    64 MiB."""
    return max(1, min(1000, 500_000 // min(MAX_TOPK, 2 * k)))


def run(conn: Connection, name: str, q: np.ndarray, request: SearchRequest,
        stats: dict[str, int] | None = None, anns_field: str = "code") -> list[list[topk.Found]]:
    """Exact top-``k`` (ties by primary key, :mod:`.topk`) per query with ``id`` and the
    request's fields read; ``stats`` counts the requests (searches, tie-group range searches)
    and hits. ``anns_field``: the vector field searched (``fine`` on a mirror collection)."""
    k, radius, exact_ties, geo = request.k, request.radius, request.exact_ties, request.geo
    search, fetch, expr, out_fields = calls(conn, name, request, anns_field)
    step = query_step(k)
    out: list[list[topk.Found]] = []
    for start in range(0, q.shape[0], step):
        data = [row.tobytes() for row in q[start : start + step]]
        if geo is not None and geo.near is not None:
            out += place.near_topk(search, fetch, data, k, expr, radius, out_fields, stats,
                                   exact_ties, place.keeper(geo))
        else:
            out += topk.exact_topk(search, fetch, data, k, expr, radius, out_fields, stats,
                                   exact_ties)
    return out


def to_hits(found: list[list[topk.Found]], wanted: Sequence[str]) -> list[list[Hit]]:
    """The :class:`~rsir_sdk.hits.Hit` objects of the hits found, with the fields asked for."""
    lab, pat, met = "label" in wanted, "path" in wanted, "metadata" in wanted
    geo = "footprint" in wanted

    def hit(f: topk.Found) -> Hit:
        e = f.entity or {}
        where, when = place.hit_place(e) if geo else (None, None)
        return Hit(f.id, f.distance, (e.get("label") or "") if lab else "",
                   (e.get("path") or "") if pat else "", (e.get("metadata") or {}) if met else {},
                   where, when, f.fine)

    return [[hit(f) for f in row] for row in found]


def id_hits(found: list[list[topk.Found]]) -> list[IdHits]:
    """The lean form: ids and an int32 distance array per query."""
    return [IdHits([f.id for f in row], np.fromiter((f.distance for f in row), np.int32, len(row)))
            for row in found]


def iter_ids(conn: Connection, name: str, count: int) -> Iterator[str]:
    """Every id of ``name``: one query per range of primary-key prefixes (hex digests, so
    ranges are even), each under Milvus' 16,384-row cap; a full page splits its range."""
    depth = 0
    while count > 8000 * 16**depth and depth < 7:
        depth += 1
    yield from _iter_range(conn, name, "", depth)


def _iter_range(conn: Connection, name: str, prefix: str, depth: int) -> Iterator[str]:
    if len(prefix) < depth:
        for ch in "0123456789abcdef":
            yield from _iter_range(conn, name, prefix + ch, depth)
        return
    res = conn.call("query", name, filter=keys.pk_prefix(prefix), output_fields=["id"],
                    limit=MAX_TOPK, read=True, what=f"listing ids of {name!r}")
    if len(res) >= MAX_TOPK:  # a full page: split the range further
        yield from _iter_range(conn, name, prefix, len(prefix) + 1)
        return
    for row in res:
        yield row["id"]
