"""The Milvus code store: the only part of rsir-sdk that talks to pymilvus.

:class:`MilvusCodeStore` keeps packed binary codes in a ``BINARY_VECTOR`` collection (HAMMING)
with ids, labels, paths and JSON metadata. By job: :mod:`.schema` (fields, limits, layout
version), :mod:`.values` (what may be stored or asked), :mod:`.keys` (digests: the only way user
text reaches an expression), :mod:`.rows` (a write's rows and batches), :mod:`.topk` (exact
top-k, ties by id), :mod:`.connect` and :mod:`.rpc` (calls, retries, one-line errors),
:mod:`.lite` (Milvus Lite's server process and file), :mod:`.collection` (the store).
"""

import os as _os

# gRPC's C core prints fork/log lines unless told not to before grpc is first imported
# (pymilvus imports it); a value the user set wins
_os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from .collection import (  # noqa: E402
    MilvusCodeStore,
    StoredItem,
    StoreHit,
    check_same_encoder,
    describe_collections,
    drop_collection,
    list_collections,
)
from .keys import build_filter  # noqa: E402
from .lite import wait_for_lite_file  # noqa: E402
from .schema import MAX_ID_LEN, MAX_LABEL_LEN, MAX_PATH_LEN, MAX_TOPK, is_lite_uri  # noqa: E402

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
    "describe_collections",
    "drop_collection",
    "is_lite_uri",
    "list_collections",
    "wait_for_lite_file",
]
