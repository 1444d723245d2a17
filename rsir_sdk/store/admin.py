"""Collections at a uri: list them, describe them, drop one whatever its layout."""

from __future__ import annotations

import os
from typing import Any

from ..errors import CollectionMismatchError, CollectionNotFoundError, InvalidInputError, StoreError
from . import fine, values
from .collection import MilvusCodeStore
from .connect import Connection
from .schema import is_lite_uri


def list_collections(uri: str = "./rsir.db", token: str | None = None) -> list[str]:
    """Names of the collections at ``uri`` (a missing Milvus Lite file holds none)."""
    if lite_missing(uri):
        return []
    conn = Connection(str(uri), token, None)
    try:
        return conn.names(strict=True)
    finally:
        conn.close()


def describe_collections(uri: str = "./rsir.db", token: str | None = None) -> list[dict[str, Any]]:
    """:meth:`MilvusCodeStore.info` of each collection at ``uri``; a collection that cannot be
    opened (another layout, not made by rsir-sdk) gives ``{"collection": name, "error": why}``."""
    if lite_missing(uri):
        return []
    conn = Connection(str(uri), token, None)  # held open: one Milvus Lite server for all
    try:
        out = []
        for name in conn.names(strict=True):
            try:
                with MilvusCodeStore(uri, name, token=token, create=False) as store:
                    out.append(store.info())
            except (StoreError, CollectionMismatchError, InvalidInputError) as exc:
                out.append({"collection": name, "error": str(exc)})
        return out
    finally:
        conn.close()


def drop_collection(uri: str, collection: str, token: str | None = None) -> int | None:
    """Drop ``collection`` at ``uri`` whatever its layout (also a format-1 collection, to
    rebuild it) with its fine-code companions; returns how many items it held (``None`` when
    that cannot be read).

    Raises :class:`~rsir_sdk.errors.CollectionNotFoundError` naming the collections there.
    """
    name = values.collection_name(collection)
    if lite_missing(uri):
        raise CollectionNotFoundError(f"no Milvus Lite file at {uri}")
    conn = Connection(str(uri), token, None)
    try:
        if not conn.call("has_collection", name, what=f"opening collection {name!r}"):
            names = conn.names()
            raise CollectionNotFoundError(
                f"collection {name!r} does not exist at {conn.display_uri}; "
                + (f"collections there: {', '.join(names)}" if names else "it holds no collections")
            )
        try:
            n: int | None = int(conn.call("query", name, filter="", output_fields=["count(*)"],
                                          read=True, what="count")[0]["count(*)"])
        except StoreError:
            n = None
        conn.call("drop_collection", name, what=f"dropping collection {name!r}")
        fine.drop(conn, name)  # its fine-code companions, when it has them
        return n
    finally:
        conn.close()


def lite_missing(uri: str) -> bool:
    """True for a Milvus Lite path whose file does not exist."""
    return is_lite_uri(str(uri)) and not os.path.exists(os.path.expanduser(str(uri)))
