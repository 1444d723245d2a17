"""The Milvus code store: the only part of rsir-sdk that talks to pymilvus.

:class:`MilvusCodeStore` keeps packed binary codes in a ``BINARY_VECTOR`` collection (HAMMING)
with ids, labels, paths and JSON metadata; :mod:`.lite` handles Milvus Lite's server process;
:mod:`.schema` holds the collection's field limits (no pymilvus import).
"""

from .collection import (
    MilvusCodeStore,
    StoredItem,
    StoreHit,
    build_filter,
    check_same_encoder,
    list_collections,
)
from .lite import wait_for_lite_file
from .schema import MAX_ID_LEN, MAX_LABEL_LEN, MAX_PATH_LEN, MAX_TOPK, is_lite_uri

__all__ = [
    "MAX_ID_LEN",
    "MAX_LABEL_LEN",
    "MAX_PATH_LEN",
    "MAX_TOPK",
    "MilvusCodeStore",
    "StoreHit",
    "StoredItem",
    "build_filter",
    "check_same_encoder",
    "is_lite_uri",
    "list_collections",
    "wait_for_lite_file",
]
