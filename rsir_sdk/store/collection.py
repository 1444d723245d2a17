"""``MilvusCodeStore``: packed binary codes in a Milvus ``BINARY_VECTOR`` collection (HAMMING).

One ``uri`` picks the deployment, as in pymilvus: ``./file.db`` is Milvus Lite (embedded, one
process per file, index BIN_FLAT only), ``http://host:19530`` a Milvus server (``token`` for
auth; index type and params configurable). The collection records the encoder that filled it
(``encoder_id``, ``bits``, ``method``) in its description and refuses codes of another length or
from another encoder, so codes that cannot be compared never share a collection.

Any Unicode text (but lone surrogates) works as an id, label, path or metadata value, and comes
back byte for byte: no user string becomes a primary key or enters an expression (see
:mod:`.keys`). A write is checked completely before its first row is sent, so a bad call
changes nothing. Hamming radius searches are **inclusive**: ``radius=r`` returns every item with
distance ``<= r``. Results are sorted by (distance, id), exactly (:mod:`.topk`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..codes import as_packed, validate_bits
from ..errors import (
    CodeLengthError,
    CollectionMismatchError,
    CollectionNotFoundError,
    InvalidInputError,
    StoreError,
)
from . import keys, rows, topk, values
from .connect import Connection
from .schema import (
    MAX_TOPK,
    OUTPUT_FIELDS,
    PK_CHUNK,
    UPSERT_BATCH,
    is_lite_uri,
    make_schema,
    read_description,
)

log = logging.getLogger(__name__)

Filter = str | Mapping[str, Any] | None


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


class MilvusCodeStore:
    """A Milvus collection of packed binary codes with ids, labels, paths and JSON metadata.

    A collection is created by the first write (with ``bits``); a read of a collection that was
    never written raises :class:`~rsir_sdk.errors.CollectionNotFoundError`. ``create=False``
    refuses at once when it does not exist. ``timeout`` bounds each Milvus call (seconds;
    ``None``: no deadline); failing calls are retried a few times, never for minutes.

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
        timeout: float | None = None,
        read_consistency: str | None = None,
    ):
        self.collection = values.collection_name(collection)
        self.search_params = dict(search_params or {})
        self._index = (index_type, dict(index_params or {}))
        self._conn = Connection(uri, token, client_kwargs, lite_wait=lite_wait, timeout=timeout,
                                read_consistency=read_consistency)
        self.uri = self._conn.uri
        #: the uri without credentials, for messages, logs and printed output
        self.display_uri = self._conn.display_uri
        self.is_lite = self._conn.is_lite
        try:
            self.exists: bool = bool(self._conn.call("has_collection", self.collection,
                                                     what=f"opening collection {self.collection!r}"))
            if self.exists:
                self.bits, self.encoder = self._open_existing(bits, encoder)
                return
            self.bits, self.encoder = self._check_new(bits, encoder, create, index_type)
        except BaseException:
            self.close()
            raise

    @property
    def _client(self) -> Any:
        """The underlying ``pymilvus.MilvusClient`` (diagnostics and tests only: its calls get
        none of the store's checks)."""
        return self._conn.client

    # ----------------------------------------------------------------- set-up
    def _check_new(self, bits, encoder, create, index_type) -> tuple[int, dict[str, Any] | None]:
        if not create:
            raise CollectionNotFoundError(
                f"collection {self.collection!r} does not exist at {self.display_uri}; "
                + self._others("it holds no collections")
            )
        if bits is None:
            raise CodeLengthError(
                f"collection {self.collection!r} does not exist yet: give bits= to create it"
            )
        bits = validate_bits(bits)
        enc = dict(encoder) if encoder else None
        if enc and int(enc.get("bits", bits)) != bits:
            raise CodeLengthError(f"encoder makes {enc['bits']}-bit codes but bits={bits}")
        if self.is_lite and (index_type or "BIN_FLAT") != "BIN_FLAT":
            raise StoreError(
                f"Milvus Lite supports only the BIN_FLAT index for binary vectors, not "
                f"{index_type}; use a Milvus server URI for {index_type}"
            )
        return bits, enc

    def _others(self, none: str) -> str:
        names = [n for n in self._conn.names() if n != self.collection]
        return f"collections there: {', '.join(names)}" if names else none

    def _require_exists(self) -> None:
        """Raise :class:`CollectionNotFoundError` (naming the collections there) for a read of
        a collection that was never written."""
        if not self.exists:
            raise CollectionNotFoundError(
                f"collection {self.collection!r} does not exist at {self.display_uri} (nothing was "
                f"written to it); " + self._others("it holds no collections: index an archive first")
            )

    def _ensure_created(self) -> None:
        """Create the collection on the first write (a read never creates one)."""
        if self.exists:
            return
        index_type, index_params = self._index
        index = self._conn.client.prepare_index_params()
        index.add_index(field_name="code", index_type=index_type or "BIN_FLAT",
                        metric_type="HAMMING", params=dict(index_params or {}))
        self._conn.call("create_collection", self.collection,
                        schema=make_schema(self.bits, self.encoder), index_params=index,
                        consistency_level="Strong", what=f"creating collection {self.collection!r}")
        self.exists = True
        log.info("created collection %s (%d bits) at %s", self.collection, self.bits, self.display_uri)

    def _open_existing(
        self, bits: int | None, encoder: Mapping[str, Any] | None
    ) -> tuple[int, dict[str, Any] | None]:
        desc = self._conn.call("describe_collection", self.collection,
                               what=f"opening collection {self.collection!r}")
        dim, stored_encoder = read_description(desc, self.collection, self.display_uri)
        if bits is not None and validate_bits(bits) != dim:
            raise CollectionMismatchError(
                f"collection {self.collection!r} holds {dim}-bit codes, not {bits}-bit: use a "
                f"bundle with {dim} bits or another collection"
            )
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

        Everything is validated before the first row is written, so a bad call changes nothing
        (:class:`~rsir_sdk.errors.InvalidInputError` or ``CodeLengthError`` naming the item).
        Requests hold at most ``batch_size`` (and 5000) rows and 32 MiB. ``encoder`` (a bundle
        identity) is checked against the collection's.
        """
        if encoder is not None and self.encoder is not None:
            check_same_encoder(self.encoder, encoder, self.collection)
        size = values.positive_int(batch_size, "batch_size")
        built, sizes = rows.build_rows(ids, codes, self.bits, labels, paths, metadata)
        if not built:
            return 0
        self._ensure_created()
        for start, batch in rows.batches(built, sizes, min(size, rows.MAX_BATCH_ROWS)):
            try:
                self._conn.call("upsert", self.collection, batch,
                                what=f"upsert into {self.collection!r}")
            except StoreError as exc:
                raise StoreError(
                    f"{exc} (after {start} of {len(built)} rows were written; re-running the "
                    f"same call is safe: upsert is idempotent)"
                ) from None
        return len(built)

    def delete(self, ids: Iterable[str]) -> int:
        """Delete items by id; returns how many of them existed."""
        present = self._by_pk(ids, ["pk", "id"])
        pks = [keys.digest(i) for i in present]
        for start in range(0, len(pks), PK_CHUNK):
            self._conn.call("delete", self.collection,
                            filter=keys.in_list("pk", pks[start : start + PK_CHUNK]),
                            what=f"delete from {self.collection!r}")
        if pks:
            self._conn.after_delete()
        return len(pks)

    # ----------------------------------------------------------------- reads
    def _by_pk(self, ids: Iterable[str], fields: list[str]) -> dict[str, dict[str, Any]]:
        """``{id: row}`` of the given ids that the collection holds (by primary-key digest)."""
        wanted = values.lookup_ids(ids)
        if not wanted or not self.exists:
            return {}
        pks = {keys.digest(i): i for i in wanted}
        order = list(pks)
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(order), PK_CHUNK):
            chunk = order[start : start + PK_CHUNK]
            res = self._conn.call("query", self.collection, filter=keys.in_list("pk", chunk),
                                  output_fields=fields, read=True,
                                  what=f"reading ids from {self.collection!r}")
            for row in res:
                item_id = pks.get(row.get("pk"))
                if item_id is None or row.get("id") != item_id:
                    raise StoreError(
                        f"collection {self.collection!r} holds a row whose id does not match its "
                        f"primary key ({row.get('id')!r:.80}); the collection is damaged: rebuild it"
                    )
                found[item_id] = row
        return found

    def get(self, ids: Iterable[str]) -> list[StoredItem]:
        """Fetch stored items by id (missing ids are left out), in the order asked."""
        wanted = values.lookup_ids(ids)
        found = self._by_pk(wanted, ["pk", "id", "code", "label", "path", "metadata"])
        return [
            StoredItem(id=i, code=_code_bytes(found[i]["code"]), label=found[i].get("label", ""),
                       path=found[i].get("path", ""), metadata=dict(found[i].get("metadata") or {}))
            for i in wanted if i in found
        ]

    def existing_ids(self, ids: Iterable[str]) -> set[str]:
        """The subset of ``ids`` that the collection holds."""
        return set(self._by_pk(ids, ["pk", "id"]))

    def count(self, filter: Filter = None) -> int:
        """Number of items (matching ``filter`` when given); 0 for a collection never written."""
        expr = keys.build_filter(filter)
        if not self.exists:
            return 0
        res = self._conn.call("query", self.collection, filter=expr, output_fields=["count(*)"],
                              read=True, what=f"count in {self.collection!r}",
                              expression=filter if isinstance(filter, str) else None)
        return int(res[0]["count(*)"])

    def search(
        self,
        codes: np.ndarray,
        k: int = 10,
        filter: Filter = None,
        radius: int | None = None,
    ) -> list[list[StoreHit]]:
        """Hamming top-``k`` per query: one list of :class:`StoreHit` per query code.

        Hits are sorted by distance, then id (exactly: ties at the k-th distance are broken by
        id, not by insertion order). With ``radius``, only items at distance ``<= radius``
        (inclusive) come back, at most ``k`` of them. ``k`` and ``radius`` must be ints,
        ``filter`` a dict or an expression string (:func:`~rsir_sdk.store.keys.build_filter`).
        """
        k = values.k(k)
        radius = values.radius(radius)
        expr = keys.build_filter(filter)
        q = as_packed(codes, self.bits)
        if q.shape[0] == 0:
            return []
        self._require_exists()
        user_expr = filter if isinstance(filter, str) else None

        def search(data: Sequence[bytes], limit: int, expression: str,
                   window: tuple[int, int] | None, fields: list[str]) -> list[list[dict]]:
            params: dict[str, Any] = {"metric_type": "HAMMING", "params": dict(self.search_params)}
            if window is not None:
                params["params"].update({"radius": window[0], "range_filter": window[1]})
            return self._conn.call(
                "search", self.collection, data=list(data), anns_field="code", limit=limit,
                filter=expression, output_fields=fields, search_params=params, read=True,
                what=f"search in {self.collection!r}", expression=user_expr,
            )

        def fetch(pks: Sequence[str]) -> dict[str, dict[str, Any]]:
            found: dict[str, dict[str, Any]] = {}
            for at in range(0, len(pks), PK_CHUNK):
                res = self._conn.call(
                    "query", self.collection, filter=keys.in_list("pk", list(pks[at : at + PK_CHUNK])),
                    output_fields=["pk", *OUTPUT_FIELDS], read=True,
                    what=f"reading hits from {self.collection!r}")
                found.update((r["pk"], r) for r in res)
            return found

        step = max(1, min(1000, 2_000_000 // min(MAX_TOPK, 2 * k)))
        out: list[list[StoreHit]] = []
        for start in range(0, q.shape[0], step):
            data = [row.tobytes() for row in q[start : start + step]]
            for found in topk.exact_topk(search, fetch, data, k, expr, radius, OUTPUT_FIELDS):
                out.append([_hit(f) for f in found])
        return out

    def range_search(
        self,
        codes: np.ndarray,
        radius: int,
        filter: Filter = None,
        limit: int = MAX_TOPK,
    ) -> list[list[StoreHit]]:
        """Every item within Hamming distance ``<= radius`` (inclusive) of each query.

        Raises :class:`StoreError` when a query has more than ``limit`` such items (Milvus caps
        one search at 16384): lower the radius or add a filter rather than get a silent cut.
        """
        results = self.search(codes, k=limit, filter=filter, radius=values.radius(radius))
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
            self._conn.call("drop_collection", self.collection,
                            what=f"dropping collection {self.collection!r}")
            self.exists = False

    def close(self) -> None:
        """Close the connection (for Milvus Lite, stops its server and releases the file)."""
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()

    def __enter__(self) -> "MilvusCodeStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"MilvusCodeStore(uri={self.display_uri!r}, collection={self.collection!r}, "
                f"bits={getattr(self, 'bits', None)})")


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
    rebuild it); returns how many items it held (``None`` when that cannot be read).

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
        return n
    finally:
        conn.close()


def lite_missing(uri: str) -> bool:
    """True for a Milvus Lite path whose file does not exist."""
    return is_lite_uri(str(uri)) and not os.path.exists(str(uri))


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


def _hit(f: topk.Found) -> StoreHit:
    e = f.entity or {}
    return StoreHit(id=f.id, distance=f.distance, label=e.get("label") or "",
                    path=e.get("path") or "", metadata=dict(e.get("metadata") or {}))


def _code_bytes(value: Any) -> np.ndarray:
    # pymilvus returns a binary vector as bytes, or as a list holding one bytes object
    if isinstance(value, list):
        value = value[0] if len(value) == 1 and isinstance(value[0], (bytes, bytearray)) else bytes(value)
    return np.frombuffer(bytes(value), dtype=np.uint8).copy()

