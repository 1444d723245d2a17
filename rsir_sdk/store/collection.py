"""``MilvusCodeStore``: packed binary codes in a Milvus ``BINARY_VECTOR`` collection (HAMMING).

One ``uri`` picks the deployment, as in pymilvus: ``./file.db`` is Milvus Lite (embedded, one
process per file, index BIN_FLAT only), ``http://host:19530`` a Milvus server (``token`` for
auth; index type and params configurable). The collection records the encoder that filled it
(``encoder_id``, ``bits``, ``method``) in its description and refuses codes of another length or
from another encoder, so codes that cannot be compared never share a collection.

Hamming radius searches are **inclusive**: ``radius=r`` returns every item with distance ``<= r``.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..codes import as_packed, validate_bits
from ..errors import CodeLengthError, CollectionMismatchError, CollectionNotFoundError, StoreError
from .lite import wait_for_lite_file
from .schema import (
    FIELDS,
    MAX_ID_LEN,
    MAX_LABEL_LEN,
    MAX_PATH_LEN,
    MAX_TOPK,
    OUTPUT_FIELDS,
    SCHEMA_TAG,
    UPSERT_BATCH,
    is_lite_uri,
    redact_uri,
)

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class StoreHit:
    """One search result: the item's id and its Hamming distance (an int), plus stored fields."""

    id: str
    distance: int
    label: str = ""
    path: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredItem:
    """One stored row as :meth:`MilvusCodeStore.get` returns it."""

    id: str
    code: np.ndarray  # uint8 (bits/8,)
    label: str
    path: str
    metadata: dict[str, Any]


def build_filter(filter: str | Mapping[str, Any] | None) -> str:
    """Turn a filter into a Milvus boolean expression.

    A string is passed through (``'label == "Forest"'``). A mapping means equality on each key
    (a list or tuple means ``in``); ``id``, ``label`` and ``path`` are columns, any other key is
    read from the JSON metadata.

    >>> build_filter({"label": ["Forest", "River"], "sensor": "S2"})
    'label in ["Forest", "River"] and metadata["sensor"] == "S2"'
    """
    if filter is None:
        return ""
    if isinstance(filter, str):
        return filter
    parts = []
    for key, value in filter.items():
        col = key if key in ("id", "label", "path") else f"metadata[{json.dumps(str(key))}]"
        if isinstance(value, (list, tuple, set)):
            parts.append(f"{col} in {json.dumps(list(value))}")
        else:
            parts.append(f"{col} == {json.dumps(value)}")
    return " and ".join(parts)


