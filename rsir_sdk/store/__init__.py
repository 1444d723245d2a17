"""The Milvus code store: the only part of rsir-sdk that talks to pymilvus.

:class:`MilvusCodeStore` keeps packed binary codes in a ``BINARY_VECTOR`` collection (HAMMING)
with ids, labels, paths and JSON metadata. By job: :mod:`.schema` (fields, limits, layout
version), :mod:`.values` (what may be stored or asked), :mod:`.keys` (digests: the only way user
text reaches an expression), :mod:`.rows` (a write's columns and batches), :mod:`.topk` (exact
top-k, ties by the digest of the id), :mod:`.search` (the calls and a lean hit conversion),
:mod:`.place` (place and period fields, filtered searches and counts), :mod:`.connect` and
:mod:`.rpc` (calls, retries, one-line errors), :mod:`.fine` (the fine codes' companion
collections), :mod:`.finerank` (ranking by the fine code, the appearance mode), :mod:`.dupes`
(near-duplicate groups), :mod:`.lite` (Milvus Lite's server process and
file), :mod:`.server` (a server collection made ready to search: sealed, indexed, calibrated),
:mod:`.bulk` (bulk import with a journal), :mod:`.writes` (the one writer: creation, checked
writes), :mod:`.reads` (reads by id: by primary-key digest, checked), :mod:`.collection` (the
store), :mod:`.admin` (collections at a uri).
"""

import os as _os

# gRPC's C core prints fork/log lines unless told not to before grpc is first imported
# (pymilvus imports it); a value the user set wins
_os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from .admin import describe_collections, drop_collection, list_collections  # noqa: E402
from .collection import IdHits, MilvusCodeStore, PrepareProgress, StoredItem, StoreHit  # noqa: E402
from .connect import ConnectOptions  # noqa: E402
from .dupes import DEFAULT_DUPLICATE_RADIUS  # noqa: E402
from .keys import build_filter  # noqa: E402
from .lite import wait_for_lite_file  # noqa: E402
from .schema import (  # noqa: E402
    MAX_ID_LEN,
    MAX_LABEL_LEN,
    MAX_PATH_LEN,
    MAX_TOPK,
    check_same_encoder,
    is_lite_uri,
)
from .topk import tie_order  # noqa: E402
from .writes import BulkOptions  # noqa: E402

__all__ = [
    "DEFAULT_DUPLICATE_RADIUS",
    "MAX_ID_LEN",
    "MAX_LABEL_LEN",
    "MAX_PATH_LEN",
    "MAX_TOPK",
    "BulkOptions",
    "ConnectOptions",
    "IdHits",
    "MilvusCodeStore",
    "PrepareProgress",
    "StoreHit",
    "StoredItem",
    "build_filter",
    "check_same_encoder",
    "describe_collections",
    "drop_collection",
    "is_lite_uri",
    "list_collections",
    "tie_order",
    "wait_for_lite_file",
]
