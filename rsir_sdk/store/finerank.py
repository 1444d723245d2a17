"""Ranking by the fine code (issue 20): each tie group most similar first, and the appearance mode.

Trained retrieval codes collapse to about one code per class, so the store's order inside a
distance (the digest of the id) is a random sample of the class. When the collection keeps fine
codes (:mod:`.fine`) and the query gives its own, the default ranking is (retrieval distance,
fine distance, digest): class-level results are exactly today's, and every tie group comes back
most similar first. ``mode="appearance"`` ranks by (fine distance, digest) alone.

The default ranking, per query (batched over queries, as :mod:`.topk` does):

0. **The query's own code** (collections whose codes repeat at least ``k`` times on average,
   :func:`_collapsed`: trained codes): the items at distance 0 are exactly those whose
   ``code_key`` is the query's, so the mirror's exact fine top-k under ``code_key == key`` and
   the filter is the whole answer whenever it fills the k places: one request instead of
   three (main search, codebook, fine search). A query whose code holds fewer items takes
   steps 1-2 (that one request is then wasted). Why: the same-file query on 100,000 collapsed
   codes on Milvus Lite went from 5.5 ms to 3.5 ms p50 (random codes: 2.2-2.5 ms), inside the
   2x of issue 20 (``benchmarks/similar_scale.py``).
1. Search the main collection (``limit = min(16384, max(2k, 64))``), reading with each hit its
   fine code (the main collection's ``fine_hex`` field) and the fields asked for; sort by
   (d, pk); ``dk`` is the k-th distance. Items nearer than ``dk`` are all present: each
   distance group is ordered by (fine distance, pk) here, at no extra request.
2. The group at ``dk``: when it came back whole (fewer than the limit, or the last hit farther
   than ``dk``) it is ordered the same way. Else (a big tie group: collapsed codes) it is **not
   read whole**: a range search of the codebook at exactly ``dk`` gives the distinct retrieval
   codes there, and the mirror's fine field is searched (exact top-k, ties by pk) under
   ``code_key in [...]`` and the same filter, for the places left. Queries that share the
   codes and the places left share one request.
   The mirror holds the main collection's fields, so these hits come with theirs.

3. **Near-duplicates first**: the mirror's exact top-k by (fine distance, pk), one request per
   batch of queries under the same filter; its hits within the near-duplicate radius
   (:func:`rsir_sdk.codes.near_duplicate_radius`: 12 bits of 128), or else its nearest when
   that passes the ratio test (:func:`rsir_sdk.codes.ratio_leader`: clearly nearer than the
   runner-up), each with its retrieval distance computed from its ``code_key``, lead the list;
   the ranked items follow (without them). Why: the
   same scene stored under another retrieval code (AHCL's learned codes V, which need not equal
   the network's code for that image; an int8 encoder; a re-encoded copy) sits a few bits
   away while a whole class ties nearer, and no order that keeps the retrieval distance first
   can bring it back (``benchmarks/similar.py``, learned rows: the same file at rank 1 for 0.944
   of nwpu12 AHCL 32 queries before this step). The in-memory rule is
   :func:`rsir_sdk.codes.fine_ranking_key`. ``search_stats["near_searches"]`` counts it.

A ``near`` place filter (an exact great-circle test after the engine's box) reads the group at
``dk`` whole (:func:`.topk._all_at`) and orders it here. So does a ``dk`` with more than
:data:`MAX_CODE_KEYS` distinct codes (random-like codes; their groups are small).
``search_stats`` counts ``searches`` and ``range_searches`` (whole tie-group reads) as before,
``codebook_searches`` and ``fine_searches`` (the mirror's top-k under the code filter), and
``own_code_searches`` (step 0).

Why ``fine_hex`` in the main collection besides the mirror: reading fine codes from the mirror by
primary key cost a scan per request (about 30 ms at 100k rows on Milvus Lite), ten times a
search on random-like codes; as a field of the hits it costs nothing. The mirror is still what
the big tie groups, the appearance mode and :mod:`.dupes` search (a vector field). Collections
made before fine codes have neither, and search as before.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..codes import (
    SCENE_TEST_CANDIDATES,
    SceneTest,
    as_packed,
    hamming_distances,
    near_duplicate_radius,
    ratio_leader,
)
from ..errors import CollectionMismatchError, InvalidInputError
from ..hits import SEARCH_MODES
from . import fine, keys, place, topk
from . import search as searching
from .schema import MAX_TOPK, rebuild_steps

if TYPE_CHECKING:  # pragma: no cover
    from .collection import MilvusCodeStore

Found = topk.Found
#: past this many distinct retrieval codes at ``dk``, the tie group is read whole instead (the
#: ``code_key in [...]`` expression would grow past what is cheap to parse; such groups are small)
MAX_CODE_KEYS = 1000


def check_mode(mode: Any) -> str:
    """``mode`` checked against :data:`rsir_sdk.hits.SEARCH_MODES`."""
    if mode not in SEARCH_MODES:
        raise InvalidInputError(f"mode must be one of {', '.join(SEARCH_MODES)}, got {mode!r:.40}")
    return str(mode)


def refuse_appearance(store: "MilvusCodeStore") -> CollectionMismatchError:
    """The one line for the appearance mode on a collection that keeps no fine codes."""
    return CollectionMismatchError(
        f"collection {store.collection!r} at {store.display_uri} keeps no fine codes (made "
        f"before them, or without them), so it cannot search by appearance; to rebuild it with "
        f"a bundle that has a fine code, " + rebuild_steps(store.collection, store.display_uri))


def queries(store: "MilvusCodeStore", codes: Any, fine_codes: Any,
            mode: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(retrieval queries, fine queries)`` of a search, checked. The fine queries are
    ``None`` when the ranking does not use them (none given, or the collection keeps none)."""
    mode = check_mode(mode)
    if mode == "appearance":
        store._require_exists()
        if store.fine_bits is None:
            raise refuse_appearance(store)
        if fine_codes is None:
            raise InvalidInputError("mode='appearance' searches by the fine code: pass fine= "
                                    "(the queries' fine codes, Encoder.encode_both)")
        fq: np.ndarray | None = as_packed(fine_codes, store.fine_bits, "fine codes")
        q: np.ndarray | None = None if codes is None else as_packed(codes, store.bits)
    else:
        q = as_packed(codes, store.bits)
        use = fine_codes is not None and store.fine_bits is not None
        fq = as_packed(fine_codes, store.fine_bits) if use else None
    if q is not None and fq is not None and q.shape[0] != fq.shape[0]:
        raise InvalidInputError(f"{q.shape[0]} codes but {fq.shape[0]} fine codes")
    return q, fq