class MilvusCodeStore:
    """A Milvus collection of packed binary codes with ids, labels, paths and JSON metadata.

    >>> store = MilvusCodeStore("./codes.db", "scenes", bits=64)         # doctest: +SKIP
    >>> store.upsert(["a", "b"], codes, labels=["forest", "river"])      # doctest: +SKIP
    >>> store.search(codes[:1], k=2)[0][0].distance                      # doctest: +SKIP
    0
    """

    def __init__(
        self,
        uri: str = "./rsir.db",
        collection: str = "rsir",
        bits: int | None = None,
        token: str | None = None,
        *,
        encoder: Mapping[str, Any] | None = None,
        index_type: str | None = None,
        index_params: Mapping[str, Any] | None = None,
        search_params: Mapping[str, Any] | None = None,
        create: bool = True,
        client_kwargs: Mapping[str, Any] | None = None,
        lite_wait: float = 30.0,
    ):
        self.uri = str(uri)
        #: the uri without credentials, for messages, logs and printed output
        self.display_uri = redact_uri(self.uri)
        self.collection = collection
        self.is_lite = is_lite_uri(self.uri)
        self.search_params = dict(search_params or {})
        self._index = (index_type, dict(index_params or {}))
        self._client = _connect(self.uri, token, dict(client_kwargs or {}), lite_wait)
        try:
            self.exists: bool = bool(self._client.has_collection(collection))
        except Exception as exc:
            self.close()
            raise StoreError(f"Milvus at {self.display_uri} did not answer: {exc}") from None
        if self.exists:
            self.bits, self.encoder = self._open_existing(bits, encoder)
            return
        if not create:
            names = self._names()
            self.close()
            raise CollectionNotFoundError(
                f"collection {collection!r} does not exist at {self.display_uri}; "
                + (f"collections there: {', '.join(names)}" if names else "it holds no collections")
            )
        if bits is None:
            self.close()
            raise CodeLengthError(
                f"collection {collection!r} does not exist yet: give bits= to create it"
            )
        self.bits = validate_bits(bits)
        self.encoder = dict(encoder) if encoder else None
        if self.encoder and int(self.encoder.get("bits", self.bits)) != self.bits:
            self.close()
            raise CodeLengthError(
                f"encoder makes {self.encoder['bits']}-bit codes but bits={self.bits}"
            )
        if self.is_lite and (index_type or "BIN_FLAT") != "BIN_FLAT":
            self.close()
            raise StoreError(
                f"Milvus Lite supports only the BIN_FLAT index for binary vectors, not "
                f"{index_type}; use a Milvus server URI for {index_type}"
            )

    def _names(self) -> list[str]:
        try:
            return sorted(self._client.list_collections())
        except Exception:
            return []

    def _require_exists(self) -> None:
        """Raise :class:`CollectionNotFoundError` (naming the collections there) for a read of
        a collection that was never written."""
        if not self.exists:
            names = [n for n in self._names() if n != self.collection]
            raise CollectionNotFoundError(
                f"collection {self.collection!r} does not exist at {self.display_uri} (nothing was "
                f"written to it); "
                + (f"collections there: {', '.join(names)}" if names else
                   "it holds no collections: index an archive first")
            )

    def _ensure_created(self) -> None:
        """Create the collection on the first write (a read never creates one)."""
        if not self.exists:
            self._create(*self._index)
            self.exists = True

    # ----------------------------------------------------------------- set-up
    def _create(self, index_type: str | None, index_params: Mapping[str, Any] | None) -> None:
        from pymilvus import DataType, MilvusClient

        index_type = index_type or "BIN_FLAT"
        description = json.dumps(
            {SCHEMA_TAG: {"format": 1, "bits": self.bits, "encoder": self.encoder}}
        )
        schema = MilvusClient.create_schema(auto_id=False, description=description)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_LEN)
        schema.add_field("code", DataType.BINARY_VECTOR, dim=self.bits)
        schema.add_field("label", DataType.VARCHAR, max_length=MAX_LABEL_LEN)
        schema.add_field("path", DataType.VARCHAR, max_length=MAX_PATH_LEN)
        schema.add_field("metadata", DataType.JSON)
        index = self._client.prepare_index_params()
        index.add_index(
            field_name="code",
            index_type=index_type,
            metric_type="HAMMING",
            params=dict(index_params or {}),
        )
        try:
            self._client.create_collection(
                self.collection, schema=schema, index_params=index, consistency_level="Strong"
            )
        except Exception as exc:
            raise StoreError(f"cannot create collection {self.collection!r}: {exc}") from exc
        log.info("created collection %s (%d bits) at %s", self.collection, self.bits, self.display_uri)

    def _open_existing(
        self, bits: int | None, encoder: Mapping[str, Any] | None
    ) -> tuple[int, dict[str, Any] | None]:
        desc = self._client.describe_collection(self.collection)
        fields = {f["name"]: f for f in desc.get("fields", [])}
        missing = [f for f in FIELDS if f not in fields]
        if missing:
            raise CollectionMismatchError(
                f"collection {self.collection!r} at {self.display_uri} was not created by rsir-sdk "
                f"(fields {missing} are missing); choose another collection name"
            )
        dim = int(fields["code"].get("params", {}).get("dim"))
        if bits is not None and validate_bits(bits) != dim:
            raise CollectionMismatchError(
                f"collection {self.collection!r} holds {dim}-bit codes, not {bits}-bit: use a "
                f"bundle with {dim} bits or another collection"
            )
        try:
            recorded = json.loads(desc.get("description") or "{}").get(SCHEMA_TAG, {})
        except json.JSONDecodeError:
            recorded = {}
        stored_encoder = recorded.get("encoder")
        if encoder and stored_encoder:
            check_same_encoder(stored_encoder, encoder, self.collection)
        return dim, stored_encoder or (dict(encoder) if encoder else None)

    # ----------------------------------------------------------------- writes
    def upsert(
        self,
        ids: Sequence[str],
        codes: np.ndarray,
        labels: Sequence[str] | None = None,
        paths: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        encoder: Mapping[str, Any] | None = None,
        batch_size: int = UPSERT_BATCH,
    ) -> int:
        """Insert or replace items by id; returns how many rows were written.

        Everything is validated before the first row is written, so a bad call changes nothing.
        ``encoder`` (a bundle identity) is checked against the collection's.
        """
        if encoder is not None and self.encoder is not None:
            check_same_encoder(self.encoder, encoder, self.collection)
        rows = self._rows(ids, codes, labels, paths, metadata)
        if rows:
            self._ensure_created()
        for start in range(0, len(rows), batch_size):
            try:
                self._client.upsert(self.collection, rows[start : start + batch_size])
            except Exception as exc:
                raise StoreError(
                    f"upsert into {self.collection!r} failed after {start} of {len(rows)} rows "
                    f"(re-running the same call is safe: upsert is idempotent): {exc}"
                ) from exc
        return len(rows)

    def _rows(self, ids, codes, labels, paths, metadata) -> list[dict[str, Any]]:
        ids = [_check_id(i) for i in ids]
        packed = as_packed(codes, self.bits)
        n = len(ids)
        if packed.shape[0] != n:
            raise ValueError(f"{n} ids but {packed.shape[0]} codes")
        if len(set(ids)) != n:
            dupes = sorted({i for i in ids if ids.count(i) > 1})[:5] if n < 10000 else []
            raise ValueError(f"ids must be unique within one call (duplicates: {dupes} ...)")
        labels = _column(labels, n, "labels", MAX_LABEL_LEN)
        paths = _column(paths, n, "paths", MAX_PATH_LEN)
        if metadata is None:
            metadata = [{}] * n
        elif len(metadata) != n:
            raise ValueError(f"{n} ids but {len(metadata)} metadata entries")
        rows = []
        for i in range(n):
            meta = metadata[i] or {}
            if not isinstance(meta, Mapping):
                raise ValueError(f"metadata for id {ids[i]!r} must be a dict, got {type(meta)}")
            try:
                json.dumps(meta)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"metadata for id {ids[i]!r} is not JSON-serialisable: {exc}")
            rows.append(
                {
                    "id": ids[i],
                    "code": packed[i].tobytes(),
                    "label": labels[i],
                    "path": paths[i],
                    "metadata": dict(meta),
                }
            )
        return rows

    def delete(self, ids: Iterable[str]) -> int:
        """Delete items by id; returns how many of them existed."""
        ids = [_check_id(i) for i in ids]
        if not ids or not self.exists:
            return 0
        present = self.existing_ids(ids)
        if present:
            self._client.delete(self.collection, ids=sorted(present))
        return len(present)

    # ----------------------------------------------------------------- reads
    def get(self, ids: Iterable[str]) -> list[StoredItem]:
        """Fetch stored items by id (missing ids are left out), in the order asked."""
        ids = [_check_id(i) for i in ids]
        if not ids or not self.exists:
            return []
        found = {}
        for start in range(0, len(ids), 1000):
            res = self._client.get(self.collection, ids=ids[start : start + 1000])
            for row in res:
                found[row["id"]] = StoredItem(
                    id=row["id"],
                    code=_code_bytes(row["code"]),
                    label=row.get("label", ""),
                    path=row.get("path", ""),
                    metadata=dict(row.get("metadata") or {}),
                )
        return [found[i] for i in ids if i in found]

    def existing_ids(self, ids: Iterable[str]) -> set[str]:
        """The subset of ``ids`` that the collection holds."""
        ids = list(ids)
        out: set[str] = set()
        if not self.exists:
            return out
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            res = self._client.query(
                self.collection, filter=f"id in {json.dumps(chunk)}", output_fields=["id"]
            )
            out.update(r["id"] for r in res)
        return out

    def count(self, filter: str | Mapping[str, Any] | None = None) -> int:
        """Number of items (matching ``filter`` when given); 0 for a collection never written."""
        if not self.exists:
            return 0
        res = self._client.query(
            self.collection, filter=build_filter(filter), output_fields=["count(*)"]
        )
        return int(res[0]["count(*)"])

    def search(
        self,
        codes: np.ndarray,
        k: int = 10,
        filter: str | Mapping[str, Any] | None = None,
        radius: int | None = None,
    ) -> list[list[StoreHit]]:
        """Hamming top-``k`` per query: one list of :class:`StoreHit` per query code.

        Hits are sorted by distance, then id. With ``radius``, only items at distance
        ``<= radius`` (inclusive) come back, at most ``k`` of them.
        """
        q = as_packed(codes, self.bits)
        k = int(k)
        if not 1 <= k <= MAX_TOPK:
            raise ValueError(f"k must be between 1 and {MAX_TOPK} (Milvus' topK cap), got {k}")
        params: dict[str, Any] = {"metric_type": "HAMMING", "params": dict(self.search_params)}
        if radius is not None:
            radius = int(radius)
            if radius < 0:
                raise ValueError(f"radius must be >= 0, got {radius}")
            # Milvus returns range_filter <= d < radius: one more makes ours inclusive
            params["params"].update({"radius": radius + 1, "range_filter": 0})
        if q.shape[0] == 0:
            return []
        self._require_exists()
        out: list[list[StoreHit]] = []
        for start in range(0, q.shape[0], 1000):
            try:
                res = self._client.search(
                    self.collection,
                    data=[row.tobytes() for row in q[start : start + 1000]],
                    anns_field="code",
                    limit=k,
                    filter=build_filter(filter),
                    output_fields=OUTPUT_FIELDS,
                    search_params=params,
                )
            except Exception as exc:
                raise StoreError(f"search in {self.collection!r} failed: {exc}") from exc
            for hits in res:
                items = [
                    StoreHit(
                        id=h["id"],
                        distance=int(round(h["distance"])),
                        label=h["entity"].get("label", ""),
                        path=h["entity"].get("path", ""),
                        metadata=dict(h["entity"].get("metadata") or {}),
                    )
                    for h in hits
                ]
                items.sort(key=lambda h: (h.distance, h.id))
                out.append(items)
        return out

    def range_search(
        self,
        codes: np.ndarray,
        radius: int,
        filter: str | Mapping[str, Any] | None = None,
        limit: int = MAX_TOPK,
    ) -> list[list[StoreHit]]:
        """Every item within Hamming distance ``<= radius`` (inclusive) of each query.

        Raises :class:`StoreError` when a query has more than ``limit`` such items (Milvus caps
        one search at 16384): lower the radius or add a filter rather than get a silent cut.
        """
        results = self.search(codes, k=limit, filter=filter, radius=radius)
        for i, hits in enumerate(results):
            if len(hits) >= limit:
                raise StoreError(
                    f"query {i} has {limit} or more items within radius {radius} (the limit); "
                    f"lower the radius or add a filter"
                )
        return results

    # ----------------------------------------------------------------- admin
    def info(self) -> dict[str, Any]:
        """What the collection is: name, uri, bits, the encoder that filled it, item count."""
        return {
            "collection": self.collection,
            "uri": self.display_uri,
            "exists": self.exists,
            "bits": self.bits,
            "encoder": self.encoder,
            "count": self.count(),
        }

    def drop(self) -> None:
        """Drop the whole collection (irreversible); a later write creates it afresh."""
        if self.exists:
            try:
                self._client.drop_collection(self.collection)
            except Exception as exc:
                raise StoreError(f"cannot drop collection {self.collection!r}: {exc}") from None
            self.exists = False

    def close(self) -> None:
        """Close the connection (for Milvus Lite, releases the database file)."""
        try:
            self._client.close()
        except Exception:  # closing twice or a server gone away is not an error for callers
            pass

    def __enter__(self) -> "MilvusCodeStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MilvusCodeStore(uri={self.display_uri!r}, collection={self.collection!r}, bits={self.bits})"


