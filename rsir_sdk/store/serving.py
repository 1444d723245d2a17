"""Serving and admin work of :class:`~.collection.MilvusCodeStore`: leave a server
collection ready to search (seal, index, load, warm; the index policy and its calibration),
rebuild its index by hand, describe the index, drop the collection.

Functions of the store, as :mod:`.reads` and :mod:`.opening` are: the class stays one class
with thin methods (no mixin, issue 23), and this module holds the work so that
:mod:`.collection` stays short.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from ..errors import CollectionNotFoundError, StoreError
from . import fine as companions
from . import opening, server
from .schema import AUTO_INDEX, index_type_of

if TYPE_CHECKING:  # pragma: no cover
    from .collection import MilvusCodeStore


def require_exists(store: "MilvusCodeStore") -> None:
    """Raise :class:`CollectionNotFoundError` (naming the collections there) for a read of a
    collection that was never written."""
    if not store.exists:
        raise CollectionNotFoundError(
            opening.missing_message(store, "it holds no collections: index an archive first"))


def prepare(store: "MilvusCodeStore", timeout: float | None, progress: Any) -> dict[str, Any]:
    """:meth:`~.collection.MilvusCodeStore.prepare_for_search`: the fine-code companions are
    flushed first and waited for after the main collection (one wait, not three)."""
    if store.is_lite or not store.exists:
        return {}
    conn, name = store._conn, store.collection
    if store.fine_bits is not None:
        companions.flush(conn, name)
    out = server.prepare(conn, name, policy=store.index_policy,
                         explicit_params=bool(store.search_params), timeout=timeout,
                         progress=progress)
    if store.fine_bits is not None:
        out["companions"] = companions.prepare(conn, name, timeout, progress)
    store._recorded = server.properties(conn, name)
    store.index_policy = store._recorded.get("policy", store.index_policy)
    return out


def flush(store: "MilvusCodeStore") -> None:
    """:meth:`~.collection.MilvusCodeStore.flush`."""
    if store.is_lite or not store.exists:
        return
    if store.fine_bits is not None:
        companions.flush(store._conn, store.collection)
    store._conn.call("flush", store.collection, what=f"flushing {store.collection!r}")


def set_index(store: "MilvusCodeStore", index_type: str, index_params: Mapping[str, Any] | None,
              calibrate: bool, timeout: float | None, progress: Any) -> dict[str, Any]:
    """:meth:`~.collection.MilvusCodeStore.set_index`."""
    require_exists(store)
    kind = index_type_of(index_type)
    if store.is_lite or kind in (None, AUTO_INDEX):
        raise StoreError("set_index needs a Milvus server and an index type (BIN_FLAT, "
                         "BIN_IVF_FLAT, HNSW); Milvus Lite has BIN_FLAT only")
    out = server.change_index(store._conn, store.collection, str(kind), dict(index_params or {}),
                              calibrate_nprobe=calibrate, timeout=timeout, progress=progress)
    store._recorded = server.properties(store._conn, store.collection)
    store.index_policy = "fixed"
    return out


def index_info(store: "MilvusCodeStore") -> dict[str, Any]:
    """:meth:`~.collection.MilvusCodeStore.index_info`."""
    require_exists(store)
    return server.index_info(store._conn, store.collection, store.index_policy,
                             store.effective_search_params, store._recorded)


def drop(store: "MilvusCodeStore") -> None:
    """:meth:`~.collection.MilvusCodeStore.drop`."""
    if store.exists:
        store._conn.call("drop_collection", store.collection,
                         what=f"dropping collection {store.collection!r}")
        store._conn.forget_collection(store.collection)
        companions.drop(store._conn, store.collection)
        store.exists = False
        store._recorded = {}
        store._fine_gap = None
