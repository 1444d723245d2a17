"""``Retriever``: a bundle's encoder plus a Milvus code store: index archives, search by image.

The Retriever owns the runtime's paths. The ``rsir`` command and the HTTP service call it and
nothing else, so a search from Python, from the command line and over HTTP encodes the query the
same way and gets the same hits.

The work behind its writes (``add_images``, ``add_learned_codes``, ``index``) is
:mod:`rsir_sdk.retriever_writes`; its fine-code side :mod:`rsir_sdk.fine_codes`.

>>> from rsir_sdk import Retriever
>>> r = Retriever("bundle/", uri="./rsir.db", collection="scenes")   # doctest: +SKIP
>>> r.index("archive/", label_from="parent")                         # doctest: +SKIP
>>> hits = r.search("query.jpg", k=5)                                  # doctest: +SKIP
>>> hits[0].id, hits[0].distance, hits[0].label                        # doctest: +SKIP
('forest/0042.jpg', 3, 'forest')
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import retriever_writes
from .api import Filter
from .archive import ArchiveListing
from .bundle import Bundle
from .call_checks import (
    check_radius_length,
    check_range_radius,
    check_search,
    image_list,
    radius_bound,
)
from .codes import as_packed
from .encoder import Encoder
from .errors import InvalidInputError, RasterRuleMismatchError
from .failures import FailureReport
from .fine_codes import FineCodes
from .geo import GeoFilter
from .hits import Hit, StoredItem
from .images import DEFAULT_URL_TIMEOUT, ImageSource, RuleLike
from .ingest import IngestProgress, IngestSummary
from .options import IndexOptions, IngestOptions
from .rasters import RasterRule, as_rule
from .store import MAX_TOPK, MilvusCodeStore, PrepareProgress
from .store import place as store_place
from .store.schema import rebuild_steps

log = logging.getLogger(__name__)


class Retriever:
    """Search a Milvus collection of binary codes with images, using a model bundle's encoder.

    ``uri``/``token`` are passed to pymilvus as they are: a ``.db`` file path is Milvus Lite,
    ``http://host:19530`` a server. ``collection`` defaults to the bundle's
    ``<method>_<bits>_<encoder_id>``. A collection is created by the first write, with the
    bundle's bit length, encoder identity and raster rule; reading one that was never written
    raises :class:`~rsir_sdk.errors.CollectionNotFoundError` naming the collections that exist.
    A collection refuses codes from any other encoder.

    Fine codes (issue 20, docs/runtime.md): when the bundle has one (``bundle.fine_bits``), a
    new collection keeps the fine code of every item beside its retrieval code, every write
    encodes both in one forward pass, and searches put near-duplicates of the query first (the
    same scene re-encoded, cropped, or stored under another retrieval code) and rank each group
    of items at one retrieval distance by the fine code's distance (most similar image first), or, with
    ``mode="appearance"``, by the fine code alone. A collection filled before it keeps none:
    it is searched and written as before (rebuild it to rank by appearance).

    ``raster_rule`` (see :mod:`rsir_sdk.rasters`) converts TIFF samples. It is recorded with a
    new collection; an existing collection's recorded rule is used for every search and write,
    and a different explicit rule raises :class:`~rsir_sdk.errors.RasterRuleMismatchError`.

    ``providers``, ``threads``, ``batch_size``: the encoder's onnxruntime providers, threads and
    images per call. ``index_options`` (:class:`~rsir_sdk.options.IndexOptions`): the index type
    of a new server collection and its index and search parameters. ``url_timeout``: seconds
    allowed, in all (DNS, connect, headers, body), to fetch an image given as a URL. URLs of
    private, loopback and link-local addresses (an intranet image server) are fetched once
    ``r.encoder.allow_private_urls = True`` (off by default, as a service must keep it:
    :mod:`rsir_sdk.urlfetch`).

    A Retriever holds a database connection and a model session: it cannot be pickled (open
    one in each process). onnxruntime is not fork-safe: a child forked after the parent
    encoded can hang or crash as it exits; with multiprocessing, use the "spawn" start method
    and open a Retriever in each worker.

    >>> r = Retriever("bundle/", uri="./rsir.db", collection="scenes")     # doctest: +SKIP
    >>> r.add_images(["a.jpg", "b.jpg"], ids=["a", "b"], labels=["forest", "river"])
    >>> r.search("query.jpg", k=2)                                          # doctest: +SKIP
    [Hit(id='a', distance=4, label='forest', path='a.jpg', metadata={}, footprint=None, time=None, fine_distance=12), ...]
    """

    def __init__(
        self,
        bundle: Bundle | str | os.PathLike,
        uri: str = "./rsir.db",
        collection: str | None = None,
        token: str | None = None,
        *,
        raster_rule: RuleLike = None,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        batch_size: int = 32,
        index_options: IndexOptions | None = None,
        url_timeout: float = DEFAULT_URL_TIMEOUT,
    ):
        if index_options is not None and not isinstance(index_options, IndexOptions):
            raise InvalidInputError(
                f"index_options must be an IndexOptions value, got {type(index_options).__name__}"
                f" (e.g. IndexOptions(index_type='BIN_IVF_FLAT', search_params={{'nprobe': 16}}))")
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        name = collection or self.bundle.default_collection
        asked = None if raster_rule is None else as_rule(raster_rule)
        identity = dict(self.bundle.identity())
        identity["raster_rule"] = (asked or RasterRule()).to_dict()
        # the model first: a bundle whose model cannot run is named as such, not as an encoder
        # that does not match the collection (its rule is the collection's, set below)
        self.encoder = Encoder(
            self.bundle, raster_rule=asked or RasterRule(), providers=providers, threads=threads,
            batch_size=batch_size, url_timeout=url_timeout,
        )
        self.store = MilvusCodeStore(
            uri, name, bits=self.bundle.bits, token=token, encoder=identity,
            fine_bits=self.bundle.fine_bits, scene_test=self.bundle.scene_test,
            **(index_options or IndexOptions()).store_kwargs(),
        )
        try:
            self.raster_rule = self._collection_rule(asked)
            self.encoder.raster_rule = self.raster_rule
        except BaseException:
            self.store.close()
            raise
        #: how fine codes take part in this retriever's searches and writes (:mod:`.fine_codes`)
        self._fine = FineCodes(self.bundle, self.encoder, self.store)
        if self.bundle.fine_bits is not None and not self.fine_ranking:
            log.warning("collection %r keeps no fine codes (filled before them): searches "
                        "rank by the retrieval code alone; to rank by appearance, %s",
                        self.store.collection,
                        rebuild_steps(self.store.collection, self.store.display_uri))

    @property
    def fine_ranking(self) -> bool:
        """True when the bundle has a fine code and the collection keeps (or, new, will keep)
        fine codes: writes carry both codes, and searches rank ties by the fine code."""
        return self._fine.ranking

    def _collection_rule(self, asked: RasterRule | None) -> RasterRule:
        recorded = (self.store.encoder or {}).get("raster_rule")
        if recorded is None:
            if self.store.exists and self.store.encoder is None:
                log.warning("collection %r records no encoder: codes from %s are accepted "
                            "unchecked", self.store.collection, self.bundle.encoder_id)
            return asked or RasterRule()
        rule = RasterRule.from_dict(recorded)
        if asked is not None and asked != rule:
            raise RasterRuleMismatchError(
                f"collection {self.store.collection!r} was filled with the raster rule "
                f"'{rule.describe()}', not '{asked.describe()}': images converted differently "
                f"give codes that do not compare. Use the same rule (or none: the collection's "
                f"is used), or another collection"
            )
        return rule

    @classmethod
    def from_bundle(
        cls, bundle: str | os.PathLike, uri: str = "./rsir.db", collection: str | None = None,
        **kw: Any,
    ) -> "Retriever":
        """Open a Retriever on the bundle's default collection (``<method>_<bits>_<encoder_id>``).

        >>> r = Retriever.from_bundle("bundle/", uri="./rsir.db")   # doctest: +SKIP
        """
        return cls(bundle, uri=uri, collection=collection, **kw)

    @property
    def collection(self) -> str:
        """The collection's name."""
        return self.store.collection

    # ----------------------------------------------------------------- search
    def search(
        self, img: ImageSource, k: int = 10, filter: Filter = None, radius: int | None = None,
        *, bbox: Any = None, near: Any = None, time: Any = None, mode: str = "default",
    ) -> list[Hit]:
        """Hamming top-``k`` for one image (path, bytes, file, PIL, array or URL): a list of
        at most ``k`` :class:`~rsir_sdk.hits.Hit`, nearest first.

        ``k``: an int in 1..16384. Raises :class:`~rsir_sdk.errors.InvalidInputError` for a bad
        argument (before the image is read), :class:`~rsir_sdk.errors.ImageLoadError` for an
        image that cannot be read, :class:`~rsir_sdk.errors.CollectionNotFoundError` for a
        collection never written, :class:`~rsir_sdk.errors.StoreError` when Milvus fails or
        the Retriever is closed; all are :class:`~rsir_sdk.errors.RsirError`.

        ``filter``: a dict (``{"label": "forest", "sensor": "S2"}``; a list value means "any
        of"; non-column keys are metadata keys) or a Milvus expression string.
        ``radius``: keep only hits at distance ``<= radius``.
        Place and period (docs/geo.md; all AND the rest, still the exact top-``k``): ``bbox``
        ``(west, south, east, north)`` or ``"w,s,e,n"`` (the footprint meets the box, bounds
        inclusive, ``west > east`` across the antimeridian); ``near`` ``(lon, lat, metres)``
        (great-circle distance to the footprint); ``time`` ``(start, end)`` or
        ``"start/end"`` (ISO 8601, either side open). Items without a footprint (time) are
        left out of place (period) searches.

        ``mode`` (:data:`rsir_sdk.hits.SEARCH_MODES`): ``"default"`` ranks by the retrieval
        code's distance, then (bundle and collection with fine codes) the fine code's
        distance (``Hit.fine_distance``), then the digest of the id; with fine codes the
        query's near-duplicates (fine distance within
        :func:`~rsir_sdk.codes.near_duplicate_radius`, 12 of 128 bits, or the nearest item
        when it is clearly nearer than any other: :func:`~rsir_sdk.codes.ratio_leader`) come
        first, by fine distance, whatever their retrieval distance; ``"appearance"`` by the
        fine code alone (near-duplicates, the same place seen again; ``radius`` then applies
        to the fine distance, which is also ``Hit.distance``).

        >>> r.search("scene.tif", k=5, filter={"label": "forest"})   # doctest: +SKIP
        >>> r.search("scene.tif", bbox=(2.2, 48.8, 2.5, 48.9), time="2021-06/2021-08")  # doctest: +SKIP
        >>> r.search("scene.tif", k=5, mode="appearance")[0].fine_distance  # doctest: +SKIP
        0
        """
        geo, mode = self._checked(k, filter, radius, (bbox, near, time), mode)
        codes, fine = self._fine.encode_query([img], None, mode)
        return self.store.search(codes, k, filter, radius, geo=geo, **self._fine.store_args(fine, mode))[0]

    def search_batch(
        self,
        imgs: Sequence[ImageSource],
        k: int = 10,
        filter: Filter = None,
        radius: int | None = None,
        batch_size: int | None = None,
        *,
        bbox: Any = None,
        near: Any = None,
        time: Any = None,
        mode: str = "default",
    ) -> list[list[Hit]]:
        """Top-``k`` for each of several images: one list of hits per image, in order
        (``bbox``, ``near``, ``time``, ``mode`` as in :meth:`search`).

        >>> r.search_batch(["a.jpg", "b.jpg"], k=3)                  # doctest: +SKIP
        """
        imgs = image_list(imgs, "use search(image)")
        geo, mode = self._checked(k, filter, radius, (bbox, near, time), mode)
        codes, fine = self._fine.encode_query(imgs, batch_size, mode)
        return self.store.search(codes, k, filter, radius, geo=geo, **self._fine.store_args(fine, mode))

    def search_codes(
        self,
        codes: np.ndarray | bytes,
        k: int = 10,
        filter: Filter = None,
        radius: int | None = None,
        *,
        bbox: Any = None,
        near: Any = None,
        time: Any = None,
        fine: np.ndarray | bytes | None = None,
        mode: str = "default",
    ) -> list[list[Hit]]:
        """Search with packed codes made elsewhere (an edge device running the same encoder).

        ``codes``: ``uint8 (n, bits/8)`` or the raw bytes of one code; one hit list per code.
        ``fine``: their fine codes ``uint8 (n, fine_bits/8)`` (or the bytes of one), from the
        same forward pass (:meth:`~rsir_sdk.Encoder.encode_both`): with them the hits are
        those :meth:`search` gives for the image; without them each tie group comes back in
        digest order. ``mode="appearance"`` needs ``fine``. ``bbox``, ``near``, ``time``,
        ``mode`` as in :meth:`search`.

        >>> both = encoder.encode_both(["scene.jpg"])                  # doctest: +SKIP
        >>> r.search_codes(both.codes, k=10, fine=both.fine)           # doctest: +SKIP
        """
        geo, mode = self._checked(k, filter, radius, (bbox, near, time), mode)
        packed = as_packed(codes, self.bundle.bits)
        fine_packed = self._fine.given(fine, packed.shape[0])
        if mode == "appearance" and fine_packed is None:
            raise InvalidInputError("mode='appearance' searches by the fine code: give fine= "
                                    "(the fine codes of the same images, Encoder.encode_both)")
        return self.store.search(packed, k, filter, radius, geo=geo,
                                 **self._fine.store_args(fine_packed, mode))

    def range_search(self, img: ImageSource, radius: int, filter: Filter = None, *,
                     bbox: Any = None, near: Any = None, time: Any = None,
                     mode: str = "default") -> list[Hit]:
        """Every item within Hamming distance ``<= radius`` of one image (up to 16384);
        ``bbox``, ``near``, ``time`` as in :meth:`search`; with ``mode="appearance"`` the
        distance is the fine code's."""
        check_range_radius(radius)
        geo, mode = self._checked(1, filter, radius, (bbox, near, time), mode)
        codes, fine = self._fine.encode_query([img], None, mode)
        return self.store.range_search(codes, radius, filter, MAX_TOPK, geo=geo,
                                       **self._fine.store_args(fine, mode))[0]

    def _checked(self, k: Any, filter: Filter, radius: Any, place: tuple[Any, Any, Any],
                 mode: Any = "default") -> tuple[GeoFilter | None, str]:
        """The search's arguments checked before any image is decoded; its place filter and
        its mode."""
        geo = self.store.check_geo(check_search(k, filter, radius, place))
        mode = self._fine.check_mode(mode)
        check_radius_length(radius, *radius_bound(mode, self.bundle.bits, self.bundle.fine_bits))
        return geo, mode

    # ----------------------------------------------------------------- writes
    def add_images(
        self,
        images: Sequence[ImageSource],
        ids: Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        paths: Sequence[str] | None = None,
        batch_size: int | None = None,
        footprints: Sequence[Any] | None = None,
        times: Sequence[Any] | None = None,
    ) -> int:
        """Encode images and upsert their codes; returns how many were written.

        Ids default to the path of each source (only when every source is a path). Every
        image is encoded before anything is written, so one bad image changes nothing.
        ``footprints`` (per image a ``(west, south, east, north)`` box, a ``(lon, lat)``
        point, a :class:`~rsir_sdk.geo.Footprint` or ``None``) and ``times`` (ISO 8601, epoch
        seconds or ``None``) give each image's place and time; where not given, its metadata's
        georeferencing (``lonlat_bounds``, ``lonlat``, ``time``) does (docs/geo.md). A bad one
        raises :class:`~rsir_sdk.errors.InvalidInputError` naming the item, before any image
        is decoded. With a fine code (bundle and collection) each image's fine code is written
        too, from the same forward pass.

        >>> r.add_images(["a.jpg"], ids=["a"], labels=["forest"], metadata=[{"year": 2020}])
        1
        """
        return retriever_writes.add_images(self, images, ids, labels, metadata, paths,
                                           batch_size, (footprints, times))

    def add_codes(
        self,
        codes: np.ndarray | bytes,
        ids: Sequence[str],
        labels: Sequence[str] | None = None,
        paths: Sequence[str] | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        footprints: Sequence[Any] | None = None,
        times: Sequence[Any] | None = None,
        fine: np.ndarray | bytes | None = None,
    ) -> int:
        """Upsert packed codes as they are (learned database codes, or codes made elsewhere);
        ``footprints`` and ``times`` as in :meth:`add_images`.

        ``fine``: the items' fine codes ``uint8 (n, fine_bits/8)`` from the same forward pass
        (an edge device: :meth:`~rsir_sdk.Encoder.encode_both`). A collection that keeps fine
        codes refuses codes without them (:class:`~rsir_sdk.errors.InvalidInputError`); one
        filled before issue 20 keeps none and drops them with one warning.

        >>> db = r.bundle.load_database()                              # doctest: +SKIP
        >>> r.add_codes(db.codes, db.ids, db.labels, db.paths, fine=db.fine)   # doctest: +SKIP
        """
        packed = as_packed(codes, self.bundle.bits)
        fine_packed = self._fine.given(fine, packed.shape[0])
        return self.store.upsert(ids, packed, labels, paths, metadata,
                                 encoder=self.bundle.identity(), footprints=footprints, times=times,
                                 fine=fine_packed)

    def add_learned_codes(self) -> int:
        """Put the bundle's learned database codes (AHCL's V) into the collection as learned.

        Their paths are made absolute under the archive the bundle records, when it records one
        that exists, so that galleries and the service can show the images. Their fine codes
        are the bundle's (``database.npz`` ``fine``, computed at export time by the same
        network). A bundle written before those, with a fine code and a collection that keeps
        fine codes, has them made here by encoding the database images found under that
        archive (each image once; the learned codes stay as they are); when the images are not
        there, :class:`~rsir_sdk.errors.BundleError` says so before anything is written.
        """
        return retriever_writes.add_learned_codes(self)

    def prepare_for_search(self, *, timeout: float | None = 3600.0,
                           progress: Callable[[PrepareProgress], None] | None = None
                           ) -> dict[str, Any]:
        """Leave a server collection ready to search at full speed (see
        :meth:`~rsir_sdk.store.MilvusCodeStore.prepare_for_search`; ``index`` does it)."""
        return self.store.prepare_for_search(timeout=timeout, progress=progress)

    def index(
        self,
        archive: str | os.PathLike | ArchiveListing,
        options: IngestOptions | None = None,
        *,
        report: str | os.PathLike | FailureReport | None = None,
        progress: Callable[[IngestProgress], None] | None = None,
        on_prepare: Callable[[PrepareProgress], None] | None = None,
        **overrides: Any,
    ) -> IngestSummary:
        """Encode every image of an archive (a folder or a CSV manifest) into the collection.

        ``options``: an :class:`~rsir_sdk.options.IngestOptions` value; keyword ``overrides``
        are its field names and replace those fields (``r.index("archive/",
        label_from="parent")`` is ``r.index("archive/", IngestOptions(label_from="parent"))``);
        an unknown name or a bad value raises :class:`~rsir_sdk.errors.InvalidInputError`
        before anything is listed or written.

        Resumable: ids already present are skipped (``skip_existing=False`` re-encodes them), so
        re-running after an interruption finishes the rest. Images that cannot be indexed are
        listed in the returned summary and, when ``report`` names a file, in that CSV report
        (removed again when nothing failed). ``progress`` is called as work advances. The
        listing options (``label_from``, ``root``, the ``*_column`` names, ``extensions``) are
        those of :func:`rsir_sdk.archive.open_archive` (unused when ``archive`` is already a
        listing); ``only_ids`` restricts the run (e.g. to the ids of an earlier report).

        ``engine="ray"`` decodes and encodes on Ray (:mod:`rsir_sdk.ray_ingest`; the
        ``distributed`` extra): ``address`` names a cluster (``None``: a local Ray with
        ``workers`` CPUs); listing, resuming, writes and the report stay here, alike.

        ``bulk_dir`` (a server): load through Milvus' bulk import, staging numpy files in this
        folder, which the server must read at the same path (:mod:`rsir_sdk.store.bulk`).
        ``prepare``: leave the collection ready to search at the end (``auto``: after a bulk
        load or 10,000 rows; ``always``; ``never``); ``on_prepare`` sees its progress.

        >>> s = r.index("archive/", label_from="parent", report="failed.csv")  # doctest: +SKIP
        >>> s.indexed, s.skipped, len(s.failed)                              # doctest: +SKIP
        (2500, 0, 3)
        """
        return retriever_writes.index(self, archive, IngestOptions.build(options, overrides),
                                      report, progress, on_prepare)

    def delete(self, ids: Sequence[str]) -> int:
        """Delete items by id; returns how many existed."""
        return self.store.delete(ids)

    def duplicates(self, radius: int | None = None, filter: Filter = None, *, bbox: Any = None,
                   near: Any = None, time: Any = None) -> list[list[str]]:
        """Groups of near-identical items in the collection: ids whose fine codes lie within
        ``radius`` bits of each other (inclusive, linked transitively), each group's ids
        sorted, largest group first; ``None``: :data:`rsir_sdk.store.DEFAULT_DUPLICATE_RADIUS`
        (for 128-bit fine codes; scaled to the bundle's ``fine_bits``).
        ``filter``, ``bbox``, ``near``, ``time`` restrict the items as in :meth:`search`.

        Why: an archive gathered from many sources holds the same scene more than once (copies,
        re-encodes, re-exports); the fine code finds them without labels.

        >>> r.duplicates(radius=4)                                     # doctest: +SKIP
        [['a.jpg', 'copy/a.jpg'], ['b.tif', 'b_q70.jpg']]
        """
        return self._fine.duplicates(radius, filter, GeoFilter.of(bbox, near, time))

    # ----------------------------------------------------------------- reads
    def get(self, ids: Sequence[str]) -> list[StoredItem]:
        """Stored items by id (missing ids left out), in the order asked."""
        return self.store.get(ids)

    def count(self, filter: Filter = None, *, bbox: Any = None, near: Any = None,
              time: Any = None) -> int:
        """Number of items in the collection (matching ``filter`` and ``bbox``, ``near``,
        ``time`` as in :meth:`search`, when given)."""
        return self.store.count(filter, geo=GeoFilter.of(bbox, near, time))

    def info(self) -> dict[str, Any]:
        """What this Retriever serves: method, bits, the fine code's bits (``fine_bits``,
        None without one) and whether the collection keeps fine codes
        (``collection_fine_bits``; ``fine_ranking``: ties ranked by appearance), encoder id,
        collection, raster rule, the bundle's archive root, item count, and (a collection with
        place fields) ``without_footprint`` and ``without_time``: the items no place or period
        filter returns."""
        out = {
            "method": self.bundle.method,
            "bits": self.bundle.bits,
            "fine_bits": self.bundle.fine_bits,
            "collection_fine_bits": self.store.fine_bits,
            "fine_ranking": self.fine_ranking,
            "encoder_id": self.bundle.encoder_id,
            "collection": self.store.collection,
            "uri": self.store.display_uri,
            "exists": self.store.exists,
            "raster_rule": self.raster_rule.describe(),
            "archive_root": self.bundle.archive_root,
            "count": self.store.count(),
            "providers": list(self.encoder.providers),
        }
        if self.store.has_place:
            out["without_footprint"] = (self.store.count(store_place.NO_FOOTPRINT_EXPR)
                                        if self.store.exists else 0)
            out["without_time"] = (self.store.count(store_place.NO_TIME_EXPR)
                                   if self.store.exists else 0)
        return out

    def close(self) -> None:
        """Release the collection (for Milvus Lite, the database file)."""
        self.store.close()

    def __reduce__(self) -> Any:
        raise TypeError("a Retriever holds a database connection and a model session and "
                        "cannot be pickled: open one in each process (Retriever(bundle, uri, "
                        "collection))")

    def __enter__(self) -> "Retriever":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Retriever(method={self.bundle.method!r}, bits={self.bundle.bits}, "
            f"collection={self.store.collection!r}, uri={self.store.display_uri!r})"
        )

