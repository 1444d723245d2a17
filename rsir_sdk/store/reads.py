"""Reads by id of a :class:`~rsir_sdk.store.MilvusCodeStore`: ``get``, ``existing_ids``,
``iter_ids`` and the primary-key lookup that ``delete`` shares.

Why a module of its own: every read by id follows one rule, kept in one place. A user's id never
enters an expression; it is looked up by its primary key, the digest of the id (:mod:`.keys`),
in requests of at most ``PK_CHUNK`` keys, and each row that comes back must carry the id its key
was made from (else the collection is damaged and the read says so). A collection never written
holds nothing: these reads return nothing and create nothing. The store's methods of the same
names delegate here (:mod:`.collection` keeps the class; :mod:`.search` lists ids by key range).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from ..errors import StoreError
from ..geo import FIELDS
from ..hits import StoredItem
from . import fine as companions
from . import keys, place, server, values
from . import search as searching
from .schema import PK_CHUNK

if TYPE_CHECKING:  # pragma: no cover
    from .collection import MilvusCodeStore

log = logging.getLogger(__name__)


def by_pk(store: "MilvusCodeStore", ids: Iterable[str], fields: list[str]) -> dict[str, dict[str, Any]]:
    """``{id: row}`` of the given ids that the collection holds (by primary-key digest)."""
    wanted = values.lookup_ids(ids)
    if not wanted or not store.exists:
        return {}
    pks = {keys.digest(i): i for i in wanted}
    order = list(pks)
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(order), PK_CHUNK):
        chunk = order[start : start + PK_CHUNK]
        res = store._conn.call("query", store.collection, filter=keys.in_list("pk", chunk),
                               output_fields=fields, read=True,
                               what=f"reading ids from {store.collection!r}")
        for row in res:
            item_id = pks.get(row.get("pk"))
            if item_id is None or row.get("id") != item_id:
                raise StoreError(
                    f"collection {store.collection!r} holds a row whose id does not match its "
                    f"primary key ({row.get('id')!r:.80}); the collection is damaged: rebuild it"
                )
            found[item_id] = row
    return found


def get(store: "MilvusCodeStore", ids: Iterable[str]) -> list[StoredItem]:
    """Stored items by id (missing ids are left out), in the order asked."""
    wanted = values.lookup_ids(ids)
    fields = ["pk", "id", "code", "label", "path", "metadata"]
    found = by_pk(store, wanted, fields + (list(FIELDS) if store.has_place else []))
    return [
        StoredItem(found[i]["id"], server._code(found[i]["code"]).copy(),
                   found[i].get("label", ""), found[i].get("path", ""),
                   dict(found[i].get("metadata") or {}), *place.hit_place(found[i]))
        for i in wanted if i in found
    ]


def ids_by_path(store: "MilvusCodeStore", paths: Iterable[str]) -> dict[str, str]:
    """``{path: id}`` of stored items whose path is one of ``paths`` (by the path's digest;
    one id per path when several items share it)."""
    wanted = sorted({p for p in paths if isinstance(p, str) and p})
    if not wanted or not store.exists:
        return {}
    found: dict[str, str] = {}
    for start in range(0, len(wanted), PK_CHUNK):
        chunk = wanted[start : start + PK_CHUNK]
        res = store._conn.call("query", store.collection, filter=keys.build_filter({"path": chunk}),
                               output_fields=["id", "path"], read=True,
                               what=f"reading paths from {store.collection!r}")
        for row in res:
            if row.get("path") in chunk:
                found.setdefault(row["path"], row["id"])
    return found


def existing_ids(store: "MilvusCodeStore", ids: Iterable[str]) -> set[str]:
    """The subset of ``ids`` that the collection holds: with its fine-code row too, where the
    collection keeps them and some rows lack theirs (:func:`fine_gap`)."""
    found = set(by_pk(store, ids, ["pk", "id"]))
    if not found or store.fine_bits is None or not fine_gap(store):
        return found
    return found & companions.ids_held(store._conn, companions.mirror(store.collection), found)


def fine_gap(store: "MilvusCodeStore") -> int:
    """How many more items the collection holds than fine-code rows (counted once per store).

    Why: a server restart lost rows not yet flushed, the main collection's and its
    companion's separately; items left without a fine-code row vanish from tie-ranked and
    appearance searches, and a plain re-run skipped them as present. Counting the gap makes
    :func:`existing_ids` leave them out, so ``rsir index`` run again writes them again."""
    if store._fine_gap is None:
        store._fine_gap = max(0, count(store, None, None) - fine_rows(store))
        if store._fine_gap:
            log.warning("collection %s holds %d items without their fine-code row (rows lost "
                        "before a flush, e.g. by a server restart): an index run writes them "
                        "again", store.collection, store._fine_gap)
    return store._fine_gap


def iter_ids(store: "MilvusCodeStore") -> Iterator[str]:
    """Every stored id, once each (lazily: nothing is asked before the first id is wanted)."""
    if store.exists:
        yield from searching.iter_ids(store._conn, store.collection, store.count())


def count(store: "MilvusCodeStore", filter: Any, geo: Any) -> int:
    """:meth:`~.collection.MilvusCodeStore.count`: one count query, or for ``near`` an exact
    count of the rows the engine's box prefilter keeps (:func:`.place.count_exact`)."""
    expr = keys.build_filter(filter)
    geo = store.check_geo(geo)
    if not store.exists:
        return 0
    expression = filter if isinstance(filter, str) else None
    if geo is not None:
        expr = keys.combine(expr, geo.expr())
        if geo.near is not None:
            return place.count_exact(store._conn, store.collection, expr, geo, expression)
    res = store._conn.call("query", store.collection, filter=expr, output_fields=["count(*)"],
                           read=True, what=f"count in {store.collection!r}",
                           expression=expression)
    return int(res[0]["count(*)"])


def fine_rows(store: "MilvusCodeStore") -> int:
    """Rows of the collection's fine-code companion (0 when it keeps none or was never
    written)."""
    if store.fine_bits is None or not store.exists:
        return 0
    return companions.count_rows(store._conn, companions.mirror(store.collection))