def run(store: "MilvusCodeStore", q: np.ndarray | None, fq: np.ndarray,
        request: searching.SearchRequest, mode: str) -> list[list[Found]]:
    """The search of :meth:`~rsir_sdk.store.MilvusCodeStore.search` with fine codes."""
    conn, name, stats = store._conn, store.collection, store.search_stats
    if mode == "appearance":
        found = searching.run(conn, fine.mirror(name), fq, replace(request, params={}), stats,
                              anns_field="fine")
        for row in found:
            for f in row:
                f.fine = f.distance
        return found
    assert q is not None
    out: list[list[Found]] = []
    step = searching.query_step(max(request.k, MIN_LIMIT // 2))
    for start in range(0, q.shape[0], step):
        part = slice(start, start + step)
        out += _near_first(store, q[part], fq[part], request,
                           _default(store, q[part], fq[part], request))
    return out


def _near_first(store: "MilvusCodeStore", q: np.ndarray, fq: np.ndarray,
                request: searching.SearchRequest, ranked: list[list[Found]]) -> list[list[Found]]:
    """Step 3: the near-duplicates first. The mirror's exact top-k by (fine distance, pk) (one
    request for the batch, under the same filter and place); its hits within
    :func:`~rsir_sdk.codes.near_duplicate_radius`, or its nearest when that passes the ratio
    test (:func:`_leaders`), each with its retrieval distance computed from its ``code_key``,
    lead each query's list (those within ``radius``, when one is given), the ranked items follow.
    Why: an item of the same scene whose retrieval code differs from the query's (AHCL's learned
    codes, an int8 encoder, a re-encoded copy) can sit behind a whole class at a smaller
    distance; the rule is :func:`~rsir_sdk.codes.fine_ranking_key`, the in-memory reference."""
    conn, name, stats, bits = store._conn, store.collection, store.search_stats, store.bits
    assert store.fine_bits is not None
    test = store.scene_test
    msearch, mfetch, expr, fields = searching.calls(
        conn, fine.mirror(name), replace(request, params={}), "fine",
        extra=(CODE_KEY, FINE_HEX) if test is not None else (CODE_KEY,))
    data, k, geo = [row.tobytes() for row in fq], request.k, request.geo
    sub: dict[str, int] = {}
    # the ratio test reads the runner-up; a scene test reads its candidates' parts
    depth = max(k, 2 if test is None else SCENE_TEST_CANDIDATES)
    if geo is not None and geo.near is not None:
        nearest = place.near_topk(msearch, mfetch, data, depth, expr, None, fields, sub, True,
                                  place.keeper(geo))
    else:
        nearest = topk.exact_topk(msearch, mfetch, data, depth, expr, None, fields, sub)
    stats["near_searches"] = stats.get("near_searches", 0) + sub.get("searches", 0)
    stats["fine_range_searches"] = stats.get("fine_range_searches", 0) + sub.get("range_searches", 0)
    out = []
    for qi, (row, hits) in enumerate(zip(ranked, nearest)):
        lead = _leaders(hits, store.fine_bits, None if test is None else (test, fq[qi]))
        first = [_with_retrieval_distance(f, q[qi], bits) for f in lead]
        if request.radius is not None:
            first = [f for f in first if f.distance <= request.radius]
        seen = {f.pk for f in first}
        out.append((first + [f for f in row if f.pk not in seen])[:k] if first else row)
    return out


def _leaders(nearest: list[Found], fine_bits: int,
             scene: tuple[SceneTest, np.ndarray] | None = None) -> list[Found]:
    """The near-duplicates among one query's exact fine top-k (by fine distance, pk): those
    within the radius, and the nearest when it passes the ratio test (as
    :func:`~rsir_sdk.codes.ratio_leader` and :func:`~rsir_sdk.codes.fine_ranking_key`).
    ``scene`` (the collection's :class:`~rsir_sdk.codes.SceneTest` and the query's fine code):
    its tests read the weighted parts of the first :data:`~rsir_sdk.codes.SCENE_TEST_CANDIDATES`
    hits instead (their ``fine_hex``; :func:`~rsir_sdk.codes.scene_leader`), and the item that
    passes any of them joins those within the radius."""
    within = near_duplicate_radius(fine_bits)
    lead = [f for f in nearest if f.distance <= within]
    if len(nearest) < 2:
        return lead
    if scene is None:  # the leader is the nearest: within the radius whenever any item is
        return lead or (nearest[:1] if ratio_leader(
            np.array([nearest[0].distance, nearest[1].distance]))[0] else [])
    # the scene leader need not be the nearest: it joins those within the radius, in order
    test, fq = scene
    cands = nearest[:SCENE_TEST_CANDIDATES]
    hexes = [(f.entity or {}).get(FINE_HEX) or "" for f in cands]
    if any(len(h) != 2 * fq.size for h in hexes):
        return lead  # a row written without its fine code: no same-scene claim
    db = np.frombuffer(bytes.fromhex("".join(hexes)), np.uint8).reshape(len(cands), fq.size)
    # the candidates are the 10 nearest already, in the store's order: the rule reads them all
    passed = test.leaders(fq[None, :], db, np.array([[f.distance for f in cands]]))[0]
    leader = {f.pk for f, p in zip(cands, passed) if p}
    return [f for f in nearest if f.distance <= within or f.pk in leader]


#: the mirror's field holding each item's retrieval code as a key (:func:`.fine.code_keys`)
CODE_KEY = "code_key"


def _with_retrieval_distance(hit: Found, q: np.ndarray, bits: int) -> Found:
    """A mirror hit (its distance is the fine code's) as a ranked item: the retrieval distance
    from its ``code_key``, the fine distance in ``fine``, ``code_key`` dropped from its fields."""
    entity = dict(hit.entity or {"id": hit.id})
    entity.pop(FINE_HEX, None)  # read for the scene test; the main path's hits drop it too
    code = fine.code_of_key(entity.pop(CODE_KEY), bits)
    d = int(hamming_distances(q[None, :], code[None, :])[0, 0])
    return Found(hit.pk, hit.id, d, entity, hit.distance)


def _default(store: "MilvusCodeStore", q: np.ndarray, fq: np.ndarray,
             request: searching.SearchRequest) -> list[list[Found]]:
    """(distance, fine distance, pk) top-k of one batch of queries, with their fields: the
    queries whose own code's group fills the k places (:func:`_own_codes`), the rest by the
    main search (:func:`_ranked`)."""
    geo = request.geo
    done: dict[int, list[Found]] = {}
    if (geo is None or geo.near is None) and _collapsed(store, request.k):
        done = _own_codes(store, q, fq, request)
    rest = [i for i in range(q.shape[0]) if i not in done]
    if rest:
        done.update(zip(rest, _ranked(store, q[rest], fq[rest], request)))
    return [done[i] for i in range(q.shape[0])]


#: seconds a store's shape (items, distinct codes: :func:`_collapsed`) is trusted before it is
#: counted again (it only chooses between two exact paths: a stale one costs time, not order)
SHAPE_TTL_S = 30.0
#: a batch whose queries hold more distinct codes than this skips :func:`_own_codes` (one
#: request per distinct code; the main search serves any number of queries in one)
MAX_OWN_CODES = 64
_shapes: "weakref.WeakKeyDictionary[MilvusCodeStore, tuple[float, float]]" = (
    weakref.WeakKeyDictionary())


def _collapsed(store: "MilvusCodeStore", k: int) -> bool:
    """Whether the collection's codes repeat at least ``k`` times on average (items / rows of
    the codebook, counted at most every :data:`SHAPE_TTL_S`): then a query's own code usually
    holds its whole top-k, and :func:`_own_codes` answers it in one request."""
    now = time.monotonic()
    cached = _shapes.get(store)
    if cached is None or now - cached[0] > SHAPE_TTL_S:
        conn, name = store._conn, store.collection
        counts = [int(conn.call("query", c, filter="", output_fields=["count(*)"], read=True,
                                what=f"count in {c!r}")[0]["count(*)"])
                  for c in (name, fine.codebook(name))]
        cached = (now, counts[0] / max(1, counts[1]))
        _shapes[store] = cached
    return cached[1] >= max(2, k)


def _own_codes(store: "MilvusCodeStore", q: np.ndarray, fq: np.ndarray,
               request: searching.SearchRequest) -> dict[int, list[Found]]:
    """The queries answered by their own retrieval code alone: the items at distance 0 are
    exactly those whose ``code_key`` is the query's, so the mirror's exact fine top-k under
    ``code_key == key`` (and the filter) is the query's top-k whenever it fills all k places
    (every other item is farther). Queries that share a code share the request; those whose
    group is smaller are left to :func:`_ranked`."""
    conn, name, stats = store._conn, store.collection, store.search_stats
    k, expr = request.k, searching.calls(conn, name, request)[2]
    by_code: dict[bytes, list[int]] = {}
    for i, row in enumerate(q):
        by_code.setdefault(row.tobytes(), []).append(i)
    if len(by_code) > MAX_OWN_CODES:
        return {}
    msearch, mfetch, _, mirror_fields = searching.calls(
        conn, fine.mirror(name), searching.SearchRequest(
            k=1, fields=request.fields, user_expr=request.user_expr), "fine")
    done: dict[int, list[Found]] = {}
    for code, qis in by_code.items():
        sub: dict[str, int] = {}
        tails = topk.exact_topk(msearch, mfetch, [fq[i].tobytes() for i in qis], k,
                                keys.combine(fine.code_in([code.hex()], store.bits), expr),
                                None, mirror_fields, sub)
        stats["own_code_searches"] = stats.get("own_code_searches", 0) + sub.get("searches", 0)
        stats["fine_range_searches"] = (stats.get("fine_range_searches", 0)
                                        + sub.get("range_searches", 0))
        for i, tail in zip(qis, tails):
            if len(tail) >= k:
                done[i] = [Found(f.pk, f.id, 0, f.entity, f.distance) for f in tail]
    return done


def _ranked(store: "MilvusCodeStore", q: np.ndarray, fq: np.ndarray,
            request: searching.SearchRequest) -> list[list[Found]]:
    """The general path: the main search, then the big tie groups at ``dk``."""
    conn, name, stats = store._conn, store.collection, store.search_stats
    search, fetch, expr, out_fields = searching.calls(conn, name, request, extra=(FINE_HEX,))
    data = [row.tobytes() for row in q]
    k, geo = request.k, request.geo
    if geo is not None and geo.near is not None:
        rows = place.near_topk(search, fetch, data, k, expr, request.radius, out_fields, stats,
                               True, place.keeper(geo))
        plans = [_near_plan(search, fetch, data[i], row, k, expr, stats, place.keeper(geo))
                 for i, row in enumerate(rows)]
    else:
        plans = _plans(search, data, k, expr, request.radius, out_fields, stats)
    out = []
    for i, (cands, _, _) in enumerate(plans):
        _set_fine(cands, fq[i])
        out.append(sorted(cands, key=_fine_key))
    _fill_ties(store, plans, out, (data, fq), (expr, request.fields, fetch))
    for row in out:
        del row[k:]
    return out


#: the main collection's field holding each item's fine code as hex (collections that keep
#: fine codes): read with the hits of the first search, so ordering a distance group by the
#: fine code costs no request of its own
FINE_HEX = "fine_hex"
#: one query's plan: (items ordered here, the k-th distance when its tie group is left to the
#: codebook path else ``None``, how many places that group fills)
Plan = tuple[list[Found], "int | None", int]


def _plans(search: topk.SearchFn, data: list[bytes], k: int, expr: str, radius: int | None,
           out_fields: list[str], stats: dict[str, int]) -> list[Plan]:
    """Step 1: the main search and, per query, what is ordered here and what is left. The
    limit is at least :data:`MIN_LIMIT`, so that the small tie groups of random-like codes
    come back whole."""
    limit = min(MAX_TOPK, max(2 * k, MIN_LIMIT))
    window = None if radius is None else (radius + 1, 0)  # Milvus: range_filter <= d < radius
    raw = search(data, limit, expr, window, out_fields)
    stats["searches"] = stats.get("searches", 0) + 1
    stats["hits"] = stats.get("hits", 0) + sum(len(r[0]) for r in raw)
    plans: list[Plan] = []
    for pks, dist, ents in raw:
        order = sorted(range(len(pks)), key=lambda i: (dist[i], pks[i]))
        found = [Found(pks[i], ents[i]["id"], dist[i], ents[i]) for i in order]
        if not found:
            plans.append(([], None, 0))
            continue
        dk = found[min(k, len(found)) - 1].distance
        if len(found) < limit or found[-1].distance > dk:  # the group at dk is whole
            plans.append(([f for f in found if f.distance <= dk], None, 0))
        else:
            head = [f for f in found if f.distance < dk]
            plans.append((head, dk, k - len(head)))
    return plans


#: the first search's least limit (hits with a 32-character fine code each: cheap)
MIN_LIMIT = 64


def _near_plan(search: topk.SearchFn, fetch: topk.FetchFn, q: bytes, row: list[Found], k: int,
               expr: str, stats: dict[str, int], keep: Any) -> Plan:
    """A ``near`` query: its exact top-k by (d, pk) gives ``dk``; the whole group at ``dk``
    is read, its place tested, and everything ordered here."""
    if len(row) < k:
        return (row, None, 0)
    dk = row[k - 1].distance
    group = {f.pk: f for f in row if f.distance == dk}
    more = [h for h in topk._all_at(search, q, dk, expr, stats) if h.pk not in group]
    rows = fetch([h.pk for h in more]) if more else {}
    for h in more:
        if h.pk in rows and keep(rows[h.pk]):
            h.entity = rows[h.pk]
            group[h.pk] = h
    return ([f for f in row if f.distance < dk] + list(group.values()), None, 0)


def _fine_key(f: Found) -> tuple[int, int, str]:
    return (f.distance, f.fine if f.fine is not None else 1 << 30, f.pk)


def _set_fine(cands: list[Found], fq: np.ndarray) -> None:
    """Each candidate's fine distance to the query, from its ``fine_hex`` (an item without
    one sorts last in its distance group)."""
    have = [f for f in cands if f.entity and len(f.entity.get(FINE_HEX) or "") == 2 * fq.size]
    if not have:
        return
    codes = np.frombuffer(bytes.fromhex("".join(f.entity[FINE_HEX] for f in have)),  # type: ignore[index]
                          np.uint8).reshape(len(have), fq.size)
    for f, x in zip(have, hamming_distances(fq[None, :], codes)[0]):
        f.fine = int(x)


def _fill_ties(store: "MilvusCodeStore", plans: list[Plan], out: list[list[Found]],
               queries: tuple[list[bytes], np.ndarray], ctx: tuple[str, Any, Any]) -> None:
    """Step 2: the big tie groups at ``dk``, through the codebook and the mirror's fine field
    (or read whole when the codebook says the group spans too many codes)."""
    conn, name, stats = store._conn, store.collection, store.search_stats
    (data, fq), (expr, fields, fetch) = queries, ctx
    open_ = [i for i, (_, dk, _) in enumerate(plans) if dk is not None]
    if not open_:
        return
    cb_search = searching.calls(conn, fine.codebook(name), searching.SearchRequest(k=1))[0]
    by_dk: dict[int, list[int]] = {}
    for i in open_:
        by_dk.setdefault(int(plans[i][1]), []).append(i)  # type: ignore[arg-type]
    tasks: dict[tuple[int, tuple[str, ...], int], list[int]] = {}
    for dk, qis in by_dk.items():
        for at in range(0, len(qis), topk.TIE_BATCH):
            part = qis[at : at + topk.TIE_BATCH]
            stats["codebook_searches"] = stats.get("codebook_searches", 0) + 1
            res = cb_search([data[i] for i in part], MAX_TOPK, "", (dk + 1, dk), [])
            for i, (code_keys, _, _) in zip(part, res):
                if len(code_keys) > MAX_CODE_KEYS or not code_keys:
                    out[i] = _whole_group(store, out[i], dk, (data[i], fq[i]), (expr, fetch))
                else:
                    tasks.setdefault((dk, tuple(sorted(code_keys)), plans[i][2]), []).append(i)
    # the mirror holds the main collection's fields: its hits come with those asked for
    msearch, mfetch, _, mirror_fields = searching.calls(
        conn, fine.mirror(name), searching.SearchRequest(k=1, fields=fields), "fine")
    for (dk, keys_at, want), qis in tasks.items():
        sub: dict[str, int] = {}
        tails = topk.exact_topk(msearch, mfetch, [fq[i].tobytes() for i in qis], want,
                                keys.combine(fine.code_in(keys_at, store.bits), expr), None,
                                mirror_fields, sub)
        stats["fine_searches"] = stats.get("fine_searches", 0) + sub.get("searches", 0)
        stats["fine_range_searches"] = (stats.get("fine_range_searches", 0)
                                        + sub.get("range_searches", 0))
        for i, tail in zip(qis, tails):
            out[i] = out[i] + [Found(f.pk, f.id, dk, f.entity, f.distance) for f in tail]


def _whole_group(store: "MilvusCodeStore", head: list[Found], dk: int,
                 query: tuple[bytes, np.ndarray], ctx: tuple[str, Any]) -> list[Found]:
    """The fallback of step 2: read the whole group at ``dk`` (ids, then the fields and fine
    codes by primary key) and order it after the (ordered) ``head``."""
    (q, fq), (expr, fetch) = query, ctx
    search = searching.calls(store._conn, store.collection,
                             searching.SearchRequest(k=1, params=store.effective_search_params))[0]
    group = topk._all_at(search, q, dk, expr, store.search_stats)
    rows = fetch([f.pk for f in group])
    for f in group:
        f.entity = rows.get(f.pk, {"id": f.id})
    _set_fine(group, fq)
    return head + sorted(group, key=_fine_key)
