"""``MilvusCodeStore``: packed binary codes in a Milvus ``BINARY_VECTOR`` collection (HAMMING).

One ``uri`` picks the deployment, as in pymilvus: ``./file.db`` is Milvus Lite (embedded, one
process per file, index BIN_FLAT only), ``http://host:19530`` a Milvus server (``token`` for
auth; the index chosen from the collection's size, or given). The collection records the encoder
that filled it (``encoder_id``, ``bits``, ``method``) in its description and refuses codes of
another length or from another encoder, so codes that cannot be compared never share a
collection.

Any Unicode text (but lone surrogates) works as an id, label, path or metadata value, and comes
back byte for byte: no user string becomes a primary key or enters an expression (see
:mod:`.keys`). A write is checked completely before its first row is sent, so a bad call
changes nothing. Hamming radius searches are **inclusive**: ``radius=r`` returns every item with
distance ``<= r``. Results are sorted by (distance, digest of the id), exactly (:mod:`.topk`),
near-duplicates and the fine code first where the collection keeps fine codes (:mod:`.finerank`).

On a server, call :meth:`MilvusCodeStore.prepare_for_search` after a large write (``rsir index``
and the Retriever do): the first search is then as fast as the hundredth (:mod:`.server`).
The class is thin: writes go through :mod:`.writes`, reads by id through :mod:`.reads`, the
serving and admin work (prepare, index, drop) through :mod:`.serving`.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..api import Filter
from ..codes import SceneTest, validate_bits
from ..errors import StoreError
from ..geo import GeoFilter
from ..hits import Hit, StoredItem
from . import dupes, finerank, keys, opening, place, reads, serving, values
from . import fine as companions
from . import search as searching
from .connect import Connection, ConnectOptions
from .schema import MAX_TOPK, UPSERT_BATCH, index_type_of
from .search import IdHits
from .server import PrepareProgress
from .writes import BulkOptions, Writer

log = logging.getLogger(__name__)
__all__ = ["Hit", "IdHits", "MilvusCodeStore", "PrepareProgress", "StoreHit", "StoredItem"]


#: the store's hit and row classes are the SDK's own (:mod:`rsir_sdk.hits`); ``StoreHit`` is
#: the old name of :class:`~rsir_sdk.hits.Hit`, kept for code written against 0.2
StoreHit = Hit


class MilvusCodeStore:
    """A Milvus collection of packed binary codes with ids, labels, paths and JSON metadata.

    A collection is created by the first write (with ``bits``); a read of a collection that was
    never written raises :class:`~rsir_sdk.errors.CollectionNotFoundError`. ``create=False``
    refuses at once when it does not exist. A Milvus Lite file is likewise created by the first
    write only: opening a path where none exists starts no server and creates nothing (with
    ``create=False`` it raises ``CollectionNotFoundError`` saying the file does not exist).
    ``connect`` (:class:`~.connect.ConnectOptions`): ``timeout`` bounds each Milvus call
    (seconds; ``None``: no deadline); failing calls are retried a few times, never for minutes.

    ``fine_bits`` (a new collection): keep fine codes of that length beside the retrieval codes
    (also set by a first write that passes ``fine=``): searches then rank each tie group by the
    fine code, and ``mode="appearance"`` searches by it alone (:mod:`.finerank`); an existing
    collection keeps what it was made with (:attr:`fine_bits`). ``scene_test`` (a new
    collection with fine codes; the bundle's :attr:`~rsir_sdk.Bundle.scene_test`): the parts of
    the fine code the same-scene test reads (:class:`~rsir_sdk.codes.SceneTest`).

    ``index_options`` (the fields of :class:`~rsir_sdk.options.IndexOptions`, as keywords):
    ``index_type`` (a new server collection): ``None`` or ``"auto"`` chooses from the size at
    :meth:`prepare_for_search` (BIN_FLAT, or BIN_IVF_FLAT with a calibrated ``nprobe``);
    ``"BIN_FLAT"``, ``"BIN_IVF_FLAT"`` (``index_params={"nlist": ...}``) or ``"HNSW"`` fix it.
    ``search_params`` (e.g. ``{"nprobe": 32}``) override what calibration recorded.

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
        create: bool = True,
        connect: ConnectOptions | None = None,
        fine_bits: int | None = None,
        scene_test: SceneTest | None = None,
        **index_options: Any,
    ):
        self.collection = values.collection_name(collection)
        index_type, index_params, search_params = values.index_options(index_options)
        self.search_params = dict(search_params or {})
        #: the length of the fine codes the collection keeps (issue 20; :mod:`.fine`), ``None``
        #: when it keeps none (made without them, or before they existed)
        self.fine_bits: int | None = None if fine_bits is None else validate_bits(fine_bits)
        #: the parts of the fine code its same-scene test reads (a new collection records it;
        #: an existing one keeps what it was made with); None: the whole fine code
        self.scene_test: SceneTest | None = scene_test
        self._fine_dropped = False
        #: items held without their fine-code row (server rows lost before a flush), counted
        #: by the first ``existing_ids``: those ids are not "present" (a re-run writes them again)
        self._fine_gap: int | None = None
        #: requests and hits of this store's searches so far (``searches``: top-k requests,
        #: ``range_searches``: extra requests that read a whole tie group at the k-th distance)
        self.search_stats: dict[str, int] = {}
        self._recorded: dict[str, Any] = {}
        self._index = (index_type_of(index_type), dict(index_params or {}))
        #: the one writer (:class:`~.writes.Writer`): creates the collection, checks and sends writes
        self.writer = Writer(self)
        self._conn = Connection(uri, token, connect)
        self.uri = self._conn.uri
        #: the uri without credentials, for messages, logs and printed output
        self.display_uri = self._conn.display_uri
        self.is_lite = self._conn.is_lite
        self.index_policy: str | None = None
        #: whether the collection holds the place and period fields (a new one will)
        self.has_place = True
        try:
            self.exists: bool = not self._conn.lite_missing and bool(self._conn.call(
                "has_collection", self.collection, what=f"opening collection {self.collection!r}"))
            if self.exists:
                asked_fine, self.fine_bits = self.fine_bits, None
                asked_test = self.scene_test
                self.bits, self.encoder = self._open_existing(bits, encoder)
                opening.check_kept_index(self, self._index[0])
                companions.check_fine_bits(self, asked_fine)
                companions.check_scene_test(self, asked_test)
                if self.is_lite and self.fine_bits is not None and self._conn.first_on_file:
                    companions.drop_orphan_rows(self._conn, self.collection)
                return
            self.bits, self.encoder = self._check_new(bits, encoder, create, self._index[0])
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- set-up
    def _check_new(self, bits, encoder, create, index_type) -> tuple[int, dict[str, Any] | None]:
        return opening.check_new(self, bits, encoder, create, index_type)

    def _open_existing(
        self, bits: int | None, encoder: Mapping[str, Any] | None
    ) -> tuple[int, dict[str, Any] | None]:
        return opening.open_existing(self, bits, encoder)

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
        footprints: Sequence[Any] | None = None,
        times: Sequence[Any] | None = None,
        fine: np.ndarray | None = None,
    ) -> int:
        """Insert or replace items by id; returns how many rows were written.

        Everything is validated before the first row is written, so a bad call changes nothing
        (:class:`~rsir_sdk.errors.InvalidInputError` or ``CodeLengthError`` naming the item).
        Requests hold at most ``batch_size`` (and 50,000) rows and 32 MiB. ``encoder`` (a
        bundle identity) is checked against the collection's. ``footprints`` (per item a
        ``(w, s, e, n)`` box, a ``(lon, lat)`` point, a :class:`~rsir_sdk.geo.Footprint` or
        ``None``) and ``times`` (ISO 8601, epoch seconds or ``None``) fill the place fields;
        else each item's metadata does (``lonlat_bounds``, ``lonlat``, ``time``; :mod:`.place`).
        ``fine``: the items' fine codes ``uint8 (n, fine_bits/8)``: required by a collection
        that keeps them, dropped with one warning by one that keeps none
        (:meth:`~.writes.Writer.fine_codes`).
        """
        values.positive_int(batch_size, "batch_size")
        cols = self.writer.columns(ids, codes, labels, paths, metadata, encoder,
                                   footprints=footprints, times=times, fine=fine)
        return self.writer.upsert(cols, batch_size)

    def insert(
        self,
        ids: Sequence[str],
        codes: np.ndarray,
        labels: Sequence[str] | None = None,
        paths: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        encoder: Mapping[str, Any] | None = None,
        batch_size: int = UPSERT_BATCH,
        footprints: Sequence[Any] | None = None,
        times: Sequence[Any] | None = None,
        fine: np.ndarray | None = None,
    ) -> int:
        """Add items whose ids the collection does **not** hold; returns how many were written.

        Faster than :meth:`upsert` (on a server an upsert is a delete plus an insert: about
        twice the server's work). The caller vouches that the ids are new (e.g. it just asked
        :meth:`existing_ids`, as ``rsir index`` does): an id that is present would be stored
        twice. A request is never retried as an insert: one that fails is written again as an
        upsert, which replaces whatever part of it reached Milvus. Checked (and ``footprints``,
        ``times``, ``fine`` taken) like :meth:`upsert`.
        """
        values.positive_int(batch_size, "batch_size")
        cols = self.writer.columns(ids, codes, labels, paths, metadata, encoder,
                                   footprints=footprints, times=times, fine=fine)
        return self.writer.insert(cols, batch_size)

    def bulk_insert(
        self,
        ids: Sequence[str],
        codes: np.ndarray,
        labels: Sequence[str] | None = None,
        paths: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        staging_dir: str | os.PathLike,
        encoder: Mapping[str, Any] | None = None,
        options: BulkOptions | None = None,
        footprints: Sequence[Any] | None = None,
        fine: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """Load many new items through Milvus' bulk import (a server; see :mod:`.bulk`).

        ``staging_dir`` must be readable by the server at the same path. Ids the collection
        holds are skipped (``options.skip_existing``), so an interrupted call can simply be
        repeated: its journal makes every chunk count once. Then :meth:`prepare_for_search`
        (``options.prepare``); :class:`~.writes.BulkOptions` also sets ``chunk_rows`` and
        ``timeout``. On Milvus Lite (no bulk import) the new items are inserted. ``footprints``
        as in :meth:`upsert` (a :class:`~rsir_sdk.geo.Footprint` carries its time), ``fine``
        too (written to the companions by upsert first). Returns counts and timings;
        ``options.progress`` gets progress updates.
        """
        cols = self.writer.columns(ids, codes, labels, paths, metadata, encoder,
                                   footprints=footprints, fine=fine)
        opts = options or BulkOptions()
        return self.writer.bulk_insert(cols, staging_dir, opts, opts.progress)

    def delete(self, ids: Iterable[str]) -> int:
        """Delete items by id; returns how many of them existed. ``ids`` is a list: one string
        is refused (``delete("abc")`` deleted ``a``, ``b`` and ``c``)."""
        return self.writer.delete(ids)

    # ----------------------------------------------------------------- reads
    def get(self, ids: Iterable[str]) -> list[StoredItem]:
        """Fetch stored items by id (missing ids are left out), in the order asked."""
        return reads.get(self, ids)

    def existing_ids(self, ids: Iterable[str]) -> set[str]:
        """The subset of ``ids`` that the collection holds."""
        return reads.existing_ids(self, ids)

    def ids_by_path(self, paths: Iterable[str]) -> dict[str, str]:
        """``{path: id}`` of stored items whose path is one of ``paths``: the same image
        stored under another id (an archive indexed from another folder)."""
        return reads.ids_by_path(self, paths)

    def iter_ids(self) -> Iterator[str]:
        """Every stored id, once each, in no particular order (read in ranges of the hashed
        primary keys, so it works alike on Milvus Lite and a server, at any size)."""
        return reads.iter_ids(self)

    def count(self, filter: Filter = None, *, geo: GeoFilter | None = None) -> int:
        """Number of items (matching ``filter`` and the place/period filter ``geo`` when
        given); 0 for a collection never written."""
        return reads.count(self, filter, geo)

    def check_geo(self, geo: GeoFilter | None) -> GeoFilter | None:
        """The active place/period filter (``None`` when it constrains nothing); refused with
        :class:`~rsir_sdk.errors.CollectionMismatchError` by a collection made before place
        fields existed."""
        gf = place.as_filter(geo)
        if gf is not None and self.exists and not self.has_place:
            raise place.refuse_old(self.collection, self.display_uri,
                                   "filter by place or period")
        return gf

    def _run(self, codes, k, filter, radius, fields, exact_ties=True, geo=None,
             fine=None, mode="default") -> list[list[Any]]:
        k = values.k(k)
        radius = values.radius(radius)
        expr = keys.build_filter(filter)
        gf = self.check_geo(geo)
        q, fq = finerank.queries(self, codes, fine, mode)
        first = fq if fq is not None else q
        if first is None or first.shape[0] == 0:
            return []
        self._require_exists()
        if not self.has_place:
            fields = [f for f in fields if f != "footprint"]
        request = searching.SearchRequest(
            k, expr, radius, tuple(fields), self.effective_search_params,
            filter if isinstance(filter, str) else None, bool(exact_ties), gf)
        if mode == "appearance" or fq is not None:
            assert fq is not None  # finerank.queries refuses the appearance mode without them
            return finerank.run(self, q, fq, request, mode)
        assert q is not None  # the default mode without fine queries always has codes
        return searching.run(self._conn, self.collection, q, request, self.search_stats)

    def search(
        self,
        codes: np.ndarray,
        k: int = 10,
        filter: Filter = None,
        radius: int | None = None,
        *,
        fields: Sequence[str] | None = None,
        exact_ties: bool = True,
        geo: GeoFilter | None = None,
        fine: np.ndarray | None = None,
        mode: str = "default",
    ) -> list[list[Hit]]:
        """Hamming top-``k`` per query: one list of :class:`~rsir_sdk.hits.Hit` per query code.

        Hits are sorted by distance, then by the digest of the id (exactly: ties at the k-th
        distance are broken that way too, not by insertion order): a deterministic order that
        owes nothing to how ids are spelled, so an archive listed class by class does not hand
        tie groups to the classes whose names sort first (:mod:`.topk`; :func:`.tie_order`
        gives it in memory). With ``radius``, only items at distance ``<= radius``
        (inclusive) come back, at most ``k`` of them. ``k`` and ``radius`` must be ints,
        ``filter`` a dict or an expression string (:func:`~rsir_sdk.store.keys.build_filter`).
        ``fields``: the stored fields to read (default ``label``, ``path``, ``metadata`` and
        ``footprint``, the place and time; those left out stay empty, and cost nothing); see
        also :meth:`search_ids`. ``geo`` (:class:`~rsir_sdk.geo.GeoFilter`): only items whose
        footprint meets the box, lies within the distance, whose time is in the period (AND
        ``filter`` and ``radius``), still the exact top-``k`` (:mod:`.place`).
        ``exact_ties=False`` skips reading whole tie groups at the k-th distance (one request;
        the same distances, but Milvus picks which tied items fill the last places): much
        faster on codes with many duplicates (trained, class-like codes at scale).

        ``fine`` (the queries' fine codes, ``uint8 (n, fine_bits/8)``) on a collection that keeps
        fine codes: the query's near-duplicates first (fine distance within
        :func:`~rsir_sdk.codes.near_duplicate_radius`, or the nearest when it passes
        :func:`~rsir_sdk.codes.ratio_leader`; by fine distance, whatever their
        retrieval distance, within ``radius`` when given), then each distance's items most
        similar first, by (distance, fine distance, digest; exact whatever ``exact_ties`` says,
        and big tie groups are not read whole); ``Hit.fine_distance`` is set. Without it, or on a collection that keeps none,
        today's order. ``mode="appearance"``: by the fine code alone (``fine``
        required, ``codes`` may be ``None``; ``distance`` = ``fine_distance``, ``radius``
        applies to it); refused by a collection without fine codes (:mod:`.finerank`).
        """
        wanted = searching.check_fields(fields)
        return searching.to_hits(self._run(codes, k, filter, radius, wanted, exact_ties, geo,
                                           fine, mode), wanted)

    def search_ids(
        self,
        codes: np.ndarray,
        k: int = 10,
        filter: Filter = None,
        radius: int | None = None,
        *,
        exact_ties: bool = True,
        geo: GeoFilter | None = None,
        fine: np.ndarray | None = None,
        mode: str = "default",
    ) -> list[IdHits]:
        """The lean search: per query, the ids and an ``int32`` array of their distances, with
        the same order and tie rule as :meth:`search` (``exact_ties``, ``fine`` and ``mode``
        alike), and no stored field read.

        >>> store.search_ids(codes[:2], k=3)[0].ids                      # doctest: +SKIP
        ['a', 'c', 'b']
        """
        return searching.id_hits(self._run(codes, k, filter, radius, (), exact_ties, geo, fine,
                                           mode))

    def range_search(
        self,
        codes: np.ndarray,
        radius: int,
        filter: Filter = None,
        limit: int = MAX_TOPK,
        *,
        geo: GeoFilter | None = None,
        fine: np.ndarray | None = None,
        mode: str = "default",
    ) -> list[list[Hit]]:
        """Every item within Hamming distance ``<= radius`` (inclusive) of each query (in the
        appearance mode, of its fine code; ``fine`` and ``mode`` as in :meth:`search`).

        Raises :class:`StoreError` when a query has more than ``limit`` such items (Milvus caps
        one search at 16384): lower the radius or add a filter rather than get a silent cut.
        """
        results = self.search(codes, k=limit, filter=filter, radius=values.radius(radius), geo=geo,
                              fine=fine, mode=mode)
        for i, hits in enumerate(results):
            if len(hits) >= limit:
                raise StoreError(
                    f"query {i} has {limit} or more items within radius {radius} (the limit); "
                    f"lower the radius or add a filter"
                )
        return results

    def duplicates(self, radius: int | None = None, filter: Filter = None, *,
                   geo: GeoFilter | None = None, progress: Any = None) -> list[list[str]]:
        """Groups of near-identical items: ids whose fine codes lie within ``radius``
        (inclusive; ``None``: :data:`~.dupes.DEFAULT_DUPLICATE_RADIUS` for 128 bits) of each
        other, linked transitively; each group (two ids or more) sorted, largest group first.
        ``filter``/``geo`` restrict the items; ``progress(done, total)`` is called as items are
        searched. Refused by a collection without fine codes (:mod:`.dupes`)."""
        return dupes.duplicates(self, radius, filter, geo, progress)

    def _require_exists(self) -> None:
        serving.require_exists(self)

    # ----------------------------------------------------------------- serving
    @property
    def effective_search_params(self) -> dict[str, Any]:
        """The search parameters searches use: the caller's, else those recorded by
        :meth:`prepare_for_search` (e.g. the calibrated ``nprobe``)."""
        return dict(self.search_params or self._recorded.get("search_params") or {})

    def prepare_for_search(self, *, timeout: float | None = 3600.0,
                           progress: Any = None) -> dict[str, Any]:
        """Leave a server collection sealed, indexed, served and warm, so that the first search
        is as fast as the hundredth; with the ``auto`` index policy also choose the index and
        calibrate ``nprobe`` (:mod:`.server`). Call it after large writes (``rsir index`` does).

        ``progress`` gets :class:`~rsir_sdk.store.server.PrepareProgress` updates; ``timeout``
        (seconds) raises :class:`~rsir_sdk.errors.StoreError` saying what is still pending.
        Returns the seconds of each step and what was chosen. A no-op (``{}``) on Milvus Lite,
        which searches what it holds at once, and on a collection never written.
        """
        return serving.prepare(self, timeout, progress)

    @property
    def repairing(self) -> bool:
        """Some items were found without their fine-code row (:func:`.reads.fine_gap`): writes
        of ids checked absent must upsert, not insert (those items' main rows are there)."""
        return bool(self._fine_gap)

    def flush(self) -> None:
        """Make a server collection's written rows durable (main and companions): rows Milvus
        keeps only in growing segments were lost when a server restarted. ``rsir index`` and
        :meth:`prepare_for_search` flush; a no-op on Milvus Lite and a collection never written."""
        serving.flush(self)

    def set_index(self, index_type: str, index_params: Mapping[str, Any] | None = None, *,
                  calibrate: bool = True, timeout: float | None = 3600.0,
                  progress: Any = None) -> dict[str, Any]:
        """Rebuild a server collection's index by hand (``BIN_FLAT``, ``BIN_IVF_FLAT`` with
        ``{"nlist": n}``, ``HNSW``); the ``auto`` policy no longer applies to it. For
        BIN_IVF_FLAT, ``calibrate`` records the ``nprobe`` that reaches recall@100 0.99. The
        collection is released while its index is rebuilt (searches fail meanwhile)."""
        return serving.set_index(self, index_type, index_params, calibrate, timeout, progress)

    def index_info(self) -> dict[str, Any]:
        """The code field's index: type, params, policy (``auto`` or fixed), row counts, the
        search parameters in use and how they were calibrated."""
        return serving.index_info(self)

    # ----------------------------------------------------------------- admin
    def info(self) -> dict[str, Any]:
        """What the collection is: name, uri, bits, ``fine_bits`` (the fine codes it keeps;
        ``None``: none, rebuild it to rank by appearance), ``scene_test`` (with a
        ``--fine-code layout`` bundle: ``[[first byte, end byte, weight], ...]`` of the parts
        the same-scene test reads), the encoder that filled it, item count and (with place
        fields) ``without_footprint`` and ``without_time``, the items no place or period filter
        can return."""
        out = {"collection": self.collection, "uri": self.display_uri, "exists": self.exists,
               "bits": self.bits, "fine_bits": self.fine_bits, "encoder": self.encoder,
               "count": self.count()}
        if self.scene_test is not None and self.fine_bits is not None:
            out["scene_test"] = self.scene_test.to_json()
        if self.has_place:
            out["without_footprint"] = self.count(place.NO_FOOTPRINT_EXPR) if self.exists else 0
            out["without_time"] = self.count(place.NO_TIME_EXPR) if self.exists else 0
        return out

    def create(self) -> None:
        """Create the collection now, empty, as the first write would (with the store's code
        and fine-code lengths); nothing when it exists. A read never creates one: this is for a
        caller that must answer reads of a new collection (``rsir serve --create``)."""
        self.writer.ensure_created()

    def drop(self) -> None:
        """Drop the whole collection and its fine-code companions (irreversible); a later write
        creates it afresh (keeping fine codes as the store's ``fine_bits`` or that write says)."""
        serving.drop(self)

    def close(self) -> None:
        """Close the connection (for Milvus Lite, stops its server and releases the file)."""
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()

    def __reduce__(self) -> Any:
        raise TypeError("a MilvusCodeStore holds a database connection and cannot be pickled: "
                        "open one in each process (MilvusCodeStore(uri, collection))")

    def __enter__(self) -> "MilvusCodeStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"MilvusCodeStore(uri={self.display_uri!r}, collection={self.collection!r}, "
                f"bits={getattr(self, 'bits', None)})")