def list_collections(uri: str = "./rsir.db", token: str | None = None) -> list[str]:
    """Names of the collections at ``uri`` (a missing Milvus Lite file holds none)."""
    if is_lite_uri(str(uri)) and not os.path.exists(str(uri)):
        return []
    client = _connect(str(uri), token, {}, 30.0)
    try:
        return sorted(client.list_collections())
    finally:
        client.close()


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


def _connect(uri: str, token: str | None, kwargs: dict[str, Any], lite_wait: float):
    from pymilvus import MilvusClient

    if is_lite_uri(uri):
        parent = os.path.dirname(os.path.abspath(uri))
        if not os.path.isdir(parent):
            raise StoreError(f"cannot create Milvus Lite file {uri}: folder {parent} does not exist")
        if not uri.endswith(".db"):
            raise StoreError(f"a Milvus Lite uri must be a file ending in .db, got {uri!r}")
        wait_for_lite_file(uri, lite_wait)
    try:
        if token:
            kwargs["token"] = token
        with warnings.catch_warnings():
            # milvus-lite 2.5.1 imports pkg_resources, which warns on every start
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
            return MilvusClient(uri=uri, **kwargs)
    except Exception as exc:
        raise StoreError(f"cannot connect to Milvus at {redact_uri(uri)}: {exc}") from None


def _check_id(value: Any) -> str:
    s = str(value)
    if not s:
        raise ValueError("ids must be non-empty strings")
    if len(s.encode("utf-8")) > MAX_ID_LEN:
        raise ValueError(f"id longer than {MAX_ID_LEN} bytes: {s[:60]}...")
    return s


def _column(values, n: int, name: str, max_len: int) -> list[str]:
    if values is None:
        return [""] * n
    values = ["" if v is None else str(v) for v in values]
    if len(values) != n:
        raise ValueError(f"{n} ids but {len(values)} {name}")
    for v in values:
        if len(v.encode("utf-8")) > max_len:
            raise ValueError(f"a value in {name} is longer than {max_len} bytes: {v[:60]}...")
    return values


def _code_bytes(value: Any) -> np.ndarray:
    # pymilvus returns a binary vector as bytes, or as a list holding one bytes object
    if isinstance(value, list):
        value = value[0] if len(value) == 1 and isinstance(value[0], (bytes, bytearray)) else bytes(value)
    return np.frombuffer(bytes(value), dtype=np.uint8).copy()
