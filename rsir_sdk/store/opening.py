"""Opening a collection: checks for a new one, and what an existing one records.

Split from :mod:`.collection` (which keeps the store's verbs) because opening is one job: it
decides whether the collection exists, refuses a length, encoder or index type that cannot
work with it, and reads back what it recorded (bits, encoder, index policy, place fields,
fine codes) before any read or write runs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Mapping

from ..codes import validate_bits
from ..errors import CodeLengthError, CollectionMismatchError, CollectionNotFoundError, StoreError
from . import fine, server
from .schema import (
    AUTO_INDEX,
    check_same_encoder,
    fine_bits_of,
    has_place,
    index_policy,
    read_description,
    scene_test_of,
)

if TYPE_CHECKING:  # pragma: no cover
    from .collection import MilvusCodeStore
    from .connect import Connection

log = logging.getLogger(__name__)


def check_new(store: "MilvusCodeStore", bits: int | None, encoder: Mapping[str, Any] | None,
              create: bool, index_type: str | None) -> tuple[int, dict[str, Any] | None]:
    """``(bits, encoder)`` of a collection the first write will create, checked now."""
    if not create:
        raise CollectionNotFoundError(missing_message(store, "it holds no collections"))
    if bits is None:
        raise CodeLengthError(
            f"collection {store.collection!r} does not exist yet: give bits= to create it"
        )
    bits = validate_bits(bits)
    enc = dict(encoder) if encoder else None
    if enc and int(enc.get("bits", bits)) != bits:
        raise CodeLengthError(f"encoder makes {enc['bits']}-bit codes but bits={bits}")
    _check_lite_index(store, index_type)
    return bits, enc


def _check_lite_index(store: "MilvusCodeStore", index_type: str | None) -> None:
    if store.is_lite and index_type not in (None, AUTO_INDEX, "BIN_FLAT"):
        raise StoreError(
            f"Milvus Lite supports only the BIN_FLAT index for binary vectors, not "
            f"{index_type}; use a Milvus server URI for {index_type}"
        )


def check_kept_index(store: "MilvusCodeStore", index_type: str | None) -> None:
    """An index type asked of a collection that exists: refused on Lite as for a new one; on a
    server one warning when the collection's index is another (it keeps it: the type applies
    when a collection is made), instead of taking the option without a word."""
    _check_lite_index(store, index_type)
    if store.is_lite or index_type in (None, AUTO_INDEX):
        return
    try:
        held = server.describe_index(store._conn, store.collection).get("index_type")
    except StoreError:  # no index yet (a collection half made): nothing is kept
        return
    if held and held != index_type:
        log.warning("collection %s exists with a %s index and keeps it: index_type %s applies "
                    "to a new collection only (store.set_index(%r, params) rebuilds it)",
                    store.collection, held, index_type, index_type)


def missing_message(store: "MilvusCodeStore", none: str) -> str:
    """Why a collection cannot be read: the Lite file or the collection is missing (naming
    the collections there, else ``none``)."""
    conn = store._conn
    if conn.lite_missing:
        return (f"Milvus Lite file {store.display_uri} does not exist: check the path, or "
                f"index an archive first (a read creates no file)")
    names = [n for n in conn.names() if n != store.collection]
    others = f"collections there: {', '.join(names)}" if names else none
    return (f"collection {store.collection!r} does not exist at {store.display_uri} (nothing "
            f"was written to it); " + others)


def open_existing(store: "MilvusCodeStore", bits: int | None,
                  encoder: Mapping[str, Any] | None) -> tuple[int, dict[str, Any] | None]:
    """``(bits, encoder)`` an existing collection records; sets the store's index policy,
    place and fine-code attributes. Refuses another code length or another encoder."""
    desc = store._conn.call("describe_collection", store.collection,
                            what=f"opening collection {store.collection!r}")
    dim, stored_encoder = read_description(desc, store.collection, store.display_uri)
    if bits is not None and validate_bits(bits) != dim:
        raise CollectionMismatchError(
            f"collection {store.collection!r} holds {dim}-bit codes, not {bits}-bit: use a "
            f"bundle with {dim} bits or another collection"
        )
    if encoder and stored_encoder:
        check_same_encoder(stored_encoder, encoder, store.collection)
    store.index_policy = index_policy(desc)
    store.has_place = has_place(desc)
    store.fine_bits = fine_bits_of(desc)
    store.scene_test = scene_test_of(desc) if store.fine_bits else None
    if not store.is_lite:
        store._recorded = server.properties(store._conn, store.collection)
        store.index_policy = store._recorded.get("policy", store.index_policy)
        for name in (store.collection,) + (fine.companions(store.collection)
                                           if store.fine_bits else ()):
            load_if_released(store._conn, name)
    return dim, stored_encoder or (dict(encoder) if encoder else None)


def load_if_released(conn: "Connection", name: str) -> None:
    """Load a server collection that is not loaded, or wait for one being loaded.

    A run killed between creating a collection and loading it left it not loaded, and every
    later read failed "collection not loaded" (rsir index could not resume, rsir serve could not
    start) until it was dropped. After a server restart every collection is being loaded again
    for a while (seconds to minutes, with its size): a read then failed the same way, so the
    open waits for that load (a load request on a loading collection returns when it is done).
    """
    state = conn.call("get_load_state", name, what=f"opening collection {name!r}")
    state_name = getattr(state.get("state"), "name", str(state.get("state")))
    if state_name == "NotLoad":
        log.info("loading collection %s: it was left not loaded (a run stopped while making "
                 "it)", name)
    elif state_name == "Loading":
        log.info("waiting for collection %s to finish loading (the server is starting or was "
                 "restarted)", name)
    else:
        return
    conn.call("load_collection", name, what=f"loading {name!r}")
