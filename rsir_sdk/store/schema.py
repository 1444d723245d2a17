"""What an rsir collection is: its fields, their limits, and the identity record it keeps.

Format 3 (this version) is format 2 plus the place and period fields of issue 22; format 2: the primary key ``pk`` is the BLAKE2b-128 hex digest of the id and the
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
lon_min..  DOUBLE (7 fields)       the footprint's lon/lat box, centre and time
=========  ======================  ===================================================

The place fields (:data:`rsir_sdk.geo.FIELDS`: ``lon_min, lon_max, lat_min, lat_max, lon, lat,
t``; sentinels when an item has none, :func:`rsir_sdk.geo.scalar_fields`) make a place or period
filter a range comparison the engine evaluates. A format-2 collection (no place fields) is read,
written and searched as before; a place or period filter on it is refused (rebuild it).

A collection that keeps fine codes (issue 20) adds ``fine_hex`` (VARCHAR, the fine code's hex)
after the place fields and records ``fine_bits`` in its description; its companion collections
are :mod:`.fine`'s. One made without them is searched as before.

Format 1 (rsir-sdk 0.2 and before) used the raw id as the primary key; such a collection is
refused on open with a message saying how to rebuild it. Constants only at import (no
pymilvus), so that listing an archive can check field lengths without loading Milvus.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from ..codes import SceneTest
from ..errors import CollectionMismatchError, InvalidInputError
from ..geo import FIELDS as PLACE_FIELDS
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
FORMAT = 3
FIELDS = ("pk", "id", "code", "label", "label_h", "path", "path_h", "metadata", "meta_h")
OUTPUT_FIELDS = ["id", "label", "path", "metadata"]
#: rows per write request unless the caller asks for fewer (bytes are limited too: columns.py)
UPSERT_BATCH = 10_000
#: index policy of a new server collection when none is given: chosen from its size by
#: ``prepare_for_search`` (:mod:`.server`); Milvus Lite is always BIN_FLAT
AUTO_INDEX = "auto"
#: index types a server accepts for BINARY_VECTOR/HAMMING (2.3.5; AUTOINDEX is HNSW underneath)
SERVER_INDEXES = ("BIN_FLAT", "BIN_IVF_FLAT", "HNSW", "AUTOINDEX")
#: collection properties (``alter_collection_properties``) where the store records what
#: ``prepare_for_search`` chose: the search parameters and how they were calibrated
PROP_SEARCH = "rsir.search_params"
PROP_CALIBRATION = "rsir.calibration"
#: set by ``set_index``: the index was chosen by hand, ``auto`` no longer applies
PROP_POLICY = "rsir.index_policy"
#: ids per ``pk in [...]`` expression
PK_CHUNK = 1000


def is_lite_uri(uri: str) -> bool:
    """True when ``uri`` names a Milvus Lite file (a path), False for a server URL."""
    return "://" not in str(uri)


def make_schema(bits: int, encoder: Mapping[str, Any] | None, index: str | None = None,
                fine_bits: int | None = None, scene_test: Any = None) -> Any:
    """The pymilvus schema of a new (format 3) collection; ``index`` records the index policy
    (``"auto"``) in the description, ``fine_bits`` the length of the fine codes its companion
    collections keep (:mod:`.fine`; absent: none), ``scene_test`` the parts of them its
    same-scene test reads (a :class:`~rsir_sdk.codes.SceneTest`; absent: the whole code)."""
    from pymilvus import DataType, MilvusClient

    description = json.dumps({SCHEMA_TAG: {
        "format": FORMAT, "bits": bits, "encoder": encoder,
        **({"index": index} if index else {}),
        **({"fine_bits": fine_bits} if fine_bits else {}),
        **({"scene_test": scene_test.to_json()} if fine_bits and scene_test else {})}})
    schema = MilvusClient.create_schema(auto_id=False, description=description)
    add_item_fields(schema, "code", bits)
    if fine_bits:  # the fine code as text, read with every hit at no extra request (.finerank)
        schema.add_field("fine_hex", DataType.VARCHAR, max_length=fine_bits // 4)
    return schema


def add_item_fields(schema: Any, vector: str, dim: int) -> None:
    """Add an item's fields to a pymilvus ``schema`` in the collection's field order, with the
    binary vector field ``vector`` of ``dim`` bits third (``code`` in a collection, ``fine`` in
    its fine-code mirror, :mod:`.fine`): column writes send the fields in this order."""
    from pymilvus import DataType

    schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=32)
    schema.add_field("id", DataType.VARCHAR, max_length=MAX_ID_LEN)
    schema.add_field(vector, DataType.BINARY_VECTOR, dim=dim)
    schema.add_field("label", DataType.VARCHAR, max_length=MAX_LABEL_LEN)
    schema.add_field("label_h", DataType.VARCHAR, max_length=32)
    schema.add_field("path", DataType.VARCHAR, max_length=MAX_PATH_LEN)
    schema.add_field("path_h", DataType.VARCHAR, max_length=32)
    schema.add_field("metadata", DataType.JSON)
    schema.add_field("meta_h", DataType.JSON)
    for name in PLACE_FIELDS:
        schema.add_field(name, DataType.DOUBLE)


def has_place(desc: Mapping[str, Any]) -> bool:
    """Whether a collection holds the place and period fields (format 3 and later)."""
    names = {f["name"] for f in desc.get("fields", [])}
    return all(f in names for f in PLACE_FIELDS)


def fine_bits_of(desc: Mapping[str, Any]) -> int | None:
    """The fine-code length recorded in a collection's description (``None``: it keeps none,
    e.g. one made before fine codes existed)."""
    try:
        recorded = json.loads(desc.get("description") or "{}").get(SCHEMA_TAG, {})
    except (json.JSONDecodeError, AttributeError):
        return None
    value = recorded.get("fine_bits") if isinstance(recorded, dict) else None
    return int(value) if isinstance(value, int) and value > 0 else None


def scene_test_of(desc: Mapping[str, Any]) -> SceneTest | None:
    """The same-scene test recorded in a collection's description (``None``: the whole fine
    code is tested, as in every collection made before ``--fine-code layout``)."""
    try:
        recorded = json.loads(desc.get("description") or "{}").get(SCHEMA_TAG, {})
        value = recorded.get("scene_test") if isinstance(recorded, dict) else None
        return SceneTest.from_json(value) if value else None
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return None


def index_policy(desc: Mapping[str, Any]) -> str | None:
    """The index policy recorded in a collection's description (``"auto"`` or ``None``)."""
    try:
        recorded = json.loads(desc.get("description") or "{}").get(SCHEMA_TAG, {})
    except (json.JSONDecodeError, AttributeError):
        return None
    return recorded.get("index") if isinstance(recorded, dict) else None


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
            f"ids as primary keys, which cannot hold every file name); to rebuild it, "
            + rebuild_steps(collection, where)
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


