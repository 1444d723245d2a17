"""What an rsir collection is: its fields, their limits, and the identity record it keeps.

Format 2 (this version): the primary key ``pk`` is the BLAKE2b-128 hex digest of the id and the
id is a plain field, with digest columns beside the text fields (:mod:`.keys` says why):

=========  ======================  ===================================================
field      type                    holds
=========  ======================  ===================================================
pk         VARCHAR(32), primary    digest of ``id``
id         VARCHAR                 the item's id, byte for byte
code       BINARY_VECTOR(bits)     the packed code (HAMMING)
label      VARCHAR                 label
label_h    VARCHAR(32)             digest of label
path       VARCHAR                 path
path_h     VARCHAR(32)             digest of path
metadata   JSON                    the item's metadata object
meta_h     JSON                    ``{"k<digest of key>": digest of canonical value}``
=========  ======================  ===================================================

Format 1 (rsir-sdk 0.2 and before) used the raw id as the primary key; such a collection is
refused on open with a message saying how to rebuild it. Constants only at import (no
pymilvus), so that listing an archive can check field lengths without loading Milvus.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from ..errors import CollectionMismatchError
from ..redact import redact_uri as redact_uri

#: Milvus caps topK (and a range search's limit) at this
MAX_TOPK = 16384
#: limits of the collection's text fields, in UTF-8 bytes (checked by rsir-sdk: Milvus Lite
#: checks none, the server counts bytes)
MAX_ID_LEN = 4096
MAX_LABEL_LEN = 512
MAX_PATH_LEN = 4096
#: the key under which a collection's description records the encoder that filled it
SCHEMA_TAG = "rsir"
#: the layout version recorded in the description
FORMAT = 2
FIELDS = ("pk", "id", "code", "label", "label_h", "path", "path_h", "metadata", "meta_h")
OUTPUT_FIELDS = ["id", "label", "path", "metadata"]
#: rows per upsert request unless the caller asks for fewer (bytes are limited too: rows.py)
UPSERT_BATCH = 5000
#: ids per ``pk in [...]`` expression
PK_CHUNK = 1000


def is_lite_uri(uri: str) -> bool:
    """True when ``uri`` names a Milvus Lite file (a path), False for a server URL."""
    return "://" not in str(uri)


def make_schema(bits: int, encoder: Mapping[str, Any] | None) -> Any:
    """The pymilvus schema of a new (format 2) collection."""
    from pymilvus import DataType, MilvusClient

    description = json.dumps({SCHEMA_TAG: {"format": FORMAT, "bits": bits, "encoder": encoder}})
    schema = MilvusClient.create_schema(auto_id=False, description=description)
    schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=32)
    schema.add_field("id", DataType.VARCHAR, max_length=MAX_ID_LEN)
    schema.add_field("code", DataType.BINARY_VECTOR, dim=bits)
    schema.add_field("label", DataType.VARCHAR, max_length=MAX_LABEL_LEN)
    schema.add_field("label_h", DataType.VARCHAR, max_length=32)
    schema.add_field("path", DataType.VARCHAR, max_length=MAX_PATH_LEN)
    schema.add_field("path_h", DataType.VARCHAR, max_length=32)
    schema.add_field("metadata", DataType.JSON)
    schema.add_field("meta_h", DataType.JSON)
    return schema


def read_description(desc: Mapping[str, Any], collection: str, where: str) -> tuple[int, dict | None]:
    """``(bits, encoder)`` of an existing collection from ``describe_collection``'s answer.

    Raises :class:`~rsir_sdk.errors.CollectionMismatchError` for a collection of format 1 (raw
    ids as primary keys: rebuild it) or one that rsir-sdk did not create.
    """
    fields = {f["name"]: f for f in desc.get("fields", [])}
    try:
        recorded = json.loads(desc.get("description") or "{}").get(SCHEMA_TAG, {})
    except (json.JSONDecodeError, AttributeError):
        recorded = {}
    primary = next((name for name, f in fields.items() if f.get("is_primary")), None)
    if primary == "id" and "code" in fields and "pk" not in fields:
        raise CollectionMismatchError(
            f"collection {collection!r} at {where} was made by an older rsir-sdk (format 1: raw "
            f"ids as primary keys, which cannot hold every file name); rebuild it: rsir drop "
            f"{collection} --uri {where} --yes, then index the archive again"
        )
    missing = [f for f in FIELDS if f not in fields]
    if missing or primary != "pk":
        raise CollectionMismatchError(
            f"collection {collection!r} at {where} was not created by rsir-sdk (fields "
            f"{missing or sorted(fields)} differ); choose another collection name"
        )
    dim = int(fields["code"].get("params", {}).get("dim"))
    encoder = recorded.get("encoder") if isinstance(recorded, dict) else None
    return dim, encoder if isinstance(encoder, dict) else None
