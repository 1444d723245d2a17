"""The writing half of :class:`~rsir_sdk.retriever.Retriever`: encode images (or take codes
made elsewhere, or a bundle's learned database codes) and write them, index whole archives,
delete.

A base class of ``Retriever``, kept apart so that each module has one job: the Retriever's
set-up, searches and reads are :mod:`rsir_sdk.retriever`. It reads the attributes the
Retriever's ``__init__`` sets (declared below for type checkers).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .archive import ArchiveListing, open_archive
from .bundle import Bundle
from .call_checks import images_with_ids
from .codes import as_packed
from .encoder import Encoder
from .failures import FailureReport
from .fine_codes import FineCodes
from .images import ImageSource
from .ingest import PREPARE_MIN_ROWS, IngestProgress, IngestSummary, ingest
from .options import IngestOptions
from .store import MilvusCodeStore, PrepareProgress
from .store import place as store_place
from .store import values as store_values


class RetrieverWrites:
    """Write verbs of a :class:`~rsir_sdk.retriever.Retriever` (its base class)."""

    bundle: Bundle
    store: MilvusCodeStore
    encoder: Encoder
    _fine: FineCodes

    @property
    def fine_ranking(self) -> bool:
        """True when the bundle has a fine code and the collection keeps (or, new, will keep)
        fine codes: writes carry both codes, and searches rank ties by the fine code."""
        return self._fine.ranking

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
        images, ids, paths = images_with_ids(images, ids, paths)
        self._fine.check_writes()
        store_values.labels(labels, len(ids))  # bad values fail before any image is decoded
        store_values.paths(paths, len(ids))
        store_values.metadata(metadata, ids)
        self._check_place(ids, footprints, times)
        codes, fine = self._fine.encode_query(images, batch_size, "default")
        return self.store.upsert(ids, codes, labels, paths, metadata,
                                 encoder=self.bundle.identity(), footprints=footprints, times=times,
                                 fine=fine)

    def _check_place(self, ids: Sequence[str], footprints: Any, times: Any) -> None:
        """Refuse bad footprints or times (one line naming the item) before any work."""
        if footprints is None and times is None:
            return
        if not self.store.has_place:
            raise store_place.refuse_old(self.store.collection, self.store.display_uri,
                                         "store footprints or times")
        store_place.columns(list(ids), [None] * len(ids), footprints, times)

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
        db = self.bundle.load_database()
        root = self.bundle.archive_root
        paths = list(db.paths)
        if root and Path(root).is_dir():
            paths = [str(Path(root, p)) if p and not os.path.isabs(p) else p for p in paths]
        fine = db.fine if self.fine_ranking else None
        if self.fine_ranking and fine is None:
            fine = self._fine.of_database(paths)
        meta = [{"source": "learned"}] * len(db)
        n = self.add_codes(db.codes, db.ids, db.labels, paths, meta, fine=fine)
        if n >= PREPARE_MIN_ROWS:
            self.store.prepare_for_search()
        return n

    def prepare_for_search(self, **kw: Any) -> dict[str, Any]:
        """Leave a server collection ready to search at full speed (see
        :meth:`~rsir_sdk.store.MilvusCodeStore.prepare_for_search`; ``index`` does it)."""
        return self.store.prepare_for_search(**kw)

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
        opts = IngestOptions.build(options, overrides)
        self._fine.check_writes()
        listing = archive if isinstance(archive, ArchiveListing) else open_archive(
            archive, **opts.listing())
        own = None if report is None or isinstance(report, FailureReport) else FailureReport(report)
        rep = own or (report if isinstance(report, FailureReport) else None)
        run = ingest
        if opts.engine == "ray":  # imported here: Ray is an optional extra
            from .ray_ingest import ingest_on_ray

            run = ingest_on_ray
        summary = None
        try:
            summary = run(self.encoder, self.store, listing, opts, report=rep, progress=progress,
                          on_prepare=on_prepare)
            return summary
        finally:
            if own is not None:  # a run cut short, or that had nothing to do, keeps the old one
                own.close(keep_earlier=summary is None or summary.total == 0)

    def delete(self, ids: Sequence[str]) -> int:
        """Delete items by id; returns how many existed."""
        return self.store.delete(ids)