def rebuild_steps(name: str, where: str) -> str:
    """How to rebuild a collection, in one clause: under a new name first (searches go on
    meanwhile) with the options of its first run (a rebuild by ``rsir index BUNDLE ARCHIVE``
    alone lost its labels and metadata), then drop the old one."""
    return (f"index the archive again into a new collection with the options of the first run "
            f"(rsir index BUNDLE ARCHIVE --uri {where} --collection {name}_v2 and the same "
            f"--label-from, CSV columns and raster rule; metadata written from Python is not in "
            f"the archive), switch to it, then rsir drop {name} --uri {where} --yes")


def check_same_encoder(
    stored: Mapping[str, Any], incoming: Mapping[str, Any], collection: str
) -> None:
    """Raise :class:`CollectionMismatchError` unless two encoder identities are the same."""
    if int(stored.get("bits", 0)) != int(incoming.get("bits", 0)):
        raise CollectionMismatchError(
            f"collection {collection!r} was filled with {stored.get('bits')}-bit codes; "
            f"this encoder makes {incoming.get('bits')}-bit codes"
        )
    if stored.get("encoder_id") != incoming.get("encoder_id"):
        raise CollectionMismatchError(
            f"collection {collection!r} was filled by encoder {stored.get('encoder_id')} "
            f"({stored.get('method')}); these codes come from encoder "
            f"{incoming.get('encoder_id')} ({incoming.get('method')}). Codes of different "
            f"encoders are not comparable: use another collection or re-index with this encoder"
        )
    mine, theirs = stored.get("preprocess"), incoming.get("preprocess")
    if mine is not None and theirs is not None and mine != theirs:
        raise CollectionMismatchError(
            f"collection {collection!r} was filled by encoder {stored.get('encoder_id')} with "
            f"images prepared as {json.dumps(mine)}; this bundle's manifest prepares them as "
            f"{json.dumps(theirs)} (the same model, its manifest's preprocess edited): codes of "
            f"differently prepared images are not comparable; restore the manifest, or use "
            f"another collection"
        )


def index_type_of(value: str | None) -> str | None:
    """An index type as given (``None``, ``auto`` or a server index), checked and upper-cased."""
    if value is None:
        return None
    name = str(value).strip()
    if name.lower() == AUTO_INDEX:
        return AUTO_INDEX
    if name.upper() not in SERVER_INDEXES:
        raise InvalidInputError(f"index_type must be auto or one of {', '.join(SERVER_INDEXES)}, "
                                f"got {value!r}")
    return name.upper()
